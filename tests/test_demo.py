"""`cutover demo`: what a newcomer runs first works with no AWS account and no Slack workspace."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.conftest import ROOT, daemon_env, free_port, parse_metrics


async def test_demo_serves_both_platforms_shares_and_the_status_page(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "demo.log").open("wb")
    env = daemon_env()
    for key in [k for k in env if k.startswith("AWS_")]:
        del env[key]  # the demo needs no AWS credentials at all
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--listen", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        metrics: dict[str, float] = {}
        ready = 0
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                try:
                    async with s.get(url + "/-/ready") as r:
                        ready = r.status
                    async with s.get(url + "/metrics") as r:
                        metrics = parse_metrics(await r.text())
                    if ready == 200 and any(
                        k.startswith("cutover_route53_traffic_share") for k in metrics
                    ):
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            async with s.get(url + "/") as r:
                page = await r.text()
        assert ready == 200
        for platform, role in (("heroku", "baseline"), ("aws", "candidate")):
            assert (
                metrics[
                    f'cutover_probe_success{{check="health",platform="{platform}",role="{role}"}}'
                ]
                == 1
            )
        share = 'cutover_route53_traffic_share{hosted_zone="ZDEMO",platform="aws",record="api.example.com"}'
        assert metrics[share] == 0.1
        assert "heroku" in page and "aws" in page and "Traffic (Route53 weights)" in page
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(15)
        log.close()
    output = (tmp_path / "demo.log").read_text()
    assert code == 0, output
    assert f"status page  http://127.0.0.1:{port}/" in output
    assert "Traceback" not in output
