"""Audio files in and out, and the loudness normalisation applied before writing.

All I/O goes through soundfile (libsndfile), in-process: torchaudio 2.9 can no longer load or save without
torchcodec, and audiocraft's ffmpeg pipe would need a binary and a subprocess. Resampling and loudness
measurement use `torchaudio.functional`, which still has both.

Waveforms are float32 tensors shaped `[C, S]` (channels, samples) in [-1, 1].
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from .errors import AudioFileError, InvalidInputError

# What libsndfile decodes here (MP3 through mpg123, Ogg Vorbis / Opus through libvorbis / libopus).
SUPPORTED_READ_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif")
# Output formats: 16-bit PCM for .wav and .flac (what audiocraft's audio_write produces), 320 kbps CBR MP3,
# Vorbis for .ogg.
SUPPORTED_WRITE_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")

NORMALIZATION_STRATEGIES = ("loudness", "clip", "peak", "rms")

# LAME only encodes the MPEG-1/2/2.5 rates; checking first gives a clear message instead of libsndfile's.
_MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

# Resampling filter as close as torchaudio gets to julius.resample_frac, which audiocraft uses
# (transformers' MusicGen melody feature extractor uses the same two settings for the same reason).
RESAMPLE_ROLLOFF = 0.945
RESAMPLE_LOWPASS_WIDTH = 24


def resample(wav: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """Resamples `wav` ([..., S]) from `from_rate` to `to_rate` Hz; returns `wav` itself when they match."""
    if int(from_rate) == int(to_rate):
        return wav
    return AF.resample(
        wav,
        int(from_rate),
        int(to_rate),
        rolloff=RESAMPLE_ROLLOFF,
        lowpass_filter_width=RESAMPLE_LOWPASS_WIDTH,
    )


def convert_channels(wav: torch.Tensor, channels: int, *, name: str = "audio") -> torch.Tensor:
    """Brings `wav` ([C, S]) to `channels` channels.

    Mono output is the mean of all channels; mono input is duplicated; with more channels than asked the
    first ones are kept (front left / front right in WAV and FLAC channel order), as audiocraft's
    convert_audio_channels does, rather than folding centre and surround channels into the mix.
    """
    # wav: [C, S]
    src = wav.shape[0]
    if channels < 1:
        raise InvalidInputError(f"channels must be at least 1, got {channels}")
    if src == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=0, keepdim=True)
    if src == 1:
        return wav.expand(channels, -1).contiguous()
    if src > channels:
        return wav[:channels].contiguous()
    raise InvalidInputError(f"{name} has {src} channels; cannot make {channels} channels out of them")


def read_audio(
    path: str | Path,
    sample_rate: int,
    channels: int,
    start: float | None = None,
    end: float | None = None,
) -> torch.Tensor:
    """Reads an audio file as a float32 tensor `[channels, samples]` at `sample_rate` Hz.

    Args:
        path: a file libsndfile decodes (see SUPPORTED_READ_SUFFIXES), at any rate and channel count.
        sample_rate: rate of the returned audio; the file is resampled when it differs.
        channels: channel count of the returned audio (see `convert_channels` for the mixing rules).
        start: optional offset in seconds where reading starts (default: the beginning).
        end: optional offset in seconds where reading stops (default: the end); past the end means the end.

    Raises:
        AudioFileError: the file is missing, not a readable audio file, or holds no samples (in the slice).
        InvalidInputError: `start` / `end` / `sample_rate` / `channels` are not acceptable.
    """
    path = Path(path)
    if sample_rate <= 0:
        raise InvalidInputError(f"sample_rate must be positive, got {sample_rate}")
    if channels < 1:
        raise InvalidInputError(f"channels must be at least 1, got {channels}")
    if not path.exists():
        raise AudioFileError(f"Audio file not found: {path}")
    if not path.is_file():
        raise AudioFileError(f"Audio path is not a file: {path}")
    if start is not None and (not math.isfinite(start) or start < 0):
        raise InvalidInputError(f"start must be a finite number of seconds >= 0, got {start} (file {path})")
    if end is not None and (not math.isfinite(end) or end < 0):
        raise InvalidInputError(f"end must be a finite number of seconds >= 0, got {end} (file {path})")
    if start is not None and end is not None and end <= start:
        raise InvalidInputError(f"end ({end} s) must be after start ({start} s) when reading {path}")

    try:
        with sf.SoundFile(str(path)) as f:
            file_rate, total = f.samplerate, f.frames
            if total <= 0:
                raise AudioFileError(f"Audio file {path} contains no samples")
            first = 0 if start is None else int(round(start * file_rate))
            last = total if end is None else min(total, int(round(end * file_rate)))
            if first >= total:
                raise InvalidInputError(
                    f"start ({start} s) is at or past the end of {path}, "
                    f"which lasts {total / file_rate:.3f} s"
                )
            if first > 0:
                f.seek(first)
            data = f.read(frames=max(last - first, 0), dtype="float32", always_2d=True)
    except sf.SoundFileError as e:  # libsndfile could not open or decode it
        raise AudioFileError(
            f"Could not read audio file {path}: {e}. Supported formats: {', '.join(SUPPORTED_READ_SUFFIXES)}"
        ) from e
    if data.shape[0] == 0:
        raise AudioFileError(f"Audio file {path} contains no samples in the requested range")

    # data: [S, C] -> wav: [C, S]
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    # Mixing first means resampling fewer channels; both are linear, so the order changes only rounding.
    wav = convert_channels(wav, channels, name=str(path))
    wav = resample(wav, file_rate, sample_rate)
    return wav.to(torch.float32).contiguous()


def write_audio(path: str | Path, wav: torch.Tensor, sample_rate: int) -> Path:
    """Writes `wav` ([C, S] or [S], float) to `path`, the format chosen by its suffix; returns the path.

    .wav and .flac are 16-bit PCM, .mp3 is 320 kbps constant bitrate, .ogg is Vorbis. Samples are clamped to
    [-1, 1] first (normalise beforehand with `normalize` to avoid hard clipping). Parent folders are created;
    a half-written file is removed when writing fails.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_WRITE_SUFFIXES:
        raise InvalidInputError(
            f"Cannot write {path}: unknown audio format {suffix or '(no suffix)'!r}; "
            f"supported: {', '.join(SUPPORTED_WRITE_SUFFIXES)}"
        )
    if sample_rate <= 0:
        raise InvalidInputError(f"sample_rate must be positive, got {sample_rate}")
    if suffix == ".mp3" and sample_rate not in _MP3_SAMPLE_RATES:
        raise InvalidInputError(
            f"Cannot write {path}: MP3 does not support {sample_rate} Hz; "
            f"use one of {', '.join(map(str, _MP3_SAMPLE_RATES))} Hz or another format"
        )
    wav = _as_channels_first(wav, "write_audio")
    if wav.shape[-1] == 0:
        raise InvalidInputError(f"Cannot write {path}: the audio has no samples")
    if not torch.isfinite(wav).all():
        raise InvalidInputError(f"Cannot write {path}: the audio contains NaN or infinite values")

    # [C, S] -> [S, C], the layout soundfile expects
    data = wav.detach().to("cpu", torch.float32).clamp(-1.0, 1.0).numpy().T
    kwargs: dict = {}
    if suffix in (".wav", ".flac"):
        # Quantise ourselves the way ffmpeg does for audiocraft (round(x * 2**15), clipped), rather than rely
        # on libsndfile's float scaling, so 16-bit outputs match audiocraft's files sample for sample.
        data = np.clip(np.rint(data * 32768.0), -32768, 32767).astype(np.int16)
        kwargs["subtype"] = "PCM_16"
    elif suffix == ".mp3":
        # libsndfile maps compression level 0 to LAME's highest bitrate, 320 kbps: audiocraft's mp3_rate
        kwargs.update(subtype="MPEG_LAYER_III", compression_level=0.0, bitrate_mode="CONSTANT")
    else:
        kwargs["subtype"] = "VORBIS"
    data = np.ascontiguousarray(data)

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sf.write(str(path), data, int(sample_rate), **kwargs)
    except BaseException:
        # never leave a truncated file behind that looks like a result
        path.unlink(missing_ok=True)
        raise
    return path


def normalize(
    wav: torch.Tensor,
    strategy: str,
    sample_rate: int | None = None,
    *,
    peak_headroom_db: float = 1.0,
    rms_headroom_db: float = 18.0,
    loudness_headroom_db: float = 14.0,
    loudness_compressor: bool = True,
    energy_floor: float = 2e-3,
) -> torch.Tensor:
    """Normalises `wav` ([C, S] or [S]) with one of audiocraft's strategies; returns a new tensor.

    Same formulas as audiocraft's `normalize_audio` (with normalize=True) called from `audio_write`:

    - 'peak': scale so the largest |sample| is `peak_headroom_db` below full scale (1 dB: 0.891).
    - 'clip': clamp samples to +-10**(-peak_headroom_db / 20); no gain.
    - 'rms': scale so the RMS of the channel mean is `rms_headroom_db` below full scale (18 dB: 0.126),
      then clamp to [-1, 1].
    - 'loudness': scale to -`loudness_headroom_db` LUFS (ITU-R BS.1770-4, torchaudio's `loudness`), then
      tanh soft clipping when `loudness_compressor` (on by default, as the meta/musicgen Cog model writes
      its outputs), then clamp to [-1, 1]. Audio whose RMS over all samples is below `energy_floor` is
      left unscaled (it would take a huge, noise-amplifying gain); so is audio shorter than one 400 ms
      loudness block, which BS.1770 cannot measure.

    Silent audio is returned unchanged by 'peak' and 'rms' (audiocraft would divide by zero).
    `sample_rate` is required for 'loudness' only.
    """
    if strategy not in NORMALIZATION_STRATEGIES:
        raise InvalidInputError(
            f"Unknown normalization strategy {strategy!r}; "
            f"choose one of {', '.join(NORMALIZATION_STRATEGIES)}"
        )
    one_d = wav.dim() == 1
    wav = _as_channels_first(wav, "normalize")  # wav: [C, S]
    if not wav.dtype.is_floating_point:
        raise InvalidInputError(f"normalize expects a floating point waveform, got {wav.dtype}")

    if strategy == "peak":
        out = _normalize_peak(wav, peak_headroom_db)
    elif strategy == "clip":
        limit = 10 ** (-peak_headroom_db / 20)
        out = wav.clamp(-limit, limit)
    elif strategy == "rms":
        out = _normalize_rms(wav, rms_headroom_db).clamp(-1.0, 1.0)
    else:
        if sample_rate is None or sample_rate <= 0:
            raise InvalidInputError("Loudness normalization needs the sample rate of the audio")
        out = _normalize_loudness(wav, sample_rate, loudness_headroom_db, loudness_compressor, energy_floor)
        out = out.clamp(-1.0, 1.0)
    return out[0] if one_d else out


def _normalize_peak(wav: torch.Tensor, headroom_db: float) -> torch.Tensor:
    """Peak normalisation: gain = 10**(-headroom_db / 20) / max|wav|."""
    peak = wav.abs().max()
    if peak == 0:
        return wav.clone()
    return wav * (10 ** (-headroom_db / 20) / peak)


def _normalize_rms(wav: torch.Tensor, headroom_db: float) -> torch.Tensor:
    """RMS normalisation: gain = 10**(-headroom_db / 20) / rms(mean over channels), no clamping here."""
    # the channel mean, not all samples: anti-phase stereo content counts as quiet, like audiocraft
    mono = wav.mean(dim=0)  # [S]
    rms = mono.pow(2).mean().sqrt()
    if rms == 0:
        return wav.clone()
    return wav * (10 ** (-headroom_db / 20) / rms)


def _normalize_loudness(
    wav: torch.Tensor, sample_rate: int, headroom_db: float, compressor: bool, energy_floor: float
) -> torch.Tensor:
    """Loudness normalisation to -headroom_db LUFS: gain = 10**((-headroom_db - LUFS(wav)) / 20)."""
    # wav: [C, S]
    energy = wav.pow(2).mean().sqrt().item()
    block = int(round(0.4 * sample_rate))  # BS.1770 gating block, the shortest span loudness() can measure
    if energy < energy_floor or wav.shape[-1] < block:
        return wav.clone()
    if wav.shape[0] > 5:
        raise InvalidInputError(f"Loudness normalization supports up to 5 channels, got {wav.shape[0]}")
    lufs = AF.loudness(wav, int(sample_rate)).item()
    gain = 10.0 ** ((-headroom_db - lufs) / 20.0)
    out = gain * wav
    if compressor:
        out = torch.tanh(out)
    assert torch.isfinite(out).all(), (lufs, energy)
    return out


def _as_channels_first(wav: torch.Tensor, who: str) -> torch.Tensor:
    """[S] -> [1, S]; [C, S] unchanged; anything else is a caller mistake."""
    if not isinstance(wav, torch.Tensor):
        raise InvalidInputError(f"{who} expects a torch.Tensor, got {type(wav).__name__}")
    if wav.dim() == 1:
        return wav[None]
    if wav.dim() != 2:
        raise InvalidInputError(f"{who} expects audio shaped [channels, samples], got {tuple(wav.shape)}")
    return wav


__all__ = [
    "SUPPORTED_READ_SUFFIXES",
    "SUPPORTED_WRITE_SUFFIXES",
    "NORMALIZATION_STRATEGIES",
    "read_audio",
    "write_audio",
    "normalize",
    "resample",
    "convert_channels",
]
