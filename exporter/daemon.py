"""Composition root: builds everything from the config, runs the probe loops, reloads."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from exporter import __version__
from exporter.collector import BuildInfoCollector, StateCollector, View
from exporter.config import Check, Config, load_config, probe_spec
from exporter.errors import ConfigError
from exporter.logs import REDACTOR
from exporter.probe import Prober
from exporter.route53 import RecordSpec, Route53Reader, Route53State
from exporter.state import CheckState, Series
from exporter.window import Window

log = logging.getLogger("cutover")

LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def record_specs(cfg: Config) -> dict[str, RecordSpec]:
    """The Route53 records to read, by their config key (the normalised record name)."""
    if cfg.route53 is None:
        return {}
    return {
        r.key: RecordSpec(
            hosted_zone_id=r.hosted_zone_id,
            name=r.name,
            type=r.type,
            set_identifiers=r.set_identifiers,
        )
        for r in cfg.route53.records
    }


def secrets_of(cfg: Config) -> Iterator[str]:
    """Every configured value that must never reach a log line, a page or a metric."""
    for platform in cfg.platforms.values():
        yield from platform.headers.values()
    for check in cfg.checks:
        yield from check.headers.values()
    if cfg.alerting is not None and cfg.alerting.slack is not None:
        slack = cfg.alerting.slack
        yield from (s for s in (slack.token, slack.webhook_url) if s)


def _offset(name: str, interval: float) -> float:
    # a stable spread: the same check keeps its slot across reloads and restarts, and
    # checks sharing an interval do not all fire in the same instant
    return (zlib.crc32(name.encode()) / 2**32) * interval


@dataclass(slots=True)
class _Running:
    check: Check
    state: CheckState
    task: asyncio.Task[None]


class Daemon:
    """Owns the config in force, the probe loops and the state they fill."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | Path | None = None,
        registry: CollectorRegistry | None = None,
        prober: Prober | None = None,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path is not None else None
        self.registry = registry if registry is not None else CollectorRegistry()
        self.prober = prober if prober is not None else Prober()
        self.started = time.time()
        self.config_loaded_at = time.time()
        self._running: dict[str, _Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_reload_ok = True
        self.records: dict[str, RecordSpec] = {}
        self.route53: Route53State | None = None
        self._route53_task: asyncio.Task[None] | None = None

        self.reload_ok = Gauge(
            "cutover_config_last_reload_successful",
            "1 if the last configuration reload succeeded.",
            registry=self.registry,
        )
        self.reload_ts = Gauge(
            "cutover_config_last_reload_success_timestamp_seconds",
            "Time of the last successful configuration load.",
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "cutover_event_loop_lag_seconds",
            "Scheduling delay of the daemon's event loop: the quality of every timing it reports.",
            buckets=LOOP_LAG_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(StateCollector(self.view))
        self.registry.register(BuildInfoCollector(__version__))
        ProcessCollector(registry=self.registry)
        self.reload_ok.set(1)
        self.reload_ts.set(self.config_loaded_at)
        REDACTOR.set_secrets(secrets_of(config))

    # -- state ------------------------------------------------------------------------------

    def checks(self) -> list[CheckState]:
        return [r.state for r in self._running.values()]

    def view(self) -> View:
        return View(
            config=self.config,
            checks=self.checks(),
            now=time.monotonic(),
            route53=self.route53.snapshot() if self.route53 is not None else None,
            records=self.records,
        )

    @property
    def ready(self) -> bool:
        return bool(self._running) and all(r.state.probed for r in self._running.values())

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._apply(self.config, previous={})
        self._apply_route53(self.config, previous=None)
        self._spawn(self._watch_loop_lag(), "loop-lag")

    async def stop(self) -> None:
        tasks = [r.task for r in self._running.values()] + list(self._tasks)
        for task in tasks:
            task.cancel()
        if self._route53_task is not None:
            tasks.append(self._route53_task)
            self._route53_task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()
        self._tasks.clear()
        if self.route53 is not None:
            self.route53.close()

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- reload -----------------------------------------------------------------------------

    def reload(self) -> list[str]:
        """Load the config file again; swap it in only if valid. Returns the problems, if any."""
        if self.config_path is None:
            return ["no configuration file to reload (started without --config)"]
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.reload_ok.set(0)
            self.last_reload_ok = False
            log.error(
                "reload refused, the running configuration stays in force: %s",
                "; ".join(exc.details),
            )
            return exc.details
        if new.listen != self.config.listen:
            log.warning("listen address changes take effect only after a restart")
        self._apply(new, previous=self._running)
        self._apply_route53(new, previous=self.config)
        self.config = new
        self.config_loaded_at = time.time()
        self.reload_ok.set(1)
        self.last_reload_ok = True
        self.reload_ts.set(self.config_loaded_at)
        REDACTOR.set_secrets(secrets_of(new))
        log.info("configuration reloaded: %d checks", len(new.checks))
        return []

    def _apply(self, cfg: Config, previous: dict[str, _Running]) -> None:
        """Start the probe loops of `cfg`, keeping the state of every unchanged check and platform."""
        running: dict[str, _Running] = {}
        old = dict(previous)
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
                    continue
                prior.task.cancel()
            state = CheckState(name=check.name, series=series)
            if prior is not None:
                # keep the tick count rising: kept windows must never see a tick twice
                state.next_tick = prior.state.next_tick
            task = asyncio.create_task(self._probe_loop(check, state), name=f"check:{check.name}")
            running[check.name] = _Running(check=check, state=state, task=task)
        for gone in old.values():
            gone.task.cancel()
        self._running = running

    def _apply_route53(self, cfg: Config, previous: Config | None) -> None:
        """Start, change or stop the Route53 reader; records still configured keep their weights."""
        old = previous.route53 if previous is not None else None
        if previous is not None and cfg.route53 == old and self.route53 is not None:
            return
        if self._route53_task is not None:
            self._route53_task.cancel()
            self._route53_task = None
        self.records = record_specs(cfg)
        if cfg.route53 is None:
            if self.route53 is not None:
                self.route53.close()
                self.route53 = None
            return
        reader = Route53Reader(
            tuple(self.records.values()),
            endpoint_url=cfg.route53.endpoint_url,
            timeout=cfg.route53.timeout,
        )
        if self.route53 is None:
            self.route53 = Route53State(reader, logger=logging.getLogger("cutover.route53"))
        else:
            self.route53.replace_reader(reader)
        self._route53_task = asyncio.create_task(
            self._route53_loop(self.route53, cfg.route53.interval), name="route53"
        )

    # -- loops ------------------------------------------------------------------------------

    async def _probe_loop(self, check: Check, state: CheckState) -> None:
        loop = asyncio.get_running_loop()
        interval = check.interval
        offset = _offset(check.name, interval)
        now = loop.time()
        # the next slot of this check's grid: same phase across reloads, no burst at start
        next_at = now + ((offset - now) % interval)
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            tick = state.next_tick
            state.next_tick += 1
            t = time.monotonic()
            series = list(state.series.values())
            # both platforms at the same moment: the judge compares them pairwise
            results = await asyncio.gather(*(self.prober.probe(s.spec) for s in series))
            for s, result in zip(series, results, strict=True):
                s.record(result, t, tick)
                if not result.success:
                    log.debug(
                        "probe %s on %s failed: %s (%s)",
                        check.name,
                        s.platform,
                        result.reason,
                        result.detail,
                    )
            next_at += interval
            late = loop.time() - next_at
            if late > 0:
                # a stalled loop: skip the missed slots instead of firing them in a burst
                next_at += (late // interval + 1) * interval

    async def _route53_loop(self, state: Route53State, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await state.poll_once()
            except Exception:
                # the state turns every Route53 failure into a reason; anything else is a bug,
                # and still must not end the polling
                log.exception("route53: unexpected error while polling")
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    async def _watch_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        period = 0.25
        while True:
            before = loop.time()
            await asyncio.sleep(period)
            self.loop_lag.observe(max(0.0, loop.time() - before - period))
