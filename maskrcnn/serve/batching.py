"""Micro-batching: requests that arrive together run as one `Predictor.predict` call.

One worker thread owns the model. It waits for a request, then keeps collecting requests for up to
`max_wait_s` or until it holds `max_batch_size` of them, and runs them: requests with the same options
(score threshold, classes, tiling) go to the model in one call, in which the Predictor batches images of equal
padded size together; a batch that fails is rerun one request at a time, so only the request at
fault fails. Inference runs on that thread, so the event loop keeps serving while the model
works; each request's `asyncio.Future` is resolved on its own loop.

    batcher = MicroBatcher(predictor, max_batch_size=8, max_wait_s=0.01)
    batcher.start()
    det = await batcher.submit(image, score_thresh=0.5)   # image: (3, H, W) float in [0, 1]
    batcher.stop()
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..structures import Detections

__all__ = ["BatchStats", "MicroBatcher"]

# (score_thresh, classes, tile: a maskrcnn.tiling.TileSettings or None)
Options = tuple[Optional[float], Optional[tuple[str, ...]], Any]


@dataclass
class _Job:
    image: torch.Tensor
    options: Options
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class BatchStats:
    """What the worker has done: `batches` collected, `requests` answered (`failed` of them with an
    error), the `largest_batch` and how many requests went in batches of each size."""

    batches: int = 0
    requests: int = 0
    failed: int = 0
    largest_batch: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "failed": self.failed,
            "largest_batch": self.largest_batch,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class MicroBatcher:
    """Collects concurrent requests into batches for `predictor.predict` (see the module docstring)."""

    _STOP = object()

    def __init__(self, predictor: Any, *, max_batch_size: int = 8, max_wait_s: float = 0.01):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="maskrcnn-batcher", daemon=True)
            self._thread.start()

    def stop(self, *, timeout: float = 30.0) -> None:
        """Finish the requests already queued, then end the worker."""
        if self._thread is not None:
            self._queue.put(self._STOP)
            self._thread.join(timeout)
            self._thread = None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.stats.as_dict()

    async def submit(
        self,
        image: torch.Tensor,
        *,
        score_thresh: float | None = None,
        classes: list[str] | None = None,
        tile: Any = None,
    ) -> Detections:
        """Queue one image (3, H, W) and wait for its Detections (original-image pixels); `tile`:
        tiled inference (`maskrcnn.tiling.TileSettings`)."""
        if self._thread is None:
            raise RuntimeError("MicroBatcher.submit before start()")
        loop = asyncio.get_running_loop()
        options = (score_thresh, tuple(classes) if classes else None, tile)
        job = _Job(image, options, loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    # ---- the worker thread ----------------------------------------------------------------------

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` plus what arrives within max_wait_s, up to max_batch_size -> (jobs, stop seen)."""
        jobs = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(jobs) < self.max_batch_size:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is self._STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _predict(self, jobs: list[_Job], options: Options) -> list[tuple[Any, BaseException | None]]:
        """-> (Detections, None) or (None, error) per job. When a batch fails, its requests are run
        one by one, so that only the request at fault fails."""
        score_thresh, classes, tile = options
        try:
            results = self.predictor.predict(
                [job.image for job in jobs],
                score_thresh=score_thresh,
                classes=list(classes) if classes else None,
                batch_size=self.max_batch_size,
                **({} if tile is None else {"tile": tile}),
            )
            return [(result, None) for result in results]
        except Exception as e:
            if len(jobs) == 1:
                return [(None, e)]
            return [outcome for job in jobs for outcome in self._predict([job], options)]

    def _run(self, jobs: list[_Job]) -> None:
        groups: dict[Options, list[_Job]] = defaultdict(list)
        for job in jobs:
            groups[job.options].append(job)
        failed = 0
        for options, group in groups.items():
            for job, (result, error) in zip(group, self._predict(group, options)):
                failed += error is not None
                job.loop.call_soon_threadsafe(_resolve, job.future, result, error)
        with self._lock:
            s = self.stats
            s.batches += 1
            s.requests += len(jobs)
            s.failed += failed
            s.largest_batch = max(s.largest_batch, len(jobs))
            s.batch_sizes[len(jobs)] = s.batch_sizes.get(len(jobs), 0) + 1

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is self._STOP:
                break
            jobs, stop = self._collect(first)
            self._run(jobs)
