"""`promptus decode --verify`: how far this decoder drifted from the encoder's reconstruction.

The encoder writes, after each keyframe, a ReconThumbnail record (format_spec.md §6.8): a
16 x 16 luma thumbnail of that keyframe as *it* decoded it. The decoder's frames match the
encoder's byte for byte only with the same torch build and batch size; on another CPU, GPU
or runtime they drift. The verifier recomputes each thumbnail from the decoder's own frame
and compares:

    decode_frames --on_record--> Keyframe k        (remember: k is the latest keyframe)
                  --frames-----> frame k           (keep it until its thumbnail arrives)
                  --on_record--> ReconThumbnail k  -> PSNR(stored, own thumbnail), max |diff|

By §5.1 O12 a ReconThumbnail follows its own Keyframe, so only one frame is held at a time.
A keyframe whose thumbnail PSNR is below ``min_psnr_db`` fails the check. Numpy only: the
ONNX decoder verifies without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from promptus_codec.container.records import KeyframeRecord, ReconThumbnailRecord, Record
from promptus_codec.metrics.quality import PSNR_CAP_DB
from promptus_codec.metrics.thumbnail import compare_thumbnails, luma_thumbnail

# Below this a keyframe fails. A decoder within 1 level of the encoder on every pixel gives
# thumbnails within 1 level too: at least 48.1 dB (20 log10 255). A wrong decode is far lower.
VERIFY_MIN_PSNR_DB = 40.0
VERIFY_FAILED_EXIT = 3  # decode --verify: frames written, but some keyframe drifted past the threshold


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def _levels(count: int) -> str:
    return _count(count, "level")


@dataclass(frozen=True)
class KeyframeCheck:
    frame_index: int
    psnr_db: float  # PSNR_CAP_DB (100) when identical
    max_levels: int  # the largest thumbnail difference, in 8-bit levels

    def line(self, min_psnr_db: float) -> str:
        verdict = "identical" if self.max_levels == 0 else f"max {_levels(self.max_levels)}"
        flag = "  DRIFT" if self.psnr_db < min_psnr_db else ""
        return f"verify: keyframe {self.frame_index:>6}  thumbnail PSNR {self.psnr_db:6.2f} dB  ({verdict}){flag}"


@dataclass
class Verifier:
    """Collects one KeyframeCheck per ReconThumbnail record while a stream decodes."""

    min_psnr_db: float = VERIFY_MIN_PSNR_DB
    checks: list[KeyframeCheck] = field(default_factory=list)
    keyframes: int = 0  # Keyframe records seen
    _keyframe: int | None = None  # the latest keyframe's frame index
    _image: np.ndarray | None = field(default=None, repr=False)  # its decoded frame, (H, W, 3) uint8

    def record(self, record: Record) -> None:
        """Feed every record as it arrives (decode_frames' ``on_record``)."""
        if isinstance(record, KeyframeRecord):
            self.keyframes += 1
            self._keyframe, self._image = record.frame_index, None
        elif isinstance(record, ReconThumbnailRecord) and self._image is not None:
            own = luma_thumbnail(self._image, record.thumbnail_width, record.thumbnail_height)
            self.checks.append(KeyframeCheck(record.frame_index, *compare_thumbnails(record.luma, own)))
            self._image = None

    def frame(self, index: int, image: np.ndarray) -> None:
        """Feed every decoded frame, in the coded geometry (before --restore-size)."""
        if index == self._keyframe:
            self._image = image

    @property
    def failed(self) -> list[KeyframeCheck]:
        return [c for c in self.checks if c.psnr_db < self.min_psnr_db]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """The closing line (or two) of the report."""
        if not self.checks:
            return (
                "verify: the stream holds no ReconThumbnail records (encoded with --no-verify-record or by another "
                "encoder): nothing to compare"
            )
        worst = min(self.checks, key=lambda c: (c.psnr_db, -c.max_levels))
        mean = float(np.mean([min(c.psnr_db, PSNR_CAP_DB) for c in self.checks]))
        unchecked = self.keyframes - len(self.checks)
        missing = f"; {unchecked} keyframe{'s' * (unchecked != 1)} without a thumbnail" if unchecked else ""
        worst_text = f"worst keyframe {worst.frame_index}: {worst.psnr_db:.2f} dB, max {_levels(worst.max_levels)}"
        if self.ok:
            return (
                f"verify: OK: {_count(len(self.checks), 'keyframe')} "
                f"match{'es' * (len(self.checks) == 1)} the encoder's "
                f"reconstruction (thumbnail PSNR mean "
                f"{mean:.2f} dB, {worst_text}; threshold {self.min_psnr_db:g} dB){missing}"
            )
        return (
            f"verify: FAILED: {len(self.failed)} of {len(self.checks)} keyframes drifted below {self.min_psnr_db:g} dB "
            f"from the encoder's reconstruction ({worst_text}; mean {mean:.2f} dB){missing}"
        )
