"""`promptus compare` end to end: a 1-second clip, the tiny model, two bitrates."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

pytest.importorskip("av")
pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")
pytest.importorskip("imageio_ffmpeg")

from promptus_codec.eval_cli import compare_command  # noqa: E402
from promptus_codec.metrics import perceptual  # noqa: E402

from .helpers import moving_frames, write_y4m  # noqa: E402


def test_compare_writes_table_plot_and_strips(tmp_path, monkeypatch):
    monkeypatch.setattr(perceptual, "backbone_path", lambda net: tmp_path / "hub" / perceptual.BACKBONE_FILES[net])
    clip = write_y4m(tmp_path / "clip.y4m", moving_frames(30, 128, 128))  # 1 s at 30 fps
    out = tmp_path / "out"
    args = [
        str(clip), "--bitrates", "40k,60k", "--model", "tiny", "--size", "64x64", "--preset", "draft",
        "--iterations", "3", "--first-iterations", "5", "--perceptual", "none", "--device", "cpu",
        "--keep-streams", "-o", str(out), "-q",
    ]  # fmt: skip
    result = CliRunner().invoke(compare_command, args)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "compare.json", "compare.csv", "rd.png", "strip_40k.png", "strip_60k.png", "streams",
    }  # fmt: skip
    for png in ("rd.png", "strip_40k.png", "strip_60k.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    document = json.loads((out / "compare.json").read_text())
    rows = document["rows"]
    assert [(r["codec"], r["target_kbps"]) for r in rows][:3] == [("promptus", 40.0), ("x265", 40.0), ("vvenc", 40.0)]
    assert len(rows) == 6 and document["coded_size"] == [64, 64] and document["frames"] == 30
    assert document["threads"] == 1  # promptus encode's default, so its rows are that command's bytes
    streams = {p.suffix: p for p in (out / "streams").iterdir()}
    assert set(streams) == {".prx", ".hevc", ".266"}
    for r in rows:
        # 1 s: kb/s = kbit. compare.json rounds to 3 decimals: half a unit of the last, plus float64
        assert r["achieved_kbps"] == pytest.approx(r["bytes"] * 8 / 1000, abs=0.5e-3 + 1e-12)
        assert r["lpips_alex"] is None and r["severe_share_alex"] is None
        assert r["psnr_y"] > 5 and 0 < r["ms_ssim"] <= 1
    promptus = [r for r in rows if r["codec"] == "promptus"]
    # not a float tolerance: rate control's contract is the target within 1%
    assert [r["achieved_kbps"] for r in promptus] == pytest.approx([40.0, 60.0], rel=0.01)
    for r in rows[1:3]:
        assert r["target_kbps"] == promptus[0]["achieved_kbps"]  # baselines aim at what Promptus achieved
    assert set(document["lpips_missing"]) == {"alex", "vgg"}
    for codec in ("x265", "vvenc"):
        for metric, bd in document["bd_rate_percent"][codec].items():
            assert (bd["percent"] is None) != (bd["reason"] is None), (codec, metric)
        assert "usable point" in document["bd_rate_percent"][codec]["lpips_alex"]["reason"]

    table = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["codec"] for r in table] == [r["codec"] for r in rows]
    assert table[0]["lpips_vgg"] == ""
    assert "BD-rate of promptus against x265" in result.output
    assert "LPIPS-alex: n/a: backbone weights missing" in result.output
