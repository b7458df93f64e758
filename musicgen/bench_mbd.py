"""`python -m musicgen bench --mbd`: what MultiBand Diffusion costs per second of audio, next to EnCodec.

One process builds, with random weights, EnCodec 32 kHz (`bench.ENCODEC_32KHZ`, random codebooks) and a
MultiBand Diffusion decoder (`musicgen.diffusion`) of one of these configs, the first that applies:

- `--mbd-tiny`: a tiny one (4 bands of a 3-level U-Net), for tests;
- the converted release's own `config.json` when one is on disk (`weights.resolve_mbd(download=False)`;
  `python scripts/download_weights.py mbd` writes it);
- otherwise the assumed one (`assumed_config`): 4 bands of `UNetConfig()` (audiocraft's score/basic.yaml
  U-Net, hidden 48, depth 4, growth 4, kernel 8, stride 4, with codec_dim 128 and the bottleneck
  Transformer: 6 layers, 8 heads, FF 2048, 3072 wide), `ScheduleConfig()`, a MultiBandProcessor (8
  sub-bands) on bands 2 and 3, 20 reverse steps. `--mbd-no-transformer` takes that U-Net without its
  Transformer, whatever is on disk.

Then, for one clip of `--mbd-seconds` (default 1) of random codes, each of `--rounds` rounds (default 3)
times, every other round in reverse order (wall-clock, `time.perf_counter`, one call each):

- `encodec_s`: EnCodec's decode of the codes (the default decoder's whole cost);
- `mbd_s`: what `MusicGen.finish(codes, seed, mbd=...)` does: EnCodec's decode (the re-EQ's reference),
  `Codec.latent`, then `MultiBandDiffusion.decode` (`diffusion_s`: every band's reverse steps, stitching
  and the re-EQ; `re_eq_s`: the re-EQ timed alone once more);
- `unet_forward_s`: a forward of band 0's U-Net over the clip, the median of 3 (`unet_forwards` of them
  make a decode; `unet_share_of_diffusion` = unet_forwards x unet_forward_s / diffusion_s).

Per audio second: `*_s_per_audio_s` = time / seconds. `flops_per_audio_s` = `MultiBandDiffusion
.flops_per_second(hop)` (one second of mono audio, every band and step), split into the bottleneck's
(`bottleneck_flops_...`: the Transformer, or a BiLSTM) and the rest (`conv_flops_...`: the convolutions and
the 1x1 codec projection). `clip_gflop` counts the clip measured; `unet_gflops_per_s` and
`diffusion_gflops_per_s` are what the forward alone and the whole decode reached.

The H100 rows are arithmetic: GPU seconds = FLOPs / (989 TFLOP/s dense bf16 x `H100_UTILISATION`), for
one second (`flops_per_audio_s`) and for clips of 8, 30 and 300 s (`clip_flops`: 30 s windows, each with
its own attention length), mono and stereo (each channel is decoded as a mono row: twice the FLOPs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from typing import Any

from .bench import ENCODEC_32KHZ, _log, _now, _peak_rss_mb, _sync, format_table

H100_BF16_FLOPS = 989e12  # H100 SXM, dense bf16 tensor cores
H100_UTILISATION = 0.4  # an assumed fraction of that peak for a conv U-Net + small Transformer
CLIP_SECONDS = (8.0, 30.0, 300.0)
FRAME_RATE = 50
HOP = ENCODEC_32KHZ["sampling_rate"] // FRAME_RATE  # 640 samples per EnCodec frame
# musicgen.tiny's EnCodec: 16-dim codebooks, 4 filters (what --mbd-tiny pairs with its U-Net)
TINY_ENCODEC = dict(ENCODEC_32KHZ, num_filters=4, hidden_size=16, codebook_dim=16, num_lstm_layers=1)


def assumed_config(transformer: bool = True):
    """The release's assumed architecture (see the module doc): its real config is not known here."""
    from .diffusion_unet import UNetConfig

    return _four_bands(UNetConfig(transformer=transformer), f"assumed, Transformer {transformer}")


def tiny_config(transformer: bool = True):
    """4 bands of a tiny U-Net (3 levels, 16 channels at the bottleneck) on TINY_ENCODEC's 16-dim latent."""
    from .diffusion_unet import UNetConfig

    unet = UNetConfig(hidden=4, depth=3, growth=2, norm_groups=2, codec_dim=16, transformer=transformer)
    return _four_bands(unet, "tiny")


def _four_bands(unet, source: str):
    """4 bands of `unet` at 32 kHz, default schedules, a MultiBandProcessor on bands 2 and 3."""
    from .diffusion import BandConfig, MBDConfig, ProcessorConfig, ScheduleConfig

    bands = [BandConfig(unet, ScheduleConfig(), ProcessorConfig(use=i in (2, 3))) for i in range(4)]
    return MBDConfig(32000, bands, source=source)


def choose_config(tiny: bool = False, transformer: bool = True):
    """(config, where it came from): tiny, the converted release's on disk, or the assumed one."""
    if tiny:
        return tiny_config(transformer), "tiny (tests)"
    if not transformer:
        return assumed_config(False), "assumed, without the Transformer (see musicgen/bench_mbd.py)"
    from .diffusion import CONFIG_FILE, MBDConfig
    from .errors import MusicGenError
    from .weights import resolve_mbd

    try:
        folder = resolve_mbd(download=False)
        return MBDConfig.read(folder), f"converted release: {folder / CONFIG_FILE}"
    except MusicGenError as e:  # nothing converted, or an unreadable config: the assumed one
        _log(f"no converted MultiBand Diffusion config used ({type(e).__name__}: {e}); assuming one")
        return assumed_config(transformer), "assumed (see musicgen/bench_mbd.py)"


def random_mbd(config, device: str = "cpu", seed: int = 0):
    """A MultiBandDiffusion of `config` with random weights (bands of equal configs share one draw)."""
    import torch

    from .diffusion import MultiBandDiffusion
    from .diffusion_unet import DiffusionUnet

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    state, drawn = {}, {}
    for i, band in enumerate(config.bands):
        key = repr(band.unet)
        if key not in drawn:
            drawn[key] = DiffusionUnet(band.unet).state_dict()
        state.update({f"bands.{i}.model.{k}": v for k, v in drawn[key].items()})
        if band.processor.use:
            n = band.processor.n_bands
            state[f"bands.{i}.processor.counts"] = torch.ones(1)
            state[f"bands.{i}.processor.sum_x"] = 0.01 * torch.randn(n, generator=gen)
            state[f"bands.{i}.processor.sum_x2"] = 0.01 + 0.1 * torch.rand(n, generator=gen)
            state[f"bands.{i}.processor.sum_target_x2"] = 0.5 + torch.rand(n, generator=gen)
    mbd = MultiBandDiffusion(config, state, device)
    del state, drawn
    return mbd


def random_codec(tiny: bool, device: str = "cpu", seed: int = 0):
    """A mono `Codec` over transformers' EncodecModel (32 kHz, or TINY_ENCODEC) with random codebooks."""
    import torch
    from transformers import EncodecConfig, EncodecModel

    from .codec import Codec

    torch.manual_seed(seed)
    model = EncodecModel(EncodecConfig(**(TINY_ENCODEC if tiny else ENCODEC_32KHZ)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("codebook.embed"):
                buffer.copy_(torch.randn(buffer.shape, generator=gen))
    return Codec(model.to(device), channels=1)


def split_flops_per_second(mbd) -> dict[str, float]:
    """flops_per_second, split into the bottleneck module's (Transformer or BiLSTM) and the rest."""
    from .diffusion_unet import unet_flops

    rate = mbd.config.sample_rate
    frames = max(1, round(rate / HOP))
    total = mbd.flops_per_second(HOP)
    convs = sum(
        len(b.schedule) * unet_flops(replace(b.unet.cfg, transformer=False, bilstm=False), rate, frames)
        for b in mbd.bands
    )
    return {
        "flops_per_audio_s": total,
        "conv_flops_per_audio_s": convs,
        "bottleneck_flops_per_audio_s": total - convs,
    }


def clip_flops(mbd, seconds: float) -> float:
    """FLOPs of decoding one mono clip of `seconds`: every 30 s window, every band, every reverse step."""
    from .diffusion import _window_frames, window_starts
    from .diffusion_unet import unet_flops

    total = max(1, round(seconds * FRAME_RATE))
    windows = window_starts(total, _window_frames(mbd.config.sample_rate, HOP))
    frames = min(total, _window_frames(mbd.config.sample_rate, HOP))
    per_window = sum(len(b.schedule) * unet_flops(b.unet.cfg, frames * HOP, frames) for b in mbd.bands)
    return per_window * len(windows)


def h100_rows(mbd, utilisation: float = H100_UTILISATION) -> list[dict[str, Any]]:
    """GPU seconds on an H100 (bf16, at `utilisation` of its dense peak), mono and stereo, per second of
    audio and for clips of CLIP_SECONDS."""
    rate = H100_BF16_FLOPS * utilisation
    rows = []
    for channels in (1, 2):
        for seconds in (1.0, *CLIP_SECONDS):
            mono = mbd.flops_per_second(HOP) if seconds == 1.0 else clip_flops(mbd, seconds)
            flops = channels * mono
            rows.append({
                "kind": "h100", "channels": channels, "seconds": seconds, "tflop": flops / 1e12,
                "gpu_s": flops / rate, "gpu_s_per_audio_s": flops / rate / seconds, "utilisation": utilisation,
            })  # fmt: skip
    return rows


def measure_mbd(
    seconds: float = 1.0,
    rounds: int = 3,
    config=None,
    tiny: bool = False,
    transformer: bool = True,
    device: str = "cpu",
    threads: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Builds the models and measures both decoders (see the module doc): one record per round, then one
    of their medians and the FLOP counts (kind "summary"), then the H100 rows."""
    import resource

    import torch

    from .diffusion_unet import unet_flops

    if threads:
        torch.set_num_threads(threads)
    started = _now()
    source = "given"
    if config is None:
        config, source = choose_config(tiny, transformer)
    t = time.perf_counter()
    codec = random_codec(tiny, device, seed)
    mbd = random_mbd(config, device, seed)
    build_s = time.perf_counter() - t
    mbd.check_codec(codec.latent_dim, config.sample_rate)
    frames = max(1, round(seconds * FRAME_RATE))
    seconds = frames / FRAME_RATE  # what is decoded: whole frames
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, ENCODEC_32KHZ["codebook_size"], (1, 4, frames), generator=gen)
    unet = mbd.bands[0].unet
    x = torch.randn(1, 1, frames * HOP, generator=gen).to(device)
    latent0 = codec.latent(codes)[:, 0].to(device)  # [1, D, T]: band 0's condition
    unet_gflop = unet_flops(unet.cfg, frames * HOP, frames) / 1e9
    clip_gflop = clip_flops(mbd, seconds) / 1e9

    def timed(fn, *args, **kwargs):
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = fn(*args, **kwargs)
        _sync(device)
        return time.perf_counter() - start, out

    def encodec_side() -> dict[str, float]:
        return {"encodec_s": timed(codec.decode, codes)[0]}

    def mbd_side() -> dict[str, float]:
        start = time.perf_counter()
        reference_s, reference = timed(codec.decode, codes)
        latent_s, latent = timed(codec.latent, codes)
        diffusion_s, audio = timed(mbd.decode, latent, reference, seed, HOP)
        mbd_s = time.perf_counter() - start
        re_eq_s = timed(mbd.re_eq, audio[0].to(device), reference[0].to(device))[0]
        return dict(
            mbd_s=mbd_s, reference_s=reference_s, latent_s=latent_s, diffusion_s=diffusion_s, re_eq_s=re_eq_s
        )

    def forward(step: int):  # as MultiBandDiffusion._sample_band runs it: bf16 autocast on CUDA
        with torch.autocast(mbd.device.type, torch.bfloat16, enabled=mbd.device.type == "cuda"):
            return unet(x, step, condition=latent0)

    def unet_side() -> dict[str, float]:  # the median of 3 forwards: one alone moves with the machine
        return {"unet_forward_s": statistics.median(timed(forward, step)[0] for step in (999, 499, 49))}

    _log(f"MBD bench ({source}): warming up, then {rounds} round(s) of a {seconds} s clip ...")
    codec.decode(codes)  # warm-up: EnCodec and a U-Net forward (every band's U-Net has the same shapes)
    timed(forward, 999)
    common = {
        "kind": "round", "config": source, "device": device, "seconds": seconds, "bands": len(mbd.bands),
        "reverse_steps": len(config.step_list) - 1, "transformer": unet.cfg.transformer,
        "unet_forwards": mbd.reverse_steps(frames, 1, HOP), "unet_gflop": unet_gflop, "clip_gflop": clip_gflop,
        "mbd_params_m": sum(p.numel() for b in mbd.bands for p in b.unet.parameters()) / 1e6,
        "build_s": build_s, "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    records = []
    for r in range(rounds):
        loadavg = os.getloadavg()[0]
        sides = [encodec_side, mbd_side, unet_side]
        measured: dict[str, Any] = {}
        for side in sides if r % 2 == 0 else sides[::-1]:  # drift favours neither side
            measured.update(side())
        record = {**common, "round": r + 1, **measured, "loadavg_1m_at_start": loadavg}
        record.update(_per_audio_second(record))
        records.append(record)
        _log(
            f"round {r + 1} of {rounds}: EnCodec {record['encodec_s']:.3f} s, MBD {record['mbd_s']:.2f} s, "
            f"U-Net forward {record['unet_forward_s']:.3f} s for {seconds} s of audio; load {loadavg:.2f}"
        )
    summary = {"kind": "summary", **{k: v for k, v in common.items() if k != "kind"}}
    for key in records[0]:
        if key not in common and key != "round" and isinstance(records[0][key], int | float):
            summary[key] = statistics.median(r[key] for r in records)
    summary.update(split_flops_per_second(mbd), rounds=rounds, peak_rss_mb=_peak_rss_mb(resource))
    summary.update(started=started, finished=_now())
    return [*records, summary, *h100_rows(mbd)]


def _per_audio_second(r: dict[str, Any]) -> dict[str, float]:
    s = r["seconds"]
    return {
        "encodec_s_per_audio_s": r["encodec_s"] / s,
        "mbd_s_per_audio_s": r["mbd_s"] / s,
        "diffusion_s_per_audio_s": r["diffusion_s"] / s,
        "mbd_over_encodec": r["mbd_s"] / r["encodec_s"],
        "unet_share_of_diffusion": r["unet_forwards"] * r["unet_forward_s"] / r["diffusion_s"],
        "unet_gflops_per_s": r["unet_gflop"] / r["unet_forward_s"],
        "diffusion_gflops_per_s": r["clip_gflop"] / r["diffusion_s"],
    }


def add_mbd_arguments(p: argparse.ArgumentParser) -> None:
    """The --mbd options of `python -m musicgen bench` (--rounds, --threads, --device, --json are shared)."""
    g = p.add_argument_group("MultiBand Diffusion (--mbd)")
    g.add_argument(
        "--mbd",
        action="store_true",
        help="measure MultiBand Diffusion's decode against EnCodec's per second of audio, in one process, "
        "--rounds rounds (default 3 here), medians at the end, plus the H100 arithmetic",
    )
    g.add_argument("--mbd-seconds", type=float, default=1.0, help="audio decoded per round (default 1)")
    g.add_argument("--mbd-tiny", action="store_true", help="a tiny MBD and EnCodec (tests)")
    g.add_argument("--mbd-no-transformer", action="store_true", help="the assumed U-Net, no Transformer")


_COLUMNS = [  # (key, title, format) as bench.format_table takes them
    ("round", "round", "{}"), ("encodec_s_per_audio_s", "EnCodec s/audio s", "{:.3f}"),
    ("mbd_s_per_audio_s", "MBD s/audio s", "{:.2f}"), ("mbd_over_encodec", "MBD / EnCodec", "{:.0f}"),
    ("unet_forward_s", "U-Net fwd s", "{:.3f}"), ("unet_share_of_diffusion", "U-Nets share", "{:.2f}"),
    ("unet_gflops_per_s", "U-Net GFLOP/s", "{:.1f}"), ("diffusion_gflops_per_s", "decode GFLOP/s", "{:.1f}"),
    ("re_eq_s", "re-EQ s", "{:.3f}"), ("loadavg_1m_at_start", "load", "{:.2f}"),
]  # fmt: skip
_H100_COLUMNS = [
    ("channels", "channels", "{}"), ("seconds", "audio s", "{:g}"), ("tflop", "TFLOP", "{:.1f}"),
    ("gpu_s", "H100 s", "{:.3f}"), ("gpu_s_per_audio_s", "H100 s/audio s", "{:.4f}"),
]  # fmt: skip


def run_mbd_cli(args: argparse.Namespace, rounds: int) -> int:
    """`python -m musicgen bench --mbd ...`: a table (or JSON lines with --json)."""
    from .errors import InvalidInputError

    if not 0 < args.mbd_seconds <= 300:
        raise InvalidInputError("--mbd-seconds must be in (0, 300].")
    records = measure_mbd(
        args.mbd_seconds, rounds, tiny=args.mbd_tiny, transformer=not args.mbd_no_transformer,
        device=args.device, threads=args.threads, seed=args.seed,
    )  # fmt: skip
    if args.json:
        for record in records:
            print(json.dumps(record), flush=True)
        return 0
    s = next(r for r in records if r["kind"] == "summary")
    print(
        f"MultiBand Diffusion ({s['config']}; {s['bands']} bands x {s['reverse_steps']} steps, "
        f"{s['mbd_params_m']:.0f} M parameters) vs EnCodec on {s['seconds']} s of random codes, {s['device']}, "
        f"{s['torch_threads']} threads"
    )
    print(format_table([r for r in records if r["kind"] == "round"], _COLUMNS))
    print(
        f"medians of {s['rounds']} round(s): EnCodec {s['encodec_s_per_audio_s']:.3f} s, MBD "
        f"{s['mbd_s_per_audio_s']:.2f} s per audio second ({s['mbd_over_encodec']:.0f}x); "
        f"{s['flops_per_audio_s'] / 1e12:.2f} TFLOP per audio second (convolutions "
        f"{s['conv_flops_per_audio_s'] / 1e12:.2f}, bottleneck {s['bottleneck_flops_per_audio_s'] / 1e12:.2f})"
    )
    print(f"H100, bf16 at {H100_UTILISATION:.0%} of {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s (arithmetic):")
    print(format_table([r for r in records if r["kind"] == "h100"], _H100_COLUMNS))
    return 0
