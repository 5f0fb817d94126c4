"""The install-and-run commands of README.md and deploy/README.md, run as written: only the
/opt/cutover and /etc/cutover prefixes move into a temporary directory."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT, FakePlatform, daemon_env, free_port
from tests.slack_standin import SlackStandIn

SLACK_TOKEN = "xoxb-readme-run-secret-token"
HEALTH_TOKEN = "readme-health-secret-value"
# what a checkout holds that a fresh clone would not
NOT_IN_A_CHECKOUT = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def shell_blocks(markdown: str, heading: str) -> list[str]:
    """The ```sh blocks of the section under `heading` (any level), in order."""
    m = re.search(rf"^(#+) {re.escape(heading)}\n(.*?)(?=^#{{1,{2}}} |\Z)", markdown, re.M | re.S)
    assert m, f"no section {heading!r}"
    return re.findall(r"^ *```sh\n(.*?)^ *```", m.group(2), re.M | re.S)


def moved(block: str, prefix: Path) -> str:
    return block.replace("/opt/cutover", str(prefix / "opt")).replace(
        "/etc/cutover", str(prefix / "etc")
    )


def config(baseline: FakePlatform, candidate: FakePlatform, port: int, state: Path, slack: str) -> str:  # fmt: skip
    return f"""\
listen: 127.0.0.1:{port}
state_dir: {state}
platforms:
  heroku: {{role: baseline, base_url: "{baseline.url}"}}
  aws: {{role: candidate, base_url: "{candidate.url}"}}
checks:
  - name: health
    path: /health
    interval: 500ms
    timeout: 400ms
    headers: {{Authorization: "Bearer ${{HEALTH_TOKEN}}"}}
alerting:
  slack:
    token: ${{SLACK_BOT_TOKEN}}
    channel: "#migration"
    api_url: {slack}
"""


def clean_env() -> dict[str, str]:
    """This machine's environment as a new user's shell has it: no `cutover` on PATH (the
    test's own virtualenv is not activated there), none of the secrets."""
    env = daemon_env()
    for key in ("VIRTUAL_ENV", "SLACK_BOT_TOKEN", "HEALTH_TOKEN", "PROBE_SECRET", "PYTHONPATH"):
        env.pop(key, None)
    path = env.get("PATH", os.defpath).split(os.pathsep)
    env["PATH"] = os.pathsep.join(d for d in path if d and not (Path(d) / "cutover").exists())
    return env


def descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            out += [int(child), *descendants(int(child))]
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    standin = SlackStandIn(token=SLACK_TOKEN, channels={"#migration": "C0MIGR"})
    await standin.start()
    yield standin
    await standin.stop()


@pytest.mark.slow
async def test_readme_running_it_for_real_runs_as_written(
    tmp_path: Path, platforms: tuple[FakePlatform, FakePlatform], slack: SlackStandIn
) -> None:
    """From a copy of the checkout: a fresh virtualenv, pip install, `cutover check` with the
    secrets from cutover.env, and `cutover run` until /-/ready answers; SIGTERM stops it with 0."""
    (block,) = shell_blocks((ROOT / "README.md").read_text(), "Running it for real")
    assert "/opt/cutover" in block and "/etc/cutover/cutover.env" in block
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=NOT_IN_A_CHECKOUT)
    (tmp_path / "etc").mkdir()
    port = free_port()
    (tmp_path / "etc" / "cutover.yml").write_text(
        config(*platforms, port, tmp_path / "state", f"{slack.url}")
    )
    env_file = tmp_path / "etc" / "cutover.env"
    env_file.write_text(f"SLACK_BOT_TOKEN={SLACK_TOKEN}\nHEALTH_TOKEN={HEALTH_TOKEN}\n")
    env_file.chmod(0o600)
    script = tmp_path / "block.sh"
    script.write_text(moved(block, tmp_path))
    log_path = tmp_path / "block.log"
    with log_path.open("wb") as log:
        # -e: as pasted line by line, a failing line stops it (the next would make no sense)
        proc = subprocess.Popen(
            ["bash", "-e", str(script)],
            stdout=log, stderr=subprocess.STDOUT, cwd=checkout, env=clean_env(),
            start_new_session=True,
        )  # fmt: skip
    try:
        ready = False
        deadline = time.monotonic() + 900  # pip installs the project and its dependencies
        async with aiohttp.ClientSession() as session:
            while not ready and proc.poll() is None and time.monotonic() < deadline:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/-/ready") as r:
                        ready = r.status == 200
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
        output = log_path.read_text(errors="replace")
        assert ready, f"exit {proc.poll()}:\n{output[-5000:]}"
        (daemon,) = [p for p in descendants(proc.pid) if "run" in cmdline(p)]
        assert cmdline(daemon)[-4:] == ["run", "--config", str(tmp_path / "etc/cutover.yml"), ""]
        os.kill(daemon, signal.SIGTERM)
        stop_by = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < stop_by:
            await asyncio.sleep(0.1)  # the platforms answer from this loop meanwhile
        code = proc.poll()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log_path.read_text(errors="replace")
    assert code == 0, output[-5000:]
    # `cutover check` passed with the secrets of cutover.env, then `run` served and stopped
    assert f"{tmp_path / 'etc/cutover.yml'}: OK" in output
    assert "listening on http://127.0.0.1" in output and "stopping" in output
    assert "Traceback" not in output
    assert SLACK_TOKEN not in output and HEALTH_TOKEN not in output
    assert (tmp_path / "opt" / "bin" / "cutover").exists()
    assert platforms[0].hits > 0 and platforms[1].hits > 0


def test_deploy_readme_checks_with_the_units_secrets(
    tmp_path: Path,
) -> None:
    """deploy/README's `cutover check` before `systemctl enable` reads the secrets from
    cutover.env as the unit's EnvironmentFile does (here with this checkout's cutover)."""
    blocks = shell_blocks((ROOT / "deploy" / "README.md").read_text(), "A single VM with systemd")
    (line,) = [line for block in blocks for line in block.splitlines() if "cutover check" in line]
    (tmp_path / "etc").mkdir()
    text = config(FakePlatform(port=1), FakePlatform(port=2), free_port(), tmp_path, "http://127.0.0.1:1/api/")  # fmt: skip
    (tmp_path / "etc" / "cutover.yml").write_text(text)
    (tmp_path / "etc" / "cutover.env").write_text(
        f"SLACK_BOT_TOKEN={SLACK_TOKEN}\nHEALTH_TOKEN={HEALTH_TOKEN}\n"
    )
    cutover = tmp_path / "opt" / "bin" / "cutover"
    cutover.parent.mkdir(parents=True)
    cutover.write_text(f'#!/bin/sh\nexec {sys.executable} -m exporter "$@"\n')
    cutover.chmod(0o755)
    r = subprocess.run(
        ["bash", "-e", "-c", moved(line, tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env=clean_env(), timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{tmp_path / 'etc/cutover.yml'}: OK" in r.stdout
    assert SLACK_TOKEN not in r.stdout + r.stderr
