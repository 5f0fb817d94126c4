"""YAML -> validated, frozen settings; every problem reported with its location."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
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
    field_validator,
    model_validator,
)

from exporter.errors import ConfigError
from exporter.probe import ProbeSpec, compile_body_regex
from exporter.route53 import normalize_name

NAME_RE = re.compile(r"^[a-z0-9_-]+$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ENV_RE = re.compile(r"\$\{([^}]*)\}")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


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


class Check(_Model):
    name: Name
    path: str
    method: Annotated[str, Field(pattern=r"^[A-Z]+$")] = "GET"
    headers: Headers = Field(default_factory=dict)
    body: str | None = None
    interval: Duration = 15.0
    timeout: Duration = 5.0
    record: str | None = None
    expect: Expect = Field(default_factory=Expect)

    @model_validator(mode="before")
    @classmethod
    def _default_timeout(cls, data: Any) -> Any:
        # field validators skip defaults: spell the default out so that it is checked
        # against a short interval like a timeout given in the file
        if isinstance(data, dict) and "timeout" not in data:
            return {**data, "timeout": "5s"}
        return data

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
    min_samples: Annotated[int, Field(ge=1)] = 50
    rollback_to: Annotated[float, Field(ge=0, le=100)] = 0
    mode: Literal["auto", "manual"] = "auto"

    @field_validator("steps")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("steps must increase strictly, e.g. [10, 25, 50, 100]")
        return value


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

    def record_for(self, check: Check) -> Route53Record | None:
        """The Route53 record whose traffic this check represents, if any."""
        if self.route53 is None:
            return None
        if check.record is None:
            records = self.route53.records
            return records[0] if len(records) == 1 else None
        key = normalize_name(check.record)
        return next((r for r in self.route53.records if r.key == key), None)


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _pydantic_messages(exc: ValidationError) -> list[str]:
    messages = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic adds the union branch or validator name to the location; drop those parts
        loc = tuple(p for p in loc if p not in ("str", "float", "int", "tuple[...]", "none"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        messages.append(f"{_location(loc)}: {msg}")
    return messages


def _substitute(
    node: Any, loc: tuple[int | str, ...], env: Mapping[str, str], errors: list[str]
) -> Any:
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                errors.append(f"{_location(loc)}: environment variable {name!r} is not set")
                return ""
            return env[name]

        return _ENV_RE.sub(replace, node)
    if isinstance(node, dict):
        return {k: _substitute(v, (*loc, str(k)), env, errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, (*loc, i), env, errors) for i, v in enumerate(node)]
    return node


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


def _cross_check(cfg: Config) -> list[str]:
    """Rules that span sections; run once every section is valid on its own."""
    errors: list[str] = []
    roles = [p.role for p in cfg.platforms.values()]
    if sorted(roles) != ["baseline", "candidate"]:
        errors.append(
            "platforms: exactly two platforms are needed, one with role baseline and one with "
            f"role candidate (found {len(roles)}: "
            + (", ".join(f"{n}={p.role}" for n, p in cfg.platforms.items()) or "none")
            + ")"
        )
    seen: dict[str, int] = {}
    for i, check in enumerate(cfg.checks):
        if check.name in seen:
            errors.append(
                f"checks[{i}].name: duplicate check name {check.name!r} (also checks[{seen[check.name]}])"
            )
        seen.setdefault(check.name, i)
    record_keys: dict[str, int] = {}
    if cfg.route53 is not None:
        for i, rec in enumerate(cfg.route53.records):
            loc = f"route53.records[{i}]"
            if rec.key in record_keys:
                errors.append(f"{loc}.name: record {rec.name!r} is listed twice")
            record_keys.setdefault(rec.key, i)
            for platform in rec.set_identifiers:
                if platform not in cfg.platforms:
                    errors.append(
                        f"{loc}.set_identifiers.{platform}: unknown platform {platform!r} "
                        f"(platforms: {', '.join(cfg.platforms)})"
                    )
            for platform in cfg.platforms:
                if platform not in rec.set_identifiers:
                    errors.append(
                        f"{loc}.set_identifiers: no SetIdentifier for platform {platform!r}"
                    )
    for i, check in enumerate(cfg.checks):
        if check.record is not None and normalize_name(check.record) not in record_keys:
            errors.append(
                f"checks[{i}].record: {check.record!r} is not one of route53.records"
                + ("" if cfg.route53 else " (there is no route53 section)")
            )
    for i, check in enumerate(cfg.checks):
        for target in cfg.platforms.values():
            try:
                probe_spec(target, check)
            except ValueError as exc:
                # the prober's own last word on what it cannot send
                errors.append(f"checks[{i}]: {exc}")
                break
    if cfg.alerting is not None and cfg.alerting.slack is not None:
        slack = cfg.alerting.slack
        if (slack.token is None) == (slack.webhook_url is None):
            errors.append("alerting.slack: set exactly one of token and webhook_url")
        if slack.token is not None and not slack.channel:
            errors.append("alerting.slack.channel: required with token")
        if slack.token is not None and not slack.token.strip():
            errors.append("alerting.slack.token: is empty")
    if cfg.shift is not None:
        key = normalize_name(cfg.shift.record)
        if key not in record_keys:
            errors.append(f"shift.record: {cfg.shift.record!r} is not one of route53.records")
        elif not any((r := cfg.record_for(c)) is not None and r.key == key for c in cfg.checks):
            errors.append(
                f"shift.record: no check is tied to {cfg.shift.record!r} (checks[].record), so "
                "no regression could stop or roll back the shift"
            )
        if cfg.shift.rollback_to >= cfg.shift.steps[0]:
            errors.append("shift.rollback_to: must be below the first step")
    return errors


def parse_config(
    text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate a configuration document; raise ConfigError listing every problem."""
    try:
        raw = yaml.safe_load(text)
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
    errors: list[str] = []
    raw = _substitute(raw, (), os.environ if env is None else env, errors)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, errors + _pydantic_messages(exc)) from None
    errors += _cross_check(cfg)
    if errors:
        raise ConfigError(source, errors)
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
