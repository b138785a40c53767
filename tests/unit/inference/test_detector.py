"""The detector's loader, in fresh interpreters: what importing Ultralytics does to the process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_IMPORT_ALONE = """
import json, cv2
cv2.setNumThreads(4)
before = cv2.getNumThreads()
import ultralytics
print(json.dumps([before, cv2.getNumThreads()]))
"""

_LOADER = """
import json, sys, cv2
from inference.detector import load_yolo
assert "ultralytics" not in sys.modules
cv2.setNumThreads(4)
before = cv2.getNumThreads()
load_yolo(sys.argv[1])
print(json.dumps([before, cv2.getNumThreads()]))
"""


def _probe(code: str, *args: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, timeout=120)
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_loading_yolo_keeps_opencvs_threads_that_importing_ultralytics_switches_off(cache_dir: Path) -> None:
    """SIFT runs on OpenCV's threads: the loader must hand them back after Ultralytics' import."""
    assert _probe(_IMPORT_ALONE) == [4, 1]  # setNumThreads(0) reads back as one thread
    assert _probe(_LOADER, str(cache_dir / "models" / "yolo26n-random.pt")) == [4, 4]
