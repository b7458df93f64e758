"""Fine-tuned weights: one safetensors file that train.py writes and predict.py applies to a base model.

The file holds, in the names of `musicgen.lm.LanguageModel`, either

- method "full": the language-model tensors that fine-tuning changed, in float16, or
- method "lora": for each adapted `nn.Linear` module `M`, `M.lora_A.weight` [r, in] and `M.lora_B.weight`
  [out, r] (float16), merged as `W += (B @ A) * (alpha / r)`. These are peft's names and shapes, so a
  peft adapter maps over by renaming (`from_peft_state_dict`).

and string metadata (structured values JSON-encoded, as safetensors allows only strings):

    format          "musicgen-finetuned"
    format_version  "1"
    base_variant    a name from VARIANTS ("small", ...): the model the weights apply to
    method          "full" | "lora"
    lm_config       JSON of the base LMConfig (dataclasses.asdict), checked before any tensor is touched
    training        JSON object: the training settings
    dataset_report  JSON object: what the training data was
    lora_rank       JSON int (lora only)
    lora_alpha      JSON number (lora only)
    target_modules  JSON list of module-name suffixes, e.g. ["self_attn.in_proj", "ff1"] (lora only)

Reading never unpickles: a file is safetensors or it is refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import LMConfig
from .errors import CheckpointError, FineTunedWeightsError, InvalidInputError
from .lm import LanguageModel
from .variants import VARIANTS

FORMAT = "musicgen-finetuned"
FORMAT_VERSION = 1
METHODS = ("full", "lora")
_LORA_NAME = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight$")


@dataclass
class FineTuned:
    """Fine-tuned weights of one base variant (see the module docstring for `tensors`' names)."""

    base_variant: str
    method: str  # "full" | "lora"
    tensors: dict[str, torch.Tensor]
    lm_config: LMConfig
    lora_rank: int | None = None
    lora_alpha: float | None = None
    target_modules: list[str] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    dataset_report: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where it was read from, for messages; not saved


# ---- writing ------------------------------------------------------------------------------------


def changed_tensors(
    base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The tensors of `tuned` that differ from `base`: what a full fine-tune stores."""
    return {
        k: v
        for k, v in tuned.items()
        if k not in base or not torch.equal(v.detach().cpu().float(), base[k].detach().cpu().float())
    }


def from_peft_state_dict(
    state: Mapping[str, torch.Tensor], adapter_name: str = "default"
) -> dict[str, torch.Tensor]:
    """peft LoRA tensors (`get_peft_model_state_dict`, or a PeftModel's state_dict) -> our LoRA names.

    `base_model.model.layers.0.ff1.lora_A[.default].weight` -> `layers.0.ff1.lora_A.weight`. Base weights
    in a full PeftModel state dict are skipped. Only plain LoRA on Linear modules is representable: DoRA
    magnitudes, LoRA biases, embedding adapters and modules_to_save are refused, as are per-module ranks
    (rank_pattern). With peft's use_rslora, store lora_alpha = alpha * sqrt(r) so that alpha / r scales alike.
    """
    out, refused = {}, []
    segment = f".{adapter_name}."
    for key, tensor in state.items():
        name = key.removeprefix("base_model.model.")
        if ".lora_" not in name and "modules_to_save" not in name:
            continue  # a base weight of the wrapped model
        for part in ("lora_A", "lora_B"):
            name = name.replace(f".{part}{segment}", f".{part}.")
        if _LORA_NAME.match(name):
            out[name] = tensor
        else:
            refused.append(key)
    if refused:
        raise InvalidInputError(
            f"these peft tensors are not plain LoRA factors of adapter {adapter_name!r}: {refused[:3]}; "
            "only lora_A/lora_B of Linear modules can be stored (no DoRA, biases, modules_to_save)."
        )
    return out


def save_finetuned(path: str | Path, ft: FineTuned) -> Path:
    """Writes `ft` to `path` (one safetensors file); refuses weights it could not read back."""
    from safetensors.torch import save_file

    path = Path(path)
    problems = _problems(ft, *_layout_of_config(ft.lm_config))
    if problems:
        raise InvalidInputError(f"cannot save fine-tuned weights to {path}: {'; '.join(problems[:5])}.")
    # half precision for both: the factors of a LoRA adapter lose nothing that matters at fp16, and the
    # file halves (about 9 MB for `small` at rank 8); merging happens in float32
    dtype = torch.float16
    tensors = {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in ft.tensors.items()}
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "base_variant": ft.base_variant,
        "method": ft.method,
        "lm_config": json.dumps(asdict(ft.lm_config), sort_keys=True),
        "training": json.dumps(ft.training, sort_keys=True),
        "dataset_report": json.dumps(ft.dataset_report, sort_keys=True),
    }
    if ft.method == "lora":
        meta |= {
            "lora_rank": json.dumps(ft.lora_rank),
            "lora_alpha": json.dumps(ft.lora_alpha),
            "target_modules": json.dumps(list(ft.target_modules)),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # a crash never leaves a truncated file at `path`
    save_file(tensors, partial, metadata=meta)
    partial.replace(path)
    return path


# ---- reading ------------------------------------------------------------------------------------


def finetuned_base(path: str | Path) -> str:
    """The base variant named in a fine-tuned weights file, read from its header alone (cheap)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            base = (f.metadata() or {}).get("base_variant")
    except (SafetensorError, OSError, ValueError) as e:
        raise FineTunedWeightsError(
            f"{path}: not a safetensors file ({e}); expected fine-tuned weights."
        ) from e
    if base not in VARIANTS:
        raise FineTunedWeightsError(
            f"{path}: names no known base variant ({base!r}); expected fine-tuned weights."
        )
    return base


def load_finetuned(path: str | Path) -> FineTuned:
    """Reads and checks a file written by `save_finetuned`; any problem is a CheckpointError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; expected fine-tuned weights (a .safetensors file).")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a safetensors file ({e}); fine-tuned weights must be the .safetensors file "
            "that training wrote (pickled checkpoints are never loaded)."
        ) from e

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}")

    if meta.get("format") != FORMAT:
        raise bad(
            f"not MusicGen fine-tuned weights (metadata format={meta.get('format')!r}, "
            f"expected {FORMAT!r}); pass the file that training wrote."
        )
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise bad(f"format_version {meta.get('format_version')!r} is not an integer.") from None
    if version > FORMAT_VERSION:
        raise bad(
            f"written by a newer musicgen (format_version {version}); this one reads format_version "
            f"{FORMAT_VERSION} or older: update musicgen."
        )

    def value(key: str, kind: type, required: bool = True):
        if key not in meta:
            if required:
                raise bad(f"metadata {key!r} is missing.")
            return kind()
        try:
            parsed = json.loads(meta[key])
        except ValueError:
            raise bad(f"metadata {key!r} is not JSON: {meta[key][:80]!r}.") from None
        if kind is float and isinstance(parsed, int) and not isinstance(parsed, bool):
            parsed = float(parsed)
        if not isinstance(parsed, kind) or isinstance(parsed, bool):
            raise bad(f"metadata {key!r} should be a JSON {kind.__name__}, not {meta[key][:80]!r}.")
        return parsed

    raw_cfg = value("lm_config", dict)
    try:
        names = {f.name for f in fields(LMConfig)}
        lm_config = LMConfig(**{k: v for k, v in raw_cfg.items() if k in names})
    except (TypeError, ValueError) as e:
        raise bad(f"metadata 'lm_config' is not a language-model config ({e}).") from None
    method = meta.get("method")
    lora = method == "lora"
    ft = FineTuned(
        base_variant=meta.get("base_variant", ""),
        method=method or "",
        tensors=tensors,
        lm_config=lm_config,
        lora_rank=value("lora_rank", int) if lora else None,
        lora_alpha=value("lora_alpha", float) if lora else None,
        target_modules=value("target_modules", list) if lora else None,
        training=value("training", dict, required=False),
        dataset_report=value("dataset_report", dict, required=False),
        source=str(path),
    )
    problems = _problems(ft, *_layout_of_config(lm_config))
    if problems:
        raise bad("; ".join(problems[:5]) + ".")
    return ft


# ---- using --------------------------------------------------------------------------------------


def check_base(ft: FineTuned, variant_name: str | None, lm_config: LMConfig | None) -> None:
    """Refuses to apply `ft` to a model other than the one it was fine-tuned from.

    variant_name: the model's variant name (None for a folder, whose name says nothing); lm_config: the
    model's config (None to check the name alone, before the model is loaded).
    """
    if variant_name is not None and ft.base_variant != variant_name:
        raise InvalidInputError(
            f"these weights were fine-tuned from `{ft.base_variant}`, not `{variant_name}`; "
            f"use model_version={ft.base_variant}."
        )
    if lm_config is not None and ft.lm_config != lm_config:
        ours, theirs = asdict(ft.lm_config), asdict(lm_config)
        diff = [f"{k}: {ours[k]} vs {theirs[k]}" for k in ours if ours[k] != theirs[k]]
        raise InvalidInputError(
            f"these weights were fine-tuned from a `{ft.base_variant}` language model that differs from "
            f"this one ({', '.join(diff)}); use the base model they were trained from."
        )


@torch.no_grad()
def apply_finetuned(lm: LanguageModel, ft: FineTuned) -> None:
    """Puts `ft` into `lm` in place. Everything is checked first, so a misfit leaves `lm` untouched."""
    problems = _problems(ft, *_layout(lm))
    if problems:
        where = ft.source or f"fine-tuned weights from `{ft.base_variant}`"
        raise CheckpointError(f"{where} do not fit this language model: {'; '.join(problems[:5])}.")
    if ft.method == "full":
        state = lm.state_dict()  # tensors share storage with the parameters
        for name, tensor in ft.tensors.items():
            state[name].copy_(tensor)  # copy_ casts to the parameter's dtype and device
        return
    scale = ft.lora_alpha / ft.lora_rank
    for module, (a, b) in _lora_pairs(ft.tensors).items():
        weight = lm.get_submodule(module).weight  # [out, in]
        # merge in float32: a bf16 product of small factors would lose most of the update
        delta = b.to(weight.device, torch.float32) @ a.to(weight.device, torch.float32)  # [out, in]
        weight.copy_(weight.float() + delta * scale)


# ---- checks -------------------------------------------------------------------------------------


def _layout(lm: nn.Module) -> tuple[dict[str, torch.Size], dict[str, torch.Size]]:
    """(tensor name -> shape, Linear module name -> its weight's shape [out, in])."""
    shapes = {k: v.shape for k, v in lm.state_dict().items()}
    linears = {n: m.weight.shape for n, m in lm.named_modules() if isinstance(m, nn.Linear)}
    return shapes, linears


def _layout_of_config(cfg: LMConfig):
    with torch.device("meta"):  # shapes only: no memory, no time
        return _layout(LanguageModel(cfg))


def _lora_pairs(tensors: Mapping[str, torch.Tensor]) -> dict[str, list[torch.Tensor | None]]:
    """module name -> [lora_A, lora_B] (None where missing); names that are not LoRA names are left out."""
    pairs: dict[str, list] = {}
    for name, tensor in tensors.items():
        m = _LORA_NAME.match(name)
        if m:
            pairs.setdefault(m["module"], [None, None])[m["part"] == "lora_B"] = tensor
    return pairs


def _problems(ft: FineTuned, shapes: dict, linears: dict) -> list[str]:
    """What is wrong with `ft` for a language model of this layout (empty when it fits)."""
    if ft.base_variant not in VARIANTS:
        return [
            f"base_variant {ft.base_variant!r} is not a known model (expected one of {', '.join(VARIANTS)})"
        ]
    if ft.method not in METHODS:
        return [f"method {ft.method!r} is unknown (expected 'full' or 'lora')"]
    if not ft.tensors:
        return ["it holds no tensors"]
    problems = [
        f"{k} is {v.dtype}, expected a floating-point tensor"
        for k, v in ft.tensors.items()
        if not v.is_floating_point()
    ]
    # NaN or infinite weights would generate a normal-looking clip of noise (or silence): a broken file
    problems += [
        f"{k} holds NaN or infinite values (the training diverged, or the file is damaged)"
        for k, v in ft.tensors.items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if ft.method == "full":
        for name, t in ft.tensors.items():
            if name not in shapes:
                problems.append(f"{name} is not a language-model tensor name")
            elif t.shape != shapes[name]:
                problems.append(f"{name} is {list(t.shape)}, expected {list(shapes[name])}")
        return problems

    r, alpha, targets = ft.lora_rank, ft.lora_alpha, ft.target_modules
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        return problems + [f"lora_rank {r!r} should be a positive integer"]
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        return problems + [f"lora_alpha {alpha!r} should be a finite number"]
    if not targets or not all(isinstance(t, str) for t in targets):
        return problems + [f"target_modules {targets!r} should be a non-empty list of module-name suffixes"]
    pairs = _lora_pairs(ft.tensors)
    problems += [
        f"{k} is not a LoRA tensor name (M.lora_A.weight / M.lora_B.weight)"
        for k in ft.tensors
        if not _LORA_NAME.match(k)
    ]
    for module, (a, b) in pairs.items():
        if module not in linears:
            problems.append(f"{module} is not a Linear module of the language model")
            continue
        if a is None or b is None:
            problems.append(
                f"{module} has lora_{'A' if a is None else 'B'}.weight missing (LoRA factors come in pairs)"
            )
            continue
        if not any(module == t or module.endswith("." + t) for t in targets):
            problems.append(f"{module} is adapted but matches no target_modules {targets}")
        out_dim, in_dim = linears[module]
        if a.shape != (r, in_dim):
            problems.append(f"{module}.lora_A.weight is {list(a.shape)}, expected [{r}, {in_dim}] (rank {r})")
        if b.shape != (out_dim, r):
            problems.append(
                f"{module}.lora_B.weight is {list(b.shape)}, expected [{out_dim}, {r}] (rank {r})"
            )
    return problems


__all__ = [
    "FineTuned",
    "apply_finetuned",
    "changed_tensors",
    "check_base",
    "from_peft_state_dict",
    "load_finetuned",
    "save_finetuned",
]
