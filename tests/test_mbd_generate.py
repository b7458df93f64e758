"""MultiBand Diffusion through every entry point: `MusicGen.generate(decoder=...)`, the CLI's `--decoder mbd`
and the server's `multi_band_diffusion`, mono and stereo, on a tiny random MBD written in the release's
layout (a pickle with OmegaConf configs) and converted by our converter, as `download_weights.py mbd` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen.cli import main
from musicgen.errors import InvalidInputError, WeightsNotFoundError
from musicgen.tiny import save_tiny_model
from tests.mbd_fixtures import make_tiny_mbd
from tests.test_server import decode, run_server

SR = 32000


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A weights folder with the tiny `small` and `stereo-small` and a converted tiny MBD in `mbd/`."""
    folder = tmp_path_factory.mktemp("mbd-weights")
    save_tiny_model(folder / "small", "mono", 0)
    save_tiny_model(folder / "stereo-small", "stereo", 1)
    make_tiny_mbd(folder / "mbd")
    return folder


@pytest.fixture
def weights_env(weights, monkeypatch) -> Path:
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return weights


def _engine(weights: Path, name: str):
    from musicgen.loading import build_model, read_checkpoint

    return build_model(read_checkpoint(weights / name), "cpu")


@pytest.mark.parametrize("name, channels", [("small", 1), ("stereo-small", 2)])
def test_generate_with_mbd_is_seeded_and_differs_from_encodec(weights_env, name, channels):
    model = _engine(weights_env, name)
    options = dict(duration=0.5, seed=11)
    first = model.generate("lo-fi beat", decoder="mbd", **options)
    again = model.generate("lo-fi beat", decoder="mbd", **options)
    other_seed = model.generate("lo-fi beat", decoder="mbd", duration=0.5, seed=12)
    encodec = model.generate("lo-fi beat", **options)

    assert first.audio.shape == encodec.audio.shape == (1, channels, SR // 2)
    assert torch.isfinite(first.audio).all()
    torch.testing.assert_close(first.codes, encodec.codes, rtol=0, atol=0)  # the decoder changes audio only
    assert torch.equal(first.audio, again.audio)  # same seed, same audio
    assert not torch.equal(first.audio, other_seed.audio)
    assert not torch.allclose(first.audio, encodec.audio, atol=1e-3)
    if channels == 2:  # each channel decoded as a mono clip of its own: the channels stay different
        assert not torch.allclose(first.audio[0, 0], first.audio[0, 1], atol=1e-4)


def test_the_loaded_decoder_is_kept_and_a_bad_name_refused(weights_env):
    model = _engine(weights_env, "small")
    mbd = model.diffusion_decoder("mbd")
    assert model.diffusion_decoder("mbd") is mbd  # loaded once
    assert model.diffusion_decoder("encodec") is None
    with pytest.raises(InvalidInputError, match=r"decoder must be one of \('encodec', 'mbd'\)"):
        model.generate("x", duration=0.5, decoder="diffusion")


def test_missing_mbd_weights_fail_before_generating(tmp_path, monkeypatch, weights):
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    model = _engine(weights, "small")
    called = []
    monkeypatch.setattr(model, "prepare", lambda *a, **k: called.append(1))
    with pytest.raises(WeightsNotFoundError, match="download_weights.py mbd"):
        model.generate("x", duration=0.5, decoder="mbd")
    assert not called  # nothing was generated first


@pytest.mark.parametrize("name, channels", [("small", 1), ("stereo-small", 2)])
def test_cli_decoder_mbd(weights_env, tmp_path, name, channels):
    out_mbd, out_encodec = tmp_path / "mbd.wav", tmp_path / "encodec.wav"
    args = ["generate", "--model", name, "--prompt", "folk", "--duration", "0.5", "--seed", "4", "--quiet"]
    assert main([*args, "--decoder", "mbd", "--out", str(out_mbd)]) == 0
    assert main([*args, "--out", str(out_encodec)]) == 0
    mbd, rate = sf.read(out_mbd, always_2d=True)
    encodec, _ = sf.read(out_encodec, always_2d=True)
    assert rate == SR and mbd.shape == encodec.shape == (SR // 2, channels)
    assert not np.allclose(mbd, encodec, atol=1e-3)


def test_cli_refuses_missing_mbd_weights_before_loading_the_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    args = ["generate", "--model", "small", "--decoder", "mbd", "--no-download", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    # the MBD weights are looked for first: the message is about them, not about the missing model
    assert "python scripts/download_weights.py mbd" in err and "'small'" not in err


def test_server_multi_band_diffusion_mono_and_stereo(weights, tmp_path):
    with run_server(tmp_path, weights) as server:
        results = {}
        for name in ("small", "stereo-small"):
            inputs = dict(model_version=name, prompt="synth pop", duration=1, seed=5)
            results[name] = [
                server.predict(**inputs, multi_band_diffusion=True),
                server.predict(**inputs, multi_band_diffusion=True),
                server.predict(**inputs),
            ]
    for name, channels in (("small", 1), ("stereo-small", 2)):
        mbd, again, encodec = results[name]
        assert [p["status"] for p in results[name]] == ["succeeded"] * 3, mbd.get("error")
        _, audio, rate = decode(mbd["output"])
        assert rate == SR and audio.shape == (SR, channels)
        np.testing.assert_array_equal(audio, decode(again["output"])[1])  # same seed, same audio
        assert not np.allclose(audio, decode(encodec["output"])[1], atol=1e-3)
        assert "multi-band diffusion: " in mbd["logs"] and "(100%)" in mbd["logs"]
        assert "multi-band diffusion" not in encodec["logs"]


def test_server_names_the_command_when_mbd_weights_are_missing(tmp_path):
    folder = tmp_path / "weights"
    save_tiny_model(folder / "small", "mono", 0)
    with run_server(tmp_path, folder) as server:
        failed = server.predict(model_version="small", duration=1, multi_band_diffusion=True)
        assert failed["status"] == "failed"
        assert "python scripts/download_weights.py mbd" in failed["error"]
        assert server.predict(model_version="small", duration=1)["status"] == "succeeded"


def test_cancelling_a_prediction_stops_its_diffusion(weights_env, monkeypatch):
    """The decode runs in a thread, which asyncio cannot cancel: a cancelled prediction's diffusion stops at
    its next step instead of running on (minutes on CPU) for nobody."""
    import asyncio
    import inspect
    import time

    from musicgen.diffusion import MultiBandDiffusion
    from predict import Runner

    steps = []
    original = MultiBandDiffusion._sample_band

    def slowed(self, band, cond, noise, on_step):
        def step():
            steps.append(time.monotonic())
            time.sleep(0.05)
            on_step()

        return original(self, band, cond, noise, step)

    monkeypatch.setattr(MultiBandDiffusion, "_sample_band", slowed)
    runner = Runner()
    runner.setup()
    params = inspect.signature(Runner.run).parameters
    inputs = {name: p.default.default for name, p in params.items() if name != "self"}
    inputs.update(model_version="small", duration=1, seed=2, multi_band_diffusion=True)

    async def cancel_during_the_diffusion():
        task = asyncio.create_task(runner.run(**inputs))
        while len(steps) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    # asyncio.run returns once its executor's threads have ended: the decode thread included
    asyncio.run(cancel_during_the_diffusion())
    mbd = runner.cache.mbd()
    total = mbd.reverse_steps(50, 1, 640)
    assert 3 <= len(steps) <= 5 < total  # it stopped within a step or two of the cancellation
