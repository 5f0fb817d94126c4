"""Slack delivery from a persisted outbox: in order, retried; at-least-once if an answer is lost.

`Notifier` coordinates parts it does not implement: an `OutboxStore` (where the outbox lives)
and how its calls are made (`StoreCalls`: inline for a local file, in a thread with a deadline
for the HA table), a `Gate` (may this replica deliver now, under which lease epoch), a
`SlackDelivery` (talking to Slack) and a `Pacer` (when the next attempt may start); it owns the
delivery loop, the decisions after a failure, and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from exporter.alerting.delivery import (
    GONE_CODES,
    METADATA_CODES,
    REASONS,
    Failure,
    SlackDelivery,
    SlackSettings,
)
from exporter.alerting.local_outbox import LocalOutboxStore
from exporter.alerting.outbox import ACTIONS, Entry, Notification, OutboxStore, Sent
from exporter.alerting.pacing import Pacer
from exporter.errors import CorruptStateFile, SlackError
from exporter.store.calls import Inline, StoreCalls
from exporter.store.leadership import ALWAYS, Gate

__all__ = ["Notification", "Notifier", "SlackError", "SlackSettings"]

T = TypeVar("T")
# a store that cannot be read or written is tried again this soon at most (s): a new leader must
# not sit out a long backoff once the table answers again
STORE_MAX_BACKOFF = 5.0


class _Held(Exception):
    """The store refused a claim: another writer holds the outbox under a later lease epoch."""


class _Unclaimed(Exception):
    """The claim's outcome is unknown (the store call failed or timed out), or this replica no
    longer acts: the message is not sent now."""


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
        self._store = store if store is not None else LocalOutboxStore(settings.state_dir)
        self._delivery = SlackDelivery(settings, timeout=timeout, logger=self.log)
        self._pacer = Pacer(
            min_interval=min_interval, min_backoff=min_backoff, max_backoff=max_backoff
        )
        self._gate = gate
        self._calls: StoreCalls = calls if calls is not None else Inline()
        # the lease epoch under which the store's memory was loaded (None: not loaded yet);
        # another epoch means another replica may have delivered meanwhile: load again
        self._loaded_epoch: int | None = None
        # notifications enqueued while the store is called in a thread: appended by the loop
        self._incoming: list[Entry] = []
        self._dirty = False  # a change the store does not have yet: the loop saves it
        self._store_streak = 0  # store calls failed in a row (the loop's backoff)

        self._parked: Failure | None = None
        self._held = False  # the store refused a claim: another writer delivers now
        self._generation = 0  # bumped by update_settings: a failure of older settings is stale
        self._save_failing = False
        self._running = False
        self._wake = asyncio.Event()  # something to deliver, or settings changed
        self._reset = asyncio.Event()  # settings changed: cut a backoff short
        self._lease = asyncio.Event()  # the lease changed hands: cut a store's backoff short
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
        if not self._calls.deferred:
            self._load()
            self._loaded_epoch = self._gate.epoch()
        self._set_pending()
        gate.on_change(self._lease_changed)

    # --- public interface

    def enqueue(self, n: Notification, *, doubtful: bool = False) -> bool:
        """Queue `n` and save the outbox; False (and nothing done) if its key was seen before.

        `doubtful`: `n` may have reached Slack already (it comes back from before a crash), so
        it is looked for by its key before it is sent, like a message whose answer was lost.
        """
        if n.action not in ACTIONS:
            raise ValueError(f"notification {n.key}: unknown action {n.action!r}")
        if self._store.knows(n.key) or self._incoming_has(n.key):
            return False
        if not n.created:
            n = replace(n, created=self._clock())
        entry = Entry(n, unsure_since=n.created if doubtful else None)
        if n.blocks is not None:
            json.dumps(n.blocks)  # blocks that cannot be saved fail here, not in the loop
        if self._calls.deferred:
            self._incoming.append(entry)  # the loop appends it once the outbox is loaded
            self._set_pending()
        else:
            self._persist_inline(lambda: self._store.append(entry), None)
        self._wake.set()
        return True

    def accept(self, n: Notification, *, doubtful: bool = False) -> bool:
        """Queue `n` (idempotently, like `enqueue`); True once the outbox's store holds it.

        False while it does not (the outbox cannot be saved, or a store called in a thread has
        not appended it yet): whoever owes `n` keeps it and asks again.
        """
        self.enqueue(n, doubtful=doubtful)
        return not self._save_failing and not self._incoming_has(n.key)

    def _lease_changed(self) -> None:
        self._lease.set()
        self._wake.set()

    def _incoming_has(self, key: str) -> bool:
        return any(e.n.key == key for e in self._incoming)

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
        if epoch != self._loaded_epoch and not await self._reload(epoch):
            return False
        if self._dirty:
            self._dirty = False
            await self._persist(self._store.save, None)
            if self._dirty:
                await self._store_backoff()
                return False
        while self._incoming:
            entry = self._incoming[0]
            if self._store.knows(entry.n.key):
                self._incoming.pop(0)  # queued (or delivered) already, by another replica
                continue
            try:
                await self._calls(lambda entry=entry: self._store.append(entry))  # type: ignore[misc]
            except ValueError as e:
                self._incoming.pop(0)
                self._set_pending()
                self.log.error("notification %s cannot be queued, dropped: %s", entry.n.key, e)
                continue
            except OSError as e:
                # in the store's memory now, maybe not in the store: the next save puts it there
                self._incoming.pop(0)
                self._store_failed(e)
                self._dirty = True
                await self._store_backoff()
                return False
            self._incoming.pop(0)
            self._store_works()
        return True

    async def _reload(self, epoch: int) -> bool:
        """Load the outbox as the store has it now (another replica may have delivered since
        this one last did); nothing is delivered until this succeeds."""
        try:
            if self._dirty:
                await self._calls(self._store.save)  # what this replica owes the store first
                self._dirty = False
            await self._calls(lambda: self._store.load(self._clock()))
        except (OSError, ValueError) as e:
            if self._store_streak == 0:
                self.log.error(
                    "cannot load the Slack outbox from %s (%s): nothing is delivered until it "
                    "loads; trying again",
                    self._store.where,
                    getattr(e, "strerror", None) or e,
                )
            self._store_streak += 1
            await self._store_backoff(count=False)
            return False
        self._loaded_epoch = epoch
        self._held = False
        self._store_works()
        self._save_failing = False
        self._set_pending()
        self.log.info(
            "delivering from the Slack outbox in %s (epoch %d): %d notification(s) waiting",
            self._store.where,
            epoch,
            len(self._store.queue),
        )
        if self._store.threads:
            await self._delivery.learn_workspace()
        return True

    async def _store_backoff(self, *, count: bool = True) -> None:
        """Wait before the store is tried again: doubling from min_backoff, up to a few seconds,
        cut short when the lease changes hands."""
        if count:
            self._store_streak += 1
        delay = min(
            STORE_MAX_BACKOFF,
            self._pacer.min_backoff * 2 ** max(0, self._store_streak - 1),
        )
        self._lease.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lease.wait(), delay)

    def _store_failed(self, e: BaseException) -> None:
        if not self._save_failing:
            self.log.error(
                "cannot save the Slack outbox to %s (%s): notifications are kept in memory only "
                "and a restart would lose them",
                self._store.where,
                getattr(e, "strerror", None) or e,
            )
        self._save_failing = True

    def _store_works(self) -> None:
        self._store_streak = 0
        if self._save_failing and not self._dirty:
            self.log.info("the Slack outbox is saved to %s again", self._store.where)
            self._save_failing = False

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 - the daemon's shutdown budget
        """Wait until the outbox is empty (True), or parked, held or `timeout` passed (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._store.queue or self._incoming:
            remaining = deadline - loop.time()
            stuck = self._parked is not None or self._held or self._gate.epoch() is None
            if stuck or remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def pending(self) -> int:
        return len(self._store.queue) + len(self._incoming)

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
        if not self._calls.deferred:
            self._save()
        elif self._dirty and self._gate.epoch() == self._loaded_epoch is not None:
            self._dirty = False
            await self._persist(self._store.save, None)
        self._calls.close()

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

    async def _claim(self, entry: Entry) -> None:
        """`entry` goes out now: after a crash from here on, it may or may not be in Slack.

        Raises _Held when the store refuses (another writer holds the outbox), _Unclaimed when
        the claim's outcome is unknown or this replica no longer acts: nothing is sent then.
        """
        epoch = self._gate.epoch()
        if epoch is None or epoch != self._loaded_epoch:
            raise _Unclaimed("this replica does not act under the epoch its outbox was loaded in")
        entry.unsure_since = entry.unsure_since or time.time()
        try:
            claimed = await self._calls(lambda: self._store.claim(entry, epoch))
        except (OSError, ValueError) as e:
            raise _Unclaimed(getattr(e, "strerror", None) or str(e)) from None
        self._store_works()
        if not claimed:
            raise _Held(epoch)

    async def _attempt(self, entry: Entry) -> None:
        generation = self._generation
        unsure_before = entry.unsure_since
        delivery = self._delivery
        try:
            try:
                sent = await delivery.send(
                    entry,
                    claim=lambda: self._claim(entry),
                    thread=self._store.threads.get(entry.n.incident),
                    channel_id=self._store.channel_id(self._settings.channel or ""),
                )
            except (Failure, _Held, _Unclaimed, asyncio.CancelledError):
                raise
            except Exception as e:
                # a surprise from slack-sdk must not end delivery: count it and retry later
                code = f"unexpected {type(e).__name__}"
                raise Failure("retry", "other", code, maybe_sent=True) from None
        except _Held as held:
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
        except _Unclaimed as unclaimed:
            entry.unsure_since = unsure_before
            if self._gate.epoch() is None:
                return  # no longer acting: the loop waits for the lease
            if self._store_streak == 0:
                self.log.warning(
                    "notification %s not sent: its claim could not be written to %s (%s); "
                    "trying again",
                    entry.n.key,
                    self._store.where,
                    unclaimed,
                )
            await self._store_backoff()
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
        await self._persist(lambda: self._store.finish(entry, sent), None)
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

    # --- persistence

    async def _persist(self, change: Callable[[], T], default: T) -> T:
        """`change` to the store through its calls; when it cannot be persisted, `default`,
        said once in the log (and, for a store called in a thread, saved again by the loop)."""
        try:
            result = await self._calls(change)
        except (OSError, ValueError) as e:
            self._store_failed(e)
            if self._calls.deferred:
                self._dirty = True
            result = default
        else:
            self._store_works()
        self._set_pending()
        return result

    def _persist_inline(self, change: Callable[[], T], default: T) -> T:
        """`_persist` for a store called inline, from synchronous code."""
        try:
            result = change()
        except (OSError, ValueError) as e:
            self._store_failed(e)
            result = default
        else:
            self._store_works()
        self._set_pending()
        return result

    def _save(self) -> None:
        """Persist the queued entries' flags: at once inline, else by the loop."""
        if self._calls.deferred:
            self._dirty = True
            self._wake.set()
        else:
            self._persist_inline(self._store.save, None)

    def _load(self) -> None:
        try:
            self._store.load(self._clock())
        except CorruptStateFile as e:
            self.log.error(
                "the Slack outbox is unreadable: %s; started empty: notifications queued before "
                "are lost and an old one may be sent again",
                e,
            )
            return
        if queue := self._store.queue:
            where = self._store.where
            self.log.info("loaded %d undelivered Slack notification(s) from %s", len(queue), where)
