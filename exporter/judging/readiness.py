"""Is it safe to take the next Route53 step? GO / WAIT / NO-GO from a step's evidence and the clock.

Pure: the step's facts, the time and the settings in, a verdict with its reasons out.
(CONTRACT: the types below are what the ledger, the page, the API, Slack and `cutover report`
build on; `readiness()` and the bounds are implemented in this module.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from exporter.judging.evidence import Evidence

__all__ = [
    "Bound",
    "IncidentNote",
    "Readiness",
    "ReadinessSettings",
    "StepFacts",
    "SubjectReadiness",
    "Verdict",
    "readiness",
]

ChangedBy = Literal["shift", "person", "unknown"]


class Verdict(StrEnum):
    GO = "GO"
    WAIT = "WAIT"
    NO_GO = "NO-GO"


@dataclass(frozen=True, slots=True)
class ReadinessSettings:
    """The config's `readiness` section, with the judge's tolerances it tests against."""

    hold: float = 1800.0  # seconds the step must last
    min_probes: int = 50  # per side and check
    min_requests: int = 500  # per side and route group, where traffic is configured
    confidence: float = 0.95  # one-sided level of the upper bounds
    errors_max_increase: float = 0.02  # tolerated candidate - baseline error ratio (fraction)
    latency_max_ratio: float = 1.5  # tolerated candidate / baseline latency at p50 and p95


@dataclass(frozen=True, slots=True)
class IncidentNote:
    """An incident seen during the step (fired, or still pending/firing)."""

    id: str
    check: str
    signal: str
    phase: Literal["pending", "firing", "resolved"]
    started_at: float  # unix seconds
    fired_at: float | None = None
    resolved_at: float | None = None
    figures: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StepFacts:
    """What the ledger knows of one record's current step."""

    record: str
    started_at: float  # unix seconds
    shares: Mapping[str, float]  # platform -> share in [0, 1]
    changed_by: ChangedBy
    subjects: Sequence[Evidence]  # one per check guarding the record, and per route group
    incidents: Sequence[IncidentNote]  # every incident that fired or was open during the step
    traffic: bool = False  # real traffic is configured for this record: requests are required
    next_share: float | None = None  # the candidate's next planned share in [0, 1], if any
    dry_run: bool = False  # the step is what a dry-run shift would have written


@dataclass(frozen=True, slots=True)
class Bound:
    """A one-sided upper confidence bound tested against a tolerance.

    `ok` is None when the figure is not evidence yet (too few samples for this quantile).
    """

    estimate: float  # the point estimate (difference in fraction, or ratio)
    upper: float  # the upper confidence bound
    tolerated: float
    ok: bool | None


@dataclass(frozen=True, slots=True)
class SubjectReadiness:
    """One subject's figures over the step, both sides, and its bounds."""

    subject: str
    kind: Literal["probes", "requests"]
    counts: tuple[float, float]  # baseline, candidate
    failures: tuple[float, float]
    error_ratios: tuple[float, float]
    latency: Mapping[str, tuple[float, float]]  # "p50", "p95", "p99" -> (baseline, candidate) s
    errors: Bound | None  # None: no data on a side
    latency_ratio: Mapping[str, Bound]  # "p50", "p95", "p99" (p99 ok=None until evidence)
    missing: tuple[str, ...]  # e.g. "310 more candidate requests"


@dataclass(frozen=True, slots=True)
class Readiness:
    record: str
    verdict: Verdict
    reasons: tuple[str, ...]  # human sentences, most important first
    step: StepFacts
    held_for: float  # seconds since the step started
    hold: float
    subjects: tuple[SubjectReadiness, ...]

    def to_dict(self) -> dict[str, Any]:
        """The API's record entry (GET /api/v1/readiness), figures included."""
        raise NotImplementedError


def readiness(facts: StepFacts, now: float, settings: ReadinessSettings) -> Readiness:
    """The verdict on `facts` at `now`."""
    raise NotImplementedError
