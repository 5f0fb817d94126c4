"""The checks in force and their ticks: both platforms probed at one moment, recorded, judged.

`ProbeRunner` holds each configured check's state (its series per platform: windows, counters,
history) and its slot on the one probe schedule. On every tick it probes the platforms at the
same moment (the judge compares them pairwise), records the results and judges the check; what
comes of it goes to the two listeners it was built with (`probed` for every result, `judged`
for every verdict). It does not know what incidents, vantages or readiness make of them.

A reload (`apply`) keeps every unchanged check undisturbed on its schedule, with its windows and
its judge's hysteresis, and keeps the windows of unchanged platforms of a changed check.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass

from exporter.config import Check, Config, probe_spec
from exporter.judging.judge import Evaluation, JudgeSettings, judge
from exporter.probing.probe import Prober
from exporter.probing.schedule import Schedule, Slot
from exporter.probing.state import CheckState, Series, both_failing
from exporter.probing.window import Window

__all__ = ["Judged", "ProbeRunner", "Probed"]

log = logging.getLogger("cutover")

# (check, platform, success, duration): each probe's result as it is recorded
Probed = Callable[[str, str, bool, float], None]
# (the check's state, its new verdict, whether both platforms fail it): after each tick
Judged = Callable[[CheckState, Evaluation, bool], None]


def _offset(name: str, interval: float) -> float:
    # a stable spread: the same check keeps its slot across reloads and restarts, and
    # checks sharing an interval do not all fire in the same instant
    return (zlib.crc32(name.encode()) / 2**32) * interval


@dataclass(slots=True)
class _Running:
    check: Check
    state: CheckState
    slot: Slot


class ProbeRunner:
    """Every configured check's state and schedule; `run` is the schedule's one task."""

    def __init__(
        self, prober: Prober, settings: JudgeSettings, *, probed: Probed, judged: Judged
    ) -> None:
        self.prober = prober
        self.settings = settings
        self._probed = probed
        self._judged = judged
        self._baseline = self._candidate = ""
        self._running: dict[str, _Running] = {}
        # when each check probes next: one timer for all checks, a task only per tick under way
        self.schedule = Schedule()
        # the judge's latest verdicts per check, and the hysteresis it carries to the next
        self.evaluations: dict[str, Evaluation] = {}

    async def run(self) -> None:
        await self.schedule.run()

    def checks(self) -> list[CheckState]:
        return [r.state for r in self._running.values()]

    def names(self) -> Collection[str]:
        return self._running.keys()

    def state(self, check: str) -> CheckState | None:
        running = self._running.get(check)
        return running.state if running is not None else None

    @property
    def ready(self) -> bool:
        """Every check was probed at least once on every platform."""
        return bool(self._running) and all(r.state.probed for r in self._running.values())

    def clear(self) -> None:
        """Forget every check (the schedule's task is stopped by its owner)."""
        self._running.clear()

    def apply(self, cfg: Config, settings: JudgeSettings) -> None:
        """Schedule the checks of `cfg`, keeping the state of every unchanged check and platform."""
        self.settings = settings
        self._baseline, self._candidate = cfg.baseline, cfg.candidate
        running: dict[str, _Running] = {}
        old = dict(self._running)
        undisturbed: set[str] = set()
        for check in cfg.checks:
            prior = old.pop(check.name, None)
            series: dict[str, Series] = {}
            for pname, platform in cfg.platforms.items():
                spec = probe_spec(platform, check)
                kept = prior.state.series.get(pname) if prior else None
                if kept is not None and kept.spec == spec and kept.role == platform.role:
                    kept.window.span = cfg.judge.window
                    series[pname] = kept
                else:
                    series[pname] = Series(
                        check=check.name,
                        platform=pname,
                        role=platform.role,
                        spec=spec,
                        window=Window(cfg.judge.window),
                    )
            if prior is not None:
                unchanged = prior.check == check and all(
                    prior.state.series.get(p) is s for p, s in series.items()
                )
                if unchanged and len(prior.state.series) == len(series):
                    # nothing about this check changed: its loop keeps running undisturbed
                    running[check.name] = prior
                    undisturbed.add(check.name)
                    continue
                self._unschedule(prior)
            state = CheckState(name=check.name, series=series)
            if prior is not None:
                # keep the tick count rising: kept windows must never see a tick twice
                state.next_tick = prior.state.next_tick
            slot = self.schedule.add(
                check.name,
                check.interval,
                _offset(check.name, check.interval),
                functools.partial(self._tick, check, state),
                asyncio.get_running_loop().time(),
            )
            running[check.name] = _Running(check=check, state=state, slot=slot)
        for gone in old.values():
            self._unschedule(gone)
        for name in self.evaluations.keys() - undisturbed:
            del self.evaluations[name]  # a changed check is judged afresh, a removed one not at all
        self._running = running

    def _unschedule(self, running: _Running) -> None:
        tick = self.schedule.cancel(running.slot)
        if tick is not None:
            tick.cancel()

    async def _tick(self, check: Check, state: CheckState) -> None:
        """One tick of a check (its schedule calls it): both platforms probed at the same
        moment (the judge compares them pairwise), recorded, judged."""
        tick = state.next_tick
        state.next_tick += 1
        t = time.monotonic()
        wall = time.time()
        series = list(state.series.values())
        try:
            # the others' probes as tasks, the first one in this tick's own task: both start
            # now, and a tick costs one task fewer than a gather of all (hundreds a second)
            loop = asyncio.get_running_loop()
            others = [loop.create_task(self.prober.probe(s.spec)) for s in series[1:]]
            try:
                results = [await self.prober.probe(series[0].spec)] if series else []
                results += [await task for task in others]
            finally:
                for task in others:
                    task.cancel()
            for s, result in zip(series, results, strict=True):
                s.record(result, t, tick)
                self._probed(check.name, s.platform, result.success, result.duration)
                s.history.add(wall, result.success, result.duration)
                if not result.success:
                    log.debug(
                        "probe %s on %s failed: %s (%s)",
                        check.name,
                        s.platform,
                        result.reason,
                        result.detail,
                    )
            self._judge(state, t)
        except Exception:
            # the prober never raises for a failing target, so this is a bug of ours: say
            # so loudly, and keep this check on its schedule rather than silently stop it
            log.exception("probing or judging %s failed unexpectedly", check.name)

    def _judge(self, state: CheckState, t: float) -> None:
        baseline = state.series.get(self._baseline)
        candidate = state.series.get(self._candidate)
        if baseline is None or candidate is None:
            return
        evaluation = judge(
            baseline.window.samples(),
            candidate.window.samples(),
            t,
            self.settings,
            previous=self.evaluations.get(state.name),
        )
        self.evaluations[state.name] = evaluation
        self._judged(state, evaluation, both_failing(baseline, candidate, t))
