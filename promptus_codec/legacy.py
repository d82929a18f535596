"""Import the reference implementation's prompt folder into a .prx file, losslessly.

The reference writes one ``frame_NNNNN.prompt`` per keyframe (a ``torch.save`` dict of
uint8 ``U`` (m, r), ``V`` (r, n) and float32 scales and zero points) and ``init.pth``, the
first frame's SD-VAE latent (1, 4, h, w). Its dequantised value is
``scale * (q - zero_point)``. Shifting both q and the zero point by -128 maps uint8 onto
int8 without changing ``q - zero_point``, so every dequantised value is bit-identical.

Loading uses ``torch.load(..., weights_only=True)``: no pickle code ever runs.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path

import numpy as np

from promptus_codec.container.records import (
    FileHeader,
    GenerationConstants,
    KeyframeRecord,
    LatentFormat,
    ModelIdentity,
    QuantScheme,
    SceneRecord,
    SourceGeometry,
    UNKNOWN_DIGEST,
)
from promptus_codec.container.writer import write_prx
from promptus_codec.errors import MediaError, require

PROMPT_FILE = re.compile(r"frame_(\d+)\.prompt")
# The reference's constants: seed 88, noisy = 0.05 z_prev + 0.95 N0, SD-Turbo at t = 999.
REFERENCE_CONSTANTS = GenerationConstants()
VAE_SCALE_FACTOR = 8  # SD latents are 1/8 of the picture along each side


def _load(path: Path):
    torch = require("torch", "torch")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many types for a damaged or hostile file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MediaError(f"cannot read {path} as a reference tensor file (weights-only load): {reason}") from None


def _scalar(value, path: Path, key: str) -> float:
    array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    if array.size != 1 or array.dtype != np.float32:
        raise MediaError(f"{path}: {key} must be one float32 value, got {array.dtype} {array.shape}")
    return float(array.reshape(()))


def _codes(value, path: Path, key: str, shape: tuple[int | None, int | None]) -> np.ndarray:
    """uint8 codes as int8 (q - 128)."""
    array = value.detach().cpu().numpy() if hasattr(value, "detach") else None
    if array is None or array.dtype != np.uint8 or array.ndim != 2:
        raise MediaError(f"{path}: {key} must be a 2-D uint8 tensor")
    if any(want is not None and got != want for got, want in zip(array.shape, shape)):
        raise MediaError(f"{path}: {key} has shape {array.shape}, expected {shape}")
    return (array.astype(np.int16) - 128).astype(np.int8)


def read_legacy_keyframe(path: Path, frame_index: int, prompt_shape: tuple[int, int] | None) -> KeyframeRecord:
    """One reference ``.prompt`` file as an int8 keyframe record."""
    d = _load(path)
    missing = {"U", "V", "U_scale", "U_zero_point", "V_scale", "V_zero_point"} - set(d if isinstance(d, dict) else ())
    if missing:
        raise MediaError(f"{path}: not a reference prompt file (missing {', '.join(sorted(missing))})")
    m, n = prompt_shape or (None, None)
    u = _codes(d["U"], path, "U", (m, None))
    v = _codes(d["V"], path, "V", (u.shape[1], n))
    return KeyframeRecord(
        frame_index=frame_index,
        rank=u.shape[1],
        quant_scheme=QuantScheme.AFFINE_INT8,
        u_scale=_scalar(d["U_scale"], path, "U_scale"),
        u_zero_point=_scalar(d["U_zero_point"], path, "U_zero_point") - 128,
        v_scale=_scalar(d["V_scale"], path, "V_scale"),
        v_zero_point=_scalar(d["V_zero_point"], path, "V_zero_point") - 128,
        u=u,
        v=v,
    )


def import_legacy(
    folder: str | os.PathLike, output: str | os.PathLike, fps: Fraction, model_name: str = "sd-turbo"
) -> FileHeader:
    """Convert a reference prompt folder to ``output`` (written atomically); returns the header."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MediaError(f"no such folder: {folder}")
    prompts = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := PROMPT_FILE.fullmatch(p.name)))
    if not prompts:
        raise MediaError(f"{folder} holds no frame_NNNNN.prompt files")
    init_path = folder / "init.pth"
    if not init_path.is_file():
        raise MediaError(f"{folder} has no init.pth (the first frame's latent)")
    init = _load(init_path)
    if not hasattr(init, "detach") or init.dim() != 4 or init.shape[0] != 1:
        raise MediaError(f"{init_path}: expected a (1, C, h, w) latent tensor")
    latent = init.detach().cpu().float().numpy()[0]  # (C, h, w)
    if prompts[0][0] != 0:
        raise MediaError(f"{folder}: the first prompt file must be frame_00000.prompt")
    first = read_legacy_keyframe(prompts[0][1], 0, None)
    m, n = first.u.shape[0], first.v.shape[1]
    keyframes = [first] + [read_legacy_keyframe(path, f, (m, n)) for f, path in prompts[1:]]
    c, h, w = latent.shape
    width, height = w * VAE_SCALE_FACTOR, h * VAE_SCALE_FACTOR
    header = FileHeader(
        coded_width=width,
        coded_height=height,
        geometry=SourceGeometry.identity(width, height),
        frame_rate=Fraction(fps),
        frame_count=keyframes[-1].frame_index + 1,
        prompt_tokens=m,
        prompt_dim=n,
        latent_channels=c,
        latent_height=h,
        latent_width=w,
        generation=REFERENCE_CONSTANTS,
        model=ModelIdentity(model_name, UNKNOWN_DIGEST, UNKNOWN_DIGEST, UNKNOWN_DIGEST),
    )
    scene = SceneRecord(0, LatentFormat.FLOAT32, 1.0, latent.astype(np.float32))
    write_prx(output, header, [scene, *keyframes])
    return header
