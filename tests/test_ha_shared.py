"""Shared state in the daemon (`ha`): incidents, the Slack outbox and its messages live in the
table, so that a new leader resolves the incident the old one fired by editing the same message.

Two daemons in one process, their lease and state in moto's DynamoDB over HTTP on 127.0.0.1,
Slack a local stand-in. A single replica keeps its state in state_dir as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from prometheus_client import CollectorRegistry

from exporter.alerting.alerts import AlertsRecord, Phase
from exporter.alerting.dynamo_outbox import DynamoOutboxStore
from exporter.alerting.local_outbox import LocalOutboxStore
from exporter.alerting.outbox import Entry, Notification
from exporter.alerting.slack import Notifier, SlackSettings
from exporter.config import parse_config
from exporter.daemon import Daemon
from exporter.store.calls import Inline, Threaded
from exporter.store.documents import LocalDocuments
from exporter.store.leadership import ALWAYS
from exporter.store.lease import lease_pk
from tests.conftest import FakePlatform, config_yaml
from tests.ha_helpers import Unreachable, fence_of, ha_yaml, put_lease, wait_until
from tests.slack_standin import SlackStandIn

ENV = {"PROBE_SECRET": "s3cret-header-value"}
TOKEN = "xoxb-1111-2222-ha-test-token"

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    standin = SlackStandIn(token=TOKEN, hang_seconds=30.0)
    await standin.start()
    yield standin
    await standin.stop()


def alerting(slack: SlackStandIn) -> str:
    return (
        "alerting:\n  for: 1s\n  resolve_after: 1s\n  repeat_interval: 1h\n"
        f"  slack:\n    token: {TOKEN}\n    channel: '#alerts'\n    api_url: {slack.url}\n"
    )


@pytest.fixture
async def replicas(
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    moto_url: str,
    ha_table: str,
    migration: str,
) -> AsyncIterator[Callable[[str], Daemon]]:
    baseline, candidate = platforms
    started: list[Daemon] = []

    def start(vantage: str) -> Daemon:
        text = (
            config_yaml(baseline.url, candidate.url, interval="300ms", timeout="200ms")
            + alerting(slack)
            + ha_yaml(vantage, table=ha_table, endpoint=moto_url, migration=migration)
        )
        daemon = Daemon(parse_config(text, env=ENV))
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            await daemon.stop()


def state_item(moto_url: str, daemon: Daemon, name: str) -> dict[str, Any] | None:
    assert daemon.leadership is not None and daemon.config.ha is not None
    answer = boto3.client("dynamodb", endpoint_url=moto_url).get_item(
        TableName=daemon.config.ha.table,
        Key={"pk": {"S": lease_pk(daemon.leadership.migration)}, "sk": {"S": f"state#{name}"}},
        ConsistentRead=True,
    )
    item: dict[str, Any] | None = answer.get("Item")
    return item


def firing(daemon: Daemon) -> list[str]:
    return [i.signal for i in daemon.alerts.firing()]


async def test_a_new_leader_resolves_the_old_leaders_incident_by_editing_its_message(
    replicas: Callable[[str], Daemon],
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    moto_url: str,
) -> None:
    _, candidate = platforms
    a, b = replicas("eu-west-1"), replicas("us-east-1")
    await a.start()
    await wait_until(a.leads)
    await b.start()
    await wait_until(lambda: b.ready)

    candidate.status = 503
    await wait_until(lambda: len(slack.top_level()) == 1)
    [post] = slack.top_level()
    assert "down" in firing(a)
    assert not b.leads() and b.alerts.incidents == (), "a follower judges, it keeps no incidents"
    # the incident and where its message is are in the table, under a's epoch
    await wait_until(lambda: not a.notifier or a.notifier.pending() == 0)
    saved = state_item(moto_url, a, "alerts")
    assert saved is not None and saved["epoch"] == {"N": str(a._lease_epoch())}
    assert [i["phase"] for i in json.loads(saved["body"]["S"])["incidents"]] == ["firing"]

    await a.stop()  # releases the lease: b takes over at once
    await wait_until(b.leads, timeout=5.0)
    assert "down" in firing(b), "the new leader loaded the incident the old one fired"

    candidate.status = 200
    await wait_until(lambda: slack.top_level()[0].edits >= 1)
    assert b.notifier is not None
    await wait_until(lambda: b.notifier is not None and b.notifier.pending() == 0)
    assert len(slack.top_level()) == 1, "exactly one top-level post for the incident"
    [edit] = slack.message_calls("chat.update")
    assert (edit.channel, edit.ts) == ("C0123", post.ts), "the same message, edited"
    assert "RESOLVED" in (slack.top_level()[0].text or "")
    assert len(slack.replies(post.ts)) == 1, "the resolution's reply threads under it"


async def test_a_leader_that_loses_the_table_stops_and_the_next_one_finds_its_unsure_reply(
    replicas: Callable[[str], Daemon],
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    moto_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """a's reply reaches Slack but its answer never comes back; then a loses the lease (its
    lease calls fail). b inherits the claimed, unconfirmed reply: it looks for it in the
    thread by its metadata, finds it, and does not send it again."""
    caplog.set_level(logging.INFO)
    _, candidate = platforms
    a, b = replicas("eu-west-1"), replicas("us-east-1")
    await a.start()
    await wait_until(a.leads)
    await b.start()

    candidate.status = 503
    await wait_until(lambda: len(slack.top_level()) == 1)
    [post] = slack.top_level()
    await wait_until(lambda: a.notifier is not None and a.notifier.pending() == 0)
    slack.fail_next("ok")  # the resolution's edit goes through
    slack.fail_next("hang_after")  # its reply is stored, and its answer never comes
    candidate.status = 200
    await wait_until(lambda: len(slack.replies(post.ts)) == 1)

    assert a.leadership is not None
    stale = a._lease_epoch()
    a.leadership.lease.table.close()  # a's lease calls fail from now: it stops acting
    await wait_until(lambda: not a.may_act(), timeout=5.0)
    await wait_until(b.leads, timeout=10.0)
    await wait_until(lambda: "was already in Slack" in caplog.text)
    await wait_until(lambda: b.notifier is not None and b.notifier.pending() == 0)

    assert len(slack.top_level()) == 1 and slack.top_level()[0].edits == 1
    assert len(slack.replies(post.ts)) == 1, "the inherited reply was found, not sent again"
    assert any(c.method == "conversations.replies" for c in slack.calls)
    assert not a.leads(), "a, without the lease, changes no shared state"

    # a late write of the old leader (paused mid-save, say) is refused by the fence
    assert a.book.doc is not None
    a.book.doc.save(AlertsRecord(version=1, incidents=[]), stale)
    assert await a.book.doc.flush(5.0)
    assert "not written under epoch" in caplog.text
    saved = state_item(moto_url, b, "alerts")
    assert saved is not None and json.loads(saved["body"]["S"])["resolved"] != []


# -- the outbox in the table, alone --------------------------------------------------------------


class Lease:
    """A Gate held under a fixed epoch (the lease item itself is written by the test)."""

    def __init__(self, epoch: int | None) -> None:
        self.held = epoch

    def may_act(self) -> bool:
        return self.held is not None

    def epoch(self) -> int | None:
        return self.held

    def on_change(self, callback: Callable[[], None]) -> None:
        pass


async def test_a_claim_whose_table_call_fails_is_not_sent_until_it_succeeds(
    moto_url: str, ha_table: str, slack: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    migration = f"m-{uuid.uuid4().hex[:8]}"
    put_lease(boto3.client("dynamodb", endpoint_url=moto_url), ha_table, migration, "me#1", 1)
    client = Unreachable(boto3.client("dynamodb", endpoint_url=moto_url))
    store = DynamoOutboxStore(
        table=ha_table,
        migration=migration,
        fence=fence_of(ha_table, migration, "me#1"),
        client=client,
    )
    settings = SlackSettings(token=TOKEN, channel="#alerts", api_url=slack.url)
    notifier = Notifier(
        settings,
        store=store,
        registry=CollectorRegistry(),
        gate=Lease(1),
        calls=Threaded(5.0, "test-outbox"),
        min_interval=0.0,
        min_backoff=0.05,
    )
    task = asyncio.create_task(notifier.run())
    try:
        client.down.add("transact_write_items")  # claims are transactions (with the fence)
        n = Notification("inc-1:fire", "inc-1", "post", "FIRING")
        assert notifier.accept(n) is False, "not in the table yet: still owed"
        await wait_until(lambda: client.failed.count("transact_write_items") >= 2)
        assert slack.message_calls() == [], "a claim whose outcome is unknown sends nothing"
        assert notifier.pending() == 1 and notifier.accept(n) is True
        assert "its claim could not be written" in caplog.text

        client.down.clear()
        await wait_until(lambda: notifier.pending() == 0)
        assert len(slack.top_level()) == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await notifier.aclose()


async def test_an_outbox_that_cannot_load_delivers_nothing_until_it_does(
    moto_url: str, ha_table: str, slack: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """The previous leader queued a notification; this one cannot read the table at first: it
    neither starts empty and delivers what it is handed, nor writes over the queue."""
    migration = f"m-{uuid.uuid4().hex[:8]}"
    ddb = boto3.client("dynamodb", endpoint_url=moto_url)
    put_lease(ddb, ha_table, migration, "me#2", 2)
    old = DynamoOutboxStore(table=ha_table, migration=migration, client=ddb)
    old.load(0.0)
    old.append(Entry(Notification("inc-0:fire", "inc-0", "post", "OLDER")))
    client = Unreachable(ddb)
    client.down.add("query")
    store = DynamoOutboxStore(
        table=ha_table,
        migration=migration,
        fence=fence_of(ha_table, migration, "me#2"),
        client=client,
    )
    notifier = Notifier(
        SlackSettings(token=TOKEN, channel="#alerts", api_url=slack.url),
        store=store,
        registry=CollectorRegistry(),
        gate=Lease(2),
        calls=Threaded(5.0, "test-outbox"),
        min_interval=0.0,
        min_backoff=0.05,
    )
    task = asyncio.create_task(notifier.run())
    try:
        notifier.enqueue(Notification("inc-1:fire", "inc-1", "post", "NEWER"))
        await wait_until(lambda: client.failed.count("query") >= 2)
        assert slack.message_calls() == [] and "cannot load the Slack outbox" in caplog.text
        client.down.clear()
        await wait_until(lambda: notifier.pending() == 0)
        assert [m.text for m in slack.top_level()] == ["OLDER", "NEWER"], "queued order kept"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await notifier.aclose()


# -- one replica: as before ----------------------------------------------------------------------


async def test_a_single_replica_keeps_its_state_in_state_dir(
    platforms: tuple[FakePlatform, FakePlatform], slack: SlackStandIn, tmp_path: Path
) -> None:
    baseline, candidate = platforms
    text = (
        config_yaml(baseline.url, candidate.url, interval="300ms", timeout="200ms")
        + alerting(slack)
        + f"state_dir: {tmp_path / 'state'}\n"
    )
    daemon = Daemon(parse_config(text, env=ENV))
    assert daemon.leadership is None and daemon.stores.gate is ALWAYS
    assert isinstance(daemon.stores.documents, LocalDocuments)
    assert isinstance(daemon.stores.outbox, LocalOutboxStore)
    assert isinstance(daemon.stores.calls("alerts"), Inline)
    await daemon.start()
    try:
        candidate.status = 503
        await wait_until(lambda: len(slack.top_level()) == 1)
        assert daemon.leads()
        saved = json.loads((tmp_path / "state" / "alerts.json").read_text())
        assert [i["phase"] for i in saved["incidents"]] == [Phase.FIRING.value]
        await wait_until(lambda: daemon.notifier is not None and daemon.notifier.pending() == 0)
        outbox = json.loads((tmp_path / "state" / "slack-outbox.json").read_text())
        assert list(outbox["threads"]) == [daemon.alerts.firing()[0].id]
    finally:
        await daemon.stop()
