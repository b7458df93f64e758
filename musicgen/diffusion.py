"""MultiBand Diffusion: EnCodec codes -> waveform by diffusion instead of EnCodec's decoder.

audiocraft's `MultiBandDiffusion` (Roman et al. 2023, arXiv 2308.02560), decoding MusicGen's codes:

1. the codes' continuous EnCodec latent (the sum of the codebook vectors, [D=128, T] at 50 Hz) conditions
   one U-Net per frequency band (`diffusion_unet.DiffusionUnet`, four mel-spaced bands in the release);
2. each band starts from Gaussian noise and takes the reverse steps of its own noise schedule at the
   diffusion steps of `step_list` (20 steps: 999, 949, ..., 49, then 0 ends it) (`ReverseSchedule`);
3. a band trained on rescaled sub-bands (`processor.use`) is mapped back by its `BandProcessor`;
4. the bands are summed, then re-equalised: 32 mel bands each scaled so that its standard deviation
   matches the same band of EnCodec's own decode (`re_eq`).

What this adds to audiocraft's: clips longer than `window_frames` are decoded in windows that overlap by
`overlap_frames` and are cross-faded (memory stays bounded at 300 s; a clip that fits one window is decoded
whole, as audiocraft does); every (clip, channel, window) draws its noise from its own generator, seeded
from the generation seed, so the same seed gives the same audio however the rows are grouped; a stereo
clip's channels are decoded as two mono rows (the model is mono) and share their re-EQ gains.

The checkpoint is the converted form of the release (`checkpoints.mbd_release`): `config.json` (an
`MBDConfig`) and `model.safetensors` (`bands.<i>.model.*`, `bands.<i>.processor.*`).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import julius
import torch
from torch import nn

from .diffusion_unet import DiffusionUnet, UNetConfig, unet_flops
from .errors import CheckpointError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "musicgen-mbd"
FORMAT_VERSION = 1

# audiocraft's generate_subsampled default: every 50th step from 999 down, then 0 (20 reverse steps)
DEFAULT_STEP_LIST = list(range(1000))[::-50] + [0]
RE_EQ_BANDS = 32  # audiocraft's tokens_to_wav default
# 30 s windows (MusicGen's own window, what audiocraft decodes whole) overlapping by 1 s past 30 s
WINDOW_SECONDS = 30.0
OVERLAP_SECONDS = 1.0
RE_EQ_CHUNK_SECONDS = 10.0  # the re-EQ's band split runs on chunks of this length (32 bands each)


@dataclass
class ScheduleConfig:
    """A band's noise schedule: betas from beta_t0 to beta_t1 over num_steps, spaced as a power law."""

    beta_t0: float = 1e-5
    beta_t1: float = 2.9e-2
    beta_exp: float = 7.5
    num_steps: int = 1000
    clip: float = 5.0
    rescale: float = 1.0
    noise_scale: float = 1.0
    repartition: str = "power"


@dataclass
class ProcessorConfig:
    """A band's sample processor: `use` false for none; else a MultiBandProcessor over `n_bands` sub-bands
    whose statistics are in the checkpoint, corrected to the power `power_std` (one value or one per band)."""

    use: bool = False
    n_bands: int = 8
    power_std: float | list[float] = 1.0


@dataclass
class BandConfig:
    unet: UNetConfig
    schedule: ScheduleConfig
    processor: ProcessorConfig


@dataclass
class MBDConfig:
    """Everything that rebuilds a MultiBand Diffusion decoder (saved as config.json)."""

    sample_rate: int
    bands: list[BandConfig]
    step_list: list[int] = field(default_factory=lambda: list(DEFAULT_STEP_LIST))
    re_eq_bands: int = RE_EQ_BANDS
    source: str = ""

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sample_rate": self.sample_rate,
            "step_list": list(self.step_list),
            "re_eq_bands": self.re_eq_bands,
            "source": self.source,
            "bands": [
                {
                    "diffusion_unet": b.unet.to_dict(),
                    "schedule": vars(b.schedule).copy(),
                    "processor": vars(b.processor).copy(),
                }
                for b in self.bands
            ],
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> MBDConfig:
        if d.get("format") != FORMAT:
            raise CheckpointError(
                f"{where}: not a converted MultiBand Diffusion config (format {d.get('format')!r}, expected "
                f"{FORMAT!r}); convert the release with `python scripts/download_weights.py mbd`"
            )
        if d.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{where}: format_version {d.get('format_version')!r}, this code reads 1")
        try:
            bands = [
                BandConfig(
                    unet=UNetConfig.from_dict(b["diffusion_unet"]),
                    schedule=ScheduleConfig(**b["schedule"]),
                    processor=ProcessorConfig(**b["processor"]),
                )
                for b in d["bands"]
            ]
            config = cls(
                sample_rate=int(d["sample_rate"]),
                bands=bands,
                step_list=[int(s) for s in d.get("step_list", DEFAULT_STEP_LIST)],
                re_eq_bands=int(d.get("re_eq_bands", RE_EQ_BANDS)),
                source=str(d.get("source", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{where}: not a valid MultiBand Diffusion config ({type(e).__name__}: {e})"
            ) from None
        config.check(where)
        return config

    @classmethod
    def read(cls, folder: str | Path) -> MBDConfig:
        """The config of the converted folder `folder` (its config.json), checked; `source` names where the
        weights came from, else the folder."""
        path = Path(folder) / CONFIG_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(
                f"{path}: not found; a converted MultiBand Diffusion folder holds {CONFIG_FILE} and "
                f"{WEIGHTS_FILE} (`python scripts/download_weights.py mbd` makes one)"
            ) from None
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not readable JSON ({e})") from None
        config = cls.from_dict(raw, str(path))
        config.source = config.source or str(folder)
        return config

    def check(self, where: str = "config") -> None:
        """Refuses settings this code does not run, so a model never runs with the wrong maths."""
        if not self.bands:
            raise CheckpointError(f"{where}: no bands")
        steps = self.step_list
        if len(steps) < 2 or any(a <= b for a, b in zip(steps, steps[1:], strict=False)) or steps[-1] < 0:
            raise CheckpointError(f"{where}: step_list must decrease strictly to a step >= 0, got {steps}")
        for i, b in enumerate(self.bands):
            if b.schedule.repartition != "power":
                raise CheckpointError(
                    f"{where}: band {i} schedule {b.schedule.repartition!r}; only 'power' runs"
                )
            if steps[0] >= b.schedule.num_steps or b.unet.num_steps != b.schedule.num_steps:
                raise CheckpointError(
                    f"{where}: band {i} has {b.schedule.num_steps} steps; step_list {steps}"
                )
            if b.unet.chin != 1:
                raise CheckpointError(f"{where}: band {i} has {b.unet.chin} channels; the models are mono")
            p = b.processor.power_std
            if isinstance(p, list) and len(p) != b.processor.n_bands:
                raise CheckpointError(
                    f"{where}: band {i} power_std has {len(p)} values for {b.processor.n_bands}"
                )


class BandProcessor(nn.Module):
    """audiocraft's MultiBandProcessor, inference side: maps a band's sample from the diffusion's space back
    to audio, sub-band by sub-band, with the statistics gathered during training."""

    def __init__(self, cfg: ProcessorConfig, sample_rate: int):
        super().__init__()
        n = cfg.n_bands
        self.split = julius.SplitBands(sample_rate, n_bands=n)
        # one shared power stays a python float, as audiocraft's float config gives it to `**`
        p = cfg.power_std
        self.power = torch.tensor(p, dtype=torch.float) if isinstance(p, list) else float(p)
        self.register_buffer("counts", torch.zeros(1))
        self.register_buffer("sum_x", torch.zeros(n))
        self.register_buffer("sum_x2", torch.zeros(n))
        self.register_buffer("sum_target_x2", torch.zeros(n))

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, std, target) per sub-band, as audiocraft defines them (its `target_std` is the mean square
        of noise's sub-band, no square root: kept, the checkpoint was trained with it)."""
        mean = self.sum_x / self.counts
        std = (self.sum_x2 / self.counts - mean**2).clamp(min=0).sqrt()
        return mean, std, self.sum_target_x2 / self.counts

    def return_sample(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 1, S] -> [B, 1, S]."""
        mean, std, target = self.statistics()
        bands = self.split(x)  # [n, B, 1, S]
        rescale = (std / target) ** (self.power.to(std.device) if torch.is_tensor(self.power) else self.power)
        return (bands * rescale.view(-1, 1, 1, 1) + mean.view(-1, 1, 1, 1)).sum(dim=0)


class ReverseSchedule:
    """The reverse steps of one band at the steps of `step_list` (audiocraft's `generate_subsampled`), with
    its coefficients computed once, in float32 as audiocraft computes them."""

    def __init__(self, cfg: ScheduleConfig, step_list: list[int]):
        self.cfg = cfg
        self.step_list = list(step_list)
        e = cfg.beta_exp
        betas = (
            torch.linspace(cfg.beta_t0 ** (1 / e), cfg.beta_t1 ** (1 / e), cfg.num_steps, dtype=torch.float)
            ** e
        )
        self.betas = betas
        alpha_bars = (1 - betas).cumprod(dim=0)
        # the betas between consecutive kept steps: 1 - alpha_bar(s_j) / alpha_bar(s_{j-1}), oldest first
        kept = alpha_bars[list(reversed(self.step_list))]
        sub_betas = 1 - torch.cat([kept[:1], kept[1:] / kept[:-1]])
        self.coefficients = []  # per reverse step: (step, eps coefficient, 1/sqrt(alpha) divisor, sigma)
        alpha_bar = self._alpha_bar(cfg.num_steps - 1)
        last = len(self.step_list) - 2
        for idx, step in enumerate(self.step_list[:-1]):
            alpha = 1 - sub_betas[-1 - idx]
            eps = (1 - alpha) / (1 - alpha_bar).sqrt()
            previous_alpha_bar = self._alpha_bar(self.step_list[idx + 1])
            if idx == last:
                sigma = None  # the last step adds no noise
                previous_alpha_bar = torch.tensor(1.0)
            else:
                sigma2 = (1 - previous_alpha_bar) / (1 - alpha_bar) * (1 - alpha)
                sigma = sigma2**0.5 if sigma2 > 0 else None
            self.coefficients.append((step, eps, alpha.sqrt(), sigma))
            alpha_bar = previous_alpha_bar

    def _alpha_bar(self, step: int) -> torch.Tensor:
        return (1 - self.betas[: step + 1]).prod()

    def __len__(self) -> int:
        return len(self.coefficients)

    def step(self, idx: int, current: torch.Tensor, estimate: torch.Tensor, noise: torch.Tensor | None):
        """One reverse step: x_{t} -> x_{t'} from the U-Net's noise estimate (already times noise_scale);
        `noise` (standard normal, like current) is used when the step adds noise."""
        _, eps, sqrt_alpha, sigma = self.coefficients[idx]
        previous = (current - eps * estimate) / sqrt_alpha
        if sigma is not None:
            previous = previous + sigma * noise * self.cfg.noise_scale
        if self.cfg.clip:
            previous = previous.clamp(-self.cfg.clip, self.cfg.clip)
        return previous

    def adds_noise(self, idx: int) -> bool:
        return self.coefficients[idx][3] is not None


@dataclass
class _Band:
    unet: DiffusionUnet
    schedule: ReverseSchedule
    processor: BandProcessor | None


class MultiBandDiffusion:
    """A loaded MultiBand Diffusion decoder. `decode(latent, reference, seed)` is the whole decode."""

    def __init__(self, config: MBDConfig, state: dict[str, torch.Tensor], device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.bands: list[_Band] = []
        for i, b in enumerate(config.bands):
            unet = DiffusionUnet(b.unet)
            _load(unet, state, f"bands.{i}.model.", config.source)
            processor = None
            if b.processor.use:
                processor = BandProcessor(b.processor, config.sample_rate)
                _load(processor, state, f"bands.{i}.processor.", config.source, buffers_only=True)
                processor.to(self.device)
            # bf16 weights on CUDA (the forward runs under bf16 autocast there, which keeps norms in fp32):
            # half the memory, and no re-cast of every weight at each reverse step
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float
            unet = unet.eval().to(self.device, dtype)
            self.bands.append(_Band(unet, ReverseSchedule(b.schedule, config.step_list), processor))
        # every tensor must have been read: a processor's statistics for a band without one, or a band the
        # config does not have, mean the weights and the config disagree
        read = tuple(f"bands.{i}.model." for i in range(len(config.bands))) + tuple(
            f"bands.{i}.processor." for i, b in enumerate(config.bands) if b.processor.use
        )
        left = [k for k in state if not k.startswith(read)]
        if left:
            raise CheckpointError(
                f"{config.source}: unexpected tensors {left[:5]} (no band of the config reads them)"
            )
        self.re_eq_split = julius.SplitBands(config.sample_rate, n_bands=config.re_eq_bands).to(self.device)
        self.max_rows = 8 if self.device.type == "cuda" else 2
        # one decode at a time: concurrent requests' decodes are each compute-bound, so running them side by
        # side only splits the device (on CPU, torch's threads of two decodes then wait on each other, several
        # times slower in all) and adds their activations up; in turn, each finishes as soon as it can
        self._decoding = threading.Lock()

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> MultiBandDiffusion:
        """Reads a converted checkpoint folder (config.json + model.safetensors)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise CheckpointError(
                    f"{path}: not found; a converted MultiBand Diffusion folder holds {CONFIG_FILE} and "
                    f"{WEIGHTS_FILE} (`python scripts/download_weights.py mbd` makes one)"
                )
        config = MBDConfig.read(folder)
        again = "convert it again (`python scripts/download_weights.py mbd` after removing the folder)"
        try:
            state = load_file(weights_path)
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise CheckpointError(f"{weights_path}: not a readable safetensors file ({e}); {again}") from None
        try:
            return cls(config, state, device)
        except CheckpointError as e:  # name the folder to remove, not only the release it came from
            raise CheckpointError(f"{folder}: {e}; {again}") from None

    @classmethod
    def from_weights(cls, device: str | torch.device = "cpu", download: bool = True) -> MultiBandDiffusion:
        """The release's decoder from the weights folder (or the Hugging Face cache), converted and
        downloaded first when needed (`weights.resolve_mbd`)."""
        from .weights import resolve_mbd

        return cls.load(resolve_mbd(download=download), device)

    def check_codec(self, latent_dim: int, sample_rate: int) -> None:
        """Refuses a model whose codec this decoder was not trained on, before any work."""
        if latent_dim != self.codec_dim or sample_rate != self.config.sample_rate:
            raise CheckpointError(
                f"MultiBand Diffusion ({self.config.source}) decodes a {self.codec_dim}-dim EnCodec latent at "
                f"{self.config.sample_rate} Hz; this model's codec gives {latent_dim} dims at {sample_rate} Hz, "
                "so it cannot decode its codes: use the EnCodec decoder"
            )

    @property
    def codec_dim(self) -> int | None:
        return self.config.bands[0].unet.codec_dim

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for b in self.bands for p in b.unet.parameters())

    # ---- the decode ---------------------------------------------------------------------------------
    def reverse_steps(self, latent_frames: int, rows: int, hop: int) -> int:
        """Reverse steps (U-Net forwards over a group of rows) that `decode` takes: a progress total."""
        windows = len(window_starts(latent_frames, _window_frames(self.config.sample_rate, hop)))
        groups = math.ceil(rows * windows / self.max_rows)
        return sum(len(b.schedule) for b in self.bands) * groups

    @torch.inference_mode()
    def decode(
        self,
        latent: torch.Tensor,
        reference: torch.Tensor,
        seed: int,
        hop: int,
        on_step: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """latent: [B, C, D, T] (each channel's EnCodec latent); reference: EnCodec's decode [B, C, S],
        S = T * hop, the level the re-EQ matches. Returns [B, C, S] float32 on CPU."""
        B, C, D, T = latent.shape
        if D != self.codec_dim:
            raise CheckpointError(
                f"the MultiBand Diffusion checkpoint expects a {self.codec_dim}-dim codec latent; this model's "
                f"EnCodec gives {D}: it was trained for another codec"
            )
        window = _window_frames(self.config.sample_rate, hop)
        starts = window_starts(T, window)
        frames = min(T, window)
        # rows: (clip, channel, window), each with its own noise generator
        rows = [(b, c, w) for b in range(B) for c in range(C) for w in range(len(starts))]
        generators = [
            torch.Generator(self.device).manual_seed(_row_seed(seed, b, c, w, len(starts)))
            for b, c, w in rows
        ]
        with self._decoding:
            out = torch.zeros(len(rows), 1, frames * hop, device=self.device)  # [rows, 1, S_window]
            for band in self.bands:
                for first in range(0, len(rows), self.max_rows):
                    group = range(first, min(first + self.max_rows, len(rows)))
                    cond = torch.stack(
                        [
                            latent[b, c, :, starts[w] : starts[w] + frames]
                            for b, c, w in rows[first : group.stop]
                        ]
                    ).to(self.device, torch.float)  # [G, D, frames]
                    noise = _RowNoise([generators[r] for r in group], frames * hop, self.device)
                    out[first : group.stop] += self._sample_band(band, cond, noise, on_step)
            audio = stitch(out.view(B, C, len(starts), frames * hop), starts, hop, T * hop)  # [B, C, S]
            return torch.stack([self.re_eq(audio[b], reference[b].to(self.device)) for b in range(B)]).cpu()

    def _sample_band(self, band: _Band, cond: torch.Tensor, noise: _RowNoise, on_step) -> torch.Tensor:
        """The band's reverse process from fresh noise: [G, 1, S]."""
        schedule, scale = band.schedule, band.schedule.cfg.noise_scale
        current = noise.draw() * scale
        for idx, (step, *_rest) in enumerate(schedule.coefficients):
            # bf16 on CUDA, as the language model runs there (the schedule's arithmetic stays float32)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"):
                estimate = band.unet(current, step, condition=cond)
            estimate = estimate.float() * scale
            fresh = noise.draw() if schedule.adds_noise(idx) else None
            current = schedule.step(idx, current, estimate, fresh)
            if on_step is not None:
                on_step()
        return current if band.processor is None else band.processor.return_sample(current)

    def re_eq(self, wav: torch.Tensor, reference: torch.Tensor, strictness: float = 1.0) -> torch.Tensor:
        """wav, reference: [C, S] one clip. Each of the `re_eq_bands` mel bands of wav is scaled so that its
        standard deviation (over the clip's channels and samples) is the reference's."""
        split = self.re_eq_split
        chunk = int(RE_EQ_CHUNK_SECONDS * self.config.sample_rate)
        std_wav = _band_std(split, wav, chunk)
        std_ref = _band_std(split, reference, chunk)
        gains = (std_ref / std_wav) ** strictness  # [n_bands]
        out = torch.empty_like(wav)
        for a, bands in _band_chunks(split, wav, chunk):
            out[:, a : a + bands.shape[-1]] = (bands * gains.view(-1, 1, 1).to(bands.dtype)).sum(dim=0)
        return out

    def flops_per_second(self, hop: int) -> float:
        """Floating-point operations of one second of mono audio (every band, every reverse step)."""
        rate = self.config.sample_rate
        frames = max(1, round(rate / hop))
        return sum(len(b.schedule) * unet_flops(b.unet.cfg, rate, frames) for b in self.bands)


class _RowNoise:
    """Standard-normal draws [G, 1, S] for a group of rows, each row's from its own generator."""

    def __init__(self, generators: list[torch.Generator], samples: int, device: torch.device):
        self.generators, self.samples, self.device = generators, samples, device

    def draw(self) -> torch.Tensor:
        shape = (1, 1, self.samples)
        return torch.cat([torch.randn(shape, generator=g, device=self.device) for g in self.generators])


def _window_frames(sample_rate: int, hop: int) -> int:
    return round(WINDOW_SECONDS * sample_rate / hop)


def window_starts(total: int, window: int) -> list[int]:
    """Start frames of the windows covering `total` frames: one when it fits; else every
    window - overlap frames, the last one ending at the end (all windows equal in length)."""
    if total <= window:
        return [0]
    overlap = max(1, round(window * OVERLAP_SECONDS / WINDOW_SECONDS))
    hop = window - overlap
    starts = list(range(0, total - window, hop))
    return starts + [total - window]


def stitch(windows: torch.Tensor, starts: list[int], hop: int, length: int) -> torch.Tensor:
    """windows: [B, C, W, S_w] decoded windows starting at `starts` (frames) -> [B, C, length], each overlap
    cross-faded linearly from the earlier window to the later one."""
    B, C, W, Sw = windows.shape
    if W == 1:
        return windows[:, :, 0, :length]
    out = windows.new_zeros(B, C, length)
    end = 0  # where the audio written so far ends
    for w, start in enumerate(starts):
        a = start * hop
        piece = windows[:, :, w]
        overlap = end - a
        if overlap > 0:
            fade = torch.linspace(0, 1, overlap + 2, device=out.device)[1:-1]  # excludes the 0 and 1 ends
            out[..., a:end] = out[..., a:end] * (1 - fade) + piece[..., :overlap] * fade
            out[..., end : a + Sw] = piece[..., overlap:]
        else:
            out[..., a : a + Sw] = piece
        end = a + Sw
    return out


def _row_seed(seed: int, clip: int, channel: int, window: int, windows: int) -> int:
    # a distinct 63-bit seed per row; row 0 of a one-row decode draws from the seed itself
    index = (clip * 2 + channel) * windows + window
    return (seed + index * 0x9E3779B97F4A7C15) % 2**63


def _band_chunks(split: julius.SplitBands, x: torch.Tensor, chunk: int):
    """(start, bands [n, C, n_samples]) over `x` [C, S] in chunks of `chunk` samples: each chunk's band split
    sees `half_size` samples of real context on both sides, so the bands equal those of the whole signal
    (julius pads the signal's own ends by replication, as it would for the whole)."""
    S = x.shape[-1]
    margin = split.lowpass.half_size if split.lowpass is not None else 0
    for a in range(0, S, chunk):
        b = min(a + chunk, S)
        lo, hi = max(0, a - margin), min(S, b + margin)
        bands = split(x[:, lo:hi])
        yield a, bands[..., a - lo : b - lo]


def _band_std(split: julius.SplitBands, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Standard deviation of each band of x [C, S] over all its samples (torch.std's unbiased estimate),
    accumulated chunk by chunk in float64."""
    total = sq = None
    count = 0
    for _, bands in _band_chunks(split, x, chunk):
        b = bands.double().flatten(1)  # [n, C * samples]
        s, q = b.sum(dim=1), (b * b).sum(dim=1)
        total, sq = (s, q) if total is None else (total + s, sq + q)
        count += b.shape[1]
    var = (sq - total * total / count) / max(count - 1, 1)
    return var.clamp(min=0).sqrt().float()


def _load(module: nn.Module, state: dict, prefix: str, source: str, buffers_only: bool = False) -> None:
    """Loads `prefix`ed tensors of `state` into `module`, naming what is missing, extra or mis-shaped."""
    own = dict(module.named_buffers()) if buffers_only else module.state_dict()
    if buffers_only:
        own = {k: v for k, v in own.items() if not k.startswith("split.")}  # julius' filters: not saved
    given = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(given))
    extra = sorted(set(given) - set(own))
    shapes = [k for k in set(own) & set(given) if own[k].shape != given[k].shape]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {[prefix + k for k in missing[:5]]}")
        if extra:
            parts.append(f"unexpected {[prefix + k for k in extra[:5]]}")
        for k in shapes[:5]:
            parts.append(f"{prefix + k} is {tuple(given[k].shape)}, the config makes {tuple(own[k].shape)}")
        raise CheckpointError(f"{source}: the weights do not fit the config: {'; '.join(parts)}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(given[k])
