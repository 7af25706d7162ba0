"""A small signaling server implementing the engine's side of the cart protocol, for tests.

It logs users in with a session cookie, registers carts on ``/ws/cart/{site}/{bed}`` (closing
with 4401 without a valid session and 4403 for a bed the user may not serve), and hands every
message from a cart to the test through a queue.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SignalingServer:
    def __init__(self, users: dict[str, str], allowed: dict[str, set[tuple[str, str]]]) -> None:
        self.users = users
        self.allowed = allowed
        self.port = free_port()
        self.sessions: dict[str, str] = {}
        self.logins = 0
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.carts: dict[tuple[str, str], web.WebSocketResponse] = {}
        self.origins: list[str | None] = []
        self.ice_servers: list[dict[str, Any]] = []
        self.answer_pings = True  # False: no pongs at all, as over a link that died silently
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/login", self._login)
        app.router.add_get("/ws/cart/{site}/{bed}", self._cart)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        for ws in list(self.carts.values()):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"engine stopping")
        self.carts.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.users.get(body.get("name")) != body.get("password"):
            return web.json_response({"error": "bad name or password"}, status=401)
        self.logins += 1
        token = secrets.token_urlsafe(16)
        self.sessions[token] = body["name"]
        resp = web.json_response({"name": body["name"], "csrf": secrets.token_hex(8)})
        resp.set_cookie("eicu_session", token, httponly=True, samesite="Strict")
        return resp

    async def _cart(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=self.answer_pings)
        await ws.prepare(request)
        self.origins.append(request.headers.get("Origin"))
        site, bed = request.match_info["site"], request.match_info["bed"]
        user = self.sessions.get(request.cookies.get("eicu_session", ""))
        if user is None:
            await ws.close(code=4401, message=b"not logged in")
            return ws
        if (site, bed) not in self.allowed.get(user, set()):
            await ws.close(code=4403, message=f"{user} may not serve {site}/{bed}".encode())
            return ws
        self.carts[(site, bed)] = ws
        await ws.send_json(
            {"type": "registered", "site": site, "bed": bed, "ice_servers": self.ice_servers}
        )
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            if message.get("type") == "ping" and self.answer_pings:
                await ws.send_json({"type": "pong"})
            await self.inbox.put(message)
        if self.carts.get((site, bed)) is ws:
            del self.carts[(site, bed)]
        return ws

    async def send(self, site: str, bed: str, message: dict[str, Any]) -> None:
        await self.carts[(site, bed)].send_json(message)

    async def expect(self, kind: str, timeout: float = 20.0) -> dict[str, Any]:
        """The next message of type ``kind`` from a cart (others are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {kind!r} message in {timeout} s")
            message = await asyncio.wait_for(self.inbox.get(), remaining)
            if message.get("type") == kind:
                return message
