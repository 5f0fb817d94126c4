"""Failover of an HA migration (issue 14) with real processes: daemons killed with SIGKILL,
cut off DynamoDB, paused with SIGSTOP, while they walk a guarded shift.

Each test runs a cluster (tests/ha_cluster.py): two or three `cutover run` subprocesses with a
2 s lease in moto's DynamoDB, each behind its own proxy, writing Route53 through the write
stand-in (it refuses stale DELETEs as Route53 does) and posting to the Slack stand-in. What is
asserted comes from the stand-ins' logs (every change batch names its writer and its epoch,
every Slack call its caller) and from what the replicas say (/metrics, their logs); no timing
assertions: a deadline for a condition, and the measured times in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.ha_cluster import (
    CHANNEL,
    Batch,
    HACluster,
    Replica,
    same_epoch_writers,
    stale_accepted,
)
from tests.route53_write_standin import Gate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("aws_env")]
log = logging.getLogger(__name__)

LEASE = 2.0
RENEW = LEASE / 3


async def wait_until(what: str, predicate: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"not in {timeout:g}s: {what}"
        await asyncio.sleep(0.1)


def writes_of(batches: list[Batch], replica: Replica) -> list[Batch]:
    return [b for b in batches if b.caller == replica.name]


async def test_kill_9_of_the_leader_mid_shift_hands_the_writes_to_another_with_a_new_epoch(
    tmp_path: Path, moto_url: str
) -> None:
    async with HACluster(tmp_path, moto_url, replicas=3, lease=f"{LEASE:g}s") as cluster:
        old = await cluster.leader()
        first = await cluster.wait_batch(lambda b: b.accepted)
        assert first.caller == old.name and first.step == 1 and first.epoch is not None

        killed = time.monotonic()
        old.kill()
        new = await cluster.leader(among=cluster.others(old), timeout=LEASE + RENEW + 15)
        took = time.monotonic() - killed
        log.warning(
            "failover: %s took over %.2fs after kill -9 of %s (lease %gs + renew %.2gs = %.2gs)",
            new.name, took, old.name, LEASE, RENEW, LEASE + RENEW,
        )  # fmt: skip

        second = await cluster.wait_batch(lambda b: b.accepted and b.caller == new.name)
        log.warning(
            "failover: first write of the new leader %.2fs after the kill", second.at - killed
        )
        assert second.epoch is not None and second.epoch > first.epoch
        assert (
            second.step is not None
            and second.step
            == max(b.step or 0 for b in cluster.batches() if b.accepted and b.at < second.at) + 1
        )  # it went on from the step Route53 holds, with the step record swapped exactly
        batches = cluster.batches()
        assert all(b.epoch == first.epoch for b in writes_of(batches, old))
        assert all(b.at < killed for b in writes_of(batches, old))
        assert same_epoch_writers(batches) == {}
        assert stale_accepted(batches) == []
        assert [b for b in batches if not b.accepted] == []  # nobody raced anybody
        survivors = [r for r in cluster.others(old) if r is not new]
        assert [await r.leads() for r in survivors] == [False]
        status = await survivors[0].status()
        assert status is not None and status["ha"]["owner"].startswith(f"{new.name}#")
        assert status["ha"]["epoch"] == second.epoch


async def test_a_leader_cut_off_dynamodb_stops_acting_before_another_can_take_the_lease(
    tmp_path: Path, moto_url: str
) -> None:
    # quorum 1: the cut-off replica cannot report its vantage either, and with the default
    # quorum of two vantages the survivor rightly holds every step until that report expires
    async with HACluster(tmp_path, moto_url, replicas=2, lease=f"{LEASE:g}s", quorum=1) as cluster:
        old = await cluster.leader()
        (new,) = cluster.others(old)
        first = await cluster.wait_batch(lambda b: b.accepted)
        assert first.caller == old.name

        cut = time.monotonic()
        cluster.proxy(old).set_mode("drop")
        await wait_until("the cut-off leader stops acting", lambda: _says(old, False), LEASE * 2)
        stopped = time.monotonic()
        await cluster.leader(among=[new], timeout=LEASE * 4)
        log.warning(
            "partition: %s stopped acting %.2fs after the cut, %s led %.2fs after it",
            old.name, stopped - cut, new.name, time.monotonic() - cut,
        )  # fmt: skip
        # what each one logged, on the same machine's clock: it stopped before the other led
        gave_up = old.logged("stops acting for migration")
        took = new.logged("leads migration")
        assert gave_up is not None and took is not None, (old.log()[-2000:], new.log()[-2000:])
        assert gave_up < took
        assert "no renew succeeded within" in old.log()

        second = await cluster.wait_batch(lambda b: b.accepted and b.caller == new.name)
        assert second.epoch is not None and first.epoch is not None
        assert second.epoch > first.epoch
        # it stays a follower while cut off, and follows the new leader once the table is back
        await asyncio.sleep(RENEW)
        cluster.proxy(old).set_mode("pass")
        await wait_until(
            "the old leader sees the new epoch", lambda: _epoch(old, second.epoch), LEASE * 3
        )
        assert await old.leads() is False and await new.leads() is True

        batches = cluster.batches()
        assert [b for b in writes_of(batches, old) if b.at >= second.at] == []
        assert all(b.epoch == first.epoch for b in writes_of(batches, old))
        assert same_epoch_writers(batches) == {}
        assert stale_accepted(batches) == []
        samples = await old.lease()
        assert samples is not None
        errors = sum(v for k, v in samples.items() if k.startswith("cutover_ha_lease_errors_total"))
        assert errors > 0  # the cut showed, counted by reason


async def test_a_paused_leaders_late_write_is_refused_and_it_comes_back_as_a_follower(
    tmp_path: Path, moto_url: str
) -> None:
    async with HACluster(tmp_path, moto_url, replicas=2, lease=f"{LEASE:g}s") as cluster:
        old = await cluster.leader()
        (new,) = cluster.others(old)
        samples = await old.lease()
        assert samples is not None
        epoch = samples["cutover_ha_lease_epoch"]
        # its first step leaves it, then it stops (a GC pause, a frozen VM) before Route53 sees it
        gate = Gate(timeout=60.0)
        cluster.route53.hold_next_change = gate
        assert cluster.batches() == []
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, gate.arrived.wait, 60.0)
        old.pause()
        paused = time.monotonic()

        await cluster.leader(among=[new], timeout=LEASE * 4)
        second = await cluster.wait_batch(lambda b: b.accepted and b.caller == new.name)
        assert time.monotonic() - paused > LEASE  # paused for longer than the lease
        gate.release.set()  # the paused leader's batch reaches Route53 now, late
        late = await cluster.wait_batch(lambda b: not b.accepted, timeout=10)
        old.resume()
        resumed = time.monotonic()

        assert late.caller == old.name and late.epoch == epoch
        assert second.epoch is not None and second.epoch > epoch
        assert late.step == second.step == 1  # both built on the same read: the later one lost
        # refused whole: the weights and the step record are no longer those it read
        assert late.error is not None
        assert "do not match the current values" in late.error
        assert "_cutover-step.api.example.com.', type='TXT'] but it already exists" in late.error
        await wait_until(
            "the old leader follows the new epoch", lambda: _epoch(old, second.epoch), LEASE * 3
        )
        await asyncio.sleep(LEASE)  # time for a blind retry, if there were one
        assert await old.leads() is False and await new.leads() is True
        text = old.log()  # it read the refusal as a lost race, and saw it no longer acts
        assert "another writer got in first" in text and "checking Route53" in text, text[-3000:]
        assert "stops acting for migration" in text

        batches = cluster.batches()
        assert [b for b in writes_of(batches, old) if b.accepted] == []
        assert [b for b in writes_of(batches, old) if b.at > resumed] == []
        assert same_epoch_writers(batches) == {}
        assert stale_accepted(batches) == []


async def test_kill_9_of_the_leader_while_an_incident_fires_resolves_the_same_slack_message(
    tmp_path: Path, moto_url: str
) -> None:
    async with HACluster(
        tmp_path, moto_url, replicas=2, lease=f"{LEASE:g}s", slack=True
    ) as cluster:
        slack = cluster.slack
        old = await cluster.leader()
        (new,) = cluster.others(old)
        _, candidate = cluster.platforms
        candidate.status = 503

        def incident_posts() -> list[str]:
            # the incident's message, firing ("aws is down") or resolved ("aws down regression")
            about = ("aws is down", "aws down regression")
            return [
                m.ts for m in slack.top_level(CHANNEL) if any(a in (m.text or "") for a in about)
            ]

        async def posted() -> bool:
            return bool(incident_posts())

        await wait_until("the incident is posted", posted, 30)
        await asyncio.sleep(2 * LEASE)  # every replica that would post has done so by now
        assert len(incident_posts()) == 1, [m.text for m in slack.top_level(CHANNEL)]
        (ts,) = incident_posts()

        killed = time.monotonic()
        old.kill()
        await cluster.leader(among=[new], timeout=LEASE * 4)
        candidate.status = 200

        async def resolved() -> bool:
            return "[RESOLVED]" in (slack.messages[ts].text or "")

        await wait_until("the same message says resolved", resolved, 60)
        assert len(incident_posts()) == 1
        edits = [c for c in slack.message_calls("chat.update") if c.ts == ts and c.answer == "ok"]
        assert edits and all(c.caller == new.name for c in edits if c.at > killed)
        # one voice: before the kill only the old leader spoke, after it only the new one
        calls = slack.message_calls()
        assert {c.caller for c in calls if c.at < killed} <= {old.name}
        assert {c.caller for c in calls if c.at > killed} <= {new.name}


async def _says(replica: Replica, leads: bool) -> bool:
    return await replica.leads() is leads


async def _epoch(replica: Replica, epoch: int | None) -> bool:
    samples = await replica.lease()
    return samples is not None and samples.get("cutover_ha_lease_epoch") == epoch
