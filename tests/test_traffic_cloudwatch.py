"""The CloudWatch ALB traffic source, against a local GetMetricData stand-in over real sockets.

moto cannot serve this: it crashes serialising percentile statistics (p99), so the source is
tested against tests/cloudwatch_standin.py, which speaks AWS JSON 1.0 as botocore 1.44 does to
CloudWatch. The latency conversion is tested on its own against log-normal distributions.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from scipy import stats
from scipy.optimize import brentq

from exporter.config import CloudWatchAlb
from exporter.traffic.cloudwatch import (
    PERIOD,
    SETTLE,
    CloudWatchAlbSource,
    build,
    latency_histogram,
    period_tally,
)
from exporter.traffic.counts import ALL, LATENCY_BOUNDS, Histogram
from exporter.traffic.routes import Routes
from exporter.traffic.timeline import Timeline
from tests.cloudwatch_standin import (
    DENIED,
    THROTTLED,
    UNAVAILABLE,
    Failure,
    Raw,
    StandIn,
    results,
    running,
)

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000  # a minute boundary
LB = "app/k8s-ingress/0123456789abcdef"
TG = "targetgroup/api/fedcba9876543210"
KEY_ID = "AKIAQWERTYUIOPASDFGH"
SECRET = "cw-secret-0123456789abcdefghijklmnopqrstuv"
TOKEN = "cw-session-token-ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210"
LATENCY = {"p50": 0.05, "p90": 0.12, "p95": 0.2, "p99": 0.5, "SampleCount": 0.0}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cw_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials a test can look for, and no way for boto3 to reach anything but 127.0.0.1."""
    for key in list(os.environ):
        if key.startswith("AWS_") or key.lower() in ("http_proxy", "https_proxy"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def standin(cw_env: None) -> Iterator[StandIn]:
    with running(StandIn()) as s:
        yield s


@pytest.fixture
def sources() -> Iterator[list[CloudWatchAlbSource]]:
    made: list[CloudWatchAlbSource] = []
    yield made
    for source in made:
        source.close()


def make(
    made: list[CloudWatchAlbSource], url: str, clock: Clock, **kw: object
) -> CloudWatchAlbSource:
    options: dict[str, object] = {
        "load_balancer": LB,
        "region": "eu-west-1",
        "endpoint_url": url,
        "timeout": 5.0,
        "max_attempts": 2,
    }
    options.update(kw)
    source = CloudWatchAlbSource(
        "cw",
        "aws",
        Timeline(),
        Routes(),
        clock=clock,
        **options,  # type: ignore[arg-type]
    )
    made.append(source)
    return source


def minute(i: int) -> int:
    return T0 + PERIOD * i


def after(i: int, extra: float = 0.0) -> float:
    """A moment when minute i (and every one before it) has just become complete."""
    return minute(i + 1) + SETTLE + extra


def put(
    standin: StandIn, i: int, requests: float, ok: float, bad: float, elb: float, client: float = 0
) -> None:
    standin.put_alb(
        minute(i),
        LB,
        requests=requests,
        target={"2xx": ok, "3xx": 0, "4xx": client, "5xx": bad},
        elb_5xx=elb,
        latency={**LATENCY, "SampleCount": ok + client + bad},
    )


def minute_requests(source: CloudWatchAlbSource, i: int) -> float:
    # the timeline spreads a minute over 5 s buckets: twelfths that add up to ~1e-14 off
    return round(source.timeline.total("aws", ALL, minute(i), minute(i + 1)).requests, 9)


def body(standin: StandIn, n: int = -1) -> dict[str, object]:
    out: dict[str, object] = json.loads(standin.requests[n]["body"])
    return out


# -- latency: percentiles -> histogram -----------------------------------------------------


def test_the_given_quantiles_read_back_as_given_and_the_tail_ends_at_the_next_bound() -> None:
    h = latency_histogram({0.5: 0.1, 0.9: 0.3, 0.95: 0.5, 0.99: 1.0}, 1000)
    assert h.bounds == LATENCY_BOUNDS
    assert h.total == pytest.approx(1000)
    for q, value in ((0.5, 0.1), (0.9, 0.3), (0.95, 0.5), (0.99, 1.0)):
        assert h.quantile(q) == pytest.approx(value)
    # the last 1% lies between p99 and the next bound (1.25 s), none of it beyond
    assert h.counts[LATENCY_BOUNDS.index(1.25)] == pytest.approx(10)
    assert h.above(1.25) == 0
    assert h.quantile(0.999) <= 1.25
    # and the linear CDF from (0, 0) to (p50, .5): 5 ms holds 2.5%
    assert sum(h.counts[: LATENCY_BOUNDS.index(0.005) + 1]) == pytest.approx(25)


def test_a_tail_beyond_the_last_bound_goes_to_inf() -> None:
    h = latency_histogram({0.5: 10.0, 0.95: 50.0, 0.99: 90.0}, 100)
    assert h.total == pytest.approx(100)
    assert h.counts[-1] == pytest.approx(100 * (1 - (0.95 + 0.04 * 10 / 40)))
    assert h.quantile(0.999) == LATENCY_BOUNDS[-1]


def test_percentiles_out_of_order_are_made_monotone_and_garbage_is_refused() -> None:
    h = latency_histogram({0.5: 0.2, 0.95: 0.1, 0.99: 0.3}, 50)
    assert all(n >= 0 for n in h.counts)
    assert h.total == pytest.approx(50)
    # p95 is taken as p50: 45% of the requests at 0.2 s, all in the bucket (0.15, 0.2]
    assert h.counts[LATENCY_BOUNDS.index(0.2)] == pytest.approx(50 * (0.95 - 0.5 * 0.15 / 0.2))
    assert 0.15 < h.quantile(0.5) <= h.quantile(0.95) <= 0.2
    assert latency_histogram({0.5: 0.2}, 0).total == 0
    for bad in ({0.5: math.nan}, {0.5: -0.1}, {1.0: 0.2}, {0.0: 0.2}):
        with pytest.raises(ValueError):
            latency_histogram(bad, 10)
    with pytest.raises(ValueError):
        latency_histogram({0.5: 0.2}, math.inf)


LEVELS = (0.5, 0.9, 0.95, 0.99)
SHAPES = [(0.08, 0.5), (0.08, 1.0), (0.3, 0.6), (0.02, 0.8), (1.0, 0.4)]  # median, sigma


def _from_distribution(dist: object, n: float) -> Histogram:
    return latency_histogram({q: float(dist.ppf(q)) for q in LEVELS}, n)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("median", "sigma"), SHAPES)
def test_one_log_normal_minute_comes_back_close(median: float, sigma: float) -> None:
    """What CloudWatch would say of one minute of log-normal latencies, and what we make of it.

    Measured: p50, p90, p95 0-9% high, p99 within 4%, p99.9 14-44% low (the cut tail).
    """
    dist = stats.lognorm(s=sigma, scale=median)
    h = _from_distribution(dist, 10_000)
    error = {q: h.quantile(q) / dist.ppf(q) - 1 for q in (*LEVELS, 0.999)}
    assert -0.01 <= error[0.5] <= 0.10
    assert -0.01 <= error[0.9] <= 0.10
    assert -0.01 <= error[0.95] <= 0.10
    assert abs(error[0.99]) <= 0.05
    assert error[0.999] < 0  # the tail above p99 is cut at the next bound: a lower bound


def _mixture_quantile(parts: list[tuple[object, float]], q: float) -> float:
    """The q-quantile of requests drawn from several distributions, n of each."""
    total = sum(n for _, n in parts)

    def cdf(x: float) -> float:
        return sum(n * d.cdf(x) for d, n in parts) / total  # type: ignore[attr-defined]

    return float(brentq(lambda x: cdf(x) - q, 1e-6, 1000))


def test_merged_minutes_of_different_shapes_come_back_close() -> None:
    """The judge merges minutes: a mixture's quantiles from the merged histograms.

    Measured over 5 mixtures of 10 minutes: p90 +7..+17%, p95 +5..+11%, p99 -2..+10%,
    p99.9 3-22% low.
    """
    rng = random.Random(1)
    for _ in range(5):
        shapes = [
            (rng.uniform(0.03, 0.3), rng.uniform(0.3, 1.0), rng.uniform(100, 3000))
            for _ in range(10)
        ]  # median, sigma, requests
        parts: list[tuple[object, float]] = [
            (stats.lognorm(s=sigma, scale=median), n) for median, sigma, n in shapes
        ]
        merged = Histogram(LATENCY_BOUNDS)
        for dist, n in parts:
            merged.merge(_from_distribution(dist, n))
        error = {q: merged.quantile(q) / _mixture_quantile(parts, q) - 1 for q in (*LEVELS, 0.999)}
        assert abs(error[0.5]) <= 0.10
        assert 0 <= error[0.9] <= 0.20
        assert 0 <= error[0.95] <= 0.15
        assert abs(error[0.99]) <= 0.12
        assert error[0.999] < 0


# -- one minute's metrics -> a tally ---------------------------------------------------------


def test_the_albs_own_502s_are_in_request_count_and_are_not_counted_twice() -> None:
    # 90 answered by the app, 10 the ALB failed after choosing a target (502): all in RequestCount
    tally = period_tally({"requests": 100, "target_2xx": 90, "elb_5xx": 10})
    assert tally is not None
    assert tally.requests == 100
    assert tally.responses == {"2xx": 90, "3xx": 0, "4xx": 0, "5xx": 10}
    assert tally.router_errors == 10
    assert tally.error_ratio == pytest.approx(0.10)


def test_503s_without_a_target_are_requests_though_request_count_misses_them() -> None:
    # no registered targets for a while: RequestCount has only the minute's other half
    tally = period_tally({"requests": 50, "target_2xx": 50, "elb_5xx": 50})
    assert tally is not None
    assert (tally.requests, tally.errors, tally.router_errors) == (100, 50, 50)
    # and none at all: CloudWatch reports no RequestCount, only the ALB's own 503s
    only = period_tally({"elb_5xx": 7})
    assert only is not None
    assert (only.requests, only.errors, only.latency) == (7, 7, None)


def test_requests_without_an_answer_count_as_requests_without_a_class() -> None:
    tally = period_tally(
        {"requests": 105, "target_2xx": 95, "target_5xx": 5, "latency_p50": 0.1, "latency_p99": 1}
    )
    assert tally is not None
    assert tally.requests == 105  # 5 clients left before the answer (HTTP 460)
    assert sum(tally.responses.values()) == 100
    assert tally.latency is not None
    assert tally.latency.total == pytest.approx(100)  # no SampleCount: the target answers
    assert period_tally({}) is None
    assert period_tally({"requests": 0.0, "target_2xx": 0.0}) is None


# -- the source against the stand-in -----------------------------------------------------------


async def test_each_complete_minute_is_reported_with_its_counts_and_latency(
    standin: StandIn, sources: list[CloudWatchAlbSource]
) -> None:
    for i in range(9):
        put(standin, i, requests=100 + i, ok=90 + i, bad=2, elb=i % 3, client=1)
    clock = Clock(after(5, 30))  # minutes up to 5 complete; 6 only 30 s past its settling time
    source = make(sources, standin.url, clock)
    await source.poll_once()

    status = source.status
    assert (status.up, status.error, status.kind) == (True, None, "cloudwatch_alb")
    assert status.covered_until == minute(6)
    # the first poll asks for the last 5 complete minutes, and for nothing incomplete
    request = body(standin)
    assert (request["StartTime"], request["EndTime"]) == (minute(1), minute(6))
    headers = standin.requests[-1]["headers"]
    assert headers["x-amz-target"] == "GraniteServiceVersion20100801.GetMetricData"
    assert "/eu-west-1/monitoring/aws4_request" in headers["authorization"]
    queries = request["MetricDataQueries"]
    assert isinstance(queries, list)
    stats_asked = {
        (q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Stat"]) for q in queries
    }
    assert ("TargetResponseTime", "p99") in stats_asked
    assert ("HTTPCode_ELB_5XX_Count", "Sum") in stats_asked
    for q in queries:
        assert q["MetricStat"]["Period"] == 60
        assert q["MetricStat"]["Metric"]["Dimensions"] == [{"Name": "LoadBalancer", "Value": LB}]

    assert [minute_requests(source, i) for i in range(8)] == [0, 101, 102, 103, 104, 105, 0, 0]
    fourth = source.timeline.total("aws", ALL, minute(4), minute(5))
    assert fourth.responses == pytest.approx({"2xx": 94, "3xx": 0, "4xx": 1, "5xx": 2 + 1})
    assert fourth.router_errors == pytest.approx(1)
    assert fourth.latency is not None
    assert fourth.latency.total == pytest.approx(97)
    assert fourth.latency.quantile(0.99) == pytest.approx(0.5)
    assert fourth.latency.quantile(0.5) == pytest.approx(0.05, rel=0.05)
    # CloudWatch cannot tell route groups: everything is the platform's `all`
    assert source.timeline.routes("aws") == {ALL}
    counters = source.timeline.counters[("aws", "cw", ALL)]
    assert counters.requests == 101 + 102 + 103 + 104 + 105


async def test_a_target_group_reads_its_own_series_and_the_load_balancers_own_5xx(
    standin: StandIn, sources: list[CloudWatchAlbSource]
) -> None:
    for i in range(6):
        # the whole load balancer serves more than this target group
        standin.put_alb(minute(i), LB, requests=1000, target={"2xx": 1000})
        standin.put_alb(
            minute(i), LB, target_group=TG, requests=60, target={"2xx": 55, "5xx": 1}, elb_5xx=4,
            latency={"p50": 0.1, "p99": 0.3},
        )  # fmt: skip
    source = make(sources, standin.url, Clock(after(4)), target_group=TG)
    await source.poll_once()
    assert source.status.up
    for q in body(standin)["MetricDataQueries"]:  # type: ignore[attr-defined]
        dims = {d["Name"]: d["Value"] for d in q["MetricStat"]["Metric"]["Dimensions"]}
        if q["MetricStat"]["Metric"]["MetricName"] == "HTTPCode_ELB_5XX_Count":
            assert dims == {"LoadBalancer": LB}  # CloudWatch has it per load balancer only
        else:
            assert dims == {"LoadBalancer": LB, "TargetGroup": TG}
    tally = source.timeline.total("aws", ALL, minute(4), minute(5))
    assert (tally.requests, tally.errors, tally.router_errors) == pytest.approx((60, 5, 4))


async def test_a_minute_waits_until_complete_and_late_data_is_never_counted_twice(
    standin: StandIn, sources: list[CloudWatchAlbSource]
) -> None:
    for i in range(5):
        put(standin, i, requests=10, ok=10, bad=0, elb=0)
    clock = Clock(after(4))
    source = make(sources, standin.url, clock)
    await source.poll_once()
    assert source.status.covered_until == minute(5)

    # minute 5 is half in: seen 30 s after its end, it is not complete yet
    put(standin, 5, requests=40, ok=40, bad=0, elb=0)
    clock.now = minute(6) + 30
    calls = source.api_calls
    await source.poll_once()
    assert source.api_calls == calls  # nothing newly complete: CloudWatch is not even asked
    assert minute_requests(source, 5) == 0
    assert source.status.covered_until == minute(5)
    assert source.status.up

    # the rest arrives; once settled, the minute is reported whole
    put(standin, 5, requests=100, ok=98, bad=2, elb=0)
    clock.now = after(5)
    await source.poll_once()
    assert minute_requests(source, 5) == 100
    assert (body(standin)["StartTime"], body(standin)["EndTime"]) == (minute(5), minute(6))
    assert source.status.covered_until == minute(6)

    # later data for minute 5 (beyond the settling time) is not counted: it was reported
    put(standin, 5, requests=130, ok=128, bad=2, elb=0)
    put(standin, 6, requests=7, ok=7, bad=0, elb=0)
    clock.now = after(6)
    await source.poll_once()
    assert body(standin)["StartTime"] == minute(6)
    assert minute_requests(source, 5) == 100
    assert minute_requests(source, 6) == 7
    counters = source.timeline.counters[("aws", "cw", ALL)]
    assert counters.requests == 5 * 10 + 100 + 7


async def test_datapoints_outside_the_asked_span_are_skipped(
    standin: StandIn, sources: list[CloudWatchAlbSource]
) -> None:
    for i in range(9):
        put(standin, i, requests=10, ok=10, bad=0, elb=0)
    clock = Clock(after(5))
    source = make(sources, standin.url, clock)
    # an answer that holds more than was asked for: an incomplete minute, and one long gone
    standin.raw_next.append(
        _answer(
            requests=_result(
                "requests", Timestamps=[minute(0), minute(3), minute(7)], Values=[4, 5, 9]
            )
        )
    )
    await source.poll_once()
    assert source.status.up
    assert [minute_requests(source, i) for i in range(9)] == [0, 0, 0, 5, 0, 0, 0, 0, 0]
    clock.now = after(7)
    await source.poll_once()
    assert [minute_requests(source, i) for i in range(9)] == [0, 0, 0, 5, 0, 0, 10, 10, 0]


async def test_missed_minutes_are_caught_up_once_after_failures(
    standin: StandIn, sources: list[CloudWatchAlbSource], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cutover.traffic")
    for i in range(12):
        put(standin, i, requests=20 + i, ok=20 + i, bad=0, elb=0)
    clock = Clock(after(4))
    source = make(sources, standin.url, clock)
    await source.poll_once()
    standin.fail_always = THROTTLED
    for i in (5, 6, 7):
        clock.now = after(i)
        await source.poll_once()
        assert not source.status.up
    assert source.errors == {"throttling": 3}
    assert source.status.error == "throttling: Throttling: Rate exceeded"
    assert source.status.covered_until == minute(5)
    standin.fail_always = None
    clock.now = after(8)
    await source.poll_once()
    assert source.status.up and source.status.error is None
    assert (body(standin)["StartTime"], body(standin)["EndTime"]) == (minute(5), minute(9))
    assert [minute_requests(source, i) for i in range(11)] == [*(20 + i for i in range(9)), 0, 0]
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failed) == 1  # once per distinct failure, not at every poll
    assert "throttling" in failed[0].getMessage()
    assert any("works again" in r.getMessage() for r in caplog.records)


async def test_after_a_long_outage_only_minutes_the_timeline_still_takes_are_asked_for(
    standin: StandIn, sources: list[CloudWatchAlbSource]
) -> None:
    for i in range(40):
        put(standin, i, requests=10, ok=10, bad=0, elb=0)
    clock = Clock(after(4))
    source = make(sources, standin.url, clock)
    await source.poll_once()
    standin.fail_always = UNAVAILABLE
    clock.now = after(10)
    await source.poll_once()
    standin.fail_always = None
    clock.now = after(35, 59)  # 30 minutes later, just before minute 36 completes
    await source.poll_once()
    assert source.status.up
    asked = body(standin)
    assert asked["EndTime"] == minute(36)
    # the timeline keeps 15 minutes: the 13 minutes whose end lies inside them
    assert asked["StartTime"] == minute(36 - 13)
    assert source.timeline.keep == 900
    held = [i for i in range(5, 36) if minute_requests(source, i) > 0]
    assert held == list(range(23, 36))
    counters = source.timeline.counters[("aws", "cw", ALL)]
    assert counters.requests == pytest.approx(10 * (5 + 13))


@pytest.mark.parametrize(
    ("failure", "reason", "attempts"),
    [
        (THROTTLED, "throttling", 2),  # retried by botocore (standard mode), then given up
        (Failure(429, "TooManyRequests", "TooManyRequestsException", "slow down"), "throttling", 2),
        (DENIED, "refused", 1),  # not retried: it will not get better
        (Failure(403, "InvalidClientTokenId", "InvalidClientTokenId", "bad key"), "refused", 1),
        (UNAVAILABLE, "unreachable", 2),
        (Failure(400, "InvalidParameterValue", "InvalidParameterValueException", "no"), "other", 1),
    ],
)
async def test_each_failure_is_its_reason_and_the_source_recovers(
    standin: StandIn,
    sources: list[CloudWatchAlbSource],
    failure: Failure,
    reason: str,
    attempts: int,
) -> None:
    for i in range(8):
        put(standin, i, requests=10, ok=10, bad=0, elb=0)
    clock = Clock(after(5))
    source = make(sources, standin.url, clock)
    standin.fail_always = failure
    await source.poll_once()  # never raises
    assert not source.status.up
    assert source.status.error is not None
    assert source.status.error.startswith(f"{reason}: {failure.code}: {failure.message}")
    assert source.errors == {reason: 1}
    assert len(standin.requests) == attempts
    standin.fail_always = None
    clock.now = after(6)
    await source.poll_once()
    assert source.status.up and source.status.error is None
    assert minute_requests(source, 6) == 10


async def test_a_hanging_endpoint_is_a_timeout_and_the_next_poll_works(
    standin: StandIn, sources: list[CloudWatchAlbSource]
) -> None:
    for i in range(8):
        put(standin, i, requests=10, ok=10, bad=0, elb=0)
    clock = Clock(after(5))
    source = make(sources, standin.url, clock, timeout=0.5)
    standin.hang_next = 10
    await source.poll_once()
    assert source.status.error == "timeout: no answer within 0.5s"
    assert source.errors == {"timeout": 1}
    standin.release()
    clock.now = after(6)
    await source.poll_once()
    assert source.status.up
    # the first poll failed: the next one asks for the 5 minutes before it
    assert [minute_requests(source, i) for i in range(1, 7)] == [0] + [10] * 5


async def test_an_endpoint_that_is_down_is_unreachable(
    cw_env: None, sources: list[CloudWatchAlbSource]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    source = make(sources, f"http://127.0.0.1:{port}", Clock(after(5)))
    await source.poll_once()
    assert source.status.error is not None
    assert source.status.error.startswith("unreachable: ")
    assert f"127.0.0.1:{port}" in source.status.error


def _result(qid: str, **kw: object) -> dict[str, object]:
    return {"Id": qid, "Timestamps": [], "Values": [], "StatusCode": "Complete", **kw}


ALL_IDS = (
    *("requests", "target_2xx", "target_3xx", "target_4xx", "target_5xx", "elb_5xx"),
    *("latency_p50", "latency_p90", "latency_p95", "latency_p99", "latency_n"),
)


def _answer(**override: dict[str, object]) -> Raw:
    return results(*(override.get(q, _result(q)) for q in ALL_IDS))


@pytest.mark.parametrize(
    ("raw", "reason", "words"),
    [
        (Raw(200, b"<html>gateway says hello</html>"), "bad_answer", "no MetricDataResults"),
        (Raw(200, b'{"MetricDataResults": 5}'), "bad_answer", "unreadable answer (TypeError)"),
        (
            _answer(requests=_result("requests", Timestamps=[T0], Values=[1, 2])),
            "bad_answer",
            "1 timestamps for 2 values",
        ),
        (
            _answer(requests=_result("requests", Timestamps=[T0], Values=[-3])),
            "bad_answer",
            "not a count",
        ),
        (
            _answer(requests=_result("requests", Timestamps=[T0], Values=["many"])),
            "bad_answer",
            "not a count",
        ),
        (
            Raw(
                200,
                b'{"MetricDataResults": [{"Id": "requests", "Timestamps": [1], "Values": [NaN]}]}',
            ),
            "bad_answer",
            "not a count",
        ),
        (
            _answer(requests=_result("requests", Timestamps=["yesterday"], Values=[1])),
            "bad_answer",
            "unreadable answer",
        ),
        (results(_result("requests")), "bad_answer", "partial answer: no result for target_2xx"),
        (
            _answer(requests=_result("requests", StatusCode="PartialData")),
            "bad_answer",
            "partial answer: requests has PartialData",
        ),
        (
            _answer(elb_5xx=_result("elb_5xx", StatusCode="InternalError")),
            "bad_answer",
            "InternalError",
        ),
        (_answer(latency_n=_result("latency_n", StatusCode="Forbidden")), "refused", "Forbidden"),
    ],
)
async def test_garbage_and_partial_answers_are_bad_answers_and_the_source_recovers(
    standin: StandIn, sources: list[CloudWatchAlbSource], raw: Raw, reason: str, words: str
) -> None:
    for i in range(8):
        put(standin, i, requests=10, ok=10, bad=0, elb=0)
    clock = Clock(after(5))
    source = make(sources, standin.url, clock)
    standin.raw_next.append(raw)
    await source.poll_once()
    assert not source.status.up
    assert source.status.error is not None
    assert source.status.error.startswith(f"{reason}: ")
    assert words in source.status.error
    assert "gateway says hello" not in source.status.error  # what an answer says is not echoed
    assert sum(minute_requests(source, i) for i in range(8)) == 0  # nothing half-counted
    clock.now = after(6)
    await source.poll_once()
    assert source.status.up
    # the first poll failed: the next one asks for the 5 minutes before it
    assert [minute_requests(source, i) for i in range(1, 7)] == [0] + [10] * 5


async def test_answers_over_several_pages_are_read_whole(
    standin: StandIn, sources: list[CloudWatchAlbSource]
) -> None:
    standin.page_size = 7  # 11 series of 5 minutes: 8 pages
    for i in range(8):
        put(standin, i, requests=10 + i, ok=10 + i, bad=0, elb=1)
    source = make(sources, standin.url, Clock(after(5)))
    await source.poll_once()
    assert source.status.up
    assert source.api_calls == 8
    assert [body(standin, n).get("NextToken") for n in range(8)] == [
        None,
        *(str(7 * n) for n in range(1, 8)),
    ]
    for i in range(1, 6):
        tally = source.timeline.total("aws", ALL, minute(i), minute(i + 1))
        assert (tally.requests, tally.router_errors) == pytest.approx((11 + i, 1))
        assert tally.latency is not None


async def test_without_credentials_it_is_refused_and_nothing_is_sent(
    standin: StandIn, sources: list[CloudWatchAlbSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    source = make(sources, standin.url, Clock(after(5)))
    await source.poll_once()
    assert source.status.error == "refused: Unable to locate credentials"
    assert standin.requests == []


async def test_without_a_region_it_says_so(
    standin: StandIn, sources: list[CloudWatchAlbSource]
) -> None:
    source = make(sources, standin.url, Clock(after(5)), region=None)
    await source.poll_once()
    assert source.status.error == "other: no region: set the source's region, or AWS_REGION"
    assert standin.requests == []


async def test_keys_and_tokens_stay_out_of_errors_and_logs(
    standin: StandIn, sources: list[CloudWatchAlbSource], caplog: pytest.LogCaptureFixture
) -> None:
    # what the daemon prints (it keeps botocore's own debug output, whole signed requests, off)
    caplog.set_level(logging.DEBUG, logger="cutover")
    # an answer that repeats the request's credentials headers back, as a careless proxy might
    standin.fail_always = Failure(403, "AccessDenied", "AccessDeniedException", "no", True)
    source = make(sources, standin.url, Clock(after(5)))
    await source.poll_once()
    error = source.status.error
    assert error is not None and error.startswith("refused: AccessDenied: X-Amz-Security-Token: ")
    assert standin.requests[0]["headers"]["x-amz-security-token"] == TOKEN  # it was sent
    logged = caplog.text
    assert "refused: AccessDenied" in logged
    for secret in (KEY_ID, SECRET, TOKEN):
        assert secret not in error
        assert secret not in logged
    assert "[redacted]" in error


async def test_a_closed_source_fails_its_polls_without_raising(
    standin: StandIn, sources: list[CloudWatchAlbSource]
) -> None:
    source = make(sources, standin.url, Clock(after(5)))
    source.close()
    source.close()
    await source.poll_once()
    assert source.status.error == "other: source is closed"
    assert standin.requests == []


async def test_build_makes_the_source_the_config_describes(
    standin: StandIn, sources: list[CloudWatchAlbSource]
) -> None:
    for i in range(8):
        put(standin, i, requests=10, ok=10, bad=0, elb=0)
    cfg = CloudWatchAlb.model_validate(
        {
            "load_balancer": LB,
            "region": "eu-west-1",
            "endpoint_url": standin.url,
            "interval": "30s",
            "timeout": "3s",
        }
    )
    timeline = Timeline()
    source = build("alb", cfg, "aws", timeline, Routes([("orders", "^/orders")]))
    sources.append(source)
    assert isinstance(source, CloudWatchAlbSource)
    assert (source.name, source.platform, source.kind) == ("alb", "aws", "cloudwatch_alb")
    assert (source.interval, source.timeout, source.target_group) == (30.0, 3.0, None)
    assert timeline.sources["alb"] is source.status
    source.clock = Clock(after(5))
    await source.poll_once()
    assert source.status.up
    # route groups are configured, but CloudWatch cannot tell paths: all of it is `all`
    assert timeline.routes("aws") == {ALL}
    assert timeline.total("aws", ALL, minute(1), minute(6)).requests == pytest.approx(50)


def test_the_iam_policy_allows_get_metric_data_alone() -> None:
    policy = json.loads((ROOT / "deploy" / "iam" / "cloudwatch-read-policy.json").read_text())
    assert policy["Version"] == "2012-10-17"
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "cloudwatch:GetMetricData"
    # GetMetricData supports no resource-level permissions: "*" is the only resource it takes
    assert statement["Resource"] == "*"


def measure_latency_conversion() -> None:
    """Print how far quantiles read back from converted minutes are from the truth.

    `python -m tests.test_traffic_cloudwatch`: one log-normal minute per shape, then 5
    mixtures of 10 minutes, with the knots asked for (p50/p90/p95/p99) and with p50/p95/p99.
    """
    levels = (*LEVELS, 0.999)
    rng = random.Random(1)
    mixtures = [
        [(rng.uniform(0.03, 0.3), rng.uniform(0.3, 1.0), rng.uniform(100, 3000)) for _ in range(10)]
        for _ in range(5)
    ]
    for knots in (LEVELS, (0.5, 0.95, 0.99)):
        print(f"knots {'/'.join(f'p{q * 100:g}' for q in knots)}")
        single: dict[float, list[float]] = {q: [] for q in levels}
        for median, sigma in SHAPES:
            dist = stats.lognorm(s=sigma, scale=median)
            h = latency_histogram({q: float(dist.ppf(q)) for q in knots}, 10_000)
            for q in levels:
                single[q].append(h.quantile(q) / dist.ppf(q) - 1)
        mixed: dict[float, list[float]] = {q: [] for q in levels}
        for shapes in mixtures:
            parts: list[tuple[object, float]] = [
                (stats.lognorm(s=sigma, scale=median), n) for median, sigma, n in shapes
            ]
            merged = Histogram(LATENCY_BOUNDS)
            for dist, n in parts:
                merged.merge(
                    latency_histogram({q: float(dist.ppf(q)) for q in knots}, n)  # type: ignore[attr-defined]
                )
            for q in levels:
                mixed[q].append(merged.quantile(q) / _mixture_quantile(parts, q) - 1)
        for name, errors in (("one minute", single), ("merged", mixed)):
            print(
                f"  {name:10}  "
                + "  ".join(f"p{q * 100:g} {min(e):+.0%}..{max(e):+.0%}" for q, e in errors.items())
            )


if __name__ == "__main__":
    measure_latency_conversion()
