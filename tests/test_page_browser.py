"""The status page in a real browser: Debian's headless Chromium loads it from a running daemon.

Checks the rendered DOM (`--dump-dom`: the banner, an inline SVG chart per check, the overview
table) and saves a screenshot under the test's temp dir (a CI artifact).
"""

from __future__ import annotations

import asyncio
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import boto3

from exporter.judging.vantage import next_report
from exporter.store import dynamo
from exporter.store.vantage_board import DynamoVantageBoard
from tests.conftest import DaemonProcess, FakePlatform, need_tool
from tests.test_page import text_of
from tests.test_route53_daemon import NAME, Moto, moto, route53_config, zone

__all__ = ["moto"]  # the fixture, imported for pytest

Start = Callable[..., DaemonProcess]
SVG = "{http://www.w3.org/2000/svg}"


async def chromium(*args: str, timeout: float = 120.0) -> str:
    """Run headless Chromium off the event loop (the platforms are served from it)."""
    path = need_tool("chromium")
    proc = await asyncio.create_subprocess_exec(
        path,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def test_the_page_in_headless_chromium(
    platforms: tuple[FakePlatform, FakePlatform],
    moto: Moto,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    need_tool("chromium")
    baseline, candidate = platforms
    baseline.delay, candidate.delay = 0.01, 0.03
    _, zid = zone(moto, {"heroku": 90, "aws": 10})
    extra = "  - name: orders\n    path: /orders\n    interval: 200ms\n    timeout: 150ms\n"
    config = route53_config(platforms, moto, zid).replace("judge:\n", extra + "judge:\n", 1)
    d = start_daemon(config)
    await d.wait_ready()
    share = f'cutover_route53_traffic_share{{hosted_zone="{zid}",platform="aws",record="{NAME}"}}'
    await d.wait_for(lambda m: m.get(share) == 0.1)

    dom = await chromium("--dump-dom", f"{d.url}/")
    words = text_of(dom)
    # the banner: the record, grey until a verdict exists, with the weights Route53 holds
    banner = re.search(r'<section class="banner (b-\w+)">(.*?)</section>', dom, flags=re.S)
    assert banner is not None, dom[:2000]
    assert banner.group(1) == "b-grey"
    said = text_of(banner.group(2))
    assert said.startswith(f"not judged yet {NAME}"), said
    assert "Route53 now: aws 10% · heroku 90%" in said
    # the overview: one row per check, in the order configured
    overview = re.search(r'<table class="overview">(.*?)</table>', dom, flags=re.S)
    assert overview is not None
    rows = re.findall(r"<tr.*?</tr>", overview.group(1), flags=re.S)
    assert [text_of(r).split(" ")[0] for r in rows[1:]] == ["health", "orders"]
    assert "heroku p95" in text_of(rows[0]) and "error increase" in text_of(rows[0])
    # the charts: inline SVG, two a check, each with drawn paths and parseable as XML
    charts = [ET.fromstring(s) for s in re.findall(r"<svg\b.*?</svg>", dom, flags=re.S)]
    labels = [c.get("aria-label") for c in charts]
    for check in ("health", "orders"):
        assert f"{check}: latency p50 and p95 per minute" in labels
        assert f"{check}: error ratio per minute" in labels
    for chart in charts:
        paths = [p.get("d") for p in chart.iter(f"{SVG}path")]
        assert paths and all(d and d.startswith("M") for d in paths), paths
    assert "<script" not in dom
    assert "Incident history" in words and "Checks" in words

    shot = tmp_path / "status.png"
    await chromium(f"--screenshot={shot}", "--window-size=1280,2000", f"{d.url}/")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert d.stop() == 0


async def ha_replica(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_daemon: Start
) -> DaemonProcess:
    """A daemon with `ha` (vantage eu-west-1) whose table also holds a report of us-east-1,
    written 30 s ago and not since; returned once it leads and has combined both."""
    client = boto3.client("dynamodb", endpoint_url=moto.url)
    dynamo.create_table(client, "cutover-ha", poll=0.1)
    _, zid = zone(moto, {"heroku": 90, "aws": 10})
    config = route53_config(platforms, moto, zid) + (
        "ha: {vantage: eu-west-1, table: cutover-ha, region: us-east-1, "
        f"endpoint_url: '{moto.url}', lease: 3s, migration: browser}}\n"
    )
    calls = dynamo.Calls(region="us-east-1", endpoint_url=None, timeout=5.0, client=client)
    other = DynamoVantageBoard(
        table="cutover-ha", migration="browser", vantage="us-east-1", writer="t", calls=calls
    )
    await other.publish(next_report(None, "us-east-1", time.time() - 30.0, {}))
    other.close()
    d = start_daemon(config)
    await d.wait_ready()
    await d.wait_for(lambda m: m.get('cutover_ha_vantage_healthy{vantage="us-east-1"}') == 0.0)
    return d


def vantages_seen(dom: str) -> tuple[list[str], str]:
    """The Vantages section's rows and its reasons to wait, as a reader sees them."""
    table = re.search(r"<table class=[\"']vantages[\"']>(.*?)</table>", dom, flags=re.S)
    assert table is not None, dom[:3000]
    rows = [text_of(r) for r in re.findall(r"<tr.*?</tr>", table.group(1), flags=re.S)]
    reasons = re.search(r"<ul class=[\"']vantage-reasons[\"']>(.*?)</ul>", dom, flags=re.S)
    return rows, text_of(reasons.group(1)) if reasons is not None else ""


async def test_the_vantages_in_headless_chromium(
    platforms: tuple[FakePlatform, FakePlatform],
    moto: Moto,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    """An HA replica's page: each vantage with its health and last report's age; a silent one
    dropped out, and the steps waiting for it."""
    need_tool("chromium")
    d = await ha_replica(platforms, moto, start_daemon)
    dom = await chromium("--dump-dom", f"{d.url}/")
    rows, reasons = vantages_seen(dom)
    assert rows[0] == "vantage health last report round impaired for"
    assert re.fullmatch(r"eu-west-1 \(this replica\) healthy \d+ s ago \d+ –", rows[1]), rows
    assert re.fullmatch(r"us-east-1 silent: dropped out \d+ s ago 1 –", rows[2]), rows
    assert reasons.startswith("only 1 of 2 vantages healthy (us-east-1 silent for "), reasons

    shot = tmp_path / "vantages.png"
    await chromium(f"--screenshot={shot}", "--window-size=1280,1200", f"{d.url}/")
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert d.stop() == 0
