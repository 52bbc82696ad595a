"""Micro-batching: concurrent requests for one operation share one forward pass.

Why: a forward pass over 16 images costs little more than over one, so a server that runs each request
alone wastes most of its compute under load. Each :class:`MicroBatcher` collects the requests that
arrive within ``max_wait_ms`` of the first (or until ``max_batch`` are waiting), hands them to ``fn`` in
ONE call on the model's worker thread, and gives every request its own result.

- All batchers of one server share a single worker thread, so the model never runs two passes at once
  and the event loop never blocks on it.
- If a batched call raises, each request of that batch is retried alone, so one bad input fails only
  its own request (inputs are checked before they get here, so this is a last line of defence).
- State is kept per event loop, so a batcher also works when called from several loops (test clients).
- ``stats`` counts requests and forward passes; tests assert that N concurrent requests took fewer.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["BatchStats", "MicroBatcher"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    """Counters of one batcher: requests in, model calls made, and the largest batch seen."""

    requests: int = 0
    forward_passes: int = 0
    largest_batch: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "forward_passes": self.forward_passes, "largest_batch": self.largest_batch}


@dataclass
class _Window:
    pending: list[tuple[Any, asyncio.Future[Any]]] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class MicroBatcher(Generic[T, R]):
    """Gathers items for up to ``max_wait_ms`` or ``max_batch`` items, then calls ``fn(items) -> results``."""

    def __init__(self, name: str, fn: Callable[[list[T]], Sequence[R]], executor: Executor, *, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.name, self.fn, self.executor = name, fn, executor
        self.max_batch, self.max_wait_s = max_batch, max(0.0, max_wait_ms) / 1000.0
        self.stats = BatchStats()
        self._windows: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Window] = weakref.WeakKeyDictionary()

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result (or its exception)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        window = self._windows.get(loop)
        if window is None or window.task is None:
            window = _Window()
            self._windows[loop] = window
            window.task = loop.create_task(self._collect(loop, window))
        window.pending.append((item, future))
        self.stats.requests += 1
        if len(window.pending) >= self.max_batch:
            window.full.set()
        return await future

    async def _collect(self, loop: asyncio.AbstractEventLoop, window: _Window) -> None:
        try:
            await asyncio.wait_for(window.full.wait(), self.max_wait_s)
        except asyncio.TimeoutError:
            pass
        # close this window: later arrivals open the next one while this batch runs
        self._windows.pop(loop, None)
        jobs = window.pending
        for start in range(0, len(jobs), self.max_batch):
            live = [(item, fut) for item, fut in jobs[start : start + self.max_batch] if not fut.done()]  # skip timed-out requests
            if live:
                await self._run(loop, live)

    async def _run(self, loop: asyncio.AbstractEventLoop, jobs: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        items = [item for item, _ in jobs]
        self.stats.forward_passes += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        try:
            results = await loop.run_in_executor(self.executor, self._call, items)
        except Exception as e:  # noqa: BLE001 - handed to the request, or each retried alone so only the culprit fails
            if len(jobs) == 1:
                _settle(jobs[0][1], False, e)
                return
            self.stats.forward_passes += len(jobs)
            outcomes = await loop.run_in_executor(self.executor, self._call_each, items)
            for (_, fut), (ok, value) in zip(jobs, outcomes):
                _settle(fut, ok, value)
            return
        for (_, fut), value in zip(jobs, results):
            _settle(fut, True, value)

    def _call(self, items: list[T]) -> list[R]:
        out = list(self.fn(items))
        if len(out) != len(items):
            raise RuntimeError(f"batcher {self.name}: {len(items)} items gave {len(out)} results")
        return out

    def _call_each(self, items: list[T]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        for item in items:
            try:
                outcomes.append((True, self._call([item])[0]))
            except Exception as e:  # noqa: BLE001 - handed to the request that sent this item
                outcomes.append((False, e))
        return outcomes


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the request timed out or its client went away
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
