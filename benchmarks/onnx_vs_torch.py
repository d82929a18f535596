"""How far the ONNX Runtime decode drifts from the torch decode of the same stream, frame by frame.

    python benchmarks/onnx_vs_torch.py                      # encode a tiny-model stream, then compare
    python benchmarks/onnx_vs_torch.py --stream s.prx       # compare an existing stream

Without --stream it encodes ../shared/data/sky_512.mp4 (or, when absent, a synthetic clip) with
``promptus encode --model tiny --size 128x128 --preset draft --perceptual none --bitrate 225k``.
It exports the stream's model at its longest keyframe interval (reusing an exported graph that fits),
decodes the whole clip with both runtimes through the same driver (each keyframe's latent feeds the
next interval, so differences can grow along the chain) and prints, per frame, the maximum absolute
difference in levels of 255 and the PSNR between the two decodes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SKY = ROOT.parent / "shared" / "data" / "sky_512.mp4"
ENCODE = ["--model", "tiny", "--size", "128x128", "--preset", "draft", "--perceptual", "none", "--bitrate", "225k"]


def encode_stream(folder: Path, frames: int) -> Path:
    """A tiny-model stream of the sky clip (or a synthetic clip), encoded by `promptus encode`."""
    source = SKY
    if not source.is_file():
        sys.path.insert(0, str(ROOT / "tests"))
        from model.streams import write_clip

        source = folder / "clip.y4m"
        write_clip(source, frames=frames, size=(128, 128))
    stream = folder / "stream.prx"
    command = [sys.executable, "-m", "promptus_codec.cli", "encode", str(source), "-o", str(stream), *ENCODE, "-q"]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    return stream


def decode(path: Path, runtime, batch: int) -> np.ndarray:
    from promptus_codec.container.reader import PrxReader
    from promptus_codec.decoder.driver import decode_frames

    with open(path, "rb") as f:
        return np.stack([image for _, image in decode_frames(PrxReader(f), runtime, max_batch=batch)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", type=Path, help="a .prx stream (default: encode one)")
    parser.add_argument(
        "--frames", type=int, default=60, help="frames of the synthetic clip, when sky_512.mp4 is absent"
    )
    parser.add_argument("--batch", type=int, default=16, help="decode --batch: frames per generation call")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from promptus_codec.container.reader import read_prx
    from promptus_codec.container.records import KeyframeRecord
    from promptus_codec.decoder.runtimes import longest_call
    from promptus_codec.decoder.onnx_runtime import OnnxRuntime
    from promptus_codec.decoder.torch_runtime import TorchRuntime
    from promptus_codec.engine.cache import find_graphs
    from promptus_codec.engine.export import export_graph
    from promptus_codec.engine.keys import GraphKey
    from promptus_codec.models.registry import load_model

    with tempfile.TemporaryDirectory() as scratch:
        stream = args.stream or encode_stream(Path(scratch), args.frames)
        prx = read_prx(stream, strict=False)
        header = prx.header
        keyframes = {r.frame_index for r in prx.records if isinstance(r, KeyframeRecord)}
        model = load_model(header.model.name, device="cpu", dtype="fp32")
        size = (header.coded_width, header.coded_height)
        batch = longest_call(stream, args.batch)
        graphs = find_graphs(GraphKey.create(header.model, header.generation, batch, *size))
        if batch not in graphs:
            exported = export_graph(model, batch, *size, constants=header.generation)
            print(f"exported {exported.path.name} in {exported.seconds:.1f} s", flush=True)
            graphs[batch] = exported.path
        torch_frames = decode(stream, TorchRuntime(model, header.generation), args.batch)
        onnx_frames = decode(stream, OnnxRuntime(graphs, device="cpu"), args.batch)

    rows = []
    for index, (a, b) in enumerate(zip(torch_frames, onnx_frames)):
        rows.append(
            {"frame": index, "max_abs_diff": int(np.abs(a.astype(int) - b.astype(int)).max()), "psnr_db": psnr(a, b)}
        )
    print(
        f"\n{len(rows)} frames, {size[0]}x{size[1]}, onnx graph batches {sorted(graphs)}, decode --batch {args.batch}"
    )
    print(f"{'frame':>5} {'max|diff|':>9} {'PSNR dB':>8}")
    for row in rows:
        mark = " keyframe" if row["frame"] in keyframes else ""
        print(f"{row['frame']:>5} {row['max_abs_diff']:>9} {row['psnr_db']:>8.2f}{mark}")
    finite = [r["psnr_db"] for r in rows if np.isfinite(r["psnr_db"])]
    whole = psnr(torch_frames, onnx_frames)
    print(
        f"\nwhole clip: max |diff| {max(r['max_abs_diff'] for r in rows)} levels, PSNR {whole:.2f} dB; "
        f"per frame PSNR min {min(finite, default=float('inf')):.2f} dB, "
        f"first 10 frames mean {np.mean(finite[:10]):.2f} dB, last 10 mean {np.mean(finite[-10:]):.2f} dB"
    )
    if args.json:
        args.json.write_text(json.dumps({"frames": rows, "psnr_db": whole}, indent=1))


if __name__ == "__main__":
    main()
