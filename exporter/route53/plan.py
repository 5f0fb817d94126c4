"""The guarded shift plan: when to move the Route53 weights a step, and when to roll them back.

A pure state machine: every method takes the time as an argument, reads no clock and does no
I/O except `save`/`load`. The daemon feeds it one `Observation` per evaluation and carries out
the `Action`s it returns (write weights with `route53_write.Route53Writer`, post to Slack), then
reports each write's outcome with `change_applied` or `change_failed`.

    states        running           a weight change is in flight (issued, not yet INSYNC)
                  holding           at a share: waiting for the readiness verdict GO
                  waiting_approval  (manual mode) readiness said GO: a person must approve the step
                  paused            by a person, by a hand change of the weights, or by failing writes
                  rolled_back       the candidate was set to `rollback_to`; a person must resume
                  done              the last step held

The gate is the readiness verdict of the record's current step (exporter/judging/readiness.py,
kept by the step ledger): the plan moves only on GO, for its own current step (a verdict on the
step before its last change is not judged yet), with nothing firing or pending, and, above
`rollback_to`, not before the record's TTL + ttl_margin since the change, so that resolvers
saw it. A control call that does not apply raises `Refused`, whose text is meant for the person
who made it.

A dry run walks the same states but writes nothing: it trusts its own (unwritten) weights, and
every text it produces (notifications, history, why it waits) starts with "DRY RUN:", says what
it *would* set and what Route53 really holds, as last read.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import ConfigDict, Field

from exporter.alerting.outbox import STRICT, Notification
from exporter.errors import Refused
from exporter.judging.readiness import Verdict
from exporter.route53.read import normalize_name
from exporter.store.local import StateFile

__all__ = [
    "ALIAS_TTL",
    "DRY_RUN",
    "HISTORY_LIMIT",
    "Action",
    "Change",
    "Notify",
    "Observation",
    "Phase",
    "Refused",
    "SetWeights",
    "ShiftPlan",
    "ShiftSettings",
    "ShiftStatus",
    "Transition",
    "candidate_percent",
    "dry",
    "format_left",
    "plan_text",
    "weights_for",
]

STATE_VERSION: Final = 1
HISTORY_LIMIT: Final = 50
# An alias record has no TTL of its own; answers carry the target's (60 s for ELB/ALB/NLB).
ALIAS_TTL: Final = 60.0
# A step whose write keeps failing (after the writer's own retries) pauses the plan after this
# many tries; a rollback is retried for as long as it takes.
MAX_STEP_ATTEMPTS: Final = 3
_EPS: Final = 1e-6
# Route53's weights split a share to within half of 1/255: a verdict's step at a share this
# close to the plan's is at the plan's share
SHARE_TOLERANCE: Final = 100.0 / 255.0 / 2.0 + _EPS
NOT_JUDGED: Final = "readiness not judged yet"

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
        if abs(scaled - round(scaled)) < _EPS:
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


def format_left(seconds: float) -> str:
    """4m 12s, 1h 5m, 42s: how long a person still has to wait."""
    s = max(0, math.ceil(seconds))
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def _pct(share: float | None) -> str:
    return "?" if share is None else f"{share:g}%"


DRY_RUN: Final = "DRY RUN"


def dry(text: str) -> str:
    """`text` marked as a dry run's, once: "DRY RUN: ..." unless it says so already."""
    return text if DRY_RUN in text else f"{DRY_RUN}: {text}"


def plan_text(steps: Sequence[float], current: int | None = None) -> str:
    """10% → [25%] → 50% → 100%: the steps as a person reads them, the current one bracketed."""
    return " → ".join(f"[{_pct(s)}]" if i == current else _pct(s) for i, s in enumerate(steps))


def _weights_text(weights: Mapping[str, int | None], order: Sequence[str]) -> str:
    """heroku 90, aws 10 (a missing record set shows as -)."""
    return ", ".join(f"{p} {'-' if weights.get(p) is None else weights.get(p)}" for p in order)


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


@dataclass(frozen=True, slots=True)
class SetWeights:
    """Write these weights (one atomic batch), then call change_applied/change_failed with seq.

    `expected` is what the plan believes Route53 holds now: pass it to the writer so that a
    weight changed by hand since the last read is refused, not overwritten. None for a
    rollback, which must happen whatever the weights are.
    """

    seq: int
    share: float
    weights: Mapping[str, int]
    expected: Mapping[str, int] | None
    rollback: bool
    reason: str


NotifyKind = Literal[
    "step",
    "rollback",
    "rolled_back",
    "paused",
    "resumed",
    "hand_change",
    "waiting_approval",
    "approved",
    "change_failed",
    "done",
]


@dataclass(frozen=True, slots=True)
class Notify:
    """Something a person should hear about (Slack); `about` holds the firing alerts' labels."""

    kind: NotifyKind
    text: str
    about: tuple[str, ...] = ()
    dry_run: bool = False  # news of a plan that writes nothing


Action = SetWeights | Notify


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
    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    at: float
    state: Phase
    reason: Text

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "state": self.state.value, "reason": self.reason}


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


@dataclass(slots=True)
class ShiftRecord:
    """shift.json: the plan's position, the change in flight, and the messages it still owes."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    version: Literal[1]
    record: Text
    dry_run: bool
    phase: Phase
    steps: list[float] | None = None
    share: Percent | None = None
    written: dict[str, Weight] | None = None
    next_index: Count | None = 0
    since: float | None = None
    in_flight: Change | None = None
    paused_by: PausedBy | None = None
    pause_reason: Text | None = None
    failed_share: Percent | None = None
    seq: Count = 0
    fresh_after: float | None = None
    changed_at: float | None = None
    ttl: float | None = None
    firing: list[Text] = field(default_factory=list)
    history: list[Transition] = field(default_factory=list)
    owed: list[Notification] = field(default_factory=list)


@dataclass(slots=True)
class ShiftPlan:
    """The plan's state. Build with `ShiftPlan(settings)` or `ShiftPlan.load(path, settings)`."""

    settings: ShiftSettings
    phase: Phase = Phase.HOLDING
    share: float | None = None
    # The weights cutover last wrote (or found and adopted). None: adopt the next read.
    written: dict[str, int] | None = None
    next_index: int | None = 0
    since: float | None = None
    in_flight: Change | None = None
    paused_by: PausedBy | None = None
    pause_reason: str | None = None
    failed_share: float | None = None
    seq: int = 0
    # when the last change's outcome became known: weights read earlier predate it
    fresh_after: float | None = None
    # when the change that set the current weights was issued (None: weights found, not
    # written): a readiness step that began earlier is the one before it
    changed_at: float | None = None
    ttl: float | None = None
    firing: tuple[str, ...] = ()
    history: list[Transition] = field(default_factory=list)
    # news of transitions that the outbox does not hold yet: saved with the state that caused
    # them, handed over after the save, settled once the outbox has them
    owed: list[Notification] = field(default_factory=list)
    # the last observation and its time: status() explains waiting with it; not persisted
    _last: Observation | None = None
    _seen: tuple[str, ...] = ()
    # the two platforms' weights Route53 holds, as last read (or confirmed INSYNC); not persisted
    _real: dict[str, int | None] | None = None

    # --- what the daemon reads ------------------------------------------------------------

    @property
    def state(self) -> Phase:
        return self.phase

    @property
    def hold(self) -> float:
        return self.settings.hold_for(self.ttl)

    @property
    def floor(self) -> float:
        """The record's TTL + ttl_margin: the least time at a share after a change."""
        return self.settings.floor_for(self.ttl)

    @property
    def current_step(self) -> int | None:
        share = self.share
        if share is None:
            return None
        steps = self.settings.steps
        return next((i for i, s in enumerate(steps) if abs(s - share) < _EPS), None)

    def hold_left(self, now: float) -> float | None:
        """Seconds of hold left at the current share; None where no hold applies.

        The readiness hold counts from the verdict's step (from `since` until there is one for
        this share), the TTL floor from `since`.
        """
        if self.since is None or not self._needs_hold():
            return None
        judged = self._judged()
        began = judged.readiness_since if judged is not None else None
        began = self.since if began is None else began
        return max(0.0, began + self.settings.hold - now, self._floor_left(now) or 0.0)

    def _floor_left(self, now: float) -> float | None:
        if self.since is None or not self._needs_hold():
            return None
        return max(0.0, self.since + self.floor - now)

    def status(self, now: float) -> ShiftStatus:
        target = self.in_flight
        return ShiftStatus(
            state=self.phase,
            record=self.settings.record,
            mode=self.settings.mode,
            dry_run=self.settings.dry_run,
            steps=self.settings.steps,
            current_step=self.current_step,
            next_step=self.next_index,
            share=self.share,
            target_share=target.share if target is not None else self.share,
            target_weights=dict(target.weights if target is not None else self.written or {})
            or None,
            hold=self.hold,
            hold_left=self.hold_left(now),
            since=self.since,
            waiting=tuple(dry(w) if self.settings.dry_run else w for w in self._waiting(now)),
            paused_by=self.paused_by,
            in_flight=None if target is None else target.to_dict(),
            failed_share=self.failed_share,
            history=tuple(self.history),
            real_weights=None
            if self._real is None
            else {p: w for p, w in self._real.items() if w is not None},
            real_share=self._real_share(),
            position=self._position(),
        )

    # --- one evaluation -------------------------------------------------------------------

    def step(self, now: float, observation: Observation) -> list[Action]:
        """Feed one evaluation; returns what to do, in order."""
        obs = observation
        if (
            obs.weights is not None
            and obs.read_at is not None
            and self.fresh_after is not None
            and obs.read_at < self.fresh_after
        ):
            obs = dataclasses.replace(obs, weights=None)
        self._last = obs
        if observation.weights is not None and (self.settings.dry_run or obs.weights is not None):
            # a dry run never moves them: every read is what Route53 holds; otherwise a read
            # older than the last confirmed change is older than what INSYNC already told
            self._real = self._two(observation.weights)
        if obs.weights is not None:
            # None is an alias record's answer, not "unknown": only a fresh read says
            self.ttl = None if obs.ttl is None else float(obs.ttl)
        self.firing = tuple(obs.firing)
        weights = self._two(obs.weights)
        actions: list[Action] = []

        landed: bool | None = None
        change = self.in_flight
        if change is not None and change.unknown and weights is not None:
            landed = self._reconcile(now, change, weights, actions)

        if obs.firing and self._guarded() and self._exposed():
            actions += self._roll_back(
                now, f"regression firing: {obs.named(obs.firing)}", tuple(obs.firing)
            )
            return actions

        change = self.in_flight
        if change is not None:
            if landed is False:
                actions += self._retry(now, change)
            return actions

        if self.phase is Phase.DONE:
            return actions

        if self.written is None:
            if weights is not None and self.phase is Phase.HOLDING:
                self._adopt(now, weights)
            return actions

        if (
            weights is not None
            and not self.settings.dry_run
            and weights != self.written
            and self.paused_by != "hand_change"
        ):
            actions += self._hand_change(now, weights)
            return actions

        if obs.firing and self.phase is Phase.HOLDING and set(obs.firing) != set(self._seen):
            # below the first step there is nothing to roll back: the verdict holds the plan
            self._note(now, f"regression firing: {obs.named(obs.firing)}; nothing to roll back")
        self._seen = tuple(obs.firing)

        if self.phase in (Phase.HOLDING, Phase.WAITING_APPROVAL) and not self._blockers(now):
            s = self.settings
            if self.next_index is None:
                if s.dry_run:
                    done = f"the shift would be done; {self._real_text()}"
                    told = (
                        f"{s.record}: the shift would be done: {s.candidate} would carry "
                        f"{_pct(self.share)} of the traffic; nothing written; {self._real_text()}"
                    )
                else:
                    done = "the shift is done"
                    told = (
                        f"{s.record}: {s.candidate} carries {_pct(self.share)} of the traffic: "
                        "the shift is done"
                    )
                self._move(now, Phase.DONE, f"{self._go_text()}: {done}")
                actions.append(self._tell("done", told))
            elif s.mode == "auto":
                actions += self._issue_step(now, self.next_index, self._go_text())
            elif self.phase is Phase.HOLDING:
                goal = _pct(s.steps[self.next_index])
                self._move(now, Phase.WAITING_APPROVAL, f"{self._go_text()}: approve {goal}")
                told = (
                    f"{s.record}: {self._go_text()}; approve to go to {goal} "
                    f"(nothing is written: {self._real_text()})"
                    if s.dry_run
                    else f"{s.record}: {self._go_text()}; approve to go to {goal}"
                )
                actions.append(self._tell("waiting_approval", told))
        return actions

    def change_applied(self, now: float, seq: int) -> list[Action]:
        """The writer confirmed change `seq` INSYNC (or wrote it dry). Stale seqs are ignored."""
        change = self.in_flight
        if change is None or change.seq != seq:
            return []
        return self._confirm(now, change, "INSYNC")

    def change_failed(self, now: float, seq: int, error: str) -> list[Action]:
        """The writer gave up on change `seq`; the next evaluation reads Route53 to see."""
        change = self.in_flight
        if change is None or change.seq != seq:
            return []
        change.unknown = True
        change.error = error
        self.fresh_after = now
        what = "rollback" if change.kind == "rollback" else "step"
        self._note(now, f"{what} to {_pct(change.share)} failed: {error}")
        return [
            self._tell(
                "change_failed",
                f"{self.settings.record}: setting {self.settings.candidate} to "
                f"{_pct(change.share)} failed: {error}; checking Route53 before trying again",
            )
        ]

    # --- control: a person's word ---------------------------------------------------------

    def pause(self, now: float, reason: str = "paused by a person") -> list[Action]:
        if self.phase is Phase.DONE:
            raise Refused(f"nothing to pause: {self._where(now)}")
        if self.phase is Phase.PAUSED:
            raise Refused(f"already paused ({self.pause_reason})")
        if self.phase is Phase.ROLLED_BACK:
            raise Refused(f"already stopped: {self._stopped()}; resume to continue")
        self.paused_by, self.pause_reason = "person", reason
        self._move(now, Phase.PAUSED, reason)
        return [self._tell("paused", f"{self.settings.record}: shift paused ({reason})")]

    def _named(self, labels: Sequence[str]) -> str:
        obs = self._last
        return obs.named(labels) if obs is not None else ", ".join(labels)

    def resume(self, now: float, reason: str = "resumed by a person") -> list[Action]:
        if self.phase not in (Phase.PAUSED, Phase.ROLLED_BACK):
            raise Refused(f"not paused: {self._where(now)}")
        if self.firing:
            raise Refused(
                f"cannot resume while a regression is firing ({self._named(self.firing)}): "
                "wait until it resolves"
            )
        change = self.in_flight
        if self.phase is Phase.ROLLED_BACK and change is not None:
            raise Refused(f"the rollback to {_pct(change.share)} is still being applied")
        text = reason
        if self.paused_by == "hand_change":
            # The person's weights stand: take them as they are at the next read.
            self.written = None
            self.failed_share = None
            text += "; taking the weights found in Route53 as the new starting point"
            self._move(now, Phase.HOLDING, text)
        elif self.phase is Phase.ROLLED_BACK:
            failed = self.failed_share if self.failed_share is not None else self.share or 0.0
            below = [i for i, s in enumerate(self.settings.steps) if s < failed - _EPS]
            self.next_index = below[-1] if below else 0
            self.failed_share = None
            goal = _pct(self.settings.steps[self.next_index])
            text += f"; going back to {goal} on readiness GO"
            self._move(now, Phase.HOLDING, text)
        elif change is not None:
            self._move(now, Phase.RUNNING, text)
        else:
            self._move(now, Phase.HOLDING, text)
        self.paused_by = self.pause_reason = None
        return [self._tell("resumed", f"{self.settings.record}: shift {text}")]

    def approve(self, now: float) -> list[Action]:
        if self.settings.mode != "manual":
            raise Refused("nothing to approve: the plan runs in auto mode")
        if self.phase is not Phase.WAITING_APPROVAL:
            raise Refused(f"nothing to approve: {self._where(now)}")
        blockers = self._blockers(now)
        if blockers:
            raise Refused(f"cannot approve now: {'; '.join(blockers)}")
        assert self.next_index is not None
        goal = _pct(self.settings.steps[self.next_index])
        actions = self._issue_step(now, self.next_index, f"approved: {goal}")
        told = f"{self.settings.record}: step to {goal} approved"
        if self.settings.dry_run and self.in_flight is not None:
            told += f"; {self._would_set(self.in_flight)}"
        return [self._tell("approved", told), *actions]

    def rollback(self, now: float, reason: str = "rollback asked by a person") -> list[Action]:
        if self.phase is Phase.ROLLED_BACK:
            raise Refused(
                f"already stopped: {self._stopped()}"
                if self.settings.dry_run
                else f"already rolled back to {_pct(self.settings.rollback_to)}"
            )
        if not self._exposed():
            raise Refused(
                f"nothing to roll back: the candidate is at {_pct(self.share)} "
                f"(rollback_to is {_pct(self.settings.rollback_to)})"
            )
        return self._roll_back(now, reason, ())

    def replace_settings(self, now: float, settings: ShiftSettings) -> None:
        """A reloaded config: keep the position, re-aim the next step at the new steps."""
        old = self.settings
        if normalize_name(old.record) != normalize_name(settings.record):
            raise ValueError("a plan for another record is a new plan: build a new ShiftPlan")
        if old.dry_run != settings.dry_run:
            raise ValueError("a plan that starts or stops writing is a new plan: build a new one")
        self.settings = settings
        if old.steps != settings.steps:
            self._reindex(now)

    # --- persistence ------------------------------------------------------------------------

    def record(self) -> ShiftRecord:
        return ShiftRecord(
            version=STATE_VERSION,
            record=normalize_name(self.settings.record),
            dry_run=self.settings.dry_run,
            steps=list(self.settings.steps),
            phase=self.phase,
            share=self.share,
            written=None if self.written is None else dict(self.written),
            next_index=self.next_index,
            since=self.since,
            in_flight=None if self.in_flight is None else dataclasses.replace(self.in_flight),
            paused_by=self.paused_by,
            pause_reason=self.pause_reason,
            failed_share=self.failed_share,
            seq=self.seq,
            fresh_after=self.fresh_after,
            changed_at=self.changed_at,
            ttl=self.ttl,
            firing=list(self.firing),
            history=list(self.history),
            owed=list(self.owed),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.record())

    @classmethod
    def from_record(cls, record: ShiftRecord, settings: ShiftSettings, now: float) -> ShiftPlan:
        """The plan saved in `record`; a state for another record or write mode starts afresh.

        A change that was in flight comes back as `unknown`: the plan reads Route53 before
        doing anything else, so a restart never applies a step twice nor skips one. Notifications
        still owed are kept whatever else happens: they are news about the past.
        """
        if record.record != normalize_name(settings.record):
            plan = cls(settings, owed=list(record.owed))
            plan._note(now, f"saved plan was for {record.record}: starting a new plan")
            return plan
        if record.dry_run is not settings.dry_run:
            plan = cls(settings, owed=list(record.owed))
            was = "a dry run" if record.dry_run else "writing to Route53"
            plan._note(now, f"saved plan was {was}: starting a new plan")
            return plan
        in_flight = record.in_flight
        if in_flight is not None:
            in_flight.unknown = True  # after a restart nobody knows whether it landed
        plan = cls(
            settings,
            phase=record.phase,
            share=record.share,
            written=record.written,
            next_index=record.next_index,
            since=record.since,
            in_flight=in_flight,
            paused_by=record.paused_by,
            pause_reason=record.pause_reason,
            failed_share=record.failed_share,
            seq=record.seq,
            fresh_after=record.fresh_after,
            changed_at=record.changed_at,
            ttl=record.ttl,
            firing=tuple(record.firing),
            history=record.history[-HISTORY_LIMIT:],
            owed=list(record.owed),
        )
        saved = tuple(record.steps) if record.steps is not None else None
        if saved != settings.steps:
            plan._reindex(now)
        elif plan.next_index is not None and not 0 <= plan.next_index < len(settings.steps):
            raise ValueError(f"next_index {plan.next_index} is not a step")
        if plan.in_flight is not None:
            plan._note(
                now,
                f"restarted with the change to {_pct(plan.in_flight.share)} in flight: "
                "reading Route53 before anything else",
            )
        return plan

    def save(self, path: str | os.PathLike[str]) -> None:
        """Replace the file atomically; raises OSError when the disk refuses."""
        StateFile[ShiftRecord](path, ShiftRecord).save(self.record())

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], settings: ShiftSettings, now: float | None = None
    ) -> ShiftPlan:
        """The plan saved at `path`, or a new one when there is none.

        Anything unreadable is moved aside to `<name>.corrupt-<unix time>` and reported as
        CorruptStateFile (a ValueError) naming both files; the caller decides whether to start
        afresh.
        """
        at = time.time() if now is None else now
        file = StateFile[ShiftRecord](path, ShiftRecord)
        plan = file.load(lambda record: cls.from_record(record, settings, at), at)
        return plan if plan is not None else cls(settings)

    # --- inside ----------------------------------------------------------------------------

    def _two(self, weights: Mapping[str, int | None] | None) -> dict[str, int | None] | None:
        if weights is None:
            return None
        s = self.settings
        return {s.baseline: weights.get(s.baseline), s.candidate: weights.get(s.candidate)}

    def _needs_hold(self) -> bool:
        return self.share is not None and self.share > self.settings.rollback_to + _EPS

    def _exposed(self) -> bool:
        """Does the candidate carry (or is it being given) more than rollback_to?"""
        shares = [self.share or 0.0]
        if self.in_flight is not None and self.in_flight.kind == "step":
            shares.append(self.in_flight.share)
        return max(shares) > self.settings.rollback_to + _EPS

    def _guarded(self) -> bool:
        """May a firing regression roll back now? Not once a person took the weights over."""
        if self.phase in (Phase.RUNNING, Phase.HOLDING, Phase.WAITING_APPROVAL):
            return True
        return self.phase is Phase.PAUSED and self.paused_by in ("person", "failure")

    def _judged(self) -> Observation | None:
        """The last observation, if its verdict is on the plan's current step; else None.

        A verdict on the step before the plan's last change (the ledger follows the weights a
        tick or a Route53 read later) or at another share says nothing of this one.
        """
        obs = self._last
        if obs is None or obs.readiness is None:
            return None
        if (
            obs.readiness_share is not None
            and self.share is not None
            and abs(obs.readiness_share - self.share) > SHARE_TOLERANCE
        ):
            return None
        if (
            obs.readiness_since is not None
            and self.changed_at is not None
            and obs.readiness_since < self.changed_at
        ):
            return None
        return obs

    def _blockers(self, now: float) -> list[str]:
        """Why the plan may not advance now, from the last observation."""
        out: list[str] = []
        left = self._floor_left(now)
        if left and self.phase is Phase.HOLDING:
            out.append(f"DNS: {format_left(left)} left of the record's TTL + margin")
        obs = self._last
        if obs is None:
            return [*out, "waiting for the first evaluation"]
        if obs.weights is None:
            out.append("waiting for a fresh read of the Route53 weights")
        if obs.firing:
            out.append(f"regression firing: {obs.named(obs.firing)}")
        if obs.pending:
            out.append(f"regression pending: {obs.named(obs.pending)}")
        judged = self._judged()
        if judged is None or judged.readiness is None:
            out.append(NOT_JUDGED)
        elif judged.readiness is Verdict.WAIT:
            out += list(judged.readiness_reasons) or ["readiness: WAIT"]
        elif judged.readiness is Verdict.NO_GO:
            first, *rest = list(judged.readiness_reasons) or ["readiness: NO-GO"]
            out += [first if first.startswith("readiness") else f"NO-GO: {first}", *rest]
        return out

    def _waiting(self, now: float) -> list[str]:
        change = self.in_flight
        flight: list[str] = []
        if change is not None:
            if change.unknown:
                cause = f"the write failed: {change.error}" if change.error else "after a restart"
                flight.append(
                    f"checking whether the change to {_pct(change.share)} landed ({cause}): "
                    "waiting for the Route53 weights"
                )
            elif self.settings.dry_run:
                flight.append(self._would_set(change))
            else:
                flight.append(f"applying {_pct(change.share)}: waiting for Route53 (INSYNC)")
        if self.phase is Phase.RUNNING:
            return flight
        if self.phase is Phase.DONE:
            return []
        if self.phase is Phase.PAUSED:
            return [f"{self.pause_reason}; resume to continue", *flight]
        if self.phase is Phase.ROLLED_BACK:
            s = self.settings
            if s.dry_run:
                text = f"stopped: would roll {s.candidate} back to {_pct(s.rollback_to)}"
                text += f" ({self.pause_reason})" if self.pause_reason else ""
                return [f"{text}; {self._real_text(still=True)}; resume to continue", *flight]
            text = f"rolled back to {_pct(self.settings.rollback_to)}"
            if self.pause_reason:
                text += f" ({self.pause_reason})"
            if self.paused_by == "hand_change":
                text += "; the weights were then changed by hand"
            return [f"{text}; resume to continue", *flight]
        if self.written is None:
            obs = self._last
            if obs is not None and obs.weights is not None:
                found = ", ".join(f"{p}={w}" for p, w in (self._two(obs.weights) or {}).items())
                return [f"a record set is missing in Route53 ({found.replace('None', '-')})"]
            return ["waiting for the Route53 weights"]
        blockers = self._blockers(now)
        if self.phase is Phase.WAITING_APPROVAL and self.next_index is not None:
            goal = _pct(self.settings.steps[self.next_index])
            return [f"waiting for approval to go to {goal}", *blockers]
        return blockers

    def _stopped(self) -> str:
        """Where a rollback left the plan: rolled back, or in a dry run, would have."""
        s = self.settings
        if s.dry_run:
            return f"would roll {s.candidate} back to {_pct(s.rollback_to)} (nothing written)"
        return f"rolled back to {_pct(s.rollback_to)}"

    def _where(self, now: float) -> str:
        dry_run = self.settings.dry_run
        if self.phase is Phase.HOLDING:
            left = self.hold_left(now)
            at = f"holding at {_pct(self.share)}" + (" (nothing written)" if dry_run else "")
            return at + (f" ({format_left(left)} left)" if left else "")
        if self.phase is Phase.RUNNING and self.in_flight is not None:
            if dry_run:
                return self._would_set(self.in_flight)
            return f"applying {_pct(self.in_flight.share)}"
        if self.phase is Phase.DONE:
            would = "would be" if dry_run else "is"
            return f"the shift {would} done at {_pct(self.share)}"
        if self.phase is Phase.ROLLED_BACK:
            return f"stopped: {self._stopped()}"
        return self.phase.value.replace("_", " ")

    def _go_text(self) -> str:
        """readiness GO for aws at 10% (held 31 min; 7 200 probes; ...): why the plan moves on."""
        s = self.settings
        if s.dry_run:  # on what it would have written: nothing was held, nothing is said held
            return f"readiness GO at {_pct(self.share)}"
        judged = self._judged()
        summary = "; ".join(judged.readiness_reasons) if judged is not None else ""
        text = f"readiness GO for {s.candidate} at {_pct(self.share)}"
        return f"{text} ({summary})" if summary else text

    def _note(self, now: float, reason: str) -> None:
        text = dry(reason) if self.settings.dry_run else reason
        self.history.append(Transition(now, self.phase, text))
        del self.history[:-HISTORY_LIMIT]

    def _tell(self, kind: NotifyKind, text: str, about: tuple[str, ...] = ()) -> Notify:
        if self.settings.dry_run:
            return Notify(kind, dry(text), about, dry_run=True)
        return Notify(kind, text, about)

    def _order(self) -> tuple[str, str]:
        return self.settings.baseline, self.settings.candidate

    def _real_share(self) -> float | None:
        if self._real is None:
            return None
        return candidate_percent(self._real, *self._order())

    def _real_text(self, still: bool = False) -> str:
        """Route53 holds aws 10% (heroku 90, aws 10): the weights as last read."""
        if self._real is None:
            return "Route53's weights not read yet"
        holds = "still holds" if still else "holds"
        return (
            f"Route53 {holds} {self.settings.candidate} {_pct(self._real_share())} "
            f"({_weights_text(self._real, self._order())})"
        )

    def _would_set(self, change: Change) -> str:
        """A dry run's change: what it would write, beside what Route53 holds."""
        wrote = _weights_text(change.weights, self._order())
        cand = self.settings.candidate
        if change.kind == "rollback":
            return (
                f"would roll {cand} back to {_pct(change.share)} ({wrote}); "
                f"{self._real_text(still=True)}"
            )
        return f"would set {cand} to {_pct(change.share)} ({wrote}); {self._real_text()}"

    def _position(self) -> str:
        """Where the plan stands beside what Route53 holds, in one line."""
        cand, change, written = self.settings.candidate, self.in_flight, self.written
        if self.settings.dry_run:
            if change is not None:
                return dry(self._would_set(change))
            if written is None:
                return dry(f"nothing written; {self._real_text()}")
            return dry(
                f"acting as if {cand} were at {_pct(self.share)} "
                f"({_weights_text(written, self._order())}); nothing written; "
                f"{self._real_text()}"
            )
        if change is not None:
            return (
                f"{cand} at {_pct(self.share)}, moving to {_pct(change.share)} "
                f"({_weights_text(change.weights, self._order())}); {self._real_text()}"
            )
        if written is None:
            return self._real_text()
        if self._real is not None and self._real == self._two(written):
            return f"{cand} at {_pct(self.share)} ({_weights_text(written, self._order())})"
        return (
            f"{cand} at {_pct(self.share)} as written "
            f"({_weights_text(written, self._order())}); {self._real_text()}"
        )

    def _move(self, now: float, phase: Phase, reason: str) -> None:
        self.phase = phase
        self._note(now, reason)

    def _adopt(self, now: float, weights: Mapping[str, int | None]) -> None:
        s = self.settings
        share = candidate_percent(weights, s.baseline, s.candidate)
        if share is None:
            return  # a record set is missing: status says so through the reader's warnings
        self.share = share
        self.written = {p: int(w) for p, w in weights.items() if w is not None}
        self.since = now
        self.changed_at = None
        above = [i for i, step in enumerate(s.steps) if step > share + _EPS]
        self.next_index = above[0] if above else None
        found = ", ".join(f"{p} {w}" for p, w in self.written.items())
        self._note(now, f"found {found} in Route53 ({s.candidate} at {_pct(share)})")

    def _issue_step(self, now: float, index: int, reason: str) -> list[Action]:
        s = self.settings
        share = s.steps[index]
        self.seq += 1
        change = Change(
            seq=self.seq,
            kind="step",
            share=share,
            weights=weights_for(share, s.baseline, s.candidate),
            previous=None if self.written is None else dict(self.written),
            issued_at=now,
            index=index,
        )
        self.in_flight = change
        doing = self._would_set(change) if s.dry_run else f"setting {s.candidate} to {_pct(share)}"
        self._move(now, Phase.RUNNING, f"{reason}: {doing}")
        return [self._set_weights(change, reason)]

    def _set_weights(self, change: Change, reason: str) -> SetWeights:
        expected = None if change.kind == "rollback" or change.previous is None else change.previous
        return SetWeights(
            seq=change.seq,
            share=change.share,
            weights=dict(change.weights),
            expected=None if expected is None else dict(expected),
            rollback=change.kind == "rollback",
            reason=reason,
        )

    def _roll_back(self, now: float, reason: str, about: tuple[str, ...]) -> list[Action]:
        s = self.settings
        flight = self.in_flight
        failed = flight.share if flight is not None and flight.kind == "step" else self.share
        self.failed_share = failed
        self.seq += 1
        change = Change(
            seq=self.seq,
            kind="rollback",
            share=s.rollback_to,
            weights=weights_for(s.rollback_to, s.baseline, s.candidate),
            previous=None if self.written is None else dict(self.written),
            issued_at=now,
        )
        self.in_flight = change
        self.paused_by, self.pause_reason = "rollback", reason
        if s.dry_run:
            wrote = _weights_text(change.weights, self._order())
            real = self._real_text(still=True)
            noted = f"would roll back from {_pct(failed)}: {reason}; {real}"
            told = (
                f"{s.record}: would roll {s.candidate} back from {_pct(failed)} to "
                f"{_pct(s.rollback_to)} ({wrote}): {reason}; nothing written; {real}"
            )
        else:
            noted = f"rolling back from {_pct(failed)}: {reason}"
            told = (
                f"{s.record}: rolling {s.candidate} back from {_pct(failed)} to "
                f"{_pct(s.rollback_to)}: {reason}"
            )
        self._move(now, Phase.ROLLED_BACK, noted)
        return [self._set_weights(change, reason), self._tell("rollback", told, about)]

    def _confirm(self, now: float, change: Change, how: str) -> list[Action]:
        s = self.settings
        was = self.share
        self.in_flight = None
        self.share = change.share
        self.written = dict(change.weights)
        self.since = now
        self.fresh_after = now
        self.changed_at = change.issued_at
        rollback = change.kind == "rollback"
        if s.dry_run:
            wrote = _weights_text(change.weights, self._order())
            real = self._real_text(still=rollback)
            text = f"acting as if {s.candidate} were at {_pct(change.share)} ({wrote}): "
            text += f"nothing written; {real}"
        else:
            self._real = self._two(change.weights)  # INSYNC: Route53 holds them now
            text = f"{s.candidate} at {_pct(change.share)} ({how})"
        if rollback:
            self._note(now, text)
            if s.dry_run:
                holds = (
                    "Route53's weights not read yet"
                    if self._real is None
                    else f"Route53 still holds {_pct(self._real_share())}: "
                    f"{_weights_text(self._real, self._order())}"
                )
                told = (
                    f"{s.record}: would roll {s.candidate} back to {_pct(change.share)} "
                    f"({holds}); the shift is paused until a person resumes"
                )
            else:
                told = (
                    f"{s.record}: {s.candidate} rolled back to {_pct(change.share)} "
                    f"(was {_pct(was)}); paused until a person resumes"
                )
            return [self._tell("rolled_back", told, self.firing)]
        assert change.index is not None
        self.next_index = change.index + 1 if change.index + 1 < len(s.steps) else None
        if self.phase is Phase.RUNNING:
            self._move(now, Phase.HOLDING, text)
        else:
            self._note(now, text)
        plan = plan_text(s.steps, change.index)
        if s.dry_run:
            told = (
                f"{s.record}: would set {s.candidate} to {_pct(change.share)} "
                f"({_weights_text(change.weights, self._order())}), was {_pct(was)}; "
                f"nothing written; {self._real_text()}; holding {format_left(self.hold)} "
                f"as if it were set; plan {plan}"
            )
        else:
            told = (
                f"{s.record}: {s.candidate} now gets {_pct(change.share)} of the traffic "
                f"(was {_pct(was)}); holding {format_left(self.hold)}; plan {plan}"
            )
        return [self._tell("step", told)]

    def _reconcile(
        self, now: float, change: Change, weights: Mapping[str, int | None], out: list[Action]
    ) -> bool | None:
        """After a restart or a failed write: did the change land? True, False, or None (hand)."""
        if weights == change.weights or self.settings.dry_run:
            out += self._confirm(now, change, "read back from Route53")
            return True
        if change.previous is None or weights == change.previous:
            return False
        # Neither ours before nor ours after: somebody else wrote them.
        self.in_flight = None
        out += self._hand_change(now, weights, since=change.previous)
        return None

    def _retry(self, now: float, change: Change) -> list[Action]:
        if change.kind == "step" and self.phase is Phase.PAUSED:
            # paused by a person while it was in flight: do not push it again
            self.in_flight = None
            self._note(now, f"the change to {_pct(change.share)} did not land; staying paused")
            return []
        if change.kind == "step" and change.attempts >= MAX_STEP_ATTEMPTS:
            self.in_flight = None
            reason = (
                f"setting {_pct(change.share)} failed {change.attempts} times: "
                f"{change.error or 'unknown error'}"
            )
            self.paused_by, self.pause_reason = "failure", reason
            self._move(now, Phase.PAUSED, reason)
            return [self._tell("paused", f"{self.settings.record}: shift paused: {reason}")]
        change.attempts += 1
        change.unknown = False
        change.error = None
        change.issued_at = now
        what = "rollback" if change.kind == "rollback" else "change"
        reason = f"the {what} to {_pct(change.share)} did not land: trying again"
        self._note(now, f"{reason} (attempt {change.attempts})")
        return [self._set_weights(change, reason)]

    def _hand_change(
        self,
        now: float,
        weights: Mapping[str, int | None],
        since: Mapping[str, int] | None = None,
    ) -> list[Action]:
        before = since if since is not None else self.written or {}
        diffs = ", ".join(
            f"{p} {before.get(p, '-')} -> {'-' if weights.get(p) is None else weights.get(p)}"
            for p in (self.settings.baseline, self.settings.candidate)
            if before.get(p) != weights.get(p)
        )
        reason = f"weights changed by hand: {diffs}"
        self.paused_by, self.pause_reason = "hand_change", reason
        if self.phase is Phase.ROLLED_BACK:
            self._note(now, reason)
        else:
            self._move(now, Phase.PAUSED, reason)
        return [
            self._tell(
                "hand_change",
                f"{self.settings.record}: {reason}. The shift is paused and will not overwrite "
                "them; resume to continue from the weights as they are",
            )
        ]

    def _reindex(self, now: float) -> None:
        steps = self.settings.steps
        if self.share is not None and self.phase is not Phase.ROLLED_BACK:
            above = [i for i, s in enumerate(steps) if s > self.share + _EPS]
            self.next_index = above[0] if above else None
        elif self.next_index is not None:
            self.next_index = min(self.next_index, len(steps) - 1)
        if self.in_flight is not None and self.in_flight.index is not None:
            match = [i for i, s in enumerate(steps) if abs(s - self.in_flight.share) < _EPS]
            self.in_flight.index = match[0] if match else None
            if not match:
                # a step that is no longer in the plan: land on it, then go on from there
                above = [i for i, s in enumerate(steps) if s > self.in_flight.share + _EPS]
                self.in_flight.index = (above[0] - 1) if above else len(steps) - 1
        if self.phase is Phase.DONE and self.next_index is not None:
            self.phase = Phase.HOLDING
        self._note(now, f"steps are now {plan_text(steps)}")
