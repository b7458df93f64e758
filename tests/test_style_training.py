"""Fine-tuning MusicGen-Style: excerpts of each segment, their frames out of the loss, audiocraft's dropout,
q_dropout by stored quantizer picks; LoRA and full on the tiny style model, served like any fine-tune."""

import io
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen import SamplingParams
from musicgen.config import StyleConfig
from musicgen.errors import InvalidInputError
from musicgen.finetuned import apply_finetuned, load_finetuned
from musicgen.loading import build_model, read_checkpoint
from musicgen.style import StyleEncoder, excerpt_samples, token_count
from musicgen.training.encode import EncodedSet, encode_segments
from musicgen.training.loop import Trainer, TrainSettings, training_targets
from musicgen.training.style import (
    drop_conditions,
    excerpt_frames,
    excerpt_slot_count,
    slot_lengths,
    style_batch,
)
from tests.test_server import tiny_style_folder

SR = 32000
HOP = 640


# ---- the pieces, without a model ------------------------------------------------------------------------


def test_stored_picks_give_the_quantization_of_every_codebook_count():
    """q_dropout from stored indices is exact: the first n of all picks sum to what quantizing with n
    codebooks gives, to the bit."""
    cfg = StyleConfig(dim=16, num_heads=2, num_layers=1, ffn_dim=32, bins=8)
    encoder = StyleEncoder(cfg)
    gen = torch.Generator().manual_seed(0)
    encoder.codebooks.copy_(torch.randn(encoder.codebooks.shape, generator=gen))
    x = 2 * torch.randn(3, 7, 16, generator=gen)
    codes = encoder.codes(x, 6)
    assert codes.shape == (3, 7, 6) and codes.min() >= 0 and codes.max() < 8
    sums = [encoder.dequantize(codes, n) for n in range(1, 7)]
    for n, got in enumerate(sums, start=1):
        assert torch.equal(got, encoder.quantize(x, n)), n
    # each codebook adds its own entry: no two counts give the same tokens
    assert all(not torch.equal(a, b) for i, a in enumerate(sums) for b in sums[i + 1 :])


def test_slot_lengths_cover_the_trained_range():
    cfg = StyleConfig()
    lengths = slot_lengths(cfg, 4, seed=3)
    low, high = excerpt_samples(cfg, 1.5), excerpt_samples(cfg, 4.5)
    # one length in each quarter of [1.5, 4.5] s, in a shuffled order
    bands = sorted(int((n - low) / (high - low) * 4) for n in lengths)
    assert bands == [0, 1, 2, 3] and lengths != sorted(lengths)
    assert slot_lengths(cfg, 4, seed=3) == lengths != slot_lengths(cfg, 4, seed=4)
    assert [excerpt_slot_count(e) for e in (1, 4, 6, 8, 100)] == [4, 4, 6, 8, 8]


def test_excerpt_frames_leave_the_loss_on_every_codebook():
    """audiocraft's _get_mask_wav: frames int(start / 640) .. + int(length / 640), every codebook,
    combined with the pattern and padding mask; a row without an excerpt (count 0) keeps its whole loss."""
    starts, lengths = torch.tensor([10 * HOP + 639, 0]), torch.tensor([4 * HOP + 639, 48000])
    first, count = excerpt_frames(starts, lengths, HOP)
    assert first.tolist() == [10, 0] and count.tolist() == [4, 75]
    count[1] = 0
    codes = torch.randint(0, 50, (2, 4, 30))
    delays = [0, 1, 2, 3]
    _, targets, plain = training_targets(codes, torch.tensor([30, 20]), delays, special=99)
    _, _, mask = training_targets(codes, torch.tensor([30, 20]), delays, 99, excluded=(first, count))
    assert torch.equal(mask[1], plain[1])
    removed = plain[0] & ~mask[0]  # [K, S]
    assert not (mask & ~plain).any() and int(removed.sum()) == 4 * 4
    for k, delay in enumerate(delays):
        frames = (removed[k].nonzero().flatten() - delay).tolist()
        assert frames == [10, 11, 12, 13], k


def test_condition_dropout_has_audiocrafts_rates():
    """caption 0.4 and style 0.4 independently, then both 0.1: each kept 0.9 * 0.6 of the time."""
    keep_text, keep_style = drop_conditions(40000, torch.Generator().manual_seed(0), 0.1, 0.4, 0.4)
    rate = lambda m: float(m.float().mean())  # noqa: E731
    assert rate(keep_text) == pytest.approx(0.54, abs=0.01)
    assert rate(keep_style) == pytest.approx(0.54, abs=0.01)
    assert rate(~keep_text & ~keep_style) == pytest.approx(0.1 + 0.9 * 0.16, abs=0.01)
    assert rate(~keep_text & keep_style) == pytest.approx(0.9 * 0.4 * 0.6, abs=0.01)
    none = drop_conditions(100, torch.Generator().manual_seed(0), 0.0, 0.0, 0.0)
    assert all(bool(k.all()) for k in none)


def test_null_styles_are_zero_tokens_of_the_batchs_length():
    cfg = StyleConfig(dim=8, num_heads=2, bins=4)
    encoder = StyleEncoder(cfg)
    encoder.codebooks.copy_(torch.randn(6, 4, 8, generator=torch.Generator().manual_seed(1)))
    n = excerpt_samples(cfg, 2.0)
    tokens = token_count(cfg, n)  # 2 s -> 149 MERT frames -> 10 tokens
    codes = torch.randint(0, 4, (3, tokens + 5, 6), generator=torch.Generator().manual_seed(2))
    starts, lengths = torch.tensor([0, 6400, 12800]), torch.full((3,), n)
    got = style_batch(encoder, codes, starts, lengths, torch.tensor([True, False, True]), 2, HOP)
    assert got.tokens.shape == (3, tokens, 8) and got.mask.tolist() == [[1.0] * tokens, [0.0] * tokens] + [
        [1.0] * tokens
    ]
    assert torch.equal(got.tokens[0], encoder.dequantize(codes[:1, :tokens], 2)[0])
    assert not got.tokens[1].any() and got.tokens[2].any()
    assert got.first.tolist() == [0, 10, 20] and got.count.tolist() == [n // HOP, 0, n // HOP]
    # nobody keeps a style: one zero token per row, nothing left out of the loss
    none = style_batch(encoder, codes, starts, lengths, torch.zeros(3, dtype=torch.bool), 6, HOP)
    assert none.tokens.shape == (3, 1, 8) and not none.tokens.any() and not none.mask.any()
    assert none.count.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="same slot"):
        style_batch(encoder, codes, starts, torch.tensor([n, n, n + 1]), torch.ones(3, dtype=bool), 1, HOP)


# ---- on the tiny style model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def style_folder(tmp_path_factory):
    return tiny_style_folder(tmp_path_factory)


def _engine(folder):
    return build_model(read_checkpoint(folder), "cpu")


def _segments(seconds=5.0):
    """Four captioned 5 s pieces whose sound changes every second; the last one has 4.7 s of real audio."""
    t = torch.arange(int(SR * seconds)) / SR
    gen = torch.Generator().manual_seed(0)
    out = []
    for i, freq in enumerate([220.0, 330.0, 440.0, 550.0]):
        wav = torch.where(
            (t.long() + i) % 2 == 0,
            0.5 * torch.sin(2 * torch.pi * freq * t),
            0.2 * torch.randn(t.shape, generator=gen),
        )[None]
        valid = len(t) - (9600 if i == 3 else 0)
        wav[:, valid:] = 0
        out.append(SimpleNamespace(wav=wav, valid=valid, caption=f"piece {i}"))
    return out


@pytest.fixture(scope="module")
def encoded(style_folder):
    return encode_segments(_engine(style_folder), _segments(), batch_size=3, style_slots=2, seed=5)


def test_encoding_stores_each_segments_own_excerpts(style_folder, encoded, tmp_path):
    engine = _engine(style_folder)
    cfg = engine.config.style
    segments = _segments()
    lengths = slot_lengths(cfg, 2, seed=5)
    tokens = [token_count(cfg, n) for n in lengths]
    assert encoded.style_codes.shape == (4, 2, max(tokens), 6) and encoded.style_codes.dtype == torch.int32
    assert encoded.style_lengths.tolist() == [lengths] * 4  # one length per slot, on every row
    assert len({tuple(r) for r in encoded.style_starts.tolist()}) == 4  # each segment its own starts
    for k, n in enumerate(lengths):
        starts = encoded.style_starts[:, k].tolist()
        # inside each segment's real audio
        assert all(0 <= a <= s.valid - n for a, s in zip(starts, segments, strict=True))
        # the stored picks are the conditioner's own tokens for those very excerpts
        excerpts = torch.stack([s.wav[0, a : a + n] for a, s in zip(starts, segments, strict=True)])
        want = engine.style(excerpts, cfg.eval_q)
        got = engine.style.encoder.dequantize(encoded.style_codes[:, k, : tokens[k]], cfg.eval_q)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the seed draws the excerpts, whatever the batching; workers get them through save/load
    again = encode_segments(engine, segments[:2], batch_size=1, style_slots=2, seed=5)
    assert torch.equal(again.style_starts, encoded.style_starts[:2])
    loaded = EncodedSet.load(encoded.save(tmp_path / "set.safetensors")).subset(torch.tensor([2, 0]))
    for name in ("style_codes", "style_starts", "style_lengths"):
        assert torch.equal(getattr(loaded, name), getattr(encoded, name)[[2, 0]]), name


def test_validation_loss_leaves_out_the_excerpts_frames(style_folder, encoded):
    trainer = Trainer(_engine(style_folder), TrainSettings(epochs=1), "style", log=lambda _: None)
    K = trainer.model.config.lm.num_codebooks
    valid = [-(-s.valid // HOP) for s in _segments()]
    covered = (encoded.style_lengths[:, 0] // HOP).tolist()
    _, tokens = trainer._loss(encoded, train=False)
    assert tokens == K * sum(v - c for v, c in zip(valid, covered, strict=True))
    with pytest.raises(InvalidInputError, match="style excerpts"):
        trainer._loss(EncodedSet(encoded.codes, encoded.valid, encoded.captions), train=False)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fine_tuning_the_style_model(style_folder, encoded, method):
    """A short real fine-tune lowers the loss, changes the music made in the style of an excerpt, and
    trains style_proj in a full fine-tune only (LoRA adapts the transformer's projections)."""
    engine = _engine(style_folder)
    style = _segments()[1].wav
    greedy = dict(duration=0.4, sampling=SamplingParams(top_k=1), seed=0, style=style)
    before = engine.generate(["piece 1"], **greedy).codes
    lr = 3e-3 if method == "lora" else 1e-3
    settings = TrainSettings(method=method, epochs=4, batch_size=2, learning_rate=lr, warmup_steps=1)
    trainer = Trainer(engine, settings, "style", log=lambda _: None)
    assert trainer.settings.condition_dropout == 0.1
    start = trainer.validate(encoded)
    trainer.fit(encoded)
    assert trainer.validate(encoded) < start - 0.3
    tuned = trainer.result({"note": "test"}, {})
    assert tuned.base_variant == "style" and tuned.method == method
    assert ("style_proj.weight" in tuned.tensors) == (method == "full")
    if method == "lora":
        assert not any("cross_attn" in t for t in tuned.target_modules)
    fresh = _engine(style_folder)
    apply_finetuned(fresh.lm, tuned)
    after = fresh.generate(["piece 1"], **greedy).codes
    assert not torch.equal(before, after)


def style_archive(path, seconds=9.5, count=2):
    """A tar.gz of captioned pieces long enough for style segments."""
    t = np.arange(int(SR * seconds)) / SR
    with tarfile.open(path, "w:gz") as tar:
        for i in range(count):
            wav = np.where((t.astype(int) + i) % 2 == 0, 0.5 * np.sin(2 * np.pi * 220 * (i + 1) * t), 0.0)
            wav = wav + 0.05 * np.sin(2 * np.pi * 3000 * t)
            buf = io.BytesIO()
            sf.write(buf, wav.astype(np.float32), SR, format="WAV")
            for name, data in [(f"p{i}.wav", buf.getvalue()), (f"p{i}.txt", f"piece number {i}".encode())]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_train_py_full_fine_tune_is_served_by_the_model_cache(style_folder, tmp_path, monkeypatch):
    import shutil

    from musicgen.serving import ModelCache
    from train import train

    weights = tmp_path / "weights"
    shutil.copytree(style_folder, weights / "style")
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(weights))
    out = train(
        dataset_path=style_archive(tmp_path / "data.tar.gz"),
        model_version="style",
        method="full",
        epochs=1,
        batch_size=2,
        learning_rate=1e-3,
        warmup_steps=0,
        segment_seconds=9,
        seed=0,
    )
    tuned = load_finetuned(out.weights)
    assert tuned.base_variant == "style" and tuned.method == "full"
    assert tuned.dataset_report["segments"] == 2 and tuned.training["condition_dropout"] is None
    cache = ModelCache(device="cpu")
    style = _segments()[0].wav
    greedy = dict(duration=0.3, sampling=SamplingParams(top_k=1), seed=0, style=style)
    base = cache.get("style").generate(["piece number 1"], **greedy).codes
    served = cache.get("style", finetuned=out.weights).generate(["piece number 1"], **greedy).codes
    assert not torch.equal(base, served)
