"""Real local receivers for the alarm delivery tests: an HTTP server that records what it is
sent (and can be told to fail), and an SMTP server (aiosmtpd) that keeps the mail it accepts."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller

from eicu.devservices import free_port


@dataclass
class Request:
    path: str
    key: str
    body: dict[str, Any]
    status: int


@dataclass
class HookServer:
    """Answers each POST with the next status in ``plan`` (then 200) and records it."""

    plan: list[int] = field(default_factory=list)
    retry_after: str | None = None  # a Retry-After header on every failure answer
    hold: asyncio.Event | None = None  # when set, each answer waits for this event
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        status = self.plan.pop(0) if self.plan else 200
        key = request.headers.get("Idempotency-Key", "")
        self.requests.append(Request(request.path, key, body, status))
        if self.hold is not None:
            await self.hold.wait()
        headers = {"Retry-After": self.retry_after} if self.retry_after and status != 200 else {}
        return web.json_response({"ok": status == 200}, status=status, headers=headers)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def accepted(self) -> Counter[str]:
        """How many times each idempotency key was accepted (answered 200)."""
        return Counter(r.key for r in self.requests if r.status == 200)

    def accepted_paths(self) -> list[str]:
        return [r.path for r in self.requests if r.status == 200]

    async def start(self) -> HookServer:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class _MailHandler:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.raw: list[bytes] = []  # each message as the server received it
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.raw.append(envelope.content)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


class MailServer:
    """aiosmtpd on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.handler = _MailHandler()
        self.port = free_port()
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[EmailMessage]:
        return self.handler.messages

    def start(self) -> MailServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
