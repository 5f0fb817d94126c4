"""The status page and its charts rendered from synthetic Views: what a reader sees, in words."""

from __future__ import annotations

import math
import random
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser

import pytest

from exporter.alerting.alerts import Incident, Phase
from exporter.config import Config, parse_config, probe_spec
from exporter.judging.judge import JudgeSettings, judge
from exporter.judging.readiness import (
    Bound,
    Readiness,
    StepFacts,
    SubjectReadiness,
    Verdict,
)
from exporter.probing.history import (
    KEEP_MINUTES,
    MinuteHistory,
    SplitPoint,
    decode_latency,
    encode_latency,
)
from exporter.probing.probe import ProbeResult
from exporter.probing.state import CheckState, Series
from exporter.probing.window import Window
from exporter.readiness.ledger import StepMark
from exporter.route53.plan import Phase as ShiftPhase
from exporter.route53.plan import ShiftStatus, Transition
from exporter.route53.read import RecordSpec, RecordWeights, Route53Snapshot, WeightedEntry
from exporter.web.charts import Line, Mark, Span, line_chart
from exporter.web.collector import ShiftView, TrafficView, View
from exporter.web.page import PageInfo, render_page

from .conftest import config_yaml

NOW = 1_700_000_000.0  # wall clock of the synthetic views
MONO = 5_000.0  # their monotonic clock
NAME = "api.example.com"
ENV = {"PROBE_SECRET": "s3cret"}


def make_config(checks: int = 1, extra: str = "") -> Config:
    more = "".join(
        f"  - name: check-{i:02d}\n    path: /c{i}\n    interval: 10s\n    timeout: 2s\n"
        for i in range(1, checks)
    )
    text = (
        config_yaml("http://127.0.0.1:1", "http://127.0.0.1:2", extra_checks=more, window="5m")
        + f"""\
route53:
  records:
    - hosted_zone_id: Z123
      name: {NAME}
      type: CNAME
      set_identifiers: {{heroku: heroku, aws: aws}}
alerting:
  resolve_after: 120s
  dashboard_url: https://grafana.example.test/d/cutover
"""
        + extra
    )
    return parse_config(text, env=ENV)


def result(ok: bool, duration: float, reason: str = "status") -> ProbeResult:
    return ProbeResult(
        started=0.0, success=ok, duration=duration, status=200 if ok else 503,
        reason=None if ok else reason, detail="" if ok else "HTTP 503",
        resolve=0.0, connect=0.0, tls=0.0, processing=duration, transfer=0.0, tls_expiry=None,
    )  # fmt: skip


def make_state(cfg: Config, name: str) -> CheckState:
    check = cfg.check(name) or cfg.checks[0]
    series = {
        p: Series(
            check=name,
            platform=p,
            role=platform.role,
            spec=probe_spec(platform, check),
            window=Window(cfg.judge.window),
        )
        for p, platform in cfg.platforms.items()
    }
    return CheckState(name=name, series=series)


def fill(
    state: CheckState,
    *,
    minutes: int = 90,
    every: float = 10.0,
    candidate_fails: float = 0.0,
    baseline_fails: float = 0.0,
    slower: float = 1.1,
    seed: int = 1,
) -> None:
    """Probes every `every` s over the last `minutes`: history and window both fed."""
    rnd = random.Random(seed)
    n = int(minutes * 60 / every)
    for tick in range(n):
        wall = NOW - (n - tick) * every
        mono = MONO - (n - tick) * every
        for p, s in state.series.items():
            fails = candidate_fails if p == "aws" else baseline_fails
            ok = rnd.random() >= fails
            latency = rnd.uniform(0.04, 0.06) * (slower if p == "aws" else 1.0)
            r = result(ok, latency, reason="timeout" if tick % 2 else "status")
            s.record(r, mono, tick)
            s.history.add(wall, ok, latency)


def evaluation_of(state: CheckState) -> object:
    return judge(
        state.series["heroku"].window.samples(),
        state.series["aws"].window.samples(),
        MONO,
        JudgeSettings(window=300.0),
    )


def records(cfg: Config) -> dict[str, RecordSpec]:
    assert cfg.route53 is not None
    return {
        r.key: RecordSpec(
            hosted_zone_id=r.hosted_zone_id,
            name=r.name,
            type=r.type,
            set_identifiers=r.set_identifiers,
        )
        for r in cfg.route53.records
    }


def snapshot(spec: RecordSpec, weights: dict[str, int]) -> Route53Snapshot:
    total = sum(weights.values())
    entries = tuple(
        WeightedEntry(p, p, w, w / total, False, f"{p}.example.net") for p, w in weights.items()
    )
    rw = RecordWeights(spec, "CNAME", 60, entries, (), (), NOW - 5)
    return Route53Snapshot({spec: rw}, {}, NOW - 5, {})


def subject(name: str, counts: tuple[float, float] = (600, 600)) -> SubjectReadiness:
    return SubjectReadiness(
        subject=name,
        kind="probes",
        counts=counts,
        failures=(0, 1),
        error_ratios=(0.0, 1 / 600),
        latency={"p50": (0.05, 0.055), "p95": (0.06, 0.066)},
        errors=Bound(0.0017, 0.004, 0.02, True),
        latency_ratio={"p50": Bound(1.1, 1.15, 1.5, True), "p95": Bound(1.1, 1.2, 1.5, True)},
        missing=(),
    )


def readiness_of(
    verdict: Verdict,
    reasons: tuple[str, ...] = (),
    *,
    counts: tuple[float, float] = (600, 600),
    changed_by: str = "shift",
    dry_run: bool = False,
    next_share: float | None = 0.25,
) -> Readiness:
    step = StepFacts(
        record=NAME,
        started_at=NOW - 1920,
        shares={"heroku": 0.9, "aws": 0.1},
        changed_by=changed_by,  # type: ignore[arg-type]
        subjects=(),
        incidents=(),
        next_share=next_share,
        dry_run=dry_run,
    )
    return Readiness(
        record=NAME,
        verdict=verdict,
        reasons=reasons,
        step=step,
        held_for=1920.0,
        hold=1800.0,
        subjects=(subject("health", counts),),
        subjects_total=1,
        probes=counts,
    )


def incident(
    check: str = "health",
    signal: str = "latency",
    *,
    phase: Phase = Phase.FIRING,
    started: float = NOW - 600,
    clear_since: float | None = None,
    resolved_at: float | None = None,
    figures: dict[str, float | int | str | bool | None] | None = None,
) -> Incident:
    return Incident(
        id=f"{check}.{signal}.{round(started * 1000)}",
        check=check,
        signal=signal,
        started_at=started,
        phase=phase,
        fired_at=started + 60 if phase is not Phase.PENDING else None,
        resolved_at=resolved_at,
        clear_since=clear_since,
        last_seen_at=clear_since or started + 300,
        figures=figures or {"p95_ratio": 2.4, "baseline_p95": 0.05, "candidate_p95": 0.12},
    )


def page(view: View, **kw: object) -> str:
    return render_page(view, PageInfo(now=NOW, **kw))  # type: ignore[arg-type]


def text_of(html: str) -> str:
    """The page's visible words, tags dropped (what a reader sees)."""

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []
            self.skip = 0

        def handle_starttag(self, tag: str, attrs: object) -> None:
            self.skip += tag in ("style", "title")

        def handle_endtag(self, tag: str) -> None:
            self.skip -= tag in ("style", "title")

        def handle_data(self, data: str) -> None:
            if not self.skip:
                self.parts.append(data)

    parser = Text()
    parser.feed(html)
    words = re.sub(r"\s+", " ", " ".join(parser.parts))
    return re.sub(r" ([;.,)])", r"\1", words)


def svgs(html: str) -> list[ET.Element]:
    """Every inline <svg>, parsed as XML: a malformed one raises."""
    found = re.findall(r"<svg\b.*?</svg>", html, flags=re.S)
    return [ET.fromstring(s) for s in found]


def banner(html: str) -> str:
    match = re.search(r"<section class='banner (b-\w+)'>(.*?)</section>", html, flags=re.S)
    assert match, "no banner"
    return match.group(1) + " " + text_of(match.group(2))


# --- the banner ----------------------------------------------------------------------------------


def base_view(cfg: Config, **kw: object) -> View:
    state = make_state(cfg, "health")
    fill(state)
    values: dict[str, object] = {
        "config": cfg,
        "checks": [state],
        "now": MONO,
        "records": records(cfg),
        "evaluations": {"health": evaluation_of(state)},
    }
    values.update(kw)
    return View(**values)  # type: ignore[arg-type]


def test_go_is_green_with_the_step_its_time_and_the_next_step() -> None:
    cfg = make_config()
    html = page(base_view(cfg, readiness=(readiness_of(Verdict.GO, ("held 32 min, clean",)),)))
    text = banner(html)
    assert text.startswith("b-green GO api.example.com")
    assert "held 32 min, clean" in text
    assert "Step: aws 10% · heroku 90% since 2023-11-14 21:41:20 UTC (32 min ago)" in text
    assert "by the guarded shift" in text
    assert "Next step: aws 25%." in text


@pytest.mark.parametrize(
    ("changed_by", "words"),
    [("person", "by a person"), ("unknown", "before cutover started")],
)
def test_the_banner_says_who_took_the_step(changed_by: str, words: str) -> None:
    cfg = make_config()
    r = readiness_of(Verdict.WAIT, ("12 more minutes",), changed_by=changed_by)
    text = banner(page(base_view(cfg, readiness=(r,))))
    assert text.startswith("b-amber WAIT") and words in text and "12 more minutes" in text


def test_never_green_on_no_evidence() -> None:
    cfg = make_config()
    for view in (
        base_view(cfg),  # no readiness at all
        base_view(cfg, readiness=(readiness_of(Verdict.GO, counts=(0, 0)),)),
    ):
        html = page(view)
        assert banner(html).startswith("b-grey not judged yet api.example.com")
        assert "banner b-green" not in html


def test_a_firing_alert_turns_the_banner_red_whatever_the_verdict() -> None:
    cfg = make_config()
    view = base_view(cfg, readiness=(readiness_of(Verdict.GO),), alerts=(incident(),))
    text = banner(page(view))
    assert text.startswith("b-red") and "alert firing: latency on health" in text


def test_a_pending_incident_is_amber_and_no_go_is_red() -> None:
    cfg = make_config()
    pending = incident(phase=Phase.PENDING)
    view = base_view(cfg, readiness=(readiness_of(Verdict.GO),), alerts=(pending,))
    assert banner(page(view)).startswith("b-amber GO")
    view = base_view(cfg, readiness=(readiness_of(Verdict.NO_GO, ("fired: latency",)),))
    assert banner(page(view)).startswith("b-red NO-GO")


def test_both_platforms_failing_is_an_outage_not_a_green_page() -> None:
    cfg = make_config()
    state = make_state(cfg, "health")
    fill(state, minutes=10, candidate_fails=1.0, baseline_fails=1.0)
    view = View(
        config=cfg,
        checks=[state],
        now=MONO,
        records=records(cfg),
        evaluations={"health": evaluation_of(state)},
        readiness=(readiness_of(Verdict.GO),),
    )
    html = page(view)
    text = banner(html)
    assert text.startswith("b-red OUTAGE")
    assert "both platforms failing: not a candidate regression (health)" in text
    row = re.search(r"<table class='overview'>.*?</table>", html, flags=re.S)
    assert row and "both platforms failing: outage" in text_of(row.group(0))
    assert "down ok" not in text_of(html)


# --- no contradictions ----------------------------------------------------------------------------


def test_a_resolving_incident_says_when_it_clears_not_firing() -> None:
    cfg = make_config()
    resolving = incident(clear_since=NOW - 30)
    html = page(base_view(cfg, alerts=(resolving,)))
    alerts = re.search(r"<h2>Alerts</h2><table>.*?</table>", html, flags=re.S)
    assert alerts is not None
    row = text_of(alerts.group(0))
    assert "clears in 90 s" in row and "firing" not in row
    overview = re.search(r"<table class='overview'>.*?</table>", html, flags=re.S)
    assert overview and "latency clears in 90 s" in text_of(overview.group(0))
    assert "alert firing" not in banner(html)


def test_error_increases_in_points_and_each_alert_shows_its_own_signal() -> None:
    cfg = make_config()
    errors = incident(
        signal="errors",
        figures={
            "error_ratio_delta": 0.098,
            "baseline_error_ratio": 0.002,
            "candidate_error_ratio": 0.1,
            "p95_ratio": 1.9,  # the evaluation's figures carry it; the errors row must not
        },
    )
    latency = incident(check="health", signal="latency", started=NOW - 900)
    html = page(base_view(cfg, alerts=(latency, errors)))
    alerts = re.search(r"<h2>Alerts</h2><table>.*?</table>", html, flags=re.S)
    assert alerts is not None
    rows = re.findall(r"<tr.*?</tr>", alerts.group(0), flags=re.S)
    errors_row = text_of(next(r for r in rows if ">errors<" in r))
    latency_row = text_of(next(r for r in rows if ">latency<" in r))
    assert "errors +9.8 pts (tolerated +2 pts): 10.00% vs 0.20%" in errors_row
    assert "p95" not in errors_row and "1.9" not in errors_row
    assert "p95 2.40x (tolerated 1.5x): 120.0 ms vs 50.0 ms" in latency_row
    assert "pts" not in latency_row
    assert "9.8%" not in text_of(html)


def test_no_python_lists_and_no_incident_ids() -> None:
    cfg = make_config(extra="shift:\n  record: api.example.com\n  steps: [10, 25, 50, 100]\n")
    spec = records(cfg)[NAME]
    done = incident(phase=Phase.RESOLVED, resolved_at=NOW - 100, started=NOW - 2000)
    status = shift_status(dry_run=False)
    view = base_view(
        cfg,
        alerts=(incident(),),
        resolved=(done,),
        route53=snapshot(spec, {"heroku": 90, "aws": 10}),
        shift=ShiftView(status=status, changes={}, last_change=None, last_rollback=None),
    )
    html = page(view)
    words = text_of(html)
    assert "10% → 25% → 50% → 100%" in words
    assert not re.search(r"\[\s*[\d'\"]", words), "a Python list on the page"
    for i in (incident(), done):
        assert i.id not in html


# --- dry run ----------------------------------------------------------------------------------------


def shift_status(*, dry_run: bool) -> ShiftStatus:
    return ShiftStatus(
        state=ShiftPhase.HOLDING,
        record=NAME,
        mode="auto",
        dry_run=dry_run,
        steps=(10.0, 25.0, 50.0, 100.0),
        current_step=0,
        next_step=1,
        share=10.0,
        target_share=10.0,
        target_weights={"heroku": 90, "aws": 10},
        hold=1800.0,
        hold_left=600.0,
        since=NOW - 1200,
        waiting=("the hold: 10 min left",),
        paused_by=None,
        in_flight=None,
        failed_share=None,
        history=(
            Transition(at=NOW - 1300, state=ShiftPhase.RUNNING, reason="moving aws to 10%"),
            Transition(at=NOW - 1200, state=ShiftPhase.HOLDING, reason="aws at 10%"),
        ),
    )


def test_a_dry_run_says_so_on_every_shift_line_beside_the_real_weights() -> None:
    cfg = make_config(extra="shift:\n  record: api.example.com\n  steps: [10, 25, 50, 100]\n")
    spec = records(cfg)[NAME]
    view = base_view(
        cfg,
        route53=snapshot(spec, {"heroku": 100, "aws": 0}),
        shift=ShiftView(
            status=shift_status(dry_run=True), changes={}, last_change=None, last_rollback=None
        ),
        readiness=(readiness_of(Verdict.WAIT, ("12 more minutes",), dry_run=True),),
        step_marks=(
            StepMark(NAME, NOW - 1200, {"heroku": 0.9, "aws": 0.1}, "shift", dry_run=True),
        ),
    )
    html = page(view)
    top = banner(html)
    assert "DRY RUN: would set aws 10% · heroku 90%; Route53 holds aws 0% · heroku 100%" in top
    assert "Next step: DRY RUN: would set aws 25%" in top
    shift = re.search(r"<h2>Guarded shift.*?</ul>", html, flags=re.S)
    assert shift is not None
    words = text_of(shift.group(0))
    assert "DRY RUN: would set aws 10% (weights aws 10 · heroku 90)" in words
    assert "Route53 holds aws 0 · heroku 100 (aws 0% · heroku 100%)" in words
    history = re.findall(r"<li>(.*?)</li>", shift.group(0))
    assert len(history) == 2 and all("DRY RUN: " in text_of(h) for h in history)
    assert "candidate share 10%" not in words
    # the chart marks the dry-run step as such
    assert "DRY RUN aws 10%" in html


def test_a_real_shift_has_no_dry_run_words() -> None:
    cfg = make_config(extra="shift:\n  record: api.example.com\n  steps: [10, 25, 50, 100]\n")
    spec = records(cfg)[NAME]
    view = base_view(
        cfg,
        route53=snapshot(spec, {"heroku": 90, "aws": 10}),
        shift=ShiftView(
            status=shift_status(dry_run=False), changes={}, last_change=None, last_rollback=None
        ),
    )
    html = page(view)
    assert "DRY RUN" not in html and "aws 10%" in text_of(html)


# --- fifty checks, incident history, details ---------------------------------------------------------


def test_fifty_checks_overview_charts_history_and_details() -> None:
    cfg = make_config(checks=50)
    states = []
    for i, check in enumerate(cfg.checks):
        state = make_state(cfg, check.name)
        fill(state, minutes=200, every=10, candidate_fails=0.3 if i == 7 else 0.0, seed=i)
        states.append(state)
    done = incident(
        check="check-07",
        signal="errors",
        phase=Phase.RESOLVED,
        started=NOW - 3000,
        clear_since=NOW - 2700,
        resolved_at=NOW - 2580,
        figures={"error_ratio_delta": 0.3},
    )
    link = "https://standin.slack.test/archives/C0123/p1700000000000100"
    view = View(
        config=cfg,
        checks=states,
        now=MONO,
        records=records(cfg),
        evaluations={s.name: evaluation_of(s) for s in states},
        resolved=(done,),
        links={done.id: link},
        step_marks=(StepMark(NAME, NOW - 3600, {"heroku": 0.75, "aws": 0.25}, "person"),),
    )
    html = page(view)
    overview = re.search(r"<table class='overview'>(.*?)</table>", html, flags=re.S)
    assert overview is not None
    rows = re.findall(r"<tr.*?</tr>", overview.group(1), flags=re.S)
    assert len(rows) == 1 + 50
    row = text_of(rows[8])
    assert row.startswith("check-07") and re.search(r" \+[1-4]\d\.\d pts ", row), row
    assert "regressed: errors" in row or "firing" in row or "pending" in row, row
    # two charts a check, every one well-formed with lines drawn, the step and incident marked
    charts = svgs(html)
    assert len(charts) == 100
    ns = "{http://www.w3.org/2000/svg}"
    for svg in charts:
        paths = [p for p in svg.iter(f"{ns}path") if p.get("d", "").count("L") > 100]
        assert len(paths) >= 2, ET.tostring(svg)[:200]
        assert any(g.get("class") == "step" for g in svg.iter(f"{ns}g"))
    errors_07 = [s for s in charts if "check-07: error ratio" in (s.get("aria-label") or "")]
    assert [r.get("class") for r in errors_07[0].iter(f"{ns}rect")].count("incident") == 1
    # the history: resolved, its duration, its Slack link, absolute and relative times
    history = re.search(r"<h2>Incident history</h2>.*?</table>", html, flags=re.S)
    assert history is not None
    words = text_of(history.group(0))
    assert "check-07 errors" in words and "5 min" in words
    assert "2023-11-14 21:23:20 UTC (50 min ago)" in words
    assert f"href='{link}'" in history.group(0)
    # details collapsed by default, open where something is wrong; failures by reason
    assert html.count("<details") == 50
    assert html.count("<details id='check-check-07' open>") == 1
    assert re.search(r"failures by reason</th><td class='l'><span class='muted'>none", html)
    assert re.search(
        r"failures by reason</th><td class='l'><span class='muted'>none</span></td>"
        r"<td class='l'>(timeout|status) \d+ · (timeout|status) \d+</td>",
        html,
    )
    assert "href='https://grafana.example.test/d/cutover'" in html
    assert len(html) < 2_000_000, len(html)


# --- charts and history -------------------------------------------------------------------------------


def test_a_chart_is_well_formed_svg_with_gaps_marks_and_spans() -> None:
    start = NOW - 3600
    points = [(start + 60 * i, math.nan if i == 30 else 0.05 + i / 1000) for i in range(60)]
    svg = line_chart(
        'lat <&> "x"',
        [Line("aws p95", "#f00", points), Line("empty", "#00f", [])],
        start=start,
        end=NOW,
        fmt=lambda v: f"{v * 1000:.0f} ms",
        marks=[Mark(NOW - 1800, "aws 25%", "step <1>")],
        spans=[Span(NOW - 600, None, "open <incident>")],
    )
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    [path] = list(root.iter(f"{ns}path"))
    assert path.get("d", "").count("M") == 2  # the NaN breaks the line in two
    assert root.get("aria-label") == 'lat <&> "x"'
    assert [t.text for t in root.iter(f"{ns}text")].count("aws 25%") == 1


def test_minute_history_points_and_its_memory() -> None:
    h = MinuteHistory()
    t0 = 1_699_990_000.0 - 1_699_990_000.0 % 60
    for i in range(200 * 6):  # 200 minutes, a probe every 10 s
        ok = i % 12 != 0
        h.add(t0 + 10 * i, ok, 0.05 if i % 6 else 0.2)
    points = h.points()
    assert len(points) == KEEP_MINUTES + 1  # kept minutes and the one being filled
    assert points[-1].at == t0 + 199 * 60 and points[0].at == t0 + 19 * 60
    full = points[-2]
    assert full.error_ratio == pytest.approx(0.5 / 6 * 1, abs=0.005) or full.error_ratio in (
        pytest.approx(0.0),
        pytest.approx(1 / 6, abs=0.005),
    )
    assert full.p50 == pytest.approx(0.05, rel=0.06)
    # a gap of minutes without probes reads as minutes without points
    h.add(t0 + 205 * 60, True, 0.05)
    gap = [p for p in h.points() if p.at in (t0 + 201 * 60, t0 + 202 * 60)]
    assert len(gap) == 2 and all(math.isnan(p.error_ratio) and math.isnan(p.p95) for p in gap)
    # the memory: under 800 bytes a series with a probe every 10 s: 5000 checks add < 8 MB
    assert h.nbytes() < 800, h.nbytes()


def test_latency_codes_are_within_six_percent() -> None:
    for v in (0.0001, 0.001, 0.0123, 0.05, 0.3, 2.0, 30.0):
        assert decode_latency(encode_latency(v)) == pytest.approx(v, rel=0.03)
    assert math.isnan(decode_latency(encode_latency(math.nan)))


def test_the_measured_split_is_charted_against_the_weights() -> None:
    cfg = make_config()
    points = tuple(
        SplitPoint(at=NOW - 60 * (40 - i), measured=0.02 + i * 0.002, weight=0.1) for i in range(40)
    )
    traffic = TrafficView(
        roles={"heroku": "baseline", "aws": "candidate"},
        counters={},
        sources=(),
        source_errors={},
        windows={},
        verdicts={},
        record=NAME,
        split_history=points,
    )
    html = page(base_view(cfg, traffic=traffic))
    [chart] = [s for s in svgs(html) if "share of real requests" in (s.get("aria-label") or "")]
    ns = "{http://www.w3.org/2000/svg}"
    labels = [p.findtext(f"{ns}title") for p in chart.iter(f"{ns}path")]
    assert labels == ["aws measured", "aws weight"]


def test_the_banner_does_not_say_an_incident_twice() -> None:
    """The verdict names a pending incident itself: the page adds no line of its own for it."""
    cfg = make_config()
    said = replace(
        readiness_of(Verdict.WAIT),
        reasons=("latency regression pending on health", "2 more minutes"),
    )
    pending = replace(incident(), phase=Phase.PENDING, fired_at=None)
    text = banner(page(base_view(cfg, readiness=(said,), alerts=(pending,))))
    assert "latency regression pending on health" in text
    assert "pending: latency on health" not in text
