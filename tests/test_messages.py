"""Slack wording: figures side by side, traffic exposure and severity, for each incident event."""

from __future__ import annotations

import dataclasses

from exporter.alerting.alerts import Fired, Incident, Phase, Reminder, Resolved
from exporter.alerting.messages import (
    Context,
    duration_text,
    notifications,
    severity,
    shift_notifications,
)
from exporter.judging.readiness import Verdict
from exporter.route53.plan import Notify, Observation, SetWeights, ShiftPlan, ShiftSettings

FIGURES = {
    "candidate_p50": 0.120, "candidate_p95": 0.240, "candidate_error_ratio": 0.052,
    "baseline_p50": 0.040, "baseline_p95": 0.080, "baseline_error_ratio": 0.001,
    "p50_ratio": 3.0, "p95_ratio": 3.0, "error_ratio_delta": 0.051,
}  # fmt: skip


def incident(signal: str = "latency") -> Incident:
    return Incident(
        id=f"health.{signal}.1000", check="health", signal=signal, started_at=1000.0,
        phase=Phase.FIRING, fired_at=1060.0, reminded_at=1060.0, figures=dict(FIGURES),
    )  # fmt: skip


def ctx(**kw: object) -> Context:
    base: dict[str, object] = {"baseline": "heroku", "candidate": "aws"}
    base.update(kw)
    return Context(**base)  # type: ignore[arg-type]


def test_firing_message_has_both_sides_ratio_and_link() -> None:
    c = ctx(candidate_share=0.1, expected_error_ratio=0.0053, dashboard_url="https://g.example/d/x")
    (n,) = notifications(Fired(incident()), c)
    assert n.action == "post" and n.key == "health.latency.1000:fire"
    assert n.text.splitlines() == [
        "[WARNING] health: aws is slower than heroku (latency)",
        "aws (candidate): p50 120 ms · p95 240 ms · errors 5.2%",
        "heroku (baseline): p50 40 ms · p95 80 ms · errors 0.1%",
        "candidate / baseline: p95 3.0x (tolerated 1.5x) · p50 3.0x · errors +5.1 pts (tolerated +2 pts)",
        "aws gets 10.0% of traffic: users see 0.5% of requests failing.",
        "dashboard: https://g.example/d/x",
    ]
    assert n.blocks is not None
    fields = n.blocks[1]["fields"]
    assert fields[0]["text"].startswith("*aws* (candidate)\np50 120 ms")
    assert fields[1]["text"].startswith("*heroku* (baseline)\np50 40 ms")
    assert "<https://g.example/d/x|dashboard>" in n.blocks[-1]["elements"][0]["text"]


def test_several_vantages_the_message_says_which_saw_it_and_whose_figures() -> None:
    seen = incident()
    seen.figures.update(
        vantages="seen from us-east-1 on 2 rounds in a row", figures_from="us-east-1"
    )
    (n,) = notifications(Fired(seen), ctx())
    line = "Vantages: Seen from us-east-1 on 2 rounds in a row (the figures are us-east-1's)."
    assert line in n.text.splitlines()
    assert n.blocks is not None
    assert {"type": "mrkdwn", "text": f"*{line.replace(': ', ':* ', 1)}"} in [
        b.get("text") for b in n.blocks
    ]
    # the edit that resolves it keeps the line (a new leader edits from the incident's figures)
    edit, _ = notifications(Resolved(seen, 300.0), ctx())
    assert line in edit.text.splitlines()
    # a single replica's message has no such line
    (plain,) = notifications(Fired(incident()), ctx())
    assert "Vantages" not in plain.text


def test_no_traffic_means_no_users_affected_and_lower_severity() -> None:
    c = ctx(candidate_share=0.0, expected_error_ratio=0.0)
    (n,) = notifications(Fired(incident("errors")), c)
    assert "aws gets 0% of traffic: no users affected yet." in n.text
    assert n.text.startswith("[INFO]")
    assert severity(incident("errors"), ctx(candidate_share=0.25)) == "critical"
    assert severity(incident("down"), ctx()) == "critical"
    assert "Traffic share unknown" in notifications(Fired(incident()), ctx())[0].text


def test_resolve_is_an_edit_and_a_thread_reply_with_the_duration() -> None:
    edit, reply = notifications(Resolved(incident(), 312.0), ctx())
    assert (edit.action, reply.action) == ("edit", "reply")
    assert edit.incident == reply.incident == "health.latency.1000"
    assert edit.text.startswith("[RESOLVED] health: aws latency regression")
    assert "Resolved* after 5m 12s" in str(edit.blocks)
    assert reply.text == "Resolved: health latency lasted 5m 12s."
    assert len({edit.key, reply.key}) == 2


def test_reminder_goes_to_the_thread_with_current_figures() -> None:
    inc = incident()
    inc.reminded_at = 1000.0 + 3600
    (n,) = notifications(Reminder(inc), ctx())
    assert n.action == "reply" and n.key == "health.latency.1000:remind:4600"
    assert n.text.startswith("Still firing after 1h 0m: aws p50 120 ms")


def test_duration_text() -> None:
    assert [duration_text(s) for s in (0, 59, 61, 3600, 3725)] == [
        "0s",
        "59s",
        "1m 1s",
        "1h 0m",
        "1h 2m",
    ]


def test_real_traffic_names_its_route_group_and_the_evidence() -> None:
    traffic = Incident(
        id="traffic:redemptions.errors.1000", check="traffic:redemptions", signal="errors",
        started_at=1000.0, phase=Phase.FIRING, fired_at=1030.0, reminded_at=1030.0,
        figures={**FIGURES, "candidate_requests": 1234.0, "baseline_requests": 11106.4},
    )  # fmt: skip
    (n,) = notifications(Fired(traffic), ctx(candidate_share=0.1))
    lines = n.text.splitlines()
    assert (
        lines[0]
        == "[CRITICAL] real traffic, route group redemptions: aws fails more requests than heroku (errors)"
    )
    assert lines[1] == "aws (candidate): p50 120 ms · p95 240 ms · errors 5.2% of 1,234 requests"
    assert lines[2] == "heroku (baseline): p50 40 ms · p95 80 ms · errors 0.1% of 11,106 requests"
    whole = Incident(
        id="traffic:all.latency.1", check="traffic:all", signal="latency", started_at=1.0,
        phase=Phase.FIRING, fired_at=2.0, figures=dict(FIGURES),
    )  # fmt: skip
    (n,) = notifications(Fired(whole), ctx())
    assert n.text.startswith("[WARNING] real traffic, all routes: aws is slower than heroku")


def test_dry_run_shift_messages_say_so_and_show_route53s_weights() -> None:
    plan = ShiftPlan(
        ShiftSettings(
            record="api.example.com", baseline="heroku", candidate="aws", hold=60.0, dry_run=True
        )
    )
    real = {"heroku": 90, "aws": 10}
    seen = Observation(weights=real, readiness=Verdict.GO, ttl=30.0)
    plan.step(1000.0, seen)
    (write,) = plan.step(1061.0, seen)
    assert isinstance(write, SetWeights) and write.share == 25
    (step,) = plan.change_applied(1061.0, write.seq)
    assert isinstance(step, Notify) and step.dry_run
    (post,) = shift_notifications(step.kind, step.text, step.about, 1061.0, dry_run=step.dry_run)
    assert post.action == "post"
    assert post.text == (
        "[SHIFT] DRY RUN: api.example.com: would set aws to 25% (heroku 75, aws 25), was 10%; "
        "nothing written; Route53 holds aws 10% (heroku 90, aws 10); holding 1m as if it were "
        "set; plan 10% → [25%] → 50% → 100%"
    )
    firing = dataclasses.replace(seen, firing=["health.down.1000"])
    rollback = [a for a in plan.step(1062.0, firing) if isinstance(a, Notify)]
    (reply,) = shift_notifications("rollback", rollback[0].text, rollback[0].about, 1062.0)
    assert (reply.action, reply.incident) == ("reply", "health.down.1000")
    assert reply.text.startswith("DRY RUN: api.example.com: would roll aws back from 25% to 0%")
    assert reply.text.endswith("Route53 still holds aws 10% (heroku 90, aws 10)")


def test_dry_run_shift_messages_are_marked_whatever_the_text() -> None:
    (post,) = shift_notifications("paused", "api.example.com: shift paused", (), 5.0, dry_run=True)
    assert post.text == "[SHIFT] DRY RUN: api.example.com: shift paused"
    (reply,) = shift_notifications("rollback", "DRY RUN: x", ("i.1",), 5.0, dry_run=True)
    assert reply.text == "DRY RUN: x"  # said once
    (real,) = shift_notifications("paused", "api.example.com: shift paused", (), 5.0)
    assert real.text == "[SHIFT] api.example.com: shift paused"
