"""rules/: promtool's checks and unit tests, the conventions every rule keeps, and the example
Alertmanager configuration (amtool)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.store.lease import LeaseSnapshot
from exporter.store.vantages import VantageLine, VantagesSnapshot
from exporter.web.collector import lease_families, vantage_families
from tests.conftest import ROOT, need_tool

RULES_DIR = ROOT / "rules"
RULES = RULES_DIR / "cutover.rules.yml"
RULE_TESTS = RULES_DIR / "cutover.test.yml"
ALERTMANAGER = RULES_DIR / "alertmanager.example.yml"

SPEC_ALERTS = {
    "CutoverCandidateDown",
    "CutoverCandidateErrorRegression",
    "CutoverCandidateLatencyRegression",
    "CutoverTrafficOnFailingPlatform",
    "CutoverTrafficErrorRegression",
    "CutoverTrafficLatencyRegression",
    "CutoverTrafficSplitDiverges",
    "CutoverTrafficSourceDown",
    "CutoverRoute53Stale",
    "CutoverExporterDown",
    "CutoverCertificateExpiringSoon",
    "CutoverNotificationsFailing",
} | {
    # several replicas (issue 14)
    "CutoverNoLeader",
    "CutoverLeaseErrors",
    "CutoverVantageDown",
}
# what the HA rules read that the daemon does not export yet
HA_METRICS_TO_COME: set[str] = set()


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def run(*cmd: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_check_rules() -> None:
    promtool = need_tool("promtool")
    r = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout
    assert "WARNING" not in r.stdout + r.stderr


def test_promtool_unit_tests() -> None:
    promtool = need_tool("promtool")
    r = run(promtool, "test", "rules", RULE_TESTS.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_a_broken_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests compare annotations word for word: a wrong figure is caught."""
    promtool = need_tool("promtool")
    (tmp_path / RULES.name).write_text(RULES.read_text())
    broken = RULE_TESTS.read_text().replace(
        "p95 240ms on the candidate", "p95 250ms on the candidate"
    )
    assert broken != RULE_TESTS.read_text()
    (tmp_path / RULE_TESTS.name).write_text(broken)
    r = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    report = r.stdout + r.stderr
    assert r.returncode == 1 and "alertname: CutoverCandidateLatencyRegression" in report
    assert "p95 240ms on the candidate against 80ms on the baseline (3.0x)" in report


def test_the_eight_alerts_of_the_spec() -> None:
    assert set(alerts()) == SPEC_ALERTS


@pytest.mark.parametrize("name", sorted(SPEC_ALERTS))
def test_alert_conventions(name: str) -> None:
    rule = alerts()[name]
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert {"summary", "description", "runbook"} <= set(annotations)
    # the figures come from templating ($value, labels or queries), never hard-coded
    assert "{{" in annotations["description"]
    assert re.match(r"^Cutover[A-Z][A-Za-z0-9]+$", name)
    # generic over platform names: the role label, never a platform's name
    text = yaml.safe_dump(rule)
    assert not re.search(r"heroku|\baws\b", text, re.IGNORECASE), text


def test_recording_rule_names_are_level_metric_operation() -> None:
    names = [r["record"] for r in rules() if "record" in r]
    assert names
    for name in names:
        level, metric, operation = name.split(":")
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", level), name
        assert metric.startswith("cutover_"), name
        assert re.fullmatch(r"[a-z0-9_]+", operation), name


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
            for alert in case["exp_alerts"]:
                # labels and annotations are both checked
                assert alert["exp_labels"]["severity"]
                assert {"summary", "description", "runbook"} <= set(alert["exp_annotations"])
    assert fired == SPEC_ALERTS
    assert quiet == SPEC_ALERTS


def test_traffic_alert_joins_on_the_traffic_share() -> None:
    expr = alerts()["CutoverTrafficOnFailingPlatform"]["expr"]
    assert "cutover_route53_traffic_share" in expr or "traffic_share:max > 0" in expr
    assert "on (job, instance, platform)" in expr


def test_ha_rules_read_the_metrics_the_lease_exports() -> None:
    """The HA alerts read cutover_ha_* series by the names the collector gives them (counters
    with `_total`), and CutoverNoLeader is the leaderless flag every replica exports."""
    registry = CollectorRegistry()
    snap = LeaseSnapshot(
        vantage="eu-west-1",
        leader=False,
        epoch=3,
        owner=None,
        leaderless_seconds=60.0,
        leaderless_after=30.0,
        errors={"timeout": 2},
    )

    vantages = VantagesSnapshot(
        vantage="eu-west-1",
        leader=True,  # the leader exports the vantages' health
        interval=5.0,
        confirm=1,
        quorum=2,
        lines=(
            VantageLine("eu-west-1", "healthy", 1.0, 7),
            VantageLine("us-east-1", "silent", 40.0, 3),
        ),
        may_advance=False,
        reasons=("only 1 of 2 vantages healthy (us-east-1 silent for 40 s)",),
        errors={"timeout": 0},
        failing=None,
    )

    class Lease(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from lease_families(snap)
            yield from vantage_families(vantages)

    registry.register(Lease())
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in generate_latest(registry).decode().splitlines()
        if line and not line.startswith("#")
    }
    used: set[str] = set()
    for rule in rules():
        used |= set(re.findall(r"\bcutover_ha_[a-z_]+", yaml.safe_dump(rule)))
    assert used - exported <= HA_METRICS_TO_COME, used - exported
    assert {"cutover_ha_leaderless", "cutover_ha_lease_errors_total"} <= used
    assert alerts()["CutoverNoLeader"]["expr"].strip() == "cutover_ha_leaderless == 1"
    assert "cutover_ha_leaderless 1.0" in generate_latest(registry).decode()
    assert alerts()["CutoverVantageDown"]["expr"].strip() == "cutover_ha_vantage_healthy == 0"
    assert (
        'cutover_ha_vantage_healthy{vantage="us-east-1"} 0.0' in generate_latest(registry).decode()
    )


def test_exporter_down_covers_a_missing_target() -> None:
    expr = alerts()["CutoverExporterDown"]["expr"]
    assert 'absent(up{job="cutover"})' in expr and 'up{job="cutover"} == 0' in expr


# -- Alertmanager -------------------------------------------------------------------------------


def test_amtool_check_config() -> None:
    amtool = need_tool("amtool")
    r = run(amtool, "check-config", ALERTMANAGER.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout and "1 templates" in r.stdout


def test_alertmanager_sends_to_slack_with_resolved_grouped_per_check() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    assert "check" in config["route"]["group_by"]
    receivers = {r["name"]: r for r in config["receivers"]}
    for receiver in receivers.values():
        (slack,) = receiver["slack_configs"]
        assert slack["send_resolved"] is True
    assert "slack_api_url_file" in config["global"], "the webhook URL stays out of the file"


def test_one_replica_down_does_not_silence_the_others() -> None:
    """With several replicas, CutoverExporterDown of one of them inhibits only that replica's
    alerts: another replica's CutoverNoLeader or CutoverCandidateDown still goes out."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    (rule,) = [
        r
        for r in config["inhibit_rules"]
        if 'alertname = "CutoverExporterDown"' in r["source_matchers"]
    ]
    assert set(rule["equal"]) == {"job", "instance"}


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=CutoverCandidateDown", "check=health", "severity=critical"], "slack-migration-critical"),
        (["alertname=CutoverCandidateLatencyRegression", "check=health", "severity=warning"], "slack-migration"),
        (["alertname=CutoverExporterDown", "job=cutover", "severity=critical"], "slack-migration-critical"),
        (["alertname=CutoverRoute53Stale", "severity=warning"], "slack-migration"),
        (["alertname=CutoverNoLeader", "job=cutover", "instance=cutover-0:9877", "severity=critical"], "slack-migration-critical"),
        (["alertname=CutoverLeaseErrors", "job=cutover", "severity=warning"], "slack-migration"),
    ],
)  # fmt: skip
def test_alertmanager_routes(labels: list[str], receiver: str) -> None:
    amtool = need_tool("amtool")
    r = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER.name}", *labels)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == [receiver]


def test_slack_template_renders() -> None:
    amtool = need_tool("amtool")
    r = run(
        amtool,
        "template",
        "render",
        "--template.glob=cutover.tmpl",
        '--template.text={{ template "cutover.slack.title" . }}|{{ template "cutover.slack.text" . }}',
    )
    assert r.returncode == 0, r.stdout + r.stderr
