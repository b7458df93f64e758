"""Safe archive extraction: the first step of dataset ingestion (`musicgen.training.dataset`).

`extract_archive` unpacks a tar (plain, gz, bz2, xz) or zip into a fresh folder, member by member, after
checking each one: no absolute paths, no `..`, no links, devices or fifos, at most `max_files` files and
`max_total_bytes` bytes, counted on the bytes actually decompressed. Only audio files and .txt / .json
captions are written; `__MACOSX/`, dotfiles and everything else are skipped.

This module also holds what both it and the rest of ingestion need: the audio and caption suffixes, the
hidden-file rule, the unpacking limits and `DatasetError`, the error every refusal raises (defined here so
that this module stands alone; `musicgen.training.dataset` re-exports all of its public names).
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Literal, NamedTuple

from ..audio import SUPPORTED_READ_SUFFIXES
from ..errors import InvalidInputError

# Decoded in-process by libsndfile (wav, flac, mp3, ogg, and the few others it reads).
AUDIO_SUFFIXES = tuple(SUPPORTED_READ_SUFFIXES)
# AAC in MP4 containers: libsndfile cannot read them, ffmpeg can when it is installed.
FFMPEG_SUFFIXES = (".m4a", ".mp4", ".aac")
CAPTION_SUFFIXES = (".txt", ".json")

DEFAULT_MAX_TOTAL_BYTES = 20 * 1024**3  # 20 GiB unpacked
DEFAULT_MAX_FILES = 20_000  # audio + caption files written
# Archive entries read (directories, ignored files included) per allowed file: a tar's index is read entry
# by entry, and this bounds the time and memory spent on an archive of millions of empty entries.
ENTRIES_PER_FILE = 10

_COPY_CHUNK = 1 << 20
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
try:  # corrupt compressed data raises these, not OSError (bz2's errors are OSErrors)
    import lzma

    _DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (zlib.error, lzma.LZMAError)
except ImportError:  # a Python built without liblzma: tarfile then cannot open .xz either
    _DECOMPRESSION_ERRORS = (zlib.error,)


class DatasetError(InvalidInputError):
    """The training dataset cannot be used as given; the message says which file and what to do."""


class Extraction(NamedTuple):
    """What `extract_archive` wrote."""

    files: list[Path]  # written files, relative to the destination folder, in archive order
    ignored: int  # entries not written: directories excluded, everything skipped on purpose


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> Extraction:
    """Unpacks the audio and caption files of a tar (plain, .gz/.tgz, .bz2, .xz) or zip into `dest`.

    Members are read in archive order and each is checked before anything of it is written; the whole
    archive is refused with a `DatasetError` naming the member when one is unsafe (files written before it
    stay in `dest`, which `prepare_dataset` removes): an absolute path, a `..` component, a symbolic or
    hard link, a device file or fifo (or any other special entry), an encrypted zip member, a zip member
    compressed with anything but deflate (bzip2 / lzma members can expand gigabytes in one read). Counting
    stops the unpacking when more than `max_files` files would be written or when the bytes actually
    decompressed (not the sizes the headers declare) pass `max_total_bytes`; the partial file is removed.

    Only files whose suffix is an audio or caption suffix are written; `__MACOSX/` folders, dotfiles (any
    path component starting with '.') and other files are skipped. Files are created with O_EXCL under
    `dest` only (a member listed twice is refused), and `dest` must be empty or absent, so no link left
    there earlier can redirect a write.
    """
    archive, dest = Path(archive), Path(dest)
    if max_total_bytes <= 0 or max_files <= 0:
        raise InvalidInputError(
            f"max_total_bytes and max_files must be positive, got {max_total_bytes} and {max_files}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise DatasetError(f"Extraction folder {dest} is not empty; extract into a new folder")
    writer = _MemberWriter(archive.name, dest, max_total_bytes, max_files)
    kind = _archive_kind(archive)
    if kind == "zip":
        entries = _extract_zip(archive, writer)
    elif kind == "tar":
        entries = _extract_tar(archive, writer)
    else:
        raise DatasetError(f"{archive.name} is not a tar, tar.gz or zip archive")
    if entries == 0:
        raise DatasetError(f"The archive {archive.name} is empty; it must contain audio files")
    return Extraction(writer.files, entries - len(writer.files) - writer.dirs)


def _archive_kind(path: Path) -> Literal["zip", "tar"] | None:
    """Sniffs the content rather than trusting the name (uploads are often renamed).

    Tar first: a tar header has a checksum a zip never passes, while `is_zipfile` only looks for an
    end-of-zip record near the end, which a plain tar whose last member is a .zip also has.
    """
    try:
        if tarfile.is_tarfile(path):
            return "tar"
        if zipfile.is_zipfile(path):
            return "zip"
    except OSError as e:
        raise DatasetError(f"Could not read {path.name}: {e}") from e
    return None


def _member_parts(archive: str, name: str) -> list[str]:
    """Path components of a member name; refuses names that could land outside the destination."""
    if "\x00" in name:
        raise DatasetError(
            f"{archive}: member {name!r} has a NUL character in its name; refusing the archive"
        )
    # Backslashes count as separators too: Windows tools write them, and they must not smuggle in a '..'.
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise DatasetError(
            f"{archive}: member {name!r} has an absolute path; refusing the archive "
            "(members must be relative paths inside it)"
        )
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DatasetError(
            f"{archive}: member {name!r} contains '..' and would be written outside the dataset folder; "
            "refusing the archive"
        )
    return parts


def _is_hidden(parts: list[str]) -> bool:
    """macOS resource forks (`__MACOSX/`, `._x.wav`) and other dotfiles carry no training data."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _is_wanted(parts: list[str]) -> bool:
    suffix = Path(parts[-1]).suffix.lower()
    return suffix in AUDIO_SUFFIXES or suffix in FFMPEG_SUFFIXES or suffix in CAPTION_SUFFIXES


class _MemberWriter:
    """Writes checked members under `dest`, counting files and decompressed bytes against the limits."""

    def __init__(self, archive: str, dest: Path, max_total_bytes: int, max_files: int):
        self.archive = archive
        self.dest = dest
        self.real_dest = dest.resolve()
        self.max_total_bytes = max_total_bytes
        self.max_files = max_files
        self.max_entries = max_files * ENTRIES_PER_FILE
        self.total_bytes = 0
        self.files: list[Path] = []
        self.dirs = 0
        self._seen: set[str] = set()

    def count_entry(self, entries: int, name: str) -> None:
        if entries > self.max_entries:
            raise DatasetError(
                f"{self.archive} has more than {self.max_entries} entries (stopped at {name!r}); "
                f"at most {self.max_files} files are accepted"
            )

    def write(self, name: str, parts: list[str], src: IO[bytes], declared_size: int) -> None:
        if len(self.files) >= self.max_files:
            raise DatasetError(
                f"{self.archive} has more than {self.max_files} audio and caption files (stopped at {name!r}); "
                "split the dataset or raise max_files"
            )
        if self.total_bytes + max(declared_size, 0) > self.max_total_bytes:
            raise DatasetError(
                f"{self.archive}: member {name!r} ({declared_size} bytes) takes the unpacked size past the "
                f"limit of {self.max_total_bytes} bytes; use a smaller dataset or raise max_total_bytes"
            )
        key = "/".join(parts)
        if key in self._seen:
            raise DatasetError(f"{self.archive}: member {name!r} appears twice; refusing the archive")
        self._seen.add(key)

        target = self.dest.joinpath(*parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # e.g. a file member earlier in the archive has the name of this folder
            raise DatasetError(f"{self.archive}: cannot create the folder of member {name!r}: {e}") from e
        # Only folders this function created lie under dest, so this holds; checked because a miss here
        # would mean writing outside the work folder.
        if not target.parent.resolve().is_relative_to(self.real_dest):
            raise DatasetError(f"{self.archive}: member {name!r} resolves outside the extraction folder")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(target, flags, 0o644)
        except OSError as e:
            raise DatasetError(f"{self.archive}: cannot write member {name!r}: {e}") from e
        try:
            with os.fdopen(fd, "wb") as out:
                self.total_bytes += _copy_limited(
                    src, out, self.max_total_bytes - self.total_bytes, f"{self.archive}: member {name!r}"
                )
        except BaseException:
            target.unlink(missing_ok=True)  # no truncated file that looks like data
            raise
        self.files.append(Path(*parts))


def _copy_limited(src: IO[bytes], out: IO[bytes], limit: int, what: str) -> int:
    """Copies `src` to `out` in chunks; raises DatasetError once more than `limit` bytes came out.

    Counting what the decompressor really produces is what stops a zip bomb whose headers understate the
    size: the declared size was already checked, but it is only the archive's word.
    """
    written = 0
    while True:
        chunk = src.read(_COPY_CHUNK)
        if not chunk:
            return written
        written += len(chunk)
        if written > limit:
            raise DatasetError(
                f"{what} unpacks to more bytes than the unpacked-size limit allows "
                "(its header understates its size, as a zip bomb's does); refusing the archive"
            )
        out.write(chunk)


def _extract_tar(archive: Path, writer: _MemberWriter) -> int:
    """Extracts a tar member by member; returns the number of entries read."""
    entries = 0
    name = "(first member)"
    data_filter = getattr(tarfile, "data_filter", None)  # Python >= 3.11.4
    try:
        with tarfile.open(archive, "r:*") as tf:
            # Iterating reads one header at a time, so an entry count limit stops before the whole index.
            for member in tf:
                entries += 1
                name = member.name
                writer.count_entry(entries, name)
                parts = _member_parts(writer.archive, name)
                _check_tar_type(writer.archive, member)
                if data_filter is not None:
                    # The standard library's own rules, on top of ours (ours ran first and are stricter).
                    try:
                        data_filter(member, str(writer.dest))
                    except tarfile.FilterError as e:
                        raise DatasetError(f"{writer.archive}: member {name!r} refused: {e}") from e
                if member.isdir():
                    writer.dirs += 1
                    continue
                if not parts or _is_hidden(parts) or not _is_wanted(parts):
                    continue
                src = tf.extractfile(member)
                assert src is not None, name  # regular members always have data
                with src:
                    writer.write(name, parts, src, member.size)
    except DatasetError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, *_DECOMPRESSION_ERRORS) as e:  # bz2: OSError
        raise DatasetError(
            f"{writer.archive} is damaged or truncated (at member {name!r}): {e}; pack the archive again"
        ) from e
    return entries


def _check_tar_type(archive: str, member: tarfile.TarInfo) -> None:
    """Only plain files and folders are unpacked: links and special files are refused outright."""
    name = member.name
    if member.issym():
        kind = f"a symbolic link (to {member.linkname!r})"
    elif member.islnk():
        kind = f"a hard link (to {member.linkname!r})"
    elif member.ischr() or member.isblk():
        kind = "a device file"
    elif member.isfifo():
        kind = "a fifo"
    elif member.issparse():
        kind = "a sparse file"
    elif member.isdir() or member.isreg():
        return
    else:
        kind = f"an unsupported entry (tar type {member.type!r})"
    raise DatasetError(
        f"{archive}: member {name!r} is {kind}; refusing the archive (only regular files and folders "
        "are accepted; pack the audio files themselves)"
    )


def _extract_zip(archive: Path, writer: _MemberWriter) -> int:
    """Extracts a zip member by member; returns the number of entries."""
    name = "(central directory)"
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()  # the whole central directory is read on opening, so count it at once
            if len(infos) > writer.max_entries:
                writer.count_entry(len(infos), infos[writer.max_entries].filename)
            for info in infos:
                name = info.filename
                parts = _member_parts(writer.archive, name)
                _check_zip_type(writer.archive, info)
                if info.is_dir():
                    writer.dirs += 1
                    continue
                if not parts or _is_hidden(parts) or not _is_wanted(parts):
                    continue
                if info.flag_bits & 0x1:
                    raise DatasetError(
                        f"{writer.archive}: member {name!r} is encrypted; pack the dataset without a password"
                    )
                if info.compress_type not in _ZIP_METHODS:
                    raise DatasetError(
                        f"{writer.archive}: member {name!r} uses zip compression method "
                        f"{info.compress_type}; only stored and deflate members are accepted (re-create "
                        "the zip with default settings)"
                    )
                with zf.open(info) as src:
                    writer.write(name, parts, src, info.file_size)
    except DatasetError:
        raise
    except zipfile.BadZipFile as e:
        if "CRC" not in str(e):
            raise DatasetError(
                f"{writer.archive} is damaged (at member {name!r}): {e}; pack the archive again"
            ) from e
        # zipfile stops reading at the size the header declares, so a bomb whose header understates its size
        # ends here: the data after the declared size is never decompressed, and the checksum cannot match.
        raise DatasetError(
            f"{writer.archive}: member {name!r} does not match its header (CRC check failed): the archive is "
            "damaged, or the header understates the member's size as a zip bomb's does; refusing the archive"
        ) from e
    except (EOFError, OSError, ValueError, NotImplementedError, *_DECOMPRESSION_ERRORS) as e:
        raise DatasetError(
            f"{writer.archive} is damaged (at member {name!r}): {e}; pack the archive again"
        ) from e
    return len(infos)


def _check_zip_type(archive: str, info: zipfile.ZipInfo) -> None:
    """Zip has no hard links, but Unix zips store symlinks and special files in the external attributes."""
    mode = info.external_attr >> 16
    kind = None
    if stat.S_ISLNK(mode):
        kind = "a symbolic link"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device file"
    elif stat.S_ISFIFO(mode):
        kind = "a fifo"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    if kind:
        raise DatasetError(
            f"{archive}: member {info.filename!r} is {kind}; refusing the archive (only regular files "
            "and folders are accepted)"
        )


__all__ = [
    "extract_archive",
    "Extraction",
    "DatasetError",
    "AUDIO_SUFFIXES",
    "CAPTION_SUFFIXES",
    "FFMPEG_SUFFIXES",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "ENTRIES_PER_FILE",
]
