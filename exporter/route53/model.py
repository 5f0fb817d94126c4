"""The shift plan's terms: its settings, what it observes, its phases, the change it has in
flight, its history, and how a share becomes Route53 weights.

Plain data, read by the plan (plan.py), by its words and status (words.py, explain.py) and by
its state file (record.py). The `Annotated` types bound what a state file may hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import ConfigDict, Field

from exporter.alerting.outbox import STRICT
from exporter.judging.readiness import Verdict

__all__ = [
    "ALIAS_TTL",
    "EPS",
    "Change",
    "ChangeKind",
    "Count",
    "Observation",
    "PausedBy",
    "Percent",
    "Phase",
    "ShiftSettings",
    "Text",
    "Transition",
    "Weight",
    "candidate_percent",
    "weights_for",
]

# An alias record has no TTL of its own; answers carry the target's (60 s for ELB/ALB/NLB).
ALIAS_TTL: Final = 60.0
# shares closer than this are one share
EPS: Final = 1e-6

PausedBy = Literal["person", "hand_change", "failure", "rollback"]
ChangeKind = Literal["step", "rollback"]
# what the state file may hold: Route53's weights, percents, counts, non-empty words
Weight = Annotated[int, Field(ge=0, le=255)]
Percent = Annotated[float, Field(ge=0, le=100)]
Count = Annotated[int, Field(ge=0)]
Text = Annotated[str, Field(min_length=1)]


class Phase(StrEnum):
    RUNNING = "running"
    HOLDING = "holding"
    WAITING_APPROVAL = "waiting_approval"
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"
    DONE = "done"


def weights_for(percent: float, baseline: str, candidate: str) -> dict[str, int]:
    """Route53 weights that give the candidate `percent` of the traffic; never all zero.

    Whole percents use 100 - p / p; halves use a sum of 200; anything finer is rounded to a
    sum of 255 (Route53's largest weight), keeping both sides non-zero unless at 0 or 100.
    """
    if not 0 <= percent <= 100 or not math.isfinite(percent):
        raise ValueError(f"a share must be between 0 and 100 percent, got {percent!r}")
    for total in (100, 200):
        scaled = percent * total / 100
        if abs(scaled - round(scaled)) < EPS:
            return {baseline: total - round(scaled), candidate: round(scaled)}
    share = min(max(round(percent * 2.55), 1), 254)
    return {baseline: 255 - share, candidate: share}


def candidate_percent(
    weights: Mapping[str, int | None], baseline: str, candidate: str
) -> float | None:
    """The candidate's share in percent of the two platforms' weights; None if one is missing."""
    base, cand = weights.get(baseline), weights.get(candidate)
    if base is None or cand is None:
        return None
    total = base + cand
    # Route53 splits evenly when every weight is zero.
    return 50.0 if total == 0 else round(100.0 * cand / total, 6)


@dataclass(frozen=True, slots=True)
class ShiftSettings:
    """The config's `shift` section plus what the plan needs around it, in seconds and percent.

    `hold` is the readiness hold (`Config.readiness_hold`): the verdict enforces it; the plan
    says it and counts it down. The plan's own floor is the record's TTL + `ttl_margin`.
    """

    record: str
    baseline: str
    candidate: str
    steps: tuple[float, ...] = (10.0, 25.0, 50.0, 100.0)
    hold: float = 1800.0
    ttl_margin: float = 5.0
    rollback_to: float = 0.0
    mode: Literal["auto", "manual"] = "auto"
    # No writes reach Route53: the plan trusts its own writes instead of reading them back.
    dry_run: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not self.steps:
            problems.append("at least one step is needed")
        if any(not 0 < s <= 100 for s in self.steps):
            problems.append("steps must be in (0, 100]")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            problems.append("steps must increase strictly")
        if self.steps and not 0 <= self.rollback_to < self.steps[0]:
            problems.append("rollback_to must be >= 0 and below the first step")
        if self.hold < 0 or self.ttl_margin < 0:
            problems.append("hold and ttl_margin must not be negative")
        if self.baseline == self.candidate:
            problems.append("baseline and candidate must be two platforms")
        if problems:
            raise ValueError("; ".join(problems))

    def hold_for(self, ttl: float | None) -> float:
        """The hold, raised to the record's TTL plus the margin so resolvers saw the change."""
        return max(self.hold, self.floor_for(ttl))

    def floor_for(self, ttl: float | None) -> float:
        """The record's TTL plus the margin: no step comes sooner after a change."""
        return (ALIAS_TTL if ttl is None else ttl) + self.ttl_margin

    @property
    def platforms(self) -> tuple[str, str]:
        """The baseline and the candidate, in the order texts name them."""
        return self.baseline, self.candidate

    def pair(self, weights: Mapping[str, int | None]) -> dict[str, int | None]:
        """The two platforms' weights out of a read (None for a missing record set)."""
        return {p: weights.get(p) for p in self.platforms}


@dataclass(frozen=True, slots=True)
class Observation:
    """What the daemon knows at one evaluation.

    weights   platform -> weight read from Route53 (`RecordWeights.platform_weights()`); None
              when unknown or stale, which holds the plan (it cannot tell a hand change)
    readiness the readiness verdict on the record's current step (`Readiness.verdict`); None
              before there is one, which holds ("readiness not judged yet"); only GO advances
    readiness_reasons
              its reasons (`Readiness.reasons`): why a WAIT waits, what decided a NO-GO
    readiness_since / readiness_share
              when the verdict's step began (`Readiness.step.started_at`) and the candidate's
              percent in it: a step that began before the plan's last change was issued, or at
              another share, is not the plan's current step and counts as not judged yet
    firing    regression alerts firing on checks tied to the record (labels such as
              "health/down" or incident ids; they come back in Notify.about)
    pending   the same for alerts pending (seen, not yet fired): they hold, never advance
    ttl       the record's TTL (`RecordWeights.ttl`); None for an alias record (its target's
              TTL, assumed ALIAS_TTL, applies); read only along with fresh weights
    read_at   when `weights` were read (`RecordWeights.fetched_at`): weights read before the
              plan's last change was confirmed are older than that change and count as unknown,
              not as a hand change
    """

    weights: Mapping[str, int | None] | None
    readiness: Verdict | None = None
    readiness_reasons: Sequence[str] = ()
    readiness_since: float | None = None
    readiness_share: float | None = None
    firing: Sequence[str] = ()
    pending: Sequence[str] = ()
    ttl: float | None = None
    read_at: float | None = None
    # what people read for a label of firing/pending ("latency on health" for an incident id)
    names: Mapping[str, str] | None = None

    def named(self, labels: Sequence[str]) -> str:
        names = self.names or {}
        return ", ".join(names.get(label, label) for label in labels)


@dataclass(slots=True)
class Change:
    """A weight change issued and not yet confirmed INSYNC.

    `unknown` says nobody knows whether it landed: the daemon restarted while it was in
    flight, or the writer gave up. The plan then reads Route53 before anything else: the
    target weights confirm it, the previous ones mean it never landed (tried again), anything
    else is a hand change.
    """

    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    seq: Count
    kind: ChangeKind
    share: Percent
    weights: dict[str, Weight]
    previous: dict[str, Weight] | None
    issued_at: float
    index: Count | None = None  # the step it goes to, for a step
    attempts: Count = 1
    unknown: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "share": self.share,
            "weights": dict(self.weights),
            "previous": None if self.previous is None else dict(self.previous),
            "issued_at": self.issued_at,
            "index": self.index,
            "attempts": self.attempts,
            "unknown": self.unknown,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Transition:
    """One line of the plan's history: when, in which state, and what happened."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    at: float
    state: Phase
    reason: Text

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "state": self.state.value, "reason": self.reason}
