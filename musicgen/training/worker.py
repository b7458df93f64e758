"""One data-parallel training process: `torchrun ... -m musicgen.training.worker job.json`.

Every rank loads the model and the encoded data named in the job, trains its share of each batch with
gradients averaged across ranks, and rank 0 writes the weights. With `--dump DIR` each rank also saves
its trainable tensors, so a test can check that all ranks hold the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from ..finetuned import save_finetuned
from .encode import EncodedSet
from .loop import Trainer, TrainSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", type=Path)
    parser.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    parser.add_argument("--dump", type=Path, help="save each rank's trainable tensors here")
    args = parser.parse_args(argv)
    job = json.loads(args.job.read_text())

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = "cpu"
    if args.backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group(backend=args.backend)
    try:
        from ..model import MusicGen

        model = MusicGen.load(job["model"], device=device)
        train = EncodedSet.load(Path(job["train"]))
        validation = EncodedSet.load(Path(job["validation"])) if job["validation"] else None
        trainer = Trainer(model, TrainSettings(**job["settings"]), job["base_variant"])
        trainer.fit(train, validation)
        if args.dump is not None:
            args.dump.mkdir(parents=True, exist_ok=True)
            tensors = {
                k: v.detach().cpu().contiguous()
                for k, v in trainer.trainable.named_parameters()
                if v.requires_grad
            }
            save_file(tensors, str(args.dump / f"rank{dist.get_rank()}.safetensors"))
        if dist.get_rank() == 0:
            save_finetuned(Path(job["out"]), trainer.result(job["training"], job["dataset_report"]))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
