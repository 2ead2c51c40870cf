"""Dynamic batching: guard inputs from concurrent requests packed into one ``Guard.classify_many`` decode."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import LoraGuardError
from ..guard import GuardResult

ClassifyMany = Callable[[list[str], list[str | None]], list[GuardResult]]


class QueueFullError(Exception):
    """More inputs are waiting than the server accepts; the client should retry later (HTTP 429)."""


@dataclass(frozen=True)
class BatchDone:
    """What a batch cost, for the server's metrics."""

    context: int  # the guard context that scored it
    size: int  # inputs
    in_use: int  # contexts decoding as it started, its own included
    seconds: float  # how long its context was busy with it


@dataclass
class _Pending:
    text: str
    response: str | None
    future: asyncio.Future[GuardResult]
    since: float


class Batcher:
    """Collects (text, response) pairs and scores them in batches on a pool of guard contexts.

    Each context has a worker of its own: an idle worker closes a batch when the queue holds ``max_batch`` inputs
    or when its oldest input has waited ``window_s``, and scores it on its context while the other workers take
    the next batches, so that several batches decode at once. At most ``max_pending`` inputs wait at a time;
    beyond that :meth:`classify` raises :class:`QueueFullError` at once rather than letting latency grow without
    bound. Each context's native calls run on a thread of its own, off the event loop.
    """

    def __init__(
        self,
        contexts: Sequence[ClassifyMany],
        *,
        window_s: float,
        max_batch: int,
        max_pending: int,
        on_batch: Callable[[BatchDone], None] = lambda _done: None,
    ) -> None:
        self._contexts = list(contexts)
        self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"loraguard-guard-{i}")
                           for i in range(len(self._contexts))]
        self._window_s = window_s
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._on_batch = on_batch
        self._pending: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self.busy = 0  # contexts decoding now

    @property
    def depth(self) -> int:
        """Inputs waiting for a batch."""
        return len(self._pending)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._run(i), name=f"loraguard-batcher-{i}")
                         for i in range(len(self._contexts))]

    async def stop(self) -> None:
        """Stop after the batches in flight; inputs still waiting fail (requests in flight finish first)."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for executor in self._executors:
            executor.shutdown(wait=True)
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(LoraGuardError("the server is shutting down"))

    async def classify(self, pairs: Sequence[tuple[str, str | None]]) -> list[GuardResult]:
        if len(self._pending) + len(pairs) > self._max_pending:
            raise QueueFullError(
                f"{len(self._pending)} inputs are waiting and this request adds {len(pairs)} (limit "
                f"{self._max_pending}): retry later"
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        items = [_Pending(text, response, loop.create_future(), now) for text, response in pairs]
        self._pending.extend(items)
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            # A request that gave up (timeout, disconnect) leaves nothing for the worker to score.
            for item in items:
                item.future.cancel()

    async def _run(self, context: int) -> None:
        while True:
            await self._arrived.wait()
            if not self._pending:
                self._arrived.clear()
                continue
            if len(self._pending) < self._max_batch:
                await asyncio.sleep(max(0.0, self._pending[0].since + self._window_s - time.monotonic()))
            # Another worker may have taken the inputs meanwhile: then this batch is empty and the worker waits.
            batch: list[_Pending] = []
            while self._pending and len(batch) < self._max_batch:
                item = self._pending.popleft()
                if not item.future.done():
                    batch.append(item)
            if not self._pending:
                self._arrived.clear()
            if batch:
                self.busy += 1
                in_use, start = self.busy, time.perf_counter()
                try:
                    await self._score(context, batch)
                finally:
                    self.busy -= 1
                    self._on_batch(BatchDone(context, len(batch), in_use, time.perf_counter() - start))

    async def _score(self, context: int, batch: list[_Pending]) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executors[context], self._contexts[context], [i.text for i in batch],
                [i.response for i in batch],
            )
        except LoraGuardError as e:
            if len(batch) == 1:
                _settle(batch[0], exception=e)
                return
            # One input the runtime refuses (too long under overflow="error") must fail only its own request.
            for item in batch:
                await self._score(context, [item])
            return
        except Exception as e:
            for item in batch:
                _settle(item, exception=e)
            return
        for item, result in zip(batch, results, strict=True):
            _settle(item, result=result)


def _settle(item: _Pending, *, result: GuardResult | None = None, exception: BaseException | None = None) -> None:
    if item.future.done():
        return
    if exception is not None:
        item.future.set_exception(exception)
    else:
        item.future.set_result(result)  # type: ignore[arg-type]
