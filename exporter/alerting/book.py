"""The incidents in force and the notifications they owe: fed verdicts, saved, handed over.

`IncidentBook` keeps the daemon's `Alerts` (the pure incident machine, alerts.py) with where
they are saved: a state document in state_dir for one replica, in the HA table for several
(store/documents.py). A transition and the notifications it causes are saved together before
the outbox is given them: whatever happens between the two saves (a crash, a full disk, a lost
lease), the messages are still owed at the next start, and the outbox takes each key once. With
the table, a save runs in the background and what it owes goes to the outbox once it is written.

Only while `leads()` does the book change or save anything: a follower judges, the leader keeps
the shared incidents. A replica that starts leading `read`s them as the table holds them and
`adopt`s them before it changes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from exporter.alerting.alerts import Alerts, AlertSettings, AlertsRecord, Event, Incident, Judged
from exporter.alerting.messages import Context, notifications
from exporter.alerting.outbox import Notification
from exporter.errors import CorruptStateFile
from exporter.store.calls import StoreCalls
from exporter.store.documents import Document, DocumentStore

__all__ = ["IncidentBook", "Relay"]

log = logging.getLogger("cutover")

# hands owed notifications to the outbox (`doubtful`: they may have reached Slack already);
# returns the keys it now holds
Relay = Callable[[list[Notification], bool], set[str]]


class IncidentBook:
    """The daemon's incidents, saved where its state lives; `relay` is None without Slack."""

    def __init__(
        self,
        settings: AlertSettings,
        store: DocumentStore | None,
        calls: StoreCalls,
        *,
        leads: Callable[[], bool],
        epoch: Callable[[], int | None],
        on_event: Callable[[Event], None],
    ) -> None:
        self._leads = leads
        self._epoch = epoch
        self._on_event = on_event
        self.relay: Relay | None = None
        self.doc: Document[AlertsRecord] | None = (
            Document(
                store,
                "alerts",
                AlertsRecord,
                calls,
                what="alert state",
                on_saved=self._written,
                logger=log,
            )
            if store is not None
            else None
        )
        self.alerts = self._load(settings)
        self._saved = self.alerts.revision

    def _load(self, settings: AlertSettings) -> Alerts:
        doc = self.doc
        if doc is None or doc.deferred:
            # in the table: read when this replica takes the lease
            return Alerts(settings)
        try:
            alerts = doc.load_now(lambda r: Alerts.from_record(r, settings), time.time())
        except CorruptStateFile as exc:
            # the file was moved aside; starting empty beats not starting at all
            log.error("alert state unreadable, starting without it: %s", exc)
            return Alerts(settings)
        if alerts is None:
            return Alerts(settings)
        _log_loaded(alerts)
        return alerts

    def configure(self, settings: AlertSettings) -> None:
        self.alerts.settings = settings

    # -- while leading ------------------------------------------------------------------------

    def advance(
        self, check: str, evaluation: Judged, context: Callable[[], Context], fallback: Context
    ) -> None:
        """Feed a check's verdicts to its incidents; what they cause is owed, saved, handed
        over. `context` gathers what the messages say besides the incident (`fallback` when it
        fails: the figures are a nicety, the message itself is owed)."""
        if not self._leads():
            return  # a follower judges; the leader keeps the shared incidents
        events = self.alerts.update(check, evaluation, time.time())
        for event in events:
            self._on_event(event)
        if events and self.relay is not None:
            try:
                ctx = context()
            except Exception:
                log.exception("cannot gather the context of %s's message", check)
                ctx = fallback
            now = time.time()
            self.alerts.owe(
                replace(n, created=now) for event in events for n in notifications(event, ctx)
            )
        if self.alerts.revision != self._saved:
            self.save()
        self.settle()

    def forget_checks(self, names: Iterable[str]) -> list[Incident]:
        """Close the incidents of checks no longer among `names`."""
        kept = set(names)
        removed = []
        for incident in self.alerts.incidents:
            if incident.check not in kept:
                removed.extend(self.alerts.remove_check(incident.check))
        if removed:
            self.save()
        return removed

    def save(self) -> None:
        """Save the incidents and what they owe (only the replica that leads); a failure is
        logged by the document, never raised."""
        if self.doc is None or not self._leads():
            return
        revision = self.alerts.revision
        if self.doc.save(self.alerts.record(), self._epoch(), tag=revision):
            self._saved = revision

    def settle(self, doubtful: bool = False) -> None:
        """Pass what the incidents owe to the outbox, and forget what it holds; not before
        the state that owes them is saved (a background save in the table: once it is done)."""
        if not self._leads():
            return
        if self.alerts.owed and self.relay is not None and not (self.doc and self.doc.busy):
            held = self.relay(self.alerts.owed, doubtful)
            if held:
                self.alerts.settle(held)
        if self.alerts.revision != self._saved:
            self.save()

    def _written(self, revision: int) -> None:
        """A background save reached the table: what it owes may go to the outbox now."""
        self._saved = revision
        self.settle()

    # -- leading and following ----------------------------------------------------------------

    async def read(self) -> Alerts | None:
        """The incidents as the store holds them, once this replica's own last save is written
        (None: none saved, or unreadable and set aside). Raises OSError when the store cannot
        be read."""
        if self.doc is None:
            return None
        await self.doc.flush(timeout=5.0)
        settings = self.alerts.settings
        try:
            return await self.doc.load(lambda r: Alerts.from_record(r, settings), time.time())
        except CorruptStateFile as exc:
            log.error("ha: alert state unreadable, leading without it: %s", exc)
            return None

    def adopt(self, alerts: Alerts | None) -> None:
        """Lead with `alerts` (as `read` returned them)."""
        self.alerts = alerts if alerts is not None else Alerts(self.alerts.settings)
        self._saved = self.alerts.revision
        _log_loaded(self.alerts)

    def drop(self) -> None:
        """This replica no longer leads: a save still waiting is not its to write."""
        if self.doc is not None:
            self.doc.drop()

    async def aclose(self) -> None:
        if self.doc is not None:
            # saved in the background in the table: written before the lease is let go
            await self.doc.flush(timeout=5.0)
            await self.doc.aclose()


def _log_loaded(alerts: Alerts) -> None:
    if alerts.incidents:
        log.info("alert state loaded: %d open incident(s)", len(alerts.incidents))
    if alerts.owed:
        log.info("alert state loaded: %d notification(s) still owed", len(alerts.owed))
