"""Route53 reader and state against moto's server and a local Route53 stand-in, real sockets."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from exporter.route53.read import (
    RecordSpec,
    RecordWeights,
    Route53Error,
    Route53Reader,
    Route53State,
)
from tests.route53_standin import THROTTLED, Failure, StandIn, cname, running

PLATFORMS = {"heroku": "heroku", "aws": "aws"}
ELB = "k8s-ingress-1234.eu-west-1.elb.amazonaws.com"
ELB_ZONE = "Z32O12XQLNTSW2"
LOGGER = "exporter.route53.read"
RATIOS = [(90, 10), (75, 25), (50, 50), (0, 0), (0, 255)]

# fake AWS credentials for every test here (tests/conftest.py: aws_env, moto_url, r53)
pytestmark = pytest.mark.usefixtures("aws_env")


def weighted(
    name: str,
    rtype: str,
    sid: str,
    weight: int,
    value: str | None = None,
    *,
    alias: str | None = None,
    action: str = "CREATE",
) -> dict[str, Any]:
    rrset: dict[str, Any] = {"Name": name, "Type": rtype, "SetIdentifier": sid, "Weight": weight}
    if alias is not None:
        rrset["AliasTarget"] = {
            "HostedZoneId": ELB_ZONE,
            "DNSName": alias,
            "EvaluateTargetHealth": False,
        }
    else:
        rrset["TTL"] = 60
        rrset["ResourceRecords"] = [{"Value": value or f"{sid}.example.net"}]
    return {"Action": action, "ResourceRecordSet": rrset}


def plain(name: str, rtype: str, value: str) -> dict[str, Any]:
    rrset = {"Name": name, "Type": rtype, "TTL": 300, "ResourceRecords": [{"Value": value}]}
    return {"Action": "CREATE", "ResourceRecordSet": rrset}


@pytest.fixture(scope="module")
def zone(r53: Any) -> str:
    created = r53.create_hosted_zone(Name="example.com", CallerReference=str(uuid.uuid4()))
    zone_id: str = created["HostedZone"]["Id"].rsplit("/", 1)[-1]
    # Hundreds of record sets on both sides of the migrated names (in Route53's reversed-label
    # order), so reading everything would take several pages.
    changes = [plain(f"a-{i:03}.example.com", "CNAME", "old.example.net") for i in range(400)]
    changes += [plain(f"z-{i:03}.example.com", "CNAME", "new.example.net") for i in range(400)]
    changes += [plain(f"h{i:02}.v1.api.example.com", "A", "192.0.2.1") for i in range(60)]
    changes += [plain("api-internal.example.com", "CNAME", "internal.example.net")]
    changes += [
        weighted("api.example.com", "CNAME", "heroku", 90, "myapp.herokudns.com"),
        weighted("api.example.com", "CNAME", "aws", 10, ELB),
        weighted("shift.example.com", "CNAME", "heroku", 90),
        weighted("shift.example.com", "CNAME", "aws", 10),
        weighted("edge.example.com", "A", "heroku", 90, "192.0.2.10"),
        weighted("edge.example.com", "A", "aws", 10, alias=ELB + "."),
        weighted("allalias.example.com", "A", "heroku", 1, alias="heroku-lb.example.net."),
        weighted("allalias.example.com", "A", "aws", 1, alias=ELB + "."),
        plain("mixed.example.com", "A", "192.0.2.20"),
        weighted("mixed.example.com", "AAAA", "heroku", 3, "2001:db8::1"),
        weighted("mixed.example.com", "AAAA", "aws", 1, "2001:db8::2"),
        weighted("partial.example.com", "CNAME", "heroku", 50),
        weighted("partial.example.com", "CNAME", "canary", 50),
        plain("plain.example.com", "CNAME", "myapp.herokudns.com"),
        weighted("*.wild.example.com", "CNAME", "heroku", 25),
        weighted("*.wild.example.com", "CNAME", "aws", 75),
    ]
    for heroku, aws in RATIOS:
        changes += [
            weighted(f"ratio-{heroku}-{aws}.example.com", "CNAME", "heroku", heroku),
            weighted(f"ratio-{heroku}-{aws}.example.com", "CNAME", "aws", aws),
        ]
    r53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": changes})
    return zone_id


Readers = Callable[..., Route53Reader]


@pytest.fixture
def readers() -> Iterator[Readers]:
    made: list[Route53Reader] = []

    def make(*specs: RecordSpec, **kwargs: Any) -> Route53Reader:
        reader = Route53Reader(specs, **kwargs)
        made.append(reader)
        return reader

    yield make
    for reader in made:
        reader.close()


def by_sid(weights: RecordWeights) -> dict[str, int]:
    return {e.set_identifier: e.weight for e in weights.entries}


def route53_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


# --- moto ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("heroku", "aws"), RATIOS)
async def test_shares_follow_weights(
    zone: str, moto_url: str, readers: Readers, heroku: int, aws: int
) -> None:
    spec = RecordSpec(zone, f"ratio-{heroku}-{aws}.example.com", "CNAME", PLATFORMS)
    reader = readers(spec, endpoint_url=moto_url)

    got = await reader.read(spec)

    total = heroku + aws
    expected = (
        {"heroku": heroku / total, "aws": aws / total} if total else {"heroku": 0.5, "aws": 0.5}
    )
    assert got.platform_shares() == pytest.approx(expected)
    assert by_sid(got) == {"heroku": heroku, "aws": aws}
    assert {e.set_identifier: e.platform for e in got.entries} == {"heroku": "heroku", "aws": "aws"}
    assert {e.target for e in got.entries} == {"heroku.example.net", "aws.example.net"}
    assert (got.type, got.ttl, got.missing, got.unmapped) == ("CNAME", 60, (), ())
    assert not any(e.alias for e in got.entries)
    assert reader.api_calls == 1


async def test_weight_change_is_seen_at_the_next_read(
    r53: Any, zone: str, moto_url: str, readers: Readers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    spec = RecordSpec(zone, "shift.example.com", "CNAME", PLATFORMS)
    state = Route53State(readers(spec, endpoint_url=moto_url))

    assert await state.poll_once()
    before = state.weights[spec]
    r53.change_resource_record_sets(
        HostedZoneId=zone,
        ChangeBatch={
            "Changes": [
                weighted("shift.example.com", "CNAME", "heroku", 75, action="UPSERT"),
                weighted("shift.example.com", "CNAME", "aws", 25, action="UPSERT"),
            ]
        },
    )
    assert await state.poll_once()
    after = state.weights[spec]

    assert before.platform_shares() == pytest.approx({"heroku": 0.9, "aws": 0.1})
    assert after.platform_shares() == pytest.approx({"heroku": 0.75, "aws": 0.25})
    assert after.fetched_at >= before.fetched_at
    assert route53_lines(caplog, logging.INFO) == [
        f"route53: weights of shift.example.com CNAME in {zone} changed: heroku 90->75, aws 10->25"
    ]


async def test_big_zone_costs_at_most_two_calls(
    r53: Any, zone: str, moto_url: str, readers: Readers
) -> None:
    listing_pages = sum(
        1 for _ in r53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone)
    )
    assert listing_pages >= 3  # what reading the whole zone would cost
    typed = RecordSpec(zone, "api.example.com", "CNAME", PLATFORMS)
    untyped = RecordSpec(zone, "API.Example.com.", None, PLATFORMS)

    for spec in (typed, untyped):
        reader = readers(spec, endpoint_url=moto_url)
        got = await reader.read(spec)
        assert reader.api_calls <= 2
        assert got.api_calls == reader.api_calls
        assert got.type == "CNAME"
        assert by_sid(got) == {"heroku": 90, "aws": 10}
        assert {e.set_identifier: e.target for e in got.entries} == {
            "heroku": "myapp.herokudns.com",
            "aws": ELB,
        }


async def test_alias_and_plain_records_in_one_group(
    zone: str, moto_url: str, readers: Readers
) -> None:
    spec = RecordSpec(f"/hostedzone/{zone}", "edge.example.com", "A", PLATFORMS)
    got = await readers(spec, endpoint_url=moto_url).read(spec)

    entries = {e.set_identifier: e for e in got.entries}
    assert (entries["aws"].alias, entries["aws"].target, entries["aws"].weight) == (True, ELB, 10)
    assert (entries["heroku"].alias, entries["heroku"].target) == (False, "192.0.2.10")
    assert got.platform_shares() == pytest.approx({"heroku": 0.9, "aws": 0.1})
    # moto reports TTL 0 on aliases; an alias has no TTL of its own, so only the A record's counts.
    assert got.ttl == 60


async def test_alias_only_group_has_no_ttl(zone: str, moto_url: str, readers: Readers) -> None:
    spec = RecordSpec(zone, "allalias.example.com", "A", PLATFORMS)
    got = await readers(spec, endpoint_url=moto_url).read(spec)
    assert got.ttl is None
    assert all(e.alias for e in got.entries)
    assert got.platform_shares() == pytest.approx({"heroku": 0.5, "aws": 0.5})


async def test_untyped_spec_takes_the_weighted_group_at_the_name(
    zone: str, moto_url: str, readers: Readers
) -> None:
    spec = RecordSpec(zone, "mixed.example.com", None, PLATFORMS)
    got = await readers(spec, endpoint_url=moto_url).read(spec)
    assert got.type == "AAAA"
    assert got.platform_shares() == pytest.approx({"heroku": 0.75, "aws": 0.25})


async def test_wildcard_name(zone: str, moto_url: str, readers: Readers) -> None:
    spec = RecordSpec(zone, "*.Wild.example.com.", "CNAME", PLATFORMS)
    got = await readers(spec, endpoint_url=moto_url).read(spec)
    assert got.platform_shares() == pytest.approx({"heroku": 0.25, "aws": 0.75})


async def test_missing_and_unmapped_set_identifiers(
    zone: str, moto_url: str, readers: Readers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    spec = RecordSpec(zone, "partial.example.com", "CNAME", PLATFORMS)
    state = Route53State(readers(spec, endpoint_url=moto_url))

    assert await state.poll_once()
    assert await state.poll_once()
    got = state.weights[spec]

    assert got.missing == ("aws",)
    assert got.unmapped == ("canary",)
    canary = next(e for e in got.entries if e.set_identifier == "canary")
    assert (canary.platform, canary.share) == (None, 0.5)
    assert got.platform_shares() == {"heroku": 0.5, "aws": 0.0}
    assert got.platform_weights() == {"heroku": 50, "aws": None}
    # Reported once, not on every poll.
    assert route53_lines(caplog, logging.WARNING) == [
        f"route53: partial.example.com CNAME in {zone} has no record set with SetIdentifier 'aws'",
        f"route53: partial.example.com CNAME in {zone} has record sets mapped to no platform:"
        " 'canary'",
    ]


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("nope.example.com", "no weighted record sets for nope.example.com CNAME"),
        ("plain.example.com", "(found non-weighted CNAME)"),
    ],
)
async def test_name_without_weighted_records_is_not_found(
    zone: str, moto_url: str, readers: Readers, name: str, words: str
) -> None:
    spec = RecordSpec(zone, name, "CNAME", PLATFORMS)
    with pytest.raises(Route53Error) as caught:
        await readers(spec, endpoint_url=moto_url).read(spec)
    assert caught.value.reason == "not_found"
    assert words in str(caught.value)


async def test_unknown_hosted_zone_is_not_found(moto_url: str, readers: Readers) -> None:
    spec = RecordSpec("Z0DOESNOTEXIST", "api.example.com", "CNAME", PLATFORMS)
    with pytest.raises(Route53Error) as caught:
        await readers(spec, endpoint_url=moto_url).read(spec)
    assert (caught.value.reason, caught.value.code) == ("not_found", "NoSuchHostedZone")
    assert "Z0DOESNOTEXIST" in caught.value.detail


async def test_one_failing_record_does_not_stop_the_others(
    zone: str, moto_url: str, readers: Readers
) -> None:
    good = RecordSpec(zone, "api.example.com", "CNAME", PLATFORMS)
    bad = RecordSpec(zone, "nope.example.com", "CNAME", PLATFORMS)
    gone = RecordSpec("Z0DOESNOTEXIST", "api.example.com", "CNAME", PLATFORMS)
    weights, errors = await readers(good, bad, gone, endpoint_url=moto_url).read_all()
    assert list(weights) == [good]
    assert {spec: e.reason for spec, e in errors.items()} == {
        bad: "not_found",
        gone: "not_found",
    }


# --- the stand-in --------------------------------------------------------------------------

STANDIN_ZONE = "Z0STANDIN"


@pytest.fixture
def standin(aws_env: None) -> Iterator[StandIn]:
    zone = [
        {
            "Name": "a.example.com",
            "Type": "A",
            "TTL": 300,
            "ResourceRecords": [{"Value": "192.0.2.1"}],
        },
        cname("api-internal.example.com", "heroku", 1, "internal.example.net"),
        cname("api.example.com", "heroku", 90, "myapp.herokudns.com"),
        cname("api.example.com", "aws", 10, ELB),
        cname("v1.api.example.com", "aws", 1, ELB),
        cname("*.example.com", "heroku", 30, "myapp.herokudns.com"),
        cname("*.example.com", "aws", 70, ELB),
        cname("www.example.com", "aws", 1, ELB),
    ]
    with running(StandIn(zones={STANDIN_ZONE: zone})) as server:
        yield server


API = RecordSpec(STANDIN_ZONE, "api.example.com", "CNAME", PLATFORMS)


async def test_group_split_across_pages(standin: StandIn, readers: Readers) -> None:
    standin.page_size = 1
    reader = readers(API, endpoint_url=standin.url)

    got = await reader.read(API)

    assert by_sid(got) == {"aws": 10, "heroku": 90}
    assert reader.api_calls == 2
    path = f"/2013-04-01/hostedzone/{STANDIN_ZONE}/rrset"
    assert standin.requests == [
        {"path": path, "name": "api.example.com.", "type": "CNAME"},
        {"path": path, "name": "api.example.com.", "type": "CNAME", "identifier": "heroku"},
    ]


BIG_ZONE = "Z0BIGZONE"


def full_listing_pages(standin: StandIn, zone: str) -> int:
    """Pages of a whole-zone listing with boto3's paginator; the stand-in's log is cleared."""
    client = boto3.client("route53", endpoint_url=standin.url)
    try:
        paginator = client.get_paginator("list_resource_record_sets")
        pages = sum(1 for _ in paginator.paginate(HostedZoneId=zone))
    finally:
        client.close()
    standin.requests.clear()
    return pages


@pytest.fixture
def big(aws_env: None) -> Iterator[StandIn]:
    """1200 record sets, most of them on both sides of the migrated names in Route53's order."""
    zone = [cname(f"a-{i:03}.example.com", "heroku", 1, "old.example.net") for i in range(400)]
    zone += [cname(f"z-{i:03}.example.com", "aws", 1, ELB) for i in range(400)]
    zone += [cname(f"h{i:03}.v1.api.example.com", "aws", 1, ELB) for i in range(400)]
    zone += [
        cname("api.example.com", "heroku", 90, "myapp.herokudns.com"),
        cname("api.example.com", "aws", 10, ELB),
        # a plain A before the weighted AAAA group at one name: an untyped read starts there
        {
            "Name": "mixed.example.com",
            "Type": "A",
            "TTL": 300,
            "ResourceRecords": [{"Value": "192.0.2.20"}],
        },
        {**cname("mixed.example.com", "heroku", 3, "2001:db8::1"), "Type": "AAAA"},
        {**cname("mixed.example.com", "aws", 1, "2001:db8::2"), "Type": "AAAA"},
    ]
    with running(StandIn(zones={BIG_ZONE: zone})) as server:
        yield server


@pytest.mark.parametrize(
    ("name", "rtype", "page_size", "calls"),
    [
        ("api.example.com", "CNAME", 300, 1),
        ("api.example.com", None, 300, 1),
        # the page ends right after the group, truncated: the next page is not asked for
        ("api.example.com", "CNAME", 2, 1),
        # the group straddles two pages (the plain A takes the first place)
        ("mixed.example.com", None, 2, 2),
    ],
)
async def test_big_zone_costs_one_call_per_page_of_the_group(
    big: StandIn,
    readers: Readers,
    name: str,
    rtype: str | None,
    page_size: int,
    calls: int,
) -> None:
    assert full_listing_pages(big, BIG_ZONE) >= 4  # what listing the whole zone would cost
    big.page_size = page_size
    spec = RecordSpec(BIG_ZONE, name, rtype, PLATFORMS)
    reader = readers(spec, endpoint_url=big.url)

    got = await reader.read(spec)

    assert len(big.requests) == calls  # counted by the server, retries included
    assert reader.api_calls == got.api_calls == calls
    assert got.type == ("AAAA" if name.startswith("mixed") else "CNAME")
    assert got.platform_shares() == pytest.approx(
        {"heroku": 0.75, "aws": 0.25} if name.startswith("mixed") else {"heroku": 0.9, "aws": 0.1}
    )


async def test_a_group_split_without_next_record_identifier_is_refused_at_once(
    standin: StandIn, readers: Readers
) -> None:
    # moto 5.2 pages like this: going on from the name and type alone would read the group's
    # first set again (botocore's paginator notices only on the second lap: PaginationError)
    standin.page_size = 1
    standin.next_identifier = False
    reader = readers(API, endpoint_url=standin.url)

    with pytest.raises(Route53Error) as caught:
        await reader.read(API)

    assert (caught.value.reason, caught.value.code) == ("other", "NoNextRecordIdentifier")
    assert str(caught.value) == (
        f"other (the listing of api.example.com CNAME in {STANDIN_ZONE} stopped inside its"
        " weighted group without a NextRecordIdentifier to go on from)"
    )
    assert len(standin.requests) == 1


async def test_escaped_wildcard_names_are_matched(standin: StandIn, readers: Readers) -> None:
    spec = RecordSpec(STANDIN_ZONE, "*.example.com", None, PLATFORMS)
    reader = readers(spec, endpoint_url=standin.url)

    got = await reader.read(spec)

    assert got.platform_shares() == pytest.approx({"heroku": 0.3, "aws": 0.7})
    assert reader.api_calls == 1


async def test_throttling_is_retried(standin: StandIn, readers: Readers) -> None:
    standin.fail_next = [THROTTLED, THROTTLED]
    reader = readers(API, endpoint_url=standin.url, max_attempts=3)

    got = await reader.read(API)

    assert by_sid(got) == {"aws": 10, "heroku": 90}
    assert len(standin.requests) == 3
    assert reader.api_calls == 1


async def test_lasting_throttling_is_counted_and_logged_once(
    standin: StandIn, readers: Readers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    standin.fail_always = THROTTLED
    state = Route53State(readers(API, endpoint_url=standin.url, max_attempts=2))

    assert not await state.poll_once()
    assert not await state.poll_once()

    assert len(standin.requests) == 4  # two attempts per read: our retry config is in force
    assert state.errors == {
        "throttling": 2,
        "access_denied": 0,
        "not_found": 0,
        "timeout": 0,
        "other": 0,
    }
    assert state.failing[API].reason == "throttling"
    assert state.last_success is None
    assert route53_lines(caplog, logging.WARNING) == [
        f"route53: reading api.example.com CNAME in {STANDIN_ZONE} failed: throttling"
        " (Rate exceeded)"
    ]
    with pytest.raises(Route53Error) as caught:
        await state.reader.read(API)
    assert caught.value.reason == "throttling"


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (Failure(400, "PriorRequestNotComplete", "The request was rejected"), "throttling"),
        (
            Failure(403, "AccessDenied", "User: arn:aws:iam::123456789012:user/ci is not"),
            "access_denied",
        ),
        (Failure(403, "InvalidClientTokenId", "The security token is invalid"), "access_denied"),
        (Failure(404, "NoSuchHostedZone", "No hosted zone found"), "not_found"),
        (Failure(400, "InvalidInput", "Invalid request"), "other"),
        (Failure(500, "InternalFailure", "oops"), "other"),
    ],
)
async def test_errors_are_classified(
    standin: StandIn, readers: Readers, failure: Failure, reason: str
) -> None:
    standin.fail_always = failure
    with pytest.raises(Route53Error) as caught:
        await readers(API, endpoint_url=standin.url, max_attempts=1).read(API)
    assert (caught.value.reason, caught.value.code) == (reason, failure.code)
    assert str(caught.value) == f"{reason} ({failure.message})"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_outage_keeps_last_weights_and_logs_once_each_way(
    standin: StandIn, readers: Readers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    standin.stop()
    standin.port = free_port()  # nothing listens there yet
    clock = itertools.count(1000.0, 10.0)
    reader = readers(API, endpoint_url=standin.url, timeout=2.0, max_attempts=2)
    state = Route53State(reader, clock=lambda: next(clock))

    assert not await state.poll_once()  # never reachable so far
    assert (state.weights, state.last_success, state.errors["timeout"]) == ({}, None, 1)

    standin.start()
    assert await state.poll_once()
    known = state.weights[API]
    first_success = state.last_success
    assert first_success is not None

    standin.stop()
    assert not await state.poll_once()
    assert not await state.poll_once()
    assert state.weights[API] is known
    assert state.snapshot().weights[API].platform_shares() == pytest.approx(
        {"heroku": 0.9, "aws": 0.1}
    )
    assert state.last_success == first_success
    assert state.errors["timeout"] == 3
    assert set(state.snapshot().failing) == {API}

    standin.start()
    assert await state.poll_once()
    assert state.last_success is not None and state.last_success > first_success
    assert state.failing == {}
    assert state.weights[API].fetched_at > known.fetched_at

    warnings = route53_lines(caplog, logging.WARNING)
    assert len(warnings) == 2
    assert warnings[0].startswith(
        f"route53: reading api.example.com CNAME in {STANDIN_ZONE} failed: timeout (Could not"
    )
    assert warnings[1].endswith("; keeping the last known weights")
    recoveries = [m for m in route53_lines(caplog, logging.INFO) if "works again" in m]
    assert len(recoveries) == 2


async def ticking(ticks: list[float], period: float = 0.01) -> None:
    while True:
        ticks.append(time.monotonic())
        await asyncio.sleep(period)


async def test_slow_read_leaves_the_loop_running(standin: StandIn, readers: Readers) -> None:
    standin.delay = 0.5
    reader = readers(API, endpoint_url=standin.url, timeout=5.0)
    ticks: list[float] = []
    ticker = asyncio.create_task(ticking(ticks))
    try:
        started = time.monotonic()
        got = await reader.read(API)
        finished = time.monotonic()
    finally:
        ticker.cancel()
    assert by_sid(got) == {"aws": 10, "heroku": 90}
    during = [t for t in ticks if started < t < finished]
    assert len(during) >= 3  # 50 ticks fit in the 0.5 s read; a blocked loop ticks at most once


async def test_hanging_endpoint_times_out_without_blocking(
    standin: StandIn, readers: Readers
) -> None:
    standin.delay = 30.0  # released when the fixture stops the stand-in
    reader = readers(API, endpoint_url=standin.url, timeout=0.5, max_attempts=1)
    ticks: list[float] = []
    ticker = asyncio.create_task(ticking(ticks))
    try:
        started = time.monotonic()
        with pytest.raises(Route53Error) as caught:
            await reader.read(API)
        finished = time.monotonic()
    finally:
        ticker.cancel()
    assert caught.value.reason == "timeout"
    assert finished - started < 5.0
    # counted, not timed: 50 ticks of 10 ms fit in the 0.5 s timeout; a blocked loop ticks at
    # most once, a loaded runner fewer than 50
    assert len([t for t in ticks if started < t < finished]) >= 3


async def test_run_polls_until_stopped(standin: StandIn, readers: Readers) -> None:
    state = Route53State(readers(API, endpoint_url=standin.url))
    stop = asyncio.Event()
    task = asyncio.create_task(state.run(0.05, stop))
    while state.polls < 3:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 2.0)
    assert state.last_success is not None
    assert len(standin.requests) >= 3


async def test_closed_reader_refuses_reads(standin: StandIn, readers: Readers) -> None:
    reader = readers(API, endpoint_url=standin.url)
    reader.close()
    with pytest.raises(Route53Error) as caught:
        await reader.read(API)
    assert caught.value.reason == "other"
    assert standin.requests == []


async def test_clients_keep_no_parsed_endpoints_file(zone: str, moto_url: str) -> None:
    """botocore's loader would keep endpoints.json (6.7 MB of objects) for the daemon's life."""
    from exporter import aws

    client, _ = aws.make_client("route53", endpoint_url=moto_url, timeout=5, max_attempts=1)
    held = [key for key in client._loader._cache if "endpoints" in key or "partitions" in key]
    assert held == []
    # and the client still works, paginators included (their definition loads on demand)
    pages = client.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone)
    assert sum(len(p["ResourceRecordSets"]) for p in pages) > 0
