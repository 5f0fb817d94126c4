"""The vantages' reports in the HA table (moto's DynamoDB server over HTTP): replicas' reports
combined, hostile items refused by name, silent and expired vantages dropping out, a table out of
reach; and the rounds of `SharedVantages` that feed the incidents on a synthetic wall clock."""

from __future__ import annotations

import json
import logging
import random
import zlib
from dataclasses import replace
from typing import Any

import pytest

from exporter.errors import DynamoError
from exporter.judging.judge import Evaluation, State
from exporter.judging.vantage import (
    CheckFigures,
    VantageReport,
    VantageSettings,
    next_report,
    observe,
)
from exporter.judging.vantage_verdicts import CombinedEvaluation
from exporter.store import dynamo
from exporter.store.lease import lease_pk
from exporter.store.vantage_board import MAX_REPORT_BYTES, DynamoVantageBoard
from exporter.store.vantages import SharedVantages
from tests.conftest import HA_TABLE, free_port
from tests.test_vantage import evaluation, verdict

TABLE = HA_TABLE
T0 = 1_700_000_000.0
INTERVAL = 5.0
EU, US, AP = "eu-west-1", "us-east-1", "ap-south-1"

pytestmark = pytest.mark.usefixtures("aws_env")


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def board(ddb: Any, migration: str, vantage: str, **kw: Any) -> DynamoVantageBoard:
    calls = dynamo.Calls(region="us-east-1", endpoint_url=None, timeout=5.0, client=ddb)
    return DynamoVantageBoard(
        table=TABLE,
        migration=migration,
        vantage=vantage,
        writer=f"{vantage}#test",
        calls=calls,
        **kw,
    )


def replica(
    b: DynamoVantageBoard, clock: Clock, checks: frozenset[str] = frozenset({"health"})
) -> SharedVantages:
    return SharedVantages(
        b,
        vantage=b.vantage,
        settings=VantageSettings(interval=INTERVAL, confirm=2, quorum=2),
        checks=lambda: checks,
        leads=lambda: True,
        clock=clock,
    )


class Fed:
    """What a round fed the incidents."""

    def __init__(self) -> None:
        self.checks: dict[str, CombinedEvaluation] = {}

    def __call__(self, check: str, evaluation: CombinedEvaluation) -> None:
        self.checks[check] = evaluation


def nothing(check: str, evaluation: CombinedEvaluation) -> None:
    return None


def clean() -> Evaluation:
    """Every signal ok (the shared helper's `down` has too few samples)."""
    return replace(evaluation(State.OK), down=verdict("down", State.OK))


def report_of(vantage: str, at: float) -> VantageReport:
    return next_report(None, vantage, at, {"health": observe(clean(), False)})


def put_raw(ddb: Any, migration: str, sk: str, **attributes: Any) -> None:
    item = {"pk": {"S": lease_pk(migration)}, "sk": {"S": sk}, **attributes}
    ddb.put_item(TableName=TABLE, Item=item)


def expires(at: float = T0 + 600) -> dict[str, str]:
    return {"N": str(int(at))}


def packed(data: dict[str, Any]) -> dict[str, bytes]:
    return {"B": zlib.compress(json.dumps(data).encode())}


async def test_two_replicas_reports_are_combined_and_a_streak_fires(
    ddb: Any, migration: str
) -> None:
    clock = Clock()
    eu, us = replica(board(ddb, migration, EU), clock), replica(board(ddb, migration, US), clock)
    eu.judged("health", evaluation(State.OK), False)
    us.judged("health", evaluation(State.REGRESSED), False)
    fed = Fed()
    try:
        await us.round(nothing)
        await eu.round(fed)
        snap = eu.snapshot()
        assert [(line.vantage, line.health, line.round) for line in snap.lines] == [
            (EU, "healthy", 1),
            (US, "healthy", 1),
        ]
        latency = fed.checks["health"].latency
        # seen from one vantage for one round: pending (an incident opens, none fires)
        assert (latency.state, latency.pending, latency.significant) == (State.OK, True, False)
        assert latency.vantages == "seen from us-east-1 for one round, 2 vantages needed"
        # the message shows the figures of the vantage that saw it, not EU's clean ones
        assert latency.as_dict()["figures_from"] == US
        assert not snap.may_advance
        assert "us-east-1 sees a latency regression on health" in snap.reasons
        assert eu.waits(["health"]) == snap.reasons
        assert eu.waits([]) == ()  # a record without probe checks is not the vantages' to hold

        clock.t += INTERVAL
        await us.round(nothing)
        await eu.round(fed)
        latency = fed.checks["health"].latency
        assert (latency.state, latency.significant) == (State.REGRESSED, True)
        assert latency.vantages == "seen from us-east-1 on 2 rounds in a row"

        # EU sees it too: confirmed by two vantages, EU's own figures
        clock.t += INTERVAL
        eu.judged("health", evaluation(State.REGRESSED), False)
        await eu.round(fed)
        latency = fed.checks["health"].latency
        assert latency.vantages == "seen from eu-west-1 and us-east-1, 2 needed"
        assert "figures_from" not in latency.as_dict()
    finally:
        eu.close()
        us.close()


async def test_a_corrupt_or_hostile_item_is_refused_by_name_and_the_round_goes_on(
    ddb: Any, migration: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    good = report_of(US, T0).to_dict()
    bad: dict[str, dict[str, Any]] = {
        "vantage#garbage": {"report": {"B": b"not zlib at all"}, "expires": expires()},
        "vantage#liar": {"report": packed(good), "expires": expires()},
        "vantage#bomb": {
            "report": {"B": zlib.compress(b" " * (MAX_REPORT_BYTES + 1))},
            "expires": expires(),
        },
        "vantage#bad name!": {"report": packed(good), "expires": expires()},
        "vantage#stringy": {"report": {"S": json.dumps(good)}, "expires": expires()},
        "vantage#future": {
            "report": packed({**report_of(AP, T0).to_dict(), "version": 2}),
            "expires": expires(),
        },
        "vantage#noexpiry": {"report": packed(good)},
    }
    for sk, attributes in bad.items():
        put_raw(ddb, migration, sk, **attributes)
    us = board(ddb, migration, US)
    await us.publish(report_of(US, T0))
    eu = replica(board(ddb, migration, EU), clock)
    try:
        with caplog.at_level(logging.WARNING, logger="cutover.ha"):
            await eu.round(nothing)
        refused = {r.getMessage() for r in caplog.records}
        expected = {
            "vantage#garbage": "incorrect header check",
            "vantage#liar": "report: vantage 'us-east-1' in 'liar''s item",
            "vantage#bomb": f"report: inflates to more than {MAX_REPORT_BYTES} bytes",
            "vantage#bad name!": "'bad name!' is not a vantage name",
            "vantage#stringy": "report: missing, or not a binary attribute",
            "vantage#future": "version: 2 is not a report version this reads (1)",
            "vantage#noexpiry": "no attribute 'expires'",
        }
        for sk, why in expected.items():
            assert any(sk in m and why in m for m in refused), (sk, why, refused)
        assert eu.board.errors["corrupt"] == len(bad)
        # what could be read is combined; the refused are not there at all
        assert [line.vantage for line in eu.snapshot().lines] == [EU, US]
        # logged once: the next round counts them again but says nothing new
        caplog.clear()
        clock.t += 1
        await eu.round(nothing)
        assert not [r for r in caplog.records if "refused" in r.getMessage()]
        assert eu.board.errors["corrupt"] == 2 * len(bad)
    finally:
        eu.close()
        us.close()


async def test_a_silent_vantage_drops_out_visibly_and_an_expired_one_is_gone(
    ddb: Any, migration: str
) -> None:
    clock = Clock()
    us = board(ddb, migration, US)
    ap = board(ddb, migration, AP, expires_after=30.0)
    await us.publish(report_of(US, T0 - 3 * INTERVAL))  # three rounds ago: silent
    await ap.publish(report_of(AP, T0 - 31.0))  # past its expiry: gone
    eu = replica(board(ddb, migration, EU), clock)
    eu.judged("health", clean(), False)
    try:
        await eu.round(nothing)
        lines = {line.vantage: line for line in eu.snapshot().lines}
        assert set(lines) == {EU, US}
        assert (lines[US].health, lines[US].healthy, lines[US].age) == ("silent", False, 15.0)
        assert lines[EU].health == "healthy"
        # the silent vantage holds the steps (quorum 2 of the 2 known), and says so
        assert eu.waits(["health"]) == ("only 1 of 2 vantages healthy (us-east-1 silent for 15 s)",)
        # it reports again: healthy, and the two agree
        await us.publish(report_of(US, clock.t))
        clock.t += 1
        await eu.round(nothing)
        assert [line.health for line in eu.snapshot().lines] == ["healthy", "healthy"]
        assert eu.waits(["health"]) == ()
        assert eu.snapshot().may_advance
    finally:
        for b in (us, ap):
            b.close()
        eu.close()


async def test_an_unreachable_table_is_counted_logged_once_and_this_vantage_goes_on(
    aws_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    calls = dynamo.Calls(
        region="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}", timeout=3.0
    )
    b = DynamoVantageBoard(
        table=TABLE, migration="m-unreachable", vantage=EU, writer="eu#1", calls=calls
    )
    eu = replica(b, clock)
    eu.judged("health", evaluation(State.OK), False)
    fed = Fed()
    try:
        with caplog.at_level(logging.WARNING, logger="cutover.ha"):
            await eu.round(fed)
            clock.t += INTERVAL
            await eu.round(fed)
        warnings = [r.getMessage() for r in caplog.records]
        assert sum("cannot write the vantage reports: unreachable" in m for m in warnings) == 1
        assert sum("cannot read the vantage reports: unreachable" in m for m in warnings) == 1
        assert b.errors["unreachable"] == 4
        snap = eu.snapshot()
        assert snap.failing is not None and snap.failing.startswith("write: unreachable")
        # this replica's own report still counts: it alone is known, so it makes the quorum
        assert [line.vantage for line in snap.lines] == [EU]
        assert fed.checks["health"].latency.state is State.OK
    finally:
        eu.close()


async def test_a_report_too_big_for_an_item_is_not_written(ddb: Any, migration: str) -> None:
    rng = random.Random(1)
    clean = observe(evaluation(State.OK), False)
    checks = {
        f"check-{i:05d}-{rng.getrandbits(64):016x}": replace(
            clean, figures=CheckFigures(*(rng.random() for _ in range(4)))
        )
        for i in range(12_000)
    }
    b = board(ddb, migration, EU)
    try:
        with pytest.raises(DynamoError, match="more than the 350000 an item may hold"):
            await b.publish(next_report(None, EU, T0, checks))
        assert b.errors["too_large"] == 1
        assert await b.read(T0) == []  # nothing was written
    finally:
        b.close()


async def test_two_replicas_reporting_as_one_vantage_are_told_apart(
    ddb: Any, migration: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = board(ddb, migration, EU)
    second = DynamoVantageBoard(
        table=TABLE,
        migration=migration,
        vantage=EU,
        writer="eu-west-1#other",
        calls=dynamo.Calls(region="us-east-1", endpoint_url=None, timeout=5.0, client=ddb),
    )
    try:
        await first.publish(report_of(EU, T0))
        assert len(await first.read(T0)) == 1
        assert not [r for r in caplog.records if r.name == "cutover.ha"]
        await second.publish(report_of(EU, T0 + 1))
        with caplog.at_level(logging.WARNING, logger="cutover.ha"):
            await first.read(T0 + 1)
            await first.read(T0 + 2)
        (warning,) = [r.getMessage() for r in caplog.records if "another replica" in r.getMessage()]
        assert "another replica (eu-west-1#other) reports as vantage eu-west-1" in warning
    finally:
        first.close()
        second.close()
