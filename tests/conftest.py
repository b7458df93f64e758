import pytest
import torch

from musicgen.tiny import make_tiny_model

torch.set_num_threads(2)


class TinyModels:
    """Builds each tiny random checkpoint once per session, saved in transformers' layout."""

    def __init__(self, root):
        self.root = root
        self._cache = {}

    def get(self, kind: str, seed: int = 0):
        """(folder, transformers model, tokenizer) of a tiny random model of `kind`."""
        key = (kind, seed)
        if key not in self._cache:
            model, tokenizer = make_tiny_model(kind, seed)
            folder = self.root / f"{kind}-{seed}"
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            self._cache[key] = (folder, model, tokenizer)
        return self._cache[key]

    def engine(self, kind: str, seed: int = 0):
        """Our MusicGen loaded from the same folder."""
        from musicgen.loading import build_model, read_checkpoint

        if ("engine", kind, seed) not in self._cache:
            folder = self.get(kind, seed)[0]
            self._cache[("engine", kind, seed)] = build_model(read_checkpoint(folder), "cpu")
        return self._cache[("engine", kind, seed)]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return TinyModels(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_style(tmp_path_factory):
    """The tiny random MusicGen-Style model, built once: (its folder in audiocraft's layout, with T5 and
    MERT bundled; the engine loaded from it on CPU)."""
    from musicgen.loading import build_model, read_checkpoint
    from musicgen.tiny import save_tiny_style_model

    folder = save_tiny_style_model(tmp_path_factory.mktemp("tiny-style") / "style")
    return folder, build_model(read_checkpoint(folder), "cpu")
