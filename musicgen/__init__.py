"""MusicGen text-to-music: load a published or fine-tuned model and generate audio.

from musicgen import MusicGen, SamplingParams
model = MusicGen.load("small")
result = model.generate(["lo-fi beat with warm piano"], duration=8, seed=1)
# result.audio: [B, C, S] at result.sample_rate; result.codes: [B, K, T]
"""

from .config import LMConfig, ModelConfig
from .errors import AudioFileError, CheckpointError, InvalidInputError, MusicGenError, WeightsNotFoundError
from .model import GenerationResult, MusicGen, check_generation_args
from .sampling import SamplingParams
from .variants import VARIANTS, Variant

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
    "VARIANTS",
    "Variant",
    "WeightsNotFoundError",
    "check_generation_args",
]
