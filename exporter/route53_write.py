"""Route53 weight changes: one atomic UPSERT batch, then GetChange until INSYNC; boto3 in threads.

Errors are the reader's `Route53Error` (reason: throttling, access_denied, not_found, timeout,
other), plus one subclass:

    Route53Error          route53.py: a call failed; `reason` is the error metric's label
    └── WeightsChanged    the weights in Route53 are not the ones the caller expected (a person
                          changed them): nothing was written

One change is in flight per hosted zone at a time (per event loop, across writers): a second
change to the zone waits until the first is INSYNC, so Route53 never answers
PriorRequestNotComplete because of us. When it does anyway (another tool), the submit is tried
again with backoff, as is lasting Throttling, until `submit_timeout`.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import random
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from exporter.route53 import (
    RecordSpec,
    Route53Calls,
    Route53Error,
    classify,
    normalize_name,
)

if TYPE_CHECKING:
    from mypy_boto3_route53.literals import RRTypeType
    from mypy_boto3_route53.type_defs import (
        ChangeBatchTypeDef,
        ListResourceRecordSetsRequestTypeDef,
        ResourceRecordSetOutputTypeDef,
    )

__all__ = ["Route53Writer", "WeightsChanged", "WriteResult"]

T = TypeVar("T")

# A weighted group holds at most 100 record sets: a listing still on our name after this many
# pages is a server bug (the reader uses the same bound).
_MAX_PAGES: Final = 20
# Fields a record set can carry that are not ours to change; everything else is copied as read.
_MANAGED: Final = "TrafficPolicyInstanceId"

_ZONE_LOCKS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str | None, str], asyncio.Lock]
] = weakref.WeakKeyDictionary()


def _zone_lock(endpoint_url: str | None, zone_id: str) -> asyncio.Lock:
    locks = _ZONE_LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault((endpoint_url, zone_id), asyncio.Lock())


class WeightsChanged(Route53Error):
    """The record's weights are not the ones the caller expected; nothing was written."""

    def __init__(self, record: RecordSpec, found: Mapping[str, int], expected: Mapping[str, int]):
        diffs = ", ".join(
            f"{p} {expected.get(p, '-')} -> {found.get(p, '-')}"
            for p in dict.fromkeys([*expected, *found])
            if expected.get(p) != found.get(p)
        )
        super().__init__(
            "other", f"weights of {record.describe()} changed: {diffs}", code="WeightsChanged"
        )
        self.found = dict(found)
        self.expected = dict(expected)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What was written (or, dry, would have been) and how it went.

    status   INSYNC     written and propagated to Route53's name servers
             UNCHANGED  the weights were already these: nothing was sent
             DRY_RUN    nothing was sent; `change_batch` is exactly what would have been
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
        max_poll_interval: float = 10.0,
        backoff: float = 0.5,
        dry_run: bool = False,
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
        self.max_poll_interval = max(max_poll_interval, poll_interval)
        self.backoff = backoff
        self.dry_run = dry_run

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one blocking call in the pool; any failure comes out as a Route53Error.

        No asyncio timeout here: botocore's connect/read timeouts bound every attempt, and
        the zone lock must stay held for as long as a call may still reach Route53.
        """
        if self._closed:
            raise Route53Error("other", "writer is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except RuntimeError as exc:
            if self._closed:
                raise Route53Error("other", "writer is closed") from exc
            raise classify(exc) from exc
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
    ) -> WriteResult:
        """Set the weights of `record`'s weighted sets (platform -> weight) in one batch.

        Reads the record sets first and copies everything in them but the weight. With
        `expected`, refuses (WeightsChanged) when Route53 holds other weights than those.
        Waits for INSYNC. Dry (`dry_run`, default the writer's): logs and returns the exact
        ChangeBatch, writes nothing. Raises Route53Error; ValueError for impossible weights.
        """
        dry = self.dry_run if dry_run is None else dry_run
        _check_weights(record, weights)
        started = time.monotonic()
        async with _zone_lock(self.endpoint_url, record.zone_id):
            group = await self._call(self._read_group, record)
            sets = _by_platform(record, group)
            previous = {p: int(rrset.get("Weight", 0)) for p, rrset in sets.items()}
            if expected is not None and previous != dict(expected):
                raise WeightsChanged(record, previous, expected)
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
            change_id, attempts = await self._submit(record, batch)
            polls = await self._wait_insync(change_id)
        seconds = time.monotonic() - started
        self.log.info("route53: set %s (change %s, INSYNC after %.1fs)", change, change_id, seconds)
        return dataclasses.replace(
            result,
            status="INSYNC",
            change_id=change_id,
            submit_attempts=attempts,
            polls=polls,
            seconds=seconds,
        )

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
        """Poll GetChange until INSYNC; the number of polls. Transient failures are waited out."""
        deadline = time.monotonic() + self.insync_timeout
        interval = self.poll_interval
        polls = 0
        status = "PENDING"
        while True:
            try:
                polls += 1
                status = await self._call(self._get_change, change_id)
            except Route53Error as exc:
                if exc.reason not in ("throttling", "timeout"):
                    raise
                status = f"unknown ({exc})"
            if status == "INSYNC":
                return polls
            if time.monotonic() + interval > deadline:
                raise Route53Error(
                    "timeout",
                    f"change {change_id} not INSYNC after {self.insync_timeout:g}s ({status})",
                    code="InsyncTimeout",
                )
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, self.max_poll_interval)

    # --- in worker threads -------------------------------------------------------------------

    def _read_group(self, record: RecordSpec) -> list[ResourceRecordSetOutputTypeDef]:
        """The weighted record sets at the record's name (and type), as Route53 holds them."""
        client = self._get_client()
        name, rtype = record.fqdn, record.record_type
        params: ListResourceRecordSetsRequestTypeDef = {
            "HostedZoneId": record.zone_id,
            "StartRecordName": name + ".",
        }
        if rtype is not None:
            params["StartRecordType"] = cast("RRTypeType", rtype)
        group: list[ResourceRecordSetOutputTypeDef] = []
        for _ in range(_MAX_PAGES):
            page = client.list_resource_record_sets(**params)
            for rrset in page.get("ResourceRecordSets", []):
                if normalize_name(rrset["Name"]) != name or (
                    rtype is not None and rrset["Type"] != rtype
                ):
                    return group
                if "Weight" in rrset:
                    rtype = rtype or rrset["Type"]
                    group.append(rrset)
            if not page.get("IsTruncated"):
                return group
            params = {
                "HostedZoneId": record.zone_id,
                "StartRecordName": page.get("NextRecordName", ""),
            }
            if "NextRecordType" in page:
                params["StartRecordType"] = page["NextRecordType"]
            if "NextRecordIdentifier" in page:
                params["StartRecordIdentifier"] = page["NextRecordIdentifier"]
        raise Route53Error("other", f"listing did not leave the name after {_MAX_PAGES} pages")

    def _change(self, zone_id: str, batch: Mapping[str, Any]) -> str:
        answer = self._get_client().change_resource_record_sets(
            HostedZoneId=zone_id, ChangeBatch=cast("ChangeBatchTypeDef", batch)
        )
        return answer["ChangeInfo"]["Id"].rsplit("/", 1)[-1]

    def _get_change(self, change_id: str) -> str:
        return self._get_client().get_change(Id=change_id)["ChangeInfo"]["Status"]


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


def _describe(record: RecordSpec, before: Mapping[str, int], after: Mapping[str, int]) -> str:
    parts = ", ".join(f"{p} {before.get(p, '-')}->{w}" for p, w in after.items())
    return f"weights of {record.describe()}: {parts}"
