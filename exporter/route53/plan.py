"""The guarded shift plan: when to move the Route53 weights a step, and when to roll them back.

A pure state machine: every method takes the time as an argument, reads no clock and does no
I/O except `save`/`load`. The runner (runner.py) feeds it one `Observation` per evaluation and
carries out the `Action`s it returns (write weights with `write.Route53Writer`, post to Slack),
then reports each write's outcome with `change_applied` or `change_failed`.

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

Around it, each with one job: model.py holds its terms (settings, observation, phases, the
change in flight), actions.py what it asks for, words.py the sentences of its news and history,
explain.py its status (where it stands, why it waits) and record.py its file, shift.json. The
plan asks words.py and explain.py for words only: its decisions, the gate (`blockers`) included,
stay here.

A dry run walks the same states but writes nothing: it trusts its own (unwritten) weights, and
every text it produces (notifications, history, why it waits) starts with "DRY RUN:", says what
it *would* set and what Route53 really holds, as last read.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from exporter.alerting.outbox import Notification
from exporter.errors import Refused
from exporter.judging.readiness import Verdict
from exporter.route53.actions import Action, Notify, NotifyKind, SetWeights
from exporter.route53.explain import ShiftStatus, explain, where
from exporter.route53.model import (
    ALIAS_TTL,
    EPS,
    Change,
    Observation,
    PausedBy,
    Phase,
    ShiftSettings,
    Transition,
    candidate_percent,
    weights_for,
)
from exporter.route53.read import normalize_name
from exporter.route53.record import STATE_VERSION, ShiftRecord, shift_file
from exporter.route53.words import (
    DRY_RUN,
    approval_news,
    done_news,
    dry,
    format_left,
    go_text,
    landed_news,
    pct,
    plan_text,
    rollback_news,
    stopped,
    would_set,
)

# ShiftPlan, and the names its callers have always imported from here
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

HISTORY_LIMIT: Final = 50
# A step whose write keeps failing (after the writer's own retries) pauses the plan after this
# many tries; a rollback is retried for as long as it takes.
MAX_STEP_ATTEMPTS: Final = 3
# Route53's weights split a share to within half of 1/255: a verdict's step at a share this
# close to the plan's is at the plan's share
SHARE_TOLERANCE: Final = 100.0 / 255.0 / 2.0 + EPS
NOT_JUDGED: Final = "readiness not judged yet"


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
    # Not persisted: the last observation (the gate and status() read it), and the two
    # platforms' weights Route53 holds, as last read (or confirmed INSYNC)
    observed: Observation | None = None
    route53: dict[str, int | None] | None = None
    _seen: tuple[str, ...] = ()  # the last evaluation's firing labels: noted when they change

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
        return next((i for i, s in enumerate(steps) if abs(s - share) < EPS), None)

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
        """Where the plan stands and why it waits, as people read it (explain.py words it)."""
        return explain(self, now)

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
        self.observed = obs
        if observation.weights is not None and (self.settings.dry_run or obs.weights is not None):
            # a dry run never moves them: every read is what Route53 holds; otherwise a read
            # older than the last confirmed change is older than what INSYNC already told
            self.route53 = self.settings.pair(observation.weights)
        if obs.weights is not None:
            # None is an alias record's answer, not "unknown": only a fresh read says
            self.ttl = None if obs.ttl is None else float(obs.ttl)
        self.firing = tuple(obs.firing)
        weights = None if obs.weights is None else self.settings.pair(obs.weights)
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

        if self.phase in (Phase.HOLDING, Phase.WAITING_APPROVAL) and not self.blockers(now):
            s = self.settings
            go = go_text(s, self.share, self._judged())
            if self.next_index is None:
                noted, told = done_news(s, self.share, go, self.route53)
                self._move(now, Phase.DONE, noted)
                actions.append(self._tell("done", told))
            elif s.mode == "auto":
                actions += self._issue_step(now, self.next_index, go)
            elif self.phase is Phase.HOLDING:
                noted, told = approval_news(s, go, s.steps[self.next_index], self.route53)
                self._move(now, Phase.WAITING_APPROVAL, noted)
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
        self._note(now, f"{what} to {pct(change.share)} failed: {error}")
        return [
            self._tell(
                "change_failed",
                f"{self.settings.record}: setting {self.settings.candidate} to "
                f"{pct(change.share)} failed: {error}; checking Route53 before trying again",
            )
        ]

    # --- control: a person's word ---------------------------------------------------------

    def pause(self, now: float, reason: str = "paused by a person") -> list[Action]:
        if self.phase is Phase.DONE:
            raise Refused(f"nothing to pause: {where(self, now)}")
        if self.phase is Phase.PAUSED:
            raise Refused(f"already paused ({self.pause_reason})")
        if self.phase is Phase.ROLLED_BACK:
            raise Refused(f"already stopped: {stopped(self.settings)}; resume to continue")
        self.paused_by, self.pause_reason = "person", reason
        self._move(now, Phase.PAUSED, reason)
        return [self._tell("paused", f"{self.settings.record}: shift paused ({reason})")]

    def _named(self, labels: Sequence[str]) -> str:
        obs = self.observed
        return obs.named(labels) if obs is not None else ", ".join(labels)

    def resume(self, now: float, reason: str = "resumed by a person") -> list[Action]:
        if self.phase not in (Phase.PAUSED, Phase.ROLLED_BACK):
            raise Refused(f"not paused: {where(self, now)}")
        if self.firing:
            raise Refused(
                f"cannot resume while a regression is firing ({self._named(self.firing)}): "
                "wait until it resolves"
            )
        change = self.in_flight
        if self.phase is Phase.ROLLED_BACK and change is not None:
            raise Refused(f"the rollback to {pct(change.share)} is still being applied")
        text = reason
        if self.paused_by == "hand_change":
            # The person's weights stand: take them as they are at the next read.
            self.written = None
            self.failed_share = None
            text += "; taking the weights found in Route53 as the new starting point"
            self._move(now, Phase.HOLDING, text)
        elif self.phase is Phase.ROLLED_BACK:
            failed = self.failed_share if self.failed_share is not None else self.share or 0.0
            below = [i for i, s in enumerate(self.settings.steps) if s < failed - EPS]
            self.next_index = below[-1] if below else 0
            self.failed_share = None
            goal = pct(self.settings.steps[self.next_index])
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
            raise Refused(f"nothing to approve: {where(self, now)}")
        blockers = self.blockers(now)
        if blockers:
            raise Refused(f"cannot approve now: {'; '.join(blockers)}")
        assert self.next_index is not None
        goal = pct(self.settings.steps[self.next_index])
        actions = self._issue_step(now, self.next_index, f"approved: {goal}")
        told = f"{self.settings.record}: step to {goal} approved"
        if self.settings.dry_run and self.in_flight is not None:
            told += f"; {would_set(self.settings, self.in_flight, self.route53)}"
        return [self._tell("approved", told), *actions]

    def rollback(self, now: float, reason: str = "rollback asked by a person") -> list[Action]:
        if self.phase is Phase.ROLLED_BACK:
            raise Refused(
                f"already stopped: {stopped(self.settings)}"
                if self.settings.dry_run
                else f"already rolled back to {pct(self.settings.rollback_to)}"
            )
        if not self._exposed():
            raise Refused(
                f"nothing to roll back: the candidate is at {pct(self.share)} "
                f"(rollback_to is {pct(self.settings.rollback_to)})"
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
                f"restarted with the change to {pct(plan.in_flight.share)} in flight: "
                "reading Route53 before anything else",
            )
        return plan

    def save(self, path: str | os.PathLike[str]) -> None:
        """Replace the file atomically; raises OSError when the disk refuses."""
        shift_file(path).save(self.record())

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
        plan = shift_file(path).load(lambda record: cls.from_record(record, settings, at), at)
        return plan if plan is not None else cls(settings)

    # --- inside ----------------------------------------------------------------------------

    def _needs_hold(self) -> bool:
        return self.share is not None and self.share > self.settings.rollback_to + EPS

    def _exposed(self) -> bool:
        """Does the candidate carry (or is it being given) more than rollback_to?"""
        shares = [self.share or 0.0]
        if self.in_flight is not None and self.in_flight.kind == "step":
            shares.append(self.in_flight.share)
        return max(shares) > self.settings.rollback_to + EPS

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
        obs = self.observed
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

    def blockers(self, now: float) -> list[str]:
        """The gate: why the plan may not advance now (none: it may), from the last observation."""
        out: list[str] = []
        left = self._floor_left(now)
        if left and self.phase is Phase.HOLDING:
            out.append(f"DNS: {format_left(left)} left of the record's TTL + margin")
        obs = self.observed
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

    def _note(self, now: float, reason: str) -> None:
        text = dry(reason) if self.settings.dry_run else reason
        self.history.append(Transition(now, self.phase, text))
        del self.history[:-HISTORY_LIMIT]

    def _tell(self, kind: NotifyKind, text: str, about: tuple[str, ...] = ()) -> Notify:
        if self.settings.dry_run:
            return Notify(kind, dry(text), about, dry_run=True)
        return Notify(kind, text, about)

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
        above = [i for i, step in enumerate(s.steps) if step > share + EPS]
        self.next_index = above[0] if above else None
        found = ", ".join(f"{p} {w}" for p, w in self.written.items())
        self._note(now, f"found {found} in Route53 ({s.candidate} at {pct(share)})")

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
        doing = (
            would_set(s, change, self.route53)
            if s.dry_run
            else f"setting {s.candidate} to {pct(share)}"
        )
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
        noted, told = rollback_news(s, change, failed, reason, self.route53)
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
        if not s.dry_run:
            self.route53 = s.pair(change.weights)  # INSYNC: Route53 holds them now
        noted, told = landed_news(s, change, was, how, self.route53, self.hold)
        if change.kind == "rollback":
            self._note(now, noted)
            return [self._tell("rolled_back", told, self.firing)]
        assert change.index is not None
        self.next_index = change.index + 1 if change.index + 1 < len(s.steps) else None
        if self.phase is Phase.RUNNING:
            self._move(now, Phase.HOLDING, noted)
        else:
            self._note(now, noted)
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
            self._note(now, f"the change to {pct(change.share)} did not land; staying paused")
            return []
        if change.kind == "step" and change.attempts >= MAX_STEP_ATTEMPTS:
            self.in_flight = None
            reason = (
                f"setting {pct(change.share)} failed {change.attempts} times: "
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
        reason = f"the {what} to {pct(change.share)} did not land: trying again"
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
            above = [i for i, s in enumerate(steps) if s > self.share + EPS]
            self.next_index = above[0] if above else None
        elif self.next_index is not None:
            self.next_index = min(self.next_index, len(steps) - 1)
        if self.in_flight is not None and self.in_flight.index is not None:
            match = [i for i, s in enumerate(steps) if abs(s - self.in_flight.share) < EPS]
            self.in_flight.index = match[0] if match else None
            if not match:
                # a step that is no longer in the plan: land on it, then go on from there
                above = [i for i, s in enumerate(steps) if s > self.in_flight.share + EPS]
                self.in_flight.index = (above[0] - 1) if above else len(steps) - 1
        if self.phase is Phase.DONE and self.next_index is not None:
            self.phase = Phase.HOLDING
        self._note(now, f"steps are now {plan_text(steps)}")
