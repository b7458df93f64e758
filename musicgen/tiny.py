"""Tiny random MusicGen checkpoints with the real architecture, for tests and offline checks.

They are built with transformers' own classes (`MusicgenForConditionalGeneration`,
`MusicgenMelodyForConditionalGeneration`), so they are the reference the engine is compared with, and
they need no download: the T5 tokenizer is a small one trained here on a few words.
"""

from __future__ import annotations

from pathlib import Path

import torch

KINDS = ("mono", "stereo", "melody", "stereo-melody")

_WORDS = (
    "lo-fi hip hop beat with warm piano and soft drums, 80s synth pop with punchy bass, ambient pads, "
    "epic orchestral strings and brass, acoustic guitar folk song, jazz trio with upright bass"
)


def make_tokenizer():
    """A small T5-style tokenizer (unigram, `</s>` appended, `<pad>` = 0) trained on a few phrases."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator([_WORDS] * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def make_tiny_model(kind: str = "mono", seed: int = 0):
    """A transformers MusicGen model of `kind` (see KINDS) with random weights, and its tokenizer."""
    from transformers import EncodecConfig, T5Config

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    tokenizer = make_tokenizer()
    text = T5Config(
        vocab_size=len(tokenizer), d_model=24, d_kv=8, d_ff=32, num_layers=2, num_heads=3, dropout_rate=0.0
    )
    audio = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        num_filters=4,
        hidden_size=16,
        codebook_dim=16,
        codebook_size=2048,
        upsampling_ratios=[8, 5, 4, 4],
        num_residual_layers=1,
        num_lstm_layers=1,
        target_bandwidths=[2.2],
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        use_causal_conv=False,
    )
    model = random_model(
        text,
        audio,
        dim=32,
        layers=2,
        heads=4,
        ffn_dim=64,
        stereo=kind.startswith("stereo"),
        melody=kind.endswith("melody"),
        seed=seed,
    )
    return model, tokenizer


def random_model(
    text, audio, *, dim: int, layers: int, heads: int, stereo: bool, melody: bool, seed: int, ffn_dim: int = 0
):
    """transformers' MusicGen (or MusicGen-Melody) with the given sizes and random weights.

    Weights are drawn larger than transformers' initialisation (N(0, 1/fan_in)) so that logits are far from
    uniform and greedy decoding is not decided by rounding; EnCodec's codebooks, zero by default, are made
    random so that the audio depends on the codes.
    """
    from transformers import (
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForConditionalGeneration,
    )

    dec_args = dict(
        vocab_size=2048,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        ffn_dim=ffn_dim or 4 * dim,  # the published models use 4 x dim
        num_codebooks=8 if stereo else 4,
        audio_channels=2 if stereo else 1,
        pad_token_id=2048,
        bos_token_id=2048,
    )
    torch.manual_seed(seed)
    if melody:
        config = MusicgenMelodyConfig(
            text_encoder=text.to_dict(),
            audio_encoder=audio.to_dict(),
            decoder=MusicgenMelodyDecoderConfig(**dec_args).to_dict(),
            num_chroma=12,
            chroma_length=235,
        )
        model = MusicgenMelodyForConditionalGeneration(config)
    else:
        config = MusicgenConfig(
            text_encoder=text.to_dict(),
            audio_encoder=audio.to_dict(),
            decoder=MusicgenDecoderConfig(**dec_args).to_dict(),
        )
        model = MusicgenForConditionalGeneration(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (name.startswith("decoder.") or "enc_to_dec_proj" in name) and "layer_norm" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p.shape[-1] ** 0.5))
        for name, buffer in model.audio_encoder.named_buffers():
            if name.endswith("codebook.embed"):
                buffer.copy_(torch.randn(buffer.shape, generator=gen))
    model.generation_config.decoder_start_token_id = 2048
    model.generation_config.pad_token_id = 2048
    return model.eval()


def save_tiny_model(folder: Path, kind: str = "mono", seed: int = 0) -> Path:
    """Writes a tiny random checkpoint in transformers' layout (model + tokenizer) to `folder`."""
    model, tokenizer = make_tiny_model(kind, seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
