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
  (acknowledgements included, and other protocol versions, which it counts and rejects) and
  writes alarms.

The broker is then configured with ``allow_anonymous false``, ``password_file`` and ``acl_file``.
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

from eicu.errors import ConfigError
from eicu.models import ID_RE
from eicu.wire import GATEWAY_LEVEL

Role = Literal["engine", "gateway"]
ITERATIONS = 101  # Mosquitto's default for sha512-pbkdf2


@dataclass(frozen=True)
class BrokerAccount:
    name: str
    role: Role
    site: str | None  # gateways only
    password_hash: str


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
            rules = ["topic read eicu/#", "topic write eicu/v1/+/+/alarms"]
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
        if role not in ("engine", "gateway"):
            raise ConfigError("role", f"expected engine or gateway, got {role!r}")
        password = secrets.token_urlsafe(18)
        kept = [a for a in self.accounts() if a.name != name]
        kept.append(
            BrokerAccount(name, role, site if role == "gateway" else None, password_hash(password))
        )
        self._write(kept)
        return password

    def _write(self, accounts: list[BrokerAccount]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_private(
            self.registry, json.dumps({"accounts": [asdict(a) for a in accounts]}, indent=1)
        )
        _write_private(self.passwd, "".join(f"{a.name}:{a.password_hash}\n" for a in accounts))
        _write_private(self.acl, acl_text(accounts))

    def mosquitto_config(self) -> list[str]:
        return ["allow_anonymous false", f"password_file {self.passwd}", f"acl_file {self.acl}"]


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)
