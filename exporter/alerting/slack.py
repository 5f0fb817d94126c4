"""Slack delivery from a persisted outbox: in order, retried; at-least-once if an answer is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient
from slack_sdk.webhook.webhook_response import WebhookResponse

from exporter.alerting.outbox import (
    ACTIONS,
    MIGRATION_PREFIX,
    OUTBOX_VERSION,
    Notification,
    OutboxRecord,
    QueuedRecord,
)
from exporter.errors import CorruptStateFile, SlackError
from exporter.store.local import StateFile

__all__ = ["Notification", "Notifier", "SlackError", "SlackSettings"]

OUTBOX_FILE = "slack-outbox.json"
KEEP_DONE = 1000  # delivered keys remembered, so that re-enqueueing an old one stays a no-op
KEEP_THREADS = 1000  # incidents whose message can still be edited or replied to
METADATA_EVENT = "cutover_notification"
HISTORY_MARGIN = 120.0
# Slack asks for seconds to a minute; anything longer is not Slack's rate limiter speaking
MAX_RETRY_AFTER = 120.0  # seconds before a doubtful attempt to search from: clock skew

# Slack error codes by what they mean for the outbox (metric reason in the dict values)
TOKEN_CODES = frozenset({
    "invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
    "team_disabled", "two_factor_setup_required", "org_login_required", "enterprise_is_restricted",
})  # fmt: skip
SCOPE_CODES = frozenset({
    "missing_scope", "not_allowed_token_type", "no_permission", "ekm_access_denied",
    "team_access_not_granted", "access_denied",
})  # fmt: skip
CHANNEL_CODES = {
    "channel_not_found": "channel_not_found",
    "not_in_channel": "not_in_channel",
    "is_archived": "is_archived",
    "restricted_action": "not_in_channel",
    "restricted_action_read_only_channel": "not_in_channel",
    "restricted_action_thread_only_channel": "not_in_channel",
}
TRANSIENT_CODES = frozenset({
    "ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
    "request_timeout", "team_added_to_org",
})  # fmt: skip
MESSAGE_CODES = frozenset({
    "invalid_blocks", "invalid_blocks_format", "msg_too_long", "no_text", "too_many_attachments",
    "invalid_arguments", "invalid_attachments", "invalid_metadata_format",
    "invalid_metadata_schema", "metadata_too_large", "metadata_must_be_sent_from_app",
    "message_not_found", "cant_update_message", "edit_window_closed", "invalid_payload",
    "restricted_action_non_threadable_channel", "thread_not_found", "duplicate_message_not_found",
})  # fmt: skip
# the metadata was refused, not the message: send without it from now on
METADATA_CODES = frozenset({
    "invalid_metadata_format", "invalid_metadata_schema", "metadata_too_large",
    "metadata_must_be_sent_from_app",
})  # fmt: skip
# an edit whose message is gone is posted as a new message instead
GONE_CODES = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
WEBHOOK_TOKEN_CODES = frozenset({
    "invalid_token", "no_service", "no_service_id", "no_team", "team_disabled", "action_prohibited",
})  # fmt: skip
WEBHOOK_CHANNEL_CODES = {
    "channel_not_found": "channel_not_found",
    "user_not_found": "channel_not_found",
    "channel_is_archived": "is_archived",
    "posting_to_general_channel_denied": "not_in_channel",
}
REASONS = (
    "ratelimited", "server_error", "connection", "timeout", "invalid_auth", "missing_scope",
    "channel_not_found", "not_in_channel", "is_archived", "invalid_message", "other",
)  # fmt: skip
_CODE = re.compile(r"^[a-z0-9_]{1,64}$")


@dataclass(frozen=True)
class SlackSettings:
    """Where messages go: exactly one of a bot token (with its channel) and a webhook URL."""

    token: str | None = field(default=None, repr=False)
    webhook_url: str | None = field(default=None, repr=False)
    channel: str | None = None
    api_url: str | None = None
    state_dir: str | None = None

    def __post_init__(self) -> None:
        if (self.token is None) == (self.webhook_url is None):
            raise ValueError("SlackSettings: set exactly one of token and webhook_url")
        if self.token is not None and not self.channel:
            raise ValueError("SlackSettings: a channel is required with a token")

    @property
    def label(self) -> str:
        """The `channel` label of the metrics: never the URL, which is a secret."""
        if self.token is None:
            return "webhook"
        return self.channel or ""


class _Failure(Exception):
    """One failed attempt, classified: retry later, park the outbox, or reject this message."""

    def __init__(
        self,
        kind: Literal["retry", "park", "reject"],
        reason: str,
        code: str,
        *,
        retry_after: float | None = None,
        maybe_sent: bool = False,
        webhook: bool = False,
    ) -> None:
        super().__init__(code)
        self.kind = kind
        self.reason = reason
        self.code = code
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent  # Slack may have stored the message anyway
        self.webhook = webhook


@dataclass
class _Entry:
    n: Notification
    plain: bool = False  # Slack refused it once: text only from now on
    repost: bool = False  # an edit whose message is gone: post it instead
    unsure_since: float | None = None  # an attempt since then may have reached Slack
    warned: bool = False

    def record(self) -> QueuedRecord:
        n = self.n
        return QueuedRecord(
            key=n.key,
            incident=n.incident,
            action=n.action,
            text=n.text,
            blocks=None if n.blocks is None else [dict(b) for b in n.blocks],
            created=n.created,
            plain=self.plain,
            repost=self.repost,
            unsure_since=self.unsure_since,
        )

    @classmethod
    def of(cls, record: QueuedRecord) -> _Entry:
        return cls(
            n=record.notification,
            plain=record.plain,
            repost=record.repost,
            unsure_since=record.unsure_since,
        )


def _header_seconds(headers: Any) -> float | None:
    """Retry-After in seconds, capped at MAX_RETRY_AFTER; None when absent or not a number."""
    try:
        value = headers.get("Retry-After") if headers is not None else None
        seconds = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    if seconds is None or math.isnan(seconds):
        return None
    # a proxy's "come back tomorrow" must not hold a firing alert for a day
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def _api_failure(response: Any) -> _Failure:
    """Classify a Web API answer that was not ok. Only the error code is kept: never the request."""
    # usually an AsyncSlackResponse; an aiohttp response when the body was not JSON
    status = getattr(response, "status_code", None) or getattr(response, "status", None)
    if not isinstance(status, int):
        status = 0
    data = getattr(response, "data", None)
    error = data.get("error") if isinstance(data, dict) else None
    code = error if isinstance(error, str) and _CODE.match(error) else f"HTTP {status}"
    headers = getattr(response, "headers", None)
    if status == 429 or code in ("ratelimited", "rate_limited"):
        return _Failure("retry", "ratelimited", code, retry_after=_header_seconds(headers))
    if status >= 500 or code in TRANSIENT_CODES:
        return _Failure("retry", "server_error", code, maybe_sent=True)
    if code in TOKEN_CODES or status in (401, 403):
        return _Failure("park", "invalid_auth", code)
    if code in SCOPE_CODES:
        return _Failure("park", "missing_scope", code)
    if code in CHANNEL_CODES:
        return _Failure("park", CHANNEL_CODES[code], code)
    if not isinstance(error, str):  # no error code: not Slack answering (api_url?)
        return _Failure("park", "other", code)
    return _Failure("reject", "invalid_message" if code in MESSAGE_CODES else "other", code)


def _webhook_failure(response: WebhookResponse) -> _Failure:
    status = response.status_code
    body = (response.body or "").strip()
    code = body if _CODE.match(body) else f"HTTP {status}"
    if status == 429:
        retry_after = _header_seconds(response.headers)
        return _Failure("retry", "ratelimited", code, retry_after=retry_after, webhook=True)
    if status >= 500:
        return _Failure("retry", "server_error", code, maybe_sent=True, webhook=True)
    if code in WEBHOOK_CHANNEL_CODES:
        return _Failure("park", WEBHOOK_CHANNEL_CODES[code], code, webhook=True)
    if code in WEBHOOK_TOKEN_CODES or status in (401, 403, 404, 410):
        return _Failure("park", "invalid_auth", code, webhook=True)
    if status == 400 or code in MESSAGE_CODES:
        return _Failure("reject", "invalid_message", code, webhook=True)
    return _Failure("park", "other", code, webhook=True)  # a redirect, a proxy's page: not Slack


async def _guarded(call: Awaitable[Any], *, webhook: bool = False) -> Any:
    """Await a slack-sdk call; every failure becomes a _Failure naming only a code."""
    try:
        return await call
    except SlackApiError as e:
        raise _api_failure(e.response) from None
    except TimeoutError:
        raise _Failure("retry", "timeout", "timeout", maybe_sent=True, webhook=webhook) from None
    except aiohttp.ClientConnectorError:
        # never connected: nothing can have been stored
        raise _Failure("retry", "connection", "connection refused", webhook=webhook) from None
    except aiohttp.ClientError as e:
        code = f"connection lost ({type(e).__name__})"
        raise _Failure("retry", "connection", code, maybe_sent=True, webhook=webhook) from None


class Notifier:
    """The outbox and its delivery loop: `enqueue` from the event loop, `run` as one task.

    Every notification is delivered, or dropped with an error log only when Slack refuses it
    even as plain text. Nothing is sent twice, across restarts too, except in one window: Slack
    stored a message but its answer never arrived (a crash in that millisecond, a reset
    connection, a timeout). Such a message is sent again (at-least-once) unless the token may
    read the channel (channels:history / groups:history): each new message carries its key as
    message metadata, and before sending a doubtful one again the notifier looks for that key in
    the channel or thread. Edits are idempotent and simply repeated.
    """

    def __init__(
        self,
        settings: SlackSettings,
        *,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
        min_interval: float = 1.0,
        max_backoff: float = 60.0,
        min_backoff: float = 1.0,
        timeout: int = 30,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self.log = logger or logging.getLogger("cutover.slack")
        self.min_interval = min_interval
        self.max_backoff = max_backoff
        self.min_backoff = min_backoff
        self.timeout = timeout
        # slack-sdk logs whole requests at DEBUG, the webhook URL among them
        sdk_log = logging.getLogger("slack_sdk")
        sdk_log.setLevel(max(logging.INFO, sdk_log.getEffectiveLevel()))

        self._queue: list[_Entry] = []
        self._done: dict[str, None] = {}  # insertion-ordered set of finished keys
        self._threads: dict[str, tuple[str, str]] = {}
        self._channel_ids: dict[str, str] = {}  # configured channel name -> id Slack answered
        # the workspace's URL (auth.test's `url`), for links to messages: asked once per token
        # (None: not asked yet; "": asked, and Slack did not say)
        self._workspace: str | None = None
        self._parked: _Failure | None = None
        self._history_off = False  # the token may not read history: re-send doubtful messages
        self._metadata_off = False  # Slack refused message metadata: keys are not attached
        self._generation = 0  # bumped by update_settings: a failure of older settings is stale
        self._streak = 0  # failed attempts since the last success
        self._next_send = 0.0  # loop time before which no message goes out
        self._save_failing = False
        self._running = False
        self._wake = asyncio.Event()  # something to deliver, or settings changed
        self._reset = asyncio.Event()  # settings changed: cut a backoff short
        self._changed = asyncio.Event()  # the queue shrank or the outbox parked: for flush()
        self._web: AsyncWebClient | None = None
        self._file: StateFile[OutboxRecord] | None = None
        self._bind_file()
        self._hook: AsyncWebhookClient | None = None

        self._delivered = Counter(
            "cutover_notifications",
            "Slack notifications delivered",
            ["channel"],
            registry=registry,
        )
        self._failures = Counter(
            "cutover_notification_failures",
            "Failed attempts to deliver a Slack notification, by reason",
            ["channel", "reason"],
            registry=registry,
        )
        self._pending = Gauge(
            "cutover_notifications_pending",
            "Slack notifications not yet delivered",
            ["channel"],
            registry=registry,
        )
        self._init_series()
        self._load()
        self._pending.labels(self._label).set(len(self._queue))

    # --- public interface

    def enqueue(self, n: Notification, *, doubtful: bool = False) -> bool:
        """Queue `n` and save the outbox; False (and nothing done) if its key was seen before.

        `doubtful`: `n` may have reached Slack already (it comes back from before a crash), so
        it is looked for by its key before it is sent, like a message whose answer was lost.
        """
        if n.action not in ACTIONS:
            raise ValueError(f"notification {n.key}: unknown action {n.action!r}")
        if n.key in self._done or any(e.n.key == n.key for e in self._queue):
            return False
        if not n.created:
            n = replace(n, created=self._clock())
        entry = _Entry(n, unsure_since=n.created if doubtful else None)
        if n.blocks is not None:
            json.dumps(n.blocks)  # blocks that cannot be saved fail here, not in the loop
        self._queue.append(entry)
        self._save()
        self._wake.set()
        return True

    def accept(self, n: Notification, *, doubtful: bool = False) -> bool:
        """Queue `n` (idempotently, like `enqueue`); True once the outbox file holds it.

        False while the outbox cannot be saved: whoever owes `n` keeps it and asks again.
        """
        self.enqueue(n, doubtful=doubtful)
        return not self._save_failing

    async def run(self) -> None:
        """Deliver the outbox, oldest first, until cancelled."""
        if self._running:
            raise RuntimeError("Notifier.run is already running")
        self._running = True
        try:
            if self._threads:
                await self._learn_workspace()  # links to the messages of earlier runs
            while True:
                if not self._queue or self._parked is not None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._pace()
                if not self._queue or self._parked is not None:
                    continue
                await self._attempt(self._queue[0])
        finally:
            self._running = False

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 - the daemon's shutdown budget
        """Wait until the outbox is empty (True), or parked or `timeout` passed (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queue:
            remaining = deadline - loop.time()
            if self._parked is not None or remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def pending(self) -> int:
        return len(self._queue)

    def thread_of(self, incident: str) -> tuple[str, str] | None:
        """(channel id, ts) of the incident's message, once Slack has it."""
        return self._threads.get(incident)

    def permalink(self, incident: str) -> str | None:
        """A link to the incident's first message, once both it and the workspace are known."""
        thread = self._threads.get(incident)
        if not self._workspace or thread is None:
            return None
        channel, ts = thread
        return f"{self._workspace}archives/{channel}/p{ts.replace('.', '')}"

    async def _learn_workspace(self) -> None:
        """Ask Slack the workspace's URL once for this token; a failure only means no links."""
        if self._workspace is not None or self._settings.token is None:
            return
        self._workspace = ""
        try:
            response = await self._web_client().auth_test()
            url = response.get("url")
        except Exception as e:  # no link is all a failure costs
            self.log.debug("Slack auth.test failed (%s): no links to messages", type(e).__name__)
            return
        if isinstance(url, str) and url.startswith("https://"):
            self._workspace = url if url.endswith("/") else url + "/"

    @property
    def settings(self) -> SlackSettings:
        return self._settings

    def update_settings(self, settings: SlackSettings) -> None:
        """Use new settings from now on; a parked outbox resumes (the fix may be on Slack's side).

        The same settings again only resume a parked outbox (a channel created or the app
        invited since): a reload that leaves Slack alone must not cut a Retry-After short.
        """
        if settings == self._settings:
            if self._parked is not None:
                self._resume()
            return
        old_label = self._label
        self._settings = settings
        self._bind_file()
        self._web = self._hook = None
        self._workspace = None
        self._generation += 1
        self._streak = 0
        self._history_off = self._metadata_off = False
        if old_label != self._label:
            with contextlib.suppress(KeyError):
                self._pending.remove(old_label)
            self._init_series()
        self._resume()
        self._reset.set()

    def _resume(self) -> None:
        if self._parked is not None and self._queue:
            self.log.info(
                "Slack settings reloaded: resuming delivery of %d notification(s)", len(self._queue)
            )
        self._parked = None
        self._save()
        self._wake.set()

    async def send_test(self, text: str) -> None:
        """Post `text` once, now, outside the outbox; raise SlackError saying what to fix."""
        entry = _Entry(Notification(key="", incident="", action="post", text=text), plain=True)
        for attempt in range(3):
            await self._pace()
            try:
                await self._send(entry, record=False)
            except _Failure as f:
                self._next_send = asyncio.get_running_loop().time() + self.min_interval
                self._failures.labels(self._label, f.reason).inc()
                if f.kind == "retry" and attempt < 2:
                    await asyncio.sleep(f.retry_after or self.min_backoff * 2**attempt)
                    continue
                raise SlackError(self._problem(f)) from None
            self._next_send = asyncio.get_running_loop().time() + self.min_interval
            self._delivered.labels(self._label).inc()
            return

    async def aclose(self) -> None:
        """Save the outbox one last time; slack-sdk opens a session per request, none to close."""
        self._save()

    # --- delivery

    @property
    def _label(self) -> str:
        return self._settings.label

    def _init_series(self) -> None:
        # every series exists from the start, so that rate() and alerts see zeros, not gaps
        self._delivered.labels(self._label)
        for reason in REASONS:
            self._failures.labels(self._label, reason)
        self._pending.labels(self._label).set(len(self._queue))

    async def _pace(self) -> None:
        # one loop sends everything in order, so spacing every send keeps each channel under
        # Slack's one message per second
        delay = self._next_send - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _attempt(self, entry: _Entry) -> None:
        generation = self._generation
        unsure_before = entry.unsure_since
        try:
            try:
                await self._send(entry, record=True)
            except (_Failure, asyncio.CancelledError):
                raise
            except Exception as e:
                # a surprise from slack-sdk must not end delivery: count it and retry later
                code = f"unexpected {type(e).__name__}"
                raise _Failure("retry", "other", code, maybe_sent=True) from None
        except _Failure as f:
            self._next_send = asyncio.get_running_loop().time() + self.min_interval
            self._failures.labels(self._label, f.reason).inc()
            if not f.maybe_sent:
                entry.unsure_since = unsure_before
            if generation != self._generation:
                self._save()  # the settings changed meanwhile: try again with the new ones
            elif f.kind == "park":
                self._park(f)
            elif f.kind == "reject":
                self._reject(entry, f)
            else:
                await self._backoff(f)
            return
        self._next_send = asyncio.get_running_loop().time() + self.min_interval
        self._delivered.labels(self._label).inc()
        if self._streak:
            self.log.info("Slack delivery works again after %d failed attempt(s)", self._streak)
            self._streak = 0
        self._finish(entry)
        if self._workspace is None and entry.n.action == "post":
            await self._learn_workspace()

    def _finish(self, entry: _Entry) -> None:
        self._queue.remove(entry)
        self._done[entry.n.key] = None
        while len(self._done) > KEEP_DONE:
            del self._done[next(iter(self._done))]
        self._save()
        self._changed.set()

    def _park(self, f: _Failure) -> None:
        self._parked = f
        self.log.error(
            "%s; %d notification(s) are kept and will be sent after a reload (SIGHUP or "
            "POST /-/reload) once this is fixed",
            self._problem(f),
            len(self._queue),
        )
        self._save()
        self._changed.set()

    def _reject(self, entry: _Entry, f: _Failure) -> None:
        n = entry.n
        if f.code in METADATA_CODES and not self._metadata_off:
            self.log.warning(
                "Slack refused message metadata (%s): sending without it, so a message whose "
                "delivery is unknown cannot be looked for and is sent again",
                f.code,
            )
            self._metadata_off = True
        elif n.action == "edit" and f.code in GONE_CODES and not entry.repost:
            self.log.warning(
                "Slack cannot edit the message of incident %s (%s): posting notification %s as a new message",
                n.incident,
                f.code,
                n.key,
            )
            entry.repost = True
            self._save()
        elif not entry.plain:
            self.log.warning(
                "Slack refused notification %s (%s): sending it again as plain text", n.key, f.code
            )
            entry.plain = True
            self._save()
        else:
            # the one case a message is given up: a malformed one must not block all later ones
            self.log.error(
                "Slack refused notification %s again (%s), even as plain text: dropped it. Its text: %s",
                n.key,
                f.code,
                n.text[:300],
            )
            self._finish(entry)

    async def _backoff(self, f: _Failure) -> None:
        self._streak += 1
        generation = self._generation
        if f.retry_after is not None:
            # Slack said when: earlier only earns another 429
            delay = f.retry_after * random.uniform(1.0, 1.1) or self.min_backoff
        else:
            ceiling = min(self.max_backoff, self.min_backoff * 2 ** min(self._streak - 1, 30))
            delay = random.uniform(ceiling / 2, ceiling)
        # a long outage says so now and then, not at every attempt
        level = logging.WARNING if self._streak == 1 or self._streak % 20 == 0 else logging.DEBUG
        self.log.log(
            level,
            "Slack delivery failed (%s: %s, attempt %d); retrying in %.1f s, %d notification(s) waiting",
            f.reason,
            f.code,
            self._streak,
            delay,
            len(self._queue),
        )
        self._save()
        if generation != self._generation:
            return
        self._reset.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reset.wait(), delay)

    async def _send(self, entry: _Entry, *, record: bool) -> None:
        """One attempt at `entry`; raises _Failure."""
        if self._settings.webhook_url is not None:
            await self._send_webhook(entry, record=record)
            return
        client = self._web_client()
        n = entry.n
        text = n.text
        blocks = None if entry.plain or n.blocks is None else [dict(b) for b in n.blocks]
        thread = self._threads.get(n.incident) if record else None
        if n.action == "edit" and thread is not None and not entry.repost:
            # without blocks Slack would keep the old ones: an empty list removes them
            await _guarded(
                client.chat_update(channel=thread[0], ts=thread[1], text=text, blocks=blocks or [])
            )
            return
        # a migration's thread is opened by its first message, whatever that is
        opens = n.action == "reply" and n.incident.startswith(MIGRATION_PREFIX)
        if n.action == "reply" and thread is not None:
            target, thread_ts = thread
        else:
            if n.action != "post" and not opens and not entry.repost and not entry.warned:
                self.log.warning(
                    "no Slack message is known for incident %s: posting notification %s (%s) as a new message",
                    n.incident,
                    n.key,
                    n.action,
                )
                entry.warned = True
            target, thread_ts = self._settings.channel or "", None
        found = await self._find_copy(client, entry, target, thread_ts) if record else None
        if found is None:
            if record:
                # in flight: after a crash from here on, the message may or may not be in Slack
                entry.unsure_since = entry.unsure_since or time.time()
                self._save()
            metadata = None
            if record and not entry.plain and not self._metadata_off:
                metadata = {"event_type": METADATA_EVENT, "event_payload": {"key": n.key}}
            response = await _guarded(
                client.chat_postMessage(
                    channel=target, text=text, blocks=blocks, thread_ts=thread_ts, metadata=metadata
                )
            )
            found = (str(response["channel"]), str(response["ts"]))
        if record and thread_ts is None:
            if target == self._settings.channel:
                self._channel_ids[target] = found[0]
            if n.action != "reply" or opens:
                self._threads.pop(n.incident, None)
                self._threads[n.incident] = found
                while len(self._threads) > KEEP_THREADS:
                    del self._threads[next(iter(self._threads))]

    async def _send_webhook(self, entry: _Entry, *, record: bool) -> None:
        if self._hook is None:
            self._hook = AsyncWebhookClient(
                self._settings.webhook_url or "", timeout=self.timeout, retry_handlers=[]
            )
        n = entry.n
        blocks = None if entry.plain or n.blocks is None else [dict(b) for b in n.blocks]
        if record:
            entry.unsure_since = entry.unsure_since or time.time()
            self._save()
        response = await _guarded(self._hook.send(text=n.text, blocks=blocks), webhook=True)
        if response.status_code != 200:
            raise _webhook_failure(response)

    def _web_client(self) -> AsyncWebClient:
        if self._web is None:
            base_url = self._settings.api_url or "https://slack.com/api/"
            # no retry handlers: slack-sdk would re-send a post after a lost answer blindly, and
            # hide the failed attempt from the failure counter; _attempt retries instead
            self._web = AsyncWebClient(
                token=self._settings.token,
                base_url=base_url.rstrip("/") + "/",
                timeout=self.timeout,
                retry_handlers=[],
            )
        return self._web

    async def _find_copy(
        self, client: AsyncWebClient, entry: _Entry, target: str, thread_ts: str | None
    ) -> tuple[str, str] | None:
        """The message an earlier attempt may have left in Slack, found by its metadata key."""
        if entry.unsure_since is None or entry.plain or self._history_off or self._metadata_off:
            return None
        channel = target if thread_ts is not None else self._channel_ids.get(target)
        if channel is None and re.fullmatch(r"[CGD][A-Z0-9]{6,}", target):
            channel = target
        if channel is None:
            return None  # never posted there, so no id to search
        oldest = f"{entry.unsure_since - HISTORY_MARGIN:.6f}"
        try:
            if thread_ts is None:
                call = client.conversations_history(
                    channel=channel, oldest=oldest, include_all_metadata=True, limit=200
                )
            else:
                call = client.conversations_replies(
                    channel=channel,
                    ts=thread_ts,
                    oldest=oldest,
                    include_all_metadata=True,
                    limit=200,
                )
            response = await _guarded(call)
        except _Failure as f:
            if f.kind == "retry" or f.reason == "invalid_auth":
                f.maybe_sent = False
                raise
            if f.reason == "missing_scope":
                self._history_off = True
                self.log.info(
                    "Slack does not let this token read the channel (%s; it needs channels:history "
                    "or groups:history), so a notification whose delivery is unknown is sent again "
                    "and may appear twice",
                    f.code,
                )
            return None
        for message in response.get("messages") or []:
            meta = message.get("metadata") if isinstance(message, dict) else None
            payload = meta.get("event_payload") if isinstance(meta, dict) else None
            if (
                isinstance(payload, dict)
                and meta is not None
                and meta.get("event_type") == METADATA_EVENT
                and payload.get("key") == entry.n.key
            ):
                self.log.info(
                    "notification %s was already in Slack (an earlier attempt landed): not sent again",
                    entry.n.key,
                )
                return channel, str(message["ts"])
        return None

    def _problem(self, f: _Failure) -> str:
        """One sentence: what Slack refused and what to change."""
        s = self._settings
        if f.webhook:
            if f.reason in ("channel_not_found", "is_archived", "not_in_channel"):
                return (
                    f"Slack cannot post through the webhook ({f.code}): its channel is gone, "
                    "archived or closed to it; create a new webhook and set alerting.slack.webhook_url"
                )
            if f.kind == "park":
                return (
                    f"Slack rejected the webhook URL ({f.code}): check alerting.slack.webhook_url "
                    "(the webhook may have been removed or its app uninstalled)"
                )
            return f"Slack refused the message through the webhook ({f.reason}: {f.code})"
        if f.reason == "invalid_auth":
            return f"Slack rejected the token ({f.code}): check alerting.slack.token (a bot token, xoxb-...)"
        if f.reason == "missing_scope":
            return (
                f"Slack refused the token's permissions ({f.code}): the app needs the chat:write "
                "scope; add it, reinstall the app and set its bot token in alerting.slack.token"
            )
        if f.reason == "channel_not_found":
            return (
                f"Slack cannot find channel {s.channel} ({f.code}): check alerting.slack.channel "
                "(a private channel must invite the app first)"
            )
        if f.reason == "not_in_channel":
            return (
                f"The Slack app may not post in {s.channel} ({f.code}): invite it there "
                "(/invite @app) or give it the chat:write.public scope"
            )
        if f.reason == "is_archived":
            return f"Slack channel {s.channel} is archived ({f.code}): unarchive it or set another alerting.slack.channel"
        if f.kind == "park":
            return f"The Slack API answered {f.code}: check alerting.slack.api_url (empty for Slack itself)"
        return f"Slack refused the message ({f.reason}: {f.code})"

    # --- persistence

    def _bind_file(self) -> None:
        d = self._settings.state_dir
        path = Path(d) / OUTBOX_FILE if d else None
        if path != (self._file.path if self._file is not None else None):
            self._file = StateFile(path, OutboxRecord) if path is not None else None

    def _save(self) -> None:
        self._pending.labels(self._label).set(len(self._queue))
        file = self._file
        if file is None:
            return
        state = OutboxRecord(
            version=OUTBOX_VERSION,
            queue=[e.record() for e in self._queue],
            threads=dict(self._threads),
            channels=dict(self._channel_ids),
            done=list(self._done),
        )
        try:
            file.path.parent.mkdir(parents=True, exist_ok=True)
            file.save(state)
        except (OSError, ValueError) as e:
            if not self._save_failing:
                self.log.error(
                    "cannot save the Slack outbox to %s (%s): notifications are kept in memory only "
                    "and a restart would lose them",
                    file.path,
                    getattr(e, "strerror", None) or e,
                )
            self._save_failing = True
            return
        if self._save_failing:
            self.log.info("the Slack outbox is saved to %s again", file.path)
            self._save_failing = False

    def _load(self) -> None:
        file = self._file
        if file is None:
            return
        try:
            state = file.load(lambda record: record, now=self._clock())
        except CorruptStateFile as e:
            self.log.error(
                "the Slack outbox is unreadable: %s; started empty: notifications queued before "
                "are lost and an old one may be sent again",
                e,
            )
            return
        if state is None:
            return
        self._queue = [_Entry.of(r) for r in state.queue]
        self._threads = dict(state.threads)
        self._channel_ids = dict(state.channels)
        self._done = dict.fromkeys(state.done)
        queue, path = self._queue, file.path
        if queue:
            self.log.info("loaded %d undelivered Slack notification(s) from %s", len(queue), path)
