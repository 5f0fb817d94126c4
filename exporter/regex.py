"""Regular expressions that run in time linear in their input: RE2, with bounds on the pattern.

Every pattern a platform's answer or a client's request is matched against (a check's
body_regex, a traffic route group's path_regex) compiles here: RE2 (Go's regexp syntax, as
blackbox_exporter's) has no backtracking, so no input can make a match take longer than its
length times the pattern's size, and the size is bounded too. Backreferences and lookaround are
refused with the reason.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import re2  # type: ignore[import-untyped]  # google-re2 ships no type hints

__all__ = ["INLINE_STEPS", "MAX_PROGRAM", "Regex", "compile_linear"]


class Regex(Protocol):
    """What cutover uses of a compiled RE2 pattern (google-re2 ships no type hints)."""

    @property
    def programsize(self) -> int: ...

    def search(self, text: bytes | bytearray) -> object | None: ...


# RE2 matches in time linear in the body, but the factor grows with the pattern's program size:
# measured worst (a DFA that keeps building new states, as `a[ab]{20}z` over random a/b text
# makes it, or RE2's fallback to its NFA) about 55 ns per body byte and instruction, while usual
# patterns over usual bodies take 0.2 ns. Patterns stay small so that the worst stays bounded:
# 1000 instructions is a minute per MiB at worst; health-check patterns take 20 to 300.
MAX_PROGRAM = 1000
# Bytes x instructions a search may take on the event loop: 2 ms at the worst rate (a
# `"status":\s*"ok"` pattern, 22 instructions, over 1.4 KiB); more belongs in a thread, where RE2
# releases the GIL, so that no input holds the loop longer.
INLINE_STEPS = 1 << 15


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # else RE2 prints every refused pattern on stderr
    # Matching or not is all a probe needs: without captures RE2 never falls back to its
    # slow submatch engines (`(.*a){20}` over 1 MiB: 1.7 s with captures, 8 ms without).
    options.never_capture = True
    # Bytes in, bytes matched, as with the re module's bytes patterns: `.` is any byte and a
    # body need not be valid UTF-8. Non-ASCII text in a pattern still matches its UTF-8 bytes.
    options.encoding = re2.Options.Encoding.LATIN1
    return options


def compile_linear(pattern: str) -> Regex:
    """A pattern -> the RE2 program that searches bytes with it; ValueError says why not.

    Go's regexp syntax: no backreferences, no lookaround, `\\z` for the end of the text.
    """
    try:
        regex: Regex = re2.compile(pattern.encode(), _re2_options())
    except re2.error as exc:
        why = exc.args[0] if exc.args else exc
        why = why.decode(errors="replace") if isinstance(why, bytes) else str(why)
        try:
            re.compile(pattern)
        except re.error as py_exc:
            # wrong in any dialect: Python's words say where
            raise ValueError(f"invalid regular expression: {py_exc}") from None
        hint = " (RE2 writes the end of the text as \\z)" if "\\Z" in why else ""
        raise ValueError(f"not supported by RE2 (linear-time): {why}{hint}") from None
    size = regex.programsize
    if size > MAX_PROGRAM:
        raise ValueError(
            f"pattern too large for a fast linear-time match: {size} RE2 instructions, at most "
            f"{MAX_PROGRAM} (every copy of a repetition such as {{100}} counts)"
        )
    return regex
