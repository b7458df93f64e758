"""Continuous batching (musicgen.batching) on the tiny random models.

The claim checked here: a request decoded by a `Batcher` gives the same codes whatever else shares its
decode steps (other prompts, durations, seeds, sampling settings, melodies, continuations, styles,
guidance on or off, windows of long clips opening mid-batch), the same as it alone, and the same as
`MusicGen.generate` of the same arguments. Then admission under max_batch, cancellation, a failing
request among good ones, the asyncio side of a ticket, and `LanguageModel.decode_jobs` itself.

The codes are equal bit for bit; the logits are not always (test_decode_jobs_gives_a_job_the_bits_it_gets
_alone): on CPU a product of more rows than a shape-dependent threshold gives a row other last bits, and
a one-row request is padded to two by the batcher but not by `generate`. Those differences are ~1e-6 and
have not changed a code in any request here.

Requests are prepared anew for every run (`prepare` is deterministic for a given seed). Long clips use
the real 30 s window once (32 s with extend_stride 25); the other long-form checks give a prepared job a
LongFormPlan with short windows, which `ClipDecoder` walks exactly as it walks 30 s ones, and compare
with `generate_long` on the same job, the decode `generate` runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import time

import pytest
import torch

from musicgen import SamplingParams, batching
from musicgen.batching import Batcher, RequestCancelled
from musicgen.generation import LongFormPlan, WindowDecoder, generate_long, steps_for

SR = 32000
TIMEOUT = 120  # seconds any one result may take (a loaded 2-core machine is slow)
KINDS = ("mono", "stereo", "melody", "stereo-melody", "style")


class Boom(RuntimeError):
    """The failure planted in one request."""


# ---- inputs ----------------------------------------------------------------------------------------


def noise(seconds: float, seed: int, channels: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(channels, int(seconds * SR), generator=g)


def tone(freq: float, seconds: float) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return 0.5 * torch.sin(2 * torch.pi * freq * t)[None]


def engine_of(kind: str, tiny, tiny_style):
    return tiny_style[1] if kind == "style" else tiny.engine(kind)


# The tiny models' head_dim is 8 and the tiny tokenizer gives "folk" 6 tokens, "ambient pads" 11 and the
# long prompt 30, so one guided prompt of "folk" takes the folded cross-attention (rows x tokens < 8), the
# others the plain one, [None, "folk"] a fold whose rows do not lead, and no text none at all.
LONG_TEXT = "jazz trio with upright bass and warm piano"


def requests_for(kind: str) -> list[dict]:
    """Four different requests for a model of `kind`, the last one without guidance (one row per clip)."""
    if kind in ("mono", "stereo"):
        return [
            dict(prompts=LONG_TEXT, duration=1.0, seed=1),
            dict(prompts="folk", duration=0.6, seed=2, sampling=SamplingParams(top_p=0.9, temperature=0.8)),
            dict(
                prompts=[None, "folk"], duration=0.8, seed=3, sampling=SamplingParams(top_k=50, cfg_coef=2.0)
            ),
            dict(prompts="lo-fi hip hop beat", duration=0.5, seed=4, sampling=SamplingParams(cfg_coef=1.0)),
        ]
    if kind in ("melody", "stereo-melody"):
        off = dict(melody_stems="off")
        return [
            dict(prompts=LONG_TEXT, melody=tone(220, 2.0), duration=1.0, seed=1, **off),
            dict(prompts="folk", duration=0.6, seed=2, sampling=SamplingParams(top_p=0.9), **off),
            dict(prompts=["ambient pads", None], melody=tone(330, 0.7), duration=0.8, seed=3, **off),
            dict(prompts=None, melody=tone(440, 1.0), duration=0.5, seed=4, sampling=SamplingParams(cfg_coef=1.0), **off),
        ]  # fmt: skip
    return [
        dict(prompts="folk", style=noise(3.5, 1), duration=1.0, seed=1, sampling=SamplingParams(cfg_beta=3.0)),
        dict(prompts=LONG_TEXT, style=noise(3.0, 2), duration=0.6, seed=2),
        dict(prompts=["ambient pads", "folk"], duration=0.8, seed=3, sampling=SamplingParams(top_k=20)),
        dict(prompts="folk", style=[noise(3.0, 4)], duration=0.5, seed=4, sampling=SamplingParams(cfg_coef=1.0)),
    ]  # fmt: skip


# ---- decoding --------------------------------------------------------------------------------------


def spy_steps(monkeypatch) -> list[tuple]:
    """Records the tickets of every shared forward (`musicgen.batching._forward`), of every batcher."""
    seen: list[tuple] = []
    forward = batching._forward

    def spy(lm, plan, feeding):
        seen.append(tuple(r.ticket for r in feeding))
        return forward(lm, plan, feeding)

    monkeypatch.setattr(batching, "_forward", spy)
    return seen


def sharing(seen: list[tuple], tickets: list) -> list[int]:
    """How many of `tickets` each forward of theirs fed (the others' forwards left out)."""
    ours = {id(t) for t in tickets}
    counts = [sum(id(t) in ours for t in step) for step in seen]
    return [n for n in counts if n]


def gated(job, gate: threading.Event):
    """`job` whose first conditioning waits for `gate`: the decode thread holds there while the test
    queues the other requests, so that all of them are decoding by the next step."""
    inner = job.conditions_at

    def conditions_at(offset):
        gate.wait(TIMEOUT)
        return inner(offset)

    return dataclasses.replace(job, conditions_at=conditions_at)


def submit_together(batcher: Batcher, jobs: list) -> list:
    """Tickets of `jobs`: the first admitted (with whichever others were queued by then) and held at the
    gate until every job is queued, so that all are admitted by the next step."""
    gate = threading.Event()
    tickets = [batcher.submit(gated(jobs[0], gate))]
    tickets += [batcher.submit(job) for job in jobs[1:]]
    gate.set()
    return tickets


def decode_together(model, jobs: list, monkeypatch, max_batch: int = 8):
    """(codes of every job, their tickets, how many of them each forward fed)."""
    seen = spy_steps(monkeypatch)
    tickets = submit_together(Batcher(model, max_batch=max_batch), jobs)
    codes = [t.result(TIMEOUT) for t in tickets]
    return codes, tickets, sharing(seen, tickets)


def alone(model, job) -> torch.Tensor:
    """The job's codes through a batcher of its own."""
    return Batcher(model, max_batch=4).submit(job).result(TIMEOUT)


@torch.inference_mode()
def decode_like_generate(model, job) -> torch.Tensor:
    """What `MusicGen.generate` decodes for a prepared job (its own call, without the audio decoding)."""
    return generate_long(
        model.lm, job.conditions_at, job.batch, job.plan, job.sampling, job.generator(), job.prompt
    )


def guided(job) -> bool:
    return job.conditions_at(0).guided


def stub_codec(monkeypatch, model) -> None:
    """EnCodec's decoding replaced by silence: the codes are compared, and decoding 32 s costs seconds."""
    monkeypatch.setattr(model.codec, "decode", lambda codes: torch.zeros(codes.shape[0], model.channels, 1))


def short_windows(job, window: int, stride: int, total: int):
    """`job` decoded in windows of `window` frames moving by `stride` (the 30 s / 18 s scheme, shrunk)."""
    return dataclasses.replace(job, plan=LongFormPlan(total=total, window=window, stride=stride))


# ---- 1. each kind: requests decoded together equal each alone and generate -------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_requests_decoded_together_equal_each_alone_and_generate(kind, tiny, tiny_style, monkeypatch):
    model = engine_of(kind, tiny, tiny_style)
    requests = requests_for(kind)
    batched, tickets, steps = decode_together(model, [model.prepare(**r) for r in requests], monkeypatch)
    assert max(steps) == len(requests)  # every request shared steps with all the others
    assert tickets[-1].batch_clips == sum(t.job.batch for t in tickets)
    for request, codes in zip(requests, batched, strict=True):
        job = model.prepare(**request)
        assert codes.shape == (job.batch, model.config.lm.num_codebooks, job.plan.total)
        assert torch.equal(codes, alone(model, job)), request
        # the last request has no guidance, one row: the batcher pads it to two, generate runs it as a
        # matrix-vector product, so their logits differ in the last bits (test_decode_jobs_... below);
        # its codes are the same all the same
        assert guided(job) == (request is not requests[-1])
        assert torch.equal(codes, model.generate(**request).codes), request


# ---- 2. mixed batches ------------------------------------------------------------------------------


def test_melody_continuation_and_a_long_clip_share_a_decode(tiny, monkeypatch):
    """On the melody model: a melody request with a prompt longer than its batch-mates' (so a longer
    prefix: its positions differ), a text-only one, a continuation under a melody, and a 32 s clip that
    continues 29 s of audio (two real windows, the melody sliding under the second, which opens while the
    others still decode). Each equals itself alone and generate."""
    model = tiny.engine("melody")
    stub_codec(monkeypatch, model)
    off = dict(melody_stems="off")
    requests = [
        dict(prompts="folk", duration=0.8, seed=12, sampling=SamplingParams(top_p=0.8), **off),
        dict(prompts=LONG_TEXT, melody=tone(262, 1.5), duration=1.0, seed=11, **off),
        dict(prompts="ambient pads", continuation=noise(0.4, 3), melody=tone(196, 3.0), duration=1.2, seed=13, **off),
        dict(prompts="folk", continuation=noise(29.0, 4), melody=tone(294, 3.0), duration=32, extend_stride=25, seed=14, **off),
    ]  # fmt: skip
    jobs = [model.prepare(**r) for r in requests]
    assert len(jobs[-1].plan.windows(jobs[-1].prompt.shape[-1])) == 2
    batched, _, steps = decode_together(model, jobs, monkeypatch)
    assert max(steps) == 4
    for request, job, codes in zip(requests, jobs, batched, strict=True):
        assert torch.equal(codes, alone(model, job)), request
        assert torch.equal(codes, model.generate(**request).codes), request
    assert batched[-1].shape == (1, 4, 32 * 50)


def test_style_requests_with_and_without_double_guidance_share_a_decode(tiny_style, monkeypatch):
    """Double guidance (three rows), ordinary guidance, a clip without a style, one without guidance and a
    continued one, in one decode."""
    _, model = tiny_style
    requests = [
        dict(prompts="folk", style=noise(3.0, 21), duration=0.6, seed=21, sampling=SamplingParams(cfg_beta=4.0)),
        dict(prompts="ambient pads", style=noise(3.5, 22), duration=0.8, seed=22),
        dict(prompts=[LONG_TEXT, "folk"], style=[noise(3.0, 23), None], duration=0.7, seed=23,
             sampling=SamplingParams(cfg_beta=2.0, top_k=30)),
        dict(prompts="folk", continuation=noise(0.4, 24), style=noise(3.0, 25), duration=1.0, seed=24,
             sampling=SamplingParams(cfg_coef=1.0)),
    ]  # fmt: skip
    jobs = [model.prepare(**r) for r in requests]
    assert [j.conditions_at(0).copies for j in jobs] == [3, 2, 3, 1]
    batched, _, steps = decode_together(model, jobs, monkeypatch)
    assert max(steps) == 4
    for request, job, codes in zip(requests, jobs, batched, strict=True):
        assert torch.equal(codes, alone(model, job)), request
        assert torch.equal(codes, model.generate(**request).codes), request


def test_a_32_s_clip_shares_its_window_change_with_short_requests(tiny, monkeypatch):
    """A 32 s clip (extend_stride 25: a 30 s window, then one prompted with its last 5 s) and three short
    requests that join near the end of its first window, so the second window is prefilled while they
    decode."""
    model = tiny.engine("mono")
    stub_codec(monkeypatch, model)
    long = dict(prompts="folk", duration=32, extend_stride=25, seed=31, sampling=SamplingParams(top_k=100))
    shorts = [
        dict(prompts=LONG_TEXT, duration=0.6, seed=32),
        dict(prompts=None, duration=0.5, seed=33),
        dict(prompts=[None, "folk"], duration=0.4, seed=34, sampling=SamplingParams(top_p=0.95)),
    ]
    seen = spy_steps(monkeypatch)
    # the decode thread holds 12 steps before the end of the long clip's first window until the short
    # requests are queued
    held, go, first_window, long_ticket = threading.Event(), threading.Event(), window_steps(model, 1500), []
    forward = batching._forward

    def hold(lm, plan, feeding):
        if not go.is_set() and long_ticket and long_ticket[0].steps >= first_window - 12:
            held.set()
            go.wait(TIMEOUT)
        return forward(lm, plan, feeding)

    monkeypatch.setattr(batching, "_forward", hold)
    batcher = Batcher(model, max_batch=8)
    ticket = batcher.submit(model.prepare(**long))
    long_ticket.append(ticket)
    assert held.wait(TIMEOUT)
    others = [batcher.submit(model.prepare(**r)) for r in shorts]
    go.set()
    codes = ticket.result(TIMEOUT)
    assert codes.shape == (1, 4, 32 * 50)
    # the short ones straddled the window change: one forward fed all three of them but not the long
    # clip, whose second window had just been prefilled
    ids = {id(t) for t in others}
    assert any({id(t) for t in step} == ids for step in seen), "no short request saw the window change"
    assert all(t.joined_at is not None and t.steps > 0 for t in others)
    assert torch.equal(codes, alone(model, model.prepare(**long)))
    assert torch.equal(codes, model.generate(**long).codes)
    for request, t in zip(shorts, others, strict=True):
        assert torch.equal(t.result(TIMEOUT), alone(model, model.prepare(**request))), request


def window_steps(model, frames: int) -> int:
    """Decode steps (what a ticket counts) of a window of `frames` from nothing."""
    return steps_for(frames, 0, model.config.lm.delays)


@pytest.mark.parametrize("kind", KINDS)
def test_windows_of_long_clips_open_while_sharing(kind, tiny, tiny_style, monkeypatch):
    """Long form with short windows: two clips whose windows change at different steps (one continuing
    audio), and a short request; every window change happens while others decode."""
    model = engine_of(kind, tiny, tiny_style)
    base = requests_for(kind)
    cont = dict(base[1], continuation=noise(0.3, 41, model.channels), duration=0.9)
    jobs = [
        short_windows(model.prepare(**base[0]), window=30, stride=18, total=75),
        short_windows(model.prepare(**cont), window=25, stride=10, total=45),
        model.prepare(**base[3]),
        short_windows(model.prepare(**base[2]), window=20, stride=15, total=50),
    ]
    batched, _, steps = decode_together(model, jobs, monkeypatch)
    assert max(steps) == 4
    for job, codes in zip(jobs, batched, strict=True):
        assert codes.shape[-1] == job.plan.total
        assert torch.equal(codes, alone(model, job))
        assert torch.equal(codes, decode_like_generate(model, job))


# ---- 3. max_batch ----------------------------------------------------------------------------------


def test_max_batch_makes_the_third_request_wait(tiny, monkeypatch):
    model = tiny.engine("mono")
    requests = [
        dict(prompts=LONG_TEXT, duration=1.0, seed=51),
        dict(prompts="folk", duration=0.5, seed=52, sampling=SamplingParams(top_k=10)),
        dict(prompts="ambient pads", duration=0.6, seed=53),
    ]
    seen = spy_steps(monkeypatch)
    tickets = submit_together(Batcher(model, max_batch=2), [model.prepare(**r) for r in requests])
    results = [t.result(TIMEOUT) for t in tickets]
    first, second, third = tickets
    assert second.batch_clips == 2  # the first alone (held at the gate) or with the second
    # the third waited for room: it never shared a step with the second (the shorter), and joined the
    # first once the second was done
    assert not any({id(second), id(third)} <= {id(t) for t in step} for step in seen)
    assert third.joined_at > second.joined_at >= first.joined_at
    assert third.batch_clips == 2 and third.batch_id == first.batch_id
    assert max(sharing(seen, tickets)) == 2
    assert sharing(seen, [first, third]).count(2) > 0
    assert "joined batch" in third.summary() and "2 clips" in third.summary()
    for request, codes in zip(requests, results, strict=True):
        assert torch.equal(codes, alone(model, model.prepare(**request))), request


def test_a_request_larger_than_max_batch_runs_alone(tiny, monkeypatch):
    model = tiny.engine("stereo")
    big = dict(prompts=["folk", LONG_TEXT, None], duration=0.4, seed=54)
    small = dict(prompts="ambient pads", duration=0.3, seed=55)
    seen = spy_steps(monkeypatch)
    batcher = Batcher(model, max_batch=2)
    tickets = submit_together(batcher, [model.prepare(**big), model.prepare(**small)])
    codes = [t.result(TIMEOUT) for t in tickets]
    assert tickets[0].batch_clips == 3 and tickets[1].batch_clips == 1  # never together
    assert tickets[1].joined_at > tickets[0].joined_at
    assert set(sharing(seen, tickets)) == {1}
    assert torch.equal(codes[0], model.generate(**big).codes)
    assert torch.equal(codes[1], model.generate(**small).codes)


# ---- 4. cancellation -------------------------------------------------------------------------------


def wait_for_steps(ticket, steps: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while ticket.steps < steps and not ticket.future.done():
        assert time.monotonic() < deadline, "the request never reached its steps"
        time.sleep(0.001)


def test_cancelling_a_decoding_request_leaves_the_others_as_alone(tiny):
    model = tiny.engine("mono")
    long = model.prepare(LONG_TEXT, duration=10.0, seed=61)
    requests = [
        dict(prompts="folk", duration=0.8, seed=62),
        dict(prompts=[None, "ambient pads"], duration=0.6, seed=63, sampling=SamplingParams(top_p=0.9)),
    ]
    batcher = Batcher(model, max_batch=8)
    tickets = submit_together(batcher, [long] + [model.prepare(**r) for r in requests])
    wait_for_steps(tickets[0], 5)
    tickets[0].cancel()
    with pytest.raises(RequestCancelled, match="cancelled"):
        tickets[0].result(TIMEOUT)
    assert tickets[0].cancelled and 5 <= tickets[0].steps < long.steps
    for request, t in zip(requests, tickets[1:], strict=True):
        assert torch.equal(t.result(TIMEOUT), alone(model, model.prepare(**request))), request


def test_cancelling_a_queued_request(tiny):
    model = tiny.engine("mono")
    batcher = Batcher(model, max_batch=1)
    first = model.prepare("folk", duration=1.0, seed=64)
    tickets = submit_together(batcher, [first, model.prepare("ambient pads", duration=0.4, seed=65)])
    tickets[1].cancel()
    with pytest.raises(RequestCancelled, match="queued"):
        tickets[1].result(TIMEOUT)
    assert tickets[1].joined_at is None and tickets[1].steps == 0
    assert "never started" in tickets[1].summary()
    assert torch.equal(tickets[0].result(TIMEOUT), alone(model, first))


# ---- 5. failure isolation --------------------------------------------------------------------------


def marked(job, marks: set[int]):
    """`job` whose window conditions are copies remembered in `marks` (by id), so that a patched
    WindowDecoder method can tell this request's windows from the others'."""
    inner = job.conditions_at

    def conditions_at(offset):
        cond = dataclasses.replace(inner(offset))
        marks.add(id(cond))
        return cond

    return dataclasses.replace(job, conditions_at=conditions_at)


def good_requests(kind: str) -> list[dict]:
    return requests_for(kind)[:3]


@pytest.mark.parametrize("kind", ["mono", "melody"])
def test_conditions_failing_for_a_second_window_fail_that_request_alone(kind, tiny):
    model = tiny.engine(kind)
    job = short_windows(model.prepare("folk", duration=1.0, seed=71), window=25, stride=15, total=50)
    inner = job.conditions_at

    def conditions_at(offset):
        if offset > 0:
            raise Boom("no conditions past the first window")
        return inner(offset)

    failing = dataclasses.replace(job, conditions_at=conditions_at)
    requests = good_requests(kind)
    tickets = submit_together(Batcher(model, max_batch=8), [model.prepare(**requests[0]), failing] + [model.prepare(**r) for r in requests[1:]])  # fmt: skip
    with pytest.raises(Boom, match="first window"):
        tickets[1].result(TIMEOUT)
    assert tickets[1].steps == window_steps(model, 25)  # its whole first window, then the failure
    for request, t in zip(requests, [tickets[0], *tickets[2:]], strict=True):
        assert torch.equal(t.result(TIMEOUT), alone(model, model.prepare(**request))), request


def test_sampling_failing_mid_window_fails_that_request_alone(tiny, monkeypatch):
    model = tiny.engine("stereo")
    marks: set[int] = set()
    take = WindowDecoder.take

    def failing_take(self, logits):
        if id(self.cond) in marks and self.col >= 10:
            raise Boom("sampling failed")
        return take(self, logits)

    monkeypatch.setattr(WindowDecoder, "take", failing_take)
    requests = good_requests("stereo")
    bad = marked(model.prepare("ambient pads", duration=0.8, seed=72), marks)
    tickets = submit_together(Batcher(model, max_batch=8), [model.prepare(**requests[0]), bad] + [model.prepare(**r) for r in requests[1:]])  # fmt: skip
    with pytest.raises(Boom, match="sampling failed"):
        tickets[1].result(TIMEOUT)
    for request, t in zip(requests, [tickets[0], *tickets[2:]], strict=True):
        assert torch.equal(t.result(TIMEOUT), alone(model, model.prepare(**request))), request


@pytest.mark.parametrize("kind", ["mono", "style"])
def test_a_forward_failing_mid_step_fails_that_request_alone(kind, tiny, tiny_style, monkeypatch):
    """One request asks for a position past its cache at step 10: the shared forward fails inside the
    script, after the requests before it wrote their keys and values for that step; the batcher then runs
    each request alone, and only that one fails."""
    model = engine_of(kind, tiny, tiny_style)
    marks: set[int] = set()
    next_input = WindowDecoder.next_input

    def bad_position(self):
        column, position = next_input(self)
        if id(self.cond) in marks and self.col >= 10:
            return column, self.cache.max_len + 5
        return column, position

    monkeypatch.setattr(WindowDecoder, "next_input", bad_position)
    requests = good_requests(kind)
    bad = marked(model.prepare(**requests[1]), marks)
    seen = spy_steps(monkeypatch)
    tickets = submit_together(Batcher(model, max_batch=8), [model.prepare(**r) for r in requests] + [bad])
    with pytest.raises(Exception) as caught:  # noqa: B017 - whatever the script raises for it
        tickets[-1].result(TIMEOUT)
    assert not isinstance(caught.value, RequestCancelled)
    codes = [t.result(TIMEOUT) for t in tickets[:-1]]
    # one shared forward of the four failed, then each ran alone, then the three went on together
    steps = sharing(seen, tickets)
    failed = max(i for i, n in enumerate(steps) if n == 4)
    assert steps[failed + 1 : failed + 6] == [1, 1, 1, 1, 3]
    for request, c in zip(requests, codes, strict=True):
        assert torch.equal(c, alone(model, model.prepare(**request))), request


# ---- 6. asyncio ------------------------------------------------------------------------------------


def test_await_a_ticket_and_cancel_by_cancelling_the_task(tiny):
    model = tiny.engine("mono")
    short = dict(prompts="folk", duration=0.6, seed=81)
    long = model.prepare(LONG_TEXT, duration=10.0, seed=82)

    async def main():
        batcher = Batcher(model, max_batch=4)
        first, second = submit_together(batcher, [model.prepare(**short), long])
        waiting = asyncio.create_task(second.wait())
        while second.steps < 3:
            await asyncio.sleep(0.002)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert second.cancelled
        return await first.wait(), second

    codes, cancelled = asyncio.run(main())
    assert torch.equal(codes, alone(model, model.prepare(**short)))
    # the awaiting task's cancellation cancelled the ticket's future too (asyncio.wrap_future), so
    # result() raises the futures' CancelledError rather than RequestCancelled
    with pytest.raises((RequestCancelled, concurrent.futures.CancelledError)):
        cancelled.result(TIMEOUT)
    steps = cancelled.steps
    time.sleep(0.2)
    assert cancelled.steps == steps < long.steps  # the batcher let it go


# ---- 7. LanguageModel.decode_jobs ------------------------------------------------------------------


class Stepper:
    """One window of a prepared job, prefilled, stepped by hand (greedy, so that copies of it fed the
    same logits take the same tokens)."""

    def __init__(self, model, job):
        self.window = WindowDecoder(
            model.lm, job.conditions_at(0), job.batch, job.plan.total,
            dataclasses.replace(job.sampling, top_k=1), None, job.prompt,
        )  # fmt: skip
        self.logits = self.window.prefill()
        self.lm = model.lm

    def feed(self) -> tuple[torch.Tensor, object, int]:
        """Samples from the pending logits; returns the embeddings [rows, D], cache and position to feed."""
        self.window.take(self.logits)
        column, position = self.window.next_input()
        return self.lm.embed_codes(column[:, :, None])[:, 0], self.window.cache, position


def step_together(lm, plan, steppers: list[Stepper]) -> None:
    """One decode_jobs forward for all `steppers`; each keeps its rows of the logits."""
    fed = [s.feed() for s in steppers]
    logits = lm.decode_jobs(plan, torch.cat([x for x, _, _ in fed]), [c for _, c, _ in fed], [p for _, _, p in fed])  # fmt: skip
    start = 0
    for s, (x, _, _) in zip(steppers, fed, strict=True):
        s.logits, start = logits[start : start + x.shape[0]], start + x.shape[0]


def products_vary_with_rows(plan, rows: int) -> list[str]:
    """The decode plan's float projections whose product gives a row other bits in a product of `rows`
    rows than in one of two (torch.mm as the scripted step calls it, on random activations): those
    break the batch invariance `decode_jobs` relies on before any code of this project runs."""
    found = []
    g = torch.Generator().manual_seed(0)
    for w in {tuple(w.shape): w for w in plan.weights + plan.cross_weights}.values():
        x = torch.randn(rows, w.shape[0], generator=g)
        if not torch.equal(torch.mm(x, w)[:2], torch.mm(x[:2], w)):
            found.append(f"{w.shape[0]}->{w.shape[1]}")
    return found


@pytest.mark.parametrize("kind", KINDS)
@torch.inference_mode()
def test_decode_jobs_gives_a_job_the_bits_it_gets_alone(kind, tiny, tiny_style):
    """The four requests of `requests_for(kind)` (9 or 10 rows) decoded together for 12 steps: each job's
    logits against the same job decoded alone by decode_jobs (a one-row job padded) and by forward_embeds
    (generate's step, unpadded).

    Measured here (MKL, AVX-512): the logits are NOT the same bits. torch.mm with the plan's weights
    (transposed views, [in, out]) gives a row other bits once the product has more rows than a threshold
    that depends on the shape: 3 rows for the tiny models' ff2 (64 -> 32), 6 for the tiny style model's
    (128 -> 32), 16 rows for every projection of musicgen-small/medium/large. Close (< 1e-5 relative), so
    codes rarely change. Where a job's bits differ, the products must be the cause (a probe shows them
    varying at this row count); otherwise the batching code itself leaks between jobs."""
    model = engine_of(kind, tiny, tiny_style)
    lm, plan = model.lm, model.lm.decode_plan()
    jobs = [model.prepare(**r) for r in requests_for(kind)]
    shared, solo, plain = ([Stepper(model, job) for job in jobs] for _ in range(3))
    rows = sum(s.window.rows for s in shared)
    assert [s.window.rows for s in shared][-1] == 1 and rows >= 9
    unequal = set()
    for _ in range(12):
        step_together(lm, plan, shared)
        for i, (a, b, c) in enumerate(zip(shared, solo, plain, strict=True)):
            step_together(lm, plan, [b])
            x, cache, position = c.feed()
            c.logits = lm.forward_embeds(x[:, None], cache, position)
            torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
            if x.shape[0] > 1:  # alone, the same scripted step: the same bits
                assert torch.equal(b.logits, c.logits), (kind, i)
            else:  # a lone row: decode_jobs pads it to two, forward_embeds runs a matrix-vector product
                torch.testing.assert_close(b.logits, c.logits, rtol=1e-5, atol=1e-5)
            if not torch.equal(a.logits, b.logits):
                unequal.add(i)
            # the same tokens next whatever a near-tie would do: every copy goes on from the batched logits
            b.logits = c.logits = a.logits.clone()
    if unequal:
        varying = products_vary_with_rows(plan, rows)
        assert varying, f"jobs {sorted(unequal)} got other bits beside the others: not the products' doing"


@pytest.mark.parametrize("kind", ["mono", "melody", "style"])
@torch.inference_mode()
def test_decode_jobs_two_one_row_jobs_equal_each_alone_padded(kind, tiny, tiny_style):
    """Two one-row jobs (no guidance) in one step, at other positions (a continuation; other prefix
    lengths), one with folded cross-attention and one plain on the text models: a product of two rows, as
    a lone job padded to two gets, so here every product gives the same bits and so must the whole step
    (attention job by job, each over its own cache)."""
    model = engine_of(kind, tiny, tiny_style)
    lm, plan = model.lm, model.lm.decode_plan()
    off = SamplingParams(cfg_coef=1.0)
    jobs = [
        model.prepare("folk", duration=0.5, seed=1, sampling=off),
        model.prepare(LONG_TEXT, duration=0.8, continuation=noise(0.3, 5), seed=2, sampling=off),
    ]
    shared, solo = [Stepper(model, job) for job in jobs], [Stepper(model, job) for job in jobs]
    assert [s.window.rows for s in shared] == [1, 1]
    positions = [s.window.prefix_len + s.window.col for s in shared]
    assert positions[0] != positions[1]
    for _ in range(12):
        step_together(lm, plan, shared)
        for a, b in zip(shared, solo, strict=True):
            step_together(lm, plan, [b])
            assert torch.equal(a.logits, b.logits)


def test_int8_requests_each_run_their_own_forward(tiny):
    """int8 (musicgen.quantize): fbgemm's linear_dynamic quantizes a product's activations with one scale
    for all its rows, so a batch-mate would change a job's logits (by ~2 % of their range, measured): the
    batcher runs each int8 request's forward alone, and a request's codes do not depend on the others."""
    from musicgen.loading import build_model, read_checkpoint

    model = build_model(read_checkpoint(tiny.get("mono")[0]), "cpu", int8=True)
    assert model.lm.decode_plan().packed  # the int8 products
    requests = [
        dict(prompts="folk", duration=0.5, seed=1),
        dict(prompts=LONG_TEXT, duration=0.7, seed=2, sampling=SamplingParams(temperature=0.7)),
    ]
    batcher = Batcher(model, max_batch=4)
    solo = [batcher.submit(model.prepare(**r)).result(TIMEOUT) for r in requests]
    jobs = [model.prepare(**r) for r in requests]
    tickets = [batcher.submit(job) for job in jobs]
    together = [t.result(TIMEOUT) for t in tickets]
    assert tickets[1].batch_clips == 2  # they did share the decode
    for a, b in zip(solo, together, strict=True):
        assert torch.equal(a, b)
