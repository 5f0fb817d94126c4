"""What every OutboxStore must do, as checks that any store's tests run (the local file today).

Each check takes `open_store`, which opens a store over the same storage at every call: the
first store starts empty, and a store opened later must load what the earlier ones persisted,
as a restarted daemon or a new leader does.

    @pytest.mark.parametrize("check", CHECKS)
    def test_contract(check, tmp_path):
        check(lambda: LocalOutboxStore(tmp_path))
"""

from __future__ import annotations

from collections.abc import Callable

from exporter.alerting.outbox import Action, Entry, Notification, OutboxStore, Sent

OpenStore = Callable[[], OutboxStore]
NOW = 1_000.0


def _loaded(open_store: OpenStore) -> OutboxStore:
    store = open_store()
    store.load(NOW)
    return store


def _entry(key: str, incident: str = "inc-1", action: Action = "post") -> Entry:
    blocks = ({"type": "section", "text": {"type": "mrkdwn", "text": f"*{key}*"}},)
    return Entry(Notification(key, incident, action, f"text of {key}", blocks, created=NOW))


def check_a_new_store_is_empty(open_store: OpenStore) -> None:
    store = _loaded(open_store)
    assert list(store.queue) == []
    assert dict(store.threads) == {}
    assert not store.knows("inc-1:fire")
    assert store.channel_id("#alerts") is None


def check_appended_entries_come_back_in_order_with_their_flags(open_store: OpenStore) -> None:
    store = _loaded(open_store)
    first = _entry("inc-1:fire")
    second = _entry("inc-2:fire", "inc-2")
    second.plain, second.repost, second.unsure_since = True, True, NOW - 5
    store.append(first)
    store.append(second)
    assert store.knows("inc-1:fire") and store.knows("inc-2:fire")

    again = _loaded(open_store)
    assert [e.record() for e in again.queue] == [first.record(), second.record()]
    assert again.queue[1].n == second.n
    assert again.knows("inc-2:fire")


def check_a_claim_persists_the_entry_as_in_flight(open_store: OpenStore) -> None:
    store = _loaded(open_store)
    entry = _entry("inc-1:fire")
    store.append(entry)
    entry.unsure_since = NOW + 1
    assert store.claim(entry, 0), "one writer alone always claims"
    [again] = _loaded(open_store).queue
    assert again.unsure_since == NOW + 1


def check_save_persists_flags_changed_in_place(open_store: OpenStore) -> None:
    store = _loaded(open_store)
    entry = _entry("inc-1:resolve", action="edit")
    store.append(entry)
    entry.plain = entry.repost = True
    store.save()
    [again] = _loaded(open_store).queue
    assert (again.plain, again.repost) == (True, True)


def check_finish_remembers_the_key_and_where_the_message_landed(open_store: OpenStore) -> None:
    store = _loaded(open_store)
    post, reply = _entry("inc-1:fire"), _entry("inc-1:reply", action="reply")
    store.append(post)
    store.append(reply)
    store.finish(post, Sent("#alerts", "C0123", "1700000000.000100", thread=True))
    store.finish(reply, Sent("#alerts", "C0123", "1700000000.000200", thread=False))
    assert list(store.queue) == []

    again = _loaded(open_store)
    assert list(again.queue) == []
    assert again.knows("inc-1:fire") and again.knows("inc-1:reply"), "delivered keys are kept"
    # a later leader edits and threads the same message: the post's, not the reply's
    assert dict(again.threads) == {"inc-1": ("C0123", "1700000000.000100")}
    assert again.channel_id("#alerts") == "C0123"


def check_a_dropped_entry_leaves_the_queue_and_no_message(open_store: OpenStore) -> None:
    store = _loaded(open_store)
    entry = _entry("inc-1:fire")
    store.append(entry)
    store.finish(entry, None)
    again = _loaded(open_store)
    assert list(again.queue) == [] and dict(again.threads) == {}
    assert again.knows("inc-1:fire")


CHECKS = [
    check_a_new_store_is_empty,
    check_appended_entries_come_back_in_order_with_their_flags,
    check_a_claim_persists_the_entry_as_in_flight,
    check_save_persists_flags_changed_in_place,
    check_finish_remembers_the_key_and_where_the_message_landed,
    check_a_dropped_entry_leaves_the_queue_and_no_message,
]
