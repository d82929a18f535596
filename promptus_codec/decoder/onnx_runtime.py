"""The ONNX Runtime runtime: exported generation graphs behind the driver's numpy API, no torch.

    engine/<key>-b1-....onnx, engine/<key>-b10-....onnx   (promptus engine export)
        │ one InferenceSession per batch; identity and constants read from their metadata
        v
    generate(z_prev, noise, prompts (n, m, dim)) --engine.batching--> calls of exactly an engine's batch

Needs only numpy and onnxruntime. Provider: CUDA when onnxruntime has it and ``device`` allows,
else CPU. Each session holds its own copy of the weights: SD-Turbo in fp32 takes about 3.4 GB
per exported batch size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from promptus_codec.container.records import GenerationConstants, ModelIdentity
from promptus_codec.engine.batching import generate_padded
from promptus_codec.engine.keys import INPUTS, OUTPUTS, read_graph_metadata
from promptus_codec.errors import ModelError, require

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def providers_for(device: str, available: list[str]) -> list[str]:
    """Execution providers for ``device`` ("auto", "cpu", "cuda") given onnxruntime's ``available``."""
    if device not in ("auto", "cpu", "cuda"):
        raise ModelError(f"device={device!r}: expected auto, cpu or cuda")
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise ModelError("device='cuda' but onnxruntime has no CUDA provider: pip install onnxruntime-gpu")
    return [CPU]


class OnnxRuntime:
    """Runs exported graphs ``{batch: path}`` (all for one model and size) with ONNX Runtime."""

    def __init__(self, graphs: Mapping[int, "str | Path"], device: str = "auto"):
        if not graphs:
            raise ValueError("no graphs given")
        ort = require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: constant-folding notes are not for users
        providers = providers_for(device, ort.get_available_providers())
        self.graphs = {batch: Path(path) for batch, path in sorted(graphs.items())}
        self.sessions = {
            batch: ort.InferenceSession(str(path), options, providers=providers) for batch, path in self.graphs.items()
        }
        described = {batch: self._describe(batch) for batch in self.graphs}
        self._identity, self.constants = described[min(described)]
        for batch, other in described.items():
            if other != (self._identity, self.constants):
                raise ModelError(
                    f"{self.graphs[batch].name} was exported from other weights or constants than "
                    f"{self.graphs[min(described)].name}: export them again"
                )
        first = self.sessions[min(self.sessions)]
        self.name = "onnx-cuda" if CUDA in first.get_providers() else "onnx-cpu"

    def _describe(self, batch: int) -> tuple[ModelIdentity, GenerationConstants]:
        """Identity and constants from the graph's metadata, which must name the file's own key."""
        path, session = self.graphs[batch], self.sessions[batch]
        try:
            stem, identity, constants = read_graph_metadata(session.get_modelmeta().custom_metadata_map)
        except ValueError as exc:
            raise ModelError(f"{path}: {exc}; export it with promptus engine export") from None
        if stem != path.stem:
            raise ModelError(f"{path} holds the graph {stem}: it was renamed; export it again")
        shape = session.get_inputs()[INPUTS.index("prompts")].shape
        if shape[0] != batch:
            raise ModelError(f"{path} takes batches of {shape[0]}, not {batch} as its name says")
        return identity, constants

    @property
    def batches(self) -> list[int]:
        return list(self.sessions)

    def identity(self) -> ModelIdentity:
        return self._identity

    def generate(self, z_prev: np.ndarray, noise: np.ndarray, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, C, h, w), (1, C, h, w), (B, m, n) float32 -> latents (B, C, h, w), images (B, 3, H, W)."""
        return generate_padded(self._run, self.batches, z_prev, noise, prompts)

    def _run(self, batch: int, z_prev: np.ndarray, noise: np.ndarray, prompts: np.ndarray):
        feed = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in zip(INPUTS, (z_prev, noise, prompts))}
        latents, images = self.sessions[batch].run(list(OUTPUTS), feed)
        return latents, images
