"""The delay pattern: codebook k of frame f sits at sequence position f + delay[k] + 1.

Position 0 holds the start token for every codebook. Positions where a codebook has no frame (before its
delay, or past the last frame) hold the special token `card`, which is also what the model was trained on.
"""

from __future__ import annotations

import torch


def pattern_length(frames: int, delays: list[int]) -> int:
    """Sequence length (start token included) that holds `frames` frames of every codebook."""
    return frames + max(delays) + 1


def build_fixed(
    prompt: torch.Tensor | None, batch: int, frames: int, delays: list[int], special: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values known before sampling, and where sampling is allowed.

    Args:
        prompt: codes [B, K, Tp] to continue, or None.
        frames: frames the finished sequence holds (prompt included).
    Returns:
        fixed: [B, K, L] the start token, padding and the prompt, laid out with the delays.
        free: [K, L] bool, True where a new token is sampled (same for every batch item).
    """
    K = len(delays)
    L = pattern_length(frames, delays)
    tp = 0 if prompt is None else prompt.shape[-1]
    fixed = torch.full((batch, K, L), special, dtype=torch.long, device=device)
    free = torch.zeros((K, L), dtype=torch.bool, device=device)
    for k, d in enumerate(delays):
        if tp:
            fixed[:, k, d + 1 : d + 1 + tp] = prompt[:, k]
        free[k, d + 1 + tp : d + 1 + frames] = True
    return fixed, free


def undo_delays(seq: torch.Tensor, frames: int, delays: list[int]) -> torch.Tensor:
    """seq [B, K, L] laid out with the delays -> codes [B, K, frames], aligned in time."""
    return torch.stack([seq[:, k, d + 1 : d + 1 + frames] for k, d in enumerate(delays)], dim=1)
