"""Training through the real Cog HTTP server (`--x-mode train`): an archive in, weights that predict.py serves
(in process, and for the style model through the server's /predictions)."""

import base64
import os
import shutil

import numpy as np
import pytest

from musicgen.finetuned import load_finetuned
from musicgen.tiny import save_tiny_model
from tests.test_server import call_predict, decode, run_server, style_audio, tiny_style_folder
from tests.test_style_training import style_archive
from tests.test_train import tone_archive


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    save_tiny_model(root / "small", "mono", seed=4)
    return root


def test_training_through_the_server_returns_weights_that_serve(weights_dir, tmp_path, monkeypatch):
    archive = tone_archive(tmp_path / "songs.tar.gz")
    inputs = {
        "dataset_path": f"data:application/gzip;base64,{base64.b64encode(archive.read_bytes()).decode()}",
        "model_version": "small",
        "epochs": 1,
        "batch_size": 2,
        "segment_seconds": 1,
        "learning_rate": 0.003,
        "seed": 1,
    }
    (tmp_path / "server").mkdir()
    with run_server(tmp_path / "server", weights_dir, mode="train") as server:
        done = server.submit({"input": inputs}, path="/trainings")
        bad = server.submit({"input": {**inputs, "method": "qlora"}}, path="/trainings")
        health = server.settled_status()
    assert done["status"] == "succeeded", done.get("error") or done.get("logs")
    assert "seed: 1" in done["logs"] and "segments" in done["logs"]
    header, payload = done["output"]["weights"].split(",", 1)
    weights = tmp_path / "trained.safetensors"
    weights.write_bytes(base64.b64decode(payload))
    tuned = load_finetuned(weights)
    assert tuned.base_variant == "small" and tuned.dataset_report["segments"] == 12
    assert bad["status"] == "failed" and "method must be one of lora, full" in bad["error"]
    assert health == "READY"

    # the file is what predict.py takes, through setup(weights) and through replicate_weights
    from predict import Runner

    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(weights_dir))
    base = Runner()
    base.setup()
    trained = Runner()
    trained.setup(weights=str(weights))
    common = {"model_version": "small", "prompt": "a pure tone number 1", "duration": 1, "seed": 0}
    plain = call_predict(base, **common).read_bytes()
    via_setup = call_predict(trained, **common).read_bytes()
    via_input = call_predict(base, **common, replicate_weights=str(weights)).read_bytes()
    assert via_setup == via_input != plain


@pytest.fixture(scope="module")
def style_weights_dir(tmp_path_factory):
    """The tiny MusicGen-Style checkpoint served as `style` (built once per session, linked here)."""
    root = tmp_path_factory.mktemp("style-weights")
    shutil.copytree(tiny_style_folder(tmp_path_factory), root / "style", copy_function=os.link)
    return root


def test_a_style_fine_tune_changes_the_music_served_on_predictions(style_weights_dir, tmp_path):
    """model_version=style trained through /trainings, then served through /predictions with
    replicate_weights: with a style excerpt and a prompt, the fine-tune makes other music than the base."""
    archive = style_archive(tmp_path / "pieces.tar.gz")
    inputs = {
        "dataset_path": f"data:application/gzip;base64,{base64.b64encode(archive.read_bytes()).decode()}",
        "model_version": "style",
        "epochs": 2,
        "batch_size": 1,
        "segment_seconds": 9,
        "learning_rate": 0.01,
        "seed": 1,
    }
    for folder in ("train", "predict"):
        (tmp_path / folder).mkdir()
    with run_server(tmp_path / "train", style_weights_dir, mode="train") as server:
        done = server.submit({"input": inputs}, path="/trainings")
        short = server.submit({"input": {**inputs, "segment_seconds": 5}}, path="/trainings")
    assert done["status"] == "succeeded", done.get("error") or done.get("logs")
    assert short["status"] == "failed" and "at least 9 for the style model" in short["error"]
    weights = tmp_path / "style-lora.safetensors"
    weights.write_bytes(base64.b64decode(done["output"]["weights"].split(",", 1)[1]))
    tuned = load_finetuned(weights)
    assert (tuned.base_variant, tuned.method, tuned.dataset_report["segments"]) == ("style", "lora", 2)

    excerpt = str(style_audio(tmp_path / "style.flac"))
    with run_server(tmp_path / "predict", style_weights_dir) as server:

        def audio(**extra) -> np.ndarray:
            prediction = server.predict(
                model_version="style",
                prompt="piece number 1",
                input_audio=excerpt,
                duration=1,
                seed=3,
                **extra,
            )
            assert prediction["status"] == "succeeded", prediction.get("error")
            return decode(prediction["output"])[1]

        base = audio()
        served = audio(replicate_weights=str(weights))
        again = audio()
    assert not np.array_equal(base, served)
    np.testing.assert_array_equal(again, base)  # the base model is untouched by the fine-tuned copy
