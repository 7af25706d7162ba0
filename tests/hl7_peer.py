"""The independent HL7 implementations the HL7 tests check the listener against: python-hl7's
MLLP client sends, hl7apy validates every answer at its strictest level. A test module that
imports this is skipped, saying why, where they are not installed."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

hl7mllp = pytest.importorskip("hl7.mllp", reason="pip install -e '.[dev]' (the hl7 package)")
hl7apy_parser = pytest.importorskip("hl7apy.parser", reason="pip install -e '.[dev]' (hl7apy)")
from hl7apy.consts import VALIDATION_LEVEL  # noqa: E402


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
