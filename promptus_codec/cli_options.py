"""What the `promptus` commands share: value types and the model/device options.

Only click is imported here. Each command module (cli.py, engine_cli.py, eval_cli.py) takes
its option types from this one place, so "225k" or "512x512" means the same everywhere.
"""

from __future__ import annotations

from fractions import Fraction

import click


class SizeType(click.ParamType):
    """'512x512' as (width, height)."""

    name = "WxH"

    def convert(self, value, param, ctx) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            width, height = (int(v) for v in str(value).lower().split("x"))
        except ValueError:
            self.fail(f"{value!r} is not a size like 512x512", param, ctx)
        return width, height


class BitrateType(click.ParamType):
    """'225k', '1.5M' or '225000' (bits per second) as kb/s."""

    name = "BITRATE"

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip().lower().removesuffix("bps").removesuffix("b/s")
        scale = {"k": 1.0, "m": 1000.0}.get(text[-1:], 0.001)
        try:
            kbps = float(text.rstrip("km")) * scale
        except ValueError:
            self.fail(f"{value!r} is not a bitrate like 225k, 1.5M or 225000", param, ctx)
        if not kbps > 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return kbps


class FractionType(click.ParamType):
    """'30', '29.97' or '30000/1001' as an exact positive Fraction."""

    name = "RATE"

    def convert(self, value, param, ctx) -> Fraction:
        if isinstance(value, Fraction):
            return value
        try:
            rate = Fraction(str(value))
        except (ValueError, ZeroDivisionError):
            self.fail(f"{value!r} is not a number or a fraction like 30000/1001", param, ctx)
        if rate <= 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return rate


SIZE = SizeType()
BITRATE = BitrateType()
FRACTION = FractionType()

MODEL_HELP = "tiny (built in, random weights), mini (built in, a small model trained here; not SD-Turbo) or sd-turbo."


def model_option(default: str | None, extra_help: str = ""):
    return click.option("--model", default=default, show_default=default is not None, help=MODEL_HELP + extra_help)


weights_option = click.option(
    "--weights",
    default=None,
    help="sd-turbo weights: a .safetensors file, a diffusers folder or a hub id (default: search).",
)
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
dtype_option = click.option(
    "--dtype", default="auto", show_default=True, help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16."
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
