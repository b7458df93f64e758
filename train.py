"""Cog trainer: fine-tunes a MusicGen variant on a dataset archive into weights that predict.py serves.

A thin adapter: check every input (with `musicgen.inputs`, the rules predict.py and the CLI share), call
`musicgen.training.run.fine_tune` once, return the weights file. As in predict.py, the checks run here
because the local server hands train() whatever JSON it got.
"""

import functools

from cog import BaseModel, Input, Path

from musicgen import inputs
from musicgen.errors import InvalidInputError
from musicgen.serving import OutputFiles
from musicgen.training.dataset import DatasetError
from musicgen.training.loop import TrainSettings
from musicgen.training.run import MAX_SEGMENT_SECONDS, check_segment_seconds, fine_tune
from musicgen.variants import VARIANTS

# Cog's failures to fetch a URL or decode a data URL name the input they were for
inputs.name_file_input_errors("dataset_path")


@functools.cache
def _outputs() -> OutputFiles:
    """Where trained weights go: each file stays on disk only until the server has sent it."""
    return OutputFiles(prefix="musicgen-trainings-")


class TrainingOutput(BaseModel):
    weights: Path


@inputs.declared_inputs_only
def train(
    dataset_path: Path = Input(
        description="Your music: a .zip or .tar(.gz) of audio files (wav, mp3, flac, ogg), or one audio file. Caption each file with a .txt of the same name (or audiocraft's .json metadata), or set one_same_description.",
    ),
    model_version: str = Input(
        description="The model to fine-tune. The result is served with the same model_version. style (MusicGen-Style) learns from an excerpt of each segment itself, which is left out of that segment's loss.",
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
            "style",
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
        description="How often a segment trains without its caption (and melody or style), so classifier-free guidance keeps working. Empty: 0.3, 0.2 for melody models, 0.1 for style (which also drops the caption alone and the style alone, 0.4 each), as audiocraft.",
        default=None,
        ge=0,
        le=0.9,
    ),
    segment_seconds: float = Input(
        description="Audio is cut into segments this long (at most 30 s; at least 9 s for style).",
        default=30,
        ge=1,
        le=30,
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
    model_version = inputs.choice("model_version", model_version, VARIANTS)
    dataset = inputs.optional_file("dataset_path", dataset_path)
    settings = TrainSettings(
        method=inputs.choice("method", method, ("lora", "full")),
        lora_rank=inputs.whole("lora_rank", lora_rank, 1, 256),
        epochs=inputs.whole("epochs", epochs, 1, 1000),
        batch_size=inputs.whole("batch_size", batch_size, 1, 512),
        gradient_accumulation=inputs.whole("gradient_accumulation", gradient_accumulation, 1, 512),
        learning_rate=None
        if learning_rate is None
        else inputs.number("learning_rate", learning_rate, 1e-7, 0.1),
        warmup_steps=inputs.whole("warmup_steps", warmup_steps, 0),
        lr_scheduler=inputs.choice("lr_scheduler", lr_scheduler, ("cosine", "constant")),
        condition_dropout=(
            None
            if condition_dropout is None
            else inputs.number("condition_dropout", condition_dropout, 0, 0.9)
        ),
        validation_split=inputs.number("validation_split", validation_split, 0, 0.45),
        seed=inputs.seed("seed", seed),
    )
    settings.check()
    segment_seconds = inputs.number("segment_seconds", segment_seconds, 1, MAX_SEGMENT_SECONDS, "seconds")
    check_segment_seconds(model_version, segment_seconds)  # the style model needs longer segments
    description = inputs.optional_text(
        "one_same_description", one_same_description, inputs.MAX_PROMPT_CHARACTERS
    )
    if dataset is None or not dataset.is_file():
        raise InvalidInputError(
            "dataset_path: give an archive (.zip, .tar, .tar.gz) or an audio file"
            + ("." if dataset is None else f"; {dataset} is not a file.")
        )
    print(f"seed: {settings.seed}")
    out = _outputs().new(f"musicgen-{model_version}-{settings.method}.safetensors")
    try:
        fine_tune(
            dataset,
            model_version,
            out,
            settings,
            segment_seconds=segment_seconds,
            one_same_description=description,
        )
    except DatasetError as err:  # its message names the file inside; say which input holds it
        raise DatasetError(f"dataset_path: {err}") from err
    print(
        f"weights: {out} ({out.stat().st_size / 1e6:.1f} MB); serve them with model_version={model_version}"
    )
    return TrainingOutput(weights=Path(out))
