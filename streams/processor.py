"""Turns one micro-batch of raw upload messages into exactly one outgoing record each.

Every inbound message leaves as either a TagSuggestions record or a DeadLetter record: decode
errors, invalid events, unreachable images and inference failures are all caught here and
become dead letters with their reason. Nothing here talks to Kafka, so the no-loss logic can be
reasoned about (and tested) apart from the transport.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from inference.types import MatchRequest, MatchResult, RGBImage, SourceImage, SourceTag
from schemas import DEAD_LETTER, IMAGE_UPLOADED, TAG_SUGGESTIONS, DecodeError, EncodeError, decode, encode
from streams.events import EventLimits, InvalidEvent, UploadEvent, parse_upload, suggestion_record
from streams.fetch import ImageFetcher
from streams.fetch_errors import FetchError

log = logging.getLogger(__name__)


class PipelineLike(Protocol):
    @property
    def lineage(self) -> Mapping[str, str]:
        """``detector``, ``embedder`` and ``version`` of the models that run, as stamped on suggestions."""
        ...

    def run(self, requests: Sequence[MatchRequest]) -> list[MatchResult]: ...


@dataclass(frozen=True)
class Inbound:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    received_at: datetime


@dataclass(frozen=True)
class Outbound:
    """A record to publish; ``reason`` is the dead letter's error kind, or None for a suggestion."""

    topic: str
    key: bytes | None
    value: bytes
    reason: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    fetch_attempts: int = 3
    fetch_backoff_s: float = 0.5
    pipeline_attempts: int = 2


@dataclass(frozen=True)
class Topics:
    suggestions: str
    dead_letters: str


class _Failed(Exception):
    def __init__(self, kind: str, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.kind = kind
        self.attempts = attempts


class SuggestionProcessor:
    def __init__(
        self,
        pipeline: PipelineLike,
        fetcher: ImageFetcher,
        topics: Topics,
        retry: RetryPolicy | None = None,
        limits: EventLimits | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.fetcher = fetcher
        self.topics = topics
        self.model = dict(pipeline.lineage)
        self.retry = retry or RetryPolicy()
        self.limits = limits or EventLimits()

    async def process(self, batch: Sequence[Inbound]) -> list[Outbound]:
        """One Outbound per Inbound, in the same order."""
        outcomes: dict[int, Outbound] = {}
        events: dict[int, UploadEvent] = {}
        for index, message in enumerate(batch):
            try:
                events[index] = self._parse(message)
            except _Failed as failure:
                outcomes[index] = self._dead_letter(message, failure, None)
        images = await self._fetch_all({url for e in events.values() for url in e.image_urls})
        requests: dict[int, MatchRequest] = {}
        tag_errors: dict[int, dict[int, str]] = {}
        for index, event in events.items():
            try:
                requests[index], tag_errors[index] = _match_request(event, images, self.retry.fetch_attempts)
            except _Failed as failure:
                outcomes[index] = self._dead_letter(batch[index], failure, event)
        results = await self._infer(requests)
        for index, result in results.items():
            event = events[index]
            if isinstance(result, _Failed):
                outcomes[index] = self._dead_letter(batch[index], result, event)
                continue
            record = suggestion_record(event, result, tag_errors[index], self.model, batch[index].received_at)
            try:
                value = encode(TAG_SUGGESTIONS, record)
            except EncodeError as exc:
                outcomes[index] = self._dead_letter(batch[index], _Failed("encode_error", str(exc)), event)
                continue
            outcomes[index] = Outbound(self.topics.suggestions, event.upload_id.encode(), value)
        return [outcomes[i] for i in range(len(batch))]

    def _parse(self, message: Inbound) -> UploadEvent:
        try:
            record = decode(message.value, expected=IMAGE_UPLOADED)
        except DecodeError as exc:
            raise _Failed("decode_error", f"{exc.reason.value}: {exc}") from exc
        try:
            return parse_upload(record, self.limits)
        except InvalidEvent as exc:
            raise _Failed("invalid_event", f"{exc.reason}: {exc}") from exc

    async def _fetch_all(self, urls: set[str]) -> dict[str, RGBImage | FetchError]:
        """Fetch every URL once; transient failures are retried with exponential backoff."""
        results: dict[str, RGBImage | FetchError] = {}
        pending = sorted(urls)
        delay = self.retry.fetch_backoff_s
        for attempt in range(1, self.retry.fetch_attempts + 1):
            fetched = await self.fetcher.fetch_many(pending)
            results.update(fetched)
            pending = [u for u, r in fetched.items() if isinstance(r, FetchError) and r.transient]
            if not pending or attempt == self.retry.fetch_attempts:
                break
            log.info("retrying %d transient image fetches in %.1fs", len(pending), delay)
            await asyncio.sleep(delay)
            delay *= 2
        return results

    async def _infer(self, requests: dict[int, MatchRequest]) -> dict[int, MatchResult | _Failed]:
        """Run the batch; if it raises, run each request alone so one bad event spoils only itself."""
        if not requests:
            return {}
        indices = list(requests)
        try:
            batch_results = await asyncio.to_thread(self.pipeline.run, [requests[i] for i in indices])
            return dict(zip(indices, batch_results, strict=True))
        except Exception:
            log.exception("pipeline failed on a batch of %d; isolating events", len(indices))
        outcomes: dict[int, MatchResult | _Failed] = {}
        for index in indices:
            outcomes[index] = await self._infer_alone(requests[index])
        return outcomes

    async def _infer_alone(self, request: MatchRequest) -> MatchResult | _Failed:
        error: Exception | None = None
        for _ in range(self.retry.pipeline_attempts):
            try:
                return (await asyncio.to_thread(self.pipeline.run, [request]))[0]
            except Exception as exc:
                error = exc
                log.warning(
                    "pipeline failed for request %s: %r",
                    request.request_id,
                    exc,
                    extra={"event_id": request.request_id},
                )
        return _Failed("pipeline_error", f"{type(error).__name__}: {error}", self.retry.pipeline_attempts)

    def _dead_letter(self, message: Inbound, failure: _Failed, event: UploadEvent | None) -> Outbound:
        record: dict[str, Any] = {
            "event_id": str(uuid.uuid4()),
            "original_topic": message.topic,
            "original_partition": message.partition,
            "original_offset": message.offset,
            "key": message.key,
            "value": message.value,
            "error_kind": failure.kind,
            "error_message": str(failure),
            "attempts": failure.attempts,
            "failed_at": datetime.now(timezone.utc),
            "upload_id": event.upload_id if event else None,
            "upload_event_id": event.event_id if event else None,
        }
        log.warning(
            "dead letter %s for %s[%d]@%d (upload %s): %s",
            failure.kind,
            message.topic,
            message.partition,
            message.offset,
            record["upload_id"],
            failure,
            extra={"upload_id": record["upload_id"], "event_id": record["upload_event_id"], "error_kind": failure.kind},
        )
        return Outbound(self.topics.dead_letters, message.key, encode(DEAD_LETTER, record), failure.kind)


def _match_request(
    event: UploadEvent, images: Mapping[str, RGBImage | FetchError], fetch_attempts: int
) -> tuple[MatchRequest, dict[int, str]]:
    """The pipeline's request for an event whose images all arrived, plus the per-tag errors."""
    for url in [event.target_image_url, *(s.image_url for s in event.sources)]:
        image = images[url]
        if isinstance(image, FetchError):
            attempts = fetch_attempts if image.transient else 1
            raise _Failed("fetch_error", f"{image.kind}: {image}", attempts)
    target = images[event.target_image_url]
    assert not isinstance(target, FetchError)
    tag_errors: dict[int, str] = {}
    sources: list[SourceImage] = []
    position = 0
    for source in event.sources:
        tags: list[SourceTag] = []
        image = images[source.image_url]
        assert not isinstance(image, FetchError)
        height, width = image.shape[:2]
        for upload_tag in source.tags:
            error = upload_tag.error
            if error is None and upload_tag.tag.bbox.clip(width, height).area <= 0:
                # Only now is the source image's size known; any pipeline (plugins too) gets this.
                box = upload_tag.tag.bbox
                error = (
                    f"bbox_outside_image: bbox (x={box.x:g}, y={box.y:g}, w={box.width:g}, h={box.height:g}) "
                    f"does not overlap the {width}x{height} source image"
                )
            if error is not None:
                tag_errors[position] = error
            else:
                tags.append(upload_tag.tag)
            position += 1
        sources.append(SourceImage(source.image_url, image, tuple(tags)))
    request = MatchRequest(event.event_id, target, tuple(sources), event.similarity_threshold)
    return request, tag_errors
