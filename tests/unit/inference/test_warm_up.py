"""The warm-up: it must run the paths whose first call is slow, and leave every cache as it was."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from support.pipelines.offline import offline_pipeline

from inference.geometry import GeometricVerifier
from inference.types import BBox
from inference.warm_up import textured_picture


def test_the_generated_picture_gives_the_verifier_a_match_of_its_own_box() -> None:
    picture = textured_picture(np.random.default_rng(0), 480, 640)
    verifier = GeometricVerifier(threads=1)
    box = BBox(160, 120, 320, 240)

    target = verifier.target_features(picture)
    checked = verifier.verify_views(
        verifier.frontal_features(picture, box), lambda: verifier.tilted_features(picture, box), target, box, 1.0
    )

    assert len(target.keypoints) > 500
    assert checked.match is not None and checked.match.bbox.iou(box) > 0.9


def test_the_verifier_warm_up_pays_the_lazy_import_of_its_first_fit() -> None:
    probe = textwrap.dedent(
        """
        import sys
        from inference.geometry import GeometricVerifier
        from inference.warm_up import _verify_itself, textured_picture
        import numpy as np
        before = "numpy.ma" in sys.modules
        _verify_itself(GeometricVerifier(threads=1), textured_picture(np.random.default_rng(0), 240, 320))
        print(before, "numpy.ma" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert result.stdout.split() == ["False", "True"]


def test_the_pipeline_warm_up_leaves_its_caches_empty(cache_dir: Path) -> None:
    pipeline = offline_pipeline(cache_dir)

    pipeline.warm_up(((480, 640), (512, 640)), batch_size=3)

    assert pipeline.source_cache_misses == 0
    assert len(pipeline._source_features) == 0 and len(pipeline._source_embeddings) == 0
