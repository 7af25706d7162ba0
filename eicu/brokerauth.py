"""Mosquitto password and ACL files, so that each site's gateway publishes only to its own site.

The accounts live in a small JSON registry; the Mosquitto files are rendered from it:

* ``passwd``: ``name:$7$<iterations>$<salt>$<hash>``, Mosquitto 2's PBKDF2-HMAC-SHA512 format
  (as ``mosquitto_passwd`` writes it: 101 iterations, 12-byte salt, 64-byte key, base64);
* ``acl``: per user, what it may read and write. A gateway of site ``S`` writes
  its beds' ``numerics``, ``waveform`` and ``status`` under ``eicu/v1/S/{bed}/``, its own
  status ``eicu/v1/S/_gateway/{name}/status`` (the gateway id in the topic is its account
  name, so no gateway speaks for another), and acknowledgements of its site's alarms on
  ``eicu/v1/S/{bed}/alarms/ack``, and reads its site's alarms. It cannot publish on
  ``.../alarms``: only the engine speaks for the alarm state. The engine reads ``eicu/#``
  (acknowledgements and dashboards' alarm commands included, and other protocol versions,
  which it counts and rejects) and writes alarms, alarm events for delivery (``eicu/alarm/#``;
  ``eicu alarms deliver`` runs with an engine's account), the beds' state (``eicu/state/#``) and the
  answers to commands (``eicu/reply/#``). A dashboard (``eicu dashboard``) reads the beds'
  state, their waveforms and the answers to its own commands (``eicu/reply/{name}``), and writes
  alarm commands (``eicu/v1/+/+/alarms/cmd``), which no gateway may.

Every account is one MQTT connection, and its client id is its user name: the broker is configured
with ``use_username_as_clientid true`` on every listener (or, with client certificates,
``use_identity_as_username true`` as well), so no account can connect under another's client id
and take over its session. The engine makes two connections, so an engine account ``E`` is two
broker users with the same password: ``E`` (the ingest, which reads) and ``E-alarms`` (the alarm
channel, which writes alarms).

The broker is then configured with ``allow_anonymous false``, ``password_file`` and ``acl_file``
(:func:`broker_config` renders the whole configuration, listeners included).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from eicu.config import ALARMS_CONNECTION_SUFFIX, STATE_CONNECTION_SUFFIX
from eicu.errors import ConfigError
from eicu.models import ID_RE
from eicu.wire import GATEWAY_LEVEL

Role = Literal["engine", "gateway", "dashboard"]
ITERATIONS = 101  # Mosquitto's default for sha512-pbkdf2


@dataclass(frozen=True)
class BrokerAccount:
    name: str
    role: Role
    site: str | None  # gateways only
    password_hash: str

    def users(self) -> tuple[str, ...]:
        """The broker users (and so client ids) of the account: one per connection."""
        if self.role == "engine":
            return (
                self.name,
                self.name + ALARMS_CONNECTION_SUFFIX,
                self.name + STATE_CONNECTION_SUFFIX,
            )
        return (self.name,)


def password_hash(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """A Mosquitto 2 password-file hash (``$7$``: PBKDF2-HMAC-SHA512)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


# What a gateway publishes, per bed of its own site: its data, and acknowledgements of its
# beds' alarms. Never ``.../alarms`` itself: only the engine speaks for the alarm state.
GATEWAY_WRITES = ("numerics", "waveform", "status", "alarms/ack")


def acl_text(accounts: list[BrokerAccount]) -> str:
    blocks = []
    for a in sorted(accounts, key=lambda a: a.name):
        if a.role == "engine":
            # The ingest reads everything; the alarm channel only writes the alarm state; the
            # state connection writes the beds' state and the answers to dashboards' commands.
            rules = ["topic read eicu/#"]
            # ... and the alarm events for the delivery processes (eicu alarms deliver).
            alarms = (
                f"user {a.name}{ALARMS_CONNECTION_SUFFIX}\ntopic write eicu/v1/+/+/alarms\n"
                "topic write eicu/alarm/#"
            )
            blocks.append(alarms)
            state = "\n".join(
                [f"user {a.name}{STATE_CONNECTION_SUFFIX}", "topic write eicu/state/#",
                 "topic write eicu/reply/#"]
            )  # fmt: skip
            blocks.append(state)
        elif a.role == "dashboard":
            # The beds' state, the waveforms of the beds it shows, the answers to its own
            # commands; it writes alarm commands, nothing a gateway or an engine says, and
            # speaks to the other dashboards about video consults (dashboards.consult_bus).
            rules = [
                "topic read eicu/state/#", f"topic read eicu/reply/{a.name}",
                "topic read eicu/v1/+/+/waveform", "topic read eicu/p/+/v1/+/+/waveform",
                "topic write eicu/v1/+/+/alarms/cmd",
                "topic readwrite eicu/consult/#",
            ]  # fmt: skip
        else:
            rules = [
                *(f"topic write eicu/v1/{a.site}/+/{kind}" for kind in GATEWAY_WRITES),
                f"topic write eicu/v1/{a.site}/{GATEWAY_LEVEL}/{a.name}/status",
                f"topic read eicu/v1/{a.site}/+/alarms",
            ]
        blocks.append("\n".join([f"user {a.name}", *rules]))
    return "\n\n".join(blocks) + "\n"


class BrokerAuth:
    """The account registry in ``folder`` and the Mosquitto files rendered from it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.registry = folder / "accounts.json"
        self.passwd = folder / "passwd"
        self.acl = folder / "acl"

    def accounts(self) -> list[BrokerAccount]:
        if not self.registry.exists():
            return []
        try:
            raw = json.loads(self.registry.read_text())
            return [BrokerAccount(**item) for item in raw["accounts"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(str(self.registry), f"not a broker account registry: {exc}") from exc

    def add(self, name: str, role: Role, site: str | None = None) -> str:
        """Add (or replace) an account; returns its new password, shown once."""
        if not ID_RE.match(name):
            raise ConfigError("name", f"{name!r} is not an id of [A-Za-z0-9_-] (1-32)")
        if role == "gateway" and (site is None or not ID_RE.match(site)):
            raise ConfigError("site", f"a gateway needs a site id, got {site!r}")
        if role not in ("engine", "gateway", "dashboard"):
            raise ConfigError("role", f"expected engine, gateway or dashboard, got {role!r}")
        password = secrets.token_urlsafe(18)
        kept = [a for a in self.accounts() if a.name != name]
        account = BrokerAccount(
            name, role, site if role == "gateway" else None, password_hash(password)
        )
        taken = {user: a.name for a in kept for user in a.users()}
        for user in account.users():
            if user in taken:
                raise ConfigError(
                    "name", f"{name!r} needs the broker user {user!r}, which {taken[user]!r} has"
                )
        kept.append(account)
        self._write(kept)
        return password

    def _write(self, accounts: list[BrokerAccount]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_private(
            self.registry, json.dumps({"accounts": [asdict(a) for a in accounts]}, indent=1)
        )
        _write_private(
            self.passwd,
            "".join(f"{user}:{a.password_hash}\n" for a in accounts for user in a.users()),
        )
        _write_private(self.acl, acl_text(accounts))

    def mosquitto_config(self) -> list[str]:
        """The broker-wide lines: accounts and access control (no anonymous client)."""
        return [
            "allow_anonymous false",
            f"password_file {self.passwd}",
            f"acl_file {self.acl}",
        ]


@dataclass(frozen=True)
class ListenerTls:
    """The TLS files of a Mosquitto listener. ``require_certificate``: every client shows a
    certificate signed by ``cafile``, and still its user name and password; with
    ``identity_as_username`` as well, the certificate's common name is the user name and no
    password is asked (so each connection needs a certificate of its own)."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False
    identity_as_username: bool = False


def listener_config(
    port: int, bind: str | None = None, tls: ListenerTls | None = None
) -> list[str]:
    """One listener: its address, then :func:`listener_settings`."""
    return [f"listener {port}" + (f" {bind}" if bind else ""), *listener_settings(tls)]


def listener_settings(tls: ListenerTls | None = None) -> list[str]:
    """The settings of a listener (after its ``listener`` line): TLS, and the binding of client
    ids to user names."""
    lines: list[str] = []
    if tls is not None:
        lines += [
            f"cafile {tls.cafile}",
            f"certfile {tls.certfile}",
            f"keyfile {tls.keyfile}",
            "tls_version tlsv1.2",
        ]
        if tls.require_certificate:
            lines.append("require_certificate true")
        if tls.require_certificate and tls.identity_as_username:
            # The certificate's common name is the user name (the password file is not used on
            # this listener); the ACL file applies to it as to any user.
            lines.append("use_identity_as_username true")
    # A client's id is its user name, whatever it asks for: no account can take over another's
    # session (the broker disconnects the older of two connections with one client id).
    lines.append("use_username_as_clientid true")
    return lines


# Broker-wide limits (see docs/deployment.md). A message larger than the engine accepts
# (EICU_MAX_MESSAGE_BYTES, 512 KiB by default, plus the MQTT header and topic) is dropped at the
# broker before it reaches anyone. The engine's persistent session keeps this many messages, and
# bytes, while the engine is away (Mosquitto's default of 1000 messages is seconds of a ward);
# a session abandoned for two weeks is dropped. Each client gets 20000 QoS 1 messages in flight:
# the engine acknowledges a message once it is stored, seconds later (about 15 per bed held).
SESSION_LIMITS = (
    "persistence true",
    "max_inflight_messages 20000",
    "max_queued_messages 1000000",
    "max_queued_bytes 536870912",
    "max_packet_size 600000",
    "persistent_client_expiration 14d",
)


def broker_config(auth: BrokerAuth, listeners: list[list[str]]) -> str:
    """A whole Mosquitto configuration: accounts, session limits and the listeners."""
    parts = [
        "# eicu broker accounts (eicu broker-auth)",
        *auth.mosquitto_config(),
        "",
        "# QoS 1 sessions",
        *SESSION_LIMITS,
    ]
    for lines in listeners:
        parts += ["", *lines]
    return "\n".join(parts) + "\n"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)
