"""Slack delivery against a local Web API stand-in: order, threads, retries, parking, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.alerting.slack import Notification, Notifier, SlackError, SlackSettings
from tests.slack_standin import WORKSPACE_URL, SlackStandIn

TOKEN = "xoxb-1111-2222-secret-test-token"
WRONG = "xoxb-9999-0000-revoked-test-token"
BLOCKS = ({"type": "section", "text": {"type": "mrkdwn", "text": "*FIRING* p95 240 ms vs 80 ms"}},)


@pytest.fixture
async def standin() -> AsyncIterator[SlackStandIn]:
    s = SlackStandIn(token=TOKEN, hang_seconds=3.0)
    await s.start()
    yield s
    await s.stop()


def token_settings(standin: SlackStandIn, **kw: Any) -> SlackSettings:
    values: dict[str, Any] = {"token": TOKEN, "channel": "#alerts", "api_url": standin.url}
    values.update(kw)
    return SlackSettings(**values)


def notifier(
    settings: SlackSettings, registry: CollectorRegistry | None = None, **kw: Any
) -> Notifier:
    kw.setdefault("min_interval", 0.05)
    kw.setdefault("min_backoff", 0.1)
    kw.setdefault("max_backoff", 1.0)
    return Notifier(settings, registry=registry or CollectorRegistry(), **kw)


@asynccontextmanager
async def running(n: Notifier) -> AsyncIterator[Notifier]:
    task = asyncio.create_task(n.run())
    try:
        yield n
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await n.aclose()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def fire(incident: str, text: str = "FIRING", blocks: Any = BLOCKS) -> Notification:
    return Notification(f"{incident}:fire", incident, "post", text, blocks)


def resolve(incident: str) -> tuple[Notification, Notification]:
    return (
        Notification(f"{incident}:resolve", incident, "edit", "RESOLVED", None),
        Notification(f"{incident}:resolve:reply", incident, "reply", "lasted 4m 10s"),
    )


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def failures(registry: CollectorRegistry, reason: str, channel: str = "#alerts") -> float | None:
    return metric(registry, "cutover_notification_failures_total", channel=channel, reason=reason)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_post_then_edit_and_threaded_reply_land_on_the_incident_message(
    standin: SlackStandIn,
) -> None:
    registry = CollectorRegistry()
    n = notifier(token_settings(standin), registry)
    assert n.enqueue(fire("inc-1"))
    for item in resolve("inc-1"):
        assert n.enqueue(item)
    assert n.pending() == 3
    assert metric(registry, "cutover_notifications_pending", channel="#alerts") == 3
    async with running(n):
        assert await n.flush(5)

    [message] = standin.top_level()
    assert n.thread_of("inc-1") == ("C0123", message.ts)
    assert message.text == "RESOLVED"
    assert message.blocks is None  # the firing blocks are gone, not left beside the new text
    assert message.edits == 1
    assert [r.text for r in standin.replies(message.ts)] == ["lasted 4m 10s"]
    assert [c.method for c in standin.message_calls()] == [
        "chat.postMessage",
        "chat.update",
        "chat.postMessage",
    ]
    first = standin.message_calls()[0]
    assert first.blocks == [dict(b) for b in BLOCKS]
    assert first.metadata == {
        "event_type": "cutover_notification",
        "event_payload": {"key": "inc-1:fire"},
    }
    assert metric(registry, "cutover_notifications_total", channel="#alerts") == 3
    assert metric(registry, "cutover_notifications_pending", channel="#alerts") == 0
    assert failures(registry, "server_error") == 0
    assert not n.enqueue(fire("inc-1")), "a delivered key is a no-op"


async def test_webhook_mode_posts_firing_and_resolve_messages(
    standin: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    registry = CollectorRegistry()
    n = notifier(SlackSettings(webhook_url=standin.webhook_url), registry)
    n.enqueue(fire("inc-1"))
    for item in resolve("inc-1"):
        n.enqueue(item)
    async with running(n):
        assert await n.flush(5)
    assert [m.text for m in standin.top_level()] == ["FIRING", "RESOLVED", "lasted 4m 10s"]
    assert standin.top_level()[0].blocks == [dict(b) for b in BLOCKS]
    assert n.thread_of("inc-1") is None  # webhooks answer no ts
    assert metric(registry, "cutover_notifications_total", channel="webhook") == 3
    assert standin.webhook_path not in caplog.text


async def test_ratelimited_waits_for_retry_after_and_delivers_once(standin: SlackStandIn) -> None:
    registry = CollectorRegistry()
    n = notifier(token_settings(standin), registry)
    standin.fail_next("ratelimited")
    n.enqueue(fire("inc-1"))
    async with running(n):
        assert await n.flush(10)
    first, second = standin.message_calls()
    assert first.answer == "ratelimited" and second.answer == "ok"
    assert second.at - first.at >= standin.retry_after
    assert len(standin.top_level()) == 1
    assert failures(registry, "ratelimited") == 1
    assert metric(registry, "cutover_notifications_total", channel="#alerts") == 1


async def test_retry_after_is_capped(
    standin: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy's "Retry-After: 86400" must not hold a firing alert for a day."""
    standin.retry_after = 86400
    n = notifier(token_settings(standin))
    standin.fail_next("ratelimited")
    caplog.set_level(logging.DEBUG, "cutover.slack")
    n.enqueue(fire("inc-1"))
    async with running(n):
        await until(lambda: "retrying in" in caplog.text)
    [line] = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    delay = float(line.split("retrying in ")[1].split(" s")[0])
    assert 120 <= delay <= 132, line  # MAX_RETRY_AFTER, with its 10% of jitter


async def test_the_same_settings_again_keep_the_backoff(standin: SlackStandIn) -> None:
    """A reload that leaves Slack alone must not cut a Retry-After short."""
    standin.retry_after = 30
    settings = token_settings(standin)
    n = notifier(settings)
    standin.fail_next("ratelimited")
    n.enqueue(fire("inc-1"))
    async with running(n):
        await until(lambda: len(standin.message_calls()) == 1)
        for _ in range(10):
            n.update_settings(token_settings(standin))  # equal, not the same object
            await asyncio.sleep(0.1)
        assert [c.answer for c in standin.message_calls()] == ["ratelimited"]
        # new settings are a new start: the kept notification goes out at once
        n.update_settings(token_settings(standin, channel="#general"))
        await until(lambda: len(standin.message_calls()) == 2)


@pytest.mark.parametrize(
    ("faults", "reason", "searches"),
    [
        # a 5xx or a reset may come after Slack stored the post: look before sending again
        (["server_error", "server_error"], "server_error", ["conversations.history"] * 2),
        (["drop"], "connection", ["conversations.history"]),
        (["drop_after"], "connection", ["conversations.history"]),
        (["ok", "drop_after"], "connection", ["conversations.replies"]),
        (["ratelimited"], "ratelimited", []),
    ],
    ids=["500-twice", "reset", "answer-lost", "reply-answer-lost", "429"],
)
async def test_transient_faults_are_retried_and_delivered_once(
    standin: SlackStandIn, faults: list[str], reason: str, searches: list[str]
) -> None:
    registry = CollectorRegistry()
    standin.retry_after = 0
    n = notifier(token_settings(standin), registry)
    n.enqueue(fire("inc-0", "earlier"))  # Slack tells us the channel's id: history can be searched
    async with running(n):
        assert await n.flush(5)
        for fault in faults:
            standin.fail_next(fault)
        n.enqueue(fire("inc-1"))
        n.enqueue(Notification("inc-1:remind:1", "inc-1", "reply", "still firing"))
        assert await n.flush(10)
    assert [m.text for m in standin.top_level()] == ["earlier", "FIRING"]
    [parent] = [m for m in standin.top_level() if m.text == "FIRING"]
    assert [m.text for m in standin.replies(parent.ts)] == ["still firing"]
    assert n.thread_of("inc-1") == ("C0123", parent.ts)
    assert [c.method for c in standin.calls if c.method.startswith("conversations")] == searches
    assert failures(registry, reason) == len([f for f in faults if f != "ok"])
    assert metric(registry, "cutover_notifications_total", channel="#alerts") == 3


async def test_lost_answer_without_history_scope_is_sent_again_and_said_once(
    standin: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cutover.slack")
    standin.history_scope = False
    n = notifier(token_settings(standin))
    async with running(n):
        n.enqueue(fire("inc-0", "earlier"))
        assert await n.flush(5)
        for fault in ("drop_after", "ok", "drop_after"):
            standin.fail_next(fault)
        n.enqueue(fire("inc-1"))
        n.enqueue(fire("inc-2", "OTHER"))
        assert await n.flush(10)
    # at-least-once: the documented duplicate when Slack may not be asked
    assert [m.text for m in standin.top_level()] == [
        "earlier",
        "FIRING",
        "FIRING",
        "OTHER",
        "OTHER",
    ]
    assert caplog.text.count("channels:history") == 1


async def test_timeout_is_retried_and_counted(standin: SlackStandIn) -> None:
    registry = CollectorRegistry()
    n = notifier(token_settings(standin), registry, timeout=1)
    standin.fail_next("hang")
    n.enqueue(fire("inc-1"))
    async with running(n):
        assert await n.flush(10)
    assert len(standin.top_level()) == 1
    assert failures(registry, "timeout") == 1


async def test_invalid_auth_parks_once_then_a_reload_delivers_everything_in_order(
    standin: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    registry = CollectorRegistry()
    n = notifier(token_settings(standin, token=WRONG), registry)
    async with running(n):
        n.enqueue(fire("inc-1"))
        for item in resolve("inc-1"):
            n.enqueue(item)
        await asyncio.sleep(2.0)
        n.enqueue(fire("inc-2", "SECOND"))
        await asyncio.sleep(0.2)
        assert [c.answer for c in standin.calls] == ["invalid_auth"], "parked: no retry loop"
        assert n.pending() == 4
        assert not await n.flush(5), "a parked outbox does not make shutdown wait"
        [line] = errors(caplog)
        assert "Slack rejected the token (invalid_auth): check alerting.slack.token" in line
        assert "3 notification(s) are kept" in line
        assert failures(registry, "invalid_auth") == 1

        n.update_settings(token_settings(standin))
        assert await n.flush(5)
    [first, second] = standin.top_level()
    assert (first.text, second.text) == ("RESOLVED", "SECOND")
    assert [m.text for m in standin.replies(first.ts)] == ["lasted 4m 10s"]
    assert metric(registry, "cutover_notifications_total", channel="#alerts") == 4
    assert TOKEN not in caplog.text and WRONG not in caplog.text


async def test_channel_not_found_parks_until_the_channel_is_fixed(
    standin: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    n = notifier(token_settings(standin, channel="#nope"), registry)
    async with running(n):
        n.enqueue(fire("inc-1"))
        n.enqueue(fire("inc-2", "SECOND"))
        await asyncio.sleep(1.0)
        assert len(standin.message_calls()) == 1
        [line] = errors(caplog)
        assert (
            "Slack cannot find channel #nope (channel_not_found): check alerting.slack.channel"
            in line
        )
        assert failures(registry, "channel_not_found", "#nope") == 1
        assert metric(registry, "cutover_notifications_pending", channel="#nope") == 2

        n.update_settings(token_settings(standin))
        assert await n.flush(5)
    assert [m.text for m in standin.top_level()] == ["FIRING", "SECOND"]
    assert metric(registry, "cutover_notifications_pending", channel="#nope") is None
    assert metric(registry, "cutover_notifications_total", channel="#alerts") == 2


async def test_a_channel_fault_injected_once_also_parks(standin: SlackStandIn) -> None:
    n = notifier(token_settings(standin))
    standin.fail_next("channel_not_found")
    async with running(n):
        n.enqueue(fire("inc-1"))
        await until(lambda: len(standin.calls) == 1)
        await asyncio.sleep(0.5)
        assert len(standin.calls) == 1 and n.pending() == 1
        n.update_settings(token_settings(standin))  # e.g. the app was invited, then a reload
        assert await n.flush(5)
    assert len(standin.top_level()) == 1


async def test_restart_sends_pending_notifications_once_and_remembers_delivered_keys(
    standin: SlackStandIn, tmp_path: Path
) -> None:
    settings = token_settings(standin, state_dir=str(tmp_path))
    standin.fail_next("server_error", 1000)
    first = notifier(settings)
    notes = [fire(f"inc-{i}", f"message {i}") for i in range(3)]
    async with running(first):
        assert all(first.enqueue(note) for note in notes)
        await until(lambda: len(standin.message_calls()) >= 2)
    assert (tmp_path / "slack-outbox.json").exists()
    assert standin.top_level() == []

    standin.faults.clear()
    second = notifier(settings)
    assert second.pending() == 3
    assert not second.enqueue(notes[0]), "still queued"
    async with running(second):
        assert await second.flush(5)
    assert [m.text for m in standin.top_level()] == ["message 0", "message 1", "message 2"]

    third = notifier(settings)
    assert not third.enqueue(notes[1]), "delivered before the restart"
    assert third.pending() == 0
    assert third.thread_of("inc-2") == ("C0123", standin.top_level()[2].ts)


async def test_thread_survives_a_restart(standin: SlackStandIn, tmp_path: Path) -> None:
    settings = token_settings(standin, state_dir=str(tmp_path))
    first = notifier(settings)
    async with running(first):
        first.enqueue(fire("inc-1"))
        assert await first.flush(5)
    second = notifier(settings)
    for item in resolve("inc-1"):
        second.enqueue(item)
    async with running(second):
        assert await second.flush(5)
    [message] = standin.top_level()
    assert message.text == "RESOLVED"
    assert [m.text for m in standin.replies(message.ts)] == ["lasted 4m 10s"]


async def test_post_in_flight_at_a_crash_is_found_not_posted_again(
    standin: SlackStandIn, tmp_path: Path
) -> None:
    settings = token_settings(standin, state_dir=str(tmp_path))
    first = notifier(settings)
    async with running(first):
        first.enqueue(fire("inc-0", "earlier"))
        assert await first.flush(5)
        standin.fail_next("hang_after")  # Slack stores it; the daemon dies before the answer
        first.enqueue(fire("inc-1"))
        await until(lambda: len(standin.top_level()) == 2)
    second = notifier(settings)
    assert second.pending() == 1
    second.enqueue(resolve("inc-1")[1])
    async with running(second):
        assert await second.flush(5)
    assert [m.text for m in standin.top_level()] == ["earlier", "FIRING"]
    parent = standin.top_level()[1]
    assert second.thread_of("inc-1") == ("C0123", parent.ts)
    assert [m.text for m in standin.replies(parent.ts)] == ["lasted 4m 10s"]


async def test_messages_to_one_channel_are_spaced_by_min_interval(standin: SlackStandIn) -> None:
    n = notifier(token_settings(standin), min_interval=0.2)
    for i in range(3):
        n.enqueue(fire(f"inc-{i}", f"message {i}"))
    async with running(n):
        assert await n.flush(5)
    times = [c.at for c in standin.message_calls()]
    assert len(times) == 3
    # a hair of slack: asyncio may wake a timer within its clock resolution
    assert all(b - a >= 0.2 - 0.005 for a, b in itertools.pairwise(times))


async def test_refused_blocks_are_sent_as_plain_text_and_a_hopeless_message_is_dropped(
    standin: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    n = notifier(token_settings(standin), registry)
    standin.fail_next("invalid_blocks")
    async with running(n):
        n.enqueue(fire("inc-1"))
        assert await n.flush(5)
        [plain] = standin.top_level()
        assert (plain.text, plain.blocks) == ("FIRING", None)

        standin.fail_next("msg_too_long", 2)
        n.enqueue(fire("inc-2", "far too long"))
        n.enqueue(fire("inc-3", "after it"))
        assert await n.flush(5)
    assert [m.text for m in standin.top_level()] == ["FIRING", "after it"]
    assert failures(registry, "invalid_message") == 3
    [line] = errors(caplog)
    assert "inc-2:fire" in line and "msg_too_long" in line and "dropped" in line
    assert not n.enqueue(fire("inc-2", "far too long")), "a dropped key is not retried either"


async def test_refused_metadata_is_left_off_but_blocks_are_kept(standin: SlackStandIn) -> None:
    n = notifier(token_settings(standin))
    standin.fail_next("metadata_must_be_sent_from_app")
    async with running(n):
        n.enqueue(fire("inc-1"))
        n.enqueue(fire("inc-2", "SECOND"))
        assert await n.flush(5)
    assert [(m.text, m.blocks) for m in standin.top_level()] == [
        ("FIRING", [dict(b) for b in BLOCKS]),
        ("SECOND", [dict(b) for b in BLOCKS]),
    ]
    assert [c.metadata is None for c in standin.message_calls()] == [False, True, True]


async def test_an_edit_of_a_deleted_message_is_posted_anew(standin: SlackStandIn) -> None:
    n = notifier(token_settings(standin))
    async with running(n):
        n.enqueue(fire("inc-1"))
        assert await n.flush(5)
        del standin.messages[standin.top_level()[0].ts]  # someone deleted it in Slack
        for item in resolve("inc-1"):
            n.enqueue(item)
        assert await n.flush(5)
    [message] = standin.top_level()
    assert message.text == "RESOLVED"
    assert [m.text for m in standin.replies(message.ts)] == ["lasted 4m 10s"]


async def test_a_corrupt_outbox_is_moved_aside_and_delivery_goes_on(
    standin: SlackStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "slack-outbox.json").write_text('{"version": 1, "queue": [{"key": ')
    n = notifier(token_settings(standin, state_dir=str(tmp_path)))
    [line] = errors(caplog)
    assert "is unreadable" in line and "moved aside to" in line
    assert len(list(tmp_path.glob("slack-outbox.json.corrupt-*"))) == 1
    async with running(n):
        n.enqueue(fire("inc-1"))
        assert await n.flush(5)
    saved = json.loads((tmp_path / "slack-outbox.json").read_text())
    assert saved["queue"] == [] and saved["done"] == ["inc-1:fire"]


async def test_a_wrong_webhook_parks_without_printing_its_url(
    standin: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = standin.webhook_url.rsplit("/", 1)[0] + "/0123456789abcdef"
    n = notifier(SlackSettings(webhook_url=wrong))
    async with running(n):
        n.enqueue(fire("inc-1"))
        await asyncio.sleep(0.5)
        [line] = errors(caplog)
        assert (
            "Slack rejected the webhook URL (no_service): check alerting.slack.webhook_url" in line
        )
        n.update_settings(SlackSettings(webhook_url=standin.webhook_url))
        assert await n.flush(5)
    assert len(standin.top_level()) == 1
    assert "0123456789abcdef" not in caplog.text
    assert standin.webhook_path not in caplog.text


async def test_send_test_posts_once_or_says_what_to_fix(standin: SlackStandIn) -> None:
    await notifier(token_settings(standin)).send_test("cutover test message")
    assert [m.text for m in standin.top_level()] == ["cutover test message"]

    with pytest.raises(SlackError) as raised:
        await notifier(token_settings(standin, token=WRONG)).send_test("again")
    assert "invalid_auth" in str(raised.value) and "alerting.slack.token" in str(raised.value)
    assert WRONG not in str(raised.value)
    assert len(standin.top_level()) == 1


async def test_a_migration_thread_is_opened_by_its_first_reply(
    standin: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """Steps and readiness summaries are replies in one thread a record; the first opens it."""
    n = notifier(token_settings(standin))
    thread = "migration:api.example.com"
    for i, text in enumerate(("weights changed", "hold complete: GO", "weights changed again")):
        assert n.enqueue(Notification(f"{thread}:{i}", thread, "reply", text))
    with caplog.at_level(logging.WARNING):
        async with running(n):
            assert await n.flush(5)
    [top] = standin.top_level()
    assert top.text == "weights changed"
    assert n.thread_of(thread) == ("C0123", top.ts)
    assert [r.text for r in standin.replies(top.ts)] == [
        "hold complete: GO",
        "weights changed again",
    ]
    assert not [r for r in caplog.records if "no Slack message is known" in r.getMessage()]


async def test_permalink_to_an_incidents_message_from_the_workspace_url(
    standin: SlackStandIn,
) -> None:
    n = notifier(token_settings(standin))
    assert n.permalink("inc-1") is None  # nothing posted yet
    async with running(n):
        n.enqueue(fire("inc-1"))
        await until(lambda: n.permalink("inc-1") is not None)
        channel, ts = n.thread_of("inc-1") or ("", "")
        assert n.permalink("inc-1") == f"{WORKSPACE_URL}archives/{channel}/p{ts.replace('.', '')}"
        n.enqueue(fire("inc-2", "SECOND"))
        assert await n.flush(5)
        assert n.permalink("inc-2") is not None
    # auth.test is asked once for the token, not once per message
    assert [c.method for c in standin.calls].count("auth.test") == 1


async def test_no_permalink_when_auth_test_fails(standin: SlackStandIn) -> None:
    n = notifier(token_settings(standin))
    async with running(n):
        standin.url_for_auth_test = None  # the workspace answers without a url
        n.enqueue(fire("inc-1"))
        assert await n.flush(5)
        await until(lambda: "auth.test" in [c.method for c in standin.calls])
        await asyncio.sleep(0.1)
        assert n.thread_of("inc-1") is not None
        assert n.permalink("inc-1") is None
    assert [m.text for m in standin.top_level()] == ["FIRING"]
