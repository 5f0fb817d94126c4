"""exporter.probe against real local servers: aiohttp apps and raw asyncio sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
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
from exporter.probe import PHASES, REASONS, Prober, ProbeResult, ProbeSpec

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
    # the server's sleep runs on the test's loop: on uvloop, to the millisecond
    assert delay - 0.001 <= r.processing < r.duration < delay + 2.0


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
    # libuv (uvloop) keeps its timers to the millisecond: the deadline may fire a little early
    assert 0.299 <= r.duration < 2.3
    assert r.processing >= 0.29 and r.transfer == 0.0


async def test_stall_mid_body_times_out_in_transfer(prober: Prober) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten.."
    async with raw_server(scripted(head)) as port:
        r = await probe(prober, f"http://127.0.0.1:{port}/", timeout=0.3)
    assert (r.reason, r.status) == ("timeout", 200)
    assert r.detail == "timed out after 0.3s in transfer"
    assert r.transfer > 0.2


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
        r = await probe(
            prober, f"http://127.0.0.1:{port}/", body_regex=r"\Ahello world\z"
        )
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
        assert r.connect >= 0.29 and r.processing == 0.0
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


async def test_tls_untrusted_ca(leaf: trustme.LeafCert) -> None:
    async with http_server([web.get("/", ok_handler)], server_context(leaf, [])) as srv:
        r = await probe(Prober(), f"https://127.0.0.1:{srv.port}/", host_header="api.example.test")
    assert r.reason == "tls" and r.detail.startswith("certificate verify failed")


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
