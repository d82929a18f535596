"""SHA-256 fingerprints of model weights, the digests of :class:`ModelIdentity` (spec §3.5).

Canonical form of one component (scheme ``sha256-v1``): for each tensor, in ascending
order of its name (code point order, which is also UTF-8 byte order), feed SHA-256 with

    name (UTF-8) \\0 dtype name ("float16", "bfloat16", ...) \\0 shape ("[320, 4, 3, 3]") \\0
    raw bytes, little-endian, row-major, in the dtype the weights have ON DISK

Hashing happens before any cast to the run's device or dtype, so an fp16 CUDA run and an fp32
CPU run of the same checkpoint report the same identity. A shape's byte count follows from
its dtype and shape, so the stream of fields is unambiguous.

Hashing a 2 GB checkpoint takes seconds, so file digests are cached in a JSON file keyed by
(absolute path, size, mtime_ns) and a tag naming what was hashed:
``$PROMPTUS_CACHE/fingerprints.json``, else ``$XDG_CACHE_HOME/promptus-codec/fingerprints.json``,
else ``~/.cache/promptus-codec/fingerprints.json``. The cache is rewritten atomically; a
read-only or corrupt cache only costs a rehash.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from promptus_codec.errors import ModelError
from promptus_codec.fileio import atomic_path

if TYPE_CHECKING:
    import torch

SCHEME = "sha256-v1"  # bump when the canonical form above changes


def fingerprint_state_dict(state_dict: Mapping[str, "torch.Tensor"]) -> bytes:
    """SHA-256 (32 bytes) of tensors in the canonical form above, uncached.

    Pass the tensors as stored on disk: hashing a module's ``state_dict()`` after a cast to
    float32 gives another digest than its float16 file.
    """
    import torch

    if sys.byteorder != "little":  # the raw bytes below are the machine's; the spec's are LE
        raise ModelError("weight fingerprints are only implemented on little-endian machines")
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        digest.update(f"{name}\0{dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.digest()


def select(
    state_dict: Mapping[str, "torch.Tensor"], prefixes: Iterable[str] = ("",), strip: str = ""
) -> dict[str, "torch.Tensor"]:
    """The tensors whose names start with ``strip + prefix`` for some prefix, ``strip`` removed.

    ``prefixes`` pick the weights that reach the output (TAESD's "decoder." half, say);
    ``strip`` removes a component's own prefix in a file holding several components.
    """
    wanted = tuple(strip + p for p in prefixes)
    return {name[len(strip) :]: t for name, t in state_dict.items() if name.startswith(wanted)}


def fingerprint_file(path: str | os.PathLike, prefixes: Iterable[str] = ("",), strip: str = "") -> bytes:
    """Cached fingerprint of the safetensors tensors ``select(file, prefixes, strip)`` picks."""
    prefixes = tuple(prefixes)
    tag = f"safetensors strip={strip!r} prefixes={list(prefixes)!r}"

    def compute() -> bytes:
        return fingerprint_state_dict(select(read_safetensors(path, strip), prefixes, strip))

    return cached_digest(path, tag, compute)


def read_safetensors(path: str | os.PathLike, prefix: str = "", remedy: str = "") -> dict[str, "torch.Tensor"]:
    """Tensors of a .safetensors file whose names start with ``prefix``, as stored (CPU, disk dtype).

    A file that cannot be read raises ModelError naming it, followed by ``remedy`` ("; download it again").
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys() if name.startswith(prefix)}
    except (OSError, SafetensorError) as exc:
        raise ModelError(f"cannot read weights {path}: {exc}{remedy}") from exc


# ---------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------


def cache_file() -> Path:
    """Where cached digests live (see the module docstring)."""
    if os.environ.get("PROMPTUS_CACHE"):
        return Path(os.environ["PROMPTUS_CACHE"]) / "fingerprints.json"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "promptus-codec" / "fingerprints.json"


def cached_digest(path: str | os.PathLike, tag: str, compute: Callable[[], bytes]) -> bytes:
    """``compute()``, remembered per (file, tag) until the file's size or mtime_ns changes.

    ``tag`` names what ``compute`` hashes (the component, a key conversion), so two digests
    of one file do not collide.
    """
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError as exc:
        raise ModelError(f"cannot read weights {path}: {exc}") from exc
    key = f"{SCHEME} {tag} {path}"
    stamp = [stat.st_size, stat.st_mtime_ns]
    cache = _read_cache()
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        try:
            return bytes.fromhex(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            pass  # an entry this version cannot read: recompute it
    digest = compute()
    cache = _read_cache()  # re-read: another process may have added entries meanwhile
    cache[key] = {"stamp": stamp, "sha256": digest.hex()}
    try:
        with atomic_path(cache_file()) as temporary:
            temporary.write_text(json.dumps(cache, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home only costs rehashing next time
    return digest


def _read_cache() -> dict:
    try:
        cache = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}
