"""The Route53 stand-in, extended with ChangeResourceRecordSets and GetChange (REST/XML).

What moto cannot show: PENDING changes, PriorRequestNotComplete while a change to the zone is
still PENDING (as Route53 answers it), throttling of writes, and Route53's checks of a change
batch, which the compare-and-swap writes (issue 14) rest on. Reads are the base stand-in's.

A batch is checked and applied as Route53 documents it: change by change, in order, against a
working copy of the zone that replaces the zone only when every change passed, so a refused
batch leaves nothing behind. A DELETE must give the record set exactly as it is (name, type,
set identifier, weight, TTL, the values in any order, alias target, health check), a CREATE
must not find one under its name, type and set identifier; either failure refuses the whole
batch with HTTP 400 `InvalidChangeBatch` and Route53's own wording ("Tried to delete resource
record set [...] but it was not found" / "... but the values provided do not match the current
values", "Tried to create resource record set [...] but it already exists"). moto 5.2 deletes
by name, type and identifier alone, so a stale DELETE passes there.

Why our own and not `ministack` (PyPI), which has refused stale DELETEs since its PR #1308: this
one runs inside the test process on 127.0.0.1 with no extra dependency or server process, it
already had the PENDING and throttling knobs the writer's tests need, and `hold_next_change`
can stop a submit between a writer's read and Route53's check of its batch, which is how the
tests make a writer stale on purpose. ministack was not run here.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

from tests.route53_standin import NS, Failure, StandIn, _error, route53_escape

_CHANGE_PATH = re.compile(r"^/2013-04-01/hostedzone/([^/]+)/rrset/?$")
_GET_CHANGE_PATH = re.compile(r"^/2013-04-01/change/([^/?]+)")
# an endpoint URL ending in /as/<caller> tells the writers apart (the HA tests' replicas)
_CALLER_PREFIX = re.compile(r"^/as/([A-Za-z0-9_.-]+)(/.*)$")
_Q = f"{{{NS}}}"


@dataclass
class Gate:
    """Holds one change request before the stand-in looks at it, until `release` is set: a
    writer that read the zone, then paused (GC, SIGSTOP, a slow network) before its batch
    arrived. `arrived` is set once the request is held."""

    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    timeout: float = 10.0  # released by itself after this long (keep it under the client's)


PRIOR_REQUEST = Failure(
    400,
    "PriorRequestNotComplete",
    "The request was rejected because Route 53 was still processing a prior request.",
)


@dataclass
class PendingChange:
    id: str
    zone: str
    submitted: float
    pending_polls: int
    pending_seconds: float
    polls: int = 0
    insync_at: float | None = None

    def status(self, now: float) -> str:
        if self.insync_at is not None:
            return "INSYNC"
        if self.polls >= self.pending_polls and now - self.submitted >= self.pending_seconds:
            self.insync_at = now
            return "INSYNC"
        return "PENDING"


@dataclass
class WriteStandIn(StandIn):
    """`calls` lists every request in order: ("list", zone), ("change", zone, id or error code),
    ("get_change", id, status). `batches` holds each accepted ChangeBatch, parsed; `refused`
    each batch answered InvalidChangeBatch, with Route53's message under "error". Both record
    when the stand-in decided ("at", time.monotonic()) and who sent it ("caller": the name in an
    endpoint URL ending in `/as/<name>`, else None)."""

    pending_polls: int = 0  # each change answers PENDING to this many GetChange calls
    pending_seconds: float = 0.0  # and stays PENDING at least this long
    change_fail_next: list[Failure] = field(default_factory=list)
    get_change_fail_next: list[Failure] = field(default_factory=list)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    hold_next_change: Gate | None = None
    changes: dict[str, PendingChange] = field(default_factory=dict)
    overlaps: int = 0  # submits that came while a change to the same zone was PENDING
    _seq: int = 0
    _wlock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Type", "text/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def do_GET(self) -> None:
                _, path = _caller(self.path)
                self._send(*standin.answer(path))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                caller, path = _caller(self.path)
                self._send(*standin.answer_post(path, self.rfile.read(length), caller))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._released.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def answer(self, path: str) -> tuple[int, str]:
        match = _GET_CHANGE_PATH.match(path)
        if match is None:
            zone = _CHANGE_PATH.match(path.split("?", 1)[0])
            with self._wlock:
                self.calls.append(("list", zone.group(1) if zone else path))
            return super().answer(path)
        change_id = match.group(1)
        with self._wlock:
            failure = self.get_change_fail_next.pop(0) if self.get_change_fail_next else None
            change = self.changes.get(change_id)
            if failure is not None:
                self.calls.append(("get_change", change_id, failure.code))
                return failure.status, _error(failure.code, failure.message)
            if change is None:
                self.calls.append(("get_change", change_id, "NoSuchChange"))
                return 404, _error(
                    "NoSuchChange",
                    f"A change with the specified change ID does not exist: {change_id}",
                )
            status = change.status(time.monotonic())
            change.polls += 1
            self.calls.append(("get_change", change_id, status))
            return 200, _change_info("GetChangeResponse", change, status)

    def answer_post(self, path: str, body: bytes, caller: str | None = None) -> tuple[int, str]:
        match = _CHANGE_PATH.match(path)
        if match is None:
            return 404, _error("NotFound", f"no route for POST {path}")
        zone_id = match.group(1)
        with self._wlock:
            gate, self.hold_next_change = self.hold_next_change, None
        if gate is not None:
            gate.arrived.set()
            gate.release.wait(gate.timeout)
        now = time.monotonic()
        with self._wlock:
            failure = self.change_fail_next.pop(0) if self.change_fail_next else None
            busy = any(
                c.zone == zone_id and c.status(now) == "PENDING" for c in self.changes.values()
            )
            if failure is None and busy:
                self.overlaps += 1
                failure = PRIOR_REQUEST
            if failure is not None:
                self.calls.append(("change", zone_id, failure.code))
                return failure.status, _error(failure.code, failure.message)
            zone = self.zones.get(zone_id)
            if zone is None:
                self.calls.append(("change", zone_id, "NoSuchHostedZone"))
                return 404, _error("NoSuchHostedZone", f"No hosted zone found with ID: {zone_id}")
            batch = _parse_batch(body)
            applied, problems = _apply_batch(zone, batch["Changes"])
            if problems:
                message = "[" + ", ".join(problems) + "]"
                self.refused.append(
                    {"zone": zone_id, "error": message, "at": now, "caller": caller, **batch}
                )
                self.calls.append(("change", zone_id, "InvalidChangeBatch"))
                return 400, _error("InvalidChangeBatch", message)
            # a new list, not an edit: a listing running meanwhile sees before or after, whole
            self.zones[zone_id] = applied
            self._seq += 1
            change_id = f"C{self._seq:04d}STANDIN"
            pending = PendingChange(
                change_id, zone_id, now, self.pending_polls, self.pending_seconds
            )
            self.changes[change_id] = pending
            self.batches.append({"zone": zone_id, "at": now, "caller": caller, **batch})
            self.calls.append(("change", zone_id, change_id))
            status = pending.status(now)
            return 200, _change_info("ChangeResourceRecordSetsResponse", pending, status)

    def record_sets(self, zone: str, name: str) -> dict[str, dict[str, Any]]:
        """The zone's record sets at `name`, by SetIdentifier."""
        with self._wlock:
            return {
                r.get("SetIdentifier", ""): dict(r)
                for r in self.zones[zone]
                if route53_escape(r["Name"]) == route53_escape(name)
            }


def _caller(path: str) -> tuple[str | None, str]:
    match = _CALLER_PREFIX.match(path)
    return (match.group(1), match.group(2)) if match else (None, path)


def _change_info(root: str, change: PendingChange, status: str) -> str:
    submitted = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NS}"><ChangeInfo>'
        f"<Id>/change/{escape(change.id)}</Id><Status>{status}</Status>"
        f"<SubmittedAt>{submitted}</SubmittedAt></ChangeInfo></{root}>"
    )


def _text(node: ET.Element, tag: str) -> str | None:
    child = node.find(_Q + tag)
    return None if child is None else (child.text or "")


def _parse_batch(body: bytes) -> dict[str, Any]:
    root = ET.fromstring(body)
    batch_node = root.find(_Q + "ChangeBatch")
    assert batch_node is not None
    batch: dict[str, Any] = {"Changes": []}
    comment = _text(batch_node, "Comment")
    if comment is not None:
        batch["Comment"] = comment
    for change in batch_node.iter(_Q + "Change"):
        node = change.find(_Q + "ResourceRecordSet")
        assert node is not None
        rrset: dict[str, Any] = {"Name": _text(node, "Name"), "Type": _text(node, "Type")}
        for tag in ("SetIdentifier", "HealthCheckId"):
            value = _text(node, tag)
            if value is not None:
                rrset[tag] = value
        for tag in ("Weight", "TTL"):
            value = _text(node, tag)
            if value is not None:
                rrset[tag] = int(value)
        values = node.find(_Q + "ResourceRecords")
        if values is not None:
            rrset["ResourceRecords"] = [
                {"Value": _text(v, "Value")} for v in values.iter(_Q + "ResourceRecord")
            ]
        alias = node.find(_Q + "AliasTarget")
        if alias is not None:
            rrset["AliasTarget"] = {
                "HostedZoneId": _text(alias, "HostedZoneId"),
                "DNSName": _text(alias, "DNSName"),
                "EvaluateTargetHealth": _text(alias, "EvaluateTargetHealth") == "true",
            }
        batch["Changes"].append({"Action": _text(change, "Action"), "ResourceRecordSet": rrset})
    return batch


def _key(rrset: dict[str, Any]) -> tuple[str, str, str]:
    return route53_escape(rrset["Name"]), rrset["Type"], rrset.get("SetIdentifier", "")


def _exact(rrset: dict[str, Any]) -> tuple[Any, ...]:
    """Everything a DELETE must repeat, spelled one way: Route53 compares values as a set and
    names without regard to case or the trailing dot; an alias has no TTL of its own."""
    alias = rrset.get("AliasTarget")
    target = None
    if alias is not None:
        target = (
            alias["HostedZoneId"],
            route53_escape(alias["DNSName"]),
            bool(alias.get("EvaluateTargetHealth", False)),
        )
    values = sorted(v["Value"] for v in rrset.get("ResourceRecords", []))
    return (
        *_key(rrset),
        rrset.get("Weight"),
        None if alias is not None else rrset.get("TTL"),
        tuple(values),
        target,
        rrset.get("HealthCheckId"),
    )


def _described(rrset: dict[str, Any]) -> str:
    name, rtype, sid = _key(rrset)
    text = f"[name='{name}', type='{rtype}'"
    return text + (f", set-identifier='{sid}']" if sid else "]")


def _apply_batch(
    zone: list[dict[str, Any]], changes: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The zone after `changes`, applied in order to a copy, and Route53's messages for the
    changes it would refuse (any one of them refuses the batch)."""
    work = list(zone)
    problems: list[str] = []
    for change in changes:
        action, rrset = change["Action"], change["ResourceRecordSet"]
        at = next((i for i, r in enumerate(work) if _key(r) == _key(rrset)), None)
        if action == "DELETE":
            if at is None:
                problems.append(
                    f"Tried to delete resource record set {_described(rrset)} but it was not found"
                )
            elif _exact(work[at]) != _exact(rrset):
                problems.append(
                    f"Tried to delete resource record set {_described(rrset)} but the values "
                    "provided do not match the current values"
                )
            else:
                del work[at]
        elif action == "CREATE":
            if at is not None:
                problems.append(
                    f"Tried to create resource record set {_described(rrset)} but it already exists"
                )
            else:
                work.append(rrset)
        elif at is None:  # UPSERT
            work.append(rrset)
        else:
            work[at] = rrset
    return work, problems
