"""State files in state_dir: atomic replacement, and corrupt files moved aside, never lost."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["load_json", "read_state", "save_atomic", "set_aside"]


def save_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file."""
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
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


def read_state(path: str | os.PathLike[str], now: float | None = None) -> str | None:
    """The text of a state file, or None when it does not exist yet.

    A file that is not text is set aside like a corrupt one (see `load_json`).
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as e:
        raise set_aside(Path(path), f"not UTF-8 text ({e.reason})", now) from None


def load_json(path: str | os.PathLike[str], now: float | None = None) -> Any:
    """Parsed JSON from a state file; None when missing.

    A file that does not parse is renamed to `<name>.corrupt-<unix time>` (kept for a person to
    look at, and out of the way of the next save) and reported as ValueError naming both files.
    """
    text = read_state(path, now)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise set_aside(Path(path), f"not JSON: {e}", now) from None


def set_aside(path: Path, reason: str, now: float | None) -> ValueError:
    stamp = int(now if now is not None else time.time())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, aside)
    except OSError as e:
        return ValueError(f"{path}: corrupt state file ({reason}); could not move it aside: {e}")
    return ValueError(f"{path}: corrupt state file ({reason}); moved aside to {aside}")
