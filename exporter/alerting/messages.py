"""Slack wording: incidents and their figures as Block Kit messages with a plain-text fallback."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.alerting.alerts import Event, Fired, Incident, Reminder, Resolved
from exporter.alerting.outbox import Action, Notification

log = logging.getLogger("cutover.messages")

SIGNAL_TITLES = {
    "down": "is down",
    "errors": "fails more requests",
    "latency": "is slower",
}


@dataclass(frozen=True, slots=True)
class Context:
    """What a message needs besides the incident: names, traffic and where to look."""

    baseline: str
    candidate: str
    # the candidate's current traffic share (0..1) and what users see; None without Route53
    candidate_share: float | None = None
    expected_error_ratio: float | None = None
    dashboard_url: str | None = None
    max_ratio: float = 1.5
    max_error_increase: float = 0.02


def _num(figures: Mapping[str, Any], key: str) -> float:
    value = figures.get(key)
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    )


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 1000:.0f} ms"


def _pct(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value * 100:.1f}%" if value < 0.995 or value == 1 else f"{value * 100:.2f}%"


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}x"


def duration_text(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def severity(incident: Incident, ctx: Context) -> str:
    """critical when users are hurt now, warning when they could be, info when none are exposed."""
    if ctx.candidate_share is not None and ctx.candidate_share <= 0:
        return "info"
    if incident.signal in ("down", "errors"):
        return "critical"
    return "warning"


TRAFFIC_PREFIX = "traffic:"  # the check name of a real-traffic incident: traffic:<route group>


def subject(check: str) -> str:
    """What an incident is about, for a person: the check, or a route group of real traffic."""
    if not check.startswith(TRAFFIC_PREFIX):
        return check
    route = check[len(TRAFFIC_PREFIX) :]
    return "real traffic, all routes" if route == "all" else f"real traffic, route group {route}"


def _side(figures: Mapping[str, Any], side: str) -> str:
    line = (
        f"p50 {_ms(_num(figures, f'{side}_p50'))} · p95 {_ms(_num(figures, f'{side}_p95'))}"
        f" · errors {_pct(_num(figures, f'{side}_error_ratio'))}"
    )
    requests = _num(figures, f"{side}_requests")  # real traffic: the evidence behind the ratio
    return line if math.isnan(requests) else f"{line} of {requests:,.0f} requests"


def figures_lines(figures: Mapping[str, Any], ctx: Context) -> tuple[str, str, str]:
    """The candidate's and the baseline's figures side by side, and the comparison."""
    cand, base = _side(figures, "candidate"), _side(figures, "baseline")
    delta = _num(figures, "error_ratio_delta")
    comparison = (
        f"p95 {_x(_num(figures, 'p95_ratio'))} (tolerated {ctx.max_ratio:g}x) · "
        f"p50 {_x(_num(figures, 'p50_ratio'))} · errors "
        + ("n/a" if math.isnan(delta) else f"{delta * 100:+.1f} pts")
        + f" (tolerated +{ctx.max_error_increase * 100:g} pts)"
    )
    return cand, base, comparison


def traffic_line(ctx: Context) -> str:
    share = ctx.candidate_share
    if share is None:
        return "Traffic share unknown (no Route53 record configured for this check)."
    if share <= 0:
        return f"{ctx.candidate} gets 0% of traffic: no users affected yet."
    line = f"{ctx.candidate} gets {_pct(share)} of traffic"
    if ctx.expected_error_ratio is not None and not math.isnan(ctx.expected_error_ratio):
        line += f": users see {_pct(ctx.expected_error_ratio)} of requests failing"
    return line + "."


def vantages_line(figures: Mapping[str, Any]) -> str | None:
    """Which vantages saw it, when several replicas watch (`ha`): the combination writes it into
    the incident's figures, so that the message says it and a new leader's edit keeps it."""
    seen = figures.get("vantages")
    if not isinstance(seen, str) or not seen:
        return None
    source = figures.get("figures_from")
    line = seen[0].upper() + seen[1:]
    if isinstance(source, str) and source:
        line += f" (the figures are {source}'s)"
    return line + "."


def _blocks(
    title: str, incident: Incident, ctx: Context, extra: str | None
) -> list[dict[str, Any]]:
    cand, base, comparison = figures_lines(incident.figures, ctx)
    context = [f"incident `{incident.id}`", f"since {_clock(incident.started_at)}"]
    if ctx.dashboard_url:
        context.append(f"<{ctx.dashboard_url}|dashboard>")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{ctx.candidate}* (candidate)\n{cand}"},
                {"type": "mrkdwn", "text": f"*{ctx.baseline}* (baseline)\n{base}"},
            ],
        },
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"*Candidate / baseline:* {comparison}"},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Users:* {traffic_line(ctx)}"}},
    ]
    vantages = vantages_line(incident.figures)
    if vantages:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Vantages:* {vantages}"}}
        )
    if extra:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": extra}})
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]}
    )
    return blocks


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _text(title: str, incident: Incident, ctx: Context, extra: str | None) -> str:
    cand, base, comparison = figures_lines(incident.figures, ctx)
    lines = [
        title,
        f"{ctx.candidate} (candidate): {cand}",
        f"{ctx.baseline} (baseline): {base}",
        f"candidate / baseline: {comparison}",
        traffic_line(ctx),
    ]
    vantages = vantages_line(incident.figures)
    if vantages:
        lines.append(f"Vantages: {vantages}")
    if extra:
        lines.append(extra)
    if ctx.dashboard_url:
        lines.append(f"dashboard: {ctx.dashboard_url}")
    return "\n".join(lines)


def firing_title(incident: Incident, ctx: Context) -> str:
    sev = severity(incident, ctx)
    return (
        f"[{sev.upper()}] {subject(incident.check)}: {ctx.candidate} {SIGNAL_TITLES[incident.signal]} "
        f"than {ctx.baseline} ({incident.signal})"
        if incident.signal != "down"
        else f"[{sev.upper()}] {subject(incident.check)}: {ctx.candidate} is down ({incident.signal})"
    )


Wording = tuple[str, tuple[Mapping[str, Any], ...] | None]  # text, and blocks if any


def notifications(event: Event, ctx: Context) -> list[Notification]:
    """What to send for one incident event: a post, an edit and a reply, or a reply.

    Never raises: the transition that caused the event is already decided, so a wording bug must
    cost the wording, not the message. The plain fallback keeps each notification's key.
    """
    incident = event.incident
    slots = _keys(event)
    try:
        words = _wording(event, ctx)
    except Exception:
        log.exception("cannot word the message for incident %s: sending it plain", incident.id)
        words = [(_plain(event, ctx, action), None) for _, action in slots]
    return [
        Notification(key=key, incident=incident.id, action=action, text=text, blocks=blocks)
        for (key, action), (text, blocks) in zip(slots, words, strict=True)
    ]


def _keys(event: Event) -> list[tuple[str, Action]]:
    """Each notification's stable key (what makes enqueueing idempotent) and action."""
    incident = event.incident
    if isinstance(event, Fired):
        return [(f"{incident.id}:fire", "post")]
    if isinstance(event, Resolved):
        return [(f"{incident.id}:resolve:edit", "edit"), (f"{incident.id}:resolve:reply", "reply")]
    return [(f"{incident.id}:remind:{round(incident.reminded_at or 0)}", "reply")]


def _wording(event: Event, ctx: Context) -> list[Wording]:
    """The text (and blocks) of each notification `_keys` names, in the same order."""
    incident = event.incident
    if isinstance(event, Fired):
        title = firing_title(incident, ctx)
        return [(_text(title, incident, ctx, None), tuple(_blocks(title, incident, ctx, None)))]
    if isinstance(event, Resolved):
        lasted = duration_text(event.duration)
        title = (
            f"[RESOLVED] {subject(incident.check)}: {ctx.candidate} {incident.signal} regression"
        )
        extra = (
            f"*Resolved* after {lasted}. The figures above are the last ones seen while it fired."
        )
        reply = f"Resolved: {subject(incident.check)} {incident.signal} lasted {lasted}."
        return [
            (_text(title, incident, ctx, extra), tuple(_blocks(title, incident, ctx, extra))),
            (reply, None),
        ]
    assert isinstance(event, Reminder)
    since = duration_text((incident.reminded_at or incident.started_at) - incident.started_at)
    cand, base, comparison = figures_lines(incident.figures, ctx)
    text = (
        f"Still firing after {since}: {ctx.candidate} {cand} vs {ctx.baseline} {base} "
        f"({comparison}). {traffic_line(ctx)}"
    )
    return [(text, None)]


def _plain(event: Event, ctx: Context, action: Action) -> str:
    incident = event.incident
    what = {"post": "FIRING", "edit": "RESOLVED", "reply": "update"}[action]
    return (
        f"[{what}] {subject(incident.check)}: {ctx.candidate} {incident.signal} regression "
        f"(incident {incident.id}; figures unavailable, see the status page)"
    )


DRY_RUN = "DRY RUN"


def shift_notifications(
    kind: str, text: str, about: Sequence[str], now: float, *, dry_run: bool = False
) -> list[Notification]:
    """What Slack hears of the guarded shift: a post, or replies in the threads of `about`.

    A dry run's messages say so first, whatever the plan's text says: a reader of the channel
    must never take a change that was not written for one that was.
    """
    base = f"shift:{kind}:{round(now * 1000)}"
    if dry_run and DRY_RUN not in text:
        text = f"{DRY_RUN}: {text}"
    if about:
        # a rollback answers the incidents that caused it, in their threads: `about` holds the
        # firing incidents' ids, whose posts are ahead in the outbox
        return [
            Notification(
                key=f"{base}:{incident}",
                incident=incident,
                action="reply",
                text=text,
                created=now,
            )
            for incident in about
        ]
    return [
        Notification(key=base, incident=base, action="post", text=f"[SHIFT] {text}", created=now)
    ]
