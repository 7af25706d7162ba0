"""Video consult signaling: the dashboard relays a WebRTC offer and answer between a clinician's
browser and the bedside cart of a bed, audits every call in the store, and exports call quality.

The media never passes through the dashboard: browser and cart connect to each other directly
(or through the TURN servers of ``EICU_ICE_SERVERS``). Only logged-in users reach either
endpoint; the protocol is in docs/video.md.

- ``/ws/cart/{site}/{bed}``: a user of role ``cart`` whose record names this bed registers as
  its cart. A newer registration of the same bed replaces the older (closed with 4409); a cart
  account asking for another bed is refused (4421) and counted, and the bed's cart stays.
- ``/ws/consult/{site}/{bed}?alarm=ID``: a user with the ``consult`` permission who may see the
  site calls the bed's cart. One WebSocket carries one call; when it closes the call ends.

Every call is written to ``consult_calls`` before the browser may send its offer (a call that
cannot be recorded does not start) and its end is written when it ends. Refused attempts by
logged-in users are recorded too, with outcome ``refused``, ``no_cart`` or ``busy``. A message
that cannot be understood is counted, logged without its content, and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from fastapi import FastAPI, WebSocket
from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.websockets import WebSocketDisconnect

from dashboards.security import Session, Sessions
from dashboards.users import Permission, User
from eicu.config import IceServer
from eicu.errors import StorageUnavailable
from eicu.models import BedKey
from eicu.store.base import CallRecord, Store

if TYPE_CHECKING:
    from dashboards.consult_bus import ConsultRelay

log = logging.getLogger(__name__)

COOKIE = "eicu_session"  # the dashboard's session cookie (dashboards.app.COOKIE)
CLOSE_LOG_IN = 4401  # no valid session
CLOSE_FORBIDDEN = 4403  # the role or the site does not allow it
CLOSE_NO_BED = 4404  # not a bed id
CLOSE_REPLACED = 4409  # a newer registration of the same bed's cart
CLOSE_WRONG_BED = 4421  # a cart account registering for a bed its record does not name
CLOSE_POLICY = 1008  # the session ended
TICK_S = 0.5  # how often a connection checks its session and its call's deadlines
OFFER_TIMEOUT_S = 60.0  # from "ready" to the browser's offer (ICE gathering included)
ANSWER_TIMEOUT_S = 45.0  # from the offer reaching the cart to its answer
MESSAGE_MAX_CHARS = 64 * 1024  # an SDP with every candidate is a few kB
ALARM_ID_MAX_CHARS = 200
END_AUDIT_RETRIES_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

# Call quality, as reported by each side: key -> (gauge name, help)
QUALITY = {
    "width": ("eicu_consult_video_width_pixels", "Width of the video received"),
    "height": ("eicu_consult_video_height_pixels", "Height of the video received"),
    "fps": ("eicu_consult_video_frames_per_second", "Frame rate of the video received"),
    "rtt_s": ("eicu_consult_round_trip_seconds", "Round-trip time between browser and cart"),
    "loss": ("eicu_consult_packet_loss_ratio", "Share of media packets lost, 0 to 1"),
    "packets_lost": ("eicu_consult_packets_lost", "Media packets lost in the call so far"),
    "frames_decoded": ("eicu_consult_frames_decoded", "Video frames decoded in the call so far"),
}
SIDES = ("browser", "cart")


class Outcome(StrEnum):
    COMPLETED = "completed"  # answered, then ended by a hangup or by the browser leaving
    UNANSWERED = "unanswered"  # ended before the cart answered (hangup or timeout)
    BUSY = "busy"  # the cart was in another call, or said it is busy
    NO_CART = "no_cart"  # no cart is registered for the bed
    FAILED = "failed"  # the cart went away, or the call could not be set up or recorded
    REFUSED = "refused"  # the caller may not call this bed


class ConsultMetrics:
    """The consult's Prometheus metrics, in the engine's registry (one set per registry)."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, ConsultMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.active = Gauge("eicu_consult_active_calls", "Video consult calls open now", registry=r)
        self.carts = Gauge(
            "eicu_consult_carts_registered", "Bedside carts registered now", registry=r
        )
        self.calls = Counter(
            "eicu_consult_calls", "Video consult calls by outcome", ["outcome"], registry=r
        )
        self.rejected = Counter(
            "eicu_consult_messages_rejected",
            "Signaling messages ignored (malformed, unknown or out of turn), by side and reason",
            ["side", "reason"],
            registry=r,
        )
        self.cart_refusals = Counter(
            "eicu_consult_cart_refusals",
            "Cart registrations refused, by reason (login, role, no_bed: the cart account names "
            "no bed, wrong_bed: it names another bed, bad_bed: not a bed id)",
            ["reason"],
            registry=r,
        )
        self.audit_failures = Counter(
            "eicu_consult_audit_failures",
            "Writes of the call audit that failed (the store was unavailable)",
            registry=r,
        )
        self.quality = {
            key: Gauge(name, f"{text}, during a call, by the side that measured it",
                       ["site", "bed", "side"], registry=r)
            for key, (name, text) in QUALITY.items()
        }  # fmt: skip
        for outcome in Outcome:
            self.calls.labels(outcome=outcome.value)
        for reason in ("login", "role", "no_bed", "wrong_bed", "bad_bed"):
            self.cart_refusals.labels(reason=reason)

    @classmethod
    def of(cls, registry: CollectorRegistry) -> ConsultMetrics:
        metrics = cls._by_registry.get(registry)
        if metrics is None:
            metrics = cls._by_registry[registry] = cls(registry)
        return metrics

    def report(self, bed: BedKey, side: str, stats: Mapping[str, Any]) -> dict[str, float]:
        """Set the quality gauges of one side from its stats; returns the values it took."""
        taken = quality_figures(stats)
        for key, value in taken.items():
            self.quality[key].labels(site=bed.site, bed=bed.bed, side=side).set(value)
        return taken

    def forget(self, bed: BedKey) -> None:
        """Drop the quality series of a bed whose call has ended."""
        for gauge in self.quality.values():
            for side in SIDES:
                with contextlib.suppress(KeyError):
                    gauge.remove(bed.site, bed.bed, side)


def quality_figures(stats: Mapping[str, Any]) -> dict[str, float]:
    """The known, finite, non-negative figures of a stats message. ``loss`` is computed from
    ``packets_lost`` and ``packets_received`` when the sender did not give it.

    The browser sends flat figures of the video it receives (``width``, ``height``, ``fps``,
    ``rtt_s``, ``packets_lost``, ``packets_received``, ``frames_decoded``, or ``loss``); the
    cart sends its call summary (docs/video.md), whose ``inbound.video`` is the video it
    receives and ``round_trip_time_s`` its round-trip time."""
    inbound = stats.get("inbound")
    if isinstance(inbound, Mapping):
        video = inbound.get("video")
        video = video if isinstance(video, Mapping) else {}
        stats = {
            "width": video.get("width"),
            "height": video.get("height"),
            "fps": video.get("fps"),
            "frames_decoded": video.get("frames"),
            "packets_lost": video.get("packets_lost"),
            "packets_received": video.get("packets_received"),
            "rtt_s": stats.get("round_trip_time_s"),
        }
    out: dict[str, float] = {}
    for key in (*QUALITY, "packets_received"):
        value = stats.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value) and value >= 0:
            out[key] = float(value)
    if "loss" not in out and "packets_lost" in out and "packets_received" in out:
        total = out["packets_lost"] + out["packets_received"]
        if total > 0:
            out["loss"] = out["packets_lost"] / total
    if "loss" in out:
        out["loss"] = min(out["loss"], 1.0)
    out.pop("packets_received", None)
    return out


def now_us() -> int:
    return time.time_ns() // 1000


class Peer:
    """One end of a signaling WebSocket; sends never raise (a gone peer just stops)."""

    def __init__(self, ws: WebSocket, user: str, side: str) -> None:
        self.ws = ws
        self.user = user
        self.side = side
        self.closed = False
        self._lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> bool:
        if self.closed:
            return False
        async with self._lock:
            try:
                await self.ws.send_text(json.dumps(message))
                return True
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.closed = True
                return False

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        async with self._lock:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self.ws.close(code, reason[:120])


@dataclass(eq=False)
class CartLink:
    bed: BedKey
    peer: Peer
    call: Call | None = None


@dataclass(eq=False)
class Call:
    call_id: str
    bed: BedKey
    caller: str
    alarm_id: str
    browser: Peer
    cart: CartLink
    started_us: int
    state: str = "ready"  # ready -> offered -> connected -> ended
    answered_us: int | None = None
    ending: tuple[Outcome, str, str] | None = None  # outcome, reason, by: once it has ended
    deadline_s: float = field(default_factory=lambda: time.monotonic() + OFFER_TIMEOUT_S)
    # The cart's side of a call another dashboard process owns (dashboards.consult_bus): that
    # process audits and counts it.
    proxy: bool = False


class ConsultHub:
    """The carts registered now and the calls open now; writes the audit."""

    def __init__(
        self, store: Store, metrics: ConsultMetrics, ice_servers: list[dict[str, Any]]
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.ice_servers = ice_servers
        self.carts: dict[BedKey, CartLink] = {}
        self.calls: dict[str, Call] = {}
        self._retries: set[asyncio.Task[None]] = set()
        # The other dashboard processes' carts and calls (set by ConsultRelay; None: this
        # process alone).
        self.relay: ConsultRelay | None = None

    def registered(self) -> set[BedKey]:
        """The beds with a cart registered now, with this process or another."""
        beds = set(self.carts)
        if self.relay is not None:
            beds |= self.relay.remote_carts()
        return beds

    # --- carts ---------------------------------------------------------------------------------

    async def register(self, bed: BedKey, peer: Peer) -> CartLink:
        link = CartLink(bed, peer)
        old = self.carts.get(bed)
        self.carts[bed] = link
        self.metrics.carts.set(len(self.carts))
        if old is not None:
            log.info("cart of %s registered again (%s); the older connection is closed", bed,
                     peer.user)  # fmt: skip
            if old.call is not None:
                await self.end(old.call, Outcome.FAILED, "the cart registered again", peer.user)
            await old.peer.close(CLOSE_REPLACED, "replaced by a newer registration of this bed")
        else:
            log.info("cart of %s registered (%s)", bed, peer.user)
        if self.relay is not None:
            self.relay.carts_changed()
        return link

    async def unregister(self, link: CartLink, reason: str) -> None:
        if link.call is not None:
            await self.end(link.call, Outcome.FAILED, reason, link.peer.user, "cart")
        if self.carts.get(link.bed) is link:
            del self.carts[link.bed]
            self.metrics.carts.set(len(self.carts))
            log.info("cart of %s left: %s", link.bed, reason)
            if self.relay is not None:
                self.relay.carts_changed()

    # --- calls ---------------------------------------------------------------------------------

    async def refuse(self, bed: BedKey, caller: str, alarm_id: str, outcome: Outcome,
                     reason: str) -> None:  # fmt: skip
        """Count and audit an attempt that never became a call."""
        self.metrics.calls.labels(outcome=outcome.value).inc()
        log.warning("consult call to %s by %s refused: %s", bed, caller, reason)
        t = now_us()
        record = CallRecord(
            call_id=new_call_id(), bed=bed, caller=caller, alarm_id=alarm_id, started_us=t,
            ended_us=t, outcome=outcome.value, end_reason=reason, ended_by="engine",
        )  # fmt: skip
        try:
            await self.store.call_started(record)
        except StorageUnavailable as exc:
            self.metrics.audit_failures.inc()
            log.error("cannot audit a refused call to %s: %s", bed, exc)

    async def open(self, bed: BedKey, browser: Peer, alarm_id: str) -> Call | str:
        """A new call to the cart of ``bed``, audited; or the reason it cannot be made."""
        link = self.carts.get(bed)
        if link is None and self.relay is not None and self.relay.cart_at(bed) is not None:
            # The cart is registered with another dashboard process: the call goes through it.
            remote = await self.relay.open(bed, browser, alarm_id)
            if isinstance(remote, tuple):
                outcome, reason = remote
                await self.refuse(bed, browser.user, alarm_id, outcome, reason)
                return reason
            call = remote
            link = call.cart
        elif link is None:
            reason = f"no cart is registered for {bed}"
            await self.refuse(bed, browser.user, alarm_id, Outcome.NO_CART, reason)
            return reason
        elif link.call is not None:
            reason = f"the cart of {bed} is in another call"
            await self.refuse(bed, browser.user, alarm_id, Outcome.BUSY, reason)
            return reason
        else:
            call = Call(new_call_id(), bed, browser.user, alarm_id, browser, link, now_us())
            link.call = call  # taken while the audit is written: a second caller finds it busy
        try:
            await self.store.call_started(
                CallRecord(call.call_id, bed, call.caller, call.started_us,
                           cart=link.peer.user, alarm_id=alarm_id)
            )  # fmt: skip
        except StorageUnavailable as exc:
            if link.call is call:
                link.call = None
            if self.relay is not None and call.call_id in self.relay.remote:
                self.relay.forget(call)  # and the cart's process lets its cart go
                await link.peer.send({"type": "hangup", "call_id": call.call_id,
                                      "reason": "the call could not be recorded"})  # fmt: skip
            self.metrics.audit_failures.inc()
            self.metrics.calls.labels(outcome=Outcome.FAILED.value).inc()
            log.error("consult call to %s not started: cannot audit it: %s", bed, exc)
            return "the call cannot be recorded now (the store is unavailable); try again"
        if call.ending is not None:  # the cart left or was replaced while the start was written
            # end() has counted it, but may have written its end before the start: again
            await self._audit_end(call, *call.ending)
            return f"no cart is registered for {bed}"
        self.calls[call.call_id] = call
        self.metrics.active.set(len(self.calls))
        log.info("consult call %s to %s by %s", call.call_id, bed, call.caller)
        return call

    async def offer(self, call: Call, sdp: str) -> None:
        call.state = "offered"
        call.deadline_s = time.monotonic() + ANSWER_TIMEOUT_S
        sent = await call.cart.peer.send(
            {"type": "offer", "call_id": call.call_id, "sdp": sdp, "caller": call.caller}
        )
        if not sent:
            await self.end(call, Outcome.FAILED, "the cart cannot be reached", "engine")

    async def answer(self, call: Call, sdp: str) -> None:
        call.state = "connected"
        call.answered_us = now_us()
        await call.browser.send({"type": "answer", "sdp": sdp})
        log.info("consult call %s answered", call.call_id)

    async def end(
        self, call: Call, outcome: Outcome | None, reason: str, by: str, side: str = "engine"
    ) -> None:
        """End a call once: tell the other side(s), audit it, count it. ``outcome`` None:
        completed when it was answered, unanswered otherwise. ``side``: who ended it
        (``browser``, ``cart`` or ``engine``); that side is not sent a hangup."""
        if call.state == "ended":
            return
        answered = call.state == "connected"
        call.state = "ended"
        if outcome is None:
            outcome = Outcome.COMPLETED if answered else Outcome.UNANSWERED
        call.ending = (outcome, reason, by)
        self.calls.pop(call.call_id, None)
        if call.cart.call is call:
            call.cart.call = None
        if self.relay is not None:
            self.relay.forget(call)
        self.metrics.active.set(len(self.calls))
        if not call.proxy:
            self.metrics.calls.labels(outcome=outcome.value).inc()
        self.metrics.forget(call.bed)
        log.info("consult call %s ended (%s): %s", call.call_id, outcome.value, reason)
        if side != "cart":
            await call.cart.peer.send({"type": "hangup", "call_id": call.call_id, "reason": reason})
        if side != "browser":
            await call.browser.send({"type": "hangup", "reason": reason, "outcome": outcome.value})
        await call.browser.close(1000, "the call has ended")
        if not call.proxy:
            await self._audit_end(call, outcome, reason, by)

    async def _audit_end(self, call: Call, outcome: Outcome, reason: str, by: str) -> None:
        ended_us = now_us()
        try:
            await self.store.call_ended(
                call.call_id, ended_us, outcome.value, reason, by, call.answered_us
            )
        except StorageUnavailable as exc:
            self.metrics.audit_failures.inc()
            log.error("cannot audit the end of call %s now (%s); retrying", call.call_id, exc)
            task = asyncio.create_task(
                self._retry_end(call, ended_us, outcome, reason, by), name=f"audit[{call.call_id}]"
            )
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _retry_end(
        self, call: Call, ended_us: int, outcome: Outcome, reason: str, by: str
    ) -> None:
        for delay_s in END_AUDIT_RETRIES_S:
            await asyncio.sleep(delay_s)
            try:
                await self.store.call_ended(
                    call.call_id, ended_us, outcome.value, reason, by, call.answered_us
                )
                return
            except StorageUnavailable:
                self.metrics.audit_failures.inc()
        log.error("the end of call %s was never audited", call.call_id)


def new_call_id() -> str:
    return secrets.token_hex(8)


def _decode(raw: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """A received WebSocket message as a JSON object with a string ``type``, or the reason it
    is not one."""
    text = raw.get("text")
    if text is None:
        return None, "binary"
    if len(text) > MESSAGE_MAX_CHARS:
        return None, "too_large"
    try:
        message = json.loads(text)
    except ValueError:
        return None, "not_json"
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return None, "no_type"
    return message, ""


def register(
    app: FastAPI,
    store: Store,
    registry: CollectorRegistry,
    sessions: Sessions,
    ice: Sequence[IceServer] = (),
) -> ConsultHub:
    """Add the consult's two WebSockets to the dashboard app; its hub is ``app.state.consult``.
    ``ice``: the STUN and TURN servers both sides are given (``EICU_ICE_SERVERS``)."""
    ice_servers = [server.as_json() for server in ice]
    hub = ConsultHub(store, ConsultMetrics.of(registry), ice_servers)
    app.state.consult = hub

    async def still_valid(session: Session) -> bool:
        return await sessions.aget(session.token) is session

    def same_origin(ws: WebSocket) -> bool:
        """No Origin (not a browser: the cart), or one naming this host."""
        origin, host = ws.headers.get("origin"), ws.headers.get("host")
        if origin is None:
            return True
        return host is not None and urlsplit(origin).netloc == host

    async def refuse(ws: WebSocket, code: int, reason: str) -> None:
        await ws.accept()
        await ws.close(code, reason)

    def rejected(peer: Peer, reason: str, kind: str = "") -> None:
        hub.metrics.rejected.labels(side=peer.side, reason=reason).inc()
        log.warning("consult: ignored a message from the %s: %s %r", peer.side, reason, kind)

    async def receive(ws: WebSocket) -> Mapping[str, Any] | None:
        """The next message; None on a tick without one. Raises WebSocketDisconnect."""
        try:
            raw = await asyncio.wait_for(ws.receive(), TICK_S)
        except TimeoutError:
            return None
        except RuntimeError as exc:  # closed from our side meanwhile (a newer cart, a hangup)
            raise WebSocketDisconnect(1000) from exc
        if raw["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(raw.get("code", 1000))
        return raw

    async def next_message(ws: WebSocket, peer: Peer) -> dict[str, Any] | None:
        """The next well-formed message from ``peer``; None on a tick without one, or when
        the message was malformed (counted and logged). Raises WebSocketDisconnect."""
        raw = await receive(ws)
        if raw is None:
            return None
        message, why = _decode(raw)
        if message is None:
            rejected(peer, why)
        return message

    def cart_refusal(user: User, key: BedKey) -> tuple[int, str, str] | None:
        """Why ``user`` may not be the cart of ``key`` now: (close code, reason, metric
        label); None when it may."""
        if not user.can(Permission.REGISTER_CART):
            return CLOSE_FORBIDDEN, f"the {user.role} role cannot register as a cart", "role"
        if user.bed is None:
            reason = f"the cart account {user.name} names no bed: an admin must set its bed"
            return CLOSE_FORBIDDEN, reason, "no_bed"
        if user.bed != key:
            reason = f"the cart account {user.name} serves {user.bed}, not {key}"
            return CLOSE_WRONG_BED, reason, "wrong_bed"
        return None

    @app.websocket("/ws/cart/{site}/{bed}")
    async def cart_ws(ws: WebSocket, site: str, bed: str) -> None:
        session = await sessions.aget(ws.cookies.get(COOKIE))
        if not same_origin(ws):
            await ws.close(CLOSE_POLICY)
            return
        if session is None:
            hub.metrics.cart_refusals.labels(reason="login").inc()
            await refuse(ws, CLOSE_LOG_IN, "log in first")
            return
        user = session.user
        try:
            key = BedKey.parse(f"{site}/{bed}")
        except ValueError:
            hub.metrics.cart_refusals.labels(reason="bad_bed").inc()
            await refuse(ws, CLOSE_NO_BED, "not a bed id")
            return
        refusal = cart_refusal(user, key)
        if refusal is not None:
            code, why, label = refusal
            hub.metrics.cart_refusals.labels(reason=label).inc()
            log.warning("cart registration for %s by %s refused: %s", key, user.name, why)
            await refuse(ws, code, why)
            return
        await ws.accept()
        peer = Peer(ws, user.name, "cart")
        link = await hub.register(key, peer)
        await peer.send(
            {"type": "registered", "site": key.site, "bed": key.bed, "ice_servers": ice_servers}
        )
        reason = "the cart disconnected"
        try:
            while not peer.closed:
                if not await still_valid(session):
                    reason = "the cart's session ended"
                    await peer.close(CLOSE_LOG_IN, "the session ended: log in again")
                    break
                refusal = cart_refusal(session.user, key)
                if refusal is not None:  # the account was changed: it no longer serves this bed
                    reason = refusal[1]
                    await peer.close(refusal[0], refusal[1])
                    break
                message = await next_message(ws, peer)
                if message is not None:
                    await on_cart_message(link, peer, message)
        except WebSocketDisconnect:
            pass
        finally:
            peer.closed = True
            await hub.unregister(link, reason)

    async def on_cart_message(link: CartLink, peer: Peer, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ping":
            await peer.send({"type": "pong"})
            return
        if kind not in ("answer", "busy", "hangup", "stats"):
            rejected(peer, "unknown_type", kind[:20])
            return
        call = link.call
        if call is None or message.get("call_id") != call.call_id:
            rejected(peer, "no_such_call", kind)
            return
        if kind == "answer":
            sdp = message.get("sdp")
            if call.state != "offered" or not isinstance(sdp, str):
                rejected(peer, "out_of_turn" if isinstance(sdp, str) else "no_sdp", kind)
                return
            await hub.answer(call, sdp)
        elif kind == "busy":
            await hub.end(call, Outcome.BUSY, "the cart is busy", peer.user, "cart")
        elif kind == "hangup":
            await hub.end(call, None, _reason(message, "the cart hung up"), peer.user, "cart")
        else:
            stats = message.get("stats")
            if not isinstance(stats, dict):
                rejected(peer, "no_stats", kind)
                return
            taken = hub.metrics.report(call.bed, "cart", stats)
            await call.browser.send({"type": "cart_stats", "stats": taken})

    @app.websocket("/ws/consult/{site}/{bed}")
    async def consult_ws(ws: WebSocket, site: str, bed: str, alarm: str = "") -> None:
        if not same_origin(ws):
            await ws.close(CLOSE_POLICY)  # before accepting: HTTP 403
            return
        session = await sessions.aget(ws.cookies.get(COOKIE))
        if session is None:
            hub.metrics.calls.labels(outcome=Outcome.REFUSED.value).inc()
            await refuse(ws, CLOSE_LOG_IN, "log in first")
            return
        user = session.user
        try:
            key = BedKey.parse(f"{site}/{bed}")
        except ValueError:
            await refuse(ws, CLOSE_NO_BED, "not a bed id")
            return
        alarm_id = alarm[:ALARM_ID_MAX_CHARS]
        if not user.can(Permission.CONSULT) or not user.can_see(site):
            reason = (
                f"the {user.role} role may not call a bed"
                if not user.can(Permission.CONSULT)
                else "this bed is not in your sites"
            )
            await hub.refuse(key, user.name, alarm_id, Outcome.REFUSED, reason)
            await refuse(ws, CLOSE_FORBIDDEN, reason)
            return
        await ws.accept()
        peer = Peer(ws, user.name, "browser")
        opened = await hub.open(key, peer, alarm_id)
        if isinstance(opened, str):
            await peer.send({"type": "error", "reason": opened})
            await peer.close(1000, "no call")
            return
        call = opened
        await peer.send({"type": "ready", "call_id": call.call_id, "ice_servers": ice_servers})
        reason, by, side = "the browser closed the connection", user.name, "browser"
        try:
            while call.state != "ended":
                if not await still_valid(session):
                    reason, by, side = "the caller's session ended", "engine", "engine"
                    break
                now = session.user
                if not (now.can(Permission.CONSULT) and now.can_see(key.site)):
                    reason, by, side = "the caller may no longer call this bed", "engine", "engine"
                    break
                if call.state in ("ready", "offered") and time.monotonic() > call.deadline_s:
                    side, by = "engine", "engine"
                    reason = (
                        "the browser sent no offer"
                        if call.state == "ready"
                        else "the cart did not answer"
                    )
                    break
                message = await next_message(ws, peer)
                if message is not None:
                    await on_browser_message(call, peer, message)
        except WebSocketDisconnect:
            pass
        finally:
            await hub.end(call, None, reason, by, side)

    async def on_browser_message(call: Call, peer: Peer, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ping":
            await peer.send({"type": "pong"})
        elif kind == "offer":
            sdp = message.get("sdp")
            if call.state != "ready" or not isinstance(sdp, str):
                rejected(peer, "out_of_turn" if isinstance(sdp, str) else "no_sdp", kind)
                return
            await hub.offer(call, sdp)
        elif kind == "hangup":
            await hub.end(call, None, _reason(message, "the caller hung up"), peer.user, "browser")
        elif kind == "stats":
            stats = message.get("stats")
            if not isinstance(stats, dict):
                rejected(peer, "no_stats", kind)
                return
            if call.state != "ended":
                hub.metrics.report(call.bed, "browser", stats)
        else:
            rejected(peer, "unknown_type", kind[:20])

    return hub


def _reason(message: Mapping[str, Any], default: str) -> str:
    reason = message.get("reason")
    return reason[:200] if isinstance(reason, str) and reason else default
