"""The ``tagstream`` program: the runtime commands plus the workbench's ``eval``, ``perturb``, ``bench`` and ``demo``."""

from __future__ import annotations

from collections.abc import Sequence

from streams.cli.main import RUNTIME_COMMANDS
from streams.cli.main import main as run_command
from workbench import bench, demo, evaluate, perturb


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(argv, (*RUNTIME_COMMANDS, evaluate.register, perturb.register, bench.register, demo.register))
