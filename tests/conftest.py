"""Shared fixtures: controllable local platforms, free ports, the daemon as a subprocess."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web
from moto.server import ThreadedMotoServer

from exporter.store import dynamo

ROOT = Path(__file__).resolve().parent.parent


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The probe tests run on both loops the daemon runs on (`--loop`): uvloop's sockets and
    TLS are not asyncio's. The daemon tests' subprocesses pick theirs with CUTOVER_LOOP."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    if item.path.name == "test_probe.py":
        try:
            import uvloop
        except ImportError:
            if os.environ.get("CI"):
                raise
        else:
            factories["uvloop"] = uvloop.new_event_loop
    return factories


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_tool(name: str) -> str:
    """The path of a Debian tool; skip the test without it, unless on CI where it must be there."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required on CI (scripts/test installs it)")
        pytest.skip(
            f"{name} is not installed (apt-get install the Debian package; scripts/test does)"
        )
    return path


@dataclass
class FakePlatform:
    """A local stand-in for Heroku or AWS whose behaviour a test changes while the daemon runs."""

    delay: float = 0.0
    status: int = 200
    body: str = '{"status": "ok"}'
    mode: str = "ok"  # ok | hang | reset
    hang_paths: set[str] = field(default_factory=set)  # these paths hang whatever the mode
    fail_every: int = 0  # every n-th request answers 503
    hits: int = 0
    host_headers: list[str] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.host_headers.append(request.headers.get("Host", ""))
        if self.mode == "hang" or request.path in self.hang_paths:
            await asyncio.sleep(3600)
        if self.mode == "reset":
            transport = request.transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            transport.close()
            return web.Response()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_every and self.hits % self.fail_every == 0:
            return web.Response(status=503, text="unavailable")
        return web.Response(status=self.status, text=self.body, content_type="application/json")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def serve_platform(platform: FakePlatform) -> web.AppRunner:
    """Serve `platform` on a free port of 127.0.0.1 from the running loop; clean the runner up."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", platform.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    platform.port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", platform.port)
    await site.start()
    return runner


@pytest.fixture
async def platforms() -> AsyncIterator[tuple[FakePlatform, FakePlatform]]:
    """Two local platforms (baseline, candidate) served from the test's event loop."""
    made = (FakePlatform(), FakePlatform())
    runners = [await serve_platform(platform) for platform in made]
    yield made
    for runner in runners:
        await runner.cleanup()


def config_yaml(baseline: str, candidate: str, extra_checks: str = "", **kw: str) -> str:
    interval = kw.get("interval", "200ms")
    timeout = kw.get("timeout", "150ms")
    return f"""\
platforms:
  heroku:
    role: baseline
    base_url: {baseline}
  aws:
    role: candidate
    base_url: {candidate}
    host_header: api.example.test
    headers: {{X-Probe-Secret: "${{PROBE_SECRET}}"}}
checks:
  - name: health
    path: /health
    interval: {interval}
    timeout: {timeout}
    expect:
      status: [200]
      body_regex: '"status":\\s*"ok"'
{extra_checks}judge:
  window: {kw.get("window", "30s")}
"""


class DaemonProcess:
    """`python -m exporter run` in a subprocess, with its log captured to a file."""

    def __init__(
        self,
        config: Path,
        port: int,
        log: Path,
        env: dict[str, str],
        flags: Sequence[str] = (),
        preexec_fn: Callable[[], object] | None = None,
    ) -> None:
        self.config, self.port, self.log_path = config, port, log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "run",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
                "--log-level",
                "debug",
                *flags,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            preexec_fn=preexec_fn,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def get(self, path: str, **kw: object) -> tuple[int, str]:
        async with aiohttp.ClientSession() as s, s.get(self.url + path, **kw) as r:  # type: ignore[arg-type]
            return r.status, await r.text()

    async def post(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as s, s.post(self.url + path) as r:
            return r.status, await r.text()

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _ = await self.get("/-/ready")
                if status == 200:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log()}")

    async def metrics(self) -> dict[str, float]:
        """Samples of /metrics as {'name{labels}': value}, labels sorted as rendered."""
        _, text = await self.get("/metrics")
        return parse_metrics(text)

    async def wait_for(self, predicate: object, timeout: float = 15.0) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            m = await self.metrics()
            if predicate(m):  # type: ignore[operator]
                return m
            if time.monotonic() > deadline:
                raise AssertionError(
                    "condition not met; last metrics:\n"
                    + "\n".join(f"{k} {v}" for k, v in m.items() if k.startswith("cutover_"))
                )
            await asyncio.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


FAKE_AWS = {
    # fake credentials, and no way for boto3 to find real ones or reach anything but 127.0.0.1
    "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE",
    "AWS_SECRET_ACCESS_KEY": "fake-aws-secret-key-value",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


def daemon_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CUTOVER_", "AWS_")) and k.lower() not in ("http_proxy", "https_proxy")
    }
    env.update(FAKE_AWS)
    env.update({"PROBE_SECRET": "s3cr3t-probe-value", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[object]:
    started: list[DaemonProcess] = []

    def start(config_text: str, **env: str) -> DaemonProcess:
        path = tmp_path / "cutover.yml"
        path.write_text(config_text)
        d = DaemonProcess(
            path, free_port(), tmp_path / f"daemon{len(started)}.log", daemon_env(**env)
        )
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


# -- AWS: fake credentials and moto's server on 127.0.0.1 (per test module) -------------------


HA_TABLE = "cutover-ha"


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """Fake credentials and no way for boto3 to reach anything but 127.0.0.1."""
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("AWS_") or key.lower() in ("http_proxy", "https_proxy"):
                mp.delenv(key)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_SESSION_TOKEN", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="module")
def moto_url(aws_env: None) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def r53(moto_url: str) -> Any:
    return boto3.client("route53", endpoint_url=moto_url)


@pytest.fixture(scope="module")
def ddb(moto_url: str) -> Any:
    """A DynamoDB client of this module's moto server, its HA table created."""
    client = boto3.client("dynamodb", endpoint_url=moto_url)
    dynamo.create_table(client, HA_TABLE, poll=0.1)
    return client


@pytest.fixture(scope="module")
def ha_table(ddb: Any) -> str:
    """The HA table in this module's moto server (each test takes a migration of its own)."""
    return HA_TABLE


@pytest.fixture
def migration() -> str:
    """A partition of the table of its own for each test."""
    return f"m-{uuid.uuid4().hex[:8]}"
