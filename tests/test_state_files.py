"""Nothing lost, whatever the state files hold: corrupt files, crashes between saves, two daemons."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.alerting.alerts import Alerts, AlertSettings
from exporter.alerting.slack import Notifier, SlackSettings
from exporter.errors import CorruptStateFile, StateDirError
from exporter.readiness.ledger import Ledger
from exporter.route53.plan import ShiftPlan, ShiftSettings
from exporter.store.local import StateDir
from tests.conftest import ROOT, DaemonProcess, FakePlatform, daemon_env, free_port
from tests.slack_standin import SlackStandIn
from tests.test_alerting_e2e import TOKEN, alerting_config, until
from tests.test_route53_daemon import NAME, Moto, moto, zone
from tests.test_shift_e2e import shift_config

__all__ = ["moto"]  # the fixture
CHANNEL = "C0MIGRATION"  # an id Slack could give: long enough to be taken for one


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    standin = SlackStandIn(token=TOKEN, channels={"#migration": CHANNEL})
    await standin.start()
    yield standin
    await standin.stop()


Start = Callable[..., DaemonProcess]
HOSTILE = "[" * 100_000  # a recursion bomb for a naive parser


def down_posts(slack: SlackStandIn) -> list[str]:
    return [
        m.text or "" for m in slack.top_level(CHANNEL) if "aws is down (down)" in (m.text or "")
    ]


# --- every loader sets an unreadable file aside, whatever the exception ------------------------


@pytest.mark.parametrize(
    "content",
    [HOSTILE, '{"version": 1, "incidents": [{"id": 1}]}', "\ud800 not utf-8", "null", "{" * 10],
)
def test_alerts_load_sets_any_unreadable_file_aside(tmp_path: Path, content: str) -> None:
    path = tmp_path / "alerts.json"
    path.write_bytes(content.encode(errors="surrogatepass"))
    with pytest.raises(CorruptStateFile, match="corrupt state file") as caught:
        Alerts.load(path, AlertSettings(), now=7.0)
    assert "moved aside to" in str(caught.value)
    assert (tmp_path / "alerts.json.corrupt-7").exists() and not path.exists()


def test_shift_load_sets_a_recursion_bomb_aside(tmp_path: Path) -> None:
    path = tmp_path / "shift.json"
    path.write_text(HOSTILE)
    settings = ShiftSettings(record=NAME, baseline="heroku", candidate="aws")
    with pytest.raises(CorruptStateFile, match="not JSON: recursion limit exceeded"):
        ShiftPlan.load(path, settings, now=7.0)
    assert (tmp_path / "shift.json.corrupt-7").exists()


def test_ledger_load_sets_a_recursion_bomb_aside(tmp_path: Path) -> None:
    path = tmp_path / "readiness.json"
    path.write_text(HOSTILE)
    with pytest.raises(CorruptStateFile, match="not JSON: recursion limit exceeded"):
        Ledger.load(path, now=7.0)
    assert (tmp_path / "readiness.json.corrupt-7").exists()


def test_outbox_load_sets_a_recursion_bomb_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "slack-outbox.json").write_text(HOSTILE)
    settings = SlackSettings(webhook_url="http://127.0.0.1:9/hook", state_dir=str(tmp_path))
    n = Notifier(settings, registry=CollectorRegistry(), clock=lambda: 7.0)
    assert n.pending() == 0
    assert (tmp_path / "slack-outbox.json.corrupt-7").exists()
    assert "the Slack outbox is unreadable" in caplog.text


def test_a_nan_in_saved_figures_is_read_as_unknown(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    path.write_text(
        '{"version": 1, "incidents": [{"id": "h.latency.1", "check": "h", "signal": "latency",'
        ' "started_at": 1, "phase": "firing", "fired_at": 2,'
        ' "figures": {"p95_ratio": NaN, "p50_ratio": Infinity, "test": "paired"}}]}'
    )
    alerts = Alerts.load(path, AlertSettings())
    assert alerts.firing()[0].figures == {"p95_ratio": None, "p50_ratio": None, "test": "paired"}
    alerts.save(path)  # and it can be written back
    assert "NaN" not in path.read_text()


async def test_every_corrupt_state_file_is_set_aside_and_the_daemon_starts(
    platforms: tuple[FakePlatform, FakePlatform],
    moto: Moto,
    slack: SlackStandIn,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    for name in ("alerts.json", "slack-outbox.json", "shift.json", "readiness.json"):
        (state / name).write_text(HOSTILE)
    _, zid = zone(moto, {"heroku": 100, "aws": 0})
    config = shift_config(platforms, moto, zid, enabled=False) + (
        f"  slack:\n    token: {TOKEN}\n    channel: '#migration'\n    api_url: {slack.url}\n"
        f"state_dir: {state}\n"
    )
    d = start_daemon(config)
    await d.wait_ready()
    log = d.log()
    for name in ("alerts.json", "slack-outbox.json", "shift.json", "readiness.json"):
        assert len(list(state.glob(f"{name}.corrupt-*"))) == 1, name
    assert "alert state unreadable" in log
    assert "step ledger unreadable" in log
    assert "the Slack outbox is unreadable" in log
    assert "shift state unreadable" in log
    assert "RecursionError" not in log and "Traceback" not in log
    assert d.stop() == 0


# --- "the incident fired" and "its message is queued" are one durable step --------------------


def _firing_incident_with_nan(now: float) -> str:
    return (
        '{"version": 1, "incidents": [{"id": "health.latency.1", "check": "health", '
        f'"signal": "latency", "started_at": {now - 60}, "phase": "firing", '
        f'"fired_at": {now - 50}, "last_seen_at": {now - 50}, "reminded_at": {now - 50}, '
        '"figures": {"p95_ratio": NaN, "test": "paired log-ratio"}, "notify": {}}]}'
    )


async def test_a_nan_in_alert_state_costs_no_message(
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    """A NaN the loader accepted used to make every save fail, and the down alert was lost."""
    _, candidate = platforms
    state = tmp_path / "state"
    state.mkdir()
    (state / "alerts.json").write_text(_firing_incident_with_nan(time.time()))
    candidate.status = 503
    d = start_daemon(alerting_config(platforms, state, slack))
    await d.wait_ready()
    await until(lambda: len(down_posts(slack)) == 1, 20, "the down message")
    await asyncio.sleep(1)
    assert len(down_posts(slack)) == 1
    saved = json.loads((state / "alerts.json").read_text())
    assert {(i["signal"], i["phase"]) for i in saved["incidents"]} >= {("down", "firing")}
    assert "Traceback" not in d.log() and "cannot save alert state" not in d.log()
    assert d.stop() == 0


def _unsaveable_outbox(state: Path) -> None:
    # a directory where the outbox file goes: every save of the outbox fails from now on
    (state / "slack-outbox.json").mkdir()
    (state / "slack-outbox.json" / "keep").write_text("")


async def _fire_with_outbox_down_then_kill(
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    start_daemon: Start,
    config: str,
    state: Path,
    fault: str,
) -> None:
    _, candidate = platforms
    d = start_daemon(config)
    await d.wait_ready()
    _unsaveable_outbox(state)
    slack.hang_seconds = 60
    slack.fail_next(fault)
    candidate.status = 503
    await until(lambda: len(slack.message_calls("chat.postMessage")) == 1, 20, "the attempt")
    saved = json.loads((state / "alerts.json").read_text())
    assert [(i["signal"], i["phase"]) for i in saved["incidents"]] == [("down", "firing")]
    assert "cannot save the Slack outbox" in d.log()
    d.proc.kill()  # kill -9 while the message is neither delivered nor in the outbox file
    d.proc.wait()
    shutil.rmtree(state / "slack-outbox.json")


async def test_a_crash_between_the_incident_and_the_outbox_loses_no_message(
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    config = alerting_config(platforms, state, slack)
    # the attempt hangs and stores nothing: when the daemon dies, only alerts.json knows
    await _fire_with_outbox_down_then_kill(platforms, slack, start_daemon, config, state, "hang")
    assert down_posts(slack) == []

    d2 = start_daemon(config)
    await d2.wait_ready()
    await until(lambda: len(down_posts(slack)) == 1, 20, "the down message after the restart")
    await asyncio.sleep(1)
    assert len(down_posts(slack)) == 1
    assert d2.stop() == 0


async def test_a_message_that_landed_before_the_crash_is_not_posted_again(
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    # the channel by its id: the message can be looked for from the very first one
    config = alerting_config(platforms, state, slack).replace("'#migration'", CHANNEL)
    # Slack stores the message, then never answers: the daemon dies not knowing it landed
    await _fire_with_outbox_down_then_kill(
        platforms, slack, start_daemon, config, state, "hang_after"
    )
    assert len(down_posts(slack)) == 1

    d2 = start_daemon(config)
    await d2.wait_ready()
    await until(lambda: "already in Slack" in d2.log(), 20, "the look-up in the channel")
    await asyncio.sleep(1)
    assert len(down_posts(slack)) == 1
    assert d2.stop() == 0


# --- one daemon per state_dir ------------------------------------------------------------------


def _run(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--config", str(config),
         "--listen", f"127.0.0.1:{free_port()}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=daemon_env(), cwd=ROOT,
    )  # fmt: skip


async def test_a_second_daemon_on_the_same_state_dir_refuses_to_start(
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    first = start_daemon(alerting_config(platforms, state, slack))
    await first.wait_ready()
    other = tmp_path / "other.yml"
    other.write_text(alerting_config(platforms, state, slack))

    second = _run(other, tmp_path / "second.log")
    try:
        assert second.wait(20) == 1
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    said = (tmp_path / "second.log").read_text()
    assert f"state_dir {state} is in use by another cutover daemon (pid {first.proc.pid} on" in said
    assert "give this one its own state_dir" in said
    assert first.proc.poll() is None
    assert (await first.get("/-/ready"))[0] == 200

    # the kernel drops the lock with its holder, however it ends
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    third = _run(other, tmp_path / "third.log")
    try:
        deadline = time.monotonic() + 20
        while "listening on" not in (tmp_path / "third.log").read_text():
            assert third.poll() is None, (tmp_path / "third.log").read_text()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        third.terminate()
        assert third.wait(10) == 0


def test_state_dir_lock_names_its_holder(tmp_path: Path) -> None:
    held = StateDir.open(tmp_path)
    text = (tmp_path / "cutover.lock").read_text()
    assert text.startswith(f"pid {os.getpid()} on ")
    with pytest.raises(
        StateDirError, match=f"in use by another cutover daemon \\(pid {os.getpid()}"
    ):
        StateDir.open(tmp_path)
    held.close()
    StateDir.open(tmp_path).close()  # released: anyone may take it
