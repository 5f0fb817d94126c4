"""The lease in the daemon (`ha`): one replica leads, the others follow, and it shows.

Two daemons in one process, their lease in moto's DynamoDB over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import boto3
import pytest
from prometheus_client import generate_latest

from exporter.config import parse_config
from exporter.daemon import Daemon
from exporter.errors import Refused
from exporter.route53.plan import Action, Observation, ShiftPlan, ShiftSettings
from exporter.route53.runner import ShiftRunner
from exporter.store import dynamo
from exporter.tasks import Supervisor
from exporter.web.app import ha_data
from exporter.web.page import PageInfo, render_page
from tests.conftest import FakePlatform, config_yaml
from tests.test_route53_cas import API

ENV = {"PROBE_SECRET": "s3cret-header-value"}
TABLE = "cutover-ha-daemon"

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture(scope="module")
def table(moto_url: str) -> str:
    dynamo.create_table(boto3.client("dynamodb", endpoint_url=moto_url), TABLE, poll=0.1)
    return TABLE


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def replicas(
    platforms: tuple[FakePlatform, FakePlatform], moto_url: str, table: str
) -> AsyncIterator[Callable[[str], Daemon]]:
    baseline, candidate = platforms
    migration = f"m-{uuid.uuid4().hex[:8]}"
    started: list[Daemon] = []

    def start(vantage: str) -> Daemon:
        text = config_yaml(baseline.url, candidate.url, interval="1s", timeout="500ms") + (
            f"ha: {{vantage: {vantage}, table: {table}, region: us-east-1, "
            f"endpoint_url: '{moto_url}', lease: 2s, migration: {migration}}}\n"
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
        assert daemon.view().lease is None
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
