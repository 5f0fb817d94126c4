"""/metrics keeps Prometheus' conventions with every feature on: promtool finds nothing to say
about a live scrape, and the rules and the dashboard select only labels the daemon exports."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families

from tests import logplex as lp
from tests.conftest import ROOT, DaemonProcess, FakePlatform, daemon_env, free_port, need_tool
from tests.slack_standin import SlackStandIn

TOKEN = "xoxb-lint-secret-token-5678"
RECORD = "api.example.com"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
# families that only have series when their feature is configured and has happened: the scrape
# the linter reads must hold them all, or it proves nothing about them
MUST_HAVE = (
    "cutover_probe_success",
    "cutover_probe_failures_total",
    "cutover_window_latency_seconds",
    "cutover_latency_ratio",
    "cutover_expected_error_ratio",
    "cutover_regression",
    "cutover_alert_firing",
    "cutover_route53_weight",
    "cutover_route53_traffic_share",
    "cutover_route53_last_success_timestamp_seconds",
    "cutover_notifications_total",
    "cutover_notifications_pending",
    "cutover_shift_state",
    "cutover_shift_dry_run",
    "cutover_shift_target_share",
    "cutover_event_loop_lag_seconds_bucket",
    "cutover_build_info",
    "cutover_traffic_requests_total",
    "cutover_traffic_responses_total",
    "cutover_traffic_router_errors_total",
    "cutover_traffic_window_requests",
    "cutover_traffic_window_error_ratio",
    "cutover_traffic_window_latency_seconds",
    "cutover_traffic_source_up",
    "cutover_traffic_source_last_success_timestamp_seconds",
    "cutover_traffic_measured_share",
    "cutover_traffic_split_diverged",
    "cutover_traffic_drain_lines_total",
    "cutover_traffic_drain_posts_total",
    "cutover_readiness",
    "cutover_step_start_timestamp_seconds",
)
# real traffic through two drains, one per platform (tokens are secrets: never in a scrape)
DRAINS = {"heroku": "lint-drain-heroku-token-01", "aws": "lint-drain-aws-token-0234"}


class FailingPaths(FakePlatform):
    """A FakePlatform whose `fail_paths` always answer 503."""

    fail_paths: frozenset[str] = frozenset()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path in self.fail_paths:
            self.hits += 1
            return web.Response(status=503, text="unavailable")
        return await super().handle(request)


async def serve(platform: FakePlatform) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", platform.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    platform.port = free_port()
    await web.TCPSite(runner, "127.0.0.1", platform.port).start()
    return runner


def weighted_zone(r53: Any) -> str:
    zid: str = r53.create_hosted_zone(Name="example.com", CallerReference=f"lint-{free_port()}")[
        "HostedZone"
    ]["Id"].rsplit("/", 1)[-1]
    r53.change_resource_record_sets(
        HostedZoneId=zid,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": RECORD, "Type": "CNAME", "SetIdentifier": sid, "Weight": weight,
                        "TTL": 1, "ResourceRecords": [{"Value": target}],
                    },
                }
                for sid, weight, target in (
                    ("heroku", 90, "myapp.herokuapp.com"), ("aws", 10, "lb.elb.amazonaws.com"),
                )
            ]
        },
    )  # fmt: skip
    return zid


def full_config(
    baseline: FakePlatform, candidate: FakePlatform, moto_url: str, zid: str, slack: SlackStandIn,
    state_dir: Path,
) -> str:  # fmt: skip
    checks = "".join(
        f"""\
  - name: {name}
    path: /{name}
    interval: 200ms
    timeout: 150ms
    record: {RECORD}
"""
        for name in ("health", "orders", "search")
    )
    return f"""\
state_dir: {state_dir}
platforms:
  heroku:
    role: baseline
    base_url: {baseline.url}
  aws:
    role: candidate
    base_url: {candidate.url}
    host_header: {RECORD}
    headers: {{X-Probe-Secret: "${{PROBE_SECRET}}"}}
checks:
{checks}judge:
  window: 20s
  min_samples: 5
  down_after: 3
route53:
  interval: 500ms
  timeout: 2s
  endpoint_url: {moto_url}
  records:
    - hosted_zone_id: {zid}
      name: {RECORD}
      type: CNAME
      set_identifiers: {{heroku: heroku, aws: aws}}
shift:
  enabled: true
  record: {RECORD}
  steps: [25, 50, 100]
  hold: 1s
  ttl_margin: 0s
  min_samples: 3
  rollback_to: 0
alerting:
  for: 1s
  resolve_after: 2s
  slack:
    token: {TOKEN}
    channel: "#migration"
    api_url: {slack.url}
traffic:
  min_requests: 10
  routes: [{{name: orders, path_regex: '^/orders'}}]
  sources:
    - platform: heroku
      heroku_drain: {{token: {DRAINS["heroku"]}}}
    - platform: aws
      name: aws_drain
      heroku_drain: {{token: {DRAINS["aws"]}}}
"""


async def post_traffic(daemon: DaemonProcess) -> None:
    """A second of each platform's users 20 s ago (a drain counts its lines as delivered 10 s
    after they arrive): 30 requests over two route groups and an H12."""
    now = time.time()
    async with aiohttp.ClientSession() as s:
        for platform, token in DRAINS.items():
            lines = [
                lp.router_line(now - 20, path="/orders/1?q=x" if i % 2 else "/health")
                for i in range(30)
            ] + [lp.error_line(now - 20, path="/orders/9")]
            async with s.post(
                daemon.url + "/api/v1/drains/heroku",
                data=lp.body(lines),
                headers=lp.headers(token, frame_id=f"lint-{platform}-{now}", count=len(lines)),
            ) as r:
                assert r.status == 204, await r.text()


@pytest.fixture
async def full_daemon(
    tmp_path: Path, moto_url: str, r53: Any
) -> AsyncIterator[tuple[DaemonProcess, SlackStandIn]]:
    """The daemon with every feature configured: two platforms, three checks (the candidate's
    `orders` always fails: a `down` incident fires), Route53 from moto's server, a shift plan
    (no --allow-route53-writes: a dry run), Slack to the local stand-in."""
    baseline, candidate = FailingPaths(), FailingPaths()
    candidate.fail_paths = frozenset({"/orders"})
    runners = [await serve(baseline), await serve(candidate)]
    slack = SlackStandIn(token=TOKEN, channels={"#migration": "C0MIGR"})
    await slack.start()
    config = tmp_path / "cutover.yml"
    config.write_text(
        full_config(baseline, candidate, moto_url, weighted_zone(r53), slack, tmp_path / "state")
    )
    daemon = DaemonProcess(config, free_port(), tmp_path / "daemon.log", daemon_env())
    try:
        await daemon.wait_ready()
        await post_traffic(daemon)
        yield daemon, slack
    finally:
        daemon.stop()
        await slack.stop()
        for runner in runners:
            await runner.cleanup()


async def scrape_with_every_family(daemon: DaemonProcess, timeout: float = 30.0) -> None:
    """Wait until the incident fired and was posted, Route53 was read and the shift decided."""
    deadline = time.monotonic() + timeout
    while True:
        _, text = await daemon.get("/metrics")
        missing = [f for f in MUST_HAVE if not re.search(rf"^{f}[{{ ]", text, re.MULTILINE)]
        fired = 'cutover_alert_firing{check="orders",signal="down"} 1.0' in text
        posted = 'cutover_notifications_total{channel="#migration"} 0.0' not in text
        if not missing and fired and posted:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"missing {missing}, fired {fired}, posted {posted}:\n{text}\n{daemon.log()[-3000:]}"
            )
        await asyncio.sleep(0.2)


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    promtool = need_tool("promtool")
    return subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )


async def test_a_live_scrape_with_every_feature_passes_promtool(
    full_daemon: tuple[DaemonProcess, SlackStandIn],
) -> None:
    daemon, slack = full_daemon
    need_tool("promtool")
    await scrape_with_every_family(daemon)
    assert slack.message_calls("chat.postMessage")  # the incident was posted: its families count

    _, text = await daemon.get("/metrics", headers={"Accept": "text/plain"})
    res = promtool_check_metrics(text)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", ""), res.stdout + res.stderr
    # the window quantiles are there, under a label promtool does not reserve
    assert (
        'cutover_window_latency_seconds{check="health",platform="aws",q="0.95",role="candidate"}'
        in text
    )
    assert 'cutover_latency_ratio{check="health",q="0.5"}' in text

    _, om = await daemon.get("/metrics", headers={"Accept": OPENMETRICS})
    assert om.endswith("# EOF\n")
    # promtool reads the text format only (prometheus/prometheus#8932, open): the `x_total` and
    # `x_created` samples of an OpenMetrics counter `x` look to it like families without HELP.
    # Exactly those are its complaints about the OpenMetrics scrape; any other (a label, a
    # suffix, a type) is ours. The strict OpenMetrics parser reads the scrape whole.
    families = list(om_parser.text_string_to_metric_families(om))
    misread = {
        f"{s.name} no help text"
        for f in families
        for s in f.samples
        if s.name in (f"{f.name}_created", f"{f.name}_total" if f.type == "counter" else "")
    }
    assert "cutover_probes_total no help text" in misread
    res = promtool_check_metrics(om)
    assert res.stdout == ""
    assert res.returncode == 3 and set(res.stderr.splitlines()) == misread, res.stderr
    # the same families in both formats (client_python writes `x_created` as a gauge in text)
    in_text = {f.name for f in text_string_to_metric_families(text)}
    assert {f.name for f in families} == {n for n in in_text if not n.endswith("_created")}
    assert TOKEN not in text + om
    for token in DRAINS.values():
        assert token not in text + om


# -- what the rules and the dashboard select exists ---------------------------------------------

SELECTOR = re.compile(r"\b(cutover_[a-z_]+)\{([^{}]*)\}")
MATCHER = re.compile(
    r"""\s*([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*(?:"(?:[^"\\]|\\.)*"|%q|\$\w+)\s*,?"""
)
LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# labels Prometheus adds at scrape time
TARGET_LABELS = {"job", "instance"}


def exported_labels(text: str) -> dict[str, set[str]]:
    """Sample name -> the label names its series carry in the scrape."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        name = name.split(" ")[0]
        labels = set(re.findall(r'(\w+)="(?:[^"\\]|\\.)*"', rest)) if rest else set()
        out.setdefault(name, set()).update(labels)
    return out


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def selectors(text: str) -> Iterator[tuple[str, list[str]]]:
    """(metric, its matchers' label names) for every `cutover_x{...}` selector in a PromQL
    expression or a template."""
    for m in SELECTOR.finditer(text):
        body = m.group(2)
        names = [n.group(1) for n in MATCHER.finditer(body)]
        assert MATCHER.sub("", body).strip() == "", f"cannot read the matchers of {m.group(0)!r}"
        yield m.group(1), names


def where_selectors(exported: dict[str, set[str]]) -> list[str]:
    """Every selector of an exported metric in rules/ and grafana/ naming a label it lacks."""
    problems = []
    sources: list[tuple[str, Any]] = [
        ("rules/cutover.rules.yml", yaml.safe_load((ROOT / "rules/cutover.rules.yml").read_text())),
        ("rules/cutover.test.yml", yaml.safe_load((ROOT / "rules/cutover.test.yml").read_text())),
    ]
    for path in sorted((ROOT / "grafana/dashboards").glob("*.json")):
        sources.append((str(path.relative_to(ROOT)), json.loads(path.read_text())))
    for where, doc in sources:
        for text in strings(doc):
            for metric, names in selectors(text):
                if metric not in exported:
                    continue  # recording rules, and families a scrape may lack (tls expiry)
                unknown = set(names) - exported[metric] - TARGET_LABELS
                if unknown:
                    problems.append(f"{where}: {metric} has no label {sorted(unknown)}")
    return problems


def where_legends(exported: dict[str, set[str]]) -> list[str]:
    """Legends of panels that plot an exported metric as it is: `{{label}}` must be one of its."""
    problems = []
    for path in sorted((ROOT / "grafana/dashboards").glob("*.json")):
        top = json.loads(path.read_text())["panels"]
        for panel in [*top, *(p for row in top for p in row.get("panels", []))]:
            for target in panel.get("targets", []):
                m = SELECTOR.fullmatch(target.get("expr", "").strip())
                if m is None or m.group(1) not in exported:
                    continue
                used = set(LEGEND.findall(target.get("legendFormat", "")))
                unknown = used - exported[m.group(1)] - TARGET_LABELS
                if unknown:
                    problems.append(f"{path.name}: {panel['title']}: legend {sorted(unknown)}")
    return problems


async def test_rules_and_dashboard_select_only_exported_labels(
    full_daemon: tuple[DaemonProcess, SlackStandIn],
) -> None:
    daemon, _ = full_daemon
    await scrape_with_every_family(daemon)
    _, text = await daemon.get("/metrics")
    exported = exported_labels(text)
    assert where_selectors(exported) == []
    assert where_legends(exported) == []
    assert exported["cutover_latency_ratio"] == {"check", "q"}
    # the reading above finds what it looks for: a gauge still selected by `quantile` is caught
    stale = {**exported, "cutover_latency_ratio": {"check", "quantile"}}
    assert where_selectors(stale) and where_legends(stale)
