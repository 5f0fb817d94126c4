"""`cutover demo`: two simulated platforms in-process and the daemon watching them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web

from exporter.config import load_config
from exporter.daemon import Daemon

# the candidate's story, on a loop: fine long enough for a step's hold to complete on evidence
# (GO, approve), then slow and failing some requests (an incident, NO-GO, a dry-run rollback),
# then fine again
CYCLE = 600.0
DEGRADED = (300.0, 360.0)

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
    interval: 1s
    timeout: 900ms
    record: api.example.com
judge:
  window: 1m
  min_samples: 10
  errors:
    max_increase: 0.05  # a demo's step is short: 120 probes bound an increase near +4 pts
readiness:              # GO once a step held 2 min on enough evidence (see /api/v1/readiness)
  hold: 2m
  min_probes: 100
  min_requests: 300
route53:
  interval: 5s
  endpoint_url: http://127.0.0.1:{route53_port}
  records:
    - hosted_zone_id: ZDEMO
      name: api.example.com
      type: CNAME
      set_identifiers: {{heroku: heroku, aws: aws}}
shift:                  # a dry run (enabled: false): nothing is written to Route53, and every
  enabled: false        # message, page line and `cutover shift status` says what would be
  record: api.example.com
  steps: [10, 25, 50, 100]
  mode: manual          # each step waits for `cutover shift approve`
  hold: 2m
  ttl_margin: 0s
  min_samples: 30
alerting:
  for: 10s
  resolve_after: 20s
  dashboard_url: http://127.0.0.1:{listen_port}/
  slack:
    token: xoxb-demo-not-a-real-token
    channel: "#migration"
    api_url: http://127.0.0.1:{slack_port}/api/
traffic:                # the simulated users' requests, judged like the probes
  window: 1m
  min_requests: 100
  routes:
    - {{name: orders, path_regex: '^/api/orders'}}
  sources:
    - platform: heroku  # the demo POSTs Heroku router lines to its own drain endpoint
      heroku_drain:
        token: {drain_token}
    - platform: aws     # and answers Prometheus queries for the candidate's ingress
      prometheus:
        url: http://127.0.0.1:{prometheus_port}
        interval: 5s
        range: 15s
        timeout: 4s
        preset: custom
        route_label: path
        requests_query: 'sum by (code_class, path) (increase(demo_requests_total[$interval]))'
        latency_buckets_query: 'sum by (le, path) (increase(demo_request_seconds_bucket[$interval]))'
"""


SIGMA = 0.25  # the log-normal spread of every simulated latency
BACKGROUND_ERRORS = 0.002  # what users see fail on a good day, on both platforms
# the demo's users: requests a second in all, split as the Route53 stand-in's weights say,
# over these paths (each path's share)
USERS_PER_SECOND = 60.0
PATHS = (("/api/orders", 0.5), ("/api/users", 0.3), ("/health", 0.2))
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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

    def now_median(self) -> float:
        return self.median * (4.0 if self.degraded() else 1.0)

    def error_ratio(self) -> float:
        return 0.08 if self.degraded() else BACKGROUND_ERRORS

    async def handle(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.now_median() * self.rng.lognormvariate(0.0, SIGMA))
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


class DemoUsers:
    """The users of both platforms, as the platforms' own telemetry reports them.

    The baseline's requests become Heroku router lines POSTed to the daemon's drain endpoint
    once a second, as Logplex does; the candidate's are counts an embedded stand-in for the
    candidate's Prometheus answers (the `custom` preset's two queries). Both follow the
    simulated platforms: when the candidate degrades, so do its users' requests.
    """

    def __init__(
        self, baseline: SimulatedPlatform, candidate: SimulatedPlatform, share: float
    ) -> None:
        self.baseline, self.candidate, self.share = baseline, candidate, share
        self.rng = random.Random(3)

    # -- the baseline: Heroku router lines to the drain ----------------------------------------

    def router_lines(self, now: float, n: int) -> list[bytes]:
        when = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
        lines = []
        for i in range(n):
            path = self.rng.choices([p for p, _ in PATHS], [w for _, w in PATHS])[0]
            failed = self.rng.random() < self.baseline.error_ratio()
            ms = round(1000 * self.baseline.now_median() * self.rng.lognormvariate(0.0, SIGMA))
            lines.append(
                f'<158>1 {when} host heroku router - at=info method=GET path="{path}/{i}?demo=1" '
                f'host=api.example.com request_id=demo-{i} fwd="203.0.113.9" dyno=web.1 '
                f"connect=1ms service={ms}ms status={503 if failed else 200} bytes=512 "
                "protocol=https".encode()
            )
        return lines

    async def drain(self, url: str, token: str) -> None:
        """POST a second of the baseline's requests to the drain, every second, until cancelled."""
        auth = "Basic " + base64.b64encode(f"heroku:{token}".encode()).decode()
        frame = 0
        rate = USERS_PER_SECOND * (1.0 - self.share)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                frame += 1
                lines = self.router_lines(time.time(), round(rate))
                data = b"".join(b"%d %s\n" % (len(line) + 1, line) for line in lines)
                headers = {
                    "Authorization": auth,
                    "Content-Type": "application/logplex-1",
                    "Logplex-Msg-Count": str(len(lines)),
                    "Logplex-Frame-Id": f"demo-{frame}",
                }
                # until the daemon listens, and whenever it does not answer, the second is lost
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.post(url, data=data, headers=headers) as resp:
                        await resp.read()
                await asyncio.sleep(1.0)

    # -- the candidate: its Prometheus' answers -------------------------------------------------

    async def query(self, request: web.Request) -> web.Response:
        """Counts over the query's range ([15s]): by status class, or latency buckets, per path."""
        q = request.query.get("query", "")
        try:
            seconds = float(q.rsplit("[", 1)[1].split("s]", 1)[0])
        except (IndexError, ValueError):
            return web.json_response({"status": "error", "error": "not a demo query"}, status=400)
        now = time.time()
        errors, median = self.candidate.error_ratio(), self.candidate.now_median()
        result = []
        for path, weight in PATHS:
            total = USERS_PER_SECOND * self.share * weight * seconds
            if "bucket" in q:
                bounds = [*(f"{b:g}" for b in LATENCY_BUCKETS), "+Inf"]
                below = [*(_lognormal_cdf(b, median) for b in LATENCY_BUCKETS), 1.0]
                result += [
                    {"metric": {"le": le, "path": path}, "value": [now, f"{total * f:.3f}"]}
                    for le, f in zip(bounds, below, strict=True)
                ]
            else:
                result += [
                    {"metric": {"code_class": "2xx", "path": path},
                     "value": [now, f"{total * (1 - errors):.3f}"]},
                    {"metric": {"code_class": "5xx", "path": path},
                     "value": [now, f"{total * errors:.3f}"]},
                ]  # fmt: skip
        data = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return web.json_response(data)

    def prometheus_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/query", self.query)
        return app


def _lognormal_cdf(x: float, median: float) -> float:
    """The share of log-normal latencies (around `median`, spread SIGMA) at most x."""
    return 0.5 * (1.0 + math.erf(math.log(x / median) / (SIGMA * math.sqrt(2.0))))


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
        users = DemoUsers(baseline, candidate, share=0.1)
        p_runner, p_port = await _start(users.prometheus_app())
        runners.append(p_runner)
        drain_token = secrets.token_hex(16)
        # shift control (approve, pause, rollback) needs a token: the user's own, else a new one
        own_token = bool(os.environ.get("CUTOVER_CONTROL_TOKEN"))
        if not own_token:
            os.environ["CUTOVER_CONTROL_TOKEN"] = secrets.token_urlsafe(18)
        # the demo's own token is shown so that a newcomer can use it; a user's own never is
        token_line = (
            "(CUTOVER_CONTROL_TOKEN: the one you set)"
            if own_token
            else f"CUTOVER_CONTROL_TOKEN={os.environ['CUTOVER_CONTROL_TOKEN']}"
        )
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
                prometheus_port=p_port,
                drain_token=drain_token,
            )
        )
        daemon = Daemon(load_config(path), config_path=path)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        print(
            f"""
cutover demo: two simulated platforms on this machine and cutover watching them.
  baseline  heroku  http://127.0.0.1:{b_port}/health   (steady, ~60 ms)
  candidate aws     http://127.0.0.1:{c_port}/health   (~45 ms; every {CYCLE / 60:g} minutes it turns 4x
                    slower and fails 8% of requests, from minute {DEGRADED[0] / 60:g} to minute {DEGRADED[1] / 60:g})

  Route53   api.example.com: heroku 90, aws 10 (a local stand-in: no AWS account needed)
  Users     {USERS_PER_SECOND:g} requests/s split 90/10: heroku's through its log drain,
            aws's through its (simulated) Prometheus; judged like the probes
  Slack     alerts are printed below as they would be posted to #migration
  Shift     a DRY RUN of 10% -> 25% -> 50% -> 100% on api.example.com, each step held 2 min
            and then approved by you: nothing is written, every message says what would be

Take the next step once the page says GO (or see why it says WAIT):
  export CUTOVER_URL=http://{shown}:{port} {token_line}
  cutover shift status
  cutover shift approve --reason "looked good"
  cutover report

Open:
  status page  http://{shown}:{port}/
  metrics      http://{shown}:{port}/metrics
  JSON status  http://{shown}:{port}/api/v1/status
The configuration in use: {path} (edit it, then: curl -X POST http://{shown}:{port}/-/reload)
Stop with Ctrl-C (the configuration's directory is removed then).
""",
            flush=True,
        )
        target = f"[{shown}]" if ":" in shown else shown
        drain_url = f"http://{target}:{port}/api/v1/drains/heroku"
        feeding = asyncio.create_task(users.drain(drain_url, drain_token), name="demo-users")
        try:
            return await serve(daemon, host, port)
        finally:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding
    finally:
        for runner in runners:
            await runner.cleanup()
        # the demo's configuration lives only as long as the demo: nothing is left in /tmp,
        # whether it stopped cleanly (SIGTERM, SIGINT) or not (the port was taken)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
