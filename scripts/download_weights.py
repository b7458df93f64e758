"""Fetch MusicGen weights from the Hugging Face Hub into the weights folder, ahead of serving.

    python scripts/download_weights.py small stereo-melody-large
    python scripts/download_weights.py style
    python scripts/download_weights.py all
    python scripts/download_weights.py --pretrained t5-base --pretrained facebook/encodec_32khz

Weights go to $MUSICGEN_WEIGHTS_DIR, else weights/ beside musicgen/. A model already there is not fetched
again. A model in audiocraft's layout (`style`: MusicGen-Style, whose Hub repo holds state_dict.bin +
compression_state_dict.bin only) comes with the sub-models it names instead of bundling, so that it loads
offline afterwards: for `style`, t5-base and m-a-p/MERT-v1-95M (its codec is whole in its files; a pointer
file would bring facebook/encodec_32khz). A copy in the Hugging Face cache (~/.cache/huggingface) does not
count: this script fills the weights folder, which is what a Cog image bakes, and the cache lives outside
the image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a file (`python scripts/...`), Python puts scripts/ on the path, not the repository root
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from musicgen.errors import MusicGenError  # noqa: E402
from musicgen.variants import VARIANTS  # noqa: E402
from musicgen.weights import named_submodels, resolve_model, resolve_pretrained, weights_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Download each named model; print where it landed. Returns the process exit status."""
    parser = argparse.ArgumentParser(
        description="Download MusicGen weights (and the sub-models they name) from the Hugging Face Hub.",
        epilog=f"Variants: {', '.join(VARIANTS)}. Weights folder: {weights_dir()} (MUSICGEN_WEIGHTS_DIR).",
    )
    parser.add_argument(
        "models", nargs="*", metavar="VARIANT", help="a variant name, `all`, or a Hub id such as owner/name"
    )
    parser.add_argument(
        "--pretrained",
        action="append",
        default=[],
        metavar="NAME",
        help="a sub-model that audiocraft-layout checkpoints need (t5-base, facebook/encodec_32khz, "
        "m-a-p/MERT-v1-95M); a variant's are fetched with it",
    )
    args = parser.parse_args(argv)
    if not args.models and not args.pretrained:
        parser.error("name at least one VARIANT (or `all`), or --pretrained NAME")

    models = [m for name in args.models for m in (VARIANTS if name == "all" else [name])]
    # a queue: a model's sub-models join it once the model is there (a name is fetched once)
    jobs = [(name, resolve_model) for name in dict.fromkeys(models)]
    jobs += [(name, resolve_pretrained) for name in dict.fromkeys(args.pretrained)]
    queued = {name for name, _ in jobs}

    failed = 0
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
