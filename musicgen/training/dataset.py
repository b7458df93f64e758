"""Dataset ingestion for fine-tuning: an archive or one audio file in, captioned 32 kHz segments out.

`prepare_dataset` chains the pieces below, each usable alone, and returns a `PreparedDataset`: where every
segment lies (file, start, real length, caption), the report, and the extracted files, from which
`PreparedDataset.batches` reads the segments' audio again a batch at a time for EnCodec.

1. `extract_archive` unpacks a tar (plain, gz, bz2, xz) or zip into a fresh folder, member by member, after
   checking each one: no absolute paths, no `..`, no links, devices or fifos, at most `max_files` files and
   `max_total_bytes` bytes, counted on the bytes actually decompressed. Only audio files and .txt / .json
   captions are written; `__MACOSX/`, dotfiles and everything else are skipped. It lives in
   `musicgen.training.archive` with the suffixes, the limits and `DatasetError`, all re-exported here.
2. `find_audio_files` lists the audio files under the extracted folder.
3. `caption_for` finds each file's caption: `<stem>.txt`, else audiocraft's `<stem>.json` metadata folded into
   one text (`fold_music_info`), else `one_same_description`.
4. Audio is streamed with `musicgen.audio.AudioStream` (libsndfile, resampled to 32 kHz, mixed to
   `channels`: read_audio's samples, a block of at most STREAM_BLOCK_BYTES at a time); .m4a / .mp4 / .aac
   go through ffmpeg to a temporary WAV first, when ffmpeg is installed.
5. Each file is cut into `segment_seconds` pieces as `segment_audio` cuts a waveform: a shorter last piece
   is kept, zero-padded and marked with its valid length, when it lasts at least `min_last_seconds`.

Memory: no step holds a whole file or the whole dataset's audio. Checking a file keeps one block and one
byte per segment; `batches` holds the batch being filled. Ingestion's peak memory is thus a fixed budget (a few
blocks, the resampling filter, one batch of segments) whatever the archive holds, at the price of
decoding every file twice (once to check it, once to encode it). A file whose sample rate would need a
resampling filter over `musicgen.audio.MAX_RESAMPLE_FILTER` (rates sharing few factors with 32 kHz, such as
31999 Hz) is skipped with a reason saying to convert it; there is no limit on a file's length.

Files that cannot be used (unreadable, silent, too short, undecodable caption) are skipped and listed in the
`DatasetReport`; problems the user must fix before anything can work (an unsafe or oversized archive, files
without captions, nothing usable left) raise one `DatasetError` that says what to do.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from ..audio import AudioStream
from ..config import SAMPLE_RATE
from ..errors import AudioFileError, InvalidInputError
from .archive import (
    AUDIO_SUFFIXES,
    CAPTION_SUFFIXES,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_TOTAL_BYTES,
    FFMPEG_SUFFIXES,
    DatasetError,
    Extraction,
    _archive_kind,
    _is_hidden,
    extract_archive,
)

# Not used here; re-exported for callers that import them from this module (the tests use _copy_limited).
from .archive import ENTRIES_PER_FILE as ENTRIES_PER_FILE
from .archive import _copy_limited as _copy_limited

CaptionSource = Literal["txt", "json", "one_same_description"]
CAPTION_SOURCES: tuple[CaptionSource, ...] = ("txt", "json", "one_same_description")

# MusicGen was trained on 30 s excerpts; its positional table and the trainer's batches assume no more.
MAX_SEGMENT_SECONDS = 30.0
DEFAULT_MIN_LAST_SECONDS = 5.0
# Below this peak (-80 dBFS) a file or segment holds no usable music: training on it teaches silence.
SILENCE_PEAK = 1e-4
FFMPEG_TIMEOUT_S = 600

# .txt / .json caption files are read whole; anything larger is refused (see _read_text).
MAX_CAPTION_BYTES = 1 << 20

_MAX_NAMES_IN_MESSAGE = 20


@dataclass(slots=True)
class Segment:
    """One training example: where a fixed-length piece of a file lies, and its caption.

    The audio is not held here (a dataset may hold hours of it): `PreparedDataset.batches` reads it.
    Slots: a dataset may hold a hundred thousand of these.
    """

    source: str  # file path relative to the dataset root (posix separators)
    start: float  # seconds into the file (offset / 32000)
    valid: int  # samples of real audio; < S only for a kept last piece (the trainer masks the rest)
    caption: str
    offset: int = 0  # first sample at 32 kHz, a multiple of S = segment_seconds * 32000


class SegmentAudio(NamedTuple):
    """A segment with its audio, as `PreparedDataset.batches` yields it."""

    segment: Segment
    wav: torch.Tensor  # [C, S] float32 at 32 kHz, zero-padded after `segment.valid`

    @property
    def source(self) -> str:
        return self.segment.source

    @property
    def start(self) -> float:
        return self.segment.start

    @property
    def valid(self) -> int:
        return self.segment.valid

    @property
    def caption(self) -> str:
        return self.segment.caption


@dataclass
class SkippedFile:
    """An audio file left out of training, and why."""

    path: str
    reason: str


@dataclass
class DatasetReport:
    """What went into training: kept for the training logs and stored with the fine-tuned weights."""

    dataset: str  # name of the archive or audio file given
    sample_rate: int
    channels: int
    segment_seconds: float
    min_last_seconds: float
    files_used: list[str] = field(default_factory=list)
    files_skipped: list[SkippedFile] = field(default_factory=list)
    segments: int = 0
    padded_segments: int = 0  # kept last pieces shorter than segment_seconds (masked after `valid`)
    dropped_last_pieces: int = 0  # last pieces shorter than min_last_seconds, left out
    dropped_silent_segments: int = 0
    total_seconds: float = 0.0  # real (unpadded) audio in the segments
    caption_sources: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CAPTION_SOURCES, 0))
    ignored_entries: int = 0  # archive entries neither audio nor caption, __MACOSX/ and dotfiles

    @property
    def total_minutes(self) -> float:
        return self.total_seconds / 60.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (lists, dicts, str, int, float), with `total_minutes` added."""
        out = asdict(self)
        out["total_minutes"] = round(self.total_minutes, 3)
        return out

    def summary(self) -> str:
        """A few human-readable lines for the training logs."""
        layout = {1: "mono", 2: "stereo"}.get(self.channels, f"{self.channels} channels")
        src = self.caption_sources
        lines = [
            f"Dataset {self.dataset}: {len(self.files_used)} audio files used, {len(self.files_skipped)} "
            f"skipped; {self.segments} segments of {self.segment_seconds:g} s "
            f"({self.padded_segments} with a masked last piece), {self.total_minutes:.1f} minutes of audio "
            f"at {self.sample_rate} Hz {layout}.",
            f"Captions: {src.get('txt', 0)} from .txt, {src.get('json', 0)} from .json metadata, "
            f"{src.get('one_same_description', 0)} from one_same_description.",
        ]
        dropped = []
        if self.dropped_last_pieces:
            dropped.append(
                f"{self.dropped_last_pieces} last pieces shorter than {self.min_last_seconds:g} s dropped"
            )
        if self.dropped_silent_segments:
            dropped.append(f"{self.dropped_silent_segments} silent segments dropped")
        if self.ignored_entries:
            dropped.append(f"{self.ignored_entries} archive entries ignored (not audio or captions)")
        if dropped:
            lines.append("; ".join(dropped) + ".")
        if self.files_skipped:
            shown = [f"{s.path} ({s.reason})" for s in self.files_skipped[:_MAX_NAMES_IN_MESSAGE]]
            more = len(self.files_skipped) - len(shown)
            lines.append("Skipped: " + "; ".join(shown) + (f"; and {more} more." if more else "."))
        return "\n".join(lines)


class Piece(NamedTuple):
    """One piece cut by `segment_audio`."""

    start: int  # first sample, in the input
    wav: torch.Tensor  # [C, S], zero-padded after `valid`
    valid: int


# ---------------------------------------------------------------------------------------------------------
# Finding files and captions


def find_audio_files(root: Path) -> list[Path]:
    """Audio files under `root` (decodable in-process or through ffmpeg), relative to it, sorted.

    `__MACOSX/` folders, dotfiles and dot-folders are left out, and symbolic links are neither followed nor
    listed, matching what `extract_archive` writes.
    """
    root = Path(root)
    found = []
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden([d]))  # prune in place: os.walk obeys
        for fname in filenames:
            path = Path(folder, fname)
            suffix = path.suffix.lower()
            if _is_hidden([fname]) or path.is_symlink():
                continue
            if suffix in AUDIO_SUFFIXES or suffix in FFMPEG_SUFFIXES:
                found.append(path.relative_to(root))
    return sorted(found, key=lambda p: p.as_posix())


def caption_for(
    audio_path: Path, one_same_description: str | None = None
) -> tuple[str, CaptionSource] | None:
    """The caption of one audio file and where it came from, or None when it has none.

    In order: `<stem>.txt` beside the file (whitespace runs collapsed to single spaces), else audiocraft's
    `<stem>.json` metadata beside it folded into one text by `fold_music_info`, else `one_same_description`.
    An empty .txt, or a .json with no description and no usable field, counts as absent and falls through.

    Raises:
        DatasetError: a caption file exists but is not UTF-8 text, or the .json is not a JSON object.
    """
    audio_path = Path(audio_path)
    for suffix in (".txt", ".TXT"):
        txt = audio_path.with_suffix(suffix)
        if txt.is_file():
            text = _clean_text(_read_text(txt))
            if text:
                return text, "txt"
            break
    for suffix in (".json", ".JSON"):
        meta_path = audio_path.with_suffix(suffix)
        if meta_path.is_file():
            try:
                meta = json.loads(_read_text(meta_path))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{meta_path.name} is not valid JSON: {e}") from e
            if not isinstance(meta, dict):
                raise DatasetError(f"{meta_path.name} must hold a JSON object (audiocraft's metadata)")
            text = fold_music_info(meta)
            if text:
                return _clean_text(text), "json"
            break
    text = _clean_text(one_same_description or "")
    if text:
        return text, "one_same_description"
    return None


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_CAPTION_BYTES:
            # a caption is read whole, and T5 reads 512 tokens of it: a huge one is a mistake, not a caption
            raise DatasetError(
                f"{path.name} is {size:,} bytes; a caption file may hold at most {MAX_CAPTION_BYTES:,} "
                "(the text encoder reads about 2,000 characters): shorten it"
            )
        # utf-8-sig: Windows editors put a byte-order mark at the start, which must not reach the caption
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path.name} is not UTF-8 text; save it as UTF-8") from e
    except OSError as e:
        raise DatasetError(f"Could not read {path.name}: {e}") from e


def _clean_text(text: str) -> str:
    """Collapses newlines and runs of spaces, so a caption is one line whatever editor wrote it."""
    return " ".join(text.split())


# The fields audiocraft may fold into the description, in MusicInfo's declaration order.
_FOLDED_FIELDS = ("key", "bpm", "genre", "moods", "keywords", "instrument")


def fold_music_info(info: Mapping[str, Any]) -> str | None:
    """Folds audiocraft metadata (a `<stem>.json` dict) into one caption, as audiocraft 1.3.0 does.

    This is `augment_music_info_description` with merging always on and nothing dropped: the description,
    its trailing dots removed, then `"<field>: <value>"` for each of key, bpm, genre, moods, keywords,
    instrument that has a value, all joined by ". ". Values go through audiocraft's `MusicInfo.from_dict`
    preprocessing first: description stripped; key lower-cased and left out when it lists several keys
    (a comma); bpm as a float (`120` -> `120.0`); genre and instrument lower-cased; moods and keywords
    split on commas and whitespace when a string, lower-cased, joined with ", ".

    During training audiocraft merges only with probability `merge_text_p`, drops the description with
    `drop_desc_p`, drops each field with `drop_other_p` and shuffles the fields; at ingestion the text must
    be reproducible, so none of that randomness is applied here (the trainer may add it). Differences, on
    purpose: a blank value (only spaces) counts as absent, where audiocraft would write "genre: " or start
    the caption with ". "; a non-finite bpm (NaN) is left out rather than written as "nan"; and the caller
    collapses whitespace runs.

    Example: {"description": "Calm piano.", "key": "C Major", "bpm": 90, "moods": "calm, warm"} ->
    "Calm piano. key: c major. bpm: 90.0. moods: calm, warm". Returns None when nothing is left.
    """
    description = _ac_string(info.get("description"))
    pairs = []
    for name in _FOLDED_FIELDS:
        if name not in info:
            continue
        value = _AC_PREPROCESS[name](info[name])
        if value is None:
            continue
        if isinstance(value, list):
            text = ", ".join(value)
        else:
            text = str(value)
        pairs.append(f"{name}: {text}")
    metadata = ". ".join(pairs)
    if description is None:
        # audiocraft keeps metadata text only when longer than one character
        folded = metadata if len(metadata) > 1 else None
    else:
        folded = ". ".join([description.rstrip("."), metadata])
    folded = folded.strip() if folded else None
    return folded or None


def _ac_string(value: Any) -> str | None:
    """audiocraft's get_string: a stripped string, the literal 'None' meaning absent; blank is absent too."""
    if not isinstance(value, str) or not value or value == "None":
        return None
    # audiocraft keeps "" from an all-blank value, which yields "genre: " or a caption starting with ". "
    return value.strip() or None


def _ac_keyword(value: Any) -> str | None:
    """audiocraft's get_keyword: get_string, lower-cased."""
    text = _ac_string(value)
    return None if text is None else text.lower()


def _ac_keyword_list(value: Any) -> list[str] | None:
    """audiocraft's get_keyword_list: a string is split on commas and whitespace; empty items dropped."""
    if isinstance(value, str):
        items = [v.strip() for v in re.split(r"[,\s]", value)]
    elif isinstance(value, float) and math.isnan(value):
        items = []
    elif isinstance(value, list):
        items = value
    else:
        items = [str(value)]
    words = [w for w in (_ac_keyword(v) for v in items) if w is not None]
    return words or None


def _ac_key(value: Any) -> str | None:
    """audiocraft's get_musical_key: several keys separated by commas count as none."""
    if not isinstance(value, str) or not value or value == "None" or "," in value:
        return None
    return value.strip().lower() or None


def _ac_bpm(value: Any) -> float | None:
    """audiocraft's get_bpm (a float, or absent when it does not parse), plus: NaN / inf are absent."""
    if value is None or isinstance(value, bool):
        return None
    try:
        bpm = float(value)
    except (TypeError, ValueError):
        return None
    return bpm if math.isfinite(bpm) else None


_AC_PREPROCESS = {
    "key": _ac_key,
    "bpm": _ac_bpm,
    "genre": _ac_keyword,
    "moods": _ac_keyword_list,
    "keywords": _ac_keyword_list,
    "instrument": _ac_keyword,
}


# ---------------------------------------------------------------------------------------------------------
# Segmenting


def segment_audio(
    wav: torch.Tensor,
    *,
    segment_seconds: float,
    min_last_seconds: float = DEFAULT_MIN_LAST_SECONDS,
    sample_rate: int = SAMPLE_RATE,
) -> tuple[list[Piece], int]:
    """Cuts `wav` [C, N] into consecutive, non-overlapping pieces of `segment_seconds`.

    Every piece is [C, S] with S = round(segment_seconds * sample_rate). The remainder after the last full
    piece is kept, zero-padded to S with `valid` set to its length, when it lasts at least
    `min_last_seconds`; a shorter remainder is dropped, its length in samples returned as the second value
    (0 when nothing was dropped). Padding rather than dropping lets short files and endings train, and
    `valid` lets the trainer mask the padding instead of learning silence.
    """
    if wav.dim() != 2:
        raise InvalidInputError(f"segment_audio expects [channels, samples], got {tuple(wav.shape)}")
    seg, min_last = _piece_samples(segment_seconds, min_last_seconds, sample_rate)
    if seg <= 0:
        raise InvalidInputError(f"segment_seconds must be positive, got {segment_seconds}")
    channels, total = wav.shape
    kept, dropped = _cut(total, seg, min_last)
    pieces = []
    for i in range(kept):
        valid = min(seg, total - i * seg)
        piece = wav.new_zeros(channels, seg)  # [C, S], zero-padded after `valid`
        piece[:, :valid] = wav[:, i * seg : i * seg + valid]
        pieces.append(Piece(i * seg, piece, valid))
    return pieces, dropped


def _piece_samples(segment_seconds: float, min_last_seconds: float, sample_rate: int) -> tuple[int, int]:
    """(S, the samples of a piece; the fewest samples a kept last piece has)."""
    return int(round(segment_seconds * sample_rate)), int(math.ceil(min_last_seconds * sample_rate))


def _cut(total: int, seg: int, min_last: int) -> tuple[int, int]:
    """How `total` samples are cut into pieces of `seg`: (pieces kept, samples dropped at the end).

    The pieces are the full ones, then the remainder when it has at least `min_last` samples (at least
    one); a shorter remainder is dropped. Used by `segment_audio` and by the streamed cut in
    `prepare_dataset`, so that both cut alike.
    """
    full, rest = divmod(total, seg)
    if rest == 0:
        return full, 0
    if rest < max(min_last, 1):
        return full, rest
    return full + 1, 0


# ---------------------------------------------------------------------------------------------------------
# The whole pipeline


class _Skip(Exception):
    """A file that cannot be used; the message is the reason shown in the report."""


class PreparedDataset:
    """A checked dataset: its segments (where each lies, not its audio), the report, and the files.

    `prepare_dataset` returns it once every check that needs no model has passed. The audio files stay on
    disk (extracted from the archive into a temporary folder) until `close`, or the end of a `with` block,
    removes that folder; `batches` reads the segments' audio from them meanwhile.
    """

    def __init__(
        self,
        root: Path,
        segments: list[Segment],
        report: DatasetReport,
        segment_samples: int,
        tmp: tempfile.TemporaryDirectory,
    ):
        self.root = root  # the folder the segments' `source` paths are relative to
        self.segments = segments  # sorted by file, then time
        self.report = report
        self.segment_samples = segment_samples  # S: samples of every segment at 32 kHz
        self._tmp = tmp  # the extracted archive and, while one file is read, ffmpeg's WAV of it
        self._closed = False

    @property
    def channels(self) -> int:
        return self.report.channels

    def __len__(self) -> int:
        return len(self.segments)

    def batches(self, batch_size: int = 8) -> Iterator[list[SegmentAudio]]:
        """The segments with their audio, `batch_size` at a time, in `segments` order.

        Each file is streamed once more (through ffmpeg again for .m4a / .mp4 / .aac: its temporary WAV
        exists while its segments are read and is removed right after) and only the batch being filled is
        held: at most `batch_size` segments of [C, S] float32, plus one block of the file.

        Raises:
            DatasetError: a file no longer reads as it did when it was checked (changed or removed since).
        """
        if self._closed:
            raise RuntimeError("PreparedDataset.batches after close: its files are removed")
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
        batch: list[SegmentAudio] = []
        for name, group in itertools.groupby(self.segments, key=lambda s: s.source):
            for item in self._read_file(name, list(group)):
                batch.append(item)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def _read_file(self, name: str, wanted: list[Segment]) -> Iterator[SegmentAudio]:
        """The audio of `wanted` (segments of file `name`, in order), streamed and cut as when checked."""
        seg = self.segment_samples
        by_offset = {s.offset: s for s in wanted}
        end = wanted[-1].offset + seg  # nothing after the last wanted segment is needed
        done = 0
        source = None
        try:
            with (
                _decodable(self.root / name, name, Path(self._tmp.name)) as source,
                AudioStream(source, SAMPLE_RATE, self.channels) as stream,
            ):
                piece, segment = None, None  # the wanted segment being filled: [C, S]
                pos = 0  # samples of the file streamed before `block`
                for block in stream:  # [C, k]
                    at = 0
                    while at < block.shape[1]:
                        offset = (pos + at) // seg * seg  # start of the piece sample pos + at is in
                        stop = min(block.shape[1], offset + seg - pos)
                        if offset in by_offset:
                            if piece is None:
                                segment, piece = by_offset[offset], block.new_zeros(self.channels, seg)
                            piece[:, pos + at - offset : pos + stop - offset] = block[:, at:stop]
                            if pos + stop - offset == seg:
                                yield self._checked(name, segment, piece, seg)
                                piece, segment, done = None, None, done + 1
                        at = stop
                    pos += block.shape[1]
                    if pos >= end:
                        break
                if piece is not None:  # the kept last piece, zero-padded after its `valid` samples
                    yield self._checked(name, segment, piece, pos - segment.offset)
                    done += 1
        except DatasetError:
            raise
        except (_Skip, InvalidInputError) as e:  # AudioFileError is an InvalidInputError
            detail = str(e) if source is None else str(e).replace(str(source), name)
            raise DatasetError(
                f"{name} could not be read again to encode it ({detail}); was it changed or removed "
                "while training was being prepared? Run the training again"
            ) from e
        if done != len(wanted):
            raise DatasetError(
                f"{name} is shorter than when it was checked ({done} of its {len(wanted)} segments read); "
                "was it changed while training was being prepared? Run the training again"
            )

    @staticmethod
    def _checked(name: str, segment: Segment, piece: torch.Tensor, valid: int) -> SegmentAudio:
        if valid != segment.valid:
            raise DatasetError(
                f"{name} changed while training was being prepared: the segment at {segment.start:g} s "
                f"now holds {valid} samples, not {segment.valid}. Run the training again"
            )
        return SegmentAudio(segment, piece)

    def close(self) -> None:
        """Removes the temporary folder (the extracted files); `batches` cannot be used afterwards."""
        self._closed = True
        self._tmp.cleanup()

    def __enter__(self) -> PreparedDataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prepare_dataset(
    dataset_path: Path,
    work_dir: Path,
    *,
    channels: int,
    segment_seconds: float,
    one_same_description: str | None = None,
    min_last_seconds: float = DEFAULT_MIN_LAST_SECONDS,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> PreparedDataset:
    """Checks a dataset (a tar / tar.gz / tgz / zip archive, or one audio file) and lists its segments.

    Every check that needs no model happens here, so that each mistake is reported before a model is
    loaded: the archive's safety and size, the captions, and each file's audio, streamed once (decodable,
    finite, not silent, long enough; silent segments dropped). The audio is not kept: the result lists
    where each segment lies, and its `batches` reads them again when they are encoded.

    Args:
        dataset_path: the archive, or a single audio file (its caption may be a .txt / .json beside it).
        work_dir: folder for the extracted files and ffmpeg conversions, in a temporary subfolder that the
            result's `close` removes (or this function, when it raises); nothing is written anywhere else.
        channels: 1 for mono models, 2 for stereo ones; audio is mixed or duplicated to match.
        segment_seconds: length of every segment, at most 30 s.
        one_same_description: caption of every file that has no .txt or .json of its own.
        min_last_seconds: shortest last piece of a file that is kept (padded and masked), in seconds.
        max_total_bytes, max_files: limits on what an archive may unpack (see `extract_archive`).

    Returns:
        A `PreparedDataset` (segments sorted by file then time, and the report); use it in a `with` block,
        or call its `close`, so that the extracted files are removed.

    Raises:
        DatasetError: the archive is unsafe, oversized, damaged or empty; audio files have no caption (all
            listed at once); or no file gave a usable segment (the reasons are listed).
    """
    dataset_path, work_dir = Path(dataset_path), Path(work_dir)
    if channels not in (1, 2):
        raise InvalidInputError(f"channels must be 1 (mono) or 2 (stereo), got {channels}")
    if not (0 < segment_seconds <= MAX_SEGMENT_SECONDS):
        raise InvalidInputError(
            f"segment_seconds must be in (0, {MAX_SEGMENT_SECONDS:g}], got {segment_seconds}"
        )
    if not (0 <= min_last_seconds <= segment_seconds):
        raise InvalidInputError(
            f"min_last_seconds must be between 0 and segment_seconds ({segment_seconds:g}), "
            f"got {min_last_seconds}"
        )
    if not dataset_path.exists():
        raise DatasetError(f"Dataset not found: {dataset_path}")
    if dataset_path.is_dir():
        raise DatasetError(
            f"{dataset_path} is a folder; pass a .zip or .tar.gz of it, or a single audio file"
        )

    report = DatasetReport(
        dataset=dataset_path.name,
        sample_rate=SAMPLE_RATE,
        channels=channels,
        segment_seconds=float(segment_seconds),
        min_last_seconds=float(min_last_seconds),
    )
    seg, min_last = _piece_samples(segment_seconds, min_last_seconds, SAMPLE_RATE)
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="dataset-", dir=work_dir)
    try:
        tmp_dir = Path(tmp.name)
        root, files = _dataset_files(dataset_path, tmp_dir / "files", report, max_total_bytes, max_files)
        captions = _captions(root, files, one_same_description, report)
        segments = _segments(root, captions, tmp_dir, report, seg, min_last)
        report.files_skipped.sort(key=lambda s: s.path)
        if not segments:
            shown = [f"{s.path} ({s.reason})" for s in report.files_skipped[:_MAX_NAMES_IN_MESSAGE]]
            more = len(report.files_skipped) - len(shown)
            raise DatasetError(
                f"No usable audio in {dataset_path.name}: every file was skipped: "
                + "; ".join(shown)
                + (f"; and {more} more" if more else "")
            )
    except BaseException:
        tmp.cleanup()
        raise
    return PreparedDataset(root, segments, report, seg, tmp)


def _dataset_files(
    dataset_path: Path, extract_to: Path, report: DatasetReport, max_total_bytes: int, max_files: int
) -> tuple[Path, list[Path]]:
    """(root folder, audio files relative to it) for an archive (extracted) or a single audio file."""
    suffix = dataset_path.suffix.lower()
    if suffix in AUDIO_SUFFIXES or suffix in FFMPEG_SUFFIXES:
        size = dataset_path.stat().st_size
        if size > max_total_bytes:
            raise DatasetError(
                f"{dataset_path.name} is {size} bytes, more than the limit of {max_total_bytes} bytes"
            )
        # Read in place: nothing to unpack, and a caption beside it is looked up there.
        return dataset_path.parent, [Path(dataset_path.name)]
    if dataset_path.stat().st_size == 0:
        raise DatasetError(f"{dataset_path.name} is an empty file; pass a tar, tar.gz, zip or audio file")
    if _archive_kind(dataset_path) is None:
        known = ", ".join(AUDIO_SUFFIXES + FFMPEG_SUFFIXES)
        raise DatasetError(
            f"{dataset_path.name} is neither a tar / tar.gz / tgz / zip archive nor an audio file ({known})"
        )
    extraction = extract_archive(
        dataset_path, extract_to, max_total_bytes=max_total_bytes, max_files=max_files
    )
    files = find_audio_files(extract_to)
    report.ignored_entries = extraction.ignored
    if not files:
        known = ", ".join(AUDIO_SUFFIXES + FFMPEG_SUFFIXES)
        raise DatasetError(
            f"The archive {dataset_path.name} contains no audio files ({known}); "
            f"{extraction.ignored} entries were ignored (other file types, __MACOSX/ and dotfiles)"
        )
    return extract_to, files


def _captions(
    root: Path, files: list[Path], one_same_description: str | None, report: DatasetReport
) -> list[tuple[Path, str, CaptionSource]]:
    """Captions of all files, checked before any decoding so that a missing one fails fast."""
    captioned, missing = [], []
    for rel in files:
        try:
            found = caption_for(root / rel, one_same_description)
        except DatasetError as e:
            report.files_skipped.append(SkippedFile(rel.as_posix(), f"caption unusable: {e}"))
            continue
        if found is None:
            missing.append(rel.as_posix())
        else:
            captioned.append((rel, *found))
    if missing:
        shown = missing[:_MAX_NAMES_IN_MESSAGE]
        more = f" and {len(missing) - len(shown)} more" if len(missing) > len(shown) else ""
        raise DatasetError(
            f"{len(missing)} audio file(s) have no caption: {', '.join(shown)}{more}. Add a .txt file "
            "with the same name beside each one (song.txt for song.wav), or audiocraft .json metadata, "
            "or set one_same_description to use one caption for every file without its own."
        )
    return captioned


def _segments(
    root: Path,
    captions: list[tuple[Path, str, CaptionSource]],
    tmp_dir: Path,
    report: DatasetReport,
    seg: int,
    min_last: int,
) -> list[Segment]:
    """Streams, checks and cuts every captioned file, filling `report` as it goes."""
    segments: list[Segment] = []
    for rel, caption, source in captions:
        name = rel.as_posix()
        try:
            total, peak, loud_pieces = _scan(root / rel, name, report.channels, tmp_dir, seg)
            if peak < SILENCE_PEAK:
                raise _Skip(f"silent (peak {peak:.2g}, below {SILENCE_PEAK:g})")
            kept, dropped = _cut(total, seg, min_last)
            if not kept:
                raise _Skip(
                    f"too short ({total / SAMPLE_RATE:.2f} s); a file must last at least "
                    f"min_last_seconds ({report.min_last_seconds:g} s)"
                )
        except _Skip as e:
            report.files_skipped.append(SkippedFile(name, str(e)))
            continue
        # A silent stretch (a long fade-out, a gap) would teach silence as much as a silent file does.
        loud = [i for i in range(kept) if loud_pieces[i]]
        if not loud:  # the peak was in a dropped last piece
            report.files_skipped.append(SkippedFile(name, "silent in every kept segment"))
            continue
        report.dropped_silent_segments += kept - len(loud)
        report.dropped_last_pieces += int(dropped > 0)
        for i in loud:
            valid = min(seg, total - i * seg)
            segments.append(Segment(name, i * seg / SAMPLE_RATE, valid, caption, offset=i * seg))
            report.padded_segments += int(valid < seg)
            report.total_seconds += valid / SAMPLE_RATE
        report.segments += len(loud)
        report.files_used.append(name)
        report.caption_sources[source] += 1
    report.total_seconds = round(report.total_seconds, 3)
    return segments


def _scan(path: Path, name: str, channels: int, tmp_dir: Path, seg: int) -> tuple[int, float, bytearray]:
    """Streams one file: (its length in samples at 32 kHz, its peak, which pieces of `seg` samples are loud).

    A piece is loud when its peak reaches SILENCE_PEAK; the last flag may be of a partial piece. Holds one
    block of audio at a time and one byte per piece, whatever the file's length. Raises _Skip, with a
    reason naming `name` (not a temporary path), for a file that cannot be used.
    """
    loud = bytearray()
    top = 0.0
    total = 0
    with _decodable(path, name, tmp_dir) as source:
        try:
            with AudioStream(source, SAMPLE_RATE, channels) as stream:
                for block in stream:  # [C, k]
                    at = 0
                    while at < block.shape[1]:
                        into = (total + at) % seg  # samples of the current piece before this one
                        stop = min(block.shape[1], at + seg - into)
                        # Both checks from min and max: the peak is the larger magnitude, and NaN
                        # propagates through both. numpy's single-threaded reductions are several times
                        # faster here than torch's on a busy machine (thread hand-offs per block).
                        piece = block[:, at:stop].numpy()  # [C, n], a view
                        peak = max(abs(float(piece.min())), abs(float(piece.max())))
                        if not math.isfinite(peak):
                            raise _Skip("contains NaN or infinite samples")
                        if into == 0:
                            loud.append(0)
                        if peak >= SILENCE_PEAK:
                            loud[-1] = 1
                        top = max(top, peak)
                        at = stop
                    total += block.shape[1]
        except AudioFileError as e:  # one bad file must not stop the others; the reason goes to the report
            raise _Skip(f"unreadable: {str(e).replace(str(source), name)}") from e
        except InvalidInputError as e:  # a sample rate whose resampling filter would be too large
            raise _Skip(str(e).replace(str(source), name)) from e
    return total, top, loud


@contextmanager
def _decodable(path: Path, name: str, tmp_dir: Path) -> Iterator[Path]:
    """`path`, or for .m4a / .mp4 / .aac a temporary WAV that ffmpeg decoded it to, removed on exit.

    The conversion is made again for each pass over the file (check, then encode) rather than kept in
    between: a 32-bit WAV is ten to twenty times the size of the AAC it comes from, and keeping one per
    file would take that much disk for the whole dataset.
    """
    if path.suffix.lower() not in FFMPEG_SUFFIXES:
        yield path
        return
    converted = _ffmpeg_to_wav(path, name, tmp_dir)
    try:
        yield converted
    finally:
        converted.unlink(missing_ok=True)


def _ffmpeg_to_wav(path: Path, name: str, tmp_dir: Path) -> Path:
    """Decodes an AAC / MP4 file to a temporary 32-bit float WAV with ffmpeg (an argument list, no shell)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise _Skip(
            f"{Path(name).suffix} files need ffmpeg, which is not installed; convert it to wav, flac, mp3 "
            "or ogg, or install ffmpeg"
        )
    fd, out_name = tempfile.mkstemp(suffix=".wav", dir=tmp_dir)
    os.close(fd)
    out = Path(out_name)
    # "file:" keeps ffmpeg from reading a protocol ("concat:", "http:") or an option out of the file name;
    # the rate and channel count are kept, so resampling and mixing are the same as for every other format.
    args = [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-i", f"file:{path.resolve()}",
        "-map", "0:a:0", "-c:a", "pcm_f32le", "-f", "wav",
        f"file:{out}",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            args, stdin=subprocess.DEVNULL, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as e:
        out.unlink(missing_ok=True)
        raise _Skip(f"ffmpeg did not finish decoding it within {FFMPEG_TIMEOUT_S} s") from e
    except OSError as e:
        out.unlink(missing_ok=True)
        raise _Skip(f"could not run ffmpeg: {e}") from e
    if done.returncode != 0:
        out.unlink(missing_ok=True)
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = lines[-1].replace(str(path.resolve()), name) if lines else f"exit status {done.returncode}"
        raise _Skip(f"ffmpeg could not decode it: {detail}")
    return out


__all__ = [
    "AUDIO_SUFFIXES",
    "FFMPEG_SUFFIXES",
    "CAPTION_SUFFIXES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MIN_LAST_SECONDS",
    "MAX_SEGMENT_SECONDS",
    "SILENCE_PEAK",
    "DatasetError",
    "DatasetReport",
    "Extraction",
    "Piece",
    "PreparedDataset",
    "Segment",
    "SegmentAudio",
    "SkippedFile",
    "caption_for",
    "extract_archive",
    "find_audio_files",
    "fold_music_info",
    "prepare_dataset",
    "segment_audio",
]
