"""The fine-tuning loop: transformers' loss to the digit, falling loss, two-process data parallelism."""

import io
import shutil
import socket
import tarfile
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from musicgen.loading import build_model, read_checkpoint
from musicgen.training import run
from musicgen.training.dataset import DatasetError
from musicgen.training.encode import EncodedSet, encode_segments
from musicgen.training.loop import Trainer, TrainSettings, masked_cross_entropy, training_targets
from musicgen.training.run import TrainingError, fine_tune, run_workers, write_job


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


# ---------------------------------------------------------------------------------------------------------
# fine_tune's temporary files: nothing of a run is left behind, whatever its outcome


@pytest.fixture
def fine_tune_env(tiny, tmp_path, monkeypatch):
    """tempfile's folder pointed at an empty one of this test, and the tiny mono model served as "small"."""
    weights = tmp_path / "weights"
    shutil.copytree(tiny.get("mono")[0], weights / "small")
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(weights))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def _tone_archive(path, captions=True):
    """A tar.gz of two captioned 2 s tones."""
    with tarfile.open(path, "w:gz") as tar:
        for i in range(2):
            buf = io.BytesIO()
            t = np.arange(64000) / 32000
            sf.write(
                buf, (0.5 * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype(np.float32), 32000, format="WAV"
            )
            members = [(f"tone{i}.wav", buf.getvalue())] + ([(f"tone{i}.txt", b"a tone")] if captions else [])
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


_QUICK = TrainSettings(method="lora", epochs=1, batch_size=2, learning_rate=1e-3, warmup_steps=0)


def _fine_tune(tmp_path, captions=True, **kwargs):
    archive = _tone_archive(tmp_path / "data.tar.gz", captions)
    out = tmp_path / "out" / "tuned.safetensors"
    out.parent.mkdir(exist_ok=True)
    fine_tune(archive, "small", out, _QUICK, segment_seconds=1.0, log=lambda _: None, **kwargs)
    return out


@pytest.mark.parametrize("outcome", ["success", "dataset_error", "training_error"])
def test_fine_tune_removes_its_work_folder(fine_tune_env, tmp_path, monkeypatch, outcome):
    during = []
    if outcome == "training_error":

        def fail(self, *args, **kwargs):
            # the work folder exists while training runs; the extracted dataset is already gone
            during.extend(p.relative_to(fine_tune_env).as_posix() for p in fine_tune_env.rglob("*"))
            raise RuntimeError("training failed")

        monkeypatch.setattr(Trainer, "fit", fail)
    if outcome == "success":
        assert _fine_tune(tmp_path, gpus=1).is_file()
    else:
        error = DatasetError if outcome == "dataset_error" else RuntimeError
        with pytest.raises(error):
            _fine_tune(tmp_path, captions=outcome != "dataset_error", gpus=1)
    if outcome == "training_error":
        assert len(during) == 1 and during[0].startswith("musicgen-train-"), during
    assert list(fine_tune_env.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "given_work_dir, outcome", [(True, "success"), (False, "failure"), (True, "failure")]
)
def test_fine_tune_on_several_gpus_removes_the_job_files(
    fine_tune_env, tmp_path, monkeypatch, given_work_dir, outcome
):
    seen = []

    def workers(job, processes, backend, **kwargs):
        """torchrun's stand-in: one gloo worker in this process, or a failure."""
        seen.append(sorted(p.name for p in job.parent.iterdir()))
        if outcome == "failure":
            raise TrainingError("the training workers failed (exit 1)")
        from musicgen.training import worker

        for name, value in {
            "RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("MASTER_PORT", str(_free_port()))
        worker.main([str(job), "--backend=gloo"])

    monkeypatch.setattr(run, "run_workers", workers)
    work = tmp_path / "given"
    if given_work_dir:
        work.mkdir()
        (work / "keep.txt").write_text("the caller's")
    kwargs = {"gpus": 2, "work_dir": work if given_work_dir else None}
    if outcome == "success":
        assert _fine_tune(tmp_path, **kwargs).is_file()
    else:
        with pytest.raises(TrainingError):
            _fine_tune(tmp_path, **kwargs)
    if given_work_dir:
        assert sorted(p.name for p in work.iterdir()) == ["keep.txt"]
    assert list(fine_tune_env.iterdir()) == []
    # the workers found the job and the encoded data; the extracted dataset was already removed
    assert seen == [["job.json"] + (["keep.txt"] if given_work_dir else []) + ["train.safetensors"]]
