"""A step's evidence in constant memory: the log histogram holds only the buckets it needs."""

from __future__ import annotations

import math
import random
import tracemalloc

import pytest

from exporter.judging.evidence import Evidence, Lag1, LatencyHistogram, Side


def test_the_histogram_holds_the_range_seen_whatever_the_order() -> None:
    rng = random.Random(4)
    values = [rng.lognormvariate(math.log(0.08), 0.3) for _ in range(5000)]
    ordered, shuffled = LatencyHistogram(), LatencyHistogram()
    for v in sorted(values):
        ordered.add(v)
    for v in values:
        shuffled.add(v)
    assert (ordered.first, ordered.counts) == (shuffled.first, shuffled.counts)
    # a check's latencies span a few dozen 5% buckets, not the 290 from 0.1 ms to 120 s
    assert len(ordered.counts) < 80
    values.sort()
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * len(values))]
        assert ordered.quantile(q) == pytest.approx(exact, rel=0.03)


def test_merge_and_round_trip() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    for v in (0.01, 0.02):
        a.add(v)
    for v in (0.5, 0.0, math.nan, 1e6):
        b.add(v)
    a.merge(b)
    assert a.total == 6
    again = LatencyHistogram.from_dict(a.to_dict())
    assert (again.first, again.counts) == (a.first, a.counts)
    # nonsense indices and counts in a saved file are dropped, not trusted
    odd = LatencyHistogram.from_dict({"-3": 5, "100000": 2, "40": 0, "41": 3})
    assert odd.items() == [(41, 3)]


def test_a_side_records_failures_apart_from_latencies() -> None:
    side = Side()
    for i in range(100):
        side.record(i % 10 != 0, 0.05)
    assert (side.count, side.failures) == (100, 10)
    assert side.latency is not None and side.latency.total == 90
    assert side.n_eff_errors() == 100  # spread failures: no burst, no discount


def test_lag1_discounts_bursts() -> None:
    steady, bursty = Lag1(), Lag1()
    for i in range(1000):
        steady.add(float(i % 2))
        bursty.add(1.0 if 400 <= i < 500 else 0.0)
    assert steady.effective(1000) == 1000  # alternating: negative correlation counts as none
    assert bursty.effective(1000) < 100


def test_a_checks_evidence_stays_small() -> None:
    """A step holds one Evidence per check: with 5000 checks, each byte here is 5 kB of RSS.

    Both sides' counts and Lag1 figures share one array per side (boxed floats took 1.57 kB
    a check where this takes about 1.15 kB)."""
    rng = random.Random(1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = []
        for k in range(500):
            evidence = Evidence.empty(f"c{k:05d}", "probes")
            for side in (evidence.baseline, evidence.candidate):
                for i in range(200):
                    side.record(i % 50 != 0, 0.05 * rng.lognormvariate(0, 0.2))
            held.append(evidence)
        per_check = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    finally:
        tracemalloc.stop()
    assert per_check < 1300


def test_a_side_round_trips_and_its_lags_are_views() -> None:
    side = Side()
    for i in range(300):
        side.record(i % 7 != 0, 0.05 + (i % 13) * 0.001)
    again = Side.from_dict(side.to_dict())
    assert again == side
    assert again.failure_lag == side.failure_lag and again.failure_lag is not None
    assert again.failure_lag.n == 300
    lag = side.latency_lag
    assert lag is not None
    lag.add(0.0)  # a view: it writes through to the side
    assert side.latency_lag == lag and side != again
    requests = Side.requests()
    requests.count, requests.failures = 10.0, 1.0
    assert Side.from_dict(requests.to_dict()) == requests
    assert requests.failure_lag is None and requests.n_eff_errors() == 10
