"""The step ledger: per migrated Route53 record, the current step with its evidence, and the last
steps' summaries; saved in state_dir/readiness.json.

A step is one set of weights: it starts when they change (by the guarded shift or by a person)
and holds, per subject (a check guarding the record, or `traffic:<group>`), the evidence of both
sides over the whole step. Bounded: one current step per record, HISTORY summaries of past ones,
NOTES_LIMIT incidents per step.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import ConfigDict, Field, TypeAdapter

from exporter.judging.evidence import Evidence
from exporter.judging.readiness import IncidentNote, StepFacts
from exporter.store.local import StateFile

__all__ = [
    "HISTORY",
    "LEDGER_VERSION",
    "Ledger",
    "Step",
    "StepMark",
    "StepSummary",
    "finite",
    "shares_of",
]

LEDGER_VERSION: Final = 1
HISTORY: Final = 20  # past steps kept per record
NOTES_LIMIT: Final = 100  # incidents kept per step: a flapping check must not grow it for ever

ChangedBy = Literal["shift", "person", "unknown"]
Weights = dict[str, int | None]  # platform -> Route53 weight (None: its record set is missing)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity (at any depth) as None: what JSON and a state file hold."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def shares_of(weights: Mapping[str, int | None]) -> dict[str, float]:
    """Each platform's share of the weights (Route53 splits evenly when they are all zero)."""
    present = {p: w for p, w in weights.items() if w is not None}
    total = sum(present.values())
    if not present:
        return dict.fromkeys(weights, 0.0)
    if total == 0:
        return {p: (1.0 / len(present) if p in present else 0.0) for p in weights}
    return {p: (w / total if w is not None else 0.0) for p, w in weights.items()}


def note_dict(note: IncidentNote) -> dict[str, Any]:
    return {
        "id": note.id,
        "check": note.check,
        "signal": note.signal,
        "phase": note.phase,
        "started_at": note.started_at,
        "fired_at": note.fired_at,
        "resolved_at": note.resolved_at,
        "figures": None if note.figures is None else finite(note.figures),
    }


@dataclass(frozen=True, slots=True)
class StepMark:
    """A weight change to mark on a chart's time axis."""

    record: str
    at: float  # unix seconds
    shares: Mapping[str, float]  # platform -> share in [0, 1] from then on
    changed_by: str  # "shift", "person" or "unknown"
    dry_run: bool = False


@dataclass(slots=True)
class Step:
    """One record's current step: what its weights are and what both sides did since."""

    record: str
    started_at: float  # unix seconds
    weights: Weights  # what defines the step: the weights read, or a dry run's would-be ones
    shares: dict[str, float]
    changed_by: ChangedBy
    dry_run: bool = False
    real_weights: Weights | None = None  # what Route53 holds (differs from `weights` in a dry run)
    evidence: dict[str, Evidence] = field(default_factory=dict)  # subject -> evidence
    incidents: dict[str, IncidentNote] = field(default_factory=dict)  # incident id -> note
    seen_until: float | None = None  # the last tick that added to it
    # the verdicts Slack was told of once the hold completed (its summary, then GO or NO-GO)
    announced: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[tuple[tuple[str, int | None], ...], ...]:
        """What makes it this step: its weights and Route53's (the same outside a dry run)."""
        real = self.real_weights if self.real_weights is not None else self.weights
        return (tuple(sorted(self.weights.items())), tuple(sorted(real.items())))

    def note(self, incident: IncidentNote) -> None:
        """Keep (or update) an incident seen during the step, within NOTES_LIMIT."""
        self.incidents[incident.id] = incident
        if len(self.incidents) <= NOTES_LIMIT:
            return
        # the least telling first: resolved without ever firing, then the oldest resolved
        gone = sorted(
            (n for n in self.incidents.values() if n.phase == "resolved"),
            key=lambda n: (n.fired_at is not None, n.started_at),
        )
        for old in gone[: len(self.incidents) - NOTES_LIMIT]:
            del self.incidents[old.id]

    def facts(self, *, traffic: bool, next_share: float | None) -> StepFacts:
        return StepFacts(
            record=self.record,
            started_at=self.started_at,
            shares=dict(self.shares),
            changed_by=self.changed_by,
            subjects=tuple(self.evidence.values()),
            incidents=tuple(sorted(self.incidents.values(), key=lambda n: (n.started_at, n.id))),
            traffic=traffic,
            next_share=next_share,
            dry_run=self.dry_run,
        )

    def summary(self, ended_at: float, readiness: Mapping[str, Any] | None) -> StepSummary:
        return StepSummary(
            record=self.record,
            started_at=self.started_at,
            ended_at=ended_at,
            shares=dict(self.shares),
            changed_by=self.changed_by,
            dry_run=self.dry_run,
            weights=dict(self.weights),
            real_weights=None if self.real_weights is None else dict(self.real_weights),
            incidents=tuple(sorted(self.incidents.values(), key=lambda n: (n.started_at, n.id))),
            readiness=None if readiness is None else finite(readiness),
        )

    def record_of(self, evidence: bool = True) -> StepRecord:
        return StepRecord(
            record=self.record,
            started_at=self.started_at,
            weights=dict(self.weights),
            shares=dict(self.shares),
            changed_by=self.changed_by,
            dry_run=self.dry_run,
            real_weights=None if self.real_weights is None else dict(self.real_weights),
            evidence=[finite(e.to_dict()) for e in self.evidence.values()] if evidence else [],
            incidents=[NoteRecord.of(n) for n in self.incidents.values()],
            seen_until=self.seen_until,
            announced=list(self.announced),
        )


@dataclass(frozen=True, slots=True)
class StepSummary:
    """A past step: when, which shares, by whom, its incidents and its final verdict."""

    record: str
    started_at: float
    ended_at: float
    shares: Mapping[str, float]
    changed_by: ChangedBy
    dry_run: bool
    weights: Mapping[str, int | None]
    real_weights: Mapping[str, int | None] | None
    incidents: tuple[IncidentNote, ...]
    # Readiness.to_dict() at the step's end (NaN as None); None when no verdict could be given
    readiness: Mapping[str, Any] | None

    @property
    def verdict(self) -> str | None:
        value = self.readiness.get("verdict") if self.readiness is not None else None
        return value if isinstance(value, str) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "record": self.record,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_seconds": max(0.0, self.ended_at - self.started_at),
            "shares": dict(self.shares),
            "weights": dict(self.weights),
            "real_weights": None if self.real_weights is None else dict(self.real_weights),
            "changed_by": self.changed_by,
            "dry_run": self.dry_run,
            "incidents": [note_dict(n) for n in self.incidents],
            "verdict": self.verdict,
            "readiness": None if self.readiness is None else dict(self.readiness),
        }


class Ledger:
    """The current step per record and the summaries of the last HISTORY steps."""

    def __init__(self) -> None:
        self.current: dict[str, Step] = {}
        self.past: dict[str, deque[StepSummary]] = {}

    def begin(self, step: Step, ended: StepSummary | None = None) -> None:
        """Make `step` its record's current step; `ended` summarises the one it replaces."""
        self.current[step.record] = step
        if ended is not None:
            self.keep(ended)

    def end(self, record: str, summary: StepSummary | None) -> None:
        """The record's step ends with no successor (the record left the configuration)."""
        self.current.pop(record, None)
        if summary is not None:
            self.keep(summary)

    def keep(self, summary: StepSummary) -> None:
        held = self.past.get(summary.record)
        if held is None:
            held = self.past[summary.record] = deque(maxlen=HISTORY)
        held.append(summary)

    def history(self, record: str) -> tuple[StepSummary, ...]:
        return tuple(self.past.get(record, ()))

    # -- persistence ------------------------------------------------------------------------

    def record(self) -> LedgerRecord:
        return LedgerRecord(
            version=LEDGER_VERSION,
            steps=[s.record_of() for s in self.current.values()],
            past=[SummaryRecord.of(s) for held in self.past.values() for s in held],
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Replace the file atomically; raises OSError or ValueError (see StateFile.save)."""
        StateFile[LedgerRecord](path, LedgerRecord).save(self.record())

    def json_parts(self) -> Iterator[str]:
        """readiness.json's text in small parts (a step's head, then one evidence at a time),
        for a caller on the event loop that yields between them: with thousands of checks the
        whole file takes seconds to build. Reads as `load` reads what `save` writes."""
        yield f'{{"version": {LEDGER_VERSION}, "steps": ['
        for i, step in enumerate(list(self.current.values())):
            head = _STEP.dump_python(step.record_of(evidence=False), mode="json")
            del head["evidence"]
            yield ("," if i else "") + json.dumps(head, allow_nan=False)[:-1] + ', "evidence": ['
            for j, evidence in enumerate(list(step.evidence.values())):
                text = json.dumps(finite(evidence.to_dict()), allow_nan=False)
                yield ("," if j else "") + text
            yield "]}"
        past = [SummaryRecord.of(s) for held in list(self.past.values()) for s in held]
        yield (
            '], "past": ' + json.dumps(_PAST.dump_python(past, mode="json"), allow_nan=False) + "}"
        )

    @classmethod
    def from_record(cls, record: LedgerRecord) -> Ledger:
        """Raises ValueError (and whatever Evidence.from_dict raises) on nonsense."""
        ledger = cls()
        for saved in record.steps:
            if saved.record in ledger.current:
                raise ValueError(f"two current steps for {saved.record}")
            ledger.current[saved.record] = saved.step()
        for summary in sorted(record.past, key=lambda s: s.ended_at):
            ledger.keep(summary.summary())
        return ledger

    @classmethod
    def peek(cls, path: str | os.PathLike[str]) -> Ledger | None:
        """The ledger at `path` for a reader beside its daemon (`cutover report`): None when
        there is none; ValueError naming what is wrong; nothing is moved aside."""
        return StateFile[LedgerRecord](path, LedgerRecord).peek(cls.from_record)

    @classmethod
    def load(cls, path: str | os.PathLike[str], now: float | None = None) -> Ledger:
        """The ledger saved at `path`, empty when there is none; a corrupt file is moved aside
        and reported as CorruptStateFile."""
        loaded = StateFile[LedgerRecord](path, LedgerRecord).load(cls.from_record, now)
        return loaded if loaded is not None else cls()


# -- readiness.json's schema -------------------------------------------------------------------

STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
Text = Annotated[str, Field(min_length=1)]
Weight = Annotated[int, Field(ge=0, le=255)]
Share = Annotated[float, Field(ge=0, le=1)]
Figure = float | int | str | bool | None


@dataclass(frozen=True, slots=True)
class NoteRecord:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    id: Text
    check: Text
    signal: Text
    phase: Literal["pending", "firing", "resolved"]
    started_at: float
    fired_at: float | None = None
    resolved_at: float | None = None
    figures: dict[str, Figure] | None = None

    @classmethod
    def of(cls, note: IncidentNote) -> NoteRecord:
        return cls(
            id=note.id,
            check=note.check,
            signal=note.signal,
            phase=note.phase,
            started_at=note.started_at,
            fired_at=note.fired_at,
            resolved_at=note.resolved_at,
            figures=None if note.figures is None else finite(note.figures),
        )

    def note(self) -> IncidentNote:
        return IncidentNote(
            id=self.id,
            check=self.check,
            signal=self.signal,
            phase=self.phase,
            started_at=self.started_at,
            fired_at=self.fired_at,
            resolved_at=self.resolved_at,
            figures=self.figures,
        )


@dataclass(slots=True)
class StepRecord:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    record: Text
    started_at: float
    weights: dict[str, Weight | None]
    shares: dict[str, Share]
    changed_by: ChangedBy
    dry_run: bool
    real_weights: dict[str, Weight | None] | None
    evidence: list[dict[str, Any]]
    incidents: list[NoteRecord]
    seen_until: float | None = None
    announced: list[Text] = field(default_factory=list)

    def step(self) -> Step:
        evidence = [Evidence.from_dict(e) for e in self.evidence]
        return Step(
            record=self.record,
            started_at=self.started_at,
            weights=dict(self.weights),
            shares=dict(self.shares),
            changed_by=self.changed_by,
            dry_run=self.dry_run,
            real_weights=None if self.real_weights is None else dict(self.real_weights),
            evidence={e.subject: e for e in evidence},
            incidents={n.id: n.note() for n in self.incidents[-NOTES_LIMIT:]},
            seen_until=self.seen_until,
            announced=list(self.announced),
        )


@dataclass(slots=True)
class SummaryRecord:
    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    record: Text
    started_at: float
    ended_at: float
    shares: dict[str, Share]
    changed_by: ChangedBy
    dry_run: bool
    weights: dict[str, Weight | None]
    real_weights: dict[str, Weight | None] | None
    incidents: list[NoteRecord]
    readiness: dict[str, Any] | None

    @classmethod
    def of(cls, s: StepSummary) -> SummaryRecord:
        return cls(
            record=s.record,
            started_at=s.started_at,
            ended_at=s.ended_at,
            shares=dict(s.shares),
            changed_by=s.changed_by,
            dry_run=s.dry_run,
            weights=dict(s.weights),
            real_weights=None if s.real_weights is None else dict(s.real_weights),
            incidents=[NoteRecord.of(n) for n in s.incidents],
            readiness=None if s.readiness is None else dict(s.readiness),
        )

    def summary(self) -> StepSummary:
        return StepSummary(
            record=self.record,
            started_at=self.started_at,
            ended_at=self.ended_at,
            shares=dict(self.shares),
            changed_by=self.changed_by,
            dry_run=self.dry_run,
            weights=dict(self.weights),
            real_weights=None if self.real_weights is None else dict(self.real_weights),
            incidents=tuple(n.note() for n in self.incidents[-NOTES_LIMIT:]),
            readiness=self.readiness,
        )


@dataclass(slots=True)
class LedgerRecord:
    """readiness.json: the current step per record and the past steps' summaries."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    version: Literal[1]
    steps: list[StepRecord]
    past: list[SummaryRecord]


_STEP: TypeAdapter[StepRecord] = TypeAdapter(StepRecord)
_PAST: TypeAdapter[list[SummaryRecord]] = TypeAdapter(list[SummaryRecord])
