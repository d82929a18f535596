"""The built-in ``tiny`` model: SD-Turbo's three diffusers classes at toy sizes.

    pixels (B, 3, H, W) --AutoencoderKL encoder, posterior mean x 0.18215--> latent (B, 4, H/8, W/8)
    noisy latent + prompt (B, 77, 1024) --UNet2DConditionModel (epsilon)--> model output (B, 4, h, w)
    latent (B, 4, h, w) --AutoencoderTiny decoder, [-1, 1] -> [0, 1]--> pixels (B, 3, 8h, 8w)

Same classes, latent layout and prompt shape as SD-Turbo, so every code path (fitting,
decoding, export, the container) runs on it in seconds on a CPU. Its images mean nothing.

The weights ship in the package (``weights/tiny.safetensors``, float16, 2.5 MB) with the
diffusers configs beside them (``weights/tiny.json``). ``scripts/make_tiny_weights.py`` wrote
both once, from :class:`TinyConfig` and a fixed seed; loading reads the files, so the model
and its fingerprint are the same on every machine and torch version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from promptus_codec.container.records import ModelIdentity
from promptus_codec.errors import ModelError, WeightsNotFoundError, require
from promptus_codec.models import fingerprint
from promptus_codec.models.base import ModelSpec
from promptus_codec.models.device import Layout, apply_layout, resolve

if TYPE_CHECKING:
    import os

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "tiny.safetensors"
CONFIG_FILE = WEIGHTS_DIR / "tiny.json"  # must sit beside the weights; see load_tiny

SPEC = ModelSpec(name="tiny")  # SD 2.x prompt and latent shapes, the reference's constants

# channels_last on CPU, measured (float32, 2-core CPU, best of 25 interleaved runs, inference):
#   decoder  64x64 b1 1.37x, 128x128 b1 1.80x, 128x128 b10 1.66x, 512x512 b1 1.05x, b10 1.91x faster
#   UNet     128x128 b1 0.96x, b10 0.89x (slower: its attention layers convert back and forth)
TINY_CPU_LAYOUT = Layout(decoder_channels_last=True, denoiser_channels_last=False)


def sd_vae_kwargs(channels: tuple[int, ...], latent_channels: int, norm_num_groups: int, latent_scale: float) -> dict:
    """AutoencoderKL config of SD's VAE shape (one resnet a level, /2 per level) at the given widths."""
    levels = len(channels)
    return dict(
        latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=channels,
        layers_per_block=1,
        norm_num_groups=norm_num_groups,
        scaling_factor=latent_scale,
    )


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the tiny networks; ``scripts/make_tiny_weights.py`` builds them from this."""

    unet_channels: tuple[int, ...] = (32, 64)  # two levels, one downsample: latents need even sides
    unet_layers_per_block: int = 1  # the fewest that keeps a resnet and an attention per level
    unet_head_dim: int = 8  # 4 heads at 32 channels, 8 at 64
    cross_attention_dim: int = 1024  # SD 2.x prompt width: prompts are 77 x 1024, as for SD-Turbo
    norm_num_groups: int = 8  # divides every channel count below
    decoder_channels: tuple[int, ...] = (16, 16, 16, 16)  # 4 levels = 3 upsamples = x8, like TAESD
    decoder_encoder_channels: tuple[int, ...] = (4, 4, 4, 4)  # TAESD's unused encoder half, minimal
    encoder_channels: tuple[int, ...] = (8, 16, 16, 16)  # 4 levels = 3 downsamples = /8, like SD's VAE
    latent_channels: int = 4  # SD latent layout
    latent_scale: float = 0.18215  # SD VAE scaling factor, so scene latents are used as for SD

    def unet_kwargs(self) -> dict:
        return dict(
            in_channels=self.latent_channels,
            out_channels=self.latent_channels,
            block_out_channels=self.unet_channels,
            layers_per_block=self.unet_layers_per_block,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=self.cross_attention_dim,
            attention_head_dim=self.unet_head_dim,
            norm_num_groups=self.norm_num_groups,
            use_linear_projection=True,  # as SD 2.x
        )

    def taesd_kwargs(self) -> dict:
        return dict(
            latent_channels=self.latent_channels,
            encoder_block_out_channels=self.decoder_encoder_channels,
            num_encoder_blocks=(1,) * len(self.decoder_encoder_channels),
            decoder_block_out_channels=self.decoder_channels,
            num_decoder_blocks=(1,) * len(self.decoder_channels),
        )

    def vae_kwargs(self) -> dict:
        return sd_vae_kwargs(self.encoder_channels, self.latent_channels, self.norm_num_groups, self.latent_scale)


@dataclass(frozen=True)
class Part:
    """One network in tiny.safetensors: its key prefix there and the weights it fingerprints."""

    key: str  # key prefix in the file ("unet." ...) and attribute name on TinyModel
    class_name: str  # diffusers class built from tiny.json[key]
    fingerprinted: tuple[str, ...] = ("",)  # prefixes of the weights that reach the output


# The halves that never run (TAESD's encoder, the VAE's decoder) are stored but not
# fingerprinted, as for SD-Turbo (models/sd_turbo.py).
UNET = Part("unet", "UNet2DConditionModel")
TAESD = Part("taesd", "AutoencoderTiny", ("decoder.",))
VAE = Part("vae", "AutoencoderKL", ("encoder.", "quant_conv."))
PARTS = (UNET, TAESD, VAE)


class TinyModel(torch.nn.Module):
    """A built-in model's networks (tiny or mini) behind the GenerationModel interface (models/base.py)."""

    def __init__(
        self, unet, taesd, vae, weights_path: Path | None = None, layout: Layout = Layout(), spec: ModelSpec = SPEC
    ):
        super().__init__()
        self.spec = spec  # tiny's or mini's: same shapes and constants, another name
        self.unet = apply_layout(unet, layout.denoiser_channels_last)  # UNet2DConditionModel
        self.taesd = apply_layout(taesd, layout.decoder_channels_last)  # AutoencoderTiny
        self.vae = vae  # AutoencoderKL; only its encoder half runs
        self.weights_path = weights_path  # None: built in memory, fingerprinted from its state
        self._identity: ModelIdentity | None = None

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    def encode_image(self, pixels: torch.Tensor, sample: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 4, H/8, W/8): the posterior's mean, or a sample drawn with
        the generator ``sample``; times the latent scale."""
        x = pixels.to(self.device, self.dtype) * 2 - 1  # (B, 3, H, W) in [-1, 1]
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean if sample is None else posterior.sample(generator=sample)
        return z * self.vae.config.scaling_factor  # (B, 4, H/8, W/8)

    def denoise(self, noisy: torch.Tensor, prompts: torch.Tensor, timestep: int) -> torch.Tensor:
        """One UNet call: (B, 4, h, w), (B, 77, 1024) -> predicted noise (B, 4, h, w)."""
        noisy = noisy.to(self.device, self.dtype)
        prompts = prompts.to(self.device, self.dtype)
        return self.unet(noisy, timestep, encoder_hidden_states=prompts, return_dict=False)[0]

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) -> (B, 3, 8h, 8w) in [0, 1]."""
        pixels = self.taesd.decode(latent.to(self.device, self.dtype), return_dict=False)[0]  # [-1, 1]
        return ((pixels + 1) / 2).clamp(0, 1).contiguous()

    def identity(self) -> ModelIdentity:
        """Fingerprints of the weights as stored in the file (cached), else of the modules."""
        if self._identity is None:
            digests = [self._digest(part) for part in PARTS]  # denoiser, decoder, encoder
            self._identity = ModelIdentity(self.spec.name, *digests)
        return self._identity

    def _digest(self, part: Part) -> bytes:
        if self.weights_path is not None:
            return fingerprint.fingerprint_file(self.weights_path, part.fingerprinted, strip=part.key + ".")
        state = getattr(self, part.key).state_dict()
        return fingerprint.fingerprint_state_dict(fingerprint.select(state, part.fingerprinted))


def build_parts(configs: dict[str, dict], device: "str | torch.device" = "meta") -> dict[str, torch.nn.Module]:
    """The three diffusers modules from their configs; on "meta" they hold no weights yet."""
    diffusers = require("diffusers", "torch")
    with torch.device(device):
        return {p.key: getattr(diffusers, p.class_name).from_config(configs[p.key]) for p in PARTS}


def load_tiny(
    path: "str | os.PathLike | None" = None,
    device: "str | torch.device" = "auto",
    dtype: "str | torch.dtype" = "auto",
    layout: Layout | None = None,
) -> TinyModel:
    """Load the tiny model from ``path`` (default: the weights shipped in the package).

    ``path`` is a ``.safetensors`` file with a ``.json`` of the same stem beside it.
    ``layout`` defaults to :data:`TINY_CPU_LAYOUT` on CPU and to contiguous on CUDA.
    """
    return load_builtin(SPEC, Path(path) if path is not None else WEIGHTS_FILE, device, dtype, layout)


def load_builtin(
    spec: ModelSpec,
    weights: Path,
    device: "str | torch.device" = "auto",
    dtype: "str | torch.dtype" = "auto",
    layout: Layout | None = None,
) -> TinyModel:
    """Load a built-in model (tiny, mini): ``weights`` (.safetensors) and the ``.json`` beside it.

    Weights outside a part's fingerprinted prefixes (the halves that never run) may be absent
    from the file; they are then zeros, so the file need not ship them.
    """
    device, dtype = resolve(device, dtype)
    config_file = weights.with_suffix(".json")
    if not weights.is_file() or not config_file.is_file():
        raise WeightsNotFoundError(
            f"{spec.name} model files missing: {weights} and {config_file} (reinstall promptus-codec)"
        )
    try:
        configs = json.loads(config_file.read_text())["components"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read the {spec.name} model's configs from {config_file}: {exc!r}") from exc
    state = fingerprint.read_safetensors(weights)
    parts = build_parts(configs)
    for part in PARTS:
        module = parts[part.key]
        own = {name[len(part.key) + 1 :]: t for name, t in state.items() if name.startswith(part.key + ".")}
        expected = module.state_dict()
        missing = expected.keys() - own.keys()
        odd = sorted((own.keys() - expected.keys()) | {k for k in missing if _runs(part, k)})
        if odd:
            raise ModelError(
                f"{weights} does not fit the {spec.name} {part.key} of {config_file.name} (first odd key: {odd[0]})"
            )
        own.update({k: torch.zeros(expected[k].shape) for k in missing})  # never-run halves left out of the file
        # Cast the tensors, not the module: diffusers warns on module.to(dtype).
        module.load_state_dict({k: t.to(device=device, dtype=dtype) for k, t in own.items()}, assign=True)
        module.eval().requires_grad_(False)
    if layout is None:
        layout = TINY_CPU_LAYOUT if device.type == "cpu" else Layout()
    model = TinyModel(
        parts["unet"], parts["taesd"], parts["vae"], weights_path=weights.resolve(), layout=layout, spec=spec
    )
    model.identity()  # fingerprint now (cached per file), while the file is the one just read
    return model


def _runs(part: Part, key: str) -> bool:
    """Whether weight ``key`` of ``part`` reaches the output (is fingerprinted)."""
    return any(key.startswith(prefix) for prefix in part.fingerprinted)
