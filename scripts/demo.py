"""The main job (`make demo`): encode a clip with the built-in tiny model, decode it, inspect it.

Uses ../shared/data/sky_512.mp4 when it is present, otherwise a synthetic 2-second clip.
Every step is a real `promptus` command, printed before it runs. Outputs go to out/demo/.
"""

from __future__ import annotations

import filecmp
import shlex
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "demo"
SKY = ROOT.parent / "shared" / "data" / "sky_512.mp4"


def promptus(*args: str) -> None:
    command = [sys.executable, str(ROOT / "cli.py"), *args]
    print("$ promptus " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(command, check=True)


def synthetic_clip(path: Path, frames: int = 60, size: int = 256) -> None:
    """Two seconds of drifting colour bands, written with the codec's own media layer."""
    from promptus_codec.media import open_writer

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    with open_writer(str(path), size, size, Fraction(30)) as writer:
        for t in range(frames):
            r = 128 + 100 * np.sin((xx + 2 * t) / 23)
            g = 128 + 100 * np.cos((yy - t) / 31)
            b = 128 + 60 * np.sin((xx + yy) / 41 + t / 15)
            writer.write(np.stack([r, g, b], -1).astype(np.uint8))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    source = SKY
    if not source.is_file():
        source = OUT / "synthetic.y4m"
        synthetic_clip(source)
    stream, recon = OUT / "clip.prx", OUT / "recon.y4m"
    # LPIPS needs ImageNet weights that cannot be downloaded here, hence --perceptual none.
    promptus("encode", str(source), "-o", str(stream), "--bitrate", "225k", "--model", "tiny", "--size", "128x128",
             "--preset", "draft", "--perceptual", "none", "--recon", str(recon))
    promptus("inspect", str(stream))
    promptus("validate", str(stream))
    promptus("decode", str(stream), "-o", str(OUT / "decoded.y4m"))
    promptus("decode", str(stream), "-o", str(OUT / "decoded.mp4"))
    same = filecmp.cmp(recon, OUT / "decoded.y4m", shallow=False)
    print(f"decoder output {'equals' if same else 'DIFFERS FROM'} the encoder's own reconstruction, bit for bit")
    print(f"outputs in {OUT.relative_to(ROOT)}/ (the tiny model's pictures are not meant to look like the input)")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
