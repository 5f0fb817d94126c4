"""The Prometheus traffic source: against Debian's real Prometheus scraping a local exporter of
ingress-nginx-style and http_requests_total-style metrics, and against a local stand-in of the
Prometheus HTTP API for every way an answer can go wrong.

Exact counts from a real Prometheus: the exporter's counters move only when a test says so, and
the source is asked at the timestamp of a scrape for a range that starts 1 ms before the last
scrape that saw the old values. increase() then extrapolates by exactly 1 ms over the sampled
interval S, for every series alike (one target: one timestamp per scrape), so each count is its
true increase times (S + 0.001) / S.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from exporter.config import PrometheusTraffic, parse_config
from exporter.errors import ConfigError
from exporter.tasks import Supervisor
from exporter.traffic.counts import ALL, Histogram, Report
from exporter.traffic.prometheus import (
    MAX_SERIES,
    YIELD_EVERY,
    PrometheusSource,
    build,
    decode_vector,
    duration_text,
)
from exporter.traffic.routes import Routes
from exporter.traffic.timeline import Timeline
from tests.conftest import free_port, need_tool
from tests.ingress_exporter import HTTP_BUCKETS, INGRESS_BUCKETS, Exporter
from tests.prometheus_live import Prometheus

# ---------------------------------------------------------------------------------------------
# the real Prometheus


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exporter, Prometheus]]:
    binary = need_tool("prometheus")
    exporter = Exporter()
    prometheus = None
    try:
        exporter.wait_ready()
        prometheus = Prometheus(
            binary, tmp_path_factory.mktemp("prometheus"), exporter.target, [], job="ingress"
        )
        asyncio.run(prometheus.wait_ready())
        yield exporter, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        exporter.stop()


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def samples(prometheus: Prometheus, series: str) -> list[tuple[float, float]]:
    """(timestamp, value) of one series over the last 30 s, as Prometheus stored its scrapes."""
    answer = await prometheus.query(f"{series}[30s]")
    result = answer["data"]["result"]
    if not result:
        return []
    (one,) = result
    return [(float(t), float(v)) for t, v in one["values"]]


async def move_counters(
    exporter: Exporter,
    prometheus: Prometheus,
    marker: str,
    initial: list[dict[str, Any]],
    bump: list[dict[str, Any]],
) -> tuple[float, float]:
    """Record `initial`, let it be scraped, record `bump` at once, let that be scraped.

    The times of the last scrape with the old values and of the newest one; `marker` is the
    series of bump[0] (its value is 1 after `initial`).
    """
    await exporter.record(initial)

    async def scraped(value: float) -> bool:
        points = await samples(prometheus, marker)
        return bool(points) and points[-1][1] == value

    await wait_for(lambda: scraped(1), "the initial counts in Prometheus")
    await exporter.record(bump)
    after = 1 + sum(i["n"] for i in bump if _same_series(i, bump[0]))
    await wait_for(lambda: scraped(after), "the moved counters in Prometheus")
    points = await samples(prometheus, marker)
    start = max(t for t, v in points if v == 1)
    return start, points[-1][0]


def _same_series(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("host", "path", "status", "handler", "code"))


def exact_source(
    url: str, start: float, end: float, routes: Routes, **cfg: Any
) -> tuple[PrometheusSource, float]:
    """A source whose first poll at `end` covers (start - 1 ms, end]; and increase()'s factor."""
    window = duration_text(end - start + 0.001)
    config = PrometheusTraffic(url=url, interval=window, range=window, timeout="900ms", **cfg)
    source = build("prom", config, "aws", Timeline(), routes)
    sampled = (round(end * 1000) - round(start * 1000)) / 1000
    return source, (sampled + 0.001) / sampled


def by_route(reports: list[Report]) -> dict[str, Report]:
    out = {r.route: r for r in reports}
    assert len(out) == len(reports)
    return out


def check_tally(
    report: Report,
    factor: float,
    responses: dict[str, float],
    bounds: tuple[float, ...],
    buckets: dict[float, float],
) -> None:
    tally = report.tally
    expected = {cls: responses.get(cls, 0.0) * factor for cls in ("2xx", "3xx", "4xx", "5xx")}
    assert tally.responses == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert tally.requests == pytest.approx(sum(expected.values()), rel=1e-9)
    assert tally.router_errors == 0
    assert tally.latency is not None
    assert tally.latency.bounds == bounds
    want = Histogram(bounds)
    for le, n in buckets.items():
        want.add(le, n * factor)
    assert tally.latency.counts == pytest.approx(want.counts, rel=1e-9, abs=1e-9)


INGRESS_BOUNDS = tuple(float(b) for b in INGRESS_BUCKETS)
HTTP_BOUNDS = tuple(float(b) for b in HTTP_BUCKETS)


@pytest.mark.slow
async def test_ingress_nginx_preset_counts_by_class_route_group_and_latency_bucket(
    live: tuple[Exporter, Prometheus],
) -> None:
    exporter, prometheus = live
    host = "exact.example.com"

    def ingress(path: str, status: int, seconds: float, n: int, h: str = host) -> dict[str, Any]:
        return {
            "kind": "ingress",
            "host": h,
            "path": path,
            "status": status,
            "seconds": seconds,
            "n": n,
        }

    initial = [
        ingress("/v1/redemptions", 200, 0.02, 1),
        ingress("/v1/redemptions", 503, 0.3, 1),
        ingress("/v1/users/42", 200, 0.07, 1),
        ingress("/v1/users/42", 404, 0.004, 1),
        ingress("/", 200, 3.0, 1),
        ingress("/", 301, 0.001, 1),
        ingress("/v1/redemptions", 500, 0.02, 1, h="noise.example.com"),
    ]
    bump = [
        ingress("/v1/redemptions", 200, 0.02, 40),
        ingress("/v1/redemptions", 503, 0.3, 10),
        ingress("/v1/users/42", 200, 0.07, 25),
        ingress("/v1/users/42", 404, 0.004, 5),
        ingress("/", 200, 3.0, 7),
        ingress("/", 301, 0.001, 3),
        # another host: the selector keeps it out
        ingress("/v1/redemptions", 500, 0.02, 1000, h="noise.example.com"),
    ]
    marker = (
        f'nginx_ingress_controller_requests{{host="{host}",path="/v1/redemptions",status="200"}}'
    )
    start, end = await move_counters(exporter, prometheus, marker, initial, bump)

    routes = Routes([("redemptions", "^/v1/redemptions"), ("users", "^/v1/users/")])
    source, factor = exact_source(
        prometheus.url, start, end, routes,
        preset="ingress-nginx", selector=f'host="{host}"', route_label="path",
    )  # fmt: skip
    try:
        poll = await source.poll(end)
    finally:
        await source.close()
    assert poll.covered_until == end
    reports = by_route(poll.reports)
    assert set(reports) == {"redemptions", "users", "other"}
    for report in reports.values():
        assert (report.source, report.platform) == ("prom", "aws")
        assert report.end == end
        assert report.start == pytest.approx(end - (end - start + 0.001), abs=1e-6)
    check_tally(
        reports["redemptions"], factor, {"2xx": 40, "5xx": 10}, INGRESS_BOUNDS,
        {0.025: 40, 0.5: 10},
    )  # fmt: skip
    check_tally(
        reports["users"], factor, {"2xx": 25, "4xx": 5}, INGRESS_BOUNDS, {0.005: 5, 0.1: 25}
    )
    check_tally(reports["other"], factor, {"2xx": 7, "3xx": 3}, INGRESS_BOUNDS, {0.005: 3, 5: 7})
    assert source.skipped == {}

    # without a route label (an ingress without metrics per path): the platform as a whole
    whole, factor = exact_source(
        prometheus.url, start, end, routes, preset="ingress-nginx", selector=f'host="{host}"'
    )
    try:
        (report,) = (await whole.poll(end)).reports
    finally:
        await whole.close()
    assert report.route == ALL
    check_tally(
        report, factor, {"2xx": 72, "3xx": 3, "4xx": 5, "5xx": 10}, INGRESS_BOUNDS,
        {0.005: 8, 0.025: 40, 0.1: 25, 0.5: 10, 5: 7},
    )  # fmt: skip


@pytest.mark.slow
async def test_http_requests_preset_and_a_custom_query_read_code_and_status_labels(
    live: tuple[Exporter, Prometheus],
) -> None:
    exporter, prometheus = live
    app = "exact-http"

    def http(handler: str, label: str, status: int, seconds: float, n: int) -> dict[str, Any]:
        return {
            "kind": "http",
            "app": app,
            "handler": handler,
            label: status,
            "seconds": seconds,
            "n": n,
        }

    initial = [
        http("/v1/orders", "code", 200, 0.03, 1),
        http("/v1/orders", "code", 500, 0.2, 1),
        http("/v1/legacy", "status", 200, 0.6, 1),
        http("/v1/legacy", "status", 404, 0.01, 1),
    ]
    bump = [
        http("/v1/orders", "code", 200, 0.03, 20),
        http("/v1/orders", "code", 500, 0.2, 4),
        http("/v1/legacy", "status", 200, 0.6, 6),
        http("/v1/legacy", "status", 404, 0.01, 2),
    ]
    marker = f'http_requests_total{{app="{app}",handler="/v1/orders",code="200"}}'
    start, end = await move_counters(exporter, prometheus, marker, initial, bump)

    selector = f'app="{app}"'
    custom = {
        "preset": "custom",
        # by code and status: the source classifies them itself
        "requests_query": f"sum by (code, status) (increase(http_requests_total{{{selector}}}[$__interval]))",
        "latency_buckets_query": f"sum by (le) (increase(http_request_duration_seconds_bucket{{{selector}}}[$interval]))",
    }
    total = {"2xx": 26, "4xx": 2, "5xx": 4}
    buckets = {0.05: 20, 0.25: 4, 0.75: 6, 0.01: 2}
    for cfg in ({"preset": "http-requests", "selector": selector}, custom):
        source, factor = exact_source(prometheus.url, start, end, Routes(), **cfg)
        try:
            (report,) = (await source.poll(end)).reports
        finally:
            await source.close()
        assert report.route == ALL
        check_tally(report, factor, total, HTTP_BOUNDS, buckets)

    routes = Routes([("orders", "^/v1/orders$")])
    source, factor = exact_source(
        prometheus.url, start, end, routes,
        preset="http-requests", selector=selector, route_label="handler",
    )  # fmt: skip
    try:
        reports = by_route((await source.poll(end)).reports)
    finally:
        await source.close()
    check_tally(reports["orders"], factor, {"2xx": 20, "5xx": 4}, HTTP_BOUNDS, {0.05: 20, 0.25: 4})
    check_tally(reports["other"], factor, {"2xx": 6, "4xx": 2}, HTTP_BOUNDS, {0.75: 6, 0.01: 2})


@pytest.mark.slow
async def test_the_running_source_feeds_the_timeline_from_live_traffic(
    live: tuple[Exporter, Prometheus],
) -> None:
    """Steady traffic, one 503 in five: whatever increase() extrapolates, every window holds
    them in that proportion, so the timeline's error ratio is exactly 0.2."""
    exporter, prometheus = live
    host = "loop.example.com"
    timeline = Timeline(bucket=1.0)
    cfg = PrometheusTraffic(
        url=prometheus.url, interval="1s", range="3s", timeout="900ms",
        preset="ingress-nginx", selector=f'host="{host}"',
    )  # fmt: skip
    source = build("ingress", cfg, "aws", timeline, Routes())

    async def traffic() -> None:
        while True:
            await exporter.record(
                [
                    {"kind": "ingress", "host": host, "status": 200, "seconds": 0.02, "n": 4},
                    {"kind": "ingress", "host": host, "status": 503, "seconds": 0.3, "n": 1},
                ]
            )
            await asyncio.sleep(0.3)

    feeding = asyncio.create_task(traffic())
    running = asyncio.create_task(source.run())
    counters = lambda: timeline.counters.get(("aws", "ingress", ALL))  # noqa: E731

    async def enough() -> bool:
        c = counters()
        return c is not None and c.requests >= 40

    try:
        await wait_for(enough, "40 requests in the timeline")
    finally:
        for task in (feeding, running):
            task.cancel()
        await asyncio.gather(feeding, running, return_exceptions=True)
    assert source._session is None  # closed on cancel

    status = timeline.sources["ingress"]
    assert (status.up, status.error, status.kind) == (True, None, "prometheus")
    assert status.last_success is not None and status.covered_until == status.last_success
    c = counters()
    assert c is not None
    assert c.responses["5xx"] / c.requests == pytest.approx(0.2, rel=1e-9)
    assert c.responses["2xx"] / c.requests == pytest.approx(0.8, rel=1e-9)
    assert c.responses["3xx"] == c.responses["4xx"] == c.router_errors == 0
    now = time.time()
    tally = timeline.total("aws", ALL, now - 600, now + 10)
    assert tally.latency is not None and tally.latency.bounds == INGRESS_BOUNDS
    assert tally.latency.above(0.25) / tally.latency.total == pytest.approx(0.2, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# a stand-in of the Prometheus HTTP API

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def vector(*series: tuple[dict[str, str], Any]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [1000.0, str(v)]} for m, v in series],
        },
    }


class Standin:
    """Answers /api/v1/query with `requests` or `latency` (by the query), or with `handler`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: dict[str, Any] = vector(({"code_class": "2xx"}, 100))
        self.latency: dict[str, Any] = vector(({"le": "0.1"}, 80), ({"le": "+Inf"}, 100))
        self.handler: Handler | None = None
        self.seen: list[tuple[dict[str, str], dict[str, str]]] = []  # (query params, headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((dict(request.query), dict(request.headers)))
        if self.handler is not None:
            return await self.handler(request)
        latency = "_bucket" in request.query["query"]
        return web.json_response(self.latency if latency else self.requests)


@pytest.fixture
async def standin() -> AsyncIterator[Standin]:
    s = Standin()
    app = web.Application()
    app.router.add_get("/api/v1/query", s.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", s.port).start()
    try:
        yield s
    finally:
        await runner.cleanup()


def source_for(
    url: str, routes: Routes | None = None, timeline: Timeline | None = None, **cfg: Any
) -> PrometheusSource:
    settings: dict[str, Any] = {"interval": "15s", "timeout": "2s", "preset": "ingress-nginx"}
    settings.update(cfg)
    return build(
        "prom",
        PrometheusTraffic(url=url, **settings),
        "aws",
        timeline or Timeline(),
        routes or Routes(),
    )


async def test_counts_are_scaled_to_the_span_and_a_gap_is_caught_up(standin: Standin) -> None:
    """The default range is max(interval, 1m): the increase over 60 s, scaled to the 15 s a
    report covers; after a failed poll the next one covers the gap (30 s, still in the 60 s)."""
    source = source_for(standin.url, headers={"X-Scope-OrgID": "tenant-1"})
    try:
        first = await source.poll(1000.0)
        (report,) = first.reports
        assert (report.route, report.start, report.end) == (ALL, 985.0, 1000.0)
        assert report.tally.requests == pytest.approx(25.0)  # 100 in 60 s -> 25 in 15 s
        assert report.tally.responses["2xx"] == pytest.approx(25.0)
        assert report.tally.latency is not None
        assert report.tally.latency.bounds == (0.1,)
        assert report.tally.latency.counts == pytest.approx([20.0, 5.0])
        assert first.covered_until == 1000.0

        queries = sorted(params["query"] for params, _ in standin.seen)
        assert queries == [
            'sum by (code_class) (label_replace(sum by (status) (increase(nginx_ingress_controller_requests[60s])), "code_class", "${1}xx", "status", "([0-9]).*"))',
            "sum by (le) (increase(nginx_ingress_controller_request_duration_seconds_bucket[60s]))",
        ]
        for params, headers in standin.seen:
            assert (params["time"], params["timeout"]) == ("1000.000", "1800ms")
            assert headers["X-Scope-OrgID"] == "tenant-1"

        standin.handler = lambda _: _json_response(
            503, {"status": "error", "errorType": "unavailable", "error": "down"}
        )
        with pytest.raises(Exception, match="unavailable"):
            await source.poll(1015.0)
        standin.handler = None
        standin.seen.clear()
        (report,) = (await source.poll(1030.0)).reports
        assert (report.start, report.end) == (1000.0, 1030.0)
        assert report.tally.requests == pytest.approx(50.0)

        # a gap longer than the range is asked for whole: increase over 90 s, nothing scaled
        standin.seen.clear()
        (report,) = (await source.poll(1120.0)).reports
        assert (report.start, report.end) == (1030.0, 1120.0)
        assert report.tally.requests == pytest.approx(100.0)
        assert all("[90s]" in params["query"] for params, _ in standin.seen)
    finally:
        await source.close()


async def _json_response(status: int, doc: Any) -> web.Response:
    return web.json_response(doc, status=status)


async def test_route_label_values_never_become_labels(standin: Standin) -> None:
    """Paths with ids and query strings, thousands of them: only group names come out."""
    paths = [f"/v1/redemptions/{i}?token=t{i}" for i in range(1500)]
    paths += [f"/v1/users/{i}" for i in range(1500)] + ["", "/"]
    standin.requests = vector(*(({"code_class": "2xx", "path": p}, 1) for p in paths))
    standin.latency = vector(*(({"le": "+Inf", "path": p}, 1) for p in paths))
    timeline = Timeline()
    routes = Routes([("redemptions", "^/v1/redemptions/")])
    source = source_for(standin.url, routes, timeline, route_label="path", range="15s")
    now = time.time()
    try:
        await source.poll_once()
    finally:
        await source.close()
    assert timeline.sources["prom"].up
    assert timeline.routes("aws") == {"redemptions", "other"}
    assert {key[2] for key in timeline.counters} == {"redemptions", "other"}
    assert timeline.counters[("aws", "prom", "redemptions")].requests == pytest.approx(1500)
    assert timeline.counters[("aws", "prom", "other")].requests == pytest.approx(1502)
    assert timeline.total("aws", ALL, now - 60, now + 60).requests == pytest.approx(3002)
    assert all("path" in params["query"] for params, _ in standin.seen)

    # a route label without route groups: nothing to group, the label is not even asked for
    standin.seen.clear()
    plain = source_for(standin.url, Routes(), route_label="path")
    try:
        (report,) = (await plain.poll(now)).reports
    finally:
        await plain.close()
    assert report.route == ALL
    assert all("path" not in params["query"] for params, _ in standin.seen)


async def test_bad_values_and_unclassified_series_are_skipped_and_counted(
    standin: Standin, caplog: pytest.LogCaptureFixture
) -> None:
    standin.requests = vector(
        ({"code_class": "2xx"}, 10),
        ({"code_class": "5xx"}, "NaN"),
        ({"code_class": "4xx"}, "+Inf"),
        ({"code_class": "3xx"}, -3),
        ({"code_class": "1xx"}, 4),  # informational: not a response class
        ({"status": "503"}, 2),  # a custom query may give the status itself
        ({"code": "404"}, 1),
        ({"other": "x"}, 7),
    )
    standin.latency = vector(
        ({"le": "0.1"}, 5), ({"le": "+Inf"}, 13), ({"le": "soon"}, 2), ({}, 1), ({"le": "1"}, "NaN")
    )
    source = source_for(standin.url, range="15s")
    caplog.set_level(logging.INFO, "cutover")
    try:
        for now in (1000.0, 1015.0):
            (report,) = (await source.poll(now)).reports
            assert report.tally.responses == {"2xx": 10, "3xx": 0, "4xx": 1, "5xx": 2}
            assert report.tally.requests == 13
            assert report.tally.latency is not None
            assert report.tally.latency.counts == [5, 8]
    finally:
        await source.close()
    assert source.skipped == {"bad_value": 8, "no_class": 4, "no_le": 4}
    warnings = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert warnings == [
        "traffic source prom: series left out (bad_value: 4, no_class: 2, no_le: 2)"
    ]


async def test_an_empty_answer_is_zero_requests_over_a_covered_span(
    standin: Standin, caplog: pytest.LogCaptureFixture
) -> None:
    standin.requests = vector()
    standin.latency = vector()
    timeline = Timeline()
    routes = Routes([("redemptions", "^/v1/redemptions")])
    source = source_for(standin.url, routes, timeline, route_label="path")
    caplog.set_level(logging.INFO, "cutover")
    try:
        await source.poll_once()
        await source.poll_once()
    finally:
        await source.close()
    status = timeline.sources["prom"]
    assert status.up and status.error is None and status.covered_until is not None
    assert timeline.covered_until("aws") == status.covered_until
    for route in ("redemptions", "other"):
        counters = timeline.counters[("aws", "prom", route)]
        assert counters.requests == 0 and sum(counters.responses.values()) == 0
    empty = [r for r in caplog.records if "found no series" in r.getMessage()]
    assert [r.getMessage() for r in empty] == [
        "traffic source prom: the requests and latency queries found no series (counted as "
        "none): no metric matches yet, or the range 60s holds fewer than two scrapes"
    ]


def _text(status: int, text: str, content_type: str = "text/plain") -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=status, text=text, content_type=content_type)

    return handler


def _body(body: bytes, status: int = 200) -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    return handler


def _doc(doc: Any, status: int = 200) -> Handler:
    return _body(json.dumps(doc).encode(), status)


async def _hang(_: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response()


async def _chunked_huge(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b'{"status":"success","data":{"resultType":"vector","result":[')
    chunk = b" " * (1024 * 1024)
    for _ in range(9):
        await response.write(chunk)
    await response.write(b"]}}")
    return response


async def _cut(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "application/json", "Content-Length": "5000"}
    )
    await response.prepare(request)
    await response.write(b'{"status":"success","data":{"resultType":"vector","result":[')
    assert request.transport is not None
    request.transport.close()
    return response


def _series(n: int) -> bytes:
    return json.dumps(
        vector(*(({"code_class": "2xx", "pod": str(i)}, 1) for i in range(n)))
    ).encode()


PROM_ERROR = {
    "status": "error",
    "errorType": "bad_data",
    "error": 'invalid parameter "query": 1:40: parse error: unexpected "}"',
}
FAILURES: list[tuple[str, Handler, str]] = [
    ("http-400", _doc(PROM_ERROR, 400), 'refused: HTTP 400: bad_data: invalid parameter "query": 1:40: parse error: unexpected "}"'),
    ("http-422", _doc({"status": "error", "errorType": "execution", "error": "many-to-many matching not allowed"}, 422), "refused: HTTP 422: execution: many-to-many matching not allowed"),
    ("http-503", _doc({"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"}, 503), "refused: HTTP 503: timeout: query timed out in expression evaluation"),
    ("proxy-502", _text(502, "upstream connect error or disconnect/reset before headers\n<more>"), "refused: HTTP 502: upstream connect error or disconnect/reset before headers"),
    ("proxy-html", _text(404, "<html>not here</html>", "text/html"), "refused: HTTP 404 Not Found"),
    ("status-error-200", _doc(PROM_ERROR), "refused: bad_data: invalid parameter"),
    ("garbage", _text(200, "<html>it works</html>", "text/html"), "bad_answer: the answer is not JSON"),
    ("truncated", _body(b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"2"]},'), "bad_answer: the answer is not JSON"),
    ("not-utf8", _body(b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"\xff"},"value":[1,"2"]}]}}'), "bad_answer: the answer is not UTF-8"),
    ("matrix", _doc({"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "2"]]}]}}), "bad_answer: resultType 'matrix', not a vector"),
    ("scalar", _doc({"status": "success", "data": {"resultType": "scalar", "result": [1, "2"]}}), "bad_answer: resultType 'scalar', not a vector"),
    ("no-data", _doc({"status": "success"}), "bad_answer: the answer has no data"),
    ("not-a-series", _doc({"status": "success", "data": {"result": [["x"]]}}), "bad_answer: a result that is not a series"),
    ("value-text", _doc(vector(({"code_class": "2xx"}, "many"))), "bad_answer: a series whose value is not a number"),
    ("huge", _body(b" " * (9 * 1024 * 1024)), "bad_answer: an answer over 8 MiB"),
    ("huge-chunked", _chunked_huge, "bad_answer: an answer over 8 MiB"),
    ("too-many-series", _body(_series(MAX_SERIES + 1)), f"bad_answer: more than {MAX_SERIES} series"),
    ("cut", _cut, "unreachable: answer cut"),
    ("hang", _hang, "timeout: no answer within 300ms"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("handler", "error"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
async def test_a_failed_poll_is_a_status_with_a_reason(
    standin: Standin, handler: Handler, error: str
) -> None:
    standin.handler = handler
    timeline = Timeline()
    source = source_for(standin.url, timeline=timeline, timeout="300ms")
    try:
        await source.poll_once()
    finally:
        await source.close()
    status = timeline.sources["prom"]
    assert status.up is False and status.last_success is None
    assert status.error is not None and status.error.startswith(error), status.error
    assert source.errors == {error.split(":")[0]: 1}
    assert timeline.counters == {}


async def test_connection_refused_is_unreachable() -> None:
    timeline = Timeline()
    source = source_for(f"http://127.0.0.1:{free_port()}", timeline=timeline)
    try:
        await source.poll_once()
    finally:
        await source.close()
    error = timeline.sources["prom"].error
    assert error is not None and error.startswith("unreachable: Cannot connect to host 127.0.0.1")


async def test_the_source_keeps_polling_through_failures_and_recovers(
    standin: Standin, caplog: pytest.LogCaptureFixture
) -> None:
    timeline = Timeline()
    source = source_for(standin.url, timeline=timeline, interval="100ms", timeout="100ms")
    status = timeline.sources["prom"]
    caplog.set_level(logging.INFO, "cutover")
    standin.handler = _hang
    running = asyncio.create_task(source.run())
    try:
        await wait_for(lambda: _true(source.errors.get("timeout", 0) >= 3), "three timeouts")
        assert status.up is False and status.error == "timeout: no answer within 100ms"
        standin.handler = _doc(PROM_ERROR, 400)
        await wait_for(lambda: _true(source.errors.get("refused", 0) >= 2), "two refusals")
        standin.handler = None
        await wait_for(lambda: _true(status.up), "the source up again")
        assert status.error is None and status.last_success is not None
        await wait_for(lambda: _true(len(standin.seen) >= 40), "more polls")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert status.up, "it kept polling and stayed up"
    assert source._session is None  # closed on cancel
    lines = [r.getMessage() for r in caplog.records if r.name == "cutover.traffic.prom"]
    # one line per distinct failure, not one per poll, and one when it works again
    assert lines == [
        "traffic source prom failed (timeout: no answer within 100ms)",
        'traffic source prom failed (refused: HTTP 400: bad_data: invalid parameter "query": 1:40: parse error: unexpected "}")',
        "traffic source prom works again",
    ]


async def _true(value: bool) -> bool:
    return value


SECRET = "Bearer tok-5ecret-0123456789abcdef"


def _echo(kind: str) -> Handler:
    """What a proxy or a confused server might do: repeat the credentials in its error."""

    async def handler(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth.split()[-1]
        if kind == "text":
            return web.Response(status=401, text=f"invalid credentials: {auth}")
        if kind == "json":
            doc = {"status": "error", "errorType": "auth", "error": f"token {token} expired"}
            return web.json_response(doc, status=403)
        doc = {"status": "error", "errorType": "bad_data", "error": f"who is {token}?"}
        return web.json_response(doc)

    return handler


@pytest.mark.parametrize("kind", ["text", "json", "status-error"])
async def test_header_values_never_reach_the_status_or_the_log(
    standin: Standin, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    standin.handler = _echo(kind)
    timeline = Timeline()
    source = source_for(standin.url, timeline=timeline, headers={"Authorization": SECRET})
    caplog.set_level(logging.DEBUG)
    try:
        await source.poll_once()
    finally:
        await source.close()
    assert all(headers["Authorization"] == SECRET for _, headers in standin.seen)
    error = timeline.sources["prom"].error
    assert error is not None and error.startswith("refused") and "<redacted>" in error
    for text in (error, caplog.text):
        assert "tok-5ecret" not in text and "0123456789abcdef" not in text


async def test_decoding_yields_to_the_event_loop() -> None:
    """10 000 series take tens of ms to decode: the loop gets a turn every YIELD_EVERY."""
    n = 10_000
    text = json.dumps(vector(*(({"code_class": "2xx", "path": f"/p/{i}"}, i) for i in range(n))))
    ticks = 0
    seen: list[float] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    ticks = 0
    try:
        count = await decode_vector(text, lambda _m, v: seen.append(v))
    finally:
        task.cancel()
    assert count == n and seen == [float(i) for i in range(n)]
    assert ticks >= n // YIELD_EVERY - 1


async def test_decoding_reads_answers_laid_out_differently() -> None:
    """Whitespace, other key orders and extra keys (warnings) are JSON like any other."""
    text = """{ "data" : { "result" : [ { "value" : [ 1, "2.5" ] , "metric" : { "le" : "+Inf" } } ,
      {"metric": {"le": "1"}, "value": [1, "1"]} ] , "resultType" : "vector" },
      "warnings": ["PromQL info: metric might not be a counter"], "status" : "success" }"""
    got: list[tuple[dict[str, Any], float]] = []
    assert await decode_vector(text, lambda m, v: got.append((dict(m), v))) == 2
    assert got == [({"le": "+Inf"}, 2.5), ({"le": "1"}, 1.0)]
    assert (
        await decode_vector(
            '{"status":"success","data":{"resultType":"vector","result":[]}}', lambda m, v: None
        )
        == 0
    )
    # a "result" array elsewhere than data.result is not the answer's
    with pytest.raises(Exception, match="not a Prometheus query answer"):
        await decode_vector(
            '{"status":"success","result":[],"data":{"resultType":"vector","result":[]}}',
            lambda m, v: None,
        )


def test_range_text() -> None:
    assert [duration_text(s) for s in (60, 15.0, 1.5, 3.0004, 0.0001, 90.25)] == [
        "60s", "15s", "1500ms", "3s", "1ms", "90250ms",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the config

BASE = """\
platforms:
  heroku: {role: baseline, base_url: "https://myapp.herokuapp.com"}
  aws: {role: candidate, base_url: "https://lb.example.com"}
checks:
  - {name: health, path: /health}
traffic:
  sources:
    - platform: heroku
      heroku_drain: {token: 0123456789abcdef0123}
    - platform: aws
      prometheus:
"""


def config_problems(prometheus: str) -> list[str]:
    text = BASE + "".join(f"        {line}\n" for line in prometheus.strip().splitlines())
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.yml", env={})
    return info.value.details


def test_config_defaults_and_a_good_source() -> None:
    text = BASE + "        url: http://prometheus:9090/\n        preset: ingress-nginx\n"
    cfg = parse_config(text, source="t.yml", env={})
    assert cfg.traffic is not None
    prom = cfg.traffic.sources[1].prometheus
    assert prom is not None
    assert (prom.url, prom.interval, prom.range, prom.query_range) == (
        "http://prometheus:9090", 15.0, None, 60.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (
            'url: http://p:9090\npreset: ingress-nginx\nselector: host="a"} or vector(1',
            "traffic.sources[1].prometheus.selector: invalid selector 'host=\"a\"} or vector(1'",
        ),
        (
            "url: http://p:9090\npreset: ingress-nginx\nselector: '{host=\"a\"}'",
            "traffic.sources[1].prometheus.selector: invalid selector '{host=\"a\"}'",
        ),
        (
            "url: http://p:9090\npreset: ingress-nginx\nselector: host=api",
            "traffic.sources[1].prometheus.selector: invalid selector",
        ),
        (
            "url: http://p:9090\npreset: custom\nrequests_query: sum(x)\nlatency_buckets_query: sum by (le) (increase(y[$interval]))",
            "traffic.sources[1].prometheus: requests_query must take its range from $interval",
        ),
        (
            "url: http://p:9090\npreset: custom\nrequests_query: 'increase(x[$interval])'",
            "traffic.sources[1].prometheus: preset custom needs latency_buckets_query",
        ),
        (
            "url: http://p:9090\npreset: http-requests\nrequests_query: 'increase(x[$interval])'",
            "traffic.sources[1].prometheus: requests_query: only with preset custom",
        ),
        (
            "url: http://p:9090\npreset: custom\nselector: 'a=\"b\"'\nrequests_query: 'increase(x[$interval])'\nlatency_buckets_query: 'increase(x[$interval])'",
            "traffic.sources[1].prometheus: selector is for the presets",
        ),
        (
            "url: http://p:9090\npreset: ingress-nginx\ninterval: 30s\nrange: 15s",
            "traffic.sources[1].prometheus: range 15s must be at least the interval (30s)",
        ),
        (
            "url: http://p:9090\npreset: ingress-nginx\nroute_label: le",
            "traffic.sources[1].prometheus: route_label 'le' is a label the queries group by",
        ),
    ],
)
def test_config_problems_have_their_location(settings: str, problem: str) -> None:
    found = config_problems(settings)
    assert len(found) == 1 and problem in found[0], found


def test_selectors_that_load() -> None:
    for selector in ['host="a"', ' host = "a" , path=~"/v1/.{3}" ,', "a!~`x`", "a!='b'", ""]:
        cfg = PrometheusTraffic(url="http://p:9090", preset="ingress-nginx", selector=selector)
        assert cfg.selector == selector


def test_build_and_the_queries_with_a_route_label() -> None:
    cfg = PrometheusTraffic(
        url="http://p:9090", preset="http-requests", selector='job="api"', route_label="route"
    )
    source = build("p", cfg, "aws", Timeline(), Routes([("x", "^/x")]))
    assert isinstance(source, PrometheusSource) and source.kind == "prometheus"
    assert source.requests_query == (
        "sum by (code_class, route) (label_replace(label_replace(sum by (code, status, route) "
        '(increase(http_requests_total{job="api"}[$interval])), "code_class", "${1}xx", "code", '
        '"([0-9]).*"), "code_class", "${1}xx", "status", "([0-9]).*"))'
    )
    assert source.latency_query == (
        'sum by (le, route) (increase(http_request_duration_seconds_bucket{job="api"}[$interval]))'
    )
    assert math.isclose(source.range, 60.0)


async def test_a_poller_whose_queries_fail_as_it_is_cancelled_still_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both queries fail at once (nothing listens) while the poller is being stopped: Python
    3.11's TaskGroup swallowed that cancellation and the daemon's shutdown hung on it."""
    url = f"http://127.0.0.1:{free_port()}"
    tasks = Supervisor(grace=2.0)
    for turn in range(60):
        source = source_for(url)
        source.interval = 0.0001
        task = tasks.spawn(source.run(), f"traffic:prom-{turn}", "traffic")
        for _ in range(turn % 12):
            await asyncio.sleep(0)
        await tasks.stop_group("traffic")
        assert task.done()
    assert "did not end" not in caplog.text
