"""The aiohttp app: /metrics, /, /-/healthy, /-/ready, /-/reload, /api/v1/status."""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from pydantic import ConfigDict, TypeAdapter, ValidationError

from exporter import __version__
from exporter.alerting.alerts import Incident, Phase
from exporter.alerting.messages import TRAFFIC_PREFIX
from exporter.errors import Refused
from exporter.probing.state import both_failing, ratio
from exporter.traffic.drain import CONTENT_TYPE as LOGPLEX
from exporter.traffic.drain import MAX_BODY as DRAIN_MAX_BODY
from exporter.traffic.drain import Drains, Verdict
from exporter.web.collector import View, expected_error_ratio
from exporter.web.exposition import Scrape, render_checks
from exporter.web.guard import (
    DEFAULT_HEADER_TIMEOUT,
    KEEPALIVE_TIMEOUT,
    Bounds,
    GuardedSite,
    Limits,
)
from exporter.web.page import PageInfo, render_page
from exporter.web.readiness import readiness_data, verdict_of
from exporter.web.traffic import traffic_data

if TYPE_CHECKING:  # rendering imports no AWS client
    from exporter.store.lease import LeaseSnapshot
    from exporter.store.vantages import VantagesSnapshot

log = logging.getLogger("cutover.web")


class Backend(Protocol):
    """What the web layer reads from the daemon, and the two things it asks of it.

    `view()` is the snapshot a page or a scrape renders: the config in force, Route53, the
    alerts and the shift plan, frozen; its check states are live and only read here.
    """

    @property
    def registry(self) -> CollectorRegistry: ...

    @property
    def ready(self) -> bool: ...

    @property
    def started(self) -> float: ...

    @property
    def config_path(self) -> Path | None: ...

    @property
    def config_loaded_at(self) -> float: ...

    @property
    def last_reload_ok(self) -> bool: ...

    def view(self) -> View: ...

    def shift_checks(self) -> Sequence[str]: ...

    def notifications_pending(self) -> int | None: ...

    def reload(self) -> list[str]:
        """Read the config file again; the problems that kept it out, if any."""
        ...

    def shift_control(self, action: str, who: str, reason: str | None) -> str:
        """A person's word on the shift plan; raises Refused when it does not apply."""
        ...

    @property
    def drains(self) -> Drains:
        """The Heroku log drains: who a POST is from, and where its lines go."""
        ...


BACKEND: web.AppKey[Backend] = web.AppKey("backend")
# /metrics renders for at most this long before it lets the probes in flight run
SCRAPE_SLICE_SECONDS = 0.0005
SCRAPE_WRITE_BYTES = 1 << 16


def _num(value: float) -> float | None:
    return None if math.isnan(value) else value


def route53_data(view: View) -> dict[str, Any] | None:
    snap = view.route53
    if snap is None:
        return None
    records = []
    for spec in view.records.values():
        weights = snap.weights.get(spec)
        failing = snap.failing.get(spec)
        records.append(
            {
                "hosted_zone": spec.zone_id,
                "name": spec.fqdn,
                "type": weights.type if weights else spec.record_type,
                "ttl": weights.ttl if weights else None,
                "fetched_at": weights.fetched_at if weights else None,
                "error": None
                if failing is None
                else {"reason": failing.reason, "detail": failing.detail},
                "shares": weights.platform_shares() if weights else None,
                "record_sets": [
                    {
                        "set_identifier": e.set_identifier,
                        "platform": e.platform,
                        "weight": e.weight,
                        "share": e.share,
                        "alias": e.alias,
                        "target": e.target,
                    }
                    for e in (weights.entries if weights else ())
                ],
                "missing_set_identifiers": list(weights.missing) if weights else [],
                "unmapped_set_identifiers": list(weights.unmapped) if weights else [],
            }
        )
    return {"last_success": snap.last_success, "errors": dict(snap.errors), "records": records}


def status_data(backend: Backend) -> dict[str, Any]:
    """The status page's data. Never includes headers, tokens or other configured secrets."""
    view = backend.view()
    cfg = view.config
    now = view.now
    checks = []
    for state in view.checks:
        check = cfg.check(state.name)
        platforms: dict[str, Any] = {}
        stats = {}
        for pname, series in state.series.items():
            st = series.stats(now)
            stats[pname] = st
            last = series.last
            platforms[pname] = {
                "role": series.role,
                "url": series.spec.url,
                "last": None
                if last is None
                else {
                    "success": last.success,
                    "status": last.status,
                    "reason": last.reason,
                    "detail": last.detail,
                    "duration_seconds": last.duration,
                    "started": last.started,
                    "phases": series.phases(),
                },
                "window": {
                    "samples": st.samples,
                    "failures": st.failures,
                    "error_ratio": _num(st.error_ratio),
                    "latency_seconds": {f"{q:g}": _num(v) for q, v in st.quantiles.items()},
                },
                "probes_total": series.probes_total,
                "failures_by_reason": {r: n for r, n in series.failures.items() if n},
                "consecutive_failures": series.consecutive_failures,
                "tls_expiry": series.tls_expiry,
            }
        b, c = stats.get(cfg.baseline), stats.get(cfg.candidate)
        sb, sc = state.series.get(cfg.baseline), state.series.get(cfg.candidate)
        comparison = None
        if b is not None and c is not None:
            comparison = {
                "latency_ratio": {
                    f"{q:g}": _num(ratio(c.quantiles[q], b.quantiles[q])) for q in c.quantiles
                },
                "error_ratio_delta": _num(c.error_ratio - b.error_ratio),
            }
        shares = view.shares_for(state.name)
        expected = None
        if shares is not None:
            expected = _num(
                expected_error_ratio(shares, {p: st.error_ratio for p, st in stats.items()})
            )
        checks.append(
            {
                "name": state.name,
                "path": check.path if check else None,
                "interval_seconds": check.interval if check else None,
                "record": check.record if check else None,
                "platforms": platforms,
                "comparison": comparison,
                "traffic_share": shares,
                "expected_error_ratio": expected,
                "both_platforms_failing": sb is not None
                and sc is not None
                and both_failing(sb, sc, now),
                "verdicts": None
                if (evaluation := view.evaluations.get(state.name)) is None
                else {v.signal: v.as_dict() for v in evaluation.verdicts()},
            }
        )
    return {
        "version": __version__,
        "ready": backend.ready,
        "started": backend.started,
        "config": {
            "file": str(backend.config_path) if backend.config_path else None,
            "loaded": backend.config_loaded_at,
            "last_reload_successful": backend.last_reload_ok,
        },
        "baseline": cfg.baseline,
        "candidate": cfg.candidate,
        "judge": {
            "window_seconds": cfg.judge.window,
            "min_samples": cfg.judge.min_samples,
            "latency_max_ratio": cfg.judge.latency.max_ratio,
            "errors_max_increase": cfg.judge.errors.max_increase,
        },
        "checks": checks,
        "route53": route53_data(view),
        "alerts": [_incident_data(i, view) for i in view.alerts],
        "resolved_alerts": [_incident_data(i, view) for i in view.resolved],
        "shift": shift_data(backend, view),
        "traffic": None
        if view.traffic is None
        else traffic_data(view.traffic, cfg.baseline, cfg.candidate),
        "notifications_pending": backend.notifications_pending(),
        "ha": None if view.lease is None else ha_data(view.lease, view.vantages),
    }


def ha_data(lease: LeaseSnapshot, vantages: VantagesSnapshot | None = None) -> dict[str, Any]:
    """The HA lease as this replica sees it: who leads, and since when nobody has; and every
    vantage as it combined them last."""
    return {
        "vantage": lease.vantage,
        "leader": lease.leader,
        "owner": lease.owner,
        "epoch": lease.epoch,
        "leaderless_seconds": round(lease.leaderless_seconds, 3),
        "leaderless": lease.leaderless,
        "lease_errors": dict(lease.errors),
        "vantages": None if vantages is None else vantages_data(vantages),
    }


def vantages_data(snap: VantagesSnapshot) -> dict[str, Any]:
    """Each vantage's health and last report, and whether the vantages let a step advance."""
    return {
        "round_seconds": snap.interval,
        "confirm": snap.confirm,
        "quorum": snap.quorum,
        "may_advance": snap.may_advance,
        "reasons": list(snap.reasons),
        "list": [
            {
                "vantage": line.vantage,
                "health": line.health,
                "healthy": line.healthy,
                "last_report_age_seconds": round(line.age, 3),
                "round": line.round,
                "impaired_checks": list(line.impaired_checks),
            }
            for line in snap.lines
        ],
        "report_errors": dict(snap.errors),
        "failing": snap.failing,
    }


def _incident_data(incident: Incident, view: View) -> dict[str, Any]:
    data = incident.to_dict()
    data.pop("notify", None)  # the notification layer's bookkeeping, not for readers
    data["duration_seconds"] = incident.duration
    data["slack_link"] = view.links.get(incident.id)
    return data


# -- HTML ------------------------------------------------------------------------------------


def status_html(backend: Backend) -> str:
    """The status page (exporter/web/page.py renders it)."""
    return render_page(
        backend.view(),
        PageInfo(
            now=time.time(),
            ready=backend.ready,
            last_reload_ok=backend.last_reload_ok,
            guarded_by=tuple(backend.shift_checks()),
        ),
    )


# -- handlers --------------------------------------------------------------------------------


async def metrics(request: web.Request) -> web.StreamResponse:
    """The registry's families, then the per-check ones streamed in slices.

    Rendering 1000 checks takes tens of milliseconds; the loop is given back every
    SCRAPE_SLICE_SECONDS so that probes in flight keep their timing (bench/probe measures it).
    """
    backend = request.app[BACKEND]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    openmetrics = content_type.startswith("application/openmetrics-text")
    head = encoder(backend.registry)
    if openmetrics:
        head = head.removesuffix(b"# EOF\n")  # written once, after the streamed families
    view = backend.view()
    cfg = view.config
    scrape = Scrape(
        baseline=cfg.baseline,
        candidate=cfg.candidate,
        fired=frozenset(i.key for i in view.alerts if i.phase is Phase.FIRING),
        shares=view.shares_for if view.route53 is not None else None,
        evaluations=view.evaluations,
        traffic={}
        if view.traffic is None
        else {f"{TRAFFIC_PREFIX}{route}": e for route, e in view.traffic.verdicts.items()},
    )
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    await resp.prepare(request)
    try:
        await resp.write(head)
        parts: list[str] = []
        size = 0
        clock = time.perf_counter
        deadline = clock() + SCRAPE_SLICE_SECONDS
        for chunk in render_checks(scrape, list(view.checks), view.now, openmetrics=openmetrics):
            if chunk:
                parts.append(chunk)
                size += len(chunk)
                if size >= SCRAPE_WRITE_BYTES:
                    await resp.write("".join(parts).encode())
                    parts.clear()
                    size = 0
            if clock() >= deadline:
                await asyncio.sleep(0)
                deadline = clock() + SCRAPE_SLICE_SECONDS
        if openmetrics:
            parts.append("# EOF\n")
        await resp.write("".join(parts).encode())
        await resp.write_eof()
    except ConnectionResetError:
        # the scraper gave up (its scrape_timeout) or went away: nothing is wrong here
        log.debug("/metrics: the client closed the connection before the end of the scrape")
    return resp


async def index(request: web.Request) -> web.Response:
    return web.Response(text=status_html(request.app[BACKEND]), content_type="text/html")


async def api_status(request: web.Request) -> web.Response:
    return web.json_response(status_data(request.app[BACKEND]))


async def api_readiness(request: web.Request) -> web.Response:
    return web.json_response(readiness_data(request.app[BACKEND].view()))


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[BACKEND].ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready: not every check has been probed yet\n")


CONTROL_TOKEN = web.AppKey("control_token", str)
RELOAD_REQUIRES_TOKEN = web.AppKey("reload_requires_token", bool)
# a control body is a few dozen bytes; it must arrive whole within the request head's deadline
CONTROL_BODY_MAX = 64 * 1024
BODY_TIMEOUT = web.AppKey("body_timeout", float)


def _token_problem(request: web.Request) -> tuple[int, str] | None:
    """Why the request may not control the daemon, or None when its bearer token is right."""
    token = request.app[CONTROL_TOKEN]
    if not token:
        return 403, "control is disabled: start the daemon with CUTOVER_CONTROL_TOKEN set"
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return 401, "a valid bearer token is required"
    return None


def _unauthorized(status: int) -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"} if status == 401 else {}


async def reload(request: web.Request) -> web.Response:
    if request.app[RELOAD_REQUIRES_TOKEN] and (problem := _token_problem(request)):
        status, text = problem
        return web.Response(status=status, text=text + "\n", headers=_unauthorized(status))
    problems = request.app[BACKEND].reload()
    if problems:
        text = "reload refused, the running configuration stays in force:\n" + "\n".join(problems)
        return web.Response(status=500, text=text + "\n")
    return web.Response(text="reloaded\n")


def shift_data(backend: Backend, view: View) -> dict[str, Any] | None:
    if view.shift is None:
        return None
    data = view.shift.status.to_dict()
    data["guarded_by"] = list(backend.shift_checks())
    data["changes"] = dict(view.shift.changes)
    # the verdict the plan advances on (GO), on the record's current step
    data["readiness"] = verdict_of(view, view.shift.status.record)
    return data


async def api_shift(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    data = shift_data(backend, backend.view())
    if data is None:
        return web.json_response({"error": "no shift section in the configuration"}, status=404)
    return web.json_response({"shift": data})


@dataclass(frozen=True, slots=True)
class ControlBody:
    """A shift control request's body: who asks and why, both optional."""

    __pydantic_config__ = ConfigDict(strict=True, extra="forbid")
    who: str | None = None
    reason: str | None = None


# pydantic's JSON parser refuses deep nesting with an error, where json.loads recurses
CONTROL_BODY = TypeAdapter(ControlBody)


def _body_problems(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        kind, msg = err["type"], err["msg"]
        where = ".".join(str(part) for part in err["loc"])
        if kind == "json_invalid":
            detail = msg.removeprefix("Invalid JSON: ")
            if "recursion limit" in detail:
                problems.append(f"JSON nested too deep ({detail})")
            else:
                problems.append(f"not JSON ({detail})")
        elif kind in ("dataclass_type", "model_type", "dict_type"):
            problems.append(
                'not a JSON object: send {"who": "...", "reason": "..."}, both optional'
            )
        elif kind in ("unexpected_keyword_argument", "extra_forbidden"):
            problems.append(f"{where}: unknown key (expected who and reason)")
        elif kind == "string_type":
            problems.append(f"{where}: must be a string")
        else:
            problems.append(f"{where}: {msg}")
    return "; ".join(problems)


async def _control_body(request: web.Request) -> ControlBody | web.Response:
    """The parsed body, or the answer to a body that is late, too large or malformed."""
    if not request.can_read_body:
        return ControlBody()
    deadline = request.app[BODY_TIMEOUT]
    try:
        async with asyncio.timeout(deadline):
            raw = await request.read()
    except TimeoutError:
        late = web.json_response(
            {"error": f"the request body did not arrive within {deadline:g}s"}, status=408
        )
        late.force_close()
        return late
    except web.HTTPRequestEntityTooLarge:
        return web.json_response(
            {"error": f"the request body is over {CONTROL_BODY_MAX} bytes"}, status=413
        )
    try:
        return CONTROL_BODY.validate_json(raw)
    except ValidationError as exc:
        return web.json_response({"error": f"bad request body: {_body_problems(exc)}"}, status=400)


async def shift_control(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    if problem := _token_problem(request):
        status, text = problem
        return web.json_response({"error": text}, status=status, headers=_unauthorized(status))
    if backend.view().shift is None:
        return web.json_response({"error": "no shift section in the configuration"}, status=404)
    action = request.match_info["action"]
    body = await _control_body(request)
    if isinstance(body, web.Response):
        return body
    who = (body.who or request.remote or "api")[:64]
    reason = body.reason[:200] if body.reason else None
    try:
        result = backend.shift_control(action, who, reason)
    except Refused as exc:
        data = shift_data(backend, backend.view())
        return web.json_response({"error": str(exc), "shift": data}, status=409)
    data = shift_data(backend, backend.view())
    # a dry run's answer starts with DRY RUN, as every other line of a dry run does
    said = result if result.startswith("DRY RUN") else f"{action}: {result}"
    return web.json_response({"result": said, "shift": data})


# -- Heroku log drains ------------------------------------------------------------------------

_UNAUTHORIZED = {"WWW-Authenticate": 'Basic realm="cutover"'}


def _drain_answer(
    request: web.Request,
    drains: Drains,
    status: int,
    result: str,
    text: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A refusal: counted, said in the log at most once a minute, and the connection closed
    when the body was not read (aiohttp would otherwise read up to 10 MB only to drop it)."""
    drains.refused(result)
    resp = web.Response(status=status, text=text + "\n", headers=headers)
    if request.can_read_body:
        resp.force_close()
    return resp


async def _drain_body(request: web.Request) -> bytes | tuple[int, str, str]:
    """The body, read in chunks and never past DRAIN_MAX_BODY; or (status, result, why)."""
    too_large = (413, "too_large", f"the body is over {DRAIN_MAX_BODY >> 20} MiB")
    length = request.content_length
    if length is not None and length > DRAIN_MAX_BODY:
        return too_large
    deadline = request.app[BODY_TIMEOUT]
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > DRAIN_MAX_BODY:
                    return too_large
                chunks.append(chunk)
    except TimeoutError:
        return 408, "late", f"the request body did not arrive within {deadline:g}s"
    except (ValueError, aiohttp.ClientPayloadError, HttpProcessingError) as exc:
        return 400, "bad_body", f"the body cannot be read ({type(exc).__name__})"
    return b"".join(chunks)


async def heroku_drain(request: web.Request) -> web.Response:
    """POST /api/v1/drains/heroku: one batch of a Heroku HTTPS log drain (traffic/drain.py).

    Answers at once: the lines are read off the request path. 204 for a body taken (or a
    retry of one, by its Logplex-Frame-Id), 401 without the right token, 415 for anything but
    logplex-1, 413 over 8 MiB, 400 for a body without one readable frame.
    """
    drains = request.app[BACKEND].drains
    if not drains.configured:
        return _drain_answer(
            request, drains, 404, "no_drain", "no heroku_drain source is configured"
        )
    spec = drains.authenticate(request.headers.get("Authorization"))
    if spec is None:
        return _drain_answer(
            request,
            drains,
            401,
            "unauthorized",
            "a drain token is required as the basic-auth password: "
            "heroku drains:add https://user:TOKEN@HOST/api/v1/drains/heroku",
            headers=_UNAUTHORIZED,
        )
    if request.content_type != LOGPLEX:
        return _drain_answer(
            request,
            drains,
            415,
            "content_type",
            f"Content-Type must be {LOGPLEX}: the batches of a Heroku HTTPS log drain",
        )
    body = await _drain_body(request)
    if isinstance(body, tuple):
        status, result, text = body
        return _drain_answer(request, drains, status, result, text)
    verdict = await drains.accept(
        spec,
        body,
        frame_id=request.headers.get("Logplex-Frame-Id"),
        msg_count=request.headers.get("Logplex-Msg-Count"),
    )
    if verdict is Verdict.GONE:
        return _drain_answer(
            request, drains, 401, "unauthorized", "the drain's token is no longer configured"
        )
    if verdict is Verdict.NO_FRAME:
        return _drain_answer(
            request,
            drains,
            400,
            "no_frame",
            "not one readable frame: a logplex-1 body is octet-counted RFC 5424 lines, "
            "`<length> <line>`",
        )
    return web.Response(status=204)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def no_tracebacks(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A handler's unexpected exception is one logged error and a plain 500, never aiohttp's."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise  # aiohttp's own answers: 404, 405, 413
    except ConnectionError:
        log.debug("%s %s: the client went away", request.method, request.path)
        return web.Response(status=500)
    except Exception as exc:
        if request.writer.output_size:
            raise  # the response has begun: only closing the connection tells the client
        log.exception("%s %s failed unexpectedly", request.method, request.path)
        return web.json_response(
            {"error": f"internal error ({type(exc).__name__}); the daemon's log says more"},
            status=500,
        )


def build_app(
    backend: Backend, *, reload_requires_token: bool = False, bounds: Bounds | None = None
) -> web.Application:
    """The routes; with `bounds`, a request body must arrive within their header timeout."""
    token = os.environ.get("CUTOVER_CONTROL_TOKEN", "")
    if reload_requires_token and not token:
        raise ValueError("reload requires a token, and CUTOVER_CONTROL_TOKEN is not set")
    middlewares = [no_tracebacks] if bounds is None else [bounds.middleware, no_tracebacks]
    app = web.Application(middlewares=middlewares, client_max_size=CONTROL_BODY_MAX)
    app[BACKEND] = backend
    app[CONTROL_TOKEN] = token
    app[RELOAD_REQUIRES_TOKEN] = reload_requires_token
    app[BODY_TIMEOUT] = bounds.header_timeout if bounds is not None else DEFAULT_HEADER_TIMEOUT
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/status", api_status)
    app.router.add_get("/api/v1/readiness", api_readiness)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/api/v1/shift", api_shift)
    app.router.add_post("/api/v1/shift/{action:pause|resume|approve|rollback}", shift_control)
    app.router.add_post("/api/v1/drains/heroku", heroku_drain)
    return app


async def start_server(
    backend: Backend,
    host: str,
    port: int,
    *,
    limits: Limits | None = None,
    reload_requires_token: bool = False,
) -> tuple[web.AppRunner, int]:
    """Listen on host:port (port 0: any free one); returns the runner and the bound port.

    Every connection goes through the bounds of `limits` (see httpguard); runner.cleanup()
    stops listening and closes every connection.
    """
    bounds = Bounds(limits or Limits(), backend.registry)
    app = build_app(backend, reload_requires_token=reload_requires_token, bounds=bounds)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_TIMEOUT
    )
    await runner.setup()
    site = GuardedSite(runner, host, port, bounds)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound: int = runner.addresses[0][1]
    log.debug(
        "HTTP: at most %d connections, a first request head within %gs",
        bounds.limit,
        bounds.header_timeout,
    )
    return runner, bound
