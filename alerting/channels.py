"""Delivery channels: MQTT back to the remote ICU, webhook, e-mail over SMTP, and HL7 v2 over
MLLP (IHE PCD-04) to the hospital's alarm manager.

Every channel has one interface, ``async send(notification) -> Receipt``: it returns when the
next hop has taken responsibility for the message (the broker's PUBACK at QoS 1, an HTTP 2xx, the
SMTP server's acceptance) and raises :class:`~eicu.errors.DeliveryError` otherwise, with
``retryable`` telling an outage from a refusal. Every message carries the notification's
idempotency key (in the MQTT payload, the ``Idempotency-Key`` header, the e-mail's Message-ID
and ``X-Eicu-Idempotency-Key`` header) so a receiver can drop a repeat. E-mail headers are never
folded: a key that cannot stand on one header line as printable ASCII is sent as ``sha256:`` and
its digest (:func:`email_key_header`); the body always carries the key in full.

Only the alarm's essentials leave the engine (:data:`ESSENTIALS`): where, what, how urgent, when.
No patient name or other identifier is ever put in a message, except in PCD-04 to the hospital's
own alarm manager, whose routing needs the patient (:class:`MllpChannel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import re
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from typing import TYPE_CHECKING, Final, Protocol

import aiohttp

from eicu import bus, hl7, wire
from eicu.alarm_model import Channel, Notification
from eicu.backoff import Backoff
from eicu.clock import SYSTEM_CLOCK, Clock
from eicu.config import MqttSettings, SmtpSettings
from eicu.errors import DeliveryError
from eicu.models import BedKey

if TYPE_CHECKING:
    from eicu.store.base import PatientRepository

log = logging.getLogger(__name__)
# aiomqtt warns about every publish still awaiting its acknowledgement beyond a few; a burst of
# alarm messages (a whole ward's data stale at once) keeps many in flight on purpose, and a
# failure surfaces as a DeliveryError.
_mqtt_log = logging.getLogger("alerting.channels.mqtt")
_mqtt_log.setLevel(logging.ERROR)
MQTT_INFLIGHT: Final = 256  # publishes awaiting the broker's PUBACK at once

# The body fields a message may carry; anything else in a notification's body stays inside.
ESSENTIALS: Final = (
    "type",  # "state": a change of the alarm; "page": a notification of the escalation
    "site",
    "bed",
    "kind",
    "priority",
    "category",
    "state",
    "time_us",
    "value",
    "limit",
    "role",
    "step",
    "actor",
    "reason",
    "audio_paused_until_us",
)


@dataclass(frozen=True, slots=True)
class Receipt:
    """The next hop took the notification at ``delivered_us`` after ``attempts`` tries."""

    key: str
    channel: Channel
    delivered_us: int
    attempts: int = 1
    detail: str = ""


class DeliveryChannel(Protocol):
    name: Channel

    async def send(self, notification: Notification) -> Receipt: ...

    async def close(self) -> None: ...


def essentials(notification: Notification) -> dict[str, object]:
    """The message body: the idempotency key, the alarm and recipient, the essential fields."""
    doc: dict[str, object] = {
        "v": wire.VERSION,
        "key": notification.key,
        "alarm_id": notification.alarm_id,
        "recipient": notification.recipient,
    }
    for name in ESSENTIALS:
        if name in notification.body:
            doc[name] = notification.body[name]
    return doc


# --- MQTT -------------------------------------------------------------------------------------


class MqttChannel:
    """Publishes to ``eicu/v1/{site}/{bed}/alarms`` at QoS 1; ``address`` is ``site/bed``.

    One connection is kept open and reopened after a failure. A send makes one attempt; the
    dispatcher retries from the outbox.
    """

    name: Channel = "mqtt"

    def __init__(
        self, settings: MqttSettings, *, timeout_s: float = 5.0, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._timeout_s = timeout_s
        self._client: bus.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> bus.Client:
        async with self._lock:
            if self._client is None:
                s = self._settings
                client = bus.Client(
                    s,
                    keepalive=s.keepalive_s,
                    timeout=self._timeout_s,
                    max_inflight_messages=MQTT_INFLIGHT,
                    logger=_mqtt_log,
                )
                stack = contextlib.AsyncExitStack()
                await stack.enter_async_context(client)
                self._client, self._stack = client, stack
            return self._client

    async def _drop(self) -> None:
        stack, self._client, self._stack = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(bus.MqttError, OSError, TimeoutError):
                await stack.aclose()

    async def send(self, notification: Notification) -> Receipt:
        n = notification
        try:
            bed = BedKey.parse(n.address)
        except ValueError as exc:
            raise DeliveryError("mqtt", n.key, str(exc), retryable=False) from exc
        payload = json.dumps(essentials(n), separators=(",", ":"), allow_nan=False)
        try:
            client = await asyncio.wait_for(self._connected(), self._timeout_s)
            await asyncio.wait_for(
                client.publish(wire.alarms_topic(bed), payload, qos=1), self._timeout_s
            )
        except (bus.MqttError, OSError, TimeoutError) as exc:
            await self._drop()
            raise DeliveryError("mqtt", n.key, f"{type(exc).__name__}: {exc}") from exc
        return Receipt(n.key, "mqtt", self._clock.now_us(), 1, "puback")

    async def close(self) -> None:
        await self._drop()


# --- webhook ----------------------------------------------------------------------------------


def _retryable_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def _retry_after_s(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header in its delay-seconds form; 0 when absent or
    given as a date."""
    if value is None or not value.strip().isdigit():
        return 0.0
    return float(value.strip())


class WebhookChannel:
    """POSTs the notification as JSON to ``address`` with an ``Idempotency-Key`` header.

    Connection errors, time-outs, 5xx, 408 and 429 are retried with jittered exponential backoff
    (at least the receiver's ``Retry-After``, capped at ``backoff_max_s``), up to
    ``max_attempts`` in all; any other 4xx is a refusal and is not retried.
    """

    name: Channel = "webhook"

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 4,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 8.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_attempts < 1 or timeout_s <= 0:
            raise ValueError(f"need max_attempts >= 1 and timeout_s > 0, got {max_attempts}")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_attempts = max_attempts
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def send(self, notification: Notification) -> Receipt:
        n = notification
        backoff = Backoff(self._backoff_min_s, self._backoff_max_s)
        headers = {"Idempotency-Key": n.key}
        session = self._open_session()
        attempts = 0
        while True:
            attempts += 1
            try:
                async with session.post(n.address, json=essentials(n), headers=headers) as resp:
                    status = resp.status
                    retry_after_s = _retry_after_s(resp.headers.get("Retry-After"))
                    await resp.read()
            except aiohttp.InvalidURL as exc:
                raise DeliveryError("webhook", n.key, f"bad URL {exc}", retryable=False) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
                retry_after_s = 0.0
            else:
                if 200 <= status < 300:
                    return Receipt(
                        n.key, "webhook", self._clock.now_us(), attempts, f"HTTP {status}"
                    )
                error = f"HTTP {status}"
                if not _retryable_status(status):
                    raise DeliveryError("webhook", n.key, error, retryable=False)
            if attempts >= self._max_attempts:
                raise DeliveryError("webhook", n.key, f"{error} after {attempts} attempts")
            # The receiver's Retry-After is honoured up to the longest backoff delay.
            delay_s = max(backoff.next_s(), min(retry_after_s, self._backoff_max_s))
            log.warning("webhook %s: %s; retrying in %.2f s", n.key, error, delay_s)
            await self._clock.sleep(delay_s)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --- e-mail -----------------------------------------------------------------------------------


def email_text(notification: Notification) -> tuple[str, str]:
    """Subject and plain-text body: the alarm's essentials, nothing about the patient."""
    doc = essentials(notification)
    where = f"{doc.get('site', '?')}/{doc.get('bed', '?')}"
    priority = str(doc.get("priority", "")).upper()
    subject = f"[{priority}] {doc.get('kind', 'ALARM')} {where} {doc.get('state', '')}".strip()
    lines = [f"Alarm {doc.get('kind', '')} at {where}"]
    lines.append(f"Priority: {doc.get('priority', '')}")
    lines.append(f"State: {doc.get('state', '')}")
    time_us = doc.get("time_us")
    if isinstance(time_us, int):
        when = datetime.fromtimestamp(time_us / 1e6, UTC).isoformat(timespec="seconds")
        lines.append(f"Time: {when}")
    if doc.get("value") is not None:
        limit = f" (limit {doc['limit']})" if doc.get("limit") is not None else ""
        lines.append(f"Value: {doc['value']}{limit}")
    if doc.get("role"):
        lines.append(f"Paged as: {doc['role']} (escalation step {doc.get('step', 0)})")
    lines.append(f"Alarm id: {notification.alarm_id}")
    lines.append(f"Notification: {notification.key}")
    return subject, "\n".join(lines) + "\n"


__all__ = [
    "ESSENTIALS",
    "DeliveryChannel",
    "EmailChannel",
    "MqttChannel",
    "Receipt",
    "SmtpSettings",
    "WebhookChannel",
    "email_key_header",
    "email_text",
    "essentials",
]


# RFC 5322 section 2.1.1: a line is at most 998 characters. Headers are written on one line each
# up to that (no folding: a folded key would reach a receiver changed or as encoded words).
EMAIL_POLICY: Final = SMTP_POLICY.clone(max_line_length=998)
KEY_HEADER: Final = "X-Eicu-Idempotency-Key"
_PRINTABLE_KEY = re.compile(r"[!-~]+")  # printable ASCII without spaces


def email_key_header(key: str) -> str:
    """The value of the ``X-Eicu-Idempotency-Key`` header: the key itself when it is printable
    ASCII without spaces and fits on one header line; otherwise ``sha256:`` and the hex digest
    of its UTF-8 bytes (stable, so repeats of one notification still match)."""
    if _PRINTABLE_KEY.fullmatch(key) and len(KEY_HEADER) + 2 + len(key) <= 998:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class EmailChannel:
    """Sends a plain-text e-mail through an SMTP server (in a worker thread). One attempt per
    send; a 5xx refusal is not retryable, a 4xx or a lost connection is."""

    name: Channel = "email"

    def __init__(self, settings: SmtpSettings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._settings = settings
        self._clock = clock

    def _message(self, n: Notification) -> EmailMessage:
        subject, text = email_text(n)
        msg = EmailMessage(policy=EMAIL_POLICY)
        msg["From"] = self._settings.sender
        msg["To"] = n.address
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{hashlib.sha256(n.key.encode()).hexdigest()[:32]}@eicu>"
        msg[KEY_HEADER] = email_key_header(n.key)
        msg.set_content(text)
        return msg

    def _send_blocking(self, msg: EmailMessage) -> None:
        s = self._settings
        with smtplib.SMTP(s.host, s.port, timeout=s.timeout_s) as smtp:
            if s.starttls:
                smtp.starttls()
            if s.username and s.password:
                smtp.login(s.username, s.password)
            smtp.send_message(msg)

    async def send(self, notification: Notification) -> Receipt:
        n = notification
        try:
            await asyncio.to_thread(self._send_blocking, self._message(n))
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            retryable = all(400 <= code < 500 for code in codes)
            raise DeliveryError(
                "email", n.key, f"recipient refused {codes}", retryable=retryable
            ) from exc
        except smtplib.SMTPResponseException as exc:
            retryable = not 500 <= exc.smtp_code < 600
            raise DeliveryError(
                "email", n.key, f"SMTP {exc.smtp_code}", retryable=retryable
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError("email", n.key, f"{type(exc).__name__}: {exc}") from exc
        return Receipt(n.key, "email", self._clock.now_us(), 1, "accepted")

    async def close(self) -> None:
        return None


# --- HL7 v2 over MLLP: IHE PCD-04 to an alarm manager -------------------------------------------

# Where a bed's admitted patient is looked up for PID (None: no patient), e.g. from the store.
PatientOf = Callable[[BedKey], Awaitable[tuple[str, str] | None]]
MLLP_ANSWER_MAX: Final = 1024 * 1024


def parse_host_port(address: str) -> tuple[str, int]:
    """``host:port`` of an MLLP destination; ValueError naming what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"an MLLP destination is host:port, got {address!r}")
    return host, int(port)


def patients_from(repo: PatientRepository, ttl_s: float = 5.0) -> PatientOf:
    """A bed's admitted patient (MRN, name) from the patient tables, read at most every
    ``ttl_s`` seconds."""
    cache: dict[BedKey, tuple[str, str]] = {}
    read_at = [-math.inf]

    async def patient_of(bed: BedKey) -> tuple[str, str] | None:
        now = time.monotonic()
        if now - read_at[0] > ttl_s:
            stays = await repo.encounters()
            cache.clear()
            cache.update({s.bed: (s.patient.mrn, s.patient.name) for s in stays if s.bed})
            read_at[0] = now
        return cache.get(bed)

    return patient_of


class MllpChannel:
    """Sends each change of an alarm as an IHE PCD-04 ``ORU^R40`` (alerting.pcd04) to
    ``address`` (``host:port``) over MLLP and waits for the original-mode acknowledgement:
    ``AA`` (or ``CA``) is delivered; ``AE`` (the receiver found the message in error) is a
    refusal, not sent again; ``AR``, a connection refused or lost, or no answer within
    ``timeout_s`` are retried by the dispatcher. MSH-10 is derived from the notification's key,
    so a message sent again carries the same control id. This channel goes to the hospital's
    own alarm manager, which routes by patient: PID carries the bed's admitted patient (MRN and
    name, from ``patient_of``), unlike the other channels, which carry no patient identifier.
    With ``tls`` (eicu.config.MllpClientTls) every connection is TLS and the receiver's
    certificate is verified against the destination's host name; a receiver that fails the
    verification is retried like one away, and named in the receipt's detail."""

    name: Channel = "mllp"

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        patient_of: PatientOf | None = None,
        facility: str = "",
        clock: Clock = SYSTEM_CLOCK,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._tls = tls
        self._patient_of = patient_of
        self._facility = facility
        self._clock = clock

    async def _patient(self, bed: BedKey) -> tuple[str, str] | None:
        if self._patient_of is None:
            return None
        try:
            return await asyncio.wait_for(self._patient_of(bed), self._timeout_s / 2)
        except Exception as exc:  # the alarm goes without its patient rather than not at all
            log.warning("PCD-04 for %s sent without its patient (%r)", bed, exc)
            return None

    async def message(self, n: Notification) -> str:
        from alerting.pcd04 import AlarmReport, control_id, oru_r40

        b = n.body
        try:
            bed = BedKey(str(b["site"]), str(b["bed"]))
            paused_until = b.get("audio_paused_until_us")
            onset_us = int(n.alarm_id.rsplit("/", 1)[-1])
            report = AlarmReport(
                alarm_id=n.alarm_id, site=bed.site, bed=bed.bed, kind=str(b["kind"]),
                priority=str(b["priority"]), category=str(b["category"]),
                state=str(b["state"]), onset_us=onset_us, time_us=int(str(b["time_us"])),
                reason=str(b.get("reason") or ""),
                audio_paused=isinstance(paused_until, int)
                and paused_until > int(str(b["time_us"])),
            )  # fmt: skip
        except (KeyError, ValueError) as exc:
            detail = f"not an alarm change: {exc!r}"
            raise DeliveryError("mllp", n.key, detail, retryable=False) from exc
        patient = await self._patient(bed)
        if patient is not None:
            report = dataclasses.replace(report, mrn=patient[0], patient_name=patient[1])
        return oru_r40(report, control_id(n.key), self._clock.now_us(), facility=self._facility)

    async def send(self, notification: Notification) -> Receipt:
        n = notification
        try:
            host, port = parse_host_port(n.address)
        except ValueError as exc:
            raise DeliveryError("mllp", n.key, str(exc), retryable=False) from exc
        text = await self.message(n)
        try:
            async with asyncio.timeout(self._timeout_s):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._tls, server_hostname=host if self._tls else None
                )
                try:
                    writer.write(hl7.frame(text))
                    await writer.drain()
                    raw = await reader.readuntil(hl7.END_BLOCK)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise DeliveryError("mllp", n.key, f"{type(exc).__name__}: {exc}") from exc
        except asyncio.LimitOverrunError as exc:
            raise DeliveryError("mllp", n.key, "the answer is too long") from exc
        answer = raw.removeprefix(hl7.START_BLOCK).removesuffix(hl7.END_BLOCK)
        try:
            msa = hl7.parse(answer.decode("utf-8", errors="replace")).first("MSA")
        except hl7.Hl7Error as exc:
            raise DeliveryError("mllp", n.key, f"the answer is not HL7: {exc}") from exc
        code = msa.component(1) if msa is not None else ""
        if code in ("AA", "CA"):
            return Receipt(n.key, "mllp", self._clock.now_us(), 1, code)
        detail = f"answered {code or 'without MSA'}: {msa.component(3) if msa else ''}"[:200]
        raise DeliveryError("mllp", n.key, detail, retryable=code not in ("AE", "CE"))

    async def close(self) -> None:
        return None
