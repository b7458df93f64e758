"""The fine-tuning loop: masked cross-entropy over the delay pattern, as audiocraft's MusicGen solver.

Text encoder and EnCodec stay frozen (their outputs are computed without gradients); the language model
trains whole (`full`) or through LoRA adapters from `peft` (`lora`). Works on one device, or under
`torch.distributed` (one process per GPU, or gloo processes on CPU), where each rank takes its share of
every batch and gradients are averaged. MusicGen-Style trains on excerpts of its own segments, with the
excerpt's frames left out of the loss (`musicgen.training.style` says how and why).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from ..finetuned import FineTuned, changed_tensors, from_peft_state_dict
from ..model import MusicGen
from ..pattern import build_fixed
from .encode import EncodedSet

# every projection of a layer: the attention and feed-forward matrices the issue asks adapters on
LORA_TARGETS = [
    "self_attn.in_proj",
    "self_attn.out_proj",
    "cross_attn.in_proj",
    "cross_attn.out_proj",
    "ff1",
    "ff2",
]


@dataclass
class TrainSettings:
    """How to fine-tune. Defaults follow audiocraft's MusicGen training configs where they exist."""

    method: str = "lora"  # "lora" or "full"
    lora_rank: int = 8
    lora_alpha: float | None = None  # None: equal to the rank (adapter scale 1)
    epochs: int = 3
    batch_size: int = 4
    gradient_accumulation: int = 1
    learning_rate: float | None = None  # None: 1e-4 for LoRA, 1e-5 for full fine-tuning
    warmup_steps: int = 10
    lr_scheduler: str = "cosine"  # or "constant"
    # None: 0.3 for text models, 0.2 for melody models, 0.1 for the style model (audiocraft's CFG dropout)
    condition_dropout: float | None = None
    melody_dropout: float = 0.5  # melody models: drop the melody alone this often (audiocraft)
    # style model: drop the caption alone, and the style excerpt alone, this often (audiocraft's attribute
    # dropout; condition_dropout then drops both)
    text_dropout: float = 0.4
    style_dropout: float = 0.4
    validation_split: float = 0.0
    seed: int = 0
    max_grad_norm: float = 1.0

    def resolved(self, melody: bool, style: bool = False) -> TrainSettings:
        """A copy with the method- and model-dependent defaults filled in."""
        out = TrainSettings(**asdict(self))
        if out.learning_rate is None:
            out.learning_rate = 1e-4 if out.method == "lora" else 1e-5
        if out.lora_alpha is None:
            out.lora_alpha = float(out.lora_rank)
        if out.condition_dropout is None:
            out.condition_dropout = 0.1 if style else 0.2 if melody else 0.3
        return out

    def check(self) -> None:
        """Rejects settings that cannot train, naming the input."""
        rules = [
            (self.method in ("lora", "full"), f"method must be 'lora' or 'full', got {self.method!r}"),
            (
                self.lr_scheduler in ("cosine", "constant"),
                f"lr_scheduler must be cosine or constant, got {self.lr_scheduler!r}",
            ),
            (1 <= self.lora_rank <= 256, f"lora_rank must be between 1 and 256, got {self.lora_rank}"),
            (1 <= self.epochs <= 1000, f"epochs must be between 1 and 1000, got {self.epochs}"),
            (1 <= self.batch_size <= 512, f"batch_size must be between 1 and 512, got {self.batch_size}"),
            (
                1 <= self.gradient_accumulation <= 512,
                f"gradient_accumulation must be 1..512, got {self.gradient_accumulation}",
            ),
            (
                self.learning_rate is None or 1e-7 <= self.learning_rate <= 0.1,
                f"learning_rate must be between 1e-7 and 0.1, got {self.learning_rate}",
            ),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (
                self.condition_dropout is None or 0 <= self.condition_dropout <= 0.9,
                f"condition_dropout must be between 0 and 0.9, got {self.condition_dropout}",
            ),
            (
                0 <= self.validation_split <= 0.45,
                f"validation_split must be between 0 and 0.45, got {self.validation_split}",
            ),
            (0 <= self.text_dropout <= 1, f"text_dropout must be between 0 and 1, got {self.text_dropout}"),
            (
                0 <= self.style_dropout <= 1,
                f"style_dropout must be between 0 and 1, got {self.style_dropout}",
            ),
        ]
        for ok, message in rules:
            if not ok:
                raise InvalidInputError(message + ".")


def training_targets(
    codes: torch.Tensor,
    valid: torch.Tensor,
    delays: list[int],
    special: int,
    excluded: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Inputs, targets and loss mask for teacher forcing with the delay pattern.

    codes: [B, K, T]; valid: [B] frames of real audio; excluded: (first [B], count [B]) frames left out of
    every codebook's loss (a style excerpt's frames, as audiocraft masks them). Returns inputs [B, K, L-1]
    and targets [B, K, L-1] (the sequence shifted by one) and mask [B, K, L-1]: True where the target is a
    real frame of real audio (not the special token of the pattern, not a masked tail, not excluded).
    """
    B, K, T = codes.shape
    seq, _ = build_fixed(codes, B, T, delays, special, codes.device)  # [B, K, L]
    inputs, targets = seq[:, :, :-1], seq[:, :, 1:]
    # target column c holds frame c - delay[k] of codebook k
    frame = (
        torch.arange(targets.shape[-1], device=codes.device)[None, :]
        - torch.tensor(delays, device=codes.device)[:, None]
    )
    mask = (frame[None] >= 0) & (frame[None] < valid[:, None, None].to(codes.device))
    if excluded is not None:
        first, count = (t.to(codes.device)[:, None, None] for t in excluded)
        mask &= (frame[None] < first) | (frame[None] >= first + count)
    return inputs, targets, mask


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """audiocraft's loss: the cross-entropy of each codebook over its valid targets, averaged over codebooks.

    logits: [B, K, S, card]; targets, mask: [B, K, S].
    """
    K = targets.shape[1]
    total = logits.new_zeros((), dtype=torch.float32)
    for k in range(K):
        m = mask[:, k]
        total = total + F.cross_entropy(logits[:, k][m].float(), targets[:, k][m])
    return total / K


def _schedule(settings: TrainSettings, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / (settings.warmup_steps + 1)
        if settings.lr_scheduler == "constant":
            return 1.0
        progress = (step - settings.warmup_steps) / max(1, total_steps - settings.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    """Fine-tunes `model`'s language model on an `EncodedSet`; `result()` gives the weights to save."""

    def __init__(
        self, model: MusicGen, settings: TrainSettings, base_variant: str, log: Callable[[str], None] = print
    ):
        settings.check()
        self.model = model
        self.settings = settings.resolved(model.config.is_melody, model.config.is_style)
        self.base_variant = base_variant
        self.log = log
        self.device = model.device
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        lm = model.lm.float()  # fp32 master weights; bf16 autocast on CUDA
        self.base_state = (
            {k: v.detach().clone() for k, v in lm.state_dict().items()}
            if self.settings.method == "full"
            else None
        )
        if self.settings.method == "lora":
            import peft

            targets = [t for t in LORA_TARGETS if "cross_attn" not in t or lm.cfg.conditioning == "cross"]
            config = peft.LoraConfig(
                r=self.settings.lora_rank,
                lora_alpha=self.settings.lora_alpha,
                lora_dropout=0.0,
                target_modules=targets,
            )
            self.trainable = peft.get_peft_model(lm, config)
            self.targets = targets
        else:
            lm.requires_grad_(True)
            self.trainable = lm
        self.trainable.train()
        self.module = self.trainable
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = torch.nn.parallel.DistributedDataParallel(self.trainable, device_ids=device_ids)
        params = [p for p in self.trainable.parameters() if p.requires_grad]
        decay = 0.0 if self.settings.method == "lora" else 0.1
        self.optimizer = torch.optim.AdamW(
            params, lr=self.settings.learning_rate, betas=(0.9, 0.95), weight_decay=decay
        )
        self.params = params
        # the batch order must agree across ranks; dropout draws are each rank's own
        self.order_generator = torch.Generator().manual_seed(self.settings.seed)
        # one stream per rank; wrapped into torch's 64-bit seed range for the largest seeds
        self.generator = torch.Generator().manual_seed((self.settings.seed * 1000 + self.rank + 1) % 2**64)
        self.history: list[dict] = []

    # ---- one batch ---------------------------------------------------------------------------------
    def _conditions(self, captions: list[str], chroma: torch.Tensor | None, train: bool):
        """T5 states (frozen) and chroma with condition dropout applied when training."""
        s, B = self.settings, len(captions)
        captions = list(captions)
        if chroma is not None:
            from ..chroma import null_chroma

            chroma = chroma.clone()
        if train:
            drop_all = torch.rand(B, generator=self.generator) < s.condition_dropout
            drop_melody = torch.rand(B, generator=self.generator) < s.melody_dropout
            for b in range(B):
                if drop_all[b]:
                    captions[b] = None
                if chroma is not None and (drop_all[b] or drop_melody[b]):
                    chroma[b] = null_chroma(1, chroma.shape[1])[0]
        states, mask = self.model.text.encode(captions)
        # encode() runs in inference mode; plain copies may enter a graph that needs gradients
        return states.clone(), mask.clone(), None if chroma is None else chroma.to(self.device)

    def _style_conditions(self, batch: EncodedSet, train: bool):
        """Style models: (captions with dropout applied, StyleBatch). Training: one random excerpt slot and
        a random number of codebooks for the whole batch, per-row dropout of caption and style; otherwise
        slot 0, the model's eval_q codebooks, nothing dropped."""
        from .style import drop_conditions, style_batch

        s, model = self.settings, self.model
        if batch.style_codes is None:
            raise InvalidInputError(
                "the style model trains on data encoded with its style excerpts (encode_segments / "
                "encode_dataset with the style model)"
            )
        cfg = model.config.style
        B, slots = batch.style_codes.shape[:2]
        if train:
            slot = int(torch.randint(slots, (1,), generator=self.generator))
            n_q = int(torch.randint(1, cfg.num_quantizers + 1, (1,), generator=self.generator))
            keep_text, keep_style = drop_conditions(
                B, self.generator, s.condition_dropout, s.text_dropout, s.style_dropout
            )
        else:
            slot, n_q = 0, cfg.eval_q
            keep_text = keep_style = torch.ones(B, dtype=torch.bool)
        captions = [c if k else None for c, k in zip(batch.captions, keep_text.tolist(), strict=True)]
        hop = model.config.sample_rate // model.config.frame_rate
        style = style_batch(
            model.style.encoder,
            batch.style_codes[:, slot],
            batch.style_starts[:, slot],
            batch.style_lengths[:, slot],
            keep_style,
            n_q,
            hop,
        )
        return captions, style

    def _loss(self, batch: EncodedSet, train: bool) -> tuple[torch.Tensor, int]:
        cfg = self.model.config.lm
        codes = batch.codes.to(self.device)
        valid = batch.valid.to(self.device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        if self.model.config.is_style:
            captions, style = self._style_conditions(batch, train)
            excluded = (style.first, style.count)
            inputs, targets, mask = training_targets(codes, valid, cfg.delays, cfg.card, excluded)
            states, text_mask = self.model.text.encode(captions)
            with autocast:
                # encode() runs in inference mode; plain copies may enter a graph that needs gradients
                logits = self.module(
                    inputs, states.clone(), text_mask.clone(), None, style.tokens, style.mask
                )
            return masked_cross_entropy(logits, targets, mask), int(mask.sum())
        inputs, targets, mask = training_targets(codes, valid, cfg.delays, cfg.card)
        states, text_mask, chroma = self._conditions(batch.captions, batch.chroma, train)
        with autocast:
            logits = self.module(inputs, states, text_mask, chroma)
        return masked_cross_entropy(logits, targets, mask), int(mask.sum())

    # ---- epochs ------------------------------------------------------------------------------------
    def fit(self, data: EncodedSet, validation: EncodedSet | None = None) -> list[dict]:
        """Trains for the configured epochs; returns one record per optimizer step (loss, lr, speed)."""
        s = self.settings
        per_rank = s.batch_size  # each rank takes batch_size rows of every global batch of world * batch_size
        batches_per_epoch = max(1, math.ceil(len(data) / (per_rank * self.world)))
        steps_per_epoch = max(1, batches_per_epoch // s.gradient_accumulation)
        total = steps_per_epoch * s.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(s, total))
        step = 0
        bar = tqdm(total=total, disable=self.rank != 0, desc="training", unit="step")
        for epoch in range(s.epochs):
            order = torch.randperm(len(data), generator=self.order_generator)
            micro = 0
            started, frames = time.perf_counter(), 0
            for start in range(0, batches_per_epoch * per_rank * self.world, per_rank * self.world):
                rows = order[start : start + per_rank * self.world]
                rows = rows[self.rank :: self.world] if len(rows) >= self.world else rows
                loss, tokens = self._loss(data.subset(rows), train=True)
                (loss / s.gradient_accumulation).backward()
                frames += tokens
                micro += 1
                if micro % s.gradient_accumulation:
                    continue
                torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm)
                self.optimizer.step()
                scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                elapsed = time.perf_counter() - started
                record = {
                    "epoch": epoch + 1,
                    "step": step,
                    "loss": float(loss.detach()),
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": frames / max(elapsed, 1e-9),
                }
                self.history.append(record)
                bar.update()
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
                if self.rank == 0:
                    self.log(
                        f"epoch {epoch + 1} step {step}/{total} loss {record['loss']:.4f} "
                        f"lr {record['lr']:.3g} {record['tokens_per_s']:.0f} tokens/s"
                    )
            if validation is not None and len(validation) and self.rank == 0:
                self.log(f"epoch {epoch + 1} validation loss {self.validate(validation):.4f}")
        bar.close()
        return self.history

    @torch.no_grad()
    def validate(self, data: EncodedSet) -> float:
        """Mean loss over `data`, without condition dropout."""
        self.trainable.eval()
        losses, weights = [], []
        for start in range(0, len(data), self.settings.batch_size):
            rows = torch.arange(start, min(start + self.settings.batch_size, len(data)))
            loss, tokens = self._loss(data.subset(rows), train=False)
            losses.append(float(loss) * tokens)
            weights.append(tokens)
        self.trainable.train()
        return sum(losses) / max(1, sum(weights))

    def result(self, training: dict, dataset_report: dict) -> FineTuned:
        """The fine-tuned weights in the format predict.py serves."""
        s = self.settings
        cfg = self.model.config.lm
        if s.method == "lora":
            import peft

            tensors = from_peft_state_dict(peft.get_peft_model_state_dict(self.trainable))
            return FineTuned(
                base_variant=self.base_variant,
                method="lora",
                tensors={k: v.detach().cpu() for k, v in tensors.items()},
                lm_config=cfg,
                lora_rank=s.lora_rank,
                lora_alpha=s.lora_alpha,
                target_modules=self.targets,
                training=training,
                dataset_report=dataset_report,
            )
        tuned = {k: v.detach().cpu() for k, v in self.trainable.state_dict().items()}
        return FineTuned(
            base_variant=self.base_variant,
            method="full",
            tensors=changed_tensors({k: v.cpu() for k, v in self.base_state.items()}, tuned),
            lm_config=cfg,
            training=training,
            dataset_report=dataset_report,
        )
