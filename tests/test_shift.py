"""The guarded shift plan as a pure state machine, driven by a synthetic clock.

The readiness verdict it advances on comes from a stand-in for the step ledger (`World`): a step
begins when the weights it follows change, and says GO once it has lasted READY seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from exporter.judging.readiness import Verdict
from exporter.route53.plan import (
    HISTORY_LIMIT,
    Action,
    Notify,
    Observation,
    Phase,
    Refused,
    SetWeights,
    ShiftPlan,
    ShiftSettings,
    candidate_percent,
    format_left,
    plan_text,
    weights_for,
)

SETTINGS = ShiftSettings(
    record="api.example.com",
    baseline="heroku",
    candidate="aws",
    steps=(10, 25, 50, 100),
    hold=60.0,
    ttl_margin=5.0,
    rollback_to=0.0,
    mode="auto",
    dry_run=False,
)
TTL = 30.0  # below the hold: the hold stays 60 s unless a test raises the TTL
GO_SUMMARY = "held 1 min; 240 probes; every bound within tolerance"


class World:
    """Route53 as the plan sees it, and a driver that does what the daemon would."""

    def __init__(self, plan: ShiftPlan, weights: dict[str, int], t: float = 1000.0) -> None:
        self.plan = plan
        self.weights = dict(weights)
        self.t = t
        self.written: list[float] = []  # shares written, in order
        self.notes: list[Notify] = []
        self.unapplied: list[SetWeights] = []
        self.auto_apply = True
        # the stand-in ledger's current step: the weights found have been watched for an hour
        self.step_weights = self.followed()
        self.step_start = t - 3600.0

    def followed(self) -> dict[str, int]:
        """What the ledger follows: Route53's weights, or a dry run's would-be ones."""
        target = self.plan.status(self.t).target_weights
        if self.plan.settings.dry_run and target:
            return dict(target)
        return dict(self.weights)

    def verdict(self) -> tuple[Verdict, tuple[str, ...]]:
        """GO once the step lasted the hold, else WAIT with what is left.

        The hold is the plan's, as in the daemon (readiness.hold is the plan's hold).
        """
        weights = self.followed()
        if weights != self.step_weights:
            self.step_weights, self.step_start = weights, self.t
        ready, held = self.plan.settings.hold, self.t - self.step_start
        if held >= ready:
            return Verdict.GO, (GO_SUMMARY,)
        return Verdict.WAIT, (f"{math.ceil(ready - held)} more seconds",)

    def obs(self, **kw: Any) -> Observation:
        verdict, reasons = self.verdict()
        kw.setdefault("weights", dict(self.weights))
        kw.setdefault("readiness", verdict)
        kw.setdefault("readiness_reasons", reasons)
        kw.setdefault("readiness_since", self.step_start)
        kw.setdefault("readiness_share", candidate_percent(self.step_weights, "heroku", "aws"))
        kw.setdefault("ttl", TTL)
        return Observation(**kw)

    def evaluate(self, dt: float = 0.0, **kw: Any) -> list[Action]:
        self.t += dt
        actions = self.plan.step(self.t, self.obs(**kw))
        self.run(actions)
        return actions

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Notify):
                self.notes.append(action)
            elif self.auto_apply:
                self.apply(action)
            else:
                self.unapplied.append(action)
        self.verdict()  # the ledger sees a change at once (the daemon's sees it a tick later)

    def apply(self, action: SetWeights) -> None:
        self.weights = dict(action.weights)
        self.written.append(action.share)
        self.run(self.plan.change_applied(self.t, action.seq))

    @property
    def share(self) -> float | None:
        return candidate_percent(self.weights, "heroku", "aws")

    def kinds(self) -> list[str]:
        return [n.kind for n in self.notes]


def world(**settings: Any) -> World:
    s = dataclasses.replace(SETTINGS, **settings)
    return World(ShiftPlan(s), {"heroku": 100, "aws": 0})


def started(w: World) -> World:
    """Adopt the weights, then pass the gates: the first step is written."""
    w.evaluate()
    w.evaluate(1)
    return w


def sets(actions: list[Action]) -> list[SetWeights]:
    return [a for a in actions if isinstance(a, SetWeights)]


def at_share(share: float, **settings: Any) -> World:
    """A plan holding at `share` (a step), just confirmed."""
    w = started(world(**settings))
    while w.plan.share != share:
        w.evaluate(61)
        assert w.written, "the plan did not move"
    assert w.plan.state is Phase.HOLDING
    return w


# --- weights ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "weights"),
    [
        (0, {"heroku": 100, "aws": 0}),
        (10, {"heroku": 90, "aws": 10}),
        (100, {"heroku": 0, "aws": 100}),
        (12.5, {"heroku": 175, "aws": 25}),
        (33.3, {"heroku": 170, "aws": 85}),
        (0.4, {"heroku": 254, "aws": 1}),
        (99.6, {"heroku": 1, "aws": 254}),
    ],
)
def test_weights_for_a_share(percent: float, weights: dict[str, int]) -> None:
    got = weights_for(percent, "heroku", "aws")
    assert got == weights
    assert all(0 <= w <= 255 for w in got.values()) and any(got.values())
    # 1/255 is as fine as Route53's weights go
    assert candidate_percent(got, "heroku", "aws") == pytest.approx(percent, abs=100 / 255 / 2)


def test_all_zero_weights_are_an_even_split() -> None:
    assert candidate_percent({"heroku": 0, "aws": 0}, "heroku", "aws") == 50.0
    assert candidate_percent({"heroku": 0, "aws": None}, "heroku", "aws") is None


def test_format_left() -> None:
    assert [format_left(s) for s in (252, 42, 0.2, 3900, 3600, 120)] == [
        "4m 12s",
        "42s",
        "1s",
        "1h 5m",
        "1h",
        "2m",
    ]


# --- the plan ---------------------------------------------------------------------------------


def test_full_plan_walks_the_steps_with_holds() -> None:
    w = world()

    assert w.evaluate() == []  # the first read: the weights are adopted as the start
    assert w.plan.share == 0 and w.plan.next_index == 0
    first = w.evaluate(1)
    assert [(a.share, dict(a.weights), a.expected) for a in sets(first)] == [
        (10, {"heroku": 90, "aws": 10}, {"heroku": 100, "aws": 0})
    ]
    assert w.plan.state is Phase.HOLDING and w.plan.share == 10
    start = w.t

    for share, nxt in ((10, 25), (25, 50), (50, 100)):
        assert w.evaluate(20) == []
        status = w.plan.status(w.t)
        # the record's TTL (30 s) + margin (5 s), then what the verdict still waits for
        assert status.waiting == ("DNS: 15s left of the record's TTL + margin", "40 more seconds")
        assert w.evaluate(16) == []
        status = w.plan.status(w.t)
        assert status.why == "24 more seconds"
        assert (status.hold_left, status.share, status.target_share) == (24, share, share)
        assert w.evaluate(23.5) == []
        assert w.evaluate(0.5) != []
        assert w.plan.share == nxt

    assert w.evaluate(59) == []
    assert w.plan.state is Phase.HOLDING
    done = w.evaluate(1)
    assert w.plan.state is Phase.DONE
    assert [n.text for n in done] == [
        "api.example.com: aws carries 100% of the traffic: the shift is done"
    ]
    assert w.written == [10, 25, 50, 100]
    assert w.weights == {"heroku": 0, "aws": 100}
    assert w.t - start == 4 * 60
    assert w.kinds() == ["step", "step", "step", "step", "done"]
    assert w.notes[1].text == (
        "api.example.com: aws now gets 25% of the traffic (was 10%); holding 1m; "
        "plan 10% → [25%] → 50% → 100%"
    )
    assert w.evaluate(3600) == [] and w.plan.state is Phase.DONE
    states = [t.state for t in w.plan.history]
    assert states.count(Phase.RUNNING) == 4 and states[-1] is Phase.DONE


def test_hold_is_raised_to_ttl_plus_margin() -> None:
    w = started(world(hold=10.0))
    assert w.plan.hold == 35  # TTL 30 s + 5 s

    w.evaluate(0, ttl=300)
    assert w.plan.hold == 305
    assert w.plan.status(w.t).waiting == (
        "DNS: 5m 5s left of the record's TTL + margin",
        "10 more seconds",
    )
    assert w.evaluate(10, ttl=300) == []  # GO, but resolvers may not have seen the change yet
    assert w.plan.status(w.t).why == "DNS: 4m 55s left of the record's TTL + margin"
    assert w.evaluate(294, ttl=300) == []
    assert sets(w.evaluate(1, ttl=300))[0].share == 25

    w.evaluate(0, ttl=None)  # an alias: the target's TTL, 60 s, is assumed
    assert w.plan.hold == 65


WAIT = ("12 more minutes", "310 more candidate requests on traffic:all")
NO_GO = (
    "errors regression on health: +9.8 pts (at least +7.1 pts; 10% vs 0.2%), tolerated +2 pts",
    "12 more minutes",
)


def test_a_wait_holds_and_says_what_the_verdict_waits_for() -> None:
    w = started(world())

    for _ in range(5):
        assert w.evaluate(600, readiness=Verdict.WAIT, readiness_reasons=WAIT) == []

    status = w.plan.status(w.t)
    assert status.waiting == WAIT
    assert status.why == "12 more minutes; 310 more candidate requests on traffic:all"
    assert w.plan.state is Phase.HOLDING and w.written == [10]
    assert sets(w.evaluate(1))[0].share == 25  # GO
    assert w.plan.history[-2].reason == (
        f"readiness GO for aws at 10% ({GO_SUMMARY}): setting aws to 25%"
    )


def test_a_no_go_holds_with_what_decided_it() -> None:
    w = started(world())
    for _ in range(5):
        assert w.evaluate(600, readiness=Verdict.NO_GO, readiness_reasons=NO_GO) == []
    assert w.plan.status(w.t).waiting == (f"NO-GO: {NO_GO[0]}", NO_GO[1])
    assert w.plan.state is Phase.HOLDING and w.written == [10]
    # a NO-GO is no regression firing: nothing is rolled back by it
    no_reasons = w.evaluate(1, readiness=Verdict.NO_GO, readiness_reasons=())
    assert not any(a.rollback for a in sets(no_reasons))
    assert w.plan.status(w.t).why == "readiness: NO-GO"


def test_no_verdict_yet_holds() -> None:
    w = world()
    w.evaluate(readiness=None)  # adopts
    assert w.evaluate(600, readiness=None) == []
    assert w.plan.status(w.t).why == "readiness not judged yet"
    assert sets(w.evaluate(1))[0].share == 10
    assert w.evaluate(600, readiness=None) == []
    assert w.plan.status(w.t).why == "readiness not judged yet"


def test_a_go_on_the_step_before_the_change_is_not_judged_yet() -> None:
    w = at_share(10)
    changed = w.t  # the step to 10% was issued (and landed) now
    before = {"readiness": Verdict.GO, "readiness_reasons": (GO_SUMMARY,)}

    # the ledger has not seen the change yet: its GO is the 0% step's, begun long before
    assert w.evaluate(61, **before, readiness_since=changed - 600, readiness_share=0) == []
    assert w.plan.status(w.t).why == "readiness not judged yet"
    # the same step seen at the plan's share (a dry run's would-be weights), but older
    assert w.evaluate(1, **before, readiness_since=changed - 1, readiness_share=10) == []
    # a step at another share, however new, is not this one
    assert w.evaluate(1, **before, readiness_since=changed + 5, readiness_share=25) == []
    assert w.plan.status(w.t).why == "readiness not judged yet"
    assert w.written == [10]
    # the ledger's step for the change: begun when it was issued, or later
    assert [a.share for a in sets(w.evaluate(1, **before, readiness_since=changed))] == [25]


def test_go_still_waits_for_the_records_ttl_after_a_change() -> None:
    w = started(world(hold=0.0))  # the verdict may say GO at once: resolvers have not seen it
    assert w.plan.share == 10
    assert w.evaluate(34) == []
    assert w.plan.status(w.t).why == "DNS: 1s left of the record's TTL + margin"
    assert sets(w.evaluate(1))[0].share == 25


def test_the_first_step_waits_for_go_and_the_weights() -> None:
    w = world()
    few = ("5 more candidate probes on health",)
    w.evaluate(readiness=Verdict.WAIT, readiness_reasons=few)  # adopts
    assert w.evaluate(1, readiness=Verdict.WAIT, readiness_reasons=few) == []
    assert w.plan.status(w.t).why == "5 more candidate probes on health"
    assert w.evaluate(1, weights=None) == []
    assert w.plan.status(w.t).why == "waiting for a fresh read of the Route53 weights"
    assert sets(w.evaluate(1))[0].share == 10


def test_before_the_first_read_nothing_happens() -> None:
    w = world()
    assert w.evaluate(weights=None) == []
    status = w.plan.status(w.t)
    assert (status.state, status.share, status.why) == (
        Phase.HOLDING,
        None,
        "waiting for the Route53 weights",
    )


def test_pending_regression_holds() -> None:
    w = started(world())
    assert w.evaluate(61, pending=["health/latency"]) == []
    assert w.plan.status(w.t).why == "regression pending: health/latency"
    assert sets(w.evaluate(1))[0].share == 25


def test_firing_regression_mid_plan_rolls_back_at_once_and_pauses() -> None:
    w = at_share(50)
    w.evaluate(10)

    actions = w.evaluate(1, firing=["health/down"])

    back = sets(actions)
    assert [(a.share, dict(a.weights), a.rollback, a.expected) for a in back] == [
        (0, {"heroku": 100, "aws": 0}, True, None)
    ]
    assert w.weights == {"heroku": 100, "aws": 0}
    assert w.plan.state is Phase.ROLLED_BACK
    # the write goes first; this driver confirms it before it reaches the notification
    assert w.kinds()[-2:] == ["rolled_back", "rollback"]
    assert w.notes[-1].text == (
        "api.example.com: rolling aws back from 50% to 0%: regression firing: health/down"
    )
    assert w.notes[-1].about == ("health/down",)
    assert w.notes[-2].text == (
        "api.example.com: aws rolled back to 0% (was 50%); paused until a person resumes"
    )
    assert w.plan.status(w.t).why == (
        "rolled back to 0% (regression firing: health/down); resume to continue"
    )
    # stays there: no more writes, firing or not, however long
    assert w.evaluate(1, firing=["health/down"]) == []
    assert w.evaluate(7200) == []
    assert w.plan.state is Phase.ROLLED_BACK and w.written == [10, 25, 50, 0]


def test_regression_while_a_step_is_in_flight_supersedes_it() -> None:
    w = at_share(10)
    w.auto_apply = False
    forward = sets(w.evaluate(61))
    assert [a.share for a in forward] == [25]
    assert w.plan.state is Phase.RUNNING
    assert w.plan.status(w.t).why == "applying 25%: waiting for Route53 (INSYNC)"

    back = sets(w.evaluate(1, firing=["health/errors"]))

    assert [(a.share, a.rollback) for a in back] == [(0, True)]
    assert back[0].seq > forward[0].seq
    # the forward change lands late: it no longer counts
    assert w.plan.change_applied(w.t, forward[0].seq) == []
    assert w.plan.state is Phase.ROLLED_BACK
    w.auto_apply = True
    w.apply(back[0])
    assert w.plan.share == 0 and w.plan.failed_share == 25


def test_resume_after_rollback_goes_back_to_the_last_good_share() -> None:
    w = at_share(50)
    w.evaluate(1, firing=["health/latency"])
    assert w.plan.state is Phase.ROLLED_BACK

    with pytest.raises(Refused, match=r"cannot resume while a regression is firing \(health/"):
        w.plan.resume(w.t)
    w.evaluate(20)  # resolved
    w.run(w.plan.resume(w.t))

    assert w.plan.state is Phase.HOLDING
    assert w.notes[-1].text == (
        "api.example.com: shift resumed by a person; going back to 25% on readiness GO"
    )
    # the step at 0% began with the rollback: it must earn its GO like any other
    assert w.evaluate(1) == []
    assert w.plan.status(w.t).why == "39 more seconds"
    assert w.evaluate(38) == []
    assert sets(w.evaluate(1))[0].share == 25
    assert w.plan.state is Phase.HOLDING
    assert w.evaluate(59) == []
    assert sets(w.evaluate(1))[0].share == 50
    assert w.written == [10, 25, 50, 0, 25, 50]


def test_resume_after_a_rollback_at_the_first_step_starts_over() -> None:
    w = at_share(10)
    w.evaluate(1, firing=["health/down"])
    w.evaluate(1)
    w.plan.resume(w.t)
    assert w.evaluate(1) == []
    assert sets(w.evaluate(58))[0].share == 10  # the 0% step, begun at the rollback, held 1m


def test_firing_below_the_first_step_writes_nothing_and_holds() -> None:
    w = world()
    w.evaluate()
    assert w.evaluate(1, firing=["health/down"]) == []
    assert w.plan.history[-1].reason == "regression firing: health/down; nothing to roll back"
    assert w.plan.status(w.t).why == "regression firing: health/down"
    assert w.written == []
    # resolved: the verdict decides, NO-GO holds
    fired = ("candidate down on health fired 10:02 UTC, resolved after 1 min",)
    assert w.evaluate(60, readiness=Verdict.NO_GO, readiness_reasons=fired) == []
    assert w.plan.status(w.t).why == f"NO-GO: {fired[0]}"
    assert sets(w.evaluate(1))[0].share == 10


def test_hand_change_pauses_and_is_never_overwritten() -> None:
    w = at_share(25)
    w.weights = {"heroku": 70, "aws": 30}

    w.evaluate(5)

    assert w.plan.state is Phase.PAUSED
    assert w.plan.status(w.t).why == (
        "weights changed by hand: heroku 75 -> 70, aws 25 -> 30; resume to continue"
    )
    assert w.kinds()[-1] == "hand_change"
    assert w.notes[-1].text.startswith(
        "api.example.com: weights changed by hand: heroku 75 -> 70, aws 25 -> 30. "
        "The shift is paused and will not overwrite them"
    )
    # nothing is written: not after the hold, not on a regression
    assert w.evaluate(3600) == []
    assert w.evaluate(1, firing=["health/down"]) == []
    assert w.kinds().count("hand_change") == 1
    assert w.weights == {"heroku": 70, "aws": 30} and w.written == [10, 25]

    w.evaluate(120)
    w.run(w.plan.resume(w.t))
    assert w.evaluate(1) == []  # the person's 30% is the new starting point
    assert (w.plan.share, w.plan.next_index) == (30, 2)
    # the ledger has watched the person's 30% since they set it: only the TTL is left to wait
    assert w.evaluate(34) == []
    assert [(a.share, a.expected) for a in sets(w.evaluate(1))] == [(50, {"heroku": 70, "aws": 30})]


def test_hand_change_after_a_rollback_is_kept_on_resume() -> None:
    w = at_share(25)
    w.evaluate(1, firing=["health/down"])
    w.evaluate(1)
    w.weights = {"heroku": 95, "aws": 5}
    assert w.evaluate(1) == [w.notes[-1]]
    assert w.plan.state is Phase.ROLLED_BACK
    w.plan.resume(w.t)
    w.evaluate(1)
    assert (w.plan.share, w.plan.next_index) == (5, 0)
    assert w.evaluate(58) == []  # 5% is above rollback_to: its step (since the hand change) holds
    assert sets(w.evaluate(1))[0].share == 10


def test_manual_mode_waits_for_approval() -> None:
    w = world(mode="manual")
    w.evaluate()
    assert w.evaluate(1) == [w.notes[-1]]
    assert w.plan.state is Phase.WAITING_APPROVAL
    assert w.notes[-1].text == (
        f"api.example.com: readiness GO for aws at 0% ({GO_SUMMARY}); approve to go to 10%"
    )
    assert w.evaluate(3600) == []
    assert w.plan.status(w.t).why == "waiting for approval to go to 10%"

    w.run(w.plan.approve(w.t))
    assert w.written == [10] and w.plan.state is Phase.HOLDING
    with pytest.raises(Refused, match=r"^nothing to approve: holding at 10% \(1m left\)$"):
        w.plan.approve(w.t)
    w.evaluate(60)
    assert w.plan.state is Phase.WAITING_APPROVAL
    w.evaluate(1, pending=["health/latency"])
    with pytest.raises(Refused, match=r"^cannot approve now: regression pending: health/latency$"):
        w.plan.approve(w.t)
    w.evaluate(1)
    w.run(w.plan.approve(w.t))
    assert w.written == [10, 25]
    assert w.kinds().count("approved") == 2


def test_manual_mode_asks_for_approval_only_on_go() -> None:
    w = world(mode="manual")
    w.evaluate()
    for _ in range(3):
        assert w.evaluate(600, readiness=Verdict.WAIT, readiness_reasons=WAIT) == []
    assert w.plan.state is Phase.HOLDING and "waiting_approval" not in w.kinds()
    with pytest.raises(Refused, match=r"^nothing to approve: holding at 0%$"):
        w.plan.approve(w.t)
    w.evaluate(1)  # GO
    assert w.plan.state is Phase.WAITING_APPROVAL
    # the verdict went back to WAIT (or NO-GO): approving is refused with its reasons
    w.evaluate(1, readiness=Verdict.WAIT, readiness_reasons=WAIT)
    assert w.plan.status(w.t).waiting == ("waiting for approval to go to 10%", *WAIT)
    with pytest.raises(
        Refused,
        match=r"^cannot approve now: 12 more minutes; 310 more candidate requests on traffic:all$",
    ):
        w.plan.approve(w.t)
    w.evaluate(1, readiness=Verdict.NO_GO, readiness_reasons=NO_GO)
    with pytest.raises(Refused, match=r"^cannot approve now: NO-GO: errors regression on health"):
        w.plan.approve(w.t)
    w.evaluate(1, readiness=None)
    with pytest.raises(Refused, match=r"^cannot approve now: readiness not judged yet$"):
        w.plan.approve(w.t)
    assert w.written == []
    w.evaluate(1)
    w.run(w.plan.approve(w.t))
    assert w.written == [10]


def test_a_regression_while_waiting_for_approval_rolls_back() -> None:
    w = world(mode="manual")
    w.evaluate()
    w.evaluate(1)
    w.run(w.plan.approve(w.t))
    w.evaluate(60)
    assert w.plan.state is Phase.WAITING_APPROVAL
    w.evaluate(1, firing=["health/down"])
    assert w.plan.state is Phase.ROLLED_BACK and w.written == [10, 0]


def test_pause_stops_the_steps_but_not_the_rollback() -> None:
    w = at_share(25)
    w.run(w.plan.pause(w.t))
    assert w.evaluate(3600) == []
    assert w.plan.status(w.t).why == "paused by a person; resume to continue"

    w.evaluate(1, firing=["health/errors"])
    assert w.plan.state is Phase.ROLLED_BACK and w.written == [10, 25, 0]


def test_resume_after_pause_keeps_the_hold_already_done() -> None:
    w = at_share(25)
    w.evaluate(30)
    w.plan.pause(w.t)
    w.evaluate(10)
    w.plan.resume(w.t)
    assert w.plan.hold_left(w.t) == 20
    assert w.evaluate(19) == []
    assert sets(w.evaluate(1))[0].share == 50


def test_control_calls_refuse_clearly_when_they_do_not_apply() -> None:
    w = world()
    w.evaluate()
    with pytest.raises(Refused, match=r"^nothing to approve: the plan runs in auto mode$"):
        w.plan.approve(w.t)
    with pytest.raises(Refused, match=r"^nothing to roll back: the candidate is at 0% \(roll"):
        w.plan.rollback(w.t)
    w.evaluate(1)
    with pytest.raises(Refused, match=r"^not paused: holding at 10% \(1m left\)$"):
        w.plan.resume(w.t)
    w.plan.pause(w.t, "paused by alice")
    with pytest.raises(Refused, match=r"^already paused \(paused by alice\)$"):
        w.plan.pause(w.t)
    w.run(w.plan.rollback(w.t))
    assert w.written == [10, 0]
    with pytest.raises(Refused, match=r"^already rolled back to 0%$"):
        w.plan.rollback(w.t)
    with pytest.raises(Refused, match=r"^already stopped: rolled back to 0%; resume to continue$"):
        w.plan.pause(w.t)

    done = at_share(100)
    done.evaluate(60)
    assert done.plan.state is Phase.DONE
    with pytest.raises(Refused, match=r"^nothing to pause: the shift is done at 100%$"):
        done.plan.pause(done.t)
    with pytest.raises(Refused, match=r"^not paused: the shift is done at 100%$"):
        done.plan.resume(done.t)
    # a person may still take it all back
    done.run(done.plan.rollback(done.t, "rolled back by bob"))
    assert done.weights == {"heroku": 100, "aws": 0}
    assert (
        done.plan.status(done.t).why == "rolled back to 0% (rolled back by bob); resume to continue"
    )


def test_rollback_while_the_rollback_is_in_flight_cannot_be_resumed() -> None:
    w = at_share(25)
    w.auto_apply = False
    w.run(w.plan.rollback(w.t))
    w.evaluate(1)
    with pytest.raises(Refused, match=r"^the rollback to 0% is still being applied$"):
        w.plan.resume(w.t)


# --- failures and restarts --------------------------------------------------------------------


def test_failed_write_is_checked_retried_then_pauses() -> None:
    w = at_share(10)
    w.auto_apply = False
    first = sets(w.evaluate(61))[0]

    failed = w.plan.change_failed(w.t, first.seq, "throttling (Rate exceeded)")
    assert [n.kind for n in failed] == ["change_failed"]
    assert w.plan.status(w.t).why == (
        "checking whether the change to 25% landed (the write failed: throttling (Rate "
        "exceeded)): waiting for the Route53 weights"
    )
    assert w.evaluate(1, weights=None) == []
    again = sets(w.evaluate(1))  # Route53 still has 90/10: it never landed
    assert [(a.share, a.seq) for a in again] == [(25, first.seq)]
    w.plan.change_failed(w.t, first.seq, "throttling (Rate exceeded)")
    assert sets(w.evaluate(1))
    w.plan.change_failed(w.t, first.seq, "throttling (Rate exceeded)")

    actions = w.evaluate(1)

    assert sets(actions) == []
    assert w.plan.state is Phase.PAUSED
    assert w.plan.status(w.t).why == (
        "setting 25% failed 3 times: throttling (Rate exceeded); resume to continue"
    )
    w.plan.resume(w.t)
    assert [a.share for a in sets(w.evaluate(1))] == [25]


def test_failed_write_that_landed_after_all_is_confirmed() -> None:
    w = at_share(10)
    w.auto_apply = False
    change = sets(w.evaluate(61))[0]
    w.plan.change_failed(w.t, change.seq, "timeout (change C1 not INSYNC after 180s)")
    w.weights = dict(change.weights)

    assert [n.kind for n in w.evaluate(1)] == ["step"]
    assert (w.plan.state, w.plan.share, w.plan.since) == (Phase.HOLDING, 25, w.t)


def test_failed_rollback_is_retried_for_as_long_as_it_takes() -> None:
    w = at_share(50)
    w.auto_apply = False
    back = sets(w.evaluate(1, firing=["health/down"]))[0]
    for _ in range(5):
        w.plan.change_failed(w.t, back.seq, "timeout (no answer)")
        assert [a.share for a in sets(w.evaluate(1, firing=["health/down"]))] == [0]
    assert w.plan.state is Phase.ROLLED_BACK


def restart(w: World, path: Path) -> World:
    w.plan.save(path)
    plan = ShiftPlan.load(path, w.plan.settings, now=w.t)
    again = World(plan, w.weights, w.t)
    again.written = list(w.written)
    again.step_weights, again.step_start = w.step_weights, w.step_start  # the ledger is saved too
    return again


def test_restart_mid_hold_resumes_where_it_was(tmp_path: Path) -> None:
    w = at_share(25)
    w.evaluate(40)
    before = w.plan.status(w.t)

    w = restart(w, tmp_path / "shift.json")

    assert w.plan.status(w.t).why == "waiting for the first evaluation"
    assert w.plan.hold_left(w.t) == 20
    w.evaluate(0)
    after = w.plan.status(w.t)
    assert after.to_dict() == before.to_dict()
    assert (after.state, after.share, after.hold_left, after.since) == (
        Phase.HOLDING,
        25,
        20,
        before.since,
    )
    assert w.evaluate(19) == []
    assert [a.share for a in sets(w.evaluate(1))] == [50]
    assert w.written == [10, 25, 50]


@pytest.mark.parametrize(
    ("route53", "outcome"),
    [
        ({"heroku": 50, "aws": 50}, "landed"),
        ({"heroku": 75, "aws": 25}, "reissued"),
        ({"heroku": 60, "aws": 40}, "hand"),
    ],
)
def test_restart_with_a_change_in_flight_reads_route53_first(
    tmp_path: Path, route53: dict[str, int], outcome: str
) -> None:
    w = at_share(25)
    w.auto_apply = False
    issued = sets(w.evaluate(61))[0]
    assert issued.share == 50

    w = restart(w, tmp_path / "shift.json")
    assert w.plan.state is Phase.RUNNING
    assert w.evaluate(1, weights=None) == []
    assert w.plan.status(w.t).why == (
        "checking whether the change to 50% landed (after a restart): waiting for the Route53 "
        "weights"
    )
    w.weights = route53
    w.auto_apply = False
    actions = w.evaluate(1)

    if outcome == "landed":
        assert sets(actions) == [] and [n.kind for n in actions] == ["step"]
        assert (w.plan.state, w.plan.share, w.plan.next_index) == (Phase.HOLDING, 50, 3)
    elif outcome == "reissued":
        assert [(a.share, a.seq, a.expected) for a in sets(actions)] == [
            (50, issued.seq, {"heroku": 75, "aws": 25})
        ]
        assert w.plan.state is Phase.RUNNING
    else:
        assert sets(actions) == [] and w.plan.state is Phase.PAUSED
        assert w.plan.pause_reason == "weights changed by hand: heroku 75 -> 60, aws 25 -> 40"


def test_restart_keeps_a_rollback_and_its_reason(tmp_path: Path) -> None:
    w = at_share(50)
    w.evaluate(1, firing=["health/down"])
    w = restart(w, tmp_path / "shift.json")
    assert w.plan.state is Phase.ROLLED_BACK and w.plan.failed_share == 50
    assert w.evaluate(60) == []
    w.plan.resume(w.t)
    assert sets(w.evaluate(1))[0].share == 25


def test_corrupt_state_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "shift.json"
    path.write_text("{not json")

    with pytest.raises(ValueError) as caught:
        ShiftPlan.load(path, SETTINGS, now=1234)

    aside = tmp_path / "shift.json.corrupt-1234"
    assert str(caught.value).startswith(f"{path}: corrupt state file (not JSON")
    assert str(caught.value).endswith(f"moved aside to {aside}")
    assert aside.read_text() == "{not json" and not path.exists()
    assert ShiftPlan.load(path, SETTINGS).state is Phase.HOLDING  # afresh


def test_state_that_does_not_make_sense_is_moved_aside(tmp_path: Path) -> None:
    w = at_share(25)
    data = w.plan.to_dict()
    data["phase"] = "sleeping"
    path = tmp_path / "shift.json"
    path.write_text(json.dumps(data))

    with pytest.raises(ValueError, match=r"corrupt state file \(phase: Input should be 'running'"):
        ShiftPlan.load(path, SETTINGS, now=5)
    assert (tmp_path / "shift.json.corrupt-5").exists()


def test_a_dry_run_state_is_not_used_for_writes(tmp_path: Path) -> None:
    dry = at_share(50, dry_run=True)
    dry.plan.save(tmp_path / "shift.json")

    plan = ShiftPlan.load(tmp_path / "shift.json", SETTINGS, now=dry.t)

    assert (plan.state, plan.share, plan.written) == (Phase.HOLDING, None, None)
    assert plan.history[-1].reason == "saved plan was a dry run: starting a new plan"


def test_dry_run_walks_the_plan_without_the_weights_moving() -> None:
    w = world(dry_run=True)
    w.auto_apply = False
    w.evaluate()
    for share in (10, 25, 50, 100):
        action = sets(w.evaluate(61))[0]
        assert action.share == share
        w.run(w.plan.change_applied(w.t, action.seq))
    assert w.weights == {"heroku": 100, "aws": 0}  # the writer wrote nothing
    assert w.plan.state is Phase.HOLDING and w.plan.share == 100
    w.evaluate(61)
    assert w.plan.state is Phase.DONE


def test_new_steps_on_reload_re_aim_the_next_step() -> None:
    w = at_share(25)
    w.plan.replace_settings(w.t, dataclasses.replace(SETTINGS, steps=(10, 30, 100)))
    assert w.plan.next_index == 1
    assert sets(w.evaluate(60))[0].share == 30
    with pytest.raises(ValueError, match="another record"):
        w.plan.replace_settings(w.t, dataclasses.replace(SETTINGS, record="www.example.com"))
    with pytest.raises(ValueError, match="starts or stops writing"):
        w.plan.replace_settings(w.t, dataclasses.replace(SETTINGS, dry_run=True))
    assert w.plan.settings.steps == (10, 30, 100)


def test_weights_read_before_the_last_change_are_not_a_hand_change() -> None:
    w = at_share(10)
    confirmed = w.t
    stale = {"heroku": 100, "aws": 0}  # read by the poller just before the step landed

    assert w.evaluate(1, weights=stale, read_at=confirmed - 1) == []
    assert w.plan.state is Phase.HOLDING
    assert w.plan.status(w.t).waiting == (
        "DNS: 34s left of the record's TTL + margin",
        "waiting for a fresh read of the Route53 weights",
        "59 more seconds",
    )
    w.evaluate(1, weights=stale, read_at=confirmed + 1)
    assert w.plan.state is Phase.PAUSED


def test_history_is_bounded_and_status_is_json() -> None:
    w = at_share(10)
    for _ in range(HISTORY_LIMIT):
        w.plan.pause(w.t)
        w.plan.resume(w.t)
    assert len(w.plan.history) == HISTORY_LIMIT
    assert w.plan.history[-1].reason == "resumed by a person"
    status = json.loads(json.dumps(w.plan.status(w.t).to_dict()))
    assert status["state"] == "holding"
    assert (status["share"], status["current_step"], status["next_step"]) == (10, 0, 1)
    assert status["target_weights"] == {"heroku": 90, "aws": 10}
    assert status["hold_seconds"] == 60 and len(status["history"]) == HISTORY_LIMIT


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="rollback_to must be >= 0 and below the first step"):
        dataclasses.replace(SETTINGS, rollback_to=10)
    with pytest.raises(ValueError, match="steps must increase strictly"):
        dataclasses.replace(SETTINGS, steps=(10, 10))


# --- dry run: every text says so, beside the weights Route53 really holds ----------------------

REAL = {"heroku": 90, "aws": 10}
HOLDS = "Route53 holds aws 10% (heroku 90, aws 10)"
# words that would tell a reader a change happened
AS_IF_DONE = re.compile(r"INSYNC|confirmed|rolled back|now gets|carries|\bsetting\b|\bheld\b")


class DryWorld(World):
    """The daemon in a dry run: the writer writes nothing, so Route53 keeps its weights."""

    def apply(self, action: SetWeights) -> None:
        self.written.append(action.share)
        self.run(self.plan.change_applied(self.t, action.seq))


def dry_world(**settings: Any) -> DryWorld:
    return DryWorld(ShiftPlan(dataclasses.replace(SETTINGS, dry_run=True, **settings)), REAL)


def assert_all_dry(w: World) -> None:
    texts = [n.text for n in w.notes] + [t.reason for t in w.plan.history]
    status = w.plan.status(w.t)
    texts += [*status.waiting, status.position]
    assert w.notes and all(n.dry_run for n in w.notes)
    for text in texts:
        assert text.startswith("DRY RUN: "), text
        assert not AS_IF_DONE.search(text), text
    assert status.why == "" or status.why.startswith("DRY RUN: ")


def test_dry_run_says_what_it_would_set_beside_what_route53_holds() -> None:
    w = dry_world()
    w.evaluate()  # adopts 10%, the weights found
    found = w.plan.history[-1].reason
    assert found == "DRY RUN: found heroku 90, aws 10 in Route53 (aws at 10%)"
    w.evaluate(61)
    assert w.written == [25] and w.weights == REAL
    assert w.notes[-1].text == (
        "DRY RUN: api.example.com: would set aws to 25% (heroku 75, aws 25), was 10%; "
        f"nothing written; {HOLDS}; holding 1m as if it were set; plan 10% → [25%] → 50% → 100%"
    )
    assert [t.reason for t in w.plan.history[-2:]] == [
        f"DRY RUN: readiness GO at 10%: would set aws to 25% (heroku 75, aws 25); {HOLDS}",
        f"DRY RUN: acting as if aws were at 25% (heroku 75, aws 25): nothing written; {HOLDS}",
    ]
    status = w.plan.status(w.t)
    assert (status.share, status.real_share, status.real_weights) == (25, 10, REAL)
    # the last verdict was on the step before the change: the next evaluation brings this one's
    assert status.why == (
        "DRY RUN: DNS: 35s left of the record's TTL + margin; readiness not judged yet"
    )
    assert status.hold_left == 60
    w.evaluate(0)
    assert w.plan.status(w.t).waiting == (
        "DRY RUN: DNS: 35s left of the record's TTL + margin",
        "DRY RUN: 60 more seconds",
    )
    assert status.position == (
        f"DRY RUN: acting as if aws were at 25% (heroku 75, aws 25); nothing written; {HOLDS}"
    )
    data = json.loads(json.dumps(status.to_dict()))
    assert (data["share"], data["real_share"], data["real_weights"]) == (25, 10, REAL)
    assert data["target_weights"] == {"heroku": 75, "aws": 25} and data["dry_run"] is True

    w.evaluate(1, firing=["health.down.1"])
    told = {n.kind: n for n in w.notes[-2:]}  # the world applies the write before it tells
    assert told["rollback"].text == (
        "DRY RUN: api.example.com: would roll aws back from 25% to 0% (heroku 100, aws 0): "
        "regression firing: health.down.1; nothing written; "
        "Route53 still holds aws 10% (heroku 90, aws 10)"
    )
    assert told["rolled_back"].text == (
        "DRY RUN: api.example.com: would roll aws back to 0% (Route53 still holds 10%: "
        "heroku 90, aws 10); the shift is paused until a person resumes"
    )
    assert told["rolled_back"].about == told["rollback"].about == ("health.down.1",)
    status = w.plan.status(w.t)
    assert status.state is Phase.ROLLED_BACK and status.real_share == 10
    assert status.why == (
        "DRY RUN: stopped: would roll aws back to 0% (regression firing: health.down.1); "
        "Route53 still holds aws 10% (heroku 90, aws 10); resume to continue"
    )
    w.evaluate(1)
    w.run(w.plan.resume(w.t))
    w.evaluate(60)  # back to 10% on GO at 0% (its step began with the rollback)
    assert w.plan.share == 10
    w.run(w.plan.rollback(w.t))
    w.run(w.plan.resume(w.t))
    for _ in range(6):
        w.evaluate(61)
    assert w.plan.state is Phase.DONE and w.weights == REAL
    assert w.notes[-1].text == (
        "DRY RUN: api.example.com: the shift would be done: aws would carry 100% of the "
        f"traffic; nothing written; {HOLDS}"
    )
    assert_all_dry(w)


def test_dry_run_in_manual_mode_says_so_when_waiting_and_approved() -> None:
    w = dry_world(mode="manual")
    w.evaluate()
    w.evaluate(61)
    assert w.plan.state is Phase.WAITING_APPROVAL
    assert w.notes[-1].text == (
        "DRY RUN: api.example.com: readiness GO at 10%; approve to go to 25% "
        f"(nothing is written: {HOLDS})"
    )
    assert w.plan.status(w.t).why == "DRY RUN: waiting for approval to go to 25%"
    w.auto_apply = False
    w.run(w.plan.approve(w.t))
    assert w.notes[-1].text == (
        "DRY RUN: api.example.com: step to 25% approved; would set aws to 25% "
        f"(heroku 75, aws 25); {HOLDS}"
    )
    status = w.plan.status(w.t)
    assert status.why == f"DRY RUN: would set aws to 25% (heroku 75, aws 25); {HOLDS}"
    assert status.position == status.why
    w.run(w.plan.pause(w.t, "waiting for the DBA"))
    assert w.notes[-1].text == "DRY RUN: api.example.com: shift paused (waiting for the DBA)"
    assert_all_dry(w)


def test_dry_run_before_any_read_says_the_weights_are_unknown() -> None:
    w = dry_world()
    status = w.plan.status(w.t)
    assert (status.real_weights, status.real_share) == (None, None)
    assert status.position == "DRY RUN: nothing written; Route53's weights not read yet"
    assert status.why == "DRY RUN: waiting for the Route53 weights"


def test_a_plan_that_writes_never_says_dry_run_and_shows_what_route53_holds() -> None:
    w = at_share(10)
    status = w.plan.status(w.t)
    assert (status.real_weights, status.real_share) == ({"heroku": 90, "aws": 10}, 10)
    assert status.position == "aws at 10% (heroku 90, aws 10)"
    w.evaluate(1, firing=["health.down.1"])
    texts = [n.text for n in w.notes] + [t.reason for t in w.plan.history]
    assert not any("DRY RUN" in t for t in texts) and not any(n.dry_run for n in w.notes)


def test_plan_text() -> None:
    assert plan_text((10, 25, 50, 100)) == "10% → 25% → 50% → 100%"
    assert plan_text((10, 12.5, 100), 1) == "10% → [12.5%] → 100%"


def test_dry_run_refusals_never_say_a_rollback_happened() -> None:
    w = dry_world(mode="manual")
    w.evaluate()
    w.evaluate(61)
    w.run(w.plan.approve(w.t))
    w.run(w.plan.rollback(w.t, "asked by bob"))
    stopped = "would roll aws back to 0% (nothing written)"
    with pytest.raises(Refused, match=rf"^already stopped: {re.escape(stopped)}$"):
        w.plan.rollback(w.t)
    with pytest.raises(Refused, match=rf"^already stopped: {re.escape(stopped)}; resume to"):
        w.plan.pause(w.t)
    with pytest.raises(Refused, match=rf"^nothing to approve: stopped: {re.escape(stopped)}$"):
        w.plan.approve(w.t)
    w.run(w.plan.resume(w.t))
    w.evaluate(60)  # GO at 0%: its step began with the rollback
    w.run(w.plan.approve(w.t))
    with pytest.raises(Refused, match=r"^not paused: holding at 10% \(nothing written\) \(1m"):
        w.plan.resume(w.t)
    assert_all_dry(w)


def test_incidents_are_named_for_people_not_by_their_ids() -> None:
    """The daemon passes incident ids (for the Slack threads) and their names: texts use the
    names, `about` keeps the ids."""
    ids = {"health.latency.1796189904208": "latency on health"}
    w = started(world())
    w.evaluate(61, pending=list(ids), names=ids)
    assert w.plan.status(w.t).why == "regression pending: latency on health"
    w = at_share(50)
    w.evaluate(10)
    w.evaluate(1, firing=list(ids), names=ids)
    assert w.notes[-1].text.endswith("regression firing: latency on health")
    assert w.notes[-1].about == tuple(ids)
    assert "1796189904208" not in w.plan.status(w.t).why
