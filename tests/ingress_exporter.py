"""A process exporting ingress-nginx-style and http_requests_total-style metrics whose counters
move only when a test says so: `POST /record` with a list of requests, applied all at once.

Run as `python -m tests.ingress_exporter PORT`; `Exporter` starts it for a test. Metric names,
labels and bucket layouts are those of ingress-nginx (Go's number formatting: le="1") and of
client_python's defaults (le="1.0").
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent

INGRESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
INGRESS_LABELS = {
    "canary": "",
    "controller_class": "k8s.io/ingress-nginx",
    "controller_namespace": "ingress-nginx",
    "controller_pod": "ingress-nginx-controller-7d9f-abcde",
    "ingress": "api",
    "namespace": "prod",
    "service": "api",
}

Key = tuple[tuple[str, str], ...]


class Family:
    """One counter and one histogram sharing labels, as the text exposition renders them."""

    def __init__(self, counter: str, histogram: str, buckets: tuple[float, ...], go: bool) -> None:
        self.counter, self.histogram, self.buckets, self.go = counter, histogram, buckets, go
        self.counts: dict[Key, float] = {}
        self.latency: dict[Key, list[float]] = {}  # per bucket (not cumulative) + Inf, then sum

    def record(self, counter_labels: Key, histogram_labels: Key, seconds: float, n: int) -> None:
        self.counts[counter_labels] = self.counts.get(counter_labels, 0) + n
        cells = self.latency.setdefault(histogram_labels, [0.0] * (len(self.buckets) + 2))
        index = next((i for i, b in enumerate(self.buckets) if seconds <= b), len(self.buckets))
        cells[index] += n
        cells[-1] += seconds * n

    def _le(self, bound: float) -> str:
        if self.go:
            return f"{bound:g}"
        return repr(float(bound))

    def render(self) -> Iterable[str]:
        yield f"# TYPE {self.counter} counter"
        for labels, value in self.counts.items():
            yield f"{self.counter}{{{_labels(labels)}}} {value:g}"
        base = self.histogram
        yield f"# TYPE {base} histogram"
        for labels, cells in self.latency.items():
            cumulative = 0.0
            for bound, n in zip((*self.buckets, None), cells[:-1], strict=True):
                cumulative += n
                le = "+Inf" if bound is None else self._le(bound)
                yield f"{base}_bucket{{{_labels((*labels, ('le', le)))}}} {cumulative:g}"
            yield f"{base}_sum{{{_labels(labels)}}} {cells[-1]!r}"
            yield f"{base}_count{{{_labels(labels)}}} {cumulative:g}"


def _labels(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels)


def _key(**labels: str) -> Key:
    return tuple(sorted(labels.items()))


class State:
    def __init__(self) -> None:
        self.ingress = Family(
            "nginx_ingress_controller_requests",
            "nginx_ingress_controller_request_duration_seconds",
            INGRESS_BUCKETS,
            go=True,
        )
        self.http = Family(
            "http_requests_total", "http_request_duration_seconds", HTTP_BUCKETS, go=False
        )

    def apply(self, item: dict[str, Any]) -> None:
        seconds, n = float(item["seconds"]), int(item.get("n", 1))
        if item["kind"] == "ingress":
            common = {
                **INGRESS_LABELS,
                "host": item["host"],
                "method": item.get("method", "GET"),
                "status": str(item["status"]),
            }
            if "path" in item:  # only with the controller's metrics per path
                common["path"] = item["path"]
            self.ingress.record(_key(**common), _key(**common), seconds, n)
        else:
            # a code or a status label, as instrumentation libraries differ
            label = "status" if "status" in item else "code"
            base = {"handler": item["handler"], "method": item.get("method", "GET")}
            if "app" in item:
                base["app"] = item["app"]
            counter = _key(**base, **{label: str(item[label])})
            self.http.record(counter, _key(**base), seconds, n)


def make_app() -> web.Application:
    state = State()

    async def metrics(_: web.Request) -> web.Response:
        lines = [*state.ingress.render(), *state.http.render()]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def record(request: web.Request) -> web.Response:
        for item in await request.json():
            state.apply(item)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/record", record)
    return app


class Exporter:
    """The exporter in a subprocess on 127.0.0.1."""

    def __init__(self) -> None:
        from tests.conftest import free_port  # not in the subprocess: conftest imports moto

        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.target}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ingress_exporter", str(self.port)], cwd=ROOT
        )

    def wait_ready(self, timeout: float = 15.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the exporter exited: {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/metrics", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the exporter did not start")

    async def record(self, items: list[dict[str, Any]]) -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.url + "/record", json=items) as r,
        ):
            assert r.status == 204, await r.text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)
