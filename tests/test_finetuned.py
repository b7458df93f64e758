"""Fine-tuned weights: the file format, applying it to a language model, peft's adapters, and refusals."""

import copy
import json
import pickle
from dataclasses import asdict, replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from musicgen import CheckpointError, InvalidInputError, LMConfig, SamplingParams
from musicgen.finetuned import (
    FineTuned,
    apply_finetuned,
    changed_tensors,
    check_base,
    from_peft_state_dict,
    load_finetuned,
    save_finetuned,
)
from musicgen.lm import LanguageModel
from musicgen.loading import build_model, read_checkpoint

CFG = LMConfig(dim=32, num_heads=4, num_layers=2, ffn_dim=64, num_codebooks=4, card=16, text_dim=24)
TARGETS = ["self_attn.in_proj", "cross_attn.out_proj", "ff2", "heads"]


def random_lm(seed=0, cfg=CFG) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(cfg).eval()


def lora_tensors(lm: LanguageModel, targets, rank=4, seed=1, std=0.3) -> dict[str, torch.Tensor]:
    """Random (non-zero) LoRA factors for every Linear module of `lm` matching `targets`."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in lm.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            out_dim, in_dim = module.weight.shape
            out[f"{name}.lora_A.weight"] = torch.randn(rank, in_dim, generator=gen) * std
            out[f"{name}.lora_B.weight"] = torch.randn(out_dim, rank, generator=gen) * std
    return out


def lora_ft(tensors, cfg=CFG, rank=4, alpha=8.0, targets=TARGETS, **kw) -> FineTuned:
    return FineTuned(
        "small", "lora", tensors, cfg, lora_rank=rank, lora_alpha=alpha, target_modules=targets, **kw
    )


def manual_merge(lm: LanguageModel, ft: FineTuned) -> dict[str, torch.Tensor]:
    expected = {k: v.clone() for k, v in lm.state_dict().items()}
    for name, a in ft.tensors.items():
        if name.endswith(".lora_A.weight"):
            module = name.removesuffix(".lora_A.weight")
            b = ft.tensors[f"{module}.lora_B.weight"]
            expected[f"{module}.weight"] += (b.float() @ a.float()) * (ft.lora_alpha / ft.lora_rank)
    return expected


# ---- round trips --------------------------------------------------------------------------------


def test_lora_round_trip(tmp_path):
    lm = random_lm()
    ft = lora_ft(lora_tensors(lm, TARGETS), training={"lr": 1e-4, "steps": 10}, dataset_report={"clips": 3})
    path = save_finetuned(tmp_path / "sub" / "adapter.safetensors", ft)
    back = load_finetuned(path)
    assert (back.base_variant, back.method, back.lora_rank, back.lora_alpha) == ("small", "lora", 4, 8.0)
    assert back.target_modules == TARGETS and back.lm_config == CFG
    assert back.training == {"lr": 1e-4, "steps": 10} and back.dataset_report == {"clips": 3}
    assert back.tensors.keys() == ft.tensors.keys()
    # stored in half precision, as full fine-tunes are: half the file, nothing that matters lost
    assert all(back.tensors[k].dtype == torch.float16 for k in ft.tensors)
    assert all(torch.equal(back.tensors[k], ft.tensors[k].half()) for k in ft.tensors)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "musicgen-finetuned" and meta["format_version"] == "1"
    assert json.loads(meta["lm_config"]) == asdict(CFG)
    assert json.loads(meta["target_modules"]) == TARGETS
    assert not list(tmp_path.glob("sub/*.partial"))


def test_full_fine_tune_stores_only_changed_tensors_in_fp16_and_applying_reproduces_them(tmp_path):
    base = random_lm()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.layers[1].ff1.weight.add_(0.1)
        tuned.heads.weight.mul_(1.5)
        tuned.out_norm.bias.add_(0.2)
    changed = changed_tensors(base.state_dict(), tuned.state_dict())
    assert set(changed) == {"layers.1.ff1.weight", "heads.weight", "out_norm.bias"}
    ft = FineTuned("small", "full", changed, CFG, training={"epochs": 1})
    path = save_finetuned(tmp_path / "full.safetensors", ft)
    back = load_finetuned(path)
    assert back.method == "full" and back.lora_rank is None and back.target_modules is None
    assert set(back.tensors) == set(changed)
    assert all(t.dtype == torch.float16 for t in back.tensors.values())

    target = copy.deepcopy(base)
    apply_finetuned(target, back)
    for name, value in target.state_dict().items():
        if name in changed:
            assert torch.equal(value, tuned.state_dict()[name].half().float()), name
        else:
            assert torch.equal(value, base.state_dict()[name]), name


# ---- applying LoRA ------------------------------------------------------------------------------


def test_lora_merge_equals_manual_merge_and_changes_greedy_codes(tiny, tmp_path):
    # a fresh model: the fixture's cached engine is shared with other tests
    model = build_model(read_checkpoint(tiny.get("mono")[0]), "cpu")
    greedy = SamplingParams(top_k=1)
    before = model.generate(["jazz trio"], duration=0.4, sampling=greedy, seed=0).codes
    ft = load_finetuned(
        save_finetuned(
            tmp_path / "a.safetensors",
            lora_ft(lora_tensors(model.lm, TARGETS), cfg=model.config.lm, alpha=16.0),
        )
    )
    expected = manual_merge(model.lm, ft)
    apply_finetuned(model.lm, ft)
    for name, value in model.lm.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    after = model.generate(["jazz trio"], duration=0.4, sampling=greedy, seed=0).codes
    assert after.shape == before.shape and not torch.equal(after, before)


def test_peft_adapter_maps_over_and_merges_as_peft_does(tmp_path):
    import peft

    lm = random_lm()
    config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=TARGETS, init_lora_weights=False)
    peft_model = peft.get_peft_model(copy.deepcopy(lm), config)
    state = peft.get_peft_model_state_dict(peft_model)
    assert all(k.startswith("base_model.model.") for k in state)
    tensors = from_peft_state_dict(state)
    # a PeftModel's own state dict (base weights, `.default.` segments) maps to the same names
    assert from_peft_state_dict(peft_model.state_dict()).keys() == tensors.keys()
    assert "layers.0.self_attn.in_proj.lora_A.weight" in tensors and "heads.lora_B.weight" in tensors

    ft = load_finetuned(save_finetuned(tmp_path / "peft.safetensors", lora_ft(tensors, alpha=12.0)))
    apply_finetuned(lm, ft)
    merged = peft_model.merge_and_unload().state_dict()
    assert merged.keys() == lm.state_dict().keys()
    for name, value in lm.state_dict().items():
        # our factors went through float16 on disk; peft merged its float32 ones
        torch.testing.assert_close(value, merged[name], rtol=1e-3, atol=1e-3, msg=name)


def test_peft_tensors_that_are_not_plain_lora_are_refused():
    with pytest.raises(InvalidInputError, match="not plain LoRA"):
        from_peft_state_dict({"base_model.model.ff1.lora_magnitude_vector.default.weight": torch.ones(3)})
    with pytest.raises(InvalidInputError, match="not plain LoRA"):
        from_peft_state_dict({"base_model.model.ff1.lora_A.other.weight": torch.ones(2, 3)})


# ---- refusals: files ----------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.safetensors"
    with open(path, "wb") as f:
        if writer == "pickle":
            pickle.dump({"x": _Payload(marker)}, f)
        else:
            torch.save({"x": _Payload(marker)}, f)
    with pytest.raises(CheckpointError, match="not a safetensors file") as err:
        load_finetuned(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_finetuned(tmp_path / "nope.safetensors")


def write_raw(path, tensors, **meta):
    """A safetensors file with the given metadata over a valid LoRA header (None drops a key)."""
    base = {
        "format": "musicgen-finetuned",
        "format_version": "1",
        "base_variant": "small",
        "method": "lora",
        "lm_config": json.dumps(asdict(CFG)),
        "lora_rank": "4",
        "lora_alpha": "8",
        "target_modules": json.dumps(TARGETS),
    }
    base.update(meta)
    save_file(tensors, path, metadata={k: v for k, v in base.items() if v is not None})
    return path


def good_lora():
    return lora_tensors(random_lm(), TARGETS)


def test_a_hand_written_valid_file_loads(tmp_path):
    ft = load_finetuned(write_raw(tmp_path / "ok.safetensors", good_lora()))
    assert ft.lora_alpha == 8.0 and ft.training == {}


def test_missing_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"heads.weight": torch.zeros(64, 32)}, path)
    with pytest.raises(CheckpointError, match="not MusicGen fine-tuned weights"):
        load_finetuned(path)


def _drop(name):
    return {k: v for k, v in good_lora().items() if k != name}


def _rank3():
    t = good_lora()
    t["layers.0.ff2.lora_A.weight"] = t["layers.0.ff2.lora_A.weight"][:3]
    return t


@pytest.mark.parametrize(
    "tensors, meta, message",
    [
        (None, {"format": "something-else"}, "not MusicGen fine-tuned weights"),
        (None, {"format_version": "2"}, "newer musicgen"),
        (None, {"base_variant": "huge"}, "base_variant 'huge' is not a known model"),
        (None, {"method": "qlora"}, "method 'qlora' is unknown"),
        (None, {"lm_config": None}, "'lm_config' is missing"),
        (None, {"lm_config": "{not json"}, "'lm_config' is not JSON"),
        (None, {"lm_config": json.dumps({"dim": 32})}, "not a language-model config"),
        (None, {"lora_rank": None}, "'lora_rank' is missing"),
        (None, {"target_modules": json.dumps(["ff1"])}, "matches no target_modules"),
        (None, {"lora_rank": "3"}, r"expected \[3, 32\]"),
        (lambda: _drop("heads.lora_B.weight"), {}, "heads has lora_B.weight missing"),
        (_rank3, {}, r"layers.0.ff2.lora_A.weight is \[3, 64\], expected \[4, 64\]"),
        (lambda: {**good_lora(), "layers.0.ff1.bias": torch.zeros(64)}, {}, "not a LoRA tensor name"),
        (
            lambda: {
                "layers.0.norm1.lora_A.weight": torch.zeros(4, 32),
                "layers.0.norm1.lora_B.weight": torch.zeros(32, 4),
            },
            {},
            "layers.0.norm1 is not a Linear module",
        ),
        (
            lambda: {"layers.7.ff1.weight": torch.zeros(64, 32)},
            {"method": "full"},
            "layers.7.ff1.weight is not a language-model tensor name",
        ),
        (
            lambda: {"layers.0.ff1.weight": torch.zeros(32, 32)},
            {"method": "full"},
            r"is \[32, 32\], expected \[64, 32\]",
        ),
        (lambda: {}, {"method": "full"}, "holds no tensors"),
    ],
)
def test_bad_files_are_refused_naming_the_file(tmp_path, tensors, meta, message):
    path = write_raw(tmp_path / "bad.safetensors", (tensors or good_lora)(), **meta)
    with pytest.raises(CheckpointError, match=message) as err:
        load_finetuned(path)
    assert str(path) in str(err.value)


def test_save_refuses_what_it_could_not_read_back(tmp_path):
    ft = lora_ft(_drop("heads.lora_A.weight"))
    with pytest.raises(InvalidInputError, match="heads has lora_A.weight missing"):
        save_finetuned(tmp_path / "x.safetensors", ft)
    assert not (tmp_path / "x.safetensors").exists()


# ---- refusals: base model -----------------------------------------------------------------------


def test_check_base_refuses_another_variant_or_config():
    ft = lora_ft(good_lora())
    check_base(ft, "small", CFG)
    with pytest.raises(InvalidInputError, match="fine-tuned from `small`.*use model_version=small"):
        check_base(ft, "medium", CFG)
    with pytest.raises(InvalidInputError, match="ffn_dim: 64 vs 128"):
        check_base(ft, "small", replace(CFG, ffn_dim=128))


def test_apply_refuses_a_shape_mismatch_and_leaves_the_model_untouched():
    wider = replace(CFG, ffn_dim=128)
    lm = random_lm(cfg=wider)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    with pytest.raises(
        CheckpointError, match=r"layers.0.ff2.lora_A.weight is \[4, 64\], expected \[4, 128\]"
    ):
        apply_finetuned(lm, lora_ft(good_lora()))
    full = FineTuned(
        "small",
        "full",
        {"heads.weight": torch.zeros(64, 32), "layers.0.ff1.weight": torch.zeros(64, 32)},
        CFG,
    )
    with pytest.raises(CheckpointError, match=r"layers.0.ff1.weight is \[64, 32\], expected \[128, 32\]"):
        apply_finetuned(lm, full)
    assert all(torch.equal(v, before[k]) for k, v in lm.state_dict().items())


def test_apply_refuses_an_unknown_tensor_name():
    lm = random_lm()
    ft = FineTuned(
        "small", "full", {"layers.5.ff1.weight": torch.zeros(64, 32)}, CFG, source="tuned.safetensors"
    )
    with pytest.raises(
        CheckpointError, match="tuned.safetensors.*layers.5.ff1.weight is not a language-model tensor name"
    ):
        apply_finetuned(lm, ft)
