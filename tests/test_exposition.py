"""/metrics' per-check families: the streamed text equals client_python's rendering of the same
state, in both formats, and a scrape gives the event loop back while it renders."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from exporter.config import parse_config, probe_spec
from exporter.daemon import Daemon, judge_settings
from exporter.judging.judge import Evaluation, judge
from exporter.judging.traffic import TrafficEvaluation, TrafficSettings, judge_traffic
from exporter.probing.probe import REASONS, ProbeResult
from exporter.probing.state import CheckState, Series
from exporter.probing.window import Window
from exporter.traffic.counts import Tally
from exporter.web.app import start_server
from exporter.web.exposition import Scrape, number, render_checks

from .conftest import FakePlatform, config_yaml
from .metrics_oracle import OracleCollector, oracle_registry

ENV = {"PROBE_SECRET": "s3cret-header-value"}
CFG = parse_config(config_yaml("http://127.0.0.1:1", "http://127.0.0.1:2"), env=ENV)
SAMPLE = re.compile(r'[a-z_:]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? [-+0-9.eInfNa]+')
ODD = 'odd "name" \\ with\na newline'


def result(ok: bool, duration: float, *, status: int = 200, reason: str | None = None,
           expiry: float | None = None) -> ProbeResult:  # fmt: skip
    return ProbeResult(
        started=0.0, success=ok, duration=duration, status=status,
        reason=None if ok else (reason or "status"), detail="",
        resolve=0.0, connect=duration / 10, tls=0.0 if expiry is None else duration / 5,
        processing=duration / 2, transfer=duration / 20, tls_expiry=expiry,
    )  # fmt: skip


def make_state(name: str, platforms: tuple[str, ...] = ("heroku", "aws")) -> CheckState:
    series = {}
    for pname in platforms:
        platform = CFG.platforms[pname]
        series[pname] = Series(
            check=name, platform=pname, role=platform.role,
            spec=probe_spec(platform, CFG.checks[0]), window=Window(CFG.judge.window),
        )  # fmt: skip
    return CheckState(name=name, series=series)


def states(now: float) -> list[CheckState]:
    rnd = random.Random(7)
    health = make_state("health")
    for tick in range(40):
        t = now - 40 + tick
        health.series["heroku"].record(result(True, rnd.uniform(0.04, 0.06)), t, tick)
        health.series["aws"].record(result(tick % 9 != 0, rnd.uniform(0.1, 0.2)), t, tick)
    odd = make_state(ODD)
    reasons = ("timeout", "connect", "tls", "dns", "body", "error")
    for tick in range(12):
        ok = tick % 3 == 0
        for s in odd.series.values():
            s.record(result(ok, 0.3 * tick, reason=reasons[tick % 6], expiry=1.8e9 + 0.25), now - 12 + tick, tick)  # fmt: skip
    # counters past a million are written as Go writes them
    odd.series["aws"].probes_total = 2_500_000
    odd.series["aws"].duration_sum = 1234567.875
    fresh = make_state("fresh")  # nothing probed yet: NaN figures, no last-probe families
    lone = make_state("lone", ("heroku",))  # no pair: no ratio, no delta
    lone.series["heroku"].record(result(True, 0.01), now - 1, 0)
    return [health, odd, fresh, lone]


def judged(checks: list[CheckState], now: float) -> dict[str, Evaluation]:
    """The judge's verdicts on "health" only: the others have none yet."""
    b, c = next(s.series.values() for s in checks if s.name == "health")
    return {"health": judge(b.window.samples(), c.window.samples(), now, judge_settings(CFG))}


def scrape_of(
    checks: list[CheckState], now: float, shares: bool
) -> tuple[Scrape, Callable[[str], dict[str, float] | None] | None]:
    table = {"health": {"heroku": 0.9, "aws": 0.1}, ODD: {"heroku": 0.0, "aws": 1.0}}
    lookup = table.get if shares else None
    fired = frozenset({("health", "latency"), (ODD, "down"), ("traffic:all", "errors")})
    return Scrape("heroku", "aws", fired, lookup, judged(checks, now), traffic(now)), lookup


def traffic(now: float) -> dict[str, TrafficEvaluation]:
    """Real traffic's verdicts: rows of cutover_regression and cutover_alert_firing too."""
    tallies = []
    for i in range(12):
        tally = Tally(requests=100.0)
        tally.responses["2xx"], tally.responses["5xx"] = 90.0, 10.0
        tallies.append((now - 60 + 5 * i, tally))
    return {
        f"traffic:{route}": judge_traffic(tallies, tallies, now, TrafficSettings(min_requests=50))
        for route in ("all", 'odd "group"')
    }


def streamed(checks: list[CheckState], now: float, openmetrics: bool, shares: bool) -> str:
    scrape, _ = scrape_of(checks, now, shares)
    text = "".join(render_checks(scrape, checks, now, openmetrics=openmetrics, slice_size=2))
    return text + ("# EOF\n" if openmetrics else "")


def reference(checks: list[CheckState], now: float, openmetrics: bool, shares: bool) -> str:
    scrape, lookup = scrape_of(checks, now, shares)
    registry = oracle_registry(
        OracleCollector(
            checks, now, "heroku", "aws", scrape.fired, lookup, scrape.evaluations, scrape.traffic
        )
    )
    encode = om_exposition.generate_latest if openmetrics else generate_latest
    return encode(registry).decode()


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
@pytest.mark.parametrize("shares", [False, True], ids=["no-route53", "route53"])
def test_streamed_families_equal_client_python(openmetrics: bool, shares: bool) -> None:
    now = 1000.0
    mine = streamed(states(now), now, openmetrics, shares)
    theirs = reference(states(now), now, openmetrics, shares)
    assert mine == theirs  # byte for byte, labels in client_python's sorted order included
    # and the strict parsers take it: the label escaping, NaN, +Inf and large values included
    parse = (
        om_parser.text_string_to_metric_families if openmetrics else text_string_to_metric_families
    )
    families = {f.name: f for f in parse(mine)}
    assert [f.name for f in parse(theirs)] == list(families)
    expected = "cutover_expected_error_ratio"
    assert (expected in families) is shares
    odd = [s for s in families["cutover_probe_success"].samples if s.labels["check"] == ODD]
    assert len(odd) == 2


def test_streamed_families_cover_every_sample_once() -> None:
    """What the tests above compare is not empty: every per-check family is there."""
    now = 1000.0
    text = streamed(states(now), now, False, True)
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names == {
        "cutover_probe_success", "cutover_probe_duration_seconds", "cutover_probe_phase_seconds",
        "cutover_probe_http_status_code", "cutover_probes", "cutover_probe_failures",
        "cutover_probe_tls_expiry_timestamp_seconds", "cutover_window_latency_seconds",
        "cutover_window_error_ratio", "cutover_window_samples", "cutover_latency_ratio",
        "cutover_error_ratio_delta", "cutover_regression", "cutover_alert_firing",
        "cutover_expected_error_ratio",
    }  # fmt: skip
    assert 'cutover_alert_firing{check="health",signal="latency"} 1.0' in text
    assert (
        'cutover_probes_total{check="odd \\"name\\" \\\\ with\\na newline",platform="aws",role="candidate"} 2.5e+06'
        in text
    )


def values() -> Iterator[float]:
    rnd = random.Random(11)
    yield from (0.0, -0.0, 1.0, -1.0, 1e6, 999999.9, 1e6 - 1e-9, 123456789.0, 1e16, 1e22, 1e-9)
    yield from (math.nan, math.inf, -math.inf, -1e6, -5e9, 2.5e6, 1.8e9 + 0.25)
    for _ in range(5000):
        yield rnd.uniform(-1e10, 1e10)
        yield 10 ** rnd.uniform(-12, 25)


def test_number_is_client_pythons_spelling() -> None:
    for value in values():
        assert number(value) == floatToGoString(value), value


# ---------------------------------------------------------------- the handler, for real


@pytest.fixture
async def big_daemon(platforms: tuple[FakePlatform, FakePlatform]) -> AsyncIterator[int]:
    """A daemon of 2001 checks (probed once an hour), served on 127.0.0.1: yields its port."""
    baseline, candidate = platforms
    extra = "".join(
        f"  - {{name: c{i:04d}, path: /c{i}, interval: 1h, timeout: 1s}}\n" for i in range(2000)
    )
    cfg = parse_config(
        config_yaml(baseline.url, candidate.url, extra_checks=extra, interval="1h"), env=ENV
    )
    daemon = Daemon(cfg)
    await daemon.start()
    runner, port = await start_server(daemon, "127.0.0.1", 0)
    try:
        yield port
    finally:
        await runner.cleanup()
        await daemon.stop()


async def test_a_scraper_that_gives_up_is_no_error(
    big_daemon: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Prometheus closes the connection at its scrape_timeout: the daemon stops rendering for
    it, logs no error, and serves the next scrape whole."""
    port = big_daemon
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: cutover\r\n\r\n")
        assert (await reader.readexactly(1000)).startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        body = await resp.text()
    assert body.count("cutover_window_samples{") == 2001 * 2
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == []
    assert "closed the connection before the end of the scrape" in caplog.text


async def test_a_scrape_gives_the_loop_back_while_it_renders(big_daemon: int) -> None:
    """2000 checks: between writing the registry's part and the first per-check family, the
    handler computes the window figures of 4002 series and renders the first 64 KB, with nothing
    to write (so no transport pause can give the loop back): other tasks get to run meanwhile
    only if the render yields. Counted in turns of another task, never in wall time: a loaded
    machine only makes the render take more slices, and a render that never yields gives none."""
    port = big_daemon
    turns = 0
    done = False

    async def another_task() -> None:
        nonlocal turns
        while not done:
            await asyncio.sleep(0)
            turns += 1

    task = asyncio.create_task(another_task())
    try:
        async with aiohttp.ClientSession() as session:
            for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
                seen: dict[bytes, int] = {}
                received = bytearray()
                async with session.get(
                    f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept}
                ) as resp:
                    async for data in resp.content.iter_any():
                        received += data
                        tail = bytes(received[-len(data) - 100 :])
                        for marker in (
                            b"# TYPE cutover_build_info",
                            b"# HELP cutover_probe_success",
                        ):
                            if marker not in seen and marker in tail:
                                seen[marker] = turns
                body = received.decode()
                # the registry's part arrived before the first per-check family
                between = seen[b"# HELP cutover_probe_success"] - seen[b"# TYPE cutover_build_info"]
                # measured: 45-48 turns (2 cores, load 5); a render that holds the loop: 0
                assert between >= 5, between
                openmetrics = accept.startswith("application/openmetrics-text")
                assert resp.headers["Content-Type"].startswith(
                    "application/openmetrics-text" if openmetrics else "text/plain"
                )
                # the registry's part, then the streamed part, then (OpenMetrics) one EOF
                assert "# TYPE cutover_event_loop_lag_seconds histogram" in body
                assert "# TYPE cutover_build_info gauge" in body
                assert body.count("# EOF") == (1 if openmetrics else 0)
                assert body.endswith("# EOF\n" if openmetrics else "\n")
                lines = body.splitlines()
                assert all(SAMPLE.fullmatch(line) for line in lines if not line.startswith("#"))
                samples = [line for line in lines if line.startswith("cutover_window_samples{")]
                assert len(samples) == 2001 * 2
    finally:
        done = True
        await task


def test_a_series_that_never_failed_holds_no_reason_yet_shows_every_one() -> None:
    """10 000 series mostly never fail: each holds an empty dict, not a zero per reason."""
    now = 1000.0
    state = make_state("clean")
    for tick in range(5):
        for s in state.series.values():
            s.record(result(True, 0.05), now - 5 + tick, tick)
    assert all(s.failures == {} for s in state.series.values())
    text = streamed([*states(now), state], now, openmetrics=False, shares=False)
    zeros = [
        line
        for line in text.splitlines()
        if line.startswith('cutover_probe_failures_total{check="clean"')
    ]
    assert len(zeros) == 2 * len(REASONS) and all(line.endswith(" 0.0") for line in zeros)


def test_series_share_their_platform_and_role_label_strings() -> None:
    one, two = make_state("one"), make_state("two")
    a, b = one.series["aws"], two.series["aws"]
    assert a.label_parts[1:] == ('platform="aws"', 'role="candidate"')
    assert all(x is y for x, y in zip(a.label_parts[1:], b.label_parts[1:], strict=True))
    assert a.label_parts[0] == 'check="one"' and b.labels.startswith('check="two",')
