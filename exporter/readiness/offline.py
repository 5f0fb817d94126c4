"""The readiness report from a state_dir alone: `cutover report --state-dir`, daemon or not.

Each current step is judged as of the last time its daemon added to it (`seen_until`), not
now: a stopped daemon's step did not go on holding while nobody watched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.config import Config
from exporter.judging.readiness import ReadinessSettings, readiness
from exporter.readiness.ledger import Ledger, finite
from exporter.readiness.watch import WatchSettings, default_next_share

__all__ = ["LEDGER_FILE", "readiness_from_state_dir"]

LEDGER_FILE = "readiness.json"


def readiness_from_state_dir(state_dir: Path, cfg: Config | None, now: float) -> dict[str, Any]:
    """/api/v1/readiness's answer rebuilt from `state_dir`'s ledger.

    `cfg` gives the tolerances, minimums and the candidate's name; without it the defaults
    apply. Raises ValueError when the ledger cannot be read.
    """
    path = state_dir / LEDGER_FILE
    ledger = Ledger.peek(path)
    if ledger is None:
        raise ValueError(f"{path}: no step ledger there (has a daemon with this state_dir run?)")
    watch = WatchSettings.of(cfg) if cfg is not None else None
    settings = watch.verdict if watch is not None else ReadinessSettings()
    records = []
    for record, step in sorted(ledger.current.items()):
        at = step.seen_until if step.seen_until is not None else now
        traffic = (
            record == watch.traffic_record
            if watch is not None
            else any(e.kind == "requests" for e in step.evidence.values())
        )
        next_share = None
        if watch is not None:
            next_share = default_next_share(step.shares.get(watch.candidate, 0.0))
        verdict = readiness(step.facts(traffic=traffic, next_share=next_share), at, settings)
        entry = finite(verdict.to_dict())
        entry["as_of"] = at
        records.append(entry)
    steps = {
        record: [finite(s.to_dict()) for s in ledger.history(record)] for record in ledger.past
    }
    return {"records": records, "steps": steps}
