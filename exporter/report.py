"""`cutover report`: the readiness verdicts and the step ledger as text, Markdown or JSON.

Pure rendering of `GET /api/v1/readiness`'s answer (the same whether it came from a running
daemon or was rebuilt from a `state_dir`), so that what a change ticket quotes is what the page
and the API said.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from exporter.judging.readiness import span

__all__ = ["FORMATS", "render"]

Format = Literal["text", "markdown", "json"]
FORMATS: tuple[Format, ...] = ("text", "markdown", "json")

_BY = {
    "shift": "by the guarded shift",
    "person": "by a person",
    "unknown": "before cutover started (or while it was down)",
}


def render(data: Mapping[str, Any], fmt: Format, now: float) -> str:
    """The whole report; `data` is /api/v1/readiness's answer."""
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
    md = fmt == "markdown"
    records = list(data.get("records") or [])
    steps = data.get("steps") or {}
    out: list[str] = []
    title = f"cutover readiness report, {_when(now)}"
    out += [f"# {title}", ""] if md else [title, "=" * len(title), ""]
    if not records:
        out.append("No migrated record is judged: no check or traffic maps to a Route53 record.")
    for entry in records:
        out += _record(entry, md)
        past = steps.get(entry.get("record"), []) if isinstance(steps, Mapping) else []
        out += _past_steps(past, md)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# -- one record ---------------------------------------------------------------------------------


def _record(entry: Mapping[str, Any], md: bool) -> list[str]:
    record = str(entry.get("record"))
    verdict = str(entry.get("verdict"))
    step = entry.get("step") or {}
    out = [f"## {record}: {verdict}", ""] if md else [f"{record}: {verdict}"]
    if entry.get("dry_run"):
        out.append(
            _line(
                md,
                "DRY RUN: this step is what the guarded shift would have written; "
                "Route53 holds other weights",
            )
        )
    for reason in entry.get("reasons") or []:
        out.append(_line(md, str(reason)))
    started = step.get("started_at")
    held = entry.get("held_for_seconds")
    hold = entry.get("hold_seconds")
    shares = step.get("shares") or {}
    what = ", ".join(f"{p} {_share(s)}" for p, s in shares.items()) or "weights not read yet"
    since = f"since {_when(started)}" if isinstance(started, (int, float)) else "not started"
    if isinstance(held, (int, float)):
        since += f" ({_duration(held)}"
        since += f" of a {_duration(hold)} hold)" if isinstance(hold, (int, float)) else ")"
    if _num(entry.get("as_of")) is not None:
        out.append(
            _line(md, f"Judged as of {_when(entry['as_of'])}, when its daemon last added to it.")
        )
    by = _BY.get(str(step.get("changed_by")), str(step.get("changed_by")))
    nxt = entry.get("next_share")
    out += [
        "",
        _line(md, f"Step: {what}, {since}, {by}."),
        _line(md, f"Next step: candidate at {_share(nxt)}." if nxt is not None else "Last step."),
        "",
    ]
    subjects = entry.get("subjects") or []
    if subjects:
        out += _evidence(subjects, md)
        out.append("")
    out += _incidents(entry.get("incidents") or [], md)
    return out


def _evidence(subjects: Sequence[Mapping[str, Any]], md: bool) -> list[str]:
    head = [
        "evidence over the step",
        "baseline",
        "candidate",
        "estimate",
        "upper bound",
        "tolerated",
        "",
    ]
    rows: list[list[str]] = []
    for s in subjects:
        name, kind = str(s.get("subject")), str(s.get("kind"))
        if s.get("counted") is False:
            kind += ", shown, not judged"
        counts = _pair(s.get("counts"))
        failures = _pair(s.get("failures"))
        rows.append([f"{name}: {kind}", _count(counts[0]), _count(counts[1]), "", "", "", ""])
        ratios = _pair(s.get("error_ratios"))
        errors = s.get("errors")
        rows.append(
            [
                "  errors",
                f"{_pct(ratios[0])} ({_count(failures[0])})",
                f"{_pct(ratios[1])} ({_count(failures[1])})",
                *_bound(errors, _pts),
            ]
        )
        latency = s.get("latency") or {}
        bounds = s.get("latency_ratio") or {}
        for q in ("p50", "p95", "p99"):
            if latency.get(q) is None:
                continue
            pair = _pair(latency.get(q))
            rows.append([f"  {q}", _ms(pair[0]), _ms(pair[1]), *_bound(bounds.get(q), _x)])
    return _table(head, rows, md)


def _pair(value: Any) -> tuple[Any, Any]:
    """(baseline, candidate) from the API's {"baseline": .., "candidate": ..} (or a list)."""
    if isinstance(value, Mapping):
        return value.get("baseline"), value.get("candidate")
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return value[0], value[1]
    return None, None


def _bound(bound: Mapping[str, Any] | None, fmt: Callable[[Any], str]) -> list[str]:
    if not bound:
        return ["–", "–", "–", ""]
    ok = bound.get("ok")
    lower, tolerated = _num(bound.get("lower")), _num(bound.get("tolerated"))
    if ok is True:
        mark = "ok"
    elif ok is None:
        mark = "not evidence yet"
    elif lower is not None and tolerated is not None and lower > tolerated:
        mark = "WORSE"  # beyond the tolerance with confidence
    else:
        mark = "inconclusive"
    return [fmt(bound.get("estimate")), fmt(bound.get("upper")), fmt(bound.get("tolerated")), mark]


def _incidents(incidents: Sequence[Mapping[str, Any]], md: bool) -> list[str]:
    if not incidents:
        return [_line(md, "Incidents during the step: none.")]
    out = [_line(md, "Incidents during the step:")]
    for i in incidents:
        fired, started, resolved = i.get("fired_at"), i.get("started_at"), i.get("resolved_at")
        text = f"{i.get('signal')} regression on {i.get('check')}"
        if _num(fired) is not None:
            text += f", fired {_when(fired)}"
        else:
            text += f", pending since {_when(started)}"
        end, begin = _num(resolved), _num(fired) or _num(started)
        if end is not None and begin is not None:
            text += f", resolved after {_duration(end - begin)}"
        elif i.get("phase"):
            text += f", {i.get('phase')} still"
        out.append(("  - " if md else "    - ") + text)
    return out


def _past_steps(past: Sequence[Mapping[str, Any]], md: bool) -> list[str]:
    if not past:
        return []
    out = ["", "### Previous steps", ""] if md else ["", "Previous steps:"]
    head = ["from", "to", "weights", "by", "verdict at the end", "incidents"]
    rows = []
    for s in reversed(list(past)):
        step = s.get("step") or s
        shares = step.get("shares") or {}
        rows.append(
            [
                _when(step.get("started_at")),
                _when(s.get("ended_at")),
                ", ".join(f"{p} {_share(v)}" for p, v in shares.items()) or "?",
                str(step.get("changed_by", "?")),
                str(s.get("verdict", "?")) + (" (dry run)" if s.get("dry_run") else ""),
                str(len(s.get("incidents") or [])),
            ]
        )
    return out + _table(head, rows, md)


# -- layout ---------------------------------------------------------------------------------------


def _line(md: bool, text: str) -> str:
    return f"- {text}" if md else f"  {text}"


def _table(head: list[str], rows: list[list[str]], md: bool) -> list[str]:
    if md:
        cells = [[c.replace("|", "\\|") for c in row] for row in [head, *rows]]
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
        return lines
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [head, *rows]
    ]


# -- figures --------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def _when(ts: Any) -> str:
    value = _num(ts)
    if value is None:
        return "–"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: Any) -> str:
    value = _num(seconds)
    return "?" if value is None else span(value)


def _share(share: Any) -> str:
    value = _num(share)
    return "?" if value is None else f"{value * 100:g}%"


def _count(n: Any) -> str:
    value = _num(n)
    return "–" if value is None else f"{value:,.0f}".replace(",", " ")


def _pct(ratio: Any) -> str:
    value = _num(ratio)
    return "–" if value is None else f"{value * 100:.2f}%"


def _pts(diff: Any) -> str:
    value = _num(diff)
    return "–" if value is None else f"{value * 100:+.2g} pts"


def _ms(seconds: Any) -> str:
    value = _num(seconds)
    return "–" if value is None else f"{value * 1000:.1f} ms"


def _x(ratio: Any) -> str:
    value = _num(ratio)
    return "–" if value is None else f"{value:.2f}x"
