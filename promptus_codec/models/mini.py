"""The built-in ``mini`` model: SD-Turbo's shape, trained here so that decoded video looks like its source.

    pixels (B, 3, H, W) --AutoencoderKL encoder, posterior mean x 0.18215--> latent (B, 4, H/8, W/8)
    noisy latent + prompt (B, 77, 1024) --UNet2DConditionModel (epsilon, t = 999)--> (B, 4, h, w)
    latent (B, 4, h, w) --AutoencoderTiny decoder--> pixels (B, 3, 8h, 8w)
    pixels (B, 3, H, W) --PromptEncoder--> factors U (B, 77, 16), V (B, 16, 1024)   (encoder side only)

The same three diffusers classes, interfaces and constants as SD-Turbo (and as ``tiny``), so
fitting, decoding, ONNX export, fingerprints and the container take the SD-Turbo code paths.
It is *not* SD-Turbo: a few million weights trained for about an hour on a 2-core CPU, on the
permissively licensed clips and stills listed in scripts/DATA.md, by scripts/train_builtin.py.

The fourth network, the amortised :class:`PromptEncoder`, predicts a frame's rank-16 factors in
one pass; the first r columns of U and rows of V are a rank-r prompt (trained for r = 4..16).
mini.safetensors holds the one trained jointly with the generator (part of its training
objective); the encoder starts fitting from ``INITIALIZER_FILE``, a second one trained afterwards
for the frozen generator by scripts/train_initializer.py, with factors at fitting's scale. Neither
reaches the decoder, so neither is part of the model's identity; each has a fingerprint of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from promptus_codec.errors import ModelError
from promptus_codec.models.base import ModelSpec
from promptus_codec.models.tiny import sd_vae_kwargs

if TYPE_CHECKING:
    from promptus_codec.container.records import ModelIdentity
    from promptus_codec.models.device import Layout
    from promptus_codec.models.tiny import TinyModel

WEIGHTS_FILE = Path(__file__).parent / "weights" / "mini.safetensors"  # float16, with the prompt encoder
CONFIG_FILE = WEIGHTS_FILE.with_suffix(".json")  # diffusers configs and fingerprints, read by the loader
PROVENANCE_FILE = WEIGHTS_FILE.with_suffix(".provenance.json")  # how it was trained: data, steps, losses
# --init amortized's prompt encoder, trained for the frozen generator by scripts/train_initializer.py; its
# record (INITIALIZER_FILE + ".json") holds its fingerprint, shape, settings, loss curve and mini's identity.
INITIALIZER_FILE = WEIGHTS_FILE.with_name("mini-initializer.safetensors")

# SD 2.x prompt and latent shapes, the reference's constants. Trained on intervals of 1..12 frames and
# ranks 4..16 (scripts/train_builtin.py reads both from here); rate control keeps to that range, which
# was measured against the rank-8 rule alone on sky (README, "Rate control").
SPEC = ModelSpec(name="mini", max_interval=12, least_rank=4)
PROMPT_ENCODER_KEY = "prompt_encoder"  # key prefix of the fourth network in mini.safetensors

# Sizes chosen by measurement (benchmarks in the README; 2-core CPU, float32, 128x128, K = 10):
# one fitting iteration (UNet + decoder, forward and backward) costs 560 ms against tiny's 325 ms.
# A 20-channel decoder cost 2.9x a 16-channel one (oneDNN likes multiples of 16), so the decoder
# keeps tiny's 16 channels at full resolution and gets its extra depth at low resolution.


@dataclass(frozen=True)
class MiniConfig:
    """Sizes of the mini networks."""

    unet_channels: tuple[int, ...] = (64, 128, 128)  # three levels: 16^2, 8^2, 4^2 latents at 128^2
    unet_head_dim: int = 16  # 4 heads at 64 channels, 8 at 128
    cross_attention_dim: int = 1024  # SD 2.x prompt width
    norm_num_groups: int = 16  # divides every UNet and VAE channel count
    decoder_channels: int = 16  # TAESD needs one width for all levels; 16 at full res is the budget
    decoder_blocks: tuple[int, ...] = (3, 3, 2, 1)  # depth where it is cheap: 16^2, 32^2, 64^2, 128^2
    encoder_channels: tuple[int, ...] = (32, 64, 64, 64)  # SD VAE shape, /8; runs once a scene
    latent_channels: int = 4  # SD latent layout
    latent_scale: float = 0.18215  # SD VAE scaling factor; training keeps latents near unit std
    max_rank: int = 16  # the prompt encoder's rank; a prefix of it is a lower-rank prompt
    prompt_encoder_width: int = 256  # hidden width of the prompt encoder's head
    prompt_basis: int = 64  # V rows are mixtures of this many learned 1024-wide basis rows

    def unet_kwargs(self) -> dict:
        return dict(
            in_channels=self.latent_channels,
            out_channels=self.latent_channels,
            block_out_channels=self.unet_channels,
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=self.cross_attention_dim,
            attention_head_dim=self.unet_head_dim,
            norm_num_groups=self.norm_num_groups,
            use_linear_projection=True,  # as SD 2.x
        )

    def taesd_kwargs(self) -> dict:
        levels = len(self.decoder_blocks)
        return dict(
            latent_channels=self.latent_channels,
            encoder_block_out_channels=(4,) * levels,  # TAESD's encoder half never runs: minimal
            num_encoder_blocks=(1,) * levels,
            decoder_block_out_channels=(self.decoder_channels,) * levels,
            num_decoder_blocks=self.decoder_blocks,
        )

    def vae_kwargs(self) -> dict:
        return sd_vae_kwargs(self.encoder_channels, self.latent_channels, self.norm_num_groups, self.latent_scale)

    def prompt_encoder_kwargs(self) -> dict:
        return dict(
            max_rank=self.max_rank,
            width=self.prompt_encoder_width,
            basis=self.prompt_basis,
            tokens=77,
            prompt_dim=self.cross_attention_dim,
        )


class PromptEncoder(nn.Module):
    """Amortised prompt inversion: a frame in, rank-``max_rank`` factors out.

    images (B, 3, H, W) in [0, 1] --5 stride-2 convs--> (B, 128, H/32, W/32) --pool 4x4-->
    (B, 2048) --MLP--> U (B, 77, R) and mixing weights (B, R, basis) @ basis (basis, 1024) = V.

    ``unit_factors``: every column of U and row of V is scaled to RMS 1, the scale of the seeded
    N(0, 1) factors that fitting's Adam steps (lr 0.1) are sized for; then c = U V / sqrt(r) has
    entries of order 1 for every prefix rank r. Without it (the encoder trained with mini) the
    scale is learned, and came out at RMS 0.19, where those steps are too coarse (README, "Fitting").
    """

    def __init__(
        self,
        max_rank: int = 16,
        width: int = 256,
        basis: int = 64,
        tokens: int = 77,
        prompt_dim: int = 1024,
        unit_factors: bool = False,
    ):
        super().__init__()
        self.max_rank, self.tokens, self.unit_factors = max_rank, tokens, unit_factors
        channels = (3, 32, 64, 128, 128, 128)
        layers = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())  # (B, 2048)
        self.hidden = nn.Sequential(nn.Linear(channels[-1] * 16, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU())
        self.to_u = nn.Linear(width, tokens * max_rank)
        self.to_mix = nn.Linear(width, max_rank * basis)
        self.basis = nn.Parameter(torch.randn(basis, prompt_dim) / math.sqrt(basis))

    def kwargs(self) -> dict:
        """The constructor arguments that rebuild this encoder's shape (written beside a trained one)."""
        basis, prompt_dim = self.basis.shape
        width = self.hidden[0].out_features
        return dict(
            max_rank=self.max_rank,
            width=width,
            basis=basis,
            tokens=self.tokens,
            prompt_dim=prompt_dim,
            unit_factors=self.unit_factors,
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> U (B, 77, R), V (B, R, 1024), float32."""
        h = self.hidden(self.features(images * 2 - 1))  # (B, width)
        u = self.to_u(h).view(-1, self.tokens, self.max_rank)  # (B, 77, R)
        mix = self.to_mix(h).view(-1, self.max_rank, self.basis.shape[0])  # (B, R, basis)
        v = mix @ self.basis  # (B, R, 1024)
        if self.unit_factors:
            u = u * torch.rsqrt(u.square().mean(1, keepdim=True) + 1e-8)  # each column of U: RMS 1
            v = v * torch.rsqrt(v.square().mean(2, keepdim=True) + 1e-8)  # each row of V: RMS 1
        return u, v


def generator_record(identity: "ModelIdentity") -> dict:
    """How a trained prompt encoder's record names the generator it was trained for (JSON)."""
    return dict(
        name=identity.name,
        denoiser_sha256=identity.denoiser_sha256.hex(),
        decoder_sha256=identity.decoder_sha256.hex(),
        encoder_sha256=identity.encoder_sha256.hex(),
    )


def load_prompt_encoder_file(
    path: str | Path, generator: "ModelIdentity", device: "str | torch.device" = "cpu"
) -> tuple[PromptEncoder, bytes]:
    """A prompt encoder written by scripts/train_initializer.py (``path`` and ``path``.json), and its
    fingerprint. Refused (ModelError) when the record is missing or does not match the file, or when
    it was trained for another generator than ``generator``: its factors would start far off."""
    import json

    from promptus_codec.models.fingerprint import fingerprint_state_dict, read_safetensors

    remedy = "; write one with scripts/train_initializer.py"
    record_path = Path(f"{path}.json")
    try:
        record = json.loads(record_path.read_text())
        shape, trained_for = record["prompt_encoder"], record["generator"]
        expected = bytes.fromhex(record["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"initializer {path}: cannot read its record {record_path} ({exc}){remedy}") from None
    stored = read_safetensors(path, remedy=remedy)
    digest = fingerprint_state_dict(stored)
    if digest != expected:
        raise ModelError(
            f"initializer {path}: its weights' fingerprint {digest.hex()[:16]}... is not the "
            f"{expected.hex()[:16]}... its record states: the file is damaged or not the one trained"
        )
    wanted = generator_record(generator)
    if trained_for != wanted:
        raise ModelError(
            f"initializer {path} was trained for the generator {trained_for.get('name')!r} "
            f"(denoiser {str(trained_for.get('denoiser_sha256'))[:16]}...), not for these {generator.name} weights "
            f"(denoiser {wanted['denoiser_sha256'][:16]}...){remedy} for them"
        )
    try:
        encoder = PromptEncoder(**shape)
        encoder.load_state_dict({k: t.float() for k, t in stored.items()})
    except (TypeError, RuntimeError) as exc:
        raise ModelError(f"initializer {path}: its tensors do not fit the shape its record states ({exc})") from None
    return encoder.to(device).eval().requires_grad_(False), digest


def load_mini(
    device: "str | torch.device" = "auto",
    dtype: "str | torch.dtype" = "auto",
    layout: "Layout | None" = None,
) -> "TinyModel":
    """The mini generator (UNet, TAESD-shaped decoder, VAE encoder) from the shipped files."""
    from promptus_codec.models.tiny import load_builtin

    return load_builtin(SPEC, WEIGHTS_FILE, device, dtype, layout)


def load_prompt_encoder(
    generator: "ModelIdentity", device: "str | torch.device" = "cpu"
) -> tuple[PromptEncoder, bytes]:
    """The shipped initializer (``INITIALIZER_FILE``) in float32 and its fingerprint; refused (ModelError)
    unless its record names ``generator``, the mini weights it will start fitting for."""
    return load_prompt_encoder_file(INITIALIZER_FILE, generator, device)


def load_joint_prompt_encoder(device: "str | torch.device" = "cpu") -> tuple[PromptEncoder, bytes]:
    """The prompt encoder trained jointly with mini (``PROMPT_ENCODER_KEY`` in ``WEIGHTS_FILE``) and its
    fingerprint. Encoding no longer starts from it (a worse start than random factors, README
    "Fitting"); benchmarks/fitting.py ``--initializer joint`` keeps its figures reproducible."""
    from promptus_codec.models.fingerprint import fingerprint_state_dict, read_safetensors, select

    stored = select(read_safetensors(WEIGHTS_FILE), strip=PROMPT_ENCODER_KEY + ".")
    encoder = PromptEncoder(**MiniConfig().prompt_encoder_kwargs())
    encoder.load_state_dict({k: t.float() for k, t in stored.items()})
    return encoder.to(device).eval().requires_grad_(False), fingerprint_state_dict(stored)
