"""The outbox for several replicas: an `OutboxStore` in the HA table, claims fenced by the lease.

Every item sits in the migration's partition (`pk = migration#<name>`, as the lease), one item
per fact, so that each write touches only what changed and no item grows with the outbox:

    sk                   attributes
    outbox#<key>         incident, action, text, blocks (JSON text, absent: none), created,
                         order (when it was queued: the queue's order), plain, repost,
                         unsure_since (absent: not in flight), claim_epoch (absent: never
                         claimed), expires
    sent#<key>           expires: a delivered (or dropped) key, kept so that enqueueing it again
                         stays a no-op; DynamoDB's TTL deletes it later
    thread#<incident>    channel (id), ts, at: the incident's message, which a new leader edits
                         and replies to; expires
    channel#<name>       id: the id Slack answered for a configured channel; expires

Numbers are DynamoDB numbers written from finite floats (NaN and infinity are refused before
they reach the table); `expires` is wall-clock seconds, refreshed at every write.

Errors: a call that fails raises OutboxStoreError (a DynamoError with its `reason`, and an
OSError, as the protocol asks of a change that cannot be persisted), its detail scrubbed of
credentials, and the change stays in memory (a failed append or finish is written again by
the next `save`); a value the table cannot hold raises ValueError before anything changes. A
refused claim is no error: `claim` returns False.

The methods are synchronous, as the protocol is, and block for at most about `max_attempts` x
(connect + read timeout): the daemon hands the Notifier this store with `Threaded` calls
(exporter/store/calls.py), so that they run in a worker thread with a deadline, never on the
event loop. A claim that raises means the fence was not checked: the Notifier does not send.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from botocore.exceptions import ClientError
from pydantic import TypeAdapter, ValidationError

from exporter.alerting.outbox import (
    KEEP_DONE,
    KEEP_THREADS,
    Entry,
    OutboxState,
    QueuedRecord,
    Sent,
    StateReads,
)
from exporter.errors import OutboxStoreError
from exporter.store import dynamo
from exporter.store.lease import lease_pk

__all__ = ["EXPIRES_AFTER", "MAX_ITEM_BYTES", "DynamoOutboxStore"]

# how long a delivered key, a thread or a queued entry outlives its last write (DynamoDB's TTL,
# wall clock): a week of edits and replies to an incident's message, then the table forgets it
EXPIRES_AFTER: Final = 7 * 86400.0
# DynamoDB refuses items over 400 KB; Slack's own limits (40k characters of text, 50 blocks)
# stay well below this, so a bigger entry is a bug, refused before it reaches the table
MAX_ITEM_BYTES: Final = 350_000
# a blocking call on the daemon's behalf: one retry for a dropped connection, no long backoff
MAX_ATTEMPTS: Final = 2

OUTBOX, SENT, THREAD, CHANNEL = "outbox", "sent", "thread", "channel"
_RECORD: Final = TypeAdapter(QueuedRecord)

FenceOf = Callable[[int], dict[str, Any]]
_Flags = tuple[bool, bool, float | None]


def _number(value: float, what: str) -> dict[str, str]:
    if not math.isfinite(value):
        raise ValueError(f"{what} is {value}: the table holds finite numbers only")
    return {"N": repr(float(value))}


def _flags(entry: Entry) -> _Flags:
    return (entry.plain, entry.repost, entry.unsure_since)


class _Refused(Exception):
    """A conditional write, or a transaction, was refused on its condition (a lost race)."""


class DynamoOutboxStore(StateReads):
    """An `OutboxStore` in the HA table, shared by the replicas of one migration.

    Reads (`queue`, `threads`, `channel_id`, `knows`) answer from memory, as filled by `load`
    and kept by this store's own writes: another replica's writes show after the next `load`.
    Claims are conditional: the lease's `fence(epoch)` (a ConditionCheck) must hold, and the
    entry must still be queued and not claimed under a later epoch. Without `fence` (tests, a
    single replica) only the entry's condition is checked.
    """

    def __init__(
        self,
        *,
        table: str,
        migration: str,
        fence: FenceOf | None = None,
        client: Any | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        timeout: float = 3.0,
        wall: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.table = table
        self.migration = migration
        self.pk = lease_pk(migration)
        self.region = region
        self.endpoint_url = endpoint_url
        self.timeout = timeout
        self._fence = fence
        self._wall = wall
        self.log = logger or logging.getLogger(__name__)
        self._client = dynamo.BlockingClient(
            region=region,
            endpoint_url=endpoint_url,
            timeout=timeout,
            max_attempts=MAX_ATTEMPTS,
            client=client,
        )
        self._state = OutboxState()
        self._stored: dict[str, _Flags] = {}  # key -> the flags the table has for it
        # changes whose write failed, written again by `save`: an appended entry's item, and a
        # finish's transaction (the next leader must find the message's thread, not post anew)
        self._unappended: dict[str, dict[str, Any]] = {}
        self._unfinished: dict[str, list[dict[str, Any]]] = {}
        self._order = 0  # the last `order` given to an appended entry (ns)

    # --- reads, from memory

    @property
    def where(self) -> str | None:
        return f"DynamoDB table {self.table} ({self.pk})"

    # --- the table

    def load(self, now: float) -> None:
        """Read the migration's partition (a consistent query, every page) into memory.

        An item that cannot be read is skipped with a warning naming it; a `sent#` item past
        its `expires` (`now`, wall clock) is ignored, as DynamoDB deletes expired items late.
        Raises OutboxStoreError when the table cannot be read; memory is then left as it was.
        """
        items = self._call(self._query)
        queued: list[tuple[int, Entry, _Flags]] = []
        done: list[tuple[float, str]] = []
        threads: list[tuple[float, str, tuple[str, str]]] = []
        channels: dict[str, str] = {}
        for item in items:
            sk = str(item.get("sk", {}).get("S", ""))
            kind, _, name = sk.partition("#")
            try:
                if kind == OUTBOX:
                    order, entry = self._entry_of(name, item)
                    queued.append((order, entry, _flags(entry)))
                elif kind == SENT:
                    expires = float(item[dynamo.TTL_ATTRIBUTE]["N"])
                    if expires > now:
                        done.append((expires, name))
                elif kind == THREAD:
                    at = float(item["at"]["N"])
                    threads.append((at, name, (str(item["channel"]["S"]), str(item["ts"]["S"]))))
                elif kind == CHANNEL:
                    channels[name] = str(item["id"]["S"])
                # other items (the lease, a later slice's) are not the outbox's
            except (KeyError, TypeError, ValueError, ValidationError) as e:
                self.log.warning(
                    "skipped unreadable outbox item %s in %s: %s",
                    sk,
                    self.where,
                    _why(e),
                )
        state = OutboxState()
        # a finish this store could not write yet is done all the same, and an append not
        # written yet is queued all the same: `save` writes both
        queued = [q for q in queued if q[1].n.key not in self._unfinished]
        keys = {q[1].n.key for q in queued}
        for key, unwritten in self._unappended.items():
            if key not in keys:
                order, entry = self._entry_of(key, unwritten)
                queued.append((order, entry, _flags(entry)))
        done.extend((math.inf, key) for key in self._unfinished)
        queued.sort(key=lambda q: (q[0], q[1].n.key))
        state.queue = [entry for _, entry, _ in queued]
        state.done = dict.fromkeys(name for _, name in sorted(done)[-KEEP_DONE:])
        state.threads = {name: where for _, name, where in sorted(threads)[-KEEP_THREADS:]}
        state.channels = channels
        self._state = state
        self._stored = {
            entry.n.key: flags for _, entry, flags in queued if entry.n.key not in self._unappended
        }
        self._order = max([self._order, *(order for order, _, _ in queued)])

    def append(self, entry: Entry) -> None:
        """Queue `entry`; in the table only if no replica queued its key already (then the
        stored item is kept, and `entry` takes its flags: it may be in flight already).

        An entry the table cannot hold raises ValueError before anything changes; a failed
        write keeps it in memory and `save` writes it again."""
        order = max(time.time_ns(), self._order + 1)
        item = self._item_of(entry, order)
        self._order = order
        self._state.queue.append(entry)
        try:
            self._call(self._put_new, item)
        except OutboxStoreError:
            self._unappended[entry.n.key] = item
            raise
        except _Refused as lost:
            stored = lost.args[0] if lost.args else None
            if isinstance(stored, Mapping):
                try:
                    _, theirs = self._entry_of(entry.n.key, stored)
                except (KeyError, TypeError, ValueError, ValidationError):
                    pass  # unreadable: `load` will say so; ours stays in memory
                else:
                    entry.plain, entry.repost = theirs.plain, theirs.repost
                    entry.unsure_since = theirs.unsure_since
                    self._stored[entry.n.key] = _flags(theirs)
            return
        self._stored[entry.n.key] = _flags(entry)

    def claim(self, entry: Entry, epoch: int) -> bool:
        """Mark `entry` in flight under `epoch`, in one transaction with the lease's fence.

        False when the transaction is refused: the lease is held under another epoch (or by
        another replica), the entry is no longer queued, or it was claimed under a later
        epoch. Nothing is written then. Raises OutboxStoreError when the answer is unknown:
        the fence was not checked, so `entry` must not be sent on the strength of this call.
        """
        names = {"#u": "unsure_since", "#c": "claim_epoch", "#p": "plain", "#r": "repost"}
        names["#x"] = dynamo.TTL_ATTRIBUTE
        values: dict[str, Any] = {
            ":e": {"N": str(epoch)},
            ":p": {"BOOL": entry.plain},
            ":r": {"BOOL": entry.repost},
            ":x": self._expires(),
        }
        update = "SET #c = :e, #p = :p, #r = :r, #x = :x"
        if entry.unsure_since is None:
            update += " REMOVE #u"
        else:
            update += ", #u = :u"
            values[":u"] = _number(entry.unsure_since, "unsure_since")
        mark = {
            "Update": {
                "TableName": self.table,
                "Key": self._key(OUTBOX, entry.n.key),
                "UpdateExpression": update,
                "ConditionExpression": (
                    "attribute_exists(sk) AND (attribute_not_exists(#c) OR #c <= :e)"
                ),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }
        writes = [mark] if self._fence is None else [self._fence(epoch), mark]
        try:
            self._call(self._transact, writes)
        except _Refused:
            return False
        self._stored[entry.n.key] = _flags(entry)
        return True

    def finish(self, entry: Entry, sent: Sent | None) -> None:
        """In one transaction: the queued item goes, its key is kept (`sent#`, expiring), and
        where its message landed (`thread#`, `channel#`) is written for the next leader.

        Not fenced: a message that went out is in Slack whoever holds the lease now, and the
        next leader must find it to edit it rather than post it again.
        """
        self._state.finish(entry, sent)
        self._stored.pop(entry.n.key, None)
        expires = self._expires()
        writes: list[dict[str, Any]] = [
            {"Delete": {"TableName": self.table, "Key": self._key(OUTBOX, entry.n.key)}},
            self._put({**self._key(SENT, entry.n.key), dynamo.TTL_ATTRIBUTE: expires}),
        ]
        if sent is not None:
            if sent.thread:
                item = {
                    **self._key(THREAD, entry.n.incident),
                    "channel": {"S": sent.channel_id},
                    "ts": {"S": sent.ts},
                    "at": _number(self._wall(), "at"),
                    dynamo.TTL_ATTRIBUTE: expires,
                }
                writes.append(self._put(item))
            channel = {**self._key(CHANNEL, sent.channel), "id": {"S": sent.channel_id}}
            writes.append(self._put({**channel, dynamo.TTL_ATTRIBUTE: expires}))
        self._unappended.pop(entry.n.key, None)
        self._unfinished[entry.n.key] = writes
        self._write_finish(entry.n.key)

    def _write_finish(self, key: str) -> None:
        try:
            self._call(self._transact, self._unfinished[key])
        except _Refused:
            # nothing here is conditional: a refusal means the same items were being written
            # by another call at that instant (TransactionConflict); `save` writes it again
            raise OutboxStoreError(
                "other", "finish refused by a concurrent transaction", code="Conflict"
            ) from None
        del self._unfinished[key]

    def save(self) -> None:
        """Write the flags (`plain`, `repost`, `unsure_since`) of each queued entry whose
        flags changed since the table last had them; an entry that another replica finished
        meanwhile is not brought back. Appends and finishes whose write failed are written
        first (a finish again whole: its key, the message's thread and channel)."""
        failure: OutboxStoreError | None = None
        for key in list(self._unfinished):
            try:
                self._write_finish(key)
            except OutboxStoreError as e:
                failure = failure or e
        for key, item in list(self._unappended.items()):
            try:
                self._call(self._put_new, item)
            except _Refused:
                pass  # another replica queued it meanwhile: theirs is kept
            except OutboxStoreError as e:
                failure = failure or e
                continue
            del self._unappended[key]
            entry = next((e for e in self._state.queue if e.n.key == key), None)
            if entry is not None:
                # the flags written with it; any change since is written below
                self._stored[key] = _flags(self._entry_of(key, item)[1])
        for entry in list(self._state.queue):
            if entry.n.key in self._unappended:
                continue  # not in the table: an update would find nothing
            flags = _flags(entry)
            if self._stored.get(entry.n.key) == flags:
                continue
            try:
                self._call(self._update_flags, entry)
            except _Refused:
                self.log.debug("outbox entry %s is no longer in the table", entry.n.key)
            except OutboxStoreError as e:
                failure = failure or e  # the others may still be saved
                continue
            self._stored[entry.n.key] = flags
        if failure is not None:
            raise failure

    # --- items

    def _key(self, kind: str, name: str) -> dict[str, dict[str, str]]:
        return {"pk": {"S": self.pk}, "sk": {"S": f"{kind}#{name}"}}

    def _expires(self) -> dict[str, str]:
        return {"N": str(int(self._wall() + EXPIRES_AFTER))}

    def _put(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"Put": {"TableName": self.table, "Item": item}}

    def _item_of(self, entry: Entry, order: int) -> dict[str, Any]:
        n = entry.n
        item: dict[str, Any] = {
            **self._key(OUTBOX, n.key),
            "incident": {"S": n.incident},
            "action": {"S": n.action},
            "text": {"S": n.text},
            "created": _number(n.created, "created"),
            "order": {"N": str(order)},
            "plain": {"BOOL": entry.plain},
            "repost": {"BOOL": entry.repost},
            dynamo.TTL_ATTRIBUTE: self._expires(),
        }
        if n.blocks is not None:
            # JSON text: blocks are nested and free-form, and NaN is refused here
            item["blocks"] = {"S": json.dumps([dict(b) for b in n.blocks], allow_nan=False)}
        if entry.unsure_since is not None:
            item["unsure_since"] = _number(entry.unsure_since, "unsure_since")
        size = len(json.dumps(item))
        if size > MAX_ITEM_BYTES:
            raise ValueError(
                f"notification {n.key} takes {size} bytes; the table holds {MAX_ITEM_BYTES}"
            )
        return item

    @staticmethod
    def _entry_of(key: str, item: Mapping[str, Any]) -> tuple[int, Entry]:
        blocks = item.get("blocks")
        unsure = item.get("unsure_since")
        # the outbox file's schema, through JSON as the file is read: strict types, no NaN
        record = _RECORD.validate_json(
            json.dumps(
                {
                    "key": key,
                    "incident": item["incident"]["S"],
                    "action": item["action"]["S"],
                    "text": item["text"]["S"],
                    "blocks": None if blocks is None else json.loads(blocks["S"]),
                    "created": float(item["created"]["N"]),
                    "plain": item["plain"]["BOOL"],
                    "repost": item["repost"]["BOOL"],
                    "unsure_since": None if unsure is None else float(unsure["N"]),
                }
            )
        )
        return int(item["order"]["N"]), Entry.of(record)

    # --- calls (blocking, in the caller's thread)

    def _query(self, client: Any) -> list[dict[str, Any]]:
        return dynamo.query_partition(client, self.table, self.pk)

    def _put_new(self, client: Any, item: dict[str, Any]) -> None:
        try:
            client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(sk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as e:
            if _code(e) == "ConditionalCheckFailedException":
                raise _Refused(e.response.get("Item")) from None
            raise

    def _update_flags(self, client: Any, entry: Entry) -> None:
        names = {"#p": "plain", "#r": "repost", "#u": "unsure_since"}
        values: dict[str, Any] = {":p": {"BOOL": entry.plain}, ":r": {"BOOL": entry.repost}}
        update = "SET #p = :p, #r = :r"
        if entry.unsure_since is None:
            update += " REMOVE #u"
        else:
            update += ", #u = :u"
            values[":u"] = _number(entry.unsure_since, "unsure_since")
        try:
            client.update_item(
                TableName=self.table,
                Key=self._key(OUTBOX, entry.n.key),
                UpdateExpression=update,
                ConditionExpression="attribute_exists(sk)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as e:
            if _code(e) == "ConditionalCheckFailedException":
                raise _Refused from None
            raise

    def _transact(self, client: Any, writes: list[dict[str, Any]]) -> None:
        try:
            client.transact_write_items(TransactItems=writes)
        except ClientError as e:
            if _code(e) == "TransactionCanceledException" and _lost_race(e):
                raise _Refused from None
            raise

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(client, *args)`; a lost race passes as _Refused, every other failure becomes
        an OutboxStoreError whose detail holds no credential."""
        try:
            return fn(self._client.get(), *args)
        except _Refused:
            raise
        except Exception as e:
            error = self._client.classify(e)
            raise OutboxStoreError(error.reason, error.detail, code=error.code) from None


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _lost_race(e: ClientError) -> bool:
    """A cancelled transaction lost a race when a condition failed (or another transaction
    wrote the same items); throttling or a validation error inside it are failures."""
    reasons = e.response.get("CancellationReasons") or []
    codes = {str(r.get("Code")) for r in reasons if isinstance(r, Mapping)}
    if codes:
        return bool(codes & {"ConditionalCheckFailed", "TransactionConflict"}) and codes <= {
            "ConditionalCheckFailed",
            "TransactionConflict",
            "None",
        }
    # an answer without reasons: botocore found none to parse; the message still names them
    return "ConditionalCheckFailed" in str(e.response.get("Error", {}).get("Message", ""))


def _why(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"no attribute {e}"
    if isinstance(e, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'item'}: {err['msg']}" for err in e.errors()
        )
    return f"{type(e).__name__}: {e}"
