"""The worker's exit status after a fatal stop says which condition stopped it."""

from __future__ import annotations

from streams.worker.engine import ModelsUnavailable
from streams.worker.service import EXIT_BATCH_FAILED, EXIT_MODELS_UNAVAILABLE, FatalStop


def test_models_that_cannot_load_and_a_failed_batch_exit_differently() -> None:
    models, batch = FatalStop(), FatalStop()
    models.reason = ModelsUnavailable("attempt 3 of 3: no such file")
    batch.reason = RuntimeError("a bug in batch handling")

    assert (models.exit_status, batch.exit_status) == (EXIT_MODELS_UNAVAILABLE, EXIT_BATCH_FAILED)
    assert EXIT_MODELS_UNAVAILABLE != EXIT_BATCH_FAILED
