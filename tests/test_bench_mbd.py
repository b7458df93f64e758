"""`python -m musicgen bench --mbd --mbd-tiny`: MultiBand Diffusion's cost next to EnCodec's, on a tiny random
MBD, through the CLI. No timing is asserted: only that the figures are there, positive, and consistent with
the FLOP counts and the H100 formula."""

import json
import statistics

import pytest

from musicgen import bench_mbd
from musicgen.cli import main


def _records(capsys, *extra: str) -> list[dict]:
    args = ["bench", "--mbd", "--mbd-tiny", "--mbd-seconds", "0.1", "--threads", "1", "--json", *extra]
    assert main(args) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_tiny_mbd_bench_reports_both_decoders_and_the_h100_arithmetic(capsys):
    records = _records(capsys, "--rounds", "2")
    rounds = [r for r in records if r["kind"] == "round"]
    (summary,) = [r for r in records if r["kind"] == "summary"]
    h100 = [r for r in records if r["kind"] == "h100"]

    assert [r["round"] for r in rounds] == [1, 2]
    assert summary["config"] == "tiny (tests)" and summary["seconds"] == 0.1 and summary["rounds"] == 2
    for r in [*rounds, summary]:
        for key in ("encodec_s_per_audio_s", "mbd_s_per_audio_s", "unet_forward_s", "unet_gflops_per_s"):
            assert r[key] > 0, key
        assert r["mbd_s"] >= r["diffusion_s"] > 0  # the finish path holds the diffusion
        assert r["unet_forwards"] == 4 * 20  # 4 bands x 20 reverse steps, one window, one row
    for key in ("encodec_s_per_audio_s", "mbd_s_per_audio_s", "unet_forward_s"):  # medians of the rounds
        assert summary[key] == pytest.approx(statistics.median(r[key] for r in rounds))

    # the FLOPs are the decoder's own count, split into convolutions and the Transformer
    mbd = bench_mbd.random_mbd(bench_mbd.tiny_config())
    assert summary["flops_per_audio_s"] == mbd.flops_per_second(bench_mbd.HOP) > 0
    assert summary["bottleneck_flops_per_audio_s"] > 0 and summary["conv_flops_per_audio_s"] > 0
    assert summary["conv_flops_per_audio_s"] + summary["bottleneck_flops_per_audio_s"] == pytest.approx(
        summary["flops_per_audio_s"]
    )
    assert summary["clip_gflop"] * 1e9 == pytest.approx(bench_mbd.clip_flops(mbd, 0.1))

    # H100: FLOPs / (989 TFLOP/s x utilisation), mono and stereo, 1 s and the clip lengths (300 s included)
    peak = 989e12 * bench_mbd.H100_UTILISATION
    assert {(r["channels"], r["seconds"]) for r in h100} == {(c, s) for c in (1, 2) for s in (1, 8, 30, 300)}
    for r in h100:
        mono = summary["flops_per_audio_s"] if r["seconds"] == 1 else bench_mbd.clip_flops(mbd, r["seconds"])
        assert r["tflop"] * 1e12 == pytest.approx(r["channels"] * mono)
        assert r["gpu_s"] == pytest.approx(r["channels"] * mono / peak)
        assert r["gpu_s_per_audio_s"] == pytest.approx(r["gpu_s"] / r["seconds"])
    # past 30 s the clip is decoded in 30 s windows overlapping by 1 s: 300 s takes 11 of them
    thirty, three_hundred = (
        next(r for r in h100 if r["channels"] == 1 and r["seconds"] == s) for s in (30, 300)
    )
    assert three_hundred["tflop"] / thirty["tflop"] == pytest.approx(11)


def test_the_table_and_the_default_of_three_rounds(capsys):
    assert main(["bench", "--mbd", "--mbd-tiny", "--mbd-seconds", "0.1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "medians of 3 round(s)" in out and "H100 s/audio s" in out


def test_the_assumed_config_and_its_flops_without_the_transformer():
    """The assumed release architecture's arithmetic (no weights built): 4 bands of 20 steps; the Transformer
    bottleneck at 3072 wide is most of the FLOPs."""
    from musicgen.diffusion import ReverseSchedule
    from musicgen.diffusion_unet import unet_flops

    config = bench_mbd.assumed_config()
    assert [b.processor.use for b in config.bands] == [False, False, True, True]
    assert config.bands[0].unet.channels()[-1] == (768, 3072) and config.bands[0].unet.codec_dim == 128
    steps = len(ReverseSchedule(config.bands[0].schedule, config.step_list))
    assert steps == 20
    with_t, without = (
        4 * steps * unet_flops(bench_mbd.assumed_config(transformer=t).bands[0].unet, 32000, 50)
        for t in (True, False)
    )
    assert 8e12 < with_t < 12e12 and 3e12 < without < 5e12


def test_bad_seconds_are_refused(capsys):
    assert main(["bench", "--mbd", "--mbd-tiny", "--mbd-seconds", "0"]) == 2
    assert "--mbd-seconds must be in (0, 300]" in capsys.readouterr().err


def test_a_converted_config_on_disk_is_used_else_the_assumed_one(tmp_path, monkeypatch):
    from tests.mbd_fixtures import make_tiny_mbd

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(tmp_path / "empty"))
    config, source = bench_mbd.choose_config()
    assert source.startswith("assumed") and config.bands[0].unet == bench_mbd.assumed_config().bands[0].unet

    make_tiny_mbd(tmp_path / "weights" / "mbd")
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(tmp_path / "weights"))
    config, source = bench_mbd.choose_config()
    assert source == f"converted release: {tmp_path / 'weights' / 'mbd' / 'config.json'}"
    assert config.bands[0].unet.codec_dim == 16  # the tiny release's, not the assumed 128
    config, source = bench_mbd.choose_config(transformer=False)  # asks for the assumed U-Net explicitly
    assert source.startswith("assumed, without") and not config.bands[0].unet.transformer
