"""The end-to-end bench reads the worker's own stage timings from its Prometheus exposition."""

from __future__ import annotations

from streams.metrics import Metrics
from workbench.bench import stage_means, stage_totals


def test_stage_means_are_taken_between_two_scrapes_of_the_real_metrics() -> None:
    metrics = Metrics()
    metrics.observe_stages({"detect": 100.0, "verify": 40.0})
    before = stage_totals(metrics.render()[0].decode())
    metrics.observe_stages({"detect": 70.0, "verify": 20.0, "embed": 300.0})
    metrics.observe_stages({"detect": 90.0, "verify": 30.0})

    means = stage_means(before, stage_totals(metrics.render()[0].decode()))

    assert means == {"detect": 80.0, "embed": 300.0, "verify": 25.0}
