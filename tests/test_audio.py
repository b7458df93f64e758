"""Audio reading, writing and normalisation (CPU, no network)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from musicgen.audio import (
    SUPPORTED_READ_SUFFIXES,
    SUPPORTED_WRITE_SUFFIXES,
    normalize,
    read_audio,
    write_audio,
)
from musicgen.errors import AudioFileError, InvalidInputError


def tone(freq: float, rate: int, seconds: float, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """Sine [S, C] (soundfile's layout); channel c at amp / (c + 1) so channels are distinguishable."""
    t = np.arange(int(round(seconds * rate))) / rate
    sig = np.sin(2 * np.pi * freq * t)
    return np.stack([amp / (c + 1) * sig for c in range(channels)], axis=1).astype(np.float32)


def dominant_hz(wav: torch.Tensor, rate: int) -> float:
    """Frequency of the strongest FFT bin of the first channel of wav [C, S]."""
    spectrum = np.abs(np.fft.rfft(wav[0].numpy() * np.hanning(wav.shape[-1])))
    return float(np.argmax(spectrum) * rate / wav.shape[-1])


def write_source(path, data: np.ndarray, rate: int) -> None:
    kwargs = {"format": "OGG", "subtype": "OPUS"} if path.suffix == ".opus" else {}
    sf.write(str(path), data, rate, **kwargs)


# (suffix, file rate, file channels): every readable format, at rates and channel counts that need work
READ_CASES = [
    (".wav", 44100, 2),
    (".wav", 16000, 6),
    (".flac", 48000, 1),
    (".mp3", 44100, 2),
    (".mp3", 22050, 1),
    (".ogg", 22050, 2),
    (".opus", 48000, 1),
    (".aiff", 24000, 2),
]


def test_read_cases_cover_supported_suffixes():
    assert {s for s, _, _ in READ_CASES} | {".aif"} == set(SUPPORTED_READ_SUFFIXES)


@pytest.mark.parametrize("suffix,file_rate,file_channels", READ_CASES)
@pytest.mark.parametrize("rate,channels", [(32000, 1), (32000, 2), (16000, 2)])
def test_read_resamples_and_mixes(tmp_path, suffix, file_rate, file_channels, rate, channels):
    path = tmp_path / f"in{suffix}"
    seconds = 1.5
    write_source(path, tone(440.0, file_rate, seconds, file_channels), file_rate)

    wav = read_audio(path, rate, channels)

    assert wav.dtype == torch.float32
    # torchaudio's resampler returns ceil(S * new / old) samples; every codec here keeps the exact length
    assert wav.shape == (channels, math.ceil(round(seconds * file_rate) * rate / file_rate))
    # the tone is still at 440 Hz at the new rate (so the rate really changed, not just the length)
    assert abs(dominant_hz(wav, rate) - 440.0) < 2.0
    assert 0.2 < wav.abs().max() < 0.6


def test_read_channel_rules(tmp_path):
    path = tmp_path / "st.wav"
    data = tone(440.0, 32000, 0.5, channels=3)  # amplitudes 0.5, 0.25, 0.1667
    sf.write(str(path), data, 32000, subtype="FLOAT")

    mono = read_audio(path, 32000, 1)
    torch.testing.assert_close(mono[0], torch.from_numpy(data.mean(axis=1)))
    stereo = read_audio(path, 32000, 2)  # more than 2 channels: the first two are kept
    torch.testing.assert_close(stereo, torch.from_numpy(data[:, :2].T.copy()))

    mono_path = tmp_path / "mono.wav"
    sf.write(str(mono_path), data[:, :1], 32000, subtype="FLOAT")
    dup = read_audio(mono_path, 32000, 2)  # mono to stereo: duplicated
    assert torch.equal(dup[0], dup[1])
    torch.testing.assert_close(dup[0], torch.from_numpy(data[:, 0].copy()))


def test_read_slice(tmp_path):
    path = tmp_path / "ramp.wav"
    rate = 8000
    ramp = (np.arange(rate * 2) / (rate * 2)).astype(np.float32)  # value = position, to check the offsets
    sf.write(str(path), ramp, rate, subtype="FLOAT")

    part = read_audio(path, rate, 1, start=0.5, end=1.25)
    assert part.shape == (1, int(0.75 * rate))
    torch.testing.assert_close(part[0], torch.from_numpy(ramp[rate // 2 : rate * 5 // 4]))

    tail = read_audio(path, rate, 1, start=1.5)
    assert tail.shape == (1, rate // 2)
    head = read_audio(path, rate, 1, end=0.25)
    assert head.shape == (1, rate // 4)
    # an end past the file reads to the end
    assert read_audio(path, rate, 1, start=1.0, end=10.0).shape == (1, rate)

    # the slice is taken at the file's rate, then resampled
    part16 = read_audio(path, 16000, 1, start=0.5, end=1.0)
    assert part16.shape == (1, 8000)


def test_read_slice_of_mp3(tmp_path):
    path = tmp_path / "a.mp3"
    sf.write(str(path), tone(440.0, 32000, 2.0, 2), 32000)
    part = read_audio(path, 32000, 2, start=0.5, end=1.5)
    assert part.shape == (2, 32000)
    assert abs(dominant_hz(part, 32000) - 440.0) < 2.0


def test_read_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioFileError, match="not found") as info:
        read_audio(path, 32000, 1)
    assert str(path) in str(info.value)


def test_read_directory(tmp_path):
    with pytest.raises(AudioFileError) as info:
        read_audio(tmp_path, 32000, 1)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"this is not audio at all, just some text" * 10])
@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".txt"])
def test_read_not_audio(tmp_path, content, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(AudioFileError, match="Could not read audio file") as info:
        read_audio(path, 32000, 1)
    assert str(path) in str(info.value)
    assert ".wav" in str(info.value)  # says what would work


def test_read_zero_length(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros((0, 2), np.float32), 32000)
    with pytest.raises(AudioFileError, match="no samples") as info:
        read_audio(path, 32000, 1)
    assert str(path) in str(info.value)


def test_read_bad_slices(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(str(path), tone(440.0, 8000, 1.0), 8000)
    for start, end in [(2.0, None), (1.0, None), (0.5, 0.5), (0.6, 0.2), (-1.0, None), (None, float("nan"))]:
        with pytest.raises(InvalidInputError) as info:
            read_audio(path, 8000, 1, start=start, end=end)
        assert str(path) in str(info.value)


def test_read_cannot_invent_channels(tmp_path):
    path = tmp_path / "st.wav"
    sf.write(str(path), tone(440.0, 8000, 0.5, 2), 8000)
    with pytest.raises(InvalidInputError) as info:
        read_audio(path, 8000, 3)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", SUPPORTED_WRITE_SUFFIXES)
@pytest.mark.parametrize("channels", [1, 2])
def test_write_round_trip(tmp_path, suffix, channels):
    rate = 32000
    wav = torch.from_numpy(tone(440.0, rate, 1.0, channels).T.copy())  # [C, S]
    path = write_audio(tmp_path / "sub" / f"out{suffix}", wav, rate)

    assert path == tmp_path / "sub" / f"out{suffix}" and path.is_file()
    info = sf.info(str(path))
    assert info.samplerate == rate and info.channels == channels and info.frames == wav.shape[-1]
    back = read_audio(path, rate, channels)
    assert back.shape == wav.shape
    if suffix in (".wav", ".flac"):
        assert info.subtype == "PCM_16"
        assert (back - wav).abs().max() <= 1 / 32768
    else:  # lossy: same tone, about the same level
        assert abs(dominant_hz(back, rate) - 440.0) < 2.0
        assert abs(back.pow(2).mean().sqrt() - wav.pow(2).mean().sqrt()) < 0.02


def test_write_mp3_is_320_kbps(tmp_path):
    rate = 44100
    wav = torch.randn(2, rate * 2) * 0.1
    path = write_audio(tmp_path / "n.mp3", wav, rate)
    kbps = path.stat().st_size * 8 / 2 / 1000
    assert 300 < kbps < 340


def test_write_pcm16_quantisation_and_clamp(tmp_path):
    wav = torch.tensor([[0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -3.0, 0.123456, 1 / 65536, -0.99999]])
    path = write_audio(tmp_path / "q.wav", wav, 8000)
    ints, _ = sf.read(str(path), dtype="int16", always_2d=True)
    # ffmpeg's float -> s16 (what audiocraft's files hold): round(x * 2**15), clipped to the int16 range
    clamped = np.clip(wav.numpy()[0].astype(np.float64), -1, 1)
    expected = np.clip(np.rint(clamped * 32768), -32768, 32767).astype(np.int16)
    assert np.array_equal(ints[:, 0], expected)


def test_write_one_dimensional_is_mono(tmp_path):
    path = write_audio(tmp_path / "m.flac", torch.zeros(800), 8000)
    assert sf.info(str(path)).channels == 1


@pytest.mark.parametrize("name", ["out.aac", "out.m4a", "out", "out.txt"])
def test_write_unknown_suffix(tmp_path, name):
    with pytest.raises(InvalidInputError) as info:
        write_audio(tmp_path / name, torch.zeros(1, 100), 32000)
    message = str(info.value)
    assert str(tmp_path / name) in message
    assert all(s in message for s in SUPPORTED_WRITE_SUFFIXES)
    assert not (tmp_path / name).exists()


def test_write_rejects_bad_audio(tmp_path):
    with pytest.raises(InvalidInputError, match="NaN"):
        write_audio(tmp_path / "a.wav", torch.tensor([[0.0, float("nan")]]), 8000)
    with pytest.raises(InvalidInputError, match="MP3"):
        write_audio(tmp_path / "a.mp3", torch.zeros(1, 100), 96000)
    with pytest.raises(InvalidInputError):
        write_audio(tmp_path / "a.wav", torch.zeros(1, 1, 100), 8000)
    assert not list(tmp_path.iterdir())


# --- normalisation: expected values re-derived from audiocraft's formulas, not from the code under test


PEAK_1DB = 10 ** (-1 / 20)  # 0.8913
RMS_18DB = 10 ** (-18 / 20)  # 0.1259


def test_normalize_peak():
    torch.manual_seed(0)
    wav = torch.randn(2, 16000) * 0.05
    out = normalize(wav, "peak")
    assert math.isclose(out.abs().max().item(), PEAK_1DB, rel_tol=1e-6)
    torch.testing.assert_close(out, wav * (PEAK_1DB / wav.abs().max()))  # one gain for all channels
    loud = torch.randn(1, 1000) * 3  # peaks above 1 are brought down too
    assert math.isclose(normalize(loud, "peak").abs().max().item(), PEAK_1DB, rel_tol=1e-6)


def test_normalize_clip():
    wav = torch.linspace(-2, 2, 4001)[None]
    out = normalize(wav, "clip")
    assert math.isclose(out.max().item(), PEAK_1DB, rel_tol=1e-6)
    assert math.isclose(out.min().item(), -PEAK_1DB, rel_tol=1e-6)
    inside = wav.abs() <= PEAK_1DB
    assert torch.equal(out[inside], wav[inside])  # no gain, only clamping


def test_normalize_rms_uses_the_channel_mean():
    torch.manual_seed(0)
    left = torch.randn(16000) * 0.05
    wav = torch.stack([left, 0.5 * left])
    out = normalize(wav, "rms")
    mono_rms = out.mean(dim=0).pow(2).mean().sqrt().item()
    assert math.isclose(mono_rms, RMS_18DB, rel_tol=1e-4)
    expected_gain = RMS_18DB / (0.75 * left).pow(2).mean().sqrt()
    torch.testing.assert_close(out, (wav * expected_gain).clamp(-1, 1))


def test_normalize_rms_clamps():
    wav = torch.zeros(1, 1000)
    wav[0, 0] = 1.0  # one click: reaching -18 dB RMS needs a gain that overshoots full scale
    out = normalize(wav, "rms")
    assert out.max().item() == 1.0


def _sine(freq, amp, rate, seconds, channels=1):
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    return (amp * torch.sin(2 * math.pi * freq * t)).float().expand(channels, -1).clone()


@pytest.mark.parametrize("channels", [1, 2])
def test_loudness_measure_matches_bs1770(channels):
    # BS.1770: a full-scale 997 Hz sine in one channel reads -3.01 LKFS; channels add their energies
    rate = 32000
    amp = 0.25
    expected = -3.01 + 20 * math.log10(amp) + 10 * math.log10(channels)
    assert abs(AF.loudness(_sine(997.0, amp, rate, 3.0, channels), rate).item() - expected) < 0.05


@pytest.mark.parametrize("channels", [1, 2])
def test_normalize_loudness_without_compressor(channels):
    rate = 32000
    amp = 0.05
    wav = _sine(997.0, amp, rate, 3.0, channels)
    out = normalize(wav, "loudness", rate, loudness_compressor=False)
    # -14 LUFS for a 997 Hz sine: amplitude 10 ** ((-14 + 3.01 - 10 log10(channels)) / 20)
    target_amp = 10 ** ((-14 + 3.01 - 10 * math.log10(channels)) / 20)
    assert abs(out.abs().max().item() - target_amp) / target_amp < 0.01
    assert abs(AF.loudness(out, rate).item() + 14) < 0.01


def test_normalize_loudness_with_compressor_is_default():
    rate = 32000
    torch.manual_seed(0)
    wav = torch.randn(2, rate * 2) * 0.02
    measured = AF.loudness(wav, rate).item()
    gain = 10 ** ((-14 - measured) / 20)  # audiocraft: delta = -headroom - input loudness, in dB
    expected = torch.tanh(gain * wav).clamp(-1, 1)
    torch.testing.assert_close(normalize(wav, "loudness", rate), expected)
    torch.testing.assert_close(normalize(wav, "loudness", rate, loudness_compressor=True), expected)
    # the compressor only ever lowers levels, so the result is at most -14 LUFS
    assert AF.loudness(expected, rate).item() <= -14 + 1e-3


def test_normalize_loudness_energy_floor():
    rate = 32000
    torch.manual_seed(0)
    quiet = torch.randn(1, rate) * 1e-3  # RMS 1e-3 < 2e-3: left alone
    assert torch.equal(normalize(quiet, "loudness", rate), quiet)
    loud = torch.randn(1, rate) * 3e-3
    assert not torch.equal(normalize(loud, "loudness", rate), loud)


def test_normalize_loudness_needs_rate():
    with pytest.raises(InvalidInputError, match="sample rate"):
        normalize(torch.randn(1, 32000), "loudness")


def test_normalize_unknown_strategy():
    with pytest.raises(InvalidInputError) as info:
        normalize(torch.randn(1, 100), "lufs", 32000)
    assert all(s in str(info.value) for s in ("loudness", "clip", "peak", "rms"))


@pytest.mark.parametrize("strategy", ["peak", "clip", "rms", "loudness"])
def test_normalize_silence_and_shapes(strategy):
    silence = torch.zeros(2, 32000)
    assert torch.equal(normalize(silence, strategy, 32000), silence)
    mono = torch.randn(32000) * 0.1
    out = normalize(mono, strategy, 32000)
    assert out.shape == mono.shape and torch.isfinite(out).all()
