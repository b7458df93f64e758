"""Seeds, long clips, continuation, unconditional generation, and the errors a caller can cause."""

import pytest
import torch

from musicgen import InvalidInputError, SamplingParams


def test_same_seed_same_codes_different_seed_different_codes(tiny):
    engine = tiny.engine("mono")
    sampling = SamplingParams(top_k=50, temperature=1.0)
    a = engine.generate(["80s synth pop"], duration=0.4, sampling=sampling, seed=7)
    b = engine.generate(["80s synth pop"], duration=0.4, sampling=sampling, seed=7)
    c = engine.generate(["80s synth pop"], duration=0.4, sampling=sampling, seed=8)
    assert a.seed == 7
    assert torch.equal(a.codes, b.codes) and torch.equal(a.audio, b.audio)
    assert not torch.equal(a.codes, c.codes)
    assert not torch.allclose(a.audio, c.audio)  # the codec's codebooks are random: audio follows the codes


def test_no_seed_draws_one_and_reports_it(tiny):
    engine = tiny.engine("mono")
    first = engine.generate(["jazz"], duration=0.2, sampling=SamplingParams(top_k=50))
    again = engine.generate(["jazz"], duration=0.2, sampling=SamplingParams(top_k=50), seed=first.seed)
    assert torch.equal(first.codes, again.codes)


@pytest.mark.parametrize("sampling", [SamplingParams(top_p=0.9), SamplingParams(top_k=0, temperature=0.7)])
def test_top_p_and_plain_sampling_give_valid_codes(tiny, sampling):
    codes = tiny.engine("mono").generate(["epic strings"], duration=0.3, sampling=sampling, seed=1).codes
    assert codes.shape == (1, 4, 15)
    assert int(codes.min()) >= 0 and int(codes.max()) < 2048


def test_unconditional_batch(tiny):
    result = tiny.engine("stereo").generate(None, batch_size=2, duration=0.3, seed=3)
    assert result.codes.shape == (2, 8, 15)
    assert result.audio.shape == (2, 2, int(0.3 * 32000))


def test_seventy_seconds_in_windows(tiny):
    engine = tiny.engine("mono")
    result = engine.generate(["ambient pads"], duration=70, sampling=SamplingParams(top_k=1), seed=0)
    assert result.codes.shape == (1, 4, 70 * 50)
    assert result.audio.shape == (1, 1, 70 * 32000)
    # the second window was prompted with the end of the first: its first 12 s are the first window's
    # frames 18 s..30 s, so the overlap carried on without a seam in the codes
    first = engine.generate(["ambient pads"], duration=30, sampling=SamplingParams(top_k=1), seed=0)
    assert torch.equal(result.codes[..., : 30 * 50], first.codes)


def test_long_melody_clip(tiny):
    melody = torch.sin(torch.arange(32000 * 2) / 32000 * 2 * torch.pi * 220)[None]
    result = tiny.engine("melody").generate(["folk"], duration=33, melody=melody, seed=0)
    assert result.codes.shape == (1, 4, 33 * 50)


def test_continuation_keeps_the_prompt_at_the_start(tiny):
    engine = tiny.engine("stereo")
    prompt = torch.randn(2, 32000 // 2) * 0.1  # 0.5 s stereo
    prompt_codes = engine.codec.encode(prompt[None])
    result = engine.generate(["jazz trio"], duration=1.2, continuation=prompt, seed=0)
    assert result.codes.shape[-1] == 60
    assert torch.equal(result.codes[..., : prompt_codes.shape[-1]], prompt_codes)
    # the audio starts with the decoded prompt
    start = engine.codec.decode(prompt_codes)
    assert torch.allclose(
        result.audio[..., : start.shape[-1] // 2], start[..., : start.shape[-1] // 2], atol=1e-4
    )


def test_continuation_longer_than_duration_is_refused(tiny):
    with pytest.raises(InvalidInputError, match="duration"):
        tiny.engine("mono").generate(["x"], duration=0.5, continuation=torch.zeros(1, 32000))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"duration": 0}, "duration"),
        ({"duration": -3}, "duration"),
        ({"duration": 1, "sampling": SamplingParams(top_p=1.5)}, "top_p"),
        ({"duration": 1, "sampling": SamplingParams(top_p=-0.1)}, "top_p"),
        ({"duration": 1, "sampling": SamplingParams(temperature=-1)}, "temperature"),
        ({"duration": 1, "sampling": SamplingParams(top_k=-5)}, "top_k"),
        ({"duration": 1, "melody": torch.zeros(1, 32000)}, "melody"),
        ({"duration": 1, "extend_stride": 30}, "extend_stride"),
        ({"duration": 1, "melody_stems": "maybe"}, "melody_stems"),
    ],
)
def test_bad_arguments_raise_clear_errors(tiny, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        tiny.engine("mono").generate(["x"], **kwargs)


def test_empty_prompt_list(tiny):
    with pytest.raises(InvalidInputError, match="empty"):
        tiny.engine("mono").generate([], duration=1)
