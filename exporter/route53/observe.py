"""What the shift plan is told: its settings from the config, and what it observes each time.

Pure functions of what the daemon holds: the configuration, the Route53 weights as last read,
the incidents and the readiness verdicts. The daemon calls them; the plan (plan.py) decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from exporter.alerting.alerts import Incident
from exporter.alerting.messages import TRAFFIC_PREFIX
from exporter.config import Config
from exporter.judging.readiness import Readiness
from exporter.route53.model import Observation, ShiftSettings
from exporter.route53.read import RecordWeights, normalize_name

__all__ = ["guarding_checks", "observation", "shift_settings"]


def shift_settings(cfg: Config, allow_writes: bool) -> ShiftSettings | None:
    """The plan's settings under `cfg`; a dry run unless both the config's `shift.enabled` and
    the command line (`allow_writes`) permit writing."""
    if cfg.shift is None:
        return None
    shift = cfg.shift
    return ShiftSettings(
        record=shift.record,
        baseline=cfg.baseline,
        candidate=cfg.candidate,
        steps=tuple(float(s) for s in shift.steps),
        # readiness.hold (else shift.hold): the verdict enforces it, the plan counts it down
        hold=cfg.readiness_hold,
        ttl_margin=shift.ttl_margin,
        rollback_to=float(shift.rollback_to),
        mode=shift.mode,
        dry_run=not (shift.enabled and allow_writes),
    )


def guarding_checks(cfg: Config, route_groups: Sequence[str]) -> list[str]:
    """The checks that guard the shifted record: their regressions roll it back. `route_groups`
    are the real-traffic groups judged now."""
    if cfg.shift is None:
        return []
    key = normalize_name(cfg.shift.record)
    probes = [c.name for c in cfg.checks if (r := cfg.record_for(c)) is not None and r.key == key]
    split = cfg.traffic_record()
    if split is None or split.key != key:
        return probes
    # real traffic on the shifted record guards it as its probes do
    return probes + [f"{TRAFFIC_PREFIX}{route}" for route in route_groups]


def observation(
    settings: ShiftSettings,
    checks: Iterable[str],
    weights: RecordWeights | None,
    incidents: Sequence[Incident],
    firing: Sequence[Incident],
    verdicts: Iterable[Readiness],
) -> Observation:
    """What the plan observes: `weights` as last read (None when unknown or failing), the
    incidents (and those firing) on the guarding `checks`, the verdict on the record's step."""
    guarding = set(checks)
    key = normalize_name(settings.record)
    # the verdict on the record's current step: the plan tells a step before its own change
    # (the ledger sees it a tick and a Route53 read later) by when it began and its share
    verdict = next((r for r in verdicts if r.record == key), None)
    return Observation(
        weights=weights.platform_weights() if weights is not None else None,
        readiness=verdict.verdict if verdict is not None else None,
        readiness_reasons=verdict.reasons if verdict is not None else (),
        readiness_since=verdict.step.started_at if verdict is not None else None,
        readiness_share=100.0 * verdict.step.shares.get(settings.candidate, 0.0)
        if verdict is not None
        else None,
        firing=[i.id for i in firing if i.check in guarding],
        pending=[i.id for i in incidents if i.check in guarding and i not in firing],
        ttl=weights.ttl if weights is not None else None,
        read_at=weights.fetched_at if weights is not None else None,
        names={i.id: f"{i.signal} on {i.check}" for i in incidents if i.check in guarding},
    )
