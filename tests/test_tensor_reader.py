"""Reading safetensors tensors into memory of their own (musicgen.checkpoints.tensor_reader)."""

import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from musicgen.checkpoints.tensor_reader import SafetensorsIndex
from musicgen.errors import CheckpointError


@pytest.fixture
def two_files(tmp_path):
    gen = torch.Generator().manual_seed(0)
    a = {
        "q": torch.randn(3, 4, generator=gen),
        "k": torch.randn(2, 4, generator=gen),
        "half": torch.randn(5, 2, generator=gen).half(),
        "ids": torch.arange(7),
        "scalar": torch.tensor(3.5),
    }
    b = {"v": torch.randn(1, 4, generator=gen), "bf": torch.randn(3, generator=gen).bfloat16()}
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    return tmp_path, {**a, **b}


def test_reads_every_tensor_as_saved_and_fuses_across_files(two_files):
    folder, tensors = two_files
    index = SafetensorsIndex([folder / "a.safetensors", folder / "b.safetensors"])
    for name, t in tensors.items():
        got = index.read([name])
        assert got.dtype == t.dtype and torch.equal(got, t)
    fused = index.read_all({"qkv": ["q", "k", "v"], "ids": ["ids"]})
    assert torch.equal(fused["qkv"], torch.cat([tensors["q"], tensors["k"], tensors["v"]]))
    assert torch.equal(fused["ids"], tensors["ids"])
    mapped = load_file(folder / "a.safetensors")  # what safetensors itself reads
    assert torch.equal(index.read(["half"]), mapped["half"])
    with pytest.raises(CheckpointError, match="differ in dtype or width"):
        index.read(["q", "half"])


def test_truncated_and_garbage_files_are_clear_errors(two_files, tmp_path):
    folder, _ = two_files
    data = (folder / "a.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match="does not fit its shape or the file"):
        SafetensorsIndex([cut])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 16)
    with pytest.raises(CheckpointError, match="header is not JSON"):
        SafetensorsIndex([garbage])
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(CheckpointError, match="bad header length"):
        SafetensorsIndex([huge])
