"""Dataset ingestion for fine-tuning: an archive or one audio file in, captioned 32 kHz segments out.

`prepare_dataset` chains the pieces below, each usable alone:

1. `extract_archive` unpacks a tar (plain, gz, bz2, xz) or zip into a fresh folder, member by member, after
   checking each one: no absolute paths, no `..`, no links, devices or fifos, at most `max_files` files and
   `max_total_bytes` bytes, counted on the bytes actually decompressed. Only audio files and .txt / .json
   captions are written; `__MACOSX/`, dotfiles and everything else are skipped. It lives in
   `musicgen.training.archive` with the suffixes, the limits and `DatasetError`, all re-exported here.
2. `find_audio_files` lists the audio files under the extracted folder.
3. `caption_for` finds each file's caption: `<stem>.txt`, else audiocraft's `<stem>.json` metadata folded into
   one text (`fold_music_info`), else `one_same_description`.
4. Audio is decoded with `musicgen.audio.read_audio` (libsndfile, resampled to 32 kHz, mixed to `channels`);
   .m4a / .mp4 / .aac go through ffmpeg to a temporary WAV first, when ffmpeg is installed.
5. `segment_audio` cuts each file into `segment_seconds` pieces; a shorter last piece is kept, zero-padded
   and marked with its valid length, when it lasts at least `min_last_seconds`.

Files that cannot be used (unreadable, silent, too short, undecodable caption) are skipped and listed in the
`DatasetReport`; problems the user must fix before anything can work (an unsafe or oversized archive, files
without captions, nothing usable left) raise one `DatasetError` that says what to do.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from ..audio import read_audio
from ..config import SAMPLE_RATE
from ..errors import InvalidInputError
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

_MAX_NAMES_IN_MESSAGE = 20


@dataclass
class Segment:
    """One training example: a fixed-length piece of a file and its caption."""

    source: str  # file path relative to the dataset root (posix separators)
    start: float  # seconds into the file
    wav: torch.Tensor  # [C, S] float32 at 32 kHz, S = segment_seconds * 32000, zero-padded after `valid`
    valid: int  # samples of real audio in `wav`; < S only for a kept last piece (the trainer masks the rest)
    caption: str


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
    seg = int(round(segment_seconds * sample_rate))
    min_last = int(math.ceil(min_last_seconds * sample_rate))
    if seg <= 0:
        raise InvalidInputError(f"segment_seconds must be positive, got {segment_seconds}")
    channels, total = wav.shape
    full = total // seg
    pieces = [Piece(i * seg, wav[:, i * seg : (i + 1) * seg].clone(), seg) for i in range(full)]
    rest = total - full * seg
    if rest == 0:
        return pieces, 0
    if rest < max(min_last, 1):
        return pieces, rest
    padded = wav.new_zeros(channels, seg)  # [C, S]
    padded[:, :rest] = wav[:, full * seg :]
    pieces.append(Piece(full * seg, padded, rest))
    return pieces, 0


# ---------------------------------------------------------------------------------------------------------
# The whole pipeline


class _Skip(Exception):
    """A file that cannot be used; the message is the reason shown in the report."""


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
) -> tuple[list[Segment], DatasetReport]:
    """Turns a dataset (a tar / tar.gz / tgz / zip archive, or one audio file) into training segments.

    Args:
        dataset_path: the archive, or a single audio file (its caption may be a .txt / .json beside it).
        work_dir: folder for the extracted files and ffmpeg conversions, in a temporary subfolder that is
            removed before returning; nothing is written anywhere else.
        channels: 1 for mono models, 2 for stereo ones; audio is mixed or duplicated to match.
        segment_seconds: length of every segment, at most 30 s.
        one_same_description: caption of every file that has no .txt or .json of its own.
        min_last_seconds: shortest last piece of a file that is kept (padded and masked), in seconds.
        max_total_bytes, max_files: limits on what an archive may unpack (see `extract_archive`).

    Returns:
        (segments sorted by file then time, report). Segments hold the audio in memory.

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
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dataset-", dir=work_dir) as tmp:
        tmp_dir = Path(tmp)
        root, files = _dataset_files(dataset_path, tmp_dir / "files", report, max_total_bytes, max_files)
        captions = _captions(root, files, one_same_description, report)
        segments = _segments(root, captions, tmp_dir, report)
    report.files_skipped.sort(key=lambda s: s.path)

    if not segments:
        shown = [f"{s.path} ({s.reason})" for s in report.files_skipped[:_MAX_NAMES_IN_MESSAGE]]
        more = len(report.files_skipped) - len(shown)
        raise DatasetError(
            f"No usable audio in {dataset_path.name}: every file was skipped: "
            + "; ".join(shown)
            + (f"; and {more} more" if more else "")
        )
    return segments, report


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
    root: Path, captions: list[tuple[Path, str, CaptionSource]], tmp_dir: Path, report: DatasetReport
) -> list[Segment]:
    """Decodes, checks and cuts every captioned file, filling `report` as it goes."""
    segments: list[Segment] = []
    for rel, caption, source in captions:
        name = rel.as_posix()
        try:
            wav = _decode(root / rel, name, report.channels, tmp_dir)  # [C, N]
            if not torch.isfinite(wav).all():
                raise _Skip("contains NaN or infinite samples")
            peak = wav.abs().max().item()
            if peak < SILENCE_PEAK:
                raise _Skip(f"silent (peak {peak:.2g}, below {SILENCE_PEAK:g})")
            pieces, dropped = segment_audio(
                wav,
                segment_seconds=report.segment_seconds,
                min_last_seconds=report.min_last_seconds,
            )
            if not pieces:
                raise _Skip(
                    f"too short ({wav.shape[-1] / SAMPLE_RATE:.2f} s); a file must last at least "
                    f"min_last_seconds ({report.min_last_seconds:g} s)"
                )
        except _Skip as e:
            report.files_skipped.append(SkippedFile(name, str(e)))
            continue
        # A silent stretch (a long fade-out, a gap) would teach silence as much as a silent file does.
        loud = [p for p in pieces if p.wav[:, : p.valid].abs().max().item() >= SILENCE_PEAK]
        if not loud:  # the peak was in a dropped last piece
            report.files_skipped.append(SkippedFile(name, "silent in every kept segment"))
            continue
        report.dropped_silent_segments += len(pieces) - len(loud)
        report.dropped_last_pieces += int(dropped > 0)
        for piece in loud:
            segments.append(Segment(name, piece.start / SAMPLE_RATE, piece.wav, piece.valid, caption))
            report.padded_segments += int(piece.valid < piece.wav.shape[-1])
            report.total_seconds += piece.valid / SAMPLE_RATE
        report.segments += len(loud)
        report.files_used.append(name)
        report.caption_sources[source] += 1
    report.total_seconds = round(report.total_seconds, 3)
    return segments


def _decode(path: Path, name: str, channels: int, tmp_dir: Path) -> torch.Tensor:
    """[C, N] float32 at 32 kHz, or _Skip with a reason naming `name` (not the temporary path)."""
    source = path
    converted = None
    if path.suffix.lower() in FFMPEG_SUFFIXES:
        converted = _ffmpeg_to_wav(path, name, tmp_dir)
        source = converted
    try:
        return read_audio(source, SAMPLE_RATE, channels)
    except Exception as e:  # one bad file must not stop the others; the reason goes to the report
        raise _Skip(f"unreadable: {str(e).replace(str(source), name)}") from e
    finally:
        if converted is not None:
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
    "Segment",
    "SkippedFile",
    "caption_for",
    "extract_archive",
    "find_audio_files",
    "fold_music_info",
    "prepare_dataset",
    "segment_audio",
]
