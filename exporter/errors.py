"""The exceptions cutover raises on purpose, all in one tree.

    CutoverError          base of everything below
    ├── ConfigError       the configuration cannot be used: every problem, each with its location
    ├── UsageError        the command line cannot be used (bad flag value, missing --config)
    ├── StateDirError     state_dir cannot be created or written, or another daemon holds it
    ├── CorruptStateFile  a state file could not be read; it was moved aside (also a ValueError)
    ├── Route53Error      a Route53 read or write failed; `reason` labels the error metrics
    │   ├── WeightsChanged  a write found other weights than expected; nothing was written
    │   └── StaleWrite      Route53 refused a compare-and-swap batch whole: the record sets or
    │                       the step record changed after the writer read them (a lost race)
    ├── SlackError        Slack refused a test message for a reason a person must fix
    ├── SourceError       a traffic source's poll failed; `reason` labels the error metrics
    ├── DynamoError       a call to the HA table failed (not a lost race); `reason` labels metrics
    │   ├── OutboxStoreError  the Slack outbox in the table could not be read or written; also an
    │   │                     OSError, so the Notifier treats it as a failed save of its file
    │   └── StateStoreError   a state document (incidents, the shift plan) in the table could not
    │                         be read or written; also an OSError, as a state file's failure
    ├── Fenced            a write to the HA table was refused: this replica no longer holds the
    │                     lease under the epoch it wrote with (a lost race, not a failure)
    └── Refused           a shift control call (pause, resume, ...) that does not apply now

Failing targets are not exceptions: a probe always returns a result with a reason. Failures of
Slack deliveries become retries, parking or a dropped message inside the outbox, never raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, get_args

Route53Reason = Literal["throttling", "access_denied", "not_found", "timeout", "other"]
ROUTE53_REASONS: Final[tuple[Route53Reason, ...]] = get_args(Route53Reason)


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


class Route53Error(CutoverError):
    """A record could not be read or written; `reason` is one of ROUTE53_REASONS.

    throttling     Throttling / PriorRequestNotComplete, still failing after botocore's retries
    access_denied  the credentials lack the permission, or there are none
    not_found      no such hosted zone, or no weighted record sets under that name (and type)
    timeout        endpoint unreachable, connect/read timeout, or no answer within the deadline
    other          anything else (invalid input, 5xx, unparsable answers)
    """

    def __init__(self, reason: Route53Reason, detail: str, *, code: str | None = None) -> None:
        super().__init__(reason, detail)
        self.reason: Route53Reason = reason
        self.detail = detail
        self.code = code or reason

    def __str__(self) -> str:
        return f"{self.reason} ({self.detail})"


class WeightsChanged(Route53Error):
    """The record's weights are not the ones the caller expected; nothing was written."""

    def __init__(self, record: str, found: Mapping[str, int], expected: Mapping[str, int]) -> None:
        diffs = ", ".join(
            f"{p} {expected.get(p, '-')} -> {found.get(p, '-')}"
            for p in dict.fromkeys([*expected, *found])
            if expected.get(p) != found.get(p)
        )
        super().__init__("other", f"weights of {record} changed: {diffs}", code="WeightsChanged")
        self.found = dict(found)
        self.expected = dict(expected)


class StaleWrite(Route53Error):
    """Route53 refused a compare-and-swap batch (InvalidChangeBatch): a DELETE no longer
    matched what the writer had read, or a CREATE found its record set there, because another
    writer's batch got in after the read. Nothing of the batch was applied.

    Not a WeightsChanged: that one is the writer's own check before sending, with the weights
    it found; this is Route53's check after, and the writer has not read what won. The same
    batch can never succeed again: read Route53 afresh and decide from what is there.
    """

    def __init__(self, record: str, step: int, message: str) -> None:
        super().__init__(
            "other",
            f"{record} changed after step {step} was read (another writer got in first); "
            f"nothing was written: {message}",
            code="StaleWrite",
        )
        self.step = step
        self.message = message


class SourceError(CutoverError):
    """A traffic source could not be read this time (`reason`: timeout, unreachable, refused,
    throttling, bad_answer, other); the source stays configured and tries again."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason} ({self.detail})"


class DynamoError(CutoverError):
    """A DynamoDB call of the HA table failed; `reason` is one of exporter.store.dynamo.REASONS.

    A conditional write refused because another replica got there first is not a DynamoError:
    that is a lost race, and the lease treats it as news, not as a failure.
    """

    def __init__(self, reason: str, detail: str, *, code: str | None = None) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
        self.code = code or reason

    def __str__(self) -> str:
        return f"{self.reason} ({self.detail})"


class OutboxStoreError(DynamoError, OSError):
    """The HA table could not read or persist a change of the Slack outbox.

    An OSError as well: the OutboxStore protocol says a change that cannot be persisted raises
    OSError or ValueError, and the Notifier keeps such a change in memory and says so; callers
    that count DynamoDB errors catch it as a DynamoError and read its `reason`.
    """

    def __init__(self, reason: str, detail: str, *, code: str | None = None) -> None:
        super().__init__(reason, detail, code=code)
        self.strerror = str(self)  # what the Notifier's log line shows of an OSError


class StateStoreError(DynamoError, OSError):
    """The HA table could not read or write a state document (incidents, the shift plan)."""

    def __init__(self, reason: str, detail: str, *, code: str | None = None) -> None:
        super().__init__(reason, detail, code=code)
        self.strerror = str(self)


class Fenced(CutoverError):
    """A write to the HA table was refused by the lease's fence: another replica holds the lease
    now (or a later epoch wrote the item). Nothing was written; the new leader's state stands."""


class SlackError(CutoverError):
    """Slack refused a message for a reason a person must fix (raised by `send_test`)."""


class Refused(CutoverError):
    """A control call (pause, resume, approve, rollback) that does not apply in this state.

    Its text is meant for the person who made the call.
    """
