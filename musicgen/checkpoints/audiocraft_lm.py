"""audiocraft's MusicGen LM in this engine's terms: config translation and tensor names, both ways.

- reading: `_lm_config_from_xp` turns the LM's `xp.cfg` into an `LMConfig` (+ chroma settings, T5 name,
  sample rate), refusing every setting this engine does not implement;
- tensor names: `_lm_rows` pairs audiocraft's `LMModel` names with `musicgen.lm.LanguageModel`'s;
  `_lm_state_from_audiocraft` / `_lm_state_to_audiocraft` rename (and split or join the per-codebook
  embeddings and heads), `_check_lm_state` checks a state before it is written;
- writing: `_lm_xp_cfg` builds the `xp.cfg` audiocraft's builders rebuild the LM from.

`T5_WIDTHS` (the T5 names audiocraft builds) lives here because the LM's text projection depends on it;
`audiocraft_layout` re-exports it. This module knows nothing of files or folders (`audiocraft_layout`
reads and writes those); of its siblings it imports only `audiocraft_xpcfg`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from ..config import ChromaConfig, LMConfig, ModelConfig, StyleConfig
from ..errors import CheckpointError
from .audiocraft_style import style_config_from_xp, style_xp
from .audiocraft_xpcfg import _MISSING, _as_int, _is_number, _mismatch, _XpCfg

# audiocraft's T5Conditioner.MODELS_DIMS: the width of each T5 it accepts by name. The description
# conditioner's output_proj is [dim, width], so the name fixes `text_dim`. (audiocraft also lists
# google/flan-t5-xl and -xxl as names but has no width for them, so it cannot build them either.)
T5_WIDTHS = {
    "t5-small": 512,
    "t5-base": 768,
    "t5-large": 1024,
    "t5-3b": 1024,
    "t5-11b": 1024,
    "google/flan-t5-small": 512,
    "google/flan-t5-base": 768,
    "google/flan-t5-large": 1024,
}

_DESC_PROJ = "condition_provider.conditioners.description.output_proj"
_CHROMA_PROJ = "condition_provider.conditioners.self_wav.output_proj"
# torchaudio's Spectrogram keeps its analysis window as a persistent buffer inside the chroma extractor:
# a fixed Hann window, not a learned weight, so it is checked for shape and otherwise ignored
_CHROMA_WINDOW = "condition_provider.conditioners.self_wav.chroma.spec.window"


# -------------------------------------------------------------------------------------- reading xp.cfg


def _lm_config_from_xp(
    xp: _XpCfg,
) -> tuple[LMConfig, ChromaConfig | None, StyleConfig | None, str, int | None]:
    """LMConfig (+ chroma or style settings, T5 name, sample rate) from the LM's xp.cfg; refuses what we
    cannot run."""
    lm_model = xp.get("lm_model", None)
    if lm_model != "transformer_lm":
        raise CheckpointError(
            f"{xp.path}: xp.cfg 'lm_model' is {lm_model!r}; only MusicGen's 'transformer_lm' is supported "
            "(MAGNeT and other models are not)"
        )
    tl = "transformer_lm"
    dim = xp.get_int(f"{tl}.dim")
    num_heads = xp.get_int(f"{tl}.num_heads")
    num_layers = xp.get_int(f"{tl}.num_layers")
    # LMModel builds the feed-forward width as int(hidden_scale * dim)
    ffn_dim = int(xp.get_float(f"{tl}.hidden_scale", 4) * dim)
    n_q = xp.get_int(f"{tl}.n_q", 8)
    card = xp.get_int(f"{tl}.card", 1024)

    # Defaults below are those of audiocraft's Python classes, which apply when a key is absent.
    gpt = "MusicGen's transformer"
    xp.require(f"{tl}.norm_first", False, True, f"{gpt} is pre-norm")
    xp.require(f"{tl}.norm", "layer_norm", "layer_norm", f"{gpt} uses LayerNorm")
    xp.require(f"{tl}.activation", "relu", "gelu", f"{gpt} uses GELU")
    for bias in ("bias_ff", "bias_attn", "bias_proj"):
        xp.require(f"{tl}.{bias}", True, False, f"{gpt} has no biases in attention, feed-forward and heads")
    xp.require(f"{tl}.positional_embedding", "sin", "sin", f"{gpt} uses sinusoidal positions")
    xp.require(f"{tl}.max_period", 10000.0, 10000.0, "sinusoidal period")
    xp.require(f"{tl}.positional_scale", 1.0, 1.0, "sinusoidal scale")
    xp.require(f"{tl}.layer_scale", None, None, "no LayerScale")
    xp.require(f"{tl}.qk_layer_norm", False, False, "no query/key norm")
    xp.require(f"{tl}.qk_layer_norm_cross", False, False, "no query/key norm")
    xp.require(f"{tl}.kv_repeat", 1, 1, "no grouped-query attention")
    xp.require(f"{tl}.past_context", None, None, "unbounded causal attention")
    xp.require(f"{tl}.causal", False, True, "causal attention")
    xp.require(
        "fuser.cross_attention_pos_emb", False, False, "no positions added to the cross-attention source"
    )

    # Stereo MusicGen models run one mono EnCodec per channel and interleave the codebooks [1L, 1R, 2L, ...]
    channels = xp.get_int("channels", 1)
    interleave = bool(xp.get("interleave_stereo_codebooks.use", False))
    if interleave:
        xp.require(
            "interleave_stereo_codebooks.per_timestep",
            False,
            False,
            "stereo codebooks interleave per codebook",
        )
        if channels != 2:
            raise CheckpointError(
                f"{xp.path}: xp.cfg interleaves stereo codebooks but 'channels' is {channels}"
            )
        audio_channels = 2
    elif channels != 1:
        raise CheckpointError(
            f"{xp.path}: xp.cfg 'channels' is {channels} without interleave_stereo_codebooks.use; only mono "
            "models and stereo models with interleaved codebooks are supported"
        )
    else:
        audio_channels = 1
    if n_q % audio_channels:
        raise CheckpointError(
            f"{xp.path}: xp.cfg transformer_lm.n_q {n_q} is not a multiple of {audio_channels} channels"
        )
    comp_n_q = xp.get("compression_model_n_q", None)
    if comp_n_q is not None and _as_int(comp_n_q, "compression_model_n_q") != n_q // audio_channels:
        raise CheckpointError(
            f"{xp.path}: xp.cfg compression_model_n_q is {comp_n_q}, but the LM models {n_q} codebooks over "
            f"{audio_channels} channel(s), i.e. {n_q // audio_channels} per channel"
        )

    delays = _delays_from_xp(xp, n_q)
    cross, prepend = _fuser_from_xp(xp)
    conds = xp.get("conditioners", None) or {}
    if not isinstance(conds, dict):
        raise CheckpointError(f"{xp.path}: xp.cfg 'conditioners' is not a mapping")
    names = sorted(k for k in conds if k != "args")  # 'args' holds ConditioningProvider options
    prepended = prepend == ["description", "self_wav"]
    expected_names = ["description", "self_wav"] if prepended else ["description"]
    if names != expected_names:
        raise CheckpointError(
            f"{xp.path}: xp.cfg conditioners are {names}; this engine supports text models (a T5 "
            "'description', by cross-attention), melody models ('description' + chroma 'self_wav', "
            "prepended) and style models ('description' + style 'self_wav', prepended)"
        )
    style_model = prepended and xp.get("conditioners.self_wav.model", None) == "style"
    melody = prepended and not style_model
    t5_name = _t5_name_from_xp(xp)
    text_dim = T5_WIDTHS[t5_name]

    chroma = style = None
    extra: dict[str, Any] = {}
    if melody:
        chroma, chroma_length = _chroma_from_xp(xp)
        extra = {"num_chroma": chroma.num_chroma, "chroma_length": chroma_length}
    if style_model:
        style = style_config_from_xp(xp)
        extra = {"style_dim": style.dim}
    try:
        lm = LMConfig(
            dim=dim,
            num_heads=num_heads,
            num_layers=num_layers,
            ffn_dim=ffn_dim,
            num_codebooks=n_q,
            card=card,
            audio_channels=audio_channels,
            text_dim=text_dim,
            conditioning="style" if style_model else "prepend" if melody else "cross",
            **extra,
        )
    except ValueError as e:
        raise CheckpointError(
            f"{xp.path}: xp.cfg transformer_lm does not describe a valid model: {e}"
        ) from None
    if delays != lm.delays:
        raise CheckpointError(
            f"{xp.path}: xp.cfg codebooks_pattern.delay.delays is {delays}; a "
            f"{'stereo' if audio_channels == 2 else 'mono'} MusicGen with {n_q} codebooks uses {lm.delays}"
        )
    assert not (cross and prepended)
    sample_rate = xp.get("sample_rate", None)
    return (
        lm,
        chroma,
        style,
        t5_name,
        None if sample_rate is None else _as_int(sample_rate, f"{xp.path}: sample_rate"),
    )


def _delays_from_xp(xp: _XpCfg, n_q: int) -> list[int]:
    modeling = xp.get("codebooks_pattern.modeling", None)
    if modeling is None:
        # builders.get_lm_model falls back to transformer_lm.q_modeling with delays range(n_q)
        modeling = xp.get("transformer_lm.q_modeling", None)
        delays: Any = list(range(n_q))
    else:
        delays = xp.get("codebooks_pattern.delay.delays", None)
        delays = list(range(n_q)) if delays is None else delays
    if modeling != "delay":
        raise CheckpointError(
            f"{xp.path}: xp.cfg codebooks pattern is {modeling!r}; only MusicGen's 'delay' pattern "
            "is supported"
        )
    for key in ("flatten_first", "empty_initial"):
        xp.require(f"codebooks_pattern.delay.{key}", 0, 0, "plain delay pattern")
    if not isinstance(delays, list):
        raise CheckpointError(f"{xp.path}: xp.cfg codebooks_pattern.delay.delays is not a list")
    return [_as_int(d, f"{xp.path}: codebooks_pattern.delay.delays") for d in delays]


def _fuser_from_xp(xp: _XpCfg) -> tuple[bool, list[str]]:
    """(text by cross-attention?, sorted prepended conditions), refusing other fusings."""
    fuser = {m: xp.get(f"fuser.{m}", []) or [] for m in ("sum", "prepend", "cross", "input_interpolate")}
    if fuser["sum"] or fuser["input_interpolate"]:
        raise CheckpointError(
            f"{xp.path}: xp.cfg fuser sums or interpolates conditions ({fuser}); not supported"
        )
    cross, prepend = list(fuser["cross"]), sorted(fuser["prepend"])
    if cross == ["description"] and not prepend:
        return True, []
    if not cross and prepend == ["description", "self_wav"]:
        return False, prepend
    raise CheckpointError(
        f"{xp.path}: xp.cfg fuser is cross={cross}, prepend={prepend}; supported are text models "
        "(cross=[description]) and melody or style models (prepend=[self_wav, description])"
    )


def _t5_name_from_xp(xp: _XpCfg) -> str:
    model = xp.get("conditioners.description.model", None)
    if model != "t5":
        raise CheckpointError(
            f"{xp.path}: xp.cfg conditioners.description.model is {model!r}; only 't5' is supported"
        )
    name = xp.get("conditioners.description.t5.name")
    if name not in T5_WIDTHS:
        raise CheckpointError(
            f"{xp.path}: xp.cfg conditioners.description.t5.name is {name!r}; audiocraft builds only "
            f"{sorted(T5_WIDTHS)}"
        )
    xp.require(
        "conditioners.description.t5.finetune",
        _MISSING,
        False,
        "a fine-tuned T5 would live inside the LM state; only frozen T5 models are supported",
    )
    xp.require(
        "conditioners.description.t5.normalize_text",
        False,
        False,
        "text is tokenized as given, not lemmatized",
    )
    return name


def _chroma_from_xp(xp: _XpCfg) -> tuple[ChromaConfig, int]:
    """ChromaConfig and the prepended chroma length, as ChromaStemConditioner computes them."""
    model = xp.get("conditioners.self_wav.model", None)
    if model != "chroma_stem":
        raise CheckpointError(
            f"{xp.path}: xp.cfg conditioners.self_wav.model is {model!r}; only 'chroma_stem' is supported"
        )
    cs = "conditioners.self_wav.chroma_stem"
    sample_rate = xp.get_int(f"{cs}.sample_rate")
    n_chroma = xp.get_int(f"{cs}.n_chroma")
    radix2_exp = xp.get_int(f"{cs}.radix2_exp")
    # ChromaExtractor: winlen = winlen or 2**radix2_exp; nfft = nfft or winlen; winhop = winhop or winlen // 4
    winlen = xp.get(f"{cs}.winlen", None)
    winlen = 2**radix2_exp if winlen is None else _as_int(winlen, f"{cs}.winlen")
    nfft = xp.get(f"{cs}.nfft", None)
    nfft = winlen if nfft is None else _as_int(nfft, f"{cs}.nfft")
    winhop = xp.get(f"{cs}.winhop", None)
    winhop = winlen // 4 if winhop is None else _as_int(winhop, f"{cs}.winhop")
    if winlen != nfft:
        raise CheckpointError(f"{xp.path}: xp.cfg {cs} has winlen {winlen} != nfft {nfft}; not supported")
    xp.require(f"{cs}.argmax", False, True, "MusicGen's melody chroma is one-hot (argmax)")
    norm = xp.get(f"{cs}.norm", math.inf)
    if not (_is_number(norm) and math.isinf(float(norm))):
        raise CheckpointError(
            f"{xp.path}: xp.cfg {cs}.norm is {norm!r}; only the max norm (inf) is supported"
        )
    duration = xp.get_float("dataset.segment_duration")
    chroma = ChromaConfig(n_fft=nfft, hop_length=winhop, sample_rate=sample_rate, num_chroma=n_chroma)
    return chroma, _chroma_length(sample_rate, duration, nfft, winhop)


def _chroma_length(sample_rate: int, duration: float, n_fft: int, hop: int) -> int:
    """Frames ChromaStemConditioner._get_chroma_len gets from `duration` seconds of silence.

    The extractor pads inputs shorter than n_fft up to n_fft, then runs a centred STFT (n_fft // 2 of
    padding on each side), so a 30 s, 32 kHz input at hop 4096 gives 1 + 960000 // 4096 = 235 frames.
    """
    length = max(int(sample_rate * duration), n_fft)
    return 1 + (length + 2 * (n_fft // 2) - n_fft) // hop


# ------------------------------------------------------------------------------------- LM tensor names


def _lm_rows(lm: LMConfig) -> list[tuple[str, str, tuple[int, ...]]]:
    """(audiocraft name, our name, shape) of every LM tensor except the per-codebook embeddings and heads.

    audiocraft's StreamingTransformerLayer keeps nn.TransformerEncoderLayer's names (norm1, norm2, linear1,
    linear2) and adds `cross_attention` + `norm_cross`; its attention packs q, k, v rows in `in_proj_weight`.
    """
    d, f = lm.dim, lm.ffn_dim
    rows: list[tuple[str, str, tuple[int, ...]]] = []
    for i in range(lm.num_layers):
        a, o = f"transformer.layers.{i}.", f"layers.{i}."
        rows += [
            (a + "norm1.weight", o + "norm1.weight", (d,)),
            (a + "norm1.bias", o + "norm1.bias", (d,)),
            (a + "self_attn.in_proj_weight", o + "self_attn.in_proj.weight", (3 * d, d)),
            (a + "self_attn.out_proj.weight", o + "self_attn.out_proj.weight", (d, d)),
        ]
        if lm.conditioning == "cross":
            rows += [
                (a + "norm_cross.weight", o + "norm_cross.weight", (d,)),
                (a + "norm_cross.bias", o + "norm_cross.bias", (d,)),
                (a + "cross_attention.in_proj_weight", o + "cross_attn.in_proj.weight", (3 * d, d)),
                (a + "cross_attention.out_proj.weight", o + "cross_attn.out_proj.weight", (d, d)),
            ]
        rows += [
            (a + "norm2.weight", o + "norm2.weight", (d,)),
            (a + "norm2.bias", o + "norm2.bias", (d,)),
            (a + "linear1.weight", o + "ff1.weight", (f, d)),
            (a + "linear2.weight", o + "ff2.weight", (d, f)),
        ]
    rows += [
        ("out_norm.weight", "out_norm.weight", (d,)),
        ("out_norm.bias", "out_norm.bias", (d,)),
        (_DESC_PROJ + ".weight", "text_proj.weight", (d, lm.text_dim)),
        (_DESC_PROJ + ".bias", "text_proj.bias", (d,)),
    ]
    if lm.conditioning == "prepend":
        rows += [
            (_CHROMA_PROJ + ".weight", "chroma_proj.weight", (d, lm.num_chroma)),
            (_CHROMA_PROJ + ".bias", "chroma_proj.bias", (d,)),
        ]
    if lm.conditioning == "style":  # the style conditioner's output_proj, the same key as chroma's
        rows += [
            (_CHROMA_PROJ + ".weight", "style_proj.weight", (d, lm.style_dim)),
            (_CHROMA_PROJ + ".bias", "style_proj.bias", (d,)),
        ]
    return rows


def _describe(lm: LMConfig) -> str:
    kind = {"prepend": "melody", "style": "style"}.get(lm.conditioning, "text")
    return (
        f"{kind} LM with dim={lm.dim}, num_layers={lm.num_layers}, ffn_dim={lm.ffn_dim}, "
        f"n_q={lm.num_codebooks}, card={lm.card}, text_dim={lm.text_dim}"
    )


def _lm_state_from_audiocraft(
    state: dict[str, torch.Tensor], config: ModelConfig, path: Path
) -> dict[str, torch.Tensor]:
    lm = config.lm
    k_, d, card = lm.num_codebooks, lm.dim, lm.card
    rows = _lm_rows(lm)
    expected = {a: shape for a, _, shape in rows}
    for k in range(k_):
        expected[f"emb.{k}.weight"] = (card + 1, d)  # card + 1: the special token has its own row
        expected[f"linears.{k}.weight"] = (card, d)
    ignored = {_CHROMA_WINDOW: (config.chroma.n_fft,)} if config.chroma is not None else {}

    # Without custom/memory_efficient attention audiocraft wraps nn.MultiheadAttention as `.mha`, and its
    # loader accepts both spellings; so do we.
    state = {re.sub(r"\.(self_attn|cross_attention)\.mha\.", r".\1.", name): t for name, t in state.items()}
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected and n not in ignored]
    wrong = [
        f"{n} {tuple(state[n].shape)} (expected {shape})"
        for n, shape in {**expected, **ignored}.items()
        if n in state and tuple(state[n].shape) != shape
    ]
    if missing or unexpected or wrong:
        hint = ""
        if any(".t5." in n for n in unexpected):
            hint = " (the T5 weights are inside the LM state: fine-tuned T5 models are not supported)"
        raise CheckpointError(
            f"{path}: best_state does not fit the {_describe(lm)} that xp.cfg describes: "
            f"{_mismatch(missing, unexpected, wrong)}{hint}"
        )
    out: dict[str, torch.Tensor] = {}
    # embed.weight: [K * (card + 1), D], codebook k's table at rows k*(card+1):(k+1)*(card+1)
    out["embed.weight"] = torch.cat([state[f"emb.{k}.weight"] for k in range(k_)])
    for a, o, _ in rows:
        out[o] = state[a]
    # heads.weight: [K * card, D], codebook k's head at rows k*card:(k+1)*card
    out["heads.weight"] = torch.cat([state[f"linears.{k}.weight"] for k in range(k_)])
    return out


def _check_lm_state(state: dict[str, torch.Tensor], lm: LMConfig, where: str) -> None:
    k_, d, card = lm.num_codebooks, lm.dim, lm.card
    expected = {o: shape for _, o, shape in _lm_rows(lm)}
    expected["embed.weight"] = (k_ * (card + 1), d)
    expected["heads.weight"] = (k_ * card, d)
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected]
    wrong = [
        f"{n} {tuple(state[n].shape)} (expected {shape})"
        for n, shape in expected.items()
        if n in state and tuple(state[n].shape) != shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{where}: lm_state does not fit the {_describe(lm)}: {_mismatch(missing, unexpected, wrong)}"
        )


def _lm_state_to_audiocraft(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    lm = config.lm
    out: dict[str, torch.Tensor] = {}
    # clones, so each saved tensor owns its storage instead of pointing into the concatenated tables
    for k, table in enumerate(state["embed.weight"].split(lm.card + 1)):
        out[f"emb.{k}.weight"] = table.clone()  # [card + 1, D]
    for a, o, _ in _lm_rows(lm):
        out[a] = state[o]
    for k, head in enumerate(state["heads.weight"].split(lm.card)):
        out[f"linears.{k}.weight"] = head.clone()  # [card, D]
    if config.chroma is not None:
        # torchaudio's default window; audiocraft's strict load_state_dict expects the buffer
        out[_CHROMA_WINDOW] = torch.hann_window(config.chroma.n_fft)
    return out


# -------------------------------------------------------------------------------------- writing xp.cfg


def _audiocraft_t5_name(name: str, where: str) -> str:
    """The T5 name audiocraft knows for `name` ('google-t5/t5-base' and local '.../t5-base' -> 't5-base')."""
    if name in T5_WIDTHS:
        return name
    base = name.rstrip("/").split("/")[-1]
    for candidate in (base, f"google/{base}"):
        if candidate in T5_WIDTHS:
            return candidate
    raise CheckpointError(
        f"{where}: text encoder {name!r} has no audiocraft name; audiocraft builds only {sorted(T5_WIDTHS)}"
    )


def _segment_duration(lm: LMConfig, chroma: ChromaConfig) -> float:
    """A training duration from which ChromaStemConditioner derives exactly `lm.chroma_length` frames."""
    if _chroma_length(chroma.sample_rate, 30.0, chroma.n_fft, chroma.hop_length) == lm.chroma_length:
        return 30.0  # MusicGen's own; keeps the usual value when it fits
    # aim at the middle of the hop so int(sample_rate * duration) lands in the right frame despite rounding
    samples = (lm.chroma_length - 1) * chroma.hop_length + chroma.hop_length // 2
    duration = samples / chroma.sample_rate
    if _chroma_length(chroma.sample_rate, duration, chroma.n_fft, chroma.hop_length) != lm.chroma_length:
        raise CheckpointError(
            f"chroma_length {lm.chroma_length} cannot be produced by audiocraft's chroma extractor "
            f"(n_fft {chroma.n_fft}, hop {chroma.hop_length})"
        )
    return duration


def _lm_xp_cfg(config: ModelConfig, t5_name: str, codec_is_pointer: bool) -> dict[str, Any]:
    """The LM's xp.cfg: every key builders.get_lm_model, get_conditioner_provider, get_condition_fuser,
    get_codebooks_pattern_provider, get_wrapped_compression_model and MusicGen read."""
    lm = config.lm
    hidden_scale: float | int = lm.ffn_dim / lm.dim
    if float(hidden_scale).is_integer():
        hidden_scale = int(hidden_scale)
    if int(hidden_scale * lm.dim) != lm.ffn_dim:
        raise CheckpointError(f"ffn_dim {lm.ffn_dim} is not int(hidden_scale * dim) for any hidden_scale")
    per_channel = lm.num_codebooks // lm.audio_channels
    conditioners: dict[str, Any] = {
        "description": {
            "model": "t5",
            "t5": {"name": t5_name, "finetune": False, "word_dropout": 0.0, "normalize_text": False},
        }
    }
    fuser: dict[str, Any] = {
        "cross_attention_pos_emb": False,
        "cross_attention_pos_emb_scale": 1.0,
        "sum": [],
        "prepend": [],
        "cross": ["description"],
        "input_interpolate": [],
    }
    duration = 30.0
    if config.is_melody:
        chroma = config.chroma
        assert chroma is not None
        stem: dict[str, Any] = {"sample_rate": chroma.sample_rate, "n_chroma": chroma.num_chroma}
        if chroma.n_fft & (chroma.n_fft - 1) == 0:
            stem["radix2_exp"] = chroma.n_fft.bit_length() - 1
        else:  # radix2_exp is required but overridden by the explicit sizes
            stem.update(radix2_exp=chroma.n_fft.bit_length(), nfft=chroma.n_fft, winlen=chroma.n_fft)
        if chroma.hop_length != chroma.n_fft // 4:
            stem["winhop"] = chroma.hop_length
        stem.update(argmax=True, match_len_on_eval=False, eval_wavs=None, n_eval_wavs=0, cache_path=None)
        conditioners["self_wav"] = {"model": "chroma_stem", "chroma_stem": stem}
        fuser.update(prepend=["self_wav", "description"], cross=[])
        duration = _segment_duration(lm, chroma)
    if config.is_style:
        assert config.style is not None
        conditioners["self_wav"] = style_xp(config.style, lm.num_codebooks)
        fuser.update(prepend=["self_wav", "description"], cross=[])
    xp: dict[str, Any] = {
        "solver": "musicgen",
        "sample_rate": config.sample_rate,
        "channels": lm.audio_channels,
        "compression_model_n_q": per_channel,
        "interleave_stereo_codebooks": {"use": lm.audio_channels == 2, "per_timestep": False},
        "dataset": {"segment_duration": duration},
        "lm_model": "transformer_lm",
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": lm.delays, "flatten_first": 0, "empty_initial": 0},
        },
        # every key is passed on as a keyword to LMModel / StreamingTransformer, so only valid ones appear
        "transformer_lm": {
            "dim": lm.dim,
            "num_heads": lm.num_heads,
            "num_layers": lm.num_layers,
            "hidden_scale": hidden_scale,
            "n_q": lm.num_codebooks,
            "card": lm.card,
            "dropout": 0.0,
            "emb_lr": None,
            "activation": "gelu",
            "norm_first": True,
            "bias_ff": False,
            "bias_attn": False,
            "bias_proj": False,
            "past_context": None,
            "causal": True,
            "custom": False,
            "memory_efficient": True,
            "attention_as_float32": False,
            "layer_scale": None,
            "positional_embedding": "sin",
            "xpos": False,
            "checkpointing": "none",
            "weight_init": None,
            "depthwise_init": None,
            "zero_bias_init": False,
            "norm": "layer_norm",
            "cross_attention": lm.conditioning == "cross",
            "qk_layer_norm": False,
            "qk_layer_norm_cross": False,
            "attention_dropout": None,
            "kv_repeat": 1,
            "two_step_cfg": False,
        },
        "classifier_free_guidance": {"training_dropout": 0.0, "inference_coef": 3.0},
        "attribute_dropout": {},
        "fuser": fuser,
        "conditioners": conditioners,
        "device": "cpu",
        "dtype": "float32",
    }
    if codec_is_pointer:
        xp["compression_model_checkpoint"] = f"//pretrained/{config.codec_name}"
    return xp
