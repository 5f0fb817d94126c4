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

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._closed = False

    async def __call__(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise OSError(f"{self.name}: closed")
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.name}: no answer within {self.timeout:g}s") from None

    def close(self) -> None:
        """No new calls; one under way finishes alone."""
        if not self._closed:
            self._closed = True
            self._executor.shutdown(wait=False, cancel_futures=True)
