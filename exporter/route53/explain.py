"""Where a shift plan stands and why it waits: the status people read.

For the status page, /api/v1/status, the metrics and `cutover shift status`, and for the words
of a refusal (`where`). It reads a plan (`PlanView`, which `ShiftPlan` is) and changes nothing:
the plan asks it for words, never for a decision. The sentences themselves are in words.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from exporter.route53.model import Change, Observation, PausedBy, Phase, ShiftSettings, Transition
from exporter.route53.words import (
    DRY_RUN,
    dry,
    format_left,
    pct,
    real_share,
    real_text,
    stopped,
    weights_text,
    would_set,
)

__all__ = ["PlanView", "ShiftStatus", "explain", "where"]


class PlanView(Protocol):
    """What explaining a plan reads of it; `ShiftPlan` is one."""

    settings: ShiftSettings
    phase: Phase
    share: float | None
    written: dict[str, int] | None
    next_index: int | None
    since: float | None
    in_flight: Change | None
    paused_by: PausedBy | None
    pause_reason: str | None
    failed_share: float | None
    history: list[Transition]
    observed: Observation | None  # the last observation
    route53: dict[str, int | None] | None  # the two platforms' weights, as last read

    @property
    def current_step(self) -> int | None: ...

    @property
    def hold(self) -> float: ...

    def hold_left(self, now: float) -> float | None: ...

    def blockers(self, now: float) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class ShiftStatus:
    """What the status page, /api/v1/status and the metrics show about the plan."""

    state: Phase
    record: str
    mode: str
    dry_run: bool
    steps: tuple[float, ...]
    current_step: int | None  # index into steps of the share Route53 has now; None between steps
    next_step: int | None  # index of the step the plan goes to next; None when none is left
    share: float | None  # the candidate's percent as last written (or found); None before a read
    target_share: float | None  # what it is being moved to while a change is in flight, else share
    target_weights: Mapping[str, int] | None
    hold: float  # seconds, already raised to TTL + margin
    hold_left: float | None  # seconds; None where no hold applies
    since: float | None  # when the current share began: the hold and the sample counts start here
    waiting: tuple[str, ...]  # why the plan is not moving, most important first
    paused_by: str | None
    in_flight: Mapping[str, Any] | None
    failed_share: float | None
    history: tuple[Transition, ...]
    # what Route53 holds, as last read (in a dry run, not what the plan pretends it wrote): the
    # two platforms' weights (a missing record set left out) and the candidate's percent
    real_weights: Mapping[str, int] | None = None
    real_share: float | None = None
    # one line: where the plan stands beside what Route53 holds ("DRY RUN: would ..." when dry)
    position: str = ""

    @property
    def why(self) -> str:
        if not self.dry_run or not self.waiting:
            return "; ".join(self.waiting)
        return dry("; ".join(w.removeprefix(f"{DRY_RUN}: ") for w in self.waiting))

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "record": self.record,
            "mode": self.mode,
            "dry_run": self.dry_run,
            "steps": list(self.steps),
            "current_step": self.current_step,
            "next_step": self.next_step,
            "share": self.share,
            "target_share": self.target_share,
            "target_weights": None if self.target_weights is None else dict(self.target_weights),
            "hold_seconds": self.hold,
            "hold_left_seconds": self.hold_left,
            "since": self.since,
            "waiting": list(self.waiting),
            "why": self.why,
            "paused_by": self.paused_by,
            "in_flight": None if self.in_flight is None else dict(self.in_flight),
            "failed_share": self.failed_share,
            "history": [t.to_dict() for t in self.history],
            "real_weights": None if self.real_weights is None else dict(self.real_weights),
            "real_share": self.real_share,
            "position": self.position,
        }


def explain(plan: PlanView, now: float) -> ShiftStatus:
    """The plan as the status page, /api/v1/status and the metrics show it."""
    s = plan.settings
    target = plan.in_flight
    real = plan.route53
    return ShiftStatus(
        state=plan.phase,
        record=s.record,
        mode=s.mode,
        dry_run=s.dry_run,
        steps=s.steps,
        current_step=plan.current_step,
        next_step=plan.next_index,
        share=plan.share,
        target_share=target.share if target is not None else plan.share,
        target_weights=dict(target.weights if target is not None else plan.written or {}) or None,
        hold=plan.hold,
        hold_left=plan.hold_left(now),
        since=plan.since,
        waiting=tuple(dry(w) if s.dry_run else w for w in _waiting(plan, now)),
        paused_by=plan.paused_by,
        in_flight=None if target is None else target.to_dict(),
        failed_share=plan.failed_share,
        history=tuple(plan.history),
        real_weights=None if real is None else {p: w for p, w in real.items() if w is not None},
        real_share=real_share(s, real),
        position=_position(plan),
    )


def where(plan: PlanView, now: float) -> str:
    """holding at 25% (3m left), applying 50%, ...: where the plan stands, in a few words."""
    s = plan.settings
    if plan.phase is Phase.HOLDING:
        left = plan.hold_left(now)
        at = f"holding at {pct(plan.share)}" + (" (nothing written)" if s.dry_run else "")
        return at + (f" ({format_left(left)} left)" if left else "")
    if plan.phase is Phase.RUNNING and plan.in_flight is not None:
        if s.dry_run:
            return would_set(s, plan.in_flight, plan.route53)
        return f"applying {pct(plan.in_flight.share)}"
    if plan.phase is Phase.DONE:
        would = "would be" if s.dry_run else "is"
        return f"the shift {would} done at {pct(plan.share)}"
    if plan.phase is Phase.ROLLED_BACK:
        return f"stopped: {stopped(s)}"
    return plan.phase.value.replace("_", " ")


def _waiting(plan: PlanView, now: float) -> list[str]:
    """Why the plan is not moving, most important first."""
    s = plan.settings
    change = plan.in_flight
    flight: list[str] = []
    if change is not None:
        if change.unknown:
            cause = f"the write failed: {change.error}" if change.error else "after a restart"
            flight.append(
                f"checking whether the change to {pct(change.share)} landed ({cause}): "
                "waiting for the Route53 weights"
            )
        elif s.dry_run:
            flight.append(would_set(s, change, plan.route53))
        else:
            flight.append(f"applying {pct(change.share)}: waiting for Route53 (INSYNC)")
    if plan.phase is Phase.RUNNING:
        return flight
    if plan.phase is Phase.DONE:
        return []
    if plan.phase is Phase.PAUSED:
        return [f"{plan.pause_reason}; resume to continue", *flight]
    if plan.phase is Phase.ROLLED_BACK:
        if s.dry_run:
            text = f"stopped: would roll {s.candidate} back to {pct(s.rollback_to)}"
            text += f" ({plan.pause_reason})" if plan.pause_reason else ""
            still = real_text(s, plan.route53, still=True)
            return [f"{text}; {still}; resume to continue", *flight]
        text = f"rolled back to {pct(s.rollback_to)}"
        if plan.pause_reason:
            text += f" ({plan.pause_reason})"
        if plan.paused_by == "hand_change":
            text += "; the weights were then changed by hand"
        return [f"{text}; resume to continue", *flight]
    if plan.written is None:
        obs = plan.observed
        if obs is not None and obs.weights is not None:
            found = ", ".join(f"{p}={w}" for p, w in s.pair(obs.weights).items())
            return [f"a record set is missing in Route53 ({found.replace('None', '-')})"]
        return ["waiting for the Route53 weights"]
    blockers = plan.blockers(now)
    if plan.phase is Phase.WAITING_APPROVAL and plan.next_index is not None:
        goal = pct(s.steps[plan.next_index])
        return [f"waiting for approval to go to {goal}", *blockers]
    return blockers


def _position(plan: PlanView) -> str:
    """Where the plan stands beside what Route53 holds, in one line."""
    s = plan.settings
    cand, change, written, real = s.candidate, plan.in_flight, plan.written, plan.route53
    if s.dry_run:
        if change is not None:
            return dry(would_set(s, change, real))
        if written is None:
            return dry(f"nothing written; {real_text(s, real)}")
        return dry(
            f"acting as if {cand} were at {pct(plan.share)} "
            f"({weights_text(written, s.platforms)}); nothing written; "
            f"{real_text(s, real)}"
        )
    if change is not None:
        return (
            f"{cand} at {pct(plan.share)}, moving to {pct(change.share)} "
            f"({weights_text(change.weights, s.platforms)}); {real_text(s, real)}"
        )
    if written is None:
        return real_text(s, real)
    if real is not None and real == s.pair(written):
        return f"{cand} at {pct(plan.share)} ({weights_text(written, s.platforms)})"
    return (
        f"{cand} at {pct(plan.share)} as written "
        f"({weights_text(written, s.platforms)}); {real_text(s, real)}"
    )
