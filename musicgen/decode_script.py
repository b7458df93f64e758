"""The decode loop's step (one position through every layer) as one TorchScript function.

Why TorchScript: on CPU a step of musicgen-small streams ~1.3 GB of weights in ~65 ms and spends the rest
on ~600 small operations between the products. From Python, each one also runs the interpreter, whose
state the weight stream has just evicted from the caches; from TorchScript's interpreter the same
operations (same kernels, bit-equal logits) took ~10 % less of the whole step (docs/PERFORMANCE.md).
A hand-written C++ extension measured no faster than this and would need a compiler in the container;
`torch.compile` of a layer compiled for 45 s and was no faster.

Everything a step reads is gathered once per window into a plan of flat lists (`lm._DecodePlan`), because
a script cannot call modules: layer i's projections (fused q/k/v, attention output, ff1, ff2) are
`weights[4i .. 4i + 3]` (the heads at 4L), its cross-attention's query and output projections
`cross_weights[2i]` and `cross_weights[2i + 1]` (read only by plain cross-attention), and
`norms[6i + 2n]`, `norms[6i + 2n + 1]` the (weight, bias) of its norm n = 0 (self-attention),
1 (cross-attention), 2 (feed-forward); out_norm at 6L. A projection is a float weight transposed
[in, out] (one mm per call), or, when the `packed` lists are not empty, an int8 `Int8Linear`'s packed
weight at the same index (musicgen.quantize).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

Packed = torch.classes.quantized.LinearPackedParamsBase  # what Int8Linear keeps (fbgemm's packed int8)


def _project(x: torch.Tensor, j: int, weights: list[torch.Tensor], packed: list[Packed]) -> torch.Tensor:
    """x [B, in] -> [B, out] through projection j."""
    if len(packed) == 0:
        return torch.mm(x, weights[j])
    # reduce_range as Int8Linear.forward: 7-bit activations keep fbgemm's int16 pair sums from saturating
    return torch.ops.quantized.linear_dynamic(x, packed[j], True)


def _project_add(
    x: torch.Tensor, j: int, residual: torch.Tensor, weights: list[torch.Tensor], packed: list[Packed]
) -> torch.Tensor:
    """residual + projection j of x; for a float weight the addition runs inside the product (addmm:
    with MKL the same bits as the product then the addition)."""
    if len(packed) == 0:
        return torch.addmm(residual, x, weights[j])
    return residual + torch.ops.quantized.linear_dynamic(x, packed[j], True)


def decode_step(
    x: torch.Tensor,
    pos: int,
    positions: torch.Tensor,
    norms: list[torch.Tensor],
    weights: list[torch.Tensor],
    packed: list[Packed],
    cross_weights: list[torch.Tensor],
    cross_packed: list[Packed],
    kv: torch.Tensor,
    num_heads: int,
    eps: float,
    cross: str,
    cross_a: torch.Tensor,
    cross_b: torch.Tensor,
    cross_bias: torch.Tensor,
    fold_rows: torch.Tensor,
    fold_leading: bool,
) -> torch.Tensor:
    """Embeddings x [B, D] at position `pos` -> logits [B, K * card] (the final norm and the heads
    included). Writes the position's keys/values into kv [L, 2, B, H, T_max, hd].

    cross: "none"; "plain" with cross_a/cross_b the keys/values [L, B, H, S, hd] and cross_bias
    [B, 1, 1, S]; "folded" with cross_a/cross_b a CrossFold's scores [L, R', H*S, D] and values
    [L, R', D, H*S], cross_bias its bias [R', 1, 1, S], fold_rows its rows and fold_leading whether they
    are 0..R'-1. The arithmetic is `LanguageModel._layers` with `_cached_cross`'s functions, operation for
    operation, on 2-D activations.
    """
    B, D = x.shape[0], x.shape[1]
    H = num_heads
    hd = D // H
    L = kv.shape[0]
    x = x + positions[pos].to(x.dtype)
    for i in range(L):
        n, w = 6 * i, 4 * i
        h = F.layer_norm(x, [D], norms[n], norms[n + 1], eps)
        qkv = _project(h, w, weights, packed).view(B, 3, H, 1, hd)
        layer_kv = kv[i]  # [2, B, H, T_max, hd]
        layer_kv.narrow(3, pos, 1).copy_(qkv[:, 1:].transpose(0, 1))
        k, v = layer_kv[0].narrow(2, 0, pos + 1), layer_kv[1].narrow(2, 0, pos + 1)
        a = F.scaled_dot_product_attention(qkv[:, 0], k, v)  # [B, H, 1, hd]
        x = _project_add(a.reshape(B, D), w + 1, x, weights, packed)
        if cross == "plain":
            h = F.layer_norm(x, [D], norms[n + 2], norms[n + 3], eps)
            q = _project(h, 2 * i, cross_weights, cross_packed).view(B, 1, H, hd).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, cross_a[i], cross_b[i], attn_mask=cross_bias)
            a = a.transpose(1, 2).reshape(B, D)
            x = _project_add(a, 2 * i + 1, x, cross_weights, cross_packed)
        elif cross == "folded":
            R = fold_rows.shape[0]
            rows = x[:R] if fold_leading else x.index_select(0, fold_rows)  # [R', D]
            h = F.layer_norm(rows, [D], norms[n + 2], norms[n + 3], eps)[:, None]  # [R', 1, D]
            S = cross_bias.shape[-1]
            scores = torch.bmm(h, cross_a[i].transpose(1, 2)).view(R, 1, H, S)
            attn = torch.softmax(scores + cross_bias, dim=-1).view(R, 1, H * S)
            added = torch.bmm(attn, cross_b[i].transpose(1, 2))[:, 0]  # [R', D]
            if not fold_leading:
                x = x.index_add(0, fold_rows, added)
            elif R < B:
                x = torch.cat([rows + added, x[R:]])
            else:
                x = rows + added
        h = F.layer_norm(x, [D], norms[n + 4], norms[n + 5], eps)
        x = _project_add(F.gelu(_project(h, w + 2, weights, packed)), w + 3, x, weights, packed)
    h = F.layer_norm(x, [D], norms[6 * L], norms[6 * L + 1], eps)
    return _project(h, 4 * L, weights, packed)


@functools.cache
def scripted_decode_step():
    """`decode_step` compiled by TorchScript (once per process, on first use: ~0.05 s)."""
    return torch.jit.script(decode_step)
