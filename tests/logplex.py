"""Real logplex-1 bodies, as Heroku's Logplex POSTs them to an HTTPS log drain.

A body is octet-counted frames, `<length> <RFC 5424 line>`, the length counting the bytes after
the space; Logplex ends each line with a newline inside the count. The lines below are Heroku's
own (router lines as its docs print them, in the drain's syslog form).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from datetime import UTC, datetime

# Heroku's documented examples, with the syslog header Logplex puts before them
ROUTER_LINE = (
    b"<158>1 2026-12-01T19:00:00.466153+00:00 host heroku router - at=info method=GET "
    b'path="/v1/redemptions/123?code=x" host=api.example.com '
    b'request_id=c6ba6bbc-6a83-4c12-8269-97c8e32cdb22 fwd="203.0.113.9" dyno=web.1 '
    b"connect=1ms service=45ms status=200 bytes=1414 protocol=https"
)
H12_LINE = (
    b"<158>1 2026-12-01T19:00:00.951000+00:00 host heroku router - at=error code=H12 "
    b'desc="Request timeout" method=GET path="/" host=api.example.com '
    b'request_id=8601b555-6a83-4c12-8269-97c8e32cdb22 fwd="204.204.204.204" dyno=web.1 '
    b"connect=0ms service=30000ms status=503 bytes=0 protocol=https"
)
H10_LINE = (  # the router never reached a dyno: no connect or service time
    b"<158>1 2026-12-01T19:00:00.951000+00:00 host heroku router - at=error code=H10 "
    b'desc="App crashed" method=GET path="/favicon.ico" host=api.example.com '
    b"fwd=17.17.17.17 dyno= connect= service= status=503 bytes= protocol=https"
)
APP_LINE = (
    b'<190>1 2026-12-01T19:00:00.470000+00:00 host app web.1 - Started GET "/v1/x" for '
    b"203.0.113.9 at 2026-12-01 19:00:00 +0000"
)
RUNTIME_METRICS_LINE = (
    b"<45>1 2026-12-01T19:00:00.000000+00:00 host heroku web.1 - source=web.1 "
    b"dyno=heroku.2808254.d97d0ea7-cf3d-411b-b453-d2943a50b456 sample#memory_total=21.00MB "
    b"sample#memory_rss=21.00MB sample#memory_cache=0.00MB sample#memory_swap=0.00MB"
)
STATE_LINE = (
    b"<45>1 2026-12-01T19:00:00.000000+00:00 host heroku web.1 - State changed from starting to up"
)

LOGPLEX = "application/logplex-1"


def stamp(t: float) -> bytes:
    """An RFC 5424 timestamp as Logplex writes it: microseconds, +00:00."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00").encode()


def at(line: bytes, t: float) -> bytes:
    """The same line, timestamped `t`."""
    head, _, rest = line.partition(b" ")
    _, _, rest = rest.partition(b" ")
    return head + b" " + stamp(t) + b" " + rest


def router_line(
    t: float | None = None,
    *,
    path: str = "/v1/x?y=1",
    host: str = "api.example.com",
    status: int = 200,
    connect: int = 1,
    service: int = 45,
) -> bytes:
    """A router line of a request the router passed to a dyno."""
    when = stamp(time.time() if t is None else t)
    return (
        b"<158>1 " + when + b" host heroku router - at=info method=GET "
        + f'path="{path}" host={host} request_id=7e1b2c3d-0000-4000-8000-0123456789ab '
        f'fwd="203.0.113.9" dyno=web.1 connect={connect}ms service={service}ms '
        f"status={status} bytes=1414 protocol=https".encode()
    )  # fmt: skip


def error_line(t: float | None = None, *, code: str = "H12", path: str = "/") -> bytes:
    when = stamp(time.time() if t is None else t)
    return (
        b"<158>1 " + when + b" host heroku router - "
        + f'at=error code={code} desc="Request timeout" method=GET path="{path}" '
        f'host=api.example.com request_id=8601b555 fwd="204.204.204.204" dyno=web.1 '
        f"connect=0ms service=30000ms status=503 bytes=0 protocol=https".encode()
    )  # fmt: skip


def frame(line: bytes, *, newline: bool = True, length: int | None = None) -> bytes:
    """One octet-counted frame; `length` to write a wrong count."""
    if newline:
        line += b"\n"
    return str(len(line) if length is None else length).encode() + b" " + line


def body(lines: Iterable[bytes]) -> bytes:
    return b"".join(frame(line) for line in lines)


def auth(token: str, user: str = "heroku") -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


def headers(
    token: str | None,
    *,
    frame_id: str | None = None,
    count: int | None = None,
    content_type: str | None = LOGPLEX,
) -> dict[str, str]:
    """What Logplex sends with a body (and the drain's password, from the drain's URL)."""
    out = {"User-Agent": "Logplex/v72", "Logplex-Drain-Token": "d.f8e7a0c2-3c5c-4b2f-9b8e-0123"}
    if token is not None:
        out["Authorization"] = auth(token)
    if content_type is not None:
        out["Content-Type"] = content_type
    if frame_id is not None:
        out["Logplex-Frame-Id"] = frame_id
    if count is not None:
        out["Logplex-Msg-Count"] = str(count)
    return out
