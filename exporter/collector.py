"""Renders the current state as metric families at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter.config import Config
from exporter.probe import REASONS
from exporter.state import DURATION_BUCKETS, CheckState, ratio
from exporter.window import QUANTILES


@dataclass(frozen=True, slots=True)
class View:
    """What one scrape renders: the config in force and the live check states."""

    config: Config
    checks: Iterable[CheckState]
    now: float  # monotonic time, for trimming windows


def _q(q: float) -> str:
    return f"{q:g}"


class StateCollector(Collector):
    """Renders probe results, windows and comparisons. A check removed on reload simply vanishes."""

    def __init__(self, view: Callable[[], View | None]) -> None:
        self._view = view

    def describe(self) -> list[Metric]:
        # no description at registration time: the families depend on the config
        return []

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        if view is None:
            return
        cfg = view.config
        labels = ["check", "platform", "role"]
        success = GaugeMetricFamily(
            "cutover_probe_success", "1 if the last probe passed.", labels=labels
        )
        duration = HistogramMetricFamily(
            "cutover_probe_duration_seconds",
            "Duration of every successful probe.",
            labels=labels,
        )
        phase = GaugeMetricFamily(
            "cutover_probe_phase_seconds",
            "Phases of the last probe: resolve, connect, tls, processing, transfer.",
            labels=[*labels, "phase"],
        )
        status = GaugeMetricFamily(
            "cutover_probe_http_status_code", "Last HTTP status code, 0 when none.", labels=labels
        )
        probes = CounterMetricFamily("cutover_probes", "Probes made.", labels=labels)
        failures = CounterMetricFamily(
            "cutover_probe_failures", "Failed probes by reason.", labels=[*labels, "reason"]
        )
        expiry = GaugeMetricFamily(
            "cutover_probe_tls_expiry_timestamp_seconds",
            "Expiry of the certificate served in the last TLS handshake (https only).",
            labels=labels,
        )
        w_latency = GaugeMetricFamily(
            "cutover_window_latency_seconds",
            "Quantiles of successful probe durations over the judge window.",
            labels=[*labels, "quantile"],
        )
        w_errors = GaugeMetricFamily(
            "cutover_window_error_ratio", "Failed / all probes in the judge window.", labels=labels
        )
        w_samples = GaugeMetricFamily(
            "cutover_window_samples", "Probes in the judge window.", labels=labels
        )
        l_ratio = GaugeMetricFamily(
            "cutover_latency_ratio",
            "Candidate / baseline window latency quantile.",
            labels=["check", "quantile"],
        )
        e_delta = GaugeMetricFamily(
            "cutover_error_ratio_delta",
            "Candidate minus baseline window error ratio.",
            labels=["check"],
        )
        baseline, candidate = cfg.baseline, cfg.candidate
        for state in view.checks:
            stats = {}
            for name, series in state.series.items():
                lv = [state.name, name, series.role]
                last = series.last
                stats[name] = series.stats(view.now)
                if last is not None:
                    success.add_metric(lv, 1.0 if last.success else 0.0)
                    status.add_metric(lv, float(last.status))
                    for ph, value in series.phases().items():
                        phase.add_metric([*lv, ph], value)
                cumulative = 0
                buckets = []
                for bound, count in zip(
                    (*(f"{b:g}" for b in DURATION_BUCKETS), "+Inf"), series.buckets, strict=True
                ):
                    cumulative += count
                    buckets.append((bound, float(cumulative)))
                duration.add_metric(lv, buckets, series.duration_sum)
                probes.add_metric(lv, float(series.probes_total))
                for reason in REASONS:
                    failures.add_metric([*lv, reason], float(series.failures[reason]))
                if series.tls_expiry is not None:
                    expiry.add_metric(lv, series.tls_expiry)
                st = stats[name]
                for q in QUANTILES:
                    w_latency.add_metric([*lv, _q(q)], st.quantiles[q])
                w_errors.add_metric(lv, st.error_ratio)
                w_samples.add_metric(lv, float(st.samples))
            b, c = stats.get(baseline), stats.get(candidate)
            if b is not None and c is not None:
                for q in QUANTILES:
                    l_ratio.add_metric([state.name, _q(q)], ratio(c.quantiles[q], b.quantiles[q]))
                e_delta.add_metric([state.name], c.error_ratio - b.error_ratio)
        yield from (success, duration, phase, status, probes, failures, expiry)
        yield from (w_latency, w_errors, w_samples, l_ratio, e_delta)


class BuildInfoCollector(Collector):
    def __init__(self, version: str) -> None:
        self._version = version

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("cutover_build_info", "cutover's version.", labels=["version"])
        info.add_metric([self._version], 1.0)
        yield info
