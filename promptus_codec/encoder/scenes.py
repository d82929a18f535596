"""Scene detection: where the encoder starts a new scene (a random-access point).

A scene starts at the first frame, at every cut, and wherever a scene would otherwise run
past ``refresh_frames`` (so that a viewer joining a live stream, or a seek, never waits longer
than that for a scene latent). Each start keeps its reason; the EncoderSettings record stores
them and ``promptus inspect`` shows them.

Cuts come from one of three detectors:

- ``content`` (default): PySceneDetect's ContentDetector on the coded RGB frames: the mean
  change of hue, saturation and luma between frames, threshold 27 on its 0-255 scale, scenes
  at least 15 frames long. Model-independent, calibrated on real video by its authors.
- ``adaptive``: PySceneDetect's AdaptiveDetector, the same score against a rolling average
  (threshold 3, a ratio): steadier on fast camera motion.
- ``latent``: the Promptus paper's appendix A.1, the relative RMS change of the model's own
  VAE latents averaged over a coarse 4 x 4 grid (threshold 0.8). It only means something
  with a trained VAE: on ``tiny``'s random encoder it fired 12 times on a clip with one cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Callable

from promptus_codec.errors import PrxError

if TYPE_CHECKING:
    import numpy as np

# numpy is imported inside the functions that use it: cli.py reads the defaults below at load.

DETECTORS = ("content", "adaptive", "latent")
DEFAULT_DETECTOR = "content"
DEFAULT_THRESHOLDS = {
    "content": 27.0,  # PySceneDetect's own default for ContentDetector
    "adaptive": 3.0,  # PySceneDetect's own default for AdaptiveDetector
    "latent": 0.8,  # relative RMS change of the grid; measured on the tiny model only
}
MIN_SCENE_FRAMES = 15  # PySceneDetect's default min_scene_len: a flash does not start a scene
GRID = 4  # cells per side of the latent detector's coarse grid


@dataclass(frozen=True)
class SceneStart:
    """The first frame of a scene and why it starts there."""

    frame: int
    reason: str  # "first" | "cut" | "refresh"


def coarse(latent: "np.ndarray", grid: int = GRID) -> "np.ndarray":
    """(C, h, w) -> (C, g, g) cell means, g = min(grid, h, w)."""
    import numpy as np

    rows = np.array_split(latent.astype(np.float64), min(grid, latent.shape[1]), axis=1)
    return np.stack(
        [
            np.stack([cell.mean(axis=(1, 2)) for cell in np.array_split(r, min(grid, latent.shape[2]), axis=2)], -1)
            for r in rows
        ],
        -2,
    )


def latent_change(previous: "np.ndarray", current: "np.ndarray") -> float:
    """RMS(current - previous) / mean(RMS(previous), RMS(current)) on the coarse grid: 0 = identical."""
    import numpy as np

    previous, current = coarse(previous), coarse(current)
    diff = np.sqrt(np.mean(np.square(current - previous, dtype=np.float64)))
    scale = 0.5 * (
        np.sqrt(np.mean(np.square(previous, dtype=np.float64))) + np.sqrt(np.mean(np.square(current, dtype=np.float64)))
    )
    return float(diff / max(scale, 1e-12))


class CutDetector:
    """Feed it each coded RGB frame (H, W, 3) uint8 in order; ``finish`` returns the cut frames."""

    def __init__(
        self,
        method: str = DEFAULT_DETECTOR,
        threshold: float | None = None,
        frame_rate: Fraction = Fraction(30),
        encode_latent: "Callable[[np.ndarray], np.ndarray] | None" = None,
    ):
        if method not in DETECTORS:
            raise PrxError(f"unknown scene detector {method!r}: choose one of {', '.join(DETECTORS)}")
        self.method = method
        self.threshold = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
        self.frames = 0
        self.cuts: list[int] = []
        self.changes: list[float] = []  # latent detector: change of frame t vs t-1
        self._previous: "np.ndarray | None" = None
        if method == "latent":
            if encode_latent is None:
                raise PrxError("the latent scene detector needs the model's VAE encoder")
            self._encode_latent = encode_latent
        else:
            self._fps = float(frame_rate)
            self._scenedetect = _pyscenedetect(method, self.threshold)

    def add(self, frame: "np.ndarray") -> None:
        index, self.frames = self.frames, self.frames + 1
        if self.method == "latent":
            latent = self._encode_latent(frame)  # (C, h, w)
            if self._previous is not None:
                self.changes.append(latent_change(self._previous, latent))
                if self.changes[-1] > self.threshold:
                    self.cuts.append(index)
            self._previous = latent
            return
        import numpy as np
        from scenedetect import FrameTimecode

        bgr = np.ascontiguousarray(frame[:, :, ::-1])  # PySceneDetect works on OpenCV's BGR
        self._collect(self._scenedetect.process_frame(FrameTimecode(index, self._fps), bgr))

    def finish(self) -> list[int]:
        """The cut frames (each the first frame of a new scene), ascending, never frame 0."""
        if self.method != "latent" and self.frames:
            from scenedetect import FrameTimecode

            self._collect(self._scenedetect.post_process(FrameTimecode(self.frames - 1, self._fps)))
        return sorted(set(c for c in self.cuts if 0 < c < self.frames))

    def _collect(self, cuts) -> None:
        self.cuts.extend(int(c.frame_num) if hasattr(c, "frame_num") else int(c) for c in cuts or ())


def _pyscenedetect(method: str, threshold: float):
    try:
        from scenedetect.detectors import AdaptiveDetector, ContentDetector
    except ImportError as exc:
        raise PrxError(
            f"scene detection {method!r} needs PySceneDetect: pip install 'promptus-codec[torch]' "
            "(or use --scene-detector latent)"
        ) from exc
    if method == "content":
        return ContentDetector(threshold=threshold, min_scene_len=MIN_SCENE_FRAMES)
    return AdaptiveDetector(adaptive_threshold=threshold, min_scene_len=MIN_SCENE_FRAMES)


def scene_starts(cuts: list[int], frame_count: int, refresh_frames: int = 0) -> list[SceneStart]:
    """Scene starts from the cuts, with a refresh start wherever a scene would pass ``refresh_frames``."""
    if frame_count <= 0:
        return []
    starts = [SceneStart(0, "first")]
    for bound, reason in [(c, "cut") for c in cuts] + [(frame_count, "end")]:
        while refresh_frames and bound - starts[-1].frame > refresh_frames:
            starts.append(SceneStart(starts[-1].frame + refresh_frames, "refresh"))
        if reason == "cut":
            starts.append(SceneStart(bound, "cut"))
    return starts


def scene_lengths(starts: list[SceneStart], frame_count: int) -> tuple[int, ...]:
    bounds = [s.frame for s in starts] + [frame_count]
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))
