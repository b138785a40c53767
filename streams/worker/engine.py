"""The worker's models and image fetcher: loaded once, shared by the suggest agent and the HTTP API.

Both callers get the same :class:`Engine`, so an HTTP answer and a stream answer come from the
same pipeline, the same caches and the same fetch safety rules. The pipeline's caches and
torch modules are not thread-safe and both callers run inference in worker threads, so every
model call goes through :class:`SharedPipeline`, which serializes them.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, cast

from inference.config import PipelineConfig
from inference.detector import Detector
from inference.offline_models import build_offline_models
from inference.pipeline import Pipeline
from inference.types import Detection, MatchRequest, MatchResult, RGBImage
from streams.fetch.fetcher import DecodedImage, FetchError, FetchPolicy, ImageFetcher
from streams.metrics import Metrics
from streams.settings import Settings
from streams.worker.processor import PipelineLike

log = logging.getLogger(__name__)


class ServingPipeline(PipelineLike, Protocol):
    """What the worker needs of a pipeline: matching for both callers, the detector for ``/api/detect``."""

    @property
    def detector(self) -> Detector: ...


def load_pipeline(settings: Settings) -> ServingPipeline:
    """The configured pipeline, loaded and warmed up, or the one a ``pipeline_factory`` plugin builds from it.

    A plugin's pipeline is its own: it is not warmed up here (it may block or fail on purpose).
    """
    if settings.pipeline_factory:
        module_name, _, attribute = settings.pipeline_factory.partition(":")
        factory = cast(Callable[[Settings], ServingPipeline], getattr(importlib.import_module(module_name), attribute))
        return factory(settings)
    pipeline = Pipeline.load(pipeline_config(settings))
    # The first upload would otherwise pay the process's one-time costs (≈ 270 ms on a 2-core CPU).
    pipeline.warm_up(batch_size=settings.max_batch)
    return pipeline


def pipeline_config(settings: Settings) -> PipelineConfig:
    """The library config the settings describe; offline, with random-init models built into the cache dir.

    Building them once writes checkpoints to disk, which is why it happens here, where the
    models are loaded, and not in the settings object.
    """
    config = settings.pipeline_config()
    config = replace(config, models=replace(config.models, export_dir=str(settings.cache_dir / "onnx")))
    if not settings.models.offline:
        return config
    built = build_offline_models(settings.cache_dir / "models")
    models = replace(config.models, detector=str(built.detector), embedder=str(built.embedder))
    return replace(config, models=models)


def fetch_policy(settings: Settings) -> FetchPolicy:
    fetch = settings.fetch
    return FetchPolicy(
        allow_private_networks=fetch.allow_private_networks,
        max_bytes=fetch.max_bytes,
        max_pixels=fetch.max_pixels,
        max_side=fetch.working_max_side,
        max_redirects=fetch.max_redirects,
        connect_timeout=fetch.connect_timeout_s,
        read_timeout=min(fetch.read_timeout_s, FetchPolicy.read_timeout),
        total_timeout=fetch.read_timeout_s,
        max_concurrency=fetch.max_concurrency,
        max_decodes=fetch.max_decodes,
        cache_max_items=fetch.cache_images,
        cache_max_bytes=fetch.cache_bytes,
    )


class SharedPipeline:
    """The one door to the models: calls are serialized and their stage times recorded.

    ``run`` is the pipeline interface the stream processor calls from a worker thread. The HTTP
    API uses ``match`` and ``detect``, which queue on an asyncio lock first, so a burst of HTTP
    requests waits on the event loop instead of occupying executor threads (which image
    decoding needs) while the stream holds the models.
    """

    def __init__(self, pipeline: ServingPipeline, metrics: Metrics) -> None:
        self._pipeline = pipeline
        self._metrics = metrics
        self._models = threading.Lock()
        self._http_queue = asyncio.Lock()

    @property
    def lineage(self) -> Mapping[str, str]:
        return self._pipeline.lineage

    @property
    def class_names(self) -> list[str]:
        return self._pipeline.detector.class_names

    def run(self, requests: Sequence[MatchRequest]) -> list[MatchResult]:
        with self._models:
            results = self._pipeline.run(requests)
        for result in results:
            self._metrics.observe_stages(result.stage_ms)
        return results

    async def match(self, request: MatchRequest) -> MatchResult:
        async with self._http_queue:
            return (await asyncio.to_thread(self.run, [request]))[0]

    async def detect(self, image: RGBImage, confidence: float) -> list[Detection]:
        async with self._http_queue:
            return await asyncio.to_thread(self._detect, image, confidence)

    def _detect(self, image: RGBImage, confidence: float) -> list[Detection]:
        started = time.perf_counter()
        with self._models:
            detections = self._pipeline.detector.detect([image], confidence)[0]
        self._metrics.stage_seconds.labels("detect").observe(time.perf_counter() - started)
        return detections


class MeteredFetcher(ImageFetcher):
    """The SSRF-safe fetcher, recording fetch time, image sizes and failures by kind."""

    def __init__(self, policy: FetchPolicy, metrics: Metrics) -> None:
        super().__init__(policy)
        self._metrics = metrics

    async def fetch_many(self, urls: Iterable[str]) -> dict[str, DecodedImage | FetchError]:
        started = time.perf_counter()
        results = await super().fetch_many(urls)
        self._metrics.stage_seconds.labels("fetch").observe(time.perf_counter() - started)
        for result in results.values():
            if isinstance(result, FetchError):
                self._metrics.fetch_errors.labels(result.kind).inc()
            else:
                self._metrics.fetch_image_bytes.observe(result.nbytes)
        return results


@dataclass(frozen=True)
class Engine:
    pipeline: SharedPipeline
    fetcher: ImageFetcher
    model: dict[str, str]
    """Detector, embedder and version, as stamped on every suggestion."""


class ModelsUnavailable(RuntimeError):
    """The models failed to load as many times as the worker may try: it should leave its group."""


class EngineProvider:
    """Loads the models and opens the fetcher once, off the event loop, for every caller.

    A failed load is retried by the next caller (Faust restarts a crashed agent within seconds),
    up to ``settings.model_load_attempts`` attempts; then :class:`ModelsUnavailable` says the
    worker should give its partitions to a worker that can answer them.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._engine: Engine | None = None
        self._failures = 0
        self._error: str | None = None

    @property
    def loaded(self) -> Engine | None:
        """The engine once its models are loaded; None while they load (or before anyone asked)."""
        return self._engine

    def status(self) -> tuple[bool, str | None]:
        """Whether the models are loaded, and why not when the last attempt failed."""
        return self._engine is not None, self._error

    async def __call__(self) -> Engine:
        async with self._lock:
            if self._engine is None:
                attempts = self._settings.model_load_attempts
                if self._failures >= attempts:
                    raise ModelsUnavailable(f"the models failed to load {self._failures} times: {self._error}")
                try:
                    self._engine = await self._build()
                except Exception as exc:
                    self._failures += 1
                    self._error = f"attempt {self._failures} of {attempts}: {type(exc).__name__}: {exc}"
                    self._metrics.model_load_failures.inc()
                    log.error("loading the models failed (%s)", self._error)
                    if self._failures >= attempts:
                        raise ModelsUnavailable(f"the models failed to load {attempts} times: {self._error}") from exc
                    raise
                self._error = None
            return self._engine

    async def _build(self) -> Engine:
        settings = self._settings
        log.info("loading models (%s, %s)", settings.models.detector, settings.models.embedder)
        started = time.perf_counter()
        pipeline = await asyncio.to_thread(load_pipeline, settings)
        elapsed = time.perf_counter() - started
        self._metrics.model_load_seconds.set(elapsed)
        model = dict(pipeline.lineage)
        log.info(
            "models loaded in %.1fs: %s",
            elapsed,
            model,
            extra={"load_seconds": round(elapsed, 3), "model_version": model["version"]},
        )
        fetcher = MeteredFetcher(fetch_policy(settings), self._metrics)
        await fetcher.__aenter__()
        return Engine(SharedPipeline(pipeline, self._metrics), fetcher, model)
