"""The daemon end to end, as a subprocess, probing two local platforms over real sockets."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, FakePlatform, config_yaml, daemon_env, need_tool

Start = Callable[..., DaemonProcess]
SECRET = "s3cr3t-probe-value"


def lbl(name: str, check: str = "health", platform: str | None = None, **extra: str) -> str:
    labels = {"check": check, **extra}
    if platform is not None:
        labels["platform"] = platform
        labels["role"] = "baseline" if platform == "heroku" else "candidate"
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


SPEC_FAMILIES = [
    "cutover_probe_success", "cutover_probe_duration_seconds", "cutover_probe_phase_seconds",
    "cutover_probe_http_status_code", "cutover_probes", "cutover_probe_failures",
    "cutover_probe_tls_expiry_timestamp_seconds", "cutover_window_latency_seconds",
    "cutover_window_error_ratio", "cutover_window_samples", "cutover_latency_ratio",
    "cutover_error_ratio_delta", "cutover_config_last_reload_successful",
    "cutover_config_last_reload_success_timestamp_seconds", "cutover_event_loop_lag_seconds",
    "cutover_build_info", "process_resident_memory_bytes",
]  # fmt: skip


async def test_metrics_status_page_and_api(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    baseline, candidate = platforms
    baseline.delay, candidate.delay = 0.05, 0.10
    extra = "  - name: odd\n    path: /x?<b>&amp\n    interval: 300ms\n    timeout: 250ms\n"
    d = start_daemon(config_yaml(baseline.url, candidate.url, extra))
    await d.wait_ready()
    m = await d.wait_for(lambda m: m.get(lbl("cutover_window_samples", platform="aws"), 0) >= 8)

    _, text = await d.get("/metrics")
    for family in SPEC_FAMILIES:
        assert f"# TYPE {family} " in text or f"# TYPE {family}_total counter" in text, family
    assert "cutover_probes_total{" in text and "cutover_probe_failures_total{" in text
    assert m['cutover_build_info{version="0.1.0"}'] == 1
    assert m["cutover_config_last_reload_successful"] == 1
    # bounds that follow from the platforms' own delays (a loaded runner only adds to them)
    p50s = {}
    for platform, delay in (("heroku", 0.05), ("aws", 0.10)):
        assert m[lbl("cutover_probe_success", platform=platform)] == 1
        assert m[lbl("cutover_probe_http_status_code", platform=platform)] == 200
        p50 = p50s[platform] = m[lbl("cutover_window_latency_seconds", platform=platform, q="0.5")]
        assert delay <= p50, (platform, p50)
        processing = m[lbl("cutover_probe_phase_seconds", platform=platform, phase="processing")]
        assert delay <= processing
        assert m[lbl("cutover_window_error_ratio", platform=platform)] == 0
        assert m[lbl("cutover_probe_failures_total", platform=platform, reason="timeout")] == 0
        count = m[lbl("cutover_probe_duration_seconds_count", platform=platform)]
        assert count == m[lbl("cutover_probes_total", platform=platform)]
        assert (
            m[lbl("cutover_probe_duration_seconds_bucket", platform=platform, le="+Inf")] == count
        )
        faster = m[lbl("cutover_probe_duration_seconds_bucket", platform=platform, le="0.05")]
        assert faster == 0  # nothing answers faster than its platform's delay
    assert m[lbl("cutover_latency_ratio", q="0.5")] == pytest.approx(p50s["aws"] / p50s["heroku"])
    assert m[lbl("cutover_error_ratio_delta")] == 0
    # the candidate got its production Host header, the baseline its own host
    assert set(candidate.host_headers) == {"api.example.test"}
    assert set(baseline.host_headers) == {f"127.0.0.1:{baseline.port}"}

    status, page = await d.get("/")
    assert status == 200
    assert "heroku" in page and "aws" in page and "(baseline)" in page and "(candidate)" in page
    assert "window p95" in page and "candidate / baseline" in page
    assert "/x?&lt;b&gt;&amp;amp" in page and "<b>" not in page

    status, body = await d.get("/api/v1/status")
    data = json.loads(body)
    assert data["ready"] is True and data["baseline"] == "heroku"
    health = next(c for c in data["checks"] if c["name"] == "health")
    assert health["platforms"]["aws"]["last"]["status"] == 200
    assert health["platforms"]["aws"]["window"]["samples"] >= 8
    assert health["comparison"]["latency_ratio"]["0.5"] > 1

    for where in (text, page, body, d.log()):
        assert SECRET not in where
    assert (await d.get("/-/healthy"))[0] == 200
    assert d.stop() == 0


async def test_failure_reasons_and_error_ratio(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    baseline, candidate = platforms
    d = start_daemon(config_yaml(baseline.url, candidate.url))
    await d.wait_ready()
    candidate.status = 503
    m = await d.wait_for(
        lambda m: (
            m.get(lbl("cutover_probe_failures_total", platform="aws", reason="status"), 0) >= 3
        )
    )
    assert m[lbl("cutover_probe_success", platform="aws")] == 0
    assert m[lbl("cutover_probe_http_status_code", platform="aws")] == 503
    assert m[lbl("cutover_error_ratio_delta")] > 0
    assert m[lbl("cutover_probe_success", platform="heroku")] == 1

    candidate.status, candidate.body = 200, '{"status": "degraded"}'
    await d.wait_for(
        lambda m: m.get(lbl("cutover_probe_failures_total", platform="aws", reason="body"), 0) >= 2
    )
    candidate.body, candidate.mode = '{"status": "ok"}', "hang"
    m = await d.wait_for(
        lambda m: (
            m.get(lbl("cutover_probe_failures_total", platform="aws", reason="timeout"), 0) >= 2
        )
    )
    assert m[lbl("cutover_probe_http_status_code", platform="aws")] == 0
    candidate.mode = "ok"
    await d.wait_for(lambda m: m.get(lbl("cutover_probe_success", platform="aws")) == 1)
    assert d.stop() == 0


async def test_both_platforms_failing_is_an_outage_logged_once(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    baseline, candidate = platforms
    d = start_daemon(config_yaml(baseline.url, candidate.url))
    await d.wait_ready()
    baseline.status = candidate.status = 503
    failed = lbl("cutover_probe_failures_total", platform="aws", reason="status")
    await d.wait_for(lambda m: m.get(failed, 0) >= 10)
    _, page = await d.get("/")
    assert "both platforms failing: not a candidate regression (health)" in page
    assert "class='banner b-red'" in page and "down <span class='ok'>ok" not in page
    said = "both platforms failing health (heroku and aws): an outage, not a candidate regression"
    lines = [line for line in d.log().splitlines() if said in line]
    assert len(lines) == 1 and "WARNING" in lines[0], lines
    _, body = await d.get("/api/v1/status")
    [check] = json.loads(body)["checks"]
    assert check["both_platforms_failing"] is True
    assert check["platforms"]["aws"]["failures_by_reason"]["status"] >= 10

    baseline.status = candidate.status = 200
    for _ in range(300):  # the window's error ratio must also fall below one half
        if "health: the platforms no longer both fail" in d.log():
            break
        await asyncio.sleep(0.1)
    assert "health: the platforms no longer both fail" in d.log()
    assert sum(said in line for line in d.log().splitlines()) == 1
    assert d.stop() == 0


async def test_a_hanging_check_does_not_delay_the_others(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    baseline, candidate = platforms
    candidate.hang_paths.add("/slow")
    extra = "  - name: slow\n    path: /slow\n    interval: 1s\n    timeout: 1s\n"
    d = start_daemon(
        config_yaml(baseline.url, candidate.url, extra, interval="100ms", timeout="90ms")
    )
    await d.wait_ready()
    before = await d.metrics()
    slow = lbl("cutover_probes_total", check="slow", platform="aws")
    after = await d.wait_for(lambda m: m[slow] >= before[slow] + 3)
    made = (
        after[lbl("cutover_probes_total", platform="aws")]
        - before[lbl("cutover_probes_total", platform="aws")]
    )
    # counted, not timed: while the slow check hangs through each of its 1 s timeouts, the
    # 100 ms check keeps its own schedule (10 probes per slow one; serial probing would be 1)
    assert made >= 5 * (after[slow] - before[slow]), made
    timeouts = after[
        lbl("cutover_probe_failures_total", check="slow", platform="aws", reason="timeout")
    ]
    assert timeouts >= 2
    assert after[lbl("cutover_probe_success", check="slow", platform="heroku")] == 1
    assert d.stop() == 0


async def test_reload_good_bad_and_sighup(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    baseline, candidate = platforms
    d = start_daemon(config_yaml(baseline.url, candidate.url))
    await d.wait_ready()
    first = await d.metrics()
    assert first["cutover_config_last_reload_successful"] == 1
    loaded_at = first["cutover_config_last_reload_success_timestamp_seconds"]

    # a good reload adds a check; the kept check keeps its counters
    extra = "  - name: ready\n    path: /ready\n    interval: 200ms\n    timeout: 150ms\n"
    d.config.write_text(config_yaml(baseline.url, candidate.url, extra))
    status, text = await d.post("/-/reload")
    assert (status, text) == (200, "reloaded\n")
    m = await d.wait_for(lambda m: lbl("cutover_probe_success", check="ready", platform="aws") in m)
    assert (
        m[lbl("cutover_probes_total", platform="aws")]
        >= first[lbl("cutover_probes_total", platform="aws")]
    )
    assert m["cutover_config_last_reload_success_timestamp_seconds"] > loaded_at

    # a bad reload is refused with its problems, and changes nothing but the gauge
    d.config.write_text(
        config_yaml(baseline.url, candidate.url).replace("timeout: 150ms", "timeout: 5s")
    )
    status, text = await d.post("/-/reload")
    assert status == 500
    assert "checks[0].timeout: 5s must not exceed the interval (200ms)" in text
    m = await d.wait_for(lambda m: m["cutover_config_last_reload_successful"] == 0)
    probes = m[lbl("cutover_probes_total", check="ready", platform="aws")]
    await asyncio.sleep(0.6)
    m = await d.metrics()
    assert m[lbl("cutover_probes_total", check="ready", platform="aws")] > probes
    assert "checks[0].timeout: 5s must not exceed the interval (200ms)" in d.log()
    _, page = await d.get("/")
    assert "The last reload failed" in page

    # SIGHUP with a good file: the removed check disappears from /metrics
    d.config.write_text(config_yaml(baseline.url, candidate.url))
    d.proc.send_signal(signal.SIGHUP)
    m = await d.wait_for(
        lambda m: (
            m["cutover_config_last_reload_successful"] == 1
            and not any('check="ready"' in k for k in m)
        )
    )
    assert lbl("cutover_probe_success", platform="aws") in m
    assert d.stop() == 0


async def test_ready_only_once_every_check_was_probed(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    baseline, candidate = platforms
    candidate.mode = "hang"
    d = start_daemon(config_yaml(baseline.url, candidate.url, interval="3s", timeout="2s"))
    for _ in range(100):
        try:
            if (await d.get("/-/healthy"))[0] == 200:
                break
        except Exception:
            await asyncio.sleep(0.05)
    status, text = await d.get("/-/ready")
    assert status == 503 and "not every check has been probed" in text
    await d.wait_ready(timeout=10)  # the hanging probe times out: a result, so ready
    assert d.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_clean_stop(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start, sig: int
) -> None:
    baseline, candidate = platforms
    d = start_daemon(config_yaml(baseline.url, candidate.url))
    await d.wait_ready()
    assert d.stop(sig) == 0
    assert "stopping" in d.log() and "Traceback" not in d.log()


async def test_port_in_use_exits_1(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start, tmp_path: Path
) -> None:
    baseline, candidate = platforms
    d = start_daemon(config_yaml(baseline.url, candidate.url))
    await d.wait_ready()
    second = DaemonProcess(d.config, d.port, tmp_path / "second.log", daemon_env())
    assert second.proc.wait(20) == 1
    assert f"cannot listen on 127.0.0.1:{d.port}" in second.log()
    second.stop()
    assert d.stop() == 0


async def test_metrics_pass_promtool_lint(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    promtool = need_tool("promtool")
    baseline, candidate = platforms
    d = start_daemon(config_yaml(baseline.url, candidate.url))
    await d.wait_ready()
    _, text = await d.get("/metrics")
    res = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert (res.returncode, res.stdout, res.stderr) == (0, "", ""), res.stdout + res.stderr
    assert d.stop() == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_runs_on_the_event_loop_asked_for(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start, loop: str
) -> None:
    baseline, candidate = platforms
    baseline.delay, candidate.delay = 0.02, 0.04
    d = start_daemon(config_yaml(baseline.url, candidate.url), CUTOVER_LOOP=loop)
    await d.wait_ready()
    # a probe that passed on each side (a loaded runner may time one out now and then)
    m = await d.wait_for(
        lambda m: (
            all(m.get(lbl("cutover_probe_success", platform=p)) == 1 for p in ("heroku", "aws"))
            and m.get(lbl("cutover_window_samples", platform="aws"), 0) >= 3
        )
    )
    assert f"event loop: {loop}" in d.log()
    for platform, delay in (("heroku", 0.02), ("aws", 0.04)):
        processing = m[lbl("cutover_probe_phase_seconds", platform=platform, phase="processing")]
        assert delay <= processing
    assert d.stop() == 0


def test_an_unknown_event_loop_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "cutover.yml"
    config.write_text(config_yaml("http://127.0.0.1:1", "http://127.0.0.1:2"))
    env = daemon_env(CUTOVER_LOOP="trio")
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "run", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "CUTOVER_LOOP='trio': expected one of auto, asyncio, uvloop" in r.stderr
