"""Route53 weight changes: one atomic change batch, then boto3's waiter until INSYNC; in threads.

Two ways to write a step, chosen per writer (or per call):

UPSERT (the single-replica default): the weighted sets as read, with their new weights.
  UPSERT is unconditional: it cannot tell whether someone wrote in between.
compare-and-swap (`ha` configured: several replicas may believe they lead for a moment):
  DELETE every weighted set exactly as read, CREATE it with its new weight, and DELETE the
  `_cutover-step` TXT record of step n exactly as read (none at step 0), CREATE step n+1 with
  the writer's lease epoch (see `exporter.route53.step`). Route53 checks each DELETE against
  what it holds and refuses the whole batch when one does not match, so a writer whose read is
  stale changes nothing, even when the weights came back to what it read (A -> B -> A): the
  step number moved on. Never UPSERT in this mode.

Errors are the reader's `Route53Error` (reason: throttling, access_denied, not_found, timeout,
other), plus two subclasses:

    Route53Error          route53.py: a call failed; `reason` is the error metric's label
    ├── WeightsChanged    the weights in Route53 are not the ones the caller expected (a person
    │                     changed them): nothing was written
    └── StaleWrite        compare-and-swap only: Route53 refused the batch (InvalidChangeBatch)
                          because the sets or the step record changed after the read: a lost
                          race, nothing was written. Read again; the same batch can never pass.

Only throttling is tried again (below). An InvalidChangeBatch never is: sending the same batch
again cannot succeed, and the caller must decide from a fresh read. Trying a compare-and-swap
batch again after Throttling or PriorRequestNotComplete is safe: Route53 applied nothing, and
the batch still holds only if nobody wrote in between.

One change is in flight per hosted zone at a time (per event loop, across writers): a second
change to the zone waits until the first is INSYNC, so Route53 never answers
PriorRequestNotComplete because of us. When it does anyway (another tool), the submit is tried
again with backoff, as is lasting Throttling, until `submit_timeout`.

The INSYNC wait is boto3's `resource_record_sets_changed` waiter in a worker thread, polling
every `poll_interval` until `insync_timeout`; a throttled or unreachable poll is waited out. A
cancelled task or a closed writer ends the wait before its next poll, at most `poll_interval`
later (the waiter's sleep cannot be interrupted; the process exit waits for it).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from botocore.exceptions import ClientError, ReadTimeoutError, WaiterError
from botocore.exceptions import ConnectionError as BotoConnectionError

from exporter import aws
from exporter.errors import Route53Error, StaleWrite, WeightsChanged
from exporter.route53.read import (
    RecordSpec,
    Route53Calls,
    classify,
    list_weighted_group,
)
from exporter.route53.step import STEP_TTL, StepMark, read_step_set, step_record_name

if TYPE_CHECKING:
    from mypy_boto3_route53.type_defs import (
        ChangeBatchTypeDef,
        ResourceRecordSetOutputTypeDef,
        WaiterConfigTypeDef,
    )

__all__ = ["Route53Writer", "StaleWrite", "StepMark", "WeightsChanged", "WriteResult"]

T = TypeVar("T")

# Fields a record set can carry that are not ours to change; everything else is copied as read.
_MANAGED: Final = "TrafficPolicyInstanceId"

# Route53's words when a DELETE does not match what it holds or a CREATE finds its set there:
# what a lost race looks like. Other InvalidChangeBatch answers (a CNAME conflict, a bad value)
# are mistakes of the batch, not races, and stay plain Route53Errors.
_LOST_RACE = re.compile(
    r"Tried to (?:delete|create) resource record set .*? but (?:it was not found|"
    r"the values provided do not match the current values|it already exists)"
)

_ZONE_LOCKS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str | None, str], asyncio.Lock]
] = weakref.WeakKeyDictionary()


def _zone_lock(endpoint_url: str | None, zone_id: str) -> asyncio.Lock:
    locks = _ZONE_LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault((endpoint_url, zone_id), asyncio.Lock())


@dataclass(slots=True, eq=False)  # compared and hashed by identity: kept in a set
class _Wait:
    """One INSYNC wait, shared by the worker thread running it and the task awaiting it."""

    deadline: float  # time.monotonic()
    stop: threading.Event = field(default_factory=threading.Event)
    why: str = "INSYNC wait abandoned"
    polls: int = 0


class _Expired(Exception):
    """The INSYNC deadline passed before the next GetChange."""


# The INSYNC wait running in this worker thread, for _before_get_change.
_WAITING = threading.local()
_HOOK_ID: Final = "cutover-insync-wait"


def _before_get_change(**_: Any) -> None:
    """botocore's before-call hook for GetChange, the one way into the waiter's loop: counts
    its polls, and ends it when its task was cancelled, the writer closed, or time is up."""
    wait: _Wait | None = getattr(_WAITING, "wait", None)
    if wait is None:  # a GetChange of someone else's on this client
        return
    if wait.stop.is_set():
        raise Route53Error("other", wait.why)
    if time.monotonic() > wait.deadline:
        raise _Expired
    wait.polls += 1


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What was written (or, dry, would have been) and how it went.

    status   INSYNC     written and propagated to Route53's name servers
             UNCHANGED  the weights were already these: nothing was sent
             DRY_RUN    nothing was sent; `change_batch` is exactly what would have been

    `step` and `epoch`: what the `_cutover-step` record says after this write (compare-and-swap
    only; None in UPSERT mode and when nothing was to change).
    """

    record: RecordSpec
    weights: Mapping[str, int]
    previous: Mapping[str, int]
    change_batch: Mapping[str, Any]
    status: str
    dry_run: bool
    change_id: str | None = None
    submit_attempts: int = 0
    polls: int = 0
    seconds: float = 0.0
    step: int | None = None
    epoch: int | None = None


class Route53Writer(Route53Calls):
    """Writes the weights of configured records; each AWS call runs in a worker thread."""

    _what = "writer"

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        timeout: float = 10.0,
        max_attempts: int = 4,
        submit_timeout: float = 60.0,
        insync_timeout: float = 180.0,
        poll_interval: float = 2.0,
        backoff: float = 0.5,
        dry_run: bool = False,
        compare_and_swap: bool = False,
        client: Any | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if min(timeout, submit_timeout, insync_timeout, poll_interval, backoff) <= 0:
            raise ValueError("timeouts, intervals and backoff must be positive")
        super().__init__(
            endpoint_url=endpoint_url,
            timeout=timeout,
            max_attempts=max_attempts,
            client=client,
            logger=logger,
            workers=2,
            thread_name_prefix="route53-write",
        )
        self.submit_timeout = submit_timeout
        self.insync_timeout = insync_timeout
        self.poll_interval = poll_interval
        self.backoff = backoff
        self.dry_run = dry_run
        self.compare_and_swap = compare_and_swap
        self._waits: set[_Wait] = set()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one blocking call in the pool; any failure comes out as a Route53Error.

        No asyncio timeout here: botocore's connect/read timeouts bound every attempt, and
        the zone lock must stay held for as long as a call may still reach Route53.
        """
        try:
            return await self._calls.run(fn, *args)
        except Route53Error:
            raise
        except aws.CallsClosed:
            raise Route53Error("other", "writer is closed") from None
        except Exception as exc:
            raise classify(exc) from exc

    async def apply_weights(
        self,
        record: RecordSpec,
        weights: Mapping[str, int],
        *,
        expected: Mapping[str, int] | None = None,
        dry_run: bool | None = None,
        comment: str | None = None,
        compare_and_swap: bool | None = None,
        epoch: int | None = None,
    ) -> WriteResult:
        """Set the weights of `record`'s weighted sets (platform -> weight) in one batch.

        Reads the record sets first and copies everything in them but the weight. With
        `expected`, refuses (WeightsChanged) when Route53 holds other weights than those.
        Waits for INSYNC. Dry (`dry_run`, default the writer's): logs and returns the exact
        ChangeBatch, writes nothing. Raises Route53Error; ValueError for impossible weights.

        `compare_and_swap` (default the writer's) writes the step as DELETEs of what was read
        and CREATEs, with the `_cutover-step` record bumped and naming `epoch` (the lease's);
        a lost race raises StaleWrite. `epoch` without compare-and-swap is a ValueError: UPSERT
        could not fence anything with it.
        """
        dry = self.dry_run if dry_run is None else dry_run
        cas = self.compare_and_swap if compare_and_swap is None else compare_and_swap
        _check_weights(record, weights)
        _check_epoch(epoch, cas)
        mark: StepMark | None = None
        started = time.monotonic()
        async with _zone_lock(self.endpoint_url, record.zone_id):
            group = await self._call(self._read_group, record)
            sets = _by_platform(record, group)
            previous = {p: int(rrset.get("Weight", 0)) for p, rrset in sets.items()}
            if expected is not None and previous != dict(expected):
                raise WeightsChanged(record.describe(), previous, expected)
            if cas:
                step_set = await self._call(self._read_step, record)
                last = StepMark.from_set(step_set)
                if step_set is not None and last is None:
                    # not ours, or cut: the DELETE below still holds it to exactly this value
                    self.log.warning(
                        "route53: %s holds no step this writer can read; counting from 0",
                        step_record_name(record),
                    )
                mark = StepMark(step=(last.step if last else 0) + 1, epoch=epoch, weights=weights)
                batch = _cas_batch(record, sets, weights, step_set, mark, comment)
            else:
                batch = _change_batch(sets, weights, comment)
            change = _describe(record, previous, weights)
            result = WriteResult(
                record=record,
                weights=dict(weights),
                previous=previous,
                change_batch=batch,
                status="DRY_RUN",
                dry_run=dry,
            )
            if dry:
                self.log.info(
                    "route53: dry run: would set %s; ChangeBatch %s",
                    change,
                    json.dumps(batch, sort_keys=True),
                )
                return result
            if previous == dict(weights):
                self.log.debug("route53: %s already has these weights", record.describe())
                return dataclasses.replace(result, status="UNCHANGED")
            try:
                change_id, attempts = await self._submit(record, batch)
            except Route53Error as exc:
                if mark is not None and _lost_race(exc):
                    raise StaleWrite(record.describe(), mark.step - 1, exc.detail) from exc
                raise
            polls = await self._wait_insync(change_id)
        seconds = time.monotonic() - started
        as_step = "" if mark is None else f" as step {mark.step}, epoch {_epoch_text(mark.epoch)}"
        self.log.info(
            "route53: set %s%s (change %s, INSYNC after %.1fs)", change, as_step, change_id, seconds
        )
        return dataclasses.replace(
            result,
            status="INSYNC",
            change_id=change_id,
            submit_attempts=attempts,
            polls=polls,
            seconds=seconds,
            step=None if mark is None else mark.step,
            epoch=None if mark is None else mark.epoch,
        )

    async def last_step(self, record: RecordSpec) -> StepMark | None:
        """The last compare-and-swap step written to `record` and by which epoch, as its
        `_cutover-step` record says; None when there is none (or not one of ours)."""
        return StepMark.from_set(await self._call(self._read_step, record))

    async def _submit(self, record: RecordSpec, batch: Mapping[str, Any]) -> tuple[str, int]:
        deadline = time.monotonic() + self.submit_timeout
        delay = self.backoff
        attempts = 0
        while True:
            attempts += 1
            try:
                answer = await self._call(self._change, record.zone_id, batch)
            except Route53Error as exc:
                # botocore's standard mode already retried; this outer loop outlasts a change
                # another tool has in flight in the zone, or a long stretch of throttling
                if exc.reason != "throttling" or time.monotonic() + delay > deadline:
                    raise
                self.log.info(
                    "route53: change to %s refused (%s), trying again in %.1fs",
                    record.describe(),
                    exc.code,
                    delay,
                )
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, 10.0)
                continue
            return answer, attempts

    async def _wait_insync(self, change_id: str) -> int:
        """Wait for INSYNC in a worker thread; the number of GetChange calls it took."""
        wait = _Wait(deadline=time.monotonic() + self.insync_timeout)
        self._waits.add(wait)
        try:
            return await self._call(self._wait_blocking, change_id, wait)
        finally:
            # Cancelled (shutdown, reload) or done: the thread stops before its next GetChange.
            # It cannot be interrupted sooner: the waiter sleeps `poll_interval` between polls.
            wait.stop.set()
            self._waits.discard(wait)

    def close(self) -> None:
        for wait in self._waits:
            wait.why = "writer is closed"
            wait.stop.set()
        super().close()

    # --- in worker threads -------------------------------------------------------------------

    def _read_group(self, record: RecordSpec) -> list[ResourceRecordSetOutputTypeDef]:
        """The weighted record sets at the record's name (and type), as Route53 holds them."""
        return list_weighted_group(self._get_client(), record).sets

    def _read_step(self, record: RecordSpec) -> ResourceRecordSetOutputTypeDef | None:
        return read_step_set(self._get_client(), record)

    def _change(self, zone_id: str, batch: Mapping[str, Any]) -> str:
        answer = self._get_client().change_resource_record_sets(
            HostedZoneId=zone_id, ChangeBatch=cast("ChangeBatchTypeDef", batch)
        )
        return answer["ChangeInfo"]["Id"].rsplit("/", 1)[-1]

    def _wait_blocking(self, change_id: str, wait: _Wait) -> int:
        """boto3's resource_record_sets_changed waiter, resumed after transient failures."""
        client = self._get_client()
        client.meta.events.register(
            "before-call.route-53.GetChange", _before_get_change, unique_id=_HOOK_ID
        )
        waiter = client.get_waiter("resource_record_sets_changed")
        # As many polls as fit before the deadline, `poll_interval` apart; the hook holds the
        # deadline itself, as slow answers stretch the polls. The stubs type Delay as int, but
        # botocore only sleeps it, and tests poll every few ms.
        attempts = int(self.insync_timeout // self.poll_interval) + 1
        status = "PENDING"
        _WAITING.wait = wait
        try:
            while True:
                polls_before = wait.polls
                config = {"Delay": self.poll_interval, "MaxAttempts": attempts - wait.polls}
                try:
                    waiter.wait(Id=change_id, WaiterConfig=cast("WaiterConfigTypeDef", config))
                    return wait.polls
                except _Expired:
                    if wait.polls > polls_before:  # the waiter went on: the last poll was PENDING
                        status = "PENDING"
                    break
                except WaiterError as exc:
                    # typed as an error answer, but after the last attempt it is the PENDING one
                    answer = cast("dict[str, Any]", exc.last_response)
                    if "Error" not in answer:  # the attempts are spent
                        status = str(answer.get("ChangeInfo", {}).get("Status", status))
                        break
                    error = classify(ClientError(cast(Any, answer), "GetChange"))
                    if error.reason != "throttling":
                        raise error from exc
                    status = f"unknown ({error})"
                except (BotoConnectionError, ReadTimeoutError) as exc:
                    status = f"unknown ({classify(exc)})"
                # Throttled or unreachable past botocore's own retries: the change was
                # accepted, so this is waited out like a PENDING answer (the waiter ends at
                # the first error it has no acceptor for).
                if wait.polls >= attempts or time.monotonic() + self.poll_interval > wait.deadline:
                    break
                if wait.stop.wait(self.poll_interval):
                    raise Route53Error("other", wait.why)
        finally:
            del _WAITING.wait
        raise Route53Error(
            "timeout",
            f"change {change_id} not INSYNC after {self.insync_timeout:g}s ({status})",
            code="InsyncTimeout",
        )


def _check_weights(record: RecordSpec, weights: Mapping[str, int]) -> None:
    if set(weights) != set(record.set_identifiers):
        raise ValueError(
            f"weights must name every platform of {record.describe()} "
            f"({', '.join(record.set_identifiers)}), got {', '.join(weights) or 'none'}"
        )
    for platform, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 255:
            raise ValueError(f"weight of {platform}: expected 0-255, got {weight!r}")
    if not any(weights.values()):
        # all zero means an even split to Route53: never what a plan asks for
        raise ValueError("weights must not all be 0 (Route53 would split the traffic evenly)")


def _check_epoch(epoch: int | None, cas: bool) -> None:
    if epoch is None:
        return
    if not cas:
        raise ValueError("an epoch needs compare-and-swap writes: an UPSERT cannot be fenced")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch: expected an integer >= 0, got {epoch!r}")


def _epoch_text(epoch: int | None) -> str:
    return "none" if epoch is None else str(epoch)


def _lost_race(exc: Route53Error) -> bool:
    return exc.code == "InvalidChangeBatch" and _LOST_RACE.search(exc.detail) is not None


def _by_platform(
    record: RecordSpec, group: list[ResourceRecordSetOutputTypeDef]
) -> dict[str, ResourceRecordSetOutputTypeDef]:
    by_sid = {rrset.get("SetIdentifier", ""): rrset for rrset in group}
    sets: dict[str, ResourceRecordSetOutputTypeDef] = {}
    missing = []
    for platform, sid in record.set_identifiers.items():
        rrset = by_sid.get(sid)
        if rrset is None:
            missing.append(repr(sid))
            continue
        if _MANAGED in rrset:
            raise Route53Error(
                "other",
                f"{record.describe()} set {sid!r} belongs to a traffic policy instance: "
                "change it through the traffic policy",
                code="TrafficPolicyRecord",
            )
        sets[platform] = rrset
    if missing:
        raise Route53Error(
            "not_found",
            f"{record.describe()} has no weighted record set with SetIdentifier "
            + ", ".join(missing),
            code="NoSuchRecordSet",
        )
    return sets


def _change_batch(
    sets: Mapping[str, ResourceRecordSetOutputTypeDef],
    weights: Mapping[str, int],
    comment: str | None,
) -> dict[str, Any]:
    changes = []
    for platform, rrset in sets.items():
        # Everything as read (name spelling, TTL, values or alias target, health check),
        # only the weight replaced: an UPSERT replaces the whole record set.
        upsert: dict[str, Any] = copy.deepcopy(dict(rrset))
        upsert["Weight"] = weights[platform]
        if "AliasTarget" in upsert:
            # an alias takes its TTL and values from the target; Route53 refuses either here
            # (moto lists alias sets with TTL 0)
            upsert.pop("TTL", None)
            upsert.pop("ResourceRecords", None)
        changes.append({"Action": "UPSERT", "ResourceRecordSet": upsert})
    batch: dict[str, Any] = {"Changes": changes}
    if comment:
        batch["Comment"] = comment[:256]
    return batch


def _as_read(rrset: ResourceRecordSetOutputTypeDef) -> dict[str, Any]:
    """A record set as a DELETE must give it: everything as listed; an alias without a TTL or
    values, which Route53 never lists for one and refuses on one (some stand-ins list TTL 0)."""
    exact: dict[str, Any] = copy.deepcopy(dict(rrset))
    if "AliasTarget" in exact:
        exact.pop("TTL", None)
        exact.pop("ResourceRecords", None)
    return exact


def _cas_batch(
    record: RecordSpec,
    sets: Mapping[str, ResourceRecordSetOutputTypeDef],
    weights: Mapping[str, int],
    step_set: ResourceRecordSetOutputTypeDef | None,
    mark: StepMark,
    comment: str | None,
) -> dict[str, Any]:
    """DELETE the weighted sets and the step record exactly as read, then CREATE their
    successors: all DELETEs before the CREATEs, the order of Route53's own example of replacing
    a record set in one batch (a CREATE of a set still there is refused)."""
    deletes: list[dict[str, Any]] = []
    creates: list[dict[str, Any]] = []
    for platform, rrset in sets.items():
        old = _as_read(rrset)
        new = copy.deepcopy(old)
        new["Weight"] = weights[platform]
        deletes.append({"Action": "DELETE", "ResourceRecordSet": old})
        creates.append({"Action": "CREATE", "ResourceRecordSet": new})
    if step_set is not None:
        deletes.append({"Action": "DELETE", "ResourceRecordSet": _as_read(step_set)})
    creates.append(
        {
            "Action": "CREATE",
            "ResourceRecordSet": {
                "Name": step_record_name(record),
                "Type": "TXT",
                "TTL": STEP_TTL,
                "ResourceRecords": [{"Value": mark.value()}],
            },
        }
    )
    batch: dict[str, Any] = {"Changes": deletes + creates}
    if comment:
        batch["Comment"] = comment[:256]
    return batch


def _describe(record: RecordSpec, before: Mapping[str, int], after: Mapping[str, int]) -> str:
    parts = ", ".join(f"{p} {before.get(p, '-')}->{w}" for p, w in after.items())
    return f"weights of {record.describe()}: {parts}"
