"""Models by name, as ``--model`` spells them. Each backend is imported only when asked for.

"tiny"      the built-in toy model (promptus_codec/models/tiny.py), random weights in the package
"mini"      the built-in trained model (promptus_codec/models/mini.py), weights in the package
"sd-turbo"  SD 2.1 Turbo + TAESD (promptus_codec/models/sd_turbo.py), user-supplied weights
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from promptus_codec.errors import ModelError

if TYPE_CHECKING:
    import torch

    from promptus_codec.container.records import ModelIdentity
    from promptus_codec.models.base import GenerationModel

MODEL_NAMES = ("tiny", "mini", "sd-turbo")
INITIALIZER_MODELS = ("mini",)  # models that ship an amortised prompt encoder (--init amortized)


def load_model(
    name: str,
    device: "str | torch.device" = "auto",
    dtype: "str | torch.dtype" = "auto",
    weights: str | None = None,
    **kwargs,
) -> "GenerationModel":
    """Load model ``name`` on ``device`` ("auto", "cpu", "cuda") in ``dtype`` ("auto", "fp32",
    "fp16", "bf16"); see :mod:`promptus_codec.models.device` for what "auto" picks.

    ``weights`` is ``--weights``: where sd-turbo's weights are (a file, a folder or a hub id);
    the built-in models carry their own and ignore it. ``kwargs`` go to the backend's loader:
    ``path`` for tiny, ``source`` (and the like) for sd-turbo. An unknown name raises
    ModelError listing the choices.
    """
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")
    from promptus_codec.models.device import resolve

    device, dtype = resolve(device, dtype)  # torch objects; backends resolve() them again, a no-op
    if name == "tiny":
        from promptus_codec.models.tiny import load_tiny

        return load_tiny(device=device, dtype=dtype, **kwargs)
    if name == "mini":
        from promptus_codec.models.mini import load_mini

        return load_mini(device=device, dtype=dtype, **kwargs)
    from promptus_codec.models.sd_turbo import load_sd_turbo

    if weights:
        kwargs["source"] = weights
    return load_sd_turbo(device=device, dtype=dtype, **kwargs)


def load_initializer(
    name: str, generator: "ModelIdentity", device: "str | torch.device" = "cpu", file=None
) -> "tuple[torch.nn.Module, bytes]":
    """The amortised prompt encoder for ``--init amortized`` and its fingerprint.

    ``file``: one written by scripts/train_initializer.py (``--initializer``). Without it, model
    ``name``'s own: only ``mini`` ships one. Either is refused unless it was trained for the
    weights whose ModelIdentity is ``generator``.
    """
    from promptus_codec.models.mini import load_prompt_encoder, load_prompt_encoder_file

    if file is not None:
        return load_prompt_encoder_file(file, generator, device)
    if name not in INITIALIZER_MODELS:
        raise ModelError(
            f"--init amortized needs a trained prompt encoder: {name!r} ships none; pass --initializer FILE "
            "(scripts/train_initializer.py) or use mini"
        )
    return load_prompt_encoder(generator, device)
