"""Continuous batching: the requests of one model decoded together, one forward per step for all of them.

A decode step reads every weight of the language model once, whatever the batch, so a device that decodes
one clip at a time leaves most of its memory bandwidth unused. `Batcher` runs one decode thread per model:
`submit` queues a prepared request (`MusicGen.prepare`), and at the next step the thread prefills it alone
and its rows join the shared step (continuous batching, as text-LLM servers do: nobody waits for a running
batch to end). A request leaves as soon as its clip is done, cancelled, or failed.

Nothing of a request depends on its batch-mates but the order in which a matrix product sums. Each
request keeps its own key/value cache, positions and prefix; attention runs request by request over
exactly its own positions (`LanguageModel.decode_jobs`); it samples with its own settings and its own
seeded generator. Only the matrix products are shared. On CPU (MKL) a product gives each row the same bits
for any number of rows from 2 up to a threshold that depends on the shape (16 rows for every projection of
small, medium and large; a lone row is padded to two, since a matrix-vector product sums in another
order): the default CPU batch of 4 clips (at most 12 rows) stays under it, and a request then gets the
same codes, bit for bit, alone or in any batch. Past the threshold (a larger MUSICGEN_MAX_BATCH, a GPU,
whose libraries choose kernels by shape too) the logits of a row differ by ~1e-6 relative, which changes a
sampled token only at a near-tie; tests/test_batching.py measures it on the tiny models (their thresholds
are 3 and 6 rows): every code equal, and tests/test_gpu.py holds a GPU to 99 % of codes.
int8 models (musicgen.quantize, CLI only) quantize a product's activations with one scale for all its
rows, so there every request runs its own forward.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field

import torch

from .errors import MusicGenError
from .generation import ClipDecoder

# clips decoded together by default: on a GPU a step costs little more for 16 clips than for one (weight
# reads dominate, docs/PERFORMANCE.md); on CPU the products become compute-bound sooner
DEFAULT_MAX_BATCH = {"cuda": 16, "cpu": 4}
MAX_BATCH_ENV = "MUSICGEN_MAX_BATCH"


def max_batch_for(device: torch.device) -> int:
    """Clips per shared decode: MUSICGEN_MAX_BATCH, else the device's default."""
    text = os.environ.get(MAX_BATCH_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise MusicGenError(f"{MAX_BATCH_ENV}={text!r}: set it to a whole number of clips, 1 or more.")
        return int(text)
    return DEFAULT_MAX_BATCH.get(device.type, DEFAULT_MAX_BATCH["cpu"])


class RequestCancelled(MusicGenError):
    """The request was cancelled before its clip was done."""


@dataclass
class Ticket:
    """A submitted request: the future of its codes [B, K, T], and what happened to it (for its log)."""

    job: object  # musicgen.model.PreparedJob
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    queued_at: float = field(default_factory=time.monotonic)
    joined_at: float | None = None
    first_step_at: float | None = None
    batch_id: int | None = None
    batch_clips: int | None = None  # clips in the shared decode when it joined, itself included
    ahead: int = 0  # requests queued before it, when it was submitted
    decoding: int = 0  # clips in the shared decode when it was submitted
    steps: int = 0
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Removes the request at the next step (or before it starts)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def result(self, timeout: float | None = None) -> torch.Tensor:
        """Blocks until the codes are there; raises the request's error, RequestCancelled, or
        concurrent.futures.CancelledError when `wait` was cancelled (which cancels the future too)."""
        return self.future.result(timeout)

    async def wait(self) -> torch.Tensor:
        """Awaits the codes; if the awaiting task is cancelled, the request is cancelled with it."""
        try:
            return await asyncio.wrap_future(self.future)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def summary(self) -> str:
        """One line for the request's log: queueing, the batch it joined, its time to first step."""
        if self.joined_at is None:
            return f"waited {time.monotonic() - self.queued_at:.2f} s in the queue and never started"
        first = (
            "" if self.first_step_at is None else f", first step {self.first_step_at - self.queued_at:.2f} s"
        )
        return (
            f"queued {self.joined_at - self.queued_at:.2f} s, joined batch {self.batch_id} with "
            f"{self.batch_clips} clip{'s' if self.batch_clips != 1 else ''} (itself included){first} after "
            f"it was queued, {self.steps} steps"
        )


class _Running:
    """A request inside the shared decode: its clip decoder and the logits its next sample is drawn from."""

    def __init__(self, ticket: Ticket, lm):
        job = ticket.job
        self.ticket = ticket
        self.clip = ClipDecoder(
            lm, job.conditions_at, job.batch, job.plan, job.sampling, job.generator(), job.prompt
        )
        self.logits = self.clip.open_window().prefill()
        self.pending_prefill = False  # logits from a prefill: sampled at the next round, not stepped

    @property
    def clips(self) -> int:
        return self.ticket.job.batch


class Batcher:
    """Decodes the requests of one model together (see the module docstring).

    Args:
        model: the `MusicGen` the requests were prepared with.
        max_batch: at most this many clips in the shared decode; later requests wait for room.
    """

    def __init__(self, model, max_batch: int | None = None):
        # held weakly: a model the cache evicts is freed once its last request is done, not kept alive here
        self._model = weakref.ref(model)
        self.max_batch = max_batch or max_batch_for(model.device)
        self._lock = threading.Lock()
        self._queue: deque[Ticket] = deque()
        self._thread: threading.Thread | None = None
        self._batches = 0
        self.running_clips = 0  # for the logs: clips in the shared decode now
        self._lm = None  # the language model while the decode thread runs

    def submit(self, job) -> Ticket:
        """Queues a prepared request (`MusicGen.prepare` of this batcher's model); returns its ticket."""
        ticket = Ticket(job)
        with self._lock:
            ticket.ahead, ticket.decoding = len(self._queue), self.running_clips
            self._queue.append(ticket)
            if self._thread is None:
                self._batches += 1
                self._thread = threading.Thread(
                    target=self._decode, args=(self._batches,), name=f"musicgen-batch-{self._batches}",
                    daemon=True,
                )  # fmt: skip
                self._thread.start()
        return ticket

    def _admit(self, running: list[_Running]) -> list[Ticket] | None:
        """The queued tickets that fit now; None when nothing runs or waits (the thread then ends).

        A request fits when the clips stay within max_batch and, on a GPU, its key/value caches fit in
        the free memory (a request alone always starts, as it would without batching).
        """
        with self._lock:
            if not self._queue and not running:
                self._thread = None
                return None
            taken: list[Ticket] = []
            if not self._queue:  # the usual step: nothing to admit, nothing to ask the device
                return taken
            clips = sum(r.clips for r in running)
            free = _free_device_bytes(self._lm)
            while self._queue:
                job = self._queue[0].job
                need = cache_bytes(self._lm, job)
                alone = clips == 0
                if not alone and (clips + job.batch > self.max_batch or (free is not None and need > free)):
                    break
                taken.append(self._queue.popleft())
                clips += job.batch
                if free is not None:
                    free -= need
            return taken

    @property
    def model(self):
        """The model (None once it was freed)."""
        return self._model()

    def _decode(self, batch_id: int) -> None:
        running: list[_Running] = []
        try:
            self._lm = lm = self._model().lm  # queued requests hold the model (their conditioning does)
            with torch.inference_mode():
                plan = lm.decode_plan()
                while (admitted := self._admit(running)) is not None:
                    for ticket in admitted:
                        if ticket.cancelled:
                            _fail(ticket, RequestCancelled("the request was cancelled while it was queued."))
                            continue
                        try:
                            running.append(_Running(ticket, lm))
                        except Exception as err:  # noqa: BLE001 - its own request fails, the batch goes on
                            _fail(ticket, err)
                            continue
                        ticket.joined_at, ticket.batch_id = time.monotonic(), batch_id
                    for r in running:
                        if r.ticket.batch_clips is None:
                            r.ticket.batch_clips = sum(x.clips for x in running)
                    self.running_clips = sum(r.clips for r in running)
                    running = self._sample(running)
                    if running:
                        self._step(lm, plan, running)
        except BaseException as err:  # a fault of the loop itself: no request may wait forever
            with self._lock:
                stranded = [r.ticket for r in running] + list(self._queue)
                self._queue.clear()
                self._thread = None
            for ticket in stranded:
                _fail(ticket, err)
            raise
        finally:
            self.running_clips = 0
            self._lm = None

    def _sample(self, running: list[_Running]) -> list[_Running]:
        """Each request draws its column from its pending logits; finished windows open the next one.
        Returns the requests that go on."""
        going = []
        for r in running:
            ticket = r.ticket
            if ticket.cancelled:
                _fail(ticket, RequestCancelled("the request was cancelled."))
                continue
            try:
                window = r.clip.window
                window.take(r.logits)
                ticket.steps += 1
                if ticket.first_step_at is None:
                    ticket.first_step_at = time.monotonic()
                if window.done:
                    r.clip.close_window(window.codes())
                    if r.clip.finished:
                        ticket.future.set_result(r.clip.codes())
                        continue
                    r.logits = r.clip.open_window().prefill()  # the next window of a long clip
                    r.pending_prefill = True
            except Exception as err:  # noqa: BLE001 - its own request fails, the batch goes on
                _fail(ticket, err)
                continue
            going.append(r)
        return going

    def _step(self, lm, plan, running: list[_Running]) -> None:
        """One shared forward for the requests whose next column is sampled (not those just prefilled)."""
        feeding = [r for r in running if not r.pending_prefill]
        for r in running:
            r.pending_prefill = False
        if not feeding:
            return
        try:
            _forward(lm, plan, feeding)
        except Exception:  # noqa: BLE001 - find the request that fails alone; the others go on
            for r in feeding:
                try:
                    _forward(lm, plan, [r])
                except Exception as err:  # noqa: BLE001
                    _fail(r.ticket, err)
                    running.remove(r)


def _forward(lm, plan, feeding: list[_Running]) -> None:
    """One forward of the language model for `feeding`; stores each request's logits."""
    columns, caches, positions = [], [], []
    for r in feeding:
        column, position = r.clip.window.next_input()
        columns.append(column)
        caches.append(r.clip.window.cache)
        positions.append(position)
    x = lm.embed_codes(torch.cat(columns)[:, :, None])[:, 0]  # [R, D]
    if plan is None:  # projections wrapped (adapters): each request alone through the modules
        logits = torch.cat(
            [lm.forward_embeds(x_r[:, None], c, p) for x_r, c, p in _split(x, caches, positions)]
        )
    elif plan.packed:  # int8: one activation scale per product would mix the requests; each alone
        logits = torch.cat(
            [lm.decode_jobs(plan, x_r, [c], [p]) for x_r, c, p in _split(x, caches, positions)]
        )
    else:
        logits = lm.decode_jobs(plan, x, caches, positions)  # [R, K, V]
    start = 0
    for r, cache in zip(feeding, caches, strict=True):
        rows = cache.kv.shape[2]
        r.logits = logits[start : start + rows]
        start += rows


def _split(x: torch.Tensor, caches, positions):
    start = 0
    for cache, position in zip(caches, positions, strict=True):
        rows = cache.kv.shape[2]
        yield x[start : start + rows], cache, position
        start += rows


def cache_bytes(lm, job) -> int:
    """Bytes of the key/value caches a request's first window takes (its prefix counted at 512 tokens)."""
    if lm is None:
        return 0
    cfg = lm.cfg
    rows = job.batch * (3 if job.sampling.cfg_beta is not None else 2)
    _, frames, _ = job.plan.windows(0 if job.prompt is None else job.prompt.shape[-1])[0]
    positions = 512 + frames + max(cfg.delays) + 1
    return 2 * cfg.num_layers * rows * cfg.dim * positions * lm.embed.weight.element_size()


# left free on a GPU beside the caches of admitted requests: activations, T5, EnCodec, the allocator's slack
_DEVICE_MARGIN_BYTES = 2 * 1024**3


def _free_device_bytes(lm) -> int | None:
    """Free memory of the language model's GPU minus a margin; None on CPU (the model cache bounds it)."""
    if lm is None or lm.embed.weight.device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(lm.embed.weight.device)
    return free - _DEVICE_MARGIN_BYTES


def _fail(ticket: Ticket, err: BaseException) -> None:
    if not ticket.future.done():
        ticket.future.set_exception(err)


class Batchers:
    """One `Batcher` per loaded model (a fine-tune is a model of its own, so fine-tunes never share a
    forward), made on first use."""

    def __init__(self, max_batch: int | None = None):
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._by_model: dict[int, Batcher] = {}

    def submit(self, model, job) -> Ticket:
        """Queues `job` (prepared by `model`) with the model's batcher; returns its ticket."""
        with self._lock:
            # batchers of freed models go (an id can be reused by a new object: the weak reference tells)
            self._by_model = {k: b for k, b in self._by_model.items() if b.model is not None}
            batcher = self._by_model.get(id(model))
            if batcher is None or batcher.model is not model:
                batcher = self._by_model[id(model)] = Batcher(model, self.max_batch)
            return batcher.submit(job)
