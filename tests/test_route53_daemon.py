"""Route53 weights in the running daemon: moto's server standing in for AWS, over HTTP."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import FAKE_AWS, DaemonProcess, FakePlatform, config_yaml, free_port

Start = Callable[..., DaemonProcess]
NAME = "api.example.com"


class Moto:
    """moto's server on a fixed port, so that a test can take it away and bring it back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[Moto]:
    for key, value in FAKE_AWS.items():
        monkeypatch.setenv(key, value)
    m = Moto()
    m.start()
    yield m
    m.stop()


def zone(moto: Moto, weights: dict[str, int], *, others: int = 0, ttl: int = 60) -> tuple[Any, str]:
    client = boto3.client("route53", endpoint_url=moto.url)
    zid = client.create_hosted_zone(Name="example.com", CallerReference=str(free_port()))[
        "HostedZone"
    ]["Id"].rsplit("/", 1)[-1]
    changes = [
        {
            "Action": "CREATE",
            "ResourceRecordSet": {
                "Name": f"{n}.example.com", "Type": "CNAME", "TTL": 60,
                "ResourceRecords": [{"Value": "elsewhere.example.net"}],
            },
        }
        for n in [f"a{i:03d}" for i in range(others // 2)] + [f"zz{i:03d}" for i in range(others // 2)]
    ]  # fmt: skip
    if changes:
        client.change_resource_record_sets(HostedZoneId=zid, ChangeBatch={"Changes": changes})
    set_weights(client, zid, weights, action="CREATE", ttl=ttl)
    return client, zid


def set_weights(
    client: Any, zid: str, weights: dict[str, int], action: str = "UPSERT", ttl: int = 60
) -> None:
    targets = {
        "heroku": "myapp.herokuapp.com",
        "aws": "lb.elb.amazonaws.com",
        "old": "x.example.net",
    }
    client.change_resource_record_sets(
        HostedZoneId=zid,
        ChangeBatch={
            "Changes": [
                {
                    "Action": action,
                    "ResourceRecordSet": {
                        "Name": NAME, "Type": "CNAME", "SetIdentifier": sid, "Weight": w,
                        "TTL": ttl, "ResourceRecords": [{"Value": targets[sid]}],
                    },
                }
                for sid, w in weights.items()
            ]
        },
    )  # fmt: skip


def route53_config(platforms: tuple[FakePlatform, FakePlatform], moto: Moto, zid: str) -> str:
    baseline, candidate = platforms
    return (
        config_yaml(baseline.url, candidate.url)
        + f"""\
route53:
  interval: 1s
  timeout: 2s
  endpoint_url: {moto.url}
  records:
    - hosted_zone_id: {zid}
      name: {NAME}
      type: CNAME
      set_identifiers: {{heroku: heroku, aws: aws}}
"""
    )


def share(platform: str, zid: str) -> str:
    return f'cutover_route53_traffic_share{{hosted_zone="{zid}",platform="{platform}",record="{NAME}"}}'


def weight(platform: str, zid: str, sid: str | None = None) -> str:
    return (
        f'cutover_route53_weight{{hosted_zone="{zid}",platform="{platform}",record="{NAME}",'
        f'set_identifier="{sid or platform}"}}'
    )


@pytest.mark.parametrize(
    ("weights", "shares"),
    [
        ((90, 10), (0.9, 0.1)),
        ((75, 25), (0.75, 0.25)),
        ((50, 50), (0.5, 0.5)),
        ((0, 0), (0.5, 0.5)),
        ((0, 255), (0.0, 1.0)),
    ],
)
async def test_weights_become_shares(
    platforms: tuple[FakePlatform, FakePlatform],
    moto: Moto,
    start_daemon: Start,
    weights: tuple[int, int],
    shares: tuple[float, float],
) -> None:
    _, zid = zone(moto, {"heroku": weights[0], "aws": weights[1]})
    d = start_daemon(route53_config(platforms, moto, zid))
    await d.wait_ready()
    m = await d.wait_for(lambda m: share("aws", zid) in m)
    assert m[weight("heroku", zid)] == weights[0] and m[weight("aws", zid)] == weights[1]
    assert m[share("heroku", zid)] == pytest.approx(shares[0])
    assert m[share("aws", zid)] == pytest.approx(shares[1])
    assert m["cutover_route53_last_success_timestamp_seconds"] > 0
    assert d.stop() == 0


async def test_change_seen_within_an_interval_among_hundreds_of_records(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_daemon: Start
) -> None:
    client, zid = zone(moto, {"heroku": 90, "aws": 10}, others=400)
    d = start_daemon(route53_config(platforms, moto, zid))
    await d.wait_ready()
    await d.wait_for(lambda m: m.get(share("aws", zid)) == pytest.approx(0.1))
    set_weights(client, zid, {"heroku": 75, "aws": 25})
    changed_at = asyncio.get_running_loop().time()
    await d.wait_for(lambda m: m.get(share("aws", zid)) == pytest.approx(0.25), timeout=5)
    # interval 1s: seen at the next poll (scrape and poll granularity allowed for)
    assert asyncio.get_running_loop().time() - changed_at < 2.5

    status, page = await d.get("/")
    assert status == 200 and "Traffic (Route53 weights)" in page
    assert "lb.elb.amazonaws.com" in page and "25.0%" in page and "75.0%" in page
    _, body = await d.get("/api/v1/status")
    data = json.loads(body)
    rec = data["route53"]["records"][0]
    assert rec["name"] == NAME and rec["shares"] == {"heroku": 0.75, "aws": 0.25}
    assert {r["set_identifier"]: r["weight"] for r in rec["record_sets"]} == {
        "heroku": 75,
        "aws": 25,
    }
    health = data["checks"][0]
    assert health["traffic_share"] == {"heroku": 0.75, "aws": 0.25}
    assert "weights of api.example.com" in d.log() or "90->75" in d.log()
    assert "fake-aws-secret-key-value" not in d.log() + page + body
    assert d.stop() == 0


async def test_missing_and_unmapped_set_identifiers_are_visible(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_daemon: Start
) -> None:
    _, zid = zone(moto, {"heroku": 100, "old": 50})
    d = start_daemon(route53_config(platforms, moto, zid))
    await d.wait_ready()
    missing = (
        f'cutover_route53_set_identifier_missing{{hosted_zone="{zid}",platform="aws",'
        f'record="{NAME}",set_identifier="aws"}}'
    )
    m = await d.wait_for(lambda m: missing in m)
    assert m[missing] == 1
    assert m[weight("", zid, "old")] == 50
    assert m[share("aws", zid)] == 0
    assert m[share("heroku", zid)] == pytest.approx(100 / 150)
    _, page = await d.get("/")
    assert "configured but not in the zone: aws" in page
    assert "in the zone but mapped to no platform: old" in page
    assert d.stop() == 0


async def test_outage_keeps_last_shares_and_recovers(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_daemon: Start
) -> None:
    _, zid = zone(moto, {"heroku": 90, "aws": 10})
    d = start_daemon(route53_config(platforms, moto, zid))
    await d.wait_ready()
    m = await d.wait_for(lambda m: share("aws", zid) in m)
    moto.stop()
    m = await d.wait_for(
        lambda m: m.get('cutover_route53_errors_total{reason="timeout"}', 0) >= 2, timeout=20
    )
    last_good = m["cutover_route53_last_success_timestamp_seconds"]
    assert m[share("aws", zid)] == pytest.approx(0.1)  # the last known shares stay
    _, page = await d.get("/")
    assert "reading failed: timeout" in page and "last known weights" in page
    await asyncio.sleep(1.5)
    m = await d.metrics()
    assert m["cutover_route53_last_success_timestamp_seconds"] == last_good
    assert d.proc.poll() is None

    moto.start()  # same process, same backend: the zone is still there
    m = await d.wait_for(
        lambda m: m["cutover_route53_last_success_timestamp_seconds"] > last_good, timeout=15
    )
    assert m[share("aws", zid)] == pytest.approx(0.1)
    log = d.log()
    # once per distinct failure, once for the recovery, not once per attempt
    assert log.count("route53: reading api.example.com CNAME") == 2, log
    assert log.count("works again after") == 1
    assert d.stop() == 0


async def test_expected_error_ratio_weighs_errors_by_traffic(
    platforms: tuple[FakePlatform, FakePlatform], moto: Moto, start_daemon: Start
) -> None:
    _, candidate = platforms
    candidate.fail_every = 2  # every other candidate probe gets a 503
    _, zid = zone(moto, {"heroku": 75, "aws": 25})
    d = start_daemon(route53_config(platforms, moto, zid))
    await d.wait_ready()
    m = await d.wait_for(
        lambda m: (
            'cutover_expected_error_ratio{check="health"}' in m
            and m.get('cutover_window_samples{check="health",platform="aws",role="candidate"}', 0)
            >= 10
        )
    )
    err_c = m['cutover_window_error_ratio{check="health",platform="aws",role="candidate"}']
    err_b = m['cutover_window_error_ratio{check="health",platform="heroku",role="baseline"}']
    assert err_b == 0 and 0.3 < err_c < 0.7
    assert m['cutover_expected_error_ratio{check="health"}'] == pytest.approx(0.25 * err_c)
    assert d.stop() == 0


def test_expected_error_ratio_arithmetic() -> None:
    from exporter.web.collector import expected_error_ratio

    nan = float("nan")
    assert expected_error_ratio({"a": 0.9, "b": 0.1}, {"a": 0.0, "b": 0.5}) == pytest.approx(0.05)
    # no traffic: its errors (even unknown) reach nobody
    assert expected_error_ratio({"a": 1.0, "b": 0.0}, {"a": 0.02, "b": nan}) == pytest.approx(0.02)
    # traffic but no samples: unknown
    assert math.isnan(expected_error_ratio({"a": 0.5, "b": 0.5}, {"a": 0.0, "b": nan}))
