"""Several cutover daemons of one migration as subprocesses on 127.0.0.1 (issue 14), for the
failover tests (tests/test_ha_failover.py) and the failover benchmark (bench/ha).

    async with HACluster(tmp, moto_url, replicas=3, lease="2s") as cluster:
        leader = await cluster.leader()          # the one replica whose cutover_ha_leader is 1
        await cluster.wait_batch(lambda b: b.accepted)
        leader.kill()                            # kill -9; pause() / resume(): SIGSTOP / SIGCONT
        cluster.proxy(leader).set_mode("drop")   # cut it off DynamoDB ("hang": no answer)
        cluster.batches()                        # Route53 change batches: who, when, which epoch

What runs: moto's server (DynamoDB; the caller's, module-scoped in the tests), a `DynamoProxy`
per replica in front of it (the replica's `ha.endpoint_url`), the Route53 write stand-in (it
refuses stale DELETEs as Route53 does) holding one weighted record, the Slack stand-in, two
local platforms, and the daemons (`python -m exporter run --allow-route53-writes`), each with
its own port and state_dir, walking a guarded shift in small steps so that the leader writes
Route53 every few seconds. Each replica reaches Route53 and Slack under its own path
(`/as/<name>`), so the stand-ins' logs say which replica sent what; every Route53 batch names
the writer's epoch in its `_cutover-step` record.

Every process is ended on the way out, whatever happened: the daemons are killed (and die with
the test process if it dies first: PR_SET_PDEATHSIG), the servers stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import re
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import boto3
from aiohttp import web

from exporter.route53.step import StepMark
from exporter.store import dynamo
from tests.conftest import (
    DaemonProcess,
    FakePlatform,
    config_yaml,
    daemon_env,
    free_port,
    parse_metrics,
    serve_platform,
)
from tests.route53_standin import cname
from tests.route53_write_standin import WriteStandIn
from tests.slack_standin import SlackStandIn

__all__ = ["Batch", "DynamoProxy", "HACluster", "Replica"]

ZONE = "Z0HACLUSTER"
NAME = "api.example.com"
STEP_RECORD = f"_cutover-step.{NAME}."
TABLE = "cutover-ha-cluster"
SLACK_TOKEN = "xoxb-ha-cluster-token"
CHANNEL = "C0HA"
# 5% steps: the leader writes Route53 every few seconds for the length of a test
STEPS = "[" + ", ".join(str(p) for p in range(5, 101, 5)) + "]"

Mode = Literal["pass", "drop", "hang"]
_PR_SET_PDEATHSIG = 1
_TARGET = re.compile(rb"(?i)x-amz-target:[ \t]*[\w.]*?\.(\w+)")
# the daemon's log lines (exporter/logs.py, exporter/store/lease.py) that start and end a term
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+\s+\S+ (.*)$")
_LEADS = re.compile(r"^ha: \S+ leads migration \S+ \(epoch (\d+)\)")
_ENDS = re.compile(r"^ha: \S+ (?:stops acting for|lost the lease of) migration ")


# -- DynamoDB, one door per replica ------------------------------------------------------------


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (linger 0), as a dropped network path or a dead middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    writer.close()


@dataclass(eq=False)
class _Pipe:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None

    def reset(self) -> None:
        _reset(self.client)
        if self.upstream is not None:
            self.upstream.close()


class DynamoProxy:
    """A TCP proxy on 127.0.0.1 in front of moto's server, run on the caller's event loop.

    `mode`: "pass" forwards; "drop" resets every open connection and each new one at once (the
    replica's calls fail fast); "hang" accepts connections and forwards nothing either way (its
    calls run into their timeouts). Going back to "pass" resets what hung, so that nothing held
    during the cut arrives late. `requests` lists every DynamoDB request the replica sent through
    it, as (time.monotonic(), operation, forwarded), read from the X-Amz-Target header.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.mode: Mode = "pass"
        self.requests: list[tuple[float, str, bool]] = []
        self.port = 0
        self._pipes: set[_Pipe] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.reset()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    def set_mode(self, mode: Mode) -> None:
        previous, self.mode = self.mode, mode
        if mode == "pass":
            self._flowing.set()
        else:
            self._flowing.clear()
        if mode == "drop" or (previous == "hang" and mode == "pass"):
            for pipe in list(self._pipes):
                pipe.reset()

    def operations(self, since: float = 0.0, until: float = float("inf")) -> list[str]:
        """The operations forwarded in [since, until)."""
        return [op for at, op, ok in self.requests if ok and since <= at < until]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "drop":
            _reset(writer)
            return
        pipe = _Pipe(writer)
        self._pipes.add(pipe)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._flowing.wait()
            up_reader, pipe.upstream = await asyncio.open_connection(*self.upstream)
            pumps = [
                asyncio.ensure_future(self._pump(reader, pipe.upstream, count=True)),
                asyncio.ensure_future(self._pump(up_reader, writer, count=False)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except OSError:
            pass
        finally:
            self._pipes.discard(pipe)
            if task is not None:
                self._handlers.discard(task)
            if self.mode == "pass":
                writer.close()
            else:
                pipe.reset()
            if pipe.upstream is not None:
                pipe.upstream.close()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, count: bool
    ) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                passing = self.mode == "pass"
                if count:
                    buf = tail + data
                    for match in _TARGET.finditer(buf):
                        if match.end() > len(tail):  # not one counted with the last chunk
                            op = match.group(1).decode()
                            self.requests.append((time.monotonic(), op, passing))
                    tail = buf[-128:]
                await self._flowing.wait()
                if dst.is_closing():
                    return
                dst.write(data)
                await dst.drain()


# -- the daemons -------------------------------------------------------------------------------


def _die_with_parent() -> Callable[[], object]:
    """A preexec_fn that has the child killed when this process dies; the libc function is
    looked up here, before the fork, so that the child only makes the call."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Replica(DaemonProcess):
    """One daemon of the cluster: its name is its vantage."""

    def __init__(self, name: str, config: Path, log: Path, flags: Sequence[str]) -> None:
        self.name = name
        self.paused = False
        self.killed_at: float | None = None  # time.time() of a kill -9
        super().__init__(
            config,
            free_port(),
            log,
            daemon_env(),
            flags=["--allow-route53-writes", *flags],
            preexec_fn=_die_with_parent(),
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no release of the lease, no flush of anything."""
        if self.alive:
            self.killed_at = time.time()
            self.proc.kill()
            self.proc.wait()

    def logged(self, words: str) -> float | None:
        """When this process first logged a line containing `words` (time.time()), or None."""
        for line in self.log().splitlines():
            match = _LOG_LINE.match(line)
            if match and words in match.group(2):
                return _wall(match.group(1))
        return None

    def terms(self) -> list[tuple[int, float, float | None]]:
        """The terms this process led, as its log tells: (epoch, from, until), time.time();
        until is the kill for the last term of a killed replica, None while it leads."""
        terms: list[tuple[int, float, float | None]] = []
        for line in self.log().splitlines():
            match = _LOG_LINE.match(line)
            if match is None:
                continue
            at, text = _wall(match.group(1)), match.group(2)
            if (leads := _LEADS.match(text)) is not None:
                terms.append((int(leads.group(1)), at, None))
            elif _ENDS.match(text) and terms and terms[-1][2] is None:
                terms[-1] = (terms[-1][0], terms[-1][1], at)
        if terms and terms[-1][2] is None and self.killed_at is not None:
            terms[-1] = (terms[-1][0], terms[-1][1], self.killed_at)
        return terms

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    async def fetch(self, path: str, timeout: float = 2.0) -> str | None:
        """The body of a GET, or None when the replica does not answer (dead, paused, busy)."""
        if not self.alive or self.paused:
            return None
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
                s.get(self.url + path) as r,
            ):
                return await r.text() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def lease(self) -> dict[str, float] | None:
        """This replica's cutover_ha_* samples, None when it does not answer."""
        text = await self.fetch("/metrics")
        if text is None:
            return None
        return {k: v for k, v in parse_metrics(text).items() if k.startswith("cutover_ha_")}

    async def leads(self) -> bool | None:
        samples = await self.lease()
        if samples is None:
            return None
        return samples.get(f'cutover_ha_leader{{vantage="{self.name}"}}') == 1.0

    async def status(self) -> dict[str, Any] | None:
        text = await self.fetch("/api/v1/status")
        return None if text is None else dict(json.loads(text))

    def close(self) -> None:
        """End the process whatever its state (a stopped one is killed too), close the log."""
        if self.alive:
            self.proc.kill()
            self.proc.send_signal(signal.SIGCONT)
            self.proc.wait()
        self.stop()


def _wall(stamp: str) -> float:
    """A log line's "%(asctime)s" (local time, ms) as time.time()."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass(frozen=True)
class Batch:
    """One Route53 change batch as the stand-in decided it."""

    at: float  # time.monotonic() of this process
    caller: str | None  # the replica that sent it
    accepted: bool
    step: int | None  # the step it writes (its `_cutover-step` CREATE), None without one
    epoch: int | None  # the lease epoch it names
    weights: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def of(cls, raw: dict[str, Any], accepted: bool) -> Batch:
        mark = None
        for change in raw["Changes"]:
            rrset = change["ResourceRecordSet"]
            if change["Action"] == "CREATE" and rrset["Type"] == "TXT":
                mark = StepMark.from_set(rrset)
        return cls(
            at=raw["at"],
            caller=raw["caller"],
            accepted=accepted,
            step=mark.step if mark is not None else None,
            epoch=mark.epoch if mark is not None else None,
            weights=dict(mark.weights) if mark is not None else {},
            error=raw.get("error"),
        )


class HACluster:
    """`replicas` daemons of one migration (a fresh one per cluster: clusters may share moto)."""

    def __init__(
        self,
        tmp: Path,
        moto_url: str,
        *,
        replicas: int = 3,
        lease: str = "2s",
        slack: bool = False,
        steps: str = STEPS,
        quorum: int | None = None,
        log_level: str = "debug",
        start_gap: float = 0.0,
    ) -> None:
        self.tmp = tmp
        self.moto_url = moto_url
        self.names = [f"replica-{chr(ord('a') + i)}" for i in range(replicas)]
        self.lease_text = lease
        self.with_slack = slack
        self.steps = steps
        self.quorum = quorum
        self.log_level = log_level
        self.start_gap = start_gap  # seconds between starts: the first one started leads
        self.migration = f"ha-{uuid.uuid4().hex[:10]}"
        self.platforms = (FakePlatform(), FakePlatform())
        self.route53 = WriteStandIn(zones={ZONE: self._zone()})
        self.slack = SlackStandIn(token=SLACK_TOKEN, channels={"#migration": CHANNEL})
        self.proxies: dict[str, DynamoProxy] = {}
        self.replicas: dict[str, Replica] = {}
        self.started: list[Replica] = []  # every process started, restarts included
        self._runners: list[web.AppRunner] = []

    @staticmethod
    def _zone() -> list[dict[str, Any]]:
        # TTL 1 s: the plan's floor after a change (TTL + ttl_margin) stays short
        return [
            cname(NAME, "heroku", 100, "myapp.herokudns.com", ttl=1),
            cname(NAME, "aws", 0, "k8s-ingress.eu-west-1.elb.amazonaws.com", ttl=1),
        ]

    async def __aenter__(self) -> HACluster:
        try:
            await self.start()
        except BaseException:
            await self.close(failed=True)
            raise
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        await self.close(failed=exc_type is not None)

    async def start(self) -> None:
        client = boto3.client("dynamodb", endpoint_url=self.moto_url, region_name="us-east-1")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            None, lambda: dynamo.create_table(client, TABLE, poll=0.1, timeout=30.0)
        )
        for platform in self.platforms:
            self._runners.append(await serve_platform(platform))
        self.route53.start()
        await self.slack.start()
        for name in self.names:
            proxy = DynamoProxy(self.moto_url)
            await proxy.start()
            self.proxies[name] = proxy
        for i, name in enumerate(self.names):
            if i and self.start_gap:
                await asyncio.sleep(self.start_gap)
            self.start_replica(name)
        await asyncio.gather(*(r.wait_ready(timeout=60.0) for r in self.replicas.values()))

    def config(self, name: str) -> str:
        baseline, candidate = self.platforms
        slack = (
            f"  slack:\n    token: {SLACK_TOKEN}\n    channel: '#migration'\n"
            f"    api_url: {self.slack.url_as(name)}\n"
            if self.with_slack
            else ""
        )
        return (
            config_yaml(baseline.url, candidate.url, window="20s", interval="100ms", timeout="90ms")
            + "  min_samples: 5\n  down_after: 3\n  latency: {max_ratio: 20}\n"
            + "  errors: {max_increase: 0.3}\n"
            + "readiness: {confidence: 0.6}\n"
            + "route53:\n  interval: 300ms\n  timeout: 2s\n"
            + f"  endpoint_url: {self.route53.url}/as/{name}\n"
            + f"  records:\n    - {{hosted_zone_id: {ZONE}, name: {NAME}, type: CNAME, "
            + "set_identifiers: {heroku: heroku, aws: aws}}\n"
            + f"shift:\n  enabled: true\n  record: {NAME}\n  steps: {self.steps}\n"
            + "  hold: 1s\n  ttl_margin: 0s\n  min_samples: 5\n  rollback_to: 0\n  mode: auto\n"
            + "alerting:\n  for: 1s\n  resolve_after: 1s\n"
            + slack
            + f"state_dir: {self.tmp / name / 'state'}\n"
            + f"ha:\n  vantage: {name}\n  table: {TABLE}\n  region: us-east-1\n"
            + f"  endpoint_url: {self.proxies[name].url}\n  lease: {self.lease_text}\n"
            + f"  migration: {self.migration}\n"
            + (f"  quorum: {self.quorum}\n" if self.quorum is not None else "")
        )

    def start_replica(self, name: str, *, fresh: bool = False) -> Replica:
        """Start (or start again) the replica `name`; `fresh`: with an empty state_dir, as a
        pod replaced without its volume."""
        old = self.replicas.get(name)
        if old is not None:
            old.close()
        where = self.tmp / name
        if fresh:
            shutil.rmtree(where / "state", ignore_errors=True)
        where.mkdir(parents=True, exist_ok=True)
        config = where / "cutover.yml"
        config.write_text(self.config(name))
        runs = len(list(where.glob("daemon*.log")))
        replica = Replica(
            name, config, where / f"daemon{runs}.log", ["--log-level", self.log_level]
        )
        self.replicas[name] = replica
        self.started.append(replica)
        return replica

    async def close(self, failed: bool = False) -> None:
        for replica in self.started:
            replica.close()
        if failed:
            self.print_logs()
        for proxy in self.proxies.values():
            await proxy.stop()
        await self.slack.stop()
        self.route53.stop()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    def print_logs(self, lines: int = 80) -> None:
        """The end of every replica's log (pytest shows it with a failure)."""
        for name, replica in self.replicas.items():
            text = replica.log().splitlines()
            print(f"----- {name} (last {lines} of {len(text)} lines) -----")
            print("\n".join(text[-lines:]))

    # -- what the cluster does -----------------------------------------------------------------

    def replica(self, name: str) -> Replica:
        return self.replicas[name]

    def proxy(self, replica: Replica) -> DynamoProxy:
        return self.proxies[replica.name]

    def others(self, replica: Replica) -> list[Replica]:
        return [r for r in self.replicas.values() if r is not replica]

    async def leaders(self) -> list[Replica]:
        """The replicas that say they lead now (of those that answer)."""
        answers = await asyncio.gather(*(r.leads() for r in self.replicas.values()))
        return [r for r, leads in zip(self.replicas.values(), answers, strict=True) if leads]

    async def leader(
        self, among: Sequence[Replica] | None = None, timeout: float = 30.0
    ) -> Replica:
        """The one replica of `among` (default: all) that leads, once there is one; fails when
        two say they lead at once."""
        pool = list(among if among is not None else self.replicas.values())
        deadline = time.monotonic() + timeout
        while True:
            leading = [r for r in await self.leaders() if r in pool]
            assert len(leading) <= 1, f"two replicas lead at once: {[r.name for r in leading]}"
            if leading:
                return leading[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no leader among {[r.name for r in pool]} in {timeout:g}s")
            await asyncio.sleep(0.1)

    def batches(self) -> list[Batch]:
        """Every change batch the stand-in accepted or refused, in the order it decided."""
        found = [Batch.of(b, True) for b in list(self.route53.batches)]
        found += [Batch.of(b, False) for b in list(self.route53.refused)]
        return sorted(found, key=lambda b: b.at)

    async def wait_batch(self, predicate: Callable[[Batch], bool], timeout: float = 60.0) -> Batch:
        """The first batch (of all so far) that `predicate` holds for, once there is one."""
        deadline = time.monotonic() + timeout
        while True:
            match = next((b for b in self.batches() if predicate(b)), None)
            if match is not None:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no such Route53 batch in {timeout:g}s; batches: {self.batches()}"
                )
            await asyncio.sleep(0.05)


def same_epoch_writers(batches: Sequence[Batch]) -> dict[int, set[str | None]]:
    """Epochs whose accepted batches came from more than one replica (empty: none did)."""
    writers: dict[int, set[str | None]] = {}
    for b in batches:
        if b.accepted and b.epoch is not None:
            writers.setdefault(b.epoch, set()).add(b.caller)
    return {e: w for e, w in writers.items() if len(w) > 1}


def stale_accepted(batches: Sequence[Batch]) -> list[Batch]:
    """Accepted batches naming a lower epoch than one accepted before them: a deposed leader's
    write that Route53 took (empty: none)."""
    highest = -1
    stale = []
    for b in sorted(batches, key=lambda b: b.at):
        if not b.accepted or b.epoch is None:
            continue
        if b.epoch < highest:
            stale.append(b)
        highest = max(highest, b.epoch)
    return stale
