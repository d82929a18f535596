"""The `promptus` command line.

Each command imports its heavy modules inside its callback, so `promptus inspect` and
`promptus validate` run on the base install (construct, click, numpy) without torch.
Every PrxError (and OSError) becomes one line on stderr and exit status 1, in one place: PromptusGroup.
"""

from __future__ import annotations

import json
import sys

import click

from promptus_codec import __version__
from promptus_codec.cli_options import (
    BITRATE,
    FRACTION,
    SIZE,
    device_option,
    dtype_option,
    model_option,
    quiet_option,
    weights_option,
)
from promptus_codec.container.records import LatentFormat
from promptus_codec.decoder.driver import DEFAULT_MAX_BATCH
from promptus_codec.decoder.runtimes import BACKENDS
from promptus_codec.decoder.verify import VERIFY_MIN_PSNR_DB
from promptus_codec.encoder.options import (
    DEFAULT_THREADS,
    FIT_MODES,
    INITS,
    PERCEPTUAL_LOSSES,
    PRESETS,
    EncodeOptions,
    FitConfig,
)
from promptus_codec.encoder.scenes import DEFAULT_THRESHOLDS, DETECTORS
from promptus_codec.errors import PrxError


class PromptusGroup(click.Group):
    """Turns the codec's own errors into one clear line and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PrxError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:
            raise
        except OSError as exc:  # a disk or permission problem: one line that names the file, not a traceback
            where = "".join(f": {name}" for name in (exc.filename, exc.filename2) if name)
            raise click.ClickException(f"{exc.strerror or exc}{where}") from None


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
@click.option("--fps", type=FRACTION, default="30", show_default=True, help="Frame rate of the clip.")
@click.option("--model-name", default="sd-turbo", show_default=True, help="Model name written into the header.")
def import_legacy(folder, output, fps, model_name):
    """Convert the reference implementation's prompt FOLDER (frame_NNNNN.prompt + init.pth)."""
    from promptus_codec.legacy import import_legacy as run

    header = run(folder, output, fps, model_name)
    click.echo(f"wrote {output}: {header.frame_count} frames, {header.coded_width}x{header.coded_height}")


@main.command()
@click.argument("input", type=str)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .prx file to write.")
@click.option(
    "--bitrate",
    type=BITRATE,
    default=None,
    help="Target total bitrate, e.g. 225k. Rate control picks rank and interval.",
)
@click.option("--rank", type=int, default=None, help="Force the rank of every keyframe.")
@click.option("--interval", type=int, default=None, help="Force the keyframe interval K (frames).")
@click.option(
    "--min-rank",
    type=int,
    default=EncodeOptions.min_rank,
    help="Rate control keeps at least this rank while shortening K. Default: the model's own, recorded in the "
    "stream's settings.",
)
@click.option(
    "--max-interval",
    type=click.IntRange(min=0),
    default=EncodeOptions.max_interval,
    help="Rate control stops shortening K here, below --min-rank, once the rank reaches the model's least "
    "trained rank (0: no limit). Default: the model's own (mini: its longest trained interval), recorded in the "
    "stream's settings.",
)
@model_option("mini")
@weights_option
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default=EncodeOptions.preset,
    show_default=True,
    help="Fitting effort.",
)
@click.option(
    "--iterations",
    type=int,
    default=None,
    help="Override the preset: iterations per keyframe (fast: sweeps over its interval, a step per frame).",
)
@click.option(
    "--first-iterations", type=int, default=None, help="Override the preset: iterations for a scene's first keyframe."
)
@click.option("--lr", type=float, default=None, help="Override the preset: Adam learning rate.")
@click.option(
    "--alpha",
    type=float,
    default=None,
    help=f"Weight of MSE in the loss; 1 - alpha goes to LPIPS (default {FitConfig.alpha}).",
)
@click.option("--beta", type=float, default=None, help="Temporal smoothing weight (paper eq. 5); 0 = off.")
@click.option(
    "--l1-weight",
    type=click.FloatRange(min=0),
    default=None,
    help="Override the preset: weight of the mean |c| term that pulls prompts towards 0 (0 = off).",
)
@click.option(
    "--target-psnr",
    type=float,
    default=None,
    help="Stop fitting a keyframe once every frame of its interval reaches this PSNR (dB, RGB, before 8-bit "
    "rounding), instead of running the preset's whole budget.",
)
@click.option(
    "--no-warm-start",
    is_flag=True,
    help="Start each keyframe from random factors, not the previous keyframe's (--init random).",
)
@click.option(
    "--init",
    type=click.Choice(INITS),
    default=FitConfig.init,
    show_default=True,
    help="Where fitting starts. A scene's first keyframe: the model's prompt encoder (amortized; mini ships one) or "
    "random factors (warm, random); later keyframes: the previous keyframe's factors (amortized, warm) or random. "
    "auto: amortized with --initializer, else warm (mini's prompt encoder is not yet a better start than random).",
)
@click.option(
    "--initializer",
    "initializer_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A prompt encoder written by scripts/train_initializer.py for these weights: fitting starts from its "
    "factors (implies --init amortized).",
)
@click.option(
    "--perceptual",
    type=click.Choice(PERCEPTUAL_LOSSES),
    default="auto",
    show_default=True,
    help="lpips (needs AlexNet weights in the torch hub cache), none, or auto: lpips when its weights are present.",
)
@click.option(
    "--size", type=SIZE, default=None, help="Coded size WxH, multiples of 64 (default: short side 512, aspect kept)."
)
@click.option("--fit", "fit_mode", type=click.Choice(FIT_MODES), default=EncodeOptions.fit_mode, show_default=True)
@click.option("--fps", type=FRACTION, default=None, help="Override the source frame rate, e.g. 30000/1001.")
@click.option(
    "--refresh",
    type=float,
    default=EncodeOptions.refresh_s,
    show_default=True,
    help="Start a new scene at least every N seconds (0 = only at cuts).",
)
@click.option(
    "--scene-detector",
    type=click.Choice(DETECTORS),
    default=EncodeOptions.scene_detector,
    show_default=True,
    help="Cut detection: PySceneDetect's content or adaptive detector on pixels, or the paper's latent change (A.1).",
)
@click.option(
    "--cut-threshold",
    type=float,
    default=None,
    help="The scene detector's threshold. Defaults: "
    + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_THRESHOLDS.items())
    + ".",
)
@click.option(
    "--latent-format",
    type=click.Choice([f.name.lower() for f in LatentFormat]),
    default=EncodeOptions.latent_format.name.lower(),
    show_default=True,
    help="Storage of the scene latents.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted encode from OUTPUT.work (its plan and finished chunks); refuses another "
    "input, model or settings.",
)
@click.option(
    "--recon", default=None, help="Also write the decoded stream, as `promptus decode` would (y4m, mp4 or PNG folder)."
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Fit this many scenes at once on a local Ray that the encode starts and stops (1 = in this process, "
    "no Ray). Same bytes whatever the number. Needs pip install 'promptus-codec[distributed]'.",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    default=None,
    help="Fit on this running Ray cluster instead (also RAY_ADDRESS); --workers then caps the chunks in flight.",
)
@click.option(
    "--max-tries",
    type=int,
    default=3,
    show_default=True,
    help="Fit a failed chunk (an error, or a worker that died) at most this many times in all.",
)
@click.option(
    "--threads",
    type=int,
    default=DEFAULT_THREADS,
    show_default=True,
    help="torch threads per chunk. Part of the settings: the thread count changes float results, "
    "so every worker and a resume use the plan's.",
)
@click.option(
    "--verify-record/--no-verify-record",
    default=EncodeOptions.verify_record,
    show_default=True,
    help="After each keyframe, a ReconThumbnail record (16x16 luma of the encoder's reconstruction, 274 bytes) "
    "that decode --verify compares against.",
)
@device_option
@dtype_option
@quiet_option
def encode(
    input,
    output,
    bitrate,
    rank,
    interval,
    min_rank,
    max_interval,
    model,
    weights,
    preset,
    iterations,
    first_iterations,
    lr,
    alpha,
    beta,
    l1_weight,
    target_psnr,
    no_warm_start,
    init,
    initializer_file,
    perceptual,
    size,
    fit_mode,
    fps,
    refresh,
    scene_detector,
    cut_threshold,
    latent_format,
    resume,
    recon,
    workers,
    ray_address,
    max_tries,
    threads,
    verify_record,
    device,
    dtype,
    quiet,
):
    """Encode a video (mp4/mkv/mov/webm, .y4m or '-' for y4m on stdin, or a folder of PNG/JPEG frames)."""
    from promptus_codec.encoder.cli_run import check_paths, run_encode
    from promptus_codec.metrics.perceptual import resolve_perceptual

    check_paths(input, output, recon)  # before any work: a missing input or folder, or the input itself
    if initializer_file is not None and (init not in ("auto", "amortized") or no_warm_start):
        raise click.UsageError("--initializer is a start for --init amortized; drop --init or --no-warm-start")
    overrides = {
        "iterations": iterations,
        "first_iterations": first_iterations,
        "lr": lr,
        "alpha": alpha,
        "temporal_beta": beta,
        "l1_weight": l1_weight,
        "target_psnr": target_psnr,
        "init": "random" if no_warm_start else init,
    }
    options = EncodeOptions(
        target_kbps=bitrate,
        rank=rank,
        interval=interval,
        min_rank=min_rank,
        max_interval=max_interval,
        preset=preset,
        size=size,
        fit_mode=fit_mode,
        fps=fps,
        refresh_s=refresh,
        scene_detector=scene_detector,
        cut_threshold=cut_threshold,
        latent_format=LatentFormat[latent_format.upper()],
        perceptual=resolve_perceptual(
            perceptual, preset, warn=lambda message: click.echo(f"promptus: warning: {message}", err=True)
        ),
        fit_overrides=tuple(sorted((k, v) for k, v in overrides.items() if v is not None and v != "auto")),
        initializer_file=initializer_file,
        verify_record=verify_record,
    )
    run_encode(
        input,
        output,
        options,
        model_name=model,
        weights=weights,
        device=device,
        dtype=dtype,
        quiet=quiet,
        resume=resume,
        recon=recon,
        workers=workers,
        ray_address=ray_address,
        max_tries=max_tries,
        threads=threads,
    )


@main.command()
@click.argument("input", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--output", required=True, help="OUT.y4m, '-' (y4m on stdout), OUT.mp4, or a folder for PNG frames."
)
@model_option(None, " Default: the stream's own model.")
@weights_option
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True)
@click.option(
    "--chroma", type=click.Choice(["420", "444"]), default="420", show_default=True, help="y4m/mp4 chroma subsampling."
)
@click.option("--crf", type=int, default=18, show_default=True, help="mp4 (H.264) quality: lower is better.")
@click.option("--restore-size", is_flag=True, help="Scale back to the source geometry stored in the header.")
@click.option("--batch", type=int, default=DEFAULT_MAX_BATCH, show_default=True, help="Frames per generation call.")
@click.option(
    "--verify",
    is_flag=True,
    help="Compare each keyframe with the encoder's ReconThumbnail record and report the PSNR; exit 3 (frames still "
    "written) when one is below --verify-min-psnr.",
)
@click.option(
    "--verify-min-psnr", type=float, default=None, help=f"Threshold of --verify in dB (default {VERIFY_MIN_PSNR_DB:g})."
)
@device_option
@dtype_option
@quiet_option
def decode(
    input,
    output,
    model,
    weights,
    backend,
    chroma,
    crf,
    restore_size,
    batch,
    verify,
    verify_min_psnr,
    device,
    dtype,
    quiet,
):
    """Decode a .prx stream to y4m, mp4 or PNG frames."""
    from promptus_codec.decoder.cli_run import run_decode

    run_decode(
        input,
        output,
        model_name=model,
        weights=weights,
        backend=backend,
        chroma=chroma,
        crf=crf,
        restore_size=restore_size,
        batch=batch,
        device=device,
        dtype=dtype,
        quiet=quiet,
        verify=verify or verify_min_psnr is not None,
        verify_min_psnr=verify_min_psnr,
    )


def _register_tool_commands() -> None:
    """Command groups that live beside the code they drive (each imports only click at load)."""
    from promptus_codec.engine_cli import engine
    from promptus_codec.eval_cli import compare_command, eval_command

    for command in (engine, eval_command, compare_command):
        main.add_command(command)


_register_tool_commands()

if __name__ == "__main__":
    main()
