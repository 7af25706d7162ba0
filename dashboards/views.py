"""What the dashboard shows of a bed, built from its snapshot (eicu.live) as plain JSON-ready dicts.

Freshness is judged on the bed's own device clock (engine time corrected by the bed's clock
offset, see ``BedSnapshot.clock_offset_us``), so a gateway whose clock runs ahead or behind is not
shown as stale, while values that come through late (the engine behind its input, a slow link)
are shown as old as they are.
Missing values are absent, a value the monitor reported as invalid is ``None``: neither is ever
turned into a number. NaN never leaves this module (JSON has no NaN).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from eicu.alarm_model import AlarmEvent, AlarmState
from eicu.alarms.policy import AlarmPolicy, load_policy
from eicu.alarms.ranking import PolicyFor, headlines, most_urgent_first
from eicu.alarms.state import Alarm
from eicu.codes import BY_KEY as PARAM_BY_KEY
from eicu.freshness import stale_after_s
from eicu.live import BedSnapshot, Mark, SignalTrace
from eicu.models import BedKey
from eicu.site_link import SiteLink

log = logging.getLogger(__name__)

# NEWS2 bands from most to least urgent; an incomplete score ranks by its proven lower band.
BAND_RANK = {"high": 3, "medium": 2, "low-medium": 1, "low": 0}
CENSUS_KEYS = (
    "HR", "SPO2", "RR", "NIBP_SYS", "NIBP_DIA", "ABP_SYS", "ABP_DIA", "ABP_MEAN", "TEMP",
    "ACVPU", "O2",
)  # fmt: skip
TREND_KEYS = ("HR", "SPO2", "RR", "NIBP_SYS", "ABP_MEAN", "TEMP")
LIVE_SIGNALS = ("ECG_II", "PLETH", "ABP")
BED_SILENT_S = 10.0  # a bed that has sent nothing for this long is stale
PRIORITY_RANK = {"high": 3, "medium": 2, "low": 1}


def _text(key: str, value: float) -> str:
    if key == "ACVPU":
        return "ACVPU"[int(value)] if 0 <= int(value) < 5 else "?"
    if key == "O2":
        return "O2" if value else "air"
    if key == "TEMP":
        return f"{value:.1f}"
    return f"{value:.0f}"


def value_view(key: str, entry: tuple[float | None, int], device_now: int) -> dict[str, Any]:
    value, ts_us = entry
    age_s = max(0.0, (device_now - ts_us) / 1e6)
    valid = value is not None and not (isinstance(value, float) and math.isnan(value))
    param = PARAM_BY_KEY.get(key)
    return {
        "value": float(value) if valid and value is not None else None,
        "text": _text(key, float(value)) if valid and value is not None else None,
        "unit": param.unit if param else "",
        "age_s": round(age_s, 1),
        "stale": age_s > stale_after_s(key),
        "ts_us": ts_us,
    }


def news2_view(snap: BedSnapshot, device_now_us: int | None = None) -> dict[str, Any] | None:
    """The bed's last NEWS2 as assembled, and how it stands now: ``stale_inputs`` names the
    inputs whose values are older now than the freshness every view of a bed applies
    (eicu.freshness; the assembly's own maximum ages are longer), ``current`` is False when
    there are any (the score is then shown as stale, never in its band's colour), ``age_s`` is
    how long ago, on the bed's clock, it was assembled."""
    if snap.news2 is None:
        return {"invalid": snap.news2_invalid} if snap.news2_invalid else None
    out = dict(snap.news2)
    out["rising"] = snap.rising_reasons is not None
    out["rising_reasons"] = list(snap.rising_reasons or ())
    if device_now_us is not None:
        stale: list[str] = []
        for name, key in sorted(dict(snap.news2.get("sources", {})).items()):
            entry = snap.latest.get(key)
            if entry is None or device_now_us - entry[1] > stale_after_s(key) * 1e6:
                stale.append(name)
        out["stale_inputs"] = stale
        out["current"] = not stale
        if snap.news2_us is not None:
            out["age_s"] = round(max(0, device_now_us - snap.news2_us) / 1e6, 1)
    return out


def engine_view(snap: BedSnapshot | None) -> dict[str, Any]:
    if snap is None:
        return {"hr_bpm": None, "rhythms": [], "quality": {}}
    hr = snap.hr_bpm
    return {
        "hr_bpm": round(hr, 1) if hr is not None and math.isfinite(hr) else None,
        "rhythms": list(snap.rhythms),
        "quality": dict(snap.quality),
    }


def acuity(news2: dict[str, Any] | None) -> tuple[int, int]:
    """(band rank, score) where the score is the total, or the proven lower bound."""
    if not news2 or "invalid" in news2:
        return (-1, -1)
    if news2["complete"]:
        return (BAND_RANK.get(news2["band"], 0), int(news2["total"]))
    return (BAND_RANK.get(news2["min_band"], 0), int(news2["partial_total"]))


def bed_summary(snap: BedSnapshot, now_us: int) -> dict[str, Any]:
    """A bed's census row (without its alarm). A snapshot not refreshed for BED_SILENT_S (its
    owner gone, or the bus) is stale like a bed that sends nothing."""
    key = snap.bed
    dev_now = snap.device_now_us(now_us)
    status = snap.status_at(now_us)  # a standby past its lifetime is over
    silent = snap.is_stale(now_us, BED_SILENT_S) or now_us - snap.taken_us > BED_SILENT_S * 1e6
    news2 = news2_view(snap, dev_now)
    band_rank, score = acuity(news2)
    return {
        "bed": str(key),
        "site": key.site,
        "name": key.bed,
        "status": status,
        "stale": bool(silent and status == "online"),
        # auto-registered and not yet confirmed by a stream: no-data, offline, standby and
        # device-clock conditions raise no alarm for it until it is (ingest.admission)
        "new": snap.new,
        "seen_age_s": round((now_us - snap.last_seen_us) / 1e6, 1) if snap.last_seen_us else None,
        "last_seen_us": snap.last_seen_us or None,
        "skew_ms": round(snap.clock_offset_us / 100_000) * 100,  # device clock - server's
        "values": {
            k: value_view(k, snap.latest[k], dev_now) for k in CENSUS_KEYS if k in snap.latest
        },
        "news2": news2,
        "acuity": [band_rank, score],
        "engine": engine_view(snap),
    }


def alarm_view(alarm: Alarm, now_us: int) -> dict[str, Any]:
    return {
        "alarm_id": alarm.alarm_id,
        "bed": str(alarm.bed),
        "kind": alarm.kind,
        "priority": alarm.priority.value,
        "category": alarm.category.value,
        "state": alarm.state.value,
        "started_us": alarm.started_us,
        "condition_present": alarm.condition_present,
        "value": alarm.value if alarm.value is None or math.isfinite(alarm.value) else None,
        "detail": alarm.detail,
        "sounding": alarm.sounding(now_us),
        "audio_paused_until_us": alarm.audio_paused_until_us,
        "acknowledged_by": alarm.acknowledged_by,
        "acknowledged_us": alarm.acknowledged_us,
    }


@functools.cache
def _default_policy() -> AlarmPolicy:
    return load_policy()


def default_policy_for(_bed: BedKey) -> AlarmPolicy:
    """The default policy for every bed: the order used when the caller passes no policy (one
    with an alarm service passes its state machine's ``policy_for``)."""
    return _default_policy()


def live_alarms(
    alarms: Iterable[Alarm],
    now_us: int,
    bed: BedKey | None = None,
    policy_for: PolicyFor | None = None,
) -> list[dict[str, Any]]:
    """The alarms not yet cleared (of one bed, if given), most urgent first
    (:mod:`eicu.alarms.ranking`: priority, unacknowledged, clinical severity)."""
    chosen = [a for a in alarms if a.state != AlarmState.CLEARED and (bed is None or a.bed == bed)]
    ranked = most_urgent_first(chosen, policy_for or default_policy_for)
    return [alarm_view(a, now_us) for a in ranked]


def event_view(event: AlarmEvent) -> dict[str, Any]:
    return {
        "alarm_id": event.alarm_id,
        "bed": str(event.bed),
        "kind": event.kind,
        "priority": event.priority.value,
        "state": event.state.value,
        "time_us": event.time_us,
        "actor": event.actor,
        "reason": event.reason,
        "audio_paused_until_us": event.audio_paused_until_us,
    }


_UNSHOWN: set[BedKey] = set()  # beds whose census fault has been logged (once each)


def unshown_summary(snap: BedSnapshot, why: str) -> dict[str, Any]:
    """The census row of a bed whose own row could not be built: stale, no values, and why."""
    key = snap.bed
    return {
        "bed": str(key),
        "site": key.site,
        "name": key.bed,
        "status": snap.status,
        "stale": True,
        "seen_age_s": None,
        "last_seen_us": snap.last_seen_us or None,
        "skew_ms": 0,
        "values": {},
        "news2": {"invalid": why},
        "acuity": [-1, -1],
        "engine": engine_view(None),
    }


def census(
    snapshots: Iterable[BedSnapshot],
    now_us: int,
    site: str | None = None,
    alarms_available: bool = True,
    policy_for: PolicyFor | None = None,
    remote_sites: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Every bed (of one site, if given): beds with an unacknowledged high-priority alarm
    first, then beds with an acknowledged one (each group in the order of their headline
    alarms: the most severe condition first), then the most acute by NEWS2.

    A bed's ``alarm`` (its headline) is its most urgent live alarm (:mod:`eicu.alarms.ranking`).
    Without alarms judged (``alarms_available`` False, or a bed whose owner judges none) the
    rows say so. A bed of one of ``remote_sites`` (a remote site whose link the hub's feed
    reports) is marked ``remote``: its alarms are judged and paged at the site."""
    chosen = [s for s in snapshots if site is None or s.bed.site == site]
    top: dict[BedKey, dict[str, Any]] = {}
    place: dict[str, int] = {}  # a bed's place in the order of the headlines
    if alarms_available:
        alarms = [a for s in chosen for a in (s.alarms or ())]
        tops = headlines(alarms, policy_for or default_policy_for)
        for i, (key, alarm) in enumerate(tops.items()):
            top[key] = alarm_view(alarm, now_us)
            place[str(key)] = i
    rows = []
    for snap in chosen:
        key = snap.bed
        try:
            row = bed_summary(snap, now_us)
        except Exception as exc:
            # One bed's fault costs the census nothing else; the bed stays on it, marked.
            if key not in _UNSHOWN:
                log.exception("census: %s cannot be shown", key)
            _UNSHOWN.add(key)
            row = unshown_summary(snap, f"not shown: {type(exc).__name__}")
        row["alarm"] = top.get(key)
        row["alarms_available"] = alarms_available and snap.alarms is not None
        if key.site in remote_sites:
            row["remote"] = True
        rows.append(row)
    rows.sort(
        key=lambda r: (
            -_alarm_rank(r["alarm"]),
            place[r["bed"]] if _alarm_rank(r["alarm"]) else 0,
            -r["acuity"][0],
            -r["acuity"][1],
            r["bed"],
        )
    )
    return rows


def site_link_view(link: SiteLink, now_us: int) -> dict[str, Any]:
    """What the census shows of a remote site's link at ``now_us``: ``state`` (``up``,
    ``down``, ``catching_up`` when it is up but the hub is still storing a backlog, or
    ``unknown`` when the feed could not read it or its report is too old: the feed has stopped),
    ``since_us`` (down: the last contact; catching up: the device time of the oldest data not
    stored yet, with ``unstored`` messages; unknown: the feed's last report) and
    ``last_contact_us``. Only what changes with the link, never an age: the page counts
    ages from the times."""
    if link.expired(now_us):
        return {"state": "unknown", "since_us": link.checked_us,
                "last_contact_us": link.last_contact_us, "why": "feed_silent"}  # fmt: skip
    view: dict[str, Any] = {"state": link.state, "last_contact_us": link.last_contact_us}
    if link.state == "up" and link.unstored_since_us is not None:
        view["state"] = "catching_up"
        view["since_us"] = link.unstored_since_us
        view["unstored"] = link.unstored
    elif link.state == "down":
        view["since_us"] = link.last_contact_us
    elif link.state == "unknown":
        view["since_us"] = link.last_contact_us
        view["why"] = "unread"
    return view


def site_links_view(
    links: Mapping[str, SiteLink], now_us: int, sites: Collection[str] | None
) -> dict[str, dict[str, Any]]:
    """The census's ``links``: the links of the remote sites in ``sites`` (None: every one)
    that are not up, by site: one banner each."""
    out = {}
    for site, link in sorted(links.items()):
        if sites is not None and site not in sites:
            continue
        view = site_link_view(link, now_us)
        if view["state"] != "up":
            out[site] = view
    return out


@dataclass(frozen=True)
class CensusFilter:
    """Which census rows a page shows, and in which order. ``priority``: beds whose most
    urgent live alarm is at least that priority; ``band``: beds whose NEWS2 is at least that
    band (complete, or proven by a partial score); ``rhythm``: beds with that rhythm flag
    (``any``: with any); ``stale``: only beds that are stale or offline; ``sort``: ``acuity``
    (the census's ranking) or ``bed`` (by site and bed name). Filters combine (all must hold)."""

    priority: str = ""
    band: str = ""
    rhythm: str = ""
    stale: bool = False
    sort: str = "acuity"

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> CensusFilter:
        """From a page's address; ValueError naming what is wrong."""
        priority = query.get("priority") or ""
        band = query.get("band") or ""
        rhythm = query.get("rhythm") or ""
        sort = query.get("sort") or "acuity"
        if priority and priority not in PRIORITY_RANK:
            raise ValueError(f"priority must be one of {', '.join(PRIORITY_RANK)}: {priority!r}")
        if band and band not in BAND_RANK:
            raise ValueError(f"band must be one of {', '.join(BAND_RANK)}: {band!r}")
        if rhythm and not (rhythm.replace("_", "").isalnum() and len(rhythm) <= 32):
            raise ValueError(f"rhythm must be a rhythm flag's name: {rhythm[:40]!r}")
        if sort not in ("acuity", "bed"):
            raise ValueError(f"sort must be acuity or bed: {sort!r}")
        stale = (query.get("stale") or "").lower() in ("1", "true", "yes")
        return cls(priority, band, rhythm, stale, sort)

    def keeps(self, row: Mapping[str, Any]) -> bool:
        if self.priority:
            alarm = row.get("alarm")
            if alarm is None or PRIORITY_RANK[alarm["priority"]] < PRIORITY_RANK[self.priority]:
                return False
        if self.band:
            news2 = row.get("news2")
            if not news2 or "invalid" in news2:
                return False
            band = news2["band"] if news2.get("complete") else news2.get("min_band", "low")
            if BAND_RANK.get(band, 0) < BAND_RANK[self.band]:
                return False
        if self.rhythm:
            rhythms = row.get("engine", {}).get("rhythms", [])
            if not rhythms or (self.rhythm != "any" and self.rhythm not in rhythms):
                return False
        return not self.stale or bool(row.get("stale")) or row.get("status") == "offline"

    def apply(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = [r for r in rows if self.keeps(r)]
        if self.sort == "bed":
            kept.sort(key=lambda r: r["bed"])
        return kept


def _alarm_rank(alarm: dict[str, Any] | None) -> int:
    """2: an unacknowledged high-priority alarm; 1: an acknowledged one; 0: none. Medium and
    low priority alarms do not outrank a higher NEWS2."""
    if alarm is None or alarm["priority"] != "high":
        return 0
    return 1 if alarm["state"] == AlarmState.ACKNOWLEDGED.value else 2


def mark_view(mark: Mark) -> dict[str, Any]:
    return {
        "signal": mark.signal, "t_us": mark.t_us, "kind": mark.kind, "label": mark.label,
        "state": mark.state,
    }  # fmt: skip


def floats(values: NDArray[np.float64], digits: int = 4) -> list[float | None]:
    """Samples as JSON numbers, NaN (no valid sample) as null."""
    rounded = np.round(values, digits).tolist()
    return [None if math.isnan(v) else v for v in rounded]


def live_chunks(
    traces: Mapping[str, SignalTrace],
    sent: dict[str, int],
    initial_s: float,
    signals: tuple[str, ...] = LIVE_SIGNALS,
) -> list[dict[str, Any]]:
    """The samples of each live signal that arrived since the last call (``sent`` is updated).

    A client that falls more than the ring behind gets the ring's content and ``gap: true``."""
    out: list[dict[str, Any]] = []
    for name in signals:
        sig = traces.get(name)
        if sig is None:
            continue
        total = sig.ring.total
        previous = sent.get(name)
        capacity = sig.ring.buf.shape[0]
        if previous is None or previous > total:  # first time, or the stream restarted
            n = min(total, int(initial_s * sig.fs_hz))
            gap = previous is not None
        else:
            n = total - previous
            gap = n > capacity
        sent[name] = total
        if n <= 0:
            continue
        out.append(
            {
                "signal": name,
                "fs_hz": sig.fs_hz,
                "t_last_us": sig.last_t_us,
                "gap": gap,
                "values": floats(sig.ring.last(n)),
            }
        )
    return out
