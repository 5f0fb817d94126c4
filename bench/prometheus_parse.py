"""What a large Prometheus answer costs the event loop: the source's polls against json.loads.

Run by hand: `.venv/bin/python bench/prometheus_parse.py [--polls 10]`. A static HTTP server in
a subprocess (127.0.0.1) serves one instant-query answer of N series; the Prometheus traffic
source polls it (both queries) while a ticker on the same loop measures the longest stall. The
reference, in the same run: json.loads of the same answer, which is how long the loop would
stall if the answer were decoded in one call (a thread would not help: json.loads holds the GIL).
Target: the longest stall (CPU) stays within a few ms whatever N (up to MAX_SERIES).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.config import PrometheusTraffic  # noqa: E402
from exporter.traffic.prometheus import MAX_SERIES, build  # noqa: E402
from exporter.traffic.routes import Routes  # noqa: E402
from exporter.traffic.timeline import Timeline  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def answer(n: int) -> str:
    result = [
        {
            "metric": {"code_class": f"{2 + i % 4}xx", "le": str(0.005 * (i % 12 + 1)), "path": f"/v1/items/{i}"},
            "value": [1764629812.345, f"{i * 1.5}"],
        }
        for i in range(n)
    ]  # fmt: skip
    doc = {"status": "success", "data": {"resultType": "vector", "result": result}}
    return json.dumps(doc, separators=(",", ":"))


async def measure(url: str, polls: int) -> tuple[float, float, float]:
    """(longest loop stall in wall time, and in this thread's CPU time; median poll wall time).

    Wall time includes the moments the OS ran another process (this machine is shared); the
    thread's CPU time over the same gap is what the loop's own work held it.
    """
    cfg = PrometheusTraffic(
        url=url, preset="ingress-nginx", interval="15s", timeout="10s", route_label="path"
    )
    routes = Routes([("items", "^/v1/items/1"), ("more", "^/v1/items/2")])
    source = build("bench", cfg, "aws", Timeline(), routes)
    worst_wall = worst_cpu = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal worst_wall, worst_cpu
        while not stop:
            wall, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0)
            worst_wall = max(worst_wall, time.perf_counter() - wall)
            worst_cpu = max(worst_cpu, time.thread_time() - cpu)

    walls = []
    await source.poll(time.time())  # warm up: connection, imports
    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    worst_wall = worst_cpu = 0.0
    try:
        for _ in range(polls):
            start = time.perf_counter()
            await source.poll(time.time())
            walls.append(time.perf_counter() - start)
    finally:
        stop = True
        await task
        await source.close()
    return worst_wall, worst_cpu, statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=10)
    args = parser.parse_args()
    print(
        f"{'series':>7} {'KiB':>6} {'json.loads':>10} {'poll':>8} {'stall wall':>10} "
        f"{'stall cpu':>9} {'ratio':>6}"
    )
    for n in (1000, 10_000, MAX_SERIES):
        with tempfile.TemporaryDirectory() as tmp:
            text = answer(n)
            target = Path(tmp, "api/v1/query")
            target.parent.mkdir(parents=True)
            target.write_text(text)
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(0.5)
                loads = min(_timed(lambda t=text: json.loads(t)) for _ in range(5))
                stall, cpu, wall = asyncio.run(measure(f"http://127.0.0.1:{port}", args.polls))
            finally:
                server.terminate()
                server.wait()
        print(
            f"{n:>7} {len(text) // 1024:>6} {loads * 1e3:>8.1f}ms {wall * 1e3:>6.1f}ms "
            f"{stall * 1e3:>8.1f}ms {cpu * 1e3:>7.1f}ms {cpu / loads:>6.2f}"
        )
    print(
        "ratio: the longest stall (CPU) of the source's polls / one json.loads of the same answer"
    )


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
