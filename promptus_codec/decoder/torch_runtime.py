"""The PyTorch runtime: :class:`promptus_codec.generate.GenerationStep` behind the driver's numpy API."""

from __future__ import annotations

import numpy as np
import torch

from promptus_codec.container.records import GenerationConstants, ModelIdentity
from promptus_codec.generate import GenerationStep
from promptus_codec.models.base import GenerationModel


class TorchRuntime:
    """Runs one generation step with the loaded model, without gradients."""

    def __init__(self, model: GenerationModel, constants: GenerationConstants):
        self.model = model
        self.generator = GenerationStep(model, constants)
        self.name = f"torch-{model.device.type}"

    def identity(self) -> ModelIdentity:
        return self.model.identity()

    @torch.inference_mode()
    def generate(self, z_prev: np.ndarray, noise: np.ndarray, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, C, h, w), (1, C, h, w), (B, m, n) -> latents (B, C, h, w), images (B, 3, H, W), float32 numpy."""
        # Contiguous inputs: a strided array would pick other kernels and change the last bits.
        z_prev, noise, prompts = (torch.from_numpy(np.ascontiguousarray(a)) for a in (z_prev, noise, prompts))
        latents, images = self.generator(z_prev, noise, prompts)
        return latents.float().cpu().numpy(), images.float().cpu().numpy()
