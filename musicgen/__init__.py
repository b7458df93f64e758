"""MusicGen text-to-music: load a published or fine-tuned model and generate audio.

from musicgen import MusicGen, SamplingParams
model = MusicGen.load("small")
result = model.generate(["lo-fi beat with warm piano"], duration=8, seed=1)
# result.audio: [B, C, S] at result.sample_rate; result.codes: [B, K, T]
style = MusicGen.load("style")  # MusicGen-Style: music in the style of an excerpt of `wav` [C, S], 32 kHz
result = style.generate(["8-bit chiptune"], duration=8, style=wav, sampling=SamplingParams(cfg_beta=5.0))
"""

from .config import LMConfig, ModelConfig, StyleConfig
from .errors import AudioFileError, CheckpointError, InvalidInputError, MusicGenError, WeightsNotFoundError
from .variants import VARIANTS, Variant

# torch is imported on first use of these, so that `import musicgen` and the CLI's checks start fast
_LAZY = {
    "GenerationResult": ".model",
    "MusicGen": ".model",
    "check_generation_args": ".inputs",
    "SamplingParams": ".sampling",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'musicgen' has no attribute {name!r}")


__all__ = [
    "AudioFileError",
    "CheckpointError",
    "GenerationResult",
    "InvalidInputError",
    "LMConfig",
    "ModelConfig",
    "MusicGen",
    "MusicGenError",
    "SamplingParams",
    "StyleConfig",
    "VARIANTS",
    "Variant",
    "WeightsNotFoundError",
    "check_generation_args",
]
