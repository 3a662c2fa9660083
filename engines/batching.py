"""Dynamic batching: concurrent requests' images of one loaded model share core forwards.

Each loaded model has one :class:`Batcher`. A request's images, once pre-processed, are queued
as items; a single task per batcher takes the oldest item and every queued item that can share
its forward (same pre-processed shapes, equal forward options), up to ``max_batch_size``, and
runs them as one ``Pipeline.forward`` on the compute executor. While a forward runs, new items
queue up, so on a busy server batches form by themselves ("continuous" batching); with
``max_batch_delay_ms`` the task also waits that long after the oldest item arrived for the batch
to fill (worth it on GPUs, where a larger batch costs little more than a small one).

Results go back to each item's request in order. A batched forward that fails is run again
image by image, so one bad image fails only its own request.

An idle batcher (nothing queued, no forward of its own running) lends its turn to a request
that runs alone (:meth:`Batcher.alone`: the pool's single-image path, all steps in one job on
the compute thread); images queued meanwhile wait for the turn and then share a forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from engines.base import Prepared

T = TypeVar("T")

log = logging.getLogger(__name__)
# Fields of an HTTP request that are not options of the forward (they never reach it).
REQUEST_ONLY_FIELDS = frozenset({"images", "variant"})

Forward = Callable[[list[Prepared], Any], list[Any]]
RunForward = Callable[[Forward, list[Prepared], Any], Awaitable[list[Any]]]


def options_key(options: Any) -> Hashable:
    """A key equal for options that make the forward compute the same thing.

    msgspec Structs and dataclasses compare by their fields (the request's images and variant
    left out); anything else only equals itself.
    """
    if options is None:
        return None
    if isinstance(options, msgspec.Struct):
        names: Sequence[str] = options.__struct_fields__
    elif dataclasses.is_dataclass(options):
        names = [f.name for f in dataclasses.fields(options)]
    else:
        return ("id", id(options))
    values = {n: getattr(options, n) for n in names if n not in REQUEST_ONLY_FIELDS}
    try:
        return type(options).__qualname__, msgspec.msgpack.encode(values)
    except TypeError:  # a field msgpack cannot encode: no sharing
        return ("id", id(options))


@dataclass
class _Item:
    prepared: Prepared
    options: Any
    key: Hashable
    future: asyncio.Future[Any]
    queued_at: float


@dataclass
class BatchLimits:
    """How large a batch may grow and how long the oldest image may wait for it to fill.

    Attributes:
        max_batch_size: Most images in one forward.
        max_delay_s: Wait after the oldest queued image arrived (0: take what is queued).
    """

    max_batch_size: int = 8
    max_delay_s: float = 0.0


@dataclass
class Batcher:
    """Gathers the queued images of one loaded model into shared forwards.

    Args:
        forward: The pipeline's ``forward(batch, options) -> raw outputs``.
        run: Runs ``forward`` off the event loop (the pool's compute executor) and awaits it.
        limits: Batch size and delay.
        on_batch: Called with each forward's image count as the batch is formed (an observer,
            e.g. the service's metrics); its errors are logged, never raised into the batch.
    """

    forward: Forward
    run: RunForward
    limits: BatchLimits
    on_batch: Callable[[int], None] | None = None
    sizes: Counter[int] = field(default_factory=Counter)
    _queue: deque[_Item] = field(default_factory=deque)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    _task: asyncio.Task[None] | None = None
    _loop_of_task: asyncio.AbstractEventLoop | None = None

    def _bind(self) -> asyncio.AbstractEventLoop:
        """The running loop; a new one (a script's second ``asyncio.run``) starts afresh."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop_of_task:
            self._queue.clear()
            self._wakeup, self._turn = asyncio.Event(), asyncio.Lock()
            self._task, self._loop_of_task = None, loop
        return loop

    async def submit(self, prepared: Sequence[Prepared], options: Any) -> list[Any]:
        """Queue one request's pre-processed images; their raw outputs, in order.

        Raises:
            Exception: What the forward raised for one of these images (alone).
        """
        loop = self._bind()
        key = options_key(options)
        items = [
            _Item(p, options, (p.batch_key, key), loop.create_future(), loop.time())
            for p in prepared
        ]
        self._queue.extend(items)
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="batcher")
        return await gather_list([item.future for item in items])

    @property
    def pending(self) -> int:
        """Images queued for a forward that has not started."""
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing queued and no forward of this batcher's (or one run alone) under way."""
        return not self._queue and not self._turn.locked()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        """Hold the batcher's turn for one image run outside the queue.

        Counted as a forward of one image; images queued meanwhile wait, then share the next
        forward.
        """
        self._bind()
        async with self._turn:
            self.record(1)
            yield

    async def close(self) -> None:
        """Stop the batching task (the pool has waited for in-flight requests first)."""
        if self._task is not None and self._loop_of_task is asyncio.get_running_loop():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None  # a task of an event loop that has ended went with it
        for item in self._queue:
            if not item.future.done():
                item.future.cancel()
        self._queue.clear()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait_s = self._queue[0].queued_at + self.limits.max_delay_s - loop.time()
            if wait_s > 0 and self._shareable(self._queue[0].key) < self.limits.max_batch_size:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait_s)
                except TimeoutError:
                    pass
                if loop.time() < self._queue[0].queued_at + self.limits.max_delay_s:
                    continue  # woken by a new item: look again whether the batch is full
            async with self._turn:  # after any image run alone: what queued meanwhile shares
                batch = self._take()
                await self._run(batch)

    def _shareable(self, key: Hashable) -> int:
        return sum(1 for item in self._queue if item.key == key)

    def _take(self) -> list[_Item]:
        """The oldest item and the queued items that can share its forward, in order."""
        first = self._queue[0]
        batch: list[_Item] = []
        rest: deque[_Item] = deque()
        for item in self._queue:
            if item.key == first.key and len(batch) < self.limits.max_batch_size:
                batch.append(item)
            else:
                rest.append(item)
        self._queue = rest
        return [item for item in batch if not item.future.cancelled()]

    def record(self, size: int) -> None:
        """Count a forward of ``size`` images (also one the pool ran without the queue)."""
        self.sizes[size] += 1
        if self.on_batch is not None:
            try:
                self.on_batch(size)
            except Exception:
                log.exception("the batch observer failed")

    async def _run(self, batch: list[_Item]) -> None:
        if not batch:
            return
        self.record(len(batch))
        try:
            outputs = await self.run(self.forward, [i.prepared for i in batch], batch[0].options)
        except asyncio.CancelledError:
            for item in batch:
                item.future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exception=exc)
                return
            log.info("a batch of %d failed (%s); running its images one by one", len(batch), exc)
            for item in batch:
                await self._run([item])
            return
        for item, output in zip(batch, outputs, strict=True):
            _settle(item, result=output)


async def gather_list(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """``asyncio.gather`` as a list; one awaitable is awaited in place.

    gather wraps each coroutine in a task that starts on the loop's next turn and adds a future
    of its own: for the single image of most requests that is two loop turns for nothing on the
    latency path.
    """
    if len(awaitables) == 1:
        return [await awaitables[0]]
    return list(await asyncio.gather(*awaitables))


def _settle(item: _Item, *, result: Any = None, exception: BaseException | None = None) -> None:
    if item.future.done():  # its request went away
        return
    if exception is not None:
        item.future.set_exception(exception)
    else:
        item.future.set_result(result)
