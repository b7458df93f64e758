"""`python -m musicgen bench` on the hidden tiny architecture: every field there, for both implementations,
and its cold start of predict.py.

No timing is asserted: only that the machinery runs and reports positive numbers.
"""

import json
from pathlib import Path

import pytest
import torch

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


COLD_START_POSITIVE = (
    "import_predict_s",
    "import_predict_cpu_s",
    "setup_s",
    "setup_cpu_s",
    "ready_s",
    "time_to_first_step_s",
    "first_prediction_s",
    "first_prediction_cpu_s",
    "setup_imports_s",
    "load_checkpoint_s",
    "read_checkpoint_s",
    "read_lm_s",
    "build_model_s",
    "build_lm_s",
    "text_encoder_s",
    "codec_s",
    "conditioning_s",
    "prefill_s",
    "first_step_s",
    "second_step_s",
    "decode_steps_s",
    "codec_decode_s",
    "peak_rss_setup_mb",
    "peak_rss_mb",
)


def test_cold_start_measures_setup_and_the_first_prediction(cache, capsys, tmp_path, monkeypatch):
    """One real round on the tiny stereo checkpoint: predict.py imported, set up with it as the model it
    preloads (served as stereo-small), one prediction of 1 s; every figure is there and consistent."""
    monkeypatch.setattr(bench.tempfile, "tempdir", str(tmp_path))  # where the weights folder goes
    args = ["bench", "--cold-start", "--arch", "tiny", "--stereo", "--cache", str(cache), "--json"]
    assert main([*args, "--seconds", "1", "--threads", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert r["impl"] == "musicgen" and r["model"] == "stereo-small" and r["page_cache"] == "warm"
    assert r["arch"] == "tiny" and r["stereo"] is True and r["seconds"] == 1 and r["torch_threads"] == 1
    for field in COLD_START_POSITIVE:
        assert isinstance(r[field], (int, float)) and r[field] > 0, (field, r[field])
    assert r["ready_s"] >= r["setup_s"] and r["ready_s"] >= r["import_predict_s"]
    assert r["time_to_first_step_s"] < r["first_prediction_s"]
    assert r["load_checkpoint_s"] >= r["read_checkpoint_s"] >= r["read_lm_s"]
    # 1 s at 50 frames/s: 54 positions with the start and stereo's delays (max 3); the prefill feeds the
    # start and gives the logits of position 1, and the last position is sampled without a step after it
    assert r["decode_steps"] == 1 + 50 + 3 - 2
    assert r["peak_rss_mb"] >= r["peak_rss_setup_mb"] >= r["import_rss_mb"]
    assert list(tmp_path.iterdir()) == []  # the weights folder is removed
    table = bench.format_table([r], bench._COLD_COLUMNS)
    assert "first step at s" in table and "stereo-small" in table


def test_cold_start_rounds_alternate_with_the_baseline(cache, monkeypatch, capsys, tmp_path):
    """--baseline: both trees each round, every other round the baseline first; the page cache is set
    before each process; the summary gives each tree's medians."""
    jobs, cache_modes = [], []
    setups = iter([4.0, 6.0, 8.0, 5.0, 3.0, 7.0])  # musicgen, baseline, baseline, musicgen, musicgen, ...

    def fake_child(job):
        jobs.append((job["impl"], job["root"], job["model"]))
        assert (Path(job["weights_dir"]) / job["model"] / "config.json").is_file()
        return {"impl": job["impl"], "setup_s": next(setups), "time_to_first_step_s": 1.0}

    monkeypatch.setattr(bench, "_run_child", fake_child)
    monkeypatch.setattr(bench, "set_page_cache", lambda folder, mode: cache_modes.append(mode))
    (tmp_path / "predict.py").write_text("")
    args = ["bench", "--cold-start", "--arch", "tiny", "--stereo", "--cache", str(cache), "--rounds", "3"]
    assert main([*args, "--baseline", str(tmp_path), "--page-cache", "cold"]) == 0
    root, other = str(bench._ROOT), str(tmp_path.resolve())
    assert [(impl, tree) for impl, tree, _ in jobs] == [
        ("musicgen", root),
        ("baseline", other),
        ("baseline", other),
        ("musicgen", root),
        ("musicgen", root),
        ("baseline", other),
    ]
    assert {model for _, _, model in jobs} == {"stereo-small"} and cache_modes == ["cold"] * 6
    out = capsys.readouterr().out
    assert "musicgen: medians of 3 round(s): setup_s 4.000" in out
    assert "baseline: medians of 3 round(s): setup_s 7.000" in out


def test_cold_start_serves_each_architecture_under_a_variant_of_its_traits():
    variant = bench.cold_start_variant
    assert variant(bench.CheckpointSpec("small")) == "small"
    assert variant(bench.CheckpointSpec("large", stereo=True, melody=True)) == "stereo-melody-large"
    assert variant(bench.CheckpointSpec("medium", melody=True)) == "melody"
    assert variant(bench.CheckpointSpec("tiny", stereo=True)) == "stereo-small"
    assert variant(bench.CheckpointSpec("small", melody=True)) == "melody"  # no small melody model


def test_page_cache_modes_run_on_a_checkpoint(cache):
    folder = bench.ensure_checkpoint(bench.CheckpointSpec("tiny", stereo=True), cache)
    bench.set_page_cache(folder, "cold")
    bench.set_page_cache(folder, "warm")


def test_cold_start_options_are_checked_first(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "run_cold_start", lambda *a, **k: pytest.fail("ran"))
    assert main(["bench", "--arch", "tiny", "--cold-start", "--baseline", str(tmp_path)]) == 2
    assert "predict.py" in capsys.readouterr().err
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("ran"))
    assert main(["bench", "--arch", "tiny", "--baseline", str(tmp_path)]) == 2
    assert "--cold-start" in capsys.readouterr().err


# ---- MusicGen-Style (--style) -----------------------------------------------------------------------
STYLE_POSITIVE = (
    "conditioner_s",
    "resample_s",
    "mert_s",
    "style_encoder_s",
    "steps_per_s",
    "step_s",
    "decode_s_per_audio_s",
    "conditioner_steps",
    "mert_gflop",
    "style_encoder_gflop",
    "mert_gflops_per_s",
    "bandwidth_gbs",
    "bound_steps_per_s",
    "peak_rss_mb",
    "build_s",
)


def test_style_measures_the_conditioner_next_to_the_decode_loop(capsys):
    """Two real rounds of the tiny style model in one process: every figure there, positive and consistent
    with the others; a 3 s excerpt gives MERT's 224 frames and 15 style tokens."""
    from musicgen.tiny import tiny_mert_config

    args = ["bench", "--style", "--arch", "tiny", "--json", "--rounds", "2"]
    assert main([*args, "--steps", "40", "--repeats", "2", "--threads", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [(r["round"], r["model"], r["arch"]) for r in records] == [
        (1, "style", "tiny"),
        (2, "style", "tiny"),
    ]
    for r in records:
        for field in STYLE_POSITIVE:
            assert isinstance(r[field], (int, float)) and r[field] > 0, (field, r[field])
        assert r["mert_frames"] == 224 and r["style_tokens"] == 15
        assert r["prefix_tokens"] == 15 + r["text_tokens"] and r["text_tokens"] > 1
        assert r["excerpt_s"] == 3.0 and r["eval_q"] == 3 and r["batch"] == 1 and r["torch_threads"] == 1
        # every figure is rounded to 4 decimals (5e-5 off at most), which the tiny model's short times feel
        assert r["decode_s_per_audio_s"] == pytest.approx(50 / r["steps_per_s"], rel=1e-3, abs=1e-4)
        cond_steps = r["conditioner_s"] * r["steps_per_s"]
        assert r["conditioner_steps"] == pytest.approx(cond_steps, rel=1e-2, abs=1e-4 * r["steps_per_s"])
        assert r["mert_gflop"] == round(bench.mert_flops(tiny_mert_config(), 72000) / 1e9, 3)
    assert records[0]["started"] == records[1]["started"]  # one process measured both rounds

    summary = bench.summarize_style(records)
    assert summary[0].startswith("medians of 2 round(s): conditioner_s ")
    assert "decode steps of" in summary[1] and "per second of audio" in summary[1]
    table = bench.format_table(records, bench._STYLE_COLUMNS)
    assert "conditioner s" in table and "decode s per audio s" in table


def test_style_flop_counts_match_torch_flop_counter():
    """mert_flops / style_encoder_flops against torch's own count of the matrix products and convolutions
    (attention by the math kernel, which the counter sees), on small MERT and style encoders: odd lengths,
    an even and an odd positional kernel, batch 2."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import HubertConfig, HubertModel

    from musicgen.config import StyleConfig
    from musicgen.style import StyleEncoder, token_count
    from musicgen.tiny import tiny_mert_config

    def counted(module, *args) -> int:
        # no_grad, not inference_mode: the counter cannot read a weight-norm parametrization in inference mode
        with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            module(*args)
        return counter.get_total_flops()

    for changes, samples in [({}, 12000), ({"num_conv_pos_embeddings": 15, "num_hidden_layers": 2}, 16001)]:
        config = {**tiny_mert_config(), **changes}
        mert = HubertModel(HubertConfig(**{k: v for k, v in config.items() if k != "model_type"})).eval()
        assert counted(mert, torch.randn(2, samples)) == 2 * bench.mert_flops(config, samples)
    style = StyleConfig(dim=64, num_heads=4, num_layers=2, ffn_dim=128, bins=32)
    for frames, eval_q in [(224, 3), (100, 6)]:
        assert counted(StyleEncoder(style).eval(), torch.randn(2, frames, 768), eval_q) == (
            2 * bench.style_encoder_flops(style, frames, eval_q)
        )
    # the release on a 3 s excerpt: 96000 samples at 32 kHz, 72000 at MERT's 24 kHz, 224 frames, 15 tokens
    assert bench.mert_frames(bench.MERT_95M, 72000) == 224 and token_count(StyleConfig(), 96000) == 15
    assert 60e9 < bench.mert_flops(bench.MERT_95M, 72000) < 70e9


def test_style_step_weights_count_what_a_decode_step_reads():
    from musicgen.config import LMConfig
    from musicgen.lm import LanguageModel

    cfg = LMConfig(dim=32, num_heads=4, num_layers=2, ffn_dim=128, num_codebooks=4, conditioning="style")
    lm = LanguageModel(cfg)
    read = sum(p.numel() for n, p in lm.named_parameters() if n.endswith("weight") and p.dim() == 2)
    read -= lm.embed.weight.numel() + lm.text_proj.weight.numel() + lm.style_proj.weight.numel()
    assert not any("cross" in n for n, _ in lm.named_parameters())
    assert bench.step_weights_style(cfg) == read


def test_style_options(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(
        bench, "run_style_bench", lambda spec, settings, style, rounds: calls.append((spec, style)) or []
    )
    monkeypatch.setattr(bench, "run_bench", lambda spec, *a, **k: calls.append((spec, None)) or [])
    monkeypatch.setattr(bench, "format_table", lambda *a: "")
    monkeypatch.setattr(bench, "summarize_style", lambda records: [])
    monkeypatch.setattr(bench, "summarize_rounds", lambda records: [])
    assert main(["bench", "--style", "--json", "--style-excerpt", "4.5", "--cfg-beta", "5"]) == 0
    assert main(["bench", "--json"]) == 0
    # the release's LM is medium; without --style the default stays small
    assert [(spec.arch, style) for spec, style in calls] == [
        ("medium", bench.StyleSettings(4.5, 3, 5.0)),
        ("small", None),
    ]
    for bad, named in [
        (["--stereo"], "--stereo"),
        (["--cold-start"], "--cold-start"),
        (["--impl", "transformers"], "--impl"),
        (["--style-excerpt", "5"], "--style-excerpt"),
        (["--style-eval-q", "7"], "--style-eval-q"),
    ]:
        assert main(["bench", "--style", *bad]) == 2
        assert named in capsys.readouterr().err
    assert len(calls) == 2


# ---- serving concurrent requests (--serve) ----------------------------------------------------------
SERVE_POSITIVE = (
    "sequential_s",
    "concurrent_s",
    "sequential_audio_s_per_s",
    "concurrent_audio_s_per_s",
    "throughput_ratio",
    "sequential_time_to_first_step_median_s",
    "concurrent_time_to_first_step_median_s",
    "server_ready_s",
    "warm_up_s",
)


def test_serve_sends_the_same_requests_one_by_one_and_at_once(cache, capsys, tmp_path, monkeypatch):
    """Two real rounds through the Cog server on the tiny stereo checkpoint (served as stereo-small): 3
    requests of 1 s each way, every figure there and consistent, the batch each request joined read from
    its logs, and every concurrent output equal to its sequential counterpart sample for sample."""
    monkeypatch.setattr(bench.tempfile, "tempdir", str(tmp_path))  # where the weights folder and log go
    args = ["bench", "--serve", "--arch", "tiny", "--stereo", "--cache", str(cache), "--json"]
    assert main([*args, "--seconds", "1", "--concurrent", "3", "--rounds", "2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [(r["round"], r["measurement"], r["model"]) for r in records] == [
        (1, "serve", "stereo-small"),
        (2, "serve", "stereo-small"),
    ]
    shared = 0
    for r in records:
        assert r["requests"] == r["max_batch"] == r["max_concurrency"] == 3 and r["seconds"] == 1
        for field in SERVE_POSITIVE:
            assert isinstance(r[field], (int, float)) and r[field] > 0, (field, r[field])
        assert r["throughput_ratio"] == pytest.approx(r["sequential_s"] / r["concurrent_s"], rel=2e-3)
        for side in ("sequential", "concurrent"):
            assert r[f"{side}_audio_s_per_s"] == pytest.approx(3 * 1 / r[f"{side}_s"], rel=2e-3)
        # the same audio both ways: 1 s of stereo at 32 kHz, 16-bit wav
        assert r["equal_outputs"] == 3 and r["equal_sample_fraction"] == 1.0
        assert r["channels"] == 2 and r["output_samples"] == 2 * 32000
        sequential = [q for q in r["per_request"] if q["side"] == "sequential"]
        concurrent = [q for q in r["per_request"] if q["side"] == "concurrent"]
        for side in (sequential, concurrent):
            assert [q["seed"] for q in side] == [1000, 1001, 1002]
            assert len({q["prompt"] for q in side}) == 3
        for q in sequential + concurrent:
            assert q["batch_clips"] >= 1 and q["steps"] > 50 and q["refused"] >= 0
            assert 0 < q["time_to_first_step_s"] < q["latency_s"]
            assert q["prepare_s"] >= 0 and q["decode_s"] > 0 and q["finish_s"] >= 0
        # one after another, each request decodes alone in a batch of its own
        assert [q["batch_clips"] for q in sequential] == [1, 1, 1] and r["sequential_batches"] == 3
        assert len({q["batch_id"] for q in sequential}) == 3
        shared += max(q["batch_clips"] for q in concurrent) >= 2
    assert shared >= 1  # sent at once, they joined one shared decode (in one round at least)
    assert list(tmp_path.iterdir()) == []  # the weights folder and the server's log are removed

    summary = bench.summarize_serve(records)
    assert summary[0].startswith("medians of 2 round(s): sequential_s ")
    assert "throughput concurrent / sequential per round" in summary[1]
    assert "sample for sample: 6 of 6" in summary[2]
    assert "ratio" in bench.format_table(records, bench._SERVE_COLUMNS)


def test_serve_options(capsys, monkeypatch):
    calls = []

    def fake_serve(spec, settings, requests, rounds, cache, on_record=None):
        calls.append((spec.arch, settings.seconds, requests, rounds))
        return []

    monkeypatch.setattr(bench, "measure_serve", fake_serve)
    assert main(["bench", "--serve", "--json"]) == 0  # small, 8 s clips, 4 requests by default
    assert main(["bench", "--serve", "--json", "--concurrent", "2", "--seconds", "3", "--rounds", "5"]) == 0
    assert calls == [("small", 8.0, 4, 1), ("small", 3.0, 2, 5)]
    for bad, named in [
        (["--style"], "--style"),
        (["--cold-start"], "--cold-start"),
        (["--batch", "2"], "--batch"),
        (["--impl", "transformers"], "--impl"),
        (["--concurrent", "0"], "--concurrent"),
    ]:
        assert main(["bench", "--serve", *bad]) == 2
        assert named in capsys.readouterr().err
    assert len(calls) == 2


def test_server_log_times_parse():
    assert bench._epoch("2026-12-02T04:04:05.163596123Z") == pytest.approx(
        bench._epoch("2026-12-02T04:04:05.163596Z")
    )
    assert bench._epoch("2026-12-02T04:04:06Z") - bench._epoch("2026-12-02T04:04:05.5Z") == pytest.approx(0.5)
