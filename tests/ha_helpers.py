"""Helpers for tests of items in the HA table (moto's DynamoDB): the lease item as a holder
writes it, and the fence a holder's transactions carry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from botocore.exceptions import EndpointConnectionError

from exporter.store.lease import LeaseTable, lease_pk


def put_lease(ddb: Any, table: str, migration: str, owner: str, epoch: int) -> None:
    """The lease item as a holder's takeover writes it (what LeaseTable.fence checks)."""
    ddb.put_item(
        TableName=table,
        Item={
            "pk": {"S": lease_pk(migration)},
            "sk": {"S": "lease"},
            "owner": {"S": owner},
            "epoch": {"N": str(epoch)},
            "version": {"S": uuid.uuid4().hex},
        },
    )


def fence_of(table: str, migration: str, me: str) -> Callable[[int], dict[str, Any]]:
    """The fence of replica `me`: a ConditionCheck on the lease item, without a lease loop."""
    lease = LeaseTable(table=table, migration=migration, me=me, vantage="here", lease=2.0)
    lease.close()  # only its fence is used: no calls, no threads
    return lease.fence


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait (with a deadline) until `predicate()` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class Unreachable:
    """A DynamoDB client whose calls named in `down` fail as a dead network does."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.down: set[str] = set()
        self.failed: list[str] = []

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.client, name)
        if name not in self.down:
            return call

        def fail(*args: Any, **kw: Any) -> Any:
            self.failed.append(name)
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

        return fail


def ha_yaml(vantage: str, *, table: str, endpoint: str, migration: str, lease: str = "2s") -> str:
    """The `ha` section of an in-process replica of `migration` against moto's server."""
    return (
        f"ha: {{vantage: {vantage}, table: {table}, region: us-east-1, "
        f"endpoint_url: '{endpoint}', lease: {lease}, migration: {migration}}}\n"
    )
