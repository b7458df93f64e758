"""The one generation path: conditions in, codes out.

Stages, in order: `prefill` (conditioning prefix and known tokens in one forward), `decode_step` (one
position for every codebook, conditional and unconditional rows in one batched forward), `WindowDecoder`
(a window of at most 30 s, laid out with the delay pattern; `run_window` decodes one alone), and
`ClipDecoder` / `generate_long` (audiocraft's scheme for longer clips: each new window is prompted with the
end of the previous one). musicgen.batching steps the same decoders of many requests together.
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


class WindowDecoder:
    """One window being decoded: its delay-pattern sequence, its key/value cache and the next column.

    The state of `run_window`'s loop, kept in an object so that the batcher (musicgen.batching) can
    step many windows of different requests in one forward and still sample each exactly as alone:
    `prefill` feeds the prefix and known columns, then `take` samples a column from the logits of the
    previous position and `next_input` gives the column to feed for the next one, until `done`.
    """

    def __init__(
        self,
        lm: LanguageModel,
        cond: WindowConditions,
        batch: int,
        frames: int,
        params: SamplingParams,
        generator: torch.Generator | None,
        prompt: torch.Tensor | None = None,
    ):
        cfg = lm.cfg
        self.lm, self.cond, self.batch, self.frames = lm, cond, batch, frames
        self.params, self.generator = params, generator
        self.delays = cfg.delays
        device = lm.embed.weight.device
        self.fixed, self.free = build_fixed(prompt, batch, frames, self.delays, cfg.card, device)
        self.seq = self.fixed.clone()  # [B, K, L]
        self.length = pattern_length(frames, self.delays)
        self.prefix_len = 0 if cond.prefix is None else cond.prefix.shape[1]
        self.copies = cond.copies
        self.cache = lm.new_cache(self.copies * batch, self.prefix_len + self.length)
        # columns 0..Tp (start token and prompt) are known for codebook 0, which has no delay: fed at once
        self.col = 1 + (0 if prompt is None else prompt.shape[-1])
        self._beta = params.cfg_beta if cond.double else None

    @property
    def rows(self) -> int:
        """Rows of the decoder batch: clips times CFG copies."""
        return self.copies * self.batch

    @property
    def done(self) -> bool:
        return self.col >= self.length

    def prefill(self) -> torch.Tensor:
        """Feeds the prefix and the known columns; returns the logits [rows, K, V] of the first free one."""
        known = self.seq[:, :, : self.col]
        return prefill(self.lm, self.cache, self.cond, known.repeat(self.copies, 1, 1))

    def take(self, logits: torch.Tensor) -> None:
        """Samples the current column from logits [rows, K, V] (guidance mixed in fp32) and moves on."""
        logits = logits.float()  # guidance and sampling in fp32 whatever the model's dtype
        if self.copies > 1:
            logits = mix_guidance(logits, self.params.cfg_coef, self.batch, self._beta)
        tokens = sample(logits, self.params, self.generator)  # [B, K]
        col = self.col
        self.seq[:, :, col] = torch.where(self.free[:, col], tokens, self.fixed[:, :, col])
        self.col += 1

    def next_input(self) -> tuple[torch.Tensor, int]:
        """The column just sampled, for every row [rows, K], and the position it is fed at."""
        col = self.col - 1
        return self.seq[:, :, col].repeat(self.copies, 1), self.prefix_len + col

    def codes(self) -> torch.Tensor:
        """The finished window: codes [B, K, frames], the prompt included, delays undone."""
        return undo_delays(self.seq, self.frames, self.delays)


@torch.inference_mode()
def run_window(window: WindowDecoder, on_step: Callable[[], None] | None = None, static: bool = False):
    """Decodes a window alone, step after step; returns its codes [B, K, frames]."""
    lm = window.lm
    logits = window.prefill()
    position = torch.full((1,), window.prefix_len + window.col, dtype=torch.long, device=logits.device)
    while True:
        window.take(logits)
        if on_step is not None:
            on_step()
        if window.done:
            return window.codes()
        column, at = window.next_input()
        if static:
            logits = decode_step_static(lm, window.cache, column, position)
            position += 1
        else:
            logits = decode_step(lm, window.cache, column, at)


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


class ClipDecoder:
    """A whole request's decode, window after window (audiocraft's long form): `window` is the one being
    decoded; `advance` stores it and opens the next, prompted with the end of the last, until `finished`.

    conditions_at(offset_frames) gives each window's conditioning (melody models slide along the melody).
    """

    def __init__(
        self,
        lm: LanguageModel,
        conditions_at: Callable[[int], WindowConditions],
        batch: int,
        plan: LongFormPlan,
        params: SamplingParams,
        generator: torch.Generator | None,
        prompt: torch.Tensor | None = None,
    ):
        self.lm, self.conditions_at, self.batch, self.plan = lm, conditions_at, batch, plan
        self.params, self.generator = params, generator
        self.pieces = [] if prompt is None else [prompt]
        self.window_prompt = prompt
        self.windows = plan.windows(0 if prompt is None else prompt.shape[-1])
        self.index = 0
        self.window: WindowDecoder | None = None

    @property
    def finished(self) -> bool:
        return self.index >= len(self.windows)

    def open_window(self) -> WindowDecoder:
        """The decoder of the next window (not yet prefilled)."""
        offset, frames, _ = self.windows[self.index]
        self.window = WindowDecoder(
            self.lm, self.conditions_at(offset), self.batch, frames, self.params, self.generator,
            self.window_prompt,
        )  # fmt: skip
        return self.window

    def close_window(self, codes: torch.Tensor) -> None:
        """Stores a finished window's codes [B, K, frames]."""
        prompt = self.window_prompt
        self.pieces.append(codes if prompt is None else codes[:, :, prompt.shape[-1] :])
        self.window_prompt = codes[:, :, self.plan.stride :]
        self.window = None
        self.index += 1

    def codes(self) -> torch.Tensor:
        """codes [B, K, total], the prompt included."""
        return torch.cat(self.pieces, dim=-1)


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
    clip = ClipDecoder(lm, conditions_at, batch, plan, params, generator, prompt)
    while not clip.finished:
        clip.close_window(run_window(clip.open_window(), on_step, static))
    return clip.codes()
