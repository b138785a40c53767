"""The worker's web server: the reference HTTP API, health, readiness and Prometheus metrics.

The API answers with the engine the suggest agent uses (same pipeline, caches, fetcher and
SSRF policy), so a synchronous answer and a stream answer cannot drift apart. Views are
mounted on Faust's own web server (aiohttp) with ``app.page``; handlers take and return
aiohttp objects, and raise aiohttp HTTP errors carrying JSON bodies in the reference
service's shape (``{"detail": ...}``; 422 details as a list of located validation errors).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import faust
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from faust.web import View
from pydantic import BaseModel, ValidationError

from inference.tags import tag_error
from inference.types import BBox, MatchRequest, SourceImage, SourceTag
from streams.events import EventLimits
from streams.fetch.fetcher import DecodedImage, FetchError
from streams.metrics import Metrics
from streams.worker.api_models import (
    ClassesResponse,
    DetectedObject,
    DetectRequest,
    DetectResponse,
    HealthResponse,
    SourceTagIn,
    Suggestion,
    SuggestionWithCopies,
    SuggestTagsRequest,
    SuggestTagsResponse,
)
from streams.worker.engine import Engine, EngineProvider
from streams.worker.health import Health

log = logging.getLogger(__name__)

Body = TypeVar("Body", bound=BaseModel)
Route = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]

LOADING_RETRY_AFTER_S = 5


class HttpApi:
    """Handlers of every route; ``routes`` lists them for :func:`install_http_api`."""

    def __init__(self, engines: EngineProvider, health: Health, metrics: Metrics, limits: EventLimits) -> None:
        self._engines = engines
        self._health = health
        self._metrics = metrics
        self._limits = limits

    def routes(self) -> list[Route]:
        return [
            ("/api/suggest-tags", "post", self.suggest_tags),
            ("/api/detect", "post", self.detect),
            ("/api/classes", "get", self.classes),
            ("/health", "get", self.health),
            ("/ready", "get", self.ready),
            ("/metrics", "get", self.metrics),
        ]

    async def suggest_tags(self, request: web.Request) -> web.Response:
        body = await _parse(request, SuggestTagsRequest)
        photos = _photos(body)
        if len(photos) > self._limits.max_sources:
            message = f"too_many_sources: {len(photos)} source images, limit {self._limits.max_sources}"
            raise _unprocessable([_invalid(("more_sources",), message, "too_long")])
        located = [(photo.field, index, tag) for photo in photos for index, tag in enumerate(photo.tags)]
        if len(located) > self._limits.max_tags:
            # The worker's configured limit, the same one the stream applies to upload events.
            message = f"too_many_tags: {len(located)} tags, limit {self._limits.max_tags}"
            raise _unprocessable([_invalid((photos[-1].field[0],), message, "too_long")])
        # The stream's rules for a tag (inference.tags): here a bad tag fails the request, before any fetch.
        tags = [SourceTag(tag.product_id, box, tag_error(tag.product_id, box)) for _, _, (tag, box) in located]
        _refuse_bad_tags(located, [tag.error for tag in tags])
        engine = self._engine()
        images = await engine.fetcher.fetch_many([*(photo.url for photo in photos), body.target_image_url])
        target = _fetched(images, body.target_image_url, "target_image_url")
        sources, start = [], 0
        for photo in photos:
            source = _fetched(images, photo.url, photo.url_field)
            sources.append(
                SourceImage(photo.url, source.pixels, tuple(tags[start : start + len(photo.tags)]), source.scale)
            )
            start += len(photo.tags)
        result = await engine.pipeline.match(
            MatchRequest(f"http-{uuid.uuid4()}", target.pixels, tuple(sources), body.similarity_threshold, target.scale)
        )
        # Boxes that only the fetched image refutes (nothing of them inside it) are input errors too.
        _refuse_bad_tags(located, [match.error for match in result.matches])
        answer = SuggestionWithCopies if body.include_copies else Suggestion
        return _json(
            SuggestTagsResponse(
                suggestions=[answer.of(match) for match in result.matches],
                detections_count=result.detections_count,
            )
        )

    async def detect(self, request: web.Request) -> web.Response:
        body = await _parse(request, DetectRequest)
        engine = self._engine()
        wanted = body.target_classes
        if wanted is not None:
            known = set(engine.pipeline.class_names)
            unknown = [
                _invalid(("target_classes", index), f"unknown class {name!r}; see /api/classes")
                for index, name in enumerate(wanted)
                if name not in known
            ]
            if unknown:
                raise _unprocessable(unknown)
        images = await engine.fetcher.fetch_many([body.image_url])
        image = _fetched(images, body.image_url, "image_url")
        detections = await engine.pipeline.detect(image.pixels, body.confidence_threshold)
        # Detected at working resolution, answered in the photo's own pixels.
        kept = [
            replace(d, bbox=d.bbox.scaled(1.0 / image.scale))
            for d in detections
            if wanted is None or d.class_name in wanted
        ]
        return _json(DetectResponse(objects=[DetectedObject.of(d) for d in kept], total_count=len(kept)))

    async def classes(self, request: web.Request) -> web.Response:
        names = self._engine().pipeline.class_names
        return _json(ClassesResponse(classes=names, total_count=len(names)))

    async def health(self, request: web.Request) -> web.Response:
        """Liveness: the event loop answers. Whether the worker can serve is ``/ready``'s question."""
        return _json(HealthResponse())

    async def ready(self, request: web.Request) -> web.Response:
        report = self._health.report()
        return web.json_response(report, status=200 if report["ready"] else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Consumer lag comes from the health probe's last round (every ``probe_interval_s``)."""
        body, content_type = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _engine(self) -> Engine:
        engine = self._engines.loaded
        if engine is None:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"detail": "models are still loading; retry shortly"}),
                content_type="application/json",
                headers={"Retry-After": str(LOADING_RETRY_AFTER_S)},
            )
        return engine


def install_http_api(app: faust.App, api: HttpApi) -> None:
    """Mount every route of ``api`` as a Faust web view (before the worker starts)."""
    for path, method, handler in api.routes():
        app.page(path, name=f"{method}:{path}")(_view(method, handler))


def _view(method: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> type[View]:
    async def respond(view: View, request: web.Request, **match_info: Any) -> web.StreamResponse:
        return await handler(request)

    return type(f"{handler.__name__}_view", (View,), {method: respond})


def observe_requests(metrics: Metrics) -> Middleware:
    """Counts and times every request by route (unmatched paths share one label), and logs API calls."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            elapsed = time.perf_counter() - started
            resource = request.match_info.route.resource
            path = resource.canonical if resource is not None else "unmatched"
            metrics.http_requests.labels(request.method, path, str(status)).inc()
            metrics.http_request_seconds.labels(request.method, path).observe(elapsed)
            log.log(
                logging.INFO if path.startswith("/api/") else logging.DEBUG,
                "%s %s -> %d in %.0f ms",
                request.method,
                request.path,
                status,
                elapsed * 1000.0,
                extra={"http_method": request.method, "path": path, "status": status, "duration_ms": elapsed * 1000.0},
            )

    return middleware


async def _parse(request: web.Request, model: type[Body]) -> Body:
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        errors = json.loads(exc.json(include_url=False))
        for error in errors:
            error["loc"] = ["body", *error["loc"]]
        raise _unprocessable(errors) from exc


def _fetched(images: Mapping[str, DecodedImage | FetchError], url: str, field: str) -> DecodedImage:
    image = images[url]
    if isinstance(image, FetchError):
        raise web.HTTPBadRequest(
            text=json.dumps({"detail": f"could not fetch {field}: {image.kind}: {image}"}),
            content_type="application/json",
        )
    return image


@dataclass(frozen=True)
class _Photo:
    """One source photo of a request with its tags and where the request names them (error locations)."""

    url: str
    url_field: str
    field: tuple[str | int, ...]
    tags: list[tuple[SourceTagIn, BBox]]


def _photos(body: SuggestTagsRequest) -> list[_Photo]:
    """``source_image_url`` with ``source_tags``, then each of ``more_sources``, in the order suggestions follow."""
    first = _Photo(body.source_image_url, "source_image_url", ("source_tags",), _boxes(body.source_tags))
    more = [
        _Photo(photo.image_url, f"more_sources[{index}].image_url", ("more_sources", index, "tags"), _boxes(photo.tags))
        for index, photo in enumerate(body.more_sources)
    ]
    return [first, *more]


def _boxes(tags: list[SourceTagIn]) -> list[tuple[SourceTagIn, BBox]]:
    return [(tag, BBox(tag.bbox.x, tag.bbox.y, tag.bbox.width, tag.bbox.height)) for tag in tags]


def _refuse_bad_tags(
    located: list[tuple[tuple[str | int, ...], int, tuple[SourceTagIn, BBox]]], errors: list[str | None]
) -> None:
    """422 naming each tag that cannot be answered, at its product id or its box."""
    refused = [
        _invalid((*field, index, "product_id" if error.startswith("empty_product_id") else "bbox"), error)
        for (field, index, _), error in zip(located, errors, strict=True)
        if error is not None
    ]
    if refused:
        raise _unprocessable(refused)


def _invalid(loc: tuple[str | int, ...], message: str, kind: str = "value_error") -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *loc], "msg": message}


def _unprocessable(errors: list[dict[str, Any]]) -> web.HTTPUnprocessableEntity:
    return web.HTTPUnprocessableEntity(text=json.dumps({"detail": errors}), content_type="application/json")


def _json(body: BaseModel) -> web.Response:
    return web.json_response(body.model_dump(mode="json"))
