"""The tiny random checkpoints are reproducible: the same call writes the same files in any process."""

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_tiny_tokenizer_is_the_same_in_every_process(tmp_path):
    # tokenizers' Unigram trainer orders its pieces by hash, which changes from process to process
    script = (
        "import sys; from musicgen.tiny import make_tokenizer; make_tokenizer().save_pretrained(sys.argv[1])"
    )
    digests = []
    for i in range(3):
        out = tmp_path / str(i)
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, cwd=ROOT, capture_output=True)
        digests.append(hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest())
    assert len(set(digests)) == 1
