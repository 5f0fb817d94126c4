"""The step ledger in a running daemon: a person's weight change in moto's Route53 starts a new
step, the verdict and the steps are in /api/v1/readiness and /metrics, and a restart continues
the step where it was."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, DaemonProcess, FakePlatform, daemon_env
from tests.test_route53_daemon import NAME, Moto, moto, route53_config, set_weights, zone

__all__ = ["moto"]  # the fixture, imported for its side of the test module

Start = Callable[..., DaemonProcess]
START = f'cutover_step_start_timestamp_seconds{{record="{NAME}"}}'


def verdict(name: str) -> str:
    return f'cutover_readiness{{record="{NAME}",verdict="{name}"}}'


def config(platforms: tuple[FakePlatform, FakePlatform], m: Moto, zid: str, state: Path) -> str:
    return route53_config(platforms, m, zid) + (
        f"state_dir: {state}\nreadiness: {{hold: 2s, min_probes: 5}}\n"
    )


async def readiness(d: DaemonProcess) -> dict[str, Any]:
    status, body = await d.get("/api/v1/readiness")
    assert status == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


async def wait_readiness(
    d: DaemonProcess, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = await readiness(d)
        if predicate(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"not met; last answer:\n{data}\n{d.log()[-3000:]}")
        await asyncio.sleep(0.2)


def report(*args: str) -> str:
    """`cutover report ARGS`'s output; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "report", *args],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=daemon_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def current(data: dict[str, Any]) -> dict[str, Any]:
    (record,) = data["records"]
    assert record["record"] == NAME
    return record  # type: ignore[no-any-return]


async def test_a_persons_weight_change_starts_a_step_and_a_restart_continues_it(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_daemon: Start, tmp_path: Path
) -> None:
    client, zid = zone(moto, {"heroku": 90, "aws": 10})
    text = config(platforms, moto, zid, tmp_path / "state")
    d = start_daemon(text)
    await d.wait_ready()
    m = await d.wait_for(lambda m: START in m)
    first_start = m[START]
    data = await wait_readiness(d, lambda data: bool(data["records"]))
    record = current(data)
    assert record["step"]["changed_by"] == "unknown"
    assert record["step"]["shares"] == {"heroku": 0.9, "aws": 0.1}
    assert record["step"]["started_at"] == first_start
    assert record["next_share"] == 0.25 and record["verdict"] in ("GO", "WAIT", "NO-GO")
    assert isinstance(record["reasons"], list)
    # the metric says what the API says, one verdict at a time (read until a tick falls
    # between the two reads no more)
    deadline = time.monotonic() + 20
    while True:
        said = current(await readiness(d))["verdict"]
        m = await d.metrics()
        if m.get(verdict(said)) == 1 or time.monotonic() > deadline:
            break
    assert m[verdict(said)] == 1
    assert sum(m[verdict(v)] for v in ("GO", "WAIT", "NO-GO")) == 1
    await asyncio.sleep(3)  # past the hold: the step's summary will hold a verdict on evidence

    set_weights(client, zid, {"heroku": 75, "aws": 25})
    m = await d.wait_for(lambda m: m.get(START, 0) > first_start)
    second_start = m[START]
    data = await wait_readiness(d, lambda data: current(data)["step"]["started_at"] > first_start)
    record = current(data)
    assert record["step"]["changed_by"] == "person"
    assert record["step"]["shares"] == {"heroku": 0.75, "aws": 0.25}
    assert record["next_share"] == 0.5
    (past,) = data["steps"][NAME]
    assert (past["changed_by"], past["shares"]) == ("unknown", {"heroku": 0.9, "aws": 0.1})
    assert past["started_at"] == first_start and past["ended_at"] >= second_start - 6
    assert (
        past["verdict"] in ("GO", "WAIT", "NO-GO")
        and past["readiness"]["verdict"] == past["verdict"]
    )
    assert past["incidents"] == [] and past["duration_seconds"] > 3
    # `cutover report` from the running daemon, for a change ticket
    md = report("--url", d.url, "--format", "markdown")
    assert f"## {NAME}: " in md and "by a person" in md and "### Previous steps" in md
    assert f"| {NAME}" not in md and "| health: probes |" in md
    assert json.loads(report("--url", d.url, "--format", "json"))["records"][0]["record"] == NAME
    assert d.stop() == 0
    # and from the state_dir the daemon left
    offline = report("--state-dir", str(tmp_path / "state"))
    assert f"{NAME}: " in offline and "heroku 75%, aws 25%" in offline
    assert "Judged as of" in offline and "Previous steps:" in offline
    ledger = json.loads((tmp_path / "state" / "readiness.json").read_text())
    (saved,) = ledger["steps"]
    assert saved["changed_by"] == "person" and saved["started_at"] == second_start

    again = start_daemon(text)
    await again.wait_ready()
    data = await wait_readiness(again, lambda data: bool(data["records"]))
    record = current(data)
    assert record["step"]["changed_by"] == "person"
    assert record["step"]["started_at"] == second_start  # the same step, continued
    assert [s["changed_by"] for s in data["steps"][NAME]] == ["unknown"]
    m = await again.wait_for(lambda m: START in m)
    assert m[START] == second_start
    assert again.stop() == 0
