"""The processor's promise, without a broker: exactly one outcome per event, in order, whatever happens.

A property-based test drives it with arbitrary bytes, arbitrary Avro-valid events (URLs, ids,
boxes, thresholds and attributes from wide strategies) and arbitrary failures of the fetcher
and the pipeline; example tests pin the cases that once lost whole batches.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.resources import files
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.types import BBox, Copy, MatchRequest, MatchResult, Method, TagMatch
from schemas import (
    DEAD_LETTER,
    IMAGE_UPLOADED,
    TAG_SUGGESTIONS,
    AvroCodec,
    DecodeError,
    Registry,
    SchemaError,
    decode,
    encode,
)
from streams.events import EventLimits, suggestions_codec
from streams.fetch.decode import DecodedImage
from streams.fetch.errors import ConnectionFailed, FetchError, NotAnImage
from streams.worker.processor import Inbound, Outbound, RetryPolicy, SuggestionProcessor, Topics

LIMITS = EventLimits(max_sources=4, max_tags=8, max_event_bytes=4096, max_id_chars=64, max_attribute_bytes=512)
DEAD_LETTER_KINDS = {"decode_error", "invalid_event", "fetch_error", "pipeline_error", "encode_error"}
TOPICS = Topics("suggestions", "dead-letters")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


# --- fakes whose every move is scripted by the test -----------------------------------------


class Boom(Exception):
    """A failure nobody foresaw."""


@dataclass
class ScriptedFetcher:
    """Answers each URL as ``plan`` says: an image, a fetch error, or an exception; may fail whole calls."""

    plan: dict[str, str]
    fail_whole_calls: int = 0
    calls: list[list[str]] = field(default_factory=list)

    async def fetch_many(self, urls: Iterable[str]) -> dict[str, DecodedImage | FetchError]:
        urls = list(urls)
        self.calls.append(urls)
        if self.fail_whole_calls > 0:
            self.fail_whole_calls -= 1
            raise Boom("the whole fetch call failed")
        answers: dict[str, DecodedImage | FetchError] = {}
        for url in urls:
            kind = self.plan.get(url, "image")
            if kind == "raise":
                raise Boom(f"fetching {url} exploded")
            if kind == "transient":
                answers[url] = ConnectionFailed(url, "refused")
            elif kind == "permanent":
                answers[url] = NotAnImage(url, "text")
            else:
                answers[url] = _image(len(url))
        return answers


def _image(seed: int) -> DecodedImage:
    side = 16 + seed % 48
    pixels = np.zeros((side, side + 8, 3), np.uint8)
    pixels.setflags(write=False)
    return DecodedImage(pixels, 2 * (side + 8), 2 * side, 0.5)


@dataclass
class ScriptedPipeline:
    """Runs as the next entry of ``script`` says, over and over: answer, raise, or answer wrongly."""

    script: list[str]
    lineage: dict[str, str] = field(default_factory=lambda: {"detector": "d", "embedder": "e", "version": "v"})
    calls: int = 0

    def run(self, requests: Sequence[MatchRequest]) -> list[MatchResult]:
        move = self.script[self.calls % len(self.script)] if self.script else "answer"
        self.calls += 1
        if move == "raise":
            raise Boom("the model crashed")
        results = [_answer(r) for r in requests]
        if move == "drop_one":
            return results[1:]
        if move == "extra_match":
            return [
                MatchResult(r.request_id, (*r.matches, r.matches[0] if r.matches else _miss("x")), 0) for r in results
            ]
        if move == "reversed" and len(results) > 1:
            return results[::-1]
        return results


def _answer(request: MatchRequest) -> MatchResult:
    """Answers as the pipeline contract says: a tag with an error is ``invalid``, the others are matched."""
    matches = []
    for source in request.sources:
        for index, tag in enumerate(source.tags):
            if tag.error is not None:
                matches.append(TagMatch.invalid(tag.product_id, tag.error))
            elif index % 2:
                matches.append(_miss(tag.product_id))
            else:
                copies = (Copy(BBox(11, 2, 3, 4), 0.8),)
                matches.append(
                    TagMatch(tag.product_id, True, 0.9, BBox(1, 2, 3, 4), None, Method.GEOMETRIC, None, copies)
                )
    return MatchResult(request.request_id, tuple(matches), 1)


def _miss(product_id: str) -> TagMatch:
    return TagMatch(product_id, False, 0.1, None, None, Method.NONE)


# --- strategies ------------------------------------------------------------------------------

HOSTILE_URLS = [
    "http://[127.0.0.1]:18080/x.png",
    "http://[::1/x.png",
    "http://host:99999/x.png",
    "http://host:port/x.png",
    "ftp://example.com/x.png",
    "http://",
    "",
    "not a url",
]
_ids = st.text(max_size=80)
_urls = st.one_of(
    st.sampled_from(HOSTILE_URLS),
    st.builds(lambda n: f"http://img.example/{n}.png", st.integers(0, 5)),
    st.text(max_size=40).map(lambda t: f"https://img.example/{t}"),
    st.text(max_size=30),
)
_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
_tags = st.fixed_dictionaries(
    {
        "product_id": _ids,
        "bbox": st.fixed_dictionaries({"x": _floats, "y": _floats, "width": _floats, "height": _floats}),
    }
)
_events = st.fixed_dictionaries(
    {
        "event_id": _ids,
        "occurred_at": st.just(NOW),
        "upload_id": _ids,
        "target_image_url": _urls,
        "sources": st.lists(
            st.fixed_dictionaries({"image_url": _urls, "tags": st.lists(_tags, max_size=4)}), max_size=5
        ),
        "similarity_threshold": st.one_of(st.none(), st.floats(width=32)),
        "attributes": st.dictionaries(st.text(max_size=20), st.text(max_size=200), max_size=5),
    }
)
_values = st.one_of(_events.map(lambda e: encode(IMAGE_UPLOADED, e)), st.binary(max_size=64))
_batches = st.lists(_values, min_size=1, max_size=8)
_fetch_plans = st.dictionaries(
    st.builds(lambda n: f"http://img.example/{n}.png", st.integers(0, 5)),
    st.sampled_from(["image", "transient", "permanent", "raise"]),
)
_scripts = st.lists(st.sampled_from(["answer", "raise", "drop_one", "extra_match", "reversed"]), max_size=4)


def _process(
    values: list[bytes],
    fetcher: ScriptedFetcher,
    pipeline: ScriptedPipeline,
    images: int = 16,
    codec: AvroCodec | None = None,
) -> list[Outbound]:
    processor = SuggestionProcessor(
        pipeline,  # type: ignore[arg-type]
        fetcher,  # type: ignore[arg-type]
        TOPICS,
        RetryPolicy(fetch_attempts=2, fetch_backoff_s=0.0),
        LIMITS,
        images_at_once=images,
        codec=codec,
    )
    batch = [Inbound("uploads", 3, 100 + i, f"k{i}".encode(), value, NOW) for i, value in enumerate(values)]
    return asyncio.run(processor.process(batch))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=_batches,
    plan=_fetch_plans,
    whole_call_failures=st.integers(0, 2),
    script=_scripts,
    images=st.integers(1, 16),
)
def test_every_event_gets_exactly_one_outcome_in_order(
    values: list[bytes], plan: dict[str, str], whole_call_failures: int, script: list[str], images: int
) -> None:
    fetcher = ScriptedFetcher(plan, whole_call_failures)
    outcomes = _process(values, fetcher, ScriptedPipeline(script), images)

    assert len(outcomes) == len(values)
    for offset, (value, outcome) in enumerate(zip(values, outcomes, strict=True), start=100):
        assert len(outcome.value) <= LIMITS.max_event_bytes + 16 * 1024
        if outcome.reason is None:
            assert outcome.topic == TOPICS.suggestions
            event = decode(value, expected=IMAGE_UPLOADED)
            suggestion = decode(outcome.value, expected=TAG_SUGGESTIONS)
            assert suggestion["upload_event_id"] == event["event_id"]
            assert suggestion["upload_id"] == event["upload_id"]
            tags = [t["product_id"] for s in event["sources"] for t in s["tags"]]
            assert [s["product_id"] for s in suggestion["suggestions"]] == tags
            for answer in suggestion["suggestions"]:
                if answer["bbox"] is not None:
                    assert all(math.isfinite(v) for v in answer["bbox"].values())
        else:
            assert outcome.topic == TOPICS.dead_letters
            assert outcome.reason in DEAD_LETTER_KINDS
            letter = decode(outcome.value, expected=DEAD_LETTER)
            assert (letter["original_partition"], letter["original_offset"]) == (3, offset)
            assert letter["error_kind"] == outcome.reason and letter["error_message"]
            assert letter["value"] == value[: LIMITS.max_event_bytes]
            assert letter["value_truncated"] == (len(value) > LIMITS.max_event_bytes)
            assert letter["value_size"] == len(value)


# --- the cases that once cost whole batches ---------------------------------------------------


def _event(upload_id: str, target: str = "http://img.example/0.png", **changes: Any) -> dict[str, Any]:
    return {
        "event_id": f"event-{upload_id}",
        "occurred_at": NOW,
        "upload_id": upload_id,
        "target_image_url": target,
        "sources": [
            {
                "image_url": "http://img.example/1.png",
                "tags": [{"product_id": "sku-1", "bbox": {"x": 2.0, "y": 2.0, "width": 10.0, "height": 10.0}}],
            }
        ],
        "similarity_threshold": None,
        "attributes": {},
        **changes,
    }


def _kinds(outcomes: list[Outbound]) -> list[str | None]:
    return [o.reason for o in outcomes]


def test_a_malformed_url_dead_letters_its_event_only() -> None:
    values = [
        encode(IMAGE_UPLOADED, _event("before")),
        encode(IMAGE_UPLOADED, _event("bracketed-ipv4", "http://[127.0.0.1]:18080/x.png")),
        encode(IMAGE_UPLOADED, _event("open-bracket", "http://[::1/x.png")),
        encode(IMAGE_UPLOADED, _event("after")),
    ]

    outcomes = _process(values, ScriptedFetcher({}), ScriptedPipeline([]))

    assert _kinds(outcomes) == [None, "invalid_event", "invalid_event", None]
    for outcome, upload_id in zip(outcomes[1:3], ("bracketed-ipv4", "open-bracket"), strict=True):
        letter = decode(outcome.value, expected=DEAD_LETTER)
        assert letter["error_message"].startswith("bad_url")
        # The event was decoded: its dead letter says which upload it was.
        assert (letter["upload_id"], letter["upload_event_id"]) == (upload_id, f"event-{upload_id}")


def test_an_oversized_event_is_refused_at_the_door_with_a_truncated_copy() -> None:
    huge = _event("huge")
    huge["sources"][0]["tags"][0]["product_id"] = "p" * 10_000
    value = encode(IMAGE_UPLOADED, huge)

    (outcome,) = _process([value], ScriptedFetcher({}), ScriptedPipeline([]))

    letter = decode(outcome.value, expected=DEAD_LETTER)
    assert outcome.reason == "invalid_event"
    assert letter["error_message"].startswith(f"event_too_large: event is {len(value)} bytes, limit 4096")
    assert letter["value_truncated"] is True and letter["value_size"] == len(value)
    assert letter["value"] == value[:4096]
    assert letter["upload_id"] == "huge"


def test_an_over_long_id_is_refused_even_in_a_small_event() -> None:
    (outcome,) = _process(
        [encode(IMAGE_UPLOADED, _event("u" * 100, event_id="e-1"))], ScriptedFetcher({}), ScriptedPipeline([])
    )

    letter = decode(outcome.value, expected=DEAD_LETTER)
    assert letter["error_message"].startswith("id_too_long: upload_id has 100 characters, limit 64")
    assert letter["upload_id"] == "u" * 64 + "... (100 characters)"


def test_a_fetcher_that_raises_costs_only_the_events_of_its_url() -> None:
    values = [
        encode(IMAGE_UPLOADED, _event("good")),
        encode(IMAGE_UPLOADED, _event("cursed", "http://img.example/5.png")),
    ]

    outcomes = _process(values, ScriptedFetcher({"http://img.example/5.png": "raise"}), ScriptedPipeline([]))

    assert _kinds(outcomes) == [None, "fetch_error"]
    assert "unexpected" in decode(outcomes[1].value, expected=DEAD_LETTER)["error_message"]


def test_answers_are_given_in_the_photos_own_pixels_and_boxes_checked_against_them() -> None:
    """Images come reduced (scale 0.5): a box beyond the reduced size but inside the original is fine."""
    event = _event("scaled")
    event["sources"][0]["tags"].append(
        {"product_id": "far", "bbox": {"x": 40.0, "y": 20.0, "width": 6.0, "height": 6.0}}
    )
    event["sources"][0]["tags"].append(
        {"product_id": "out", "bbox": {"x": 900.0, "y": 9.0, "width": 6.0, "height": 6.0}}
    )
    seen: list[MatchRequest] = []

    class Recording(ScriptedPipeline):
        def run(self, requests: Sequence[MatchRequest]) -> list[MatchResult]:
            seen.extend(requests)
            return super().run(requests)

    (outcome,) = _process([encode(IMAGE_UPLOADED, event)], ScriptedFetcher({}), Recording([]))

    suggestion = decode(outcome.value, expected=TAG_SUGGESTIONS)
    assert [s["product_id"] for s in suggestion["suggestions"]] == ["sku-1", "far", "out"]
    assert suggestion["suggestions"][2]["error"].startswith("bbox_outside_image")
    (request,) = seen
    assert request.target_scale == 0.5 and request.sources[0].scale == 0.5
    # Every tag reaches the pipeline, the one outside its image with its error (answered "invalid").
    assert [(t.product_id, t.error is None) for t in request.sources[0].tags] == [
        ("sku-1", True),
        ("far", True),
        ("out", False),
    ]


def test_further_copies_of_a_found_product_are_published_with_it() -> None:
    event = _event("shelf")
    event["sources"][0]["tags"].append(
        {"product_id": "sku-2", "bbox": {"x": 4.0, "y": 4.0, "width": 6.0, "height": 6.0}}
    )

    (outcome,) = _process([encode(IMAGE_UPLOADED, event)], ScriptedFetcher({}), ScriptedPipeline([]))

    found, missed = decode(outcome.value, expected=TAG_SUGGESTIONS)["suggestions"]
    assert found["copies"] == [{"bbox": {"x": 11.0, "y": 2.0, "width": 3.0, "height": 4.0}, "confidence": 0.8}]
    assert missed["found"] is False and missed["copies"] == []


def test_during_an_upgrade_suggestions_are_written_at_the_version_every_reader_knows() -> None:
    """Pinned to v1 (``TAGSTREAM_TOPICS__SUGGESTIONS_SCHEMA_VERSION=1``): a reader of the previous release decodes it."""
    values = [encode(IMAGE_UPLOADED, _event("shelf"))]

    (latest,) = _process(values, ScriptedFetcher({}), ScriptedPipeline([]))
    (pinned,) = _process(values, ScriptedFetcher({}), ScriptedPipeline([]), codec=suggestions_codec(1))

    registry = Registry()
    registry.register(1, _shipped("image_uploaded.v1.avsc"))
    registry.register(2, _shipped("tag_suggestions.v1.avsc"))
    previous_release = AvroCodec(registry)
    (suggestion,) = previous_release.decode(pinned.value, expected=TAG_SUGGESTIONS)["suggestions"]
    assert suggestion["found"] is True and "copies" not in suggestion
    with pytest.raises(DecodeError):
        previous_release.decode(latest.value, expected=TAG_SUGGESTIONS)
    assert decode(latest.value, expected=TAG_SUGGESTIONS)["suggestions"][0]["copies"]
    with pytest.raises(SchemaError, match="has no version 3"):
        suggestions_codec(3)


def _shipped(filename: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(files("schemas").joinpath(filename).read_text("utf-8"))
    return schema


def test_a_pipeline_answering_the_wrong_requests_never_gives_one_event_anothers_answer() -> None:
    values = [encode(IMAGE_UPLOADED, _event(f"u{i}")) for i in range(3)]

    outcomes = _process(values, ScriptedFetcher({}), ScriptedPipeline(["reversed", "answer"]))

    assert _kinds(outcomes) == [None, None, None]
    ids = [decode(o.value, expected=TAG_SUGGESTIONS)["upload_id"] for o in outcomes]
    assert ids == ["u0", "u1", "u2"]


def test_events_are_worked_through_in_groups_that_fit_the_image_budget() -> None:
    values = [encode(IMAGE_UPLOADED, _event(f"u{i}", f"http://img.example/{i + 2}.png")) for i in range(3)]
    fetcher = ScriptedFetcher({})

    outcomes = _process(values, fetcher, ScriptedPipeline([]), images=3)

    assert _kinds(outcomes) == [None, None, None]
    # Each event needs its own target and the shared source: two events (3 images) per group.
    assert [sorted(call) for call in fetcher.calls] == [
        ["http://img.example/1.png", "http://img.example/2.png", "http://img.example/3.png"],
        ["http://img.example/1.png", "http://img.example/4.png"],
    ]
