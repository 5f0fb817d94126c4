"""The Heroku log drain: logplex bodies read line by line, and POST /api/v1/drains/heroku over
real sockets, every bad input of issue 12 included (tests/logplex.py builds the bodies)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aiohttp
import pytest

from exporter.config import parse_config
from exporter.daemon import Daemon, secrets_of
from exporter.traffic.counts import LATENCY_BOUNDS, Histogram
from exporter.traffic.drain import (
    DELIVERY_MARGIN,
    MAX_SKEW,
    STALE_AFTER,
    Batch,
    Drains,
    DrainSpec,
    LineReader,
    RouteGroups,
    Verdict,
    read_body,
)
from exporter.traffic.routes import Routes
from exporter.traffic.timeline import Timeline
from exporter.web.app import start_server
from tests import logplex as lp
from tests.conftest import DaemonProcess, FakePlatform, config_yaml

Start = Callable[..., DaemonProcess]
TOKEN = "drain-token-6f1e0c9a7b2d4e58"
OTHER_TOKEN = "other-drain-3c2b1a09f8e7d6c5"
PATH = "/api/v1/drains/heroku"
T0 = datetime(2026, 12, 1, 19, 0, 0, tzinfo=UTC).timestamp()  # the second of lp's lines
GROUPS = RouteGroups([("redemptions", "^/v1/redemptions"), ("orders", "^/v1/orders")])


def traffic_yaml(hosts: str = "", routes: bool = True, token: str = "${DRAIN_TOKEN}") -> str:
    groups = "  routes:\n    - {name: redemptions, path_regex: '^/v1/redemptions'}\n"
    return (
        "traffic:\n"
        + (groups if routes else "")
        + "  sources:\n"
        + f'    - platform: heroku\n      heroku_drain: {{token: "{token}"{hosts}}}\n'
        + f'    - platform: heroku\n      name: second\n      heroku_drain: {{token: "{OTHER_TOKEN}"}}\n'
        + "    - platform: aws\n      prometheus: {url: 'http://127.0.0.1:9', preset: ingress-nginx}\n"
    )


def lines(m: dict[str, float], kind: str, source: str = "heroku_drain") -> float:
    key = f'cutover_traffic_drain_lines_total{{kind="{kind}",platform="heroku",source="{source}"}}'
    return m[key]


def posts(m: dict[str, float], result: str) -> float:
    return m[f'cutover_traffic_drain_posts_total{{result="{result}"}}']


async def post(url: str, data: bytes, hdrs: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.post(url + PATH, data=data, headers=hdrs) as r:
        return r.status, await r.text(), dict(r.headers)


async def raw_post(port: int, head: bytes, chunks: list[bytes]) -> int:
    """Send a request head and then body chunks until the daemon answers; its status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.ensure_future(reader.readline())
    try:
        writer.write(head)
        for chunk in chunks:
            if answer.done():
                break
            writer.write(chunk)
            try:
                await writer.drain()
            except ConnectionError:
                break
        line = await asyncio.wait_for(answer, 20)
        return int(line.split()[1])
    finally:
        answer.cancel()
        writer.close()


def reader(hosts: list[str] | None = None, routes: RouteGroups = GROUPS) -> LineReader:
    return LineReader(routes, hosts)


# ---------------------------------------------------------------- the parser, on real bodies


def test_a_real_router_line_an_h12_and_what_is_not_a_request() -> None:
    body = lp.body(
        [
            lp.ROUTER_LINE,
            lp.H12_LINE,
            lp.H10_LINE,
            lp.APP_LINE,
            lp.RUNTIME_METRICS_LINE,
            lp.STATE_LINE,
        ]
    )
    batch = read_body(body, T0 + 5, reader(routes=RouteGroups()))
    assert batch.kinds == {
        "router": 1,
        "router_error": 2,
        "ignored": 3,
        "unreadable": 0,
        "dropped": 0,
    }
    (report,) = list(batch.reports("heroku_drain", "heroku"))
    assert (report.route, report.start, report.end) == ("all", T0, T0 + 1)
    tally = report.tally
    assert tally.requests == 3
    assert tally.responses == {"2xx": 1, "3xx": 0, "4xx": 0, "5xx": 2}
    assert tally.router_errors == 2
    # latency = connect + service: 1 + 45 ms, and the H12's 30 s; the H10 never reached a dyno
    expected = Histogram(LATENCY_BOUNDS)
    expected.add(0.046)
    expected.add(30.0)
    assert tally.latency is not None
    assert tally.latency.counts == expected.counts
    assert tally.latency.total == 2


def test_the_route_group_of_a_path_is_the_group_never_the_path() -> None:
    r = reader()
    assert r.route(b"/v1/redemptions/123?code=x") == "redemptions"
    assert r.route(b"/v1/orders?id=9") == "orders"
    assert r.route(b"/v1/users/42?token=abc") == "other"
    assert reader(routes=RouteGroups()).route(b"/v1/redemptions/123?code=x") == "all"
    # query strings and ids reach no report either
    body = lp.body(
        [
            lp.router_line(T0, path="/v1/redemptions/123?code=x"),
            lp.router_line(T0, path="/v1/redemptions/456?code=y"),
            lp.router_line(T0, path="/v1/users/42?token=abc"),
            lp.router_line(T0, path="/?redemptions"),
        ]
    )
    routes = {r.route: r.tally.requests for r in read_body(body, T0, r).reports("d", "heroku")}
    assert routes == {"redemptions": 2, "other": 2}


def test_route_groups_answer_as_routes_does() -> None:
    """The drain's one-search route groups tell every path the group `Routes.group` tells."""
    groups = [
        ("redemptions", "^/v1/redemptions"),
        ("orders_item", r"^/v1/orders/\d+/items$"),
        ("orders", "^/v1/orders"),
        ("anywhere", "health"),
        ("utf8", "^/caf\u00e9"),
    ]
    paths = [
        b"/v1/redemptions/123?code=x",
        b"/v1/orders/12/items",
        b"/v1/orders/12/items?x=1",
        b"/v1/orders/12/items/",
        b"/v1/orders",
        b"/v1/ordersx",
        b"/-/health",
        b"/health?/v1/orders",
        b"/?/v1/orders",
        b"/caf\xc3\xa9/x",
        b"/caf\xe9",
        b"/v1/redemptions" + b"x" * 2000,
        b"/" + b"y" * 1100 + b"/v1/orders",
        b"",
        b"?",
        bytes(range(1, 256)),
    ]
    for chosen in (groups, groups[::-1], groups[:1], []):
        ours, theirs = RouteGroups(chosen), Routes(chosen)
        for path in paths:
            assert ours.group(path) == theirs.group(path), (chosen, path)


def test_frames_with_or_without_newlines_crlf_and_back_to_back() -> None:
    a, b, c = (lp.router_line(T0, path=f"/v1/orders/{i}") for i in range(3))
    bodies = {
        "newline counted": lp.frame(a) + lp.frame(b) + lp.frame(c),
        "newline after the count": b"\n".join(lp.frame(x, newline=False) for x in (a, b, c)),
        "back to back": b"".join(lp.frame(x, newline=False) for x in (a, b, c)),
        "crlf counted": b"".join(lp.frame(x + b"\r", newline=True) for x in (a, b, c)),
        "blank lines between": b"\r\n\r\n".join(lp.frame(x) for x in (a, b, c)) + b"\n\n",
    }
    for name, body in bodies.items():
        batch = read_body(body, T0, reader())
        assert batch.kinds["router"] == 3, name
        assert batch.kinds["unreadable"] == 0, name


def test_wrong_octet_counts_truncation_and_garbage_are_unreadable_and_the_rest_is_read() -> None:
    good = lp.router_line(T0, path="/v1/orders/1")
    bad = lp.router_line(T0, path="/v1/redemptions/1")
    n = len(bad) + 1
    cases = {
        "count too small": lp.frame(bad, length=n - 20),
        "count too large": lp.frame(bad, length=n + 30),
        "count too large, swallows the next line whole": lp.frame(bad, length=n + len(good) + 9),
        "not a number": b"12a " + bad + b"\n",
        "no count": bad + b"\n",
        "binary garbage": bytes(range(256)) * 3 + b"\n",
        "garbage that looks like frames": b"99 <1>1 x\n" * 50,
    }
    for name, middle in cases.items():
        body = lp.frame(good) + middle + lp.frame(good)
        batch = read_body(body, T0, reader())
        assert batch.kinds["router"] == 2, name
        assert batch.kinds["unreadable"] == 1, name  # one bad stretch, counted once
        assert {r.route for r in batch.reports("d", "heroku")} == {"orders"}, name

    truncated = lp.body([good, good])[:-40]
    batch = read_body(truncated, T0, reader())
    assert (batch.kinds["router"], batch.kinds["unreadable"]) == (1, 1)


def test_a_body_without_one_readable_frame() -> None:
    for body in (
        b"",
        b"\n\n\r\n",
        b"hello world",
        bytes(range(256)) * 100,
        lp.body([lp.ROUTER_LINE])[:-10],  # its only frame, truncated
        b"0 \n1 <\n",
    ):
        batch = Batch(body, T0, reader())
        assert batch.find_frame(float("inf")) is False, body[:40]
    assert Batch(b"junk\n" + lp.body([lp.ROUTER_LINE]), T0, reader()).find_frame(1e18) is True


def test_router_lines_that_cannot_be_read() -> None:
    line = lp.router_line(T0)
    cases = [
        line.replace(b'path="/v1/x?y=1"', b'path="/v1/x?y=1'),  # unbalanced quotes
        line.replace(b'fwd="203.0.113.9"', b'fwd="203.0.113.9'),
        line.replace(b"status=200", b"status=2x0"),
        line.replace(b"status=200", b"status=1200"),
        line.replace(b"status=200", b"status=42"),
        line.replace(b"status=200 ", b""),  # no status, and not an H error
        line.replace(b"service=45ms", b"service=-45ms"),
        line.replace(b"connect=1ms", b"connect=1.5e9ms"),
        line.replace(b'path="/v1/x?y=1" ', b""),
        line.split(b" - ")[0],  # a router line without a message
    ]
    batch = read_body(lp.body(cases), T0, reader())
    assert batch.kinds["unreadable"] == len(cases)
    assert batch.kinds["router"] == 0
    assert list(batch.reports("d", "heroku")) == []


def test_what_a_client_writes_in_x_forwarded_for_cannot_forge_the_status() -> None:
    """fwd is the client's own X-Forwarded-For: a status, latency or error code written
    there is not the router's."""
    forged = lp.router_line(T0, status=200).replace(
        b'fwd="203.0.113.9"', b'fwd="1.2.3.4 status=503 connect=9000ms service=9000ms, 5.6.7.8"'
    )
    batch = read_body(lp.body([forged]), T0, reader())
    (report,) = list(batch.reports("d", "heroku"))
    assert report.tally.responses["2xx"] == 1 and report.tally.errors == 0
    assert report.tally.latency is not None
    assert report.tally.latency.quantile(0.5) <= 0.05


def test_timestamps_place_lines_in_their_second_clamped_to_the_arrival() -> None:
    arrival = T0 + 100.4
    body = lp.body(
        [
            lp.router_line(T0 + 90.7),  # its own second
            lp.at(lp.ROUTER_LINE, T0 + 3600),  # from the future: the arrival's second
            lp.at(lp.ROUTER_LINE, T0 - 86400),  # from yesterday: the oldest second allowed
            lp.ROUTER_LINE.replace(
                b"2026-12-01T19:00:00.466153+00:00", b"2026-12-01T11:00:50-08:00"
            ),
            lp.ROUTER_LINE.replace(b"2026-12-01T19:00:00.466153+00:00", b"-"),  # no time: now
            lp.ROUTER_LINE.replace(b"2026-12-01T19:00:00.466153+00:00", b"2026-13-45T99:00:00Z"),
        ]
    )
    batch = read_body(body, arrival, reader(routes=RouteGroups()))
    seconds = {r.start: r.tally.requests for r in batch.reports("d", "heroku")}
    assert seconds == {
        T0 + 90: 1,
        T0 + 100: 3,
        float(int(arrival - MAX_SKEW)): 1,
        T0 + 50: 1,  # 11:00:50 at -08:00 is 19:00:50 UTC
    }


def test_hosts_keep_only_their_requests() -> None:
    body = lp.body(
        [
            lp.router_line(T0, host="api.example.com"),
            lp.router_line(T0, host="API.Example.COM"),
            lp.router_line(T0, host="admin.example.com"),
            lp.error_line(T0).replace(b"host=api.example.com", b"host=myapp.herokuapp.com"),
        ]
    )
    batch = read_body(body, T0, reader(hosts=["api.example.com"]))
    assert (batch.kinds["router"], batch.kinds["ignored"]) == (2, 2)
    assert read_body(body, T0, reader()).kinds["ignored"] == 0


def test_a_long_body_is_read_in_slices() -> None:
    """The loop is given back: with a deadline always passed, a 50 000-line body takes many
    calls (a bound on frames per call, not on time), and a body of garbage too."""
    body = lp.body([lp.router_line(T0, path=f"/v1/orders/{i}") for i in range(50_000)])
    batch = Batch(body, T0, reader())
    calls = 1
    while not batch.step(deadline=0.0):
        calls += 1
    assert batch.kinds["router"] == 50_000
    assert calls >= 50_000 // 64

    garbage = b"1 <x\n" * 200_000
    batch = Batch(garbage, T0, reader())
    calls = 1
    while (found := batch.find_frame(deadline=0.0)) is None:
        calls += 1
    assert found is False
    assert calls >= 200_000 // 64
    assert batch.kinds["unreadable"] == 1


# ---------------------------------------------------------------- the ingester, in process


def spec(name: str = "heroku_drain", token: str = TOKEN) -> DrainSpec:
    return DrainSpec(name=name, platform="heroku", token=token)


async def test_duplicates_queue_bound_and_staleness() -> None:
    now = [T0]
    drains = Drains(Timeline(), clock=lambda: now[0], max_queued=2000)
    drains.configure([spec()], GROUPS)
    status = drains.timeline.sources["heroku_drain"]
    assert (status.up, status.error) == (False, "no POST received yet")
    body = lp.body([lp.router_line(T0, path="/v1/orders/1")] * 5)
    assert len(body) < 2000 < 2 * len(body)

    assert await drains.accept(spec(), body, "f-1", "5") is Verdict.ACCEPTED
    assert await drains.accept(spec(), body, "f-1", "5") is Verdict.DUPLICATE
    assert await drains.accept(spec(), body, "f-2", "5") is Verdict.DROPPED  # no room
    assert await drains.accept(spec(), b"nothing", "f-3") is Verdict.NO_FRAME
    assert dict(drains.posts, unauthorized=0) == dict.fromkeys(drains.posts, 0) | {
        "accepted": 1,
        "duplicate": 1,
        "dropped": 1,
    }
    assert (status.up, status.last_success, status.error) == (True, T0, None)

    worker = asyncio.create_task(drains.run())
    try:
        for _ in range(200):
            if drains.queued_bytes == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        worker.cancel()
    counts = {k: n for _, _, k, n in drains.line_counts()}
    assert counts == {"router": 5, "router_error": 0, "ignored": 0, "unreadable": 1, "dropped": 5}
    assert drains.timeline.total("heroku", "orders", T0 - 10, T0 + 10).requests == 5
    assert status.covered_until == T0 - DELIVERY_MARGIN

    drains.refresh(T0 + STALE_AFTER - 1)
    assert status.up
    drains.refresh(T0 + STALE_AFTER + 1)
    assert not status.up
    assert status.error is not None and "no POST" in status.error and "5 min" in status.error
    now[0] = T0 + STALE_AFTER + 2
    assert await drains.accept(spec(), body, "f-4") is Verdict.ACCEPTED
    assert (status.up, status.error) == (True, None)


async def test_the_token_picks_the_drain_and_nothing_else_does() -> None:
    drains = Drains(Timeline())
    drains.configure([spec(), spec("second", OTHER_TOKEN)], RouteGroups())
    assert drains.authenticate(lp.auth(TOKEN)) == spec()
    assert drains.authenticate(lp.auth(OTHER_TOKEN, user="")) == spec("second", OTHER_TOKEN)
    for header in (
        None,
        "",
        "Basic",
        "Basic !!!",
        lp.auth(TOKEN[:-1]),
        lp.auth(TOKEN + "x"),
        lp.auth(""),
        "Bearer " + TOKEN,
        lp.auth(TOKEN).replace("Basic ", "Basic  x"),
    ):
        assert drains.authenticate(header) is None, header
    # a reload that takes a token away while a body arrives: the POST is not taken
    body = lp.body([lp.router_line()])
    drains.configure([spec(token="rotated-token-0123456789ab")], RouteGroups())
    assert await drains.accept(spec(), body, "r-1") is Verdict.GONE
    assert await drains.accept(spec(token="rotated-token-0123456789ab"), body, "r-1") is (
        Verdict.ACCEPTED
    )


def test_drain_tokens_are_secrets_the_log_masks() -> None:
    cfg = parse_config(
        config_yaml("http://127.0.0.1:1", "http://127.0.0.1:2") + traffic_yaml(),
        env={"PROBE_SECRET": "s3cret-header-value", "DRAIN_TOKEN": TOKEN},
    )
    assert {TOKEN, OTHER_TOKEN} <= set(secrets_of(cfg))
    assert TOKEN not in repr(cfg)


# ---------------------------------------------------------------- in process, over HTTP


@pytest.fixture
async def served(
    platforms: tuple[FakePlatform, FakePlatform],
) -> AsyncIterator[tuple[Daemon, str]]:
    baseline, candidate = platforms
    cfg = parse_config(
        config_yaml(baseline.url, candidate.url, interval="1h") + traffic_yaml(),
        env={"PROBE_SECRET": "s3cret-header-value", "DRAIN_TOKEN": TOKEN},
    )
    daemon = Daemon(cfg)
    await daemon.start()
    runner, port = await start_server(daemon, "127.0.0.1", 0)
    try:
        yield daemon, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await daemon.stop()


async def test_a_post_reaches_the_timeline_by_route_group_and_second(
    served: tuple[Daemon, str],
) -> None:
    daemon, url = served
    now = time.time()
    sent = [
        lp.router_line(now - 20, path="/v1/redemptions/123?code=SECRETCODE"),
        lp.router_line(now - 20, path="/v1/redemptions/456?code=x", status=404),
        lp.router_line(now - 12, path="/v1/users/42?token=abc", status=302),
        lp.error_line(now - 12, path="/v1/redemptions/9?id=77"),
        lp.APP_LINE,
    ]
    before = time.time()
    status, _, _ = await post(url, lp.body(sent), lp.headers(TOKEN, frame_id="a1"))
    after = time.time()
    assert status == 204
    timeline = daemon.timeline
    for _ in range(300):
        if daemon.drains.queued_bytes == 0 and timeline.counters:
            break
        await asyncio.sleep(0.01)
    red = timeline.total("heroku", "redemptions", now - 60, now + 10)
    assert (red.requests, red.errors, red.router_errors) == (3, 1, 1)
    assert red.responses["4xx"] == 1
    other = timeline.total("heroku", "other", now - 60, now + 10)
    assert (other.requests, other.responses["3xx"]) == (1, 1)
    # only group names: no path, query string or id became a label or a key
    assert timeline.routes() == {"redemptions", "other"}
    assert {k[2] for k in timeline.counters} == {"redemptions", "other"}
    assert {k[:2] for k in timeline.counters} == {("heroku", "heroku_drain")}
    status_ = timeline.sources["heroku_drain"]
    assert status_.up and status_.kind == "heroku_drain"
    assert status_.last_success is not None and before <= status_.last_success <= after
    assert status_.covered_until == status_.last_success - DELIVERY_MARGIN
    assert not timeline.sources["second"].up  # no POST of its own yet
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    leaks = ("SECRETCODE", "code=", "token=abc", "/v1/redemptions", "/v1/users", "id=77", TOKEN)
    for leak in leaks:
        assert leak not in text


# ---------------------------------------------------------------- the daemon, as a subprocess


async def test_the_endpoint_answers_every_bad_input_with_its_status(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    baseline, candidate = platforms
    d = start_daemon(
        config_yaml(baseline.url, candidate.url, interval="1s", timeout="1s") + traffic_yaml(),
        DRAIN_TOKEN=TOKEN,
    )
    await d.wait_ready()
    good = lp.body([lp.router_line(), lp.error_line(), lp.APP_LINE])

    async def answer(data: bytes, hdrs: dict[str, str]) -> int:
        return (await post(d.url, data, hdrs))[0]

    # who: no token, a wrong one, one that is not basic auth
    status, text, hdrs = await post(d.url, good, lp.headers(None))
    assert status == 401 and hdrs["WWW-Authenticate"] == 'Basic realm="cutover"'
    assert "heroku drains:add" in text
    assert await answer(good, lp.headers("wrong-token-0123456789")) == 401
    assert await answer(good, {**lp.headers(None), "Authorization": f"Bearer {TOKEN}"}) == 401
    # what: an unknown Content-Type, or none
    status, text, _ = await post(d.url, good, lp.headers(TOKEN, content_type="text/plain"))
    assert status == 415 and "application/logplex-1" in text
    assert await answer(good, lp.headers(TOKEN, content_type=None)) == 415
    # no readable frame: empty, garbage, binary, a truncated only frame, unbalanced framing
    for bad in (b"", b"hello", bytes(range(256)) * 64, lp.body([lp.ROUTER_LINE])[:-30]):
        status, text, _ = await post(d.url, bad, lp.headers(TOKEN))
        assert status == 400 and "readable frame" in text, bad[:30]
    # 10 MB: refused on its Content-Length, before a byte of it is read...
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: cutover\r\nAuthorization: {lp.auth(TOKEN)}\r\n"
        f"Content-Type: {lp.LOGPLEX}\r\n"
    ).encode()
    ten_mb = 10 * 1000 * 1000
    assert await raw_post(d.port, head + f"Content-Length: {ten_mb}\r\n\r\n".encode(), []) == 413
    # ...and chunked, as soon as it passes 8 MiB
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n"
    piece = (good * (1 + (1 << 16) // len(good)))[: 1 << 16]
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * (ten_mb // len(piece))
    assert await raw_post(d.port, chunked, chunks) == 413
    # a broken chunked encoding is the client's fault too
    assert await raw_post(d.port, chunked, [b"zz\r\nabc\r\n0\r\n\r\n"]) == 400
    # and through it all, good POSTs are taken
    assert await answer(good, lp.headers(TOKEN, frame_id="f-1", count=3)) == 204
    m = await d.wait_for(lambda m: lines(m, "router") == 1)
    assert (lines(m, "router_error"), lines(m, "ignored")) == (1, 1)
    assert lines(m, "unreadable") == 3  # the garbage, the binary and the truncated bodies
    assert posts(m, "unauthorized") == 3
    assert posts(m, "content_type") == 2
    assert posts(m, "too_large") == 2
    assert posts(m, "no_frame") == 4
    assert posts(m, "accepted") == 1
    assert "POSTs refused" in d.log()
    assert d.proc.poll() is None


async def test_bad_frames_inside_a_readable_body_are_counted_not_refused(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    baseline, candidate = platforms
    d = start_daemon(
        config_yaml(baseline.url, candidate.url, interval="1s", timeout="1s")
        + traffic_yaml(hosts=", hosts: [api.example.com]"),
        DRAIN_TOKEN=TOKEN,
    )
    await d.wait_ready()
    line = lp.router_line()
    body = b"".join(
        [
            lp.frame(line),
            lp.frame(line, length=len(line) - 30),  # a wrong octet count
            lp.frame(line.replace(b'path="/v1/x?y=1"', b'path="/v1/x')),  # unbalanced quotes
            lp.frame(line.replace(b"connect=1ms", b"connect=onems")),  # a bad number
            bytes(range(256)) + b"\n",  # binary garbage
            lp.frame(lp.router_line(host="admin.example.com")),  # not one of the hosts
            lp.frame(lp.RUNTIME_METRICS_LINE),
            lp.frame(lp.error_line(code="H13")),
            lp.frame(line)[:-25],  # truncated at the end
        ]
    )
    status, _, _ = await post(d.url, body, lp.headers(TOKEN, frame_id="mixed", count=9))
    assert status == 204
    m = await d.wait_for(lambda m: lines(m, "router") == 1 and lines(m, "unreadable") == 5)
    assert (lines(m, "router_error"), lines(m, "ignored")) == (1, 2)

    # Logplex retries a POST it had no answer to: the same Frame-Id is counted once
    status, _, _ = await post(d.url, body, lp.headers(TOKEN, frame_id="mixed", count=9))
    assert status == 204
    # the second drain's POST with the same Frame-Id is its own
    status, _, _ = await post(d.url, lp.body([line]), lp.headers(OTHER_TOKEN, frame_id="mixed"))
    assert status == 204
    m = await d.wait_for(lambda m: lines(m, "router", "second") == 1)
    assert posts(m, "duplicate") == 1
    assert (lines(m, "router"), lines(m, "unreadable")) == (1, 5)
    _, text = await d.get("/metrics")
    assert "?y=1" not in text and "/v1/x" not in text


async def test_probes_keep_their_schedule_while_50000_line_bodies_are_read(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    """Three bodies of 50 000 lines (8 MiB each at most) are read while probes run every
    50 ms: probes reach the platform all along, and /metrics shows the reading progress
    (a daemon that read a body in one go would answer neither until it was done). Counted
    in probes and scrapes, never in wall time."""
    baseline, candidate = platforms
    d = start_daemon(
        config_yaml(baseline.url, candidate.url, interval="50ms", timeout="45ms")
        + traffic_yaml(routes=False),
        DRAIN_TOKEN=TOKEN,
    )
    await d.wait_ready()
    short = (  # as short as a router line gets, so that 50 000 fit in 8 MiB
        b"<158>1 2026-12-01T19:00:00+00:00 host heroku router - at=info method=GET "
        b'path="/" host=a dyno=web.1 connect=1ms service=5ms status=200'
    )
    body = lp.body([short] * 50_000)
    assert len(body) <= 8 * 1024 * 1024
    for i in range(3):
        status, _, _ = await post(d.url, body, lp.headers(TOKEN, frame_id=f"big-{i}"))
        assert status == 204
    total = 150_000
    hits_at_start = baseline.hits
    progress: list[tuple[float, int]] = []
    deadline = time.monotonic() + 120
    while True:
        m = await d.metrics()
        read = lines(m, "router")
        progress.append((read, baseline.hits))
        if read >= total or time.monotonic() > deadline:
            break
    assert read == total
    assert lines(m, "unreadable") == 0
    in_progress = [(n, hits) for n, hits in progress if 0 < n < total]
    assert len(in_progress) >= 3, progress  # scrapes answered while the bodies were read
    assert len({n for n, _ in in_progress}) >= 3  # ...showing the count grow
    assert baseline.hits - hits_at_start >= 6, (hits_at_start, progress)


async def test_the_token_is_never_shown_and_a_reload_changes_it(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    baseline, candidate = platforms
    d = start_daemon(
        config_yaml(baseline.url, candidate.url, interval="1s", timeout="1s") + traffic_yaml(),
        DRAIN_TOKEN=TOKEN,
    )
    await d.wait_ready()
    for hdrs in (
        lp.headers(TOKEN, frame_id="t1"),
        lp.headers(TOKEN, content_type="text/plain"),
        lp.headers("wrong-token-0123456789"),
    ):
        await post(d.url, lp.body([lp.router_line(), lp.ROUTER_LINE]), hdrs)
    await post(d.url, b"garbage", lp.headers(TOKEN))
    await d.wait_for(lambda m: lines(m, "router") == 2)

    new_token = "rotated-token-a1b2c3d4e5f60789"
    d.config.write_text(d.config.read_text().replace("${DRAIN_TOKEN}", new_token))
    status, _ = await d.post("/-/reload")
    assert status == 200
    assert (await post(d.url, lp.body([lp.router_line()]), lp.headers(TOKEN)))[0] == 401
    assert (await post(d.url, lp.body([lp.router_line()]), lp.headers(new_token)))[0] == 204
    await d.wait_for(lambda m: lines(m, "router") == 3)  # the drain kept its counts

    pages = [d.log()]
    for page in ("/metrics", "/", "/api/v1/status"):
        status, text = await d.get(page)
        assert status == 200
        pages.append(text)
    for text in pages:
        for token in (TOKEN, new_token, OTHER_TOKEN):
            assert token not in text
            assert lp.auth(token).split()[1] not in text  # nor the Authorization header
