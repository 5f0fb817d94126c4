"""The outbox in the HA table: the OutboxStore contract and what several replicas add to it
(shared entries, fenced claims, threads for the next leader), against moto's DynamoDB server."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from exporter.alerting.dynamo_outbox import DynamoOutboxStore
from exporter.alerting.outbox import Entry, Notification, Sent
from exporter.errors import DynamoError, OutboxStoreError
from exporter.store.lease import lease_pk
from tests import ha_helpers
from tests.conftest import HA_TABLE, free_port
from tests.outbox_contract import CHECKS, OpenStore

TABLE = HA_TABLE


def opener(ddb: Any, migration: str, **kw: Any) -> Callable[[], DynamoOutboxStore]:
    return lambda: DynamoOutboxStore(table=TABLE, migration=migration, client=ddb, **kw)


def loaded(store: DynamoOutboxStore, now: float | None = None) -> DynamoOutboxStore:
    store.load(time.time() if now is None else now)
    return store


def fire(incident: str, text: str = "FIRING") -> Entry:
    return Entry(Notification(f"{incident}:fire", incident, "post", text, created=5.0))


def raw(ddb: Any, migration: str, sk: str) -> dict[str, Any] | None:
    answer = ddb.get_item(
        TableName=TABLE,
        Key={"pk": {"S": lease_pk(migration)}, "sk": {"S": sk}},
        ConsistentRead=True,
    )
    item: dict[str, Any] | None = answer.get("Item")
    return item


def put_lease(ddb: Any, migration: str, owner: str, epoch: int) -> None:
    ha_helpers.put_lease(ddb, TABLE, migration, owner, epoch)


def fence_of(migration: str, me: str) -> Callable[[int], dict[str, Any]]:
    return ha_helpers.fence_of(TABLE, migration, me)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_dynamo_store_keeps_the_contract(
    check: Callable[[OpenStore], None], ddb: Any, migration: str
) -> None:
    check(opener(ddb, migration))


def test_a_store_reaches_the_table_through_its_own_client(
    moto_url: str, ddb: Any, migration: str
) -> None:
    store = loaded(DynamoOutboxStore(table=TABLE, migration=migration, endpoint_url=moto_url))
    store.append(fire("inc-1"))
    assert store.where == f"DynamoDB table {TABLE} (migration#{migration})"
    assert raw(ddb, migration, "outbox#inc-1:fire") is not None


def test_two_stores_see_each_others_entries_and_one_copy_of_a_key(ddb: Any, migration: str) -> None:
    open_store = opener(ddb, migration)
    a, b = loaded(open_store()), loaded(open_store())
    a.append(fire("inc-1", "from a"))
    b.append(fire("inc-2", "from b"))
    assert not a.knows("inc-2:fire"), "another replica's entry shows after a load, not before"

    loaded(a)
    loaded(b)
    assert [e.n.key for e in a.queue] == [e.n.key for e in b.queue] == ["inc-1:fire", "inc-2:fire"]

    # both replicas enqueue the same notification: the table keeps the first one
    c, d = loaded(open_store()), loaded(open_store())
    first = fire("inc-3", "from c")
    first.unsure_since = 9.0
    c.append(first)
    late = fire("inc-3", "from d")
    d.append(late)
    assert late.unsure_since == 9.0, "the late copy learns that the entry may be in flight"
    texts = [e.n.text for e in loaded(open_store()).queue if e.n.key == "inc-3:fire"]
    assert texts == ["from c"]


def test_a_claim_under_a_stale_epoch_is_refused_and_changes_nothing(
    ddb: Any, migration: str
) -> None:
    old = loaded(opener(ddb, migration, fence=fence_of(migration, "old#1"))())
    entry = fire("inc-1")
    old.append(entry)
    put_lease(ddb, migration, "old#1", 1)
    entry.unsure_since = 100.0
    assert old.claim(entry, 1), "the holder of epoch 1 claims"
    before = raw(ddb, migration, "outbox#inc-1:fire")
    assert before is not None and before["claim_epoch"] == {"N": "1"}

    # the lease passed to another replica (epoch 2): the old holder's claims are refused
    put_lease(ddb, migration, "new#2", 2)
    entry.unsure_since, entry.plain = 200.0, True
    assert not old.claim(entry, 1)
    assert raw(ddb, migration, "outbox#inc-1:fire") == before

    # the new holder claims; the old one, even with the lease back, cannot claim under epoch 1
    new = loaded(opener(ddb, migration, fence=fence_of(migration, "new#2"))())
    [taken] = new.queue
    taken.unsure_since = 300.0
    assert new.claim(taken, 2)
    put_lease(ddb, migration, "old#1", 1)
    assert not old.claim(entry, 1), "an entry claimed under a later epoch stays with it"
    [again] = loaded(opener(ddb, migration)()).queue
    assert again.unsure_since == 300.0 and not again.plain


def test_a_claim_of_an_entry_another_leader_finished_is_refused(ddb: Any, migration: str) -> None:
    open_store = opener(ddb, migration)
    a, b = loaded(open_store()), loaded(open_store())
    entry = fire("inc-1")
    a.append(entry)
    [same] = loaded(b).queue
    b.finish(same, Sent("#alerts", "C0123", "1.000100", thread=True))
    assert not a.claim(entry, 0), "it went out already: sending it again would duplicate it"
    assert raw(ddb, migration, "outbox#inc-1:fire") is None


def test_finish_leaves_the_thread_for_the_next_leader(ddb: Any, migration: str) -> None:
    leader = loaded(opener(ddb, migration)())
    post = fire("inc-1")
    leader.append(post)
    leader.finish(post, Sent("#alerts", "C0123", "1700000000.000100", thread=True))

    successor = loaded(opener(ddb, migration)())
    assert successor.threads == {"inc-1": ("C0123", "1700000000.000100")}
    assert successor.channel_id("#alerts") == "C0123"
    assert successor.knows("inc-1:fire") and list(successor.queue) == []
    sent = raw(ddb, migration, "sent#inc-1:fire")
    assert sent is not None and float(sent["expires"]["N"]) > time.time() + 86400


def test_save_does_not_bring_back_an_entry_another_leader_finished(
    ddb: Any, migration: str
) -> None:
    open_store = opener(ddb, migration)
    a, b = loaded(open_store()), loaded(open_store())
    entry = fire("inc-1")
    a.append(entry)
    [same] = loaded(b).queue
    b.finish(same, None)
    entry.plain = True
    a.save()
    assert raw(ddb, migration, "outbox#inc-1:fire") is None
    assert list(loaded(open_store()).queue) == []


def test_an_unreadable_item_is_skipped_with_a_warning_naming_it(
    ddb: Any, migration: str, caplog: pytest.LogCaptureFixture
) -> None:
    open_store = opener(ddb, migration)
    store = loaded(open_store())
    store.append(fire("inc-1"))
    pk = {"S": lease_pk(migration)}
    ddb.put_item(TableName=TABLE, Item={"pk": pk, "sk": {"S": "outbox#broken"}, "text": {"S": "x"}})
    good = raw(ddb, migration, "outbox#inc-1:fire") or {}
    ddb.put_item(
        TableName=TABLE,
        Item={**good, "sk": {"S": "outbox#bad-action"}, "action": {"S": "shout"}},
    )
    ddb.put_item(TableName=TABLE, Item={"pk": pk, "sk": {"S": "thread#inc-9"}, "ts": {"N": "1"}})

    caplog.set_level(logging.WARNING, "exporter.alerting.dynamo_outbox")
    again = loaded(open_store())
    assert [e.n.key for e in again.queue] == ["inc-1:fire"]
    assert dict(again.threads) == {}
    for sk in ("outbox#broken", "outbox#bad-action", "thread#inc-9"):
        assert f"skipped unreadable outbox item {sk} in DynamoDB table {TABLE}" in caplog.text
    assert "action" in caplog.text


def test_expired_sent_keys_are_ignored(ddb: Any, migration: str) -> None:
    now = time.time()
    pk = {"S": lease_pk(migration)}
    for key, expires in (("old", now - 10), ("recent", now + 3600)):
        ddb.put_item(
            TableName=TABLE,
            Item={"pk": pk, "sk": {"S": f"sent#{key}"}, "expires": {"N": str(int(expires))}},
        )
    store = loaded(opener(ddb, migration)(), now)
    assert store.knows("recent")
    assert not store.knows("old"), "DynamoDB deletes expired items late: they are not kept keys"


def test_a_value_the_table_cannot_hold_is_refused_before_it_is_queued(
    ddb: Any, migration: str
) -> None:
    # queued in memory only, it could never be claimed (a claim needs its item): it would hold
    # every later notification back; the Notifier logs it as dropped instead
    store = loaded(opener(ddb, migration)())
    entry = Entry(Notification("inc-1:fire", "inc-1", "post", "FIRING", created=float("nan")))
    with pytest.raises(ValueError, match="finite"):
        store.append(entry)
    assert not store.knows("inc-1:fire") and list(store.queue) == []
    assert raw(ddb, migration, "outbox#inc-1:fire") is None

    huge = Entry(Notification("inc-2:fire", "inc-2", "post", "x" * 400_000, created=5.0))
    with pytest.raises(ValueError, match=r"takes 4\d{5} bytes; the table holds 350000"):
        store.append(huge)
    assert not store.knows("inc-2:fire")
    assert raw(ddb, migration, "outbox#inc-2:fire") is None


def test_an_unreachable_table_raises_an_oserror_without_credentials(
    aws_env: None, migration: str
) -> None:
    store = DynamoOutboxStore(
        table=TABLE,
        migration=migration,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        timeout=0.5,
    )
    with pytest.raises(OutboxStoreError) as caught:
        store.load(time.time())
    assert isinstance(caught.value, OSError) and isinstance(caught.value, DynamoError)
    assert caught.value.reason == "unreachable"
    entry = fire("inc-1")
    with pytest.raises(OSError, match="unreachable"):
        store.append(entry)
    assert store.knows("inc-1:fire"), "the change stays in memory"
    with pytest.raises(OutboxStoreError):
        store.claim(entry, 0)
    assert "testing" not in str(caught.value)  # the fixture's secret key and token


def test_save_writes_again_an_append_and_a_finish_whose_write_failed(
    ddb: Any, migration: str
) -> None:
    """A finish that never reached the table would leave the next leader without the
    message's thread (it would post anew instead of editing): `save` writes it again."""
    client = ha_helpers.Unreachable(ddb)
    store = loaded(opener(client, migration)())  # type: ignore[arg-type]
    posted = fire("inc-1")
    store.append(posted)
    client.down = {"transact_write_items", "put_item"}
    with pytest.raises(OutboxStoreError):
        store.finish(posted, Sent("#alerts", "C0123", "111.222", thread=True))
    later = fire("inc-2")
    with pytest.raises(OutboxStoreError):
        store.append(later)
    assert (
        raw(ddb, migration, "thread#inc-1") is None
        and raw(ddb, migration, "outbox#inc-2:fire") is None
    )
    assert [e.n.key for e in loaded(store).queue] == ["inc-2:fire"], "memory keeps both changes"

    client.down = set()
    store.save()
    assert raw(ddb, migration, "outbox#inc-1:fire") is None
    assert raw(ddb, migration, "sent#inc-1:fire") is not None
    thread = raw(ddb, migration, "thread#inc-1")
    assert thread is not None and (thread["channel"], thread["ts"]) == (
        {"S": "C0123"},
        {"S": "111.222"},
    )
    again = loaded(opener(ddb, migration)())
    assert [e.n.key for e in again.queue] == ["inc-2:fire"] and again.knows("inc-1:fire")
    assert again.threads["inc-1"] == ("C0123", "111.222")
