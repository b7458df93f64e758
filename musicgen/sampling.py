"""Turning the logits of one step into tokens: classifier-free guidance, temperature, top-k, top-p.

Everything stays on the device: no `.item()`, no Python branching on tensor values, so a step never waits
for the device. Sampling draws with the exponential race (argmax of p / E, E ~ Exp(1)), which picks token i
with probability p_i like `torch.multinomial` but takes a seeded generator and has static shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are drawn. top_k=0 and top_p=0 switch those filters off; temperature 0 is greedy.

    cfg_beta: MusicGen-Style's double classifier-free guidance (None: ordinary guidance); see mix_guidance.
    """

    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0
    cfg_beta: float | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def mix_guidance(
    logits: torch.Tensor, cfg_coef: float, batch: int, cfg_beta: float | None = None
) -> torch.Tensor:
    """Classifier-free guidance, ordinary or double.

    Ordinary: logits [2B, K, V] (conditional rows first) -> [B, K, V]: uncond + (cond - uncond) * cfg_coef.
    Double (cfg_beta set, MusicGen-Style): logits [3B, K, V], rows [text and style; style only; neither]
    -> null + cfg_coef * (style + cfg_beta * (cond - style) - null): beta weighs the text against the
    style, cfg_coef both against nothing.
    """
    if cfg_beta is None:
        cond, uncond = logits[:batch], logits[batch:]
        return uncond + (cond - uncond) * cfg_coef
    cond, style, null = logits[:batch], logits[batch : 2 * batch], logits[2 * batch :]
    return null + cfg_coef * (style + cfg_beta * (cond - style) - null)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, K, V] -> tokens [B, K]."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p > 0:
        probs = _keep_top_p(probs, params.top_p)
    elif params.top_k > 0:
        # audiocraft's rule: keep every token at least as likely as the k-th one
        kth = torch.topk(probs, min(params.top_k, probs.shape[-1]), dim=-1).values[..., -1:]
        probs = probs * (probs >= kth)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


def _keep_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keeps the smallest set of most likely tokens whose mass reaches top_p (audiocraft's rule)."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = sorted_probs * (mass_before <= top_p)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)
