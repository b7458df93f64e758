"""predict.py behind the real Cog server (`python -m cog.server.http`), on tiny random checkpoints.

One server per module, started as people start it locally (see README "Cog"): no Docker, no schema, so
every input check is predict.py's own. It runs with a weights folder of tiny models under variant names
and a Hub endpoint that refuses connections. The Hub download path and "no model is loaded before the
inputs are checked" are tested in-process with `Runner`, where the Hub stand-in of test_weights.py and
a model cache that refuses to load anything can be put in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen import weights as weights_module
from musicgen.errors import InvalidInputError, MusicGenError, WeightsNotFoundError
from musicgen.finetuned import FineTuned, save_finetuned
from musicgen.loading import build_lm, read_checkpoint
from musicgen.tiny import save_tiny_model, save_tiny_style_model
from tests import test_weights as stand_in
from tests.helpers import write_tone

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent  # the server starts its worker with the `python` on PATH
TERMINAL = ("succeeded", "failed", "canceled")
SR = 32000

# the Hub stand-in's fixtures, for the in-process download tests
hub_env = stand_in.hub_env
hub = stand_in.hub

# variant name -> tiny kind; stereo-melody-large is the default model, which setup() loads when present
TINY_VARIANTS = {
    "small": "mono",
    "stereo-small": "stereo",
    "melody": "melody",
    "stereo-melody-large": "stereo-melody",
}


# the tiny MusicGen-Style checkpoint (audiocraft's layout, MERT and T5 bundled), built once per session:
# the weights folders of the server tests and the CLI tests take it from here
_TINY_STYLE: dict[str, Path] = {}


def tiny_style_folder(tmp_path_factory, tiny_style=None) -> Path:
    """Its folder; `tiny_style` (conftest's fixture of the same model, when the caller has it) is used
    rather than building another."""
    if tiny_style is not None:
        _TINY_STYLE.setdefault("folder", tiny_style[0])
    if "folder" not in _TINY_STYLE:
        _TINY_STYLE["folder"] = save_tiny_style_model(tmp_path_factory.mktemp("tiny-style") / "style")
    return _TINY_STYLE["folder"]


def style_audio(path: Path, seconds: float = 6.0, rate: int = 44100) -> Path:
    """A stereo style reference whose sound changes every second (tone, noise, chord...): different
    excerpts of it sound different."""
    gen = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    parts = [
        0.5 * np.sin(2 * np.pi * 220 * t),
        0.3 * gen.standard_normal(t.shape),
        0.3 * (np.sin(2 * np.pi * 330 * t) + np.sin(2 * np.pi * 415 * t)),
        0.5 * np.sign(np.sin(2 * np.pi * 110 * t)),
    ]
    second = (t.astype(int)) % len(parts)
    wav = np.choose(second, parts)
    sf.write(path, np.stack([wav, 0.8 * wav], axis=1).astype(np.float32), rate)
    return path


# ---- a server and its helpers ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running `python -m cog.server.http` and its output."""

    def __init__(self, process: subprocess.Popen, port: int, log: Path):
        self.process, self.url, self.log = process, f"http://127.0.0.1:{port}", log

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 120) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as err:  # the server answers some failures with 4xx and a JSON body
            text = err.read()
        return json.loads(text) if text.strip() else {}

    def submit(self, body: dict, headers: dict | None = None, path: str = "/predictions") -> dict:
        """POST /predictions (or /trainings); the answer's JSON.

        The server runs one prediction at a time and frees its slot just after answering, so a request sent
        right after another one may be turned away (409, "At capacity"): ask again, a bounded number of times.
        """
        for _ in range(100):
            answer = self.request("POST", path, body, headers, timeout=300)
            if not answer.get("error", "").startswith("At capacity"):
                return answer
            time.sleep(0.05)
        raise AssertionError(f"the server stayed at capacity: {answer}")

    def predict(self, **inputs) -> dict:
        """A synchronous prediction: the finished prediction's JSON."""
        return self.submit({"input": inputs})

    def predict_async(self, prediction_id: str, webhook: str, **inputs) -> dict:
        """An asynchronous prediction reporting to `webhook`: the server's immediate answer."""
        body = {"id": prediction_id, "input": inputs, "webhook": webhook}
        return self.submit(body, headers={"Prefer": "respond-async"})

    def health(self) -> dict:
        return self.request("GET", "/health-check", timeout=10)

    def settled_status(self, timeout: float = 15) -> str:
        """The health status once the last prediction has let go of its slot ("BUSY" until then)."""
        deadline = time.monotonic() + timeout
        status = self.health()["status"]
        while status == "BUSY" and time.monotonic() < deadline:
            time.sleep(0.05)
            status = self.health()["status"]
        return status

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def run_server(tmp: Path, weights_dir: Path, mode: str = "predict", **extra_env: str) -> Iterator[Server]:
    """Starts the server as the README says, waits (bounded) until it is READY, and stops it afterwards.

    mode "train" serves train.py's `train` on /trainings (`--x-mode train`).
    """
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COG_"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        COG_PREDICT_TYPE_STUB="predict.py:Runner",
        COG_TRAIN_TYPE_STUB="train.py:train",
        PORT=str(port),
        MUSICGEN_WEIGHTS_DIR=str(weights_dir),
        # a Hub that refuses every connection: a missing model must fail fast, never reach the network
        HF_ENDPOINT=f"http://127.0.0.1:{_free_port()}",
        HF_HOME=str(tmp / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",  # webhooks and weight URLs on loopback never go through a proxy
        no_proxy="127.0.0.1,localhost",
        OMP_NUM_THREADS="2",
        **extra_env,
    )
    log = tmp / f"server-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1", "--x-mode", mode],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its worker too
        )
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                status = server.health().get("status")
                if status in ("READY", "SETUP_FAILED", "DEFUNCT"):
                    break
            time.sleep(0.25)
        assert status == "READY", f"server not ready (status {status}):\n{server.tail()}"
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class Webhooks:
    """A loopback receiver that keeps every webhook body posted to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.changed:
                    receiver.bodies.append(body)
                    receiver.changed.notify_all()
                self.send_response(200)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def wait(self, match: Callable[[dict], bool], timeout: float) -> dict:
        """The first body for which `match` holds, waiting at most `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((b for b in self.bodies if match(b)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                seen = [(b.get("id"), b.get("status")) for b in self.bodies]
                assert left > 0, f"no matching webhook within {timeout} s; got (id, status) {seen}"
                self.changed.wait(left)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def decode(output: str) -> tuple[str, np.ndarray, int]:
    """A data URL output -> (MIME type, audio [samples, channels], sample rate)."""
    header, _, payload = output.partition(",")
    assert header.startswith("data:") and header.endswith(";base64"), output[:80]
    audio, rate = sf.read(io.BytesIO(base64.b64decode(payload)), dtype="float32", always_2d=True)
    return header[len("data:") : -len(";base64")], audio, rate


def data_url(path: Path, mime: str = "audio/wav") -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


# ---- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights_dir(tiny, tiny_style, tmp_path_factory) -> Path:
    """Tiny random checkpoints under variant names (the style model's files linked, not copied)."""
    folder = tmp_path_factory.mktemp("weights")
    for seed, (name, kind) in enumerate(TINY_VARIANTS.items()):
        save_tiny_model(folder / name, kind, seed)
    style = tiny_style_folder(tmp_path_factory, tiny_style)
    shutil.copytree(style, folder / "style", copy_function=os.link)
    return folder


@pytest.fixture(scope="module")
def server(weights_dir, tmp_path_factory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("server"), weights_dir) as running:
        yield running


@pytest.fixture(scope="module")
def webhooks() -> Iterator[Webhooks]:
    receiver = Webhooks()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("audio")
    empty = folder / "empty.wav"
    sf.write(empty, np.zeros((0, 1), dtype=np.float32), SR)
    garbage = folder / "garbage.wav"
    garbage.write_bytes(b"this is not audio" * 100)
    return {
        "tone": write_tone(folder / "tone.wav", seconds=2.0),  # mono, 2 s
        "style": style_audio(folder / "style.flac"),  # stereo, 44.1 kHz, 6 s
        "stereo_tone": write_tone(folder / "stereo.flac", seconds=1.0, rate=44100, channels=2),
        "empty": empty,
        "garbage": garbage,
    }


@pytest.fixture(scope="module")
def finetuned_files(weights_dir, tmp_path_factory) -> dict[str, Path]:
    """Fine-tuned weights for base `small` (the tiny mono model): a full fine-tune, and a LoRA."""
    folder = tmp_path_factory.mktemp("finetuned")
    ckpt = read_checkpoint(weights_dir / "small")
    lm = build_lm(ckpt)
    gen = torch.Generator().manual_seed(7)
    state = lm.state_dict()
    full = {
        k: state[k] + 0.5 * torch.randn(state[k].shape, generator=gen)
        for k in ("heads.weight", "layers.0.ff1.weight")
    }
    targets = ["self_attn.in_proj", "ff2"]
    lora = {}
    for name, module in lm.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith(t) for t in targets):
            out_dim, in_dim = module.weight.shape
            lora[f"{name}.lora_A.weight"] = 0.5 * torch.randn(2, in_dim, generator=gen)
            lora[f"{name}.lora_B.weight"] = 0.5 * torch.randn(out_dim, 2, generator=gen)
    cfg = ckpt.config.lm
    return {
        "full": save_finetuned(folder / "full.safetensors", FineTuned("small", "full", full, cfg)),
        "lora": save_finetuned(
            folder / "lora.safetensors",
            FineTuned("small", "lora", lora, cfg, lora_rank=2, lora_alpha=4.0, target_modules=targets),
        ),
    }


# ---- the server ------------------------------------------------------------------------------------


def test_health_check_is_ready(server):
    assert server.settled_status() == "READY"
    assert server.health()["setup"]["status"] == "succeeded"


@pytest.mark.parametrize("output_format", ["wav", "mp3", "flac"])
@pytest.mark.parametrize(
    ("model_version", "channels", "melody"),
    [("small", 1, False), ("stereo-small", 2, False), ("melody", 1, True)],
)
def test_sync_prediction_returns_audio(server, audio_files, model_version, channels, melody, output_format):
    inputs = dict(
        model_version=model_version, prompt="jazz trio", duration=1, output_format=output_format, seed=3
    )
    if melody:  # a file sent inline, as a web client would
        inputs["input_audio"] = data_url(audio_files["tone"])

    prediction = server.predict(**inputs)

    assert prediction["status"] == "succeeded", prediction.get("error")
    mime, audio, rate = decode(prediction["output"])
    assert mime == {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac"}[output_format]
    assert rate == SR and audio.shape[1] == channels
    # wav and flac hold exactly the requested samples; mp3 adds its encoder's padding
    tolerance = 0.1 * SR if output_format == "mp3" else 0
    assert abs(audio.shape[0] - 1 * SR) <= tolerance
    assert np.abs(audio).max() > 0


def test_stereo_melody_default_model_with_continuation(server, audio_files):
    # the default model (loaded in setup), continuing a 44.1 kHz stereo flac given by path
    prediction = server.predict(
        prompt="ambient pads",
        input_audio=str(audio_files["stereo_tone"]),
        continuation=True,
        duration=2,
        seed=5,
    )

    assert prediction["status"] == "succeeded", prediction.get("error")
    _, audio, rate = decode(prediction["output"])
    assert rate == SR and audio.shape == (2 * SR, 2)
    assert "model_version: stereo-melody-large" in prediction["logs"]


def test_async_prediction_posts_its_result_to_the_webhook(server, webhooks):
    accepted = server.predict_async("async-1", webhooks.url, model_version="small", duration=1, seed=2)
    assert accepted["status"] == "starting"  # answered at once

    done = webhooks.wait(lambda b: b["id"] == "async-1" and b["status"] in TERMINAL, timeout=60)

    assert done["status"] == "succeeded", done.get("error")
    assert "seed: 2" in done["logs"]
    _, audio, _ = decode(done["output"])
    assert audio.shape == (SR, 1)


def test_cancel_ends_a_long_prediction(server, webhooks):
    accepted = server.predict_async("long-1", webhooks.url, model_version="small", duration=300, seed=4)
    assert accepted["status"] == "starting"
    # the server posts no log events while predicting: give it time to load the model and start generating
    # (it would take about a minute here to finish), then cancel
    webhooks.wait(lambda b: b["id"] == "long-1", timeout=30)
    time.sleep(2)
    asked = time.monotonic()

    server.request("POST", "/predictions/long-1/cancel")
    done = webhooks.wait(lambda b: b["id"] == "long-1" and b["status"] in TERMINAL, timeout=30)

    assert done["status"] == "canceled"
    assert "seed: 4" in done["logs"]  # printed just before generating: it was cut short while generating
    assert time.monotonic() - asked < 15
    assert server.settled_status() == "READY"
    after = server.predict(model_version="small", duration=1, seed=4)
    assert after["status"] == "succeeded", after.get("error")


# (inputs, words of the error); file inputs name a key of `audio_files`
BAD_INPUTS = [
    (
        {"model_version": "small", "style_eval_q": 5},
        "style_eval_q only applies to the style model, not small",
    ),
    (
        {"model_version": "melody", "classifier_free_guidance_beta": 5, "style_excerpt_length": 2},
        "style_excerpt_length and classifier_free_guidance_beta only apply to the style model",
    ),
    ({"model_version": "style", "style_eval_q": 4}, "style_eval_q only applies to a style excerpt"),
    (
        {"model_version": "style", "input_audio": "style", "style_excerpt_length": 5},
        "style_excerpt_length must be between 1.5 and 4.5 s",
    ),
    (
        {"model_version": "style", "input_audio": "style", "classifier_free_guidance_beta": 5},
        "classifier_free_guidance_beta weighs the prompt against the style excerpt, and there is no prompt",
    ),
    (
        {"model_version": "style", "input_audio": "tone"},
        "input_audio (the style excerpt's source) lasts 2.00 s, shorter than style_excerpt_length (3 s)",
    ),
    ({"model_version": "small", "input_audio": "tone"}, "small takes no melody"),
    ({"continuation": True}, "no input_audio to continue"),
    (
        {
            "model_version": "small",
            "input_audio": "tone",
            "continuation": True,
            "continuation_start": 1,
            "continuation_end": 1,
        },
        "continuation_end (1 s) must come after continuation_start (1 s)",
    ),
    (
        {
            "model_version": "small",
            "input_audio": "tone",
            "continuation": True,
            "continuation_start": 5,
            "duration": 10,
        },
        "continuation_start / continuation_end do not fit input_audio",
    ),
    (
        {"model_version": "small", "input_audio": "tone", "continuation": True, "duration": 2},
        "not shorter than duration (2 s)",
    ),
    ({"duration": 0}, "duration must be between 1 and 300 seconds"),
    ({"duration": 301}, "duration must be between 1 and 300 seconds"),
    ({"duration": 2.5}, "duration must be a whole number"),
    ({"duration": "8"}, "duration must be a whole number"),
    ({"continuation": "yes"}, "continuation must be true or false"),
    ({"model_version": "tiny"}, "model_version must be one of small, medium"),
    ({"normalization_strategy": "loud"}, "normalization_strategy must be one of loudness, clip, peak, rms"),
    ({"output_format": "ogg"}, "output_format must be one of wav, mp3, flac"),
    ({"top_p": 1.5}, "top_p must be between 0 and 1"),
    ({"top_k": -1}, "top_k must be 0 (off) or a positive number"),
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"classifier_free_guidance": -1}, "classifier_free_guidance must be 0 or more"),
    ({"seed": -2}, "seed must be between 0 and"),
    ({"prompt": 5}, "prompt must be text"),
    ({"input_audio": "garbage"}, "input_audio cannot be used: Could not read audio file"),
    ({"input_audio": "empty"}, "contains no samples"),
    ({"input_audio": "missing"}, "input_audio cannot be used: Audio file not found"),
    (
        {"replicate_weights": "/nowhere/weights.safetensors"},
        "weights file '/nowhere/weights.safetensors' not found",
    ),
]


def _bad_inputs(inputs: dict, audio_files: dict[str, Path]) -> dict:
    resolved = dict(inputs)
    if "input_audio" in resolved:
        name = resolved["input_audio"]
        resolved["input_audio"] = str(audio_files.get(name, Path("/nowhere") / "missing.wav"))
    return resolved


def test_bad_inputs_fail_with_their_message(server, audio_files):
    for inputs, words in BAD_INPUTS:
        prediction = server.predict(**_bad_inputs(inputs, audio_files))
        assert prediction["status"] == "failed", (inputs, prediction)
        assert words in prediction["error"], (inputs, prediction["error"])
        assert "model_version:" not in prediction.get("logs", ""), inputs  # no model was reached

    # a broken file sent inline fails the same way; then the server still serves
    inline = server.predict(model_version="melody", input_audio=data_url(audio_files["garbage"]))
    assert inline["status"] == "failed" and "input_audio cannot be used" in inline["error"]
    assert server.settled_status() == "READY"
    assert server.predict(model_version="small", duration=1)["status"] == "succeeded"


def test_style_model_takes_the_style_of_input_audio(server, audio_files):
    """model_version=style: input_audio is the style excerpt's source (continuation off), with or without
    a prompt, with or without double guidance; or, with continuation on, the audio to continue."""
    style = str(audio_files["style"])

    def audio(**inputs) -> np.ndarray:
        prediction = server.predict(model_version="style", duration=1, seed=11, **inputs)
        assert prediction["status"] == "succeeded", (inputs, prediction.get("error"))
        assert "model_version: style, seed: 11" in prediction["logs"]
        _, wav, rate = decode(prediction["output"])
        assert rate == SR and wav.shape == (SR, 1), (inputs, wav.shape)  # the style model is mono
        assert np.abs(wav).max() > 0
        return wav

    text = audio(prompt="jazz trio")
    styled = audio(input_audio=style)
    both = audio(prompt="jazz trio", input_audio=style)
    double = audio(prompt="jazz trio", input_audio=style, classifier_free_guidance_beta=5)
    settings = audio(prompt="jazz trio", input_audio=style, style_excerpt_length=1.5, style_eval_q=6)
    outputs = [text, styled, both, double, settings]
    # every input changes the music; the same inputs and seed give the same music (the excerpt included)
    for i, a in enumerate(outputs):
        for b in outputs[i + 1 :]:
            assert not np.array_equal(a, b)
    np.testing.assert_array_equal(
        audio(prompt="jazz trio", input_audio=style, classifier_free_guidance_beta=5), double
    )
    # beta 1 is plain guidance on [text and style; nothing]
    np.testing.assert_allclose(
        audio(prompt="jazz trio", input_audio=style, classifier_free_guidance_beta=1), both, atol=1e-4
    )

    # continuation on: the style model continues input_audio (sent inline), with no style
    continued = server.predict(
        model_version="style",
        input_audio=data_url(audio_files["tone"]),
        continuation=True,
        duration=3,
        seed=1,
    )
    assert continued["status"] == "succeeded", continued.get("error")
    assert decode(continued["output"])[1].shape == (3 * SR, 1)


def test_style_excerpt_is_drawn_from_the_seed_within_the_part_used(server, audio_files):
    """Greedy decoding, so that only the excerpt depends on the seed: over the whole 6 s file two seeds
    take two excerpts; with continuation_start / continuation_end leaving exactly 3 s, both take it."""

    def audio(seed: int, **inputs) -> np.ndarray:
        prediction = server.predict(
            model_version="style",
            input_audio=str(audio_files["style"]),
            duration=1,
            temperature=0,
            seed=seed,
            **inputs,
        )
        assert prediction["status"] == "succeeded", prediction.get("error")
        return decode(prediction["output"])[1]

    assert not np.array_equal(audio(1), audio(2))
    part = {"continuation_start": 2, "continuation_end": 5}
    np.testing.assert_array_equal(audio(1, **part), audio(2, **part))
    assert not np.array_equal(audio(1, **part), audio(1, continuation_start=0, continuation_end=3))


def test_seed_is_logged_and_repeats_the_audio(server):
    first = server.predict(model_version="small", prompt="folk song", duration=1, seed=0)
    second = server.predict(model_version="small", prompt="folk song", duration=1, seed=0)
    drawn = server.predict(model_version="small", prompt="folk song", duration=1, seed=-1)

    assert all(p["status"] == "succeeded" for p in (first, second, drawn))
    assert "seed: 0" in first["logs"]  # 0 is a seed, not "no seed"
    np.testing.assert_array_equal(decode(first["output"])[1], decode(second["output"])[1])
    logged = drawn["logs"].split("seed: ")[1].split()[0]
    assert logged.isdigit() and logged != "0"  # -1 drew a seed (0 itself has one chance in 2**31)
    assert not np.array_equal(decode(first["output"])[1], decode(drawn["output"])[1])


def test_missing_weights_name_the_variant_and_the_command(server, weights_dir):
    prediction = server.predict(model_version="medium", duration=1)

    assert prediction["status"] == "failed"
    error = prediction["error"]
    assert "'medium'" in error and str(weights_dir / "medium") in error
    assert "python scripts/download_weights.py medium" in error
    assert not (weights_dir / "medium").exists()
    assert server.settled_status() == "READY"


def test_replicate_weights_change_the_output(server, finetuned_files, tmp_path):
    def audio(**extra):
        prediction = server.predict(model_version="small", prompt="jazz trio", duration=1, seed=6, **extra)
        assert prediction["status"] == "succeeded", prediction.get("error")
        return decode(prediction["output"])[1]

    base = audio()
    full = audio(replicate_weights=str(finetuned_files["full"]))
    lora = audio(replicate_weights=str(finetuned_files["lora"]))
    assert not np.array_equal(base, full) and not np.array_equal(base, lora)
    assert not np.array_equal(full, lora)
    np.testing.assert_array_equal(audio(), base)  # the base model is untouched by the fine-tuned copies

    # the same file from a URL: downloaded once, same music
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(finetuned_files["full"], served / "weights.safetensors")
    with _file_server(served) as url:
        np.testing.assert_array_equal(audio(replicate_weights=f"{url}/weights.safetensors"), full)


def test_replicate_weights_of_another_base_are_refused(server, finetuned_files):
    prediction = server.predict(
        model_version="stereo-small", duration=1, replicate_weights=str(finetuned_files["lora"])
    )

    assert prediction["status"] == "failed"
    assert "fine-tuned from `small`, not `stereo-small`" in prediction["error"]
    assert "model_version=small" in prediction["error"]


@contextlib.contextmanager
def _file_server(folder: Path) -> Iterator[str]:
    from functools import partial
    from http.server import SimpleHTTPRequestHandler

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_trained_weights_from_cog_weights(server, weights_dir, finetuned_files, tmp_path):
    """COG_WEIGHTS (what Cog sets for a trained model) reaches setup(weights=...): the default weights."""
    reference = server.predict(
        model_version="small",
        prompt="jazz trio",
        duration=1,
        seed=8,
        replicate_weights=str(finetuned_files["full"]),
    )
    with run_server(tmp_path, weights_dir, COG_WEIGHTS=str(finetuned_files["full"])) as trained:
        prediction = trained.predict(model_version="small", prompt="jazz trio", duration=1, seed=8)
        # called as a trained model is, with the default model_version: its base variant serves it
        by_default = trained.predict(prompt="jazz trio", duration=1, seed=8)
        refused = trained.predict(model_version="stereo-small", duration=1)

    assert prediction["status"] == "succeeded", prediction.get("error")
    np.testing.assert_array_equal(decode(prediction["output"])[1], decode(reference["output"])[1])
    assert by_default["status"] == "succeeded", by_default.get("error")
    np.testing.assert_array_equal(decode(by_default["output"])[1], decode(reference["output"])[1])
    assert refused["status"] == "failed" and "fine-tuned from `small`" in refused["error"]


# ---- in-process: the Runner itself -------------------------------------------------------------------


def call_predict(predictor, **inputs):
    """runner.run with Cog's defaults filled in, as the server calls it (run is async: awaited here)."""
    from predict import Runner

    params = inspect.signature(Runner.run).parameters
    args = {name: p.default.default for name, p in params.items() if name != "self"}
    return asyncio.run(predictor.run(**{**args, **inputs}))


class _NoModels:
    """A model cache that fails the test if anything asks it for a model."""

    def get(self, *args, **kwargs):
        raise AssertionError(f"a model was asked for: {args} {kwargs}")


@pytest.mark.parametrize(("inputs", "words"), BAD_INPUTS)
def test_bad_inputs_fail_before_any_model_is_loaded(inputs, words, audio_files):
    from predict import Runner

    predictor = Runner()
    predictor.cache, predictor.default_finetuned = _NoModels(), None

    with pytest.raises(MusicGenError) as info:
        call_predict(predictor, **_bad_inputs(inputs, audio_files))

    assert words in str(info.value)


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def test_missing_variant_is_downloaded_from_the_hub(hub, hub_env, tiny, monkeypatch):
    from cog import CancelationException

    from predict import Runner

    folder = tiny.get("mono")[0]
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    monkeypatch.setitem(stand_in.REPOS, "facebook/musicgen-small", files)
    predictor = Runner()
    predictor.setup()
    assert hub.requests == []  # setup never downloads: the default model is simply not loaded

    # a connection cut halfway: the prediction fails and leaves nothing behind (no retry waits)
    monkeypatch.setattr("huggingface_hub.file_download.time.sleep", lambda seconds: None)
    hub.cut_get.add("model.safetensors")
    with pytest.raises(WeightsNotFoundError, match="small"):
        call_predict(predictor, model_version="small", duration=1)
    assert _tree(hub_env) == set()
    hub.cut_get.clear()

    # a prediction cancelled while downloading: nothing left either
    def cancelled(repo_id, **kwargs):
        (Path(kwargs["local_dir"]) / "config.json").write_text("{}")  # something arrived, then the cancel
        raise CancelationException()

    with monkeypatch.context() as patch:
        patch.setattr(weights_module, "snapshot_download", cancelled)
        with pytest.raises(CancelationException):
            call_predict(predictor, model_version="small", duration=1)
    assert _tree(hub_env) == set()

    output = call_predict(predictor, model_version="small", duration=1, seed=1)

    audio, rate = sf.read(output, always_2d=True)
    assert rate == SR and audio.shape == (SR, 1)
    assert _tree(hub_env) == {"small"} | {f"small/{name}" for name in files}  # complete, nothing partial
    assert set(Path(p).name for p in hub.downloads()) == set(files)


def test_setup_weights_become_the_default(weights_dir, finetuned_files, monkeypatch):
    from predict import Runner

    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(weights_dir))
    predictor = Runner()
    predictor.setup(weights=str(finetuned_files["lora"]))

    assert predictor.default_finetuned == finetuned_files["lora"]
    assert predictor.cache.keys() == [("small", str(finetuned_files["lora"]))]  # its base, loaded in setup
    with pytest.raises(InvalidInputError, match="fine-tuned from `small`"):
        call_predict(predictor, model_version="stereo-small", duration=1)


def test_each_prediction_keeps_only_the_newest_outputs(weights_dir, monkeypatch):
    from predict import Runner

    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setenv("COG_MAX_CONCURRENCY", "1")  # one at a time: the two newest files are kept
    runner = Runner()
    runner.setup()
    first = call_predict(runner, model_version="small", duration=1, seed=1)
    second = call_predict(runner, model_version="small", duration=1, seed=1, output_format="flac")
    third = call_predict(runner, model_version="small", duration=1, seed=1, output_format="mp3")
    assert third.is_file() and third.name == "output.mp3" and second.is_file()
    # the server sent the first before the third was asked for: its file and folder are gone
    assert not first.exists() and not first.parent.exists()
    files = sorted(p.name for p in runner.outputs.folder.rglob("*") if p.is_file())
    assert files == ["output.flac", "output.mp3"]
