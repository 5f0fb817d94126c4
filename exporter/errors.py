"""The exceptions cutover raises on purpose.

    CutoverError          base of everything below
    ├── ConfigError       the configuration cannot be used: every problem, each with its location
    ├── UsageError        the command line cannot be used (bad flag value, missing --config)
    ├── StateDirError     state_dir cannot be created or written, or another daemon holds it
    └── CorruptStateFile  a state file could not be read; it was moved aside (also a ValueError)

Failing targets are not exceptions: a probe always returns a result with a reason.
"""

from __future__ import annotations


class CutoverError(Exception):
    """Base class of cutover's own errors."""


class ConfigError(CutoverError):
    """The configuration is invalid; `details` holds one `location: message` line per problem."""

    def __init__(self, source: str, details: list[str]) -> None:
        self.source = source
        self.details = details
        super().__init__(f"{source}: {len(details)} problem(s):\n" + "\n".join(details))


class UsageError(CutoverError):
    """The command line is invalid."""


class StateDirError(CutoverError):
    """The state directory cannot be created or written, or another daemon holds its lock."""


class CorruptStateFile(CutoverError, ValueError):
    """A state file could not be read; the message names it and where it was moved aside."""
