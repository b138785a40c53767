"""Fit the geometric verifier's confidence to the evaluation sets: ``python -m workbench.calibration CASES...``.

Every accepted match on the sets' positives and negatives is a sample: its evidence
(``inference.geometry.confidence_features``) and whether its box is right (IoU >= 0.5 with the
truth; any match on a negative is wrong). A logistic model with non-negative weights (more
evidence never lowers the confidence) and a little L2 is fitted to them; the command prints the
coefficients to put in ``GeometryConfig`` and the precision and recall the result gives at
several thresholds. Refit when the verifier changes; a held-out set judges the outcome.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.geometry import GeometryConfig, confidence_features
from workbench.evaluation import CachingVerifier, build_items, load_cases, load_image


@dataclass(frozen=True)
class Sample:
    features: tuple[float, ...]
    correct: bool


def collect(cases: Iterable[Path], config: GeometryConfig) -> list[Sample]:
    """One sample per accepted match over the positives and negatives of every ``cases.json``."""
    verifier = CachingVerifier(config)
    images: dict[Path, np.ndarray] = {}
    samples = []
    for path in cases:
        for item in build_items(load_cases(path)):
            if item.kind == "qualitative":
                continue
            for image_path in (item.source_path, item.target_path):
                if image_path not in images:
                    images[image_path] = load_image(image_path)
            match = verifier.verification(
                item.source_path,
                images[item.source_path],
                item.source_box,
                item.target_path,
                images[item.target_path],
            ).match
            if match is None:
                continue
            truth = item.truth_for(match.bbox)
            right = truth is not None and match.bbox.iou(truth) >= 0.5
            features = confidence_features(match.inliers, match.inlier_ratio, match.coverage, config.min_inliers)
            samples.append(Sample(features, right))
    return samples


def fit(samples: Sequence[Sample], l2: float = 1.0, steps: int = 20000) -> tuple[float, tuple[float, ...]]:
    """Bias and non-negative weights of a logistic model of ``correct``, by projected gradient descent."""
    x = np.array([s.features for s in samples], dtype=np.float64)
    y = np.array([s.correct for s in samples], dtype=np.float64)
    weights, bias = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
        weights = np.maximum(weights - 0.1 * (x.T @ (p - y) + l2 * weights) / len(y), 0.0)
        bias -= 0.1 * float((p - y).mean())
    return bias, tuple(float(w) for w in weights)


def confidences(samples: Sequence[Sample], bias: float, weights: Sequence[float]) -> list[float]:
    return [1.0 / (1.0 + math.exp(-(bias + float(np.dot(weights, s.features))))) for s in samples]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.calibration", description=__doc__.split("\n")[0])
    parser.add_argument("cases", type=Path, nargs="+", help="cases.json files (eval-dev, eval3d-dev ...)")
    parser.add_argument("--l2", type=float, default=1.0, help="L2 penalty on the weights (default 1)")
    args = parser.parse_args(argv)
    samples = collect(args.cases, GeometryConfig())
    bias, weights = fit(samples, args.l2)
    print(f"{len(samples)} accepted matches, {sum(s.correct for s in samples)} with the right box")
    print(f"confidence_bias = {bias:.2f}\nconfidence_weights = ({', '.join(f'{w:.2f}' for w in weights)})")
    scored = confidences(samples, bias, weights)
    for threshold in (0.5, 0.6, 0.75, 0.85, 0.9, 0.95):
        kept = [s for s, c in zip(samples, scored, strict=True) if c >= threshold]
        right = sum(s.correct for s in kept)
        precision = right / len(kept) if kept else float("nan")
        print(f"threshold {threshold:.2f}: {len(kept)} kept, {right} right, precision {precision:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
