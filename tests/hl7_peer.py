"""The independent HL7 implementations the HL7 tests check the listener against: python-hl7's
MLLP client sends, hl7apy validates every answer at its strictest level. A test module that
imports this is skipped, saying why, where they are not installed."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

import pytest

hl7mllp = pytest.importorskip("hl7.mllp", reason="pip install -e '.[dev]' (the hl7 package)")
hl7apy_parser = pytest.importorskip("hl7apy.parser", reason="pip install -e '.[dev]' (hl7apy)")
from hl7apy.consts import VALIDATION_LEVEL  # noqa: E402

from eicu.devservices import free_port  # noqa: E402


def strict(answer: str) -> object:
    """The answer parsed and validated by hl7apy at its strict level (raises if not valid)."""
    message = hl7apy_parser.parse_message(answer, validation_level=VALIDATION_LEVEL.STRICT)
    message.validate()
    return message


async def send(port: int, *messages: str) -> list[str]:
    """Each message sent with python-hl7's MLLP client; the answers, as text."""
    reader, writer = await hl7mllp.open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    answers = []
    try:
        for text in messages:
            writer.writemessage(text)
            await writer.drain()
            answers.append(str(await asyncio.wait_for(reader.readmessage(), 15.0)))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answers


@dataclass
class Receiver:
    """An alarm manager: python-hl7's MLLP server answering each message with the next code
    of ``plan`` (then AA); ``drop`` closes the connection without an answer instead."""

    plan: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    port: int = 0
    server: asyncio.AbstractServer | None = None
    tls: ssl.SSLContext | None = None  # MLLP over TLS with this server context

    async def _client(self, reader: object, writer: object) -> None:
        try:
            while True:
                message = await reader.readmessage()  # type: ignore[attr-defined]
                code = self.plan.pop(0) if self.plan else "AA"
                self.received.append(str(message))
                if code == "drop":
                    break
                writer.writemessage(message.create_ack(ack_code=code))  # type: ignore[attr-defined]
                await writer.drain()  # type: ignore[attr-defined]
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()  # type: ignore[attr-defined]

    async def start(self, port: int = 0) -> Receiver:
        self.port = port or free_port()
        self.server = await hl7mllp.start_hl7_server(
            self._client, "127.0.0.1", self.port, encoding="utf-8", ssl=self.tls
        )
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"
