"""Our engine against transformers' MusicGen classes, to the token, on tiny random checkpoints."""

import pytest
import torch

from musicgen import SamplingParams
from tests.helpers import reference_generate

GREEDY = SamplingParams(top_k=1, cfg_coef=3.0)


@pytest.mark.parametrize("kind", ["mono", "stereo"])
@pytest.mark.parametrize("fold_cross", [None, True])  # None: by bytes (plain keys/values at this size)
def test_greedy_codes_and_audio_match_transformers(tiny, kind, fold_cross, monkeypatch):
    _, model, tokenizer = tiny.get(kind)
    prompts = ["lo-fi beat with warm piano", "jazz trio"]  # different lengths: padding is exercised
    ref_codes, ref_audio = reference_generate(model, tokenizer, prompts, frames=40)
    engine = tiny.engine(kind)
    monkeypatch.setattr(engine.lm, "fold_cross", fold_cross)
    ours = engine.generate(prompts, duration=40 / 50, sampling=GREEDY, seed=0)
    assert ours.codes.shape == ref_codes.shape
    assert torch.equal(ours.codes, ref_codes)
    assert ours.audio.shape == ref_audio.shape
    assert torch.allclose(ours.audio, ref_audio, atol=1e-4)


def _melody_wave(seconds=3.0, rate=32000):
    t = torch.arange(int(seconds * rate)) / rate
    return (
        0.5 * torch.sin(2 * torch.pi * 330 * t) + 0.3 * torch.sin(2 * torch.pi * 523 * t * (1 + (t > 1.5)))
    )[None]


@pytest.mark.parametrize("kind", ["melody", "stereo-melody"])
@pytest.mark.parametrize("with_melody", [False, True])
def test_melody_models_match_transformers(tiny, kind, with_melody):
    from transformers import MusicgenMelodyFeatureExtractor

    _, model, tokenizer = tiny.get(kind)
    prompts = ["lo-fi beat with warm piano", "jazz trio"]
    wave = _melody_wave()
    extra = {}
    if with_melody:
        features = MusicgenMelodyFeatureExtractor()(wave[0].numpy(), sampling_rate=32000, return_tensors="pt")
        extra["input_features"] = features.input_features.repeat(2, 1, 1)
    ref_codes, ref_audio = reference_generate(model, tokenizer, prompts, frames=30, **extra)
    ours = tiny.engine(kind).generate(
        prompts, duration=30 / 50, melody=wave if with_melody else None, sampling=GREEDY, seed=0
    )
    assert torch.equal(ours.codes, ref_codes)
    assert torch.allclose(ours.audio, ref_audio, atol=1e-4)


def test_continuation_matches_transformers(tiny):
    _, model, tokenizer = tiny.get("mono")
    engine = tiny.engine("mono")
    prompt = torch.randn(1, 32000 // 5) * 0.2  # 0.2 s = 10 frames
    prompt_frames = engine.codec.encode(prompt[None]).shape[-1]
    total = 36
    ref_codes, ref_audio = reference_generate(
        model, tokenizer, ["ambient pads"], frames=total - prompt_frames, input_values=prompt[None]
    )
    ours = engine.generate(
        ["ambient pads"], duration=total / 50, continuation=prompt, sampling=GREEDY, seed=0
    )
    assert torch.equal(ours.codes, ref_codes)
    assert torch.allclose(ours.audio, ref_audio, atol=1e-4)


def test_guidance_scale_changes_codes(tiny):
    engine = tiny.engine("mono")
    a = engine.generate(["acoustic guitar folk song"], duration=0.5, sampling=GREEDY, seed=0).codes
    b = engine.generate(
        ["acoustic guitar folk song"], duration=0.5, sampling=SamplingParams(top_k=1, cfg_coef=1.0), seed=0
    ).codes
    assert not torch.equal(a, b)


def test_guidance_of_one_matches_transformers_without_guidance(tiny):
    _, model, tokenizer = tiny.get("mono")
    ref_codes, _ = reference_generate(model, tokenizer, ["ambient pads"], frames=20, guidance_scale=1.0)
    ours = tiny.engine("mono").generate(
        ["ambient pads"], duration=20 / 50, sampling=SamplingParams(top_k=1, cfg_coef=1.0), seed=0
    )
    assert torch.equal(ours.codes, ref_codes)


@pytest.mark.parametrize("kind", ["mono", "melody"])
@pytest.mark.parametrize("sampling", [GREEDY, SamplingParams(top_k=50, temperature=1.0)])
def test_static_step_gives_the_same_codes_as_the_eager_step(tiny, kind, sampling):
    """The static-shape step (the one to compile or capture) decodes exactly as the eager one."""
    engine = tiny.engine(kind)
    prompt = torch.randn(1, 32000 // 5) * 0.2
    runs = []
    for static in (False, True):
        engine.static_decode = static
        try:
            runs.append(
                engine.generate(
                    ["jazz trio", ""], duration=0.8, continuation=prompt, sampling=sampling, seed=11
                )
            )
        finally:
            engine.static_decode = False
    assert torch.equal(runs[0].codes, runs[1].codes)


def test_static_step_captures_as_one_graph(tiny, monkeypatch):
    """torch.compile traces the static step whole (fullgraph: no graph break, no recompilation per
    position) and the traced step decodes the same codes. The backend runs the traced graph as is:
    this checks the capture without compiling kernels, which a GPU run does later."""
    import musicgen.generation as generation

    engine = tiny.engine("mono")
    eager = engine.generate(["ambient pads"], duration=0.4, sampling=GREEDY, seed=0).codes
    torch._dynamo.reset()
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = torch.compile(
        generation.decode_step_static, backend=counting_backend, fullgraph=True, dynamic=False
    )
    monkeypatch.setattr(generation, "decode_step_static", compiled)
    engine.static_decode = True
    try:
        traced = engine.generate(["ambient pads"], duration=0.4, sampling=GREEDY, seed=0).codes
    finally:
        engine.static_decode = False
    assert torch.equal(traced, eager)
    assert len(graphs) == 1  # one graph served every position: nothing was recompiled
