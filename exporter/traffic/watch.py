"""Real traffic as the daemon judges it: the section's pollers, a verdict per route group, the split.

`TrafficWatch` holds what real traffic adds to the daemon besides the timeline (which it shares
with the drains, fed by POSTs, and with the readiness ledger): the pollers of the configured
sources, each route group's latest verdict and the hysteresis it carries, the windows the
verdicts were drawn from, and the measured split against the Route53 weights. The daemon asks
it for verdicts (`judge`) and turns them into incidents; it never reaches back into the daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from exporter.alerting.messages import TRAFFIC_PREFIX
from exporter.config import Config
from exporter.judging.judge import JudgeSettings
from exporter.judging.traffic import TrafficEvaluation, TrafficSettings, judge_traffic
from exporter.probing.history import SplitHistory
from exporter.route53.read import RecordWeights
from exporter.tasks import Supervisor
from exporter.traffic.counts import ALL, Tally
from exporter.traffic.feeds import TrafficFeeds
from exporter.traffic.routes import Routes
from exporter.traffic.split import SplitStatus, SplitWatch, shares_of
from exporter.traffic.timeline import Timeline
from exporter.web.collector import TrafficView

__all__ = ["KEEP_MARGIN", "SPLIT_SPAN", "RouteVerdict", "TrafficWatch"]

# The timeline keeps this much beyond the judged window: late reports, the split's minute.
KEEP_MARGIN = 300.0
# The measured split is over the last minute of traffic both platforms' sources reported.
SPLIT_SPAN = 60.0


@dataclass(frozen=True, slots=True)
class RouteVerdict:
    """One route group's verdict, as an incident's check, with the error ratio per platform
    over the judged window (what users see through DNS is drawn from them)."""

    check: str
    evaluation: TrafficEvaluation
    error_ratios: Mapping[str, float]


class TrafficWatch:
    """The traffic section in force: its pollers (in the supervisor's `group`) and verdicts."""

    def __init__(self, timeline: Timeline, tasks: Supervisor, group: str) -> None:
        self.timeline = timeline
        self._tasks = tasks
        self._group = group
        self._cfg: Config | None = None
        self._settings: TrafficSettings | None = None
        self.feeds: TrafficFeeds | None = None
        # the latest verdict per route group, and the hysteresis it carries to the next
        self.evaluations: dict[str, TrafficEvaluation] = {}
        self._windows: dict[tuple[str, str], Tally] = {}
        self._end: float | None = None
        self._split: SplitWatch | None = None
        self._split_status: SplitStatus | None = None
        self._split_history = SplitHistory()

    @staticmethod
    def settings_of(cfg: Config, judge: JudgeSettings) -> TrafficSettings | None:
        if cfg.traffic is None:
            return None
        return TrafficSettings.from_judge(judge, cfg.traffic.min_requests, cfg.traffic.window)

    def apply(self, cfg: Config, previous: Config | None, judge: JudgeSettings) -> bool:
        """Start, change or stop the pollers for `cfg`; the timeline stays. True when real
        traffic is judged under `cfg` and its pollers were (re)started: the caller starts its
        judging loop in the same group then."""
        unchanged = (
            previous is not None
            and cfg.traffic == previous.traffic
            and cfg.judge == previous.judge
            and cfg.route53 == previous.route53
        )
        self._cfg = cfg
        if unchanged:
            return False
        self._tasks.cancel(self._tasks.group(self._group))
        if self.feeds is not None:
            self._tasks.spawn(self.feeds.aclose(), "traffic-close", self._group)
            self.feeds = None
        self._settings = settings = self.settings_of(cfg, judge)
        if cfg.traffic is None or settings is None:
            self.evaluations.clear()
            self._windows.clear()
            self._split = self._split_status = None
            return False
        self.timeline.keep = max(self.timeline.keep, settings.window + KEEP_MARGIN)
        routes = Routes([(g.name, g.path_regex) for g in cfg.traffic.routes])
        self.feeds = TrafficFeeds(cfg.traffic, self.timeline, routes)
        for name, run in self.feeds.runs():
            self._tasks.spawn(run, name, self._group)
        judged = set(self.feeds.route_groups())
        for route in [r for r in self.evaluations if r not in judged]:
            del self.evaluations[route]  # a group no longer judged: its hysteresis too
        record = cfg.traffic_record()
        old_record = previous.traffic_record() if previous is not None else None
        if self._split is None or record != old_record:
            tr = cfg.traffic
            self._split = SplitWatch(tr.split_tolerance, tr.split_margin) if record else None
            self._split_status = None
        return True

    def route_groups(self) -> tuple[str, ...]:
        return self.feeds.route_groups() if self.feeds is not None else ()

    def judge(self, now: float, weights: RecordWeights | None) -> list[RouteVerdict]:
        """Judge each route group over the span both platforms' sources have reported;
        `weights` are the Route53 weights of the record the traffic is split by, if read."""
        cfg, feeds, settings = self._cfg, self.feeds, self._settings
        if cfg is None or feeds is None or settings is None:
            return []
        platforms = (cfg.baseline, cfg.candidate)
        end = feeds.covered_until(platforms)
        self._end = end
        windows: dict[tuple[str, str], Tally] = {}
        verdicts = []
        for route in feeds.route_groups():
            sides = [
                self.timeline.series(p, route, end - settings.window, end) if end else []
                for p in platforms
            ]
            evaluation = judge_traffic(
                sides[0],
                sides[1],
                end if end is not None else now,
                settings,
                previous=self.evaluations.get(route),
            )
            self.evaluations[route] = evaluation
            for platform, series in zip(platforms, sides, strict=True):
                total = windows[(platform, route)] = Tally()
                for _, tally in series:
                    total.merge(tally)
            ratios = {p: windows[(p, route)].error_ratio for p in platforms}
            verdicts.append(RouteVerdict(f"{TRAFFIC_PREFIX}{route}", evaluation, ratios))
        self._windows = windows
        if self._split is not None:
            shares = weights.platform_shares() if weights is not None else None
            ttl = weights.ttl if weights is not None else None
            self._split_status = split = self._split.update(
                now, shares, self._measured_split(end), ttl
            )
            self._split_history.add(
                now,
                (split.measured or {}).get(cfg.candidate),
                None if split.weights is None else split.weights.get(cfg.candidate, 0.0),
            )
        return verdicts

    def _measured_split(self, end: float | None) -> dict[str, float] | None:
        if end is None or self._cfg is None:
            return None
        requests = {
            p: self.timeline.total(p, ALL, end - SPLIT_SPAN, end).requests
            for p in (self._cfg.baseline, self._cfg.candidate)
        }
        return shares_of(requests)

    def view(self) -> TrafficView | None:
        """Real traffic for a scrape or the page: live counters and sources, the last verdicts."""
        cfg, feeds = self._cfg, self.feeds
        if cfg is None or cfg.traffic is None or feeds is None:
            return None
        record = cfg.traffic_record()
        return TrafficView(
            roles={name: p.role for name, p in cfg.platforms.items()},
            counters=dict(self.timeline.counters),
            sources=[replace(s) for s in self.timeline.sources.values()],
            source_errors=feeds.source_errors(),
            windows=self._windows,
            verdicts=dict(self.evaluations),
            record=record.name if record is not None else None,
            split=self._split_status,
            window_end=self._end,
            split_history=tuple(self._split_history.points()),
        )

    async def aclose(self) -> None:
        if self.feeds is not None:
            await self.feeds.aclose()
