"""MultiBand Diffusion's release checkpoint -> the converted folder `musicgen.diffusion` loads, no code run.

The release is the Hub file `facebook/multiband-diffusion` / `mbd_musicgen_32khz.th`, a `torch.save` (zip
format) of what audiocraft's `models.loaders.load_diffusion_models` reads:

    {'sample_rate': 32000, 'n_bands': 4,
     0: {'cfg': <OmegaConf DictConfig: the band's whole hydra solver config>,
         'model_state': {name: tensor},        # audiocraft's DiffusionUnet
         'processor_state': {name: tensor}},   # its MultiBandProcessor (empty for a band without one)
     1: {...}, ...}

The configs are OmegaConf objects, so `torch.load(weights_only=True)` refuses the file, and a free unpickle
would run whatever a file names. `read_mbd_release` uses torch's weights-only unpickler with an allow-list of
the few names an OmegaConf config pickles to (`_STAND_INS`), each mapped to an inert class of ours that only
keeps values: nothing outside the list is imported or called, and a file naming anything else is refused
with the name. OmegaConf itself is never imported (it is not a runtime dependency).

`convert_mbd_release` reads the file, translates each band's config the way audiocraft's builders read it
(`get_diffusion_model`: `DiffusionUnet(chin=cfg.channels, num_steps=cfg.schedule.num_steps,
**cfg.diffusion_unet)`; `NoiseSchedule(**cfg.schedule)`; `get_processor(cfg.processor)`), checks that the
tensors fit by building `MultiBandDiffusion`, and writes `config.json` + `model.safetensors` into a folder
that appears complete through one rename.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any

import torch

from ..diffusion import (
    CONFIG_FILE,
    FORMAT,
    WEIGHTS_FILE,
    BandConfig,
    MBDConfig,
    MultiBandDiffusion,
    ProcessorConfig,
    ScheduleConfig,
)
from ..diffusion_unet import DiffusionUnet, UNetConfig
from ..errors import CheckpointError
from . import refused_global
from .audiocraft_xpcfg import _as_float, _as_int, _is_number, _XpCfg

# The release is a few GB; a file many times that is not it, and would only exhaust memory.
MAX_FILE_BYTES = 16 * 1024**3
MAX_BANDS = 16
# bounds on what a config may make us build before its tensors are compared (julius' band filters grow with
# the sample rate and the number of bands; the U-Net's module count with its depth)
_SAMPLE_RATES = (4_000, 192_000)
_MAX_PROCESSOR_BANDS = 64
_MAX_DEPTH = 32
_MAX_RES_BLOCKS = 32
# the config tree: nesting and node count, so that a file of shared or cyclic containers cannot make the
# conversion to plain Python run forever
_MAX_NESTING = 64
_MAX_NODES = 1_000_000

PROCESSOR_STATS = ("counts", "sum_x", "sum_x2", "sum_target_x2")
MULTI_BAND_PROCESSOR = "multi_band_processor"

# audiocraft's DiffusionUnet (and its Encoder/DecoderLayer) defaults: `**cfg.diffusion_unet` passes only
# the keys the config holds, so a missing key takes these, not `UNetConfig`'s
_AUDIOCRAFT_UNET_DEFAULTS = {
    "hidden": 24,
    "depth": 3,
    "growth": 2.0,
    "max_channels": 10_000,
    "emb_all_layers": False,
    "cross_attention": False,
    "bilstm": False,
    "transformer": False,
    "codec_dim": None,
    "kernel": 4,
    "stride": 2,
    "norm_groups": 4,
    "res_blocks": 1,
}
# audiocraft's NoiseSchedule defaults, for the same reason
_AUDIOCRAFT_SCHEDULE_DEFAULTS = {
    "beta_t0": 1e-4,
    "beta_t1": 0.02,
    "beta_exp": 1.0,
    "clip": 5.0,
    "rescale": 1.0,
    "noise_scale": 1.0,
    "repartition": "power",
}


# ---------------------------------------------------------------------------------- the allow-listed read


class _Container:
    """Stands in for OmegaConf's DictConfig / ListConfig: keeps `_content` (its children, or None, or the
    string of an interpolation or of '???'); the parent link, flags and type metadata are dropped."""

    content: Any = None

    def __setstate__(self, state: Any) -> None:
        self.content = state.get("_content") if isinstance(state, dict) else _Invalid("container state")


class _DictConfig(_Container):
    pass


class _ListConfig(_Container):
    pass


class _ValueNode:
    """Stands in for OmegaConf's value nodes (AnyNode, StringNode, ...): keeps `_val`."""

    value: Any = None

    def __setstate__(self, state: Any) -> None:
        self.value = state.get("_val") if isinstance(state, dict) else _Invalid("value node state")


class _Metadata:
    """Stands in for OmegaConf's Metadata / ContainerMetadata (a node's key, types and flags): dropped."""

    def __setstate__(self, state: Any) -> None:
        pass


class _Marker:
    """A type a config's metadata names (typing.Any, dict, int, ...): only its name is kept; never called."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


class _Invalid:
    """Marks something in the file that is not what the release holds; refused when the config is read."""

    def __init__(self, what: str):
        self.what = what


def _empty_dict(*_args: Any) -> dict:
    # `collections.defaultdict(dict)`: OmegaConf's resolver cache, whose contents are never needed
    return {}


_VALUE_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode")
_TYPE_NAMES = ("dict", "list", "tuple", "int", "float", "str", "bool", "bytes", "object")

# name as the pickle spells it (after torch maps Python 2 names: __builtin__.long -> builtins.int) -> stand-in
_STAND_INS: dict[str, Any] = {
    "omegaconf.dictconfig.DictConfig": _DictConfig,
    "omegaconf.listconfig.ListConfig": _ListConfig,
    "omegaconf.base.ContainerMetadata": _Metadata,
    "omegaconf.base.Metadata": _Metadata,
    **{f"omegaconf.nodes.{name}": _ValueNode for name in _VALUE_NODES},
    "collections.defaultdict": _empty_dict,
    "typing.Any": _Marker("typing.Any"),
    **{f"builtins.{name}": _Marker(f"builtins.{name}") for name in _TYPE_NAMES},
}

# torch keeps its allow-list in one process-wide set, which `safe_globals` adds to and removes from; one
# release read at a time, so that two reads never remove each other's entries mid-load. (A concurrent
# weights-only load elsewhere may meanwhile see these names allowed: it would get the same inert stand-ins.)
_READ_LOCK = threading.Lock()


def read_mbd_release(path: Path) -> dict:
    """The release file as torch's weights-only unpickler rebuilds it with our stand-ins: a dict whose
    band entries hold `_DictConfig` configs and tensors. Raises `CheckpointError` for a missing, oversized,
    unreadable or non-dict file, and for a file naming a global outside the allow-list (the message names
    it); nothing the file names outside the list is imported or called."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: file not found; expected MultiBand Diffusion's release checkpoint (mbd_musicgen_32khz.th "
            "from the Hub repo facebook/multiband-diffusion)"
        )
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CheckpointError(
            f"{path}: {size / 1024**3:.1f} GiB, more than the {MAX_FILE_BYTES / 1024**3:.0f} GiB any MultiBand "
            "Diffusion release takes (the real one is a few GB); not read"
        )
    allowed = [(obj, name) for name, obj in _STAND_INS.items()]
    try:
        with _READ_LOCK, torch.serialization.safe_globals(allowed):
            pkg = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = refused_global(e)
        if found is None:
            raise CheckpointError(
                f"{path}: cannot be read as a torch file (not written by torch.save, or damaged: "
                f"{_first_line(e)})"
            ) from None
        raise CheckpointError(
            f"{path} is refused: it names the Python global {found}, which MultiBand Diffusion's release "
            "does not hold (only tensors, numbers, strings and OmegaConf configs). Unpickling it could run "
            "code, and this package never imports or calls anything a checkpoint names. Use the release file "
            "mbd_musicgen_32khz.th of the Hub repo facebook/multiband-diffusion as published."
        ) from None
    except Exception as e:  # a truncated or foreign file: torch raises many different types
        raise CheckpointError(
            f"{path}: cannot be read as a torch file ({type(e).__name__}: {_first_line(e)})"
        ) from None
    if not isinstance(pkg, dict):
        raise CheckpointError(
            f"{path}: holds a {type(pkg).__name__}, not the dict of MultiBand Diffusion's release "
            "({'sample_rate': ..., 'n_bands': ..., 0: {'cfg', 'model_state', 'processor_state'}, ...})"
        )
    return pkg


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def plain_config(value: Any, where: str) -> Any:
    """A config of stand-ins (or plain containers) as plain dicts, lists and scalars; interpolations stay
    strings (`${a.b}`), resolved later by `_XpCfg`. Refuses anything a config cannot hold."""
    budget = [_MAX_NODES]

    def walk(v: Any, depth: int) -> Any:
        budget[0] -= 1
        if depth > _MAX_NESTING or budget[0] < 0:
            raise CheckpointError(
                f"{where}: the config is nested more than {_MAX_NESTING} levels or holds more than "
                f"{_MAX_NODES} values (a cycle or shared containers); not a release config"
            )
        if isinstance(v, _Container):
            v = v.content  # children, or None / '???' / an interpolation string for the container itself
        elif isinstance(v, _ValueNode):
            v = v.value
        if isinstance(v, dict):
            out = {}
            for k, child in v.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise CheckpointError(f"{where}: the config has a key {k!r}; expected names")
                out[k] = walk(child, depth + 1)
            return out
        if isinstance(v, (list, tuple)):
            return [walk(child, depth + 1) for child in v]
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        what = v.what if isinstance(v, _Invalid) else type(v).__name__
        raise CheckpointError(f"{where}: the config holds a {what}, which no release config holds")

    return walk(value, 0)


# ------------------------------------------------------------------------------------ config translation


class _BandCfg(_XpCfg):
    """`_XpCfg` over one band's config, its messages naming the band instead of `xp.cfg`."""

    def __init__(self, root: dict, source: Path, band: int):
        super().__init__(root, source)
        self.band = band

    def get(self, key: str, default: Any = ...) -> Any:
        try:
            return super().get(key) if default is ... else super().get(key, default)
        except CheckpointError as e:
            raise CheckpointError(str(e).replace("xp.cfg", f"band {self.band}'s cfg")) from None

    def fail(self, message: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: band {self.band}'s cfg {message}")

    def integer(self, key: str, default: Any, low: int, high: int) -> int:
        value = _as_int(self.get(key, default), f"{self.path}: band {self.band}'s cfg '{key}'")
        if not low <= value <= high:
            raise self.fail(f"'{key}' is {value}; expected {low} to {high}")
        return value

    def number(self, key: str, default: Any) -> float:
        value = _as_float(self.get(key, default), f"{self.path}: band {self.band}'s cfg '{key}'")
        if not math.isfinite(value):
            raise self.fail(f"'{key}' is {value}; expected a finite number")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"'{key}' is {value!r}; expected true or false")
        return value


def band_config(cfg: dict, source: Path, band: int) -> BandConfig:
    """One band's `BandConfig` from its (plain) solver config, read as audiocraft's builders read it.
    Refuses settings this engine does not run, naming the key."""
    c = _BandCfg(cfg, source, band)
    unet_cfg = c.get("diffusion_unet")
    if not isinstance(unet_cfg, dict):
        raise c.fail(f"'diffusion_unet' is {unet_cfg!r}; expected the U-Net's settings")
    d = {**_AUDIOCRAFT_UNET_DEFAULTS, **{k: v for k, v in unet_cfg.items() if k in _AUDIOCRAFT_UNET_DEFAULTS}}

    def u(key: str) -> str:
        return f"diffusion_unet.{key}"

    codec_dim = d["codec_dim"]
    if codec_dim is not None:
        codec_dim = c.integer(u("codec_dim"), codec_dim, 1, 65_536)
    unet = UNetConfig(
        chin=c.integer("channels", ..., 1, 64),
        hidden=c.integer(u("hidden"), d["hidden"], 1, 65_536),
        depth=c.integer(u("depth"), d["depth"], 1, _MAX_DEPTH),
        growth=c.number(u("growth"), d["growth"]),
        max_channels=c.integer(u("max_channels"), d["max_channels"], 1, 1_000_000),
        num_steps=c.integer("schedule.num_steps", ..., 1, 1_000_000),
        emb_all_layers=c.flag(u("emb_all_layers"), d["emb_all_layers"]),
        cross_attention=c.flag(u("cross_attention"), d["cross_attention"]),
        bilstm=c.flag(u("bilstm"), d["bilstm"]),
        transformer=c.flag(u("transformer"), d["transformer"]),
        codec_dim=codec_dim,
        kernel=c.integer(u("kernel"), d["kernel"], 1, 4096),
        stride=c.integer(u("stride"), d["stride"], 1, 4096),
        norm_groups=c.integer(u("norm_groups"), d["norm_groups"], 1, 65_536),
        res_blocks=c.integer(u("res_blocks"), d["res_blocks"], 0, _MAX_RES_BLOCKS),
    )
    if unet.growth <= 0:
        raise c.fail(f"'{u('growth')}' is {unet.growth}; expected a positive number")
    if unet.stride > unet.kernel:
        raise c.fail(f"has stride {unet.stride} > kernel {unet.kernel}; audiocraft's U-Net cannot build it")
    if unet.transformer and unet.channels()[-1][1] % 8:
        raise c.fail(
            f"has a Transformer over {unet.channels()[-1][1]} channels, not a multiple of its 8 heads"
        )

    # the schedule: NoiseSchedule(**cfg.schedule); `variance` and `variable_step_batch` only matter for
    # training and the full reverse process, never for the subsampled one MultiBand Diffusion decodes with
    s = {**_AUDIOCRAFT_SCHEDULE_DEFAULTS}
    if c.get("schedule.n_bands", None) is not None:
        raise c.fail(
            f"'schedule.n_bands' is {c.get('schedule.n_bands')!r}; audiocraft's NoiseSchedule (and this "
            "engine) only run a single-band schedule (null)"
        )
    clip = c.get("schedule.clip", s["clip"])
    schedule = ScheduleConfig(
        beta_t0=c.number("schedule.beta_t0", s["beta_t0"]),
        beta_t1=c.number("schedule.beta_t1", s["beta_t1"]),
        beta_exp=c.number("schedule.beta_exp", s["beta_exp"]),
        num_steps=unet.num_steps,
        # falsy (null or 0) means no clipping, in audiocraft and in the engine alike
        clip=0.0 if not clip else c.number("schedule.clip", s["clip"]),
        rescale=c.number("schedule.rescale", s["rescale"]),
        noise_scale=c.number("schedule.noise_scale", s["noise_scale"]),
        repartition=str(c.get("schedule.repartition", s["repartition"])),
    )
    if not (0 < schedule.beta_t0 <= schedule.beta_t1 < 1 and schedule.beta_exp > 0):
        raise c.fail(
            f"schedule has beta_t0 {schedule.beta_t0}, beta_t1 {schedule.beta_t1}, beta_exp "
            f"{schedule.beta_exp}; expected 0 < beta_t0 <= beta_t1 < 1 and beta_exp > 0"
        )

    # the processor: get_processor(cfg.processor); a band without one (`use` false) keeps none, so its
    # other settings are never read
    processor = ProcessorConfig(use=c.flag("processor.use", False))
    if processor.use:
        name = c.get("processor.name", None)
        if name != MULTI_BAND_PROCESSOR:
            raise c.fail(
                f"'processor.name' is {name!r} with processor.use true; this engine runs only "
                f"{MULTI_BAND_PROCESSOR!r}"
            )
        processor.n_bands = c.integer("processor.n_bands", 8, 1, _MAX_PROCESSOR_BANDS)
        power = c.get("processor.power_std", 1.0)
        if isinstance(power, list):
            if not all(_is_number(p) for p in power):
                raise c.fail(f"'processor.power_std' is {power!r}; expected numbers")
            processor.power_std = [float(p) for p in power]
        else:
            processor.power_std = c.number("processor.power_std", 1.0)
    return BandConfig(unet=unet, schedule=schedule, processor=processor)


# ------------------------------------------------------------------------------------- state translation

# audiocraft's attention keeps torch's nn.MultiheadAttention as `.mha` unless built `custom`; its own
# load hook accepts both forms, and so do we
_MHA = re.compile(r"(^|\.)(self_attn|cross_attention)\.mha\.")


def _model_state(raw: Any, source: Path, band: int) -> dict[str, torch.Tensor]:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: band {band}'s 'model_state' is a {type(raw).__name__}, not tensors")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in raw.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"{source}: band {band}'s 'model_state' holds {name!r}: {type(tensor).__name__}; "
                "expected tensors by name"
            )
        ours = _MHA.sub(r"\1\2.", name)
        if ours in out:
            raise CheckpointError(
                f"{source}: band {band}'s 'model_state' holds {ours} twice (with and without mha.)"
            )
        out[ours] = tensor
    return out


def _processor_state(raw: Any, source: Path, band: int) -> dict[str, torch.Tensor]:
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{source}: band {band}'s 'processor_state' is a {type(raw).__name__}, not tensors"
        )
    out = {}
    for name, tensor in raw.items():
        if isinstance(name, str) and name.startswith("split_bands."):
            continue  # julius' band filters, a function of the config: rebuilt, never read
        if name not in PROCESSOR_STATS or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"{source}: band {band}'s 'processor_state' holds {name!r}; a MultiBandProcessor saves "
                f"{', '.join(PROCESSOR_STATS)} (and split_bands.*)"
            )
        out[name] = tensor
    return out


def _storable(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor as safetensors stores it: detached, contiguous, owning its memory (it refuses views of a
    shared storage)."""
    t = tensor.detach().contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or t.storage_offset():
        t = t.clone()
    return t


def mbd_from_release(pkg: dict, source: Path, label: str = "") -> tuple[MBDConfig, dict[str, torch.Tensor]]:
    """(config, state with the converted names) of a release read by `read_mbd_release`; `label` becomes
    `config.source` (default: the path). Refuses a release this engine cannot run, naming what."""
    n_bands = pkg.get("n_bands")
    if not isinstance(n_bands, int) or isinstance(n_bands, bool) or not 1 <= n_bands <= MAX_BANDS:
        raise CheckpointError(
            f"{source}: 'n_bands' is {n_bands!r}; a MultiBand Diffusion release has 1 to {MAX_BANDS} bands "
            f"(keys: {sorted(map(str, pkg))[:10]})"
        )
    sample_rate = pkg.get("sample_rate")
    if not isinstance(sample_rate, int) or not _SAMPLE_RATES[0] <= sample_rate <= _SAMPLE_RATES[1]:
        raise CheckpointError(
            f"{source}: 'sample_rate' is {sample_rate!r}; expected an integer from {_SAMPLE_RATES[0]} to "
            f"{_SAMPLE_RATES[1]} Hz"
        )
    bands, state = [], {}
    for i in range(n_bands):
        entry = pkg.get(i)
        if not isinstance(entry, dict) or not {"cfg", "model_state"} <= set(entry):
            raise CheckpointError(
                f"{source}: 'n_bands' is {n_bands} but band {i} is "
                + ("missing" if entry is None else "not a dict with 'cfg' and 'model_state'")
                + "; the file is incomplete or not MultiBand Diffusion's release"
            )
        cfg = plain_config(entry["cfg"], f"{source}: band {i}'s cfg")
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{source}: band {i}'s cfg is {cfg!r}, not a config")
        band = band_config(cfg, source, i)
        bands.append(band)
        model = _model_state(entry["model_state"], source, i)
        _check_size(band.unet, model, source, i)
        state.update({f"bands.{i}.model.{k}": v for k, v in model.items()})
        if band.processor.use:
            processor = _processor_state(entry.get("processor_state", {}), source, i)
            state.update({f"bands.{i}.processor.{k}": v for k, v in processor.items()})
    config = MBDConfig(sample_rate=sample_rate, bands=bands, source=label or str(source))
    config.check(str(source))
    return config, state


def _check_size(unet: UNetConfig, model: dict[str, torch.Tensor], source: Path, band: int) -> None:
    """Refuses a config describing a U-Net far larger than the band's tensors before it is allocated (for
    real, by `MultiBandDiffusion`): the file's size then bounds the memory the conversion takes."""
    try:
        with torch.device("meta"):
            wanted = sum(t.numel() for t in DiffusionUnet(unet).state_dict().values())
    except Exception as e:  # torch refuses some shapes outright (GroupNorm groups, ...)
        raise CheckpointError(
            f"{source}: band {band}'s U-Net config cannot be built ({type(e).__name__}: {_first_line(e)})"
        ) from None
    given = sum(t.numel() for t in model.values())
    if wanted > 2 * given + 1_000_000:
        raise CheckpointError(
            f"{source}: band {band}'s config describes a U-Net of {wanted:,} parameters, but its model_state "
            f"holds {given:,}: the config and the weights do not belong together"
        )


# -------------------------------------------------------------------------------------------- conversion


def convert_mbd_release(src: Path, dest: Path, source: str | None = None, replace: bool = True) -> Path:
    """Converts the release file `src` into the folder `dest` (`config.json` + `model.safetensors`, what
    `MultiBandDiffusion.load` reads); returns `dest`.

    The tensors are checked against the config by building `MultiBandDiffusion` before anything is written.
    The files are written into a hidden sibling of `dest` that is renamed into place, so `dest` is complete
    or absent. A complete conversion already in `dest` is replaced, unless `replace` is false: then it is
    kept and ours dropped (another process converting the same release finished first, and readers may be
    using its files). `source` is recorded as the config's `source` (default: `src`'s path). Raises
    `CheckpointError` naming the file and what is wrong, and refuses a `dest` that holds other files.
    """
    src, dest = Path(src), Path(dest)
    pkg = read_mbd_release(src)
    config, state = mbd_from_release(pkg, src, source or str(src.resolve()))
    del pkg
    try:
        MultiBandDiffusion(config, state)  # raises CheckpointError naming missing/extra/mis-shaped tensors
    except CheckpointError:
        raise
    except Exception as e:  # torch refuses some configs only when building them
        raise CheckpointError(
            f"{src}: the MultiBand Diffusion config cannot be built ({type(e).__name__}: {_first_line(e)})"
        ) from None
    _require_replaceable(dest)
    state = {k: _storable(v) for k, v in state.items()}

    from safetensors.torch import save_file

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # mkdir (unlike mkdtemp's 0700) keeps the umask's permissions, so a server running as another user
        # can read the weights
        tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
    except OSError as e:
        raise CheckpointError(f"cannot write the converted MultiBand Diffusion into {dest}: {e}") from None
    try:
        try:
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        except OSError as e:
            raise CheckpointError(
                f"cannot write the converted MultiBand Diffusion into {tmp} (for {dest}): {e}"
            ) from None
        _move_into_place(tmp, dest, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def is_converted(folder: Path) -> bool:
    """Whether `folder` holds a converted MultiBand Diffusion (both files; it appears through one rename)."""
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def _require_replaceable(dest: Path) -> None:
    """`dest` may become the converted folder: absent, empty, or a previous conversion (only our files)."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise CheckpointError(f"{dest} is a file; convert MultiBand Diffusion into a new or empty folder")
    others = sorted(p.name for p in dest.iterdir() if p.name not in (CONFIG_FILE, WEIGHTS_FILE))
    if others:
        raise CheckpointError(
            f"{dest} holds other files ({', '.join(others[:5])}); convert MultiBand Diffusion into a new or "
            "empty folder, or remove them"
        )
    config = dest / CONFIG_FILE
    if config.is_file():
        try:
            ours = json.loads(config.read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise CheckpointError(
                f"{config} is not a converted MultiBand Diffusion config; not replacing it: convert into a "
                "new or empty folder"
            )


def _move_into_place(tmp: Path, dest: Path, replace: bool) -> None:
    """Renames `tmp` to `dest`; a previous conversion there is kept (not `replace`), or moved aside first
    and removed after, so `dest` is complete or absent at every moment."""
    if not replace and is_converted(dest):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            dest.rename(old)
        except FileNotFoundError:  # another process moved it meanwhile
            old = None
    try:
        tmp.rename(dest)
    except OSError:
        if not is_converted(dest):
            if old is not None and not dest.exists():
                old.rename(dest)  # put the previous conversion back
                old = None
            raise
        # another process converting the same release got there first: its folder is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
