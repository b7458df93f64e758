"""Text conditioning: the frozen T5 encoder and its tokenizer (transformers' classes)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # transformers is slow to import; only loading needs it
    from transformers import PreTrainedTokenizerBase, T5EncoderModel

# T5 was trained on at most 512 tokens, and its attention's memory grows with the square of the length
# (a 100 KB prompt took 19 GB): longer prompts are cut there, with a warning. audiocraft and transformers
# pass any length; the two agree with this encoder on every prompt T5 was made for.
MAX_TEXT_TOKENS = 512

log = logging.getLogger(__name__)


class TextEncoder:
    """Turns prompts into T5 states. An empty or missing prompt gives an all-masked row (no condition)."""

    def __init__(self, model: T5EncoderModel, tokenizer: PreTrainedTokenizerBase):
        self.model = model.eval()
        self.tokenizer = tokenizer

    @torch.inference_mode()
    def encode(self, prompts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts (B) -> states [B, S, text_dim] float32, mask [B, S] (1 = token, 0 = padding/no text)."""
        device = self.model.device
        texts = [p or "" for p in prompts]
        if not any(texts):
            width = self.model.config.d_model
            return torch.zeros(len(texts), 1, width, device=device), torch.zeros(len(texts), 1, device=device)
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        if max(lengths) > MAX_TEXT_TOKENS:
            log.warning(
                "A prompt is %d tokens long; the text encoder reads the first %d (about 2,000 characters), "
                "the rest is left out.",
                max(lengths),
                MAX_TEXT_TOKENS,
            )
        batch = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=MAX_TEXT_TOKENS
        )
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        # audiocraft masks empty prompts entirely: they mean "no text", like the unconditional branch
        empty = torch.tensor([not t for t in texts], device=device)
        mask = mask.masked_fill(empty[:, None], 0)
        return states, mask.float()
