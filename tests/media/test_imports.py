"""media/ keeps its heavy imports lazy: geometry planning works without PyAV or torch."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
sys.modules["av"] = None  # as if PyAV were not installed
from promptus_codec.errors import MissingDependencyError
from promptus_codec.media import plan_geometry, resize
import numpy as np
print(plan_geometry(1920, 1080)[:2])
try:
    resize(np.zeros((8, 8, 3), np.uint8), 4, 4)
except MissingDependencyError as exc:
    print(exc)
print("torch" in sys.modules)
"""


def test_media_imports_without_pyav_or_torch():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "(896, 512)",
        "av is not installed: run  pip install 'promptus-codec[media]'",
        "False",
    ]
