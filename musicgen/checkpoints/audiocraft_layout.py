"""audiocraft's exported layout: `state_dict.bin` + `compression_state_dict.bin` (+ our `text_encoder/`).

audiocraft (1.3) publishes MusicGen as two `torch.save` files, written by `audiocraft.utils.export`:

- `state_dict.bin`: `{'best_state': <LMModel state dict>, 'xp.cfg': <hydra config as a YAML string>,
  'version': ..., 'exported': True}`. `audiocraft.models.loaders.load_lm_model` rebuilds the LM from `xp.cfg`
  with `audiocraft.models.builders.get_lm_model` and loads `best_state` strictly.
- `compression_state_dict.bin`: either a pointer, `{'pretrained': 'facebook/encodec_32khz', ...}`, or a whole
  audiocraft EnCodec (`best_state` + `xp.cfg`, rebuilt by `builders.get_compression_model`).

Neither file holds the T5 weights: audiocraft downloads T5 by name. To make a bundle self-contained, this
module adds an optional `text_encoder/` sub-folder (what `T5EncoderModel.save_pretrained` writes, plus the
tokenizer files); audiocraft ignores it. Likewise MusicGen-Style's MERT, which audiocraft loads by name
(`m-a-p/MERT-v1-95M`), may be bundled in a `mert/` sub-folder (config.json + model.safetensors).

Files are read with `torch.load(weights_only=True)` only: an exported file holds tensors, strings and
numbers, so nothing in it needs code to be unpickled, and a file that does is refused.

The translation itself lives beside this module, which only reads and writes the files:
`audiocraft_lm` (the LM's xp.cfg and tensor names), `audiocraft_encodec` (a bundled EnCodec's) and
`audiocraft_xpcfg` (reading xp.cfg values).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import FRAME_RATE, SAMPLE_RATE, LMConfig, ModelConfig
from ..errors import CheckpointError
from . import Checkpoint, refused_global
from .audiocraft_encodec import (
    _encodec_config_from_xp,
    encodec_state_from_audiocraft,
    encodec_state_to_audiocraft,
    encodec_xp_cfg,
)
from .audiocraft_lm import (
    _DESC_PROJ,
    T5_WIDTHS,
    _audiocraft_t5_name,
    _check_lm_state,
    _lm_config_from_xp,
    _lm_state_from_audiocraft,
    _lm_state_to_audiocraft,
    _lm_xp_cfg,
)
from .audiocraft_style import style_state_from_audiocraft, style_state_to_audiocraft
from .audiocraft_xpcfg import _as_int, _XpCfg

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
TEXT_ENCODER_DIR = "text_encoder"
MERT_DIR = "mert"
# the audiocraft release whose layout and builders this module follows; written as 'version'
AUDIOCRAFT_VERSION = "1.3.0"

# frame rates of the codecs a pointer file may name; any other name falls back to MusicGen's 50 Hz
_POINTER_FRAME_RATES = {"facebook/encodec_32khz": 50, "facebook/encodec_24khz": 75}


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

    lm, chroma, style, t5_name, sample_rate = _lm_config_from_xp(xp)
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
    style_state = mert_state = None
    if style is not None:
        best_state, style_state = style_state_from_audiocraft(best_state, style, lm_path)
        mert_dir = folder / MERT_DIR
        if mert_dir.is_dir():
            from ..style import read_mert_folder

            mert_cfg, mert_state = read_mert_folder(mert_dir)
            style = dataclasses.replace(
                style, mert=mert_cfg, feature_dim=int(mert_cfg.get("hidden_size", 768))
            )
    config = ModelConfig(
        lm=lm,
        text_encoder=text_cfg,
        text_encoder_name=t5_name,
        codec=codec_cfg,
        chroma=chroma,
        style=style,
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
        style_state=style_state,
        mert_state=mert_state,
        source=str(folder),
    )


def read_lm_xp(folder: Path) -> _XpCfg:
    """The LM's xp.cfg of the audiocraft checkpoint in `folder`, its tensors mapped, never read (the style
    model's state_dict.bin is 2.8 GB): what a checkpoint accepts and names is known without loading it."""
    path = Path(folder) / LM_FILE
    return _XpCfg(_xp_cfg_of(load_exported_mapped(path, "export_lm"), path), path)


def load_exported_mapped(path: Path, export_fn: str) -> dict:
    """`_load_exported` with the tensors memory-mapped, for reading configs and names only."""
    try:
        pkg = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch maps only its zip format; the plain load reads the rest, or says why not
        pkg = None
    return pkg if isinstance(pkg, dict) else _load_exported(path, export_fn)


def _load_exported(path: Path, export_fn: str) -> dict:
    """torch.load of one exported file, never running code from it."""
    if not path.is_file():
        raise CheckpointError(
            f"{path}: file not found; an audiocraft checkpoint folder holds {LM_FILE} and {CODEC_FILE}"
        )
    try:
        pkg = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = refused_global(e)
        if found is None:
            raise CheckpointError(
                f"{path}: cannot be read as a torch file (not written by torch.save, or damaged)"
            ) from None
        raise CheckpointError(
            f"{path} is not an exported audiocraft checkpoint: it holds Python objects ({found}) that "
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
    if config.is_style and (config.style is None or ckpt.style_state is None):
        raise CheckpointError(
            f"{where}: style model without its style conditioner (config.style, style_state)"
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

    best_state = _lm_state_to_audiocraft(ckpt.lm_state, config)
    if config.is_style:
        best_state.update(style_state_to_audiocraft(ckpt.style_state, config.style))
    lm_pkg = {
        "best_state": best_state,
        "xp.cfg": yaml.safe_dump(_lm_xp_cfg(config, t5_name, ckpt.codec_state is None), sort_keys=False),
        "version": AUDIOCRAFT_VERSION,
        "exported": True,
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(lm_pkg, folder / LM_FILE)
    torch.save(codec_pkg, folder / CODEC_FILE)
    _write_text_encoder(ckpt, folder / TEXT_ENCODER_DIR, tokenizer_files)
    if ckpt.mert_state is not None:
        _write_mert(ckpt, folder / MERT_DIR)


def _write_mert(ckpt: Checkpoint, mert_dir: Path) -> None:
    """mert/: MERT's config.json and model.safetensors (HubertModel's names), as a bundled sub-model."""
    from safetensors.torch import save_file

    style = ckpt.config.style
    if style is None or style.mert is None:
        raise CheckpointError(
            f"{ckpt.source or 'checkpoint'}: mert_state is set but config.style.mert is None"
        )
    mert_dir.mkdir(parents=True, exist_ok=True)
    (mert_dir / "config.json").write_text(json.dumps(style.mert, indent=2, sort_keys=True) + "\n")
    tensors = {k: v.detach().contiguous() for k, v in ckpt.mert_state.items()}
    save_file(tensors, str(mert_dir / "model.safetensors"), metadata={"format": "pt"})


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
