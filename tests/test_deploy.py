"""deploy/: the Kubernetes base rendered by kustomize, the compose stack's wiring, the systemd unit."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from botocore import xform_name

from tests.conftest import ROOT, daemon_env, need_tool

KUBE = ROOT / "deploy" / "kubernetes"
KUBE_HA = ROOT / "deploy" / "kubernetes-ha"
IAM = ROOT / "deploy" / "iam"
COMPOSE = ROOT / "deploy" / "compose"
UNIT = ROOT / "deploy" / "systemd" / "cutover.service"
RULES = ROOT / "rules" / "cutover.rules.yml"


def image_user() -> int:
    (user,) = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    return int(user)


def cutover_check(config_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "cutover.yml"
    path.write_text(config_text)
    return subprocess.run(
        [sys.executable, "-m", "exporter", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=daemon_env(SLACK_BOT_TOKEN="xoxb-test", HEALTH_TOKEN="t"),
        timeout=60,
    )


# -- Kubernetes ---------------------------------------------------------------------------------


def test_prometheusrule_is_generated_from_rules_and_up_to_date() -> None:
    r = subprocess.run(
        [sys.executable, str(KUBE / "generate_prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    generated = yaml.safe_load((KUBE / "prometheusrule.yaml").read_text())
    assert generated["kind"] == "PrometheusRule"
    assert generated["spec"] == yaml.safe_load(RULES.read_text())


def test_a_stale_prometheusrule_is_detected(tmp_path: Path) -> None:
    # the generator on a copy of the tree whose rules changed
    (tmp_path / "rules").mkdir()
    (tmp_path / "deploy/kubernetes").mkdir(parents=True)
    (tmp_path / "rules/cutover.rules.yml").write_text(
        RULES.read_text().replace("severity: warning", "severity: info", 1)
    )
    script = tmp_path / "deploy/kubernetes/generate_prometheusrule.py"
    script.write_text((KUBE / "generate_prometheusrule.py").read_text())
    (tmp_path / "deploy/kubernetes/prometheusrule.yaml").write_text(
        (KUBE / "prometheusrule.yaml").read_text()
    )
    r = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert r.returncode == 1 and "stale" in r.stderr
    subprocess.run([sys.executable, str(script)], check=True)
    r = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert r.returncode == 0


def kustomize(path: Path) -> dict[str, dict[str, Any]]:
    """`kubectl kustomize PATH`, by kind (one object of each)."""
    kubectl = need_tool("kubectl")
    r = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    objects = [o for o in yaml.safe_load_all(r.stdout) if o]
    by_kind = {o["kind"]: o for o in objects}
    assert len(by_kind) == len(objects), [o["kind"] for o in objects]
    return by_kind


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    """`kubectl kustomize deploy/kubernetes`, by kind (one object of each)."""
    return kustomize(KUBE)


def test_kustomize_renders_every_object(rendered: dict[str, dict[str, Any]]) -> None:
    assert set(rendered) == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
    }
    for obj in rendered.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "cutover"
    assert rendered["PrometheusRule"]["spec"] == yaml.safe_load(RULES.read_text())


def test_deployment(rendered: dict[str, dict[str, Any]]) -> None:
    deploy = rendered["Deployment"]
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"].endswith(":0.1.0")
    assert pod["serviceAccountName"] == rendered["ServiceAccount"]["metadata"]["name"]

    # probes
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http-metrics": 9877}
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http-metrics"}
    assert c["startupProbe"]["httpGet"]["path"] == "/-/healthy"

    # resources: requests, and a memory limit
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]

    # non-root, read-only root filesystem, nothing more
    psc, csc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == image_user()
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]

    # the configuration from the generated ConfigMap, the token from a Secret
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    cm = rendered["ConfigMap"]
    assert volumes[mounts["/config"]["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert mounts["/config"]["readOnly"] is True
    config_file = c["args"][c["args"].index("--config") + 1]
    assert config_file.startswith("/config/") and Path(config_file).name in cm["data"]
    config = yaml.safe_load(cm["data"][Path(config_file).name])
    (token,) = [e for e in c["env"] if e["name"] == "SLACK_BOT_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "cutover-slack", "key": "token"}
    assert config["alerting"]["slack"]["token"] == "${SLACK_BOT_TOKEN}"

    # state_dir is writable (the root filesystem is not)
    state = mounts[config["state_dir"]]
    assert "emptyDir" in volumes[state["name"]] or "persistentVolumeClaim" in volumes[state["name"]]
    assert not state.get("readOnly")
    assert config["listen"].endswith(":9877")


def test_control_token_comes_from_the_secret(rendered: dict[str, dict[str, Any]]) -> None:
    """Shift control needs CUTOVER_CONTROL_TOKEN in the daemon's environment: the pod takes it
    from the Slack token's Secret, optional so that a Secret without it still starts the pod
    (control is then disabled), and deploy/README says how to set it."""
    (c,) = rendered["Deployment"]["spec"]["template"]["spec"]["containers"]
    (token,) = [e for e in c["env"] if e["name"] == "CUTOVER_CONTROL_TOKEN"]
    (slack,) = [e for e in c["env"] if e["name"] == "SLACK_BOT_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "cutover-slack", "key": "control-token", "optional": True}
    assert ref["name"] == slack["valueFrom"]["secretKeyRef"]["name"]
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "--from-literal=control-token=" in readme and "CUTOVER_CONTROL_TOKEN" in readme


def test_kubernetes_configuration_is_valid(
    rendered: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    text = rendered["ConfigMap"]["data"]["cutover.yml"]
    r = cutover_check(text, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_service_and_servicemonitor_select_the_pod(rendered: dict[str, dict[str, Any]]) -> None:
    pod_labels = rendered["Deployment"]["spec"]["template"]["metadata"]["labels"]
    svc = rendered["Service"]
    assert svc["metadata"]["name"] == "cutover", "the job name rules/ assumes"
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == "http-metrics" and port["name"] == "http-metrics"
    sm = rendered["ServiceMonitor"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"


def test_irsa_annotation_and_note(rendered: dict[str, dict[str, Any]]) -> None:
    sa = rendered["ServiceAccount"]
    arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn)
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "IRSA" in readme and "route53-read-policy.json" in readme


# -- Kubernetes with several replicas (deploy/kubernetes-ha) -------------------------------------

HA_ENV = ("VANTAGE_REGION", "POD_NAME", "CUTOVER_VANTAGE")


@pytest.fixture(scope="module")
def rendered_ha() -> dict[str, dict[str, Any]]:
    """`kubectl kustomize deploy/kubernetes-ha`, by kind (one object of each)."""
    return kustomize(KUBE_HA)


def expand(env: list[dict[str, Any]], pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet makes it: `$(NAME)` is replaced by a variable
    defined *earlier* in the list; the downward API's metadata.name is the pod's name."""
    out: dict[str, str] = {}
    for e in env:
        if "value" in e:
            out[e["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: out.get(m.group(1), m.group(0)), e["value"]
            )
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            out[e["name"]] = pod_name
    return out


def test_ha_overlay_objects(rendered_ha: dict[str, dict[str, Any]]) -> None:
    """The base's objects, its Deployment as a StatefulSet (stable replica names), and a
    PodDisruptionBudget; all labelled like the base."""
    assert set(rendered_ha) == {
        "ServiceAccount",
        "ConfigMap",
        "StatefulSet",
        "PodDisruptionBudget",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
    }
    for obj in rendered_ha.values():
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "cutover"
    assert rendered_ha["PrometheusRule"]["spec"] == yaml.safe_load(RULES.read_text())


def test_ha_pod_is_the_base_pod_plus_vantage_and_affinity(
    rendered: dict[str, dict[str, Any]], rendered_ha: dict[str, dict[str, Any]]
) -> None:
    """Every probe (readiness on /-/ready: followers are ready like the leader), the security
    context, resources, secrets and volumes come from the base unchanged."""
    base = rendered["Deployment"]["spec"]["template"]
    ha = rendered_ha["StatefulSet"]["spec"]["template"]
    ha_pod = ha["spec"]
    assert "affinity" in ha_pod and "affinity" not in base["spec"]
    (c,) = ha_pod["containers"]
    assert [e["name"] for e in c["env"][: len(HA_ENV)]] == list(HA_ENV)
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http-metrics"}

    def without_ha(template: dict[str, Any]) -> dict[str, Any]:
        t: dict[str, Any] = yaml.safe_load(yaml.safe_dump(template))
        t["spec"].pop("affinity", None)
        (container,) = t["spec"]["containers"]
        container["env"] = [e for e in container["env"] if e["name"] not in HA_ENV]
        for v in t["spec"]["volumes"]:
            if "configMap" in v:  # the name carries the content's hash
                v["configMap"]["name"] = v["configMap"]["name"].rsplit("-", 1)[0]
        return t

    assert without_ha(ha) == without_ha(base)


def test_ha_replicas_disruption_budget_and_spread(rendered_ha: dict[str, dict[str, Any]]) -> None:
    sts = rendered_ha["StatefulSet"]["spec"]
    pod_labels = sts["template"]["metadata"]["labels"]
    assert sts["replicas"] == 2
    assert sts["selector"]["matchLabels"].items() <= pod_labels.items()
    assert sts["serviceName"] == rendered_ha["Service"]["metadata"]["name"]
    # a rollout replaces one replica at a time; no Deployment strategy left over
    assert sts["updateStrategy"]["type"] == "RollingUpdate" and "strategy" not in sts
    assert sts["podManagementPolicy"] == "Parallel"

    pdb = rendered_ha["PodDisruptionBudget"]["spec"]
    assert pdb["minAvailable"] == 1 and "maxUnavailable" not in pdb
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["minAvailable"] < sts["replicas"], "a drain must be able to evict one"

    anti = sts["template"]["spec"]["affinity"]["podAntiAffinity"]
    (node,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert node["topologyKey"] == "kubernetes.io/hostname"
    assert node["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    (zone,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert zone["podAffinityTerm"]["topologyKey"] == "topology.kubernetes.io/zone"
    assert zone["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_ha_each_replica_has_its_own_stable_vantage(
    rendered_ha: dict[str, dict[str, Any]], rendered: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The StatefulSet's pods are NAME-0 and NAME-1 whatever restarts them: the vantage made of
    the region and the pod's name is unique per replica and survives a rollout, and the
    configuration with it passes `cutover check`."""
    sts = rendered_ha["StatefulSet"]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    text = rendered_ha["ConfigMap"]["data"]["cutover.yml"]
    config = yaml.safe_load(text)
    assert config["ha"]["vantage"] == "${CUTOVER_VANTAGE}"
    # the same migration as the base's, plus the ha section
    base = yaml.safe_load(rendered["ConfigMap"]["data"]["cutover.yml"])
    assert {k: v for k, v in config.items() if k != "ha"} == base

    vantages = []
    for ordinal in range(sts["spec"]["replicas"]):
        env = expand(c["env"], f"{sts['metadata']['name']}-{ordinal}")
        vantages.append(env["CUTOVER_VANTAGE"])
        path = tmp_path / f"cutover-{ordinal}.yml"
        path.write_text(text)
        r = subprocess.run(
            [sys.executable, "-m", "exporter", "check", "--config", str(path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=daemon_env(SLACK_BOT_TOKEN="xoxb-test", CUTOVER_VANTAGE=env["CUTOVER_VANTAGE"]),
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"ha: vantage {env['CUTOVER_VANTAGE']}, table {config['ha']['table']}" in r.stdout
    assert vantages == ["us-east-1-cutover-0", "us-east-1-cutover-1"]


def test_ha_serviceaccount_role_and_table(rendered_ha: dict[str, dict[str, Any]]) -> None:
    """IRSA: a placeholder role for Route53 and the table; the table is the one the DynamoDB
    policies name."""
    sa = rendered_ha["ServiceAccount"]
    arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn)
    assert arn.endswith("/cutover-ha")
    table = yaml.safe_load(rendered_ha["ConfigMap"]["data"]["cutover.yml"])["ha"]["table"]
    for name in ("dynamodb-ha-policy.json", "dynamodb-ha-init-policy.json"):
        (statement,) = json.loads((IAM / name).read_text())["Statement"]
        assert statement["Resource"].endswith(f":table/{table}"), name
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "kubernetes-ha" in readme and "dynamodb-ha-policy.json" in readme


# -- IAM policies -------------------------------------------------------------------------------

# IAM actions of DynamoDB (the Service Authorization Reference) that a policy here may name.
# Not among them: TransactWriteItems, an API operation but no IAM action: a transaction is
# authorised item by item (PutItem, UpdateItem, DeleteItem, ConditionCheckItem).
DYNAMODB_ACTIONS = {
    "dynamodb:ConditionCheckItem",
    "dynamodb:CreateTable",
    "dynamodb:DeleteItem",
    "dynamodb:DescribeTable",
    "dynamodb:DescribeTimeToLive",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
    "dynamodb:UpdateTimeToLive",
}
# the admin side: what only `cutover ha init` needs
TABLE_ADMIN = {"dynamodb:CreateTable", "dynamodb:UpdateTimeToLive"}


def policy_actions(name: str) -> set[str]:
    policy = json.loads((IAM / name).read_text())
    assert policy["Version"] == "2012-10-17"
    out: set[str] = set()
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow" and "*" not in st["Resource"]
        actions = st["Action"]
        out |= {actions} if isinstance(actions, str) else set(actions)
    return out


def dynamodb_calls(source: str) -> set[str]:
    """The DynamoDB operations a source text calls on a boto3 client (`client.put_item(...)`,
    `self._get_client().get_item(...)`), as IAM actions."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("dynamodb")
    by_method = {xform_name(op): op for op in model.operation_names}
    found = re.findall(r"client(?:\(\))?\.(\w+)\(", source)
    out: set[str] = set()
    for method in found:
        op = by_method.get(method)
        if op == "TransactWriteItems":  # authorised per item; the fence is a ConditionCheck
            out |= {"dynamodb:ConditionCheckItem"}
        elif op is not None:
            out.add(f"dynamodb:{op}")
    return out


def test_dynamodb_policies_name_real_actions_and_split_runtime_from_init() -> None:
    runtime = policy_actions("dynamodb-ha-policy.json")
    init = policy_actions("dynamodb-ha-init-policy.json")
    assert runtime <= DYNAMODB_ACTIONS and init <= DYNAMODB_ACTIONS
    assert not runtime & TABLE_ADMIN, "the replicas never create or reconfigure the table"
    assert init == {
        "dynamodb:CreateTable",
        "dynamodb:DescribeTable",
        "dynamodb:UpdateTimeToLive",
        "dynamodb:DescribeTimeToLive",
    }
    assert {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:ConditionCheckItem",
        "dynamodb:Query",
        "dynamodb:DescribeTable",
    } == runtime


def test_dynamodb_policies_allow_what_the_code_calls() -> None:
    """What `cutover ha init` calls (`create_table` in exporter/store/dynamo.py) is in the init
    policy; what a replica calls (everything else) is in the runtime policy."""
    import inspect

    from exporter.store import dynamo

    runtime = policy_actions("dynamodb-ha-policy.json")
    init = policy_actions("dynamodb-ha-init-policy.json")
    init_source = inspect.getsource(dynamo.create_table)
    init_calls = dynamodb_calls(init_source)
    assert {"dynamodb:CreateTable", "dynamodb:UpdateTimeToLive"} <= init_calls
    assert init_calls <= init
    replica_calls: set[str] = set()
    for path in (ROOT / "exporter").rglob("*.py"):
        replica_calls |= dynamodb_calls(path.read_text().replace(init_source, ""))
    assert {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"} <= replica_calls
    assert replica_calls <= runtime, replica_calls - runtime


# -- docker compose -----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return data


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Bind mounts of a service: container path -> host path (named volumes left out)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (COMPOSE / source).resolve()
    return out


def test_compose_services_and_their_files() -> None:
    c = compose()
    services = c["services"]
    assert set(services) == {"cutover", "prometheus", "alertmanager", "grafana"}
    assert (COMPOSE / services["cutover"]["build"]["context"] / "Dockerfile").exists()
    for name, service in services.items():
        for target, source in mounts(service).items():
            assert source.exists(), f"{name}: {source} (for {target}) does not exist"
        image = service.get("image", "")
        if name != "cutover":
            assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name}: pin the image ({image})"
    for secret in c["secrets"].values():
        assert (COMPOSE / secret["file"]).exists()


def test_compose_prometheus_scrapes_cutover_with_the_rules(tmp_path: Path) -> None:
    services = compose()["services"]
    prom_mounts = mounts(services["prometheus"])
    config_path = prom_mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "cutover"
    assert job["static_configs"][0]["targets"] == ["cutover:9877"]
    (am,) = config["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == ["alertmanager:9093"]
    # the rules file is mounted where rule_files looks
    rule_targets = [t for t, s in prom_mounts.items() if s == RULES.resolve()]
    assert rule_targets
    assert any(fnmatch.fnmatch(rule_targets[0], g) for g in config["rule_files"])

    # promtool checks the config with the rules where they will be
    promtool = need_tool("promtool")
    local = tmp_path / "prometheus.yml"
    config["rule_files"] = [str(RULES)]
    local.write_text(yaml.safe_dump(config))
    r = subprocess.run([promtool, "check", "config", str(local)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 19 rules found" in r.stdout or "rules found" in r.stdout


def test_compose_alertmanager_and_grafana_wiring() -> None:
    c = compose()
    services = c["services"]
    am = mounts(services["alertmanager"])
    config_target = next(
        t for t in services["alertmanager"]["command"] if t.startswith("--config.file=")
    ).split("=", 1)[1]
    am_config = yaml.safe_load(am[config_target].read_text())
    # the templates the config names sit beside it in the container
    for template in am_config["templates"]:
        assert str(Path(config_target).parent / template) in am
    (secret,) = services["alertmanager"]["secrets"]
    assert secret["target"] == am_config["global"]["slack_api_url_file"]

    grafana = services["grafana"]
    gm = mounts(grafana)
    provider_target = next(t for t in gm if "/provisioning/dashboards/" in t)
    (provider,) = yaml.safe_load(gm[provider_target].read_text())["providers"]
    dashboards_dir = gm[provider["options"]["path"]]
    assert dashboards_dir == (ROOT / "grafana" / "dashboards").resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (dashboards_dir / Path(home).name).exists()
    ds_target = next(t for t in gm if "/provisioning/datasources/" in t)
    (ds,) = yaml.safe_load(gm[ds_target].read_text())["datasources"]
    url = urlparse(ds["url"])
    assert url.hostname in services and url.port == 9090


def test_compose_cutover_runs_read_only_with_a_state_volume() -> None:
    cutover = compose()["services"]["cutover"]
    assert cutover["read_only"] is True and "/tmp" in cutover["tmpfs"]
    assert any(v.endswith(":/var/lib/cutover") for v in cutover["volumes"])
    assert cutover["command"][0] in {"demo", "run"}
    assert "9877:9877" in cutover["ports"]


# -- systemd ------------------------------------------------------------------------------------


def unit() -> list[tuple[str, str, str]]:
    """(section, key, value) of the unit file, repeated keys kept."""
    out, section = [], ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key, value))
    return out


def test_systemd_unit_is_hardened() -> None:
    settings = {(s, k): v for s, k, v in unit()}
    service = {k: v for (s, k), v in settings.items() if s == "Service"}
    assert service["DynamicUser"] == "yes"
    assert service["StateDirectory"] == "cutover"
    assert service["ProtectSystem"] == "strict" and service["ProtectHome"] == "yes"
    assert service["NoNewPrivileges"] == "yes" and service["CapabilityBoundingSet"] == ""
    assert "run --config /etc/cutover/cutover.yml" in service["ExecStart"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["RestartPreventExitStatus"] == "2"
    assert settings[("Install", "WantedBy")] == "multi-user.target"


def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    analyze = need_tool("systemd-analyze")
    # verify wants ExecStart's binary to exist: this machine has no /opt/cutover
    copy = tmp_path / "cutover.service"
    copy.write_text(UNIT.read_text().replace("/opt/cutover/bin/cutover", "/bin/true"))
    r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    m = re.search(r"Overall exposure level for cutover\.service: ([\d.]+)", r.stdout)
    assert m and float(m.group(1)) <= 2.0, r.stdout[-500:]


def test_systemd_state_dir_matches_the_documented_configuration() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "state_dir: /var/lib/cutover" in readme
    assert "deploy/systemd/cutover.service" in readme


def test_iam_policies_in_the_readme_match_the_files() -> None:
    import json as _json
    import textwrap
    from pathlib import Path as _Path

    root = _Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    blocks = [
        _json.loads(textwrap.dedent(b.split("```")[0])) for b in re.split(r"```json\n", readme)[1:]
    ]
    allowed = {
        "route53-read-policy.json": {"route53:ListResourceRecordSets"},
        "route53-shift-policy.json": {
            "route53:ListResourceRecordSets",
            "route53:ChangeResourceRecordSets",
            "route53:GetChange",
        },
        "route53-shift-ha-policy.json": {
            "route53:ListResourceRecordSets",
            "route53:ChangeResourceRecordSets",
            "route53:GetChange",
        },
        "cloudwatch-read-policy.json": {"cloudwatch:GetMetricData"},
        "dynamodb-ha-policy.json": DYNAMODB_ACTIONS - TABLE_ADMIN,
        "dynamodb-ha-init-policy.json": {
            "dynamodb:CreateTable",
            "dynamodb:DescribeTable",
            "dynamodb:UpdateTimeToLive",
            "dynamodb:DescribeTimeToLive",
        },
    }
    assert {p.name for p in (root / "deploy" / "iam").glob("*.json")} == set(allowed)
    for name, most in allowed.items():
        policy = _json.loads((root / "deploy" / "iam" / name).read_text())
        assert policy in blocks, name
        actions = {
            a
            for st in policy["Statement"]
            for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
        }
        assert actions <= most, name
        assert name in (root / "deploy" / "README.md").read_text()
