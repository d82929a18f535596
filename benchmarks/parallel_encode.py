"""Wall time of a serial encode vs `--workers 2`, in one run, on a clip of >= 4 scenes (issue 12).

Both encodes run as `promptus encode` subprocesses, one after the other, so the ratio includes
everything a user waits for: Ray's start and stop, each worker loading the model, frames through
the object store, the merge. It also checks that the two streams are byte-identical and prints how
the plan's chunks balance (frames per chunk, and each worker's chunks and busy share).

    python benchmarks/parallel_encode.py                      # tiny, 128x128, 4 scenes of 24 frames
    python benchmarks/parallel_encode.py --model mini --scenes 6

Run it on a quiet machine: it reads /proc/loadavg first and waits (up to --wait-s) for the
1-minute load to fall below --max-load, and prints the load at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_scenes(path: Path, scenes: int, frames: int, size: int) -> None:
    """``scenes`` different drifting pictures of ``frames`` frames each: a cut between each two."""
    from promptus_codec.media import open_writer

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * 64 / size
    rng = np.random.default_rng(12)
    with open_writer(str(path), size, size, Fraction(30)) as writer:
        for s in range(scenes):
            colour = rng.uniform(20, 235, 3)
            freq = 5 + 4 * s
            for t in range(frames):
                wave = 60 * np.sin((xx * (s % 2) + yy * (1 - s % 2)) / freq + t / 6)
                frame = np.stack([colour[c] + wave * (1 if c == s % 3 else -0.5) for c in range(3)], -1)
                writer.write(np.clip(frame, 0, 255).astype(np.uint8))


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def encode(clip: Path, out: Path, args: list[str]) -> tuple[float, str]:
    command = [sys.executable, str(ROOT / "cli.py"), "encode", str(clip), "-o", str(out), *args]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"encode failed: {done.stderr.strip()[-2000:]}")
    return wall, done.stdout.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="tiny or mini (built in)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--frames", type=int, default=24, help="frames per scene (>= 16: PySceneDetect's minimum)")
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--first-iterations", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-load", type=float, default=0.5)
    p.add_argument("--wait-s", type=float, default=300)
    a = p.parse_args()

    deadline = time.monotonic() + a.wait_s
    while load() >= a.max_load and time.monotonic() < deadline:
        time.sleep(10)
    print(f"load average (1 min) at start: {load():.2f}  (cores: {os.cpu_count()})")
    args = ["--model", a.model, "--size", f"{a.size}x{a.size}", "--perceptual", "none", "--preset", "draft"]
    args += ["--iterations", str(a.iterations), "--first-iterations", str(a.first_iterations)]
    args += ["--rank", "4", "--interval", "8", "--refresh", "0"]
    with tempfile.TemporaryDirectory(prefix="promptus-parallel-") as folder:
        folder = Path(folder)
        clip = folder / "scenes.y4m"
        write_scenes(clip, a.scenes, a.frames, a.size)
        serial_s, serial_line = encode(clip, folder / "serial.prx", args)
        parallel_s, parallel_line = encode(clip, folder / "parallel.prx", [*args, "--workers", str(a.workers)])
        same = (folder / "serial.prx").read_bytes() == (folder / "parallel.prx").read_bytes()
        from promptus_codec.container.reader import read_prx
        from promptus_codec.container.records import SceneRecord

        prx = read_prx(folder / "serial.prx")
        starts = [r.first_frame for r in prx.records if isinstance(r, SceneRecord)] + [prx.end.frame_count]
    lengths = [b - a_ for a_, b in zip(starts, starts[1:])]
    print(f"clip: {a.scenes} x {a.frames} frames at {a.size}x{a.size}, model {a.model}, threads per chunk 1")
    print(f"plan: {len(lengths)} chunks of {lengths} frames (largest / mean {max(lengths) / np.mean(lengths):.2f})")
    print(f"serial:      {serial_s:7.1f} s   {serial_line}")
    print(f"--workers {a.workers}: {parallel_s:7.1f} s   {parallel_line}")
    busy = re.findall(r"(\d+) chunks? (\d+)% busy", parallel_line)
    if busy:
        print("per worker (chunks, busy share): " + ", ".join(f"{n}, {b}%" for n, b in busy))
    print(f"speed-up serial / --workers {a.workers}: {serial_s / parallel_s:.2f}x; byte-identical: {same}")
    print(f"load average (1 min) at end: {load():.2f}")


if __name__ == "__main__":
    main()
