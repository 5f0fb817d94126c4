"""The outbox for one replica: `state_dir/slack-outbox.json`, rewritten whole at every change."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from exporter.alerting.outbox import Entry, OutboxRecord, OutboxState, Sent, StateReads
from exporter.store.local import StateFile

__all__ = ["OUTBOX_FILE", "LocalOutboxStore"]

OUTBOX_FILE = "slack-outbox.json"


class LocalOutboxStore(StateReads):
    """An `OutboxStore` in one state file (atomic saves, a corrupt file set aside), or in memory
    only without a state_dir. One process owns state_dir, so every claim succeeds."""

    def __init__(self, state_dir: str | os.PathLike[str] | None) -> None:
        path = Path(state_dir) / OUTBOX_FILE if state_dir else None
        self._file: StateFile[OutboxRecord] | None = (
            StateFile(path, OutboxRecord) if path is not None else None
        )
        self._state = OutboxState()

    @property
    def where(self) -> str | None:
        return str(self._file.path) if self._file is not None else None

    def load(self, now: float) -> None:
        if self._file is None:
            return
        record = self._file.load(lambda record: record, now=now)
        if record is not None:
            self._state = OutboxState.of(record)

    def append(self, entry: Entry) -> None:
        self._state.queue.append(entry)
        self._write()

    def claim(self, entry: Entry, epoch: int) -> bool:
        # one process owns state_dir, so nobody else can hold the outbox: the claim holds even
        # when the file cannot be written (then a crash from here on may send it twice, as
        # every change that cannot be saved; the next save says that it fails)
        with contextlib.suppress(OSError, ValueError):
            self._write()
        return True

    def finish(self, entry: Entry, sent: Sent | None) -> None:
        self._state.finish(entry, sent)
        self._write()

    def save(self) -> None:
        self._write()

    def _write(self) -> None:
        if self._file is None:
            return
        self._file.path.parent.mkdir(parents=True, exist_ok=True)
        self._file.save(self._state.record())
