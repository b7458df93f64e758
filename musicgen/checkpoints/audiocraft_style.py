"""audiocraft's MusicGen-Style conditioner (`StyleConditioner`, audiocraft 1.4.0a) in this engine's terms.

The style model's `state_dict.bin` holds, beside the LM, the style conditioner's own weights under
`condition_provider.conditioners.self_wav.`; its MERT feature extractor is not there (audiocraft loads
`m-a-p/MERT-v1-95M` by name). This module translates the conditioner's `xp.cfg` block into a `StyleConfig`
and its tensors into `musicgen.style.StyleEncoder`'s names, both ways. The output projection is the LM's
`style_proj` (see `audiocraft_lm`), so that a fine-tune of the LM carries it.

Buffers that only training uses are accepted and dropped on reading (the RVQ's `cluster_size`, `embed_avg`,
BatchNorm's `num_batches_tracked`), and written back on writing so audiocraft's strict loader accepts the
file. A codebook whose `inited` flag is 0 is refused: audiocraft would overwrite it by k-means on the first
excerpt it sees, so its values mean nothing yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import StyleConfig
from ..errors import CheckpointError
from .audiocraft_xpcfg import _mismatch, _XpCfg

STYLE_PREFIX = "condition_provider.conditioners.self_wav."
# audiocraft's StyleConditioner transformer sizes by name
_TRANSFORMER_SCALES = {"xsmall": (256, 8, 4), "default": (512, 8, 8), "large": (1024, 16, 24)}
_TRAINING_ONLY = ("cluster_size", "embed_avg", "inited")


def style_config_from_xp(xp: _XpCfg) -> StyleConfig:
    """StyleConfig from `conditioners.self_wav.style`, refusing what this engine does not run."""
    st = "conditioners.self_wav.style"
    xp.require(f"{st}.model_name", "mert", "mert", "the style conditioner runs on MERT features")
    scale = xp.get(f"{st}.transformer_scale", "default")
    if scale not in _TRANSFORMER_SCALES:
        raise CheckpointError(
            f"{xp.path}: xp.cfg {st}.transformer_scale is {scale!r}; supported are {sorted(_TRANSFORMER_SCALES)}"
        )
    dim, heads, layers = _TRANSFORMER_SCALES[scale]
    n_q = xp.get_int(f"{st}.n_q_out", 6)
    if n_q < 1:
        raise CheckpointError(
            f"{xp.path}: xp.cfg {st}.n_q_out is {n_q}; the style model quantizes its tokens"
        )
    xp.require(f"{st}.use_middle_of_segment", False, False, "excerpts start where the request says")
    lengths = xp.get(f"{st}.varying_lengths", [1.5, 4.5]) or [1.5, 4.5]
    if not isinstance(lengths, list) or len(lengths) != 2:
        raise CheckpointError(f"{xp.path}: xp.cfg {st}.varying_lengths is {lengths!r}, expected [min, max]")
    low, high = (float(v) for v in lengths)
    sample_rate = xp.get_int(f"{st}.sample_rate", xp.get("sample_rate", 32000))
    eval_q = xp.get_int(f"{st}.eval_q", 3)
    return StyleConfig(
        dim=dim,
        num_heads=heads,
        num_layers=layers,
        ffn_dim=4 * dim,
        num_quantizers=n_q,
        bins=xp.get_int(f"{st}.bins", 1024),
        eval_q=min(eval_q, n_q),
        excerpt_length=xp.get_float(f"{st}.length", 3.0),
        min_excerpt_length=low,
        max_excerpt_length=high,
        ds_factor=xp.get_int(f"{st}.ds_factor", 15),
        batch_norm=bool(xp.get(f"{st}.batch_norm", True)),
        sample_rate=sample_rate,
    )


def _rows(cfg: StyleConfig) -> list[tuple[str, str, tuple[int, ...]]]:
    """(audiocraft name without STYLE_PREFIX, our name, shape) of the encoder's learned tensors."""
    d, f = cfg.dim, cfg.ffn_dim
    rows = [("embed.weight", "embed.weight", (d, cfg.feature_dim)), ("embed.bias", "embed.bias", (d,))]
    for i in range(cfg.num_layers):
        a, o = f"transformer.layers.{i}.", f"layers.{i}."
        rows += [
            (a + "norm1.weight", o + "norm1.weight", (d,)),
            (a + "norm1.bias", o + "norm1.bias", (d,)),
            (a + "self_attn.in_proj_weight", o + "in_proj.weight", (3 * d, d)),
            (a + "self_attn.out_proj.weight", o + "out_proj.weight", (d, d)),
            (a + "norm2.weight", o + "norm2.weight", (d,)),
            (a + "norm2.bias", o + "norm2.bias", (d,)),
            (a + "linear1.weight", o + "ff1.weight", (f, d)),
            (a + "linear2.weight", o + "ff2.weight", (d, f)),
        ]
    if cfg.batch_norm:
        rows += [
            ("batch_norm.running_mean", "running_mean", (d,)),
            ("batch_norm.running_var", "running_var", (d,)),
        ]
    return rows


def _codebook(j: int, part: str) -> str:
    return f"rvq.vq.layers.{j}._codebook.{part}"


def style_state_from_audiocraft(
    state: dict[str, torch.Tensor], cfg: StyleConfig, path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Splits audiocraft's best_state into (the LM's part, StyleEncoder's state), checking the latter."""
    import re

    own = {
        re.sub(r"\.self_attn\.mha\.", ".self_attn.", k[len(STYLE_PREFIX) :]): v
        for k, v in state.items()
        if k.startswith(STYLE_PREFIX) and not k.startswith(STYLE_PREFIX + "output_proj.")
    }
    rest = {k: v for k, v in state.items() if not k.startswith(STYLE_PREFIX) or ".output_proj." in k}
    d, n, bins = cfg.dim, cfg.num_quantizers, cfg.bins
    expected = {a: shape for a, _, shape in _rows(cfg)}
    for j in range(n):
        expected[_codebook(j, "embed")] = (bins, d)
    optional = {_codebook(j, "inited"): (1,) for j in range(n)}
    optional.update({_codebook(j, "cluster_size"): (bins,) for j in range(n)})
    optional.update({_codebook(j, "embed_avg"): (bins, d) for j in range(n)})
    if cfg.batch_norm:
        optional["batch_norm.num_batches_tracked"] = ()
    missing = [STYLE_PREFIX + k for k in expected if k not in own]
    unexpected = [STYLE_PREFIX + k for k in own if k not in expected and k not in optional]
    wrong = [
        f"{STYLE_PREFIX}{k} {tuple(own[k].shape)} (expected {shape})"
        for k, shape in {**expected, **optional}.items()
        if k in own and tuple(own[k].shape) != shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: the style conditioner's tensors do not fit the StyleConditioner that xp.cfg describes "
            f"(dim {d}, {cfg.num_layers} layers, {n} codebooks of {bins}): {_mismatch(missing, unexpected, wrong)}"
        )
    for j in range(n):
        inited = own.get(_codebook(j, "inited"))
        if inited is not None and not bool(inited.flatten()[0]):
            raise CheckpointError(
                f"{path}: the style quantizer's codebook {j} was never initialised (inited = 0): audiocraft "
                "would replace it by k-means of the first excerpt, so it holds no trained values."
            )
    out = {o: own[a] for a, o, _ in _rows(cfg)}
    if not cfg.batch_norm:
        out["running_mean"] = torch.zeros(d)
        out["running_var"] = torch.ones(d)
    out["codebooks"] = torch.stack([own[_codebook(j, "embed")] for j in range(n)])
    return rest, out


def style_state_to_audiocraft(state: dict[str, torch.Tensor], cfg: StyleConfig) -> dict[str, torch.Tensor]:
    """StyleEncoder's state under audiocraft's names, with the training buffers its strict loader expects."""
    out = {STYLE_PREFIX + a: state[o] for a, o, _ in _rows(cfg)}
    if cfg.batch_norm:
        out[STYLE_PREFIX + "batch_norm.num_batches_tracked"] = torch.tensor(0)
    for j, table in enumerate(state["codebooks"]):
        # in the codebooks' dtype: a float16 export holds float16 buffers only, as the release's does
        out[STYLE_PREFIX + _codebook(j, "inited")] = torch.ones(1, dtype=table.dtype)
        out[STYLE_PREFIX + _codebook(j, "cluster_size")] = torch.ones(cfg.bins, dtype=table.dtype)
        out[STYLE_PREFIX + _codebook(j, "embed")] = table.clone()
        out[STYLE_PREFIX + _codebook(j, "embed_avg")] = table.clone()
    return out


def style_xp(cfg: StyleConfig, num_codebooks_lm: int) -> dict[str, Any]:
    """`conditioners.self_wav` as audiocraft's style2music conditioner config writes it."""
    scale = next(
        (k for k, v in _TRANSFORMER_SCALES.items() if v == (cfg.dim, cfg.num_heads, cfg.num_layers)), None
    )
    if scale is None or cfg.ffn_dim != 4 * cfg.dim or cfg.feature_dim != 768:
        raise CheckpointError(
            f"a style conditioner of dim {cfg.dim}, {cfg.num_heads} heads, {cfg.num_layers} layers, ffn "
            f"{cfg.ffn_dim}, features {cfg.feature_dim} has no audiocraft transformer_scale "
            f"({sorted(_TRANSFORMER_SCALES)}, 768-wide MERT)"
        )
    return {
        "model": "style",
        "style": {
            "model_name": "mert",
            "transformer_scale": scale,
            "sample_rate": cfg.sample_rate,
            "encodec_checkpoint": "//pretrained/facebook/encodec_32khz",
            "encodec_n_q": 3,
            "length": cfg.excerpt_length,
            "ds_factor": cfg.ds_factor,
            "n_q_out": cfg.num_quantizers,
            "eval_q": cfg.eval_q,
            "q_dropout": True,
            "bins": cfg.bins,
            "varying_lengths": [cfg.min_excerpt_length, cfg.max_excerpt_length],
            "batch_norm": cfg.batch_norm,
            "compute_mask": True,
            "num_codebooks_lm": num_codebooks_lm,
            "ds_rate_compression": 640,
            "use_middle_of_segment": False,
            "rvq_threshold_ema_dead_code": 0.1,
        },
    }
