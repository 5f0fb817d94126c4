"""The leader lease: the pure machine on a synthetic clock, then two replicas against moto's
DynamoDB over HTTP (races, a dead endpoint, a release, a fenced write from a stale epoch)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace

import boto3
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from exporter.store import dynamo
from exporter.store.lease import (
    DynamoLease,
    Lease,
    LeaseItem,
    LeaseSnapshot,
    LeaseTable,
    Op,
    lease_pk,
)
from exporter.web.collector import lease_families
from tests.conftest import free_port

LEASE = 15.0  # the default: renew every 5 s, act until 10 s after sending a renew

# -- the pure machine --------------------------------------------------------------------------


@dataclass
class Table:
    """The lease item with DynamoDB's conditions, in memory: what each Op requires."""

    item: LeaseItem | None = None
    writes: list[tuple[str, Op]] = field(default_factory=list)

    def apply(self, who: str, op: Op) -> LeaseItem | bool | None:
        """True when accepted; else the item as it was (a lost race)."""
        item = self.item
        if op.kind == "create":
            ok = item is None
        elif op.kind == "takeover":
            ok = item is not None and item.version == op.expect
        else:
            ok = item is not None and (item.owner, item.epoch, item.version) == (
                who,
                op.epoch,
                op.expect,
            )
        if not ok:
            return item
        self.writes.append((who, op))
        if op.kind == "release":
            assert item is not None
            self.item = replace(item, owner=None, vantage=None, version=op.version)
        elif op.kind == "renew":
            assert item is not None
            self.item = replace(item, version=op.version)
        else:
            self.item = LeaseItem(who, op.epoch, op.version, who, LEASE)
        return True


def drive(lease: Lease, table: Table, now: float, *, answer_after: float = 0.0) -> Op:
    """Do the due op at `now` (it must be due), the answer coming `answer_after` later."""
    op = lease.due(now)
    assert op.at <= now, f"{op} is not due at {now}"
    lease.sent(op, now)
    if op.kind == "read":
        lease.observed(table.item, now + answer_after)
        return op
    outcome = table.apply(lease.me, op)
    if outcome is True:
        lease.succeeded(op, now + answer_after)
    else:
        assert not isinstance(outcome, bool)
        lease.lost(op, outcome, now + answer_after)
    return op


def run_until(lease: Lease, table: Table, until: float, *, start: float = 0.0) -> list[Op]:
    """Do every op that falls due up to `until`, each at its due time."""
    done = []
    now = start
    while True:
        op = lease.due(now)
        at = max(op.at, now)
        if at > until:
            return done
        done.append(drive(lease, table, at))
        now = at


def run_together(leases: list[Lease], table: Table, start: float, until: float) -> None:
    """Interleave the replicas' ops in time order (each at its due time) up to `until`."""
    now = start
    while True:
        at, lease = min(((max(x.due(now).at, now), x) for x in leases), key=lambda p: p[0])
        if at > until:
            return
        drive(lease, table, at)
        now = at


def leader(name: str, table: Table, now: float = 0.0) -> Lease:
    lease = Lease(name, duration=LEASE, now=now)
    run_until(lease, table, now, start=now)  # read, then create or take over
    assert lease.may_act(now), table.item
    return lease


def test_a_follower_takes_over_only_after_a_full_unchanged_lease() -> None:
    table = Table()
    a = leader("a", table)
    b = Lease("b", duration=LEASE, now=1.0)
    drive(b, table, 1.0)  # first sees a's version at 1
    # a dies at 1: its version stays; b reads every renew interval and waits a whole lease
    ops = run_until(b, table, 15.9, start=1.0)
    assert [op.kind for op in ops] == ["read", "read"] and not b.may_act(15.9)
    assert b.due(15.9) == replace(b.due(15.9), kind="takeover", at=16.0, epoch=2)
    run_until(b, table, 16.0, start=15.9)
    assert b.may_act(16.0) and b.epoch == 2 and b.owner == "b"
    assert not a.may_act(16.0)


def test_a_renew_seen_restarts_the_wait() -> None:
    table = Table()
    a = leader("a", table)
    b = Lease("b", duration=LEASE, now=0.0)
    drive(b, table, 0.0)
    run_together([a, b], table, 0.0, 12.0)  # a renews at 5 and 10, then dies
    run_until(b, table, 20.0, start=12.0)
    # b saw the version of 10 first at its read of 10: the earliest takeover is at 25
    assert not b.held and b.due(20.0).at == 25.0
    run_until(b, table, 24.9, start=20.0)
    assert not b.held
    run_until(b, table, 25.0, start=24.9)
    assert b.may_act(25.0) and b.epoch == 2


def test_a_holder_with_a_longer_lease_is_waited_out_on_its_own_terms() -> None:
    table = Table(LeaseItem("a", 1, "v1", "a", lease=40.0))
    b = Lease("b", duration=LEASE, now=0.0)
    run_until(b, table, 39.9)
    assert not b.held
    run_until(b, table, 40.0, start=39.9)
    assert b.may_act(40.0)


def test_the_leader_renews_a_third_into_the_lease_counted_from_sending() -> None:
    table = Table()
    a = Lease("a", duration=LEASE, now=0.0)
    drive(a, table, 0.0)  # the read: no item
    create = drive(a, table, 0.0, answer_after=0.7)
    assert create.kind == "create" and create.epoch == 1
    renew = a.due(0.7)
    assert (renew.kind, renew.at, renew.expect) == ("renew", 5.0, create.version)
    drive(a, table, 5.0, answer_after=0.3)
    assert a.due(5.3).at == 10.0 and a.may_act(5.3)


def test_the_leader_stops_acting_at_two_thirds_of_the_lease_after_sending_its_last_renew() -> None:
    table = Table()
    a = Lease("a", duration=LEASE, now=0.0)
    drive(a, table, 0.0)
    # the create's answer takes 3 s: the lease counts from 0, when it was sent, not from 3
    drive(a, table, 0.0, answer_after=3.0)
    assert a.may_act(3.0)
    # every renew from now on fails (no answer)
    for t in (5.0, 6.5, 8.0, 9.5):
        op = a.due(t)
        assert op.kind == "renew" and op.at == t
        a.sent(op, t)
        a.failed(op, t)
    assert a.may_act(9.99)
    assert not a.may_act(10.0)
    assert a.acting_until(9.0) == 10.0 and a.acting_until(10.0) is None


def test_a_renew_that_landed_unanswered_is_recognised_as_ours() -> None:
    table = Table()
    a = leader("a", table)
    renew = a.due(5.0)
    a.sent(renew, 5.0)
    assert table.apply("a", renew) is True  # it landed...
    a.failed(renew, 6.0)  # ...but the answer never came
    again = a.due(6.0)
    assert again.expect == renew.expect and again.at == 7.5
    drive(a, table, 7.5)  # refused (the version moved on): the item shows our version of 5
    assert a.may_act(14.9) and not a.may_act(15.0)  # valid from 5, when it was sent
    assert a.due(7.5).kind == "renew" and a.due(7.5).expect == renew.version


def test_a_released_lease_is_taken_at_once_with_the_next_epoch() -> None:
    table = Table()
    a = leader("a", table)
    b = Lease("b", duration=LEASE, now=0.0)
    drive(b, table, 0.0)
    release = a.stop(3.0)
    assert release is not None and not a.may_act(3.0)  # it stops acting before releasing
    assert table.apply("a", release) is True
    a.succeeded(release, 3.1)
    drive(b, table, 5.0)  # b's next read sees no owner
    assert b.due(5.0).kind == "takeover" and b.due(5.0).at == 5.0
    drive(b, table, 5.0)
    assert b.may_act(5.0) and b.epoch == 2 and not a.may_act(5.0)


def test_epochs_increase_with_every_takeover_even_after_the_item_is_deleted() -> None:
    table = Table()
    epochs = [leader("a", table).epoch]
    for name, t in (("b", 100.0), ("c", 200.0)):
        follower = Lease(name, duration=LEASE, now=t)
        run_until(follower, table, t + LEASE, start=t)
        epochs.append(follower.epoch)
    table.item = None  # a person (or TTL) deleted the item under a replica that knew epoch 3
    follower = Lease("d", duration=LEASE, now=300.0)
    drive(follower, table, 300.0)
    table.item = LeaseItem("c", 3, "v", "c", LEASE)
    drive(follower, table, 305.0)  # sees epoch 3
    table.item = None
    run_until(follower, table, 310.0, start=305.0)
    epochs.append(follower.epoch)
    assert epochs == [1, 2, 3, 4]
    assert [op.epoch for _, op in table.writes if op.kind != "renew"] == [1, 2, 3, 4]


def test_a_paused_leader_resuming_after_the_lease_does_not_act() -> None:
    table = Table()
    a = leader("a", table)
    b = Lease("b", duration=LEASE, now=0.5)
    run_until(b, table, 20.0, start=0.5)  # a is paused (SIGSTOP) from 0 on: b takes over
    assert b.may_act(20.0) and b.epoch == 2
    # a resumes at 30: it has not renewed for 30 s, so it does not act, and its overdue renew
    # is refused by the item b holds
    assert not a.may_act(30.0)
    op = drive(a, table, 30.0)
    assert op.kind == "renew" and not a.may_act(30.0) and not a.held
    assert a.owner == "b" and a.epoch == 2
    assert [who for who, op in table.writes if op.epoch == 2] == ["b"] * len(
        [1 for _, op in table.writes if op.epoch == 2]
    )


def test_a_paused_leader_that_nobody_replaced_acts_again_only_after_a_renew() -> None:
    table = Table()
    a = leader("a", table)
    assert not a.may_act(30.0)
    drive(a, table, 30.0)  # the overdue renew: nobody took over, the version is still a's
    assert a.may_act(30.0) and a.epoch == 1


def test_leaderless_time_counts_from_the_last_renew_seen() -> None:
    table = Table()
    a = leader("a", table)
    b = Lease("b", duration=LEASE, now=0.0)
    drive(b, table, 0.0)  # a first sight proves nothing: the item may be a dead leader's
    assert b.leaderless_for(4.0) == 4.0
    run_together([a, b], table, 0.0, 6.0)  # b read at 5, after a's renew of 5
    assert b.leaderless_for(5.0) == 0.0 and a.leaderless_for(6.0) == 0.0
    # a dies; b takes over at 20 (a whole lease after it saw the renew of 5 at 5)
    run_until(b, table, 19.0, start=6.0)
    # both last saw a leader at 5: b a's renew, a its own (it stopped acting at 15)
    assert b.leaderless_for(19.0) == 14.0 and a.leaderless_for(19.0) == 14.0
    run_until(b, table, 20.0, start=19.0)
    assert b.leaderless_for(20.0) == 0.0


# -- against moto's DynamoDB over HTTP ---------------------------------------------------------

FAST = 2.0  # a short lease: renew every 0.67 s, act for 1.33 s after sending a renew


@pytest.fixture(scope="module")
def ddb(moto_url: str) -> object:
    return boto3.client("dynamodb", endpoint_url=moto_url)


@pytest.fixture(scope="module")
def table_name(ddb: object) -> str:
    dynamo.create_table(ddb, "cutover-ha-test", poll=0.1)
    return "cutover-ha-test"


def lease_table(
    name: str, migration: str, endpoint: str, table_name: str, timeout: float = 0.5
) -> LeaseTable:
    return LeaseTable(
        table=table_name,
        migration=migration,
        me=f"{name}#{uuid.uuid4().hex[:8]}",
        vantage=name,
        lease=FAST,
        endpoint_url=endpoint,
        timeout=timeout,
    )


@contextlib.asynccontextmanager
async def running(lease: DynamoLease) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(lease.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        lease.close()


async def wait_until(predicate: object, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def migration() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


async def test_two_replicas_racing_give_exactly_one_leader_per_epoch(
    moto_url: str, table_name: str
) -> None:
    m = migration()
    a = DynamoLease(lease_table("a", m, moto_url, table_name))
    b = DynamoLease(lease_table("b", m, moto_url, table_name))
    holders: dict[int, set[str]] = {}

    async def watch(seconds: float, until: object = None) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end and not (until is not None and until()):  # type: ignore[operator]
            acting = [r for r in (a, b) if r.may_act()]
            assert len(acting) <= 1, "two replicas act at once"
            for r in acting:
                holders.setdefault(r.lease.epoch, set()).add(r.table.me)
            await asyncio.sleep(0.005)

    async with running(a) as stop_a, running(b) as stop_b:
        await watch(3 * FAST)
        assert len(holders) == 1, holders  # one took it; the other kept following
        (first,) = holders
        first_leader, other = (a, b) if a.table.me in holders[first] else (b, a)
        (stop_a if first_leader is a else stop_b).set()  # a graceful stop releases it
        await watch(10 * FAST, until=other.may_act)
        assert other.may_act() and other.lease.epoch == first + 1
        await watch(FAST)
    assert holders == {first: {first_leader.table.me}, first + 1: {other.table.me}}


async def test_a_released_lease_passes_to_the_follower_with_the_next_epoch(
    moto_url: str, table_name: str, ddb: object
) -> None:
    m = migration()
    a = DynamoLease(lease_table("a", m, moto_url, table_name))
    b = DynamoLease(lease_table("b", m, moto_url, table_name))
    async with running(a) as stop_a:
        await wait_until(a.may_act)
        async with running(b):
            await wait_until(lambda: b.lease.owner == a.table.me)
            epoch = a.lease.epoch
            stop_a.set()
            await wait_until(b.may_act)
            assert not a.may_act() and b.lease.epoch == epoch + 1
            raw = ddb.get_item(  # type: ignore[attr-defined]
                TableName=table_name,
                Key={"pk": {"S": lease_pk(m)}, "sk": {"S": "lease"}},
                ConsistentRead=True,
            )["Item"]
            assert raw["owner"]["S"] == b.table.me and raw["vantage"]["S"] == "b"
            assert raw["epoch"]["N"] == str(epoch + 1) and int(raw["expires"]["N"]) > 0
        # b stopped too: the item says nobody holds it
        raw = ddb.get_item(  # type: ignore[attr-defined]
            TableName=table_name,
            Key={"pk": {"S": lease_pk(m)}, "sk": {"S": "lease"}},
            ConsistentRead=True,
        )["Item"]
        assert "owner" not in raw


class Proxy:
    """A TCP proxy to moto that a test can cut: the leader's endpoint going dead."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        await self.server.wait_closed()


async def test_a_leader_that_loses_its_endpoint_stops_acting_before_the_other_takes_over(
    moto_url: str, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = Proxy(int(moto_url.rsplit(":", 1)[1]))
    await proxy.start()
    m = migration()
    a = DynamoLease(lease_table("a", m, f"http://127.0.0.1:{proxy.port}", table_name))
    b = DynamoLease(lease_table("b", m, moto_url, table_name))
    caplog.set_level(logging.INFO, logger="exporter.store.lease")
    async with running(a):
        await wait_until(a.may_act)
        async with running(b):
            await wait_until(lambda: b.lease.owner == a.table.me)
            await proxy.cut()
            loop = asyncio.get_running_loop()
            a_stopped = b_started = None
            deadline = loop.time() + 10 * FAST
            while b_started is None:
                assert loop.time() < deadline, "b never took over"
                a_acts, b_acts = a.may_act(), b.may_act()
                assert not (a_acts and b_acts), "two replicas act at once"
                if not a_acts and a_stopped is None:
                    a_stopped = loop.time()
                if b_acts:
                    b_started = loop.time()
                await asyncio.sleep(0.005)
            assert a_stopped is not None and a_stopped < b_started
            assert b.lease.epoch == a.lease.epoch + 1
            snap = a.snapshot()
            failed = snap.errors["unreachable"] + snap.errors["timeout"]
            assert failed >= 3 and not snap.leader
    warnings = [
        r.getMessage()
        for r in caplog.records
        # a's own: b, close to the table, may see a slow answer on a busy machine too
        if r.name == "exporter.store.lease" and "ha: a: lease calls to table" in r.getMessage()
    ]
    # logged when the calls started failing (and when the reason changed), not per attempt
    assert 1 <= len(warnings) <= 2 < failed, warnings
    assert any("stops acting" in r.getMessage() for r in caplog.records)
    assert "testing" not in caplog.text  # the fixture's secret key


async def test_a_write_fenced_with_a_stale_epoch_is_refused(
    moto_url: str, table_name: str, ddb: object
) -> None:
    m = migration()
    old = lease_table("a", m, moto_url, table_name)
    new = lease_table("b", m, moto_url, table_name)
    try:
        create = Op("create", 0.0, 1, "v1")
        assert await old.write(create) is None
        # b takes over (as after a lease without renews); a does not know yet
        assert await new.write(Op("takeover", 0.0, 2, "v2", expect="v1")) is None
        outbox = {"pk": {"S": lease_pk(m)}, "sk": {"S": "outbox#1"}}
        client = ddb
        with pytest.raises(client.exceptions.TransactionCanceledException) as info:  # type: ignore[attr-defined]
            client.transact_write_items(  # type: ignore[attr-defined]
                TransactItems=[old.fence(1), {"Put": {"TableName": table_name, "Item": outbox}}]
            )
        reasons = [r["Code"] for r in info.value.response["CancellationReasons"]]
        assert reasons[0] == "ConditionalCheckFailed"
        assert "Item" not in client.get_item(TableName=table_name, Key=outbox)  # type: ignore[attr-defined]
        # the same write fenced by the holder of epoch 2 goes through
        client.transact_write_items(  # type: ignore[attr-defined]
            TransactItems=[new.fence(2), {"Put": {"TableName": table_name, "Item": outbox}}]
        )
        assert "Item" in client.get_item(TableName=table_name, Key=outbox)  # type: ignore[attr-defined]
        # and a's renew with its stale epoch is a lost race that shows the new holder
        lost = await old.write(Op("renew", 0.0, 1, "v3", expect="v1"))
        assert lost is not None and lost.item is not None
        assert (lost.item.owner, lost.item.epoch, lost.item.vantage) == (new.me, 2, "b")
    finally:
        old.close()
        new.close()


async def test_a_missing_table_is_an_error_counted_by_reason_not_a_crash(moto_url: str) -> None:
    lease = DynamoLease(lease_table("a", migration(), moto_url, "no-such-table"))
    async with running(lease):
        await wait_until(lambda: lease.errors["not_found"] >= 2)
        assert not lease.may_act()


# -- metrics -----------------------------------------------------------------------------------


class _Snap(Collector):
    def __init__(self, snap: LeaseSnapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        yield from lease_families(self.snap)


def exposition(snap: LeaseSnapshot) -> list[str]:
    registry = CollectorRegistry()
    registry.register(_Snap(snap))
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_the_lease_metrics() -> None:
    errors = dict.fromkeys(dynamo.REASONS, 0) | {"timeout": 3}
    snap = LeaseSnapshot("eu-west-1", True, 4, "eu-west-1#ab", 0.0, 30.0, errors)
    lines = exposition(snap)
    assert 'cutover_ha_leader{vantage="eu-west-1"} 1.0' in lines
    assert "cutover_ha_lease_epoch 4.0" in lines
    assert 'cutover_ha_lease_errors_total{reason="timeout"} 3.0' in lines
    assert 'cutover_ha_lease_errors_total{reason="throttling"} 0.0' in lines
    assert "cutover_ha_leaderless 0.0" in lines
    follower = exposition(replace(snap, leader=False, leaderless_seconds=30.5))
    assert 'cutover_ha_leader{vantage="eu-west-1"} 0.0' in follower
    assert "cutover_ha_leaderless 1.0" in follower
    assert "cutover_ha_leaderless 0.0" in exposition(
        replace(snap, leader=False, leaderless_seconds=30.0)
    )
