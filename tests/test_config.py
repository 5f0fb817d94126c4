"""Configuration: every rule of SPEC.md, with the location each problem is reported at."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import yaml

from exporter.config import format_duration, load_config, parse_config, parse_duration
from exporter.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
platforms:
  heroku: {role: baseline, base_url: "https://myapp.herokuapp.com"}
  aws: {role: candidate, base_url: "https://lb.example.com", host_header: api.example.com}
checks:
  - name: health
    path: /health
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.yml", env=env or {})
    return info.value.details


def with_changes(**sections: object) -> str:
    doc = yaml.safe_load(GOOD)
    doc.update(sections)
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("10s", 10), ("5m", 300), ("1h", 3600), ("1m30s", 90), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["10", "ten seconds", "5 m", "", "1x", "s"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    for text in ("250ms", "10s", "5m", "1h"):
        assert format_duration(parse_duration(text)) == text


def test_minimal_config_gets_the_documented_defaults() -> None:
    cfg = parse_config(GOOD, env={})
    check = cfg.checks[0]
    assert (check.interval, check.timeout, check.method) == (15.0, 5.0, "GET")
    assert check.expect.status is None
    assert cfg.baseline == "heroku" and cfg.candidate == "aws"
    j = cfg.judge
    assert (j.window, j.min_samples, j.confidence, j.down_after) == (300, 10, 0.99, 3)
    assert (j.latency.max_ratio, j.latency.min_increase, j.errors.max_increase) == (
        1.5,
        0.025,
        0.02,
    )
    assert cfg.platforms["aws"].base_url == "https://lb.example.com"


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yml")), ids=lambda p: p.name)
def test_shipped_examples_load(example: Path) -> None:
    env = {"SLACK_BOT_TOKEN": "xoxb-test", "HEALTH_TOKEN": "t", "HEROKU_DRAIN_TOKEN": "d" * 32}
    cfg = load_config(example, env=env)
    assert cfg.checks


def test_env_substitution_anywhere_in_a_string() -> None:
    text = GOOD + '    headers: {Authorization: "Bearer ${TOKEN}", X-Env: "${STAGE}-1"}\n'
    cfg = parse_config(text, env={"TOKEN": "abc", "STAGE": "prod"})
    assert cfg.checks[0].headers == {"Authorization": "Bearer abc", "X-Env": "prod-1"}


def test_an_unset_variable_is_said_once_not_also_as_a_bad_value() -> None:
    """A token from an unset variable is not also "empty" or "too short": one cause, one line;
    the other problems of the file are still all there."""
    text = (
        GOOD
        + """\
    timeout: 20s
alerting:
  slack: {token: "${SLACK_TOKEN}", channel: "#m"}
traffic:
  sources:
    - {platform: heroku, heroku_drain: {token: "${DRAIN}"}}
    - {platform: aws, heroku_drain: {token: short}}
"""
    )
    assert problems(text) == [
        "checks[0].timeout: 20s must not exceed the interval (15s)",
        "alerting.slack.token: environment variable 'SLACK_TOKEN' is not set",
        "traffic.sources[0].heroku_drain.token: environment variable 'DRAIN' is not set",
        "traffic.sources[1].heroku_drain.token: must be at least 16 characters without ':', "
        "'@', '/' or spaces (it goes into the drain's URL), e.g. from `openssl rand -hex 16`",
    ]


def test_unset_variable_names_variable_and_location() -> None:
    text = GOOD + '    headers: {Authorization: "Bearer ${HEALTH_TOKEN}"}\n'
    assert problems(text) == [
        "checks[0].headers.Authorization: environment variable 'HEALTH_TOKEN' is not set"
    ]


def test_unknown_keys_are_refused_everywhere() -> None:
    text = (
        GOOD.replace("path: /health", "path: /health\n    intervall: 5s") + "judge: {windw: 1m}\n"
    )
    assert problems(text) == ["checks[0].intervall: unknown key", "judge.windw: unknown key"]


def test_every_problem_at_once_one_per_line() -> None:
    text = """\
platforms:
  heroku: {role: baseline, base_url: "ftp://x"}
  aws: {role: candidate, base_url: "https://lb.example.com"}
checks:
  - name: Health
    path: health
    interval: 1s
    timeout: 2s
    expect: {status: [999], body_regex: "("}
"""
    assert problems(text) == [
        "platforms.heroku.base_url: invalid URL 'ftp://x': expected http:// or https:// and a host",
        "checks[0].name: invalid name 'Health': use lowercase letters, digits, '_' and '-'",
        "checks[0].path: invalid path 'health': must start with '/' and contain no spaces",
        "checks[0].timeout: 2s must not exceed the interval (1s)",
        "checks[0].expect.status[0]: Input should be less than or equal to 599",
        "checks[0].expect.body_regex: invalid regular expression: missing ), unterminated "
        "subpattern at position 0",
    ]


@pytest.mark.parametrize(("interval", "seconds"), [("2s", 2.0), ("500ms", 0.5), ("4.5s", 4.5)])
def test_default_timeout_follows_a_short_interval(interval: str, seconds: float) -> None:
    # Prometheus' rule for scrape_timeout: 5s, or the interval when that is shorter
    cfg = parse_config(GOOD + f"    interval: {interval}\n", env={})
    assert (cfg.checks[0].interval, cfg.checks[0].timeout) == (seconds, seconds)


@pytest.mark.parametrize(("interval", "seconds"), [("10s", 10.0), ("5s", 5.0), ("1m", 60.0)])
def test_default_timeout_is_5s_from_a_5s_interval_up(interval: str, seconds: float) -> None:
    cfg = parse_config(GOOD + f"    interval: {interval}\n", env={})
    assert (cfg.checks[0].interval, cfg.checks[0].timeout) == (seconds, 5.0)


def test_explicit_timeout_over_the_interval_is_still_refused() -> None:
    text = GOOD + "  - name: slow\n    path: /slow\n    interval: 10s\n    timeout: 20s\n"
    assert problems(text) == ["checks[1].timeout: 20s must not exceed the interval (10s)"]


def test_a_bad_interval_is_reported_alone_not_with_a_default_timeout() -> None:
    assert problems(GOOD + "    interval: 0s\n") == ["checks[0].interval: must be greater than 0"]
    assert problems(GOOD + "    interval: 2\n") == [
        "checks[0].interval: expected a duration such as '10s' or '250ms', got 2"
    ]


def test_sub_second_intervals_are_allowed() -> None:
    cfg = parse_config(GOOD + "    interval: 250ms\n    timeout: 200ms\n", env={})
    assert cfg.checks[0].interval == 0.25


def test_exactly_one_baseline_and_one_candidate() -> None:
    text = with_changes(
        platforms={
            "a": {"role": "baseline", "base_url": "http://a"},
            "b": {"role": "baseline", "base_url": "http://b"},
        }
    )
    assert problems(text) == [
        "platforms: exactly two platforms are needed, one with role baseline and one with "
        "role candidate (found 2: a=baseline, b=baseline)"
    ]
    three = with_changes(
        platforms={
            "a": {"role": "baseline", "base_url": "http://a"},
            "b": {"role": "candidate", "base_url": "http://b"},
            "c": {"role": "candidate", "base_url": "http://c"},
        }
    )
    assert problems(three)[0].startswith("platforms: exactly two platforms are needed")


def test_role_and_platform_name_rules() -> None:
    text = with_changes(
        platforms={
            "Heroku!": {"role": "baseline", "base_url": "http://a"},
            "aws": {"role": "canary", "base_url": "http://b"},
        }
    )
    assert problems(text) == [
        "platforms.Heroku!.[key]: invalid name 'Heroku!': use lowercase letters, digits, '_' and '-'",
        "platforms.aws.role: Input should be 'baseline' or 'candidate'",
    ]


def test_unique_check_names() -> None:
    text = GOOD + "  - name: ready\n    path: /ready\n  - name: health\n    path: /h2\n"
    assert problems(text) == ["checks[2].name: duplicate check name 'health' (also checks[0])"]


def test_missing_required_keys() -> None:
    assert problems("checks:\n  - path: /x\n") == [
        "platforms: required key is missing",
        "checks[0].name: required key is missing",
    ]


def test_no_checks() -> None:
    assert problems(with_changes(checks=[])) == ["checks: at least one check is required"]


def test_invalid_yaml_has_line_and_column() -> None:
    details = problems("platforms:\n  heroku: {role: baseline\nchecks: []\n")
    assert details == [
        "t.yml:3:7: invalid YAML: while parsing a flow mapping: expected ',' or '}', but got ':'"
    ]


def test_not_a_mapping_and_empty() -> None:
    assert problems("- a\n- b\n") == ["(top level): expected a mapping, got list"]
    assert problems("") == ["(top level): the file is empty"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yml")
    assert info.value.details == [f"{tmp_path / 'nope.yml'}: no such file"]


def test_route53_judge_alerting_sections_validate() -> None:
    text = with_changes(
        route53={
            "interval": "30s",
            "records": [
                {
                    "hosted_zone_id": "Z1",
                    "name": "api.example.com",
                    "set_identifiers": {"heroku": "heroku", "gcp": "x"},
                }
            ],
        },
        judge={"confidence": 1.5, "latency": {"max_ratio": 0.5, "min_increase": "fast"}},
        alerting={"for": "1m", "slack": {"token": "xoxb-1"}},
    )
    # the rules between sections run although judge is invalid: one run says it all
    assert problems(text) == [
        "route53.records[0].set_identifiers: no SetIdentifier for platform 'aws'",
        "route53.records[0].set_identifiers.gcp: unknown platform 'gcp' (platforms: heroku, aws)",
        "judge.confidence: Input should be less than 1",
        "judge.latency.max_ratio: Input should be greater than or equal to 1",
        "judge.latency.min_increase: invalid duration 'fast': use a number and a unit "
        "(ms, s, m, h), e.g. '10s'",
        "alerting.slack.channel: required with token",
    ]
    fixed = with_changes(
        route53={
            "records": [
                {
                    "hosted_zone_id": "Z1",
                    "name": "api.example.com",
                    "set_identifiers": {"heroku": "heroku", "gcp": "x"},
                }
            ],
        },
        alerting={"slack": {"token": "xoxb-1"}},
        checks=[{"name": "health", "path": "/health", "record": "www.example.com"}],
    )
    assert problems(fixed) == [  # in the file's order: checks come before route53 there
        "checks[0].record: 'www.example.com' is not one of route53.records",
        "route53.records[0].set_identifiers: no SetIdentifier for platform 'aws'",
        "route53.records[0].set_identifiers.gcp: unknown platform 'gcp' (platforms: heroku, aws)",
        "alerting.slack.channel: required with token",
    ]


def test_slack_token_or_webhook_not_both_and_secrets_not_echoed() -> None:
    text = with_changes(
        alerting={"slack": {"token": "xoxb-secret-1", "webhook_url": "not a url secret-2"}}
    )
    details = problems(text)
    assert details == [
        # which of token and webhook_url should go cannot be told while one is invalid;
        # the token as written still lacks its channel
        "alerting.slack.channel: required with token",
        "alerting.slack.webhook_url: invalid URL: expected http:// or https:// and a host",
    ]
    both = with_changes(
        alerting={
            "slack": {"token": "xoxb-1", "webhook_url": "https://hooks.example/x", "channel": "#m"}
        }
    )
    assert problems(both) == ["alerting.slack: set exactly one of token and webhook_url"]
    assert all("secret" not in d for d in details)


def test_check_record_resolution() -> None:
    text = with_changes(
        route53={
            "records": [
                {
                    "hosted_zone_id": "Z1",
                    "name": "api.example.com.",
                    "set_identifiers": {"heroku": "h", "aws": "a"},
                },
            ]
        }
    )
    cfg = parse_config(text, env={})
    record = cfg.record_for(cfg.checks[0])
    assert record is not None and record.key == "api.example.com"


# -- every problem in one run ---------------------------------------------------------------

# The issue's combination, all in one check: two baselines, a record that is not in route53,
# a timeout over the interval and a typo. The rules between sections (roles, references) used
# to wait for a file valid section by section, so this took three runs to learn.
FOUR_PROBLEMS = """\
platforms:
  heroku: {role: baseline, base_url: "https://myapp.herokuapp.com"}
  aws: {role: baseline, base_url: "https://lb.example.com"}
checks:
  - name: health
    path: /health
    interval: 10s
    timeout: 20s
    record: www.example.com
    exepct: {status: [200]}
route53:
  records:
    - {hosted_zone_id: Z1, name: api.example.com, set_identifiers: {heroku: h, aws: a}}
"""


def test_the_issues_four_problems_in_one_run_in_file_order() -> None:
    assert problems(FOUR_PROBLEMS) == [
        "platforms: exactly two platforms are needed, one with role baseline and one with "
        "role candidate (found 2: heroku=baseline, aws=baseline)",
        "checks[0].timeout: 20s must not exceed the interval (10s)",
        "checks[0].record: 'www.example.com' is not one of route53.records",
        "checks[0].exepct: unknown key",
    ]


def test_an_invalid_check_and_a_duplicate_name() -> None:
    text = GOOD + (
        "  - name: Ready\n    path: /ready\n"  # invalid as a whole: no name to compare
        "  - name: health\n    path: h2\n"  # invalid path, valid (and duplicate) name
    )
    assert problems(text) == [
        "checks[1].name: invalid name 'Ready': use lowercase letters, digits, '_' and '-'",
        "checks[2].name: duplicate check name 'health' (also checks[0])",
        "checks[2].path: invalid path 'h2': must start with '/' and contain no spaces",
    ]


ROUTE53 = {
    "records": [
        {
            "hosted_zone_id": "Z1",
            "name": "api.example.com",
            "set_identifiers": {"heroku": "h", "aws": "a"},
        }
    ]
}


def test_a_shift_on_an_unknown_record_while_a_platform_has_a_bad_url() -> None:
    text = with_changes(
        platforms={
            "heroku": {"role": "baseline", "base_url": "ftp://x"},
            "aws": {"role": "candidate", "base_url": "https://lb.example.com"},
        },
        route53=ROUTE53,
        shift={"record": "www.example.com", "steps": [10, 50], "rollback_to": 20},
    )
    assert problems(text) == [
        "platforms.heroku.base_url: invalid URL 'ftp://x': expected http:// or https:// and a host",
        "shift.record: 'www.example.com' is not one of route53.records",
        "shift.rollback_to: must be below the first step",
    ]


def test_roles_are_judged_on_platforms_whose_other_keys_are_invalid() -> None:
    text = with_changes(
        platforms={
            "heroku": {"role": "baseline", "base_url": "ftp://x"},
            "aws": {"role": "baseline"},
        },
        checks=[{"name": "health", "path": "health", "record": "api.example.com"}],
        alerting={"slack": {"webhook_url": "https://hooks.example/x", "token": "xoxb-1"}},
    )
    assert problems(text) == [
        "platforms: exactly two platforms are needed, one with role baseline and one with "
        "role candidate (found 2: heroku=baseline, aws=baseline)",
        "platforms.heroku.base_url: invalid URL 'ftp://x': expected http:// or https:// and a host",
        "platforms.aws.base_url: required key is missing",
        "checks[0].path: invalid path 'health': must start with '/' and contain no spaces",
        "checks[0].record: 'api.example.com' is not one of route53.records "
        "(there is no route53 section)",
        "alerting.slack: set exactly one of token and webhook_url",
        "alerting.slack.channel: required with token",
    ]


def test_a_rule_is_skipped_when_what_it_reads_is_invalid() -> None:
    # a record without a valid name might be the one a reference means: no guess is reported,
    # only what is certain (the records' own problems, the other rules)
    text = with_changes(
        checks=[
            {"name": "health", "path": "/health", "record": "www.example.com"},
            {"name": "ready", "path": "/ready", "record": 42},
        ],
        route53={
            "records": [
                ROUTE53["records"][0],
                {"hosted_zone_id": "Z2", "name": "", "set_identifiers": {"heroku": "h"}},
            ]
        },
        shift={"record": "www.example.com"},
    )
    assert problems(text) == [
        "checks[1].record: Input should be a valid string",
        "route53.records[1].name: String should have at least 1 character",
        "route53.records[1].set_identifiers: no SetIdentifier for platform 'aws'",
    ]
    # every record is known now, so the shift's record is found; whether a check is tied to it
    # cannot be told while checks[1]'s record is invalid
    text = with_changes(
        checks=[
            {"name": "health", "path": "/health", "record": "api.example.com"},
            {"name": "ready", "path": "/ready", "record": 42},
        ],
        route53={
            "records": [
                ROUTE53["records"][0],
                {**ROUTE53["records"][0], "name": "www.example.com", "hosted_zone_id": ""},
            ]
        },
        shift={"record": "www.example.com"},
    )
    assert problems(text) == [
        "checks[1].record: Input should be a valid string",
        "route53.records[1].hosted_zone_id: String should have at least 1 character",
    ]


def test_what_only_the_prober_refuses_is_reported_beside_other_problems_of_the_check() -> None:
    # a NUL passes the header rule but not the prober: said in the same run as the timeout
    text = GOOD + '    timeout: 20s\n    headers: {X-A: "a\\0b"}\n'
    assert problems(text) == [
        "checks[0]: header X-A has a line break or NUL in its value",
        "checks[0].timeout: 20s must not exceed the interval (15s)",
    ]


def test_a_platform_may_be_called_like_a_type() -> None:
    text = with_changes(
        platforms={
            "none": {"role": "baseline", "base_url": "ftp://x"},
            "int": {"role": "candidate", "base_url": "https://lb.example.com"},
        }
    )
    assert problems(text) == [
        "platforms.none.base_url: invalid URL 'ftp://x': expected http:// or https:// and a host"
    ]


# -- the command line ---------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def test_check_command_good_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(GOOD)
    ok = run_cli("check", "--config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert f"{good}: OK" in ok.stdout and "health: GET /health every 15s" in ok.stdout
    assert "traffic: not configured (probes only)" in ok.stdout

    bad = tmp_path / "bad.yml"
    bad.write_text(GOOD + "    timeout: 20s\n    bogus: 1\n")
    res = run_cli("check", "--config", str(bad))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"cutover: invalid configuration {bad}:",
        "  checks[0].timeout: 20s must not exceed the interval (15s)",
        "  checks[0].bogus: unknown key",
    ]
    assert "Traceback" not in res.stderr


def test_check_command_summarises_traffic_sources_without_their_secrets(tmp_path: Path) -> None:
    good = tmp_path / "traffic.yml"
    good.write_text(
        GOOD
        + """\
traffic:
  min_requests: 150
  routes: [{name: redemptions, path_regex: '^/v1/redemptions'}]
  sources:
    - platform: heroku
      heroku_drain: {token: "${DRAIN_TOKEN}", hosts: [api.example.com]}
    - platform: aws
      prometheus:
        url: http://127.0.0.1:9090
        preset: ingress-nginx
        route_label: path
        headers: {Authorization: "Bearer ${PROM_TOKEN}"}
"""
    )
    env = {**os.environ, "DRAIN_TOKEN": "drain-token-0123456789", "PROM_TOKEN": "prom-secret-42"}
    ok = run_cli("check", "--config", str(good), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "traffic: window 5m, min 150 requests per side, route groups: redemptions" in ok.stdout
    assert "heroku/heroku_drain: Heroku log drain POSTs to /api/v1/drains/heroku" in ok.stdout
    assert (
        "aws/prometheus: Prometheus http://127.0.0.1:9090 every 15s, preset ingress-nginx, "
        "routes by path, headers: Authorization" in ok.stdout
    )
    assert "drain-token-0123456789" not in ok.stdout and "prom-secret-42" not in ok.stdout


def test_check_command_prints_every_problem_of_one_run(tmp_path: Path) -> None:
    bad = tmp_path / "four.yml"
    bad.write_text(FOUR_PROBLEMS)
    res = run_cli("check", "--config", str(bad))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"cutover: invalid configuration {bad}:",
        "  platforms: exactly two platforms are needed, one with role baseline and one with "
        "role candidate (found 2: heroku=baseline, aws=baseline)",
        "  checks[0].timeout: 20s must not exceed the interval (10s)",
        "  checks[0].record: 'www.example.com' is not one of route53.records",
        "  checks[0].exepct: unknown key",
    ]
    assert res.stdout == ""


def test_check_command_reads_cutover_config_env(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(GOOD)
    import os

    env = dict(os.environ, CUTOVER_CONFIG=str(good))
    assert run_cli("check", env=env).returncode == 0
    missing = run_cli("check", env={k: v for k, v in env.items() if k != "CUTOVER_CONFIG"})
    assert missing.returncode == 2
    assert "pass --config FILE or set CUTOVER_CONFIG" in missing.stderr


def test_run_with_invalid_yaml_and_missing_file_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("platforms: [\n")
    res = run_cli("run", "--config", str(bad), "--listen", "127.0.0.1:0")
    assert res.returncode == 2 and "invalid YAML" in res.stderr and f"{bad}:" in res.stderr
    res = run_cli("run", "--config", str(tmp_path / "none.yml"))
    assert res.returncode == 2 and "no such file" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_flags_and_env_exit_2(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(GOOD)
    res = run_cli("run", "--config", str(good), "--listen", "nowhere")
    assert res.returncode == 2 and "--listen: invalid listen address 'nowhere'" in res.stderr
    import os

    env = dict(os.environ, CUTOVER_LOG_LEVEL="loud")
    res = run_cli("run", "--config", str(good), env=env)
    assert res.returncode == 2 and "CUTOVER_LOG_LEVEL='loud'" in res.stderr
    assert run_cli("frobnicate").returncode == 2


def test_credentials_in_urls_are_refused_without_echoing_them() -> None:
    text = GOOD.replace("https://lb.example.com", "https://user:hunter2@lb.example.com")
    assert problems(text) == [
        "platforms.aws.base_url: invalid URL: credentials in a URL are not allowed, use headers"
    ]


RE2_REFUSED = """\
platforms:
  heroku: {role: baseline, base_url: "https://myapp.herokuapp.com"}
  aws: {role: candidate, base_url: "https://lb.example.com"}
checks:
  - name: backref
    path: /a
    expect: {body_regex: '"(ok|up)" == "\\1"'}
  - name: lookahead
    path: /b
    expect: {body_regex: '"status":(?=\\s*"ok")'}
  - name: huge
    path: /c
    expect: {body_regex: '[\\s\\S]{600}[\\s\\S]{600}z'}
  - name: Bad
    path: /d
    interval: 1s
    timeout: 2s
    expect: {body_regex: 'ok\\Z'}
  - name: fine
    path: /e
    expect: {body_regex: '"status":\\s*"ok"\\s*}\\z'}
"""


def test_body_regex_that_re2_cannot_run_is_refused_with_every_other_problem() -> None:
    # Backreferences, lookaround and huge programs have no linear-time match: refused at
    # load, where they are, in the same report as the rest.
    got = problems(RE2_REFUSED)
    expected = [
        "checks[0].expect.body_regex: not supported by RE2 (linear-time): invalid escape "
        "sequence: \\1",
        "checks[1].expect.body_regex: not supported by RE2 (linear-time): invalid perl "
        "operator: (?=",
        "checks[2].expect.body_regex: pattern too large for a fast linear-time match: 1205 RE2 "
        "instructions, at most 1000 (every copy of a repetition such as {100} counts)",
        "checks[3].name: invalid name 'Bad': use lowercase letters, digits, '_' and '-'",
        "checks[3].timeout: 2s must not exceed the interval (1s)",
        "checks[3].expect.body_regex: not supported by RE2 (linear-time): invalid escape "
        "sequence: \\Z (RE2 writes the end of the text as \\z)",
    ]
    for line in expected:
        assert line in got, got
    assert not [line for line in got if line.startswith("checks[4]")]


def test_check_command_refuses_a_pattern_quietly(tmp_path: Path) -> None:
    # RE2 logs every pattern it cannot parse on stderr unless told not to.
    path = tmp_path / "re2.yml"
    path.write_text(RE2_REFUSED)
    res = run_cli("check", "--config", str(path))
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert any(
        line.endswith(
            "checks[0].expect.body_regex: not supported by RE2 (linear-time): invalid escape sequence: \\1"
        )
        for line in lines
    ), res.stderr
    assert "re2.cc" not in res.stderr and "Error parsing" not in res.stderr


SHIFTED = {
    "route53": {
        "records": [
            {
                "hosted_zone_id": "Z1",
                "name": "api.example.com",
                "set_identifiers": {"heroku": "heroku", "aws": "aws"},
            }
        ]
    },
    "checks": [{"name": "health", "path": "/health", "record": "api.example.com"}],
}


def test_readiness_defaults_and_the_hold_from_the_shift() -> None:
    cfg = parse_config(GOOD, env={})
    r = cfg.readiness
    assert (r.hold, r.min_probes, r.min_requests, r.confidence) == (None, 50, 500, 0.95)
    assert cfg.readiness_hold == 1800  # no shift: 30m
    shifted = with_changes(**SHIFTED, shift={"record": "api.example.com", "hold": "10m"})
    assert parse_config(shifted, env={}).readiness_hold == 600
    own = with_changes(
        **SHIFTED,
        shift={"record": "api.example.com", "hold": "10m"},
        readiness={"hold": "45m", "min_probes": 20, "min_requests": 100, "confidence": 0.9},
    )
    cfg = parse_config(own, env={})
    assert cfg.readiness_hold == 2700
    assert (cfg.readiness.min_probes, cfg.readiness.min_requests) == (20, 100)
    assert cfg.readiness.confidence == 0.9
    assert (cfg.readiness_min_probes, cfg.readiness_min_requests) == (20, 100)


def test_the_shifts_older_minimums_stand_in_for_readinesss() -> None:
    """shift.min_samples / min_requests, from before readiness, where readiness sets none."""
    shift = {"record": "api.example.com", "min_samples": 30}
    cfg = parse_config(with_changes(**SHIFTED, shift=shift), env={})
    assert (cfg.readiness_min_probes, cfg.readiness_min_requests) == (30, 500)
    own = with_changes(**SHIFTED, shift=shift, readiness={"min_probes": 80})
    assert parse_config(own, env={}).readiness_min_probes == 80
    # neither says: readiness's defaults (not the shift's, whose min_requests used to be 0)
    cfg = parse_config(with_changes(**SHIFTED, shift={"record": "api.example.com"}), env={})
    assert (cfg.readiness_min_probes, cfg.readiness_min_requests) == (50, 500)


def test_readiness_is_strict_and_says_where() -> None:
    text = with_changes(
        readiness={
            "hold": "soon",
            "min_probes": 0,
            "min_requests": -1,
            "confidence": 0.5,
            "holdd": "1m",
        }
    )
    assert problems(text) == [
        "readiness.hold: invalid duration 'soon': use a number and a unit (ms, s, m, h), e.g. '10s'",
        "readiness.min_probes: Input should be greater than or equal to 1",
        "readiness.min_requests: Input should be greater than or equal to 1",
        "readiness.confidence: Input should be greater than 0.5",
        "readiness.holdd: unknown key",
    ]
    assert problems(with_changes(readiness={"confidence": 1})) == [
        "readiness.confidence: Input should be less than 1"
    ]
    assert problems(with_changes(readiness={"hold": "0s"})) == [
        "readiness.hold: must be greater than 0"
    ]
    assert problems(with_changes(readiness=[1])) == [
        "readiness: Input should be a valid dictionary or instance of ReadinessConfig"
    ]


BIG_CONFIG = (
    "platforms:\n"
    "  heroku: {role: baseline, base_url: 'http://127.0.0.1:1'}\n"
    "  aws: {role: candidate, base_url: 'http://127.0.0.1:2'}\n"
    "checks:\n"
    + "".join(
        f"  - {{name: c{i:05d}, path: /probe, interval: 10s, timeout: 2s, record: api}}\n"
        for i in range(1000)
    )
)


def test_a_big_config_parses_without_a_big_peak() -> None:
    """What a parse allocates and frees stays in the daemon's RSS: libyaml's loader (PyYAML's
    wheels have it) allocates a third less than the pure-Python one (98 bytes per byte of
    YAML at its peak there, 65 here)."""
    with pytest.raises(ConfigError):  # no such record: the parse and its peak happen anyway
        parse_config(BIG_CONFIG)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError):
            parse_config(BIG_CONFIG)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / len(BIG_CONFIG) < 80


def test_a_checks_settings_stay_small() -> None:
    """The daemon keeps the configuration: with 5000 checks, each byte of a check is 5 kB.
    Frozen models given the same keys share pydantic's set of given fields (1.86 kB a check
    with a set each, 0.92 kB shared), and checks without `expect` one default (0.65 kB)."""
    text = BIG_CONFIG.replace(", record: api", "")
    parse_config(text)
    tracemalloc.start()
    try:
        cfg = parse_config(text)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held / len(cfg.checks) < 800
    assert cfg.checks[0].expect is cfg.checks[1].expect  # no `expect`: one shared default
    first, last = cfg.checks[0], cfg.checks[-1]
    assert (
        first.model_fields_set == last.model_fields_set == {"name", "path", "interval", "timeout"}
    )
    assert first.model_fields_set is last.model_fields_set
