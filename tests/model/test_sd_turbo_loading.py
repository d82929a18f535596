"""SD-Turbo loading without weights or network: where it looks, what it says, what it ships."""

from __future__ import annotations

import socket
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("safetensors")
huggingface_hub = pytest.importorskip("huggingface_hub")

from safetensors.torch import save_file  # noqa: E402

from promptus_codec.errors import MissingDependencyError, ModelError, WeightsNotFoundError  # noqa: E402
from promptus_codec.models.sd_turbo import (  # noqa: E402
    SD_TURBO_REVISION,
    SPEC,
    TAESD,
    TAESD_REVISION,
    UNET,
    VAE,
    build_component,
    find_sd_turbo,
    find_taesd,
    load_sd_turbo,
    shipped_config,
)


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    """An empty working folder, an empty Hugging Face cache, and no way to open a socket."""
    work, hub = tmp_path / "work", tmp_path / "hf" / "hub"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("PROMPTUS_CHECKPOINTS", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))  # read at import time

    def no_network(*args, **kwargs):
        raise AssertionError("SD-Turbo loading tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return work, hub


def _cached(hub, repo: str, revision: str, name: str):
    """Where huggingface_hub keeps ``name`` of ``repo`` at ``revision``; parent folders made."""
    path = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / revision / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write(path, text=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text)
    return path


# --- missing weights ----------------------------------------------------------------


def test_missing_weights_say_what_to_put_where(offline_home):
    with pytest.raises(WeightsNotFoundError) as info:
        load_sd_turbo(device="cpu")
    message = str(info.value)
    assert "checkpoints/sd_turbo.safetensors" in message
    assert "checkpoints/taesd/diffusion_pytorch_model.safetensors" in message
    assert f"hf download stabilityai/sd-turbo sd_turbo.safetensors --revision {SD_TURBO_REVISION}" in message
    assert f"hf download madebyollin/taesd diffusion_pytorch_model.safetensors --revision {TAESD_REVISION}" in message


def test_only_the_missing_part_is_named(offline_home):
    _write(offline_home[0] / "checkpoints" / "sd_turbo.safetensors")
    with pytest.raises(WeightsNotFoundError) as info:
        load_sd_turbo(device="cpu")
    assert "sd_turbo.safetensors" not in str(info.value)
    assert "checkpoints/taesd/diffusion_pytorch_model.safetensors" in str(info.value)


def test_explicit_source_that_holds_nothing_is_named(offline_home, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="source=.*empty"):
        load_sd_turbo(tmp_path / "empty", device="cpu")
    with pytest.raises(WeightsNotFoundError, match="source='someone/not-cached'"):
        load_sd_turbo("someone/not-cached", device="cpu")


def test_checkpoints_folder_comes_from_the_environment(offline_home, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTUS_CHECKPOINTS", str(tmp_path / "elsewhere"))
    single = _write(tmp_path / "elsewhere" / "sd_turbo.safetensors")
    assert find_sd_turbo()[UNET].path == single
    with pytest.raises(WeightsNotFoundError, match="elsewhere/taesd/diffusion_pytorch_model.safetensors"):
        load_sd_turbo(device="cpu")


# --- where weights are found -------------------------------------------------------------


def test_single_file_wins_over_the_hugging_face_cache(offline_home):
    work, hub = offline_home
    _write(_cached(hub, "stabilityai/sd-turbo", SD_TURBO_REVISION, "sd_turbo.safetensors"))
    assert find_sd_turbo()[UNET].path.is_relative_to(hub)
    single = _write(work / "checkpoints" / "sd_turbo.safetensors")
    found = find_sd_turbo()
    assert found[UNET].path == found[VAE].path and found[UNET].path.samefile(single) and found[UNET].ldm


def test_hugging_face_cache_at_the_pinned_revision(offline_home):
    _, hub = offline_home
    for name in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        _write(_cached(hub, "stabilityai/sd-turbo", "0" * 40, name))  # another revision: ignored
    assert find_sd_turbo() is None
    for name in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        _write(_cached(hub, "stabilityai/sd-turbo", SD_TURBO_REVISION, name))
    found = find_sd_turbo()
    assert found[UNET].path.parent.name == "unet" and found[VAE].path.parent.name == "vae"
    assert not found[UNET].ldm
    assert find_sd_turbo("stabilityai/sd-turbo")[UNET].path == found[UNET].path
    assert find_sd_turbo(f"stabilityai/sd-turbo@{'0' * 40}")[UNET].path.parts[-3] == "0" * 40


def test_taesd_sources(offline_home, tmp_path):
    work, hub = offline_home
    assert find_taesd() is None
    cached = _write(_cached(hub, "madebyollin/taesd", TAESD_REVISION, "diffusion_pytorch_model.safetensors"))
    assert find_taesd().path == cached
    local = _write(work / "checkpoints" / "taesd" / "diffusion_pytorch_model.safetensors")
    assert find_taesd().path.samefile(local)
    given = _write(tmp_path / "mine" / "diffusion_pytorch_model.safetensors")
    assert find_taesd(tmp_path / "mine").path == given
    assert find_taesd(given).path == given


# --- unreadable or foreign files ---------------------------------------------------------


def test_garbage_checkpoint_gives_one_clear_line(offline_home):
    work, _ = offline_home
    garbage = _write(work / "checkpoints" / "sd_turbo.safetensors", b"not a safetensors file" * 10)
    _write(work / "checkpoints" / "taesd" / "diffusion_pytorch_model.safetensors", b"\0" * 3)
    with pytest.raises(ModelError) as info:
        load_sd_turbo(device="cpu")
    assert not isinstance(info.value, WeightsNotFoundError)
    assert str(garbage.relative_to(work)) in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_in_another_layout_is_refused(offline_home, tmp_path):
    diffusers_names = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(320, 4, 3, 3)}, diffusers_names)
    with pytest.raises(ModelError, match="not an SD-Turbo checkpoint in the original Stability layout"):
        load_sd_turbo(diffusers_names, taesd=diffusers_names, device="cpu")
    other_model = tmp_path / "other.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, other_model)
    with pytest.raises(ModelError, match=r"UNet2DConditionModel weights: \d+ missing"):
        load_sd_turbo(other_model, taesd=other_model, device="cpu")


def test_missing_diffusers_names_the_extra(offline_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(MissingDependencyError, match=r"promptus-codec\[torch\]"):
        load_sd_turbo(device="cpu")


def test_bad_dtype_is_named():
    with pytest.raises(ModelError, match="dtype='float8'"):
        load_sd_turbo(device="cpu", dtype="float8")


# --- shipped configs ---------------------------------------------------------------------


def test_shipped_configs_build_sd_turbo_without_allocating():
    unet, vae, taesd = (build_component(c) for c in (UNET, VAE, TAESD))  # on the meta device
    assert type(unet).__name__ == "UNet2DConditionModel"
    assert type(vae).__name__ == "AutoencoderKL"
    assert type(taesd).__name__ == "AutoencoderTiny"
    assert all(p.is_meta for p in unet.parameters())
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert sum(p.numel() for p in taesd.parameters()) == 2_445_063

    config = shipped_config(UNET)
    assert config["attention_head_dim"] == [5, 10, 20, 20] and config["use_linear_projection"] is True
    assert config["cross_attention_dim"] == SPEC.prompt_dim
    assert config["in_channels"] == config["out_channels"] == SPEC.latent_channels
    assert shipped_config(VAE)["scaling_factor"] == 0.18215
    assert 2 ** (len(shipped_config(VAE)["block_out_channels"]) - 1) == SPEC.vae_scale_factor
    assert shipped_config(TAESD)["latent_channels"] == SPEC.latent_channels


# Fingerprints themselves are tested in test_fingerprint.py (models/fingerprint.py).
