"""The `ha` section: defaults, every problem with its location, `cutover check`'s summary, and
`cutover ha init` against moto's DynamoDB (and `--print`, which calls nothing)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import boto3

from exporter.config import parse_config
from tests.conftest import free_port
from tests.test_config import GOOD, problems, run_cli, with_changes

ROUTE53 = {
    "route53": {
        "records": [
            {
                "hosted_zone_id": "Z1",
                "name": "API.example.com.",
                "set_identifiers": {"heroku": "heroku", "aws": "aws"},
            }
        ]
    }
}


def test_no_ha_section_means_no_ha() -> None:
    cfg = parse_config(GOOD, env={})
    assert cfg.ha is None and cfg.ha_migration is None


def test_the_documented_defaults() -> None:
    cfg = parse_config(with_changes(**ROUTE53, ha={}), env={})
    ha = cfg.ha
    assert ha is not None
    assert (ha.vantage, ha.table, ha.region, ha.endpoint_url) == (
        socket.gethostname(),
        "cutover-ha",
        None,
        None,
    )
    assert (ha.lease, ha.confirm, ha.quorum, ha.migration) == (15.0, 2, 2, None)
    # the lease item is named after the only record, in its comparable spelling
    assert cfg.ha_migration == "api.example.com"


def test_every_key_set() -> None:
    ha = {
        "vantage": "eu-west-1",
        "table": "team.cutover-ha",
        "region": "eu-west-1",
        "endpoint_url": "http://127.0.0.1:4566/",
        "lease": "2s",
        "confirm": 1,
        "quorum": 3,
        "migration": "checkout-2024",
    }
    cfg = parse_config(with_changes(ha=ha), env={})
    assert cfg.ha is not None
    assert cfg.ha.model_dump() == {**ha, "lease": 2.0, "endpoint_url": "http://127.0.0.1:4566"}
    assert cfg.ha_migration == "checkout-2024"


def test_the_shifts_record_names_the_migration() -> None:
    records = [
        {**ROUTE53["route53"]["records"][0], "name": n}  # type: ignore[index]
        for n in ("api.example.com", "www.example.com")
    ]
    text = with_changes(
        route53={"records": records},
        checks=[{"name": "health", "path": "/health", "record": "www.example.com"}],
        shift={"record": "WWW.example.com"},
        ha={"vantage": "us-east-1"},
    )
    assert parse_config(text, env={}).ha_migration == "www.example.com"


def test_problems_are_said_with_their_location() -> None:
    text = with_changes(
        **ROUTE53,
        ha={
            "vantage": "eu west",
            "table": "x",
            "region": "EU",
            "endpoint_url": "ftp://db",
            "lease": "1500ms",
            "confirm": 0,
            "quorum": -1,
            "migration": "a/b",
            "leas": "15s",
        },
    )
    assert problems(text) == [
        "ha.vantage: invalid vantage 'eu west': up to 63 letters, digits, '_', '.' and '-', "
        "e.g. a region such as eu-west-1",
        "ha.table: String should match pattern '^[A-Za-z0-9_.-]{3,255}$'",
        "ha.region: String should match pattern '^[a-z0-9-]+$'",
        "ha.endpoint_url: invalid URL 'ftp://db': expected http:// or https:// and a host",
        "ha.lease: 1.5s is too short: at least 2s",
        "ha.confirm: Input should be greater than or equal to 1",
        "ha.quorum: Input should be greater than or equal to 1",
        "ha.migration: invalid migration name 'a/b': letters, digits, '_', '.', '*', ':' and '-', "
        "e.g. the migrated DNS name",
        "ha.leas: unknown key",
    ]
    assert problems(with_changes(**ROUTE53, ha={"lease": 15})) == [
        "ha.lease: expected a duration such as '10s' or '250ms', got 15"
    ]
    assert problems(with_changes(**ROUTE53, ha="yes")) == [
        "ha: Input should be a valid dictionary or instance of HA"
    ]


def test_a_migration_without_a_name_is_refused_beside_other_problems() -> None:
    # no shift and no single record: nothing names the lease item (a missing key is listed
    # first within its section, as everywhere)
    assert problems(with_changes(ha={"quorum": 0})) == [
        "ha.migration: required without a shift.record or a single route53 record to name the "
        "migration by: every replica of one migration must name the same lease item",
        "ha.quorum: Input should be greater than or equal to 1",
    ]
    # with a name of its own, it loads
    assert parse_config(with_changes(ha={"migration": "m1"}), env={}).ha_migration == "m1"


def test_check_summarises_the_section(tmp_path: Path) -> None:
    path = tmp_path / "ha.yml"
    path.write_text(
        with_changes(**ROUTE53, ha={"vantage": "eu-west-1", "region": "eu-west-1", "lease": "15s"})
    )
    res = run_cli("check", "--config", str(path))
    assert res.returncode == 0, res.stderr
    assert (
        "  ha: vantage eu-west-1, table cutover-ha (region eu-west-1), lease 15s (renewed "
        "every 5s, the leader acts until 10s after sending its last renew), confirm 2, quorum 2"
        in res.stdout.splitlines()
    )
    assert (
        "    lease item: pk migration#api.example.com, sk lease (named after the migrated record)"
        in res.stdout.splitlines()
    )
    plain = tmp_path / "plain.yml"
    plain.write_text(GOOD)
    assert "ha:" not in run_cli("check", "--config", str(plain)).stdout


def test_check_refuses_a_bad_section(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(with_changes(**ROUTE53, ha={"lease": "1s", "quorum": 0}))
    res = run_cli("check", "--config", str(path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.splitlines()[1:] == [
        "  ha.lease: 1s is too short: at least 2s",
        "  ha.quorum: Input should be greater than or equal to 1",
    ]


# -- cutover ha init ---------------------------------------------------------------------------


def ha_config(tmp_path: Path, table: str, endpoint: str) -> Path:
    path = tmp_path / f"{table}.yml"
    path.write_text(
        with_changes(
            **ROUTE53, ha={"table": table, "endpoint_url": endpoint, "region": "us-east-1"}
        )
    )
    return path


def test_ha_init_creates_the_table_and_a_second_run_is_fine(tmp_path: Path, moto_url: str) -> None:
    path = ha_config(tmp_path, "ha-init-test", moto_url)
    first = run_cli("ha", "init", "--config", str(path))
    assert first.returncode == 0, first.stderr
    assert first.stdout == "table ha-init-test created (keys pk, sk); TTL enabled on expires\n"
    client = boto3.client("dynamodb", endpoint_url=moto_url)
    table = client.describe_table(TableName="ha-init-test")["Table"]
    assert [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]] == [
        ("pk", "HASH"),
        ("sk", "RANGE"),
    ]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = client.describe_time_to_live(TableName="ha-init-test")["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires")
    again = run_cli("ha", "init", "--config", str(path))
    assert again.returncode == 0, again.stderr
    assert (
        again.stdout == "table ha-init-test already exists (keys pk, sk); TTL already on expires\n"
    )


def test_ha_init_refuses_a_table_with_other_keys(tmp_path: Path, moto_url: str) -> None:
    client = boto3.client("dynamodb", endpoint_url=moto_url)
    client.create_table(
        TableName="someone-elses",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    )
    res = run_cli("ha", "init", "--config", str(ha_config(tmp_path, "someone-elses", moto_url)))
    assert res.returncode == 1
    assert res.stderr == (
        "cutover: ha init: cannot create table someone-elses: other (table someone-elses exists "
        "with other keys (id HASH); cutover needs pk HASH, sk RANGE)\n"
    )


def test_ha_init_print_prints_the_aws_commands_and_calls_nothing(
    tmp_path: Path, moto_url: str
) -> None:
    path = ha_config(tmp_path, "ha-print-test", moto_url)
    res = run_cli("ha", "init", "--config", str(path), "--print")
    assert res.returncode == 0, res.stderr
    where = f"--table-name ha-print-test --region us-east-1 --endpoint-url {moto_url}"
    assert res.stdout == (
        f"aws dynamodb create-table {where} \\\n"
        "    --attribute-definitions AttributeName=pk,AttributeType=S "
        "AttributeName=sk,AttributeType=S \\\n"
        "    --key-schema AttributeName=pk,KeyType=HASH AttributeName=sk,KeyType=RANGE \\\n"
        "    --billing-mode PAY_PER_REQUEST\n"
        f"aws dynamodb wait table-exists {where}\n"
        f"aws dynamodb update-time-to-live {where} \\\n"
        "    --time-to-live-specification Enabled=true,AttributeName=expires\n"
    )
    client = boto3.client("dynamodb", endpoint_url=moto_url)
    assert "ha-print-test" not in client.list_tables()["TableNames"]


def test_ha_init_without_an_ha_section_says_so(tmp_path: Path) -> None:
    path = tmp_path / "plain.yml"
    path.write_text(GOOD)
    res = run_cli("ha", "init", "--config", str(path))
    assert res.returncode == 2
    assert res.stderr == f"cutover: ha init: {path} has no ha section\n"


def test_ha_init_against_a_dead_endpoint_fails_in_one_line_without_secrets(
    tmp_path: Path, aws_env: None
) -> None:
    path = ha_config(tmp_path, "ha-dead-test", f"http://127.0.0.1:{free_port()}")
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "very-secret-key-value-42"}
    res = run_cli("ha", "init", "--config", str(path), env=env)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith("cutover: ha init: cannot create table ha-dead-test: unreachable (")
    assert "very-secret-key-value-42" not in res.stderr
