"""Bad and hostile inputs through the real Cog server (`python -m cog.server.http`), on tiny checkpoints.

Every case ends `failed` with a message that names the input and says what to change, no model is
reached for a prediction that is refused, and afterwards the server still answers a valid request.
Also: 100 predictions in a row leave at most the last output on disk and do not grow the worker's memory.
"""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.helpers import write_tone
from tests.test_dataset import make_zip
from tests.test_server import (  # noqa: F401 (fixtures)
    SR,
    Server,
    _file_server,
    data_url,
    decode,
    finetuned_files,
    run_server,
    style_audio,
    weights_dir,
)

# ---- files -----------------------------------------------------------------------------------------


def _closed_url(path: str) -> str:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


def _float_wav(path: Path, bad: float) -> Path:
    wav = np.full((SR, 1), 0.1, dtype=np.float32)
    wav[SR // 2] = bad
    sf.write(path, wav, SR, subtype="FLOAT")
    return path


def _weights_with_nan(source: Path, dest: Path) -> Path:
    """A copy of fine-tuned weights whose tensors are NaN (as a diverged training would write them)."""
    with safe_open(str(source), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) * float("nan") for k in f.keys()}
    save_file(tensors, str(dest), metadata=meta)
    return dest


@pytest.fixture(scope="module")
def files(tmp_path_factory, finetuned_files) -> dict[str, Path]:  # noqa: F811
    folder = tmp_path_factory.mktemp("bad-files")
    empty = folder / "empty.wav"
    sf.write(empty, np.zeros((0, 1), dtype=np.float32), SR)
    (folder / "garbage.wav").write_bytes(b"this is not audio" * 100)
    (folder / "text.wav").write_text("RIFF? no, a text file named .wav\n")
    (folder / "a-folder.wav").mkdir()
    (folder / "garbage.safetensors").write_bytes(b"\x00" * 64)
    save_file({"w": torch.zeros(2)}, str(folder / "empty-meta.safetensors"))  # no metadata of ours
    # 601 s at 1 kHz: long, but small on disk
    sf.write(folder / "long.wav", np.zeros((601 * 1000, 1), dtype=np.int16), 1000, subtype="PCM_16")
    return {
        "tone.wav": write_tone(folder / "tone.wav", seconds=2.0),
        "style.wav": style_audio(folder / "style.wav", seconds=5.0),
        "empty.wav": empty,
        "garbage.wav": folder / "garbage.wav",
        "text.wav": folder / "text.wav",
        "nan.wav": _float_wav(folder / "nan.wav", float("nan")),
        "inf.wav": _float_wav(folder / "inf.wav", float("inf")),
        "a-folder.wav": folder / "a-folder.wav",
        "long.wav": folder / "long.wav",
        "lora.safetensors": finetuned_files["lora"],
        "nan.safetensors": _weights_with_nan(finetuned_files["lora"], folder / "nan.safetensors"),
        "garbage.safetensors": folder / "garbage.safetensors",
        "stranger.safetensors": folder / "empty-meta.safetensors",
    }


@pytest.fixture(scope="module")
def served(files):
    """The files above served over http on loopback: `{url}/tone.wav`; other names answer 404."""
    with _file_server(files["tone.wav"].parent) as url:
        yield url


def _resolve(value, files: dict[str, Path], url: str):
    """'@name' -> the file's path, '@data:name' -> its data URL, '@url:name' -> its URL on loopback."""
    if not isinstance(value, str) or not value.startswith("@"):
        return value
    if value.startswith("@data:"):
        return data_url(files[value[len("@data:") :]])
    if value.startswith("@url:"):
        return f"{url}/{value[len('@url:') :]}"
    if value == "@closed":
        return _closed_url("x.wav")
    return str(files.get(value[1:], Path("/nowhere") / value[1:]))


def _check_failed(answer: dict, inputs: dict, words: tuple[str, ...]) -> None:
    assert answer.get("status") == "failed", (inputs, answer)
    error = answer.get("error") or ""
    for word in words:
        assert word in error, (inputs, word, error)
    assert "Traceback" not in error, error


# ---- predictions -----------------------------------------------------------------------------------

MELODY = {"model_version": "melody"}
CONTINUE = {"model_version": "small", "continuation": True, "duration": 4}
STYLE = {"model_version": "style", "input_audio": "@style.wav", "prompt": "jazz"}  # a 5 s style reference

# (inputs, words of the error: the input's name first, then what to change)
PREDICTION_CASES: list[tuple[dict, tuple[str, ...]]] = [
    # model_version
    ({"model_version": "tiny"}, ("model_version must be one of small, medium",)),
    ({"model_version": 5}, ("model_version must be one of",)),
    ({"model_version": ""}, ("model_version must be one of",)),
    ({"model_version": ["small"]}, ("model_version must be one of",)),
    ({"model_version": None}, ("model_version must be one of",)),
    # prompt
    ({"prompt": 5}, ("prompt must be text",)),
    ({"prompt": ["a", "b"]}, ("prompt must be text",)),
    ({"prompt": True}, ("prompt must be text",)),
    ({"prompt": "lo-fi " * 2000}, ("prompt is 11,999 characters long", "at most 10,000", "shorten it")),
    # input_audio: broken and hostile files, paths and URLs
    ({**MELODY, "input_audio": "@garbage.wav"}, ("input_audio cannot be used", "Could not read audio")),
    ({**MELODY, "input_audio": "@empty.wav"}, ("input_audio cannot be used", "contains no samples")),
    ({**MELODY, "input_audio": "@text.wav"}, ("input_audio cannot be used", "Supported formats")),
    ({**MELODY, "input_audio": "@nan.wav"}, ("input_audio holds NaN or infinite samples", "Export it again")),
    ({**CONTINUE, "input_audio": "@inf.wav"}, ("input_audio holds NaN or infinite samples",)),
    ({**MELODY, "input_audio": "@missing.wav"}, ("input_audio cannot be used", "not found")),
    ({**MELODY, "input_audio": "@long.wav"}, ("input_audio is 601 s long", "at most 600 s are accepted")),
    ({**MELODY, "input_audio": "@a-folder.wav"}, ("input_audio cannot be used", "not a file")),
    ({**MELODY, "input_audio": "file:///nowhere/x.wav"}, ("input_audio cannot be used", "not found")),
    ({**MELODY, "input_audio": "ftp://example.com/x.wav"}, ("input_audio: unsupported URL scheme 'ftp'",)),
    ({**MELODY, "input_audio": "gopher://x/y.wav"}, ("input_audio: unsupported URL scheme 'gopher'",)),
    (
        {**MELODY, "input_audio": "data:audio/wav;base64,!!!notbase64"},
        ("input_audio: the data URL could not be decoded", "base64"),
    ),
    ({**MELODY, "input_audio": "@closed"}, ("input_audio: could not download", "reachable")),
    ({**MELODY, "input_audio": "@url:missing.wav"}, ("input_audio: could not download", "404")),
    ({**MELODY, "input_audio": "@data:garbage.wav"}, ("input_audio cannot be used",)),
    ({**MELODY, "input_audio": 12345}, ("input_audio must be a file",)),
    ({**MELODY, "input_audio": {"url": "x"}}, ("input_audio must be a file",)),
    # duration
    ({"duration": 0}, ("duration must be between 1 and 300 seconds",)),
    ({"duration": 301}, ("duration must be between 1 and 300 seconds",)),
    ({"duration": -1}, ("duration must be between 1 and 300 seconds",)),
    ({"duration": 1e9}, ("duration must be between 1 and 300 seconds",)),
    ({"duration": 2.5}, ("duration must be a whole number",)),
    ({"duration": "8"}, ("duration must be a whole number",)),
    ({"duration": True}, ("duration must be a whole number",)),
    ({"duration": None}, ("duration must be a whole number",)),
    ({"duration": "NaN"}, ("duration must be a whole number",)),
    # continuation and its window
    ({"continuation": "yes"}, ("continuation must be true or false",)),
    ({"continuation": 1}, ("continuation must be true or false",)),
    ({"multi_band_diffusion": "yes"}, ("multi_band_diffusion must be true or false",)),
    ({"multi_band_diffusion": None}, ("multi_band_diffusion must be true or false",)),
    ({"continuation": None}, ("continuation must be true or false",)),
    ({**CONTINUE, "input_audio": "@tone.wav", "continuation_start": -1}, ("continuation_start must be 0",)),
    ({**CONTINUE, "continuation_start": 1.5}, ("continuation_start must be a whole number",)),
    ({**CONTINUE, "continuation_start": "0"}, ("continuation_start must be a whole number",)),
    (
        {**CONTINUE, "input_audio": "@tone.wav", "continuation_start": 5, "duration": 10},
        ("continuation_start / continuation_end do not fit input_audio", "lasts 2.000 s"),
    ),
    ({**CONTINUE, "continuation_end": -3}, ("continuation_end must be 0 seconds or more",)),
    ({**CONTINUE, "continuation_end": "2"}, ("continuation_end must be a whole number",)),
    (
        {**CONTINUE, "input_audio": "@tone.wav", "continuation_start": 1, "continuation_end": 1},
        ("continuation_end (1 s) must come after continuation_start (1 s)",),
    ),
    ({"continuation": True}, ("continuation is on, but there is no input_audio to continue",)),
    (
        {"model_version": "small", "input_audio": "@tone.wav"},
        ("input_audio is a melody reference", "small takes no melody", "turn continuation on"),
    ),
    (
        {**CONTINUE, "input_audio": "@tone.wav", "duration": 2},
        ("not shorter than duration (2 s)", "ask for a longer duration"),
    ),
    # the style model's inputs: their types and ranges, the model and the input_audio they need
    ({**STYLE, "style_excerpt_length": 5}, ("style_excerpt_length must be between 1.5 and 4.5 s",)),
    ({**STYLE, "style_excerpt_length": 1}, ("style_excerpt_length must be between 1.5 and 4.5 s",)),
    ({**STYLE, "style_excerpt_length": "3"}, ("style_excerpt_length must be a finite number of seconds",)),
    ({**STYLE, "style_excerpt_length": None}, ("style_excerpt_length must be a finite number",)),
    ({**STYLE, "style_excerpt_length": True}, ("style_excerpt_length must be a finite number",)),
    ({**STYLE, "style_eval_q": 0}, ("style_eval_q must be a whole number from 1 to 6",)),
    ({**STYLE, "style_eval_q": 7}, ("style_eval_q must be a whole number from 1 to 6",)),
    ({**STYLE, "style_eval_q": 2.5}, ("style_eval_q must be a whole number",)),
    ({**STYLE, "style_eval_q": "3"}, ("style_eval_q must be a whole number",)),
    (
        {**STYLE, "classifier_free_guidance_beta": -1},
        ("classifier_free_guidance_beta must be between 0 and 20",),
    ),
    (
        {**STYLE, "classifier_free_guidance_beta": 21},
        ("classifier_free_guidance_beta must be between 0 and 20",),
    ),
    (
        {**STYLE, "classifier_free_guidance_beta": "5"},
        ("classifier_free_guidance_beta must be a finite number",),
    ),
    (
        {**STYLE, "prompt": None, "classifier_free_guidance_beta": 5},
        ("classifier_free_guidance_beta weighs the prompt against the style excerpt", "there is no prompt"),
    ),
    (
        {"model_version": "style", "prompt": "jazz", "classifier_free_guidance_beta": 5},
        (
            "classifier_free_guidance_beta only applies to a style excerpt, and there is none",
            "give input_audio",
        ),
    ),
    (
        {**STYLE, "continuation": True, "duration": 8, "style_eval_q": 5},
        ("style_eval_q only applies to a style excerpt", "continuation off", "leave it at its default"),
    ),
    (
        {"model_version": "small", "style_excerpt_length": 2},
        ("style_excerpt_length only applies to the style model, not small", "model_version=style"),
    ),
    (
        {"model_version": "stereo-melody-large", "style_eval_q": 1, "classifier_free_guidance_beta": 3},
        ("style_eval_q and classifier_free_guidance_beta only apply to the style model", "their defaults"),
    ),
    (
        {**STYLE, "input_audio": "@tone.wav"},
        ("input_audio (the style excerpt's source) lasts 2.00 s", "shorter than style_excerpt_length (3 s)"),
    ),
    (
        {**STYLE, "continuation_start": 3, "style_excerpt_length": 2.5},
        ("lasts 2.00 s between continuation_start and continuation_end", "style_excerpt_length (2.5 s)"),
    ),
    ({**STYLE, "input_audio": "@garbage.wav"}, ("input_audio cannot be used", "Could not read audio")),
    ({**STYLE, "input_audio": "@nan.wav"}, ("input_audio holds NaN or infinite samples",)),
    # output settings
    ({"normalization_strategy": "loud"}, ("normalization_strategy must be one of loudness, clip",)),
    ({"normalization_strategy": None}, ("normalization_strategy must be one of",)),
    ({"normalization_strategy": 3}, ("normalization_strategy must be one of",)),
    ({"output_format": "ogg"}, ("output_format must be one of wav, mp3, flac",)),
    ({"output_format": "WAV"}, ("output_format must be one of wav, mp3, flac",)),
    # sampling
    ({"top_k": -1}, ("top_k must be 0 (off) or a positive number",)),
    ({"top_k": 2.5}, ("top_k must be a whole number",)),
    ({"top_k": "250"}, ("top_k must be a whole number",)),
    ({"top_k": True}, ("top_k must be a whole number",)),
    ({"top_p": 1.5}, ("top_p must be between 0 and 1",)),
    ({"top_p": -0.1}, ("top_p must be between 0 and 1",)),
    ({"top_p": "0.9"}, ("top_p must be a finite number",)),
    ({"top_p": "NaN"}, ("top_p must be a finite number",)),
    ({"temperature": -0.5}, ("temperature must be >= 0",)),
    ({"temperature": "hot"}, ("temperature must be a finite number",)),
    ({"temperature": "Infinity"}, ("temperature must be a finite number",)),
    ({"classifier_free_guidance": -1}, ("classifier_free_guidance must be 0 or more",)),
    ({"classifier_free_guidance": "3"}, ("classifier_free_guidance must be a finite number",)),
    # seed
    ({"seed": -2}, ("seed must be between 0 and 9223372036854775807, or -1 for a random one",)),
    ({"seed": 2**63}, ("seed must be between 0 and",)),
    ({"seed": "x"}, ("seed must be a whole number",)),
    ({"seed": 1.5}, ("seed must be a whole number",)),
    ({"seed": True}, ("seed must be a whole number",)),
    # replicate_weights
    ({"replicate_weights": "/nowhere/w.safetensors"}, ("replicate_weights: weights file", "not found")),
    ({"replicate_weights": "ftp://x/w.safetensors"}, ("replicate_weights:", "unsupported URL scheme 'ftp'")),
    ({"replicate_weights": "@closed"}, ("replicate_weights: could not download the weights", "reachable")),
    ({"replicate_weights": "@garbage.safetensors"}, ("replicate_weights:", "not a safetensors file")),
    ({"replicate_weights": "@stranger.safetensors"}, ("replicate_weights:", "names no known base variant")),
    (
        {"model_version": "small", "replicate_weights": "@nan.safetensors"},
        ("replicate_weights:", "holds NaN or infinite values"),
    ),
    (
        {"model_version": "stereo-small", "replicate_weights": "@lora.safetensors"},
        ("replicate_weights:", "fine-tuned from `small`, not `stereo-small`", "use model_version=small"),
    ),
    ({"replicate_weights": 5}, ("replicate_weights must be text",)),
    # names nobody declared
    ({"bogus": 1}, ("unknown input 'bogus'", "this model takes model_version, prompt")),
    ({"promt": "typo", "durration": 3}, ("unknown inputs 'durration', 'promt'", "Check the spelling")),
]


@pytest.fixture(scope="module")
def server(weights_dir, tmp_path_factory):  # noqa: F811
    with run_server(tmp_path_factory.mktemp("server"), weights_dir) as running:
        yield running


def test_prediction_cases_are_many():
    assert len(PREDICTION_CASES) >= 60


def test_bad_predictions_fail_alone_with_a_message_naming_the_input(server, files, served):
    for inputs, words in PREDICTION_CASES:
        request = {k: _resolve(v, files, served) for k, v in inputs.items()}
        answer = server.predict(**request)
        _check_failed(answer, inputs, words)
        # printed just before a model generates: a refused request reached none (the fine-tuned
        # weights whose tensors are NaN are refused while loading, before generating, too)
        assert "model_version:" not in answer.get("logs", ""), inputs

    assert server.settled_status() == "READY"
    good = server.predict(model_version="small", prompt="jazz", duration=1, seed=1)
    assert good["status"] == "succeeded", good.get("error")


def test_non_finite_json_numbers_are_refused(server):
    # Python's json writes NaN / Infinity tokens, which some clients send; they must not reach the model
    for name in (
        "temperature",
        "top_p",
        "classifier_free_guidance",
        "style_excerpt_length",
        "classifier_free_guidance_beta",
    ):
        for token in ("NaN", "Infinity", "-Infinity"):
            body = f'{{"input": {{"model_version": "small", "duration": 1, "{name}": {token}}}}}'.encode()
            request = urllib.request.Request(
                server.url + "/predictions", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    answer = json.loads(response.read())
            except urllib.error.HTTPError as err:  # refused by the server's JSON parser: also fine
                answer = {"status": "failed", "error": err.read().decode(), "http": err.code}
            assert answer["status"] == "failed", (name, token, answer)
            if "http" not in answer:
                assert f"{name} must be a finite number" in answer["error"], answer["error"]
            time.sleep(0.05)
    assert server.predict(model_version="small", duration=1, seed=2)["status"] == "succeeded"


def test_file_urls_and_long_prompts_that_work(server, files):
    # a file:// URL names a file on the server's disk, as a path does
    by_url = server.predict(
        model_version="melody", input_audio=f"file://{files['tone.wav']}", duration=1, seed=3
    )
    by_path = server.predict(model_version="melody", input_audio=str(files["tone.wav"]), duration=1, seed=3)
    assert by_url["status"] == "succeeded", by_url.get("error")
    assert decode(by_url["output"])[1].tolist() == decode(by_path["output"])[1].tolist()

    # past T5's 512 tokens the prompt is cut, with a warning in the logs, and generation goes on
    long_prompt = server.predict(model_version="small", prompt="warm piano chords " * 300, duration=1, seed=4)
    assert long_prompt["status"] == "succeeded", long_prompt.get("error")
    assert "the text encoder reads the first 512" in long_prompt["logs"]


def test_a_hundred_predictions_leave_no_files_and_no_memory_behind(weights_dir, files, tmp_path):  # noqa: F811
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # two predictions at a time: the outputs of the last four are kept (twice as many as run at once)
    with run_server(tmp_path, weights_dir, TMPDIR=str(tmp), COG_MAX_CONCURRENCY="2") as server:
        worker = _worker(server)

        def predict(i: int) -> None:
            inputs = dict(model_version="small", prompt=f"song {i}", duration=1, seed=i)
            if i % 10 == 0:  # some with a melody sent inline: Cog writes it to a temporary file
                inputs.update(model_version="melody", input_audio=data_url(files["tone.wav"]))
            if i % 7 == 0:
                inputs["output_format"] = "mp3"
            answer = server.predict(**inputs)
            assert answer["status"] == "succeeded", answer.get("error")

        def on_disk() -> set[str]:
            return {p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()}

        for i in range(10):  # both models loaded, allocator warmed up
            predict(i)
        before, files_before = worker.memory_info().rss, on_disk()
        for i in range(10, 100):
            predict(i)
        after, files_after = worker.memory_info().rss, on_disk()

    # what the process made once (torch writes a module into a temporary folder when imported) stays;
    # of the outputs, only the last four predictions', which a server may still be sending, are kept
    outputs = sorted(name for name in files_after if name.startswith("musicgen-predictions-"))
    assert files_after - set(outputs) == files_before - {n for n in files_before if n.startswith("musicgen-")}
    assert len(outputs) == 4, outputs
    print(f"worker RSS after 10 predictions {before / 2**20:.0f} MB, after 100 {after / 2**20:.0f} MB")
    assert after < before * 1.05, (before / 2**20, after / 2**20)


def _worker(server: Server) -> psutil.Process:
    """The Python process that runs predictions: the server's child that imported predict.py."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = psutil.Process(server.process.pid).children(recursive=True)
        python = [c for c in children if "python" in c.name().lower()]
        if python:
            return max(python, key=lambda c: c.memory_info().rss)
        time.sleep(0.2)
    raise AssertionError("no worker process found")


# ---- trainings -------------------------------------------------------------------------------------


def _wav_bytes(seconds: float = 2.0, amp: float = 0.5, bad: float | None = None) -> bytes:
    t = np.arange(int(seconds * SR)) / SR
    wav = (amp * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    if bad is not None:
        wav[10] = bad
    buf = io.BytesIO()
    sf.write(buf, wav, SR, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return path


def _special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("datasets")
    good = _wav_bytes()
    (folder / "empty.zip").write_bytes(b"")
    (folder / "garbage.zip").write_bytes(b"PK? not really" * 50)
    (folder / "a-folder.zip").mkdir()
    whole = _tar(folder / "whole.tar.gz", [("a.wav", good), ("a.txt", b"tone")]).read_bytes()
    (folder / "truncated.tar.gz").write_bytes(whole[: len(whole) // 2])
    return {
        "empty.zip": folder / "empty.zip",
        "garbage.zip": folder / "garbage.zip",
        "a-folder.zip": folder / "a-folder.zip",
        "truncated.tar.gz": folder / "truncated.tar.gz",
        "dotdot.zip": make_zip(folder / "dotdot.zip", {"../evil.wav": good, "../evil.txt": b"x"}),
        "absolute.zip": make_zip(folder / "absolute.zip", {"/tmp/evil.wav": good}),
        "symlink.tar.gz": _tar(
            folder / "symlink.tar.gz", [_special("evil.wav", tarfile.SYMTYPE, "/etc/passwd")]
        ),
        "hardlink.tar.gz": _tar(
            folder / "hardlink.tar.gz", [("a.wav", good), _special("b.wav", tarfile.LNKTYPE, "a.wav")]
        ),
        "device.tar.gz": _tar(folder / "device.tar.gz", [_special("evil.wav", tarfile.CHRTYPE)]),
        "nothing.tar.gz": _tar(folder / "nothing.tar.gz", []),
        "no-audio.zip": make_zip(folder / "no-audio.zip", {"notes.txt": b"hi", "cover.jpg": b"\xff\xd8"}),
        "no-captions.zip": make_zip(folder / "no-captions.zip", {"a.wav": good, "b.wav": good}),
        "silent.zip": make_zip(folder / "silent.zip", {"a.wav": _wav_bytes(amp=0.0), "a.txt": b"silence"}),
        "nan.zip": make_zip(folder / "nan.zip", {"a.wav": _wav_bytes(bad=float("nan")), "a.txt": b"broken"}),
        "good.zip": make_zip(folder / "good.zip", {"a.wav": good, "a.txt": b"a tone", "b.wav": good}),
    }


TRAIN = {"model_version": "small", "dataset_path": "@good.zip", "one_same_description": "tones"}

TRAINING_CASES: list[tuple[dict, tuple[str, ...]]] = [
    # the dataset: missing, not an archive, hostile archives, nothing usable, URLs
    ({"model_version": "small"}, ("dataset_path: give an archive",)),
    ({**TRAIN, "dataset_path": "@missing.zip"}, ("dataset_path: give an archive", "is not a file")),
    ({**TRAIN, "dataset_path": "@a-folder.zip"}, ("dataset_path: give an archive", "is not a file")),
    ({**TRAIN, "dataset_path": "@empty.zip"}, ("dataset_path:", "is an empty file")),
    ({**TRAIN, "dataset_path": "@garbage.zip"}, ("dataset_path:", "neither a tar")),
    ({**TRAIN, "dataset_path": "@truncated.tar.gz"}, ("dataset_path:", "pack the archive again")),
    ({**TRAIN, "dataset_path": "@dotdot.zip"}, ("dataset_path:", "contains '..'", "refusing the archive")),
    ({**TRAIN, "dataset_path": "@absolute.zip"}, ("dataset_path:", "has an absolute path")),
    ({**TRAIN, "dataset_path": "@symlink.tar.gz"}, ("dataset_path:", "is a symbolic link")),
    ({**TRAIN, "dataset_path": "@hardlink.tar.gz"}, ("dataset_path:", "is a hard link")),
    ({**TRAIN, "dataset_path": "@device.tar.gz"}, ("dataset_path:", "is a device file")),
    ({**TRAIN, "dataset_path": "@nothing.tar.gz"}, ("dataset_path:", "is empty")),
    ({**TRAIN, "dataset_path": "@no-audio.zip"}, ("dataset_path:", "contains no audio files")),
    (
        {"model_version": "small", "dataset_path": "@no-captions.zip"},
        ("dataset_path:", "have no caption", "one_same_description"),
    ),
    ({**TRAIN, "dataset_path": "@silent.zip"}, ("dataset_path:", "No usable audio", "silent")),
    ({**TRAIN, "dataset_path": "@nan.zip"}, ("dataset_path:", "No usable audio", "NaN")),
    ({**TRAIN, "dataset_path": "ftp://x/data.zip"}, ("dataset_path: unsupported URL scheme 'ftp'",)),
    ({**TRAIN, "dataset_path": "@closed"}, ("dataset_path: could not download",)),
    ({**TRAIN, "dataset_path": "data:application/zip;base64,!!!notbase64"}, ("dataset_path: the data URL",)),
    # the settings
    ({**TRAIN, "model_version": "huge"}, ("model_version must be one of",)),
    ({**TRAIN, "method": "qlora"}, ("method must be one of lora, full",)),
    ({**TRAIN, "lora_rank": 2.5}, ("lora_rank must be a whole number",)),
    ({**TRAIN, "lora_rank": 0}, ("lora_rank must be between 1 and 256",)),
    ({**TRAIN, "lora_rank": "8"}, ("lora_rank must be a whole number",)),
    ({**TRAIN, "epochs": 2.5}, ("epochs must be a whole number",)),
    ({**TRAIN, "epochs": "3"}, ("epochs must be a whole number",)),
    ({**TRAIN, "epochs": True}, ("epochs must be a whole number",)),
    ({**TRAIN, "epochs": 0}, ("epochs must be between 1 and 1000",)),
    ({**TRAIN, "batch_size": 0}, ("batch_size must be between 1 and 512",)),
    ({**TRAIN, "gradient_accumulation": 0.5}, ("gradient_accumulation must be a whole number",)),
    ({**TRAIN, "learning_rate": "NaN"}, ("learning_rate must be a finite number",)),
    ({**TRAIN, "learning_rate": 2.0}, ("learning_rate must be between 1e-07 and 0.1",)),
    ({**TRAIN, "warmup_steps": -1}, ("warmup_steps must be 0 or more",)),
    ({**TRAIN, "lr_scheduler": "linear"}, ("lr_scheduler must be one of cosine, constant",)),
    ({**TRAIN, "condition_dropout": 0.95}, ("condition_dropout must be between 0 and 0.9",)),
    ({**TRAIN, "condition_dropout": "0.3"}, ("condition_dropout must be a finite number",)),
    ({**TRAIN, "segment_seconds": "2"}, ("segment_seconds must be a finite number of seconds",)),
    ({**TRAIN, "segment_seconds": 45}, ("segment_seconds must be between 1 and 30 seconds",)),
    ({**TRAIN, "validation_split": 0.5}, ("validation_split must be between 0 and 0.45",)),
    ({**TRAIN, "seed": "x"}, ("seed must be a whole number",)),
    ({**TRAIN, "seed": -5}, ("seed must be between 0 and",)),
    ({**TRAIN, "one_same_description": 123}, ("one_same_description must be text",)),
    ({**TRAIN, "one_same_description": "x" * 10_001}, ("one_same_description is 10,001 characters",)),
    ({**TRAIN, "epoch": 3}, ("unknown input 'epoch'", "this model takes dataset_path")),
]


def test_training_cases_are_many():
    assert len(TRAINING_CASES) >= 30


def test_bad_trainings_fail_alone_with_a_message_naming_the_input(weights_dir, datasets, tmp_path):  # noqa: F811
    with run_server(tmp_path, weights_dir, mode="train") as server:
        for inputs, words in TRAINING_CASES:
            request = {k: _resolve(v, datasets, "") for k, v in inputs.items()}
            answer = server.submit({"input": request}, path="/trainings")
            _check_failed(answer, inputs, words)
        assert server.settled_status() == "READY"
        good = {**TRAIN, "dataset_path": str(datasets["good.zip"]), "epochs": 1, "segment_seconds": 1}
        done = server.submit({"input": {**good, "batch_size": 2, "seed": 3}}, path="/trainings")
    assert done["status"] == "succeeded", done.get("error") or done.get("logs")
    assert "seed: 3" in done["logs"]
