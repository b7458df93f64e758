"""The fine-tuning loop: transformers' loss to the digit, falling loss, two-process data parallelism."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from musicgen.loading import build_model, read_checkpoint
from musicgen.training.encode import EncodedSet, encode_segments
from musicgen.training.loop import Trainer, TrainSettings, masked_cross_entropy, training_targets
from musicgen.training.run import run_workers, write_job


def _tones(seconds=2.0, short_last=True):
    """Four captioned tones, twice; every other one only 1.5 s of real audio (a masked tail)."""
    t = torch.arange(int(32000 * seconds)) / 32000
    segments = []
    for i, (freq, caption) in enumerate(
        [(220, "low tone"), (440, "mid tone"), (880, "high tone"), (330, "tone")] * 2
    ):
        valid = len(t) - (16000 if short_last and i % 2 else 0)
        wav = (0.5 * torch.sin(2 * torch.pi * freq * t))[None]
        wav[:, valid:] = 0
        segments.append(SimpleNamespace(wav=wav, valid=valid, caption=caption))
    return segments


def test_targets_mask_the_pattern_and_the_tail():
    codes = torch.arange(2 * 2 * 5).view(2, 2, 5)  # B=2, K=2, T=5
    inputs, targets, mask = training_targets(codes, torch.tensor([5, 3]), delays=[0, 1], special=99)
    assert inputs.shape == targets.shape == mask.shape == (2, 2, 6)
    # codebook 1 is one step late: its first target is the special token, masked
    assert targets[0, 1, 0] == 99 and not mask[0, 1, 0]
    assert mask[0].sum() == 10 and mask[1].sum() == 6  # 5 + 5 real frames; 3 + 3 for the short row
    assert (targets[mask] != 99).all()
    assert torch.equal(inputs[:, :, 1:], targets[:, :, :-1])


@pytest.mark.parametrize("kind", ["mono", "stereo"])
def test_loss_equals_transformers_loss(tiny, kind):
    folder, model, tokenizer = tiny.get(kind)
    engine = build_model(read_checkpoint(folder), "cpu")
    cfg = engine.config.lm
    codes = torch.randint(0, cfg.card, (2, cfg.num_codebooks, 20), generator=torch.Generator().manual_seed(0))
    inputs, targets, mask = training_targets(codes, torch.tensor([20, 20]), cfg.delays, cfg.card)
    text = tokenizer(["lo-fi beat with warm piano", "jazz trio"], return_tensors="pt", padding=True)
    with torch.no_grad():
        states, text_mask = engine.text.encode(["lo-fi beat with warm piano", "jazz trio"])
        ours = masked_cross_entropy(engine.lm(inputs, states, text_mask), targets, mask)
        reference = model(
            **text,
            decoder_input_ids=inputs.reshape(-1, inputs.shape[-1]),
            labels=targets.transpose(1, 2),  # [B, S, K]; the special token is ignored as padding
        ).loss
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, method", [("mono", "lora"), ("mono", "full"), ("melody", "lora")])
def test_training_lowers_the_loss_and_changes_the_codes(tiny, kind, method):
    engine = build_model(read_checkpoint(tiny.get(kind)[0]), "cpu")
    before = engine.generate(["mid tone"], duration=0.4, sampling=_greedy(), seed=0).codes
    data = encode_segments(engine, _tones())
    lr = 3e-3 if method == "lora" else 1e-3
    settings = TrainSettings(method=method, epochs=6, batch_size=4, learning_rate=lr, warmup_steps=1)
    trainer = Trainer(engine, settings, "small" if kind == "mono" else "melody", log=lambda _: None)
    start = trainer.validate(data)
    trainer.fit(data)
    assert trainer.validate(data) < start - 0.3
    tuned = trainer.result({"note": "test"}, {})
    assert tuned.method == method and tuned.tensors
    fresh = build_model(read_checkpoint(tiny.get(kind)[0]), "cpu")
    from musicgen.finetuned import apply_finetuned

    apply_finetuned(fresh.lm, tuned)
    after = fresh.generate(["mid tone"], duration=0.4, sampling=_greedy(), seed=0).codes
    assert not torch.equal(before, after)


def _greedy():
    from musicgen import SamplingParams

    return SamplingParams(top_k=1)


def test_encoded_set_round_trips(tiny, tmp_path):
    engine = tiny.engine("melody")
    data = encode_segments(engine, _tones()[:3])
    again = EncodedSet.load(data.save(tmp_path / "set.safetensors"))
    assert torch.equal(again.codes, data.codes) and torch.equal(again.valid, data.valid)
    assert torch.equal(again.chroma, data.chroma) and again.captions == data.captions
    assert data.valid.tolist() == [100, 75, 100]


def test_two_processes_with_gloo_hold_the_same_weights(tiny, tmp_path):
    folder = tiny.get("mono")[0]
    engine = build_model(read_checkpoint(folder), "cpu")
    data = encode_segments(engine, _tones())
    settings = TrainSettings(method="lora", epochs=1, batch_size=2, learning_rate=1e-2, warmup_steps=0)
    out = tmp_path / "tuned.safetensors"
    job = write_job(tmp_path / "work", str(folder), "small", data, None, settings, {}, {}, out)
    run_workers(
        job,
        2,
        backend="gloo",
        extra_args=("--dump", str(tmp_path / "ranks")),
        extra_env={"OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    rank0 = load_file(str(tmp_path / "ranks" / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "ranks" / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # the adapters moved away from their start (lora_B starts at zero) and rank 0 wrote the weights
    assert any(v.abs().sum() > 0 for k, v in rank0.items() if "lora_B" in k)
    assert Path(out).is_file()
