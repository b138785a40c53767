"""Loading the worker's pipeline: the built-in one comes warmed up, so the first upload is not the slow one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def test_the_built_in_pipeline_is_warmed_up_when_the_worker_loads_it(cache_dir: Path) -> None:
    # numpy.ma is imported lazily by the verifier's first fit: a fresh process shows whether a fit ran.
    probe = textwrap.dedent(
        """
        import sys
        from streams.settings import Settings
        from streams.worker.engine import load_pipeline
        before = "numpy.ma" in sys.modules
        load_pipeline(Settings())
        print(before, "numpy.ma" in sys.modules)
        """
    )
    env = {**os.environ, "TAGSTREAM_MODELS__OFFLINE": "true", "TAGSTREAM_CACHE_DIR": str(cache_dir)}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env, timeout=300
    )
    assert result.stdout.split()[-2:] == ["False", "True"]
