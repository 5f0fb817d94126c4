"""The migration's own Slack thread: weight changes and readiness summaries, one thread a record.

Every message about a record's steps is a reply in the thread `migration:<record>`; the first
one, whose thread does not exist yet, becomes its top-level message (the outbox does that for
replies to a `migration:` thread). Keys derive from the step's start, so a summary owed again
after a restart is recognised by the outbox and never sent twice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime

from exporter.alerting.outbox import MIGRATION_PREFIX, Notification
from exporter.judging.readiness import Readiness, SubjectReadiness, Verdict, span

__all__ = [
    "MIGRATION_PREFIX",
    "readiness_notification",
    "step_notification",
    "thread_of",
]


def thread_of(record: str) -> str:
    """The outbox's thread name for a record's migration."""
    return f"{MIGRATION_PREFIX}{record}"


def _ms(started_at: float) -> int:
    return round(started_at * 1000)


def _share(value: float | None) -> str:
    return "?" if value is None or math.isnan(value) else f"{value * 100:g}%"


def _shares(shares: Mapping[str, float]) -> str:
    return ", ".join(f"{p} {_share(s)}" for p, s in shares.items()) or "no weights read"


def _count(n: float) -> str:
    return f"{n:,.0f}".replace(",", " ")


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M UTC")


_BY = {"shift": "by the guarded shift", "person": "by a person", "unknown": "before cutover saw it"}


def step_notification(
    record: str,
    started_at: float,
    shares: Mapping[str, float],
    previous: Mapping[str, float] | None,
    changed_by: str,
    dry_run: bool,
    real_shares: Mapping[str, float] | None = None,
) -> Notification:
    """The weights of `record` changed: a new step begins and its hold starts again."""
    was = f" (was {_shares(previous)})" if previous else ""
    if dry_run:
        real = f"; Route53 still holds {_shares(real_shares)}" if real_shares else ""
        text = (
            f"DRY RUN: the guarded shift would have set {record} to {_shares(shares)}{was}{real}. "
            f"The readiness hold starts again at {_clock(started_at)}."
        )
    else:
        text = (
            f"Weights of {record} changed {_BY.get(changed_by, changed_by)}: "
            f"{_shares(shares)}{was}. The readiness hold starts again at {_clock(started_at)}."
        )
    return Notification(
        key=f"{thread_of(record)}:step:{_ms(started_at)}",
        incident=thread_of(record),
        action="reply",
        text=text,
        created=started_at,
    )


def readiness_notification(r: Readiness, baseline: str, candidate: str, now: float) -> Notification:
    """The hold of `r`'s step completed: what the evidence says, and the verdict."""
    step = r.step
    share = step.shares.get(candidate)
    head = f"{candidate} at {_share(share)} for {span(r.held_for)}"
    if step.dry_run:
        head = f"DRY RUN: {head} (as the shift would have set it)"
    probes = r.probes[1]
    requests = r.requests[1]
    parts = [f"{_count(probes)} probes" + (f", {_count(requests)} requests" if requests else "")]
    worst = _worst_latency(r)
    if worst is not None:
        b, c = worst.latency.get("p95", (math.nan, math.nan))
        if not (math.isnan(b) or math.isnan(c)):
            where = f" on {worst.subject}" if len(r.subjects) > 1 else ""
            parts.append(f"p95 {c * 1000:.0f} vs {b * 1000:.0f} ms{where}")
    errors = _worst_errors(r)
    if errors is not None and errors.errors is not None:
        b, c = errors.error_ratios
        where = f" on {errors.subject}" if len(r.subjects) > 1 else ""
        parts.append(f"errors {_pct(c)} vs {_pct(b)}{where} (bound {_pts(errors.errors.upper)})")
    fired = [i for i in step.incidents if i.fired_at is not None]
    parts.append("no incidents" if not fired else f"{len(fired)} incident{'s' * (len(fired) > 1)}")
    if r.verdict is Verdict.GO:
        tail = f"GO for {_share(step.next_share)}" if step.next_share is not None else "GO"
    else:
        tail = f"{r.verdict.value}: " + "; ".join(r.reasons[:3])
    text = f"{head}: {'; '.join(parts)}. {tail}"
    return Notification(
        key=f"{thread_of(r.record)}:ready:{_ms(step.started_at)}",
        incident=thread_of(r.record),
        action="reply",
        text=text,
        created=now,
    )


def _ratio(s: SubjectReadiness, q: str) -> float:
    b, c = s.latency.get(q, (math.nan, math.nan))
    value = c / b if b > 0 else math.nan
    return -math.inf if math.isnan(value) else value


def _worst_latency(r: Readiness) -> SubjectReadiness | None:
    return max(r.subjects, key=lambda s: _ratio(s, "p95"), default=None)


def _worst_errors(r: Readiness) -> SubjectReadiness | None:
    scored = [s for s in r.subjects if s.errors is not None]
    return max(scored, key=lambda s: s.errors.upper if s.errors else -math.inf, default=None)


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.2f}%"


def _pts(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:+.1f} pts"
