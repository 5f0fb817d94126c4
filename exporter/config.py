"""YAML -> validated, frozen settings; every problem reported with its location."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, cast
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from exporter.errors import ConfigError
from exporter.probing.probe import ProbeSpec, compile_body_regex
from exporter.regex import compile_linear
from exporter.route53.read import normalize_name

NAME_RE = re.compile(r"^[a-z0-9_-]+$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ENV_RE = re.compile(r"\$\{([^}]*)\}")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_DEFAULT_TIMEOUT = 5.0  # a check's, or its interval when shorter
_M = TypeVar("_M", bound=BaseModel)


def parse_duration(value: object) -> float:
    """`250ms`, `10s`, `1m30s`, `1h` -> seconds. Bare numbers are refused: a unit is required."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a duration such as '10s' or '250ms', got {value!r}")
    text = value.strip()
    pos = 0
    total = 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"invalid duration {value!r}: use a number and a unit (ms, s, m, h), e.g. '10s'"
        )
    return total


def format_duration(seconds: float) -> str:
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds / 3600:g}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"invalid name {value!r}: use lowercase letters, digits, '_' and '-'")
    return value


def _http_url(value: str, *, secret: bool = False) -> str:
    shown = "" if secret else f" {value!r}"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid URL{shown}: expected http:// or https:// and a host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"invalid URL{shown}: {exc}") from None
    if not secret and (parts.username is not None or parts.password is not None):
        # a URL is shown on pages and in logs: credentials belong in headers
        raise ValueError("invalid URL: credentials in a URL are not allowed, use headers")
    if not secret and (parts.query or parts.fragment):
        raise ValueError(f"invalid URL{shown}: a base URL takes no query or fragment")
    return value if secret else value.rstrip("/")


def _listen(value: str) -> str:
    parse_listen(value)
    return value


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {value!r}: expected HOST:PORT, e.g. 0.0.0.0:9877")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the documented default


def _headers(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        if not _HEADER_NAME_RE.match(key):
            raise ValueError(f"invalid header name {key!r}")
    for key, item in value.items():
        if "\r" in item or "\n" in item:
            raise ValueError(f"header {key!r}: value must not contain line breaks")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
Name = Annotated[str, AfterValidator(_name)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Headers = Annotated[dict[str, str], AfterValidator(_headers)]
# the webhook URL is a secret: its error must not repeat it
SecretHttpUrl = Annotated[str, AfterValidator(lambda v: _http_url(v, secret=True))]
Ratio = Annotated[float, Field(ge=0, le=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    def model_post_init(self, context: Any, /) -> None:
        # Each model keeps the set of fields its document gave (pydantic's fields_set): 728
        # bytes for five names, per check. The models are frozen, so models given the same
        # fields can share one set: a 5000-check file holds a handful instead of 10 000.
        given = self.__pydantic_fields_set__
        object.__setattr__(
            self, "__pydantic_fields_set__", _FIELDS_SETS.setdefault(frozenset(given), given)
        )


# fields_set shared by frozen config models (see _Model.model_post_init); as many as the
# distinct combinations of keys written in configurations, which people write by hand
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


class Platform(_Model):
    role: Literal["baseline", "candidate"]
    base_url: HttpUrl
    host_header: str | None = None
    tls_skip_verify: bool = False
    headers: Headers = Field(default_factory=dict)

    @field_validator("host_header")
    @classmethod
    def _host_header(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in " /\r\n")):
            raise ValueError(f"invalid host name {value!r}")
        return value


class Expect(_Model):
    status: tuple[Annotated[int, Field(ge=100, le=599)], ...] | None = None
    body_regex: str | None = None

    @field_validator("status")
    @classmethod
    def _status(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and not value:
            raise ValueError("must list at least one status code (omit it for any 2xx)")
        return value

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            compile_body_regex(value)  # the prober's own compile: what loads is what probes run
        return value


# what a check without `expect` expects: one frozen instance for all of them
_ANY_2XX = Expect()


class Check(_Model):
    name: Name
    path: str
    method: Annotated[str, Field(pattern=r"^[A-Z]+$")] = "GET"
    headers: Headers = Field(default_factory=dict)
    body: str | None = None
    interval: Duration = 15.0
    timeout: Duration = _DEFAULT_TIMEOUT
    record: str | None = None
    expect: Expect = Field(default_factory=lambda: _ANY_2XX)

    @model_validator(mode="before")
    @classmethod
    def _default_timeout(cls, data: Any) -> Any:
        # The default timeout is 5s, or the interval when shorter (Prometheus' rule for
        # scrape_timeout against scrape_interval): `interval: 2s` alone must load. The interval's
        # own text is reused, not a float formatted back, so the two compare equal exactly.
        if not isinstance(data, dict) or "timeout" in data:
            return data
        interval = data.get("interval", "15s")
        try:
            seconds = parse_duration(interval)
        except ValueError:
            seconds = 0.0
        if seconds <= 0:
            return data  # the interval's own error is reported; the field default stands
        short = seconds < _DEFAULT_TIMEOUT
        return {**data, "timeout": interval if short else format_duration(_DEFAULT_TIMEOUT)}

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in " \r\n"):
            raise ValueError(f"invalid path {value!r}: must start with '/' and contain no spaces")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float, info: ValidationInfo) -> float:
        interval = info.data.get("interval")
        if interval is not None and value > interval:
            raise ValueError(
                f"{format_duration(value)} must not exceed the interval ({format_duration(interval)})"
            )
        return value


class Route53Record(_Model):
    hosted_zone_id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    type: Annotated[str, Field(pattern=r"^[A-Z]+$")] | None = None
    set_identifiers: dict[str, str]

    @property
    def key(self) -> str:
        return normalize_name(self.name)


class Route53(_Model):
    interval: Duration = 60.0
    timeout: Duration = 10.0
    endpoint_url: HttpUrl | None = None
    records: tuple[Route53Record, ...]

    @field_validator("records")
    @classmethod
    def _some_records(cls, value: tuple[Route53Record, ...]) -> tuple[Route53Record, ...]:
        if not value:
            raise ValueError("at least one record is required")
        return value


class LatencyJudge(_Model):
    max_ratio: Annotated[float, Field(ge=1.0)] = 1.5
    min_increase: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = 0.025


class ErrorsJudge(_Model):
    max_increase: Ratio = 0.02


class Judge(_Model):
    window: Duration = 300.0
    min_samples: Annotated[int, Field(ge=2)] = 10
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.99
    latency: LatencyJudge = Field(default_factory=LatencyJudge)
    errors: ErrorsJudge = Field(default_factory=ErrorsJudge)
    down_after: Annotated[int, Field(ge=1)] = 3


class Slack(_Model):
    token: str | None = Field(default=None, repr=False)
    webhook_url: SecretHttpUrl | None = Field(default=None, repr=False)
    channel: str | None = None
    api_url: HttpUrl | None = None


class Alerting(_Model):
    for_: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = Field(
        default=60.0, alias="for"
    )
    resolve_after: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = 120.0
    repeat_interval: Duration = 3600.0
    dashboard_url: HttpUrl | None = None
    slack: Slack | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Shift(_Model):
    enabled: bool = False
    record: str
    steps: Annotated[tuple[Annotated[float, Field(gt=0, le=100)], ...], Field(min_length=1)] = (
        10,
        25,
        50,
        100,
    )
    hold: Duration = 1800.0
    ttl_margin: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = 5.0
    # superseded by readiness.min_probes / min_requests, and their value where readiness sets none
    min_samples: Annotated[int, Field(ge=1)] = 50
    min_requests: Annotated[int, Field(ge=0)] = 0
    rollback_to: Annotated[float, Field(ge=0, le=100)] = 0
    mode: Literal["auto", "manual"] = "auto"

    @field_validator("steps")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("steps must increase strictly, e.g. [10, 25, 50, 100]")
        return value


class ReadinessConfig(_Model):
    """When a Route53 step has shown enough to take the next one (GO): all optional."""

    hold: Duration | None = None  # how long each step must last; default: shift.hold, else 30m
    min_probes: Annotated[int, Field(ge=1)] = 50  # per side and check over the step
    min_requests: Annotated[int, Field(ge=1)] = 500  # per side and route group, with traffic
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95  # of the non-inferiority bounds


RESERVED_ROUTES = ("all", "other")  # a platform as a whole; paths no group matches
# a drain token is a password in a URL Heroku stores: long and random, never a word
MIN_TOKEN_LENGTH = 16


def _linear_regex(value: str) -> str:
    compile_linear(value)  # ValueError says why RE2 cannot run it
    return value


class RouteGroup(_Model):
    """Requests whose path (query string left out) matches `path_regex` (RE2) form a group."""

    name: Name
    path_regex: Annotated[str, AfterValidator(_linear_regex)]

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_ROUTES:
            raise ValueError(f"{value!r} is the name of a group cutover makes itself")
        return value


class HerokuDrain(_Model):
    """A Heroku HTTPS log drain POSTing to /api/v1/drains/heroku with this basic-auth password."""

    token: str = Field(repr=False)
    hosts: tuple[Annotated[str, Field(min_length=1)], ...] | None = None  # keep only these host=

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        # the value is a secret: its length is all the message may say of it
        if len(value) < MIN_TOKEN_LENGTH or any(c in value for c in ":@/ \t\r\n"):
            raise ValueError(
                f"must be at least {MIN_TOKEN_LENGTH} characters without ':', '@', '/' or "
                "spaces (it goes into the drain's URL), e.g. from `openssl rand -hex 16`"
            )
        return value


PrometheusPreset = Literal["ingress-nginx", "http-requests", "custom"]
# one PromQL label matcher: name, operator, a quoted (or backquoted raw) string
_MATCHER = r"""[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=~|!~|!=|=)\s*(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)"""
_SELECTOR_RE = re.compile(rf"\s*(?:{_MATCHER}(?:\s*,\s*{_MATCHER})*\s*,?\s*)?")
# labels the queries group by themselves: a route label of that name would collide
_QUERY_LABELS = ("le", "code_class", "status", "code")
RANGE_PLACEHOLDERS = ("$__interval", "$interval")  # custom queries: replaced by the range


def _selector(value: str) -> str:
    # inserted verbatim between the preset's braces: checked here, so that a stray brace or
    # quote is a config error with its location, not a PromQL error at every poll
    if not _SELECTOR_RE.fullmatch(value):
        raise ValueError(
            f"invalid selector {value!r}: expected label matchers separated by commas, without "
            """braces, e.g. 'host="api.example.com", namespace=~"prod-.*"'"""
        )
    return value


class PrometheusTraffic(_Model):
    """Request counts and latency buckets from Prometheus' HTTP API, every `interval`."""

    url: HttpUrl
    interval: Duration = 15.0
    # the range of increase(): at least two scrape intervals (four are safer), or the queries
    # find fewer than two samples and return nothing; default max(interval, 1m)
    range: Duration | None = None
    timeout: Duration = 10.0
    preset: PrometheusPreset
    # label matchers for the preset's metrics, e.g. host="api.example.com"
    selector: Annotated[str, AfterValidator(_selector)] = ""
    route_label: Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")] | None = None
    requests_query: str | None = None  # custom: counts by code_class (or status, code) [and route]
    latency_buckets_query: str | None = None  # custom: bucket counts by le [and route]
    headers: Headers = Field(default_factory=dict)  # e.g. Authorization; values are secrets

    @model_validator(mode="after")
    def _queries(self) -> PrometheusTraffic:
        queries = {
            "requests_query": self.requests_query,
            "latency_buckets_query": self.latency_buckets_query,
        }
        if self.preset == "custom":
            missing = [k for k, q in queries.items() if q is None]
            if missing:
                raise ValueError(f"preset custom needs {' and '.join(missing)}")
            if self.selector:
                raise ValueError(
                    "selector is for the presets: a custom query carries its own matchers"
                )
            for key, query in queries.items():
                if query is not None and not any(p in query for p in RANGE_PLACEHOLDERS):
                    # the source scales counts by the span they cover: it must know the range
                    raise ValueError(
                        f"{key} must take its range from $interval, e.g. "
                        "sum by (code) (increase(http_requests_total[$interval]))"
                    )
        else:
            given = [k for k, q in queries.items() if q is not None]
            if given:
                raise ValueError(f"{' and '.join(given)}: only with preset custom")
        if self.route_label in _QUERY_LABELS:
            raise ValueError(
                f"route_label {self.route_label!r} is a label the queries group by already"
            )
        if self.timeout > self.interval:
            raise ValueError(
                f"timeout {format_duration(self.timeout)} must not exceed the interval "
                f"({format_duration(self.interval)})"
            )
        if self.range is not None and self.range < self.interval:
            raise ValueError(
                f"range {format_duration(self.range)} must be at least the interval "
                f"({format_duration(self.interval)}): requests in between would not be counted"
            )
        return self

    @property
    def query_range(self) -> float:
        """The range of increase() in the queries: `range`, else max(interval, 1m)."""
        return self.range if self.range is not None else max(self.interval, 60.0)


class CloudWatchAlb(_Model):
    """An application load balancer's metrics from CloudWatch (GetMetricData, 60 s periods)."""

    load_balancer: Annotated[str, Field(pattern=r"^app/[^/\s]+/[0-9a-zA-Z]+$")]
    target_group: Annotated[str, Field(pattern=r"^targetgroup/[^/\s]+/[0-9a-zA-Z]+$")] | None = None
    region: str | None = None
    endpoint_url: HttpUrl | None = None
    interval: Duration = 60.0
    timeout: Duration = 10.0


SOURCE_KINDS = ("heroku_drain", "prometheus", "cloudwatch_alb")


class TrafficSource(_Model):
    """One source of one platform's real traffic: exactly one of the kinds."""

    platform: Name
    name: Name | None = None  # the `source` label; default: the kind (kind-2, ... for more)
    heroku_drain: HerokuDrain | None = None
    prometheus: PrometheusTraffic | None = None
    cloudwatch_alb: CloudWatchAlb | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TrafficSource:
        given = [k for k in SOURCE_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"set exactly one of {', '.join(SOURCE_KINDS)}"
                + (f" (found {', '.join(given)})" if given else "")
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in SOURCE_KINDS if getattr(self, k) is not None)


class Traffic(_Model):
    """Real user traffic of both platforms, judged side by side like the probes."""

    window: Duration | None = None  # default: judge.window
    min_requests: Annotated[int, Field(ge=1)] = 200  # per side and route group, for a verdict
    record: str | None = None  # the Route53 record the traffic is split by (default: the only one)
    routes: tuple[RouteGroup, ...] = ()
    sources: tuple[TrafficSource, ...]
    # the measured split may stray this far from the weights once the record's TTL and
    # split_margin have passed since they changed (resolvers and clients cache past the TTL)
    split_tolerance: Annotated[float, Field(gt=0, le=1)] = 0.1
    split_margin: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = 300.0

    @field_validator("sources")
    @classmethod
    def _some_sources(cls, value: tuple[TrafficSource, ...]) -> tuple[TrafficSource, ...]:
        if not value:
            raise ValueError("at least one source per platform is required")
        return value

    def named_sources(self) -> list[tuple[str, TrafficSource]]:
        """Each source with its `source` label: its name, else its kind (kind-2, kind-3, ...)."""
        out: list[tuple[str, TrafficSource]] = []
        taken = {s.name for s in self.sources if s.name is not None}
        counts: dict[str, int] = {}
        for s in self.sources:
            if s.name is not None:
                out.append((s.name, s))
                continue
            counts[s.kind] = counts.get(s.kind, 0) + 1
            name = s.kind if counts[s.kind] == 1 else f"{s.kind}-{counts[s.kind]}"
            while name in taken:
                counts[s.kind] += 1
                name = f"{s.kind}-{counts[s.kind]}"
            taken.add(name)
            out.append((name, s))
        return out


# a vantage's name: also what a replica accepts from another's report in the HA table
VANTAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_MIGRATION_RE = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9_.*:-]{0,199}$")
MIN_LEASE = 2.0  # below, a renew every third of the lease is a round trip or two


def _vantage(value: str) -> str:
    if not VANTAGE_RE.match(value):
        raise ValueError(
            f"invalid vantage {value!r}: up to 63 letters, digits, '_', '.' and '-', e.g. a "
            "region such as eu-west-1"
        )
    return value


def _migration(value: str) -> str:
    if not _MIGRATION_RE.match(value):
        raise ValueError(
            f"invalid migration name {value!r}: letters, digits, '_', '.', '*', ':' and '-', "
            "e.g. the migrated DNS name"
        )
    return value


def _lease(value: float) -> float:
    if value < MIN_LEASE:
        raise ValueError(f"{format_duration(value)} is too short: at least 2s")
    return value


class HA(_Model):
    """Several replicas of one migration coordinated through a DynamoDB table (issue 14).

    The replicas share one lease item, keyed by the migration's name (`migration`, by default
    the shift's record or the only Route53 record): every replica of a migration must resolve
    the same name, and different migrations may share a table.
    """

    vantage: Annotated[str, AfterValidator(_vantage)] = Field(default_factory=socket.gethostname)
    table: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{3,255}$")] = "cutover-ha"
    region: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")] | None = None  # None: the AWS chain's
    endpoint_url: HttpUrl | None = None
    lease: Annotated[float, BeforeValidator(parse_duration), AfterValidator(_lease)] = 15.0
    confirm: Annotated[int, Field(ge=1)] = 2  # vantages that must see a regression
    quorum: Annotated[int, Field(ge=1)] = 2  # vantages that must agree before a step advances
    migration: Annotated[str, AfterValidator(_migration)] | None = None


class Config(_Model):
    """The whole validated configuration. Frozen: a reload builds a new one."""

    listen: Annotated[str, AfterValidator(_listen)] | None = None
    state_dir: str | None = None
    platforms: dict[Name, Platform]
    checks: tuple[Check, ...]
    route53: Route53 | None = None
    judge: Judge = Field(default_factory=Judge)
    alerting: Alerting | None = None
    shift: Shift | None = None
    traffic: Traffic | None = None
    readiness: ReadinessConfig = Field(default_factory=ReadinessConfig)
    ha: HA | None = None

    @field_validator("checks")
    @classmethod
    def _some_checks(cls, value: tuple[Check, ...]) -> tuple[Check, ...]:
        if not value:
            raise ValueError("at least one check is required")
        return value

    @cached_property
    def _checks_by_name(self) -> dict[str, Check]:
        return {c.name: c for c in self.checks}

    def check(self, name: str) -> Check | None:
        """The check of that name: a lookup, not a scan (pages and scrapes ask once per check)."""
        return self._checks_by_name.get(name)

    @property
    def baseline(self) -> str:
        return next(n for n, p in self.platforms.items() if p.role == "baseline")

    @property
    def candidate(self) -> str:
        return next(n for n, p in self.platforms.items() if p.role == "candidate")

    def traffic_record(self) -> Route53Record | None:
        """The Route53 record real traffic is split by: traffic.record, else the only record."""
        if self.traffic is None or self.route53 is None:
            return None
        return _record_of(self.traffic.record, self.route53.records)

    @property
    def readiness_hold(self) -> float:
        """Seconds a step must last before GO: readiness.hold, else shift.hold, else 30m."""
        if self.readiness.hold is not None:
            return self.readiness.hold
        return self.shift.hold if self.shift is not None else 1800.0

    @property
    def readiness_min_probes(self) -> int:
        """readiness.min_probes, else the older shift.min_samples where it is set, else 50."""
        return self._readiness_minimum("min_probes", "min_samples")

    @property
    def readiness_min_requests(self) -> int:
        """readiness.min_requests, else the older shift.min_requests where it is set, else 500."""
        return self._readiness_minimum("min_requests", "min_requests")

    def _readiness_minimum(self, name: str, shift_name: str) -> int:
        value: int = getattr(self.readiness, name)
        if name in self.readiness.model_fields_set or self.shift is None:
            return value
        if shift_name in self.shift.model_fields_set:
            value = getattr(self.shift, shift_name)
        return value

    @property
    def ha_migration(self) -> str | None:
        """The name of the migration's lease item (pk `migration#<name>`): ha.migration, else
        the shift's record, else the only Route53 record (a config without either is refused).
        None without an ha section."""
        if self.ha is None:
            return None
        if self.ha.migration is not None:
            return self.ha.migration
        if self.shift is not None:
            return normalize_name(self.shift.record)
        if self.route53 is not None and len(self.route53.records) == 1:
            return self.route53.records[0].key
        return None

    def record_for(self, check: Check) -> Route53Record | None:
        """The Route53 record whose traffic this check represents, if any."""
        if self.route53 is None:
            return None
        return _record_of(check.record, self.route53.records)


def _record_of(record: str | None, records: Sequence[Route53Record]) -> Route53Record | None:
    """A check's `record` among the records; no `record` means the only one, if there is one."""
    if record is None:
        return records[0] if len(records) == 1 else None
    key = normalize_name(record)
    return next((r for r in records if r.key == key), None)


_Loc = tuple[int | str, ...]
_Problem = tuple[_Loc, str]  # where, what
_BRANCHES = frozenset(("str", "float", "int", "tuple[...]", "none"))  # pydantic's union branches


def _location(loc: _Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _step(node: object, part: int | str) -> tuple[int, object] | None:
    """Where `part` is in this node of the parsed file: its position and its value, or None."""
    if isinstance(node, dict):
        for i, (key, value) in enumerate(node.items()):
            if str(key) == str(part):
                return i, value
    elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return part, node[part]
    return None


def _file_location(raw: object, loc: _Loc) -> _Loc:
    """pydantic's location without the parts it adds (a union branch, a validator's name), which
    are told from the file's own keys by the file: a platform may be called `none`."""
    out: list[int | str] = []
    node = raw
    for part in loc:
        if (found := _step(node, part)) is not None:
            node = found[1]
        elif isinstance(part, str) and (part.startswith("function-") or part in _BRANCHES):
            continue
        else:
            node = None  # a missing key: what follows is not in the file either
        out.append(part)
    return tuple(out)


def _pydantic_problems(exc: ValidationError, raw: object) -> list[_Problem]:
    problems: list[_Problem] = []
    for err in exc.errors(include_url=False):
        loc = _file_location(raw, err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        problems.append((loc, msg))
    return problems


def _substitute(node: Any, loc: _Loc, env: Mapping[str, str], problems: list[_Problem]) -> Any:
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                problems.append((loc, f"environment variable {name!r} is not set"))
                return ""
            return env[name]

        return _ENV_RE.sub(replace, node)
    if isinstance(node, dict):
        return {k: _substitute(v, (*loc, str(k)), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, (*loc, i), env, problems) for i, v in enumerate(node)]
    return node


def _document_order(raw: object, loc: _Loc) -> tuple[int, ...]:
    """Where a location falls in the file, to list problems top to bottom. A missing key (or a
    mapping key's own problem) sorts first within its parent; ties keep their finding order."""
    order: list[int] = []
    node = raw
    for part in loc:
        if (found := _step(node, part)) is None:
            order.append(-1)
            break
        order.append(found[0])
        node = found[1]
    return tuple(order)


def probe_spec(platform: Platform, check: Check) -> ProbeSpec:
    """The request one check makes on one platform: platform headers, then the check's own."""
    headers: dict[str, tuple[str, str]] = {}
    for name, value in (*platform.headers.items(), *check.headers.items()):
        headers[name.lower()] = (name, value)
    expect = check.expect
    return ProbeSpec(
        url=platform.base_url + check.path,
        method=check.method,
        headers=tuple(headers.values()),
        body=check.body.encode() if check.body is not None else None,
        host_header=platform.host_header,
        tls_skip_verify=platform.tls_skip_verify,
        timeout=check.timeout,
        expect_status=frozenset(expect.status) if expect.status is not None else None,
        body_regex=expect.body_regex or None,
    )


@dataclass(frozen=True)
class _Piece(Generic[_M]):
    """One section or list item valid on its own; `bad` names the keys it had to do without."""

    value: _M
    bad: frozenset[str] = frozenset()

    def has(self, *keys: str) -> bool:
        """Whether these keys hold what the file says, so that a rule reading them may run."""
        return self.bad.isdisjoint(keys)


def _piece(model: type[_M], raw: object) -> _Piece[_M] | None:
    """Validate one piece of an invalid file. When the piece is invalid too, validate it again
    without its invalid or missing keys (their defaults, or None, stand in), so that rules reading
    only its valid keys still run. None when it is not even a mapping."""
    if not isinstance(raw, dict):
        return None
    data = dict(raw)
    bad: set[str] = set()
    partial = model
    while True:
        try:
            return _Piece(partial.model_validate(data), frozenset(bad))
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        keys = {str(err["loc"][0]) for err in errors if err["loc"]}
        if any(not err["loc"] for err in errors) or keys <= bad:
            return None  # a problem with the piece as a whole: no key to do without
        bad |= keys
        data = {k: v for k, v in data.items() if str(k) not in bad}
        # an optional key left out takes its default; a required one needs to be made optional
        required = {name for name, field in model.model_fields.items() if field.is_required()}
        partial = _optional(model, frozenset(bad & required))


@cache
def _optional(model: type[_M], fields: frozenset[str]) -> type[_M]:
    """`model` with these required fields optional (None), for a piece whose value there is
    invalid or missing. (Validators of those fields never run: the key is left out.)"""
    if not fields:
        return model
    overrides: dict[str, Any] = {f: (Any, None) for f in sorted(fields)}
    return cast("type[_M]", create_model(f"Partial{model.__name__}", __base__=model, **overrides))


@dataclass(frozen=True)
class _Pieces:
    """What the cross-section rules read: every piece valid on its own, None where one is not.

    A rule runs when the pieces (and keys) it reads are valid, whatever the rest of the file
    holds, so that one run reports every problem, not the sections' first and the rest later.
    """

    platforms: dict[str, _Piece[Platform] | None] | None  # None: `platforms` is not a mapping
    named: frozenset[str]  # the platform names that are valid names
    checks: list[_Piece[Check] | None] | None  # None: `checks` is not a list
    route53: bool  # the file has a route53 section
    records: list[_Piece[Route53Record] | None] | None  # None: unknown (route53 is broken)
    slack: _Piece[Slack] | None  # None: absent or unusable, either way no rule applies
    shift: _Piece[Shift] | None
    traffic: _Piece[Traffic] | None
    sources: list[_Piece[TrafficSource] | None]  # traffic.sources one by one
    ha: _Piece[HA] | None = None

    @classmethod
    def of_config(cls, cfg: Config) -> _Pieces:
        return cls(
            platforms={name: _Piece(p) for name, p in cfg.platforms.items()},
            named=frozenset(cfg.platforms),
            checks=[_Piece(c) for c in cfg.checks],
            route53=cfg.route53 is not None,
            records=[_Piece(r) for r in cfg.route53.records] if cfg.route53 else [],
            slack=_Piece(cfg.alerting.slack) if cfg.alerting and cfg.alerting.slack else None,
            shift=_Piece(cfg.shift) if cfg.shift else None,
            traffic=_Piece(cfg.traffic) if cfg.traffic else None,
            sources=[_Piece(s) for s in cfg.traffic.sources] if cfg.traffic else [],
            ha=_Piece(cfg.ha) if cfg.ha else None,
        )

    @classmethod
    def of_raw(cls, raw: Mapping[str, Any]) -> _Pieces:
        platforms, checks, route53, alerting = (
            raw.get(k) for k in ("platforms", "checks", "route53", "alerting")
        )
        records: list[_Piece[Route53Record] | None] | None = None
        if route53 is None:
            records = []
        elif isinstance(route53, dict) and isinstance(route53.get("records"), list):
            records = [_piece(Route53Record, r) for r in route53["records"]]
        return cls(
            platforms={str(k): _piece(Platform, v) for k, v in platforms.items()}
            if isinstance(platforms, dict)
            else None,
            named=frozenset(k for k in platforms if isinstance(k, str) and NAME_RE.match(k))
            if isinstance(platforms, dict)
            else frozenset(),
            checks=[_piece(Check, c) for c in checks] if isinstance(checks, list) else None,
            route53=route53 is not None,
            records=records,
            slack=_piece(Slack, alerting.get("slack")) if isinstance(alerting, dict) else None,
            shift=_piece(Shift, raw.get("shift")),
            traffic=_piece(Traffic, raw.get("traffic")),
            sources=[_piece(TrafficSource, s) for s in _list_in(raw.get("traffic"), "sources")],
            ha=_piece(HA, raw.get("ha")),
        )


def _list_in(section: object, key: str) -> list[Any]:
    value = section.get(key) if isinstance(section, dict) else None
    return value if isinstance(value, list) else []


def _cross_check(pieces: _Pieces) -> list[_Problem]:
    """Rules that span sections, each run on the pieces it reads when those are valid."""
    problems: list[_Problem] = []
    platforms = pieces.platforms
    if platforms is not None and all(p is not None and p.has("role") for p in platforms.values()):
        roles = {name: p.value.role for name, p in platforms.items() if p is not None}
        if sorted(roles.values()) != ["baseline", "candidate"]:
            problems.append(
                (
                    ("platforms",),
                    "exactly two platforms are needed, one with role baseline and one with "
                    f"role candidate (found {len(roles)}: "
                    + (", ".join(f"{n}={r}" for n, r in roles.items()) or "none")
                    + ")",
                )
            )
    checks = pieces.checks or []
    seen: dict[str, int] = {}
    for i, c in enumerate(checks):
        if c is None or not c.has("name"):
            continue
        name = c.value.name
        if name in seen:
            problems.append(
                (
                    ("checks", i, "name"),
                    f"duplicate check name {name!r} (also checks[{seen[name]}])",
                )
            )
        seen.setdefault(name, i)

    records = pieces.records or []
    # every record's name is known: a reference to none of them is an error
    all_records = pieces.records is not None and all(r and r.has("name") for r in records)
    record_keys: dict[str, int] = {}
    for i, r in enumerate(records):
        if r is None:
            continue
        rec, loc = r.value, ("route53", "records", i)
        if r.has("name"):
            if rec.key in record_keys:
                problems.append(((*loc, "name"), f"record {rec.name!r} is listed twice"))
            record_keys.setdefault(rec.key, i)
        if platforms is None or not r.has("set_identifiers"):
            continue
        for platform in rec.set_identifiers:
            if platform not in platforms:
                problems.append(
                    (
                        (*loc, "set_identifiers", platform),
                        f"unknown platform {platform!r} (platforms: {', '.join(platforms)})",
                    )
                )
        for platform in platforms:
            if platform in pieces.named and platform not in rec.set_identifiers:
                problems.append(
                    ((*loc, "set_identifiers"), f"no SetIdentifier for platform {platform!r}")
                )
    no_route53 = "" if pieces.route53 else " (there is no route53 section)"
    for i, c in enumerate(checks):
        if c is None or not c.has("record") or c.value.record is None or not all_records:
            continue
        if normalize_name(c.value.record) not in record_keys:
            problems.append(
                (
                    ("checks", i, "record"),
                    f"{c.value.record!r} is not one of route53.records{no_route53}",
                )
            )
    # what the prober reads of a piece with invalid keys is valid: their defaults stand in
    targets = [p.value for p in (platforms or {}).values() if p is not None and p.has("base_url")]
    for i, c in enumerate(checks):
        if c is None or not c.has("path"):
            continue
        for target in targets:
            try:
                probe_spec(target, c.value)
            except ValueError as exc:
                # the prober's own last word on what it cannot send
                problems.append((("checks", i), str(exc)))
                break
    if (s := pieces.slack) is not None:
        slack = s.value
        if s.has("token", "webhook_url") and (slack.token is None) == (slack.webhook_url is None):
            problems.append((("alerting", "slack"), "set exactly one of token and webhook_url"))
        if s.has("token", "channel") and slack.token is not None and not slack.channel:
            problems.append((("alerting", "slack", "channel"), "required with token"))
        if s.has("token") and slack.token is not None and not slack.token.strip():
            problems.append((("alerting", "slack", "token"), "is empty"))
    if (sh := pieces.shift) is not None:
        shift = sh.value
        key = normalize_name(shift.record) if sh.has("record") and all_records else None
        if key is not None and key not in record_keys:
            problems.append(
                (("shift", "record"), f"{shift.record!r} is not one of route53.records{no_route53}")
            )
        elif key is not None and pieces.checks is not None:
            # checks whose `record` is known; an unknown one might be the tied one
            known = [c.value for c in checks if c is not None and c.has("record")]
            values = [r.value for r in records if r is not None]  # all there: all_records
            tied = any((t := _record_of(c.record, values)) and t.key == key for c in known)
            if not tied and len(known) == len(checks):
                problems.append(
                    (
                        ("shift", "record"),
                        f"no check is tied to {shift.record!r} (checks[].record), so "
                        "no regression could stop or roll back the shift",
                    )
                )
        if sh.has("rollback_to", "steps") and shift.rollback_to >= shift.steps[0]:
            problems.append((("shift", "rollback_to"), "must be below the first step"))
        if sh.has("min_requests") and shift.min_requests and pieces.traffic is None:
            problems.append(
                (
                    ("shift", "min_requests"),
                    "needs a traffic section: real requests are counted there",
                )
            )
    if (tr := pieces.traffic) is not None:
        problems += _traffic_rules(tr, pieces, record_keys, all_records)
    if (ha := pieces.ha) is not None and ha.has("migration") and ha.value.migration is None:
        # the lease item is named after the migration: by default the record it moves
        named = pieces.shift is not None and pieces.shift.has("record")
        if not named and pieces.records is not None and len(pieces.records) != 1:
            problems.append(
                (
                    ("ha", "migration"),
                    "required without a shift.record or a single route53 record to name the "
                    "migration by: every replica of one migration must name the same lease item",
                )
            )
    return problems


def _traffic_rules(
    tr: _Piece[Traffic], pieces: _Pieces, record_keys: dict[str, int], all_records: bool
) -> list[_Problem]:
    """The traffic section against the platforms and records, and its sources among themselves."""
    problems: list[_Problem] = []
    traffic = tr.value
    if tr.has("routes"):
        seen: dict[str, int] = {}
        for i, group in enumerate(traffic.routes):
            if group.name in seen:
                problems.append(
                    (("traffic", "routes", i, "name"), f"duplicate route group {group.name!r}")
                )
            seen.setdefault(group.name, i)
    if tr.has("record") and all_records:
        if traffic.record is not None and normalize_name(traffic.record) not in record_keys:
            no_route53 = "" if pieces.route53 else " (there is no route53 section)"
            problems.append(
                (
                    ("traffic", "record"),
                    f"{traffic.record!r} is not one of route53.records{no_route53}",
                )
            )
        elif traffic.record is None and len(record_keys) > 1:
            problems.append(
                (
                    ("traffic", "record"),
                    "required: route53 has several records, say which one splits it",
                )
            )
    platforms = pieces.platforms
    tokens: dict[str, int] = {}
    names: dict[str, int] = {}
    for i, piece in enumerate(pieces.sources):
        if piece is None or not piece.has("platform", "name", "heroku_drain"):
            continue
        source, loc = piece.value, ("traffic", "sources", i)
        if platforms is not None and source.platform not in platforms:
            problems.append(
                (
                    (*loc, "platform"),
                    f"unknown platform {source.platform!r} (platforms: {', '.join(platforms)})",
                )
            )
        if source.heroku_drain is not None:
            token = source.heroku_drain.token
            if token in tokens:
                problems.append(
                    (
                        (*loc, "heroku_drain", "token"),
                        f"the same token as traffic.sources[{tokens[token]}]: the token tells which "
                        "drain a POST feeds, so each drain needs its own",
                    )
                )
            tokens.setdefault(token, i)
        if source.name is not None:
            if source.name in names:
                problems.append(
                    (
                        (*loc, "name"),
                        f"duplicate source name {source.name!r} (also sources[{names[source.name]}])",
                    )
                )
            names.setdefault(source.name, i)
    complete = all(p is not None and p.has("platform") for p in pieces.sources)
    if platforms is not None and complete and all(p is not None for p in platforms.values()):
        fed = {p.value.platform for p in pieces.sources if p is not None}
        for name in platforms:
            if name in pieces.named and name not in fed:
                problems.append(
                    (
                        ("traffic", "sources"),
                        f"no source for platform {name!r}: real traffic is judged by comparing both",
                    )
                )
    return problems


_C_LOADER: Any = getattr(yaml, "CSafeLoader", None)


def _load_yaml(text: str) -> Any:
    """The document, through libyaml's safe loader where PyYAML has it (its wheels do): a
    5000-check file's parse peaks at 25 MB instead of 37, and what a parse frees stays in the
    daemon's RSS (bench/probe). A document libyaml refuses is parsed again by the pure-Python
    loader, whose error texts say more ("expected ',' or '}', but got ':'")."""
    if _C_LOADER is not None:
        with contextlib.suppress(yaml.YAMLError):
            return yaml.load(text, Loader=_C_LOADER)  # noqa: S506 - libyaml's *safe* loader
    return yaml.safe_load(text)


def parse_config(
    text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate a configuration document; raise ConfigError listing every problem."""
    try:
        raw = _load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = ": ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError(source, [f"{where}: invalid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"{source}: invalid YAML: {exc}"]) from None
    if raw is None:
        raise ConfigError(source, ["(top level): the file is empty"])
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"(top level): expected a mapping, got {type(raw).__name__}"])
    problems: list[_Problem] = []
    raw = _substitute(raw, (), os.environ if env is None else env, problems)
    # a value whose variable is unset is said once: not also "is empty" or "too short"
    unset = {loc for loc, _ in problems}
    found: list[_Problem] = []
    cfg: Config | None
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        cfg = None
        found += _pydantic_problems(exc, raw)
    found += _cross_check(_Pieces.of_config(cfg) if cfg is not None else _Pieces.of_raw(raw))
    problems += [p for p in found if p[0] not in unset]
    if problems or cfg is None:
        problems.sort(key=lambda p: _document_order(raw, p[0]))
        raise ConfigError(source, [f"{_location(loc)}: {msg}" for loc, msg in problems])
    return cfg


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [f"{source}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [f"{source}: cannot read: {exc}"]) from None
    return parse_config(text, source=source, env=env)
