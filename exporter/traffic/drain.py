"""Heroku log drains: logplex bodies -> router lines -> per-second reports in the timeline.

Logplex POSTs `application/logplex-1` bodies to POST /api/v1/drains/heroku: octet-counted
frames (`<length> <RFC 5424 line>`, the length counting the bytes after the space, a trailing
newline included or not). Only the router's lines (`heroku router`) are requests; everything
else is `ignored`. Each line read is counted by kind (`cutover_traffic_drain_lines_total`):

    router        a request the router passed to a dyno (at=info), with its status and latency
    router_error  a request the router failed itself (at=error code=H..): a 5xx users saw
    ignored       app output, runtime metrics, other heroku lines, hosts not in `hosts`
    unreadable    a router line that cannot be read (unbalanced quotes, bad numbers), or a
                  stretch of the body whose framing is wrong (an octet count that does not
                  land on the next frame, a truncated frame, garbage): one per stretch
    dropped       lines of POSTs the queue had no room for (Logplex-Msg-Count)

Lines are read with `bytes` methods bounded to the line (find, rfind, partition, startswith:
no copy of the line, no regular expression per line), the usual frame and router line inline
and anything unusual through helpers; a body of 8 MiB is ~50 000 lines, and Heroku drops data
for slow drains. Two fixed-shape patterns (linear in the body whatever it holds) only find
where to resume after a stretch that cannot be read.

The event loop: the handler checks only that the body holds a readable frame (the first few
bytes, for anything Logplex sends), answers, and queues the body; one worker task reads the
queue in slices of at most SLICE_SECONDS, giving the loop back in between. One worker, not a
task per POST: however many POSTs arrive together, the loop runs one slice of drain work per
turn, so probes in flight wait at most one slice. The queue holds at most QUEUE_BYTES; a POST
that does not fit is dropped and its lines counted as `dropped` (answered 204 all the same:
Logplex would only send it again into the same full queue, and a refusal costs it buffer
space that other drains need).

Reports: the lines of one POST add up per (route group, second of the line's own timestamp),
the timestamp clamped to [arrival - MAX_SKEW, arrival] so that a skewed or hostile clock
cannot move the window. The source's status is up while POSTs arrive (stale after
STALE_AFTER without one), `last_success` is the last accepted POST, `covered_until` its
arrival minus DELIVERY_MARGIN once its lines are in the timeline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import re
import time
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

import re2  # type: ignore[import-untyped]  # google-re2 ships no type hints
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.config import Config
from exporter.regex import _re2_options
from exporter.traffic.counts import (
    ALL,
    CODE_CLASSES,
    LATENCY_BOUNDS,
    OTHER,
    Histogram,
    Report,
    Tally,
)
from exporter.traffic.routes import MAX_PATH, Routes
from exporter.traffic.timeline import SourceStatus, Timeline

__all__ = [
    "CONTENT_TYPE",
    "KIND",
    "LINE_KINDS",
    "MAX_BODY",
    "Batch",
    "DrainSpec",
    "Drains",
    "LineReader",
    "RouteGroups",
    "Verdict",
    "drain_specs",
    "routes_of",
]

KIND = "heroku_drain"
CONTENT_TYPE = "application/logplex-1"
LINE_KINDS = ("router", "router_error", "ignored", "unreadable", "dropped")
POST_RESULTS = (
    "accepted",
    "duplicate",  # a retry (its Logplex-Frame-Id seen before): answered 204, counted once
    "dropped",  # no room in the queue: answered 204, its lines counted as dropped
    "unauthorized",  # 401: no basic-auth password, or not a drain's token
    "content_type",  # 415: not application/logplex-1
    "too_large",  # 413: over MAX_BODY
    "no_frame",  # 400: not one readable frame
    "bad_body",  # 400: the HTTP body itself is broken (chunked encoding)
    "late",  # 408: the body did not arrive in time
    "no_drain",  # 404: no drain configured
)
_REFUSALS = {
    "unauthorized": "no or wrong token",
    "content_type": "not logplex-1",
    "too_large": "over 8 MiB",
    "no_frame": "no readable frame",
    "bad_body": "broken HTTP body",
    "late": "body too slow",
    "no_drain": "no drain configured",
}
MAX_BODY = 8 * 1024 * 1024  # larger POSTs are answered 413, never buffered
# Logplex delivers within seconds of a line; everything up to this long before the last POST's
# arrival is taken as in (a slower delivery lands in its own second all the same, just later)
DELIVERY_MARGIN = 10.0
MAX_SKEW = 300.0  # line timestamps are clamped to [arrival - MAX_SKEW, arrival]
STALE_AFTER = 300.0  # without a POST for this long the drain is shown down
# the longest the worker holds the event loop at a time: a probe's every event (connected,
# sent, first byte, body) may wait one slice, so a quarter of a millisecond (bench/traffic)
SLICE_SECONDS = 0.00025
# four bodies of MAX_BODY: ~200 000 lines, a few seconds of reading (bench/traffic)
QUEUE_BYTES = 32 * 1024 * 1024
FRAME_IDS = 10_000  # Logplex-Frame-Ids remembered to drop retried POSTs...
FRAME_ID_SECONDS = 600.0  # ...for at most this long
REFRESH_SECONDS = 5.0  # how often an idle worker looks for drains gone quiet

_CHECK_EVERY = 4  # frames between two looks at the clock: ~0.06 ms of reading
_MAX_FRAME_DIGITS = 6  # a frame of at most 999 999 bytes (Logplex splits at 10 000)
_LATENCY_MS = tuple(round(b * 1000, 6) for b in LATENCY_BOUNDS)
_CACHE = 4096  # entries of the timestamp and route caches before they are cleared

# the start of something that looks like a frame: where reading resumes after a bad stretch
# (fixed shape: linear in the body whatever it holds)
_CANDIDATE = re.compile(rb"[0-9]{1,6} <")
_NEWLINES = re.compile(rb"[\r\n]+")
# what may follow a frame: a newline, the next frame (lines are not reliably
# newline-terminated), or the end; anything else means the octet count was wrong
_NEWLINE_BYTES = frozenset(b"\r\n")
_AGAIN = (-1, -1)  # _frame found no frame yet, and looked long enough to check the clock


class Verdict(Enum):
    """What became of a POST's body."""

    ACCEPTED = "accepted"  # queued for the worker
    DUPLICATE = "duplicate"  # a Logplex-Frame-Id seen before: a retry, counted once already
    NO_FRAME = "no_frame"  # not one readable frame in the body (answered 400)
    DROPPED = "dropped"  # the queue was full
    GONE = "gone"  # a reload took the drain's token away while the body arrived (answered 401)


@dataclass(frozen=True, slots=True)
class DrainSpec:
    """One configured drain: its `source` label, platform, token and optional hosts."""

    name: str
    platform: str
    token: str = field(repr=False)
    hosts: frozenset[str] | None = None  # lowercase; None: every host


def drain_specs(cfg: Config) -> list[DrainSpec]:
    """The heroku_drain sources of the config, with their `source` labels."""
    if cfg.traffic is None:
        return []
    return [
        DrainSpec(
            name=name,
            platform=source.platform,
            token=source.heroku_drain.token,
            hosts=None
            if source.heroku_drain.hosts is None
            else frozenset(h.lower() for h in source.heroku_drain.hosts),
        )
        for name, source in cfg.traffic.named_sources()
        if source.heroku_drain is not None
    ]


def routes_of(cfg: Config) -> RouteGroups:
    """The configured route groups (none: every request counts in `all`)."""
    if cfg.traffic is None:
        return RouteGroups()
    return RouteGroups([(g.name, g.path_regex) for g in cfg.traffic.routes])


class RouteGroups:
    """`Routes.group` for a drain's many paths: the same groups, the same answer (first match
    wins, on the path without its query string, its first MAX_PATH bytes), from one RE2 set
    search for all groups at once instead of one search per group.

    Paths with ids in them rarely repeat, so a cache helps little: with three groups, one set
    search is about 8 times quicker than `Routes.group` (bench/traffic).
    """

    __slots__ = ("_set", "names", "routes")

    def __init__(self, groups: Sequence[tuple[str, str]] = ()) -> None:
        """`groups`: (name, path_regex) pairs; the patterns must compile (the config checked)."""
        self.routes = Routes(groups)  # the definition, and its validation of every pattern
        self.names = tuple(name for name, _ in groups)
        self._set = re2.Set.SearchSet(_re2_options())
        for _, pattern in groups:
            self._set.Add(pattern.encode())
        self._set.Compile()

    def __bool__(self) -> bool:
        return bool(self.names)

    def group(self, path: bytes) -> str:
        """The group of a request path (a query string, if any, is ignored)."""
        if not self.names:
            return ALL
        found = self._set.Match(path.partition(b"?")[0][:MAX_PATH])
        return self.names[min(found)] if found else OTHER


# -- reading lines -------------------------------------------------------------------------------


class LineReader:
    """How one drain reads router lines: its route groups and hosts, and caches for both."""

    __slots__ = ("groups", "hosts", "routes", "seconds")

    def __init__(self, routes: RouteGroups, hosts: Iterable[str] | None = None) -> None:
        self.routes = routes
        self.hosts: frozenset[bytes] | None = (
            None if hosts is None else frozenset(h.lower().encode() for h in hosts)
        )
        self.groups: dict[bytes, str] = {}  # path without its query -> route group
        # the first 19 bytes of a `+00:00` timestamp -> its second (None: not a time)
        self.seconds: dict[bytes, int | None] = {}

    def route(self, path: bytes) -> str:
        """The route group of a path; only group names come out, never the path."""
        if not self.routes:
            return ALL
        bare = path.partition(b"?")[0][:MAX_PATH]
        group = self.groups.get(bare)
        if group is None:
            if len(self.groups) >= _CACHE:
                self.groups.clear()  # ids in paths: a cache, not a catalogue
            group = self.groups[bare] = self.routes.group(bare)
        return group

    def second(self, stamp: bytes) -> int | None:
        """The unix second of an RFC 5424 timestamp (`2026-12-01T19:00:00.123456+00:00`)."""
        if stamp[-6:] == b"+00:00":  # what Logplex writes: the second is in the first 19 bytes
            key = stamp[:19]
            if key in self.seconds and stamp[19:20] in (b".", b"+"):
                return self.seconds[key]
        head, rest = stamp[:19], stamp[19:]
        if rest[:1] == b".":
            rest = rest[1:].lstrip(b"0123456789")  # the fraction: a second is all we keep
        if len(rest) > 6:
            return None
        value: int | None = None
        if len(head) == 19 and head[10:11] == b"T" and rest:
            try:
                moment = datetime.fromisoformat((head + rest).decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                moment = None
            if moment is not None and moment.tzinfo is not None:
                value = int(moment.timestamp())
        if len(self.seconds) >= _CACHE:
            self.seconds.clear()
        if rest == b"+00:00":
            self.seconds[head] = value
        return value


def _value_at(body: bytes, key: bytes, start: int, end: int, last: bool = False) -> bytes | None:
    """The value of `key` (` name=`) in body[start:end], quotes taken off: the first
    occurrence, or the `last`.

    Finding the key is enough: unquoted values hold no spaces, so ` name=` starts a field
    or lies in a quoted value. Heroku's fields come in a fixed order, and the quoted value a
    client writes (fwd: its X-Forwarded-For) comes after path and host and before connect,
    service and status: those are taken from their last occurrence, so that a client cannot
    forge them through its own header.
    """
    i = body.rfind(key, start, end) if last else body.find(key, start, end)
    if i < 0:
        return None
    i += len(key)
    if body.startswith(b'"', i, end):
        j = body.find(b'"', i + 1, end)
        return body[i + 1 : j] if j >= 0 else None
    j = body.find(b" ", i, end)
    return body[i : j if j >= 0 else end]


def _router_message(body: bytes, s2: int, end: int) -> int:
    """Where the message of a line starts when its HOSTNAME APP-NAME PROCID MSGID (from `s2`,
    the space after the timestamp) are the router's but not as Logplex writes them (another
    hostname or MSGID); 0 for a line of anyone else, -1 for the router's without a message."""
    s3 = body.find(b" ", s2 + 1, end)
    if s3 < 0 or not body.startswith(b"heroku router", s3 + 1, end):
        return 0
    if s3 + 14 == end:
        return -1
    if body[s3 + 14] != 32:
        return 0  # heroku routerX: someone else
    m = body.find(b" ", s3 + 15, end)  # past the MSGID
    return m + 1 if m >= 0 else -1


def _millis(value: bytes | None) -> int | None:
    """`45ms` -> 45, `` -> -1 (the router did not get that far); None for anything else."""
    if not value:
        return -1
    digits = value[:-2] if value.endswith(b"ms") else value
    return int(digits) if digits.isdigit() and len(digits) <= 9 else None


def _slow_fields(body: bytes, start: int, end: int, failed: bool) -> tuple[int, int] | None:
    """(status, latency ms or -1) of a router message whose end is not the usual
    `connect=Nms service=Nms status=N`; None when it cannot be read."""
    raw = _value_at(body, b" status=", start, end, last=True)
    status = 0
    if raw:
        if not raw.isdigit() or len(raw) > 3:
            return None
        status = int(raw)
        if not 100 <= status <= 599:
            return None
    elif not failed:
        return None  # a request the router passed on has a status
    connect = _millis(_value_at(body, b" connect=", start, end, last=True))
    service = _millis(_value_at(body, b" service=", start, end, last=True))
    if connect is None or service is None:
        return None
    # empty in H10, H13 and H99 lines: the router never reached a dyno; no latency, no fault
    return status, connect + service if connect >= 0 and service >= 0 else -1


class _Sum:
    """The lines of one (route group, second) of a body, added up."""

    __slots__ = ("classes", "latency", "requests", "router_errors")

    def __init__(self) -> None:
        self.requests = 0
        self.classes = [0, 0, 0, 0]  # 2xx 3xx 4xx 5xx
        self.router_errors = 0
        self.latency = [0] * (len(_LATENCY_MS) + 1)

    def tally(self) -> Tally:
        return Tally(
            requests=float(self.requests),
            responses={c: float(n) for c, n in zip(CODE_CLASSES, self.classes, strict=True)},
            router_errors=float(self.router_errors),
            latency=Histogram(LATENCY_BOUNDS, [float(n) for n in self.latency]),
        )


class Batch:
    """One POST's body being read: where the framing is, the lines by kind, the counts so far.

    `find_frame` looks for a readable frame without reading lines (the handler's check),
    `step` reads frames until a deadline or the end. Both resume where they stopped.
    """

    __slots__ = (
        "_bad",
        "_hi",
        "_lines",
        "_lo",
        "_pending",
        "_reader",
        "arrival",
        "body",
        "frames",
        "kinds",
        "pos",
    )

    def __init__(self, body: bytes, arrival: float, reader: LineReader) -> None:
        self.body = body
        self.pos = 0
        self.arrival = arrival
        self._reader = reader
        self._lo = int(arrival - MAX_SKEW)
        self._hi = int(arrival)
        self._bad = False  # inside an unreadable stretch (counted once)
        self._pending: tuple[int, int] | None = None  # a frame find_frame found, not yet read
        self.frames = 0  # readable frames read
        self.kinds = dict.fromkeys(LINE_KINDS, 0)
        # (route group, second, status class index or -1, latency bucket or -1, router error)
        # -> requests: one dict update per line; `reports` adds them up per group and second
        self._lines: dict[tuple[str, int, int, int, bool], int] = {}

    @property
    def done(self) -> bool:
        return self._pending is None and self.pos >= len(self.body)

    def _frame(self) -> tuple[int, int] | None:
        """The next readable frame's line as (start, end), past whatever cannot be read; None
        at the end of the body, _AGAIN after _CHECK_EVERY bad spots (look at the clock, call
        again). Moves `pos` past what it read."""
        body = self.body
        size = len(body)
        pos = self.pos
        attempts = 0
        while pos < size:
            first = body[pos]
            if first == 10 or first == 13:
                match = _NEWLINES.match(body, pos)
                assert match is not None
                pos = match.end()
                continue
            resume = pos + 1
            space = body.find(b" ", pos, pos + _MAX_FRAME_DIGITS + 1)
            if space > pos:
                length = body[pos:space]
                if length.isdigit():
                    start = space + 1
                    end = start + int(length)
                    resume = start  # never into this frame's own length again
                    if (
                        end - start >= 2
                        and end <= size
                        and body[start] == 60  # "<": the line's PRI
                        and (
                            end == size
                            or body[end - 1] == 10  # the line's own newline, counted
                            or body[end] in _NEWLINE_BYTES
                            or _CANDIDATE.match(body, end) is not None
                        )
                        # a newline inside: the count swallowed the next frame
                        and body.find(b"\n", start, end - 1) < 0
                    ):
                        self.pos = end
                        self._bad = False
                        if body[end - 1] == 10:
                            end -= 1
                            if body[end - 1] == 13:
                                end -= 1
                        return start, end
            if not self._bad:
                self._bad = True
                self.kinds["unreadable"] += 1
            match = _CANDIDATE.search(body, resume)
            pos = match.start() if match is not None else size
            attempts += 1
            if attempts >= _CHECK_EVERY:
                self.pos = pos
                return _AGAIN
        self.pos = size
        return None

    def find_frame(
        self, deadline: float, clock: Callable[[], float] = time.perf_counter
    ) -> bool | None:
        """Whether the body holds a readable frame: True (`step` reads it first), False, or
        None when the deadline came first (call again)."""
        if self._pending is not None:
            return True
        while True:
            frame = self._frame()
            if frame is None:
                return False
            if frame is not _AGAIN:
                self._pending = frame
                return True
            if clock() >= deadline:
                return None

    def step(self, deadline: float, clock: Callable[[], float] = time.perf_counter) -> bool:
        """Read frames until the end of the body (True) or the deadline (False).

        One loop, the usual case inline (a frame ending in its newline; a router line ending
        `connect=Nms service=Nms status=N ...`), with `bytes` methods bounded to the line, so
        that nothing is copied but the values kept: the rest goes through helpers.
        """
        body = self.body
        size = len(body)
        reader = self._reader
        hosts = reader.hosts
        grouped = bool(reader.routes)
        groups = reader.groups
        group_of = reader.routes.group
        seconds = reader.seconds
        lines = self._lines
        lo, hi = self._lo, self._hi
        router = failures = ignored = unreadable = frames = 0
        pos = self.pos
        turn = 0
        done = False
        while True:
            turn += 1
            if not turn % _CHECK_EVERY and clock() >= deadline:
                break
            # -- a frame: `<length> <line>`, the usual one inline ---------------------------
            pending = self._pending
            if pending is not None:
                self._pending = None
                start, end = pending
            else:
                space = body.find(b" ", pos, pos + _MAX_FRAME_DIGITS + 1)
                start = space + 1
                try:  # where the line's counted newline is
                    end = space + int(body[pos:space]) if space > pos else -1
                except ValueError:
                    end = -1
                if (
                    start < end < size
                    and body[end] == 10
                    and body[start] == 60  # "<": the line's PRI
                    and body.find(b"\n", start, end) < 0
                ):
                    pos = end + 1
                    if self._bad:
                        self._bad = False
                    if body[end - 1] == 13:
                        end -= 1
                else:  # anything else: a frame without its newline, or a bad stretch
                    self.pos = pos
                    frame = self._frame()
                    pos = self.pos
                    if frame is None:
                        done = True
                        break
                    if frame is _AGAIN:
                        continue
                    start, end = frame
            frames += 1
            # -- the header: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID ----------
            s1 = body.find(b" ", start, end)
            s2 = body.find(b" ", s1 + 1, end) if s1 > 0 else -1
            if s2 < 0:
                ignored += 1
                continue
            if body.startswith(b" host heroku router - ", s2, end):
                m = s2 + 22  # Logplex's own header: the message follows
            else:
                m = _router_message(body, s2, end)
                if m <= 0:
                    if m < 0:
                        unreadable += 1  # the router's, but no message
                    else:
                        ignored += 1  # app output, runtime metrics, other heroku lines
                    continue
            if body.startswith(b"- ", m, end):
                m += 2  # the nil structured data, when a sender writes it
            # -- the message: at=info method=GET path="/x" host=... status=200 ... -----------
            if body.count(b'"', m, end) & 1:
                unreadable += 1  # a quote left open: where the values end is anyone's guess
                continue
            if hosts is not None:
                host = _value_at(body, b" host=", m, end)
                if host is None or host.lower() not in hosts:
                    ignored += 1
                    continue
            # `at` is the first field and `code` the second: nothing a client sends comes first
            failed = body.startswith(b"at=error code=H", m, end)
            latency = status = -1
            i = body.rfind(b" connect=", m, end)
            if i >= 0:
                c, sep, rest = body[i + 9 : end].partition(b"ms service=")
                if sep:
                    v, sep, rest = rest.partition(b"ms status=")
                    st = rest[:3]
                    if (
                        sep
                        and st.isdigit()
                        and rest[3:4] in (b" ", b"")
                        and c.isdigit()
                        and v.isdigit()
                        and len(c) <= 9
                        and len(v) <= 9
                    ):
                        status = int(st)
                        latency = int(c) + int(v)
            if status < 0:
                read = _slow_fields(body, m - 1, end, failed)
                if read is None:
                    unreadable += 1
                    continue
                status, latency = read
            elif not 100 <= status <= 599:
                unreadable += 1
                continue
            i = body.find(b' path="', m - 1, end)  # quoted, as the router writes it
            if i >= 0:
                j = body.find(b'"', i + 7, end)
                path = body[i + 7 : j] if j >= 0 else None
            else:
                path = _value_at(body, b" path=", m - 1, end)  # unquoted, as it once was
            if path is None:
                unreadable += 1
                continue
            # -- when: the line's own second, within [arrival - MAX_SKEW, arrival] -----------
            second = None
            if s2 - s1 == 33 and body.startswith(b"+00:00", s2 - 6, s2):
                second = seconds.get(body[s1 + 1 : s1 + 20])  # as Logplex writes it
            if second is None:
                second = reader.second(body[s1 + 1 : s2])
            if second is None or second > hi:
                second = hi
            elif second < lo:
                second = lo
            # -- counted: one dict update per line ------------------------------------------
            if failed:
                failures += 1
                cls = 3  # whatever status it says, users got a failure
            else:
                router += 1
                cls = status // 100 - 2 if status >= 200 else -1
            if grouped:
                bare = path.partition(b"?")[0][:MAX_PATH]
                route = groups.get(bare)
                if route is None:
                    if len(groups) >= _CACHE:
                        groups.clear()  # ids in paths: a cache, not a catalogue
                    route = groups[bare] = group_of(bare)
            else:
                route = ALL
            key = (
                route,
                second,
                cls,
                bisect_left(_LATENCY_MS, latency) if latency >= 0 else -1,
                failed,
            )
            lines[key] = lines.get(key, 0) + 1
        self.pos = pos
        kinds = self.kinds
        kinds["router"] += router
        kinds["router_error"] += failures
        kinds["ignored"] += ignored
        kinds["unreadable"] += unreadable
        self.frames += frames
        return done

    def reports(self, source: str, platform: str) -> Iterator[Report]:
        sums: dict[tuple[str, int], _Sum] = {}
        for (route, second, cls, bucket, failed), n in self._lines.items():
            into = sums.get((route, second))
            if into is None:
                into = sums[(route, second)] = _Sum()
            into.requests += n
            if cls >= 0:
                into.classes[cls] += n
            if failed:
                into.router_errors += n
            if bucket >= 0:
                into.latency[bucket] += n
        for (route, second), into in sums.items():
            yield Report(source, platform, route, float(second), float(second + 1), into.tally())


def read_body(body: bytes, arrival: float, reader: LineReader) -> Batch:
    """Read a whole body at once (tests and benchmarks; the daemon reads in slices)."""
    batch = Batch(body, arrival, reader)
    batch.step(float("inf"))
    return batch


# -- the ingester ---------------------------------------------------------------------------------


def basic_password(header: str | None) -> bytes | None:
    """The password of an `Authorization: Basic` header (the user name is ignored)."""
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    _, colon, password = decoded.partition(b":")
    return password if colon and password else None


class _Drain:
    """One configured drain's live state: how it reads lines, its counts and its status."""

    __slots__ = ("kinds", "reader", "spec", "status", "token")

    def __init__(self, spec: DrainSpec, reader: LineReader, status: SourceStatus) -> None:
        self.spec = spec
        self.token = spec.token.encode()
        self.reader = reader
        self.status = status
        self.kinds = dict.fromkeys(LINE_KINDS, 0)


@dataclass(slots=True)
class _Job:
    drain: _Drain
    batch: Batch
    size: int


class Drains:
    """Every configured Heroku drain: who a POST is from, its body queued, read, and counted.

    `accept` is the handler's part (answers in microseconds for anything Logplex sends);
    `run` is the worker task that reads the queue in slices and fills the timeline.
    """

    def __init__(
        self,
        timeline: Timeline,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        max_queued: int = QUEUE_BYTES,
        logger: logging.Logger | None = None,
    ) -> None:
        self.timeline = timeline
        self.clock = clock
        self.max_queued = max_queued
        self.log = logger or logging.getLogger("cutover.traffic.drain")
        self._drains: dict[str, _Drain] = {}
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # bytes in _jobs
        self._wake = asyncio.Event()
        self._frame_ids: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._last_drop_warning = -1e18
        # POSTs by result: accepted, duplicate, dropped, and the handler's refusals
        self.posts: dict[str, int] = dict.fromkeys(POST_RESULTS, 0)
        self._refusals: dict[str, int] = {}  # since the last warning
        self._last_refusal_warning = -1e18
        if registry is not None:
            registry.register(_DrainCollector(self))

    # -- configuration ------------------------------------------------------------------------

    def configure(self, specs: Sequence[DrainSpec], routes: RouteGroups) -> None:
        """Take the drains of a (re)loaded config; a drain that stays keeps its counts."""
        drains: dict[str, _Drain] = {}
        for spec in specs:
            old = self._drains.get(spec.name)
            status = self.timeline.status(spec.name, spec.platform, KIND)
            if status.platform != spec.platform or status.kind != KIND:
                status = self.timeline.sources[spec.name] = SourceStatus(
                    source=spec.name, platform=spec.platform, kind=KIND
                )
            if status.last_success is None and status.error is None:
                status.error = "no POST received yet"
            drain = _Drain(spec, LineReader(routes, spec.hosts), status)
            if old is not None and old.spec.platform == spec.platform:
                drain.kinds = old.kinds
            drains[spec.name] = drain
        self._drains = drains

    @property
    def configured(self) -> bool:
        return bool(self._drains)

    def authenticate(self, authorization: str | None) -> DrainSpec | None:
        """The drain whose token is the basic-auth password, or None.

        Every token is compared, in constant time each, whatever matched: the time an answer
        takes does not tell which drain (or how much of a token) was right.
        """
        password = basic_password(authorization) or b""
        found: DrainSpec | None = None
        for drain in self._drains.values():
            if hmac.compare_digest(password, drain.token) and password:
                found = drain.spec
        return found

    # -- the handler's part ---------------------------------------------------------------------

    async def accept(
        self, spec: DrainSpec, body: bytes, frame_id: str | None, msg_count: str | None = None
    ) -> Verdict:
        """Take one authenticated POST's body: a retry is dropped, a body without a readable
        frame refused; anything else is queued (or dropped, when the queue is full)."""
        drain = self._drains.get(spec.name)
        if drain is None or drain.token != spec.token.encode():
            return Verdict.GONE  # its token left the config while the body arrived
        now = self.clock()
        key = (spec.name, frame_id[:200]) if frame_id else None
        if key is not None:
            self._trim_frame_ids(now)
            if key in self._frame_ids:
                self.posts["duplicate"] += 1
                self.log.debug("heroku drain %s: a retried POST dropped", spec.name)
                return Verdict.DUPLICATE
            self._frame_ids[key] = now  # now: a retry arriving meanwhile is a duplicate too
        batch = Batch(body, now, drain.reader)
        # framing only, up to the first readable frame: the first bytes of anything Logplex
        # sends; a body of garbage is looked through in slices, as the worker reads
        while True:
            found = batch.find_frame(time.perf_counter() + SLICE_SECONDS)
            if found is not None:
                break
            await asyncio.sleep(0)  # the loop's turn: a slice is spent
        if not found:
            self._count(drain, batch.kinds)
            if key is not None:
                self._frame_ids.pop(key, None)
            return Verdict.NO_FRAME
        status = drain.status
        if not status.up and status.last_success is not None:
            self.log.info("heroku drain %s: POSTs arrive again", spec.name)
        status.up, status.error = True, None
        status.last_attempt = status.last_success = now
        if self._queued + len(body) > self.max_queued:
            self.posts["dropped"] += 1
            self._drop(drain, body, msg_count)
            return Verdict.DROPPED
        self.posts["accepted"] += 1
        self._jobs.append(_Job(drain, batch, len(body)))
        self._queued += len(body)
        self._wake.set()
        return Verdict.ACCEPTED

    def refused(self, result: str) -> None:
        """Count a POST the handler refused; say so in the log at most once a minute."""
        self.posts[result] = self.posts.get(result, 0) + 1
        self._refusals[result] = self._refusals.get(result, 0) + 1
        now = time.monotonic()
        if now - self._last_refusal_warning >= 60:
            self._last_refusal_warning = now
            said = ", ".join(f"{n} {_REFUSALS.get(r, r)}" for r, n in self._refusals.items())
            self._refusals.clear()
            self.log.warning("heroku drain: POSTs refused: %s (said at most once a minute)", said)

    def _trim_frame_ids(self, now: float) -> None:
        ids = self._frame_ids
        while ids and (len(ids) >= FRAME_IDS or next(iter(ids.values())) < now - FRAME_ID_SECONDS):
            ids.popitem(last=False)

    def _drop(self, drain: _Drain, body: bytes, msg_count: str | None) -> None:
        lines = int(msg_count) if msg_count and msg_count.isdigit() and len(msg_count) < 9 else 0
        if not 0 < lines <= len(body) // 4:  # a frame takes 4 bytes at least
            lines = body.count(b"\n") or 1
        drain.kinds["dropped"] += lines
        now = time.monotonic()
        if now - self._last_drop_warning >= 60:
            self._last_drop_warning = now
            self.log.warning(
                "heroku drain %s: %d line(s) dropped, the queue is full (%d MiB waiting): the "
                "daemon reads drains slower than they arrive (said at most once a minute)",
                drain.spec.name,
                lines,
                self._queued >> 20,
            )

    # -- the worker ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Read the queued bodies, one slice at a time, until cancelled."""
        while True:
            if not self._jobs:
                self.refresh(self.clock())
                self._wake.clear()
                try:
                    async with asyncio.timeout(REFRESH_SECONDS):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            job = self._jobs[0]
            try:
                await self._ingest(job)
            except Exception:  # a bug of ours: the next body must still be read
                self.log.exception("heroku drain %s: cannot read a body", job.drain.spec.name)
            finally:
                self._jobs.popleft()
                self._queued -= job.size
            # the loop's turn between two bodies too: the end of one and the start of the next
            # in one step were the drain's longest steps (over 1 ms, bench/traffic)
            await asyncio.sleep(0)

    async def _ingest(self, job: _Job) -> None:
        batch, drain = job.batch, job.drain
        counted = dict.fromkeys(LINE_KINDS, 0)
        while True:
            done = batch.step(time.perf_counter() + SLICE_SECONDS)
            # counted as they are read: a long body shows progress
            self._count(drain, {k: n - counted[k] for k, n in batch.kinds.items()})
            counted = dict(batch.kinds)
            await asyncio.sleep(0)  # after the last slice too: the reports get a slice of their own
            if done:
                break
        if self._drains.get(drain.spec.name) is not drain:
            return  # reconfigured meanwhile: this drain's figures went with it
        spec = drain.spec
        now = self.clock()
        deadline = time.perf_counter() + SLICE_SECONDS
        for report in batch.reports(spec.name, spec.platform):
            self.timeline.add(report, now)
            if time.perf_counter() >= deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + SLICE_SECONDS
                now = self.clock()
        status = drain.status
        covered = batch.arrival - DELIVERY_MARGIN
        status.covered_until = max(status.covered_until or covered, covered)

    def _count(self, drain: _Drain, kinds: dict[str, int]) -> None:
        for kind, n in kinds.items():
            if n:
                drain.kinds[kind] += n

    def refresh(self, now: float) -> None:
        """Mark drains that have gone quiet: a source that stops is its own state, not 'ok'."""
        for drain in self._drains.values():
            status = drain.status
            last = status.last_success
            if status.up and last is not None and now - last > STALE_AFTER:
                status.up = False
                status.error = (
                    f"stale: no POST from Heroku for {STALE_AFTER / 60:g} min (the app may have "
                    "no traffic, or the drain was removed: `heroku drains -a APP`)"
                )
                self.log.warning("heroku drain %s: %s", drain.spec.name, status.error)

    # -- what /metrics reads -----------------------------------------------------------------------

    def line_counts(self) -> list[tuple[str, str, str, int]]:
        """(platform, source, kind, lines) of every configured drain and kind."""
        return [
            (d.spec.platform, d.spec.name, kind, n)
            for d in self._drains.values()
            for kind, n in d.kinds.items()
        ]

    @property
    def queued_bytes(self) -> int:
        return self._queued


class _DrainCollector(Collector):
    """cutover_traffic_drain_lines_total and the queue's size, from the ingester's counts."""

    def __init__(self, drains: Drains) -> None:
        self._drains = drains

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        lines = CounterMetricFamily(
            "cutover_traffic_drain_lines",
            "Lines of Heroku log drain POSTs, by kind: router, router_error, ignored, "
            "unreadable, dropped (no room in the queue).",
            labels=["platform", "source", "kind"],
        )
        for platform, source, kind, n in self._drains.line_counts():
            lines.add_metric([platform, source, kind], float(n))
        yield lines
        posts = CounterMetricFamily(
            "cutover_traffic_drain_posts",
            "POSTs to /api/v1/drains/heroku, by result: accepted, duplicate (a retry), dropped, "
            "or why it was refused (unauthorized, content_type, too_large, no_frame, ...).",
            labels=["result"],
        )
        for result, n in self._drains.posts.items():
            posts.add_metric([result], float(n))
        yield posts
        queued = GaugeMetricFamily(
            "cutover_traffic_drain_queued_bytes",
            "Bytes of drain POSTs accepted and not read yet.",
        )
        queued.add_metric([], float(self._drains.queued_bytes))
        yield queued
