"""Settings: read once from the environment (or an env-style file), frozen, passed in.

Every key has the ``EICU_`` prefix. Errors name the key. URLs that may carry passwords print
as ``'**********'``. Clinical thresholds never live here: they are versioned code or data.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Final

from eicu.alarms.policy import AlarmPolicy, load_policy
from eicu.errors import AlarmPolicyError, ConfigError
from eicu.sites import check_site_id

PREFIX = "EICU_"


class Secret(str):
    """A string that does not show itself in ``repr`` or logs."""

    def __repr__(self) -> str:
        return "'**********'"


# The engine's alarm channel has a connection (and, on a broker that binds client ids to user
# names, an account) of its own: the engine's client id and user name with this suffix.
ALARMS_CONNECTION_SUFFIX = "-alarms"
STATE_CONNECTION_SUFFIX = "-state"  # an engine's connection that publishes its beds' state
# The TLS files of every MQTT client: (MqttSettings field, environment key).
MQTT_TLS_FILES = (
    ("ca_file", "EICU_MQTT_CA_FILE"),
    ("cert_file", "EICU_MQTT_CERT_FILE"),
    ("key_file", "EICU_MQTT_KEY_FILE"),
)


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: Secret | None = None
    client_id: str = "eicu-ingest"
    # Every version's topics, so that a message of a version the engine does not speak is seen,
    # counted and dead-lettered (unknown_version), never silently unheard.
    topic_filter: str = "eicu/#"
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    # ``mqtts://``: TLS, the broker's certificate verified against ``ca_file`` (the system's
    # trusted CAs when unset) and its host name checked; ``cert_file`` (and ``key_file``, unless
    # the key is in the certificate's file) is this client's certificate, for a broker that
    # requires one.
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # The hub's partitions the engine reads (``eicu/p/<k>/#``) instead of ``topic_filter``
    # (``EICU_MQTT_PARTITIONS``, e.g. "0-63" or "3,7"); None: every topic.
    partitions: tuple[int, ...] | None = None
    # When the engine acknowledges a QoS 1 message (``EICU_MQTT_ACK``): "persist", once all it
    # produced is stored or spooled; "receipt", on arrival (a killed engine loses what it held).
    ack: str = "persist"
    # Further nodes of the same cluster (``EICU_MQTT_URL`` may list several, comma-separated,
    # same scheme and credentials): a reader whose connection is lost tries the next one.
    alternates: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_url(
        cls,
        url: str,
        key: str = "EICU_MQTT_URL",
        *,
        env: Mapping[str, str] | None = None,
        **kw: object,
    ) -> MqttSettings:
        """``mqtt://[user:password@]host[:port]`` (1883) or ``mqtts://...`` (TLS, 8883); the
        TLS files come from ``env`` (``EICU_MQTT_CA_FILE``, ``EICU_MQTT_CERT_FILE``,
        ``EICU_MQTT_KEY_FILE``). Several URLs, comma-separated: the nodes of one cluster,
        the first used first (see ``alternates``)."""
        if "," in url:
            first, *rest = (u.strip() for u in url.split(",") if u.strip())
            head = cls.from_url(first, key, env=env, **kw)
            others = [cls.from_url(u, key, env=env) for u in rest]
            for other in others:
                if other.tls != head.tls or other.username != head.username:
                    raise ConfigError(key, "every node's URL needs the same scheme and user")
            return replace(head, alternates=tuple((o.host, o.port) for o in others))
        tls = urllib.parse.urlsplit(url).scheme == "mqtts"
        _, host, port, username, password = _server_url(
            url, key, ("mqtt", "mqtts", "tcp"), 8883 if tls else 1883
        )
        files = mqtt_tls_files(env or {}, tls, key)
        return cls(
            host=host,
            port=port,
            username=username,
            password=password,
            tls=tls,
            **files,  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def next_node(self) -> MqttSettings:
        """The same settings pointing at the next node of the cluster (itself without others)."""
        if not self.alternates:
            return self
        (host, port), *rest = self.alternates
        return replace(self, host=host, port=port, alternates=(*rest, (self.host, self.port)))

    def for_state(self) -> MqttSettings:
        """The connection that publishes the beds' state (ingest.live.StatePublisher): client id
        and user name with :data:`STATE_CONNECTION_SUFFIX`, like :meth:`for_alarms`."""
        return replace(
            self,
            client_id=self.client_id + STATE_CONNECTION_SUFFIX,
            username=None if self.username is None else self.username + STATE_CONNECTION_SUFFIX,
        )

    def for_alarms(self) -> MqttSettings:
        """The alarm channel's connection: the client id and user name with
        :data:`ALARMS_CONNECTION_SUFFIX` (``eicu broker-auth add-engine`` gives that account the
        engine's password), so that it never shares a session with the ingest's."""
        return replace(
            self,
            client_id=self.client_id + ALARMS_CONNECTION_SUFFIX,
            username=None if self.username is None else self.username + ALARMS_CONNECTION_SUFFIX,
        )


MQTT_ACK_MODES: Final = ("persist", "receipt")
MAX_PARTITIONS: Final = 4096


def parse_partitions(raw: str | None, key: str = "EICU_MQTT_PARTITIONS") -> tuple[int, ...] | None:
    """``"0-63"``, ``"3,7"`` or ``"0-3,8"`` -> the sorted partition numbers; None when unset."""
    if raw is None or not raw.strip():
        return None
    out: set[int] = set()
    for part in raw.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            raise ConfigError(key, f"expected e.g. 0-63 or 3,7, got {raw!r}") from None
        if not 0 <= first <= last < MAX_PARTITIONS:
            raise ConfigError(key, f"{part.strip()!r}: partitions are 0..{MAX_PARTITIONS - 1}")
        out.update(range(first, last + 1))
    return tuple(sorted(out))


def _choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(key) or default
    if raw not in choices:
        raise ConfigError(key, f"expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def mqtt_tls_files(env: Mapping[str, str], tls: bool, url_key: str) -> dict[str, Path | None]:
    """The TLS files named in ``env``: each must exist, and only for an ``mqtts://`` broker
    (a CA file beside a plain ``mqtt://`` URL would suggest an encryption that is not there)."""
    files: dict[str, Path | None] = {}
    for name, key in MQTT_TLS_FILES:
        raw = env.get(key) or None
        files[name] = None
        if raw is None:
            continue
        if not tls:
            raise ConfigError(
                key, f"set, but {url_key} is not mqtts://: nothing would be encrypted"
            )
        if not Path(raw).is_file():
            raise ConfigError(key, f"no such file: {raw}")
        files[name] = Path(raw)
    if files["key_file"] is not None and files["cert_file"] is None:
        raise ConfigError(
            "EICU_MQTT_KEY_FILE", "a key without its certificate (EICU_MQTT_CERT_FILE)"
        )
    return files


@dataclass(frozen=True)
class AdmissionSettings:
    """What the engine lets in, checked before a message is decoded (docs/deployment.md).

    A bed exists when it is registered (``beds_file``) or, with ``auto_register``, when its site
    admits it within the site's new-bed rate and cap. Each site's messages and bytes are
    rate-limited; larger messages than ``max_message_bytes`` are refused unread."""

    # Lines of ``site/bed`` (``#`` comments); re-read when the file changes.
    beds_file: Path | None = None
    auto_register: bool = True
    site_beds_max: int = 512  # beds a site may auto-register
    new_beds_per_s: float = 1.0  # per site, after the burst
    new_beds_burst: int = 128
    sites_max: int = 64  # sites tracked at once (registered sites always are)
    site_messages_per_s: float = 10_000.0
    site_bytes_per_s: float = 16 * 2**20
    rate_burst_s: float = 2.0  # the rate limits' buckets hold this many seconds' worth
    max_message_bytes: int = 512 * 2**10  # the decoder has stricter limits per kind
    # Rejected and refused messages kept whole per reason and window; the rest are counted and
    # summed up in one dead letter per site, reason and window.
    dead_letters_per_window: int = 20
    dead_letter_window_s: float = 10.0
    dead_letter_max_bytes: int = 64 * 2**10  # of a kept payload; longer ones kept as a reference

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AdmissionSettings:
        d = cls()
        beds_file = env.get("EICU_BEDS_FILE") or None
        return cls(
            beds_file=Path(beds_file) if beds_file else None,
            auto_register=env_flag(env, "EICU_AUTO_REGISTER_BEDS", d.auto_register),
            site_beds_max=_int(env, "EICU_SITE_BEDS_MAX", d.site_beds_max, 0, 10**6),
            new_beds_per_s=_float(env, "EICU_NEW_BEDS_PER_S", d.new_beds_per_s, 0.0, 1e4),
            new_beds_burst=_int(env, "EICU_NEW_BEDS_BURST", d.new_beds_burst, 0, 10**6),
            sites_max=_int(env, "EICU_SITES_MAX", d.sites_max, 1, 10**5),
            site_messages_per_s=_float(
                env, "EICU_SITE_MESSAGES_PER_S", d.site_messages_per_s, 1.0, 1e7
            ),
            site_bytes_per_s=_float(env, "EICU_SITE_BYTES_PER_S", d.site_bytes_per_s, 1e3, 1e11),
            rate_burst_s=_float(env, "EICU_RATE_BURST_S", d.rate_burst_s, 0.1, 600.0),
            max_message_bytes=_int(
                env, "EICU_MAX_MESSAGE_BYTES", d.max_message_bytes, 1024, 256 * 2**20
            ),
            dead_letters_per_window=_int(
                env, "EICU_DEAD_LETTERS_PER_WINDOW", d.dead_letters_per_window, 0, 10**6
            ),
            dead_letter_window_s=_float(
                env, "EICU_DEAD_LETTER_WINDOW_S", d.dead_letter_window_s, 0.1, 3600.0
            ),
            dead_letter_max_bytes=_int(
                env, "EICU_DEAD_LETTER_MAX_BYTES", d.dead_letter_max_bytes, 0, 2**20
            ),
        )


@dataclass(frozen=True)
class IngestSettings:
    flush_interval_s: float = 0.2
    batch_max_frames: int = 4000
    memory_max_frames: int = 200_000
    # Bytes of frames waiting for the store in memory; beyond it they go to the spool on disk.
    memory_max_bytes: int = 64 * 2**20
    # Bytes of messages received from the broker and not yet handled; beyond it they are dropped
    # (counted as eicu_ingest_rejected{reason="engine_overloaded"}).
    mqtt_queue_max_bytes: int = 64 * 2**20
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    spool_dir: Path = field(default_factory=lambda: Path("eicu-spool"))
    # Waveform frames of a bed are held this long and stored as one segment (compresses better,
    # fewer rows); the live pipeline sees every frame at once regardless.
    waveform_segment_s: float = 2.0
    # Run each bed's signal pipeline (beats, rhythm flags, quality) in the engine.
    analyse_signals: bool = True
    # A bed's waveform frames go into its signal pipeline in chunks of at least this long
    # (0.25 s frames two at a time): the pipeline's per-call work half as often, its beats and
    # rhythm flags up to one frame later. 0: every frame at once.
    analysis_chunk_s: float = 0.5
    write_retry_min_s: float = 0.5
    write_retry_max_s: float = 10.0
    # A device time further ahead of (or behind) the engine's clock on arrival than this is a
    # device-clock fault: counted, a technical condition of the bed, never the bed's "now".
    device_clock_max_ahead_s: float = 600.0
    device_clock_max_behind_s: float = 7 * 86400.0
    # A bed's standby lasts this long from its time (or its arrival); an older one is ignored.
    standby_max_s: float = 3600.0
    # Publish the beds' state on eicu/state/<site> this often, for dashboards of their own
    # processes (``eicu dashboard``), and answer their alarm commands. 0: never; None: the
    # command's default (``eicu worker``: every second; ``eicu serve``: never).
    state_period_s: float | None = None


@dataclass(frozen=True)
class SmtpSettings:
    """The SMTP server alarm e-mails go through: ``smtp://[user:password@]host[:port]``
    (``smtp+starttls://`` to upgrade the connection with STARTTLS)."""

    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "eicu-alarms@localhost"
    username: str | None = None
    password: Secret | None = None
    starttls: bool = False
    timeout_s: float = 10.0

    @classmethod
    def from_url(
        cls, url: str, key: str = "EICU_SMTP_URL", *, sender: str | None = None
    ) -> SmtpSettings:
        scheme, host, port, username, password = _server_url(
            url, key, ("smtp", "smtp+starttls"), 25
        )
        return cls(
            host=host,
            port=port,
            username=username,
            password=password,
            starttls=scheme == "smtp+starttls",
            sender=sender or cls.sender,
        )


@dataclass(frozen=True)
class MllpClientTls:
    """TLS (1.2 or newer) on every MLLP connection eicu opens (PCD-04 destinations, the PCD-01
    forwarder): the receiver's certificate is verified against ``ca_file`` (else the system's
    trusted CAs) and the destination's host name; ``cert_file`` and ``key_file`` are presented
    to receivers that ask for a client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """The client context; ConfigError naming the setting whose file cannot be used."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_file is not None:
            try:
                context.load_verify_locations(self.ca_file)
            except (ssl.SSLError, OSError) as exc:
                detail = f"not a usable CA file: {exc}"
                raise ConfigError("EICU_HL7_OUT_TLS_CA_FILE", detail) from exc
        if self.cert_file is not None and self.key_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (ssl.SSLError, OSError) as exc:
                detail = f"not a usable certificate and key: {exc}"
                raise ConfigError("EICU_HL7_OUT_TLS_CERT_FILE", detail) from exc
        return context


def mllp_client_context(tls: MllpClientTls | None) -> ssl.SSLContext | None:
    """The client context of outbound MLLP (None: plain MLLP)."""
    return tls.context() if tls is not None else None


def mllp_client_tls(env: Mapping[str, str]) -> MllpClientTls | None:
    """The outbound MLLP TLS settings: ``EICU_HL7_OUT_TLS`` (on/off; on as soon as one of the
    files below is named), ``EICU_HL7_OUT_TLS_CA_FILE``, ``EICU_HL7_OUT_TLS_CERT_FILE`` with
    ``EICU_HL7_OUT_TLS_KEY_FILE``. None: plain MLLP. Each file must exist and be usable."""
    files: dict[str, Path | None] = {}
    for key in (
        "EICU_HL7_OUT_TLS_CA_FILE",
        "EICU_HL7_OUT_TLS_CERT_FILE",
        "EICU_HL7_OUT_TLS_KEY_FILE",
    ):
        raw = (env.get(key) or "").strip()
        if raw and not Path(raw).is_file():
            raise ConfigError(key, f"no such file: {raw}")
        files[key] = Path(raw) if raw else None
    named = any(files.values())
    if not env_flag(env, "EICU_HL7_OUT_TLS", named):
        if named:
            raise ConfigError("EICU_HL7_OUT_TLS", "is off while its certificate files are named")
        return None
    cert, key_file = files["EICU_HL7_OUT_TLS_CERT_FILE"], files["EICU_HL7_OUT_TLS_KEY_FILE"]
    if (cert is None) != (key_file is None):
        missing = "EICU_HL7_OUT_TLS_KEY_FILE" if key_file is None else "EICU_HL7_OUT_TLS_CERT_FILE"
        raise ConfigError(missing, "a client certificate needs both the certificate and its key")
    tls = MllpClientTls(files["EICU_HL7_OUT_TLS_CA_FILE"], cert, key_file)
    tls.context()  # a file that cannot be used is named now, not at the first alarm
    return tls


@dataclass(frozen=True)
class AlertingSettings:
    """Where alarm delivery keeps its outbox, reads its on-call rota, and sends e-mail; the
    site's own alarm policy."""

    outbox_path: Path = field(default_factory=lambda: Path("eicu-alarms.db"))
    rota_path: Path | None = None
    smtp: SmtpSettings | None = None
    # The site's own alarm policy (EICU_ALARM_POLICY_FILE), read and checked when the settings
    # are read; None: the default policy (eicu/alarms/policies/default-v2.json).
    policy_file: Path | None = None
    policy: AlarmPolicy | None = field(default=None, repr=False)
    # Who pages (EICU_ALARM_DELIVERY): "local", the engine itself through its outbox; "bus",
    # the engine publishes its alarm events on ``eicu/alarm/<k>/<site>/<bed>`` and
    # ``eicu alarms deliver`` processes page (docs/alarm-delivery.md, "Delivery as a process").
    delivery: str = "local"
    # The delivery partitions (EICU_ALARM_PARTITIONS): the k of those topics, shared by the
    # delivery processes; the same number for every engine and delivery process of a hub.
    partitions: int = 8
    # IHE PCD-04 destinations (EICU_PCD04_DESTINATIONS, comma-separated host:port): every
    # change of every alarm as an ORU^R40 over MLLP, to the hospital's alarm manager.
    pcd04: tuple[str, ...] = ()
    # TLS towards those destinations (EICU_HL7_OUT_TLS*; None: plain MLLP).
    mllp_tls: MllpClientTls | None = None


def alarm_policy_file(
    env: Mapping[str, str], key: str = "EICU_ALARM_POLICY_FILE"
) -> tuple[Path | None, AlarmPolicy | None]:
    """The policy file named by ``key`` and the policy read from it; (None, None) when unset. A
    missing, unreadable or invalid file is a :class:`ConfigError` naming ``key``, the file and,
    for an invalid policy, its bad entry."""
    raw = (env.get(key) or "").strip()
    if not raw:
        return None, None
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(key, f"no such file: {raw}")
    try:
        policy = load_policy(path)
    except AlarmPolicyError as exc:
        raise ConfigError(key, f"not a valid alarm policy: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read {raw}: {exc}") from exc
    return path, policy


@dataclass(frozen=True)
class HttpSettings:
    """The dashboard's web server."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port
    # Session cookies carry the Secure flag (browsers then send them over HTTPS only). Turn it off
    # only for a dashboard reached over plain http on the same machine.
    cookie_secure: bool = True
    users_file: Path = field(default_factory=lambda: Path("eicu-users.json"))
    session_idle_s: float = 8 * 3600.0
    login_failures_max: int = 5  # per user name and client address, within the window
    login_address_failures_max: int = 20  # per client address, whatever the names
    login_user_delay_max_s: float = 4.0  # a name failing from many addresses is slowed to this
    login_window_s: float = 60.0
    # Addresses (or networks) of reverse proxies whose X-Forwarded-For / -Proto are believed.
    # Empty: none, so a client cannot pick the address the login limit counts against.
    trusted_proxies: tuple[str, ...] = ()
    # /metrics (and the EICU_METRICS_PORT server): with a token, only for "Authorization:
    # Bearer <token>"; bed (and patient) labels only when bed_labels is on.
    metrics_token: Secret | None = None
    metrics_bed_labels: bool = False


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server, as in the browser's ``RTCIceServer``."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: Secret | None = None

    def as_json(self) -> dict[str, object]:
        """The browser's shape (the credential in clear: for a peer that must use it)."""
        out: dict[str, object] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = str(self.credential)
        return out


_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


def parse_ice_servers(value: object, key: str, *, strict: bool = True) -> tuple[IceServer, ...]:
    """ICE servers from decoded JSON: a list of ``{"urls": ..., "username": ...,
    "credential": ...}`` where ``urls`` is one URL or a list of them. Errors name ``key``.
    ``strict``: other fields are errors (a typo in a setting); otherwise they are ignored."""
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a JSON list of ICE servers, got {type(value).__name__}")
    servers = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(where, f"expected an object, got {type(item).__name__}")
        unknown = set(item) - {"urls", "username", "credential"}
        if unknown and strict:
            raise ConfigError(where, f"unknown field(s) {sorted(unknown)}")
        urls = item.get("urls")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise ConfigError(f"{where}.urls", "expected a URL or a non-empty list of URLs")
        for url in urls:
            if not url.startswith(_ICE_SCHEMES):
                raise ConfigError(f"{where}.urls", f"expected stun:, turn: or turns:, got {url!r}")
        username = item.get("username")
        credential = item.get("credential")
        for name, v in (("username", username), ("credential", credential)):
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"{where}.{name}", "expected a string")
        if any(u.startswith(("turn:", "turns:")) for u in urls) and (
            username is None or credential is None
        ):
            raise ConfigError(where, "a TURN server needs a username and a credential")
        servers.append(
            IceServer(
                urls=tuple(urls),
                username=username,
                credential=Secret(credential) if credential is not None else None,
            )
        )
    return tuple(servers)


@dataclass(frozen=True)
class VideoSettings:
    """The bedside cart of a video consult: ICE servers, media devices, reconnection."""

    # STUN/TURN servers. Empty: the cart uses the ones the engine sends when it registers.
    ice_servers: tuple[IceServer, ...] = ()
    # Offer a 127.0.0.1 host candidate. For tests and demos on one machine only: a peer on
    # another machine can never reach it, and production never offers it.
    allow_loopback: bool = False
    # "auto": the first camera (/dev/video0) or microphone (ALSA "default") when present;
    # "none": always the test pattern / tone; anything else: a device name for FFmpeg.
    camera: str = "auto"
    camera_format: str = "v4l2"
    microphone: str = "auto"
    microphone_format: str = "alsa"
    width: int = 640
    height: int = 480
    fps: int = 15
    stats_interval_s: float = 2.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> VideoSettings:
        d = cls()
        raw = env.get("EICU_ICE_SERVERS") or ""
        ice_servers: tuple[IceServer, ...] = ()
        if raw.strip():
            try:
                decoded = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError("EICU_ICE_SERVERS", f"not valid JSON: {exc}") from exc
            ice_servers = parse_ice_servers(decoded, "EICU_ICE_SERVERS")
        return cls(
            ice_servers=ice_servers,
            allow_loopback=env_flag(env, "EICU_VIDEO_ALLOW_LOOPBACK", d.allow_loopback),
            camera=env.get("EICU_VIDEO_CAMERA") or d.camera,
            camera_format=env.get("EICU_VIDEO_CAMERA_FORMAT") or d.camera_format,
            microphone=env.get("EICU_VIDEO_MICROPHONE") or d.microphone,
            microphone_format=env.get("EICU_VIDEO_MICROPHONE_FORMAT") or d.microphone_format,
            width=_int(env, "EICU_VIDEO_WIDTH", d.width, 160, 1920),
            height=_int(env, "EICU_VIDEO_HEIGHT", d.height, 120, 1080),
            fps=_int(env, "EICU_VIDEO_FPS", d.fps, 1, 60),
            stats_interval_s=_float(
                env, "EICU_VIDEO_STATS_INTERVAL_S", d.stats_interval_s, 0.1, 60.0
            ),
            reconnect_min_s=_float(
                env, "EICU_VIDEO_RECONNECT_MIN_S", d.reconnect_min_s, 0.01, 60.0
            ),
            reconnect_max_s=_float(
                env, "EICU_VIDEO_RECONNECT_MAX_S", d.reconnect_max_s, 0.01, 600.0
            ),
        )


@dataclass(frozen=True)
class StoreSettings:
    """The database's housekeeping (operational, not clinical): TimescaleDB use, retention,
    compression, chunk sizing, and the device-clock guard of the store."""

    # "auto": TimescaleDB when the server has it preloaded, plain PostgreSQL otherwise;
    # "require": fail without it; "off": plain PostgreSQL tables even where it is available.
    timescale: str = "auto"
    beds: int = 20  # beds of the unit: chunk intervals scale with it
    numerics_keep_days: float = 400.0
    waveforms_keep_days: float = 35.0
    trends_keep_days: float = 5 * 365.0
    events_keep_days: float = 90.0  # status events and dead letters
    numerics_compress_after_h: float = 48.0
    trends_compress_after_days: float = 7.0
    trends_refresh_window_h: float = 3.0
    # A device time further than this before its receipt (or more than the lead after it) is
    # not trusted: the value is stored at its receipt time, the device time kept beside it.
    device_time_max_lag_h: float = 7 * 24.0
    device_time_max_lead_s: float = 600.0
    maintenance_interval_s: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StoreSettings:
        d = cls()
        mode = (env.get("EICU_TIMESCALE") or d.timescale).strip().lower()
        if mode not in ("auto", "require", "off"):
            raise ConfigError("EICU_TIMESCALE", f"expected auto, require or off, got {mode!r}")
        days = 100 * 365.0
        s = cls(
            timescale=mode,
            beds=_int(env, "EICU_EXPECTED_BEDS", d.beds, 1, 100_000),
            numerics_keep_days=_float(
                env, "EICU_NUMERICS_KEEP_DAYS", d.numerics_keep_days, 1.0, days
            ),
            waveforms_keep_days=_float(
                env, "EICU_WAVEFORMS_KEEP_DAYS", d.waveforms_keep_days, 1.0, days
            ),
            trends_keep_days=_float(env, "EICU_TRENDS_KEEP_DAYS", d.trends_keep_days, 1.0, days),
            events_keep_days=_float(env, "EICU_EVENTS_KEEP_DAYS", d.events_keep_days, 1.0, days),
            numerics_compress_after_h=_float(
                env, "EICU_NUMERICS_COMPRESS_AFTER_H", d.numerics_compress_after_h, 1.0, 1e6
            ),
            trends_compress_after_days=_float(
                env, "EICU_TRENDS_COMPRESS_AFTER_DAYS", d.trends_compress_after_days, 1.0, days
            ),
            trends_refresh_window_h=_float(
                env, "EICU_TRENDS_REFRESH_WINDOW_H", d.trends_refresh_window_h, 0.5, 24.0 * 30
            ),
            device_time_max_lag_h=_float(
                env, "EICU_DEVICE_TIME_MAX_LAG_H", d.device_time_max_lag_h, 1.0, 24.0 * 365
            ),
            device_time_max_lead_s=_float(
                env, "EICU_DEVICE_TIME_MAX_LEAD_S", d.device_time_max_lead_s, 1.0, 86_400.0
            ),
            maintenance_interval_s=_float(
                env, "EICU_STORE_MAINTENANCE_S", d.maintenance_interval_s, 1.0, 86_400.0
            ),
        )
        shortest_keep_h = 24.0 * min(s.numerics_keep_days, s.waveforms_keep_days)
        if s.device_time_max_lag_h >= shortest_keep_h:
            raise ConfigError(
                "EICU_DEVICE_TIME_MAX_LAG_H",
                f"must be shorter than the shortest retention ({shortest_keep_h:g} h), "
                f"or retention could drop data as it arrives",
            )
        if s.trends_compress_after_days * 24.0 <= s.trends_refresh_window_h:
            raise ConfigError(
                "EICU_TRENDS_COMPRESS_AFTER_DAYS", "must be longer than the trends refresh window"
            )
        return s


@dataclass(frozen=True)
class WorkerSettings:
    """``eicu worker``: the hub's partitions shared by several engine processes (docs/bus.md).

    ``partition_count`` is the N of the broker's ``partition(N, ...)`` mappings
    (``EICU_PARTITION_COUNT``); ``nats_urls`` the NATS servers that hold the ownership buckets
    (``EICU_NATS_URL``, comma-separated ``nats://host:port``); ``worker_id`` names this process
    in them (``EICU_WORKER_ID``, default host name and process id); ``ownership_ttl_s``: how long
    a dead worker's partitions stay with it before another takes them (``EICU_OWNERSHIP_TTL_S``)."""

    partition_count: int = 64
    nats_urls: tuple[str, ...] = ()
    worker_id: str = ""
    ownership_ttl_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        d = cls()
        raw = env.get("EICU_NATS_URL") or ""
        urls = tuple(u.strip() for u in raw.split(",") if u.strip())
        for url in urls:
            scheme = urllib.parse.urlsplit(url).scheme
            if scheme not in ("nats", "tls"):
                raise ConfigError("EICU_NATS_URL", f"expected nats://host:port, got {url!r}")
        return cls(
            partition_count=_int(env, "EICU_PARTITION_COUNT", d.partition_count, 1, MAX_PARTITIONS),
            nats_urls=urls,
            worker_id=env.get("EICU_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}",
            ownership_ttl_s=_float(env, "EICU_OWNERSHIP_TTL_S", d.ownership_ttl_s, 1.0, 300.0),
        )


def _nats_urls(env: Mapping[str, str], key: str, default: str = "") -> tuple[str, ...]:
    raw = env.get(key) or default
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ConfigError(key, f"expected nats://host:port or tls://host:port, got {url!r}")
    return urls


# How long a site keeps what it captured for the hub, and the hub what it sourced: a week.
SITE_MAX_AGE_S = 7 * 86_400.0


@dataclass(frozen=True)
class SiteSettings:
    """``eicu site``, the node of a remote ICU (docs/remote-sites.md). ``site_id``
    (``EICU_SITE_ID``) names the site in every topic, its JetStream domain (``site-<id>``) and
    its stream at the hub. ``hub_leaf_urls`` (``EICU_SITE_HUB_URL``, comma-separated
    ``nats-leaf://host:7422`` or ``tls://host:7422``): the hub's leafnode listeners, where this
    site's leaf node connects as ``leaf-<id>`` with the password the hub gave it
    (``EICU_SITE_HUB_PASSWORD``), over TLS when ``EICU_SITE_HUB_CA_FILE`` (the CA that signs the
    hub's certificate), ``EICU_SITE_HUB_CERT_FILE`` and ``EICU_SITE_HUB_KEY_FILE`` (the site's
    certificate, which the hub verifies) are set, all three or none. ``nats_urls``
    (``EICU_NATS_URL``, default ``nats://127.0.0.1:4222``): the site's own NATS server, where the
    capture stream is kept for ``max_age_s`` (``EICU_SITE_MAX_AGE_S``) or ``max_bytes``
    (``EICU_SITE_MAX_BYTES``), whichever comes first."""

    site_id: str
    hub_leaf_urls: tuple[str, ...] = ()
    hub_password: Secret | None = None
    hub_tls: tuple[Path, Path, Path] | None = None  # (CA, certificate, key)
    nats_urls: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    max_age_s: float = SITE_MAX_AGE_S
    max_bytes: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SiteSettings:
        raw_id = env.get("EICU_SITE_ID") or ""
        if not raw_id:
            raise ConfigError("EICU_SITE_ID", "required by eicu site (e.g. karamay)")
        leaf_urls = tuple(
            u.strip() for u in (env.get("EICU_SITE_HUB_URL") or "").split(",") if u.strip()
        )
        for url in leaf_urls:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("nats-leaf", "tls") or not parts.hostname:
                raise ConfigError(
                    "EICU_SITE_HUB_URL",
                    f"expected nats-leaf://host:port or tls://host:port, got {url!r}",
                )
        tls_keys = ("EICU_SITE_HUB_CA_FILE", "EICU_SITE_HUB_CERT_FILE", "EICU_SITE_HUB_KEY_FILE")
        tls_files = [env.get(key) or None for key in tls_keys]
        for key, value in zip(tls_keys, tls_files, strict=True):
            if value is not None and not Path(value).is_file():
                raise ConfigError(key, f"no such file: {value}")
        if any(tls_files) and not all(tls_files):
            missing = next(k for k, v in zip(tls_keys, tls_files, strict=True) if v is None)
            raise ConfigError(missing, "TLS on the leaf link needs the CA, certificate and key")
        hub_tls = None
        if all(tls_files):
            ca, cert, key_file = (Path(v) for v in tls_files if v is not None)
            hub_tls = (ca, cert, key_file)
        password = env.get("EICU_SITE_HUB_PASSWORD") or None
        max_bytes = env.get("EICU_SITE_MAX_BYTES") or None
        return cls(
            site_id=check_site_id(raw_id),
            hub_leaf_urls=leaf_urls,
            hub_password=Secret(password) if password else None,
            hub_tls=hub_tls,
            nats_urls=_nats_urls(env, "EICU_NATS_URL", "nats://127.0.0.1:4222"),
            max_age_s=_float(env, "EICU_SITE_MAX_AGE_S", SITE_MAX_AGE_S, 60.0, 366 * 86_400.0),
            max_bytes=None
            if max_bytes is None
            else _int(env, "EICU_SITE_MAX_BYTES", 0, 2**20, 2**50),
        )


@dataclass(frozen=True)
class SiteFeedSettings:
    """``eicu site-feed``, the hub's reader of remote sites (docs/remote-sites.md): the sites
    it stores (``EICU_SITES``, comma-separated site ids), the hub's NATS (``EICU_NATS_URL``),
    how long a message it took may stay unacknowledged before JetStream sends it again
    (``EICU_SITE_ACK_WAIT_S``: above the time the writer takes to make a message durable) and
    how long the hub keeps a site's messages (``EICU_SITE_MAX_AGE_S``). At a hub where each site
    has an account of its own, the feed reads each site's stream as ``feed-<id>`` with the
    password of ``EICU_SITE_FEED_PASSWORDS_FILE`` (a JSON object: site id -> password)."""

    sites: tuple[str, ...]
    nats_urls: tuple[str, ...]
    ack_wait_s: float = 30.0
    max_age_s: float = SITE_MAX_AGE_S
    passwords: Mapping[str, Secret] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SiteFeedSettings:
        sites = tuple(s.strip() for s in (env.get("EICU_SITES") or "").split(",") if s.strip())
        if not sites:
            raise ConfigError("EICU_SITES", "required by eicu site-feed (e.g. karamay,hotan)")
        for site in sites:
            check_site_id(site, "EICU_SITES")
        if len(set(sites)) != len(sites):
            raise ConfigError("EICU_SITES", f"a site is listed twice: {','.join(sites)}")
        urls = _nats_urls(env, "EICU_NATS_URL")
        if not urls:
            raise ConfigError("EICU_NATS_URL", "required by eicu site-feed (nats://host:port)")
        passwords: dict[str, Secret] = {}
        key = "EICU_SITE_FEED_PASSWORDS_FILE"
        path = env.get(key) or None
        if path is not None:
            try:
                doc = json.loads(Path(path).read_text())
            except OSError as exc:
                raise ConfigError(key, f"cannot read {path}: {exc}") from exc
            except ValueError as exc:
                raise ConfigError(key, f"{path} is not JSON: {exc}") from exc
            if not isinstance(doc, dict):
                raise ConfigError(key, f"{path}: expected an object of site id -> password")
            for site in sites:
                value = doc.get(site)
                if not isinstance(value, str) or not value:
                    raise ConfigError(key, f"{path}: no password for site {site!r}")
                passwords[site] = Secret(value)
        return cls(
            passwords=passwords,
            sites=sites,
            nats_urls=urls,
            ack_wait_s=_float(env, "EICU_SITE_ACK_WAIT_S", 30.0, 1.0, 3600.0),
            max_age_s=_float(env, "EICU_SITE_MAX_AGE_S", SITE_MAX_AGE_S, 60.0, 366 * 86_400.0),
        )


@dataclass(frozen=True)
class Settings:
    mqtt: MqttSettings | None
    database_url: Secret | None
    ingest: IngestSettings
    metrics_port: int | None
    log_level: str
    alerting: AlertingSettings = field(default_factory=AlertingSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    video: VideoSettings = field(default_factory=VideoSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        mqtt_url = env.get("EICU_MQTT_URL") or None
        mqtt = None
        if mqtt_url is not None:
            mqtt = MqttSettings.from_url(mqtt_url, env=env)
            # The engine's client id is its user name unless set: a broker that binds client ids
            # to user names (use_username_as_clientid) gives it that id anyway.
            client_id = env.get("EICU_MQTT_CLIENT_ID") or mqtt.username
            mqtt = replace(
                mqtt,
                client_id=client_id or f"eicu-ingest-{socket.gethostname()}",
                partitions=parse_partitions(env.get("EICU_MQTT_PARTITIONS") or None),
                ack=_choice(env, "EICU_MQTT_ACK", mqtt.ack, MQTT_ACK_MODES),
            )
        else:
            mqtt_tls_files(env, False, "EICU_MQTT_URL")  # TLS files with no broker: an error
        db_url = env.get("EICU_DATABASE_URL") or None
        if db_url is not None:
            scheme = urllib.parse.urlsplit(db_url).scheme
            if scheme not in ("postgresql", "postgres", "sqlite"):
                raise ConfigError(
                    "EICU_DATABASE_URL",
                    f"expected postgresql://... or sqlite:///path, got {scheme!r}",
                )
        defaults = IngestSettings()
        ingest = IngestSettings(
            flush_interval_s=_float(
                env, "EICU_FLUSH_INTERVAL_S", defaults.flush_interval_s, 0.01, 60
            ),
            batch_max_frames=_int(
                env, "EICU_BATCH_MAX_FRAMES", defaults.batch_max_frames, 1, 10**6
            ),
            memory_max_frames=_int(
                env, "EICU_MEMORY_MAX_FRAMES", defaults.memory_max_frames, 1, 10**8
            ),
            spool_dir=Path(env.get("EICU_SPOOL_DIR") or defaults.spool_dir),
            analyse_signals=env_flag(env, "EICU_ANALYSE_SIGNALS", defaults.analyse_signals),
            analysis_chunk_s=_float(
                env, "EICU_ANALYSIS_CHUNK_S", defaults.analysis_chunk_s, 0.0, 10.0
            ),
            waveform_segment_s=_float(
                env, "EICU_WAVEFORM_SEGMENT_S", defaults.waveform_segment_s, 0.0, 60.0
            ),
            memory_max_bytes=_int(
                env, "EICU_MEMORY_MAX_BYTES", defaults.memory_max_bytes, 2**20, 2**40
            ),
            mqtt_queue_max_bytes=_int(
                env, "EICU_MQTT_QUEUE_MAX_BYTES", defaults.mqtt_queue_max_bytes, 2**20, 2**40
            ),
            admission=AdmissionSettings.from_env(env),
            device_clock_max_ahead_s=_float(
                env,
                "EICU_DEVICE_CLOCK_MAX_AHEAD_S",
                defaults.device_clock_max_ahead_s,
                1.0,
                86_400.0,
            ),
            device_clock_max_behind_s=_float(
                env,
                "EICU_DEVICE_CLOCK_MAX_BEHIND_S",
                defaults.device_clock_max_behind_s,
                60.0,
                366 * 86_400.0,
            ),
            standby_max_s=_float(env, "EICU_STANDBY_MAX_S", defaults.standby_max_s, 10.0, 86_400.0),
            state_period_s=_float(env, "EICU_STATE_PERIOD_S", -1.0, 0.0, 60.0)
            if env.get("EICU_STATE_PERIOD_S")
            else None,
        )
        metrics_port = env.get("EICU_METRICS_PORT")
        smtp_url = env.get("EICU_SMTP_URL") or None
        rota_file = env.get("EICU_ROTA_FILE") or None
        policy_file, policy = alarm_policy_file(env)
        alerting = AlertingSettings(
            outbox_path=Path(env.get("EICU_OUTBOX_PATH") or AlertingSettings().outbox_path),
            rota_path=Path(rota_file) if rota_file else None,
            smtp=SmtpSettings.from_url(smtp_url, sender=env.get("EICU_SMTP_SENDER"))
            if smtp_url
            else None,
            policy_file=policy_file,
            policy=policy,
            delivery=_choice(env, "EICU_ALARM_DELIVERY", "local", ("local", "bus")),
            partitions=_int(env, "EICU_ALARM_PARTITIONS", 8, 1, MAX_PARTITIONS),
            pcd04=_destinations(env, "EICU_PCD04_DESTINATIONS"),
            mllp_tls=mllp_client_tls(env),
        )
        http_defaults = HttpSettings()
        http = HttpSettings(
            host=env.get("EICU_HTTP_HOST") or http_defaults.host,
            port=_int(env, "EICU_HTTP_PORT", http_defaults.port, 0, 65535),
            cookie_secure=env_flag(env, "EICU_COOKIE_SECURE", http_defaults.cookie_secure),
            users_file=Path(env.get("EICU_USERS_FILE") or http_defaults.users_file),
            session_idle_s=_float(
                env, "EICU_SESSION_IDLE_S", http_defaults.session_idle_s, 60.0, 7 * 86400.0
            ),
            trusted_proxies=_networks(env, "EICU_TRUSTED_PROXIES"),
            metrics_token=secret_token(env, "EICU_METRICS_TOKEN"),
            metrics_bed_labels=env_flag(
                env, "EICU_METRICS_BED_LABELS", http_defaults.metrics_bed_labels
            ),
        )
        return cls(
            mqtt=mqtt,
            database_url=Secret(db_url) if db_url else None,
            ingest=ingest,
            metrics_port=_int(env, "EICU_METRICS_PORT", 0, 0, 65535) if metrics_port else None,
            log_level=(env.get("EICU_LOG_LEVEL") or "INFO").upper(),
            alerting=alerting,
            http=http,
            video=VideoSettings.from_env(env),
            store=StoreSettings.from_env(env),
            worker=WorkerSettings.from_env(env),
        )

    def describe(self) -> dict[str, str]:
        """The settings in force, secrets masked: for logs and ``--help`` output."""
        return {f.name: repr(getattr(self, f.name)) for f in fields(self)}


def _server_url(
    url: str, key: str, schemes: tuple[str, ...], default_port: int
) -> tuple[str, str, int, str | None, Secret | None]:
    """(scheme, host, port, user, password) of ``scheme://[user:password@]host[:port]``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in schemes:
        raise ConfigError(key, f"expected {schemes[0]}://host:port, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ConfigError(key, "no host in the URL")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ConfigError(key, f"bad port: {exc}") from exc
    password = Secret(urllib.parse.unquote(parts.password)) if parts.password else None
    username = urllib.parse.unquote(parts.username) if parts.username else None
    return parts.scheme, parts.hostname, port, username, password


def read_env_file(path: Path) -> dict[str, str]:
    """Read ``KEY=VALUE`` lines (``#`` comments, optional quotes) into a mapping."""
    out: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.startswith(PREFIX):
            raise ConfigError(f"{path}:{lineno}", f"expected EICU_KEY=value, got {line[:40]!r}")
        out[key] = value.strip().strip("'\"")
    return out


def _networks(env: Mapping[str, str], key: str) -> tuple[str, ...]:
    """A comma-separated list of IP addresses or networks (``10.0.0.5,10.1.0.0/16``)."""
    out = []
    for item in (env.get(key) or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise ConfigError(key, f"expected IP addresses or networks, got {item!r}") from exc
        out.append(item)
    return tuple(out)


def secret_token(env: Mapping[str, str], key: str) -> Secret | None:
    """A bearer token setting: None when unset; 16 or more printable characters otherwise."""
    raw = (env.get(key) or "").strip()
    if not raw:
        return None
    if len(raw) < 16 or not raw.isprintable() or " " in raw:
        raise ConfigError(key, "expected at least 16 printable characters without spaces")
    return Secret(raw)


def _destinations(env: Mapping[str, str], key: str) -> tuple[str, ...]:
    """Comma-separated ``host:port`` addresses; ConfigError naming the one that is not."""
    out = []
    for raw in (env.get(key) or "").split(","):
        address = raw.strip()
        if not address:
            continue
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(key, f"expected host:port, got {address!r}")
        out.append(address)
    return tuple(out)


def _int(env: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(key, f"expected an integer, got {raw!r}") from exc
    if not lo <= value <= hi:
        raise ConfigError(key, f"must be between {lo} and {hi}, got {value}")
    return value


def env_flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    """A yes/no setting: 1/0, true/false, yes/no or on/off; empty or unset is ``default``."""
    raw = (env.get(key) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, f"expected 1/0, true/false, yes/no or on/off, got {raw!r}")


def _float(env: Mapping[str, str], key: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(key, f"expected a number, got {raw!r}") from exc
    if not lo <= value <= hi:
        raise ConfigError(key, f"must be between {lo} and {hi}, got {value}")
    return value
