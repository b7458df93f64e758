"""Audio files in and out, and the loudness normalisation applied before writing.

All I/O goes through soundfile (libsndfile), in-process: torchaudio 2.9 can no longer load or save without
torchcodec, and audiocraft's ffmpeg pipe would need a binary and a subprocess. Resampling and loudness
measurement use `torchaudio.functional`, which still has both.

Waveforms are float32 tensors shaped `[C, S]` (channels, samples) in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torchaudio.transforms import Resample

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

# `AudioStream` reads this many bytes of float32 samples (all of the file's channels) at a time.
STREAM_BLOCK_BYTES = 4 << 20
# Largest resampling filter `BlockResampler` builds, in float32 taps (32 MiB; building it briefly takes
# about five times that). torchaudio's polyphase filter has n * (2 * w + o) taps for o / n = from / to
# reduced by their gcd, whatever the audio's length: under 1 M for the usual rates (44.1 kHz -> 32 kHz:
# 320 x 511; 11.025 kHz: 1280 x 493), 6 M for 47.952 kHz (2000 x 3075), but 32000 x 32051 (4 GiB) for
# 31999 Hz, and 22 M (too many) for 44.056 kHz.
MAX_RESAMPLE_FILTER = 1 << 23


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
    path = _checked_source(path, sample_rate, channels)
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


def resample_filter_size(from_rate: int, to_rate: int) -> int:
    """Taps of the filter `resample` builds to go from `from_rate` to `to_rate` Hz (0 when they match).

    It depends on the two rates only, not on the audio's length; see MAX_RESAMPLE_FILTER.
    """
    if int(from_rate) == int(to_rate):
        return 0
    o, n = _reduced_rates(from_rate, to_rate)
    return n * (2 * _filter_half_width(o, n) + o)


def _reduced_rates(from_rate: int, to_rate: int) -> tuple[int, int]:
    """(o, n): the two rates divided by their gcd; the filter's output repeats every n samples."""
    g = math.gcd(int(from_rate), int(to_rate))
    return int(from_rate) // g, int(to_rate) // g


def _filter_half_width(o: int, n: int) -> int:
    """torchaudio's `width`: input samples the filter reaches on either side of its centre."""
    return math.ceil(RESAMPLE_LOWPASS_WIDTH * o / (min(o, n) * RESAMPLE_ROLLOFF))


class BlockResampler:
    """Resamples a signal handed over in consecutive blocks, giving what `resample` gives for all of it.

    torchaudio's resampler is a polyphase filter: with o / n the two rates divided by their gcd, output
    samples [m*n, (m+1)*n) ("group m") are computed from input samples [m*o - w, m*o + o + w), w the
    filter's half-width, with zeros before the start and after the end. `push` resamples what it holds
    with `ctx` >= w + 1 samples of context on each side, `ctx` a multiple of o so that its groups are the
    whole signal's groups, and returns only the groups whose window it has read entirely; the others wait
    for the next block, or for `finish`, where the zeros after the end are the real padding. Every output
    sample is thus computed by the same filter from the same inputs as in one whole-signal call, and the
    joined blocks equal `resample`'s result up to float rounding: the convolution may sum the same terms
    in another order for another input length (measured: bit-equal for two channels; within 3e-7, a few
    float32 ulps, for one channel). There is no seam at block edges.

    Memory: the filter (at most MAX_RESAMPLE_FILTER taps) plus under 2 * ctx + o held input samples and
    the block being pushed; nothing grows with the signal's length.
    """

    def __init__(self, from_rate: int, to_rate: int):
        if from_rate <= 0 or to_rate <= 0:
            raise InvalidInputError(f"sample rates must be positive, got {from_rate} and {to_rate}")
        self.from_rate, self.to_rate = int(from_rate), int(to_rate)
        self._held: torch.Tensor | None = None  # [C, H]: input samples [start, start + H) still needed
        self._start = 0  # index in the whole input of the first held sample; a multiple of o
        self._done = 0  # groups returned so far
        self._channels = 0  # C, once a block was pushed
        self._finished = False
        self._filter: Resample | None = None
        if self.from_rate == self.to_rate:
            return
        taps = resample_filter_size(self.from_rate, self.to_rate)
        if taps > MAX_RESAMPLE_FILTER:
            raise InvalidInputError(
                f"resampling {self.from_rate} Hz to {self.to_rate} Hz needs a {taps * 4 / 2**20:,.0f} MiB "
                f"filter, more than the {MAX_RESAMPLE_FILTER * 4 / 2**20:.0f} MiB allowed (the two rates "
                "share few factors); convert the audio to a usual rate such as 44100 or 48000 Hz"
            )
        self._o, self._n = _reduced_rates(self.from_rate, self.to_rate)
        # +1: a margin against any rounding in torchaudio's own width; more context changes nothing
        self._ctx = self._o * math.ceil((_filter_half_width(self._o, self._n) + 1) / self._o)
        # The transform builds the filter once; with dtype float32 it is the filter resample() builds for a
        # float32 waveform, so the two give the same samples.
        self._filter = Resample(
            self.from_rate,
            self.to_rate,
            lowpass_filter_width=RESAMPLE_LOWPASS_WIDTH,
            rolloff=RESAMPLE_ROLLOFF,
            dtype=torch.float32,
        )

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Takes the next input samples (float32 [C, k]); returns the output samples now complete [C, j]."""
        if self._finished:
            raise RuntimeError("BlockResampler.push after finish")
        self._channels = block.shape[0]
        if self._filter is None:
            return block
        # held: [C, H], the context kept from the previous blocks followed by this one
        held = block if self._held is None else torch.cat([self._held, block], dim=1)
        end = self._start + held.shape[1]
        stop = max(0, end - self._ctx) // self._o  # groups [0, stop) have their whole window in `held`
        if stop <= self._done:
            self._held = held
            return held[:, :0]
        out = self._run(held, stop * self._o + self._ctx, stop)
        self._done = stop
        keep = max(0, stop * self._o - self._ctx)  # the next group's window, with context
        # a copy, so the (block-sized) `held` is freed now rather than with the next block
        self._held = held[:, keep - self._start :].clone()
        self._start = keep
        return out

    def finish(self) -> torch.Tensor:
        """The output samples left once every input block was pushed ([C, j], possibly j = 0)."""
        self._finished = True
        held, self._held = self._held, None
        if self._filter is None or held is None or held.shape[1] == 0:
            return torch.zeros(self._channels, 0)
        return self._run(held, self._start + held.shape[1], None)

    def _run(self, held: torch.Tensor, last: int, stop: int | None) -> torch.Tensor:
        """Groups [done, stop) (to the end when stop is None) from input samples [first, last) of `held`."""
        first = max(0, self._done * self._o - self._ctx)
        assert first >= self._start and first % self._o == 0, (first, self._start)
        # The transform zero-pads both ends of its input: at the signal's start (first == 0) and end
        # (finish) that is the real padding; elsewhere the groups it touches are not returned.
        out = self._filter(held[:, first - self._start : last - self._start])  # [C, (last - first) * n / o]
        skip = self._done - first // self._o  # groups of context before the first one wanted
        if stop is None:
            return out[:, skip * self._n :]
        return out[:, skip * self._n : (stop - first // self._o) * self._n]


class _SequentialSoundFile(sf.SoundFile):
    """A SoundFile that soundfile reads straight on, without seeking between reads.

    After every read soundfile seeks to where the read ended (`SoundFile._cdata_io`); libsndfile's MP3
    seek goes through the Xing table of a VBR file and lands near, not at, that frame, so block reads of
    such a file come out with gaps and repeats where one whole read is right. Reporting the file as not
    seekable turns that seek off; only the read path is used, which needs none.
    """

    def seekable(self) -> bool:
        return False


class AudioStream:
    """An audio file read block by block: `read_audio(path, sample_rate, channels)` in bounded pieces.

    Iterating yields consecutive float32 blocks [channels, k] at `sample_rate` whose concatenation is
    read_audio's result up to float rounding: the same samples decoded, mixed the same way
    (`convert_channels`), resampled by `BlockResampler` (see there for the rounding). Each block is at most `block_bytes` as read and as resampled, so memory stays within a
    few blocks plus the resampling filter, however long the file and whatever its rate or channel count. The file is opened and its header checked on construction; it is iterated once, then
    closed by `close` or a `with` block.

    Raises (on construction, or while iterating for errors in the audio data):
        AudioFileError: as read_audio: the file is missing, not readable audio, or holds no samples.
        InvalidInputError: `sample_rate` / `channels` are not acceptable, or the file's rate would need a
            resampling filter larger than MAX_RESAMPLE_FILTER (the message names the file).
    """

    def __init__(
        self, path: str | Path, sample_rate: int, channels: int, *, block_bytes: int = STREAM_BLOCK_BYTES
    ):
        path = _checked_source(path, sample_rate, channels)
        self.path, self.sample_rate, self.channels = path, int(sample_rate), int(channels)
        try:
            self._file = _SequentialSoundFile(str(path))
        except sf.SoundFileError as e:
            raise self._unreadable(e) from e
        self._iterated = False
        try:
            self.file_rate, self.file_channels = self._file.samplerate, self._file.channels
            self.frames = self._file.frames  # as the header says; reading stops there, as read_audio does
            if self.frames <= 0:
                raise AudioFileError(f"Audio file {path} contains no samples")
            try:
                self._resampler = BlockResampler(self.file_rate, self.sample_rate)
            except InvalidInputError as e:
                raise InvalidInputError(f"Cannot use {path}: {e}") from e
        except BaseException:
            self._file.close()
            raise
        # Bounded in bytes both read and resampled: a file may declare up to 1024 channels, or a rate far
        # below the output's (a block of a 1 Hz file would come out 32000 times larger at 32 kHz).
        frames_in = int(block_bytes) // (4 * self.file_channels)
        frames_out = int(block_bytes) // (4 * self.channels) * self.file_rate // self.sample_rate
        self._block_frames = max(1, min(frames_in, frames_out))

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self._iterated:
            raise RuntimeError(f"AudioStream of {self.path} is iterated once")
        self._iterated = True
        left, read = self.frames, 0
        while left > 0:
            want = min(left, self._block_frames)
            try:
                data = self._file.read(frames=want, dtype="float32", always_2d=True)  # [k, C_file]
            except sf.SoundFileError as e:
                raise self._unreadable(e) from e
            got = data.shape[0]
            if got == 0:
                break
            left, read = left - got, read + got
            wav = torch.from_numpy(np.ascontiguousarray(data.T))  # [C_file, k]
            del data
            # Mixing first means resampling fewer channels (read_audio's order, so the same samples).
            wav = convert_channels(wav, self.channels, name=str(self.path))
            out = self._resampler.push(wav)  # [channels, j]
            del wav
            if out.shape[-1]:
                yield out.contiguous()
            if got < want:  # libsndfile returns fewer frames only at the end of what it can decode
                break
        if read == 0:
            raise AudioFileError(f"Audio file {self.path} contains no samples")
        tail = self._resampler.finish()
        if tail.shape[-1]:
            yield tail.contiguous()

    def _unreadable(self, e: Exception) -> AudioFileError:
        return AudioFileError(
            f"Could not read audio file {self.path}: {e}. "
            f"Supported formats: {', '.join(SUPPORTED_READ_SUFFIXES)}"
        )

    def close(self) -> None:
        """Closes the file (iterating afterwards fails)."""
        self._file.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _checked_source(path: str | Path, sample_rate: int, channels: int) -> Path:
    """`path` as a Path, once the file exists and the rate and channel count asked for are possible."""
    path = Path(path)
    if sample_rate <= 0:
        raise InvalidInputError(f"sample_rate must be positive, got {sample_rate}")
    if channels < 1:
        raise InvalidInputError(f"channels must be at least 1, got {channels}")
    if not path.exists():
        raise AudioFileError(f"Audio file not found: {path}")
    if not path.is_file():
        raise AudioFileError(f"Audio path is not a file: {path}")
    return path


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
    "STREAM_BLOCK_BYTES",
    "MAX_RESAMPLE_FILTER",
    "AudioStream",
    "BlockResampler",
    "read_audio",
    "resample_filter_size",
    "write_audio",
    "normalize",
    "resample",
    "convert_channels",
]
