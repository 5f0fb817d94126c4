"""The state documents (incidents, the shift plan) in state_dir and in the HA table: the
DocumentStore contract for both, the files' format unchanged, and what the table adds (writes
fenced on the lease's epoch, the item size limit, an unreachable table)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exporter.alerting.alerts import Alerts, AlertsRecord
from exporter.errors import Fenced, StateStoreError
from exporter.store.calls import Inline, Threaded
from exporter.store.documents import (
    MAX_DOCUMENT_BYTES,
    Document,
    DynamoDocuments,
    LocalDocuments,
)
from exporter.store.lease import lease_pk
from tests.conftest import HA_TABLE, free_port
from tests.documents_contract import CHECKS, NOW, Stores, _alerts
from tests.ha_helpers import fence_of, put_lease

TABLE = HA_TABLE


def local_stores(tmp_path: Path) -> Stores:
    return Stores(
        open=lambda: LocalDocuments(tmp_path),
        corrupt=lambda name, text: (tmp_path / f"{name}.json").write_text(text),
        epoch=None,
    )


def dynamo_stores(ddb: Any, migration: str, **kw: Any) -> Stores:
    def corrupt(name: str, text: str) -> None:
        key = {"pk": {"S": lease_pk(migration)}, "sk": {"S": f"state#{name}"}}
        ddb.put_item(TableName=TABLE, Item={**key, "body": {"S": text}, "epoch": {"N": "1"}})

    return Stores(
        open=lambda: DynamoDocuments(
            table=TABLE, migration=migration, fence=kw.get("fence"), client=ddb
        ),
        corrupt=corrupt,
        epoch=kw.get("epoch", 1),
    )


def item(ddb: Any, migration: str, sk: str) -> dict[str, Any] | None:
    answer = ddb.get_item(
        TableName=TABLE,
        Key={"pk": {"S": lease_pk(migration)}, "sk": {"S": sk}},
        ConsistentRead=True,
    )
    found: dict[str, Any] | None = answer.get("Item")
    return found


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_local_store_keeps_the_contract(
    check: Callable[[Stores], None], tmp_path: Path
) -> None:
    check(local_stores(tmp_path))


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_dynamo_store_keeps_the_contract(
    check: Callable[[Stores], None], ddb: Any, migration: str
) -> None:
    check(dynamo_stores(ddb, migration))


def test_the_dynamo_store_keeps_the_contract_under_a_held_lease(ddb: Any, migration: str) -> None:
    put_lease(ddb, TABLE, migration, "me#1", 3)
    for check in CHECKS:
        check(dynamo_stores(ddb, f"{migration}", fence=fence_of(TABLE, migration, "me#1"), epoch=3))
        for sk in ("state#alerts", "state#shift"):  # each check starts afresh
            ddb.delete_item(
                TableName=TABLE, Key={"pk": {"S": lease_pk(migration)}, "sk": {"S": sk}}
            )


def test_the_local_files_are_the_files_alerts_always_wrote(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    LocalDocuments(tmp_path / "new").save("alerts", AlertsRecord, _alerts(), None)
    Alerts.from_record(_alerts()).save(tmp_path / "old" / "alerts.json")
    new = (tmp_path / "new" / "alerts.json").read_bytes()
    assert new == (tmp_path / "old" / "alerts.json").read_bytes()
    assert LocalDocuments(tmp_path).where("shift") == str(tmp_path / "shift.json")


def test_a_replica_whose_epoch_is_stale_cannot_overwrite_the_leaders_state(
    ddb: Any, migration: str
) -> None:
    old = DynamoDocuments(
        table=TABLE, migration=migration, fence=fence_of(TABLE, migration, "old#1"), client=ddb
    )
    new = DynamoDocuments(
        table=TABLE, migration=migration, fence=fence_of(TABLE, migration, "new#2"), client=ddb
    )
    put_lease(ddb, TABLE, migration, "old#1", 1)
    old.save("alerts", AlertsRecord, _alerts(), 1)
    put_lease(ddb, TABLE, migration, "new#2", 2)  # the new leader took over
    new.save("alerts", AlertsRecord, AlertsRecord(version=1, incidents=[]), 2)

    with pytest.raises(Fenced, match="not written under epoch 1: another replica holds"):
        old.save("alerts", AlertsRecord, _alerts(), 1)
    with pytest.raises(Fenced, match="does not hold the lease"):
        old.save("alerts", AlertsRecord, _alerts(), None)
    saved = item(ddb, migration, "state#alerts")
    assert saved is not None and saved["epoch"] == {"N": "2"}
    assert json.loads(saved["body"]["S"])["incidents"] == []


def test_an_item_written_under_a_later_epoch_refuses_an_older_one_even_unfenced(
    ddb: Any, migration: str
) -> None:
    store = DynamoDocuments(table=TABLE, migration=migration, fence=None, client=ddb)
    store.save("shift", AlertsRecord, _alerts(), 5)
    with pytest.raises(Fenced):
        store.save("shift", AlertsRecord, AlertsRecord(version=1, incidents=[]), 4)
    saved = item(ddb, migration, "state#shift")
    assert saved is not None and saved["epoch"] == {"N": "5"}


def test_a_document_too_big_for_an_item_is_refused_saying_so(ddb: Any, migration: str) -> None:
    store = DynamoDocuments(table=TABLE, migration=migration, fence=None, client=ddb)
    record = _alerts()
    record.incidents[0].notify = {"blob": "x" * MAX_DOCUMENT_BYTES}
    with pytest.raises(ValueError, match=r"takes 35\d{4} bytes, and a DynamoDB item holds"):
        store.save("alerts", AlertsRecord, record, 1)
    assert item(ddb, migration, "state#alerts") is None


def test_a_corrupt_item_is_copied_aside_for_a_person(ddb: Any, migration: str) -> None:
    stores = dynamo_stores(ddb, migration)
    stores.corrupt("alerts", "not json")
    with pytest.raises(ValueError, match=r"copied to sk state#alerts\.corrupt-1000"):
        stores.open().load("alerts", AlertsRecord, Alerts.from_record, NOW)
    aside = item(ddb, migration, "state#alerts.corrupt-1000")
    assert aside is not None and aside["body"] == {"S": "not json"}
    assert item(ddb, migration, "state#alerts") is None


def test_an_unreachable_table_is_an_oserror_without_credentials(
    aws_env: None, migration: str
) -> None:
    store = DynamoDocuments(
        table=TABLE,
        migration=migration,
        fence=None,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        timeout=0.5,
    )
    with pytest.raises(StateStoreError) as raised:
        store.load("alerts", AlertsRecord, Alerts.from_record, NOW)
    assert isinstance(raised.value, OSError) and raised.value.reason == "unreachable"
    assert "testing" not in str(raised.value)


async def test_a_background_save_waits_for_the_table_and_says_when_it_is_done(
    ddb: Any, migration: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A Document on the table saves in the background: `busy` until the table has it, then
    `on_saved` with the caller's tag; a write refused by the fence is dropped, not retried."""
    put_lease(ddb, TABLE, migration, "me#1", 1)
    saved: list[Any] = []
    store = DynamoDocuments(
        table=TABLE, migration=migration, fence=fence_of(TABLE, migration, "me#1"), client=ddb
    )
    calls = Threaded(5.0, "test-documents")
    doc = Document(store, "alerts", AlertsRecord, calls, what="alert state", on_saved=saved.append)
    try:
        assert doc.save(_alerts(), 1, tag=7) is False and doc.busy
        assert await doc.flush(5.0)
        assert saved == [7] and not doc.busy
        assert await doc.load(Alerts.from_record, NOW) is not None

        put_lease(ddb, TABLE, migration, "other#2", 2)
        caplog.set_level(logging.WARNING)
        doc.save(AlertsRecord(version=1, incidents=[]), 1, tag=8)
        assert await doc.flush(5.0)
        assert saved == [7], "a fenced write is not saved, and not retried"
        assert "alert state not saved" in caplog.text and "another replica holds" in caplog.text
    finally:
        await doc.aclose()
        calls.close()


def test_an_inline_document_saves_at_once_and_logs_a_failure_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    (tmp_path / "alerts.json").mkdir()  # a directory where the file goes: every save fails
    doc = Document(LocalDocuments(tmp_path), "alerts", AlertsRecord, Inline(), what="alert state")
    assert doc.save(_alerts(), None) is False and doc.save(_alerts(), None) is False
    assert caplog.text.count("cannot save alert state to") == 1 and not doc.busy
    (tmp_path / "alerts.json").rmdir()
    assert doc.save(_alerts(), None) is True
    assert "alert state is saved to" in caplog.text
