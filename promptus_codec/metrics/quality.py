"""Full-reference picture quality of one decoded frame against its source frame.

    reference, decoded: RGB uint8 (H, W, 3)
      psnr_y     on the luma plane of media.color.rgb_to_yuv (BT.601, limited range), peak 255
      psnr_rgb   over the three RGB channels together, peak 255
      ms_ssim    pytorch-msssim on RGB, data range 255 (fewer scales on small frames, see below)
      lpips_*    the ``lpips`` package, AlexNet and VGG, on RGB in [-1, 1]; lower is better

PSNR of identical frames would be infinite; it is capped at PSNR_CAP_DB (the encoder's
Quality records use the same 100 dB), so means stay finite and JSON stays standard.

MS-SSIM uses 5 scales with an 11-tap window, as Wang et al. and pytorch-msssim do. That
needs the short side above 160 pixels. A smaller frame gets the most scales that fit
(``(win - 1) * 2**(scales - 1) < short side``) with the first weights renormalised to
sum to 1: 4 scales at 128 px, 3 at 64 px. Below 2 scales (short side <= 20) MS-SSIM is
not reported. The scale count is printed next to every MS-SSIM figure.

LPIPS runs only with real ImageNet backbone weights (see metrics.perceptual). A missing
backbone makes that LPIPS column None ("n/a"), with the missing file named.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from promptus_codec.media.color import rgb_to_yuv

PSNR_CAP_DB = 100.0  # stands for "identical": MSE 0
SEVERE_LPIPS = 0.32  # the Promptus paper's threshold for a severely distorted frame
LPIPS_NETS = ("alex", "vgg")
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, fine to coarse
MS_SSIM_WIN = 11  # Gaussian window taps (sigma 1.5)


def psnr(reference: np.ndarray, decoded: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two same-shape uint8 arrays, capped at PSNR_CAP_DB."""
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, float(10 * np.log10(peak**2 / mse)))


def luma(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> Y uint8 (H, W), 16..235."""
    return rgb_to_yuv(frame, "444")[0]


def ms_ssim_scales(width: int, height: int) -> int:
    """How many MS-SSIM scales fit a frame (at most 5); 0 when fewer than 2 do."""
    short = min(width, height)
    scales = max((s for s in range(1, 6) if (MS_SSIM_WIN - 1) * 2 ** (s - 1) < short), default=0)
    return scales if scales >= 2 else 0


def ms_ssim(reference, decoded, scales: int = 5):
    """MS-SSIM of (B, 3, H, W) float tensors in [0, 255] -> (B,), with ``scales`` scales.

    Five scales is pytorch-msssim's ``ms_ssim`` itself; fewer go through
    :func:`ms_ssim_weighted`, because the library's size check always assumes five.
    """
    from pytorch_msssim import ms_ssim as library_ms_ssim

    if scales == 5:
        return library_ms_ssim(reference, decoded, data_range=255, size_average=False, win_size=MS_SSIM_WIN)
    weights = np.array(MS_SSIM_WEIGHTS[:scales])
    return ms_ssim_weighted(reference, decoded, tuple(weights / weights.sum()))


def ms_ssim_weighted(reference, decoded, weights: tuple[float, ...]):
    """pytorch-msssim's MS-SSIM loop with one weight per scale: its ``_ssim`` at each scale,
    2x2 average pooling between scales. (B, 3, H, W) in [0, 255] -> (B,)."""
    import torch
    import torch.nn.functional as F
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    win = _fspecial_gauss_1d(MS_SSIM_WIN, 1.5).repeat([reference.shape[1], 1, 1, 1]).to(reference)
    x, y, factors = reference, decoded, []
    for level in range(len(weights)):
        ssim, cs = _ssim(x, y, win=win, data_range=255, size_average=False, K=(0.01, 0.03))  # (B, C) each
        if level < len(weights) - 1:
            factors.append(torch.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool2d(x, kernel_size=2, padding=padding), F.avg_pool2d(y, kernel_size=2, padding=padding)
    stacked = torch.stack(factors + [torch.relu(ssim)])  # (scales, B, C)
    return torch.prod(stacked ** reference.new_tensor(weights).view(-1, 1, 1), dim=0).mean(1)  # (B,)


@dataclass
class FrameScores:
    """One frame's scores; None where a metric is not available (n/a)."""

    index: int
    psnr_y: float
    psnr_rgb: float
    ms_ssim: float | None
    lpips_alex: float | None
    lpips_vgg: float | None


def lpips_missing_line(net: str) -> str:
    """The one line that says why LPIPS-<net> is n/a."""
    from promptus_codec.metrics.perceptual import DOWNLOAD_ROOT, backbone_path

    path = backbone_path(net)
    return f"LPIPS-{net}: n/a: backbone weights missing: {path} (from {DOWNLOAD_ROOT}{path.name})"


class Scorer:
    """Scores batches of frame pairs with every metric this machine can honestly compute.

    ``lpips_missing`` maps each LPIPS net whose backbone is absent to the line saying so.
    ``random_backbone=True`` scores LPIPS with untrained backbones: a plumbing test only,
    and every report made from it says so.
    """

    def __init__(self, device="cpu", nets=LPIPS_NETS, random_backbone: bool = False):
        from promptus_codec.metrics.perceptual import load_lpips, lpips_available

        self.device = device
        self.random_backbone = random_backbone
        self.lpips = {}
        self.lpips_missing: dict[str, str] = {}
        for net in LPIPS_NETS:
            if net not in nets:
                self.lpips_missing[net] = f"LPIPS-{net}: n/a: not asked for"
            elif random_backbone or lpips_available(net):
                with warnings.catch_warnings():  # torchvision's notice about its `weights` argument
                    warnings.simplefilter("ignore", UserWarning)
                    self.lpips[net] = load_lpips(net, random_backbone=random_backbone).to(device)
            else:
                self.lpips_missing[net] = lpips_missing_line(net)

    def score(self, reference: np.ndarray, decoded: np.ndarray, first_index: int = 0) -> list[FrameScores]:
        """(B, H, W, 3) uint8 pairs -> B FrameScores numbered from ``first_index``."""
        import torch

        if reference.shape != decoded.shape:
            raise ValueError(f"frame shapes differ: {reference.shape} and {decoded.shape}")
        height, width = reference.shape[1:3]
        scales = ms_ssim_scales(width, height)
        with torch.inference_mode():
            ref = torch.from_numpy(reference).to(self.device).permute(0, 3, 1, 2).float()  # (B, 3, H, W) 0..255
            dec = torch.from_numpy(decoded).to(self.device).permute(0, 3, 1, 2).float()
            ssim = ms_ssim(ref, dec, scales).tolist() if scales else [None] * len(ref)
            lpips = {
                net: model(ref / 127.5 - 1, dec / 127.5 - 1).flatten().tolist() for net, model in self.lpips.items()
            }
        none = [None] * len(ref)
        return [
            FrameScores(
                index=first_index + i,
                psnr_y=psnr(luma(r), luma(d)),
                psnr_rgb=psnr(r, d),
                ms_ssim=ssim[i],
                lpips_alex=lpips.get("alex", none)[i],
                lpips_vgg=lpips.get("vgg", none)[i],
            )
            for i, (r, d) in enumerate(zip(reference, decoded))
        ]
