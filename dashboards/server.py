"""Serve the dashboard with uvicorn inside the caller's event loop.

The caller owns the process's signals (``eicu serve`` and ``eicu demo`` stop on SIGTERM/SIGINT
through their own handlers), so uvicorn is told not to install its own; :meth:`stop` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator, Sequence

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class DashboardServer:
    """``trusted_proxies``: addresses or networks whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are believed (None: the app's ``state.trusted_proxies``, from
    ``EICU_TRUSTED_PROXIES``). Empty: nobody's, not even 127.0.0.1's: the client address is the
    peer's, so a client cannot choose the address the login limit counts against."""

    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        trusted_proxies: Sequence[str] | None = None,
    ) -> None:
        if trusted_proxies is None:
            trusted_proxies = getattr(app.state, "trusted_proxies", ())
        trusted = list(trusted_proxies)
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            raise
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="websockets-sansio",
            timeout_graceful_shutdown=2,
            proxy_headers=bool(trusted),
            forwarded_allow_ips=trusted or [],
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve([self._sock]), name="dashboard")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise RuntimeError("the dashboard server stopped while starting")
            await asyncio.sleep(0.02)
        log.info("dashboard on %s", self.url)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
