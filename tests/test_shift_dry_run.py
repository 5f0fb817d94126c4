"""A dry-run shift says so everywhere: Slack, the API, `cutover shift status`, beside Route53's weights."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from typing import Any

from exporter.cli import _shift_text
from tests.conftest import ROOT, FakePlatform, daemon_env
from tests.slack_standin import SlackStandIn
from tests.test_route53_daemon import Moto, moto, zone
from tests.test_shift_e2e import CONTROL, shift_config, start_shift, weights_in

__all__ = ["moto", "start_shift"]  # fixtures, imported for this module's tests

REAL = {"heroku": 90, "aws": 10}
HOLDS = "holds aws 10% (heroku 90, aws 10)"


def test_status_text_of_a_plan_that_writes() -> None:
    data = {
        "shift": {
            "record": "api.example.com", "state": "holding", "mode": "auto", "dry_run": False,
            "steps": [10.0, 25.0, 50.0, 100.0], "current_step": 1,
            "why": "12 more minutes; 310 more candidate requests on traffic:all",
            "position": "aws at 25% (heroku 75, aws 25)",
            "readiness": {
                "verdict": "WAIT",
                "reasons": ["12 more minutes", "310 more candidate requests on traffic:all"],
            },
            "history": [{"at": 1.0, "state": "holding", "reason": "aws at 25% (INSYNC)"}],
        }
    }  # fmt: skip
    assert _shift_text(data).splitlines() == [
        "shift of api.example.com: holding (auto mode)",
        "  plan 10% → [25%] → 50% → 100%",
        "  aws at 25% (heroku 75, aws 25)",
        "  readiness: WAIT: 12 more minutes; 310 more candidate requests on traffic:all",
        "  waiting: 12 more minutes; 310 more candidate requests on traffic:all",
        "  last: aws at 25% (INSYNC)",
    ]
    data["shift"]["readiness"] = None  # the ledger has not judged the record yet
    assert "  readiness: not judged yet" in _shift_text(data).splitlines()
    dry = {"shift": {**data["shift"], "dry_run": True, "readiness": {"verdict": "GO"}}}
    assert "  DRY RUN: readiness: GO" in _shift_text(dry).splitlines()


async def test_dry_run_approve_and_rollback_say_dry_run_everywhere(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_shift: Any
) -> None:
    _, zid = zone(moto, REAL, ttl=1)
    slack = SlackStandIn(token="xoxb-dry-run-test-token", channels={"#migration": "C0MIGR"})
    await slack.start()
    try:
        config = shift_config(platforms, moto, zid, mode="manual", steps="[10, 50, 100]") + (
            "  slack:\n    token: xoxb-dry-run-test-token\n    channel: '#migration'\n"
            f"    api_url: {slack.url}\n"
        )
        d = start_shift(config)  # without --allow-route53-writes: a dry run
        await d.wait_ready()
        await d.wait_shift(lambda s: s["state"] == "waiting_approval", timeout=30)
        status, body = await d.control("approve")
        assert status == 200, body
        assert body["result"].startswith("DRY RUN: would set aws to 50% (heroku 50, aws 50)")
        await d.wait_shift(lambda s: s["share"] == 50 and s["in_flight"] is None, timeout=15)
        # the page says it too, beside what Route53 holds
        _, page = await d.get("/")
        assert "DRY RUN: would set aws 50%" in page and "Route53 holds" in page
        # and the migration's thread hears of the would-be step, once the ledger follows it
        deadline = time.monotonic() + 20
        step_text = "DRY RUN: the guarded shift would have set api.example.com to heroku 50%"

        def said() -> list[str]:
            tops = slack.top_level("C0MIGR")
            return [m.text or "" for t in tops for m in (t, *slack.replies(t.ts))]

        while not any(step_text in text for text in said()):
            assert time.monotonic() < deadline, said()
            await asyncio.sleep(0.2)
        [step] = [text for text in said() if step_text in text]
        assert "Route53 still holds heroku 90%, aws 10%" in step
        status, body = await d.control("rollback")
        assert status == 200 and body["result"].startswith("DRY RUN: "), body
        data = await d.wait_shift(lambda s: s["share"] == 0 and s["in_flight"] is None)
        status, body = await d.control("rollback")
        assert status == 409, body
        assert (
            body["error"] == "DRY RUN: already stopped: would roll aws back to 0% (nothing written)"
        )

        assert weights_in(moto, zid) == REAL
        assert (data["state"], data["dry_run"]) == ("rolled_back", True)
        assert (data["real_weights"], data["real_share"]) == (REAL, 10)
        assert data["position"] == (
            "DRY RUN: acting as if aws were at 0% (heroku 100, aws 0); nothing written; "
            f"Route53 {HOLDS}"
        )
        assert data["why"].startswith("DRY RUN: stopped: would roll aws back to 0%")
        assert data["why"].endswith(f"Route53 still {HOLDS}; resume to continue")
        for entry in data["history"]:
            assert entry["reason"].startswith("DRY RUN: "), entry
            assert "INSYNC" not in entry["reason"], entry
        _, body_text = await d.get("/api/v1/status")
        assert json.loads(body_text)["shift"]["real_weights"] == REAL

        def posts() -> list[str]:
            return [m.text or "" for m in slack.top_level("C0MIGR") if "[SHIFT]" in (m.text or "")]

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            "would roll aws back to 0% (" in p for p in posts()
        ):
            await asyncio.sleep(0.1)
        said = posts()
        assert len(said) >= 5, said  # waiting, approved, step, rollback, rolled back
        for text in said:
            assert text.startswith("[SHIFT] DRY RUN: api.example.com: "), text
            assert "Route53" in text and "rolled back" not in text, text
        assert any(
            "would set aws to 50% (heroku 50, aws 50), was 10%; nothing written; "
            f"Route53 {HOLDS}" in t
            for t in said
        ), said
        assert any(
            "would roll aws back to 0% (Route53 still holds 10%: heroku 90, aws 10)" in t
            for t in said
        ), said

        env = daemon_env(CUTOVER_URL=d.url, CUTOVER_CONTROL_TOKEN=CONTROL)
        argv = [sys.executable, "-m", "exporter", "shift", "status"]
        cli = await asyncio.get_running_loop().run_in_executor(
            None, lambda: subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
        )
        assert cli.returncode == 0, cli.stderr
        lines = cli.stdout.splitlines()
        assert lines[0] == (
            "DRY RUN: shift of api.example.com: rolled_back (manual mode); "
            "nothing is written to Route53"
        )
        assert "  DRY RUN: plan 10% → 50% → 100%" in lines
        assert all(line.lstrip().startswith("DRY RUN: ") for line in lines), lines
        assert all(line.count("DRY RUN") == 1 for line in lines), lines
        assert "  DRY RUN: waiting: stopped: would roll aws back to 0%" in cli.stdout
        # the verdict on the step the dry run would have made (0%), judged as any other
        assert any(re.match(r"  DRY RUN: readiness: (GO|WAIT|NO-GO)\b", line) for line in lines)
        assert any(f"Route53 still {HOLDS}" in line for line in lines), lines
        assert d.stop() == 0
    finally:
        await slack.stop()
