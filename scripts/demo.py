"""The main job (`make demo`): encode a clip with the built-in mini model, decode it, inspect it.

Uses ../shared/data/sky_512.mp4 when it is present, otherwise a synthetic 2-second clip.
Every step is a real `promptus` command, printed before it runs. Outputs go to out/demo/, among them
strip.png: source and decoded frames side by side.

`mini` is a small model of SD-Turbo's shape trained here on a few minutes of video (scripts/train_builtin.py),
not SD-Turbo: its pictures are blurred versions of the input (README, "The mini model"). `tiny` has random
weights; its pictures are noise.
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
MODEL = "mini"
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


def write_strip(source: Path, decoded: Path, stream: Path, path: Path, count: int = 4) -> None:
    """Source and decoded frames at ``count`` even spacings, in one PNG."""
    from promptus_codec.container.reader import PrxReader
    from promptus_codec.media import apply_geometry, open_video
    from promptus_codec.metrics.plots import frame_strip

    with open(stream, "rb") as f:
        header = PrxReader(f).header
    with open_video(str(decoded)) as video:
        out = list(video)
    with open_video(str(source)) as video:
        src = [apply_geometry(frame, header.coded_width, header.coded_height, header.geometry) for frame in video]
    picks = [round(i * (len(out) - 1) / (count - 1)) for i in range(count)]
    panels = [(f"{label} {i}", frames[i]) for i in picks for label, frames in (("source", src), ("decoded", out))]
    frame_strip(panels, str(path), f"{source.name}: source and {MODEL}-model decode, {stream.stat().st_size} bytes")
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    source = SKY
    if not source.is_file():
        source = OUT / "synthetic.y4m"
        synthetic_clip(source)
    stream, recon = OUT / "clip.prx", OUT / "recon.y4m"
    # LPIPS needs ImageNet weights that cannot be downloaded here, hence --perceptual none.
    promptus(
        "encode",
        str(source),
        "-o",
        str(stream),
        "--bitrate",
        "225k",
        "--model",
        MODEL,
        "--size",
        "128x128",
        "--preset",
        "draft",
        "--perceptual",
        "none",
        "--recon",
        str(recon),
    )
    promptus("inspect", str(stream))
    promptus("validate", str(stream))
    promptus("decode", str(stream), "-o", str(OUT / "decoded.y4m"))
    promptus("decode", str(stream), "-o", str(OUT / "decoded.mp4"))
    write_strip(source, OUT / "decoded.y4m", stream, OUT / "strip.png")
    same = filecmp.cmp(recon, OUT / "decoded.y4m", shallow=False)
    print(f"decoder output {'equals' if same else 'DIFFERS FROM'} the encoder's own reconstruction, bit for bit")
    print(f"outputs in {OUT.relative_to(ROOT)}/ (strip.png: source and decoded frames, pair by pair)")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
