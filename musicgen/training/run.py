"""One call from a dataset to a fine-tuned weights file: the path train.py and the CLI take.

dataset -> checked segments -> EnCodec codes (once, a batch of audio at a time; for MusicGen-Style also
its style excerpts, see `musicgen.training.style`) -> training (in this process, or one process per GPU
through torchrun when several are visible) -> one safetensors file in the format predict.py serves. The
temporary files of a run (the extracted dataset, the workers' job) are removed when it ends, whether it
succeeded or not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import InvalidInputError, MusicGenError
from ..finetuned import FineTuned, load_finetuned, save_finetuned
from ..variants import find_variant
from .dataset import prepare_dataset
from .encode import EncodedSet, encode_dataset
from .loop import Trainer, TrainSettings
from .style import MIN_SEGMENT_SECONDS as STYLE_MIN_SEGMENT_SECONDS
from .style import excerpt_slot_count

MAX_SEGMENT_SECONDS = 30.0  # one window of the model
MIN_LAST_SECONDS = 5.0
# What `write_job` writes into the work folder for the torchrun workers.
JOB_FILES = ("job.json", "train.safetensors", "validation.safetensors")


class TrainingError(MusicGenError):
    """Training could not run to the end (a worker process failed)."""


def fine_tune(
    dataset_path: Path,
    model_version: str,
    out_path: Path,
    settings: TrainSettings = TrainSettings(),
    *,
    segment_seconds: float = MAX_SEGMENT_SECONDS,
    one_same_description: str | None = None,
    work_dir: Path | None = None,
    device: str | None = None,
    gpus: int | None = None,
    log: Callable[[str], None] = print,
) -> FineTuned:
    """Fine-tunes `model_version` on the audio at `dataset_path` and writes the weights to `out_path`.

    Every input is checked before any model is loaded. `gpus`: processes to train with (default: the
    number of visible GPUs; more than one launches torchrun).

    Temporary files go to `work_dir`. Without one, fine_tune makes its own `musicgen-train-*` folder in
    the temp dir and removes it with everything in it when it returns or fails (after the torchrun
    workers have ended). A given `work_dir` is kept, and so is whatever else it holds; fine_tune removes
    only what it wrote there: a `dataset-*` folder (the extracted archive, removed once encoded) and, with
    several GPUs, the workers' `job.json`, `train.safetensors` and `validation.safetensors` once they have
    ended; `work_dir` itself only when fine_tune made it and it is empty at the end. `out_path` is never
    removed.
    """
    variant = find_variant(model_version)
    if variant is None:
        raise InvalidInputError(f"model_version {model_version!r} is not a MusicGen variant.")
    check_segment_seconds(variant.name, segment_seconds)
    settings.check()
    gpus = torch.cuda.device_count() if gpus is None else gpus
    with _work_folder(work_dir) as work:
        return _fine_tune(
            Path(dataset_path),
            variant,
            Path(out_path),
            settings,
            segment_seconds,
            one_same_description,
            work,
            device,
            gpus,
            log,
        )


def _fine_tune(
    dataset_path, variant, out_path, settings, segment_seconds, one_same_description, work, device, gpus, log
) -> FineTuned:
    """fine_tune's work, in the folder `work` that fine_tune cleans up after it."""
    # a last piece teaches something from 5 s on; short segments keep their last half or more
    min_last = min(MIN_LAST_SECONDS, segment_seconds / 2)
    if variant.style:  # and style segments hold twice the longest excerpt, as whole ones do
        min_last = STYLE_MIN_SEGMENT_SECONDS
    # Every user mistake (archive, captions, nothing usable) is reported here, before the model loads.
    with prepare_dataset(
        dataset_path,
        work,
        channels=2 if variant.stereo else 1,
        segment_seconds=segment_seconds,
        one_same_description=one_same_description,
        min_last_seconds=min_last,
    ) as dataset:
        report = dataset.report
        log(report.summary())

        from ..model import MusicGen

        model = MusicGen.load(variant.name, device=device)
        # the audio is read from the extracted files a batch at a time; they are removed right after
        encoded = encode_dataset(
            model, dataset, style_slots=excerpt_slot_count(settings.epochs), seed=settings.seed
        )
    train, validation = split(encoded, settings.validation_split, settings.seed)
    log(f"{len(train)} training segments, {len(validation) if validation else 0} for validation")
    training_info = {"model_version": variant.name, "segment_seconds": segment_seconds, **asdict(settings)}

    if gpus > 1:
        del model  # the workers load their own copies: hand this one's GPU memory back
        torch.cuda.empty_cache()
        return _train_with_torchrun(
            variant.name, train, validation, settings, training_info, report, out_path, work, gpus, log
        )
    trainer = Trainer(model, settings, variant.name, log=log)
    trainer.fit(train, validation)
    tuned = trainer.result(training_info, report.to_dict())
    save_finetuned(Path(out_path), tuned)
    return tuned


def check_segment_seconds(model_version: str, segment_seconds: float) -> None:
    """Refuses a segment length the variant cannot train on: 1 to 30 s, and for the style model at least
    twice the longest style excerpt (`musicgen.training.style`)."""
    if not 1.0 <= segment_seconds <= MAX_SEGMENT_SECONDS:
        raise InvalidInputError(f"segment_seconds must be between 1 and 30, got {segment_seconds}.")
    variant = find_variant(model_version)
    if variant is not None and variant.style and segment_seconds < STYLE_MIN_SEGMENT_SECONDS:
        raise InvalidInputError(
            f"segment_seconds must be at least {STYLE_MIN_SEGMENT_SECONDS:g} for the style model, got "
            f"{segment_seconds:g}: each segment's own excerpt (up to {STYLE_MIN_SEGMENT_SECONDS / 2:g} s) "
            "conditions it and is left out of its loss, so a segment must hold as much music again to "
            "learn from."
        )


@contextmanager
def _work_folder(work_dir: Path | None) -> Iterator[Path]:
    """The folder a fine_tune call writes its temporary files in, cleaned up as fine_tune documents."""
    if work_dir is None:
        work = Path(tempfile.mkdtemp(prefix="musicgen-train-"))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    work = Path(work_dir)
    made = not work.exists()
    try:
        yield work
    finally:
        if made:
            try:
                work.rmdir()  # not rmtree: only when nothing else was put in it meanwhile
            except OSError:
                pass


def split(data: EncodedSet, fraction: float, seed: int) -> tuple[EncodedSet, EncodedSet | None]:
    """A seeded random split; at least one segment stays for training."""
    count = int(len(data) * fraction)
    if count == 0:
        return data, None
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    count = min(count, len(data) - 1)
    return data.subset(order[count:]), data.subset(order[:count])


def _train_with_torchrun(
    model, train, validation, settings, training_info, report, out_path, work, gpus, log
):
    try:
        job = write_job(
            work, model, model, train, validation, settings, training_info, report.to_dict(), out_path
        )
        log(f"training on {gpus} GPUs with torchrun")
        run_workers(job, gpus, backend="nccl")  # returns once every worker has ended
        return load_finetuned(Path(out_path))
    finally:
        # a copy of the encoded data, as large as the training set: not left behind in a given work_dir
        for name in JOB_FILES:
            (work / name).unlink(missing_ok=True)


def write_job(
    work: Path, model: str, base_variant: str, train, validation, settings, training_info, report, out_path
):
    """Writes what workers need: the encoded data and one JSON job file. Returns the job's path."""
    work.mkdir(parents=True, exist_ok=True)
    job_name, train_name, validation_name = JOB_FILES
    job = {
        "model": model,
        "base_variant": base_variant,
        "train": str(train.save(work / train_name)),
        "validation": None if validation is None else str(validation.save(work / validation_name)),
        "settings": asdict(settings),
        "training": training_info,
        "dataset_report": report,
        "out": str(out_path),
    }
    path = work / job_name
    path.write_text(json.dumps(job))
    return path


def run_workers(
    job: Path,
    processes: int,
    backend: str,
    extra_args: tuple[str, ...] = (),
    extra_env: dict | None = None,
    timeout: float | None = None,
):
    """Runs `python -m musicgen.training.worker job.json` in `processes` processes through torchrun."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "musicgen.training.worker",
        str(job),
        f"--backend={backend}",
        *extra_args,
    ]
    env = {**os.environ, **(extra_env or {})}
    done = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
    if done.returncode != 0:
        raise TrainingError(f"the training workers failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return done
