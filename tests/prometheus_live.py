"""A real Prometheus (Debian's) on 127.0.0.1 for tests: config, start, queries, rules."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import free_port


class Prometheus:
    """`prometheus` in a subprocess scraping one target every second, with rule files loaded."""

    def __init__(
        self, binary: str, workdir: Path, target: str, rule_files: list[Path], job: str = "cutover"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {
                "scrape_interval": "1s",
                "evaluation_interval": "1s",
                "scrape_timeout": "1s",
            },
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
        }
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"prometheus exited: {self.proc.returncode}\n{self.log()}")
                try:
                    async with s.get(self.url + "/-/ready") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"prometheus not ready after {timeout}s:\n{self.log()}")

    async def api(self, path: str, **params: str) -> Any:
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.url + "/api/v1/" + path, data=params) as r,
        ):
            body = await r.json()
        return body

    async def query(self, expr: str) -> dict[str, Any]:
        """The instant query's whole answer: status, data (resultType, result), error."""
        result: dict[str, Any] = await self.api("query", query=expr)
        return result

    async def rules(self) -> list[dict[str, Any]]:
        body = await self.api_get("rules")
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    async def api_get(self, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as s,
            s.get(self.url + "/api/v1/" + path) as r,
        ):
            return await r.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
