"""The model config: one dataclass that rebuilds a MusicGen model alone.

Both checkpoint layouts (transformers' and audiocraft's) are read into this config, and every file this
package writes carries it as JSON, so a file never needs anything else to be understood.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

# EnCodec 32 kHz: hop of 640 samples -> 50 code frames per second. Published MusicGen models all use it.
SAMPLE_RATE = 32000
FRAME_RATE = 50


@dataclass
class LMConfig:
    """Shape of the MusicGen language model (the transformer over EnCodec codes)."""

    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int
    num_codebooks: int  # K: 4 for mono, 8 for stereo (left/right interleaved)
    card: int = 2048  # codebook size; token id `card` is the special (start / not-yet-valid) token
    audio_channels: int = 1
    max_positions: int = 2048  # sinusoidal table size; only a bound for the static cache
    text_dim: int = 768  # width of the T5 states before projection
    # "cross": text reaches the decoder by cross-attention (text models);
    # "prepend": chroma and text states are prepended to the decoder input (melody models);
    # "style": style tokens and text states are prepended, in that order (MusicGen-Style)
    conditioning: Literal["cross", "prepend", "style"] = "cross"
    num_chroma: int = 12
    chroma_length: int = 235  # chroma frames prepended on melody models (30 s at hop 4096)
    style_dim: int = 512  # width of the style tokens before projection (MusicGen-Style)
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.num_codebooks % self.audio_channels:
            raise ValueError("num_codebooks must be a multiple of audio_channels")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def delays(self) -> list[int]:
        """Delay of each codebook in the model's order; stereo interleaves [1L, 1R, 2L, 2R, ...]."""
        per_channel = self.num_codebooks // self.audio_channels
        return [k // self.audio_channels for k in range(per_channel * self.audio_channels)]

    @property
    def max_delay(self) -> int:
        return max(self.delays)


@dataclass
class ChromaConfig:
    """Chroma extraction for melody models (audiocraft's ChromaExtractor / transformers' feature extractor)."""

    n_fft: int = 16384  # 2 ** radix2_exp, radix2_exp = 14
    hop_length: int = 4096  # n_fft // 4
    sample_rate: int = SAMPLE_RATE
    num_chroma: int = 12


@dataclass
class StyleConfig:
    """MusicGen-Style's style conditioner (audiocraft's StyleConditioner, MERT feature extractor).

    The excerpt (mono, `sample_rate`) is resampled to `feature_rate`, run through MERT (a HuBERT model,
    `feature_dim` wide at `feature_frame_rate`), projected to `dim`, run through a `num_layers` pre-norm
    non-causal transformer, batch-normalised, quantized with the first `eval_q` of `num_quantizers`
    codebooks, and every `ds_factor`-th frame is kept.
    """

    dim: int = 512
    num_heads: int = 8
    num_layers: int = 8
    ffn_dim: int = 2048
    num_quantizers: int = 6  # audiocraft's n_q_out
    bins: int = 1024
    eval_q: int = 3  # codebooks used at inference unless a request says otherwise
    excerpt_length: float = 3.0  # seconds, default at inference
    min_excerpt_length: float = 1.5  # the range audiocraft trains with (varying_lengths)
    max_excerpt_length: float = 4.5
    ds_factor: int = 15  # 75 Hz MERT frames -> 5 Hz style tokens
    batch_norm: bool = True
    feature_dim: int = 768
    feature_rate: int = 24000
    feature_frame_rate: int = 75
    sample_rate: int = SAMPLE_RATE
    # transformers' HubertConfig as a dict when MERT's weights are bundled; None when named by mert_name
    mert: dict[str, Any] | None = None
    mert_name: str = "m-a-p/MERT-v1-95M"
    layer_norm_eps: float = 1e-5
    batch_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"style dim {self.dim} is not divisible by num_heads {self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass
class ModelConfig:
    """Everything needed to rebuild a whole MusicGen model: LM, text encoder, codec."""

    lm: LMConfig
    # transformers' T5Config as a dict (to_dict()); None when the text encoder is only named
    text_encoder: dict[str, Any] | None = None
    text_encoder_name: str = "t5-base"  # Hub id or folder, used when text_encoder weights are not bundled
    # transformers' EncodecConfig as a dict; None when the codec is only named
    codec: dict[str, Any] | None = None
    codec_name: str = "facebook/encodec_32khz"
    chroma: ChromaConfig | None = None  # melody models only
    style: StyleConfig | None = None  # MusicGen-Style only
    sample_rate: int = SAMPLE_RATE
    frame_rate: int = FRAME_RATE

    @property
    def is_melody(self) -> bool:
        return self.lm.conditioning == "prepend"

    @property
    def is_style(self) -> bool:
        return self.lm.conditioning == "style"

    @property
    def is_stereo(self) -> bool:
        return self.lm.audio_channels == 2

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        raw = json.loads(text)
        raw["lm"] = _build(LMConfig, raw["lm"])
        if raw.get("chroma") is not None:
            raw["chroma"] = _build(ChromaConfig, raw["chroma"])
        if raw.get("style") is not None:
            raw["style"] = _build(StyleConfig, raw["style"])
        return _build(cls, raw)


def _build(kind, raw: dict):
    """Builds a dataclass from a dict, ignoring keys a newer version may have added."""
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in raw.items() if k in names})


__all__ = ["LMConfig", "ChromaConfig", "StyleConfig", "ModelConfig", "SAMPLE_RATE", "FRAME_RATE"]
