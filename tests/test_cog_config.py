"""cog.yaml, .dockerignore and predict.py's signature: what `cog build` reads without running anything.

Cog (>= 0.19) builds the model's OpenAPI schema by parsing predict.py, so every `Input(...)` argument must be
a literal; the pinned requirements must be the same list the tests run with, and the image must get the cog
and coglet the tests ran with. The key names and rules below are Cog 0.22-0.23's (replicate/cog:
pkg/config/config_file.go, pkg/config/validate.go, pkg/config/torch_compatibility.json, docs/yaml.md).
"""

import ast
import importlib.metadata
import io
import os
import posixpath
import re
import subprocess
import tokenize
import warnings
from pathlib import Path

import pytest
import yaml

from musicgen.audio import NORMALIZATION_STRATEGIES
from musicgen.config import StyleConfig
from musicgen.inputs import MAX_CFG_BETA
from musicgen.style import MAX_EVAL_Q
from musicgen.variants import VARIANTS

REPO_ROOT = Path(__file__).resolve().parent.parent
PREDICT_SOURCE = (REPO_ROOT / "predict.py").read_text()
RUNNER_CLASS, RUN_METHOD = "Runner", "run"  # what cog.yaml's `run:` points at (checked below)

# the keys Cog's cog.yaml schema knows, and those it warns are deprecated (validate.go's
# checkDeprecatedFields): `predict` (use `run`), concurrency.max (@cog.concurrent), build.python_packages
# (python_requirements), build.pre_install (build.run)
KNOWN_KEYS = {"build", "image", "model", "run", "predict", "train", "concurrency", "environment", "weights"}
KNOWN_BUILD_KEYS = {
    "cuda",
    "cudnn",
    "gpu",
    "python_version",
    "python_packages",
    "pre_install",
    "python_requirements",
    "system_packages",
    "sdk_version",
    "run",
}
DEPRECATED_KEYS = {"predict", "concurrency"}
DEPRECATED_BUILD_KEYS = {"python_packages", "pre_install"}

# torch version -> the CUDA versions torch publishes wheels for (Cog's torch_compatibility.json): the CUDA
# pinned in cog.yaml must be one of them, or Cog warns and installs a torch built for another CUDA. A new
# torch pin fails here until its row is added and the CUDA choice looked at again.
TORCH_CUDAS = {"2.9.1": ("12.6", "12.8", "13.0")}

# name -> (annotation as written, default): the inputs of Replicate's meta/musicgen that callers rely on,
# in their order (multi_band_diffusion where meta/musicgen has it, after continuation_end), with
# MusicGen-Style's three (style_excerpt_length, style_eval_q,
# classifier_free_guidance_beta) next to the inputs they go with
EXPECTED_INPUTS = {
    "model_version": ("str", "stereo-melody-large"),
    "prompt": ("str | None", None),
    "input_audio": ("Path | None", None),
    "duration": ("int", 8),
    "continuation": ("bool", False),
    "continuation_start": ("int", 0),
    "continuation_end": ("int | None", None),
    "multi_band_diffusion": ("bool", False),
    "style_excerpt_length": ("float", 3.0),
    "style_eval_q": ("int", 3),
    "normalization_strategy": ("str", "loudness"),
    "top_k": ("int", 250),
    "top_p": ("float", 0.0),
    "temperature": ("float", 1.0),
    "classifier_free_guidance": ("float", 3.0),
    "classifier_free_guidance_beta": ("float | None", None),
    "output_format": ("str", "wav"),
    "seed": ("int | None", None),
    "replicate_weights": ("str | None", None),
}


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((REPO_ROOT / "cog.yaml").read_text())


def _predict_inputs() -> dict[str, tuple[ast.expr, ast.Call]]:
    """Runner.run()'s parameters: name -> (annotation node, the `Input(...)` call that is its default)."""
    tree = ast.parse(PREDICT_SOURCE)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == RUNNER_CLASS)
    fn = next(
        n for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == RUN_METHOD
    )
    params = fn.args.args[1:]  # after self
    defaults = fn.args.defaults
    assert len(defaults) == len(params), "every run() parameter needs an Input(...) default"
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
    assert config["run"] == f"predict.py:{RUNNER_CLASS}"
    assert config["train"] == "train.py:train"
    # one source of truth for packages: the file the dev setup installs
    assert build["python_requirements"] == "requirements.txt"


def test_cog_yaml_has_only_current_keys(config):
    assert set(config) <= KNOWN_KEYS, f"keys Cog does not know: {set(config) - KNOWN_KEYS}"
    assert set(config["build"]) <= KNOWN_BUILD_KEYS, set(config["build"]) - KNOWN_BUILD_KEYS
    assert not set(config) & DEPRECATED_KEYS, "deprecated: use run: (and @cog.concurrent)"
    assert not set(config["build"]) & DEPRECATED_BUILD_KEYS, "deprecated: use python_requirements"


def _module_level(path: Path) -> dict[str, ast.stmt]:
    tree = ast.parse(path.read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}


def test_run_and_train_point_at_what_the_files_define(config):
    run_file, run_name = config["run"].split(":")
    runner = _module_level(REPO_ROOT / run_file).get(run_name)
    assert isinstance(runner, ast.ClassDef), f"{run_file} defines no class {run_name}"
    assert [ast.unparse(b) for b in runner.bases] == ["BaseRunner"]
    methods = {n.name for n in runner.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    # coglet serves run(); a class with predict() (or both) is the deprecated form, or refused
    assert {"setup", "run"} <= methods and "predict" not in methods, methods

    train_file, train_name = config["train"].split(":")
    trainer = _module_level(REPO_ROOT / train_file).get(train_name)
    assert isinstance(trainer, ast.FunctionDef), f"{train_file} defines no function {train_name}"


def test_run_is_async_and_concurrent_with_a_literal_maximum():
    """Cog serves predictions concurrently only from an async run() under @cog.concurrent(max=N), and reads
    N statically (a literal); predict.py's MAX_CONCURRENT_PREDICTIONS must say the same number."""
    import predict

    tree = ast.parse(PREDICT_SOURCE)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == RUNNER_CLASS)
    fn = next(n for n in cls.body if getattr(n, "name", None) == RUN_METHOD)
    assert isinstance(fn, ast.AsyncFunctionDef)
    decorators = [d for d in fn.decorator_list if isinstance(d, ast.Call)]
    concurrent = [d for d in decorators if ast.unparse(d.func) == "cog.concurrent"]
    assert len(concurrent) == 1 and ast.unparse(fn.decorator_list[0].func) == "cog.concurrent"  # outermost
    (keyword,) = concurrent[0].keywords
    assert keyword.arg == "max" and isinstance(keyword.value, ast.Constant)
    assert keyword.value.value == predict.MAX_CONCURRENT_PREDICTIONS > 1
    assert predict.Runner.run.__cog_concurrent_max__ == predict.MAX_CONCURRENT_PREDICTIONS


def test_cuda_is_one_the_torch_pin_has_wheels_for(config):
    pins = dict(line.split("==") for line in _requirements(REPO_ROOT / "requirements.txt"))
    cuda = config["build"]["cuda"]
    assert isinstance(cuda, str), "quote the version: YAML reads 12.10 as the float 12.1"
    assert pins["torch"] in TORCH_CUDAS, f"torch {pins['torch']}: add its CUDA versions to TORCH_CUDAS"
    assert cuda in TORCH_CUDAS[pins["torch"]]
    # CUDA 12.x runs on host drivers >= 525 (minor-version compatibility); 13.x needs >= 580, which many
    # GPU hosts do not run yet
    assert cuda.split(".")[0] == "12"


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


def test_the_image_gets_the_cog_and_coglet_the_tests_run(config):
    # cog build installs cog and coglet itself (dropping both from python_requirements): sdk_version pins
    # cog; coglet only takes COGLET_WHEEL=pypi:<version> from the environment of `cog build`, which
    # cog.yaml's header gives
    pins = dict(line.split("==") for line in _requirements(REPO_ROOT / "requirements.txt"))
    assert config["build"]["sdk_version"] == pins["cog"] == pins["coglet"]
    # and the tests run against exactly those
    assert importlib.metadata.version("cog") == pins["cog"]
    assert importlib.metadata.version("coglet") == pins["coglet"]


def test_build_script_gives_cog_build_the_coglet_pin(tmp_path):
    # a stand-in `cog` on PATH records what scripts/build.sh hands it
    fake = tmp_path / "cog"
    fake.write_text('#!/bin/sh\necho "COGLET_WHEEL=$COGLET_WHEEL args=$*"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build.sh"), "-t", "musicgen"], env=env, capture_output=True, text=True
    )
    pins = dict(line.split("==") for line in _requirements(REPO_ROOT / "requirements.txt"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"COGLET_WHEEL=pypi:{pins['coglet']} args=build -t musicgen"


def _readme_section(title: str) -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index(title)
    level = title.split(" ")[0]
    rest = text[start + len(title) :]
    ends = [rest.find("\n" + "#" * n + " ") for n in range(1, len(level) + 1)]
    ends = [e for e in ends if e >= 0]
    return rest[: min(ends)] if ends else rest


def test_readme_deployment_and_training_sections_keep_the_pins(config):
    deploying = _readme_section("### Deploying")
    pins = dict(line.split("==") for line in _requirements(REPO_ROOT / "requirements.txt"))
    # the pins the README states are the ones cog.yaml and requirements.txt hold
    assert f'`build.cuda: "{config["build"]["cuda"]}"`' in deploying
    assert f'`build.sdk_version: "{config["build"]["sdk_version"]}"`' in deploying
    assert f'`run: "{config["run"]}"`' in deploying and f'`train: "{config["train"]}"`' in deploying
    assert "scripts/build.sh" in deploying and pins["coglet"] == config["build"]["sdk_version"]
    assert ".dockerignore" in deploying and "`weights/`" in deploying
    # the local servers the README starts are the ones cog.yaml names
    readme = (REPO_ROOT / "README.md").read_text()
    stubs = re.findall(r"COG_(PREDICT|TRAIN)_TYPE_STUB=(\S+)", readme)
    assert stubs and all(ref == config["run" if kind == "PREDICT" else "train"] for kind, ref in stubs), stubs
    # no command a reader would copy uses what Cog deprecated (cog predict -> cog run; cog train is going)
    commands = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    for block in commands:
        for line in block.splitlines():
            assert not re.match(r"\s*cog (predict|train)\b", line), line
    training = _readme_section("### From a folder of songs to served weights")
    assert (
        "`cog train` is deprecated" in training and "--x-mode train" in training and "/trainings" in training
    )


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
    assert inputs["model_version"]["choices"] == list(VARIANTS)  # all eleven published models, style too
    assert inputs["normalization_strategy"]["choices"] == list(NORMALIZATION_STRATEGIES)
    assert inputs["output_format"]["choices"] == ["wav", "mp3", "flac"]
    assert (inputs["duration"]["ge"], inputs["duration"]["le"]) == (1, 300)
    assert (inputs["top_p"]["ge"], inputs["top_p"]["le"]) == (0, 1)
    for name in (
        "top_k",
        "temperature",
        "classifier_free_guidance",
        "classifier_free_guidance_beta",
        "continuation_start",
        "continuation_end",
    ):
        assert inputs[name]["ge"] == 0, name
    # the style inputs: the released style model's defaults and ranges (what predict.py checks before a
    # model is loaded), and the engine's bound on the double-guidance weight
    style = StyleConfig()
    excerpt = inputs["style_excerpt_length"]
    assert (excerpt["default"], excerpt["ge"], excerpt["le"]) == (
        style.excerpt_length,
        style.min_excerpt_length,
        style.max_excerpt_length,
    )
    assert (inputs["style_eval_q"]["default"], inputs["style_eval_q"]["ge"]) == (style.eval_q, 1)
    assert inputs["style_eval_q"]["le"] == MAX_EVAL_Q == style.num_quantizers
    assert inputs["classifier_free_guidance_beta"]["le"] == MAX_CFG_BETA


def test_cog_accepts_the_signature():
    """Cog's own inspector (what builds the schema when static parsing falls back) takes predict.py,
    without a deprecation warning (those name BasePredictor, Predictor and predict())."""
    from cog import _inspector

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        info = _inspector.create_predictor("predict", RUNNER_CLASS)
    assert list(info.inputs) == list(EXPECTED_INPUTS)
    assert info.inputs["duration"].default == 8 and info.inputs["duration"].le == 300


# ---- .dockerignore -------------------------------------------------------------------------------
# Docker's matching, as moby/patternmatcher implements it (and BuildKit applies it to `cog build`'s context):
# lines read as ignorefile.ReadAll reads them, each pattern turned into a regular expression as
# Pattern.compile does, and a path excluded as MatchesOrParentMatches decides.


def _dockerignore_patterns(text: str) -> list[str]:
    patterns = []
    for line in text.splitlines():
        if line.startswith("#"):  # a comment only where the line starts with it
            continue
        line = line.strip()
        if not line:
            continue
        invert = line.startswith("!")
        if invert:
            line = line[1:].strip()
        line = posixpath.normpath(line).lstrip("/") or "/"  # relative to the context, as filepath.Clean
        patterns.append("!" + line if invert else line)
    return patterns


def _docker_regex(pattern: str) -> re.Pattern:
    """`*` and `?` stop at `/`; `**` (with the `/` after it) spans any number of folders, none too."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*" and pattern[i + 1 : i + 2] == "*":
            i += 1
            if pattern[i + 1 : i + 2] == "/":
                i += 1
            out += ".*" if i + 1 == len(pattern) else "(.*/)?"
        elif ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch in ".+()|{}$":
            out += "\\" + ch
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += "\\" + pattern[i]
        else:  # [ and ] open and close classes, as in Go
            out += ch
        i += 1
    return re.compile(out + "$")


def _excluded(patterns: list[str], path: str) -> bool:
    """Whether `path` (relative, with /) stays out: the path or one of its folders matches a pattern, the
    last pattern that can change the answer decides, and a `!` pattern takes the path back in."""
    parents = path.split("/")[:-1]
    candidates = [path] + ["/".join(parents[: i + 1]) for i in range(len(parents))]
    excluded = False
    for pattern in patterns:
        exclusion = pattern.startswith("!")
        if exclusion != excluded:  # only an exception can change an excluded path, and vice versa
            continue
        regex = _docker_regex(pattern[1:] if exclusion else pattern)
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not exclusion
    return excluded


@pytest.fixture(scope="module")
def dockerignore() -> list[str]:
    return _dockerignore_patterns((REPO_ROOT / ".dockerignore").read_text())


def test_the_docker_matching_here_is_dockers():
    """The matcher above against cases whose answer Docker documents (and moby/patternmatcher's tests)."""
    patterns = _dockerignore_patterns(
        "# a comment\n  \n/top\n*.md\n!README.md\n**/cache\ndocs/**/*.tmp\ntmp?\nweights\n!weights/keep\n"
    )
    assert patterns == [
        "top",
        "*.md",
        "!README.md",
        "**/cache",
        "docs/**/*.tmp",
        "tmp?",
        "weights",
        "!weights/keep",
    ]
    assert _excluded(patterns, "top") and _excluded(patterns, "top/inside/file")
    assert not _excluded(patterns, "src/top")  # no **/: the top of the context only, unlike .gitignore
    assert _excluded(patterns, "NOTES.md") and not _excluded(patterns, "README.md")  # the later ! wins
    assert not _excluded(patterns, "docs/NOTES.md")  # * stops at /
    assert _excluded(patterns, "cache/x") and _excluded(patterns, "a/b/cache/x")  # **/ at any depth
    assert _excluded(patterns, "docs/a.tmp") and _excluded(patterns, "docs/x/y/a.tmp")
    assert not _excluded(patterns, "a.tmp")
    assert _excluded(patterns, "tmp1") and not _excluded(patterns, "tmp12")
    assert _excluded(patterns, "weights/x") and not _excluded(patterns, "weights/keep")


def test_dockerignore_keeps_the_venv_git_and_caches_out(dockerignore):
    for path in [
        ".venv/bin/python",
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        ".git/HEAD",
        ".git/objects/pack/pack-1.pack",
        "__pycache__/predict.cpython-311.pyc",
        "musicgen/__pycache__/lm.cpython-311.pyc",
        "musicgen/training/__pycache__/loop.cpython-311.pyc",
        "tests/helpers.pyc",
        ".pytest_cache/v/cache/nodeids",
        "tests/.pytest_cache/README.md",
        ".ruff_cache/0.17.6/123",
        ".mypy_cache/3.11/cache.db",
        "musicgen_cog.egg-info/PKG-INFO",
        ".cog/build/Dockerfile",
        "out.wav",
        "out-stereo.flac",
        "prediction.json",
        "training.json",
        ".coverage",
        "weights/.small.partial-12-ab34/model.safetensors",
        "weights/demucs/.htdemucs.partial-7-cd/htdemucs.yaml",
    ]:
        assert _excluded(dockerignore, path), f"{path} would go into the image"


def test_dockerignore_keeps_weights_and_code_in(dockerignore):
    weights = [
        "weights/.gitkeep",
        "weights/stereo-melody-large/config.json",
        "weights/stereo-melody-large/model.safetensors",
        "weights/small/tokenizer.json",
        "weights/demucs/htdemucs/htdemucs.yaml",
        "weights/t5-base/spiece.model",
    ]
    code = [
        "cog.yaml",
        "predict.py",
        "train.py",
        "requirements.txt",
        "LICENSE",
        *(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "musicgen").rglob("*.py")),
    ]
    for path in weights + code:
        assert not _excluded(dockerignore, path), f"{path} would be left out of the image"
