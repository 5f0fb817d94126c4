"""What every polling traffic source shares: the loop, its status, and failures that never stop it.

A polling source (Prometheus, CloudWatch) asks an outside service every `interval` for what
happened since it last asked. `PollingSource.run` owns the loop: it keeps the schedule, puts
the reports in the timeline, keeps the source's status (up, last success, how far its data
reaches), and turns every failure into a reason: logged once when it starts and once when it
ends, counted, shown, never raised. A subclass only says how to ask (`poll`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from exporter.errors import SourceError
from exporter.traffic.counts import Report
from exporter.traffic.routes import Routes
from exporter.traffic.timeline import SourceStatus, Timeline

__all__ = ["Poll", "PollingSource", "SourceError"]


@dataclass(frozen=True, slots=True)
class Poll:
    """One successful poll: the reports, and the time up to which the source has told all."""

    reports: list[Report]
    covered_until: float


class PollingSource(ABC):
    """One configured source that polls; `run` is its task (the daemon's supervisor owns it)."""

    kind: str = ""

    def __init__(
        self,
        name: str,
        platform: str,
        interval: float,
        timeline: Timeline,
        routes: Routes,
        *,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self.platform = platform
        self.interval = interval
        self.timeline = timeline
        self.routes = routes
        self.clock = clock
        self.log = logger or logging.getLogger(f"cutover.traffic.{name}")
        self.status: SourceStatus = timeline.status(name, platform, self.kind)
        self.errors: dict[str, int] = {}  # reason -> failed polls, for the metrics

    @abstractmethod
    async def poll(self, now: float) -> Poll:
        """Ask once for what happened up to `now`; raise SourceError(reason, detail) to fail."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release what the source holds (sessions, threads); a source dropped on reload too."""

    async def run(self) -> None:
        """Poll every `interval` until cancelled; a failure is a status, never an exception."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.poll_once()
            next_at += self.interval
            late = loop.time() - next_at
            if late > 0:  # a poll that took longer than the interval: skip, do not burst
                next_at += (late // self.interval + 1) * self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def poll_once(self) -> None:
        now = self.clock()
        status = self.status
        status.last_attempt = now
        try:
            result = await self.poll(now)
        except SourceError as exc:
            self._failed(exc.reason, exc.detail)
            return
        except Exception as exc:  # a bug of ours must not end the polling: say it loudly
            self.log.exception("traffic source %s: unexpected error", self.name)
            self._failed("other", f"{type(exc).__name__}: {exc}"[:200])
            return
        for report in result.reports:
            self.timeline.add(report, now)
        if status.error is not None:
            self.log.info("traffic source %s works again", self.name)
        status.up, status.error = True, None
        status.last_success = now
        status.covered_until = max(status.covered_until or 0.0, result.covered_until)

    def _failed(self, reason: str, detail: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1
        status = self.status
        text = f"{reason}: {detail}"
        if status.error != text:
            # once per distinct failure, not at every interval of a long outage
            self.log.warning("traffic source %s failed (%s)", self.name, text)
        status.up, status.error = False, text
