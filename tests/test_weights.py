"""Weight resolution and downloading, against a stand-in of the Hugging Face Hub served on 127.0.0.1.

The stand-in answers the three kinds of request `huggingface_hub.snapshot_download` (2.x) makes:
repo info `/api/models/{repo}/revision/{rev}`, the file listing `/api/models/{repo}/tree/{rev}`, and
HEAD/GET `/{repo}/resolve/{rev}/{file}` (which must carry X-Repo-Commit, ETag and Content-Length).
`{repo}` is `owner/name`, or a legacy id without an owner (`t5-base`).

The Hugging Face cache tests fill a cache folder with huggingface_hub itself (`snapshot_download`, as
`hf download` does, or `hf_hub_download` file by file, as transformers' `from_pretrained` does) from the
stand-in, then turn the Hub off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import huggingface_hub
import huggingface_hub.constants as hf_constants
import pytest

from musicgen import MusicGen, weights
from musicgen.errors import CheckpointError, WeightsNotFoundError
from musicgen.tiny import save_tiny_model, save_tiny_style_model
from musicgen.variants import VARIANTS
from musicgen.weights import hf_cache_dir, named_submodels, resolve_model, resolve_pretrained, weights_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"

TRANSFORMERS_FILES = {
    "config.json": b'{"model_type": "musicgen"}',
    "generation_config.json": b"{}",
    "preprocessor_config.json": b"{}",
    "model.safetensors": bytes(range(256)) * 64,
    "tokenizer.json": b"{}",
    "tokenizer_config.json": b"{}",
    "spiece.model": b"sentencepiece",
    "special_tokens_map.json": b"{}",
}
# what the real facebook/musicgen-* repos hold besides the transformers layout
OTHER_FILES = {
    "README.md": b"# card",
    ".gitattributes": b"*.bin filter=lfs",
    "state_dict.bin": b"audiocraft lm",
    "compression_state_dict.bin": b"audiocraft codec",
    "pytorch_model.bin": b"pickle",
    "onnx/model.safetensors": b"nested export",
}

T5_FILES = {
    "config.json": b'{"model_type": "t5"}',
    "model.safetensors": b"t5 tensors",
    "pytorch_model.bin": b"t5 pickle",
    "tf_model.h5": b"tf",
    "spiece.model": b"sp",
    "tokenizer.json": b"{}",
}

REPOS = {
    "facebook/musicgen-small": {**TRANSFORMERS_FILES, **OTHER_FILES},
    "google-t5/t5-base": T5_FILES,
    "t5-base": T5_FILES,  # the legacy id audiocraft checkpoints name
    "facebook/encodec_32khz": {
        "config.json": b'{"model_type": "encodec"}',
        "pytorch_model.bin": b"codec pickle",
        "preprocessor_config.json": b"{}",
    },
    "someone/no-config": {"README.md": b"nothing to see", "state_dict.bin": b"lm"},
    # MusicGen-Style: audiocraft's layout and nothing else (no config.json); the tests that load it put a
    # tiny real model in these repos (`tiny_style_repos`)
    "facebook/musicgen-style": {
        "README.md": b"# card",
        ".gitattributes": b"*.bin filter=lfs",
        "state_dict.bin": b"audiocraft style lm",
        "compression_state_dict.bin": b"audiocraft codec",
    },
    # MERT's repo: its config names remote code (auto_map), which is never fetched nor run
    "m-a-p/MERT-v1-95M": {
        "config.json": b'{"model_type": "mert_model", "auto_map": {"AutoModel": "modeling_MERT.MERTModel"}}',
        "configuration_MERT.py": b"raise SystemExit('remote code must never run')",
        "modeling_MERT.py": b"raise SystemExit('remote code must never run')",
        "preprocessor_config.json": b'{"sampling_rate": 24000}',
        "pytorch_model.bin": b"mert pickle",
        "MERT-v1-95M_fairseq.pt": b"fairseq pickle",
        "README.md": b"# MERT",
    },
    "someone/sharded": {
        "config.json": b'{"model_type": "musicgen"}',
        "model.safetensors.index.json": json.dumps(
            {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        ).encode(),
        "model-00001-of-00002.safetensors": b"shard 1",
        "model-00002-of-00002.safetensors": b"shard 2",
    },
}


class StandInHub:
    """Repo contents, the requests seen, and which file downloads should fail."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.fail_get: set[str] = set()  # file names whose GET answers 500
        self.cut_get: set[str] = set()  # file names whose GET stops halfway and closes the connection
        self.lock = threading.Lock()

    def downloads(self) -> list[str]:
        """Paths of the file bodies served (GET on /resolve/)."""
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]


def _handler(hub: StandInHub):
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a stuck client cannot hold a server thread forever

        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self._answer(head=True)

        def do_GET(self):
            self._answer(head=False)

        def _answer(self, head: bool):
            path = urlsplit(self.path).path
            with hub.lock:
                hub.requests.append((self.command, path))
            parts = path.strip("/").split("/")
            # repo info is /api/models/{repo} or /api/models/{repo}/revision/{rev}; listing is .../tree/{rev}
            if parts[:2] == ["api", "models"] and len(parts) >= 3:
                # a legacy id is one segment, any other two
                size = 1 if parts[2] in REPOS else 2
                repo, rest = "/".join(parts[2 : 2 + size]), parts[2 + size :]
                if rest[:1] not in ([], ["revision"], ["tree"]):
                    return self._send(404, b"", {})
                if repo not in REPOS:
                    return self._send(
                        404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}
                    )
                files = REPOS[repo]
                if rest[:1] != ["tree"]:
                    body = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
                else:
                    body = [
                        {"type": "file", "path": f, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                        for f, data in files.items()
                    ]
                return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
            if "resolve" in parts[1:3] and len(parts) >= parts.index("resolve") + 3:
                at = parts.index("resolve")
                repo, filename = "/".join(parts[:at]), "/".join(parts[at + 2 :])
                data = REPOS.get(repo, {}).get(filename)
                if data is None:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                if not head and filename in hub.fail_get:
                    return self._send(500, b"internal error", {})
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
                if not head and filename in hub.cut_get:
                    self.send_response(200)
                    for key, value in {**headers, "Content-Length": str(len(data))}.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return None
                return self._send(200, data, headers, head=head)
            return self._send(404, b"", {})

        def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False):
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """Point weights and every Hugging Face setting into tmp_path; returns the weights folder."""
    wdir = tmp_path / "weights"
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(wdir))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # loopback must never go through a proxy
    # huggingface_hub copies these from the environment once, at import: set the copies as well
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return wdir


@pytest.fixture
def hub(hub_env, monkeypatch):
    """A stand-in Hub on a free loopback port for the length of one test."""
    state = StandInHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_endpoint(hub_env, monkeypatch):
    """HF_ENDPOINT on a loopback port nothing listens on: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def _closed_endpoint() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _fill_hf_cache(repo: str, files: list[str] | None = None, **kwargs) -> Path:
    """Put `repo` in the Hugging Face cache ($HF_HUB_CACHE) with huggingface_hub itself; returns the snapshot.

    files=None: `snapshot_download` (what `hf download` does; it also keeps the repo's file listing), with
    `kwargs` such as allow_patterns; else `hf_hub_download` of each file, as transformers' `from_pretrained`
    fetches what it needs.
    """
    where = {
        "cache_dir": kwargs.pop("cache_dir", os.environ["HF_HUB_CACHE"]),
        "endpoint": os.environ["HF_ENDPOINT"],
    }
    if files is None:
        return Path(huggingface_hub.snapshot_download(repo, **where, **kwargs))
    paths = [Path(huggingface_hub.hf_hub_download(repo, name, **where)) for name in files]
    assert len({p.parent for p in paths}) == 1
    return paths[0].parent


def _go_offline(monkeypatch) -> list:
    """Turn the Hub off as a person would: HF_HUB_OFFLINE=1, set after huggingface_hub was imported (its
    constant stays False), and a Hub endpoint nothing listens on. Returns the list of connections attempted
    from then on, which should stay empty."""
    monkeypatch.setenv("HF_ENDPOINT", _closed_endpoint())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = []
    connect = socket.socket.connect

    def recorded_connect(sock, address):
        attempts.append(address)
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", recorded_connect)
    return attempts


def test_weights_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("MUSICGEN_WEIGHTS_DIR", raising=False)
    assert weights_dir() == REPO_ROOT / "weights"
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(tmp_path))
    assert weights_dir() == tmp_path


def test_variant_downloads_only_the_transformers_layout(hub, hub_env):
    path = resolve_model("small")

    assert path == hub_env / "small"
    assert _tree(path) == set(TRANSFORMERS_FILES)  # no .bin, no README, no onnx/, no .cache bookkeeping
    for name, data in TRANSFORMERS_FILES.items():
        assert (path / name).read_bytes() == data
    assert _tree(hub_env) == {"small"} | {f"small/{f}" for f in TRANSFORMERS_FILES}  # no temp folder left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask  # readable by others as the umask allows
    assert not any("bin" in p or "README" in p for p in hub.downloads())


def test_second_resolution_makes_no_request(hub, hub_env):
    first = resolve_model("small")
    seen = len(hub.requests)
    assert seen > 0

    assert resolve_model("small") == first
    assert resolve_model("facebook/musicgen-small") == first  # the Hub id names the same folder
    assert len(hub.requests) == seen


def test_download_failing_midway_leaves_nothing(hub, hub_env):
    hub.fail_get.add("model.safetensors")

    with pytest.raises(WeightsNotFoundError) as info:
        resolve_model("small")

    assert "small" in str(info.value) and "500" in str(info.value)
    assert _tree(hub_env) == set()  # neither the folder nor a temporary sibling
    hub.fail_get.clear()
    assert _tree(resolve_model("small")) == set(TRANSFORMERS_FILES)


def test_connection_cut_midway_leaves_nothing(hub, hub_env, monkeypatch):
    # huggingface_hub retries a cut stream five times, a second apart: skip the waits (patches time.sleep,
    # for this test only)
    monkeypatch.setattr("huggingface_hub.file_download.time.sleep", lambda seconds: None)
    hub.cut_get.add("spiece.model")

    with pytest.raises(WeightsNotFoundError):
        resolve_model("small")

    assert _tree(hub_env) == set()


def test_interrupted_download_leaves_nothing(hub, hub_env, monkeypatch):
    def interrupted(repo_id, **kwargs):
        (Path(kwargs["local_dir"]) / "config.json").write_text("{}")  # something arrived, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "snapshot_download", interrupted)

    with pytest.raises(KeyboardInterrupt):
        resolve_model("small")

    assert _tree(hub_env) == set()


def test_no_network_names_variant_folder_and_command(closed_port_endpoint, hub_env):
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_model("stereo-melody-large")

    message = str(info.value)
    assert "'stereo-melody-large'" in message
    assert str(hub_env / "stereo-melody-large") in message
    assert "python scripts/download_weights.py stereo-melody-large" in message
    assert _tree(hub_env) == set()


def test_download_turned_off(hub, hub_env):
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_model("small", download=False)

    assert str(hub_env / "small") in str(info.value)
    assert f"nor in the Hugging Face cache at {hub_env.parent / 'hf_cache'}" in str(info.value)
    assert "python scripts/download_weights.py small" in str(info.value)
    assert hub.requests == []


def test_unknown_hub_repo(hub, hub_env):
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_model("someone/missing")

    assert str(hub_env / "hub" / "someone--missing") in str(info.value)
    assert _tree(hub_env) == set()


def test_hub_repo_without_transformers_layout(hub, hub_env):
    with pytest.raises(WeightsNotFoundError, match="no config.json"):
        resolve_model("someone/no-config")

    assert hub.downloads() == []
    assert _tree(hub_env) == set()


def test_unknown_name_lists_the_variants(hub_env):
    with pytest.raises(CheckpointError) as info:
        resolve_model("tiny")

    assert not isinstance(info.value, WeightsNotFoundError)
    for name in VARIANTS:
        assert name in str(info.value)


def test_folder_without_checkpoint(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("not weights")

    with pytest.raises(CheckpointError) as info:
        resolve_model(str(folder))

    message = str(info.value)
    assert str(folder) in message and "config.json" in message and "state_dict.bin" in message


def test_missing_path_is_not_taken_for_a_name(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        resolve_model(str(tmp_path / "nowhere" / "model"))


def test_existing_folders_are_used_as_is(hub, hub_env, tmp_path):
    folder = tmp_path / "audiocraft-export"
    folder.mkdir()
    (folder / "state_dict.bin").write_bytes(b"lm")
    assert resolve_model(str(folder)) == folder

    # a variant folder holding an audiocraft checkpoint counts as present too
    (hub_env / "medium").mkdir(parents=True)
    (hub_env / "medium" / "state_dict.bin").write_bytes(b"lm")
    assert resolve_model("medium") == hub_env / "medium"
    assert hub.requests == []


def test_download_completes_a_folder_holding_other_files(hub, hub_env):
    (hub_env / "small").mkdir(parents=True)
    (hub_env / "small" / "notes.txt").write_text("mine")

    path = resolve_model("small")

    assert _tree(path) == set(TRANSFORMERS_FILES) | {"notes.txt"}
    assert _tree(hub_env) == {"small"} | {f"small/{f}" for f in _tree(path)}


def test_pretrained_prefers_safetensors_and_lands_under_hub(hub, hub_env):
    t5 = resolve_pretrained("google-t5/t5-base")
    codec = resolve_pretrained("facebook/encodec_32khz")

    assert t5 == hub_env / "hub" / "google-t5--t5-base"
    assert _tree(t5) == {"config.json", "model.safetensors", "spiece.model", "tokenizer.json"}
    # no safetensors there, so the pickled weights are the only weights
    assert codec == hub_env / "hub" / "facebook--encodec_32khz"
    assert _tree(codec) == {"config.json", "pytorch_model.bin", "preprocessor_config.json"}

    seen = len(hub.requests)
    assert resolve_pretrained("google-t5/t5-base") == t5
    assert resolve_pretrained(str(codec)) == codec
    assert len(hub.requests) == seen


def test_pretrained_without_network(closed_port_endpoint, hub_env):
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_pretrained("t5-base")

    assert str(hub_env / "hub" / "t5-base") in str(info.value)
    assert "python scripts/download_weights.py --pretrained t5-base" in str(info.value)
    assert _tree(hub_env) == set()


def test_cli_prints_where_models_landed(hub, hub_env, capsys):
    # in-process, because starting a second Python that imports torch costs seconds
    spec = importlib.util.spec_from_file_location(
        "download_weights", REPO_ROOT / "scripts" / "download_weights.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    assert cli.main(["small", "--pretrained", "facebook/encodec_32khz"]) == 0

    out = capsys.readouterr().out
    assert f"small: {hub_env / 'small'}" in out
    assert f"facebook/encodec_32khz: {hub_env / 'hub' / 'facebook--encodec_32khz'}" in out


def test_cli_failure_is_a_message_not_a_traceback(closed_port_endpoint, hub_env):
    # run as a file, as people run it; the child reads HF_ENDPOINT etc. from the environment the fixtures set
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "download_weights.py"), "small", "tiny"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
    )

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "python scripts/download_weights.py small" in done.stderr
    assert "Valid variant names" in done.stderr


def test_offline_finds_a_variant_in_the_hf_cache(hub, hub_env, monkeypatch):
    snapshot = _fill_hf_cache("facebook/musicgen-small")  # the whole repo, as `hf download` fetches it
    seen = len(hub.requests)
    attempts = _go_offline(monkeypatch)

    assert resolve_model("small") == snapshot
    assert resolve_model("facebook/musicgen-small") == snapshot
    assert resolve_model("small", download=False) == snapshot
    assert attempts == [] and len(hub.requests) == seen
    assert _tree(hub_env) == set()  # used where it is: nothing copied into the weights folder

    # our weights folder still comes first: it is where a Cog image bakes its weights
    (hub_env / "small").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (hub_env / "small" / name).write_bytes(TRANSFORMERS_FILES[name])
    assert resolve_model("small") == hub_env / "small"


def test_offline_finds_audiocraft_downloads_in_the_hf_cache(hub, hub_env, monkeypatch):
    # audiocraft fetches just these two files of a facebook/musicgen-* repo with hf_hub_download
    snapshot = _fill_hf_cache("facebook/musicgen-small", ["state_dict.bin", "compression_state_dict.bin"])
    attempts = _go_offline(monkeypatch)

    assert resolve_model("small") == snapshot
    assert attempts == []


def test_offline_finds_submodels_in_the_hf_cache(hub, hub_env, monkeypatch):
    # file by file, as transformers' T5EncoderModel and AutoTokenizer fetch them: no file listing is kept
    t5 = _fill_hf_cache("t5-base", ["config.json", "model.safetensors", "spiece.model", "tokenizer.json"])
    google_t5 = _fill_hf_cache(
        "google-t5/t5-base", allow_patterns=["*.json", "*.safetensors", "spiece.model"]
    )
    codec = _fill_hf_cache("facebook/encodec_32khz")  # a codec needs no tokenizer
    seen = len(hub.requests)
    attempts = _go_offline(monkeypatch)

    assert resolve_pretrained("t5-base") == t5
    assert resolve_pretrained("google-t5/t5-base") == google_t5
    assert resolve_pretrained("facebook/encodec_32khz") == codec
    assert attempts == [] and len(hub.requests) == seen
    assert _tree(hub_env) == set()


def test_online_a_cached_repo_makes_no_request(hub, hub_env):
    snapshot = _fill_hf_cache("facebook/musicgen-small")
    codec = _fill_hf_cache("facebook/encodec_32khz")
    seen = len(hub.requests)

    assert resolve_model("small") == snapshot
    assert resolve_pretrained("facebook/encodec_32khz") == codec
    assert len(hub.requests) == seen  # not even a look at the Hub's listing
    assert _tree(hub_env) == set()


@pytest.mark.parametrize(
    ("resolve", "repo", "cached", "dest", "lacking"),
    [
        # transformers fetched the configs only (AutoConfig), or `hf download` stopped before the weights; the
        # file listing snapshot_download keeps says files are missing
        (resolve_model, "small", {"allow_patterns": ["*.json", "spiece.model"]}, "small", "weights"),
        # the rest file by file, with no listing: only the check of the files themselves can tell
        (resolve_model, "small", {"files": ["state_dict.bin"]}, "small", "compression_state_dict.bin"),
        (
            resolve_model,
            "someone/sharded",
            {"files": ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"]},
            "hub/someone--sharded",
            "model-00002-of-00002.safetensors",
        ),
        (
            resolve_pretrained,
            "t5-base",
            {"files": ["config.json", "model.safetensors"]},
            "hub/t5-base",
            "tokenizer",
        ),
        # MusicGen-Style as audiocraft fetches it, stopped after the first file
        (resolve_model, "style", {"files": ["state_dict.bin"]}, "style", "compression_state_dict.bin"),
        (
            resolve_pretrained,
            "m-a-p/MERT-v1-95M",
            {"files": ["config.json", "modeling_MERT.py"]},
            "hub/m-a-p--MERT-v1-95M",
            "weights",
        ),
    ],
    ids=[
        "no-weights",
        "audiocraft-half",
        "missing-shard",
        "t5-no-tokenizer",
        "style-half",
        "mert-no-weights",
    ],
)
def test_incomplete_cached_snapshot_is_not_taken(
    hub, hub_env, monkeypatch, resolve, repo, cached, dest, lacking
):
    hub_id = VARIANTS[repo].hub_id if repo in VARIANTS else repo
    snapshot = _fill_hf_cache(hub_id, **cached)
    endpoint = os.environ["HF_ENDPOINT"]

    attempts = _go_offline(monkeypatch)
    with pytest.raises(WeightsNotFoundError) as info:
        resolve(repo)
    message = str(info.value)
    assert f"its snapshot {snapshot} lacks" in message and lacking in message
    assert attempts == []

    # online, the model is downloaded into our folder as if the cache held nothing
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    seen = len(hub.downloads())
    assert resolve(repo) == hub_env / dest
    assert len(hub.downloads()) > seen


def test_offline_with_nothing_cached_names_both_places(hub_env, monkeypatch):
    attempts = _go_offline(monkeypatch)
    cases = [
        (resolve_model, "small", hub_env / "small", "python scripts/download_weights.py small"),
        (
            resolve_pretrained,
            "t5-base",
            hub_env / "hub" / "t5-base",
            "python scripts/download_weights.py --pretrained t5-base",
        ),
    ]
    for resolve, name, dest, command in cases:
        with pytest.raises(WeightsNotFoundError) as info:
            resolve(name)
        message = str(info.value)
        assert f"not in {dest}, nor in the Hugging Face cache at {hub_env.parent / 'hf_cache'}" in message
        assert "HF_HUB_OFFLINE=1" in message and command in message

    assert attempts == []  # not even a try
    assert _tree(hub_env) == set()


def test_hf_cache_location_is_read_at_call_time(hub, hub_env, tmp_path, monkeypatch):
    home = tmp_path / "elsewhere"
    snapshot = _fill_hf_cache("facebook/musicgen-small", cache_dir=home / "hub")
    # set after huggingface_hub was imported, so its constants do not know them
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(home))
    attempts = _go_offline(monkeypatch)

    assert hf_cache_dir() == home / "hub"
    assert resolve_model("small") == snapshot
    assert attempts == []
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other"))  # HF_HUB_CACHE wins over HF_HOME
    assert hf_cache_dir() == tmp_path / "other"


def test_cli_fills_the_weights_folder_even_when_the_hf_cache_has_the_model(hub, hub_env, capsys):
    _fill_hf_cache("facebook/musicgen-small")
    spec = importlib.util.spec_from_file_location(
        "download_weights", REPO_ROOT / "scripts" / "download_weights.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    assert cli.main(["small"]) == 0

    # the weights folder is what a Cog image bakes; the cache lives outside the image
    assert f"small: {hub_env / 'small'}" in capsys.readouterr().out
    assert _tree(hub_env / "small") == set(TRANSFORMERS_FILES)


def test_tiny_model_loads_and_generates_from_the_hf_cache_offline(hub, hub_env, tmp_path, monkeypatch):
    folder = save_tiny_model(tmp_path / "tiny", "mono", 0)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    monkeypatch.setitem(REPOS, "facebook/musicgen-small", files)
    snapshot = _fill_hf_cache("facebook/musicgen-small")
    attempts = _go_offline(monkeypatch)

    model = MusicGen.load("small", device="cpu")
    result = model.generate("lo-fi beat with warm piano", duration=0.1, seed=0)

    assert result.audio.shape == (1, 1, round(0.1 * result.sample_rate))
    assert result.audio.isfinite().all()
    assert attempts == []
    assert _tree(hub_env) == set() and snapshot.is_dir()


# ---- MusicGen-Style: audiocraft's layout, and the sub-models it names (T5, MERT) ----------------------
STYLE_FILES = {"state_dict.bin", "compression_state_dict.bin"}
MERT_FETCHED = {"config.json", "preprocessor_config.json", "pytorch_model.bin"}
MERT = "m-a-p/MERT-v1-95M"


@pytest.fixture(scope="module")
def tiny_style_repos(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """The Hub repos a tiny MusicGen-Style model needs, laid out as the real ones are: facebook/musicgen-style
    (the two exported files, a whole EnCodec in the second), t5-base (config, safetensors, tokenizer) and
    m-a-p/MERT-v1-95M (a config naming remote code, pytorch_model.bin with the old weight-norm names, the
    remote-code files and a fairseq export)."""
    import torch
    from safetensors.torch import load_file

    folder = save_tiny_style_model(tmp_path_factory.mktemp("tiny-style") / "model")
    style = {name: (folder / name).read_bytes() for name in STYLE_FILES}
    style.update({"README.md": b"# card", ".gitattributes": b"*.bin filter=lfs"})
    t5 = {p.name: p.read_bytes() for p in (folder / "text_encoder").iterdir()}

    config = json.loads((folder / "mert" / "config.json").read_text())
    config.update(
        model_type="mert_model",
        architectures=["MERTModel"],
        auto_map={
            "AutoConfig": "configuration_MERT.MERTConfig",
            "AutoModel": "modeling_MERT.MERTModel",
        },
        feature_extractor_cqt=False,
        deepnorm=False,
        attention_relax=-1.0,
    )
    state = load_file(str(folder / "mert" / "model.safetensors"))
    old_names = {
        "parametrizations.weight.original0": "weight_g",
        "parametrizations.weight.original1": "weight_v",
    }
    for new, old in old_names.items():
        for name in [n for n in state if n.endswith(new)]:
            state[name[: -len(new)] + old] = state.pop(name)
    pickled = tmp_path_factory.mktemp("mert") / "pytorch_model.bin"
    torch.save(state, pickled)
    mert = {
        **REPOS[MERT],
        "config.json": json.dumps(config).encode(),
        "pytorch_model.bin": pickled.read_bytes(),
    }
    return {"facebook/musicgen-style": style, "t5-base": t5, MERT: mert}


@pytest.fixture
def style_hub(hub, tiny_style_repos, monkeypatch):
    for repo, files in tiny_style_repos.items():
        monkeypatch.setitem(REPOS, repo, files)
    return hub


def _generate_with_style(model) -> None:
    import torch

    excerpt = torch.randn(1, 3 * model.config.sample_rate, generator=torch.Generator().manual_seed(0))
    result = model.generate("lo-fi beat with warm piano", duration=0.1, style=excerpt, seed=0)
    assert result.audio.shape == (1, 1, round(0.1 * result.sample_rate))
    assert result.audio.isfinite().all()


def _download_script():
    spec = importlib.util.spec_from_file_location(
        "download_weights", REPO_ROOT / "scripts" / "download_weights.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_style_fetches_audiocraft_layout_and_its_submodels_then_loads_offline(
    style_hub, hub_env, capsys, monkeypatch
):
    cli = _download_script()

    assert cli.main(["style"]) == 0

    out = capsys.readouterr().out
    assert f"style: {hub_env / 'style'} (names t5-base, {MERT})" in out
    assert f"t5-base: {hub_env / 'hub' / 't5-base'}" in out
    assert f"{MERT}: {hub_env / 'hub' / 'm-a-p--MERT-v1-95M'}" in out
    assert _tree(hub_env / "style") == STYLE_FILES  # no README, no .gitattributes
    assert _tree(hub_env / "hub" / "m-a-p--MERT-v1-95M") == MERT_FETCHED  # no remote code, no fairseq .pt
    assert _tree(hub_env / "hub" / "t5-base") == set(REPOS["t5-base"])
    assert _tree(hub_env) == {"style", "hub", "hub/t5-base", "hub/m-a-p--MERT-v1-95M"} | {
        f"style/{f}" for f in STYLE_FILES
    } | {f"hub/t5-base/{f}" for f in REPOS["t5-base"]} | {f"hub/m-a-p--MERT-v1-95M/{f}" for f in MERT_FETCHED}
    served = style_hub.downloads()
    assert not any(p.endswith((".py", ".pt", "README.md")) for p in served), served
    # the codec is whole in compression_state_dict.bin: EnCodec's repo is never asked for
    assert not any("encodec" in path for _, path in style_hub.requests)

    attempts = _go_offline(monkeypatch)
    # a second run finds everything in place and asks nothing
    assert cli.main(["style"]) == 0
    model = MusicGen.load("style", device="cpu")
    _generate_with_style(model)
    assert attempts == []


def test_style_loads_offline_from_what_audiocraft_and_transformers_cached(style_hub, hub_env, monkeypatch):
    # file by file, as audiocraft fetches the checkpoint (hf_hub_download), transformers MERT with its remote
    # code (AutoModel.from_pretrained(..., trust_remote_code=True)) and T5 (T5EncoderModel, AutoTokenizer)
    snapshot = _fill_hf_cache("facebook/musicgen-style", sorted(STYLE_FILES))
    mert = _fill_hf_cache(
        MERT, ["config.json", "configuration_MERT.py", "modeling_MERT.py", "pytorch_model.bin"]
    )
    _fill_hf_cache("t5-base", sorted(REPOS["t5-base"]))
    attempts = _go_offline(monkeypatch)

    assert resolve_model("style") == snapshot
    assert resolve_model("facebook/musicgen-style", download=False) == snapshot
    assert resolve_pretrained(MERT) == mert
    assert named_submodels(snapshot) == ["t5-base", MERT]
    _generate_with_style(MusicGen.load("style", device="cpu"))
    assert attempts == []
    assert _tree(hub_env) == set()  # used where they are: nothing copied into the weights folder


def test_style_offline_with_nothing_cached_names_the_command(hub_env, monkeypatch):
    attempts = _go_offline(monkeypatch)

    with pytest.raises(WeightsNotFoundError) as info:
        resolve_model("style")

    message = str(info.value)
    assert f"not in {hub_env / 'style'}, nor in the Hugging Face cache" in message
    assert "python scripts/download_weights.py style" in message and "HF_HUB_OFFLINE=1" in message
    assert attempts == []


@pytest.mark.parametrize("failure", ["error", "cut", "interrupt"])
def test_style_download_failing_midway_leaves_nothing(hub, hub_env, monkeypatch, failure):
    if failure == "error":
        hub.fail_get.add("state_dict.bin")
    elif failure == "cut":
        monkeypatch.setattr("huggingface_hub.file_download.time.sleep", lambda seconds: None)
        hub.cut_get.add("state_dict.bin")
    else:

        def interrupted(repo_id, **kwargs):
            (Path(kwargs["local_dir"]) / "compression_state_dict.bin").write_bytes(b"arrived")  # then Ctrl-C
            raise KeyboardInterrupt

        monkeypatch.setattr(weights, "snapshot_download", interrupted)

    with pytest.raises(KeyboardInterrupt if failure == "interrupt" else WeightsNotFoundError):
        resolve_model("style")

    assert _tree(hub_env) == set()  # neither weights/style nor a temporary sibling


def test_style_repo_missing_a_file_fetches_nothing(hub, hub_env, monkeypatch):
    monkeypatch.setitem(REPOS, "facebook/musicgen-style", {"state_dict.bin": b"lm", "README.md": b"# card"})

    with pytest.raises(WeightsNotFoundError) as info:
        resolve_model("style")

    assert "has no compression_state_dict.bin" in str(info.value) and "audiocraft's layout" in str(info.value)
    assert hub.downloads() == []
    assert _tree(hub_env) == set()


def test_mert_fetches_config_and_weights_only(hub, hub_env):
    path = resolve_pretrained(MERT)

    assert path == hub_env / "hub" / "m-a-p--MERT-v1-95M"
    assert _tree(path) == MERT_FETCHED
    assert not any(p.endswith((".py", ".pt")) for p in hub.downloads())


def test_named_submodels(tmp_path, tiny_style_repos):
    import torch

    bundled = save_tiny_style_model(tmp_path / "bundled")
    assert named_submodels(bundled) == []  # T5 (with its tokenizer) and MERT in text_encoder/ and mert/
    assert named_submodels(save_tiny_model(tmp_path / "transformers")) == []

    named = tmp_path / "named"
    named.mkdir()
    for name in STYLE_FILES:
        (named / name).write_bytes(tiny_style_repos["facebook/musicgen-style"][name])
    assert named_submodels(named) == ["t5-base", MERT]

    # a pointer in compression_state_dict.bin names the codec, as audiocraft's text models do
    torch.save({"pretrained": "facebook/encodec_32khz"}, named / "compression_state_dict.bin")
    assert named_submodels(named) == ["t5-base", "facebook/encodec_32khz", MERT]
    # T5 weights bundled without a tokenizer: T5 is still fetched by name, for its tokenizer
    (named / "text_encoder").mkdir()
    (named / "text_encoder" / "config.json").write_text("{}")
    assert named_submodels(named) == ["t5-base", "facebook/encodec_32khz", MERT]

    (named / "state_dict.bin").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="state_dict.bin"):
        named_submodels(named)
