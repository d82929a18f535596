"""THE single-step generation module: noise mix -> denoiser -> x0 -> pixels (format_spec.md §9).

    z_prev (1, C, h, w) ──┐  noisy = latent_weight * z_prev + noise_weight * N0     (1, C, h, w) float32
    N0     (1, C, h, w) ──┘        │ expanded, not copied, to the batch
    prompts (B, m, n) ───────> denoiser(noisy, prompts, timestep) = out           (B, C, h, w)
                               x0 = DDPM(noisy, out, alpha_cumprod)              (B, C, h, w) float32
                               decoder(x0) = images                              (B, 3, fH, fW) in [0, 1]
    next interval's z_prev = x0 of the batch's last frame (GenerationStep.last_latent)

The encoder differentiates through :class:`GenerationStep`, the torch decoder runs it, and the ONNX
and TensorRT runtimes run its export, so every path shares this arithmetic. ``forward`` has no
data-dependent Python branches; the constants are Python floats (float32 constants once exported).

Why this is the reference's sampler step
----------------------------------------
The Promptus reference runs sgm's ``EulerAncestralSampler`` for one step, from the sigma of
t = 999 to 0. With a = alpha_cumprod(999) = 0.0046601 (SD's scaled-linear schedule):

    sigma = sqrt((1 - a) / a) = 14.6146         c_in = 1 / sqrt(sigma^2 + 1) = sqrt(a) = 0.0683

sgm scales the start latent to x = noisy * sqrt(1 + sigma^2) = noisy / sqrt(a), so the UNet sees
c_in * x = noisy, and the ``EpsScaling`` denoiser (c_skip = 1, c_out = -sigma) returns

    D = x - sigma * eps(noisy) = (noisy - sqrt(1 - a) * eps) / sqrt(a)       (the DDPM x0 below)

The ancestral step to sigma_next = 0 has sigma_up = sigma_down = 0, so it lands on
x + (D - x) = D exactly, adding no noise. With ``VScaling`` (c_skip = 1 / (sigma^2 + 1) = a,
c_out = -sigma / sqrt(sigma^2 + 1) = -sqrt(1 - a)) the same algebra gives
D = sqrt(a) * noisy - sqrt(1 - a) * v. tests/model/test_generate.py checks both numerically.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from promptus_codec.container.records import GenerationConstants, PredictionType
from promptus_codec.noise import initial_noise

if TYPE_CHECKING:
    from promptus_codec.models.base import GenerationModel


def noisy_latent(z_prev: torch.Tensor, noise: torch.Tensor, constants: GenerationConstants) -> torch.Tensor:
    """``latent_weight * z_prev + noise_weight * noise`` in float32 (spec §9): (1, C, h, w)."""
    return constants.latent_weight * z_prev.float() + constants.noise_weight * noise.float()


def x0_from_prediction(noisy: torch.Tensor, prediction: torch.Tensor, constants: GenerationConstants) -> torch.Tensor:
    """The DDPM estimate of the clean latent from one denoiser output, in float32.

    noisy (1 or B, C, h, w) broadcasts against prediction (B, C, h, w).
    """
    a = constants.alpha_cumprod
    sqrt_a, sqrt_1ma = math.sqrt(a), math.sqrt(1.0 - a)
    noisy, prediction = noisy.float(), prediction.float()
    if constants.prediction_type == PredictionType.EPSILON:
        return (noisy - sqrt_1ma * prediction) / sqrt_a
    if constants.prediction_type == PredictionType.V_PREDICTION:
        return sqrt_a * noisy - sqrt_1ma * prediction
    if constants.prediction_type == PredictionType.SAMPLE:
        return prediction
    raise ValueError(f"prediction_type={constants.prediction_type!r}: expected one of {list(PredictionType)}")


def initial_noise_tensor(
    constants: GenerationConstants,
    latent_shape: tuple[int, int, int],
    device: "str | torch.device" = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The stream's N0, (1, C, h, w), from :func:`promptus_codec.noise.initial_noise` (numpy, float32)."""
    noise = initial_noise(constants.noise_seed, tuple(latent_shape), constants.noise_generator)
    return torch.from_numpy(noise).to(device=device, dtype=dtype)


class GenerationStep(torch.nn.Module):
    """One generation step for a batch of prompts that share one noisy latent.

    ``model`` is any :class:`~promptus_codec.models.base.GenerationModel`; ``constants`` are
    the stream's (header) constants, by default the model's own.
    """

    def __init__(self, model: "GenerationModel", constants: GenerationConstants | None = None):
        super().__init__()
        self.model = model  # registered as a submodule when it is one (the tiny model is)
        self.constants = constants if constants is not None else model.spec.generation

    @property
    def prompt_shape(self) -> tuple[int, int]:
        """(m, n) of one prompt."""
        return (self.model.spec.prompt_tokens, self.model.spec.prompt_dim)

    @property
    def latent_channels(self) -> int:
        return self.model.spec.latent_channels

    @property
    def scale_factor(self) -> int:
        """Pixels per latent cell along each side."""
        return self.model.spec.vae_scale_factor

    def forward(
        self, z_prev: torch.Tensor, noise: torch.Tensor, prompts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, C, h, w), (1, C, h, w), (B, m, n) -> latents x0 (B, C, h, w) float32, images (B, 3, H, W) in [0, 1]."""
        latents = self.latents(z_prev, noise, prompts)  # (B, C, h, w)
        images = self.model.decode_latent(latents.to(self.model.dtype))  # (B, 3, H, W)
        return latents, images.float()

    def latents(self, z_prev: torch.Tensor, noise: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """The generated latents x0 (B, C, h, w) alone, without decoding to pixels."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_inputs(z_prev, noise, prompts)
        device, dtype = self.model.device, self.model.dtype
        noisy = noisy_latent(z_prev.to(device), noise.to(device), self.constants)  # (1, C, h, w) float32
        batch = noisy.to(dtype).expand(prompts.shape[0], -1, -1, -1)  # (B, C, h, w), one shared copy
        out = self.model.denoise(batch, prompts.to(device, dtype), self.constants.timestep)  # (B, C, h, w)
        return x0_from_prediction(noisy, out, self.constants)  # (B, C, h, w) float32

    @staticmethod
    def last_latent(latents: torch.Tensor) -> torch.Tensor:
        """The batch's last generated latent, (1, C, h, w): the next interval's z_prev."""
        return latents[-1:]

    def check_inputs(self, z_prev: torch.Tensor, noise: torch.Tensor, prompts: torch.Tensor) -> None:
        """Raise ValueError naming the first argument whose shape does not fit."""
        c, (m, n) = self.latent_channels, self.prompt_shape
        if z_prev.ndim != 4 or z_prev.shape[0] != 1 or z_prev.shape[1] != c:
            raise ValueError(f"z_prev has shape {tuple(z_prev.shape)}: expected (1, {c}, h, w)")
        if noise.shape != z_prev.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}: expected z_prev's {tuple(z_prev.shape)}")
        if prompts.ndim != 3 or prompts.shape[0] < 1 or tuple(prompts.shape[1:]) != (m, n):
            raise ValueError(f"prompts has shape {tuple(prompts.shape)}: expected (B, {m}, {n}) with B >= 1")


class CountingStep(torch.nn.Module):
    """A GenerationStep that records the frames of each call: a fit's cost in UNet passes
    (benchmarks/fitting.py, the reference preset's tests). ``calls.clear()`` starts a new count."""

    def __init__(self, step: GenerationStep):
        super().__init__()
        self.step, self.calls = step, []
        self.prompt_shape = step.prompt_shape

    @property
    def passes(self) -> int:  # frames through the UNet, forward and backward, since the last clear
        return sum(self.calls)

    def forward(self, z_prev, noise, prompts):
        self.calls.append(prompts.shape[0])
        return self.step(z_prev, noise, prompts)
