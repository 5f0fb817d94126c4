"""Talking to Slack: post, edit and reply through the Web API or a webhook; find a copy that an
attempt with a lost answer may have left; classify every failure.

Failures become one exception, `Failure`, whose `kind` says what the outbox does next:

    Failure
      kind "retry"   rate limited, a server error, a timeout, a lost connection: try again later
                     (`retry_after` when Slack said when; `maybe_sent` when Slack may hold it)
      kind "park"    the token, its scopes, the channel or the webhook URL is wrong: wait for a
                     reload that fixes the settings
      kind "reject"  Slack refuses this message (blocks, metadata, a gone message to edit)
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient
from slack_sdk.webhook.webhook_response import WebhookResponse

from exporter.alerting.outbox import MIGRATION_PREFIX, Entry, Sent

__all__ = ["GONE_CODES", "METADATA_CODES", "REASONS", "Failure", "SlackDelivery", "SlackSettings"]

METADATA_EVENT = "cutover_notification"
HISTORY_MARGIN = 120.0  # seconds before a doubtful attempt to search from: clock skew
# Slack asks for seconds to a minute; anything longer is not Slack's rate limiter speaking
MAX_RETRY_AFTER = 120.0

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


class Failure(Exception):
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


def _api_failure(response: Any) -> Failure:
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
        return Failure("retry", "ratelimited", code, retry_after=_header_seconds(headers))
    if status >= 500 or code in TRANSIENT_CODES:
        return Failure("retry", "server_error", code, maybe_sent=True)
    if code in TOKEN_CODES or status in (401, 403):
        return Failure("park", "invalid_auth", code)
    if code in SCOPE_CODES:
        return Failure("park", "missing_scope", code)
    if code in CHANNEL_CODES:
        return Failure("park", CHANNEL_CODES[code], code)
    if not isinstance(error, str):  # no error code: not Slack answering (api_url?)
        return Failure("park", "other", code)
    return Failure("reject", "invalid_message" if code in MESSAGE_CODES else "other", code)


def _webhook_failure(response: WebhookResponse) -> Failure:
    status = response.status_code
    body = (response.body or "").strip()
    code = body if _CODE.match(body) else f"HTTP {status}"
    if status == 429:
        retry_after = _header_seconds(response.headers)
        return Failure("retry", "ratelimited", code, retry_after=retry_after, webhook=True)
    if status >= 500:
        return Failure("retry", "server_error", code, maybe_sent=True, webhook=True)
    if code in WEBHOOK_CHANNEL_CODES:
        return Failure("park", WEBHOOK_CHANNEL_CODES[code], code, webhook=True)
    if code in WEBHOOK_TOKEN_CODES or status in (401, 403, 404, 410):
        return Failure("park", "invalid_auth", code, webhook=True)
    if status == 400 or code in MESSAGE_CODES:
        return Failure("reject", "invalid_message", code, webhook=True)
    return Failure("park", "other", code, webhook=True)  # a redirect, a proxy's page: not Slack


async def _guarded(call: Awaitable[Any], *, webhook: bool = False) -> Any:
    """Await a slack-sdk call; every failure becomes a Failure naming only a code."""
    try:
        return await call
    except SlackApiError as e:
        raise _api_failure(e.response) from None
    except TimeoutError:
        raise Failure("retry", "timeout", "timeout", maybe_sent=True, webhook=webhook) from None
    except aiohttp.ClientConnectorError:
        # never connected: nothing can have been stored
        raise Failure("retry", "connection", "connection refused", webhook=webhook) from None
    except aiohttp.ClientError as e:
        code = f"connection lost ({type(e).__name__})"
        raise Failure("retry", "connection", code, maybe_sent=True, webhook=webhook) from None


class SlackDelivery:
    """Slack for one set of settings: the clients, and what was learnt of this workspace and
    token (its URL, whether it may read history, whether Slack takes message metadata).

    New settings get a new SlackDelivery, so nothing learnt of the old ones carries over.
    """

    def __init__(
        self, settings: SlackSettings, *, timeout: int = 30, logger: logging.Logger | None = None
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        self.log = logger or logging.getLogger("cutover.slack")
        # slack-sdk logs whole requests at DEBUG, the webhook URL among them
        sdk_log = logging.getLogger("slack_sdk")
        sdk_log.setLevel(max(logging.INFO, sdk_log.getEffectiveLevel()))
        # the workspace's URL (auth.test's `url`), for links to messages: asked once per token
        # (None: not asked yet; "": asked, and Slack did not say)
        self.workspace: str | None = None
        self.history_off = False  # the token may not read history: re-send doubtful messages
        self.metadata_off = False  # Slack refused message metadata: keys are not attached
        self._web: AsyncWebClient | None = None
        self._hook: AsyncWebhookClient | None = None

    async def send(
        self,
        entry: Entry,
        *,
        claim: Callable[[], Awaitable[None]] | None = None,
        thread: tuple[str, str] | None = None,
        channel_id: str | None = None,
    ) -> Sent | None:
        """One attempt at `entry`; raises Failure. The top-level message it made or found, if any.

        `claim` is awaited right before a message that may land goes out (whatever it raises
        ends the attempt before anything is sent); without it (a test message) nothing is
        recorded: no look-up, no metadata, no message learnt. `thread` is the incident's message
        and `channel_id` the configured channel's known id.
        """
        record = claim is not None
        if self.settings.webhook_url is not None:
            await self._send_webhook(entry, claim)
            return None
        client = self._web_client()
        n = entry.n
        text = n.text
        blocks = None if entry.plain or n.blocks is None else [dict(b) for b in n.blocks]
        if n.action == "edit" and thread is not None and not entry.repost:
            # without blocks Slack would keep the old ones: an empty list removes them
            await _guarded(
                client.chat_update(channel=thread[0], ts=thread[1], text=text, blocks=blocks or [])
            )
            return None
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
            target, thread_ts = self.settings.channel or "", None
        found = None
        if record:
            found = await self._find_copy(client, entry, target, thread_ts, channel_id)
        if found is None:
            if claim is not None:
                # in flight: after a crash from here on, the message may or may not be in Slack
                await claim()
            metadata = None
            if record and not entry.plain and not self.metadata_off:
                metadata = {"event_type": METADATA_EVENT, "event_payload": {"key": n.key}}
            response = await _guarded(
                client.chat_postMessage(
                    channel=target, text=text, blocks=blocks, thread_ts=thread_ts, metadata=metadata
                )
            )
            found = (str(response["channel"]), str(response["ts"]))
        if not record or thread_ts is not None:
            return None
        return Sent(target, found[0], found[1], thread=n.action != "reply" or opens)

    async def _send_webhook(
        self, entry: Entry, claim: Callable[[], Awaitable[None]] | None
    ) -> None:
        if self._hook is None:
            self._hook = AsyncWebhookClient(
                self.settings.webhook_url or "", timeout=self.timeout, retry_handlers=[]
            )
        n = entry.n
        blocks = None if entry.plain or n.blocks is None else [dict(b) for b in n.blocks]
        if claim is not None:
            await claim()
        response = await _guarded(self._hook.send(text=n.text, blocks=blocks), webhook=True)
        if response.status_code != 200:
            raise _webhook_failure(response)

    def _web_client(self) -> AsyncWebClient:
        if self._web is None:
            base_url = self.settings.api_url or "https://slack.com/api/"
            # no retry handlers: slack-sdk would re-send a post after a lost answer blindly, and
            # hide the failed attempt from the failure counter; the outbox retries instead
            self._web = AsyncWebClient(
                token=self.settings.token,
                base_url=base_url.rstrip("/") + "/",
                timeout=self.timeout,
                retry_handlers=[],
            )
        return self._web

    async def _find_copy(
        self,
        client: AsyncWebClient,
        entry: Entry,
        target: str,
        thread_ts: str | None,
        channel_id: str | None,
    ) -> tuple[str, str] | None:
        """The message an earlier attempt may have left in Slack, found by its metadata key."""
        if entry.unsure_since is None or entry.plain or self.history_off or self.metadata_off:
            return None
        channel = target if thread_ts is not None else channel_id
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
        except Failure as f:
            if f.kind == "retry" or f.reason == "invalid_auth":
                f.maybe_sent = False
                raise
            if f.reason == "missing_scope":
                self.history_off = True
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

    async def learn_workspace(self) -> None:
        """Ask Slack the workspace's URL once for this token; a failure only means no links."""
        if self.workspace is not None or self.settings.token is None:
            return
        self.workspace = ""
        try:
            response = await self._web_client().auth_test()
            url = response.get("url")
        except Exception as e:  # no link is all a failure costs
            self.log.debug("Slack auth.test failed (%s): no links to messages", type(e).__name__)
            return
        if isinstance(url, str) and url.startswith("https://"):
            self.workspace = url if url.endswith("/") else url + "/"

    def permalink(self, channel: str, ts: str) -> str | None:
        """A link to a message, once the workspace is known."""
        if not self.workspace:
            return None
        return f"{self.workspace}archives/{channel}/p{ts.replace('.', '')}"

    def problem(self, f: Failure) -> str:
        """One sentence: what Slack refused and what to change."""
        s = self.settings
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
