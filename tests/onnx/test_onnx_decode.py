"""Export the tiny model, run it with ONNX Runtime, decode a stream with --backend onnx without torch.

Measured on the 17-frame test stream (64x64, batch-3 graph, chunks split and padded): ONNX Runtime
and torch differ by at most 1 level of 255 in any pixel, and every frame's PSNR between the two
decodes is above 73 dB. onnx_case.py derives the tolerances (2 levels, 60 dB) from float32 rounding.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("av")

from click.testing import CliRunner  # noqa: E402

from promptus_codec.cli import main  # noqa: E402
from promptus_codec.container.reader import PrxReader  # noqa: E402
from promptus_codec.decoder.driver import decode_frames  # noqa: E402
from promptus_codec.decoder.onnx_runtime import OnnxRuntime  # noqa: E402
from promptus_codec.decoder.torch_runtime import TorchRuntime  # noqa: E402
from promptus_codec.engine.cache import find_graphs  # noqa: E402
from promptus_codec.engine.export import example_inputs  # noqa: E402
from promptus_codec.engine.keys import GraphKey  # noqa: E402
from promptus_codec.errors import ModelError  # noqa: E402
from promptus_codec.generate import GenerationStep  # noqa: E402

from onnx_case import GRAPH_BATCH, LAYOUT, MAX_LEVELS, MIN_PSNR_DB, SIZE  # noqa: E402
from tolerances import generation_atols  # noqa: E402  (tests/ is on sys.path)

TORCH_FREE = Path(__file__).parents[1] / "torch_free.py"


def graph(graph_dir, model) -> dict[int, Path]:
    key = GraphKey.create(model.identity(), model.spec.generation, GRAPH_BATCH, *SIZE)
    return find_graphs(key, graph_dir)


def decode_torch(path, model) -> np.ndarray:
    with open(path, "rb") as f:
        reader = PrxReader(f)
        return np.stack([image for _, image in decode_frames(reader, TorchRuntime(model, reader.header.generation))])


def read_png_dir(folder: Path) -> np.ndarray:
    from promptus_codec.media.readers import read_image

    return np.stack([read_image(str(p)) for p in sorted(folder.glob("*.png"))])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run_torch_free(*args, engine_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROMPTUS_ENGINE_DIR": str(engine_dir)}
    return subprocess.run(
        [sys.executable, str(TORCH_FREE), *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize("frames", [1, GRAPH_BATCH, 5])  # padded, exact, split + padded
def test_graph_matches_torch(graph_dir, tiny_model, frames):
    runtime = OnnxRuntime(graph(graph_dir, tiny_model), device="cpu")
    z_prev, noise, prompts = example_inputs(tiny_model, frames, *SIZE, seed=frames)
    with torch.inference_mode():
        latents, images = GenerationStep(tiny_model).eval()(*map(torch.from_numpy, (z_prev, noise, prompts)))
    onnx_latents, onnx_images = runtime.generate(z_prev, noise, prompts)
    assert onnx_images.shape == (frames, 3, SIZE[1], SIZE[0])
    # two float32 implementations of one step (MLAS against MKL/oneDNN): tolerances.generation_atols
    latent_atol, image_atol = generation_atols(tiny_model, tiny_model.spec.generation, z_prev, noise, prompts)
    np.testing.assert_allclose(onnx_latents, latents.numpy(), rtol=0, atol=latent_atol)
    with torch.inference_mode():  # the decoders compared on the same latents: ONNX Runtime's
        torch_images = tiny_model.decode_latent(torch.from_numpy(onnx_latents)).numpy()
    np.testing.assert_allclose(onnx_images, torch_images, rtol=0, atol=image_atol)


def test_runtime_reads_identity_from_metadata(graph_dir, tiny_model):
    runtime = OnnxRuntime(graph(graph_dir, tiny_model), device="cpu")
    assert runtime.identity() == tiny_model.identity()
    assert runtime.constants == tiny_model.spec.generation
    assert runtime.name == "onnx-cpu" and runtime.batches == [GRAPH_BATCH]


def test_decode_without_torch_matches_torch(graph_dir, tiny_model, stream, tmp_path):
    out = tmp_path / "frames"
    done = run_torch_free("decode", stream, "-o", out, "--backend", "onnx", "-q", engine_dir=graph_dir)
    assert done.returncode == 0, done.stderr
    assert "TORCH-FREE" in done.stdout and "with onnx-cpu" in done.stdout
    onnx_frames, torch_frames = read_png_dir(out), decode_torch(stream, tiny_model)
    assert onnx_frames.shape == torch_frames.shape == (LAYOUT[-1][-1][0] + 1, SIZE[1], SIZE[0], 3)
    levels = np.abs(onnx_frames.astype(int) - torch_frames.astype(int)).max(axis=(1, 2, 3))
    assert levels.max() <= MAX_LEVELS, levels
    assert min(psnr(a, b) for a, b in zip(onnx_frames, torch_frames)) >= MIN_PSNR_DB


def test_auto_without_torch_picks_onnx_cpu(graph_dir, stream, tmp_path):
    done = run_torch_free("decode", stream, "-o", tmp_path / "o.y4m", "--backend", "auto", "-q", engine_dir=graph_dir)
    assert done.returncode == 0, done.stderr
    assert "promptus: --backend auto chose onnx-cpu" in done.stderr
    assert "TORCH-FREE" in done.stdout


def test_missing_graph_names_the_export_command(stream, tmp_path):
    done = run_torch_free("decode", stream, "-o", tmp_path / "o.y4m", "--backend", "onnx", engine_dir=tmp_path)
    assert done.returncode == 1
    width, height = SIZE
    # The longest keyframe interval of LAYOUT is 5 frames.
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: no exported graph for this stream in {tmp_path}: run  "
        f"promptus engine export --model tiny --size {width}x{height} --batch 5"
    )
    assert "TORCH-FREE" in done.stdout


def test_auto_without_graph_or_torch_says_what_to_install(stream, tmp_path):
    done = run_torch_free("decode", stream, "-o", tmp_path / "o.y4m", "--backend", "auto", engine_dir=tmp_path)
    assert done.returncode == 1
    assert "no backend can decode this stream" in done.stderr and "torch or diffusers not installed" in done.stderr


def test_auto_with_torch_and_no_graph_picks_torch_cpu(stream, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTUS_ENGINE_DIR", str(tmp_path / "empty"))
    result = CliRunner().invoke(
        main, ["decode", str(stream), "-o", str(tmp_path / "o.y4m"), "--backend", "auto", "--device", "cpu", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "promptus: --backend auto chose torch-cpu (onnx-cpu: no exported graph for this stream)" in result.output


def test_renamed_graph_is_refused(graph_dir, tiny_model, tmp_path):
    (path,) = graph(graph_dir, tiny_model).values()
    renamed = tmp_path / path.name.replace(f"-b{GRAPH_BATCH}-", "-b7-")
    shutil.copy(path, renamed)
    with pytest.raises(ModelError, match="renamed"):
        OnnxRuntime({7: renamed}, device="cpu")


def test_graph_for_other_constants_is_not_found(graph_dir, tiny_model):
    from dataclasses import replace

    other = replace(tiny_model.spec.generation, latent_weight=0.1)
    assert not find_graphs(GraphKey.create(tiny_model.identity(), other, 1, *SIZE), graph_dir)
    seed_only = replace(tiny_model.spec.generation, noise_seed=7)  # the noise is an input: same graph
    assert find_graphs(GraphKey.create(tiny_model.identity(), seed_only, 1, *SIZE), graph_dir)


def test_engine_cli_help():
    from promptus_codec.engine_cli import engine

    for args in ([], ["export"], ["build"]):
        result = CliRunner().invoke(engine, [*args, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_export_in_a_subprocess(tmp_path, tiny_model):
    """`engine export` as a real process (the lead registers the group as `promptus engine`)."""
    code = "from promptus_codec.engine_cli import engine; engine()"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "export",
            "--model",
            "tiny",
            "--size",
            "64x64",
            "--batch",
            "1",
            "--verify",
            "-o",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (path,) = tmp_path.glob("*.onnx")
    assert GraphKey.parse(path.stem).batch == 1 and f"exported {path}" in done.stdout
    diffs = dict(part.split() for part in done.stdout.split("torch|: ")[1].strip().split(", "))
    # The same comparison here (example_inputs seed 1, as compare_with_torch): the latents within
    # tolerances.generation_atols; the pictures come from each side's own latents, so theirs is
    # the torch decoder's response to the latents' difference plus the decoders' own rounding.
    model = tiny_model
    inputs = example_inputs(model, 1, 64, 64, 1)
    onnx_latents, _ = OnnxRuntime({1: path}, device="cpu").generate(*inputs)
    with torch.inference_mode():
        latents, images = GenerationStep(model).eval()(*map(torch.from_numpy, inputs))
        propagated = np.abs(model.decode_latent(torch.from_numpy(onnx_latents)).numpy() - images.numpy()).max()
    latent_atol, image_atol = generation_atols(model, model.spec.generation, *inputs)
    printed = 1 + 0.5e-2  # the CLI prints 3 significant digits: half a unit of the last one
    assert float(diffs["latents"]) <= latent_atol * printed
    assert float(diffs["images"]) <= (propagated + image_atol) * printed
