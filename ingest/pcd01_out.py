"""IHE PCD-01 out: the stored numerics of every bed as HL7 v2.6 ``ORU^R01`` messages over MLLP,
for a downstream system that wants them (an EHR's flowsheet, a research feed).

The store is the source (``Store.numerics``, every bed's values by device time), so what is sent
is what was stored, late data included up to the forwarder's delay: :class:`Forwarder` reads the
window from its cursor to ``delay_s`` before now, sends one message per bed and measurement time
in time order over one MLLP connection, waits for each acknowledgement, and moves its cursor
(kept in a file, written atomically) only once the whole window is taken. ``AA`` is taken; ``AE``
(the receiver finds the message in error) is counted, logged and passed over; ``AR``, a lost
connection or no answer is tried again with backoff, the same message. MSH-10 is derived from
the bed and time, so a message sent again after a restart carries the same control id and the
receiver can drop the repeat.

The message: MSH (profile ``IHE_PCD_001``), PID (the bed's admitted patient, when one is), PV1-3
``site^^bed``, OBR (OBR-7 the measurement time) and one OBX per value: ``NM`` with the MDC code
of the parameter (LOINC where it has no MDC code), the UCUM unit, OBX-11 ``R``, OBX-14 the
time; a value the device marked missing is sent as status ``X`` without a value. Parameters
with neither code (categorical observations) are not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from eicu import hl7
from eicu.backoff import Backoff
from eicu.codes import BY_KEY, Parameter
from eicu.errors import StorageUnavailable
from eicu.models import BedKey
from eicu.store.base import NumericSample, Store

log = logging.getLogger(__name__)

PROFILE: Final = "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"
OBR_SERVICE: Final = "182777000^monitoring of patient^SNOMED-CT"
MAX_WINDOW_US: Final = 60_000_000  # read at most this much store time at once
PatientOf = Callable[[BedKey], Awaitable[tuple[str, str] | None]]


def code_of(param: Parameter) -> str | None:
    """OBX-3 of a parameter: its MDC code, else its LOINC code; None when it has neither."""
    if param.mdc_code is not None and param.mdc_ref:
        return f"{param.mdc_code}^{param.mdc_ref}^MDC"
    if param.loinc:
        return f"{param.loinc}^{hl7.Encoding().escape_text(param.name)}^LN"
    return None


def control_id(bed: BedKey, ts_us: int) -> str:
    return hashlib.sha256(f"{bed}|{ts_us}".encode()).hexdigest()[:20]


def oru_r01(
    bed: BedKey,
    ts_us: int,
    values: Sequence[tuple[str, float | None]],
    now_us: int,
    patient: tuple[str, str] | None = None,
) -> str | None:
    """One ``ORU^R01`` for the values of ``bed`` measured at ``ts_us`` (None: nothing here has
    a code to send)."""
    esc = hl7.Encoding().escape_text
    at = hl7.format_ts(ts_us)
    obx: list[str] = []
    for key, value in values:
        param = BY_KEY.get(key)
        code = code_of(param) if param is not None else None
        if param is None or code is None:
            continue
        n = len(obx) + 1
        unit = esc(param.unit)
        if value is None:
            obx.append(f"OBX|{n}|NM|{code}|1.0.0.{n}||{unit}^{unit}^UCUM|||||X|||{at}")
        else:
            obx.append(f"OBX|{n}|NM|{code}|1.0.0.{n}|{value:g}|{unit}^{unit}^UCUM|||||R|||{at}")
    if not obx:
        return None
    pid = "PID|1"
    if patient is not None:
        mrn, name = patient
        given, _, family = name.rpartition(" ")
        pid = f"PID|1||{esc(mrn)}^^^{esc(bed.site)}^MR||{esc(family)}^{esc(given)}"
    cid = control_id(bed, ts_us)
    segments = [
        f"MSH|^~\\&|EICU||||{hl7.format_ts(now_us)}||ORU^R01^ORU_R01|{cid}|P|2.6|||AL|NE||"
        f"UNICODE UTF-8|||{PROFILE}",
        pid,
        f"PV1|1|I|{esc(bed.site)}^^{esc(bed.bed)}",
        f"OBR|1||{cid}^EICU|{OBR_SERVICE}|||{at}",
        *obx,
    ]
    return "\r".join(segments) + "\r"


@dataclass
class ForwardCounts:
    messages: int = 0  # taken by the receiver (AA)
    refused: int = 0  # answered AE: passed over
    retries: int = 0  # AR, lost connections, no answer


class Forwarder:
    """Sends the stored numerics to ``host``:``port`` (module docstring). ``state_file`` keeps
    the cursor (device time, microseconds); a new forwarder starts ``start_back_s`` before
    now."""

    def __init__(
        self,
        store: Store,
        host: str,
        port: int,
        state_file: Path,
        *,
        delay_s: float = 5.0,
        poll_s: float = 1.0,
        timeout_s: float = 10.0,
        start_back_s: float = 60.0,
        patient_of: PatientOf | None = None,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.store = store
        self.tls = tls
        self.host, self.port = host, port
        self.state_file = Path(state_file)
        self.delay_us = int(delay_s * 1e6)
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.patient_of = patient_of
        self.counts = ForwardCounts()
        self._backoff = Backoff(retry_min_s, retry_max_s)
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.cursor_us = self._load(int((time.time() - start_back_s) * 1e6))

    def _load(self, default_us: int) -> int:
        try:
            return int(json.loads(self.state_file.read_text())["cursor_us"])
        except FileNotFoundError:
            return default_us
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.state_file}: not a forwarder state ({exc!r})") from exc

    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump({"cursor_us": self.cursor_us}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_file)

    async def run(self) -> None:
        """Forward until cancelled."""
        try:
            while True:
                if not await self.step():
                    await asyncio.sleep(self.poll_s)
        finally:
            await self._close()

    async def step(self) -> bool:
        """Send the next window; True when there may be more to send at once."""
        target_us = time.time_ns() // 1000 - self.delay_us
        end_us = min(target_us, self.cursor_us + MAX_WINDOW_US)
        if end_us <= self.cursor_us:
            return False
        try:
            samples = await self.store.numerics(self.cursor_us, end_us)
        except StorageUnavailable as exc:
            log.warning("PCD-01 out: the store cannot be read now (%s)", exc)
            await asyncio.sleep(self._backoff.next_s())
            return False
        for bed, ts_us, values in _grouped(samples):
            patient = await self._patient(bed)
            text = oru_r01(bed, ts_us, values, time.time_ns() // 1000, patient)
            if text is not None:
                await self._deliver(text)
        self.cursor_us = end_us
        self._save()
        return end_us < target_us  # a window cut short: more is due now

    async def _patient(self, bed: BedKey) -> tuple[str, str] | None:
        if self.patient_of is None:
            return None
        try:
            return await self.patient_of(bed)
        except Exception as exc:
            log.warning("PCD-01 out: patient of %s not read (%r)", bed, exc)
            return None

    async def _deliver(self, text: str) -> None:
        """Send until the receiver answers AA or AE."""
        while True:
            try:
                code, detail = await asyncio.wait_for(self._exchange(text), self.timeout_s)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, hl7.Hl7Error) as exc:
                await self._close()
                code, detail = "", repr(exc)
            if code in ("AA", "CA"):
                self.counts.messages += 1
                self._backoff.reset()
                return
            if code in ("AE", "CE"):
                self.counts.refused += 1
                log.error("PCD-01 out: %s:%d found a message in error: %s", self.host,
                          self.port, detail)  # fmt: skip
                return
            self.counts.retries += 1
            delay_s = self._backoff.next_s()
            log.warning("PCD-01 out: %s:%d %s; again in %.1f s", self.host, self.port,
                        detail or f"answered {code}", delay_s)  # fmt: skip
            await asyncio.sleep(delay_s)

    async def _exchange(self, text: str) -> tuple[str, str]:
        if self._conn is None:
            self._conn = await asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.tls,
                server_hostname=self.host if self.tls is not None else None,
            )
        reader, writer = self._conn
        writer.write(hl7.frame(text))
        await writer.drain()
        raw = await reader.readuntil(hl7.END_BLOCK)
        answer = raw.removeprefix(hl7.START_BLOCK).removesuffix(hl7.END_BLOCK)
        msa = hl7.parse(answer.decode("utf-8", errors="replace")).first("MSA")
        if msa is None:
            return "", "an answer without MSA"
        return msa.component(1), msa.component(3)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn[1].close()
            with contextlib.suppress(OSError):
                await conn[1].wait_closed()


def _grouped(
    samples: Sequence[NumericSample],
) -> list[tuple[BedKey, int, list[tuple[str, float | None]]]]:
    """Samples as (bed, time, values) in time order."""
    by: dict[tuple[int, BedKey], list[tuple[str, float | None]]] = {}
    for s in samples:
        by.setdefault((s.ts_us, s.bed), []).append((s.key, s.value))
    return [
        (bed, ts, values)
        for (ts, bed), values in sorted(by.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))
    ]
