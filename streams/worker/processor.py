"""Turns one micro-batch of raw upload messages into exactly one outgoing record each.

Every inbound message leaves as either a TagSuggestions record or a DeadLetter record: decode
errors, invalid events, unreachable images, inference failures and anything unexpected are
caught here, per event, and become that event's dead letter with its reason. One bad event
never costs its batch-mates their answer. Nothing here talks to Kafka, so the no-loss logic
can be reasoned about (and property-tested) apart from the transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from inference.tags import tag_error
from inference.types import MatchRequest, MatchResult, SourceImage
from schemas import DEAD_LETTER, IMAGE_UPLOADED, TAG_SUGGESTIONS, AvroCodec, DecodeError, EncodeError, decode, encode
from streams.deadletters import Original, dead_letter_record
from streams.events import (
    EventLimits,
    InvalidEvent,
    UploadEvent,
    check_size,
    parse_upload,
    suggestion_record,
    suggestions_codec,
)
from streams.fetch.errors import FetchError, UnexpectedFetchError
from streams.fetch.fetcher import DecodedImage, ImageFetcher

Fetched = Mapping[str, DecodedImage | FetchError]

log = logging.getLogger(__name__)


class PipelineLike(Protocol):
    @property
    def lineage(self) -> Mapping[str, str]:
        """``detector``, ``embedder`` and ``version`` of the models that run, as stamped on suggestions."""
        ...

    def run(self, requests: Sequence[MatchRequest]) -> list[MatchResult]: ...


@dataclass(frozen=True)
class Inbound(Original):
    """A message taken from the uploads topic, and when the worker took it."""

    received_at: datetime


@dataclass(frozen=True)
class Outbound:
    """A record to publish; ``reason`` is the dead letter's error kind, or None for a suggestion."""

    topic: str
    key: bytes | None
    value: bytes
    reason: str | None = None
    bare: bool = False
    """A dead letter that left the original bytes out (the one with them was refused)."""


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
    """Why one event gets a dead letter; the ids are the event's, when it was decoded far enough."""

    def __init__(
        self, kind: str, message: str, attempts: int = 1, ids: tuple[str | None, str | None] = (None, None)
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.attempts = attempts
        self.upload_id, self.upload_event_id = ids

    def of(self, event: UploadEvent) -> _Failed:
        self.upload_id, self.upload_event_id = event.upload_id, event.event_id
        return self


class SuggestionProcessor:
    def __init__(
        self,
        pipeline: PipelineLike,
        fetcher: ImageFetcher,
        topics: Topics,
        retry: RetryPolicy | None = None,
        limits: EventLimits | None = None,
        images_at_once: int = 16,
        codec: AvroCodec | None = None,
    ) -> None:
        """``images_at_once`` bounds the decoded images a batch holds: events are worked through in
        groups needing at most that many distinct images (an event needing more goes alone).
        ``codec`` writes the suggestions (`streams.events.suggestions_codec`; default: the latest version)."""
        self.pipeline = pipeline
        self.fetcher = fetcher
        self.topics = topics
        self.model = dict(pipeline.lineage)
        self.retry = retry or RetryPolicy()
        self.limits = limits or EventLimits()
        self.images_at_once = max(1, images_at_once)
        self.codec = codec or suggestions_codec()
        self.suggestions_version = self.codec.current(TAG_SUGGESTIONS).version

    async def process(self, batch: Sequence[Inbound]) -> list[Outbound]:
        """One Outbound per Inbound, in the same order; never raises (but for cancellation)."""
        try:
            return await self._process(batch)
        except Exception as exc:
            # Every step below catches its own failures per event, so this is a bug. Answering
            # each event with a dead letter still beats leaving the batch unanswered.
            log.exception("processing a batch of %d failed unexpectedly; dead-lettering it", len(batch))
            return [self.dead_letter(m, _Failed("pipeline_error", _unexpected(exc))) for m in batch]

    async def _process(self, batch: Sequence[Inbound]) -> list[Outbound]:
        outcomes: dict[int, Outbound] = {}
        events: dict[int, UploadEvent] = {}
        for index, message in enumerate(batch):
            try:
                events[index] = self._parse(message)
            except _Failed as failure:
                outcomes[index] = self.dead_letter(message, failure)
        for group in self._groups(events):
            outcomes.update(await self._process_group(batch, group))
        return [outcomes[i] for i in range(len(batch))]

    def _groups(self, events: dict[int, UploadEvent]) -> list[dict[int, UploadEvent]]:
        """Consecutive events whose distinct images fit ``images_at_once``: what one model call sees."""
        groups: list[dict[int, UploadEvent]] = []
        urls: set[str] = set()
        for index, event in events.items():
            if not groups or len(urls | event.image_urls) > self.images_at_once:
                groups.append({})
                urls = set()
            groups[-1][index] = event
            urls |= event.image_urls
        return groups

    async def _process_group(self, batch: Sequence[Inbound], events: dict[int, UploadEvent]) -> dict[int, Outbound]:
        outcomes: dict[int, Outbound] = {}
        images = await self._fetch_all({url for e in events.values() for url in e.image_urls})
        requests: dict[int, MatchRequest] = {}
        for index, event in events.items():
            try:
                requests[index] = _match_request(event, images, self.retry.fetch_attempts)
            except _Failed as failure:
                outcomes[index] = self.dead_letter(batch[index], failure.of(event))
            except Exception as exc:
                outcomes[index] = self.dead_letter(batch[index], _Failed("pipeline_error", _unexpected(exc)).of(event))
        for index, result in (await self._infer(requests)).items():
            outcomes[index] = self._answer(batch[index], events[index], result)
        return outcomes

    def _parse(self, message: Inbound) -> UploadEvent:
        try:
            record = decode(message.value, expected=IMAGE_UPLOADED)
        except DecodeError as exc:
            raise _Failed("decode_error", f"{exc.reason.value}: {exc}") from exc
        except Exception as exc:
            raise _Failed("decode_error", _unexpected(exc)) from exc
        ids = (_text(record.get("upload_id")), _text(record.get("event_id")))
        try:
            check_size(message.value, self.limits)
            return parse_upload(record, self.limits)
        except InvalidEvent as exc:
            raise _Failed("invalid_event", f"{exc.reason}: {exc}", ids=ids) from exc
        except Exception as exc:
            raise _Failed("invalid_event", _unexpected(exc), ids=ids) from exc

    async def _fetch_all(self, urls: set[str]) -> dict[str, DecodedImage | FetchError]:
        """Fetch every URL once; transient failures are retried with exponential backoff."""
        results: dict[str, DecodedImage | FetchError] = {}
        pending = sorted(urls)
        delay = self.retry.fetch_backoff_s
        for attempt in range(1, self.retry.fetch_attempts + 1):
            fetched = await self._fetch_isolated(pending)
            results.update(fetched)
            pending = [u for u, r in fetched.items() if isinstance(r, FetchError) and r.transient]
            if not pending or attempt == self.retry.fetch_attempts:
                break
            log.info("retrying %d transient image fetches in %.1fs", len(pending), delay)
            await asyncio.sleep(delay)
            delay *= 2
        return results

    async def _fetch_isolated(self, urls: list[str]) -> Fetched:
        """``fetch_many``, and should it ever raise, each URL on its own so only its events fail."""
        try:
            return await self.fetcher.fetch_many(urls)
        except Exception:
            log.exception("fetching %d images failed as a whole; fetching them one by one", len(urls))
        results: dict[str, DecodedImage | FetchError] = {}
        for url in urls:
            try:
                results.update(await self.fetcher.fetch_many([url]))
            except Exception as exc:
                results[url] = UnexpectedFetchError(url, _unexpected(exc))
        return results

    async def _infer(self, requests: dict[int, MatchRequest]) -> dict[int, MatchResult | _Failed]:
        """Run the batch; if it raises, run each request alone so one bad event spoils only itself."""
        if not requests:
            return {}
        indices = list(requests)
        try:
            batch = [requests[i] for i in indices]
            return dict(zip(indices, _checked(batch, await asyncio.to_thread(self.pipeline.run, batch)), strict=True))
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
                return _checked([request], await asyncio.to_thread(self.pipeline.run, [request]))[0]
            except Exception as exc:
                error = exc
                log.warning(
                    "pipeline failed for request %s: %r",
                    request.request_id,
                    exc,
                    extra={"event_id": request.request_id},
                )
        return _Failed("pipeline_error", f"{type(error).__name__}: {error}", self.retry.pipeline_attempts)

    def _answer(self, message: Inbound, event: UploadEvent, result: MatchResult | _Failed) -> Outbound:
        if isinstance(result, _Failed):
            return self.dead_letter(message, result.of(event))
        try:
            record = suggestion_record(event, result, self.model, message.received_at, self.suggestions_version)
            value = self.codec.encode(TAG_SUGGESTIONS, record)
        except EncodeError as exc:
            return self.dead_letter(message, _Failed("encode_error", str(exc)).of(event))
        except Exception as exc:
            return self.dead_letter(message, _Failed("pipeline_error", _unexpected(exc)).of(event))
        return Outbound(self.topics.suggestions, event.upload_id.encode(), value)

    def undeliverable(self, message: Inbound, outcome: Outbound, error: Exception) -> Outbound | None:
        """What to publish instead of ``outcome`` when the broker refused it for good (too large).

        A suggestion becomes a dead letter of kind ``publish_error``; a dead letter that was
        refused itself is replaced by one that keeps none of the original value (it says so);
        for that one, nothing is left to try (None).
        """
        if outcome.bare:
            return None
        if outcome.reason is None:
            text = f"the suggestion ({len(outcome.value)} bytes) could not be published: {error}"
        else:
            text = (
                f"{_error_message(outcome)}; then its dead letter ({len(outcome.value)} bytes) was refused too: {error}"
            )
        failure = _Failed("publish_error", text, ids=_ids(message.value))
        return self.dead_letter(message, failure, keep_value=outcome.reason is None)

    def dead_letter(self, message: Inbound, failure: _Failed, keep_value: bool = True) -> Outbound:
        """The dead letter of ``message``: its original bytes (cut to ``max_event_bytes``) and why."""
        record = dead_letter_record(
            message,
            failure.kind,
            str(failure),
            attempts=failure.attempts,
            upload_id=failure.upload_id,
            upload_event_id=failure.upload_event_id,
            max_value_bytes=self.limits.max_event_bytes if keep_value else 0,
            max_id_chars=self.limits.max_id_chars,
        )
        log.warning(
            "dead letter %s for %s[%d]@%d (upload %s): %s",
            failure.kind,
            message.topic,
            message.partition,
            message.offset,
            record["upload_id"],
            record["error_message"],
            extra={"upload_id": record["upload_id"], "event_id": record["upload_event_id"], "error_kind": failure.kind},
        )
        value = encode(DEAD_LETTER, record)
        return Outbound(self.topics.dead_letters, record["key"], value, failure.kind, bare=not keep_value)


def _match_request(event: UploadEvent, images: Fetched, fetch_attempts: int) -> MatchRequest:
    """The pipeline's request for an event whose images all arrived: every tag, those it cannot answer with their error.

    Only now, with the source images' sizes known, can a box outside its image be told apart.
    """
    for url in [event.target_image_url, *(s.image_url for s in event.sources)]:
        image = images[url]
        if isinstance(image, FetchError):
            attempts = fetch_attempts if image.transient else 1
            raise _Failed("fetch_error", f"{image.kind}: {image}", attempts)
    target = images[event.target_image_url]
    assert not isinstance(target, FetchError)
    sources: list[SourceImage] = []
    for source in event.sources:
        image = images[source.image_url]
        assert not isinstance(image, FetchError)
        size = (image.original_width, image.original_height)
        tags = tuple(
            replace(tag, error=tag.error or tag_error(tag.product_id, tag.bbox, size, image.scale))
            for tag in source.tags
        )
        sources.append(SourceImage(source.image_url, image.pixels, tags, image.scale))
    return MatchRequest(event.event_id, target.pixels, tuple(sources), event.similarity_threshold, target.scale)


def _checked(requests: Sequence[MatchRequest], results: Sequence[MatchResult]) -> Sequence[MatchResult]:
    """The pipeline's results, if they answer these requests: one each, in order, one match per tag.

    A plugin pipeline that breaks this contract must not give one event another event's answer.
    """
    if len(results) != len(requests):
        raise ValueError(f"the pipeline returned {len(results)} results for {len(requests)} requests")
    for request, result in zip(requests, results, strict=True):
        tags = sum(len(source.tags) for source in request.sources)
        if result.request_id != request.request_id or len(result.matches) != tags:
            raise ValueError(
                f"the pipeline answered request {result.request_id!r} with {len(result.matches)} matches "
                f"where request {request.request_id!r} has {tags} tags"
            )
    return results


def _error_message(letter: Outbound) -> str:
    """The reason an already built dead letter gives."""
    try:
        return str(decode(letter.value, expected=DEAD_LETTER)["error_message"])
    except Exception:
        return f"a dead letter of kind {letter.reason}"


def _ids(value: bytes) -> tuple[str | None, str | None]:
    """(upload_id, event_id) of an encoded upload, where it decodes."""
    try:
        record = decode(value, expected=IMAGE_UPLOADED)
    except Exception:
        return None, None
    return _text(record.get("upload_id")), _text(record.get("event_id"))


def _unexpected(exc: Exception) -> str:
    return f"unexpected_error: {type(exc).__name__}: {exc}"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
