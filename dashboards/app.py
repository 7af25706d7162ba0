"""The dashboard web app: census, bed view, live waveforms, trends, full-disclosure review.

``create_app(source, settings, users)`` builds a FastAPI app over a :class:`Source`: the beds'
live state (eicu.live.LiveBeds), the alarm desk (eicu.live.AlarmDesk), the store for history,
the metrics registry. ``eicu serve`` and ``eicu demo`` give it their engine's memory and serve it
with :class:`dashboards.server.DashboardServer` in the engine's event loop; ``eicu dashboard``
gives it what the workers publish on the bus (dashboards.bus) and runs in a process of its own.

Security (see docs/dashboard.md): every page, API call and WebSocket needs a session; each
route names the permission it needs; state-changing requests need the session's CSRF token and
a same-origin ``Origin``; WebSockets check the session and the ``Origin`` before accepting, and
the user's current role and sites at every tick after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.websockets import WebSocketDisconnect
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from pydantic import BaseModel, Field

from dashboards import consult, fhir, review, views
from dashboards.census import CensusFeed, CensusWindow, engine_status
from dashboards.patients import Admission, EncounterChange, NoteIn, PatientCache, Transfer
from dashboards.security import LoginLimiter, Session, Sessions, csrf_ok
from dashboards.users import UNSET, Permission, User, UserError, Users, checked_user
from eicu.alarm_model import AlarmState
from eicu.alarms.state import Alarm
from eicu.codes import SIGNAL_BY_KEY
from eicu.config import HttpSettings, IceServer
from eicu.errors import StorageUnavailable
from eicu.exposition import bearer_ok, exposition
from eicu.health import Health
from eicu.live import AlarmDesk, LiveBeds
from eicu.models import BedKey
from eicu.patients import (
    Encounter,
    PatientError,
    checked_encounter_fields,
    checked_note,
    checked_patient,
    encounter_view,
    note_view,
)
from eicu.store.base import Store

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "eicu_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CENSUS_PERIOD_S = 1.0
LIVE_PERIOD_S = 0.1
LIVE_INITIAL_S = 8.0
REVIEW_MAX_S = 300.0  # the widest paper: 25 mm/s on a wide screen at its smallest scale
REVIEW_ALARMS_BACK_US = 24 * 3600 * 1_000_000  # alarms that started up to a day before a window
TREND_MAX_MIN = 7 * 24 * 60
TREND_BUCKETS_S = (60, 300, 1800)  # 1 minute, 5 minutes, 30 minutes
TREND_MAX_POINTS = 360
PAUSE_ASK_MAX_S = 3600.0  # the largest pause a request may ask; the alarm policy cuts it further
HISTORY_MAX = 200
RECENT_MAX = 500  # the newest alarm events a history is chosen from
NO_ALARMS = "this engine runs no alarm service (start it with an alarm outbox)"
NO_ANSWER = "the bed's engine did not answer in time; look again shortly"
NOT_YOUR_SITE = "this bed is not in your sites"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Login(BaseModel):
    name: str
    password: str
    next: str | None = None  # where the login page goes next: answered back only if safe


class Pause(BaseModel):
    duration_s: float = Field(gt=0, le=PAUSE_ASK_MAX_S)


class NewUser(BaseModel):
    name: str
    role: str
    password: str
    sites: list[str] | None = None  # None: every site
    bed: str | None = None  # SITE/BED: a cart's bed


class UserChange(BaseModel):
    """What to change of a user; a field left out stays as it is (``sites: null``: every
    site)."""

    role: str | None = None
    sites: list[str] | None = None
    bed: str | None = None
    password: str | None = None


class NotYours(Exception):
    """A user administrator limited to sites reached for a user outside them."""


def may_manage(admin: User, sites: frozenset[str] | None) -> bool:
    """An admin of every site manages every user; one limited to sites only users limited to
    some of those sites (never a user of every site)."""
    return admin.sites is None or (sites is not None and sites <= admin.sites)


DEFAULT_NEXT = "/census"
NEXT_MAX_CHARS = 2000


def safe_next(target: str | None) -> str | None:
    """``target`` when it is a path on this site (``/census``, ``/bed?bed=a/b``); None for
    anything that a browser could take to another origin: ``//host``, ``/\\host``, a scheme,
    control characters or whitespace, and the same in percent-encoded forms."""
    if not target or len(target) > NEXT_MAX_CHARS:
        return None
    text = target
    for _ in range(3):  # the value as given, and decoded once and twice
        if not text.startswith("/") or text[1:2] in ("/", "\\") or "\\" in text:
            return None
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
            return None
        parts = urllib.parse.urlsplit(text)
        if parts.scheme or parts.netloc:
            return None
        decoded = urllib.parse.unquote(text)
        if decoded == text:
            break
        text = decoded
    else:
        return None  # encoded three times over: no page of ours needs that
    return target


def sites_of(user: User) -> list[str] | None:
    """The user's sites for JSON: a sorted list, or None for every site."""
    return sorted(user.sites) if user.sites is not None else None


def now_us() -> int:
    return time.time_ns() // 1000


def _same_origin(origin: str | None, host: str | None) -> bool:
    """True when there is no Origin (not a browser request) or it names this host."""
    if origin is None:
        return True
    return host is not None and urllib.parse.urlsplit(origin).netloc == host


def trend_bucket_s(minutes: int) -> int:
    """The narrowest bucket that keeps a trend of ``minutes`` within TREND_MAX_POINTS."""
    for bucket_s in TREND_BUCKETS_S:
        if minutes * 60 / bucket_s <= TREND_MAX_POINTS:
            return bucket_s
    return TREND_BUCKETS_S[-1]


def need(permission: Permission) -> Callable[[Request], Awaitable[Session]]:
    """A dependency: the request's session, which must hold ``permission``; for a
    state-changing request also a same-origin ``Origin`` and the session's CSRF token."""

    async def check(request: Request) -> Session:
        sessions: Sessions = request.app.state.sessions
        session = await sessions.aget(request.cookies.get(COOKIE))
        if session is None:
            raise HTTPException(401, "log in first")
        if request.method not in SAFE_METHODS:
            if not _same_origin(request.headers.get("origin"), request.headers.get("host")):
                raise HTTPException(403, "cross-origin request refused")
            if not csrf_ok(session, request.headers.get(CSRF_HEADER)):
                raise HTTPException(403, "missing or wrong CSRF token")
        if not session.user.can(permission):
            raise HTTPException(403, f"the {session.user.role} role may not do this")
        site = request.path_params.get("site")
        if site is not None and not session.user.can_see(site):
            raise HTTPException(403, NOT_YOUR_SITE)
        return session

    return check


CanView = Annotated[Session, Depends(need(Permission.VIEW))]
CanReview = Annotated[Session, Depends(need(Permission.REVIEW))]
CanManageUsers = Annotated[Session, Depends(need(Permission.MANAGE_USERS))]
CanRespond = Annotated[Session, Depends(need(Permission.RESPOND))]
CanAdmit = Annotated[Session, Depends(need(Permission.ADMIT))]


class Source(Protocol):
    """What the dashboard reads: ``beds`` (live state), ``desk`` (alarms; None when no alarm
    service judges the beds; read at each use), ``store`` (trends, full disclosure, consult
    records) and ``registry`` (the metrics it serves on ``/metrics``)."""

    @property
    def beds(self) -> LiveBeds: ...

    @property
    def desk(self) -> AlarmDesk | None: ...

    @property
    def store(self) -> Store: ...

    @property
    def registry(self) -> CollectorRegistry: ...


@dataclass(frozen=True)
class FixedSource:
    """A :class:`Source` whose parts do not change (``eicu dashboard``'s)."""

    beds: LiveBeds
    desk: AlarmDesk | None
    store: Store
    registry: CollectorRegistry


def create_app(
    source: Source,
    settings: HttpSettings,
    users: Users,
    ice_servers: Sequence[IceServer] = (),
    health: Health | None = None,
) -> FastAPI:
    """Routes that read the beds' live state are ``async``: they run on the source's event
    loop (the engine's in ``eicu serve``), between frames, never in a worker thread while a
    frame is being routed.

    ``health``: the process's liveness and readiness checks, served unauthenticated at
    ``/healthz`` and ``/readyz`` (no patient data in them); without it, only the answer of the
    event loop (ready with no checks)."""
    beds, store = source.beds, source.store
    patients = PatientCache(store)
    # kept in the store too: every dashboard process serves every session (dashboards.security)
    sessions = Sessions(settings.session_idle_s, users.get, shared=source.store)
    limiter = LoginLimiter(
        settings.login_failures_max,
        settings.login_window_s,
        address_max=settings.login_address_failures_max,
        user_delay_max_s=settings.login_user_delay_max_s,
    )
    app = FastAPI(title="eicu dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sessions = sessions
    # read by dashboards.server: whose X-Forwarded-For and X-Forwarded-Proto to believe
    app.state.trusted_proxies = settings.trusted_proxies

    @app.exception_handler(StorageUnavailable)
    async def store_down(request: Request, exc: StorageUnavailable) -> JSONResponse:
        """History (trends, full disclosure, patients, alarm history) needs the database: while
        it cannot be reached, say so (503) rather than fail; live views go on from the bus or
        the engine."""
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": "the database cannot be reached now; try again shortly"}, status_code=503
        )

    @app.middleware("http")
    async def headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def session_of(request: Request) -> Session | None:
        return await sessions.aget(request.cookies.get(COOKIE))

    def bed_key(site: str, bed: str) -> BedKey:
        try:
            return BedKey.parse(f"{site}/{bed}")
        except ValueError as exc:
            raise HTTPException(404, "no such bed") from exc

    # --- pages (no patient data in them: they fetch it once logged in) -------------------------

    def page(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def serve_page(request: Request) -> Response:
            if await session_of(request) is None:
                target = urllib.parse.quote(
                    request.url.path + ("?" + request.url.query if request.url.query else "")
                )
                return RedirectResponse(f"/login?next={target}", status_code=303)
            return FileResponse(STATIC / name)

        return serve_page

    # --- liveness and readiness (no session: for probes; nothing about patients) --------------

    probes = health or Health()

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        code, body = probes.answer("/healthz")
        return Response(body, status_code=code, media_type="application/json")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        code, body = probes.answer("/readyz")
        return Response(body, status_code=code, media_type="application/json")

    app.get("/", include_in_schema=False)(lambda: RedirectResponse("/census", status_code=303))
    app.get("/census", include_in_schema=False)(page("census.html"))
    app.get("/bed", include_in_schema=False)(page("bed.html"))
    app.get("/admin", include_in_schema=False)(page("admin.html"))
    app.get("/alarms", include_in_schema=False)(page("alarms.html"))

    @app.get("/login", include_in_schema=False)
    def login_page(request: Request, next: str | None = None) -> Response:
        if next is not None and safe_next(next) is None:
            # a link that would send the browser elsewhere after the login: drop its target
            log.warning("login page asked with an unsafe next target; dropped")
            return RedirectResponse("/login", status_code=303)
        return FileResponse(STATIC / "login.html")

    app.get("/consult/{site}/{bed}", include_in_schema=False)(page("consult.html"))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # --- sessions ----------------------------------------------------------------------------

    @app.post("/api/login")
    async def login(body: Login, request: Request) -> JSONResponse:
        if not _same_origin(request.headers.get("origin"), request.headers.get("host")):
            raise HTTPException(403, "cross-origin request refused")
        # the peer's address, or the one a trusted proxy forwarded (EICU_TRUSTED_PROXIES)
        client = request.client.host if request.client else "?"
        wait_s = limiter.retry_after_s(body.name, client)
        if wait_s > 0:
            return JSONResponse(
                {"detail": "too many failed logins; try again later"},
                status_code=429,
                headers={"Retry-After": str(max(1, round(wait_s)))},
            )
        delay_s = limiter.delay_s(body.name)
        if delay_s > 0:  # many failures for this name from anywhere: slowed, never locked
            await asyncio.sleep(delay_s)
        user = await asyncio.to_thread(users.verify, body.name, body.password)
        if user is None:
            limiter.failed(body.name, client)
            log.warning("failed dashboard login from %s", client)
            raise HTTPException(401, "wrong name or password")
        limiter.succeeded(body.name, client)
        session = await sessions.acreate(user)
        log.info("dashboard login: %s (%s)", user.name, user.role)
        response = JSONResponse(
            {"name": user.name, "role": user.role.value, "csrf": session.csrf,
             "permissions": sorted(p.value for p in Permission if user.can(p)),
             "sites": sites_of(user), "next": safe_next(body.next) or DEFAULT_NEXT}
        )  # fmt: skip
        response.set_cookie(
            COOKIE,
            session.token,
            httponly=True,
            secure=settings.cookie_secure,
            samesite="strict",
            path="/",
        )
        return response

    @app.post("/api/logout")
    async def logout(request: Request, session: CanView) -> Response:
        await sessions.adrop(session.token)
        response = Response(status_code=204)
        response.delete_cookie(
            COOKIE, path="/", secure=settings.cookie_secure, httponly=True, samesite="strict"
        )
        return response

    @app.get("/api/me")
    async def me(session: CanView) -> dict[str, Any]:
        user = session.user
        return {
            "name": user.name,
            "role": user.role.value,
            "csrf": session.csrf,
            "permissions": sorted(p.value for p in Permission if user.can(p)),
            "sites": sites_of(user),
        }

    # --- patient data --------------------------------------------------------------------------

    def census_rows(site: str | None, sites: frozenset[str] | None) -> list[dict[str, Any]]:
        """The census of ``site`` (None: all), limited to ``sites`` (None: every site)."""
        if site is not None and sites is not None and site not in sites:
            return []
        desk = source.desk
        t = now_us()
        rows = views.census(
            beds.snapshots(t),
            t,
            site,
            desk is not None and beds.alarms_available,
            policy_for=desk.policy_for if desk is not None else None,
            remote_sites=beds.site_links().keys(),
        )
        carts = registered_carts()
        for row in rows:
            row["cart"] = row["bed"] in carts  # a video consult can be offered
            row["patient"] = patients.summary(row["bed"], t)
        return rows if sites is None else [r for r in rows if r["site"] in sites]

    def registered_carts() -> set[str]:
        """The beds with a video cart registered now (``consult.register`` sets the hub)."""
        hub = getattr(app.state, "consult", None)
        return {str(bed) for bed in hub.registered()} if hub is not None else set()

    def sites_seen(sites: frozenset[str] | None) -> list[str]:
        return sorted(s for s in beds.sites() if sites is None or s in sites)

    def links_shown(site: str | None, sites: frozenset[str] | None) -> dict[str, Any]:
        """The banners of the remote sites a census of ``site`` (None: all) shows to a user of
        ``sites`` (None: every site): those whose link is not up."""
        shown = None if site is None else {site}
        if sites is not None:
            shown = set(sites) if shown is None else shown & sites
        return views.site_links_view(beds.site_links(), now_us(), shown)

    def census_filter(request: Request | WebSocket) -> views.CensusFilter:
        try:
            return views.CensusFilter.parse(request.query_params)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc

    @app.get("/api/census")
    async def census(session: CanView, request: Request, site: str | None = None) -> dict[str, Any]:
        """The census (``site``; filters and sort as ``views.CensusFilter`` takes them:
        ``priority``, ``band``, ``rhythm``, ``stale``, ``sort``)."""
        await patients.refresh_if_due()
        return {
            "sites": sites_seen(session.user.sites),
            "beds": census_filter(request).apply(census_rows(site or None, session.user.sites)),
            "links": links_shown(site or None, session.user.sites),
        }

    @app.get("/api/beds/{site}/{bed}")
    async def bed_detail(site: str, bed: str, _: CanView) -> dict[str, Any]:
        key = bed_key(site, bed)
        t = now_us()
        snap = beds.snapshot(key, t)
        if snap is None:
            raise HTTPException(404, "no such bed")
        out = views.bed_summary(snap, t)
        out["values"] = {
            k: views.value_view(k, v, snap.device_now_us(t)) for k, v in sorted(snap.latest.items())
        }
        out["signals"] = {
            name: {"fs_hz": fs_hz, "t_last_us": t_last_us}
            for name, (fs_hz, t_last_us) in snap.signals.items()
        }
        out["device_now_us"] = snap.device_now_us(t)
        out["cart"] = str(key) in registered_carts()
        await patients.refresh_if_due()
        out["patient"] = patients.view(str(key), t)
        return out

    async def whose(
        key: BedKey, start_us: int, end_us: int
    ) -> tuple[Encounter | None, list[tuple[BedKey, int, int]]]:
        """Where the data of ``key``'s patient over ``[start_us, end_us)`` is: with a patient in
        the bed, each bed of their stay over the time they were in it (a transfer loses
        nothing; nothing from before their admission, another patient's, is shown); without
        one, the bed itself. (bed, from, until) in time order."""
        await patients.refresh_if_due()
        stay = patients.by_bed.get(str(key))
        if stay is None:
            return None, [(key, start_us, end_us)]
        return stay, [
            (loc.bed, max(start_us, loc.since_us), min(end_us, loc.until_us or end_us))
            for loc in stay.locations
            if loc.since_us < end_us and (loc.until_us is None or loc.until_us > start_us)
        ]

    @app.get("/api/beds/{site}/{bed}/trends")
    async def trends(
        site: str,
        bed: str,
        _: CanView,
        minutes: Annotated[int, Query(ge=1, le=TREND_MAX_MIN)] = 60,
    ) -> dict[str, Any]:
        key = bed_key(site, bed)
        t = now_us()
        snap = beds.snapshot(key, t)
        end_us = snap.device_now_us(t) if snap else t
        start_us = end_us - minutes * 60_000_000
        bucket_s = trend_bucket_s(minutes)
        out: dict[str, Any] = {
            "start_us": start_us, "end_us": end_us, "bucket_s": bucket_s, "series": {}
        }  # fmt: skip
        stay, spans = await whose(key, start_us, end_us)
        if stay is not None:
            out["patient"] = {"encounter_id": stay.encounter_id, "since_us": stay.admitted_us,
                              "beds": [[str(b), a, z] for b, a, z in spans]}  # fmt: skip
        for param in views.TREND_KEYS:
            found = []
            for where, a_us, z_us in spans:
                found += await store.trend(where, param, a_us, z_us, bucket_s)
            found.sort(key=lambda p: p.bucket_us)
            out["series"][param] = [[p.bucket_us, p.avg, p.min, p.max, p.n] for p in found]
        # the alarms over the span, marked on the trends (None: no alarm service)
        out["alarms"] = None
        if (desk := source.desk) is not None:
            events = await desk.events_since(start_us - REVIEW_ALARMS_BACK_US)
            out["alarms"] = [
                span for where, a_us, z_us in spans
                for span in review.alarm_spans(events, where, a_us, z_us)
            ]  # fmt: skip
        return out

    @app.get("/api/beds/{site}/{bed}/waveform")
    async def waveform(
        site: str,
        bed: str,
        signal: str,
        start_us: int,
        _: CanReview,
        seconds: Annotated[float, Query(gt=0, le=REVIEW_MAX_S)] = 10.0,
    ) -> dict[str, Any]:
        key = bed_key(site, bed)
        if signal not in SIGNAL_BY_KEY:
            raise HTTPException(422, f"unknown signal {signal!r}")
        end_us = start_us + int(seconds * 1e6)
        lead_in_us = int(review.LEAD_IN_S * 1e6)
        # the patient's samples: from each bed of their stay over their time in it (``beds``);
        # the lead-in (for the beat marks) only where the window itself starts in that bed
        _stay, spans = await whose(key, start_us, end_us)
        parts = [
            await store.waveform(b, signal, a - lead_in_us if a == start_us else a, z)
            for b, a, z in spans
        ]
        stored = review.joined(signal, parts)
        inside = stored.t_us >= start_us
        marks = await asyncio.to_thread(review.window_marks, stored, start_us, end_us)
        alarms = None
        if (desk := source.desk) is not None:
            events = await desk.events_since(start_us - REVIEW_ALARMS_BACK_US)
            alarms = [
                span for b, a, z in spans for span in review.alarm_spans(events, b, a, z)
            ]  # fmt: skip
        return {
            "bed": str(spans[0][0]) if spans else str(key),
            "beds": [[str(b), a, z] for b, a, z in spans],
            "signal": signal,
            "unit": SIGNAL_BY_KEY[signal].unit,
            "fs_hz": stored.fs_hz,
            "start_us": start_us,
            "end_us": end_us,
            "t_us": stored.t_us[inside].tolist(),
            "values": views.floats(stored.values[inside]),
            "marks": marks,
            "alarms": alarms,
        }

    # --- alarms --------------------------------------------------------------------------------

    def alarm_desk() -> AlarmDesk:
        desk = source.desk
        if desk is None:
            raise HTTPException(503, NO_ALARMS)
        return desk

    @app.get("/api/alarms")
    async def alarms(
        session: CanView, bed: str | None = None, history: bool = False
    ) -> dict[str, Any]:
        service = alarm_desk()
        user = session.user
        key = None
        if bed:
            site, _slash, name = bed.partition("/")
            key = bed_key(site, name)
            if not user.can_see(key.site):
                raise HTTPException(403, NOT_YOUR_SITE)
        t = now_us()
        out: dict[str, Any] = {
            "now_us": t,
            "audio_pause_max_s": (
                service.policy_for(key) if key else service.policy
            ).audio_pause_max_s,
            "alarms": views.live_alarms(
                (a for a in service.alarms() if user.can_see(a.bed.site)),
                t,
                key,
                policy_for=service.policy_for,
            ),
        }
        if key is not None or history:
            recent = await service.recent(RECENT_MAX)
            if key is not None:
                events = [e for e in recent if e.bed == key][-HISTORY_MAX:]
            else:  # the unit's: every bed of the user's sites
                events = [e for e in recent if user.can_see(e.bed.site)][-HISTORY_MAX:]
            out["history"] = [views.event_view(e) for e in reversed(events)]
        return out

    @contextlib.contextmanager
    def clock_checked() -> Iterator[None]:
        """The state machine refuses a time before its last step (the wall clock stepped
        back): answer 503 rather than record the change at a wrong time. An alarm owner that
        does not answer (another process's, over the bus): 504."""
        try:
            yield
        except ValueError as exc:
            if "time went back" not in str(exc):
                raise
            log.error("alarm change refused: %s", exc)
            raise HTTPException(503, "the server clock went back; try again shortly") from exc
        except TimeoutError as exc:
            log.error("alarm change not answered: %s", exc)
            raise HTTPException(504, NO_ANSWER) from exc

    def live_alarm(service: AlarmDesk, alarm_id: str, user: User) -> Alarm:
        try:
            alarm = service.alarm(alarm_id)
        except KeyError as exc:
            raise HTTPException(404, "no such live alarm") from exc
        if not user.can_see(alarm.bed.site):
            raise HTTPException(403, NOT_YOUR_SITE)
        return alarm

    @app.post("/api/alarms/{alarm_id:path}/ack")
    async def acknowledge(alarm_id: str, session: CanRespond) -> dict[str, Any]:
        service = alarm_desk()
        alarm = live_alarm(service, alarm_id, session.user)
        if alarm.state not in (AlarmState.ACTIVE, AlarmState.LATCHED):
            raise HTTPException(409, f"the alarm is {alarm.state.value}: nothing to acknowledge")
        with clock_checked():
            try:
                events = await service.acknowledge(alarm_id, session.user.name, now_us())
            except KeyError as exc:  # it ended meanwhile
                raise HTTPException(404, "no such live alarm") from exc
        log.info("alarm %s acknowledged by %s", alarm_id, session.user.name)
        return {"events": [views.event_view(e) for e in events]}

    async def pause(
        service: AlarmDesk, bed: BedKey, target: BedKey | str, user: str, duration_s: float
    ) -> dict[str, Any]:
        with clock_checked():
            try:
                events = await service.pause(target, user, now_us(), duration_s)
            except KeyError as exc:
                raise HTTPException(404, "no such live alarm") from exc
        if not any(e.actor == user for e in events):
            raise HTTPException(409, "no sounding alarm to pause")
        log.info("alarm audio of %s paused by %s", target, user)
        return {
            "paused_s": min(duration_s, service.policy_for(bed).audio_pause_max_s),
            "events": [views.event_view(e) for e in events],
        }

    @app.post("/api/alarms/{alarm_id:path}/pause")
    async def pause_alarm(alarm_id: str, body: Pause, session: CanRespond) -> dict[str, Any]:
        service = alarm_desk()
        alarm = live_alarm(service, alarm_id, session.user)
        if alarm.state not in (AlarmState.ACTIVE, AlarmState.LATCHED):
            raise HTTPException(409, f"the alarm is {alarm.state.value}: it does not sound")
        return await pause(service, alarm.bed, alarm_id, session.user.name, body.duration_s)

    @app.post("/api/beds/{site}/{bed}/alarms/pause")
    async def pause_bed(site: str, bed: str, body: Pause, session: CanRespond) -> dict[str, Any]:
        service = alarm_desk()
        key = bed_key(site, bed)
        return await pause(service, key, key, session.user.name, body.duration_s)

    # --- patients ------------------------------------------------------------------------------

    def patient_error(exc: PatientError) -> HTTPException:
        code = 409 if exc.key in ("bed", "mrn", "encounter") else 422
        return HTTPException(code, str(exc))

    async def open_stay(encounter_id: int, user: User) -> Encounter:
        """The stay, if the user may see its bed's site (the last bed once it ended)."""
        found = await store.encounters(encounter_id=encounter_id)
        if not found:
            raise HTTPException(404, "no such encounter")
        stay = found[0]
        where = stay.locations[-1].bed.site if stay.locations else None
        if where is not None and not user.can_see(where):
            raise HTTPException(403, NOT_YOUR_SITE)
        return stay

    @app.get("/api/patients")
    async def current_patients(session: CanView) -> dict[str, Any]:
        """The patients in beds now (of the user's sites)."""
        t = now_us()
        stays = await store.encounters()
        return {
            "encounters": [
                encounter_view(e, t)
                for e in stays
                if e.bed is not None and session.user.can_see(e.bed.site)
            ]
        }

    @app.post("/api/beds/{site}/{bed}/admit", status_code=201)
    async def admit(site: str, bed: str, body: Admission, session: CanAdmit) -> dict[str, Any]:
        key = bed_key(site, bed)
        try:
            patient = checked_patient(body.patient.model_dump())
            fields = checked_encounter_fields(
                body.model_dump(exclude={"patient"}, exclude_none=True)
            )
            stay = await store.admit(patient, key, now_us(), session.user.name, fields)
        except PatientError as exc:
            raise patient_error(exc) from exc
        patients.changed()
        log.info("%s admitted to %s by %s", patient.mrn, key, session.user.name)
        return encounter_view(stay, now_us())

    @app.get("/api/encounters/{encounter_id}")
    async def encounter(encounter_id: int, session: CanView) -> dict[str, Any]:
        stay = await open_stay(encounter_id, session.user)
        out = encounter_view(stay, now_us())
        out["notes"] = [note_view(n) for n in await store.notes(encounter_id)]
        out["log"] = [
            {"time_us": e.time_us, "actor": e.actor, "action": e.action, "detail": e.detail}
            for e in await store.encounter_log(encounter_id)
        ]
        return out

    @app.post("/api/encounters/{encounter_id}/transfer")
    async def transfer(encounter_id: int, body: Transfer, session: CanAdmit) -> dict[str, Any]:
        await open_stay(encounter_id, session.user)
        try:
            target = BedKey.parse(body.bed)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        if not session.user.can_see(target.site):
            raise HTTPException(403, NOT_YOUR_SITE)
        try:
            stay = await store.transfer(encounter_id, target, now_us(), session.user.name)
        except PatientError as exc:
            raise patient_error(exc) from exc
        patients.changed()
        log.info("encounter %d moved to %s by %s", encounter_id, target, session.user.name)
        return encounter_view(stay, now_us())

    @app.post("/api/encounters/{encounter_id}/discharge")
    async def discharge(encounter_id: int, session: CanAdmit) -> dict[str, Any]:
        await open_stay(encounter_id, session.user)
        try:
            stay = await store.discharge(encounter_id, now_us(), session.user.name)
        except PatientError as exc:
            raise patient_error(exc) from exc
        patients.changed()
        log.info("encounter %d discharged by %s", encounter_id, session.user.name)
        return encounter_view(stay, now_us())

    @app.patch("/api/encounters/{encounter_id}")
    async def change_encounter(
        encounter_id: int, body: EncounterChange, session: CanAdmit
    ) -> dict[str, Any]:
        await open_stay(encounter_id, session.user)
        given = body.model_dump(exclude_none=True)
        try:
            fields = checked_encounter_fields(given)
            allergies = None
            if "allergies" in given:
                allergies = checked_patient({"mrn": "x", "name": "x", **given}).allergies
            stay = await store.update_encounter(
                encounter_id, fields, allergies, now_us(), session.user.name
            )
        except PatientError as exc:
            raise patient_error(exc) from exc
        patients.changed()
        return encounter_view(stay, now_us())

    @app.post("/api/encounters/{encounter_id}/notes", status_code=201)
    async def add_note(encounter_id: int, body: NoteIn, session: CanAdmit) -> dict[str, Any]:
        await open_stay(encounter_id, session.user)
        try:
            kind, text, handoff = checked_note(body.kind, body.text, body.handoff)
            note = await store.add_note(
                encounter_id, kind, text, handoff, now_us(), session.user.name
            )
        except PatientError as exc:
            raise patient_error(exc) from exc
        return note_view(note)

    # --- administration ------------------------------------------------------------------------

    def user_view(user: User) -> dict[str, Any]:
        return {"name": user.name, "role": user.role.value, "sites": sites_of(user),
                "bed": str(user.bed) if user.bed is not None else None}  # fmt: skip

    def not_yours(admin: User) -> HTTPException:
        where = ",".join(sorted(admin.sites or ()))
        return HTTPException(403, f"you manage only users limited to your sites ({where})")

    @app.get("/api/users")
    def list_users(session: CanManageUsers) -> list[dict[str, Any]]:
        admin = session.user
        return [user_view(u) for u in users.list() if may_manage(admin, u.sites)]

    @app.post("/api/users", status_code=201)
    async def add_user(body: NewUser, session: CanManageUsers) -> dict[str, Any]:
        admin = session.user
        sites = frozenset(body.sites) if body.sites is not None else None
        try:
            _role, sites, bed = checked_user(body.role, sites, body.bed)
        except UserError as exc:
            raise HTTPException(422, str(exc)) from exc
        if not may_manage(admin, sites):
            log.warning("user %s refused to %s: outside the admin's sites", body.name, admin.name)
            raise not_yours(admin)
        try:
            user = await asyncio.to_thread(
                users.add, body.name, body.role, body.password, sites=sites, bed=bed
            )
        except UserError as exc:
            raise HTTPException(422, str(exc)) from exc
        log.info("user %s (%s) added by %s", user.name, user.role, admin.name)
        return user_view(user)

    @app.patch("/api/users/{name}")
    async def change_user(name: str, body: UserChange, session: CanManageUsers) -> dict[str, Any]:
        admin = session.user
        given = body.model_fields_set

        def check(before: User, after: User) -> None:
            if not (may_manage(admin, before.sites) and may_manage(admin, after.sites)):
                raise NotYours

        try:
            user = await asyncio.to_thread(
                users.update,
                name,
                role=body.role if body.role is not None else UNSET,
                sites=(frozenset(body.sites) if body.sites is not None else None)
                if "sites" in given
                else UNSET,
                bed=body.bed if "bed" in given else UNSET,
                password=body.password,
                check=check,
            )
        except NotYours as exc:
            raise not_yours(admin) from exc
        except UserError as exc:
            raise HTTPException(404 if exc.key == "name" else 422, str(exc)) from exc
        log.info("user %s changed by %s: now %s", name, admin.name, user_view(user))
        return user_view(user)

    @app.delete("/api/users/{name}", status_code=204)
    async def remove_user(name: str, session: CanManageUsers) -> Response:
        admin = session.user

        def check(user: User) -> None:
            if not may_manage(admin, user.sites):
                raise NotYours

        try:
            await asyncio.to_thread(users.remove, name, check)
        except NotYours as exc:
            raise not_yours(admin) from exc
        except UserError as exc:
            raise HTTPException(404, str(exc)) from exc
        log.info("user %s removed by %s", name, admin.name)
        return Response(status_code=204)

    # --- operations ----------------------------------------------------------------------------

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        """The process's registry for Prometheus: with EICU_METRICS_TOKEN set, only for a
        bearer of that token; bed labels only with EICU_METRICS_BED_LABELS."""
        if settings.metrics_token is not None and not bearer_ok(
            request.headers.get("authorization"), settings.metrics_token
        ):
            return Response(
                "a bearer token is needed\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                media_type="text/plain",
            )
        body = exposition(source.registry, bed_labels=settings.metrics_bed_labels)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # --- live streams ------------------------------------------------------------------------

    async def ws_session(ws: WebSocket, permission: Permission) -> Session | None:
        """The session behind a WebSocket, or None after refusing it (HTTP 403)."""
        session = await sessions.aget(ws.cookies.get(COOKIE))
        site = ws.path_params.get("site")
        ok = (
            session is not None
            and session.user.can(permission)
            and (site is None or session.user.can_see(site))
            and _same_origin(ws.headers.get("origin"), ws.headers.get("host"))
        )
        if not ok:
            await ws.close(code=1008)
            return None
        await ws.accept()
        return session

    async def still_valid(session: Session) -> bool:
        return await sessions.aget(session.token) is session

    # a census scope: (the page's site filter, the sites its user may see, its other filters)
    Scope = tuple[str | None, frozenset[str] | None, views.CensusFilter]

    def scope_rows(scope: Scope) -> list[dict[str, Any]]:
        return scope[2].apply(census_rows(scope[0], scope[1]))

    def scope_sites(scope: Scope) -> list[str]:
        return sites_seen(scope[1])

    def engine_now() -> dict[str, Any]:
        status = engine_status(beds.input_delay_us(now_us()) or 0)
        if (why := beds.starting()) is not None:
            status["starting"] = why  # the empty census says why it is empty
        return status

    def scope_links(scope: Scope) -> dict[str, Any]:
        return links_shown(scope[0], scope[1])

    feed = CensusFeed(
        scope_rows, scope_sites, CENSUS_PERIOD_S, engine=engine_now, links=scope_links
    )

    @app.websocket("/ws/census")
    async def census_ws(
        ws: WebSocket, site: str | None = None, view: str | None = None, compact: bool = False
    ) -> None:
        """A snapshot, then every period the rows that changed (see dashboards.census). A page
        that asks for a ``view`` (``?view=first,count``, or later ``{"view": [first, count]}``)
        gets only the ranks it shows (``CensusWindow``; ``compact=1``: its changed rows in the
        compact form), and ``{"hold": true|false}`` holds its rows' order or lets it go."""
        session = await ws_session(ws, Permission.VIEW)
        if session is None:
            return
        # pages of users who may see the same sites share one computation per site filter
        try:
            chosen = views.CensusFilter.parse(ws.query_params)
        except ValueError as exc:
            await ws.close(code=1008, reason=str(exc)[:120])
            return
        scope = (site or None, session.user.sites, chosen)
        seq: int | None = None
        window: CensusWindow | None = None
        if view:
            try:
                first, count = (int(v) for v in view.split(","))
                window = CensusWindow(first, count, compact=compact)
            except ValueError:
                await ws.close(code=1008, reason="view is first,count")
                return
        wake = asyncio.Event()

        async def listen() -> None:
            nonlocal window
            while True:
                text = await ws.receive_text()
                try:
                    asked = json.loads(text)
                    if "view" in asked:
                        first, count = asked["view"]
                        if window is None:
                            window = CensusWindow(first, count, compact=compact)
                        else:
                            window.set_view(first, count)
                    if "hold" in asked and window is not None:
                        window.hold(bool(asked["hold"]))
                except (ValueError, TypeError, KeyError) as exc:
                    log.info("census page sent what is not a view: %.80s (%s)", text, exc)
                    continue
                wake.set()

        listener = asyncio.create_task(listen())
        try:
            while await still_valid(session) and not listener.done():
                if not session.user.can(Permission.VIEW):
                    break  # the user's role changed
                if session.user.sites != scope[1]:  # the user's sites changed: a new snapshot
                    scope, seq = (site or None, session.user.sites, chosen), None
                    if window is not None:
                        window = CensusWindow(window.first, window.count, compact=compact)
                await patients.refresh_if_due()
                if window is not None:
                    messages = window.messages(feed.current(scope))
                else:
                    seq, messages = feed.messages_after(scope, seq)
                for text in messages:
                    await ws.send_text(text)
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(feed.wait_s(scope), 0.05))
            if not listener.done():
                await ws.close(code=1008)
        except (WebSocketDisconnect, OSError, RuntimeError):  # the client went away
            return
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                await listener

    @app.websocket("/ws/beds/{site}/{bed}")
    async def bed_ws(ws: WebSocket, site: str, bed: str) -> None:
        session = await ws_session(ws, Permission.VIEW)
        if session is None:
            return
        try:
            key = BedKey.parse(f"{site}/{bed}")
        except ValueError:
            await ws.close(code=1008)
            return
        sent: dict[str, int] = {}
        marks_seq = 0
        next_numerics = 0.0
        beds.watch(key)  # its waveforms, where they come from the bus
        try:
            while await still_valid(session):
                if not (session.user.can(Permission.VIEW) and session.user.can_see(key.site)):
                    break  # the user's role or sites changed
                message: dict[str, Any] = {}
                traces = beds.traces(key)
                if traces:
                    chunks = views.live_chunks(traces, sent, LIVE_INITIAL_S)
                    if chunks:
                        message["waves"] = chunks
                marks, marks_seq = beds.marks(key, marks_seq)
                shown = [views.mark_view(m) for m in marks if m.signal in views.LIVE_SIGNALS]
                if shown:
                    message["marks"] = shown
                if time.monotonic() >= next_numerics and beds.snapshot(key, now_us()) is not None:
                    next_numerics = time.monotonic() + CENSUS_PERIOD_S
                    message["bed"] = await bed_detail(site, bed, session)
                    message["engine"] = engine_now()
                    # the bed's site cut off from the hub: its banner, as on the census
                    message["links"] = links_shown(key.site, session.user.sites)
                    message["now_us"] = now_us()
                if message:
                    await ws.send_json(message)
                await asyncio.sleep(LIVE_PERIOD_S)
            await ws.close(code=1008)
        except (WebSocketDisconnect, OSError):  # the client went away
            return
        finally:
            beds.unwatch(key)

    consult.register(app, store, source.registry, sessions, ice_servers)

    async def by_token(token: str) -> Session | None:
        """A bearer token: a system's API token (looked up in memory, first), else a session's
        (a user's client; in the shared session store)."""
        system = users.by_token(token)
        if system is None:
            return await sessions.aget(token)
        now = time.monotonic()
        return Session(token="", user=system, csrf="", last_used_s=now, created_s=now)

    fhir.register(app, store, session_of, by_token)
    return app
