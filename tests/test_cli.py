"""`python -m musicgen generate`: same codes as transformers, files written, mistakes caught before loading."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen.cli import main
from tests.helpers import reference_generate, write_tone


def test_generate_writes_one_file_per_prompt_and_transformers_codes(tiny, tmp_path, capsys):
    folder, model, tokenizer = tiny.get("stereo")
    prompts = ["80s synth pop with punchy bass", "ambient pads"]
    ref_codes, _ = reference_generate(model, tokenizer, prompts, frames=25)
    args = ["generate", "--model", str(folder), "--duration", "0.5", "--top-k", "1", "--cfg", "3", "--quiet"]
    for p in prompts:
        args += ["--prompt", p]
    out, codes_out = tmp_path / "clip.flac", tmp_path / "codes.npy"
    assert main([*args, "--out", str(out), "--codes-out", str(codes_out), "--seed", "0"]) == 0
    codes = np.load(codes_out)
    assert codes.dtype == np.int64 and codes.shape == (2, 8, 25)
    assert np.array_equal(codes, ref_codes.numpy())
    for i in (1, 2):
        data, rate = sf.read(tmp_path / f"clip-{i}.flac")
        assert rate == 32000 and data.shape == (int(0.5 * 32000), 2)
    assert "seed: 0" in capsys.readouterr().err


def test_melody_and_continuation_files(tiny, tmp_path):
    folder, *_ = tiny.get("melody")
    melody = write_tone(tmp_path / "melody.ogg", seconds=2, rate=44100, channels=2)
    start = write_tone(tmp_path / "start.mp3", seconds=0.4, rate=22050)
    out = tmp_path / "out.wav"
    args = [
        "generate",
        "--model",
        str(folder),
        "--prompt",
        "folk",
        "--duration",
        "1",
        "--quiet",
        "--seed",
        "3",
    ]
    assert main([*args, "--melody", str(melody), "--continue", str(start), "--out", str(out)]) == 0
    data, rate = sf.read(out)
    assert rate == 32000 and len(data) == 32000


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An empty weights folder and no download: any attempt to load a model would fail differently."""
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.chdir(tmp_path)  # the default --out (out.wav) is checked for writing here
    return ["generate", "--model", "small", "--no-download", "--quiet"]


def _error(capsys) -> str:
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--duration", "0"], "duration must be more than 0 and at most 300 seconds"),
        (["--duration", "-2"], "duration must be more than 0 and at most 300 seconds"),
        (["--duration", "1e9"], "duration must be more than 0 and at most 300 seconds"),
        (["--duration", "nan"], "duration must be a finite number"),
        (["--seed", "-5"], "--seed must be between 0 and 9223372036854775807, or -1"),
        (["--seed", str(2**63)], "--seed must be between 0"),
        (["--prompt", "x" * 10_001], "at most 10,000 are accepted"),
        (["--top-p", "1.5"], "top_p must be between 0 and 1"),
        (["--temperature", "-1"], "temperature"),
        (["--out", "x.aac"], "unsupported format"),
        (["--codes-out", "codes.txt"], ".npy"),
    ],
)
def test_bad_parameters_fail_before_loading(no_weights, capsys, extra, message):
    assert main([*no_weights, *extra]) == 2
    assert message in _error(capsys)


def test_unwritable_outputs_fail_before_loading(no_weights, tmp_path, capsys):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    (tmp_path / "folder.wav").mkdir()
    cases = [
        (["--out", str(a_file / "out.wav")], f"--out {a_file / 'out.wav'}: cannot write there"),
        (["--codes-out", str(a_file / "codes.npy")], "--codes-out"),
        (["--out", str(tmp_path / "folder.wav")], "is a folder"),
        # a batch writes out-1.wav, out-2.wav: each is checked
        (["--prompt", "a", "--prompt", "b", "--out", str(a_file / "o.wav")], "o-1.wav: cannot write there"),
    ]
    for extra, message in cases:
        assert main([*no_weights, *extra]) == 2
        err = _error(capsys)
        assert message in err and "download_weights" not in err, err  # refused before the missing model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.wav", "not-a-folder"]  # nothing left


def test_writable_outputs_are_checked_without_a_trace(no_weights, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "clip.wav"
    assert main([*no_weights, "--out", str(out)]) == 2
    assert "download_weights.py" in _error(capsys)  # it got as far as the missing model
    assert not out.exists()


def test_non_finite_audio_is_refused(no_weights, tmp_path, capsys):
    broken = tmp_path / "broken.wav"
    wav = np.full((32000, 1), 0.1, dtype=np.float32)
    wav[100] = np.nan
    sf.write(broken, wav, 32000, subtype="FLOAT")
    assert main([*no_weights, "--continue", str(broken), "--duration", "3"]) == 2
    assert "--continue holds NaN or infinite samples" in _error(capsys)


def test_melody_on_a_text_model(no_weights, tmp_path, capsys):
    melody = write_tone(tmp_path / "m.wav")
    assert main([*no_weights, "--melody", str(melody)]) == 2
    assert "takes no melody" in _error(capsys)


def test_audio_file_problems_name_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(tmp_path / "weights"))
    base = ["generate", "--model", "melody", "--no-download", "--quiet", "--melody"]
    missing = tmp_path / "missing.wav"
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), dtype=np.float32), 32000)
    zero_bytes = tmp_path / "zero.flac"
    zero_bytes.write_bytes(b"")
    for path in (missing, garbage, empty, zero_bytes):
        assert main([*base, str(path)]) == 2
        assert str(path) in _error(capsys)


def test_continuation_longer_than_duration(no_weights, tmp_path, capsys):
    start = write_tone(tmp_path / "start.wav", seconds=3)
    assert main([*no_weights, "--continue", str(start), "--duration", "2"]) == 2
    assert "not shorter than" in _error(capsys)


def test_missing_weights_say_how_to_fetch_them(no_weights, capsys):
    assert main(no_weights) == 2
    err = _error(capsys)
    assert "small" in err and "download_weights.py" in err


def test_generated_audio_is_not_silent(tiny, tmp_path):
    folder, *_ = tiny.get("mono")
    out = tmp_path / "o.wav"
    assert main(["generate", "--model", str(folder), "--duration", "0.5", "--quiet", "--out", str(out)]) == 0
    data, _ = sf.read(out)
    assert np.abs(data).max() > 0.01
    assert torch.isfinite(torch.from_numpy(data)).all()


@pytest.mark.parametrize("device, message", [("gpu0", "not a device"), ("cuda:7", "CUDA device")])
def test_unusable_device_is_a_message(tiny, capsys, device, message):
    folder, *_ = tiny.get("mono")
    assert main(["generate", "--model", str(folder), "--device", device, "--quiet", "--duration", "0.2"]) == 2
    assert message in capsys.readouterr().err


# ---- MusicGen-Style ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def style_model(tiny_style, tmp_path_factory):
    """The tiny MusicGen-Style checkpoint, and style references: (folder, 6 s stereo 44.1 kHz, another one
    of 4 s mono 32 kHz, 2 s: shorter than an excerpt)."""
    from tests.test_server import style_audio, tiny_style_folder

    folder = tmp_path_factory.mktemp("style-refs")
    return (
        tiny_style_folder(tmp_path_factory, tiny_style),
        style_audio(folder / "style.flac"),
        style_audio(folder / "other.wav", seconds=4.0, rate=32000),
        write_tone(folder / "short.wav", seconds=2.0),
    )


def test_style_alone_text_alone_and_both(style_model, tmp_path, capsys):
    folder, style, *_ = style_model

    def codes(*extra: str) -> np.ndarray:
        name = f"codes-{len(list(tmp_path.glob('*.npy')))}"
        out, codes_out = tmp_path / f"{name}.wav", tmp_path / f"{name}.npy"
        args = ["generate", "--model", str(folder), "--duration", "0.3", "--quiet", "--seed", "5"]
        assert main([*args, *extra, "--out", str(out), "--codes-out", str(codes_out)]) == 0, _error(capsys)
        data, rate = sf.read(out, always_2d=True)
        assert rate == 32000 and data.shape == (9600, 1) and np.abs(data).max() > 0  # mono, 0.3 s
        return np.load(codes_out)

    text = codes("--prompt", "jazz trio")
    styled = codes("--style", str(style))
    both = codes("--prompt", "jazz trio", "--style", str(style))
    double = codes("--prompt", "jazz trio", "--style", str(style), "--cfg-beta", "5")
    settings = codes("--style", str(style), "--style-eval-q", "6", "--style-excerpt-length", "1.5")
    late = codes("--style", str(style), "--style-excerpt-start", "3")
    runs = [text, styled, both, double, settings, late]
    for i, a in enumerate(runs):
        assert a.shape == (1, 4, 15)
        for b in runs[i + 1 :]:
            assert not np.array_equal(a, b)


def test_one_style_per_prompt_or_one_for_all(style_model, tmp_path, capsys):
    folder, style, other, _ = style_model
    base = ["generate", "--model", str(folder), "--duration", "0.3", "--quiet", "--seed", "2", "--top-k", "1"]
    base += ["--prompt", "jazz", "--prompt", "rock"]

    def codes(*styles: Path) -> np.ndarray:
        out = tmp_path / f"codes-{len(list(tmp_path.glob('*.npy')))}.npy"
        extra = [arg for s in styles for arg in ("--style", str(s))]
        assert main([*base, *extra, "--out", str(tmp_path / "o.wav"), "--codes-out", str(out)]) == 0, _error(
            capsys
        )
        assert (tmp_path / "o-1.wav").is_file() and (tmp_path / "o-2.wav").is_file()
        return np.load(out)

    shared = codes(style)
    np.testing.assert_array_equal(codes(style, style), shared)  # one --style applies to every prompt
    mixed = codes(style, other)
    np.testing.assert_array_equal(mixed[0], shared[0])  # clip 1 keeps its style
    assert not np.array_equal(mixed[1], shared[1])  # clip 2 takes the other


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--style", "@style", "--style-excerpt-length", "5"],
            "style_excerpt_length must be between 1.5 and 4.5",
        ),
        (
            ["--style", "@style", "--style-excerpt-length", "1"],
            "style_excerpt_length must be between 1.5 and 4.5",
        ),
        (["--style", "@style", "--style-excerpt-length", "nan"], "style_excerpt_length must be a number"),
        (["--style", "@style", "--style-eval-q", "0"], "style_eval_q must be a whole number from 1 to 6"),
        (["--style", "@style", "--style-eval-q", "7"], "style_eval_q must be a whole number from 1 to 6"),
        (
            ["--style", "@style", "--style-excerpt-start", "-1"],
            "--style-excerpt-start must be a number of seconds >= 0",
        ),
        (["--style", "@style", "--style-excerpt-start", "inf"], "--style-excerpt-start must be a number"),
        (["--style", "@short"], "short.wav lasts 2.00 s, too short for a style excerpt of 3 s"),
        (
            ["--style", "@style", "--style-excerpt-start", "4"],
            "too short for a style excerpt of 3 s from 4 s (--style-excerpt-length, --style-excerpt-start)",
        ),
        (["--style", "@missing"], "missing.wav"),
        (
            ["--style", "@style", "--cfg-beta", "5"],
            "--cfg-beta weighs the text against the style, and there is no text",
        ),
        (
            ["--prompt", "a", "--cfg-beta", "5"],
            "--cfg-beta weighs the text against the style: give --style FILE",
        ),
        (
            ["--prompt", "a", "--style", "@style", "--cfg-beta", "25"],
            "cfg_beta) must be a number from 0 to 20",
        ),
        (
            ["--prompt", "a", "--style", "@style", "--cfg-beta", "-1"],
            "cfg_beta) must be a number from 0 to 20",
        ),
        (["--style-eval-q", "2"], "--style-eval-q sets the style excerpt: give --style FILE too"),
        (
            ["--style-excerpt-length", "2", "--style-excerpt-start", "1"],
            "--style-excerpt-length, --style-excerpt-start set the style excerpt",
        ),
        (
            ["--prompt", "a", "--prompt", "b", "--prompt", "c", "--style", "@style", "--style", "@style"],
            "2 --style files for 3 prompts: give one --style per --prompt, or a single one for all",
        ),
        (["--melody", "@style"], "takes no melody"),
    ],
)
def test_bad_style_options_fail_before_loading(style_model, tmp_path, monkeypatch, capsys, extra, message):
    _, style, _, short = style_model
    files = {"@style": str(style), "@short": str(short), "@missing": str(tmp_path / "missing.wav")}
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(tmp_path / "weights"))  # empty: style is not there
    args = ["generate", "--model", "style", "--no-download", "--quiet", "--out", str(tmp_path / "o.wav")]
    assert main([*args, *(files.get(a, a) for a in extra)]) == 2
    err = _error(capsys)
    assert message in err and "download_weights" not in err, err


def test_valid_style_options_reach_the_model(style_model, tmp_path, monkeypatch, capsys):
    _, style, *_ = style_model
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(tmp_path / "weights"))
    args = ["generate", "--model", "style", "--no-download", "--quiet", "--out", str(tmp_path / "o.wav")]
    extra = [
        "--prompt",
        "a",
        "--style",
        str(style),
        "--style-excerpt-length",
        "4.5",
        "--style-excerpt-start",
        "1.5",
    ]
    assert main([*args, *extra, "--style-eval-q", "6", "--cfg-beta", "5"]) == 2
    assert "download_weights.py" in _error(capsys)  # every check passed: only the weights are missing


@pytest.mark.parametrize("option", [["--style", "@style"], ["--cfg-beta", "5"], ["--style-eval-q", "2"]])
def test_style_options_on_a_model_without_style(style_model, no_weights, capsys, option):
    _, style, *_ = style_model
    assert main([*no_weights, *(str(style) if a == "@style" else a for a in option)]) == 2
    err = _error(capsys)
    assert f"{option[0]}: small has no style conditioner; use --model style" in err, err
