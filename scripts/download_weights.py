"""Fetch MusicGen weights from the Hugging Face Hub into the weights folder, ahead of serving.

    python scripts/download_weights.py small stereo-melody-large
    python scripts/download_weights.py style
    python scripts/download_weights.py all
    python scripts/download_weights.py --pretrained t5-base --pretrained facebook/encodec_32khz
    python scripts/download_weights.py mbd
    python scripts/download_weights.py --convert-mbd ~/Downloads/mbd_musicgen_32khz.th

Weights go to $MUSICGEN_WEIGHTS_DIR, else weights/ beside musicgen/. A model already there is not fetched
again. A model in audiocraft's layout (`style`: MusicGen-Style, whose Hub repo holds state_dict.bin +
compression_state_dict.bin only) comes with the sub-models it names instead of bundling, so that it loads
offline afterwards: for `style`, t5-base and m-a-p/MERT-v1-95M (its codec is whole in its files; a pointer
file would bring facebook/encodec_32khz). A copy in the Hugging Face cache (~/.cache/huggingface) does not
count: this script fills the weights folder, which is what a Cog image bakes, and the cache lives outside
the image.

`mbd` is MultiBand Diffusion, the optional diffusion decoder (not part of `all`): its release
(facebook/multiband-diffusion, mbd_musicgen_32khz.th, a few GB) is a pickle that the engine never loads,
so it is converted into weights/mbd/ (config.json + model.safetensors) and the downloaded pickle deleted.
Here the Hugging Face cache does count as the source: a copy of the release there is converted instead of
downloaded again (the result still lands in the weights folder). `--convert-mbd PATH` converts a release
file you already have, replacing any earlier conversion.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a file (`python scripts/...`), Python puts scripts/ on the path, not the repository root
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from musicgen.errors import MusicGenError  # noqa: E402
from musicgen.variants import VARIANTS  # noqa: E402
from musicgen.weights import (  # noqa: E402
    MBD_DIR,
    MBD_FILE,
    MBD_HUB_ID,
    named_submodels,
    resolve_mbd,
    resolve_model,
    resolve_pretrained,
    weights_dir,
)

MBD = "mbd"


def _resolve_mbd(name: str, hf_cache: bool = False) -> Path:
    # the release in the Hugging Face cache is only the source of a conversion into the weights folder, so
    # it is used whatever `hf_cache` says (which keeps the cache's own snapshots out of the weights folder)
    return resolve_mbd(download=True, hf_cache=True)


def _convert_mbd(path: str) -> Path:
    from musicgen.checkpoints.mbd_release import convert_mbd_release

    src = Path(path).expanduser()
    return convert_mbd_release(src, weights_dir() / MBD_DIR, source=str(src.resolve()))


def main(argv: list[str] | None = None) -> int:
    """Download each named model; print where it landed. Returns the process exit status."""
    parser = argparse.ArgumentParser(
        description="Download MusicGen weights (and the sub-models they name) from the Hugging Face Hub.",
        epilog=f"Variants: {', '.join(VARIANTS)}. `{MBD}`: MultiBand Diffusion, the optional diffusion "
        f"decoder ({MBD_HUB_ID}, {MBD_FILE}), converted into {weights_dir() / MBD_DIR}. Weights folder: "
        f"{weights_dir()} (MUSICGEN_WEIGHTS_DIR).",
    )
    parser.add_argument(
        "models",
        nargs="*",
        metavar="VARIANT",
        help=f"a variant name, `all` (every variant), `{MBD}` (MultiBand Diffusion), or a Hub id such as "
        "owner/name",
    )
    parser.add_argument(
        "--pretrained",
        action="append",
        default=[],
        metavar="NAME",
        help="a sub-model that audiocraft-layout checkpoints need (t5-base, facebook/encodec_32khz, "
        "m-a-p/MERT-v1-95M); a variant's are fetched with it",
    )
    parser.add_argument(
        "--convert-mbd",
        metavar="PATH",
        help=f"convert a MultiBand Diffusion release file you already have ({MBD_FILE}) into "
        f"{weights_dir() / MBD_DIR}, replacing an earlier conversion",
    )
    args = parser.parse_args(argv)
    if not args.models and not args.pretrained and not args.convert_mbd:
        parser.error(
            "name at least one VARIANT (or `all`, or `mbd`), --pretrained NAME, or --convert-mbd PATH"
        )

    models = [m for name in args.models for m in (VARIANTS if name == "all" else [name])]
    # a queue: a model's sub-models join it once the model is there (a name is fetched once)
    jobs = [(name, _resolve_mbd if name == MBD else resolve_model) for name in dict.fromkeys(models)]
    jobs += [(name, resolve_pretrained) for name in dict.fromkeys(args.pretrained)]
    queued = {name for name, _ in jobs}

    failed = 0
    if args.convert_mbd:
        try:
            print(f"{args.convert_mbd}: {_convert_mbd(args.convert_mbd)}")
        except MusicGenError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
        except KeyboardInterrupt:
            print("interrupted while converting; no partial conversion was kept", file=sys.stderr)
            return 130
    for name, resolve in jobs:
        try:
            # the weights folder must end up holding the model, whatever the Hugging Face cache holds
            path = resolve(name, hf_cache=False)
            needs = named_submodels(path) if resolve is resolve_model else []
        except MusicGenError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        except KeyboardInterrupt:
            print(f"interrupted while fetching {name}; no partial download was kept", file=sys.stderr)
            return 130
        print(f"{name}: {path}" + (f" (names {', '.join(needs)})" if needs else ""))
        jobs += [(sub, resolve_pretrained) for sub in needs if sub not in queued]
        queued.update(needs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
