"""Reading chosen tensors of `.safetensors` files into memory of their own, without mapping the file.

safetensors' `load_file` maps the whole file and keeps the mapping while any tensor of it lives, so every
page a reader touches stays in the process's resident memory. That suits tensors used as they are (pages
never touched, like most of T5's vocabulary table, cost nothing), but not tensors copied into others:
the language model's q/k/v projections fused into one matrix, or weights quantized to int8. Their source
pages would stay resident beside the copies, about 0.7 GB more for musicgen-small. safetensors offers no
way to read a tensor into a given buffer, so this module reads the (documented, small) header itself:
8 bytes of little-endian header length, a JSON object {name: {dtype, shape, data_offsets}}, then the data.
"""

from __future__ import annotations

import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from math import prod
from pathlib import Path

import torch

from ..errors import CheckpointError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 2**20  # safetensors' own limit


class SafetensorsIndex:
    """Where each tensor of some `.safetensors` files lies; reads them (or row-wise concatenations)."""

    def __init__(self, files: list[Path]):
        self._where: dict[str, tuple[Path, torch.dtype, list[int], int, int]] = {}
        for path in files:
            self._index(path)

    def read_all(self, plan: dict[str, list[str]]) -> dict[str, torch.Tensor]:
        """{key: read(names)} for each entry of `plan`, two reads at a time (faulting in fresh pages is
        the cost here, and file reads release the GIL)."""
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            return dict(zip(plan, pool.map(self.read, plan.values()), strict=True))

    def read(self, names: list[str]) -> torch.Tensor:
        """The tensors `names` concatenated along their first dimension (one name: that tensor as it is),
        read into one new tensor."""
        parts = [self._where[n] for n in names]
        dtype, rest = parts[0][1], parts[0][2][1:]
        if len(parts) > 1 and any(not p[2] or p[1] != dtype or p[2][1:] != rest for p in parts):
            raise CheckpointError(
                f"{parts[0][0]}: tensors {names} differ in dtype or width; cannot fuse them."
            )
        shape = parts[0][2] if len(parts) == 1 else [sum(p[2][0] for p in parts), *rest]
        out = torch.empty(shape, dtype=dtype)
        row = 0
        for name, (path, _, part_shape, start, end) in zip(names, parts, strict=True):
            rows = part_shape[0] if part_shape else 1
            # rows of a contiguous tensor are contiguous bytes (a scalar is its own single row)
            target = out[row : row + rows] if part_shape else out
            row += rows
            if target.numel() == 0:
                continue
            buffer = memoryview(target.view(-1).view(torch.uint8).numpy())
            with path.open("rb", buffering=0) as f:
                f.seek(start)
                if f.readinto(buffer) != end - start:
                    raise CheckpointError(f"{path}: ends inside tensor {name!r}; the file is truncated.")
        return out

    def _index(self, path: Path) -> None:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if not 0 < n <= min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{path}: not a safetensors file (bad header length).")
            try:
                header = json.loads(f.read(n))
            except ValueError as e:
                raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {e}).") from e
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape = DTYPES[info["dtype"]], [int(d) for d in info["shape"]]
                start, end = (8 + n + int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: tensor {name!r} has an unreadable entry ({e}).") from e
            nbytes = prod(shape) * dtype.itemsize
            if end - start != nbytes or end > size:
                raise CheckpointError(f"{path}: tensor {name!r} does not fit its shape or the file.")
            self._where[name] = (path, dtype, shape, start, end)
