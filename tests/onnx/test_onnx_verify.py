"""`promptus decode --verify --backend onnx` on a stream the torch encoder made: torch-free, and within one level.

The ONNX graph and PyTorch differ by at most one level of 255 per pixel on the tiny model
(test_onnx_decode.py), so the recomputed 16x16 luma thumbnails differ from the encoder's by at
most one level too: PSNR at least 48.13 dB, far above the 40 dB threshold.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from promptus_codec.cli import main  # noqa: E402

from onnx_case import SIZE  # noqa: E402
from model.streams import FAST_ENCODE as FAST  # noqa: E402  (tests/ is on sys.path)
from test_onnx_decode import run_torch_free  # noqa: E402

LINE = re.compile(r"verify: keyframe +(\d+)  thumbnail PSNR +([\d.]+) dB  \((identical|max (\d+) levels?)\)$")


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    from model.streams import write_clip  # tests/model/streams.py; tests/ is on sys.path

    folder = tmp_path_factory.mktemp("verify")
    clip, out = folder / "clip.y4m", folder / "o.prx"
    write_clip(clip, frames=20, size=SIZE)
    width, height = SIZE
    result = CliRunner().invoke(
        main,
        ["encode", str(clip), "-o", str(out), "--rank", "2", "--interval", "6", "--size", f"{width}x{height}", *FAST],
    )
    assert result.exit_code == 0, result.output
    return out


def test_onnx_decode_verifies_against_the_torch_encoder(graph_dir, encoded, tmp_path):
    done = run_torch_free(
        "decode", encoded, "-o", tmp_path / "frames", "--backend", "onnx", "--verify", engine_dir=graph_dir
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TORCH-FREE" in done.stdout and "with onnx-cpu" in done.stdout
    checks = [LINE.match(line) for line in done.stdout.splitlines() if line.startswith("verify: keyframe")]
    assert all(checks), done.stdout
    assert [int(m.group(1)) for m in checks] == [0, 6, 12, 18, 19]
    levels = [0 if m.group(3) == "identical" else int(m.group(4)) for m in checks]
    assert max(levels) <= 1, done.stdout
    assert min(float(m.group(2)) for m in checks) >= 48.13
    assert "verify: OK: 5 keyframes match the encoder's reconstruction" in done.stdout
