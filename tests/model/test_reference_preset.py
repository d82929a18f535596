"""--preset reference: the reference implementation's fitting procedure (inversion.py), rule by rule, on tiny."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from promptus_codec.encoder.fit import (
    FitTask,
    PerceptualLoss,
    ReferenceSchedule,
    RunningQuantiser,
    fit_keyframe,
    reference_visits,
)
from promptus_codec.encoder.options import PRESETS
from promptus_codec.generate import CountingStep, GenerationStep, initial_noise_tensor
from promptus_codec.prompt import Factors, dequantize

REFERENCE = PRESETS["reference"]


def reference_quantise(history: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A transcription of the reference's QParam.update + quantize_tensor, in float32 numpy:
    uint8 codes over the running range of everything seen (0 included), and (scale, zero point)."""
    low = min(0.0, *(float(h.min()) for h in history))
    high = max(0.0, *(float(h.max()) for h in history))
    scale = np.float32((high - low) / 255)
    zero_point = np.rint(np.float32(255) - np.float32(high) / scale)
    q = np.rint(np.clip(x / scale + np.float32(zero_point), 0, 255))
    return q.astype(np.uint8), float(scale), float(zero_point)


def test_running_quantiser_matches_the_reference_formula():
    rng = np.random.default_rng(5)
    quantiser, seen = RunningQuantiser(), []
    for step in range(6):  # the range grows, then stays: later codes use the wider running range
        x = (rng.standard_normal((77, 8)) * (3 if step == 2 else 1) + (0.5 if step % 2 else -0.5)).astype(np.float32)
        seen.append(x)
        dequantised, codes, scale, zero_point = quantiser(torch.from_numpy(x))
        q, ref_scale, ref_zero_point = reference_quantise(seen, x)
        assert scale == ref_scale and zero_point == ref_zero_point - 128
        np.testing.assert_array_equal(codes.numpy().astype(np.int16) + 128, q)
        # the stored int8 form dequantises to the very floats fitting saw
        np.testing.assert_array_equal(dequantize(codes.numpy(), scale, zero_point), dequantised.detach().numpy())


def test_running_quantiser_passes_the_gradient_straight_through():
    x = torch.randn(4, 5, requires_grad=True)
    dequantised, *_ = RunningQuantiser()(x)
    (dequantised * torch.arange(20.0).view(4, 5)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), torch.arange(20.0).view(4, 5).numpy())


def test_visits_repeat_the_worst_frame_twice_after_the_first_iteration():
    assert reference_visits(1, None) == [0] and reference_visits(1, {0: 9.0}) == [0]  # a first keyframe
    assert reference_visits(4, None) == [0, 1, 2, 3]  # K steps in the first iteration
    assert reference_visits(4, {0: 0.1, 1: 0.5, 2: 0.2, 3: 0.3}) == [0, 1, 1, 1, 2, 3]  # then K + 2
    assert reference_visits(3, {0: 0.5, 1: 0.1, 2: 0.5}) == [0, 0, 0, 1, 2]  # ties: the first, as max() picks


def test_schedule_halves_after_a_window_without_a_new_minimum_down_to_the_floor():
    schedule = ReferenceSchedule(lr=0.1, patience=3, floor=0.001)
    # window 1 improves (inf -> 1.0): no change at its end
    assert [schedule.after_iteration(m) for m in (3.0, 2.0, 1.0)] == [False, False, False] and schedule.lr == 0.1
    # window 2 brings no new minimum: halved at its end, not before
    assert [schedule.after_iteration(1.0) for _ in range(3)] == [False, False, True] and schedule.lr == 0.05
    # a new minimum inside window 3 keeps the lr
    assert [schedule.after_iteration(m) for m in (1.0, 0.9, 0.9)] == [False, False, False] and schedule.lr == 0.05
    for _ in range(3 * 20):
        schedule.after_iteration(0.9)
    assert schedule.lr == 0.001  # floored: 0.05 / 2^6 < 0.001


def test_reference_preset_is_the_reference_procedure():
    assert REFERENCE.procedure == "reference" and (REFERENCE.first_iterations, REFERENCE.iterations) == (10_000, 1_500)
    assert (REFERENCE.first_plateau_patience, REFERENCE.plateau_patience, REFERENCE.lr_floor, REFERENCE.lr) == (
        300,
        20,
        0.001,
        0.1,
    )
    assert (REFERENCE.alpha, REFERENCE.l1_weight, REFERENCE.pixel_range) == (0.8, 0.1, "signed")
    assert (REFERENCE.init, REFERENCE.quantiser, REFERENCE.scene_latent) == ("uniform", "running", "sample")
    assert REFERENCE.early_stop_patience == 0  # it always runs its whole budget


def task_for(tiny_model, frames: int, previous: bool) -> FitTask:
    rng = np.random.default_rng(11)
    targets = torch.from_numpy(rng.uniform(0.2, 0.8, (frames, 3, 64, 64)).astype(np.float32))
    z_prev = torch.from_numpy(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
    noise = initial_noise_tensor(tiny_model.spec.generation, (4, 8, 8))
    prev = Factors(0, torch.rand(77, 4), torch.rand(4, 1024)) if previous else None
    return FitTask(targets, z_prev, noise, frame_index=frames if previous else 0, rank=4, previous=prev)


def test_one_adam_step_per_frame_visit(tiny_model, monkeypatch):
    steps = []
    original = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (steps.append(1), original(self, *a, **k))[1])
    generator = CountingStep(GenerationStep(tiny_model))
    config = replace(REFERENCE, iterations=4, first_iterations=5)
    later = fit_keyframe(generator, task_for(tiny_model, 3, previous=True), config, PerceptualLoss(None))
    assert generator.calls == [1] * (3 + 3 * 5) and len(steps) == 18  # K, then K + 2 each iteration
    assert later.iterations == 4 and len(later.frame_losses) == 3
    generator.calls.clear(), steps.clear()
    first = fit_keyframe(generator, task_for(tiny_model, 1, previous=False), config, PerceptualLoss(None))
    assert generator.calls == [1] * 5 and len(steps) == 5 and first.iterations == 5


def test_a_new_adam_at_half_the_lr_after_a_plateau(tiny_model, monkeypatch):
    created = []
    original = torch.optim.Adam.__init__

    def record(self, params, lr=1e-3, **kwargs):
        created.append(lr)
        original(self, params, lr=lr, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "__init__", record)
    losses = []
    config = replace(REFERENCE, first_iterations=40, first_plateau_patience=1, lr=4.0, lr_floor=0.5)
    fit_keyframe(
        GenerationStep(tiny_model),
        task_for(tiny_model, 1, previous=False),
        config,
        PerceptualLoss(None),
        on_step=lambda step, loss, best: losses.append((loss, best)),
    )
    # with a window of one iteration, every iteration that brings no new minimum halves the lr
    plateaus = sum(1 for (_, best), (_, before) in zip(losses[1:], losses[:-1]) if best == before)
    assert plateaus >= 1, losses  # lr 4 overshoots: some iterations must fail to improve
    expected, lr = [4.0], 4.0
    for (_, best), (_, before) in zip(losses[1:], losses[:-1]):  # the check runs after every iteration, the last too
        if best == before:
            lr = max(lr / 2, 0.5)
            expected.append(lr)
    assert created == expected


def test_uniform_start_and_signed_mse(tiny_model):
    """The first loss is the reference's: 0.8 * MSE on [-1, 1] + 0.1 * mean|c| from U[0, 1) factors."""
    task = task_for(tiny_model, 1, previous=False)
    config = replace(REFERENCE, first_iterations=1)
    result = fit_keyframe(GenerationStep(tiny_model), task, config, PerceptualLoss(None))
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + 0)
    u, v = torch.rand(77, 4, generator=g), torch.rand(4, 1024, generator=g)
    assert float(u.min()) >= 0 and float(u.max()) < 1
    uq, *_ = RunningQuantiser()(u)
    vq, *_ = RunningQuantiser()(v)
    prompt = Factors(0, uq, vq).prompt()
    with torch.no_grad():
        _, image = GenerationStep(tiny_model)(task.z_prev, task.noise, prompt[None])
    expected = 0.8 * float((((image * 2 - 1) - (task.targets * 2 - 1)) ** 2).mean()) + 0.1 * float(prompt.abs().mean())
    # same operations in the same order up to the [-1, 1] rescaling: a few float32 roundings of a value ~1
    assert math.isclose(result.initial_loss, expected, rel_tol=1e-5)


def test_reference_preset_refuses_without_vgg19_weights_unless_perceptual_none(tmp_path, monkeypatch):
    from promptus_codec.encoder.encode import perceptual_loss
    from promptus_codec.errors import WeightsNotFoundError
    from promptus_codec.metrics.perceptual import resolve_perceptual

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    assert resolve_perceptual("auto", "reference") == "vgg19"
    with pytest.raises(WeightsNotFoundError, match="vgg19-dcbb9e9d.pth.*or choose --perceptual none"):
        perceptual_loss("vgg19", "cpu")
    assert perceptual_loss("none", "cpu").module is None


def test_vgg19_term_is_the_mean_over_16_convolutions():
    from promptus_codec.metrics.perceptual import vgg19_distance

    torch.manual_seed(0)
    distance = vgg19_distance(random_backbone=True)
    convs = [layer for layer in distance.features if isinstance(layer, torch.nn.Conv2d)]
    assert len(convs) == 16 and isinstance(distance.features[-1], torch.nn.Conv2d)  # pre-ReLU: stops at conv 16
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        got = distance(a, b)
        x = (torch.cat([a, b]) * 2 - 1 - distance.mean) / distance.std
        total = 0
        for layer in distance.features:
            x = layer(x)
            if isinstance(layer, torch.nn.Conv2d):
                total = total + ((x[:2] - x[2:]) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got, total / 16, rtol=1e-6, atol=0)  # same ops; the 1e-9 guard is below float32's reach
    assert float(distance(a, a).abs().max()) == 0.0


def test_scene_latent_is_a_seeded_posterior_sample(tiny_model):
    rng = np.random.default_rng(2)
    pixels = torch.from_numpy(rng.uniform(0, 1, (1, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        mean = tiny_model.encode_image(pixels)
        one = tiny_model.encode_image(pixels, torch.Generator().manual_seed(7))
        again = tiny_model.encode_image(pixels, torch.Generator().manual_seed(7))
    torch.testing.assert_close(one, again, rtol=0, atol=0)
    assert not torch.equal(one, mean)


def tiny_encode_args(preset: str, *extra: str) -> list[str]:
    """`promptus encode` options for a quick tiny-model encode: 64 x 64, rank 4, K 4, MSE only."""
    common = ["--model", "tiny", "--perceptual", "none", "--rank", "4", "--interval", "4", "--size", "64x64", "-q"]
    return [*common, "--preset", preset, *extra]


def test_reference_encode_is_deterministic_and_decodes_to_its_reconstruction(tmp_path):
    from click.testing import CliRunner

    from promptus_codec.cli import main
    from promptus_codec.container.reader import read_prx
    from promptus_codec.container.records import EncoderSettingsRecord, SceneRecord

    from .streams import write_clip

    clip = tmp_path / "clip.y4m"
    write_clip(clip, frames=12)
    args = tiny_encode_args("reference", "--iterations", "2", "--first-iterations", "3", "--latent-format", "float32")
    runner = CliRunner()
    outputs = []
    for name in ("a", "b"):
        out, recon = tmp_path / f"{name}.prx", tmp_path / f"{name}.y4m"
        result = runner.invoke(main, ["encode", str(clip), "-o", str(out), "--recon", str(recon), *args])
        assert result.exit_code == 0, result.output
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]  # the sampled scene latent and uniform start are seeded
    records = read_prx(tmp_path / "a.prx").records
    settings = next(r for r in records if isinstance(r, EncoderSettingsRecord)).settings
    assert settings["fit"]["procedure"] == "reference" and settings["perceptual"] == "none"
    (scene,) = [r for r in records if isinstance(r, SceneRecord)]
    assert scene.latent_format.name == "FLOAT32"
    decoded = tmp_path / "dec.y4m"
    result = runner.invoke(main, ["decode", str(tmp_path / "a.prx"), "-o", str(decoded), "-q"])
    assert result.exit_code == 0, result.output
    assert decoded.read_bytes() == (tmp_path / "a.y4m").read_bytes()


def test_target_psnr_stops_at_the_first_best_iterate_that_reaches_it(tiny_model):
    """Early stopping against a quality target: the same trajectory, cut where every frame reaches it."""
    task = task_for(tiny_model, 3, previous=True)
    base = replace(PRESETS["fast"], iterations=40, early_stop_patience=0, init="random")
    trace = []
    fit_keyframe(
        GenerationStep(tiny_model),
        task,
        base,
        PerceptualLoss(None),
        on_step=lambda step, loss, best: trace.append(best),
    )
    full = fit_keyframe(GenerationStep(tiny_model), task, base, PerceptualLoss(None))
    reachable = -10 * math.log10(max(full.frame_losses) / base.alpha)  # the worst frame's PSNR at the final best
    stopped = fit_keyframe(
        GenerationStep(tiny_model), task, replace(base, target_psnr=reachable - 3), PerceptualLoss(None)
    )
    assert stopped.iterations < full.iterations
    # the stop test used float32 log10 of the same MSEs; 1e-4 dB covers that rounding (~1e-6 dB at these values)
    assert -10 * math.log10(max(stopped.frame_losses) / base.alpha) >= reachable - 3 - 1e-4
    assert stopped.best_loss == trace[stopped.iterations - 1]  # a prefix of the same seeded trajectory
    never = fit_keyframe(GenerationStep(tiny_model), task, replace(base, target_psnr=99.0), PerceptualLoss(None))
    assert never.iterations == full.iterations


def test_an_interval_in_windows_keeps_the_iterate_best_on_every_frame(tiny_model):
    """Longer than max_batch, an interval is visited in windows; the kept iterate is scored on each
    frame's latest loss, not on whichever window came last (windows of easy frames won before)."""
    task = task_for(tiny_model, 4, previous=True)
    config = replace(PRESETS["fast"], iterations=12, early_stop_patience=0, init="random", max_batch=2,
                     frame_steps=False, l1_weight=0.0, temporal_beta=0.0)  # fmt: skip
    scores = []
    result = fit_keyframe(GenerationStep(tiny_model), task, config, PerceptualLoss(None),
                          on_step=lambda step, score, best: scores.append(score))  # fmt: skip
    assert scores[0] == math.inf and all(math.isfinite(s) for s in scores[1:])  # frames 2-3 unseen at first
    # the score is a float32 mean of the frame losses the result holds; float64 re-summing differs ~1e-7
    assert result.best_loss == pytest.approx(sum(result.frame_losses) / 4, rel=1e-6)
    assert result.best_loss == min(scores)


def test_frame_steps_take_one_adam_step_per_frame_beside_the_worst(tiny_model, monkeypatch):
    """fast's procedure: an iteration is a sweep, one step per frame, each with the worst frame."""
    steps = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1))
    config = replace(PRESETS["fast"], iterations=3, init="random")
    assert config.frame_steps
    counting = CountingStep(GenerationStep(tiny_model))
    result = fit_keyframe(counting, task_for(tiny_model, 4, previous=True), config, PerceptualLoss(None))
    assert result.iterations == 3 * 4 and len(steps) == 3 * 4 - 1  # no step after the last evaluation
    assert counting.calls == [1] * 4 + [2] * 8  # the worst frame joins once every frame has a loss
    first = fit_keyframe(counting, task_for(tiny_model, 1, previous=False), config, PerceptualLoss(None))
    assert first.iterations == config.first_iterations  # one frame: a sweep is one step


def test_target_psnr_from_the_command_line_is_recorded_and_used(tmp_path):
    from click.testing import CliRunner

    from promptus_codec.cli import main
    from promptus_codec.container.reader import read_prx
    from promptus_codec.container.records import EncoderSettingsRecord

    from .streams import write_clip

    clip = tmp_path / "clip.y4m"
    write_clip(clip, frames=8)
    args = tiny_encode_args("draft", "--iterations", "30", "--first-iterations", "30")
    runner = CliRunner()
    result = runner.invoke(main, ["encode", str(clip), "-o", str(tmp_path / "t.prx"), "--target-psnr", "1", *args])
    assert result.exit_code == 0, result.output
    settings = next(r for r in read_prx(tmp_path / "t.prx").records if isinstance(r, EncoderSettingsRecord)).settings
    assert settings["fit"]["target_psnr"] == 1.0
    # 1 dB is reached at once: every keyframe stops after its first iteration, so the stream differs from a full fit
    result = runner.invoke(main, ["encode", str(clip), "-o", str(tmp_path / "f.prx"), *args])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t.prx").read_bytes() != (tmp_path / "f.prx").read_bytes()
