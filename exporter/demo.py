"""`cutover demo`: two simulated platforms in-process and the daemon watching them."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from exporter.config import load_config
from exporter.daemon import Daemon

# the candidate's story, on a loop: fine, then slow and failing some requests, then fine again
CYCLE = 180.0
DEGRADED = (60.0, 120.0)

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
    record: api.example.com
  - name: orders
    path: /api/orders?limit=1
    interval: 2s
    timeout: 1500ms
    record: api.example.com
judge:
  window: 1m
  min_samples: 10
route53:
  interval: 5s
  endpoint_url: http://127.0.0.1:{route53_port}
  records:
    - hosted_zone_id: ZDEMO
      name: api.example.com
      type: CNAME
      set_identifiers: {{heroku: heroku, aws: aws}}
alerting:
  for: 10s
  resolve_after: 20s
  dashboard_url: http://127.0.0.1:{listen_port}/
  slack:
    token: xoxb-demo-not-a-real-token
    channel: "#migration"
    api_url: http://127.0.0.1:{slack_port}/api/
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


# Route53's answer for the demo's record: 90% of the traffic still on heroku, 10% on aws.
ROUTE53_XML = """<?xml version="1.0" encoding="UTF-8"?>
<ListResourceRecordSetsResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/">
<ResourceRecordSets>
<ResourceRecordSet><Name>api.example.com.</Name><Type>CNAME</Type><SetIdentifier>aws</SetIdentifier>
<Weight>10</Weight><TTL>60</TTL><ResourceRecords><ResourceRecord>
<Value>k8s-ingress.eu-west-1.elb.amazonaws.com</Value></ResourceRecord></ResourceRecords>
</ResourceRecordSet>
<ResourceRecordSet><Name>api.example.com.</Name><Type>CNAME</Type><SetIdentifier>heroku</SetIdentifier>
<Weight>90</Weight><TTL>60</TTL><ResourceRecords><ResourceRecord>
<Value>myapp.herokuapp.com</Value></ResourceRecord></ResourceRecords>
</ResourceRecordSet>
</ResourceRecordSets><IsTruncated>false</IsTruncated><MaxItems>300</MaxItems>
</ListResourceRecordSetsResponse>"""


def route53_app() -> web.Application:
    """Just enough of Route53's API for the reader: one weighted record."""

    async def rrset(request: web.Request) -> web.Response:
        return web.Response(text=ROUTE53_XML, content_type="text/xml")

    app = web.Application()
    app.router.add_get("/2013-04-01/hostedzone/{zone}/rrset", rrset)
    return app


class ConsoleSlack:
    """Just enough of Slack's Web API for the notifier: messages are printed to the terminal."""

    def __init__(self) -> None:
        self.ts = time.time()

    def _next_ts(self) -> str:
        self.ts = max(time.time(), self.ts + 0.000001)
        return f"{self.ts:.6f}"

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        form = dict(await request.post()) if request.can_read_body else {}
        if request.content_type == "application/json":
            form = await request.json()
        text = str(form.get("text", ""))
        if method in ("chat.postMessage", "chat.update"):
            what = {"chat.postMessage": "new message", "chat.update": "message edited"}[method]
            if form.get("thread_ts"):
                what = "reply in the thread"
            body = "\n".join(f"  | {line}" for line in text.splitlines())
            print(f"\n[Slack #migration: {what}]\n{body}", flush=True)
            return web.json_response(
                {"ok": True, "channel": "CDEMO", "ts": form.get("ts") or self._next_ts()}
            )
        if method.startswith("conversations."):
            return web.json_response({"ok": True, "messages": [], "has_more": False})
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/{method}", self.handle)
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
    workdir: Path | None = None
    try:
        b_runner, b_port = await _start(baseline.app())
        runners.append(b_runner)
        c_runner, c_port = await _start(candidate.app())
        runners.append(c_runner)
        r_runner, r_port = await _start(route53_app())
        runners.append(r_runner)
        s_runner, s_port = await _start(ConsoleSlack().app())
        runners.append(s_runner)
        # the embedded Route53 checks no signature: demo credentials, never the user's own
        os.environ.update(
            AWS_ACCESS_KEY_ID="demo",
            AWS_SECRET_ACCESS_KEY="demo-secret",  # noqa: S106 - a placeholder, checked by nobody
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
        )
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)
        workdir = Path(tempfile.mkdtemp(prefix="cutover-demo-"))
        path = workdir / "cutover.yml"
        path.write_text(
            DEMO_CONFIG.format(
                baseline_port=b_port,
                candidate_port=c_port,
                route53_port=r_port,
                slack_port=s_port,
                listen_port=port,
            )
        )
        daemon = Daemon(load_config(path), config_path=path)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        print(
            f"""
cutover demo: two simulated platforms on this machine and cutover watching them.
  baseline  heroku  http://127.0.0.1:{b_port}/health   (steady, ~60 ms)
  candidate aws     http://127.0.0.1:{c_port}/health   (~45 ms; every {CYCLE:g} s it turns 4x slower
                    and fails 8% of requests for {DEGRADED[1] - DEGRADED[0]:g} s, from {DEGRADED[0]:g} s on)

  Route53   api.example.com: heroku 90, aws 10 (a local stand-in: no AWS account needed)
  Slack     alerts are printed below as they would be posted to #migration

Open:
  status page  http://{shown}:{port}/
  metrics      http://{shown}:{port}/metrics
  JSON status  http://{shown}:{port}/api/v1/status
The configuration in use: {path} (edit it, then: curl -X POST http://{shown}:{port}/-/reload)
Stop with Ctrl-C (the configuration's directory is removed then).
""",
            flush=True,
        )
        return await serve(daemon, host, port)
    finally:
        for runner in runners:
            await runner.cleanup()
        # the demo's configuration lives only as long as the demo: nothing is left in /tmp,
        # whether it stopped cleanly (SIGTERM, SIGINT) or not (the port was taken)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
