"""`cutover demo`: two simulated platforms in-process and the daemon watching them."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from exporter.config import load_config
from exporter.daemon import Daemon

# the candidate's story, on a loop: fine, then slow and failing some requests, then fine again
CYCLE = 240.0
DEGRADED = (120.0, 180.0)

DEMO_CONFIG = """\
# The configuration `cutover demo` runs with. Edit it and POST /-/reload (or send SIGHUP).
platforms:
  heroku:
    role: baseline
    base_url: http://127.0.0.1:{baseline_port}
  aws:
    role: candidate
    base_url: http://127.0.0.1:{candidate_port}
    host_header: api.example.com
checks:
  - name: health
    path: /health
    interval: 1s
    timeout: 900ms
    expect:
      status: [200]
      body_regex: '"status":\\s*"ok"'
  - name: orders
    path: /api/orders?limit=1
    interval: 2s
    timeout: 1500ms
judge:
  window: 1m
  min_samples: 10
alerting:
  for: 10s
  resolve_after: 20s
"""


class SimulatedPlatform:
    """An HTTP service whose latency is log-normal around a median, with optional trouble."""

    def __init__(self, name: str, median: float, *, degrade: bool, seed: int) -> None:
        self.name = name
        self.median = median
        self.degrade = degrade
        self.rng = random.Random(seed)
        self.t0 = time.monotonic()

    def phase(self) -> float:
        return (time.monotonic() - self.t0) % CYCLE

    def degraded(self) -> bool:
        return self.degrade and DEGRADED[0] <= self.phase() < DEGRADED[1]

    async def handle(self, request: web.Request) -> web.Response:
        median = self.median * (4.0 if self.degraded() else 1.0)
        await asyncio.sleep(median * self.rng.lognormvariate(0.0, 0.25))
        if self.degraded() and self.rng.random() < 0.08:
            return web.json_response({"status": "error"}, status=503)
        if request.path == "/health":
            return web.json_response({"status": "ok", "platform": self.name})
        return web.json_response({"orders": [{"id": 1}], "platform": self.name})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


async def _start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


async def run_demo(
    host: str, port: int, serve: Callable[[Daemon, str, int], Awaitable[int]]
) -> int:
    baseline = SimulatedPlatform("heroku", 0.060, degrade=False, seed=1)
    candidate = SimulatedPlatform("aws", 0.045, degrade=True, seed=2)
    runners = []
    try:
        b_runner, b_port = await _start(baseline.app())
        runners.append(b_runner)
        c_runner, c_port = await _start(candidate.app())
        runners.append(c_runner)
        workdir = Path(tempfile.mkdtemp(prefix="cutover-demo-"))
        path = workdir / "cutover.yml"
        path.write_text(DEMO_CONFIG.format(baseline_port=b_port, candidate_port=c_port))
        daemon = Daemon(load_config(path), config_path=path)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        print(
            f"""
cutover demo: two simulated platforms on this machine and cutover watching them.
  baseline  heroku  http://127.0.0.1:{b_port}/health   (steady, ~60 ms)
  candidate aws     http://127.0.0.1:{c_port}/health   (~45 ms; every {CYCLE:g} s it turns 4x slower
                    and fails 8% of requests for {DEGRADED[1] - DEGRADED[0]:g} s, from {DEGRADED[0]:g} s on)

Open:
  status page  http://{shown}:{port}/
  metrics      http://{shown}:{port}/metrics
  JSON status  http://{shown}:{port}/api/v1/status
The configuration in use: {path} (edit it, then: curl -X POST http://{shown}:{port}/-/reload)
Stop with Ctrl-C.
""",
            flush=True,
        )
        return await serve(daemon, host, port)
    finally:
        for runner in runners:
            await runner.cleanup()
