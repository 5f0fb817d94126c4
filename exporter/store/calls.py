"""How a store's blocking calls are made: on the event loop, or in a worker thread with a deadline.

A state file in state_dir is written in a millisecond by the process that owns it: its store is
called inline, as it always was. The HA table is across a network that may hang: its store is
called in a thread of its own, one call at a time (a store's in-memory state is never changed
by two calls at once), each awaited for at most `timeout` seconds. A call that outlives its
deadline goes on in its thread (a worker cannot be interrupted; botocore's own timeouts end
it) and the next call waits behind it; its caller got TimeoutError (an OSError), so it treats
the change as not persisted, which is what a store's failure means anyway.

The composition root picks one per store; `deferred` tells the caller whether a change asked
for outside a coroutine can be made at once (inline) or must wait for the caller's loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from exporter.aws import CallsClosed, CallTimedOut, WorkerThreads

__all__ = ["Inline", "StoreCalls", "Threaded"]

T = TypeVar("T")


class StoreCalls(Protocol):
    @property
    def deferred(self) -> bool:
        """True: a call must be awaited (a change from synchronous code waits for a loop)."""
        ...

    async def __call__(self, fn: Callable[[], T]) -> T: ...

    def close(self) -> None: ...


class Inline:
    """Calls made at once, on the event loop: a local file owned by this process."""

    deferred = False

    async def __call__(self, fn: Callable[[], T]) -> T:
        return fn()

    def close(self) -> None:
        pass


class Threaded:
    """Calls made one at a time in a worker thread of their own, each awaited at most `timeout`
    seconds (TimeoutError, an OSError, after that)."""

    deferred = True

    def __init__(self, timeout: float, name: str) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self.name = name
        self._worker = WorkerThreads(name=name, workers=1)

    async def __call__(self, fn: Callable[[], T]) -> T:
        try:
            return await self._worker.run(fn, within=self.timeout)
        except CallsClosed:
            raise OSError(f"{self.name}: closed") from None
        except CallTimedOut:
            raise TimeoutError(f"{self.name}: no answer within {self.timeout:g}s") from None

    def close(self) -> None:
        """No new calls; one under way finishes alone."""
        self._worker.close()
