"""Per-frame metrics on pairs whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_msssim")

from promptus_codec.metrics import perceptual  # noqa: E402
from promptus_codec.metrics.quality import (  # noqa: E402
    MS_SSIM_WEIGHTS,
    PSNR_CAP_DB,
    Scorer,
    luma,
    ms_ssim,
    ms_ssim_scales,
    ms_ssim_weighted,
    psnr,
)


def smooth(height=128, width=128, seed=0) -> np.ndarray:
    """An RGB picture in 20..235, so small noise never clips."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 128 + 60 * np.sin(x / 7.0)[..., None] * np.cos(y / 11.0)[..., None] + rng.integers(-20, 21, (1, 1, 3))
    return np.clip(base, 20, 235).astype(np.uint8)  # (H, W, 3)


def with_noise(frame: np.ndarray, k: int, seed=1) -> np.ndarray:
    """frame + integer noise uniform on -k..k (never clipped: frame is in 20..235)."""
    noise = np.random.default_rng(seed).integers(-k, k + 1, frame.shape)
    return (frame.astype(np.int64) + noise).astype(np.uint8)


def test_identical_frames_score_the_cap():
    a = smooth()
    assert psnr(a, a) == PSNR_CAP_DB == 100.0
    [s] = Scorer(nets=()).score(a[None], a[None])
    assert s.psnr_y == s.psnr_rgb == PSNR_CAP_DB
    # identical inputs: every SSIM ratio is x / x of the same float32 values; the weighted product
    # of five such ones (float32 pow, 1 ulp each, and 4 multiplies) stays within gamma(14) = 8e-7
    assert s.ms_ssim == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("k", [1, 4, 16])
def test_uniform_noise_gives_the_expected_psnr(k):
    a = smooth(256, 256)
    b = with_noise(a, k)
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    # float64 on both sides, the same sum in another order: ~1e-16 relative, 1e-14 dB at 50 dB
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    # Uniform integers on -k..k have variance k (k + 1) / 3; 196,608 samples land within 0.05 dB.
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (k * (k + 1) / 3)), abs=0.05)


def test_scorer_psnr_matches_numpy_on_luma_and_rgb():
    a = smooth()
    b = with_noise(a, 8)
    [s] = Scorer(nets=()).score(a[None], b[None], first_index=7)
    assert s.index == 7
    assert s.psnr_rgb == pytest.approx(psnr(a, b))  # float64, the same code: a few ulps at most
    ya, yb = luma(a).astype(np.float64), luma(b).astype(np.float64)
    assert s.psnr_y == pytest.approx(10 * math.log10(255**2 / np.mean((ya - yb) ** 2)))  # float64, same formula
    assert s.psnr_y > s.psnr_rgb  # luma averages the channel noise down


@pytest.mark.parametrize(
    "side, scales",
    [(512, 5), (161, 5), (160, 4), (128, 4), (81, 4), (80, 3), (64, 3), (41, 3), (40, 2), (21, 2), (20, 0), (8, 0)],
)
def test_ms_ssim_scales(side, scales):
    assert ms_ssim_scales(side, 4 * side) == ms_ssim_scales(4 * side, side) == scales


def test_ms_ssim_loop_is_the_library_with_five_weights():
    """The fewer-scales path is pytorch-msssim's own loop: with its 5 weights it gives its answer."""
    a, b = smooth(192, 200), with_noise(smooth(192, 200), 12)
    x = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float()  # (2, 3, H, W)
    y = torch.from_numpy(np.stack([b, b])).permute(0, 3, 1, 2).float()
    # the same float32 _ssim calls; only the final product of 5 powers may be grouped otherwise:
    # 5 pows (1 ulp = 2 u each) and 4 multiplies on values <= 1, gamma(14) = 8e-7 <= 1e-6
    torch.testing.assert_close(ms_ssim_weighted(x, y, MS_SSIM_WEIGHTS), ms_ssim(x, y, 5), atol=1e-6, rtol=0)


def test_ms_ssim_on_small_frames_uses_fewer_scales_and_falls_with_noise():
    for side in (128, 64):
        a = smooth(side, side)
        scores = [
            s.ms_ssim
            for s in Scorer(nets=()).score(np.stack([a] * 3), np.stack([a, with_noise(a, 4), with_noise(a, 32)]))
        ]
        assert scores[0] == pytest.approx(1.0, abs=1e-6)  # identical frames: see test_identical_frames_score_the_cap
        assert 1.0 > scores[1] > scores[2] > 0


def test_ms_ssim_is_na_on_tiny_frames():
    a = smooth(16, 16)
    [s] = Scorer(nets=()).score(a[None], with_noise(a, 4)[None])
    assert s.ms_ssim is None and s.psnr_y < PSNR_CAP_DB


@pytest.fixture
def no_backbones(tmp_path, monkeypatch):
    """A torch hub cache with no LPIPS backbone weights in it."""
    monkeypatch.setattr(perceptual, "backbone_path", lambda net: tmp_path / perceptual.BACKBONE_FILES[net])
    return tmp_path


def test_lpips_without_weights_is_na_and_names_the_file(no_backbones):
    scorer = Scorer()
    assert scorer.lpips == {}
    assert set(scorer.lpips_missing) == {"alex", "vgg"}
    assert str(no_backbones / "alexnet-owt-7be5be79.pth") in scorer.lpips_missing["alex"]
    assert str(no_backbones / "vgg16-397923af.pth") in scorer.lpips_missing["vgg"]
    a = smooth(64, 64)
    [s] = scorer.score(a[None], with_noise(a, 8)[None])
    assert s.lpips_alex is None and s.lpips_vgg is None


def test_lpips_plumbing_with_random_backbone():
    """PLUMBING ONLY: an untrained AlexNet. Checks batching and value ranges, not LPIPS itself."""
    pytest.importorskip("lpips")
    scorer = Scorer(nets=("alex",), random_backbone=True)
    assert scorer.random_backbone and set(scorer.lpips_missing) == {"vgg"}
    a = smooth(64, 64)
    scores = scorer.score(np.stack([a, a]), np.stack([a, with_noise(a, 30)]))
    assert scores[0].lpips_alex == 0.0
    assert scores[1].lpips_alex > 0.0
    assert scores[1].lpips_vgg is None
