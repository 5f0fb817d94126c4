"""A local stand-in for CloudWatch's GetMetricData, in the protocol this botocore speaks to it.

moto cannot be used for the ALB source: moto 5.2 serves GetMetricData for Sum, Average and
SampleCount of data put with PutMetricData, but crashes serialising percentile statistics
(`p50`, `p95`, `p99`), and the latency half of the source is made of nothing else. So this
stand-in serves values the test controls per metric, statistic and period.

The protocol: CloudWatch's model lists `smithy-rpc-v2-cbor`, `json` and `query`, and botocore
1.44 takes the first of its own preference order that the service offers: AWS JSON 1.0.
That is `POST /` with `X-Amz-Target: GraniteServiceVersion20100801.GetMetricData` and
`Content-Type: application/x-amz-json-1.0`, a JSON body (timestamps in epoch seconds), a JSON
answer. Errors are a 4xx/5xx with `{"__type": ..., "message": ...}`, and, CloudWatch being
"awsQueryCompatible", the old query error code in `x-amzn-query-error: Code;Sender`, which
botocore reports as the error code. A request in any other protocol gets a 400 saying so
(older botocore spoke `query`; a newer one may speak CBOR).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TARGET = "GraniteServiceVersion20100801.GetMetricData"
CONTENT_TYPE = "application/x-amz-json-1.0"
NAMESPACE = "AWS/ApplicationELB"
_ID = re.compile(r"^[a-z][a-zA-Z0-9_]*$")

# (namespace, metric name, dimensions as sorted (name, value) pairs, statistic)
Key = tuple[str, str, tuple[tuple[str, str], ...], str]


@dataclass
class Failure:
    """An error answer: HTTP status, the query error code botocore reports, the JSON __type."""

    status: int
    code: str
    type: str
    message: str
    # put the request's Authorization and X-Amz-Security-Token headers into the message, as a
    # careless proxy might: what the source shows of an error must still hold no secret
    echo_credentials: bool = False


THROTTLED = Failure(400, "Throttling", "ThrottlingException", "Rate exceeded")
DENIED = Failure(
    403,
    "AccessDenied",
    "AccessDeniedException",
    "User: arn:aws:iam::123456789012:user/ci is not authorized to perform: "
    "cloudwatch:GetMetricData because no identity-based policy allows the "
    "cloudwatch:GetMetricData action",
)
UNAVAILABLE = Failure(
    503, "ServiceUnavailable", "ServiceUnavailableException", "Service Unavailable"
)


@dataclass
class Raw:
    """An answer sent as is (garbage, partial answers)."""

    status: int
    body: bytes
    content_type: str = CONTENT_TYPE


@dataclass
class StandIn:
    """Datapoints per (namespace, metric, dimensions, statistic): period start -> value."""

    data: dict[Key, dict[int, float]] = field(default_factory=dict)
    page_size: int = 100_800  # datapoints per answer, as GetMetricData's own limit
    fail_next: list[Failure] = field(default_factory=list)
    fail_always: Failure | None = None
    raw_next: list[Raw] = field(default_factory=list)
    hang_next: int = 0  # requests that get no answer until release() or stop()
    requests: list[dict[str, Any]] = field(default_factory=list)  # {"headers", "body"}
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _released: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def put(self, metric: str, stat: str, start: int, value: float, **dims: str) -> None:
        key: Key = (NAMESPACE, metric, tuple(sorted(dims.items())), stat)
        with self._lock:
            self.data.setdefault(key, {})[start] = value

    def put_alb(
        self,
        start: int,
        load_balancer: str,
        *,
        target_group: str | None = None,
        requests: float | None = None,
        target: Mapping[str, float] | None = None,  # "2xx".."5xx" -> count
        elb_5xx: float | None = None,
        latency: Mapping[str, float] | None = None,  # "p50", "p99", "SampleCount"... -> value
    ) -> None:
        """One minute of an ALB's metrics, as CloudWatch holds them (absent = not reported)."""
        dims = {"LoadBalancer": load_balancer}
        if target_group is not None:
            dims["TargetGroup"] = target_group
        if requests is not None:
            self.put("RequestCount", "Sum", start, requests, **dims)
        for cls, n in (target or {}).items():
            self.put(f"HTTPCode_Target_{cls.upper()}_Count", "Sum", start, n, **dims)
        if elb_5xx is not None:
            # CloudWatch has the load balancer's own errors per load balancer only
            self.put("HTTPCode_ELB_5XX_Count", "Sum", start, elb_5xx, LoadBalancer=load_balancer)
        for stat, value in (latency or {}).items():
            self.put("TargetResponseTime", stat, start, value, **dims)

    def start(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, data, headers = standin.answer(dict(self.headers.items()), body)
                # The client may have given up waiting already (timeout tests).
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._released.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def release(self) -> None:
        """Let hanging requests be answered (and later ones not hang)."""
        with self._lock:
            self.hang_next = 0
        self._released.set()

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def answer(self, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes, dict[str, str]]:
        lower = {k.lower(): v for k, v in headers.items()}
        with self._lock:
            self.requests.append({"headers": lower, "body": body})
            hang = self.hang_next > 0
            if hang:
                self.hang_next -= 1
            failure = self.fail_next.pop(0) if self.fail_next else self.fail_always
            raw = None if failure is not None or not self.raw_next else self.raw_next.pop(0)
        if hang:
            self._released.wait(30)
        if failure is not None:
            message = failure.message
            if failure.echo_credentials:
                message = (
                    f"X-Amz-Security-Token: {lower.get('x-amz-security-token', '')}; "
                    f"Authorization: {lower.get('authorization', '')}; {message}"
                )
            return _error(failure.status, failure.code, failure.type, message)
        if raw is not None:
            return raw.status, raw.body, {"Content-Type": raw.content_type}
        if lower.get("x-amz-target") != TARGET or not lower.get("content-type", "").startswith(
            CONTENT_TYPE
        ):
            return _error(
                400,
                "UnknownOperationException",
                "UnknownOperationException",
                "this stand-in speaks AWS JSON 1.0 (X-Amz-Target "
                f"{TARGET}) only; got X-Amz-Target {lower.get('x-amz-target')!r}, "
                f"Content-Type {lower.get('content-type')!r}, smithy-protocol "
                f"{lower.get('smithy-protocol')!r}",
            )
        try:
            request = json.loads(body)
            return (
                200,
                json.dumps(self._get_metric_data(request)).encode(),
                {"Content-Type": CONTENT_TYPE},
            )
        except _Invalid as exc:
            return _error(400, "ValidationError", "InvalidParameterValueException", str(exc))

    def _get_metric_data(self, request: Mapping[str, Any]) -> dict[str, Any]:
        queries = request.get("MetricDataQueries")
        if not isinstance(queries, list) or not 1 <= len(queries) <= 500:
            raise _Invalid("MetricDataQueries must hold 1 to 500 queries")
        start, end = request.get("StartTime"), request.get("EndTime")
        if not isinstance(start, int | float) or not isinstance(end, int | float):
            raise _Invalid("StartTime and EndTime are required")
        if start >= end:
            raise _Invalid("The parameter StartTime must be less than the parameter EndTime.")
        descending = request.get("ScanBy", "TimestampDescending") == "TimestampDescending"
        flat: list[tuple[str, int, float]] = []
        ids: list[str] = []
        for query in queries:
            qid = query.get("Id", "")
            if not _ID.match(qid) or qid in ids:
                raise _Invalid(f"Id {qid!r} must be unique and start with a lower-case letter")
            ids.append(qid)
            stat = query.get("MetricStat") or {}
            metric = stat.get("Metric") or {}
            period = stat.get("Period")
            if not isinstance(period, int) or period < 60 or period % 60:
                raise _Invalid(f"{qid}: Period must be a multiple of 60")
            dims = tuple(sorted((d["Name"], d["Value"]) for d in metric.get("Dimensions", [])))
            key: Key = (
                metric.get("Namespace", ""),
                metric.get("MetricName", ""),
                dims,
                stat.get("Stat", ""),
            )
            with self._lock:
                points = dict(self.data.get(key, {}))
            times = sorted((t for t in points if start <= t < end), reverse=descending)
            flat.extend((qid, t, points[t]) for t in times)
        offset = int(request.get("NextToken") or 0)
        page = flat[offset : offset + self.page_size]
        more = offset + self.page_size < len(flat)
        results = []
        for qid in ids:
            mine = [(t, v) for i, t, v in page if i == qid]
            results.append(
                {
                    "Id": qid,
                    "Label": qid,
                    "Timestamps": [t for t, _ in mine],
                    "Values": [v for _, v in mine],
                    "StatusCode": "PartialData" if more else "Complete",
                }
            )
        answer: dict[str, Any] = {"MetricDataResults": results, "Messages": []}
        if more:
            answer["NextToken"] = str(offset + self.page_size)
        return answer


class _Invalid(ValueError):
    pass


def _error(status: int, code: str, type_: str, message: str) -> tuple[int, bytes, dict[str, str]]:
    body = json.dumps({"__type": f"com.amazonaws.cloudwatch#{type_}", "message": message})
    return (
        status,
        body.encode(),
        {
            "Content-Type": CONTENT_TYPE,
            "x-amzn-query-error": f"{code};Sender",
            "x-amzn-RequestId": "00000000-0000-0000-0000-000000000000",
        },
    )


def results(*entries: Mapping[str, Any], next_token: str | None = None) -> Raw:
    """A hand-made GetMetricData answer (for partial and garbage answers)."""
    answer: dict[str, Any] = {"MetricDataResults": list(entries), "Messages": []}
    if next_token is not None:
        answer["NextToken"] = next_token
    return Raw(200, json.dumps(answer, allow_nan=True).encode())


@contextmanager
def running(standin: StandIn) -> Iterator[StandIn]:
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
