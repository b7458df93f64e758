"""Where model weights live on disk, and fetching them from the Hugging Face Hub when they are not there.

A model name is looked for, in this order:

1. an explicit folder, used as it is;
2. our weights folder, `weights_dir()`: where a Cog image bakes weights, so it comes first;
3. the Hugging Face cache that huggingface_hub and transformers share (`HF_HUB_CACHE`, else `HF_HOME/hub`),
   used in place: the snapshot folder there is returned, nothing is copied;
4. a download from the Hub into `weights_dir()`, unless downloading is turned off or `HF_HUB_OFFLINE` is set.

Layout under `weights_dir()`:

- `<variant name>/` — a published MusicGen model, transformers layout (`small/`, `stereo-melody-large/`, ...),
  or audiocraft's layout (`state_dict.bin` + `compression_state_dict.bin`) for a variant whose Hub repo
  holds nothing else (`style/`, MusicGen-Style);
- `hub/<owner>--<name>/` — any other Hub repo: a MusicGen fine-tune, or a sub-model (text encoder, codec,
  MusicGen-Style's MERT) that an audiocraft-layout checkpoint names instead of bundling (`named_submodels`);
- `mbd/` — MultiBand Diffusion, the optional diffusion decoder (`resolve_mbd`): `config.json` +
  `model.safetensors`, converted from the release's pickle (`facebook/multiband-diffusion`,
  `mbd_musicgen_32khz.th`) by `checkpoints.mbd_release`. The engine reads only this converted form; the
  pickle is read from the Hugging Face cache when it is there, else downloaded, converted, and deleted.

A folder is complete or absent: downloads land in a hidden sibling folder that is renamed into place only once
every file has arrived, so an interrupted download never looks like a checkpoint.

Downloads go to `weights_dir()`, not to the Hugging Face cache: that folder is what a Cog image bakes (the
cache lives outside the repository, under ~/.cache), one variable (MUSICGEN_WEIGHTS_DIR) moves it to a
volume, its models are plain files (cache snapshots are symlinks into `blobs/`, which not every copy or
mount keeps), and it appears complete through one rename where the cache fills a snapshot file by file.
Reading the cache costs nothing, so it is read; writing there would take the weights out of the image.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable
from fnmatch import fnmatch
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants as hf_constants
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError
from huggingface_hub.utils import tqdm as hub_tqdm

from .checkpoints import detect_layout
from .errors import CheckpointError, WeightsNotFoundError
from .variants import VARIANTS, find_variant

FETCH_SCRIPT = "python scripts/download_weights.py"

# MultiBand Diffusion's release (audiocraft's `MultiBandDiffusion.get_mbd_musicgen`), and its converted folder
MBD_HUB_ID = "facebook/multiband-diffusion"
MBD_FILE = "mbd_musicgen_32khz.th"
MBD_DIR = "mbd"

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "special_tokens_map.json")
# A T5 folder in the Hugging Face cache counts only with one of these: transformers builds T5's tokenizer from
# either (the other tokenizer files are optional).
_T5_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
_TEXT_ENCODER_TYPES = ("t5", "mt5", "umt5")

# What the transformers layout of a MusicGen repo needs. The same repos also hold audiocraft's
# state_dict.bin / compression_state_dict.bin and a pytorch_model.bin: as large again, and pickles.
MUSICGEN_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    *_TOKENIZER_FILES,
)

# audiocraft's layout: two exported torch files (tensors and a YAML string, read with torch's weights-only
# unpickler). What the facebook/musicgen-style repo holds, and nothing else: no config.json.
AUDIOCRAFT_FILES = ("state_dict.bin", "compression_state_dict.bin")

# Sub-models (T5, EnCodec, MERT). Pickled weights are listed because some repos have nothing else (MERT's
# pytorch_model.bin, read with the weights-only unpickler); `download` drops them whenever the repo also has
# safetensors. Code files (MERT's remote-code *.py) and other exports (*.pt, *.h5, onnx/) are never fetched.
PRETRAINED_FILES = (
    "config.json",
    "preprocessor_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    *_TOKENIZER_FILES,
)

# owner/name as the Hub spells repo ids; sub-model names may also be legacy ids without an owner ("t5-base")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_LEGACY_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}")

_EXPECTED_CHECKPOINT = (
    "config.json with *.safetensors weights (transformers layout), "
    "or state_dict.bin with compression_state_dict.bin (audiocraft layout)"
)


def weights_dir() -> Path:
    """The folder of downloaded weights: `$MUSICGEN_WEIGHTS_DIR`, else `weights/` beside `musicgen/`."""
    configured = os.environ.get("MUSICGEN_WEIGHTS_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parent.parent / "weights"


def hf_cache_dir() -> Path:
    """The Hugging Face cache that huggingface_hub and transformers use, as the environment says now.

    `$HF_HUB_CACHE` (or its older name `$HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else huggingface_hub's
    default (`~/.cache/huggingface/hub`, or under `$XDG_CACHE_HOME`).
    """
    # huggingface_hub works this out once, when it is imported (constants.HF_HUB_CACHE); reading the variables
    # here, with its precedence, honours values set later, as `download` does for HF_ENDPOINT. The constant
    # still answers when none is set: it holds the XDG default and any value a program assigned to it.
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    return Path(hf_constants.HF_HUB_CACHE)


def resolve_model(name_or_path: str, download: bool = True, hf_cache: bool = True) -> Path:
    """The folder holding the MusicGen checkpoint called `name_or_path`, downloading it when needed.

    `name_or_path` is one of:
    - an existing folder holding a checkpoint (transformers or audiocraft layout), returned as is;
    - a variant name (`small`, `stereo-melody-large`, ...) or its Hub id (`facebook/musicgen-small`):
      `weights_dir()/<variant name>`; a variant whose repo has no transformers layout (`style`) is fetched
      in audiocraft's (`AUDIOCRAFT_FILES`), and its sub-models are fetched when loading (`named_submodels`);
    - another Hub id `owner/name` (a transformers-layout fine-tune): `weights_dir()/hub/<owner>--<name>`.

    When the folder for a name holds no checkpoint, the snapshot of the repo in the Hugging Face cache
    (`hf_cache_dir()`) is returned if it holds a whole checkpoint (and `hf_cache` is true). Otherwise the
    checkpoint is downloaded from the Hub into the folder, only if `download` is true and
    HF_HUB_OFFLINE is not set. Raises `WeightsNotFoundError`, naming where it looked, when that is not allowed
    or fails, and `CheckpointError` for a folder without a checkpoint or a name that is neither.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        _require_checkpoint(path)
        return path

    variant = find_variant(name_or_path)
    if variant is not None:
        dest = weights_dir() / variant.name
        if variant.audiocraft_only:
            # the repo's only checkpoint: the cache holds these two files when audiocraft fetched them
            patterns, lacks, required = AUDIOCRAFT_FILES, _audiocraft_lacks, AUDIOCRAFT_FILES
        else:
            patterns, lacks, required = MUSICGEN_FILES, _musicgen_lacks, ("config.json",)
        return _find_or_download(
            variant.hub_id,
            dest,
            patterns,
            lacks,
            required=required,
            download_allowed=download,
            hf_cache=hf_cache,
            label=variant.name,
        )

    if _HUB_ID.fullmatch(name_or_path) and not path.exists():
        owner, name = name_or_path.split("/")
        dest = weights_dir() / "hub" / f"{owner}--{name}"
        return _find_or_download(
            name_or_path,
            dest,
            MUSICGEN_FILES,
            _musicgen_lacks,
            download_allowed=download,
            hf_cache=hf_cache,
            label=name_or_path,
        )

    if path.exists() or _looks_like_path(name_or_path):
        raise CheckpointError(
            f"Model {name_or_path!r}: {path} is not a folder. Pass a folder holding {_EXPECTED_CHECKPOINT}, "
            f"or a variant name ({', '.join(VARIANTS)})."
        )
    raise CheckpointError(
        f"Unknown model {name_or_path!r}. Valid variant names: {', '.join(VARIANTS)}. "
        "Also accepted: a Hub id such as facebook/musicgen-small, or a folder holding a checkpoint."
    )


def resolve_pretrained(name: str, hf_cache: bool = True) -> Path:
    """The folder holding the sub-model `name` (a Hub id or a folder), downloading it when needed.

    Used for the parts an audiocraft-layout checkpoint refers to by name: the T5 text encoder (`t5-base`,
    `google-t5/t5-base`), the codec (`facebook/encodec_32khz`) and MusicGen-Style's MERT
    (`m-a-p/MERT-v1-95M`: its config.json and pytorch_model.bin; the remote-code *.py files are never
    fetched, nor run). An existing folder is returned as is;
    otherwise `weights_dir()/hub/<name with / replaced by -->` when it is there, else the snapshot in the
    Hugging Face cache when it holds config, weights and, for T5, tokenizer files (and `hf_cache` is true),
    else `weights_dir()/hub/...` after downloading it (unless HF_HUB_OFFLINE is set). Raises
    `WeightsNotFoundError`, naming where it looked, when nothing is found and it cannot be downloaded, and
    `CheckpointError` for a name that is neither a folder nor a Hub id.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not (_HUB_ID.fullmatch(name) or _LEGACY_HUB_ID.fullmatch(name)):
        raise CheckpointError(
            f"Sub-model {name!r} is neither a folder nor a Hub id (like t5-base or facebook/encodec_32khz)."
        )
    dest = weights_dir() / "hub" / name.replace("/", "--")
    return _find_or_download(
        name,
        dest,
        PRETRAINED_FILES,
        _submodel_lacks,
        download_allowed=True,
        hf_cache=hf_cache,
        label=name,
        option="--pretrained ",
    )


def named_submodels(folder: Path) -> list[str]:
    """The sub-models the checkpoint in `folder` names instead of bundling: what loading it fetches with
    `resolve_pretrained`, so what must be fetched beforehand for it to load offline.

    The transformers layout bundles T5 and EnCodec: []. audiocraft's layout names, in this order: the T5 of
    its xp.cfg unless `text_encoder/` bundles its weights and tokenizer; the codec of a pointer
    `compression_state_dict.bin` (a whole EnCodec there needs none); MusicGen-Style's MERT unless `mert/`
    bundles it. Only the configs are read: the exported files are memory-mapped by torch's weights-only
    unpickler, their tensors never read. Raises `CheckpointError` for a file the checkpoint reader refuses.
    """
    folder = Path(folder)
    if detect_layout(folder) != "audiocraft":
        return []
    from .checkpoints.audiocraft_layout import (
        CODEC_FILE,
        MERT_DIR,
        TEXT_ENCODER_DIR,
        load_exported_mapped,
        read_lm_xp,
    )
    from .checkpoints.audiocraft_lm import _lm_config_from_xp

    xp = read_lm_xp(folder)
    _, _, style, t5_name, _ = _lm_config_from_xp(xp)  # the same reading of xp.cfg as the checkpoint reader's
    names = []
    text_encoder = folder / TEXT_ENCODER_DIR
    # the checkpoint reader takes T5 from text_encoder/ when it holds a config, and the tokenizer when it
    # holds tokenizer files; whatever it lacks comes by name
    bundled_t5 = (text_encoder / "config.json").is_file() and any(
        (text_encoder / f).is_file() for f in _T5_TOKENIZER_FILES
    )
    if not bundled_t5:
        names.append(t5_name)
    codec = load_exported_mapped(folder / CODEC_FILE, "export_encodec")
    if "pretrained" in codec:
        if not isinstance(codec["pretrained"], str) or not codec["pretrained"]:
            raise CheckpointError(
                f"{folder / CODEC_FILE}: 'pretrained' is {codec['pretrained']!r}, expected the name of a "
                "compression model"
            )
        names.append(codec["pretrained"])
    if style is not None and not (folder / MERT_DIR).is_dir():
        names.append(style.mert_name)
    return list(dict.fromkeys(names))


def resolve_mbd(download: bool = True, hf_cache: bool = True) -> Path:
    """The folder of the converted MultiBand Diffusion decoder, `weights_dir()/mbd`, made when needed.

    That folder (config.json + model.safetensors) is returned when complete. Otherwise the release file
    (`MBD_FILE` of the Hub repo `MBD_HUB_ID`, a pickle the engine never loads as such) is converted into it
    by `checkpoints.mbd_release.convert_mbd_release`: taken from the Hugging Face cache (`hf_cache_dir()`)
    when it is there (and `hf_cache` is true), else downloaded from the Hub (`$HF_ENDPOINT`, read now) into
    a hidden sibling folder that is deleted once converted, only if `download` is true and HF_HUB_OFFLINE
    (or TRANSFORMERS_OFFLINE) is not set. Raises `WeightsNotFoundError`, naming where it looked and the
    command that fetches it, when that is not allowed or fails, and `CheckpointError` for a release file
    the converter refuses.
    """
    from .checkpoints.mbd_release import convert_mbd_release, is_converted

    dest = weights_dir() / MBD_DIR
    if is_converted(dest):
        return dest
    source = f"{MBD_HUB_ID}/{MBD_FILE}"
    where = f"not in {dest}"
    if hf_cache:
        cache = hf_cache_dir()
        cached = _cached_file(MBD_HUB_ID, MBD_FILE, cache)
        if cached is not None:
            return convert_mbd_release(cached, dest, source=source, replace=False)
        where += f", nor ({MBD_FILE}) in the Hugging Face cache at {cache}"

    command = f"{FETCH_SCRIPT} mbd"
    what = f"MultiBand Diffusion ({MBD_HUB_ID}, {MBD_FILE})"
    _check_download_allowed(what, where, dest, command, download)
    # read at call time, as `download` does
    endpoint = os.environ.get("HF_ENDPOINT") or None
    shown_endpoint = endpoint or "https://huggingface.co"
    dest.parent.mkdir(parents=True, exist_ok=True)
    # the pickle lands in a hidden folder that `resolve_*` never looks at, removed whatever happens
    tmp = dest.parent / f".{dest.name}.download-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        try:
            pickled = hf_hub_download(
                MBD_HUB_ID, MBD_FILE, local_dir=tmp, endpoint=endpoint, tqdm_class=hub_tqdm
            )
        except Exception as err:  # the Hub client fails in many ways; each means "not available from here"
            detail = f"Downloading from {shown_endpoint} failed: {_short(err)}."
            raise _download_failed(what, where, detail, dest, command) from err
        return convert_mbd_release(Path(pickled), dest, source=source, replace=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached_file(hub_id: str, filename: str, cache: Path) -> Path | None:
    """The file `filename` of `hub_id` (main revision) in the Hugging Face cache at `cache`, or None."""
    try:
        # local_files_only: huggingface_hub only reads its cache (refs/main -> the snapshot's file) and never
        # opens a connection; called through the package, as `_cached_snapshot` does
        found = huggingface_hub.hf_hub_download(hub_id, filename, cache_dir=cache, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None
    path = Path(found)
    return path if path.is_file() else None


def download(
    hub_id: str, dest: Path, allow_patterns: Iterable[str], required: Iterable[str] = ("config.json",)
) -> Path:
    """Download the top-level files of Hub repo `hub_id` matching `allow_patterns` into `dest`; return `dest`.

    The repo must have every file of `required` (config.json: the transformers layout; `AUDIOCRAFT_FILES`:
    audiocraft's), else nothing is fetched. Pickled weights (`*.bin`) are skipped when the repo also has
    safetensors, unless `required` names them. Files land in a temporary
    sibling of `dest` that becomes `dest` only once complete; on any failure or interruption it is removed, so
    no partial folder remains. The Hub is `$HF_ENDPOINT`, and HF_HUB_OFFLINE=1 forbids any request (both read
    at call time). Raises `WeightsNotFoundError` naming the repo and the reason when the Hub is off, the repo
    cannot be listed or a file cannot be fetched.
    """
    offline = _offline_setting()
    if offline is not None:
        raise WeightsNotFoundError(f"Not downloading {hub_id}: {offline} turns the Hub off.")
    # huggingface_hub reads HF_ENDPOINT once, when it is first imported; reading it here honours a value set
    # later (by a test, or by a server that configures itself after its imports).
    endpoint = os.environ.get("HF_ENDPOINT") or None
    shown_endpoint = endpoint or "https://huggingface.co"
    dest = Path(dest)
    try:
        info = HfApi(endpoint=endpoint).model_info(hub_id)
    # The Hub client fails in many ways (httpx errors, its own HTTP and offline errors, OSError); each one
    # means "not available from here", and the cause stays chained for debugging.
    except Exception as err:
        raise WeightsNotFoundError(
            f"Could not reach {hub_id} on the Hub at {shown_endpoint}: {_short(err)}."
        ) from err
    required = list(required)
    files = _select_files([s.rfilename for s in info.siblings or []], allow_patterns, keep=required)
    absent = [f for f in required if f not in files]
    if absent:
        layout = (
            f"audiocraft's layout ({' + '.join(AUDIOCRAFT_FILES)})"
            if "state_dict.bin" in required
            else "the transformers layout"
        )
        raise WeightsNotFoundError(
            f"The Hub repo {hub_id} has no {' and no '.join(absent)}, so it holds no checkpoint in {layout}."
        )

    dest.parent.mkdir(parents=True, exist_ok=True)
    # a hidden name that `resolve_*` never looks at; mkdir (unlike mkdtemp's 0700) keeps the umask's
    # permissions, so a server running as another user can read the weights
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        try:
            snapshot_download(
                hub_id,
                # pinned to the commit just listed, so the files cannot come from two different commits
                revision=info.sha,
                local_dir=tmp,
                allow_patterns=[glob.escape(f) for f in files],
                endpoint=endpoint,
                # a tqdm subclass that also honours HF_HUB_DISABLE_PROGRESS_BARS and stays quiet without a TTY
                tqdm_class=hub_tqdm,
            )
        except Exception as err:
            raise WeightsNotFoundError(
                f"Downloading {hub_id} from {shown_endpoint} failed: {_short(err)}."
            ) from err
        # snapshot_download keeps its bookkeeping (etags, locks) in local_dir/.cache; the folder is final
        # once renamed, so it would only be clutter.
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        missing = [f for f in files if not (tmp / f).is_file()]
        if missing:
            raise WeightsNotFoundError(f"Downloading {hub_id} did not produce {', '.join(missing)}.")
        _move_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _find_or_download(
    hub_id: str,
    dest: Path,
    patterns: Iterable[str],
    lacks: Callable[[Path], str | None],
    *,
    required: Iterable[str] = ("config.json",),
    download_allowed: bool,
    hf_cache: bool,
    label: str,
    option: str = "",
) -> Path:
    # `download` puts the file that makes a checkpoint (config.json, or audiocraft's state_dict.bin) last
    if dest.is_dir() and detect_layout(dest) is not None:
        return dest
    where = f"not in {dest}"
    if hf_cache:
        cache = hf_cache_dir()
        snapshot, missing = _cached_snapshot(hub_id, cache, patterns, lacks)
        if snapshot is not None and missing is None:
            return snapshot
        where += f", nor in the Hugging Face cache at {cache}"
        if snapshot is not None:
            where += f" (its snapshot {snapshot} lacks {missing}, so it was not used)"

    command = f"{FETCH_SCRIPT} {option}{label}"
    what = f"{label!r}" if label == hub_id else f"{label!r} ({hub_id})"
    _check_download_allowed(what, where, dest, command, download_allowed)
    try:
        return download(hub_id, dest, patterns, required)
    except WeightsNotFoundError as err:
        raise _download_failed(what, where, str(err), dest, command) from err


def _check_download_allowed(what: str, where: str, dest: Path, command: str, allowed: bool) -> None:
    """Raises `WeightsNotFoundError` (what is missing, where it was looked for, the command that fetches it)
    when the Hub is turned off or downloading is not allowed."""
    offline = _offline_setting()
    if offline is not None:
        variable = offline.split("=")[0]
        raise WeightsNotFoundError(
            f"The weights of {what} are {where}, and {offline} forbids downloading them. "
            f"Fetch them where the Hub is reachable with `{command}`, then make {dest} available here "
            f"(MUSICGEN_WEIGHTS_DIR sets the weights folder, now {weights_dir()}); or unset {variable} "
            "to let them download."
        )
    if not allowed:
        raise WeightsNotFoundError(
            f"The weights of {what} are {where}, and downloading is turned off. Fetch them with `{command}`."
        )


def _download_failed(what: str, where: str, detail: str, dest: Path, command: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"The weights of {what} are {where}, and could not be downloaded. {detail} "
        f"Fetch them where the Hub is reachable with `{command}`, then make {dest} available here "
        f"(MUSICGEN_WEIGHTS_DIR sets the weights folder, now {weights_dir()})."
    )


def _cached_snapshot(
    hub_id: str, cache: Path, patterns: Iterable[str], lacks: Callable[[Path], str | None]
) -> tuple[Path | None, str | None]:
    """(snapshot, None) when the Hugging Face cache at `cache` holds a usable `hub_id` (main revision);
    (snapshot, what it lacks) when it holds one that `lacks` rejects; (None, None) when it holds none."""
    try:
        # with local_files_only, huggingface_hub only reads its cache: it resolves refs/main to the snapshot
        # folder of that commit, and never opens a connection. Called through the package rather than the
        # name imported above, which stands for downloading alone (tests replace it to interrupt a download).
        folder = huggingface_hub.snapshot_download(
            hub_id, cache_dir=cache, local_files_only=True, allow_patterns=list(patterns)
        )
    except IncompleteSnapshotError as err:
        # snapshot_download kept the repo's file listing and some files matching `patterns` are absent: the
        # snapshot may still hold all a checkpoint needs (*.safetensors also matches an onnx/ export, say),
        # so the same check as for any snapshot decides
        folder = err.snapshot_path
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        # not in the cache (or not an id the cache can hold; the download that follows says so)
        return None, None
    folder = Path(folder)
    return folder, lacks(folder)


def _offline_setting() -> str | None:
    """The setting that turns the Hub off ("HF_HUB_OFFLINE=1"), or None when it may be used."""
    # huggingface_hub reads these once, when it is imported; reading them here honours a later change, with the
    # same rule: the first variable set decides, and only 1/ON/YES/TRUE mean offline
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(var)
        if value:
            return f"{var}={value}" if value.upper() in hf_constants.ENV_VARS_TRUE_VALUES else None
    # set before huggingface_hub was imported and unset since, or set by a program on the constant itself
    return "HF_HUB_OFFLINE" if hf_constants.HF_HUB_OFFLINE else None


def _musicgen_lacks(folder: Path) -> str | None:
    """What `folder` lacks to be a MusicGen checkpoint `read_checkpoint` can read; None when nothing."""
    if (folder / "config.json").is_file():
        return _weights_lack(folder)
    if (folder / "state_dict.bin").is_file():
        # audiocraft's own downloads fill the cache with just these two files
        return None if (folder / "compression_state_dict.bin").is_file() else "compression_state_dict.bin"
    return f"a checkpoint ({_EXPECTED_CHECKPOINT})"


def _audiocraft_lacks(folder: Path) -> str | None:
    """What `folder` lacks to be an audiocraft-layout checkpoint (both exported files); None when nothing."""
    missing = [f for f in AUDIOCRAFT_FILES if not (folder / f).is_file()]
    return " and ".join(missing) if missing else None


def _submodel_lacks(folder: Path) -> str | None:
    """What `folder` lacks for transformers' `from_pretrained` (and, for T5, its tokenizer); None when nothing."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        return "config.json"
    except (OSError, ValueError) as err:
        return f"a readable config.json ({_short(err)})"
    lacking = _weights_lack(folder)
    if lacking is not None:
        return lacking
    # a text encoder's folder is also where its tokenizer is read from (loading.py); a codec has none
    text_encoder = isinstance(config, dict) and config.get("model_type") in _TEXT_ENCODER_TYPES
    if text_encoder and not any((folder / f).is_file() for f in _T5_TOKENIZER_FILES):
        return f"a tokenizer ({' or '.join(_T5_TOKENIZER_FILES)})"
    return None


def _weights_lack(folder: Path) -> str | None:
    """What the weights files of a transformers-layout `folder` lack; None when they are complete."""
    # as transformers and our reader do: *.safetensors when there are any, else pickled pytorch_model*.bin.
    # Files in a cache snapshot are symlinks into blobs/, which is_file follows: a removed blob counts as absent.
    for weights, index_pattern in (
        ("*.safetensors", "*.safetensors.index.json"),
        ("pytorch_model*.bin", "pytorch_model*.bin.index.json"),
    ):
        if not any(f.is_file() for f in folder.glob(weights)):
            continue
        # a sharded checkpoint is whole only when every shard its index names is there
        for index in sorted(folder.glob(index_pattern)):
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                return f"a readable {index.name} ({_short(err)})"
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing:
                return f"{', '.join(missing[:3])} (named by {index.name})"
        return None
    return "weights (*.safetensors or pytorch_model*.bin)"


def _require_checkpoint(folder: Path) -> None:
    if detect_layout(folder) is None:
        raise CheckpointError(f"{folder} holds no MusicGen checkpoint: expected {_EXPECTED_CHECKPOINT}.")


def _looks_like_path(text: str) -> bool:
    # reached only after the owner/name form was ruled out, so any separator means a path
    return text.startswith((".", "~")) or "/" in text or os.sep in text


def _select_files(repo_files: Iterable[str], patterns: Iterable[str], keep: Iterable[str] = ()) -> list[str]:
    patterns, keep = list(patterns), set(keep)
    # only the repo's top level: fnmatch's `*` also matches "/", which would pull in e.g. onnx/ exports
    chosen = [f for f in repo_files if "/" not in f and any(fnmatch(f, p) for p in patterns)]
    if any(f.endswith(".safetensors") for f in chosen):
        chosen = [f for f in chosen if f in keep or not f.endswith((".bin", ".bin.index.json"))]
    return sorted(chosen)


def _move_into_place(tmp: Path, dest: Path) -> None:
    if dest.is_dir() and detect_layout(dest) is not None:
        # another process finished the same download first; its copy is as good as ours
        shutil.rmtree(tmp)
        return
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    if not dest.exists():
        try:
            tmp.rename(dest)
        except OSError:
            # lost a race with another process downloading the same model: fine if it got there first
            if detect_layout(dest) is None:
                raise
            shutil.rmtree(tmp)
        return
    # `dest` holds other files but no checkpoint: add ours, config.json (or state_dict.bin) last, because its
    # presence is what makes `detect_layout` see a checkpoint.
    for item in sorted(tmp.iterdir(), key=lambda p: p.name in ("config.json", "state_dict.bin")):
        os.replace(item, dest / item.name)
    tmp.rmdir()


def _short(err: BaseException) -> str:
    # Hub errors carry multi-line explanations; the first line says what happened
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
