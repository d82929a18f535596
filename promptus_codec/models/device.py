"""Where a backend runs: device, dtype and CPU memory-layout choices.

    device "auto": CUDA when present, else CPU      dtype "auto": float16 on CUDA, float32 on CPU

Every backend loader resolves its ``device`` and ``dtype`` arguments here, so ``--device`` and
``--dtype`` mean the same thing for every model. :func:`resolve` is idempotent: it also
accepts a ``torch.device`` / ``torch.dtype`` it returned before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from promptus_codec.errors import ModelError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {  # accepted spellings -> torch dtype name
    "fp32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}


def resolve_device(device: "str | torch.device" = "auto") -> "torch.device":
    """ "auto" -> CUDA when available, else CPU. "cuda:1" style indices are kept."""
    import torch

    if isinstance(device, torch.device):
        spec = device
    elif device == "auto":
        spec = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            spec = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ModelError(f"device={device!r}: expected one of {', '.join(DEVICES)}") from exc
    if spec.type not in ("cpu", "cuda"):
        raise ModelError(f"device={str(spec)!r}: expected one of {', '.join(DEVICES)}")
    if spec.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device='cuda' but PyTorch sees no CUDA GPU: use --device cpu (or auto)")
    return spec


def resolve_dtype(dtype: "str | torch.dtype" = "auto", device: "str | torch.device" = "cpu") -> "torch.dtype":
    """ "auto" -> float16 on CUDA (half the memory, tensor cores), float32 on CPU (fp16 CPU
    kernels are slow or missing). Explicit choices are honoured on either device."""
    import torch

    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ModelError(f"dtype={dtype}: expected auto, fp32, fp16 or bf16")
        return dtype
    if dtype == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"dtype={dtype!r}: expected auto, fp32, fp16 or bf16")
    return getattr(torch, DTYPES[dtype])


def resolve(
    device: "str | torch.device" = "auto", dtype: "str | torch.dtype" = "auto"
) -> tuple["torch.device", "torch.dtype"]:
    """Both choices at once: the device first, since the dtype default depends on it."""
    spec = resolve_device(device)
    return spec, resolve_dtype(dtype, spec)


@dataclass(frozen=True)
class Layout:
    """Memory-format choices per network, made per device (measured, not assumed).

    channels_last helps a conv-only net on CPU (oneDNN's NHWC kernels) and can hurt a net
    whose attention layers convert back and forth. Measured on CPU, float32:
      - SD-Turbo's TAESD decoder: 1.2x faster with channels_last; SD 2.1 UNet: 0.85x (slower);
      - the tiny model's networks: see TINY_CPU_LAYOUT in promptus_codec.models.tiny.
    """

    decoder_channels_last: bool = False  # the latent -> pixels net
    denoiser_channels_last: bool = False  # the UNet; kept False unless measured faster


def apply_layout(module: "torch.nn.Module", channels_last: bool) -> "torch.nn.Module":
    """Switch a module's 4-D weights to channels_last when asked; a no-op otherwise."""
    import torch

    return module.to(memory_format=torch.channels_last) if channels_last else module
