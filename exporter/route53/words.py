"""How the shift plan's texts say things: shares, weights, durations, dry runs, and the
sentences of its news and history.

Pure functions of plain values (settings, a change, the weights Route53 holds as last read):
the plan (plan.py) builds its notifications and history with them, and explain.py its status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

from exporter.route53.model import Change, Observation, ShiftSettings, candidate_percent

__all__ = [
    "DRY_RUN",
    "approval_news",
    "done_news",
    "dry",
    "format_left",
    "go_text",
    "landed_news",
    "pct",
    "plan_text",
    "real_share",
    "real_text",
    "rollback_news",
    "stopped",
    "weights_text",
    "would_set",
]

Real = Mapping[str, int | None] | None  # the two platforms' weights in Route53, as last read


DRY_RUN: Final = "DRY RUN"


def dry(text: str) -> str:
    """`text` marked as a dry run's, once: "DRY RUN: ..." unless it says so already."""
    return text if DRY_RUN in text else f"{DRY_RUN}: {text}"


def format_left(seconds: float) -> str:
    """4m 12s, 1h 5m, 42s: how long a person still has to wait."""
    s = max(0, math.ceil(seconds))
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def pct(share: float | None) -> str:
    """25%, 2.5% (? when unknown)."""
    return "?" if share is None else f"{share:g}%"


def plan_text(steps: Sequence[float], current: int | None = None) -> str:
    """10% → [25%] → 50% → 100%: the steps as a person reads them, the current one bracketed."""
    return " → ".join(f"[{pct(s)}]" if i == current else pct(s) for i, s in enumerate(steps))


def weights_text(weights: Mapping[str, int | None], order: Sequence[str]) -> str:
    """heroku 90, aws 10 (a missing record set shows as -)."""
    return ", ".join(f"{p} {'-' if weights.get(p) is None else weights.get(p)}" for p in order)


# --- sentences that the plan's news and history share with its status ---------------------


def real_share(settings: ShiftSettings, real: Real) -> float | None:
    """The candidate's percent in the weights Route53 holds; None before a read."""
    return None if real is None else candidate_percent(real, *settings.platforms)


def real_text(settings: ShiftSettings, real: Real, still: bool = False) -> str:
    """Route53 holds aws 10% (heroku 90, aws 10): the weights as last read."""
    if real is None:
        return "Route53's weights not read yet"
    holds = "still holds" if still else "holds"
    return (
        f"Route53 {holds} {settings.candidate} {pct(real_share(settings, real))} "
        f"({weights_text(real, settings.platforms)})"
    )


def would_set(settings: ShiftSettings, change: Change, real: Real) -> str:
    """A dry run's change: what it would write, beside what Route53 holds."""
    wrote = weights_text(change.weights, settings.platforms)
    cand = settings.candidate
    if change.kind == "rollback":
        return (
            f"would roll {cand} back to {pct(change.share)} ({wrote}); "
            f"{real_text(settings, real, still=True)}"
        )
    return f"would set {cand} to {pct(change.share)} ({wrote}); {real_text(settings, real)}"


def stopped(settings: ShiftSettings) -> str:
    """Where a rollback left the plan: rolled back, or in a dry run, would have."""
    if settings.dry_run:
        return (
            f"would roll {settings.candidate} back to {pct(settings.rollback_to)} (nothing written)"
        )
    return f"rolled back to {pct(settings.rollback_to)}"


def go_text(settings: ShiftSettings, share: float | None, judged: Observation | None) -> str:
    """readiness GO for aws at 10% (held 31 min; 7 200 probes; ...): why the plan moves on.

    `judged` is the observation whose verdict is on the plan's current step, if any.
    """
    if settings.dry_run:  # on what it would have written: nothing was held, nothing is said held
        return f"readiness GO at {pct(share)}"
    summary = "; ".join(judged.readiness_reasons) if judged is not None else ""
    text = f"readiness GO for {settings.candidate} at {pct(share)}"
    return f"{text} ({summary})" if summary else text


# --- the news of a transition: (the history's line, the notification's text) ----------------


def done_news(settings: ShiftSettings, share: float | None, go: str, real: Real) -> tuple[str, str]:
    """The last step held and readiness said GO (`go`): the shift is done."""
    s = settings
    if s.dry_run:
        noted = f"the shift would be done; {real_text(s, real)}"
        told = (
            f"{s.record}: the shift would be done: {s.candidate} would carry "
            f"{pct(share)} of the traffic; nothing written; {real_text(s, real)}"
        )
    else:
        noted = "the shift is done"
        told = f"{s.record}: {s.candidate} carries {pct(share)} of the traffic: the shift is done"
    return f"{go}: {noted}", told


def approval_news(settings: ShiftSettings, go: str, goal: float, real: Real) -> tuple[str, str]:
    """Readiness said GO (`go`) in manual mode: a person must approve the step to `goal`."""
    s = settings
    noted = f"{go}: approve {pct(goal)}"
    told = f"{s.record}: {go}; approve to go to {pct(goal)}"
    if s.dry_run:
        told += f" (nothing is written: {real_text(s, real)})"
    return noted, told


def rollback_news(
    settings: ShiftSettings, change: Change, failed: float | None, reason: str, real: Real
) -> tuple[str, str]:
    """A rollback issued from the share `failed` (the step it left, or the one it was going to)."""
    s = settings
    if s.dry_run:
        wrote = weights_text(change.weights, s.platforms)
        still = real_text(s, real, still=True)
        noted = f"would roll back from {pct(failed)}: {reason}; {still}"
        told = (
            f"{s.record}: would roll {s.candidate} back from {pct(failed)} to "
            f"{pct(s.rollback_to)} ({wrote}): {reason}; nothing written; {still}"
        )
    else:
        noted = f"rolling back from {pct(failed)}: {reason}"
        told = (
            f"{s.record}: rolling {s.candidate} back from {pct(failed)} to "
            f"{pct(s.rollback_to)}: {reason}"
        )
    return noted, told


def landed_news(
    settings: ShiftSettings,
    change: Change,
    was: float | None,
    how: str,
    real: Real,
    hold: float,
) -> tuple[str, str]:
    """A change confirmed (`how`: INSYNC, read back), or in a dry run taken as written.

    `was` is the share before it; `hold` how long the plan now holds at a step.
    """
    s = settings
    rollback = change.kind == "rollback"
    wrote = weights_text(change.weights, s.platforms)
    if s.dry_run:
        noted = f"acting as if {s.candidate} were at {pct(change.share)} ({wrote}): "
        noted += f"nothing written; {real_text(s, real, still=rollback)}"
    else:
        noted = f"{s.candidate} at {pct(change.share)} ({how})"
    if rollback:
        if s.dry_run:
            holds = (
                "Route53's weights not read yet"
                if real is None
                else f"Route53 still holds {pct(real_share(s, real))}: "
                f"{weights_text(real, s.platforms)}"
            )
            told = (
                f"{s.record}: would roll {s.candidate} back to {pct(change.share)} "
                f"({holds}); the shift is paused until a person resumes"
            )
        else:
            told = (
                f"{s.record}: {s.candidate} rolled back to {pct(change.share)} "
                f"(was {pct(was)}); paused until a person resumes"
            )
        return noted, told
    plan = plan_text(s.steps, change.index)
    if s.dry_run:
        told = (
            f"{s.record}: would set {s.candidate} to {pct(change.share)} ({wrote}), "
            f"was {pct(was)}; nothing written; {real_text(s, real)}; "
            f"holding {format_left(hold)} as if it were set; plan {plan}"
        )
    else:
        told = (
            f"{s.record}: {s.candidate} now gets {pct(change.share)} of the traffic "
            f"(was {pct(was)}); holding {format_left(hold)}; plan {plan}"
        )
    return noted, told
