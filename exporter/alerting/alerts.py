"""Incident lifecycle (pending, firing, resolved) as a pure state machine, and its persistence."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, Protocol

from pydantic import ConfigDict, Field

from exporter.alerting.outbox import STRICT, Notification
from exporter.judging.judge import SIGNALS, State, Verdict
from exporter.store.local import StateFile

STATE_VERSION: Final = 1
# Down is not a statistical guess: the candidate failed its last probes, so it fires at once.
IMMEDIATE_SIGNALS = frozenset({"down"})
# resolved incidents kept for the page's incident history, newest last
KEEP_RESOLVED: Final = 50

FigureValue = float | int | str | bool | None
# what a state file may hold in `figures`: NaN included, read back as None (`finite_figures`);
# an unknown figure is no reason to throw away the incidents around it
_SavedFigure = Annotated[float, Field(allow_inf_nan=True)] | int | str | bool | None


class JudgedFigures(Protocol):
    def as_dict(self) -> Mapping[str, FigureValue]: ...


class Judged(Protocol):
    """What `Alerts.update` reads of an evaluation: the probes' Evaluation, real traffic's
    TrafficEvaluation (exporter/judging/traffic.py)."""

    @property
    def figures(self) -> JudgedFigures: ...

    def verdicts(self) -> Iterable[Verdict]: ...


class Phase(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """The config's `alerting` timings, in seconds."""

    for_: float = 60.0
    resolve_after: float = 120.0
    repeat_interval: float = 3600.0

    def __post_init__(self) -> None:
        if self.for_ < 0 or self.resolve_after < 0 or self.repeat_interval <= 0:
            raise ValueError("for_ and resolve_after must be >= 0, repeat_interval > 0")


@dataclass(slots=True)
class Incident:
    """One regression of one signal on one check, from first sight to resolution.

    `notify` belongs to the notification layer (message ts, channel, ...): the machine only
    keeps and persists it.
    """

    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    id: str
    check: str
    signal: str
    started_at: float
    phase: Phase = Phase.PENDING
    fired_at: float | None = None
    resolved_at: float | None = None
    # first evaluation without the signal since it was last seen; None while it is present
    clear_since: float | None = None
    last_seen_at: float | None = None
    reminded_at: float | None = None
    figures: dict[str, _SavedFigure] = field(default_factory=dict)
    notify: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.check, self.signal)

    @property
    def duration(self) -> float:
        """From first sight to the last evaluation that still saw it (or now, if unresolved)."""
        end = self.clear_since if self.clear_since is not None else self.last_seen_at
        return max(0.0, (end if end is not None else self.started_at) - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "check": self.check,
            "signal": self.signal,
            "started_at": self.started_at,
            "phase": self.phase.value,
            "fired_at": self.fired_at,
            "resolved_at": self.resolved_at,
            "clear_since": self.clear_since,
            "last_seen_at": self.last_seen_at,
            "reminded_at": self.reminded_at,
            "figures": dict(self.figures),
            "notify": dict(self.notify),
        }

    def check_sense(self) -> None:
        """Raise ValueError for what the schema alone cannot refuse."""
        if not (self.id and self.check):
            raise ValueError("incident: empty id or check")
        if self.signal not in SIGNALS:
            raise ValueError(f"incident {self.id}: unknown signal {self.signal!r}")
        if self.phase is Phase.FIRING and self.fired_at is None:
            raise ValueError(f"incident {self.id}: firing without fired_at")


def finite_figures(figures: Mapping[str, FigureValue]) -> dict[str, FigureValue]:
    """The figures with NaN and infinities as None: what the state file can hold and give back."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in figures.items()
    }


@dataclass(slots=True)
class AlertsRecord:
    """alerts.json: the open incidents, the notifications their transitions still owe, and the
    last resolved incidents (optional: files written before it existed load without)."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    version: Literal[1]
    incidents: list[Incident]
    owed: list[Notification] = field(default_factory=list)
    resolved: list[Incident] = field(default_factory=list)


# Events carry the live incident: the notification layer writes its message ids into
# `incident.notify`, and the next save keeps them.


@dataclass(frozen=True, slots=True)
class Fired:
    """Post the message: the regression held for `for` (down: at once)."""

    incident: Incident


@dataclass(frozen=True, slots=True)
class Resolved:
    """Edit the message and reply how long it lasted: gone for `resolve_after`."""

    incident: Incident
    duration: float


@dataclass(frozen=True, slots=True)
class Reminder:
    """Reply in the thread: still firing after another `repeat_interval`."""

    incident: Incident


Event = Fired | Resolved | Reminder


def incident_id(check: str, signal: str, started_at: float) -> str:
    """Stable across restarts and readable in logs: check, signal and first sight in ms."""
    return f"{check}.{signal}.{round(started_at * 1000)}"


class Alerts:
    """Open incidents per (check, signal) and the transitions between them.

    Call `update(check, evaluation, now)` after every judge evaluation and act on the events it
    returns; `save` whenever `revision` moved (figures refresh without moving it). Nothing here
    reads a clock or touches a file except `save`/`load`.
    """

    def __init__(
        self, settings: AlertSettings | None = None, incidents: Iterable[Incident] = ()
    ) -> None:
        self.settings = settings if settings is not None else AlertSettings()
        self.revision = 0  # bumped by every transition worth persisting
        # notifications owed for transitions that the outbox does not hold yet (see `owe`)
        self.owed: list[Notification] = []
        # the last KEEP_RESOLVED resolved incidents, oldest first: the page's incident history
        self.resolved: list[Incident] = []
        self._open: dict[tuple[str, str], Incident] = {}
        for incident in incidents:
            if incident.phase is Phase.RESOLVED:
                self.resolved.append(incident)
                continue
            if incident.key in self._open:
                raise ValueError(f"two open incidents for {incident.check}/{incident.signal}")
            self._open[incident.key] = incident

    @property
    def incidents(self) -> tuple[Incident, ...]:
        """Open incidents, pending and firing, oldest first."""
        return tuple(sorted(self._open.values(), key=lambda i: (i.started_at, i.id)))

    def firing(self) -> tuple[Incident, ...]:
        return tuple(i for i in self.incidents if i.phase is Phase.FIRING)

    def get(self, check: str, signal: str) -> Incident | None:
        return self._open.get((check, signal))

    def update(self, check: str, evaluation: Judged, now: float) -> list[Event]:
        """Feed one evaluation of `check`; returns what to notify about, in order."""
        events: list[Event] = []
        for verdict in evaluation.verdicts():
            figures: dict[str, FigureValue] | None = None
            if verdict.state is State.REGRESSED or verdict.pending:
                figures = {**evaluation.figures.as_dict(), **verdict.as_dict()}
            event = self.observe(check, verdict, now, figures)
            if event is not None:
                events.append(event)
        return events

    def observe(
        self,
        check: str,
        verdict: Verdict,
        now: float,
        figures: Mapping[str, FigureValue] | None = None,
    ) -> Event | None:
        """Feed one signal's verdict; returns the event it causes, if any.

        A pending incident opens at the first verdict that is regressed or `pending` (credible
        evidence, not yet significant), stays open while they go on, and fires once `for` has
        passed since it opened and the current verdict is `significant` (down: at once). So the
        `for` clock starts when the evidence first shows, while firing still needs the full
        confidence. A firing incident is held and resolved on `regressed` alone: credible
        evidence neither keeps it alive nor reopens a resolving one.
        """
        key = (check, verdict.signal)
        incident = self._open.get(key)
        present = verdict.state is State.REGRESSED
        # too few samples says nothing either way: an open incident neither advances nor clears
        unknown = verdict.state is State.INCONCLUSIVE
        if incident is None or incident.phase is Phase.PENDING:
            # before firing, credible evidence counts as seen: the `for` clock runs from it
            present = present or verdict.pending
        if incident is None:
            if not present:
                return None
            incident = Incident(
                id=incident_id(check, verdict.signal, now),
                check=check,
                signal=verdict.signal,
                started_at=now,
            )
            self._open[key] = incident
            self.revision += 1

        if present:
            incident.last_seen_at = now
            if incident.clear_since is not None:
                incident.clear_since = None
                self.revision += 1
            if figures is not None:
                incident.figures = finite_figures(figures)

        if incident.phase is Phase.PENDING:
            if present:
                immediate = verdict.signal in IMMEDIATE_SIGNALS
                held = now - incident.started_at >= self.settings.for_
                # firing needs the evidence to clear the bar again now, not just to have held
                if verdict.significant and (immediate or held):
                    incident.phase = Phase.FIRING
                    incident.fired_at = now
                    incident.reminded_at = now
                    self.revision += 1
                    return Fired(incident)
                return None
            if unknown:
                return None
            del self._open[key]
            self.revision += 1
            return None

        # firing
        if not present and not unknown:
            if incident.clear_since is None:
                incident.clear_since = now
                self.revision += 1
            if now - incident.clear_since >= self.settings.resolve_after:
                incident.phase = Phase.RESOLVED
                incident.resolved_at = now
                del self._open[key]
                self._keep_resolved(incident)
                self.revision += 1
                return Resolved(incident, incident.duration)
            return None
        last = incident.reminded_at if incident.reminded_at is not None else incident.fired_at
        if (
            incident.clear_since is None
            and last is not None
            and now - last >= self.settings.repeat_interval
        ):
            incident.reminded_at = now
            self.revision += 1
            return Reminder(incident)
        return None

    def _keep_resolved(self, incident: Incident) -> None:
        self.resolved.append(incident)
        del self.resolved[:-KEEP_RESOLVED]

    def remove_check(self, check: str) -> list[Incident]:
        """Forget a check that left the configuration; returns its open incidents."""
        removed = [i for k, i in self._open.items() if k[0] == check]
        for incident in removed:
            del self._open[incident.key]
        self.revision += bool(removed)
        return removed

    # --- the notifications transitions owe ---------------------------------------------------

    def owe(self, notifications: Iterable[Notification]) -> None:
        """Keep notifications with the incidents until the outbox holds them (see `settle`).

        Saved in the same file as the transition that caused them, so that "the incident fired"
        and "its message is queued" are one durable step: a crash before the outbox took them
        leaves them here, and they are handed over again at the next start.
        """
        known = {n.key for n in self.owed}
        fresh = [n for n in notifications if n.key not in known]
        if fresh:
            self.owed.extend(fresh)
            self.revision += 1

    def settle(self, keys: Iterable[str]) -> None:
        """The outbox holds these: they are no longer owed."""
        gone = set(keys)
        kept = [n for n in self.owed if n.key not in gone]
        if len(kept) != len(self.owed):
            self.owed = kept
            self.revision += 1

    # --- persistence ----------------------------------------------------------------------

    def record(self) -> AlertsRecord:
        return AlertsRecord(
            version=STATE_VERSION,
            incidents=list(self.incidents),
            owed=list(self.owed),
            resolved=list(self.resolved),
        )

    @classmethod
    def from_record(cls, record: AlertsRecord, settings: AlertSettings | None = None) -> Alerts:
        for incident in record.incidents:
            incident.check_sense()
            incident.figures = finite_figures(incident.figures)
        resolved = []
        for incident in record.resolved:
            incident.check_sense()
            if incident.phase is not Phase.RESOLVED or incident.resolved_at is None:
                raise ValueError(f"incident {incident.id}: listed as resolved but is not")
            incident.figures = finite_figures(incident.figures)
            resolved.append(incident)
        alerts = cls(settings, record.incidents)
        alerts.resolved = resolved[-KEEP_RESOLVED:]
        alerts.owed = list(record.owed)
        return alerts

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "incidents": [i.to_dict() for i in self.incidents],
            "owed": [n.key for n in self.owed],
            "resolved": [i.to_dict() for i in self.resolved],
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Replace the file atomically; raises OSError when the disk refuses."""
        StateFile[AlertsRecord](path, AlertsRecord).save(self.record())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        settings: AlertSettings | None = None,
        now: float | None = None,
    ) -> Alerts:
        """The machine saved at `path`; empty when there is none.

        Anything unreadable is moved aside and reported as CorruptStateFile (a ValueError)
        naming both files.
        """
        file = StateFile[AlertsRecord](path, AlertsRecord)
        loaded = file.load(lambda record: cls.from_record(record, settings), now)
        return loaded if loaded is not None else cls(settings)
