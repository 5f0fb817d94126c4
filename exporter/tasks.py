"""One owner for every long-lived task: started in groups, cancelled and awaited, failures logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

__all__ = ["STOP_GRACE", "Supervisor"]

STOP_GRACE = 5.0  # seconds a cancelled task has to end before it is cancelled again


class Supervisor:
    """Owns the daemon's tasks: probe loops, pollers, the Slack sender, shift writes.

    Each task belongs to a group ("probe", "route53", "shift", ...). A cancelled task stays owned
    until it has finished, and `stop`/`stop_group`/`aclose` wait for that, so shutting down
    never leaves a task behind. A task that ends with an exception is logged with its traceback:
    nothing dies silently.

    Waiting is bounded all the same: a task still running `grace` seconds after it was
    cancelled (it swallowed the cancellation: Python 3.11's TaskGroup can, when a child fails
    as the cancellation arrives) is logged and cancelled once more, and after a second grace
    it is left behind, logged, rather than holding a shutdown or a reload forever.
    """

    def __init__(self, logger: logging.Logger | None = None, grace: float = STOP_GRACE) -> None:
        self._log = logger or logging.getLogger("cutover")
        self._grace = grace
        self._tasks: dict[asyncio.Task[Any], str] = {}
        self._asked: set[asyncio.Task[Any]] = set()  # cancelled by us, not yet ended

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, group: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[task] = group
        task.add_done_callback(self._finished)
        return task

    def group(self, group: str) -> list[asyncio.Task[Any]]:
        return [t for t, g in self._tasks.items() if g == group]

    def cancel(self, tasks: Iterable[asyncio.Task[Any]]) -> None:
        """Ask these tasks to stop now; they stay owned (and awaited by `aclose`) until they end.

        A task asked once already is not asked again: a second cancel would interrupt the
        clean-up it may be running (closing sockets, saving state). Whether it was asked is our
        own record, not `task.cancelling()`: a TaskGroup cancels its parent task too.
        """
        for task in tasks:
            if task not in self._asked and not task.done():
                self._asked.add(task)
                task.cancel()

    async def stop(self, tasks: Iterable[asyncio.Task[Any]]) -> None:
        """Cancel these tasks and wait until they have ended, or until two graces have passed."""
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        self.cancel(pending)
        _, late = await asyncio.wait(pending, timeout=self._grace)
        if not late:
            return
        for task in late:
            self._log.error(
                "task %s did not end within %gs of being cancelled; cancelling it again",
                task.get_name(),
                self._grace,
            )
            task.cancel()
        _, lost = await asyncio.wait(late, timeout=self._grace)
        for task in lost:
            self._log.error(
                "task %s still runs after a second cancel: left behind", task.get_name()
            )

    async def stop_group(self, group: str) -> None:
        await self.stop(self.group(group))

    async def aclose(self) -> None:
        """Stop everything still running."""
        await self.stop(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        self._asked.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._log.error(
                "task %s ended with an unexpected error",
                task.get_name(),
                exc_info=(type(error), error, error.__traceback__),
            )
