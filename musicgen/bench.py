"""`python -m musicgen bench`: speed and memory of this engine next to transformers' MusicGen.

The models have the published architectures (`--arch small|medium|large`, `--stereo`, `--melody`) and
random weights, so nothing is downloaded: transformers' own classes build them once, with a T5-base-sized
text encoder and EnCodec 32 kHz's config, and `save_pretrained` writes them (with the small tokenizer of
`musicgen.tiny`) into a cache folder that both implementations then load: same config, same weights.

Every implementation is measured in its own fresh Python process. The parent reads the checkpoint's files
once beforehand, so the page cache is warm but nothing is imported or loaded. That process measures, in
this order (MB = 2**20 bytes; seconds are wall-clock, `time.perf_counter`):

- `import_s`: importing torch, transformers and the implementation's modules.
- `load_s`: from the checkpoint on disk to the first frame of audio (cold start) = `load_weights_s`
  (ours: `build_model(read_checkpoint(folder))`; transformers: `from_pretrained(folder)` and the
  tokenizer) + `first_frame_s` (a generate of one frame: text encoding, prefill, max_delay decode steps,
  EnCodec on one frame).
- `peak_rss_mb`: peak resident memory of the process (`getrusage` ru_maxrss) right after that: imports,
  weights and one short generation (`import_rss_mb` is the part the imports alone take). `model_mb`: the
  bytes of the loaded modules' parameters and buffers. `peak_rss_end_mb`: the peak after every
  measurement below.
- `steps_per_s`: decode steps per second of the language model's loop (one step = one forward over the
  conditional and unconditional rows, the CFG mix, top-k sampling), with the one-time work excluded by
  the difference method, the same for both implementations: the whole generate call is timed for
  n1 = 10 and n2 = 10 + `--steps` decode steps, and steps_per_s = (n2 - n1) / (t2 - t1). EnCodec's
  decode, whose cost grows with the length, is replaced by a stub returning empty audio during these
  runs, so everything else done once per call (tokenizing, T5, the prefill, cache set-up, the stub)
  cancels out in t2 - t1. One warm-up call comes first; t1 and t2 are each the fastest of `--repeats`
  calls (`steps_per_s_runs`: the value each repeat's own pair gives).
- `bound_steps_per_s`: the most steps/s that reading the step's weights once allows at the bandwidth
  measured right after the decode runs (`bandwidth_gbs`: one reduction over 512 MB, all threads, best
  of 5): bandwidth / `step_weights_gb` (`step_weights_m` weights at 4 bytes, 1 for musicgen-int8).
  CrossFold reads fewer weights than that count, so a step may beat it slightly.
- `e2e_s_per_audio_s`: the fastest of `--repeats` complete generate calls for clips of `--seconds`
  (text encoder + decode loop + EnCodec; `--batch` clips at once), divided by `--seconds`.
- `int8_top1_agreement`, `int8_logit_rel_error` (musicgen-int8 only): how far its logits are from fp32's
  on the same weights, fed the same random token sequence of 10 + `--steps` positions.

`vs_transformers` is a record's steps_per_s over transformers' measured in the same round. The machines
this runs on are shared and drift within minutes, so `--rounds N` measures every implementation N times,
every other round in reverse order, and the table ends with each implementation's ratio per round and
their median.

A later implementation joins by adding an `Impl` to `IMPLS`.

`--cold-start` measures predict.py instead, as Cog starts it: each round, a fresh process imports predict.py,
runs `Runner().setup()` with the bench's checkpoint as the model setup preloads (served under the name of
the published variant of the same traits, `cold_start_variant`, from a weights folder of its own), then one
prediction of `--seconds` (whole seconds, at least 1) of that model. Before each process the checkpoint's
files are read into the page cache (`--page-cache warm`, the default) or dropped from it (`cold`:
posix_fadvise DONTNEED on those files only; the Python packages stay cached). A record holds:

- `import_predict_s` (`import_predict_cpu_s`: the process's CPU time until then), `setup_s` (`setup_cpu_s`),
  `ready_s` = from the child's first line to the end of setup; `interpreter_s`: from spawning the process
  to its first line.
- `time_to_first_step_s`: from calling `run()` to the end of the first prediction's first decode step (input
  checks, text encoding, prefill with the cross-attention set-up, that step); `first_prediction_s`: to the
  end of `run()` (EnCodec, normalising, writing the file); `first_prediction_cpu_s`.
- What setup spends, by the functions it calls: `setup_imports_s` (import statements run by setup's thread,
  the imported modules' code included), `load_checkpoint_s` (finding the folder and `read_checkpoint_s`, of
  which `read_lm_s` reads the language model), `build_model_s` (`build_lm_s`, `text_encoder_s` with the
  tokenizer, `codec_s`).
- What the first prediction spends: `before_generate_s` (checks, cache look-up), `conditioning_s` (T5),
  `prefill_s`, `first_step_s` and `second_step_s` (the first step's one-time costs are their difference),
  `decode_steps_s` over `decode_steps`, `codec_decode_s`, `after_generate_s` (normalising, writing).
  An async `run()` (predict.py's, under @cog.concurrent) is awaited with `asyncio.run`; its steps are then
  the batcher's forwards (`LanguageModel.decode_jobs`), and "generate" spans `MusicGen.prepare` to the end
  of `MusicGen.finish`.
- `setup_gc_s`, `prediction_gc_s`: time in the garbage collector's collections (`*_full_collections`: how
  many were full ones, each of which walks every object alive).
- `peak_rss_setup_mb`, `peak_rss_mb` (after the prediction), `import_rss_mb`.

`--baseline TREE` measures another copy of the repository the same way (the same code of this file measures
both), every other round first, so that a change is measured against what it replaces in the same run.

`--style` measures MusicGen-Style instead (this engine only: transformers has no such model), built in memory
with random weights of the release's sizes: the `--arch` LM (default medium, as the release) without
cross-attention, t5-base's encoder, EnCodec 32 kHz, MERT-v1-95M's shape (transformers' HubertConfig: 12
layers, 768 wide, 7 convolutions of 512 channels) and the style conditioner ('default' transformer: 8 layers,
512 wide; 6 codebooks of 1024). One fresh process builds it, then measures both sides of a request in each of
`--rounds` rounds, every other round in reverse order, and the summary gives their medians over rounds:

- `conditioner_s`: the style conditioner on `--batch` excerpts of `--style-excerpt` seconds (default 3), as a
  request runs it, once: resampling to MERT's 24 kHz, MERT, the style transformer, BatchNorm, every 15th
  frame, quantization with `--style-eval-q` codebooks; the fastest of `--repeats` calls. Its parts, timed
  alone: `resample_s`, `mert_s`, `style_encoder_s`. `mert_gflop` / `style_encoder_gflop`: their arithmetic
  (`mert_flops`, `style_encoder_flops`: matrix products and convolutions, two FLOPs per multiply-add), and
  `mert_gflops_per_s` what MERT reaches.
- `steps_per_s` (`step_s`): the decode loop of requests with a style, by the difference method above (the
  conditioner, T5 and the prefill run in both calls and cancel); the prefix is `style_tokens` + `text_tokens`.
  `decode_s_per_audio_s`: frame rate / steps_per_s, the decode loop's cost per second of audio.
  `conditioner_steps`: conditioner_s / step_s, the conditioner's cost in decode steps. `fixed_s`: what a
  request of 10 steps spends besides those steps (conditioner, T5, prefill, set-up).
- `bound_steps_per_s`, `bandwidth_gbs`, `step_weights_gb` as above; `peak_rss_mb`, `build_s`.

`--serve` measures predict.py behind the real Cog server (`python -m cog.server.http`, as README "Cog" starts it,
one server process for the whole run) serving the bench's checkpoint under its variant's name (as the cold
start does), with COG_MAX_CONCURRENCY = MUSICGEN_MAX_BATCH = `--concurrent` K (default 4). One warm-up request
(which loads the model) comes first. Then each of `--rounds` rounds sends the same K requests (`--seconds`
whole seconds each, default 8; wav; request i has the i-th of SERVE_PROMPTS and seed SERVE_SEED + i) twice,
every other round in reverse order: one after another (`sequential`: each sent when the previous one has
answered) and all at once (`concurrent`: one client thread each; the server decodes them together,
musicgen.batching). A record per round holds, per side:

- `{side}_s`: wall time from sending the first request to the last answer; `{side}_audio_s_per_s`: seconds of
  audio served per second of that wall time (K x seconds / `{side}_s`); `throughput_ratio`: concurrent over
  sequential throughput (= sequential_s / concurrent_s).
- From each prediction's logs (`per_request`): the batch it joined (`batch_id`) and the clips decoding in it
  when it joined (`batch_clips`, itself included), `queued_s`, `first_step_after_queue_s`, `steps`; from the
  server's own log lines of that prediction: `prepare_s` (from its start to being queued: input checks,
  model look-up, T5), `time_to_first_step_s` (from its start to its first decode step), `decode_s` (queued
  to its codes), `finish_s` (its codes to its end: EnCodec, normalising, the wav); `latency_s` as the client
  sees it. `{side}_{figure}_median_s`: their medians over the K requests.
- `equal_outputs`: how many of the K concurrent outputs equal their sequential counterpart sample for sample
  (they should: a request gives the same codes alone or batched), `equal_sample_fraction` over all samples.

The summary gives the medians over rounds and the ratio of every round; the command fails (exit code 1) when
an output differs.

`--mbd` measures MultiBand Diffusion's decode next to EnCodec's, per second of audio (musicgen/bench_mbd.py).

This module imports only the standard library at the top, so the CLI starts fast and `import_s` is honest.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import MusicGenError
from .variants import VARIANTS

MB = 2**20
SHORT_STEPS = 10  # n1 of the difference method; more than any model's max delay (3)
_ROOT = Path(__file__).resolve().parent.parent  # holds the `musicgen` package the child processes import
_RESULT = "BENCH-RESULT "  # prefix of the child's one line of results on stdout
_MARKER = "bench-checkpoint.json"  # written last into a finished cache folder

# sizes of the language model: (dim, layers, heads); ffn = 4 * dim. "tiny" (hidden) is musicgen.tiny's.
ARCHS: dict[str, tuple[int, int, int]] = {
    name: (VARIANTS[name].dim, VARIANTS[name].num_layers, VARIANTS[name].num_heads)
    for name in ("small", "medium", "large")
}
ARCHS["tiny"] = (32, 2, 4)

# t5-base's encoder (what the published models use), vocabulary included
T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)

# transformers' config of facebook/encodec_32khz (the published models' codec)
ENCODEC_32KHZ = dict(
    sampling_rate=32000,
    audio_channels=1,
    upsampling_ratios=[8, 5, 4, 4],
    num_filters=64,
    hidden_size=128,
    codebook_size=2048,
    codebook_dim=128,
    target_bandwidths=[2.2],
    num_lstm_layers=2,
    num_residual_layers=1,
    normalize=False,
    chunk_length_s=None,
    overlap=None,
    use_causal_conv=False,
    norm_type="weight_norm",
    residual_kernel_size=3,
    compress=2,
    dilation_growth_rate=2,
    kernel_size=7,
    last_kernel_size=7,
    pad_mode="reflect",
    trim_right_ratio=1.0,
    use_conv_shortcut=False,
)

PROMPT = "lo-fi hip hop beat with warm piano and soft drums"  # words the tiny tokenizer knows

# MERT-v1-95M as transformers' HubertConfig (its config.json over MERTConfig's defaults; HuBERT maths)
MERT_95M = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    conv_dim=(512,) * 7,
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    conv_bias=False,
    feat_extract_norm="group",
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    do_stable_layer_norm=False,
    feat_proj_layer_norm=True,
    mask_time_prob=0.05,
)


class BenchError(MusicGenError):
    """A benchmark step failed."""


@dataclass(frozen=True)
class CheckpointSpec:
    """Which random checkpoint to build."""

    arch: str
    stereo: bool = False
    melody: bool = False
    seed: int = 0

    @property
    def name(self) -> str:
        return "-".join(
            [self.arch, *(["stereo"] if self.stereo else []), *(["melody"] if self.melody else [])]
        )


@dataclass(frozen=True)
class Settings:
    """What every implementation is asked to do."""

    batch: int = 1
    steps: int = 100
    repeats: int = 3
    seconds: float = 2.0
    top_k: int = 250
    cfg: float = 3.0
    seed: int = 0  # of the sampling (both implementations draw from seeded generators)
    device: str = "cpu"
    threads: int | None = None
    prompt: str = PROMPT


# ---- implementations ------------------------------------------------------------------------------
class Runner(Protocol):
    """A loaded model, behind the calls the bench times."""

    max_delay: int  # decode steps for F frames: F + max_delay
    frame_rate: int

    def generate(self, frames: int, settings: Settings) -> None:
        """One complete generate call of `settings.batch` clips of `frames` frames; returns when done."""

    def codec(self):
        """The transformers `EncodecModel` that turns codes into audio (stubbed for the decode-speed runs)."""

    def modules(self) -> list:
        """The torch modules it holds (for their size in memory)."""


@dataclass(frozen=True)
class Impl:
    """An implementation: what it imports (timed apart) and how it loads a checkpoint folder."""

    imports: Callable[[], None]
    load: Callable[[Path, str], Runner]


def _import_musicgen() -> None:
    import torch  # noqa: F401
    from transformers import AutoTokenizer, EncodecModel, T5EncoderModel  # noqa: F401  (build_model's)

    from . import loading, model  # noqa: F401


class _MusicgenRunner:
    def __init__(self, model):
        self.model = model
        self.max_delay = model.config.lm.max_delay
        self.frame_rate = model.config.frame_rate

    def generate(self, frames: int, settings: Settings) -> None:
        from .sampling import SamplingParams

        sampling = SamplingParams(top_k=settings.top_k, cfg_coef=settings.cfg)
        # generate() takes seconds and keeps int(duration * rate) frames: half a frame more rounds safely
        duration = (frames + 0.5) / self.frame_rate
        self.model.generate(
            [settings.prompt] * settings.batch, duration=duration, sampling=sampling, seed=settings.seed
        )
        _sync(settings.device)  # generate() returns CPU tensors already; kept for symmetry

    def codec(self):
        return self.model.codec.model

    def modules(self) -> list:
        return [self.model.lm, self.model.text.model, self.model.codec.model]


def _load_musicgen(folder: Path, device: str) -> Runner:
    from .loading import build_model, read_checkpoint

    return _MusicgenRunner(build_model(read_checkpoint(folder), device))


def _load_musicgen_int8(folder: Path, device: str) -> Runner:
    from .loading import build_model, read_checkpoint

    return _MusicgenRunner(build_model(read_checkpoint(folder), device, int8=True))


def _import_transformers() -> None:
    import torch  # noqa: F401
    from transformers import (  # noqa: F401
        AutoTokenizer,
        MusicgenForConditionalGeneration,
        MusicgenMelodyForConditionalGeneration,
    )


class _TransformersRunner:
    def __init__(self, model, tokenizer, device: str):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        dec = model.decoder.config
        self.max_delay = dec.num_codebooks // dec.audio_channels - 1
        audio = model.config.audio_encoder
        self.frame_rate = audio.sampling_rate // _product(audio.upsampling_ratios)

    def generate(self, frames: int, settings: Settings) -> None:
        import torch

        inputs = self.tokenizer([settings.prompt] * settings.batch, return_tensors="pt", padding=True)
        torch.manual_seed(settings.seed)
        self.model.generate(
            **inputs.to(self.device),
            do_sample=True,
            top_k=settings.top_k,
            guidance_scale=settings.cfg,
            max_new_tokens=frames + self.max_delay,  # as many decode steps as ours for `frames` frames
        )
        _sync(settings.device)

    def codec(self):
        return self.model.audio_encoder

    def modules(self) -> list:
        return [self.model]


def _load_transformers(folder: Path, device: str) -> Runner:
    from transformers import (
        AutoTokenizer,
        MusicgenForConditionalGeneration,
        MusicgenMelodyForConditionalGeneration,
    )

    melody = json.loads((folder / "config.json").read_text())["model_type"] == "musicgen_melody"
    cls = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    model = cls.from_pretrained(folder).to(device).eval()
    return _TransformersRunner(model, AutoTokenizer.from_pretrained(folder), device)


# implementation name -> how to import and load it; `--impl` chooses among these (all by default)
IMPLS: dict[str, Impl] = {
    "musicgen": Impl(_import_musicgen, _load_musicgen),
    "musicgen-int8": Impl(_import_musicgen, _load_musicgen_int8),
    "transformers": Impl(_import_transformers, _load_transformers),
}


# ---- the random checkpoints -----------------------------------------------------------------------
def make_model(spec: CheckpointSpec):
    """transformers' MusicGen model of `spec` with random weights, and the tiny tokenizer.

    Scaled as `musicgen.tiny` does: decoder weights ~ N(0, 1/fan_in) so that logits are far from uniform,
    and random EnCodec codebooks (zeros by default) so that the audio depends on the codes.
    """
    from transformers import EncodecConfig, T5Config

    from .tiny import make_tiny_model, make_tokenizer, random_model

    if spec.arch == "tiny":
        kind = "-".join(["stereo"] * spec.stereo + ["melody"] * spec.melody) or "mono"
        return make_tiny_model(kind, spec.seed)
    dim, layers, heads = ARCHS[spec.arch]
    model = random_model(
        T5Config(**T5_BASE),
        EncodecConfig(**ENCODEC_32KHZ),
        dim=dim,
        layers=layers,
        heads=heads,
        stereo=spec.stereo,
        melody=spec.melody,
        seed=spec.seed,
    )
    return model, make_tokenizer()


def build_checkpoint(spec: CheckpointSpec, folder: Path) -> None:
    """Builds `spec` and writes it to `folder` in transformers' layout; the marker file comes last."""
    model, tokenizer = make_model(spec)
    params = {
        part: sum(p.numel() for p in getattr(model, part).parameters())
        for part in ("decoder", "text_encoder", "audio_encoder")
    }
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / _MARKER).write_text(json.dumps({"spec": asdict(spec), "params": params}))


def ensure_checkpoint(spec: CheckpointSpec, cache: Path) -> Path:
    """The folder of `spec` under `cache`, built (in a child process) unless a finished one is there."""
    folder = cache / f"{spec.name}-seed{spec.seed}"
    if _finished(folder, spec):
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    partial.mkdir(parents=True)
    _log(f"building the {spec.name} checkpoint with random weights in {folder} ...")
    _run_child({"task": "build", "spec": asdict(spec), "folder": str(partial)})
    partial.rename(folder)
    return folder


def _finished(folder: Path, spec: CheckpointSpec) -> bool:
    try:
        return json.loads((folder / _MARKER).read_text())["spec"] == asdict(spec)
    except (OSError, ValueError, KeyError):
        return False


def checkpoint_info(folder: Path) -> dict[str, Any]:
    """Size on disk of the weight files, and the parameter counts the builder recorded."""
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    params = json.loads((folder / _MARKER).read_text())["params"]
    return {
        "weights_mb": round(weights / MB, 1),
        "lm_params_m": round(params["decoder"] / 1e6, 1),
        "total_params_m": round(sum(params.values()) / 1e6, 1),
        "step_weights_m": round(step_weights(folder) / 1e6, 1),
    }


def step_weights(folder: Path) -> int:
    """Weights one decode step must read if it reads each matrix once: every layer's attention and
    feed-forward matrices (cross-attention: the query and output ones; its keys/values are computed once
    per request) and the output heads; embeddings read only K rows, which are left out."""
    raw = json.loads((folder / "config.json").read_text())
    dec = raw["decoder"]
    D, F, K = dec["hidden_size"], dec["ffn_dim"], dec["num_codebooks"]
    attention = 4 * D * D + (2 * D * D if raw["model_type"] == "musicgen" else 0)
    return dec["num_hidden_layers"] * (attention + 2 * D * F) + K * dec["vocab_size"] * D


def _bytes_per_weight(impl_name: str, device: str) -> int:
    if impl_name == "musicgen-int8":
        return 1
    return 2 if impl_name == "musicgen" and device.startswith("cuda") else 4  # ours runs bf16 on CUDA


def read_bandwidth_gbs(device: str, mb: int = 512, repeats: int = 5) -> float:
    """The memory read bandwidth one reduction over `mb` MB reaches here (GB/s, best of `repeats`): far
    larger than any cache, read with all of torch's threads, as a decode step reads its weights."""
    import torch

    buffer = torch.ones(mb * MB // 4, dtype=torch.float32, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass only warms up
        _sync(device)
        t = time.perf_counter()
        buffer.sum()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return round(buffer.numel() * 4 / best / 1e9, 2)


def _warm_file_cache(folder: Path) -> None:
    """Reads every file once, so each child finds them in the page cache (warm, like a second start)."""
    for f in sorted(folder.iterdir()):
        if f.is_file():
            with f.open("rb") as fh:
                while fh.read(64 * MB):
                    pass


# ---- measuring, in a fresh process ----------------------------------------------------------------
def measure(impl_name: str, folder: Path, settings: Settings, process_start: float) -> dict[str, Any]:
    """All the measurements of one implementation; call it in a fresh process (see the module doc)."""
    import resource

    started = _now()
    loadavg = os.getloadavg()[0]
    impl = IMPLS[impl_name]
    impl.imports()
    import torch

    import_s = time.perf_counter() - process_start
    import_rss = _peak_rss_mb(resource)
    if settings.threads:
        torch.set_num_threads(settings.threads)

    t = time.perf_counter()
    runner = impl.load(folder, settings.device)
    load_weights_s = time.perf_counter() - t
    first_frame_s = _timed(runner, 1, settings)
    peak_rss = _peak_rss_mb(resource)
    model_mb = _module_bytes(runner.modules()) / MB

    # decode loop, by the difference method for both implementations (see the module doc): whole generate
    # calls of n1 and n2 steps, EnCodec stubbed. Fixed costs cancel, transformers' one extra decoder forward
    # per call too (it runs max_new_tokens + 1 forwards; ours runs as many forwards as steps).
    n1, n2 = SHORT_STEPS, SHORT_STEPS + settings.steps
    with _stub_decode(runner.codec()):
        _timed(runner, n1 - runner.max_delay, settings)  # warm-up
        t1s, t2s = [], []
        for _ in range(settings.repeats):
            t1s.append(_timed(runner, n1 - runner.max_delay, settings))
            t2s.append(_timed(runner, n2 - runner.max_delay, settings))
    steps_per_s = _rate(n2 - n1, min(t2s) - min(t1s))
    runs = [_rate(n2 - n1, b - a) for a, b in zip(t1s, t2s, strict=True)]
    # the bound of this moment: a step cannot be faster than reading its weights once at this bandwidth
    bandwidth = read_bandwidth_gbs(settings.device)
    step_gb = step_weights(folder) * _bytes_per_weight(impl_name, settings.device) / 1e9

    frames = max(1, round(settings.seconds * runner.frame_rate))
    audio_s = frames / runner.frame_rate  # --seconds, to the frame
    _timed(runner, frames, settings)  # warm-up: EnCodec's first call at a new length is slow on CPU
    e2e = [_timed(runner, frames, settings) for _ in range(settings.repeats)]
    record = {
        "impl": impl_name,
        "batch": settings.batch,
        "steps_per_s": steps_per_s,
        "bound_steps_per_s": round(bandwidth / step_gb, 2),
        "bandwidth_gbs": bandwidth,
        "step_weights_gb": round(step_gb, 3),
        "e2e_s_per_audio_s": round(min(e2e) / audio_s, 4),
        "load_s": round(load_weights_s + first_frame_s, 3),
        "peak_rss_mb": round(peak_rss, 1),
        "model_mb": round(model_mb, 1),
        "import_s": round(import_s, 3),
        "load_weights_s": round(load_weights_s, 3),
        "first_frame_s": round(first_frame_s, 3),
        "import_rss_mb": round(import_rss, 1),
        "peak_rss_end_mb": round(_peak_rss_mb(resource), 1),
        "steps": n2 - n1,
        "steps_per_s_runs": runs,
        "decode_t1_s": round(min(t1s), 4),
        "decode_t2_s": round(min(t2s), 4),
        "seconds": audio_s,
        "e2e_s": round(min(e2e), 3),
        "repeats": settings.repeats,
        "top_k": settings.top_k,
        "cfg": settings.cfg,
        "device": settings.device,
        "torch_threads": torch.get_num_threads(),
        "started": started,
        "finished": _now(),
        "loadavg_1m_at_start": round(loadavg, 2),
    }
    if settings.device.startswith("cuda"):
        record["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
    if impl_name == "musicgen-int8":  # after every memory reading: this loads the fp32 model beside
        record.update(_int8_quality(runner, folder, settings))
    return record


def _int8_quality(runner: Runner, folder: Path, settings: Settings) -> dict[str, float]:
    """int8 against fp32 on the same weights: `int8_top1_agreement`, `int8_logit_rel_error` (see
    `musicgen.quantize.int8_quality`) over the positions the decode-speed runs cover."""
    from .loading import build_model, read_checkpoint
    from .quantize import int8_quality

    fp32 = build_model(read_checkpoint(folder), settings.device)
    quality = int8_quality(fp32, runner.model, [settings.prompt], SHORT_STEPS + settings.steps, settings.seed)
    return {f"int8_{k}": v for k, v in quality.items()}


def _timed(runner: Runner, frames: int, settings: Settings) -> float:
    t = time.perf_counter()
    runner.generate(frames, settings)
    return time.perf_counter() - t


def _rate(steps: int, seconds: float) -> float | None:
    """steps / seconds; None when noise made the difference of times not positive."""
    return round(steps / seconds, 3) if seconds > 0 else None


@contextlib.contextmanager
def _stub_decode(encodec) -> Iterator[None]:
    """Replaces `encodec.decode` (transformers' EncodecModel, used by both implementations) by one that
    returns empty audio, so that the decode-speed runs do no EnCodec work whose cost grows with length."""
    import torch

    def stub(codes, *args, **kwargs):
        # codes [1, B, K, T] -> audio_values [B, 1, 0]; both callers read only `.audio_values`
        return argparse.Namespace(audio_values=torch.zeros(codes.shape[1], 1, 0, device=codes.device))

    encodec.decode = stub  # an instance attribute hides the method
    try:
        yield
    finally:
        del encodec.decode


def _module_bytes(modules: list) -> int:
    """Bytes of the parameters and buffers of `modules`, each tensor counted once (tied ones too)."""
    seen, total = set(), 0
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            key = (t.device, t.data_ptr())
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total


def _cpu_s(resource) -> float:
    """CPU seconds this process has used so far, all threads, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb(resource) -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux gives KiB


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _product(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _log(message: str) -> None:
    print(f"[{_now()}] {message}", file=sys.stderr, flush=True)


# ---- cold start -----------------------------------------------------------------------------------
# The child of a cold-start round: imports predict.py from the tree measured, then this file by its path
# (so that a baseline tree is measured by the same code), and hands over.
_COLD_CHILD = (
    "import time\n_t0 = time.perf_counter()\n_w0 = time.time()\nimport sys\nsys.path.insert(0, {root!r})\n"
    "import predict\n_t1, _c1 = time.perf_counter(), time.process_time()\nimport importlib.util\n"
    "spec = importlib.util.spec_from_file_location('musicgen._cold_start_bench', {bench!r})\n"
    "bench = importlib.util.module_from_spec(spec)\nsys.modules[spec.name] = bench\n"
    "spec.loader.exec_module(bench)\n"
    "clock = dict(start=_t0, wall_start=_w0, imported=_t1, import_cpu=_c1)\n"
    "bench.cold_start_child(predict, sys.argv[1], clock)\n"
)
PAGE_CACHE_MODES = ("warm", "cold")


def cold_start_variant(spec: CheckpointSpec) -> str:
    """The published variant whose name the cold start serves `spec` under: the one with the same
    stereo/melody traits and, when there is one, the same size (what predict.py's checks go by)."""
    same = [v for v in VARIANTS.values() if (v.stereo, v.melody) == (spec.stereo, spec.melody)]
    size = ARCHS["small" if spec.arch == "tiny" else spec.arch]
    return next((v.name for v in same if (v.dim, v.num_layers, v.num_heads) == size), same[0].name)


class _Phases:
    """Wall-clock time spent in chosen functions (wrapped in place), and when each call began and ended."""

    def __init__(self):
        self.spent: dict[str, float] = {}
        self.calls: dict[str, list[tuple[float, float]]] = {}

    def wrap(self, owner, attr: str, name: str) -> None:
        import functools

        original = getattr(owner, attr, None)
        if original is None:  # absent from the tree measured (an older one): not measured
            return

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                end = time.perf_counter()
                self.spent[name] = self.spent.get(name, 0.0) + end - start
                self.calls.setdefault(name, []).append((start, end))

        setattr(owner, attr, timed)

    def seconds(self, name: str) -> float | None:
        return round(self.spent[name], 3) if name in self.spent else None


class _GcClock:
    """Collections of the cyclic garbage collector and the time they took (gc.callbacks), by generation."""

    def __init__(self):
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            generation = info["generation"]
            self.count[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._start

    def reading(self) -> tuple[float, int]:
        """(seconds in all collections, full collections) so far."""
        return sum(self.seconds), self.count[2]


class _ImportClock:
    """Time spent in `import` statements (the imported modules' own code included), outermost ones only,
    per thread kind: builtins.__import__ wrapped. Imports made by importlib.import_module outside any
    import statement are not counted."""

    def __init__(self):
        import threading

        self._threading = threading
        self._local = threading.local()
        self.main = 0.0
        self.other = 0.0
        self._original = None

    def __enter__(self):
        import builtins

        original = self._original = builtins.__import__
        local, threading = self._local, self._threading

        def timed_import(name, globals=None, locals=None, fromlist=(), level=0):
            if getattr(local, "inside", False):
                return original(name, globals, locals, fromlist, level)
            local.inside = True
            start = time.perf_counter()
            try:
                return original(name, globals, locals, fromlist, level)
            finally:
                local.inside = False
                spent = time.perf_counter() - start
                if threading.current_thread() is threading.main_thread():
                    self.main += spent
                else:
                    self.other += spent

        builtins.__import__ = timed_import
        return self

    def __exit__(self, *exc):
        import builtins

        builtins.__import__ = self._original


def cold_start_child(predict, job_json: str, clock: dict[str, float]) -> None:
    """Entry point of a cold-start child (see `_COLD_CHILD`): prints its record."""
    record = measure_cold_start(predict, json.loads(job_json), clock)
    print(_RESULT + json.dumps(record), flush=True)


def measure_cold_start(predict, job: dict[str, Any], clock: dict[str, float]) -> dict[str, Any]:
    """`Runner().setup()` with `job["model"]` as the model it preloads, then the first prediction of that
    model; in a fresh process that has imported predict.py and nothing else (see the module doc).

    clock: the child's `time.perf_counter()` at its first line (start) and once predict.py was imported
    (imported), its `time.time()` at its first line (wall_start), and its CPU time then (import_cpu).
    """
    import asyncio
    import inspect
    import resource

    import torch

    started, loadavg = _now(), os.getloadavg()[0]
    settings = Settings(**job["settings"])
    model = job["model"]
    import_rss = _peak_rss_mb(resource)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    # what setup and the first prediction call, timed where they are defined (modules predict.py has
    # imported already; tensor_reader only imports the standard library and torch)
    from musicgen import codec, generation, loading
    from musicgen import lm as lm_module
    from musicgen import model as model_module
    from musicgen.checkpoints import tensor_reader

    phases = _Phases()
    for owner, attr, name in [
        (loading, "load_checkpoint", "load_checkpoint"),
        (loading, "read_checkpoint", "read_checkpoint"),
        (tensor_reader.SafetensorsIndex, "read_all", "read_lm"),
        (loading, "build_model", "build_model"),
        (loading, "build_lm", "build_lm"),
        (loading, "_text_encoder", "text_encoder"),
        (loading, "_codec", "codec"),
        (model_module.MusicGen, "generate", "generate"),
        (model_module.MusicGen, "_conditioner", "conditioning"),
        (generation, "prefill", "prefill"),
        (generation, "decode_step", "decode_step"),
        # predict.py with the batcher (musicgen.batching): prepare, the batcher's steps, finish
        (model_module.MusicGen, "prepare", "prepare"),
        (lm_module.LanguageModel, "decode_jobs", "decode_step"),
        (model_module.MusicGen, "finish", "finish"),
        (codec.Codec, "decode", "codec_decode"),
    ]:
        phases.wrap(owner, attr, name)

    predict.DEFAULT_MODEL = model  # the model setup preloads (predict.py's default for the default model)
    import gc

    collections = _GcClock()
    gc.callbacks.append(collections)
    with _ImportClock() as imports:
        t, cpu = time.perf_counter(), _cpu_s(resource)
        runner = predict.Runner()
        runner.setup()
        setup_end, setup_cpu = time.perf_counter(), _cpu_s(resource) - cpu
        setup_gc = collections.reading()
        setup_imports_main, setup_imports_other = imports.main, imports.other
        if (model, None) not in runner.cache.keys():
            raise BenchError(f"setup() did not load {model}: are its weights in {job['weights_dir']}?")
        peak_rss_setup = _peak_rss_mb(resource)

        seconds = max(1, round(settings.seconds))
        run_start, cpu = time.perf_counter(), _cpu_s(resource)
        out = runner.run(
            model_version=model,
            prompt=settings.prompt,
            duration=seconds,
            top_k=settings.top_k,
            classifier_free_guidance=settings.cfg,
            seed=settings.seed,
        )
        if inspect.iscoroutine(out):  # an async run() (@cog.concurrent), as the server awaits it
            out = asyncio.run(out)
        run_end, prediction_cpu = time.perf_counter(), _cpu_s(resource) - cpu
        run_gc = collections.reading()
        prediction_imports = imports.main + imports.other - setup_imports_main - setup_imports_other
    if not Path(out).is_file():
        raise BenchError(f"the first prediction returned {out}, which is not a file.")

    steps = phases.calls.get("decode_step", [])
    generate_calls = phases.calls.get("generate")
    if generate_calls is None and "prepare" in phases.calls and "finish" in phases.calls:
        # the batcher's path: from MusicGen.prepare (T5 included) to the end of MusicGen.finish (EnCodec)
        generate_calls = [(phases.calls["prepare"][0][0], phases.calls["finish"][-1][1])]
    generate_calls = generate_calls or [(run_start, run_end)]
    setup_s = setup_end - t
    record: dict[str, Any] = {
        "impl": job["impl"],
        "model": model,
        "interpreter_s": round(clock["wall_start"] - job["spawned"], 3),
        "import_predict_s": round(clock["imported"] - clock["start"], 3),
        "setup_s": round(setup_s, 3),
        "ready_s": round(setup_end - clock["start"], 3),
        "time_to_first_step_s": round(steps[0][1] - run_start, 3) if steps else None,
        "first_prediction_s": round(run_end - run_start, 3),
        # CPU time of the process (all its threads): what a busy machine's other processes cannot shorten
        "import_predict_cpu_s": round(clock["import_cpu"], 3),
        "setup_cpu_s": round(setup_cpu, 3),
        "first_prediction_cpu_s": round(prediction_cpu, 3),
        # setup, by what it calls
        "setup_imports_s": round(setup_imports_main, 3),
        "load_checkpoint_s": phases.seconds("load_checkpoint"),
        "read_checkpoint_s": phases.seconds("read_checkpoint"),
        "read_lm_s": phases.seconds("read_lm"),
        "build_model_s": phases.seconds("build_model"),
        "build_lm_s": phases.seconds("build_lm"),
        "text_encoder_s": phases.seconds("text_encoder"),
        "codec_s": phases.seconds("codec"),
        # the first prediction, in the order it runs
        "before_generate_s": round(generate_calls[0][0] - run_start, 3),
        "conditioning_s": phases.seconds("conditioning"),
        "prefill_s": phases.seconds("prefill"),
        "first_step_s": round(steps[0][1] - steps[0][0], 4) if steps else None,
        "second_step_s": round(steps[1][1] - steps[1][0], 4) if len(steps) > 1 else None,
        "decode_steps": len(steps),
        "decode_steps_s": phases.seconds("decode_step"),
        "codec_decode_s": phases.seconds("codec_decode"),
        "after_generate_s": round(run_end - generate_calls[0][1], 3),
        "prediction_imports_s": round(prediction_imports, 3),
        # the garbage collector's collections (all generations) and how many of them were full ones
        "setup_gc_s": round(setup_gc[0], 3),
        "setup_full_collections": setup_gc[1],
        "prediction_gc_s": round(run_gc[0] - setup_gc[0], 3),
        "prediction_full_collections": run_gc[1] - setup_gc[1],
        "seconds": seconds,
        "import_rss_mb": round(import_rss, 1),
        "peak_rss_setup_mb": round(peak_rss_setup, 1),
        "peak_rss_mb": round(_peak_rss_mb(resource), 1),
        "torch_threads": torch.get_num_threads(),
        "started": started,
        "finished": _now(),
        "loadavg_1m_at_start": round(loadavg, 2),
    }
    return record


def set_page_cache(folder: Path, mode: str) -> None:
    """Puts the checkpoint's files in the page cache ("warm": read once) or takes them out ("cold":
    posix_fadvise DONTNEED, which drops this file's clean, unmapped pages and nothing else's)."""
    if mode == "warm":
        _warm_file_cache(folder)
        return
    for f in sorted(folder.iterdir()):
        if f.is_file():
            fd = os.open(f.resolve(), os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages are not dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run_cold_start(
    spec: CheckpointSpec,
    settings: Settings,
    cache: Path | None = None,
    rounds: int = 1,
    page_cache: str = "warm",
    baseline: Path | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Cold starts of predict.py: each round, a fresh process per tree (this one, `musicgen`, and
    `baseline` when given) imports predict.py, runs `Runner().setup()` with the checkpoint of `spec`
    as the model it preloads (served under the name `cold_start_variant(spec)` from a weights folder of
    its own, MUSICGEN_WEIGHTS_DIR), then one prediction of `settings.seconds` (whole seconds, at least
    1) of that model. Every other round runs the trees in reverse order; before each process the
    checkpoint's files are put into (warm) or out of (cold) the page cache.
    """
    temporary = cache is None
    root = Path(tempfile.mkdtemp(prefix="musicgen-bench-")) if temporary else Path(cache)
    weights = Path(tempfile.mkdtemp(prefix="musicgen-cold-start-weights-"))
    try:
        folder = ensure_checkpoint(spec, root)
        model = cold_start_variant(spec)
        (weights / model).symlink_to(folder.resolve(), target_is_directory=True)
        common = {
            "arch": spec.arch,
            "stereo": spec.stereo,
            "melody": spec.melody,
            **checkpoint_info(folder),
            "checkpoint": str(folder),
            "page_cache": page_cache,
        }
        trees = [("musicgen", _ROOT)] + ([("baseline", Path(baseline).resolve())] if baseline else [])
        records = []
        for r in range(rounds):
            measured = []
            for name, tree in trees if r % 2 == 0 else trees[::-1]:
                set_page_cache(folder, page_cache)
                _log(f"cold start of {name} ({tree}) with {model} = {spec.name}, page cache {page_cache} ...")
                job = {
                    "task": "cold-start",
                    "impl": name,
                    "root": str(tree),
                    "model": model,
                    "weights_dir": str(weights),
                    "settings": asdict(settings),
                }
                try:
                    record = _run_child(job)
                except BenchError as e:
                    _log(str(e))
                    record = {"impl": name, "error": str(e)}
                record = {"impl": record.pop("impl"), **common, "tree": str(tree), **record}
                if rounds > 1:
                    record["round"] = r + 1
                measured.append(record)
            measured.sort(key=lambda record: [n for n, _ in trees].index(record["impl"]))
            records += measured
            if on_record is not None:
                for record in measured:
                    on_record(record)
        return records
    finally:
        shutil.rmtree(weights, ignore_errors=True)
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


# the figures whose median over rounds the cold-start summary gives, in its order
COLD_START_SUMMARY = (
    "import_predict_s",
    "setup_s",
    "setup_cpu_s",
    "ready_s",
    "time_to_first_step_s",
    "first_prediction_s",
    "setup_imports_s",
    "read_lm_s",
    "build_lm_s",
    "text_encoder_s",
    "codec_s",
    "conditioning_s",
    "prefill_s",
    "first_step_s",
    "second_step_s",
    "codec_decode_s",
    "setup_gc_s",
    "prediction_gc_s",
    "peak_rss_mb",
)


def summarize_cold_start(records: list[dict[str, Any]]) -> list[str]:
    """Per tree, the median over its rounds of each figure of COLD_START_SUMMARY (and how many rounds)."""
    lines = []
    for impl in dict.fromkeys(r["impl"] for r in records):
        ok = [r for r in records if r["impl"] == impl and "error" not in r]
        parts = []
        for key in COLD_START_SUMMARY:
            values = [r[key] for r in ok if r.get(key) is not None]
            if values:
                parts.append(f"{key} {statistics.median(values):.3f}")
        lines.append(f"{impl}: medians of {len(ok)} round(s): " + ", ".join(parts))
    return lines


_COLD_COLUMNS = [
    ("round", "round", "{}"),
    ("impl", "impl", "{}"),
    ("model", "model", "{}"),
    ("import_predict_s", "import s", "{:.2f}"),
    ("setup_s", "setup s", "{:.2f}"),
    ("ready_s", "ready s", "{:.2f}"),
    ("time_to_first_step_s", "first step at s", "{:.2f}"),
    ("first_prediction_s", "prediction s", "{:.2f}"),
    ("setup_imports_s", "setup imports s", "{:.2f}"),
    ("read_lm_s", "read LM s", "{:.2f}"),
    ("text_encoder_s", "T5 s", "{:.2f}"),
    ("codec_s", "EnCodec s", "{:.2f}"),
    ("first_step_s", "step 1 s", "{:.3f}"),
    ("second_step_s", "step 2 s", "{:.3f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
]


# ---- MusicGen-Style (--style) ---------------------------------------------------------------------
@dataclass(frozen=True)
class StyleSettings:
    """What a MusicGen-Style request asks besides `Settings`."""

    excerpt: float = 3.0  # seconds of the style excerpt (the release's default)
    eval_q: int = 3  # style codebooks used (the release's default)
    cfg_beta: float | None = None  # double classifier-free guidance (3 rows per clip instead of 2)


def make_style_checkpoint(spec: CheckpointSpec, tokenizer_dir: Path):
    """A `Checkpoint` of MusicGen-Style with random weights (see the module doc); the tiny tokenizer is written
    to `tokenizer_dir`. arch "tiny": `musicgen.tiny`'s tiny style model."""
    import torch
    from transformers import EncodecConfig, EncodecModel, HubertConfig, HubertModel, T5Config, T5EncoderModel

    from .checkpoints import Checkpoint
    from .config import LMConfig, ModelConfig, StyleConfig
    from .lm import LanguageModel
    from .style import StyleEncoder
    from .tiny import make_tiny_style_checkpoint, make_tokenizer

    if spec.arch == "tiny":
        tiny = make_tiny_style_checkpoint(spec.seed)
        for name, data in tiny.tokenizer_files.items():
            (tokenizer_dir / name).write_bytes(data)
        return tiny.checkpoint(tokenizer_dir)
    make_tokenizer().save_pretrained(tokenizer_dir)
    torch.manual_seed(spec.seed)
    mert_cfg = HubertConfig(**MERT_95M)
    style = StyleConfig(mert=mert_cfg.to_dict())  # the release's: 'default' transformer, 6 x 1024 codebooks
    dim, layers, heads = ARCHS[spec.arch]
    lm_cfg = LMConfig(
        dim=dim,
        num_heads=heads,
        num_layers=layers,
        ffn_dim=4 * dim,
        num_codebooks=4,
        text_dim=T5_BASE["d_model"],
        conditioning="style",
        style_dim=style.dim,
    )
    t5 = T5EncoderModel(T5Config(**T5_BASE))
    codec = EncodecModel(EncodecConfig(**ENCODEC_32KHZ))
    encoder = StyleEncoder(style).state_dict()
    encoder["running_var"] += torch.rand(style.dim)
    encoder["codebooks"] = torch.randn(style.num_quantizers, style.bins, style.dim)
    return Checkpoint(
        config=ModelConfig(
            lm=lm_cfg, text_encoder=t5.config.to_dict(), codec=codec.config.to_dict(), style=style
        ),
        lm_state=LanguageModel(lm_cfg).state_dict(),
        text_encoder_state=t5.state_dict(),
        codec_state=codec.state_dict(),
        tokenizer_dir=tokenizer_dir,
        style_state=encoder,
        mert_state=HubertModel(mert_cfg).state_dict(),
        source=f"random {spec.arch} MusicGen-Style",
    )


def mert_flops(config: dict, samples: int) -> int:
    """FLOPs (two per multiply-add) of one MERT / HuBERT forward over `samples` samples at its rate: the
    convolution stack, the feature projection, the positional convolution, every layer's attention and
    feed-forward matrices and the attention itself. Norms, activations and additions are left out: a few
    FLOPs per value, under 1 % here."""
    length, channels, flops = samples, 1, 0
    for out, kernel, stride in zip(
        config["conv_dim"], config["conv_kernel"], config["conv_stride"], strict=True
    ):
        length = (length - kernel) // stride + 1
        flops += 2 * channels * out * kernel * length
        channels = out
    frames, H, I = length, config["hidden_size"], config["intermediate_size"]
    flops += 2 * frames * channels * H  # feature projection
    # grouped convolution over time, padded by K // 2 on both sides (an even K gives one frame more)
    K, groups = config["num_conv_pos_embeddings"], config["num_conv_pos_embedding_groups"]
    flops += 2 * (frames + 2 * (K // 2) - K + 1) * H * (H // groups) * K
    per_layer = 2 * frames * (4 * H * H + 2 * H * I) + 4 * frames * frames * H
    return flops + config["num_hidden_layers"] * per_layer


def mert_frames(config: dict, samples: int) -> int:
    """Frames MERT gives for `samples` samples (its convolution stack)."""
    for kernel, stride in zip(config["conv_kernel"], config["conv_stride"], strict=True):
        samples = (samples - kernel) // stride + 1
    return samples


def style_encoder_flops(cfg, frames: int, eval_q: int) -> int:
    """FLOPs of `musicgen.style.StyleEncoder` (StyleConfig `cfg`) on `frames` MERT frames: the projection,
    the transformer (matrices and attention) on every frame, then `eval_q` codebook searches on every
    ds_factor-th frame. BatchNorm and the other per-value work are left out."""
    D, F = cfg.dim, cfg.ffn_dim
    flops = 2 * frames * cfg.feature_dim * D
    flops += cfg.num_layers * (2 * frames * (4 * D * D + 2 * D * F) + 4 * frames * frames * D)
    tokens = -(-frames // cfg.ds_factor)
    return flops + eval_q * 2 * tokens * cfg.bins * D


def measure_style(
    spec: CheckpointSpec, settings: Settings, style: StyleSettings, rounds: int, process_start: float
) -> list[dict[str, Any]]:
    """Builds MusicGen-Style with random weights and measures its style conditioner and decode loop in each
    of `rounds` rounds (see the module doc); call it in a fresh process. Returns one record per round."""
    import resource

    import julius
    import torch

    from .loading import build_model
    from .sampling import SamplingParams
    from .style import excerpt_samples, token_count

    started = _now()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        model = build_model(make_style_checkpoint(spec, Path(tokenizer_dir)), settings.device)
    build_s = time.perf_counter() - t
    cfg, device, B = model.config.style, settings.device, settings.batch
    conditioner = model.style
    samples = excerpt_samples(cfg, style.excerpt)
    gen = torch.Generator().manual_seed(settings.seed)
    excerpts = 0.1 * torch.randn(B, samples, generator=gen)
    at_feature_rate = samples * cfg.feature_rate // cfg.sample_rate
    frames = mert_frames(conditioner.mert.config.to_dict(), at_feature_rate)
    mert_gflop = mert_flops(conditioner.mert.config.to_dict(), at_feature_rate) * B / 1e9
    encoder_gflop = style_encoder_flops(cfg, frames, style.eval_q) * B / 1e9
    sampling = SamplingParams(top_k=settings.top_k, cfg_coef=settings.cfg, cfg_beta=style.cfg_beta)
    frame_rate, max_delay = model.config.frame_rate, model.config.lm.max_delay

    def request(frames: int) -> float:
        """One generate call with a style for every clip: conditioner, T5, prefill, frames + max_delay steps."""
        start = time.perf_counter()
        model.generate(
            [settings.prompt] * B,
            duration=(frames + 0.5) / frame_rate,
            sampling=sampling,
            seed=settings.seed,
            style=[e[None] for e in excerpts],
            style_excerpt_length=style.excerpt,
            style_excerpt_start=0.0,
            style_eval_q=style.eval_q,
        )
        _sync(device)
        return time.perf_counter() - start

    def timed(fn, *args):
        _sync(device)
        start = time.perf_counter()
        out = fn(*args)
        _sync(device)
        return time.perf_counter() - start, out

    @torch.inference_mode()
    def conditioner_side() -> dict[str, float]:
        """The whole conditioner, then its parts alone; the fastest of `repeats` calls of each."""
        whole, resample, mert, encoder = [], [], [], []
        for _ in range(settings.repeats):
            whole.append(timed(conditioner, excerpts, style.eval_q)[0])
            wav = excerpts.to(device)
            seconds, wav = timed(julius.resample_frac, wav, cfg.sample_rate, cfg.feature_rate)
            resample.append(seconds)
            seconds, features = timed(lambda w: conditioner.mert(w).last_hidden_state, wav)
            mert.append(seconds)
            encoder.append(timed(conditioner.encoder, features, style.eval_q)[0])
        return {
            "conditioner_s": min(whole),
            "resample_s": min(resample),
            "mert_s": min(mert),
            "style_encoder_s": min(encoder),
        }

    def decode_side() -> dict[str, float | None]:
        """The difference method over whole requests with a style (EnCodec stubbed)."""
        n1, n2 = SHORT_STEPS, SHORT_STEPS + settings.steps
        t1s, t2s = [], []
        for _ in range(settings.repeats):
            t1s.append(request(n1 - max_delay))
            t2s.append(request(n2 - max_delay))
        rate = _rate(n2 - n1, min(t2s) - min(t1s))
        return {
            "steps_per_s": rate,
            "steps_per_s_runs": [_rate(n2 - n1, b - a) for a, b in zip(t1s, t2s, strict=True)],
            "fixed_s": None if rate is None else min(t1s) - n1 / rate,
        }

    text_tokens = len(model.text.tokenizer(settings.prompt)["input_ids"])
    style_tokens = token_count(cfg, samples)
    step_gb = step_weights_style(model.config.lm) * _bytes_per_weight("musicgen", device) / 1e9
    common = {
        "impl": "musicgen",
        "model": "style",
        "arch": spec.arch,
        "batch": B,
        "excerpt_s": style.excerpt,
        "eval_q": style.eval_q,
        "cfg": settings.cfg,
        "cfg_beta": style.cfg_beta,
        "top_k": settings.top_k,
        "style_tokens": style_tokens,
        "text_tokens": text_tokens,
        "prefix_tokens": style_tokens + text_tokens,
        "mert_frames": frames,
        "mert_params_m": round(sum(p.numel() for p in conditioner.mert.parameters()) / 1e6, 1),
        "style_encoder_params_m": round(
            sum(t.numel() for t in [*conditioner.encoder.parameters(), *conditioner.encoder.buffers()]) / 1e6,
            1,
        ),
        "lm_params_m": round(sum(p.numel() for p in model.lm.parameters()) / 1e6, 1),
        "mert_gflop": round(mert_gflop, 3),
        "style_encoder_gflop": round(encoder_gflop, 3),
        "step_weights_gb": round(step_gb, 3),
        "steps": settings.steps,
        "repeats": settings.repeats,
        "build_s": round(build_s, 2),
        "import_and_build_s": round(time.perf_counter() - process_start, 2),
        "device": device,
        "torch_threads": torch.get_num_threads(),
    }
    records = []
    with _stub_decode(model.codec.model):
        request(SHORT_STEPS - max_delay)  # warm-up of both sides
        conditioner(excerpts, style.eval_q)
        for r in range(rounds):
            loadavg = os.getloadavg()[0]
            sides = [conditioner_side, decode_side]
            measured: dict[str, Any] = {}
            for side in sides if r % 2 == 0 else sides[::-1]:  # drift favours neither side
                measured.update(side())
            bandwidth = read_bandwidth_gbs(device)
            rate = measured["steps_per_s"]
            record = {**common, "round": r + 1, **measured, "bandwidth_gbs": bandwidth}
            record["bound_steps_per_s"] = round(bandwidth / step_gb, 2)
            if rate:
                record["step_s"] = 1 / rate
                record["decode_s_per_audio_s"] = frame_rate / rate
                record["conditioner_steps"] = measured["conditioner_s"] * rate
            record["mert_gflops_per_s"] = mert_gflop / measured["mert_s"]
            record["style_encoder_gflops_per_s"] = encoder_gflop / measured["style_encoder_s"]
            for key, value in record.items():
                if isinstance(value, float) and key not in ("excerpt_s", "cfg", "cfg_beta"):
                    record[key] = round(value, 4)
            record["peak_rss_mb"] = round(_peak_rss_mb(resource), 1)
            record["loadavg_1m_at_start"] = round(loadavg, 2)
            records.append(record)
            _log(
                f"round {r + 1} of {rounds}: conditioner {record['conditioner_s']} s (MERT {record['mert_s']} s), "
                f"decode step {record.get('step_s')} s, load average {record['loadavg_1m_at_start']}"
            )
    for record in records:
        record.update(started=started, finished=_now())
    return records


def step_weights_style(lm) -> int:
    """Weights a decode step of a style LM (no cross-attention; LMConfig `lm`) reads if it reads each matrix
    once: self-attention and feed-forward matrices of every layer, and the output heads."""
    layers = lm.num_layers * (4 * lm.dim * lm.dim + 2 * lm.dim * lm.ffn_dim)
    return layers + lm.num_codebooks * lm.card * lm.dim


def run_style_bench(
    spec: CheckpointSpec, settings: Settings, style: StyleSettings, rounds: int = 1
) -> list[dict[str, Any]]:
    """MusicGen-Style's conditioner and decode loop, `rounds` rounds in one fresh process (see the module
    doc); one record per round."""
    _log(f"building a random {spec.arch} MusicGen-Style model and measuring it, {rounds} round(s) ...")
    job = {
        "task": "style",
        "spec": asdict(spec),
        "settings": asdict(settings),
        "style": asdict(style),
        "rounds": rounds,
    }
    return _run_child(job)


# the figures whose median over rounds the style summary gives
STYLE_SUMMARY = (
    "conditioner_s",
    "resample_s",
    "mert_s",
    "style_encoder_s",
    "step_s",
    "steps_per_s",
    "decode_s_per_audio_s",
    "conditioner_steps",
    "fixed_s",
    "mert_gflops_per_s",
    "bandwidth_gbs",
    "bound_steps_per_s",
)


def summarize_style(records: list[dict[str, Any]]) -> list[str]:
    """The median over rounds of each figure of STYLE_SUMMARY, and a sentence putting the two sides together."""
    medians = {}
    for key in STYLE_SUMMARY:
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            medians[key] = statistics.median(values)
    lines = [f"medians of {len(records)} round(s): " + ", ".join(f"{k} {v:.4g}" for k, v in medians.items())]
    if "step_s" in medians:
        first = records[0]
        lines.append(
            f"per request the style conditioner ({first['excerpt_s']} s excerpt, {first['batch']} clip(s)) costs "
            f"{medians['conditioner_s']:.3f} s, once = {medians['conditioner_steps']:.1f} decode steps of "
            f"{medians['step_s']:.3f} s; the decode loop costs {medians['decode_s_per_audio_s']:.2f} s per "
            "second of audio"
        )
    return lines


_STYLE_COLUMNS = [
    ("round", "round", "{}"),
    ("arch", "arch", "{}"),
    ("batch", "batch", "{}"),
    ("excerpt_s", "excerpt s", "{:.1f}"),
    ("prefix_tokens", "prefix tokens", "{}"),
    ("conditioner_s", "conditioner s", "{:.3f}"),
    ("mert_s", "MERT s", "{:.3f}"),
    ("style_encoder_s", "style enc. s", "{:.3f}"),
    ("mert_gflops_per_s", "MERT GFLOP/s", "{:.1f}"),
    ("step_s", "step s", "{:.4f}"),
    ("decode_s_per_audio_s", "decode s per audio s", "{:.2f}"),
    ("conditioner_steps", "conditioner in steps", "{:.1f}"),
    ("bound_steps_per_s", "bound steps/s", "{:.2f}"),
    ("bandwidth_gbs", "GB/s", "{:.1f}"),
    ("torch_threads", "threads", "{}"),
]


# ---- serving concurrent requests (--serve) --------------------------------------------------------
# prompts of the served requests, request i taking the i-th (cycling past the last: its seed still differs);
# all made of words the tiny tokenizer knows
SERVE_PROMPTS = (
    "lo-fi hip hop beat with warm piano and soft drums",
    "80s synth pop with punchy bass",
    "epic orchestral strings and brass",
    "acoustic guitar folk song",
    "jazz trio with upright bass",
    "ambient pads",
)
SERVE_SEED = 1000  # request i is seeded SERVE_SEED + i; the warm-up request SERVE_SEED - 1
SERVE_SIDES = ("sequential", "concurrent")
_AT_CAPACITY = "At capacity"  # the start of Cog's answer when every slot is taken
# predict.py's lines in a prediction's logs (musicgen.batching.Ticket.summary and Runner.run)
# the line printed when a request is queued, and the one printed when its codes are done
_QUEUED_LINE = re.compile(r"^queued\b.*\b(\d+) steps to go")
_SUMMARY_LINE = re.compile(r"^queued\b.*\bjoined batch (\d+) with (\d+) clips?")
_FIRST_STEP = re.compile(r"first step ([\d.]+) s after it was queued")
_QUEUED_FOR = re.compile(r"^queued ([\d.]+) s\b")
_STEPS_DONE = re.compile(r"\b(\d+) steps\s*$")


def serve_inputs(model: str, count: int, settings: Settings) -> list[dict[str, Any]]:
    """The inputs of the `count` requests of a round: `model`, whole seconds (at least 1), wav, each its
    own prompt and seed; the same on both sides and in every round."""
    return [
        {
            "model_version": model,
            "prompt": SERVE_PROMPTS[i % len(SERVE_PROMPTS)],
            "duration": max(1, round(settings.seconds)),
            "top_k": settings.top_k,
            "classifier_free_guidance": settings.cfg,
            "output_format": "wav",
            "seed": SERVE_SEED + i,
        }
        for i in range(count)
    ]


class CogServer:
    """`python -m cog.server.http` serving predict.py from `root`, as people start it locally (README
    "Cog"): its worker is the `python` first on PATH, so this interpreter's folder goes first. It runs in
    its own process group, which `stop` ends (the worker with it)."""

    def __init__(self, root: Path, weights_dir: Path, log: Path, env: dict[str, str]):
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("COG_")}
        environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; a missing model fails at once
        environ.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            COG_PREDICT_TYPE_STUB="predict.py:Runner",
            PORT=str(port),
            MUSICGEN_WEIGHTS_DIR=str(weights_dir),
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            **env,
        )
        self.url, self.log = f"http://127.0.0.1:{port}", log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
                cwd=root,
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 10) -> dict:
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as err:  # refusals come as 4xx with a JSON body
            text = err.read()
        return json.loads(text) if text.strip() else {}

    def status(self) -> str | None:
        try:
            return self._call("GET", "/health-check").get("status")
        except (OSError, ValueError):
            return None

    def wait(self, until: Callable[[str | None], bool], timeout: float, what: str) -> str | None:
        """Polls the health check until `until(status)`; BenchError with the log's end after `timeout` s
        or when the server has exited."""
        deadline = time.monotonic() + timeout
        status = self.status()
        while not until(status):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the Cog server did not become {what} (status {status}):\n{self.tail()}")
            time.sleep(0.1)
            status = self.status()
        return status

    def predict(self, inputs: dict[str, Any], timeout: float) -> tuple[dict, int]:
        """A synchronous prediction: (the finished prediction's JSON, how many times the server answered
        "at capacity" first; a slot is freed just after its answer is sent, so a request right after
        another may be turned away once)."""
        for refused in range(1000):
            answer = self._call("POST", "/predictions", {"input": inputs}, timeout)
            if not str(answer.get("error") or "").startswith(_AT_CAPACITY):
                return answer, refused
            time.sleep(0.02)
        raise BenchError(f"the Cog server stayed at capacity: {answer}")

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def wav_samples(output: str) -> tuple[Any, int, int]:
    """A prediction's wav output (a data URL: the local server has no upload URL) -> (its 16-bit samples,
    interleaved, as an array('h'), channels, sample rate)."""
    import array
    import base64
    import io
    import wave

    header, _, payload = output.partition(",")
    if not (header.startswith("data:") and header.endswith(";base64")):
        raise BenchError(f"the output is not a data URL: {output[:80]!r}")
    with wave.open(io.BytesIO(base64.b64decode(payload))) as wav:
        if wav.getsampwidth() != 2:
            raise BenchError(f"the output wav has {8 * wav.getsampwidth()}-bit samples, not 16")
        samples = array.array("h", wav.readframes(wav.getnframes()))
        if sys.byteorder == "big":
            samples.byteswap()
        return samples, wav.getnchannels(), wav.getframerate()


def compare_outputs(a, b) -> int:
    """How many samples of `a` equal those of `b` at the same place (a length difference counts as unequal)."""
    if a == b:
        return len(a)
    return sum(x == y for x, y in zip(a, b, strict=False))


def _log_times(log: Path) -> dict[str, dict[str, float]]:
    """Per prediction id, when the server saw it start, its queueing line, its batch summary line and its
    end (seconds since the epoch), read from the server's JSON log lines (coglet's); {} if unreadable."""
    times: dict[str, dict[str, float]] = {}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return times
    for line in lines:
        try:
            event = json.loads(line)
            fields = event["fields"]
            prediction = fields.get("prediction_id")
            message = str(fields.get("message", ""))
            at = _epoch(event["timestamp"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if prediction is None:
            continue
        mark = times.setdefault(prediction, {})
        if message == "Starting prediction":
            mark.setdefault("started", at)
        elif _QUEUED_LINE.match(message):
            mark.setdefault("queued", at)
        elif _SUMMARY_LINE.match(message):
            mark.setdefault("decoded", at)
        elif message == "Prediction worker completed":
            mark.setdefault("completed", at)
    return times


def _epoch(stamp: str) -> float:
    """An RFC 3339 time with up to 9 decimals ('2026-12-02T04:04:05.163596123Z') -> seconds since the epoch."""
    stamp = stamp.replace("Z", "+00:00")
    head, dot, rest = stamp.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        stamp = f"{head}.{rest[:digits][:6].ljust(6, '0')}{rest[digits:]}"
    return datetime.datetime.fromisoformat(stamp).timestamp()


def _request_record(side: str, index: int, inputs: dict, answer: dict, latency: float, refused: int):
    """One served request: its client-side latency and what its logs (and the server's log) tell."""
    logs = answer.get("logs") or ""
    record: dict[str, Any] = {
        "side": side,
        "index": index,
        "seed": inputs["seed"],
        "prompt": inputs["prompt"],
        "id": answer.get("id"),
        "latency_s": round(latency, 3),
        "predict_time_s": (answer.get("metrics") or {}).get("predict_time"),
        "refused": refused,
    }
    for line in logs.splitlines():
        if (summary := _SUMMARY_LINE.search(line)) is not None:
            record.update(batch_id=int(summary[1]), batch_clips=int(summary[2]))
            for key, pattern, kind in [
                ("queued_s", _QUEUED_FOR, float),
                ("first_step_after_queue_s", _FIRST_STEP, float),
                ("steps", _STEPS_DONE, int),
            ]:
                if (found := pattern.search(line)) is not None:
                    record[key] = kind(found[1])
        elif (queued := _QUEUED_LINE.search(line)) is not None:
            record["queued_line"] = line.strip()
            record["steps_to_go"] = int(queued[1])
    return record


def _add_log_times(records: list[dict[str, Any]], times: dict[str, dict[str, float]]) -> None:
    """From the server's log: `prepare_s` (start to queued: input checks, model look-up, T5),
    `time_to_first_step_s` (start to the first decode step), `decode_s` (queued to codes: waiting and the
    shared decode), `finish_s` (codes to the end: EnCodec, normalising, the wav)."""
    for r in records:
        t = times.get(r.get("id") or "", {})
        if "started" in t and "queued" in t:
            r["prepare_s"] = round(t["queued"] - t["started"], 3)
            if r.get("first_step_after_queue_s") is not None:
                r["time_to_first_step_s"] = round(r["prepare_s"] + r["first_step_after_queue_s"], 3)
        if "queued" in t and "decoded" in t:
            r["decode_s"] = round(t["decoded"] - t["queued"], 3)
        if "decoded" in t and "completed" in t:
            r["finish_s"] = round(t["completed"] - t["decoded"], 3)


def serve_side(
    server: CogServer, side: str, requests: list[dict[str, Any]], timeout: float
) -> tuple[float, list[dict[str, Any]], list[Any]]:
    """The requests one after another (sequential: each sent when the previous one has answered) or all at
    once (concurrent: one thread each). Returns (wall seconds from the first request sent to the last
    answer, a record per request, their outputs' samples)."""
    import threading

    server.wait(lambda status: status == "READY", 60, "idle")  # nothing left over from before
    answers: list[tuple[dict, float, int] | None] = [None] * len(requests)
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            t = time.perf_counter()
            answer, refused = server.predict(requests[i], timeout)
            answers[i] = (answer, time.perf_counter() - t, refused)
        except BaseException as err:  # noqa: BLE001 - raised below, in the calling thread
            errors.append(err)

    start = time.perf_counter()
    if side == "sequential":
        for i in range(len(requests)):
            send(i)
    else:
        threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise BenchError(f"a {side} request failed: {errors[0]!r}")
    records, outputs = [], []
    for i, (answer, latency, refused) in enumerate(answers):
        if answer.get("status") != "succeeded":
            raise BenchError(
                f"{side} request {i} ended {answer.get('status')}: {answer.get('error')}\n{server.tail()}"
            )
        records.append(_request_record(side, i, requests[i], answer, latency, refused))
        outputs.append(wav_samples(answer["output"]))
    return wall, records, outputs


def measure_serve(
    spec: CheckpointSpec,
    settings: Settings,
    requests: int = 4,
    rounds: int = 1,
    cache: Path | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """`requests` requests through one real Cog server, one after another and all at once, `rounds` rounds
    (see the module doc); one record per round."""
    temporary = cache is None
    root = Path(tempfile.mkdtemp(prefix="musicgen-bench-")) if temporary else Path(cache)
    work = Path(tempfile.mkdtemp(prefix="musicgen-serve-"))
    server = None
    try:
        folder = ensure_checkpoint(spec, root)
        model = cold_start_variant(spec)
        weights = work / "weights"
        weights.mkdir()
        (weights / model).symlink_to(folder.resolve(), target_is_directory=True)
        env = {"COG_MAX_CONCURRENCY": str(requests), "MUSICGEN_MAX_BATCH": str(requests)}
        if settings.threads:
            env["OMP_NUM_THREADS"] = str(settings.threads)  # the worker's torch threads
        seconds = max(1, round(settings.seconds))
        timeout = 600 + 120 * seconds * requests  # per request: far more than it takes
        _log(f"starting the Cog server with {model} = {spec.name}, {requests} slots ...")
        started = time.perf_counter()
        server = CogServer(_ROOT, weights, work / "server.log", env)
        server.wait(lambda status: status == "READY", 300, "ready")
        ready_s = time.perf_counter() - started
        warm_up = {**serve_inputs(model, 1, settings)[0], "seed": SERVE_SEED - 1, "prompt": PROMPT}
        _log(f"warm-up request (loads {model}) ...")
        t = time.perf_counter()
        answer, _ = server.predict(warm_up, timeout)
        warm_up_s = time.perf_counter() - t
        if answer.get("status") != "succeeded":
            raise BenchError(f"the warm-up request ended {answer.get('status')}: {answer.get('error')}")
        inputs = serve_inputs(model, requests, settings)
        common = {
            "impl": "musicgen",
            "measurement": "serve",
            "model": model,
            "arch": spec.arch,
            "stereo": spec.stereo,
            "melody": spec.melody,
            **checkpoint_info(folder),
            "requests": requests,
            "seconds": seconds,
            "max_concurrency": requests,
            "max_batch": requests,
            "top_k": settings.top_k,
            "cfg": settings.cfg,
            "threads": settings.threads,
            "server_ready_s": round(ready_s, 3),
            "warm_up_s": round(warm_up_s, 3),
        }
        records = []
        for r in range(rounds):
            loadavg, round_started = os.getloadavg()[0], _now()
            walls, per_request, outputs = {}, {}, {}
            for side in SERVE_SIDES if r % 2 == 0 else SERVE_SIDES[::-1]:  # drift favours neither side
                _log(f"round {r + 1} of {rounds}: {requests} requests of {seconds} s, {side} ...")
                walls[side], per_request[side], outputs[side] = serve_side(server, side, inputs, timeout)
            _add_log_times(per_request["sequential"] + per_request["concurrent"], _log_times(server.log))
            record = {**common, "round": r + 1, **_serve_figures(walls, per_request, outputs, seconds)}
            record.update(loadavg_1m_at_start=round(loadavg, 2), started=round_started, finished=_now())
            records.append(record)
            _log(
                f"round {r + 1}: sequential {record['sequential_s']} s, concurrent {record['concurrent_s']} s, "
                f"x{record['throughput_ratio']}; outputs equal {record['equal_outputs']} of {requests}"
            )
            if on_record is not None:
                on_record(record)
        return records
    except BenchError:
        if server is not None:
            sys.stderr.write(server.tail())
        raise
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _serve_figures(walls: dict, per_request: dict, outputs: dict, seconds: int) -> dict[str, Any]:
    """A round's figures from both sides' wall times, requests and outputs."""
    count = len(per_request["sequential"])
    figures: dict[str, Any] = {}
    for side in SERVE_SIDES:
        figures[f"{side}_s"] = round(walls[side], 3)
        figures[f"{side}_audio_s_per_s"] = round(count * seconds / walls[side], 4)
        for key in ("time_to_first_step_s", "prepare_s", "decode_s", "finish_s", "latency_s"):
            values = [r[key] for r in per_request[side] if r.get(key) is not None]
            if values:
                figures[f"{side}_{key.removesuffix('_s')}_median_s"] = round(statistics.median(values), 3)
        figures[f"{side}_batch_clips"] = [r.get("batch_clips") for r in per_request[side]]
        figures[f"{side}_batches"] = len({r.get("batch_id") for r in per_request[side]})
    figures["throughput_ratio"] = round(walls["sequential"] / walls["concurrent"], 3)
    equal, total, same = 0, 0, 0
    for (seq, seq_channels, seq_rate), (con, con_channels, con_rate) in zip(
        outputs["sequential"], outputs["concurrent"], strict=True
    ):
        samples = compare_outputs(seq, con) if (seq_channels, seq_rate) == (con_channels, con_rate) else 0
        same += samples == len(seq) == len(con)
        equal += samples
        total += max(len(seq), len(con))
    figures["equal_outputs"] = same  # requests whose two outputs are the same sample for sample
    figures["equal_sample_fraction"] = round(equal / total, 6) if total else None
    figures["output_samples"] = len(outputs["sequential"][0][0])
    figures["channels"] = outputs["sequential"][0][1]
    figures["per_request"] = per_request["sequential"] + per_request["concurrent"]
    return figures


# the figures whose median over rounds the serve summary gives, in its order
SERVE_SUMMARY = (
    "sequential_s",
    "concurrent_s",
    "sequential_audio_s_per_s",
    "concurrent_audio_s_per_s",
    "throughput_ratio",
    "sequential_time_to_first_step_median_s",
    "concurrent_time_to_first_step_median_s",
    "sequential_latency_median_s",
    "concurrent_latency_median_s",
    "sequential_prepare_median_s",
    "concurrent_prepare_median_s",
    "sequential_finish_median_s",
    "concurrent_finish_median_s",
)


def summarize_serve(records: list[dict[str, Any]]) -> list[str]:
    """The medians over rounds of SERVE_SUMMARY, the ratio of every round, and the equality of outputs."""
    medians = {}
    for key in SERVE_SUMMARY:
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            medians[key] = statistics.median(values)
    lines = [f"medians of {len(records)} round(s): " + ", ".join(f"{k} {v:.4g}" for k, v in medians.items())]
    ratios = ", ".join(f"{r['throughput_ratio']:.2f}" for r in records)
    lines.append(
        f"throughput concurrent / sequential per round {ratios}; median {medians['throughput_ratio']:.2f}"
    )
    same = sum(r["equal_outputs"] for r in records)
    fraction = statistics.mean(r["equal_sample_fraction"] for r in records)
    lines.append(
        f"concurrent outputs equal to their sequential counterpart sample for sample: {same} of "
        f"{sum(r['requests'] for r in records)} (fraction of samples equal {fraction:.6f})"
    )
    return lines


_SERVE_COLUMNS = [
    ("round", "round", "{}"),
    ("model", "model", "{}"),
    ("requests", "requests", "{}"),
    ("seconds", "s each", "{}"),
    ("sequential_s", "sequential s", "{:.2f}"),
    ("concurrent_s", "concurrent s", "{:.2f}"),
    ("sequential_audio_s_per_s", "seq. audio s/s", "{:.3f}"),
    ("concurrent_audio_s_per_s", "conc. audio s/s", "{:.3f}"),
    ("throughput_ratio", "ratio", "{:.2f}"),
    ("sequential_time_to_first_step_median_s", "seq. first step s", "{:.2f}"),
    ("concurrent_time_to_first_step_median_s", "conc. first step s", "{:.2f}"),
    ("equal_outputs", "equal", "{}"),
    ("loadavg_1m_at_start", "load", "{:.2f}"),
]


# ---- child processes ------------------------------------------------------------------------------
_CHILD = (
    "import time\n_t0 = time.perf_counter()\nimport sys\nsys.path.insert(0, {root!r})\n"
    "from musicgen.bench import child_main\nchild_main(sys.argv[1], _t0)\n"
)


def _run_child(job: dict[str, Any]) -> dict[str, Any] | None:
    """Runs `job` in a fresh Python process; returns the result it printed (None for a build)."""
    env = dict(os.environ)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on the network
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' loading bars too
    if job["task"] == "cold-start":
        env["MUSICGEN_WEIGHTS_DIR"] = job["weights_dir"]
        script = _COLD_CHILD.format(root=job["root"], bench=str(Path(__file__).resolve()))
        job = {**job, "spawned": time.time()}
    else:
        script = _CHILD.format(root=str(_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(job)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=job.get("root"),  # a cold start runs in the tree it measures, as Cog runs in /src
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout)
        killed = " (killed by a signal: out of memory?)" if proc.returncode < 0 else ""
        raise BenchError(
            f"the {job['task']} step ({job.get('impl', job.get('spec'))}) failed in its subprocess "
            f"(exit code {proc.returncode}{killed}); its output is above."
        )
    return json.loads(lines[-1][len(_RESULT) :])


def child_main(job_json: str, process_start: float) -> None:
    """Entry point of the child processes (see `_CHILD`)."""
    job = json.loads(job_json)
    if job["task"] == "build":
        build_checkpoint(CheckpointSpec(**job["spec"]), Path(job["folder"]))
        result = None
    elif job["task"] == "style":
        style = StyleSettings(**job["style"])
        spec, settings = CheckpointSpec(**job["spec"]), Settings(**job["settings"])
        result = measure_style(spec, settings, style, job["rounds"], process_start)
    else:
        result = measure(job["impl"], Path(job["folder"]), Settings(**job["settings"]), process_start)
    print(_RESULT + json.dumps(result), flush=True)


# ---- the command ----------------------------------------------------------------------------------
def run_bench(
    spec: CheckpointSpec,
    settings: Settings,
    impls: list[str],
    cache: Path | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    rounds: int = 1,
) -> list[dict[str, Any]]:
    """Builds (or reuses) the checkpoint of `spec`, then measures each implementation in a fresh process,
    `rounds` times over (records then carry `round`), every other round in reverse order.

    cache: folder that keeps the checkpoints between runs; None: a temporary folder, removed at the end.
    on_record: called with each record once its round is measured.
    An implementation whose process fails gets a record with `error` instead of measurements.
    """
    temporary = cache is None
    root = Path(tempfile.mkdtemp(prefix="musicgen-bench-")) if temporary else Path(cache)
    try:
        folder = ensure_checkpoint(spec, root)
        common = {
            "arch": spec.arch,
            "stereo": spec.stereo,
            "melody": spec.melody,
            **checkpoint_info(folder),
            "checkpoint": str(folder),
        }
        records = []
        for r in range(rounds):
            # odd rounds run in reverse, so that a machine drifting during a run favours no implementation
            order = impls if r % 2 == 0 else impls[::-1]
            measured = [_measure_in_child(name, folder, spec, settings, common) for name in order]
            if rounds > 1:
                for record in measured:
                    record["round"] = r + 1
            _add_ratios(measured)
            measured.sort(key=lambda record: impls.index(record["impl"]))
            records += measured
            if on_record is not None:
                for record in measured:
                    on_record(record)
        return records
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _measure_in_child(
    name: str, folder: Path, spec: CheckpointSpec, settings: Settings, common: dict
) -> dict[str, Any]:
    _warm_file_cache(folder)
    _log(f"measuring {name} on {spec.name} ...")
    job = {"task": "measure", "impl": name, "folder": str(folder), "settings": asdict(settings)}
    try:
        record = _run_child(job)
    except BenchError as e:  # the other implementations still get measured
        _log(str(e))
        record = {"impl": name, "error": str(e)}
    return {"impl": record.pop("impl"), **common, **record}


def _add_ratios(records: list[dict[str, Any]]) -> None:
    """`vs_transformers`: each record's steps/s over transformers' of the same round (when both exist)."""
    reference = next((r.get("steps_per_s") for r in records if r["impl"] == "transformers"), None)
    for r in records:
        if reference and r.get("steps_per_s"):
            r["vs_transformers"] = round(r["steps_per_s"] / reference, 3)


def summarize_rounds(records: list[dict[str, Any]]) -> list[str]:
    """One line per implementation: its steps/s over transformers' in each round, and the median."""
    lines = []
    for impl in dict.fromkeys(r["impl"] for r in records if r["impl"] != "transformers"):
        ratios = [r["vs_transformers"] for r in records if r["impl"] == impl and "vs_transformers" in r]
        if ratios:
            each = ", ".join(f"{x:.2f}" for x in ratios)
            lines.append(
                f"{impl}: x transformers' steps/s per round {each}; median {statistics.median(ratios):.2f}"
            )
    return lines


_COLUMNS = [
    ("round", "round", "{}"),
    ("impl", "impl", "{}"),
    ("arch", "arch", "{}"),
    ("batch", "batch", "{}"),
    ("steps_per_s", "steps/s", "{:.2f}"),
    ("vs_transformers", "x transformers", "{:.2f}"),
    ("bound_steps_per_s", "bound steps/s", "{:.2f}"),
    ("bandwidth_gbs", "GB/s", "{:.1f}"),
    ("e2e_s_per_audio_s", "e2e s per audio s", "{:.3f}"),
    ("load_s", "load s", "{:.2f}"),
    ("import_s", "import s", "{:.2f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("model_mb", "in memory MB", "{:.0f}"),
    ("weights_mb", "on disk MB", "{:.0f}"),
    ("torch_threads", "threads", "{}"),
]


def format_table(records: list[dict[str, Any]], columns: list[tuple[str, str, str]] | None = None) -> str:
    """The records as a table with aligned columns (a round column only when there are rounds)."""
    columns = [c for c in columns or _COLUMNS if c[0] != "round" or any("round" in r for r in records)]
    header = [title for _, title, _ in columns]
    rows = [[("-" if r.get(key) is None else fmt.format(r[key])) for key, _, fmt in columns] for r in records]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if key in ("impl", "arch", "model") else cell.rjust(w)
            for (key, _, _), cell, w in zip(columns, row, widths, strict=True)
        )
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `python -m musicgen bench`."""
    p.add_argument(
        "--arch",
        choices=list(ARCHS),
        metavar="{small,medium,large}",
        help="language-model size of the published models (default small; medium with --style)",
    )
    p.add_argument("--stereo", action="store_true", help="8 codebooks, 2 audio channels")
    p.add_argument("--melody", action="store_true", help="melody architecture (conditioning prepended)")
    style = p.add_argument_group("MusicGen-Style (--style)")
    style.add_argument(
        "--style",
        action="store_true",
        help="measure MusicGen-Style (this engine only): the style conditioner's cost per request (MERT-v1-95M, "
        "style transformer, quantizer) next to the decode loop of requests with a style, in one process, "
        "--rounds rounds, medians at the end",
    )
    style.add_argument(
        "--style-excerpt",
        type=float,
        default=3.0,
        help="seconds of the style excerpt (default 3, 1.5 to 4.5)",
    )
    style.add_argument("--style-eval-q", type=int, default=3, help="style codebooks used (default 3, 1 to 6)")
    style.add_argument(
        "--cfg-beta", type=float, help="double classifier-free guidance (3 rows per clip); default: ordinary"
    )
    p.add_argument(
        "--impl", action="append", choices=list(IMPLS), help=f"repeatable; default: all ({', '.join(IMPLS)})"
    )
    p.add_argument("--batch", type=int, default=1, help="clips per generate call (default 1)")
    p.add_argument("--steps", type=int, default=100, help="decode steps timed for steps/s (default 100)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the best counts")
    p.add_argument(
        "--rounds",
        type=int,
        help="measure every implementation this many times, every other round in reverse order (default 1; "
        "--mbd: 3)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        help="audio per clip of the end-to-end run (default 2), of the cold start's prediction, of each "
        "served request (--serve: default 8)",
    )
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda...")
    p.add_argument("--threads", type=int, help="torch threads in each measuring process (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--cache", type=Path, help="keep the built checkpoints here and reuse them")
    p.add_argument("--json", action="store_true", help="one JSON object per implementation and line")
    cold = p.add_argument_group("cold start (--cold-start)")
    cold.add_argument(
        "--cold-start",
        action="store_true",
        help="measure predict.py instead: import, Runner().setup() preloading this checkpoint, and the first "
        "prediction (--seconds, whole seconds) to its first decode step and to its end; a fresh process "
        "per round (--rounds), medians at the end",
    )
    cold.add_argument(
        "--page-cache",
        choices=PAGE_CACHE_MODES,
        default="warm",
        help="before each process, read the checkpoint's files (warm, default) or drop them from the "
        "page cache (cold: as after a reboot, for these files only)",
    )
    cold.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="also measure the predict.py and musicgen/ of TREE (another copy of the repository, e.g. "
        "with some files as at an earlier commit), alternating with this one each round",
    )
    serve = p.add_argument_group("serving concurrent requests (--serve)")
    serve.add_argument(
        "--serve",
        action="store_true",
        help="measure predict.py behind the real Cog server: --concurrent requests of --seconds (default 8) "
        "sent all at once (decoded together) against the same requests one after another, each round "
        "(--rounds) both ways, medians at the end; checks that both ways give the same audio",
    )
    serve.add_argument(
        "--concurrent",
        type=int,
        default=4,
        metavar="K",
        help="requests per side, each its own prompt and seed (default 4); the server takes K at once "
        "(COG_MAX_CONCURRENCY) and decodes up to K clips together (MUSICGEN_MAX_BATCH)",
    )
    from .bench_mbd import add_mbd_arguments

    add_mbd_arguments(p)


def run_cli(args: argparse.Namespace) -> int:
    """`python -m musicgen bench` with parsed `args`."""
    from .errors import InvalidInputError

    if args.rounds is None:
        args.rounds = 3 if args.mbd else 1
    if args.batch < 1 or args.steps < 1 or args.repeats < 1 or args.rounds < 1:
        raise InvalidInputError("--batch, --steps, --repeats and --rounds must be at least 1.")
    if args.seconds is None:
        args.seconds = 8.0 if args.serve else 2.0
    if not args.seconds > 0:
        raise InvalidInputError("--seconds must be positive.")
    if args.threads is not None and args.threads < 1:
        raise InvalidInputError("--threads must be at least 1.")
    arch = args.arch or ("medium" if args.style else "small")
    spec = CheckpointSpec(arch, args.stereo, args.melody, args.seed)
    settings = Settings(
        batch=args.batch,
        steps=args.steps,
        repeats=args.repeats,
        seconds=args.seconds,
        top_k=args.top_k,
        cfg=args.cfg,
        device=args.device,
        threads=args.threads,
    )
    impls = list(dict.fromkeys(args.impl or IMPLS))

    def emit(record):
        if args.json:
            print(json.dumps(record), flush=True)

    if args.mbd:
        from .bench_mbd import run_mbd_cli

        return run_mbd_cli(args, args.rounds)
    if args.serve:
        return _serve_cli(args, spec, settings, emit)
    if args.style:
        return _style_cli(args, spec, settings, emit)
    if args.cold_start:
        return _cold_start_cli(args, spec, settings, emit)
    if args.baseline is not None:
        raise InvalidInputError("--baseline is an option of --cold-start.")

    records = run_bench(spec, settings, impls, args.cache, on_record=emit, rounds=args.rounds)
    if not args.json:
        first = records[0]
        print(
            f"{spec.name}: LM {first['lm_params_m']}M parameters ({first['total_params_m']}M in all), "
            f"{first['weights_mb']} MB of weights on disk; batch {settings.batch}, CFG {settings.cfg}, "
            f"top-k {settings.top_k}, {settings.device}; steps/s over {settings.steps} steps, "
            f"end to end for {settings.seconds} s clips, best of {settings.repeats}"
        )
        print(format_table(records))
        for line in summarize_rounds(records):
            print(line)
        for r in records:
            if "error" in r:
                print(f"{r['impl']}: {r['error']}")
    return 1 if any("error" in r for r in records) else 0


def _cold_start_cli(args: argparse.Namespace, spec: CheckpointSpec, settings: Settings, emit) -> int:
    from .errors import InvalidInputError

    if args.baseline is not None and not (args.baseline / "predict.py").is_file():
        raise InvalidInputError(
            f"--baseline {args.baseline}: no predict.py there; give a copy of the repository."
        )
    records = run_cold_start(
        spec, settings, args.cache, args.rounds, args.page_cache, args.baseline, on_record=emit
    )
    if not args.json:
        first = records[0]
        print(
            f"cold start of predict.py with {spec.name} served as {cold_start_variant(spec)}: "
            f"{first['weights_mb']} MB of weights on disk, page cache {args.page_cache}; first prediction "
            f"of {max(1, round(settings.seconds))} s, CFG {settings.cfg}, top-k {settings.top_k}"
        )
        print(format_table(records, _COLD_COLUMNS))
        for line in summarize_cold_start(records):
            print(line)
        for r in records:
            if "error" in r:
                print(f"{r['impl']}: {r['error']}")
    return 1 if any("error" in r for r in records) else 0


def _style_cli(args: argparse.Namespace, spec: CheckpointSpec, settings: Settings, emit) -> int:
    from .errors import InvalidInputError
    from .style import MAX_EVAL_Q

    others = [
        name
        for name, given in [
            ("--stereo", args.stereo),
            ("--melody", args.melody),
            ("--cold-start", args.cold_start),
            ("--baseline", args.baseline is not None),
            ("--cache", args.cache is not None),
            ("--impl", args.impl is not None and args.impl != ["musicgen"]),
        ]
        if given
    ]
    if others:
        raise InvalidInputError(
            f"--style measures this engine's MusicGen-Style (mono, built in memory); it does not take {', '.join(others)}."
        )
    if not 1.5 <= args.style_excerpt <= 4.5:
        raise InvalidInputError(
            "--style-excerpt must be between 1.5 and 4.5 s (the lengths the model takes)."
        )
    if not 1 <= args.style_eval_q <= MAX_EVAL_Q:
        raise InvalidInputError(f"--style-eval-q must be from 1 to {MAX_EVAL_Q}.")
    style = StyleSettings(args.style_excerpt, args.style_eval_q, args.cfg_beta)
    records = run_style_bench(spec, settings, style, args.rounds)
    for record in records:
        emit(record)
    if not args.json:
        first = records[0]
        print(
            f"MusicGen-Style, {spec.arch} LM ({first['lm_params_m']}M parameters, no cross-attention), MERT "
            f"{first['mert_params_m']}M, style encoder {first['style_encoder_params_m']}M; batch {settings.batch}, "
            f"{style.excerpt} s excerpts ({first['style_tokens']} style + {first['text_tokens']} text tokens), "
            f"eval_q {style.eval_q}, CFG {settings.cfg}"
            + (f", cfg_beta {style.cfg_beta}" if style.cfg_beta is not None else "")
            + f", top-k {settings.top_k}, {settings.device}; steps/s over {settings.steps} steps, best of "
            f"{settings.repeats} per round; MERT {first['mert_gflop']} GFLOP, style encoder "
            f"{first['style_encoder_gflop']} GFLOP per request"
        )
        print(format_table(records, _STYLE_COLUMNS))
        for line in summarize_style(records):
            print(line)
    return 0


def _serve_cli(args: argparse.Namespace, spec: CheckpointSpec, settings: Settings, emit) -> int:
    from .errors import InvalidInputError

    others = [
        name
        for name, given in [
            ("--style", args.style),
            ("--cold-start", args.cold_start),
            ("--baseline", args.baseline is not None),
            ("--batch", args.batch != 1),
            ("--impl", args.impl is not None and args.impl != ["musicgen"]),
        ]
        if given
    ]
    if others:
        raise InvalidInputError(
            f"--serve measures predict.py behind the Cog server, one clip per request; it does not take "
            f"{', '.join(others)}."
        )
    if args.concurrent < 1:
        raise InvalidInputError("--concurrent must be at least 1.")
    records = measure_serve(spec, settings, args.concurrent, args.rounds, args.cache, on_record=emit)
    if not args.json:
        first = records[0]
        print(
            f"predict.py behind the Cog server, {spec.name} served as {first['model']} ({first['weights_mb']} MB "
            f"of weights): {first['requests']} requests of {first['seconds']} s (wav, CFG {settings.cfg}, top-k "
            f"{settings.top_k}, each its own prompt and seed) one after another and all at once, "
            f"COG_MAX_CONCURRENCY = MUSICGEN_MAX_BATCH = {first['requests']}; warm-up request "
            f"{first['warm_up_s']:.1f} s"
        )
        print(format_table(records, _SERVE_COLUMNS))
        for line in summarize_serve(records):
            print(line)
    everything_equal = all(r["equal_outputs"] == r["requests"] for r in records)
    if not everything_equal:
        print("error: some concurrent outputs differ from their sequential counterparts", file=sys.stderr)
    return 0 if everything_equal else 1
