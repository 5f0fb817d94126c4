"""Guarded shifting end to end: the daemon as a subprocess writing weights to moto's Route53."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import boto3
import pytest

from exporter.store import dynamo
from tests.conftest import ROOT, DaemonProcess, FakePlatform, config_yaml, daemon_env, free_port
from tests.test_route53_daemon import NAME, Moto, moto, set_weights, zone

__all__ = ["moto"]  # the fixture, imported for its side of the test module

Start = Callable[..., DaemonProcess]
CONTROL = "control-token-for-tests-42"


def shift_config(
    platforms: tuple[FakePlatform, FakePlatform],
    m: Moto,
    zid: str,
    *,
    enabled: bool = True,
    hold: str = "1s",
    mode: str = "auto",
    steps: str = "[10, 50, 100]",
    state_dir: str | None = None,
    readiness: str = "confidence: 0.6",
    errors_max_increase: float = 0.3,
) -> str:
    """A shift over moto's Route53 whose steps reach GO within seconds.

    `hold` is the shift's, and so the readiness hold. The verdict's bounds need some 30 probes a
    side at `confidence: 0.6` (p95 from fewer is unbounded); the tolerances are wide so that a
    busy test machine's latency noise, or a few failed probes left over from a rollback, do not
    hold a step. `shift.min_samples` stands in for `readiness.min_probes` (5).
    """
    baseline, candidate = platforms
    return (
        config_yaml(baseline.url, candidate.url, window="20s", interval="100ms", timeout="90ms")
        + f"""\
  min_samples: 5
  down_after: 3
  latency: {{max_ratio: 20}}
  errors: {{max_increase: {errors_max_increase}}}
readiness: {{{readiness}}}
route53:
  interval: 300ms
  timeout: 2s
  endpoint_url: {m.url}
  records:
    - hosted_zone_id: {zid}
      name: {NAME}
      type: CNAME
      set_identifiers: {{heroku: heroku, aws: aws}}
shift:
  enabled: {"true" if enabled else "false"}
  record: {NAME}
  steps: {steps}
  hold: {hold}
  ttl_margin: 0s
  min_samples: 5
  rollback_to: 0
  mode: {mode}
"""
        + "alerting:\n  for: 1s\n  resolve_after: 1s\n"
        + (f"state_dir: {state_dir}\n" if state_dir else "")
    )


class ShiftDaemon(DaemonProcess):
    async def shift(self) -> dict[str, Any]:
        _, body = await self.get("/api/v1/shift")
        data: dict[str, Any] = json.loads(body)["shift"]
        return data

    async def wait_shift(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            data = await self.shift()
            if predicate(data):
                return data
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"shift condition not met:\n{json.dumps(data, indent=1)}\n{self.log()[-3000:]}"
                )
            await asyncio.sleep(0.1)

    async def control(self, action: str, token: str | None = CONTROL) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{self.url}/api/v1/shift/{action}", json={"who": "test"}, headers=headers) as r,
        ):
            return r.status, await r.json()


@pytest.fixture
def start_shift(tmp_path: Any) -> Any:
    started: list[ShiftDaemon] = []

    def start(config_text: str, *flags: str) -> ShiftDaemon:
        path = tmp_path / "cutover.yml"
        path.write_text(config_text)
        d = ShiftDaemon.__new__(ShiftDaemon)
        d.config, d.port, d.log_path = path, free_port(), tmp_path / f"shift{len(started)}.log"
        d._log = d.log_path.open("wb")
        env = daemon_env(CUTOVER_CONTROL_TOKEN=CONTROL)
        d.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run", "--config", str(path),
             "--listen", f"127.0.0.1:{d.port}", *flags],
            stdout=d._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def weights_in(m: Moto, zid: str) -> dict[str, int]:
    client = boto3.client("route53", endpoint_url=m.url)
    sets = client.list_resource_record_sets(HostedZoneId=zid)["ResourceRecordSets"]
    return {s["SetIdentifier"]: s["Weight"] for s in sets if s["Name"].rstrip(".") == NAME}


async def test_full_plan_walks_the_steps_to_100(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_shift: Any
) -> None:
    _, zid = zone(moto, {"heroku": 100, "aws": 0}, ttl=1)
    d = start_shift(shift_config(platforms, moto, zid), "--allow-route53-writes")
    await d.wait_ready()
    seen: list[float] = []

    def record(data: dict[str, Any]) -> bool:
        if data["share"] is not None and (not seen or seen[-1] != data["share"]):
            seen.append(data["share"])
        return bool(data["state"] == "done")

    # four verdicts (at 0%, 10%, 50% and 100%), each some 30 probes a side and a ledger tick
    await d.wait_shift(record, timeout=120)
    assert weights_in(moto, zid) == {"heroku": 0, "aws": 100}
    assert seen[-1] == 100 and [s for s in seen if s in (10, 50)] == [10, 50]
    m = await d.metrics()
    assert m['cutover_shift_state{state="done"}'] == 1
    assert m['cutover_shift_changes_total{result="ok"}'] == 3
    assert m["cutover_shift_dry_run"] == 0
    assert m['cutover_shift_target_share{platform="aws"}'] == 1
    _, page = await d.get("/")
    assert "Guarded shift of api.example.com" in page
    assert d.stop() == 0


async def test_regression_rolls_back_at_once_and_stays_paused(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_shift: Any
) -> None:
    _, candidate = platforms
    _, zid = zone(moto, {"heroku": 100, "aws": 0}, ttl=1)
    # each step, 0% included, holds 6 s: time enough to break the candidate at 10%
    d = start_shift(shift_config(platforms, moto, zid, hold="6s"), "--allow-route53-writes")
    await d.wait_ready()
    await d.wait_shift(lambda s: s["share"] == 10 and s["state"] == "holding", timeout=60)
    assert weights_in(moto, zid) == {"heroku": 90, "aws": 10}
    candidate.status = 503  # down fires after 3 probes (600 ms), and the plan rolls back
    fired = time.monotonic()
    data = await d.wait_shift(lambda s: s["state"] == "rolled_back" and s["share"] == 0, timeout=15)
    assert time.monotonic() - fired < 8
    assert weights_in(moto, zid) == {"heroku": 100, "aws": 0}
    assert any("roll" in h["reason"] for h in data["history"])
    candidate.status = 200
    await asyncio.sleep(3)
    data = await d.shift()
    assert data["state"] == "rolled_back"  # a person must resume
    assert weights_in(moto, zid) == {"heroku": 100, "aws": 0}
    status, body = await d.control("resume")
    assert status == 200, body
    # back to 10% once the step at 0%, begun with the rollback, has its GO
    data = await d.wait_shift(lambda s: s["share"] == 10, timeout=60)
    assert any("readiness GO for aws at 0%" in h["reason"] for h in data["history"])
    assert d.stop() == 0


async def test_weights_changed_by_hand_pause_the_plan(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_shift: Any
) -> None:
    client, zid = zone(moto, {"heroku": 100, "aws": 0}, ttl=1)
    d = start_shift(shift_config(platforms, moto, zid, hold="6s"), "--allow-route53-writes")
    await d.wait_ready()
    await d.wait_shift(lambda s: s["share"] == 10 and s["state"] == "holding", timeout=60)
    set_weights(client, zid, {"heroku": 70, "aws": 30}, ttl=1)
    data = await d.wait_shift(lambda s: s["state"] == "paused", timeout=15)
    assert "by hand" in data["why"] or any("by hand" in h["reason"] for h in data["history"])
    await asyncio.sleep(2)
    assert weights_in(moto, zid) == {"heroku": 70, "aws": 30}  # never overwritten
    assert d.stop() == 0


async def test_restart_mid_hold_resumes_without_reapplying(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_shift: Any, tmp_path: Any
) -> None:
    _, zid = zone(moto, {"heroku": 100, "aws": 0}, ttl=1)
    state = str(tmp_path / "state")
    # a short hold takes the first step; the restarted daemon holds the next for a minute
    config = shift_config(platforms, moto, zid, hold="3s", state_dir=state)
    d = start_shift(config, "--allow-route53-writes")
    await d.wait_ready()
    first = await d.wait_shift(lambda s: s["share"] == 10 and s["state"] == "holding", timeout=60)
    assert d.stop() == 0
    config = shift_config(platforms, moto, zid, hold="60s", state_dir=state)
    d2 = start_shift(config, "--allow-route53-writes")
    await d2.wait_ready()
    await asyncio.sleep(2)
    data = await d2.shift()
    assert data["state"] == "holding" and data["share"] == 10
    assert data["since"] == first["since"]  # the hold goes on, it does not start over
    assert 0 < data["hold_left_seconds"] < 60
    m = await d2.metrics()
    assert m.get('cutover_shift_changes_total{result="ok"}', 0) == 0  # nothing applied again
    assert weights_in(moto, zid) == {"heroku": 90, "aws": 10}
    assert d2.stop() == 0


async def test_manual_mode_waits_for_approve_from_the_cli(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_shift: Any
) -> None:
    _, zid = zone(moto, {"heroku": 100, "aws": 0}, ttl=1)
    d = start_shift(shift_config(platforms, moto, zid, mode="manual"), "--allow-route53-writes")
    await d.wait_ready()
    await d.wait_shift(lambda s: s["state"] == "waiting_approval", timeout=60)
    await asyncio.sleep(1.5)
    assert weights_in(moto, zid) == {"heroku": 100, "aws": 0}  # nothing without approval

    def cli(*args: str, token: str | None = CONTROL) -> subprocess.CompletedProcess[str]:
        env = daemon_env(CUTOVER_URL=d.url)
        if token:
            env["CUTOVER_CONTROL_TOKEN"] = token
        return subprocess.run(
            [sys.executable, "-m", "exporter", "shift", *args],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=30,
        )  # fmt: skip

    loop = asyncio.get_running_loop()
    denied = await loop.run_in_executor(None, lambda: cli("approve", token="wrong"))
    assert denied.returncode == 1 and "valid bearer token" in denied.stderr
    ok = await loop.run_in_executor(None, lambda: cli("approve"))
    assert ok.returncode == 0, ok.stderr
    await d.wait_shift(lambda s: s["share"] == 10, timeout=15)
    assert weights_in(moto, zid) == {"heroku": 90, "aws": 10}
    status = await loop.run_in_executor(None, lambda: cli("status", token=None))
    assert status.returncode == 0 and "shift of api.example.com" in status.stdout
    refused = await loop.run_in_executor(None, lambda: cli("resume"))
    assert refused.returncode == 1 and "not paused" in refused.stderr
    assert d.stop() == 0


@pytest.mark.parametrize("how", ["no flag", "disabled in config", "--dry-run"])
async def test_dry_run_writes_nothing(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_shift: Any, how: str
) -> None:
    _, zid = zone(moto, {"heroku": 100, "aws": 0}, ttl=1)
    flags = {
        "no flag": (),
        "disabled in config": ("--allow-route53-writes",),
        "--dry-run": ("--allow-route53-writes", "--dry-run"),
    }[how]
    d = start_shift(shift_config(platforms, moto, zid, enabled=how != "disabled in config"), *flags)
    await d.wait_ready()
    data = await d.wait_shift(lambda s: s["state"] == "done", timeout=120)
    assert data["dry_run"] is True
    assert weights_in(moto, zid) == {"heroku": 100, "aws": 0}
    m = await d.metrics()
    assert not any("failed" in h["reason"] for h in data["history"]), data["history"]
    assert m['cutover_shift_changes_total{result="dry_run"}'] == 3
    assert m["cutover_shift_dry_run"] == 1
    assert "dry run" in d.log()
    assert d.stop() == 0


async def test_control_needs_the_token(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_shift: Any
) -> None:
    _, zid = zone(moto, {"heroku": 100, "aws": 0}, ttl=1)
    d = start_shift(shift_config(platforms, moto, zid, hold="60s"))
    await d.wait_ready()
    assert (await d.control("pause", token=None))[0] == 401
    assert (await d.control("pause", token="nope"))[0] == 401
    status, body = await d.control("pause")
    assert status == 200 and body["shift"]["state"] == "paused"
    status, body = await d.control("pause")
    assert status == 409 and "already paused" in body["error"]
    assert CONTROL not in d.log()
    assert d.stop() == 0


def test_tokens_are_not_in_the_environment_of_other_tests() -> None:
    assert os.environ.get("CUTOVER_CONTROL_TOKEN") is None


async def test_rollback_is_posted_in_the_incident_thread(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_shift: Any
) -> None:
    from tests.slack_standin import SlackStandIn

    _, candidate = platforms
    _, zid = zone(moto, {"heroku": 100, "aws": 0}, ttl=1)
    slack = SlackStandIn(token="xoxb-shift-test-token", channels={"#migration": "C0MIGR"})
    await slack.start()
    try:
        config = shift_config(platforms, moto, zid, hold="6s") + (
            "  slack:\n    token: xoxb-shift-test-token\n    channel: '#migration'\n"
            f"    api_url: {slack.url}\n"
        )
        d = start_shift(config, "--allow-route53-writes")
        await d.wait_ready()
        await d.wait_shift(lambda s: s["share"] == 10 and s["state"] == "holding", timeout=60)
        candidate.status = 503
        await d.wait_shift(lambda s: s["state"] == "rolled_back" and s["share"] == 0, timeout=15)
        assert weights_in(moto, zid) == {"heroku": 100, "aws": 0}

        def incident_post() -> Any:
            return next(
                (m for m in slack.top_level("C0MIGR") if "aws is down" in (m.text or "")), None
            )

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            (post := incident_post()) is not None
            and any("roll" in (r.text or "").lower() for r in slack.replies(post.ts))
        ):
            await asyncio.sleep(0.1)
        post = incident_post()
        assert post is not None, [m.text for m in slack.top_level("C0MIGR")]
        replies = [r.text or "" for r in slack.replies(post.ts)]
        assert any("roll" in r.lower() and "0%" in r for r in replies), replies
        # the step itself was announced on its own
        assert any("[SHIFT]" in (m.text or "") for m in slack.top_level("C0MIGR"))
        assert d.stop() == 0
    finally:
        await slack.stop()


async def test_with_an_ha_section_each_step_is_a_compare_and_swap_batch(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_shift: Any
) -> None:
    """Several replicas may write (issue 14): the step goes as DELETEs and CREATEs with the
    `_cutover-step` record beside the shifted record, never as an UPSERT, by the replica that
    holds the lease (the only one here: its lease item in moto's DynamoDB), naming its epoch."""
    client, zid = zone(moto, {"heroku": 100, "aws": 0}, ttl=1)
    table = boto3.client("dynamodb", endpoint_url=moto.url, region_name="eu-west-1")
    dynamo.create_table(table, "cutover-ha", poll=0.1)
    config = shift_config(platforms, moto, zid, steps="[10, 100]", mode="manual")
    config += (
        f"ha:\n  vantage: test-a\n  region: eu-west-1\n  endpoint_url: {moto.url}\n  lease: 2s\n"
    )
    d = start_shift(config, "--allow-route53-writes")
    await d.wait_ready()

    await d.wait_shift(lambda data: data["state"] == "waiting_approval", timeout=90)
    assert (await d.control("approve"))[0] == 200
    await d.wait_shift(lambda data: data["share"] == 10 and data["state"] != "running")

    sets = client.list_resource_record_sets(
        HostedZoneId=zid, StartRecordName=f"_cutover-step.{NAME}.", StartRecordType="TXT"
    )["ResourceRecordSets"]
    assert sets[0]["Name"] == f"_cutover-step.{NAME}."
    assert sets[0]["ResourceRecords"] == [{"Value": '"cutover step=1 epoch=1 to=heroku:90,aws:10"'}]
    assert weights_in(moto, zid) == {"heroku": 90, "aws": 10}
    assert "as step 1, epoch 1" in d.log()
    assert d.stop() == 0
