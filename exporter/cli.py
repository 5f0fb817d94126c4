"""Command line: flags (each with a CUTOVER_* environment fallback), logging set-up, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from exporter import __version__, aws
from exporter.alerting.slack import Notifier, SlackError
from exporter.config import Config, format_duration, load_config, parse_duration, parse_listen
from exporter.daemon import Daemon, slack_settings
from exporter.demo import run_demo
from exporter.errors import ConfigError, StateDirError, UsageError
from exporter.logs import setup_logging
from exporter.readiness.offline import readiness_from_state_dir
from exporter.report import FORMATS, render
from exporter.route53.words import DRY_RUN, plan_text
from exporter.store import dynamo
from exporter.store.lease import LEASE_SK, RENEW_FRACTION, SAFE_FRACTION, lease_pk
from exporter.web.app import start_server
from exporter.web.guard import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Limits,
    raise_fd_limit,
)

log = logging.getLogger("cutover")

DEFAULT_LISTEN = "0.0.0.0:9877"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
LOOPS = ("auto", "asyncio", "uvloop")


def _env_choice(name: str, choices: Sequence[str], default: str) -> str:
    value = os.environ.get(name, default)
    if value not in choices:
        raise UsageError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _env_bool(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise UsageError(f"{name}={value!r}: expected true or false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cutover",
        description="Watch a live migration: probe the baseline and the candidate platform, "
        "judge the candidate, export to Prometheus, alert in Slack.",
    )
    parser.add_argument("--version", action="version", version=f"cutover {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def logging_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--log-level",
            choices=LOG_LEVELS,
            default=None,
            help="default: $CUTOVER_LOG_LEVEL or info",
        )
        p.add_argument(
            "--log-format",
            choices=LOG_FORMATS,
            default=None,
            help="default: $CUTOVER_LOG_FORMAT or text",
        )

    def loop_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--loop",
            choices=LOOPS,
            default=None,
            help="event loop: uvloop when installed (pip install 'cutover[uvloop]'; about 6-16%% "
            "less CPU per probe, bench/probe), else asyncio's (default: $CUTOVER_LOOP or auto)",
        )

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", default=None, help="YAML file (default: $CUTOVER_CONFIG)")
    run.add_argument(
        "--listen",
        default=None,
        help=f"HOST:PORT (default: $CUTOVER_LISTEN, the config's listen, or {DEFAULT_LISTEN})",
    )
    run.add_argument(
        "--allow-route53-writes",
        action="store_true",
        default=None,
        help="let the shift plan write weights (with shift.enabled: true; default: "
        "$CUTOVER_ALLOW_ROUTE53_WRITES=true, else off)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="never write to Route53: log and show what the shift plan would write",
    )
    run.add_argument(
        "--reload-requires-token",
        action="store_true",
        default=None,
        help="POST /-/reload needs the bearer token $CUTOVER_CONTROL_TOKEN, like shift control "
        "(default: $CUTOVER_RELOAD_REQUIRES_TOKEN=true, else off, as Prometheus' lifecycle API)",
    )
    run.add_argument(
        "--http-header-timeout",
        default=None,
        metavar="DURATION",
        help="close a connection that has not sent a complete request head this long after "
        "connecting; a control request's body must follow its head within as long "
        "(default: $CUTOVER_HTTP_HEADER_TIMEOUT or "
        f"{format_duration(DEFAULT_HEADER_TIMEOUT)})",
    )
    run.add_argument(
        "--http-write-timeout",
        default=None,
        metavar="DURATION",
        help="abort a connection whose client has read nothing of an answer for this long "
        "(default: $CUTOVER_HTTP_WRITE_TIMEOUT or "
        f"{format_duration(DEFAULT_WRITE_TIMEOUT)})",
    )
    logging_flags(run)
    loop_flag(run)

    check = sub.add_parser("check", help="validate a configuration file and summarise it")
    check.add_argument("--config", default=None, help="YAML file (default: $CUTOVER_CONFIG)")
    check.add_argument(
        "--slack-test",
        action="store_true",
        help="also post a test message with the configured Slack settings (opt-in)",
    )

    shift = sub.add_parser("shift", help="control the guarded shift of a running daemon")
    shift.add_argument("action", choices=("status", "pause", "resume", "approve", "rollback"))
    shift.add_argument(
        "--url",
        default=None,
        help="the daemon (default: $CUTOVER_URL or http://127.0.0.1:9877); the bearer token "
        "comes from $CUTOVER_CONTROL_TOKEN",
    )
    shift.add_argument("--reason", default=None, help="said in the log, the history and Slack")

    report = sub.add_parser(
        "report",
        help="the go/no-go verdict and the step ledger, for a change ticket",
        description="From a running daemon's /api/v1/readiness (--url, the default), or from a "
        "state_dir's ledger (--state-dir; the tolerances come from --config or $CUTOVER_CONFIG "
        "when given, else the defaults).",
    )
    where = report.add_mutually_exclusive_group()
    where.add_argument(
        "--url", default=None, help="the daemon (default: $CUTOVER_URL or http://127.0.0.1:9877)"
    )
    where.add_argument("--state-dir", default=None, help="read the ledger in this state_dir")
    report.add_argument("--config", default=None, help="with --state-dir: the YAML file")
    report.add_argument("--format", choices=FORMATS, default="text")

    ha = sub.add_parser("ha", help="several replicas: the DynamoDB table of the ha section")
    ha_actions = ha.add_subparsers(dest="ha_command", required=True, metavar="ACTION")
    init = ha_actions.add_parser(
        "init",
        help="create the ha section's DynamoDB table (pk, sk; TTL on expires)",
        description="Create the table named by the configuration's ha section, wait until it "
        "is ACTIVE and turn TTL on; a table that exists already with these keys is fine.",
    )
    init.add_argument("--config", default=None, help="YAML file (default: $CUTOVER_CONFIG)")
    init.add_argument(
        "--print",
        action="store_true",
        help="print the equivalent aws commands instead; nothing is called",
    )

    demo = sub.add_parser("demo", help="run against two embedded simulated platforms")
    demo.add_argument(
        "--listen", default=None, help="HOST:PORT (default: $CUTOVER_LISTEN or 127.0.0.1:9877)"
    )
    logging_flags(demo)
    loop_flag(demo)
    return parser


def loop_factory(args: argparse.Namespace) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop `--loop` (or $CUTOVER_LOOP) asks for; auto: uvloop when it is installed."""
    choice = args.loop or _env_choice("CUTOVER_LOOP", LOOPS, "auto")
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UsageError(
                "--loop uvloop: uvloop is not installed (pip install 'cutover[uvloop]')"
            ) from None
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run(args: argparse.Namespace, main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    factory = loop_factory(args)
    with asyncio.Runner(loop_factory=factory) as runner:
        loop = runner.get_loop()
        log.info("event loop: %s", type(loop).__module__.split(".")[0])
        return runner.run(main())


def _config_path(args: argparse.Namespace) -> str:
    path: str | None = args.config or os.environ.get("CUTOVER_CONFIG")
    if not path:
        raise UsageError("no configuration file: pass --config FILE or set CUTOVER_CONFIG")
    return path


def _listen(args: argparse.Namespace, cfg_listen: str | None, default: str) -> tuple[str, int]:
    value = args.listen or os.environ.get("CUTOVER_LISTEN") or cfg_listen or default
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None


def summary(cfg: Config, source: str) -> str:
    """The one-screen summary `cutover check` prints. Secrets are named, never shown."""
    lines = [f"{source}: OK"]
    for name, p in cfg.platforms.items():
        extra = []
        if p.host_header:
            extra.append(f"Host {p.host_header}")
        if p.tls_skip_verify:
            extra.append("TLS not verified")
        if p.headers:
            extra.append(f"headers: {', '.join(p.headers)}")
        lines.append(
            f"  {p.role:<9} {name}: {p.base_url}" + (f" ({'; '.join(extra)})" if extra else "")
        )
    lines.append(f"  {len(cfg.checks)} check(s):")
    for c in cfg.checks:
        expect = ", ".join(map(str, c.expect.status)) if c.expect.status else "2xx"
        lines.append(
            f"    {c.name}: {c.method} {c.path} every {format_duration(c.interval)}, "
            f"timeout {format_duration(c.timeout)}, expect {expect}"
            + (" and body match" if c.expect.body_regex else "")
            + (f", record {c.record}" if c.record else "")
        )
    j = cfg.judge
    lines.append(
        f"  judge: window {format_duration(j.window)}, min {j.min_samples} samples, "
        f"confidence {j.confidence:g}, latency <= {j.latency.max_ratio:g}x "
        f"(ignoring < {format_duration(j.latency.min_increase)}), errors <= "
        f"+{j.errors.max_increase * 100:g} pts, down after {j.down_after} failures"
    )
    if cfg.route53:
        for r in cfg.route53.records:
            lines.append(
                f"  route53: {r.name} {r.type or ''} in {r.hosted_zone_id}, every "
                f"{format_duration(cfg.route53.interval)}"
            )
    else:
        lines.append("  route53: not configured (no traffic shares)")
    a = cfg.alerting
    if a and a.slack:
        mode = f"bot token to {a.slack.channel}" if a.slack.token else "incoming webhook"
        lines.append(
            f"  alerting: Slack ({mode}), for {format_duration(a.for_)}, resolve after "
            f"{format_duration(a.resolve_after)}"
        )
    else:
        lines.append("  alerting: no Slack (metrics and rules only)")
    if cfg.shift:
        lines.append(
            f"  shift: {'enabled' if cfg.shift.enabled else 'disabled'}, plan "
            f"{plan_text([float(s) for s in cfg.shift.steps])} on {cfg.shift.record}"
        )
    lines.extend(_traffic_summary(cfg))
    if cfg.ha is not None:
        ha = cfg.ha
        where = ", ".join(
            f"{k} {v}" for k, v in (("region", ha.region), ("endpoint", ha.endpoint_url)) if v
        )
        lines.append(
            f"  ha: vantage {ha.vantage}, table {ha.table}"
            + (f" ({where})" if where else "")
            + f", lease {format_duration(ha.lease)} (renewed every "
            f"{format_duration(ha.lease * RENEW_FRACTION)}, the leader acts until "
            f"{format_duration(ha.lease * SAFE_FRACTION)} after sending its last renew), "
            f"confirm {ha.confirm}, quorum {ha.quorum}"
        )
        lines.append(
            f"    lease item: pk {lease_pk(cfg.ha_migration or '?')}, sk {LEASE_SK}"
            + ("" if ha.migration else " (named after the migrated record)")
        )
    return "\n".join(lines)


def _traffic_summary(cfg: Config) -> list[str]:
    t = cfg.traffic
    if t is None:
        return ["  traffic: not configured (probes only)"]
    groups = ", ".join(g.name for g in t.routes) or "none"
    record = cfg.traffic_record()
    lines = [
        f"  traffic: window {format_duration(t.window or cfg.judge.window)}, min "
        f"{t.min_requests} requests per side, route groups: {groups}"
        + (f", split by {record.name}" if record else "")
    ]
    for name, source in t.named_sources():
        if source.heroku_drain is not None:
            hosts = source.heroku_drain.hosts
            what = "Heroku log drain POSTs to /api/v1/drains/heroku (token set)" + (
                f", hosts {', '.join(hosts)}" if hosts else ""
            )
        elif source.prometheus is not None:
            prom = source.prometheus
            what = (
                f"Prometheus {prom.url} every {format_duration(prom.interval)}, "
                f"preset {prom.preset}"
                + (f", routes by {prom.route_label}" if prom.route_label else "")
                + (f", headers: {', '.join(prom.headers)}" if prom.headers else "")
            )
        elif source.cloudwatch_alb is not None:
            cw = source.cloudwatch_alb
            what = f"CloudWatch {cw.load_balancer} every {format_duration(cw.interval)}"
        else:  # pragma: no cover - the config admits exactly one kind
            what = source.kind
        lines.append(f"    {source.platform}/{name}: {what}")
    return lines


def _duration_flag(given: str | None, flag: str, env: str, default: float) -> float:
    value = given or os.environ.get(env)
    if not value:
        return default
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if seconds <= 0:
        raise UsageError(f"{flag}: {value!r} must be greater than 0")
    return seconds


async def _serve(
    daemon: Daemon,
    host: str,
    port: int,
    *,
    limits: Limits | None = None,
    reload_requires_token: bool = False,
) -> int:
    # more descriptors for probes and connections alike; the HTTP server takes a quarter
    raise_fd_limit()
    try:
        runner, bound = await start_server(
            daemon, host, port, limits=limits, reload_requires_token=reload_requires_token
        )
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
        return EXIT_ERROR
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    await daemon.start()
    # What start-up built (modules, config, app, the checks' state) lives as long as the process:
    # out of the collector's sight, full collections walk only what changes (measured at 1000
    # checks: their pauses fell from 29-49 ms to 19-38 ms, pauses that probes in flight wait out).
    gc.freeze()
    # Young collections cost milliseconds each here however few objects they free, and every
    # tenth leads towards a full one: a collection per 3000 allocations instead of 700 cuts the
    # timing error p99 of probes running during scrapes of 5000 checks from 41 ms to 4.5 ms, and
    # the loop lag p99 from 100 ms to 5 ms (bench/probe), for the same RSS.
    gc.set_threshold(3000, 10, 10)
    log.info(
        "cutover %s listening on http://%s:%d/ (%d checks, %s baseline, %s candidate)",
        __version__,
        host,
        bound,
        len(daemon.config.checks),
        daemon.config.baseline,
        daemon.config.candidate,
    )
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        await daemon.stop()
        await runner.cleanup()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    path = _config_path(args)
    cfg = load_config(path)
    host, port = _listen(args, cfg.listen, DEFAULT_LISTEN)

    allow = args.allow_route53_writes
    if allow is None:
        allow = os.environ.get("CUTOVER_ALLOW_ROUTE53_WRITES", "").lower() in ("1", "true", "yes")
    reload_token = args.reload_requires_token
    if reload_token is None:
        reload_token = _env_bool("CUTOVER_RELOAD_REQUIRES_TOKEN")
    if reload_token and not os.environ.get("CUTOVER_CONTROL_TOKEN"):
        raise UsageError(
            "--reload-requires-token: set CUTOVER_CONTROL_TOKEN to the token POST /-/reload "
            "must carry"
        )
    limits = Limits(
        header_timeout=_duration_flag(
            args.http_header_timeout,
            "--http-header-timeout",
            "CUTOVER_HTTP_HEADER_TIMEOUT",
            DEFAULT_HEADER_TIMEOUT,
        ),
        write_timeout=_duration_flag(
            args.http_write_timeout,
            "--http-write-timeout",
            "CUTOVER_HTTP_WRITE_TIMEOUT",
            DEFAULT_WRITE_TIMEOUT,
        ),
    )

    async def main() -> int:
        daemon = Daemon(cfg, config_path=path, allow_route53_writes=allow, dry_run=args.dry_run)
        return await _serve(daemon, host, port, limits=limits, reload_requires_token=reload_token)

    return _run(args, main)


def cmd_check(args: argparse.Namespace) -> int:
    path = _config_path(args)
    cfg = load_config(path)
    print(summary(cfg, path))
    if args.slack_test:
        return asyncio.run(_slack_test(cfg))
    return EXIT_OK


async def _slack_test(cfg: Config) -> int:
    settings = slack_settings(cfg)
    if settings is None:
        print(
            "cutover: --slack-test: no alerting.slack section in the configuration", file=sys.stderr
        )
        return EXIT_USAGE
    # a throwaway registry and no state_dir: a test message is not part of any outbox
    notifier = Notifier(replace(settings, state_dir=None), registry=CollectorRegistry())
    try:
        await notifier.send_test(
            f"cutover {__version__}: test message. Alerts for {cfg.candidate} (candidate) vs "
            f"{cfg.baseline} (baseline) will arrive here."
        )
    except SlackError as exc:
        print(f"cutover: Slack test failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print("Slack: test message sent")
    return EXIT_OK


def cmd_shift(args: argparse.Namespace) -> int:
    base = _daemon_url(args.url)
    url = f"{base}/api/v1/shift" + ("" if args.action == "status" else f"/{args.action}")
    headers = {"Accept": "application/json"}
    token = os.environ.get("CUTOVER_CONTROL_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = None
    if args.action != "status":
        if not token:
            raise UsageError("set CUTOVER_CONTROL_TOKEN to the daemon's control token")
        headers["Content-Type"] = "application/json"
        body = json.dumps({"reason": args.reason, "who": getpass.getuser()}).encode()
    method = "GET" if body is None else "POST"
    # the scheme is checked above: http(s) only
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            text = json.loads(text).get("error", text)
        print(f"cutover: shift {args.action}: {text}", file=sys.stderr)
        return EXIT_ERROR
    except (urllib.error.URLError, OSError) as exc:
        print(f"cutover: cannot reach the daemon at {base}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(_shift_text(data))
    return EXIT_OK


def _shift_text(data: dict[str, object]) -> str:
    """The shift's status for a person; in a dry run every line starts with DRY RUN."""
    status = data.get("shift", data)
    if not isinstance(status, dict):
        return json.dumps(data, indent=1)
    dry_run = bool(status.get("dry_run"))
    steps = status.get("steps")
    current = status.get("current_step")
    plan = (
        plan_text(
            [float(s) for s in steps if isinstance(s, int | float)],
            current if isinstance(current, int) else None,
        )
        if isinstance(steps, list)
        else "?"
    )
    lines = [
        f"shift of {status.get('record')}: {status.get('state')} ({status.get('mode')} mode)"
        + ("; nothing is written to Route53" if dry_run else ""),
        f"plan {plan}",
    ]
    if status.get("position"):
        lines.append(str(status["position"]))
    if "readiness" in status:
        lines.append(_readiness_line(status["readiness"]))
    if status.get("why"):
        lines.append(f"waiting: {status.get('why')}")
    history = status.get("history")
    if isinstance(history, list) and history and isinstance(history[-1], dict):
        lines.append(f"last: {history[-1].get('reason')}")
    if data.get("result"):
        lines.append(str(data["result"]))
    if dry_run:  # said once, first, on every line
        lines = [f"{DRY_RUN}: {line.replace(f'{DRY_RUN}: ', '')}" for line in lines]
    return "\n".join(lines[:1] + [f"  {line}" for line in lines[1:]])


def _daemon_url(given: str | None) -> str:
    base = (given or os.environ.get("CUTOVER_URL") or "http://127.0.0.1:9877").rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"--url: expected http:// or https://, got {base!r}")
    return base


def cmd_report(args: argparse.Namespace) -> int:
    now = time.time()
    if args.state_dir is not None:
        path = args.config or os.environ.get("CUTOVER_CONFIG")
        cfg = load_config(path) if path else None
        try:
            data = readiness_from_state_dir(Path(args.state_dir), cfg, now)
        except ValueError as exc:
            print(f"cutover: report: {exc}", file=sys.stderr)
            return EXIT_ERROR
    else:
        if args.config is not None:
            raise UsageError("--config goes with --state-dir; a daemon uses its own")
        base = _daemon_url(args.url)
        request = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
            f"{base}/api/v1/readiness", headers={"Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                data = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            print(f"cutover: report: {base} answered {exc.code} {exc.reason}", file=sys.stderr)
            return EXIT_ERROR
        except (urllib.error.URLError, OSError, ValueError) as exc:
            print(f"cutover: cannot read the readiness of {base}: {exc}", file=sys.stderr)
            return EXIT_ERROR
    print(render(data, args.format, now), end="")
    return EXIT_OK


def _readiness_line(readiness: object) -> str:
    """readiness: WAIT: 12 more minutes; 310 more candidate requests on traffic:all"""
    if not isinstance(readiness, dict) or not readiness.get("verdict"):
        return "readiness: not judged yet"
    reasons = readiness.get("reasons")
    said = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else ""
    return f"readiness: {readiness['verdict']}" + (f": {said}" if said else "")


def cmd_ha_init(args: argparse.Namespace) -> int:
    path = _config_path(args)
    cfg = load_config(path)
    if cfg.ha is None:
        print(f"cutover: ha init: {path} has no ha section", file=sys.stderr)
        return EXIT_USAGE
    ha = cfg.ha
    if args.print:
        print(dynamo.create_table_command(ha.table, ha.region, ha.endpoint_url), end="")
        return EXIT_OK
    credentials: Any = None
    try:
        client, credentials = dynamo.make_client(
            ha.region, ha.endpoint_url, timeout=10.0, max_attempts=3
        )
        ready = dynamo.create_table(client, ha.table)
    except Exception as exc:  # every failure is said in one line, without a secret
        error = dynamo.classify(exc, aws.credential_secrets(credentials))
        print(f"cutover: ha init: cannot create table {ha.table}: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(ready.text())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    host, port = _listen(args, None, "127.0.0.1:9877")
    return _run(args, lambda: run_demo(host, port, _serve))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command not in ("check", "shift", "report", "ha"):
            setup_logging(
                args.log_level or _env_choice("CUTOVER_LOG_LEVEL", LOG_LEVELS, "info"),
                args.log_format or _env_choice("CUTOVER_LOG_FORMAT", LOG_FORMATS, "text"),
            )
        if args.command == "run":
            return cmd_run(args)
        if args.command == "check":
            return cmd_check(args)
        if args.command == "shift":
            return cmd_shift(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "ha":
            return cmd_ha_init(args)
        return cmd_demo(args)
    except ConfigError as exc:
        print(f"cutover: invalid configuration {exc.source}:", file=sys.stderr)
        for line in exc.details:
            print(f"  {line}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"cutover: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StateDirError as exc:
        print(f"cutover: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
