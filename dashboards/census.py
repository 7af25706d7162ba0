"""The census stream: one snapshot, then only what changed, computed once for every open page.

A census of a thousand beds is ranked once per period per site filter, however many pages show
it (:class:`CensusFeed`); each page gets the whole census once and then, every period, a delta
holding only the rows that changed, and in them only the parts that changed. A page that falls
behind (it missed a delta) gets a fresh snapshot instead.

The rows on the wire (:func:`wire_row`) carry no ages, which change every second for every bed:
each value carries its device time only when it is older than the row's newest value (``t_us``;
a parameter sent in every numerics frame is then just its text while it keeps coming), and the page
computes ages from the bed's clock offset (``skew_ms``) and the server time of the message
(``now_us``). Staleness is still judged by the server (``stale``), and a change of it is a
change of the row.

Messages (JSON)::

    {"type": "snapshot", "seq": n, "now_us": t, "sites": [...], "beds": [row, ...],  # ranked
     "engine": {"input_delay_s": s}, "links": {site: link, ...}}
    {"type": "delta", "seq": n, "now_us": t,
     "rows": {bed: {"set": {path: value}, "del": [path, ...]}},   # path: "news2", "values.HR"
     "add": {bed: row}, "remove": [bed, ...],
     "order": [bed, ...],         # only when the ranking changed
     "sites": [...],              # only when the sites changed
     "engine": {...},             # only when it changed
     "links": {...}}              # only when they changed

``engine`` is about the whole engine, not one bed: ``input_delay_s``, how far behind its input
it reads, in whole seconds (0 below :data:`INPUT_DELAY_SHOWN_S`). ``links``: the remote sites
whose link is not up, one banner each (``dashboards.views.site_link_view``: ``state`` down or
unknown, ``since_us``, ``last_contact_us``).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Row = dict[str, Any]
DIFF_DEPTH = 2  # "values.HR" is one unit: a changed value is sent whole
DELTAS_KEPT = 16  # a page this many periods behind gets a snapshot instead
INPUT_DELAY_SHOWN_S = 2.0  # the engine's input delay is shown from this many seconds


def engine_status(input_delay_us: int) -> dict[str, Any]:
    """The census's ``engine`` part from the engine's input delay."""
    delay_s = input_delay_us / 1e6
    return {"input_delay_s": round(delay_s) if delay_s >= INPUT_DELAY_SHOWN_S else 0}


NEWS2_SHOWN = (
    "total", "band", "complete", "partial_total", "min_band", "missing", "rising", "current",
    "stale_inputs",
)  # fmt: skip


def wire_row(row: Row) -> Row:
    """A census row (:func:`dashboards.views.census`) as the stream sends it: no ages; a value
    of the bed's newest frame that is not stale as its text alone, any other value as
    ``{text, stale, ts_us}``; of NEWS2 what the census shows (the bed view has the rest)."""
    values: dict[str, dict[str, Any]] = row["values"]
    newest = max((v["ts_us"] for v in values.values()), default=None)
    out = {k: v for k, v in row.items() if k not in ("values", "seen_age_s", "last_seen_us")}
    if row["stale"] or row["status"] == "offline":
        out["seen_us"] = row["last_seen_us"]  # it changes with every message: only when silent
    out["t_us"] = newest
    out["values"] = {key: _wire_value(v, newest) for key, v in values.items()}
    news2 = row["news2"]
    if news2 is not None and "invalid" not in news2:
        out["news2"] = {k: news2[k] for k in NEWS2_SHOWN if k in news2}
    return out


def _wire_value(v: dict[str, Any], newest: int | None) -> Any:
    """A value of the bed's newest frame that is not stale: its text alone, or ``{"text":
    null}`` when the monitor reported it invalid (neither changes while it keeps coming); any
    other value with its time and staleness."""
    if v["ts_us"] == newest and not v["stale"]:
        return v["text"] if v["text"] is not None else {"text": None}
    return {"text": v["text"], "stale": v["stale"], "ts_us": v["ts_us"]}


def flatten(row: Row, depth: int = DIFF_DEPTH, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` down to ``depth`` levels; deeper dicts, lists and
    empty dicts are leaves."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        path = prefix + key
        if depth > 1 and isinstance(value, dict) and value:
            out.update(flatten(value, depth - 1, path + "."))
        else:
            out[path] = value
    return out


def row_changes(
    sent: dict[str, dict[str, Any]],
    beds: list[str],
    flat: dict[str, dict[str, Any]],
    row: Callable[[str], Row],
) -> dict[str, Any]:
    """A delta's ``rows``, ``add`` and ``remove``: what turns the rows a page has (``sent``, flat,
    by bed) into ``beds`` (their flat rows in ``flat``, whole rows from ``row``)."""
    rows: dict[str, Any] = {}
    added: dict[str, Row] = {}
    for bed in beds:
        old = sent.get(bed)
        if old is None:
            added[bed] = row(bed)
            continue
        change = diff(old, flat[bed])
        if change is not None:
            rows[bed] = change
    kept = set(beds)
    return {"rows": rows, "add": added, "remove": [b for b in sent if b not in kept]}


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """What turns the flat row ``old`` into ``new``, or None when they are equal."""
    changed = {k: v for k, v in new.items() if k not in old or old[k] != v}
    gone = [k for k in old if k not in new]
    if not changed and not gone:
        return None
    out: dict[str, Any] = {"set": changed}
    if gone:
        out["del"] = gone
    return out


@dataclass
class Tick:
    """One computation of a site filter's census."""

    seq: int
    now_us: int
    sites: list[str]
    beds: list[Row]  # wire rows, ranked
    delta: str | None  # the JSON delta from the tick before (None for the first tick)
    engine: dict[str, Any] = field(default_factory=dict)
    links: dict[str, Any] = field(default_factory=dict)  # remote sites whose link is not up
    flat: dict[str, dict[str, Any]] = field(default_factory=dict)  # each wire row, flattened
    order: list[str] = field(default_factory=list)  # the beds, ranked
    _snapshot: str | None = None
    _by_bed: dict[str, Row] | None = None

    def row(self, bed: str) -> Row:
        if self._by_bed is None:
            self._by_bed = {r["bed"]: r for r in self.beds}
        return self._by_bed[bed]

    def snapshot(self) -> str:
        if self._snapshot is None:
            self._snapshot = encode(
                {"type": "snapshot", "seq": self.seq, "now_us": self.now_us,
                 "sites": self.sites, "beds": self.beds, "engine": self.engine,
                 "links": self.links}
            )  # fmt: skip
        return self._snapshot


@dataclass
class _View:
    tick: Tick | None = None
    flat: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    computed_s: float = -1e9
    deltas: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=DELTAS_KEPT))


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


# What one census is computed for: the page's site filter, with whatever else limits what its
# user may see (the app uses (site filter, the user's sites)). Pages of the same scope share it.
Scope = TypeVar("Scope", bound=Hashable)


class CensusFeed(Generic[Scope]):
    """Computes each scope's census at most once per ``period_s`` (on demand: nothing is
    computed while no page is open) and keeps the latest :class:`Tick` for every page."""

    def __init__(
        self,
        rows: Callable[[Scope], list[Row]],
        sites: Callable[[Scope], list[str]],
        period_s: float,
        clock: Callable[[], float] = time.monotonic,
        engine: Callable[[], dict[str, Any]] = dict,
        links: Callable[[Scope], dict[str, Any]] | None = None,
    ) -> None:
        """``links``: a scope's remote sites whose link is not up (none without it)."""
        self._rows = rows
        self._sites = sites
        self._engine = engine
        self._links = links
        self._period_s = period_s
        self._clock = clock
        self._views: dict[Scope, _View] = {}

    def messages_after(self, site: Scope, seq: int | None) -> tuple[int, list[str]]:
        """What a page that has seen up to ``seq`` (None: nothing yet) needs now: the deltas
        since, or a snapshot when it has seen nothing or is too far behind; and the new seq."""
        tick = self.current(site)
        if seq is None:
            return tick.seq, [tick.snapshot()]
        if seq == tick.seq:
            return seq, []
        deltas = [text for n, text in self._views[site].deltas if n > seq]
        if seq > tick.seq or len(deltas) != tick.seq - seq:
            return tick.seq, [tick.snapshot()]
        return tick.seq, deltas

    def wait_s(self, site: Scope) -> float:
        """Seconds until the site filter's census is due again."""
        view = self._views.get(site)
        if view is None:
            return 0.0
        return max(0.0, view.computed_s + self._period_s - self._clock())

    def current(self, site: Scope) -> Tick:
        """The site filter's latest tick, computed now when the last is a period old (less a
        little, so that pages polling once a period do not each find it just too fresh)."""
        view = self._views.setdefault(site, _View())
        now_s = self._clock()
        if view.tick is None or now_s - view.computed_s >= 0.9 * self._period_s:
            view.computed_s = now_s
            view.tick = self._compute(view, site)
        return view.tick

    def _compute(self, view: _View, site: Scope) -> Tick:
        now_us = time.time_ns() // 1000
        beds = [wire_row(r) for r in self._rows(site)]
        sites = self._sites(site)
        engine = self._engine()
        links = self._links(site) if self._links is not None else {}
        order = [r["bed"] for r in beds]
        flat = {r["bed"]: flatten(r) for r in beds}
        previous = view.tick
        delta: str | None = None
        if previous is not None:
            message: dict[str, Any] = {"type": "delta", "seq": previous.seq + 1, "now_us": now_us}
            by_bed = {r["bed"]: r for r in beds}
            message.update(row_changes(view.flat, order, flat, by_bed.__getitem__))
            if order != view.order:
                message["order"] = order
            if sites != previous.sites:
                message["sites"] = sites
            if engine != previous.engine:
                message["engine"] = engine
            if links != previous.links:
                message["links"] = links
            delta = encode(message)
            view.deltas.append((previous.seq + 1, delta))
        view.flat, view.order = flat, order
        seq = previous.seq + 1 if previous else 0
        return Tick(seq, now_us, sites, beds, delta, engine, links, flat, order)


WINDOW_MAX_ROWS = 500  # the most rows one page may ask to be kept up to date
GONE_KEPT = 500  # the rows of beds that left a compact window, kept to send only their changes


class CensusWindow:
    """What one page is sent when it shows a window of the ranked census: a page scrolled to
    ranks ``first`` .. ``first + count`` gets those rows, then every period only what changed in
    them, the beds that came into or left its window, its window's order when that changed, and
    the census's ``total``; so a census of a thousand beds costs a page what a screen of rows
    does, not what the whole census does.

    Messages (JSON; ``seq`` numbers this page's messages, 0 first)::

        {"type": "window", "seq": 0, "now_us": t, "sites": [...], "engine": {...},
         "links": {...}, "total": n, "first": i, "beds": [row, ...]}  # the window, ranked
        {"type": "delta", "seq": n, "now_us": t, "rows": {...}, "add": {...}, "remove": [...],
         "order": [bed, ...], "first": i, "total": n,  # each only when it changed
         "held": bool, "sites": [...], "engine": {...}, "links": {...}}

    While the page ``hold``s (the keyboard focus is in its table), its window keeps its beds in
    their order (values still change); ``held`` says whether the ranking has moved meanwhile.

    ``compact``: a delta's changed rows go as ``"c": {bed: [key, value, key, value, ...]}`` and
    their removed paths as ``"cd": {bed: [key, ...]}`` instead of ``rows``, each path a small
    number the page is told once (``"keys": {"7": "values.HR"}``); key 0 is ``t_us``, sent as
    ``now_us - t_us`` (a few digits where the time itself has sixteen). A bed that comes back
    into the window within the last GONE_KEPT beds that left it is listed in ``"back"`` with
    only what changed since it left (the page keeps the rows of the beds that left, as many, in
    the order they left), not as a whole row in ``add``; ``order`` gives each bed the window
    had before as its place in that order (a number) and only a new one by name. The page
    expands all of it to ``rows``, ``add`` and ``order`` before anything else.
    """

    def __init__(self, first: int = 0, count: int = 60, *, compact: bool = False) -> None:
        self.first, self.count = 0, 1
        self.set_view(first, count)
        self.seq = -1
        self._tick_seq: int | None = None
        self._sent: dict[str, dict[str, Any]] = {}  # bed -> flat row as the page has it
        self._order: list[str] = []
        self._total = 0
        self._sites: list[str] | None = None
        self._engine: dict[str, Any] | None = None
        self._links: dict[str, Any] | None = None
        self._hold: list[str] | None = None
        self._held = False
        self._first_sent: int | None = None
        self._dirty = True
        self.compact = compact
        self._keys: dict[str, int] = {"t_us": 0}  # path -> the number the page knows it by
        # beds that left the window, as the page had them (compact), oldest leaving first
        self._gone: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def _compacted(
        self, message: dict[str, Any], now_us: int, rows_now: dict[str, dict[str, Any]]
    ) -> None:
        """``message``'s ``rows``, ``add`` and ``order`` in the compact form (see the class)."""
        rows = message.pop("rows")
        gone = self._gone
        back = [bed for bed in message["add"] if bed in gone]
        for bed in back:
            del message["add"][bed]
            change = diff(gone.pop(bed), rows_now[bed])
            rows[bed] = change if change is not None else {"set": {}}
        for bed in message["remove"]:
            gone[bed] = self._sent[bed]
            gone.move_to_end(bed)
        while len(gone) > GONE_KEPT:
            gone.popitem(last=False)
        if back:
            message["back"] = back
        if "order" in message:
            place = {bed: i for i, bed in enumerate(self._order)}
            message["order"] = [place.get(bed, bed) for bed in message["order"]]
        keys = self._keys
        new: dict[str, str] = {}

        def key(path: str) -> int:
            if path not in keys:
                keys[path] = len(keys)
                new[str(keys[path])] = path
            return keys[path]

        sets: dict[str, list[Any]] = {}
        dels: dict[str, list[int]] = {}
        for bed, change in rows.items():
            flat: list[Any] = []
            for path, value in change.get("set", {}).items():
                if path == "t_us" and isinstance(value, int):
                    value = now_us - value
                flat += [key(path), value]
            if flat:
                sets[bed] = flat
            if change.get("del"):
                dels[bed] = [key(path) for path in change["del"]]
        if new:
            message["keys"] = new
        message["c"] = sets
        if dels:
            message["cd"] = dels

    def set_view(self, first: int, count: int) -> None:
        """The page shows ranks ``first`` .. ``first + count`` (and keeps them up to date)."""
        if not (isinstance(first, int) and isinstance(count, int)) or first < 0 or count < 1:
            raise ValueError(f"a view is two integers first >= 0, count >= 1: {first}, {count}")
        self.first, self.count = first, min(count, WINDOW_MAX_ROWS)
        self._dirty = True

    def hold(self, on: bool) -> None:
        """Keep (True) the window's beds and order as they are, or rank them again (False)."""
        self._hold = list(self._order) if on else None
        self._dirty = True

    def messages(self, tick: Tick) -> list[str]:
        """What the page needs now: nothing when neither the census nor its view changed."""
        if tick.seq == self._tick_seq and not self._dirty:
            return []
        self._tick_seq, self._dirty = tick.seq, False
        total = len(tick.beds)
        ranked = tick.order
        if self._hold is not None:
            beds = [b for b in self._hold if b in tick.flat]
            ranked_window = ranked[self.first : self.first + self.count]
            held = beds != ranked_window
        else:
            self.first = min(self.first, max(0, total - self.count))
            beds = ranked[self.first : self.first + self.count]
            held = False
        self.seq += 1
        if self.seq == 0:
            message: dict[str, Any] = {
                "type": "window", "seq": 0, "now_us": tick.now_us, "sites": tick.sites,
                "engine": tick.engine, "links": tick.links, "total": total, "first": self.first,
                "beds": [tick.row(b) for b in beds],
            }  # fmt: skip
        else:
            message = {"type": "delta", "seq": self.seq, "now_us": tick.now_us}
            message.update(row_changes(self._sent, beds, tick.flat, tick.row))
            if beds != self._order:
                message["order"] = beds
            if self.first != self._first_sent:
                message["first"] = self.first
            if total != self._total:
                message["total"] = total
            if held != self._held:
                message["held"] = held
            if tick.sites != self._sites:
                message["sites"] = tick.sites
            if tick.engine != self._engine:
                message["engine"] = tick.engine
            if tick.links != self._links:
                message["links"] = tick.links
            if self.compact:
                self._compacted(message, tick.now_us, tick.flat)
        self._sent = {b: tick.flat[b] for b in beds}
        self._order, self._total, self._held = beds, total, held
        self._sites, self._engine, self._links = tick.sites, tick.engine, tick.links
        self._first_sent = self.first
        return [encode(message)]
