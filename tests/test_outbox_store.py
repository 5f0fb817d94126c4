"""The outbox store seam: the OutboxStore contract on the local file, its file format, and the
Notifier using whatever store it is handed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.alerting.local_outbox import LocalOutboxStore
from exporter.alerting.outbox import (
    KEEP_DONE,
    KEEP_THREADS,
    Entry,
    Notification,
    OutboxState,
    Sent,
)
from exporter.alerting.slack import Notifier, SlackSettings
from exporter.errors import CorruptStateFile
from tests.outbox_contract import CHECKS, OpenStore
from tests.slack_standin import SlackStandIn

TOKEN = "xoxb-1111-2222-secret-test-token"


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_local_store_keeps_the_contract(
    check: Callable[[OpenStore], None], tmp_path: Path
) -> None:
    check(lambda: LocalOutboxStore(tmp_path))


def test_the_local_file_keeps_its_format(tmp_path: Path) -> None:
    store = LocalOutboxStore(tmp_path)
    store.load(1.0)
    post = Entry(Notification("inc-1:fire", "inc-1", "post", "FIRING", created=5.0))
    edit = Entry(Notification("inc-1:resolve", "inc-1", "edit", "RESOLVED", created=6.0))
    store.append(post)
    store.append(edit)
    store.finish(post, Sent("#alerts", "C0123", "17.000100", thread=True))
    assert store.where == str(tmp_path / "slack-outbox.json")
    assert json.loads((tmp_path / "slack-outbox.json").read_text()) == {
        "version": 1,
        "queue": [
            {
                "key": "inc-1:resolve",
                "incident": "inc-1",
                "action": "edit",
                "text": "RESOLVED",
                "blocks": None,
                "created": 6.0,
                "plain": False,
                "repost": False,
                "unsure_since": None,
            }
        ],
        "threads": {"inc-1": ["C0123", "17.000100"]},
        "channels": {"#alerts": "C0123"},
        "done": ["inc-1:fire"],
    }


def test_a_corrupt_local_file_is_set_aside_and_the_store_starts_empty(tmp_path: Path) -> None:
    (tmp_path / "slack-outbox.json").write_text('{"version": 1, "queue": [{"key": ')
    store = LocalOutboxStore(tmp_path)
    with pytest.raises(CorruptStateFile, match="moved aside to"):
        store.load(7.0)
    assert (tmp_path / "slack-outbox.json.corrupt-7").exists()
    assert list(store.queue) == []


def test_without_a_state_dir_the_outbox_is_kept_in_memory(tmp_path: Path) -> None:
    store = LocalOutboxStore(None)
    store.load(1.0)
    entry = Entry(Notification("k", "inc-1", "post", "FIRING"))
    store.append(entry)
    assert store.where is None and store.claim(entry, 0)
    store.finish(entry, Sent("#alerts", "C0123", "1.0", thread=True))
    assert store.knows("k") and store.threads == {"inc-1": ("C0123", "1.0")}
    assert list(tmp_path.iterdir()) == []


def test_the_state_remembers_only_the_latest_keys_and_threads() -> None:
    state = OutboxState()
    for i in range(max(KEEP_DONE, KEEP_THREADS) + 5):
        entry = Entry(Notification(f"k{i}", f"inc-{i}", "post", "x"))
        state.queue.append(entry)
        state.finish(entry, Sent("#alerts", "C0123", f"{i}.0", thread=True))
    assert len(state.done) == KEEP_DONE and not state.knows("k0") and state.knows("k1004")
    assert len(state.threads) == KEEP_THREADS and "inc-0" not in state.threads
    assert state.threads["inc-1004"] == ("C0123", "1004.0")


# --- the Notifier and the store it is handed


@pytest.fixture
async def standin() -> AsyncIterator[SlackStandIn]:
    s = SlackStandIn(token=TOKEN)
    await s.start()
    yield s
    await s.stop()


def settings(standin: SlackStandIn, state_dir: Path | None = None) -> SlackSettings:
    return SlackSettings(
        token=TOKEN,
        channel="#alerts",
        api_url=standin.url,
        state_dir=str(state_dir) if state_dir is not None else None,
    )


async def deliver(n: Notifier, timeout: float = 5.0) -> bool:
    task = asyncio.create_task(n.run())
    try:
        return await n.flush(timeout)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await n.aclose()


def fire(incident: str) -> Notification:
    return Notification(f"{incident}:fire", incident, "post", "FIRING")


async def test_a_handed_in_store_holds_the_outbox_and_its_messages(
    standin: SlackStandIn, tmp_path: Path
) -> None:
    store = LocalOutboxStore(tmp_path / "chosen")
    first = Notifier(
        settings(standin, tmp_path / "ignored"), store=store, registry=CollectorRegistry()
    )
    first.enqueue(fire("inc-1"))
    assert await deliver(first)
    assert (tmp_path / "chosen" / "slack-outbox.json").exists()
    assert not (tmp_path / "ignored").exists()

    # a notifier handed the same store (a restart, a new leader) edits that very message
    second = Notifier(
        settings(standin), store=LocalOutboxStore(tmp_path / "chosen"), registry=CollectorRegistry()
    )
    second.enqueue(Notification("inc-1:resolve", "inc-1", "edit", "RESOLVED"))
    assert await deliver(second)
    [message] = standin.top_level()
    assert message.text == "RESOLVED" and message.edits == 1
    assert second.thread_of("inc-1") == ("C0123", message.ts)


class RefusingStore(LocalOutboxStore):
    """A store under a lease that another writer has taken over: every claim is refused."""

    def claim(self, entry: Entry, epoch: int) -> bool:
        return False


async def test_a_refused_claim_sends_nothing_and_holds_the_outbox(
    standin: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "cutover.slack")
    n = Notifier(
        settings(standin), store=RefusingStore(None), registry=CollectorRegistry(), min_interval=0
    )
    n.enqueue(fire("inc-1"))
    assert not await deliver(n, timeout=2.0), "a held outbox does not make shutdown wait"
    assert standin.message_calls() == []
    assert n.pending() == 1
    assert "held by another writer" in caplog.text
