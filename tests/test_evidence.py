"""A step's evidence in constant memory: the log histogram holds only the buckets it needs."""

from __future__ import annotations

import math
import random

import pytest

from exporter.judging.evidence import Lag1, LatencyHistogram, Side


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
