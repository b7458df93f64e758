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
    positions: torch.Tensor,
    norms: list[torch.Tensor],
    weights: list[torch.Tensor],
    packed: list[Packed],
    cross_weights: list[torch.Tensor],
    cross_packed: list[Packed],
    num_heads: int,
    eps: float,
    starts: list[int],
    pos: list[int],
    kvs: list[torch.Tensor],
    cross: list[str],
    cross_a: list[torch.Tensor],
    cross_b: list[torch.Tensor],
    cross_bias: list[torch.Tensor],
    fold_rows: list[torch.Tensor],
    fold_leading: list[bool],
) -> torch.Tensor:
    """Embeddings x [R, D] of one position per row -> logits [R, K * card] (the final norm and the heads
    included), for rows grouped in jobs that each have their own cache and position.

    Job j owns rows starts[j] .. starts[j + 1] - 1, sits at position pos[j] and keeps its keys/values in
    kvs[j] [L, 2, rows, H, T_max, hd] (this step writes its position there). Rows past starts[-1] are
    padding: they go through the products (so a lone row is never a matrix-vector product, whose sums run
    in another order) but attend to nothing. Attention runs job by job over exactly the job's own
    positions, so nothing of a job depends on the other rows but the products' summation order (see
    musicgen.batching for when that is the same bits).

    cross[j]: "none"; "plain" with cross_a[j]/cross_b[j] the keys/values [L, rows, H, S, hd] and
    cross_bias[j] [rows, 1, 1, S]; "folded" with cross_a[j]/cross_b[j] a CrossFold's scores
    [L, R', H*S, D] and values [L, R', D, H*S], cross_bias[j] its bias [R', 1, 1, S], fold_rows[j] its
    rows (within the job) and fold_leading[j] whether they are 0..R'-1. The arithmetic is
    `LanguageModel._layers` with `_cached_cross`'s functions, operation for operation, on 2-D activations.
    """
    R, D = x.shape[0], x.shape[1]
    H = num_heads
    hd = D // H
    L = kvs[0].shape[0]
    J = len(pos)
    used = starts[J]
    if J == 1 and used == R:
        x = x + positions[pos[0]].to(x.dtype)
    else:
        pieces = [positions[pos[j]].to(x.dtype).expand(starts[j + 1] - starts[j], D) for j in range(J)]
        if used < R:
            pieces.append(x.new_zeros(R - used, D))
        x = x + torch.cat(pieces)
    any_plain = "plain" in cross
    any_folded = "folded" in cross
    for i in range(L):
        n, w = 6 * i, 4 * i
        h = F.layer_norm(x, [D], norms[n], norms[n + 1], eps)
        qkv = _project(h, w, weights, packed).view(R, 3, H, 1, hd)
        outs: list[torch.Tensor] = []
        for j in range(J):
            s, e, p = starts[j], starts[j + 1], pos[j]
            layer_kv = kvs[j][i]  # [2, rows, H, T_max, hd]
            layer_kv.narrow(3, p, 1).copy_(qkv[s:e, 1:].transpose(0, 1))
            k, v = layer_kv[0].narrow(2, 0, p + 1), layer_kv[1].narrow(2, 0, p + 1)
            outs.append(F.scaled_dot_product_attention(qkv[s:e, 0], k, v))  # [rows, H, 1, hd]
        if used < R:
            outs.append(x.new_zeros(R - used, H, 1, hd))
        a = outs[0] if len(outs) == 1 else torch.cat(outs)
        x = _project_add(a.reshape(R, D), w + 1, x, weights, packed)
        if any_plain:
            h = F.layer_norm(x, [D], norms[n + 2], norms[n + 3], eps)
            q = _project(h, 2 * i, cross_weights, cross_packed).view(R, 1, H, hd).transpose(1, 2)
            outs = []
            for j in range(J):
                s, e = starts[j], starts[j + 1]
                if cross[j] == "plain":
                    qj = q[s:e]
                    outs.append(
                        F.scaled_dot_product_attention(
                            qj, cross_a[j][i], cross_b[j][i], attn_mask=cross_bias[j]
                        )
                    )
                else:  # no text, or folded below: nothing added here
                    outs.append(x.new_zeros(e - s, H, 1, hd))
            if used < R:
                outs.append(x.new_zeros(R - used, H, 1, hd))
            a = outs[0] if len(outs) == 1 else torch.cat(outs)
            a = a.transpose(1, 2).reshape(R, D)
            x = _project_add(a, 2 * i + 1, x, cross_weights, cross_packed)
        if any_folded:
            pieces = []
            for j in range(J):
                s, e = starts[j], starts[j + 1]
                xj = x if J == 1 and used == R else x[s:e]
                if cross[j] == "folded":
                    xj = _folded_cross(xj, i, D, H, eps, norms[n + 2], norms[n + 3], cross_a[j], cross_b[j],
                                       cross_bias[j], fold_rows[j], fold_leading[j])  # fmt: skip
                pieces.append(xj)
            if used < R:
                pieces.append(x[used:])
            x = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        h = F.layer_norm(x, [D], norms[n + 4], norms[n + 5], eps)
        x = _project_add(F.gelu(_project(h, w + 2, weights, packed)), w + 3, x, weights, packed)
    h = F.layer_norm(x, [D], norms[6 * L], norms[6 * L + 1], eps)
    return _project(h, 4 * L, weights, packed)


def _folded_cross(
    x: torch.Tensor,
    i: int,
    D: int,
    H: int,
    eps: float,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    scores_all: torch.Tensor,
    values_all: torch.Tensor,
    bias: torch.Tensor,
    fold_rows: torch.Tensor,
    fold_leading: bool,
) -> torch.Tensor:
    """One job's rows x [B, D] with layer i's folded cross-attention (a CrossFold) added."""
    B = x.shape[0]
    R = fold_rows.shape[0]
    rows = x[:R] if fold_leading else x.index_select(0, fold_rows)  # [R', D]
    h = F.layer_norm(rows, [D], norm_weight, norm_bias, eps)[:, None]  # [R', 1, D]
    S = bias.shape[-1]
    scores = torch.bmm(h, scores_all[i].transpose(1, 2)).view(R, 1, H, S)
    attn = torch.softmax(scores + bias, dim=-1).view(R, 1, H * S)
    added = torch.bmm(attn, values_all[i].transpose(1, 2))[:, 0]  # [R', D]
    if not fold_leading:
        return x.index_add(0, fold_rows, added)
    if R < B:
        return torch.cat([rows + added, x[R:]])
    return rows + added


@functools.cache
def scripted_decode_step():
    """`decode_step` compiled by TorchScript (once per process, on first use: ~0.05 s)."""
    return torch.jit.script(decode_step)
