"""`python -m musicgen generate | convert | bench`: thin commands over the engine.

Every input is checked (files read, ranges, combinations) before any model is loaded, so a mistake costs
a second, not a model load.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import InvalidInputError, MusicGenError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicgen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_convert(sub)
    _add_bench(sub)
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return args.run(args)
    except MusicGenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _quiet_libraries() -> None:
    """transformers warns about quirks of the published configs (pad token 2048 = the codebook size) that
    are expected here; a person running the CLI should see our messages, not those."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported


# ---- generate -------------------------------------------------------------------------------------
def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate audio from text, a melody, a style excerpt, or audio to continue"
    )
    p.add_argument("--model", default="small", help="variant name (small, stereo-melody-large...) or folder")
    p.add_argument("--prompt", action="append", help="text prompt; repeat for a batch (one file per prompt)")
    p.add_argument(
        "--duration", type=float, default=8.0, help="seconds per clip (at most 300), continued audio included"
    )
    p.add_argument("--melody", type=Path, help="audio whose melody guides the music (melody variants)")
    p.add_argument("--continue", dest="continuation", type=Path, help="audio to continue")
    p.add_argument(
        "--style",
        type=Path,
        action="append",
        help="audio whose style the music takes (the style model); one per --prompt, or one for all",
    )
    p.add_argument(
        "--style-excerpt-length",
        type=float,
        help="seconds of the style audio the style is taken from, 1.5 to 4.5 (default 3)",
    )
    p.add_argument(
        "--style-excerpt-start",
        type=float,
        help="where the excerpt starts in each style file, in seconds (default: drawn from the seed)",
    )
    p.add_argument(
        "--style-eval-q",
        type=int,
        help="style codebooks used, 1 (loose) to 6 (close to the excerpt) (default 3)",
    )
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--top-p", type=float, default=0.0, help="0 switches it off")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument(
        "--cfg-beta",
        type=float,
        help="double guidance (the style model, with --prompt and --style): how much the text counts "
        "against the style; 5 is a good start; default off",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="0 to 2**63-1: same seed, same inputs -> same codes; omitted or -1: one is drawn",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda when available)")
    p.add_argument("--out", type=Path, default=Path("out.wav"), help=".wav, .mp3 or .flac")
    p.add_argument("--codes-out", type=Path, help="save the codes as int64 .npy [batch, codebooks, frames]")
    p.add_argument(
        "--normalize", default="loudness", choices=["loudness", "peak", "rms", "clip"], help="output loudness"
    )
    p.add_argument(
        "--melody-stems",
        default="auto",
        choices=["auto", "on", "off"],
        help="remove drums and bass from the melody with Demucs first (auto: when its weights are present)",
    )
    p.add_argument(
        "--decoder",
        default="encodec",
        choices=["encodec", "mbd"],
        help="codes -> audio: EnCodec (fast), or MultiBand Diffusion (fuller highs, fewer artefacts, far "
        "slower; its weights are fetched and converted on first use)",
    )
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing weights")
    p.add_argument(
        "--int8",
        action="store_true",
        help="CPU only: int8 weights for the language model (faster, slightly different)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_generate)


def _generate(args) -> int:
    import numpy as np

    from . import inputs
    from .audio import SUPPORTED_WRITE_SUFFIXES, normalize, write_audio
    from .loading import peek_model, resolve_device
    from .model import MusicGen
    from .sampling import SamplingParams

    sampling = SamplingParams(
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        cfg_coef=args.cfg,
        cfg_beta=args.cfg_beta,
    )
    traits = peek_model(args.model)
    inputs.check_generation_args(
        duration=args.duration,
        sampling=sampling,
        melody_given=args.melody is not None,
        model_accepts_melody=None if traits is None else traits.melody,
    )
    inputs.check_prompts(args.prompt or [None])
    _check_style_options(args, traits)
    seed = inputs.seed("--seed", args.seed)  # the server's rule: 0 to 2**63 - 1, or -1 for a random one
    if args.out.suffix.lower() not in SUPPORTED_WRITE_SUFFIXES:
        raise InvalidInputError(
            f"--out {args.out}: unsupported format; use one of {', '.join(SUPPORTED_WRITE_SUFFIXES)}."
        )
    if args.codes_out is not None and args.codes_out.suffix != ".npy":
        raise InvalidInputError(f"--codes-out {args.codes_out}: the codes are saved as .npy; name it so.")
    outputs = _numbered(args.out, len(args.prompt or [None]))
    for path in outputs:
        _check_writable("--out", path)
    if args.codes_out is not None:
        _check_writable("--codes-out", args.codes_out)
    channels = 2 if traits is None or traits.stereo else 1
    sr = 32000
    melody = None
    if args.melody is not None:
        melody = inputs.read_input_audio("--melody", args.melody, sr, channels)
    continuation = None
    if args.continuation is not None:
        continuation = inputs.read_input_audio("--continue", args.continuation, sr, channels)
    if continuation is not None and continuation.shape[-1] >= args.duration * sr:
        raise InvalidInputError(
            f"--continue {args.continuation} lasts {continuation.shape[-1] / sr:.2f} s, not shorter than "
            f"--duration {args.duration} s (the duration counts the continued audio)."
        )
    style = _read_styles(args, sr)

    device = resolve_device(args.device)  # an unusable device is refused before the checkpoint is read
    decoder = "encodec"
    if args.decoder == "mbd":  # its weights are found (or fetched) before the model is loaded
        from .diffusion import MultiBandDiffusion

        decoder = MultiBandDiffusion.from_weights(device, download=not args.no_download)
    model = MusicGen.load(args.model, device=args.device, download=not args.no_download, int8=args.int8)
    result = model.generate(
        args.prompt,
        duration=args.duration,
        melody=melody,
        continuation=continuation,
        style=style,
        style_excerpt_length=args.style_excerpt_length,
        style_excerpt_start=args.style_excerpt_start,
        style_eval_q=args.style_eval_q,
        sampling=sampling,
        seed=seed,
        melody_stems=args.melody_stems,
        progress=not args.quiet,
        decoder=decoder,
    )
    print(f"seed: {result.seed}", file=sys.stderr)
    for wav, path in zip(result.audio, outputs, strict=True):
        write_audio(path, normalize(wav, args.normalize, result.sample_rate), result.sample_rate)
        print(path)
    if args.codes_out is not None:
        np.save(args.codes_out, result.codes.numpy().astype(np.int64))
        print(args.codes_out)
    return 0


def _check_style_options(args, traits) -> None:
    """The style options, checked against each other and against the model (when known without loading
    it) with the released style model's ranges."""
    import math

    from .config import StyleConfig
    from .style import check_style_args

    settings = {
        "--style-excerpt-length": args.style_excerpt_length,
        "--style-excerpt-start": args.style_excerpt_start,
        "--style-eval-q": args.style_eval_q,
    }
    given = [name for name, value in settings.items() if value is not None]
    if traits is not None and not traits.style:
        used = [
            *(["--style"] if args.style else []),
            *given,
            *(["--cfg-beta"] if args.cfg_beta is not None else []),
        ]
        if used:
            raise InvalidInputError(
                f"{', '.join(used)}: {args.model} has no style conditioner; use --model style "
                "(MusicGen-Style), or leave these options out."
            )
    if not args.style:
        if given:
            one = len(given) == 1
            raise InvalidInputError(
                f"{', '.join(given)} {'sets' if one else 'set'} the style excerpt: give --style FILE too, or "
                f"leave {'it' if one else 'them'} out."
            )
        if args.cfg_beta is not None:
            raise InvalidInputError(
                "--cfg-beta weighs the text against the style: give --style FILE (and --prompt), or leave "
                "--cfg-beta out for ordinary guidance."
            )
        return
    prompts = args.prompt or [None]
    if len(args.style) not in (1, len(prompts)):
        raise InvalidInputError(
            f"{len(args.style)} --style files for {len(prompts)} prompts: give one --style per --prompt, "
            "or a single one for all."
        )
    if args.cfg_beta is not None and not any(_has_text(p) for p in prompts):
        raise InvalidInputError(
            "--cfg-beta weighs the text against the style, and there is no text: give --prompt, or leave "
            "--cfg-beta out."
        )
    defaults = StyleConfig()
    length = defaults.excerpt_length if args.style_excerpt_length is None else args.style_excerpt_length
    eval_q = defaults.eval_q if args.style_eval_q is None else args.style_eval_q
    check_style_args(defaults, length, eval_q)
    start = args.style_excerpt_start
    if start is not None and not (math.isfinite(start) and start >= 0):
        raise InvalidInputError(f"--style-excerpt-start must be a number of seconds >= 0, got {start}.")


def _has_text(prompt: str | None) -> bool:
    return prompt is not None and bool(prompt.strip())


def _read_styles(args, sr: int):
    """The --style files, mono at `sr`, each long enough for its excerpt: one tensor for all clips, or a
    list with one per clip; None without --style."""
    from . import inputs
    from .config import StyleConfig

    if not args.style:
        return None
    length = StyleConfig().excerpt_length if args.style_excerpt_length is None else args.style_excerpt_length
    start = args.style_excerpt_start or 0.0
    need = int(start * sr) + int(length * sr)
    read = {}
    for path in args.style:
        if path in read:
            continue
        wav = inputs.read_input_audio("--style", path, sr, 1)
        if wav.shape[-1] < need:
            where = f"from {start:g} s " if args.style_excerpt_start is not None else ""
            raise InvalidInputError(
                f"--style {path} lasts {wav.shape[-1] / sr:.2f} s, too short for a style excerpt of "
                f"{length:g} s {where}(--style-excerpt-length{', --style-excerpt-start' if where else ''}): "
                "give a longer file, or a shorter or earlier excerpt."
            )
        read[path] = wav
    styles = [read[path] for path in args.style]
    return styles[0] if len(styles) == 1 else styles


def _check_writable(option: str, path: Path) -> None:
    """Refuses an output path that cannot be written, before any work: by trying to create the file (the
    one check that also catches read-only disks and, for root, everything permissions would not)."""
    if path.is_dir():
        raise InvalidInputError(f"{option} {path} is a folder; give a file name.")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as e:
        raise InvalidInputError(
            f"{option} {path}: cannot write there ({e.strerror or e}); choose another path."
        ) from e
    if not existed:
        path.unlink(missing_ok=True)


def _numbered(path: Path, count: int) -> list[Path]:
    """out.wav for one clip; out-1.wav, out-2.wav... for several."""
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, count + 1)]


# ---- convert --------------------------------------------------------------------------------------
def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between transformers' and audiocraft's layouts")
    p.add_argument("source", help="variant name, Hub id or checkpoint folder")
    p.add_argument("dest", type=Path, help="folder to write")
    p.add_argument("--to", required=True, choices=["transformers", "audiocraft"])
    p.set_defaults(run=_convert)


def _convert(args) -> int:
    from .loading import bundle_submodels, load_checkpoint

    ckpt = load_checkpoint(args.source)
    if args.dest.exists() and any(args.dest.iterdir()):
        raise InvalidInputError(f"{args.dest} exists and is not empty; choose a new folder.")
    if args.to == "transformers":
        from .checkpoints.transformers_layout import write_transformers

        write_transformers(bundle_submodels(ckpt), args.dest)
    else:
        from .checkpoints.audiocraft_layout import write_audiocraft

        write_audiocraft(ckpt, args.dest)
    print(json.dumps({"wrote": str(args.dest), "layout": args.to}))
    return 0


# ---- bench ----------------------------------------------------------------------------------------
def _add_bench(sub) -> None:
    from .bench import add_arguments  # the standard library only: the CLI still starts fast

    p = sub.add_parser(
        "bench", help="decode speed, end-to-end time, cold start and memory: this engine vs transformers"
    )
    add_arguments(p)
    p.set_defaults(run=_bench)


def _bench(args) -> int:
    from .bench import run_cli

    return run_cli(args)
