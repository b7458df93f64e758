"""The model cache a server keeps (least recently used out, memory freed) and fetching weight files."""

import gc
import os
import threading
import weakref
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from musicgen import InvalidInputError
from musicgen.errors import FineTunedWeightsError
from musicgen.finetuned import FineTuned, save_finetuned
from musicgen.serving import ModelCache, OutputFiles, fetch_weights_file
from musicgen.tiny import save_tiny_model


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    for variant, kind in [("small", "mono"), ("stereo-small", "stereo"), ("melody", "melody")]:
        save_tiny_model(root / variant, kind, seed=1)
    return root


@pytest.fixture
def cache(weights, monkeypatch):
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(weights))
    return ModelCache(device="cpu")


def test_a_loaded_model_is_reused(cache):
    assert cache.get("small") is cache.get("small")
    assert cache.keys() == [("small", None)]


def test_least_recently_used_is_evicted_and_freed(cache):
    small = cache.get("small")
    cache.get("stereo-small")
    # room for exactly these two; the melody model (smaller than the stereo one) fits once one goes
    cache.memory_budget = sum(size for _, size in cache._models.values())
    cache.get("small")  # now stereo-small is the least recently used
    stereo_lm = weakref.ref(cache.get("stereo-small").lm)
    cache.get("small")
    cache.get("melody")  # a third model does not fit: stereo-small goes
    assert [k for k, _ in cache.keys()] == ["small", "melody"]
    gc.collect()
    assert stereo_lm() is None  # nothing holds on to the evicted model's weights
    assert cache.get("small") is small


def test_max_models(cache):
    cache.max_models = 1
    cache.get("small")
    cache.get("melody")
    assert cache.keys() == [("melody", None)]


def _lora_for(engine, base_variant):
    lm = engine.lm
    r, d = 2, lm.cfg.dim
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "layers.0.ff1.lora_A.weight": torch.randn(r, d, generator=gen),
        "layers.0.ff1.lora_B.weight": torch.randn(lm.cfg.ffn_dim, r, generator=gen),
    }
    return FineTuned(
        base_variant=base_variant,
        method="lora",
        tensors=tensors,
        lm_config=lm.cfg,
        lora_rank=r,
        lora_alpha=4.0,
        target_modules=["ff1"],
    )


def test_finetuned_weights_are_a_separate_entry(cache, tmp_path):
    base = cache.get("small")
    path = save_finetuned(tmp_path / "tuned.safetensors", _lora_for(base, "small"))
    tuned = cache.get("small", finetuned=path)
    assert tuned is not base
    assert not torch.equal(tuned.lm.layers[0].ff1.weight, base.lm.layers[0].ff1.weight)
    assert torch.equal(tuned.lm.layers[1].ff1.weight, base.lm.layers[1].ff1.weight)


def test_weights_of_another_variant_are_refused_before_loading(cache, tmp_path):
    path = save_finetuned(tmp_path / "tuned.safetensors", _lora_for(cache.get("small"), "small"))
    cache.clear()
    with pytest.raises(InvalidInputError, match="model_version=small"):
        cache.get("medium", finetuned=path)  # medium is not on disk: refused before any download
    assert cache.keys() == []


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    seen = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            seen.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served, seen
    server.shutdown()
    thread.join(timeout=5)


def test_fetch_downloads_a_url_once(file_server, tmp_path):
    url, served, seen = file_server
    (served / "w.safetensors").write_bytes(b"weights")
    cache_dir = tmp_path / "cache"
    first = fetch_weights_file(f"{url}/w.safetensors", cache_dir)
    again = fetch_weights_file(f"{url}/w.safetensors", cache_dir)
    assert first == again and first.read_bytes() == b"weights"
    assert len(seen) == 1


def test_fetch_failure_leaves_nothing(file_server, tmp_path):
    url, _, _ = file_server
    cache_dir = tmp_path / "cache"
    with pytest.raises(FineTunedWeightsError, match="missing.safetensors"):
        fetch_weights_file(f"{url}/missing.safetensors", cache_dir)
    assert list(cache_dir.iterdir()) == []


def test_fetch_refuses_a_file_larger_than_any_weights(file_server, tmp_path):
    url, served, _ = file_server
    (served / "big.safetensors").write_bytes(b"x" * 5000)
    cache_dir = tmp_path / "cache"
    with pytest.raises(FineTunedWeightsError, match="larger than"):
        fetch_weights_file(f"{url}/big.safetensors", cache_dir, max_bytes=4096)
    assert list(cache_dir.iterdir()) == []  # the partial download is gone


def test_fetch_cache_keeps_only_the_most_recently_used_files(file_server, tmp_path):
    url, served, seen = file_server
    for i in range(4):
        (served / f"w{i}.safetensors").write_bytes(b"weights %d" % i)
    cache_dir = tmp_path / "cache"
    first = fetch_weights_file(f"{url}/w0.safetensors", cache_dir, max_files=2)
    second = fetch_weights_file(f"{url}/w1.safetensors", cache_dir, max_files=2)
    os.utime(first, (0, 0))  # make the clock's order unambiguous: w0 was used long ago...
    os.utime(second, (1, 1))
    assert fetch_weights_file(f"{url}/w0.safetensors", cache_dir, max_files=2) == first  # ...and now
    fetch_weights_file(f"{url}/w2.safetensors", cache_dir, max_files=2)  # w1 is the least recently used
    assert len(list(cache_dir.iterdir())) == 2 and first.is_file()
    fetch_weights_file(f"{url}/w1.safetensors", cache_dir, max_files=2)
    assert seen.count("/w1.safetensors") == 2  # it had been evicted, so it came again


def test_fetch_refuses_other_schemes(tmp_path):
    with pytest.raises(FineTunedWeightsError, match="unsupported URL scheme 'ftp'"):
        fetch_weights_file("ftp://example.com/w.safetensors", tmp_path)


def test_output_files_keep_only_the_newest(tmp_path):
    outputs = OutputFiles(prefix="outs-", keep=1)
    made = []
    for i in range(5):
        path = outputs.new("output.wav")
        assert path.name == "output.wav" and not path.exists()
        path.write_bytes(b"audio %d" % i)
        made.append(path)
    assert [p.exists() for p in made] == [False, False, False, False, True]
    assert len(list(outputs.folder.iterdir())) == 1  # the folders of the sent files are gone too
    two = OutputFiles(keep=2)
    paths = []
    for _ in range(3):
        paths.append(two.new("o.wav"))
        paths[-1].write_bytes(b"x")
    assert [p.exists() for p in paths] == [False, True, True]


def test_fetch_local_paths(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")
    assert fetch_weights_file(str(f)) == f
    assert fetch_weights_file(f"file://{f}") == f
    with pytest.raises(InvalidInputError, match="not found"):
        fetch_weights_file(str(tmp_path / "nope.safetensors"))


def test_a_style_model_counts_its_conditioner_and_mert(tiny_style, tmp_path, monkeypatch):
    """The cache's memory budget sees MusicGen-Style whole: LM, T5, EnCodec, and the float32 style
    conditioner with MERT (a third of the tiny model's weights)."""
    folder, _ = tiny_style
    (tmp_path / "style").symlink_to(folder, target_is_directory=True)
    monkeypatch.setenv("MUSICGEN_WEIGHTS_DIR", str(tmp_path))
    cache = ModelCache(device="cpu")
    model = cache.get("style")
    ((_, size),) = cache._models.values()
    modules = [model.lm, model.text.model, model.codec.model, model.style.mert, model.style.encoder]
    held = sum(
        t.numel() * 4 for m in modules for t in [*m.parameters(), *m.buffers()] if t.is_floating_point()
    )
    conditioner = sum(t.numel() * 4 for m in modules[3:] for t in m.state_dict().values())
    assert conditioner > size / 4
    assert abs(size - held) < 0.05 * held
