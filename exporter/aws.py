"""boto3 clients as cutover makes them: standard retries, explicit timeouts, and a small footprint.

A botocore client keeps its session's loader, and the loader keeps every JSON file it parsed to
build the client: `endpoints.json` alone is 6.7 MB of Python objects, held for the life of the
daemon although the client never reads it again (its endpoint and model are built by then).
`make_client` drops that cache once the client exists; a later need (a paginator's definition,
say) loads its own small file again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import boto3
from botocore.config import Config

__all__ = [
    "AwsCalls",
    "CallTimedOut",
    "CallsClosed",
    "WorkerThreads",
    "credential_secrets",
    "make_client",
    "scrub",
]

T = TypeVar("T")

# key ids (AKIA... long-term, ASIA... temporary) and request signatures an answer might echo
_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}\b")
_SIGNATURE = re.compile(r"(Signature=)[0-9a-fA-F]+")
_MASK = "[redacted]"


def make_client(
    service: str,
    *,
    region: str | None = None,
    endpoint_url: str | None,
    timeout: float,
    max_attempts: int,
) -> tuple[Any, Any]:
    """(client, credentials) for `service` on the standard credential chain. Blocking: call it
    from a worker thread.

    `max_attempts` counts every attempt, the first included (botocore's `max_attempts` key
    would count retries only). The credentials are returned so that callers can keep them out
    of error texts.
    """
    config = Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    session = boto3.session.Session(region_name=region)
    client = cast(Any, session).client(service, endpoint_url=endpoint_url, config=config)
    forget_parsed_files(session)
    return client, session.get_credentials()


def forget_parsed_files(session: boto3.session.Session) -> None:
    """Empty the session loader's cache of parsed data files (see the module's docstring).

    The cache is botocore's per-loader dict; if a botocore release renames it, nothing is
    dropped and nothing breaks.
    """
    loader = session._session.get_component("data_loader")
    cache = getattr(loader, "_cache", None)
    if isinstance(cache, dict):
        cache.clear()


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` (an AWS answer's error, say) without the given secret values, AWS key ids or
    request signatures."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return _SIGNATURE.sub(rf"\1{_MASK}", _KEY_ID.sub(_MASK, text))


def credential_secrets(credentials: Any) -> list[str]:
    """The values of a botocore credentials object that must never be shown."""
    try:
        frozen = credentials.get_frozen_credentials()
    except Exception:  # no credentials (or none yet), or refreshing them fails: nothing to hide
        return []
    return [v for v in (frozen.secret_key, frozen.token, frozen.access_key) if v]


class CallsClosed(Exception):
    """The calls were closed (the daemon stops, or a reload replaced them)."""


class CallTimedOut(Exception):
    """No answer within the call's deadline; the worker thread goes on alone until botocore's
    own read timeout ends it."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no answer within {timeout:g}s")
        self.timeout = timeout


class WorkerThreads:
    """Blocking calls kept off the event loop, in a small thread pool of their own: a hung call
    must not occupy the loop's default executor, which DNS resolution and `to_thread` share,
    nor more than its own worker. Each call may have a deadline; `close` refuses new calls, and
    a call still running in a thread finishes alone."""

    def __init__(self, *, name: str, workers: int = 2) -> None:
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    @property
    def closed(self) -> bool:
        return self._closed

    async def run(self, fn: Callable[..., T], *args: Any, within: float | None = None) -> T:
        """`fn(*args)` in a worker thread, answered `within` seconds if given; what `fn` raises
        comes out as it is."""
        if self._closed:
            raise CallsClosed
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, fn, *args)
        except RuntimeError as exc:  # the executor was shut down by close()
            raise CallsClosed from exc
        if within is None:
            return await future
        try:
            done, _ = await asyncio.wait({future}, timeout=within)
        except asyncio.CancelledError:
            future.cancel()
            raise
        if not done:
            future.cancel()  # its thread cannot be interrupted; nobody waits for it any more
            raise CallTimedOut(within)
        return future.result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


class AwsCalls(WorkerThreads):
    """One AWS client's blocking calls, kept off the event loop (see `WorkerThreads`).

    The client is built lazily in a worker thread (loading a service model from disk would stall
    the loop). Callers turn `CallsClosed`, `CallTimedOut` and what their own function raises
    into their own errors.
    """

    def __init__(
        self,
        build: Callable[[], tuple[Any, Any]],
        *,
        name: str,
        workers: int = 2,
        client: Any | None = None,
    ) -> None:
        """`build` returns (client, credentials), as `make_client` does; a `client` handed in
        (tests) is used instead and never closed here."""
        super().__init__(name=name, workers=workers)
        self._build = build
        self._client = client
        self._owns_client = client is None
        self._credentials: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The client, built on first use. Blocking: call it from a worker thread."""
        with self._lock:
            if self._closed:
                raise CallsClosed
            if self._client is None:
                self._client, self._credentials = self._build()
            return self._client

    async def run(self, fn: Callable[..., T], *args: Any, within: float | None = None) -> T:
        """As `WorkerThreads.run`; the first call builds the client beforehand, outside its
        deadline (building reads service models from disk and sends nothing: on a busy machine
        it may take longer than a call to AWS may)."""
        if self._client is None and not self._closed:
            # a build that fails (no region, say) fails again where `fn` asks for the client,
            # inside the caller's own handling of its errors
            with contextlib.suppress(Exception):
                await super().run(self.client)
        return await super().run(fn, *args, within=within)

    def secrets(self) -> list[str]:
        """What must never be shown of the client's credentials (see `scrub`)."""
        return credential_secrets(self._credentials) if self._credentials is not None else []

    def close(self) -> None:
        super().close()
        with self._lock:
            if self._owns_client and self._client is not None:
                self._client.close()
            self._client = None
