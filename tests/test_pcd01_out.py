"""IHE PCD-01 out: the stored numerics sent as ``ORU^R01`` over MLLP to python-hl7's MLLP server
(not the project's own), every message validated by hl7apy at its strict level and read back by
the project's own PCD-01 reader to the values stored; the receiver away, rejecting and refusing;
a forwarder restarted from its cursor sends nothing twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from eicu import hl7
from eicu.devservices import free_port
from eicu.models import Batch, BedKey, NumericsFrame
from eicu.patients import Patient
from eicu.store import Store
from ingest.hl7 import Counts, read_pcd01
from ingest.pcd01_out import Forwarder, control_id, oru_r01
from tests.hl7_peer import Receiver, strict

BED = BedKey("icu1", "bed1")
OTHER = BedKey("icu1", "bed2")


async def stored(store: Store, t0_us: int, n: int) -> list[NumericsFrame]:
    frames = []
    for i in range(n):
        ts = t0_us + i * 1_000_000
        frames.append(NumericsFrame(BED, i + 1, ts, {"HR": 80.0 + i, "SPO2": 97.0, "TEMP": None}))
        frames.append(NumericsFrame(OTHER, i + 1, ts, {"RR": 16.0, "ACVPU": 0.0}))
    await store.write(Batch(numerics=frames))
    return frames


async def forward_all(forwarder: Forwarder, receiver: Receiver, timeout_s: float) -> None:
    """Step the forwarder until it has nothing more to send now; then close both ends."""
    try:
        async with asyncio.timeout(timeout_s):
            while await forwarder.step():
                pass
    finally:
        await forwarder._close()
        await receiver.stop()


async def test_stored_numerics_reach_the_receiver_as_pcd01_once(
    tmp_path: Path, store_of_each_kind: Store
) -> None:
    store = store_of_each_kind
    await store.admit(Patient("4711", "Ada Li", "F", None, ""), BED, 1, "test", {})
    t0 = (time.time_ns() // 1_000_000) * 1000 - 30_000_000  # device times are in ms
    await stored(store, t0, 5)

    async def patient_of(bed: BedKey) -> tuple[str, str] | None:
        return ("4711", "Ada Li") if bed == BED else None

    port = free_port()
    receiver = await Receiver(plan=["AR", "drop"]).start(port)
    state = tmp_path / "cursor.json"
    forwarder = Forwarder(
        store, "127.0.0.1", port, state, delay_s=1.0, start_back_s=60, patient_of=patient_of,
        retry_min_s=0.05, retry_max_s=0.1,
    )  # fmt: skip
    await forward_all(forwarder, receiver, timeout_s=20)
    assert forwarder.counts.messages == 10 and forwarder.counts.retries == 2
    texts = receiver.received[2:]  # the first two were answered AR and dropped, then sent again
    assert receiver.received[0] == receiver.received[1] == texts[0]
    values: dict[tuple[BedKey, int], dict[str, float | None]] = {}
    for text in texts:
        if "PID|1||" in text:  # the admitted patient's; the other bed's names nobody
            strict(text)
        else:
            strict(text.replace("\rPID|1\r", "\rPID|1||stand-in||stand-in\r"))
        message = hl7.parse(text)
        found = read_pcd01(message, "icu1", Counts())
        for ts, vals in found.by_time.items():
            values[(found.bed, ts)] = vals
        assert message.control_id == control_id(found.bed, next(iter(found.by_time)))
    assert values[(BED, t0)] == {"HR": 80.0, "SPO2": 97.0, "TEMP": None}
    assert values[(BED, t0 + 4_000_000)]["HR"] == 84.0
    assert values[(OTHER, t0)] == {"RR": 16.0}  # ACVPU has no code to send it by
    # in time order
    times = [next(iter(read_pcd01(hl7.parse(t), "icu1", Counts()).by_time)) for t in texts]
    assert times == sorted(times)

    # a new forwarder from the same cursor sends nothing again; new data goes out
    receiver = await Receiver().start(port)
    again = Forwarder(store, "127.0.0.1", port, state, delay_s=0.0)
    assert again.cursor_us == forwarder.cursor_us
    try:
        await stored(store, (again.cursor_us // 1000 + 1) * 1000, 1)
        async with asyncio.timeout(10):
            while await again.step():
                pass
    finally:
        await again._close()
        await receiver.stop()
    assert again.counts.messages == 2 and len(receiver.received) == 2


async def test_a_message_the_receiver_finds_in_error_is_counted_and_passed_over(
    tmp_path: Path, store_of_each_kind: Store
) -> None:
    t0 = (time.time_ns() // 1_000_000) * 1000 - 30_000_000  # device times are in ms
    await stored(store_of_each_kind, t0, 1)
    receiver = await Receiver(plan=["AE"]).start()
    forwarder = Forwarder(store_of_each_kind, "127.0.0.1", receiver.port, tmp_path / "c.json",
                          delay_s=1.0)  # fmt: skip
    await forward_all(forwarder, receiver, timeout_s=10)
    assert (forwarder.counts.refused, forwarder.counts.messages) == (1, 1)


def test_a_message_carries_only_coded_values() -> None:
    assert oru_r01(BED, 1_780_000_000_000_000, [("ACVPU", 0.0)], 1) is None
    text = oru_r01(BED, 1_780_000_000_000_000, [("FIO2", 40.0)], 1)
    assert text is not None and "|3150-0^inspired oxygen fraction^LN|" in text
    with pytest.raises(ValueError, match="not a forwarder state"):
        junk = Path(__file__).parent / "data" / "hl7" / "README.md"
        Forwarder(None, "127.0.0.1", 1, junk)  # type: ignore[arg-type]


async def test_the_forward_command_sends_and_stops_on_sigterm(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    import os
    import signal
    import subprocess
    import sys

    t0 = (time.time_ns() // 1_000_000) * 1000 - 20_000_000
    await stored(store, t0, 3)
    receiver = await Receiver().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EICU_")}
    env.update(
        EICU_DATABASE_URL=db_url, EICU_PCD01_DESTINATION=receiver.address,
        EICU_PCD01_STATE_FILE=str(tmp_path / "cursor.json"), EICU_PCD01_DELAY_S="1",
    )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "eicu.cli", "hl7", "forward"], env=env, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            while len(receiver.received) < 6:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await receiver.stop()
    assert proc.returncode == 0, err
    assert "6 PCD-01 messages taken, 0 refused" in err
    bad = subprocess.run(
        [sys.executable, "-m", "eicu.cli", "hl7", "forward"],
        env={**env, "EICU_PCD01_DESTINATION": "nowhere"}, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "EICU_PCD01_DESTINATION" in bad.stderr


async def test_the_forwarder_speaks_tls_to_a_receiver_it_verifies(
    tmp_path: Path, store_of_each_kind: Store
) -> None:
    import ssl

    from eicu.config import MllpClientTls
    from tests.pki import TestCa

    t0 = (time.time_ns() // 1_000_000) * 1000 - 30_000_000  # device times are in ms
    await stored(store_of_each_kind, t0, 2)
    ca = TestCa(tmp_path / "pki")
    server = ca.server("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)
    receiver = await Receiver(tls=context).start()
    tls = MllpClientTls(ca_file=ca.cert).context()
    forwarder = Forwarder(store_of_each_kind, "127.0.0.1", receiver.port, tmp_path / "c.json",
                          delay_s=1.0, tls=tls)  # fmt: skip
    await forward_all(forwarder, receiver, timeout_s=10)
    assert forwarder.counts.messages == 4 and len(receiver.received) == 4
    assert all(hl7.parse(t).message_type[:2] == ("ORU", "R01") for t in receiver.received)
