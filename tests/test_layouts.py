"""The same weights in either layout give the same codes; `python -m musicgen convert` both ways."""

import dataclasses
import shutil

import pytest
import torch

from musicgen import SamplingParams
from musicgen.checkpoints.audiocraft_layout import write_audiocraft
from musicgen.cli import main
from musicgen.loading import build_model, read_checkpoint
from tests.helpers import reference_generate

GREEDY = SamplingParams(top_k=1, cfg_coef=3.0)
PROMPTS = ["lo-fi beat with warm piano", "jazz trio"]


@pytest.mark.parametrize("kind", ["mono", "stereo", "melody"])
def test_audiocraft_layout_gives_transformers_codes(tiny, tmp_path, kind):
    folder, model, tokenizer = tiny.get(kind)
    ref_codes, ref_audio = reference_generate(model, tokenizer, PROMPTS, frames=20)
    assert main(["convert", str(folder), str(tmp_path / "ac"), "--to", "audiocraft"]) == 0
    assert (tmp_path / "ac" / "state_dict.bin").is_file()
    assert (tmp_path / "ac" / "compression_state_dict.bin").is_file()
    engine = build_model(read_checkpoint(tmp_path / "ac"), "cpu")
    result = engine.generate(PROMPTS, duration=20 / 50, sampling=GREEDY, seed=0)
    assert torch.equal(result.codes, ref_codes)
    assert torch.allclose(result.audio, ref_audio, atol=1e-4)


def test_round_trip_back_to_transformers_loads_in_transformers(tiny, tmp_path):
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    folder, model, tokenizer = tiny.get("stereo")
    ref_codes, _ = reference_generate(model, tokenizer, PROMPTS, frames=15)
    assert main(["convert", str(folder), str(tmp_path / "ac"), "--to", "audiocraft"]) == 0
    assert main(["convert", str(tmp_path / "ac"), str(tmp_path / "hf"), "--to", "transformers"]) == 0
    again = MusicgenForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    again_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    codes, _ = reference_generate(again, again_tokenizer, PROMPTS, frames=15)
    assert torch.equal(codes, ref_codes)


def test_named_text_encoder_and_codec_pointer_resolve_from_the_weights_folder(tiny, tmp_path, monkeypatch):
    """audiocraft files name their T5 and may only point at EnCodec: both are found in weights/hub/."""
    folder, model, tokenizer = tiny.get("mono")
    ref_codes, _ = reference_generate(model, tokenizer, PROMPTS, frames=10)
    weights = tmp_path / "weights"
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(weights))
    model.text_encoder.save_pretrained(weights / "hub" / "t5-base")
    tokenizer.save_pretrained(weights / "hub" / "t5-base")
    model.audio_encoder.save_pretrained(weights / "hub" / "facebook--encodec_32khz")

    ckpt = read_checkpoint(folder)
    pointer = dataclasses.replace(ckpt, config=dataclasses.replace(ckpt.config, codec=None), codec_state=None)
    write_audiocraft(pointer, tmp_path / "ac")
    shutil.rmtree(tmp_path / "ac" / "text_encoder")  # as audiocraft writes it: the T5 only named
    engine = build_model(read_checkpoint(tmp_path / "ac"), "cpu")
    assert torch.equal(engine.generate(PROMPTS, duration=0.2, sampling=GREEDY, seed=0).codes, ref_codes)


def test_convert_refuses_a_non_empty_destination(tiny, tmp_path, capsys):
    folder, *_ = tiny.get("mono")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep.txt").write_text("mine")
    assert main(["convert", str(folder), str(tmp_path / "dest"), "--to", "audiocraft"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_folder_without_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["generate", "--model", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "config.json" in capsys.readouterr().err


def test_tensor_that_does_not_fit_the_config_names_the_file(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    from musicgen import CheckpointError

    folder, *_ = tiny.get("mono")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    state = load_file(broken / "model.safetensors")
    key = "decoder.model.decoder.layers.0.fc1.weight"
    state[key] = torch.zeros(5, 5)
    save_file(state, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match="broken"):
        build_model(read_checkpoint(broken), "cpu")
