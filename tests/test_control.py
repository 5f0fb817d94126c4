"""Control over HTTP: shift control bodies refused cleanly, and /-/reload behind the token."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ROOT, DaemonProcess, FakePlatform, config_yaml, daemon_env, free_port
from tests.test_route53_daemon import Moto, moto, zone
from tests.test_shift_e2e import CONTROL, ShiftDaemon, shift_config, start_shift

__all__ = ["moto", "start_shift"]  # fixtures, imported for this module's tests

Start = Callable[..., DaemonProcess]
TOKEN = "reload-token-for-tests-7"
SECOND_CHECK = "  - name: second\n    path: /second\n    interval: 200ms\n    timeout: 150ms\n"

# body, the words of the 400's error (bodies stay under the 64 KiB a control body may have)
BAD_BODIES: list[tuple[bytes, str]] = [
    (b"[" * 60_000, "JSON nested too deep"),
    (b'{"who": ' + b"[" * 60_000, "JSON nested too deep"),
    (b'{"a": ' * 5_000 + b"1" + b"}" * 5_000, "JSON nested too deep"),
    (b"pause now, please", "not JSON"),
    (b'{"who": "\xff"}', "not JSON"),
    (b'{"who": "me"} trailing', "not JSON"),
    (b'["who", "me"]', "not a JSON object"),
    (b'"pause"', "not a JSON object"),
    (b"null", "not a JSON object"),
    (b'{"who": 42}', "who: must be a string"),
    (b'{"who": {"name": "me"}}', "who: must be a string"),
    (b'{"reason": ["a", "b"]}', "reason: must be a string"),
    (b'{"reason": true}', "reason: must be a string"),
    (b'{"reasn": "typo"}', "reasn: unknown key"),
]


async def _post(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status, await r.text()


async def test_bad_control_bodies_get_400_with_the_reason(
    platforms: tuple[FakePlatform, FakePlatform],
    moto: Moto,
    start_shift: Callable[..., ShiftDaemon],
) -> None:
    """Not JSON, not an object, nested 200 000 deep, wrong types, unknown keys: each is a 400
    that says why, the plan is untouched, and the log holds no traceback."""
    _, zid = zone(moto, {"heroku": 100, "aws": 0})
    d = start_shift(shift_config(platforms, moto, zid, enabled=False, hold="1h"))
    await d.wait_ready()
    before = await d.wait_shift(lambda s: s["state"] == "holding")
    url = f"{d.url}/api/v1/shift/pause"
    auth = {"Authorization": f"Bearer {CONTROL}", "Content-Type": "application/json"}

    answers = []
    for body, _ in BAD_BODIES:
        status, text = await _post(url, body, auth)
        answers.append((status, json.loads(text)["error"]))
    for (status, error), (body, words) in zip(answers, BAD_BODIES, strict=True):
        assert status == 400, (body[:30], status, error)
        assert error.startswith("bad request body: ") and words in error, (body[:30], error)

    # larger bodies, such as the 200 000-deep one that answered 500 with a traceback, are 413
    for body in (b"[" * 200_000, b'{"reason": "' + b"x" * 70_000 + b'"}'):
        status, text = await _post(url, body, auth)
        assert (status, json.loads(text)["error"]) == (413, "the request body is over 65536 bytes")

    after = await d.shift()
    assert after["state"] == "holding" and after["history"] == before["history"]
    # a good body still works, and so does none at all
    status, text = await _post(url, b'{"who": "tester", "reason": "lunch"}', auth)
    assert status == 200, text
    assert json.loads(text)["shift"]["state"] == "paused"
    status, text = await _post(f"{d.url}/api/v1/shift/resume", None, auth)
    assert status == 200, text
    log = d.log()
    assert "Traceback" not in log and "Error handling request" not in log
    assert CONTROL not in log


async def test_a_control_body_that_does_not_arrive_in_time_is_a_408(
    platforms: tuple[FakePlatform, FakePlatform],
    moto: Moto,
    start_shift: Callable[..., ShiftDaemon],
) -> None:
    """The body must follow its head within --http-header-timeout; the handler never waits on a
    client for ever."""
    _, zid = zone(moto, {"heroku": 100, "aws": 0})
    d = start_shift(
        shift_config(platforms, moto, zid, enabled=False, hold="1h"),
        "--http-header-timeout",
        "500ms",
    )
    await d.wait_ready()
    await d.wait_shift(lambda s: s["state"] == "holding")
    reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
    writer.write(
        b"POST /api/v1/shift/pause HTTP/1.1\r\nHost: cutover\r\n"
        + f"Authorization: Bearer {CONTROL}\r\n".encode()
        + b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"who": '
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"did not arrive within 0.5s" in body
    assert (await d.shift())["state"] == "holding"
    assert "Traceback" not in d.log()


# -- /-/reload and the token ------------------------------------------------------------------


class FlagDaemon(DaemonProcess):
    """The daemon started with extra command-line flags."""

    def __init__(
        self, config: Path, port: int, log: Path, env: dict[str, str], flags: tuple[str, ...]
    ) -> None:
        self.config, self.port, self.log_path = config, port, log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run", "--config", str(config),
             "--listen", f"127.0.0.1:{port}", *flags],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip


@pytest.fixture
def start_flags(tmp_path: Path) -> Iterator[Callable[..., FlagDaemon]]:
    started: list[FlagDaemon] = []

    def start(config_text: str, *flags: str, **env: str) -> FlagDaemon:
        path = tmp_path / "cutover.yml"
        path.write_text(config_text)
        d = FlagDaemon(path, free_port(), tmp_path / "daemon.log", daemon_env(**env), flags)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


async def _checks(d: DaemonProcess) -> list[str]:
    _, text = await d.get("/api/v1/status")
    data: dict[str, Any] = json.loads(text)
    return [c["name"] for c in data["checks"]]


async def test_reload_needs_no_token_by_default(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    """As Prometheus' --web.enable-lifecycle: anyone who reaches the port may reload."""
    baseline, candidate = platforms
    d = start_daemon(config_yaml(baseline.url, candidate.url), CUTOVER_CONTROL_TOKEN=TOKEN)
    await d.wait_ready()
    d.config.write_text(config_yaml(baseline.url, candidate.url, SECOND_CHECK))
    assert await _post(d.url + "/-/reload") == (200, "reloaded\n")
    assert await _checks(d) == ["health", "second"]


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_reload_can_require_the_control_token(
    platforms: tuple[FakePlatform, FakePlatform], start_flags: Callable[..., FlagDaemon], how: str
) -> None:
    """--reload-requires-token (or CUTOVER_RELOAD_REQUIRES_TOKEN=true): 401 without the bearer
    token or with a wrong one, and nothing reloaded; 200 with it."""
    baseline, candidate = platforms
    cfg = config_yaml(baseline.url, candidate.url)
    if how == "flag":
        d = start_flags(cfg, "--reload-requires-token", CUTOVER_CONTROL_TOKEN=TOKEN)
    else:
        d = start_flags(cfg, CUTOVER_CONTROL_TOKEN=TOKEN, CUTOVER_RELOAD_REQUIRES_TOKEN="true")
    await d.wait_ready()
    d.config.write_text(config_yaml(baseline.url, candidate.url, SECOND_CHECK))
    url = d.url + "/-/reload"
    for headers in (
        None,
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ):
        assert await _post(url, headers=headers) == (401, "a valid bearer token is required\n")
    assert await _checks(d) == ["health"]
    assert await _post(url, headers={"Authorization": f"Bearer {TOKEN}"}) == (200, "reloaded\n")
    assert await _checks(d) == ["health", "second"]
    assert d.stop() == 0
    assert TOKEN not in d.log()


@pytest.mark.parametrize(
    ("flags", "env", "words"),
    [
        (["--reload-requires-token"], {}, "set CUTOVER_CONTROL_TOKEN"),
        (["--reload-requires-token"], {"CUTOVER_CONTROL_TOKEN": ""}, "set CUTOVER_CONTROL_TOKEN"),
        ([], {"CUTOVER_RELOAD_REQUIRES_TOKEN": "true"}, "set CUTOVER_CONTROL_TOKEN"),
        ([], {"CUTOVER_RELOAD_REQUIRES_TOKEN": "yes please"}, "expected true or false"),
    ],
)
def test_requiring_a_token_without_one_is_a_usage_error(
    tmp_path: Path, flags: list[str], env: dict[str, str], words: str
) -> None:
    cfg = tmp_path / "cutover.yml"
    cfg.write_text(config_yaml("http://127.0.0.1:1", "http://127.0.0.1:2"))
    r = subprocess.run(
        [sys.executable, "-m", "exporter", "run", "--config", str(cfg),
         "--listen", f"127.0.0.1:{free_port()}", *flags],
        capture_output=True, text=True, env=daemon_env(**env), cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert words in r.stderr
