"""The reference HTTP API, health and readiness on real worker processes (tiny offline models)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from support import reference_api
from support.brokers import Broker
from support.processes import WorkerFactory
from support.web_worker import WebWorker, start_web_worker, worker_factory

from inference.types import BBox
from streams.broker import free_port
from workbench.image_server import ImageServer
from workbench.scenes import DemoSet

SUGGEST = "/api/suggest-tags"
DETECT = "/api/detect"
API_MAX_TAGS = 70


@pytest.fixture(scope="module")
def factory(broker: Broker, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerFactory]:
    with worker_factory(broker, cache_dir, tmp_path_factory.mktemp("web-api-workers")) as started:
        yield started


@pytest.fixture(scope="module")
def started(factory: WorkerFactory, tmp_path_factory: pytest.TempPathFactory) -> tuple[WebWorker, WebWorker, Path]:
    """Both workers of the module, started together so their start-ups overlap.

    ``api`` may fetch from loopback, where the test images are served. ``guarded`` has the
    default SSRF policy, and its models load only once the returned gate file exists.
    """
    gate = tmp_path_factory.mktemp("gate") / "open"
    guarded = start_web_worker(
        factory,
        "web-guarded",
        TAGSTREAM_FETCH__ALLOW_PRIVATE_NETWORKS="false",
        TAGSTREAM_PIPELINE_FACTORY="support.pipelines.gated:build",
        GATED_PIPELINE_OPEN=str(gate),
    )
    # A tag limit above the 64 of EventLimits' class default: the HTTP API must apply the setting.
    api = start_web_worker(factory, "web-api", TAGSTREAM_MAX_TAGS=str(API_MAX_TAGS))
    return api, guarded, gate


@pytest.fixture(scope="module")
def api(started: tuple[WebWorker, WebWorker, Path]) -> WebWorker:
    worker = started[0]
    worker.wait_for("/ready", 200, timeout_s=180)
    return worker


@pytest.fixture(scope="module")
def guarded(started: tuple[WebWorker, WebWorker, Path]) -> tuple[WebWorker, Path]:
    _, worker, gate = started
    worker.wait_for("/health", 200, timeout_s=180)
    return worker, gate


def _box(box: BBox) -> dict[str, float]:
    return {"x": box.x, "y": box.y, "width": box.width, "height": box.height}


def _suggest_body(demo_set: DemoSet, server: ImageServer, upload: str) -> dict[str, Any]:
    source, tags = next(iter(demo_set.source_tags.items()))
    return {
        "source_image_url": server.url(f"{source}.png"),
        "source_tags": [{"product_id": t.product_id, "bbox": _box(t.bbox)} for t in tags],
        "target_image_url": server.url(f"{upload}.png"),
        "similarity_threshold": 0.75,
    }


def test_not_ready_while_models_load_then_ready(guarded: tuple[WebWorker, Path]) -> None:
    worker, gate = guarded
    loading = worker.get("/ready")
    assert loading.status_code == 503
    assert loading.json()["models_loaded"] is False
    classes = worker.get("/api/classes")
    assert classes.status_code == 503
    assert "loading" in classes.json()["detail"]
    assert classes.headers["Retry-After"]
    assert worker.get("/health").json() == {"status": "healthy"}

    gate.touch()
    ready = worker.wait_for("/ready", 200, timeout_s=120).json()
    assert ready["models_loaded"] is True and ready["consumer_assigned"] is True
    assert "web-guarded.image-uploaded[0]" in ready["partitions"]


def test_default_policy_refuses_private_image_urls(
    guarded: tuple[WebWorker, Path], api: WebWorker, demo_set: DemoSet, image_server: ImageServer
) -> None:
    worker, gate = guarded
    gate.touch()
    worker.wait_for("/ready", 200, timeout_s=120)
    body = _suggest_body(demo_set, image_server, "upload-01")

    refused = worker.post(SUGGEST, body)
    detected = worker.post(DETECT, {"image_url": body["target_image_url"]})

    assert refused.status_code == 400, refused.text
    assert "blocked_address" in refused.json()["detail"] and "loopback" in refused.json()["detail"]
    assert detected.status_code == 400 and "blocked_address" in detected.json()["detail"]
    # The same request is fine where private networks are allowed: the refusal is the policy's.
    assert api.post(SUGGEST, body).status_code == 200


def test_health_and_readiness(api: WebWorker) -> None:
    assert api.get("/health").json() == {"status": "healthy"}
    ready = api.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert "web-api.image-uploaded[0]" in ready.json()["partitions"]


def test_classes_are_the_detectors_80_names(api: WebWorker) -> None:
    response = api.get("/api/classes")
    assert response.status_code == 200
    classes = response.json()["classes"]
    assert len(classes) == 80 and len(set(classes)) == 80
    assert all(isinstance(name, str) and name for name in classes)


def test_suggest_tags_finds_products_where_they_are(
    api: WebWorker, demo_set: DemoSet, image_server: ImageServer
) -> None:
    upload = "upload-01"
    body = _suggest_body(demo_set, image_server, upload)

    response = api.post(SUGGEST, body)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"suggestions", "detections_count"}
    assert isinstance(answer["detections_count"], int)
    suggestions = answer["suggestions"]
    assert [s["product_id"] for s in suggestions] == [t["product_id"] for t in body["source_tags"]]
    truth = demo_set.ground_truth[upload]
    found = 0
    for suggestion in suggestions:
        assert set(suggestion) == {"product_id", "found", "confidence", "suggested_bbox", "detected_class"}
        expected = truth[suggestion["product_id"]]
        if expected is None:
            assert suggestion["found"] is False, suggestion
        else:
            assert suggestion["found"] is True, suggestion
            assert BBox(**suggestion["suggested_bbox"]).iou(expected) > 0.5, (suggestion, expected)
            found += 1
    assert found >= 1, "the demo upload should contain at least one product of the source"


def test_suggest_tags_answers_every_copy_of_a_product_when_asked(
    api: WebWorker, demo_set: DemoSet, tmp_path: Path
) -> None:
    """The upload shown twice side by side: each product found is found on both copies.

    Without ``include_copies`` the answer keeps the reference service's exact shape.
    """
    upload = "upload-01"
    source, tags = next(iter(demo_set.source_tags.items()))
    image = demo_set.uploads[upload]
    Image.fromarray(demo_set.sources[source]).save(tmp_path / "source.png")
    Image.fromarray(np.concatenate([image, image], axis=1)).save(tmp_path / "twice.png")
    with ImageServer(tmp_path) as server:
        body = {
            "source_image_url": server.url("source.png"),
            "source_tags": [{"product_id": t.product_id, "bbox": _box(t.bbox)} for t in tags],
            "target_image_url": server.url("twice.png"),
            "similarity_threshold": 0.75,
        }
        plain = api.post(SUGGEST, body)
        with_copies = api.post(SUGGEST, body | {"include_copies": True})

    assert plain.status_code == 200 and with_copies.status_code == 200, (plain.text, with_copies.text)
    reference_api.SuggestTagsResponse.model_validate(plain.json())
    truth = demo_set.ground_truth[upload]
    found = 0
    for suggestion in with_copies.json()["suggestions"]:
        expected = truth[suggestion["product_id"]]
        if not suggestion["found"]:
            assert suggestion["copies"] == [], suggestion
            continue
        assert expected is not None, suggestion
        copies = [expected, BBox(expected.x + image.shape[1], expected.y, expected.width, expected.height)]
        answered = [BBox(**suggestion["suggested_bbox"])]
        answered += [BBox(**copy["suggested_bbox"]) for copy in suggestion["copies"]]
        assert len(answered) == 2, suggestion
        assert all(copy["confidence"] >= 0.75 for copy in suggestion["copies"]), suggestion
        assert sorted(max(range(2), key=lambda i, box=box: box.iou(copies[i])) for box in answered) == [0, 1]
        assert all(max(box.iou(c) for c in copies) > 0.5 for box in answered), suggestion
        found += 1
    assert found >= 1, "the demo upload should contain at least one product of the source"


def test_suggest_tags_answers_a_product_from_every_photo_it_was_tagged_in(
    api: WebWorker, demo_set: DemoSet, tmp_path: Path
) -> None:
    """``more_sources``: a product tagged on noise (a view that cannot find it) and in its real photo."""
    upload = "upload-01"
    truth = demo_set.ground_truth[upload]
    source, tags = next(iter(demo_set.source_tags.items()))
    present = next(t for t in tags if truth[t.product_id] is not None)
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(
        tmp_path / "noise.png"
    )
    Image.fromarray(demo_set.sources[source]).save(tmp_path / "source.png")
    Image.fromarray(demo_set.uploads[upload]).save(tmp_path / "upload.png")
    blind = [{"product_id": present.product_id, "bbox": {"x": 40, "y": 40, "width": 200, "height": 150}}]
    with ImageServer(tmp_path) as server:
        body = {
            "source_image_url": server.url("noise.png"),
            "source_tags": blind,
            "target_image_url": server.url("upload.png"),
        }
        alone = api.post(SUGGEST, body)
        pooled = api.post(
            SUGGEST,
            body
            | {
                "more_sources": [
                    {
                        "image_url": server.url("source.png"),
                        "tags": [{"product_id": present.product_id, "bbox": _box(present.bbox)}],
                    }
                ]
            },
        )

    assert alone.status_code == 200 and pooled.status_code == 200, (alone.text, pooled.text)
    assert alone.json()["suggestions"][0]["found"] is False
    first, second = pooled.json()["suggestions"]
    assert first == second and first["found"] is True and first["product_id"] == present.product_id
    assert BBox(**first["suggested_bbox"]).iou(truth[present.product_id]) > 0.5  # type: ignore[arg-type]
    reference_api.SuggestTagsResponse.model_validate(pooled.json())


def test_more_sources_count_against_the_source_and_tag_limits_and_name_their_bad_tags(api: WebWorker) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/gone.png"
    body = {"source_image_url": unreachable, "target_image_url": unreachable, "source_tags": _tag()}
    more = [{"image_url": unreachable, "tags": _tag()}]

    too_many_sources = api.post(SUGGEST, {**body, "more_sources": more * 16})  # 17 photos, limit 16
    tags = [{"product_id": f"sku-{i}", "bbox": _tag()[0]["bbox"]} for i in range(API_MAX_TAGS)]
    too_many_tags = api.post(SUGGEST, {**body, "more_sources": [{"image_url": unreachable, "tags": tags}]})
    bad_tag = api.post(SUGGEST, {**body, "more_sources": [*more, {"image_url": unreachable, "tags": _tag(height=-5)}]})
    fine = api.post(SUGGEST, {**body, "more_sources": more * 15})

    assert too_many_sources.status_code == 422 and too_many_tags.status_code == 422, too_many_sources.text
    assert [e["loc"] for e in too_many_sources.json()["detail"]] == [["body", "more_sources"]]
    (error,) = too_many_tags.json()["detail"]
    assert error["loc"] == ["body", "more_sources"] and error["msg"].startswith(
        f"too_many_tags: {API_MAX_TAGS + 1} tags"
    )
    assert bad_tag.status_code == 422, bad_tag.text
    assert [e["loc"] for e in bad_tag.json()["detail"]] == [["body", "more_sources", 1, "tags", 0, "bbox"]]
    # Within the limits the request gets as far as fetching (the image host is down: 400).
    assert fine.status_code == 400, fine.text
    assert "could not fetch" in fine.json()["detail"]


def test_detect_returns_detections_filtered_by_class(api: WebWorker, image_server: ImageServer) -> None:
    url = image_server.url("upload-01.png")
    everything = api.post(DETECT, {"image_url": url, "confidence_threshold": 0.0})
    assert everything.status_code == 200, everything.text
    detections = everything.json()["objects"]
    assert isinstance(detections, list) and everything.json()["total_count"] == len(detections)
    classes = api.get("/api/classes").json()["classes"]
    for detection in detections:
        assert set(detection) == {"bbox", "class_id", "class_name", "confidence"}
        assert classes[detection["class_id"]] == detection["class_name"]
        assert 0.0 <= detection["confidence"] <= 1.0
        assert set(detection["bbox"]) == {"x", "y", "width", "height"}
    if detections:
        wanted = detections[0]["class_name"]
        only = api.post(DETECT, {"image_url": url, "confidence_threshold": 0.0, "target_classes": [wanted]}).json()
        assert only["total_count"] >= 1
        assert {d["class_name"] for d in only["objects"]} == {wanted}


def test_every_route_answers_in_the_reference_services_shape(
    api: WebWorker, demo_set: DemoSet, image_server: ImageServer
) -> None:
    """A client written for the reference service parses every answer (its models, strictly)."""
    suggested = api.post(SUGGEST, _suggest_body(demo_set, image_server, "upload-01"))
    detected = api.post(DETECT, {"image_url": image_server.url("upload-01.png"), "confidence_threshold": 0.0})
    classes = api.get("/api/classes")
    health = api.get("/health")

    assert reference_api.SuggestTagsResponse.model_validate(suggested.json()).suggestions
    objects = reference_api.DetectObjectsResponse.model_validate(detected.json())
    assert objects.objects and objects.total_count == len(objects.objects)
    names = reference_api.ClassesResponse.model_validate(classes.json())
    assert names.total_count == len(names.classes) == 80
    reference_api.HealthResponse.model_validate(health.json())


def test_tag_limit_is_the_configured_one(api: WebWorker) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/gone.png"
    tags = [{"product_id": f"sku-{i}", "bbox": {"x": 1, "y": 1, "width": 10, "height": 10}} for i in range(71)]
    body = {"source_image_url": unreachable, "target_image_url": unreachable}

    within = api.post(SUGGEST, {**body, "source_tags": tags[:API_MAX_TAGS]})
    beyond = api.post(SUGGEST, {**body, "source_tags": tags[: API_MAX_TAGS + 1]})

    # Within the limit the request gets as far as fetching (the image host is down: 400).
    assert within.status_code == 400, within.text
    assert beyond.status_code == 422, beyond.text
    (error,) = beyond.json()["detail"]
    assert error["loc"] == ["body", "source_tags"] and error["msg"] == f"too_many_tags: 71 tags, limit {API_MAX_TAGS}"


def test_detect_rejects_unknown_classes(api: WebWorker, image_server: ImageServer) -> None:
    known = api.get("/api/classes").json()["classes"][0]
    response = api.post(DETECT, {"image_url": image_server.url("upload-01.png"), "target_classes": [known, "unicorn"]})
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "target_classes", 1]]


def _with(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**body, **changes}


def _tag(**bbox: Any) -> list[dict[str, Any]]:
    return [{"product_id": "sku-1", "bbox": {"x": 1, "y": 1, "width": 10, "height": 10, **bbox}}]


VALID = {
    "source_image_url": "http://img.example/a.png",
    "source_tags": _tag(),
    "target_image_url": "http://img.example/b.png",
}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({k: v for k, v in VALID.items() if k != "target_image_url"}, ["body", "target_image_url"]),
        ({k: v for k, v in VALID.items() if k != "source_tags"}, ["body", "source_tags"]),
        (_with(VALID, source_tags=[]), ["body", "source_tags"]),
        (_with(VALID, source_tags=_tag(width="wide")), ["body", "source_tags", 0, "bbox", "width"]),
        (_with(VALID, source_tags=_tag(height=-5)), ["body", "source_tags", 0, "bbox"]),
        (
            _with(VALID, source_tags=[{"product_id": " ", "bbox": _tag()[0]["bbox"]}]),
            ["body", "source_tags", 0, "product_id"],
        ),
        (_with(VALID, source_tags=[{"bbox": _tag()[0]["bbox"]}]), ["body", "source_tags", 0, "product_id"]),
        (_with(VALID, similarity_threshold=2.0), ["body", "similarity_threshold"]),
        (_with(VALID, source_image_url=42), ["body", "source_image_url"]),
        ([VALID], ["body"]),
    ],
)
def test_invalid_suggest_requests_are_422_with_details(api: WebWorker, body: Any, loc: list[Any]) -> None:
    response = api.post(SUGGEST, body)
    assert response.status_code == 422, response.text
    assert loc in [error["loc"] for error in response.json()["detail"]]


@pytest.mark.parametrize(
    "body",
    [{}, {"image_url": None}, {"image_url": "http://img.example/a.png", "confidence_threshold": 1.5}],
)
def test_invalid_detect_requests_are_422(api: WebWorker, body: Any) -> None:
    response = api.post(DETECT, body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_malformed_json_is_422(api: WebWorker) -> None:
    response = api.post(SUGGEST, content=b'{"source_image_url": ')
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_box_outside_the_source_image_is_422(api: WebWorker, demo_set: DemoSet, image_server: ImageServer) -> None:
    body = _suggest_body(demo_set, image_server, "upload-01")
    body["source_tags"] = [{"product_id": "sku-far", "bbox": {"x": 5000, "y": 5000, "width": 50, "height": 50}}]
    response = api.post(SUGGEST, body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "source_tags", 0, "bbox"]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (lambda server: f"http://127.0.0.1:{free_port()}/gone.png", "connection"),
        (lambda server: server.url("no-such-file.png"), "404"),
        (lambda server: server.url("not-an-image.png"), "not_an_image"),
        (lambda server: "http://169.254.169.254/latest/meta-data/", "blocked_address"),
        (lambda server: "file:///etc/passwd", "bad_scheme"),
    ],
    ids=["unreachable", "missing", "not-an-image", "cloud-metadata", "file-scheme"],
)
def test_unfetchable_images_are_400_with_the_reason(
    api: WebWorker, demo_set: DemoSet, image_server: ImageServer, target: Any, expected: str
) -> None:
    body = _suggest_body(demo_set, image_server, "upload-01")
    body["target_image_url"] = target(image_server)
    response = api.post(SUGGEST, body)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith("could not fetch target_image_url") and expected in detail
