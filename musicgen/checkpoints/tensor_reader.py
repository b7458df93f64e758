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

import contextlib
import json
import os
import struct
from collections.abc import Iterator
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


def read_threads() -> int:
    """How many threads `read_all` reads with: two, or one on a single usable CPU."""
    return min(2, usable_cpus())


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, which container CPU sets narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


class SafetensorsIndex:
    """Where each tensor of some `.safetensors` files lies; reads them (or row-wise concatenations)."""

    def __init__(self, files: list[Path]):
        self._where: dict[str, tuple[Path, torch.dtype, list[int], int, int]] = {}
        for path in files:
            self._index(path)

    def read_all(self, plan: dict[str, list[str]]) -> dict[str, torch.Tensor]:
        """{key: read(names)} for each entry of `plan`, two reads at a time (faulting in fresh pages is
        the cost here, and file reads release the GIL)."""
        with self._opened() as fds, ThreadPoolExecutor(max_workers=read_threads()) as pool:
            tensors = pool.map(lambda names: self._read(names, fds), plan.values())
            return dict(zip(plan, tensors, strict=True))

    def read(self, names: list[str]) -> torch.Tensor:
        """The tensors `names` concatenated along their first dimension (one name: that tensor as it is),
        read into one new tensor."""
        with self._opened() as fds:
            return self._read(names, fds)

    def _read(self, names: list[str], fds: dict[Path, int]) -> torch.Tensor:
        parts = [self._where[n] for n in names]
        dtype, rest = parts[0][1], parts[0][2][1:]
        if len(parts) > 1 and any(not p[2] or p[1] != dtype or p[2][1:] != rest for p in parts):
            raise CheckpointError(
                f"{parts[0][0]}: tensors {names} differ in dtype or width; cannot fuse them."
            )
        shape = parts[0][2] if len(parts) == 1 else [sum(p[2][0] for p in parts), *rest]
        out = torch.empty(shape, dtype=dtype)
        row = 0
        for name, (path, _, part_shape, start, _) in zip(names, parts, strict=True):
            rows = part_shape[0] if part_shape else 1
            # rows of a contiguous tensor are contiguous bytes (a scalar is its own single row)
            target = out[row : row + rows] if part_shape else out
            row += rows
            if target.numel() == 0:
                continue
            buffer = memoryview(target.view(-1).view(torch.uint8).numpy())
            # one positioned read per tensor on a descriptor opened once, rather than an open, a seek and a
            # read per tensor: fewer system calls, each of which gives up the GIL and takes it back
            done = 0
            while done < len(buffer):
                n = os.preadv(fds[path], [buffer[done:]], start + done)
                if n == 0:
                    raise CheckpointError(f"{path}: ends inside tensor {name!r}; the file is truncated.")
                done += n
        return out

    @contextlib.contextmanager
    def _opened(self) -> Iterator[dict[Path, int]]:
        """A read-only descriptor for each file, closed on leaving."""
        fds: dict[Path, int] = {}
        try:
            for path in {where[0] for where in self._where.values()}:
                fds[path] = os.open(path, os.O_RDONLY)
            yield fds
        finally:
            for fd in fds.values():
                os.close(fd)

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
