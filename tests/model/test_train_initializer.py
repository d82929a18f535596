"""scripts/train_initializer.py: a prompt encoder trained for a frozen generator, written with its fingerprint."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from train_initializer import InitializerConfig, new_encoder, save, train  # noqa: E402

from promptus_codec.models.fingerprint import fingerprint_state_dict  # noqa: E402
from promptus_codec.models.mini import PromptEncoder  # noqa: E402


def fixed_sampler(size: int, batch: int = 2):
    """One smooth batch, always the same: (f_k, f_s, f_K, s, K), so the loss must fall on it."""
    g = torch.Generator().manual_seed(4)
    coarse = torch.rand(batch, 3, 4, 4, generator=g)
    frames = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    steps, intervals = torch.tensor([1] * batch), torch.tensor([2] * batch)
    return lambda _g: (frames, frames, frames, steps, intervals)


def encoder_for(spec) -> PromptEncoder:
    torch.manual_seed(0)
    return new_encoder(spec, InitializerConfig())


def test_trains_on_mini_and_writes_a_loadable_fingerprinted_encoder(tmp_path):
    from promptus_codec.models.registry import load_model

    model = load_model("mini", device="cpu", dtype="fp32")
    generator_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    encoder = encoder_for(model.spec)
    cfg = InitializerConfig(size=64, batch=2, steps=12, lr=1e-3, min_rank=8)
    curve = train(model, encoder, cfg, fixed_sampler(64), log=None)
    assert len(curve) == 12 and curve[-1]["mse"] < curve[0]["mse"]  # one fixed batch: it must fit it better
    assert all(torch.equal(generator_before[k], v) for k, v in model.unet.state_dict().items())  # frozen
    record = save(encoder, model, cfg, curve, 1.0, tmp_path / "init.safetensors")
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "init.safetensors"))
    assert fingerprint_state_dict(state).hex() == record["fingerprint"]
    assert json.loads((tmp_path / "init.safetensors.json").read_text())["generator"]["name"] == "mini"
    again = encoder_for(model.spec)
    again.load_state_dict({k: v.float() for k, v in state.items()})
    u, v = again(torch.rand(1, 3, 64, 64))
    assert u.shape == (1, 77, 16) and v.shape == (1, 16, 1024)


@pytest.mark.slow
def test_runs_on_the_sd_turbo_architecture_with_random_weights():
    """A few steps at 64 x 64 through SD-Turbo's real UNet, VAE and TAESD shapes (random weights, no files)."""
    from promptus_codec.container.records import ModelIdentity
    from promptus_codec.models.sd_turbo import TAESD, UNET, VAE, SDTurbo, build_component

    torch.manual_seed(0)
    parts = [build_component(c, "cpu").eval().requires_grad_(False) for c in (UNET, VAE, TAESD)]
    identity = ModelIdentity("sd-turbo", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    model = SDTurbo(parts[0], parts[1], parts[2], identity, {}, torch.device("cpu"), torch.float32)
    encoder = encoder_for(model.spec)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    curve = train(model, encoder, InitializerConfig(size=64, batch=1, steps=2), fixed_sampler(64, batch=1), log=None)
    assert len(curve) == 2 and all(torch.isfinite(torch.tensor(r["mse"])) for r in curve)
    assert any(not torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def saved_initializer(model, path: Path) -> dict:
    """An (untrained) prompt encoder for ``model``, written as scripts/train_initializer.py writes one."""
    return save(encoder_for(model.spec), model, InitializerConfig(steps=0), [], 0.0, path)


def test_encode_starts_from_a_trained_initializer_file(tmp_path):
    """--initializer: fitting starts from that file's factors; the settings hold its fingerprint, not its path."""
    from promptus_codec.encoder.encode import Encoder, frames_to_tensor
    from promptus_codec.encoder.options import EncodeOptions
    from promptus_codec.models.registry import load_model

    model = load_model("tiny", device="cpu", dtype="fp32")
    record = saved_initializer(model, tmp_path / "init.safetensors")
    options = EncodeOptions(
        perceptual="none", fit_overrides=(("init", "amortized"),), initializer_file=str(tmp_path / "init.safetensors")
    )
    encoder = Encoder(model, options)
    settings = encoder.settings()
    assert settings["initializer"] == record["fingerprint"] and "initializer_file" not in settings
    frame = (np.random.default_rng(1).uniform(0, 1, (64, 64, 3)) * 255).astype(np.uint8)
    start = encoder.start_for(frame, keyframe=0, rank=4, previous=None)
    # the same module and float16-rounded weights on the same input in one process: the same floats
    reference = encoder_for(model.spec)
    reference.load_state_dict({k: v.half().float() for k, v in reference.state_dict().items()})
    with torch.no_grad():
        u, v = reference(frames_to_tensor([frame], "cpu"))
    assert torch.equal(start.u, u[0, :, :4]) and torch.equal(start.v, v[0, :4])


def test_an_initializer_file_is_refused_for_other_weights_or_when_damaged(tmp_path):
    from promptus_codec.errors import ModelError
    from promptus_codec.models.registry import load_initializer, load_model

    tiny, mini = (load_model(name, device="cpu", dtype="fp32") for name in ("tiny", "mini"))
    path = tmp_path / "init.safetensors"
    saved_initializer(tiny, path)
    assert (
        load_initializer("tiny", file=path, generator=tiny.identity())[1].hex()
        == json.loads(Path(f"{path}.json").read_text())["fingerprint"]
    )
    with pytest.raises(ModelError, match="trained for the generator 'tiny'"):
        load_initializer("mini", file=path, generator=mini.identity())
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="damaged"):
        load_initializer("tiny", file=path, generator=tiny.identity())
    Path(f"{path}.json").unlink()
    with pytest.raises(ModelError, match="cannot read its record"):
        load_initializer("tiny", file=path, generator=tiny.identity())


def test_encode_cli_takes_an_initializer_and_refuses_it_with_another_init(tmp_path):
    from click.testing import CliRunner

    from promptus_codec.cli import main
    from promptus_codec.container.reader import read_prx
    from promptus_codec.container.records import EncoderSettingsRecord
    from promptus_codec.models.registry import load_model

    from .streams import write_clip

    clip = tmp_path / "clip.y4m"
    write_clip(clip, frames=8)
    record = saved_initializer(load_model("tiny", device="cpu", dtype="fp32"), tmp_path / "init.safetensors")
    common = ["encode", str(clip), "--model", "tiny", "--perceptual", "none", "--preset", "draft", "--rank", "2"]
    common += [
        "--interval",
        "4",
        "--iterations",
        "2",
        "--first-iterations",
        "2",
        "--initializer",
        str(tmp_path / "init.safetensors"),
        "-q",
    ]
    result = CliRunner().invoke(main, [*common, "-o", str(tmp_path / "o.prx")])
    assert result.exit_code == 0, result.output
    settings = next(r for r in read_prx(tmp_path / "o.prx").records if isinstance(r, EncoderSettingsRecord)).settings
    assert settings["initializer"] == record["fingerprint"] and settings["fit"]["init"] == "amortized"
    refused = CliRunner().invoke(main, [*common, "--init", "random", "-o", str(tmp_path / "r.prx")])
    assert refused.exit_code == 2 and "--initializer is a start for --init amortized" in refused.output
    assert not (tmp_path / "r.prx").exists()


def _train_builtin():
    import train_builtin  # scripts/ is on sys.path above

    return train_builtin


def test_training_sources_may_come_from_a_folder_and_are_still_checked(tmp_path, monkeypatch):
    """$PROMPTUS_TRAINING_DATA: PACKAGE/RELATIVE copies (how the lent GPU machines get the sources)."""
    module = _train_builtin()
    copy = tmp_path / "skimage" / "data" / "camera.png"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"a stand-in for the picture")
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    monkeypatch.setitem(module.SHA256, "skimage/data/camera.png", digest)
    monkeypatch.setenv(module.DATA_ROOT_VARIABLE, str(tmp_path))
    assert module.source_path("skimage", "data/camera.png") == copy
    copy.write_bytes(b"another picture")
    with pytest.raises(SystemExit, match="refusing"):
        module.source_path("skimage", "data/camera.png")


def test_opencv_decodes_a_png_as_pyav_does(tmp_path):
    """The fallback decoder where PyAV is missing: same pixels on a lossless still."""
    pytest.importorskip("av")
    cv2 = pytest.importorskip("cv2")
    module = _train_builtin()
    rgb = np.random.default_rng(5).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    path = tmp_path / "still.png"
    assert cv2.imwrite(str(path), rgb[..., ::-1])  # OpenCV writes BGR
    (pyav,), (opencv,) = module._decode(path), module._decode_with_opencv(path)
    assert pyav.shape == (3, 24, 40) and torch.equal(pyav, opencv)
    assert torch.equal((pyav * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(rgb))


def test_amortized_starts_a_scene_from_the_prompt_encoder_and_later_keyframes_warm():
    """amortized starts only a scene's first keyframe from the prompt encoder, later ones from the
    previous keyframe's factors, as warm does; auto is warm (mini's encoder is not a better start)."""
    from promptus_codec.encoder.encode import Encoder, frames_to_tensor
    from promptus_codec.encoder.options import EncodeOptions
    from promptus_codec.models.mini import INITIALIZER_FILE, load_prompt_encoder
    from promptus_codec.models.registry import load_model
    from promptus_codec.prompt import Factors

    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    previous = Factors(0, rng.normal(size=(77, 8)).astype(np.float32), rng.normal(size=(8, 1024)).astype(np.float32))
    mini = load_model("mini", device="cpu", dtype="fp32")
    encoder = Encoder(mini, EncodeOptions(perceptual="none", fit_overrides=(("init", "amortized"),)))
    settings = encoder.settings()
    assert settings["initializer"] == json.loads(Path(f"{INITIALIZER_FILE}.json").read_text())["fingerprint"]
    first = encoder.start_for(frame, keyframe=0, rank=8, previous=None)
    prompt_encoder, _ = load_prompt_encoder(mini.identity())
    with torch.no_grad():
        u, v = prompt_encoder(frames_to_tensor([frame], "cpu"))  # same module, weights and input: same floats
    assert torch.equal(first.u, u[0, :, :8]) and torch.equal(first.v, v[0, :8])
    for init in ("amortized", "warm"):
        chosen = encoder if init == "amortized" else Encoder(mini, EncodeOptions(perceptual="none"))
        later = chosen.start_for(frame, keyframe=11, rank=8, previous=previous)
        assert later.frame_index == 0 and np.array_equal(later.u.numpy(), previous.u)
        assert np.array_equal(later.v.numpy(), previous.v)

    auto = Encoder(mini, EncodeOptions(perceptual="none"))
    assert auto.settings()["fit"]["init"] == "warm" and auto.settings()["initializer"] is None
    assert auto.start_for(frame, 0, 8, None) is None  # a scene's first keyframe: seeded random
    random = Encoder(mini, EncodeOptions(perceptual="none", fit_overrides=(("init", "random"),)))
    assert random.start_for(frame, 11, 8, previous) is None
