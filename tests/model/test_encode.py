"""The encoder on the tiny model: fitting, rate control, scenes, resume, closed loop (bad input: test_bad_input.py)."""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
av = pytest.importorskip("av")

from click.testing import CliRunner

from promptus_codec import __version__
from promptus_codec.cli import main
from promptus_codec.container.reader import read_prx
from promptus_codec.container.records import (
    EncoderSettingsRecord,
    KeyframeRecord,
    PaddingRecord,
    QualityRecord,
    SceneRecord,
)
from promptus_codec.encoder.fit import FitTask, PerceptualLoss, fit_keyframe
from promptus_codec.encoder.options import FitConfig
from promptus_codec.generate import GenerationStep, initial_noise_tensor
from promptus_codec.prompt import compose, dequantize

from .streams import write_clip

ROOT = pathlib.Path(__file__).resolve().parents[2]
SKY = ROOT.parent / "shared" / "data" / "sky_512.mp4"
FAST = [
    "--model",
    "tiny",
    "--perceptual",
    "none",
    "--preset",
    "draft",
    "--iterations",
    "3",
    "--first-iterations",
    "5",
    "-q",
]


def encode(*args):
    return CliRunner().invoke(main, ["encode", *map(str, args)])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.y4m"
    write_clip(path, frames=60)  # 2 s at 30 fps
    return path


def test_fitting_loss_falls(tiny_model):
    """Fitting one keyframe alone from a scene latent towards a picture the model itself draws from
    a rank-4 prompt (so the target is reachable): the MSE ends far below its start.

    Measured: 6% of the first loss after 60 iterations. A last-bit difference between CPUs cannot
    turn that into the 20% asserted; a fit that does not descend stays near 100%."""
    generator = GenerationStep(tiny_model)
    rng = np.random.default_rng(3)
    z_prev = torch.from_numpy(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
    noise = initial_noise_tensor(tiny_model.spec.generation, (4, 8, 8))
    seeded = torch.Generator().manual_seed(99)
    hidden_prompt = compose(torch.randn(77, 4, generator=seeded), torch.randn(4, 1024, generator=seeded))
    with torch.no_grad():
        _, target = generator(z_prev, noise, hidden_prompt[None])  # (1, 3, 64, 64)
    config = FitConfig(first_iterations=60, early_stop_patience=0, alpha=1.0)
    result = fit_keyframe(
        generator, FitTask(target.float(), z_prev, noise, frame_index=0, rank=4), config, PerceptualLoss(None)
    )
    assert result.iterations == 60
    assert result.best_loss < 0.2 * result.initial_loss
    assert result.u.dtype == np.int8 and result.u.shape == (77, 4) and result.v.shape == (4, 1024)


def test_a_start_of_another_rank_becomes_its_best_approximation_at_the_new_rank():
    """A warm start across a rank change (rate control gives neighbours ranks such as 4 and 5).

    Down, U V / sqrt(r) is the start's prompt truncated to its r largest singular values; up, it is
    the start's prompt plus seeded small components. Tolerances: float32 SVDs and products of a
    77 x 1024 prompt reconstruct it to ~1e-6 of its largest singular value; 1e-5 of it is asserted."""
    import math

    from promptus_codec.encoder.fit import _initial_factors, resized_start
    from promptus_codec.prompt import Factors

    g = torch.Generator().manual_seed(0)
    start = Factors(0, torch.randn(77, 5, generator=g), torch.randn(5, 1024, generator=g))
    p, s, qt = torch.linalg.svd(start.prompt().double(), full_matrices=False)
    u, v = resized_start(start, 4, torch.Generator().manual_seed(1))  # (77, 4), (4, 1024)
    truncated = (p[:, :4] * s[:4]) @ qt[:4]
    assert torch.allclose((u @ v / 2).double(), truncated, atol=1e-5 * float(s[0]), rtol=0)
    assert torch.allclose(u.norm(dim=0), v.norm(dim=1), rtol=1e-5)  # U and V equally large

    smaller = Factors(0, start.u[:, :3], start.v[:3])
    u, v = resized_start(smaller, 5, torch.Generator().manual_seed(1))
    top = float(torch.linalg.svdvals(smaller.prompt().double())[0])
    assert torch.allclose((u[:, :3] @ v[:3] / math.sqrt(5)).double(), smaller.prompt().double(), atol=1e-5 * top)
    assert 0 < u[:, 3:].abs().max() < 1 and 0 < v[3:].abs().max() < 1  # nonzero: zero gets no gradient
    assert torch.equal(u, resized_start(smaller, 5, torch.Generator().manual_seed(1))[0])  # seeded
    kept = u[:, :3].gather(0, u[:, :3].abs().argmax(0, keepdim=True))
    assert (kept > 0).all()  # each component's sign fixed: its largest entry in U positive

    # a component the start lost (a factor quantised to 0) is seeded like one past its rank
    lost = Factors(0, torch.cat([start.u[:, :4], torch.zeros(77, 1)], 1), start.v)
    u, v = resized_start(lost, 6, torch.Generator().manual_seed(1))
    assert torch.allclose((u[:, :4] @ v[:4] / math.sqrt(6)).double(), lost.prompt().double(), atol=1e-5 * top)
    assert u[:, 4:].norm(dim=0).min() > 0.5 and v[4:].norm(dim=1).min() > 1  # 0.1 N(0, 1): ~0.9 and ~3.2

    for frame_index in (14, 15):  # fitting starts there, seeded by the keyframe: rank 3 up to 5
        task = FitTask(
            torch.zeros(1, 3, 64, 64), torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), frame_index, 5, None, smaller
        )
        u0, _ = _initial_factors(task, 77, 1024, FitConfig())
        assert torch.equal(u0, resized_start(smaller, 5, torch.Generator().manual_seed(frame_index))[0])
    assert not torch.equal(u0, resized_start(smaller, 5, torch.Generator().manual_seed(14))[0])


def test_l1_weight_pulls_the_fitted_prompt_towards_zero(tiny_model):
    """The mean |c| term: with weight 1 the fitted prompt ends far smaller than without it.

    Adam moves every entry ~lr a step whatever the gradient's scale, so 30 steps whose
    gradient is dominated by sign(c) shrink the seeded N(0, 1) factors' product by far more
    than the factor of 2 asserted; with weight 0 only the MSE moves them."""
    generator = GenerationStep(tiny_model)
    rng = np.random.default_rng(4)
    target = torch.from_numpy(rng.uniform(0.2, 0.8, (1, 3, 64, 64)).astype(np.float32))
    z_prev = torch.from_numpy(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
    noise = initial_noise_tensor(tiny_model.spec.generation, (4, 8, 8))

    def fitted_abs_prompt(l1_weight: float) -> float:
        config = FitConfig(first_iterations=30, early_stop_patience=0, alpha=1.0, l1_weight=l1_weight, init="random")
        r = fit_keyframe(generator, FitTask(target, z_prev, noise, 0, 4), config, PerceptualLoss(None))
        u, v = dequantize(r.u, r.u_scale, r.u_zero_point), dequantize(r.v, r.v_scale, r.v_zero_point)
        return float(np.abs(compose(u, v)).mean())

    assert fitted_abs_prompt(1.0) < 0.5 * fitted_abs_prompt(0.0)


def test_l1_weight_option_is_recorded(clip, tmp_path):
    out = tmp_path / "o.prx"
    result = encode(clip, "-o", out, "--rank", "2", "--interval", "30", "--size", "64x64", "--l1-weight", "0", *FAST)
    assert result.exit_code == 0, result.output
    settings = next(r for r in read_prx(out).records if isinstance(r, EncoderSettingsRecord)).settings
    assert settings["fit"]["l1_weight"] == 0 and settings["fit_overrides"]["l1_weight"] == 0
    assert encode(clip, "-o", tmp_path / "x.prx", "--l1-weight", "-1", *FAST).exit_code == 2  # refused, one line


@pytest.mark.parametrize("target", [100, 225, 550])
def test_achieved_bitrate_within_one_percent(clip, tmp_path, target):
    out = tmp_path / "o.prx"
    result = encode(clip, "-o", out, "--bitrate", f"{target}k", "--size", "64x64", *FAST)
    assert result.exit_code == 0, result.output
    achieved = out.stat().st_size * 8 / 2.0 / 1000  # 60 frames at 30 fps
    assert abs(achieved / target - 1) < 0.01
    assert f"achieved {achieved:.2f} kb/s" in result.output
    prx = read_prx(out)
    assert prx.end.frame_count == 60
    quality = [r for r in prx.records if isinstance(r, QualityRecord)]
    assert sum(len(q.psnr_db) for q in quality) == 60  # one figure per frame
    settings = next(r for r in prx.records if isinstance(r, EncoderSettingsRecord)).settings
    assert settings["target_kbps"] == target and settings["fit"]["iterations"] == 3


@pytest.mark.parametrize("model, max_interval", [("tiny", 0), ("mini", 12)])
def test_rate_control_limits_default_to_the_models_own(clip, tmp_path, model, max_interval):
    """Without --min-rank/--max-interval rate control uses the model's ModelSpec limits, and the settings
    say which; at 100k on 60 frames rank 8 needs K ~ 30, so mini's limits (K 12, rank 4) decide its K."""
    options = [*FAST[FAST.index("--perceptual") :], "--model", model, "--bitrate", "100k", "--size", "64x64"]

    def keyframes_and_settings(out, *extra):
        assert encode(clip, "-o", out, *options, *extra).exit_code == 0
        records = read_prx(out).records
        settings = next(r for r in records if isinstance(r, EncoderSettingsRecord)).settings
        return [r for r in records if isinstance(r, KeyframeRecord)], settings

    records, settings = keyframes_and_settings(tmp_path / "o.prx")
    assert (settings["min_rank"], settings["max_interval"]) == (8, max_interval)
    keyframes, ranks = [r.frame_index for r in records], [r.rank for r in records]
    if max_interval:  # K stopped where the rank first reached mini's least trained rank, 4
        assert 4 <= min(ranks) < 8 and max(b - a for a, b in zip(keyframes, keyframes[1:])) >= max_interval
    unlimited, settings = keyframes_and_settings(tmp_path / "unlimited.prx", "--max-interval", 0)
    assert settings["max_interval"] == 0
    unlimited = [r.frame_index for r in unlimited]
    assert (len(unlimited) < len(keyframes)) if max_interval else (unlimited == keyframes)


def test_hard_cut_gives_two_scenes_with_keyframes_on_both_sides(tmp_path):
    clip = tmp_path / "cut.y4m"
    write_clip(clip, frames=40, cut_at=23)
    out = tmp_path / "o.prx"
    result = encode(clip, "-o", out, "--rank", "2", "--interval", "8", "--size", "64x64", *FAST)
    assert result.exit_code == 0, result.output
    records = read_prx(out).records
    scenes = [r.first_frame for r in records if isinstance(r, SceneRecord)]
    keyframes = [r.frame_index for r in records if isinstance(r, KeyframeRecord)]
    assert scenes == [0, 23]
    assert 22 in keyframes and 23 in keyframes  # last frame before the cut, first after
    assert keyframes == [0, 8, 16, 22, 23, 31, 39]
    inspected = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).output)
    assert [(s["first_frame"], s["reason"]) for s in inspected["scenes"]] == [(0, "first"), (23, "cut")]
    text = CliRunner().invoke(main, ["inspect", str(out)]).output
    assert "frame     23" in text and text.split("frame     23")[1].split("\n")[0].rstrip().endswith("cut")


def test_refresh_starts_scenes_periodically(clip, tmp_path):
    out = tmp_path / "o.prx"
    result = encode(clip, "-o", out, "--rank", "2", "--interval", "10", "--refresh", "0.5", "--size", "64x64", *FAST)
    assert result.exit_code == 0, result.output
    assert [r.first_frame for r in read_prx(out).records if isinstance(r, SceneRecord)] == [0, 15, 30, 45]


def test_decode_equals_the_encoders_reconstruction(clip, tmp_path):
    out, recon, decoded = tmp_path / "o.prx", tmp_path / "recon.y4m", tmp_path / "dec.y4m"
    result = encode(clip, "-o", out, "--bitrate", "225k", "--size", "64x64", "--recon", recon, *FAST)
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, ["decode", str(out), "-o", str(decoded), "-q"]).exit_code == 0
    assert decoded.read_bytes() == recon.read_bytes()


@pytest.fixture(scope="module")
def reference_encode(clip, tmp_path_factory):
    """One uninterrupted encode whose bytes the resume tests must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "ref.prx"
    result = encode(clip, "-o", out, "--rank", "2", "--interval", "8", "--refresh", "0.5", "--size", "64x64", *FAST)
    assert result.exit_code == 0, result.output
    return out


def resume_args(clip, out):
    return [clip, "-o", out, "--rank", "2", "--interval", "8", "--refresh", "0.5", "--size", "64x64", *FAST]


def work_dir(out) -> pathlib.Path:
    return pathlib.Path(str(out) + ".work")


def interrupted_encode(monkeypatch, args, chunks_done: int) -> None:
    """An encode that stops (as if killed) after ``chunks_done`` chunk files are on disk (all: before the merge)."""
    from promptus_codec.encoder import encode as encode_module
    from promptus_codec.encoder.chunks import WorkDir

    store, calls = WorkDir.store, []

    def store_then_die(self, chunk, data):
        if len(calls) == chunks_done:
            raise RuntimeError("killed")
        calls.append(chunk.index)
        return store(self, chunk, data)

    with monkeypatch.context() as patch:
        patch.setattr(WorkDir, "store", store_then_die)
        patch.setattr(encode_module, "merge", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
        result = encode(*args)
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError), result.output


def test_resume_from_any_set_of_finished_chunks_is_byte_identical(clip, reference_encode, tmp_path, monkeypatch):
    """A killed encode leaves the plan and the chunks it finished; resuming gives the same bytes.

    Damaged, truncated or foreign chunk files, and temporaries a kill left behind, are fitted again.
    """
    data = reference_encode.read_bytes()
    records = read_prx(reference_encode).records
    assert sum(isinstance(r, SceneRecord) for r in records) == 4
    out = tmp_path / "o.prx"
    work = work_dir(out)
    for done, damage in ((0, None), (1, None), (4, None), (4, "flip"), (3, "cut"), (2, "delete"), (1, "temp")):
        interrupted_encode(monkeypatch, resume_args(clip, out), done)
        assert (work / "plan.json").is_file() and not out.exists()
        chunks = sorted(work.glob("chunk-*.prx"))
        assert len(chunks) == done
        if damage == "flip":
            raw = bytearray(chunks[-1].read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            chunks[-1].write_bytes(bytes(raw))
        elif damage == "cut":
            chunks[0].write_bytes(chunks[0].read_bytes()[:-9])
        elif damage == "delete":
            chunks[0].unlink()
        elif damage == "temp":
            (work / ".chunk-00001-x.prx.abcd.partial").write_bytes(b"half a chunk")
        result = encode(*resume_args(clip, out), "--resume")
        assert result.exit_code == 0, (done, damage, result.output)
        assert out.read_bytes() == data, (done, damage)
        assert not work.exists()
        out.unlink()


def test_resume_refuses_a_plan_from_another_input_or_settings(clip, reference_encode, tmp_path, monkeypatch):
    out = tmp_path / "o.prx"
    interrupted_encode(monkeypatch, resume_args(clip, out), 1)
    args = resume_args(clip, out)
    args[args.index("--rank") + 1] = "3"
    result = encode(*args, "--resume")
    assert result.exit_code == 1 and "other settings (rank: 2 -> 3)" in result.output, result.output
    other = tmp_path / "other.y4m"
    write_clip(other, frames=60, cut_at=30)
    args = resume_args(clip, out)
    args[0] = other
    result = encode(*args, "--resume")
    assert result.exit_code == 1 and "another input" in result.output, result.output
    result = encode(*resume_args(clip, out), "--resume", "--threads", "2")
    assert result.exit_code == 1 and "threads: 1 -> 2" in result.output, result.output
    plan_file = work_dir(out) / "plan.json"  # a plan an older encoder made: it may have fitted other bytes
    planned = plan_file.read_text()
    plan = json.loads(planned)
    plan["settings"]["encoder"] = "promptus-codec 0.1.0"
    plan_file.write_text(json.dumps(plan))
    result = encode(*resume_args(clip, out), "--resume")
    changed = f"encoder: 'promptus-codec 0.1.0' -> 'promptus-codec {__version__}'"
    assert result.exit_code == 1 and changed in result.output, result.output
    plan_file.write_text(planned)
    result = encode(*resume_args(clip, tmp_path / "none.prx"), "--resume")
    assert result.exit_code == 1 and "nothing to resume" in result.output
    result = encode(*resume_args(clip, out), "--resume")  # the plan is still good after all that
    assert result.exit_code == 0 and out.read_bytes() == reference_encode.read_bytes()


def test_ctrl_c_leaves_a_resumable_work_folder(clip, reference_encode, tmp_path):
    out = tmp_path / "o.prx"
    work = work_dir(out)
    args = [sys.executable, str(ROOT / "cli.py"), "encode", *map(str, resume_args(clip, out))]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(work.glob("chunk-*.prx")) and time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"encode ended before it could be interrupted: {process.communicate()}")
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the encode finished before SIGINT arrived")
    assert process.returncode == 130, stderr
    assert "--resume" in stderr and (work / "plan.json").exists() and not out.exists()
    result = encode(*resume_args(clip, out), "--resume")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == reference_encode.read_bytes()


def test_y4m_on_stdin(clip, tmp_path):
    out = tmp_path / "o.prx"
    with open(clip, "rb") as stdin:
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "cli.py"),
                "encode",
                "-",
                "-o",
                str(out),
                "--rank",
                "1",
                "--interval",
                "30",
                "--size",
                "64x64",
                *FAST,
            ],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr
    assert read_prx(out).end.frame_count == 60


def test_padding_fills_the_budget(clip, tmp_path):
    out = tmp_path / "o.prx"
    assert encode(clip, "-o", out, "--bitrate", "225k", "--size", "64x64", *FAST).exit_code == 0
    padding = [r for r in read_prx(out).records if isinstance(r, PaddingRecord)]
    assert len(padding) <= 1 and all(p.size < 77 + 1024 for p in padding)  # less than one rank step


@pytest.mark.slow
@pytest.mark.skipif(not SKY.is_file(), reason="../shared/data is not present")
def test_encode_a_few_frames_of_the_real_sky_clip(tmp_path):
    """The real clip through the real input path: 12 frames at 128x128."""
    frames = tmp_path / "frames"
    frames.mkdir()
    from promptus_codec.media import open_video
    from promptus_codec.media.writers import PngDirWriter

    with open_video(str(SKY)) as source, PngDirWriter(frames / "f") as writer:
        for i, frame in zip(range(12), source):
            writer.write(frame)
    out = tmp_path / "sky.prx"
    result = encode(frames / "f", "-o", out, "--bitrate", "225k", "--size", "128x128", "--fps", "30", *FAST)
    assert result.exit_code == 0, result.output
    doc = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).output)
    assert doc["frame_count"] == 12 and doc["coded_size"] == [128, 128] and doc["source_size"] == [512, 512]


def test_lpips_without_backbone_weights_says_what_to_do(clip, tmp_path):
    from promptus_codec.metrics.perceptual import lpips_available

    if lpips_available("alex"):
        pytest.skip("the AlexNet backbone is in the torch hub cache on this machine")
    out = tmp_path / "o.prx"
    args = [a for a in FAST if a not in ("--perceptual", "none")]
    result = encode(
        clip, "-o", out, "--rank", "1", "--interval", "30", "--size", "64x64", "--perceptual", "lpips", *args
    )
    assert result.exit_code == 1
    assert "alexnet-owt-7be5be79.pth" in result.output and "--perceptual none" in result.output
    assert result.output.count("\n") == 1
    assert not out.exists() and not work_dir(out).exists()
    # The default, auto, warns and fits with MSE alone; the stream records what was used.
    result = encode(clip, "-o", out, "--rank", "1", "--interval", "30", "--size", "64x64", *args)
    assert result.exit_code == 0 and "fitting with MSE only" in result.output
    settings = next(r for r in read_prx(out).records if isinstance(r, EncoderSettingsRecord)).settings
    assert settings["perceptual"] == "none"
