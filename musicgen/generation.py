"""The one generation path: conditions in, codes out.

Stages, in order: `prefill` (conditioning prefix and known tokens in one forward), `decode_step` (one
position for every codebook, conditional and unconditional rows in one batched forward), `generate_window`
(a window of at most 30 s, laid out with the delay pattern), and `generate_long` (audiocraft's scheme for
longer clips: each new window is prompted with the end of the previous one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .lm import KVCache, LanguageModel
from .pattern import build_fixed, pattern_length, undo_delays
from .sampling import SamplingParams, mix_guidance, sample


@dataclass
class WindowConditions:
    """The conditioning of one window, already projected to the LM width, CFG rows included.

    Rows are [conditional B; unconditional B] when `guided`, [conditional B; style only B; neither B]
    when `double` (MusicGen-Style's double guidance), else just B.
    For cross-attention models: text [R, S, D] and text_mask [R, S]. For prepend models: prefix [R, P, D].
    """

    guided: bool
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    prefix: torch.Tensor | None = None
    double: bool = False

    @property
    def copies(self) -> int:
        """Rows of the decoder batch per clip: 1, 2 (guidance) or 3 (double guidance)."""
        return 3 if self.double else 2 if self.guided else 1


def prefill(lm: LanguageModel, cache: KVCache, cond: WindowConditions, known: torch.Tensor) -> torch.Tensor:
    """Feeds the prefix and the known columns `known` [R, K, T0] of the sequence; returns logits [R, K, V]."""
    if cond.text is not None:
        lm.prepare_cross(cache, cond.text, cond.text_mask)
    x = lm.embed_codes(known)
    if cond.prefix is not None:
        x = torch.cat([cond.prefix.to(x.dtype), x], dim=1)
    return lm.forward_embeds(x, cache, start=0)


def decode_step(lm: LanguageModel, cache: KVCache, column: torch.Tensor, position: int) -> torch.Tensor:
    """column [R, K] of tokens at `position` -> logits [R, K, V] for the next position (eager)."""
    return lm.forward_embeds(lm.embed_codes(column[:, :, None]), cache, start=position)


def decode_step_static(lm: LanguageModel, cache: KVCache, column: torch.Tensor, position: torch.Tensor):
    """As `decode_step`, with static shapes and the position as a device tensor: the function to compile
    with `torch.compile(mode="reduce-overhead")` or capture in a CUDA graph."""
    return lm.step_static(lm.embed_codes(column[:, :, None]), cache, position)


@torch.inference_mode()
def generate_window(
    lm: LanguageModel,
    cond: WindowConditions,
    batch: int,
    frames: int,
    params: SamplingParams,
    generator: torch.Generator | None,
    prompt: torch.Tensor | None = None,
    on_step: Callable[[], None] | None = None,
    static: bool = False,
) -> torch.Tensor:
    """Generates one window.

    Args:
        batch: B, the number of clips.
        frames: frames of the finished window, prompt included (at most 30 s worth).
        prompt: codes [B, K, Tp] that start the window, Tp < frames.
        on_step: called after each decoded position (progress bars).
        static: decode with `decode_step_static` (static shapes, device-side position).
    Returns:
        codes [B, K, frames], the prompt included, delays undone.
    """
    cfg = lm.cfg
    device = lm.embed.weight.device
    delays = cfg.delays
    fixed, free = build_fixed(prompt, batch, frames, delays, cfg.card, device)
    seq = fixed.clone()  # [B, K, L]
    L = pattern_length(frames, delays)
    prefix_len = 0 if cond.prefix is None else cond.prefix.shape[1]
    copies = cond.copies
    cache = lm.new_cache(copies * batch, prefix_len + L)

    # columns 0..Tp (start token and prompt) are known for codebook 0, which has no delay: feed them at once
    first = 1 + (0 if prompt is None else prompt.shape[-1])
    known = seq[:, :, :first]
    logits = prefill(lm, cache, cond, known.repeat(copies, 1, 1))
    position = torch.full((1,), prefix_len + first, dtype=torch.long, device=device)
    beta = params.cfg_beta if cond.double else None
    for col in range(first, L):
        logits = logits.float()  # guidance and sampling in fp32 whatever the model's dtype
        if copies > 1:
            logits = mix_guidance(logits, params.cfg_coef, batch, beta)
        tokens = sample(logits, params, generator)  # [B, K]
        seq[:, :, col] = torch.where(free[:, col], tokens, fixed[:, :, col])
        if on_step is not None:
            on_step()
        if col + 1 < L:
            column = seq[:, :, col].repeat(copies, 1)
            if static:
                logits = decode_step_static(lm, cache, column, position)
                position += 1
            else:
                logits = decode_step(lm, cache, column, prefix_len + col)
    return undo_delays(seq, frames, delays)


def steps_for(frames: int, prompt_frames: int, delays: list[int]) -> int:
    """Decode steps one window costs (for progress bars)."""
    return pattern_length(frames, delays) - (prompt_frames + 1)


@dataclass
class LongFormPlan:
    """audiocraft's windowing for clips longer than one window, in frames."""

    total: int  # frames of the finished clip, prompt included
    window: int  # frames one window holds (30 s)
    stride: int  # frames each new window moves forward (18 s)

    def windows(self, prompt_frames: int) -> list[tuple[int, int, int]]:
        """(offset, frames, prompt_frames) of each window; windows after the first are prompted with the
        last `window - stride` frames of the previous one."""
        out = []
        offset, prompt = 0, prompt_frames
        while True:
            frames = min(self.total - offset, self.window)
            out.append((offset, frames, prompt))
            if offset + frames >= self.total:
                return out
            offset += self.stride
            prompt = frames - self.stride


def generate_long(
    lm: LanguageModel,
    conditions_at: Callable[[int], WindowConditions],
    batch: int,
    plan: LongFormPlan,
    params: SamplingParams,
    generator: torch.Generator | None,
    prompt: torch.Tensor | None = None,
    on_step: Callable[[], None] | None = None,
    static: bool = False,
) -> torch.Tensor:
    """Generates `plan.total` frames in windows; returns codes [B, K, total], the prompt included.

    conditions_at(offset_frames) gives each window's conditioning (melody models slide along the melody).
    """
    pieces = [] if prompt is None else [prompt]
    window_prompt = prompt
    for offset, frames, _ in plan.windows(0 if prompt is None else prompt.shape[-1]):
        codes = generate_window(
            lm, conditions_at(offset), batch, frames, params, generator, window_prompt, on_step, static
        )
        pieces.append(codes if window_prompt is None else codes[:, :, window_prompt.shape[-1] :])
        window_prompt = codes[:, :, plan.stride :]
    return torch.cat(pieces, dim=-1)
