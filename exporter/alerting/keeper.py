"""The outbox's store as the notifier uses it: loaded under the lease, every change persisted.

`OutboxKeeper` stands between the `Notifier` (notifier.py's delivery loop) and an `OutboxStore`
(local file or HA table). It makes each store call through the store's `StoreCalls` (inline for
a local file, in a worker thread with a deadline for the table), says a failing store once and
tries it again after a short backoff, and keeps what the store does not have yet: notifications
enqueued before the outbox is loaded (appended by the loop), changes whose write failed (saved
again). With several replicas it loads the outbox again each time this replica starts acting
under a new lease epoch, and fences each claim on that epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from exporter.alerting.outbox import Entry, OutboxStore
from exporter.errors import CorruptStateFile
from exporter.store.calls import StoreCalls
from exporter.store.leadership import Gate

__all__ = ["STORE_MAX_BACKOFF", "Held", "OutboxKeeper", "Unclaimed"]

T = TypeVar("T")
# a store that cannot be read or written is tried again this soon at most (s): a new leader must
# not sit out a long backoff once the table answers again
STORE_MAX_BACKOFF = 5.0


class Held(Exception):
    """The store refused a claim: another writer holds the outbox under a later lease epoch."""


class Unclaimed(Exception):
    """The claim's outcome is unknown (the store call failed or timed out), or this replica no
    longer acts: the message is not sent now."""


class OutboxKeeper:
    """`store` through `calls`, under `gate`; `changed` is called whenever what is pending may
    have changed, `wake` when the delivery loop has store work to do."""

    def __init__(
        self,
        store: OutboxStore,
        calls: StoreCalls,
        gate: Gate,
        *,
        clock: Callable[[], float],
        log: logging.Logger,
        min_backoff: float,
        changed: Callable[[], None],
        wake: Callable[[], None],
    ) -> None:
        self.store = store
        self.calls = calls
        self._gate = gate
        self._clock = clock
        self.log = log
        self._min_backoff = min_backoff
        self._changed = changed
        self._wake = wake
        # the lease epoch under which the store's memory was loaded (None: not loaded yet);
        # another epoch means another replica may have delivered meanwhile: load again
        self.loaded_epoch: int | None = None
        # notifications enqueued while the store is called in a thread: appended by the loop
        self.incoming: list[Entry] = []
        self._dirty = False  # a change the store does not have yet: the loop saves it
        self.streak = 0  # store calls failed in a row (the loop's backoff)
        self.failing = False  # the store could not be written: said once
        self._lease = asyncio.Event()  # the lease changed hands: cut a store's backoff short
        if not calls.deferred:
            self._load_inline()
            self.loaded_epoch = gate.epoch()

    # --- what the notifier asks

    def knows(self, key: str) -> bool:
        return self.store.knows(key) or any(e.n.key == key for e in self.incoming)

    def holds(self, key: str) -> bool:
        """The store holds `key` (written, as far as this replica knows)."""
        return not self.failing and not any(e.n.key == key for e in self.incoming)

    def pending(self) -> int:
        return len(self.store.queue) + len(self.incoming)

    def append(self, entry: Entry) -> None:
        """Queue `entry`: at once inline, else by the loop once the outbox is loaded."""
        if self.calls.deferred:
            self.incoming.append(entry)
            self._changed()
        else:
            self.persist_inline(lambda: self.store.append(entry), None)

    def lease_changed(self) -> None:
        self._lease.set()

    async def reload(self, epoch: int) -> bool:
        """Load the outbox as the store has it now (another replica may have delivered since
        this one last did); nothing is delivered until this succeeds."""
        try:
            if self._dirty:
                await self.calls(self.store.save)  # what this replica owes the store first
                self._dirty = False
            await self.calls(lambda: self.store.load(self._clock()))
        except (OSError, ValueError) as e:
            if self.streak == 0:
                self.log.error(
                    "cannot load the Slack outbox from %s (%s): nothing is delivered until it "
                    "loads; trying again",
                    self.store.where,
                    getattr(e, "strerror", None) or e,
                )
            self.streak += 1
            await self.backoff(count=False)
            return False
        self.loaded_epoch = epoch
        self.works()
        self.failing = False
        self._changed()
        self.log.info(
            "delivering from the Slack outbox in %s (epoch %d): %d notification(s) waiting",
            self.store.where,
            epoch,
            len(self.store.queue),
        )
        return True

    async def sync(self) -> bool:
        """The store has every change and every notification enqueued; False after a failed
        call's backoff."""
        if self._dirty:
            self._dirty = False
            await self.persist(self.store.save, None)
            if self._dirty:
                await self.backoff()
                return False
        while self.incoming:
            entry = self.incoming[0]
            if self.store.knows(entry.n.key):
                self.incoming.pop(0)  # queued (or delivered) already, by another replica
                continue
            try:
                await self.calls(lambda entry=entry: self.store.append(entry))  # type: ignore[misc]
            except ValueError as e:
                self.incoming.pop(0)
                self._changed()
                self.log.error("notification %s cannot be queued, dropped: %s", entry.n.key, e)
                continue
            except OSError as e:
                # in the store's memory now, maybe not in the store: the next save puts it there
                self.incoming.pop(0)
                self.failed(e)
                self._dirty = True
                await self.backoff()
                return False
            self.incoming.pop(0)
            self.works()
        return True

    async def claim(self, entry: Entry) -> None:
        """`entry` goes out now: after a crash from here on, it may or may not be in Slack.

        Raises Held when the store refuses (another writer holds the outbox), Unclaimed when
        the claim's outcome is unknown or this replica no longer acts: nothing is sent then.
        """
        epoch = self._gate.epoch()
        if epoch is None or epoch != self.loaded_epoch:
            raise Unclaimed("this replica does not act under the epoch its outbox was loaded in")
        entry.unsure_since = entry.unsure_since or time.time()
        try:
            claimed = await self.calls(lambda: self.store.claim(entry, epoch))
        except (OSError, ValueError) as e:
            raise Unclaimed(getattr(e, "strerror", None) or str(e)) from None
        self.works()
        if not claimed:
            raise Held(epoch)

    async def backoff(self, *, count: bool = True) -> None:
        """Wait before the store is tried again: doubling from min_backoff, up to a few seconds,
        cut short when the lease changes hands."""
        if count:
            self.streak += 1
        delay = min(STORE_MAX_BACKOFF, self._min_backoff * 2 ** max(0, self.streak - 1))
        self._lease.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lease.wait(), delay)

    async def persist(self, change: Callable[[], T], default: T) -> T:
        """`change` to the store through its calls; when it cannot be persisted, `default`,
        said once in the log (and, for a store called in a thread, saved again by the loop)."""
        try:
            result = await self.calls(change)
        except (OSError, ValueError) as e:
            self.failed(e)
            if self.calls.deferred:
                self._dirty = True
            result = default
        else:
            self.works()
        self._changed()
        return result

    def persist_inline(self, change: Callable[[], T], default: T) -> T:
        """`persist` for a store called inline, from synchronous code."""
        try:
            result = change()
        except (OSError, ValueError) as e:
            self.failed(e)
            result = default
        else:
            self.works()
        self._changed()
        return result

    def save(self) -> None:
        """Persist the queued entries' flags: at once inline, else by the loop."""
        if self.calls.deferred:
            self._dirty = True
            self._wake()
        else:
            self.persist_inline(self.store.save, None)

    async def aclose(self) -> None:
        """Save one last time (only while acting: a replica that no longer leads must not write
        over the leader's flags)."""
        if not self.calls.deferred:
            self.save()
        elif self._dirty and self._gate.epoch() == self.loaded_epoch is not None:
            self._dirty = False
            await self.persist(self.store.save, None)
        self.calls.close()

    def failed(self, e: BaseException) -> None:
        if not self.failing:
            self.log.error(
                "cannot save the Slack outbox to %s (%s): notifications are kept in memory only "
                "and a restart would lose them",
                self.store.where,
                getattr(e, "strerror", None) or e,
            )
        self.failing = True

    def works(self) -> None:
        self.streak = 0
        if self.failing and not self._dirty:
            self.log.info("the Slack outbox is saved to %s again", self.store.where)
            self.failing = False

    def _load_inline(self) -> None:
        try:
            self.store.load(self._clock())
        except CorruptStateFile as e:
            self.log.error(
                "the Slack outbox is unreadable: %s; started empty: notifications queued before "
                "are lost and an old one may be sent again",
                e,
            )
            return
        if queue := self.store.queue:
            where = self.store.where
            self.log.info("loaded %d undelivered Slack notification(s) from %s", len(queue), where)
