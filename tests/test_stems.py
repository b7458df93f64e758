"""Drums-and-bass removal with Demucs, on a tiny random HTDemucs (CPU, no network)."""

from __future__ import annotations

import json
import random
import sys
from fractions import Fraction

import pytest
import torch
from demucs.apply import apply_model
from demucs.htdemucs import HTDemucs
from safetensors.torch import save_file

from musicgen.audio import resample
from musicgen.errors import CheckpointError
from musicgen.stems import DemucsNotInstalledError, StemRemover, find_demucs_weights

SOURCES = ["drums", "bass", "other", "vocals"]  # htdemucs' order
RATE = 32000  # the melody's rate, as MusicGen hands it over
SIG = "0123abcd"


def tiny_htdemucs() -> HTDemucs:
    """HTDemucs with tiny sizes; a Fraction segment as the real one has (39/5 s), and a rate other than 32 kHz."""
    torch.manual_seed(0)
    model = HTDemucs(
        SOURCES,
        channels=8,
        dconv_comp=4,
        depth=2,
        t_layers=1,
        t_heads=2,
        nfft=512,
        samplerate=8000,
        segment=Fraction(1, 2),
    )
    return model.eval()


def _encode(value):
    """JSON form of Demucs' init arguments, fractions as demucs.hf._decode_json reads them."""
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    return value


def export_demucs(model: HTDemucs, folder, klass: str | None = None):
    """Writes `model` as Demucs' Hugging Face export: htdemucs.yaml + <sig>.safetensors with its init in metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    args, kwargs = model._init_args_kwargs
    metadata = {
        "klass": klass or f"{type(model).__module__}.{type(model).__name__}",
        "args": json.dumps(_encode(args)),
        "kwargs": json.dumps(_encode(kwargs)),
    }
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / f"{SIG}.safetensors"), metadata=metadata)
    (folder / "htdemucs.yaml").write_text(f"models: ['{SIG}']\n")
    return folder


@pytest.fixture(scope="module")
def tiny_demucs():
    return tiny_htdemucs()


@pytest.fixture(scope="module")
def weights(tiny_demucs, tmp_path_factory):
    """A weights folder holding the tiny model where find_demucs_weights looks."""
    root = tmp_path_factory.mktemp("weights")
    export_demucs(tiny_demucs, root / "demucs" / "htdemucs")
    return root


def melody(batch: int, channels: int, seconds: float) -> torch.Tensor:
    torch.manual_seed(1)
    return 0.1 * torch.randn(batch, channels, int(RATE * seconds))  # [B, C, S]


def test_find_demucs_weights(tmp_path, weights):
    assert find_demucs_weights(tmp_path) is None
    (tmp_path / "demucs" / "htdemucs").mkdir(parents=True)
    assert find_demucs_weights(tmp_path) is None  # an empty model folder is absent too
    assert find_demucs_weights(weights) == weights / "demucs" / "htdemucs"


def test_matches_manual_separation(tiny_demucs, weights):
    remover = StemRemover(find_demucs_weights(weights))
    loaded = remover.model.models[0]
    assert type(loaded) is HTDemucs and loaded.segment == Fraction(1, 2)
    for key, value in tiny_demucs.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    wav = melody(2, 2, 0.5)  # [B, C, S]
    random.seed(3)  # apply_model draws its time shift from `random`
    out = remover.remove_drums_and_bass(wav, RATE)
    assert out.shape == (2, 1, wav.shape[-1]) and out.dtype == torch.float32

    random.seed(3)
    stems = apply_model(tiny_demucs, resample(wav, RATE, 8000))  # [B, 4, 2, S']
    expected = (stems[:, SOURCES.index("vocals")] + stems[:, SOURCES.index("other")]).mean(1, keepdim=True)
    expected = resample(expected, 8000, RATE)[..., : wav.shape[-1]]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert out.abs().max() > 0


def test_mono_melody_is_duplicated(weights):
    remover = StemRemover(find_demucs_weights(weights))
    mono = melody(1, 1, 0.25)
    random.seed(5)
    out = remover.remove_drums_and_bass(mono, RATE)
    random.seed(5)
    same = remover.remove_drums_and_bass(mono.expand(-1, 2, -1), RATE)
    assert out.shape == (1, 1, mono.shape[-1])
    torch.testing.assert_close(out, same)


def test_refuses_a_class_outside_demucs(tiny_demucs, tmp_path):
    folder = export_demucs(tiny_demucs, tmp_path / "htdemucs", klass="torch.nn.Linear")
    with pytest.raises(CheckpointError, match=f"{SIG}.safetensors.*only classes of the demucs package"):
        StemRemover(folder)


def test_missing_demucs_says_how_to_install(weights, monkeypatch):
    monkeypatch.setitem(sys.modules, "demucs", None)  # makes `import demucs...` raise ImportError
    monkeypatch.setitem(sys.modules, "demucs.apply", None)
    with pytest.raises(DemucsNotInstalledError, match="pip install demucs"):
        StemRemover(find_demucs_weights(weights))


def test_melody_models_use_demucs_when_its_weights_are_present(tiny, weights, monkeypatch):
    engine = tiny.engine("melody")
    melody = torch.sin(torch.arange(RATE * 2) / RATE * 2 * torch.pi * 330)[None] * 0.5
    melody = melody + 0.3 * torch.randn(1, RATE * 2, generator=torch.Generator().manual_seed(0))
    greedy = {"duration": 0.4, "melody": melody, "seed": 0}
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(weights))
    engine._stems = None
    try:
        stemmed = engine.generate(["folk"], melody_stems="on", **greedy).codes
        again = engine.generate(["folk"], melody_stems="auto", **greedy).codes
        plain = engine.generate(["folk"], melody_stems="off", **greedy).codes
    finally:
        engine._stems = None
    assert torch.equal(stemmed, again)  # auto finds the weights; the same seed repeats Demucs' shift
    assert not torch.equal(stemmed, plain)


def test_stems_on_without_weights_fails_before_generating(tiny, tmp_path, monkeypatch):
    from musicgen import WeightsNotFoundError

    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(tmp_path))
    engine = tiny.engine("melody")
    engine._stems = None
    with pytest.raises(WeightsNotFoundError, match="htdemucs"):
        engine.generate(["folk"], duration=0.2, melody=torch.zeros(1, RATE), melody_stems="on")
    # auto without weights simply goes without
    assert engine.generate(["folk"], duration=0.2, melody=torch.zeros(1, RATE), seed=1).codes.shape[-1] == 10
