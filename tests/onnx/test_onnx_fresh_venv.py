"""The README's torch-free decode in a fresh virtual environment with only `.[onnx,media]`.

    pip install '.[onnx,media]'
    promptus decode x.prx -o x.y4m --backend onnx

A copy of this tree is installed into a new venv (no torch: the test checks), and the ONNX
tier's stream is decoded there with the progress bar on, as a user would, and once with
--quiet. Exporting the graph needs torch, so conftest.py exports it here, in the test process,
which also decodes the stream with torch for the comparison. Installing takes pip about
20-30 s with a warm cache; where pip cannot reach an index the test skips and says so.
"""

from __future__ import annotations

import os
import re
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

from onnx_case import MAX_LEVELS, MIN_PSNR_DB, SIZE  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# pip's words for "no index answered" (offline machine, proxy down), as opposed to a broken project
NO_INDEX = re.compile(
    r"No matching distribution found|Could not find a version that satisfies|NewConnectionError|"
    r"Max retries exceeded|Temporary failure in name resolution|Network is unreachable|ReadTimeoutError"
)


def _copy_project(destination: Path) -> Path:
    """What `pip install .` reads: pyproject.toml, the README it names, and the package."""
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, destination / name)
    shutil.copytree(
        ROOT / "promptus_codec", destination / "promptus_codec", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return destination


def _clean_env(**extra) -> dict[str, str]:
    """The environment without anything that would let the venv see this one's packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A new venv holding promptus-codec[onnx,media] and nothing else; its bin/ folder."""
    work = tmp_path_factory.mktemp("fresh-venv")
    source = _copy_project(work / "src")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=_clean_env())
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{source}[onnx,media]"],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(),
        cwd=work,
    )
    if install.returncode != 0:
        output = install.stdout + install.stderr
        if NO_INDEX.search(output):
            pytest.skip(
                f"pip cannot install '.[onnx,media]' here (no package index reachable): {output.strip()[-400:]}"
            )
        pytest.fail(f"pip install '.[onnx,media]' failed:\n{output[-3000:]}")
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u, promptus_codec as p; "
            "print(p.__file__); print(u.find_spec('torch') is None, u.find_spec('tqdm') is not None)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        cwd=work,
    )
    assert probe.returncode == 0, probe.stderr
    location, flags = probe.stdout.splitlines()
    assert Path(location).is_relative_to(venv), location  # the venv's copy, not this checkout
    assert flags == "True True", "the fresh venv must hold tqdm and must not hold torch"
    return venv / "bin"


def read_y4m(path: Path) -> list[tuple[np.ndarray, ...]]:
    """The (Y, Cb, Cr) planes of each frame of a 4:2:0 or 4:4:4 .y4m file."""
    data = path.read_bytes()
    end = data.index(b"\n")
    tokens = data[:end].split()
    assert tokens[0] == b"YUV4MPEG2"
    fields = {t[:1]: t[1:] for t in tokens[1:]}
    width, height = int(fields[b"W"]), int(fields[b"H"])
    sub = 1 if fields.get(b"C", b"420").startswith(b"444") else 2
    sizes = [(height, width), (height // sub, width // sub), (height // sub, width // sub)]
    frames, at = [], end + 1
    while at < len(data):
        line_end = data.index(b"\n", at)
        assert data[at:line_end].startswith(b"FRAME")
        at = line_end + 1
        planes = []
        for h, w in sizes:
            planes.append(np.frombuffer(data, np.uint8, h * w, at).reshape(h, w))
            at += h * w
        frames.append(tuple(planes))
    return frames


def test_readme_torch_free_decode_in_a_fresh_venv(fresh_venv, graph_dir, stream, tmp_path):
    env = _clean_env(PROMPTUS_ENGINE_DIR=str(graph_dir))
    promptus = str(fresh_venv / "promptus")
    out = tmp_path / "x.y4m"
    shown = subprocess.run(
        [promptus, "decode", str(stream), "-o", str(out), "--backend", "onnx"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    frames = read_y4m(out)
    assert "with onnx-cpu" in shown.stdout  # the summary line: stdout unless the video goes there
    # tqdm's bar, drawn on stderr: "decoding: 100%|...| 17/17 [...]"
    assert re.search(rf"decoding: 100%.*\b{len(frames)}/{len(frames)}\b", shown.stderr), shown.stderr

    quiet_dir = tmp_path / "frames"
    quiet = subprocess.run(
        [promptus, "decode", str(stream), "-o", str(quiet_dir), "--backend", "onnx", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "decoding:" not in quiet.stderr
    assert len(list(quiet_dir.glob("*.png"))) == len(frames)

    # Against the torch decode of the same stream, written by the same y4m writer. RGB samples
    # differ by at most MAX_LEVELS (onnx_case.py); BT.601 limited range scales an RGB difference
    # by 219/255 (luma) or at most 224/255 (chroma, whose 2x2 averages do not add to it), so
    # each plane differs by at most ceil(0.88 MAX_LEVELS) = MAX_LEVELS levels too.
    reference = tmp_path / "torch.y4m"
    done = CliRunner().invoke(main, ["decode", str(stream), "-o", str(reference), "--backend", "torch", "-q"])
    assert done.exit_code == 0, done.output
    expected = read_y4m(reference)
    assert len(frames) == len(expected) and frames[0][0].shape == (SIZE[1], SIZE[0])
    for index, (got, want) in enumerate(zip(frames, expected)):
        for plane, (a, b) in zip("YUV", zip(got, want)):
            difference = np.abs(a.astype(int) - b.astype(int))
            assert difference.max() <= MAX_LEVELS, (index, plane, difference.max())
        mse = np.mean((got[0].astype(np.float64) - want[0]) ** 2)
        assert mse == 0 or 10 * np.log10(255**2 / mse) >= MIN_PSNR_DB, (index, mse)
