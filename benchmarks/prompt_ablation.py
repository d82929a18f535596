"""Do the prompts carry the picture? Decode a stream as written, and with every keyframe's factors
replaced by the scene's first keyframe's (a decode-side ablation), and score both against the source.

    python benchmarks/prompt_ablation.py SOURCE.mp4 STREAM.prx [--json out.json]

Prints PSNR-Y over all frames, over the keyframes alone (the frames fitted directly) and
MS-SSIM, for the stream as coded and for the ablation. Both decodes use the torch runtime
and the decoder's own driver; only the Keyframe records' factors differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from promptus_codec.container.reader import PrxReader  # noqa: E402
from promptus_codec.container.records import KeyframeRecord, SceneRecord  # noqa: E402
from promptus_codec.decoder.driver import decode_frames  # noqa: E402
from promptus_codec.metrics.quality import luma, ms_ssim, psnr  # noqa: E402


class FirstKeyframeFactors:
    """A reader whose Keyframe records carry their scene's first keyframe's factors."""

    def __init__(self, reader: PrxReader):
        self.reader, self.header = reader, reader.header

    def __iter__(self):
        first = None
        for record in self.reader:
            if isinstance(record, SceneRecord):
                first = None
            elif isinstance(record, KeyframeRecord):
                if first is None:
                    first = record
                record = replace(first, frame_index=record.frame_index)
            yield record

    @property
    def end(self):
        return self.reader.end

    @property
    def truncation(self):
        return self.reader.truncation


def source_frames(path: str, header) -> list[np.ndarray]:
    from promptus_codec.media import apply_geometry, open_video

    with open_video(path) as video:
        return [apply_geometry(f, header.coded_width, header.coded_height, header.geometry) for f in video]


def decode(stream: Path, runtime, ablate: bool) -> tuple[list[np.ndarray], list[int]]:
    with open(stream, "rb") as f:
        reader = PrxReader(f)
        source = FirstKeyframeFactors(reader) if ablate else reader
        frames = [image for _, image in decode_frames(source, runtime)]
    with open(stream, "rb") as f:
        keyframes = [r.frame_index for r in PrxReader(f) if isinstance(r, KeyframeRecord)]
    return frames, keyframes


def scores(reference: list[np.ndarray], decoded: list[np.ndarray], keyframes: list[int]) -> dict:
    import torch

    from promptus_codec.metrics.quality import ms_ssim_scales

    def to_tensor(frames: list[np.ndarray]) -> "torch.Tensor":  # (B, 3, H, W) in [0, 255]
        return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()

    y = [psnr(luma(a), luma(b)) for a, b in zip(reference, decoded)]
    h, w = reference[0].shape[:2]
    msssim = ms_ssim(to_tensor(reference), to_tensor(decoded), scales=ms_ssim_scales(w, h))
    return {
        "psnr_y_all": float(np.mean(y)),
        "psnr_y_keyframes": float(np.mean([y[k] for k in keyframes])),
        "psnr_y_worst": float(np.min(y)),
        "ms_ssim": float(np.mean(np.asarray(msssim))),
        "psnr_y_per_frame": [round(v, 3) for v in y],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("stream", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from promptus_codec.decoder.torch_runtime import TorchRuntime
    from promptus_codec.models.registry import load_model

    with open(args.stream, "rb") as f:
        header = PrxReader(f).header
    model = load_model(header.model.name, device="cpu", dtype="fp32")
    runtime = TorchRuntime(model, header.generation)
    reference = source_frames(args.source, header)
    result = {}
    for name, ablate in (("as_coded", False), ("first_keyframe_factors", True)):
        decoded, keyframes = decode(args.stream, runtime, ablate)
        result[name] = scores(reference[: len(decoded)], decoded, keyframes)
        r = result[name]
        print(
            f"{name:>24}: PSNR-Y all {r['psnr_y_all']:.2f} dB, keyframes {r['psnr_y_keyframes']:.2f} dB, "
            f"worst {r['psnr_y_worst']:.2f} dB, MS-SSIM {r['ms_ssim']:.4f}"
        )
    loss = result["as_coded"]["psnr_y_all"] - result["first_keyframe_factors"]["psnr_y_all"]
    print(f"replacing the factors loses {loss:.2f} dB PSNR-Y over all frames")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
