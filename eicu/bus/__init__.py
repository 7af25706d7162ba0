"""The MQTT bus: the one module that imports the MQTT client library (aiomqtt).

Every MQTT client of the engine and the simulators (the alarm channel, the simulated gateways,
the ingest with ``EICU_MQTT_ACK=receipt``) connects through :class:`Client`; the ingest, which
acknowledges each message after persisting it, reads through
:func:`eicu.bus.partitioned.ingest_consumer` (gmqtt), with the same settings. Both apply what
:class:`~eicu.config.MqttSettings` says: the user name and password and, for ``mqtts://``, TLS
that verifies the broker's certificate (against ``EICU_MQTT_CA_FILE``, or the system's trusted
CAs when unset) and checks its host name, presenting this client's certificate when one is set.
The TLS files are read at every connection, so a renewed certificate takes effect at the next
reconnection without a restart.

Errors::

    MqttError           aiomqtt's: a connection could not be made or was lost, an operation failed
    └── TlsError        TLS could not be set up or the broker's certificate was not trusted;
                        ``.key`` names the setting to look at
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any, Final

import aiomqtt

from eicu.config import MqttSettings
from eicu.errors import ConfigError

MqttError = aiomqtt.MqttError
Message = aiomqtt.Message
Will = aiomqtt.Will

__all__ = ["Client", "Message", "MqttError", "TlsError", "Will", "tls_context"]

# OpenSSL's reason for a peer certificate that failed verification (untrusted issuer, expired,
# wrong host name). aiomqtt passes on only the text of the error (``raise ... from None``), so
# the text is all there is to tell it by.
_VERIFY_FAILED: Final = "CERTIFICATE_VERIFY_FAILED"


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its handshake fails: paho-mqtt drops such a socket without closing it,
    and a broker refused again and again would cost a file descriptor each time."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class TlsError(MqttError):
    """TLS to the broker could not be set up, or the broker's certificate was not trusted.
    ``key`` names the setting to look at."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """The TLS context of an ``mqtts://`` broker (``None`` for ``mqtt://``): certificate and host
    name verification always on, TLS 1.2 at least, this client's certificate when set. A file
    that cannot be used raises :class:`~eicu.errors.ConfigError` naming its key."""
    if not settings.tls:
        return None
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(settings.ca_file) if settings.ca_file is not None else None,
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("EICU_MQTT_CA_FILE", f"cannot load {settings.ca_file}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslsocket_class = _ClosingSSLSocket
    if settings.cert_file is not None:
        key_file = settings.key_file
        try:
            context.load_cert_chain(
                str(settings.cert_file), str(key_file) if key_file is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            key = "EICU_MQTT_KEY_FILE" if key_file is not None else "EICU_MQTT_CERT_FILE"
            raise ConfigError(
                key, f"cannot load the client certificate {settings.cert_file}: {exc}"
            ) from exc
    return context


class Client(aiomqtt.Client):
    """An aiomqtt client connected as ``settings`` say (host, port, credentials, TLS). Other
    keyword arguments go to :class:`aiomqtt.Client`; ``identifier`` defaults to the settings'
    client id."""

    def __init__(self, settings: MqttSettings, **options: Any) -> None:
        try:
            context = tls_context(settings)
        except ConfigError as exc:
            raise TlsError(exc.key, str(exc).partition(": ")[2]) from exc
        options.setdefault("identifier", settings.client_id)
        super().__init__(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password,
            tls_context=context,
            **options,
        )
        self._settings = settings
        # set when a connect is cancelled: aiomqtt's connecting thread may still be opening
        # the socket, which nobody would read (see _client_connect)
        self._given_up = False

    async def __aenter__(self) -> Client:
        try:
            await super().__aenter__()
        except aiomqtt.MqttReentrantError:
            raise  # entered while connected: the connection is not this attempt's to close
        except BaseException as exc:
            # A connect that failed or was cancelled (a caller's timeout while the broker did
            # not answer) after the socket opened: aiomqtt keeps the socket, its reader and
            # its housekeeping task until the client object is collected. Closed here, now.
            if not isinstance(exc, Exception):  # cancelled: the thread may not be done
                self._given_up = True
            self._close_socket()
            if not isinstance(exc, MqttError):
                raise
            s = self._settings
            text = str(exc)
            if not s.tls or _VERIFY_FAILED not in text:
                raise
            if "mismatch" in text:  # OpenSSL: "Hostname mismatch", "IP address mismatch"
                raise TlsError(
                    "EICU_MQTT_URL",
                    f"the certificate of {s.url} is not for the host {s.host!r}: connect by a "
                    f"name the certificate holds ({text})",
                ) from exc
            trusted = f"EICU_MQTT_CA_FILE={s.ca_file}" if s.ca_file else "the system's CAs"
            raise TlsError(
                "EICU_MQTT_CA_FILE",
                f"the certificate of {s.url} is not trusted: not signed by a CA in {trusted}, "
                f"or expired ({text})",
            ) from exc
        return self

    def _client_connect(self) -> None:
        """aiomqtt's blocking connect, run in its executor thread. A connect cancelled while
        this thread was still making the TCP connection (a broker slow to accept) would leave
        the connection open once made, its CONNECT sent and nobody reading it (and the broker,
        taking that CONNECT, would disconnect a newer connection of the same client id). Such
        a connection is closed on the event loop as soon as it is open."""
        try:
            super()._client_connect()
        finally:
            if self._given_up:
                try:
                    self._loop.call_soon_threadsafe(self._close_socket)
                except RuntimeError:  # the event loop is closed: nothing reads it any more
                    sock = self._client.socket()
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.close()

    def _close_socket(self) -> None:
        """Close paho's socket, if open: its close callback removes aiomqtt's reader and
        cancels its housekeeping task (paho has no public call that does this without a
        network loop of its own)."""
        reset = getattr(self._client, "_reset_sockets", None)
        if reset is not None and self._client.socket() is not None:
            with contextlib.suppress(Exception):
                reset()
