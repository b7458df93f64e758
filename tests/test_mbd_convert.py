"""MultiBand Diffusion's release pickle -> the converted folder, read without running code from the file;
and `weights.resolve_mbd` / `scripts/download_weights.py` finding, fetching and converting it.

The release-layout pickles are tiny and random (`tests/mbd_fixtures.py`), with real OmegaConf configs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from musicgen.checkpoints import mbd_release
from musicgen.checkpoints.mbd_release import convert_mbd_release
from musicgen.diffusion import MBDConfig, MultiBandDiffusion
from musicgen.errors import CheckpointError, WeightsNotFoundError
from musicgen.weights import MBD_FILE, MBD_HUB_ID, resolve_mbd
from tests import test_weights
from tests.mbd_fixtures import TINY_MBD_CODEC_DIM, make_tiny_mbd, write_release_pickle
from tests.test_weights import REPOS, _fill_hf_cache, _go_offline, _tree

# fixtures, found by pytest under these names: every Hugging Face setting pointed into tmp_path, and the
# stand-in Hub on loopback
hub_env = test_weights.hub_env
hub = test_weights.hub

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "download_weights.py"
CONVERTED = {"config.json", "model.safetensors"}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict]:
    """One release-layout pickle (3 bands, the last two with processors), and what it holds."""
    path = tmp_path_factory.mktemp("release") / MBD_FILE
    return path, write_release_pickle(path, bands=3, processor_bands=(1, 2), seed=3)


def _pickle(tmp_path: Path, **options) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / MBD_FILE
    write_release_pickle(path, **options)
    return path


def _refusal(path: Path, tmp_path: Path) -> str:
    """The CheckpointError message converting `path` gives; nothing may be left where it was to go."""
    dest = tmp_path / "out" / "mbd"
    with pytest.raises(CheckpointError) as info:
        convert_mbd_release(path, dest)
    assert _tree(tmp_path / "out") == set()
    return str(info.value)


# ------------------------------------------------------------------------------------------- conversion


def test_conversion_keeps_every_tensor_and_setting(release, tmp_path):
    src, written = release
    dest = convert_mbd_release(src, tmp_path / "mbd")

    assert dest == tmp_path / "mbd" and _tree(dest) == CONVERTED
    state = load_file(dest / "model.safetensors")
    expected = {}
    for i, band in enumerate(written["bands"]):
        # `mha.` folded away: exactly the names of our DiffusionUnet
        expected.update({f"bands.{i}.model.{k}": v for k, v in band["model_state"].items()})
        expected.update({f"bands.{i}.processor.{k}": v for k, v in band["processor_state"].items()})
    assert set(state) == set(expected)
    assert any(".self_attn.in_proj_weight" in k for k in state) and not any(".mha." in k for k in state)
    assert not any("split_bands" in k for k in state)  # julius' filters are rebuilt from the config
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name

    raw = json.loads((dest / "config.json").read_text())
    assert raw["sample_rate"] == 32000 and raw["source"] == str(src.resolve())
    assert len(raw["bands"]) == 3
    for band, want in zip(raw["bands"], written["bands"], strict=True):
        # every U-Net field, with `codec_dim: ${codec_dim}` and `num_steps: ${num_diffusion_steps}` resolved
        assert band["diffusion_unet"] == want["unet"].to_dict()
        assert band["diffusion_unet"]["codec_dim"] == TINY_MBD_CODEC_DIM
        assert band["schedule"] == want["schedule"]
        if want["processor"]["use"]:
            assert band["processor"] == want["processor"]
        else:
            assert band["processor"]["use"] is False
    assert [b["processor"]["power_std"] for b in raw["bands"][1:]] == [[0.4, 0.75], 0.4]
    config = MBDConfig.from_dict(raw)
    assert config.to_dict() == raw

    mbd = MultiBandDiffusion.load(dest)
    assert mbd.codec_dim == TINY_MBD_CODEC_DIM and len(mbd.bands) == 3
    assert [b.processor is not None for b in mbd.bands] == [False, True, True]
    assert torch.equal(mbd.bands[2].processor.sum_x, written["bands"][2]["processor_state"]["sum_x"])


@pytest.mark.parametrize(
    "options", [{"mha_prefix": False}, {"transformer": False, "processor_bands": ()}, {"bands": 1}]
)
def test_conversion_of_other_layouts(tmp_path, options):
    written = write_release_pickle(tmp_path / MBD_FILE, **options)
    dest = convert_mbd_release(tmp_path / MBD_FILE, tmp_path / "mbd")

    state = load_file(dest / "model.safetensors")
    for i, band in enumerate(written["bands"]):
        for name, tensor in band["model_state"].items():
            assert torch.equal(state[f"bands.{i}.model.{name}"], tensor)
    assert len(MultiBandDiffusion.load(dest).bands) == len(written["bands"])


def test_reconversion_replaces_the_previous_one(tmp_path):
    dest = make_tiny_mbd(tmp_path / "mbd", seed=1)
    first = load_file(dest / "model.safetensors")

    make_tiny_mbd(dest, seed=2)

    second = load_file(dest / "model.safetensors")
    assert not torch.equal(first["bands.0.model.embedding.weight"], second["bands.0.model.embedding.weight"])
    assert _tree(tmp_path) == {"mbd"} | {f"mbd/{f}" for f in CONVERTED}  # no hidden folder left

    # replace=False (what resolve_mbd asks): a conversion another process finished first is kept
    src = _pickle(tmp_path / "src", seed=3)
    convert_mbd_release(src, dest, replace=False)
    kept = load_file(dest / "model.safetensors")
    assert torch.equal(kept["bands.0.model.embedding.weight"], second["bands.0.model.embedding.weight"])
    assert _tree(tmp_path / "src") == {MBD_FILE} and _tree(dest) == CONVERTED


def test_a_folder_holding_other_files_is_not_replaced(release, tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")

    with pytest.raises(CheckpointError, match="holds other files"):
        convert_mbd_release(release[0], dest)

    assert _tree(tmp_path) == {"mine", "mine/notes.txt"}


# --------------------------------------------------------------------------------- nothing run, ever


class _RunsCode:
    """Unpickling this calls `func(*args)`: what a hostile checkpoint does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _put_in_cfg(value):
    def edit(pkg):
        # past OmegaConf's validation, as a hand-made pickle would be
        pkg[0]["cfg"]._get_node("solver")._val = value

    return edit


@pytest.mark.parametrize("place", ["top level", "band", "model_state", "cfg"])
@pytest.mark.parametrize("how", ["os.system", "exec"])
def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path, place, how):
    marker = tmp_path / "ran"
    if how == "os.system":
        payload, named = _RunsCode(os.system, f"touch {marker}"), "system"
    else:
        payload, named = _RunsCode(exec, f"open({str(marker)!r}, 'w').close()"), "exec"
    # the payload is live: a free unpickle runs it
    pickle.loads(pickle.dumps(payload))
    assert marker.exists()
    marker.unlink()

    edits = {
        "top level": {"extra": {"readme": payload}},
        "band": {"edit": lambda pkg: pkg[1].update(note=payload)},
        "model_state": {"edit": lambda pkg: pkg[0]["model_state"].update(hook=payload)},
        "cfg": {"edit": _put_in_cfg(payload)},
    }
    src = _pickle(tmp_path, **edits[place])

    message = _refusal(src, tmp_path)

    assert named in message and "never imports or calls" in message and str(src) in message
    assert not marker.exists()


def test_other_classes_are_refused_by_name(tmp_path):
    src = _pickle(tmp_path, extra={"when": Path("/tmp")})

    assert "PosixPath" in _refusal(src, tmp_path)


def test_files_that_are_not_the_release(tmp_path):
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"this is not a torch file" * 100)
    assert "cannot be read as a torch file" in _refusal(junk, tmp_path)

    a_list = tmp_path / "list.th"
    torch.save([torch.zeros(2)], a_list)
    assert "holds a list" in _refusal(a_list, tmp_path)

    assert "file not found" in _refusal(tmp_path / "absent.th", tmp_path)


def test_an_oversized_file_is_not_read(release, tmp_path, monkeypatch):
    monkeypatch.setattr(mbd_release, "MAX_FILE_BYTES", 1000)

    assert "not read" in _refusal(release[0], tmp_path)


def _set(band: int, key: str, value):
    def edit(pkg):
        node = pkg[band]["cfg"]
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value

    return edit


def _drop_tensor(pkg):
    del pkg[1]["model_state"]["conv_codec.bias"]


def _reshape_tensor(pkg):
    pkg[0]["model_state"]["embedding.weight"] = torch.zeros(1000, 5)


def _drop_statistic(pkg):
    del pkg[1]["processor_state"]["sum_x2"]


def _drop_band(pkg):
    del pkg[1]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_drop_band, "band 1 is missing"),
        (lambda pkg: pkg.update(n_bands=0), "'n_bands' is 0"),
        (lambda pkg: pkg.update(n_bands=17), "'n_bands' is 17"),
        (lambda pkg: pkg.update(sample_rate="32k"), "'sample_rate' is '32k'"),
        (_drop_tensor, "missing ['bands.1.model.conv_codec.bias']"),
        (_reshape_tensor, "bands.0.model.embedding.weight is (1000, 5), the config makes (1000, 4)"),
        (_drop_statistic, "missing ['bands.1.processor.sum_x2']"),
        (lambda pkg: pkg[1]["processor_state"].update(extra=torch.zeros(2)), "holds 'extra'"),
        (_set(0, "schedule.n_bands", 4), "'schedule.n_bands' is 4"),
        (_set(1, "processor.name", "snr_processor"), "'processor.name' is 'snr_processor'"),
        (_set(0, "schedule.repartition", "sigmoid"), "only 'power' runs"),
        (_set(0, "channels", 2), "the models are mono"),
        (_set(0, "diffusion_unet.hidden", "${nowhere}"), "band 0's cfg has no 'nowhere'"),
        (_set(0, "diffusion_unet.depth", 1000), "'diffusion_unet.depth' is 1000"),
        (_set(0, "diffusion_unet.hidden", 4096), "do not belong together"),
        (_set(1, "processor.power_std", [0.5]), "power_std has 1 values for 2"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_refusals_say_what_is_wrong(tmp_path, edit, expected):
    src = _pickle(tmp_path, edit=edit)

    message = _refusal(src, tmp_path)

    assert expected in message and str(src) in message


# ------------------------------------------------------------------------------ finding and fetching it


@pytest.fixture
def release_bytes(release) -> bytes:
    return release[0].read_bytes()


@pytest.fixture
def mbd_hub(hub, release_bytes, monkeypatch):
    """The stand-in Hub, holding the tiny release as facebook/multiband-diffusion does the real one."""
    monkeypatch.setitem(
        REPOS, MBD_HUB_ID, {MBD_FILE: release_bytes, "README.md": b"# MBD", "mbd_comp_4.pt": b"other"}
    )
    return hub


def test_release_in_the_hf_cache_is_converted_offline(mbd_hub, hub_env, monkeypatch):
    cached = _fill_hf_cache(MBD_HUB_ID, [MBD_FILE])  # as audiocraft's hf_hub_download leaves it
    attempts = _go_offline(monkeypatch)

    dest = resolve_mbd()

    assert dest == hub_env / "mbd" and _tree(hub_env) == {"mbd"} | {f"mbd/{f}" for f in CONVERTED}
    assert (cached / MBD_FILE).is_file()  # the cache is read, never changed
    assert json.loads((dest / "config.json").read_text())["source"] == f"{MBD_HUB_ID}/{MBD_FILE}"
    assert len(MultiBandDiffusion.load(dest).bands) == 3
    written = (dest / "model.safetensors").stat().st_mtime_ns
    assert resolve_mbd(download=False) == dest  # converted once
    assert (dest / "model.safetensors").stat().st_mtime_ns == written
    assert attempts == []


def test_offline_with_nothing_found_names_the_command(hub_env, monkeypatch):
    attempts = _go_offline(monkeypatch)

    with pytest.raises(WeightsNotFoundError) as info:
        resolve_mbd()

    message = str(info.value)
    assert f"not in {hub_env / 'mbd'}, nor ({MBD_FILE}) in the Hugging Face cache at" in message
    assert "HF_HUB_OFFLINE=1" in message and "python scripts/download_weights.py mbd" in message
    assert attempts == [] and _tree(hub_env) == set()


def test_download_turned_off(mbd_hub, hub_env):
    with pytest.raises(WeightsNotFoundError, match="downloading is turned off.*download_weights.py mbd"):
        resolve_mbd(download=False)

    assert mbd_hub.requests == []


def test_download_then_convert_then_delete_the_pickle(mbd_hub, hub_env):
    dest = resolve_mbd()

    assert dest == hub_env / "mbd"
    assert _tree(hub_env) == {"mbd"} | {f"mbd/{f}" for f in CONVERTED}  # no pickle, no temporary folder
    assert mbd_hub.downloads() == [f"/{MBD_HUB_ID}/resolve/main/{MBD_FILE}"]
    assert len(MultiBandDiffusion.load(dest).bands) == 3
    assert not any(Path(os.environ["HF_HUB_CACHE"]).rglob(MBD_FILE))  # nor a copy in the cache


def test_download_failing_leaves_nothing(mbd_hub, hub_env):
    mbd_hub.fail_get.add(MBD_FILE)

    with pytest.raises(WeightsNotFoundError) as info:
        resolve_mbd()

    assert "500" in str(info.value) and "python scripts/download_weights.py mbd" in str(info.value)
    assert _tree(hub_env) == set()


def test_a_refused_download_leaves_nothing(mbd_hub, hub_env, tmp_path, monkeypatch):
    evil = tmp_path / "evil.th"
    write_release_pickle(evil, extra={"x": _RunsCode(os.system, "true")})
    monkeypatch.setitem(REPOS, MBD_HUB_ID, {MBD_FILE: evil.read_bytes()})

    with pytest.raises(CheckpointError, match="system"):
        resolve_mbd()

    assert _tree(hub_env) == set()


def _run_script(*args: str) -> subprocess.CompletedProcess:
    # run as a file, as people run it; the child reads HF_ENDPOINT etc. from the environment the fixtures set
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
    )


def test_script_converts_a_local_release(release, hub_env):
    done = _run_script("--convert-mbd", str(release[0]))

    assert done.returncode == 0, done.stderr
    assert f"{release[0]}: {hub_env / 'mbd'}" in done.stdout
    assert _tree(hub_env) == {"mbd"} | {f"mbd/{f}" for f in CONVERTED}
    assert len(MultiBandDiffusion.load(hub_env / "mbd").bands) == 3


def test_script_fetches_and_converts_mbd(mbd_hub, hub_env):
    done = _run_script("mbd")

    assert done.returncode == 0, done.stderr
    assert f"mbd: {hub_env / 'mbd'}" in done.stdout
    assert _tree(hub_env) == {"mbd"} | {f"mbd/{f}" for f in CONVERTED}


def test_script_refusal_is_a_message(hub_env, tmp_path, capsys):
    # in-process: a second Python importing torch costs seconds
    spec = importlib.util.spec_from_file_location("download_weights", SCRIPT)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"junk")

    assert cli.main(["--convert-mbd", str(junk)]) == 1

    assert f"error: {junk}: cannot be read as a torch file" in capsys.readouterr().err
    assert _tree(hub_env) == set()


def test_loading_refuses_tensors_no_band_reads(tmp_path):
    """A converted folder whose weights hold a processor's statistics for a band without a processor (or a
    band the config lacks) disagrees with its config: refused, naming the folder and the tensors."""
    from safetensors.torch import save_file

    from musicgen.diffusion import WEIGHTS_FILE

    for extra in ("bands.0.processor.sum_x", "bands.5.model.embedding.weight"):
        folder = make_tiny_mbd(tmp_path / extra, processor_bands=(1,))
        state = load_file(folder / WEIGHTS_FILE)
        state[extra] = torch.ones(3)
        save_file(state, folder / WEIGHTS_FILE)
        with pytest.raises(
            CheckpointError, match=rf"{re.escape(str(folder))}: .*{re.escape(extra)}.*no band"
        ):
            MultiBandDiffusion.load(folder)
