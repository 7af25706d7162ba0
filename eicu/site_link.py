"""The link of a remote site as the hub sees it (docs/remote-sites.md), for the dashboards.

The link's state is NATS's own: the hub's stream ``SITE_<id>`` sources the site's stream across
the leaf link, and its source says how long ago it last heard from the site (NATS's source
sends a heartbeat about every second, also while the site is quiet) and how many messages the
site holds that the hub has not copied. ``eicu site-feed`` reads it and publishes a
:class:`SiteLink` per site on ``eicu/state/<site>/link`` (MQTT QoS 1, retained: a dashboard that
starts later learns it at once), every few seconds, so a reader also knows when the feed itself
has gone quiet.

:func:`judge` turns the source's state into a link state: ``up`` while the source heard from the
site within ``silent_after_s``, ``down`` otherwise (``last_contact_us``: when the hub last heard
from it), ``unknown`` when the feed could not read the source's state at all. A reader takes a
report older than :func:`SiteLink.expired` as ``unknown`` too (the feed stopped).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from eicu.errors import PayloadError
from eicu.live import STATE_ROOT
from eicu.sites import check_site_id

__all__ = [
    "CATCHING_UP_AFTER_S",
    "LINK_FILTER",
    "LINK_VERSION",
    "SILENT_AFTER_S",
    "LinkState",
    "SiteLink",
    "decode_link",
    "encode_link",
    "judge",
    "link_topic",
    "site_of_link_topic",
    "unknown",
]

LINK_VERSION: Final = 1
LINK_FILTER: Final = f"{STATE_ROOT}/+/link"
# NATS's source of a site's stream hears from the site about every second while the link is
# up, even with nothing to copy: this long without it, the link is down.
SILENT_AFTER_S: Final = 5.0
# A link that is up is "catching up" while the oldest message the hub holds but has not stored
# lies this far behind the newest of its own stream (by the device's times): a page then says
# that the site's data from that time on is still being stored.
CATCHING_UP_AFTER_S: Final = 30.0
# A report is taken as current for this many of the feed's periods (and at least EXPIRY_MIN_S).
EXPIRY_PERIODS: Final = 3
EXPIRY_MIN_S: Final = 10.0
MAX_LINK_BYTES: Final = 4096

LinkState = Literal["up", "down", "unknown"]
_STATES: Final = ("up", "down", "unknown")


def link_topic(site: str) -> str:
    """``eicu/state/<site>/link``: one level below the beds' state of the site, so that a
    reader of ``eicu/state/+`` never takes it for beds."""
    return f"{STATE_ROOT}/{check_site_id(site, 'site')}/link"


def site_of_link_topic(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 4 and "/".join(parts[:2]) == STATE_ROOT and parts[3] == "link":
        return parts[2]
    return None


@dataclass(frozen=True, slots=True)
class SiteLink:
    """One report of a site's link: ``state`` at ``checked_us`` (the feed's clock);
    ``last_contact_us``, when the hub last heard from the site (None: not known, e.g. the hub's
    server restarted during the cut and the feed never saw the link up); ``lag``, messages the
    site holds that the hub has not copied (as of the last contact); ``error``, what the source
    or the feed reported; ``period_s``, how often the feed reports; ``unstored``, messages the
    hub holds and has not stored yet; ``unstored_since_us``, while the link is up but catching
    up (:data:`CATCHING_UP_AFTER_S`), the device time of the oldest of them, else None."""

    site: str
    state: LinkState
    checked_us: int
    last_contact_us: int | None
    lag: int = 0
    error: str | None = None
    period_s: float = 2.0
    unstored: int = 0
    unstored_since_us: int | None = None

    def expired(self, now_us: int) -> bool:
        """Whether a reader at ``now_us`` should no longer believe this report."""
        keep_s = max(EXPIRY_PERIODS * self.period_s, EXPIRY_MIN_S)
        return now_us - self.checked_us > keep_s * 1e6


def judge(
    site: str,
    now_us: int,
    silent_s: float | None,
    lag: int,
    error: str | None,
    previous: SiteLink | None,
    *,
    silent_after_s: float = SILENT_AFTER_S,
    period_s: float = 2.0,
    unstored: int = 0,
    oldest_unstored_us: int | None = None,
    unstored_behind_s: float | None = None,
    catching_up_after_s: float = CATCHING_UP_AFTER_S,
) -> SiteLink:
    """The link of ``site`` at ``now_us`` from its source's state: ``silent_s``, seconds since
    the source last heard from the site (None: not since the source was set up); ``previous``,
    the last report, whose last contact stands while the source knows none; ``unstored``,
    ``oldest_unstored_us`` and ``unstored_behind_s``, what the hub holds and has not stored
    (:class:`eicu.bus.sites.SourceState`)."""
    if silent_s is not None and (not math.isfinite(silent_s) or silent_s < 0):
        raise ValueError(f"silent_s must be a finite number >= 0, got {silent_s}")
    if silent_s is None:
        contact = previous.last_contact_us if previous is not None else None
        return SiteLink(site, "down", now_us, contact, max(lag, 0), error, period_s)
    contact = now_us - int(silent_s * 1e6)
    if previous is not None and previous.last_contact_us is not None:
        contact = max(contact, previous.last_contact_us)
    state: LinkState = "up" if silent_s <= silent_after_s else "down"
    catching_up = (
        state == "up"
        and oldest_unstored_us is not None
        and unstored_behind_s is not None
        and unstored_behind_s >= catching_up_after_s
    )
    return SiteLink(
        site, state, now_us, contact, max(lag, 0), error, period_s, max(unstored, 0),
        oldest_unstored_us if catching_up else None,
    )  # fmt: skip


def unknown(
    site: str, now_us: int, why: str, previous: SiteLink | None, period_s: float
) -> SiteLink:
    """The report when the source's state cannot be read: the last contact known stands."""
    contact = previous.last_contact_us if previous is not None else None
    lag = previous.lag if previous is not None else 0
    return SiteLink(site, "unknown", now_us, contact, lag, why, period_s)


def encode_link(link: SiteLink) -> bytes:
    doc = {
        "v": LINK_VERSION, "site": link.site, "state": link.state, "t": link.checked_us,
        "contact": link.last_contact_us, "lag": link.lag, "error": link.error,
        "period_s": link.period_s, "unstored": link.unstored,
        "unstored_since": link.unstored_since_us,
    }  # fmt: skip
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError("malformed", f"a site link's '{key}' must be an integer")
    return value


def decode_link(topic: str, payload: bytes) -> SiteLink:
    """The report on ``topic``; PayloadError naming what is wrong (the site in the body must be
    the topic's)."""
    site = site_of_link_topic(topic)
    if site is None:
        raise PayloadError("wrong_topic", f"not a site link topic: {topic[:120]}")
    if len(payload) > MAX_LINK_BYTES:
        raise PayloadError("too_large", f"a site link message of {len(payload)} bytes")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError("malformed", f"not JSON: {exc}"[:160]) from exc
    if not isinstance(doc, dict) or doc.get("v") != LINK_VERSION:
        raise PayloadError("unsupported_version", f"site link version {str(doc)[:20]!r}")
    if doc.get("site") != site:
        raise PayloadError("malformed", f"a site link of {str(doc.get('site'))[:40]!r} on {topic}")
    state = doc.get("state")
    if state not in _STATES:
        raise PayloadError("malformed", f"a site link's state is one of {_STATES}: {state!r}")
    error = doc.get("error")
    if error is not None and not isinstance(error, str):
        raise PayloadError("malformed", "a site link's 'error' must be text")
    period = doc.get("period_s")
    if isinstance(period, bool) or not isinstance(period, int | float) or not 0 < period <= 3600:
        raise PayloadError(
            "malformed", f"a site link's 'period_s' must be in (0, 3600]: {period!r}"
        )
    unstored = _int(doc, "unstored") if "unstored" in doc else 0
    if unstored < 0:
        raise PayloadError("malformed", f"a site link's 'unstored' must be >= 0: {unstored}")
    return SiteLink(
        site=site,
        state=state,
        checked_us=_int(doc, "t"),
        last_contact_us=None if doc.get("contact") is None else _int(doc, "contact"),
        lag=_int(doc, "lag"),
        error=error,
        period_s=float(period),
        unstored=unstored,
        unstored_since_us=(
            None if doc.get("unstored_since") is None else _int(doc, "unstored_since")
        ),
    )
