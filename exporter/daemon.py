"""Composition root: builds everything from the config, schedules the probes, reloads."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from exporter import __version__
from exporter.alerting.alerts import (
    Alerts,
    AlertSettings,
    Event,
    Fired,
    Incident,
    Judged,
    Resolved,
)
from exporter.alerting.book import IncidentBook
from exporter.alerting.dynamo_outbox import DynamoOutboxStore
from exporter.alerting.local_outbox import LocalOutboxStore
from exporter.alerting.messages import (
    TRAFFIC_PREFIX,
    Context,
    shift_notifications,
)
from exporter.alerting.migration import readiness_notification, step_notification
from exporter.alerting.outbox import Notification, OutboxStore
from exporter.alerting.slack import Notifier, SlackSettings
from exporter.config import Config, load_config
from exporter.errors import ConfigError, Refused
from exporter.judging.judge import Evaluation, JudgeSettings
from exporter.logs import REDACTOR
from exporter.probing.probe import Prober
from exporter.probing.runner import ProbeRunner
from exporter.probing.state import CheckState
from exporter.readiness.watch import News, Observed, ReadinessWatch, StepBegan, WatchSettings
from exporter.route53.actions import Notify
from exporter.route53.model import Observation, ShiftSettings
from exporter.route53.observe import guarding_checks, observation, shift_settings
from exporter.route53.read import (
    RecordSpec,
    RecordWeights,
    Route53Reader,
    Route53State,
    normalize_name,
)
from exporter.route53.runner import ShiftRunner
from exporter.store.calls import Inline, StoreCalls, Threaded
from exporter.store.documents import DocumentStore, DynamoDocuments, LocalDocuments
from exporter.store.leadership import ALWAYS, Gate, Leadership
from exporter.store.local import StateDir
from exporter.store.vantages import OwnVantage, SharedVantages, Vantages
from exporter.tasks import Supervisor
from exporter.traffic.counts import ALL, OTHER
from exporter.traffic.drain import Drains, drain_specs, routes_of
from exporter.traffic.timeline import Timeline
from exporter.traffic.watch import TrafficWatch
from exporter.web.collector import (
    BuildInfoCollector,
    ShiftView,
    StateCollector,
    View,
    expected_error_ratio,
)

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


def judge_settings(cfg: Config) -> JudgeSettings:
    j = cfg.judge
    return JudgeSettings(
        min_samples=j.min_samples,
        confidence=j.confidence,
        latency_max_ratio=j.latency.max_ratio,
        latency_min_increase=j.latency.min_increase,
        errors_max_increase=j.errors.max_increase,
        down_after=j.down_after,
        window=j.window,
    )


def traffic_checks(cfg: Config) -> set[str]:
    """The check names real traffic's incidents may carry: traffic:<every group it may judge>."""
    if cfg.traffic is None:
        return set()
    routes = {ALL, OTHER, *(g.name for g in cfg.traffic.routes)}
    return {f"{TRAFFIC_PREFIX}{route}" for route in routes}


def alert_settings(cfg: Config) -> AlertSettings:
    a = cfg.alerting
    if a is None:
        return AlertSettings()
    return AlertSettings(
        for_=a.for_, resolve_after=a.resolve_after, repeat_interval=a.repeat_interval
    )


def slack_settings(cfg: Config) -> SlackSettings | None:
    if cfg.alerting is None or cfg.alerting.slack is None:
        return None
    slack = cfg.alerting.slack
    api_url = slack.api_url + "/" if slack.api_url else None
    return SlackSettings(
        token=slack.token,
        webhook_url=slack.webhook_url,
        channel=slack.channel,
        api_url=api_url,
        state_dir=cfg.state_dir,
    )


def secrets_of(cfg: Config) -> Iterator[str]:
    """Every configured value that must never reach a log line, a page or a metric."""
    for platform in cfg.platforms.values():
        yield from platform.headers.values()
    for check in cfg.checks:
        yield from check.headers.values()
    if cfg.alerting is not None and cfg.alerting.slack is not None:
        slack = cfg.alerting.slack
        yield from (s for s in (slack.token, slack.webhook_url) if s)
    if cfg.traffic is not None:
        for source in cfg.traffic.sources:
            if source.heroku_drain is not None:
                yield source.heroku_drain.token
            if source.prometheus is not None:
                yield from source.prometheus.headers.values()


@dataclass(frozen=True, slots=True)
class Stores:
    """Where the state lives, chosen once where the daemon is composed: state_dir's files for
    one replica (or memory only, without a state_dir), the HA table for several."""

    documents: DocumentStore | None  # incidents and the shift plan; None: memory only
    outbox: OutboxStore  # the Slack outbox
    gate: Gate  # whether, and under which lease epoch, this replica acts
    calls: Callable[[str], StoreCalls]  # how each user's store calls are made (by its name)


# a call to the HA table on the daemon's behalf waits at most this long (s; at most the lease)
HA_CALL_TIMEOUT = 5.0


def compose_stores(cfg: Config, state_dir: Path | None, leadership: Leadership | None) -> Stores:
    """The stores of this replica: in the HA table under the lease when there is one, else in
    state_dir as they always were."""
    if leadership is None or cfg.ha is None:
        return Stores(
            documents=LocalDocuments(state_dir) if state_dir is not None else None,
            outbox=LocalOutboxStore(state_dir),
            gate=ALWAYS,
            calls=lambda _name: Inline(),
        )
    ha = cfg.ha
    timeout = min(HA_CALL_TIMEOUT, ha.lease)
    endpoint_url = str(ha.endpoint_url) if ha.endpoint_url is not None else None
    # botocore's own timeouts: a call (two attempts) ends about when its caller stops waiting
    documents = DynamoDocuments(
        table=ha.table,
        migration=leadership.migration,
        fence=leadership.fence,
        region=ha.region,
        endpoint_url=endpoint_url,
        timeout=timeout / 2,
    )
    outbox = DynamoOutboxStore(
        table=ha.table,
        migration=leadership.migration,
        fence=leadership.fence,
        region=ha.region,
        endpoint_url=endpoint_url,
        timeout=timeout / 2,
    )
    return Stores(
        documents=documents,
        outbox=outbox,
        gate=leadership,
        calls=lambda name: Threaded(timeout, f"ha-{name}"),
    )


# The daemon's task groups, in the order `stop` ends them.
# TRAFFIC (the pollers and the judge) is replaced on a reload that changes traffic; DRAINS (the
# ingester of POSTed bodies) lives as long as the daemon, whatever the reloads.
PROBES, VANTAGES, ROUTE53, WATCH, READINESS, TRAFFIC, DRAINS, SHIFT, SLACK, HA = (
    "probe", "vantages", "route53", "watch", "readiness", "traffic", "drains", "shift", "slack",
    "ha",
)  # fmt: skip
# Real traffic is judged as often as the timeline fills a bucket.
TRAFFIC_TICK = 5.0


class Daemon:
    """Owns the config in force, the probe schedule and the state it fills."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | Path | None = None,
        registry: CollectorRegistry | None = None,
        prober: Prober | None = None,
        allow_route53_writes: bool = False,
        dry_run: bool = False,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path is not None else None
        self.registry = registry if registry is not None else CollectorRegistry()
        self.prober = prober if prober is not None else Prober()
        self.started = time.time()
        self.config_loaded_at = time.time()
        # the checks in force, their schedule and latest verdicts: every probe result goes to
        # the step ledger, every verdict through the vantages to the incidents
        self.probes = ProbeRunner(
            self.prober,
            judge_settings(config),
            probed=lambda *result: self.readiness.probed(*result),
            judged=self._judged,
        )
        # every task the daemon starts belongs to it, in groups: PROBES, ROUTE53, WATCH, ...
        self.tasks = Supervisor(log)
        self.last_reload_ok = True
        self.records: dict[str, RecordSpec] = {}
        self.route53: Route53State | None = None
        # locked for this process alone: StateDirError names the other daemon holding it
        self._state_dir = StateDir.open(config.state_dir) if config.state_dir else None
        self.state_dir = self._state_dir.path if self._state_dir is not None else None
        # this replica's part in an HA migration (`ha`): None for a single replica
        self.leadership = Leadership(config) if config.ha is not None else None
        self.stores = compose_stores(config, self.state_dir, self.leadership)
        # the epoch under which this replica loaded the shared incidents and plan (HA), and
        # what wakes the task that loads them: the lease changed, or a new plan needs loading
        self._synced_epoch: int | None = None
        self._lease_news = asyncio.Event()
        if self.leadership is not None:
            self.leadership.on_change(self._lease_news.set)
        # the incidents and what they owe Slack, saved where the state lives
        self.book = IncidentBook(
            alert_settings(config),
            self.stores.documents,
            self.stores.calls("alerts"),
            leads=self.leads,
            epoch=self._lease_epoch,
            on_event=self._on_event,
        )
        self.notifier: Notifier | None = None
        # where this replica's verdicts go: straight to the incidents (one replica), or into
        # the rounds that combine every vantage's (`ha`); chosen in `start`
        self.vantages: Vantages = OwnVantage()
        # writes need both the config's `shift.enabled` and the command line's permission
        self.allow_route53_writes = allow_route53_writes and not dry_run
        self.shift: ShiftRunner | None = None
        # real traffic: the timeline every source fills, the pollers, the verdicts per group
        self.timeline = Timeline()
        self.traffic = TrafficWatch(self.timeline, self.tasks, TRAFFIC)
        # the step ledger and the go/no-go verdict per migrated record (state_dir/readiness.json)
        self.readiness = ReadinessWatch(
            WatchSettings.of(config),
            path=self.state_dir / "readiness.json" if self.state_dir is not None else None,
            started=self.started,
        )
        self._outages: set[str] = set()  # checks whose two platforms both fail (logged once)

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
        # Heroku drains are fed by POSTs: one ingester for the daemon's life, reconfigured on
        # reload, so that a POST in flight and the recent frame ids survive it
        self.drains = Drains(self.timeline, registry=self.registry)
        self.drains.configure(drain_specs(config), routes_of(config))
        self.registry.register(StateCollector(self.view))
        self.registry.register(BuildInfoCollector(__version__))
        ProcessCollector(registry=self.registry)
        self.reload_ok.set(1)
        self.reload_ts.set(self.config_loaded_at)
        REDACTOR.set_secrets(secrets_of(config))

    # -- state ------------------------------------------------------------------------------

    @property
    def alerts(self) -> Alerts:
        return self.book.alerts

    def checks(self) -> list[CheckState]:
        return self.probes.checks()

    def view(self) -> View:
        return View(
            config=self.config,
            checks=self.checks(),
            now=time.monotonic(),
            route53=self.route53.snapshot() if self.route53 is not None else None,
            records=self.records,
            alerts=self.alerts.incidents,
            resolved=tuple(self.alerts.resolved),
            links=self._links(),
            evaluations=self.probes.evaluations,
            traffic=self.traffic.view(),
            readiness=self.readiness.verdicts(),
            step_marks=self.readiness.step_marks(),
            step_history=self.readiness.history(),
            lease=self.leadership.snapshot() if self.leadership is not None else None,
            vantages=self.vantages.snapshot(),
            shift=None
            if self.shift is None
            else ShiftView(
                status=self.shift.plan.status(time.time()),
                changes=dict(self.shift.changes),
                last_change=self.shift.last_change,
                last_rollback=self.shift.last_rollback,
            ),
        )

    def _links(self) -> dict[str, str]:
        """Links to the Slack messages of the open and the last resolved incidents."""
        if self.notifier is None:
            return {}
        incidents = (*self.alerts.incidents, *self.alerts.resolved)
        return {i.id: link for i in incidents if (link := self.notifier.permalink(i.id))}

    @property
    def ready(self) -> bool:
        return self.probes.ready

    def notifications_pending(self) -> int | None:
        """Notifications not yet delivered to Slack; None without Slack."""
        return self.notifier.pending() if self.notifier is not None else None

    def shift_control(self, action: str, who: str, reason: str | None = None) -> str:
        """A person's word on the shift plan (pause, resume, approve, rollback).

        Raises Refused when it does not apply, or when no shift is configured.
        """
        if self.shift is None:
            raise Refused("no shift section in the configuration")
        return self.shift.control(action, who, reason)

    # -- lifecycle --------------------------------------------------------------------------

    def may_act(self) -> bool:
        """Whether this replica may change the migration now: always without `ha`, else
        while it holds the lease."""
        return self.leadership is None or self.leadership.may_act()

    def _lease_epoch(self) -> int | None:
        return self.leadership.epoch() if self.leadership is not None else None

    def leads(self) -> bool:
        """Whether this replica changes the incidents and the shift plan now: always without
        `ha`; else while it acts and holds them as the table had them when it took the lease."""
        if self.leadership is None:
            return True
        return self.leadership.may_act() and self._synced_epoch == self.leadership.epoch()

    async def start(self) -> None:
        if self.leadership is not None:
            self.vantages = SharedVantages.of(
                self.config,
                writer=self.leadership.me,
                checks=self.probes.names,
                leads=self.leadership.may_act,
            )
            self.tasks.spawn(self.leadership.run(), "ha-lease", HA)
            self.tasks.spawn(self._follow_lease(self.leadership), "ha-state", HA)
        self.tasks.spawn(self.vantages.run(self._feed), "vantages", VANTAGES)
        self.tasks.spawn(self.probes.run(), "probe-schedule", PROBES)
        self.probes.apply(self.config, judge_settings(self.config))
        self._apply_route53(self.config, previous=None)
        self._apply_slack(self.config)
        self._apply_shift(self.config)
        self._apply_traffic(self.config, previous=None)
        self.readiness.configure(self._watch_settings(self.config))
        self.tasks.spawn(self._watch_loop_lag(), "loop-lag", WATCH)
        self.tasks.spawn(self.readiness.run(self._observed, self._announce), "readiness", READINESS)
        self.tasks.spawn(self.drains.run(), "traffic-drains", DRAINS)
        # what a crash left owed is handed to the outbox before anything new happens
        self.book.settle(doubtful=True)
        if self.shift is not None:
            self.shift.settle(doubtful=True)

    async def stop(self) -> None:
        await self.tasks.stop_group(PROBES)
        self.probes.clear()
        await self.tasks.stop_group(VANTAGES)
        self.vantages.close()
        await self.tasks.stop_group(ROUTE53)
        await self.tasks.stop_group(WATCH)
        await self.tasks.stop_group(READINESS)
        self.readiness.save()
        await self.tasks.stop_group(TRAFFIC)
        await self.tasks.stop_group(DRAINS)
        await self.traffic.aclose()
        if self.route53 is not None:
            self.route53.close()
        self.book.save()
        await self.tasks.stop_group(SHIFT)
        if self.shift is not None:
            await self.shift.aclose()
        await self.book.aclose()
        if self.notifier is not None:
            # a short grace to deliver what is queued; the rest waits on disk for the next start
            await self.notifier.flush(timeout=5.0)
            await self.tasks.stop_group(SLACK)
            await self.notifier.aclose()
        if self.leadership is not None:
            # last: the lease is released once nothing of this replica can act any more
            self.leadership.stop()
            await self.tasks.stop_group(HA)
            self.leadership.close()
        await self.tasks.aclose()
        if self._state_dir is not None:
            self._state_dir.close()

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
        if new.state_dir != self.config.state_dir:
            log.warning("state_dir changes take effect only after a restart")
        if new.ha != self.config.ha or new.ha_migration != self.config.ha_migration:
            log.warning("ha changes take effect only after a restart")
        self.probes.apply(new, judge_settings(new))
        self._apply_route53(new, previous=self.config)
        self._apply_traffic(new, previous=self.config)
        self.drains.configure(drain_specs(new), routes_of(new))
        self.book.configure(alert_settings(new))
        for incident in self._forget_removed_checks(new):
            log.info(
                "incident %s closed: check %s left the configuration", incident.id, incident.check
            )
        self.config = new
        self._apply_slack(new)
        self._apply_shift(new)
        self.readiness.configure(self._watch_settings(new))
        self.config_loaded_at = time.time()
        self.reload_ok.set(1)
        self.last_reload_ok = True
        self.reload_ts.set(self.config_loaded_at)
        REDACTOR.set_secrets(secrets_of(new))
        log.info("configuration reloaded: %d checks", len(new.checks))
        return []

    def _apply_route53(self, cfg: Config, previous: Config | None) -> None:
        """Start, change or stop the Route53 reader; records still configured keep their weights."""
        old = previous.route53 if previous is not None else None
        if previous is not None and cfg.route53 == old and self.route53 is not None:
            return
        self.tasks.cancel(self.tasks.group(ROUTE53))
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
        self.tasks.spawn(self._route53_loop(self.route53, cfg.route53.interval), "route53", ROUTE53)

    # -- alerts and notifications ---------------------------------------------------------

    async def _follow_lease(self, leadership: Leadership) -> None:
        """Each time this replica takes the lease, load the incidents and the shift plan as the
        table has them (the previous leader may have changed them) before it changes either."""
        changed = self._lease_news
        failures = 0
        while True:
            epoch = leadership.epoch()
            if epoch is not None and epoch != self._synced_epoch:
                if await self._take_over(epoch, quiet=failures > 0):
                    failures = 0
                    continue
                failures += 1
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(5.0, 0.5 * 2**failures))
                continue
            if epoch is None:
                self.book.drop()  # not this replica's to write any more
            changed.clear()
            await changed.wait()

    async def _take_over(self, epoch: int, *, quiet: bool = False) -> bool:
        try:
            alerts = await self.book.read()
            if self.shift is not None:
                await self.shift.take_over()
        except OSError as exc:
            if not quiet:
                log.error(
                    "ha: cannot read the incidents and shift plan from the table (%s): this "
                    "replica leads but changes neither until it can",
                    exc,
                )
            return False
        if self._lease_epoch() != epoch:
            return False  # lost the lease meanwhile: what was read may be stale already
        self._synced_epoch = epoch
        log.info("ha: leading under epoch %d with the table's incidents and plan", epoch)
        self.book.adopt(alerts)
        # what the previous leader left owed may have reached Slack before it stopped
        self.book.settle(doubtful=True)
        if self.shift is not None:
            self.shift.settle(doubtful=True)
        return True

    def _forget_removed_checks(self, cfg: Config) -> list[Incident]:
        return self.book.forget_checks({c.name for c in cfg.checks} | traffic_checks(cfg))

    def _apply_slack(self, cfg: Config) -> None:
        settings = slack_settings(cfg)
        if settings is None:
            if self.notifier is not None:
                log.warning(
                    "Slack removed from the configuration: %d notification(s) stay on disk",
                    self.notifier.pending(),
                )
                self.tasks.cancel(self.tasks.group(SLACK))
                self.notifier = None
                self.book.relay = None
            return
        if self.notifier is None:
            # the outbox lives where the rest of the state does (state_dir or the HA table),
            # fixed until a restart
            self.notifier = Notifier(
                settings,
                store=self.stores.outbox,
                registry=self.registry,
                logger=logging.getLogger("cutover.slack"),
                gate=self.stores.gate,
                calls=self.stores.calls("outbox"),
            )
        else:
            # unchanged settings change nothing: a reload must not cut a Retry-After short
            self.notifier.update_settings(settings)
        self.book.relay = self._relay
        if not self.tasks.group(SLACK):
            self.tasks.spawn(self.notifier.run(), "slack", SLACK)

    def _relay(self, owed: list[Notification], doubtful: bool = False) -> set[str]:
        """Hand owed notifications to the outbox; the keys it now holds on disk.

        `doubtful` at start-up: what is still owed then may have reached Slack just before a
        crash, so the outbox looks for each in the channel before sending it.
        """
        if self.notifier is None:
            return set()
        return {n.key for n in owed if self.notifier.accept(n, doubtful=doubtful)}

    def _judged(self, state: CheckState, evaluation: Evaluation, failing: bool) -> None:
        """A check's new verdict from this replica's probes (`failing`: both platforms fail
        it): to the incidents, or first through the vantages' rounds (`ha`)."""
        self._note_outage(state.name, failing)
        fed = self.vantages.judged(state.name, evaluation, failing)
        if fed is not None:
            self._advance_incidents(state.name, fed, lambda: self._context(state))

    def _feed(self, check: str, evaluation: Judged) -> None:
        """The vantages' combined verdicts on a check (`ha`), fed as its own would be."""
        state = self.probes.state(check)
        if state is not None:
            self._advance_incidents(check, evaluation, lambda: self._context(state))

    def _note_outage(self, check: str, failing: bool) -> None:
        """Say once when both platforms start failing a check, and once when that ends."""
        if failing and check not in self._outages:
            self._outages.add(check)
            log.warning(
                "both platforms failing %s (%s and %s): an outage, not a candidate regression",
                check, self.config.baseline, self.config.candidate,
            )  # fmt: skip
        elif not failing and check in self._outages:
            self._outages.discard(check)
            log.info("%s: the platforms no longer both fail", check)

    def _advance_incidents(
        self, check: str, evaluation: Judged, context: Callable[[], Context]
    ) -> None:
        cfg = self.config
        self.book.advance(
            check, evaluation, context, Context(baseline=cfg.baseline, candidate=cfg.candidate)
        )

    def _on_event(self, event: Event) -> None:
        """An incident fired, resolved or reminds: logged, and told to the step ledger."""
        incident = event.incident
        if isinstance(event, Fired):
            log.warning(
                "FIRING %s: %s regression on %s (%s)",
                incident.id, incident.signal, incident.check, self.config.candidate,
            )  # fmt: skip
        elif isinstance(event, Resolved):
            log.info("RESOLVED %s after %.0fs", incident.id, event.duration)
        self.readiness.incident(incident)

    def _context(self, state: CheckState) -> Context:
        """A probed check's message context: its record's shares and the probes' error ratios."""
        view = self.view()
        ratios = {p: s.stats(view.now).error_ratio for p, s in state.series.items()}
        return self._incident_context(view.shares_for(state.name), ratios)

    def _incident_context(
        self, shares: Mapping[str, float] | None, error_ratios: Mapping[str, float]
    ) -> Context:
        """What a message says besides the incident: the candidate's share of users and what
        they see through DNS (both unknown without Route53 weights), and where to look."""
        cfg = self.config
        share = expected = None
        if shares is not None:
            share = shares.get(cfg.candidate, 0.0)
            expected = expected_error_ratio(shares, error_ratios)
        alerting = cfg.alerting
        return Context(
            baseline=cfg.baseline,
            candidate=cfg.candidate,
            candidate_share=share,
            expected_error_ratio=expected,
            dashboard_url=alerting.dashboard_url if alerting else None,
            max_ratio=cfg.judge.latency.max_ratio,
            max_error_increase=cfg.judge.errors.max_increase,
        )

    # -- real traffic -------------------------------------------------------------------------

    def _apply_traffic(self, cfg: Config, previous: Config | None) -> None:
        """Start, change or stop the traffic sources and their judging; the timeline stays."""
        if self.traffic.apply(cfg, previous, judge_settings(cfg)):
            self.tasks.spawn(self._traffic_loop(), "traffic-judge", TRAFFIC)

    async def _traffic_loop(self) -> None:
        while True:
            try:
                self._judge_traffic(time.time())
            except Exception:
                # the judge is pure and the timeline is ours: anything here is a bug, and the
                # loop must go on judging
                log.exception("traffic: judging real traffic failed unexpectedly")
            await asyncio.sleep(TRAFFIC_TICK)

    def _judge_traffic(self, now: float) -> None:
        """Judge real traffic, and feed each route group's verdict to its incidents."""
        weights = self._traffic_weights()
        shares = weights.platform_shares() if weights is not None else None
        for verdict in self.traffic.judge(now, weights):
            self._advance_incidents(
                verdict.check,
                verdict.evaluation,
                functools.partial(self._incident_context, shares, verdict.error_ratios),
            )

    def _traffic_weights(self) -> RecordWeights | None:
        """The Route53 weights of the record real traffic is split by, once read."""
        record = self.config.traffic_record()
        spec = self.records.get(record.key) if record is not None else None
        if spec is None or self.route53 is None:
            return None
        return self.route53.weights.get(spec)

    # -- readiness ----------------------------------------------------------------------------

    def _watch_settings(self, cfg: Config) -> WatchSettings:
        return WatchSettings.of(cfg, self.traffic.route_groups())

    def _observed(self) -> Observed:
        """What the step ledger reads at each tick."""
        return Observed(
            route53=self.route53.snapshot() if self.route53 is not None else None,
            records=self.records,
            incidents=self.alerts.incidents,
            shift=self.shift.plan if self.shift is not None else None,
            counters=self.timeline.counters,
            vantages=self.vantages.waits,
        )

    def _announce(self, news: Sequence[News]) -> int:
        """Hand the ledger's news to Slack's outbox, in the migration's thread; how many it holds.

        Without Slack there is nobody to tell: all of it is done with. The keys come from the
        step's start, so news offered again after a restart is recognised, not sent twice.
        """
        if self.notifier is None:
            return len(news)
        cfg = self.config
        held = 0
        for item in news:
            if isinstance(item, StepBegan):
                step = item.step
                n = step_notification(
                    step.record,
                    step.started_at,
                    step.shares,
                    item.previous,
                    step.changed_by,
                    step.dry_run,
                    real_shares=item.real_shares,
                )
            else:
                n = readiness_notification(item.readiness, cfg.baseline, cfg.candidate, time.time())
            if not self.notifier.accept(n):
                break  # the outbox cannot save: offered again at the next tick
            held += 1
        return held

    # -- guarded shifting -------------------------------------------------------------------

    def shift_settings(self, cfg: Config) -> ShiftSettings | None:
        return shift_settings(cfg, self.allow_route53_writes)

    def _apply_shift(self, cfg: Config) -> None:
        settings = self.shift_settings(cfg)
        if self.shift is not None:
            # several replicas may write: never an unconditional UPSERT (issue 14)
            self.shift.compare_and_swap = cfg.ha is not None
        if self.shift is not None and settings is not None:
            if settings == self.shift.settings:
                return
            try:
                self.shift.plan.replace_settings(time.time(), settings)
                self.shift.settings = settings
                self.shift.save()
                return
            except ValueError as exc:
                log.warning("shift: a new plan replaces the old one: %s", exc)
        self.tasks.cancel(self.tasks.group(SHIFT))
        if self.shift is not None:
            old = self.shift
            self.shift = None
            self.tasks.spawn(old.aclose(), "shift-close", SHIFT)
        if settings is None or cfg.shift is None or cfg.route53 is None:
            return
        record = self.records[normalize_name(cfg.shift.record)]
        if self.leadership is not None and self._synced_epoch is not None:
            # a new plan while leading: it is the table's to load, with the incidents
            self._synced_epoch = None
            self._lease_news.set()
        self.shift = ShiftRunner(
            settings,
            record,
            state_path=None,
            documents=self.stores.documents,
            calls=self.stores.calls("shift"),
            endpoint_url=cfg.route53.endpoint_url,
            render=self._shift_notifications,
            relay=self._relay,
            tasks=self.tasks,
            compare_and_swap=cfg.ha is not None,
            epoch=self._lease_epoch,
            may_act=self.leads,
        )
        if settings.dry_run:
            log.info(
                "shift: dry run, nothing is written to Route53 (%s)",
                "shift.enabled is false"
                if not cfg.shift.enabled
                else "cutover run was not given --allow-route53-writes",
            )
        self.tasks.spawn(self._shift_loop(), "shift", SHIFT)

    def shift_checks(self) -> list[str]:
        """The checks that guard the shifted record: their regressions roll it back."""
        return guarding_checks(self.config, self.traffic.route_groups())

    def _shift_observation(self) -> Observation:
        assert self.shift is not None
        spec = self.shift.record
        weights = None
        if self.route53 is not None and spec not in self.route53.failing:
            weights = self.route53.weights.get(spec)
        return observation(
            self.shift.settings,
            self.shift_checks(),
            weights,
            self.alerts.incidents,
            self.alerts.firing(),
            self.readiness.verdicts(),
        )

    async def _shift_loop(self) -> None:
        while True:
            try:
                if self.shift is not None:
                    self.shift.evaluate(time.time(), self._shift_observation())
            except Exception:
                log.exception("shift: unexpected error while evaluating the plan")
            await asyncio.sleep(0.5)

    def _shift_notifications(self, action: Notify) -> list[Notification]:
        """What Slack hears of a shift action; nothing without Slack."""
        if self.notifier is None:
            return []
        return shift_notifications(
            action.kind, action.text, action.about, time.time(), dry_run=action.dry_run
        )

    # -- loops ------------------------------------------------------------------------------

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
