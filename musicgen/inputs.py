"""Request inputs, checked in one place: the rules that predict.py, train.py and the CLI share.

Cog's local server (`python -m cog.server.http` outside an image built by `cog build`) has no OpenAPI
schema and hands the adapters whatever JSON it got: "8", 8.5, true, NaN, null, names nobody declared.
Even a built image lets 3.0 through as an integer. So every value is checked here, by type, range and
choice, and every mistake ends in an `InvalidInputError` that names the input and says what to send
instead, before any model is loaded. The adapters call these functions and nothing else decides.

Nothing here imports torch at module level: the CLI checks its arguments before that import.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import secrets
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import AudioFileError, InvalidInputError

if TYPE_CHECKING:
    import torch

    from .sampling import SamplingParams

# Past 30 s the engine generates in overlapping windows; the bound keeps one request's time and memory
# finite (the codes of 300 s stereo are small, but 1e9 s would ask for gigabytes before the first step).
MAX_DURATION_SECONDS = 300
# torch seeds are 64-bit; -1 (like None) asks for a random seed, as on meta/musicgen.
MAX_SEED = 2**63 - 1
# T5 reads at most 512 tokens (about 2,000 characters of English; `conditioning.MAX_TEXT_TOKENS` truncates
# past that). A text far longer than that is a mistake, and tokenizing it would be work for nothing.
MAX_PROMPT_CHARACTERS = 10_000
# An audio input's part that is read (melody or audio to continue): a clip uses at most 300 s of it, and
# a longer file would only cost memory (an hour of stereo is 1.8 GB decoded, several times that resampled).
MAX_INPUT_AUDIO_SECONDS = 600
# MusicGen-Style's double guidance: audiocraft suggests 1 to 9 (5 in its demo); past 20 the text swamps all
MAX_CFG_BETA = 20.0
# The schemes a file input may use; Cog itself fetches http(s) and data URLs into local files.
FILE_URL_SCHEMES = ("http", "https", "data")

_F = TypeVar("_F", bound=Callable[..., Any])


# ---- values -------------------------------------------------------------------------------------


def choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices`."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def whole(name: str, value: Any, low: int | None = None, high: int | None = None, unit: str = "") -> int:
    """`value` as an int within [low, high] (`unit` for the message). JSON has one number type, so 8.0 is
    8; 8.5, "8" and true are mistakes."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be a whole number{unit and ' of ' + unit}, got {value!r}.")
    _check_range(name, value, low, high, unit)
    return value


def number(
    name: str, value: Any, low: float | None = None, high: float | None = None, unit: str = ""
) -> float:
    """`value` as a finite float within [low, high]; NaN, infinities, text and booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number{unit and ' of ' + unit}, got {value!r}.")
    _check_range(name, value, low, high, unit)
    return float(value)


def flag(name: str, value: Any) -> bool:
    """`value` if it is true or false (not 1, "yes" or null)."""
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be true or false, got {value!r}.")
    return value


def optional_text(name: str, value: Any, max_characters: int | None = None) -> str | None:
    """Stripped text, or None for an absent or blank value (a web form sends empty fields as "")."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be text, got {value!r}.")
    text = value.strip()
    if max_characters is not None and len(text) > max_characters:
        raise InvalidInputError(
            f"{name} is {len(text):,} characters long; at most {max_characters:,} are accepted: shorten it."
        )
    return text or None


def prompt(name: str, value: Any) -> str | None:
    """A text prompt: text of at most MAX_PROMPT_CHARACTERS, or None for no description."""
    return optional_text(name, value, MAX_PROMPT_CHARACTERS)


def check_prompts(prompts: list[str | None]) -> None:
    """Refuses prompts that are not text or longer than MAX_PROMPT_CHARACTERS (the engine's own check)."""
    for i, text in enumerate(prompts):
        prompt(f"prompt {i + 1}" if len(prompts) > 1 else "the prompt", text)


def optional_file(name: str, value: Any) -> Path | None:
    """A local file for a file input, or None when absent.

    Cog turns http(s) and data URLs into downloaded files (`cog.Path`) before the adapter runs and passes
    anything else as text: a path on the server's disk, a file:// URL (taken as the path it names), or
    another scheme, refused here by name rather than reported later as a missing file.
    """
    if isinstance(value, str):
        value = value.strip() or None
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        return Path(value)
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a file (a URL, data URL or path), got {value!r}.")
    scheme = urllib.parse.urlsplit(value).scheme.lower()
    if scheme == "file":
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(value).path))
    if scheme in FILE_URL_SCHEMES:
        # Cog fetches these itself; reaching here means it did not (an in-process call, or a Cog that
        # no longer does), so say what to do rather than look for a file called "https:/..."
        raise InvalidInputError(f"{name}: the URL {value[:200]!r} was not downloaded; pass a local file.")
    if len(scheme) > 1:  # "c:" would be a Windows drive, not a scheme
        raise InvalidInputError(
            f"{name}: unsupported URL scheme {scheme!r} in {value[:200]!r}; use an http(s) URL, a data URL, "
            "or a path on the server."
        )
    return Path(value)


def seed(name: str, value: Any) -> int:
    """The seed to use: the one given (0 to MAX_SEED), or a random one for None and -1."""
    if value is None:
        return secrets.randbelow(2**31)
    given = whole(name, value)
    if given == -1:
        return secrets.randbelow(2**31)
    if not 0 <= given <= MAX_SEED:
        raise InvalidInputError(
            f"{name} must be between 0 and {MAX_SEED}, or -1 for a random one; got {given}."
        )
    return given


def _check_range(name: str, value: float, low: float | None, high: float | None, unit: str = "") -> None:
    unit = f" {unit}" if unit else ""
    if low is not None and high is not None and not low <= value <= high:
        raise InvalidInputError(f"{name} must be between {low:g} and {high:g}{unit}, got {value:g}.")
    if low is not None and value < low:
        raise InvalidInputError(f"{name} must be {low:g}{unit} or more, got {value:g}.")
    if high is not None and value > high:
        raise InvalidInputError(f"{name} must be {high:g}{unit} or less, got {value:g}.")


# ---- generation parameters ----------------------------------------------------------------------


def check_generation_args(
    *, duration: float, sampling: SamplingParams, melody_given: bool, model_accepts_melody: bool | None = None
) -> None:
    """Rejects bad generation parameters before any model work; raises InvalidInputError saying what to
    change. Every entry point (`MusicGen.generate`, the CLI, predict.py) runs it."""
    if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration):
        raise InvalidInputError(f"duration must be a finite number of seconds, got {duration!r}.")
    if not 0 < duration <= MAX_DURATION_SECONDS:
        raise InvalidInputError(
            f"duration must be more than 0 and at most {MAX_DURATION_SECONDS} seconds, got {duration}."
        )
    if not 0.0 <= sampling.top_p <= 1.0:
        raise InvalidInputError(f"top_p must be between 0 and 1 (0 switches it off), got {sampling.top_p}.")
    if sampling.top_k < 0:
        raise InvalidInputError(
            f"top_k must be 0 (off) or a positive number of tokens, got {sampling.top_k}."
        )
    if not math.isfinite(sampling.temperature) or sampling.temperature < 0:
        raise InvalidInputError(f"temperature must be >= 0 (0 = greedy), got {sampling.temperature}.")
    if not math.isfinite(sampling.cfg_coef) or sampling.cfg_coef < 0:
        raise InvalidInputError(f"the guidance scale (cfg) must be >= 0, got {sampling.cfg_coef}.")
    beta = sampling.cfg_beta
    if beta is not None and (
        isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 <= beta <= MAX_CFG_BETA
    ):
        raise InvalidInputError(
            f"the double-guidance weight (cfg_beta) must be a number from 0 to {MAX_CFG_BETA}, or left "
            f"out for ordinary guidance; got {beta!r}."
        )
    if melody_given and model_accepts_melody is False:
        raise InvalidInputError(
            "a melody was given, but this model takes no melody: use a melody variant "
            "(melody, melody-large, stereo-melody, stereo-melody-large), or drop the melody."
        )


def check_finite_audio(name: str, wav: torch.Tensor) -> torch.Tensor:
    """`wav` if every sample is a finite number: NaN or infinite samples (a broken float WAV) would turn
    into a normal-looking clip of noise, so they are refused, naming the input."""
    import torch

    if not bool(torch.isfinite(wav).all()):
        raise AudioFileError(
            f"{name} holds NaN or infinite samples: it is not usable audio. Export it again as 16- or 24-bit "
            "PCM (or a float file without invalid samples)."
        )
    return wav


def read_input_audio(
    name: str,
    path: Path,
    sample_rate: int,
    channels: int,
    start: float | None = None,
    end: float | None = None,
    max_seconds: float = MAX_INPUT_AUDIO_SECONDS,
) -> torch.Tensor:
    """The file input `name` read as [channels, samples] at `sample_rate`, every error naming the input.

    The part to read (start to end, or to the end of the file) is measured from the file's header first
    and refused past `max_seconds`, before anything is decoded: decoded audio takes 4 bytes per sample and
    channel, several times that while it is resampled.
    """
    import soundfile as sf

    from .audio import read_audio

    try:
        info = sf.info(str(path))
        length = info.frames / info.samplerate if info.samplerate > 0 else 0.0
    except (sf.SoundFileError, RuntimeError, OSError):
        length = 0.0  # read_audio says what is wrong with the file, in its own words
    part = min(length, end if end is not None else length) - (start or 0.0)
    if part > max_seconds:
        raise AudioFileError(
            f"{name} is {length:.0f} s long and {part:.0f} s of it would be used; at most {max_seconds:.0f} s "
            "are accepted: use a shorter file, or a shorter part of it."
        )
    try:
        wav = read_audio(path, sample_rate, channels, start=start, end=end)
    except AudioFileError as err:
        raise AudioFileError(f"{name} cannot be used: {err}") from err
    return check_finite_audio(name, wav)


# ---- the adapters' calls ------------------------------------------------------------------------


def declared_inputs_only(fn: _F) -> _F:
    """Wraps an adapter (predict.py's `run`, train.py's `train`) so that an input name it does not declare
    fails with a message listing the names it knows, instead of Python's "unexpected keyword argument".

    Without a schema, Cog passes every JSON key as a keyword, and for a wrapped function it fills in no
    defaults: absent inputs arrive as the `Input(...)` objects of the signature, replaced here by their
    defaults (None for a required input, which the adapter then refuses by name). Cog reads the inputs'
    types through the wrapper (its closure holds one function), so the schema is unchanged.
    """
    params = inspect.signature(fn).parameters
    # the wrappers' closures hold exactly one function, `fn`: Cog unwraps a decorator that way
    if inspect.iscoroutinefunction(fn):  # Cog serves an async run concurrently: it must stay async

        @functools.wraps(fn)
        async def checked_async(*args, **inputs):
            return await fn(*args, **_filled(inputs, params))

        return checked_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def checked(*args, **inputs):
        return fn(*args, **_filled(inputs, params))

    return checked  # type: ignore[return-value]


def _filled(inputs: dict, params) -> dict:
    """The inputs with every declared name present (defaults filled); an undeclared name is refused."""
    from cog.input import FieldInfo

    names = [n for n in params if n != "self"]
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise InvalidInputError(
            f"unknown input{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
            f"this model takes {', '.join(names)}. Check the spelling, or leave it out."
        )
    for name in names:
        value = inputs.get(name, params[name].default)
        inputs[name] = value.default if isinstance(value, FieldInfo) else value
    return inputs


# The file input that Cog's fetching errors name: set by `name_file_input_errors`.
_file_input = {"name": "the file input"}


def name_file_input_errors(name: str) -> None:
    """Makes Cog's failures to fetch a file input name `name` and say what to do.

    Cog downloads http(s) and data URLs given for a `Path` input before the adapter runs, and reports a
    failure with the HTTP library's raw text ("HTTPConnectionPool(host=...) Max retries exceeded", "Invalid
    base64-encoded string") under "Input validation error", without saying which input. Cog has no hook
    for this, so its two fetching functions are wrapped, once per process. Each adapter has one file
    input, the one named (the latest call wins). Tests through the real server hold the message.
    """
    import cog.types as cog_types

    _file_input["name"] = name
    if getattr(cog_types.URLPath.convert, "_names_file_input", False):
        return
    validate, convert = cog_types.Path.validate.__func__, cog_types.URLPath.convert

    def checked_validate(cls, value):
        if not isinstance(value, str | os.PathLike):
            raise InvalidInputError(
                f"{_file_input['name']} must be a file (a URL, data URL or path), got {value!r}."
            )
        try:
            return validate(cls, value)
        except Exception as err:
            raise _fetch_error(str(value), err) from err

    def checked_convert(self):
        try:
            return convert(self)
        except Exception as err:
            raise _fetch_error(self.source, err) from err

    checked_convert._names_file_input = True
    cog_types.Path.validate = classmethod(checked_validate)
    cog_types.URLPath.convert = checked_convert


def _fetch_error(source: str, err: Exception) -> InvalidInputError:
    name = _file_input["name"]
    shown = source if len(source) <= 120 else source[:60] + "..." + source[-20:]
    detail = " ".join(str(err).split())[:300]
    if source.startswith("data:"):
        return InvalidInputError(
            f"{name}: the data URL could not be decoded ({detail}); send the file as "
            "data:<mime type>;base64,<the file in base64>."
        )
    return InvalidInputError(
        f"{name}: could not download {shown} ({detail}); check that the URL is right and reachable from "
        "the server, or send the file itself."
    )
