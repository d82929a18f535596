"""The TensorRT runtime on a GPU: skipped cleanly without tensorrt, polygraphy or CUDA.

Keys and the engine cache are tested without TensorRT in test_onnx_keys.py.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorrt")
pytest.importorskip("polygraphy")


@pytest.fixture(scope="module")
def facts():
    from promptus_codec.decoder.tensorrt_runtime import device_facts

    try:
        return device_facts()
    except Exception as exc:  # no driver, no GPU: cuda-python reports it as an error
        pytest.skip(f"no CUDA GPU: {exc}")


@pytest.fixture(scope="module")
def graphs(graph_dir, tiny_model):
    from onnx_case import SIZE

    from promptus_codec.engine.cache import find_graphs
    from promptus_codec.engine.keys import GraphKey

    return find_graphs(GraphKey.create(tiny_model.identity(), tiny_model.spec.generation, 1, *SIZE), graph_dir)


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_matches_onnxruntime(facts, graphs, graph_dir, tiny_model, cuda_graph, tmp_path):
    from onnx_case import SIZE

    from promptus_codec.decoder.onnx_runtime import OnnxRuntime
    from promptus_codec.decoder.tensorrt_runtime import TensorRTRuntime
    from promptus_codec.engine.export import example_inputs

    runtime = TensorRTRuntime(graphs, tmp_path, cuda_graph=cuda_graph)
    assert runtime.identity() == tiny_model.identity()
    inputs = example_inputs(tiny_model, 5, *SIZE)
    _, expected = OnnxRuntime(graphs, device="cpu").generate(*inputs)
    _, images = runtime.generate(*inputs)
    # fp16 engine against the fp32 graph. tolerances.network_atol's model with float16's unit
    # roundoff 2**-11 (8,192 times float32's) on every operation gives 0.14 for the decoder alone;
    # TensorRT's fp16 kernels mostly accumulate in float32, which rounds far less. 0.02 (5 levels)
    # sits between the two and has never been run (no GPU here): a guess, not a derivation.
    assert np.abs(images - expected).max() < 0.02


def test_engine_is_cached_then_rebuilt_for_other_facts(facts, graphs, tmp_path):
    from promptus_codec.decoder.tensorrt_runtime import engine_for

    (onnx_path,) = graphs.values()
    path, _, built = engine_for(onnx_path, facts, tmp_path)
    assert built and path.with_suffix(".json").is_file()
    assert engine_for(onnx_path, facts, tmp_path)[2] is False
    path.with_suffix(".json").write_text("{}")  # a foreign sidecar: rebuilt, never loaded
    assert engine_for(onnx_path, facts, tmp_path)[2] is True
