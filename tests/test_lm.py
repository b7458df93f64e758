"""The language model's teacher-forced pass (training) agrees with its cached decoding (generation)."""

import pytest
import torch

from musicgen.chroma import null_chroma
from musicgen.lm import cross_bias


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
    cfg = lm.cfg
    gen = torch.Generator().manual_seed(0)
    B, S = 3, 12
    codes = torch.randint(0, cfg.card + 1, (B, cfg.num_codebooks, S), generator=gen)
    states = torch.randn(B, 5, cfg.text_dim, generator=gen)
    # a full prompt, a padded one, and a row without text (as CFG's unconditional half)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float32)
    if empty_row_first:
        mask = mask.flip(0)
    chroma = null_chroma(B, 7)
    with torch.no_grad():
        full = lm(codes, states, mask, chroma)
        assert full.shape == (B, cfg.num_codebooks, S, cfg.card)
        text = lm.project_text(states, mask)
        prefix = None
        if cfg.conditioning == "prepend":
            prefix = torch.cat([lm.project_chroma(chroma), text], dim=1)
        P = 0 if prefix is None else prefix.shape[1]
        cache = lm.new_cache(B, P + S)
        if prefix is None:
            lm.prepare_cross(cache, text, mask)
            assert (cache.cross_fold is not None) == fold
            if fold:
                assert cache.cross_fold.leading != empty_row_first
            x = lm.embed_codes(codes[:, :, :1])
        else:
            x = torch.cat([prefix, lm.embed_codes(codes[:, :, :1])], dim=1)
        step = lm.forward_embeds(x, cache, start=0)
        torch.testing.assert_close(step, full[:, :, 0], rtol=1e-4, atol=1e-4)
        for j in range(1, S):
            step = lm.forward_embeds(lm.embed_codes(codes[:, :, j : j + 1]), cache, start=P + j)
            torch.testing.assert_close(step, full[:, :, j], rtol=1e-4, atol=1e-4)


def test_cross_bias_masks_padding_and_keeps_empty_rows_finite():
    bias = cross_bias(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.float32)
    assert bias.shape == (2, 1, 1, 2)
    assert bias[0, 0, 0, 0] == 0 and bias[0, 0, 0, 1] < -1e30
    assert torch.isfinite(bias).all()
