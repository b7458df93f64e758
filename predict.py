"""Cog runner: Replicate's meta/musicgen inputs over the engine in `musicgen/`.

A thin adapter: check every input (with `musicgen.inputs`, the rules train.py and the CLI share), take the
model from a `ModelCache`, call `MusicGen.generate` once, normalise, write the file. The checks run here,
before any model is loaded, because the local server (`python -m cog.server.http` outside an image built
by `cog build`) has no OpenAPI schema and hands run() whatever JSON it got; every mistake ends in a
`musicgen` error whose message the server reports as the prediction's `error`.
"""

import asyncio
import contextlib
import os
import threading
import time
from dataclasses import dataclass

import cog
import torch
from cog import BaseRunner, Input, Path

from musicgen import inputs
from musicgen.audio import NORMALIZATION_STRATEGIES, normalize, write_audio
from musicgen.batching import Batchers
from musicgen.config import SAMPLE_RATE, StyleConfig
from musicgen.errors import AudioFileError, FineTunedWeightsError, InvalidInputError, WeightsNotFoundError
from musicgen.finetuned import finetuned_base
from musicgen.sampling import SamplingParams
from musicgen.serving import ModelCache, OutputFiles, fetch_weights_file, weights_cache_dir
from musicgen.style import check_style_args
from musicgen.variants import VARIANTS

DEFAULT_MODEL = "stereo-melody-large"
OUTPUT_FORMATS = ("wav", "mp3", "flac")
# Predictions the server takes at once (Cog needs a literal here; COG_MAX_CONCURRENCY overrides it at run
# time). Those of one model share one decode, at most MUSICGEN_MAX_BATCH clips (musicgen.batching); the
# rest wait in its queue.
MAX_CONCURRENT_PREDICTIONS = 16

# Cog's failures to fetch a URL or decode a data URL name the input they were for
inputs.name_file_input_errors("input_audio")


class Runner(BaseRunner):
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
        self.batchers = Batchers()
        # the output of a prediction stays on disk only until the server has sent it: with concurrent
        # predictions, until as many newer ones again as the server takes at once were written
        self.outputs = OutputFiles(prefix="musicgen-predictions-", keep=2 * _concurrency())
        # in a folder of its own, so that the downloads of replicate_weights never evict it
        setup_cache = weights_cache_dir() / "setup"
        self.default_finetuned = fetch_weights_file(str(weights), setup_cache) if weights else None
        preload = DEFAULT_MODEL
        if self.default_finetuned is not None:
            preload = finetuned_base(self.default_finetuned)
        try:
            self.cache.get(preload, finetuned=self.default_finetuned, download=False)
        except WeightsNotFoundError:
            print(f"The weights of {preload} are not on disk yet; its first prediction downloads them.")

    @cog.concurrent(max=16)
    @inputs.declared_inputs_only
    async def run(
        self,
        model_version: str = Input(
            description="Model to generate with. Melody models (melody, melody-large, stereo-melody, stereo-melody-large) can follow the melody of input_audio; the style model (MusicGen-Style) makes music in the style of a few seconds of input_audio; stereo models make two channels; larger models sound better but take longer.",
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
                "style",
            ],
        ),
        prompt: str | None = Input(
            description="A description of the music you want, e.g. 'lo-fi hip hop beat with warm piano'. Leave empty for music without a description.",
            default=None,
        ),
        input_audio: Path | None = Input(
            description="An audio file (wav, mp3, flac or ogg) that shapes the music. With continuation off, the music follows its melody (melody models), or with the style model takes on its style (instruments, sound, feel) from a few seconds of it; with continuation on, the music continues it.",
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
        multi_band_diffusion: bool = Input(
            description="Decode the music with MultiBand Diffusion instead of EnCodec: fuller highs and fewer artefacts, but the decoding then takes far longer than the generation itself. Stereo models are decoded one channel at a time.",
            default=False,
        ),
        style_excerpt_length: float = Input(
            description="Style model only: how many seconds of input_audio the style is taken from (1.5 to 4.5), picked at a random place (the same for the same seed) within the part of input_audio used. Longer excerpts capture more of the music's character.",
            default=3.0,
            ge=1.5,
            le=4.5,
        ),
        style_eval_q: int = Input(
            description="Style model only: how closely the music copies the style excerpt, from 1 (loosely: its broad character, more room for the prompt) to 6 (closely: its sounds and textures, at the risk of copying it).",
            default=3,
            ge=1,
            le=6,
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
            description="How closely the music follows the prompt, melody and style excerpt. Higher values stick closer to them and vary less.",
            default=3.0,
            ge=0.0,
        ),
        classifier_free_guidance_beta: float | None = Input(
            description="Style model only, with both a prompt and a style excerpt: how much the prompt counts against the style excerpt (double guidance). 1 weighs them as plain guidance does; higher values follow the prompt more, lower values the excerpt more; 5 is a good start. Leave empty for plain guidance.",
            default=None,
            ge=0.0,
            le=20.0,
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
        """Generates one clip and returns the audio file.

        Concurrent predictions of one model are decoded together (musicgen.batching); the checks, the model
        loading and the encoding of the inputs run in a thread, so the server keeps answering meanwhile.
        """
        request = await asyncio.to_thread(self._request, **_inputs_of(locals()))
        # printed before generating, so that the logs name the seed even of a prediction cut short
        print(f"model_version: {request.model_version}, seed: {request.job.seed}")
        ticket = self.batchers.submit(request.model, request.job)
        print(
            f"queued at {time.strftime('%H:%M:%S')} behind {ticket.ahead} request(s), with {ticket.decoding} clip(s) decoding; "
            f"{request.job.steps} steps to go"
        )
        codes = await ticket.wait()
        print(ticket.summary())
        progress = _DiffusionLog() if request.mbd is not None else None
        try:
            return await asyncio.to_thread(self._write, request, codes, progress)
        except asyncio.CancelledError:
            # the thread cannot be cancelled from here: a diffusion decode (minutes on CPU) stops at its
            # next step instead of running on for a prediction nobody waits for
            if progress is not None:
                progress.cancelled.set()
            raise

    def _request(
        self,
        model_version,
        prompt,
        input_audio,
        duration,
        continuation,
        continuation_start,
        continuation_end,
        multi_band_diffusion,
        style_excerpt_length,
        style_eval_q,
        normalization_strategy,
        top_k,
        top_p,
        temperature,
        classifier_free_guidance,
        classifier_free_guidance_beta,
        output_format,
        seed,
        replicate_weights,
    ) -> "_Request":
        """Checks every input, reads input_audio, takes the model and prepares the generation."""
        model_version = inputs.choice("model_version", model_version, VARIANTS)
        finetuned = self.default_finetuned
        weights_source = inputs.optional_text("replicate_weights", replicate_weights)
        # problems of fine-tuned weights name where they came from
        weights_name = "replicate_weights" if weights_source else "the trained weights (COG_WEIGHTS)"
        with _named(weights_name):
            if weights_source is not None:
                finetuned = fetch_weights_file(weights_source)
            if finetuned is not None and model_version == DEFAULT_MODEL:
                # a trained model is called with the default model_version: serve the variant it was
                # trained from (an explicit other variant is refused when the model is fetched)
                model_version = finetuned_base(finetuned)
        variant = VARIANTS[model_version]
        prompt = inputs.prompt("prompt", prompt)
        audio_path = inputs.optional_file("input_audio", input_audio)
        duration = inputs.whole("duration", duration, 1, inputs.MAX_DURATION_SECONDS, "seconds")
        continuation = inputs.flag("continuation", continuation)
        multi_band_diffusion = inputs.flag("multi_band_diffusion", multi_band_diffusion)
        start = inputs.whole("continuation_start", continuation_start, 0, unit="seconds")
        end = (
            None
            if continuation_end is None
            else inputs.whole("continuation_end", continuation_end, 0, unit="seconds")
        )
        if end is not None and end <= start:
            raise InvalidInputError(
                f"continuation_end ({end} s) must come after continuation_start ({start} s); "
                "leave continuation_end empty to use input_audio up to its end."
            )
        if continuation and audio_path is None:
            raise InvalidInputError("continuation is on, but there is no input_audio to continue: give one.")
        # with continuation off, input_audio is the style model's style excerpt, else a melody reference
        style_given = variant.style and audio_path is not None and not continuation
        melody_given = audio_path is not None and not continuation and not variant.style
        if melody_given and not variant.melody:
            melody_models = ", ".join(name for name, v in VARIANTS.items() if v.melody)
            raise InvalidInputError(
                f"input_audio is a melody reference (continuation is off), but {model_version} takes no "
                f"melody: choose a melody model ({melody_models}) or the style model to take on its style, "
                "turn continuation on to continue the audio instead, or leave input_audio out."
            )
        excerpt_length, eval_q, beta = _style_settings(
            variant,
            model_version,
            style_given,
            style_excerpt_length,
            style_eval_q,
            classifier_free_guidance_beta,
        )
        if beta is not None and prompt is None:
            raise InvalidInputError(
                "classifier_free_guidance_beta weighs the prompt against the style excerpt, and there is no "
                "prompt: give one, or leave classifier_free_guidance_beta empty for plain guidance."
            )
        sampling = SamplingParams(
            top_k=inputs.whole("top_k", top_k),
            top_p=inputs.number("top_p", top_p),
            temperature=inputs.number("temperature", temperature),
            cfg_coef=inputs.number("classifier_free_guidance", classifier_free_guidance, 0),
            cfg_beta=beta,
        )
        # the engine's own checks (top_k, top_p, temperature), with the same messages as the CLI's
        inputs.check_generation_args(
            duration=duration,
            sampling=sampling,
            melody_given=melody_given,
            model_accepts_melody=variant.melody,
        )
        strategy = inputs.choice("normalization_strategy", normalization_strategy, NORMALIZATION_STRATEGIES)
        output_format = inputs.choice("output_format", output_format, OUTPUT_FORMATS)
        seed = inputs.seed("seed", seed)

        audio = None
        if audio_path is not None:
            # the style excerpt is taken from a mono mix, as the style model's conditioner hears it
            channels = 1 if style_given else 2 if variant.stereo else 1
            audio = _read_input_audio(audio_path, channels, start, end)
            if continuation and audio.shape[-1] >= duration * SAMPLE_RATE:
                raise InvalidInputError(
                    f"the audio to continue lasts {audio.shape[-1] / SAMPLE_RATE:.2f} s, not shorter than "
                    f"duration ({duration} s), which counts the continued audio: ask for a longer duration "
                    "or use a shorter part of input_audio (continuation_start / continuation_end)."
                )
            if style_given and audio.shape[-1] < int(excerpt_length * SAMPLE_RATE):
                raise InvalidInputError(
                    f"input_audio (the style excerpt's source) lasts {audio.shape[-1] / SAMPLE_RATE:.2f} s"
                    f"{'' if (start, end) == (0, None) else ' between continuation_start and continuation_end'}, "
                    f"shorter than style_excerpt_length ({excerpt_length:g} s): give a longer clip, a longer "
                    "part of it, or a shorter style_excerpt_length."
                )

        with _named(weights_name):
            model = self.cache.get(model_version, finetuned=finetuned)
        # MultiBand Diffusion is loaded (and checked against the model's codec) before any generation work
        mbd = model.diffusion_decoder(self.cache.mbd()) if multi_band_diffusion else None
        job = model.prepare(
            prompt,
            duration=float(duration),
            melody=audio if melody_given else None,
            continuation=audio if continuation else None,
            style=audio if style_given else None,
            style_excerpt_length=excerpt_length if style_given else None,
            style_eval_q=eval_q if style_given else None,
            sampling=sampling,
            seed=seed,
        )
        return _Request(model_version, model, job, strategy, output_format, mbd)

    def _write(self, request: "_Request", codes: torch.Tensor, progress: "_DiffusionLog | None") -> Path:
        """Decode (EnCodec, or MultiBand Diffusion with its progress in the logs), normalise, write."""
        with torch.inference_mode():
            result = request.model.finish(codes, request.job.seed, mbd=request.mbd, on_step=progress)
        wav = normalize(result.audio[0], request.strategy, result.sample_rate)  # [C, S]: stereo stays stereo
        out = self.outputs.new(f"output.{request.output_format}")
        write_audio(out, wav, result.sample_rate)
        return Path(out)


@dataclass
class _Request:
    """A checked prediction, its generation prepared."""

    model_version: str
    model: object  # musicgen.MusicGen
    job: object  # musicgen.model.PreparedJob
    strategy: str
    output_format: str
    mbd: object = None  # musicgen.diffusion.MultiBandDiffusion when multi_band_diffusion is on


class _DiffusionLog:
    """Logs MultiBand Diffusion's progress: a line at each tenth of its steps, with the time so far; stops
    the decode at its next step once `cancelled` is set."""

    def __init__(self):
        self.start = time.monotonic()
        self.logged = 0
        self.cancelled = threading.Event()

    def __call__(self, done: int, total: int) -> None:
        if self.cancelled.is_set():
            raise _Cancelled("the prediction was cancelled during its multi-band diffusion")
        tenth = 10 * done // total
        if tenth > self.logged or done == 1:
            self.logged = max(self.logged, tenth)
            print(
                f"multi-band diffusion: {done}/{total} steps ({100 * done // total}%), "
                f"{time.monotonic() - self.start:.1f} s"
            )


class _Cancelled(Exception):
    """Ends a decode whose prediction was cancelled (nobody receives its error)."""


def _inputs_of(names: dict) -> dict:
    """run()'s inputs from its locals()."""
    return {k: v for k, v in names.items() if k != "self"}


def _concurrency() -> int:
    """Predictions the server takes at once: COG_MAX_CONCURRENCY as Cog reads it, else the decorator's."""
    text = os.environ.get("COG_MAX_CONCURRENCY", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else MAX_CONCURRENT_PREDICTIONS


def _style_settings(variant, model_version: str, style_given: bool, excerpt_length, eval_q, beta):
    """(style_excerpt_length, style_eval_q, classifier_free_guidance_beta) checked. Values other than the
    defaults (which a form sends whatever the model) need the style model and a style excerpt."""
    excerpt_length = inputs.number("style_excerpt_length", excerpt_length, unit="seconds")
    eval_q = inputs.whole("style_eval_q", eval_q)
    if beta is not None:
        beta = inputs.number("classifier_free_guidance_beta", beta, 0, inputs.MAX_CFG_BETA)
    defaults = StyleConfig()  # the released model's: known before any model is loaded
    if variant.style:
        check_style_args(defaults, excerpt_length, eval_q)
    given = [
        name
        for name, value, default in [
            ("style_excerpt_length", excerpt_length, defaults.excerpt_length),
            ("style_eval_q", eval_q, defaults.eval_q),
            ("classifier_free_guidance_beta", beta, None),
        ]
        if value != default
    ]
    if given:
        one = len(given) == 1
        names = given[0] if one else f"{', '.join(given[:-1])} and {given[-1]}"
        leave = f"leave {'it at its default' if one else 'them at their defaults'}"
        if not variant.style:
            raise InvalidInputError(
                f"{names} only {'applies' if one else 'apply'} to the style model, not {model_version}: "
                f"choose model_version=style, or {leave}."
            )
        if not style_given:
            raise InvalidInputError(
                f"{names} only {'applies' if one else 'apply'} to a style excerpt, and there is none: give "
                f"input_audio with continuation off, or {leave}."
            )
    return excerpt_length, eval_q, beta


@contextlib.contextmanager
def _named(name: str):
    """Prefixes the message of a FineTunedWeightsError with the input the weights came from."""
    try:
        yield
    except FineTunedWeightsError as err:
        raise FineTunedWeightsError(f"{name}: {err}") from err


def _read_input_audio(path: Path, channels: int, start: int, end: int | None):
    """input_audio from `start` to `end` seconds, [channels, samples] at the models' rate."""
    try:
        return inputs.read_input_audio(
            "input_audio", path, SAMPLE_RATE, channels, float(start), None if end is None else float(end)
        )
    except AudioFileError:
        raise  # already names input_audio
    except InvalidInputError as err:
        # read_audio names its own arguments; say which inputs they came from
        raise InvalidInputError(
            f"continuation_start / continuation_end do not fit input_audio: {err}"
        ) from err
