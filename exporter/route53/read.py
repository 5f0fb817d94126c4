"""Route53 weighted records read into weights and traffic shares; boto3 runs in worker threads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, cast

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from exporter import aws
from exporter.errors import ROUTE53_REASONS, Route53Error, Route53Reason

if TYPE_CHECKING:
    from mypy_boto3_route53 import Route53Client
    from mypy_boto3_route53.type_defs import (
        ListResourceRecordSetsRequestPaginateTypeDef,
        ResourceRecordSetOutputTypeDef,
    )

__all__ = [
    "REASONS",
    "RecordSpec",
    "RecordWeights",
    "Route53Error",
    "Route53Reader",
    "Route53Snapshot",
    "Route53State",
    "WeightedEntry",
    "WeightedGroup",
    "list_weighted_group",
    "normalize_name",
]

Reason = Route53Reason
REASONS: Final[tuple[Reason, ...]] = ROUTE53_REASONS

_THROTTLING_CODES: Final = frozenset(
    {"Throttling", "ThrottlingException", "PriorRequestNotComplete", "TooManyRequestsException"}
)
_ACCESS_DENIED_CODES: Final = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "UnrecognizedClientException",
    }
)
_NOT_FOUND_CODES: Final = frozenset({"NoSuchHostedZone"})

# A weighted group holds at most 100 record sets, so a well-behaved listing that has not
# left our name after this many pages is a server bug, not a big group.
_MAX_PAGES: Final = 20

_ESCAPE = re.compile(r"\\([0-7]{3})")


def normalize_name(name: str) -> str:
    """Route53 and config spellings of a DNS name -> one comparable form (`\\052` -> `*`)."""
    decoded = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), name.strip())
    return decoded.rstrip(".").lower()


def _zone_id(hosted_zone_id: str) -> str:
    return hosted_zone_id.strip().rsplit("/", 1)[-1]


def make_client(endpoint_url: str | None, timeout: float, max_attempts: int) -> Route53Client:
    """A Route53 client (see `exporter.aws.make_client`). Blocking: call it from a worker thread."""
    client, _ = aws.make_client(
        "route53", endpoint_url=endpoint_url, timeout=timeout, max_attempts=max_attempts
    )
    return cast("Route53Client", client)


@dataclass(frozen=True, slots=True)
class RecordSpec:
    """One configured record: which weighted group to read and which platform owns which set."""

    hosted_zone_id: str
    name: str
    type: str | None
    # Excluded from the hash (a mapping is not hashable) but still part of equality.
    set_identifiers: Mapping[str, str] = field(hash=False)

    def __post_init__(self) -> None:
        # Frozen means frozen: a caller mutating its dict later must not change this spec.
        object.__setattr__(self, "set_identifiers", MappingProxyType(dict(self.set_identifiers)))

    @property
    def zone_id(self) -> str:
        """The bare zone id, without a `/hostedzone/` prefix."""
        return _zone_id(self.hosted_zone_id)

    @property
    def fqdn(self) -> str:
        """The name in comparable form: lower case, no trailing dot, escapes decoded."""
        return normalize_name(self.name)

    @property
    def record_type(self) -> str | None:
        return self.type.strip().upper() if self.type else None

    def describe(self) -> str:
        kind = f" {self.record_type}" if self.record_type else ""
        return f"{self.fqdn}{kind} in {self.zone_id}"


@dataclass(frozen=True, slots=True)
class WeightedEntry:
    set_identifier: str
    platform: str | None
    weight: int
    share: float
    alias: bool
    target: str
    health_check_id: str | None = None


@dataclass(frozen=True, slots=True)
class RecordWeights:
    spec: RecordSpec
    type: str
    ttl: int | None
    entries: tuple[WeightedEntry, ...]
    missing: tuple[str, ...]
    unmapped: tuple[str, ...]
    fetched_at: float
    api_calls: int = 1

    def platform_shares(self) -> dict[str, float]:
        """Share per configured platform; a platform whose set is missing gets 0.0."""
        shares = dict.fromkeys(self.spec.set_identifiers, 0.0)
        for entry in self.entries:
            if entry.platform is not None:
                shares[entry.platform] += entry.share
        return shares

    def platform_weights(self) -> dict[str, int | None]:
        """Weight per configured platform; None where its set is missing."""
        weights: dict[str, int | None] = dict.fromkeys(self.spec.set_identifiers)
        for entry in self.entries:
            if entry.platform is not None:
                weights[entry.platform] = entry.weight
        return weights


def classify(exc: BaseException) -> Route53Error:
    """Map any exception raised while reading to a Route53Error with a metric reason."""
    if isinstance(exc, Route53Error):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = str(error.get("Message") or code)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        reason: Reason
        if code in _THROTTLING_CODES:
            reason = "throttling"
        elif code in _ACCESS_DENIED_CODES or status == 403:
            reason = "access_denied"
        elif code in _NOT_FOUND_CODES:
            reason = "not_found"
        else:
            reason = "other"
        return Route53Error(reason, message, code=code)
    if isinstance(exc, BotoConnectionError | ReadTimeoutError):
        return Route53Error("timeout", str(exc), code=type(exc).__name__)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        # Without credentials every call would be refused: the fix is the same as for a denial.
        return Route53Error("access_denied", str(exc), code=type(exc).__name__)
    if isinstance(exc, TimeoutError):
        return Route53Error("timeout", str(exc) or "timed out", code="Timeout")
    if isinstance(exc, BotoCoreError):
        return Route53Error("other", str(exc), code=type(exc).__name__)
    return Route53Error("other", f"{type(exc).__name__}: {exc}", code=type(exc).__name__)


def _weights(
    record: RecordSpec, rtype: str, group: Sequence[ResourceRecordSetOutputTypeDef], calls: int
) -> RecordWeights:
    platform_of: dict[str, str] = {}
    for platform, sid in record.set_identifiers.items():
        platform_of.setdefault(sid, platform)
    weights = [int(rrset.get("Weight", 0)) for rrset in group]
    total = sum(weights)
    entries: list[WeightedEntry] = []
    ttls: list[int] = []
    for rrset, weight in zip(group, weights, strict=True):
        sid = rrset.get("SetIdentifier", "")
        alias = rrset.get("AliasTarget")
        if alias is not None:
            target = alias.get("DNSName", "").rstrip(".")
        else:
            values = rrset.get("ResourceRecords", [])
            target = values[0]["Value"] if values else ""
            if "TTL" in rrset:
                ttls.append(int(rrset["TTL"]))
        entries.append(
            WeightedEntry(
                set_identifier=sid,
                platform=platform_of.get(sid),
                weight=weight,
                # Route53 splits evenly when every weight is zero.
                share=weight / total if total else 1.0 / len(group),
                alias=alias is not None,
                target=target,
                health_check_id=rrset.get("HealthCheckId"),
            )
        )
    found = {entry.set_identifier for entry in entries}
    missing = tuple(
        dict.fromkeys(sid for sid in record.set_identifiers.values() if sid not in found)
    )
    unmapped = tuple(entry.set_identifier for entry in entries if entry.platform is None)
    return RecordWeights(
        spec=record,
        type=rtype,
        # Aliases have no TTL of their own; the longest TTL bounds how long old answers live.
        ttl=max(ttls) if ttls else None,
        entries=tuple(entries),
        missing=missing,
        unmapped=unmapped,
        fetched_at=time.time(),
        api_calls=calls,
    )


@dataclass(slots=True)
class WeightedGroup:
    """The record sets one listing found at a record's name (and type)."""

    type: str | None = None  # the weighted group's type; None when there is no weighted set
    sets: list[ResourceRecordSetOutputTypeDef] = field(default_factory=list)
    plain: list[str] = field(default_factory=list)  # types of non-weighted sets at the name
    pages: int = 0  # ListResourceRecordSets calls made, botocore's retries not counted


def list_weighted_group(
    client: Route53Client,
    record: RecordSpec,
    *,
    deadline: float | None = None,
    on_page: Callable[[], None] | None = None,
) -> WeightedGroup:
    """Read `record`'s weighted group with boto3's ListResourceRecordSets paginator.

    Blocking (call it from a worker thread). The listing starts at the record's name and type
    and stops at the first record set past the group, so a zone of any size costs one call, two
    when the group straddles a page. `on_page` runs after every page; past `deadline`
    (time.monotonic()) no further page is asked for and TimeoutError is raised.
    """
    name, rtype = record.fqdn, record.record_type
    params: dict[str, Any] = {"HostedZoneId": record.zone_id, "StartRecordName": name + "."}
    if rtype is not None:
        params["StartRecordType"] = rtype
    group = WeightedGroup()
    # the type the listing stays in: the configured one, else the first weighted set's
    stay_in = rtype
    # StartRecordName/Type go in as operation parameters: botocore passes them to the first
    # request and replaces them with NextRecordName/Type/Identifier on the following ones (the
    # stubs list only StartingToken, an opaque token meant for resuming an earlier listing).
    pages = client.get_paginator("list_resource_record_sets").paginate(
        **cast("ListResourceRecordSetsRequestPaginateTypeDef", params)
    )
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError("no page asked for before the deadline")
    # The paginator asks for the next page only when the loop comes back for it: stopping
    # early is leaving the loop.
    for page in pages:
        group.pages += 1
        if on_page is not None:
            on_page()
        # The listing starts at our name (and type), so the first record set that is not ours
        # lies past the group: everything after it is someone else's.
        past = False
        for rrset in page.get("ResourceRecordSets", []):
            if normalize_name(rrset["Name"]) != name or (
                stay_in is not None and rrset["Type"] != stay_in
            ):
                past = True
                break
            if "Weight" not in rrset:
                group.plain.append(rrset["Type"])
                continue
            group.type = stay_in = rrset["Type"]
            group.sets.append(rrset)
        if past or not page.get("IsTruncated"):
            break
        next_type = page.get("NextRecordType")
        if normalize_name(page.get("NextRecordName", "")) != name or next_type is None:
            break
        if stay_in is not None and next_type != stay_in:
            break
        if group.type is not None and "NextRecordIdentifier" not in page:
            # Only weighted sets can follow weighted sets of one name and type, so the page
            # ended inside the group, and without an identifier the next page would start at
            # the group's first set again (moto 5.2 never sends one). botocore would only
            # notice after reading that page twice (PaginationError).
            raise Route53Error(
                "other",
                f"the listing of {record.describe()} stopped inside its weighted group without "
                "a NextRecordIdentifier to go on from",
                code="NoNextRecordIdentifier",
            )
        if group.pages >= _MAX_PAGES:
            raise Route53Error("other", f"listing did not leave the name after {group.pages} pages")
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"listing unfinished after {group.pages} page(s)")
    return group


class Route53Calls:
    """What the reader and the writer share: their settings and their calls off the event loop
    (`exporter.aws.AwsCalls`: a lazily built client in a small thread pool of their own)."""

    _what = "client"  # in "... is closed" errors

    def __init__(
        self,
        *,
        endpoint_url: str | None,
        timeout: float,
        max_attempts: int,
        client: Any | None,
        logger: logging.Logger | None,
        workers: int,
        thread_name_prefix: str,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.endpoint_url = endpoint_url
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.log = logger or logging.getLogger(type(self).__module__)
        self._calls = aws.AwsCalls(
            lambda: (make_client(endpoint_url, timeout, max_attempts), None),
            name=thread_name_prefix,
            workers=workers,
            client=client,
        )

    @property
    def _closed(self) -> bool:
        return self._calls.closed

    def _get_client(self) -> Route53Client:
        try:
            return cast("Route53Client", self._calls.client())
        except aws.CallsClosed:
            raise Route53Error("other", f"{self._what} is closed") from None

    def close(self) -> None:
        """Release threads and connections; a call still running in a thread finishes alone."""
        self._calls.close()


class Route53Reader(Route53Calls):
    """Reads weighted groups with ListResourceRecordSets; each read runs in a worker thread."""

    _what = "reader"

    def __init__(
        self,
        records: Sequence[RecordSpec],
        *,
        endpoint_url: str | None = None,
        timeout: float = 10.0,
        max_attempts: int = 4,
        client: Any | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.records: tuple[RecordSpec, ...] = tuple(records)
        super().__init__(
            endpoint_url=endpoint_url,
            timeout=timeout,
            max_attempts=max_attempts,
            client=client,
            logger=logger,
            workers=max(1, min(4, len(self.records))),
            thread_name_prefix="route53",
        )
        self._count_lock = threading.Lock()
        self._api_calls = 0

    @property
    def api_calls(self) -> int:
        """ListResourceRecordSets operations issued (pages), not counting botocore's retries."""
        with self._count_lock:
            return self._api_calls

    def _page_read(self) -> None:
        with self._count_lock:
            self._api_calls += 1

    def _read_blocking(self, record: RecordSpec, deadline: float) -> RecordWeights:
        group = list_weighted_group(
            self._get_client(), record, deadline=deadline, on_page=self._page_read
        )
        if group.type is None:
            want = record.record_type
            what = f"{record.fqdn} {want}" if want else record.fqdn
            detail = f"no weighted record sets for {what} in {record.zone_id}"
            if group.plain:
                detail += f" (found non-weighted {', '.join(dict.fromkeys(group.plain))})"
            raise Route53Error("not_found", detail, code="NoWeightedRecords")
        return _weights(record, group.type, group.sets, group.pages)

    async def read(self, record: RecordSpec) -> RecordWeights:
        """Read one record's weighted group; raises Route53Error, never anything else."""
        if self._closed:
            raise Route53Error("other", "reader is closed")
        deadline = time.monotonic() + self.timeout
        try:
            result = await self._calls.run(
                self._read_blocking, record, deadline, within=self.timeout
            )
        except Route53Error:
            raise
        except aws.CallsClosed:
            raise Route53Error("other", "reader is closed") from None
        except aws.CallTimedOut as exc:
            raise Route53Error("timeout", str(exc), code="Timeout") from None
        except Exception as exc:
            raise classify(exc) from exc
        if self.log.isEnabledFor(logging.DEBUG):
            parts = " ".join(f"{e.set_identifier}={e.weight}" for e in result.entries)
            self.log.debug(
                "route53: read %s: %s (%d call(s))", record.describe(), parts, result.api_calls
            )
        return result

    async def read_all(
        self,
    ) -> tuple[dict[RecordSpec, RecordWeights], dict[RecordSpec, Route53Error]]:
        """Read every configured record concurrently; a failing record does not stop the others."""
        outcomes = await asyncio.gather(
            *(self.read(record) for record in self.records), return_exceptions=True
        )
        good: dict[RecordSpec, RecordWeights] = {}
        bad: dict[RecordSpec, Route53Error] = {}
        for record, outcome in zip(self.records, outcomes, strict=True):
            if isinstance(outcome, RecordWeights):
                good[record] = outcome
            elif isinstance(outcome, Exception):
                bad[record] = classify(outcome)
            else:  # CancelledError and friends are not ours to swallow
                raise outcome
        return good, bad


@dataclass(frozen=True, slots=True)
class Route53Snapshot:
    """What the collector and the status page render; immutable, safe to hand around."""

    weights: Mapping[RecordSpec, RecordWeights]
    failing: Mapping[RecordSpec, Route53Error]
    last_success: float | None
    errors: Mapping[str, int]


class Route53State:
    """Last good weights per record, error counts by reason, and quiet (once per change) logs."""

    def __init__(
        self,
        reader: Route53Reader,
        *,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.log = logger or logging.getLogger(type(self).__module__)
        self._clock = clock
        self.weights: dict[RecordSpec, RecordWeights] = {}
        self.failing: dict[RecordSpec, Route53Error] = {}
        self.failing_since: dict[RecordSpec, float] = {}
        self.last_success: float | None = None
        self.errors: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.polls = 0

    def snapshot(self) -> Route53Snapshot:
        return Route53Snapshot(
            weights=MappingProxyType(dict(self.weights)),
            failing=MappingProxyType(dict(self.failing)),
            last_success=self.last_success,
            errors=MappingProxyType(dict(self.errors)),
        )

    def replace_reader(self, reader: Route53Reader) -> None:
        """Swap in a reader for a reloaded config; records still configured keep their weights."""
        old, self.reader = self.reader, reader
        keep = set(reader.records)
        self.weights = {r: w for r, w in self.weights.items() if r in keep}
        self.failing = {r: e for r, e in self.failing.items() if r in keep}
        self.failing_since = {r: t for r, t in self.failing_since.items() if r in keep}
        if old is not reader:
            old.close()

    async def poll_once(self) -> bool:
        """Read every record once and fold the outcome in; True when all of them were read."""
        reader = self.reader
        good, bad = await reader.read_all()
        now = self._clock()
        keep = set(self.reader.records)
        # Copy-on-write so a snapshot taken earlier never changes under the collector.
        weights = dict(self.weights)
        failing = dict(self.failing)
        for record, result in good.items():
            if record not in keep:
                continue
            self._note_success(record, weights.get(record), result, now)
            failing.pop(record, None)
            weights[record] = result
        for record, error in bad.items():
            if record not in keep:
                continue
            self.errors[error.reason] = self.errors.get(error.reason, 0) + 1
            previous = failing.get(record)
            # keyed on the reason alone: an outage shows as "refused", then as "no answer"
            # in turn, and is still one failure to the reader of the log
            if previous is None or previous.reason != error.reason:
                self.log.warning(
                    "route53: reading %s failed: %s%s",
                    record.describe(),
                    error,
                    "; keeping the last known weights" if record in weights else "",
                )
            if previous is None:
                self.failing_since[record] = now
            failing[record] = error
        self.weights, self.failing = weights, failing
        self.polls += 1
        if not bad and reader is self.reader:
            self.last_success = now
        return not bad

    def _note_success(
        self, record: RecordSpec, before: RecordWeights | None, after: RecordWeights, now: float
    ) -> None:
        if record in self.failing:
            since = self.failing_since.pop(record, now)
            self.log.info(
                "route53: reading %s works again after %.0fs (%s)",
                record.describe(),
                max(0.0, now - since),
                self.failing[record],
            )
        old = {e.set_identifier: e.weight for e in before.entries} if before else {}
        new = {e.set_identifier: e.weight for e in after.entries}
        if before is not None and old != new:
            changes = ", ".join(
                f"{sid} {old.get(sid, '-')}->{new.get(sid, '-')}"
                for sid in dict.fromkeys([*old, *new])
                if old.get(sid) != new.get(sid)
            )
            self.log.info("route53: weights of %s changed: %s", record.describe(), changes)
        if before is None or (before.missing, before.unmapped) != (after.missing, after.unmapped):
            if after.missing:
                self.log.warning(
                    "route53: %s has no record set with SetIdentifier %s",
                    record.describe(),
                    ", ".join(repr(sid) for sid in after.missing),
                )
            if after.unmapped:
                self.log.warning(
                    "route53: %s has record sets mapped to no platform: %s",
                    record.describe(),
                    ", ".join(repr(sid) for sid in after.unmapped),
                )

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Poll every `interval` seconds until `stop` is set; failures are state, not exceptions."""
        while not stop.is_set():
            await self.poll_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def close(self) -> None:
        self.reader.close()
