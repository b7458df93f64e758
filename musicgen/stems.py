"""Optional melody clean-up: drums and bass removed with Demucs before the chroma is taken.

Audiocraft's ChromaStemConditioner separates the melody with Demucs' `htdemucs` and keeps only the "vocals"
and "other" stems, because drums and bass can swamp the chroma with pitch classes that are not the melody.
transformers leaves this out. Here it is an option that needs the `demucs` package and its weights on disk:

    weights_dir()/demucs/htdemucs/htdemucs.yaml        the bag of models: `models: [<sig>, ...]`
    weights_dir()/demucs/htdemucs/<sig>.safetensors    one per model, as Demucs' Hugging Face export
                                                       (repo adefossez/HTDemucs) holds them

Weights are read from safetensors only, never through pickle; the model class named in the metadata must
come from the demucs package.
"""

from __future__ import annotations

import importlib
import json
import random
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from .audio import convert_channels, resample
from .errors import CheckpointError, InvalidInputError, MusicGenError

DEMUCS_MODEL = "htdemucs"
# The stems audiocraft keeps for melody conditioning.
MELODY_STEMS = ("vocals", "other")
DEMUCS_INSTALL = "pip install demucs==4.1.0"


class DemucsNotInstalledError(MusicGenError):
    """Stem removal was asked for but the `demucs` package is not installed."""


def find_demucs_weights(weights_dir: Path) -> Path | None:
    """`weights_dir/demucs/htdemucs/` when it holds the bag yaml and safetensors weights, else None.

    `weights_dir` is normally `musicgen.weights.weights_dir()`.
    """
    folder = Path(weights_dir) / "demucs" / DEMUCS_MODEL
    if (folder / f"{DEMUCS_MODEL}.yaml").is_file() and any(folder.glob("*.safetensors")):
        return folder
    return None


def _import_demucs():
    """demucs.apply and demucs.hf, imported on first use so that the package stays optional."""
    try:
        import demucs.apply
        import demucs.hf
    except ImportError as exc:
        raise DemucsNotInstalledError(
            f"removing drums and bass from the melody needs the demucs package ({exc}); "
            f"install it with `{DEMUCS_INSTALL}`"
        ) from exc
    return demucs.apply, demucs.hf


def _demucs_class(qualname: str, path: Path) -> type:
    """The class `qualname` names, refused unless it lives in the demucs package.

    Demucs' loader imports whatever the metadata names; checking first keeps a weights file from running
    arbitrary code. The prefix is checked before anything is imported.
    """
    module, _, attr = qualname.rpartition(".")
    if module != "demucs" and not module.startswith("demucs."):
        raise CheckpointError(
            f"{path} names class {qualname!r}; only classes of the demucs package are loaded"
        )
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"{path} names class {qualname!r}, which demucs does not have") from exc
    if not isinstance(obj, type):
        raise CheckpointError(f"{path} names {qualname!r}, which is not a class")
    return obj


def _check_structure(node, path: Path) -> None:
    """Checks every `{"_class": ...}` node of a packed (quantised) state's structure, recursively."""
    if isinstance(node, dict):
        if "_class" in node:
            _demucs_class(node["_class"], path)
        for item in node.values():
            _check_structure(item, path)
    elif isinstance(node, list):
        for item in node:
            _check_structure(item, path)


def _load_model(path: Path) -> torch.nn.Module:
    """One Demucs model from a safetensors file of Demucs' Hugging Face export, after checking its metadata."""
    _, demucs_hf = _import_demucs()
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the Demucs bag yaml beside it lists it")
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
        klass = _demucs_class(metadata["klass"], path)
        if "structure" in metadata:
            _check_structure(json.loads(metadata["structure"]), path)
    except CheckpointError:
        raise
    except Exception as exc:  # not safetensors, no metadata, bad json
        raise CheckpointError(f"{path} is not a Demucs safetensors export: {exc!r}") from exc
    if not issubclass(klass, torch.nn.Module):
        raise CheckpointError(f"{path} names {metadata['klass']!r}, which is not a model")
    try:
        return demucs_hf.load_safetensors_model(path)
    except Exception as exc:  # wrong args, or weights that do not fit the model
        raise CheckpointError(f"{path} does not load as a {metadata['klass']}: {exc!r}") from exc


class StemRemover:
    """Demucs (htdemucs) loaded from a folder of safetensors, keeping the melodic stems of a mix."""

    def __init__(self, folder: Path, device: torch.device | str = "cpu"):
        """Loads the bag `folder/htdemucs.yaml` and the `<sig>.safetensors` files it lists, onto `device`."""
        demucs_apply, _ = _import_demucs()
        folder = Path(folder)
        bag_file = folder / f"{DEMUCS_MODEL}.yaml"
        try:
            bag = yaml.safe_load(bag_file.read_text())
            signatures = [str(sig) for sig in bag["models"]]
        except Exception as exc:
            raise CheckpointError(
                f"{bag_file} is not a Demucs bag of models (yaml with `models:`): {exc!r}"
            ) from exc
        models = [_load_model(folder / f"{sig}.safetensors") for sig in signatures]
        try:
            model = demucs_apply.BagOfModels(models, bag.get("weights"), bag.get("segment"))
        except AssertionError as exc:
            raise CheckpointError(f"{bag_file}: its models or weights do not fit together") from exc
        missing = [stem for stem in MELODY_STEMS if stem not in model.sources]
        if missing:
            raise CheckpointError(f"{bag_file}: the model has no {missing} stem(s), only {model.sources}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sample_rate: int = model.samplerate
        self.channels: int = model.audio_channels
        self.stem_indices = [model.sources.index(stem) for stem in MELODY_STEMS]

    @torch.no_grad()
    def remove_drums_and_bass(
        self, wav: torch.Tensor, sample_rate: int, seed: int | None = None
    ) -> torch.Tensor:
        """The "vocals" + "other" stems of `wav`, mixed to mono: `[B, 1, S]`, float32, at `sample_rate`.

        As audiocraft's `ChromaStemConditioner._get_stemmed_wav`: to Demucs' channels and rate, `apply_model`
        with its defaults (one random time shift, 25 % overlapping segments), the two stems summed, the mean
        over channels, back to `sample_rate`. The shift is drawn from Python's `random` module, as in Demucs;
        `seed` makes it repeatable.
        """
        if not isinstance(wav, torch.Tensor) or wav.dim() != 3 or wav.shape[-1] == 0:
            shape = tuple(wav.shape) if isinstance(wav, torch.Tensor) else type(wav).__name__
            raise InvalidInputError(
                f"remove_drums_and_bass expects a tensor [B, C, S] with samples, got {shape}"
            )
        if sample_rate <= 0:
            raise InvalidInputError(f"sample_rate must be positive, got {sample_rate}")
        demucs_apply, _ = _import_demucs()
        length = wav.shape[-1]
        # wav: [B, C, S] -> [B, channels, S]; Demucs' convert_audio_channels rules: mono is duplicated,
        # extra channels are dropped.
        wav = torch.stack([convert_channels(w, self.channels, name="the melody") for w in wav.float()])
        wav = resample(wav, sample_rate, self.sample_rate)  # [B, channels, S']
        # Demucs draws its random time shift from Python's `random`: seed it for repeatable results,
        # and leave the caller's random state as it was
        state = random.getstate()
        try:
            if seed is not None:
                random.seed(seed)
            stems = demucs_apply.apply_model(
                self.model, wav, device=self.device
            )  # [B, sources, channels, S']
        finally:
            if seed is not None:
                random.setstate(state)
        mix = stems[:, self.stem_indices].sum(dim=1)  # [B, channels, S']
        mix = mix.mean(dim=1, keepdim=True)  # [B, 1, S']
        # torchaudio rounds resampled lengths up, so the round trip can end a sample long
        return resample(mix, self.sample_rate, sample_rate)[..., :length]  # [B, 1, S]
