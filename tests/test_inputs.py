"""The input rules every entry point shares (`musicgen.inputs`), and the engine's own bounds: prompt length,
non-finite audio and weights, seeds. Server-level cases are in test_bad_inputs.py."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from musicgen import inputs
from musicgen.conditioning import MAX_TEXT_TOKENS
from musicgen.errors import AudioFileError, CheckpointError, InvalidInputError

REPO_ROOT = Path(__file__).resolve().parent.parent


# ---- the primitives ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [(8, 8), (8.0, 8), (-1, -1)])
def test_whole_takes_whole_numbers_json_may_send_as_floats(value, expected):
    assert inputs.whole("epochs", value) == expected and type(inputs.whole("epochs", value)) is int


@pytest.mark.parametrize("value", [2.5, "3", True, None, float("nan"), [3]])
def test_whole_refuses_everything_else_naming_the_input(value):
    with pytest.raises(InvalidInputError, match="epochs must be a whole number"):
        inputs.whole("epochs", value)


def test_ranges_name_the_input_the_bounds_and_the_unit():
    with pytest.raises(InvalidInputError, match=r"^duration must be between 1 and 300 seconds, got 0\.$"):
        inputs.whole("duration", 0, 1, 300, "seconds")
    with pytest.raises(InvalidInputError, match="warmup_steps must be 0 or more, got -1"):
        inputs.whole("warmup_steps", -1, 0)
    with pytest.raises(InvalidInputError, match="learning_rate must be between 1e-07 and 0.1, got 2"):
        inputs.number("learning_rate", 2.0, 1e-7, 0.1)


@pytest.mark.parametrize("value", ["NaN", float("nan"), float("inf"), -math.inf, "0.1", False, None])
def test_number_refuses_non_finite_and_non_numbers(value):
    with pytest.raises(InvalidInputError, match="top_p must be a finite number"):
        inputs.number("top_p", value)


def test_choice_flag_and_text():
    assert inputs.choice("method", "lora", ("lora", "full")) == "lora"
    with pytest.raises(InvalidInputError, match="method must be one of lora, full; got 'qlora'"):
        inputs.choice("method", "qlora", ("lora", "full"))
    with pytest.raises(InvalidInputError, match="continuation must be true or false, got 1"):
        inputs.flag("continuation", 1)
    assert inputs.optional_text("prompt", "  ") is None
    with pytest.raises(InvalidInputError, match="one_same_description must be text, got 123"):
        inputs.optional_text("one_same_description", 123)
    with pytest.raises(InvalidInputError, match="prompt is 10,001 characters long; at most 10,000"):
        inputs.prompt("prompt", "x" * 10_001)


def test_seed_is_one_rule():
    assert inputs.seed("seed", 0) == 0 and inputs.seed("seed", 2**63 - 1) == 2**63 - 1
    assert 0 <= inputs.seed("seed", -1) < 2**31 and 0 <= inputs.seed("seed", None) < 2**31
    for bad in (-5, 2**63):
        with pytest.raises(InvalidInputError, match="--seed must be between 0 and 9223372036854775807"):
            inputs.seed("--seed", bad)


def test_file_inputs_by_path_file_url_and_refused_schemes(tmp_path):
    f = tmp_path / "a b.wav"
    f.write_bytes(b"x")
    assert inputs.optional_file("input_audio", str(f)) == f
    assert inputs.optional_file("input_audio", "file://" + str(f).replace(" ", "%20")) == f
    assert inputs.optional_file("input_audio", "  ") is None
    with pytest.raises(InvalidInputError, match="input_audio: unsupported URL scheme 'ftp'"):
        inputs.optional_file("input_audio", "ftp://example.com/a.wav")
    with pytest.raises(InvalidInputError, match="input_audio must be a file"):
        inputs.optional_file("input_audio", 5)


def test_declared_inputs_only_names_unknown_inputs_and_fills_defaults():
    from cog import Input

    @inputs.declared_inputs_only
    def run(self, a: int = Input(default=1), b: str | None = Input(default=None)) -> str:
        return f"{a} {b}"

    assert run(None) == "1 None"  # absent inputs arrive as Input(...) objects: their defaults are used
    assert run(None, b="x") == "1 x"
    with pytest.raises(InvalidInputError, match="unknown input 'c': this model takes a, b"):
        run(None, c=3)


def test_read_input_audio_refuses_non_finite_samples(tmp_path):
    import numpy as np
    import soundfile as sf

    path = tmp_path / "broken.wav"
    wav = np.full((3200, 1), 0.2, dtype=np.float32)
    wav[7] = np.inf
    sf.write(path, wav, 32000, subtype="FLOAT")
    with pytest.raises(AudioFileError, match="input_audio holds NaN or infinite samples"):
        inputs.read_input_audio("input_audio", path, 32000, 1)
    with pytest.raises(AudioFileError, match="input_audio cannot be used: Audio file not found"):
        inputs.read_input_audio("input_audio", tmp_path / "missing.wav", 32000, 1)


# ---- the engine's bounds -----------------------------------------------------------------------------


def test_generate_refuses_non_finite_audio_and_bad_seeds(tiny):
    melody_model, mono = tiny.engine("melody"), tiny.engine("mono")
    broken = torch.full((1, 32000), 0.1)
    broken[0, 5] = float("nan")
    with pytest.raises(InvalidInputError, match="the melody holds NaN or infinite samples"):
        melody_model.generate("folk", duration=0.2, melody=broken)
    with pytest.raises(InvalidInputError, match="the continuation audio holds NaN or infinite samples"):
        mono.generate("folk", duration=2, continuation=torch.full((1, 32000), float("inf")))
    with pytest.raises(InvalidInputError, match="seed must be between 0 and"):
        mono.generate("folk", duration=0.2, seed=-5)
    with pytest.raises(InvalidInputError, match="duration must be more than 0 and at most 300 seconds"):
        mono.generate("folk", duration=1e9)


def test_prompts_past_t5s_limit_are_cut_with_a_warning(tiny, caplog):
    model = tiny.engine("mono")
    long_prompt = "ambient pads and soft drums " * 400  # ~11,000 characters: refused whole
    with pytest.raises(InvalidInputError, match="the prompt is 11,199 characters long"):
        model.generate(long_prompt, duration=0.1)
    cut = long_prompt[:9000]
    with caplog.at_level(logging.WARNING, logger="musicgen.conditioning"):
        states, mask = model.text.encode([cut, "jazz"])
    assert states.shape[1] == MAX_TEXT_TOKENS and mask[0].sum() == MAX_TEXT_TOKENS
    assert mask[1].sum() < 10  # the short prompt beside it is unchanged, padded
    assert f"the text encoder reads the first {MAX_TEXT_TOKENS}" in caplog.text
    # the cut keeps the end-of-text token, as T5 saw it in training
    ids = model.text.tokenizer([cut], truncation=True, max_length=MAX_TEXT_TOKENS)["input_ids"][0]
    assert ids[-1] == model.text.tokenizer.eos_token_id


def test_a_huge_prompt_is_refused_within_a_memory_bound(tiny, tmp_path):
    """A 1 MB prompt once asked T5 for hundreds of GB; now it is refused before any encoder work, in a
    process that could not hold even 1.5 GB more than the model."""
    folder = tiny.get("mono")[0]
    script = textwrap.dedent(
        f"""
        import json, resource, time
        from pathlib import Path
        from musicgen.errors import InvalidInputError
        from musicgen.loading import build_model, read_checkpoint
        model = build_model(read_checkpoint(Path({str(folder)!r})), "cpu")
        model.generate("warm up", duration=0.1)
        with open("/proc/self/status") as f:
            data = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmData:"))
        limit = data + 1_500_000_000
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        started, outcome = time.monotonic(), {{}}
        for size in (100_000, 1_000_000):
            try:
                model.generate("lo-fi beat " * (size // 11), duration=0.1)
                outcome[size] = "generated"
            except InvalidInputError as e:
                outcome[size] = str(e)
            except Exception as e:
                outcome[size] = type(e).__name__ + ": " + str(e)[:200]
        print(json.dumps({{"seconds": time.monotonic() - started, "outcome": outcome}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for size, outcome in result["outcome"].items():
        assert "characters long; at most 10,000 are accepted" in outcome, (size, outcome)
    assert result["seconds"] < 5


def test_finetuned_weights_with_nan_are_refused(tmp_path):
    from musicgen.finetuned import FineTuned, load_finetuned, save_finetuned
    from musicgen.lm import LanguageModel
    from tests.test_finetuned import CFG

    lm = LanguageModel(CFG)
    tensors = {"heads.weight": lm.state_dict()["heads.weight"].clone()}
    path = save_finetuned(tmp_path / "w.safetensors", FineTuned("small", "full", tensors, CFG))
    assert load_finetuned(path).tensors.keys() == {"heads.weight"}

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, bad = f.metadata(), {k: f.get_tensor(k) * float("nan") for k in f.keys()}
    save_file(bad, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="heads.weight holds NaN or infinite values"):
        load_finetuned(path)
    with pytest.raises(InvalidInputError, match="holds NaN or infinite values"):
        save_finetuned(
            tmp_path / "again.safetensors",
            FineTuned("small", "full", {"heads.weight": bad["heads.weight"]}, CFG),
        )


def test_audio_inputs_longer_than_the_bound_are_refused_before_decoding(tmp_path):
    import numpy as np
    import soundfile as sf

    path = tmp_path / "long.wav"
    sf.write(path, np.zeros((601 * 1000, 1), dtype=np.int16), 1000, subtype="PCM_16")  # 601 s
    with pytest.raises(InvalidInputError, match="input_audio is 601 s long and 601 s of it would be used"):
        inputs.read_input_audio("input_audio", path, 32000, 1)
    # a part of it within the bound is read
    part = inputs.read_input_audio("input_audio", path, 32000, 1, start=590.0, end=600.0)
    assert part.shape == (1, 10 * 32000)
