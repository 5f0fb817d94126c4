"""When each check probes next: one timer for every check, instead of a task per check.

A task per check sleeping between its ticks costs 2.4 kB a check in asyncio's objects (the task,
its coroutine's frame, the sleep's future and timer handle, the entry in the loop's set of all
tasks): 12 MB with 5000 checks, for nothing but waiting. Here a check waiting is one slot in a
heap; only a tick under way is a task (a few dozen at once at 1000 probes/s).

A check's ticks never overlap: the next one is put on the heap when the current one ends, on
the check's grid (`offset + k * interval`: the same phase across reloads and restarts). A tick
that ended late skips the slots it missed instead of firing them in a burst.

Ticks are hundreds a second, so their tasks are the schedule's own (a set and a callback), not
the daemon's supervisor's (whose bookkeeping is for long-lived tasks); `run` ends them all when
it is cancelled, and an unexpected error in one is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Schedule", "Slot"]

log = logging.getLogger(__name__)


class Slot:
    """One check's place on the schedule: its grid, its tick, and the tick under way."""

    __slots__ = ("cancelled", "interval", "name", "next_at", "running", "tick")

    def __init__(
        self, name: str, interval: float, next_at: float, tick: Callable[[], Awaitable[None]]
    ) -> None:
        self.name = name
        self.interval = interval
        self.next_at = next_at
        self.tick = tick
        self.cancelled = False
        self.running: asyncio.Task[None] | None = None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Schedule:
    """Runs each slot's tick at its times, from one task (`run`)."""

    def __init__(self) -> None:
        self._ticks: set[asyncio.Task[None]] = set()  # under way
        self._heap: list[tuple[float, int, Slot]] = []
        self._order = itertools.count()  # ties in time go first come, first served
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_until = float("inf")

    def add(
        self,
        name: str,
        interval: float,
        offset: float,
        tick: Callable[[], Awaitable[None]],
        now: float,
    ) -> Slot:
        """A slot whose first tick is the next point of its grid from `now` (loop time)."""
        slot = Slot(name, interval, now + ((offset - now) % interval), tick)
        self._push(slot)
        return slot

    def cancel(self, slot: Slot) -> asyncio.Task[None] | None:
        """Take the slot off the schedule; its tick under way, if any, is returned for the
        caller to cancel (the slot stays in the heap until its time comes, then is dropped)."""
        slot.cancelled = True
        return slot.running

    def __len__(self) -> int:
        """Slots waiting in the heap (cancelled ones included until their time)."""
        return len(self._heap)

    def _push(self, slot: Slot) -> None:
        heapq.heappush(self._heap, (slot.next_at, next(self._order), slot))
        if slot.next_at < self._waiting_until and self._waiter is not None:
            _wake(self._waiter)  # an earlier time than the one `run` sleeps until

    async def run(self) -> None:
        """Until cancelled; then the ticks under way are cancelled and awaited."""
        try:
            await self._run()
        finally:
            ticks = list(self._ticks)
            for task in ticks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*ticks, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            heap = self._heap
            due = heap[0][0] if heap else float("inf")
            if due > loop.time():
                waiter = self._waiter = loop.create_future()
                self._waiting_until = due
                timer = loop.call_at(due, _wake, waiter) if heap else None
                try:
                    await waiter
                finally:
                    self._waiter = None
                    self._waiting_until = float("inf")
                    if timer is not None:
                        timer.cancel()
                continue
            _, _, slot = heapq.heappop(heap)
            if not slot.cancelled:
                task = slot.running = loop.create_task(self._tick(slot))
                self._ticks.add(task)
                task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._ticks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error(
                "a probe tick ended with an unexpected error",
                exc_info=(type(error), error, error.__traceback__),
            )

    async def _tick(self, slot: Slot) -> None:
        try:
            await slot.tick()
        finally:
            slot.running = None
            if not slot.cancelled:
                loop = asyncio.get_running_loop()
                slot.next_at += slot.interval
                late = loop.time() - slot.next_at
                if late > 0:
                    # a stalled loop or a slow tick: skip the missed slots
                    slot.next_at += (late // slot.interval + 1) * slot.interval
                self._push(slot)
