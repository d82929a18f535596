"""promptus_codec.models.fingerprint: canonical form, selection, the on-disk cache."""

import hashlib
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors.torch import save_file  # noqa: E402

from promptus_codec.models import fingerprint  # noqa: E402


def test_canonical_form_pinned():
    state = {"b.weight": torch.tensor([[1.5, -2.0]], dtype=torch.float32), "a": torch.tensor([7], dtype=torch.int8)}
    expected = hashlib.sha256()
    expected.update(b"a\0int8\0[1]\0" + bytes([7]))
    expected.update(b"b.weight\0float32\0[1, 2]\0" + np.array([1.5, -2.0], "<f4").tobytes())
    assert fingerprint.fingerprint_state_dict(state) == expected.digest()


def test_order_independent_and_sensitive():
    g = torch.Generator().manual_seed(0)
    state = {"x": torch.randn(3, 4, generator=g), "y": torch.randn(5, generator=g)}
    digest = fingerprint.fingerprint_state_dict(state)
    assert fingerprint.fingerprint_state_dict(dict(reversed(state.items()))) == digest
    assert fingerprint.fingerprint_state_dict({"x": state["x"].T.contiguous().T, "y": state["y"]}) == digest
    variants = [
        {"x": state["x"], "z": state["y"]},  # a name
        {"x": state["x"].reshape(4, 3), "y": state["y"]},  # a shape
        {"x": state["x"].double(), "y": state["y"]},  # a dtype
        {"x": state["x"], "y": state["y"] + 1e-6},  # a value
    ]
    assert len({fingerprint.fingerprint_state_dict(v) for v in variants} | {digest}) == 5


def test_bfloat16_is_hashed():
    assert len(fingerprint.fingerprint_state_dict({"w": torch.ones(3, dtype=torch.bfloat16)})) == 32


def test_select():
    state = {"unet.a": 1, "taesd.decoder.x": 2, "taesd.encoder.y": 3}
    assert fingerprint.select(state, ("decoder.",), strip="taesd.") == {"decoder.x": 2}
    assert fingerprint.select(state, ("",), strip="unet.") == {"a": 1}
    assert fingerprint.select(state) == state


def test_file_fingerprint_cached_until_the_file_changes(tmp_path, fingerprint_cache, monkeypatch):
    path = tmp_path / "w.safetensors"
    tensors = {"m.a": torch.arange(6, dtype=torch.float16), "m.b": torch.ones(2, 2)}
    save_file(tensors, str(path))
    calls = []
    real = fingerprint.fingerprint_state_dict
    monkeypatch.setattr(fingerprint, "fingerprint_state_dict", lambda s: calls.append(1) or real(s))

    first = fingerprint.fingerprint_file(path, strip="m.")
    assert first == real({"a": tensors["m.a"], "b": tensors["m.b"]})  # stored dtypes, prefix stripped
    assert fingerprint.fingerprint_file(path, strip="m.") == first
    assert len(calls) == 1
    assert fingerprint.fingerprint_file(path, ("a",), strip="m.") != first  # another tag
    assert len(calls) == 2

    save_file({"m.a": torch.zeros(6, dtype=torch.float16), "m.b": torch.ones(2, 2)}, str(path))
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1))  # a new mtime even on coarse clocks
    assert fingerprint.fingerprint_file(path, strip="m.") != first
    assert len(calls) == 3


def test_corrupt_cache_is_rebuilt(tmp_path, fingerprint_cache):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(2)}, str(path))
    fingerprint_cache.mkdir()
    (fingerprint_cache / "fingerprints.json").write_text("{not json")
    digest = fingerprint.fingerprint_file(path)
    cache = json.loads((fingerprint_cache / "fingerprints.json").read_text())
    assert [entry["sha256"] for entry in cache.values()] == [digest.hex()]


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTUS_CACHE", str(tmp_path))
    assert fingerprint.cache_file() == tmp_path / "fingerprints.json"
    monkeypatch.delenv("PROMPTUS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fingerprint.cache_file() == tmp_path / "xdg" / "promptus-codec" / "fingerprints.json"
