"""A local stand-in for Slack's Web API and an incoming webhook: records calls, answers faults.

    standin = SlackStandIn(token="xoxb-test")        # channels: {"#alerts": "C0123"}
    await standin.start()
    AsyncWebClient(token="xoxb-test", base_url=standin.url)   # or api_url in cutover's config
    AsyncWebhookClient(standin.webhook_url)
    standin.fail_next("ratelimited", 2)   # the next 2 message calls answer 429 + Retry-After
    standin.top_level(), standin.replies(ts), standin.message_calls()
    standin.url_as("replica-a")      # the same Slack; each call it gets is marked with the caller
    await standin.stop()

Faults (`fail_next`), applied in order to message calls (chat.postMessage, chat.update, webhook):
`ratelimited` (429 + Retry-After), `server_error` (500 with an HTML body, as Slack's edge answers),
`drop` (the connection is reset before the message is stored), `drop_after` (stored, then reset:
the client cannot know it landed), `hang` (no answer for `hang_seconds`, nothing stored),
`hang_after` (stored, then no answer: a sender that dies now cannot know it landed), or any
Slack error code (`channel_not_found`, `invalid_blocks`, ...) answered as {"ok": false}; `ok` in the
list answers that call normally, to aim a later fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# what auth.test answers as the workspace's URL (links to messages start with it)
WORKSPACE_URL = "https://standin.slack.test/"
MESSAGE_METHODS = ("chat.postMessage", "chat.update", "webhook")
# the webhook answers Slack documents for these codes
WEBHOOK_STATUS = {
    "invalid_payload": 400,
    "invalid_blocks": 400,
    "no_text": 400,
    "invalid_token": 403,
    "action_prohibited": 403,
    "no_service": 404,
    "channel_not_found": 404,
    "channel_is_archived": 410,
}


@dataclass
class Call:
    """One request as the stand-in saw it."""

    method: str  # "chat.postMessage", "chat.update", "conversations.history", "webhook", ...
    at: float  # time.monotonic() on arrival
    answer: str = "ok"  # "ok", a fault or the error code answered
    channel: str | None = None  # as the client sent it (a name or an id)
    ts: str | None = None  # the ts answered (post) or edited (update)
    thread_ts: str | None = None
    text: str | None = None
    blocks: list[Any] | None = None
    metadata: dict[str, Any] | None = None
    caller: str | None = None  # the name in a base_url from url_as(name), else None


@dataclass
class Message:
    """A message as the channel shows it now (edits applied)."""

    channel: str
    ts: str
    text: str | None
    blocks: list[Any] | None
    thread_ts: str | None = None
    metadata: dict[str, Any] | None = None
    edits: int = 0


@dataclass
class SlackStandIn:
    token: str = "xoxb-standin-token"
    channels: dict[str, str] = field(default_factory=lambda: {"#alerts": "C0123"})
    retry_after: int = 1
    hang_seconds: float = 5.0
    history_scope: bool = True  # False: conversations.history/replies answer missing_scope
    # auth.test's `url`, the workspace's (None: answered without one, as an odd Slack might)
    url_for_auth_test: str | None = WORKSPACE_URL
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, Message] = field(default_factory=dict)  # ts -> message, in post order
    faults: list[str] = field(default_factory=list)
    webhook_path: str = field(
        default_factory=lambda: "/services/T0000/B0000/" + secrets.token_hex(12)
    )
    port: int = 0
    _runner: web.AppRunner | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _last_ts: float = 0.0

    @property
    def url(self) -> str:
        """The base_url to give slack-sdk (and `api_url` in cutover's config)."""
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.webhook_path}"

    def url_as(self, caller: str) -> str:
        """A base_url whose calls the stand-in marks with `caller` (one per HA replica)."""
        return f"http://127.0.0.1:{self.port}/as/{caller}/api/"

    def fail_next(self, fault: str, times: int = 1) -> None:
        self.faults.extend([fault] * times)

    def message_calls(self, method: str | None = None) -> list[Call]:
        """Every attempt to post or edit, whatever it was answered."""
        return [c for c in self.calls if c.method in MESSAGE_METHODS and method in (None, c.method)]

    def top_level(self, channel: str = "C0123") -> list[Message]:
        return [m for m in self.messages.values() if m.channel == channel and m.thread_ts is None]

    def replies(self, ts: str) -> list[Message]:
        return [m for m in self.messages.values() if m.thread_ts == ts]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_route("*", "/as/{caller}/api/{method}", self._api)
        app.router.add_post(self.webhook_path, self._webhook)
        app.router.add_post("/services/{rest:.*}", self._unknown_webhook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- internals

    def _next_ts(self) -> str:
        # real Slack ts values: epoch seconds with microseconds, unique within a channel
        now = max(time.time(), self._last_ts + 1e-6)
        self._last_ts = now
        return f"{now:.6f}"

    def _channel_id(self, channel: str | None) -> str | None:
        if channel is None:
            return None
        if channel in self.channels.values():
            return channel
        return self.channels.get(channel) or self.channels.get("#" + channel)

    @staticmethod
    async def _params(request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(await request.post())
        return params

    async def _fault(
        self, request: web.Request, call: Call, webhook: bool
    ) -> web.StreamResponse | None:
        """Answer the next queued fault, if any; None means: proceed normally."""
        if not self.faults:
            return None
        fault = call.answer = self.faults.pop(0)
        if fault == "ok":
            return None
        if fault == "ratelimited":
            body = "rate_limited" if webhook else json.dumps({"ok": False, "error": "ratelimited"})
            return web.Response(
                status=429,
                text=body,
                content_type="text/plain" if webhook else "application/json",
                headers={"Retry-After": str(self.retry_after)},
            )
        if fault == "server_error":
            return web.Response(
                status=500, text="<html>500 Internal Server Error</html>", content_type="text/html"
            )
        if fault == "drop":
            return self._reset(request)
        if fault in ("drop_after", "hang_after"):
            return None  # the caller stores the message, then misbehaves
        if fault == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.hang_seconds)
            return web.Response(status=500, text="too late", content_type="text/plain")
        if webhook:
            return web.Response(
                status=WEBHOOK_STATUS.get(fault, 400), text=fault, content_type="text/plain"
            )
        return web.json_response({"ok": False, "error": fault})

    async def _after(self, request: web.Request, call: Call) -> web.StreamResponse | None:
        """The misbehaviour of a fault that lets the message be stored first."""
        if call.answer == "drop_after":
            return self._reset(request)
        if call.answer == "hang_after":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.hang_seconds)
            return self._reset(request)
        return None

    @staticmethod
    def _reset(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is None:  # the client is gone already
            return web.Response()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # linger 0: the client sees a reset, not a clean close
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        transport.close()
        return web.Response()

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params = await self._params(request)
        call = Call(
            method=method,
            at=time.monotonic(),
            channel=params.get("channel"),
            ts=params.get("ts"),
            thread_ts=params.get("thread_ts"),
            text=params.get("text"),
            blocks=params.get("blocks"),
            metadata=params.get("metadata"),
            caller=request.match_info.get("caller"),
        )
        self.calls.append(call)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            call.answer = "invalid_auth"
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method == "auth.test":
            return web.json_response(
                {
                    "ok": True,
                    **({"url": self.url_for_auth_test} if self.url_for_auth_test else {}),
                    "team": "Stand-in",
                    "user": "cutover",
                    "team_id": "T0000",
                    "user_id": "U0000",
                }
            )
        if method in MESSAGE_METHODS:
            fault = await self._fault(request, call, webhook=False)
            if fault is not None:
                return fault
        channel = self._channel_id(call.channel)
        if channel is None:
            call.answer = "channel_not_found"
            return web.json_response({"ok": False, "error": "channel_not_found"})
        if method == "chat.postMessage":
            ts = call.ts = self._next_ts()
            self.messages[ts] = Message(
                channel, ts, call.text, call.blocks, call.thread_ts, metadata=call.metadata
            )
            if (after := await self._after(request, call)) is not None:
                return after
            return web.json_response({"ok": True, "channel": channel, "ts": ts})
        if method == "chat.update":
            message = self.messages.get(call.ts or "")
            if message is None or message.channel != channel:
                call.answer = "message_not_found"
                return web.json_response({"ok": False, "error": "message_not_found"})
            message.text = call.text
            # as Slack documents: no blocks keeps the old ones, an empty list removes them
            if call.blocks is not None:
                message.blocks = call.blocks or None
            message.edits += 1
            if (after := await self._after(request, call)) is not None:
                return after
            return web.json_response({"ok": True, "channel": channel, "ts": message.ts})
        if method in ("conversations.history", "conversations.replies"):
            if not self.history_scope:
                call.answer = "missing_scope"
                return web.json_response(
                    {"ok": False, "error": "missing_scope", "needed": "channels:history"}
                )
            return web.json_response(
                {"ok": True, "messages": self._history(method, channel, params), "has_more": False}
            )
        call.answer = "unknown_method"
        return web.json_response({"ok": False, "error": "unknown_method"}, status=404)

    def _history(self, method: str, channel: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        oldest = float(params.get("oldest") or 0)
        with_metadata = str(params.get("include_all_metadata", "")).lower() in ("1", "true")
        if method == "conversations.history":
            found = [
                m for m in self.messages.values() if m.channel == channel and m.thread_ts is None
            ]
            found.reverse()  # newest first, as Slack answers
        else:
            parent = params.get("ts")
            found = [
                m
                for m in self.messages.values()
                if m.channel == channel and (m.ts == parent or m.thread_ts == parent)
            ]
        out = []
        for m in found:
            if float(m.ts) < oldest:
                continue
            item: dict[str, Any] = {"type": "message", "ts": m.ts, "text": m.text}
            if m.thread_ts:
                item["thread_ts"] = m.thread_ts
            if with_metadata and m.metadata:
                item["metadata"] = m.metadata
            out.append(item)
        return out

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        call = Call(
            method="webhook",
            at=time.monotonic(),
            text=body.get("text"),
            blocks=body.get("blocks"),
            metadata=body.get("metadata"),
        )
        self.calls.append(call)
        fault = await self._fault(request, call, webhook=True)
        if fault is not None:
            return fault
        channel = next(iter(self.channels.values()))
        ts = call.ts = self._next_ts()
        self.messages[ts] = Message(channel, ts, call.text, call.blocks)
        if (after := await self._after(request, call)) is not None:
            return after
        return web.Response(text="ok", content_type="text/plain")

    async def _unknown_webhook(self, request: web.Request) -> web.StreamResponse:
        self.calls.append(Call(method="webhook", at=time.monotonic(), answer="no_service"))
        return web.Response(status=404, text="no_service", content_type="text/plain")
