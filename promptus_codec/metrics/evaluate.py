"""Score a decoded video against its source, frame by frame: what `promptus eval` runs.

    SOURCE --open_video--> frames --fit onto the decoded size (media.geometry)--+
                                                                               +--> Scorer, in batches --> EvalResult
    DECODED --open_video--> frames --------------------------------------------+

Sizes: the decoded size is the reference. A source of another size is fitted onto it with
the encoder's own geometry (plan_geometry / apply_geometry). When the aspect ratios
differ the fit matters, so it must be named (--fit crop, the encoder's default, pad or
scale); equal aspect ratios need no choice.

Frame counts: the common prefix is scored. Counts that differ by at most
``frame_tolerance`` frames (default 2: a dropped or duplicated frame at the end) give a
note; a larger difference is refused, since it usually means the wrong pair of files.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from promptus_codec.errors import MediaError
from promptus_codec.metrics.quality import LPIPS_NETS, SEVERE_LPIPS, FrameScores, Scorer, ms_ssim_scales

DEFAULT_FRAME_TOLERANCE = 2
BATCH = 8  # frame pairs per scoring call


@dataclass
class EvalResult:
    """Per-frame scores of one decoded video, and what was (not) measured."""

    frames: list[FrameScores]
    width: int
    height: int
    source_frames: int
    decoded_frames: int
    lpips_missing: dict[str, str]  # net -> why LPIPS-net is n/a
    lpips_random: bool = False  # LPIPS from untrained backbones: plumbing tests only
    notes: list[str] = field(default_factory=list)

    @property
    def ms_ssim_scales(self) -> int:
        return ms_ssim_scales(self.width, self.height)

    def mean(self, metric: str) -> float | None:
        values = [getattr(f, metric) for f in self.frames]
        return None if not values or None in values else float(np.mean(values))

    def severe_share(self, net: str = "alex") -> float | None:
        """Share of frames with LPIPS-net above SEVERE_LPIPS; None when LPIPS-net is n/a."""
        values = [getattr(f, f"lpips_{net}") for f in self.frames]
        return None if not values or None in values else float(np.mean([v > SEVERE_LPIPS for v in values]))

    def summary(self) -> dict:
        """Means over the scored frames and the severe-frame shares (None = n/a)."""
        out = {m: self.mean(m) for m in ("psnr_y", "psnr_rgb", "ms_ssim", "lpips_alex", "lpips_vgg")}
        out.update({f"severe_share_{net}": self.severe_share(net) for net in LPIPS_NETS})
        return out

    def to_json(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "frames_scored": len(self.frames),
            "source_frames": self.source_frames,
            "decoded_frames": self.decoded_frames,
            "ms_ssim_scales": self.ms_ssim_scales,
            "lpips_missing": self.lpips_missing,
            "lpips_random_backbone": self.lpips_random,
            "severe_lpips_threshold": SEVERE_LPIPS,
            "notes": self.notes,
            "summary": self.summary(),
            "frames": [asdict(f) for f in self.frames],
        }


def measure(
    reference: Iterable[np.ndarray],
    decoded: Iterable[np.ndarray],
    scorer: Scorer,
    frame_tolerance: int = DEFAULT_FRAME_TOLERANCE,
    capture: int | None = None,
) -> tuple[EvalResult, tuple[np.ndarray, np.ndarray] | None]:
    """Score two streams of RGB uint8 (H, W, 3) frames over their common prefix.

    Returns the result and, when ``capture`` is a scored frame index, that (reference,
    decoded) pair (for frame strips). Counts differing by more than ``frame_tolerance``
    raise MediaError.
    """
    ref_it, dec_it = iter(reference), iter(decoded)
    scores: list[FrameScores] = []
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    captured, shape = None, None
    source_extra = decoded_extra = 0  # frames past the common prefix
    for index, r in enumerate(ref_it):
        d = next(dec_it, None)
        if d is None:
            source_extra = 1 + sum(1 for _ in ref_it)
            break
        if r.shape != d.shape:
            raise MediaError(f"frame {index}: source is {r.shape} but decoded is {d.shape}")
        shape = r.shape
        if index == capture:
            captured = (r, d)
        batch.append((r, d))
        if len(batch) == BATCH:
            scores += _score(scorer, batch, len(scores))
            batch = []
    else:
        decoded_extra = sum(1 for _ in dec_it)
    if batch:
        scores += _score(scorer, batch, len(scores))
    n = len(scores)
    notes = check_counts(n + source_extra, n + decoded_extra, frame_tolerance)
    if shape is None:
        raise MediaError("nothing to compare: a video has no frames")
    result = EvalResult(
        scores,
        shape[1],
        shape[0],
        n + source_extra,
        n + decoded_extra,
        dict(scorer.lpips_missing),
        scorer.random_backbone,
        notes,
    )
    return result, captured


def _score(scorer: Scorer, batch: list[tuple[np.ndarray, np.ndarray]], first_index: int) -> list[FrameScores]:
    return scorer.score(
        np.stack([r for r, _ in batch]), np.stack([d for _, d in batch]), first_index
    )  # (B, H, W, 3) each


def check_counts(source: int, decoded: int, tolerance: int) -> list[str]:
    """Notes for a small frame-count mismatch; MediaError for a large one."""
    if source == decoded:
        return []
    common = min(source, decoded)
    if abs(source - decoded) > tolerance:
        raise MediaError(
            f"source has {source} frames and decoded {decoded}: they differ by more than {tolerance}; "
            f"pass --frame-tolerance {abs(source - decoded)} to score the first {common} frames"
        )
    return [f"source has {source} frames and decoded {decoded}: scored the first {common}"]


def fit_source(source: Iterable[np.ndarray], size: tuple[int, int], target: tuple[int, int], fit: str | None):
    """Source frames of ``size`` (W, H) fitted onto ``target`` (W, H) the way the encoder
    fits a source onto its coded frame. Returns (frames, notes)."""
    from promptus_codec.media import apply_geometry, plan_geometry

    if size == target:
        return iter(source), []
    (sw, sh), (w, h) = size, target
    if fit is None and sw * h != sh * w:
        raise MediaError(
            f"source is {sw}x{sh} but decoded is {w}x{h}, another shape: pass --fit crop (the encoder's "
            f"default), pad or scale, whichever the video was encoded with"
        )
    _, _, geometry = plan_geometry(sw, sh, size=(w, h), fit=fit or "scale", multiple=1, minimum=1)
    frames = (apply_geometry(frame, w, h, geometry) for frame in source)
    how = f"with --fit {fit}, as the encoder does" if fit else "(same aspect ratio)"
    return frames, [f"source {sw}x{sh} scaled to the decoded {w}x{h} {how}"]


def evaluate_files(
    source_path: str,
    decoded_path: str,
    scorer: Scorer,
    fit: str | None = None,
    frame_tolerance: int = DEFAULT_FRAME_TOLERANCE,
) -> EvalResult:
    """Score DECODED against SOURCE (any video, y4m or PNG folder the media layer reads)."""
    from promptus_codec.media import open_video

    with open_video(source_path) as source, open_video(decoded_path) as decoded:
        if source.frame_count and decoded.frame_count:
            check_counts(source.frame_count, decoded.frame_count, frame_tolerance)  # refuse before any work
        reference, notes = fit_source(source, (source.width, source.height), (decoded.width, decoded.height), fit)
        result, _ = measure(reference, decoded, scorer, frame_tolerance)
    result.notes[:0] = notes
    return result


# -- output ----------------------------------------------------------------------------

METRIC_LABELS = {  # summary key -> (label, format)
    "psnr_y": ("PSNR-Y (dB)", "{:.2f}"),
    "psnr_rgb": ("PSNR-RGB (dB)", "{:.2f}"),
    "ms_ssim": ("MS-SSIM", "{:.4f}"),
    "lpips_alex": ("LPIPS-alex", "{:.4f}"),
    "lpips_vgg": ("LPIPS-vgg", "{:.4f}"),
}


def fmt(value: float | None, spec: str = "{:.4f}") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else spec.format(value)


def metric_label(key: str, result: EvalResult) -> str:
    label = METRIC_LABELS[key][0]
    if key == "ms_ssim":
        return f"{label} ({result.ms_ssim_scales} scales)" if result.ms_ssim_scales else f"{label} (frame too small)"
    if key.startswith("lpips") and result.lpips_random:
        return f"{label} [RANDOM BACKBONE: plumbing test, not a measurement]"
    return label


def format_table(result: EvalResult) -> str:
    """The summary `promptus eval` prints: mean, min and max per metric, then the n/a reasons."""
    rows = [("metric", "mean", "min", "max")]
    for key, (_, spec) in METRIC_LABELS.items():
        values = [getattr(f, key) for f in result.frames]
        known = None not in values
        rows.append(
            (
                metric_label(key, result),
                fmt(result.mean(key), spec),
                fmt(min(values) if known else None, spec),
                fmt(max(values) if known else None, spec),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{len(result.frames)} frames scored ({result.width}x{result.height})"]
    lines += [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    ]
    for net in LPIPS_NETS:
        share = result.severe_share(net)
        lines.append(
            f"severe frames (LPIPS-{net} > {SEVERE_LPIPS}): "
            + (
                "n/a"
                if share is None
                else f"{share * 100:.1f}% ({round(share * len(result.frames))} of {len(result.frames)})"
            )
        )
    lines += list(result.lpips_missing.values())
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def write_json(path: str, document: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2, allow_nan=False)
        f.write("\n")


def write_frames_csv(path: str, result: EvalResult) -> None:
    """One row per frame; an empty cell is n/a."""
    names = [f.name for f in fields(FrameScores)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for frame in result.frames:
            writer.writerow(["" if v is None else v for v in (getattr(frame, n) for n in names)])
