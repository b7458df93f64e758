"""What a long-lived server needs: loaded models kept and evicted, fine-tuned weight files fetched, and
the files it hands back removed once sent.

`ModelCache` keeps models by (model, fine-tuned weights) and evicts the least recently used one when the
next would not fit (CUDA: the device's free memory; CPU: a byte budget), freeing its memory for real.
`fetch_weights_file` turns a path or an http(s) URL into a local file, downloading each URL once into a
cache of bounded size. `OutputFiles` hands out output paths and removes the older ones.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import hashlib
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict, deque
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import CheckpointError, FineTunedWeightsError, InvalidInputError
from .model import MusicGen
from .variants import find_variant

if TYPE_CHECKING:
    from .diffusion import MultiBandDiffusion

# what a named T5-base and EnCodec 32 kHz weigh when a checkpoint only names them (fp32)
_NAMED_TEXT_ENCODER_BYTES = 110_000_000 * 4
_NAMED_CODEC_BYTES = 60_000_000 * 4
_NAMED_MERT_BYTES = 95_000_000 * 4  # MusicGen-Style's MERT-v1-95M, float32 on every device
# left free on a GPU beyond the weights: activations, the key/value cache, the allocator's slack
DEFAULT_RESERVE_BYTES = 4 * 1024**3
# on CPU, the share of the machine's memory that loaded weights may take when no budget is given: each
# fine-tune is a model of its own, and requests naming many of them must not load them all
DEFAULT_CPU_MEMORY_SHARE = 0.6
# The largest fine-tuned weights file: a full fine-tune of a 3.3B model in half precision is 6.6 GB.
MAX_WEIGHTS_FILE_BYTES = 8 * 1024**3
# the key of MultiBand Diffusion among the cached models: one decoder, shared by every model that decodes with it
MBD_KEY = ("multiband-diffusion", None)
# Downloaded fine-tuned weights kept (least recently used out): signed URLs differ on every request, and a
# month of them must not fill the disk.
MAX_CACHED_WEIGHT_FILES = 4


class ModelCache:
    """Loaded `MusicGen` models (and the MultiBand Diffusion decoder, once asked for), least recently used
    first out.

    Args:
        device: where models run (default: CUDA when present).
        max_models: at most this many loaded at once (None: no limit besides memory).
        memory_budget: bytes the loaded weights may take on CPU (default: DEFAULT_CPU_MEMORY_SHARE of
            the machine's memory). On CUDA the device's free memory decides, minus `reserve_bytes`.
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
        if memory_budget is None and self.device.type == "cpu":
            import psutil

            memory_budget = int(psutil.virtual_memory().total * DEFAULT_CPU_MEMORY_SHARE)
        self.memory_budget = memory_budget
        self.reserve_bytes = reserve_bytes
        self._models: OrderedDict[tuple[str, str | None], tuple[MusicGen | MultiBandDiffusion, int]] = (
            OrderedDict()
        )
        # concurrent predictions ask from several threads: one loads, the others wait for it
        self._lock = threading.RLock()

    def keys(self) -> list[tuple[str, str | None]]:
        """(model, fine-tuned file) of the loaded models, least recently used first."""
        return list(self._models)

    def get(self, model: str, finetuned: Path | None = None, download: bool = True) -> MusicGen:
        """The model `model` (variant name, Hub id or folder), with fine-tuned weights applied if given.

        Fine-tuned weights are checked against `model` before anything heavy is loaded. Thread-safe.
        A model evicted while a request still decodes with it is freed when that request ends.
        """
        with self._lock:
            return self._get(model, finetuned, download)

    def _get(self, model: str, finetuned: Path | None, download: bool) -> MusicGen:
        from .finetuned import apply_finetuned, check_base, load_finetuned
        from .loading import build_model, load_checkpoint

        key = (model, None if finetuned is None else str(finetuned))
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key][0]
        tuned = None
        variant = find_variant(model)
        if finetuned is not None:
            with _finetuned_problems():
                tuned = load_finetuned(Path(finetuned))
                check_base(tuned, None if variant is None else variant.name, None)
        ckpt = load_checkpoint(model, download=download)
        if tuned is not None:
            with _finetuned_problems():
                check_base(tuned, None, ckpt.config.lm)
        size = self._weight_bytes(ckpt)
        self._make_room(size)
        loaded = build_model(ckpt, str(self.device))
        del ckpt
        if tuned is not None:
            with _finetuned_problems():
                apply_finetuned(loaded.lm, tuned)
        self._models[key] = (loaded, size)
        return loaded

    def mbd(self, download: bool = True) -> MultiBandDiffusion:
        """The MultiBand Diffusion decoder, loaded on first use (downloaded and converted first when its
        weights are not on disk) and kept, and evicted, like a model. Thread-safe."""
        from .diffusion import WEIGHTS_FILE, MultiBandDiffusion
        from .weights import resolve_mbd

        with self._lock:
            if MBD_KEY in self._models:
                self._models.move_to_end(MBD_KEY)
                return self._models[MBD_KEY][0]
            folder = resolve_mbd(download=download)
            size = (folder / WEIGHTS_FILE).stat().st_size  # float32; bf16 on CUDA
            size //= 2 if self.device.type == "cuda" else 1
            self._make_room(size)
            loaded = MultiBandDiffusion.load(folder, self.device)
            self._models[MBD_KEY] = (loaded, size)
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
        if ckpt.style_state is not None:  # the style conditioner runs in float32, MERT included
            total += sum(t.numel() * 4 for t in ckpt.style_state.values())
            mert = ckpt.mert_state
            total += sum(t.numel() * 4 for t in mert.values()) if mert else _NAMED_MERT_BYTES
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


@contextlib.contextmanager
def _finetuned_problems():
    """Any problem of fine-tuned weights becomes a FineTunedWeightsError, which a caller can name after the
    input the weights came from (a missing base model stays what it is: it is raised outside)."""
    try:
        yield
    except (CheckpointError, InvalidInputError) as err:
        if isinstance(err, FineTunedWeightsError):
            raise
        raise FineTunedWeightsError(str(err)) from err


def weights_cache_dir() -> Path:
    """Where downloaded fine-tuned weight files are kept (inside the weights folder)."""
    from .weights import weights_dir

    return weights_dir() / "finetuned"


def fetch_weights_file(
    url_or_path: str,
    cache_dir: Path | None = None,
    max_bytes: int = MAX_WEIGHTS_FILE_BYTES,
    max_files: int = MAX_CACHED_WEIGHT_FILES,
) -> Path:
    """A local path to the fine-tuned weights at `url_or_path` (a path, file:// or http(s) URL).

    Each URL is downloaded once into `cache_dir` (keyed by the URL) through a temporary file, so a failed
    download leaves nothing behind. A download larger than `max_bytes` is refused, and the cache keeps the
    `max_files` most recently used files.
    """
    text = str(url_or_path).strip()
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme == "file":
        text = urllib.parse.unquote(urllib.parse.urlsplit(text).path)
    elif scheme not in ("", "http", "https") and len(scheme) > 1:
        raise FineTunedWeightsError(
            f"weights {text[:200]!r}: unsupported URL scheme {scheme!r}; give an http(s) URL or a file path."
        )
    if scheme not in ("http", "https"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FineTunedWeightsError(
                f"weights file {text!r} not found: give an http(s) URL or a file path."
            )
        return path
    cache_dir = cache_dir or weights_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / (hashlib.sha256(text.encode()).hexdigest()[:24] + ".safetensors")
    if target.is_file():
        os.utime(target)  # most recently used
        return target
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(text, timeout=60) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise _TooLarge(int(declared))
            copied = 0
            while chunk := response.read(1 << 20):
                copied += len(chunk)
                if copied > max_bytes:
                    raise _TooLarge(copied)
                out.write(chunk)
        os.replace(tmp, target)
    except _TooLarge as e:
        raise FineTunedWeightsError(
            f"the weights at {text} are larger than {max_bytes / 1024**3:.0f} GiB ({e.size} bytes or more): "
            "that is not a fine-tuned weights file made by training this model."
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise FineTunedWeightsError(
            f"could not download the weights at {text} ({e}); check that the URL is right and reachable."
        ) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _keep_newest(cache_dir, "*.safetensors", max_files, keep=target)
    return target


class _TooLarge(Exception):
    def __init__(self, size: int):
        self.size = size


def _keep_newest(folder: Path, pattern: str, count: int, keep: Path) -> None:
    """Removes all but the `count` most recently used files of `folder` matching `pattern` (never `keep`)."""
    files = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [f for f in files if f != keep][max(count - 1, 0) :]:
        old.unlink(missing_ok=True)


class OutputFiles:
    """Paths for the files a server hands back, each removed once a later one is asked for.

    A Cog server sends a prediction's output (inline or uploaded) as soon as the prediction returns, and
    runs at most N predictions at once, so with `keep` at least 2N, when the `keep + 1`-th newer file is
    asked for, an older one has been sent and only fills the disk: it is removed with its folder. Each file gets a folder of its own, so its name (`output.wav`) stays what
    the caller asked for. Everything left is removed when the process exits.
    """

    def __init__(self, prefix: str = "musicgen-outputs-", keep: int = 1):
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        self.keep = keep
        self._made: deque[Path] = deque()
        self._lock = threading.Lock()  # concurrent predictions write their files from several threads
        atexit.register(shutil.rmtree, self.folder, ignore_errors=True)

    def new(self, name: str) -> Path:
        """A path called `name` in a new folder; files made before the last `keep` are removed first."""
        with self._lock:
            while len(self._made) >= self.keep:
                shutil.rmtree(self._made.popleft(), ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)  # the OS may have cleaned the temporary folder
            folder = Path(tempfile.mkdtemp(dir=self.folder))
            self._made.append(folder)
            return folder / name
