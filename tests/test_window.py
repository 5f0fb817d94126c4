"""window.Window: what it holds and the figures read from it, against a plain list of samples."""

from __future__ import annotations

import gc
import math
import random

from exporter.probing.window import QUANTILES, Sample, Window, quantile


def reference(samples: list[Sample], now: float, span: float) -> list[Sample]:
    return [s for s in samples if s.t >= now - span]


def test_window_keeps_exactly_the_last_span_through_many_trims() -> None:
    rnd = random.Random(3)
    span = 5.0
    window = Window(span)
    added: list[Sample] = []
    t = trimmed = 0.0
    for tick in range(3000):
        t += rnd.choice((0.01, 0.2, 0.5, 1.0, 3.0, 7.0))  # bursts, and gaps longer than the span
        sample = Sample(t=t, tick=tick, ok=rnd.random() > 0.2, latency=rnd.uniform(0.01, 0.5))
        if tick % 2:
            window.add(sample)
        else:
            window.append(*sample)
        added.append(sample)
        trimmed = max(trimmed, t)
        if tick % 7 == 0:
            trimmed = t + 1.0
            window.trim(trimmed)  # a scrape between probes trims too
        want = reference(added, trimmed, span)
        assert window.samples() == tuple(want)
        assert len(window) == len(want)
    # the columns do not grow with the history: expired samples are dropped, not kept
    assert len(window._t) <= max(2 * len(window), len(window) + 8)


def test_stats_are_the_figures_of_the_samples_in_the_window() -> None:
    window = Window(10.0)
    oks = [0.05, 0.3, 0.1, 0.2]
    for i, latency in enumerate(oks):
        window.append(float(i), i, True, latency)
    window.append(4.0, 4, False, 2.0)  # a failure: counted, its duration not a latency
    stats = window.stats()
    assert (stats.samples, stats.failures) == (5, 1)
    assert stats.error_ratio == 0.2
    assert stats.quantiles == {q: quantile(sorted(oks), q) for q in QUANTILES}
    assert stats.quantiles[0.5] == 0.15000000000000002
    window.trim(13.5)  # the first four are gone
    stats = window.stats()
    assert (stats.samples, stats.failures) == (1, 1)
    assert all(math.isnan(v) for v in stats.quantiles.values())
    empty = Window(1.0).stats()
    assert empty.samples == 0 and math.isnan(empty.error_ratio)


def test_samples_come_back_as_they_went_in() -> None:
    given = [Sample(t=1.5, tick=10**12, ok=False, latency=0.25), Sample(2.0, 11, True, 0.125)]
    window = Window(60.0, given)
    back = window.samples()
    assert back == tuple(given)
    assert [type(s.ok) for s in back] == [bool, bool]


def test_a_window_holds_a_few_objects_however_many_samples() -> None:
    """What the garbage collector walks per window does not grow with the samples in it."""

    def tracked(n: int) -> int:
        window = Window(1e9)
        for i in range(n):
            window.append(float(i), i, True, 0.1)
        seen: set[int] = set()
        todo: list[object] = [window]
        while todo:  # everything the window holds, through containers, but not the classes
            for o in gc.get_referents(todo.pop()):
                if gc.is_tracked(o) and not isinstance(o, type) and id(o) not in seen:
                    seen.add(id(o))
                    todo.append(o)
        return len(seen)

    assert tracked(1000) == tracked(10) <= 5


def test_error_ratio_without_stats() -> None:
    """The outage check reads the error ratio every tick: it agrees with stats()."""
    w = Window(10.0)
    assert math.isnan(w.error_ratio())
    for i in range(30):
        w.append(float(i), i, i % 3 != 0, 0.05)
    assert w.error_ratio() == w.stats().error_ratio


def test_a_full_window_holds_at_most_a_third_more_than_its_samples() -> None:
    """Expired samples wait in the arrays until a trim drops them together: with 10 000
    windows of 20 samples, letting them pile up to twice the window was megabytes."""
    window = Window(20.0)
    most = 0
    for i in range(2000):
        window.append(float(i), i, True, 0.1)
        most = max(most, len(window._t))
    assert len(window) == 21
    assert most <= 21 * 4 // 3 + 1
