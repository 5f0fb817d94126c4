"""One owner for every long-lived task: started in groups, cancelled and awaited, failures logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

__all__ = ["Supervisor"]


class Supervisor:
    """Owns the daemon's tasks: probe loops, pollers, the Slack sender, shift writes.

    Each task belongs to a group ("probe", "route53", "shift", ...). A cancelled task stays owned
    until it has finished, and `stop`/`stop_group`/`aclose` wait for that, so shutting down
    never leaves a task behind. A task that ends with an exception is logged with its traceback:
    nothing dies silently.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("cutover")
        self._tasks: dict[asyncio.Task[Any], str] = {}

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
        clean-up it may be running (closing sockets, saving state).
        """
        for task in tasks:
            if not task.cancelling():
                task.cancel()

    async def stop(self, tasks: Iterable[asyncio.Task[Any]]) -> None:
        """Cancel these tasks and wait until they have ended."""
        pending = [t for t in tasks if not t.done()]
        self.cancel(pending)
        if pending:
            await asyncio.wait(pending)

    async def stop_group(self, group: str) -> None:
        await self.stop(self.group(group))

    async def aclose(self) -> None:
        """Stop everything still running."""
        await self.stop(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._log.error(
                "task %s ended with an unexpected error",
                task.get_name(),
                exc_info=(type(error), error, error.__traceback__),
            )
