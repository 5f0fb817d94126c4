"""This replica's part in a migration watched by several (`ha`): may it act now?

The daemon holds one `Leadership` when the configuration has an `ha` section, and none
otherwise (one replica always acts). It keeps the lease in the background (`run`, until
`stop`) and answers the gates: a Route53 write, a shift decision or a person's command is made
only while `may_act()`; a write names `epoch()`, the lease's term, so that a late one from a
replica that lost the lease is told apart (and refused where a condition can hold it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from exporter.config import Config
from exporter.store.lease import DynamoLease, LeaseSnapshot, LeaseTable

__all__ = ["ALWAYS", "Always", "Gate", "Leadership"]


class Gate(Protocol):
    """What a part that acts (the Notifier, the daemon's incidents) asks of the lease."""

    def may_act(self) -> bool: ...

    def epoch(self) -> int | None:
        """The lease's epoch while this replica may act, else None."""
        ...

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever this replica starts or stops acting."""
        ...


class Always:
    """One replica alone: it always acts, under epoch 0, and that never changes."""

    def may_act(self) -> bool:
        return True

    def epoch(self) -> int | None:
        return 0

    def on_change(self, callback: Callable[[], None]) -> None:
        pass


ALWAYS = Always()

# a lease call may take at most this long (and at most a third of the lease): a hung call must
# not outlast the window in which its answer could still keep this replica acting
CALL_TIMEOUT = 5.0


class Leadership:
    """The lease of `cfg.ha` for this process; `me` is unique per process (two replicas of
    the same vantage never mistake each other's writes for their own)."""

    def __init__(self, cfg: Config, *, me: str | None = None) -> None:
        ha = cfg.ha
        migration = cfg.ha_migration
        if ha is None or migration is None:
            raise ValueError("no ha section, or no migration to name its lease")
        self.vantage = ha.vantage
        self.migration = migration
        table = LeaseTable(
            table=ha.table,
            migration=migration,
            me=me or f"{ha.vantage}#{uuid.uuid4().hex[:12]}",
            vantage=ha.vantage,
            lease=ha.lease,
            region=ha.region,
            endpoint_url=str(ha.endpoint_url) if ha.endpoint_url is not None else None,
            timeout=min(CALL_TIMEOUT, ha.lease / 3),
        )
        self.lease = DynamoLease(table)
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Keep the lease until `stop`; then release it (another replica takes over at once)."""
        await self.lease.run(self._stop)

    def stop(self) -> None:
        self._stop.set()

    def may_act(self) -> bool:
        return self.lease.may_act()

    @property
    def me(self) -> str:
        """This process's name in the table (the lease's owner, the reports' writer)."""
        return self.lease.table.me

    def epoch(self) -> int | None:
        """The lease's epoch while this replica may act, else None."""
        return self.lease.lease.epoch if self.lease.may_act() else None

    def on_change(self, callback: Callable[[], None]) -> None:
        self.lease.on_change(callback)

    def fence(self, epoch: int) -> dict[str, Any]:
        """A TransactWriteItems ConditionCheck that holds only while this replica holds the
        lease under `epoch`: the stores' writes are made in one transaction with it."""
        return self.lease.table.fence(epoch)

    def snapshot(self) -> LeaseSnapshot:
        return self.lease.snapshot()

    def close(self) -> None:
        self.lease.close()
