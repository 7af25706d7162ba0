"""The embedded MQTT broker of ``eicu demo`` on a machine where no broker is configured.

A Mosquitto child process when the ``mosquitto`` binary is installed (Debian's package, which
``scripts/setup-system`` installs): it runs beside the demo on a second core and costs about
0.03 s of CPU per 1,000 messages, so the demo holds 150 beds and more. Without the binary, an
in-process broker (amqtt), which shares the demo's core and holds fewer beds.
``EICU_EMBEDDED_BROKER=mosquitto`` or ``amqtt`` chooses one (``mosquitto`` fails when the binary
is missing, saying so).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from eicu.devservices import Mosquitto, ServiceError, free_port, mosquitto_binary
from eicu.errors import ConfigError, EicuError

log = logging.getLogger(__name__)

KINDS = ("mosquitto", "amqtt")


def chosen_kind(env: dict[str, str] | None = None) -> str:
    """The broker to embed: ``EICU_EMBEDDED_BROKER``, else Mosquitto when installed."""
    value = (os.environ if env is None else env).get("EICU_EMBEDDED_BROKER", "").strip().lower()
    if value and value not in KINDS:
        raise ConfigError("EICU_EMBEDDED_BROKER", f"one of {', '.join(KINDS)}, not {value!r}")
    if value == "mosquitto" and mosquitto_binary() is None:
        raise ConfigError(
            "EICU_EMBEDDED_BROKER",
            "mosquitto, but the mosquitto binary is not installed "
            "(Debian package 'mosquitto'; scripts/setup-system installs it)",
        )
    if value:
        return value
    return "mosquitto" if mosquitto_binary() is not None else "amqtt"


class BrokerStartError(EicuError):
    """The embedded broker could not start (the message says why and where its log is)."""


class EmbeddedBroker:
    """``kind``: ``mosquitto`` or ``amqtt`` (None: :func:`chosen_kind`); ``folder``: where a
    Mosquitto keeps its configuration, sessions and log (default: a temporary folder)."""

    def __init__(
        self, port: int | None = None, *, kind: str | None = None, folder: Path | None = None
    ) -> None:
        self.kind = chosen_kind() if kind is None else kind
        if self.kind not in KINDS:
            raise ValueError(f"unknown embedded broker {self.kind!r}")
        self.port = port or free_port()
        self.folder = folder
        self._broker: object | None = None
        self._mosquitto: Mosquitto | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self.kind == "mosquitto":
            # Started from this (the main) thread: the child's parent-death signal follows the
            # thread that forked it.
            mosquitto = Mosquitto(self.port, folder=self.folder, die_with_parent=True)
            try:
                mosquitto.start()
            except (OSError, ServiceError) as exc:
                mosquitto.cleanup()
                raise BrokerStartError(
                    f"the embedded Mosquitto did not start on 127.0.0.1:{self.port}: {exc} "
                    f"(its log: {mosquitto.dir / 'mosquitto.log'})"
                ) from exc
            self._mosquitto = mosquitto
            log.info("embedded MQTT broker (Mosquitto) on %s", self.url)
            return
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            # anonymous access on the loopback only; no $SYS topics, no packet logging
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        broker = Broker(config)
        await broker.start()
        self._broker = broker
        log.info("embedded MQTT broker (amqtt) on %s", self.url)

    async def stop(self) -> None:
        if self._mosquitto is not None:
            self._mosquitto.cleanup()
            self._mosquitto = None
        if self._broker is not None:
            await self._broker.shutdown()  # type: ignore[attr-defined]
            self._broker = None
