"""Checks by hand that the CLI reproduces transformers' greedy codes on fresh tiny random checkpoints.

    .venv/bin/python scripts/parity_check.py --seed 123 [--kind mono --kind stereo --kind melody]

For each kind: builds a tiny random checkpoint with that seed (transformers' classes), saves it, runs
transformers' `generate(do_sample=False, guidance_scale=3)`, runs `python -m musicgen generate` on the saved
folder in a separate process, and compares the codes. Exit code 0 when every kind matches to the token.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from musicgen.tiny import KINDS, save_tiny_model  # noqa: E402
from tests.helpers import reference_generate  # noqa: E402


def check(kind: str, seed: int, frames: int, work: Path) -> bool:
    from transformers import AutoModelForTextToWaveform, AutoTokenizer

    folder = save_tiny_model(work / f"{kind}-{seed}", kind, seed)
    model = AutoModelForTextToWaveform.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = ["80s synth pop with punchy bass", "acoustic guitar folk song"]
    ref, _ = reference_generate(model, tokenizer, prompts, frames=frames)
    codes_file = work / f"{kind}-{seed}.npy"
    cmd = [sys.executable, "-m", "musicgen", "generate", "--model", str(folder), "--quiet", "--seed", "0"]
    cmd += ["--duration", str(frames / 50), "--top-k", "1", "--cfg", "3", "--out", str(work / f"{kind}.wav")]
    cmd += [arg for p in prompts for arg in ("--prompt", p)] + ["--codes-out", str(codes_file)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    ours = np.load(codes_file)
    same = ours.shape == tuple(ref.shape) and np.array_equal(ours, ref.numpy())
    print(f"{kind:14s} seed {seed}: codes {ours.shape} {'match' if same else 'DIFFER'}")
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--kind", action="append", choices=KINDS)
    parser.add_argument("--frames", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [check(k, args.seed, args.frames, Path(tmp)) for k in args.kind or KINDS]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
