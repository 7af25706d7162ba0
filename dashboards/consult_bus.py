"""Consult signaling across dashboard processes: with several ``eicu dashboard`` processes behind
a load balancer, a cart registered with one process can be called from a browser on another.

- Each process announces the carts registered with it, retained, on
  ``eicu/consult/carts/<dashboard>`` (at once on a change and every :data:`ANNOUNCE_S`), and
  reads every other process's announcement. An announcement older than :data:`STALE_S` is a
  process gone: its carts are no longer offered, and the calls through it end.
- A call to a bed whose cart is on another process is owned by the browser's process (the audit,
  the deadlines and the metrics, as for a local cart); it asks the cart's process to open it
  (``open``, answered ``opened`` or ``refused``) and then relays the browser's messages to it
  on ``eicu/consult/to/<dashboard>`` (QoS 1). The cart's process keeps a proxy of the call on
  the cart's link (so the cart is busy for everyone) and relays the cart's messages back.

The media never pass through any dashboard, so only the offer, the answer, hangups and the
call-quality figures cross the bus. Messages that cannot be read are counted by the
dashboard's bus reader (``dashboards.bus``) and cost nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from dashboards.consult import Call, CartLink, ConsultHub, Outcome, Peer, new_call_id
from eicu.errors import PayloadError
from eicu.models import BedKey

log = logging.getLogger(__name__)

ROOT: Final = "eicu/consult"
CARTS: Final = f"{ROOT}/carts/"
TO: Final = f"{ROOT}/to/"
ANNOUNCE_S: Final = 2.0
STALE_S: Final = 7.0  # an announcement this old: that process is gone
OPEN_WAIT_S: Final = 5.0  # how long an open waits for the cart's process
MAX_MESSAGE: Final = 256 * 1024

Publish = Callable[[str, bytes, bool], Awaitable[bool]]


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class _Announced:
    carts: dict[BedKey, str]  # bed -> the cart's user
    at_us: int


class RemotePeer(Peer):
    """The other side of a call, on another dashboard process: what is sent to it is relayed
    there over the bus. Closing it closes nothing (the call's end is relayed as a hangup)."""

    def __init__(self, relay: ConsultRelay, dashboard: str, user: str, side: str, call_id: str):
        self.relay = relay
        self.dashboard = dashboard
        self.user = user
        self.side = side
        self.call_id = call_id
        self.closed = False

    async def send(self, message: dict[str, Any]) -> bool:
        return await self.relay.send(
            self.dashboard, {"op": "relay", "call_id": self.call_id, "msg": message}
        )

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True


class ConsultRelay:
    """The consult hub's link to the other dashboard processes (module docstring).
    ``publish(topic, payload, retain)``: this process's bus connection
    (``dashboards.bus.BusBeds.publish``); :meth:`handle` takes what it reads under
    ``eicu/consult/``."""

    topic_filter: Final = f"{ROOT}/#"
    prefix: Final = f"{ROOT}/"

    def __init__(self, hub: ConsultHub, dashboard: str, publish: Publish) -> None:
        self.hub = hub
        self.dashboard = dashboard
        self._publish = publish
        self._others: dict[str, _Announced] = {}
        self._opening: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.proxies: dict[str, tuple[Call, str]] = {}  # call id -> (proxy, the owner's process)
        self.remote: dict[str, tuple[Call, str]] = {}  # call id -> (call, the cart's process)
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._changed = asyncio.Event()
        hub.relay = self

    # --- the registry --------------------------------------------------------------------------

    def _fresh(self, now_us: int) -> dict[str, _Announced]:
        limit = now_us - int(STALE_S * 1e6)
        return {d: a for d, a in self._others.items() if a.at_us >= limit}

    def cart_at(self, bed: BedKey) -> tuple[str, str] | None:
        """(process, cart user) of the bed's cart registered with another process, if any."""
        for dashboard, announced in self._fresh(_now_us()).items():
            user = announced.carts.get(bed)
            if user is not None:
                return dashboard, user
        return None

    def remote_carts(self) -> set[BedKey]:
        return {bed for a in self._fresh(_now_us()).values() for bed in a.carts}

    def carts_changed(self) -> None:
        self._changed.set()

    async def _announce(self, *, gone: bool = False) -> None:
        topic = f"{CARTS}{self.dashboard}"
        if gone:
            await self._publish(topic, b"", True)  # the retained announcement removed
            return
        carts = [{"bed": str(b), "user": link.peer.user} for b, link in self.hub.carts.items()]
        doc = {"v": 1, "dashboard": self.dashboard, "at_us": _now_us(), "carts": carts}
        await self._publish(topic, json.dumps(doc).encode(), True)

    # --- the bus ---------------------------------------------------------------------------------

    async def send(self, dashboard: str, message: dict[str, Any]) -> bool:
        doc = {"v": 1, "from": self.dashboard, **message}
        return await self._publish(f"{TO}{dashboard}", json.dumps(doc).encode(), False)

    async def handle(self, topic: str, payload: bytes) -> None:
        """A message under ``eicu/consult/``: checked here, acted upon in :meth:`run`'s order."""
        if len(payload) > MAX_MESSAGE:
            raise PayloadError("oversized", f"{len(payload)} bytes on {topic[:80]}")
        if topic.startswith(CARTS):
            self._announcement(topic[len(CARTS) :], payload)
        elif topic == f"{TO}{self.dashboard}":
            self._inbox.put_nowait((topic, payload))
        else:
            raise PayloadError("wrong_topic", f"not a consult topic of ours: {topic[:120]}")

    def _announcement(self, dashboard: str, payload: bytes) -> None:
        if dashboard == self.dashboard:
            return
        if not payload:
            self._others.pop(dashboard, None)
            return
        doc = _object(payload)
        at_us, raw = doc.get("at_us"), doc.get("carts")
        if not isinstance(at_us, int) or not isinstance(raw, list):
            raise PayloadError("malformed", "an announcement has 'at_us' and a list of 'carts'")
        carts = {}
        for entry in raw:
            if not isinstance(entry, dict) or not isinstance(entry.get("user"), str):
                raise PayloadError("malformed", "a cart has a 'bed' and a 'user'")
            try:
                carts[BedKey.parse(str(entry.get("bed")))] = entry["user"]
            except ValueError as exc:
                raise PayloadError("malformed", f"a cart's bed: {exc}") from exc
        self._others[dashboard] = _Announced(carts, at_us)

    async def run(self) -> None:
        """Announce this process's carts, act on the messages of the others, and end the calls
        whose other process is gone, until cancelled (then the announcement is removed)."""
        worker = asyncio.create_task(self._work(), name="consult-relay")
        try:
            while True:
                self._changed.clear()
                await self._announce()
                await self._end_orphans()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), ANNOUNCE_S)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._announce(gone=True), 2.0)

    async def _work(self) -> None:
        while True:
            _, payload = await self._inbox.get()
            try:
                await self._act(_object(payload))
            except PayloadError as exc:
                self.hub.metrics.rejected.labels(side="bus", reason=exc.reason).inc()
                log.warning("consult relay: a message not read: %s", exc.detail)
            except Exception:
                self.hub.metrics.rejected.labels(side="bus", reason="internal_error").inc()
                log.exception("consult relay: a message not handled")

    async def _end_orphans(self) -> None:
        alive = set(self._fresh(_now_us()))
        for call_id, (proxy, owner) in list(self.proxies.items()):
            if owner not in alive:
                self.proxies.pop(call_id, None)
                reason = "the caller's dashboard is gone"
                await self.hub.end(proxy, Outcome.FAILED, reason, "engine", "browser")
        for call_id, (call, cart_process) in list(self.remote.items()):
            if cart_process not in alive:
                self.remote.pop(call_id, None)
                reason = "the cart's dashboard is gone"
                await self.hub.end(call, Outcome.FAILED, reason, "engine", "cart")

    # --- calls -----------------------------------------------------------------------------------

    async def open(self, bed: BedKey, browser: Peer, alarm_id: str) -> Call | tuple[Outcome, str]:
        """Ask the process holding ``bed``'s cart to open a call for ``browser``; the call (not
        yet audited) or why not."""
        where = self.cart_at(bed)
        if where is None:
            return Outcome.NO_CART, f"no cart is registered for {bed}"
        dashboard, _ = where
        call_id = new_call_id()
        waiting: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._opening[call_id] = waiting
        try:
            message = {
                "op": "open", "call_id": call_id, "bed": str(bed), "caller": browser.user,
                "alarm_id": alarm_id,
            }  # fmt: skip
            if not await self.send(dashboard, message):
                return Outcome.FAILED, "the bus cannot be reached; try again"
            try:
                reply = await asyncio.wait_for(waiting, OPEN_WAIT_S)
            except TimeoutError:
                return Outcome.FAILED, f"the dashboard holding the cart of {bed} did not answer"
        finally:
            self._opening.pop(call_id, None)
        if reply.get("op") != "opened":
            try:
                outcome = Outcome(str(reply.get("outcome")))
            except ValueError:
                outcome = Outcome.FAILED
            return outcome, str(reply.get("reason") or "refused")[:200]
        cart_user = str(reply.get("cart") or "")
        link = CartLink(bed, RemotePeer(self, dashboard, cart_user, "cart", call_id))
        call = Call(call_id, bed, browser.user, alarm_id, browser, link, _now_us())
        link.call = call
        self.remote[call_id] = (call, dashboard)
        return call

    def forget(self, call: Call) -> None:
        self.remote.pop(call.call_id, None)
        self.proxies.pop(call.call_id, None)

    async def _act(self, doc: dict[str, Any]) -> None:
        op, sender, call_id = doc.get("op"), doc.get("from"), doc.get("call_id")
        if not isinstance(sender, str) or not isinstance(call_id, str) or not call_id:
            raise PayloadError("malformed", "a consult message has 'from' and 'call_id'")
        if op == "open":
            await self._open_here(sender, call_id, doc)
        elif op in ("opened", "refused"):
            waiting = self._opening.get(call_id)
            if waiting is not None and not waiting.done():
                waiting.set_result(doc)
            elif op == "opened":  # the caller gave up waiting: let the cart go
                hangup = {"type": "hangup", "reason": "the caller stopped waiting"}
                await self.send(sender, {"op": "relay", "call_id": call_id, "msg": hangup})
        elif op == "relay":
            message = doc.get("msg")
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise PayloadError("malformed", "a relayed message is an object with a 'type'")
            await self._relayed(call_id, message)
        else:
            raise PayloadError("malformed", f"unknown consult operation {str(op)[:20]!r}")

    async def _open_here(self, owner: str, call_id: str, doc: dict[str, Any]) -> None:
        try:
            bed = BedKey.parse(str(doc.get("bed")))
        except ValueError as exc:
            raise PayloadError("malformed", f"an open's bed: {exc}") from exc
        caller = str(doc.get("caller") or "?")[:64]
        link = self.hub.carts.get(bed)
        if link is None:
            reply = {"op": "refused", "call_id": call_id, "outcome": Outcome.NO_CART.value,
                     "reason": f"no cart is registered for {bed}"}  # fmt: skip
        elif link.call is not None:
            reply = {"op": "refused", "call_id": call_id, "outcome": Outcome.BUSY.value,
                     "reason": f"the cart of {bed} is in another call"}  # fmt: skip
        else:
            browser = RemotePeer(self, owner, caller, "browser", call_id)
            alarm_id = str(doc.get("alarm_id") or "")[:200]
            proxy = Call(call_id, bed, caller, alarm_id, browser, link, _now_us(), proxy=True)
            link.call = proxy
            self.proxies[call_id] = (proxy, owner)
            reply = {"op": "opened", "call_id": call_id, "cart": link.peer.user}
            log.info("consult call %s to %s by %s relayed from %s", call_id, bed, caller, owner)
        await self.send(owner, reply)

    async def _relayed(self, call_id: str, message: dict[str, Any]) -> None:
        kind = message["type"]
        held = self.proxies.get(call_id)
        if held is not None:  # from the caller's process to the cart here
            proxy = held[0]
            if kind == "offer" and isinstance(message.get("sdp"), str):
                if proxy.state == "ready":
                    await self.hub.offer(proxy, message["sdp"])
            elif kind == "hangup":
                self.proxies.pop(call_id, None)
                reason = str(message.get("reason") or "the caller hung up")[:200]
                await self.hub.end(proxy, None, reason, proxy.caller, "browser")
            else:
                raise PayloadError("malformed", f"not a caller's message: {kind[:20]!r}")
            return
        owned = self.remote.get(call_id)
        if owned is None:
            return  # a call that has ended here already
        call = owned[0]
        if kind == "answer" and isinstance(message.get("sdp"), str):
            if call.state == "offered":
                await self.hub.answer(call, message["sdp"])
        elif kind == "hangup":
            self.remote.pop(call_id, None)
            try:
                outcome: Outcome | None = Outcome(str(message.get("outcome")))
            except ValueError:
                outcome = None
            reason = str(message.get("reason") or "the cart hung up")[:200]
            await self.hub.end(call, outcome, reason, call.cart.peer.user, "cart")
        elif kind == "cart_stats":
            await call.browser.send(message)
        else:
            raise PayloadError("malformed", f"not a cart's message: {kind[:20]!r}")


def _object(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError("malformed", f"not JSON: {exc}"[:120]) from None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise PayloadError("malformed", "expected a JSON object of version 1")
    return doc
