"""The published MusicGen models: one table, the only place that knows their names and Hub ids."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One published model."""

    name: str  # the name people pass (`model_version`, `--model`)
    hub_id: str
    params: str  # language-model size, for people choosing
    dim: int
    num_layers: int
    num_heads: int
    melody: bool  # accepts a melody (chroma) reference
    stereo: bool  # produces two channels
    style: bool = False  # accepts a style excerpt (MusicGen-Style)
    # the Hub repo holds audiocraft's layout only (state_dict.bin + compression_state_dict.bin)
    audiocraft_only: bool = False

    @property
    def accepts(self) -> str:
        return "text + melody" if self.melody else "text + style" if self.style else "text"


def _v(name, hub, params, dim, layers, heads, melody=False, stereo=False, style=False):
    return Variant(name, hub, params, dim, layers, heads, melody, stereo, style, audiocraft_only=style)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        _v("small", "facebook/musicgen-small", "300M", 1024, 24, 16),
        _v("medium", "facebook/musicgen-medium", "1.5B", 1536, 48, 24),
        _v("large", "facebook/musicgen-large", "3.3B", 2048, 48, 32),
        _v("melody", "facebook/musicgen-melody", "1.5B", 1536, 48, 24, melody=True),
        _v("melody-large", "facebook/musicgen-melody-large", "3.3B", 2048, 48, 32, melody=True),
        _v("stereo-small", "facebook/musicgen-stereo-small", "300M", 1024, 24, 16, stereo=True),
        _v("stereo-medium", "facebook/musicgen-stereo-medium", "1.5B", 1536, 48, 24, stereo=True),
        _v("stereo-large", "facebook/musicgen-stereo-large", "3.3B", 2048, 48, 32, stereo=True),
        _v("stereo-melody", "facebook/musicgen-stereo-melody", "1.5B", 1536, 48, 24, True, True),
        _v("stereo-melody-large", "facebook/musicgen-stereo-melody-large", "3.3B", 2048, 48, 32, True, True),
        _v("style", "facebook/musicgen-style", "1.5B", 1536, 48, 24, style=True),
    ]
}


def find_variant(name_or_hub_id: str) -> Variant | None:
    """The variant called `name_or_hub_id` (a short name or its Hub id), or None."""
    if name_or_hub_id in VARIANTS:
        return VARIANTS[name_or_hub_id]
    for variant in VARIANTS.values():
        if variant.hub_id == name_or_hub_id:
            return variant
    return None
