"""Opt-in int8 decoding on CPU: the language model's Linear layers with int8 weights (dynamic quantization).

A decode step reads every weight once, so on CPU its time is the weights' size over the memory bandwidth;
int8 weights are a quarter of fp32. Activations are quantized on the fly per step, which changes the logits
slightly: this path is never on by default, and `python -m musicgen bench` reports its speed while the
tests bound its logit error against fp32.

The cross-attention's fused in_proj is split first: decoding uses its query rows every step and its
key/value rows once per request, and a packed int8 weight cannot be sliced by rows. The key/value part
stays in float (it runs once per request on a few text tokens).

The int8 products are fbgemm's dynamic-quantization operators (`torch.ops.quantized.linear_dynamic`), called
by `Int8Linear` directly rather than through `torch.ao.quantization.quantize_dynamic`, which is deprecated
after torch 2.9, quantizes per tensor and took ~6 s on musicgen-small; one scale per output row is both
more accurate and faster to compute. torchao is the maintained successor of these operators, to move to
with the next torch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from .lm import LanguageModel


def quantize_int8(lm: LanguageModel) -> LanguageModel:
    """Converts `lm` (fp32, CPU) in place for int8 decoding; returns it.

    Training and the static step are not supported on the result (they need float weights).
    """
    if lm.embed.weight.device.type != "cpu" or lm.embed.weight.dtype != torch.float32:
        raise ValueError("int8 decoding is for fp32 models on the CPU")
    D = lm.cfg.dim
    targets = [(lm, "heads", lm.heads.weight)]  # (module, attribute, float weight) to make int8
    for layer in lm.layers:
        attention = [layer.self_attn] + ([layer.cross_attn] if lm.cfg.conditioning == "cross" else [])
        targets += [(a, "out_proj", a.out_proj.weight) for a in attention]
        targets += [(layer.self_attn, "in_proj", layer.self_attn.in_proj.weight)]
        targets += [(layer, name, getattr(layer, name).weight) for name in ("ff1", "ff2")]
        if lm.cfg.conditioning == "cross":
            weight = layer.cross_attn.in_proj.weight.detach()
            targets.append((layer.cross_attn, "q_proj", weight[:D]))
            layer.cross_attn.kv_proj = _float_linear(weight[D:])
            del layer.cross_attn.in_proj
    # fbgemm's packing is most of the cost and runs on one core: two at a time (the ops release the GIL)
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        converted = list(pool.map(Int8Linear, [weight for _, _, weight in targets]))
    for (module, name, _), linear in zip(targets, converted, strict=True):
        setattr(module, name, linear)
    return lm


class Int8Linear(nn.Module):
    """A bias-free Linear whose weight is int8 with one scale per output row (symmetric); fbgemm quantizes
    each call's activations on the fly and accumulates in int32 (dynamic quantization)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        weight = weight.detach().float()
        self.out_features, self.in_features = weight.shape
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)  # [out]
        values = torch.round(weight / scales[:, None]).to(torch.int8)  # |values| <= 127
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        q = torch._make_per_channel_quantized_tensor(values, scales.double(), zero_points, 0)
        self.packed = torch.ops.quantized.linear_prepack(q, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, which fbgemm needs to keep its pairwise int16 sums from saturating
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)

    def weight(self) -> torch.Tensor:
        """The weight as a quantized tensor [out, in] (`.dequantize()` gives floats)."""
        return torch.ops.quantized.linear_unpack(self.packed)[0]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per row"


def _float_linear(weight: torch.Tensor) -> nn.Linear:
    out_features, in_features = weight.shape
    with torch.device("meta"):  # no random initialisation of a weight replaced at once
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
    else:  # prepend models, without a melody or style: null chroma, or one zero style token
        B = len(prompts)
        if lm.cfg.conditioning == "style":
            zeros = text.new_zeros(B, 1)
            prefix = lm.prefix(text, style=text.new_zeros(B, 1, lm.cfg.style_dim), style_mask=zeros)
        else:
            prefix = lm.prefix(text, chroma=null_chroma(B, lm.cfg.chroma_length).to(text.device))
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
