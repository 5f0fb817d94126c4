"""The polling traffic sources of a traffic section, and what judging needs to know of them.

`TrafficFeeds` builds the Prometheus and CloudWatch sources the config names (the Heroku drains
are fed by POSTs, see drain.py), hands their loops to the daemon's supervisor, and says which
route groups can be judged: a platform as a whole always, each configured group only where every
source of both platforms tells routes apart.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable
from typing import Any

from exporter.config import Traffic, TrafficSource
from exporter.traffic.counts import ALL
from exporter.traffic.routes import Routes
from exporter.traffic.sources import PollingSource
from exporter.traffic.timeline import Timeline

__all__ = ["TrafficFeeds"]


class TrafficFeeds:
    """The pollers of one traffic section, filling one timeline."""

    def __init__(self, traffic: Traffic, timeline: Timeline, routes: Routes) -> None:
        self.timeline = timeline
        self.routes = routes
        self.pollers: list[PollingSource] = []
        for name, source in traffic.named_sources():
            if source.prometheus is not None:
                from exporter.traffic.prometheus import build as prometheus

                self.pollers.append(
                    prometheus(name, source.prometheus, source.platform, timeline, routes)
                )
            elif source.cloudwatch_alb is not None:
                from exporter.traffic.cloudwatch import build as cloudwatch

                self.pollers.append(
                    cloudwatch(name, source.cloudwatch_alb, source.platform, timeline, routes)
                )
        timeline.forget_sources(name for name, _ in traffic.named_sources())
        # per-route judging needs every source of both platforms to tell routes apart
        sources = [source for _, source in traffic.named_sources()]
        self.routed = bool(routes) and all(_tells_routes(s) for s in sources)

    def runs(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The pollers' loops, named, for the daemon's supervisor."""
        return [(f"traffic:{p.name}", p.run()) for p in self.pollers]

    def route_groups(self) -> tuple[str, ...]:
        """What is judged: each platform as a whole, and the groups where both tell them apart."""
        return (ALL, *self.routes.names) if self.routed else (ALL,)

    def covered_until(self, platforms: Iterable[str]) -> float | None:
        """The end of the span every platform's sources have reported (None: one has nothing)."""
        marks = [self.timeline.covered_until(p) for p in platforms]
        known = [m for m in marks if m is not None]
        return min(known) if known and len(known) == len(marks) else None

    def source_errors(self) -> dict[str, dict[str, int]]:
        return {p.name: dict(p.errors) for p in self.pollers}

    async def aclose(self) -> None:
        for poller in self.pollers:
            await poller.aclose()


def _tells_routes(source: TrafficSource) -> bool:
    if source.heroku_drain is not None:
        return True  # it reads each request's path
    if source.prometheus is not None:
        return source.prometheus.route_label is not None
    return False  # a load balancer's totals only
