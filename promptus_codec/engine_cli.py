"""`promptus engine`: export ONNX graphs and prebuild TensorRT engines into engine/.

    promptus engine export --model tiny --size 128x128 --batch 10     (torch, onnxscript)
    promptus engine build engine/<graph key>.onnx                      (tensorrt, polygraphy, a GPU)

Only click is imported here; each callback imports what it needs.
"""

from __future__ import annotations

import click

from promptus_codec.cli_options import SIZE, model_option, weights_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def engine():
    """Export and build decoding engines (ONNX graphs, TensorRT engines) in engine/ ($PROMPTUS_ENGINE_DIR)."""


@engine.command()
@model_option("mini")
@weights_option
@click.option(
    "--batch",
    type=int,
    multiple=True,
    default=[10],
    show_default=True,
    help="Frames per call: the keyframe interval. Repeat to export several (--batch 1 --batch 10 "
    "spares padding a scene's first frame).",
)
@click.option("--size", type=SIZE, required=True, help="Coded frame size WxH.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Weights and activations of the graph (fp16 for GPUs; inputs and outputs stay float32).",
)
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset.")
@click.option(
    "--verify", is_flag=True, help="Also run the graph with onnxruntime and print its max |difference| to torch."
)
@click.option(
    "-o", "--output-dir", default=None, help="Folder to write to (default: $PROMPTUS_ENGINE_DIR, else ./engine)."
)
def export(model, weights, batch, size, precision, opset, verify, output_dir):
    """Export the generation step of a model to ONNX, one graph per --batch."""
    from promptus_codec.engine.export import compare_with_torch, export_graph
    from promptus_codec.models.registry import load_model

    width, height = size
    loaded = load_model(model, device="cpu", dtype=precision, weights=weights)
    for frames in batch:
        exported = export_graph(loaded, frames, width, height, opset=opset, directory=output_dir)
        click.echo(f"exported {exported.path} ({exported.bytes / 1e6:.1f} MB) in {exported.seconds:.1f} s")
        if verify:
            diff = compare_with_torch(exported, loaded)
            click.echo("  max |onnxruntime - torch|: " + ", ".join(f"{k} {v:.2e}" for k, v in diff.items()))


@engine.command()
@click.argument("graphs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True, help="Engine precision."
)
@click.option(
    "-o", "--output-dir", default=None, help="Folder to write to (default: $PROMPTUS_ENGINE_DIR, else ./engine)."
)
def build(graphs, precision, output_dir):
    """Build (or find cached) TensorRT engines for exported GRAPHS (.onnx files from `engine export`)."""
    from pathlib import Path

    from promptus_codec.decoder.tensorrt_runtime import device_facts, engine_for
    from promptus_codec.engine.cache import engine_dir

    facts = device_facts()
    directory = Path(output_dir) if output_dir else engine_dir()
    for graph in graphs:
        path, data, built = engine_for(Path(graph), facts, directory, precision)
        click.echo(f"{'built' if built else 'cached'} {path} ({len(data) / 1e6:.1f} MB)")
