"""Cog trainer: fine-tunes a MusicGen variant on a dataset archive into weights that predict.py serves.

A thin adapter: check every input, call `musicgen.training.run.fine_tune` once, return the weights file.
As in predict.py, the checks live here because the local server hands train() whatever JSON it got.
"""

import secrets
import tempfile

from cog import BaseModel, Input, Path

from musicgen.errors import InvalidInputError
from musicgen.training.loop import TrainSettings
from musicgen.training.run import fine_tune
from musicgen.variants import VARIANTS

MAX_SEED = 2**31 - 1


class TrainingOutput(BaseModel):
    weights: Path


def train(
    dataset_path: Path = Input(
        description="Your music: a .zip or .tar(.gz) of audio files (wav, mp3, flac, ogg), or one audio file. Caption each file with a .txt of the same name (or audiocraft's .json metadata), or set one_same_description.",
    ),
    model_version: str = Input(
        description="The model to fine-tune. The result is served with the same model_version.",
        default="small",
        choices=[
            "small",
            "medium",
            "large",
            "melody",
            "melody-large",
            "stereo-small",
            "stereo-medium",
            "stereo-large",
            "stereo-melody",
            "stereo-melody-large",
        ],
    ),
    method: str = Input(
        description="lora trains small adapters (a few MB, less memory); full changes every language-model weight (stored in half precision).",
        default="lora",
        choices=["lora", "full"],
    ),
    lora_rank: int = Input(
        description="Size of the LoRA adapters (lora only): higher learns more, files grow.",
        default=8,
        ge=1,
        le=256,
    ),
    one_same_description: str | None = Input(
        description="A caption for every file, or the caption of files that have no .txt/.json of their own.",
        default=None,
    ),
    epochs: int = Input(description="Passes over the whole dataset.", default=3, ge=1, le=1000),
    batch_size: int = Input(description="Segments per step on each GPU.", default=4, ge=1, le=512),
    gradient_accumulation: int = Input(
        description="Steps whose gradients add up before each update (a larger batch without more memory).",
        default=1,
        ge=1,
        le=512,
    ),
    learning_rate: float | None = Input(
        description="Peak learning rate. Empty: 1e-4 for lora, 1e-5 for full.", default=None, ge=1e-7, le=0.1
    ),
    warmup_steps: int = Input(
        description="Updates during which the learning rate rises from 0.", default=10, ge=0
    ),
    lr_scheduler: str = Input(
        description="After warm-up: cosine decays to 0; constant stays.",
        default="cosine",
        choices=["cosine", "constant"],
    ),
    condition_dropout: float | None = Input(
        description="How often a segment trains without its caption (and melody), so classifier-free guidance keeps working. Empty: 0.3, or 0.2 for melody models (as audiocraft).",
        default=None,
        ge=0,
        le=0.9,
    ),
    segment_seconds: float = Input(
        description="Audio is cut into segments this long (at most 30 s).", default=30, ge=1, le=30
    ),
    validation_split: float = Input(
        description="Share of segments kept aside to report a validation loss each epoch (0: none).",
        default=0.0,
        ge=0,
        le=0.45,
    ),
    seed: int | None = Input(
        description="Seed for shuffling and dropout. Empty or -1: a random one.", default=None
    ),
) -> TrainingOutput:
    """Fine-tunes `model_version` on `dataset_path`; returns the weights file."""
    if model_version not in VARIANTS:
        raise InvalidInputError(f"model_version must be one of {', '.join(VARIANTS)}; got {model_version!r}.")
    if not 1 <= segment_seconds <= 30:
        raise InvalidInputError(f"segment_seconds must be between 1 and 30, got {segment_seconds}.")
    if seed is not None and seed != -1 and not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(
            f"seed must be between 0 and {MAX_SEED} (or -1 for a random one), got {seed}."
        )
    if seed is None or seed == -1:
        seed = secrets.randbelow(MAX_SEED)
    settings = TrainSettings(
        method=method,
        lora_rank=lora_rank,
        epochs=epochs,
        batch_size=batch_size,
        gradient_accumulation=gradient_accumulation,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        lr_scheduler=lr_scheduler,
        condition_dropout=condition_dropout,
        validation_split=validation_split,
        seed=seed,
    )
    settings.check()
    if dataset_path is None or not Path(dataset_path).is_file():
        raise InvalidInputError("dataset_path: give an archive (.zip, .tar, .tar.gz) or an audio file.")
    print(f"seed: {seed}")
    out = (
        Path(tempfile.mkdtemp(prefix="musicgen-trained-")) / f"musicgen-{model_version}-{method}.safetensors"
    )
    fine_tune(
        Path(dataset_path),
        model_version,
        out,
        settings,
        segment_seconds=segment_seconds,
        one_same_description=one_same_description or None,
    )
    print(
        f"weights: {out} ({out.stat().st_size / 1e6:.1f} MB); serve them with model_version={model_version}"
    )
    return TrainingOutput(weights=out)
