"""The pacer alone, on a synthetic clock: spacing between sends, backoff after failures."""

from __future__ import annotations

import pytest

from exporter.alerting.pacing import Pacer


def top(low: float, high: float) -> float:
    return high  # the jitter's upper end: each delay is its ceiling


def bottom(low: float, high: float) -> float:
    return low


def test_each_attempt_spaces_the_next_by_min_interval() -> None:
    pacer = Pacer(min_interval=1.0)
    assert pacer.delay(100.0) <= 0, "the first message goes at once"
    pacer.attempted(100.0)
    assert pacer.delay(100.25) == pytest.approx(0.75)
    assert pacer.delay(101.0) <= 0


def test_backoff_doubles_from_min_to_max_then_stays() -> None:
    pacer = Pacer(min_backoff=1.0, max_backoff=60.0, uniform=top)
    delays = [pacer.failed(None) for _ in range(9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert pacer.streak == 9


def test_backoff_jitter_is_at_least_half_of_the_ceiling() -> None:
    pacer = Pacer(min_backoff=1.0, max_backoff=60.0, uniform=bottom)
    assert [pacer.failed(None) for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]


def test_retry_after_is_honoured_with_a_little_more_never_less() -> None:
    pacer = Pacer(min_backoff=1.0, uniform=top)
    assert pacer.failed(30.0) == pytest.approx(33.0)
    assert Pacer(uniform=bottom).failed(30.0) == 30.0
    assert pacer.failed(0.0) == 1.0, "Retry-After: 0 still waits min_backoff"
    assert pacer.streak == 2


def test_a_success_ends_the_streak_and_says_how_long_it_was() -> None:
    pacer = Pacer(min_backoff=1.0, uniform=top)
    for _ in range(3):
        pacer.failed(None)
    assert pacer.succeeded() == 3
    assert pacer.succeeded() == 0
    assert pacer.failed(None) == 1.0, "backoff starts over from min_backoff"
