"""Renders the current state as metric families at scrape time (see also exposition.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter.alerting.alerts import Incident
from exporter.config import Config
from exporter.judging.judge import Evaluation
from exporter.probing.state import CheckState
from exporter.route53.plan import Phase as ShiftPhase
from exporter.route53.plan import ShiftStatus
from exporter.route53.read import RecordSpec, Route53Snapshot


@dataclass(frozen=True, slots=True)
class ShiftView:
    status: ShiftStatus
    changes: Mapping[str, int]
    last_change: float | None
    last_rollback: float | None


@dataclass(frozen=True, slots=True)
class View:
    """What one scrape renders: the config in force and the live check states."""

    config: Config
    checks: Iterable[CheckState]
    now: float  # monotonic time, for trimming windows
    route53: Route53Snapshot | None = None
    records: Mapping[str, RecordSpec] = field(default_factory=dict)  # config key -> record
    alerts: tuple[Incident, ...] = ()  # open incidents, pending and firing
    shift: ShiftView | None = None
    evaluations: Mapping[str, Evaluation] = field(default_factory=dict)  # check -> the judge's last

    def shares_for(self, check: str) -> dict[str, float] | None:
        """Traffic share per platform of the record a check represents, once read."""
        if self.route53 is None:
            return None
        cfg_check = self.config.check(check)
        record = self.config.record_for(cfg_check) if cfg_check is not None else None
        spec = self.records.get(record.key) if record is not None else None
        weights = self.route53.weights.get(spec) if spec is not None else None
        return weights.platform_shares() if weights is not None else None


def expected_error_ratio(shares: Mapping[str, float], error_ratios: Mapping[str, float]) -> float:
    """What users see through DNS: the sum over platforms of traffic share x error ratio.

    A platform without traffic adds nothing, whatever its error ratio (even unknown); one with
    traffic but no samples makes the figure unknown (NaN).
    """
    total = 0.0
    for platform, share in shares.items():
        if share > 0:
            total += share * error_ratios.get(platform, math.nan)
    return total


class StateCollector(Collector):
    """Renders the Route53 weights and the shift plan.

    The per-check families (probe results, windows, comparisons) are written by
    `exposition.render_checks`, straight to text, because there are thousands of them.
    """

    def __init__(self, view: Callable[[], View | None]) -> None:
        self._view = view

    def describe(self) -> list[Metric]:
        # no description at registration time: the families depend on the config
        return []

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        if view is None:
            return
        if view.route53 is not None:
            yield from route53_families(view.route53, view.records.values())
        if view.shift is not None:
            yield from shift_families(view.shift)


def shift_families(view: ShiftView) -> Iterator[Metric]:
    status = view.status
    step = GaugeMetricFamily(
        "cutover_shift_step",
        "The plan's current step (1 = the first of shift.steps); 0 when not on a step.",
    )
    step.add_metric([], float(status.current_step + 1 if status.current_step is not None else 0))
    yield step
    target = GaugeMetricFamily(
        "cutover_shift_target_share",
        "The share (0..1) the plan wants each platform to have now.",
        labels=["platform"],
    )
    weights = status.target_weights or {}
    total = sum(weights.values())
    for platform, weight in weights.items():
        target.add_metric([platform], weight / total if total else 0.0)
    yield target
    state = GaugeMetricFamily(
        "cutover_shift_state", "1 for the plan's current state.", labels=["state"]
    )
    for phase in ShiftPhase:
        state.add_metric([phase.value], 1.0 if status.state is phase else 0.0)
    yield state
    changes = CounterMetricFamily(
        "cutover_shift_changes",
        "Weight changes the plan made, by result (ok, dry_run, or the failure's reason).",
        labels=["result"],
    )
    for result in sorted({"ok", "dry_run", *view.changes}):
        changes.add_metric([result], float(view.changes.get(result, 0)))
    yield changes
    dry = GaugeMetricFamily("cutover_shift_dry_run", "1 while the plan writes nothing to Route53.")
    dry.add_metric([], 1.0 if status.dry_run else 0.0)
    yield dry
    for name, value, text in (
        ("cutover_shift_last_change_timestamp_seconds", view.last_change, "last weight change"),
        ("cutover_shift_last_rollback_timestamp_seconds", view.last_rollback, "last rollback"),
    ):
        family = GaugeMetricFamily(name, f"Time of the plan's {text} (for dashboard annotations).")
        if value is not None:
            family.add_metric([], value)
        yield family


def route53_families(snap: Route53Snapshot, records: Iterable[RecordSpec]) -> Iterator[Metric]:
    weight = GaugeMetricFamily(
        "cutover_route53_weight",
        "Weight of each record set of a weighted record; platform is empty for a set that maps "
        "to no configured platform.",
        labels=["hosted_zone", "record", "set_identifier", "platform"],
    )
    share = GaugeMetricFamily(
        "cutover_route53_traffic_share",
        "Share of the record's traffic each platform gets (0..1).",
        labels=["hosted_zone", "record", "platform"],
    )
    missing = GaugeMetricFamily(
        "cutover_route53_set_identifier_missing",
        "1 when a configured SetIdentifier is not in the record's weighted group.",
        labels=["hosted_zone", "record", "set_identifier", "platform"],
    )
    for spec in records:
        weights = snap.weights.get(spec)
        if weights is None:
            continue
        zone, name = spec.zone_id, spec.fqdn
        for entry in weights.entries:
            weight.add_metric(
                [zone, name, entry.set_identifier, entry.platform or ""], entry.weight
            )
        for platform, value in weights.platform_shares().items():
            share.add_metric([zone, name, platform], value)
        gone = set(weights.missing)
        for platform, ident in spec.set_identifiers.items():
            missing.add_metric([zone, name, ident, platform], 1.0 if ident in gone else 0.0)
    yield from (weight, share, missing)
    last = GaugeMetricFamily(
        "cutover_route53_last_success_timestamp_seconds",
        "Time of the last poll that read every configured record.",
    )
    if snap.last_success is not None:
        last.add_metric([], snap.last_success)
    yield last
    errors = CounterMetricFamily(
        "cutover_route53_errors", "Failed Route53 reads, by reason.", labels=["reason"]
    )
    for reason, count in snap.errors.items():
        errors.add_metric([reason], float(count))
    yield errors


class BuildInfoCollector(Collector):
    def __init__(self, version: str) -> None:
        self._version = version

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("cutover_build_info", "cutover's version.", labels=["version"])
        info.add_metric([self._version], 1.0)
        yield info
