"""Checkpoint readers and writers: one module per layout, all meeting in `Checkpoint`.

- `transformers_layout`: `config.json` + safetensors (+ tokenizer files), as `save_pretrained` writes it
  and as the `facebook/musicgen-*` Hub repos hold it.
- `audiocraft_layout`: `state_dict.bin` + `compression_state_dict.bin`, as audiocraft exports them.
- `mbd_release`: MultiBand Diffusion's release pickle -> the converted folder `musicgen.diffusion` loads.

Readers never unpickle code: safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig


@dataclass
class Checkpoint:
    """A MusicGen model as tensors, independent of the layout it was read from.

    `lm_state` uses the names of `musicgen.lm.LanguageModel` (see `LM_KEY_DOC` there); the text encoder
    and codec keep transformers' names (`T5EncoderModel`, `EncodecModel`), because transformers builds them.
    """

    config: ModelConfig
    lm_state: dict[str, torch.Tensor]
    # T5EncoderModel state dict; None when the text encoder is loaded by `config.text_encoder_name`
    text_encoder_state: dict[str, torch.Tensor] | None = None
    # EncodecModel state dict; None when the codec is loaded by `config.codec_name`
    codec_state: dict[str, torch.Tensor] | None = None
    # folder holding the tokenizer files; None when the tokenizer comes from `config.text_encoder_name`
    tokenizer_dir: Path | None = None
    # MusicGen-Style: `musicgen.style.StyleEncoder`'s state, and MERT's (HubertModel's names) when bundled
    # (None: MERT is loaded by `config.style.mert_name`)
    style_state: dict[str, torch.Tensor] | None = None
    mert_state: dict[str, torch.Tensor] | None = None
    source: str = ""  # where it was read from, for messages


def detect_layout(folder: Path) -> str | None:
    """'transformers', 'audiocraft', or None when `folder` holds neither layout."""
    if (folder / "config.json").is_file():
        return "transformers"
    if (folder / "state_dict.bin").is_file():
        return "audiocraft"
    return None


def refused_global(err: Exception) -> str | None:
    """The global (class or function, "module.name") whose import torch's weights-only unpickler refused, as
    its error names it ("Unsupported global: GLOBAL x.y", or "unsupported GLOBAL x.y whose module x is
    blocked"); None for any other failure (a damaged or foreign file)."""
    found = re.search(r"GLOBAL (\S+)", str(err))
    return None if found is None else found[1]
