"""IHE PCD-04 out: every change of an alarm as an ``ORU^R40`` over MLLP to the hospital's alarm
manager, through the durable outbox. The receiver is python-hl7's MLLP server (not the
project's own code); every message is validated by hl7apy at its strict level; the receiver
refuses, rejects and is away in turn, and nothing is lost or sent twice."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from alerting.channels import MllpChannel, patients_from
from alerting.escalation import Dispatcher, Rota
from alerting.outbox import Outbox
from alerting.pcd04 import MDC_EVENT, control_id
from eicu import hl7
from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority
from eicu.config import AlertingSettings, IngestSettings, MqttSettings
from eicu.devservices import Mosquitto, free_port
from eicu.models import BedKey
from eicu.patients import Patient
from eicu.store import Store
from ingest.engine import Engine
from simulators.beds import SynthGroup
from tests.hl7_peer import VALIDATION_LEVEL, Receiver, hl7apy_parser
from tests.pki import TestCa
from tests.vt_bed import feed_until

BED = BedKey("icu1", "bed1")
ONSET_US = 1_780_000_000_000_000


def strict(text: str) -> object:
    """The message validated by hl7apy at its strict level. hl7apy has no ORU_R40 structure
    (PCD-04's), so it checks the message as the ORU_R01 structure it shares (MSH, PID, PV1,
    OBR, OBX) with every field's data type and required fields."""
    as_r01 = text.replace("ORU^R40^ORU_R40", "ORU^R01^ORU_R01")
    message = hl7apy_parser.parse_message(as_r01, validation_level=VALIDATION_LEVEL.STRICT)
    message.validate()
    return message


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


def event(state: AlarmState, dt_us: int = 0, reason: str = "", **kw: object) -> AlarmEvent:
    return AlarmEvent(
        alarm_id=f"{BED}/VTACH/{ONSET_US}", bed=BED, kind="VTACH", priority=Priority.HIGH,
        category=Category.PHYSIOLOGICAL, state=state, time_us=ONSET_US + dt_us, reason=reason,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def facet(text: str, n: int) -> str:
    """OBX-5 of the OBX whose sub-id is facet ``n``."""
    for seg in hl7.parse(text).all("OBX"):
        if seg.field(4) == f"1.0.0.0.{n}":
            return seg.field(5)
    raise AssertionError(f"no facet {n}")


async def until(check: object, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_every_change_of_an_alarm_reaches_the_alarm_manager_as_pcd04(
    tmp_path: Path, receiver: Receiver, store_of_each_kind: Store
) -> None:
    store = store_of_each_kind
    await store.admit(Patient("4711", "Ada Li", "F", "1961-03-14", ""), BED, 1, "test", {})
    channel = MllpChannel(timeout_s=3, patient_of=patients_from(store))
    with Outbox(tmp_path / "outbox.db") as box:
        dispatcher = Dispatcher(
            Rota(sites={}), box, {"mllp": channel}, pcd04=[receiver.address], poll_s=0.05
        )
        await dispatcher.handle(event(AlarmState.ACTIVE, reason="started: present for 5 s"))
        await dispatcher.handle(event(AlarmState.ACKNOWLEDGED, 2_000_000, actor="dr-chen"))
        await dispatcher.handle(event(AlarmState.CLEARED, 9_000_000))
        await until(lambda: len(receiver.received) == 3)
        await dispatcher.drain()
        received = sorted(receiver.received, key=lambda m: facet(m, 3) != "start")
        for text in received:
            strict(text)
            msg = hl7.parse(text)
            assert msg.message_type[:2] == ("ORU", "R40")
            assert msg.msh.field(21).startswith("IHE_PCD_ACM_001^IHE PCD^")
            pid, pv1, obr = (msg.first(s) for s in ("PID", "PV1", "OBR"))
            assert pid is not None and pid.component(3, 1) == "4711"
            assert pid.component(5, 1) == "Li" and pid.component(5, 2) == "Ada"
            assert pv1 is not None and pv1.field(3) == "icu1^^bed1"
            assert obr is not None and obr.component(3, 1) == f"{BED}/VTACH/{ONSET_US}"
            assert obr.field(4) == "196616^MDC_EVT_ALARM^MDC"
            code = facet(text, 1).split("^")
            assert code[:3] == [MDC_EVENT["VTACH"][0], MDC_EVENT["VTACH"][1], "MDC"]
            assert code[3:] == ["VTACH", "VTACH", "99EICU"]
            assert (facet(text, 6), facet(text, 7)) == ("PH", "SP")
        phases = {facet(t, 3): (facet(t, 4), facet(t, 5)) for t in received}
        assert phases == {
            "start": ("active", "enabled"),
            "update": ("active", "alert-acknowledged"),
            "end": ("inactive", "enabled"),
        }
        receipts = [r for r in box.receipts() if r.channel == "mllp"]
        assert len(receipts) == 3 and all(r.delivered_us is not None for r in receipts)
        # the control id is the notification's: a message sent again can be told a repeat
        ids = {hl7.parse(t).control_id for t in received}
        assert ids == {control_id(r.key) for r in receipts}
        # handled again (a second delivery of the same events): nothing sent again
        await dispatcher.handle(event(AlarmState.CLEARED, 9_000_000))
        await dispatcher.drain()
        assert len(receiver.received) == 3
        await dispatcher.close()


async def test_a_receiver_away_or_rejecting_gets_the_change_later_and_one_in_error_refuses_it(
    tmp_path: Path,
) -> None:
    port = free_port()
    channel = MllpChannel(timeout_s=2)
    rota = Rota(sites={}, retry_min_s=0.05, retry_max_s=0.2)
    with Outbox(tmp_path / "outbox.db") as box:
        dispatcher = Dispatcher(rota, box, {"mllp": channel}, pcd04=[f"127.0.0.1:{port}"],
                                poll_s=0.05)  # fmt: skip
        runner = asyncio.create_task(dispatcher.run(asyncio.Queue()))
        try:
            # nobody listens: the change waits in the outbox, retried
            await dispatcher.handle(event(AlarmState.ACTIVE, reason="started"))
            await until(lambda: any(r.attempts >= 2 for r in box.receipts()))
            assert all(r.delivered_us is None and r.open for r in box.receipts())
            # the alarm manager comes up; first it rejects (AR: try again), drops a connection,
            # then takes it
            receiver = await Receiver(plan=["AR", "drop"]).start(port)
            try:
                await until(lambda: all(r.delivered_us for r in box.receipts()), timeout_s=15)
                assert len(receiver.received) == 3
                assert len({hl7.parse(t).control_id for t in receiver.received}) == 1
                (receipt,) = box.receipts()
                assert receipt.attempts >= 4
                # a message the receiver finds in error (AE) is given up, not sent again
                receiver.plan = ["AE"]
                await dispatcher.handle(event(AlarmState.CLEARED, 1_000_000))
                await until(lambda: any(r.failed_us for r in box.receipts()))
                assert len(receiver.received) == 4
                failed = [r for r in box.receipts() if r.failed_us]
                assert len(failed) == 1 and "AE" in failed[0].last_error
            finally:
                await receiver.stop()
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


@pytest.mark.broker
async def test_an_engine_reports_a_vt_bed_s_alarm_to_the_alarm_manager(
    tmp_path: Path, broker: Mosquitto, receiver: Receiver
) -> None:
    from eicu.store.sqlite import SqliteStore

    alerting = AlertingSettings(outbox_path=tmp_path / "alarms.db", pcd04=(receiver.address,))
    store = SqliteStore(tmp_path / "x.sqlite")
    engine = Engine(
        MqttSettings(port=broker.port, client_id="eicu-test"),
        IngestSettings(spool_dir=tmp_path / "spool"),
        store,
        alerting=alerting,
    )
    await store.open()
    await engine.start()
    try:
        group = SynthGroup([BedKey("s", "vt")], ["vt"], [2], time.time_ns() // 1000 - 70_000_000)

        def vt_started() -> bool:
            return any("VTACH" in facet(t, 1) and facet(t, 3) == "start" for t in receiver.received)

        await feed_until(engine, group, vt_started, timeout_s=30.0)
        for text in receiver.received:
            assert hl7.parse(text).first("PV1").field(3) == "s^^vt"  # type: ignore[union-attr]
            # nobody admitted to the bed: PID names nobody (the base standard wants PID-3 and
            # PID-5, so the rest of the message is validated with a stand-in there)
            assert "\rPID|1\r" in text
            strict(text.replace("\rPID|1\r", "\rPID|1||stand-in||stand-in\r"))
    finally:
        await engine.stop()
        await store.close()


def test_the_destinations_setting_is_checked() -> None:
    from eicu.config import Settings
    from eicu.errors import ConfigError

    env = {"EICU_PCD04_DESTINATIONS": "am1.hosp:2575, am2.hosp:2576"}
    assert Settings.from_env(env).alerting.pcd04 == ("am1.hosp:2575", "am2.hosp:2576")
    with pytest.raises(ConfigError, match="EICU_PCD04_DESTINATIONS"):
        Settings.from_env({"EICU_PCD04_DESTINATIONS": "am1.hosp"})


def _receiver_tls(ca: TestCa, client_ca: TestCa | None = None) -> ssl.SSLContext:
    """An alarm manager's server context (certificate for 127.0.0.1); with ``client_ca`` it
    asks for a client certificate that CA signed."""
    server = ca.server("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)
    if client_ca is not None:
        context.load_verify_locations(client_ca.cert)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def test_pcd04_goes_over_tls_to_a_verified_alarm_manager_only(tmp_path: Path) -> None:
    from eicu.config import MllpClientTls

    ca = TestCa(tmp_path / "pki")
    client = ca.client("eicu-hub")
    tls = MllpClientTls(ca.cert, client.cert, client.key).context()
    receiver = await Receiver(tls=_receiver_tls(ca, client_ca=ca)).start()
    try:
        async with paging_to(receiver, tls, tmp_path / "outbox.db") as box:
            await until(lambda: all(r.delivered_us for r in box.receipts()))
            (text,) = receiver.received
            assert hl7.parse(text).message_type[:2] == ("ORU", "R40")
            assert facet(text, 3) == "start"
    finally:
        await receiver.stop()
    # a receiver whose certificate another CA signed is never sent the alarm: it is retried,
    # and the receipt names the verification
    impostor = await Receiver(tls=_receiver_tls(TestCa(tmp_path / "other", "another CA"))).start()
    try:
        async with paging_to(impostor, tls, tmp_path / "outbox2.db") as box:
            await until(lambda: any(r.attempts >= 2 for r in box.receipts()))
            (receipt,) = box.receipts()
            assert receipt.open and receipt.delivered_us is None
            assert "CERTIFICATE_VERIFY_FAILED" in receipt.last_error
            assert impostor.received == []
    finally:
        await impostor.stop()


@contextlib.asynccontextmanager
async def paging_to(receiver: Receiver, tls: ssl.SSLContext, outbox: Path) -> AsyncIterator[Outbox]:
    """A dispatcher sending one alarm's start over MLLP with ``tls`` to ``receiver``, running
    (retries quick) while the block runs; its outbox."""
    rota = Rota(sites={}, retry_min_s=0.05, retry_max_s=0.2)
    with Outbox(outbox) as box:
        dispatcher = Dispatcher(rota, box, {"mllp": MllpChannel(timeout_s=3, tls=tls)},
                                pcd04=[receiver.address], poll_s=0.05)  # fmt: skip
        runner = asyncio.create_task(dispatcher.run(asyncio.Queue()))
        try:
            await dispatcher.handle(event(AlarmState.ACTIVE, reason="started"))
            yield box
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


def test_the_outbound_tls_settings_name_what_is_wrong(tmp_path: Path) -> None:
    from eicu.config import Settings
    from eicu.errors import ConfigError

    ca = TestCa(tmp_path / "pki")
    client = ca.client("eicu-hub")
    assert Settings.from_env({}).alerting.mllp_tls is None
    on = Settings.from_env({"EICU_HL7_OUT_TLS": "on"}).alerting.mllp_tls
    assert on is not None and on.ca_file is None  # the system's trusted CAs
    env = {
        "EICU_HL7_OUT_TLS_CA_FILE": str(ca.cert),
        "EICU_HL7_OUT_TLS_CERT_FILE": str(client.cert),
        "EICU_HL7_OUT_TLS_KEY_FILE": str(client.key),
    }
    named = Settings.from_env(env).alerting.mllp_tls
    assert named is not None and named.cert_file == client.cert
    bad = [
        (
            {**env, "EICU_HL7_OUT_TLS_CA_FILE": str(tmp_path / "nope.pem")},
            "EICU_HL7_OUT_TLS_CA_FILE",
        ),
        ({"EICU_HL7_OUT_TLS_CERT_FILE": str(client.cert)}, "EICU_HL7_OUT_TLS_KEY_FILE"),
        ({**env, "EICU_HL7_OUT_TLS": "off"}, "EICU_HL7_OUT_TLS"),
        ({**env, "EICU_HL7_OUT_TLS_CA_FILE": str(client.key)}, "EICU_HL7_OUT_TLS_CA_FILE"),
        ({**env, "EICU_HL7_OUT_TLS_KEY_FILE": str(ca.cert)}, "EICU_HL7_OUT_TLS_CERT_FILE"),
    ]
    for wrong, key in bad:
        with pytest.raises(ConfigError, match=key):
            Settings.from_env(wrong)
