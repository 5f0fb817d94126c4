"""Real traffic end to end: a Heroku drain and a Prometheus for the two platforms, a regression
seen only in users' requests, a Slack message, and the guarded shift rolled back in Route53."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import FakePlatform
from tests.logplex import body, error_line, headers, router_line
from tests.slack_standin import SlackStandIn
from tests.test_route53_daemon import Moto, moto, zone
from tests.test_shift_e2e import ShiftDaemon, shift_config, start_shift, weights_in

__all__ = ["moto", "start_shift"]  # fixtures

TOKEN = "xoxb-traffic-e2e-token-9876"
DRAIN_TOKEN = "drain-token-0123456789abcdef"
BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass
class PrometheusStandIn:
    """Just enough of Prometheus' query API for the `custom` preset: the candidate's requests
    (by status class) and latency buckets over the asked range, at a rate the test sets."""

    rate: float = 20.0  # requests per second
    error_ratio: float = 0.01
    queries: list[str] = field(default_factory=list)
    port: int = 0

    async def query(self, request: web.Request) -> web.Response:
        q = request.query.get("query", "")
        self.queries.append(q)
        seconds = float(q.rsplit("[", 1)[1].split("s]", 1)[0])
        total = self.rate * seconds
        if "bucket" in q:
            # latencies near 40 ms: everything by 50 ms
            result = [
                {
                    "metric": {"le": f"{le:g}"},
                    "value": [time.time(), str(total if le >= 0.05 else 0)],
                }
                for le in BUCKETS
            ] + [{"metric": {"le": "+Inf"}, "value": [time.time(), str(total)]}]
        else:
            errors = total * self.error_ratio
            result = [
                {"metric": {"code_class": "2xx"}, "value": [time.time(), str(total - errors)]},
                {"metric": {"code_class": "5xx"}, "value": [time.time(), str(errors)]},
            ]
        data = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return web.json_response(data)


@pytest.fixture
async def prometheus() -> AsyncIterator[PrometheusStandIn]:
    standin = PrometheusStandIn()
    app = web.Application()
    app.router.add_get("/api/v1/query", standin.query)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    standin.port = runner.addresses[0][1]
    yield standin
    await runner.cleanup()


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    standin = SlackStandIn(token=TOKEN, channels={"#migration": "C0TRAFFIC"})
    await standin.start()
    yield standin
    await standin.stop()


def traffic_config(
    platforms: tuple[FakePlatform, FakePlatform],
    moto: Moto,
    zid: str,
    prometheus: PrometheusStandIn,
    slack: SlackStandIn,
) -> str:
    # the first step comes within seconds (at 0% no candidate requests are asked for); at 10%
    # the shift waits for more real requests than the test makes, and the regression fires
    base = shift_config(
        platforms,
        moto,
        zid,
        hold="3s",
        readiness="confidence: 0.6, min_requests: 1000000",
        errors_max_increase=0.02,
    )
    return (
        base.replace("alerting:\n  for: 1s\n  resolve_after: 1s\n", "")
        + f"""\
alerting:
  for: 2s
  resolve_after: 5s
  slack:
    token: {TOKEN}
    channel: '#migration'
    api_url: {slack.url}
traffic:
  window: 60s
  min_requests: 50
  sources:
    - platform: heroku
      heroku_drain: {{token: {DRAIN_TOKEN}}}
    - platform: aws
      prometheus:
        url: http://127.0.0.1:{prometheus.port}
        interval: 1s
        range: 10s
        timeout: 900ms
        preset: custom
        requests_query: 'sum by (code_class) (increase(requests_total[$interval]))'
        latency_buckets_query: 'sum by (le) (increase(request_seconds_bucket[$interval]))'
"""
    )


async def feed_drain(url: str, stop: asyncio.Event, per_post: int = 25) -> None:
    """The baseline's users through Heroku's router: 50 requests a second, 1% of them 503."""
    n = 0
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            now = time.time()
            lines = []
            for _ in range(per_post):
                n += 1
                lines.append(error_line(now) if n % 100 == 0 else router_line(now, service=38))
            with contextlib.suppress(aiohttp.ClientError):
                async with s.post(
                    url + "/api/v1/drains/heroku",
                    data=body(lines),
                    headers=headers(DRAIN_TOKEN, frame_id=f"frame-{n}", count=per_post),
                ) as r:
                    assert r.status == 204, await r.text()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_a_regression_in_real_traffic_alerts_and_rolls_the_shift_back(
    platforms: tuple[FakePlatform, FakePlatform],
    moto: Moto,
    start_shift: Any,
    prometheus: PrometheusStandIn,
    slack: SlackStandIn,
) -> None:
    _, zid = zone(moto, {"heroku": 100, "aws": 0}, ttl=1)
    d: ShiftDaemon = start_shift(
        traffic_config(platforms, moto, zid, prometheus, slack), "--allow-route53-writes"
    )
    await d.wait_ready()
    stop = asyncio.Event()
    feeder = asyncio.create_task(feed_drain(d.url, stop))
    try:
        await d.wait_shift(lambda s: s["share"] == 10 and s["state"] == "holding", timeout=60)
        # both platforms judged on real requests, and nothing wrong yet
        regressed = 'cutover_regression{check="traffic:all",signal="errors"}'
        m = await d.wait_for(
            lambda m: (
                m.get(
                    'cutover_traffic_window_requests{platform="aws",role="candidate",route="all"}',
                    0,
                )
                >= 200
                and m.get(regressed) == 0
            ),
            timeout=40,
        )
        assert m['cutover_traffic_source_up{platform="heroku",source="heroku_drain"}'] == 1
        assert m['cutover_traffic_source_up{platform="aws",source="prometheus"}'] == 1
        _, status = await d.get("/api/v1/status")
        verdicts = json.loads(status)["traffic"]["route_groups"][0]["verdicts"]
        assert verdicts["errors"]["state"] == "ok", verdicts
        # the step is announced; no incident yet
        assert not any("real traffic" in (c.text or "") for c in slack.message_calls())
        assert weights_in(moto, zid) == {"heroku": 90, "aws": 10}

        prometheus.error_ratio = 0.12  # one request in eight fails on the candidate; probes pass
        text = "real traffic, all routes: aws fails more requests than heroku (errors)"
        await until(
            lambda: any(text in (m.text or "") for m in slack.top_level("C0TRAFFIC")),
            60,
            "the Slack message",
        )
        [message] = [m for m in slack.top_level("C0TRAFFIC") if text in (m.text or "")]
        assert "requests" in (message.text or "") and "heroku (baseline)" in (message.text or "")
        data = await d.wait_shift(
            lambda s: s["state"] == "rolled_back" and s["share"] == 0, timeout=30
        )
        assert weights_in(moto, zid) == {"heroku": 100, "aws": 0}
        assert any("roll" in h["reason"] for h in data["history"])
        # the rollback is said in the incident's thread
        await until(lambda: slack.replies(message.ts), 20, "the rollback reply")
        m = await d.metrics()
        assert m['cutover_alert_firing{check="traffic:all",signal="errors"}'] == 1
        ratio = m['cutover_traffic_window_error_ratio{platform="aws",role="candidate",route="all"}']
        assert not math.isnan(ratio) and ratio > 0.02
        for where in (d.log(), status, json.dumps(m)):
            assert DRAIN_TOKEN not in where and TOKEN not in where
    finally:
        stop.set()
        await feeder
    assert d.stop() == 0
