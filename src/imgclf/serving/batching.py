"""Inference off the event loop: one worker thread, a bounded queue, optional gathering of requests.

Every forward pass runs on this one thread, so torch's thread count is fixed and requests never
compete for cores. Its jobs hold model-sized pixels (decoded and resized by
:mod:`imgclf.serving.decoding`'s pool) or a preprocessed FP32 tensor, so no request's decoding holds up
another's forward pass. A request whose client is gone (its future cancelled) is dropped before its
batch runs. With ``batch_delay_s > 0`` the worker gathers requests for the same model into one batch: it
takes every job already queued and waits up to that long for more, but only while other inference
requests are in progress (``active``), so a lone client never waits. The default is 0: each request is
its own batch, so its probabilities are bitwise those of ``Classifier.predict`` on the same images
(oneDNN picks different kernels for different batch sizes in the small late layers: ~1e-7 apart).

Usage::

    queue = InferenceQueue(max_queue=1024, batch_delay_s=0.0)
    queue.start()
    future = queue.submit(served, pixels=uint8_nhwc)      # Future of ((N, C) probabilities, OOD flags | None)
    probs = queue.submit(served, tensor=batch).result()   # (N, C) for a preprocessed float32 batch
    queue.stop()                                          # finishes the queued jobs first
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgclf.serving.models import ServedModel

MAX_BATCH = 64  # images per forward pass; also imgclf predict's default --batch-size


class QueueFull(Exception):
    """The queue holds ``max_queue`` images already; the caller answers 503."""


@dataclass(eq=False)  # identity: the queue removes jobs by identity, and arrays have no plain ==
class InferenceJob:
    """One request's work: decoded, resized images (``pixels``) or a preprocessed FP32 batch (``tensor``)."""

    model: ServedModel
    pixels: np.ndarray | None = None
    tensor: np.ndarray | None = None
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        """Images in this job."""
        batch = self.tensor if self.tensor is not None else self.pixels
        return 0 if batch is None else len(batch)


def tensor_probabilities(model: ServedModel, batch: np.ndarray) -> np.ndarray:
    """Probabilities (N, C) for an already-preprocessed float32 batch (N, 3, H, W)."""
    return model.classifier.predict_proba_input(batch)


def _run_pixels(jobs: list[InferenceJob]) -> list[Any]:
    # One job alone is classified as imgclf predict classifies its batch: bitwise the same numbers.
    arrays = [job.pixels for job in jobs if job.pixels is not None]  # every job here holds pixels
    pixels = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    # With the out-of-distribution flags (None when the file has no threshold) from the same pass.
    probs, flags = jobs[0].model.classifier.predict_proba_flagged(pixels, batch_size=MAX_BATCH)
    out, start = [], 0
    for job in jobs:
        end = start + job.size
        out.append((probs[start:end], None if flags is None else flags[start:end]))
        start = end
    return out


class InferenceQueue:
    """A bounded FIFO of jobs served by one worker thread.

    Args:
        max_queue: Most images waiting (not yet running); beyond it :meth:`submit` raises QueueFull.
        batch_delay_s: How long the worker waits to gather more requests into one batch (0: never).
        on_batch: Called with the image count of every batch run (for metrics).
        active: Returns how many inference requests are in progress (read from this thread, so a plain
            counter); the worker waits for more jobs only while some of them have not queued theirs.
            None: always wait out ``batch_delay_s``.
    """

    def __init__(
        self,
        max_queue: int,
        batch_delay_s: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
        active: Callable[[], int] | None = None,
    ) -> None:
        self.max_queue = max_queue
        self.batch_delay_s = batch_delay_s
        self._on_batch = on_batch or (lambda n: None)
        self._active = active
        self._jobs: collections.deque[InferenceJob] = collections.deque()
        self._waiting = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="imgclf-inference", daemon=True)

    @property
    def depth(self) -> int:
        """Images waiting in the queue."""
        return self._waiting

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Refuse new jobs, let the worker finish the queued ones, join it (at most ``timeout`` s)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(
        self, model: ServedModel, pixels: np.ndarray | None = None, tensor: np.ndarray | None = None
    ) -> Future:
        """Queue uint8 ``pixels`` (N, H, W, 3) or a preprocessed ``tensor`` for ``model``; return its future.

        The future's result is the (N, C) probability array for a ``tensor``; for ``pixels``, the pair of
        that array and the out-of-distribution flags (``None`` when the model has no threshold).

        Raises:
            QueueFull: If accepting it would put more than ``max_queue`` images in the queue.
        """
        job = InferenceJob(model, pixels, tensor)
        with self._cond:
            if self._stopping or self._waiting + job.size > self.max_queue:
                raise QueueFull(f"{self._waiting} images queued (limit {self.max_queue})")
            self._jobs.append(job)
            self._waiting += job.size
            self._cond.notify()
        return job.future

    def _take(self, model: ServedModel | None, room: int) -> InferenceJob | None:
        """Pop the first live job (of ``model`` and fitting in ``room``, when given); drop cancelled ones."""
        for job in list(self._jobs):
            if model is not None and (job.model is not model or job.tensor is not None or job.size > room):
                continue
            self._jobs.remove(job)
            self._waiting -= job.size
            if job.future.set_running_or_notify_cancel():  # False: its client is gone, drop it
                return job
        return None

    def _gather(self) -> list[InferenceJob] | None:
        with self._cond:
            job = None
            while job is None:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._jobs:
                    return None
                job = self._take(None, MAX_BATCH)
            batch, total = [job], job.size
            if job.tensor is not None or self.batch_delay_s <= 0:
                return batch
            deadline = time.monotonic() + self.batch_delay_s
            while total < MAX_BATCH and not self._stopping:
                more = self._take(job.model, MAX_BATCH - total)
                if more is not None:
                    batch.append(more)
                    total += more.size
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._more_coming(len(batch)):
                    break
                self._cond.wait(remaining)
            return batch

    def _more_coming(self, gathered: int) -> bool:
        """Whether requests in progress have yet to queue their job (called with the lock held)."""
        return self._active is None or self._active() > gathered + len(self._jobs)

    def _work(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            try:
                if batch[0].tensor is not None:
                    results: list[Any] = [tensor_probabilities(batch[0].model, batch[0].tensor)]
                else:
                    results = _run_pixels(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request, never lost
                for job in batch:
                    job.future.set_exception(exc)
                continue
            self._on_batch(sum(job.size for job in batch))
            for job, result in zip(batch, results, strict=True):
                job.future.set_result(result)
