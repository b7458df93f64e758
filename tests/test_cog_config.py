"""cog.yaml and predict.py's signature: what `cog build` reads without running anything.

Cog (>= 0.19) builds the model's OpenAPI schema by parsing predict.py, so every `Input(...)` argument must be
a literal; the pinned requirements must be the same list the tests run with.
"""

import ast
import io
import re
import tokenize
import warnings
from pathlib import Path

import pytest
import yaml

from musicgen.audio import NORMALIZATION_STRATEGIES
from musicgen.variants import VARIANTS

REPO_ROOT = Path(__file__).resolve().parent.parent
PREDICT_SOURCE = (REPO_ROOT / "predict.py").read_text()

# name -> (annotation as written, default): the inputs of Replicate's meta/musicgen that callers rely on
EXPECTED_INPUTS = {
    "model_version": ("str", "stereo-melody-large"),
    "prompt": ("str | None", None),
    "input_audio": ("Path | None", None),
    "duration": ("int", 8),
    "continuation": ("bool", False),
    "continuation_start": ("int", 0),
    "continuation_end": ("int | None", None),
    "normalization_strategy": ("str", "loudness"),
    "top_k": ("int", 250),
    "top_p": ("float", 0.0),
    "temperature": ("float", 1.0),
    "classifier_free_guidance": ("float", 3.0),
    "output_format": ("str", "wav"),
    "seed": ("int | None", None),
    "replicate_weights": ("str | None", None),
}


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((REPO_ROOT / "cog.yaml").read_text())


def _predict_inputs() -> dict[str, tuple[ast.expr, ast.Call]]:
    """predict()'s parameters: name -> (annotation node, the `Input(...)` call that is its default)."""
    tree = ast.parse(PREDICT_SOURCE)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Predictor")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "predict")
    params = fn.args.args[1:]  # after self
    defaults = fn.args.defaults
    assert len(defaults) == len(params), "every predict() parameter needs an Input(...) default"
    out = {}
    for param, default in zip(params, defaults, strict=True):
        assert isinstance(default, ast.Call) and getattr(default.func, "id", None) == "Input", param.arg
        assert param.annotation is not None, f"{param.arg} has no type annotation"
        out[param.arg] = (param.annotation, default)
    return out


def _is_literal(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, int | float)
    if isinstance(node, ast.List):
        return all(isinstance(item, ast.Constant) for item in node.elts)
    return False


def _string_tokens(node: ast.expr) -> list[str]:
    """The string tokens a literal is written with (two or more: implicit concatenation)."""
    segment = ast.get_source_segment(PREDICT_SOURCE, node)
    tokens = tokenize.generate_tokens(io.StringIO(segment).readline)
    return [t.string for t in tokens if t.type == tokenize.STRING]


# ---- cog.yaml ------------------------------------------------------------------------------------


def test_cog_yaml_keys(config):
    build = config["build"]
    assert build["gpu"] is True
    assert build["python_version"] == "3.11"  # a string: YAML would read 3.10 as the float 3.1
    assert build["system_packages"] == ["ffmpeg"]
    assert config["predict"] == "predict.py:Predictor"
    assert config["train"] == "train.py:train"
    # one source of truth for packages: the file the dev setup installs
    assert build["python_requirements"] == "requirements.txt"
    assert "python_packages" not in build


def _requirements(path: Path, seen: set[Path] | None = None) -> list[str]:
    """Every requirement line of `path`, following `-r` includes."""
    seen = seen if seen is not None else set()
    assert path.is_file(), f"{path} is missing"
    seen.add(path)
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            included = path.parent / line.split(maxsplit=1)[1]
            if included not in seen:
                lines += _requirements(included, seen)
            continue
        assert not line.startswith("-"), f"{path}: unexpected option {line!r}"
        lines.append(line)
    return lines


def test_requirements_are_pinned_and_shared_with_the_dev_setup(config):
    runtime = REPO_ROOT / config["build"]["python_requirements"]
    dev = REPO_ROOT / "requirements-dev.txt"
    assert f"-r {runtime.name}" in dev.read_text().splitlines()  # the dev setup installs the same list
    lines = _requirements(dev)
    assert set(_requirements(runtime)) <= set(lines)
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][0-9A-Za-z.+!-]*", line), (
            f"not pinned: {line!r}"
        )


def test_sdk_version_matches_the_pinned_cog(config):
    # cog build installs the SDK itself (dropping cog from python_requirements); sdk_version keeps it at the
    # version the tests run against
    pins = dict(line.split("==") for line in _requirements(REPO_ROOT / "requirements.txt"))
    assert config["build"]["sdk_version"] == pins["cog"]


# ---- predict.py ----------------------------------------------------------------------------------


def test_inputs_are_the_meta_musicgen_ones_with_their_defaults():
    inputs = _predict_inputs()
    assert list(inputs) == list(EXPECTED_INPUTS)
    for name, (annotation, call) in inputs.items():
        expected_type, expected_default = EXPECTED_INPUTS[name]
        assert ast.unparse(annotation) == expected_type, name
        keywords = {k.arg: k.value for k in call.keywords}
        assert "default" in keywords, f"{name}: give the default explicitly"
        default = ast.literal_eval(keywords["default"])
        assert default == expected_default and type(default) is type(expected_default), name


def test_input_arguments_are_literals_cog_can_read_statically():
    for name, (_, call) in _predict_inputs().items():
        assert not call.args, f"{name}: pass Input's arguments by keyword"
        keywords = {k.arg: k.value for k in call.keywords}
        assert set(keywords) <= {"default", "description", "ge", "le", "choices"}, name
        for key, value in keywords.items():
            assert _is_literal(value), f"{name}: {key}= must be a literal, not {ast.unparse(value)}"
        description = keywords["description"]
        assert isinstance(description.value, str) and len(description.value) > 20, name
        # cog's static parser reads a description written as "a" "b" as one broken string
        assert len(_string_tokens(description)) == 1, f"{name}: write the description as one string"


def test_choices_and_ranges():
    inputs = {
        name: {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        for name, (_, call) in _predict_inputs().items()
    }
    assert inputs["model_version"]["choices"] == list(VARIANTS)  # all ten published models
    assert inputs["normalization_strategy"]["choices"] == list(NORMALIZATION_STRATEGIES)
    assert inputs["output_format"]["choices"] == ["wav", "mp3", "flac"]
    assert (inputs["duration"]["ge"], inputs["duration"]["le"]) == (1, 300)
    assert (inputs["top_p"]["ge"], inputs["top_p"]["le"]) == (0, 1)
    for name in (
        "top_k",
        "temperature",
        "classifier_free_guidance",
        "continuation_start",
        "continuation_end",
    ):
        assert inputs[name]["ge"] == 0, name


def test_cog_accepts_the_signature():
    """Cog's own inspector (what builds the schema when static parsing falls back) takes predict.py."""
    from cog import _inspector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # cog 0.23 prefers run() to predict()
        info = _inspector.create_predictor("predict", "Predictor")
    assert list(info.inputs) == list(EXPECTED_INPUTS)
    assert info.inputs["duration"].default == 8 and info.inputs["duration"].le == 300
