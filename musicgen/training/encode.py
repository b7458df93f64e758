"""Segments -> the tensors training reads every epoch: EnCodec codes (and chroma for melody models, style
excerpts for MusicGen-Style).

EnCodec, the chroma and the style conditioner are frozen, so they run once per segment, not once per
epoch (for the style model: once per segment and excerpt slot, see `musicgen.training.style`). The result
can be saved to one safetensors file, which is how data-parallel workers receive it.

Audio goes through a batch at a time and only the codes are kept (50 frames of K int64 per second, 80
times smaller than the float32 waveform they replace), so the audio of a dataset of any length is encoded
within the memory of one batch: `encode_dataset` reads each batch from a `PreparedDataset` as it goes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from ..model import MusicGen

if TYPE_CHECKING:
    from .dataset import PreparedDataset


@dataclass
class EncodedSet:
    """The training set as codes.

    codes: [N, K, T] int64; valid: [N] frames of real audio in each row (the rest is masked out of the
    loss); captions: N texts; chroma: [N, L, 12] one-hot for melody models, else None.

    Style models (`musicgen.training.style`), else None: style_codes [N, slots, T, Q] int32, the residual
    quantizer's picks for each segment's excerpt in each slot; style_starts [N, slots] and style_lengths
    [N, slots] int64, each excerpt's first sample and length (one length per slot, on every row).
    """

    codes: torch.Tensor
    valid: torch.Tensor
    captions: list[str]
    chroma: torch.Tensor | None = None
    style_codes: torch.Tensor | None = None
    style_starts: torch.Tensor | None = None
    style_lengths: torch.Tensor | None = None

    _OPTIONAL = ("chroma", "style_codes", "style_starts", "style_lengths")

    def __len__(self) -> int:
        return self.codes.shape[0]

    def subset(self, index: torch.Tensor) -> EncodedSet:
        optional = {k: None if getattr(self, k) is None else getattr(self, k)[index] for k in self._OPTIONAL}
        return EncodedSet(
            self.codes[index], self.valid[index], [self.captions[i] for i in index.tolist()], **optional
        )

    def save(self, path: Path) -> Path:
        tensors = {"codes": self.codes.contiguous(), "valid": self.valid.contiguous()}
        for name in self._OPTIONAL:
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name).contiguous()
        save_file(tensors, str(path), metadata={"captions": json.dumps(self.captions)})
        return path

    @classmethod
    def load(cls, path: Path) -> EncodedSet:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            captions = json.loads(f.metadata()["captions"])
        t = load_file(str(path))
        return cls(t["codes"], t["valid"], captions, **{k: t.get(k) for k in cls._OPTIONAL})


def encode_segments(
    model: MusicGen, segments: Sequence, batch_size: int = 8, style_slots: int = 4, seed: int = 0
) -> EncodedSet:
    """Encodes `segments` held in memory (objects with `wav` [C, S], `valid` samples and `caption`) with
    the model's EnCodec, and computes their chroma on melody models, their style excerpts on style models
    (`style_slots` each, lengths and starts drawn from `seed`)."""
    batches = (segments[i : i + batch_size] for i in range(0, len(segments), batch_size))
    return encode_batches(model, batches, style_slots, seed)


def encode_dataset(
    model: MusicGen, dataset: PreparedDataset, batch_size: int = 8, style_slots: int = 4, seed: int = 0
) -> EncodedSet:
    """Encodes every segment of `dataset`, reading their audio from its files one batch at a time.

    Gives the codes `encode_segments` gives for the same segments in memory; peak memory is one batch of
    audio and its EnCodec (and style conditioner) activations, whatever the dataset's length.
    """
    return encode_batches(model, dataset.batches(batch_size), style_slots, seed)


@torch.inference_mode()
def encode_batches(
    model: MusicGen, batches: Iterable[Sequence], style_slots: int = 4, seed: int = 0
) -> EncodedSet:
    """Encodes batches of segments (objects with `wav` [C, S], `valid` and `caption`) as they come.

    Each batch is released before the next is asked for, so a lazy iterable (`PreparedDataset.batches`)
    keeps one batch of audio in memory. Style models: `style_slots` excerpts per segment, whose lengths
    (shared by every segment) and starts are drawn from `seed` (`musicgen.training.style`).
    """
    hop = model.config.sample_rate // model.config.frame_rate
    codes, chroma, valid, captions = [], [], [], []
    style_codes, style_starts, lengths, generator = [], [], [], None
    if model.config.is_style:
        from .style import slot_lengths

        lengths = slot_lengths(model.config.style, style_slots, seed)
        generator = torch.Generator().manual_seed(seed + 1)  # the starts: a stream of their own
    for batch in batches:
        wav = torch.stack([model._as_channels(s.wav, "training audio") for s in batch])  # [b, C, S]
        codes.append(model.codec.encode(wav).cpu())  # [b, K, T]
        if model.config.is_style:
            from .style import encode_excerpts

            got, starts = encode_excerpts(
                model.style, list(wav.mean(dim=1)), [s.valid for s in batch], lengths, generator
            )
            style_codes.append(got)
            style_starts.append(starts)
        del wav
        valid.extend(math.ceil(s.valid / hop) for s in batch)
        captions.extend(s.caption for s in batch)
        if model.config.is_melody:
            from ..chroma import extract_chroma, fit_chroma

            # the chroma of the real audio only: a padded tail would read as silence (bin 0)
            per_item = [
                fit_chroma(
                    extract_chroma(s.wav[None, :, : s.valid], model.config.sample_rate, model.config.chroma),
                    model.config.lm.chroma_length,
                )
                for s in batch
            ]
            chroma.append(torch.cat(per_item))
        del batch  # the generator's next batch is read only now: one batch of audio held at a time
    if not codes:
        raise ValueError("encode_batches: no segments to encode")
    starts = torch.cat(style_starts) if style_starts else None
    return EncodedSet(
        codes=torch.cat(codes),
        valid=torch.tensor(valid, dtype=torch.long),
        captions=captions,
        chroma=torch.cat(chroma) if chroma else None,
        style_codes=torch.cat(style_codes) if style_codes else None,
        style_starts=starts,
        style_lengths=None
        if starts is None
        else torch.tensor(lengths, dtype=torch.long).expand_as(starts).clone(),
    )
