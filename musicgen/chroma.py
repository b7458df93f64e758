"""Melody conditioning: the quantised chromagram melody models are prepended with.

Computed as transformers' MusicgenMelodyFeatureExtractor does (and audiocraft's ChromaExtractor with
argmax=True): power spectrogram with a Hann window of n_fft samples, hop n_fft // 4, centred with reflect
padding and window-normalised; projected on librosa's chroma filter bank; each frame scaled by its max;
then only the strongest pitch class of each frame is kept, as a one-hot vector.

Audiocraft first removes drums and bass with Demucs (htdemucs, keeping the "vocals" and "other" stems)
because they can swamp the chroma; transformers leaves that to the caller. Here it is an option applied
to the waveform before `extract_chroma` (`musicgen.stems`, used when Demucs' weights are present).
"""

from __future__ import annotations

import math
from functools import lru_cache

import librosa
import torch
import torchaudio.functional as AF

from .audio import resample
from .config import ChromaConfig
from .errors import InvalidInputError

# transformers' feature extractor keeps at most chunk_length = 30 s of melody; 30 s at hop 4096 and 32 kHz
# is also the 235 chroma frames the melody models were trained with.
MAX_MELODY_SECONDS = 30.0


@lru_cache(maxsize=8)
def _filter_bank(sample_rate: int, n_fft: int, num_chroma: int) -> torch.Tensor:
    """Chroma filter bank [num_chroma, n_fft // 2 + 1] on the CPU, float32.

    librosa's defaults (tuning 0, centre octave 5, Gaussian octave width 2, L2-normalised columns, starting
    at C) are those audiocraft uses; transformers ports the same function and gives the same float32 values.
    """
    bank = librosa.filters.chroma(sr=sample_rate, n_fft=n_fft, tuning=0, n_chroma=num_chroma)
    return torch.from_numpy(bank).float()


def extract_chroma(
    wav: torch.Tensor,
    sample_rate: int,
    config: ChromaConfig,
    *,
    max_seconds: float | None = MAX_MELODY_SECONDS,
) -> torch.Tensor:
    """One-hot chroma of a batch of melodies: `[B, frames, num_chroma]`, float32, on `wav`'s device.

    Args:
        wav: `[B, C, S]` (any channel count, mixed to mono by the channel mean) or `[B, S]` (mono).
        sample_rate: rate of `wav`; resampled to `config.sample_rate` when different.
        config: STFT and filter bank settings.
        max_seconds: melody kept from the start, after resampling (transformers' 30 s default);
            None keeps all of it, as audiocraft does before cutting the chroma to the training length.

    frames = 1 + max(S', n_fft) // hop_length, S' the resampled (and cut) length: shorter inputs are padded
    with zeros on both sides to n_fft first. Frames with no energy come out as pitch class 0.
    """
    if not isinstance(wav, torch.Tensor) or wav.dim() not in (2, 3):
        shape = tuple(wav.shape) if isinstance(wav, torch.Tensor) else type(wav).__name__
        raise InvalidInputError(f"extract_chroma expects a tensor [B, C, S] or [B, S], got {shape}")
    if wav.shape[-1] == 0:
        raise InvalidInputError("extract_chroma got a melody with no samples")
    if sample_rate <= 0:
        raise InvalidInputError(f"sample_rate must be positive, got {sample_rate}")
    if not wav.dtype.is_floating_point:
        wav = wav.float()

    # Resample before mixing channels and in the input's precision, as transformers does, so the bins match
    # it exactly; float64 input is brought to float32 only afterwards.
    wav = resample(wav, sample_rate, config.sample_rate).to(torch.float32)
    if wav.dim() == 3:
        wav = wav.mean(dim=1)  # [B, C, S] -> [B, S]
    if max_seconds is not None:
        wav = wav[:, : int(max_seconds * config.sample_rate)]

    # Too short for one full window (a blip, or the 1-sample null melody): centre it in n_fft zeros.
    length = wav.shape[-1]
    if length < config.n_fft:
        missing = config.n_fft - length
        wav = torch.nn.functional.pad(wav, (missing // 2, missing - missing // 2))

    window = torch.hann_window(config.n_fft, device=wav.device, dtype=wav.dtype)
    # spec: [B, n_fft // 2 + 1, frames]; power 2, divided by the window's L2 norm ("normalized=True")
    spec = AF.spectrogram(
        wav,
        pad=0,
        window=window,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        win_length=config.n_fft,
        power=2.0,
        normalized=True,
        center=True,
        pad_mode="reflect",
        onesided=True,
    )
    bank = _filter_bank(config.sample_rate, config.n_fft, config.num_chroma).to(wav.device)
    raw = torch.einsum("cf,bft->bct", bank, spec)  # [B, 12, frames]
    # Scaling each frame by its max does not move the argmax, except that rounding can turn a near tie into
    # an exact one; kept so ties resolve as in both references (argmax takes the first maximum).
    normed = torch.nn.functional.normalize(raw, p=math.inf, dim=1, eps=1e-6)
    bins = normed.argmax(dim=1)  # [B, frames]
    return torch.nn.functional.one_hot(bins, config.num_chroma).to(torch.float32)


def null_chroma(
    batch: int,
    frames: int,
    num_chroma: int = 12,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The "no melody" input `[B, frames, num_chroma]`: pitch class 0 in every frame.

    That is what the chroma of silence quantises to (all-zero frames argmax to bin 0), which is how
    audiocraft's null condition and transformers' `null_audio_hidden_states` both come out; it is also the
    unconditional half of classifier-free guidance.
    """
    if batch < 1 or frames < 1:
        raise InvalidInputError(f"null_chroma needs batch >= 1 and frames >= 1, got {batch}, {frames}")
    out = torch.zeros(batch, frames, num_chroma, device=device, dtype=dtype)
    out[..., 0] = 1
    return out


def fit_chroma(chroma: torch.Tensor, length: int) -> torch.Tensor:
    """Brings chroma `[B, T, D]` to `[B, length, D]`: repeated whole when shorter, cut when longer.

    The melody models were trained on a fixed number of chroma frames (LMConfig.chroma_length), and both
    references loop a short melody rather than pad it.
    """
    if chroma.dim() != 3 or chroma.shape[1] == 0:
        raise InvalidInputError(f"fit_chroma expects chroma [B, T, D] with T >= 1, got {tuple(chroma.shape)}")
    if length < 1:
        raise InvalidInputError(f"fit_chroma length must be >= 1, got {length}")
    frames = chroma.shape[1]
    if frames < length:
        chroma = chroma.repeat(1, math.ceil(length / frames), 1)
    return chroma[:, :length]


__all__ = ["extract_chroma", "null_chroma", "fit_chroma", "MAX_MELODY_SECONDS"]
