"""Concurrent predictions through the real Cog server: continuous batching (musicgen.batching) from outside.

One server for the module, started as tests/test_server.py starts it, with COG_MAX_CONCURRENCY=8 slots and
MUSICGEN_MAX_BATCH=4 clips per shared decode, serving the tiny random `small` checkpoint. Every prediction
asks for wav, so its samples are compared exactly: the same EnCodec turns equal codes into equal audio, so
equal audio says a request got the same codes in a batch as alone.

What a request went through is read from its log: predict.py prints "queued at ... behind N request(s),
with M clip(s) decoding; S steps to go" before it waits for its codes, and `Ticket.summary()`, "... joined
batch B with C clips (itself included) ...", once they are there. The server posts no webhook
for a log line while a prediction runs (log lines ride along with its next webhook), so "it is decoding
now" is read from the server's own output, where each line appears with the prediction's id as soon as it
is printed.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from musicgen.tiny import save_tiny_model
from tests.test_server import SR, TERMINAL, Server, Webhooks, decode, run_server

QUEUED = re.compile(r"(\d+) clip\(s\) decoding; (\d+) steps to go")
JOINED = re.compile(r"joined batch (\d+) with (\d+) clips? \(itself included\)")
WAIT = 120  # seconds: the bound of every wait for a prediction (each takes a few seconds here)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server, its one model loaded by a first prediction (so no test waits on the loading)."""
    weights = tmp_path_factory.mktemp("weights")
    save_tiny_model(weights / "small", "mono", 0)
    with run_server(
        tmp_path_factory.mktemp("server"), weights, COG_MAX_CONCURRENCY="8", MUSICGEN_MAX_BATCH="4"
    ) as running:
        warm = running.predict(model_version="small", duration=1, seed=0, output_format="wav")
        assert warm["status"] == "succeeded", (warm.get("error"), running.tail())
        yield running


@pytest.fixture(scope="module")
def webhooks():
    receiver = Webhooks()
    yield receiver
    receiver.close()


# ---- helpers -----------------------------------------------------------------------------------------


def small(**inputs) -> dict:
    return {"model_version": "small", "output_format": "wav", **inputs}


def audio_of(prediction: dict, duration: int) -> np.ndarray:
    """The prediction's samples [samples, 1], checked to be `duration` seconds of mono wav."""
    assert prediction["status"] == "succeeded", (prediction.get("error"), prediction.get("logs"))
    mime, audio, rate = decode(prediction["output"])
    assert (mime, rate, audio.shape) == ("audio/wav", SR, (duration * SR, 1))
    return audio


def decoding(logs: str) -> int:
    """Clips in the shared decode when the request was queued, from its log."""
    found = QUEUED.findall(logs)
    assert len(found) == 1, logs
    return int(found[0][0])


def joined(logs: str) -> tuple[int, int]:
    """(batch id, clips in the shared decode when it joined, itself included), from its log."""
    found = JOINED.findall(logs)
    assert len(found) == 1, logs
    return int(found[0][0]), int(found[0][1])


def solo(server: Server, inputs: dict) -> np.ndarray:
    """The request served alone (nothing else is running): its samples."""
    prediction = server.predict(**inputs)
    assert decoding(prediction["logs"]) == 0 and joined(prediction["logs"])[1] == 1, prediction["logs"]
    return audio_of(prediction, inputs["duration"])


def at_once(server: Server, requests: list[dict]) -> list[dict]:
    """Synchronous predictions sent together from threads, released at one barrier; their JSON."""
    barrier = threading.Barrier(len(requests))

    def send(inputs: dict) -> dict:
        barrier.wait(timeout=30)
        return server.predict(**inputs)

    with ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(send, inputs) for inputs in requests]
        return [f.result(timeout=WAIT) for f in futures]


def new_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def ended(prediction_id: str):
    return lambda body: body["id"] == prediction_id and body["status"] in TERMINAL


def server_lines(server: Server, prediction_id: str) -> list[str]:
    """The log lines the prediction has printed so far, as the server wrote them to its output."""
    lines = []
    for line in server.log.read_text(errors="replace").splitlines():
        if prediction_id not in line or not line.startswith("{"):
            continue
        try:
            fields: dict[str, Any] = json.loads(line).get("fields", {})
        except json.JSONDecodeError:
            continue  # a line being written
        if fields.get("prediction_id") == prediction_id and fields.get("source") == "Stdout":
            lines.append(fields.get("message", ""))
    return lines


def wait_for_line(server: Server, prediction_id: str, pattern: re.Pattern, timeout: float) -> str:
    """The first line of the prediction's log that `pattern` finds, waiting at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = next((line for line in server_lines(server, prediction_id) if pattern.search(line)), None)
        if found is not None:
            return found
        assert time.monotonic() < deadline, (
            f"{prediction_id} printed no {pattern.pattern!r} within {timeout} s:\n{server.tail()}"
        )
        time.sleep(0.02)


# ---- the tests ---------------------------------------------------------------------------------------


def test_concurrent_requests_share_a_batch_and_equal_their_solo_audio(server):
    """Four requests at once, each with its own prompt (one none), length, seed and sampling; guided (two
    rows) and unguided (one row: no prompt, or guidance 1) side by side in one decode."""
    requests = [
        small(prompt=None, duration=1, seed=11),
        small(
            prompt="jazz trio with upright bass",
            duration=2,
            seed=12,
            top_k=0,
            top_p=0.9,
            temperature=0.7,
            classifier_free_guidance=1.0,
        ),
        small(prompt="lo-fi hip hop beat with warm piano", duration=3, seed=13, temperature=0),
        small(
            prompt="ambient pads", duration=4, seed=14, top_k=20, temperature=1.5, classifier_free_guidance=5
        ),
    ]

    together = at_once(server, requests)

    audio = [audio_of(p, r["duration"]) for p, r in zip(together, requests, strict=True)]
    batches = [joined(p["logs"]) for p in together]
    shared = [(batch, clips) for batch, clips in batches if clips > 1]
    assert shared, f"no request joined a batch with another: {batches}"
    # a request that joined with others shares its batch id with at least one of them
    for batch, _ in shared:
        assert sum(b == batch for b, _ in batches) >= 2, batches
    for inputs, batched in zip(requests, audio, strict=True):
        np.testing.assert_array_equal(solo(server, inputs), batched, err_msg=str(inputs))


def test_a_request_joins_a_running_batch(server, webhooks):
    """A short request sent while a long one decodes joins its decode, ends first, and both get the audio
    they get alone."""
    long_inputs = small(prompt="epic orchestral strings and brass", duration=30, seed=21)
    short_inputs = small(prompt="acoustic guitar folk song", duration=1, seed=22, top_k=10)
    long_id, short_id = new_id("long"), new_id("short")

    assert server.predict_async(long_id, webhooks.url, **long_inputs)["status"] == "starting"
    wait_for_line(server, long_id, QUEUED, timeout=60)
    time.sleep(0.5)  # the decode thread admits it at once (milliseconds): now it is decoding
    assert not [b for b in webhooks.bodies if ended(long_id)(b)], "the long request ended too soon"
    assert server.predict_async(short_id, webhooks.url, **short_inputs)["status"] == "starting"

    short = webhooks.wait(ended(short_id), timeout=WAIT)
    long = webhooks.wait(ended(long_id), timeout=WAIT)

    assert decoding(short["logs"]) == 1, short["logs"]  # the long one's clip was decoding
    long_batch, long_clips = joined(long["logs"])
    assert joined(short["logs"]) == (long_batch, 2), (short["logs"], long["logs"])
    assert long_clips == 1
    order = [b["id"] for b in webhooks.bodies if b["id"] in (long_id, short_id) and b["status"] in TERMINAL]
    assert order == [short_id, long_id]  # the short one left the decode as soon as its clip was done
    np.testing.assert_array_equal(solo(server, short_inputs), audio_of(short, 1))
    np.testing.assert_array_equal(solo(server, long_inputs), audio_of(long, 30))


def test_cancelling_one_request_leaves_its_batch_mates(server, webhooks):
    """Three requests decode together; one is cancelled mid-way: it ends "canceled" and leaves the decode
    (its task's cancellation reaches `Ticket.wait`, which cancels the ticket), the other two are
    untouched."""
    doomed = small(prompt="80s synth pop with punchy bass", duration=30, seed=31)
    others = {
        new_id("kept-a"): small(prompt=None, duration=8, seed=32, temperature=0.8),
        new_id("kept-b"): small(prompt="jazz trio", duration=10, seed=33, classifier_free_guidance=1.0),
    }
    doomed_id = new_id("doomed")
    for prediction_id, inputs in [(doomed_id, doomed), *others.items()]:
        assert server.predict_async(prediction_id, webhooks.url, **inputs)["status"] == "starting"
    wait_for_line(server, doomed_id, QUEUED, timeout=60)
    time.sleep(0.3)  # admitted to the decode within milliseconds

    server.request("POST", f"/predictions/{doomed_id}/cancel")
    canceled = webhooks.wait(ended(doomed_id), timeout=30)
    kept = {prediction_id: webhooks.wait(ended(prediction_id), timeout=WAIT) for prediction_id in others}

    assert canceled["status"] == "canceled", canceled
    assert QUEUED.search(canceled["logs"]) and not JOINED.search(canceled["logs"]), canceled["logs"]
    # the other two decoded together (with the cancelled one, or after it left), and ended after it
    batches = {joined(body["logs"]) for body in kept.values()}
    assert len({batch for batch, _ in batches}) == 1 and all(clips >= 2 for _, clips in batches), batches
    order = [b["id"] for b in webhooks.bodies if b["id"] in (doomed_id, *others) and b["status"] in TERMINAL]
    assert order[0] == doomed_id, order
    # Had its clip gone on decoding, it would still have about a thousand of its 1503 steps to go (the
    # others have at most 503): the next request would find it decoding, and join its batch.
    probe = server.predict(**small(duration=1, seed=34))
    audio_of(probe, 1)
    assert decoding(probe["logs"]) == 0, probe["logs"]
    assert joined(probe["logs"])[1] == 1, probe["logs"]
    assert server.settled_status() == "READY"
    for prediction_id, inputs in others.items():
        np.testing.assert_array_equal(
            solo(server, inputs), audio_of(kept[prediction_id], inputs["duration"]), err_msg=prediction_id
        )


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"top_p": 2.0}, "top_p must be between 0 and 1"),
        ({"model_version": "medium"}, "python scripts/download_weights.py medium"),  # weights not on disk
    ],
)
def test_a_bad_request_fails_alone(server, bad, words):
    """One of four requests sent together fails with its own message; the other three get their audio."""
    good = [
        small(prompt="ambient pads", duration=1, seed=41),
        small(prompt=None, duration=2, seed=42, top_p=0.5),
        small(prompt="folk song", duration=3, seed=43, temperature=0),
    ]
    requests = [good[0], small(prompt="jazz", duration=2, seed=44, **bad), *good[1:]]

    results = at_once(server, requests)

    failed = results[1]
    assert failed["status"] == "failed", failed
    assert words in failed["error"], failed["error"]
    assert not JOINED.search(failed.get("logs", "")), failed["logs"]
    outputs = [audio_of(p, r["duration"]) for p, r in zip(results[:1] + results[2:], good, strict=True)]
    assert server.settled_status() == "READY"
    for inputs, batched in zip(good, outputs, strict=True):
        np.testing.assert_array_equal(solo(server, inputs), batched, err_msg=str(inputs))
