"""What the Slack outbox holds, and what a store of it must do (`OutboxStore`).

A leaf module: the incident store (alerts), the shift plan, the wording (messages), the delivery
and the stores all speak of `Notification` and `Entry` without importing one another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, Protocol

from pydantic import ConfigDict

Action = Literal["post", "edit", "reply"]
ACTIONS: tuple[Action, ...] = ("post", "edit", "reply")
OUTBOX_VERSION: Final = 1
# the thread of a migration's steps (alerting/migration.py): its first reply opens it
MIGRATION_PREFIX: Final = "migration:"
KEEP_DONE: Final = 1000  # delivered keys remembered, so that re-enqueueing an old one stays a no-op
KEEP_THREADS: Final = 1000  # incidents whose message can still be edited or replied to

# strict types (no "1" for 1), no NaN or infinity: the state files' schemas refuse what the
# code would never have written
STRICT = ConfigDict(strict=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Notification:
    """One message to deliver; `key` is unique and stable, so that enqueueing is idempotent."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    key: str
    incident: str
    action: Action
    text: str
    blocks: tuple[Mapping[str, Any], ...] | None = None
    created: float = 0.0


@dataclass(slots=True)
class QueuedRecord:
    """A queued notification as the outbox file stores it (flat, as version 1 always did)."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    key: str
    incident: str
    action: Action
    text: str
    blocks: list[dict[str, Any]] | None = None
    created: float = 0.0
    plain: bool = False  # Slack refused it once: text only from now on
    repost: bool = False  # an edit whose message is gone: post it instead
    unsure_since: float | None = None  # an attempt since then may have reached Slack

    @property
    def notification(self) -> Notification:
        return Notification(
            key=self.key,
            incident=self.incident,
            action=self.action,
            text=self.text,
            blocks=None if self.blocks is None else tuple(self.blocks),
            created=self.created,
        )


@dataclass(slots=True)
class OutboxRecord:
    """The whole outbox file: what waits, where each incident's message is, what was sent."""

    __pydantic_config__: ClassVar[ConfigDict] = STRICT

    version: Literal[1]
    queue: list[QueuedRecord] = field(default_factory=list)
    # incident -> (channel id, ts) of its message
    threads: dict[str, tuple[str, str]] = field(default_factory=dict)
    channels: dict[str, str] = field(default_factory=dict)  # configured name -> channel id
    done: list[str] = field(default_factory=list)  # keys delivered lately, oldest first


@dataclass
class Entry:
    """A queued notification, with what delivery learnt of it so far (saved along with it)."""

    n: Notification
    plain: bool = False  # Slack refused it once: text only from now on
    repost: bool = False  # an edit whose message is gone: post it instead
    unsure_since: float | None = None  # an attempt since then may have reached Slack
    warned: bool = False  # in memory only: "no message is known" was logged for it

    def record(self) -> QueuedRecord:
        n = self.n
        return QueuedRecord(
            key=n.key,
            incident=n.incident,
            action=n.action,
            text=n.text,
            blocks=None if n.blocks is None else [dict(b) for b in n.blocks],
            created=n.created,
            plain=self.plain,
            repost=self.repost,
            unsure_since=self.unsure_since,
        )

    @classmethod
    def of(cls, record: QueuedRecord) -> Entry:
        return cls(
            n=record.notification,
            plain=record.plain,
            repost=record.repost,
            unsure_since=record.unsure_since,
        )


@dataclass(frozen=True, slots=True)
class Sent:
    """A top-level message that Slack holds: in which channel, at which ts."""

    channel: str  # as configured (a name such as #alerts, or an id)
    channel_id: str  # the id Slack answered
    ts: str
    thread: bool  # it is its incident's message from now on: edited and replied to


class OutboxState:
    """The outbox in memory: what waits (oldest first), what was delivered lately, and where
    each incident's message is. Pure: a store keeps one and persists it."""

    def __init__(self) -> None:
        self.queue: list[Entry] = []
        self.done: dict[str, None] = {}  # insertion-ordered set of finished keys
        self.threads: dict[str, tuple[str, str]] = {}  # incident -> (channel id, ts)
        self.channels: dict[str, str] = {}  # configured channel -> id Slack answered

    def knows(self, key: str) -> bool:
        return key in self.done or any(e.n.key == key for e in self.queue)

    def finish(self, entry: Entry, sent: Sent | None) -> None:
        if sent is not None:
            self.channels[sent.channel] = sent.channel_id
            if sent.thread:
                self.threads.pop(entry.n.incident, None)
                self.threads[entry.n.incident] = (sent.channel_id, sent.ts)
                while len(self.threads) > KEEP_THREADS:
                    del self.threads[next(iter(self.threads))]
        self.queue.remove(entry)
        self.done[entry.n.key] = None
        while len(self.done) > KEEP_DONE:
            del self.done[next(iter(self.done))]

    def record(self) -> OutboxRecord:
        return OutboxRecord(
            version=OUTBOX_VERSION,
            queue=[e.record() for e in self.queue],
            threads=dict(self.threads),
            channels=dict(self.channels),
            done=list(self.done),
        )

    @classmethod
    def of(cls, record: OutboxRecord) -> OutboxState:
        state = cls()
        state.queue = [Entry.of(r) for r in record.queue]
        state.threads = dict(record.threads)
        state.channels = dict(record.channels)
        state.done = dict.fromkeys(record.done)
        return state


class StateReads:
    """The reads every OutboxStore answers from its in-memory OutboxState (`self._state`)."""

    _state: OutboxState

    @property
    def queue(self) -> Sequence[Entry]:
        return self._state.queue

    @property
    def threads(self) -> Mapping[str, tuple[str, str]]:
        return self._state.threads

    def channel_id(self, channel: str) -> str | None:
        return self._state.channels.get(channel)

    def knows(self, key: str) -> bool:
        return self._state.knows(key)


class OutboxStore(Protocol):
    """Where the outbox lives: local files for one replica, the HA table for several.

    The store holds the outbox in memory and persists every change before the method that made
    it returns. A change that cannot be persisted raises OSError or ValueError and stays in
    memory all the same: delivery goes on, and the caller says that a restart would lose it.
    """

    @property
    def where(self) -> str | None:
        """Where the outbox is kept, for log lines; None when it is kept in memory only."""
        ...

    @property
    def queue(self) -> Sequence[Entry]:
        """What waits, oldest first."""
        ...

    @property
    def threads(self) -> Mapping[str, tuple[str, str]]:
        """incident -> (channel id, ts) of its message: what a new leader edits and threads."""
        ...

    def channel_id(self, channel: str) -> str | None:
        """The id Slack answered for a configured channel, once a message went there."""
        ...

    def knows(self, key: str) -> bool:
        """`key` waits, or was delivered lately: enqueueing it again is a no-op."""
        ...

    def load(self, now: float) -> None:
        """Read what an earlier run left; raises CorruptStateFile (the store then starts empty)."""
        ...

    def append(self, entry: Entry) -> None:
        """Queue `entry` at the end (the caller checked `knows` first)."""
        ...

    def claim(self, entry: Entry, epoch: int) -> bool:
        """Persist `entry` as in flight (its `unsure_since` set) before it goes out.

        False: the store refuses, because another writer holds the outbox under a later lease
        epoch; `entry` must not be sent. A store without leases always claims. Raises OSError or
        ValueError when the outcome is unknown (the lease's fence was not checked): `entry` is
        not sent then, and is claimed again later.
        """
        ...

    def finish(self, entry: Entry, sent: Sent | None) -> None:
        """`entry` is delivered (or dropped, with `sent` None): out of the queue, its key kept
        among the done ones, and where its message landed remembered."""
        ...

    def save(self) -> None:
        """Persist what changed in the queued entries (`plain`, `repost`, `unsure_since`), and
        every change of this store whose own persisting failed before (an append, a finish)."""
        ...
