"""The engine folder: where exported graphs and built engines live, and how they are found.

    engine/   ($PROMPTUS_ENGINE_DIR, else ./engine: the repository's git-ignored folder when run there)
      <graph key>.onnx  [+ <graph key>.onnx.data]   promptus engine export (torch)
      <trt key>.engine  + <trt key>.json            promptus engine build / --backend tensorrt

Graphs are found by the key in their file name and checked against their metadata once loaded.
An engine is loaded only when its JSON sidecar equals the one expected now; anything else
(missing, stale, foreign, unreadable) is rebuilt, never loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from promptus_codec.engine.keys import GraphKey
from promptus_codec.errors import ModelError
from promptus_codec.fileio import atomic_path


def engine_dir() -> Path:
    """$PROMPTUS_ENGINE_DIR, else ./engine."""
    return Path(os.environ.get("PROMPTUS_ENGINE_DIR") or "engine")


def find_graphs(key: GraphKey, directory: Path | None = None) -> dict[int, Path]:
    """Exported graphs that fit ``key`` in everything but batch: {batch: path}.

    A key whose weights are "?" (a stream without fingerprints) matches one model's graphs whatever
    their weights; the decode driver then trusts the model name, as it does for torch.
    """
    directory = engine_dir() if directory is None else Path(directory)
    found: dict[GraphKey, Path] = {}
    for path in sorted(directory.glob("*.onnx")) if directory.is_dir() else []:
        other = GraphKey.parse(path.stem)
        if other is not None and key.same_but_batch(other):
            found[other] = path
    if len({other.weights for other in found}) > 1:
        names = ", ".join(sorted(path.name for path in found.values()))
        raise ModelError(f"the stream names no weights and several graphs fit it ({names}): keep one model's graphs")
    return {other.batch: path for other, path in found.items()}


def file_stamp(path: Path) -> dict:
    """Name, size and mtime: enough to see that a graph was re-exported since an engine was built."""
    stat = path.stat()
    return {"file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_sidecar(path: Path) -> dict | None:
    """The JSON object beside ``path`` (same stem, .json), or None when missing or unreadable."""
    try:
        data = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached_build(path: Path, sidecar: dict, build: Callable[[], bytes]) -> tuple[bytes, bool]:
    """The bytes of ``path`` if its sidecar equals ``sidecar``; else ``build()``, saved with the sidecar.

    Returns (bytes, built). The engine is written before its sidecar, both atomically, so an
    interrupted build leaves a mismatch that the next call rebuilds.
    """
    path, sidecar = Path(path), json.loads(json.dumps(sidecar))  # compare as JSON reads it back
    if path.is_file() and read_sidecar(path) == sidecar:
        return path.read_bytes(), False
    data = build()
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    with atomic_path(path.with_suffix(".json")) as temporary:
        temporary.write_text(json.dumps(sidecar, indent=1, sort_keys=True))
    return data, True
