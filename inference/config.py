"""Pipeline configuration as plain values, so the library never reads the environment itself.

The stream processor's settings object builds one of these; tests and tools build their own.
Fields declared with :func:`setting` are the ones an operator may set: the settings object
exposes exactly those (same name, type and default, with this description), so nothing here is
restated there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from inference.geometry import GeometryConfig

DetectorRuntime = Literal["auto", "torch", "onnxruntime"]
"""How YOLO runs (`inference.detector.YoloDetector`)."""

SETTING = "setting"
"""Field metadata key: the description of a field that operators may set."""


def setting(default: Any, description: str) -> Any:
    """A dataclass field with ``default`` that the deployment's settings expose, described for operators."""
    return field(default=default, metadata={SETTING: description})


@dataclass(frozen=True)
class ModelConfig:
    """Where the models come from and how they run.

    ``detector`` is anything ``ultralytics.YOLO`` accepts (a checkpoint path or a known name
    such as ``yolo26n.pt``); ``embedder`` is a Hugging Face model id or a local directory saved
    with ``save_pretrained``.
    """

    detector: str = setting("yolo26n.pt", "YOLO checkpoint path or Ultralytics model name.")
    embedder: str = setting(
        "openai/clip-vit-base-patch32", "CLIP model id or local directory (save_pretrained layout)."
    )
    device: str = setting("cpu", "torch device: cpu, cuda, cuda:N or auto.")
    precision: str = setting("fp32", "fp32, bf16 (CPU or GPU) or fp16 (GPU only).")
    detector_runtime: DetectorRuntime = setting(
        "auto",
        "How YOLO runs: onnxruntime (the exported network, faster on a CPU), torch, or auto "
        "(onnxruntime on the CPU, torch on a GPU).",
    )
    torch_threads: int | None = setting(None, "torch intra-op threads; default: all cores available to the process.")
    version: str = setting("", "Model version stamped on suggestions (lineage); default: derived from the model names.")
    # Where the ONNX Runtime detector keeps the networks it exports (empty: ~/.cache/tagstream/onnx);
    # the stream processor puts them in its cache directory.
    export_dir: str = ""

    @property
    def model_version(self) -> str:
        """Lineage key stamped on every suggestion; a new model means a new version."""
        return self.version or f"{_short(self.detector)}+{_short(self.embedder)}"


def _short(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class SearchConfig:
    """How CLIP candidates are generated and when a CLIP match counts.

    The thresholds exist for different reasons: ``similarity_threshold`` is the reference
    service's absolute cut-off; ``min_standout`` requires the best window to stand out from
    the other windows of the same image (look-alike background and untrained networks give
    uniformly high cosines, a real match is an outlier); ``min_local_support`` and
    ``min_local_share`` ask a textured product found by CLIP alone for that many descriptor
    matches that agree on one place, scale and rotation (up to deformation, see
    ``GeometryConfig.local_tolerance``), and for that share of all its matches inside the CLIP
    box, because a product that is really there, even deformed, shares local features with its
    source photo in one coherent place, while a look-alike's chance matches disagree.
    """

    similarity_threshold: float = setting(
        0.75, "Default CLIP cosine needed for a CLIP-only match (events may override)."
    )
    detection_confidence: float = setting(0.10, "YOLO confidence for candidate regions (low: more candidates).")
    detection_padding: float = 0.10
    window_scales: tuple[float, ...] = (0.75, 1.0, 1.33)
    window_overlap: float = 0.5
    max_windows: int = setting(48, "Sliding windows embedded per target image for tags without local evidence.")
    # Coarse grid embedded when every pending tag is textured: only the standout test needs it.
    background_windows: int = 8
    refine_top_k: int = 1
    refine_scales: tuple[float, ...] = (0.85, 1.0, 1.15)
    refine_shift: float = 0.15
    min_standout: float = setting(3.0, "Robust z-score the best CLIP window needs above the image's other windows.")
    # Twice the most chance matches of an absent look-alike that ever agreed on one local model
    # in the generated scenes (7), about half what present products reach (>= 37; bent ones >= 28).
    min_local_support: int = setting(
        16,
        "Descriptor matches a textured product found by CLIP alone needs that agree on one place, scale and "
        "rotation up to deformation (geometric veto); fewer, and CLIP is not even run for it.",
    )
    # ... and the CLIP box must hold at least this share of all its matches in the image: chance
    # matches scatter, a present product's matches concentrate in its footprint.
    min_local_share: float = setting(
        0.5, "Share of a textured product's descriptor matches that must fall inside a CLIP-only box."
    )
    # A source box with at least this many keypoints (over all simulated views) is "textured":
    # local features can speak for it, so CLIP alone is not trusted without local support.
    textured_min_keypoints: int = 40
    pool_views: bool = setting(
        True,
        "Answer every tag of a product tagged in several sources with the best found answer among its views; "
        "false: each tag alone (more views also give a sloppy tag more chances of a false positive).",
    )
    embed_batch_size: int = 64


@dataclass(frozen=True)
class PipelineConfig:
    models: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    source_cache_size: int = 4096
    # Memory the cached local features of source boxes may take (about 0.1-14 MB each, by texture).
    source_features_cache_bytes: int = 256 * 1024 * 1024
