"""exporter.probing.probe against real local servers: aiohttp apps and raw asyncio sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import logging
import os
import re
import socket
import ssl
import struct
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509

from exporter import __version__
from exporter.probing.probe import PHASES, REASONS, Prober, ProbeResult, ProbeSpec

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# ---------------------------------------------------------------- servers


@contextlib.asynccontextmanager
async def http_server(
    routes: list[web.RouteDef], ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[TestServer]:
    app = web.Application()
    app.add_routes(routes)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=ssl_context)
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def raw_server(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """A TCP server running `handler` per connection; yields its port."""
    running: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        running[task] = writer
        try:
            await handler(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            running.pop(task, None)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        # Hang up on whatever is still open so that every handler ends on its own.
        for writer in running.values():
            writer.transport.abort()
        await asyncio.gather(*running, return_exceptions=True)
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, never answer; go away when the client does."""
    while await reader.read(65536):
        pass


async def reset_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    await writer.drain()
    await asyncio.sleep(0.01)
    # SO_LINGER 0 turns the close into an RST.
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    writer.transport.abort()


def scripted(*pieces: bytes, then_close: bool = False) -> Handler:
    """Answer with `pieces` written one by one (so the client sees them split), then stay open."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.005)
        if not then_close:
            await hang(reader, writer)

    return handler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle_fds(limit: int, within: float = 2.0) -> int:
    """Closed transports give their fd back a loop iteration or two later."""
    deadline = time.monotonic() + within
    while (n := fd_count()) > limit and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return n


def check_phases(r: ProbeResult) -> None:
    phases = [getattr(r, p) for p in PHASES]
    assert all(p >= 0.0 for p in phases), r
    assert sum(phases) == pytest.approx(r.duration, abs=1e-6), r
    assert r.reason is None or r.reason in REASONS
    assert r.success is (r.reason is None)


@pytest.fixture
def prober() -> Prober:
    return Prober()


async def probe(prober: Prober, url: str, **kwargs: Any) -> ProbeResult:
    result = await prober.probe(ProbeSpec(url, **kwargs))
    check_phases(result)
    return result


# ---------------------------------------------------------------- plain HTTP


async def test_ok_with_body(prober: Prober) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async with http_server([web.get("/health", ok)]) as srv:
        r = await probe(prober, f"http://127.0.0.1:{srv.port}/health?x=1")
    assert r.success and r.reason is None and r.detail == "ok"
    assert r.status == 200
    assert r.tls == 0.0 and r.tls_expiry is None
    assert r.connect > 0 and r.processing > 0
    assert abs(r.started - time.time()) < 60


async def test_slow_answer_is_timed_as_processing(prober: Prober) -> None:
    delay = 0.2

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text="ok")

    async with http_server([web.get("/", slow)]) as srv:
        r = await probe(prober, f"http://127.0.0.1:{srv.port}/")
    assert r.success
    # The server sleeps between our request and its answer: that wait is processing, whatever
    # else a loaded machine adds. (Its sleep runs on this loop: on uvloop, to the millisecond.)
    assert r.processing >= delay - 0.001


async def test_unexpected_status(prober: Prober) -> None:
    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503, text="maintenance")

    async with http_server([web.get("/", down)]) as srv:
        r = await probe(prober, f"http://127.0.0.1:{srv.port}/")
    assert (r.success, r.reason, r.status) == (False, "status", 503)
    assert r.detail == "status 503 not 2xx"


async def test_expected_status_list(prober: Prober) -> None:
    async def no_content(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async with http_server([web.get("/204", no_content), web.get("/200", ok)]) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        good = await probe(prober, f"{base}/204", expect_status=frozenset({204}), timeout=2)
        bad = await probe(prober, f"{base}/200", expect_status=frozenset({204, 202}))
    assert good.success and good.status == 204
    assert (bad.reason, bad.status) == ("status", 200)
    assert bad.detail == "status 200 not in [202, 204]"


async def test_body_regex(prober: Prober) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def degraded(request: web.Request) -> web.Response:
        return web.json_response({"status": "degraded"})

    regex = r'"status":\s*"ok"'
    async with http_server([web.get("/ok", ok), web.get("/bad", degraded)]) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        good = await probe(prober, f"{base}/ok", body_regex=regex)
        bad = await probe(prober, f"{base}/bad", body_regex=regex)
    assert good.success
    assert (bad.success, bad.reason, bad.status) == (False, "body", 200)
    assert "body does not match" in bad.detail and '"status"' in bad.detail


async def test_connection_refused(prober: Prober) -> None:
    port = free_port()
    r = await probe(prober, f"http://127.0.0.1:{port}/")
    assert (r.reason, r.status) == ("connect", 0)
    assert r.detail == f"connection refused by 127.0.0.1:{port}"
    assert r.processing == 0.0 and r.transfer == 0.0


async def test_dns_failure_for_invalid_names(prober: Prober) -> None:
    # .invalid never resolves (RFC 6761): answered without a lookup, so no traffic leaves.
    r = await probe(prober, "http://nonexistent.invalid/health")
    assert (r.reason, r.status) == ("dns", 0)
    assert "nonexistent.invalid" in r.detail
    assert r.connect == 0.0
    # A label longer than 63 bytes fails in getaddrinfo itself, before any query is sent.
    r = await probe(prober, f"http://{'a' * 64}.example/")
    assert r.reason == "dns"


async def test_resolves_names(prober: Prober) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async with http_server([web.get("/", ok)]) as srv:
        r = await probe(prober, f"http://localhost:{srv.port}/")
    assert r.success
    assert r.resolve > 0


async def test_reset_mid_response_is_error(prober: Prober) -> None:
    async with raw_server(reset_mid_body) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=2)
    assert r.reason == "error"
    assert "reset" in r.detail


async def test_garbage_is_error(prober: Prober) -> None:
    async with raw_server(scripted(b"SSH-2.0-OpenSSH\r\n\r\n")) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=2)
    assert (r.reason, r.detail, r.status) == (
        "error",
        "malformed response: Expected HTTP/, RTSP/ or ICE/",
        0,
    )


async def test_closed_before_response_is_error(prober: Prober) -> None:
    async with raw_server(scripted(then_close=True)) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=2)
    assert (r.reason, r.detail) == ("error", "connection closed before any response")


async def test_hang_times_out_in_processing(prober: Prober) -> None:
    async with raw_server(hang) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=0.3)
    assert (r.success, r.reason, r.status) == (False, "timeout", 0)
    assert r.detail == "timed out after 0.3s in processing"
    # The deadline is the floor (uvloop keeps its timers to the millisecond); how far past it
    # a loaded machine wakes us up is not this test's business.
    assert r.duration >= 0.299
    assert r.processing > 0.0 and r.transfer == 0.0


async def test_stall_mid_body_times_out_in_transfer(prober: Prober) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten.."
    async with raw_server(scripted(head)) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=0.3)
    assert (r.reason, r.status) == ("timeout", 200)
    assert r.detail == "timed out after 0.3s in transfer"
    assert r.duration >= 0.299
    assert r.processing > 0.0 and r.transfer > 0.0


async def test_redirect_is_not_followed(prober: Prober) -> None:
    hits: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    async with http_server([web.get("/", moved), web.get("/elsewhere", elsewhere)]) as srv:
        r = await probe(prober, f"http://127.0.0.1:{srv.port}/")
        expected = await probe(
            prober, f"http://127.0.0.1:{srv.port}/", expect_status=frozenset({301})
        )
    assert (r.reason, r.status) == ("status", 301)
    assert r.detail == "status 301 not 2xx (redirect not followed)"
    assert expected.success and expected.status == 301
    assert hits == []


async def test_huge_body_is_read_up_to_the_cap_only(prober: Prober) -> None:
    total = 50 << 20
    sent = {"bytes": 0, "finished": False}

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        chunk = b"x" * 65536
        while sent["bytes"] < total:
            writer.write(chunk)
            sent["bytes"] += len(chunk)
            await writer.drain()
        sent["finished"] = True

    async with raw_server(stream) as port:
        tracemalloc.start()
        try:
            r = await probe(prober, f"http://127.0.0.1:{port}/", body_regex="x{64}")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        at_return = sent["bytes"]
    assert r.success and r.status == 200
    assert r.detail == "ok (body truncated at 1 MiB)"
    # The probe hung up long before the server could stream 50 MiB, holding ~1 MiB of it.
    assert not sent["finished"] and at_return < total // 2
    assert peak < 10 << 20


async def test_body_cap_applies_to_the_regex() -> None:
    body = b"0123456789" * 10 + b"needle"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    async with raw_server(scripted(head + body)) as port:
        url = f"http://127.0.0.1:{port}/"
        capped = await probe(Prober(body_cap=64), url, body_regex="needle")
        full = await probe(Prober(body_cap=1024), url, body_regex="needle")
    assert (capped.reason, capped.status) == ("body", 200)
    assert capped.detail == "body does not match 'needle' (body truncated at 64 bytes)"
    assert full.success and full.detail == "ok"


async def test_chunked_response_split_across_reads(prober: Prober) -> None:
    pieces = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n",
        b"\r\n5\r\nhel",
        b"lo\r",
        b"\n6;ext=1\r\n world\r",
        b"\n0\r\nX-Trailer: t\r\n",
        b"\r\n",
    )
    # The server stays open afterwards: the probe must end at the last chunk, not at close.
    async with raw_server(scripted(*pieces)) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", body_regex=r"\Ahello world\z")
    assert r.success, r.detail
    assert r.transfer > 0


async def test_chunked_from_aiohttp(prober: Prober) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(50):
            await resp.write(b"line %d\n" % i)
        await resp.write_eof()
        return resp

    async with http_server([web.get("/", chunked)]) as srv:
        r = await probe(
            prober,
            f"http://127.0.0.1:{srv.port}/",
            body_regex=r"(?s)\Aline 0\n.*line 49\n\z",
        )
    assert r.success, r.detail


async def test_content_length_response_ends_without_close(prober: Prober) -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world-and-extra-bytes"
    async with raw_server(scripted(response)) as port:
        r = await probe(
            prober,
            f"http://127.0.0.1:{port}/",
            body_regex=r"\Ahello world\z",
            timeout=2,
        )
    assert r.success, r.detail


async def test_until_close_response(prober: Prober) -> None:
    pieces = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello", b" wor", b"ld")
    async with raw_server(scripted(*pieces, then_close=True)) as port:
        r = await probe(
            prober,
            f"http://127.0.0.1:{port}/",
            body_regex=r"\Ahello world\z",
            timeout=2,
        )
    assert r.success, r.detail


async def test_interim_response_is_skipped(prober: Prober) -> None:
    response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with raw_server(scripted(response)) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=2)
    assert r.success and r.status == 200


async def test_head_request_reads_no_body(prober: Prober) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="a body HEAD does not get")

    async with http_server([web.get("/", ok)]) as srv:
        r = await probe(prober, f"http://127.0.0.1:{srv.port}/", method="HEAD", timeout=2)
    assert r.success and r.status == 200


async def test_request_headers(prober: Prober) -> None:
    seen: list[dict[str, Any]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(
            {
                "host": request.headers.getall("Host"),
                "path_qs": request.path_qs,
                "x-probe": request.headers.getall("X-Probe", []),
                "authorization": request.headers.get("Authorization"),
                "user-agent": request.headers.getall("User-Agent"),
                "accept": request.headers.getall("Accept"),
                "connection": request.headers.get("Connection"),
            }
        )
        return web.Response(status=500)

    secret = "Bearer s3cr3t-t0ken"
    async with http_server([web.get("/health", record)]) as srv:
        r = await probe(
            prober,
            f"http://127.0.0.1:{srv.port}/health?x=1&y=a%20b",
            headers=(("X-Probe", "platform"), ("Authorization", secret), ("x-probe", "check")),
            host_header="api.example.test",
        )
        default = await probe(
            prober,
            f"http://127.0.0.1:{srv.port}/health",
            headers=(("User-Agent", "mine"), ("accept", "application/json")),
        )
        port = srv.port
    assert seen[0] == {
        "host": ["api.example.test"],
        "path_qs": "/health?x=1&y=a%20b",
        "x-probe": ["check"],
        "authorization": secret,
        "user-agent": [f"cutover/{__version__}"],
        "accept": ["*/*"],
        "connection": "close",
    }
    assert seen[1]["host"] == [f"127.0.0.1:{port}"]
    assert seen[1]["user-agent"] == ["mine"] and seen[1]["accept"] == ["application/json"]
    assert r.reason == "status" and "s3cr3t" not in r.detail
    assert default.reason == "status"


async def test_post_with_body(prober: Prober) -> None:
    seen: list[tuple[str, str | None, bytes]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append((request.method, request.headers.get("Content-Length"), await request.read()))
        return web.Response(text="ok")

    async with http_server([web.post("/", echo)]) as srv:
        url = f"http://127.0.0.1:{srv.port}/"
        with_body = await probe(prober, url, method="POST", body=b'{"ping": 1}')
        empty = await probe(prober, url, method="POST")
    assert with_body.success and empty.success
    assert seen == [("POST", "11", b'{"ping": 1}'), ("POST", "0", b"")]


async def test_request_larger_than_the_socket_buffer_is_sent_whole(prober: Prober) -> None:
    # The server takes its time reading, so send() takes the request in several parts.
    body = os.urandom(8 << 20)
    got: list[bytes] = []

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        received = bytearray()
        while len(received) < length:
            received += await reader.read(256 * 1024)
            await asyncio.sleep(0.002)
        got.append(bytes(received))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_server(slow_reader) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", method="PUT", body=body, timeout=20)
    assert (r.success, r.status, r.detail) == (True, 200, "ok"), r
    assert got == [body]


async def test_connect_that_never_completes_times_out_in_connect(prober: Prober) -> None:
    # A listener that never accepts, with its accept queue full: Linux drops further SYNs, so
    # the probe's connect stays pending, as with a firewalled or unreachable platform.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.05)
        before = await settle_fds(fd_count())
        r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=0.3)
        assert (r.reason, r.status) == ("timeout", 0), r
        assert r.detail == "timed out after 0.3s in connect"
        assert r.duration >= 0.299
        assert r.connect > 0.0 and r.tls == 0.0 and r.processing == 0.0
        assert await settle_fds(before) <= before
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_spec_rejects_what_cannot_be_sent() -> None:
    with pytest.raises(ValueError, match="Authorization") as err:
        ProbeSpec("http://h/", headers=(("Authorization", "Bearer abc\r\nX-Evil: 1"),))
    assert "abc" not in str(err.value)
    with pytest.raises(ValueError, match="scheme"):
        ProbeSpec("ftp://h/")
    with pytest.raises(ValueError, match="credentials"):
        ProbeSpec("https://user:pw@h/")
    with pytest.raises(ValueError, match="method"):
        ProbeSpec("http://h/", method="GET /x")


# ---------------------------------------------------------------- response parsing (llhttp)

OK2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
MALFORMED = [
    ("content-length-space", b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", "Invalid header field char"),
    ("folded-transfer-encoding", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip,\r\n chunked\r\n\r\n0\r\n\r\n", "Unexpected whitespace after header value"),
    ("folded-other-header", b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n", "Unexpected whitespace after header value"),
    ("te-and-cl", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", "Content-Length can't be present with Transfer-Encoding"),
    ("chunk-size-overflow", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", "Chunk size overflow"),
    ("chunk-size-not-hex", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "Invalid character in chunk size"),
    ("http-1.9", b"HTTP/1.9 200 OK\r\nContent-Length: 0\r\n\r\n", "Invalid HTTP version"),
    ("lowercase-http", b"http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "Expected HTTP/, RTSP/ or ICE/"),
    ("status-two-digits", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", "Invalid status code"),
    ("status-four-digits", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "Invalid response status"),
    ("nul-in-value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", "Invalid header value char"),
    ("nul-in-name", b"HTTP/1.1 200 OK\r\nX\x00A: ab\r\nContent-Length: 0\r\n\r\n", "Invalid header token"),
    ("empty-header-name", b"HTTP/1.1 200 OK\r\n: ab\r\nContent-Length: 0\r\n\r\n", "Invalid header token"),
    ("header-without-colon", b"HTTP/1.1 200 OK\r\nBroken\r\nContent-Length: 0\r\n\r\n", "Invalid header token"),
    ("space-before-first-header", b"HTTP/1.1 200 OK\r\n X-A: b\r\nContent-Length: 0\r\n\r\n", "Unexpected space after start line"),
    ("bare-lf-head", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", "Missing expected CR after response line"),
    ("bare-lf-header", b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n", "Missing expected CR after header value"),
    ("duplicate-content-length", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "Duplicate Content-Length"),
    ("negative-content-length", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok", "Invalid character in Content-Length"),
    ("content-length-overflow", b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nok", "Content-Length overflow"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("response", "why"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
async def test_malformed_response_is_error(prober: Prober, response: bytes, why: str) -> None:
    # The server stays open: the failure is the parser's word, not a closed connection's.
    async with raw_server(scripted(response)) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=5)
    assert (r.success, r.reason, r.detail) == (False, "error", f"malformed response: {why}")


ACCEPTED = [
    # (id, what the server sends, does it close afterwards, probe options, status, body_regex)
    ("close-delimited-body", (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhel", b"lo"), True, {}, 200),
    ("non-chunked-transfer-encoding", (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",), True, {}, 200),
    ("chunked-not-last", (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, x\r\n\r\nhello",), True, {}, 200),
    ("204-with-content-length", (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",), False, {"expect_status": frozenset({204})}, 204),
    ("304-with-content-length", (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",), False, {"expect_status": frozenset({304})}, 304),
    ("head-with-content-length", (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",), False, {"method": "HEAD"}, 200),
    ("data-after-connection-close", (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhelloGARBAGE",), False, {}, 200),
    ("second-response-ignored", (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 500 No\r\nContent-Length: 0\r\n\r\n",), False, {}, 200),
    ("early-hints-and-continue", (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), False, {}, 200),
    ("ten-interim", (b"HTTP/1.1 100 Continue\r\n\r\n" * 10 + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",), False, {}, 200),
    ("interim-content-length-forgotten", (b"HTTP/1.1 100 Continue\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\n\r\nhello",), True, {}, 200),
    ("head-byte-by-byte", (*(bytes([b]) for b in b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), b"hello"), False, {}, 200),
    ("head-just-under-64-KiB", (b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 65400 + b"\r\nContent-Length: 5\r\n\r\nhello",), False, {}, 200),
]  # fmt: skip


@pytest.mark.parametrize(
    ("pieces", "then_close", "options", "status"),
    [a[1:] for a in ACCEPTED],
    ids=[a[0] for a in ACCEPTED],
)
async def test_accepted_response_framing(
    prober: Prober,
    pieces: tuple[bytes, ...],
    then_close: bool,
    options: dict[str, Any],
    status: int,
) -> None:
    has_body = status == 200 and options.get("method") != "HEAD"
    regex = r"\Ahello\z" if has_body else None
    async with raw_server(scripted(*pieces, then_close=then_close)) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", body_regex=regex, timeout=5, **options)
    assert (r.success, r.status, r.detail) == (True, status, "ok"), r


@pytest.mark.parametrize(
    ("response", "detail"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "connection closed after 3 body bytes"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "connection closed after 5 body bytes"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "connection closed in the response head"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "connection closed in the response head"),
    ],
    ids=["content-length", "chunked", "head", "after-interim"],
)  # fmt: skip
async def test_response_cut_by_close_is_error(prober: Prober, response: bytes, detail: str) -> None:
    async with raw_server(scripted(response, then_close=True)) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=5)
    assert (r.reason, r.detail) == ("error", detail)


async def test_response_head_over_64_kib_is_error(prober: Prober) -> None:
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 65536 + b"\r\nContent-Length: 2\r\n\r\nok"
    # in one piece, and trickled in small ones: the limit holds however the bytes arrive
    trickle = tuple(big[i : i + 8192] for i in range(0, len(big), 8192))
    async with raw_server(scripted(big)) as whole, raw_server(scripted(*trickle)) as parts:
        for port in (whole, parts):
            r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=5)
            assert (r.reason, r.detail) == ("error", "response head larger than 64 KiB")


async def test_101_is_the_final_status(prober: Prober) -> None:
    switching = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    async with raw_server(scripted(switching + b"\x81\x05hello")) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=5)
        expected = await probe(
            prober, f"http://127.0.0.1:{port}/", timeout=5, expect_status=frozenset({101})
        )
    assert (r.reason, r.status, r.detail) == ("status", 101, "status 101 not 2xx")
    assert expected.success and expected.status == 101


async def test_more_than_ten_interim_responses_fail(prober: Prober) -> None:
    eleven = b"HTTP/1.1 100 Continue\r\n\r\n" * 11 + OK2
    async with raw_server(scripted(eleven)) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=5)
    assert (r.reason, r.status, r.detail) == (
        "error",
        0,
        "more than 10 interim (1xx) responses",
    )


async def test_interim_flood_fails_at_once_and_holds_nothing(
    prober: Prober, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # 20 000 interim responses before a valid 200: once a RecursionError in the loop's reader
    # callback, a stalled loop and a wrong reason.
    flood = b"HTTP/1.1 100 Continue\r\n\r\n" * 20_000 + OK2
    caplog.set_level(logging.DEBUG)
    async with raw_server(scripted(flood)) as port, http_server([web.get("/", ok_handler)]) as srv:
        healthy = ProbeSpec(f"http://127.0.0.1:{srv.port}/")
        flooded, *others = await asyncio.gather(
            probe(prober, f"http://127.0.0.1:{port}/", timeout=5),
            *(prober.probe(healthy) for _ in range(50)),
        )
    assert (flooded.reason, flooded.detail) == ("error", "more than 10 interim (1xx) responses")
    assert [r.reason for r in others] == [None] * 50
    problems = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert problems == []
    assert "RecursionError" not in caplog.text + capfd.readouterr().err


# ---------------------------------------------------------------- body_regex (RE2)


async def on_grid(prober: Prober, spec: ProbeSpec, interval: float, slots: int) -> int:
    """Probe on a grid of `slots` slots, as the daemon does: a slot missed while the loop was
    held is skipped, not made up. Returns the probes made: `slots` when nothing held the loop."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    made = slot = 0
    while slot < slots:
        await asyncio.sleep(max(0.0, start + slot * interval - loop.time()))
        result = await prober.probe(spec)
        assert result.success, result
        made += 1
        slot = int((loop.time() - start) // interval) + 1
    return made


async def keeps_schedule(prober: Prober, hostile: ProbeSpec, steady: list[ProbeSpec]) -> None:
    """While `hostile` is probed back to back, every steady check keeps most of its slots."""
    slots = 30
    stop = asyncio.Event()
    hostile_results: list[ProbeResult] = []

    async def keep_probing() -> None:
        while not stop.is_set():
            hostile_results.append(await prober.probe(hostile))
            # a breath between probes: the platform answers from this loop too, and a harness
            # that saturates it would starve the steady checks whatever the prober does
            await asyncio.sleep(0.005)

    task = asyncio.create_task(keep_probing())
    await asyncio.sleep(0.05)  # the first hostile probe is under way
    try:
        made = await asyncio.gather(*(on_grid(prober, s, 0.05, slots) for s in steady))
    finally:
        stop.set()
        await task
    assert hostile_results and {r.reason for r in hostile_results} == {"body"}
    assert hostile_results[0].detail.startswith("body does not match")
    # Counted in probes, not in seconds: a loop held for one match (6-10 s with Python's re,
    # 0.5 s for the DFA-hostile body) keeps at most a few of the 30 slots of 50 ms; a loaded
    # 2-core runner keeps well over a third.
    assert min(made) >= slots // 3, made


async def test_backtracking_pattern_over_a_large_body(prober: Prober) -> None:
    # The issue's case: 120 KB of `a` took Python's backtracking re 6-10 s per probe, with the
    # event loop held all along; RE2 answers in well under a millisecond.
    big = b"a" * 120_000

    async def answer(request: web.Request) -> web.Response:
        if request.path == "/big":
            return web.Response(body=big)
        return web.json_response({"status": "ok"})

    regex = r'.*"status":\s*"ok"'
    async with http_server([web.get("/{p}", answer)]) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        hostile = ProbeSpec(f"{base}/big", body_regex=regex)
        steady = [ProbeSpec(f"{base}/ok{i}", body_regex=regex) for i in range(3)]
        await keeps_schedule(prober, hostile, steady)


async def test_dfa_hostile_pattern_over_a_large_body(prober: Prober) -> None:
    # Linear is not cheap: this small pattern makes RE2 build a new DFA state at nearly every
    # byte of random a/b text, about half a second per MiB. Matched in the prober's thread,
    # not on the loop, the other checks keep their schedule.
    body = bytes(97 + (b & 1) for b in os.urandom(1 << 20))

    async def answer(request: web.Request) -> web.Response:
        if request.path == "/big":
            return web.Response(body=body)
        return web.json_response({"status": "ok"})

    async with http_server([web.get("/{p}", answer)]) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        hostile = ProbeSpec(f"{base}/big", body_regex=r"a[ab]{20}z")
        steady = [ProbeSpec(f"{base}/ok{i}", body_regex=r'"status":\s*"ok"') for i in range(3)]
        await keeps_schedule(prober, hostile, steady)


async def test_body_regex_is_matched_on_bytes(prober: Prober) -> None:
    body = "température: ok\n".encode() + b"\xff\xfe binary tail"

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body)

    async with http_server([web.get("/", answer)]) as srv:
        url = f"http://127.0.0.1:{srv.port}/"
        results = [
            await probe(prober, url, body_regex=pattern)
            for pattern in ("température: ok", r"\Atemp.{5}ure", r"tail\z", r"ok$", "^ok")
        ]
    # non-ASCII text matches its UTF-8 bytes, `.` any byte, and the body need not be UTF-8
    assert [r.reason for r in results[:3]] == [None, None, None]
    assert [r.reason for r in results[3:]] == ["body", "body"]  # no multi-line mode by default


def test_spec_refuses_what_re2_cannot_run() -> None:
    with pytest.raises(ValueError, match=r"not supported by RE2 \(linear-time\): .*\\1"):
        ProbeSpec("http://h/", body_regex=r"(a)\1")
    with pytest.raises(ValueError, match="at most 1000"):
        ProbeSpec("http://h/", body_regex=r"[\s\S]{600}[\s\S]{600}z")


# ---------------------------------------------------------------- Accept-Encoding


async def test_identity_is_asked_unless_the_check_says_otherwise(prober: Prober) -> None:
    seen: list[str | None] = []

    async def gzipping(request: web.Request) -> web.Response:
        # RFC 9110 12.5.3: no Accept-Encoding means any coding is acceptable
        accept = request.headers.get("Accept-Encoding")
        seen.append(accept)
        body = b'{"status": "ok"}'
        if accept is None or "gzip" in accept or "*" in accept:
            return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})
        return web.Response(body=body)

    regex = r'"status":\s*"ok"'
    async with http_server([web.get("/", gzipping)]) as srv:
        url = f"http://127.0.0.1:{srv.port}/"
        plain = await probe(prober, url, body_regex=regex)
        own = await probe(prober, url, body_regex=regex, headers=(("accept-encoding", "gzip"),))
    assert seen == ["identity", "gzip"]
    assert plain.success, plain.detail
    # the check asked for gzip itself: its bytes are gzip's, which the regex does not match
    assert own.reason == "body"


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("api.example.test")


def not_after(cert: trustme.LeafCert) -> float:
    pem = cert.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def server_context(cert: trustme.LeafCert, sni_seen: list[str | None]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)

    def record_sni(obj: ssl.SSLObject, name: str | None, c: ssl.SSLContext) -> None:
        sni_seen.append(name)

    ctx.sni_callback = record_sni
    return ctx


def trusting(ca: trustme.CA) -> Prober:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    return Prober(ssl_context=ctx)


async def ok_handler(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_tls_with_host_header(ca: trustme.CA, leaf: trustme.LeafCert) -> None:
    sni: list[str | None] = []
    async with http_server([web.get("/", ok_handler)], server_context(leaf, sni)) as srv:
        r = await probe(
            trusting(ca), f"https://127.0.0.1:{srv.port}/", host_header="api.example.test"
        )
    assert r.success, r.detail
    assert r.tls > 0
    assert r.tls_expiry == not_after(leaf)
    assert sni == ["api.example.test"]


async def test_tls_without_host_header_fails_on_the_name(
    ca: trustme.CA, leaf: trustme.LeafCert
) -> None:
    sni: list[str | None] = []
    async with http_server([web.get("/", ok_handler)], server_context(leaf, sni)) as srv:
        r = await probe(trusting(ca), f"https://127.0.0.1:{srv.port}/")
    assert (r.reason, r.status) == ("tls", 0)
    assert r.detail.startswith("certificate verify failed") and "127.0.0.1" in r.detail
    assert r.tls > 0 and r.processing == 0.0
    assert r.tls_expiry == not_after(leaf)  # read by a second, unverified handshake
    assert sni == [None, None]  # no SNI for an IP literal, in either handshake


async def test_tls_untrusted_ca_still_reports_expiry(
    leaf: trustme.LeafCert, ca: trustme.CA
) -> None:
    sni: list[str | None] = []
    async with http_server([web.get("/", ok_handler)], server_context(leaf, sni)) as srv:
        prober = Prober()  # the system's trust store: trustme's CA is not in it
        url = f"https://127.0.0.1:{srv.port}/"
        first = await probe(prober, url, host_header="api.example.test")
        second = await probe(prober, url, host_header="api.example.test")
    for r in (first, second):
        assert (r.reason, r.status) == ("tls", 0)
        assert r.detail.startswith("certificate verify failed")
        assert r.tls_expiry == not_after(leaf)
        assert r.tls > 0 and r.processing == 0.0 and r.transfer == 0.0
    # one extra handshake read the certificate; the second failure reused it (cached a minute)
    assert sni == ["api.example.test"] * 3


async def test_tls_expired_certificate_reports_its_expiry(ca: trustme.CA) -> None:
    past = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    expired = ca.issue_cert(
        "api.example.test", not_before=past - dt.timedelta(days=90), not_after=past
    )
    async with http_server([web.get("/", ok_handler)], server_context(expired, [])) as srv:
        r = await probe(
            trusting(ca), f"https://127.0.0.1:{srv.port}/", host_header="api.example.test"
        )
    assert (r.reason, r.status) == ("tls", 0)
    assert r.detail == "certificate verify failed: certificate has expired"
    assert r.tls_expiry == past.timestamp() == not_after(expired)


async def test_tls_expiry_read_stays_within_the_deadline(leaf: trustme.LeafCert) -> None:
    # The first connection gets a certificate that fails verification; every later one hangs
    # before its handshake: the read of the certificate gives up at the probe's deadline.
    ctx = server_context(leaf, [])
    connections = 0

    async def first_tls_then_hang(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await writer.start_tls(ctx)
        await hang(reader, writer)

    async with raw_server(first_tls_then_hang) as port:
        spec = ProbeSpec(f"https://127.0.0.1:{port}/", host_header="api.example.test", timeout=0.5)
        # 20 times the deadline: without a bound, the handshake would wait for its own 60 s
        r = await asyncio.wait_for(Prober().probe(spec), 10)
    check_phases(r)
    assert (r.reason, r.tls_expiry) == ("tls", None)
    assert r.detail.startswith("certificate verify failed")
    assert connections == 2


async def test_tls_skip_verify_still_reports_expiry(leaf: trustme.LeafCert) -> None:
    async with http_server([web.get("/", ok_handler)], server_context(leaf, [])) as srv:
        r = await probe(Prober(), f"https://127.0.0.1:{srv.port}/", tls_skip_verify=True)
    assert r.success, r.detail
    assert r.tls > 0 and r.tls_expiry == not_after(leaf)


async def test_tls_expiry_after_2049_generalized_time(ca: trustme.CA) -> None:
    # From 2050 on, X.509 encodes notAfter as GeneralizedTime instead of UTCTime.
    late = ca.issue_cert("api.example.test", not_after=dt.datetime(2051, 3, 4, 5, 6, 7))
    async with http_server([web.get("/", ok_handler)], server_context(late, [])) as srv:
        r = await probe(Prober(), f"https://127.0.0.1:{srv.port}/", tls_skip_verify=True)
    assert r.success
    expected = dt.datetime(2051, 3, 4, 5, 6, 7, tzinfo=dt.UTC).timestamp()
    assert r.tls_expiry == expected == not_after(late)


@pytest.mark.parametrize(
    ("pieces", "then_close"),
    [
        (
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", b"lo\r\n0\r\n\r\n"),
            False,
        ),
        ((b"HTTP/1.1 200 OK\r\n\r\nhel", b"lo"), True),
    ],
    ids=["chunked", "until-close"],
)
async def test_tls_framing(
    leaf: trustme.LeafCert, pieces: tuple[bytes, ...], then_close: bool
) -> None:
    ctx = server_context(leaf, [])
    async with raw_server(scripted(*pieces, then_close=then_close), ctx) as port:
        r = await probe(
            Prober(),
            f"https://127.0.0.1:{port}/",
            tls_skip_verify=True,
            body_regex=r"\Ahello\z",
            timeout=2,
        )
    assert r.success, r.detail


async def test_tls_hang_times_out_in_tls(prober: Prober) -> None:
    async with raw_server(hang) as port:
        r = await probe(prober, f"https://127.0.0.1:{port}/", timeout=0.3, tls_skip_verify=True)
    assert r.reason == "timeout" and r.detail == "timed out after 0.3s in tls"
    assert r.tls_expiry is None


async def test_plain_http_server_on_https_is_tls_failure(prober: Prober) -> None:
    async with http_server([web.get("/", ok_handler)]) as srv:
        r = await probe(prober, f"https://127.0.0.1:{srv.port}/", tls_skip_verify=True)
    assert r.reason == "tls"


# ---------------------------------------------------------------- concurrency and resources


async def test_hanging_target_does_not_delay_healthy_ones(prober: Prober) -> None:
    loop = asyncio.get_running_loop()

    async def timed(spec: ProbeSpec) -> tuple[ProbeResult, float]:
        result = await prober.probe(spec)
        return result, loop.time()

    async with raw_server(hang) as hang_port, http_server([web.get("/", ok_handler)]) as srv:
        stuck = asyncio.create_task(timed(ProbeSpec(f"http://127.0.0.1:{hang_port}/", timeout=1)))
        await asyncio.sleep(0.05)
        healthy_spec = ProbeSpec(f"http://127.0.0.1:{srv.port}/")
        healthy = await asyncio.gather(*(timed(healthy_spec) for _ in range(20)))
        stuck_result, stuck_end = await stuck
    assert stuck_result.reason == "timeout"
    assert all(r.success for r, _ in healthy)
    assert max(end for _, end in healthy) < stuck_end


async def test_no_fd_leak_after_many_failing_probes() -> None:
    prober = Prober()
    async with raw_server(hang) as hang_port, raw_server(reset_mid_body) as reset_port:
        hanging = ProbeSpec(f"http://127.0.0.1:{hang_port}/", timeout=0.05)
        resetting = ProbeSpec(f"http://127.0.0.1:{reset_port}/", timeout=2)
        await prober.probe(hanging)
        await prober.probe(resetting)
        before = await settle_fds(fd_count())
        for _ in range(2):
            results = await asyncio.gather(
                *(prober.probe(hanging) for _ in range(50)),
                *(prober.probe(resetting) for _ in range(50)),
            )
            assert {r.reason for r in results} == {"timeout", "error"}
        after = await settle_fds(before)
    assert after <= before


async def test_cancel_propagates_and_closes(prober: Prober) -> None:
    async with raw_server(hang) as port:
        spec = ProbeSpec(f"http://127.0.0.1:{port}/", timeout=5)
        await prober.probe(ProbeSpec(f"http://127.0.0.1:{port}/", timeout=0.01))
        before = await settle_fds(fd_count())
        tasks = [asyncio.create_task(prober.probe(spec)) for _ in range(10)]
        await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert await settle_fds(before) <= before
