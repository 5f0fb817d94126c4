"""The lease in the daemon (`ha`): one replica leads, the others follow, and it shows.

Two daemons in one process, their lease in moto's DynamoDB over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import boto3
import pytest
from prometheus_client import generate_latest

from exporter.alerting.alerts import Incident, Phase
from exporter.config import parse_config
from exporter.daemon import Daemon
from exporter.errors import Refused
from exporter.judging.vantage import CheckReport, Seen, SignalReport, VantageReport, next_report
from exporter.route53.plan import Action, Observation, ShiftPlan, ShiftSettings
from exporter.route53.runner import ShiftRunner
from exporter.store import dynamo
from exporter.store.vantage_board import DynamoVantageBoard
from exporter.tasks import Supervisor
from exporter.web.app import ha_data
from exporter.web.page import PageInfo, render_page
from tests.conftest import HA_TABLE, FakePlatform, config_yaml
from tests.ha_helpers import ha_yaml, wait_until
from tests.test_page import text_of
from tests.test_route53_cas import API

ENV = {"PROBE_SECRET": "s3cret-header-value"}

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
async def replicas(
    platforms: tuple[FakePlatform, FakePlatform], moto_url: str, ha_table: str, migration: str
) -> AsyncIterator[Callable[..., Daemon]]:
    baseline, candidate = platforms
    started: list[Daemon] = []

    def start(vantage: str, lease: str = "2s") -> Daemon:
        text = config_yaml(baseline.url, candidate.url, interval="1s", timeout="500ms") + ha_yaml(
            vantage, table=ha_table, endpoint=moto_url, migration=migration, lease=lease
        )
        daemon = Daemon(parse_config(text, env=ENV))
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            await daemon.stop()


def metric_lines(daemon: Daemon) -> list[str]:
    text = generate_latest(daemon.registry).decode()
    return [line for line in text.splitlines() if line.startswith("cutover_ha_")]


async def test_one_replica_leads_the_other_follows_and_takes_over_on_release(
    replicas: Callable[[str], Daemon],
) -> None:
    a, b = replicas("eu-west-1"), replicas("us-east-1")
    await a.start()
    await wait_until(a.may_act)
    await b.start()
    await asyncio.sleep(1.0)  # b has read the lease, renewed by a meanwhile
    assert a.may_act() and not b.may_act()

    assert 'cutover_ha_leader{vantage="eu-west-1"} 1.0' in metric_lines(a)
    assert 'cutover_ha_leader{vantage="us-east-1"} 0.0' in metric_lines(b)
    assert "cutover_ha_leaderless 0.0" in metric_lines(b)
    # a follower combines the vantages too (its page shows them); only the leader exports
    # their health, so that an alert on it fires once per vantage
    await wait_until(heard(a, "us-east-1", 1))
    assert 'cutover_ha_vantage_healthy{vantage="us-east-1"} 1.0' in metric_lines(a)
    assert not [line for line in metric_lines(b) if "vantage_healthy" in line]
    assert 'cutover_ha_report_errors_total{reason="timeout"} 0.0' in metric_lines(b)
    status_a, status_b = ha_data(a.view().lease), ha_data(b.view().lease)  # type: ignore[arg-type]
    assert status_a["leader"] and not status_b["leader"]
    assert status_b["owner"].startswith("eu-west-1#") and status_a["epoch"] == status_b["epoch"]
    page = render_page(b.view(), PageInfo(now=0.0, version="t", ready=True, last_reload_ok=True))
    assert "This replica (us-east-1) follows; the leader is eu-west-1#" in page

    epoch = status_a["epoch"]
    await a.stop()  # a graceful stop releases the lease: b need not wait a lease out
    await wait_until(b.may_act, timeout=3.0)
    assert ha_data(b.view().lease)["epoch"] == epoch + 1  # type: ignore[arg-type]


async def test_a_single_replica_has_no_lease_and_always_acts(
    platforms: tuple[FakePlatform, FakePlatform],
) -> None:
    baseline, candidate = platforms
    daemon = Daemon(parse_config(config_yaml(baseline.url, candidate.url), env=ENV))
    await daemon.start()
    try:
        assert daemon.leadership is None and daemon.may_act()
        assert metric_lines(daemon) == []
        assert daemon.view().lease is None and daemon.view().vantages is None
    finally:
        await daemon.stop()


async def test_a_follower_neither_steps_the_shift_nor_takes_commands() -> None:
    leads = False
    settings = ShiftSettings(
        record="api.example.com", baseline="heroku", candidate="aws", dry_run=True
    )
    tasks = Supervisor()
    runner = ShiftRunner(
        settings,
        API,
        state_path=None,
        endpoint_url="http://127.0.0.1:9",
        render=lambda _: [],
        relay=lambda _notes, _doubtful: set(),
        tasks=tasks,
        compare_and_swap=True,
        may_act=lambda: leads,
    )
    stepped: list[float] = []

    class Counted(ShiftPlan):
        def step(self, now: float, observation: Observation) -> list[Action]:
            stepped.append(now)
            return []

    runner.plan = Counted(settings)
    try:
        with pytest.raises(Refused, match="does not lead the migration"):
            runner.control("pause", "alice")
        runner.evaluate(1.0, None)  # type: ignore[arg-type]
        assert stepped == []  # the leader steps the plan; a follower watches
        leads = True
        assert "pause by alice" in runner.control("pause", "alice")
        runner.evaluate(2.0, None)  # type: ignore[arg-type]
        assert stepped == [2.0]
    finally:
        await runner.aclose()


# -- vantages ------------------------------------------------------------------------------------


# rounds of a second, silent after two: room for a loaded machine between a write and its read
LEASE = "3s"


class Elsewhere:
    """Another vantage of the migration, as its replica would report: the test writes its
    reports to the table by hand, round after round."""

    def __init__(self, moto_url: str, migration: str, vantage: str) -> None:
        client = boto3.client("dynamodb", endpoint_url=moto_url)
        calls = dynamo.Calls(region="us-east-1", endpoint_url=None, timeout=5.0, client=client)
        self.board = DynamoVantageBoard(
            table=HA_TABLE,
            migration=migration,
            vantage=vantage,
            writer=f"{vantage}#test",
            calls=calls,
        )
        self.vantage = vantage
        self.report: VantageReport | None = None

    async def sees(self, down: Seen, at: float | None = None) -> int:
        """Write the next round: the candidate `down` on check health, all else ok."""
        signals = {
            "down": SignalReport(down, int(down is Seen.REGRESSED)),
            "errors": SignalReport(Seen.OK),
            "latency": SignalReport(Seen.OK),
        }
        at = time.time() if at is None else at
        checks = {"health": CheckReport(signals)}
        self.report = next_report(self.report, self.vantage, at, checks)
        await self.board.publish(self.report)
        return self.report.round


def heard(daemon: Daemon, vantage: str, round_: int) -> Callable[[], bool]:
    """The daemon has combined `vantage`'s report of that round (or a later one)."""

    def check() -> bool:
        snap = daemon.vantages.snapshot()
        lines = snap.lines if snap is not None else ()
        return any(line.vantage == vantage and line.round >= round_ for line in lines)

    return check


def down_incident(daemon: Daemon) -> Incident | None:
    return daemon.alerts.get("health", "down")


async def test_a_regression_seen_from_one_vantage_fires_on_its_second_round_in_a_row(
    replicas: Callable[..., Daemon], moto_url: str, migration: str
) -> None:
    a = replicas("eu-west-1", lease=LEASE)
    us = Elsewhere(moto_url, migration, "us-east-1")
    try:
        await a.start()
        await wait_until(a.may_act)
        round_ = await us.sees(Seen.REGRESSED)
        await wait_until(heard(a, "us-east-1", round_))
        # one round from one vantage: an incident opens, pending, and nothing fires
        await wait_until(lambda: down_incident(a) is not None)
        incident = down_incident(a)
        assert incident is not None and incident.phase is Phase.PENDING
        assert a.alerts.firing() == ()
        assert incident.figures["vantages"] == (
            "seen from us-east-1 for one round, 2 vantages needed"
        )
        assert "us-east-1 sees the candidate down on health" in a.vantages.waits(["health"])

        round_ = await us.sees(Seen.REGRESSED)  # the second round in a row
        await wait_until(lambda: bool(a.alerts.firing()))
        (fired,) = a.alerts.firing()
        assert fired.check == "health" and fired.signal == "down"
        assert fired.figures["vantages"] == "seen from us-east-1 on 2 rounds in a row"
        assert fired.figures["figures_from"] == "us-east-1"
    finally:
        us.board.close()


async def test_a_regression_seen_from_two_vantages_fires_in_one_round(
    replicas: Callable[..., Daemon], moto_url: str, migration: str
) -> None:
    a = replicas("eu-west-1", lease=LEASE)
    others = [Elsewhere(moto_url, migration, v) for v in ("us-east-1", "ap-south-1")]
    try:
        await a.start()
        await wait_until(a.may_act)
        for other in others:
            await other.sees(Seen.REGRESSED)
        await wait_until(lambda: bool(a.alerts.firing()))
        (fired,) = a.alerts.firing()
        assert fired.signal == "down"
        assert fired.figures["vantages"] == "seen from ap-south-1 and us-east-1, 2 needed"
        # round 1 of each: no streak made it fire, the confirmation did
        assert all(other.report is not None and other.report.round == 1 for other in others)
    finally:
        for other in others:
            other.board.close()


async def test_too_few_healthy_vantages_hold_the_steps_and_it_shows(
    replicas: Callable[..., Daemon], moto_url: str, migration: str
) -> None:
    a = replicas("eu-west-1", lease=LEASE)
    us = Elsewhere(moto_url, migration, "us-east-1")
    try:
        await a.start()
        await wait_until(a.may_act)
        # us-east-1 reported once, ten seconds ago (rounds are 1 s): silent, dropped out
        await us.sees(Seen.OK, at=time.time() - 10.0)
        await wait_until(heard(a, "us-east-1", 1))
        waits = a.vantages.waits(["health"])
        assert waits and waits[0].startswith(
            "only 1 of 2 vantages healthy (us-east-1 silent for 1"
        ), waits
        lines = metric_lines(a)
        assert 'cutover_ha_vantage_healthy{vantage="us-east-1"} 0.0' in lines
        assert 'cutover_ha_vantage_healthy{vantage="eu-west-1"} 1.0' in lines
        assert 'cutover_ha_report_errors_total{reason="corrupt"} 0.0' in lines

        data = ha_data(a.view().lease, a.view().vantages)  # type: ignore[arg-type]
        vantages = {v["vantage"]: v for v in data["vantages"]["list"]}
        assert vantages["us-east-1"]["health"] == "silent"
        assert vantages["us-east-1"]["last_report_age_seconds"] >= 10.0
        # this replica's own vantage reports: healthy, or impaired when a busy machine's
        # probes time out on both platforms at once; never silent
        assert vantages["eu-west-1"]["health"] in ("healthy", "impaired")
        assert data["vantages"]["quorum"] == 2 and not data["vantages"]["may_advance"]
        assert data["vantages"]["reasons"][0].startswith("only 1 of 2 vantages healthy")
        info = PageInfo(now=0.0, version="t", ready=True, last_reload_ok=True)
        words = text_of(render_page(a.view(), info))
        assert "us-east-1 silent: dropped out" in words
        assert "eu-west-1 (this replica) healthy" in words
        assert "Steps wait for the vantages: only 1 of 2 vantages healthy" in words
    finally:
        us.board.close()
