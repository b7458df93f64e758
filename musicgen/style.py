"""MusicGen-Style's style conditioner: an audio excerpt -> a few quantized style tokens.

The path, as audiocraft's StyleConditioner runs it at inference (shapes for the released model, 3 s):

    excerpt [B, 96000] at 32 kHz
      -> julius resample to 24 kHz                    [B, 72000]
      -> MERT-v1-95M's last hidden state              [B, 224, 768]   (transformers' HubertModel)
      -> embed: Linear(768 -> 512)                    [B, 224, 512]
      -> 8 pre-norm non-causal layers, sin positions  [B, 224, 512]   (no biases, no final norm)
      -> BatchNorm with its stored statistics         [B, 224, 512]
      -> every 15th frame                             [B, 15, 512]
      -> residual quantization, first eval_q of 6     [B, 15, 512]

The language model's `style_proj` then takes the tokens to its width. audiocraft quantizes every frame and
then keeps every 15th; quantization works frame by frame, so keeping the frames first gives the same tokens
for a fifteenth of the distance computations.

MERT is mathematically transformers' HubertModel (post-norm, no CQT branch): it is built from its config and
weights here, never through `trust_remote_code`, and its pickled weights are read with torch's weights-only
unpickler. audiocraft feeds it raw audio (no feature-extractor normalisation); so does this module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import StyleConfig
from .errors import CheckpointError, InvalidInputError
from .lm import sinusoidal_table

MAX_EVAL_Q = 6  # the released model's codebooks; a checkpoint's own count bounds it too


class StyleLayer(nn.Module):
    """audiocraft's StreamingTransformerLayer as the style transformer uses it: pre-norm, no biases."""

    def __init__(self, cfg: StyleConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.in_proj = nn.Linear(d, 3 * d, bias=False)  # q, k, v rows stacked
        self.out_proj = nn.Linear(d, d, bias=False)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ff1 = nn.Linear(d, cfg.ffn_dim, bias=False)
        self.ff2 = nn.Linear(cfg.ffn_dim, d, bias=False)


class StyleEncoder(nn.Module):
    """Everything of the style conditioner between MERT and the language model's projection.

    Tensor names (what the checkpoint readers produce):

        embed.weight|bias                  [dim, feature_dim], [dim]
        layers.{i}.norm1.weight|bias       [dim]
        layers.{i}.in_proj.weight          [3 dim, dim]
        layers.{i}.out_proj.weight         [dim, dim]
        layers.{i}.norm2.weight|bias       [dim]
        layers.{i}.ff1.weight              [ffn_dim, dim]
        layers.{i}.ff2.weight              [dim, ffn_dim]
        running_mean, running_var          [dim]              BatchNorm statistics
        codebooks                          [num_quantizers, bins, dim]
    """

    def __init__(self, cfg: StyleConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.feature_dim, cfg.dim)
        self.layers = nn.ModuleList([StyleLayer(cfg) for _ in range(cfg.num_layers)])
        self.register_buffer("running_mean", torch.zeros(cfg.dim))
        self.register_buffer("running_var", torch.ones(cfg.dim))
        self.register_buffer("codebooks", torch.zeros(cfg.num_quantizers, cfg.bins, cfg.dim))

    def forward(self, features: torch.Tensor, eval_q: int) -> torch.Tensor:
        """MERT features [B, F, feature_dim] -> quantized style tokens [B, ceil(F / ds_factor), dim]."""
        x = self.encode(features)
        return self.quantize(x[:, :: self.cfg.ds_factor], eval_q)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """MERT features [B, F, feature_dim] -> normalised features [B, F, dim], before quantization."""
        cfg = self.cfg
        x = self.embed(features.to(self.embed.weight.dtype))
        B, T, D = x.shape
        H, hd = cfg.num_heads, cfg.head_dim
        x = x + sinusoidal_table(T, D).to(x)
        for layer in self.layers:
            q, k, v = layer.in_proj(layer.norm1(x)).view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v)  # non-causal: the whole excerpt is seen at once
            x = x + layer.out_proj(a.transpose(1, 2).reshape(B, T, D))
            x = x + layer.ff2(F.gelu(layer.ff1(layer.norm2(x))))
        if cfg.batch_norm:
            x = F.batch_norm(
                x.transpose(1, 2), self.running_mean, self.running_var, training=False, eps=cfg.batch_norm_eps
            ).transpose(1, 2)
        return x

    def quantize(self, x: torch.Tensor, n_q: int) -> torch.Tensor:
        """Residual quantization of x [B, T, dim] with the first n_q codebooks: the sum of the chosen
        entries (audiocraft's eval-mode RVQ)."""
        return self.dequantize(self.codes(x, n_q), n_q)

    def codes(self, x: torch.Tensor, n_q: int) -> torch.Tensor:
        """Indices [B, T, n_q] of the entries residual quantization picks for x [B, T, dim]: in each of the
        first n_q codebooks, the entry nearest the residual (Euclidean distance, ties to the first).
        Quantization is greedy, so the first n picks do not depend on n_q >= n (training stores all six)."""
        residual, picks = x, []
        for table in self.codebooks[:n_q]:  # [bins, dim]
            distance = (
                residual.pow(2).sum(-1, keepdim=True) - 2 * residual @ table.t() + table.pow(2).sum(-1)
            )  # [B, T, bins]
            index = distance.argmin(dim=-1)  # [B, T]
            residual = residual - F.embedding(index, table)
            picks.append(index)
        return torch.stack(picks, dim=-1)

    def dequantize(self, codes: torch.Tensor, n_q: int) -> torch.Tensor:
        """Indices [B, T, >= n_q] -> the sum [B, T, dim] of the first n_q codebooks' entries."""
        out = self.codebooks.new_zeros(*codes.shape[:2], self.codebooks.shape[-1])
        for q in range(n_q):
            out = out + F.embedding(codes[..., q].long(), self.codebooks[q])
        return out


class StyleConditioner:
    """MERT + `StyleEncoder`: excerpts in, style tokens out. Runs in float32 on any device (as audiocraft,
    whose style conditioner turns autocast off), once per request."""

    def __init__(self, cfg: StyleConfig, mert: nn.Module, encoder: StyleEncoder):
        self.cfg = cfg
        self.mert = mert.float().eval()
        self.encoder = encoder.float().eval()

    @property
    def device(self) -> torch.device:
        return self.encoder.embed.weight.device

    def to(self, device) -> StyleConditioner:
        self.mert.to(device)
        self.encoder.to(device)
        return self

    @torch.inference_mode()
    def __call__(self, excerpts: torch.Tensor, eval_q: int) -> torch.Tensor:
        """excerpts [B, S] mono at cfg.sample_rate -> style tokens [B, T, dim] float32."""
        return self.encoder(self.features(excerpts), eval_q)

    @torch.inference_mode()
    def features(self, excerpts: torch.Tensor) -> torch.Tensor:
        """excerpts [B, S] mono at cfg.sample_rate -> MERT's last hidden state [B, F, feature_dim]."""
        import julius

        wav = excerpts.to(self.device, torch.float32)
        if self.cfg.sample_rate != self.cfg.feature_rate:
            wav = julius.resample_frac(wav, self.cfg.sample_rate, self.cfg.feature_rate)
        return self.mert(wav).last_hidden_state


# ---- excerpts ------------------------------------------------------------------------------------------


def excerpt_samples(cfg: StyleConfig, seconds: float) -> int:
    """Samples of an excerpt of `seconds` at the conditioner's input rate (audiocraft's int())."""
    return int(seconds * cfg.sample_rate)


def token_count(cfg: StyleConfig, samples: int) -> int:
    """Style tokens an excerpt of `samples` gives: MERT's frames (conv stack, 400-sample field, hop 320
    at 24 kHz), one in every ds_factor kept."""
    at_feature_rate = samples * cfg.feature_rate // cfg.sample_rate
    frames = max(0, (at_feature_rate - 400) // 320 + 1)
    return math.ceil(frames / cfg.ds_factor)


def check_style_args(cfg: StyleConfig | None, excerpt_length: float, eval_q: int) -> None:
    """Refuses an excerpt length or codebook count the style model cannot take, naming the input."""
    if cfg is None:
        raise InvalidInputError(
            "a style excerpt was given, but this model has no style conditioner: use the `style` model "
            "(facebook/musicgen-style)."
        )
    low, high = cfg.min_excerpt_length, cfg.max_excerpt_length
    if not (isinstance(excerpt_length, (int, float)) and math.isfinite(excerpt_length)):
        raise InvalidInputError(f"style_excerpt_length must be a number of seconds, got {excerpt_length!r}.")
    if not low <= excerpt_length <= high:
        raise InvalidInputError(
            f"style_excerpt_length must be between {low} and {high} s (the lengths the model was trained "
            f"with), got {excerpt_length}."
        )
    top = min(MAX_EVAL_Q, cfg.num_quantizers)
    if isinstance(eval_q, bool) or not isinstance(eval_q, int) or not 1 <= eval_q <= top:
        raise InvalidInputError(f"style_eval_q must be a whole number from 1 to {top}, got {eval_q!r}.")


def excerpt_starts(lengths: list[int], excerpt: int, seed: int) -> list[int]:
    """A start for each clip's excerpt, drawn from the generation seed (same seed, same excerpts).

    audiocraft draws one start for the whole batch with Python's unseeded `random`; here each clip's
    start is uniform over the positions that keep the excerpt inside its own audio, drawn in clip order
    from a generator of its own, so the token sampling's random stream is left untouched.
    """
    generator = torch.Generator().manual_seed(seed)
    return [int(torch.randint(0, n - excerpt + 1, (1,), generator=generator)) for n in lengths]


# ---- MERT ----------------------------------------------------------------------------------------------


def hubert_config(raw: dict, where: str):
    """transformers' HubertConfig for a MERT (or HuBERT) config.json, refusing MERT options HuBERT's maths
    does not cover (the CQT branch, DeepNorm, attention relaxation)."""
    from transformers import HubertConfig

    unsupported = []
    if raw.get("feature_extractor_cqt"):
        unsupported.append("feature_extractor_cqt")
    if raw.get("deepnorm"):
        unsupported.append("deepnorm")
    relax = raw.get("attention_relax", -1.0)
    if isinstance(relax, (int, float)) and relax > 0:
        unsupported.append(f"attention_relax {relax}")
    if unsupported:
        raise CheckpointError(
            f"{where}: this MERT uses {', '.join(unsupported)}, which only MERT's own code runs; the style "
            "conditioner runs MERT-v1-95M-like models (HuBERT maths)."
        )
    known = set(HubertConfig().to_dict())
    kept = {
        k: v for k, v in raw.items() if k in known and k not in ("model_type", "architectures", "auto_map")
    }
    return HubertConfig(**kept)


def _mert_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MERT's tensor names as HubertModel has them: old files keep weight norm as weight_g / weight_v."""
    renames = {
        "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
        "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
    }
    out = {}
    for name, tensor in state.items():
        for prefix in ("mert_model.", "hubert."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        out[renames.get(name, name)] = tensor
    return out


def read_mert_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, tensors) of a MERT folder: config.json with model.safetensors, or pytorch_model.bin
    read by torch's weights-only unpickler (which builds tensors and plain containers, nothing else)."""
    folder = Path(folder)
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: no readable MERT config.json ({e}).") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{folder / 'config.json'}: expected a JSON object.")
    files = sorted(folder.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    if files:
        from safetensors.torch import load_file

        for path in files:
            try:
                state.update(load_file(str(path)))
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"{path}: cannot be read as safetensors ({e}).") from None
    else:
        path = folder / "pytorch_model.bin"
        if not path.is_file():
            raise CheckpointError(
                f"{folder}: holds no MERT weights (model.safetensors or pytorch_model.bin)."
            )
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # a foreign or damaged file, or one that needs code to unpickle
            raise CheckpointError(
                f"{path}: cannot be read as plain tensors ({type(e).__name__}: {e}); MERT's weights are never "
                "unpickled with code."
            ) from None
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise CheckpointError(f"{path}: is not a dict of tensor names to tensors.")
        state = loaded
    return raw, state


def build_mert(config: dict, state: dict[str, torch.Tensor], where: str) -> nn.Module:
    """A HubertModel from a MERT config dict and its tensors, checked whole (strict)."""
    from transformers import HubertModel
    from transformers.initialization import no_init_weights

    hubert = hubert_config(config, where)
    with no_init_weights():  # every tensor comes from the checkpoint: skip the random initialisation
        model = HubertModel(hubert)
    state = _mert_state(state)
    # masked_spec_embed is SpecAugment's training-time mask vector: absent from files trained without it
    if "masked_spec_embed" not in state and hasattr(model, "masked_spec_embed"):
        state["masked_spec_embed"] = model.masked_spec_embed.detach().zero_()
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: the MERT weights do not fit its config ({e}).") from None
    return model.float().eval()


__all__ = [
    "StyleConditioner",
    "StyleEncoder",
    "build_mert",
    "check_style_args",
    "excerpt_samples",
    "excerpt_starts",
    "hubert_config",
    "read_mert_folder",
    "token_count",
]
