"""The measured split against the weights: the lag after a change, and divergence, on a synthetic clock."""

from __future__ import annotations

import pytest

from exporter.traffic.split import SplitWatch, shares_of

NINETY_TEN = {"heroku": 0.9, "aws": 0.1}
HALF = {"heroku": 0.5, "aws": 0.5}


def test_shares_need_requests() -> None:
    assert shares_of({"heroku": 0.0, "aws": 0.0}) is None
    assert shares_of({"heroku": 90.0, "aws": 10.0}) == pytest.approx(NINETY_TEN)
    assert shares_of({"heroku": 9.0, "aws": 1.0}, minimum=50) is None


def test_the_lag_runs_from_the_change_until_the_split_follows() -> None:
    watch = SplitWatch(tolerance=0.05, margin=300)
    start = watch.update(1000, NINETY_TEN, NINETY_TEN, ttl=60)
    assert start.converged and not start.diverged and start.lag is None  # no change seen yet
    changed = watch.update(2000, HALF, NINETY_TEN, ttl=60)  # the weights moved; users not yet
    assert changed.changed_at == 2000 and changed.lag == 0 and not changed.converged
    lagging = watch.update(2200, HALF, {"heroku": 0.7, "aws": 0.3}, ttl=60)
    assert lagging.lag == 200 and not lagging.diverged  # within TTL + margin: not yet a problem
    followed = watch.update(2300, HALF, {"heroku": 0.53, "aws": 0.47}, ttl=60)
    assert followed.converged and followed.lag == 300
    later = watch.update(4000, HALF, {"heroku": 0.52, "aws": 0.48}, ttl=60)
    assert later.lag == 300  # the lag of that change stays what it was


def test_a_split_that_stays_far_from_the_weights_diverges_after_ttl_and_margin() -> None:
    watch = SplitWatch(tolerance=0.05, margin=300)
    watch.update(1000, NINETY_TEN, NINETY_TEN, ttl=60)
    watch.update(2000, HALF, NINETY_TEN, ttl=60)
    assert not watch.update(2000 + 359, HALF, NINETY_TEN, ttl=60).diverged
    status = watch.update(2000 + 360, HALF, NINETY_TEN, ttl=60)  # TTL 60 + margin 300
    assert status.diverged and status.lag == 360
    assert not watch.update(2400, HALF, HALF, ttl=60).diverged  # it followed at last


def test_unknown_figures_never_diverge() -> None:
    watch = SplitWatch(tolerance=0.05, margin=0)
    assert not watch.update(1000, None, NINETY_TEN, ttl=60).diverged
    assert not watch.update(5000, HALF, None, ttl=60).diverged
