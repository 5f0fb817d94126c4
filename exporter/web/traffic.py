"""Real traffic on the status page and in /api/v1/status: route groups side by side, sources, split."""

from __future__ import annotations

import math
import time
from html import escape
from typing import Any

from exporter.traffic.counts import ALL, Tally
from exporter.web.collector import TRAFFIC_QUANTILES, TrafficView

__all__ = ["traffic_data", "traffic_html"]


def _num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _figures(tally: Tally | None) -> dict[str, Any]:
    if tally is None:
        return {"requests": 0.0, "error_ratio": None, "latency_seconds": {}}
    latency = tally.latency
    return {
        "requests": tally.requests,
        "responses": dict(tally.responses),
        "router_errors": tally.router_errors,
        "error_ratio": _num(tally.error_ratio),
        "latency_seconds": {
            f"{q:g}": _num(latency.quantile(q) if latency is not None else math.nan)
            for q in TRAFFIC_QUANTILES
        },
    }


def traffic_data(view: TrafficView, baseline: str, candidate: str) -> dict[str, Any]:
    """The traffic part of /api/v1/status. Never holds a token, a URL's credentials or a path."""
    routes = sorted(
        {route for (_, route) in view.windows} | set(view.verdicts),
        key=lambda r: (r != ALL, r),
    )
    groups = []
    for route in routes:
        evaluation = view.verdicts.get(route)
        groups.append(
            {
                "route": route,
                "platforms": {
                    platform: {
                        "role": view.roles.get(platform),
                        **_figures(view.windows.get((platform, route))),
                    }
                    for platform in (baseline, candidate)
                },
                "verdicts": None
                if evaluation is None
                else {v.signal: v.as_dict() for v in evaluation.verdicts()},
            }
        )
    split = view.split
    return {
        "window_end": view.window_end,
        "route_groups": groups,
        "sources": [
            {
                "source": s.source,
                "platform": s.platform,
                "kind": s.kind,
                "up": s.up,
                "last_success": s.last_success,
                "covered_until": s.covered_until,
                "error": s.error,
            }
            for s in sorted(view.sources, key=lambda s: (s.platform, s.source))
        ],
        "split": None
        if split is None
        else {
            "record": view.record,
            "measured": split.measured,
            "weights": split.weights,
            "changed_at": split.changed_at,
            "lag_seconds": split.lag,
            "converged": split.converged,
            "diverged": split.diverged,
        },
    }


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f} ms"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.2f}%"


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    seconds = max(0.0, time.time() - ts)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def traffic_html(view: TrafficView, baseline: str, candidate: str) -> str:
    """Real traffic: each route group's figures on both platforms, the sources, the split."""
    data = traffic_data(view, baseline, candidate)
    rows = []
    for group in data["route_groups"]:
        b, c = group["platforms"][baseline], group["platforms"][candidate]
        verdicts = group["verdicts"] or {}
        states = " · ".join(
            f"{escape(signal)} <span class='{_css(v['state'])}'>{escape(v['state'])}</span>"
            for signal, v in verdicts.items()
        )
        rows.append(
            f"<tr><td class='l'>{escape(group['route'])}</td>"
            f"<td>{b['requests']:.0f}</td><td>{c['requests']:.0f}</td>"
            f"<td>{_pct(b['error_ratio'])}</td><td>{_pct(c['error_ratio'])}</td>"
            f"<td>{_ms(b['latency_seconds'].get('0.95'))}</td>"
            f"<td>{_ms(c['latency_seconds'].get('0.95'))}</td>"
            f"<td class='l'>{states or '<span class=muted>not judged yet</span>'}</td></tr>"
        )
    sources = "".join(
        f"<tr><td class='l'>{escape(s['source'])}</td><td class='l'>{escape(s['platform'])}</td>"
        f"<td class='l'>{escape(s['kind'])}</td>"
        f"<td class='l {'ok' if s['up'] else 'bad'}'>{'up' if s['up'] else 'not reporting'}</td>"
        f"<td class='l'>{escape(_ago(s['last_success']))}</td>"
        f"<td class='l'>{escape(s['error'] or '')}</td></tr>"
        for s in data["sources"]
    )
    split_html = ""
    split = data["split"]
    if split is not None:
        measured, weights = split["measured"] or {}, split["weights"] or {}
        cells = " · ".join(
            f"{escape(p)} {_pct(measured.get(p))} of requests (weights {_pct(weights.get(p))})"
            for p in (baseline, candidate)
        )
        lag = split["lag_seconds"]
        state = (
            "<span class='bad'>diverges from the weights</span>"
            if split["diverged"]
            else "<span class='ok'>follows the weights</span>"
            if split["converged"]
            else "<span class='muted'>settling</span>"
        )
        split_html = (
            f"<p>Split users get on {escape(split['record'] or '')}: {cells}; {state}"
            + ("" if lag is None else f" (lag after the last weight change: {lag:.0f}s)")
            + "</p>"
        )
    return (
        "<h2>Real traffic</h2>" + split_html + "<table><tr><th class='l'>route group</th>"
        f"<th>{escape(baseline)} requests</th><th>{escape(candidate)} requests</th>"
        f"<th>{escape(baseline)} 5xx</th><th>{escape(candidate)} 5xx</th>"
        f"<th>{escape(baseline)} p95</th><th>{escape(candidate)} p95</th>"
        "<th class='l'>judge</th></tr>"
        + ("".join(rows) or "<tr><td colspan=8 class='muted'>no requests yet</td></tr>")
        + "</table><h3>Traffic sources</h3><table><tr><th class='l'>source</th>"
        "<th class='l'>platform</th><th class='l'>kind</th><th class='l'>state</th>"
        "<th class='l'>last report</th><th class='l'>problem</th></tr>" + sources + "</table>"
    )


def _css(state: str) -> str:
    return {"regressed": "bad", "ok": "ok"}.get(state, "muted")
