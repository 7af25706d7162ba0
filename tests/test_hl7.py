"""HL7 v2 in (IHE PCD-01 over MLLP), checked against independent implementations: messages are
sent with python-hl7's MLLP client (the ``hl7`` package), every answer is validated by hl7apy at
its strictest level, and the numerics arrive at a real Mosquitto in the project's wire format."""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from eicu import hl7, wire
from eicu.config import MqttSettings
from eicu.devservices import Mosquitto, free_port, mosquitto_binary
from eicu.models import BedKey, DeadLetter, NumericsFrame, StatusFrame, WaveformFrame
from eicu.store import Store
from ingest.engine import Engine
from ingest.hl7 import Counts, Listener, read_pcd01
from tests.hl7_peer import hl7mllp, send, strict

# bytes decoded as they are: segments end with a carriage return, kept as it is
EXAMPLE = (Path(__file__).parent / "data" / "hl7" / "pcd01-oru-r01.hl7").read_bytes().decode()
SITE = "ward3"
BED = BedKey(SITE, "bed07")
T_0 = hl7.parse_ts("20261203101500+0000")
T_NIBP = hl7.parse_ts("20261203101430+0000")


def msa(answer: str) -> tuple[str, str]:
    seg = hl7.parse(answer).first("MSA")
    assert seg is not None
    return seg.component(1), seg.component(2)


def errs(answer: str) -> list[tuple[str, str, str]]:
    """(location, code, text) of each ERR segment."""
    return [(s.field(2), s.component(3, 1), s.component(8)) for s in hl7.parse(answer).all("ERR")]


def with_msh(text: str, **fields: str) -> str:
    """``text`` with MSH fields replaced: ``control="X"`` (MSH-10), ``version``, ``type``."""
    lines = text.split("\r")
    msh = lines[0].split("|")
    index = {"type": 8, "control": 9, "version": 11}
    for name, value in fields.items():
        msh[index[name]] = value
    lines[0] = "|".join(msh)
    return "\r".join(lines)


def replace_obx(text: str, set_id: str, field_no: int, value: str) -> str:
    lines = text.split("\r")
    for i, line in enumerate(lines):
        parts = line.split("|")
        if parts[0] == "OBX" and parts[1] == set_id:
            parts[field_no] = value
            lines[i] = "|".join(parts)
    return "\r".join(lines)


# --- the message model, pure ------------------------------------------------------------------


def test_the_example_reads_as_pcd01_says() -> None:
    message = hl7.parse(EXAMPLE)
    assert message.message_type == ("ORU", "R01") and message.version == "2.6"
    assert message.control_id == "PCD0001"
    counts = Counts()
    found = read_pcd01(message, SITE, counts)
    assert found.bed == BED
    assert found.by_time == {
        T_0: {"HR": 72.0, "RR": 18.0, "SPO2": 96.0, "TEMP": 37.4},
        T_NIBP: {"NIBP_SYS": 118.0, "NIBP_DIA": 64.0},
    }
    assert counts.unknown_codes == 1 and counts.hierarchy_rows == 2  # never guessed


def test_escapes_delimiters_and_times() -> None:
    text = "MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5\rNTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    message = hl7.parse(text)
    assert message.first("NTE") is not None
    assert message.first("NTE").component(3) == "a|b^c&d~e\\f"  # type: ignore[union-attr]
    enc = hl7.Encoding()
    assert enc.unescape(enc.escape_text("x|y^z&w~v\\u")) == "x|y^z&w~v\\u"
    # other delimiters, as MSH-1 and MSH-2 declare them
    other = hl7.parse("MSH#*@!%#A#B#C#D#20260101##ORU*R01#7#P#2.6\rPV1##I#U*R*b9")
    assert other.first("PV1").component(3, 3) == "b9"  # type: ignore[union-attr]
    assert hl7.parse_ts("20261203101500+0000") == hl7.parse_ts("20261203111500+0100")
    assert hl7.parse_ts("20261203101500.25") - hl7.parse_ts("20261203101500") == 250_000
    assert hl7.parse_ts("2026") == hl7.parse_ts("20260101000000")
    with pytest.raises(ValueError):
        hl7.parse_ts("yesterday")
    for bad, where in (
        ("PID|1", "MSH"),
        ("", "MSH"),
        ("MSH|", "MSH-2"),
        ("MSH|^~\\&|x\rp v1|", "p v"),
    ):
        with pytest.raises(hl7.Hl7Error, match=where):
            hl7.parse(bad)


def test_every_answer_is_valid_hl7_at_hl7apys_strictest_level() -> None:
    message = hl7.parse(EXAMPLE)
    now = time.time_ns() // 1000
    strict(hl7.ack(message, "AA", "EICU1", now))
    bad = hl7.Hl7Error("OBX", 5, hl7.DATA_TYPE_ERROR, "OBX 3 (HR): not a number | ^ & ~ \\")
    answer = hl7.ack(message, "AE", "EICU2", now, [bad, bad])
    strict(answer)
    assert msa(answer) == ("AE", "PCD0001")
    assert errs(answer)[0] == ("OBX^1^5", "102", "OBX 3 (HR): not a number | ^ & ~ \\")
    strict(hl7.ack(None, "AR", "EICU3", now, [hl7.Hl7Error("MSH", 0, 100, "no MSH")]))
    with pytest.raises(ValueError):
        hl7.ack(message, "OK", "EICU4", now)


# --- the listener, over MLLP, to a real broker ------------------------------------------------

needs_mosquitto = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto not installed (Debian package 'mosquitto')"
)


@pytest.fixture
def broker() -> AsyncIterator[Mosquitto]:
    m = Mosquitto().start()
    yield m
    m.cleanup()


@pytest.fixture
async def listener(broker: Mosquitto) -> AsyncIterator[Listener]:
    mqtt = MqttSettings.from_url(broker.url, reconnect_min_s=0.05, reconnect_max_s=0.2)
    lst = Listener(mqtt, SITE, port=0, max_message_bytes=64 * 1024)
    await lst.start()
    yield lst
    await lst.stop()


class Numerics:
    """What the broker carries on the site's numerics topics."""

    def __init__(self) -> None:
        self.frames: list[NumericsFrame] = []
        self.arrived = asyncio.Event()

    async def wait_for(self, n: int, timeout_s: float = 10.0) -> list[NumericsFrame]:
        async with asyncio.timeout(timeout_s):
            while len(self.frames) < n:
                self.arrived.clear()
                await self.arrived.wait()
        return self.frames


@contextlib.asynccontextmanager
async def numerics(broker: Mosquitto) -> AsyncIterator[Numerics]:
    seen = Numerics()
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="hl7-test-sub") as client:
        await client.subscribe(f"eicu/v1/{SITE}/+/numerics", qos=1)

        async def read() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                frame = wire.decode(str(message.topic), message.payload, 0)
                assert isinstance(frame, NumericsFrame)
                seen.frames.append(frame)
                seen.arrived.set()

        task = asyncio.create_task(read())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@needs_mosquitto
async def test_pcd01_numerics_reach_the_broker_before_the_accept(
    broker: Mosquitto, listener: Listener
) -> None:
    async with numerics(broker) as seen:
        (answer,) = await send(listener.port, EXAMPLE)
        assert msa(answer) == ("AA", "PCD0001")
        strict(answer.replace("\n", "\r"))
        frames = await seen.wait_for(2)
    by_time = {f.ts_us: f for f in frames}
    assert by_time[T_0].bed == BED and by_time[T_0].values == {
        "HR": 72.0, "RR": 18.0, "SPO2": 96.0, "TEMP": 37.4
    }  # fmt: skip
    assert by_time[T_NIBP].values == {"NIBP_SYS": 118.0, "NIBP_DIA": 64.0}
    # one stream per bed, numbered in the order published (oldest observation first)
    assert frames[1].seq == frames[0].seq + 1 and frames[0].ts_us == T_NIBP
    assert listener.counts.unknown_codes == 1 and listener.counts.accepted == 1


@needs_mosquitto
async def test_a_repeated_control_id_gets_the_same_answer_and_is_not_published_again(
    broker: Mosquitto, listener: Listener
) -> None:
    async with numerics(broker) as seen:
        first, again = await send(listener.port, EXAMPLE, EXAMPLE)
        await seen.wait_for(2)
        # a later, different message: its frames come after, and none of the repeat's
        later = with_msh(EXAMPLE, control="PCD0002").replace("20261203101500", "20261203101600")
        (third,) = await send(listener.port, later)
        frames = await seen.wait_for(4)
    assert first == again and msa(first)[0] == "AA" and msa(third) == ("AA", "PCD0002")
    assert len(frames) == 4 and listener.counts.duplicates == 1


@needs_mosquitto
async def test_errors_are_answered_naming_the_field_and_nothing_is_taken(
    broker: Mosquitto, listener: Listener
) -> None:
    def bad(n: int) -> str:  # the example under a control id of its own
        return with_msh(EXAMPLE, control=f"BAD{n}")

    cases = [
        # (message, expected code, expected ERR location, HL7 error code)
        (replace_obx(bad(1), "3", 5, "seventy-two"), "AE", "OBX^1^5", "102"),
        (replace_obx(bad(2), "5", 6, "262656^MDC_DIM_X^MDC"), "AE", "OBX^1^6", "103"),
        (replace_obx(bad(3), "3", 5, "900"), "AE", "OBX^1^5", "102"),  # not a heart rate
        (bad(4).replace("R12^bed07^", "R12^bed 07!^"), "AE", "PV1^1^3^3", "102"),
        (bad(5).replace("PV1||I|ICU3^R12^bed07^HOSP\r", ""), "AE", "PV1^1", "101"),
        (with_msh(bad(6), version="2.1"), "AR", "MSH^1^12", "203"),
        (with_msh(bad(7), type="ADT^A01^ADT_A01"), "AR", "MSH^1^9^1", "200"),
        (with_msh(bad(8), type="ORU^R40^ORU_R40"), "AR", "MSH^1^9^2", "201"),
        (with_msh(EXAMPLE, control=""), "AE", "MSH^1^10", "101"),
        ("PID|||1\rPV1||I|x^y^bed07", "AR", "MSH^1", "100"),
    ]
    answers = await send(listener.port, *(text for text, *_ in cases))
    assert listener.counts.frames == 0  # nothing of them was published
    for (_text, code, where, err), answer in zip(cases, answers, strict=True):
        strict(answer)
        assert msa(answer)[0] == code, answer
        assert (where, err) in {(loc, c) for loc, c, _ in errs(answer)}, answer
    # the listener goes on: a good message after all of them is accepted and published
    async with numerics(broker) as seen:
        (ok,) = await send(listener.port, with_msh(EXAMPLE, control="AFTER1"))
        assert msa(ok)[0] == "AA"
        await seen.wait_for(2)
    assert listener.counts.frames == 2
    assert listener.counts.errors == 6 and listener.counts.rejected == 4


@needs_mosquitto
async def test_broken_framing_and_a_huge_message_cost_nothing_else(
    broker: Mosquitto, listener: Listener
) -> None:
    # bytes outside any block, then a good message on the same connection
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n" + hl7.frame(EXAMPLE))
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(hl7.END_BLOCK), 10.0)
    assert msa(answer[1:-2].decode())[0] == "AA"
    writer.close()
    await writer.wait_closed()
    assert listener.counts.framing_errors >= 1
    # a message over the size limit with no end block: answered AR, connection closed
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(hl7.START_BLOCK + b"MSH|^~\\&|" + b"x" * (80 * 1024))
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(hl7.END_BLOCK), 10.0)
    text = answer[1:-2].decode()
    strict(text)
    assert msa(text)[0] == "AR" and "larger than 65536 bytes" in errs(text)[0][2]
    assert await asyncio.wait_for(reader.read(), 10.0) == b""  # closed
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    # and the listener still takes messages
    (ok,) = await send(listener.port, with_msh(EXAMPLE, control="AFTER2"))
    assert msa(ok)[0] == "AA"


@needs_mosquitto
async def test_with_the_broker_down_a_message_is_refused_for_now_then_taken(
    broker: Mosquitto,
) -> None:
    mqtt = MqttSettings.from_url(broker.url, reconnect_min_s=0.05, reconnect_max_s=0.2)
    lst = Listener(mqtt, SITE, port=0, publish_timeout_s=1.0)
    await lst.start()
    try:
        async with numerics(broker) as seen:
            (first,) = await send(lst.port, EXAMPLE)
            assert msa(first)[0] == "AA"
            await seen.wait_for(2)
        broker.stop()
        await asyncio.sleep(0.3)  # the listener notices its connection is gone
        later = with_msh(EXAMPLE, control="PCD0002").replace("20261203101500", "20261203101600")
        started = time.monotonic()
        (refused,) = await send(lst.port, later)
        assert msa(refused)[0] == "AR" and "send the message again" in errs(refused)[0][2]
        assert time.monotonic() - started < 5.0  # refused after the publish timeout
        broker.start()
        async with numerics(broker) as seen:
            (taken,) = await send(lst.port, later)  # the sender's resend
            assert msa(taken) == ("AA", "PCD0002")
            frames = await seen.wait_for(2)
        assert {f.ts_us for f in frames} == {T_0 + 60_000_000, T_NIBP}
    finally:
        await lst.stop()


async def test_connections_from_outside_the_allow_list_are_refused() -> None:
    mqtt = MqttSettings.from_url(f"mqtt://127.0.0.1:{free_port()}")
    lst = Listener(mqtt, SITE, port=0, allow=["10.0.0.0/8"])
    await lst.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
        writer.write(hl7.frame(EXAMPLE))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 10.0) == b""  # closed, unanswered
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        assert lst.counts.refused_connections == 1 and lst.counts.messages == 0
    finally:
        await lst.stop()


@contextlib.asynccontextmanager
async def running_engine(
    broker: Mosquitto, tmp_path: Path, client_id: str, **ingest: Any
) -> AsyncIterator[tuple[Engine, Store]]:
    """An engine on the broker (its ingest settings from ``ingest``) storing into a SQLite
    store of its own; stopped, and the store closed, on the way out."""
    from eicu.config import IngestSettings
    from eicu.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'eicu.sqlite'}")
    await store.open()
    engine = Engine(
        MqttSettings(port=broker.port, client_id=client_id),
        IngestSettings(spool_dir=tmp_path / "spool", flush_interval_s=0.1, **ingest),
        store,
    )
    await engine.start()
    try:
        await engine.wait_connected()
        yield engine, store
    finally:
        await engine.stop()
        await store.close()


@needs_mosquitto
async def test_the_engine_scores_and_stores_what_came_as_hl7(
    broker: Mosquitto, listener: Listener, tmp_path: Path
) -> None:
    async with running_engine(broker, tmp_path, "eicu-test-hl7", analyse_signals=False) as (
        engine,
        store,
    ):
        now = hl7.format_ts(time.time_ns() // 1000)
        fresh = EXAMPLE.replace("20261203101500+0000", now).replace("20261203101430+0000", now)
        (answer,) = await send(listener.port, fresh)
        assert msa(answer)[0] == "AA"
        async with asyncio.timeout(15):
            while (scores := engine.scores.beds.get(BED)) is None or scores.news2 is None:
                await asyncio.sleep(0.05)
        state = engine.router.beds[BED]
        assert {k: v for k, (v, _t) in state.latest.items()} == {
            "HR": 72.0, "RR": 18.0, "SPO2": 96.0, "TEMP": 37.4, "NIBP_SYS": 118.0, "NIBP_DIA": 64.0
        }  # fmt: skip
        # NEWS2 from the HL7 values (RCP 2017): RR 18 -> 0, SpO2 96 -> 0, SBP 118 -> 0,
        # HR 72 -> 0, temperature 37.4 -> 0; ACVPU and oxygen are not in the message
        news2 = scores.news2
        assert not news2.complete and news2.partial_total == 0
        assert set(news2.missing) == {"acvpu", "on_oxygen"}
        async with asyncio.timeout(15):
            while (await store.stats())["beds"].get(str(BED), {}).get("messages", 0) < 1:
                await asyncio.sleep(0.1)
        # the monitor's identity (OBX-18 of the MDS) came as the bed's status, and is kept
        async with asyncio.timeout(15):
            while not (devices := await store.bed_devices(BED)):
                await asyncio.sleep(0.1)
        assert [(d.device_id, d.id_type) for d in devices] == [("0123456789ABCDEF", "EUI-64")]


def test_the_command_needs_its_site_and_says_so() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "EICU_HL7_SITE": "", "EICU_MQTT_URL": "mqtt://127.0.0.1:1"}
    out = subprocess.run(
        [sys.executable, "-m", "eicu.cli", "hl7", "listen"], env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2 and "EICU_HL7_SITE: required" in out.stderr
    env = {**env, "EICU_HL7_SITE": "ward3", "EICU_HL7_ALLOW": "not-a-network"}
    out = subprocess.run(
        [sys.executable, "-m", "eicu.cli", "hl7", "listen"], env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2 and "EICU_HL7_ALLOW" in out.stderr


def test_the_coded_waveform_setting_is_read_and_a_wrong_value_named() -> None:
    from eicu.commands.hl7 import listener_from_env
    from eicu.errors import ConfigError

    env = {"EICU_HL7_SITE": "ward3", "EICU_MQTT_URL": "mqtt://127.0.0.1:1"}
    plain = listener_from_env(env)
    coded = listener_from_env({**env, "EICU_HL7_CODED_WAVEFORMS": "1"})
    assert plain is not None and coded is not None
    assert (plain.coded_waveforms, coded.coded_waveforms) == (False, True)
    with pytest.raises(ConfigError, match="EICU_HL7_CODED_WAVEFORMS"):
        listener_from_env({**env, "EICU_HL7_CODED_WAVEFORMS": "sometimes"})


@needs_mosquitto
async def test_the_command_listens_answers_and_stops_on_sigterm(broker: Mosquitto) -> None:
    import os
    import signal
    import sys

    port = free_port()
    env = {**os.environ, "EICU_HL7_SITE": SITE, "EICU_HL7_PORT": str(port),
           "EICU_MQTT_URL": broker.url}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eicu.cli", "hl7", "listen", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while b"listening on" not in await proc.stderr.readline():
                pass
        async with numerics(broker) as seen:
            (answer,) = await send(port, EXAMPLE)
            assert msa(answer)[0] == "AA"
            await seen.wait_for(2)
        proc.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()
        assert await proc.wait() == 0
        assert "1 messages: 1 accepted" in rest and "1 unknown codes skipped" in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def send_tls(port: int, context: ssl.SSLContext, text: str) -> str:
    """One message over MLLP in TLS with python-hl7's client; the answer, as text."""
    reader, writer = await hl7mllp.open_hl7_connection(
        "127.0.0.1", port, encoding="utf-8", ssl=context, server_hostname="localhost"
    )
    try:
        writer.writemessage(text)
        await writer.drain()
        return str(await asyncio.wait_for(reader.readmessage(), 15.0))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


@needs_mosquitto
async def test_mllp_over_tls_with_client_certificates(broker: Mosquitto, tmp_path: Path) -> None:
    from eicu.commands.hl7 import listener_from_env
    from tests.pki import TestCa

    ca = TestCa(tmp_path / "pki")
    server, sender = ca.server("localhost", "127.0.0.1"), ca.client("monitor-gw")
    env = {
        "EICU_HL7_SITE": SITE, "EICU_MQTT_URL": broker.url, "EICU_HL7_TLS_CERT_FILE":
        str(server.cert), "EICU_HL7_TLS_KEY_FILE": str(server.key),
        "EICU_HL7_TLS_CA_FILE": str(ca.cert),
    }  # fmt: skip
    listener = listener_from_env(env, port=0)
    assert listener is not None and listener.tls is not None
    await listener.start()
    try:
        trusting = ssl.create_default_context(cafile=str(ca.cert))
        trusting.load_cert_chain(str(sender.cert), str(sender.key))
        answer = await send_tls(listener.port, trusting, EXAMPLE)
        assert msa(answer) == ("AA", "PCD0001")
        strict(answer.replace("\n", "\r"))
        # a sender without a certificate of that CA is not let in
        anonymous = ssl.create_default_context(cafile=str(ca.cert))
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await send_tls(listener.port, anonymous, EXAMPLE.replace("PCD0001", "PCD0002"))
        # nor one speaking plain MLLP to the TLS port
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, TimeoutError)):
            await send(listener.port, EXAMPLE.replace("PCD0001", "PCD0003"))
        assert listener.counts.accepted == 1
    finally:
        await listener.stop()


def test_tls_settings_that_cannot_be_used_name_their_setting(tmp_path: Path) -> None:
    from eicu.commands.hl7 import tls_from_env
    from eicu.errors import ConfigError

    assert tls_from_env({}) is None
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    cases = [
        ({"EICU_HL7_TLS_CERT_FILE": str(junk)}, "EICU_HL7_TLS_KEY_FILE"),
        ({"EICU_HL7_TLS_CA_FILE": str(junk)}, "EICU_HL7_TLS_CA_FILE"),
        (
            {"EICU_HL7_TLS_CERT_FILE": str(tmp_path / "no"), "EICU_HL7_TLS_KEY_FILE": str(junk)},
            "EICU_HL7_TLS_CERT_FILE",
        ),
        (
            {"EICU_HL7_TLS_CERT_FILE": str(junk), "EICU_HL7_TLS_KEY_FILE": str(junk)},
            "EICU_HL7_TLS_CERT_FILE",
        ),
    ]
    for env, key in cases:
        with pytest.raises(ConfigError) as refused:
            tls_from_env(env)
        assert refused.value.key == key, (env, refused.value)


# --- waveform OBX (IHE PCD waveform content: NA with its sample rate and resolution) ----------

ECG_RAW = [0, 10, 20, 200, -40, 0] * 40 + [5] * 10  # 250 raw samples, 1 s at 250 Hz
RESOLUTION_MV = 0.005


def waveform_message(control: str, *extra: str) -> str:
    """A PCD-01 message carrying 1 s of ECG lead II (raw units and their resolution in mV)
    and 0.2 s of pleth (one sample missing), for bed 7 of ward 3."""
    ecg = "^".join(str(v) for v in ECG_RAW)
    pleth = "^".join(["0.5", "0.6", "", *["0.7"] * 22])
    segments = [
        f"MSH|^~\\&|MONGW^0123456789ABCDEF^EUI-64|WARD3|EICU|HUB|20261203101500+0000||"
        f"ORU^R01^ORU_R01|{control}|P|2.6|||NE|AL||UNICODE UTF-8|||"
        "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
        "PID|||7001234^^^HOSP^MR||Doe^Jane||19500101|F",
        "PV1||I|ICU3^R12^bed07^HOSP",
        "OBR|1|W1^MONGW|W1^MONGW|182777000^monitoring of patient^SNOMED-CT|||"
        "20261203101500+0000|20261203101501+0000",
        f"OBX|1|NA|131330^MDC_ECG_ELEC_POTL_II^MDC|1.1.1.1001|{ecg}|"
        "262656^MDC_DIM_DIMLESS^MDC|||||F|||20261203101500+0000",
        "OBX|2|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1001.1|250|264608^MDC_DIM_PER_SEC^MDC|||||F",
        f"OBX|3|NM|0^MDC_ATTR_NU_MSMT_RES^MDC|1.1.1.1001.2|{RESOLUTION_MV}|"
        "266418^MDC_DIM_MILLI_VOLT^MDC|||||F",
        f"OBX|4|NA|150452^MDC_PULS_OXIM_PLETH^MDC|1.2.1.1002|{pleth}|"
        "262656^MDC_DIM_DIMLESS^MDC|||||F",
        "OBX|5|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.2.1.1002.1|125|264640^MDC_DIM_HZ^MDC|||||F",
        *extra,
    ]
    return "\r".join(segments) + "\r"


@needs_mosquitto
@pytest.mark.parametrize("coded", [False, True], ids=["raw", "coded"])
async def test_waveform_obx_reach_the_broker_as_waveform_frames(
    broker: Mosquitto, listener: Listener, coded: bool
) -> None:
    listener.coded_waveforms = coded  # EICU_HL7_CODED_WAVEFORMS
    frames: list[WaveformFrame] = []
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="hl7-test-waves") as client:
        await client.subscribe(f"eicu/v1/{SITE}/+/waveform", qos=1)
        (answer,) = await send(listener.port, waveform_message("W1"))
        assert msa(answer) == ("AA", "W1"), errs(answer)
        strict(answer.replace("\n", "\r"))
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                flags = int.from_bytes(message.payload[4:6], "little")
                assert flags == (wire.FLAG_CODED if coded else 0)
                frame = wire.decode(str(message.topic), message.payload, 0)
                assert isinstance(frame, WaveformFrame)
                frames.append(frame)
                if len(frames) == 2:
                    break
    by_signal = {f.blocks[0].signal: f for f in frames}
    ecg = by_signal["ECG_II"]
    assert ecg.bed == BED and ecg.t0_us == T_0 and ecg.blocks[0].fs_hz == 250.0
    assert ecg.blocks[0].physical() == pytest.approx(
        [v * RESOLUTION_MV for v in ECG_RAW], abs=0.0005
    )
    pleth = by_signal["PLETH"].blocks[0]
    assert pleth.fs_hz == 125.0 and pleth.samples.shape[0] == 25
    values = pleth.physical()
    assert math.isnan(values[2]) and values[0] == pytest.approx(0.5, abs=1e-3)
    # OBR-7 is the start when the waveform has no OBX-14
    assert by_signal["PLETH"].t0_us == T_0
    assert listener.counts.wave_frames == 2 and listener.counts.samples == 275
    assert by_signal["PLETH"].seq == ecg.seq + 1 or ecg.seq == by_signal["PLETH"].seq + 1


@needs_mosquitto
async def test_a_waveform_that_cannot_be_read_is_answered_naming_the_field(
    listener: Listener,
) -> None:
    base = waveform_message("W0")
    cases = [
        (base.replace("OBX|2|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1001.1|250|", "OBX|2|NM|X^Y|9|250|"),
         "OBX^1^4", "no MDC_ATTR_SAMP_RATE"),
        (replace_obx(base, "2", 5, "5000"), "OBX^1^5", "sample rate 5000 Hz"),
        (replace_obx(base, "3", 6, "266016^MDC_DIM_MMHG^MDC"), "OBX^1^6", "expected mV"),
        (replace_obx(base, "1", 5, "1^2^x^4"), "OBX^1^5", "not a list of numbers"),
        (replace_obx(base, "4", 5, ""), "OBX^1^5", "no samples"),
    ]  # fmt: skip
    for i, (text, where, words) in enumerate(cases):
        (answer,) = await send(listener.port, with_msh(text, control=f"WE{i}"))
        strict(answer.replace("\n", "\r"))
        assert msa(answer)[0] == "AE", (i, answer)
        found = errs(answer)
        assert any(loc == where and words in why for loc, _, why in found), (i, found)
    assert listener.counts.wave_frames == 0


@needs_mosquitto
async def test_messages_answered_ae_or_ar_are_kept_as_dead_letters(
    broker: Mosquitto, store: Store
) -> None:
    from eicu.commands.hl7 import StoreDeadLetters

    sink = StoreDeadLetters(store)
    kept: list[DeadLetter] = []

    def both(letter: DeadLetter) -> None:
        kept.append(letter)
        sink.add(letter)

    mqtt = MqttSettings.from_url(broker.url, reconnect_min_s=0.05, reconnect_max_s=0.2)
    listener = Listener(mqtt, SITE, port=0, max_message_bytes=64 * 1024, dead_letters=both)
    await listener.start()
    try:
        bad_value = replace_obx(with_msh(EXAMPLE, control="D1"), "3", 5, "abc")
        wrong_type = with_msh(EXAMPLE, control="D2", type="ORM^O01^ORM_O01")
        answers = await send(listener.port, bad_value, wrong_type, EXAMPLE)
        assert [msa(a)[0] for a in answers] == ["AE", "AR", "AA"]
    finally:
        await listener.stop()
    assert [(k.reason, k.topic) for k in kept] == [
        ("hl7_ae", f"hl7/v2/{SITE}/MONGW"), ("hl7_ar", f"hl7/v2/{SITE}/MONGW"),
    ]  # fmt: skip
    assert b"|abc|" in kept[0].payload and "not a number" in kept[0].detail
    await sink.write()
    counts = await store.dead_letter_counts()
    assert counts.get("hl7_ae") == 1 and counts.get("hl7_ar") == 1


# --- multiplexed waveform OBX (MA: one sample instant per repetition, one channel a component) -

LEAD_III_RAW = [v // 2 - 3 for v in ECG_RAW]  # 250 raw samples of a second lead
LEAD_III_GAP = 7  # the sample of lead III the monitor had no value for
MA_CODES = "131330^MDC_ECG_ELEC_POTL_II^MDC~131389^MDC_ECG_ELEC_POTL_III^MDC"
V1 = "131331^MDC_ECG_ELEC_POTL_V1^MDC"  # an ECG lead not in the code table


def ma_rows(*channels: list[int]) -> str:
    """Channels as an MA value: a repetition per sample instant, a component per channel (the
    gap of lead III, in the second channel, left empty)."""
    rows = []
    for i, instant in enumerate(zip(*channels, strict=True)):
        values = [str(v) for v in instant]
        if len(values) > 1 and i == LEAD_III_GAP:
            values[1] = ""
        rows.append("^".join(values))
    return "~".join(rows)


def ma_message(
    control: str,
    start: str = "20261203101500+0000",
    codes: str = f"{MA_CODES}~{V1}",
    value: str | None = None,
) -> str:
    """A PCD-01 message carrying 1 s of ECG leads II and III (and V1) multiplexed in one MA
    OBX at 250 Hz, in raw units with their resolution in mV, for bed 7 of ward 3."""
    if value is None:
        value = ma_rows(ECG_RAW, LEAD_III_RAW, [1] * len(ECG_RAW))
    segments = [
        f"MSH|^~\\&|MONGW^0123456789ABCDEF^EUI-64|WARD3|EICU|HUB|{start}||"
        f"ORU^R01^ORU_R01|{control}|P|2.6|||NE|AL||UNICODE UTF-8|||"
        "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
        "PID|||7001234^^^HOSP^MR||Doe^Jane||19500101|F",
        "PV1||I|ICU3^R12^bed07^HOSP",
        f"OBR|1|W1^MONGW|W1^MONGW|182777000^monitoring of patient^SNOMED-CT|||{start}",
        f"OBX|1|MA|{codes}|1.1.1.1001|{value}|262656^MDC_DIM_DIMLESS^MDC|||||F|||{start}",
        "OBX|2|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1001.1|250|264608^MDC_DIM_PER_SEC^MDC|||||F",
        f"OBX|3|NM|0^MDC_ATTR_NU_MSMT_RES^MDC|1.1.1.1001.2|{RESOLUTION_MV}|"
        "266418^MDC_DIM_MILLI_VOLT^MDC|||||F",
    ]
    return "\r".join(segments) + "\r"


def test_a_multiplexed_array_reads_as_one_waveform_per_channel() -> None:
    counts = Counts()
    found = read_pcd01(hl7.parse(ma_message("M0")), SITE, counts)
    assert found.by_time == {}
    by_signal = {w.signal: w for w in found.waves}
    assert set(by_signal) == {"ECG_II", "ECG_III"}
    assert counts.unknown_codes == 1  # lead V1: counted and skipped, never guessed
    ii, iii = by_signal["ECG_II"], by_signal["ECG_III"]
    assert ii.fs_hz == iii.fs_hz == 250.0 and ii.t0_us == iii.t0_us == T_0
    assert ii.values == pytest.approx([v * RESOLUTION_MV for v in ECG_RAW])
    assert math.isnan(iii.values[LEAD_III_GAP])
    kept = [i for i in range(len(LEAD_III_RAW)) if i != LEAD_III_GAP]
    assert iii.values[kept] == pytest.approx([LEAD_III_RAW[i] * RESOLUTION_MV for i in kept])
    # the definition's example: channel 1 is 1, 2, 3 and channel 2 is 10, 20, 30
    found = read_pcd01(hl7.parse(ma_message("M1", codes=MA_CODES, value="1^10~2^20~3^30")),
                       SITE, Counts())  # fmt: skip
    by_signal = {w.signal: w for w in found.waves}
    assert list(by_signal["ECG_II"].values) == pytest.approx([0.005, 0.010, 0.015])
    assert list(by_signal["ECG_III"].values) == pytest.approx([0.05, 0.10, 0.15])
    # one code and one channel: a sample instant per repetition, an empty one missing
    one = "131330^MDC_ECG_ELEC_POTL_II^MDC"
    found = read_pcd01(hl7.parse(ma_message("M2", codes=one, value="1~~3")), SITE, Counts())
    (wave,) = found.waves
    assert wave.signal == "ECG_II" and math.isnan(wave.values[1])
    assert wave.values[[0, 2]] == pytest.approx([0.005, 0.015])


@needs_mosquitto
async def test_a_multiplexed_waveform_is_published_analysed_and_stored_per_channel(
    broker: Mosquitto, listener: Listener, tmp_path: Path
) -> None:
    frames: list[WaveformFrame] = []
    async with running_engine(broker, tmp_path, "eicu-test-hl7-ma", waveform_segment_s=0.5) as (
        engine,
        store,
    ):
        # a device clock in step with the hub's (the store keeps a far-off one at its receipt)
        t0 = (time.time_ns() // 1000 - 5_000_000) // 1000 * 1000
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="hl7-test-ma") as client:
            await client.subscribe(f"eicu/v1/{SITE}/+/waveform", qos=1)
            (answer,) = await send(listener.port, ma_message("MA1", start=hl7.format_ts(t0)))
            assert msa(answer) == ("AA", "MA1"), errs(answer)
            strict(answer.replace("\n", "\r"))
            async with asyncio.timeout(10):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    frame = wire.decode(str(message.topic), message.payload, 0)
                    assert isinstance(frame, WaveformFrame)
                    frames.append(frame)
                    if len(frames) == 2:
                        break
        by_signal = {f.blocks[0].signal: f for f in frames}
        assert set(by_signal) == {"ECG_II", "ECG_III"}
        for f in frames:
            assert f.bed == BED and f.t0_us == t0 and f.blocks[0].fs_hz == 250.0
        assert listener.counts.wave_frames == 2 and listener.counts.samples == 500
        assert listener.counts.unknown_codes == 1
        # what the engine stored, each lead in mV
        expected = {
            "ECG_II": np.array(ECG_RAW, dtype=float) * RESOLUTION_MV,
            "ECG_III": np.array(LEAD_III_RAW, dtype=float) * RESOLUTION_MV,
        }
        expected["ECG_III"][LEAD_III_GAP] = np.nan
        async with asyncio.timeout(20):
            for signal, values in expected.items():
                while (window := await store.waveform(BED, signal, t0, t0 + 1_000_000)
                       ).values.shape[0] < values.shape[0]:  # fmt: skip
                    await asyncio.sleep(0.1)
                assert window.fs_hz == 250.0 and int(window.t_us[0]) == t0
                np.testing.assert_allclose(window.values, values, atol=0.0005)
        assert BED in engine.router.beds  # the bed the engine follows, as a gateway's


@needs_mosquitto
async def test_a_multiplexed_array_that_cannot_be_read_is_answered_naming_the_field(
    listener: Listener,
) -> None:
    good = ma_rows(ECG_RAW, LEAD_III_RAW, [1] * len(ECG_RAW))
    rows = good.split("~")
    ragged = "~".join([*rows[:10], rows[10].rsplit("^", 1)[0], *rows[11:]])
    cases = [
        # (message, ERR location, words of its text)
        (ma_message("ME0", value=ragged), "OBX^1^5", "sample instant 11 has 2 values"),
        (ma_message("ME1", value=good.replace("^1~", "^x~", 1)), "OBX^1^5",
         "not a list of numbers"),
        (ma_message("ME2", codes=MA_CODES), "OBX^1^5", "3 channels, OBX-3 names 2"),
        (ma_message("ME3", codes="131330^MDC_ECG_ELEC_POTL_II^MDC"), "OBX^1^5",
         "3 channels, OBX-3 names 1"),
        (ma_message("ME4", codes=f"{MA_CODES}~131330^MDC_ECG_ELEC_POTL_II^MDC"), "OBX^1^3",
         "ECG_II named twice"),
        (ma_message("ME5", value=""), "OBX^1^5", "no samples"),
        (replace_obx(ma_message("ME6"), "2", 5, "50"), "OBX^1^5", "sample rate 50 Hz"),
        (replace_obx(ma_message("ME7"), "3", 6, "266016^MDC_DIM_MMHG^MDC"), "OBX^1^6",
         "expected mV"),
        (replace_obx(ma_message("ME8"), "2", 4, "9"), "OBX^1^4", "no MDC_ATTR_SAMP_RATE"),
    ]  # fmt: skip
    for i, (text, where, words) in enumerate(cases):
        (answer,) = await send(listener.port, text)
        strict(answer.replace("\n", "\r"))
        assert msa(answer)[0] == "AE", (i, answer)
        found = errs(answer)
        assert any(loc == where and words in why for loc, _, why in found), (i, found)
    assert listener.counts.wave_frames == 0 and listener.counts.errors == len(cases)
    # the listener goes on: a good multiplexed array after all of them is taken
    (ok,) = await send(listener.port, ma_message("ME9"))
    assert msa(ok) == ("AA", "ME9"), errs(ok)
    assert listener.counts.wave_frames == 2


# --- capture files and their replay -------------------------------------------------------------


def test_a_capture_reads_as_framed_or_as_text_and_its_times_move() -> None:
    second = with_msh(EXAMPLE, control="PCD0002")
    framed = b"".join(hl7.frame(m) for m in (EXAMPLE, second)) + b"\n"
    assert hl7.read_capture(framed) == [EXAMPLE, second]
    # a text capture: lines end in LF or CRLF, blank lines between messages
    text = (EXAMPLE.replace("\r", "\n") + "\n" + second.replace("\r", "\r\n")).encode()
    assert hl7.read_capture(text) == [EXAMPLE, second]
    for bad, what in (
        (b"hello\n" + EXAMPLE.encode(), "before the first MSH"),
        (hl7.frame(EXAMPLE)[:-2], "without its end"),
        (b"junk" + hl7.frame(EXAMPLE), "outside an MLLP frame"),
        (EXAMPLE.encode() + b"\xff\xfe", "not UTF-8"),
    ):
        with pytest.raises(ValueError, match=what):
            hl7.read_capture(bad)
    # every date/time of the message moves by the offset; nothing else changes
    hour_us = 3_600_000_000
    moved = hl7.shift_times(EXAMPLE, hour_us)
    back = read_pcd01(hl7.parse(moved), SITE, Counts())
    times = sorted(back.by_time)
    assert times == [T_NIBP + hour_us, T_0 + hour_us]
    msh = hl7.parse(moved).msh
    assert hl7.parse_ts(msh.field(7)) == hl7.parse_ts(hl7.parse(EXAMPLE).msh.field(7)) + hour_us
    unmoved = [s for s in moved.split("\r") if not s.startswith(("MSH", "OBR", "OBX"))]
    assert unmoved == [s for s in EXAMPLE.split("\r") if not s.startswith(("MSH", "OBR", "OBX"))]


@needs_mosquitto
async def test_a_capture_replays_through_the_listener_at_the_present_time(
    broker: Mosquitto, tmp_path: Path
) -> None:
    import os

    capture = tmp_path / "capture.hl7"
    in_error = replace_obx(with_msh(EXAMPLE, control="PCD0002"), "3", 5, "seventy-two")
    capture.write_bytes(b"".join(hl7.frame(m) for m in (EXAMPLE, in_error)))
    env = {**os.environ, "EICU_HL7_SITE": SITE, "EICU_MQTT_URL": broker.url}
    async with numerics(broker) as seen:
        before_us = time.time_ns() // 1000
        code, out, err = await replay(env, str(capture), "--now")
        assert code == 1, err.decode()  # one message was not accepted
        frames = await seen.wait_for(2)
    lines = [line.split("\t") for line in out.decode().splitlines()]
    assert [line[:3] for line in lines] == [["1", "PCD0001", "AA"], ["2", "PCD0002", "AE"]]
    assert "not a number" in lines[1][3]
    # the first message's time is now: its observations keep their distance to it
    newest = max(f.ts_us for f in frames)
    assert before_us - 60_000_000 <= newest <= time.time_ns() // 1000 + 1_000
    assert {f.ts_us for f in frames} == {newest, newest - (T_0 - T_NIBP)}
    assert "replayed 2 messages, 1 not accepted" in err.decode()
    # a capture that cannot be read is named, and nothing starts
    capture.write_bytes(b"not a capture")
    code, _, err = await replay(env, str(capture))
    assert code == 2 and "before the first MSH" in err.decode()


async def replay(env: dict[str, str], *args: str) -> tuple[int, bytes, bytes]:
    """``eicu hl7 listen --replay ARGS``: its exit code, stdout and stderr (killed after 60 s,
    never left running)."""
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eicu.cli", "hl7", "listen", "--replay", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


# --- device identity ----------------------------------------------------------------------------


def test_the_monitor_is_named_by_the_mds_obx18_else_prt10() -> None:
    from ingest.hl7 import device_of

    assert device_of(hl7.parse(EXAMPLE)) == ("0123456789ABCDEF", "EUI-64")
    # the universal id and its type, as HD components 3 and 4
    universal = EXAMPLE.replace("|0123456789ABCDEF^EUI-64\r", "|^^0011223344556677^EUI-64\r")
    assert device_of(hl7.parse(universal)) == ("0011223344556677", "EUI-64")
    # a kind the bed status could not carry (a control character) is left out, the id kept
    odd = EXAMPLE.replace("|0123456789ABCDEF^EUI-64\r", "|0123456789ABCDEF^EUI\x0764\r")
    assert device_of(hl7.parse(odd)) == ("0123456789ABCDEF", "")
    # without OBX-18: PRT-10 (participation device, HL7 2.7 and later)
    bare = EXAMPLE.replace("|0123456789ABCDEF^EUI-64\r", "\r")
    assert device_of(hl7.parse(bare)) is None
    with_prt = bare.replace("\rOBR|", "\rPRT|1|UC||EQUIP||||||AABBCCDDEEFF0011^EUI-64\rOBR|")
    assert device_of(hl7.parse(with_prt)) == ("AABBCCDDEEFF0011", "EUI-64")


@needs_mosquitto
async def test_the_bed_status_names_its_monitor_once_per_change(
    broker: Mosquitto, listener: Listener
) -> None:
    topic = wire.status_topic(BED)
    (answer,) = await send(listener.port, EXAMPLE)
    assert msa(answer)[0] == "AA"
    (answer,) = await send(listener.port, with_msh(EXAMPLE, control="PCD0002"))
    assert msa(answer)[0] == "AA"
    swapped = with_msh(EXAMPLE, control="PCD0003").replace(
        "0123456789ABCDEF^EUI-64\r", "FEDCBA9876543210^EUI-64\r"
    )
    (answer,) = await send(listener.port, swapped)
    assert msa(answer)[0] == "AA"
    # a subscriber that comes later gets the retained status: the newest monitor
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="hl7-status-sub") as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(client.messages))
    assert message.retain and isinstance(message.payload, bytes)
    status = wire.decode(topic, message.payload)
    assert isinstance(status, StatusFrame) and status.state == "online"
    assert status.device == ("FEDCBA9876543210", "EUI-64")
