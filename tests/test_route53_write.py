"""The Route53 writer against moto's server and the write stand-in, over real sockets."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from exporter.judging.readiness import Verdict
from exporter.route53.plan import Observation, Phase, SetWeights, ShiftPlan, ShiftSettings
from exporter.route53.read import RecordSpec, Route53Error, Route53Reader
from exporter.route53.write import Route53Writer, WeightsChanged
from tests.route53_standin import THROTTLED, Failure, cname, running
from tests.route53_write_standin import PRIOR_REQUEST, WriteStandIn

PLATFORMS = {"heroku": "heroku", "aws": "aws"}
ELB = "k8s-ingress-1234.eu-west-1.elb.amazonaws.com"
ELB_ZONE = "Z32O12XQLNTSW2"

# fake AWS credentials for every test here (tests/conftest.py: aws_env, moto_url, r53)
pytestmark = pytest.mark.usefixtures("aws_env")


Writers = Callable[..., Route53Writer]


@pytest.fixture
def writers() -> Iterator[Writers]:
    made: list[Route53Writer] = []

    def make(**kwargs: Any) -> Route53Writer:
        kwargs.setdefault("poll_interval", 0.02)
        kwargs.setdefault("backoff", 0.05)
        writer = Route53Writer(**kwargs)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close()


def upsert(rrset: dict[str, Any]) -> dict[str, Any]:
    return {"Action": "CREATE", "ResourceRecordSet": rrset}


@pytest.fixture
def zone(r53: Any) -> str:
    """A fresh zone per test: a weighted CNAME with a health check, an A group mixing a plain
    record and an alias, and neighbours that must stay untouched."""
    created = r53.create_hosted_zone(Name="example.com", CallerReference=str(uuid.uuid4()))
    zone_id: str = created["HostedZone"]["Id"].rsplit("/", 1)[-1]
    check = r53.create_health_check(
        CallerReference=str(uuid.uuid4()),
        HealthCheckConfig={"Type": "HTTPS", "FullyQualifiedDomainName": "myapp.herokudns.com"},
    )["HealthCheck"]["Id"]
    rrsets = [
        {
            "Name": "api.example.com",
            "Type": "CNAME",
            "SetIdentifier": "heroku",
            "Weight": 100,
            "TTL": 60,
            "ResourceRecords": [{"Value": "myapp.herokudns.com"}],
            "HealthCheckId": check,
        },
        {
            "Name": "api.example.com",
            "Type": "CNAME",
            "SetIdentifier": "aws",
            "Weight": 0,
            "TTL": 30,
            "ResourceRecords": [{"Value": ELB}],
        },
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
        {
            "Name": "api-internal.example.com",
            "Type": "CNAME",
            "SetIdentifier": "heroku",
            "Weight": 5,
            "TTL": 60,
            "ResourceRecords": [{"Value": "internal.example.net"}],
        },
        {
            "Name": "v1.api.example.com",
            "Type": "CNAME",
            "TTL": 300,
            "ResourceRecords": [{"Value": "old.example.net"}],
        },
    ]
    r53.change_resource_record_sets(
        HostedZoneId=zone_id, ChangeBatch={"Changes": [upsert(r) for r in rrsets]}
    )
    return zone_id


def everything(r53: Any, zone_id: str) -> list[dict[str, Any]]:
    pages = r53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone_id)
    return [rrset for page in pages for rrset in page["ResourceRecordSets"]]


def without_weights(rrsets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "Weight"} for r in rrsets]


async def read_weights(url: str, spec: RecordSpec) -> dict[str, int | None]:
    reader = Route53Reader([spec], endpoint_url=url)
    try:
        return (await reader.read(spec)).platform_weights()
    finally:
        reader.close()


# --- moto -----------------------------------------------------------------------------------


async def test_weights_are_written_in_one_batch_and_read_back(
    r53: Any, zone: str, moto_url: str, writers: Writers
) -> None:
    spec = RecordSpec(zone, "api.example.com", "CNAME", PLATFORMS)
    before = everything(r53, zone)

    result = await writers(endpoint_url=moto_url).apply_weights(
        spec, {"heroku": 75, "aws": 25}, comment="cutover: step to 25%"
    )

    assert (result.status, result.previous) == ("INSYNC", {"heroku": 100, "aws": 0})
    assert result.polls >= 1 and result.change_id
    # one batch, both record sets
    changes = result.change_batch["Changes"]
    assert [c["Action"] for c in changes] == ["UPSERT", "UPSERT"]
    assert {c["ResourceRecordSet"]["SetIdentifier"] for c in changes} == {"heroku", "aws"}
    assert result.change_batch["Comment"] == "cutover: step to 25%"
    assert await read_weights(moto_url, spec) == {"heroku": 75, "aws": 25}
    after = everything(r53, zone)
    # TTLs, values, the health check and every other record set are as they were
    assert without_weights(after) == without_weights(before)
    assert [r.get("Weight") for r in after] != [r.get("Weight") for r in before]
    heroku = next(
        r for r in after if r["Name"] == "api.example.com." and r["SetIdentifier"] == "heroku"
    )
    assert heroku["HealthCheckId"] and heroku["TTL"] == 60


async def test_alias_target_and_plain_values_are_kept(
    r53: Any, zone: str, moto_url: str, writers: Writers
) -> None:
    spec = RecordSpec(zone, "edge.example.com", "A", PLATFORMS)
    before = everything(r53, zone)

    result = await writers(endpoint_url=moto_url).apply_weights(spec, {"heroku": 0, "aws": 100})

    assert await read_weights(moto_url, spec) == {"heroku": 0, "aws": 100}
    after = everything(r53, zone)
    assert without_weights(after) == without_weights(before)
    aws = next(r for r in after if r["Name"] == "edge.example.com." and r["SetIdentifier"] == "aws")
    assert aws["AliasTarget"] == {
        "HostedZoneId": ELB_ZONE,
        "DNSName": ELB + ".",
        "EvaluateTargetHealth": True,
    }
    sent = {
        c["ResourceRecordSet"]["SetIdentifier"]: c["ResourceRecordSet"]
        for c in result.change_batch["Changes"]
    }
    assert "TTL" not in sent["aws"] and "ResourceRecords" not in sent["aws"]
    assert sent["heroku"]["TTL"] == 300
    assert sent["heroku"]["ResourceRecords"] == [{"Value": "192.0.2.10"}, {"Value": "192.0.2.11"}]


async def test_dry_run_writes_nothing_and_shows_the_exact_batch(
    r53: Any, zone: str, moto_url: str, writers: Writers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exporter.route53.write")
    spec = RecordSpec(zone, "api.example.com", "CNAME", PLATFORMS)
    before = everything(r53, zone)
    writer = writers(endpoint_url=moto_url, dry_run=True)

    dry = await writer.apply_weights(spec, {"heroku": 90, "aws": 10})

    assert (dry.status, dry.dry_run, dry.change_id, dry.polls) == ("DRY_RUN", True, None, 0)
    assert everything(r53, zone) == before
    assert await read_weights(moto_url, spec) == {"heroku": 100, "aws": 0}
    logged = [r.getMessage() for r in caplog.records if "dry run" in r.getMessage()]
    assert len(logged) == 1
    assert "heroku 100->90, aws 0->10" in logged[0] and '"UPSERT"' in logged[0]
    # what the dry run showed is what a real write sends
    real = await writer.apply_weights(spec, {"heroku": 90, "aws": 10}, dry_run=False)
    assert real.change_batch == dry.change_batch
    assert await read_weights(moto_url, spec) == {"heroku": 90, "aws": 10}


async def test_weights_changed_since_the_caller_looked_are_not_overwritten(
    r53: Any, zone: str, moto_url: str, writers: Writers
) -> None:
    spec = RecordSpec(zone, "api.example.com", "CNAME", PLATFORMS)

    with pytest.raises(WeightsChanged) as caught:
        await writers(endpoint_url=moto_url).apply_weights(
            spec, {"heroku": 75, "aws": 25}, expected={"heroku": 90, "aws": 10}
        )

    assert caught.value.found == {"heroku": 100, "aws": 0}
    assert "heroku 90 -> 100, aws 10 -> 0" in str(caught.value)
    assert await read_weights(moto_url, spec) == {"heroku": 100, "aws": 0}


async def test_unchanged_weights_send_nothing(zone: str, moto_url: str, writers: Writers) -> None:
    spec = RecordSpec(zone, "api.example.com", "CNAME", PLATFORMS)

    result = await writers(endpoint_url=moto_url).apply_weights(spec, {"heroku": 100, "aws": 0})

    assert (result.status, result.change_id, result.submit_attempts) == ("UNCHANGED", None, 0)


async def test_missing_record_set_is_not_found(zone: str, moto_url: str, writers: Writers) -> None:
    spec = RecordSpec(zone, "api-internal.example.com", "CNAME", PLATFORMS)

    with pytest.raises(Route53Error) as caught:
        await writers(endpoint_url=moto_url).apply_weights(spec, {"heroku": 1, "aws": 1})

    assert caught.value.reason == "not_found"
    assert "no weighted record set with SetIdentifier 'aws'" in str(caught.value)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"heroku": 0, "aws": 0}, "must not all be 0"),
        ({"heroku": 90}, "must name every platform"),
        ({"heroku": 90, "aws": 256}, "weight of aws: expected 0-255, got 256"),
    ],
)
async def test_impossible_weights_are_refused_before_any_call(
    writers: Writers, weights: dict[str, int], message: str
) -> None:
    # port 9 (discard) on loopback: any call would fail with a connection error, not this
    writer = writers(endpoint_url="http://127.0.0.1:9")
    spec = RecordSpec("ZNONE", "api.example.com", "CNAME", PLATFORMS)

    with pytest.raises(ValueError, match=message):
        await writer.apply_weights(spec, weights)


# --- the stand-in ---------------------------------------------------------------------------

ZONE = "Z0WRITE"
API = RecordSpec(ZONE, "api.example.com", "CNAME", PLATFORMS)
WWW = RecordSpec(ZONE, "www.example.com", "CNAME", PLATFORMS)


@pytest.fixture
def standin() -> Iterator[WriteStandIn]:
    zone = [
        cname("api.example.com", "heroku", 90, "myapp.herokudns.com"),
        cname("api.example.com", "aws", 10, ELB),
        cname("www.example.com", "heroku", 90, "myapp.herokudns.com"),
        cname("www.example.com", "aws", 10, ELB),
    ]
    with running(WriteStandIn(zones={ZONE: zone})) as server:
        yield server


def weights_in(standin: WriteStandIn, spec: RecordSpec) -> dict[str, int]:
    return {sid: r["Weight"] for sid, r in standin.record_sets(ZONE, spec.name).items()}


def submits(standin: WriteStandIn) -> list[str]:
    return [call[2] for call in standin.calls if call[0] == "change"]


async def test_prior_request_not_complete_is_retried(
    standin: WriteStandIn, writers: Writers
) -> None:
    standin.change_fail_next = [PRIOR_REQUEST]
    # one attempt per call: the retry seen here is the writer's own, not botocore's
    writer = writers(endpoint_url=standin.url, max_attempts=1)

    result = await writer.apply_weights(API, {"heroku": 75, "aws": 25})

    assert result.submit_attempts == 2
    assert submits(standin) == ["PriorRequestNotComplete", result.change_id]
    assert weights_in(standin, API) == {"heroku": 75, "aws": 25}


async def test_throttling_is_retried_by_botocore_then_by_the_writer(
    standin: WriteStandIn, writers: Writers
) -> None:
    standin.change_fail_next = [THROTTLED, THROTTLED, THROTTLED]
    writer = writers(endpoint_url=standin.url, max_attempts=2)

    result = await writer.apply_weights(API, {"heroku": 50, "aws": 50})

    # botocore's standard mode took two attempts per submit; the writer asked twice
    assert submits(standin) == ["Throttling", "Throttling", "Throttling", result.change_id]
    assert result.submit_attempts == 2
    assert weights_in(standin, API) == {"heroku": 50, "aws": 50}


async def test_lasting_throttling_gives_up_and_writes_nothing(
    standin: WriteStandIn, writers: Writers
) -> None:
    standin.change_fail_next = [THROTTLED] * 100
    writer = writers(endpoint_url=standin.url, max_attempts=1, submit_timeout=0.4)

    with pytest.raises(Route53Error) as caught:
        await writer.apply_weights(API, {"heroku": 50, "aws": 50})

    assert (caught.value.reason, caught.value.code) == ("throttling", "Throttling")
    assert len(submits(standin)) >= 3
    assert weights_in(standin, API) == {"heroku": 90, "aws": 10}


async def test_get_change_is_polled_until_insync(standin: WriteStandIn, writers: Writers) -> None:
    standin.pending_polls = 2

    result = await writers(endpoint_url=standin.url).apply_weights(API, {"heroku": 75, "aws": 25})

    polls = [call[2] for call in standin.calls if call[0] == "get_change"]
    assert polls == ["PENDING", "PENDING", "INSYNC"]
    assert (result.status, result.polls) == ("INSYNC", 3)
    assert all(call[1] == result.change_id for call in standin.calls if call[0] == "get_change")


async def test_throttled_get_change_is_waited_out(standin: WriteStandIn, writers: Writers) -> None:
    standin.get_change_fail_next = [THROTTLED, THROTTLED]
    writer = writers(endpoint_url=standin.url, max_attempts=1)

    result = await writer.apply_weights(API, {"heroku": 75, "aws": 25})

    polls = [call[2] for call in standin.calls if call[0] == "get_change"]
    assert polls == ["Throttling", "Throttling", "INSYNC"]
    assert result.status == "INSYNC"


async def test_change_not_insync_in_time_is_a_timeout(
    standin: WriteStandIn, writers: Writers
) -> None:
    standin.pending_polls = 1000
    writer = writers(endpoint_url=standin.url, insync_timeout=0.3)

    with pytest.raises(Route53Error) as caught:
        await writer.apply_weights(API, {"heroku": 75, "aws": 25})

    assert caught.value.reason == "timeout"
    assert "not INSYNC after 0.3s (PENDING)" in str(caught.value)
    # it was accepted: the weights are there, propagation is what did not finish
    assert weights_in(standin, API) == {"heroku": 75, "aws": 25}


async def test_changes_to_one_zone_are_serialized(standin: WriteStandIn, writers: Writers) -> None:
    standin.pending_polls = 2
    # two writers (say, before and after a reload) share the zone's lock
    one, two = writers(endpoint_url=standin.url), writers(endpoint_url=standin.url)

    results = await asyncio.gather(
        one.apply_weights(API, {"heroku": 75, "aws": 25}),
        two.apply_weights(WWW, {"heroku": 50, "aws": 50}),
        one.apply_weights(API, {"heroku": 50, "aws": 50}),
    )

    assert standin.overlaps == 0
    assert [r.status for r in results] == ["INSYNC"] * 3
    # each submit comes after the previous change was seen INSYNC
    seen: list[str] = []
    for call in standin.calls:
        if call[0] == "change":
            assert all(s == "INSYNC" for s in seen[-1:]), standin.calls
            seen = []
        elif call[0] == "get_change":
            seen.append(call[2])
    assert len(submits(standin)) == 3
    assert weights_in(standin, API) == {"heroku": 50, "aws": 50}
    assert weights_in(standin, WWW) == {"heroku": 50, "aws": 50}


async def test_a_change_someone_else_has_in_flight_is_waited_out(
    standin: WriteStandIn, writers: Writers
) -> None:
    standin.pending_seconds = 3600.0  # PENDING until the writer has run into it (below)
    other = boto3.client(
        "route53", endpoint_url=standin.url, config=Config(retries={"total_max_attempts": 1})
    )
    other.change_resource_record_sets(
        HostedZoneId=ZONE,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": cname("www.example.com", "aws", 20, ELB),
                }
            ]
        },
    )
    standin.pending_seconds = 0.0  # the writer's own change is INSYNC at once
    writer = writers(endpoint_url=standin.url, max_attempts=1)

    applying = asyncio.create_task(writer.apply_weights(API, {"heroku": 75, "aws": 25}))
    while standin.overlaps < 1:
        assert not applying.done(), applying
        await asyncio.sleep(0.01)
    for change in standin.changes.values():  # the other change lands; the writer goes on
        change.insync_at = time.monotonic()
    result = await applying

    assert standin.overlaps >= 1
    assert result.submit_attempts == standin.overlaps + 1
    assert submits(standin)[-1] == result.change_id
    assert weights_in(standin, API) == {"heroku": 75, "aws": 25}


def lists(standin: WriteStandIn) -> int:
    return sum(1 for call in standin.calls if call[0] == "list")


def get_changes(standin: WriteStandIn) -> list[str]:
    return [call[2] for call in standin.calls if call[0] == "get_change"]


@pytest.mark.parametrize("page_size", [300, 2])
async def test_a_big_zone_costs_one_listing_call(writers: Writers, page_size: int) -> None:
    zone = [cname(f"a-{i:03}.example.com", "heroku", 1, "old.example.net") for i in range(400)]
    zone += [cname(f"h{i:03}.v1.api.example.com", "aws", 1, ELB) for i in range(400)]
    zone += [
        cname("api.example.com", "heroku", 90, "myapp.herokudns.com"),
        cname("api.example.com", "aws", 10, ELB),
    ]
    # page size 2: the page ends right after the group, truncated; the next is not asked for
    with running(WriteStandIn(zones={ZONE: zone}, page_size=page_size)) as standin:
        result = await writers(endpoint_url=standin.url).apply_weights(
            API, {"heroku": 75, "aws": 25}
        )

        assert result.status == "INSYNC"
        assert lists(standin) == 1
        assert weights_in(standin, API) == {"heroku": 75, "aws": 25}


async def test_a_group_split_without_next_record_identifier_is_not_written(
    standin: WriteStandIn, writers: Writers
) -> None:
    standin.page_size = 1
    standin.next_identifier = False  # as moto 5.2 answers

    with pytest.raises(Route53Error) as caught:
        await writers(endpoint_url=standin.url).apply_weights(API, {"heroku": 75, "aws": 25})

    assert (caught.value.reason, caught.value.code) == ("other", "NoNextRecordIdentifier")
    assert lists(standin) == 1 and submits(standin) == []
    assert weights_in(standin, API) == {"heroku": 90, "aws": 10}


async def test_a_refused_get_change_is_classified(standin: WriteStandIn, writers: Writers) -> None:
    message = (
        "User: arn:aws:iam::123456789012:user/ci is not authorized to perform route53:GetChange"
    )
    standin.pending_polls = 1
    standin.get_change_fail_next = [Failure(403, "AccessDenied", message)]
    writer = writers(endpoint_url=standin.url, max_attempts=1)

    with pytest.raises(Route53Error) as caught:
        await writer.apply_weights(API, {"heroku": 75, "aws": 25})

    assert (caught.value.reason, caught.value.code) == ("access_denied", "AccessDenied")
    assert str(caught.value) == f"access_denied ({message})"
    assert get_changes(standin) == ["AccessDenied"]  # not waited out: asking again cannot help
    assert weights_in(standin, API) == {"heroku": 75, "aws": 25}


async def polled(standin: WriteStandIn, times: int) -> None:
    while len(get_changes(standin)) < times:
        await asyncio.sleep(0.01)


async def test_a_cancelled_write_stops_polling(standin: WriteStandIn, writers: Writers) -> None:
    standin.pending_polls = 100_000
    writer = writers(endpoint_url=standin.url)  # polls every 20 ms
    task = asyncio.create_task(writer.apply_weights(API, {"heroku": 75, "aws": 25}))
    await polled(standin, 3)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    seen = len(get_changes(standin))
    await asyncio.sleep(0.4)  # twenty poll intervals

    # the waiter's thread stops before its next poll (one may have been on its way)
    assert len(get_changes(standin)) <= seen + 1


async def test_closing_the_writer_ends_its_wait(standin: WriteStandIn, writers: Writers) -> None:
    standin.pending_polls = 100_000
    writer = writers(endpoint_url=standin.url)
    task = asyncio.create_task(writer.apply_weights(API, {"heroku": 75, "aws": 25}))
    await polled(standin, 3)

    writer.close()
    with pytest.raises(Route53Error) as caught:
        await asyncio.wait_for(task, 5.0)
    seen = len(get_changes(standin))
    await asyncio.sleep(0.4)

    assert str(caught.value) == "other (writer is closed)"
    assert len(get_changes(standin)) <= seen + 1


# --- the plan and the writer together, as the daemon drives them -------------------------------


async def test_a_plan_walks_real_weights_then_rolls_back(
    zone: str, moto_url: str, writers: Writers
) -> None:
    spec = RecordSpec(zone, "api.example.com", "CNAME", PLATFORMS)
    settings = ShiftSettings(
        record="api.example.com",
        baseline="heroku",
        candidate="aws",
        steps=(10, 25, 50, 100),
        hold=1.0,
        dry_run=False,
    )
    plan = ShiftPlan(settings)
    writer = writers(endpoint_url=moto_url)
    reader = Route53Reader([spec], endpoint_url=moto_url)
    seen: list[dict[str, int | None]] = []
    t = 0.0

    async def evaluate(firing: tuple[str, ...] = ()) -> None:
        read = await reader.read(spec)
        seen.append(read.platform_weights())
        observation = Observation(
            weights=read.platform_weights(),
            readiness=Verdict.GO,
            firing=firing,
            ttl=read.ttl,
        )
        for action in plan.step(t, observation):
            if isinstance(action, SetWeights):
                await writer.apply_weights(spec, action.weights, expected=action.expected)
                plan.change_applied(t, action.seq)

    try:
        await evaluate()  # adopts 100/0
        for _ in range(3):
            t += 1.0
            await evaluate()
            t += plan.hold
        await evaluate(firing=("health/down",))
        await evaluate()
    finally:
        reader.close()

    assert plan.state is Phase.ROLLED_BACK
    assert [w["aws"] for w in seen] == [0, 0, 10, 25, 50, 0]
    assert await read_weights(moto_url, spec) == {"heroku": 100, "aws": 0}
