"""The one small interface every generator backend implements.

A backend bundles three networks and says what shapes it works in:

    pixels (B, 3, H, W) in [0, 1] --encode_image--> latent (B, C, H/f, W/f)   (scene latents)
    noisy latent + prompt (B, m, n) --denoise--> model output (B, C, h, w)  (one UNet call)
    latent (B, C, h, w) --decode_latent--> pixels (B, 3, h*f, w*f) in [0, 1]

The step math that strings them together lives in :mod:`promptus_codec.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from promptus_codec.container.records import GenerationConstants, ModelIdentity

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about a backend that the container and rate control need."""

    name: str  # written into the header's model identity
    prompt_tokens: int = 77  # m: CLIP sequence length of SD 2.x
    prompt_dim: int = 1024  # n: OpenCLIP ViT-H width of SD 2.x
    latent_channels: int = 4  # SD VAE latent channels
    vae_scale_factor: int = 8  # pixels per latent cell along each side
    generation: GenerationConstants = GenerationConstants()  # the reference's constants
    # Rate control (ratecontrol.plan_rate) shortens K until the rank reaches min_rank, the paper's 8 for
    # SD-Turbo (rank 8 / K 4 beats rank 16 / K 8 at 550 kb/s). A model trained on intervals of at most
    # max_interval frames (0: no limit) and ranks of at least least_rank says so, and K stops at
    # max_interval as soon as the rank there is least_rank or more.
    min_rank: int = 8
    max_interval: int = 0
    least_rank: int = 1


class GenerationModel(Protocol):
    """What :mod:`promptus_codec.generate`, the encoder and the decoder rely on."""

    spec: ModelSpec
    device: "torch.device"
    dtype: "torch.dtype"

    def encode_image(self, pixels: "torch.Tensor", sample: "torch.Generator | None" = None) -> "torch.Tensor":
        """(B, 3, H, W) in [0, 1] -> (B, C, H/f, W/f) latent, already times the latent scale: the
        posterior's mean, or a sample drawn with the generator ``sample``."""

    def denoise(self, noisy: "torch.Tensor", prompts: "torch.Tensor", timestep: int) -> "torch.Tensor":
        """One denoiser call: (B, C, h, w), (B, m, n) -> (B, C, h, w) raw model output."""

    def decode_latent(self, latent: "torch.Tensor") -> "torch.Tensor":
        """(B, C, h, w) -> (B, 3, h*f, w*f) pixels in [0, 1]."""

    def identity(self) -> ModelIdentity:
        """Name and SHA-256 weight fingerprints, computed once and cached."""
