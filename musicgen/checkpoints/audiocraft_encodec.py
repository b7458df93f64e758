"""audiocraft's EnCodec in transformers' terms: config translation and tensor names, both ways.

A bundled codec (`compression_state_dict.bin` holding `best_state` + `xp.cfg`) is an audiocraft SEANet
EnCodec; this engine runs it as transformers' `EncodecModel`. This module holds the whole translation:

- `_encodec_config_from_xp` / `encodec_xp_cfg`: audiocraft `xp.cfg` <-> `EncodecConfig.to_dict()`,
  refusing the audiocraft settings transformers' EnCodec cannot express;
- `encodec_state_from_audiocraft` / `encodec_state_to_audiocraft`: tensor names, through `_ac_to_hf` /
  `_hf_to_ac`, with `check_encodec_state` checking names and shapes against a meta-device EncodecModel.

It knows nothing of files or folders (`audiocraft_layout` reads and writes those); of its siblings it
imports only `audiocraft_xpcfg`, so it never imports `audiocraft_layout`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import CheckpointError
from .audiocraft_xpcfg import _as_float, _as_int, _mismatch, _XpCfg

# audiocraft SEANet constructor defaults, which apply when xp.cfg leaves a key out
_SEANET_DEFAULTS: dict[str, Any] = {
    "channels": 1,
    "dimension": 128,
    "n_filters": 32,
    "n_residual_layers": 3,
    "ratios": [8, 5, 4, 2],
    "activation": "ELU",
    "activation_params": {"alpha": 1.0},
    "norm": "none",
    "norm_params": {},
    "kernel_size": 7,
    "last_kernel_size": 7,
    "residual_kernel_size": 3,
    "dilation_base": 2,
    "causal": False,
    "pad_mode": "reflect",
    "true_skip": True,
    "compress": 2,
    "lstm": 0,
    "disable_norm_outer_blocks": 0,
}
_DECODER_ONLY = {"trim_right_ratio": 1.0, "final_activation": None, "final_activation_params": None}


def _encodec_config_from_xp(xp: _XpCfg) -> dict[str, Any]:
    """transformers' `EncodecConfig.to_dict()` (through JSON) for the audiocraft EnCodec an `xp.cfg` describes.

    transformers' EnCodec has one config for encoder and decoder, always ELU, always an LSTM, and weight or
    time-group norm on every convolution; audiocraft settings outside that are refused.
    """
    from transformers import EncodecConfig

    path = xp.path
    if xp.get("compression_model", None) != "encodec":
        raise CheckpointError(
            f"{path}: xp.cfg compression_model is {xp.get('compression_model', None)!r}, expected 'encodec'"
        )
    xp.require("encodec.autoencoder", None, "seanet", "transformers' EnCodec is a SEANet")
    xp.require("encodec.quantizer", None, "rvq", "transformers' EnCodec uses residual vector quantization")

    seanet = xp.get("seanet", {}) or {}
    base = {k: seanet.get(k, v) for k, v in _SEANET_DEFAULTS.items()}
    overrides = {"encoder": seanet.get("encoder") or {}, "decoder": seanet.get("decoder") or {}}
    decoder_only = dict(_DECODER_ONLY)
    for side, over in overrides.items():
        for key, value in over.items():
            if side == "decoder" and key in decoder_only:
                decoder_only[key] = value
            elif key not in base or base[key] != value:
                raise CheckpointError(
                    f"{path}: xp.cfg seanet.{side}.{key} = {value!r} makes encoder and decoder differ; "
                    "transformers' EnCodec has one config for both"
                )
    unknown = sorted(set(seanet) - set(_SEANET_DEFAULTS) - {"encoder", "decoder"})
    if unknown:
        raise CheckpointError(f"{path}: xp.cfg seanet has settings this reader does not know: {unknown}")

    def refuse(key: str, value: Any, why: str) -> CheckpointError:
        return CheckpointError(f"{path}: xp.cfg {key} is {value!r}; {why}")

    if base["activation"] != "ELU" or not math.isclose(
        float((base["activation_params"] or {}).get("alpha", 1.0)), 1.0
    ):
        raise refuse(
            "seanet.activation", (base["activation"], base["activation_params"]), "transformers uses ELU(1.0)"
        )
    if base["norm"] not in ("weight_norm", "time_group_norm"):
        raise refuse("seanet.norm", base["norm"], "transformers supports weight_norm and time_group_norm")
    if base["norm_params"]:
        raise refuse("seanet.norm_params", base["norm_params"], "transformers takes no norm parameters")
    if int(base["disable_norm_outer_blocks"]) != 0:
        raise refuse(
            "seanet.disable_norm_outer_blocks",
            base["disable_norm_outer_blocks"],
            "transformers norms every block",
        )
    if int(base["lstm"]) < 1:
        raise refuse("seanet.lstm", base["lstm"], "transformers' EnCodec always has an LSTM")
    if decoder_only["final_activation"] is not None:
        raise refuse(
            "seanet.decoder.final_activation", decoder_only["final_activation"], "transformers has none"
        )

    channels = _as_int(base["channels"], f"{path}: seanet.channels")
    sample_rate = xp.get_int("encodec.sample_rate")
    bins = xp.get_int("rvq.bins", 1024)
    n_q = xp.get_int("rvq.n_q", 8)
    if bins & (bins - 1):
        raise refuse("rvq.bins", bins, "transformers needs a power of two")
    ratios = [_as_int(r, f"{path}: seanet.ratios") for r in base["ratios"]]
    kwargs = {
        "sampling_rate": sample_rate,
        "audio_channels": channels,
        "normalize": bool(xp.get("encodec.renormalize", False)),
        "chunk_length_s": None,
        "overlap": None,
        "hidden_size": _as_int(base["dimension"], "seanet.dimension"),
        "num_filters": _as_int(base["n_filters"], "seanet.n_filters"),
        "num_residual_layers": _as_int(base["n_residual_layers"], "seanet.n_residual_layers"),
        "upsampling_ratios": ratios,
        "norm_type": base["norm"],
        "kernel_size": _as_int(base["kernel_size"], "seanet.kernel_size"),
        "last_kernel_size": _as_int(base["last_kernel_size"], "seanet.last_kernel_size"),
        "residual_kernel_size": _as_int(base["residual_kernel_size"], "seanet.residual_kernel_size"),
        "dilation_growth_rate": _as_int(base["dilation_base"], "seanet.dilation_base"),
        "use_causal_conv": bool(base["causal"]),
        "pad_mode": base["pad_mode"],
        "compress": _as_int(base["compress"], "seanet.compress"),
        "num_lstm_layers": _as_int(base["lstm"], "seanet.lstm"),
        "trim_right_ratio": _as_float(decoder_only["trim_right_ratio"], "seanet.decoder.trim_right_ratio"),
        "codebook_size": bins,
        "codebook_dim": _as_int(base["dimension"], "seanet.dimension"),
        # audiocraft's true_skip is an identity shortcut; transformers' use_conv_shortcut is the opposite
        "use_conv_shortcut": not base["true_skip"],
        "target_bandwidths": [_bandwidth_for(n_q, sample_rate, ratios, bins)],
    }
    try:
        config = EncodecConfig(**kwargs)
    except Exception as e:  # transformers validates the config with its own error types
        raise CheckpointError(
            f"{path}: xp.cfg describes an EnCodec transformers cannot build ({e})"
        ) from None
    if config.num_quantizers != n_q:
        raise CheckpointError(f"{path}: cannot express rvq.n_q {n_q} as a transformers EnCodec bandwidth")
    # through JSON, so the dict equals what ModelConfig.to_json / from_json give back (id2label keys as str)
    return json.loads(json.dumps(config.to_dict()))


def _bandwidth_for(n_q: int, sample_rate: int, ratios: list[int], bins: int) -> float:
    """The kbps transformers' EncodecConfig turns back into n_q quantizers (its num_quantizers property)."""
    frame_rate = math.ceil(sample_rate / math.prod(ratios))
    bits = math.ceil(math.log2(bins))
    return n_q * frame_rate * bits / 1000


def _weight_norm_names() -> tuple[str, str]:
    # transformers applies the parametrization weight norm when torch has it, the old one otherwise
    if hasattr(torch.nn.utils.parametrizations, "weight_norm"):
        return "parametrizations.weight.original0", "parametrizations.weight.original1"
    return "weight_g", "weight_v"


_AC_QUANT = re.compile(r"quantizer\.vq\.layers\.(\d+)\._codebook\.(inited|cluster_size|embed|embed_avg)")
_AC_LSTM = re.compile(r"(encoder|decoder)\.model\.(\d+)\.lstm\.(\w+)")
_AC_CONV = re.compile(
    r"(encoder|decoder)\.model\.(\d+)\.((?:block\.\d+\.|shortcut\.)?)(conv|convtr)\."
    r"(?:(?:conv|convtr)\.(weight_g|weight_v|weight|bias)|norm\.(weight|bias))"
)
_HF_QUANT = re.compile(r"quantizer\.layers\.(\d+)\.codebook\.(inited|cluster_size|embed|embed_avg)")
_HF_LSTM = re.compile(r"(encoder|decoder)\.layers\.(\d+)\.lstm\.(\w+)")
_HF_CONV = re.compile(
    r"(encoder|decoder)\.layers\.(\d+)\.((?:block\.\d+\.|shortcut\.)?)"
    r"(?:conv\.(parametrizations\.weight\.original0|parametrizations\.weight\.original1|weight_g|weight_v|weight|bias)"
    r"|norm\.(weight|bias))"
)


def _ac_to_hf(name: str) -> str | None:
    """audiocraft EnCodec tensor name -> transformers EncodecModel name; None when it has no counterpart.

    Both build the SEANet as one flat list of modules (ELU activations included), so module indices carry
    over; audiocraft wraps each convolution twice (StreamableConv1d.conv = NormConv1d, NormConv1d.conv =
    nn.Conv1d, NormConv1d.norm = GroupNorm/Identity) where transformers has one `conv` and one `norm`.
    """
    if m := _AC_QUANT.fullmatch(name):
        return f"quantizer.layers.{m[1]}.codebook.{m[2]}"
    if m := _AC_LSTM.fullmatch(name):
        return f"{m[1]}.layers.{m[2]}.lstm.{m[3]}"
    if m := _AC_CONV.fullmatch(name):
        prefix = f"{m[1]}.layers.{m[2]}.{m[3]}"
        if m[6]:
            return f"{prefix}norm.{m[6]}"
        g, v = _weight_norm_names()
        return f"{prefix}conv.{ {'weight_g': g, 'weight_v': v}.get(m[5], m[5]) }"
    return None


def _hf_to_ac(name: str, transposed: set[int]) -> str | None:
    """transformers EncodecModel tensor name -> audiocraft name (the inverse of `_ac_to_hf`)."""
    if m := _HF_QUANT.fullmatch(name):
        return f"quantizer.vq.layers.{m[1]}._codebook.{m[2]}"
    if m := _HF_LSTM.fullmatch(name):
        return f"{m[1]}.model.{m[2]}.lstm.{m[3]}"
    if m := _HF_CONV.fullmatch(name):
        kind = "convtr" if m[1] == "decoder" and not m[3] and int(m[2]) in transposed else "conv"
        prefix = f"{m[1]}.model.{m[2]}.{m[3]}{kind}."
        if m[5]:
            return f"{prefix}norm.{m[5]}"
        param = {
            "parametrizations.weight.original0": "weight_g",
            "parametrizations.weight.original1": "weight_v",
        }.get(m[4], m[4])
        return f"{prefix}{kind}.{param}"
    return None


def _decoder_transposed(codec_config: dict[str, Any]) -> set[int]:
    """Decoder module indices holding a transposed convolution.

    The decoder list is [conv, lstm, then per ratio: ELU, convtr, residual blocks...], in audiocraft and
    transformers alike.
    """
    per_ratio = 2 + int(codec_config["num_residual_layers"])
    return {2 + i * per_ratio + 1 for i in range(len(codec_config["upsampling_ratios"]))}


def encodec_state_from_audiocraft(
    state: dict[str, torch.Tensor], codec_config: dict[str, Any], where: str = "EnCodec state"
) -> dict[str, torch.Tensor]:
    """Renames an audiocraft EnCodec state dict to transformers' `EncodecModel` names.

    Checks that the result would load with `EncodecModel(EncodecConfig(**codec_config))
    .load_state_dict(..., strict=True)`; raises `CheckpointError` naming `where` otherwise.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in state.items():
        new = _ac_to_hf(name)
        if new is None:
            unknown.append(name)
        else:
            out[new] = tensor
    check_encodec_state(out, codec_config, where, unexpected=unknown)
    return out


def encodec_state_to_audiocraft(
    state: dict[str, torch.Tensor], codec_config: dict[str, Any], where: str = "codec_state"
) -> dict[str, torch.Tensor]:
    """Renames a transformers `EncodecModel` state dict to audiocraft's EnCodec names (inverse mapping)."""
    check_encodec_state(state, codec_config, where)
    transposed = _decoder_transposed(codec_config)
    out = {}
    for name, tensor in state.items():
        new = _hf_to_ac(name, transposed)
        assert new is not None, name  # check_encodec_state accepted only names EncodecModel has
        out[new] = tensor
    return out


def check_encodec_state(
    state: dict[str, torch.Tensor], codec_config: dict[str, Any], where: str, unexpected: Sequence[str] = ()
) -> None:
    """Raises CheckpointError unless `state` has exactly the names and shapes of transformers' EncodecModel.

    The model is built on the meta device, so this costs no memory; old-style `weight_g`/`weight_v`
    names are accepted too, since EncodecModel's weight-norm load hook converts them.
    """
    from transformers import EncodecConfig, EncodecModel

    try:
        config = EncodecConfig.from_dict(dict(codec_config))
        with torch.device("meta"):
            reference = EncodecModel(config).state_dict()
    except Exception as e:  # transformers validates the config with its own error types
        raise CheckpointError(
            f"{where}: the codec config does not build a transformers EncodecModel ({e})"
        ) from None
    expected = {n: tuple(t.shape) for n, t in reference.items()}
    g, v = _weight_norm_names()
    aliases = {n.replace(g, "weight_g").replace(v, "weight_v"): n for n in expected if n.endswith((g, v))}
    missing = set(expected)
    extra, wrong = list(unexpected), []
    for name, tensor in state.items():
        target = name if name in expected else aliases.get(name)
        if target is None:
            extra.append(name)
            continue
        missing.discard(target)
        if tuple(tensor.shape) != expected[target]:
            wrong.append(f"{name} {tuple(tensor.shape)} (expected {expected[target]})")
    if missing or extra or wrong:
        raise CheckpointError(
            f"{where}: the EnCodec weights do not fit the transformers EncodecModel their config describes "
            f"(hidden_size={config.hidden_size}, num_filters={config.num_filters}, "
            f"ratios={list(config.upsampling_ratios)}, num_quantizers={config.num_quantizers}): "
            f"{_mismatch(sorted(missing), extra, wrong)}"
        )


def encodec_xp_cfg(codec_config: dict[str, Any], where: str = "codec config") -> dict[str, Any]:
    """The audiocraft `xp.cfg` (as a dict) that `builders.get_compression_model` turns into this EnCodec."""
    from transformers import EncodecConfig

    c = EncodecConfig.from_dict(dict(codec_config))
    if c.chunk_length_s is not None:
        raise CheckpointError(
            f"{where}: chunked EnCodec (chunk_length_s={c.chunk_length_s}) has no audiocraft form"
        )
    if c.codebook_dim != c.hidden_size:
        raise CheckpointError(
            f"{where}: codebook_dim {c.codebook_dim} != hidden_size {c.hidden_size}; "
            "audiocraft has no codebook projection"
        )
    if c.use_causal_conv and c.normalize:
        raise CheckpointError(f"{where}: audiocraft's causal EnCodec cannot renormalize")
    ratios = [int(r) for r in c.upsampling_ratios]
    return {
        "compression_model": "encodec",
        "sample_rate": int(c.sampling_rate),
        "channels": int(c.audio_channels),
        "encodec": {
            "autoencoder": "seanet",
            "quantizer": "rvq",
            "sample_rate": int(c.sampling_rate),
            "channels": int(c.audio_channels),
            "causal": bool(c.use_causal_conv),
            "renormalize": bool(c.normalize),
        },
        "seanet": {
            "dimension": int(c.hidden_size),
            "channels": int(c.audio_channels),
            "causal": bool(c.use_causal_conv),
            "n_filters": int(c.num_filters),
            "n_residual_layers": int(c.num_residual_layers),
            "ratios": ratios,
            "activation": "ELU",
            "activation_params": {"alpha": 1.0},
            "norm": c.norm_type,
            "norm_params": {},
            "kernel_size": int(c.kernel_size),
            "last_kernel_size": int(c.last_kernel_size),
            "residual_kernel_size": int(c.residual_kernel_size),
            "dilation_base": int(c.dilation_growth_rate),
            "pad_mode": c.pad_mode,
            "true_skip": not c.use_conv_shortcut,
            "compress": int(c.compress),
            "lstm": int(c.num_lstm_layers),
            "disable_norm_outer_blocks": 0,
            "decoder": {
                "trim_right_ratio": float(c.trim_right_ratio),
                "final_activation": None,
                "final_activation_params": None,
            },
            "encoder": {},
        },
        # only n_q, bins and the dimension shape the weights; the rest are audiocraft's training defaults
        "rvq": {
            "n_q": int(c.num_quantizers),
            "q_dropout": False,
            "bins": int(c.codebook_size),
            "decay": 0.99,
            "kmeans_init": True,
            "kmeans_iters": 50,
            "threshold_ema_dead_code": 2,
            "orthogonal_reg_weight": 0.0,
            "orthogonal_reg_active_codes_only": False,
        },
        "device": "cpu",
        "dtype": "float32",
    }
