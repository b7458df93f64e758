"""The language model's teacher-forced pass (training) agrees with its cached decoding (generation), and
the decode loop's scripted step (musicgen.decode_script) with the general path it replaces."""

import copy

import pytest
import torch
from torch import nn

from musicgen.chroma import null_chroma
from musicgen.lm import cross_bias, stack_layers
from musicgen.quantize import quantize_int8


def _inputs(cfg, empty_row_first: bool, B: int = 3, S: int = 12):
    """codes [B, K, S], T5-like states [B, 5, text_dim] and mask: a full prompt, a padded one, and a row
    without text (as CFG's unconditional half), reversed when `empty_row_first`."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, cfg.card + 1, (B, cfg.num_codebooks, S), generator=gen)
    states = torch.randn(B, 5, cfg.text_dim, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float32)
    return codes, states, mask.flip(0) if empty_row_first else mask


def _cached_logits(lm, codes, states, mask, force_general: bool = False):
    """Logits [B, K, S, card] of decoding `codes` one position at a time through the cache (the first
    position as the prefill, after the melody prefix if any), and the cache (its `plan` is False where
    the steps ran the general path rather than the scripted one)."""
    B, _, S = codes.shape
    text = lm.project_text(states, mask)
    P, x = 0, lm.embed_codes(codes[:, :, :1])
    if lm.cfg.conditioning == "prepend":
        prefix = torch.cat([lm.project_chroma(null_chroma(B, 7)), text], dim=1)
        P, x = prefix.shape[1], torch.cat([prefix, x], dim=1)
    cache = lm.new_cache(B, P + S)
    if P == 0:
        lm.prepare_cross(cache, text, mask)
    if force_general:
        cache.plan = False  # what _decode_one records for a model it cannot script
    steps = [lm.forward_embeds(x, cache, start=0)]
    for j in range(1, S):
        steps.append(lm.forward_embeds(lm.embed_codes(codes[:, :, j : j + 1]), cache, start=P + j))
    return torch.stack(steps, dim=2), cache


@pytest.mark.parametrize(
    "kind, fold", [("mono", False), ("mono", True), ("stereo", False), ("stereo", True), ("melody", None)]
)
@pytest.mark.parametrize("empty_row_first", [False, True])
def test_teacher_forced_logits_equal_cached_decoding(tiny, kind, fold, empty_row_first, monkeypatch):
    """Decoding with plain cross-attention keys/values and with their CrossFold (projections folded into
    the text, rows without text left out) both give the training pass's logits, whether the rows with
    text lead the batch (as under CFG) or not."""
    lm = tiny.engine(kind).lm
    monkeypatch.setattr(lm, "fold_cross", fold)
    codes, states, mask = _inputs(lm.cfg, empty_row_first)
    with torch.no_grad():
        full = lm(codes, states, mask, null_chroma(len(codes), 7))
        assert full.shape == (*codes.shape, lm.cfg.card)
        cached, cache = _cached_logits(lm, codes, states, mask)
        assert cache.plan, "the decode steps did not run the scripted step"
        if fold is not None:
            assert (cache.cross_fold is not None) == fold
            if fold:
                assert cache.cross_fold.leading != empty_row_first
        torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind, fold", [("mono", False), ("mono", True), ("melody", None)])
@pytest.mark.parametrize("int8", [False, True])
def test_scripted_step_computes_what_the_general_path_does(tiny, kind, fold, int8, monkeypatch):
    """The scripted step and the general path (`_layers`, modules called) agree for float and int8
    projections and every kind of cross-attention (measured bit-equal on CPU; asserted to float32
    rounding, which any wrong index or missing operation would exceed by far)."""
    lm = tiny.engine(kind).lm
    if int8:
        lm = quantize_int8(copy.deepcopy(lm))
    monkeypatch.setattr(lm, "fold_cross", fold)
    for empty_row_first in (False, True):
        codes, states, mask = _inputs(lm.cfg, empty_row_first)
        with torch.inference_mode():
            scripted, cache = _cached_logits(lm, codes, states, mask)
            assert cache.plan, "the decode steps did not run the scripted step"
            general, _ = _cached_logits(lm, codes, states, mask, force_general=True)
        torch.testing.assert_close(scripted, general, rtol=1e-6, atol=1e-6)


def test_a_projection_the_script_cannot_run_falls_back_to_the_general_path(tiny):
    """A projection that is neither a plain Linear nor int8 (an adapter wrapped around it, say) is called
    as a module: the step runs the general path and still decodes right."""

    class Wrapped(nn.Linear):  # any subclass: the script cannot know what its forward adds
        def forward(self, x):
            return super().forward(x) * 2.0

    lm = copy.deepcopy(tiny.engine("mono").lm)
    codes, states, mask = _inputs(lm.cfg, empty_row_first=False)
    with torch.inference_mode():
        before, _ = _cached_logits(lm, codes, states, mask)
        old = lm.layers[0].ff2
        lm.layers[0].ff2 = Wrapped(old.in_features, old.out_features, bias=False)
        lm.layers[0].ff2.weight.copy_(old.weight / 2.0)  # the same function as before
        after, cache = _cached_logits(lm, codes, states, mask)
    assert cache.plan is False
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_cross_bias_masks_padding_and_keeps_empty_rows_finite():
    bias = cross_bias(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.float32)
    assert bias.shape == (2, 1, 1, 2)
    assert bias[0, 0, 0, 0] == 0 and bias[0, 0, 0, 1] < -1e30
    assert torch.isfinite(bias).all()


def test_stack_layers_stacks_and_lets_each_layer_go_before_the_next_is_made():
    """stack_layers gives what torch.stack gives, and keeps at most the last layer's own tensors beside
    the stacked ones while the next layer's are computed (a list then a stack would keep them all)."""
    import weakref

    made = []  # weak references to every layer's tensors

    def per_layer():
        for i in range(4):
            for j, refs in enumerate(made[:-1]):  # every layer before the last is gone already
                assert all(ref() is None for ref in refs), f"layer {j}'s tensors still alive at layer {i}"
            a, b = torch.full((2, 3), float(i)), torch.arange(5.0) + i
            made.append((weakref.ref(a), weakref.ref(b)))
            yield a, b

    a, b = stack_layers(per_layer(), 4)
    torch.testing.assert_close(
        a, torch.stack([torch.full((2, 3), float(i)) for i in range(4)]), rtol=0, atol=0
    )
    torch.testing.assert_close(b, torch.stack([torch.arange(5.0) + i for i in range(4)]), rtol=0, atol=0)
