"""The per-check metric families, written straight to Prometheus' text formats in small slices.

Why not a client_python collector: with thousands of checks, building a Metric object and a
Sample tuple per line and encoding them costs ~0.8 s per 1000 checks, all of it on the event loop
that times the probes (bench/probe). Here each series keeps its label text escaped once
(`Series.label_parts`, in client_python's sorted order), lines are f-strings, and `render_checks` yields after every slice of checks
so that the /metrics handler can give the loop back between slices.

The families and their meaning are the SPEC's; `tests/metrics_oracle.py` builds the same
families with client_python and the tests compare the two sample for sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from exporter.judging.judge import SIGNALS, Evaluation
from exporter.probing.probe import PHASES, REASONS
from exporter.probing.state import DURATION_BUCKETS, CheckState, Series, label_value, ratio
from exporter.probing.window import QUANTILES, WindowStats
from exporter.web.collector import Judged, expected_error_ratio

_LE = (*(f'le="{b:g}"' for b in DURATION_BUCKETS), 'le="+Inf"')
# `q`, not `quantile`: Prometheus reserves `quantile` for summaries, and these are gauges of
# window figures (promtool check metrics flags a gauge with a `quantile` label)
_QUANTILE = tuple(f'q="{q:g}"' for q in QUANTILES)
_PHASE = tuple(f'phase="{p}"' for p in PHASES)
_REASON = tuple(f'reason="{r}"' for r in REASONS)
_SIGNAL = tuple(f'signal="{s}"' for s in SIGNALS)


_SMALL = 1_000_000  # below, Python's repr is Go's spelling (a count: `{n}.0`); from here, exponents


def number(value: float) -> str:
    """A sample value exactly as client_python writes it: Go's spelling of the specials, and
    Go's exponent from a million up (timestamps, large counters)."""
    if -_SMALL < value < _SMALL:
        return repr(float(value))
    if value != value:
        return "NaN"
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _bool(flag: bool) -> str:
    return "1.0" if flag else "0.0"


class Scrape:
    """What one scrape reads besides the live series: figures computed once, and the config's roles."""

    __slots__ = ("baseline", "candidate", "evaluations", "fired", "shares", "stats", "traffic")

    def __init__(
        self,
        baseline: str,
        candidate: str,
        fired: frozenset[tuple[str, str]],
        shares: Callable[[str], dict[str, float] | None] | None,
        evaluations: Mapping[str, Evaluation] | None = None,
        traffic: Mapping[str, Judged] | None = None,
    ) -> None:
        self.baseline = baseline
        self.candidate = candidate
        self.fired = fired
        self.shares = shares  # None when Route53 is not configured: no expected error ratio
        self.evaluations = evaluations or {}  # check -> the judge's last verdicts
        # real traffic's checks ("traffic:<route group>") -> their last verdicts (errors, latency)
        self.traffic = traffic or {}
        self.stats: dict[int, WindowStats] = {}  # id(series) -> its window figures now

    def of(self, series: Series) -> WindowStats:
        return self.stats[id(series)]


Rows = Callable[[Scrape, CheckState], Iterator[str]]


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # the family's name in OpenMetrics; counters add `_total` to their samples
    kind: str  # gauge, counter or histogram
    help: str
    rows: Rows
    tail: Callable[[Scrape], Iterator[str]] | None = None  # rows after the checks' rows

    def header(self, openmetrics: bool) -> str:
        # client_python names a counter family without `_total` in OpenMetrics, with it in text
        name = self.name if openmetrics or self.kind != "counter" else f"{self.name}_total"
        return f"# HELP {name} {self.help}\n# TYPE {name} {self.kind}\n"


def _success(scrape: Scrape, state: CheckState) -> Iterator[str]:
    for s in state.series.values():
        if s.last is not None:
            yield f"cutover_probe_success{{{s.labels}}} {_bool(s.last.success)}\n"


def _duration(scrape: Scrape, state: CheckState) -> Iterator[str]:
    for s in state.series.values():
        labels = s.labels
        check, platform, role = s.label_parts
        total = 0
        if s.probes_total < _SMALL:  # every count is: `{n}.0`, without a call per line
            for le, count in zip(_LE, s.buckets, strict=True):
                total += count
                yield f"cutover_probe_duration_seconds_bucket{{{check},{le},{platform},{role}}} {total}.0\n"
        else:
            for le, count in zip(_LE, s.buckets, strict=True):
                total += count
                yield (
                    f"cutover_probe_duration_seconds_bucket{{{check},{le},{platform},{role}}} "
                    f"{number(total)}\n"
                )
        yield f"cutover_probe_duration_seconds_count{{{labels}}} {number(total)}\n"
        yield f"cutover_probe_duration_seconds_sum{{{labels}}} {number(s.duration_sum)}\n"


def _phase(scrape: Scrape, state: CheckState) -> Iterator[str]:
    for s in state.series.values():
        last = s.last
        if last is None:
            continue
        check, platform, role = s.label_parts
        for label, value in zip(
            _PHASE,
            (last.resolve, last.connect, last.tls, last.processing, last.transfer),
            strict=True,
        ):
            yield f"cutover_probe_phase_seconds{{{check},{label},{platform},{role}}} {number(value)}\n"


def _status(scrape: Scrape, state: CheckState) -> Iterator[str]:
    for s in state.series.values():
        if s.last is not None:
            yield f"cutover_probe_http_status_code{{{s.labels}}} {number(s.last.status)}\n"


def _probes(scrape: Scrape, state: CheckState) -> Iterator[str]:
    for s in state.series.values():
        yield f"cutover_probes_total{{{s.labels}}} {number(s.probes_total)}\n"


def _failures(scrape: Scrape, state: CheckState) -> Iterator[str]:
    for s in state.series.values():
        check, platform, role = s.label_parts
        failures = s.failures
        if s.probes_total < _SMALL:
            for reason, label in zip(REASONS, _REASON, strict=True):
                yield f"cutover_probe_failures_total{{{check},{platform},{label},{role}}} {failures.get(reason, 0)}.0\n"
            continue
        for reason, label in zip(REASONS, _REASON, strict=True):
            yield (
                f"cutover_probe_failures_total{{{check},{platform},{label},{role}}} "
                f"{number(failures.get(reason, 0))}\n"
            )


def _expiry(scrape: Scrape, state: CheckState) -> Iterator[str]:
    for s in state.series.values():
        if s.tls_expiry is not None:
            yield f"cutover_probe_tls_expiry_timestamp_seconds{{{s.labels}}} {number(s.tls_expiry)}\n"


def _window_latency(scrape: Scrape, state: CheckState) -> Iterator[str]:
    for s in state.series.values():
        check, platform, role = s.label_parts
        quantiles = scrape.of(s).quantiles
        for q, label in zip(QUANTILES, _QUANTILE, strict=True):
            yield (
                f"cutover_window_latency_seconds{{{check},{platform},{label},{role}}} "
                f"{number(quantiles[q])}\n"
            )


def _window_errors(scrape: Scrape, state: CheckState) -> Iterator[str]:
    for s in state.series.values():
        yield f"cutover_window_error_ratio{{{s.labels}}} {number(scrape.of(s).error_ratio)}\n"


def _window_samples(scrape: Scrape, state: CheckState) -> Iterator[str]:
    for s in state.series.values():
        yield f"cutover_window_samples{{{s.labels}}} {number(scrape.of(s).samples)}\n"


def _pair(scrape: Scrape, state: CheckState) -> tuple[WindowStats, WindowStats] | None:
    b, c = state.series.get(scrape.baseline), state.series.get(scrape.candidate)
    if b is None or c is None:
        return None
    return scrape.of(b), scrape.of(c)


def _latency_ratio(scrape: Scrape, state: CheckState) -> Iterator[str]:
    pair = _pair(scrape, state)
    if pair is None:
        return
    b, c = pair
    check = state.label
    for q, label in zip(QUANTILES, _QUANTILE, strict=True):
        value = ratio(c.quantiles[q], b.quantiles[q])
        yield f"cutover_latency_ratio{{{check},{label}}} {number(value)}\n"


def _error_delta(scrape: Scrape, state: CheckState) -> Iterator[str]:
    pair = _pair(scrape, state)
    if pair is not None:
        b, c = pair
        yield f"cutover_error_ratio_delta{{{state.label}}} {number(c.error_ratio - b.error_ratio)}\n"


def _expected(scrape: Scrape, state: CheckState) -> Iterator[str]:
    shares = scrape.shares(state.name) if scrape.shares is not None else None
    if shares is None:
        return
    errors = {p: scrape.of(s).error_ratio for p, s in state.series.items()}
    value = expected_error_ratio(shares, errors)
    yield f"cutover_expected_error_ratio{{{state.label}}} {number(value)}\n"


def _regression(scrape: Scrape, state: CheckState) -> Iterator[str]:
    evaluation = scrape.evaluations.get(state.name)
    if evaluation is None:
        return
    check = state.label
    for verdict in evaluation.verdicts():
        signal = label_value(verdict.signal)
        yield f'cutover_regression{{{check},signal="{signal}"}} {_bool(verdict.regressed)}\n'


def _traffic_regression(scrape: Scrape) -> Iterator[str]:
    for check, evaluation in sorted(scrape.traffic.items()):
        label = f'check="{label_value(check)}"'
        for verdict in evaluation.verdicts():
            signal = label_value(verdict.signal)
            yield f'cutover_regression{{{label},signal="{signal}"}} {_bool(verdict.regressed)}\n'


def _traffic_firing(scrape: Scrape) -> Iterator[str]:
    for check, evaluation in sorted(scrape.traffic.items()):
        label = f'check="{label_value(check)}"'
        for verdict in evaluation.verdicts():
            firing = (check, verdict.signal) in scrape.fired
            signal = label_value(verdict.signal)
            yield f'cutover_alert_firing{{{label},signal="{signal}"}} {_bool(firing)}\n'


def _firing(scrape: Scrape, state: CheckState) -> Iterator[str]:
    check, fired = state.label, scrape.fired
    for signal, label in zip(SIGNALS, _SIGNAL, strict=True):
        yield f"cutover_alert_firing{{{check},{label}}} {_bool((state.name, signal) in fired)}\n"


FAMILIES: tuple[Family, ...] = (
    Family("cutover_probe_success", "gauge", "1 if the last probe passed.", _success),
    Family(
        "cutover_probe_duration_seconds",
        "histogram",
        "Duration of every successful probe.",
        _duration,
    ),
    Family(
        "cutover_probe_phase_seconds",
        "gauge",
        "Phases of the last probe: resolve, connect, tls, processing, transfer.",
        _phase,
    ),
    Family(
        "cutover_probe_http_status_code",
        "gauge",
        "Last HTTP status code, 0 when none.",
        _status,
    ),
    Family("cutover_probes", "counter", "Probes made.", _probes),
    Family("cutover_probe_failures", "counter", "Failed probes by reason.", _failures),
    Family(
        "cutover_probe_tls_expiry_timestamp_seconds",
        "gauge",
        "Expiry of the certificate served in the last TLS handshake (https only).",
        _expiry,
    ),
    Family(
        "cutover_window_latency_seconds",
        "gauge",
        "Quantiles of successful probe durations over the judge window.",
        _window_latency,
    ),
    Family(
        "cutover_window_error_ratio",
        "gauge",
        "Failed / all probes in the judge window.",
        _window_errors,
    ),
    Family("cutover_window_samples", "gauge", "Probes in the judge window.", _window_samples),
    Family(
        "cutover_latency_ratio",
        "gauge",
        "Candidate / baseline window latency quantile.",
        _latency_ratio,
    ),
    Family(
        "cutover_error_ratio_delta",
        "gauge",
        "Candidate minus baseline window error ratio.",
        _error_delta,
    ),
    Family(
        "cutover_regression",
        "gauge",
        "The judge's verdict now: 1 when the candidate regressed on this signal.",
        _regression,
        _traffic_regression,
    ),
    Family(
        "cutover_alert_firing",
        "gauge",
        "1 while the alert fires (after `for`; down at once).",
        _firing,
        _traffic_firing,
    ),
)
EXPECTED = Family(
    "cutover_expected_error_ratio",
    "gauge",
    "What users see through DNS: sum over platforms of traffic share x window error ratio.",
    _expected,
)


def render_checks(
    scrape: Scrape, checks: list[CheckState], now: float, *, openmetrics: bool, slice_size: int = 25
) -> Iterator[str]:
    """The per-check families as text, a chunk per slice of `slice_size` checks.

    A chunk may be empty: it only marks a point where the caller can yield to the loop. The window
    figures are computed once, first, so that every family of one scrape reads the same windows.
    """
    for start in range(0, len(checks), slice_size):
        for state in checks[start : start + slice_size]:
            for series in state.series.values():
                scrape.stats[id(series)] = series.stats(now)
        yield ""
    families = FAMILIES if scrape.shares is None else (*FAMILIES, EXPECTED)
    for family in families:
        yield family.header(openmetrics)
        rows = family.rows
        for start in range(0, len(checks), slice_size):
            yield "".join(
                [
                    line
                    for state in checks[start : start + slice_size]
                    for line in rows(scrape, state)
                ]
            )
        if family.tail is not None:
            yield "".join(family.tail(scrape))
