"""The vantages' reports in the HA table: every replica writes its own each round, and reads all.

One item per vantage in the migration's partition (`pk = migration#<name>`, as the lease):

    sk               attributes
    vantage#<name>   vantage, round, at (the writer's wall clock), writer (the process that
                     wrote it), report (zlib-compressed JSON of `VantageReport.to_dict`: a
                     thousand checks fit well inside DynamoDB's 400 KB item), expires

A vantage's item is its own: written unconditionally, by followers and the leader alike, and
replaced each round. `expires` is EXPIRES_AFTER ahead of the writer's clock: a retired
vantage's item stops counting (and stops holding shift steps) after that, while a vantage that
is merely silent drops out of the combination after two rounds (`combine`). Readers skip an
item past its `expires`, as DynamoDB's TTL deletes it only within days.

An item this replica cannot read whole (another version's, a corrupt or hostile one) is refused:
left out of the combination, counted (reason `corrupt`) and logged once with its sort key and
what is wrong with it, until it changes. Failed calls raise DynamoError and are counted by
reason; the caller decides what a missed round means.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from exporter.config import VANTAGE_RE
from exporter.errors import DynamoError
from exporter.judging.vantage import VantageReport
from exporter.store import dynamo
from exporter.store.lease import lease_pk

__all__ = [
    "EXPIRES_AFTER",
    "REPORT_ERRORS",
    "SK_PREFIX",
    "DynamoVantageBoard",
    "VantageBoard",
]

SK_PREFIX: Final = "vantage#"
# A report counts for this long after it was written (the writer's clock). Longer than the
# CutoverVantageDown rule's 2m, so that a vantage that stops reporting is still listed, as
# silent, when the alert fires, and holds steps until a person has looked; short enough that a
# vantage retired on purpose stops holding them on its own.
EXPIRES_AFTER: Final = 600.0
# DynamoDB refuses items over 400 KB: a compressed report above this is not written
MAX_ITEM_BYTES: Final = 350_000
# what a report may inflate to: a hostile item must not make a reader allocate gigabytes
MAX_REPORT_BYTES: Final = 8_000_000
# the reasons `errors` counts: the failed calls' (dynamo.REASONS), a report too big to write,
# and an item refused on reading
REPORT_ERRORS: Final = (*dynamo.REASONS, "too_large", "corrupt")


class VantageBoard(Protocol):
    """Where the vantages' reports meet. `errors` counts failures by reason (REPORT_ERRORS)."""

    @property
    def errors(self) -> Mapping[str, int]: ...

    async def publish(self, report: VantageReport) -> None:
        """Write this replica's report; raises DynamoError."""
        ...

    async def read(self, now: float) -> list[VantageReport]:
        """The latest report of every vantage that counts at `now` (wall clock), this
        replica's own included; raises DynamoError."""
        ...

    def close(self) -> None: ...


class DynamoVantageBoard:
    """The board in the HA table, for one replica (`writer`) of vantage `vantage`."""

    def __init__(
        self,
        *,
        table: str,
        migration: str,
        vantage: str,
        writer: str,
        calls: dynamo.Calls,
        expires_after: float = EXPIRES_AFTER,
        logger: logging.Logger | None = None,
    ) -> None:
        self.table = table
        self.pk = lease_pk(migration)
        self.vantage = vantage
        self.writer = writer
        self.calls = calls
        self.expires_after = expires_after
        self.log = logger or logging.getLogger("cutover.ha")
        self.errors: dict[str, int] = dict.fromkeys(REPORT_ERRORS, 0)
        self._refused: dict[str, str] = {}  # sk -> why, logged once until it changes
        self._twin: str | None = None  # another writer of our vantage, logged once
        self._published = False

    @property
    def where(self) -> str:
        return f"table {self.table} ({self.pk})"

    async def publish(self, report: VantageReport) -> None:
        if report.vantage != self.vantage:
            raise ValueError(f"a report of {report.vantage} on {self.vantage}'s board")
        # encoded and compressed in the worker too: thousands of checks take milliseconds
        await self._call(lambda client: self._put(client, report))
        self._published = True  # from now on, our own item is the one we wrote

    async def read(self, now: float) -> list[VantageReport]:
        # inflated and parsed in the worker: a hostile item must not hold the event loop
        reports, refused = await self._call(lambda client: self._read(client, now))
        for sk, why in refused.items():
            self.errors["corrupt"] += 1
            if self._refused.get(sk) != why:
                self.log.warning(
                    "ha: refused the vantage report item %s in %s: %s; that vantage counts as "
                    "not reporting",
                    sk,
                    self.where,
                    why,
                )
        for sk in self._refused.keys() - refused.keys():
            self.log.info("ha: the vantage report item %s in %s is readable again", sk, self.where)
        self._refused = refused
        twins = {r.writer for r in reports if r.report.vantage == self.vantage} - {self.writer}
        if self._published and twins and self._twin not in twins:
            self._twin = min(twins)
            self.log.warning(
                "ha: another replica (%s) reports as vantage %s in %s: each replica needs a "
                "vantage of its own (ha.vantage), or they overwrite each other's reports",
                self._twin,
                self.vantage,
                self.where,
            )
        return [r.report for r in reports]

    def close(self) -> None:
        self.calls.close()

    # -- the table (in a worker thread)

    async def _call(self, fn: Any) -> Any:
        try:
            return await self.calls(fn)
        except DynamoError as exc:
            self.errors[exc.reason] = self.errors.get(exc.reason, 0) + 1
            raise

    def _put(self, client: Any, report: VantageReport) -> None:
        body = zlib.compress(json.dumps(report.to_dict(), allow_nan=False).encode(), 6)
        if len(body) > MAX_ITEM_BYTES:
            raise DynamoError(
                "too_large",
                f"the report of round {report.round} is {len(body)} bytes compressed, more than "
                f"the {MAX_ITEM_BYTES} an item may hold: fewer checks per replica",
            )
        item = {
            "pk": {"S": self.pk},
            "sk": {"S": SK_PREFIX + report.vantage},
            "vantage": {"S": report.vantage},
            "round": {"N": str(report.round)},
            "at": {"N": repr(report.at)},
            "writer": {"S": self.writer},
            "report": {"B": body},
            dynamo.TTL_ATTRIBUTE: {"N": str(math.ceil(report.at + self.expires_after))},
        }
        client.put_item(TableName=self.table, Item=item)

    def _read(self, client: Any, now: float) -> tuple[list[_Read], dict[str, str]]:
        reports: list[_Read] = []
        refused: dict[str, str] = {}
        for item in self._query(client):
            sk = _text(item, "sk")
            try:
                report = self._report_of(sk, item, now)
            except (KeyError, TypeError, ValueError, zlib.error, RecursionError) as exc:
                refused[sk] = _why(exc)
                continue
            if report is not None:
                reports.append(_Read(report, _text(item, "writer")))
        return reports, refused

    def _query(self, client: Any) -> list[dict[str, Any]]:
        return dynamo.query_partition(client, self.table, self.pk, SK_PREFIX)

    def _report_of(self, sk: str, item: Mapping[str, Any], now: float) -> VantageReport | None:
        """The item's report; None when it expired. Raises for anything not wholly readable."""
        name = sk.removeprefix(SK_PREFIX)
        if not VANTAGE_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a vantage name")
        expires = _number(item, dynamo.TTL_ATTRIBUTE)
        if expires <= now:
            return None
        value = item.get("report")
        raw = value.get("B") if isinstance(value, Mapping) else None
        if not isinstance(raw, bytes):
            raise ValueError("report: missing, or not a binary attribute")
        inflate = zlib.decompressobj()
        text = inflate.decompress(raw, MAX_REPORT_BYTES)
        if inflate.unconsumed_tail:
            raise ValueError(f"report: inflates to more than {MAX_REPORT_BYTES} bytes")
        if not inflate.eof:
            raise ValueError("report: truncated")
        report = VantageReport.from_dict(json.loads(text))
        if report.vantage != name:
            raise ValueError(f"report: vantage {report.vantage!r} in {name!r}'s item")
        if report.at > now + self.expires_after:
            raise ValueError(f"report: written {report.at - now:.0f}s in the future")
        return report


@dataclass(frozen=True, slots=True)
class _Read:
    report: VantageReport
    writer: str


def _text(item: Mapping[str, Any], name: str) -> str:
    value = item.get(name, {})
    text = value.get("S") if isinstance(value, Mapping) else None
    return text if isinstance(text, str) else ""


def _number(item: Mapping[str, Any], name: str) -> float:
    value = float(item[name]["N"])
    if not math.isfinite(value):
        raise ValueError(f"{name}: {value}")
    return value


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"no attribute {exc}"
    if isinstance(exc, json.JSONDecodeError):
        return f"report: not JSON ({exc.msg} at {exc.pos})"
    return str(exc) or type(exc).__name__
