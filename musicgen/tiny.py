"""Tiny random MusicGen checkpoints with the real architecture, for tests and offline checks.

They are built with transformers' own classes (`MusicgenForConditionalGeneration`,
`MusicgenMelodyForConditionalGeneration`), so they are the reference the engine is compared with, and
they need no download: the T5 tokenizer is a small one trained here on a few words.
"""

from __future__ import annotations

import json
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
    # The trainer gives the same pieces in every process, but in an order and with last digits of their
    # scores that vary from one process to the next (hash order): rebuilt in a fixed order with rounded
    # scores, the same call writes the same tokenizer.json everywhere, so a seed rebuilds a checkpoint.
    pieces = json.loads(tok.to_str())["model"]["vocab"]
    specials, learned = (
        pieces[:3],
        sorted(((p, round(s, 4)) for p, s in pieces[3:]), key=lambda x: (-x[1], x[0])),
    )
    tok.model = models.Unigram(
        [(p, float(s)) for p, s in [*specials, *learned]], unk_id=2, byte_fallback=False
    )
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


def tiny_mert_config() -> dict:
    """A tiny MERT config (transformers' HubertConfig as a dict): MERT-v1-95M's conv stack, so 75 frames per
    second at 24 kHz, and its 768-wide output (audiocraft's style conditioner takes exactly 768), with one
    small layer behind it."""
    from transformers import HubertConfig

    from .bench import MERT_95M

    shrunk = dict(num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, conv_dim=(16,) * 7)
    shrunk.update(num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    return HubertConfig(**{**MERT_95M, **shrunk}).to_dict()


def make_tiny_style_checkpoint(seed: int = 0):
    """A `Checkpoint` of a tiny random MusicGen-Style model: the tiny mono model's T5 and EnCodec, a 2-layer
    LM without cross-attention, audiocraft's smallest style transformer ('xsmall': 256 wide, 4 layers), six
    64-entry codebooks, and a tiny MERT bundled (HubertModel's names)."""
    import tempfile

    from transformers import HubertConfig, HubertModel

    from .checkpoints.transformers_layout import read_transformers
    from .config import LMConfig, ModelConfig, StyleConfig
    from .lm import LanguageModel
    from .style import StyleEncoder

    with tempfile.TemporaryDirectory() as tmp:
        base = read_transformers(save_tiny_model(Path(tmp), "mono", seed))
        tokenizer_files = {
            p.name: p.read_bytes() for p in Path(tmp).iterdir() if "token" in p.name or "spiece" in p.name
        }
    mert_cfg = tiny_mert_config()
    style = StyleConfig(dim=256, num_heads=8, num_layers=4, ffn_dim=1024, bins=64, mert=mert_cfg)
    lm_cfg = LMConfig(
        dim=32, num_heads=4, num_layers=2, ffn_dim=128, num_codebooks=4, text_dim=base.config.lm.text_dim,
        conditioning="style", style_dim=style.dim,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed + 1)

    def randomized(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        state = {}
        for name, t in module.state_dict().items():
            if any(s in name for s in skip):
                state[name] = t.clone()
            elif name.endswith("bias") or t.dim() == 1:
                state[name] = (
                    1.0 + 0.1 * torch.randn(t.shape, generator=gen)
                    if "norm" in name
                    else 0.1 * torch.randn(t.shape, generator=gen)
                )
            else:
                state[name] = torch.randn(t.shape, generator=gen) / t.shape[-1] ** 0.5
        return state

    lm_state = randomized(LanguageModel(lm_cfg))
    style_state = randomized(StyleEncoder(style), skip=("running_", "codebooks"))
    style_state["running_mean"] = 0.1 * torch.randn(style.dim, generator=gen)
    style_state["running_var"] = 0.5 + torch.rand(style.dim, generator=gen)
    style_state["codebooks"] = torch.randn(style.num_quantizers, style.bins, style.dim, generator=gen)
    torch.manual_seed(seed)
    mert = HubertModel(HubertConfig(**{k: v for k, v in mert_cfg.items() if k != "model_type"})).eval()
    config = ModelConfig(
        lm=lm_cfg,
        text_encoder=base.config.text_encoder,
        codec=base.config.codec,
        style=style,
        sample_rate=base.config.sample_rate,
        frame_rate=base.config.frame_rate,
    )
    return _TinyStyle(config, lm_state, base, style_state, mert.state_dict(), tokenizer_files)


class _TinyStyle:
    """What `make_tiny_style_checkpoint` builds, held until written (the tokenizer files in memory)."""

    def __init__(self, config, lm_state, base, style_state, mert_state, tokenizer_files):
        self.config, self.lm_state, self.base = config, lm_state, base
        self.style_state, self.mert_state, self.tokenizer_files = style_state, mert_state, tokenizer_files

    def checkpoint(self, tokenizer_dir: Path):
        from .checkpoints import Checkpoint

        return Checkpoint(
            config=self.config,
            lm_state=self.lm_state,
            text_encoder_state=self.base.text_encoder_state,
            codec_state=self.base.codec_state,
            tokenizer_dir=tokenizer_dir,
            style_state=self.style_state,
            mert_state=self.mert_state,
            source="tiny style model",
        )


def save_tiny_style_model(folder: Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Writes a tiny random MusicGen-Style checkpoint in audiocraft's layout (state_dict.bin +
    compression_state_dict.bin, with text_encoder/ and mert/ bundled) to `folder`. dtype float16 writes the
    LM and style tensors as the release does."""
    import tempfile

    from .checkpoints.audiocraft_layout import write_audiocraft

    tiny = make_tiny_style_checkpoint(seed)
    if dtype != torch.float32:
        tiny.lm_state = {k: v.to(dtype) for k, v in tiny.lm_state.items()}
        tiny.style_state = {k: v.to(dtype) for k, v in tiny.style_state.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in tiny.tokenizer_files.items():
            (Path(tmp) / name).write_bytes(data)
        write_audiocraft(tiny.checkpoint(Path(tmp)), Path(folder))
    return Path(folder)
