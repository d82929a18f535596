"""`promptus decode`: stream frames from a runtime (decoder/runtimes.py) to the writer, report what happened."""

from __future__ import annotations

import sys
import time

import click

from promptus_codec.container.reader import PrxReader
from promptus_codec.decoder.driver import DecodeReport, decode_frames, warn_stderr
from promptus_codec.decoder.runtimes import make_runtime


def log_stderr(message: str) -> None:
    click.echo(f"promptus: {message}", err=True)


def run_decode(
    input,
    output,
    *,
    model_name,
    weights,
    backend,
    chroma,
    crf,
    restore_size,
    batch,
    device,
    dtype,
    quiet,
    verify=False,
    verify_min_psnr=None,
):
    from tqdm import tqdm

    from promptus_codec.decoder.verify import VERIFY_FAILED_EXIT, VERIFY_MIN_PSNR_DB, Verifier
    from promptus_codec.media import open_writer, restore_geometry

    verifier = Verifier(VERIFY_MIN_PSNR_DB if verify_min_psnr is None else verify_min_psnr) if verify else None

    started = time.perf_counter()
    with open(input, "rb") as stream:
        reader = PrxReader(stream)
        header = reader.header
        runtime = make_runtime(
            backend, header, model_name or header.model.name, weights, device, dtype, batch, input, log=log_stderr
        )
        loaded = time.perf_counter()
        geometry = header.geometry
        width, height = (
            (geometry.source_rect.width, geometry.source_rect.height)
            if restore_size
            else (header.coded_width, header.coded_height)
        )
        report = DecodeReport()
        total = header.frame_count or None
        with (
            open_writer(output, width, height, header.frame_rate, chroma=chroma, crf=crf) as writer,
            tqdm(total=total, desc="decoding", unit="frame", disable=quiet, file=sys.stderr) as bar,
        ):
            frames = decode_frames(
                reader,
                runtime,
                report,
                max_batch=batch,
                warn=warn_stderr,
                on_record=None if verifier is None else verifier.record,
            )
            for index, image in frames:
                if verifier is not None:
                    verifier.frame(index, image)
                writer.write(restore_geometry(image, geometry) if restore_size else image)
                bar.update(1)
    finished = time.perf_counter()
    decoding = max(finished - loaded, 1e-9)
    click.echo(
        f"decoded {report.frames} frames ({width}x{height}) with {runtime.name} in {finished - started:.1f} s "
        f"({loaded - started:.1f} s loading, then {report.frames / decoding:.2f} frames/s) -> {output}",
        err=output == "-",
    )
    if report.truncation:
        lost = "an unknown number of" if report.frames_lost is None else str(report.frames_lost)
        click.echo(f"warning: {report.truncation}; {lost} frames lost", err=True)
    if verifier is not None:
        for check in verifier.checks if not quiet else ():
            click.echo(check.line(verifier.min_psnr_db), err=output == "-")
        click.echo(verifier.summary(), err=output == "-")
        if not verifier.ok:
            sys.exit(VERIFY_FAILED_EXIT)
