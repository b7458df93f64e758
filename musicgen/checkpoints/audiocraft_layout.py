"""audiocraft's exported layout: `state_dict.bin` + `compression_state_dict.bin` (+ our `text_encoder/`).

audiocraft (1.3) publishes MusicGen as two `torch.save` files, written by `audiocraft.utils.export`:

- `state_dict.bin`: `{'best_state': <LMModel state dict>, 'xp.cfg': <hydra config as a YAML string>,
  'version': ..., 'exported': True}`. `audiocraft.models.loaders.load_lm_model` rebuilds the LM from `xp.cfg`
  with `audiocraft.models.builders.get_lm_model` and loads `best_state` strictly.
- `compression_state_dict.bin`: either a pointer, `{'pretrained': 'facebook/encodec_32khz', ...}`, or a whole
  audiocraft EnCodec (`best_state` + `xp.cfg`, rebuilt by `builders.get_compression_model`).

Neither file holds the T5 weights: audiocraft downloads T5 by name. To make a bundle self-contained, this
module adds an optional `text_encoder/` sub-folder (what `T5EncoderModel.save_pretrained` writes, plus the
tokenizer files); audiocraft ignores it.

Files are read with `torch.load(weights_only=True)` only: an exported file holds tensors, strings and
numbers, so nothing in it needs code to be unpickled, and a file that does is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import FRAME_RATE, SAMPLE_RATE, ChromaConfig, LMConfig, ModelConfig
from ..errors import CheckpointError
from . import Checkpoint

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
TEXT_ENCODER_DIR = "text_encoder"
# the audiocraft release whose layout and builders this module follows; written as 'version'
AUDIOCRAFT_VERSION = "1.3.0"

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

# frame rates of the codecs a pointer file may name; any other name falls back to MusicGen's 50 Hz
_POINTER_FRAME_RATES = {"facebook/encodec_32khz": 50, "facebook/encodec_24khz": 75}

_DESC_PROJ = "condition_provider.conditioners.description.output_proj"
_CHROMA_PROJ = "condition_provider.conditioners.self_wav.output_proj"
# torchaudio's Spectrogram keeps its analysis window as a persistent buffer inside the chroma extractor:
# a fixed Hann window, not a learned weight, so it is checked for shape and otherwise ignored
_CHROMA_WINDOW = "condition_provider.conditioners.self_wav.chroma.spec.window"

_MISSING = object()


# --------------------------------------------------------------------------------------------- reading


def read_audiocraft(folder: Path) -> Checkpoint:
    """Reads an audiocraft checkpoint folder (`state_dict.bin` + `compression_state_dict.bin`).

    The model config is rebuilt from the LM's `xp.cfg` (and the codec's, when the codec is bundled); every
    tensor is checked against it. A `text_encoder/` sub-folder, when present, supplies the T5 weights,
    config and tokenizer. Raises `CheckpointError` naming the file for anything missing, unreadable,
    unsupported or not fitting the config.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: not a folder; an audiocraft checkpoint is a folder holding {LM_FILE}"
        )
    lm_path = folder / LM_FILE
    pkg = _load_exported(lm_path, "export_lm")
    xp = _XpCfg(_xp_cfg_of(pkg, lm_path), lm_path)
    best_state = _best_state_of(pkg, lm_path)

    lm, chroma, t5_name, sample_rate = _lm_config_from_xp(xp)
    codec_name, codec_cfg, codec_state, codec_sr, codec_frame_rate = _read_compression(
        folder / CODEC_FILE, lm, xp.get("sample_rate", None)
    )
    if sample_rate is None:
        sample_rate = codec_sr if codec_sr is not None else SAMPLE_RATE
    frame_rate = (
        codec_frame_rate if codec_frame_rate is not None else _POINTER_FRAME_RATES.get(codec_name, FRAME_RATE)
    )

    text_state, text_cfg, tokenizer_dir = _read_text_encoder(folder / TEXT_ENCODER_DIR)
    # the width of the T5 states is what the projection takes: a bundled T5 (fine-tuned, tiny) or the
    # tensor itself says it; the T5 loaded by name is checked against it when the model is built
    proj = best_state.get(_DESC_PROJ + ".weight")
    if text_cfg is not None:
        lm = dataclasses.replace(lm, text_dim=text_cfg.get("d_model", lm.text_dim))
    elif isinstance(proj, torch.Tensor) and proj.dim() == 2:
        lm = dataclasses.replace(lm, text_dim=int(proj.shape[1]))
    # a bundled codec has no name in audiocraft's files: codec_name keeps ModelConfig's default
    named = {"codec_name": codec_name} if codec_name is not None else {}
    config = ModelConfig(
        lm=lm,
        text_encoder=text_cfg,
        text_encoder_name=t5_name,
        codec=codec_cfg,
        chroma=chroma,
        sample_rate=sample_rate,
        frame_rate=frame_rate,
        **named,
    )
    lm_state = _lm_state_from_audiocraft(best_state, config, lm_path)
    return Checkpoint(
        config=config,
        lm_state=lm_state,
        text_encoder_state=text_state,
        codec_state=codec_state,
        tokenizer_dir=tokenizer_dir,
        source=str(folder),
    )


def _load_exported(path: Path, export_fn: str) -> dict:
    """torch.load of one exported file, never running code from it."""
    if not path.is_file():
        raise CheckpointError(
            f"{path}: file not found; an audiocraft checkpoint folder holds {LM_FILE} and {CODEC_FILE}"
        )
    try:
        pkg = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler names the first global (class or function) it refused to import
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            raise CheckpointError(
                f"{path}: cannot be read as a torch file (not written by torch.save, or damaged)"
            ) from None
        raise CheckpointError(
            f"{path} is not an exported audiocraft checkpoint: it holds Python objects ({found[1]}) that "
            "only unpickling code could rebuild, and this package never runs code from a checkpoint. Training "
            f"checkpoints must be exported first with audiocraft.utils.export.{export_fn}(checkpoint, "
            "out_file), which keeps only tensors and the config as a YAML string."
        ) from None
    except Exception as e:  # a truncated or foreign file: torch raises many different types
        raise CheckpointError(f"{path}: cannot be read as a torch file ({type(e).__name__}: {e})") from None
    if not isinstance(pkg, dict):
        raise CheckpointError(
            f"{path}: holds a {type(pkg).__name__}, not the dict audiocraft.utils.export writes "
            "({'best_state': ..., 'xp.cfg': ..., 'version': ..., 'exported': True})"
        )
    return pkg


def _xp_cfg_of(pkg: dict, path: Path) -> dict:
    if "xp.cfg" not in pkg:
        raise CheckpointError(
            f"{path}: has no 'xp.cfg' entry (keys: {sorted(map(str, pkg))}); not an exported file"
        )
    text = pkg["xp.cfg"]
    if not isinstance(text, str):
        raise CheckpointError(
            f"{path}: 'xp.cfg' is a {type(text).__name__}, expected the YAML string export writes"
        )
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CheckpointError(f"{path}: 'xp.cfg' is not valid YAML ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: 'xp.cfg' is not a YAML mapping")
    return cfg


def _best_state_of(pkg: dict, path: Path) -> dict[str, torch.Tensor]:
    if "best_state" not in pkg:
        raise CheckpointError(
            f"{path}: has no 'best_state' entry (keys: {sorted(map(str, pkg))}); "
            "not an exported audiocraft file"
        )
    state = pkg["best_state"]
    if isinstance(state, dict) and "model" in state and not isinstance(state["model"], torch.Tensor):
        raise CheckpointError(
            f"{path}: 'best_state' holds a training state ({{'model': ...}}); export the checkpoint with "
            "audiocraft.utils.export first"
        )
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path}: 'best_state' is not a dict of tensor names to tensors")
    return state


class _XpCfg:
    """Read access to an `xp.cfg` mapping, resolving the `${a.b}` interpolations OmegaConf leaves in it.

    `audiocraft.utils.export` dumps the config without resolving it, so values such as
    `chroma_stem.sample_rate: ${sample_rate}` arrive as strings.
    """

    def __init__(self, root: dict, path: Path):
        self.root = root
        self.path = path

    def get(self, key: str, default: Any = _MISSING) -> Any:
        node: Any = self.root
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is _MISSING:
                    raise CheckpointError(f"{self.path}: xp.cfg has no '{key}'")
                return default
            node = node[part]
        return self._resolve(node, key, 0)

    def _resolve(self, value: Any, key: str, depth: int) -> Any:
        if depth > 20:
            raise CheckpointError(f"{self.path}: xp.cfg '{key}' has interpolations that do not terminate")
        if isinstance(value, dict):
            return {k: self._resolve(v, f"{key}.{k}", depth) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v, key, depth) for v in value]
        if not isinstance(value, str) or "${" not in value:
            return value
        whole = re.fullmatch(r"\$\{([A-Za-z0-9_.]+)\}", value)
        if whole:  # keeps the target's type (an int stays an int)
            return self._resolve(self.get(whole.group(1)), key, depth + 1)

        def substitute(m: re.Match) -> str:
            return str(self._resolve(self.get(m.group(1)), key, depth + 1))

        out = re.sub(r"\$\{([A-Za-z0-9_.]+)\}", substitute, value)
        if "${" in out:
            raise CheckpointError(
                f"{self.path}: xp.cfg '{key}' = {value!r} uses an interpolation this reader cannot resolve"
            )
        return out

    def get_int(self, key: str, default: Any = _MISSING) -> int:
        return _as_int(self.get(key, default), f"{self.path}: xp.cfg '{key}'")

    def get_float(self, key: str, default: Any = _MISSING) -> float:
        return _as_float(self.get(key, default), f"{self.path}: xp.cfg '{key}'")

    def require(self, key: str, default: Any, expected: Any, why: str) -> None:
        """Refuses a setting this engine does not implement, so a model is never run with the wrong maths."""
        value = self.get(key, default)
        if isinstance(expected, float):
            ok = _is_number(value) and math.isclose(float(value), expected)
        else:
            ok = value == expected
        if not ok:
            raise CheckpointError(
                f"{self.path}: xp.cfg '{key}' is {value!r}, but this engine only runs {expected!r} ({why})"
            )


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _as_float(value: Any, what: str) -> float:
    # YAML 1.1 reads '1e-4' (no dot) as a string, so numbers may come back as text
    if not _is_number(value):
        raise CheckpointError(f"{what} is {value!r}, expected a number")
    return float(value)


def _as_int(value: Any, what: str) -> int:
    number = _as_float(value, what)
    if not number.is_integer():
        raise CheckpointError(f"{what} is {value!r}, expected an integer")
    return int(number)


def _lm_config_from_xp(xp: _XpCfg) -> tuple[LMConfig, ChromaConfig | None, str, int | None]:
    """LMConfig (+ chroma settings, T5 name, sample rate) from the LM's xp.cfg; refuses what we cannot run."""
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
    melody = prepend == ["description", "self_wav"]
    expected_names = ["description", "self_wav"] if melody else ["description"]
    if names != expected_names:
        raise CheckpointError(
            f"{xp.path}: xp.cfg conditioners are {names}; this engine supports text models (a T5 "
            "'description', by cross-attention) and melody models ('description' + chroma 'self_wav', "
            "prepended)"
        )
    t5_name = _t5_name_from_xp(xp)
    text_dim = T5_WIDTHS[t5_name]

    chroma = None
    extra: dict[str, Any] = {}
    if melody:
        chroma, chroma_length = _chroma_from_xp(xp)
        extra = {"num_chroma": chroma.num_chroma, "chroma_length": chroma_length}
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
            conditioning="prepend" if melody else "cross",
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
    assert not (cross and melody)
    sample_rate = xp.get("sample_rate", None)
    return (
        lm,
        chroma,
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
        "(cross=[description]) and melody models (prepend=[self_wav, description])"
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


def _read_compression(
    path: Path, lm: LMConfig, lm_sample_rate: Any
) -> tuple[str | None, dict | None, dict | None, int | None, int | None]:
    """(codec_name, codec config, codec state, sample rate, frame rate) from compression_state_dict.bin."""
    pkg = _load_exported(path, "export_encodec")
    if "pretrained" in pkg:
        name = pkg["pretrained"]
        if not isinstance(name, str) or not name:
            raise CheckpointError(
                f"{path}: 'pretrained' is {name!r}, expected the name of a compression model"
            )
        return name, None, None, None, None
    xp = _XpCfg(_xp_cfg_of(pkg, path), path)
    state = _best_state_of(pkg, path)
    codec_cfg = _encodec_config_from_xp(xp)
    codec_state = encodec_state_from_audiocraft(state, codec_cfg, where=str(path))

    hop = math.prod(codec_cfg["upsampling_ratios"])
    sample_rate = codec_cfg["sampling_rate"]
    per_channel = lm.num_codebooks // lm.audio_channels
    n_q = xp.get_int("rvq.n_q", 8)
    problems = []
    if codec_cfg["audio_channels"] != 1:
        problems.append(
            f"it has {codec_cfg['audio_channels']} channels, MusicGen codes mono audio per channel"
        )
    if codec_cfg["codebook_size"] != lm.card:
        problems.append(
            f"its codebooks have {codec_cfg['codebook_size']} entries, the LM's card is {lm.card}"
        )
    if n_q < per_channel:
        problems.append(f"it has {n_q} codebooks, the LM needs {per_channel} per channel")
    if lm_sample_rate is not None and sample_rate != _as_int(lm_sample_rate, "sample_rate"):
        problems.append(f"its sample rate is {sample_rate}, the LM's xp.cfg says {lm_sample_rate}")
    if problems:
        raise CheckpointError(f"{path}: the EnCodec model does not fit the LM: " + "; ".join(problems))
    # audiocraft's EncodecModel frame rate: sample_rate // hop_length
    return None, codec_cfg, codec_state, sample_rate, sample_rate // hop


def _read_text_encoder(te_dir: Path) -> tuple[dict | None, dict | None, Path | None]:
    """(T5 state, T5 config dict, tokenizer folder) from our optional `text_encoder/` sub-folder."""
    if not te_dir.is_dir():
        return None, None, None
    tokenizer_dir = te_dir if any(_is_tokenizer_file(p) for p in te_dir.iterdir()) else None
    config_path = te_dir / "config.json"
    weight_files = _safetensors_files(te_dir)
    if not config_path.is_file() and not weight_files:
        return None, None, tokenizer_dir
    if not config_path.is_file():
        raise CheckpointError(
            f"{config_path}: file not found; {te_dir} holds T5 weights without their config"
        )
    if not weight_files:
        raise CheckpointError(
            f"{te_dir}: has config.json but no model.safetensors; T5 weights are read from safetensors only"
        )
    try:
        text_cfg = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_path}: not a readable JSON file ({e})") from None
    if not isinstance(text_cfg, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object (a T5Config)")
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in weight_files:
        try:
            state.update(load_file(str(path), device="cpu"))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot be read as safetensors ({e})") from None
    return state, text_cfg, tokenizer_dir


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: file not found (listed in {index})")
        return files
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def _is_tokenizer_file(path: Path) -> bool:
    """Files a transformers tokenizer folder holds (T5: spiece.model, tokenizer.json, ...)."""
    name = path.name
    return path.is_file() and (
        name.startswith(("tokenizer", "special_tokens_map", "added_tokens", "spiece", "sentencepiece"))
        or name in ("vocab.json", "vocab.txt", "merges.txt")
    )


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
    return rows


def _mismatch(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    def some(items: list[str]) -> str:
        shown = ", ".join(items[:8])
        return shown + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

    parts = []
    if missing:
        parts.append(f"missing {some(missing)}")
    if unexpected:
        parts.append(f"unexpected {some(unexpected)}")
    if wrong:
        parts.append(f"wrong shape {some(wrong)}")
    return "; ".join(parts)


def _describe(lm: LMConfig) -> str:
    kind = "melody" if lm.conditioning == "prepend" else "text"
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


# ---------------------------------------------------------------------------------------------- EnCodec

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


# --------------------------------------------------------------------------------------------- writing


def write_audiocraft(ckpt: Checkpoint, folder: Path) -> None:
    """Writes `ckpt` as audiocraft's exported layout, the inverse of `read_audiocraft`.

    `state_dict.bin` gets the LM state under audiocraft's names and an `xp.cfg` holding every key
    `audiocraft.models.builders.get_lm_model` reads; `compression_state_dict.bin` is the whole EnCodec
    when `codec_state` is set, else a pointer to `config.codec_name`; a bundled T5 (and the tokenizer files
    of `tokenizer_dir`) go to `text_encoder/`. Raises `CheckpointError` for what audiocraft cannot express.
    """
    folder = Path(folder)
    config, lm = ckpt.config, ckpt.config.lm
    where = ckpt.source or "checkpoint"
    t5_name = _audiocraft_t5_name(config.text_encoder_name, where)
    if ckpt.text_encoder_state is None and T5_WIDTHS[t5_name] != lm.text_dim:
        raise CheckpointError(
            f"{where}: text_dim is {lm.text_dim}, but audiocraft's {t5_name} is {T5_WIDTHS[t5_name]} wide"
        )
    if not math.isclose(lm.layer_norm_eps, 1e-5):
        raise CheckpointError(
            f"{where}: layer_norm_eps {lm.layer_norm_eps}; audiocraft's LayerNorm uses 1e-5"
        )
    if lm.audio_channels not in (1, 2):
        raise CheckpointError(f"{where}: {lm.audio_channels} audio channels; audiocraft has mono and stereo")
    if config.is_melody:
        if config.chroma is None:
            raise CheckpointError(f"{where}: melody model without chroma settings (config.chroma is None)")
        if config.chroma.num_chroma != lm.num_chroma:
            raise CheckpointError(
                f"{where}: chroma.num_chroma {config.chroma.num_chroma} != lm.num_chroma {lm.num_chroma}"
            )
    if config.text_encoder is not None and config.text_encoder.get("d_model") != lm.text_dim:
        raise CheckpointError(
            f"{where}: text encoder d_model {config.text_encoder.get('d_model')} != text_dim {lm.text_dim}"
        )
    _check_lm_state(ckpt.lm_state, lm, where)

    codec_pkg: dict[str, Any]
    if ckpt.codec_state is not None:
        if config.codec is None:
            raise CheckpointError(f"{where}: codec_state is set but config.codec (its EncodecConfig) is None")
        codec_pkg = {
            "best_state": encodec_state_to_audiocraft(
                ckpt.codec_state, config.codec, f"{where}: codec_state"
            ),
            "xp.cfg": yaml.safe_dump(encodec_xp_cfg(config.codec, f"{where}: config.codec"), sort_keys=False),
            "version": AUDIOCRAFT_VERSION,
            "exported": True,
        }
    else:
        # what audiocraft.utils.export.export_pretrained_compression_model writes for a named codec
        codec_pkg = {"pretrained": config.codec_name, "exported": True, "version": AUDIOCRAFT_VERSION}

    # read tokenizer files before writing anything: tokenizer_dir may be the text_encoder/ we replace
    tokenizer_files = {}
    if ckpt.tokenizer_dir is not None:
        tok_dir = Path(ckpt.tokenizer_dir)
        if not tok_dir.is_dir():
            raise CheckpointError(f"{tok_dir}: tokenizer folder not found")
        tokenizer_files = {p.name: p for p in tok_dir.iterdir() if _is_tokenizer_file(p)}
        if not tokenizer_files:
            raise CheckpointError(f"{tok_dir}: holds no tokenizer files")
    if ckpt.text_encoder_state is not None and config.text_encoder is None:
        raise CheckpointError(
            f"{where}: text_encoder_state is set but config.text_encoder (its T5Config) is None"
        )

    lm_pkg = {
        "best_state": _lm_state_to_audiocraft(ckpt.lm_state, config),
        "xp.cfg": yaml.safe_dump(_lm_xp_cfg(config, t5_name, ckpt.codec_state is None), sort_keys=False),
        "version": AUDIOCRAFT_VERSION,
        "exported": True,
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(lm_pkg, folder / LM_FILE)
    torch.save(codec_pkg, folder / CODEC_FILE)
    _write_text_encoder(ckpt, folder / TEXT_ENCODER_DIR, tokenizer_files)


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
            "cross_attention": not config.is_melody,
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


_TEXT_ENCODER_WEIGHTS = re.compile(
    r"config\.json|model\.safetensors|model\.safetensors\.index\.json|model-\d+-of-\d+\.safetensors"
)


def _write_text_encoder(ckpt: Checkpoint, te_dir: Path, tokenizer_files: dict[str, Path]) -> None:
    """text_encoder/: T5 config.json + model.safetensors (as save_pretrained writes them) + tokenizer."""
    contents = {name: path.read_bytes() for name, path in tokenizer_files.items()}
    if te_dir.is_dir():
        # stale weights from an earlier write would be read back as this model's
        for path in te_dir.iterdir():
            if path.is_file() and _TEXT_ENCODER_WEIGHTS.fullmatch(path.name):
                path.unlink()
    if ckpt.text_encoder_state is None and not contents:
        if te_dir.is_dir() and not any(te_dir.iterdir()):
            te_dir.rmdir()
        return
    te_dir.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (te_dir / name).write_bytes(data)
    if ckpt.text_encoder_state is None:
        return
    from safetensors.torch import save_file

    assert ckpt.config.text_encoder is not None
    (te_dir / "config.json").write_text(json.dumps(ckpt.config.text_encoder, indent=2, sort_keys=True) + "\n")
    # safetensors refuses tensors sharing memory (T5 ties shared.weight and encoder.embed_tokens.weight)
    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, tensor in ckpt.text_encoder_state.items():
        tensor = tensor.detach().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if key in seen:
            tensor = tensor.clone()
        seen.add(key)
        tensors[name] = tensor
    save_file(tensors, str(te_dir / "model.safetensors"), metadata={"format": "pt"})
