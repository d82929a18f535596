"""The decoder: the driver's math on the tiny model, `promptus decode` outputs and errors."""

from __future__ import annotations

import io
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
av = pytest.importorskip("av")

from click.testing import CliRunner

from promptus_codec.cli import main
from promptus_codec.container.reader import PrxReader, read_prx
from promptus_codec.container.records import KeyframeRecord, ModelIdentity, SceneRecord
from promptus_codec.decoder.driver import decode_frames, dequantized_factors
from promptus_codec.decoder.torch_runtime import TorchRuntime
from promptus_codec.media.color import rgb_to_yuv
from promptus_codec.noise import initial_noise
from promptus_codec.prompt import compose

from tolerances import dot_bound  # tests/ is on sys.path (rootdir conftest)

from .streams import CROP_96x64, make_stream

ROOT = pathlib.Path(__file__).resolve().parents[2]
SKY = ROOT.parent / "shared" / "data" / "reference-prompts" / "sky_rank8_interval10"

# Two scenes; uneven spacing; a rank change (8 -> 4) inside scene one.
LAYOUT = [[(0, 8), (4, 8), (7, 4), (12, 4)], [(13, 6), (16, 6)]]


@pytest.fixture(scope="module")
def stream(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("decode") / "s.prx"
    make_stream(path, tiny_model, LAYOUT)
    return path


def decode_with_driver(path, model, max_batch=16) -> np.ndarray:
    with open(path, "rb") as f:
        reader = PrxReader(f)
        runtime = TorchRuntime(model, reader.header.generation)
        return np.stack([image for _, image in decode_frames(reader, runtime, max_batch=max_batch)])


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def read_back(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return frames, stream


# ---------------------------------------------------------------------------
# The driver: which prompts and noisy inputs each frame gets (spec §9)
# ---------------------------------------------------------------------------


class RecordingRuntime:
    """A runtime that records what the driver asks for and returns x0 = a marker per frame."""

    name = "recording"

    def __init__(self, identity: ModelIdentity, latent_shape, image_size=(8, 8)):
        self._identity = identity
        self.latent_shape = latent_shape
        self.image_size = image_size
        self.calls = []

    def identity(self):
        return self._identity

    def generate(self, z_prev, noise, prompts):
        self.calls.append((z_prev.copy(), noise.copy(), prompts.copy()))
        marker = np.float32(len(self.calls))
        latents = np.full((len(prompts), *self.latent_shape), marker, np.float32)
        latents[:, 0, 0, 0] = np.arange(len(prompts))
        return latents, np.zeros((len(prompts), 3, *self.image_size), np.float32)


def reference_interpolation(prev: KeyframeRecord, nxt: KeyframeRecord, frame: int) -> np.ndarray:
    """Spec §9.2 written out directly."""
    p, q = dequantized_factors(prev), dequantized_factors(nxt)
    a = (frame - prev.frame_index) / (nxt.frame_index - prev.frame_index)
    if prev.rank == nxt.rank:
        u = np.float32(1 - a) * p.u + np.float32(a) * q.u
        v = np.float32(1 - a) * p.v + np.float32(a) * q.v
        return compose(u, v)
    return np.float32(1 - a) * compose(p.u, p.v) + np.float32(a) * compose(q.u, q.v)


def test_driver_prompts_noise_and_closed_loop(stream, tiny_model):
    prx = read_prx(stream)
    keyframes = {r.frame_index: r for r in prx.records if isinstance(r, KeyframeRecord)}
    scenes = {r.first_frame: r for r in prx.records if isinstance(r, SceneRecord)}
    runtime = RecordingRuntime(prx.header.model, prx.header.latent_shape)
    with open(stream, "rb") as f:
        frames = [i for i, _ in decode_frames(PrxReader(f), runtime, max_batch=3)]
    assert frames == list(range(17))
    noise = initial_noise(88, prx.header.latent_shape)
    prompts = np.concatenate([c[2] for c in runtime.calls])
    order = sorted(keyframes)
    for frame in range(17):
        if frame in scenes:
            np.testing.assert_array_equal(
                prompts[frame], compose(*(lambda f: (f.u, f.v))(dequantized_factors(keyframes[frame])))
            )
            continue
        prev = max(k for k in order if k < frame)
        nxt = min(k for k in order if k >= frame)
        assert prompts[frame].tobytes() == reference_interpolation(keyframes[prev], keyframes[nxt], frame).tobytes(), (
            frame
        )
    for z_prev, n, _ in runtime.calls:
        assert n.tobytes() == noise.tobytes()
    # Chunks of one interval share z_prev; a scene restarts from its own latent.
    z = [c[0] for c in runtime.calls]
    np.testing.assert_array_equal(z[0][0], scenes[0].latent_float32())  # frame 0
    # calls: [0] frame 0 | [1, 2] frames 1-4 | [3] 5-7 | [4, 5] 8-12 | [6] 13 | [7] 14-16
    np.testing.assert_array_equal(z[6][0], scenes[13].latent_float32())  # frame 13: new scene
    assert np.array_equal(z[4], z[5])  # frames 8..12 (K=5, batch 3): two calls, one noisy input
    assert z[4][0, 1, 0, 0] == 4 and z[4][0, 0, 0, 0] == 2  # x0 of keyframe 7: call 4's last frame


def test_batched_interval_equals_frame_by_frame(stream, tiny_model):
    whole = decode_with_driver(stream, tiny_model, max_batch=16)
    single = decode_with_driver(stream, tiny_model, max_batch=1)
    assert whole.shape == (17, 64, 64, 3)
    # Batched and single GEMMs differ by float32 rounding (tests/model/test_generate.py; measured
    # about 3e-5 on pictures), far below a level (1/255): rounding to 8 bits can flip a sample
    # that lies near a half level by 1, never by 2 (tolerances.levels_after_rounding).
    assert np.abs(whole.astype(int) - single.astype(int)).max() <= 1


def test_decode_is_deterministic_and_y4m_reads_back_exactly(stream, tiny_model, tmp_path):
    a, b = tmp_path / "a.y4m", tmp_path / "b.y4m"
    assert run("decode", stream, "-o", a, "-q").exit_code == 0
    assert run("decode", stream, "-o", b, "-q").exit_code == 0
    assert a.read_bytes() == b.read_bytes()
    frames = decode_with_driver(stream, tiny_model)
    decoded, s = read_back(a)
    assert len(decoded) == 17 and s.average_rate == 30
    for frame, got in zip(frames, decoded):
        y, u, v = rgb_to_yuv(frame, "420")
        planes = [np.frombuffer(bytes(p), np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in got.planes]
        assert all(np.array_equal(want, have) for want, have in zip((y, u, v), planes))
    assert len(set(frames[i].tobytes() for i in range(17))) == 17  # every frame differs


def test_y4m_444_to_stdout(stream, tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "decode", str(stream), "-o", "-", "--chroma", "444", "-q"],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"YUV4MPEG2 W64 H64 F30:1") and b"C444" in done.stdout[:80]
    with av.open(io.BytesIO(done.stdout), format="yuv4mpegpipe") as c:
        assert sum(1 for _ in c.decode(video=0)) == 17
    assert b"decoded 17 frames" in done.stderr


def test_mp4_and_png_outputs(stream, tiny_model, tmp_path):
    assert run("decode", stream, "-o", tmp_path / "o.mp4", "--crf", "12", "-q").exit_code == 0
    decoded, s = read_back(tmp_path / "o.mp4")
    assert len(decoded) == 17 and (s.width, s.height) == (64, 64) and s.average_rate == 30
    assert s.codec_context.name == "h264"
    result = run("decode", stream, "-o", tmp_path / "png", "-q")
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "png").iterdir())
    assert len(pngs) == 17
    frames = decode_with_driver(stream, tiny_model)
    with av.open(str(pngs[5])) as c:
        assert np.array_equal(next(c.decode(video=0)).to_ndarray(format="rgb24"), frames[5])


def test_restore_size(tiny_model, tmp_path):
    path = tmp_path / "crop.prx"
    make_stream(path, tiny_model, [[(0, 2), (2, 2)]], geometry=CROP_96x64)
    result = run("decode", path, "-o", tmp_path / "o.y4m", "--restore-size", "-q")
    assert result.exit_code == 0, result.output
    decoded, s = read_back(tmp_path / "o.y4m")
    assert (s.width, s.height) == (64, 64) and len(decoded) == 3  # the crop region, at source scale
    result = run("decode", path, "-o", tmp_path / "c.y4m", "-q")
    assert "(64x64)" in result.output


def test_truncated_stream_decodes_complete_intervals(stream, tmp_path):
    data = stream.read_bytes()
    prx = read_prx(stream)
    cut = tmp_path / "cut.prx"
    cut.write_bytes(data[: len(data) - 3000])  # inside the last keyframe (frame 16)
    result = CliRunner().invoke(main, ["decode", str(cut), "-o", str(tmp_path / "o.y4m"), "-q"])
    assert result.exit_code == 0
    decoded, _ = read_back(tmp_path / "o.y4m")
    assert len(decoded) == 14  # up to keyframe 13, the last complete interval
    assert "14 frames are complete" in result.stderr and "3 frames lost" in result.stderr
    assert prx.end.frame_count == 17


def test_corrupt_stream_is_one_line_and_writes_nothing(stream, tmp_path):
    data = bytearray(stream.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "bad.prx"
    bad.write_bytes(bytes(data))
    out = tmp_path / "o.y4m"
    result = run("decode", bad, "-o", out, "-q")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "CRC-32 mismatch" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.prx"]


def test_stream_for_another_model_is_refused(tiny_model, tmp_path):
    from dataclasses import replace

    path = tmp_path / "other.prx"

    class Other:
        spec = tiny_model.spec

        def identity(self):
            return replace(tiny_model.identity(), denoiser_sha256=b"\x42" * 32)

    make_stream(path, Other(), [[(0, 2)]])
    result = run("decode", path, "-o", tmp_path / "o.y4m", "-q")
    assert result.exit_code == 1
    line = result.output.strip()
    assert "424242424242" in line and tiny_model.identity().denoiser_sha256.hex()[:12] in line
    assert "--model tiny" in line and not (tmp_path / "o.y4m").exists()


def test_missing_sd_turbo_weights_one_message(stream, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("PROMPTUS_CHECKPOINTS", raising=False)
    done = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "decode", str(stream), "-o", "o.y4m", "--model", "sd-turbo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**__import__("os").environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 1
    message = done.stderr.strip()
    assert message.startswith("Error: SD-Turbo weights not found.") and "Traceback" not in message
    assert "checkpoints/sd_turbo.safetensors" in message and "hf download stabilityai/sd-turbo" in message
    assert not (tmp_path / "o.y4m").exists()


# ---------------------------------------------------------------------------
# The reference implementation's sky stream (../shared; skipped in a bare clone)
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not SKY.is_dir(), reason="../shared/data is not present")
def test_reference_sky_prompts_and_noise_follow_the_reference_formulas(tmp_path):
    """Per frame: N0, z_prev and c as the reference decoder computes them (data README)."""
    out = tmp_path / "sky.prx"
    assert run("import-legacy", SKY, "-o", out, "--fps", "30").exit_code == 0
    header = read_prx(out).header
    runtime = RecordingRuntime(ModelIdentity("sd-turbo", bytes(32), bytes(32), bytes(32)), header.latent_shape)
    with open(out, "rb") as f:
        assert len(list(decode_frames(PrxReader(f), runtime, max_batch=10))) == 141

    # The reference, in torch float32, from its own uint8 files.
    load = lambda name: torch.load(SKY / name, weights_only=True, map_location="cpu")  # noqa: E731
    noise = np.random.RandomState(88).randn(1, 4, 64, 64).astype(np.float32)
    init = load("init.pth").numpy()
    deq = {}
    for k in range(0, 141, 10):
        d = load(f"frame_{k:05d}.prompt")
        deq[k] = tuple(d[f"{x}_scale"] * (d[x].float() - d[f"{x}_zero_point"]) for x in "UV")

    def ordered_matmul(u, v):  # spec §9.2's summation order, in torch
        total = u[:, 0:1] * v[0:1, :]
        for j in range(1, u.shape[1]):
            total = total + u[:, j : j + 1] * v[j : j + 1, :]
        return total

    prompts = np.concatenate([c[2] for c in runtime.calls])
    for frame in range(141):
        k0 = (frame - 1) // 10 * 10 if frame else 0
        s = frame - k0
        (U0, V0), (U1, V1) = deq[k0], deq[k0 + 10] if frame else deq[0]
        u = (1 - s / 10) * U0 + (s / 10) * U1 if frame else U0
        v = (1 - s / 10) * V0 + (s / 10) * V1 if frame else V0
        assert prompts[frame].tobytes() == (ordered_matmul(u, v) / math.sqrt(8)).numpy().tobytes(), frame
        blas = (u @ v / math.sqrt(8)).numpy()  # the reference's own matmul sums in another order:
        # two rank-8 float32 sums (8 roundings per term, FMA or not) and a divide each
        assert (np.abs(prompts[frame] - blas) <= 2 * dot_bound(u.numpy(), v.numpy(), 8 + 1) / math.sqrt(8)).all(), frame
    assert all(c[1].tobytes() == noise.tobytes() for c in runtime.calls)
    assert runtime.calls[0][0].tobytes() == init.tobytes()  # frame 0 starts from init.pth
    assert runtime.calls[1][2].shape[0] == 10  # frames 1..10: one batch, one noisy input
    # frames 11..20 start from the latent generated for keyframe 10 (the last of call 1)
    assert runtime.calls[2][0][0, 1, 0, 0] == 2 and runtime.calls[2][0][0, 0, 0, 0] == 9
