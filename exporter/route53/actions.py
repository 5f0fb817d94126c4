"""What the shift plan asks for: weights to write and news to tell, in the order it wants them.

The plan (plan.py) returns these from every call; the runner (runner.py) carries them out and
reports each write's outcome back to the plan with `change_applied` or `change_failed`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["Action", "Notify", "NotifyKind", "SetWeights"]


@dataclass(frozen=True, slots=True)
class SetWeights:
    """Write these weights (one atomic batch), then call change_applied/change_failed with seq.

    `expected` is what the plan believes Route53 holds now: pass it to the writer so that a
    weight changed by hand since the last read is refused, not overwritten. None for a
    rollback, which must happen whatever the weights are.
    """

    seq: int
    share: float
    weights: Mapping[str, int]
    expected: Mapping[str, int] | None
    rollback: bool
    reason: str


NotifyKind = Literal[
    "step",
    "rollback",
    "rolled_back",
    "paused",
    "resumed",
    "hand_change",
    "waiting_approval",
    "approved",
    "change_failed",
    "done",
]


@dataclass(frozen=True, slots=True)
class Notify:
    """Something a person should hear about (Slack); `about` holds the firing alerts' labels."""

    kind: NotifyKind
    text: str
    about: tuple[str, ...] = ()
    dry_run: bool = False  # news of a plan that writes nothing


Action = SetWeights | Notify
