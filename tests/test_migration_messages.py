"""The migration thread's wording: weight changes and the readiness summary of a completed hold."""

from __future__ import annotations

import math

from exporter.alerting.migration import readiness_notification, step_notification, thread_of
from exporter.judging.readiness import (
    Bound,
    IncidentNote,
    Readiness,
    StepFacts,
    SubjectReadiness,
    Verdict,
)

T0 = 1_790_000_000.0


def subject(name: str, kind: str, counts: tuple[float, float], **kw: object) -> SubjectReadiness:
    values: dict[str, object] = {
        "subject": name,
        "kind": kind,
        "counts": counts,
        "failures": (15.0, 13.7),
        "error_ratios": (0.0019, 0.0021),
        "latency": {"p50": (0.060, 0.045), "p95": (0.095, 0.092), "p99": (0.2, 0.2)},
        "errors": Bound(0.0002, 0.004, 0.02, True),
        "latency_ratio": {"p95": Bound(0.97, 1.1, 1.5, True)},
        "missing": (),
    }
    values.update(kw)
    return SubjectReadiness(**values)  # type: ignore[arg-type]


def ready(verdict: Verdict = Verdict.GO, *, dry_run: bool = False, incidents=()) -> Readiness:  # type: ignore[no-untyped-def]
    facts = StepFacts(
        record="api.example.com",
        started_at=T0,
        shares={"heroku": 0.9, "aws": 0.1},
        changed_by="shift",
        subjects=(),
        incidents=incidents,
        traffic=True,
        next_share=0.25,
        dry_run=dry_run,
    )
    return Readiness(
        record="api.example.com",
        verdict=verdict,
        reasons=("held 30 min",) if verdict is Verdict.GO else ("evidence inconclusive",),
        step=facts,
        held_for=1800.0,
        hold=1800.0,
        subjects=(
            subject("health", "probes", (3600, 3600)),
            subject("orders", "probes", (3600, 3600)),
            subject("traffic:all", "requests", (460_800, 51_200)),
            subject("traffic:orders", "requests", (230_000, 25_600)),
        ),
        subjects_total=4,
        probes=(7200, 7200),
        requests=(460_800, 51_200),
    )


def test_the_summary_reads_like_the_issue_says() -> None:
    n = readiness_notification(ready(), "heroku", "aws", T0 + 1800)
    assert n.incident == thread_of("api.example.com") and n.action == "reply"
    assert n.text.startswith(
        "aws at 10% for 30 min: 7 200 probes, 51 200 requests; p95 92 vs 95 ms"
    )
    assert "errors 0.21% vs 0.19%" in n.text and "(bound +0.4 pts)" in n.text
    assert "no incidents" in n.text and n.text.endswith("GO for 25%")
    # the key depends on the step alone: owed again after a restart, it is the same message
    assert n.key == readiness_notification(ready(), "heroku", "aws", T0 + 9999).key


def test_a_summary_that_is_not_go_says_why() -> None:
    fired = IncidentNote("x", "health", "errors", "resolved", T0 + 60, T0 + 70, T0 + 300)
    n = readiness_notification(ready(Verdict.NO_GO, incidents=(fired,)), "heroku", "aws", T0)
    assert "1 incident" in n.text and "NO-GO: evidence inconclusive" in n.text
    assert "GO for" not in n.text


def test_dry_run_says_so() -> None:
    n = readiness_notification(ready(dry_run=True), "heroku", "aws", T0)
    assert n.text.startswith("DRY RUN: aws at 10% for 30 min")
    step = step_notification(
        "api.example.com", T0, {"heroku": 0.75, "aws": 0.25}, {"heroku": 0.9, "aws": 0.1},
        "shift", True, real_shares={"heroku": 0.9, "aws": 0.1},
    )  # fmt: skip
    assert step.text.startswith("DRY RUN: the guarded shift would have set api.example.com")
    assert "Route53 still holds heroku 90%, aws 10%" in step.text


def test_a_weight_change_by_a_person() -> None:
    n = step_notification(
        "api.example.com", T0, {"heroku": 0.5, "aws": 0.5}, {"heroku": 0.9, "aws": 0.1},
        "person", False,
    )  # fmt: skip
    assert n.text.startswith("Weights of api.example.com changed by a person: heroku 50%, aws 50%")
    assert "(was heroku 90%, aws 10%)" in n.text
    assert n.key.endswith(f":step:{round(T0 * 1000)}")
    assert not math.isnan(n.created)
