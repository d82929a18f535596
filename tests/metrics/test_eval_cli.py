"""`promptus eval` through click's CliRunner (and one real process): tables, files, alignment."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("av")
pytest.importorskip("torch")

from promptus_codec.eval_cli import compare_command, eval_command  # noqa: E402
from promptus_codec.metrics import perceptual  # noqa: E402
from .helpers import moving_frames, write_pngs, write_y4m  # noqa: E402

NUMBER = re.compile(r"\d+\.\d+")


@pytest.fixture(autouse=True)
def no_backbones(tmp_path, monkeypatch):
    """Every test here runs as on a machine without LPIPS backbone weights."""
    monkeypatch.setattr(perceptual, "backbone_path", lambda net: tmp_path / "hub" / perceptual.BACKBONE_FILES[net])


def run(*args):
    return CliRunner().invoke(eval_command, [str(a) for a in args])


def noisy(frames, k=6, seed=0):
    rng = np.random.default_rng(seed)
    return [np.clip(f.astype(np.int64) + rng.integers(-k, k + 1, f.shape), 0, 255).astype(np.uint8) for f in frames]


@pytest.mark.parametrize("command", [eval_command, compare_command])
def test_help(command):
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_identical_videos(tmp_path):
    frames = moving_frames(4, 64, 64)
    a, b = write_pngs(tmp_path / "a", frames), write_pngs(tmp_path / "b", frames)
    result = run(a, b, "--json", tmp_path / "s.json", "--csv", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    assert "4 frames scored (64x64)" in result.output
    assert re.search(r"PSNR-Y \(dB\)\s+100\.00\s+100\.00\s+100\.00", result.output)
    assert re.search(r"MS-SSIM \(3 scales\)\s+1\.0000", result.output)
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["summary"]["psnr_rgb"] == 100.0 and document["frames_scored"] == 4
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["index"] for r in rows] == ["0", "1", "2", "3"]


def test_lpips_unavailable_prints_no_number(tmp_path):
    frames = moving_frames(3, 64, 64)
    a, b = write_pngs(tmp_path / "a", frames), write_pngs(tmp_path / "b", noisy(frames))
    result = run(a, b, "--json", tmp_path / "s.json", "--csv", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    lpips_lines = [line for line in result.output.splitlines() if "LPIPS" in line]
    assert any(line.split()[:2] == ["LPIPS-alex", "n/a"] for line in lpips_lines)
    assert any("alexnet-owt-7be5be79.pth" in line for line in lpips_lines)
    assert any("vgg16-397923af.pth" in line for line in lpips_lines)
    for line in lpips_lines:
        assert not NUMBER.search(line.split("http")[0].replace("0.32", "")), line  # no LPIPS value anywhere
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["summary"]["lpips_alex"] is None and document["summary"]["severe_share_alex"] is None
    assert all(f["lpips_vgg"] is None for f in document["frames"])
    assert {r["lpips_alex"] for r in csv.DictReader((tmp_path / "s.csv").open())} == {""}


def test_identical_y4m_files(tmp_path):
    """Two y4m files from the same frames decode to the same pixels."""
    frames = moving_frames(3, 64, 64)
    a = write_y4m(tmp_path / "a.y4m", frames)
    b = write_y4m(tmp_path / "b.y4m", frames)
    result = run(a, b)
    assert result.exit_code == 0 and "100.00" in result.output


def test_source_of_another_shape_needs_fit(tmp_path):
    source = write_y4m(tmp_path / "wide.y4m", moving_frames(3, 128, 64))
    decoded = write_y4m(tmp_path / "square.y4m", moving_frames(3, 64, 64))
    refused = run(source, decoded)
    assert refused.exit_code == 1
    assert "source is 128x64 but decoded is 64x64" in refused.output and "--fit crop" in refused.output
    result = run(source, decoded, "--fit", "crop")
    assert result.exit_code == 0, result.output
    assert "note: source 128x64 scaled to the decoded 64x64 with --fit crop" in result.output


def test_same_aspect_ratio_is_scaled_without_asking(tmp_path):
    source = write_y4m(tmp_path / "big.y4m", moving_frames(3, 128, 128))
    decoded = write_y4m(tmp_path / "small.y4m", moving_frames(3, 64, 64))
    result = run(source, decoded)
    assert result.exit_code == 0, result.output
    assert "(same aspect ratio)" in result.output


def test_frame_counts(tmp_path):
    frames = moving_frames(10, 64, 64)
    source = write_pngs(tmp_path / "src", frames)
    short = write_pngs(tmp_path / "short", frames[:8])
    result = run(source, short)
    assert result.exit_code == 0, result.output
    assert "8 frames scored" in result.output
    assert "note: source has 10 frames and decoded 8: scored the first 8" in result.output
    refused = run(source, short, "--frame-tolerance", "1")
    assert refused.exit_code == 1
    assert "pass --frame-tolerance 2 to score the first 8 frames" in refused.output
    longer = run(short, source)
    assert longer.exit_code == 0 and "source has 8 frames and decoded 10" in longer.output


def test_missing_file_is_one_line(tmp_path):
    result = run(tmp_path / "nope.mp4", tmp_path / "nope2.mp4")
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: no such file: {tmp_path / 'nope.mp4'}"


def test_module_imports_only_click_and_a_real_process_runs(tmp_path):
    script = "import sys, promptus_codec.eval_cli; print('torch' in sys.modules, 'av' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    frames = moving_frames(2, 64, 64)
    a, b = write_pngs(tmp_path / "a", frames), write_pngs(tmp_path / "b", noisy(frames))
    call = "from promptus_codec.eval_cli import eval_command; eval_command(prog_name='promptus eval')"
    done = subprocess.run([sys.executable, "-c", call, str(a), str(b)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 frames scored (64x64)" in done.stdout
