"""`promptus eval` and `promptus compare`: how good decoded video is, and how Promptus fares
against classic codecs at the same bitrate.

Only click is imported here; the metrics code (torch, lpips, PyAV, matplotlib) is imported
inside the callbacks. The main group registers both commands::

    main.add_command(eval_command)
    main.add_command(compare_command)
"""

from __future__ import annotations

import functools

import click

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
from promptus_codec.encoder.options import DEFAULT_THREADS, FIT_MODES, PERCEPTUAL_LOSSES, PRESETS, EncodeOptions


def _one_line_errors(callback):
    """The codec's own errors as one line and exit status 1, also outside PromptusGroup."""

    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        from promptus_codec.errors import PrxError

        try:
            return callback(*args, **kwargs)
        except PrxError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


fit_choice = click.Choice(FIT_MODES)


@click.command("eval")
@click.argument("source", type=str)
@click.argument("decoded", type=str)
@click.option(
    "--fit",
    type=fit_choice,
    default=None,
    help="How the source was fitted onto the coded frame (the encoder's --fit); needed only when "
    "SOURCE and DECODED have different aspect ratios.",
)
@click.option(
    "--frame-tolerance",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Score the common frames when the counts differ by at most this many; refuse otherwise.",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write per-frame scores as JSON."
)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Write per-frame scores as CSV.")
@device_option
@_one_line_errors
def eval_command(source, decoded, fit, frame_tolerance, json_path, csv_path, device):
    """Score DECODED against SOURCE: PSNR (Y and RGB), MS-SSIM and LPIPS (AlexNet, VGG).

    Both may be any video FFmpeg reads, a .y4m, or a folder of PNG frames. A source of
    another size is fitted onto the decoded size as the encoder fits it. LPIPS needs the
    torchvision backbone weights in the torch hub cache; without them it is "n/a".
    """
    from promptus_codec.metrics.evaluate import evaluate_files, format_table, write_frames_csv, write_json
    from promptus_codec.metrics.quality import Scorer
    from promptus_codec.models.device import resolve_device

    result = evaluate_files(source, decoded, Scorer(resolve_device(device)), fit, frame_tolerance)
    click.echo(format_table(result))
    if json_path:
        write_json(json_path, {"source": source, "decoded": decoded, **result.to_json()})
    if csv_path:
        write_frames_csv(csv_path, result)


@click.command("compare")
@click.argument("source", type=str)
@click.option("--bitrates", required=True, help="Promptus target bitrates, comma-separated, e.g. 100k,225k,550k.")
@model_option("mini")
@weights_option
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default=EncodeOptions.preset,
    show_default=True,
    help="Promptus fitting effort.",
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
@click.option(
    "--perceptual",
    type=click.Choice(PERCEPTUAL_LOSSES),
    default="auto",
    show_default=True,
    help="Promptus fitting loss: lpips, none, or auto (lpips when its AlexNet weights are here, else none).",
)
@click.option("--size", type=SIZE, default=None, help="Coded size WxH, multiples of 64 (default: the encoder's).")
@click.option("--fit", "fit_mode", type=fit_choice, default=EncodeOptions.fit_mode, show_default=True)
@click.option("--fps", type=FRACTION, default=None, help="Override the source frame rate, e.g. 30000/1001.")
@click.option(
    "--baselines", default="x265,vvenc", show_default=True, help="Classic codecs, comma-separated: x265, vvenc, svtav1."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=DEFAULT_THREADS,
    show_default=True,
    help="torch threads of each Promptus encode; as with `promptus encode --threads`, they change its bytes.",
)
@click.option("-o", "--outdir", default=None, help="Output folder (default: compare-<source name>).")
@click.option("--keep-streams", is_flag=True, help="Also copy every coded stream into OUTDIR/streams/.")
@device_option
@dtype_option
@quiet_option
@_one_line_errors
def compare_command(
    source,
    bitrates,
    model,
    weights,
    preset,
    iterations,
    first_iterations,
    perceptual,
    size,
    fit_mode,
    fps,
    baselines,
    threads,
    outdir,
    keep_streams,
    device,
    dtype,
    quiet,
):
    """Promptus against H.265 (x265) and H.266 (VVenC) on SOURCE, at the bitrates Promptus achieves.

    For each target: encode and decode with Promptus, encode the same coded frames with each
    baseline at the bitrate Promptus really reached (two-pass), score all of them against
    the same frames. Writes compare.json, compare.csv, rd.png (rate-distortion) and
    strip_<target>k.png (middle frame side by side) into OUTDIR, and prints BD-rates.
    """
    import time
    from pathlib import Path

    from promptus_codec.metrics.compare import CompareOptions, format_rows, run_compare

    targets = tuple(BITRATE.convert(b, None, None) for b in _split(bitrates))
    if not targets:
        raise click.BadParameter("give at least one bitrate, e.g. 100k,225k", param_hint="--bitrates")
    overrides = {"iterations": iterations, "first_iterations": first_iterations}
    options = CompareOptions(
        bitrates_kbps=targets,
        model=model,
        weights=weights,
        preset=preset,
        fit_overrides=tuple(sorted((k, v) for k, v in overrides.items() if v is not None)),
        perceptual=perceptual,
        size=size,
        fit_mode=fit_mode,
        fps=fps,
        baselines=tuple(_split(baselines)),
        device=device,
        dtype=dtype,
        keep_streams=keep_streams,
        threads=threads,
    )
    outdir = outdir or f"compare-{Path(source).stem}"
    log = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))
    started = time.perf_counter()
    result = run_compare(source, outdir, options, log=log)
    click.echo(format_rows(result.rows))
    for line in result.document["lpips_missing"].values():
        click.echo(line)
    for codec, metrics in result.bd_rates.items():
        parts = ", ".join(f"{metric} {bd}" for metric, bd in metrics.items())
        click.echo(f"BD-rate of promptus against {codec}: {parts}")
    click.echo(f"wrote {', '.join(str(p) for p in result.files)} in {time.perf_counter() - started:.0f} s")
