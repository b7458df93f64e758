"""train.py end to end on a synthetic archive: weights out, served by the model cache predict.py uses."""

import io
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen import InvalidInputError, SamplingParams
from musicgen.finetuned import load_finetuned
from musicgen.serving import ModelCache
from musicgen.tiny import save_tiny_model
from musicgen.training.dataset import DatasetError


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    save_tiny_model(root / "small", "mono", seed=2)
    save_tiny_model(root / "melody", "melody", seed=2)
    return root


@pytest.fixture(autouse=True)
def weights_env(weights, monkeypatch):
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(weights))


def tone_archive(path, captions=True, count=4, seconds=3.0):
    """A tar.gz of short tones, each with a .txt caption."""
    with tarfile.open(path, "w:gz") as tar:
        for i in range(count):
            t = np.arange(int(32000 * seconds)) / 32000
            buf = io.BytesIO()
            sf.write(
                buf, (0.5 * np.sin(2 * np.pi * (220 * (i + 1)) * t)).astype(np.float32), 32000, format="WAV"
            )
            members = [(f"songs/tone{i}.wav", buf.getvalue())]
            if captions:
                members.append((f"songs/tone{i}.txt", f"a pure tone number {i}".encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _train(archive, **inputs):
    from train import train

    defaults = dict(
        model_version="small",
        method="lora",
        lora_rank=4,
        one_same_description=None,
        epochs=2,
        batch_size=2,
        gradient_accumulation=1,
        learning_rate=3e-3,
        warmup_steps=1,
        lr_scheduler="cosine",
        condition_dropout=None,
        segment_seconds=1.0,
        validation_split=0.2,
        seed=0,
    )
    return train(dataset_path=archive, **{**defaults, **inputs})


@pytest.mark.parametrize("method, variant", [("lora", "small"), ("full", "small"), ("lora", "melody")])
def test_trained_weights_are_served_and_change_the_music(tmp_path, method, variant):
    out = _train(tone_archive(tmp_path / "data.tar.gz"), method=method, model_version=variant)
    tuned = load_finetuned(out.weights)
    assert tuned.base_variant == variant and tuned.method == method
    assert tuned.dataset_report["segments"] == 12
    assert tuned.training["segment_seconds"] == 1.0
    cache = ModelCache(device="cpu")
    greedy = dict(duration=0.3, sampling=SamplingParams(top_k=1), seed=0)
    base = cache.get(variant).generate(["a pure tone number 1"], **greedy).codes
    served = cache.get(variant, finetuned=out.weights).generate(["a pure tone number 1"], **greedy).codes
    assert not torch.equal(base, served)


def test_missing_captions_are_listed(tmp_path):
    with pytest.raises(DatasetError, match="tone0.wav"):
        _train(tone_archive(tmp_path / "data.tar.gz", captions=False))


def test_fallback_caption(tmp_path):
    out = _train(
        tone_archive(tmp_path / "data.tar.gz", captions=False, count=2), one_same_description="tones"
    )
    assert load_finetuned(out.weights).dataset_report["caption_sources"]["one_same_description"] == 2


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"model_version": "huge"}, "model_version"),
        ({"method": "qlora"}, "method"),
        ({"segment_seconds": 45}, "segment_seconds"),
        (
            {"model_version": "style", "segment_seconds": 5},
            "segment_seconds must be at least 9 for the style",
        ),
        ({"learning_rate": 2.0}, "learning_rate"),
        ({"epochs": 0}, "epochs"),
        ({"seed": -5}, "seed"),
        # what Cog's local server passes through unchecked (each once ended in a raw TypeError)
        ({"epochs": 2.5}, "epochs must be a whole number"),
        ({"epochs": "3"}, "epochs must be a whole number"),
        ({"epochs": True}, "epochs must be a whole number"),
        ({"learning_rate": "NaN"}, "learning_rate must be a finite number"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
        ({"lora_rank": 2.5}, "lora_rank must be a whole number"),
        ({"segment_seconds": "2"}, "segment_seconds must be a finite number"),
        ({"seed": "x"}, "seed must be a whole number"),
        ({"one_same_description": 123}, "one_same_description must be text"),
        ({"validation_split": None}, "validation_split must be a finite number"),
        ({"batch_size": 1.5}, "batch_size must be a whole number"),
        ({"epoch": 3}, "unknown input 'epoch': this model takes dataset_path"),
    ],
)
def test_bad_inputs_fail_before_any_work(tmp_path, inputs, message):
    with pytest.raises(InvalidInputError, match=message):
        _train(tmp_path / "never-read.tar.gz", **inputs)


def test_whole_numbers_sent_as_floats_train_as_integers(tmp_path, monkeypatch):
    import train as adapter

    seen = {}

    def fake_fine_tune(dataset, model_version, out, settings, **kwargs):
        seen.update(settings=settings, **kwargs)
        out.write_bytes(b"weights")

    monkeypatch.setattr(adapter, "fine_tune", fake_fine_tune)
    (tmp_path / "data.zip").write_bytes(b"PK")
    adapter.train(
        dataset_path=str(tmp_path / "data.zip"), epochs=3.0, lora_rank=8.0, segment_seconds=2, seed=7
    )
    settings = seen["settings"]
    assert (settings.epochs, settings.lora_rank, settings.seed) == (3, 8, 7)
    assert type(settings.epochs) is int and seen["segment_seconds"] == 2.0


def test_each_training_keeps_only_the_newest_weights_on_disk(tmp_path, monkeypatch):
    import train as adapter

    monkeypatch.setattr(
        adapter, "fine_tune", lambda dataset, model_version, out, *a, **k: out.write_bytes(b"w")
    )
    (tmp_path / "data.zip").write_bytes(b"PK")
    first = adapter.train(dataset_path=str(tmp_path / "data.zip")).weights
    second = adapter.train(dataset_path=str(tmp_path / "data.zip")).weights
    assert second.is_file() and not first.exists() and not first.parent.exists()
