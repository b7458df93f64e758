"""transformers' layout: `config.json` + safetensors (+ tokenizer files), as `save_pretrained` writes it.

`MusicgenForConditionalGeneration` (text models, mono or stereo) and
`MusicgenMelodyForConditionalGeneration` (melody models: no cross-attention, conditioning prepended).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import ChromaConfig, LMConfig, ModelConfig
from ..errors import CheckpointError
from . import Checkpoint
from .tensor_reader import SafetensorsIndex

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "special_tokens_map.json")
_MODEL_TYPES = ("musicgen", "musicgen_melody")

# per-layer names: transformers' -> ours (q/k/v projections are fused separately)
_LAYER_RENAMES = {
    "self_attn_layer_norm": "norm1",
    "self_attn.out_proj": "self_attn.out_proj",
    "encoder_attn_layer_norm": "norm_cross",
    "encoder_attn.out_proj": "cross_attn.out_proj",
    "final_layer_norm": "norm2",
    "fc1": "ff1",
    "fc2": "ff2",
}
_FUSED = {"self_attn": "self_attn", "encoder_attn": "cross_attn"}
_MAPPED = ("text_encoder.", "audio_encoder.")  # used from the mapped file as they are; the LM is read apart
_DEC = "decoder.model.decoder."


def read_transformers(folder: Path) -> Checkpoint:
    """Reads a folder written by `save_pretrained` (or a `facebook/musicgen-*` snapshot)."""
    config_file = folder / "config.json"
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_file}: cannot read it as JSON ({e}).") from e
    model_type = raw.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise CheckpointError(
            f"{config_file}: model_type is {model_type!r}, expected one of {_MODEL_TYPES}: "
            "this folder does not hold a MusicGen model."
        )
    config = _model_config(raw, config_file)
    state, index = _load_weights(folder)
    text_state = _take_prefix(state, "text_encoder.")
    codec_state = _take_prefix(state, "audio_encoder.")
    lm_state = _lm_state_from_hf(state, config.lm, folder, index)
    tokenizer_dir = folder if any((folder / f).is_file() for f in TOKENIZER_FILES) else None
    return Checkpoint(
        config=config,
        lm_state=lm_state,
        text_encoder_state=text_state or None,
        codec_state=codec_state or None,
        tokenizer_dir=tokenizer_dir,
        source=str(folder),
    )


def _model_config(raw: dict, config_file: Path) -> ModelConfig:
    try:
        dec = raw["decoder"]
        text = raw["text_encoder"]
        audio = raw["audio_encoder"]
        if dec.get("activation_function", "gelu") != "gelu":
            raise CheckpointError(
                f"{config_file}: activation {dec['activation_function']!r} is not supported"
            )
        melody = raw["model_type"] == "musicgen_melody"
        lm = LMConfig(
            dim=dec["hidden_size"],
            num_heads=dec["num_attention_heads"],
            num_layers=dec["num_hidden_layers"],
            ffn_dim=dec["ffn_dim"],
            num_codebooks=dec["num_codebooks"],
            card=dec.get("vocab_size", 2048),
            audio_channels=dec.get("audio_channels", 1),
            max_positions=dec.get("max_position_embeddings", 2048),
            text_dim=text["d_model"],
            conditioning="prepend" if melody else "cross",
            num_chroma=raw.get("num_chroma", 12),
            chroma_length=raw.get("chroma_length", 235),
        )
    except KeyError as e:
        raise CheckpointError(f"{config_file}: missing key {e}; expected a MusicGen config.json") from e
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_file}: {e}") from e
    chroma = None
    if melody:
        chroma = ChromaConfig(num_chroma=lm.num_chroma)
        pre = config_file.parent / "preprocessor_config.json"
        if pre.is_file():
            p = json.loads(pre.read_text())
            chroma = ChromaConfig(
                n_fft=p.get("n_fft", chroma.n_fft),
                hop_length=p.get("hop_length", chroma.hop_length),
                sample_rate=p.get("sampling_rate", chroma.sample_rate),
                num_chroma=p.get("feature_size", chroma.num_chroma),
            )
    return ModelConfig(
        lm=lm,
        text_encoder=text,
        text_encoder_name=text.get("_name_or_path") or "t5-base",
        codec=audio,
        chroma=chroma,
        sample_rate=audio.get("sampling_rate", 32000),
        frame_rate=_frame_rate(audio),
    )


def _frame_rate(audio: dict) -> int:
    hop = 1
    for r in audio.get("upsampling_ratios", [8, 5, 4, 4]):
        hop *= r
    return audio.get("sampling_rate", 32000) // hop


def _load_weights(folder: Path) -> tuple[dict[str, torch.Tensor | None], SafetensorsIndex | None]:
    """Every tensor name of the folder with, for safetensors, an index that reads tensors into memory of
    their own (see musicgen.checkpoints.tensor_reader).

    With safetensors, the text encoder's and codec's tensors come from the mapped file (their untouched
    pages cost nothing) and the language model's names map to None: they are read through the index,
    because creating mapped tensors for them leaves hundreds of MB of their pages resident.
    """
    files = sorted(folder.glob("*.safetensors"))
    if files:
        index = SafetensorsIndex(files)
        state = {}
        for f in files:
            try:
                with safe_open(f, framework="pt") as handle:
                    for name in handle.keys():
                        state[name] = handle.get_tensor(name) if name.startswith(_MAPPED) else None
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise CheckpointError(f"{f}: not a readable safetensors file ({e}).") from e
        return state, index
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise CheckpointError(
            f"{folder}: config.json is here but no *.safetensors or pytorch_model.bin weights."
        )
    state = {}
    for f in bins:
        try:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as e:  # weights_only refuses anything but tensors; say so plainly
            raise CheckpointError(f"{f}: not a plain tensor file (refused to unpickle it: {e}).") from e
    return state, None


def _take_prefix(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}


def _lm_state_from_hf(
    state: dict, cfg: LMConfig, folder: Path, index: SafetensorsIndex | None
) -> dict[str, torch.Tensor]:
    # our name -> transformers' tensors that make it, concatenated row-wise
    K = cfg.num_codebooks
    plan = {
        "embed.weight": [f"{_DEC}embed_tokens.{k}.weight" for k in range(K)],
        "heads.weight": [f"decoder.lm_heads.{k}.weight" for k in range(K)],
        "out_norm.weight": [f"{_DEC}layer_norm.weight"],
        "out_norm.bias": [f"{_DEC}layer_norm.bias"],
    }
    for i in range(cfg.num_layers):
        src, dst = f"{_DEC}layers.{i}.", f"layers.{i}."
        for hf, ours in _FUSED.items():
            if hf == "encoder_attn" and cfg.conditioning != "cross":
                continue
            plan[f"{dst}{ours}.in_proj.weight"] = [f"{src}{hf}.{p}_proj.weight" for p in "qkv"]
        for hf, ours in _LAYER_RENAMES.items():
            if "encoder_attn" in hf and cfg.conditioning != "cross":
                continue
            for kind in ("weight", "bias") if "norm" in hf else ("weight",):
                plan[f"{dst}{ours}.{kind}"] = [f"{src}{hf}.{kind}"]
    if "enc_to_dec_proj.weight" in state:
        plan["text_proj.weight"] = ["enc_to_dec_proj.weight"]
        plan["text_proj.bias"] = ["enc_to_dec_proj.bias"]
    if cfg.conditioning == "prepend":
        plan["chroma_proj.weight"] = ["audio_enc_to_dec_proj.weight"]
        plan["chroma_proj.bias"] = ["audio_enc_to_dec_proj.bias"]

    missing = [name for names in plan.values() for name in names if name not in state]
    if missing:
        raise CheckpointError(
            f"{folder}: the weights lack {missing[0]!r}; expected a complete MusicGen model."
        )
    sources = {name: state.pop(name) for names in plan.values() for name in names}
    leftovers = [k for k in state if not k.endswith("embed_positions.weights")]
    if leftovers:
        raise CheckpointError(f"{folder}: unexpected tensors for this config: {leftovers[:5]}")
    if index is not None:
        # into memory of their own, fused ones straight into place (see tensor_reader)
        out = index.read_all(plan)
    else:
        out = {k: torch.cat([sources[n] for n in names]) for k, names in plan.items()}
    if "text_proj.weight" not in out:  # same width: transformers skips the projection, the identity
        out["text_proj.weight"] = torch.eye(cfg.dim, cfg.text_dim)
        out["text_proj.bias"] = torch.zeros(cfg.dim)
    return out


def lm_state_to_hf(lm_state: dict[str, torch.Tensor], cfg: LMConfig) -> dict[str, torch.Tensor]:
    """Our LM names -> transformers' (the inverse of reading)."""
    K, D, V = cfg.num_codebooks, cfg.dim, cfg.card
    out = {}
    for k in range(K):
        out[f"{_DEC}embed_tokens.{k}.weight"] = lm_state["embed.weight"][k * (V + 1) : (k + 1) * (V + 1)]
        out[f"decoder.lm_heads.{k}.weight"] = lm_state["heads.weight"][k * V : (k + 1) * V]
    out[f"{_DEC}layer_norm.weight"] = lm_state["out_norm.weight"]
    out[f"{_DEC}layer_norm.bias"] = lm_state["out_norm.bias"]
    for i in range(cfg.num_layers):
        src, dst = f"layers.{i}.", f"{_DEC}layers.{i}."
        for hf, ours in _FUSED.items():
            if hf == "encoder_attn" and cfg.conditioning != "cross":
                continue
            for j, p in enumerate("qkv"):
                out[f"{dst}{hf}.{p}_proj.weight"] = lm_state[f"{src}{ours}.in_proj.weight"][
                    j * D : (j + 1) * D
                ]
        for hf, ours in _LAYER_RENAMES.items():
            if "encoder_attn" in hf and cfg.conditioning != "cross":
                continue
            for kind in ("weight", "bias") if "norm" in hf else ("weight",):
                out[f"{dst}{hf}.{kind}"] = lm_state[f"{src}{ours}.{kind}"]
    out["enc_to_dec_proj.weight"] = lm_state["text_proj.weight"]
    out["enc_to_dec_proj.bias"] = lm_state["text_proj.bias"]
    if cfg.conditioning == "prepend":
        out["audio_enc_to_dec_proj.weight"] = lm_state["chroma_proj.weight"]
        out["audio_enc_to_dec_proj.bias"] = lm_state["chroma_proj.bias"]
    return out


def write_transformers(ckpt: Checkpoint, folder: Path) -> None:
    """Writes `ckpt` as `save_pretrained` would: config.json, model.safetensors, tokenizer files.

    The text encoder and codec must be bundled (`text_encoder_state`, `codec_state`), as this layout
    always holds them.
    """
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        T5Config,
    )

    cfg = ckpt.config
    if cfg.is_style:
        raise CheckpointError(
            f"{ckpt.source or 'this checkpoint'} is a MusicGen-Style model, which transformers has no classes "
            "for: it is kept in audiocraft's layout (convert --to audiocraft)."
        )
    if ckpt.text_encoder_state is None or ckpt.codec_state is None or cfg.text_encoder is None:
        raise CheckpointError("writing transformers' layout needs the text encoder and codec weights bundled")
    lm = cfg.lm
    decoder_args = dict(
        vocab_size=lm.card,
        hidden_size=lm.dim,
        num_attention_heads=lm.num_heads,
        num_hidden_layers=lm.num_layers,
        ffn_dim=lm.ffn_dim,
        num_codebooks=lm.num_codebooks,
        audio_channels=lm.audio_channels,
        max_position_embeddings=lm.max_positions,
    )
    text = T5Config(**_config_args(cfg.text_encoder))
    audio = EncodecConfig(**_config_args(cfg.codec))
    if cfg.is_melody:
        hf = MusicgenMelodyConfig(
            text_encoder=text.to_dict(),
            audio_encoder=audio.to_dict(),
            decoder=MusicgenMelodyDecoderConfig(**decoder_args).to_dict(),
            num_chroma=lm.num_chroma,
            chroma_length=lm.chroma_length,
        )
    else:
        hf = MusicgenConfig(
            text_encoder=text.to_dict(),
            audio_encoder=audio.to_dict(),
            decoder=MusicgenDecoderConfig(**decoder_args).to_dict(),
        )
    folder.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(folder)
    tensors = lm_state_to_hf(ckpt.lm_state, lm)
    tensors.update({f"text_encoder.{k}": v for k, v in ckpt.text_encoder_state.items()})
    tensors.update({f"audio_encoder.{k}": v for k, v in ckpt.codec_state.items()})
    # safetensors refuses tensors that share memory (views, T5's tied embeddings): store plain copies
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, folder / "model.safetensors")
    if ckpt.tokenizer_dir is not None and Path(ckpt.tokenizer_dir).resolve() != folder.resolve():
        for name in TOKENIZER_FILES:
            if (Path(ckpt.tokenizer_dir) / name).is_file():
                shutil.copy2(Path(ckpt.tokenizer_dir) / name, folder / name)


def _config_args(raw: dict) -> dict:
    return {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version", "architectures")}
