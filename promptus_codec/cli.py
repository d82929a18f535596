"""The `promptus` command line.

Each command imports its heavy modules inside its callback, so `promptus inspect` and
`promptus validate` run on the base install (construct, click, numpy) without torch.
Every PrxError becomes one line on stderr and exit status 1, in one place: PromptusGroup.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction

import click

from promptus_codec import __version__
from promptus_codec.errors import PrxError


class PromptusGroup(click.Group):
    """Turns the codec's own errors into one clear line and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PrxError as exc:
            raise click.ClickException(str(exc)) from None


def parse_fraction(value: str) -> Fraction:
    """'30', '29.97' or '30000/1001' as an exact positive Fraction."""
    try:
        rate = Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise click.BadParameter(f"{value!r} is not a number or a fraction like 30000/1001") from None
    if rate <= 0:
        raise click.BadParameter(f"{value!r} must be positive")
    return rate


@click.group(cls=PromptusGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="promptus")
def main():
    """promptus: a video codec that streams Stable Diffusion prompts instead of pixels."""


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of text.")
def inspect(file, as_json):
    """Print the header, model, scenes, keyframes and bitrate split of a .prx FILE."""
    from promptus_codec.container.inspect import format_summary, summarize

    try:
        summary = summarize(file)
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc.strerror}") from None
    click.echo(json.dumps(summary.to_json(), indent=2) if as_json else format_summary(summary))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file):
    """Check every byte of a .prx FILE: exit 0 if it is valid, 1 with the reason if not."""
    from promptus_codec.container.reader import read_prx

    try:
        prx = read_prx(file, strict=True)
    except (PrxError, OSError) as exc:
        reason = f"cannot read: {exc.strerror}" if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        click.echo(f"{file}: INVALID: {reason}")
        sys.exit(1)
    click.echo(
        f"{file}: OK: {prx.end.frame_count} frames, {prx.end.scene_count} scenes, "
        f"{prx.end.keyframe_count} keyframes, {prx.size} bytes"
    )


@main.command("import-legacy")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .prx file to write.")
@click.option("--fps", default="30", show_default=True, callback=lambda c, p, v: parse_fraction(v), help="Frame rate of the clip.")
@click.option("--model-name", default="sd-turbo", show_default=True, help="Model name written into the header.")
def import_legacy(folder, output, fps, model_name):
    """Convert the reference implementation's prompt FOLDER (frame_NNNNN.prompt + init.pth)."""
    from promptus_codec.legacy import import_legacy as run

    header = run(folder, output, fps, model_name)
    click.echo(f"wrote {output}: {header.frame_count} frames, {header.coded_width}x{header.coded_height}")


if __name__ == "__main__":
    main()
