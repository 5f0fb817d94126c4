"""What the Slack outbox holds: the notification value, and the outbox file's typed schema.

A leaf module: the incident store (alerts), the shift plan, the wording (messages) and the
delivery (slack) all speak of `Notification` without importing one another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

from pydantic import ConfigDict

Action = Literal["post", "edit", "reply"]
ACTIONS: tuple[Action, ...] = ("post", "edit", "reply")
OUTBOX_VERSION: Final = 1
# the thread of a migration's steps (alerting/migration.py): its first reply opens it
MIGRATION_PREFIX: Final = "migration:"

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
