"""Engine keys, the engine folder and fixed-batch padding: pure functions, no torch or onnxruntime."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from promptus_codec.container.records import GenerationConstants, ModelIdentity
from promptus_codec.engine.batching import generate_padded, plan
from promptus_codec.engine.cache import cached_build, find_graphs
from promptus_codec.engine.keys import (
    GraphKey,
    TrtKey,
    graph_metadata,
    read_graph_metadata,
)
from promptus_codec.errors import ModelError

IDENTITY = ModelIdentity("sd-turbo", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
CONSTANTS = GenerationConstants()
FACTS = {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt_version": "10.3.0"}


def key(**changes) -> GraphKey:
    base = dict(identity=IDENTITY, constants=CONSTANTS, batch=10, width=512, height=512, opset=18, precision="fp32")
    return GraphKey.create(**{**base, **changes})


def test_graph_key_names_everything():
    assert key().stem == "sd-turbo-" + key().weights + "-" + key().constants + "-b10-512x512-op18-fp32"
    assert GraphKey.parse(key().stem) == key()
    assert GraphKey.parse("sd-turbo-b10") is None and GraphKey.parse(key().stem + "-x") is None


@pytest.mark.parametrize(
    "change",
    [
        dict(identity=replace(IDENTITY, denoiser_sha256=b"\x09" * 32)),
        dict(identity=replace(IDENTITY, decoder_sha256=b"\x09" * 32)),
        dict(identity=replace(IDENTITY, name="tiny")),
        dict(constants=replace(CONSTANTS, latent_weight=0.1)),
        dict(constants=replace(CONSTANTS, timestep=500)),
        dict(batch=1),
        dict(width=256),
        dict(height=256),
        dict(opset=17),
        dict(precision="fp16"),
    ],
)
def test_every_fact_changes_the_graph_key(change):
    assert key(**change).stem != key().stem


def test_what_the_graph_does_not_bake_in_keeps_its_key():
    assert key(constants=replace(CONSTANTS, noise_seed=1)) == key()  # the noise is an input
    assert key(identity=replace(IDENTITY, encoder_sha256=bytes(32))) == key()  # the encoder never decodes


@pytest.mark.parametrize(
    "change",
    [
        dict(gpu_name="NVIDIA A100-SXM4-40GB"),
        dict(compute_capability="8.0"),
        dict(tensorrt_version="10.4.0"),
    ],
)
def test_every_device_fact_changes_the_engine_key(change):
    assert TrtKey.create(key(), {**FACTS, **change}).stem != TrtKey.create(key(), FACTS).stem


def test_engine_key_follows_graph_and_precision():
    engine = TrtKey.create(key(), FACTS)
    assert engine.stem == key().stem + "-trt10.3.0-sm90-nvidia_h100_80gb_hbm3-fp16"
    assert TrtKey.create(key(batch=1), FACTS).stem != engine.stem
    assert TrtKey.create(key(), FACTS, precision="fp32").stem != engine.stem
    assert engine.sidecar()["key"] == engine.stem and engine.sidecar()["graph"]["batch"] == 10
    with pytest.raises(ValueError, match="tensorrt_version"):
        TrtKey.create(key(), {**FACTS, "tensorrt_version": ""})


def test_metadata_round_trip():
    props = graph_metadata(key(), IDENTITY, CONSTANTS, "test exporter")
    assert all(isinstance(v, str) for v in props.values())
    assert read_graph_metadata(props) == (key().stem, IDENTITY, CONSTANTS)
    with pytest.raises(ValueError, match="no promptus metadata"):
        read_graph_metadata({})


def test_find_graphs_ignores_batch_only(tmp_path):
    for k in (key(batch=1), key(batch=10), key(width=256), key(precision="fp16"), key(opset=17)):
        (tmp_path / k.filename).write_bytes(b"")
    (tmp_path / "notes.onnx").write_bytes(b"")
    assert find_graphs(key(batch=4), tmp_path) == {1: tmp_path / key(batch=1).filename, 10: tmp_path / key().filename}
    assert find_graphs(key(height=128), tmp_path) == {}
    assert find_graphs(key(), tmp_path / "missing") == {}


def test_stream_without_fingerprints_matches_one_model(tmp_path):
    unknown = ModelIdentity("sd-turbo", bytes(32), bytes(32), bytes(32))
    (tmp_path / key().filename).write_bytes(b"")
    assert list(find_graphs(key(identity=unknown), tmp_path)) == [10]
    other = key(identity=replace(IDENTITY, denoiser_sha256=b"\x07" * 32), batch=1)
    (tmp_path / other.filename).write_bytes(b"")
    with pytest.raises(ModelError, match="several graphs"):
        find_graphs(key(identity=unknown), tmp_path)


class Builder:
    def __init__(self):
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return f"engine {self.calls}".encode()


def test_cached_build_loads_only_a_matching_sidecar(tmp_path):
    path, build = tmp_path / (TrtKey.create(key(), FACTS).filename), Builder()
    sidecar = {**TrtKey.create(key(), FACTS).sidecar(), "onnx": {"file": "g.onnx", "size": 1, "mtime_ns": 2}}
    assert cached_build(path, sidecar, build) == (b"engine 1", True)
    assert cached_build(path, sidecar, build) == (b"engine 1", False)  # cached
    stale = {**sidecar, "onnx": {"file": "g.onnx", "size": 1, "mtime_ns": 3}}  # graph re-exported
    assert cached_build(path, stale, build) == (b"engine 2", True)
    foreign = {**stale, "tensorrt_version": "9.0"}
    assert cached_build(path, foreign, build) == (b"engine 3", True)
    assert json.loads(path.with_suffix(".json").read_text())["tensorrt_version"] == "9.0"


@pytest.mark.parametrize("sidecar_text", [None, "", "{not json", "[1, 2]"])
def test_missing_or_broken_sidecar_rebuilds(tmp_path, sidecar_text):
    path, build = tmp_path / "x.engine", Builder()
    path.write_bytes(b"old engine")
    if sidecar_text is not None:
        path.with_suffix(".json").write_text(sidecar_text)
    assert cached_build(path, {"key": "x"}, build) == (b"engine 1", True)


@pytest.mark.parametrize(
    "frames, batches, expected",
    [
        (1, [10], [(1, 10)]),  # a scene's first frame, padded
        (10, [10], [(10, 10)]),
        (16, [10], [(10, 10), (6, 10)]),
        (1, [1, 10], [(1, 1)]),
        (3, [1, 10], [(1, 1)] * 3),
        (6, [1, 10], [(6, 10)]),
        (16, [1, 10], [(10, 10), (6, 10)]),
        (0, [3], []),
    ],
)
def test_plan(frames, batches, expected):
    assert plan(frames, batches) == expected


def test_generate_padded_keeps_each_frame_of_its_own_prompt():
    calls = []

    def run(batch, z_prev, noise, prompts):  # frame i -> its prompt's first value, shaped as a runtime's outputs
        calls.append(len(prompts))
        assert len(prompts) == batch
        values = prompts[:, 0, 0] + z_prev[0, 0, 0, 0] + noise[0, 0, 0, 0]
        return values[:, None, None, None] * np.ones((1, 4, 2, 2)), values[:, None, None, None] * np.ones(
            (1, 3, 16, 16)
        )

    prompts = np.arange(7, dtype=np.float32)[:, None, None] * np.ones((1, 77, 8), np.float32)
    z_prev, noise = np.zeros((1, 4, 2, 2), np.float32), np.full((1, 4, 2, 2), 0.5, np.float32)
    latents, images = generate_padded(run, [3], z_prev, noise, prompts)
    assert calls == [3, 3, 3]
    np.testing.assert_array_equal(latents[:, 0, 0, 0], np.arange(7) + 0.5)
    assert images.shape == (7, 3, 16, 16)
