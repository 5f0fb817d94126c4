"""The per-check families built with client_python's metric families: the reference that
exporter/web/exposition.py's hand-written text must equal, sample for sample.

This is how the daemon rendered them before the streamed renderer (it took ~0.8 s per 1000
checks on the event loop); kept here only as a test oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter.judging.judge import SIGNALS, Evaluation
from exporter.probing.probe import REASONS
from exporter.probing.state import DURATION_BUCKETS, CheckState, ratio
from exporter.probing.window import QUANTILES
from exporter.web.collector import Judged, expected_error_ratio


class OracleCollector(Collector):
    def __init__(
        self,
        checks: list[CheckState],
        now: float,
        baseline: str,
        candidate: str,
        fired: frozenset[tuple[str, str]],
        shares: Callable[[str], dict[str, float] | None] | None,
        evaluations: Mapping[str, Evaluation] | None = None,
        traffic: Mapping[str, Judged] | None = None,
    ) -> None:
        self.evaluations = evaluations or {}
        self.traffic = traffic or {}
        self.checks, self.now = checks, now
        self.baseline, self.candidate = baseline, candidate
        self.fired, self.shares = fired, shares

    def collect(self) -> Iterator[Metric]:
        labels = ["check", "platform", "role"]
        G, C = GaugeMetricFamily, CounterMetricFamily
        success = G("cutover_probe_success", "1 if the last probe passed.", labels=labels)
        duration = HistogramMetricFamily(
            "cutover_probe_duration_seconds", "Duration of every successful probe.", labels=labels
        )
        phase = G(
            "cutover_probe_phase_seconds",
            "Phases of the last probe: resolve, connect, tls, processing, transfer.",
            labels=[*labels, "phase"],
        )
        status = G(
            "cutover_probe_http_status_code", "Last HTTP status code, 0 when none.", labels=labels
        )
        probes = C("cutover_probes", "Probes made.", labels=labels)
        failures = C(
            "cutover_probe_failures", "Failed probes by reason.", labels=[*labels, "reason"]
        )
        expiry = G(
            "cutover_probe_tls_expiry_timestamp_seconds",
            "Expiry of the certificate served in the last TLS handshake (https only).",
            labels=labels,
        )
        w_latency = G(
            "cutover_window_latency_seconds",
            "Quantiles of successful probe durations over the judge window.",
            labels=[*labels, "q"],
        )
        w_errors = G(
            "cutover_window_error_ratio", "Failed / all probes in the judge window.", labels=labels
        )
        w_samples = G("cutover_window_samples", "Probes in the judge window.", labels=labels)
        l_ratio = G(
            "cutover_latency_ratio",
            "Candidate / baseline window latency quantile.",
            labels=["check", "q"],
        )
        e_delta = G(
            "cutover_error_ratio_delta",
            "Candidate minus baseline window error ratio.",
            labels=["check"],
        )
        expected = G(
            "cutover_expected_error_ratio",
            "What users see through DNS: sum over platforms of traffic share x window error ratio.",
            labels=["check"],
        )
        regression = G(
            "cutover_regression",
            "The judge's verdict now: 1 when the candidate regressed on this signal.",
            labels=["check", "signal"],
        )
        firing = G(
            "cutover_alert_firing",
            "1 while the alert fires (after `for`; down at once).",
            labels=["check", "signal"],
        )
        for state in self.checks:
            if (evaluation := self.evaluations.get(state.name)) is not None:
                for verdict in evaluation.verdicts():
                    regression.add_metric(
                        [state.name, verdict.signal], 1.0 if verdict.regressed else 0.0
                    )
            for signal in SIGNALS:
                firing.add_metric(
                    [state.name, signal], 1.0 if (state.name, signal) in self.fired else 0.0
                )
            stats = {}
            for name, series in state.series.items():
                lv = [state.name, name, series.role]
                last = series.last
                stats[name] = series.stats(self.now)
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
                    failures.add_metric([*lv, reason], float(series.failures.get(reason, 0)))
                if series.tls_expiry is not None:
                    expiry.add_metric(lv, series.tls_expiry)
                st = stats[name]
                for q in QUANTILES:
                    w_latency.add_metric([*lv, f"{q:g}"], st.quantiles[q])
                w_errors.add_metric(lv, st.error_ratio)
                w_samples.add_metric(lv, float(st.samples))
            b, c = stats.get(self.baseline), stats.get(self.candidate)
            if b is not None and c is not None:
                for q in QUANTILES:
                    l_ratio.add_metric(
                        [state.name, f"{q:g}"], ratio(c.quantiles[q], b.quantiles[q])
                    )
                e_delta.add_metric([state.name], c.error_ratio - b.error_ratio)
            shares = self.shares(state.name) if self.shares is not None else None
            if shares is not None:
                ratios = {p: st.error_ratio for p, st in stats.items()}
                expected.add_metric([state.name], expected_error_ratio(shares, ratios))
        for check, judged in sorted(self.traffic.items()):
            for verdict in judged.verdicts():
                regression.add_metric([check, verdict.signal], 1.0 if verdict.regressed else 0.0)
                fired = (check, verdict.signal) in self.fired
                firing.add_metric([check, verdict.signal], 1.0 if fired else 0.0)
        yield from (success, duration, phase, status, probes, failures, expiry)
        yield from (w_latency, w_errors, w_samples, l_ratio, e_delta, regression, firing)
        if self.shares is not None:
            yield expected


def oracle_registry(collector: OracleCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
