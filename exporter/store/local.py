"""State files in state_dir: one typed schema each, atomic replacement, unreadable files set aside.

Every state file may be corrupt: truncated by a full disk, edited by hand, or hostile. `StateFile`
is the one place where its content is refused. It is parsed against a strict pydantic schema
(pydantic's JSON parser refuses NaN, wrong types and nesting deeper than a few hundred levels
without recursing in Python), and any failure at all while reading or building it moves the
file aside to `<name>.corrupt-<unix time>`, kept for a person to look at and out of the way of the
next save, and is reported as `CorruptStateFile` naming both files. A state file never stops
the daemon from starting.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from exporter import __version__
from exporter.errors import CorruptStateFile, StateDirError

__all__ = ["CorruptStateFile", "StateDir", "StateFile", "save_atomic", "set_aside"]

LOCK_FILE = "cutover.lock"

T = TypeVar("T")
R = TypeVar("R")


def save_atomic(path: str | os.PathLike[str], data: str | bytes | list[bytes]) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file.

    A list of parts is written one after the other, never joined in memory.
    """
    target = Path(path)
    parts = data if isinstance(data, list) else [data.encode() if isinstance(data, str) else data]
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.writelines(parts)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # the rename itself must reach the disk too
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def set_aside(path: Path, reason: str, now: float | None) -> CorruptStateFile:
    """Move a corrupt state file out of the way; returns the error that says where it went."""
    stamp = int(now if now is not None else time.time())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, aside)
    except OSError as e:
        return CorruptStateFile(
            f"{path}: corrupt state file ({reason}); could not move it aside: {e}"
        )
    return CorruptStateFile(f"{path}: corrupt state file ({reason}); moved aside to {aside}")


def describe(error: ValidationError) -> str:
    """The first problem of a validation error in one line: `where: what`, and how many more."""
    problems = error.errors(include_url=False)
    if not problems:
        return "invalid content"
    first = problems[0]
    where = ".".join(str(p) for p in first["loc"])
    text = f"{where}: {first['msg']}" if where else str(first["msg"])
    if first["type"] == "json_invalid":
        text = f"not JSON: {first['msg'].removeprefix('Invalid JSON: ')}"
    more = len(problems) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


@functools.cache
def _adapter(schema: Any) -> TypeAdapter[Any]:
    # building an adapter costs milliseconds: once per schema, not once per save
    return TypeAdapter(schema)


class StateFile(Generic[T]):
    """One JSON file in state_dir, read and written through one typed schema `T`."""

    def __init__(self, path: str | os.PathLike[str], schema: Any) -> None:
        self.path = Path(path)
        self._adapter: TypeAdapter[T] = _adapter(schema)

    def load(self, build: Callable[[T], R], now: float | None = None) -> R | None:
        """`build(content)`, or None when the file does not exist yet.

        Anything else that goes wrong (unreadable bytes, invalid JSON, a value of the wrong type,
        or `build` refusing what it was given) sets the file aside and raises CorruptStateFile.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise set_aside(self.path, f"cannot read: {e.strerror or e}", now) from None
        try:
            return build(self._adapter.validate_json(raw))
        except ValidationError as e:
            raise set_aside(self.path, describe(e), now) from None
        except Exception as e:  # whatever a hostile file provokes, it must not stop a start
            reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            raise set_aside(self.path, reason[:300], now) from None

    def peek(self, build: Callable[[T], R]) -> R | None:
        """Like `load`, for a reader beside the daemon that owns the file: nothing is set aside.

        Raises ValueError naming the file and what is wrong with it.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ValueError(f"{self.path}: cannot read: {e.strerror or e}") from None
        try:
            return build(self._adapter.validate_json(raw))
        except ValidationError as e:
            raise ValueError(f"{self.path}: {describe(e)}") from None
        except Exception as e:
            raise ValueError(f"{self.path}: {type(e).__name__}: {str(e)[:300]}") from None

    def save(self, content: T) -> None:
        """Replace the file atomically. Raises OSError (disk full, permissions) and ValueError
        (content the schema cannot write, e.g. NaN where a finite number belongs)."""
        try:
            payload = self._adapter.dump_json(content)
        except Exception as e:  # pydantic's serialisation errors are not ValueErrors
            raise ValueError(f"{self.path}: cannot be written: {e}") from None
        save_atomic(self.path, payload)


class StateDir:
    """state_dir, created, checked writable and locked for this process alone.

    Two daemons on one state_dir would both post every notification and both move the weights:
    the second one refuses to start, naming the first. The lock is `flock` on `cutover.lock`,
    which the kernel releases when the process ends however it ends (kill -9 included), so a
    stale lock never blocks a restart.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> StateDir:
        directory = Path(path)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / ".cutover-write-test"
            probe.write_text("ok")
            probe.unlink()
            fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateDirError(f"state_dir {path}: not writable: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirError(
                f"state_dir {path} is in use by another cutover daemon ({holder}): two daemons "
                "on one state_dir would both post and both write; stop the other one, or give "
                "this one its own state_dir"
            ) from None
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        holder = (
            f"pid {os.getpid()} on {socket.gethostname()} since {started}, cutover {__version__}"
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        return cls(directory, fd)

    def close(self) -> None:
        """Release the lock (the process's end releases it too)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
