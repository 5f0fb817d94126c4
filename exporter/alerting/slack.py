"""Slack delivery from a persisted outbox: in order, retried; at-least-once if an answer is lost.

`Notifier` coordinates parts it does not implement: an `OutboxKeeper` (keeper.py: the outbox's
store, local file or HA table, loaded under the lease and every change persisted), a `Gate`
(may this replica deliver now, under which lease epoch), a `SlackDelivery` (talking to Slack)
and a `Pacer` (when the next attempt may start); it owns the delivery loop, the decisions after
a Slack failure, and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from prometheus_client import CollectorRegistry, Counter, Gauge

from exporter.alerting.delivery import (
    GONE_CODES,
    METADATA_CODES,
    REASONS,
    Failure,
    SlackDelivery,
    SlackSettings,
)
from exporter.alerting.keeper import Held, OutboxKeeper, Unclaimed
from exporter.alerting.local_outbox import LocalOutboxStore
from exporter.alerting.outbox import ACTIONS, Entry, Notification, OutboxStore, Sent
from exporter.alerting.pacing import Pacer
from exporter.errors import SlackError
from exporter.store.calls import Inline, StoreCalls
from exporter.store.leadership import ALWAYS, Gate

__all__ = ["Notification", "Notifier", "SlackError", "SlackSettings"]


class Notifier:
    """The outbox and its delivery loop: `enqueue` from the event loop, `run` as one task.

    Every notification is delivered, or dropped with an error log only when Slack refuses it
    even as plain text. Nothing is sent twice, across restarts too, except in one window: Slack
    stored a message but its answer never arrived (a crash in that millisecond, a reset
    connection, a timeout). Such a message is sent again (at-least-once) unless the token may
    read the channel (channels:history / groups:history): each new message carries its key as
    message metadata, and before sending a doubtful one again the notifier looks for that key in
    the channel or thread. Edits are idempotent and simply repeated.

    Several replicas (a `gate` on the HA lease, a store in the table called in a thread): only
    the replica that may act delivers, each claim is fenced on its lease epoch, and a claim whose
    store call fails sends nothing (its outcome is unknown). The outbox is (re)loaded from the
    store whenever this replica starts acting under a new epoch, and nothing is delivered, nor
    appended, until that load succeeded: the previous leader's queue, its unconfirmed claims
    (looked for in Slack before they are sent again) and its messages (edited and replied to)
    are this replica's from then on.
    """

    def __init__(
        self,
        settings: SlackSettings,
        *,
        registry: CollectorRegistry,
        store: OutboxStore | None = None,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
        min_interval: float = 1.0,
        max_backoff: float = 60.0,
        min_backoff: float = 1.0,
        timeout: int = 30,
        gate: Gate = ALWAYS,
        calls: StoreCalls | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self.log = logger or logging.getLogger("cutover.slack")
        self.timeout = timeout
        # without a store handed in: the outbox file in the settings' state_dir, if any
        self._delivery = SlackDelivery(settings, timeout=timeout, logger=self.log)
        self._pacer = Pacer(
            min_interval=min_interval, min_backoff=min_backoff, max_backoff=max_backoff
        )
        self._gate = gate
        self._wake = asyncio.Event()  # something to deliver, or settings changed
        self._keeper = OutboxKeeper(
            store if store is not None else LocalOutboxStore(settings.state_dir),
            calls if calls is not None else Inline(),
            gate,
            clock=clock,
            log=self.log,
            min_backoff=min_backoff,
            changed=self._set_pending,
            wake=self._wake.set,
        )
        self._store = self._keeper.store

        self._parked: Failure | None = None
        self._held = False  # the store refused a claim: another writer delivers now
        self._generation = 0  # bumped by update_settings: a failure of older settings is stale
        self._running = False
        self._reset = asyncio.Event()  # settings changed: cut a backoff short
        self._changed = asyncio.Event()  # the queue shrank or the outbox parked: for flush()

        self._delivered = Counter(
            "cutover_notifications",
            "Slack notifications delivered",
            ["channel"],
            registry=registry,
        )
        self._failures = Counter(
            "cutover_notification_failures",
            "Failed attempts to deliver a Slack notification, by reason",
            ["channel", "reason"],
            registry=registry,
        )
        self._pending = Gauge(
            "cutover_notifications_pending",
            "Slack notifications not yet delivered",
            ["channel"],
            registry=registry,
        )
        self._init_series()
        gate.on_change(self._lease_changed)

    # --- public interface

    def enqueue(self, n: Notification, *, doubtful: bool = False) -> bool:
        """Queue `n` and save the outbox; False (and nothing done) if its key was seen before.

        `doubtful`: `n` may have reached Slack already (it comes back from before a crash), so
        it is looked for by its key before it is sent, like a message whose answer was lost.
        """
        if n.action not in ACTIONS:
            raise ValueError(f"notification {n.key}: unknown action {n.action!r}")
        if self._keeper.knows(n.key):
            return False
        if not n.created:
            n = replace(n, created=self._clock())
        entry = Entry(n, unsure_since=n.created if doubtful else None)
        if n.blocks is not None:
            json.dumps(n.blocks)  # blocks that cannot be saved fail here, not in the loop
        self._keeper.append(entry)
        self._wake.set()
        return True

    def accept(self, n: Notification, *, doubtful: bool = False) -> bool:
        """Queue `n` (idempotently, like `enqueue`); True once the outbox's store holds it.

        False while it does not (the outbox cannot be saved, or a store called in a thread has
        not appended it yet): whoever owes `n` keeps it and asks again.
        """
        self.enqueue(n, doubtful=doubtful)
        return self._keeper.holds(n.key)

    def _lease_changed(self) -> None:
        self._keeper.lease_changed()
        self._wake.set()

    async def run(self) -> None:
        """Deliver the outbox, oldest first, until cancelled."""
        if self._running:
            raise RuntimeError("Notifier.run is already running")
        self._running = True
        try:
            if self._store.threads:
                await self._delivery.learn_workspace()  # links to the messages of earlier runs
            while True:
                if not await self._ready():
                    continue
                if not self._store.queue or self._parked is not None or self._held:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._pace()
                if not self._store.queue or self._parked is not None or self._held:
                    continue
                await self._attempt(self._store.queue[0])
        finally:
            self._running = False

    async def _ready(self) -> bool:
        """This replica may deliver, its outbox is loaded under the current epoch and the store
        has every change; False after waiting (for the lease, or a failed store's backoff)."""
        epoch = self._gate.epoch()
        if epoch is None:
            # not acting: what is enqueued here waits for this replica to lead
            self._wake.clear()
            await self._wake.wait()
            return False
        keeper = self._keeper
        if epoch != keeper.loaded_epoch:
            if not await keeper.reload(epoch):
                return False
            self._held = False
            if self._store.threads:
                await self._delivery.learn_workspace()
        return await keeper.sync()

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 - the daemon's shutdown budget
        """Wait until the outbox is empty (True), or parked, held or `timeout` passed (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending():
            remaining = deadline - loop.time()
            stuck = self._parked is not None or self._held or self._gate.epoch() is None
            if stuck or remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def pending(self) -> int:
        return self._keeper.pending()

    def thread_of(self, incident: str) -> tuple[str, str] | None:
        """(channel id, ts) of the incident's message, once Slack has it."""
        return self._store.threads.get(incident)

    def permalink(self, incident: str) -> str | None:
        """A link to the incident's first message, once both it and the workspace are known."""
        thread = self._store.threads.get(incident)
        return self._delivery.permalink(*thread) if thread is not None else None

    @property
    def settings(self) -> SlackSettings:
        return self._settings

    def update_settings(self, settings: SlackSettings) -> None:
        """Use new settings from now on; a parked outbox resumes (the fix may be on Slack's side).

        The same settings again only resume a parked outbox (a channel created or the app
        invited since): a reload that leaves Slack alone must not cut a Retry-After short.
        """
        if settings == self._settings:
            if self._parked is not None:
                self._resume()
            return
        old_label = self._label
        self._settings = settings
        # nothing learnt of the old settings (clients, workspace, history, metadata) carries over
        self._delivery = SlackDelivery(settings, timeout=self.timeout, logger=self.log)
        self._generation += 1
        self._pacer.streak = 0
        if old_label != self._label:
            with contextlib.suppress(KeyError):
                self._pending.remove(old_label)
            self._init_series()
        self._resume()
        self._reset.set()

    def _resume(self) -> None:
        queue = self._store.queue
        if self._parked is not None and queue:
            self.log.info(
                "Slack settings reloaded: resuming delivery of %d notification(s)", len(queue)
            )
        self._parked = None
        self._held = False
        self._save()
        self._wake.set()

    async def send_test(self, text: str) -> None:
        """Post `text` once, now, outside the outbox; raise SlackError saying what to fix."""
        entry = Entry(Notification(key="", incident="", action="post", text=text), plain=True)
        for attempt in range(3):
            await self._pace()
            try:
                await self._delivery.send(entry)
            except Failure as f:
                self._pacer.attempted(asyncio.get_running_loop().time())
                self._failures.labels(self._label, f.reason).inc()
                if f.kind == "retry" and attempt < 2:
                    await asyncio.sleep(f.retry_after or self._pacer.min_backoff * 2**attempt)
                    continue
                raise SlackError(self._delivery.problem(f)) from None
            self._pacer.attempted(asyncio.get_running_loop().time())
            self._delivered.labels(self._label).inc()
            return

    async def aclose(self) -> None:
        """Save the outbox one last time (only while acting: a replica that no longer leads
        must not write over the leader's flags); slack-sdk opens a session per request."""
        await self._keeper.aclose()

    # --- delivery

    @property
    def _label(self) -> str:
        return self._settings.label

    def _init_series(self) -> None:
        # every series exists from the start, so that rate() and alerts see zeros, not gaps
        self._delivered.labels(self._label)
        for reason in REASONS:
            self._failures.labels(self._label, reason)
        self._set_pending()

    def _set_pending(self) -> None:
        self._pending.labels(self._label).set(self.pending())

    async def _pace(self) -> None:
        delay = self._pacer.delay(asyncio.get_running_loop().time())
        if delay > 0:
            await asyncio.sleep(delay)

    async def _attempt(self, entry: Entry) -> None:
        generation = self._generation
        unsure_before = entry.unsure_since
        delivery = self._delivery
        try:
            try:
                sent = await delivery.send(
                    entry,
                    claim=lambda: self._keeper.claim(entry),
                    thread=self._store.threads.get(entry.n.incident),
                    channel_id=self._store.channel_id(self._settings.channel or ""),
                )
            except (Failure, Held, Unclaimed, asyncio.CancelledError):
                raise
            except Exception as e:
                # a surprise from slack-sdk must not end delivery: count it and retry later
                code = f"unexpected {type(e).__name__}"
                raise Failure("retry", "other", code, maybe_sent=True) from None
        except Held as held:
            entry.unsure_since = unsure_before
            self._held = True
            self.log.warning(
                "the Slack outbox is held by another writer (epoch %s here): notification %s "
                "not sent",
                held.args[0] if held.args else "?",
                entry.n.key,
            )
            self._changed.set()
            return
        except Unclaimed as unclaimed:
            entry.unsure_since = unsure_before
            if self._gate.epoch() is None:
                return  # no longer acting: the loop waits for the lease
            if self._keeper.streak == 0:
                self.log.warning(
                    "notification %s not sent: its claim could not be written to %s (%s); "
                    "trying again",
                    entry.n.key,
                    self._store.where,
                    unclaimed,
                )
            await self._keeper.backoff()
            return
        except Failure as f:
            self._pacer.attempted(asyncio.get_running_loop().time())
            self._failures.labels(self._label, f.reason).inc()
            if not f.maybe_sent:
                entry.unsure_since = unsure_before
            if generation != self._generation:
                self._save()  # the settings changed meanwhile: try again with the new ones
            elif f.kind == "park":
                self._park(f)
            elif f.kind == "reject":
                await self._reject(entry, f)
            else:
                await self._backoff(f)
            return
        self._pacer.attempted(asyncio.get_running_loop().time())
        self._delivered.labels(self._label).inc()
        if streak := self._pacer.succeeded():
            self.log.info("Slack delivery works again after %d failed attempt(s)", streak)
        await self._finish(entry, sent)
        if self._delivery.workspace is None and entry.n.action == "post":
            await self._delivery.learn_workspace()

    async def _finish(self, entry: Entry, sent: Sent | None = None) -> None:
        await self._keeper.persist(lambda: self._store.finish(entry, sent), None)
        self._changed.set()

    def _park(self, f: Failure) -> None:
        self._parked = f
        self.log.error(
            "%s; %d notification(s) are kept and will be sent after a reload (SIGHUP or "
            "POST /-/reload) once this is fixed",
            self._delivery.problem(f),
            len(self._store.queue),
        )
        self._save()
        self._changed.set()

    async def _reject(self, entry: Entry, f: Failure) -> None:
        n = entry.n
        if f.code in METADATA_CODES and not self._delivery.metadata_off:
            self.log.warning(
                "Slack refused message metadata (%s): sending without it, so a message whose "
                "delivery is unknown cannot be looked for and is sent again",
                f.code,
            )
            self._delivery.metadata_off = True
        elif n.action == "edit" and f.code in GONE_CODES and not entry.repost:
            self.log.warning(
                "Slack cannot edit the message of incident %s (%s): posting notification %s as a new message",
                n.incident,
                f.code,
                n.key,
            )
            entry.repost = True
            self._save()
        elif not entry.plain:
            self.log.warning(
                "Slack refused notification %s (%s): sending it again as plain text", n.key, f.code
            )
            entry.plain = True
            self._save()
        else:
            # the one case a message is given up: a malformed one must not block all later ones
            self.log.error(
                "Slack refused notification %s again (%s), even as plain text: dropped it. Its text: %s",
                n.key,
                f.code,
                n.text[:300],
            )
            await self._finish(entry)

    async def _backoff(self, f: Failure) -> None:
        delay = self._pacer.failed(f.retry_after)
        streak = self._pacer.streak
        generation = self._generation
        # a long outage says so now and then, not at every attempt
        level = logging.WARNING if streak == 1 or streak % 20 == 0 else logging.DEBUG
        self.log.log(
            level,
            "Slack delivery failed (%s: %s, attempt %d); retrying in %.1f s, %d notification(s) waiting",
            f.reason,
            f.code,
            streak,
            delay,
            len(self._store.queue),
        )
        self._save()
        if generation != self._generation:
            return
        self._reset.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reset.wait(), delay)

    def _save(self) -> None:
        self._keeper.save()
