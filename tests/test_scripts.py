"""scripts/test, as CI runs it: Debian packages installed without tripping over another apt-get."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

from tests.conftest import ROOT

# apt-get while another apt-get holds the dpkg lock: it fails at once unless told to wait
APT_GET = """\
#!/bin/sh
echo "apt-get $*" >> "$CALLS"
case " $* " in
  *" DPkg::Lock::Timeout="*) exit 0 ;;
esac
echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)" >&2
exit 100
"""
RECORD = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS"\n'


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_ci_runs_exactly_scripts_test() -> None:
    run = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in run if line and not line.startswith("#")][-1] == "exec scripts/test"


def test_scripts_test_waits_for_the_dpkg_lock(tmp_path: Path) -> None:
    """scripts/test as root on a machine missing its Debian tools, in a copy of the checkout whose
    .venv and every command are stand-ins (no network, no real apt-get): the update and the
    install both wait for the lock, and the script goes on to ruff, mypy and pytest."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "test", repo / "scripts" / "test")
    venv = repo / ".venv" / "bin"
    venv.mkdir(parents=True)
    for name in ("python", "ruff", "mypy"):
        executable(venv / name, RECORD)
    bin_dir = tmp_path / "bin"  # the whole PATH: no promtool, podman, ... so all are installed
    bin_dir.mkdir()
    executable(bin_dir / "apt-get", APT_GET)
    executable(bin_dir / "id", "#!/bin/sh\necho 0\n")  # root
    executable(bin_dir / "python3", "#!/bin/sh\nexit 0\n")  # venv and ensurepip are there
    for tool in ("dirname", "basename"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    calls = tmp_path / "calls"
    env = {"PATH": str(bin_dir), "CALLS": str(calls), "HOME": str(tmp_path)}
    bash = shutil.which("bash")
    assert bash is not None
    r = subprocess.run(
        [bash, str(repo / "scripts" / "test"), "-q"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Could not get lock" not in r.stderr
    lines = calls.read_text().splitlines()
    apt = [line for line in lines if line.startswith("apt-get ")]
    assert [line.split(" update")[0] for line in apt if " update" in line] == [
        "apt-get -o DPkg::Lock::Timeout=600"
    ]
    (install,) = [line for line in apt if " install " in line]
    assert install.startswith("apt-get -o DPkg::Lock::Timeout=600 install ")
    assert {"prometheus", "prometheus-alertmanager", "podman"} <= set(install.split())
    # then the rest of the script: the project into the venv, ruff, mypy, pytest with the args
    assert lines[-3:] == ["ruff check .", "mypy ", "python -m pytest -q"]
