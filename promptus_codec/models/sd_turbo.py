"""The SD-Turbo backend: SD 2.1 UNet, TAESD pixel decoder and SD VAE encoder, loaded offline.

    pixels (B, 3, H, W) --SD VAE encoder, posterior mean x 0.18215--> scene latent (B, 4, H/8, W/8)
    noisy latent + prompt (B, 77, 1024) --SD 2.1 UNet (epsilon)--> model output (B, 4, h, w)
    latent (B, 4, h, w) --TAESD decoder, [-1, 1] -> [0, 1]--> pixels (B, 3, 8h, 8w)

Where the weights come from when ``load_sd_turbo`` gets no arguments (first match wins):

    UNet + VAE  1. <checkpoints>/sd_turbo.safetensors       original Stability (ldm/sgm) layout,
                                                            the file the Promptus reference loads
                2. Hugging Face cache, stabilityai/sd-turbo at SD_TURBO_REVISION
                   (its sd_turbo.safetensors, else its diffusers unet/ and vae/ folders)
    TAESD       1. <checkpoints>/taesd/diffusion_pytorch_model.safetensors
                2. Hugging Face cache, madebyollin/taesd at TAESD_REVISION

``<checkpoints>`` is ``$PROMPTUS_CHECKPOINTS``, else ``./checkpoints``. The architectures always
come from the JSON configs shipped in ``models/configs/``, and the cache is only looked up on
disk, so loading never touches the network.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from promptus_codec.container.records import ModelIdentity
from promptus_codec.errors import ModelError, WeightsNotFoundError, require
from promptus_codec.models import fingerprint
from promptus_codec.models.base import ModelSpec
from promptus_codec.models.device import apply_layout, resolve

SD_TURBO_REPO = "stabilityai/sd-turbo"
SD_TURBO_REVISION = "b261bac6fd2cf515557d5d0707481eafa0485ec2"
TAESD_REPO = "madebyollin/taesd"
TAESD_REVISION = "614f76814bbe30edbe2e627ace1c2234c81a2c0e"

SINGLE_FILE = "sd_turbo.safetensors"  # UNet + VAE + text encoder, original Stability layout
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # one diffusers component
CONFIGS = Path(__file__).parent / "configs"

SPEC = ModelSpec(name="sd-turbo")


@dataclass(frozen=True)
class Component:
    """One network of the backend: where its config lives and which weights it fingerprints."""

    config: str  # folder under models/configs holding config.json
    class_name: str  # the diffusers class built from that config
    ldm_prefix: str  # key prefix of its tensors in the single-file checkpoint
    fingerprinted: tuple[str, ...]  # key prefixes of the weights that reach the output ("" = all)


UNET = Component("sd-turbo/unet", "UNet2DConditionModel", "model.diffusion_model.", ("",))
VAE = Component("sd-turbo/vae", "AutoencoderKL", "first_stage_model.", ("encoder.", "quant_conv."))
TAESD = Component("taesd", "AutoencoderTiny", "", ("decoder.",))


@dataclass(frozen=True)
class WeightsFile:
    """A .safetensors file holding one component, in diffusers names or the ldm layout."""

    path: Path
    ldm: bool  # True: the original Stability single file, converted on load


class SDTurbo(torch.nn.Module):
    """SD-Turbo behind the :class:`~promptus_codec.models.base.GenerationModel` interface.

    An ``nn.Module`` like the built-in models (models/tiny.py's TinyModel), so its three
    networks are its submodules: ``.eval()``, ``.requires_grad_()`` and ``state_dict()`` see them.
    """

    spec = SPEC

    def __init__(self, unet, vae, taesd, identity: ModelIdentity, sources: dict[str, Path], device, dtype):
        super().__init__()
        self.unet = unet  # UNet2DConditionModel in ``dtype``
        self.vae = vae  # AutoencoderKL in float32 (diffusers' force_upcast); only its encoder is used
        self.taesd = taesd  # AutoencoderTiny in ``dtype``; only its decoder is used
        self.sources = sources  # component ("denoiser", "encoder", "decoder") -> file it came from
        self.device = device
        self.dtype = dtype
        self._identity = identity

    def encode_image(self, pixels: "torch.Tensor", sample: "torch.Generator | None" = None) -> "torch.Tensor":
        """(B, 3, H, W) in [0, 1] -> (B, 4, H/8, W/8) float32 latent, times 0.18215.

        The posterior's *mean* by default, so a frame always gives the same latent; a sample
        drawn with the generator ``sample`` as the reference does (--preset reference).
        """
        x = pixels.to(self.device, self.vae.dtype) * 2 - 1  # (B, 3, H, W) in [-1, 1]
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean if sample is None else posterior.sample(generator=sample)
        return z * self.vae.config.scaling_factor

    def denoise(self, noisy: "torch.Tensor", prompts: "torch.Tensor", timestep: int) -> "torch.Tensor":
        """One UNet call: (B, 4, h, w), (B, 77, 1024) -> (B, 4, h, w) predicted noise."""
        noisy = noisy.to(self.device, self.dtype)
        prompts = prompts.to(self.device, self.dtype)
        return self.unet(noisy, timestep, encoder_hidden_states=prompts).sample

    def decode_latent(self, latent: "torch.Tensor") -> "torch.Tensor":
        """(B, 4, h, w) -> (B, 3, 8h, 8w): TAESD's [-1, 1] output mapped to [0, 1].

        Not clamped, so a loss on it keeps its gradient (as in the reference); clamp before
        turning it into 8-bit pixels.
        """
        return (self.taesd.decode(latent.to(self.device, self.dtype)).sample + 1) / 2

    def identity(self) -> ModelIdentity:
        """Name and SHA-256 weight fingerprints, computed (or read from the cache) at load."""
        return self._identity


def load_sd_turbo(
    source: str | os.PathLike | None = None,
    taesd: str | os.PathLike | None = None,
    device: "str | torch.device" = "auto",
    dtype: "str | torch.dtype" = "auto",
) -> SDTurbo:
    """Load SD-Turbo without the network.

    ``source``: None (search as the module docstring says), a ``.safetensors`` file in the
    original Stability layout, a folder holding ``sd_turbo.safetensors`` or diffusers ``unet/``
    and ``vae/`` folders, or a hub id ``owner/name[@revision]`` already in the Hugging Face cache.
    ``taesd``: None (search), a ``.safetensors`` file, a diffusers folder, or a cached hub id.
    ``device`` "auto" picks CUDA when present; ``dtype`` "auto" is float16 on CUDA, else float32.

    Raises WeightsNotFoundError (saying which files to put where) when weights are missing,
    ModelError when a file is unreadable or holds other weights, MissingDependencyError when
    the ``torch`` extra is not installed.
    """
    for module in ("torch", "diffusers", "safetensors", "huggingface_hub"):
        require(module, "torch")

    device, dtype = resolve(device, dtype)
    sd_turbo_files, taesd_file = find_sd_turbo(source), find_taesd(taesd)
    if sd_turbo_files is None or taesd_file is None:
        raise _not_found(source, taesd, sd_turbo_files is None, taesd_file is None)

    unet, denoiser_sha256 = _load(UNET, sd_turbo_files[UNET], device, dtype)
    vae, encoder_sha256 = _load(VAE, sd_turbo_files[VAE], device, torch.float32)
    tiny, decoder_sha256 = _load(TAESD, taesd_file, device, dtype)
    # Measured on this project's CPUs: channels_last makes TAESD 1.2x faster, the UNet 0.85x.
    tiny = apply_layout(tiny, channels_last=device.type == "cpu")
    identity = ModelIdentity(SPEC.name, denoiser_sha256, decoder_sha256, encoder_sha256)
    sources = {"denoiser": sd_turbo_files[UNET].path, "encoder": sd_turbo_files[VAE].path, "decoder": taesd_file.path}
    return SDTurbo(unet, vae, tiny, identity, sources, device, dtype)


def build_component(component: Component, device: "str | torch.device" = "meta"):
    """The component's diffusers module from its shipped config: no weights on "meta", else random."""
    diffusers = require("diffusers", "torch")
    with torch.device(device):
        return getattr(diffusers, component.class_name).from_config(shipped_config(component))


def shipped_config(component: Component) -> dict:
    """The component's config.json as shipped in the package."""
    return json.loads((CONFIGS / component.config / "config.json").read_text())


# ---------------------------------------------------------------------------
# Finding the weights
# ---------------------------------------------------------------------------

Lookup = Callable[[str], "Path | None"]  # a file name inside a repo or folder -> its path, if present
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w.-]+)?$")


def checkpoints_dir() -> Path:
    """The folder of user-supplied weights: $PROMPTUS_CHECKPOINTS, else ./checkpoints."""
    return Path(os.environ.get("PROMPTUS_CHECKPOINTS") or "checkpoints")


def find_sd_turbo(source: str | os.PathLike | None = None) -> dict[Component, WeightsFile] | None:
    """The files holding the UNet and the VAE, or None when they are not on this machine."""
    if source is None:
        return _sd_turbo_in(_folder(checkpoints_dir())) or _sd_turbo_in(_hub_cache(SD_TURBO_REPO, SD_TURBO_REVISION))
    if Path(source).is_file():
        single = WeightsFile(Path(source), ldm=True)
        return {UNET: single, VAE: single}
    lookup = _lookup(str(source), SD_TURBO_REPO, SD_TURBO_REVISION)
    return _sd_turbo_in(lookup) if lookup else None


def find_taesd(taesd: str | os.PathLike | None = None) -> WeightsFile | None:
    """The file holding TAESD, or None when it is not on this machine."""
    if taesd is not None and Path(taesd).is_file():
        return WeightsFile(Path(taesd), ldm=False)
    if taesd is None:
        lookups = [_folder(checkpoints_dir() / "taesd"), _hub_cache(TAESD_REPO, TAESD_REVISION)]
    else:
        lookups = [_lookup(str(taesd), TAESD_REPO, TAESD_REVISION)]
    for lookup in filter(None, lookups):
        if path := lookup(WEIGHTS_FILE):
            return WeightsFile(path, ldm=False)
    return None


def _sd_turbo_in(lookup: Lookup) -> dict[Component, WeightsFile] | None:
    """UNet and VAE from one place: the single file first, else diffusers unet/ and vae/."""
    if single := lookup(SINGLE_FILE):
        return {UNET: WeightsFile(single, ldm=True), VAE: WeightsFile(single, ldm=True)}
    unet, vae = lookup(f"unet/{WEIGHTS_FILE}"), lookup(f"vae/{WEIGHTS_FILE}")
    if unet and vae:
        return {UNET: WeightsFile(unet, ldm=False), VAE: WeightsFile(vae, ldm=False)}
    return None


def _lookup(spec: str, default_repo: str, default_revision: str) -> Lookup | None:
    """A folder, or a hub id owner/name[@revision] (the pinned revision for the default repo)."""
    if Path(spec).is_dir():
        return _folder(Path(spec))
    if _HUB_ID.match(spec) and not Path(spec).exists():
        repo, _, revision = spec.partition("@")
        return _hub_cache(repo, revision or (default_revision if repo == default_repo else "main"))
    return None


def _folder(root: Path) -> Lookup:
    return lambda name: root / name if (root / name).is_file() else None


def _hub_cache(repo: str, revision: str) -> Lookup:
    """Files of a repo revision in the Hugging Face cache; only the disk is consulted."""
    from huggingface_hub import try_to_load_from_cache

    def lookup(name: str) -> Path | None:
        found = try_to_load_from_cache(repo, name, revision=revision)
        return Path(found) if isinstance(found, str) else None

    return lookup


def _not_found(source, taesd, sd_turbo_missing: bool, taesd_missing: bool) -> WeightsNotFoundError:
    """One message naming each missing file, where it goes, and the command that fetches it."""
    from huggingface_hub import constants

    checkpoints = checkpoints_dir()
    lines = ["SD-Turbo weights not found."]
    if sd_turbo_missing and source is not None:
        lines.append(
            f"  source={str(source)!r} is not a .safetensors file, a folder holding {SINGLE_FILE} "
            "(or unet/ and vae/), or a hub id in the Hugging Face cache."
        )
    if taesd_missing and taesd is not None:
        lines.append(
            f"  taesd={str(taesd)!r} is not a .safetensors file, a folder holding {WEIGHTS_FILE}, "
            "or a hub id in the Hugging Face cache."
        )
    put, run = [], []
    if sd_turbo_missing:
        put.append(f"  {checkpoints / SINGLE_FILE}  (SD-Turbo, the single file in the original Stability layout)")
        run.append(
            f"  hf download {SD_TURBO_REPO} {SINGLE_FILE} --revision {SD_TURBO_REVISION} --local-dir {checkpoints}"
        )
    if taesd_missing:
        put.append(f"  {checkpoints / 'taesd' / WEIGHTS_FILE}  (TAESD, diffusers layout)")
        run.append(
            f"  hf download {TAESD_REPO} {WEIGHTS_FILE} --revision {TAESD_REVISION} --local-dir {checkpoints / 'taesd'}"
        )
    lines += [
        "Put these files in place:",
        *put,
        "or fetch them on a machine with internet access, then copy them here "
        "(huggingface_hub < 0.34: huggingface-cli download):",
        *run,
        f"Searched {checkpoints.resolve()} (set PROMPTUS_CHECKPOINTS to change it) "
        f"and the Hugging Face cache {constants.HF_HUB_CACHE}.",
    ]
    return WeightsNotFoundError("\n".join(lines))


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _load(component: Component, weights: WeightsFile, device, dtype):
    """Build the component, fill it with its weights, fingerprint them; -> (module, sha256)."""
    state = _read(component, weights)
    model = build_component(component)
    _check_keys(component, weights.path, model.state_dict(), state)
    model.load_state_dict(state, assign=True)
    covered = {name: t for name, t in state.items() if name.startswith(component.fingerprinted)}
    digest = fingerprint.cached_digest(
        weights.path, component.config, lambda: fingerprint.fingerprint_state_dict(covered)
    )
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False), digest


def _read(component: Component, weights: WeightsFile) -> dict[str, "torch.Tensor"]:
    """The component's tensors as stored (before any cast), under diffusers names."""
    prefix = component.ldm_prefix if weights.ldm else ""
    state = fingerprint.read_safetensors(weights.path, prefix, remedy="; download it again")
    if not weights.ldm:
        return state
    if not state:
        raise ModelError(
            f"{weights.path} has no '{prefix}*' tensors: it is not an SD-Turbo checkpoint "
            "in the original Stability layout"
        )
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    convert = convert_ldm_unet_checkpoint if component is UNET else convert_ldm_vae_checkpoint
    return convert(state, shipped_config(component))


def _check_keys(component: Component, path: Path, expected: dict, state: dict) -> None:
    """Refuse, in one line, a file whose tensors do not fit the component."""
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        first = (missing + unexpected + reshaped)[0]
        raise ModelError(
            f"{path} does not hold SD-Turbo's {component.class_name} weights: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape (first: {first})"
        )
