"""Real traffic from Prometheus: two instant queries every interval, as reports per route group.

Every `interval` the source asks Prometheus' HTTP API (`GET /api/v1/query`) for two vectors, both
`increase()` over the query range: requests by status class, and the latency histogram's bucket
counts by `le`; optionally by a route label whose values go through the route groups, so that
only configured group names (and `other`) ever become labels. Presets write the queries for
ingress-nginx and for the usual `http_requests_total` / `http_request_duration_seconds` pair;
`custom` takes both queries from the config.

Counts are floats (Prometheus extrapolates). With a range longer than the interval (it must hold
at least two scrapes, or increase() finds nothing), the increase over the range is scaled down
to the span the report covers: the average rate over the range, times the span. After failed
polls the next one catches up on the gap (up to CATCH_UP_INTERVALS intervals).

Answers are read with a size cap and decoded one series at a time, yielding to the event loop
every 1 ms: `json.loads` holds the GIL for the whole document (30-50 ms for the 1 MB of 10 000
series on this project's machine), so a thread would not free the loop; this does. The two
answers are fetched together and decoded one after the other, so that a turn of the loop runs
one slice, not two (bench/prometheus_parse.py measures the longest stall).

Failures become `SourceError`s whose detail never carries the configured header values:
    unreachable  no connection (refused, DNS, reset), or the connection broke mid-answer
    timeout      no whole answer within `timeout`
    refused      HTTP 4xx/5xx, or `status: error` (detail: Prometheus' errorType and error)
    bad_answer   not UTF-8, not JSON, not a vector, over MAX_BODY or MAX_SERIES
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from exporter.config import PrometheusTraffic, format_duration
from exporter.errors import SourceError
from exporter.traffic.counts import ALL, CODE_CLASSES, Histogram, Report, Tally
from exporter.traffic.routes import Routes
from exporter.traffic.sources import Poll, PollingSource
from exporter.traffic.timeline import Timeline

__all__ = [
    "MAX_BODY",
    "MAX_SERIES",
    "PrometheusSource",
    "build",
    "decode_vector",
    "duration_text",
    "queries",
]

MAX_BODY = 8 * 1024 * 1024  # bytes of one answer, after decompression
MAX_SERIES = 20_000  # series in one answer: ~2 MB, some 0.15 s of CPU per poll at most
MAX_ERROR_BODY = 64 * 1024  # what is read of a 4xx/5xx answer to find its error text
MAX_ENVELOPE = 1024 * 1024  # the answer outside its result array (status, warnings)
# the event loop gets a turn after SLICE_SECONDS of decoding (checked every 16 series), and
# after YIELD_EVERY series at the latest
SLICE_SECONDS = 0.001
YIELD_EVERY = 256
CATCH_UP_INTERVALS = 10  # after failed polls, the next one covers the gap up to this many
MAX_DETAIL = 300  # characters of an error text kept in the status
_CHUNK = 64 * 1024
_MIN_SECRET = 6  # header values (and their words) this long are scrubbed from error texts

# the key of the result array: JSON escapes every quote inside a string, so this pattern (quote,
# result, quote, colon, bracket) can only be a key, never part of a label value
_RESULT_RE = re.compile(r'"result"\s*:\s*\[')
_RESULT_TYPE_RE = re.compile(r'"resultType"\s*:\s*"([^"\\]*)"')
_WS_RE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()

Add = Callable[[Mapping[str, Any], float], None]


def duration_text(seconds: float) -> str:
    """A PromQL duration: whole seconds as `60s`, anything finer in milliseconds (`1500ms`)."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _by(labels: tuple[str, ...], route_label: str | None) -> str:
    return ", ".join((*labels, route_label) if route_label else labels)


def _to_class(expr: str, source_labels: tuple[str, ...]) -> str:
    # "200" -> "2xx"; a series without the label keeps what an earlier replace gave it
    for label in source_labels:
        expr = f'label_replace({expr}, "code_class", "${{1}}xx", "{label}", "([0-9]).*")'
    return expr


def _preset(
    requests_metric: str,
    status_labels: tuple[str, ...],
    buckets_metric: str,
    selector: str,
    route_label: str | None,
) -> tuple[str, str]:
    matchers = f"{{{selector}}}" if selector else ""
    # sum by status first: label_replace then runs on a few series, not on every pod's
    by_status = _by(status_labels, route_label)
    inner = f"sum by ({by_status}) (increase({requests_metric}{matchers}[$interval]))"
    requests = f"sum by ({_by(('code_class',), route_label)}) ({_to_class(inner, status_labels)})"
    latency = (
        f"sum by ({_by(('le',), route_label)}) (increase({buckets_metric}{matchers}[$interval]))"
    )
    return requests, latency


def queries(cfg: PrometheusTraffic, route_label: str | None) -> tuple[str, str]:
    """(requests by code_class, latency buckets by le), with `$interval` for the range."""
    if cfg.preset == "ingress-nginx":
        return _preset(
            "nginx_ingress_controller_requests",
            ("status",),
            "nginx_ingress_controller_request_duration_seconds_bucket",
            cfg.selector,
            route_label,
        )
    if cfg.preset == "http-requests":
        return _preset(
            "http_requests_total",
            ("code", "status"),
            "http_request_duration_seconds_bucket",
            cfg.selector,
            route_label,
        )
    assert cfg.requests_query is not None and cfg.latency_buckets_query is not None
    return cfg.requests_query, cfg.latency_buckets_query


async def _both(first: Awaitable[str], second: Awaitable[str]) -> tuple[str, str]:
    """Two queries at once; the first failure (both may fail alike: Prometheus down) is raised.

    Not a TaskGroup: in Python 3.11 a TaskGroup whose child fails just as its parent task is
    cancelled swallows that cancellation, and the poller would never stop.
    """
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        await asyncio.wait(tasks)
    finally:
        for task in tasks:
            task.cancel()
        # retrieve every outcome (no "exception was never retrieved"), cancellation included
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        error = task.exception()
        if error is not None:
            raise error
    return tasks[0].result(), tasks[1].result()


def _with_range(query: str, window: str) -> str:
    # $__interval first: it is Grafana's spelling, and contains no "$interval" of its own
    return query.replace("$__interval", window).replace("$interval", window)


def _bad(detail: str) -> SourceError:
    return SourceError("bad_answer", detail)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


async def decode_vector(text: str, add: Add, *, max_series: int = MAX_SERIES) -> int:
    """Feed each series of an instant-query answer to `add(labels, value)`; the series count.

    The result array is decoded one series at a time, with a yield to the event loop after
    SLICE_SECONDS (or YIELD_EVERY series); the rest of the answer (status, resultType) is
    checked after it. Raises
    SourceError: `refused` for `status: error`, `bad_answer` for anything not a vector.
    """
    match = _RESULT_RE.search(text)
    if match is None:
        if len(text) > MAX_ENVELOPE:
            raise _bad("not a Prometheus query answer")
        _envelope(_json(text))
        raise _bad("the answer has no result array")
    kind = _RESULT_TYPE_RE.search(text)
    if kind is not None and kind.group(1) != "vector":
        raise _bad(_not_vector(kind.group(1)))
    end = len(text)
    pos = _WS_RE.match(text, match.end()).end()  # type: ignore[union-attr]
    count = 0
    since = 0  # series since the last yield
    slice_end = time.perf_counter() + SLICE_SECONDS
    if pos < end and text[pos] == "]":
        close = pos
    else:
        while True:
            try:
                item, pos = _DECODER.raw_decode(text, pos)
            except json.JSONDecodeError:
                raise _bad("the answer is not JSON") from None
            count += 1
            if count > max_series:
                raise _bad(
                    f"more than {max_series} series: narrow the selector, or use a route label "
                    "with fewer values"
                )
            _sample(item, add)
            since += 1
            if since >= YIELD_EVERY or (since % 16 == 0 and time.perf_counter() > slice_end):
                await asyncio.sleep(0)
                since = 0
                slice_end = time.perf_counter() + SLICE_SECONDS
            pos = _WS_RE.match(text, pos).end()  # type: ignore[union-attr]
            if pos < end and text[pos] == ",":
                pos = _WS_RE.match(text, pos + 1).end()  # type: ignore[union-attr]
                continue
            if pos < end and text[pos] == "]":
                close = pos
                break
            raise _bad("the answer is not JSON")
    # the answer without its result array: null in its place shows that it was data.result
    rest = text[: match.end() - 1] + "null" + text[close + 1 :]
    if len(rest) > MAX_ENVELOPE:
        raise _bad("not a Prometheus query answer")
    data = _envelope(_json(rest))
    if data.get("result", []) is not None:
        raise _bad("not a Prometheus query answer")
    return count


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise _bad("the answer is not JSON") from None


def _not_vector(kind: str) -> str:
    return f"resultType {kind!r}, not a vector (the query must be an instant vector: increase(...))"


def _envelope(doc: Any) -> dict[str, Any]:
    """The `data` of a successful answer; refused for `status: error`, bad_answer otherwise."""
    if not isinstance(doc, dict):
        raise _bad("not a Prometheus query answer")
    status = doc.get("status")
    if status == "error":
        raise SourceError("refused", _short(_api_error(doc)))
    if status != "success":
        raise _bad(f"status {_short(str(status))!r}, not success")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise _bad("the answer has no data")
    kind = data.get("resultType")
    if kind != "vector":
        raise _bad(_not_vector(_short(str(kind))))
    return data


def _api_error(doc: Mapping[str, Any]) -> str:
    return f"{doc.get('errorType') or 'error'}: {doc.get('error') or '(no error text)'}"


def _sample(item: Any, add: Add) -> None:
    if not isinstance(item, dict):
        raise _bad("a result that is not a series")
    metric, value = item.get("metric"), item.get("value")
    if not isinstance(metric, dict) or not isinstance(value, list) or len(value) != 2:
        raise _bad("a series without metric and value")
    raw = value[1]
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise _bad("a series whose value is not a number")
    try:
        number = float(raw)
    except ValueError:
        raise _bad("a series whose value is not a number") from None
    add(metric, number)


def _code_class(metric: Mapping[str, Any]) -> str | None:
    given = metric.get("code_class")
    if given is not None:
        return given if given in CODE_CLASSES else None
    for key in ("status", "code"):
        raw = metric.get(key)
        if isinstance(raw, str) and raw[:1].isdigit():
            cls = f"{raw[0]}xx"
            return cls if cls in CODE_CLASSES else None
    return None


class _Counts:
    """The series of one poll, summed per route group: requests by class, buckets by le."""

    def __init__(self, group: Callable[[Mapping[str, Any]], str]) -> None:
        self.group = group
        self.responses: dict[str, dict[str, float]] = {}  # route -> class -> count
        self.buckets: dict[str, dict[float, float]] = {}  # route -> le -> cumulative count
        self.skipped: dict[str, int] = {}

    def _skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def add_requests(self, metric: Mapping[str, Any], value: float) -> None:
        if not math.isfinite(value) or value < 0:
            self._skip("bad_value")
            return
        cls = _code_class(metric)
        if cls is None:
            self._skip("no_class")
            return
        by_class = self.responses.setdefault(self.group(metric), {})
        by_class[cls] = by_class.get(cls, 0.0) + value

    def add_bucket(self, metric: Mapping[str, Any], value: float) -> None:
        if not math.isfinite(value) or value < 0:
            self._skip("bad_value")
            return
        try:
            le = float(metric.get("le", ""))
        except (TypeError, ValueError):
            le = math.nan
        if math.isnan(le):
            self._skip("no_le")
            return
        by_le = self.buckets.setdefault(self.group(metric), {})
        by_le[le] = by_le.get(le, 0.0) + value


class PrometheusSource(PollingSource):
    """One `prometheus` traffic source; `run` is its task, and closes its session when cancelled.

    `skipped` counts series left out since the start, by why: `bad_value` (NaN, infinite or
    negative), `no_class` (no 2xx-5xx class, e.g. 1xx or no status label), `no_le`.
    """

    kind = "prometheus"

    def __init__(
        self,
        name: str,
        platform: str,
        cfg: PrometheusTraffic,
        timeline: Timeline,
        routes: Routes,
        *,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(name, platform, cfg.interval, timeline, routes, clock=clock, logger=logger)
        self.cfg = cfg
        self.url = cfg.url + "/api/v1/query"
        self.range = cfg.query_range
        # without route groups every label value would land in `all`: do not ask for them
        self.route_label = cfg.route_label if routes else None
        self.requests_query, self.latency_query = queries(cfg, self.route_label)
        self.skipped: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None
        self._last: float | None = None  # the time of the last successful poll
        self._bounds: tuple[float, ...] | None = None  # the latency buckets last seen
        self._empty: tuple[str, ...] = ()  # the queries that found no series last time
        self._skipping = False
        words = [w for v in cfg.headers.values() for w in (v, *v.split())]
        self._secrets = sorted({w for w in words if len(w) >= _MIN_SECRET}, key=len, reverse=True)

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            await self.close()

    async def aclose(self) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _span(self, now: float) -> float:
        """The seconds this poll reports: since the last success (a gap is caught up), capped."""
        last = self._last
        if last is None or now <= last:
            return self.interval
        return min(now - last, CATCH_UP_INTERVALS * self.interval)

    async def poll(self, now: float) -> Poll:
        span = self._span(now)
        window = duration_text(max(self.range, span))
        seconds = max(1, round(max(self.range, span) * 1000)) / 1000
        counts = _Counts(self._grouper())
        try:
            requests, latency = await _both(
                self._fetch(_with_range(self.requests_query, window), now),
                self._fetch(_with_range(self.latency_query, window), now),
            )
            # one after the other: two decodes at once would both run in each turn of the loop
            found = (
                await decode_vector(requests, counts.add_requests),
                await decode_vector(latency, counts.add_bucket),
            )
        except SourceError as exc:
            # an error text may quote what a proxy saw, headers included
            raise SourceError(exc.reason, self._scrub(exc.detail)) from None
        self._note(counts, found, window)
        reports = self._reports(counts, now, span, span / seconds)
        self._last = now
        return Poll(reports, covered_until=now)

    def _grouper(self) -> Callable[[Mapping[str, Any]], str]:
        label = self.route_label
        if label is None:
            return lambda _metric: ALL
        groups: dict[str, str] = {}  # label value -> group, for this poll
        group_of = self.routes.group

        def group(metric: Mapping[str, Any]) -> str:
            value = metric.get(label)
            key = value if isinstance(value, str) else ""
            found = groups.get(key)
            if found is None:
                found = groups[key] = group_of(key)
            return found

        return group

    def _reports(self, counts: _Counts, now: float, span: float, factor: float) -> list[Report]:
        reports: list[Report] = []
        names = self.routes.names if self.route_label else (ALL,)
        for route in names:
            responses = dict.fromkeys(CODE_CLASSES, 0.0)
            responses.update(counts.responses.get(route, {}))
            latency: Histogram | None = None
            buckets = counts.buckets.get(route)
            if buckets:
                latency = Histogram.from_cumulative(buckets.items())
                self._bounds = latency.bounds
            elif self._bounds is not None:
                latency = Histogram(self._bounds)  # no requests: zero in the known layout
            tally = Tally(
                requests=math.fsum(responses.values()), responses=responses, latency=latency
            )
            if factor != 1.0:
                tally = tally.scaled(factor)
            reports.append(Report(self.name, self.platform, route, now - span, now, tally))
        return reports

    def _note(self, counts: _Counts, found: tuple[int, int], window: str) -> None:
        """Log what deserves a look once when it starts, not at every poll."""
        for why, n in counts.skipped.items():
            self.skipped[why] = self.skipped.get(why, 0) + n
        if counts.skipped and not self._skipping:
            self.log.warning(
                "traffic source %s: series left out (%s)",
                self.name,
                ", ".join(f"{why}: {n}" for why, n in sorted(counts.skipped.items())),
            )
        self._skipping = bool(counts.skipped)
        # zero requests are zero-valued series; no series at all is worth a look
        empty = tuple(q for q, n in zip(("requests", "latency"), found, strict=True) if n == 0)
        if empty and empty != self._empty:
            self.log.warning(
                "traffic source %s: the %s found no series (counted as none): no metric "
                "matches yet, or the range %s holds fewer than two scrapes",
                self.name,
                " and ".join(empty) + (" queries" if len(empty) > 1 else " query"),
                window,
            )
        self._empty = empty

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self.cfg.headers,
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
            )
        return self._session

    async def _fetch(self, query: str, now: float) -> str:
        params = {
            "query": query,
            "time": f"{now:.3f}",
            # Prometheus gives up a little earlier, so that its own word on a heavy query
            # arrives before the client's timeout
            "timeout": duration_text(self.cfg.timeout * 0.9),
        }
        try:
            async with self._client().get(self.url, params=params) as resp:
                if resp.status >= 400:
                    body = await _read(resp, MAX_ERROR_BODY, truncate=True)
                    raise SourceError("refused", _http_error(resp, body))
                return await _read(resp, MAX_BODY)
        except TimeoutError:
            raise SourceError(
                "timeout", f"no answer within {format_duration(self.cfg.timeout)}"
            ) from None
        except aiohttp.ClientPayloadError as exc:
            raise SourceError("unreachable", _short(f"answer cut: {exc}")) from None
        except aiohttp.ClientError as exc:
            raise SourceError("unreachable", _short(str(exc) or repr(exc))) from None

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text


async def _read(resp: aiohttp.ClientResponse, limit: int, *, truncate: bool = False) -> str:
    """The body as text, at most `limit` bytes: cut there (`truncate`), else bad_answer."""
    too_big = _bad(f"an answer over {limit // (1024 * 1024)} MiB: narrow the selector")
    if not truncate and resp.content_length is not None and resp.content_length > limit:
        raise too_big
    decoder = codecs.getincrementaldecoder("utf-8")("replace" if truncate else "strict")
    parts: list[str] = []
    size = 0
    try:
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                if not truncate:
                    raise too_big
                parts.append(decoder.decode(chunk[: len(chunk) - (size - limit)]))
                break
            parts.append(decoder.decode(chunk))  # as it arrives: no long decode at the end
        parts.append(decoder.decode(b"", final=True))
    except UnicodeDecodeError:
        raise _bad("the answer is not UTF-8") from None
    return "".join(parts)


def _http_error(resp: aiohttp.ClientResponse, body: str) -> str:
    head = f"HTTP {resp.status}"
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and (doc.get("error") or doc.get("errorType")):
        return _short(f"{head}: {_api_error(doc)}")
    if resp.content_type == "text/plain" and body.strip():
        return _short(f"{head}: {body.strip().splitlines()[0]}")
    return f"{head} {resp.reason or ''}".rstrip()


def build(
    name: str,
    source_cfg: PrometheusTraffic,
    platform: str,
    timeline: Timeline,
    routes: Routes,
    *,
    clock: Callable[[], float] = time.time,
    logger: logging.Logger | None = None,
) -> PrometheusSource:
    """The source of one `prometheus` entry of traffic.sources; run its `run()` as a task."""
    return PrometheusSource(
        name, platform, source_cfg, timeline, routes, clock=clock, logger=logger
    )
