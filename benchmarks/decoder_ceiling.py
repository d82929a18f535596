"""How well can the model's decoder draw these frames at all? The best any prompt could do.

    python benchmarks/decoder_ceiling.py [--model mini] [--frames 0,33,66,99,132] [--iterations 1500]

Every frame the codec shows is decoder(x0) for some latent x0 that the UNet makes from a prompt.
So no fitting, however long, beats the latent that is best for the decoder itself. This script
finds that latent for each frame directly (Adam on a free (1, C, h, w) latent, starting at the
VAE encoder's, MSE on [0, 1] through the decoder) and prints, per frame, PSNR-Y of:

    autoencoder   decoder(encoder(frame)): the scene-latent path
    ceiling       decoder(best latent) after --iterations steps: an upper bound for keyframes

On ../shared/data/sky_512.mp4 at 128x128 (crop), as benchmarks/fitting.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptus_codec.encoder.encode import frames_to_tensor  # noqa: E402
from promptus_codec.metrics.quality import luma, psnr  # noqa: E402
from promptus_codec.models.registry import load_model  # noqa: E402
from fitting import to_uint8  # noqa: E402
from warm_start import load_frames  # noqa: E402  (the frames as the encoder crops them)


def psnr_y(images: torch.Tensor, sources: np.ndarray) -> list[float]:
    """PSNR-Y of (B, 3, H, W) images in [0, 1], rounded to 8 bits as a decoder writes them."""
    return [psnr(luma(a), luma(b)) for a, b in zip(to_uint8(images.detach()), sources)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(ROOT.parent / "shared" / "data" / "sky_512.mp4"))
    parser.add_argument("--model", default="mini")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", default="0,33,66,99,132", help="frame indices (sky at 225k: keyframes 0, 11, ...)")
    parser.add_argument("--iterations", type=int, default=1500, help="Adam steps on each latent")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, device="cpu", dtype="fp32")
    model.requires_grad_(False)
    indices = [int(i) for i in args.frames.split(",")]
    sources = load_frames(args.clip, args.size, max(indices) + 1)[indices]  # (F, S, S, 3)
    targets = frames_to_tensor(sources, "cpu")  # (F, 3, S, S) in [0, 1]
    with torch.no_grad():
        encoded = model.encode_image(targets).float()  # (F, C, h, w)
        autoencoder = psnr_y(model.decode_latent(encoded).float(), sources)
    latent = torch.nn.Parameter(encoded.clone())
    optimizer = torch.optim.Adam([latent], lr=args.lr)
    for _ in range(args.iterations):
        loss = ((model.decode_latent(latent).float() - targets) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        ceiling = psnr_y(model.decode_latent(latent).float(), sources)
    print(f"{args.model}, {Path(args.clip).name} at {args.size}x{args.size}, {args.iterations} Adam steps a latent")
    print(f"{'frame':>6} {'autoencoder':>12} {'ceiling':>8}   (PSNR-Y, dB)")
    for index, ae, best in zip(indices, autoencoder, ceiling):
        print(f"{index:>6} {ae:>12.2f} {best:>8.2f}")
    print(f"{'mean':>6} {np.mean(autoencoder):>12.2f} {np.mean(ceiling):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
