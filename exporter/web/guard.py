"""Bounds on the daemon's own HTTP server: time to send a request head, concurrent connections.

aiohttp bounds neither how long a client may take to send its first request head nor how many
connections may be open, and the event loop accepts every queued connection, whatever the
descriptors left. Both matter here: every connection holds a descriptor, and so does every
probe. `GuardedSite` serves aiohttp's handlers from its own accept loop, each behind a `Guard`:

- a connection that has not sent a complete first request head within `header_timeout` of
  connecting is closed (idle keep-alive connections, and a later head sent slowly, are aiohttp's
  own `keepalive_timeout`'s job);
- a connection whose client stops reading an answer (the transport's buffer stays full for
  `write_timeout`) is aborted: its handler would otherwise wait on it forever, busy, and
  neither the header timeout nor the eviction of idle connections would ever free its slot;
- at most `limit` connections are open (a quarter of the open-files limit, at most 512: the
  rest is the probes' reserve). A new connection beyond it evicts the oldest one still without a
  request head (a real client sends its head within milliseconds: half-sent heads held open are
  an attack or a broken client), else the one idle longest between requests (a server may close
  an idle keep-alive connection at any time, RFC 9112 9.6), else it is closed at once. It waits,
  accepted, until the evicted one's descriptor is released: descriptors in use never exceed
  the limit plus one per listening socket.

Each bound hit is counted in `cutover_http_connections_rejected_total{reason}` and said in the
log at most once a minute, with counts.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("cutover.web")

DEFAULT_HEADER_TIMEOUT = 10.0
# a scrape of thousands of checks is megabytes: a reader this slow is not reading at all
DEFAULT_WRITE_TIMEOUT = 30.0
# aiohttp closes idle keep-alive connections after this (its default is an hour)
KEEPALIVE_TIMEOUT = 15.0
MAX_CONNECTIONS = 512
# connections may take this share of the descriptors; the rest is the probes' reserve
CONNECTION_SHARE = 4
WARN_EVERY = 60.0
REASONS = ("header_timeout", "limit", "write_timeout")
# connections accepted per wake-up of a listening socket: other callbacks run in between
ACCEPT_BATCH = 16
# accept() out of descriptors or memory: try again after this, as asyncio's own loop does
ACCEPT_RETRY_DELAY = 1.0


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one, as Go programs do; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            # e.g. an unlimited hard limit the kernel's nr_open refuses: the soft one stays
            log.debug("open files: cannot raise the soft limit %d to %d: %s", soft, hard, exc)
        else:
            soft = hard
    log.debug("open files: soft limit %d, hard limit %d", soft, hard)
    return soft, hard


def connection_limit(soft_fd_limit: int | None = None) -> int:
    """How many HTTP connections may be open: a quarter of the descriptors, at most 512."""
    if soft_fd_limit is None:
        soft_fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_fd_limit == resource.RLIM_INFINITY or soft_fd_limit < 0:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft_fd_limit // CONNECTION_SHARE))


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    max_connections: int | None = None  # None: derived from the open-files limit


class Bounds:
    """The connections of one server: counts, eviction order, metrics and the rate-limited log."""

    def __init__(self, limits: Limits, registry: CollectorRegistry) -> None:
        self.limit = (
            limits.max_connections if limits.max_connections is not None else connection_limit()
        )
        self.header_timeout = limits.header_timeout
        self.write_timeout = limits.write_timeout
        self.fds = 0  # accepted and not yet released, those being closed included
        self._closing = 0  # closed by a bound, descriptor not yet released
        # made and not closed: insertion order is connection order, so the first one
        # without a head is the oldest such
        self._open: dict[Guard, None] = {}
        self._headless: dict[Guard, None] = {}
        self._by_transport: dict[object, Guard] = {}
        self._waiting: list[Callable[[], None]] = []
        self._counts = {
            "evicted": 0, "evicted_idle": 0, "refused": 0, "header_timeout": 0, "write_timeout": 0
        }  # fmt: skip
        self._last_warning: float | None = None
        self._flush: asyncio.TimerHandle | None = None
        self.connections = Gauge(
            "cutover_http_connections",
            "Connections open to the daemon's HTTP server.",
            registry=registry,
        )
        self.connections.set_function(lambda: self.fds)
        limit = Gauge(
            "cutover_http_connection_limit",
            "Most connections the HTTP server keeps open (a quarter of the open-files limit).",
            registry=registry,
        )
        limit.set(self.limit)
        self.rejected = Counter(
            "cutover_http_connections_rejected_total",
            "HTTP connections closed by a bound: header_timeout (no complete request head in "
            "time), limit (too many connections), write_timeout (the client stopped reading).",
            ["reason"],
            registry=registry,
        )
        for reason in REASONS:
            self.rejected.labels(reason)

    # -- the accept loop's calls ------------------------------------------------------------

    def has_room(self) -> bool:
        return self.fds < self.limit

    def make_room(self) -> bool:
        """Close a connection for a new one; False when every connection is in a request."""
        if self._closing:
            return True  # a descriptor is on its way back
        victim = next(iter(self._headless), None)
        kind = "evicted"
        if victim is None:
            idle = [g for g in self._open if g.idle_since is not None]
            victim = min(idle, key=lambda g: g.idle_since or 0.0, default=None)
            kind = "evicted_idle"
        if victim is None:
            return False
        self._note(kind, "limit")
        victim.close()
        return True

    def refused(self) -> None:
        self._note("refused", "limit")

    def accepted(self) -> None:
        self.fds += 1

    def when_room(self, callback: Callable[[], None]) -> None:
        """Call back once a descriptor is released (an accept loop waiting for room)."""
        self._waiting.append(callback)

    def released(self, closing: bool) -> None:
        self.fds -= 1
        if closing:
            self._closing -= 1
        if self._waiting and self.has_room():
            waiting, self._waiting = self._waiting, []
            for callback in waiting:
                callback()

    # -- the guards' calls ------------------------------------------------------------------

    def made(self, guard: Guard, transport: object) -> None:
        self._open[guard] = None
        self._headless[guard] = None
        self._by_transport[transport] = guard

    def head_received(self, guard: Guard) -> None:
        self._headless.pop(guard, None)

    def header_timeout_hit(self, guard: Guard) -> None:
        self._note("header_timeout", "header_timeout")
        guard.close()

    def write_timeout_hit(self, guard: Guard) -> None:
        self._note("write_timeout", "write_timeout")
        guard.close(abort=True)

    def closing(self, guard: Guard) -> None:
        self._closing += 1
        self._forget(guard)

    def lost(self, guard: Guard) -> None:
        self._forget(guard)
        self.released(guard.closed_by_bound)

    def _forget(self, guard: Guard) -> None:
        self._open.pop(guard, None)
        self._headless.pop(guard, None)
        self._by_transport.pop(guard.transport, None)

    # -- requests, as the app's middleware sees them ----------------------------------------

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Marks a connection busy while a handler runs: only idle ones are evicted."""
        guard = self._by_transport.get(request.transport)
        if guard is None:
            return await handler(request)
        guard.busy += 1
        guard.idle_since = None
        try:
            return await handler(request)
        finally:
            guard.busy -= 1
            if guard.busy == 0:
                guard.idle_since = asyncio.get_running_loop().time()

    # -- the log ----------------------------------------------------------------------------

    def _note(self, kind: str, reason: str) -> None:
        self.rejected.labels(reason).inc()
        self._counts[kind] += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._last_warning is None or now - self._last_warning >= WARN_EVERY:
            self._warn()
        elif self._flush is None:
            self._flush = loop.call_at(self._last_warning + WARN_EVERY, self._warn)

    def _warn(self) -> None:
        self._flush = None
        c = self._counts
        parts = []
        if c["evicted"] or c["evicted_idle"] or c["refused"]:
            closed = [
                f"closed {n} connection(s) {what}"
                for n, what in (
                    (c["evicted"], "still without a request head"),
                    (c["evicted_idle"], "idle between requests"),
                )
                if n
            ]
            if c["refused"]:
                closed.append(f"refused {c['refused']} new one(s), every other one in a request")
            parts.append(f"connection limit ({self.limit}) reached: " + ", ".join(closed))
        if c["header_timeout"]:
            parts.append(
                f"closed {c['header_timeout']} connection(s) that sent no complete request head "
                f"within {self.header_timeout:g}s"
            )
        if c["write_timeout"]:
            parts.append(
                f"aborted {c['write_timeout']} connection(s) whose client read nothing of an "
                f"answer for {self.write_timeout:g}s"
            )
        if not parts:
            return
        self._last_warning = asyncio.get_running_loop().time()
        self._counts = dict.fromkeys(c, 0)
        log.warning("HTTP: %s (said at most once a minute)", "; ".join(parts))

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._warn()


class Guard(asyncio.Protocol):
    """One connection: aiohttp's handler behind the bounds, which it forwards every event to."""

    __slots__ = (
        "_bounds",
        "_inner",
        "_make",
        "_stall",
        "_tail",
        "_timer",
        "busy",
        "closed_by_bound",
        "idle_since",
        "transport",
    )

    def __init__(self, make: Callable[[], asyncio.Protocol], bounds: Bounds) -> None:
        self._make = make
        self._bounds = bounds
        self._inner: asyncio.Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None  # armed while writing is paused
        self._tail: bytes | None = b""  # None once the first head is complete
        self.transport: asyncio.Transport | None = None
        self.busy = 0
        self.idle_since: float | None = None
        self.closed_by_bound = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        self._bounds.made(self, transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._bounds.header_timeout, self._expire)
        self._inner = self._make()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._tail is not None:
            self._scan(data)
        if self._inner is not None:
            self._inner.data_received(data)

    def _scan(self, data: bytes) -> None:
        assert self._tail is not None
        if not self._tail:
            # empty lines before a request line are allowed (RFC 9112 2.2): they are no head
            data = data.lstrip(b"\r\n")
            if not data:
                return
        buf = self._tail + data
        # the end of a head: an empty line, CRLF or bare LF ("\r\n\r\n" holds "\n\r\n")
        if b"\n\r\n" in buf or b"\n\n" in buf:
            self._tail = None
            self._cancel_timer()
            self._bounds.head_received(self)
        else:
            self._tail = buf[-2:]

    def _expire(self) -> None:
        self._timer = None
        if self._tail is not None and not self.closed_by_bound:
            self._bounds.header_timeout_hit(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self, abort: bool = False) -> None:
        """Close this connection for a bound; the handler hears connection_lost.

        `abort` drops what is still buffered: a client that stopped reading would hold a plain
        close (which flushes first) open for ever.
        """
        if self.closed_by_bound or self.transport is None:
            return
        self.closed_by_bound = True
        self._cancel_timer()
        self._bounds.closing(self)
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._cancel_stall()
        self._bounds.lost(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None

    def pause_writing(self) -> None:
        # the client reads slower than the answer comes: fine for a while, not for ever
        if self._stall is None and not self.closed_by_bound:
            loop = asyncio.get_running_loop()
            self._stall = loop.call_later(self._bounds.write_timeout, self._stalled)
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._cancel_stall()
        if self._inner is not None:
            self._inner.resume_writing()

    def _stalled(self) -> None:
        self._stall = None
        self._bounds.write_timeout_hit(self)

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None


async def listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for host:port, as loop.create_server makes them."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # one socket per family, as asyncio does: "::" does not take IPv4 too
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class Listener(asyncio.AbstractServer):
    """Accepts connections only while the bounds have room for them, and serves each one
    through a Guard with the event loop's own transport."""

    def __init__(
        self,
        socks: list[socket.socket],
        make: Callable[[], asyncio.Protocol],
        bounds: Bounds,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._socks = socks
        self._make = make
        self._bounds = bounds
        self._reading = False
        self._closed = False
        self._held: dict[socket.socket, socket.socket] = {}  # listening -> accepted, awaiting room
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._resume()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._socks)

    def _resume(self) -> None:
        if self._closed:
            return
        for listening, conn in list(self._held.items()):
            if not self._bounds.has_room():
                self._bounds.when_room(self._resume)
                return
            del self._held[listening]
            self._serve(conn)
        if not self._reading:
            for sock in self._socks:
                self._loop.add_reader(sock.fileno(), self._accept, sock)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            for sock in self._socks:
                self._loop.remove_reader(sock.fileno())
            self._reading = False

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error(
                        "HTTP: cannot accept connections (%s): trying again in %gs",
                        exc.strerror,
                        ACCEPT_RETRY_DELAY,
                    )
                    self._pause()
                    self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)
                return  # e.g. ECONNABORTED: the client gave up; the next wake-up goes on
            if self._bounds.has_room():
                self._serve(conn)
            elif self._bounds.make_room():
                # accepted, and served once the evicted connection's descriptor is released
                self._held[sock] = conn
                self._pause()
                self._bounds.when_room(self._resume)
                return
            else:
                conn.close()
                self._bounds.refused()

    def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self._bounds.accepted()
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        guard = Guard(self._make, self._bounds)
        try:
            await self._loop.connect_accepted_socket(lambda: guard, conn)
        except Exception as exc:  # the client went away before the transport was made
            if guard.transport is None:
                conn.close()
                self._bounds.released(closing=False)
            log.debug("HTTP: a connection could not be set up: %s", exc)

    # -- asyncio.AbstractServer -------------------------------------------------------------

    def close(self) -> None:
        """Stop listening; connections already made are the runner's to close."""
        if self._closed:
            return
        self._pause()
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        for conn in self._held.values():
            conn.close()
        self._held.clear()
        for sock in self._socks:
            sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._closed

    async def start_serving(self) -> None:
        return None  # serving from the start

    async def serve_forever(self) -> None:
        raise NotImplementedError("serve through an aiohttp runner")

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite with the bounds' accept loop; runner.cleanup() stops it."""

    __slots__ = ("_bounds", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, bounds: Bounds) -> None:
        super().__init__(runner)
        self._host, self._port, self._bounds = host, port, bounds

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        socks = await listening_sockets(self._host, self._port, self._backlog)
        self._server = Listener(socks, server, self._bounds)

    async def stop(self) -> None:
        self._bounds.close()
        listener = self._server
        await super().stop()
        if listener is not None:
            await listener.wait_closed()
