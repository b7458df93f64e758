"""EnCodec: waveform <-> codes. transformers' `EncodecModel` does the work; this adds stereo handling.

Stereo models encode left and right separately and interleave their codebooks: [1L, 1R, 2L, 2R, ...].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # transformers is slow to import; only loading needs it
    from transformers import EncodecModel


class Codec:
    """Encodes and decodes audio for a model with `channels` channels (1 or 2)."""

    def __init__(self, model: EncodecModel, channels: int):
        self.model = model.eval()
        self.channels = channels

    @property
    def num_codebooks(self) -> int:
        return self.model.config.num_quantizers * self.channels

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, C, S] (C = the model's channels) -> codes [B, K, T]."""
        per_channel = [self._encode_mono(wav[:, c : c + 1]) for c in range(self.channels)]
        # [B, Kc, T] per channel -> interleave along the codebook axis
        return torch.stack(per_channel, dim=2).flatten(1, 2)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> wav [B, C, T * hop]."""
        channels = [self._decode_mono(codes[:, c :: self.channels]) for c in range(self.channels)]
        return torch.cat(channels, dim=1)

    @torch.inference_mode()
    def latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> each channel's continuous latent [B, C, D, T]: the sum of its codebooks'
        vectors, what EnCodec's decoder starts from (and what MultiBand Diffusion is conditioned on)."""
        device = self.model.device
        per_channel = [
            # the quantizer takes [Kc, B, T] and returns [B, D, T]
            self.model.quantizer.decode(codes[:, c :: self.channels].transpose(0, 1).to(device))
            for c in range(self.channels)
        ]
        return torch.stack(per_channel, dim=1).float()

    @property
    def latent_dim(self) -> int:
        return self.model.config.codebook_dim

    def _encode_mono(self, wav: torch.Tensor) -> torch.Tensor:
        wav = wav.to(self.model.device, self.model.dtype)
        return self.model.encode(wav, return_dict=True).audio_codes[0]  # [B, Kc, T]

    def _decode_mono(self, codes: torch.Tensor) -> torch.Tensor:
        out = self.model.decode(codes[None].to(self.model.device), [None], return_dict=True)
        return out.audio_values.float()  # [B, 1, S]
