"""Bounded ingestion (issue #13, defect 2): audio streamed in blocks, peak memory independent of file size.

The memory tests run ingestion in a subprocess and compare its peak RSS (VmHWM) with its RSS just before
ingestion started (after the imports and, for the encode test, the tiny model). The budget, 300 MB above
that, holds a few 4 MiB blocks, the resampling filter, one small batch of segments and the tiny EnCodec's
activations for it; before the blocks, a 1 GiB WAV took 5.6 GB above the same baseline.

VmHWM rather than getrusage's ru_maxrss: Linux carries ru_maxrss over execve, so a child started from a
large pytest process would report the parent's peak; VmHWM belongs to the child's own address space.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen.audio import AudioStream, BlockResampler, read_audio, resample
from musicgen.errors import InvalidInputError
from musicgen.training.dataset import prepare_dataset, segment_audio
from musicgen.training.encode import encode_dataset, encode_segments

REPO = Path(__file__).resolve().parents[1]
SR = 32000
BUDGET_MB = 300  # peak RSS above the RSS before ingestion, whatever the archive holds
# Streamed audio equals read_audio's up to float rounding: torch's convolution may sum a filter's terms in
# another order for a block than for the whole file (measured: bit-equal for two channels, within 3e-7 for
# one); a seam at a block edge would be off by far more (the filter reaching zeros instead of samples).
STREAM_ATOL = 1e-6


def _pcm16_header(data_bytes: int, rate: int = SR, channels: int = 1) -> bytes:
    """A canonical 44-byte PCM16 WAV header announcing `data_bytes` of samples."""
    block = 2 * channels
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def _pcm16(wav: np.ndarray) -> bytes:
    return (np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes()


def _tone(samples: int, freq: float = 440.0) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(samples) / SR)


def _big_wav_zip(path: Path, samples: int, head: np.ndarray | None = None, tail: np.ndarray | None = None):
    """A zip of one mono 32 kHz PCM16 WAV of `samples` samples: `head`, zeros, then `tail`.

    Written in 4 MiB pieces and deflated, so a 1 GiB WAV costs neither memory here nor space in the zip.
    """
    head = np.zeros(0) if head is None else head
    tail = np.zeros(0) if tail is None else tail
    zeros = bytes(4 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("songs/big.wav", "w", force_zip64=True) as out:
            out.write(_pcm16_header(2 * samples))
            out.write(_pcm16(head))
            left = 2 * (samples - len(head) - len(tail))
            while left:
                out.write(zeros[: min(left, len(zeros))])
                left -= min(left, len(zeros))
            out.write(_pcm16(tail))
        zf.writestr("songs/big.txt", "a tone in a long silence")
    return path


def _run_measured(script: str, *args: str) -> dict:
    """Runs `script` in a fresh interpreter on this checkout; returns the JSON it prints last."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


_MEASURE = """
import json, sys, time
from pathlib import Path

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))  # kB

def measured(before, start):
    return {"above_mb": (status("VmHWM") - before) / 2**20, "seconds": time.monotonic() - start}
"""

_PREPARE_SCRIPT = (
    _MEASURE
    + """
from musicgen.training.dataset import DatasetError, prepare_dataset

archive, work = map(Path, sys.argv[1:3])
before, start = status("VmRSS"), time.monotonic()
try:
    prepare_dataset(archive, work, channels=1, segment_seconds=30.0)
    error = None
except DatasetError as e:
    error = str(e)
print(json.dumps({**measured(before, start), "error": error}))
"""
)

_ENCODE_SCRIPT = (
    _MEASURE
    + """
import torch
from musicgen.loading import build_model, read_checkpoint
from musicgen.training.dataset import prepare_dataset
from musicgen.training.encode import encode_dataset

archive, work, model_dir, out = map(Path, sys.argv[1:5])
model = build_model(read_checkpoint(model_dir), "cpu")
before, start = status("VmRSS"), time.monotonic()
with prepare_dataset(archive, work, channels=1, segment_seconds=5.0, min_last_seconds=2.5) as data:
    encoded = encode_dataset(model, data)
    offsets = [s.offset for s in data.segments]
result = measured(before, start)
torch.save({"codes": encoded.codes, "valid": encoded.valid}, out)
print(json.dumps({**result, "offsets": offsets}))
"""
)


# ---------------------------------------------------------------------------------------------------------
# The defect: memory grew with the file


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux's /proc")


@needs_proc
def test_zip_of_a_1_gib_silent_wav_is_refused_within_the_memory_budget(tmp_path):
    samples = 1 << 29  # 1 GiB of PCM16 (4.6 hours at 32 kHz), about 5 MB zipped
    archive = _big_wav_zip(tmp_path / "bomb.zip", samples)
    assert archive.stat().st_size < 8 << 20
    result = _run_measured(_PREPARE_SCRIPT, str(archive), str(tmp_path / "work"))
    assert result["error"] is not None and "songs/big.wav (silent" in result["error"], result
    # before: 5.6 GB above the baseline and 32 s; streamed: about 15 MB and a few seconds (mostly unzipping)
    assert result["above_mb"] < BUDGET_MB, result
    assert result["seconds"] < 90, result


@needs_proc
def test_long_wav_is_encoded_within_the_memory_budget_with_the_codes_of_a_whole_read(tmp_path, tiny):
    samples = 1 << 27  # 256 MiB of PCM16 (70 minutes): music at both ends, silence between
    head, tail = _tone(12 * SR), _tone(3 * SR, 660.0)
    archive = _big_wav_zip(tmp_path / "long.zip", samples, head, tail)
    folder = tiny.get("mono")[0]
    result = _run_measured(
        _ENCODE_SCRIPT, str(archive), str(tmp_path / "work"), str(folder), str(tmp_path / "codes.pt")
    )
    seg = 5 * SR
    last = samples // seg * seg  # the kept last piece: 4.3 s of audio, the tone in its last 3 s
    assert result["offsets"] == [0, seg, 2 * seg, last], result
    assert result["above_mb"] < BUDGET_MB, result
    assert result["seconds"] < 90, result

    # Today's path on the same samples held in memory: read_audio, segment_audio, encode_segments.
    ending = np.zeros(samples - last)
    ending[-len(tail) :] = tail
    kept = _pcm16(np.concatenate([head, np.zeros(3 * seg - len(head)), ending]))  # the same PCM16 samples
    small = tmp_path / "small.wav"
    small.write_bytes(_pcm16_header(len(kept)) + kept)
    pieces, _ = segment_audio(read_audio(small, SR, 1), segment_seconds=5.0, min_last_seconds=2.5)
    assert [p.start for p in pieces] == [0, seg, 2 * seg, 3 * seg] and pieces[-1].valid == samples - last
    engine = tiny.engine("mono")
    reference = encode_segments(engine, [_Held(p.wav, p.valid) for p in pieces])
    streamed = torch.load(tmp_path / "codes.pt")
    assert torch.equal(streamed["codes"], reference.codes)
    assert torch.equal(streamed["valid"], reference.valid)


class _Held:
    def __init__(self, wav, valid, caption="x"):
        self.wav, self.valid, self.caption = wav, valid, caption


# ---------------------------------------------------------------------------------------------------------
# Blocks without seams


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 11025, 47952, 32000])
def test_block_resampler_equals_resampling_the_whole_signal(rate):
    gen = torch.Generator().manual_seed(rate)
    signal = torch.rand(2, int(rate * 1.1) + 17, generator=gen) - 0.5  # [C, N]
    whole = resample(signal, rate, SR)
    for sizes in ([997], [4096, 77], [signal.shape[1]]):
        resampler, out, at, i = BlockResampler(rate, SR), [], 0, 0
        while at < signal.shape[1]:
            size = sizes[i % len(sizes)]
            out.append(resampler.push(signal[:, at : at + size]))
            at, i = at + size, i + 1
        out.append(resampler.finish())
        joined = torch.cat(out, dim=1)
        assert joined.shape == whole.shape
        # every output sample comes from the same filter and the same inputs: no seam at any block edge
        torch.testing.assert_close(joined, whole, rtol=0, atol=STREAM_ATOL)


def _write(path: Path, rate: int, channels: int, seconds: float, **kwargs) -> Path:
    rng = np.random.default_rng(rate + channels)
    t = np.arange(int(rate * seconds)) / rate
    data = np.stack([0.4 * np.sin(2 * np.pi * 330 * (c + 1) * t) for c in range(channels)], axis=1)
    data += rng.uniform(-0.05, 0.05, data.shape)  # broadband: a seam would show at every frequency
    sf.write(path, data.astype(np.float32), rate, **kwargs)
    return path


@pytest.mark.parametrize(
    "name, rate, channels, kwargs",
    [
        ("stereo.wav", 44100, 2, {"subtype": "FLOAT"}),
        ("mono.flac", 48000, 1, {}),
        ("vorbis.ogg", 22050, 2, {"subtype": "VORBIS"}),
        # libsndfile's own VBR MP3: seeking between block reads (what soundfile does) lands off the frame
        ("vbr.mp3", 44100, 1, {"format": "MP3"}),
        ("cbr.mp3", 32000, 2, {"format": "MP3", "compression_level": 0.0, "bitrate_mode": "CONSTANT"}),
        ("three.wav", 47952, 3, {"subtype": "PCM_24"}),
    ],
)
def test_audio_stream_equals_read_audio(tmp_path, name, rate, channels, kwargs):
    path = _write(tmp_path / name, rate, channels, 1.3, **kwargs)
    for wanted in (1, 2):
        whole = read_audio(path, SR, wanted)
        for block_bytes in (10_000, 1 << 16):  # blocks of 833 to 16384 frames: many block edges
            with AudioStream(path, SR, wanted, block_bytes=block_bytes) as stream:
                blocks = list(stream)
            assert all(b.shape[0] == wanted and b.dtype == torch.float32 for b in blocks)
            streamed = torch.cat(blocks, dim=1)
            assert streamed.shape == whole.shape
            torch.testing.assert_close(streamed, whole, rtol=0, atol=STREAM_ATOL)


def test_rate_needing_a_huge_filter_is_refused_and_skipped(tmp_path):
    # 31999 Hz shares no factor with 32000: torchaudio's filter would be 32000 x 32051 taps (4 GiB)
    odd = _write(tmp_path / "odd.wav", 31999, 1, 0.5)
    with pytest.raises(InvalidInputError, match=r"odd.wav.*31999 Hz.*44100 or 48000 Hz"):
        AudioStream(odd, SR, 1)
    good = _write(tmp_path / "good.wav", 44100, 1, 1.0)
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(odd, "odd.wav")
        zf.write(good, "good.wav")
    with prepare_dataset(
        archive,
        tmp_path / "work",
        channels=1,
        segment_seconds=1.0,
        min_last_seconds=0.5,
        one_same_description="x",
    ) as data:
        assert data.report.files_used == ["good.wav"]
        (skipped,) = data.report.files_skipped
        assert (
            skipped.path == "odd.wav" and "31999 Hz" in skipped.reason and str(tmp_path) not in skipped.reason
        )


def test_encoded_codes_equal_todays_whole_file_path(tmp_path, tiny):
    # A 44.1 kHz stereo file for a mono model: mixed and resampled block by block, then encoded in batches.
    path = _write(tmp_path / "song.wav", 44100, 2, 7.4, subtype="FLOAT")
    engine = tiny.engine("mono")
    with prepare_dataset(
        path,
        tmp_path / "work",
        channels=1,
        segment_seconds=2.0,
        min_last_seconds=1.0,
        one_same_description="x",
    ) as data:
        streamed = encode_dataset(engine, data, batch_size=3)
    pieces, _ = segment_audio(read_audio(path, SR, 1), segment_seconds=2.0, min_last_seconds=1.0)
    reference = encode_segments(engine, [_Held(p.wav, p.valid) for p in pieces], batch_size=3)
    assert streamed.codes.shape[0] == 4 and torch.equal(streamed.valid, reference.valid)
    assert torch.equal(streamed.codes, reference.codes)


def test_blocks_stay_small_when_a_low_rate_is_upsampled(tmp_path):
    # 50 Hz -> 32 kHz multiplies the samples by 640: blocks are bounded by their size at 32 kHz too
    path = tmp_path / "low.wav"
    sf.write(
        path, np.random.default_rng(0).uniform(-0.5, 0.5, (400, 1)).astype(np.float32), 50, subtype="FLOAT"
    )
    block_bytes = 1 << 16
    with AudioStream(path, SR, 1, block_bytes=block_bytes) as stream:
        blocks = list(stream)
    assert len(blocks) > 10
    # what one block adds, plus the filter's context carried over from the previous block
    assert max(b.numel() * 4 for b in blocks) < 2 * block_bytes
    torch.testing.assert_close(torch.cat(blocks, dim=1), read_audio(path, SR, 1), rtol=0, atol=STREAM_ATOL)
