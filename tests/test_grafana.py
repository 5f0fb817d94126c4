"""grafana/: the dashboard's structure, its provisioning files, and every query against a live
Prometheus that scrapes a running daemon with rules/ loaded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
import trustme
import yaml
from aiohttp import web
from moto.server import ThreadedMotoServer

from tests import logplex as lp
from tests.conftest import (
    FAKE_AWS,
    ROOT,
    DaemonProcess,
    FakePlatform,
    daemon_env,
    free_port,
    need_tool,
)
from tests.prometheus_live import Prometheus
from tests.test_route53_daemon import set_weights

DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
OVERVIEW = ROOT / "grafana" / "dashboards" / "cutover-overview.json"
RULES = ROOT / "rules" / "cutover.rules.yml"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}

# Metrics of SPEC.md that the daemon does not export yet (none now). Queries over them must still
# parse and evaluate, but may return nothing; the live test fails as soon as one of them has data,
# so that the set never hides a panel that stopped working.
NOT_YET_EXPORTED: set[str] = set()


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every Prometheus annotation."""
    out = []
    for panel in all_panels(dashboard):
        for t in panel.get("targets", []):
            out.append((f"panel {panel['id']} {panel['title']!r} {t['refId']}", t["expr"]))
    return out


def annotation_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"annotation {a['name']!r}", a["expr"])
        for a in dashboard["annotations"]["list"]
        if "expr" in a
    ]


# -- structure ------------------------------------------------------------------------------------


def test_there_is_an_overview_dashboard() -> None:
    assert OVERVIEW in DASHBOARDS
    d = load(OVERVIEW)
    assert d["uid"] == "cutover-overview"
    assert d["title"] == "cutover / migration overview"


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_structure(path: Path) -> None:
    d = load(path)
    assert "__inputs" not in d and "__requires" not in d, "export for sharing externally: off"
    assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]), d["uid"]
    assert d.get("id") is None, "a provisioned dashboard must not carry a database id"

    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert variables["check"]["type"] == "query"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == DATASOURCE_REF, v["name"]

    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"

    for panel in all_panels(d):
        where = f"panel {panel['id']} {panel.get('title')!r}"
        assert panel.get("title"), where
        if panel["type"] == "row":
            assert panel["gridPos"]["w"] == 24 and panel["gridPos"]["h"] == 1, where
            continue
        assert panel["datasource"] == DATASOURCE_REF, where
        assert panel["targets"], where
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for t in panel["targets"]:
            assert t["datasource"] == DATASOURCE_REF, where
            assert t["expr"].strip(), where
        assert panel.get("description"), f"{where}: say what it shows"
    for a in d["annotations"]["list"]:
        if not a.get("builtIn"):
            assert a["datasource"] == DATASOURCE_REF, a["name"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_grid_is_sane(path: Path) -> None:
    d = load(path)
    boxes = []
    for panel in d["panels"]:  # top level: Grafana lays out these; collapsed ones are hidden
        g = panel["gridPos"]
        where = f"panel {panel['id']} {panel['title']!r}"
        assert all(isinstance(g[k], int) for k in "xywh"), where
        assert g["x"] >= 0 and g["y"] >= 0 and g["h"] >= 1 and 1 <= g["w"] <= 24, where
        assert g["x"] + g["w"] <= 24, f"{where} is wider than the grid"
        boxes.append((where, g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1 :]:
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{a} overlaps {b}"
    # in reading order, so that the file reads like the screen
    order = [(p["gridPos"]["y"], p["gridPos"]["x"]) for p in d["panels"]]
    assert order == sorted(order)


def test_overview_shows_what_the_issue_asks_for() -> None:
    d = load(OVERVIEW)
    exprs = "\n".join(e for _, e in queries(d))
    for metric in (
        "cutover_route53_traffic_share",
        "cutover_window_latency_seconds",
        "cutover_window_error_ratio",
        "cutover_latency_ratio",
        "cutover_error_ratio_delta",
        "cutover_regression",
        "cutover_alert_firing",
        "cutover_probe_phase_seconds",
        "cutover_probe_tls_expiry_timestamp_seconds",
        "cutover_expected_error_ratio",
        "cutover_readiness",
        "cutover_step_start_timestamp_seconds",
    ):
        assert metric in exprs, metric
    # the decision comes first: the readiness row tops the dashboard
    assert d["panels"][0]["type"] == "row" and "Go / no-go" in d["panels"][0]["title"]
    # the judge's thresholds are drawn on the ratio panels
    assert "vector($latency_max_ratio)" in exprs and "vector($errors_max_increase)" in exprs
    stacked = [
        p
        for p in all_panels(d)
        if "cutover_route53_traffic_share{" in json.dumps(p.get("targets", []))
        and p["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {}).get("mode")
        == "normal"
    ]
    assert stacked, "traffic share over time, stacked per platform"
    annotations = "\n".join(e for _, e in annotation_queries(d))
    assert "ALERTS" in annotations and "cutover_alert_firing" in annotations
    assert "cutover_step_start_timestamp_seconds" in annotations  # weight changes: new steps
    # generic over platform names
    assert not re.search(r"heroku|aws", json.dumps(d["panels"]))


def test_provisioning_files() -> None:
    prov = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/cutover.yml").read_text())
    (provider,) = prov["providers"]
    assert prov["apiVersion"] == 1 and provider["type"] == "file"
    assert provider["folder"] and provider["options"]["path"].startswith("/")
    ds = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/prometheus.example.yml").read_text()
    )
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["url"].startswith("http")


# -- live: a real Prometheus scrapes a running daemon ---------------------------------------------


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variable interpolation, for $name and ${name}: an unknown one is an error."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise AssertionError(f"no value for ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def not_yet(expr: str) -> set[str]:
    return {m for m in NOT_YET_EXPORTED if re.search(rf"\b{m}\b", expr)}


class LivePlatform(FakePlatform):
    """A FakePlatform whose `fail_paths` always answer 503."""

    fail_paths: set[str]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path in self.fail_paths:
            self.hits += 1
            return web.Response(status=503, text="unavailable")
        return await super().handle(request)


async def serve(handler: Any, ssl_context: ssl.SSLContext | None = None) -> tuple[Any, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    return runner, port


async def slack_standin(request: web.Request) -> web.Response:
    """Just enough of Slack's Web API: every method succeeds."""
    ts = f"{time.time():.6f}"
    return web.json_response(
        {"ok": True, "channel": "C0MIGRATION", "ts": ts, "message": {"ts": ts}}
    )


@pytest.fixture
def moto_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """moto's Route53 on 127.0.0.1 with a weighted record: heroku 75, aws 25."""
    for key, value in FAKE_AWS.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("route53", endpoint_url=url)
    zid = client.create_hosted_zone(Name="example.com", CallerReference="grafana-test")[
        "HostedZone"
    ]["Id"].rsplit("/", 1)[-1]
    client.change_resource_record_sets(
        HostedZoneId=zid,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": "api.example.com", "Type": "CNAME", "SetIdentifier": sid,
                        "Weight": weight, "TTL": 60, "ResourceRecords": [{"Value": target}],
                    },
                }
                for sid, weight, target in (
                    ("heroku", 75, "myapp.herokuapp.com"), ("aws", 25, "lb.elb.amazonaws.com"),
                )
            ]
        },
    )  # fmt: skip
    yield url, zid
    server.stop()


# both platforms' users, as Heroku log drains carry them (the candidate's through a drain too:
# the panels only need each platform's requests, whatever the source)
DRAINS = {"heroku": "grafana-drain-heroku-0123", "aws": "grafana-drain-aws-456789"}


async def feed_traffic(url: str, stop: asyncio.Event) -> None:
    """40 requests a second per platform over two route groups, 1 in 20 of the candidate's a 503."""
    n = 0
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            now = time.time()
            for platform, token in DRAINS.items():
                lines = []
                for i in range(20):
                    n += 1
                    path = "/v1/orders/7?x=1" if i % 2 else "/health"
                    bad = platform == "aws" and n % 20 == 0
                    lines.append(lp.router_line(now, path=path, status=503 if bad else 200))
                async with s.post(
                    url + "/api/v1/drains/heroku",
                    data=lp.body(lines),
                    headers=lp.headers(token, frame_id=f"{platform}-{n}", count=len(lines)),
                ) as r:
                    assert r.status == 204, await r.text()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


@pytest.fixture
async def live_stack(
    tmp_path: Path, moto_zone: tuple[str, str]
) -> AsyncIterator[tuple[Prometheus, DaemonProcess]]:
    """The daemon probing an http baseline and an https candidate (whose `orders` check always
    fails), reading moto's Route53, posting to a Slack stand-in; Prometheus scraping it."""
    prometheus_bin = need_tool("prometheus")
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.example.test").configure_cert(server_ctx)

    baseline, candidate = LivePlatform(), LivePlatform(delay=0.01)
    baseline.fail_paths, candidate.fail_paths = set(), {"/orders"}
    runners = []
    runner, baseline.port = await serve(baseline.handle)
    runners.append(runner)
    runner, candidate.port = await serve(candidate.handle, server_ctx)
    runners.append(runner)
    runner, slack_port = await serve(slack_standin)
    runners.append(runner)

    endpoint, zid = moto_zone
    config = tmp_path / "cutover.yml"
    config.write_text(f"""\
state_dir: {tmp_path / "state"}
platforms:
  heroku:
    role: baseline
    base_url: {baseline.url}
  aws:
    role: candidate
    base_url: https://127.0.0.1:{candidate.port}
    host_header: api.example.test
checks:
  - name: health
    path: /health
    interval: 200ms
    timeout: 150ms
  - name: orders
    path: /orders
    interval: 200ms
    timeout: 150ms
route53:
  interval: 1s
  endpoint_url: {endpoint}
  records:
    - hosted_zone_id: {zid}
      name: api.example.com
      type: CNAME
      set_identifiers: {{heroku: heroku, aws: aws}}
judge:
  window: 30s
  min_samples: 5
shift:
  enabled: false
  record: api.example.com
  steps: [10, 100]
  hold: 1s
  ttl_margin: 0s
  min_samples: 3
alerting:
  for: 1s
  resolve_after: 2s
  slack:
    token: xoxb-not-a-real-token
    channel: "#migration"
    api_url: http://127.0.0.1:{slack_port}/api/
traffic:
  min_requests: 20
  routes: [{{name: orders, path_regex: '^/v1/orders'}}]
  sources:
    - platform: heroku
      heroku_drain: {{token: {DRAINS["heroku"]}}}
    - platform: aws
      name: aws_drain
      heroku_drain: {{token: {DRAINS["aws"]}}}
""")
    daemon = DaemonProcess(
        config, free_port(), tmp_path / "daemon.log", daemon_env(SSL_CERT_FILE=str(ca_file))
    )
    prometheus = None
    try:
        await daemon.wait_ready()
        prometheus = Prometheus(
            prometheus_bin, tmp_path / "prometheus", f"127.0.0.1:{daemon.port}", [RULES]
        )
        await prometheus.wait_ready()
        stop = asyncio.Event()
        feeder = asyncio.create_task(feed_traffic(daemon.url, stop))
        try:
            yield prometheus, daemon
        finally:
            stop.set()
            await feeder
    finally:
        if prometheus is not None:
            prometheus.stop()
        daemon.stop()
        for runner in runners:
            await runner.cleanup()


async def test_every_panel_query_returns_data_and_every_rule_evaluates(
    live_stack: tuple[Prometheus, DaemonProcess], moto_zone: tuple[str, str]
) -> None:
    prometheus, daemon = live_stack
    moto_endpoint, zid = moto_zone
    d = load(OVERVIEW)
    values = {
        "instance": f"127.0.0.1:{daemon.port}",
        "check": ".+",  # "All", as the variables' allValue
        "datasource": "prometheus",
        "__rate_interval": "1m",
        "__interval": "15s",
        "__range": "5m",
    }
    values.update(
        {v["name"]: v["query"] for v in d["templating"]["list"] if v["type"] == "textbox"}
    )
    values["route"] = ".+"
    panel_queries = [(w, substitute(e, values)) for w, e in queries(d)]
    expected = [(w, e) for w, e in panel_queries if not not_yet(e)]
    assert len(expected) >= 20, "most panels must show data today"
    # a weight change once the split has seen the first weights, so that its lag has a value
    deadline = time.monotonic() + 30
    while True:
        _, text = await daemon.get("/api/v1/status")
        split = json.loads(text)["traffic"]["split"]
        if split is not None and split["weights"] == {"heroku": 0.75, "aws": 0.25}:
            break
        assert time.monotonic() < deadline, f"the split never saw the weights: {split}"
        await asyncio.sleep(0.5)
    set_weights(boto3.client("route53", endpoint_url=moto_endpoint), zid, {"heroku": 50, "aws": 50})

    # wait until every panel that can show data does (scrapes and rules run every second)
    deadline = time.monotonic() + 40
    while True:
        answers = {e: await prometheus.query(e) for _, e in panel_queries}
        empty = [(w, e) for w, e in expected if not answers[e]["data"]["result"]]
        rules = await prometheus.rules()
        unevaluated = [r["name"] for r in rules if r["health"] == "unknown"]
        if not empty and not unevaluated:
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                "no data for:\n"
                + "\n".join(f"  {w}: {e}" for w, e in empty)
                + f"\nrules never evaluated: {unevaluated}\n"
                + f"targets: {await prometheus.api_get('targets')}\n{prometheus.log()}"
            )
        await asyncio.sleep(1)

    for where, expr in panel_queries:
        answer = answers[expr]
        assert answer["status"] == "success", f"{where}: {expr}: {answer.get('error')}"
    for where, expr in annotation_queries(d):
        answer = await prometheus.query(substitute(expr, values))
        assert answer["status"] == "success", f"{where}: {expr}: {answer.get('error')}"

    # the variables' own queries (Grafana's label_values(selector, label))
    for v in d["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), *(\w+)\)", v["query"]["query"])
        assert m, v["query"]
        selector = substitute(m.group(1), values)
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"{prometheus.url}/api/v1/label/{m.group(2)}/values", params={"match[]": selector}
            ) as r,
        ):
            got = (await r.json())["data"]
        want = {
            "instance": [values["instance"]],
            "check": ["health", "orders"],
            "route": ["all", "orders", "other"],
        }[v["name"]]
        assert got == want, f"variable {v['name']}: {v['query']['query']}"

    # every rule evaluates without error (alerting and recording), all of rules/ loaded
    rules = await prometheus.rules()
    file_rules = [
        r.get("alert") or r.get("record")
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
    ]
    assert sorted(r["name"] for r in rules) == sorted(file_rules)
    bad = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    # the recording rules that the dashboard and the alerts build on produce data here
    for record in (
        "check_quantile:cutover_probe_duration_seconds:candidate_over_baseline",
        "check_platform_role:cutover_probe_failures:ratio_rate1m",
        "platform_role:cutover_route53_traffic_share:max",
    ):
        assert (await prometheus.query(record))["data"]["result"], record

    # a metric listed as not exported yet that has data now must leave NOT_YET_EXPORTED
    landed = [m for m in sorted(NOT_YET_EXPORTED) if (await prometheus.query(m))["data"]["result"]]
    assert not landed, f"exported now: remove {landed} from NOT_YET_EXPORTED in {__file__}"
    assert daemon.proc.poll() is None
