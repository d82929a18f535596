"""`promptus encode` after parsing: load the model, plan or resume, schedule, progress bar, Ctrl-C, summary."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import click

from promptus_codec.encoder.chunks import WORK_SUFFIX
from promptus_codec.encoder.encode import EncodeOptions, Encoder, VideoInput, analyse
from promptus_codec.errors import MediaError


def check_paths(input: str, output: str, recon: str | None) -> None:
    """Refuse, before any work, a missing input, a missing output folder, or an output that is an input."""
    import os

    from promptus_codec.fileio import check_target

    if input != "-" and not os.path.exists(input):
        raise MediaError(f"no such file: {input}")
    check_target(output, [input])
    if recon:
        check_target(recon, [input, output, f"{output}{WORK_SUFFIX}"], folder_ok=True)


def make_scheduler(workers: int, ray_address: str | None, max_tries: int, model_ref, gpu: bool, progress):
    """Serial in this process for one worker and no cluster; Ray otherwise (which must be installed)."""
    from promptus_codec.encoder.distributed import RayScheduler, SerialScheduler, require_ray

    if workers < 1:
        raise click.BadParameter(f"{workers} is below 1", param_hint="'--workers'")
    if max_tries < 1:
        raise click.BadParameter(f"{max_tries} is below 1", param_hint="'--max-tries'")
    if workers == 1 and not ray_address:
        return SerialScheduler(max_tries, progress)
    require_ray(f"--workers {workers}" if not ray_address else "--ray-address")
    return RayScheduler(model_ref, workers, ray_address, max_tries, gpu, progress)


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
    workers: int = 1,
    ray_address: str | None = None,
    max_tries: int = 3,
    threads: int = 1,
) -> None:
    from tqdm import tqdm

    from promptus_codec.encoder.distributed import ModelRef, Progress
    from promptus_codec.models.registry import load_model

    options.fit_config()  # refuse an unknown preset before any work
    if threads < 1:
        raise click.BadParameter(f"{threads} is below 1", param_hint="'--threads'")
    output = Path(output)
    progress = Progress()
    model_ref = ModelRef(model_name, weights, device, dtype)
    scheduler = make_scheduler(workers, ray_address, max_tries, model_ref, False, progress)  # before any work
    with ExitStack() as stack:
        video = VideoInput(input, options.fps, stack)
        model = load_model(model_name, device=device, dtype=dtype, weights=weights)
        if hasattr(scheduler, "gpu"):
            scheduler.gpu = model.device.type == "cuda"  # one GPU per task where the driver found CUDA
        encoder = Encoder(model, options, threads=threads)
        analysis = None
        if not resume:
            bar = stack.enter_context(tqdm(desc="analysing", unit="frame", disable=quiet, file=sys.stderr))
            analysis = analyse(video, model, options, progress=lambda n: bar.update(n - bar.n))
            bar.close()
            if analysis.shortfall():
                click.echo(f"promptus: warning: {analysis.shortfall()}", err=True)
            header, _, _ = encoder.plan(analysis)  # refuses an unreachable bitrate before writing
        else:
            header = None
        state = {}

        def on_plan(plan, done):
            state["plan"], state["done"] = plan, done
            before = sum(c.frame_count for c in plan.chunks if c.index in done)
            bar = stack.enter_context(
                tqdm(
                    total=plan.frame_count,
                    initial=before,
                    desc="fitting",
                    unit="frame",
                    disable=quiet,
                    file=sys.stderr,
                )
            )
            chunks = [len(done)]

            def show() -> None:
                bar.set_postfix_str(f"chunks {chunks[0]}/{len(plan.chunks)}", refresh=False)

            def on_frames(total: int) -> None:
                bar.n = before + total
                show()
                bar.refresh()

            def on_chunk(run) -> None:
                chunks[0] += 1
                show()

            show()
            progress.on_frames, progress.on_chunk = on_frames, on_chunk
            state["bar"] = bar
            if recon:
                from promptus_codec.media import open_writer

                encoder.recon = stack.enter_context(
                    open_writer(recon, plan.header.coded_width, plan.header.coded_height, plan.header.frame_rate)
                )

        try:
            report = encoder.encode(video, output, analysis, resume=resume, scheduler=scheduler, on_plan=on_plan)
        except KeyboardInterrupt:
            if "bar" in state:
                state["bar"].close()
            kept = len(state.get("done", ())) + len(progress.runs)
            click.echo(
                f"\ninterrupted: {output}{WORK_SUFFIX} keeps the plan and {kept} finished chunk(s); "
                f"continue with the same command plus --resume",
                err=True,
            )
            sys.exit(130)
        if "bar" in state:
            state["bar"].close()
        header = header or state["plan"].header
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
        f"reconstruction PSNR-RGB {report.mean_psnr_db:.2f} dB -> {output}"
    )
    if not quiet:
        click.echo(workers_summary(scheduler, progress, len(state.get("done", ())), len(state["plan"].chunks)))


def workers_summary(scheduler, progress, resumed: int, chunks: int) -> str:
    """One line: how the chunks were fitted, and each worker's share of the fitting wall time."""
    wall = (progress.finished or progress.started) - progress.started
    rows = sorted(progress.utilisation(), key=lambda row: row[0])
    busy = "; ".join(f"{w} {n} chunk{'s' * (n != 1)} {share:.0%} busy" for w, n, _, share in rows) or "nothing to fit"
    done = f", {resumed} already done" if resumed else ""
    return (
        f"chunks: {chunks} ({len(progress.runs)} fitted {scheduler.kind}{done}) in {wall:.1f} s; "
        f"workers: {len(rows)} ({busy})"
    )
