"""Fine-tuning dataset ingestion: archives, captions, segments, refusals (CPU, no network, small files)."""

from __future__ import annotations

import io
import json
import stat
import struct
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen.errors import InvalidInputError
from musicgen.training.dataset import (
    DatasetError,
    Segment,
    _copy_limited,
    caption_for,
    extract_archive,
    find_audio_files,
    fold_music_info,
    prepare_dataset,
    segment_audio,
)

SR = 32000
# Short segments keep every test to a few seconds of audio.
SEG = dict(segment_seconds=1.0, min_last_seconds=0.5)


def tone(seconds: float, rate: int = SR, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """440 Hz sine, [S, C] (soundfile's layout)."""
    t = np.arange(int(round(seconds * rate))) / rate
    sig = amp * np.sin(2 * np.pi * 440 * t)
    return np.stack([sig] * channels, axis=1).astype(np.float32)


def audio_bytes(data: np.ndarray, rate: int = SR, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def prepare(*args, **kwargs):
    """prepare_dataset, then every segment read back with its audio (SegmentAudio); the dataset closed."""
    with prepare_dataset(*args, **kwargs) as data:
        loaded = [item for batch in data.batches(3) for item in batch]
        assert [item.segment for item in loaded] == data.segments
    return loaded, data.report


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture
def dirs(tmp_path):
    """(input folder, work folder): archives are built in the first, the second is the work_dir."""
    (tmp_path / "in").mkdir()
    (tmp_path / "work").mkdir()
    return tmp_path / "in", tmp_path / "work"


# ---------------------------------------------------------------------------------------------------------
# Inputs, captions, segments


def test_tar_gz_with_txt_captions(dirs):
    src, work = dirs
    archive = make_tar(
        src / "data.tar.gz",
        {
            "songs/a.wav": audio_bytes(tone(2.6)),  # 2 full segments + a 0.6 s last piece (kept)
            "songs/a.txt": b"  A bright\n piano   tune. ",
            "b.flac": audio_bytes(tone(1.0, rate=44100, channels=2), 44100, "FLAC"),  # resampled
            "b.txt": "\ufeffStereo strings".encode(),  # a BOM from a Windows editor
        },
    )
    segments, report = prepare(archive, work, channels=2, **SEG)

    assert [(s.source, s.start, s.valid) for s in segments] == [
        ("b.flac", 0.0, SR),
        ("songs/a.wav", 0.0, SR),
        ("songs/a.wav", 1.0, SR),
        ("songs/a.wav", 2.0, int(0.6 * SR)),
    ]
    for s in segments:
        assert s.wav.shape == (2, SR) and s.wav.dtype == torch.float32
    assert segments[0].caption == "Stereo strings"
    assert {s.caption for s in segments[1:]} == {"A bright piano tune."}
    last = segments[-1]
    assert torch.equal(last.wav[0], last.wav[1])  # mono file duplicated to stereo
    assert last.wav[:, last.valid :].abs().max() == 0  # zero padding after the real audio
    assert last.wav[:, : last.valid].abs().max() > 0.4

    assert report.files_used == ["b.flac", "songs/a.wav"]
    assert report.files_skipped == []
    assert (report.segments, report.padded_segments, report.dropped_last_pieces) == (4, 1, 0)
    assert report.total_seconds == pytest.approx(3.6)
    assert report.caption_sources == {"txt": 2, "json": 0, "one_same_description": 0}
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["total_minutes"] == pytest.approx(0.06) and as_json["segments"] == 4
    summary = report.summary()
    assert "2 audio files used" in summary and "4 segments of 1 s" in summary and "2 from .txt" in summary
    assert not any(work.iterdir())  # the temporary extraction folder is gone


# A fixed example and the text audiocraft 1.3.0 gives for it (augment_music_info_description with merging
# on, nothing dropped, no shuffle; checked against audiocraft's own functions when this test was written).
AUDIOCRAFT_META = {
    "description": "An upbeat pop track.",
    "key": "G Minor",
    "bpm": 120,
    "genre": "Pop",
    "moods": "happy, Energetic",
    "keywords": ["Synth", " drums "],
    "instrument": "Mix",
    "title": "Not in the caption",
    "artist": "nobody",
    "name": "track",
    "sample_rate": 44100,
}
AUDIOCRAFT_TEXT = (
    "An upbeat pop track. key: g minor. bpm: 120.0. genre: pop. moods: happy, energetic. "
    "keywords: synth, drums. instrument: mix"
)


def test_zip_with_json_captions_and_one_same_description_fallback(dirs):
    src, work = dirs
    archive = make_zip(
        src / "data.zip",
        {
            "x.wav": audio_bytes(tone(2.3)),  # 2 segments, a 0.3 s last piece dropped
            "x.json": json.dumps(AUDIOCRAFT_META).encode(),
            "y.ogg": audio_bytes(tone(1.0), fmt="OGG", subtype="VORBIS"),
            "y.json": json.dumps({"description": "lo-fi beat", "key": "A, B"}).encode(),  # two keys: none
            "z.wav": audio_bytes(tone(0.7, channels=2)),
            "z.txt": b"   \n",  # blank: falls through to one_same_description
        },
    )
    segments, report = prepare(archive, work, channels=1, one_same_description="  generic  music ", **SEG)
    captions = {s.source: s.caption for s in segments}
    assert captions == {"x.wav": AUDIOCRAFT_TEXT, "y.ogg": "lo-fi beat.", "z.wav": "generic music"}
    assert [s.source for s in segments].count("x.wav") == 2
    assert all(s.wav.shape == (1, SR) for s in segments)
    assert report.caption_sources == {"txt": 0, "json": 2, "one_same_description": 1}
    assert (report.segments, report.padded_segments, report.dropped_last_pieces) == (4, 1, 1)
    assert "1 last pieces shorter than 0.5 s dropped" in report.summary()


def test_fold_music_info_follows_audiocraft():
    assert fold_music_info(AUDIOCRAFT_META) == AUDIOCRAFT_TEXT
    # audiocraft strips the trailing dots of the description and joins with ". ", so one always ends it
    assert fold_music_info({"description": "calm piano"}) == "calm piano."
    assert fold_music_info({"description": "Calm piano..."}) == "Calm piano."
    assert fold_music_info({"genre": "Rock", "bpm": "fast"}) == "genre: rock"  # unparsable bpm dropped
    assert fold_music_info({"bpm": "97.5", "keywords": "lofi  chill,beats"}) == (
        "bpm: 97.5. keywords: lofi, chill, beats"
    )
    assert fold_music_info({"description": "None", "moods": []}) is None
    assert fold_music_info({}) is None


def test_caption_order(tmp_path):
    audio = tmp_path / "song.wav"
    audio.write_bytes(b"")  # caption_for does not read the audio
    assert caption_for(audio, "fallback") == ("fallback", "one_same_description")
    assert caption_for(audio) is None
    (tmp_path / "song.json").write_text(json.dumps({"description": "From json"}))
    assert caption_for(audio, "fallback") == ("From json.", "json")
    (tmp_path / "song.txt").write_text("From txt")
    assert caption_for(audio, "fallback") == ("From txt", "txt")
    (tmp_path / "song.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(DatasetError, match="song.txt is not UTF-8"):
        caption_for(audio)
    # a caption file is read whole: a huge one is refused before it is read
    (tmp_path / "song.txt").write_bytes(b"word " * (1 << 19))
    with pytest.raises(DatasetError, match="song.txt is 2,621,440 bytes; a caption file may hold at most"):
        caption_for(audio)


def test_single_audio_file(dirs):
    src, work = dirs
    solo = src / "solo.wav"
    sf.write(str(solo), tone(1.5, rate=48000, channels=2), 48000)
    segments, report = prepare(solo, work, channels=1, one_same_description="solo guitar", **SEG)
    assert [(s.source, s.start, s.valid, s.caption) for s in segments] == [
        ("solo.wav", 0.0, SR, "solo guitar"),
        ("solo.wav", 1.0, SR // 2, "solo guitar"),
    ]
    assert report.caption_sources["one_same_description"] == 1 and report.dataset == "solo.wav"
    (src / "solo.txt").write_text("a caption beside it")
    segments, report = prepare(solo, work, channels=2, **SEG)
    assert segments[0].caption == "a caption beside it" and report.caption_sources["txt"] == 1
    (src / "solo.txt").unlink()
    with pytest.raises(DatasetError, match=r"have no caption: solo\.wav"):
        prepare_dataset(solo, work, channels=1, **SEG)


def test_segment_audio():
    wav = torch.arange(1, 36, dtype=torch.float32)[None].repeat(2, 1)  # [2, 35]
    pieces, dropped = segment_audio(wav, segment_seconds=1.0, min_last_seconds=0.5, sample_rate=10)
    assert [(p.start, p.valid, tuple(p.wav.shape)) for p in pieces] == [
        (0, 10, (2, 10)),
        (10, 10, (2, 10)),
        (20, 10, (2, 10)),
        (30, 5, (2, 10)),
    ]
    assert dropped == 0
    assert torch.equal(pieces[3].wav[:, :5], wav[:, 30:]) and pieces[3].wav[:, 5:].abs().max() == 0
    pieces, dropped = segment_audio(wav, segment_seconds=1.0, min_last_seconds=0.6, sample_rate=10)
    assert len(pieces) == 3 and dropped == 5
    pieces, dropped = segment_audio(wav[:, :30], segment_seconds=1.0, sample_rate=10)
    assert len(pieces) == 3 and dropped == 0
    pieces, dropped = segment_audio(wav[:, :3], segment_seconds=1.0, min_last_seconds=0.5, sample_rate=10)
    assert pieces == [] and dropped == 3


# ---------------------------------------------------------------------------------------------------------
# Refusals: nothing may be written outside the work folder


def _tar_with(path: Path, bad: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A tar.gz with a good file first (so a refusal must also clean up), then `bad`."""
    good = audio_bytes(tone(0.5))
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("a.wav")
        info.size = len(good)
        tf.addfile(info, io.BytesIO(good))
        bad.size = len(data)
        tf.addfile(bad, io.BytesIO(data) if data else None)
    return path


def _tar_member(kind: str, tmp_path: Path) -> tuple[tarfile.TarInfo, str]:
    """(the offending member, a fragment the error must contain)."""
    if kind == "dotdot":
        return tarfile.TarInfo("../evil.wav"), "'../evil.wav' contains '..'"
    if kind == "deep_dotdot":  # would reach tmp_path from work/dataset-*/files/
        return tarfile.TarInfo("sub/../../../../evil.wav"), "contains '..'"
    if kind == "absolute":
        name = str(tmp_path / "evil.wav")
        return tarfile.TarInfo(name), f"{name!r} has an absolute path"
    info = tarfile.TarInfo("evil.wav")
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, str(tmp_path / "target.wav")
        return info, "'evil.wav' is a symbolic link"
    if kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "a.wav"
        return info, "'evil.wav' is a hard link"
    if kind == "fifo":
        info.type = tarfile.FIFOTYPE
        return info, "'evil.wav' is a fifo"
    if kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        return info, "'evil.wav' is a device file"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["dotdot", "deep_dotdot", "absolute", "symlink", "hardlink", "fifo", "device"]
)
def test_tar_unsafe_members_refused(dirs, kind):
    src, work = dirs
    root = src.parent
    member, message = _tar_member(kind, root)
    data = audio_bytes(tone(0.5)) if kind in ("dotdot", "deep_dotdot", "absolute") else b""
    archive = _tar_with(src / "bad.tar.gz", member, data)
    before = listing(root)
    with pytest.raises(DatasetError, match="refusing the archive") as err:
        prepare_dataset(archive, work, channels=1, one_same_description="x", **SEG)
    assert message in str(err.value)
    assert listing(root) == before
    assert not any(work.iterdir())


def _zip_symlink() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("evil.wav")
    info.create_system = 3  # Unix: the high 16 bits of external_attr are st_mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "member, message",
    [
        ("../evil.wav", "contains '..'"),
        ("sub\\..\\..\\..\\..\\evil.wav", "contains '..'"),  # Windows separators
        ("ABSOLUTE", "has an absolute path"),
        (_zip_symlink(), "is a symbolic link"),
    ],
)
def test_zip_unsafe_members_refused(dirs, member, message):
    src, work = dirs
    root = src.parent
    if member == "ABSOLUTE":
        member = str(root / "evil.wav")
    archive = src / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.wav", audio_bytes(tone(0.5)))
        zf.writestr(member, b"/etc/passwd" if isinstance(member, zipfile.ZipInfo) else audio_bytes(tone(0.5)))
    before = listing(root)
    with pytest.raises(DatasetError, match=message):
        prepare_dataset(archive, work, channels=1, one_same_description="x", **SEG)
    assert listing(root) == before
    assert not any(work.iterdir())


def test_zip_bomb_refused_by_declared_size(dirs):
    src, work = dirs
    archive = make_zip(src / "bomb.zip", {"bomb.wav": bytes(3_000_000)})
    assert archive.stat().st_size < 20_000  # zeros deflate to almost nothing
    before = listing(src.parent)
    with pytest.raises(DatasetError, match=r"'bomb.wav' \(3000000 bytes\).*limit of 1000000 bytes"):
        prepare_dataset(archive, work, channels=1, max_total_bytes=1_000_000, **SEG)
    assert listing(src.parent) == before and not any(work.iterdir())


def test_tar_bomb_refused(dirs):
    src, work = dirs
    archive = make_tar(src / "bomb.tgz", {"a.wav": bytes(600_000), "b.wav": bytes(600_000)})
    with pytest.raises(DatasetError, match="'b.wav'.*limit of 1000000 bytes"):
        prepare_dataset(archive, work, channels=1, max_total_bytes=1_000_000, **SEG)
    assert not any(work.iterdir())


def _lie_about_size(path: Path, name: bytes, size: int) -> None:
    """Rewrites the uncompressed size of member `name` in both the local and the central header."""
    data = bytearray(path.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    assert data[local + 30 : local + 30 + len(name)] == name
    struct.pack_into("<I", data, local + 22, size)  # local header: uncompressed size at +22
    struct.pack_into("<I", data, central + 24, size)  # central directory: uncompressed size at +24
    path.write_bytes(bytes(data))


def test_zip_bomb_with_lying_header_refused(dirs):
    src, work = dirs
    archive = make_zip(src / "liar.zip", {"bomb.wav": bytes(5_000_000)})
    _lie_about_size(archive, b"bomb.wav", 1000)
    assert zipfile.ZipFile(archive).getinfo("bomb.wav").file_size == 1000
    before = listing(src.parent)
    # zipfile stops at the declared size and then finds the CRC wrong: refused, nothing big written
    with pytest.raises(DatasetError, match="'bomb.wav' does not match its header.*zip bomb"):
        prepare_dataset(archive, work, channels=1, max_total_bytes=100_000, **SEG)
    assert listing(src.parent) == before and not any(work.iterdir())


def test_copy_counts_the_real_decompressed_bytes(tmp_path):
    # What stops a decompressor producing more than its header declared, whatever zipfile does
    out = io.BytesIO()
    with pytest.raises(DatasetError, match="unpacks to more bytes than the unpacked-size limit"):
        _copy_limited(io.BytesIO(bytes(5 << 20)), out, 1 << 20, "liar.zip: member 'x.wav'")
    assert len(out.getvalue()) <= 1 << 20


def test_truncated_archive_refused(dirs):
    src, work = dirs
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, (SR, 1)).astype(np.float32)  # does not compress
    archive = make_tar(src / "cut.tar.gz", {"a.wav": audio_bytes(noise), "b.wav": audio_bytes(noise)})
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DatasetError, match="cut.tar.gz is damaged or truncated"):
        prepare_dataset(archive, work, channels=1, one_same_description="x", **SEG)
    assert not any(work.iterdir())


def test_too_many_files_refused(dirs):
    src, work = dirs
    archive = make_zip(src / "many.zip", {f"{i}.wav": audio_bytes(tone(0.1)) for i in range(5)})
    with pytest.raises(DatasetError, match="more than 3 audio and caption files.*'3.wav'.*max_files"):
        prepare_dataset(archive, work, channels=1, one_same_description="x", max_files=3, **SEG)
    assert not any(work.iterdir())


def test_extract_archive_needs_an_empty_folder(tmp_path):
    archive = make_zip(tmp_path / "d.zip", {"a.wav": b"x"})
    dest = tmp_path / "dest"
    assert extract_archive(archive, dest).files == [Path("a.wav")]
    with pytest.raises(DatasetError, match="not empty"):
        extract_archive(archive, dest)


# ---------------------------------------------------------------------------------------------------------
# Missing captions, bad and ignored files


def test_missing_captions_listed_in_one_error(dirs):
    src, work = dirs
    wav = audio_bytes(tone(0.1))
    members = {f"n{i:02d}.wav": wav for i in range(25)}
    members.update({"ok.wav": wav, "ok.txt": b"captioned"})
    archive = make_zip(src / "nocap.zip", members)
    with pytest.raises(DatasetError) as err:
        prepare_dataset(archive, work, channels=1, **SEG)
    msg = str(err.value)
    assert msg.startswith("25 audio file(s) have no caption: n00.wav, n01.wav")
    assert "n19.wav" in msg and "n20.wav" not in msg and "and 5 more" in msg and "ok.wav" not in msg
    assert ".txt" in msg and "one_same_description" in msg


def test_unreadable_silent_short_files_skipped_and_reported(dirs):
    src, work = dirs
    nan = tone(1.0)
    nan[100] = np.nan
    fade = np.concatenate([tone(1.0), np.zeros((SR, 1), np.float32)])  # second segment silent
    archive = make_zip(
        src / "mixed.zip",
        {
            "good.wav": audio_bytes(tone(1.0)),
            "bad.wav": b"RIFF this is not audio",
            "quiet.wav": audio_bytes(np.zeros((SR, 1), np.float32)),
            "short.wav": audio_bytes(tone(0.2)),
            "nan.wav": audio_bytes(nan, subtype="FLOAT"),
            "fade.wav": audio_bytes(fade),
        },
    )
    segments, report = prepare(archive, work, channels=1, one_same_description="x", **SEG)
    assert [(s.source, s.start) for s in segments] == [("fade.wav", 0.0), ("good.wav", 0.0)]
    assert report.files_used == ["fade.wav", "good.wav"]
    reasons = {s.path: s.reason for s in report.files_skipped}
    assert reasons.keys() == {"bad.wav", "quiet.wav", "short.wav", "nan.wav"}
    assert reasons["bad.wav"].startswith("unreadable: Could not read audio file bad.wav")
    assert str(work) not in reasons["bad.wav"]  # named in the dataset, not by the temporary path
    assert reasons["quiet.wav"].startswith("silent")
    assert reasons["short.wav"].startswith("too short (0.20 s)")
    assert "NaN" in reasons["nan.wav"]
    assert report.dropped_silent_segments == 1
    assert "Skipped: bad.wav (unreadable" in report.summary()


def test_nothing_usable_refused(dirs):
    src, work = dirs
    archive = make_zip(src / "quiet.zip", {"quiet.wav": audio_bytes(np.zeros((SR, 1), np.float32))})
    with pytest.raises(DatasetError, match=r"No usable audio in quiet.zip.*quiet.wav \(silent"):
        prepare_dataset(archive, work, channels=1, one_same_description="x", **SEG)


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_empty_archive_refused(dirs, suffix):
    src, work = dirs
    path = src / f"empty{suffix}"
    make_tar(path, {}) if suffix == ".tar.gz" else make_zip(path, {})
    with pytest.raises(DatasetError, match=f"The archive empty{suffix} is empty"):
        prepare_dataset(path, work, channels=1, one_same_description="x", **SEG)


def test_archive_without_audio_refused(dirs):
    src, work = dirs
    archive = make_zip(src / "text.zip", {"a.txt": b"caption", "._b.wav": b"x", "c.pdf": b"x"})
    with pytest.raises(DatasetError, match="contains no audio files.*2 entries were ignored"):
        prepare_dataset(archive, work, channels=1, **SEG)


def test_macosx_dotfiles_and_other_files_ignored(dirs):
    src, work = dirs
    junk = b"not audio at all"
    archive = src / "mac.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("sub/", b"")
        zf.writestr("sub/a.wav", audio_bytes(tone(1.0)))
        zf.writestr("sub/a.txt", b"from a mac")
        zf.writestr("__MACOSX/sub/._a.wav", junk)
        zf.writestr("sub/._a.wav", junk)
        zf.writestr(".hidden/b.wav", junk)
        zf.writestr("cover.jpg", junk)
        zf.writestr("notes.pdf", junk)
    segments, report = prepare(archive, work, channels=1, **SEG)
    assert [s.source for s in segments] == ["sub/a.wav"] and segments[0].caption == "from a mac"
    assert report.files_skipped == [] and report.ignored_entries == 5


def test_find_audio_files_skips_hidden_and_links(tmp_path):
    for name in ["a.wav", "sub/B.FLAC", "sub/c.m4a", ".x/d.wav", "__MACOSX/e.wav", "f.txt", "._g.wav"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "link.wav").symlink_to(tmp_path / "a.wav")
    assert find_audio_files(tmp_path) == [Path("a.wav"), Path("sub/B.FLAC"), Path("sub/c.m4a")]


# ---------------------------------------------------------------------------------------------------------
# ffmpeg formats


def test_m4a_skipped_without_ffmpeg(dirs, monkeypatch):
    src, work = dirs
    monkeypatch.setenv("PATH", str(src))  # no ffmpeg on it
    archive = make_zip(src / "d.zip", {"a.wav": audio_bytes(tone(1.0)), "b.m4a": b"aac"})
    segments, report = prepare(archive, work, channels=1, one_same_description="x", **SEG)
    assert report.files_used == ["a.wav"]
    assert report.files_skipped[0].path == "b.m4a" and "need ffmpeg" in report.files_skipped[0].reason


def _fake_ffmpeg(tmp_path: Path, monkeypatch) -> Path:
    """A stand-in ffmpeg on PATH: records its arguments and "decodes" by copying (the .m4a holds WAV data).

    Returns the file its last arguments are written to.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ffmpeg-args.json"
    fake = bin_dir / "ffmpeg"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, shutil, sys\n"
        "args = sys.argv[1:]\n"
        f"open({str(log)!r}, 'w').write(json.dumps(args))\n"
        "shutil.copyfile(args[args.index('-i') + 1].removeprefix('file:'), args[-1].removeprefix('file:'))\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return log


def test_m4a_decoded_through_ffmpeg(dirs, monkeypatch, tmp_path):
    src, work = dirs
    log = _fake_ffmpeg(tmp_path, monkeypatch)
    archive = make_zip(src / "d.zip", {"-i song.m4a": audio_bytes(tone(1.0)), "-i song.txt": b"aac"})
    segments, report = prepare(archive, work, channels=1, **SEG)
    assert [(s.source, s.caption, s.valid) for s in segments] == [("-i song.m4a", "aac", SR)]
    args = json.loads(log.read_text())
    assert "-nostdin" in args
    # the input goes as one "file:" argument, so neither an option nor a protocol can come from the name
    assert args[args.index("-i") + 1].startswith("file:/") and args[args.index("-i") + 1].endswith(
        "/-i song.m4a"
    )
    assert not any(work.iterdir())


# ---------------------------------------------------------------------------------------------------------
# Arguments


def test_bad_arguments(dirs):
    src, work = dirs
    solo = src / "solo.wav"
    sf.write(str(solo), tone(1.0), SR)
    with pytest.raises(InvalidInputError, match="segment_seconds"):
        prepare_dataset(solo, work, channels=1, segment_seconds=31, one_same_description="x")
    with pytest.raises(InvalidInputError, match="min_last_seconds"):
        prepare_dataset(
            solo, work, channels=1, segment_seconds=2, min_last_seconds=3, one_same_description="x"
        )
    with pytest.raises(InvalidInputError, match="channels"):
        prepare_dataset(solo, work, channels=3, segment_seconds=1, one_same_description="x")
    with pytest.raises(DatasetError, match="is a folder"):
        prepare_dataset(src, work, channels=1, **SEG)
    (src / "data.bin").write_bytes(b"neither")
    with pytest.raises(DatasetError, match="neither a tar"):
        prepare_dataset(src / "data.bin", work, channels=1, **SEG)
    with pytest.raises(DatasetError, match="not found"):
        prepare_dataset(src / "missing.zip", work, channels=1, **SEG)


def test_tar_ending_with_a_zip_is_read_as_a_tar(dirs):
    # is_zipfile finds the inner zip's end record; the outer tar must win
    src, work = dirs
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("inner.wav", audio_bytes(tone(1.0)))
    archive = make_tar(
        src / "outer.tar", {"outer.wav": audio_bytes(tone(1.0)), "z.zip": inner.getvalue()}, "w"
    )
    segments, report = prepare(archive, work, channels=1, one_same_description="x", **SEG)
    assert report.files_used == ["outer.wav"] and report.ignored_entries == 1


def test_ffmpeg_wav_exists_while_its_segments_are_read(dirs, monkeypatch, tmp_path):
    src, work = dirs
    _fake_ffmpeg(tmp_path, monkeypatch)
    archive = make_zip(
        src / "d.zip",
        {"a.m4a": audio_bytes(tone(2.0)), "a.txt": b"a", "b.m4a": audio_bytes(tone(1.0)), "b.txt": b"b"},
    )

    def converted() -> list[Path]:
        return sorted(work.rglob("*.wav"))  # the archive holds no .wav: these are ffmpeg's outputs

    with prepare_dataset(archive, work, channels=1, **SEG) as data:
        assert converted() == []  # the check removed each conversion after reading it
        read = []
        for (item,) in data.batches(1):
            assert len(converted()) == 1, converted()  # the file being read, and only it
            read.append(item.source)
        assert read == ["a.m4a", "a.m4a", "b.m4a"]
        assert converted() == []
    assert not any(work.iterdir())


def test_segments_hold_no_audio_until_read(dirs):
    src, work = dirs
    solo = src / "solo.wav"
    sf.write(str(solo), tone(2.5), SR)
    with prepare_dataset(solo, work, channels=2, one_same_description="x", **SEG) as data:
        assert data.segments == [
            Segment("solo.wav", 0.0, SR, "x", offset=0),
            Segment("solo.wav", 1.0, SR, "x", offset=SR),
            Segment("solo.wav", 2.0, SR // 2, "x", offset=2 * SR),
        ]
        assert len(data) == 3 and data.segment_samples == SR and data.channels == 2
        (batch,) = data.batches(8)
        assert [tuple(item.wav.shape) for item in batch] == [(2, SR)] * 3
    with pytest.raises(RuntimeError, match="after close"):
        next(data.batches(8))


def test_a_file_changed_after_the_check_is_reported(dirs):
    src, work = dirs
    solo = src / "solo.wav"
    sf.write(str(solo), tone(2.5), SR)
    with prepare_dataset(solo, work, channels=1, one_same_description="x", **SEG) as data:
        sf.write(str(solo), tone(1.2), SR)  # shorter now: the second and third segments are gone
        with pytest.raises(DatasetError, match=r"solo.wav .*changed"):
            list(data.batches(8))
        solo.write_bytes(b"not audio any more")
        with pytest.raises(DatasetError, match=r"solo.wav could not be read again.*Run the training again"):
            list(data.batches(8))
