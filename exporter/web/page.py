"""The status page: is it safe to take the next step? A banner per record, then the evidence.

Top to bottom: a banner per migrated record (the readiness verdict, its reasons, the step and the
next one), outages, an overview table with a row per check, the alerts now and the incident
history, the guarded shift, Route53, real traffic, and each check's details with its charts.
Pure: a View, the wall-clock time and a few facts of the daemon in, HTML out. No JavaScript.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

from exporter import __version__
from exporter.alerting.alerts import Incident, Phase
from exporter.alerting.messages import TRAFFIC_PREFIX
from exporter.judging.judge import State
from exporter.judging.readiness import Readiness, Verdict, span
from exporter.probing.history import KEEP_MINUTES
from exporter.probing.state import CheckState, Series, both_failing, ratio
from exporter.readiness.ledger import StepMark
from exporter.route53.read import RecordSpec, normalize_name
from exporter.web.charts import Line, Mark, Span, line_chart
from exporter.web.collector import View, expected_error_ratio
from exporter.web.traffic import traffic_html

__all__ = ["PageInfo", "plan_text", "render_page", "shares_text"]

# the charts show at least this much, and at most what the history keeps
MIN_CHART_SECONDS = 1800.0
BASELINE_COLOR = "#546e7a"
CANDIDATE_COLOR = "#ef6c00"
DEFAULT_RESOLVE_AFTER = 120.0

CHANGED_BY = {
    "shift": "by the guarded shift",
    "person": "by a person",
    "unknown": "before cutover started",
}


@dataclass(frozen=True, slots=True)
class PageInfo:
    """What the page shows beside the View: the daemon's own state, and the wall-clock time."""

    now: float  # unix seconds
    ready: bool = True
    last_reload_ok: bool = True
    guarded_by: Sequence[str] = ()  # the checks guarding the shifted record
    version: str = __version__


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222;max-width:1400px}
h1{font-size:1.35em;margin:0 0 .2em} h2{font-size:1.15em;margin:1.4em 0 .4em}
.sub{color:#666;margin-bottom:1em}
table{border-collapse:collapse;margin:.4em 0 1.2em} th,td{padding:.25em .6em;border:1px solid #ddd;
text-align:right;vertical-align:top} th{background:#f4f4f4} td.l,th.l{text-align:left}
.ok{color:#1a7f37;font-weight:600} .bad{color:#c62828;font-weight:600} .muted{color:#888}
.amber{color:#b26a00;font-weight:600} .warn{background:#fff4e5} code{font-size:.95em}
.banner{border-radius:6px;padding:.7em 1em;margin:.6em 0;border:2px solid}
.banner .verdict{font-size:1.6em;font-weight:700;margin-right:.5em}
.banner ul{margin:.3em 0 .3em 1.2em;padding:0} .banner p{margin:.25em 0}
.b-green{background:#e8f5e9;border-color:#2e7d32} .b-green .verdict{color:#1b5e20}
.b-red{background:#ffebee;border-color:#c62828} .b-red .verdict{color:#b71c1c}
.b-amber{background:#fff8e1;border-color:#f9a825} .b-amber .verdict{color:#8d6e00}
.b-grey{background:#f5f5f5;border-color:#9e9e9e} .b-grey .verdict{color:#616161}
.dry{font-weight:700;color:#6a1b9a}
details{border:1px solid #e0e0e0;border-radius:4px;margin:.4em 0;padding:.2em .6em}
summary{cursor:pointer;font-weight:600} .charts svg{margin:.3em .6em .3em 0}
table.overview td,table.overview th{padding:.15em .5em}
"""


# -- figures -----------------------------------------------------------------------------------


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def _ms(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value * 1000:.1f} ms"


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or math.isnan(value) else f"{value * 100:.{digits}f}%"


def _pts(delta: float | None) -> str:
    """A difference of two ratios, in percentage points: never a percentage."""
    return "–" if delta is None or math.isnan(delta) else f"{delta * 100:+.1f} pts"


def _x(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}x"


def _share(value: float) -> str:
    return f"{value * 100:.4g}%"


def plan_text(steps: Iterable[float], current: int | None = None) -> str:
    """A plan as `10% → 25% → 50% → 100%`, the current step in bold."""
    return " → ".join(
        f"<strong>{s:g}%</strong>" if i == current else f"{s:g}%" for i, s in enumerate(steps)
    )


def shares_text(shares: Mapping[str, float], candidate: str) -> str:
    """`aws 10% · heroku 90%`: the candidate first."""
    order = sorted(shares, key=lambda p: (p != candidate, p))
    return " · ".join(f"{escape(p)} {_share(shares[p])}" for p in order)


def _abs(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _when(ts: float | None, now: float) -> str:
    """Absolute UTC time beside the relative one."""
    if ts is None:
        return "never"
    ago = now - ts
    rel = f"in {span(-ago)}" if ago < 0 else f"{span(ago)} ago"
    return f"<time datetime='{_abs(ts)}'>{_abs(ts)}</time> ({rel})"


# -- the pieces of state a page reads ------------------------------------------------------------


def _record_key(name: str) -> str:
    return normalize_name(name)


def _checks_of_record(view: View, key: str) -> set[str]:
    cfg = view.config
    names = {c.name for c in cfg.checks if (r := cfg.record_for(c)) is not None and r.key == key}
    split = cfg.traffic_record()
    if split is not None and split.key == key and view.traffic is not None:
        names |= {f"{TRAFFIC_PREFIX}{route}" for route in view.traffic.verdicts}
    return names


def _spec_of(view: View, record: str) -> RecordSpec | None:
    return view.records.get(_record_key(record))


def _route53_shares(view: View, record: str) -> dict[str, float] | None:
    spec = _spec_of(view, record)
    if spec is None or view.route53 is None:
        return None
    weights = view.route53.weights.get(spec)
    return weights.platform_shares() if weights is not None else None


def _resolve_after(view: View) -> float:
    alerting = view.config.alerting
    return alerting.resolve_after if alerting is not None else DEFAULT_RESOLVE_AFTER


def _clears_in(view: View, incident: Incident, now: float) -> float | None:
    """Seconds until a firing incident that has been clean since `clear_since` resolves."""
    if incident.phase is not Phase.FIRING or incident.clear_since is None:
        return None
    return max(0.0, _resolve_after(view) - (now - incident.clear_since))


def _outages(view: View) -> list[str]:
    cfg = view.config
    out = []
    for state in view.checks:
        b, c = state.series.get(cfg.baseline), state.series.get(cfg.candidate)
        if b is not None and c is not None and both_failing(b, c, view.now):
            out.append(state.name)
    return out


# -- banner ------------------------------------------------------------------------------------


def _judged(r: Readiness) -> bool:
    """Some evidence exists on both sides: a verdict on nothing is no verdict."""
    return min(r.probes) > 0 or min(r.requests) > 0


def _told(reasons: Sequence[str], check: str) -> bool:
    """Whether the verdict's reasons already speak of an incident on `check`."""
    return any(
        "regression" in r and (r.endswith(f" on {check}") or f" on {check} " in r) for r in reasons
    )


def _banner(
    view: View,
    info: PageInfo,
    record: str | None,
    readiness: Readiness | None,
    outages: Sequence[str],
) -> str:
    cfg = view.config
    now = info.now
    checks = _checks_of_record(view, _record_key(record)) if record else None
    incidents = [i for i in view.alerts if checks is None or i.check in checks]
    firing = [i for i in incidents if i.phase is Phase.FIRING and _clears_in(view, i, now) is None]
    resolving = [i for i in incidents if _clears_in(view, i, now) is not None]
    pending = [i for i in incidents if i.phase is Phase.PENDING]
    down = [c for c in outages if checks is None or c in checks]

    judged = readiness is not None and _judged(readiness)
    # the verdict names firing and pending incidents and outages over the step itself: the
    # page adds its own lines only where the verdict has none, and what it alone knows (how
    # soon a resolving incident clears)
    said = readiness.reasons if readiness is not None else ()
    reasons: list[str] = []
    if down and not any(r.startswith("both platforms failing") for r in said):
        reasons.append(
            "both platforms failing: not a candidate regression ("
            + ", ".join(escape(c) for c in down)
            + ")"
        )
    # (the verdict is taken every few seconds: an incident it has not seen yet is still told)
    reasons += [f"alert firing: {escape(_about(i))}" for i in firing if not _told(said, i.check)]
    reasons += [f"pending: {escape(_about(i))}" for i in pending if not _told(said, i.check)]
    reasons += [
        f"{escape(_about(i))}: clears in {_clears_in(view, i, now):.0f} s" for i in resolving
    ]
    reasons += [escape(r) for r in said]
    if firing or down:
        # an incident that fired during the step is a NO-GO, whatever the last verdict said
        css, word = "b-red", "NO-GO" if judged and readiness else "ALERT"
        if down and not firing:
            word = "OUTAGE"
    elif not judged or readiness is None:
        css, word = "b-grey", "not judged yet"
    elif readiness.verdict is Verdict.NO_GO:
        css, word = "b-red", readiness.verdict.value
    elif readiness.verdict is Verdict.WAIT or pending or resolving:
        css, word = "b-amber", readiness.verdict.value
    else:
        css, word = "b-green", readiness.verdict.value

    lines = []
    if readiness is not None:
        step = readiness.step
        shares = shares_text(step.shares, cfg.candidate)
        by = CHANGED_BY.get(step.changed_by, "by an unknown hand")
        if step.dry_run:
            real = _route53_shares(view, readiness.record)
            held = shares_text(real, cfg.candidate) if real else "not read yet"
            lines.append(
                f"<p><span class='dry'>DRY RUN: would set {shares}</span>; Route53 holds "
                f"{held}. Step since {_when(step.started_at, now)}, {by}.</p>"
            )
        else:
            lines.append(f"<p>Step: {shares} since {_when(step.started_at, now)}, {by}.</p>")
        lines.append(f"<p>Held {span(readiness.held_for)} of {span(readiness.hold)}.</p>")
        if step.next_share is not None:
            nxt = f"{escape(cfg.candidate)} {_share(step.next_share)}"
            if step.dry_run:
                nxt = f"<span class='dry'>DRY RUN: would set {nxt}</span>"
            lines.append(f"<p>Next step: {nxt}.</p>")
        else:
            lines.append("<p class='muted'>No further step planned.</p>")
    elif record is not None:
        real = _route53_shares(view, record)
        if real:
            lines.append(f"<p>Route53 now: {shares_text(real, cfg.candidate)}.</p>")
    if not judged and not reasons:
        reasons.append("no verdict yet: the step's evidence is still being gathered")
    title = escape(record) if record else "all checks"
    items = "".join(f"<li>{r}</li>" for r in reasons)
    return (
        f"<section class='banner {css}'><span class='verdict'>{escape(word)}</span>"
        f"<strong>{title}</strong><ul>{items}</ul>{''.join(lines)}</section>"
    )


def _about(incident: Incident) -> str:
    return f"{incident.signal} on {incident.check}"


def _banners(view: View, info: PageInfo, outages: Sequence[str]) -> str:
    by_record = {_record_key(r.record): r for r in view.readiness}
    names: dict[str, str] = {_record_key(r.record): r.record for r in view.readiness}
    for key, spec in view.records.items():
        names.setdefault(key, spec.fqdn.rstrip("."))
    if not names:
        return _banner(view, info, None, None, outages)
    return "".join(
        _banner(view, info, name, by_record.get(key), outages) for key, name in names.items()
    )


# -- overview ------------------------------------------------------------------------------------


def _check_verdict(view: View, state: CheckState, outage: bool, now: float) -> tuple[str, str]:
    """(css, words) of one check's state: outage, firing, clears in, regressed, ok, not judged."""
    if outage:
        return "bad", "both platforms failing: outage"
    mine = [i for i in view.alerts if i.check == state.name]
    firing = [i for i in mine if i.phase is Phase.FIRING and _clears_in(view, i, now) is None]
    if firing:
        return "bad", "firing: " + ", ".join(i.signal for i in firing)
    resolving = [i for i in mine if _clears_in(view, i, now) is not None]
    if resolving:
        left = max(_clears_in(view, i, now) or 0.0 for i in resolving)
        return "amber", f"{', '.join(i.signal for i in resolving)} clears in {left:.0f} s"
    pending = [i for i in mine if i.phase is Phase.PENDING]
    evaluation = view.evaluations.get(state.name)
    if evaluation is None:
        return "muted", "not judged yet"
    verdicts = list(evaluation.verdicts())
    regressed = [v.signal for v in verdicts if v.state is State.REGRESSED]
    if regressed:
        return "bad", "regressed: " + ", ".join(regressed)
    if pending:
        return "amber", "pending: " + ", ".join(i.signal for i in pending)
    if all(v.state is State.INCONCLUSIVE for v in verdicts):
        return "muted", "not judged yet"
    return "ok", "ok"


def _anchor(name: str) -> str:
    return "check-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _overview(view: View, states: Sequence[CheckState], outages: set[str], now: float) -> str:
    cfg = view.config
    b, c = escape(cfg.baseline), escape(cfg.candidate)
    rows = []
    for state in states:
        sb, sc = state.series.get(cfg.baseline), state.series.get(cfg.candidate)
        if sb is None or sc is None:
            continue
        stb, stc = sb.stats(view.now), sc.stats(view.now)
        p95r = ratio(stc.quantiles[0.95], stb.quantiles[0.95])
        delta = stc.error_ratio - stb.error_ratio
        css, words = _check_verdict(view, state, state.name in outages, now)
        warn = css == "bad"
        rows.append(
            f"<tr{' class=warn' if warn else ''}>"
            f"<td class='l'><a href='#{_anchor(state.name)}'>{escape(state.name)}</a></td>"
            f"<td>{_ms(stb.quantiles[0.95])}</td><td>{_ms(stc.quantiles[0.95])}</td>"
            f"<td>{_x(p95r)}</td><td>{_pct(stb.error_ratio)}</td><td>{_pct(stc.error_ratio)}</td>"
            f"<td>{_pts(delta)}</td><td class='l {css}'>{escape(words)}</td></tr>"
        )
    return (
        "<h2>Checks</h2><table class='overview'><tr><th class='l'>check</th>"
        f"<th>{b} p95</th><th>{c} p95</th><th>p95 ratio</th><th>{b} errors</th>"
        f"<th>{c} errors</th><th>error increase</th><th class='l'>verdict</th></tr>"
        + ("".join(rows) or "<tr><td colspan=8 class='muted'>no checks</td></tr>")
        + "</table>"
    )


# -- alerts and incident history -------------------------------------------------------------------


def _figures(incident: Incident, view: View) -> str:
    """The incident's own signal's figures, and only those."""
    f = incident.figures
    cfg = view.config
    if incident.signal == "latency":
        p95 = _finite(f.get("p95_ratio"))
        b, c = _finite(f.get("baseline_p95")), _finite(f.get("candidate_p95"))
        text = f"p95 {_x(p95)} (tolerated {cfg.judge.latency.max_ratio:g}x)"
        if b is not None and c is not None:
            text += f": {_ms(c)} vs {_ms(b)}"
        return text
    if incident.signal == "errors":
        delta = _finite(f.get("error_ratio_delta"))
        b, c = _finite(f.get("baseline_error_ratio")), _finite(f.get("candidate_error_ratio"))
        text = f"errors {_pts(delta)} (tolerated +{cfg.judge.errors.max_increase * 100:g} pts)"
        if b is not None and c is not None:
            text += f": {_pct(c)} vs {_pct(b)}"
        return text
    if incident.signal == "down":
        n = _finite(f.get("estimate"))
        return f"{n:.0f} failed probes in a row" if n is not None else "candidate failing"
    return ""


def _figures_and_vantages(incident: Incident, view: View) -> str:
    """The figures, and which vantages saw it when several watch (`ha`)."""
    text = _figures(incident, view)
    seen = incident.figures.get("vantages")
    return f"{text} · {seen}" if isinstance(seen, str) and seen else text


def _slack(incident: Incident, view: View) -> str:
    link = view.links.get(incident.id)
    return f"<a href='{escape(link)}'>Slack</a>" if link else "<span class='muted'>–</span>"


def _alerts(view: View, now: float) -> str:
    if not view.alerts:
        return "<h2>Alerts</h2><p class='muted'>Nothing firing or pending.</p>"
    rows = []
    for i in view.alerts:
        left = _clears_in(view, i, now)
        if left is not None:
            state, css = f"clears in {left:.0f} s", "amber"
        elif i.phase is Phase.FIRING:
            state, css = "firing", "bad"
        else:
            state, css = "pending", "amber"
        rows.append(
            f"<tr{' class=warn' if css == 'bad' else ''}><td class='l'>{escape(i.check)}</td>"
            f"<td class='l'>{escape(i.signal)}</td><td class='l {css}'>{state}</td>"
            f"<td class='l'>{_when(i.started_at, now)}</td>"
            f"<td class='l'>{escape(_figures_and_vantages(i, view))}</td>"
            f"<td>{_slack(i, view)}</td></tr>"
        )
    return (
        "<h2>Alerts</h2><table><tr><th class='l'>check</th><th class='l'>signal</th>"
        "<th class='l'>state</th><th class='l'>since</th><th class='l'>figures</th>"
        "<th>message</th></tr>" + "".join(rows) + "</table>"
    )


def _history(view: View, now: float) -> str:
    if not view.resolved:
        return "<h2>Incident history</h2><p class='muted'>No incident resolved yet.</p>"
    rows = []
    for i in reversed(view.resolved):
        rows.append(
            f"<tr><td class='l'>{escape(i.check)}</td><td class='l'>{escape(i.signal)}</td>"
            f"<td class='l'>{_when(i.started_at, now)}</td>"
            f"<td class='l'>{_when(i.resolved_at, now)}</td><td>{span(i.duration)}</td>"
            f"<td class='l'>{escape(_figures(i, view))}</td><td>{_slack(i, view)}</td></tr>"
        )
    return (
        "<h2>Incident history</h2><table><tr><th class='l'>check</th><th class='l'>signal</th>"
        "<th class='l'>started</th><th class='l'>resolved</th><th>lasted</th>"
        "<th class='l'>figures</th><th>message</th></tr>" + "".join(rows) + "</table>"
    )


# -- the guarded shift ---------------------------------------------------------------------------


def _weights_text(weights: Mapping[str, int | None], candidate: str) -> str:
    order = sorted(weights, key=lambda p: (p != candidate, p))
    return " · ".join(f"{escape(p)} {'–' if weights[p] is None else weights[p]}" for p in order)


def _shift(view: View, info: PageInfo) -> str:
    if view.shift is None:
        return ""
    s = view.shift.status
    cfg = view.config
    now = info.now
    rows: list[tuple[str, str]] = [
        ("state", escape(s.state.value) + (" <span class='dry'>(DRY RUN)</span>" if s.dry_run else "")),
        ("plan", f"{plan_text(s.steps, s.current_step)} <span class='muted'>({escape(s.mode)} mode)</span>"),
    ]  # fmt: skip
    share = "–" if s.share is None else f"{escape(cfg.candidate)} {s.share:g}%"
    if s.dry_run:
        spec = _spec_of(view, s.record)
        weights = view.route53.weights.get(spec) if spec and view.route53 else None
        real = (
            f"{_weights_text(weights.platform_weights(), cfg.candidate)} "
            f"({shares_text(weights.platform_shares(), cfg.candidate)})"
            if weights is not None
            else "not read yet"
        )
        would = (
            f" (weights {_weights_text(dict(s.target_weights), cfg.candidate)})"
            if s.target_weights
            else ""
        )
        rows.append(
            ("candidate share", f"<span class='dry'>DRY RUN: would set {share}{would}</span>")
        )
        rows.append(("Route53 holds", real))
    else:
        rows.append(("candidate share", share))
    if s.hold_left is not None:
        rows.append(("hold left", f"{span(s.hold_left)} of {span(s.hold)}"))
    if s.since is not None:
        rows.append(("step since", _when(s.since, now)))
    rows.append(("waiting for", escape(s.why or "nothing")))
    rows.append(("guarded by", escape(", ".join(info.guarded_by) or "no check")))
    history = []
    for t in reversed(s.history[-8:]):
        reason = t.reason
        if s.dry_run and "DRY RUN" not in reason:
            reason = f"DRY RUN: {reason}"
        history.append(f"<li>{_when(t.at, now)}: {escape(t.state.value)}: {escape(reason)}</li>")
    return (
        f"<h2>Guarded shift of {escape(s.record)}</h2><table>"
        + "".join(f"<tr><th class='l'>{k}</th><td class='l'>{v}</td></tr>" for k, v in rows)
        + "</table>"
        + (f"<ul class='muted'>{''.join(history)}</ul>" if history else "")
    )


# -- Route53 -----------------------------------------------------------------------------------


def _route53(view: View, now: float) -> str:
    snap = view.route53
    if snap is None:
        return ""
    parts = [
        "<h2>Traffic (Route53 weights)</h2>",
        f"<div class='sub'>last complete read {_when(snap.last_success, now)}</div>",
    ]
    for spec in view.records.values():
        weights = snap.weights.get(spec)
        failing = snap.failing.get(spec)
        rtype = weights.type if weights else spec.record_type
        title = f"{spec.fqdn} {rtype or ''} in {spec.zone_id}"
        rows = "".join(
            f"<tr><td class='l'>{escape(e.platform or 'unmapped')}</td>"
            f"<td class='l'>{escape(e.set_identifier)}</td><td>{e.weight}</td>"
            f"<td>{_pct(e.share, 1)}</td><td class='l'>{escape(e.target)}"
            f"{' (alias)' if e.alias else ''}</td></tr>"
            for e in (weights.entries if weights else ())
        )
        notes = []
        if failing is not None:
            notes.append(
                f"<p class='bad'>reading failed: {escape(failing.reason)} "
                f"({escape(failing.detail)}); showing the last known weights, read "
                f"{_when(weights.fetched_at if weights else None, now)}</p>"
            )
        if weights and weights.missing:
            notes.append(
                "<p class='bad'>configured but not in the zone: "
                + escape(", ".join(weights.missing))
                + "</p>"
            )
        if weights and weights.unmapped:
            notes.append(
                "<p class='bad'>in the zone but mapped to no platform: "
                + escape(", ".join(weights.unmapped))
                + "</p>"
            )
        parts.append(
            f"<h3>{escape(title)}</h3>"
            + "".join(notes)
            + "<table><tr><th class='l'>platform</th><th class='l'>SetIdentifier</th>"
            "<th>weight</th><th>share</th><th class='l'>target</th></tr>"
            + (rows or "<tr><td colspan=5 class='muted'>not read yet</td></tr>")
            + "</table>"
        )
    return "".join(parts)


# -- per check details -----------------------------------------------------------------------------


def _chart_span(series: Iterable[Series], now: float) -> tuple[float, float]:
    first = min(
        (p.at for s in series for p in s.history.points(now - KEEP_MINUTES * 60)[:1]),
        default=now,
    )
    start = max(now - KEEP_MINUTES * 60, min(first, now - MIN_CHART_SECONDS))
    return start, now


def _marks(view: View, check: str) -> list[Mark]:
    cfg = view.config
    cc = cfg.check(check)
    record = cfg.record_for(cc) if cc is not None else None
    return [
        _mark(m, cfg.candidate)
        for m in view.step_marks
        if record is None or _record_key(m.record) == record.key
    ]


def _mark(m: StepMark, candidate: str) -> Mark:
    share = m.shares.get(candidate)
    label = f"{candidate} {_share(share)}" if share is not None else "step"
    who = CHANGED_BY.get(m.changed_by, "")
    dry = "DRY RUN: would set " if m.dry_run else ""
    return Mark(
        at=m.at,
        label=("DRY RUN " if m.dry_run else "") + label,
        title=f"{dry}{m.record}: {', '.join(f'{p} {_share(v)}' for p, v in m.shares.items())} "
        f"at {_abs(m.at)}, {who}",
    )


def _spans(view: View, check: str) -> list[Span]:
    out = []
    for i in (*view.resolved, *view.alerts):
        if i.check != check:
            continue
        color = "#c62828" if i.fired_at is not None else "#f9a825"
        end = i.resolved_at
        lasted = f", {span(i.duration)}" if end is not None else ", still open"
        out.append(
            Span(
                start=i.started_at,
                end=end,
                title=f"{i.signal} incident from {_abs(i.started_at)}{lasted}",
                color=color,
            )
        )
    return out


def _charts(view: View, state: CheckState, now: float) -> str:
    cfg = view.config
    sides = [
        (s, BASELINE_COLOR if p == cfg.baseline else CANDIDATE_COLOR)
        for p in (cfg.baseline, cfg.candidate)
        if (s := state.series.get(p)) is not None
    ]
    start, end = _chart_span((s for s, _ in sides), now)
    marks, spans = _marks(view, state.name), _spans(view, state.name)
    latency: list[Line] = []
    errors: list[Line] = []
    for s, color in sides:
        points = s.history.points(start)
        latency.append(
            Line(f"{s.platform} p95", color, [(min(p.at + 30, now), p.p95) for p in points])
        )
        latency.append(
            Line(
                f"{s.platform} p50",
                color,
                [(min(p.at + 30, now), p.p50) for p in points],
                dashed=True,
            )
        )
        errors.append(
            Line(
                f"{s.platform} errors",
                color,
                [(min(p.at + 30, now), p.error_ratio) for p in points],
            )
        )
    name = state.name
    return (
        "<div class='charts'>"
        + line_chart(
            f"{name}: latency p50 and p95 per minute",
            latency,
            start=start,
            end=end,
            fmt=lambda v: f"{v * 1000:.3g} ms",
            marks=marks,
            spans=spans,
        )
        + line_chart(
            f"{name}: error ratio per minute",
            errors,
            start=start,
            end=end,
            fmt=lambda v: f"{v * 100:.3g}%",
            marks=marks,
            spans=spans,
            floor=0.05,  # a few failures must not fill the chart
        )
        + "</div>"
    )


def _path_of(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return "/" + rest.split("/", 1)[1] if "/" in rest else "/"


def _check_table(view: View, state: CheckState, outage: bool) -> str:
    cfg = view.config
    order = [cfg.baseline, cfg.candidate]
    series = [state.series[p] for p in order if p in state.series]
    stats = [s.stats(view.now) for s in series]
    head = "".join(
        f"<th>{escape(s.platform)} <span class='muted'>({escape(s.role)})</span></th>"
        for s in series
    )

    def last_cell(s: Series) -> str:
        last = s.last
        if last is None:
            return "<span class='muted'>not probed yet</span>"
        if last.success:
            return f"<span class='ok'>OK</span> {last.status} in {_ms(last.duration)}"
        return (
            f"<span class='bad'>FAIL</span> {escape(last.reason or 'error')}: {escape(last.detail)}"
        )

    def reasons(s: Series) -> str:
        counts = [(r, n) for r, n in s.failures.items() if n]
        if not counts:
            return "<span class='muted'>none</span>"
        return " · ".join(f"{escape(r)} {n}" for r, n in sorted(counts, key=lambda x: -x[1]))

    rows: list[tuple[str, list[str], bool]] = [
        ("last probe", [last_cell(s) for s in series], True),
        ("window p50", [_ms(st.quantiles[0.5]) for st in stats], False),
        ("window p95", [_ms(st.quantiles[0.95]) for st in stats], False),
        ("window p99", [_ms(st.quantiles[0.99]) for st in stats], False),
        ("error ratio", [_pct(st.error_ratio) for st in stats], False),
        ("samples", [str(st.samples) for st in stats], False),
        ("probes since start", [str(s.probes_total) for s in series], False),
        ("failures by reason", [reasons(s) for s in series], True),
    ]
    shares = view.shares_for(state.name)
    if shares is not None:
        rows.append(("traffic share", [_pct(shares.get(s.platform), 1) for s in series], False))
    body = "".join(
        f"<tr><th class='l'>{escape(label)}</th>"
        + "".join(f"<td class='l'>{c}</td>" if left else f"<td>{c}</td>" for c in cells)
        + "</tr>"
        for label, cells, left in rows
    )
    extra = ""
    if len(stats) == 2:
        b, c = stats
        p95 = ratio(c.quantiles[0.95], b.quantiles[0.95])
        p50 = ratio(c.quantiles[0.5], b.quantiles[0.5])
        delta = c.error_ratio - b.error_ratio
        warn = (not math.isnan(p95) and p95 > cfg.judge.latency.max_ratio) or (
            not math.isnan(delta) and delta > cfg.judge.errors.max_increase
        )
        extra = (
            f"<tr{' class=warn' if warn else ''}><th class='l'>candidate / baseline</th>"
            f"<td colspan=2 class='l'>p50 {_x(p50)} · p95 {_x(p95)} · errors {_pts(delta)}"
            "</td></tr>"
        )
        if shares is not None:
            users = expected_error_ratio(
                shares, {s.platform: st.error_ratio for s, st in zip(series, stats, strict=True)}
            )
            extra += (
                "<tr><th class='l'>users see (through DNS)</th>"
                f"<td colspan=2 class='l'>{_pct(users)} of requests failing</td></tr>"
            )
    evaluation = view.evaluations.get(state.name)
    if outage:
        extra += (
            "<tr class=warn><th class='l'>judge</th><td colspan=2 class='l bad'>both platforms "
            "failing: an outage, not a candidate regression</td></tr>"
        )
    elif evaluation is not None:
        verdicts = []
        for v in evaluation.verdicts():
            css = "bad" if v.regressed else ("muted" if v.state is State.INCONCLUSIVE else "ok")
            words = "not judged yet" if v.state is State.INCONCLUSIVE else v.state.value
            verdicts.append(f"{escape(v.signal)} <span class='{css}'>{escape(words)}</span>")
        extra += (
            f"<tr><th class='l'>judge</th><td colspan=2 class='l'>{' · '.join(verdicts)}</td></tr>"
        )
    return f"<table><tr><th class='l'></th>{head}</tr>{body}{extra}</table>"


def _details(view: View, state: CheckState, outages: set[str], now: float) -> str:
    css, words = _check_verdict(view, state, state.name in outages, now)
    spec = next(iter(state.series.values())).spec if state.series else None
    path = f" <code class='muted'>{escape(_path_of(spec.url))}</code>" if spec else ""
    is_open = " open" if css in ("bad", "amber") else ""
    return (
        f"<details id='{_anchor(state.name)}'{is_open}><summary>{escape(state.name)}{path} "
        f"<span class='{css}'>{escape(words)}</span></summary>"
        + _charts(view, state, now)
        + _check_table(view, state, state.name in outages)
        + "</details>"
    )


# -- real traffic's split chart ------------------------------------------------------------------


def _split_chart(view: View, now: float) -> str:
    traffic = view.traffic
    if traffic is None or not traffic.split_history:
        return ""
    cand = view.config.candidate
    points = traffic.split_history
    start = max(now - KEEP_MINUTES * 60, min(points[0].at, now - MIN_CHART_SECONDS))
    record = traffic.record or ""
    marks = [
        _mark(m, cand) for m in view.step_marks if _record_key(m.record) == _record_key(record)
    ]
    return line_chart(
        f"{record}: {cand}'s share of real requests against its weight",
        [
            Line(
                f"{cand} measured",
                CANDIDATE_COLOR,
                [(min(p.at + 30, now), p.measured) for p in points],
            ),
            Line(
                f"{cand} weight",
                "#1565c0",
                [(min(p.at + 30, now), p.weight) for p in points],
                dashed=True,
            ),
        ],
        start=start,
        end=now,
        fmt=lambda v: f"{v * 100:.0f}%",
        marks=marks,
        top=1.0,
    )


# -- the page ------------------------------------------------------------------------------------


def _leader(view: View) -> str:
    """Which replica leads an HA migration (nothing for a single replica): the one that posts
    to Slack and writes Route53; a replica without a leader is said in red."""
    lease = view.lease
    if lease is None:
        return ""
    if lease.leader:
        text = f"This replica ({lease.vantage}) leads the migration (lease epoch {lease.epoch})."
        return f"<p class='sub'>{escape(text)}</p>"
    if lease.leaderless:
        text = (
            f"No replica has held the lease for {lease.leaderless_seconds:.0f} s: nobody acts "
            "on the migration (Slack, Route53). Check the DynamoDB table and the replicas."
        )
        return f"<p class='bad'>{escape(text)}</p>"
    holder = lease.owner or "nobody yet"
    text = f"This replica ({lease.vantage}) follows; the leader is {holder} (epoch {lease.epoch})."
    return f"<p class='sub'>{escape(text)}</p>"


_HEALTH_CSS = {"healthy": "ok", "impaired": "amber", "silent": "bad"}


def _vantages(view: View) -> str:
    """Each vantage of an HA migration: healthy, impaired (both platforms fail some checks
    there) or silent (dropped out), its last report's age; and whether they let steps advance."""
    snap = view.vantages
    if snap is None:
        return ""
    whose = (
        "as this replica, the leader, combined them"
        if snap.leader
        else "as this replica combined them; the leader's combination decides"
    )
    rules = (
        f"a report every {snap.interval:.3g} s; a regression fires when {snap.confirm} healthy "
        f"vantages see it, or one on two rounds in a row; a step advances when {snap.quorum} "
        "agree there is none"
        if snap.lines
        else f"a report every {snap.interval:.3g} s"
    )
    rows = []
    for line in snap.lines:
        name = line.vantage + (" (this replica)" if line.vantage == snap.vantage else "")
        health = "silent: dropped out" if line.health == "silent" else line.health
        rows.append(
            f"<tr><td class='l'>{escape(name)}</td>"
            f"<td class='l {_HEALTH_CSS[line.health]}'>{escape(health)}</td>"
            f"<td>{line.age:.0f} s ago</td><td>{line.round}</td>"
            f"<td class='l'>{escape(', '.join(line.impaired_checks)) or '–'}</td></tr>"
        )
    table = (
        "<table class='vantages'><tr><th class='l'>vantage</th><th class='l'>health</th>"
        "<th>last report</th><th>round</th><th class='l'>impaired for</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else ""
    )
    if snap.may_advance:
        gate = "<p class='ok'>The vantages agree: nothing holds a step.</p>"
    else:
        gate = (
            "<p class='amber'>Steps wait for the vantages:</p><ul class='vantage-reasons'>"
            + "".join(f"<li>{escape(r)}</li>" for r in snap.reasons)
            + "</ul>"
        )
    failing = f"<p class='bad'>Reports fail: {escape(snap.failing)}</p>" if snap.failing else ""
    return (
        f"<h2>Vantages</h2><p class='sub'>{escape(whose)}; {escape(rules)}.</p>"
        + failing
        + table
        + gate
    )


def render_page(view: View, info: PageInfo) -> str:
    """The whole status page."""
    cfg = view.config
    now = info.now
    states = list(view.checks)
    outage_list = _outages(view)
    outages = set(outage_list)
    ready = "ready" if info.ready else "starting: not every check has been probed yet"
    reload_note = (
        ""
        if info.last_reload_ok
        else "<p class='bad'>The last reload failed: the previous configuration is in force "
        "(see the log).</p>"
    )
    dashboard = cfg.alerting.dashboard_url if cfg.alerting is not None else None
    links = [
        "<a href='/metrics'>/metrics</a>",
        "<a href='/api/v1/status'>/api/v1/status</a>",
    ]
    if dashboard is not None:
        links.insert(0, f"<a href='{escape(str(dashboard))}'>dashboard</a>")
    traffic = (
        ""
        if view.traffic is None
        else traffic_html(view.traffic, cfg.baseline, cfg.candidate) + _split_chart(view, now)
    )
    details = "".join(_details(view, s, outages, now) for s in states)
    body = (
        _leader(view)
        + _banners(view, info, outage_list)
        + _vantages(view)
        + _overview(view, states, outages, now)
        + _alerts(view, now)
        + _history(view, now)
        + _shift(view, info)
        + _route53(view, now)
        + traffic
        + "<h2>Check details</h2>"
        + details
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>cutover: {escape(cfg.baseline)} → {escape(cfg.candidate)}</title><style>{_CSS}</style></head>
<body><h1>cutover: {escape(cfg.baseline)} (baseline) → {escape(cfg.candidate)} (candidate)</h1>
<div class="sub">{_abs(now)} · version {escape(info.version)} · {escape(ready)} · judge window
{cfg.judge.window:g}s · tolerated: latency {cfg.judge.latency.max_ratio:g}x,
errors +{cfg.judge.errors.max_increase * 100:g} pts · {" · ".join(links)}</div>
{reload_note}{body}
</body></html>"""
