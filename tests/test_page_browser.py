"""The status page in a real browser: Debian's headless Chromium loads it from a running daemon.

Checks the rendered DOM (`--dump-dom`: the banner, an inline SVG chart per check, the overview
table) and saves a screenshot under the test's temp dir (a CI artifact).
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

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
