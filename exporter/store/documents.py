"""The daemon's state documents (the incidents, the shift plan): in state_dir, or in the HA table.

A document is one typed record, read and written whole. Two stores keep them, chosen where the
daemon is composed:

    LocalDocuments   state_dir/<name>.json through StateFile: the files as they always were
                     (atomic saves, strict schemas, a corrupt file set aside)
    DynamoDocuments  one item per document in the migration's partition of the HA table
                     (sk `state#<name>`, the record as JSON text in `body`, the `epoch` that wrote
                     it), each write one transaction with the lease's fence: a replica that lost
                     the lease cannot overwrite the new leader's state

`Document` is one document as the daemon uses it: its saves happen at once for a store called
inline (a local file, as before), or in the background for a store called in a worker thread
(the table), latest content first, retried until written or refused by the fence; whoever hands
the document's news on (owed notifications) waits until it is not `busy`, so that the news
never reaches the outbox before the state that caused it reaches the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar

from botocore.exceptions import ClientError
from pydantic import TypeAdapter, ValidationError

from exporter.errors import CorruptStateFile, Fenced, StateStoreError
from exporter.store import dynamo
from exporter.store.calls import StoreCalls
from exporter.store.lease import lease_pk
from exporter.store.local import StateFile, describe

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "Document",
    "DocumentStore",
    "DynamoDocuments",
    "LocalDocuments",
]

T = TypeVar("T")
R = TypeVar("R")

# DynamoDB refuses items over 400 KB (names and values together); the body is refused above
# this, with room for the other attributes
MAX_DOCUMENT_BYTES: Final = 350_000
# a document outlives its last write by this long (DynamoDB's TTL, wall clock): a migration
# paused for weeks keeps its plan; a forgotten one leaves the table eventually
EXPIRES_AFTER: Final = 90 * 86400.0
MAX_ATTEMPTS: Final = 2
RETRY_MIN, RETRY_MAX = 0.5, 5.0  # a failed background save is tried again after (s), doubling
STATE = "state"
FenceOf = Callable[[int], dict[str, Any]]


@functools.cache
def _adapter(schema: Any) -> TypeAdapter[Any]:
    return TypeAdapter(schema)


class DocumentStore(Protocol):
    """Where the state documents live. Blocking calls: see `Document` for the event loop."""

    def where(self, name: str) -> str:
        """Where document `name` is kept, for log lines."""
        ...

    def load(self, name: str, schema: Any, build: Callable[[Any], R], now: float) -> R | None:
        """`build(record)` of the saved document, or None when there is none.

        Raises CorruptStateFile when its content (or `build`) refuses it, after setting it
        aside; OSError when the store cannot be read.
        """
        ...

    def save(self, name: str, schema: Any, content: Any, epoch: int | None) -> None:
        """Replace document `name` with `content`, written by a replica acting under `epoch`
        (None: not acting). Raises OSError when the store refuses or cannot be reached,
        ValueError for content it cannot hold, Fenced when the lease has another holder now."""
        ...


class LocalDocuments:
    """Documents as `state_dir/<name>.json`; one process owns state_dir, so no epoch applies."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)

    def path(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def where(self, name: str) -> str:
        return str(self.path(name))

    def load(self, name: str, schema: Any, build: Callable[[Any], R], now: float) -> R | None:
        return StateFile[Any](self.path(name), schema).load(build, now)

    def save(self, name: str, schema: Any, content: Any, epoch: int | None) -> None:
        StateFile[Any](self.path(name), schema).save(content)


class _Refused(Exception):
    """The transaction was refused on a condition: a lost race."""


class DynamoDocuments:
    """Documents as items of the HA table, written under the lease's fence (`fence(epoch)`, a
    ConditionCheck; None only in tests of the item alone). Each item also refuses a write from
    an epoch older than the one that wrote it last."""

    def __init__(
        self,
        *,
        table: str,
        migration: str,
        fence: FenceOf | None,
        client: Any | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        timeout: float = 3.0,
        wall: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        self.table = table
        self.pk = lease_pk(migration)
        self.region = region
        self.endpoint_url = endpoint_url
        self.timeout = timeout
        self._fence = fence
        self._wall = wall
        self.log = logger or logging.getLogger(__name__)
        self._client = dynamo.BlockingClient(
            region=region,
            endpoint_url=endpoint_url,
            timeout=timeout,
            max_attempts=MAX_ATTEMPTS,
            client=client,
        )

    def where(self, name: str) -> str:
        return f"DynamoDB table {self.table} ({self.pk}, {STATE}#{name})"

    def _key(self, sk: str) -> dict[str, dict[str, str]]:
        return {"pk": {"S": self.pk}, "sk": {"S": sk}}

    def load(self, name: str, schema: Any, build: Callable[[Any], R], now: float) -> R | None:
        sk = f"{STATE}#{name}"
        answer = self._call(
            lambda c: c.get_item(TableName=self.table, Key=self._key(sk), ConsistentRead=True)
        )
        item = answer.get("Item")
        if not item:
            return None
        try:
            body = item["body"]["S"]
            return build(_adapter(schema).validate_json(body))
        except ValidationError as e:
            reason = describe(e)
        except Exception as e:  # whatever a hostile item provokes, it must not stop a leader
            reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        raise self._set_aside(name, item, reason[:300], now)

    def _set_aside(
        self, name: str, item: dict[str, Any], reason: str, now: float
    ) -> CorruptStateFile:
        """Copy an unreadable document to `state#<name>.corrupt-<unix time>` for a person, and
        delete it (unless it was rewritten meanwhile): the next save starts it afresh."""
        aside = f"{STATE}#{name}.corrupt-{int(now)}"
        where = self.where(name)
        try:
            copy = {**item, **self._key(aside), dynamo.TTL_ATTRIBUTE: self._expires()}
            self._call(lambda c: c.put_item(TableName=self.table, Item=copy))
            body = item.get("body")
            delete: dict[str, Any] = {"TableName": self.table, "Key": self._key(f"{STATE}#{name}")}
            if body is not None:
                delete["ConditionExpression"] = "#b = :b"
                delete["ExpressionAttributeNames"] = {"#b": "body"}
                delete["ExpressionAttributeValues"] = {":b": body}
            with contextlib.suppress(_Refused):
                self._call(lambda c: _conditional(lambda: c.delete_item(**delete)))
        except StateStoreError as e:
            return CorruptStateFile(
                f"{where}: corrupt state document ({reason}); not set aside: {e}"
            )
        return CorruptStateFile(f"{where}: corrupt state document ({reason}); copied to sk {aside}")

    def save(self, name: str, schema: Any, content: Any, epoch: int | None) -> None:
        if epoch is None:
            raise Fenced(f"{self.where(name)}: not written: this replica does not hold the lease")
        try:
            body = _adapter(schema).dump_json(content)
        except Exception as e:  # pydantic's serialisation errors are not ValueErrors
            raise ValueError(f"{self.where(name)}: cannot be written: {e}") from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ValueError(
                f"{self.where(name)}: not written: the document takes {len(body)} bytes, and a "
                f"DynamoDB item holds at most 400 KB (cutover writes up to {MAX_DOCUMENT_BYTES})"
            )
        put = {
            "Put": {
                "TableName": self.table,
                "Item": {
                    **self._key(f"{STATE}#{name}"),
                    "body": {"S": body.decode()},
                    "epoch": {"N": str(epoch)},
                    "saved_at": {"N": repr(float(self._wall()))},
                    dynamo.TTL_ATTRIBUTE: self._expires(),
                },
                "ConditionExpression": "attribute_not_exists(sk) OR #e <= :e",
                "ExpressionAttributeNames": {"#e": "epoch"},
                "ExpressionAttributeValues": {":e": {"N": str(epoch)}},
            }
        }
        writes = [put] if self._fence is None else [self._fence(epoch), put]
        try:
            self._call(lambda c: _conditional(lambda: c.transact_write_items(TransactItems=writes)))
        except _Refused:
            raise Fenced(
                f"{self.where(name)}: not written under epoch {epoch}: another replica holds "
                "the lease now"
            ) from None

    def _expires(self) -> dict[str, str]:
        return {"N": str(int(self._wall() + EXPIRES_AFTER))}

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        try:
            return fn(self._client.get())
        except _Refused:
            raise
        except Exception as e:
            error = self._client.classify(e)
            raise StateStoreError(error.reason, error.detail, code=error.code) from None


def _conditional(call: Callable[[], Any]) -> Any:
    """`call()`, with a refused condition (or a transaction cancelled on one) as _Refused."""
    try:
        return call()
    except ClientError as e:
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code == "ConditionalCheckFailedException":
            raise _Refused from None
        if code == "TransactionCanceledException":
            reasons = {str(r.get("Code")) for r in e.response.get("CancellationReasons") or []}
            if "ConditionalCheckFailed" in reasons or (
                not reasons and "ConditionalCheckFailed" in str(error.get("Message", ""))
            ):
                raise _Refused from None
        raise


class Document(Generic[T]):
    """One state document as the daemon uses it: loaded and saved through `calls` (inline: at
    once, as state files always were; in a thread: saved in the background)."""

    def __init__(
        self,
        store: DocumentStore,
        name: str,
        schema: Any,
        calls: StoreCalls,
        *,
        what: str,
        on_saved: Callable[[Any], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.schema = schema
        self.what = what  # "alert state": for log lines
        self._calls = calls
        self._on_saved = on_saved
        self.log = logger or logging.getLogger("cutover")
        self._pending: tuple[T, int | None, Any] | None = None  # content, epoch, tag
        self._writing = False
        self._writer: asyncio.Task[None] | None = None
        self._error: str | None = None

    @property
    def where(self) -> str:
        return self.store.where(self.name)

    @property
    def deferred(self) -> bool:
        """Loaded by awaiting `load`, saved in the background: a store called in a thread."""
        return self._calls.deferred

    @property
    def busy(self) -> bool:
        """A save was asked for and has not reached the store yet."""
        return self._pending is not None or self._writing

    def load_now(self, build: Callable[[T], R], now: float) -> R | None:
        """Load from synchronous code: only for a store called inline."""
        if self._calls.deferred:
            raise RuntimeError(f"{self.where} is loaded by awaiting load()")
        return self.store.load(self.name, self.schema, build, now)

    async def load(self, build: Callable[[T], R], now: float) -> R | None:
        """Load through the store's calls; raises as the store does (TimeoutError included)."""
        return await self._calls(lambda: self.store.load(self.name, self.schema, build, now))

    def save(self, content: T, epoch: int | None, tag: Any = None) -> bool:
        """Save `content` (written under `epoch`); True when it is in the store now.

        Inline, the save happens here and a failure is logged (once per distinct error); in
        the background, the latest content is written by a task of this document, `busy` says
        until when, and `on_saved(tag)` is called once it is written (the caller's revision).
        """
        if not self._calls.deferred:
            try:
                self.store.save(self.name, self.schema, content, epoch)
            except Exception as exc:  # whatever it is, the daemon goes on in memory
                self._failed(exc)
                return False
            self._works()
            return True
        # a copy: the caller goes on changing its objects while the worker thread writes
        self._pending = (copy.deepcopy(content), epoch, tag)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._write(), name=f"save-{self.name}"
            )
        return False

    def drop(self) -> None:
        """Forget a save not yet made (this replica no longer acts: it is not its to write)."""
        self._pending = None

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 - the daemon's shutdown budget
        """Wait up to `timeout` for the background save; False if it is still under way."""
        writer = self._writer
        if writer is None or writer.done():
            return self._pending is None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(writer), timeout)
        return not self.busy

    async def aclose(self) -> None:
        """Stop a background save still under way, and the store's calls."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self._calls.close()

    async def _write(self) -> None:
        delay = RETRY_MIN
        while self._pending is not None:
            pending = self._pending
            content, epoch, tag = pending
            self._writing = True
            try:
                await self._calls(
                    functools.partial(self.store.save, self.name, self.schema, content, epoch)
                )
            except Fenced as exc:
                self.log.warning("%s not saved: %s", self.what, exc)
                self._done_with(pending)
                continue
            except ValueError as exc:  # this content can never be written: wait for the next
                self._failed(exc)
                self._done_with(pending)
                continue
            except Exception as exc:  # unreachable, throttled, timed out: the same again later
                self._failed(exc)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            finally:
                self._writing = False
            delay = RETRY_MIN
            self._works()
            self._done_with(pending)
            if self._pending is None and self._on_saved is not None:
                try:
                    self._on_saved(tag)
                except Exception:
                    self.log.exception("after saving %s", self.what)

    def _done_with(self, pending: tuple[T, int | None, Any]) -> None:
        if self._pending is pending:
            self._pending = None

    def _failed(self, exc: BaseException) -> None:
        text = f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
        if text != self._error:
            self.log.error("cannot save %s to %s: %s", self.what, self.where, text)
        self._error = text

    def _works(self) -> None:
        if self._error is not None:
            self.log.info("%s is saved to %s again", self.what, self.where)
            self._error = None
