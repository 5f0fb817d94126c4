"""Route groups: a request's path -> the configured group it belongs to, `other` when none.

Without groups configured every request is counted in its platform's `all` alone.

First match wins, on the path without its query string, with RE2 (linear time: a request path
is chosen by whoever calls the platform, and must not be able to slow the daemon). Only group
names ever become label values, never paths: the metrics' cardinality is the config's.
"""

from __future__ import annotations

from collections.abc import Sequence

from exporter.regex import Regex, compile_linear
from exporter.traffic.counts import ALL, OTHER

__all__ = ["MAX_PATH", "Routes"]

# Paths longer than this are matched on their first MAX_PATH bytes: a route is in its first
# segments, and a search must stay cheap whatever a client sends.
MAX_PATH = 1024


class Routes:
    """The configured groups, in order."""

    __slots__ = ("_groups", "names")

    def __init__(self, groups: Sequence[tuple[str, str]] = ()) -> None:
        """`groups`: (name, path_regex) pairs; the patterns must compile (the config checked)."""
        self._groups: tuple[tuple[str, Regex], ...] = tuple(
            (name, compile_linear(pattern)) for name, pattern in groups
        )
        self.names: tuple[str, ...] = (*(name for name, _ in groups), OTHER)

    def __bool__(self) -> bool:
        """Whether any group is configured (else every request counts in `all` alone)."""
        return bool(self._groups)

    def group(self, path: str | bytes) -> str:
        """The group of a request path (a query string, if any, is ignored)."""
        if not self._groups:
            return ALL
        raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
        raw = raw.split(b"?", 1)[0][:MAX_PATH]
        for name, regex in self._groups:
            if regex.search(raw) is not None:
                return name
        return OTHER
