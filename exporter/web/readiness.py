"""GET /api/v1/readiness: the go/no-go verdict per migrated record, its step, and past steps."""

from __future__ import annotations

from typing import Any

from exporter.judging.readiness import Readiness
from exporter.readiness.ledger import finite
from exporter.route53.read import normalize_name
from exporter.web.collector import View

__all__ = ["readiness_data", "verdict_of"]


def _real_shares(view: View, record: str) -> dict[str, float] | None:
    """What Route53 holds for the record now (beside a dry run's would-be shares)."""
    spec = view.records.get(record)
    weights = view.route53.weights.get(spec) if view.route53 is not None and spec else None
    return weights.platform_shares() if weights is not None else None


def record_data(view: View, r: Readiness) -> dict[str, Any]:
    """One record's entry: Readiness.to_dict()'s figures, with the contract's keys on top."""
    data: dict[str, Any] = finite(r.to_dict())
    facts = r.step
    step = data.get("step")
    step = dict(step) if isinstance(step, dict) else {}
    step.update(
        started_at=facts.started_at,
        shares=dict(facts.shares),
        changed_by=facts.changed_by,
        dry_run=facts.dry_run,
    )
    if facts.dry_run:
        step["real_shares"] = _real_shares(view, r.record)
    data.update(
        record=r.record,
        verdict=r.verdict.value,
        reasons=list(r.reasons),
        step=step,
        next_share=facts.next_share,
    )
    return data


def verdict_of(view: View, record: str) -> dict[str, Any] | None:
    """The verdict on one record's current step, in short (the shift's API and `shift status`);
    None before there is one."""
    key = normalize_name(record)
    r = next((r for r in view.readiness if r.record == key), None)
    if r is None:
        return None
    facts = r.step
    return {
        "verdict": r.verdict.value,
        "reasons": list(r.reasons),
        "step": finite(
            {
                "started_at": facts.started_at,
                "shares": dict(facts.shares),
                "changed_by": facts.changed_by,
                "dry_run": facts.dry_run,
            }
        ),
        "next_share": finite(facts.next_share),
    }


def readiness_data(view: View) -> dict[str, Any]:
    """`records`: the current verdict per record; `steps`: past steps per record, oldest first."""
    return {
        "records": [record_data(view, r) for r in view.readiness],
        "steps": {
            record: [finite(s.to_dict()) for s in summaries]
            for record, summaries in view.step_history.items()
        },
    }
