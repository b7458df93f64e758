"""Shared helpers for the tests: the reference codes from transformers, and small audio files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def reference_generate(model, tokenizer, prompts, frames, guidance_scale=3.0, **extra):
    """transformers' greedy generate: returns (codes [B, K, frames], audio [B, C, S]).

    The codes are caught on their way into EnCodec (transformers returns only audio); stereo models decode
    left and right separately, so the two calls are interleaved back into the model's codebook order.
    """
    delay = model.decoder.config.num_codebooks // model.decoder.config.audio_channels - 1
    caught = []
    original = model.audio_encoder.decode

    def spy(codes, *args, **kwargs):
        caught.append(codes[0])
        return original(codes, *args, **kwargs)

    model.audio_encoder.decode = spy
    try:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True) if prompts is not None else {}
        with torch.no_grad():
            audio = model.generate(
                **inputs,
                **extra,
                do_sample=False,
                guidance_scale=guidance_scale,
                max_new_tokens=frames + delay,
            )
    finally:
        model.audio_encoder.decode = original
    codes = caught[0] if len(caught) == 1 else torch.stack(caught, dim=2).flatten(1, 2)
    return codes, audio


def write_tone(path: Path, seconds=1.0, rate=32000, channels=1, freq=440.0) -> Path:
    """A sine tone file (format from the suffix)."""
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.5 * np.sin(2 * np.pi * freq * t)
    data = np.stack([wav * (1 - 0.3 * c) for c in range(channels)], axis=1)
    sf.write(path, data.astype(np.float32), rate)
    return path
