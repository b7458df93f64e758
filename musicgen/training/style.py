"""Fine-tuning MusicGen-Style as audiocraft trains it, on a dataset encoded once.

What audiocraft does at every training step (StyleConditioner in training mode, the MusicGen solver):

1. draws one excerpt length, uniform in [1.5, 4.5] s, and one start, both for the whole batch, and cuts
   that excerpt out of each training segment itself (the condition is the very music being predicted);
2. runs MERT, the style transformer and BatchNorm on it, quantizes every frame with a random number of
   codebooks in [1, 6] (q_dropout) and keeps every 15th frame;
3. zeroes the cross-entropy on the code frames the excerpt covers, `int(start / 640)` for
   `int(length / 640)` frames on every codebook (`_get_mask_wav`), so that the model learns the style and
   not to copy the excerpt back;
4. drops the description (p 0.4) and the style (p 0.4) independently (attribute dropout), and both
   (p 0.1, classifier-free-guidance dropout). A dropped style is zero tokens, and its excerpt masks nothing.

What this module does instead, and why:

* **Excerpts are computed when the dataset is encoded, not at each step.** Our trainer never holds audio:
  segments are streamed once through EnCodec and only their codes are kept (`encode.py`). The style
  conditioner is frozen here (MERT, transformer, BatchNorm and codebooks alike), so its output for a given
  excerpt never changes, and it can run once, in the same pass. Each segment gets `slots` excerpts
  (`excerpt_slot_count`: 4, or one per epoch up to 8). Slot k has one length for every segment,
  `slot_lengths` draws them stratified over [1.5, 4.5] s (one in each of `slots` equal bands, then shuffled),
  and each segment draws its own start in every slot (audiocraft: one start for the batch), uniform over
  the positions that keep the excerpt in its real audio, from the training seed, segment after segment
  (the same whatever the batching). A training step picks one slot for its whole batch at random, so lengths vary from step to
  step as in audiocraft (over `slots` values rather than a continuum) and every row of a batch has the same
  number of style tokens, as at inference. MERT never runs during training.
* **What is stored is the residual quantizer's choices, not the features.** Residual quantization is
  greedy: quantizing with n codebooks makes the first n choices that quantizing with all of them makes. So
  the indices of all `num_quantizers` codebooks are stored for each kept frame (`StyleEncoder.codes`;
  int32, [slots, tokens, 6] per segment: a few KB, where the features would take 47 KB per slot) and a
  step's q_dropout is exact: `StyleEncoder.dequantize` of the first n is what `StyleEncoder.quantize(x, n)`
  is made of. Validation uses slot 0 with the model's `eval_q` codebooks, as inference does.
* **Frozen conditioner, no EMA.** audiocraft trains the style transformer and updates the codebooks by EMA
  (with BatchNorm on batch statistics); fine-tuning here keeps all of it as released, BatchNorm on its stored
  statistics, so the style tokens at training and at inference come from the same function.
* **`style_proj`** (the conditioner's output projection, part of the language model here) trains with the
  rest of the language model in a full fine-tune and is stored with the changed tensors; under LoRA it stays
  as released, like `text_proj` (adapters go on the transformer's projections only, which have no
  cross-attention in the style model).
* **Dropout is drawn per row**, with audiocraft's probabilities (text 0.4 and style 0.4 independently, then
  both with `condition_dropout`, 0.1), where audiocraft draws each once per batch. Per row gives the same
  rates with less variance between steps, and trains the layout inference uses for classifier-free guidance:
  a null style is zero tokens as many as its batch-mates' styles have; only when no row of a batch keeps a
  style does each row get a single zero token (what audiocraft gives when the style is dropped, and what
  text-only inference gives). A row whose style was dropped keeps its whole loss (nothing was shown).
* **Segments are at least twice the longest excerpt** (`MIN_SEGMENT_SECONDS`, 9 s, and a file's shorter
  last piece is kept only from 9 s on): the masked frames are then at most half of a segment's loss.
  audiocraft uses 30 s segments, masking 5 to 15 % of them.

Memory stays what it was: the audio is still read a batch at a time, and what is kept per segment grows by a
few KB (the picks and starts) next to its codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import StyleConfig
from ..errors import InvalidInputError
from ..style import StyleConditioner, StyleEncoder, excerpt_samples, token_count

MIN_SLOTS = 4
MAX_SLOTS = 8
# a segment at least twice the longest excerpt: the excerpt's frames are at most half of the loss
MIN_SEGMENT_SECONDS = 2 * StyleConfig.max_excerpt_length


def excerpt_slot_count(epochs: int) -> int:
    """How many excerpts each segment gets: one per epoch, at least MIN_SLOTS, at most MAX_SLOTS."""
    return max(MIN_SLOTS, min(MAX_SLOTS, epochs))


def slot_lengths(cfg: StyleConfig, slots: int, seed: int) -> list[int]:
    """The excerpt length of each slot, in samples at the conditioner's rate: one drawn uniformly in each
    of `slots` equal bands of [min_excerpt_length, max_excerpt_length], in a shuffled order."""
    generator = torch.Generator().manual_seed(seed)
    low, high = cfg.min_excerpt_length, cfg.max_excerpt_length
    draws = torch.rand(slots, generator=generator, dtype=torch.float64)
    seconds = [low + (high - low) * (k + float(u)) / slots for k, u in enumerate(draws)]
    order = torch.randperm(slots, generator=generator).tolist()
    return [excerpt_samples(cfg, seconds[i]) for i in order]


# ---- at encoding time -----------------------------------------------------------------------------------


@torch.inference_mode()
def encode_excerpts(
    conditioner: StyleConditioner,
    wavs: list[torch.Tensor],
    valid: list[int],
    lengths: list[int],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each segment's excerpt in every slot through the frozen conditioner, before quantization.

    wavs: mono segments [S] at the conditioner's rate; valid: samples of real audio in each; lengths: the
    slots' excerpt lengths (samples); generator: draws the starts, segment after segment. Returns (codes
    [b, slots, T, Q] int32: the residual quantizer's picks at the kept frames, T the longest slot's token
    count, shorter slots padded with 0; starts [b, slots] int64: each excerpt's first sample).
    """
    cfg = conditioner.cfg
    b, slots = len(wavs), len(lengths)
    tokens = [token_count(cfg, n) for n in lengths]
    codes = torch.zeros(b, slots, max(tokens), cfg.num_quantizers, dtype=torch.int32)
    if min(valid) < max(lengths):
        raise InvalidInputError(
            f"a segment holds {min(valid) / cfg.sample_rate:.2f} s of audio, less than a style excerpt of "
            f"{max(lengths) / cfg.sample_rate:.2f} s: use segments of at least {MIN_SEGMENT_SECONDS:g} s."
        )
    # drawn segment by segment, so that a segment's excerpts do not depend on how segments are batched
    starts = torch.tensor(
        [[int(torch.randint(0, v - n + 1, (1,), generator=generator)) for n in lengths] for v in valid],
        dtype=torch.long,
    ).view(b, slots)
    for k, n in enumerate(lengths):
        excerpts = torch.stack([w[s : s + n] for w, s in zip(wavs, starts[:, k].tolist(), strict=True)])
        frames = conditioner.encoder.encode(conditioner.features(excerpts))[:, :: cfg.ds_factor]
        if frames.shape[1] != tokens[k]:
            raise RuntimeError(
                f"the style conditioner gave {frames.shape[1]} tokens for {n} samples, token_count says "
                f"{tokens[k]}"
            )
        codes[:, k, : tokens[k]] = conditioner.encoder.codes(frames, cfg.num_quantizers).to(
            "cpu", torch.int32
        )
    return codes, starts


# ---- at training time -----------------------------------------------------------------------------------


def drop_conditions(
    rows: int, generator: torch.Generator, p_all: float, p_text: float, p_style: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row condition dropout: (keep_text [rows], keep_style [rows]) bool. The caption and the style are
    each dropped with their own probability (attribute dropout), then both with p_all (CFG dropout)."""
    draws = torch.rand(3, rows, generator=generator)
    drop_all = draws[0] < p_all
    return ~(drop_all | (draws[1] < p_text)), ~(drop_all | (draws[2] < p_style))


def excerpt_frames(
    starts: torch.Tensor, lengths: torch.Tensor, hop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The code frames an excerpt covers, as audiocraft's `_get_mask_wav` counts them: (first frame
    `start // hop`, frame count `length // hop`), for starts and lengths in samples."""
    return torch.div(starts, hop, rounding_mode="floor"), torch.div(lengths, hop, rounding_mode="floor")


@dataclass
class StyleBatch:
    """A batch's style conditions: tokens [B, Ts, style_dim] (zero rows for dropped styles) and mask
    [B, Ts] for `LanguageModel.forward`, and the code frames each row's excerpt covers (first, count [B];
    count 0 where the style was dropped), to leave out of the loss."""

    tokens: torch.Tensor
    mask: torch.Tensor
    first: torch.Tensor
    count: torch.Tensor


def style_batch(
    encoder: StyleEncoder,
    codes: torch.Tensor,
    starts: torch.Tensor,
    lengths: torch.Tensor,
    keep: torch.Tensor,
    n_q: int,
    hop: int,
) -> StyleBatch:
    """The style conditions of one batch, all rows from one slot.

    codes: [B, T, Q] the slot's stored picks; starts, lengths: [B] samples (one length for the batch);
    keep: [B] bool, rows whose style is kept; n_q: codebooks summed. No kept row: one zero token per row.
    """
    codebooks, cfg = encoder.codebooks, encoder.cfg
    B, device = codes.shape[0], codebooks.device
    keep = keep.to(device)
    if not bool(keep.any()):
        zeros = torch.zeros(B, dtype=torch.long, device=device)
        tokens = codebooks.new_zeros(B, 1, codebooks.shape[-1])
        return StyleBatch(tokens, codebooks.new_zeros(B, 1), zeros, zeros)
    if bool((lengths != lengths[0]).any()):
        raise ValueError("style_batch: every row of a batch must come from the same slot (one length)")
    count = token_count(cfg, int(lengths[0]))
    tokens = encoder.dequantize(codes[:, :count].to(device), n_q) * keep[:, None, None]
    mask = keep[:, None].expand(B, count).to(tokens.dtype)
    first, frames = excerpt_frames(starts.to(device), lengths.to(device), hop)
    return StyleBatch(tokens, mask, first, frames * keep)


__all__ = [
    "MAX_SLOTS",
    "MIN_SEGMENT_SECONDS",
    "MIN_SLOTS",
    "StyleBatch",
    "drop_conditions",
    "encode_excerpts",
    "excerpt_frames",
    "excerpt_slot_count",
    "slot_lengths",
    "style_batch",
]
