"""`promptus encode`: options -> EncodeOptions, progress bars, Ctrl-C, the closing summary."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path

import click

from promptus_codec.container.records import LatentFormat
from promptus_codec.encoder.encode import PARTIAL_SUFFIX, EncodeOptions, Encoder, VideoInput, analyse
from promptus_codec.errors import MediaError


def run_encode(input, output, *, target_kbps, rank, interval, min_rank, model_name, weights, preset, overrides,
               perceptual, size, fit_mode, fps, refresh, scene_detector, cut_threshold, latent_format, resume, recon, device, dtype, quiet,
               verify_record=True):
    from tqdm import tqdm

    from promptus_codec.cli import load_named_model
    from promptus_codec.fileio import check_target

    if input != "-" and not os.path.exists(input):
        raise MediaError(f"no such file: {input}")
    check_target(output, [input])  # before any work: a missing folder, or the input itself
    if recon:
        check_target(recon, [input, output, f"{output}{PARTIAL_SUFFIX}"], folder_ok=True)
    if perceptual == "auto":
        from promptus_codec.metrics.perceptual import lpips_available

        perceptual = "lpips" if lpips_available("alex") else "none"
        if perceptual == "none":
            click.echo(
                "promptus: warning: LPIPS backbone weights are not in the torch hub cache; fitting with MSE only "
                "(--perceptual lpips makes this an error and says which file is missing)",
                err=True,
            )
    options = EncodeOptions(
        target_kbps=target_kbps, rank=rank, interval=interval, min_rank=min_rank, preset=preset, size=size,
        fit_mode=fit_mode, fps=fps, refresh_s=refresh,
        scene_detector=scene_detector, cut_threshold=cut_threshold,
        latent_format=LatentFormat[latent_format.upper()], perceptual=perceptual,
        fit_overrides=tuple(sorted(overrides.items())), verify_record=verify_record,
    )
    options.fit_config()  # refuse an unknown preset before any work
    output = Path(output)
    with ExitStack() as stack:
        video = VideoInput(input, fps, stack)
        model = load_named_model(model_name, weights, device, dtype)
        encoder = Encoder(model, options)
        bar = stack.enter_context(tqdm(desc="analysing", unit="frame", disable=quiet, file=sys.stderr))
        analysis = analyse(video, model, options, progress=lambda n: bar.update(n - bar.n))
        bar.close()
        if analysis.shortfall():
            click.echo(f"promptus: warning: {analysis.shortfall()}", err=True)
        header, _, rate = encoder.plan(analysis)  # refuses an unreachable bitrate before writing
        bar = stack.enter_context(tqdm(total=len(rate.keyframes), desc="fitting", unit="keyframe", disable=quiet, file=sys.stderr))

        def on_keyframe(state, result, total):
            bar.n = state.keyframes_done
            bar.set_postfix(loss=f"{result.best_loss:.4f}", psnr=f"{state.psnr[-1]:.2f}dB", refresh=False)
            bar.update(0)

        encoder.on_keyframe = on_keyframe
        if recon:
            from promptus_codec.media import open_writer

            encoder.recon = stack.enter_context(open_writer(recon, header.coded_width, header.coded_height, header.frame_rate))
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
    error = f" ({round((report.achieved_kbps / report.target_kbps - 1) * 100, 2) + 0.0:+.2f}%)" if report.target_kbps else ""
    click.echo(
        f"encoded {report.frames} frames ({header.coded_width}x{header.coded_height}) into {report.keyframes} keyframes "
        f"(interval {report.interval}, rank {min(report.ranks)}-{max(report.ranks)}) in {report.scenes} scene(s): "
        f"{target}achieved {report.achieved_kbps:.2f} kb/s{error}, {report.bytes} bytes; "
        f"reconstruction PSNR {report.mean_psnr_db:.2f} dB -> {output}"
    )
