"""The MusicGen language model: a pre-norm transformer over EnCodec codes, with a static key/value cache.

This module imports only torch. Tensor names (the state dict every checkpoint reader produces):

    embed.weight                        [K*(card+1), D]  codebook k's table: rows k*(card+1) .. (k+1)*(card+1)
    layers.{i}.norm1.weight|bias        [D]
    layers.{i}.self_attn.in_proj.weight [3D, D]          q, k, v rows stacked
    layers.{i}.self_attn.out_proj.weight [D, D]
    layers.{i}.norm_cross.weight|bias   [D]              cross-attention models only
    layers.{i}.cross_attn.in_proj.weight [3D, D]         cross-attention models only
    layers.{i}.cross_attn.out_proj.weight [D, D]         cross-attention models only
    layers.{i}.norm2.weight|bias        [D]
    layers.{i}.ff1.weight               [F, D]
    layers.{i}.ff2.weight               [D, F]
    out_norm.weight|bias                [D]
    heads.weight                        [K*card, D]      codebook k's head: rows k*card .. (k+1)*card
    text_proj.weight|bias               [D, text_dim], [D]
    chroma_proj.weight|bias             [D, 12], [D]     melody models only
    style_proj.weight|bias              [D, style_dim]   MusicGen-Style only (the style conditioner's
                                                         output projection; the rest is musicgen.style)

All codebooks are embedded and predicted with one op each (one fused table, one fused head), and the
query/key/value projections are one matrix, because on CPU the step is dominated by per-op overhead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .config import LMConfig
from .decode_script import scripted_decode_step


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """Positions table [P, D]: cos in the first half, sin in the second (MusicGen's convention)."""
    half = dim // 2
    inv_freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def cross_bias(text_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive cross-attention mask [B, 1, 1, S] from a text mask [B, S]: 0 for a token, very negative
    for padding.

    Finite, not -inf: a fully masked row (the unconditional half of CFG) then averages zero values and
    yields exactly zero, as the reference implementations do, instead of NaN.
    """
    return ((1.0 - text_mask.to(dtype)) * torch.finfo(dtype).min)[:, None, None, :]


def stack_layers(per_layer: Iterable[tuple[torch.Tensor, ...]], num_layers: int) -> tuple[torch.Tensor, ...]:
    """What torch.stack of every layer's tensors gives ([L, ...] each), filled as the layers come: a list
    then a stack would hold every layer's tensors twice at the peak (the CrossFold of a long prompt on
    small: 117 MB)."""
    stacked: tuple[torch.Tensor, ...] = ()
    for i, tensors in enumerate(per_layer):
        if i == 0:
            stacked = tuple(t.new_empty((num_layers, *t.shape)) for t in tensors)
        for whole, t in zip(stacked, tensors, strict=True):
            whole[i] = t
    return stacked


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)


class Layer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        eps = cfg.layer_norm_eps
        self.norm1 = nn.LayerNorm(cfg.dim, eps=eps)
        self.self_attn = Attention(cfg.dim, cfg.num_heads)
        if cfg.conditioning == "cross":
            self.norm_cross = nn.LayerNorm(cfg.dim, eps=eps)
            self.cross_attn = Attention(cfg.dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=eps)
        self.ff1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.ff2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)


class KVCache:
    """Keys and values of every layer, allocated once for a whole window.

    k, v: [L, B, H, T_max, hd], the two halves of kv: [L, 2, B, H, T_max, hd] (one copy writes both in a
    decode step). Cross-attention keys/values are computed once per request and kept in
    cross_k, cross_v: [L, B, H, S, hd], with cross_bias [B, 1, 1, S] (0 for a text token, a large negative
    number for padding, so padded tokens get no weight).
    """

    def __init__(self, cfg: LMConfig, batch: int, max_len: int, device, dtype):
        shape = (cfg.num_layers, 2, batch, cfg.num_heads, max_len, cfg.head_dim)
        self.kv = torch.zeros(shape, device=device, dtype=dtype)
        self.k, self.v = self.kv[:, 0], self.kv[:, 1]
        self.max_len = max_len
        self.cross_k: torch.Tensor | None = None
        self.cross_v: torch.Tensor | None = None
        self.cross_bias: torch.Tensor | None = None
        self.cross_fold: CrossFold | None = None  # replaces cross_k/v when it reads fewer bytes
        self.plan = None  # the scripted step's _DecodePlan, built at its first step (False: cannot script)


class CrossFold:
    """Cross-attention with its query and output projections folded into the cached text, per request.

    Per head h, softmax(x Wq_h^T K_h^T) V_h Wo_h^T only ever multiplies x by Wq_h^T K_h^T [D, S] and the
    softmax weights by V_h Wo_h^T [S, D]. Precomputing both for the R' rows that have text replaces reading
    Wq and Wo (2 D^2 weights) at every step by reading 2 R' H S D values, fewer whenever R' S < head_dim:
    one prompt under classifier-free guidance with fewer than 64 text tokens saves ~9 % of a step's bytes.
    Rows without any text token (the unconditional half of CFG, empty prompts) get exactly zero from
    cross-attention (their values are zero and the projections have no bias), so they are left out.

    scores: [L, R', H*S, D] (scaled); values: [L, R', D, H*S]; bias: [R', 1, 1, S]; rows: [R'] indices.
    Both matrices are stored as (out, in) like a Linear weight, the layout a batch-1 product reads fastest.
    `leading`: the rows are 0..R'-1 (CFG's conditional half comes first), so a slice reaches them.
    """

    def __init__(self, scores: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor):
        self.scores, self.values, self.bias, self.rows = scores, values, bias, rows
        self.leading = bool(torch.equal(rows.cpu(), torch.arange(len(rows))))


class LanguageModel(nn.Module):
    """MusicGen's transformer. Text models cross-attend to the text; melody models read it as a prefix."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        K, D = cfg.num_codebooks, cfg.dim
        self.embed = nn.Embedding(K * (cfg.card + 1), D)
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_layers)])
        self.out_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.heads = nn.Linear(D, K * cfg.card, bias=False)
        self.text_proj = nn.Linear(cfg.text_dim, D)
        self.fold_cross: bool | None = None  # see prepare_cross
        if cfg.conditioning == "prepend":
            self.chroma_proj = nn.Linear(cfg.num_chroma, D)
        if cfg.conditioning == "style":
            self.style_proj = nn.Linear(cfg.style_dim, D)
        self.init_buffers()

    def init_buffers(self) -> None:
        """(Re)builds the tables that are not learned (needed again after building on the meta device)."""
        cfg = self.cfg
        device = self.heads.weight.device if self.heads.weight.device.type != "meta" else None
        self.register_buffer(
            "positions", sinusoidal_table(cfg.max_positions, cfg.dim).to(device), persistent=False
        )
        # offsets that move codebook k's tokens into its slice of the fused embedding table
        offsets = torch.arange(cfg.num_codebooks, device=device) * (cfg.card + 1)
        self.register_buffer("codebook_offsets", offsets, persistent=False)
        self.register_buffer(
            "key_positions", torch.arange(cfg.max_positions, device=device), persistent=False
        )

    # ---- conditioning -------------------------------------------------------------------------
    def project_text(self, text_states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """T5 states [B, S, text_dim] and mask [B, S] -> projected states [B, S, D], zero at padding."""
        projected = self.text_proj(text_states.to(self.text_proj.weight.dtype))
        return projected * text_mask[..., None].to(projected.dtype)

    def project_chroma(self, chroma: torch.Tensor) -> torch.Tensor:
        """One-hot chroma [B, T, 12] -> [B, T, D] (melody models)."""
        return self.chroma_proj(chroma.to(self.chroma_proj.weight.dtype))

    def project_style(self, style: torch.Tensor, style_mask: torch.Tensor) -> torch.Tensor:
        """Quantized style tokens [B, T, style_dim] and mask [B, T] -> [B, T, D], zero where masked (a null
        style is zero vectors that still take their positions, as audiocraft lays them out)."""
        projected = self.style_proj(style.to(self.style_proj.weight.dtype))
        return projected * style_mask[..., None].to(projected.dtype)

    def prefix(
        self,
        text: torch.Tensor,
        chroma: torch.Tensor | None = None,
        style: torch.Tensor | None = None,
        style_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The conditioning prefix of prepend models, [B, P, D]: [chroma, text] (melody) or [style, text]
        (style). text: projected [B, S, D]; chroma [B, L, 12]; style [B, T, style_dim] with mask [B, T]."""
        if self.cfg.conditioning == "prepend":
            return torch.cat([self.project_chroma(chroma), text], dim=1)
        return torch.cat([self.project_style(style, style_mask), text], dim=1)

    def prepare_cross(self, cache: KVCache, text: torch.Tensor, text_mask: torch.Tensor) -> None:
        """Computes every layer's cross-attention keys/values (or their CrossFold) once per request.

        text: [B, S, D] projected states; text_mask: [B, S] (1 = token, 0 = padding). `self.fold_cross`
        chooses: CrossFold (True), plain keys/values (False), or whichever reads fewer bytes per step (None).
        """
        rows = text_mask.any(dim=1).nonzero().flatten()  # rows with text: the only ones cross-attention moves
        fold = self.fold_cross
        if fold is None:
            fold = len(rows) * text.shape[1] < self.cfg.head_dim
        if fold:
            cache.cross_fold = self._fold_cross(text[rows], text_mask[rows], rows)
            return
        per_layer = (self._cross_kv(layer, text, weight_only=True) for layer in self.layers)  # [B, H, S, hd]
        cache.cross_k, cache.cross_v = stack_layers(per_layer, len(self.layers))
        cache.cross_bias = cross_bias(text_mask, text.dtype)

    def _fold_cross(self, text: torch.Tensor, text_mask: torch.Tensor, rows: torch.Tensor) -> CrossFold:
        """text [R', S, D] and text_mask [R', S] of the rows with text -> their CrossFold."""
        R, S, D = text.shape
        H, hd = self.cfg.num_heads, self.cfg.head_dim

        def fold(layer: Layer) -> tuple[torch.Tensor, torch.Tensor]:
            k, v = self._cross_kv(layer, text, weight_only=True)  # [R', H, S, hd]
            attn = layer.cross_attn
            w_q = _float_weight(attn.q_proj) if hasattr(attn, "q_proj") else attn.in_proj.weight[:D]
            w_q, w_o = w_q.view(H, hd, D), _float_weight(attn.out_proj).view(D, H, hd)
            scores = torch.einsum("rhse,hed->rhsd", k, w_q).reshape(R, H * S, D) / math.sqrt(hd)
            return scores, torch.einsum("dhe,rhse->rdhs", w_o, v).reshape(R, D, H * S)

        scores, values = stack_layers(map(fold, self.layers), len(self.layers))
        bias = cross_bias(text_mask, text.dtype)  # [R', 1, 1, S]
        return CrossFold(scores, values, bias, rows)

    def _cross_kv(self, layer: Layer, text: torch.Tensor, weight_only: bool):
        """Cross-attention keys and values [B, H, S, hd] of one layer.

        Decoding reads only the k/v rows of the fused projection; training calls the module whole so that
        adapters wrapped around it (LoRA) take part, and drops the query part.
        """
        B, S, D = text.shape
        H, hd = self.cfg.num_heads, self.cfg.head_dim
        if hasattr(layer.cross_attn, "kv_proj"):  # split for int8 decoding (musicgen.quantize)
            kv = layer.cross_attn.kv_proj(text)
        elif weight_only:
            kv = F.linear(text, layer.cross_attn.in_proj.weight[D:])  # [B, S, 2D]
        else:
            kv = layer.cross_attn.in_proj(text)[..., D:]
        k, v = kv.reshape(B, S, 2, H, hd).permute(2, 0, 3, 1, 4)
        return k, v

    # ---- the transformer ------------------------------------------------------------------------
    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] (special token = card allowed) -> summed embeddings [B, T, D]."""
        ids = codes + self.codebook_offsets[None, :, None]
        return F.embedding(ids, self.embed.weight).sum(dim=1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and heads: hidden [B, ..., D] -> logits [B, ..., K, card]."""
        out = self.heads(self.out_norm(hidden))
        return out.view(*hidden.shape[:-1], self.cfg.num_codebooks, self.cfg.card)

    def forward_embeds(self, x: torch.Tensor, cache: KVCache, start: int) -> torch.Tensor:
        """Runs hidden states x [B, T, D] at positions start..start+T-1, filling the cache there.

        The eager path: attention reads only the filled part of the cache. Returns the logits of the last
        position: [B, K, card].
        """
        T = x.shape[1]
        if T == 1 and (logits := self._decode_one(x[:, 0], cache, start)) is not None:
            return logits
        end = start + T
        x = x + self.positions[start:end].to(x.dtype)
        # causal mask over the filled prefix: query i (absolute start+i) sees keys 0..start+i
        causal = None
        if T > 1:
            q_pos = torch.arange(start, end, device=x.device)[:, None]
            causal = torch.arange(end, device=x.device)[None, :] <= q_pos  # [T, end]

        def self_attention(i, q, k, v):
            cache.k[i, :, :, start:end] = k
            cache.v[i, :, :, start:end] = v
            k_all, v_all = cache.k[i, :, :, :end], cache.v[i, :, :, :end]
            return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=causal)

        return self.logits(self._layers(x, self_attention, self._cached_cross(cache))[:, -1])

    def _decode_one(self, x: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor | None:
        """`forward_embeds` for one position, x [B, D] -> logits [B, K, card]: the decode loop's path, run by
        `musicgen.decode_script` (the same arithmetic as `_layers`, bit-equal logits on CPU, measured).

        None when a projection is neither a plain Linear nor int8 (an adapter wrapped around it, say): the
        caller then runs the general path, which calls the modules.
        """
        if cache.plan is None:
            cache.plan = _DecodePlan.build(self) or False
        if cache.plan is False:
            return None
        return self._run_script(cache.plan, x, [cache], [pos], [x.shape[0]])

    def decode_plan(self) -> _DecodePlan | None:
        """The weights the scripted step reads, gathered once (None when a projection is wrapped)."""
        return _DecodePlan.build(self)

    def decode_jobs(
        self, plan: _DecodePlan, x: torch.Tensor, caches: list[KVCache], positions: list[int]
    ) -> torch.Tensor:
        """One decode position for several jobs in one forward (continuous batching).

        x: [R, D] embeddings, job j's rows contiguous and as many as its cache holds; caches[j] its own
        cache, positions[j] its position. Attention runs job by job, so a job's logits are the bits it gets
        alone wherever the products give a row the same bits at both row counts (on CPU: from 2 rows to a
        shape-dependent threshold, 16 for the published models; a lone row is padded with one that
        attends to nothing). musicgen.batching's docstring has the measurements.
        Returns logits [R, K, card].
        """
        counts = [c.kv.shape[2] for c in caches]
        R = x.shape[0]
        if R == 1:  # never a matrix-vector product: its sums run in another order than a product's
            x = torch.cat([x, torch.zeros_like(x)])
        return self._run_script(plan, x, caches, positions, counts)[:R]

    def _run_script(self, plan, x: torch.Tensor, caches: list[KVCache], positions: list[int], counts):
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)
        cross = [_cross_of(c) for c in caches]
        # unoptimized execution (a thread-local switch): no profiling runs and no fusion of operations,
        # so the script runs exactly the kernels eager code runs, on CPU and CUDA alike, and no slower here
        with torch.jit.optimized_execution(False):
            logits = scripted_decode_step()(
                x, self.positions, plan.norms, plan.weights, plan.packed, plan.cross_weights,
                plan.cross_packed, self.cfg.num_heads, self.cfg.layer_norm_eps, starts, positions,
                [c.kv for c in caches], [k[0] for k in cross], [k[1] for k in cross], [k[2] for k in cross],
                [k[3] for k in cross], [k[4] for k in cross], [k[5] for k in cross],
            )  # fmt: skip
        return logits.view(x.shape[0], self.cfg.num_codebooks, self.cfg.card)

    def step_static(self, x: torch.Tensor, cache: KVCache, position: torch.Tensor) -> torch.Tensor:
        """One decode position with static shapes, for `torch.compile(mode="reduce-overhead")` or graphs.

        x: [B, 1, D]; position: a 1-element long tensor on the device (advanced in place by the caller,
        so a captured graph replays with the new value). Attention reads the whole cache and masks the
        unfilled part, so no shape depends on the position. Returns logits [B, K, card].
        """
        x = x + self.positions.index_select(0, position).to(x.dtype)[None]
        visible = (self.key_positions[: cache.max_len] <= position)[None, None, None, :]  # [1, 1, 1, T_max]

        def self_attention(i, q, k, v):
            cache.k[i].index_copy_(2, position, k)
            cache.v[i].index_copy_(2, position, v)
            return F.scaled_dot_product_attention(q, cache.k[i], cache.v[i], attn_mask=visible)

        return self.logits(self._layers(x, self_attention, self._cached_cross(cache))[:, -1])

    def forward(
        self,
        codes: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        chroma: torch.Tensor | None = None,
        style: torch.Tensor | None = None,
        style_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced pass over whole sequences (training): no cache, every projection called as a
        module so that adapters wrapped around them (LoRA) and data-parallel wrappers take part.

        codes: [B, K, S] laid out with the delay pattern; text_states [B, St, text_dim] (T5 output) with
        text_mask [B, St]; chroma [B, L, 12] one-hot (melody models); style [B, Ts, style_dim] quantized
        style tokens with style_mask [B, Ts] (style models). Returns logits [B, K, S, card]: those at
        position j predict the tokens of position j + 1.
        """
        text = self.project_text(text_states, text_mask)
        x = self.embed_codes(codes)
        P = 0
        if self.cfg.conditioning != "cross":
            prefix = self.prefix(text, chroma, style, style_mask)
            P = prefix.shape[1]
            x = torch.cat([prefix.to(x.dtype), x], dim=1)
        x = x + self.positions[: x.shape[1]].to(x.dtype)

        def self_attention(i, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        cross = None
        if self.cfg.conditioning == "cross":
            bias = cross_bias(text_mask, x.dtype)

            def cross(i, layer, x):
                q = self._cross_query(layer, layer.norm_cross(x), training=True)
                k, v = self._cross_kv(layer, text, weight_only=False)
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
                return x + self._cross_out(layer, a)

        hidden = self._layers(x, self_attention, cross)[:, P:]
        return self.logits(hidden).permute(0, 2, 1, 3)  # [B, K, S, card]

    def _cached_cross(self, cache: KVCache):
        if self.cfg.conditioning != "cross":
            return None
        fold = cache.cross_fold
        if fold is None:

            def cross(i, layer, x):
                q = self._cross_query(layer, layer.norm_cross(x), training=False)
                a = F.scaled_dot_product_attention(
                    q, cache.cross_k[i], cache.cross_v[i], attn_mask=cache.cross_bias
                )
                return x + self._cross_out(layer, a)

            return cross

        if len(fold.rows) == 0:  # no row has text: cross-attention adds nothing
            return None
        H, S, R = self.cfg.num_heads, fold.bias.shape[-1], len(fold.rows)

        def folded(i, layer, x):
            # only the rows with text are normed and moved (the scripted step slices them when they lead)
            h = layer.norm_cross(x.index_select(0, fold.rows))  # [R', T, D]
            T = h.shape[1]
            scores = torch.bmm(h, fold.scores[i].transpose(1, 2)).view(R, T, H, S)
            weights = torch.softmax(scores + fold.bias, dim=-1).view(R, T, -1)
            return x.index_add(0, fold.rows, torch.bmm(weights, fold.values[i].transpose(1, 2)))

        return folded

    def _layers(self, x: torch.Tensor, self_attention, cross_attention) -> torch.Tensor:
        """The transformer body: x [B, T, D] -> hidden states [B, T, D] before the final norm.

        self_attention(i, q, k, v) attends for layer i (writing caches as it needs; q, k, v: [B, H, T, hd]);
        cross_attention(i, layer, x) returns the residual stream x [B, T, D] with layer i's cross-attention
        added (its own layer norm included).
        """
        B, T, D = x.shape
        H, hd = self.cfg.num_heads, self.cfg.head_dim
        for i, layer in enumerate(self.layers):
            h = layer.norm1(x)
            q, k, v = layer.self_attn.in_proj(h).view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)
            a = self_attention(i, q, k, v)
            x = x + layer.self_attn.out_proj(a.transpose(1, 2).reshape(B, T, D))
            if cross_attention is not None:
                x = cross_attention(i, layer, x)
            h = layer.norm2(x)
            x = x + layer.ff2(F.gelu(layer.ff1(h)))
        return x

    def _cross_query(self, layer: Layer, h: torch.Tensor, training: bool) -> torch.Tensor:
        """Cross-attention queries [B, H, T, hd] from normed hidden states h [B, T, D]."""
        B, T, D = h.shape
        if training:  # the module whole, so that adapters around it take part
            q = layer.cross_attn.in_proj(h)[..., :D]
        elif hasattr(layer.cross_attn, "q_proj"):  # split for int8 decoding (musicgen.quantize)
            q = layer.cross_attn.q_proj(h)
        else:
            q = F.linear(h, layer.cross_attn.in_proj.weight[:D])
        return q.reshape(B, T, self.cfg.num_heads, self.cfg.head_dim).transpose(1, 2)

    def _cross_out(self, layer: Layer, a: torch.Tensor) -> torch.Tensor:
        """Attention output a [B, H, T, hd] -> its contribution to the residual stream [B, T, D]."""
        B, H, T, hd = a.shape
        return layer.cross_attn.out_proj(a.transpose(1, 2).reshape(B, T, H * hd))

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        if max_len > self.cfg.max_positions:
            raise ValueError(f"a window of {max_len} positions exceeds the model's {self.cfg.max_positions}")
        p = self.embed.weight  # the embedding stays a float tensor whatever the Linear layers become
        return KVCache(self.cfg, batch, max_len, p.device, p.dtype)


class _DecodePlan:
    """What `musicgen.decode_script.decode_step` reads besides the activations and the caches: the
    weights, gathered once (they do not change during a decode); the layout is that module's docstring."""

    def __init__(self):
        self.norms: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []
        self.packed: list = []
        self.cross_weights: list[torch.Tensor] = []
        self.cross_packed: list = []

    @classmethod
    def build(cls, lm: LanguageModel) -> _DecodePlan | None:
        """The plan for `lm`, or None when a projection is of neither kind."""
        plan = cls()
        projections, cross_projections = [], []
        absent = (torch.empty(0), torch.empty(0))  # melody models have no cross-attention norm
        for layer in lm.layers:
            norm_cross = getattr(layer, "norm_cross", None)
            plan.norms += [layer.norm1.weight, layer.norm1.bias]
            plan.norms += [norm_cross.weight, norm_cross.bias] if norm_cross is not None else absent
            plan.norms += [layer.norm2.weight, layer.norm2.bias]
            projections += [layer.self_attn.in_proj, layer.self_attn.out_proj, layer.ff1, layer.ff2]
            if lm.cfg.conditioning == "cross":  # plain cross-attention: its query and output projections
                attn = layer.cross_attn
                # int8 models split the query rows off the fused in_proj (musicgen.quantize)
                cross_projections += [attn.q_proj if hasattr(attn, "q_proj") else attn.in_proj, attn.out_proj]
        plan.norms += [lm.out_norm.weight, lm.out_norm.bias]
        projections.append(lm.heads)
        kinds = {_projection_kind(p) for p in projections + cross_projections}
        if kinds == {"int8"}:
            plan.packed = [p.packed for p in projections]
            plan.cross_packed = [p.packed for p in cross_projections]
        elif kinds == {"float"}:
            plan.weights = [p.weight.t() for p in projections]
            # [:D]: the query rows of a fused in_proj (all of out_proj's D rows)
            plan.cross_weights = [p.weight[: lm.cfg.dim].t() for p in cross_projections]
        else:
            return None
        return plan


_NONE = torch.empty(0)


def _cross_of(cache: KVCache) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """A cache's cross-attention as the scripted step takes it: (kind, a, b, bias, fold rows, leading)."""
    fold = cache.cross_fold
    if fold is not None and len(fold.rows) > 0:
        return "folded", fold.scores, fold.values, fold.bias, fold.rows, fold.leading
    if cache.cross_k is not None:
        return "plain", cache.cross_k, cache.cross_v, cache.cross_bias, _NONE, False
    return "none", _NONE, _NONE, _NONE, _NONE, False


def _projection_kind(linear: nn.Module) -> str | None:
    """'float' for a plain bias-free Linear, 'int8' for an Int8Linear (musicgen.quantize), else None."""
    if type(linear) is nn.Linear and linear.bias is None:
        return "float"
    if hasattr(linear, "packed"):
        return "int8"
    return None


def _float_weight(linear: nn.Module) -> torch.Tensor:
    """A Linear's weight [out, in] as floats; an int8 one (musicgen.quantize: `weight()`) is dequantized."""
    weight = linear.weight() if callable(linear.weight) else linear.weight
    return weight.dequantize() if weight.is_quantized else weight
