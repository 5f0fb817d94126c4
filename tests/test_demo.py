"""`cutover demo`: what a newcomer runs first works with no AWS account and no Slack workspace."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from exporter.demo import CYCLE, DEGRADED
from tests.conftest import ROOT, daemon_env, free_port, parse_metrics

SHARE = 'cutover_route53_traffic_share{hosted_zone="ZDEMO",platform="aws",record="api.example.com"}'
USERS = [
    f'cutover_traffic_window_requests{{platform="{p}",role="{r}",route="{route}"}}'
    for p, r in (("heroku", "baseline"), ("aws", "candidate"))
    for route in ("all", "orders")
]
SOURCES = [
    'cutover_traffic_source_up{platform="heroku",source="heroku_drain"}',
    'cutover_traffic_source_up{platform="aws",source="prometheus"}',
]


def demo_env(tmp: Path) -> dict[str, str]:
    env = daemon_env(TMPDIR=str(tmp))  # where tempfile makes the demo's directory
    for key in [k for k in env if k.startswith("AWS_")]:
        del env[key]  # the demo needs no AWS credentials at all
    return env


def config_dir(output: str) -> Path:
    (path,) = re.findall(r"The configuration in use: (\S+)", output)
    return Path(path).parent


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_demo_serves_both_platforms_shares_and_the_status_page(
    tmp_path: Path, sig: signal.Signals
) -> None:
    port = free_port()
    log = (tmp_path / "demo.log").open("wb")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = demo_env(tmp)
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--listen", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60  # a drain's lines count 10 s after they arrive
        metrics: dict[str, float] = {}
        ready = 0
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                try:
                    async with s.get(url + "/-/ready") as r:
                        ready = r.status
                    async with s.get(url + "/metrics") as r:
                        metrics = parse_metrics(await r.text())
                    if ready == 200 and all(
                        metrics.get(k, 0) > 0 for k in (SHARE, *USERS, *SOURCES)
                    ):
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            async with s.get(url + "/") as r:
                page = await r.text()
            async with s.get(url + "/api/v1/readiness") as r:
                readiness = await r.json()
        assert ready == 200
        for platform, role in (("heroku", "baseline"), ("aws", "candidate")):
            assert (
                metrics[
                    f'cutover_probe_success{{check="health",platform="{platform}",role="{role}"}}'
                ]
                == 1
            )
        assert metrics[SHARE] == 0.1
        # the simulated users' requests reach the judge: the baseline's through the drain, the
        # candidate's through its Prometheus stand-in, both per route group
        for key in (*USERS, *SOURCES):
            assert metrics.get(key, 0) > 0, key
        assert metrics['cutover_traffic_drain_posts_total{result="accepted"}'] > 0
        assert "heroku" in page and "aws" in page and "Traffic (Route53 weights)" in page
        assert "Real traffic" in page
        # the go/no-go question is on top, and the demo's shift is a dry run a newcomer controls
        # with the token it printed
        assert [r["record"] for r in readiness["records"]] == ["api.example.com"]
        (token,) = re.findall(r"CUTOVER_CONTROL_TOKEN=(\S+)", log_text(tmp_path))
        env = dict(demo_env(tmp), CUTOVER_URL=url, CUTOVER_CONTROL_TOKEN=token)
        status = subprocess.run(
            [sys.executable, "-m", "exporter", "shift", "status"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=30,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith("DRY RUN: shift of api.example.com"), status.stdout
        paused = subprocess.run(
            [sys.executable, "-m", "exporter", "shift", "pause", "--reason", "trying it"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=30,
        )  # fmt: skip
        assert paused.returncode == 0, paused.stderr
        # the configuration it runs with is where it says, while it runs
        assert config_dir(log_text(tmp_path)).parent == tmp
        assert (config_dir(log_text(tmp_path)) / "cutover.yml").is_file()
    finally:
        proc.send_signal(sig)
        code = proc.wait(15)
        log.close()
    output = log_text(tmp_path)
    assert code == 0, output
    assert f"status page  http://127.0.0.1:{port}/" in output
    assert "Traceback" not in output
    # a clean stop leaves nothing behind in the temporary directory
    assert not config_dir(output).exists()
    assert list(tmp.iterdir()) == []


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "demo.log").read_text()


def test_a_demo_that_cannot_listen_leaves_nothing_behind(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "exporter", "demo", "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, env=demo_env(tmp), cwd=ROOT, timeout=60,
        )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stdout + r.stderr
    assert not config_dir(r.stdout).exists()
    assert list(tmp.iterdir()) == []


def test_readme_tells_the_demos_cycle_as_it_is() -> None:
    """The Quick start says when the demo's candidate degrades: in exporter/demo.py's terms."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"in every {CYCLE / 60:g}-minute cycle" in readme
    assert f"from minute {DEGRADED[0] / 60:g} to minute {DEGRADED[1] / 60:g}" in readme
