"""Opt-in int8 decoding on CPU: the language model's Linear layers with int8 weights (dynamic quantization).

A decode step reads every weight once, so on CPU its time is the weights' size over the memory bandwidth;
int8 weights are a quarter of fp32. Activations are quantized on the fly per step, which changes the logits
slightly: this path is never on by default, and `python -m musicgen bench` reports its speed while the
tests bound its logit error against fp32.

The cross-attention's fused in_proj is split first: decoding uses its query rows every step and its
key/value rows once per request, and a quantized Linear does not expose its weight for slicing. The
key/value part stays in float (it runs once per request on a few text tokens).

torch.ao.quantization is what torch 2.9 ships for this; torchao is its maintained successor, to move to
when the project moves past torch 2.9.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .lm import LanguageModel


def quantize_int8(lm: LanguageModel) -> LanguageModel:
    """A copy-free, in-place conversion of `lm` (fp32, CPU) for int8 decoding; returns it.

    Training and the static step are not supported on the result (they need float weights).
    """
    if lm.embed.weight.device.type != "cpu" or lm.embed.weight.dtype != torch.float32:
        raise ValueError("int8 decoding is for fp32 models on the CPU")
    D = lm.cfg.dim
    quantized_names = set()
    for i, layer in enumerate(lm.layers):
        if lm.cfg.conditioning == "cross":
            weight = layer.cross_attn.in_proj.weight.detach()
            layer.cross_attn.q_proj = _linear(weight[:D])
            layer.cross_attn.kv_proj = _linear(weight[D:])
            del layer.cross_attn.in_proj
            quantized_names |= {f"layers.{i}.cross_attn.q_proj", f"layers.{i}.cross_attn.out_proj"}
        quantized_names |= {
            f"layers.{i}.{m}" for m in ("self_attn.in_proj", "self_attn.out_proj", "ff1", "ff2")
        }
    quantized_names.add("heads")
    with warnings.catch_warnings():  # torch.ao.quantization announces its deprecation on every call
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(lm, quantized_names, dtype=torch.qint8, inplace=True)
    return lm


def _linear(weight: torch.Tensor) -> nn.Linear:
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=False)
    linear.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    return linear


@torch.inference_mode()
def decode_logits(model, prompts: list[str], codes: torch.Tensor) -> torch.Tensor:
    """The decode path's logits [B, K, T, card] for a fixed token sequence `codes` [B, K, T], fed one
    position at a time through the cache as generation feeds them (no guidance, no sampling)."""
    from .chroma import null_chroma
    from .generation import WindowConditions, decode_step, prefill

    lm = model.lm
    states, mask = model.text.encode(prompts)
    text = lm.project_text(states, mask)
    if lm.cfg.conditioning == "cross":
        cond, P = WindowConditions(guided=False, text=text, text_mask=mask), 0
    else:
        chroma = lm.project_chroma(null_chroma(len(prompts), lm.cfg.chroma_length).to(text.device))
        prefix = torch.cat([chroma, text], dim=1)
        cond, P = WindowConditions(guided=False, prefix=prefix), prefix.shape[1]
    cache = lm.new_cache(len(prompts), P + codes.shape[-1] + 1)
    out = [prefill(lm, cache, cond, codes[:, :, :1])]
    out += [decode_step(lm, cache, codes[:, :, j], P + j) for j in range(1, codes.shape[-1])]
    return torch.stack(out, dim=2).float()


def int8_quality(fp32_model, int8_model, prompts: list[str], steps: int, seed: int = 0) -> dict[str, float]:
    """How far int8 decoding is from fp32 on the same random token sequence of `steps` positions:
    `top1_agreement` (the share of positions and codebooks where both pick the same greedy token) and
    `logit_rel_error` (|int8 - fp32| / |fp32| over all logits)."""
    lm = fp32_model.lm
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, lm.cfg.card, (len(prompts), lm.cfg.num_codebooks, steps), generator=gen)
    a = decode_logits(fp32_model, prompts, codes)
    b = decode_logits(int8_model, prompts, codes)
    return {
        "top1_agreement": round(float((a.argmax(-1) == b.argmax(-1)).float().mean()), 4),
        "logit_rel_error": round(float((a - b).norm() / a.norm()), 4),
    }
