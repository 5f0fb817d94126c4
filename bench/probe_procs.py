"""bench/probe's processes: the nginx target, blackbox_exporter, the cutover daemon, and /proc.

Every process listens on 127.0.0.1 only, on a port picked free at start, and is stopped by its
own pid when the benchmark ends (or fails).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_DELAY = 0.050  # echo_sleep: what every probe should measure, plus the connection
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

ECHO_MODULE_GLOBS = (
    "/usr/lib/nginx/modules/ngx_http_echo_module.so",
    "/usr/share/nginx/modules/ngx_http_echo_module.so",
    "/usr/lib*/nginx/modules/ngx_http_echo_module.so",
)


def missing_tools() -> list[tuple[str, str]]:
    """(what, Debian package) for every outside tool the benchmark needs and cannot find."""
    missing = []
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        missing.append(("nginx", "nginx"))
    if echo_module() is None:
        missing.append(("nginx's echo module (echo_sleep)", "libnginx-mod-http-echo"))
    if blackbox_binary() is None:
        missing.append(("blackbox_exporter", "prometheus-blackbox-exporter"))
    if shutil.which("curl") is None:
        missing.append(("curl", "curl"))
    return missing


def echo_module() -> str | None:
    for pattern in ECHO_MODULE_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def blackbox_binary() -> str | None:
    return shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until url answers 200 (or the process dies)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g}s ({last})")


def fetch(url: str, timeout: float = 60.0) -> tuple[bytes, float]:
    """GET url -> (body, wall seconds)."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
    return body, time.perf_counter() - started


# -- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pin(pid: int, cpus: set[int]) -> None:
    """Run pid, its threads and its children (nginx's workers) on these CPUs only."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            for child in children:
                pin(int(child), cpus)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


# -- processes ----------------------------------------------------------------------------------


class Proc:
    """A child process, stopped by its own pid."""

    def __init__(self, args: Sequence[str], log: Path, **kwargs: object) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(args), stdout=self._log, stderr=subprocess.STDOUT, **kwargs
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Target:
    """nginx with the echo module: GET /probe answers `ok` after SERVER_DELAY, on two ports."""

    ports: tuple[int, int]
    proc: Proc

    def url(self, which: int = 0, path: str = "/probe") -> str:
        return f"http://127.0.0.1:{self.ports[which]}{path}"


@contextlib.contextmanager
def nginx_target(workdir: Path) -> Iterator[Target]:
    module = echo_module()
    assert module is not None
    ports = (free_port(), free_port())
    d = workdir / "nginx"
    d.mkdir(parents=True, exist_ok=True)
    temps = "\n".join(
        f"  {kind}_temp_path {d}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    listens = "\n".join(f"    listen 127.0.0.1:{p} backlog=4096;" for p in ports)
    (d / "nginx.conf").write_text(
        f"""load_module {module};
worker_processes 1;
worker_rlimit_nofile 16384;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
{temps}
  keepalive_timeout 0;
  server {{
{listens}
    location / {{
      echo_sleep {SERVER_DELAY};
      echo ok;
    }}
  }}
}}
"""
    )
    args = [nginx_binary(), "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]
    args += ["-g", "daemon off;" + (" user root;" if os.geteuid() == 0 else "")]
    proc = Proc(args, d / "stdout.log")
    target = Target(ports=ports, proc=proc)
    try:
        for i in range(2):
            wait_http(target.url(i), 10.0, proc.proc)
        yield target
    finally:
        proc.stop(signal.SIGQUIT)


@contextlib.contextmanager
def blackbox(workdir: Path) -> Iterator[tuple[int, Proc]]:
    binary = blackbox_binary()
    assert binary is not None
    d = workdir / "blackbox"
    d.mkdir(parents=True, exist_ok=True)
    (d / "blackbox.yml").write_text(
        "modules:\n"
        "  http_2xx:\n"
        "    prober: http\n"
        "    timeout: 5s\n"
        "    http:\n"
        "      preferred_ip_protocol: ip4\n"
    )
    port = free_port()
    proc = Proc(
        [
            binary,
            f"--config.file={d / 'blackbox.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        d / "blackbox.log",
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/-/healthy", 10.0, proc.proc)
        yield port, proc
    finally:
        proc.stop()


@contextlib.contextmanager
def route53_standin() -> Iterator[int]:
    """A Route53 stand-in on 127.0.0.1 (the demo's: api.example.com, 90/10): its port."""
    from exporter.demo import ROUTE53_XML

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = ROUTE53_XML.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def cutover_config(
    target: Target,
    checks: int,
    interval: float,
    window: float,
    listen_port: int,
    route53_port: int | None = None,
) -> str:
    """A config of `checks` checks, both platforms on the target (one port each).

    With `route53_port`, every check guards one record read there: each check then also has
    its evidence in the step ledger, as in a migration.
    """
    lines = [
        f"listen: 127.0.0.1:{listen_port}",
        "platforms:",
        "  base:",
        "    role: baseline",
        f"    base_url: http://127.0.0.1:{target.ports[0]}",
        "  cand:",
        "    role: candidate",
        f"    base_url: http://127.0.0.1:{target.ports[1]}",
        "judge:",
        f"  window: {window * 1000:.0f}ms",
        "checks:",
    ]
    timeout = min(interval, 2.0)
    record = ", record: api.example.com" if route53_port is not None else ""
    for i in range(checks):
        lines.append(
            f"  - {{name: c{i:05d}, path: /probe, interval: {interval * 1000:.0f}ms, "
            f"timeout: {timeout * 1000:.0f}ms{record}}}"
        )
    if route53_port is not None:
        lines += [
            "route53:",
            "  interval: 60s",
            f"  endpoint_url: http://127.0.0.1:{route53_port}",
            "  records:",
            "    - {hosted_zone_id: ZDEMO, name: api.example.com, type: CNAME,",
            "       set_identifiers: {base: heroku, cand: aws}}",
        ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def cutover_daemon(
    workdir: Path,
    target: Target,
    *,
    checks: int,
    interval: float,
    window: float,
    loop: str = "auto",
    ready_timeout: float = 120.0,
    route53_port: int | None = None,
) -> Iterator[tuple[int, Proc]]:
    """`cutover run` as a subprocess (the real daemon), ready: every check probed on both sides."""
    port = free_port()
    d = workdir / f"cutover-{checks}x{interval:g}s-{loop}"
    d.mkdir(parents=True, exist_ok=True)
    config = d / "cutover.yml"
    config.write_text(cutover_config(target, checks, interval, window, port, route53_port))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # the stand-in checks no signature: placeholder credentials, never the user's own
    env.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    args = [sys.executable, "-m", "exporter", "run", "--loop", loop, "--config", str(config)]
    proc = Proc([*args, "--log-level", "warning"], d / "daemon.log", env=env, cwd=str(ROOT))
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", ready_timeout, proc.proc)
        yield port, proc
    finally:
        proc.stop()


def curl_reference(url: str, runs: int) -> list[float]:
    """curl's time_total for `runs` fresh connections to url, in seconds."""
    times = []
    for _ in range(runs):
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", url],
            capture_output=True,
            check=True,
            text=True,
        )
        times.append(float(out.stdout))
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
