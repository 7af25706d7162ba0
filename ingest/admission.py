"""Admission control at the engine's door: which beds exist, how much each site may send.

Every message passes :meth:`Admission.check` before it is decoded; the check costs a topic
split and a few dictionary look-ups, so refusing a flood is far cheaper than handling it:

1. size: a message larger than ``max_message_bytes`` is rejected unread (``oversized``, counted
   with the decoder's rejections in ``eicu_ingest_rejected``);
2. the site: a site is tracked when one of its beds is registered or, with auto-registration,
   while fewer than ``sites_max`` sites are (``unknown_site``);
3. the bed (numerics, waveform and status topics): a bed exists when it is registered in the
   beds file or was admitted before (remembered in a file beside the spool, so a restart keeps
   them); otherwise, with auto-registration, it is admitted within its site's new-bed rate
   (``new_bed_rate``) and cap (``site_bed_cap``); without it, it is ``unknown_bed``;
4. the site's message and byte rates (token buckets holding ``rate_burst_s`` of each):
   ``rate_limited``.

A message refused at step 3 never spends its site's rate, so a flood of new bed ids cannot
crowd out the beds that exist. Refusals are counted (``eicu_ingest_refused{reason}``) and
dead-lettered through :class:`DeadLetters`, which keeps a few whole and sums up the rest.

An auto-registered bed is *new* until it has delivered a stream: at least
:data:`CONFIRM_MESSAGES` messages over at least :data:`CONFIRM_S` (:meth:`Admission.observe`).
A new bed's data and physiological alarms are live, but its bed-level technical conditions (no
data, offline, standby, device clock) raise no alarm: a bed heard once, as each of a flood of
made-up ids is, is not a bed whose silence the central station must sound. Registered beds are
never new, nor are the first :data:`MONITORED_AT_ONCE` beds a site auto-registers within
:data:`AT_ONCE_HOLD_S` (a monitor plugged in at a bedside is watched from its first message).
Confirmed beds are remembered beside the admitted ones, so a restart keeps them confirmed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from eicu.config import AdmissionSettings
from eicu.errors import ConfigError
from eicu.metrics import IngestMetrics
from eicu.models import ID_RE, BedKey, DeadLetter

log = logging.getLogger(__name__)

RELOAD_EVERY_S = 5.0  # how often the beds file's modification time is looked at
SUMMARY_KEYS_MAX = 1000  # (site, reason) pairs summed up per window; beyond, one per reason
PAYLOAD_HEAD_BYTES = 256  # kept of a payload dead-lettered by reference
_BED_KINDS = ("numerics", "waveform", "status")
# An auto-registered bed is confirmed (no longer new) once it has sent this many messages over at
# least this long: a monitor streams numerics every second, a made-up id is heard once.
CONFIRM_S = 30.0
CONFIRM_MESSAGES = 10
# Of the beds a site auto-registers, this many at a time are watched from their first message
# (each slot freed when its bed is confirmed, or AT_ONCE_HOLD_S after it was admitted); beyond
# that (a gateway bringing a whole ward at once, or a flood of new ids) a bed is new until
# confirmed.
MONITORED_AT_ONCE = 2
AT_ONCE_HOLD_S = 300.0

REFUSALS = {
    "oversized": "message larger than EICU_MAX_MESSAGE_BYTES (not read)",
    "unknown_site": "site not registered and EICU_SITES_MAX sites already tracked",
    "unknown_bed": "bed not registered (auto-registration is off)",
    "new_bed_rate": "bed not registered and its site over EICU_NEW_BEDS_PER_S",
    "site_bed_cap": "bed not registered and its site at EICU_SITE_BEDS_MAX auto-registered beds",
    "rate_limited": "site over EICU_SITE_MESSAGES_PER_S or EICU_SITE_BYTES_PER_S",
}


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up; starts full."""

    __slots__ = ("at_s", "capacity", "rate", "tokens")

    def __init__(self, rate: float, capacity: float, now_s: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.at_s = now_s

    def take(self, n: float, now_s: float) -> bool:
        if now_s > self.at_s:
            self.tokens = min(self.capacity, self.tokens + (now_s - self.at_s) * self.rate)
            self.at_s = now_s
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


@dataclass(slots=True)
class _Site:
    messages: TokenBucket
    bytes: TokenBucket
    new_beds: TokenBucket
    auto_beds: int = 0
    # Auto-registered beds watched from their first message, not yet confirmed -> admitted at.
    at_once: dict[BedKey, float] = field(default_factory=dict)


def read_beds_file(path: Path) -> set[BedKey]:
    """The beds of a beds file: one ``site/bed`` a line, ``#`` comments. Errors name the line."""
    beds: set[BedKey] = set()
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        site, sep, bed = line.partition("/")
        if not sep or not ID_RE.fullmatch(site) or not ID_RE.fullmatch(bed):
            raise ConfigError(f"{path}:{lineno}", f"expected site/bed, got {line[:60]!r}")
        beds.add(BedKey(site, bed))
    return beds


class Admission:
    """See the module docstring. ``admitted_path``: where auto-registered beds are remembered
    (None: not remembered)."""

    def __init__(
        self,
        settings: AdmissionSettings,
        metrics: IngestMetrics,
        admitted_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._clock = clock
        self.registered: set[BedKey] = set()
        self._registered_sites: set[str] = set()
        self._beds_mtime: float | None = None
        self._reload_at_s = 0.0
        if settings.beds_file is not None:
            if not settings.beds_file.is_file():
                raise ConfigError("EICU_BEDS_FILE", f"no such file: {settings.beds_file}")
            self._load_beds_file()
        self.admitted: set[BedKey] = set()
        self._sites: dict[str, _Site] = {}
        self._admitted_path = admitted_path
        if admitted_path is not None and admitted_path.is_file():
            for line in admitted_path.read_text(encoding="utf-8").splitlines():
                site, sep, bed = line.strip().partition("/")
                if sep and ID_RE.fullmatch(site) and ID_RE.fullmatch(bed):
                    self.admitted.add(BedKey(site, bed))
        self._auto_by_site: dict[str, int] = {}
        for key in self.admitted:
            self._auto_by_site[key.site] = self._auto_by_site.get(key.site, 0) + 1
        self.confirm_s = CONFIRM_S
        self.confirm_messages = CONFIRM_MESSAGES
        self._confirmed_path = (
            None if admitted_path is None else admitted_path.with_name("confirmed-beds.txt")
        )
        confirmed: set[BedKey] = set()
        if self._confirmed_path is not None and self._confirmed_path.is_file():
            for line in self._confirmed_path.read_text(encoding="utf-8").splitlines():
                site, sep, bed = line.strip().partition("/")
                if sep and ID_RE.fullmatch(site) and ID_RE.fullmatch(bed):
                    confirmed.add(BedKey(site, bed))
        # Auto-registered beds not yet confirmed by a stream; a restart keeps them new.
        self.new: set[BedKey] = self.admitted - confirmed
        # The beds whose stream is watched for confirmation: the new ones and those watched
        # from their first message (a set look-up a message).
        self.watching: set[BedKey] = set(self.new)

    # --- registration ------------------------------------------------------------------------

    def _load_beds_file(self) -> None:
        path = self.settings.beds_file
        assert path is not None
        self._beds_mtime = path.stat().st_mtime
        self.registered = read_beds_file(path)
        self._registered_sites = {b.site for b in self.registered}
        self._metrics.beds_registered.set(len(self.registered))

    def _maybe_reload(self, now_s: float) -> None:
        if self.settings.beds_file is None or now_s < self._reload_at_s:
            return
        self._reload_at_s = now_s + RELOAD_EVERY_S
        try:
            if self.settings.beds_file.stat().st_mtime != self._beds_mtime:
                self._load_beds_file()
                log.info("beds file re-read: %d beds registered", len(self.registered))
        except (OSError, ConfigError) as exc:
            log.error("beds file not re-read, keeping the beds registered before: %s", exc)

    def is_known(self, bed: BedKey) -> bool:
        return bed in self.registered or bed in self.admitted

    def is_new(self, bed: BedKey) -> bool:
        """True for an auto-registered bed not yet confirmed by a stream (its bed-level
        technical conditions raise no alarm); a registered bed is never new."""
        return bed in self.new and bed not in self.registered

    def observe(self, bed: BedKey, messages: int, first_seen_us: int, last_seen_us: int) -> None:
        """A message of ``bed`` was handled: ``messages`` so far, heard from ``first_seen_us``
        to ``last_seen_us`` (receive times). Confirms a watched bed that has streamed long
        enough."""
        if bed not in self.watching:
            return
        if messages < self.confirm_messages or last_seen_us - first_seen_us < self.confirm_s * 1e6:
            return
        self.watching.discard(bed)
        self.new.discard(bed)
        site = self._sites.get(bed.site)
        if site is not None:
            site.at_once.pop(bed, None)
        if self._confirmed_path is not None:
            # Once a bed: cheap enough for the loop.
            self._confirmed_path.parent.mkdir(parents=True, exist_ok=True)
            with self._confirmed_path.open("a", encoding="utf-8") as fh:
                fh.write(f"{bed.site}/{bed.bed}\n")
        log.info("bed %s/%s confirmed by its stream", bed.site, bed.bed)

    def adopt(self, beds: Iterable[BedKey]) -> None:
        """Beds that streamed to another engine of the hub, taken over with their partition:
        admitted and confirmed already (no new-bed rate, no new-bed watch), counted in their
        site's auto-registered beds."""
        for bed in beds:
            self.new.discard(bed)
            self.watching.discard(bed)
            if bed in self.admitted or bed in self.registered:
                continue
            self.admitted.add(bed)
            self._auto_by_site[bed.site] = self._auto_by_site.get(bed.site, 0) + 1
            site = self._sites.get(bed.site)
            if site is not None:
                site.auto_beds += 1

    # --- the check ---------------------------------------------------------------------------

    def check(self, topic: str, size: int) -> str | None:
        """None when the message may be decoded, else the reason it is refused."""
        s = self.settings
        if size > s.max_message_bytes:
            return "oversized"
        parts = topic.split("/", 5)
        if len(parts) < 4 or parts[0] != "eicu":
            return None  # not a site's topic: the decoder says what is wrong with it
        now_s = self._clock()
        if self._beds_mtime is not None:
            self._maybe_reload(now_s)
        site_id = parts[2]
        site = self._sites.get(site_id)
        if site is None:
            if not ID_RE.fullmatch(site_id):
                return None  # the decoder rejects the topic
            site = self._site(site_id, now_s)
            if site is None:
                return "unknown_site"
        if len(parts) == 5 and parts[4] in _BED_KINDS:
            bed = BedKey(site_id, parts[3])
            if bed not in self.admitted and bed not in self.registered:
                if not ID_RE.fullmatch(parts[3]):
                    return None  # the decoder rejects the topic
                refused = self._bed(site, bed, now_s)
                if refused is not None:
                    return refused
        if not site.messages.take(1, now_s) or not site.bytes.take(size, now_s):
            return "rate_limited"
        return None

    def admit_beds(self, site_id: str, beds: Iterable[str]) -> tuple[tuple[str, ...], int]:
        """The beds of a gateway's status that exist or are admitted now, and how many not."""
        now_s = self._clock()
        site = self._sites.get(site_id) or self._site(site_id, now_s)
        kept: list[str] = []
        refused = 0
        for bed in beds:
            if site is not None and self._bed(site, BedKey(site_id, bed), now_s) is None:
                kept.append(bed)
            else:
                refused += 1
        return tuple(kept), refused

    def _site(self, site_id: str, now_s: float) -> _Site | None:
        s = self.settings
        registered = site_id in self._registered_sites
        if not registered and not s.auto_register:
            return None
        if not registered and len(self._sites) >= s.sites_max:
            return None
        burst = s.rate_burst_s
        site = _Site(
            messages=TokenBucket(s.site_messages_per_s, s.site_messages_per_s * burst, now_s),
            bytes=TokenBucket(s.site_bytes_per_s, s.site_bytes_per_s * burst, now_s),
            new_beds=TokenBucket(s.new_beds_per_s, s.new_beds_burst, now_s),
            auto_beds=self._auto_by_site.get(site_id, 0),
        )
        self._sites[site_id] = site
        return site

    def _bed(self, site: _Site, bed: BedKey, now_s: float) -> str | None:
        if bed in self.admitted or bed in self.registered:
            return None
        s = self.settings
        if not s.auto_register:
            return "unknown_bed"
        if site.auto_beds >= s.site_beds_max:
            return "site_bed_cap"
        if not site.new_beds.take(1, now_s):
            return "new_bed_rate"
        site.auto_beds += 1
        self.admitted.add(bed)
        for key, since_s in list(site.at_once.items()):
            if now_s - since_s >= AT_ONCE_HOLD_S:
                del site.at_once[key]
        if len(site.at_once) < MONITORED_AT_ONCE:
            site.at_once[bed] = now_s
        else:
            self.new.add(bed)
        self.watching.add(bed)
        self._metrics.beds_admitted.inc()
        if self._admitted_path is not None:
            # At most the new-bed rate of appends: cheap enough for the loop.
            self._admitted_path.parent.mkdir(parents=True, exist_ok=True)
            with self._admitted_path.open("a", encoding="utf-8") as fh:
                fh.write(f"{bed.site}/{bed.bed}\n")
        log.info("bed %s/%s auto-registered", bed.site, bed.bed)
        return None


class DeadLetters:
    """The dead-letter path, bounded: per reason, the first ``dead_letters_per_window`` messages
    of each window are kept (payloads longer than ``dead_letter_max_bytes`` by reference: their
    length, SHA-256 and first bytes); the others are counted and summed up in one dead letter
    per site and reason when the window ends."""

    def __init__(
        self,
        settings: AdmissionSettings,
        sink: Callable[[DeadLetter], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._sink = sink
        self._clock = clock
        self._window_end_s = clock() + settings.dead_letter_window_s
        self._kept: dict[str, int] = {}
        # (site, reason) -> [messages, bytes, first topic]
        self._summary: dict[tuple[str, str], list[object]] = {}
        self.kept = 0
        self.summarised = 0

    def add(self, received_us: int, topic: str, reason: str, detail: str, payload: bytes) -> None:
        now_s = self._clock()
        if now_s >= self._window_end_s:
            self.flush(received_us)
        s = self._settings
        n = self._kept.get(reason, 0)
        if n < s.dead_letters_per_window:
            self._kept[reason] = n + 1
            self.kept += 1
            if len(payload) > s.dead_letter_max_bytes:
                digest = hashlib.sha256(payload).hexdigest()
                detail = (
                    f"{detail}; payload of {len(payload)} bytes not kept whole "
                    f"(sha256 {digest}, first {PAYLOAD_HEAD_BYTES} bytes kept)"
                )[:1000]
                payload = payload[:PAYLOAD_HEAD_BYTES]
            self._sink(DeadLetter(received_us, topic[:512], reason, detail, payload))
            return
        parts = topic.split("/", 3)
        site = parts[2][:64] if len(parts) > 2 else ""
        key = (site, reason)
        entry = self._summary.get(key)
        if entry is None:
            if len(self._summary) >= SUMMARY_KEYS_MAX:
                key = ("*", reason)
                entry = self._summary.get(key)
            if entry is None:
                entry = self._summary[key] = [0, 0, topic[:512]]
        entry[0] = int(entry[0]) + 1  # type: ignore[call-overload]
        entry[1] = int(entry[1]) + len(payload)  # type: ignore[call-overload]
        self.summarised += 1

    def flush_if_due(self) -> None:
        if self._clock() >= self._window_end_s:
            self.flush()

    def flush(self, now_us: int | None = None) -> None:
        """End the window: one dead letter per (site, reason) summed up in it."""
        s = self._settings
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        for (site, reason), (count, size, topic) in self._summary.items():
            detail = (
                f"{count} more messages ({size} bytes) {reason} from site {site!r} within "
                f"{s.dead_letter_window_s:g} s, not kept one by one; the first one's topic shown"
            )
            self._sink(DeadLetter(now_us, str(topic), reason, detail, b""))
        self._summary.clear()
        self._kept.clear()
        self._window_end_s = self._clock() + s.dead_letter_window_s
