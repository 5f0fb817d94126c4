"""Regressions end to end: the daemon as a subprocess, two local platforms, a local Slack."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, FakePlatform, config_yaml
from tests.slack_standin import WORKSPACE_URL, SlackStandIn

Start = Callable[..., DaemonProcess]
TOKEN = "xoxb-e2e-secret-token-1234"


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    standin = SlackStandIn(token=TOKEN, channels={"#migration": "C0MIGR"})
    await standin.start()
    yield standin
    await standin.stop()


def alerting_config(
    platforms: tuple[FakePlatform, FakePlatform],
    state_dir: Path,
    slack: SlackStandIn,
    *,
    webhook: bool = False,
    token: str = TOKEN,
) -> str:
    baseline, candidate = platforms
    target = (
        f"    webhook_url: {slack.webhook_url}\n"
        if webhook
        else f"    token: {token}\n    channel: '#migration'\n    api_url: {slack.url}\n"
    )
    return (
        config_yaml(baseline.url, candidate.url, window="20s")
        + f"""\
  min_samples: 10
  down_after: 3
state_dir: {state_dir}
alerting:
  for: 2s
  resolve_after: 2s
  repeat_interval: 1h
  dashboard_url: https://grafana.example.test/d/cutover-overview
  slack:
{target}"""
    )


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def posts(slack: SlackStandIn) -> list[object]:
    return [c for c in slack.message_calls("chat.postMessage") if c.thread_ts is None]


async def test_latency_regression_one_message_then_edit_and_thread_reply(
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    baseline, candidate = platforms
    baseline.delay = candidate.delay = 0.01
    d = start_daemon(alerting_config(platforms, tmp_path / "state", slack))
    await d.wait_ready()
    await asyncio.sleep(3)  # a healthy history on both sides
    assert slack.message_calls() == []

    candidate.delay = 0.12  # 12x slower, far beyond 1.5x and 25 ms
    onset = time.monotonic()
    await until(lambda: len(posts(slack)) == 1, 20, "the firing message")
    detection = time.monotonic() - onset
    msg = slack.top_level("C0MIGR")[0]
    assert "health" in msg.text and "aws is slower than heroku (latency)" in msg.text
    assert "aws (candidate): p50 1" in msg.text and "heroku (baseline): p50 1" in msg.text
    assert "p95 " in msg.text and "(tolerated 1.5x)" in msg.text
    assert "https://grafana.example.test/d/cutover-overview" in msg.text
    assert msg.blocks and msg.blocks[0]["type"] == "header"
    m = await d.metrics()
    assert m['cutover_regression{check="health",signal="latency"}'] == 1
    assert m['cutover_alert_firing{check="health",signal="latency"}'] == 1
    assert m['cutover_alert_firing{check="health",signal="down"}'] == 0
    _, page = await d.get("/")
    assert "firing" in page and "latency" in page
    _, body = await d.get("/api/v1/status")
    alerts = json.loads(body)["alerts"]
    assert [(a["check"], a["signal"], a["phase"]) for a in alerts] == [
        ("health", "latency", "firing")
    ]
    # `for` is 2 s at 5 probes/s: well within for + a few probes of evidence
    assert detection < 15, detection

    await asyncio.sleep(2)
    assert len(posts(slack)) == 1  # still one message: no storm while it fires
    candidate.delay = 0.01
    await until(lambda: slack.replies(msg.ts), 40, "the resolve reply")
    edited = slack.messages[msg.ts]
    assert edited.edits == 1 and "[RESOLVED]" in (edited.text or "")
    reply = slack.replies(msg.ts)[0]
    assert "lasted" in (reply.text or "")
    # the stand-in holds the reply before the daemon has its answer, and counts it only then
    sent = 'cutover_notifications_total{channel="#migration"}'
    m = await d.wait_for(lambda m: m.get(sent) == 3)
    assert m['cutover_alert_firing{check="health",signal="latency"}'] == 0
    assert len(posts(slack)) == 1
    # resolved, the incident stays in the history with its duration and a link to its message
    link = f"{WORKSPACE_URL}archives/C0MIGR/p{msg.ts.replace('.', '')}"
    _, body = await d.get("/api/v1/status")
    [past] = json.loads(body)["resolved_alerts"]
    assert (past["check"], past["signal"], past["phase"]) == ("health", "latency", "resolved")
    assert past["duration_seconds"] > 0 and past["slack_link"] == link
    _, page = await d.get("/")
    history = page.split("<h2>Incident history</h2>", 1)[1].split("</table>", 1)[0]
    assert "health" in history and "latency" in history and f"href='{link}'" in history
    assert past["id"] not in page  # no internal ids on the page
    for where in (d.log(), page, body, "\n".join(f"{k} {v}" for k, v in m.items())):
        assert TOKEN not in where
    assert d.stop() == 0


async def test_restart_mid_incident_posts_nothing_twice_and_still_resolves(
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    _, candidate = platforms
    state = tmp_path / "state"
    config = alerting_config(platforms, state, slack)
    d = start_daemon(config)
    await d.wait_ready()
    candidate.status = 503  # hard down: fires at once
    await until(lambda: len(posts(slack)) == 1, 15, "the down message")
    msg = slack.top_level("C0MIGR")[0]
    assert "aws is down (down)" in (msg.text or "")
    assert d.stop() == 0
    assert (state / "alerts.json").exists()

    d2 = start_daemon(config)
    await d2.wait_ready()
    await d2.wait_for(lambda m: m.get('cutover_alert_firing{check="health",signal="down"}') == 1)
    await asyncio.sleep(2)
    assert len(posts(slack)) == 1  # the firing incident was not posted again
    candidate.status = 200
    await until(lambda: slack.replies(msg.ts), 30, "the resolve reply after the restart")
    assert slack.messages[msg.ts].edits == 1
    assert len(posts(slack)) == 1
    assert d2.stop() == 0


async def test_slack_faults_deliver_exactly_once(
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    _, candidate = platforms
    slack.fail_next("ratelimited")
    slack.fail_next("server_error", 2)
    d = start_daemon(alerting_config(platforms, tmp_path / "state", slack))
    await d.wait_ready()
    candidate.status = 503
    await until(lambda: len(slack.top_level("C0MIGR")) == 1, 30, "delivery after the faults")
    msg = slack.top_level("C0MIGR")[0]
    answers = [c.answer for c in slack.message_calls("chat.postMessage")]
    assert answers == ["ratelimited", "server_error", "server_error", "ok"]
    # the resolve: the edit goes through, the reply lands but its answer is lost
    slack.fail_next("ok")
    slack.fail_next("drop_after")
    candidate.status = 200
    await until(lambda: slack.replies(msg.ts), 30, "the resolve reply")
    await asyncio.sleep(3)  # time enough for a wrong re-send
    assert len(slack.replies(msg.ts)) == 1  # found in the thread, not posted twice
    assert len(slack.top_level("C0MIGR")) == 1
    m = await d.metrics()
    assert m['cutover_notification_failures_total{channel="#migration",reason="ratelimited"}'] == 1
    assert m['cutover_notification_failures_total{channel="#migration",reason="server_error"}'] == 2
    assert m['cutover_notifications_pending{channel="#migration"}'] == 0
    assert d.stop() == 0


async def test_webhook_mode_posts_firing_and_resolve(
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    _, candidate = platforms
    d = start_daemon(alerting_config(platforms, tmp_path / "state", slack, webhook=True))
    await d.wait_ready()
    candidate.status = 503
    await until(lambda: len(slack.message_calls("webhook")) >= 1, 15, "the firing webhook")
    candidate.status = 200
    await until(lambda: len(slack.message_calls("webhook")) >= 3, 30, "the resolve webhooks")
    texts = [c.text or "" for c in slack.message_calls("webhook")]
    assert "aws is down" in texts[0] and "[RESOLVED]" in texts[1] and "lasted" in texts[2]
    assert slack.webhook_url not in d.log()
    assert d.stop() == 0


async def test_bad_token_is_logged_once_and_nothing_is_lost(
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    _, candidate = platforms
    state = tmp_path / "state"
    d = start_daemon(alerting_config(platforms, state, slack, token="xoxb-wrong-token-5678"))
    await d.wait_ready()
    candidate.status = 503
    m = await d.wait_for(
        lambda m: (
            m.get(
                'cutover_notification_failures_total{channel="#migration",reason="invalid_auth"}', 0
            )
            >= 1
        )
    )
    await asyncio.sleep(2)
    calls = len(slack.message_calls())
    await asyncio.sleep(2)
    assert len(slack.message_calls()) == calls  # parked, not retried in a loop
    m = await d.metrics()
    assert m['cutover_notifications_pending{channel="#migration"}'] >= 1
    assert d.log().count("invalid_auth") == 1
    assert "xoxb-wrong-token-5678" not in d.log()
    assert d.proc.poll() is None

    # fix the token and reload: the kept notification is delivered
    d.config.write_text(alerting_config(platforms, state, slack))
    assert (await d.post("/-/reload"))[0] == 200
    await until(lambda: len(slack.top_level("C0MIGR")) == 1, 15, "delivery after the reload")
    assert d.stop() == 0


async def test_check_slack_test_sends_one_message_opt_in(
    platforms: tuple[FakePlatform, FakePlatform], slack: SlackStandIn, tmp_path: Path
) -> None:
    from tests.conftest import ROOT, daemon_env

    async def check(config: str, *flags: str) -> tuple[int, str, str]:
        path = tmp_path / "check.yml"
        path.write_text(config)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exporter", "check", "--config", str(path), *flags,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=daemon_env(), cwd=ROOT,
        )  # fmt: skip
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    good = alerting_config(platforms, tmp_path / "state", slack)
    code, out, _ = await check(good)
    assert code == 0 and slack.message_calls() == []  # without the flag, nothing is sent
    code, out, _ = await check(good, "--slack-test")
    assert code == 0 and "Slack: test message sent" in out
    assert len(slack.top_level("C0MIGR")) == 1
    bad = alerting_config(platforms, tmp_path / "state", slack, token="xoxb-wrong-token-5678")
    code, out, err = await check(bad, "--slack-test")
    assert code == 1 and "Slack test failed" in err and "invalid_auth" in err
    assert "xoxb-wrong-token-5678" not in out + err


async def test_reloads_that_leave_slack_alone_keep_its_retry_after(
    platforms: tuple[FakePlatform, FakePlatform],
    slack: SlackStandIn,
    start_daemon: Start,
    tmp_path: Path,
) -> None:
    """Eleven attempts in ten seconds under Retry-After: 30 was every reload cutting it short."""
    _, candidate = platforms
    slack.retry_after = 30
    slack.fail_next("ratelimited")
    d = start_daemon(alerting_config(platforms, tmp_path / "state", slack))
    await d.wait_ready()
    candidate.status = 503
    await until(lambda: len(slack.message_calls()) == 1, 15, "the first attempt")
    for _ in range(8):
        d.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.25)
    assert (await d.post("/-/reload"))[0] == 200
    await asyncio.sleep(1)
    assert [c.answer for c in slack.message_calls()] == ["ratelimited"]
    assert d.log().count("configuration reloaded") == 9
    assert d.stop() == 0
