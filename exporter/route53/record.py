"""shift.json: what the shift plan saves, in the shape every earlier version wrote it.

The plan turns itself into a `ShiftRecord` and back (`ShiftPlan.record`, `ShiftPlan.from_record`:
restoring decides what a restart means); this module holds the file's shape and reads and writes
it through the state directory's `StateFile`, which replaces it atomically and sets an
unreadable one aside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal

from pydantic import ConfigDict

from exporter.alerting.outbox import STRICT, Notification
from exporter.route53.model import Change, Count, PausedBy, Percent, Phase, Text, Transition, Weight
from exporter.store.local import StateFile

__all__ = ["STATE_VERSION", "ShiftRecord", "shift_file"]

STATE_VERSION: Final = 1


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


def shift_file(path: str | os.PathLike[str]) -> StateFile[ShiftRecord]:
    """The state file at `path`, read and written as a ShiftRecord."""
    return StateFile[ShiftRecord](path, ShiftRecord)
