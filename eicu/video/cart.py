"""The bedside cart agent: registers with the engine over a WebSocket and answers video calls.

One connection to the engine at a time, kept up with backoff (re-logging in when the session
has expired); one call at a time. The protocol is described in docs/video.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiortc import RTCDataChannel, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from eicu.backoff import Backoff
from eicu.config import IceServer, Secret, VideoSettings, parse_ice_servers
from eicu.errors import ConfigError, EicuError
from eicu.video.media import (
    BoundedTrack,
    FrameMeter,
    LocalMedia,
    MeteredTrack,
    consume,
    open_local_media,
)
from eicu.video.peer import PeerConnection, create_peer
from eicu.video.stats import CartMetrics, Summary, summarize

log = logging.getLogger(__name__)

# Frames of each received track a recording may fall behind by (2 s of 15 fps video, 0.6 s of
# audio) before the oldest are left out.
RECORD_BUFFER_FRAMES = 30
# How long ending a call waits for the recorder and the peer connection to close.
CLOSE_TIMEOUT_S = 5.0

T = TypeVar("T")

SESSION_COOKIE = "eicu_session"
CLOSE_NOT_LOGGED_IN = 4401
CLOSE_NOT_ALLOWED = 4403
CLOSE_WRONG_BED = 4421  # this cart account is bound to another bed
DATA_CHANNEL_LABEL = "eicu"


class LoginRefused(EicuError):
    """The engine refused the cart's name and password."""


class _Stopped(Exception):
    """The cart was asked to stop while it was logging in or connecting."""


def cart_ws_url(server: str, site: str, bed: str) -> str:
    """``http(s)://host[:port][/prefix]`` -> ``ws(s)://host[:port][/prefix]/ws/cart/S/B``."""
    parts = urllib.parse.urlsplit(server)
    scheme = {"http": "ws", "https": "wss"}[parts.scheme]
    path = parts.path.rstrip("/") + "/ws/cart/{}/{}".format(
        urllib.parse.quote(site, safe=""), urllib.parse.quote(bed, safe="")
    )
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def check_server_url(server: str, key: str) -> str:
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(key, f"expected http://host:port or https://..., got {server!r}")
    if not parts.hostname:
        raise ConfigError(key, "no host in the URL")
    return server.rstrip("/")


def recording_path(template: Path, call_id: Any) -> Path:
    """Where a call is recorded: ``template`` with ``{call_id}`` and ``{time}`` (UTC,
    ``YYYYmmddTHHMMSSZ``) filled in; ``-2``, ``-3``, ... before the suffix rather than
    overwrite an earlier recording."""
    safe_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(call_id))[:64]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = Path(str(template).replace("{call_id}", safe_id).replace("{time}", stamp))
    n = 1
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


class Call:
    """One video call: a peer connection, the cart's media, and what arrives from the far end."""

    def __init__(self, agent: CartAgent, call_id: Any, caller: str) -> None:
        self.agent = agent
        self.call_id = call_id
        self.caller = caller
        self.pc: PeerConnection = create_peer(agent.settings, agent.server_ice_servers)
        self.media: LocalMedia | None = None
        self.received: dict[str, FrameMeter] = {}
        self.last_summary: Summary | None = None
        self.ended = asyncio.Event()
        self.data_messages = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._recorder: Any = None
        self._bounded: list[BoundedTrack] = []
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- peer connection events -----------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        meter = self.received.setdefault(track.kind, FrameMeter())
        log.info("call %s: receiving %s", self.call_id, track.kind)
        if self.agent.record is not None:
            if self._recorder is None:
                from aiortc.contrib.media import MediaRecorder

                path = recording_path(self.agent.record, self.call_id)
                log.info("call %s: recording what arrives to %s", self.call_id, path)
                self._recorder = MediaRecorder(str(path))
            # a recorder that falls behind drops the oldest frames rather than fill memory
            bounded = BoundedTrack(track, RECORD_BUFFER_FRAMES)
            self._bounded.append(bounded)
            metered = MeteredTrack(bounded, f"received {track.kind}")
            metered.meter = meter
            self._recorder.addTrack(metered)
        else:
            self._spawn(consume(track, meter))

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != DATA_CHANNEL_LABEL:
            log.info("call %s: ignoring data channel %r", self.call_id, channel.label)
            return
        hello = json.dumps({"type": "hello", "site": self.agent.site, "bed": self.agent.bed})

        def send(text: str) -> None:
            try:
                channel.send(text)
            except Exception as exc:  # the channel closed under us
                log.debug("call %s: data channel send failed: %s", self.call_id, exc)

        def on_open() -> None:
            send(hello)

        def on_message(message: str | bytes) -> None:
            self.data_messages += 1
            try:
                decoded = json.loads(message)
            except (ValueError, TypeError):
                log.debug("call %s: data channel message not JSON", self.call_id)
                return
            if isinstance(decoded, dict) and decoded.get("type") == "ping":
                send(json.dumps({"type": "pong"}))

        channel.on("message", on_message)
        if channel.readyState == "open":
            on_open()
        else:
            channel.on("open", on_open)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("call %s: connection %s", self.call_id, state)
        if state in ("failed", "closed") and not self.ended.is_set():
            self._spawn(self.agent.end_call(self, f"connection {state}", notify=True))

    # --- lifecycle ------------------------------------------------------------------------

    async def answer(self, offer_sdp: str) -> str:
        """Set the offer, add the cart's media, and return the complete answer SDP."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        label = f"{self.agent.site} / {self.agent.bed}"
        self.media = open_local_media(self.agent.settings, label)
        log.info(
            "call %s: sending %s and %s",
            self.call_id,
            self.media.video.description,
            self.media.audio.description,
        )
        self.pc.addTrack(self.media.video)
        self.pc.addTrack(self.media.audio)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)  # returns when ICE gathering is complete
        if self._recorder is not None:
            await self._recorder.start()
        return self.pc.localDescription.sdp

    def start_reporting(self) -> None:
        self._spawn(self._report())
        self._spawn(self._watchdog())

    async def _report(self) -> None:
        while not self.ended.is_set():
            await asyncio.sleep(self.agent.settings.stats_interval_s)
            if self.ended.is_set():
                return
            summary = await self.summary()
            self.agent.metrics.export(self.agent.site, self.agent.bed, summary)
            await self.agent.send({"type": "stats", "call_id": self.call_id, "stats": summary})

    async def _watchdog(self) -> None:
        # ICE checks end in "failed" by themselves; this bounds the wait whatever happens.
        await asyncio.sleep(self.agent.connect_timeout_s)
        if self.pc.connectionState != "connected" and not self.ended.is_set():
            await self.agent.end_call(self, "not connected in time", notify=True)

    async def summary(self) -> Summary:
        sent = {}
        if self.media is not None:
            sent = {"video": self.media.video.meter, "audio": self.media.audio.meter}
        self.last_summary = await summarize(self.pc, sent, self.received)
        return self.last_summary

    async def close(self) -> None:
        self.ended.set()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._recorder is not None:
            try:
                await asyncio.wait_for(self._recorder.stop(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("call %s: the recording did not close in %.0f s; its file may be cut "
                            "short", self.call_id, CLOSE_TIMEOUT_S)  # fmt: skip
            except Exception:
                log.exception("call %s: the recording did not close cleanly", self.call_id)
        for bounded in self._bounded:
            bounded.stop()
            if bounded.dropped:
                log.warning(
                    "call %s: the recording fell behind: %d %s frames left out",
                    self.call_id, bounded.dropped, bounded.kind,
                )  # fmt: skip
        # aiortc's close can wait forever on a transport that never answers (aiortc issue
        # 283): the call ends all the same, so the cart is free for the next one.
        try:
            await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("call %s: the peer connection did not close in %.0f s", self.call_id,
                        CLOSE_TIMEOUT_S)  # fmt: skip
        if self.media is not None:
            self.media.stop()


class CartAgent:
    """Keeps a bed's cart registered with the engine and answers the calls it relays."""

    def __init__(
        self,
        site: str,
        bed: str,
        *,
        server: str,
        user: str,
        password: Secret,
        settings: VideoSettings,
        record: Path | None = None,
        metrics: CartMetrics | None = None,
        keepalive_s: float = 20.0,
        connect_timeout_s: float = 30.0,
    ) -> None:
        self.site, self.bed = site, bed
        self.server = check_server_url(server, "--server")
        self.ws_url = cart_ws_url(self.server, site, bed)
        self.user = user
        self.password = password
        self.settings = settings
        self.record = record
        self.metrics = metrics or CartMetrics()
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.server_ice_servers: tuple[IceServer, ...] = ()
        self.call: Call | None = None
        self.registered = asyncio.Event()
        self.calls_answered = 0
        self.attempts = 0
        self.last_refusal: tuple[int | None, str] | None = None
        self._cookie: str | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- connection to the engine ---------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Stay registered until ``stop`` is set, reconnecting with backoff."""
        stop = stop or asyncio.Event()
        # Delays shortened by up to a fifth at random: carts restarted together spread out.
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s, jitter=0.2)
        timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_connect=15, sock_read=None)
        async with aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout
        ) as http:
            while not stop.is_set():
                self.attempts += 1
                try:
                    registered = await self._connect_once(http, stop)
                except _Stopped:
                    break
                except LoginRefused as exc:
                    registered = False
                    self._count("login_refused")
                    log.warning("login as %r refused: %s", self.user, exc)
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    registered = False
                    self._count("unreachable")
                    log.warning("engine at %s unreachable: %s", self.server, exc or type(exc))
                except Exception:  # a fault here must not take the cart off the network
                    registered = False
                    self._count("error")
                    log.exception("connection to the engine failed")
                if registered:
                    backoff.reset()
                if stop.is_set():
                    break
                delay = backoff.next_s()
                log.info("reconnecting in %.2f s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if self.call is not None:
                await self.end_call(self.call, "cart stopping", notify=True)
            pending = list(self._tasks)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @staticmethod
    async def _unless_stopped(aw: Awaitable[T], stop: asyncio.Event) -> T:
        """``aw``'s result, or _Stopped as soon as ``stop`` is set."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, stopper, return_exceptions=True)
        if task.cancelled():
            raise _Stopped
        return task.result()

    def _count(self, outcome: str) -> None:
        self.metrics.connects.labels(self.site, self.bed, outcome).inc()

    async def _login(self, http: aiohttp.ClientSession) -> str:
        body = {"name": self.user, "password": str(self.password)}
        async with http.post(
            f"{self.server}/api/login", json=body, timeout=aiohttp.ClientTimeout(total=15)
        ) as resp:
            if resp.status in (400, 401, 403, 429):
                raise LoginRefused(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            resp.raise_for_status()
            morsel = resp.cookies.get(SESSION_COOKIE)
            if morsel is None or not morsel.value:
                raise LoginRefused(f"no {SESSION_COOKIE} cookie in the reply")
            log.info("logged in to %s as %r", self.server, self.user)
            return morsel.value

    async def _connect_once(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> bool:
        """One connection: log in if needed, register, serve until the link ends. Returns
        whether the engine registered the cart."""
        if self._cookie is None:
            self._cookie = await self._unless_stopped(self._login(http), stop)
        try:
            ws = await self._unless_stopped(
                http.ws_connect(
                    self.ws_url,
                    headers={"Cookie": f"{SESSION_COOKIE}={self._cookie}"},
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                    autoping=True,
                    # WebSocket pings: a link that stops answering is closed and reconnected.
                    heartbeat=self.keepalive_s,
                ),
                stop,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                self._cookie = None
            self._count(f"http_{exc.status}")
            self.last_refusal = (exc.status, exc.message)
            log.warning("engine refused the connection: HTTP %s %s", exc.status, exc.message)
            return False
        self._ws = ws
        registered = False
        keepalive = asyncio.ensure_future(self._keepalive(ws))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                receive = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait(
                    {receive, stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                if stopper in done:
                    receive.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await receive
                    if self.call is not None:
                        await self.end_call(self.call, "cart stopping", notify=True)
                    return registered
                msg = receive.result()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    if await self._on_message(msg.data):
                        registered = True
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
                    self._on_close(ws.close_code or msg.data, msg.extra)
                    return registered
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    self._on_close(ws.close_code, str(ws.exception() or "connection lost"))
                    return registered
                else:
                    self._unknown(f"a {msg.type.name} frame")
        finally:
            keepalive.cancel()
            stopper.cancel()
            await asyncio.gather(keepalive, stopper, return_exceptions=True)
            self._ws = None
            self.registered.clear()
            self.metrics.registered.labels(self.site, self.bed).set(0)
            if self.call is not None:
                await self.end_call(self.call, "link to the engine lost", notify=False)
            with contextlib.suppress(Exception):
                await ws.close()

    def _on_close(self, code: int | None, reason: str | None) -> None:
        reason = reason or ""
        if code == CLOSE_NOT_LOGGED_IN:
            self._cookie = None  # the session expired or was revoked: log in again
            self.last_refusal = (code, reason)
            self._count("not_logged_in")
            log.warning("engine: not logged in (%s); logging in again", reason or "no reason")
        elif code == CLOSE_WRONG_BED:
            self.last_refusal = (code, reason)
            self._count("wrong_bed")
            log.error(
                "engine: %r is bound to another bed than %s/%s (%s): fix --bed or have an admin "
                "run 'eicu users set %s --bed %s/%s'",
                self.user,
                self.site,
                self.bed,
                reason or "no reason",
                self.user,
                self.site,
                self.bed,
            )
        elif code == CLOSE_NOT_ALLOWED:
            self.last_refusal = (code, reason)
            self._count("not_allowed")
            log.warning(
                "engine: %r may not serve %s/%s (%s)",
                self.user,
                self.site,
                self.bed,
                reason or "no reason",
            )
        else:
            self._count("closed")
            log.warning("engine closed the connection (code %s) %s", code, reason)

    async def _keepalive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(self.keepalive_s)
            await self.send({"type": "ping"})

    async def send(self, message: dict[str, Any]) -> bool:
        """Send one message to the engine; False when there is no connection."""
        ws = self._ws
        if ws is None or ws.closed:
            return False
        async with self._send_lock:
            try:
                await ws.send_str(json.dumps(message))
            except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
                log.warning("cannot send %s: %s", message.get("type"), exc)
                return False
        return True

    def _unknown(self, what: str) -> None:
        self.metrics.messages.labels(self.site, self.bed, "unknown").inc()
        log.warning("ignoring %s from the engine", what)

    # --- protocol -------------------------------------------------------------------------

    async def _on_message(self, text: str) -> bool:
        """Handle one message; True when it was ``registered``."""
        try:
            msg = json.loads(text)
        except ValueError:
            self._unknown("a message that is not JSON")
            return False
        kind = msg.get("type") if isinstance(msg, dict) else None
        if not isinstance(kind, str):
            self._unknown("a message without a type")
            return False
        known = kind in ("registered", "offer", "hangup", "ping", "pong")
        self.metrics.messages.labels(self.site, self.bed, kind if known else "unknown").inc()
        if kind == "registered":
            try:
                self.server_ice_servers = parse_ice_servers(
                    msg.get("ice_servers") or [], "registered.ice_servers", strict=False
                )
            except ConfigError as exc:
                log.warning("engine sent unusable ICE servers (%s); using none", exc)
                self.server_ice_servers = ()
            self.registered.set()
            self.metrics.registered.labels(self.site, self.bed).set(1)
            log.info("registered with %s as %s/%s", self.server, self.site, self.bed)
            return True
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "pong":
            pass
        elif kind == "offer":
            await self._on_offer(msg)
        elif kind == "hangup":
            call = self.call
            if call is not None and call.call_id == msg.get("call_id"):
                await self.end_call(call, "hung up by the command center", notify=False)
            else:
                log.info("hangup for call %r, which is not the current call", msg.get("call_id"))
        else:
            log.warning("ignoring a message of unknown type %r", kind)
        return False

    async def _on_offer(self, msg: dict[str, Any]) -> None:
        call_id, sdp = msg.get("call_id"), msg.get("sdp")
        if call_id is None or not isinstance(sdp, str):
            self._unknown("an offer without call_id or sdp")
            return
        if self.call is not None:
            self.metrics.calls.labels(self.site, self.bed, "busy").inc()
            log.info("call %r while in call %r: busy", call_id, self.call.call_id)
            await self.send({"type": "busy", "call_id": call_id})
            return
        caller = str(msg.get("caller") or "?")
        log.info("call %r from %s", call_id, caller)
        call = Call(self, call_id, caller)
        self.call = call
        self.metrics.in_call.labels(self.site, self.bed).set(1)
        task = asyncio.ensure_future(self._answer(call, sdp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, call: Call, sdp: str) -> None:
        try:
            answer = await call.answer(sdp)
        except Exception as exc:  # a bad offer or a media failure ends this call only
            if call.ended.is_set():  # hung up while answering
                return
            log.warning("call %r: cannot answer: %s", call.call_id, exc)
            self.metrics.calls.labels(self.site, self.bed, "failed").inc()
            await self.end_call(call, "cannot answer", notify=True)
            return
        if call.ended.is_set():
            return
        self.calls_answered += 1
        self.metrics.calls.labels(self.site, self.bed, "answered").inc()
        await self.send({"type": "answer", "call_id": call.call_id, "sdp": answer})
        call.start_reporting()

    async def end_call(self, call: Call, reason: str, *, notify: bool) -> None:
        """End ``call`` (once); ``notify``: tell the engine with a hangup."""
        if call.ended.is_set():
            return
        call.ended.set()
        if self.call is call:
            self.call = None
        log.info("call %r ended: %s", call.call_id, reason)
        if notify:
            await self.send({"type": "hangup", "call_id": call.call_id})
        await call.close()
        self.metrics.in_call.labels(self.site, self.bed).set(0)
        self.metrics.clear_call(self.site, self.bed)
