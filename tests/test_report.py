"""`cutover report`'s rendering: text, Markdown and JSON from /api/v1/readiness's answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exporter.report import render

NOW = 1_790_000_000.0


def answer(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "record": "api.example.com",
        "verdict": "WAIT",
        "reasons": ["12 more minutes", "310 more candidate requests on traffic:all"],
        "step": {
            "started_at": NOW - 1080,
            "shares": {"heroku": 0.9, "aws": 0.1},
            "changed_by": "shift",
        },
        "next_share": 0.25,
        "held_for_seconds": 1080.0,
        "hold_seconds": 1800.0,
        "dry_run": False,
        "subjects": [
            {
                "subject": "health",
                "kind": "probes",
                "counts": [1080, 1079],
                "failures": [2, 1],
                "error_ratios": [2 / 1080, 1 / 1079],
                "latency": {"p50": [0.060, 0.045], "p95": [0.092, 0.095], "p99": [0.2, 0.21]},
                "errors": {"estimate": -0.0009, "upper": 0.004, "tolerated": 0.02, "ok": True},
                "latency_ratio": {
                    "p50": {"estimate": 0.75, "upper": 0.8, "tolerated": 1.5, "ok": True},
                    "p95": {"estimate": 1.03, "upper": 1.2, "tolerated": 1.5, "ok": True},
                    "p99": {"estimate": 1.05, "upper": 2.0, "tolerated": 1.5, "ok": None},
                },
                "missing": [],
            }
        ],
        "incidents": [
            {
                "check": "health",
                "signal": "latency",
                "phase": "resolved",
                "started_at": NOW - 900,
                "fired_at": NOW - 840,
                "resolved_at": NOW - 600,
            }
        ],
    }
    entry.update(overrides)
    past = {
        "record": "api.example.com",
        "verdict": "GO",
        "step": {
            "started_at": NOW - 4000,
            "shares": {"heroku": 1.0, "aws": 0.0},
            "changed_by": "person",
        },
        "ended_at": NOW - 1080,
        "incidents": [],
    }
    return {"records": [entry], "steps": {"api.example.com": [past]}}


def test_text_says_the_verdict_its_reasons_the_step_and_the_evidence() -> None:
    text = render(answer(), "text", NOW)
    assert "api.example.com: WAIT" in text
    assert "12 more minutes" in text and "310 more candidate requests on traffic:all" in text
    assert "heroku 90%, aws 10%" in text and "by the guarded shift" in text
    assert "18 min of a 30 min hold" in text
    assert "Next step: candidate at 25%." in text
    # error figures in percentage points, latency as ratios, p99 not yet evidence
    assert "+2 pts" in text and "+0.4 pts" in text
    assert "1.20x" in text and "not evidence yet" in text
    assert "latency regression on health, fired" in text and "resolved after 4 min" in text
    assert "Previous steps:" in text and "person" in text and "GO" in text
    assert "['" not in text and "{'" not in text, "no Python lists or dicts"


def test_markdown_is_tables_for_a_change_ticket() -> None:
    md = render(answer(), "markdown", NOW)
    assert md.startswith("# cutover readiness report")
    assert "## api.example.com: WAIT" in md
    assert "| evidence over the step | baseline | candidate |" in md
    assert "### Previous steps" in md
    assert "'heroku'" not in md


def test_json_is_the_api_answer() -> None:
    data = answer()
    assert json.loads(render(data, "json", NOW)) == data


def test_a_real_verdict_renders_in_every_format() -> None:
    """The renderer reads what readiness() writes, not only a hand-made answer."""
    from exporter.judging.readiness import ReadinessSettings, readiness
    from tests.test_readiness import START, clean, clean_traffic, facts

    verdict = readiness(
        facts(clean(), clean_traffic(), traffic=True), START + 3600, ReadinessSettings()
    )
    data = {"records": [verdict.to_dict()], "steps": {}}
    text = render(data, "text", START + 3600)
    assert f"api.example.com: {verdict.verdict.value}" in text
    assert "health: probes" in text and "traffic:all: requests" in text
    assert " ms " in text and " pts" in text and "x " in text
    assert "'baseline'" not in text
    md = render(data, "markdown", START + 3600)
    assert "| health: probes |" in md
    assert json.loads(render(data, "json", START + 3600)) == data


def test_a_dry_run_step_says_so() -> None:
    text = render(answer(dry_run=True), "text", NOW)
    assert "DRY RUN" in text


def test_nothing_judged() -> None:
    text = render({"records": [], "steps": {}}, "text", NOW)
    assert "No migrated record is judged" in text


def test_from_a_state_dir_a_corrupt_ledger_is_named_and_left_where_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from exporter.cli import main

    assert main(["report", "--state-dir", str(tmp_path)]) == 1
    assert "no step ledger there" in capsys.readouterr().err
    ledger = tmp_path / "readiness.json"
    ledger.write_text('{"version": 1, "steps": "nope"}')
    assert main(["report", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(ledger) in err and "steps" in err
    assert ledger.read_text() == '{"version": 1, "steps": "nope"}', "a reader moves nothing"
    assert [p.name for p in tmp_path.iterdir()] == ["readiness.json"]


def test_config_goes_with_state_dir_only(capsys: pytest.CaptureFixture[str]) -> None:
    from exporter.cli import main

    assert main(["report", "--url", "http://127.0.0.1:9", "--config", "x.yml"]) == 2
    assert "--config goes with --state-dir" in capsys.readouterr().err
