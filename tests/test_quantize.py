"""The opt-in int8 path: close to fp32 token by token, and never on unless asked for."""

import pytest
import torch

from musicgen import InvalidInputError, SamplingParams
from musicgen.loading import build_model, read_checkpoint
from musicgen.quantize import int8_quality


@pytest.mark.parametrize("kind, fold_cross", [("mono", None), ("mono", True), ("melody", None)])
def test_int8_logits_stay_close_to_fp32(tiny, kind, fold_cross):
    folder = tiny.get(kind)[0]
    fp32 = tiny.engine(kind)
    int8 = build_model(read_checkpoint(folder), "cpu", int8=True)
    int8.lm.fold_cross = fold_cross  # True: the fold reads the dequantized int8 projections
    quality = int8_quality(fp32, int8, ["jazz trio", "folk"], steps=50)
    agreement, relative_error = quality["top1_agreement"], quality["logit_rel_error"]
    assert agreement > 0.85 and relative_error < 0.08  # measured here: 0.93-0.98 and 0.02-0.03
    assert relative_error > 0  # the int8 layers are really in use
    assert int8_quality(fp32, fp32, ["folk"], steps=10) == {"top1_agreement": 1.0, "logit_rel_error": 0.0}
    result = int8.generate(["jazz trio"], duration=0.3, sampling=SamplingParams(top_k=50), seed=0)
    assert result.codes.shape == (1, 4, 15) and int(result.codes.max()) < 2048


def test_int8_is_opt_in_and_cpu_only(tiny):
    folder = tiny.get("mono")[0]
    assert isinstance(tiny.engine("mono").lm.layers[0].ff1, torch.nn.Linear)
    with pytest.raises(InvalidInputError, match="CPU"):
        build_model(read_checkpoint(folder), "meta", int8=True)
