"""Chroma features against transformers' MusicgenMelodyFeatureExtractor (CPU, no network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import MusicgenMelodyFeatureExtractor
from transformers.audio_utils import chroma_filter_bank

from musicgen.chroma import _filter_bank, extract_chroma, fit_chroma, null_chroma
from musicgen.config import SAMPLE_RATE, ChromaConfig
from musicgen.errors import InvalidInputError

CONFIG = ChromaConfig()
HOP = CONFIG.hop_length


@pytest.fixture(scope="module")
def reference():
    return MusicgenMelodyFeatureExtractor()


def melody(batch: int, samples: int, rate: int, channels: int | None = None, seed: int = 0) -> np.ndarray:
    """Random notes (a harmonic tone changing every ~0.3 s) plus a little noise: [B, S] or [B, C, S]."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    out = []
    for _ in range(batch):
        chans = []
        for _ in range(channels or 1):
            step = int(0.3 * rate)
            notes = rng.integers(48, 84, size=samples // step + 1)
            hz = 440.0 * 2.0 ** ((np.repeat(notes, step)[:samples] - 69) / 12)
            phase = 2 * np.pi * np.cumsum(hz) / rate
            sig = sum(0.3 / k * np.sin(k * phase) for k in (1, 2, 3))
            sig = sig + 0.01 * rng.standard_normal(samples) + 0.05 * np.sin(2 * np.pi * 97.0 * t)
            chans.append(sig)
        out.append(np.stack(chans) if channels else chans[0])
    return np.stack(out).astype(np.float32)


def reference_chroma(extractor, audio, rate: int) -> torch.Tensor:
    # transformers only resamples torch tensors, and reads a [B, C, S] tensor as a batch of multichannel audio
    feats = extractor(torch.from_numpy(audio), sampling_rate=rate, return_tensors="pt")["input_features"]
    return feats


def assert_same_bins(ours: torch.Tensor, theirs: torch.Tensor):
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert ours.dtype == torch.float32
    assert torch.equal(ours.sum(-1), torch.ones(ours.shape[:2]))  # one-hot
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    assert torch.equal(ours, theirs)


def test_filter_bank_matches_transformers():
    theirs = chroma_filter_bank(
        sampling_rate=SAMPLE_RATE, num_frequency_bins=CONFIG.n_fft, tuning=0, num_chroma=12
    )
    ours = _filter_bank(SAMPLE_RATE, CONFIG.n_fft, 12)
    assert ours.shape == (12, CONFIG.n_fft // 2 + 1)
    assert torch.equal(ours, torch.from_numpy(theirs).float())


# lengths: not multiples of the hop, exactly one, shorter than n_fft, and one sample (the null melody)
@pytest.mark.parametrize("samples", [SAMPLE_RATE * 4 + 1234, HOP * 20, 10_000, 1])
def test_mono_matches_transformers(reference, samples):
    audio = melody(2, samples, SAMPLE_RATE, seed=samples)
    ours = extract_chroma(torch.from_numpy(audio), SAMPLE_RATE, CONFIG)
    assert ours.shape == (2, 1 + max(samples, CONFIG.n_fft) // HOP, 12)
    assert_same_bins(ours, reference_chroma(reference, audio, SAMPLE_RATE))


@pytest.mark.parametrize("samples", [SAMPLE_RATE * 3 + 777, 12_345])
def test_stereo_matches_transformers(reference, samples):
    audio = melody(2, samples, SAMPLE_RATE, channels=2, seed=samples)
    ours = extract_chroma(torch.from_numpy(audio), SAMPLE_RATE, CONFIG)
    assert_same_bins(ours, reference_chroma(reference, audio, SAMPLE_RATE))
    # and it is the chroma of the channel mean
    mixed = extract_chroma(torch.from_numpy(audio.mean(axis=1)), SAMPLE_RATE, CONFIG)
    assert torch.equal(ours, mixed)


@pytest.mark.parametrize("rate,channels", [(44100, None), (22050, 2), (48000, 1)])
def test_other_rates_match_transformers(reference, rate, channels):
    audio = melody(2, int(rate * 2.7) + 11, rate, channels=channels, seed=rate)
    ours = extract_chroma(torch.from_numpy(audio), rate, CONFIG)
    resampled = int(np.ceil(audio.shape[-1] * SAMPLE_RATE / rate))
    assert ours.shape[1] == 1 + resampled // HOP
    assert_same_bins(ours, reference_chroma(reference, audio, rate))


def test_long_input_is_cut_at_30_seconds_like_transformers(reference):
    audio = melody(1, SAMPLE_RATE * 31 + 100, SAMPLE_RATE, seed=3)
    ours = extract_chroma(torch.from_numpy(audio), SAMPLE_RATE, CONFIG)
    assert ours.shape == (1, 235, 12)
    assert_same_bins(ours, reference_chroma(reference, audio, SAMPLE_RATE))
    # without the cut every frame is kept (audiocraft), and the frames that never saw the cut agree
    full = extract_chroma(torch.from_numpy(audio), SAMPLE_RATE, CONFIG, max_seconds=None)
    assert full.shape == (1, 1 + audio.shape[-1] // HOP, 12)
    safe = (30 * SAMPLE_RATE - CONFIG.n_fft // 2) // HOP + 1  # frames whose window ends before 30 s
    assert torch.equal(full[:, :safe], ours[:, :safe])


def test_float64_input(reference):
    audio = melody(1, SAMPLE_RATE * 2 + 5, 44100).astype(np.float64)
    ours = extract_chroma(torch.from_numpy(audio), 44100, CONFIG)
    assert ours.dtype == torch.float32
    assert_same_bins(ours, reference_chroma(reference, audio, 44100))


@pytest.mark.parametrize("note,bin_", [(69, 9), (60, 0), (64, 4), (71, 11)])  # A4, C4, E4, B4
def test_pure_tone_lands_in_its_pitch_class(note, bin_):
    t = torch.arange(SAMPLE_RATE * 2) / SAMPLE_RATE
    wav = torch.sin(2 * torch.pi * 440.0 * 2 ** ((note - 69) / 12) * t)[None]
    bins = extract_chroma(wav, SAMPLE_RATE, CONFIG).argmax(-1)
    assert (bins == bin_).all()


def test_null_chroma_is_the_chroma_of_silence():
    null = null_chroma(3, 7)
    assert null.shape == (3, 7, 12) and null.dtype == torch.float32
    assert (null[..., 0] == 1).all() and null[..., 1:].sum() == 0
    # audiocraft's null melody is a 1-sample zero wav; its chroma is 5 frames on bin 0
    silent = extract_chroma(torch.zeros(3, 1, 1), SAMPLE_RATE, CONFIG)
    assert torch.equal(silent, null_chroma(3, 5))
    assert torch.equal(fit_chroma(silent, 235), null_chroma(3, 235))


def test_fit_chroma_tiles_and_truncates():
    chroma = torch.nn.functional.one_hot(torch.tensor([[1, 2, 3], [4, 5, 6]]), 12).float()  # [2, 3, 12]
    tiled = fit_chroma(chroma, 8)
    assert tiled.shape == (2, 8, 12)
    assert tiled.argmax(-1).tolist() == [[1, 2, 3, 1, 2, 3, 1, 2], [4, 5, 6, 4, 5, 6, 4, 5]]
    assert fit_chroma(chroma, 2).argmax(-1).tolist() == [[1, 2], [4, 5]]
    assert torch.equal(fit_chroma(chroma, 3), chroma)
    assert torch.equal(fit_chroma(chroma, 6), torch.cat([chroma, chroma], 1))


def test_bad_inputs():
    with pytest.raises(InvalidInputError):
        extract_chroma(torch.zeros(100), SAMPLE_RATE, CONFIG)
    with pytest.raises(InvalidInputError):
        extract_chroma(torch.zeros(1, 0), SAMPLE_RATE, CONFIG)
    with pytest.raises(InvalidInputError):
        fit_chroma(torch.zeros(1, 0, 12), 10)
    with pytest.raises(InvalidInputError):
        null_chroma(0, 5)
