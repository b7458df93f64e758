"""The CUDA paths, which the CPU suite never reaches: bf16 decoding, the static step compiled with CUDA graphs,
LoRA training with bf16 autocast, NCCL data parallelism, and the Cog server on a GPU.

Every test here is marked `gpu` and skips, with the reason, where torch sees no CUDA device;
`scripts/gpu_check.sh` runs them (`pytest -m gpu`) on a GPU machine, then the bench. With
`MUSICGEN_GPU_FIGURES=path.json` the measured figures (agreement rates, errors) are written there too.
"""

from __future__ import annotations

import gc
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import musicgen.generation as generation
from musicgen import SamplingParams
from musicgen.finetuned import load_finetuned
from musicgen.loading import build_model, read_checkpoint
from musicgen.quantize import decode_logits
from musicgen.tiny import KINDS, save_tiny_model
from musicgen.training.encode import encode_segments
from musicgen.training.loop import Trainer, TrainSettings
from musicgen.training.run import run_workers, write_job
from tests.test_server import decode, run_server
from tests.test_training import _tones

DEVICE = "cuda"
MB = 2**20
GREEDY = SamplingParams(top_k=1, cfg_coef=3.0)
PROMPTS = ["lo-fi beat with warm piano", "jazz trio"]  # different lengths: padding is exercised

# Floors for "bf16 picks the token fp32 picks", per position and codebook, teacher-forced: both models are
# fed the same token sequence, so one different pick does not change what follows. Measured with a bf16
# language model on CPU against fp32 over 50-60 positions, on the four tiny kinds with seeds 0-2: agreement
# 0.960-0.993 and relative logit error 0.0048-0.0077 (bf16 keeps 8 bits of mantissa); the bf16 step compiled
# by inductor (CPU) against the eager one: 0.979-0.994 and 0.0063-0.0067. The floors leave room for CUDA's
# kernels summing in another order; a broken path (wrong dtype in the cache, a stale position, a bad mask)
# agrees on about 1 token in 2048 and is off by ~100 % of the logits.
MIN_BF16_AGREEMENT = 0.90
MAX_BF16_REL_ERROR = 0.03
# A bf16 training loss against fp32's on the same batch: measured within 3e-4 (relative) with CPU autocast
# on the tiny models; the loss averages over every token, so rounding mostly cancels.
MAX_BF16_LOSS_REL_ERROR = 0.01

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason=f"no CUDA device visible to torch {torch.__version__} (built for CUDA {torch.version.cuda}); "
        "scripts/gpu_check.sh runs these on a GPU machine",
    ),
]


@pytest.fixture(scope="module")
def figures():
    """Named figures the tests measured; written to $MUSICGEN_GPU_FIGURES (JSON) at the end when set."""
    found: dict[str, float] = {}
    yield found
    target = os.environ.get("MUSICGEN_GPU_FIGURES")
    if target and found:
        Path(target).write_text(json.dumps(found, indent=1, sort_keys=True))


def _engine(folder: Path):
    """The model as predict.py serves it on CUDA: bf16 language model, fp32 text encoder and codec."""
    return build_model(read_checkpoint(folder), DEVICE)


def _token_sequence(engine, positions: int, seed: int = 0) -> torch.Tensor:
    """A random token sequence [len(PROMPTS), K, positions] on the engine's device."""
    cfg = engine.lm.cfg
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, cfg.card, (len(PROMPTS), cfg.num_codebooks, positions), generator=gen)
    return codes.to(engine.device)


def _agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(share of positions and codebooks where both logits pick the same token, relative logit error)."""
    same = float((reference.argmax(-1) == other.argmax(-1)).float().mean())
    return same, float((other - reference).norm() / reference.norm())


# ---- bf16 generation -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_decoding_picks_the_fp32_tokens(tiny, kind, figures):
    folder = tiny.get(kind)[0]
    bf16 = _engine(folder)
    assert bf16.lm.embed.weight.dtype == torch.bfloat16  # what serving runs on CUDA
    fp32 = _engine(folder)
    fp32.lm.float()  # the same device and kernels, only the language model's dtype differs
    codes = _token_sequence(fp32, 60)

    agreement, rel_error = _agreement(
        decode_logits(fp32, PROMPTS, codes), decode_logits(bf16, PROMPTS, codes)
    )
    # free-running greedy generation, for the record only: the first different pick changes every later
    # context, so this share mostly says where the first difference fell (0.37-0.92 in the CPU measurement)
    free_fp32 = fp32.generate(PROMPTS, duration=1.0, sampling=GREEDY, seed=0).codes
    free_bf16 = bf16.generate(PROMPTS, duration=1.0, sampling=GREEDY, seed=0).codes
    free_running = float((free_fp32 == free_bf16).float().mean())

    print(
        f"{kind}: bf16 picks fp32's token at {agreement:.4f} of positions (teacher-forced), "
        f"relative logit error {rel_error:.4f}; free-running greedy codes agree at {free_running:.3f}"
    )
    figures[f"bf16_top1_agreement[{kind}]"] = round(agreement, 4)
    figures[f"bf16_logit_rel_error[{kind}]"] = round(rel_error, 4)
    figures[f"bf16_free_running_agreement[{kind}]"] = round(free_running, 3)
    assert agreement >= MIN_BF16_AGREEMENT
    assert rel_error <= MAX_BF16_REL_ERROR
    assert free_bf16.shape == free_fp32.shape
    assert int(free_bf16.min()) >= 0 and int(free_bf16.max()) < bf16.lm.cfg.card


def test_seeded_sampling_repeats_on_cuda(tiny):
    """The README's promise, on CUDA: the same seed and inputs give the same music on the same device."""
    engine = _engine(tiny.get("stereo")[0])
    sampling = SamplingParams()  # top-k 250, temperature 1, CFG 3: predict.py's defaults

    first, again, other = (
        engine.generate(PROMPTS, duration=1.0, sampling=sampling, seed=seed).codes for seed in (5, 5, 6)
    )

    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# ---- the static step under torch.compile(mode="reduce-overhead") ---------------------------------------


def _compiled_static_step():
    """`decode_step_static` compiled with CUDA graphs, called as the decode loop calls it.

    The step writes the cache in place; CUDA graphs replay such a write only into tensors at fixed
    addresses (otherwise inductor skips the graphs, see torch._inductor.cudagraph_utils.check_for_mutation),
    so each window's cache is marked static. Each call starts a new graph step: the loop has consumed the
    previous logits by then, and the replay may overwrite them.
    """
    compiled = torch.compile(
        generation.decode_step_static, mode="reduce-overhead", fullgraph=True, dynamic=False
    )

    def step(lm, cache, column, position):
        for t in (cache.k, cache.v):
            torch._dynamo.mark_static_address(t)
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(lm, cache, column, position)

    return step


def _cuda_graphs_or_error():
    """A step that cannot run as a CUDA graph raises, saying why, instead of running without one.

    (inductor's own switch, set by its `patch`: undoing a monkeypatch of it deletes the setting.)
    """
    return torch._inductor.config.patch("triton.cudagraph_or_error", True)


def _fresh_compile_counters():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    return counters


@pytest.mark.parametrize("kind", ["mono", "melody"])  # cross-attention, and the prepended melody prefix
def test_compiled_static_step_decodes_the_eager_codes(tiny, kind, monkeypatch):
    """In fp32, where eager and compiled kernels differ by far less than any greedy margin here: a bf16
    step sums in another order than the eager one and may flip a near tie, after which codes diverge (the
    next test compares the bf16 step position by position)."""
    engine = _engine(tiny.get(kind)[0])
    engine.lm.float()
    continued = torch.randn(1, 32000 // 5, generator=torch.Generator().manual_seed(3)) * 0.2

    def codes(static: bool) -> torch.Tensor:
        engine.static_decode = static
        try:
            return engine.generate(
                ["jazz trio", ""], duration=0.8, continuation=continued, sampling=GREEDY, seed=11
            ).codes
        finally:
            engine.static_decode = False

    eager, static = codes(False), codes(True)
    counters = _fresh_compile_counters()
    monkeypatch.setattr(generation, "decode_step_static", _compiled_static_step())
    with _cuda_graphs_or_error():
        compiled = codes(True)
        again = codes(True)  # a new window's cache: the graph is recorded again, not recompiled

    assert torch.equal(static, eager)
    assert torch.equal(compiled, eager)
    assert torch.equal(again, eager)
    assert counters["stats"]["unique_graphs"] == 1  # one graph for every position of both windows
    assert counters["inductor"]["cudagraph_skips"] == 0, "inductor ran the step without CUDA graphs"


def test_compiled_static_step_in_bf16_follows_the_eager_step(tiny, monkeypatch, figures):
    """Position by position on the same tokens, in the dtype serving uses. Each step is within bf16's
    rounding of the exact one, so the two are at most about twice as far apart as bf16 is from fp32:
    the bf16 floors apply."""
    engine = _engine(tiny.get("mono")[0])
    codes = _token_sequence(engine, 60, seed=1)
    eager = decode_logits(engine, PROMPTS, codes)
    counters = _fresh_compile_counters()
    step = _compiled_static_step()

    def as_decode_step(lm, cache, column, position: int):
        # decode_logits feeds positions as ints; the static step takes them as a device tensor
        return step(lm, cache, column, torch.full((1,), position, dtype=torch.long, device=column.device))

    monkeypatch.setattr(generation, "decode_step", as_decode_step)
    with _cuda_graphs_or_error():
        compiled = decode_logits(engine, PROMPTS, codes)

    agreement, rel_error = _agreement(eager, compiled)
    print(f"compiled bf16 step: eager token at {agreement:.4f}, relative logit error {rel_error:.4f}")
    figures["compiled_bf16_top1_agreement"] = round(agreement, 4)
    figures["compiled_bf16_logit_rel_error"] = round(rel_error, 4)
    assert agreement >= MIN_BF16_AGREEMENT
    assert rel_error <= MAX_BF16_REL_ERROR
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["inductor"]["cudagraph_skips"] == 0, "inductor ran the step without CUDA graphs"


# ---- training --------------------------------------------------------------------------------------


def _adapters(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.trainable.named_parameters() if "lora_" in n}


def test_one_lora_step_on_cuda(tiny, figures):
    folder = tiny.get("mono")[0]
    engine = _engine(folder)
    data = encode_segments(engine, _tones()[:4])
    settings = TrainSettings(method="lora", epochs=1, batch_size=4, learning_rate=1e-2, warmup_steps=0)
    trainer = Trainer(engine, settings, "small", log=lambda _: None)
    before = _adapters(trainer)
    cuda_loss = trainer.validate(data)  # bf16 autocast on CUDA, no condition dropout
    cpu = build_model(read_checkpoint(folder), "cpu")
    cpu_loss = Trainer(cpu, settings, "small", log=lambda _: None).validate(data)  # fp32

    history = trainer.fit(data)

    after = _adapters(trainer)
    figures["lora_step_loss"] = round(history[0]["loss"], 4)
    figures["bf16_autocast_loss_rel_error"] = round(abs(cuda_loss - cpu_loss) / cpu_loss, 6)
    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    assert abs(cuda_loss - cpu_loss) <= MAX_BF16_LOSS_REL_ERROR * cpu_loss
    assert all(t.device == engine.device for t in after.values())
    b_names = [n for n in before if "lora_B" in n]
    assert b_names and all(before[n].abs().sum() == 0 for n in b_names)  # peft starts every B at zero
    assert [n for n in b_names if not torch.equal(before[n], after[n])] == b_names  # each one took the step
    assert all(torch.isfinite(t).all() for t in after.values())


def test_nccl_training_through_torchrun(tiny, tmp_path):
    """The multi-GPU path (musicgen.training.run with several GPUs): one process per GPU, up to two, with
    the NCCL backend; on a one-GPU machine a world of one still initialises NCCL and runs its all-reduce."""
    world = min(2, torch.cuda.device_count())
    folder = tiny.get("mono")[0]
    data = encode_segments(tiny.engine("mono"), _tones())  # codes do not depend on where EnCodec ran
    settings = TrainSettings(method="lora", epochs=1, batch_size=2, learning_rate=1e-2, warmup_steps=0)
    out = tmp_path / "tuned.safetensors"
    job = write_job(tmp_path / "work", str(folder), "small", data, None, settings, {}, {}, out)

    run_workers(job, world, backend="nccl", extra_args=("--dump", str(tmp_path / "ranks")), timeout=300)

    ranks = [load_file(str(tmp_path / "ranks" / f"rank{r}.safetensors")) for r in range(world)]
    for other in ranks[1:]:
        assert other.keys() == ranks[0].keys()
        assert all(torch.equal(other[k], ranks[0][k]) for k in ranks[0])
    assert any(v.abs().sum() > 0 for k, v in ranks[0].items() if "lora_B" in k)
    tuned = load_finetuned(out)
    assert tuned.method == "lora" and tuned.base_variant == "small"


# ---- the Cog server --------------------------------------------------------------------------------


def test_server_serves_a_prediction_on_cuda(tmp_path, figures):
    weights = tmp_path / "weights"
    save_tiny_model(weights / "stereo-melody-large", "stereo-melody", seed=3)  # the default: setup loads it
    gc.collect()
    torch.cuda.empty_cache()  # this process then holds a fixed amount while the server runs
    free_before = torch.cuda.mem_get_info()[0]
    (tmp_path / "server").mkdir()

    with run_server(tmp_path / "server", weights) as server:
        prediction = server.predict(prompt="jazz trio", duration=1, seed=3)
        free_during = torch.cuda.mem_get_info()[0]

    assert prediction["status"] == "succeeded", prediction.get("error")
    assert "model_version: stereo-melody-large, seed: 3" in prediction["logs"]
    _, audio, rate = decode(prediction["output"])
    assert rate == 32000 and audio.shape == (32000, 2)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    # the server's worker runs on the GPU: its CUDA context and the model take device memory (a worker on
    # the CPU only asks how many devices there are, which allocates none)
    held = (free_before - free_during) / MB
    figures["server_worker_gpu_mb"] = round(held, 1)
    assert held > 100, f"the server's worker holds {held:.0f} MB of GPU memory: did it run on the CPU?"


def test_style_model_on_cuda(tmp_path, figures):
    """MusicGen-Style on CUDA: the style conditioner runs in float32 (as audiocraft's) and gives the CPU's
    tokens; text + style with double guidance generates, and the same seed repeats."""
    from musicgen.tiny import save_tiny_style_model

    folder = save_tiny_style_model(tmp_path / "style")
    gpu = _engine(folder)
    cpu = build_model(read_checkpoint(folder), "cpu")
    assert gpu.style.encoder.embed.weight.dtype == torch.float32
    wav = 0.3 * torch.randn(1, 32000 * 4, generator=torch.Generator().manual_seed(0))
    excerpts = wav[:, : 3 * 32000]
    # before quantization: close (cuDNN may run MERT's convolutions in TF32); after it, a frame near a
    # boundary between two codebook entries may pick the other one, so the share of equal tokens is counted
    features = [m.style.encoder.encode(m.style.features(excerpts)).cpu() for m in (gpu, cpu)]
    error = float((features[0] - features[1]).norm() / features[1].norm())
    tokens = [m.style(excerpts, 3).cpu() for m in (gpu, cpu)]
    same = float((tokens[0] == tokens[1]).all(dim=-1).float().mean())
    figures["style_features_rel_error_cuda_vs_cpu"] = round(error, 6)
    figures["style_tokens_equal_cuda_vs_cpu"] = round(same, 4)
    assert error < 1e-2
    assert same >= 0.9
    sampling = SamplingParams(cfg_coef=3.0, cfg_beta=5.0)
    first, again = (
        gpu.generate(PROMPTS, duration=1.0, style=wav, sampling=sampling, seed=11).codes for _ in range(2)
    )
    assert torch.equal(first, again)
    assert first.shape == (2, 4, 50)


# ---- continuous batching ----------------------------------------------------------------------------


def test_batched_requests_equal_their_solo_codes_on_cuda(tiny, figures):
    """musicgen.batching on CUDA (bf16): requests decoded together give each the codes it gets alone.

    On CPU this is bit-exact (tests/test_batching.py). cuBLAS may pick another kernel, with another
    summation order, for another number of rows; the issue's floor for that case is 99 % of codes.
    """
    from musicgen.batching import Batcher

    engine = _engine(tiny.get("mono")[0])
    requests = [
        dict(prompts="lo-fi beat with warm piano", duration=2.0, seed=1),
        dict(prompts="jazz trio", duration=1.0, seed=2, sampling=SamplingParams(top_k=0, top_p=0.9)),
        dict(prompts=None, duration=1.5, seed=3, sampling=SamplingParams(cfg_coef=1.0)),
        dict(prompts="drums", duration=1.0, seed=4, sampling=SamplingParams(temperature=0.7)),
    ]
    batcher = Batcher(engine, max_batch=4)
    alone = [batcher.submit(engine.prepare(**r)).result(timeout=300) for r in requests]
    tickets = [batcher.submit(engine.prepare(**r)) for r in requests]
    together = [t.result(timeout=300) for t in tickets]

    same = sum(int((a == b).sum()) for a, b in zip(alone, together, strict=True))
    agreement = same / sum(a.numel() for a in alone)
    figures["batched_vs_solo_agreement_cuda"] = agreement
    assert agreement >= 0.99, agreement


def test_multiband_diffusion_on_cuda_in_bf16(tmp_path, figures):
    """MultiBand Diffusion on CUDA runs its U-Nets in bf16: a forward stays within a few % of the fp32 one
    on CPU with the same weights, and the whole decode repeats itself for the same seed."""
    from musicgen.diffusion import MultiBandDiffusion
    from tests.mbd_fixtures import make_tiny_mbd

    folder = make_tiny_mbd(tmp_path / "mbd")
    gpu, cpu = MultiBandDiffusion.load(folder, DEVICE), MultiBandDiffusion.load(folder, "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 32000, generator=gen)
    cond = torch.randn(2, cpu.codec_dim, 50, generator=gen)
    with torch.inference_mode():
        ref = cpu.bands[0].unet(x, 999, cond)
        with torch.autocast("cuda", torch.bfloat16):
            out = gpu.bands[0].unet(x.to(DEVICE), 999, cond.to(DEVICE)).float().cpu()
    rel = float((out - ref).norm() / ref.norm())
    figures["mbd_unet_bf16_rel_error"] = rel
    assert rel < 0.05, rel

    latent = torch.randn(1, 2, cpu.codec_dim, 100, generator=gen)
    reference = 0.1 * torch.randn(1, 2, 100 * 640, generator=gen)
    first = gpu.decode(latent, reference, seed=3, hop=640)
    assert torch.isfinite(first).all() and first.shape == (1, 2, 100 * 640)
    assert torch.equal(first, gpu.decode(latent, reference, seed=3, hop=640))
