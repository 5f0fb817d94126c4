"""What every DocumentStore must do, as checks that each store's tests run (state_dir files and
the HA table).

Each check takes a `Stores`: `open()` opens a store over the same storage at every call (a
restarted daemon, a new leader), `corrupt(name, text)` puts raw content where a document lives,
and `epoch` is the epoch the store's writes are made under.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from exporter.alerting.alerts import Alerts, AlertsRecord, Incident, Phase
from exporter.alerting.outbox import Notification
from exporter.errors import CorruptStateFile
from exporter.route53.plan import ShiftPlan, ShiftRecord, ShiftSettings
from exporter.store.documents import DocumentStore

NOW = 1_000.0


@dataclass
class Stores:
    open: Callable[[], DocumentStore]
    corrupt: Callable[[str, str], None]
    epoch: int | None = 1


def _alerts() -> AlertsRecord:
    incident = Incident(
        id="home.down.1000000",
        check="home",
        signal="down",
        started_at=NOW,
        phase=Phase.FIRING,
        fired_at=NOW + 1,
        reminded_at=NOW + 1,
        figures={"p95_ms": 240.5, "n": 12},
        notify={"channel": "C0123"},
    )
    owed = [Notification("home.down.1000000:fire", incident.id, "post", "FIRING", created=NOW)]
    return AlertsRecord(version=1, incidents=[incident], owed=owed)


def _load_alerts(store: DocumentStore) -> Alerts | None:
    return store.load("alerts", AlertsRecord, Alerts.from_record, NOW)


def check_a_missing_document_loads_as_none(stores: Stores) -> None:
    assert _load_alerts(stores.open()) is None


def check_a_saved_document_comes_back_in_a_new_store(stores: Stores) -> None:
    stores.open().save("alerts", AlertsRecord, _alerts(), stores.epoch)
    alerts = _load_alerts(stores.open())
    assert alerts is not None
    assert alerts.record() == _alerts()
    [incident] = alerts.firing()
    assert incident.figures == {"p95_ms": 240.5, "n": 12}
    assert [n.key for n in alerts.owed] == ["home.down.1000000:fire"]


def check_a_save_replaces_the_document_whole(stores: Stores) -> None:
    store = stores.open()
    store.save("alerts", AlertsRecord, _alerts(), stores.epoch)
    store.save("alerts", AlertsRecord, AlertsRecord(version=1, incidents=[]), stores.epoch)
    alerts = _load_alerts(stores.open())
    assert alerts is not None and alerts.incidents == () and alerts.owed == []


def check_documents_are_kept_apart(stores: Stores) -> None:
    settings = ShiftSettings(record="api.example.com", baseline="heroku", candidate="aws")
    store = stores.open()
    store.save("alerts", AlertsRecord, _alerts(), stores.epoch)
    plan = ShiftPlan(settings, share=10.0, written={"heroku": 90, "aws": 10})
    store.save("shift", ShiftRecord, plan.record(), stores.epoch)
    again = stores.open().load(
        "shift", ShiftRecord, lambda r: ShiftPlan.from_record(r, settings, NOW), NOW
    )
    assert again is not None and again.written == {"heroku": 90, "aws": 10}
    alerts = _load_alerts(stores.open())
    assert alerts is not None and len(alerts.incidents) == 1


def check_content_the_schema_cannot_write_is_refused_and_the_old_one_kept(stores: Stores) -> None:
    store = stores.open()
    store.save("alerts", AlertsRecord, _alerts(), stores.epoch)
    bad = _alerts()
    bad.incidents[0].notify = {"ts": object()}  # nothing JSON can hold
    with pytest.raises(ValueError, match="alerts"):
        store.save("alerts", AlertsRecord, bad, stores.epoch)
    alerts = _load_alerts(stores.open())
    assert alerts is not None and alerts.record() == _alerts()


def check_a_corrupt_document_is_set_aside_and_named(stores: Stores) -> None:
    stores.corrupt("alerts", '{"version": 1, "incidents": [{"id": 5}]}')
    store = stores.open()
    with pytest.raises(CorruptStateFile, match=r"alerts.*incidents\.0") as raised:
        _load_alerts(store)
    assert "corrupt state" in str(raised.value)
    assert _load_alerts(stores.open()) is None, "set aside: the next load starts afresh"


def check_a_document_its_builder_refuses_is_set_aside(stores: Stores) -> None:
    record = _alerts()
    record.incidents.append(record.incidents[0])  # two open incidents for one check and signal
    stores.open().save("alerts", AlertsRecord, record, stores.epoch)
    with pytest.raises(CorruptStateFile, match="two open incidents"):
        _load_alerts(stores.open())
    assert _load_alerts(stores.open()) is None


CHECKS = [
    check_a_missing_document_loads_as_none,
    check_a_saved_document_comes_back_in_a_new_store,
    check_a_save_replaces_the_document_whole,
    check_documents_are_kept_apart,
    check_content_the_schema_cannot_write_is_refused_and_the_old_one_kept,
    check_a_corrupt_document_is_set_aside_and_named,
    check_a_document_its_builder_refuses_is_set_aside,
]
