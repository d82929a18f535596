"""ReconThumbnail records from the encoder and `promptus decode --verify` on the tiny model.

The encoder writes one ReconThumbnail after each keyframe; decode --verify recomputes them from
its own frames. A decode with the encoder's torch build matches to within one level: exactly on
the AMD Zen machines of this project; on an Intel Xeon with AMX, exactly with the decoder at one
torch thread and by 1 level (keyframes 0 and 6) at two, whatever --batch.
A perturbed decode (another noise seed, or a runtime whose pictures are a few levels off) fails
with exit status 3 after writing every frame.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from promptus_codec.cli import main  # noqa: E402
from promptus_codec.container.reader import read_prx  # noqa: E402
from promptus_codec.container.records import KeyframeRecord, QualityRecord, ReconThumbnailRecord  # noqa: E402
from promptus_codec.decoder import driver  # noqa: E402
from promptus_codec.decoder.torch_runtime import TorchRuntime  # noqa: E402
from promptus_codec.decoder.verify import VERIFY_FAILED_EXIT  # noqa: E402
from promptus_codec.media.readers import open_video  # noqa: E402
from promptus_codec.metrics.thumbnail import luma_thumbnail  # noqa: E402

from .streams import FAST_ENCODE as FAST  # noqa: E402
from .streams import write_clip  # noqa: E402

KEYFRAMES = [0, 6, 12, 18, 19]  # 20 frames at --interval 6

# The same float32 arithmetic in another summation order differs by a few ulps, far below half a
# level after the decoder (x0's 1/0.068 gain included), so a pixel can only round the other way:
# one level at most, and a thumbnail (a mean of pixels, rounded) likewise.
SAME_ARITHMETIC_LEVELS = 1


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A 20-frame stream with ReconThumbnails, and the encoder's own reconstruction as PNG frames."""
    folder = tmp_path_factory.mktemp("verify")
    clip, out, recon = folder / "clip.y4m", folder / "o.prx", folder / "recon"  # PNG frames: lossless RGB
    write_clip(clip, frames=20)
    result = run(
        "encode", clip, "-o", out, "--rank", "2", "--interval", "6", "--size", "64x64", "--recon", recon, *FAST
    )
    assert result.exit_code == 0, result.output
    return out, recon


def test_encoder_writes_the_thumbnail_of_its_own_reconstruction(encoded):
    out, recon = encoded
    records = read_prx(out).records
    thumbnails = [r for r in records if isinstance(r, ReconThumbnailRecord)]
    assert [t.frame_index for t in thumbnails] == KEYFRAMES
    kinds = [type(r) for r in records if isinstance(r, (KeyframeRecord, ReconThumbnailRecord, QualityRecord))]
    assert kinds == [KeyframeRecord, ReconThumbnailRecord, QualityRecord] * len(KEYFRAMES)  # resume keeps up to Quality
    with open_video(str(recon)) as source:
        frames = list(source)
    assert len(frames) == 20
    for t in thumbnails:
        assert t.luma.shape == (16, 16)
        ours = luma_thumbnail(frames[t.frame_index]).astype(int)
        assert np.abs(t.luma.astype(int) - ours).max() <= SAME_ARITHMETIC_LEVELS


def test_verify_of_a_faithful_decode(encoded, tmp_path):
    out, _ = encoded
    result = run("decode", out, "-o", tmp_path / "d.y4m", "--verify")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("verify: keyframe")]
    assert [int(line.split()[2]) for line in lines] == KEYFRAMES
    assert all("(identical)" in line or "(max 1 level)" in line for line in lines), lines  # SAME_ARITHMETIC_LEVELS
    assert "verify: OK: 5 keyframes match the encoder's reconstruction" in result.output


def test_no_verify_record_and_verify_on_such_a_stream(tmp_path):
    clip, out = tmp_path / "clip.y4m", tmp_path / "o.prx"
    write_clip(clip, frames=20)
    result = run("encode", clip, "-o", out, "--bitrate", "200k", "--size", "64x64", "--no-verify-record", *FAST)
    assert result.exit_code == 0, result.output
    assert abs(out.stat().st_size * 8 / (20 / 30) / 1000 / 200 - 1) < 0.01
    assert not any(isinstance(r, ReconThumbnailRecord) for r in read_prx(out).records)
    result = run("decode", out, "-o", tmp_path / "d.y4m", "--verify", "-q")
    assert result.exit_code == 0, result.output
    assert "verify: the stream holds no ReconThumbnail records" in result.output


def _perturb_images(monkeypatch, levels: float):
    original = TorchRuntime.generate

    def generate(self, z_prev, noise, prompts):
        latents, images = original(self, z_prev, noise, prompts)
        return latents, images + np.float32(levels / 255)

    monkeypatch.setattr(TorchRuntime, "generate", generate)


def _other_seed(monkeypatch):
    original = driver.initial_noise
    monkeypatch.setattr(driver, "initial_noise", lambda seed, *args: original(seed + 1, *args))


@pytest.mark.parametrize("perturb", ["runtime output +6 levels", "noise seed + 1"])
def test_verify_catches_a_perturbed_decode(encoded, tmp_path, monkeypatch, perturb):
    out, _ = encoded
    if perturb == "noise seed + 1":
        _other_seed(monkeypatch)
    else:
        _perturb_images(monkeypatch, 6)
    decoded = tmp_path / "d.y4m"
    result = run("decode", out, "-o", decoded, "--verify")
    assert result.exit_code == VERIFY_FAILED_EXIT, result.output
    assert "verify: FAILED: " in result.output and "drifted below 40 dB" in result.output
    flagged = [line for line in result.output.splitlines() if line.endswith("DRIFT")]
    assert flagged, result.output
    assert "Traceback" not in result.output
    with open_video(str(decoded)) as source:  # the frames are still all written
        assert sum(1 for _ in source) == 20


def test_verify_threshold_is_an_option(encoded, tmp_path, monkeypatch):
    out, _ = encoded
    _perturb_images(monkeypatch, 6)  # about 5 levels of luma: near 34 dB
    result = run("decode", out, "-o", tmp_path / "d.y4m", "--verify-min-psnr", "20", "-q")
    assert result.exit_code == 0, result.output
    assert "verify: OK: 5 keyframes" in result.output and "verify: keyframe" not in result.output  # -q: summary only
