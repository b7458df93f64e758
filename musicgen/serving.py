"""What a long-lived server needs: loaded models kept and evicted, and fine-tuned weight files fetched.

`ModelCache` keeps models by (model, fine-tuned weights) and evicts the least recently used one when the
next would not fit (CUDA: the device's free memory; CPU: a byte budget), freeing its memory for real.
`fetch_weights_file` turns a path or an http(s) URL into a local file, downloading each URL once.
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections import OrderedDict
from pathlib import Path

import torch

from .errors import InvalidInputError, WeightsNotFoundError
from .model import MusicGen
from .variants import find_variant

# what a named T5-base and EnCodec 32 kHz weigh when a checkpoint only names them (fp32)
_NAMED_TEXT_ENCODER_BYTES = 110_000_000 * 4
_NAMED_CODEC_BYTES = 60_000_000 * 4
# left free on a GPU beyond the weights: activations, the key/value cache, the allocator's slack
DEFAULT_RESERVE_BYTES = 4 * 1024**3


class ModelCache:
    """Loaded `MusicGen` models, least recently used first out.

    Args:
        device: where models run (default: CUDA when present).
        max_models: at most this many loaded at once (None: no limit besides memory).
        memory_budget: bytes the loaded weights may take on CPU (None: no limit). On CUDA the device's
            free memory decides, minus `reserve_bytes`.
    """

    def __init__(
        self,
        device: str | None = None,
        max_models: int | None = None,
        memory_budget: int | None = None,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ):
        from .loading import resolve_device

        self.device = resolve_device(device)
        self.max_models = max_models
        self.memory_budget = memory_budget
        self.reserve_bytes = reserve_bytes
        self._models: OrderedDict[tuple[str, str | None], tuple[MusicGen, int]] = OrderedDict()

    def keys(self) -> list[tuple[str, str | None]]:
        """(model, fine-tuned file) of the loaded models, least recently used first."""
        return list(self._models)

    def get(self, model: str, finetuned: Path | None = None, download: bool = True) -> MusicGen:
        """The model `model` (variant name, Hub id or folder), with fine-tuned weights applied if given.

        Fine-tuned weights are checked against `model` before anything heavy is loaded.
        """
        from .finetuned import apply_finetuned, check_base, load_finetuned
        from .loading import build_model, load_checkpoint

        key = (model, None if finetuned is None else str(finetuned))
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key][0]
        tuned = None
        variant = find_variant(model)
        if finetuned is not None:
            tuned = load_finetuned(Path(finetuned))
            check_base(tuned, None if variant is None else variant.name, None)
        ckpt = load_checkpoint(model, download=download)
        if tuned is not None:
            check_base(tuned, None, ckpt.config.lm)
        size = self._weight_bytes(ckpt)
        self._make_room(size)
        loaded = build_model(ckpt, str(self.device))
        del ckpt
        if tuned is not None:
            apply_finetuned(loaded.lm, tuned)
        self._models[key] = (loaded, size)
        return loaded

    def clear(self) -> None:
        """Unloads every model."""
        while self._models:
            self._evict()

    def _weight_bytes(self, ckpt) -> int:
        lm_bytes = 2 if self.device.type == "cuda" else 4
        total = sum(t.numel() for t in ckpt.lm_state.values()) * lm_bytes
        text, codec = ckpt.text_encoder_state, ckpt.codec_state
        total += sum(t.numel() * 4 for t in text.values()) if text else _NAMED_TEXT_ENCODER_BYTES
        total += sum(t.numel() * 4 for t in codec.values()) if codec else _NAMED_CODEC_BYTES
        return total

    def _make_room(self, need: int) -> None:
        while self._models and not self._fits(need):
            self._evict()

    def _fits(self, need: int) -> bool:
        if self.max_models is not None and len(self._models) >= self.max_models:
            return False
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return free - self.reserve_bytes >= need
        if self.memory_budget is not None:
            return sum(size for _, size in self._models.values()) + need <= self.memory_budget
        return True

    def _evict(self) -> None:
        _, (model, _) = self._models.popitem(last=False)
        del model
        # the model's tensors are only freed once nothing refers to them; then hand the memory back
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def weights_cache_dir() -> Path:
    """Where downloaded fine-tuned weight files are kept (inside the weights folder)."""
    from .weights import weights_dir

    return weights_dir() / "finetuned"


def fetch_weights_file(url_or_path: str, cache_dir: Path | None = None) -> Path:
    """A local path to the fine-tuned weights at `url_or_path` (a path, file:// or http(s) URL).

    Each URL is downloaded once into `cache_dir` (keyed by the URL) through a temporary file, so a
    failed download leaves nothing behind.
    """
    text = str(url_or_path).strip()
    if text.startswith("file://"):
        text = text[len("file://") :]
    if not text.startswith(("http://", "https://")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"weights file {text!r} not found: give an http(s) URL or a file path.")
        return path
    cache_dir = cache_dir or weights_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / (hashlib.sha256(text.encode()).hexdigest()[:24] + ".safetensors")
    if target.is_file():
        return target
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(text, timeout=60) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise WeightsNotFoundError(f"could not download the weights at {text}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
