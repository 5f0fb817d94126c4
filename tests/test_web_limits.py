"""The daemon's own HTTP server under a flood: header timeout, connection cap, descriptor reserve."""

from __future__ import annotations

import asyncio
import resource
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from exporter.config import parse_config
from exporter.daemon import Daemon
from exporter.web.app import start_server
from tests.conftest import ROOT, DaemonProcess, FakePlatform, config_yaml, daemon_env, free_port

Start = Callable[..., DaemonProcess]
# 256 descriptors, soft and hard: raising the soft limit cannot help; a quarter is 64
NOFILE = 256
LIMIT = NOFILE // 4
HALF_HEAD = b"GET /-/healthy HTTP/1.1\r\nHost: cutover\r\nUser-Agent: slo"
FULL_HEAD = b"GET /-/healthy HTTP/1.1\r\nHost: cutover\r\n\r\n"
# the platforms answer from the test's loop, which the test keeps busy too: a timeout that
# a slow turn of that loop cannot hit (a descriptor shortage fails probes at once, in connect)
SLACK = {"interval": "500ms", "timeout": "500ms"}
PLATFORMS = ("heroku", "aws")


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


class LimitedDaemon(DaemonProcess):
    """The daemon in a process allowed 256 open files."""

    def __init__(self, config: Path, port: int, log: Path, env: dict[str, str]) -> None:
        self.config, self.port, self.log_path = config, port, log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run", "--config", str(config),
             "--listen", f"127.0.0.1:{port}", "--log-level", "debug"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            preexec_fn=_limit_descriptors,
        )  # fmt: skip


@pytest.fixture
def start_limited(tmp_path: Path) -> Iterator[Callable[..., LimitedDaemon]]:
    started: list[LimitedDaemon] = []

    def start(config_text: str, **env: str) -> LimitedDaemon:
        path = tmp_path / "cutover.yml"
        path.write_text(config_text)
        d = LimitedDaemon(path, free_port(), tmp_path / "daemon.log", daemon_env(**env))
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _hold(port: int, n: int, data: bytes) -> list[Conn]:
    """n connections that each send `data` and then wait."""

    async def one() -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        return reader, writer

    return list(await asyncio.gather(*(one() for _ in range(n))))


def _flood(port: int, n: int, data: bytes) -> list[socket.socket]:
    """n connections that each send `data` and then wait, opened from a thread: the platforms
    share the test's event loop, and opening 300 connections there would stall their answers."""
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(data)
        socks.append(sock)
    return socks


async def _healthy_answers(d: DaemonProcess, tries: int) -> list[int | str]:
    """/-/healthy over a fresh connection each time: the status, or the error's name."""
    answers: list[int | str] = []
    timeout = aiohttp.ClientTimeout(total=5)
    for _ in range(tries):
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(force_close=True), timeout=timeout
                ) as s,
                s.get(d.url + "/-/healthy") as r,
            ):
                answers.append(r.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            answers.append(type(exc).__name__)
        await asyncio.sleep(0.1)
    return answers


def _probes(m: dict[str, float], platform: str) -> float:
    return sum(v for k, v in m.items() if k.startswith("cutover_probes_total{") and platform in k)


def _failures(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("cutover_probe_failures_total{"))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_half_sent_heads_neither_starve_the_health_check_nor_the_probes(
    platforms: tuple[FakePlatform, FakePlatform],
    start_limited: Callable[..., LimitedDaemon],
    loop: str,
) -> None:
    """300 connections holding half a request head, under a 256-descriptor limit: the daemon
    keeps at most a quarter of its descriptors for connections, evicts the oldest headless one
    for each new one, answers every health check, and keeps probing without a failure."""
    baseline, candidate = platforms
    d = start_limited(config_yaml(baseline.url, candidate.url, **SLACK), CUTOVER_LOOP=loop)
    await d.wait_ready()
    before = await d.metrics()

    attackers = await asyncio.to_thread(_flood, d.port, 300, HALF_HEAD)
    try:
        answers = await _healthy_answers(d, 20)
        # the attackers hold on until both platforms have been probed 4 more times
        after = await asyncio.wait_for(
            d.wait_for(lambda m: all(_probes(m, p) >= _probes(before, p) + 4 for p in PLATFORMS)),
            30,
        )
    finally:
        for sock in attackers:
            sock.close()

    assert answers == [200] * 20
    assert _failures(after) == 0
    assert after["cutover_http_connection_limit"] == LIMIT
    assert after['cutover_http_connections_rejected_total{reason="limit"}'] >= 300 - LIMIT
    assert after["cutover_http_connections"] <= LIMIT
    # what was held back by the once-a-minute rate is said at the latest when stopping
    assert d.stop() == 0
    log = d.log()
    assert f"HTTP: connection limit ({LIMIT}) reached: closed" in log
    assert "still without a request head" in log
    assert "Traceback" not in log and "out of system resource" not in log


async def test_idle_keep_alive_connections_give_way_to_new_ones(
    platforms: tuple[FakePlatform, FakePlatform], start_limited: Callable[..., LimitedDaemon]
) -> None:
    """Complete requests on connections kept open afterwards do not fill the cap either: the
    connection idle longest between requests is closed for a new one (RFC 9112 9.6)."""
    baseline, candidate = platforms
    d = start_limited(config_yaml(baseline.url, candidate.url, **SLACK))
    await d.wait_ready()
    holders = await asyncio.to_thread(_flood, d.port, 200, FULL_HEAD)
    try:
        answers = await _healthy_answers(d, 20)
        m = await asyncio.wait_for(d.metrics(), 30)
    finally:
        for sock in holders:
            sock.close()
    assert answers == [200] * 20
    assert m['cutover_http_connections_rejected_total{reason="limit"}'] >= 200 - LIMIT
    assert d.stop() == 0
    assert f"connection limit ({LIMIT}) reached: " in d.log()
    assert "idle between requests" in d.log()


async def test_a_head_not_sent_in_time_closes_the_connection(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    """--http-header-timeout (here from CUTOVER_HTTP_HEADER_TIMEOUT): half a head, nothing at
    all, or a head trickled byte by byte are closed; a request sent in time is answered."""
    baseline, candidate = platforms
    d = start_daemon(config_yaml(baseline.url, candidate.url), CUTOVER_HTTP_HEADER_TIMEOUT="300ms")
    await d.wait_ready()
    half = await _hold(d.port, 4, HALF_HEAD)
    silent = await _hold(d.port, 1, b"")
    trickle = (await _hold(d.port, 1, b""))[0]

    async def drip() -> None:
        for byte in FULL_HEAD:
            if trickle[0].at_eof():
                return
            trickle[1].write(bytes([byte]))
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    # a request sent at once on a connection opened alongside: answered, not cut
    assert await d.get("/-/healthy") == (200, "OK\n")

    # every one of them hears the end of the connection, and no answer
    closed = 0
    for reader, writer in [*half, *silent, trickle]:
        assert await asyncio.wait_for(reader.read(), 20) == b""
        writer.close()
        closed += 1
    await dripping
    assert closed == 6
    m = await d.metrics()
    assert m['cutover_http_connections_rejected_total{reason="header_timeout"}'] == 6
    assert m['cutover_http_connections_rejected_total{reason="limit"}'] == 0
    assert "closed" in d.log() and "sent no complete request head within 0.3s" in d.log()


async def test_cleanup_closes_the_port_and_every_connection() -> None:
    """runner.cleanup() stops the guard's accept loop and closes every connection: silent ones,
    those with half a head and idle keep-alive ones alike."""
    cfg = parse_config(
        config_yaml("http://127.0.0.1:1", "http://127.0.0.1:2"), env={"PROBE_SECRET": "s3cret"}
    )
    runner, port = await start_server(Daemon(cfg), "127.0.0.1", 0)
    try:
        headless = await _hold(port, 3, HALF_HEAD) + await _hold(port, 1, b"")
        kept = await _hold(port, 1, FULL_HEAD)
        # answered, and kept open for the next request
        assert (await kept[0][0].readuntil(b"OK\n")).startswith(b"HTTP/1.1 200 OK")
    finally:
        await runner.cleanup()
    for reader, writer in [*headless, *kept]:
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


@pytest.mark.parametrize(
    ("value", "problem"),
    [("0s", "must be greater than 0"), ("soon", "invalid duration"), ("-1s", "invalid duration")],
)
def test_a_bad_header_timeout_is_a_usage_error(tmp_path: Path, value: str, problem: str) -> None:
    cfg = tmp_path / "cutover.yml"
    cfg.write_text(config_yaml("http://127.0.0.1:1", "http://127.0.0.1:2"))
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "run", "--config", str(cfg),
         "--listen", f"127.0.0.1:{free_port()}", f"--http-header-timeout={value}"],
        capture_output=True, text=True, env=daemon_env(), cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert f"cutover: --http-header-timeout: {value!r} must" in r.stderr or (
        f"--http-header-timeout: invalid duration {value!r}" in r.stderr
    )
    assert problem in r.stderr


async def test_a_client_that_stops_reading_is_aborted(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    """--http-write-timeout (here from CUTOVER_HTTP_WRITE_TIMEOUT): a scraper that asks and
    never reads would hold its handler, busy and never evicted, for ever."""
    baseline, candidate = platforms
    d = start_daemon(config_yaml(baseline.url, candidate.url), CUTOVER_HTTP_WRITE_TIMEOUT="1s")
    await d.wait_ready()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window, and no reads
    sock.connect(("127.0.0.1", d.port))
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: cutover\r\n\r\n" * 500)
    try:
        m = await d.wait_for(
            lambda m: m.get('cutover_http_connections_rejected_total{reason="write_timeout"}') == 1,
            timeout=30,
        )
        assert m['cutover_http_connections_rejected_total{reason="limit"}'] == 0
        assert (await d.get("/-/healthy"))[0] == 200
        assert "aborted 1 connection(s) whose client read nothing of an answer for 1s" in d.log()
    finally:
        sock.close()
    assert d.stop() == 0
