"""A local stand-in for Route53's ListResourceRecordSets (REST/XML), for paths moto cannot serve."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

NS = "https://route53.amazonaws.com/doc/2013-04-01/"
_PATH = re.compile(r"^/2013-04-01/hostedzone/([^/]+)/rrset/?$")


def route53_escape(name: str) -> str:
    """Spell a name the way Route53 answers it: lower case, trailing dot, octal escapes."""
    out = []
    for char in name.lower():
        if char.isascii() and (char.isalnum() or char in "-_."):
            out.append(char)
        else:
            out.append(f"\\{ord(char):03o}")
    text = "".join(out)
    return text if text.endswith(".") else text + "."


def _sort_key(rrset: Mapping[str, Any]) -> tuple[str, str, str]:
    # Route53's documented order: the name with its labels reversed, trailing dot kept,
    # compared as ASCII; then type; identifiers last (their order is our own choice).
    labels = rrset["Name"].rstrip(".").split(".")
    return ".".join(reversed(labels)) + ".", rrset["Type"], rrset.get("SetIdentifier", "")


@dataclass
class Failure:
    status: int
    code: str
    message: str


THROTTLED = Failure(400, "Throttling", "Rate exceeded")


@dataclass
class StandIn:
    """Zones are lists of record sets shaped like boto3's ResourceRecordSet dicts."""

    zones: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    page_size: int = 300
    # False answers as moto 5.2 does: never a NextRecordIdentifier, even inside a weighted group
    next_identifier: bool = True
    delay: float = 0.0
    fail_next: list[Failure] = field(default_factory=list)
    fail_always: Failure | None = None
    requests: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _released: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = standin.answer(self.path)
                data = body.encode()
                # The client may have given up waiting already (timeout tests).
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Type", "text/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

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

    def stop(self) -> None:
        self._released.set()  # wake handlers that are sleeping on `delay`
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def answer(self, path: str) -> tuple[int, str]:
        parts = urlsplit(path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        with self._lock:
            self.requests.append({"path": parts.path, **query})
            failure = self.fail_next.pop(0) if self.fail_next else self.fail_always
        if self.delay:
            self._released.wait(self.delay)
        if failure is not None:
            return failure.status, _error(failure.code, failure.message)
        match = _PATH.match(parts.path)
        if match is None:
            return 404, _error("NotFound", f"no route for {parts.path}")
        zone = self.zones.get(match.group(1))
        if zone is None:
            return 404, _error(
                "NoSuchHostedZone", f"No hosted zone found with ID: {match.group(1)}"
            )
        return 200, self._page(zone, query)

    def _page(self, zone: list[dict[str, Any]], query: Mapping[str, str]) -> str:
        rrsets = sorted(({**r, "Name": route53_escape(r["Name"])} for r in zone), key=_sort_key)
        if "name" in query:
            start = _sort_key(
                {
                    "Name": route53_escape(query["name"]),
                    "Type": query.get("type", ""),
                    "SetIdentifier": query.get("identifier", ""),
                }
            )
            rrsets = [r for r in rrsets if _sort_key(r) >= start]
        size = int(query.get("maxitems", self.page_size))
        page, rest = rrsets[:size], rrsets[size:]
        xml = [
            f'<?xml version="1.0" encoding="UTF-8"?>\n<ListResourceRecordSetsResponse xmlns="{NS}">'
        ]
        xml.append("<ResourceRecordSets>")
        xml.extend(_rrset_xml(r) for r in page)
        xml.append("</ResourceRecordSets>")
        xml.append(f"<IsTruncated>{'true' if rest else 'false'}</IsTruncated>")
        if rest:
            following = rest[0]
            xml.append(f"<NextRecordName>{escape(following['Name'])}</NextRecordName>")
            xml.append(f"<NextRecordType>{following['Type']}</NextRecordType>")
            if "SetIdentifier" in following and self.next_identifier:
                sid = escape(following["SetIdentifier"])
                xml.append(f"<NextRecordIdentifier>{sid}</NextRecordIdentifier>")
        xml.append(f"<MaxItems>{size}</MaxItems>")
        xml.append("</ListResourceRecordSetsResponse>")
        return "".join(xml)


def _rrset_xml(rrset: Mapping[str, Any]) -> str:
    out = ["<ResourceRecordSet>", f"<Name>{escape(rrset['Name'])}</Name>"]
    out.append(f"<Type>{rrset['Type']}</Type>")
    if "SetIdentifier" in rrset:
        out.append(f"<SetIdentifier>{escape(rrset['SetIdentifier'])}</SetIdentifier>")
    if "Weight" in rrset:
        out.append(f"<Weight>{rrset['Weight']}</Weight>")
    if "AliasTarget" in rrset:
        alias = rrset["AliasTarget"]
        out.append(
            f"<AliasTarget><HostedZoneId>{alias['HostedZoneId']}</HostedZoneId>"
            f"<DNSName>{escape(alias['DNSName'])}</DNSName>"
            f"<EvaluateTargetHealth>{str(alias.get('EvaluateTargetHealth', False)).lower()}"
            "</EvaluateTargetHealth></AliasTarget>"
        )
    else:
        out.append(f"<TTL>{rrset.get('TTL', 300)}</TTL><ResourceRecords>")
        out.extend(
            f"<ResourceRecord><Value>{escape(v['Value'])}</Value></ResourceRecord>"
            for v in rrset.get("ResourceRecords", [])
        )
        out.append("</ResourceRecords>")
    if "HealthCheckId" in rrset:  # listed as Route53 lists it: a DELETE must repeat it
        out.append(f"<HealthCheckId>{escape(rrset['HealthCheckId'])}</HealthCheckId>")
    out.append("</ResourceRecordSet>")
    return "".join(out)


def _error(code: str, message: str) -> str:
    return (
        f'<?xml version="1.0"?>\n<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
        "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
    )


@contextmanager
def running(standin: StandIn) -> Iterator[StandIn]:
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


def cname(name: str, sid: str, weight: int, target: str, ttl: int = 60) -> dict[str, Any]:
    return {
        "Name": name,
        "Type": "CNAME",
        "SetIdentifier": sid,
        "Weight": weight,
        "TTL": ttl,
        "ResourceRecords": [{"Value": target}],
    }
