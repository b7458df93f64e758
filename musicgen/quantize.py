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
