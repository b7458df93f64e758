"""The U-Net that MultiBand Diffusion runs once per reverse step and band (audiocraft's `DiffusionUnet`).

A 1-D convolutional U-Net over the waveform of one band: `depth` strided encoder levels (channels grow by
`growth`), a bottleneck that sees the EnCodec latent, and mirrored transposed-convolution decoders with skip
connections. The diffusion step enters as a learned embedding added after the first encoder (and after every
encoder with `emb_all_layers`). At the bottleneck the latent (projected by a 1x1 convolution) is either added,
stretched to the bottleneck's length, then the bottleneck runs a Transformer or a BiLSTM (or is zeroed, as
audiocraft does when it has neither), or it is attended to by cross-attention.

Parameter names are audiocraft's, so the converted checkpoint loads without renaming (the converter only folds
`nn.MultiheadAttention`'s `mha.` prefix away). Shapes: x [B, chin, S] waveform, condition [B, codec_dim, T].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

# audiocraft builds the bottleneck Transformer with these, whatever the config says
TRANSFORMER_HEADS = 8
TRANSFORMER_LAYERS = 6
TRANSFORMER_FEEDFORWARD = 2048
SIN_MAX_PERIOD = 10_000


@dataclass
class UNetConfig:
    """One band's U-Net (audiocraft's `diffusion_unet` config, plus the channels and diffusion steps)."""

    chin: int = 1
    hidden: int = 48
    depth: int = 4
    growth: float = 4.0
    max_channels: int = 10_000
    num_steps: int = 1000
    emb_all_layers: bool = True
    cross_attention: bool = False
    bilstm: bool = False
    transformer: bool = True
    codec_dim: int | None = 128
    kernel: int = 8
    stride: int = 4
    norm_groups: int = 4
    res_blocks: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    def channels(self) -> list[tuple[int, int]]:
        """(in, out) channels of each encoder level, the first level first."""
        out, chin, hidden = [], self.chin, self.hidden
        for _ in range(self.depth):
            out.append((chin, hidden))
            chin, hidden = hidden, min(int(hidden * self.growth), self.max_channels)
        return out


class ResBlock(nn.Module):
    """norm -> ReLU -> conv, twice, around a residual connection (dilated convolutions, kernel 3)."""

    def __init__(self, channels: int, norm_groups: int, dilation: int):
        super().__init__()
        padding = dilation  # keeps the length: dilation * (kernel 3 - 1) / 2
        self.norm1 = nn.GroupNorm(norm_groups, channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, 1, padding, dilation=dilation)
        self.norm2 = nn.GroupNorm(norm_groups, channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, 1, padding, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(h)))


class EncoderLayer(nn.Module):
    """Strided convolution (the length divided by `stride`) -> norm -> ReLU -> residual blocks."""

    def __init__(self, chin: int, chout: int, cfg: UNetConfig):
        super().__init__()
        self.stride = cfg.stride
        self.conv = nn.Conv1d(chin, chout, cfg.kernel, cfg.stride, (cfg.kernel - cfg.stride) // 2, bias=False)
        self.norm = nn.GroupNorm(cfg.norm_groups, chout)
        self.res_blocks = nn.Sequential(
            *[ResBlock(chout, cfg.norm_groups, 2**i) for i in range(cfg.res_blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = -x.shape[-1] % self.stride  # right-pad to a whole number of strides
        x = self.conv(F.pad(x, (0, pad)))
        return self.res_blocks(F.relu(self.norm(x)))


class DecoderLayer(nn.Module):
    """Residual blocks -> norm -> ReLU -> transposed convolution (the length times `stride`)."""

    def __init__(self, chin: int, chout: int, cfg: UNetConfig):
        super().__init__()
        self.res_blocks = nn.Sequential(
            *[ResBlock(chin, cfg.norm_groups, 2**i) for i in range(cfg.res_blocks)]
        )
        self.norm = nn.GroupNorm(cfg.norm_groups, chin)
        padding = (cfg.kernel - cfg.stride) // 2
        self.convtr = nn.ConvTranspose1d(chin, chout, cfg.kernel, cfg.stride, padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convtr(F.relu(self.norm(self.res_blocks(x))))


def sin_embedding(length: int, dim: int, device, dtype) -> torch.Tensor:
    """Sinusoidal positions [1, length, dim]: cosines then sines, periods up to SIN_MAX_PERIOD (audiocraft's
    layout, not the interleaved one)."""
    half = dim // 2
    positions = torch.arange(length, device=device, dtype=dtype).view(1, -1, 1)
    freqs = torch.arange(half, device=device, dtype=dtype).view(1, 1, -1)
    phase = positions / (torch.full([], SIN_MAX_PERIOD, device=device, dtype=dtype) ** (freqs / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


class Attention(nn.Module):
    """Multi-head attention without biases (audiocraft builds it with bias_attn=False); one packed input
    projection [3D, D], as torch's nn.MultiheadAttention stores it."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        # query: [B, T, D]; source: [B, Ts, D] (the query itself for self-attention)
        B, T, D = query.shape
        wq, wkv = self.in_proj_weight.split([D, 2 * D])
        q = F.linear(query, wq)
        k, v = F.linear(source, wkv).chunk(2, dim=-1)
        q, k, v = (t.view(B, -1, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, D/H]
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class TransformerLayer(nn.Module):
    """Post-norm layer (torch's TransformerEncoderLayer default, which audiocraft's layer keeps): attention,
    add, norm; [cross-attention, add, norm]; ReLU feed-forward without biases, add, norm."""

    def __init__(self, dim: int, cross_attention: bool):
        super().__init__()
        self.self_attn = Attention(dim, TRANSFORMER_HEADS)
        self.linear1 = nn.Linear(dim, TRANSFORMER_FEEDFORWARD, bias=False)
        self.linear2 = nn.Linear(TRANSFORMER_FEEDFORWARD, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        if cross_attention:
            self.cross_attention = Attention(dim, TRANSFORMER_HEADS)
            self.norm_cross = nn.LayerNorm(dim, eps=1e-5)
        else:
            self.cross_attention = None

    def forward(self, src: torch.Tensor, cross_src: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(src + self.self_attn(src, src))
        if self.cross_attention is not None:
            # audiocraft's post-norm branch queries with the layer's input, not with x: kept, so that its
            # trained weights see what they were trained on
            x = self.norm_cross(x + self.cross_attention(src, cross_src))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class Transformer(nn.Module):
    def __init__(self, dim: int, cross_attention: bool):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(dim, cross_attention) for _ in range(TRANSFORMER_LAYERS))

    def forward(self, x: torch.Tensor, cross_src: torch.Tensor | None) -> torch.Tensor:
        x = x + sin_embedding(x.shape[1], x.shape[2], x.device, x.dtype)
        for layer in self.layers:
            x = layer(x, cross_src)
        return x


class BLSTM(nn.Module):
    """Bidirectional 2-layer LSTM, back to `dim` channels by a linear layer."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size=dim, hidden_size=dim, num_layers=2, bidirectional=True)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T] -> the LSTM's [T, B, C] and back
        y = self.linear(self.lstm(x.permute(2, 0, 1))[0])
        return y.permute(1, 2, 0)


class DiffusionUnet(nn.Module):
    """Predicts the noise in `x` at diffusion step `step`, conditioned on the EnCodec latent."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        levels = cfg.channels()
        self.encoders = nn.ModuleList(EncoderLayer(i, o, cfg) for i, o in levels)
        self.decoders = nn.ModuleList(DecoderLayer(o, i, cfg) for i, o in reversed(levels))
        self.embedding = nn.Embedding(cfg.num_steps, cfg.hidden)
        self.embeddings = (
            nn.ModuleList(nn.Embedding(cfg.num_steps, o) for _, o in levels[1:])
            if cfg.emb_all_layers
            else None
        )
        bottleneck = levels[-1][1]
        self.bilstm = BLSTM(bottleneck) if cfg.bilstm else None
        self.transformer = Transformer(bottleneck, cfg.cross_attention) if cfg.transformer else None
        self.conv_codec = nn.Conv1d(cfg.codec_dim, bottleneck, 1) if cfg.codec_dim is not None else None

    def forward(self, x: torch.Tensor, step: int, condition: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, chin, S] noisy band; step: the diffusion step (0 .. num_steps - 1); condition: latent
        [B, codec_dim, T]. Returns the predicted noise [B, chin, S]."""
        B = x.shape[0]
        steps = torch.full((B,), step, device=x.device, dtype=torch.long)
        skips = []
        z = x
        for level, encoder in enumerate(self.encoders):
            z = encoder(z)
            if level == 0:
                z = z + self.embedding(steps)[:, :, None]
            elif self.embeddings is not None:
                z = z + self.embeddings[level - 1](steps)[:, :, None]
            skips.append(z)

        cross_src = None
        if self.conv_codec is not None:
            if condition is None:
                raise ValueError("this diffusion U-Net is conditioned on the codec latent: pass `condition`")
            cond = self.conv_codec(condition)  # [B, C_bottleneck, T]
            if self.transformer is not None and self.cfg.cross_attention:
                cross_src = cond.transpose(1, 2)
                cross_src = cross_src + sin_embedding(
                    cross_src.shape[1], cross_src.shape[2], x.device, x.dtype
                )
            else:
                # nearest-neighbour stretch of the 50 Hz latent to the bottleneck's rate
                z = z + F.interpolate(cond, z.shape[-1])
        if self.transformer is not None:
            z = self.transformer(z.transpose(1, 2), cross_src).transpose(1, 2)
        elif self.bilstm is not None:
            z = self.bilstm(z)
        else:
            z = torch.zeros_like(z)  # audiocraft's choice when the bottleneck has no module

        for decoder in self.decoders:
            skip = skips.pop()
            z = decoder(z[..., : skip.shape[-1]] + skip)
        return z[..., : x.shape[-1]]


def unet_flops(cfg: UNetConfig, samples: int, frames: int) -> float:
    """Multiply-adds x 2 of one forward over `samples` waveform samples with `frames` latent frames (the
    convolutions, the bottleneck and the attention; norms and activations left out, a few %)."""
    flops = 0.0
    length = samples
    for chin, chout in cfg.channels():
        length = math.ceil(length / cfg.stride)
        conv = chin * chout * cfg.kernel * length  # the strided conv, and the mirrored transposed conv
        res = cfg.res_blocks * 2 * chout * chout * 3 * length  # res blocks, in the encoder and the decoder
        flops += 2 * (2 * conv + 2 * res)
    dim = cfg.channels()[-1][1]
    if cfg.codec_dim is not None:
        flops += 2 * cfg.codec_dim * dim * frames
    if cfg.transformer:
        # multiply-adds per layer: projections, scores and weighted sum, feed-forward
        layer = (4 * dim * dim + 2 * length * dim + 2 * dim * TRANSFORMER_FEEDFORWARD) * length
        if cfg.cross_attention:  # queries and output over the bottleneck, keys and values over the frames
            layer += 2 * dim * dim * length + 2 * dim * dim * frames + 2 * length * frames * dim
        flops += 2 * TRANSFORMER_LAYERS * layer
    elif cfg.bilstm:
        # per position, 4 gates x 2 directions: layer 1 reads dim + dim, layer 2 reads 2 dim + dim; then the
        # linear 2 dim -> dim: 16 + 24 + 2 = 42 dim^2 multiply-adds
        flops += 2 * 42 * dim * dim * length
    return flops
