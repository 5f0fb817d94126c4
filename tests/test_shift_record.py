"""shift.json as cutover wrote it before: it still loads, and a plan writes the same bytes back."""

from __future__ import annotations

from pathlib import Path

from exporter.route53.plan import Observation, Phase, ShiftPlan, ShiftSettings

SETTINGS = ShiftSettings(
    record="api.example.com",
    baseline="heroku",
    candidate="aws",
    steps=(10, 25, 50, 100),
    hold=60.0,
    ttl_margin=5.0,
    dry_run=False,
)

HISTORY = (
    '"history":[{"at":1000.0,"state":"holding","reason":"found heroku 100, aws 0 in Route53 '
    '(aws at 0%)"},{"at":1001.0,"state":"running","reason":"readiness GO for aws at 0% (held 1 '
    'min): setting aws to 10%"},{"at":1003.0,"state":"holding","reason":"aws at 10% (INSYNC)"}'
)
OWED = (
    '"owed":[{"key":"shift-1","incident":"shift","action":"post","text":"[SHIFT] aws now gets '
    '10%","blocks":null,"created":1003.0}]'
)
# written by the plan of commit b2463d9 (holding at 10%, a notification still owed)
HOLDING = (
    '{"version":1,"record":"api.example.com","dry_run":false,"phase":"holding",'
    '"steps":[10.0,25.0,50.0,100.0],"share":10.0,"written":{"heroku":90,"aws":10},'
    '"next_index":1,"since":1003.0,"in_flight":null,"paused_by":null,"pause_reason":null,'
    '"failed_share":null,"seq":1,"fresh_after":1003.0,"changed_at":1001.0,"ttl":30.0,'
    f'"firing":[],{HISTORY}],{OWED}}}'
)
# the same plan a step later, with the change to 25% issued and not yet INSYNC
IN_FLIGHT = (
    '{"version":1,"record":"api.example.com","dry_run":false,"phase":"running",'
    '"steps":[10.0,25.0,50.0,100.0],"share":10.0,"written":{"heroku":90,"aws":10},'
    '"next_index":1,"since":1003.0,"in_flight":{"seq":2,"kind":"step","share":25.0,'
    '"weights":{"heroku":75,"aws":25},"previous":{"heroku":90,"aws":10},"issued_at":1103.0,'
    '"index":1,"attempts":1,"unknown":false,"error":null},"paused_by":null,"pause_reason":null,'
    '"failed_share":null,"seq":2,"fresh_after":1003.0,"changed_at":1001.0,"ttl":30.0,'
    f'"firing":[],{HISTORY},{{"at":1103.0,"state":"running","reason":"readiness GO for aws at '
    f'10% (held 2 min): setting aws to 25%"}}],{OWED}}}'
)


def test_a_saved_holding_plan_loads_and_is_written_back_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "shift.json"
    path.write_text(HOLDING)

    plan = ShiftPlan.load(path, SETTINGS, now=1050.0)

    assert (plan.state, plan.share, plan.next_index, plan.written) == (
        Phase.HOLDING,
        10.0,
        1,
        {"heroku": 90, "aws": 10},
    )
    assert [n.key for n in plan.owed] == ["shift-1"]
    assert plan.history[-1].reason == "aws at 10% (INSYNC)"
    plan.save(path)
    assert path.read_text() == HOLDING


def test_a_saved_change_in_flight_comes_back_unknown_and_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "shift.json"
    path.write_text(IN_FLIGHT)

    plan = ShiftPlan.load(path, SETTINGS, now=1200.0)

    assert plan.state is Phase.RUNNING and plan.in_flight is not None
    assert (plan.in_flight.seq, plan.in_flight.share, plan.in_flight.unknown) == (2, 25.0, True)
    assert plan.status(1200.0).why == (
        "checking whether the change to 25% landed (after a restart): waiting for the Route53 "
        "weights"
    )
    news = plan.step(1201.0, Observation(weights={"heroku": 75, "aws": 25}, ttl=30, read_at=1201.0))
    assert [(type(a).__name__, getattr(a, "text", None)) for a in news] == [
        (
            "Notify",
            "api.example.com: aws now gets 25% of the traffic (was 10%); holding 1m; "
            "plan 10% → [25%] → 50% → 100%",
        )
    ]
    assert (plan.state, plan.share, plan.next_index) == (Phase.HOLDING, 25.0, 2)
    saved = plan.to_dict()
    assert saved["owed"][0]["key"] == "shift-1" and saved["in_flight"] is None
