import numpy as np

from workbench.calibration import Sample, confidences, fit


def _samples(seed: int = 0) -> list[Sample]:
    """Right boxes have more inliers (first feature); the second feature is noise."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(300):
        correct = bool(rng.random() < 0.5)
        evidence = rng.normal(2.0 if correct else -1.0, 1.0)
        samples.append(Sample((float(evidence), float(rng.normal())), correct))
    return samples


def test_the_fit_trusts_evidence_that_tells_right_from_wrong() -> None:
    samples = _samples()
    bias, weights = fit(samples, steps=4000)
    assert all(w >= 0.0 for w in weights)
    assert weights[0] > 0.5 > weights[1]
    scored = confidences(samples, bias, weights)
    right = [c for s, c in zip(samples, scored, strict=True) if s.correct]
    wrong = [c for s, c in zip(samples, scored, strict=True) if not s.correct]
    assert np.mean(right) > 0.75 > 0.25 > np.mean(wrong)


def test_evidence_that_misleads_gets_no_weight() -> None:
    samples = [Sample((-s.features[0], s.features[1]), s.correct) for s in _samples(1)]
    _, weights = fit(samples, steps=4000)
    assert weights[0] == 0.0
