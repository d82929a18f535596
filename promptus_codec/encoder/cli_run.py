"""`promptus encode` after parsing: load the model, progress bars, Ctrl-C, the closing summary."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import click

from promptus_codec.encoder.encode import PARTIAL_SUFFIX, EncodeOptions, Encoder, VideoInput, analyse
from promptus_codec.errors import MediaError


def check_paths(input: str, output: str, recon: str | None) -> None:
    """Refuse, before any work, a missing input, a missing output folder, or an output that is an input."""
    import os

    from promptus_codec.fileio import check_target

    if input != "-" and not os.path.exists(input):
        raise MediaError(f"no such file: {input}")
    check_target(output, [input])
    if recon:
        check_target(recon, [input, output, f"{output}{PARTIAL_SUFFIX}"], folder_ok=True)


def run_encode(
    input: str,
    output: str,
    options: EncodeOptions,
    *,
    model_name: str,
    weights: str | None,
    device: str,
    dtype: str,
    quiet: bool,
    resume: bool = False,
    recon: str | None = None,
) -> None:
    from tqdm import tqdm

    from promptus_codec.models.registry import load_model

    options.fit_config()  # refuse an unknown preset before any work
    output = Path(output)
    with ExitStack() as stack:
        video = VideoInput(input, options.fps, stack)
        model = load_model(model_name, device=device, dtype=dtype, weights=weights)
        encoder = Encoder(model, options)
        bar = stack.enter_context(tqdm(desc="analysing", unit="frame", disable=quiet, file=sys.stderr))
        analysis = analyse(video, model, options, progress=lambda n: bar.update(n - bar.n))
        bar.close()
        if analysis.shortfall():
            click.echo(f"promptus: warning: {analysis.shortfall()}", err=True)
        header, _, rate = encoder.plan(analysis)  # refuses an unreachable bitrate before writing
        bar = stack.enter_context(
            tqdm(total=len(rate.keyframes), desc="fitting", unit="keyframe", disable=quiet, file=sys.stderr)
        )

        def on_keyframe(progress, result):
            bar.n = progress.keyframes_done
            bar.set_postfix(loss=f"{result.best_loss:.4f}", psnr=f"{progress.psnr[-1]:.2f}dB", refresh=False)
            bar.update(0)

        encoder.on_keyframe = on_keyframe
        if recon:
            from promptus_codec.media import open_writer

            encoder.recon = stack.enter_context(
                open_writer(recon, header.coded_width, header.coded_height, header.frame_rate)
            )
        try:
            report = encoder.encode(video, output, analysis, resume=resume)
        except KeyboardInterrupt:
            bar.close()
            click.echo(
                f"\ninterrupted: {output}{PARTIAL_SUFFIX} keeps the finished keyframes; continue with the same "
                f"command plus --resume",
                err=True,
            )
            sys.exit(130)
        bar.close()
    target = f"target {report.target_kbps:.2f} kb/s, " if report.target_kbps else ""
    error = (
        f" ({round((report.achieved_kbps / report.target_kbps - 1) * 100, 2) + 0.0:+.2f}%)"
        if report.target_kbps
        else ""
    )
    frames = "frame" if report.frames == 1 else "frames"
    click.echo(
        f"encoded {report.frames} {frames} ({header.coded_width}x{header.coded_height}) "
        f"into {report.keyframes} keyframes "
        f"(interval {report.interval}, rank {min(report.ranks)}-{max(report.ranks)}) in {report.scenes} scene(s): "
        f"{target}achieved {report.achieved_kbps:.2f} kb/s{error}, {report.bytes} bytes; "
        f"reconstruction PSNR {report.mean_psnr_db:.2f} dB -> {output}"
    )
