"""Cog predictor: Replicate's meta/musicgen inputs over the engine in `musicgen/`.

A thin adapter: check every input, take the model from a `ModelCache`, call `MusicGen.generate` once,
normalise, write the file. The checks live here because the local server (`python -m cog.server.http`
outside an image built by `cog build`) has no OpenAPI schema and hands predict() whatever JSON it got;
every mistake therefore ends in a `musicgen` error, raised before any model is loaded, whose message the
server reports as the prediction's `error`.
"""

import math
import os
import secrets
import tempfile

from cog import BasePredictor, Input, Path

from musicgen.audio import NORMALIZATION_STRATEGIES, normalize, read_audio, write_audio
from musicgen.config import SAMPLE_RATE
from musicgen.errors import AudioFileError, InvalidInputError, WeightsNotFoundError
from musicgen.finetuned import finetuned_base
from musicgen.model import check_generation_args
from musicgen.sampling import SamplingParams
from musicgen.serving import ModelCache, fetch_weights_file
from musicgen.variants import VARIANTS

DEFAULT_MODEL = "stereo-melody-large"
MAX_DURATION = 300  # seconds; past 30 s the engine generates in overlapping windows
OUTPUT_FORMATS = ("wav", "mp3", "flac")
# torch seeds are 64-bit; -1 (like None) asks for a random seed, as on meta/musicgen
MAX_SEED = 2**63 - 1


class Predictor(BasePredictor):
    def setup(self, weights: str | None = None) -> None:
        """Prepares the model cache and loads the default model when its weights are already on disk.

        Nothing is downloaded here: a missing model is fetched by its first prediction instead, so the
        server comes up at once. `weights` (Cog passes `COG_WEIGHTS`, set for a trained model) is a path
        or URL of fine-tuned weights; they apply whenever a prediction gives no `replicate_weights`, and
        their base model is the one loaded here.
        """
        # transformers warns about quirks of the published configs that are expected here; the logs should
        # hold our lines, not those. It reads this when first imported: by the model loading below.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        self.cache = ModelCache()
        self.default_finetuned = fetch_weights_file(str(weights)) if weights else None
        preload = DEFAULT_MODEL
        if self.default_finetuned is not None:
            preload = finetuned_base(self.default_finetuned)
        try:
            self.cache.get(preload, finetuned=self.default_finetuned, download=False)
        except WeightsNotFoundError:
            print(f"The weights of {preload} are not on disk yet; its first prediction downloads them.")

    def predict(
        self,
        model_version: str = Input(
            description="Model to generate with. Melody models (melody, melody-large, stereo-melody, stereo-melody-large) can follow the melody of input_audio; stereo models make two channels; larger models sound better but take longer.",
            default="stereo-melody-large",
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
        prompt: str | None = Input(
            description="A description of the music you want, e.g. 'lo-fi hip hop beat with warm piano'. Leave empty for music without a description.",
            default=None,
        ),
        input_audio: Path | None = Input(
            description="An audio file (wav, mp3, flac or ogg) that shapes the music. With continuation off, the music follows its melody (melody models only); with continuation on, the music continues it.",
            default=None,
        ),
        duration: int = Input(
            description="Length of the generated audio in seconds, the continued audio included. Past 30 seconds the music is made in overlapping 30-second windows.",
            default=8,
            ge=1,
            le=300,
        ),
        continuation: bool = Input(
            description="If on, the music continues input_audio, which starts the output. If off, the music follows the melody of input_audio.",
            default=False,
        ),
        continuation_start: int = Input(
            description="Where the part of input_audio to use begins, in seconds from its start.",
            default=0,
            ge=0,
        ),
        continuation_end: int | None = Input(
            description="Where the part of input_audio to use ends, in seconds from its start. Leave empty to use it up to its end.",
            default=None,
            ge=0,
        ),
        normalization_strategy: str = Input(
            description="How the level of the output is set: loudness (to -14 LUFS, with a soft limiter), clip (peaks cut off), peak (loudest sample just below full scale) or rms (average level).",
            default="loudness",
            choices=["loudness", "clip", "peak", "rms"],
        ),
        top_k: int = Input(
            description="Pick each next sound token among the k most likely ones. 0 turns this off.",
            default=250,
            ge=0,
        ),
        top_p: float = Input(
            description="Pick each next sound token among the most likely ones whose probabilities add up to p. 0 turns this off, and top_k applies instead.",
            default=0.0,
            ge=0.0,
            le=1.0,
        ),
        temperature: float = Input(
            description="How adventurous the sampling is: higher values give more varied music, lower values safer music, 0 always the most likely token.",
            default=1.0,
            ge=0.0,
        ),
        classifier_free_guidance: float = Input(
            description="How closely the music follows the prompt and melody. Higher values stick closer to them and vary less.",
            default=3.0,
            ge=0.0,
        ),
        output_format: str = Input(
            description="File format of the generated audio.",
            default="wav",
            choices=["wav", "mp3", "flac"],
        ),
        seed: int | None = Input(
            description="Seed of the random generator: the same seed and inputs give the same music. Leave empty or set -1 for a random seed; the seed used is printed in the logs.",
            default=None,
            ge=-1,
        ),
        replicate_weights: str | None = Input(
            description="Fine-tuned weights made by training this model: the URL or path of the .safetensors file. Leave empty for the published weights (or those this model was trained with).",
            default=None,
        ),
    ) -> Path:
        """Generates one clip and returns the audio file."""
        model_version = _choice("model_version", model_version, tuple(VARIANTS))
        finetuned = self.default_finetuned
        text = _optional_text("replicate_weights", replicate_weights)
        if text is not None:
            finetuned = fetch_weights_file(text)
        if finetuned is not None and model_version == DEFAULT_MODEL:
            # a trained model is called with the default model_version: serve the variant it was trained
            # from (an explicit other variant is refused with a message when the model is fetched)
            model_version = finetuned_base(finetuned)
        variant = VARIANTS[model_version]
        prompt = _optional_text("prompt", prompt)
        audio_path = _optional_path("input_audio", input_audio)
        duration = _whole("duration", duration)
        if not 1 <= duration <= MAX_DURATION:
            raise InvalidInputError(f"duration must be between 1 and {MAX_DURATION} seconds, got {duration}.")
        continuation = _flag("continuation", continuation)
        start = _whole("continuation_start", continuation_start)
        end = None if continuation_end is None else _whole("continuation_end", continuation_end)
        if start < 0 or (end is not None and end < 0):
            raise InvalidInputError("continuation_start and continuation_end are seconds, not below 0.")
        if end is not None and end <= start:
            raise InvalidInputError(
                f"continuation_end ({end} s) must come after continuation_start ({start} s); "
                "leave continuation_end empty to use input_audio up to its end."
            )
        if continuation and audio_path is None:
            raise InvalidInputError("continuation is on, but there is no input_audio to continue: give one.")
        melody_given = audio_path is not None and not continuation
        if melody_given and not variant.melody:
            melody_models = ", ".join(name for name, v in VARIANTS.items() if v.melody)
            raise InvalidInputError(
                f"input_audio is a melody reference (continuation is off), but {model_version} takes no "
                f"melody: choose a melody model ({melody_models}), turn continuation on to continue the "
                "audio instead, or leave input_audio out."
            )
        cfg = _number("classifier_free_guidance", classifier_free_guidance)
        if cfg < 0:
            raise InvalidInputError(f"classifier_free_guidance must be 0 or more, got {cfg}.")
        sampling = SamplingParams(
            top_k=_whole("top_k", top_k),
            top_p=_number("top_p", top_p),
            temperature=_number("temperature", temperature),
            cfg_coef=cfg,
        )
        # the engine's own checks (top_k, top_p, temperature), with the same messages as the CLI's
        check_generation_args(
            duration=duration,
            sampling=sampling,
            melody_given=melody_given,
            model_accepts_melody=variant.melody,
        )
        strategy = _choice("normalization_strategy", normalization_strategy, NORMALIZATION_STRATEGIES)
        output_format = _choice("output_format", output_format, OUTPUT_FORMATS)
        seed = _seed(seed)

        audio = None
        if audio_path is not None:
            channels = 2 if variant.stereo else 1
            audio = _read_input_audio(audio_path, channels, start, end)
            if continuation and audio.shape[-1] >= duration * SAMPLE_RATE:
                raise InvalidInputError(
                    f"the audio to continue lasts {audio.shape[-1] / SAMPLE_RATE:.2f} s, not shorter than "
                    f"duration ({duration} s), which counts the continued audio: ask for a longer duration "
                    "or use a shorter part of input_audio (continuation_start / continuation_end)."
                )

        model = self.cache.get(model_version, finetuned=finetuned)
        # printed before generating, so that the logs name the seed even of a prediction cut short
        print(f"model_version: {model_version}, seed: {seed}")
        result = model.generate(
            prompt,
            duration=float(duration),
            melody=None if continuation else audio,
            continuation=audio if continuation else None,
            sampling=sampling,
            seed=seed,
        )
        wav = normalize(result.audio[0], strategy, result.sample_rate)  # [C, S]: stereo stays stereo
        out = Path(tempfile.mkdtemp(prefix="musicgen-")) / f"output.{output_format}"
        write_audio(out, wav, result.sample_rate)
        return out


# ---- input checks: the local server passes JSON values through unchecked ---------------------------


def _choice(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def _whole(name: str, value) -> int:
    # JSON has one number type: 8.0 is 8, 8.5 is a mistake; true/false are not numbers
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}.")
    return value


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be true or false, got {value!r}.")
    return value


def _optional_text(name: str, value) -> str | None:
    """None for an absent or blank value (a web form sends empty fields as "")."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be text, got {value!r}.")
    return value.strip() or None


def _optional_path(name: str, value) -> Path | None:
    # the server turns URLs and data URLs into downloaded files (cog.Path) but passes a plain path as text
    if isinstance(value, str):
        value = value.strip() or None
    if value is None:
        return None
    if not isinstance(value, os.PathLike | str):
        raise InvalidInputError(f"{name} must be an audio file (a URL, data URL or path), got {value!r}.")
    return Path(value)


def _seed(value) -> int:
    """The seed to use: the one given, or a random one for None and -1."""
    if value is None:
        return secrets.randbelow(2**31)
    seed = _whole("seed", value)
    if seed == -1:
        return secrets.randbelow(2**31)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(f"seed must be between 0 and {MAX_SEED}, or -1 for a random one; got {seed}.")
    return seed


def _read_input_audio(path: Path, channels: int, start: int, end: int | None):
    """input_audio from `start` to `end` seconds, [channels, samples] at the models' rate."""
    try:
        return read_audio(
            path, SAMPLE_RATE, channels, start=float(start), end=None if end is None else float(end)
        )
    except AudioFileError as err:
        raise AudioFileError(f"input_audio cannot be used: {err}") from err
    except InvalidInputError as err:
        # read_audio names its own arguments; say which inputs they came from
        raise InvalidInputError(
            f"continuation_start / continuation_end do not fit input_audio: {err}"
        ) from err
