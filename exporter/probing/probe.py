"""One HTTP probe -> one result with phase timings; never raises for a failing target.

A lean HTTP/1.1 client on asyncio's lowest-level API: one fresh connection per probe,
``Connection: close``, redirects never followed, the body read up to ``body_cap`` bytes and then
the connection dropped. Plain http needs no transport at all: a non-blocking socket, one
``send`` and ``recv`` per readiness callback (``loop.add_reader``), so a probe costs a few
syscalls and one task wake-up (bench/probe measures it against blackbox_exporter). https goes
through ``loop.create_connection`` with a small protocol and ``loop.start_tls``. Every
timestamp is taken where the socket event happens, so the five phases add up to the duration,
also for a probe that fails part-way (the phase it failed in runs to the moment of failure,
later phases are 0). Responses are parsed by llhttp (httptools), strictly: what it refuses is
an "error", never guessed at. ``Accept-Encoding: identity`` is asked unless the spec's headers
set one, since a body_regex runs on the bytes as they come.

body_regex runs on RE2 (google-re2), in time linear in the body; ``compile_body_regex``
refuses what RE2 cannot run (backreferences, lookaround) and patterns over 1000 instructions.
Small bodies are searched on the event loop, larger ones in a thread of the prober's own (see
``INLINE_STEPS``), so that no body holds the loop for more than about 2 ms.

Failure reasons (``ProbeResult.reason``), in the order a probe can meet them::

    None ........ passed: the expected status (default any 2xx) and body_regex, if any, found
    "dns" ....... the host did not resolve: getaddrinfo failed or returned nothing, or the
                  name is not encodable; names under .invalid fail at once, without a
                  lookup (RFC 6761 section 6.4)
    "connect" ... TCP connect refused, reset or unreachable on every resolved address
    "tls" ....... TLS handshake failed: certificate untrusted, expired or for another name,
                  no common protocol, or the peer closed or reset during the handshake;
                  after a failed verification tls_expiry is still the served certificate's,
                  read by one more, unverified handshake (reused for a minute per server)
    "timeout" ... the whole-probe deadline (ProbeSpec.timeout) passed; detail names the
                  phase it passed in (resolve, connect, tls, processing, transfer)
    "status" .... a complete response with an unexpected status code (a 3xx too: redirects
                  are not followed, as one could leave the platform for the public name)
    "body" ...... the expected status, but body_regex is not in the first body_cap bytes
    "error" ..... anything else once connected: reset or close before the response is
                  complete ("connection closed after N body bytes"), a response llhttp
                  refuses ("malformed response: <llhttp's words>"), more than 10 interim
                  (1xx) responses, response heads over 64 KiB, and any unforeseen exception

Test seam: ``Prober(ssl_context=...)`` replaces the verifying TLS context (the one used when
``tls_skip_verify`` is false), e.g. a context trusting a test CA. It is used as given.
"""

from __future__ import annotations

import asyncio
import calendar
import errno
import ipaddress
import os
import re
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httptools

from exporter import __version__
from exporter.regex import INLINE_STEPS, Regex, compile_linear

__all__ = ["PHASES", "REASONS", "ProbeResult", "ProbeSpec", "Prober", "compile_body_regex"]

PHASES = ("resolve", "connect", "tls", "processing", "transfer")
REASONS = ("timeout", "connect", "tls", "dns", "status", "body", "error")

_now = time.perf_counter
_MAX_HEAD = 64 * 1024  # a health check's response heads are tiny; more is garbage or hostile
# 100 Continue and 103 Early Hints come once or twice; a stream of them is a platform stalling
_MAX_INTERIM = 10
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Framing is this client's business: a configured value could only contradict it.
_OWN_HEADERS = frozenset({"content-length", "connection", "transfer-encoding"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


# Patterns compile with the shared linear-time rules (exporter/regex.py); this is the name the
# config's validation and the prober both call, so that whatever loads is what probes run.
compile_body_regex = compile_linear


class _Compiled:
    """What ProbeSpec needs on every probe, worked out once."""

    __slots__ = (
        "addrs",
        "body_text",
        "expect_text",
        "head_only",
        "host",
        "https",
        "invalid",
        "port",
        "regex",
        "regex_steps",
        "request",
        "server_hostname",
    )

    def __init__(self, spec: ProbeSpec) -> None:
        parts = urlsplit(spec.url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"url scheme must be http or https, not {scheme!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "credentials in the url are not supported: use an Authorization header"
            )
        host = parts.hostname
        if not host:
            raise ValueError("url has no host")
        self.https = scheme == "https"
        self.host = host
        self.port: int = parts.port or (443 if self.https else 80)
        self.invalid = host.rstrip(".").endswith(".invalid") or host == "invalid"
        self.addrs: tuple[tuple[int, int, int, str, tuple[Any, ...]], ...] | None = None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            if ip.version == 6:
                self.addrs = (
                    (socket.AF_INET6, socket.SOCK_STREAM, 0, "", (host, self.port, 0, 0)),
                )
            else:
                self.addrs = ((socket.AF_INET, socket.SOCK_STREAM, 0, "", (host, self.port)),)

        method = spec.method
        if not _TOKEN.fullmatch(method):
            raise ValueError(f"invalid method {method!r}")
        self.head_only = method.upper() == "HEAD"

        host_value = parts.netloc
        merged: dict[str, tuple[str, str]] = {}
        for name, value in spec.headers:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"invalid header name {name!r}")
            if "\r" in value or "\n" in value or "\0" in value:
                # The value may be a secret: name the header, never echo the value.
                raise ValueError(f"header {name} has a line break or NUL in its value")
            merged[name.lower()] = (name, value)
        given_host = merged.pop("host", None)
        if given_host is not None:
            host_value = given_host[1]
        sni_source = None
        if spec.host_header is not None:
            if not spec.host_header or any(c in spec.host_header for c in " \t\r\n\0/"):
                raise ValueError("host_header must be a bare host[:port]")
            host_value = sni_source = spec.host_header
        for name in _OWN_HEADERS:
            merged.pop(name, None)
        self.server_hostname = _strip_port(sni_source) if sni_source is not None else host

        target = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=_QUERY_SAFE)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host_value}"]
        lines.extend(f"{name}: {value}" for name, value in merged.values())
        if "user-agent" not in merged:
            lines.append(f"User-Agent: cutover/{__version__}")
        if "accept" not in merged:
            lines.append("Accept: */*")
        if "accept-encoding" not in merged:
            # Without it RFC 9110 allows any coding, and a gzipped body never matches body_regex.
            lines.append("Accept-Encoding: identity")
        if spec.body is not None:
            lines.append(f"Content-Length: {len(spec.body)}")
        elif method.upper() in _BODY_METHODS:
            lines.append("Content-Length: 0")  # some proxies answer 411 without it
        lines.append("Connection: close")
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode() + (spec.body or b"")

        if not spec.timeout > 0:
            raise ValueError("timeout must be positive")
        if spec.expect_status is None:
            self.expect_text = "not 2xx"
        else:
            self.expect_text = f"not in [{', '.join(map(str, sorted(spec.expect_status)))}]"
        self.body_text = ""
        self.regex: Regex | None = None
        self.regex_steps = 0  # the pattern's work per body byte, in RE2 instructions
        if spec.body_regex is not None:
            self.regex = compile_body_regex(spec.body_regex)
            self.regex_steps = self.regex.programsize
            text = spec.body_regex
            self.body_text = text if len(text) <= 60 else text[:57] + "..."


def _strip_port(hostport: str) -> str:
    if hostport.startswith("["):
        return hostport[1 : hostport.find("]")] if "]" in hostport else hostport
    if hostport.count(":") == 1:
        return hostport.partition(":")[0]
    return hostport


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One check on one platform, built once from the config and reused for every probe.

    Raises ValueError for a spec no probe could send (bad scheme, credentials in the url,
    header names or values that would break the request) or a ``body_regex`` that
    ``compile_body_regex`` refuses. ``headers`` are applied in order,
    the last of the same name (case-insensitive) winning, so pass the platform's headers
    before the check's. Host comes from ``host_header``, else a ``Host`` entry in
    ``headers``, else the url; Content-Length, Connection and Transfer-Encoding are always
    this client's own; ``Accept-Encoding: identity`` is sent unless ``headers`` set one.
    ``body_regex`` is RE2 syntax, searched in the raw body bytes.
    """

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    host_header: str | None = None
    tls_skip_verify: bool = False
    timeout: float = 5.0
    expect_status: frozenset[int] | None = None
    body_regex: str | None = None
    _c: _Compiled = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_c", _Compiled(self))


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe saw. Phases are seconds, 0.0 for a phase that did not happen."""

    started: float
    success: bool
    duration: float
    status: int
    reason: str | None
    detail: str
    resolve: float
    connect: float
    tls: float
    processing: float
    transfer: float
    tls_expiry: float | None


class _Fail(Exception):
    def __init__(
        self, reason: str, detail: str, peer: tuple[int, tuple[Any, ...]] | None = None
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.peer = peer  # (family, sockaddr) of a server whose certificate failed verification


class _Stop(Exception):
    """Raised in a parser callback to stop llhttp at once; the outcome is already set."""


_RECV = 256 * 1024  # bytes asked of one recv(): a health check's answer comes in one
# Non-blocking from birth where the platform allows, which saves two fcntl calls per probe.
_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)
_STREAM = socket.SOCK_STREAM | _NONBLOCK


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# Response reading states of _Exchange: heads (interim ones and the final one), body, done.
_HEAD, _BODY, _DONE = range(3)


class _Exchange(asyncio.Protocol):
    """One probe's connection: its socket, timestamps and the response as it arrives.

    Plain http runs on the socket itself: the loop calls ``_readable`` and ``_writable`` (a
    ``recv``/``send`` each), with no transport, stream or task in between. https needs a
    transport for ``start_tls``, so there the same object serves as the transport's protocol.
    The response is parsed by llhttp (httptools), which calls back ``on_headers_complete``,
    ``on_body`` and ``on_message_complete`` (no ``on_header``: a Python call per header
    would cost more than the rest of the parsing); a callback that has
    seen enough raises ``_Stop``, which ends llhttp's work on the bytes at hand at once.
    """

    __slots__ = (
        "_cap",
        "_head_only",
        "_head_room",
        "_heads",
        "_interim",
        "_loop",
        "_out",
        "_parser",
        "_polled",
        "_state",
        "_store",
        "body",
        "body_len",
        "done",
        "expiry",
        "raw",
        "sock",
        "status",
        "t0",
        "t_conn",
        "t_end",
        "t_first",
        "t_res",
        "t_tls",
        "truncated",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, cap: int, store: bool, head_only: bool):
        self._loop = loop
        self.done: asyncio.Future[None] = loop.create_future()
        self.raw: asyncio.Transport | None = None
        self.sock: socket.socket | None = None
        self.t0 = self.t_res = self.t_conn = self.t_tls = self.t_first = self.t_end = 0.0
        self.status = 0  # the final status; interim (1xx) ones are only counted
        self.expiry: float | None = None
        self.body = bytearray()
        self.body_len = 0
        self.truncated = False
        self._cap = cap
        self._store = store  # only a body_regex needs the bytes; otherwise just count them
        self._head_only = head_only
        self._state = _HEAD
        self._head_room = _MAX_HEAD  # bytes the heads may still take
        self._heads: list[bytes] = []  # what came while in the heads, for _framed at a close
        self._interim = 0
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._out = b""  # what send() has not taken yet
        self._polled = 0  # the socket's fd while the loop watches it for us

    # -- connection

    async def connect(self, sock: socket.socket, sockaddr: tuple[Any, ...]) -> None:
        """Connect sock (non-blocking); raises OSError for a failed connect."""
        err = sock.connect_ex(sockaddr)
        if err == errno.EINPROGRESS:
            try:
                # On loopback the handshake is over when connect returns; elsewhere wait.
                sock.getpeername()
                return
            except OSError:
                pass
            fd = sock.fileno()
            ready = self._loop.create_future()
            self._loop.add_writer(fd, _wake, ready)
            try:
                await ready
            finally:
                self._loop.remove_writer(fd)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))

    def start(self, sock: socket.socket, request: bytes) -> None:
        """Send the request and read the answer on the socket itself (plain http)."""
        fd = self._polled = sock.fileno()
        loop = self._loop
        loop.add_reader(fd, self._readable)
        try:
            sent = sock.send(request)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._closed(exc)
            return
        if sent < len(request):
            self._out = request[sent:]
            loop.add_writer(fd, self._writable)

    def _writable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            sent = sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._out = b""
            self._loop.remove_writer(self._polled)
            self._closed(exc)
            return
        self._out = self._out[sent:]
        if not self._out:
            self._loop.remove_writer(self._polled)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data = sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._closed(exc)
            return
        if data:
            self.data_received(data)
        else:
            self._closed(None)

    # -- transport callbacks (https) and their plain-http counterparts

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _DONE:
            return  # the final response is in: whatever follows is not ours to judge
        parser = self._parser
        if parser is None:
            return
        try:
            if state == _HEAD:
                if not self.t_first:
                    self.t_first = _now()
                self._heads.append(data)
                room = self._head_room
                if len(data) > room:
                    # the heads must end within their first 64 KiB: feed no more before they do
                    parser.feed_data(data[:room])
                    if self._state == _HEAD:
                        self._fail("response head larger than 64 KiB")
                        return
                    if self._state == _DONE:
                        return
                    data = data[room:]
                else:
                    self._head_room = room - len(data)
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp pauses after a 101, which on_headers_complete took as the final status
            if self._state != _DONE:
                self._fail("malformed response: unexpected upgrade")
        except httptools.HttpParserError as exc:
            if self._state == _DONE:
                return  # a _Stop from a callback, or bytes after the final response
            cause = exc.__context__
            if isinstance(exc, httptools.HttpParserCallbackError) and cause is not None:
                self._fail(f"{type(cause).__name__}: {cause}"[:200])  # a bug of ours
            else:
                self._fail(f"malformed response: {exc}")

    def eof_received(self) -> bool | None:
        self._closed(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed(exc)

    # -- llhttp's callbacks

    def on_headers_complete(self) -> None:
        parser = self._parser
        if self._state != _HEAD or parser is None:
            raise _Stop  # a response after the final one
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # interim (100 Continue, 103 Early Hints): the final head follows
            self._interim += 1
            if self._interim > _MAX_INTERIM:
                self._fail(f"more than {_MAX_INTERIM} interim (1xx) responses")
                raise _Stop
            return
        self.status = status
        self._state = _BODY
        if self._head_only:
            self._finish()  # a HEAD response has no body, whatever its Content-Length says

    def on_body(self, body: bytes) -> None:
        if self._state != _BODY:
            raise _Stop  # after a HEAD response: not a body of ours
        room = self._cap - self.body_len
        if len(body) > room:
            if self._store:
                self.body += body[:room]
            self.body_len = self._cap
            self.truncated = True
            self._finish()
            raise _Stop
        if self._store:
            self.body += body
        self.body_len += len(body)

    def on_message_complete(self) -> None:
        if self._state == _BODY:  # not an interim response's end
            self._finish()

    # -- outcome

    def _finish(self) -> None:
        self._state = _DONE
        self.t_end = _now()
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, detail: str) -> None:
        self._state = _DONE
        if not self.done.done():
            self.done.set_exception(_Fail("error", detail))

    def _closed(self, exc: BaseException | None) -> None:
        state = self._state
        if state == _DONE:
            return
        if state == _BODY and exc is None and not self._framed():
            self._finish()  # a body delimited by the close: complete
            return
        if exc is None:
            how = "closed"
        elif isinstance(exc, ConnectionResetError):
            how = "reset"
        else:
            how = f"lost ({exc})"
        if state == _HEAD:
            where = "in the response head" if self.t_first else "before any response"
        else:
            where = f"after {self.body_len} body bytes"
        self._fail(f"connection {how} {where}")

    def _framed(self) -> bool:
        """Whether the final head gave the body a length: Content-Length or chunked.

        Asked only when the connection closes mid-body, so it reads the heads again rather
        than have llhttp call back for every header of every probe (a third of its cost).
        llhttp has checked them: CRLF lines, no folding, never both framings.
        """
        heads = b"".join(self._heads)
        start = 0
        while True:  # past the interim heads: they have no body, the next head follows
            end = heads.find(b"\r\n\r\n", start)
            if end < 0:
                return True  # cannot be: llhttp saw the final head end
            status = heads[start : heads.find(b"\r\n", start)].split(b" ", 2)[1]
            if status[:1] != b"1" or status == b"101":
                break
            start = end + 4
        framed = False
        for line in heads[start:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                framed = True
            elif name == b"transfer-encoding":  # RFC 9112 6.3: chunked only if last
                framed = value.rpartition(b",")[2].strip().lower() == b"chunked"
        return framed

    def close(self) -> None:
        self._state = _DONE
        self._parser = None  # it holds our bound methods: no cycle left for the GC to find
        if self._polled:
            self._loop.remove_reader(self._polled)
            if self._out:
                self._loop.remove_writer(self._polled)
            self._polled = 0
        # abort, not close: nothing is left to send, and a TLS close would wait for the peer.
        if self.raw is not None:
            self.raw.abort()
            self.raw = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        done = self.done
        if not done.done():
            done.cancel()
        elif not done.cancelled():
            done.exception()  # retrieved: a failure that lost the race is not worth a log line


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """DER tag at pos -> (tag, content start, content end)."""
    tag, n = der[pos], der[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(der[pos : pos + k], "big")
        pos += k
    if pos + n > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + n


def _not_after(der: bytes) -> float | None:
    """The certificate's notAfter as a unix timestamp, from a walk of its DER encoding.

    Done by hand so that an unverified certificate (tls_skip_verify) still yields its expiry
    without a dependency on `cryptography`.
    """
    try:
        _, pos, _ = _tlv(der, 0)  # Certificate
        _, pos, _ = _tlv(der, pos)  # tbsCertificate
        tag, start, end = _tlv(der, pos)
        if tag == 0xA0:  # [0] version
            tag, start, end = _tlv(der, end)
        for _ in range(3):  # serialNumber -> signature -> issuer -> validity
            tag, start, end = _tlv(der, end)
        if tag != 0x30:
            return None
        _, _, nb_end = _tlv(der, start)
        tag, start, end = _tlv(der, nb_end)
        text = der[start:end].decode("ascii")
        if tag == 0x17 and len(text) == 13 and text[-1] == "Z":  # UTCTime YYMMDDHHMMSSZ
            year = int(text[:2])
            year += 1900 if year >= 50 else 2000  # RFC 5280 4.1.2.5.1
            text = text[2:]
        elif tag == 0x18 and len(text) == 15 and text[-1] == "Z":  # GeneralizedTime
            year = int(text[:4])
            text = text[4:]
        else:
            return None
        fields = (year, int(text[0:2]), int(text[2:4]), int(text[4:6]), int(text[6:8]))
        return float(calendar.timegm((*fields, int(text[8:10]), 0, 0, 0)))
    except (IndexError, ValueError):
        return None


_SERVED_TTL = 60.0  # seconds an unverifiable certificate's expiry is reused


def _found(regex: Regex, body: bytearray) -> bool:
    return regex.search(body) is not None


def _size_text(n: int) -> str:
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n % 1024 == 0:
        return f"{n >> 10} KiB"
    return f"{n} bytes"


def _addr_text(sockaddr: tuple[Any, ...]) -> str:
    host = str(sockaddr[0])
    return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"


class Prober:
    """Runs probes. One per daemon; cheap to share between any number of concurrent probes.

    ``body_cap``: bytes of body read at most; past it the connection is dropped and the probe
    judged on what was read. ``loop``: the loop probes run on (default: the running loop).
    ``ssl_context``: the verifying TLS context, used as given (tests inject one trusting their
    own CA); default ``ssl.create_default_context()`` with ALPN http/1.1. The context for
    ``tls_skip_verify`` is always this module's own.

    A body_regex is searched on the event loop when the body is small for its pattern, else
    in a thread of this prober's own (see ``INLINE_STEPS``): never in the loop's default
    executor, which getaddrinfo needs for every probe of a name.
    """

    __slots__ = (
        "_cap",
        "_cap_text",
        "_expiry_cache",
        "_loop",
        "_regex_pool",
        "_served",
        "_skip_ctx",
        "_verify_ctx",
    )

    def __init__(
        self,
        *,
        body_cap: int = 1 << 20,
        loop: asyncio.AbstractEventLoop | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if body_cap < 1:
            raise ValueError("body_cap must be positive")
        self._cap = body_cap
        self._cap_text = f"body truncated at {_size_text(body_cap)}"
        self._loop = loop
        self._verify_ctx = ssl_context
        self._skip_ctx: ssl.SSLContext | None = None
        # Parsing a certificate is cheap, but the same one comes back on every probe.
        self._expiry_cache: dict[bytes, float | None] = {}
        # (address, port, SNI) -> (expiry, when read) of certificates that failed verification
        self._served: dict[tuple[Any, Any, str], tuple[float | None, float]] = {}
        self._regex_pool: ThreadPoolExecutor | None = None

    def _context(self, skip_verify: bool) -> ssl.SSLContext:
        # Built on first use: loading the system trust store costs milliseconds.
        if skip_verify:
            if self._skip_ctx is None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                ctx.set_alpn_protocols(["http/1.1"])
                self._skip_ctx = ctx
            return self._skip_ctx
        if self._verify_ctx is None:
            ctx = ssl.create_default_context()
            ctx.set_alpn_protocols(["http/1.1"])
            self._verify_ctx = ctx
        return self._verify_ctx

    def _expiry(self, der: bytes | None) -> float | None:
        if not der:
            return None
        cache = self._expiry_cache
        try:
            return cache[der]
        except KeyError:
            pass
        if len(cache) >= 64:
            cache.clear()
        expiry = cache[der] = _not_after(der)
        return expiry

    async def probe(self, spec: ProbeSpec) -> ProbeResult:
        """Probe once. Never raises for the target's faults; CancelledError propagates."""
        c = spec._c
        loop = self._loop or asyncio.get_running_loop()
        x = _Exchange(loop, self._cap, spec.body_regex is not None, c.head_only)
        started = time.time()
        x.t0 = _now()
        deadline = asyncio.timeout(spec.timeout)
        try:
            async with deadline:
                await self._exchange(spec, c, loop, x)
        except _Fail as fail:
            end = _now()
            if fail.peer is not None:
                # Outside the measured phases and within what is left of the deadline.
                x.close()
                x.expiry = await self._served_expiry(loop, fail.peer, c, deadline.when())
            return self._result(x, started, fail.reason, fail.detail, end)
        except TimeoutError:
            if not deadline.expired():
                return self._result(x, started, "error", "timed out (not the probe's deadline)")
            if not x.t_res:
                phase = "resolve"
            elif not x.t_conn:
                phase = "connect"
            elif not x.t_tls:
                phase = "tls"
            elif not x.t_first:
                phase = "processing"
            else:
                phase = "transfer"
            detail = f"timed out after {spec.timeout:g}s in {phase}"
            return self._result(x, started, "timeout", detail)
        except Exception as exc:  # never raise for a target: an unforeseen case is an "error"
            return self._result(x, started, "error", f"{type(exc).__name__}: {exc}"[:200])
        finally:
            x.close()

        status = x.status
        expect = spec.expect_status
        if not (200 <= status < 300 if expect is None else status in expect):
            detail = f"status {status} {c.expect_text}"
            if 300 <= status < 400:
                detail += " (redirect not followed)"
            reason: str | None = "status"
        elif c.regex is not None and not await self._search(loop, c, x.body):
            reason = "body"
            detail = f"body does not match {c.body_text!r}"
        else:
            reason = None
            detail = "ok"
        if x.truncated:
            detail += f" ({self._cap_text})"
        return self._result(x, started, reason, detail, x.t_end)

    async def _exchange(
        self, spec: ProbeSpec, c: _Compiled, loop: asyncio.AbstractEventLoop, x: _Exchange
    ) -> None:
        addrs: Any = c.addrs
        if addrs is None:
            if c.invalid:
                raise _Fail("dns", f"cannot resolve {c.host}: .invalid never resolves")
            try:
                addrs = await loop.getaddrinfo(c.host, c.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise _Fail("dns", f"cannot resolve {c.host}: {exc.strerror or exc}") from None
            except UnicodeError:
                raise _Fail("dns", f"cannot resolve {c.host}: invalid host name") from None
            if not addrs:
                raise _Fail("dns", f"cannot resolve {c.host}: no address")
        x.t_res = _now()

        error: OSError | None = None
        sockaddr: tuple[Any, ...] = ()
        for family, _, proto, _, sockaddr in addrs:
            try:
                # Held by x until a transport owns it, so that a cancel closes it too.
                sock = x.sock = socket.socket(family, _STREAM, proto)
                if not _NONBLOCK:
                    sock.setblocking(False)
                await x.connect(sock, sockaddr)
                break
            except OSError as exc:
                if x.sock is not None:
                    x.sock.close()
                    x.sock = None
                error = exc
        else:
            if isinstance(error, ConnectionRefusedError):
                detail = f"connection refused by {_addr_text(sockaddr)}"
            else:
                why = error.strerror or error if error is not None else "no address"
                detail = f"cannot connect to {_addr_text(sockaddr)}: {why}"
            raise _Fail("connect", detail)
        x.t_conn = _now()

        if not c.https:
            x.t_tls = x.t_conn
            x.start(sock, c.request)
            await x.done
            return

        raw, _ = await loop.create_connection(lambda: x, sock=sock)
        x.raw = raw
        x.sock = None
        try:
            transport = await loop.start_tls(
                raw, x, self._context(spec.tls_skip_verify), server_hostname=c.server_hostname
            )
        except ssl.SSLCertVerificationError as exc:
            detail = f"certificate verify failed: {exc.verify_message}"
            raise _Fail("tls", detail, (family, sockaddr)) from None
        except ssl.SSLError as exc:
            raise _Fail("tls", f"TLS handshake failed: {exc.reason or exc}") from None
        except ConnectionResetError:
            raise _Fail("tls", "TLS handshake failed: connection reset or closed") from None
        except OSError as exc:
            raise _Fail("tls", f"TLS handshake failed: {exc.strerror or exc}") from None
        if transport is None:
            raise _Fail("tls", "TLS handshake failed")
        x.t_tls = _now()
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            x.expiry = self._expiry(ssl_object.getpeercert(True))
        transport.write(c.request)
        await x.done

    async def _search(self, loop: asyncio.AbstractEventLoop, c: _Compiled, body: bytearray) -> bool:
        regex = c.regex
        assert regex is not None
        if len(body) * c.regex_steps <= INLINE_STEPS:
            return regex.search(body) is not None
        pool = self._regex_pool
        if pool is None:
            pool = self._regex_pool = ThreadPoolExecutor(2, thread_name_prefix="cutover-regex")
        return await loop.run_in_executor(pool, _found, regex, body)

    async def _served_expiry(
        self,
        loop: asyncio.AbstractEventLoop,
        peer: tuple[int, tuple[Any, ...]],
        c: _Compiled,
        deadline: float | None,
    ) -> float | None:
        """The notAfter of the certificate a server serves, read without verifying it.

        For a probe that failed verification: Python cannot read the peer certificate of a
        failed handshake, so one more handshake reads it, at most once a minute per server.
        """
        family, sockaddr = peer
        key = (sockaddr[0], sockaddr[1], c.server_hostname)
        now = time.monotonic()
        cached = self._served.get(key)
        if cached is not None and now - cached[1] < _SERVED_TTL:
            return cached[0]
        expiry = None
        sock = socket.socket(family, _STREAM)
        transport: asyncio.Transport | None = None
        try:
            if not _NONBLOCK:
                sock.setblocking(False)
            async with asyncio.timeout_at(deadline):
                await loop.sock_connect(sock, sockaddr)
                transport, _ = await loop.create_connection(
                    asyncio.Protocol,
                    sock=sock,
                    ssl=self._context(True),
                    server_hostname=c.server_hostname,
                )
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                expiry = self._expiry(ssl_object.getpeercert(True))
        except Exception:  # best effort: the probe's own failure says enough
            expiry = None
        finally:
            if transport is not None:
                transport.abort()
            else:
                sock.close()
        if len(self._served) >= 256:
            self._served.clear()
        self._served[key] = (expiry, now)
        return expiry

    @staticmethod
    def _result(
        x: _Exchange, started: float, reason: str | None, detail: str, end: float = 0.0
    ) -> ProbeResult:
        end = end or _now()
        # A mark not reached is the failure moment, so the phase in progress runs to it and
        # the later ones are 0; clamping keeps the phases summing to the duration.
        prev = x.t0
        res = min(max(x.t_res or end, prev), end)
        conn = min(max(x.t_conn or end, res), end)
        tls = min(max(x.t_tls or end, conn), end)
        first = min(max(x.t_first or end, tls), end)
        return ProbeResult(
            started=started,
            success=reason is None,
            duration=end - prev,
            status=x.status,
            reason=reason,
            detail=detail,
            resolve=res - prev,
            connect=conn - res,
            tls=tls - conn,
            processing=first - tls,
            transfer=end - first,
            tls_expiry=x.expiry,
        )
