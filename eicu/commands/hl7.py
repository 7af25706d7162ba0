"""``eicu hl7 listen``: the HL7 v2 MLLP listener of one site (IHE PCD-01 observations in; ADT
admissions, transfers and discharges in where ``EICU_DATABASE_URL`` is set).

``eicu hl7 forward``: the stored numerics out as IHE PCD-01 to ``EICU_PCD01_DESTINATION``
(``host:port``, MLLP), from the store of ``EICU_DATABASE_URL``, its cursor in
``EICU_PCD01_STATE_FILE`` (default ``eicu-pcd01-<host>-<port>.json``), ``EICU_PCD01_DELAY_S``
(default 5) behind real time (ingest.pcd01_out), over TLS with ``EICU_HL7_OUT_TLS*`` as the
PCD-04 destinations (eicu.config.mllp_client_tls).

Settings: ``EICU_HL7_SITE`` (the site whose beds the messages are about; required),
``EICU_HL7_HOST`` (default 127.0.0.1) and ``EICU_HL7_PORT`` (default 2575, the port registered
for HL7 over MLLP), ``EICU_HL7_ALLOW`` (comma-separated addresses or networks allowed to connect;
default the loopback addresses), ``EICU_HL7_MAX_BYTES`` (default 1 MiB), and the broker's
``EICU_HL7_MQTT_URL`` (else ``EICU_MQTT_URL``; with its TLS settings) to publish to, as a gateway
of that site. ``eicu serve`` runs the same listener beside the engine when ``EICU_HL7_SITE`` is
set. ``eicu hl7 listen --replay FILE [--now] [--speed S]`` sends an HL7 capture file through a
listener of its own on a loopback port and stops. See docs/interoperability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from eicu import hl7
from eicu.commands import stop_on_signals
from eicu.config import MqttSettings, env_flag, mllp_client_context, mllp_client_tls
from eicu.errors import ConfigError

if TYPE_CHECKING:
    from eicu.models import DeadLetter
    from eicu.store.base import PatientRepository, Store
    from ingest.hl7 import Listener


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["listen", "forward"],
        help="listen: take PCD-01 (and, with a database, ADT) messages; forward: send the "
        "stored numerics as PCD-01 to EICU_PCD01_DESTINATION",
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: EICU_HL7_PORT)")
    parser.add_argument(
        "--replay",
        type=Path,
        default=None,
        metavar="FILE",
        help="listen: send the messages of an HL7 capture file (MLLP frames, or text with each "
        "message starting at an MSH line) through the listener on a loopback port, print each "
        "answer, and stop",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="with --replay: pace the messages by their MSH-7 times, this many times faster "
        "than they were sent (default 0: each as soon as the last is answered)",
    )
    parser.add_argument(
        "--now",
        action="store_true",
        help="with --replay: move every message's times so that the first was sent now",
    )


def _int(env: dict[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(key, f"must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(key, f"must be {low}-{high}, got {value}")
    return value


def listener_from_env(
    env: dict[str, str],
    port: int | None = None,
    patients: PatientRepository | None = None,
    dead_letters: Callable[[DeadLetter], None] | None = None,
) -> Listener | None:
    """The listener the settings describe (None without ``EICU_HL7_SITE``). It publishes to
    ``EICU_HL7_MQTT_URL``, else ``EICU_MQTT_URL``: a gateway account of its site. With
    ``patients`` (the store), ADT messages admit, move and discharge the site's patients."""
    from ingest.hl7 import MAX_MESSAGE_BYTES, Listener

    site = env.get("EICU_HL7_SITE", "").strip()
    if not site:
        return None
    port = port if port is not None else _int(env, "EICU_HL7_PORT", 2575, 0, 65535)
    max_bytes = _int(env, "EICU_HL7_MAX_BYTES", MAX_MESSAGE_BYTES, 1024, 64 << 20)
    allow = [a.strip() for a in env.get("EICU_HL7_ALLOW", "").split(",") if a.strip()]
    key = "EICU_HL7_MQTT_URL" if env.get("EICU_HL7_MQTT_URL") else "EICU_MQTT_URL"
    mqtt = MqttSettings.from_url(env.get(key) or "mqtt://127.0.0.1:1883", key=key, env=env)
    tls = tls_from_env(env)
    try:
        return Listener(
            mqtt,
            site,
            host=env.get("EICU_HL7_HOST", "127.0.0.1").strip() or "127.0.0.1",
            port=port,
            allow=allow or ("127.0.0.1/32", "::1/128"),
            max_message_bytes=max_bytes,
            patients=patients,
            tls=tls,
            dead_letters=dead_letters,
            coded_waveforms=env_flag(env, "EICU_HL7_CODED_WAVEFORMS", False),
        )
    except ValueError as exc:
        name = (
            "EICU_HL7_ALLOW" if "network" in str(exc) or "address" in str(exc) else "EICU_HL7_SITE"
        )
        raise ConfigError(name, str(exc)) from exc


def tls_from_env(env: dict[str, str]) -> ssl.SSLContext | None:
    """MLLP over TLS when ``EICU_HL7_TLS_CERT_FILE`` and ``EICU_HL7_TLS_KEY_FILE`` are set (TLS
    1.2 or newer); with ``EICU_HL7_TLS_CA_FILE`` each sender must present a certificate that CA
    signed. A file that cannot be used is a ConfigError naming its setting."""
    cert, key = env.get("EICU_HL7_TLS_CERT_FILE", ""), env.get("EICU_HL7_TLS_KEY_FILE", "")
    ca = env.get("EICU_HL7_TLS_CA_FILE", "")
    if not cert and not key:
        if ca:
            raise ConfigError("EICU_HL7_TLS_CA_FILE", "needs EICU_HL7_TLS_CERT_FILE and _KEY_FILE")
        return None
    for name, value in (("EICU_HL7_TLS_CERT_FILE", cert), ("EICU_HL7_TLS_KEY_FILE", key)):
        if not value:
            raise ConfigError(name, "TLS needs both a certificate and its key")
        if not os.path.isfile(value):
            raise ConfigError(name, f"no such file: {value}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        detail = f"not a usable certificate and key: {exc}"
        raise ConfigError("EICU_HL7_TLS_CERT_FILE", detail) from exc
    if ca:
        if not os.path.isfile(ca):
            raise ConfigError("EICU_HL7_TLS_CA_FILE", f"no such file: {ca}")
        try:
            context.load_verify_locations(ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError("EICU_HL7_TLS_CA_FILE", f"not a usable CA file: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def start_listener(listener: Listener) -> None:
    """Start ``listener``; a port that cannot be had is a clear configuration error."""
    try:
        await listener.start()
    except OSError as exc:
        await listener.stop()
        raise ConfigError(
            "EICU_HL7_PORT", f"cannot listen on {listener.host}:{listener.port}: {exc}"
        ) from exc


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.action == "forward":
        return asyncio.run(_forward(env))
    if not env.get("EICU_HL7_SITE", "").strip():
        raise ConfigError("EICU_HL7_SITE", "required: the site whose beds the messages are about")
    if args.replay is not None:
        try:
            messages = hl7.read_capture(args.replay.read_bytes())
        except (OSError, ValueError) as exc:
            print(f"eicu hl7: error: {args.replay}: {exc}", file=sys.stderr)
            return 2
        if not 0 <= args.speed <= 1e6:
            print(f"eicu hl7: error: --speed must be 0-1000000, got {args.speed}", file=sys.stderr)
            return 2
        # the capture goes to a listener of its own on a loopback port, in plain MLLP
        for key in ("EICU_HL7_TLS_CERT_FILE", "EICU_HL7_TLS_KEY_FILE", "EICU_HL7_TLS_CA_FILE"):
            env.pop(key, None)
        env.update(EICU_HL7_HOST="127.0.0.1", EICU_HL7_ALLOW="127.0.0.1/32")

        async def replaying(listener: Listener) -> int:
            return await _replay(listener, messages, args.speed, args.now)

        return asyncio.run(_serve(env, 0, replaying))
    return asyncio.run(_serve(env, args.port))


async def _serve(
    env: dict[str, str],
    port: int | None,
    body: Callable[[Listener], Awaitable[int]] | None = None,
) -> int:
    """The listener, with ADT on the store of ``EICU_DATABASE_URL`` where it is set; it
    listens until SIGTERM or SIGINT, or runs ``body`` (a replay) and stops."""
    store = None
    sink = None
    if env.get("EICU_DATABASE_URL"):
        from eicu.store import open_store

        store = open_store(env["EICU_DATABASE_URL"])
        await store.open()
        sink = StoreDeadLetters(store)
    listener = listener_from_env(env, port, store, sink.add if sink is not None else None)
    assert listener is not None
    writer = asyncio.create_task(sink.run()) if sink is not None else None
    try:
        return await _listen(listener, body)
    finally:
        if writer is not None and sink is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await sink.write()
        if store is not None:
            await store.close()


class StoreDeadLetters:
    """The listener's rejected messages into the store's dead letters, each second; kept in
    memory (at most KEEP) while the database cannot take them."""

    KEEP = 10_000

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: list[DeadLetter] = []
        self.dropped = 0

    def add(self, letter: DeadLetter) -> None:
        if len(self.pending) >= self.KEEP:
            self.pending.pop(0)
            self.dropped += 1
        self.pending.append(letter)

    async def write(self) -> None:
        from eicu.errors import StorageUnavailable
        from eicu.models import Batch

        if not self.pending:
            return
        batch, self.pending = self.pending, []
        try:
            await self.store.write(Batch(dead_letters=batch))
        except StorageUnavailable as exc:
            self.pending = batch + self.pending
            print(f"eicu hl7: rejected messages kept in memory for now ({exc})", file=sys.stderr)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.write()


async def _forward(env: dict[str, str]) -> int:
    """``eicu hl7 forward`` until SIGTERM or SIGINT."""
    from alerting.channels import parse_host_port
    from eicu.store import open_store
    from ingest.pcd01_out import Forwarder

    url = env.get("EICU_DATABASE_URL", "")
    if not url:
        raise ConfigError("EICU_DATABASE_URL", "required: the store whose numerics are sent")
    try:
        host, port = parse_host_port(env.get("EICU_PCD01_DESTINATION", "").strip())
    except ValueError as exc:
        raise ConfigError("EICU_PCD01_DESTINATION", str(exc)) from exc
    raw_delay = env.get("EICU_PCD01_DELAY_S", "5").strip()
    try:
        delay_s = float(raw_delay)
    except ValueError:
        raise ConfigError("EICU_PCD01_DELAY_S", f"not a number: {raw_delay!r}") from None
    if not 0 <= delay_s <= 3600:
        raise ConfigError("EICU_PCD01_DELAY_S", f"must be 0-3600, got {delay_s}")
    state = env.get("EICU_PCD01_STATE_FILE") or f"eicu-pcd01-{host}-{port}.json"
    tls = mllp_client_tls(env)
    store = open_store(url)
    await store.open()
    try:
        try:
            forwarder = Forwarder(
                store, host, port, Path(state), delay_s=delay_s, tls=mllp_client_context(tls)
            )
        except ValueError as exc:
            raise ConfigError("EICU_PCD01_STATE_FILE", str(exc)) from exc
        stop = stop_on_signals()
        over = " over TLS" if tls else ""
        print(f"eicu hl7: forwarding stored numerics as PCD-01 to {host}:{port}{over}",
              file=sys.stderr, flush=True)  # fmt: skip
        task = asyncio.create_task(forwarder.run())
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        for t in (task, waiter):
            t.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        c = forwarder.counts
        print(f"eicu hl7: {c.messages} PCD-01 messages taken, {c.refused} refused (AE), "
              f"{c.retries} retries", file=sys.stderr)  # fmt: skip
        return 0
    finally:
        await store.close()


async def _listen(
    listener: Listener, body: Callable[[Listener], Awaitable[int]] | None = None
) -> int:
    stop = stop_on_signals()
    await start_listener(listener)
    print(
        f"eicu hl7: listening on {listener.host}:{listener.port} for site {listener.site}, "
        f"publishing to {listener.mqtt.url}"
        + ("; ADT to the patient database" if listener.patients is not None else ""),
        file=sys.stderr,
        flush=True,
    )
    code = 0
    try:
        if body is None:
            await stop.wait()
        else:
            task = asyncio.ensure_future(body(listener))
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not task.done():
                task.cancel()
                code = 130  # interrupted
            await asyncio.gather(task, waiter, return_exceptions=True)
            if task.done() and not task.cancelled():
                code = task.result()
    finally:
        await listener.stop()
    c = listener.counts
    print(
        f"eicu hl7: {c.messages} messages: {c.accepted} accepted, {c.errors} with errors, "
        f"{c.rejected} rejected, {c.duplicates} repeated; {c.frames} frames, {c.values} values; "
        f"{c.unknown_codes} unknown codes skipped; {c.adt} ADT events; "
        f"{c.patient_mismatches} naming another patient than the bed's",
        file=sys.stderr,
    )
    return code


async def _replay(listener: Listener, messages: list[str], speed: float, now: bool) -> int:
    """Send ``messages`` to ``listener`` over MLLP, one at a time, each after the answer to
    the last (paced by MSH-7 at ``speed`` when it is above 0; moved to now with ``now``); one
    line per answer on stdout. 0 when every message was accepted (AA), else 1."""

    def sent_at(text: str) -> int | None:
        try:
            return hl7.parse_ts(hl7.parse(text).msh.component(7))
        except (hl7.Hl7Error, ValueError, IndexError):
            return None

    times = [sent_at(m) for m in messages]
    first = next((t for t in times if t is not None), None)
    offset_us = time.time_ns() // 1000 - first if now and first is not None else 0
    started = time.monotonic()
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    refused = 0
    try:
        for n, (text, at_us) in enumerate(zip(messages, times, strict=True), 1):
            if speed > 0 and at_us is not None and first is not None:
                due = started + (at_us - first) / 1e6 / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            if offset_us:
                with contextlib.suppress(ValueError):
                    text = hl7.shift_times(text, offset_us)
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", listener.port)
            reader, writer = conn
            writer.write(hl7.frame(text))
            await writer.drain()
            try:
                raw = await asyncio.wait_for(reader.readuntil(hl7.END_BLOCK), 60)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                # the listener closes a connection whose framing it cannot trust
                writer.close()
                conn = None
                print(f"{n}\t{hl7.control_id_of(text)}\t-\tno answer (connection closed)")
                refused += 1
                continue
            answer = hl7.parse(raw.removeprefix(hl7.START_BLOCK).removesuffix(hl7.END_BLOCK)
                               .decode("utf-8", errors="replace"))  # fmt: skip
            msa = answer.first("MSA")
            code = msa.component(1) if msa is not None else "?"
            err = answer.first("ERR")
            detail = err.field(8) if err is not None else ""
            print(f"{n}\t{hl7.control_id_of(text)}\t{code}\t{detail}", flush=True)
            refused += code != "AA"
    finally:
        if conn is not None:
            conn[1].close()
            with contextlib.suppress(OSError):
                await conn[1].wait_closed()
    print(f"eicu hl7: replayed {len(messages)} messages, {refused} not accepted",
          file=sys.stderr)  # fmt: skip
    return 1 if refused else 0
