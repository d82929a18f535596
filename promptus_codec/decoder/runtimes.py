"""Which runtime generates a stream's frames (``--backend``), chosen without click or torch.

Runtimes:
    torch      the model's weights through promptus_codec.generate (the torch extra)
    onnx       an exported graph from engine/ through onnxruntime: numpy only, no torch
    tensorrt   an fp16 engine built from that graph and cached in engine/
    auto       the first of AUTO_ORDER that this machine and the engine folder allow

The graph runtimes find their files by the stream's key (model name, weight digests, generation
constants, coded size, opset, precision; any batch). A receiver without torch cannot export: when
no graph fits, the error names the `promptus engine export` command to run where torch is.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shlex
import shutil
from typing import Callable, Mapping

from promptus_codec.container.reader import read_prx
from promptus_codec.container.records import FileHeader, KeyframeRecord, SceneRecord
from promptus_codec.decoder.driver import DEFAULT_MAX_BATCH
from promptus_codec.errors import MissingDependencyError, ModelError, ModelMismatchError, PrxError


def check_shapes(header, spec) -> None:
    """The stream's prompt and latent shapes must be the model's (spec §3.2)."""
    f = spec.vae_scale_factor
    if header.prompt_shape != (spec.prompt_tokens, spec.prompt_dim) or header.latent_channels != spec.latent_channels:
        raise ModelMismatchError(
            f"stream has prompts {header.prompt_shape} and {header.latent_channels} latent channels, "
            f"but {spec.name} uses {(spec.prompt_tokens, spec.prompt_dim)} and {spec.latent_channels}"
        )
    if (header.latent_width * f, header.latent_height * f) != (header.coded_width, header.coded_height):
        raise ModelMismatchError(f"stream latent size does not match its coded size at {spec.name}'s scale factor {f}")


BACKENDS = ("torch", "onnx", "tensorrt", "auto")  # --backend

# --backend auto takes the first (backend, device) whose facts all hold.
AUTO_ORDER = (
    ("tensorrt", "cuda", ("gpu", "tensorrt", "onnx-graph")),
    ("onnx", "cuda", ("gpu", "onnxruntime-cuda", "onnx-graph")),
    ("torch", "cuda", ("gpu", "torch", "torch-cuda")),
    ("onnx", "cpu", ("onnxruntime", "onnx-graph")),
    ("torch", "cpu", ("torch",)),
)
FACT_FAILED = {  # what a failed fact means, as the auto line says it
    "gpu": "no NVIDIA driver",
    "tensorrt": "tensorrt, polygraphy or cuda-python not installed",
    "onnx-graph": "no exported graph for this stream",
    "onnxruntime-cuda": "onnxruntime has no CUDA provider",
    "onnxruntime": "onnxruntime not installed",
    "torch": "torch or diffusers not installed",
    "torch-cuda": "torch sees no CUDA GPU",
}


def runtime_label(backend: str, device: str) -> str:
    """How runtimes name themselves: tensorrt, onnx-cpu, torch-cuda..."""
    return backend if backend == "tensorrt" else f"{backend}-{device}"


def choose_backend(facts: Mapping[str, bool], device: str = "auto") -> tuple[str, str, str]:
    """(backend, device, why the better choices were passed over) for --backend auto.

    ``facts`` answers the names in AUTO_ORDER; it is read lazily, in order, so a probe that needs an
    import (torch) runs only when every better choice has failed. ``device`` cpu or cuda keeps
    only that device's choices.
    """
    passed: dict[str, list[str]] = {}  # reason -> labels, in AUTO_ORDER order

    def why() -> str:
        return "; ".join(f"{', '.join(labels)}: {reason}" for reason, labels in passed.items())

    for backend, where, needs in AUTO_ORDER:
        if device not in ("auto", where):
            continue
        failed = next((fact for fact in needs if not facts[fact]), None)
        if failed is None:
            return backend, where, why()
        passed.setdefault(FACT_FAILED[failed], []).append(runtime_label(backend, where))
    raise MissingDependencyError(
        f"no backend can decode this stream ({why()}): pip install 'promptus-codec[torch]', "
        "or onnxruntime plus a graph from promptus engine export"
    )


class LazyFacts(dict):
    """Facts computed on first look-up from ``probes`` (name -> zero-argument callable)."""

    def __init__(self, probes: Mapping[str, Callable[[], bool]]):
        super().__init__()
        self.probes = probes

    def __missing__(self, name: str) -> bool:
        self[name] = value = bool(self.probes[name]())
        return value


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a blocked import
        return False


def probe_facts(has_graph: Callable[[], bool]) -> LazyFacts:
    """The facts --backend auto needs, probed on this machine."""

    def onnxruntime_cuda() -> bool:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()

    def torch_cuda() -> bool:
        import torch

        return torch.cuda.is_available()

    return LazyFacts(
        {
            "gpu": lambda: os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None,
            "tensorrt": lambda: (
                all(map(installed, ("tensorrt", "polygraphy")))
                and (installed("cuda.bindings") or installed("cuda.cudart"))
            ),
            "onnx-graph": has_graph,
            "onnxruntime": lambda: installed("onnxruntime"),
            "onnxruntime-cuda": lambda: installed("onnxruntime") and onnxruntime_cuda(),
            "torch": lambda: installed("torch") and installed("diffusers"),
            "torch-cuda": torch_cuda,
        }
    )


def graph_precision(dtype: str) -> str:
    """--dtype as the precision of an exported graph: auto and fp32 -> fp32, fp16 -> fp16."""
    from promptus_codec.engine.keys import PRECISION_OF_DTYPE
    from promptus_codec.models.device import DTYPES

    precision = "fp32" if dtype == "auto" else PRECISION_OF_DTYPE.get(DTYPES.get(dtype, ""))
    if precision is None:
        raise ModelError(f"--dtype {dtype}: exported graphs are fp32 or fp16")
    return precision


def longest_call(source, max_batch: int) -> int:
    """Frames in the stream's longest generation call: its longest keyframe interval, at most max_batch."""
    try:
        records = read_prx(source, strict=False).records
    except (PrxError, OSError):
        return max_batch
    longest, previous = 1, None
    for record in records:
        if isinstance(record, SceneRecord):
            previous = None
        elif isinstance(record, KeyframeRecord):
            if previous is not None:
                longest = max(longest, record.frame_index - previous)
            previous = record.frame_index
    return min(longest, max_batch)


def export_command(header: FileHeader, model_name: str, weights, batch: int, precision: str) -> str:
    """The `promptus engine export` command that makes the graph this stream needs."""
    words = ["promptus", "engine", "export", "--model", model_name]
    words += ["--weights", str(weights)] if weights else []
    words += ["--size", f"{header.coded_width}x{header.coded_height}", "--batch", str(batch)]
    words += ["--precision", precision] if precision != "fp32" else []
    return shlex.join(words)


def make_runtime(
    backend: str,
    header: FileHeader,
    model_name: str,
    weights,
    device: str,
    dtype: str,
    batch: int = DEFAULT_MAX_BATCH,
    source=None,
    log: Callable[[str], None] = lambda message: None,
):
    """The runtime that will generate frames for this stream.

    ``batch`` (frames per call) and ``source`` (the stream's path) only shape the export command
    suggested when no graph fits. ``log`` hears which runtime ``auto`` chose and why, and what
    TensorRT builds.
    """
    from promptus_codec.engine.cache import engine_dir, find_graphs
    from promptus_codec.engine.keys import GraphKey

    @functools.cache
    def found() -> dict:
        """{batch: path} of the exported graphs that fit the stream."""
        try:
            precision = graph_precision(dtype)
        except ModelError:
            return {}  # bf16: no graph fits (an explicit --backend onnx says why below)
        key = GraphKey.create(
            header.model, header.generation, 1, header.coded_width, header.coded_height, precision=precision
        )  # lookups ignore the batch
        return find_graphs(key)

    if backend == "auto":
        backend, device, passed = choose_backend(probe_facts(lambda: bool(found())), device)
        reason = f" ({passed})" if passed else ""
        log(f"--backend auto chose {runtime_label(backend, device)}{reason}")
    if backend == "torch":
        from promptus_codec.decoder.torch_runtime import TorchRuntime
        from promptus_codec.models.registry import load_model

        model = load_model(model_name, device=device, dtype=dtype, weights=weights)
        check_shapes(header, model.spec)
        return TorchRuntime(model, header.generation)
    if backend not in ("onnx", "tensorrt"):
        raise ModelError(f"unknown --backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if not found():
        command = export_command(
            header, model_name, weights, longest_call(source, batch) if source else batch, graph_precision(dtype)
        )
        raise ModelError(f"no exported graph for this stream in {engine_dir()}: run  {command}")
    if backend == "onnx":
        from promptus_codec.decoder.onnx_runtime import OnnxRuntime

        return OnnxRuntime(found(), device)
    from promptus_codec.decoder.tensorrt_runtime import TensorRTRuntime

    if device == "cpu":
        raise ModelError("--backend tensorrt runs on CUDA: use --device auto or cuda")
    return TensorRTRuntime(found(), engine_dir(), log=log)
