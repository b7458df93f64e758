"""`python -m musicgen bench` on the hidden tiny architecture: every field there, for both implementations.

No timing is asserted: only that the machinery runs and reports positive numbers.
"""

import json

import pytest

from musicgen import bench
from musicgen.cli import main

FIELDS = (
    "impl",
    "arch",
    "batch",
    "steps_per_s",
    "e2e_s_per_audio_s",
    "load_s",
    "peak_rss_mb",
    "weights_mb",
    "model_mb",
    "import_s",
    "torch_threads",
)
POSITIVE = (
    "steps_per_s",
    "e2e_s_per_audio_s",
    "load_s",
    "peak_rss_mb",
    "weights_mb",
    "model_mb",
    "import_s",
    "load_weights_s",
    "first_frame_s",
    "torch_threads",
    "bound_steps_per_s",
    "bandwidth_gbs",
    "step_weights_gb",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder holding the tiny stereo checkpoint, built here (no build subprocess to wait for)."""
    root = tmp_path_factory.mktemp("bench-cache")
    spec = bench.CheckpointSpec("tiny", stereo=True)
    folder = root / f"{spec.name}-seed{spec.seed}"
    folder.mkdir()
    bench.build_checkpoint(spec, folder)
    return root


def test_json_lines_for_both_implementations(cache, capsys):
    args = ["bench", "--arch", "tiny", "--stereo", "--json", "--cache", str(cache)]
    assert main([*args, "--steps", "40", "--repeats", "2", "--seconds", "0.2", "--threads", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert [r["impl"] for r in records] == ["musicgen", "musicgen-int8", "transformers"]
    for r in records:
        assert all(field in r for field in FIELDS), r
        assert r["arch"] == "tiny" and r["stereo"] is True and r["batch"] == 1
        assert r["steps"] == 40 and r["repeats"] == 2 and r["torch_threads"] == 1
        for field in POSITIVE:
            assert isinstance(r[field], (int, float)) and r[field] > 0, (field, r[field])
        assert r["peak_rss_mb"] >= r["import_rss_mb"]
    # int8 reads a quarter of the bytes: its bound is four times fp32's at the same bandwidth
    fp32, int8 = records[0], records[1]
    assert 0 < int8["int8_logit_rel_error"] < 0.2 and 0.5 < int8["int8_top1_agreement"] <= 1
    per_gbs = [r["bound_steps_per_s"] / r["bandwidth_gbs"] for r in (fp32, int8)]
    assert per_gbs[1] == pytest.approx(4 * per_gbs[0], rel=0.01)
    # the same files for both: same size on disk, same tensors in memory
    assert records[0]["weights_mb"] == records[1]["weights_mb"]
    assert records[0]["checkpoint"] == records[1]["checkpoint"]

    table = bench.format_table(records)
    assert "steps/s" in table and "musicgen" in table and "transformers" in table


def test_rounds_alternate_the_order_and_give_each_round_its_ratio(cache, monkeypatch, capsys):
    """--rounds: every implementation measured once per round, odd rounds in reverse; each record's ratio
    is to transformers' steps/s of its own round; the table ends with the ratios and their median."""
    order = []
    speeds = iter([10.0, 5.0, 4.0, 6.0, 9.0, 6.0])  # musicgen, transformers, transformers, musicgen, ...

    def fake_child(job):
        order.append(job["impl"])
        return {"impl": job["impl"], "steps_per_s": next(speeds)}

    monkeypatch.setattr(bench, "_run_child", fake_child)
    args = ["bench", "--arch", "tiny", "--stereo", "--cache", str(cache), "--rounds", "3"]
    assert main([*args, "--impl", "musicgen", "--impl", "transformers"]) == 0
    assert order == ["musicgen", "transformers", "transformers", "musicgen", "musicgen", "transformers"]
    out = capsys.readouterr().out
    assert "x transformers' steps/s per round 2.00, 1.50, 1.50; median 1.50" in out

    speeds = iter([10.0, 5.0, 4.0, 6.0])
    assert main([*args[:-1], "2", "--json", "--impl", "musicgen", "--impl", "transformers"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [(r["round"], r["impl"], r["vs_transformers"]) for r in records] == [
        (1, "musicgen", 2.0),
        (1, "transformers", 1.0),
        (2, "musicgen", 1.5),
        (2, "transformers", 1.0),
    ]


def test_a_finished_checkpoint_is_reused(cache, monkeypatch):
    def no_child(job):
        raise AssertionError(f"rebuilt: {job}")

    monkeypatch.setattr(bench, "_run_child", no_child)
    folder = bench.ensure_checkpoint(bench.CheckpointSpec("tiny", stereo=True), cache)
    assert (folder / "config.json").is_file()
    assert bench.checkpoint_info(folder)["weights_mb"] > 0


def test_step_weights_count_what_a_decode_step_reads(cache):
    """The bound's weight count equals the LM's matrices minus what a step does not read (embeddings, the
    text projection, cross-attention keys/values)."""
    from musicgen.loading import build_lm, read_checkpoint

    folder = bench.ensure_checkpoint(bench.CheckpointSpec("tiny", stereo=True), cache)
    lm = build_lm(read_checkpoint(folder))
    D = lm.cfg.dim
    read = sum(p.numel() for n, p in lm.named_parameters() if n.endswith("weight") and p.dim() == 2)
    read -= lm.embed.weight.numel() + lm.text_proj.weight.numel() + lm.cfg.num_layers * 2 * D * D
    assert bench.step_weights(folder) == read


def test_every_implementation_has_a_loader():
    assert {"musicgen", "musicgen-int8", "transformers"} <= set(bench.IMPLS)
    for impl in bench.IMPLS.values():
        assert callable(impl.imports) and callable(impl.load)


def test_bad_options_fail_before_any_work(capsys, monkeypatch):
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("ran"))
    assert main(["bench", "--arch", "tiny", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["bench", "--arch", "tiny", "--rounds", "0"]) == 2
    assert "--rounds" in capsys.readouterr().err
