"""The probe schedule: one timer for every check, a task only for a tick under way."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exporter.config import parse_config
from exporter.daemon import PROBES, Daemon
from exporter.probing.schedule import Schedule
from tests.conftest import FakePlatform, config_yaml

ENV = {"PROBE_SECRET": "s3cret-header-value"}


class Ticks:
    """A schedule whose ticks are recorded: (name, loop time)."""

    def __init__(self) -> None:
        self.schedule = Schedule()
        self.seen: list[tuple[str, float]] = []
        self.under_way: dict[str, int] = {}

    def tick(self, name: str, takes: float = 0.0) -> Any:
        async def run() -> None:
            self.under_way[name] = self.under_way.get(name, 0) + 1
            assert self.under_way[name] == 1, f"two ticks of {name} at once"
            self.seen.append((name, asyncio.get_running_loop().time()))
            try:
                await asyncio.sleep(takes)
            finally:
                self.under_way[name] -= 1

        return run


@pytest.fixture
async def ticks() -> AsyncIterator[Ticks]:
    t = Ticks()
    runner = asyncio.get_running_loop().create_task(t.schedule.run())
    try:
        yield t
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        assert all(n == 0 for n in t.under_way.values())  # its ticks were ended with it


async def test_each_slot_ticks_on_its_own_grid(ticks: Ticks) -> None:
    loop = asyncio.get_running_loop()
    now = loop.time()
    ticks.schedule.add("a", 0.1, 0.0, ticks.tick("a"), now)
    ticks.schedule.add("b", 0.25, 0.05, ticks.tick("b"), now)
    await asyncio.sleep(0.8)
    a = [t for n, t in ticks.seen if n == "a"]
    b = [t for n, t in ticks.seen if n == "b"]
    assert len(a) >= 5 and len(b) >= 2
    # on the grid: offset + k * interval (late by the loop's delays; uvloop's timers round to
    # the millisecond, so perhaps a hair early)
    for times, interval, offset in ((a, 0.1, 0.0), (b, 0.25, 0.05)):
        for t in times:
            phase = (t - offset) % interval
            assert phase < interval / 2 or interval - phase < 2e-3


async def test_an_earlier_slot_wakes_the_schedule(ticks: Ticks) -> None:
    loop = asyncio.get_running_loop()
    ticks.schedule.add("late", 3600.0, 1800.0, ticks.tick("late"), loop.time())
    await asyncio.sleep(0.05)  # the schedule now sleeps until "late", half an hour away
    ticks.schedule.add("soon", 0.1, 0.0, ticks.tick("soon"), loop.time())
    await asyncio.sleep(0.35)
    assert [n for n, _ in ticks.seen].count("soon") >= 2
    assert "late" not in [n for n, _ in ticks.seen]


async def test_a_slow_tick_never_overlaps_the_next_and_skips_missed_slots(ticks: Ticks) -> None:
    loop = asyncio.get_running_loop()
    ticks.schedule.add("slow", 0.05, 0.0, ticks.tick("slow", takes=0.12), loop.time())
    await asyncio.sleep(0.6)
    times = [t for _, t in ticks.seen]
    assert len(times) >= 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.11 for g in gaps)  # the next starts after the last ended (never two)
    assert len(times) < 0.6 / 0.05  # missed slots were skipped, not fired in a burst


async def test_a_cancelled_slot_stops_and_hands_back_its_tick(ticks: Ticks) -> None:
    loop = asyncio.get_running_loop()
    slot = ticks.schedule.add("gone", 0.05, 0.0, ticks.tick("gone", takes=0.2), loop.time())
    while not ticks.seen:  # its first tick is under way
        await asyncio.sleep(0.01)
    running = ticks.schedule.cancel(slot)
    assert running is slot.running and running is not None
    running.cancel()
    await asyncio.sleep(0.3)
    assert len(ticks.seen) == 1
    assert ticks.under_way["gone"] == 0


async def test_checks_waiting_are_not_tasks(platforms: tuple[FakePlatform, FakePlatform]) -> None:
    """A task per check sleeping between ticks cost 2.4 kB a check: 12 MB at 5000 checks."""
    baseline, candidate = platforms
    extra = "".join(
        f"  - {{name: c{i:03d}, path: /c{i}, interval: 1h, timeout: 1s}}\n" for i in range(300)
    )
    cfg = parse_config(
        config_yaml(baseline.url, candidate.url, extra_checks=extra, interval="1h"), env=ENV
    )
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        await asyncio.sleep(0.2)
        assert len(daemon.probes.schedule) == 301
        # the schedule's own task; not one task per check
        assert len(daemon.tasks.group(PROBES)) == 1
    finally:
        await daemon.stop()


async def test_a_tick_that_fails_is_logged_and_the_slot_goes_on(
    ticks: Ticks, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug of ours")

    ticks.schedule.add("broken", 0.05, 0.0, broken, asyncio.get_running_loop().time())
    await asyncio.sleep(0.3)
    assert calls >= 2  # still on its schedule
    assert "a probe tick ended with an unexpected error" in caplog.text
    assert "a bug of ours" in caplog.text
