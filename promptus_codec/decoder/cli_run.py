"""`promptus decode`: pick a runtime, stream frames to the writer, report what happened."""

from __future__ import annotations

import sys
import time

import click

from promptus_codec.container.reader import PrxReader
from promptus_codec.decoder.driver import DecodeReport, decode_frames, warn_stderr
from promptus_codec.errors import ModelMismatchError


def check_shapes(header, spec) -> None:
    """The stream's prompt and latent shapes must be the model's (spec §3.2)."""
    f = spec.vae_scale_factor
    if header.prompt_shape != (spec.prompt_tokens, spec.prompt_dim) or header.latent_channels != spec.latent_channels:
        raise ModelMismatchError(
            f"stream has prompts {header.prompt_shape} and {header.latent_channels} latent channels, "
            f"but {spec.name} uses {(spec.prompt_tokens, spec.prompt_dim)} and {spec.latent_channels}"
        )
    if (header.latent_width * f, header.latent_height * f) != (header.coded_width, header.coded_height):
        raise ModelMismatchError(f"stream latent size does not match its coded size at {spec.name}'s scale factor {f}")


def make_runtime(backend: str, header, model_name: str, weights, device: str, dtype: str):
    """The runtime that will generate frames for this stream."""
    from promptus_codec.cli import load_named_model
    from promptus_codec.decoder.torch_runtime import TorchRuntime

    if backend not in ("torch",):
        raise click.ClickException(f"--backend {backend} is not available in this build")
    model = load_named_model(model_name, weights, device, dtype)
    check_shapes(header, model.spec)
    return TorchRuntime(model, header.generation)


def run_decode(input, output, *, model_name, weights, backend, chroma, crf, restore_size, batch, device, dtype, quiet):
    from tqdm import tqdm

    from promptus_codec.media import open_writer, restore_geometry

    started = time.perf_counter()
    with open(input, "rb") as stream:
        reader = PrxReader(stream)
        header = reader.header
        runtime = make_runtime(backend, header, model_name or header.model.name, weights, device, dtype)
        geometry = header.geometry
        width, height = (geometry.source_rect.width, geometry.source_rect.height) if restore_size else (header.coded_width, header.coded_height)
        report = DecodeReport()
        total = header.frame_count or None
        with open_writer(output, width, height, header.frame_rate, chroma=chroma, crf=crf) as writer, tqdm(
            total=total, desc="decoding", unit="frame", disable=quiet, file=sys.stderr
        ) as bar:
            for _, image in decode_frames(reader, runtime, report, max_batch=batch, warn=warn_stderr):
                writer.write(restore_geometry(image, geometry) if restore_size else image)
                bar.update(1)
    elapsed = time.perf_counter() - started
    click.echo(
        f"decoded {report.frames} frames ({width}x{height}) with {runtime.name} in {elapsed:.1f} s "
        f"({report.frames / elapsed:.2f} frames/s) -> {output}",
        err=output == "-",
    )
    if report.truncation:
        lost = "an unknown number of" if report.frames_lost is None else str(report.frames_lost)
        click.echo(f"warning: {report.truncation}; {lost} frames lost", err=True)
