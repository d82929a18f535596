"""Fixtures for the ONNX tier: the tiny model, one exported graph, one stream (all per session)."""

from __future__ import annotations

import pytest

from onnx_case import GRAPH_BATCH, LAYOUT, SIZE


@pytest.fixture(scope="session")
def tiny_model():
    pytest.importorskip("diffusers")
    from promptus_codec.models.tiny import load_tiny

    return load_tiny(device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def graph_dir(tmp_path_factory):
    """An engine folder holding the tiny model's graph at batch 3, 64x64, exported by the CLI."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from click.testing import CliRunner

    from promptus_codec.engine_cli import engine

    directory = tmp_path_factory.mktemp("engine")
    width, height = SIZE
    result = CliRunner().invoke(
        engine,
        ["export", "--model", "tiny", "--size", f"{width}x{height}", "--batch", str(GRAPH_BATCH), "-o", str(directory)],
    )
    assert result.exit_code == 0, result.output
    return directory


@pytest.fixture(scope="session")
def stream(tmp_path_factory, tiny_model):
    from model.streams import make_stream  # tests/model/streams.py; tests/ is on sys.path (rootdir conftest)

    path = tmp_path_factory.mktemp("stream") / "s.prx"
    make_stream(path, tiny_model, LAYOUT, size=SIZE)
    return path
