"""Where this replica's verdicts go before they reach the incidents, and what holds a step.

The daemon holds one `Vantages`, chosen where it is composed:

    OwnVantage      one replica (no `ha`): its own evaluation is what the incidents are fed, at
                    once, and nothing else holds a step: cutover as it always was
    SharedVantages  `ha`: every replica, leader or follower, writes its own report to the board
                    each round (exporter/store/vantage_board.py), reads every vantage's, and
                    combines them (exporter/judging/vantage.py); the combination is what the
                    incidents are fed, and a step waits until `ha.quorum` healthy vantages agree

A round lasts a third of the lease (RENEW_FRACTION: 5 s with the default 15 s lease), the
lease's renew cadence: one put and one query per replica and round, whatever the number and
intervals of the checks. A report carries each check's latest evaluation, so a check probed less
often than that is reported unchanged on several rounds; the streak of two rounds that fires a
regression seen from one vantage alone is then a short debounce, and `alerting.for` remains
what a regression must hold before it fires. A vantage whose last report is older than two
rounds is silent: it drops out of confirming and clearing, and holds steps until its report
expires (vantage_board.EXPIRES_AFTER).

Followers combine too (one query a round): their page shows every vantage, and a follower that
takes the lease over has a combination from its first moment. Only the leader exports
`cutover_ha_vantage_healthy`, so that the CutoverVantageDown alert fires once per vantage, not
once per replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol

from exporter.alerting.alerts import Judged
from exporter.config import Config
from exporter.errors import DynamoError
from exporter.judging.judge import Evaluation
from exporter.judging.vantage import (
    Combined,
    VantageReport,
    VantageSettings,
    combine,
    next_report,
    observe,
)
from exporter.judging.vantage_verdicts import CombinedEvaluation, combined_evaluation, waits
from exporter.store import dynamo
from exporter.store.lease import RENEW_FRACTION
from exporter.store.vantage_board import DynamoVantageBoard, VantageBoard

__all__ = [
    "OwnVantage",
    "SharedVantages",
    "VantageLine",
    "Vantages",
    "VantagesSnapshot",
    "round_interval",
]

log = logging.getLogger("cutover.ha")

# a board call may take at most this long, and at most a round (at least a second: a loaded
# DynamoDB endpoint answers slower than a tight round would allow)
CALL_TIMEOUT: Final = 5.0
NOT_YET: Final = "no vantage report combined yet"

Feed = Callable[[str, CombinedEvaluation], None]


def round_interval(lease: float) -> float:
    """Seconds between two reports of a vantage: the lease's renew interval."""
    return lease * RENEW_FRACTION


class Vantages(Protocol):
    def judged(self, check: str, evaluation: Evaluation, impaired: bool) -> Judged | None:
        """This replica judged `check` (`impaired`: both platforms fail it from here); what
        its incidents are fed now, or None when they are fed by the rounds (`run`)."""
        ...

    def waits(self, checks: Collection[str]) -> tuple[str, ...]:
        """Why a step of a record guarded by `checks` must wait for the vantages (nothing when
        they agree, or when there is nobody else to agree)."""
        ...

    def snapshot(self) -> VantagesSnapshot | None: ...

    async def run(self, feed: Feed) -> None:
        """The rounds, until cancelled; each feeds the combined evaluations to `feed`."""
        ...

    def close(self) -> None: ...


class OwnVantage:
    """One replica: its verdicts are the verdicts."""

    def judged(self, check: str, evaluation: Evaluation, impaired: bool) -> Judged | None:
        return evaluation

    def waits(self, checks: Collection[str]) -> tuple[str, ...]:
        return ()

    def snapshot(self) -> VantagesSnapshot | None:
        return None

    async def run(self, feed: Feed) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class VantageLine:
    """One vantage for a person: `health` is silent (no report for two rounds: it dropped out),
    impaired (reporting, but both platforms fail some checks there) or healthy."""

    vantage: str
    health: str  # "healthy", "impaired" or "silent"
    age: float  # seconds since its last report (this replica's clock; never negative)
    round: int  # its last report's round
    impaired_checks: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        """Whether it counts in the combination (an impaired vantage still does)."""
        return self.health != "silent"


@dataclass(frozen=True, slots=True)
class VantagesSnapshot:
    """The vantages as this replica combined them last, for the metrics, the API and the page."""

    vantage: str  # this replica's
    leader: bool  # this replica leads: its combination decides, and it exports the gauge
    interval: float  # seconds per round
    confirm: int  # the numbers in force (capped by the vantages there are); 0 before a round
    quorum: int
    lines: tuple[VantageLine, ...]  # by name; empty before the first round
    may_advance: bool
    reasons: tuple[str, ...]  # why steps wait (over every check)
    errors: Mapping[str, int]  # failed board calls and refused items, by reason
    failing: str | None  # the board's last failure, while it lasts


class SharedVantages:
    """The rounds of one replica of an HA migration; see the module's docstring."""

    def __init__(
        self,
        board: VantageBoard,
        *,
        vantage: str,
        settings: VantageSettings,
        checks: Callable[[], Collection[str]],
        leads: Callable[[], bool],
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        self.board = board
        self.vantage = vantage
        self.settings = settings
        self._checks = checks
        self._leads = leads
        self._clock = clock
        self.log = logger or log
        self._judged: dict[str, tuple[Evaluation, bool]] = {}
        self._own: VantageReport | None = None  # the last report built: its streaks go on
        self._others: dict[str, VantageReport] = {}  # the last read, kept while reads fail
        self._reports: tuple[VantageReport, ...] | None = None  # the last round's, ours first
        self._combined: Combined | None = None
        self._failing: dict[str, DynamoError] = {}  # "write"/"read" -> its failure, while it lasts

    @classmethod
    def of(
        cls,
        cfg: Config,
        *,
        writer: str,
        checks: Callable[[], Collection[str]],
        leads: Callable[[], bool],
    ) -> SharedVantages:
        """The rounds for `cfg.ha`, on its table; `writer` names this process in its item."""
        ha, migration = cfg.ha, cfg.ha_migration
        if ha is None or migration is None:
            raise ValueError("no ha section, or no migration to name its items")
        interval = round_interval(ha.lease)
        calls = dynamo.Calls(
            region=ha.region,
            endpoint_url=str(ha.endpoint_url) if ha.endpoint_url is not None else None,
            timeout=min(CALL_TIMEOUT, max(1.0, interval)),
            threads="ha-vantage",
        )
        board = DynamoVantageBoard(
            table=ha.table, migration=migration, vantage=ha.vantage, writer=writer, calls=calls
        )
        settings = VantageSettings(interval=interval, confirm=ha.confirm, quorum=ha.quorum)
        return cls(board, vantage=ha.vantage, settings=settings, checks=checks, leads=leads)

    # -- what the daemon calls

    def judged(self, check: str, evaluation: Evaluation, impaired: bool) -> Judged | None:
        self._judged[check] = (evaluation, impaired)
        return None  # the round feeds the combination

    def waits(self, checks: Collection[str]) -> tuple[str, ...]:
        if not checks:
            return ()
        if self._reports is None:
            return (NOT_YET,)
        # combined afresh now: a round overdue shows as silence, this replica's own included
        return waits(self._reports, checks, self._clock(), self.settings)

    def snapshot(self) -> VantagesSnapshot:
        combined = self._combined
        failing = "; ".join(f"{op}: {exc}" for op, exc in self._failing.items()) or None
        errors = MappingProxyType(dict(self.board.errors))
        leader = self._leads()
        if combined is None:
            return VantagesSnapshot(
                self.vantage, leader, self.settings.interval, 0, 0, (), False, (NOT_YET,),
                errors, failing,
            )  # fmt: skip
        late = max(0.0, self._clock() - combined.at)
        impaired: dict[str, set[str]] = {}
        for (check, _), outcome in combined.signals.items():
            for vantage in outcome.impaired_at:
                impaired.setdefault(vantage, set()).add(check)
        lines = tuple(
            VantageLine(
                vantage=s.vantage,
                health="silent"
                if not s.healthy
                else ("impaired" if s.vantage in impaired else "healthy"),
                age=s.age + late,
                round=s.round,
                impaired_checks=tuple(sorted(impaired.get(s.vantage, ()))),
            )
            for s in combined.vantages
        )
        return VantagesSnapshot(
            vantage=self.vantage,
            leader=leader,
            interval=self.settings.interval,
            confirm=combined.confirm,
            quorum=combined.quorum,
            lines=lines,
            may_advance=combined.may_advance,
            reasons=combined.reasons,
            errors=errors,
            failing=failing,
        )

    async def run(self, feed: Feed) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.round(feed)
            except Exception:
                # the board turns every DynamoDB failure into a DynamoError, handled in the
                # round; anything else is a bug, and the rounds must go on
                self.log.exception("ha: the vantage round failed unexpectedly")
            await asyncio.sleep(max(0.0, self.settings.interval - (loop.time() - started)))

    async def round(self, feed: Feed) -> Combined:
        """One round: write this vantage's report, read every vantage's, combine, feed."""
        names = set(self._checks())
        for gone in self._judged.keys() - names:
            del self._judged[gone]  # a check no longer configured is not reported
        observed = {name: observe(ev, impaired) for name, (ev, impaired) in self._judged.items()}
        report = next_report(self._own, self.vantage, self._clock(), observed)
        self._own = report
        try:
            await self.board.publish(report)
        except DynamoError as exc:
            self._failed("write", exc)
        else:
            self._works("write")
        try:
            reports = await self.board.read(self._clock())
        except DynamoError as exc:
            # the reports read last stay, and age into silence if this goes on
            self._failed("read", exc)
        else:
            self._works("read")
            self._others = {r.vantage: r for r in reports if r.vantage != self.vantage}
        # our own report as built, whether or not it reached the table
        self._reports = (report, *self._others.values())
        combined = self._combined = combine(self._reports, self._clock(), self.settings)
        for check in sorted(names):
            local = self._judged.get(check)
            evaluation = combined_evaluation(
                combined, check, local[0] if local is not None else None, self.vantage
            )
            if evaluation is None:
                continue
            try:
                feed(check, evaluation)
            except Exception:
                self.log.exception("ha: feeding the combined verdicts of %s failed", check)
        return combined

    def close(self) -> None:
        self.board.close()

    # -- failures, logged once per change

    def _failed(self, op: str, exc: DynamoError) -> None:
        previous = self._failing.get(op)
        if previous is None or previous.reason != exc.reason:
            self.log.warning(
                "ha: vantage %s cannot %s the vantage reports: %s",
                self.vantage,
                op,
                exc,
            )
        self._failing[op] = exc

    def _works(self, op: str) -> None:
        if self._failing.pop(op, None) is not None:
            self.log.info("ha: vantage %s can %s the vantage reports again", self.vantage, op)
