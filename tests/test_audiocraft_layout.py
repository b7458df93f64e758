"""audiocraft's exported layout: round trips through write_audiocraft / read_audiocraft, and refusals.

Everything is tiny and random (D=32, 2 layers, a 1-layer T5, a 4-filter EnCodec), CPU only, no network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import pytest
import torch
import yaml
from transformers import EncodecConfig, EncodecModel, T5Config, T5EncoderModel

from musicgen.checkpoints import Checkpoint, detect_layout
from musicgen.checkpoints.audiocraft_encodec import encodec_state_from_audiocraft, encodec_state_to_audiocraft
from musicgen.checkpoints.audiocraft_layout import CODEC_FILE, LM_FILE, read_audiocraft, write_audiocraft
from musicgen.config import ChromaConfig, LMConfig, ModelConfig
from musicgen.errors import CheckpointError

D, LAYERS, HEADS, CARD = 32, 2, 2, 2048


def lm_shapes(lm: LMConfig) -> dict[str, tuple[int, ...]]:
    """Our LM tensor names and shapes, written out from the spec (not from the module under test)."""
    d, f, k = lm.dim, lm.ffn_dim, lm.num_codebooks
    shapes = {"embed.weight": (k * (lm.card + 1), d)}
    for i in range(lm.num_layers):
        p = f"layers.{i}."
        shapes |= {p + "norm1.weight": (d,), p + "norm1.bias": (d,)}
        shapes |= {p + "self_attn.in_proj.weight": (3 * d, d), p + "self_attn.out_proj.weight": (d, d)}
        if lm.conditioning == "cross":
            shapes |= {p + "norm_cross.weight": (d,), p + "norm_cross.bias": (d,)}
            shapes |= {p + "cross_attn.in_proj.weight": (3 * d, d), p + "cross_attn.out_proj.weight": (d, d)}
        shapes |= {p + "norm2.weight": (d,), p + "norm2.bias": (d,)}
        shapes |= {p + "ff1.weight": (f, d), p + "ff2.weight": (d, f)}
    shapes |= {"out_norm.weight": (d,), "out_norm.bias": (d,), "heads.weight": (k * lm.card, d)}
    shapes |= {"text_proj.weight": (d, lm.text_dim), "text_proj.bias": (d,)}
    if lm.conditioning == "prepend":
        shapes |= {"chroma_proj.weight": (d, lm.num_chroma), "chroma_proj.bias": (d,)}
    return shapes


def random_lm_state(lm: LMConfig, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in lm_shapes(lm).items()}


def tiny_encodec_config() -> dict:
    # 32 kHz with a 640 hop (50 Hz) and 4 codebooks of 2048, like facebook/encodec_32khz, but 4 filters wide
    config = EncodecConfig(
        sampling_rate=32000,
        hidden_size=16,
        num_filters=4,
        num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=2048,
        target_bandwidths=[2.2],
        use_causal_conv=False,
        pad_mode="constant",
        use_conv_shortcut=False,
        num_lstm_layers=2,
    )
    assert config.num_quantizers == 4
    return json.loads(json.dumps(config.to_dict()))


def tiny_encodec_state(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = EncodecModel(EncodecConfig.from_dict(config))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name in state:
        if name.endswith(("codebook.embed", "codebook.embed_avg", "codebook.cluster_size")):
            state[name] = torch.randn(state[name].shape)  # the init leaves codebooks at zero
    return state


def tiny_t5(tmp_path) -> tuple[dict, dict[str, torch.Tensor], object]:
    """(config dict, state, tokenizer folder) of a 512-wide one-layer T5: as wide as t5-small, little else."""
    config = T5Config(vocab_size=64, d_model=512, d_kv=8, d_ff=16, num_layers=1, num_heads=2)
    torch.manual_seed(1)
    model = T5EncoderModel(config)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "spiece.model").write_bytes(b"\x00sentencepiece stand-in")
    (tok / "tokenizer_config.json").write_text('{"model_max_length": 512}')
    (tok / "special_tokens_map.json").write_text('{"eos_token": "</s>"}')
    return json.loads(json.dumps(config.to_dict())), state, tok


def make_ckpt(kind: str, seed: int = 0, **config_extra) -> Checkpoint:
    stereo = kind == "stereo"
    melody = kind == "melody"
    lm = LMConfig(
        dim=D,
        num_heads=HEADS,
        num_layers=LAYERS,
        ffn_dim=4 * D,
        num_codebooks=8 if stereo else 4,
        audio_channels=2 if stereo else 1,
        text_dim=512,
        conditioning="prepend" if melody else "cross",
    )
    config = ModelConfig(
        lm=lm, text_encoder_name="t5-small", chroma=ChromaConfig() if melody else None, **config_extra
    )
    return Checkpoint(config=config, lm_state=random_lm_state(lm, seed), source=f"tiny {kind}")


def assert_same_tensors(a: dict[str, torch.Tensor] | None, b: dict[str, torch.Tensor] | None):
    assert a is not None and b is not None
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def load_pkg(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------- round trips


def test_text_model_round_trip_with_bundled_codec_and_t5(tmp_path):
    ckpt = make_ckpt("text")
    codec_config = tiny_encodec_config()
    t5_config, t5_state, tok_dir = tiny_t5(tmp_path)
    ckpt.config.codec = codec_config
    ckpt.codec_state = tiny_encodec_state(codec_config)
    ckpt.config.text_encoder = t5_config
    ckpt.text_encoder_state = t5_state
    ckpt.tokenizer_dir = tok_dir

    out = tmp_path / "ac"
    write_audiocraft(ckpt, out)
    assert detect_layout(out) == "audiocraft"
    back = read_audiocraft(out)

    assert back.config == ckpt.config
    assert_same_tensors(back.lm_state, ckpt.lm_state)
    assert_same_tensors(back.codec_state, ckpt.codec_state)
    assert_same_tensors(back.text_encoder_state, ckpt.text_encoder_state)
    assert back.tokenizer_dir == out / "text_encoder"
    for name in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (back.tokenizer_dir / name).read_bytes() == (tok_dir / name).read_bytes()
    # the bundled T5 loads into transformers as save_pretrained would have left it
    T5EncoderModel.from_pretrained(out / "text_encoder")
    # and the codec state loads strictly into transformers' EncodecModel
    EncodecModel(EncodecConfig.from_dict(back.config.codec)).load_state_dict(back.codec_state, strict=True)

    # writing what was read gives the same files' contents again
    again = tmp_path / "again"
    write_audiocraft(back, again)
    assert_same_tensors(load_pkg(again / LM_FILE)["best_state"], load_pkg(out / LM_FILE)["best_state"])


def test_text_model_file_uses_audiocraft_names(tmp_path):
    ckpt = make_ckpt("text")
    write_audiocraft(ckpt, tmp_path)
    pkg = load_pkg(tmp_path / LM_FILE)
    assert pkg["exported"] is True and isinstance(pkg["version"], str)
    state = pkg["best_state"]
    lm = ckpt.config.lm
    embed, heads = ckpt.lm_state["embed.weight"], ckpt.lm_state["heads.weight"]
    for k in range(4):
        assert torch.equal(state[f"emb.{k}.weight"], embed[k * (CARD + 1) : (k + 1) * (CARD + 1)])
        assert torch.equal(state[f"linears.{k}.weight"], heads[k * CARD : (k + 1) * CARD])
    assert state["transformer.layers.1.self_attn.in_proj_weight"].shape == (3 * D, D)
    assert torch.equal(
        state["transformer.layers.1.cross_attention.in_proj_weight"],
        ckpt.lm_state["layers.1.cross_attn.in_proj.weight"],
    )
    assert torch.equal(state["transformer.layers.0.linear1.weight"], ckpt.lm_state["layers.0.ff1.weight"])
    assert torch.equal(
        state["transformer.layers.0.norm_cross.bias"], ckpt.lm_state["layers.0.norm_cross.bias"]
    )
    assert torch.equal(
        state["condition_provider.conditioners.description.output_proj.weight"],
        ckpt.lm_state["text_proj.weight"],
    )
    assert not any("bias" in n and ("attn" in n or "linear" in n) for n in state)
    assert len(state) == len(ckpt.lm_state) - 2 + 2 * lm.num_codebooks

    xp = yaml.safe_load(pkg["xp.cfg"])
    assert xp["transformer_lm"]["hidden_scale"] == 4 and xp["transformer_lm"]["n_q"] == 4
    assert xp["codebooks_pattern"] == {
        "modeling": "delay",
        "delay": {"delays": [0, 1, 2, 3], "flatten_first": 0, "empty_initial": 0},
    }
    assert xp["fuser"]["cross"] == ["description"]
    assert xp["conditioners"]["description"]["t5"]["name"] == "t5-small"
    # no codec_state: a pointer, as export_pretrained_compression_model writes it
    assert load_pkg(tmp_path / CODEC_FILE) == {
        "pretrained": "facebook/encodec_32khz",
        "exported": True,
        "version": pkg["version"],
    }


def test_stereo_round_trip(tmp_path):
    ckpt = make_ckpt("stereo", seed=3, codec_name="my/encodec")
    write_audiocraft(ckpt, tmp_path)
    back = read_audiocraft(tmp_path)
    assert back.config == ckpt.config
    assert back.config.is_stereo and back.config.lm.delays == [0, 0, 1, 1, 2, 2, 3, 3]
    assert_same_tensors(back.lm_state, ckpt.lm_state)
    assert back.codec_state is None and back.config.codec is None
    assert back.text_encoder_state is None and back.tokenizer_dir is None
    xp = yaml.safe_load(load_pkg(tmp_path / LM_FILE)["xp.cfg"])
    assert xp["channels"] == 2
    assert xp["interleave_stereo_codebooks"] == {"use": True, "per_timestep": False}
    assert xp["codebooks_pattern"]["delay"]["delays"] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert xp["compression_model_n_q"] == 4


def test_melody_round_trip(tmp_path):
    ckpt = make_ckpt("melody", seed=5)
    write_audiocraft(ckpt, tmp_path)
    back = read_audiocraft(tmp_path)
    assert back.config == ckpt.config
    assert back.config.is_melody and back.config.lm.chroma_length == 235
    assert_same_tensors(back.lm_state, ckpt.lm_state)

    pkg = load_pkg(tmp_path / LM_FILE)
    state = pkg["best_state"]
    assert not any("cross_attention" in n or "norm_cross" in n for n in state)
    assert torch.equal(
        state["condition_provider.conditioners.self_wav.output_proj.weight"],
        ckpt.lm_state["chroma_proj.weight"],
    )
    assert state["condition_provider.conditioners.self_wav.chroma.spec.window"].shape == (16384,)
    xp = yaml.safe_load(pkg["xp.cfg"])
    assert xp["fuser"]["cross"] == [] and sorted(xp["fuser"]["prepend"]) == ["description", "self_wav"]
    assert xp["conditioners"]["self_wav"]["chroma_stem"]["radix2_exp"] == 14
    assert xp["dataset"]["segment_duration"] == 30

    # audiocraft exports leave OmegaConf interpolations unresolved; they must be followed
    xp["conditioners"]["self_wav"]["chroma_stem"]["sample_rate"] = "${sample_rate}"
    torch.save({**pkg, "xp.cfg": yaml.safe_dump(xp)}, tmp_path / LM_FILE)
    assert read_audiocraft(tmp_path).config == ckpt.config


def test_melody_chroma_length_other_than_30_seconds(tmp_path):
    ckpt = make_ckpt("melody")
    ckpt.config.lm.chroma_length = 100
    write_audiocraft(ckpt, tmp_path)
    assert read_audiocraft(tmp_path).config.lm.chroma_length == 100


# ---------------------------------------------------------------------------------------------- EnCodec


def test_encodec_mapping_round_trips_and_loads_strictly():
    config = tiny_encodec_config()
    hf_state = tiny_encodec_state(config, seed=7)
    ac_state = encodec_state_to_audiocraft(hf_state, config)
    # audiocraft's SEANet wraps each conv twice and keeps the old weight_norm's g / v names
    for name in (
        "encoder.model.0.conv.conv.weight_g",
        "encoder.model.0.conv.conv.weight_v",
        "encoder.model.1.block.1.conv.conv.bias",
        "encoder.model.13.lstm.weight_ih_l1",
        "decoder.model.1.lstm.bias_hh_l0",
        "decoder.model.3.convtr.convtr.weight_v",
        "decoder.model.12.convtr.convtr.bias",
        "decoder.model.15.conv.conv.weight_g",
        "quantizer.vq.layers.3._codebook.embed_avg",
        "quantizer.vq.layers.0._codebook.inited",
    ):
        assert name in ac_state, name
    assert len(ac_state) == len(hf_state)

    back = encodec_state_from_audiocraft(ac_state, config)
    assert_same_tensors(back, hf_state)
    model = EncodecModel(EncodecConfig.from_dict(config))
    model.load_state_dict(back, strict=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, hf_state[name]), name


def test_encodec_mapping_refuses_foreign_tensors():
    config = tiny_encodec_config()
    ac_state = encodec_state_to_audiocraft(tiny_encodec_state(config), config)
    ac_state["quantizer.vq.layers.0.project_in.weight"] = torch.zeros(16, 16)
    with pytest.raises(CheckpointError, match="project_in"):
        encodec_state_from_audiocraft(ac_state, config, where="codec.bin")


def test_pointer_compression_file(tmp_path):
    write_audiocraft(make_ckpt("text"), tmp_path)
    torch.save(
        {"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"}, tmp_path / CODEC_FILE
    )
    back = read_audiocraft(tmp_path)
    assert back.codec_state is None and back.config.codec is None
    assert back.config.codec_name == "facebook/encodec_32khz"
    assert back.config.frame_rate == 50 and back.config.sample_rate == 32000


# ---------------------------------------------------------------------------------------------- refusals


class _WritesMarker:
    """Unpickling this object opens (creates) a file: a harmless stand-in for a malicious payload."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsCommand(_WritesMarker):
    """The same through a shell command: torch refuses os.system's module outright, in other words."""

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("payload, name", [(_WritesMarker, "open"), (_RunsCommand, "system")])
@pytest.mark.parametrize("file", [LM_FILE, CODEC_FILE])
def test_refuses_files_that_need_code_to_unpickle(tmp_path, file, payload, name):
    folder = tmp_path / "ckpt"
    write_audiocraft(make_ckpt("text"), folder)
    marker = tmp_path / "marker"
    torch.save({"best_state": {}, "xp.cfg": payload(marker), "exported": True}, folder / file)

    # the message names the global the file wanted called, whichever way torch words its refusal
    pattern = (
        rf"{file} is not an exported audiocraft checkpoint: it holds Python objects \(\S*{name}\).*export"
    )
    with pytest.raises(CheckpointError, match=pattern):
        read_audiocraft(folder)
    assert not marker.exists()

    # the payload is live: plain unpickling would have run it
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(_WritesMarker(canary))).close()
    assert canary.exists()


def _edit_lm_file(folder, edit_state=None, edit_xp=None):
    pkg = load_pkg(folder / LM_FILE)
    if edit_state:
        edit_state(pkg["best_state"])
    if edit_xp:
        xp = yaml.safe_load(pkg["xp.cfg"])
        edit_xp(xp)
        pkg["xp.cfg"] = yaml.safe_dump(xp)
    torch.save(pkg, folder / LM_FILE)


def test_refuses_state_missing_a_layer(tmp_path):
    write_audiocraft(make_ckpt("text"), tmp_path)

    def drop_layer(state):
        for name in [n for n in state if n.startswith("transformer.layers.1.")]:
            del state[name]

    _edit_lm_file(tmp_path, edit_state=drop_layer)
    with pytest.raises(CheckpointError, match=r"state_dict\.bin.*missing transformer\.layers\.1\."):
        read_audiocraft(tmp_path)


def test_refuses_wrong_shape(tmp_path):
    write_audiocraft(make_ckpt("text"), tmp_path)
    _edit_lm_file(tmp_path, edit_state=lambda s: s.__setitem__("linears.2.weight", torch.zeros(CARD, D + 1)))
    with pytest.raises(CheckpointError, match=r"state_dict\.bin.*wrong shape linears\.2\.weight"):
        read_audiocraft(tmp_path)


def test_refuses_unexpected_tensor(tmp_path):
    write_audiocraft(make_ckpt("text"), tmp_path)
    _edit_lm_file(
        tmp_path, edit_state=lambda s: s.__setitem__("transformer.layers.0.linear1.bias", torch.zeros(4 * D))
    )
    with pytest.raises(
        CheckpointError, match=r"state_dict\.bin.*unexpected transformer\.layers\.0\.linear1\.bias"
    ):
        read_audiocraft(tmp_path)


def test_refuses_non_delay_pattern(tmp_path):
    write_audiocraft(make_ckpt("text"), tmp_path)
    _edit_lm_file(tmp_path, edit_xp=lambda xp: xp["codebooks_pattern"].__setitem__("modeling", "parallel"))
    with pytest.raises(CheckpointError, match=r"state_dict\.bin.*'parallel'.*'delay'"):
        read_audiocraft(tmp_path)


def test_refuses_unsupported_transformer_settings(tmp_path):
    write_audiocraft(make_ckpt("text"), tmp_path)
    _edit_lm_file(tmp_path, edit_xp=lambda xp: xp["transformer_lm"].__setitem__("norm_first", False))
    with pytest.raises(CheckpointError, match=r"state_dict\.bin.*norm_first"):
        read_audiocraft(tmp_path)


def test_refuses_missing_or_foreign_files(tmp_path):
    write_audiocraft(make_ckpt("text"), tmp_path)
    torch.save([1, 2, 3], tmp_path / CODEC_FILE)
    with pytest.raises(CheckpointError, match=rf"{CODEC_FILE}.*list"):
        read_audiocraft(tmp_path)
    (tmp_path / CODEC_FILE).unlink()
    with pytest.raises(CheckpointError, match=rf"{CODEC_FILE}: file not found"):
        read_audiocraft(tmp_path)
    (tmp_path / LM_FILE).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=rf"{LM_FILE}: cannot be read"):
        read_audiocraft(tmp_path)


def test_refuses_codec_not_fitting_the_lm(tmp_path):
    ckpt = make_ckpt("text")
    ckpt.config.codec = tiny_encodec_config()
    ckpt.codec_state = tiny_encodec_state(ckpt.config.codec)
    write_audiocraft(ckpt, tmp_path)
    pkg = load_pkg(tmp_path / CODEC_FILE)
    del pkg["best_state"]["decoder.model.15.conv.conv.bias"]
    torch.save(pkg, tmp_path / CODEC_FILE)
    with pytest.raises(CheckpointError, match=rf"{CODEC_FILE}.*missing decoder\.layers\.15\.conv\.bias"):
        read_audiocraft(tmp_path)


def test_write_refuses_lm_state_not_fitting_config(tmp_path):
    ckpt = make_ckpt("text")
    ckpt.lm_state = dict(ckpt.lm_state)
    del ckpt.lm_state["layers.0.ff2.weight"]
    with pytest.raises(CheckpointError, match=r"tiny text.*missing layers\.0\.ff2\.weight"):
        write_audiocraft(ckpt, tmp_path)
    bad = make_ckpt("text")
    bad.config = dataclasses.replace(bad.config, text_encoder_name="some/other-encoder")
    with pytest.raises(CheckpointError, match="no audiocraft name"):
        write_audiocraft(bad, tmp_path)
