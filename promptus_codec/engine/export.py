"""Export :class:`promptus_codec.generate.GenerationStep` to ONNX: one graph, fixed batch and size.

    z_prev (1, C, h, w) ─┐
    noise  (1, C, h, w) ─┼─ noise mix -> UNet step -> x0 -> latent decoder ─┬─> latents (B, C, h, w)
    prompts (B, m, n) ───┘   (generate.py, traced by torch.export)         └─> images (B, 3, H, W)

One graph rather than denoiser + decoder: the dynamo exporter handles the whole step (SD-Turbo
included: about 45 s and a 3.4 GB external-data file on a 2-core CPU), and one session keeps
x0 on the device between the two networks. Shapes are fixed, as TensorRT builds best for them;
the runtimes pad shorter chunks (:mod:`promptus_codec.engine.batching`).

Exporter: ``torch.onnx.export(..., dynamo=True)`` at opset 18 (torch.export + onnxscript). The
graph carries the model identity and generation constants in its metadata_props (keys.py).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from promptus_codec.engine.cache import engine_dir
from promptus_codec.engine.keys import INPUTS, ONNX_OPSET, OUTPUTS, PRECISION_OF_DTYPE, GraphKey, graph_metadata
from promptus_codec.errors import require

if TYPE_CHECKING:
    from promptus_codec.container.records import GenerationConstants
    from promptus_codec.models.base import GenerationModel

@dataclass(frozen=True)
class Exported:
    """One exported graph and what it cost."""

    key: GraphKey
    path: Path  # <key>.onnx; weights beside it in <key>.onnx.data when over protobuf's 2 GB
    seconds: float  # torch.onnx.export (trace + translate + optimise) plus saving
    bytes: int  # .onnx plus external data


def graph_key(model: "GenerationModel", batch: int, width: int, height: int,
              constants: "GenerationConstants | None" = None, opset: int = ONNX_OPSET) -> GraphKey:
    """The key of ``model``'s graph at this batch and size; the precision is the model's dtype."""
    dtype = str(model.dtype).removeprefix("torch.")
    if dtype not in PRECISION_OF_DTYPE:
        raise ValueError(f"cannot export a {dtype} model: load it in fp32 or fp16")
    constants = constants if constants is not None else model.spec.generation
    return GraphKey.create(model.identity(), constants, batch, width, height, opset, PRECISION_OF_DTYPE[dtype])


def example_inputs(model: "GenerationModel", batch: int, width: int, height: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Random (z_prev, noise, prompts), float32, of the graph's input shapes."""
    spec, f = model.spec, model.spec.vae_scale_factor
    if width % f or height % f:
        raise ValueError(f"size {width}x{height} is not a multiple of {spec.name}'s scale factor {f}")
    latent = (1, spec.latent_channels, height // f, width // f)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(latent, dtype=np.float32), rng.standard_normal(latent, dtype=np.float32),
            rng.standard_normal((batch, spec.prompt_tokens, spec.prompt_dim), dtype=np.float32))


def exporter_name() -> str:
    import onnxscript
    import torch

    return f"torch.onnx.export(dynamo=True) torch {torch.__version__} onnxscript {onnxscript.__version__}"


def export_graph(model: "GenerationModel", batch: int, width: int, height: int,
                 constants: "GenerationConstants | None" = None, opset: int = ONNX_OPSET,
                 directory: "str | os.PathLike | None" = None, optimize: bool = True) -> Exported:
    """Export ``model``'s generation step at ``batch`` x ``width`` x ``height`` into ``directory``.

    ``directory`` defaults to :func:`engine_dir`; the files appear there only once complete.
    """
    torch = require("torch", "torch")
    require("onnxscript", "export")
    from promptus_codec.generate import GenerationStep

    constants = constants if constants is not None else model.spec.generation
    key = graph_key(model, batch, width, height, constants, opset)
    generator = GenerationStep(model, constants).eval()
    inputs = tuple(torch.from_numpy(a) for a in example_inputs(model, batch, width, height))
    directory = Path(engine_dir() if directory is None else directory)
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with torch.no_grad():
        program = torch.onnx.export(generator, inputs, dynamo=True, opset_version=opset, input_names=list(INPUTS),
                                    output_names=list(OUTPUTS), optimize=optimize, verbose=False)
    program.model.metadata_props.update(graph_metadata(key, model.identity(), constants, exporter_name()))
    with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as temporary:
        program.save(Path(temporary) / key.filename)  # external data, if any, is <name>.data beside it
        written = sorted(Path(temporary).iterdir(), key=lambda p: p.suffix == ".onnx")  # the graph last
        (directory / (key.filename + ".data")).unlink(missing_ok=True)  # an older export's weights
        for path in written:
            os.replace(path, directory / path.name)
    seconds = time.perf_counter() - started
    size = sum((directory / p.name).stat().st_size for p in written)
    return Exported(key, directory / key.filename, seconds, size)


def compare_with_torch(exported: Exported, model: "GenerationModel", constants: "GenerationConstants | None" = None,
                       seed: int = 1) -> dict[str, float]:
    """Max |ONNX Runtime - torch| over latents and images on random inputs of the graph's shapes."""
    import torch

    from promptus_codec.decoder.onnx_runtime import OnnxRuntime
    from promptus_codec.generate import GenerationStep

    key = exported.key
    inputs = example_inputs(model, key.batch, key.width, key.height, seed)
    generator = GenerationStep(model, constants if constants is not None else model.spec.generation).eval()
    with torch.inference_mode():
        expected = [t.float().numpy() for t in generator(*(torch.from_numpy(a) for a in inputs))]
    got = OnnxRuntime({key.batch: exported.path}, device="cpu").generate(*inputs)
    return {name: float(np.abs(a - b).max()) for name, a, b in zip(OUTPUTS, got, expected)}
