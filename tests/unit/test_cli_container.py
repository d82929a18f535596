"""`promptus inspect` and `promptus validate`: through CliRunner and as real subprocesses."""

import json
import os
import pathlib
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from click.testing import CliRunner

from promptus_codec.cli import main
from promptus_codec.container.records import (
    FileHeader,
    GenerationConstants,
    KeyframeRecord,
    LatentFormat,
    ModelIdentity,
    QuantScheme,
    ReconThumbnailRecord,
    SceneRecord,
    SourceGeometry,
)
from promptus_codec.container.writer import write_prx
from tolerances import gamma64  # tests/ is on sys.path (rootdir conftest)

M, N, RANK = 77, 1024, 8


def make_stream(path, keyframes=(0, 10, 20), fps=Fraction(30), thumbnails=False):
    rng = np.random.default_rng(7)
    header = FileHeader(
        coded_width=64,
        coded_height=64,
        geometry=SourceGeometry.identity(64, 64),
        frame_rate=fps,
        frame_count=keyframes[-1] + 1,
        prompt_tokens=M,
        prompt_dim=N,
        latent_channels=4,
        latent_height=8,
        latent_width=8,
        generation=GenerationConstants(),
        model=ModelIdentity("tiny", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32),
    )
    records = [SceneRecord(0, LatentFormat.FLOAT16, 1.0, rng.standard_normal((4, 8, 8)).astype(np.float16))]
    for k in keyframes:
        u = rng.integers(-128, 128, (M, RANK), dtype=np.int8)
        v = rng.integers(-128, 128, (RANK, N), dtype=np.int8)
        records.append(KeyframeRecord(k, RANK, QuantScheme.AFFINE_INT8, 0.02, -3.0, 0.1, 5.0, u, v))
        if thumbnails:
            records.append(ReconThumbnailRecord(k, rng.integers(16, 236, (16, 16), dtype=np.uint8)))
    write_prx(path, header, records)
    return header


@pytest.fixture
def stream(tmp_path):
    path = tmp_path / "s.prx"
    make_stream(path)
    return path


def test_inspect_accounts_for_every_byte(stream):
    result = CliRunner().invoke(main, ["inspect", str(stream), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    size = stream.stat().st_size
    assert doc["frame_count"] == 21 and doc["complete"] is True
    assert doc["bytes"]["prompt"] == 3 * RANK * (M + N)
    assert doc["bytes"]["latent"] == 4 * 8 * 8 * 2  # float16
    assert doc["bytes"]["prompt"] + doc["bytes"]["latent"] + doc["bytes"]["overhead"] == size
    # float64 on both sides, 3 roundings each (the duration, two divides)
    assert doc["kbps"]["total"] == pytest.approx(size * 8 / (21 / 30) / 1000, rel=gamma64(6), abs=0)
    assert [k["rank"] for k in doc["keyframes"]] == [RANK] * 3
    assert doc["model"]["denoiser_sha256"] == "01" * 32


def test_inspect_counts_recon_thumbnails(stream, tmp_path):
    with_thumbnails = tmp_path / "t.prx"
    make_stream(with_thumbnails, thumbnails=True)
    runner = CliRunner()
    doc = json.loads(runner.invoke(main, ["inspect", str(with_thumbnails), "--json"]).output)
    assert doc["recon_thumbnails"] == {"count": 3, "sizes": [[16, 16]], "bytes": 3 * 274}
    assert (
        doc["bytes"]["overhead"]
        - json.loads(runner.invoke(main, ["inspect", str(stream), "--json"]).output)["bytes"]["overhead"]
        == 3 * 274
    )
    text = runner.invoke(main, ["inspect", str(with_thumbnails)]).output
    assert f"thumbnails  3 ReconThumbnail (16x16 luma) 822 B = {822 * 8 / 0.7 / 1000:.2f} kb/s of the overhead" in text
    assert "thumbnails  none" in runner.invoke(main, ["inspect", str(stream)]).output


def test_inspect_text_reports_truncation(stream, tmp_path):
    cut = tmp_path / "cut.prx"
    cut.write_bytes(stream.read_bytes()[:-30])
    result = CliRunner().invoke(main, ["inspect", str(cut)])
    assert result.exit_code == 0
    assert "TRUNCATED" in result.output and "21 frames are complete" in result.output


def test_validate_ok_and_invalid(stream, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["validate", str(stream)])
    assert ok.exit_code == 0 and "OK: 21 frames, 1 scenes, 3 keyframes" in ok.output
    data = bytearray(stream.read_bytes())
    data[300] ^= 0x10
    bad = tmp_path / "bad.prx"
    bad.write_bytes(bytes(data))
    result = runner.invoke(main, ["validate", str(bad)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "CrcMismatchError" in result.output
    missing = runner.invoke(main, ["validate", str(tmp_path / "none.prx")])
    assert missing.exit_code == 1 and "INVALID: cannot read" in missing.output


def test_inspect_bad_file_is_one_line(tmp_path):
    junk = tmp_path / "junk.prx"
    junk.write_bytes(b"hello world, this is not a prx file")
    result = CliRunner().invoke(main, ["inspect", str(junk)])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: not a .prx file: the signature is wrong (at byte 0)"


@pytest.mark.parametrize("command", ["inspect", "validate"])
def test_runs_without_torch_in_subprocess(stream, command):
    """The base install is enough: inspect and validate never even try to import torch.

    tests/torch_free.py blocks torch as on a base install; TORCH_FREE_STRICT fails on any attempt.
    """
    script = pathlib.Path(__file__).parents[1] / "torch_free.py"
    done = subprocess.run(
        [sys.executable, str(script), command, str(stream)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TORCH_FREE_STRICT": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "TORCH-FREE" in done.stdout
    assert ("OK: 21 frames" if command == "validate" else "keyframes   3") in done.stdout


def test_cut_threshold_help_shows_the_detectors_defaults():
    """The help text is formatted from encoder/scenes.py's constants, never a copy (it once said 0.5 for 0.8)."""
    from promptus_codec.encoder.scenes import DEFAULT_THRESHOLDS

    text = " ".join(CliRunner().invoke(main, ["encode", "--help"]).output.split())
    assert f"latent {DEFAULT_THRESHOLDS['latent']:g}" in text
    for detector, threshold in DEFAULT_THRESHOLDS.items():
        assert f"{detector} {threshold:g}" in text


def test_shim_and_console_script_agree(stream):
    """`python cli.py` behaves like the installed `promptus`."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    shim = subprocess.run(
        [sys.executable, str(root / "cli.py"), "validate", str(stream)], capture_output=True, text=True
    )
    real = subprocess.run(
        [sys.executable, "-m", "promptus_codec.cli", "validate", str(stream)], capture_output=True, text=True
    )
    assert shim.returncode == real.returncode == 0
    assert shim.stdout == real.stdout


def test_os_errors_become_one_line(tmp_path, monkeypatch):
    """PromptusGroup turns an OSError (a full disk, a permission) into one line naming the file."""
    import errno

    import promptus_codec.legacy

    def fail(*args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o.prx"))

    monkeypatch.setattr(promptus_codec.legacy, "import_legacy", fail)
    result = CliRunner().invoke(main, ["import-legacy", str(tmp_path), "-o", str(tmp_path / "o.prx")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output == f"Error: No space left on device: {tmp_path / 'o.prx'}\n"
