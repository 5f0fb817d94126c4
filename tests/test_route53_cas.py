"""Compare-and-swap weight writes (issue 14) against the write stand-in, which checks change
batches as Route53 does, over real sockets; one case against moto's server for the batch's
acceptance by a second implementation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from exporter.route53.plan import SetWeights, ShiftSettings
from exporter.route53.read import RecordSpec, Route53Error
from exporter.route53.runner import ShiftRunner
from exporter.route53.step import StepMark
from exporter.route53.write import Route53Writer, StaleWrite
from exporter.tasks import Supervisor
from tests.route53_standin import Failure, cname, running
from tests.route53_write_standin import Gate, WriteStandIn

pytestmark = pytest.mark.usefixtures("aws_env")

T = TypeVar("T")
PLATFORMS = {"heroku": "heroku", "aws": "aws"}
ELB = "k8s-ingress-1234.eu-west-1.elb.amazonaws.com"
ELB_ZONE = "Z32O12XQLNTSW2"
ZONE = "Z0CAS"
API = RecordSpec(ZONE, "api.example.com", "CNAME", PLATFORMS)
EDGE = RecordSpec(ZONE, "edge.example.com", "A", PLATFORMS)
STEP_NAME = "_cutover-step.api.example.com."
CHECK = "0b5c2e2a-1111-4222-8333-444455556666"


def zone_records() -> list[dict[str, Any]]:
    heroku = cname("api.example.com", "heroku", 90, "myapp.herokudns.com")
    heroku["HealthCheckId"] = CHECK
    return [
        heroku,
        cname("api.example.com", "aws", 10, ELB, ttl=30),
        {
            "Name": "edge.example.com",
            "Type": "A",
            "SetIdentifier": "heroku",
            "Weight": 90,
            "TTL": 300,
            "ResourceRecords": [{"Value": "192.0.2.10"}, {"Value": "192.0.2.11"}],
        },
        {
            "Name": "edge.example.com",
            "Type": "A",
            "SetIdentifier": "aws",
            "Weight": 10,
            "AliasTarget": {
                "HostedZoneId": ELB_ZONE,
                "DNSName": ELB + ".",
                "EvaluateTargetHealth": True,
            },
        },
        cname("www.example.com", "heroku", 1, "myapp.herokudns.com"),
    ]


@pytest.fixture
def standin() -> Iterator[WriteStandIn]:
    with running(WriteStandIn(zones={ZONE: zone_records()})) as server:
        yield server


@pytest.fixture
def writers() -> Iterator[Any]:
    made: list[Route53Writer] = []

    def make(url: str, **kwargs: Any) -> Route53Writer:
        kwargs.setdefault("poll_interval", 0.02)
        kwargs.setdefault("backoff", 0.05)
        kwargs.setdefault("compare_and_swap", True)
        writer = Route53Writer(endpoint_url=url, **kwargs)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close()


def client(url: str) -> Any:
    return boto3.client(
        "route53", endpoint_url=url, config=Config(retries={"total_max_attempts": 1})
    )


def weights_in(standin: WriteStandIn, spec: RecordSpec) -> dict[str, int]:
    return {sid: r["Weight"] for sid, r in standin.record_sets(ZONE, spec.name).items()}


def step_in(standin: WriteStandIn, name: str = STEP_NAME) -> list[str]:
    """The step record's values as the stand-in holds them; [] without one."""
    sets = standin.record_sets(ZONE, name)
    return [v["Value"] for r in sets.values() for v in r["ResourceRecords"]]


def refusals(standin: WriteStandIn) -> int:
    return sum(
        1 for call in standin.calls if call[:1] == ("change",) and call[2] == "InvalidChangeBatch"
    )


def actions(batch: Any) -> list[tuple[str, str, str, int | None]]:
    return [
        (
            c["Action"],
            c["ResourceRecordSet"]["Name"],
            c["ResourceRecordSet"].get("SetIdentifier", ""),
            c["ResourceRecordSet"].get("Weight"),
        )
        for c in batch["Changes"]
    ]


async def elsewhere(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on its own event loop in another thread: another replica. (Writers in one
    loop take turns per hosted zone, so they could never race.)"""
    return await asyncio.to_thread(asyncio.run, coro)


async def held(standin: WriteStandIn, coro: Coroutine[Any, Any, T]) -> tuple[asyncio.Task[T], Gate]:
    """Start a writer elsewhere and hold its submit at the stand-in: it has read, not written."""
    gate = Gate()
    standin.hold_next_change = gate
    task = asyncio.create_task(elsewhere(coro))
    assert await asyncio.to_thread(gate.arrived.wait, 10.0), "the held writer never submitted"
    return task, gate


# --- the stand-in checks batches as Route53 does ------------------------------------------------


def test_the_stand_in_refuses_a_stale_delete_and_applies_nothing_of_the_batch(
    standin: WriteStandIn,
) -> None:
    r53 = client(standin.url)
    stale = cname("api.example.com", "aws", 10, ELB, ttl=60)  # the TTL is 30
    other = cname("www.example.com", "aws", 5, ELB)

    with pytest.raises(ClientError) as caught:
        r53.change_resource_record_sets(
            HostedZoneId=ZONE,
            ChangeBatch={
                "Changes": [
                    {"Action": "CREATE", "ResourceRecordSet": other},
                    {"Action": "DELETE", "ResourceRecordSet": stale},
                ]
            },
        )

    error = caught.value.response["Error"]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Code"] == "InvalidChangeBatch"
    assert error["Message"] == (
        "[Tried to delete resource record set [name='api.example.com.', type='CNAME', "
        "set-identifier='aws'] but the values provided do not match the current values]"
    )
    # the CREATE before it was not applied either
    assert set(standin.record_sets(ZONE, "www.example.com")) == {"heroku"}
    assert weights_in(standin, API) == {"heroku": 90, "aws": 10}


def test_the_stand_in_refuses_a_create_of_an_existing_set_and_a_missing_delete(
    standin: WriteStandIn,
) -> None:
    r53 = client(standin.url)
    exists = cname("www.example.com", "heroku", 1, "myapp.herokudns.com")
    missing = cname("www.example.com", "aws", 1, ELB)

    with pytest.raises(ClientError) as caught:
        r53.change_resource_record_sets(
            HostedZoneId=ZONE,
            ChangeBatch={
                "Changes": [
                    {"Action": "CREATE", "ResourceRecordSet": exists},
                    {"Action": "DELETE", "ResourceRecordSet": missing},
                ]
            },
        )

    message = caught.value.response["Error"]["Message"]
    assert (
        "[name='www.example.com.', type='CNAME', set-identifier='heroku'] but it already exists"
        in message
    )
    assert (
        "[name='www.example.com.', type='CNAME', set-identifier='aws'] but it was not found"
        in message
    )


# --- the batch ---------------------------------------------------------------------------------


async def test_a_step_deletes_what_was_read_creates_the_new_sets_and_bumps_the_step_record(
    standin: WriteStandIn, writers: Any
) -> None:
    writer = writers(standin.url)

    first = await writer.apply_weights(API, {"heroku": 75, "aws": 25}, epoch=7, comment="to 25%")

    # step 0: no step record yet, so it is only created
    assert actions(first.change_batch) == [
        ("DELETE", "api.example.com.", "heroku", 90),
        ("DELETE", "api.example.com.", "aws", 10),
        ("CREATE", "api.example.com.", "heroku", 75),
        ("CREATE", "api.example.com.", "aws", 25),
        ("CREATE", STEP_NAME, "", None),
    ]
    changes = [c["ResourceRecordSet"] for c in first.change_batch["Changes"]]
    # exactly as read: TTLs, values, the health check; only the weight differs in the CREATE
    assert changes[0] == {**zone_records()[0], "Name": "api.example.com."}
    assert changes[1] == {**zone_records()[1], "Name": "api.example.com."}
    assert changes[2] == {**changes[0], "Weight": 75}
    assert changes[4] == {
        "Name": STEP_NAME,
        "Type": "TXT",
        "TTL": 60,
        "ResourceRecords": [{"Value": '"cutover step=1 epoch=7 to=heroku:75,aws:25"'}],
    }
    assert first.change_batch["Comment"] == "to 25%"
    assert (first.status, first.step, first.epoch) == ("INSYNC", 1, 7)
    assert weights_in(standin, API) == {"heroku": 75, "aws": 25}
    assert standin.record_sets(ZONE, "api.example.com")["heroku"]["HealthCheckId"] == CHECK

    second = await writer.apply_weights(API, {"heroku": 50, "aws": 50}, epoch=8)

    assert actions(second.change_batch) == [
        ("DELETE", "api.example.com.", "heroku", 75),
        ("DELETE", "api.example.com.", "aws", 25),
        ("DELETE", STEP_NAME, "", None),
        ("CREATE", "api.example.com.", "heroku", 50),
        ("CREATE", "api.example.com.", "aws", 50),
        ("CREATE", STEP_NAME, "", None),
    ]
    # the step record of step 1 is deleted exactly as it was written
    assert second.change_batch["Changes"][2]["ResourceRecordSet"] == changes[4]
    assert step_in(standin) == ['"cutover step=2 epoch=8 to=heroku:50,aws:50"']
    assert all(c["Action"] != "UPSERT" for b in standin.batches for c in b["Changes"])
    last = await writer.last_step(API)
    assert last == StepMark(step=2, epoch=8, weights={"heroku": 50, "aws": 50})


async def test_without_a_lease_the_step_record_says_so(standin: WriteStandIn, writers: Any) -> None:
    writer = writers(standin.url)
    assert await writer.last_step(API) is None

    result = await writer.apply_weights(API, {"heroku": 75, "aws": 25})

    assert (result.step, result.epoch) == (1, None)
    assert step_in(standin) == ['"cutover step=1 epoch=none to=heroku:75,aws:25"']
    assert await writer.last_step(API) == StepMark(1, None, {"heroku": 75, "aws": 25})


async def test_an_alias_and_a_plain_record_in_one_group_are_swapped_exactly(
    standin: WriteStandIn, writers: Any
) -> None:
    writer = writers(standin.url)

    for weights in ({"heroku": 0, "aws": 100}, {"heroku": 50, "aws": 50}):
        await writer.apply_weights(EDGE, weights, epoch=3)

    sets = standin.record_sets(ZONE, "edge.example.com")
    assert sets["aws"] == {
        "Name": "edge.example.com.",
        "Type": "A",
        "SetIdentifier": "aws",
        "Weight": 50,
        "AliasTarget": {
            "HostedZoneId": ELB_ZONE,
            "DNSName": ELB + ".",
            "EvaluateTargetHealth": True,
        },
    }
    assert sets["heroku"]["ResourceRecords"] == [{"Value": "192.0.2.10"}, {"Value": "192.0.2.11"}]
    assert sets["heroku"]["TTL"] == 300
    deleted_alias = standin.batches[-1]["Changes"][1]["ResourceRecordSet"]
    assert deleted_alias["SetIdentifier"] == "aws" and "TTL" not in deleted_alias
    assert step_in(standin, "_cutover-step.edge.example.com") == [
        '"cutover step=2 epoch=3 to=heroku:50,aws:50"'
    ]
    assert refusals(standin) == 0


# --- lost races --------------------------------------------------------------------------------


async def test_of_two_writers_that_read_the_same_state_the_first_to_submit_wins(
    standin: WriteStandIn, writers: Any
) -> None:
    stale_writer, winner = writers(standin.url), writers(standin.url)
    task, gate = await held(
        standin, stale_writer.apply_weights(API, {"heroku": 0, "aws": 100}, epoch=4)
    )

    won = await winner.apply_weights(API, {"heroku": 75, "aws": 25}, epoch=5)
    gate.release.set()
    with pytest.raises(StaleWrite) as caught:
        await task

    assert won.status == "INSYNC"
    lost = caught.value
    assert (lost.reason, lost.code, lost.step) == ("other", "StaleWrite", 0)
    assert str(lost).startswith(
        "other (api.example.com CNAME in Z0CAS changed after step 0 was read "
        "(another writer got in first); nothing was written: [Tried to delete resource record set "
    )
    # nothing of the stale batch: the winner's weights and step record, whole
    assert weights_in(standin, API) == {"heroku": 75, "aws": 25}
    assert step_in(standin) == ['"cutover step=1 epoch=5 to=heroku:75,aws:25"']
    assert len(standin.batches) == 1 and len(standin.refused) == 1
    # refused once, never sent again
    assert refusals(standin) == 1


async def test_a_batch_built_before_the_weights_went_away_and_came_back_fails(
    standin: WriteStandIn, writers: Any
) -> None:
    """A -> B -> A: the stale writer's DELETEs of the weighted sets match again; the step
    record's does not."""
    stale_writer, leader = writers(standin.url), writers(standin.url)
    await leader.apply_weights(API, {"heroku": 90, "aws": 10}, epoch=1)  # already: nothing sent
    await leader.apply_weights(API, {"heroku": 80, "aws": 20}, epoch=1)  # step 1
    task, gate = await held(
        standin, stale_writer.apply_weights(API, {"heroku": 0, "aws": 100}, epoch=1)
    )

    await leader.apply_weights(API, {"heroku": 50, "aws": 50}, epoch=2)  # step 2: B
    await leader.apply_weights(API, {"heroku": 80, "aws": 20}, epoch=2)  # step 3: A again
    gate.release.set()
    with pytest.raises(StaleWrite) as caught:
        await task

    assert caught.value.step == 1
    # the weighted sets it deletes are there exactly again: only the step record refused it
    assert (
        "[name='_cutover-step.api.example.com.', type='TXT'] but the values provided do not match"
        in str(caught.value)
    )
    assert "set-identifier" not in caught.value.message
    assert weights_in(standin, API) == {"heroku": 80, "aws": 20}
    assert step_in(standin) == ['"cutover step=3 epoch=2 to=heroku:80,aws:20"']
    assert refusals(standin) == 1


async def test_a_stale_writer_at_step_0_cannot_create_the_step_record_twice(
    standin: WriteStandIn, writers: Any
) -> None:
    stale_writer, winner = writers(standin.url), writers(standin.url)
    task, gate = await held(standin, stale_writer.apply_weights(API, {"heroku": 0, "aws": 100}))

    await winner.apply_weights(API, {"heroku": 75, "aws": 25})
    await winner.apply_weights(API, {"heroku": 90, "aws": 10})  # the weights it read, again
    gate.release.set()
    with pytest.raises(StaleWrite):
        await task

    assert weights_in(standin, API) == {"heroku": 90, "aws": 10}
    assert step_in(standin) == ['"cutover step=2 epoch=none to=heroku:90,aws:10"']


async def test_an_invalid_batch_that_is_no_race_stays_a_plain_error_and_is_not_retried(
    standin: WriteStandIn, writers: Any
) -> None:
    message = "RRSet of type CNAME with DNS name api.example.com. is not permitted as it conflicts with other records with the same DNS name in zone example.com."
    standin.change_fail_next = [Failure(400, "InvalidChangeBatch", message)]

    with pytest.raises(Route53Error) as caught:
        await writers(standin.url).apply_weights(API, {"heroku": 75, "aws": 25}, epoch=1)

    assert not isinstance(caught.value, StaleWrite)
    assert (caught.value.code, caught.value.detail) == ("InvalidChangeBatch", message)
    assert refusals(standin) == 1 and standin.batches == []


# --- the mode ----------------------------------------------------------------------------------


async def test_upsert_mode_writes_no_step_record_and_takes_no_epoch(
    standin: WriteStandIn, writers: Any
) -> None:
    writer = writers(standin.url, compare_and_swap=False)

    with pytest.raises(ValueError, match="an epoch needs compare-and-swap writes"):
        await writer.apply_weights(API, {"heroku": 75, "aws": 25}, epoch=1)
    result = await writer.apply_weights(API, {"heroku": 75, "aws": 25})

    assert [c["Action"] for c in result.change_batch["Changes"]] == ["UPSERT", "UPSERT"]
    assert (result.step, result.epoch) == (None, None)
    assert step_in(standin) == []
    assert weights_in(standin, API) == {"heroku": 75, "aws": 25}


async def test_a_dry_run_shows_the_compare_and_swap_batch_and_sends_nothing(
    standin: WriteStandIn, writers: Any
) -> None:
    result = await writers(standin.url, dry_run=True).apply_weights(
        API, {"heroku": 75, "aws": 25}, epoch=2
    )

    assert result.status == "DRY_RUN" and result.step is None
    assert [a for a, *_ in actions(result.change_batch)] == [
        "DELETE",
        "DELETE",
        "CREATE",
        "CREATE",
        "CREATE",
    ]
    assert standin.batches == [] and step_in(standin) == []


async def test_the_shift_runner_writes_compare_and_swap_with_the_epoch_it_is_given(
    standin: WriteStandIn,
) -> None:
    settings = ShiftSettings(
        record="api.example.com", baseline="heroku", candidate="aws", dry_run=False
    )
    tasks = Supervisor()
    runner = ShiftRunner(
        settings,
        API,
        state_path=None,
        endpoint_url=standin.url,
        render=lambda _: [],
        relay=lambda _notes, _doubtful: set(),
        tasks=tasks,
        compare_and_swap=True,
        epoch=lambda: 12,
    )
    action = SetWeights(
        seq=1,
        share=25.0,
        weights={"heroku": 75, "aws": 25},
        expected=None,
        rollback=False,
        reason="step to 25%",
    )
    try:
        runner.perform([action])
        await asyncio.gather(*tasks.group("shift-write"))
    finally:
        await runner.aclose()

    assert runner.changes == {"ok": 1}
    assert step_in(standin) == ['"cutover step=1 epoch=12 to=heroku:75,aws:25"']
    assert [c["Action"] for c in standin.batches[0]["Changes"]].count("DELETE") == 2


# --- the step record's value ---------------------------------------------------------------------


def test_a_step_mark_reads_back_what_it_wrote_and_nothing_foreign() -> None:
    mark = StepMark(step=41, epoch=3, weights={"heroku": 0, "aws": 255})

    assert mark.value() == '"cutover step=41 epoch=3 to=heroku:0,aws:255"'
    assert StepMark.parse(mark.value()) == mark
    assert StepMark.parse('"v=spf1 include:_spf.example.com ~all"') is None
    assert StepMark.parse('"cutover step=x epoch=3"') is None
    # cut at 255 characters: step and epoch survive, whole weights only
    many = StepMark(step=7, epoch=None, weights={f"platform-{i:03}": 100 for i in range(30)})
    assert len(many.value()) == 257
    back = StepMark.parse(many.value())
    assert back is not None and (back.step, back.epoch) == (7, None)
    assert 0 < len(back.weights) < 30 and set(back.weights.values()) == {100}


# --- moto ----------------------------------------------------------------------------------------


async def test_moto_takes_the_compare_and_swap_batches_of_an_alias_group(
    r53: Any, moto_url: str, writers: Any
) -> None:
    created = r53.create_hosted_zone(Name="example.com", CallerReference=str(uuid.uuid4()))
    zone_id = created["HostedZone"]["Id"].rsplit("/", 1)[-1]
    edge = [r for r in zone_records() if r["Name"] == "edge.example.com"]
    r53.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Changes": [{"Action": "CREATE", "ResourceRecordSet": r} for r in edge]},
    )
    spec = RecordSpec(zone_id, "edge.example.com", "A", PLATFORMS)
    writer = writers(moto_url)

    await writer.apply_weights(spec, {"heroku": 40, "aws": 60}, epoch=9)
    result = await writer.apply_weights(spec, {"heroku": 20, "aws": 80}, epoch=9)

    assert result.step == 2
    # Route53 refuses a TTL or values beside an AliasTarget, in a DELETE as in a CREATE
    alias = [c["ResourceRecordSet"] for c in result.change_batch["Changes"]][1]
    assert "AliasTarget" in alias and "TTL" not in alias and "ResourceRecords" not in alias
    assert await writer.last_step(spec) == StepMark(2, 9, {"heroku": 20, "aws": 80})
    listed = r53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    weights = {r["SetIdentifier"]: r["Weight"] for r in listed if r.get("SetIdentifier")}
    assert weights == {"heroku": 20, "aws": 80}
