"""Renders the current state as metric families at scrape time (see also exposition.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter.alerting.alerts import Incident
from exporter.config import Config
from exporter.judging.judge import Evaluation, Verdict
from exporter.judging.readiness import Readiness
from exporter.judging.readiness import Verdict as ReadinessVerdict
from exporter.probing.history import SplitPoint
from exporter.probing.state import CheckState
from exporter.readiness.ledger import StepMark, StepSummary
from exporter.route53.explain import ShiftStatus
from exporter.route53.model import Phase as ShiftPhase
from exporter.route53.read import RecordSpec, Route53Snapshot
from exporter.traffic.counts import CODE_CLASSES, Tally
from exporter.traffic.split import SplitStatus
from exporter.traffic.timeline import Counters, SourceStatus

if TYPE_CHECKING:  # rendering imports no AWS client
    from exporter.store.lease import LeaseSnapshot
    from exporter.store.vantages import VantagesSnapshot

TRAFFIC_QUANTILES = (0.5, 0.9, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class ShiftView:
    status: ShiftStatus
    changes: Mapping[str, int]
    last_change: float | None
    last_rollback: float | None


class Judged(Protocol):
    """A verdict-bearing evaluation (the probe judge's or the traffic judge's)."""

    def verdicts(self) -> Sequence[Verdict]: ...


@dataclass(frozen=True, slots=True)
class TrafficView:
    """Real traffic as one scrape or one page renders it: counters, windows, verdicts, split."""

    roles: Mapping[str, str]  # platform -> role
    counters: Mapping[tuple[str, str, str], Counters]  # (platform, source, route) -> totals
    sources: Sequence[SourceStatus]
    source_errors: Mapping[str, Mapping[str, int]]  # source -> reason -> failed polls
    windows: Mapping[tuple[str, str], Tally]  # (platform, route) -> the judged window's totals
    verdicts: Mapping[str, Judged]  # route group -> the judge's last evaluation
    record: str | None = None  # the record whose split is measured
    split: SplitStatus | None = None
    window_end: float | None = None  # the judged span ends here (both sides covered it)
    # the candidate's measured share against its weight, a point a minute (the page's chart)
    split_history: tuple[SplitPoint, ...] = ()


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
    traffic: TrafficView | None = None
    # the go/no-go verdict per migrated record, and the weight changes to mark on charts
    readiness: tuple[Readiness, ...] = ()
    step_marks: tuple[StepMark, ...] = ()
    # the past steps' summaries per record, oldest first (the ledger keeps the last 20)
    step_history: Mapping[str, tuple[StepSummary, ...]] = field(default_factory=dict)
    # the last resolved incidents, oldest first, and links to incidents' Slack messages by id
    resolved: tuple[Incident, ...] = ()
    links: Mapping[str, str] = field(default_factory=dict)
    # the HA lease as this replica sees it; None without `ha`
    lease: LeaseSnapshot | None = None
    # every vantage as this replica combined them last; None without `ha`
    vantages: VantagesSnapshot | None = None

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
        if view.traffic is not None:
            yield from traffic_families(view.traffic)
        if view.readiness or view.step_marks:
            yield from readiness_families(view.readiness, view.step_marks)
        if view.lease is not None:
            yield from lease_families(view.lease)
        if view.vantages is not None:
            yield from vantage_families(view.vantages)


def readiness_families(
    verdicts: Iterable[Readiness], marks: Iterable[StepMark]
) -> Iterator[Metric]:
    """The go/no-go verdict per migrated record, and when its current step began."""
    verdict = GaugeMetricFamily(
        "cutover_readiness",
        "1 for the record's current go/no-go verdict (GO, WAIT, NO-GO), 0 for the others.",
        labels=["record", "verdict"],
    )
    for r in verdicts:
        for v in ReadinessVerdict:
            verdict.add_metric([r.record, v.value], 1.0 if r.verdict is v else 0.0)
    yield verdict
    started: dict[str, float] = {}
    for mark in marks:
        started[mark.record] = max(mark.at, started.get(mark.record, mark.at))
    start = GaugeMetricFamily(
        "cutover_step_start_timestamp_seconds",
        "When the record's current Route53 step (its weights as they are) began.",
        labels=["record"],
    )
    for record, at in sorted(started.items()):
        start.add_metric([record], at)
    yield start


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


def lease_families(snap: LeaseSnapshot) -> Iterator[Metric]:
    """The HA lease as one replica sees it. Every replica exports its own series, so that the
    rules can tell no leader (all 0, or leaderless) from two (a sum above 1)."""
    leader = GaugeMetricFamily(
        "cutover_ha_leader",
        "1 on the replica that holds the lease and may act (Slack, Route53), else 0.",
        labels=["vantage"],
    )
    leader.add_metric([snap.vantage], 1.0 if snap.leader else 0.0)
    yield leader
    yield GaugeMetricFamily(
        "cutover_ha_lease_epoch",
        "The lease's epoch: this replica's while it leads, else the highest it has seen.",
        value=snap.epoch,
    )
    errors = CounterMetricFamily(
        "cutover_ha_lease_errors",
        "Failed lease calls to DynamoDB, by reason (a lost race is not one).",
        labels=["reason"],
    )
    for reason, count in snap.errors.items():
        errors.add_metric([reason], float(count))
    yield errors
    yield GaugeMetricFamily(
        "cutover_ha_leaderless",
        "1 when no leader has shown itself to this replica for longer than two leases.",
        value=1.0 if snap.leaderless else 0.0,
    )


def vantage_families(snap: VantagesSnapshot) -> Iterator[Metric]:
    """The vantages of an HA migration. The health of each comes from the leader alone (its
    combination decides; one series per vantage keeps CutoverVantageDown to one alert each);
    every replica counts its own failed report calls."""
    if snap.leader:
        healthy = GaugeMetricFamily(
            "cutover_ha_vantage_healthy",
            "1 while the vantage reports (every round, at most two rounds ago), 0 once it is "
            "silent; exported by the leader, from its last combination of the vantages.",
            labels=["vantage"],
        )
        for line in snap.lines:
            healthy.add_metric([line.vantage], 1.0 if line.healthy else 0.0)
        yield healthy
    errors = CounterMetricFamily(
        "cutover_ha_report_errors",
        "This replica's failed vantage report calls to DynamoDB, by reason; too_large: its "
        "report did not fit an item; corrupt: a report item it refused to read.",
        labels=["reason"],
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


def traffic_families(view: TrafficView) -> Iterator[Metric]:
    """Real traffic: counters per source and route group, the judged window, sources, the split.

    The counters carry one series per route group a source reported (no aggregate beside them,
    so that they sum to the platform's total); window figures exist for `all` too.
    """
    roles = view.roles
    base = ["platform", "role", "route", "source"]
    requests = CounterMetricFamily(
        "cutover_traffic_requests", "Real requests counted per source and route group.", labels=base
    )
    responses = CounterMetricFamily(
        "cutover_traffic_responses",
        "Real responses by status class (router and load balancer failures are 5xx).",
        labels=[*base, "code_class"],
    )
    router = CounterMetricFamily(
        "cutover_traffic_router_errors",
        "Failures the platform's router or load balancer produced itself (Heroku H-codes, an "
        "ALB's own 5xx); also counted as 5xx responses.",
        labels=base,
    )
    for (platform, source, route), c in sorted(view.counters.items()):
        labels = [platform, roles.get(platform, ""), route, source]
        requests.add_metric(labels, c.requests)
        for cls in CODE_CLASSES:
            responses.add_metric([*labels, cls], c.responses.get(cls, 0.0))
        router.add_metric(labels, c.router_errors)
    yield from (requests, responses, router)

    window = ["platform", "role", "route"]
    counted = GaugeMetricFamily(
        "cutover_traffic_window_requests", "Real requests in the judged window.", labels=window
    )
    errors = GaugeMetricFamily(
        "cutover_traffic_window_error_ratio",
        "5xx / all real requests in the judged window (NaN without requests).",
        labels=window,
    )
    latency = GaugeMetricFamily(
        "cutover_traffic_window_latency_seconds",
        "Quantiles of real requests' latency in the judged window, from the sources' histograms.",
        labels=[*window, "q"],
    )
    for (platform, route), tally in sorted(view.windows.items()):
        labels = [platform, roles.get(platform, ""), route]
        counted.add_metric(labels, tally.requests)
        errors.add_metric(labels, tally.error_ratio)
        for q in TRAFFIC_QUANTILES:
            value = tally.latency.quantile(q) if tally.latency is not None else math.nan
            latency.add_metric([*labels, f"{q:g}"], value)
    yield from (counted, errors, latency)

    up = GaugeMetricFamily(
        "cutover_traffic_source_up",
        "1 while a traffic source reports (a drain: POSTs arrive; a poller: its last poll worked).",
        labels=["platform", "source"],
    )
    success = GaugeMetricFamily(
        "cutover_traffic_source_last_success_timestamp_seconds",
        "When a traffic source last reported.",
        labels=["platform", "source"],
    )
    failed = CounterMetricFamily(
        "cutover_traffic_source_errors",
        "Failed polls of a traffic source, by reason.",
        labels=["platform", "source", "reason"],
    )
    for status in sorted(view.sources, key=lambda s: (s.platform, s.source)):
        up.add_metric([status.platform, status.source], 1.0 if status.up else 0.0)
        if status.last_success is not None:
            success.add_metric([status.platform, status.source], status.last_success)
        for reason, n in sorted(view.source_errors.get(status.source, {}).items()):
            failed.add_metric([status.platform, status.source, reason], float(n))
    yield from (up, success, failed)

    # the drains' own counts (lines by kind, POSTs by result) come from their collector

    measured = GaugeMetricFamily(
        "cutover_traffic_measured_share",
        "Each platform's share of the real requests over the last minute (0..1).",
        labels=["record", "platform"],
    )
    lag = GaugeMetricFamily(
        "cutover_traffic_split_lag_seconds",
        "From the last weight change until the measured split came within the tolerance (while "
        "it has not: the time since the change).",
        labels=["record"],
    )
    diverged = GaugeMetricFamily(
        "cutover_traffic_split_diverged",
        "1 when the measured split is off the weights by more than traffic.split_tolerance once "
        "the TTL and traffic.split_margin have passed since they changed.",
        labels=["record"],
    )
    split, record = view.split, view.record
    if split is not None and record is not None:
        for platform, share in sorted((split.measured or {}).items()):
            measured.add_metric([record, platform], share)
        if split.lag is not None:
            lag.add_metric([record], split.lag)
        diverged.add_metric([record], 1.0 if split.diverged else 0.0)
    yield from (measured, lag, diverged)
