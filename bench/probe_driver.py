"""bench/probe's measuring side: blackbox_exporter's /probe driver and the /metrics readers.

The driver is a lean keep-alive HTTP/1.1 client on asyncio streams, so that it takes as little
of the machine's two cores from blackbox_exporter as it can: it issues
`/probe?target=...&module=http_2xx` at a fixed rate, spread evenly, and keeps what each answer
reports (probe_success, probe_duration_seconds).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

# -- blackbox_exporter driver -----------------------------------------------------------------

_DURATION = re.compile(rb"\nprobe_duration_seconds (\S+)")
_SUCCESS = re.compile(rb"\nprobe_success (\S+)")


@dataclass
class DriveResult:
    sent: int = 0
    answered: int = 0
    failed: int = 0  # probe_success 0, or no usable answer
    durations: list[float] = field(default_factory=list)  # probe_duration_seconds, successes
    late: list[float] = field(default_factory=list)  # how late the driver sent each request
    window_started: float = 0.0  # loop time when measuring began (after warm-up)
    window_answered: int = 0  # answers to requests sent inside the measuring window
    window_seconds: float = 0.0


_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")
_CHUNKED = re.compile(rb"(?i)\r\ntransfer-encoding:\s*chunked")


async def _read_body(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = _LENGTH.search(head)
    if length is not None:
        return await reader.readexactly(int(length.group(1)))
    if _CHUNKED.search(head) is None:
        raise ValueError("neither Content-Length nor chunked")
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if not size:
            await reader.readuntil(b"\r\n")  # blackbox_exporter sends no trailers
            return b"".join(parts)
        chunk = await reader.readexactly(size + 2)
        parts.append(chunk[:-2])


class _Pool:
    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle:
            return self.idle.pop()
        self.opened += 1
        return await asyncio.open_connection("127.0.0.1", self.port)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def drive_blackbox(
    port: int,
    target_urls: Sequence[str],
    rate: float,
    warmup: float,
    seconds: float,
    on_window: asyncio.Event | None = None,
    window_done: asyncio.Event | None = None,
) -> DriveResult:
    """Probe target_urls in turn through blackbox_exporter at `rate` per second: warm-up, then
    measure.

    `on_window` is set when the measuring window opens and `window_done` when it closes, so
    that the caller can read /proc at those moments.
    """
    requests = [
        (
            f"GET /probe?target={quote(url, safe='')}&module=http_2xx HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUser-Agent: cutover-bench\r\n\r\n"
        ).encode()
        for url in target_urls
    ]
    pool = _Pool(port)
    result = DriveResult()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time() + 0.05
    window_start = start + warmup
    window_end = window_start + seconds
    result.window_started = window_start
    result.window_seconds = seconds

    async def one(request: bytes, at: float, in_window: bool) -> None:
        result.sent += 1
        result.late.append(loop.time() - at)
        conn = None
        try:
            conn = await pool.get()
            reader, writer = conn
            writer.write(request)
            body = b"\n" + await _read_body(reader)
            pool.idle.append(conn)
            conn = None
        except (OSError, asyncio.IncompleteReadError, AttributeError, ValueError):
            result.failed += 1
            if conn is not None:
                conn[1].close()
            return
        result.answered += 1
        if in_window:
            result.window_answered += 1
        ok = _SUCCESS.search(body)
        duration = _DURATION.search(body)
        if ok is None or duration is None or float(ok.group(1)) != 1.0:
            result.failed += 1
            return
        if in_window:
            result.durations.append(float(duration.group(1)))

    i = 0
    opened = False
    while True:
        now = loop.time()
        if not opened and now >= window_start:
            opened = True
            if on_window is not None:
                on_window.set()
        if now >= window_end:
            break
        due = start + i / rate
        while due <= now:
            request = requests[i % len(requests)]
            task = asyncio.create_task(one(request, due, window_start <= due < window_end))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            due = start + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
    if window_done is not None:
        window_done.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    pool.close()
    return result


# -- cutover's /metrics --------------------------------------------------------------------------

_LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _labels(text: str) -> dict[str, str]:
    return dict(_LABELS.findall(text))


@dataclass
class Scrape:
    """What bench/probe reads from one /metrics answer."""

    size: int
    probes_total: float
    failures_total: float
    last_durations: dict[tuple[str, str], float]  # (check, platform) -> last probe's duration
    last_success: dict[tuple[str, str], bool]
    lag_buckets: list[tuple[float, float]]  # (le, cumulative count)
    lag_sum: float
    lag_count: float
    window_samples: float


def parse_metrics(body: bytes) -> Scrape:
    probes = failures = lag_sum = lag_count = samples = 0.0
    phases: dict[tuple[str, str], float] = defaultdict(float)
    success: dict[tuple[str, str], bool] = {}
    lag: list[tuple[float, float]] = []
    for line in body.decode().splitlines():
        if not line.startswith("cutover_"):
            continue
        name, _, rest = line.partition("{")
        if not rest:
            name, _, value = line.partition(" ")
            if name == "cutover_event_loop_lag_seconds_sum":
                lag_sum = float(value)
            elif name == "cutover_event_loop_lag_seconds_count":
                lag_count = float(value)
            continue
        labels, _, value = rest.rpartition("} ")
        if name == "cutover_probes_total":
            probes += float(value)
        elif name == "cutover_probe_failures_total":
            failures += float(value)
        elif name == "cutover_probe_phase_seconds":
            lv = _labels(labels)
            phases[(lv["check"], lv["platform"])] += float(value)
        elif name == "cutover_probe_success":
            lv = _labels(labels)
            success[(lv["check"], lv["platform"])] = float(value) == 1.0
        elif name == "cutover_event_loop_lag_seconds_bucket":
            le = _labels(labels)["le"]
            lag.append((math.inf if le == "+Inf" else float(le), float(value)))
        elif name == "cutover_window_samples":
            samples += float(value)
    return Scrape(
        size=len(body),
        probes_total=probes,
        failures_total=failures,
        last_durations=dict(phases),
        last_success=success,
        lag_buckets=lag,
        lag_sum=lag_sum,
        lag_count=lag_count,
        window_samples=samples,
    )


@dataclass(frozen=True)
class Lag:
    """Event-loop lag observed between two scrapes (cutover_event_loop_lag_seconds)."""

    count: float
    mean: float
    p50: float  # upper bucket bounds: "at most"
    p90: float
    p99: float
    max: float

    @staticmethod
    def between(a: Scrape, b: Scrape) -> Lag:
        diff = [
            (le, cb - ca) for (le, ca), (_, cb) in zip(a.lag_buckets, b.lag_buckets, strict=True)
        ]
        count = b.lag_count - a.lag_count
        mean = (b.lag_sum - a.lag_sum) / count if count else math.nan

        def q(p: float) -> float:
            if not count:
                return math.nan
            for le, c in diff:
                if c >= p * count - 1e-9:
                    return le
            return math.inf

        top = max((le for le, c in _noncumulative(diff) if c > 0), default=math.nan)
        return Lag(count, mean, q(0.5), q(0.9), q(0.99), top)


def _noncumulative(buckets: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    out, prev = [], 0.0
    for le, c in buckets:
        out.append((le, c - prev))
        prev = c
    return out


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
