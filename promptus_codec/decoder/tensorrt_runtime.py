"""The TensorRT runtime: fp16 engines built from the exported ONNX graphs, behind the driver's numpy API.

    engine/<graph key>.onnx --polygraphy (fp16)--> engine/<trt key>.engine + <trt key>.json
        (cached: loaded only when the JSON sidecar equals the one expected for this GPU,
         TensorRT version and graph file; otherwise rebuilt, never loaded)
    generate(...) --engine.batching--> per call: host -> device copies, execute_async_v3
        (or one CUDA graph launch), device -> host copies

A thin layer over the tested ONNX path: the graph, its metadata and the batching are the ONNX
runtime's. Needs tensorrt, polygraphy and cuda-python (the ``tensorrt`` extra) and a CUDA GPU.
Keys and the cache are pure functions over device facts (engine/keys.py, engine/cache.py), so they
are tested without TensorRT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from promptus_codec.container.records import ModelIdentity
from promptus_codec.engine.batching import generate_padded
from promptus_codec.engine.cache import cached_build, file_stamp
from promptus_codec.engine.keys import INPUTS, OUTPUTS, GraphKey, TrtKey, read_graph_metadata
from promptus_codec.errors import ModelError, require


def _cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime`` from 12.6 on, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        runtime = require("cuda.cudart", "tensorrt")
    return runtime


def _check(result):
    """cuda-python returns (error, *values): raise on error, return the values."""
    error, *values = result
    if int(error) != 0:
        raise RuntimeError(f"CUDA error {error}")
    return values[0] if len(values) == 1 else values


def device_facts(device: int = 0) -> dict[str, str]:
    """What a TensorRT engine depends on, for :meth:`TrtKey.create`: GPU name, compute capability, version."""
    trt = require("tensorrt", "tensorrt")
    props = _check(_cudart().cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace").rstrip("\0") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu_name": name, "compute_capability": f"{props.major}.{props.minor}", "tensorrt_version": trt.__version__}


def graph_metadata_of(path: Path) -> dict[str, str]:
    """The metadata_props of an ONNX file, without loading its weights."""
    onnx = require("onnx", "export")
    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def build_engine(onnx_path: Path, precision: str = "fp16") -> bytes:
    """A serialized TensorRT engine for the graph at ``onnx_path``."""
    require("polygraphy", "tensorrt")
    from polygraphy.backend.trt import CreateConfig, engine_bytes_from_network, network_from_onnx_path

    network = network_from_onnx_path(str(onnx_path))
    return bytes(engine_bytes_from_network(network, config=CreateConfig(fp16=precision == "fp16")))


def engine_for(
    onnx_path: Path, facts: Mapping[str, str], directory: Path, precision: str = "fp16"
) -> tuple[Path, bytes, bool]:
    """(engine path, engine bytes, built now) for one graph, from the cache or freshly built."""
    graph = GraphKey.parse(onnx_path.stem)
    if graph is None:
        raise ModelError(f"{onnx_path.name} is not named by a graph key: export it with promptus engine export")
    key = TrtKey.create(graph, facts, precision)
    sidecar = {**key.sidecar(), "onnx": file_stamp(onnx_path), "metadata": graph_metadata_of(onnx_path)}
    path = Path(directory) / key.filename
    data, built = cached_build(path, sidecar, lambda: build_engine(onnx_path, precision))
    return path, data, built


class _Engine:
    """One deserialized engine with its device buffers bound; runs one fixed batch."""

    def __init__(self, data: bytes, stream, cuda_graph: bool):
        from polygraphy import cuda
        from polygraphy.backend.trt import engine_from_bytes

        self.engine = engine_from_bytes(data)
        self.context = self.engine.create_execution_context()
        self.stream = stream
        names = INPUTS + OUTPUTS
        self.buffers = {
            name: cuda.DeviceArray(shape=tuple(self.engine.get_tensor_shape(name)), dtype=np.float32) for name in names
        }
        for name, buffer in self.buffers.items():
            self.context.set_tensor_address(name, buffer.ptr)
        self.use_cuda_graph, self.graph_exec = cuda_graph, None

    def run(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
        for name, array in zip(INPUTS, arrays):
            self.buffers[name].copy_from(np.ascontiguousarray(array, dtype=np.float32), self.stream)
        self._execute()
        outputs = tuple(np.empty(self.buffers[name].shape, np.float32) for name in OUTPUTS)
        for name, out in zip(OUTPUTS, outputs):
            self.buffers[name].copy_to(out, self.stream)
        self.stream.synchronize()
        return outputs

    def _execute(self) -> None:
        if not self.use_cuda_graph:
            self.context.execute_async_v3(self.stream.ptr)
            return
        cudart = _cudart()
        if self.graph_exec is None:  # first call: run once (TensorRT allocates lazily), then capture
            self.context.execute_async_v3(self.stream.ptr)
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            _check(cudart.cudaStreamBeginCapture(self.stream.ptr, mode))
            self.context.execute_async_v3(self.stream.ptr)
            graph = _check(cudart.cudaStreamEndCapture(self.stream.ptr))
            self.graph_exec = _check(cudart.cudaGraphInstantiate(graph, 0))
        _check(cudart.cudaGraphLaunch(self.graph_exec, self.stream.ptr))


class TensorRTRuntime:
    """Runs exported graphs ``{batch: onnx path}`` as TensorRT engines, built or loaded from ``directory``."""

    def __init__(
        self,
        graphs: Mapping[int, "str | Path"],
        directory: "str | Path",
        cuda_graph: bool = False,
        precision: str = "fp16",
        log=None,
    ):
        require("tensorrt", "tensorrt")
        require("polygraphy", "tensorrt")
        from polygraphy import cuda

        if not graphs:
            raise ValueError("no graphs given")
        facts = device_facts()
        self.stream = cuda.Stream()
        self.engines: dict[int, _Engine] = {}
        described = set()
        for batch, onnx_path in sorted(graphs.items()):
            onnx_path = Path(onnx_path)
            path, data, built = engine_for(onnx_path, facts, Path(directory), precision)
            if built and log:
                log(f"built TensorRT engine {path}")
            _, identity, constants = read_graph_metadata(graph_metadata_of(onnx_path))
            described.add((identity, constants))
            self.engines[batch] = _Engine(data, self.stream, cuda_graph)
        if len(described) != 1:
            raise ModelError("the graphs were exported from other weights or constants: export them again")
        ((self._identity, self.constants),) = described
        self.name = "tensorrt"

    def identity(self) -> ModelIdentity:
        return self._identity

    def generate(self, z_prev: np.ndarray, noise: np.ndarray, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, C, h, w), (1, C, h, w), (B, m, n) float32 -> latents (B, C, h, w), images (B, 3, H, W)."""
        return generate_padded(
            lambda batch, *arrays: self.engines[batch].run(arrays), list(self.engines), z_prev, noise, prompts
        )
