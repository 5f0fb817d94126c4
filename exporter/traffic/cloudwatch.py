"""An application load balancer's real traffic from CloudWatch (GetMetricData, 60 s periods).

What is asked, per minute (namespace `AWS/ApplicationELB`, dimension `LoadBalancer`, and
`TargetGroup` too when one is configured):

    RequestCount                        Sum      requests for which the ALB chose a target
    HTTPCode_Target_{2,3,4,5}XX_Count   Sum      responses the targets (the app) gave
    HTTPCode_ELB_5XX_Count              Sum      5xx the ALB made itself (per load balancer only:
                                                 CloudWatch has no TargetGroup series of it)
    TargetResponseTime                  p50 p90 p95 p99 SampleCount

How they become a `Tally` (`period_tally`): AWS documents RequestCount as counting only requests
"where the load balancer node was able to choose a target". The ALB's own 502 and 504 (target
unreachable, target timed out) had a target and are in it; its 503 for a target group with no
targets, and 500s before routing, are not. The two cannot be told apart in CloudWatch, so
adding ELB_5XX to RequestCount would count the 502s twice, and RequestCount alone would miss
the 503s. Every request users got an answer for is in exactly one of the target classes or
ELB_5XX; `requests` is the larger of RequestCount and that sum: never a request counted twice,
never a failure left out. (What RequestCount has beyond it is requests that got neither, e.g.
clients that left before the answer, HTTP 460: requests without a class.) The ALB's own 5xx
count as `5xx` responses and as `router_errors`; its own 3xx and 4xx (redirect actions, fixed
responses, malformed requests) are not asked for: they say nothing of the candidate.

Latency: CloudWatch gives percentiles, not a histogram; `latency_histogram` turns them back into
one (its docstring says how, and what that costs).

Completeness: ALB sends each minute's data within a minute or two and CloudWatch may add to a
period for a while after. A period is reported once, when it is `settle` seconds past its end
(2 minutes by default), never before and never again: data arriving later than that is not
counted (no period is ever counted twice). Each poll asks for every complete period not yet
reported (after failed polls, several), with an EndTime that leaves incomplete ones out, and
skips whatever the answer holds outside the asked span. `covered_until` is the end of the last
complete period asked for.

Tested against tests/cloudwatch_standin.py, not moto: moto 5.2 crashes serialising percentile
statistics. botocore 1.44 speaks AWS JSON 1.0 to CloudWatch; the stand-in speaks the same.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Final, cast

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.parsers import ResponseParserError

from exporter import aws
from exporter.errors import SourceError
from exporter.traffic.counts import ALL, CODE_CLASSES, LATENCY_BOUNDS, Histogram, Report, Tally
from exporter.traffic.sources import Poll, PollingSource

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_cloudwatch.type_defs import (
        DimensionTypeDef,
        GetMetricDataInputTypeDef,
        MetricDataQueryTypeDef,
        MetricStatTypeDef,
    )

    from exporter.config import CloudWatchAlb
    from exporter.traffic.routes import Routes
    from exporter.traffic.timeline import Timeline

__all__ = [
    "NAMESPACE",
    "PERCENTILES",
    "PERIOD",
    "SETTLE",
    "CloudWatchAlbSource",
    "build",
    "classify",
    "latency_histogram",
    "period_tally",
    "read_results",
]

NAMESPACE: Final = "AWS/ApplicationELB"
PERIOD: Final = 60  # seconds; ALB publishes per minute
SETTLE: Final = 120.0  # a period is complete this long after its end
BACKFILL: Final = 5  # periods asked for at the first poll: a window's worth, to judge sooner
MAX_PERIODS: Final = 15  # asked for at most per poll
MAX_PAGES: Final = 10  # NextToken pages per poll; a few periods of 10 series fit in one
DETAIL_MAX: Final = 200
# TargetResponseTime percentiles asked for: p90 is not needed by the judge, but as a knot of
# the latency CDF it shrinks the error at p90 and p95 by two thirds (see latency_histogram),
# for one metric more per call
PERCENTILES: Final = (("50", 0.5), ("90", 0.9), ("95", 0.95), ("99", 0.99))

# query id -> (metric name, statistic, whether the series exists per target group)
_QUERIES: Final[dict[str, tuple[str, str, bool]]] = {
    "requests": ("RequestCount", "Sum", True),
    **{f"target_{c}": (f"HTTPCode_Target_{c.upper()}_Count", "Sum", True) for c in CODE_CLASSES},
    "elb_5xx": ("HTTPCode_ELB_5XX_Count", "Sum", False),
    **{f"latency_p{p}": ("TargetResponseTime", f"p{p}", True) for p, _ in PERCENTILES},
    "latency_n": ("TargetResponseTime", "SampleCount", True),
}

_THROTTLING_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "LimitExceededException",
    }
)
_REFUSED_CODES: Final = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "NotAuthorized",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "UnrecognizedClientException",
        "MissingAuthenticationToken",
    }
)


def latency_histogram(
    quantiles: Mapping[float, float],
    count: float,
    bounds: Sequence[float] = LATENCY_BOUNDS,
) -> Histogram:
    """`count` requests with these latency quantiles (level -> seconds), as a histogram.

    The distribution assumed: a piecewise-linear CDF through (0, 0) and (value, level) of each
    quantile, e.g. (p50, .5), (p90, .9), (p95, .95), (p99, .99); the rest above the highest
    level (the last 1%) spread evenly from its value up to the first bound above it (into +Inf
    when that value is beyond the last bound). Each bucket gets `count` times the CDF's rise
    over it.

    What it costs: read back, the given quantiles come out as given, up to interpolation inside
    their buckets. Between them, a right-skewed latency distribution (log-normal and alike) is
    spread somewhat too far right: its CDF is concave there and the chord lies under it. Above
    the highest level the tail is cut at the next bound, so p99.9 and beyond are lower bounds
    of the truth. Measured on log-normal latencies from p50/p90/p95/p99 (`python -m
    tests.test_traffic_cloudwatch`): one minute 0..+9% at p50, p90 and p95, within 4% at p99,
    p99.9 14-44% low; 10 minutes of different shapes merged p90 +7..+17%, p95 +5..+11%, p99
    -2..+10%, p99.9 3-22% low. Without the p90 knot, p90 and p95 came out up to 41% high.

    Values out of order (from a tiny sample) are made monotone; a level outside (0, 1), or a
    negative or non-finite value or count, raises ValueError.
    """
    if not math.isfinite(count) or count < 0:
        raise ValueError(f"a request count must be finite and >= 0: {count}")
    knots = [(0.0, 0.0)]
    for level, value in sorted(quantiles.items()):
        if not 0 < level < 1:
            raise ValueError(f"a quantile level must lie in (0, 1): {level}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a latency must be finite and >= 0: {value}")
        knots.append((max(value, knots[-1][0]), level))
    out = Histogram(tuple(bounds))
    if count == 0 or len(knots) == 1:
        return out
    above = bisect_right(out.bounds, knots[-1][0])
    if above < len(out.bounds):
        knots.append((out.bounds[above], 1.0))

    def cdf(x: float) -> float:
        for (x0, y0), (x1, y1) in pairwise(knots):
            if x < x1:  # x0 <= x here: the earlier segments ended at or before x
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        return knots[-1][1]

    below = 0.0
    for i, bound in enumerate(out.bounds):
        level = cdf(bound)
        out.counts[i] = count * (level - below)
        below = level
    out.counts[-1] = count * (1.0 - below)
    return out


def period_tally(values: Mapping[str, float]) -> Tally | None:
    """One minute of an ALB's metrics (query id -> value; absent = not reported) as a Tally.

    None when the minute holds no request. See the module's docstring for the counting rules.
    """
    responses = {cls: values.get(f"target_{cls}", 0.0) for cls in CODE_CLASSES}
    elb_5xx = values.get("elb_5xx", 0.0)
    responses["5xx"] += elb_5xx
    answered = math.fsum(responses.values())
    requests = max(values.get("requests", 0.0), answered)
    if requests <= 0:
        return None
    latency = None
    quantiles = {q: values[f"latency_p{p}"] for p, q in PERCENTILES if f"latency_p{p}" in values}
    if quantiles:
        samples = values.get("latency_n")
        if samples is None:  # SampleCount missing: every target answer had a response time
            samples = math.fsum(values.get(f"target_{c}", 0.0) for c in CODE_CLASSES)
        if samples > 0:
            latency = latency_histogram(quantiles, samples)
    return Tally(requests=requests, responses=responses, router_errors=elb_5xx, latency=latency)


def classify(exc: BaseException, secrets: Sequence[str] = ()) -> SourceError:
    """Any exception of a GetMetricData call -> a SourceError whose detail holds no secret."""
    if isinstance(exc, SourceError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in _THROTTLING_CODES or status == 429:
            reason = "throttling"
        elif code in _REFUSED_CODES or status in (401, 403):
            reason = "refused"
        elif status >= 500:
            reason = "unreachable"
        else:
            reason = "other"
        return SourceError(reason, _scrub(f"{code}: {message}" if message else code, secrets))
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        # without credentials every call is refused: the fix is the same as for a denial
        return SourceError("refused", _scrub(str(exc), secrets))
    if isinstance(exc, NoRegionError):
        return SourceError("other", "no region: set the source's region, or AWS_REGION")
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError | TimeoutError):
        return SourceError("timeout", _scrub(str(exc) or "timed out", secrets))
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return SourceError("unreachable", _scrub(str(exc), secrets))
    if isinstance(exc, ResponseParserError):
        return SourceError("bad_answer", "unreadable answer (" + type(exc).__name__ + ")")
    if isinstance(exc, BotoCoreError):
        return SourceError("other", _scrub(f"{type(exc).__name__}: {exc}", secrets))
    return SourceError("other", _scrub(f"{type(exc).__name__}: {exc}", secrets))


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """Keys, session tokens and signatures out of a text that an answer may have filled."""
    text = aws.scrub(text, secrets)
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 3] + "..."


def _queries(load_balancer: str, target_group: str | None) -> list[MetricDataQueryTypeDef]:
    out: list[MetricDataQueryTypeDef] = []
    for qid, (metric, stat, per_group) in _QUERIES.items():
        dims: list[DimensionTypeDef] = [{"Name": "LoadBalancer", "Value": load_balancer}]
        if per_group and target_group is not None:
            dims.append({"Name": "TargetGroup", "Value": target_group})
        metric_stat: MetricStatTypeDef = {
            "Metric": {"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": dims},
            "Period": PERIOD,
            "Stat": stat,
        }
        out.append({"Id": qid, "MetricStat": metric_stat, "ReturnData": True})
    return out


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _epoch(value: object) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def read_results(
    pages: Sequence[Mapping[str, Any]], start: float, end: float
) -> dict[float, dict[str, float]]:
    """GetMetricData answers (one per page) -> period start -> query id -> value.

    Datapoints outside [start, end) are skipped; anything malformed raises SourceError
    ("bad_answer"), a query the answer has no result for included: a partial answer must not
    pass for a quiet minute.
    """
    periods: dict[float, dict[str, float]] = {}
    seen: set[str] = set()
    for number, page in enumerate(pages, 1):
        results = page.get("MetricDataResults")
        if not isinstance(results, list):
            raise SourceError("bad_answer", "the answer has no MetricDataResults")
        for result in results:
            if not isinstance(result, Mapping):
                raise SourceError("bad_answer", "a MetricDataResults entry is not an object")
            qid = result.get("Id")
            if qid not in _QUERIES:
                continue  # not ours: nothing to count
            status = result.get("StatusCode", "Complete")
            if status == "Forbidden":
                raise SourceError("refused", f"CloudWatch answered Forbidden for {qid}")
            if status == "PartialData" and number == len(pages):
                # more data, and no NextToken to get it with
                raise SourceError("bad_answer", f"partial answer: {qid} has PartialData")
            if status not in ("Complete", "PartialData"):
                raise SourceError("bad_answer", f"CloudWatch answered {str(status)[:40]} for {qid}")
            seen.add(qid)
            stamps, values = result.get("Timestamps", []), result.get("Values", [])
            if not isinstance(stamps, list) or not isinstance(values, list):
                raise SourceError("bad_answer", f"{qid}: Timestamps and Values must be lists")
            if len(stamps) != len(values):
                raise SourceError(
                    "bad_answer", f"{qid}: {len(stamps)} timestamps for {len(values)} values"
                )
            for stamp, raw in zip(stamps, values, strict=True):
                when, value = _epoch(stamp), _number(raw)
                if when is None or not math.isfinite(when):
                    raise SourceError("bad_answer", f"{qid}: a timestamp is not a time")
                if value is None:
                    raise SourceError("bad_answer", f"{qid}: a value is not a count >= 0")
                period = math.floor(when / PERIOD) * PERIOD
                if start <= period < end:
                    periods.setdefault(period, {})[qid] = value
    missing = [q for q in _QUERIES if q not in seen]
    if missing:
        raise SourceError("bad_answer", f"partial answer: no result for {', '.join(missing)}")
    return periods


def make_client(
    region: str | None, endpoint_url: str | None, timeout: float, max_attempts: int
) -> tuple[CloudWatchClient, Any]:
    """A CloudWatch client and its session's credentials (see `exporter.aws.make_client`)."""
    client, credentials = aws.make_client(
        "cloudwatch",
        region=region,
        endpoint_url=endpoint_url,
        timeout=timeout,
        max_attempts=max_attempts,
    )
    return cast("CloudWatchClient", client), credentials


class CloudWatchAlbSource(PollingSource):
    """One ALB's minutes from CloudWatch, reported for route group `all` (CloudWatch cannot
    tell paths apart). boto3 runs in the source's own two threads: a hung call must not hold
    the loop's default executor, nor the next poll."""

    kind = "cloudwatch_alb"

    def __init__(
        self,
        name: str,
        platform: str,
        timeline: Timeline,
        routes: Routes,
        *,
        load_balancer: str,
        target_group: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        interval: float = 60.0,
        timeout: float = 10.0,
        max_attempts: int = 3,
        settle: float = SETTLE,
        backfill: int = BACKFILL,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        if timeout <= 0 or max_attempts < 1 or settle < 0 or backfill < 1:
            raise ValueError("timeout must be positive, max_attempts and backfill at least 1")
        super().__init__(name, platform, interval, timeline, routes, clock=clock, logger=logger)
        self.load_balancer = load_balancer
        self.target_group = target_group
        self.region = region
        self.endpoint_url = endpoint_url
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.settle = settle
        self.backfill = backfill
        # the timeline refuses reports that ended more than `keep` ago, and the newest period
        # asked for ended up to `settle` + one period ago: after a long outage, only the
        # periods it still takes are asked for
        self.max_periods = max(1, min(MAX_PERIODS, int((timeline.keep - settle) // PERIOD)))
        self.reported_until: float | None = None  # end of the last period reported
        self.api_calls = 0  # GetMetricData operations, botocore's retries not counted
        self._queries = _queries(load_balancer, target_group)
        self._lock = threading.Lock()  # for api_calls
        self._calls = aws.AwsCalls(
            lambda: make_client(region, endpoint_url, timeout, max_attempts),
            name=f"cloudwatch-{name}",
        )

    def span(self, now: float) -> tuple[float, float]:
        """The periods to ask for at `now`: [start, end), every complete one not yet reported."""
        end = float(math.floor((now - self.settle) / PERIOD) * PERIOD)  # ended `settle` ago or more
        first = end - self.backfill * PERIOD if self.reported_until is None else self.reported_until
        return max(first, end - self.max_periods * PERIOD), end

    async def poll(self, now: float) -> Poll:
        if self._calls.closed:
            raise SourceError("other", "source is closed")
        start, end = self.span(now)
        if start >= end:  # no period completed since the last poll: nothing to ask
            return Poll([], covered_until=self.reported_until or end)
        deadline = time.monotonic() + self.timeout
        try:
            periods = await self._calls.run(self._fetch, start, end, deadline, within=self.timeout)
        except aws.CallsClosed:
            raise SourceError("other", "source is closed") from None
        except aws.CallTimedOut as exc:
            raise SourceError("timeout", str(exc)) from None
        reports = []
        for period in sorted(periods):
            tally = period_tally(periods[period])
            if tally is not None:
                reports.append(
                    Report(self.name, self.platform, ALL, period, period + PERIOD, tally)
                )
        self.reported_until = end
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug(
                "traffic source %s: %d minute(s) with requests in [%d, %d)",
                self.name,
                len(reports),
                start,
                end,
            )
        return Poll(reports, covered_until=end)

    def _get_client(self) -> CloudWatchClient:
        try:
            return cast("CloudWatchClient", self._calls.client())
        except aws.CallsClosed:
            raise SourceError("other", "source is closed") from None

    def _fetch(self, start: float, end: float, deadline: float) -> dict[float, dict[str, float]]:
        """GetMetricData for [start, end), every page; blocking, in a worker thread."""
        try:
            client = self._get_client()
            params: dict[str, Any] = {
                "MetricDataQueries": self._queries,
                "StartTime": int(start),
                "EndTime": int(end),
                "ScanBy": "TimestampAscending",
            }
            pages: list[Mapping[str, Any]] = []
            while True:
                if time.monotonic() > deadline:
                    raise SourceError("timeout", f"unfinished after {len(pages)} page(s)")
                with self._lock:
                    self.api_calls += 1
                try:
                    page = client.get_metric_data(**cast("GetMetricDataInputTypeDef", params))
                except (ValueError, TypeError) as exc:
                    # botocore makes Python objects of the answer before we see it: a
                    # timestamp it cannot read surfaces here
                    raise SourceError(
                        "bad_answer", f"unreadable answer ({type(exc).__name__})"
                    ) from exc
                pages.append(cast("Mapping[str, Any]", page))
                token = page.get("NextToken")
                if not token:
                    break
                if len(pages) >= MAX_PAGES:
                    raise SourceError("bad_answer", f"still more pages after {MAX_PAGES}")
                params["NextToken"] = token
            return read_results(pages, start, end)
        except SourceError:
            raise
        except (ClientError, BotoCoreError, TimeoutError) as exc:
            raise classify(exc, self._calls.secrets()) from None

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Release threads and connections; a call still running in a thread finishes alone."""
        self._calls.close()


def build(
    name: str, source_cfg: CloudWatchAlb, platform: str, timeline: Timeline, routes: Routes
) -> CloudWatchAlbSource:
    """The source a `cloudwatch_alb` entry of the traffic section describes."""
    return CloudWatchAlbSource(
        name,
        platform,
        timeline,
        routes,
        load_balancer=source_cfg.load_balancer,
        target_group=source_cfg.target_group,
        region=source_cfg.region,
        endpoint_url=str(source_cfg.endpoint_url) if source_cfg.endpoint_url else None,
        interval=source_cfg.interval,
        timeout=source_cfg.timeout,
    )
