"""From a name or folder to a ready `MusicGen`: find the files, read the layout, build the modules.

What a cold start spends here, and how it is kept short (docs/PERFORMANCE.md, "Cold start"): the cyclic
garbage collector is paused while loading (the imports and modules allocate ~10^5 objects, and each full
collection walks every object already alive: ~0.4–0.7 s of small's setup went to them), and the decode step
is compiled while the model is built rather than in the first prediction.
"""

from __future__ import annotations

import contextlib
import gc
import json
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .checkpoints import Checkpoint, detect_layout
from .codec import Codec
from .conditioning import TextEncoder
from .errors import CheckpointError, InvalidInputError
from .lm import LanguageModel
from .model import MusicGen


def load_checkpoint(name_or_path: str, download: bool = True) -> Checkpoint:
    """Reads the checkpoint that a variant name, a Hub id or a folder names."""
    from .weights import resolve_model

    folder = resolve_model(name_or_path, download=download)
    return read_checkpoint(folder)


def read_checkpoint(folder: Path) -> Checkpoint:
    """Reads a checkpoint folder in either layout."""
    layout = detect_layout(folder)
    with _gc_paused():
        if layout == "transformers":
            from .checkpoints.transformers_layout import read_transformers

            return read_transformers(folder)
        if layout == "audiocraft":
            from .checkpoints.audiocraft_layout import read_audiocraft

            return read_audiocraft(folder)
    raise CheckpointError(
        f"{folder}: holds no MusicGen checkpoint; expected config.json with *.safetensors "
        "(transformers' layout) or state_dict.bin with compression_state_dict.bin (audiocraft's layout)."
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> torch.device:
    """The device to run on (default: CUDA when present), refused with a clear message when unusable."""
    try:
        resolved = torch.device(device or default_device())
    except (RuntimeError, TypeError) as e:
        raise InvalidInputError(
            f"device {device!r} is not a device torch knows: use cpu, cuda or cuda:N."
        ) from e
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index is not None and resolved.index >= count):
            raise InvalidInputError(f"device {device!r}: {count} CUDA device(s) are visible here; use cpu.")
    return resolved


def build_model(ckpt: Checkpoint, device: str | None = None, int8: bool = False) -> MusicGen:
    """Builds the modules of `ckpt` on `device` (fp32 on CPU, bf16 language model on CUDA).

    int8: decode with int8 Linear weights (CPU only, opt-in; see `musicgen.quantize`).
    """
    device = resolve_device(device)
    if int8 and device.type != "cpu":
        raise InvalidInputError(f"int8 decoding runs on the CPU; on {device} the model runs in bf16 already.")
    lm_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with _gc_paused():
        lm = build_lm(ckpt).to(device=device, dtype=lm_dtype).eval()
        if int8:
            from .quantize import quantize_int8

            quantize_int8(lm)
        text = TextEncoder(*_text_encoder(ckpt))
        text.model.to(device)
        codec_model = _codec(ckpt)
        codec = Codec(codec_model.to(device), ckpt.config.lm.audio_channels)
        style = _style_conditioner(ckpt).to(device) if ckpt.config.is_style else None
        _compile_decode_step()
    if codec.num_codebooks != ckpt.config.lm.num_codebooks:
        raise CheckpointError(
            f"{ckpt.source}: the codec gives {codec.num_codebooks} codebooks but the language model "
            f"expects {ckpt.config.lm.num_codebooks}."
        )
    return MusicGen(ckpt.config, lm, text, codec, style)


# ---- what a cold start needs only once ---------------------------------------------------------------


def _compile_decode_step() -> None:
    """The decode step compiled now (once per process; ~0.05 s), not in the first prediction."""
    from .decode_script import scripted_decode_step

    scripted_decode_step()


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused():
    """The cyclic garbage collector paused inside (nested and concurrent pauses count up; it is back on,
    if it was on, once the last ends). Loading allocates ~10^5 objects, mostly while importing transformers
    and building modules, and every full collection on the way walks all the objects already alive:
    0.4–0.7 s of musicgen-small's setup. Memory is not at stake: tensors are freed by reference counting."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def build_lm(ckpt: Checkpoint) -> LanguageModel:
    """The language model of `ckpt`, its tensors checked against the config."""
    with torch.device("meta"):
        lm = LanguageModel(ckpt.config.lm)
    expected = {k: v.shape for k, v in lm.state_dict().items()}
    missing = sorted(set(expected) - set(ckpt.lm_state))
    extra = sorted(set(ckpt.lm_state) - set(expected))
    wrong = [
        f"{k}: {tuple(ckpt.lm_state[k].shape)} instead of {tuple(s)}"
        for k, s in expected.items()
        if k in ckpt.lm_state and ckpt.lm_state[k].shape != s
    ]
    if missing or extra or wrong:
        raise CheckpointError(
            f"{ckpt.source}: the language-model tensors do not fit its config "
            f"(missing {missing[:3]}, unexpected {extra[:3]}, wrong shapes {wrong[:3]})."
        )
    lm.load_state_dict({k: v.float() for k, v in ckpt.lm_state.items()}, assign=True)
    lm.requires_grad_(False)
    lm.init_buffers()  # built on the meta device: the tables are not in the state dict
    return lm


def _text_encoder(ckpt: Checkpoint):
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    cfg = ckpt.config
    if ckpt.text_encoder_state is not None and cfg.text_encoder is not None:
        t5_cfg = T5Config(**{k: v for k, v in cfg.text_encoder.items() if k != "model_type"})
        with torch.device("meta"):  # no random initialisation: the checkpoint's tensors are used as they are
            model = T5EncoderModel(t5_cfg)
        missing, unexpected = model.load_state_dict(ckpt.text_encoder_state, strict=False, assign=True)
        # T5 ties encoder.embed_tokens to shared; files may hold only one of them
        if unexpected or any(k not in ("encoder.embed_tokens.weight", "shared.weight") for k in missing):
            raise CheckpointError(
                f"{ckpt.source}: the text encoder weights do not fit its config "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})."
            )
        if missing:
            model.tie_weights()
        _check_materialised(model, ckpt.source, "text encoder")
        tok_source = ckpt.tokenizer_dir
    else:
        from .weights import resolve_pretrained

        folder = resolve_pretrained(cfg.text_encoder_name)
        model = T5EncoderModel.from_pretrained(folder)
        tok_source = ckpt.tokenizer_dir or folder
    if model.config.d_model != cfg.lm.text_dim:
        raise CheckpointError(
            f"{ckpt.source}: the text encoder {cfg.text_encoder_name!r} gives {model.config.d_model}-wide "
            f"states, but the language model takes {cfg.lm.text_dim}: it is not the T5 this model was trained with."
        )
    if tok_source is None:
        from .weights import resolve_pretrained

        tok_source = resolve_pretrained(cfg.text_encoder_name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_source))
    except Exception as e:  # transformers raises many kinds here; all mean "no usable tokenizer"
        raise CheckpointError(f"{tok_source}: no usable T5 tokenizer files ({e}).") from e
    return model.float().eval(), tokenizer


def _style_conditioner(ckpt: Checkpoint):
    """MusicGen-Style's conditioner: its encoder from the checkpoint, MERT bundled or fetched by name."""
    from .style import StyleConditioner, StyleEncoder, build_mert, read_mert_folder

    cfg = ckpt.config.style
    if cfg is None or ckpt.style_state is None:
        raise CheckpointError(f"{ckpt.source}: a style model without its style conditioner's weights.")
    if cfg.sample_rate != ckpt.config.sample_rate:
        raise CheckpointError(
            f"{ckpt.source}: the style conditioner takes {cfg.sample_rate} Hz audio, the model makes "
            f"{ckpt.config.sample_rate} Hz; only equal rates are supported."
        )
    with torch.device("meta"):
        encoder = StyleEncoder(cfg)
    try:
        encoder.load_state_dict({k: v.float() for k, v in ckpt.style_state.items()}, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{ckpt.source}: the style conditioner's weights do not fit its config ({e})."
        ) from e
    encoder.requires_grad_(False)
    if ckpt.mert_state is not None and cfg.mert is not None:
        mert_cfg, mert_state, where = cfg.mert, ckpt.mert_state, f"{ckpt.source} (mert/)"
    else:
        from .weights import resolve_pretrained

        folder = resolve_pretrained(cfg.mert_name)
        mert_cfg, mert_state = read_mert_folder(folder)
        where = str(folder)
    mert = build_mert(mert_cfg, mert_state, where)
    mert.requires_grad_(False)
    if mert.config.hidden_size != cfg.feature_dim:
        raise CheckpointError(
            f"{where}: MERT gives {mert.config.hidden_size}-wide features, the style conditioner takes "
            f"{cfg.feature_dim}: it is not the feature extractor this model was trained with."
        )
    return StyleConditioner(cfg, mert, encoder)


def _codec(ckpt: Checkpoint):
    from transformers import EncodecConfig, EncodecModel

    cfg = ckpt.config
    if ckpt.codec_state is not None and cfg.codec is not None:
        from transformers.initialization import no_init_weights

        # built for real, not on the meta device: EnCodec keeps layer geometry in buffers no checkpoint
        # holds; without the random initialisation, which the strict load below overwrites whole (~1 s)
        with no_init_weights():
            model = EncodecModel(EncodecConfig(**{k: v for k, v in cfg.codec.items() if k != "model_type"}))
        try:
            model.load_state_dict(ckpt.codec_state, strict=True, assign=True)
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt.source}: the codec weights do not fit its config ({e}).") from e
    else:
        from .weights import resolve_pretrained

        model = EncodecModel.from_pretrained(resolve_pretrained(cfg.codec_name))
    return model.float().eval()


@dataclass(frozen=True)
class ModelTraits:
    melody: bool
    stereo: bool
    style: bool = False


def peek_model(name_or_path: str) -> ModelTraits | None:
    """What a model accepts, known without loading it (None when only loading can tell)."""
    from .variants import find_variant

    variant = find_variant(str(name_or_path))
    if variant is not None:
        return ModelTraits(variant.melody, variant.stereo, variant.style)
    folder = Path(name_or_path)
    if (folder / "state_dict.bin").is_file() and not (folder / "config.json").is_file():
        return _peek_audiocraft(folder)
    try:
        raw = json.loads((folder / "config.json").read_text())
        return ModelTraits(
            raw["model_type"] == "musicgen_melody", raw["decoder"].get("audio_channels", 1) == 2
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _peek_audiocraft(folder: Path) -> ModelTraits | None:
    """ModelTraits from an audiocraft checkpoint's xp.cfg (its tensors mapped, not read)."""
    from .checkpoints.audiocraft_layout import read_lm_xp

    try:
        xp = read_lm_xp(folder)
        conditioner = xp.get("conditioners.self_wav.model", None)
        return ModelTraits(
            conditioner == "chroma_stem", xp.get_int("channels", 1) == 2, conditioner == "style"
        )
    except CheckpointError:  # unreadable or foreign: loading the checkpoint reports it properly
        return None


def bundle_submodels(ckpt: Checkpoint) -> Checkpoint:
    """`ckpt` with its text encoder, tokenizer and codec weights included (fetching named ones)."""
    text_model, tokenizer = _text_encoder(ckpt)
    codec = _codec(ckpt)
    config = replace(ckpt.config, text_encoder=text_model.config.to_dict(), codec=codec.config.to_dict())
    tokenizer_dir = ckpt.tokenizer_dir
    if tokenizer_dir is None:
        from .weights import resolve_pretrained

        tokenizer_dir = resolve_pretrained(ckpt.config.text_encoder_name)
    return replace(
        ckpt,
        config=config,
        text_encoder_state=text_model.state_dict(),
        codec_state=codec.state_dict(),
        tokenizer_dir=tokenizer_dir,
    )


def _check_materialised(model: torch.nn.Module, source: str, what: str) -> None:
    """A module built on the meta device must have received every tensor from the checkpoint."""
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if empty:
        raise CheckpointError(f"{source}: the {what} weights lack {empty[:3]}.")
