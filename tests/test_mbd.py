"""MultiBand Diffusion (musicgen/diffusion.py, musicgen/diffusion_unet.py) against audiocraft 1.3.0's maths.

audiocraft cannot be imported here (it pins torch 2.1 and imports xformers), so this file carries its own
transcriptions of the parts MultiBand Diffusion runs, written from audiocraft's source and built on torch's
modules where audiocraft builds on them:

- `RefUnet`: audiocraft.models.unet.DiffusionUnet (ResBlock, EncoderLayer, DecoderLayer, BLSTM) with the
  bottleneck StreamingTransformer (a subclass of nn.TransformerEncoderLayer, post-norm, ReLU, feed-forward
  2048, 8 heads, 6 layers, linear and attention biases off but LayerNorm biases on, nn.MultiheadAttention
  since custom=False, sinusoidal positions added once at the input; its post-norm cross-attention queries
  with the layer's input `src`);
- `ref_generate_subsampled`: NoiseSchedule.generate_subsampled (+ betas_from_alpha_bar, get_alpha_bar);
- `ref_return_sample`: MultiBandProcessor.return_sample;
- `ref_re_eq`: MultiBandDiffusion.re_eq (one std per band over the whole tensor it is given);
- `ref_decode_clip`: MultiBandDiffusion.tokens_to_wav after the codec (generate: out starts at zeros, each
  band adds its reverse process from fresh noise, then re_eq against EnCodec's decode).

Nothing of musicgen's diffusion code is used by these references; both sides get the same random weights
(every norm and embedding re-drawn so that nothing is trivially zero or one). Everything is float32 on CPU.
"""

from __future__ import annotations

import math
import warnings

import julius
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from musicgen import diffusion as D
from musicgen.diffusion import (
    BandConfig,
    BandProcessor,
    MBDConfig,
    MultiBandDiffusion,
    ProcessorConfig,
    ReverseSchedule,
    ScheduleConfig,
    stitch,
    window_starts,
)
from musicgen.diffusion_unet import DiffusionUnet, UNetConfig, unet_flops

SR = 1600  # a tiny sample rate keeps every test fast
HOP = 32  # 50 latent frames per second, as MusicGen's EnCodec
CODEC_DIM = 16
DEFAULT_STEPS = [999 - 50 * i for i in range(20)] + [0]  # audiocraft's default: 999, 949, ..., 49, then 0


# ---------------------------------------------------------------------------------------------------------
# references, transcribed from audiocraft 1.3.0
# ---------------------------------------------------------------------------------------------------------
def ref_sin_embedding(length: int, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """audiocraft.modules.transformer.create_sin_embedding for positions 0..length-1: [1, length, dim],
    the cosines of every frequency, then their sines."""
    half = dim // 2
    positions = torch.arange(length, dtype=torch.float32).view(1, -1, 1)
    index = torch.arange(half, dtype=torch.float32).view(1, 1, -1)
    period = torch.full([], max_period, dtype=torch.float32) ** (index / (half - 1))
    phase = positions / period
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


class RefResBlock(nn.Module):
    def __init__(self, channels: int, norm_groups: int, dilation: int):
        super().__init__()
        kernel = 3
        padding = dilation * (kernel - 1) // 2
        self.norm1 = nn.GroupNorm(norm_groups, channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel, 1, padding, dilation=dilation)
        self.norm2 = nn.GroupNorm(norm_groups, channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel, 1, padding, dilation=dilation)

    def forward(self, x):
        h = self.conv1(torch.relu(self.norm1(x)))
        h = self.conv2(torch.relu(self.norm2(h)))
        return x + h


class RefEncoderLayer(nn.Module):
    def __init__(self, chin, chout, kernel, stride, norm_groups, res_blocks):
        super().__init__()
        self.conv = nn.Conv1d(chin, chout, kernel, stride, (kernel - stride) // 2, bias=False)
        self.norm = nn.GroupNorm(norm_groups, chout)
        self.res_blocks = nn.Sequential(*[RefResBlock(chout, norm_groups, 2**i) for i in range(res_blocks)])

    def forward(self, x):
        (stride,) = self.conv.stride
        length = x.shape[-1]
        x = F.pad(x, (0, (stride - length % stride) % stride))
        return self.res_blocks(torch.relu(self.norm(self.conv(x))))


class RefDecoderLayer(nn.Module):
    def __init__(self, chin, chout, kernel, stride, norm_groups, res_blocks):
        super().__init__()
        self.res_blocks = nn.Sequential(*[RefResBlock(chin, norm_groups, 2**i) for i in range(res_blocks)])
        self.norm = nn.GroupNorm(norm_groups, chin)
        self.convtr = nn.ConvTranspose1d(chin, chout, kernel, stride, (kernel - stride) // 2, bias=False)

    def forward(self, x):
        return self.convtr(torch.relu(self.norm(self.res_blocks(x))))


class RefBLSTM(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.lstm = nn.LSTM(bidirectional=True, num_layers=2, hidden_size=dim, input_size=dim)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, x):
        y = self.lstm(x.permute(2, 0, 1))[0]
        return self.linear(y).permute(1, 2, 0)


class RefTransformerLayer(nn.TransformerEncoderLayer):
    """audiocraft's StreamingTransformerLayer as DiffusionUnet builds it: torch's encoder layer (post-norm,
    ReLU, LayerNorms with bias, eps 1e-5) whose self-attention and feed-forward are rebuilt without biases,
    plus the cross-attention branch."""

    def __init__(self, dim: int, cross_attention: bool):
        super().__init__(
            dim, 8, 2048, dropout=0.0, activation="relu", batch_first=True, norm_first=False, bias=True
        )
        self.self_attn = nn.MultiheadAttention(dim, 8, dropout=0.0, bias=False, batch_first=True)
        self.linear1 = nn.Linear(dim, 2048, bias=False)
        self.linear2 = nn.Linear(2048, dim, bias=False)
        if cross_attention:
            self.cross_attention = nn.MultiheadAttention(dim, 8, dropout=0.0, bias=False, batch_first=True)
            self.norm_cross = nn.LayerNorm(dim, eps=1e-5)
        else:
            self.cross_attention = None

    def forward(self, src, cross_src=None):  # the norm_first=False branch of audiocraft's forward
        x = src
        x = self.norm1(x + self._sa_block(x, None, None))
        if self.cross_attention is not None:
            # audiocraft: `self._cross_attention_block(src, cross_attention_src)`, queries from src
            attended = self.cross_attention(src, cross_src, cross_src, need_weights=False)[0]
            x = self.norm_cross(x + attended)
        x = self.norm2(x + self._ff_block(x))
        return x


class RefTransformer(nn.Module):
    def __init__(self, dim: int, cross_attention: bool):
        super().__init__()
        self.layers = nn.ModuleList([RefTransformerLayer(dim, cross_attention) for _ in range(6)])

    def forward(self, x, cross_src=None):
        x = x + ref_sin_embedding(x.shape[1], x.shape[2])
        for layer in self.layers:
            x = layer(x, cross_src)
        return x


class RefUnet(nn.Module):
    """audiocraft.models.unet.DiffusionUnet (forward returns the tensor instead of Output(sample))."""

    # every setting given (the tests' values are in `unet_kwargs`), none defaulted: a second set of defaults
    # here could silently disagree with the engine's side
    def __init__(
        self, *, chin, hidden, depth, growth, max_channels, num_steps, emb_all_layers, cross_attention,
        bilstm, transformer, codec_dim, kernel, stride, norm_groups, res_blocks,
    ):  # fmt: skip
        super().__init__()
        layer_kw = dict(kernel=kernel, stride=stride, norm_groups=norm_groups, res_blocks=res_blocks)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.embedding = nn.Embedding(num_steps, hidden)
        self.embeddings = nn.ModuleList() if emb_all_layers else None
        for d in range(depth):
            self.encoders.append(RefEncoderLayer(chin, hidden, **layer_kw))
            self.decoders.insert(0, RefDecoderLayer(hidden, chin, **layer_kw))
            if emb_all_layers and d > 0:
                self.embeddings.append(nn.Embedding(num_steps, hidden))
            chin = hidden
            hidden = min(int(chin * growth), max_channels)
        self.bilstm = RefBLSTM(chin) if bilstm else None
        self.cross_attention = cross_attention if transformer else False
        self.transformer = RefTransformer(chin, cross_attention) if transformer else None
        self.conv_codec = nn.Conv1d(codec_dim, chin, 1) if codec_dim is not None else None

    def forward(self, x, step: int, condition=None):
        bs = x.shape[0]
        steps = torch.tensor([step], dtype=torch.long).expand(bs)
        skips = []
        z = x
        for idx, encoder in enumerate(self.encoders):
            z = encoder(z)
            if idx == 0:
                z = z + self.embedding(steps).view(bs, -1, 1).expand_as(z)
            elif self.embeddings is not None:
                z = z + self.embeddings[idx - 1](steps).view(bs, -1, 1).expand_as(z)
            skips.append(z)
        cross_src = None
        if self.conv_codec is not None:
            emb = self.conv_codec(condition)
            assert emb.shape[-1] <= 2 * z.shape[-1]
            if not self.cross_attention:
                z = z + F.interpolate(emb, z.shape[-1])
            else:
                cross_src = emb.permute(0, 2, 1)
                cross_src = cross_src + ref_sin_embedding(cross_src.shape[1], cross_src.shape[2])
        if self.transformer is not None:
            z = self.transformer(z.permute(0, 2, 1), cross_src).permute(0, 2, 1)
        elif self.bilstm is None:
            z = torch.zeros_like(z)
        else:
            z = self.bilstm(z)
        for decoder in self.decoders:
            skip = skips.pop(-1)
            z = decoder(z[:, :, : skip.shape[2]] + skip)
        return z[:, :, : x.shape[2]]


def ref_generate_subsampled(model, initial, step_list, sc, draw, condition=None, record=None):
    """NoiseSchedule.generate_subsampled (power repartition) with `sc` the schedule's settings; `draw()` stands
    for torch.randn_like(previous); `record` (a list) gets one dict per reverse step."""
    betas = (
        torch.linspace(sc.beta_t0 ** (1 / sc.beta_exp), sc.beta_t1 ** (1 / sc.beta_exp), sc.num_steps)
        ** sc.beta_exp
    )

    def get_alpha_bar(step: int):
        return (1 - betas[: step + 1]).prod()

    alpha_bar = get_alpha_bar(sc.num_steps - 1)
    alpha_bars_subsampled = (1 - betas).cumprod(dim=0)[list(reversed(step_list))]
    alphas = torch.cat(
        [torch.Tensor([alpha_bars_subsampled[0]]), alpha_bars_subsampled[1:] / alpha_bars_subsampled[:-1]]
    )
    betas_subsampled = 1 - alphas
    current = initial * sc.noise_scale
    previous = current
    for idx, step in enumerate(step_list[:-1]):
        estimate = model(current, step, condition=condition) * sc.noise_scale
        alpha = 1 - betas_subsampled[-1 - idx]
        eps_coef = (1 - alpha) / (1 - alpha_bar).sqrt()
        previous = (current - eps_coef * estimate) / alpha.sqrt()
        previous_alpha_bar = get_alpha_bar(step_list[idx + 1])
        if step == step_list[-2]:
            sigma2 = 0
            previous_alpha_bar = torch.tensor(1.0)
        else:
            sigma2 = (1 - previous_alpha_bar) / (1 - alpha_bar) * (1 - alpha)
        noise = None
        if sigma2 > 0:
            noise = draw()
            previous = previous + sigma2**0.5 * noise * sc.noise_scale
        if sc.clip:
            previous = previous.clamp(-sc.clip, sc.clip)
        if record is not None:
            record.append(
                dict(
                    step=step,
                    eps=eps_coef,
                    sqrt_alpha=alpha.sqrt(),
                    sigma=sigma2**0.5 if sigma2 > 0 else None,
                    current=current,
                    estimate=estimate,
                    noise=noise,
                    previous=previous,
                )
            )
        current = previous
        alpha_bar = previous_alpha_bar
        if step == 0:
            previous.mul_(sc.rescale)  # never reached: step_list[:-1] cannot hold 0
    return previous


def ref_return_sample(x, sample_rate, n_bands, stats, power_std):
    """MultiBandProcessor.return_sample with its buffers `stats`."""
    split = julius.SplitBands(sample_rate, n_bands=n_bands)
    counts = stats["counts"]
    mean = stats["sum_x"] / counts
    std = (stats["sum_x2"] / counts - mean**2).clamp(min=0).sqrt()
    target_std = stats["sum_target_x2"] / counts
    bands = split(x)
    rescale = (std / target_std) ** power_std
    bands = bands * rescale.view(-1, 1, 1, 1) + mean.view(-1, 1, 1, 1)
    return bands.sum(dim=0)


def ref_re_eq(wav, ref, sample_rate, n_bands=32, strictness=1.0):
    """MultiBandDiffusion.re_eq."""
    split = julius.SplitBands(n_bands=n_bands, sample_rate=sample_rate)
    bands = split(wav)
    bands_ref = split(ref)
    out = torch.zeros_like(ref)
    for i in range(n_bands):
        out += bands[i] * (bands_ref[i].std() / bands[i].std()) ** strictness
    return out


# ---------------------------------------------------------------------------------------------------------
# building both sides with the same random weights
# ---------------------------------------------------------------------------------------------------------
def unet_kwargs(**overrides) -> dict:
    kw = dict(
        chin=1,
        hidden=8,
        depth=2,
        growth=2.0,
        max_channels=10_000,
        num_steps=1000,
        emb_all_layers=True,
        cross_attention=False,
        bilstm=False,
        transformer=True,
        codec_dim=CODEC_DIM,
        kernel=8,
        stride=4,
        norm_groups=4,
        res_blocks=1,
    )
    kw.update(overrides)
    return kw


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Re-draws the norms' weights and biases, the embeddings and every 1-d parameter (so nothing is zero or
    one); matrices keep torch's (seeded) random initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            for name, p in mod.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=g)
                if isinstance(mod, nn.GroupNorm | nn.LayerNorm):
                    p.copy_((1.0 if name == "weight" else 0.0) + 0.3 * noise)
                elif isinstance(mod, nn.Embedding):
                    p.copy_(0.5 * noise)
                elif p.ndim == 1:
                    p.copy_(0.2 * noise)
    return module


def make_pair(seed: int = 0, **overrides) -> tuple[RefUnet, DiffusionUnet]:
    kw = unet_kwargs(**overrides)
    torch.manual_seed(seed)
    ref = randomize(RefUnet(**kw), seed + 1000).eval()
    ours = DiffusionUnet(UNetConfig(**kw))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()


def random_stats(n_bands: int, seed: int, zero_std_band: bool = False) -> dict[str, torch.Tensor]:
    """MultiBandProcessor buffers as training leaves them: counts, sums of x, x^2 and of the noise's x^2."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor([1234.0])
    mean = 0.05 * torch.randn(n_bands, generator=g)
    std = 0.05 + 0.3 * torch.rand(n_bands, generator=g)
    target = 0.02 + 0.5 * torch.rand(n_bands, generator=g)
    sum_x2 = counts * (std**2 + mean**2)
    if zero_std_band:
        sum_x2[1] = counts * mean[1] ** 2 * 0.999  # a negative variance: clamped to a zero std
    return dict(counts=counts, sum_x=counts * mean, sum_x2=sum_x2, sum_target_x2=counts * target)


class RefBand:
    def __init__(self, model, schedule, processor, stats):
        self.model, self.schedule, self.processor, self.stats = model, schedule, processor, stats


def make_mbd(specs, seed: int = 0, re_eq_bands: int = 32):
    """specs: (unet overrides, ScheduleConfig, ProcessorConfig) per band -> (our MultiBandDiffusion loaded
    from a state in the converted layout, the reference bands with the same weights and statistics)."""
    state, refs, bands = {}, [], []
    for i, (overrides, sched, proc) in enumerate(specs):
        kw = unet_kwargs(**overrides)
        torch.manual_seed(seed + 17 * i)
        ref = randomize(RefUnet(**kw), seed + 17 * i + 1000).eval()
        for k, v in ref.state_dict().items():
            state[f"bands.{i}.model.{k}"] = v.clone()
        stats = None
        if proc.use:
            stats = random_stats(proc.n_bands, seed + 17 * i + 2000)
            for k, v in stats.items():
                state[f"bands.{i}.processor.{k}"] = v.clone()
        refs.append(RefBand(ref, sched, proc, stats))
        bands.append(BandConfig(unet=UNetConfig(**kw), schedule=sched, processor=proc))
    config = MBDConfig(sample_rate=SR, bands=bands, re_eq_bands=re_eq_bands)
    config.check()
    return MultiBandDiffusion(config, state, "cpu"), refs


def release_like_specs():
    """Three bands: a transformer band with a processor, a BiLSTM band without one, a cross-attention band
    with a partial (power 0.6) processor; the default schedule settings."""
    sched = ScheduleConfig()
    return [
        (dict(), sched, ProcessorConfig(use=True, n_bands=8, power_std=1.0)),
        (dict(transformer=False, bilstm=True), sched, ProcessorConfig(use=False)),
        (dict(cross_attention=True), sched, ProcessorConfig(use=True, n_bands=4, power_std=0.6)),
    ]


@pytest.fixture(scope="module")
def mbd_pair():
    return make_mbd(release_like_specs())


def ref_band_sample(band: RefBand, condition, draw, step_list):
    """DiffusionProcess.generate of one band: the reverse process from draw() then the band's processor."""
    with torch.no_grad():
        initial = draw()
        x = ref_generate_subsampled(band.model, initial, step_list, band.schedule, draw, condition)
        if band.processor.use:
            x = ref_return_sample(x, SR, band.processor.n_bands, band.stats, band.processor.power_std)
    return x


def ref_window_rows(refs, latent, seed, step_list, starts, frames):
    """Every (clip, channel, window) row as generate() makes it from zeros, each drawing its noise in
    audiocraft's order (a band's initial noise, then one draw per noisy step; band after band) from the
    engine's per-row generator: [B, C, W, frames * HOP]."""
    B, C = latent.shape[:2]
    W, S = len(starts), frames * HOP
    out = torch.zeros(B, C, W, S)
    for b in range(B):
        for c in range(C):
            for w, start in enumerate(starts):
                g = torch.Generator().manual_seed(D._row_seed(seed, b, c, w, W))
                cond = latent[b, c, :, start : start + frames][None]
                row = torch.zeros(1, 1, S)
                for band in refs:  # out += DP.generate(initial_noise=randn_like(out), ...)
                    row += ref_band_sample(
                        band, cond, lambda g=g: torch.randn(1, 1, S, generator=g), step_list
                    )
                out[b, c, w] = row[0, 0]
    return out


def ref_decode_clip(refs, latent, reference, seed, step_list, re_eq_bands=32):
    """tokens_to_wav after the codec, for clips that fit one window: latent [B, C, D, T], reference [B, C, S]."""
    T = latent.shape[-1]
    rows = ref_window_rows(refs, latent, seed, step_list, [0], T)[:, :, 0]  # [B, C, S]
    with torch.no_grad():
        return torch.stack([ref_re_eq(rows[b], reference[b], SR, re_eq_bands) for b in range(len(rows))])


def colored(shape, seed: int) -> torch.Tensor:
    """Noise with a sloped spectrum (white + integrated), so that every band has its own level."""
    g = torch.Generator().manual_seed(seed)
    white = torch.randn(shape, generator=g)
    brown = torch.randn(shape, generator=g).cumsum(-1)
    brown = brown - brown.mean(-1, keepdim=True)
    return 0.1 * white + 0.02 * brown


class ListNoise:
    """A stand-in for the engine's _RowNoise: draws [G, 1, S] from one seeded generator."""

    def __init__(self, shape, seed):
        self.shape, self.g, self.calls = shape, torch.Generator().manual_seed(seed), 0

    def draw(self):
        self.calls += 1
        return torch.randn(self.shape, generator=self.g)


# ---------------------------------------------------------------------------------------------------------
# 1. the U-Net
# ---------------------------------------------------------------------------------------------------------
UNET_VARIANTS = {
    "transformer": dict(),
    "transformer-no-emb-all-layers": dict(emb_all_layers=False),
    "no-bottleneck-module": dict(transformer=False),
    "bilstm": dict(transformer=False, bilstm=True),
    "cross-attention": dict(cross_attention=True),
    "cross-attention-flag-without-transformer": dict(cross_attention=True, transformer=False, bilstm=True),
    "deeper-capped-2-res-blocks": dict(
        depth=3, growth=1.5, max_channels=16, kernel=4, stride=2, norm_groups=2, res_blocks=2
    ),
}


@pytest.mark.parametrize("variant", list(UNET_VARIANTS))
def test_unet_forward_matches_audiocraft(variant):
    ref, ours = make_pair(seed=3, **UNET_VARIANTS[variant])
    g = torch.Generator().manual_seed(5)
    for samples in (320, 301):  # 301: not a whole number of strides at any level
        x = torch.randn(2, 1, samples, generator=g)
        cond = torch.randn(2, CODEC_DIM, 10, generator=g)
        outs = {}
        for step in (999, 0):
            with torch.no_grad():
                expected = ref(x, step, condition=cond)
                got = ours(x, step, condition=cond)
            assert got.shape == expected.shape == x.shape
            assert expected.abs().mean() > 1e-2  # the reference computes something non-trivial
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            outs[step] = expected
        assert not torch.allclose(outs[999], outs[0])  # the step embedding matters


def test_unet_condition_reaches_the_output():
    """Each conditioning path (added / cross-attended) changes the output, on both sides alike."""
    for overrides in (dict(), dict(cross_attention=True)):
        ref, ours = make_pair(seed=4, **overrides)
        x = torch.randn(1, 1, 320)
        c1, c2 = torch.randn(1, CODEC_DIM, 10), torch.randn(1, CODEC_DIM, 10)
        with torch.no_grad():
            assert not torch.allclose(ref(x, 500, c1), ref(x, 500, c2), atol=1e-4)
            torch.testing.assert_close(ours(x, 500, c2), ref(x, 500, c2), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# 2. the reverse process
# ---------------------------------------------------------------------------------------------------------
def fake_model(x, step, condition=None):
    """A deterministic stand-in for the U-Net's noise estimate."""
    return torch.tanh(0.7 * x + step / 1000.0) + 0.1 * torch.sin(3 * x)


SCHEDULES = {
    "defaults": (ScheduleConfig(), DEFAULT_STEPS),
    "linear-betas": (ScheduleConfig(beta_exp=1.0, beta_t0=1e-4, beta_t1=0.02), DEFAULT_STEPS),
    "noise-scale": (ScheduleConfig(noise_scale=0.8), DEFAULT_STEPS),
    "tight-clip": (ScheduleConfig(clip=0.5), DEFAULT_STEPS),
    "no-clip": (ScheduleConfig(clip=0.0, noise_scale=1.3), DEFAULT_STEPS),
    "rescale": (ScheduleConfig(rescale=3.0), DEFAULT_STEPS),  # audiocraft never reaches its `step == 0`
    "short-step-list": (ScheduleConfig(beta_exp=2.0), [800, 400, 100, 10, 0]),
    "few-steps-custom-num": (ScheduleConfig(num_steps=500, beta_t1=0.05), [499, 250, 7, 2]),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_reverse_schedule_matches_generate_subsampled(name):
    sc, steps = SCHEDULES[name]
    shape = (2, 1, 64)
    g = torch.Generator().manual_seed(11)
    initial = torch.randn(shape, generator=g)
    record = []
    ref_generate_subsampled(
        fake_model, initial, steps, sc, lambda: torch.randn(shape, generator=g), record=record
    )
    ours = ReverseSchedule(sc, steps)
    assert len(ours) == len(record) == len(steps) - 1
    for idx, (r, (step, eps, sqrt_alpha, sigma)) in enumerate(zip(record, ours.coefficients, strict=True)):
        assert step == r["step"]
        torch.testing.assert_close(torch.as_tensor(eps), r["eps"], rtol=1e-6, atol=0)
        torch.testing.assert_close(torch.as_tensor(sqrt_alpha), r["sqrt_alpha"], rtol=1e-6, atol=0)
        assert (sigma is None) == (r["sigma"] is None) == (not ours.adds_noise(idx))
        if sigma is not None:
            torch.testing.assert_close(torch.as_tensor(sigma), torch.as_tensor(r["sigma"]), rtol=1e-6, atol=0)
        # one reverse step from the same state, estimate and noise
        got = ours.step(idx, r["current"], r["estimate"], r["noise"])
        torch.testing.assert_close(got, r["previous"], rtol=1e-6, atol=1e-6)
    assert ours.adds_noise(len(ours) - 1) is False  # the last step adds no noise


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_sample_band_with_a_given_model_matches_reference(name, mbd_pair):
    """The engine's real path (MultiBandDiffusion._sample_band) over a whole reverse process, the model and
    the noise stream given: same initial noise, same per-step noises, same result."""
    sc, steps = SCHEDULES[name]
    mbd = mbd_pair[0]
    shape = (2, 1, 96)
    band = D._Band(unet=fake_model, schedule=ReverseSchedule(sc, steps), processor=None)
    noise = ListNoise(shape, seed=21)
    calls = []
    with torch.no_grad():
        got = mbd._sample_band(band, torch.zeros(2, CODEC_DIM, 3), noise, lambda: calls.append(1))
    g = torch.Generator().manual_seed(21)
    draw = lambda: torch.randn(shape, generator=g)  # noqa: E731
    expected = ref_generate_subsampled(fake_model, draw(), steps, sc, draw)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert len(calls) == len(steps) - 1
    noisy_steps = sum(ReverseSchedule(sc, steps).adds_noise(i) for i in range(len(steps) - 1))
    assert noise.calls == 1 + noisy_steps
    if sc.clip:
        assert got.abs().max() <= sc.clip


def test_sample_band_with_the_unet_and_processor_matches_reference(mbd_pair):
    """20 reverse steps of each real band (U-Net, schedule, processor) from the same noise stream."""
    mbd, refs = mbd_pair
    T = 10
    cond = torch.randn(2, CODEC_DIM, T, generator=torch.Generator().manual_seed(8))
    for i, (band, ref_band) in enumerate(zip(mbd.bands, refs, strict=True)):
        shape = (2, 1, T * HOP)
        with torch.no_grad():
            got = mbd._sample_band(band, cond, ListNoise(shape, seed=30 + i), None)
        g = torch.Generator().manual_seed(30 + i)
        expected = ref_band_sample(
            ref_band, cond, lambda g=g, shape=shape: torch.randn(shape, generator=g), DEFAULT_STEPS
        )
        assert expected.abs().mean() > 1e-3
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_default_step_list():
    assert (
        len(DEFAULT_STEPS) == 21
        and DEFAULT_STEPS[:3] == [999, 949, 899]
        and DEFAULT_STEPS[-3:] == [99, 49, 0]
    )
    assert D.DEFAULT_STEP_LIST == DEFAULT_STEPS
    config = MBDConfig(sample_rate=SR, bands=[])
    assert config.step_list == DEFAULT_STEPS
    schedule = ReverseSchedule(ScheduleConfig(), config.step_list)
    assert len(schedule) == 20
    assert [c[0] for c in schedule.coefficients] == DEFAULT_STEPS[:-1]
    assert [schedule.adds_noise(i) for i in range(20)] == [True] * 19 + [False]


# ---------------------------------------------------------------------------------------------------------
# 3. the band processor
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("power_std", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("n_bands", [8, 3])
def test_band_processor_return_sample(power_std, n_bands):
    stats = random_stats(n_bands, seed=40 + n_bands, zero_std_band=True)
    proc = BandProcessor(ProcessorConfig(use=True, n_bands=n_bands, power_std=power_std), SR)
    for k, v in stats.items():
        getattr(proc, k).copy_(v)
    x = colored((2, 1, 700), seed=41)
    with torch.no_grad():
        got = proc.return_sample(x)
    expected = ref_return_sample(x, SR, n_bands, stats, power_std)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected, x, atol=1e-3)  # the processor does something


# ---------------------------------------------------------------------------------------------------------
# 4. re-EQ
# ---------------------------------------------------------------------------------------------------------
def mbd_at(sample_rate: int, re_eq_bands: int = 32) -> MultiBandDiffusion:
    """A one-band decoder at `sample_rate` (only its re-EQ is used)."""
    kw = unet_kwargs()
    torch.manual_seed(0)
    state = {f"bands.0.model.{k}": v for k, v in DiffusionUnet(UNetConfig(**kw)).state_dict().items()}
    band = BandConfig(unet=UNetConfig(**kw), schedule=ScheduleConfig(), processor=ProcessorConfig())
    return MultiBandDiffusion(
        MBDConfig(sample_rate=sample_rate, bands=[band], re_eq_bands=re_eq_bands), state
    )


def assert_close_to_scale(got, expected, rel=1e-5):
    scale = expected.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=rel * scale)


@pytest.mark.parametrize("sample_rate", [SR, 32_000])
@pytest.mark.parametrize("channels", [1, 2])
def test_re_eq_one_chunk(sample_rate, channels):
    mbd = mbd_at(sample_rate)
    S = int(0.75 * sample_rate)
    assert S < D.RE_EQ_CHUNK_SECONDS * sample_rate
    wav = colored((channels, S), seed=50) * torch.tensor([1.0, 0.3][:channels]).view(-1, 1)
    ref = colored((channels, S), seed=51) * 3 + 0.05 * torch.randn(channels, S)
    got = mbd.re_eq(wav, ref)
    expected = ref_re_eq(wav, ref, sample_rate)
    assert_close_to_scale(got, expected)


@pytest.mark.parametrize(
    "chunk_seconds,seconds",
    [(0.5, 5.3), (0.1, 2.05), (None, 23.7)],  # chunks longer / shorter than the filters; the real 10 s
)
def test_re_eq_chunked(monkeypatch, chunk_seconds, seconds):
    if chunk_seconds is not None:
        monkeypatch.setattr(D, "RE_EQ_CHUNK_SECONDS", chunk_seconds)
    mbd = mbd_at(SR)
    S = int(seconds * SR)
    assert S > 2 * D.RE_EQ_CHUNK_SECONDS * SR  # several chunks
    wav = colored((2, S), seed=52) * torch.tensor([1.0, 0.5]).view(-1, 1)
    ref = colored((2, S), seed=53) * 2
    got = mbd.re_eq(wav, ref)
    expected = ref_re_eq(wav, ref, SR)
    assert_close_to_scale(got, expected)


@pytest.mark.parametrize("chunk_seconds", [None, 0.3])
def test_re_eq_gains_are_shared_by_the_channels(monkeypatch, chunk_seconds):
    """One gain per band for the clip: with wav's right channel twice its left, the output's is too (per
    channel gains would make the two channels equal here, the references being in the opposite ratio)."""
    if chunk_seconds is not None:
        monkeypatch.setattr(D, "RE_EQ_CHUNK_SECONDS", chunk_seconds)
    mbd = mbd_at(SR)
    left, ref_left = colored((1, 2000), seed=54), colored((1, 2000), seed=55)
    wav = torch.cat([left, 2 * left])
    ref = torch.cat([ref_left, 0.5 * ref_left])
    out = mbd.re_eq(wav, ref)
    assert_close_to_scale(out[1], 2 * out[0])
    assert_close_to_scale(out, ref_re_eq(wav, ref, SR))


# ---------------------------------------------------------------------------------------------------------
# 5. the whole decode
# ---------------------------------------------------------------------------------------------------------
def decode_inputs(B, C, T, seed):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(B, C, CODEC_DIM, T, generator=g)
    reference = colored((B, C, T * HOP), seed=seed + 1)
    return latent, reference


@pytest.mark.parametrize("B,C", [(2, 1), (1, 2), (2, 2)])
def test_decode_matches_tokens_to_wav(mbd_pair, B, C):
    mbd, refs = mbd_pair
    T = 12
    latent, reference = decode_inputs(B, C, T, seed=60 + 10 * B + C)
    got = mbd.decode(latent, reference, seed=1234, hop=HOP)
    expected = ref_decode_clip(refs, latent, reference, 1234, DEFAULT_STEPS)
    assert got.shape == (B, C, T * HOP) and got.dtype == torch.float32
    assert_close_to_scale(got, expected, rel=1e-5)


def test_decode_stereo_shares_re_eq_gains(mbd_pair, monkeypatch):
    """A stereo clip's two channels are re-equalised with one set of gains: re_eq sees the clip [C, S]."""
    mbd = mbd_pair[0]
    seen = []
    original = MultiBandDiffusion.re_eq

    def spy(self, wav, ref, strictness=1.0):
        seen.append((wav.shape, ref.shape))
        return original(self, wav, ref, strictness)

    monkeypatch.setattr(MultiBandDiffusion, "re_eq", spy)
    latent, reference = decode_inputs(2, 2, 8, seed=70)
    mbd.decode(latent, reference, seed=5, hop=HOP)
    assert seen == [(torch.Size([2, 8 * HOP]), torch.Size([2, 8 * HOP]))] * 2


def test_decode_seeding(mbd_pair):
    mbd = mbd_pair[0]
    latent, reference = decode_inputs(1, 2, 8, seed=80)
    a = mbd.decode(latent, reference, seed=7, hop=HOP)
    b = mbd.decode(latent, reference, seed=7, hop=HOP)
    c = mbd.decode(latent, reference, seed=8, hop=HOP)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3 * a.abs().max()


def test_concurrent_decodes_run_one_at_a_time_and_equal_their_solo_results(mbd_pair, monkeypatch):
    """Two threads decoding with one decoder take turns (never two reverse processes at once) and each gets
    what it gets alone."""
    import threading

    mbd = mbd_pair[0]
    inputs = [decode_inputs(1, 2, 8, seed=95), decode_inputs(1, 1, 8, seed=96)]
    alone = [mbd.decode(latent, reference, seed=9, hop=HOP) for latent, reference in inputs]
    active, most = [0], [0]
    original = MultiBandDiffusion._sample_band

    def counted(self, *args):
        active[0] += 1
        most[0] = max(most[0], active[0])
        try:
            return original(self, *args)
        finally:
            active[0] -= 1

    monkeypatch.setattr(MultiBandDiffusion, "_sample_band", counted)
    together = [None, None]

    def run(i):
        together[i] = mbd.decode(*inputs[i], seed=9, hop=HOP)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert most[0] == 1
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)


def test_decode_independent_of_row_grouping(mbd_pair):
    mbd = mbd_pair[0]
    latent, reference = decode_inputs(2, 2, 8, seed=90)
    saved = mbd.max_rows
    try:
        results = []
        for rows in (1, 3, 8):
            mbd.max_rows = rows
            results.append(mbd.decode(latent, reference, seed=3, hop=HOP))
    finally:
        mbd.max_rows = saved
    # the same noise for every row whatever the grouping; batched kernels round differently (~1e-7), so not
    # bitwise; a row drawing another row's noise would differ by the signal's own scale
    for r in results[1:]:
        assert_close_to_scale(r, results[0], rel=1e-5)


def test_row_seeds_are_distinct():
    seeds = {D._row_seed(42, b, c, w, 3) for b in range(4) for c in range(2) for w in range(3)}
    assert len(seeds) == 24
    assert D._row_seed(42, 0, 0, 0, 1) == 42
    assert all(0 <= s < 2**63 for s in seeds)


# ---------------------------------------------------------------------------------------------------------
# 6. long clips: windows, stitching
# ---------------------------------------------------------------------------------------------------------
def configured_overlap(window: int) -> int:
    return max(1, round(window * D.OVERLAP_SECONDS / D.WINDOW_SECONDS))


@pytest.mark.parametrize("window", [1500, 10, 37])
def test_window_starts(window):
    assert window_starts(1, window) == [0]
    assert window_starts(window, window) == [0]
    overlap = configured_overlap(window)
    for total in [
        window + 1,
        window + overlap,
        2 * window - overlap,
        2 * window,
        5 * window + 3,
        11 * window - 1,
    ]:
        starts = window_starts(total, window)
        assert len(starts) >= 2
        assert starts[0] == 0 and starts[-1] == total - window  # equal windows, the last ending at the end
        assert all(b > a for a, b in zip(starts, starts[1:], strict=False))
        for a, b in zip(starts, starts[1:], strict=False):
            assert a + window - b >= overlap  # overlaps at least the configured overlap
        assert all(b - a == window - overlap for a, b in zip(starts[:-1], starts[1:-1], strict=False))
        covered = torch.zeros(total, dtype=torch.bool)
        for s in starts:
            covered[s : s + window] = True
        assert covered.all()


def test_window_starts_follow_the_settings(monkeypatch):
    monkeypatch.setattr(D, "WINDOW_SECONDS", 0.2)
    monkeypatch.setattr(D, "OVERLAP_SECONDS", 0.06)
    assert D._window_frames(SR, HOP) == 10
    assert window_starts(25, 10) == [0, 7, 14, 15]


def stitched_layout(total_frames, window):
    starts = window_starts(total_frames, window)
    return starts, [(s * HOP, (s + window) * HOP) for s in starts]


def test_stitch_windows_of_one_signal_give_it_back():
    window, total = 10, 37
    starts, spans = stitched_layout(total, window)
    signal = torch.randn(2, 2, total * HOP)
    windows = torch.stack([signal[..., a:b] for a, b in spans], dim=2)
    torch.testing.assert_close(stitch(windows, starts, HOP, total * HOP), signal, rtol=0, atol=1e-6)
    ones = torch.ones(1, 1, len(starts), window * HOP)
    torch.testing.assert_close(stitch(ones, starts, HOP, total * HOP), torch.ones(1, 1, total * HOP))


def test_stitch_cross_fades():
    window, total = 10, 37
    starts, spans = stitched_layout(total, window)
    S = total * HOP
    windows = torch.randn(1, 1, len(starts), window * HOP)
    out = stitch(windows, starts, HOP, S)[0, 0]
    owners = [[w for w, (a, b) in enumerate(spans) if a <= i < b] for i in range(S)]
    for i, who in enumerate(owners):
        values = torch.stack([windows[0, 0, w, i - spans[w][0]] for w in who])
        if len(who) == 1:  # outside the overlaps: exactly that window's sample
            assert out[i] == values[0]
        else:  # inside: between the windows' samples
            assert values.min() - 1e-6 <= out[i] <= values.max() + 1e-6
    # from the earlier window to the later one: window w = 0, window w + 1 = 1 -> a rising ramp in (0, 1)
    steps = torch.arange(len(starts), dtype=torch.float).view(1, 1, -1, 1).expand(1, 1, -1, window * HOP)
    out = stitch(steps.contiguous(), starts, HOP, S)[0, 0]
    a, end = spans[1][0], spans[0][1]
    ramp = out[a:end]
    assert (ramp > 0).all() and (ramp < 1).all() and (ramp.diff() > 0).all()


def test_stitch_one_window():
    x = torch.randn(1, 2, 1, 100)
    assert torch.equal(stitch(x, [0], HOP, 90), x[:, :, 0, :90])


def test_long_decode_in_windows(mbd_pair, monkeypatch):
    monkeypatch.setattr(D, "WINDOW_SECONDS", 0.2)  # 10 frames
    monkeypatch.setattr(D, "OVERLAP_SECONDS", 0.06)  # 3 frames
    mbd, refs = mbd_pair
    B, C, T = 1, 2, 25
    latent, reference = decode_inputs(B, C, T, seed=100)
    calls = []
    got = mbd.decode(latent, reference, seed=9, hop=HOP, on_step=lambda: calls.append(1))
    assert got.shape == (B, C, T * HOP)
    assert torch.isfinite(got).all()
    assert len(calls) == mbd.reverse_steps(T, B * C, HOP)
    # the same as the reference rows of every window, stitched, then re-equalised over the whole clip
    starts = window_starts(T, 10)
    assert len(starts) == 4
    rows = ref_window_rows(refs, latent, 9, DEFAULT_STEPS, starts, 10)
    audio = stitch(rows, starts, HOP, T * HOP)
    with torch.no_grad():
        expected = torch.stack([ref_re_eq(audio[b], reference[b], SR) for b in range(B)])
    assert_close_to_scale(got, expected, rel=1e-5)


@pytest.mark.parametrize("max_rows", [1, 2, 3, 8])
@pytest.mark.parametrize("T", [8, 25])
def test_reverse_steps_counts_on_step_calls(mbd_pair, monkeypatch, max_rows, T):
    monkeypatch.setattr(D, "WINDOW_SECONDS", 0.2)
    monkeypatch.setattr(D, "OVERLAP_SECONDS", 0.06)
    mbd = mbd_pair[0]

    def steps_only(self, band, cond, noise, on_step):  # a cheap stand-in: only the steps are counted here
        for _ in band.schedule.coefficients:
            on_step()
        return torch.zeros(cond.shape[0], 1, noise.samples)

    monkeypatch.setattr(MultiBandDiffusion, "_sample_band", steps_only)
    monkeypatch.setattr(mbd, "max_rows", max_rows)
    B, C = 2, 2
    latent, reference = decode_inputs(B, C, T, seed=110)
    calls = []
    mbd.decode(latent, reference, seed=1, hop=HOP, on_step=lambda: calls.append(1))
    assert len(calls) == mbd.reverse_steps(T, B * C, HOP)
    windows = len(window_starts(T, 10))
    assert len(calls) == 3 * 20 * math.ceil(B * C * windows / max_rows)


# ---------------------------------------------------------------------------------------------------------
# 7. FLOPs
# ---------------------------------------------------------------------------------------------------------
def counted_flops(model: nn.Module, samples: int, frames: int) -> int:
    """torch's FlopCounterMode over one forward (attention through the math kernel, LSTM through its
    decomposition, so that both are counted on CPU)."""
    x = torch.randn(1, 1, samples)
    cond = torch.randn(1, CODEC_DIM, frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with (
            torch.no_grad(),
            torch.backends.mkldnn.flags(enabled=False),
            sdpa_kernel(SDPBackend.MATH),
            FlopCounterMode(display=False) as counter,
        ):
            model(x, 500, condition=cond)
    return counter.get_total_flops()


FLOP_VARIANTS = {
    "transformer": dict(),
    "cross-attention": dict(cross_attention=True),
    "bilstm": dict(transformer=False, bilstm=True),
    "no-bottleneck-module": dict(transformer=False),
}


@pytest.mark.parametrize("variant", list(FLOP_VARIANTS))
def test_unet_flops_matches_flop_counter(variant):
    """A modest U-Net (3 levels, 32 channels at the bottleneck) on one second: frames at MusicGen's ratio
    (50 latent frames for 125 bottleneck positions), here 10 frames for 25 positions."""
    kw = unet_kwargs(depth=3, **FLOP_VARIANTS[variant])
    model = DiffusionUnet(UNetConfig(**kw)).eval()
    samples, frames = 1600, 10
    counted = counted_flops(model, samples, frames)
    assert 0.85 <= unet_flops(UNetConfig(**kw), samples, frames) / counted <= 1.15


@pytest.mark.parametrize("variant", ["bilstm", "cross-attention"])
def test_unet_flops_bottleneck_terms_match_flop_counter(variant):
    """The formula's bottleneck term alone (what `variant` adds over the same U-Net with less at its
    bottleneck): BiLSTM over no module; cross-attention over self-attention only."""
    base = dict(transformer=False) if variant == "bilstm" else dict()
    kw_base = unet_kwargs(depth=3, hidden=16, **base)
    kw = unet_kwargs(depth=3, hidden=16, **FLOP_VARIANTS[variant])
    samples, frames = 1600, 10
    counted = counted_flops(DiffusionUnet(UNetConfig(**kw)).eval(), samples, frames) - counted_flops(
        DiffusionUnet(UNetConfig(**kw_base)).eval(), samples, frames
    )
    formula = unet_flops(UNetConfig(**kw), samples, frames) - unet_flops(
        UNetConfig(**kw_base), samples, frames
    )
    assert counted > 0
    assert 0.85 <= formula / counted <= 1.15, f"formula {formula:.4g} vs counted {counted:.4g}"


def test_flops_per_second_matches_flop_counter(mbd_pair):
    mbd = mbd_pair[0]
    frames = round(SR / HOP)
    counted = sum(len(b.schedule) * counted_flops(b.unet, SR, frames) for b in mbd.bands)
    assert 0.85 <= mbd.flops_per_second(HOP) / counted <= 1.15
