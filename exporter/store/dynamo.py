"""The HA table in DynamoDB: its definition in one place, and its errors classified for metrics.

One table holds every item of every migration that uses it: partition key `pk` (a migration's
items share `migration#<name>`), sort key `sk` (what the item is: `lease`, `outbox#<key>`,
`vantage#<name>`, ...), and DynamoDB's TTL on `expires` (wall-clock seconds) so that a table
forgotten after a migration empties itself. DynamoDB deletes expired items late (within days), so
readers skip an item past its `expires` themselves; nothing finer is decided on the wall clock of
another machine.

boto3 calls here are blocking: the CLI calls them directly, the daemon through `Calls`.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, get_args

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from exporter import aws
from exporter.errors import DynamoError

__all__ = [
    "KEY_ATTRIBUTES",
    "REASONS",
    "TTL_ATTRIBUTE",
    "BlockingClient",
    "Calls",
    "DynamoReason",
    "TableReady",
    "classify",
    "create_table",
    "create_table_command",
    "make_client",
    "query_partition",
]

DynamoReason = Literal[
    "throttling", "access_denied", "not_found", "timeout", "unreachable", "other"
]
REASONS: Final[tuple[DynamoReason, ...]] = get_args(DynamoReason)

KEY_ATTRIBUTES: Final = (("pk", "HASH"), ("sk", "RANGE"))
TTL_ATTRIBUTE: Final = "expires"

_THROTTLING_CODES: Final = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "LimitExceededException",
    }
)
_ACCESS_DENIED_CODES: Final = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "MissingAuthenticationTokenException",
    }
)


def classify(exc: BaseException, secrets: Sequence[str] = ()) -> DynamoError:
    """Any exception of a DynamoDB call -> a DynamoError whose detail holds no secret.

    A ConditionalCheckFailedException is not an error but a lost race: callers catch it first.
    """
    if isinstance(exc, DynamoError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        reason: DynamoReason
        if code in _THROTTLING_CODES or status == 429:
            reason = "throttling"
        elif code in _ACCESS_DENIED_CODES or status in (401, 403):
            reason = "access_denied"
        elif code == "ResourceNotFoundException":
            reason = "not_found"
        elif status >= 500:
            reason = "unreachable"
        else:
            reason = "other"
        detail = f"{code}: {message}" if message else code
        return DynamoError(reason, aws.scrub(detail, secrets), code=code)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        # without credentials every call is refused: the fix is the same as for a denial
        return DynamoError("access_denied", aws.scrub(str(exc), secrets), code=type(exc).__name__)
    if isinstance(exc, NoRegionError):
        return DynamoError("other", "no region: set ha.region, or AWS_REGION", code="NoRegion")
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError | TimeoutError):
        return DynamoError("timeout", aws.scrub(str(exc) or "timed out", secrets), code="Timeout")
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return DynamoError("unreachable", aws.scrub(str(exc), secrets), code=type(exc).__name__)
    if isinstance(exc, BotoCoreError):
        return DynamoError("other", aws.scrub(f"{type(exc).__name__}: {exc}", secrets))
    return DynamoError("other", aws.scrub(f"{type(exc).__name__}: {exc}", secrets))


def make_client(
    region: str | None, endpoint_url: str | None, *, timeout: float, max_attempts: int
) -> tuple[Any, Any]:
    """A DynamoDB client and its credentials (see `exporter.aws.make_client`). Blocking."""
    return aws.make_client(
        "dynamodb",
        region=region,
        endpoint_url=endpoint_url,
        timeout=timeout,
        max_attempts=max_attempts,
    )


@dataclass(frozen=True, slots=True)
class TableReady:
    """What `create_table` found or did, for the person who ran `cutover ha init`."""

    name: str
    created: bool  # False: the table was there already
    ttl_enabled: bool  # False: TTL on `expires` was on already

    def text(self) -> str:
        made = "created" if self.created else "already exists"
        ttl = "TTL enabled on" if self.ttl_enabled else "TTL already on"
        return f"table {self.name} {made} (keys pk, sk); {ttl} {TTL_ATTRIBUTE}"


def _definition(name: str) -> dict[str, Any]:
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": a, "AttributeType": "S"} for a, _ in KEY_ATTRIBUTES
        ],
        "KeySchema": [{"AttributeName": a, "KeyType": k} for a, k in KEY_ATTRIBUTES],
    }


def create_table(
    client: Any, name: str, *, timeout: float = 300.0, poll: float = 1.0
) -> TableReady:
    """Create the table (on demand, `pk`/`sk` strings), wait until it is ACTIVE, turn TTL on
    `expires` on. Blocking. A table that exists already is fine when its keys are ours (its TTL
    is turned on if it is not); one with other keys, or TTL on another attribute, is refused:
    cutover's items would not fit it. Raises DynamoError."""
    created = True
    try:
        client.create_table(**_definition(name))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
        created = False
    deadline = time.monotonic() + timeout
    while True:
        table = client.describe_table(TableName=name)["Table"]
        if not created:
            keys = tuple((k["AttributeName"], k["KeyType"]) for k in table.get("KeySchema", []))
            if keys != KEY_ATTRIBUTES:
                raise DynamoError(
                    "other",
                    f"table {name} exists with other keys "
                    f"({', '.join(f'{a} {t}' for a, t in keys)}); cutover needs pk HASH, sk RANGE",
                    code="KeySchemaMismatch",
                )
        if table.get("TableStatus") == "ACTIVE":
            break
        if time.monotonic() > deadline:
            raise DynamoError(
                "timeout",
                f"table {name} is {table.get('TableStatus')}, not ACTIVE, after {timeout:g}s",
                code="Timeout",
            )
        time.sleep(poll)
    ttl = client.describe_time_to_live(TableName=name).get("TimeToLiveDescription", {})
    status, attribute = ttl.get("TimeToLiveStatus"), ttl.get("AttributeName")
    if status in ("ENABLED", "ENABLING"):
        if attribute != TTL_ATTRIBUTE:
            raise DynamoError(
                "other",
                f"table {name} has TTL on {attribute!r}; cutover's items expire by "
                f"{TTL_ATTRIBUTE!r}",
                code="TtlMismatch",
            )
        return TableReady(name, created=created, ttl_enabled=False)
    client.update_time_to_live(
        TableName=name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
    )
    return TableReady(name, created=created, ttl_enabled=True)


def create_table_command(name: str, region: str | None, endpoint_url: str | None) -> str:
    """The `aws` commands that do what `create_table` does, for people who create tables with
    their own tools (or their own credentials)."""
    where = "".join(
        f" {flag} {shlex.quote(value)}"
        for flag, value in (("--region", region), ("--endpoint-url", endpoint_url))
        if value
    )
    table = f"--table-name {shlex.quote(name)}{where}"
    attributes = " ".join(f"AttributeName={a},AttributeType=S" for a, _ in KEY_ATTRIBUTES)
    keys = " ".join(f"AttributeName={a},KeyType={k}" for a, k in KEY_ATTRIBUTES)
    return (
        f"aws dynamodb create-table {table} \\\n"
        f"    --attribute-definitions {attributes} \\\n"
        f"    --key-schema {keys} \\\n"
        "    --billing-mode PAY_PER_REQUEST\n"
        f"aws dynamodb wait table-exists {table}\n"
        f"aws dynamodb update-time-to-live {table} \\\n"
        f"    --time-to-live-specification Enabled=true,AttributeName={TTL_ATTRIBUTE}\n"
    )


_T = TypeVar("_T")


class Calls:
    """The daemon's way to call DynamoDB: `await calls(fn)` runs `fn(client)` off the event loop
    (`exporter.aws.AwsCalls`) with a deadline; every failure comes back as a DynamoError without
    secrets."""

    def __init__(
        self,
        *,
        region: str | None,
        endpoint_url: str | None,
        timeout: float,
        max_attempts: int = 1,
        client: Any | None = None,
        threads: str = "ha",
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.region = region
        self.endpoint_url = endpoint_url
        self.timeout = timeout
        self._calls = aws.AwsCalls(
            lambda: make_client(region, endpoint_url, timeout=timeout, max_attempts=max_attempts),
            name=threads,
            client=client,
        )

    async def __call__(self, fn: Callable[[Any], _T]) -> _T:
        """`fn(client)` in a worker; raises DynamoError (a timeout when no answer came in time:
        the worker goes on until botocore's own read timeout ends it)."""
        try:
            return await self._calls.run(self._run, fn, within=self.timeout)
        except DynamoError:
            raise
        except aws.CallsClosed:
            raise DynamoError("other", "the table's client is closed") from None
        except aws.CallTimedOut as exc:
            raise DynamoError("timeout", str(exc)) from None
        except Exception as exc:
            raise classify(exc, self._calls.secrets()) from exc

    def close(self) -> None:
        """Release threads and connections; a call still running finishes alone."""
        self._calls.close()

    def _run(self, fn: Callable[[Any], _T]) -> _T:
        return fn(self._calls.client())


def query_partition(
    client: Any, table: str, pk: str, prefix: str | None = None
) -> list[dict[str, Any]]:
    """Every item of partition `pk` (whose sort key starts with `prefix`, if given), page after
    page, by strongly consistent reads. Blocking."""
    condition = "pk = :pk"
    values: dict[str, Any] = {":pk": {"S": pk}}
    if prefix is not None:
        condition += " AND begins_with(sk, :prefix)"
        values[":prefix"] = {"S": prefix}
    items: list[dict[str, Any]] = []
    page: dict[str, Any] = {}
    while True:
        answer = client.query(
            TableName=table,
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values,
            ConsistentRead=True,
            **page,
        )
        items.extend(answer.get("Items", []))
        if "LastEvaluatedKey" not in answer:
            return items
        page = {"ExclusiveStartKey": answer["LastEvaluatedKey"]}


class BlockingClient:
    """A DynamoDB client for a store whose calls are made in its caller's worker thread (see
    exporter/store/calls.py): built on first use, and its failures classified without the
    credentials' secrets."""

    def __init__(
        self,
        *,
        region: str | None,
        endpoint_url: str | None,
        timeout: float,
        max_attempts: int,
        client: Any | None = None,
    ) -> None:
        self._settings = (region, endpoint_url, timeout, max_attempts)
        self._client = client
        self._credentials: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._client is None:
                region, endpoint_url, timeout, attempts = self._settings
                self._client, self._credentials = make_client(
                    region, endpoint_url, timeout=timeout, max_attempts=attempts
                )
            return self._client

    def classify(self, exc: BaseException) -> DynamoError:
        return classify(exc, aws.credential_secrets(self._credentials))
