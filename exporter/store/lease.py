"""The leader lease: which replica of a migration may act (post to Slack, write Route53) now.

Designed after AWS' DynamoDB lock client. One item per migration holds the holder (`owner`), a
term number (`epoch`) and a random `version` that the holder rewrites at every renew. Nobody
trusts another machine's wall clock: a replica takes the lease over only when the version it
saw has stayed unchanged for a whole lease duration *on its own monotonic clock*, counted from
when its read came back, and the takeover is itself conditional on that version. The holder
counts its lease from when its last successful renew was *sent*, which is before the write
landed and so before anyone could have seen it; it stops acting after SAFE_FRACTION of the
lease. Between the two, a third of the lease is the margin for clock rates and for an action
that started just before the holder's deadline.

Three parts, each with one job:

    Lease        the pure state machine: events and the monotonic time in, the next operation
                 and "may I act now?" out; no I/O, no clock of its own (tests drive it)
    LeaseTable   the DynamoDB calls (conditional writes, a consistent read, the fence), boto3 in
                 its own worker threads with a deadline on every call
    DynamoLease  the loop that drives the machine with the table until stopped, releases the
                 lease on stop, counts errors by reason and logs once per change of state

A conditional write refused by DynamoDB is a lost race, not an error: it tells who holds the
item. A write whose answer never came may still have landed; the machine remembers the versions
it sent, so that finding one of them in the item later means the write did land.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, cast

from botocore.exceptions import ClientError

from exporter.errors import DynamoError
from exporter.store import dynamo

__all__ = [
    "LEASE_SK",
    "RENEW_FRACTION",
    "SAFE_FRACTION",
    "DynamoLease",
    "Lease",
    "LeaseItem",
    "LeaseSnapshot",
    "LeaseTable",
    "LostRace",
    "Op",
    "lease_pk",
]

# The holder renews every third of the lease, and acts for two thirds after sending its last
# successful renew: a renew that fails (or stays unanswered) is retried for a third of the lease
# before the holder stops, and a third is left between the holder's deadline and the earliest
# takeover, for clock rates and for an action started just before the deadline.
RENEW_FRACTION: Final = 1 / 3
SAFE_FRACTION: Final = 2 / 3
RETRY_FRACTION: Final = 1 / 10  # a failed call is tried again this soon (of the lease)
LEASE_SK: Final = "lease"
# how long a forgotten lease item lives after its last write (DynamoDB's TTL, wall clock):
# long enough that no clock error deletes a live item, short enough that nobody pays for it
EXPIRES_AFTER: Final = 7 * 86400.0
_ATTEMPTS_KEPT: Final = 16

OpKind = Literal["read", "create", "takeover", "renew", "release"]


def lease_pk(migration: str) -> str:
    """The partition key of a migration's items; the lease is its item with sk `lease`."""
    return f"migration#{migration}"


@dataclass(frozen=True, slots=True)
class LeaseItem:
    """The lease item as DynamoDB returned it."""

    owner: str | None  # None: released on a graceful stop, nobody holds it
    epoch: int
    version: str
    vantage: str | None = None  # the holder's vantage, for people
    lease: float = 0.0  # the holder's lease duration (s): a follower waits at least this


@dataclass(frozen=True, slots=True)
class Op:
    """What the machine asks for next, and from when (monotonic seconds)."""

    kind: OpKind
    at: float
    epoch: int = 0  # the epoch the item has after the write
    version: str = ""  # the version a write sets
    expect: str | None = None  # the version a takeover, renew or release requires


@dataclass(frozen=True, slots=True)
class LostRace:
    """A conditional write was refused: `item` is the item as DynamoDB had it (None: no item)."""

    item: LeaseItem | None


def _new_version() -> str:
    return uuid.uuid4().hex


class Lease:
    """The lease as one replica sees it. Pure: every method takes the monotonic time.

    The driver asks `due(now)` for the next operation, calls `sent(op, now)` just before
    sending it, and reports the outcome with `succeeded`, `lost`, `failed` or (for a read)
    `observed`, each with the time the answer came.
    """

    def __init__(
        self,
        me: str,
        *,
        duration: float,
        now: float,
        new_version: Callable[[], str] = _new_version,
    ) -> None:
        if duration <= 0:
            raise ValueError("duration must be positive")
        self.me = me
        self.duration = duration
        self.renew_every = duration * RENEW_FRACTION
        self.safe = duration * SAFE_FRACTION
        self.retry = duration * RETRY_FRACTION
        self._new_version = new_version
        self._held = False
        self._stopped = False
        self._epoch = 0  # mine while held, else the highest seen
        self._version: str | None = None  # mine while held
        self._valid_from = -math.inf  # send time of the last write that made or kept it mine
        self._seen: LeaseItem | None = None  # the item as last read, while following
        self._seen_since = now  # when this replica first saw `_seen.version`
        self._last_alive = now  # when a leader last showed itself (or this replica held it)
        self._attempts: dict[str, float] = {}  # version -> send time, for writes sent
        self._next = Op("read", now)

    # -- what the rest of cutover asks ---------------------------------------------------------

    def may_act(self, now: float) -> bool:
        """Whether this replica may act now: it holds the lease and its last successful renew
        was sent less than the safe fraction of the lease ago."""
        return self._held and not self._stopped and now < self._valid_from + self.safe

    def acting_until(self, now: float) -> float | None:
        """The monotonic time this replica stops acting unless a renew succeeds; None when it
        may not act now. Actions can bound their own timeouts by it."""
        return self._valid_from + self.safe if self.may_act(now) else None

    @property
    def held(self) -> bool:
        """This replica's writes made the item its own, whether or not it may still act."""
        return self._held

    @property
    def epoch(self) -> int:
        """The epoch of this replica's lease while it holds it, else the highest it saw."""
        return self._epoch

    @property
    def owner(self) -> str | None:
        """The holder as far as this replica knows: itself, another replica, or None."""
        if self._held:
            return self.me
        return self._seen.owner if self._seen is not None else None

    @property
    def holder_vantage(self) -> str | None:
        return None if self._held or self._seen is None else self._seen.vantage

    def leaderless_for(self, now: float) -> float:
        """Seconds since a leader last showed itself to this replica: since it held the lease
        itself, or since it saw the version change (a renew). 0 while this replica acts."""
        if self.may_act(now):
            return 0.0
        return max(0.0, now - self._last_alive)

    # -- what to do next -----------------------------------------------------------------------

    def due(self, now: float) -> Op:
        """The next operation and when it is due (it may be due already)."""
        return self._next

    def stop(self, now: float) -> Op | None:
        """Stop acting at once; the release to send, if this replica holds the lease."""
        was_held = self._held
        self._stopped = True
        if not was_held or self._version is None:
            return None
        return Op("release", now, self._epoch, self._new_version(), self._version)

    # -- outcomes ------------------------------------------------------------------------------

    def sent(self, op: Op, now: float) -> None:
        """`op` leaves now: a write's version is remembered with this time, because the write
        may land even if its answer never comes."""
        if op.kind == "read":
            return
        self._attempts[op.version] = now
        while len(self._attempts) > _ATTEMPTS_KEPT:
            del self._attempts[next(iter(self._attempts))]

    def succeeded(self, op: Op, now: float) -> None:
        """A write was accepted (a read's success is `observed`)."""
        if op.kind == "read":
            raise ValueError("a read's answer goes to observed()")
        if op.kind == "release":
            self._held = False
            self._version = None
            return
        if self._stopped:
            return
        self._take(op.epoch, op.version, self._attempts.get(op.version, now), now)

    def lost(self, op: Op, item: LeaseItem | None, now: float) -> None:
        """A conditional write was refused; `item` is what DynamoDB holds (None: no item)."""
        if op.kind == "release":
            self._held = False
            return
        self.observed(item, now, refused=True)

    def failed(self, op: Op, now: float) -> None:
        """No answer, or an error: the same is tried again soon. A create or takeover that may
        have landed is followed by a read, which tells; a renew is simply sent again, and if
        the unanswered one landed, its refusal shows the version this replica sent."""
        if op.kind == "release":
            self._held = False  # the lease runs out by itself; the others wait for it
            return
        if op.kind == "renew" and self._held:
            self._next = Op(
                "renew", now + self.retry, self._epoch, self._new_version(), self._version
            )
        else:
            self._next = Op("read", now + self.retry)

    def observed(self, item: LeaseItem | None, now: float, *, refused: bool = False) -> None:
        """The item as a consistent read (or a refused write) found it, at `now`."""
        if self._stopped:
            return
        if item is not None and item.owner == self.me and item.version in self._attempts:
            # one of this replica's writes landed, perhaps one whose answer never came
            self._take(item.epoch, item.version, self._attempts[item.version], now)
            return
        if self._held:
            if not refused and item is not None and item.version == self._version:
                return  # still ours: nothing changed
            self._held = False  # another replica took over (or the item went)
            self._version = None
        if item is None:
            self._seen = None
            # a deleted item must not bring epochs back: start above the highest one seen
            self._next = Op("create", now, self._epoch + 1, self._new_version(), None)
            return
        self._epoch = max(self._epoch, item.epoch)
        if self._seen is None or item.version != self._seen.version:
            if self._seen is not None and item.owner is not None:
                self._last_alive = now  # a renew: someone holds it and is alive
            self._seen_since = now
        self._seen = item
        takeover = Op("takeover", now, item.epoch + 1, self._new_version(), item.version)
        if item.owner is None:  # released: nobody acts on it, it can be taken at once
            self._next = takeover
            return
        # unchanged for a whole lease (the longer of ours and the holder's) since first seen
        at = self._seen_since + max(self.duration, item.lease)
        poll = now + self.renew_every
        if at <= poll:
            self._next = Op(takeover.kind, at, takeover.epoch, takeover.version, takeover.expect)
        else:
            self._next = Op("read", poll)

    def _take(self, epoch: int, version: str, sent_at: float, now: float) -> None:
        self._held = True
        self._epoch = epoch
        self._version = version
        self._valid_from = max(self._valid_from, sent_at)
        self._last_alive = now
        self._seen = None
        self._attempts.clear()
        self._next = Op(
            "renew", self._valid_from + self.renew_every, epoch, self._new_version(), version
        )


# -- DynamoDB ----------------------------------------------------------------------------------


def _item_of(raw: Mapping[str, Any] | None) -> LeaseItem | None:
    if not raw or "version" not in raw:
        return None
    owner = raw.get("owner", {}).get("S") or None
    vantage = raw.get("vantage", {}).get("S") or None
    return LeaseItem(
        owner=owner,
        epoch=int(raw.get("epoch", {}).get("N", "0")),
        version=str(raw["version"].get("S", "")),
        vantage=vantage,
        lease=int(raw.get("lease_ms", {}).get("N", "0")) / 1000,
    )


class LeaseTable:
    """The lease item's DynamoDB calls. Each runs in this table's own two worker threads with a
    deadline (a hung call must not hold the loop's default executor, nor the next call)."""

    def __init__(
        self,
        *,
        table: str,
        migration: str,
        me: str,
        vantage: str,
        lease: float,
        region: str | None = None,
        endpoint_url: str | None = None,
        timeout: float = 5.0,
        client: Any | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.table = table
        self.migration = migration
        self.me = me
        self.vantage = vantage
        self.lease = lease
        self.region = region
        self.endpoint_url = endpoint_url
        self.timeout = timeout
        self.key = {"pk": {"S": lease_pk(migration)}, "sk": {"S": LEASE_SK}}
        self._wall = wall
        # one attempt: the lease retries on its own schedule, inside its deadlines, where
        # botocore's backoff would sleep past them
        self._calls = dynamo.Calls(
            region=region,
            endpoint_url=endpoint_url,
            timeout=timeout,
            max_attempts=1,
            client=client,
            threads="ha-lease",
        )

    def fence(self, epoch: int) -> dict[str, Any]:
        """A TransactWriteItems entry that holds only while this replica holds epoch `epoch`:
        a write in the same transaction is refused once another replica has taken over."""
        return {
            "ConditionCheck": {
                "TableName": self.table,
                "Key": self.key,
                "ConditionExpression": "#o = :me AND #e = :epoch",
                "ExpressionAttributeNames": {"#o": "owner", "#e": "epoch"},
                "ExpressionAttributeValues": {":me": {"S": self.me}, ":epoch": {"N": str(epoch)}},
            }
        }

    async def read(self) -> LeaseItem | None:
        """The item by a strongly consistent read; raises DynamoError."""
        return await self._calls(self._read)

    async def write(self, op: Op) -> LostRace | None:
        """Send a create, takeover, renew or release; None when accepted. Raises DynamoError."""
        return await self._calls(functools.partial(self._write, op=op))

    def close(self) -> None:
        """Release threads and connections; a call still running finishes alone."""
        self._calls.close()

    def _read(self, client: Any) -> LeaseItem | None:
        answer = client.get_item(TableName=self.table, Key=self.key, ConsistentRead=True)
        return _item_of(answer.get("Item"))

    def _write(self, client: Any, op: Op) -> LostRace | None:
        expires = {"N": str(int(self._wall() + EXPIRES_AFTER))}
        values: dict[str, Any] = {":new": {"S": op.version}, ":x": expires}
        try:
            if op.kind in ("create", "takeover"):
                item = {
                    **self.key,
                    "owner": {"S": self.me},
                    "vantage": {"S": self.vantage},
                    "epoch": {"N": str(op.epoch)},
                    "version": {"S": op.version},
                    "lease_ms": {"N": str(round(self.lease * 1000))},
                    dynamo.TTL_ATTRIBUTE: expires,
                }
                if op.kind == "create":
                    condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
                else:
                    condition = {
                        "ConditionExpression": "#v = :seen",
                        "ExpressionAttributeNames": {"#v": "version"},
                        "ExpressionAttributeValues": {":seen": {"S": op.expect}},
                    }
                client.put_item(
                    TableName=self.table,
                    Item=item,
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    **condition,
                )
                return None
            # every name in ExpressionAttributeNames must be used, or DynamoDB refuses the call
            names = {"#o": "owner", "#e": "epoch", "#v": "version", "#x": dynamo.TTL_ATTRIBUTE}
            if op.kind == "renew":
                update = "SET #v = :new, #x = :x"
            elif op.kind == "release":
                update = "SET #v = :new, #x = :x REMOVE #o, #w"
                names["#w"] = "vantage"
            else:
                raise ValueError(f"not a write: {op.kind}")
            values.update(
                {":me": {"S": self.me}, ":epoch": {"N": str(op.epoch)}, ":mine": {"S": op.expect}}
            )
            client.update_item(
                TableName=self.table,
                Key=self.key,
                UpdateExpression=update,
                ConditionExpression="#o = :me AND #e = :epoch AND #v = :mine",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return LostRace(_item_of(cast("Mapping[str, Any] | None", exc.response.get("Item"))))
        return None


# -- the loop ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseSnapshot:
    """What the metrics render of one replica's lease; immutable, safe to hand around."""

    vantage: str
    leader: bool  # this replica may act now
    epoch: int
    owner: str | None
    leaderless_seconds: float
    leaderless_after: float  # the threshold: two leases
    errors: Mapping[str, int]

    @property
    def leaderless(self) -> bool:
        """No leader has shown itself to this replica for longer than the threshold."""
        return self.leaderless_seconds > self.leaderless_after


class DynamoLease:
    """Keeps one replica's side of the lease until stopped: follows, takes over, renews, and
    releases on stop. Failures are counted and logged, never raised out of `run`."""

    def __init__(
        self,
        table: LeaseTable,
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.table = table
        self.vantage = table.vantage
        self._clock = clock
        self.lease = Lease(table.me, duration=table.lease, now=clock())
        self.log = logger or logging.getLogger(__name__)
        self.errors: dict[str, int] = dict.fromkeys(dynamo.REASONS, 0)
        self._failing: DynamoError | None = None
        self._failing_since = 0.0
        self._failing_reasons: set[str] = set()  # the reasons logged in this outage
        self._acting = False
        self._stopped = False
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) whenever this replica starts or stops acting."""
        self._listeners.append(callback)

    def may_act(self) -> bool:
        """Whether this replica may act now (see Lease.may_act)."""
        return self.lease.may_act(self._clock())

    def fence(self) -> dict[str, Any] | None:
        """A ConditionCheck tying a transaction to this replica's epoch; None when it may not
        act (then it must not write either)."""
        if not self.may_act():
            return None
        return self.table.fence(self.lease.epoch)

    def snapshot(self) -> LeaseSnapshot:
        now = self._clock()
        return LeaseSnapshot(
            vantage=self.vantage,
            leader=self.lease.may_act(now),
            epoch=self.lease.epoch,
            owner=self.lease.owner,
            leaderless_seconds=self.lease.leaderless_for(now),
            leaderless_after=2 * self.lease.duration,
            errors=MappingProxyType(dict(self.errors)),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Drive the lease until `stop` is set (or the task is cancelled), then release it."""
        try:
            while not stop.is_set():
                await self.step(stop)
        finally:
            await self.release()

    async def step(self, stop: asyncio.Event | None = None) -> None:
        """Do the due operation, or wait until one is due (or until this replica's deadline to
        act, so that the log says when it stopped acting)."""
        now = self._clock()
        op = self.lease.due(now)
        wake = op.at
        until = self.lease.acting_until(now)
        if until is not None:
            wake = min(wake, until)
        if wake > now:
            if stop is None:
                await asyncio.sleep(wake - now)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wake - now)
            self._note_acting()
            return
        await self._do(op)
        self._note_acting()

    async def release(self) -> None:
        """Stop acting at once, then release the lease so that another replica takes it
        without waiting a lease out. Idempotent; a failed release is logged, not raised."""
        if self._stopped:
            return
        self._stopped = True
        op = self.lease.stop(self._clock())
        self._note_acting()
        if op is None:
            return
        self.lease.sent(op, self._clock())
        try:
            lost = await self.table.write(op)
        except DynamoError as exc:
            self.log.warning(
                "ha: could not release the lease (epoch %d): %s; the others take over "
                "once it runs out",
                op.epoch,
                exc,
            )
            self.lease.failed(op, self._clock())
            return
        if lost is None:
            self.lease.succeeded(op, self._clock())
            self.log.info("ha: released the lease (epoch %d)", op.epoch)
        else:
            self.lease.lost(op, lost.item, self._clock())

    async def _do(self, op: Op) -> None:
        self.lease.sent(op, self._clock())
        try:
            outcome = await (self.table.read() if op.kind == "read" else self.table.write(op))
        except DynamoError as exc:
            self._failed(exc)
            self.lease.failed(op, self._clock())
            return
        self._works()
        now = self._clock()  # after the answer: a follower's wait starts no earlier
        if op.kind == "read":
            self.lease.observed(outcome if isinstance(outcome, LeaseItem) else None, now)
        elif isinstance(outcome, LostRace):
            self.lease.lost(op, outcome.item, now)
        else:
            self.lease.succeeded(op, now)

    def _note_acting(self) -> None:
        """Log when this replica starts or stops acting (once per change)."""
        now = self._clock()
        acting = self.lease.may_act(now)
        if acting == self._acting:
            return
        self._acting = acting
        for callback in self._listeners:
            try:
                callback()
            except Exception:  # a listener's bug must not end the lease loop
                self.log.exception("ha: a listener of the lease failed")
        migration = self.table.migration
        if acting:
            self.log.info(
                "ha: %s leads migration %s (epoch %d)", self.vantage, migration, self.lease.epoch
            )
        elif self._stopped:
            self.log.info("ha: %s stops acting for migration %s", self.vantage, migration)
        elif self.lease.held:
            self.log.warning(
                "ha: %s stops acting for migration %s: no renew succeeded within %.3gs (epoch %d)",
                self.vantage,
                migration,
                self.lease.safe,
                self.lease.epoch,
            )
        else:
            self.log.warning(
                "ha: %s lost the lease of migration %s to %s (epoch %d)",
                self.vantage,
                migration,
                self.lease.owner or "nobody",
                self.lease.epoch,
            )

    def _failed(self, exc: DynamoError) -> None:
        self.errors[exc.reason] = self.errors.get(exc.reason, 0) + 1
        if self._failing is None:
            self._failing_since = self._clock()
            self._failing_reasons.clear()
        # each reason once an outage: one whose calls flap between refused and no answer is
        # still one outage to the reader of the log
        if exc.reason not in self._failing_reasons:
            self._failing_reasons.add(exc.reason)
            self.log.warning(
                "ha: %s: lease calls to table %s fail: %s", self.vantage, self.table.table, exc
            )
        self._failing = exc

    def _works(self) -> None:
        if self._failing is not None:
            self.log.info(
                "ha: %s: lease calls to table %s work again after %.0fs (%s)",
                self.vantage,
                self.table.table,
                max(0.0, self._clock() - self._failing_since),
                self._failing,
            )
            self._failing = None

    def close(self) -> None:
        self.table.close()
