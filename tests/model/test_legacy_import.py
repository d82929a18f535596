"""`promptus import-legacy`: the reference's prompt folders become .prx files losslessly."""

import json
import pathlib
from fractions import Fraction

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from promptus_codec.cli import main
from promptus_codec.container.records import KeyframeRecord, SceneRecord
from promptus_codec.container.reader import read_prx
from promptus_codec.prompt import dequantize
from tolerances import gamma64  # tests/ is on sys.path (rootdir conftest)

SKY = (
    pathlib.Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "reference-prompts"
    / "sky_rank8_interval10"
)


def write_legacy_folder(folder, keyframes=(0, 4, 8), rank=3, m=77, n=1024, seed=0):
    """A reference-style folder: torch.save dicts of uint8 factors and float32 scalars."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir()
    saved = {}
    for k in keyframes:
        d = {
            "U": torch.randint(0, 256, (m, rank), generator=g, dtype=torch.uint8),
            "V": torch.randint(0, 256, (rank, n), generator=g, dtype=torch.uint8),
            "U_scale": torch.tensor(0.0191374, dtype=torch.float32),
            "U_zero_point": torch.tensor(float(torch.randint(0, 256, (), generator=g)), dtype=torch.float32),
            "V_scale": torch.tensor([0.1062094], dtype=torch.float32),
            "V_zero_point": torch.tensor([float(torch.randint(0, 256, (), generator=g))], dtype=torch.float32),
        }
        torch.save(d, folder / f"frame_{k:05d}.prompt")
        saved[k] = d
    init = torch.randn(1, 4, 8, 8, generator=g)
    torch.save(init, folder / "init.pth")
    return saved, init


def reference_dequantized(d, name):
    """The reference's formula on its own uint8 tensors: scale * (q - zero_point)."""
    return (d[f"{name}_scale"] * (d[name].float() - d[f"{name}_zero_point"])).numpy()


def check_lossless(prx_path, saved, init):
    prx = read_prx(prx_path)
    scenes = [r for r in prx.records if isinstance(r, SceneRecord)]
    keyframes = [r for r in prx.records if isinstance(r, KeyframeRecord)]
    assert len(scenes) == 1 and np.array_equal(scenes[0].latent_float32(), init[0].numpy())
    assert [k.frame_index for k in keyframes] == sorted(saved)
    for k in keyframes:
        d = saved[k.frame_index]
        for name, q, scale, zp in (("U", k.u, k.u_scale, k.u_zero_point), ("V", k.v, k.v_scale, k.v_zero_point)):
            ours = dequantize(q, scale, zp)
            assert ours.dtype == np.float32
            assert np.array_equal(ours, reference_dequantized(d, name)), name  # bit-exact
    return prx


def test_import_small_folder_is_lossless(tmp_path):
    saved, init = write_legacy_folder(tmp_path / "legacy")
    out = tmp_path / "out.prx"
    result = CliRunner().invoke(
        main, ["import-legacy", str(tmp_path / "legacy"), "-o", str(out), "--fps", "30000/1001"]
    )
    assert result.exit_code == 0, result.output
    prx = check_lossless(out, saved, init)
    h = prx.header
    assert (h.coded_width, h.coded_height, h.latent_shape) == (64, 64, (4, 8, 8))
    assert h.frame_rate == Fraction(30000, 1001) and h.frame_count == 9 == prx.end.frame_count
    g = h.generation
    assert (g.noise_seed, g.timestep, g.latent_weight, g.noise_weight) == (88, 999, np.float32(0.05), np.float32(0.95))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "init.pth").unlink(), "has no init.pth"),
        (lambda f: (f / "frame_00004.prompt").write_bytes(b"not a torch file"), "cannot read"),
        (lambda f: torch.save({"U": torch.zeros(3)}, f / "frame_00004.prompt"), "missing U_scale"),
        (lambda f: (f / "frame_00000.prompt").unlink(), "must be frame_00000.prompt"),
    ],
)
def test_bad_legacy_folder_one_line_no_output(tmp_path, damage, message):
    write_legacy_folder(tmp_path / "legacy")
    damage(tmp_path / "legacy")
    out = tmp_path / "out.prx"
    result = CliRunner().invoke(main, ["import-legacy", str(tmp_path / "legacy"), "-o", str(out)])
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "legacy"]


def test_pickled_code_is_never_run(tmp_path):
    """A prompt file holding a pickled callable is refused by weights_only loading."""
    write_legacy_folder(tmp_path / "legacy")
    marker = tmp_path / "pwned"
    torch.save(
        {"U": Exploit(str(marker))}, tmp_path / "legacy" / "frame_00004.prompt", _use_new_zipfile_serialization=True
    )
    result = CliRunner().invoke(main, ["import-legacy", str(tmp_path / "legacy"), "-o", str(tmp_path / "o.prx")])
    assert result.exit_code == 1 and not marker.exists()


class Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.mark.skipif(not SKY.is_dir(), reason="../shared/data is not present")
def test_import_reference_sky(tmp_path):
    out = tmp_path / "sky.prx"
    result = CliRunner().invoke(main, ["import-legacy", str(SKY), "-o", str(out), "--fps", "30"])
    assert result.exit_code == 0, result.output
    saved = {
        int(p.stem.split("_")[1]): torch.load(p, weights_only=True, map_location="cpu") for p in SKY.glob("*.prompt")
    }
    init = torch.load(SKY / "init.pth", weights_only=True, map_location="cpu")
    check_lossless(out, saved, init)
    doc = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).output)
    assert doc["frame_count"] == 141 and len(doc["keyframes"]) == 15
    assert {k["rank"] for k in doc["keyframes"]} == {8}
    assert doc["bytes"]["prompt"] == 15 * 8808
    # ~224.9, the reference's "225 kbps"; float64 on both sides, 3 roundings each (4.7 s, two divides)
    assert doc["kbps"]["prompt"] == pytest.approx(15 * 8808 * 8 / 4.7 / 1000, rel=gamma64(6), abs=0)
    assert doc["bytes"]["latent"] == 4 * 64 * 64 * 4
