"""The cart agent end to end: a real signaling server, the cart, and an aiortc caller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from eicu.config import Secret, VideoSettings
from eicu.video import cart as cart_module
from eicu.video.cart import CartAgent, cart_ws_url
from eicu.video.media import FrameMeter, consume, open_local_media
from eicu.video.peer import create_peer
from tests.video_engine import SignalingServer, free_port

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = VideoSettings(
    allow_loopback=True,
    camera="none",
    microphone="none",
    stats_interval_s=0.5,
    reconnect_min_s=0.05,
    reconnect_max_s=0.5,
)
USER = "cart-icu-a-3"


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


def make_agent(server: SignalingServer, bed: str = "3") -> CartAgent:
    return CartAgent(
        "icu-a", bed, server=server.url, user=USER, password=Secret("pw"), settings=SETTINGS
    )


async def running(agent: CartAgent) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.ensure_future(agent.run(stop))


async def stopped(stop: asyncio.Event, task: Awaitable[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 10)


class Caller:
    """The command center's side of a call: an aiortc peer sending its own test pattern."""

    def __init__(self) -> None:
        self.pc = create_peer(SETTINGS)
        self.media = open_local_media(SETTINGS, "COMMAND CENTER")
        self.received: dict[str, FrameMeter] = {}
        self.messages: list[dict[str, Any]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)
        self.channel = self.pc.createDataChannel("eicu")
        self.channel.on("message", lambda m: self.messages.append(json.loads(m)))

    def _on_track(self, track: Any) -> None:
        meter = self.received.setdefault(track.kind, FrameMeter())
        self.tasks.append(asyncio.ensure_future(consume(track, meter)))

    async def offer(self) -> str:
        self.pc.addTrack(self.media.video)
        self.pc.addTrack(self.media.audio)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def close(self) -> None:
        # aiortc's close can wait forever on a transport that never answers (issue 283); the
        # caller is test scaffolding, and the cart's side is what these tests check.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pc.close(), 10)
        self.media.stop()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def test_ws_url() -> None:
    assert cart_ws_url("https://eicu.example/icu/", "a b", "3") == (
        "wss://eicu.example/icu/ws/cart/a%20b/3"
    )
    assert cart_ws_url("http://127.0.0.1:8080", "s", "b") == "ws://127.0.0.1:8080/ws/cart/s/b"


@pytest.mark.slow
async def test_call_hangup_busy_and_reconnect() -> None:
    server = SignalingServer({USER: "pw"}, {USER: {("icu-a", "3")}})
    await server.start()
    agent = make_agent(server)
    stop, task = await running(agent)
    caller = Caller()
    try:
        await asyncio.wait_for(agent.registered.wait(), 10)
        assert server.origins == [None]  # the cart sends no Origin header
        await server.send(
            "icu-a",
            "3",
            {"type": "offer", "call_id": "c1", "sdp": await caller.offer(), "caller": "dr"},
        )
        answer = await server.expect("answer")
        assert answer["call_id"] == "c1"
        assert "a=candidate:" in answer["sdp"]  # complete, not trickled
        from aiortc import RTCSessionDescription

        await caller.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        await wait_for(
            lambda: all(
                caller.received.get(k, FrameMeter()).frames >= 10 for k in ("video", "audio")
            )
        )
        assert (caller.received["video"].width, caller.received["video"].height) == (640, 480)
        call = agent.call
        assert call is not None
        await wait_for(lambda: call.received.get("video", FrameMeter()).frames >= 10)
        # The data channel: hello on open, pong for ping.
        await wait_for(lambda: bool(caller.messages))
        assert caller.messages[0] == {"type": "hello", "site": "icu-a", "bed": "3"}
        caller.channel.send(json.dumps({"type": "ping"}))
        await wait_for(lambda: {"type": "pong"} in caller.messages)
        # One call at a time.
        await server.send(
            "icu-a", "3", {"type": "offer", "call_id": "c2", "sdp": "v=0", "caller": "x"}
        )
        assert (await server.expect("busy"))["call_id"] == "c2"
        # Call quality every stats interval.
        stats = await server.expect("stats")
        assert stats["call_id"] == "c1"
        assert stats["stats"]["outbound"]["video"]["frames"] > 0
        # Unknown messages are counted, not fatal.
        await server.send("icu-a", "3", {"type": "whatever"})
        await server.send("icu-a", "3", {"type": "ping"})
        await server.expect("pong")
        unknown = agent.metrics.registry.get_sample_value(
            "eicu_cart_messages_total", {"site": "icu-a", "bed": "3", "type": "unknown"}
        )
        assert unknown == 1
        # The command center hangs up.
        await server.send("icu-a", "3", {"type": "hangup", "call_id": "c1"})
        await wait_for(lambda: agent.call is None)
        assert call.ended.is_set()
        await wait_for(lambda: call.pc.connectionState == "closed")  # closed after the call ends
        # The engine restarts: the cart comes back by itself.
        await server.stop()
        await wait_for(lambda: not agent.registered.is_set())
        await asyncio.sleep(0.3)
        await server.start()
        await asyncio.wait_for(agent.registered.wait(), 10)
        assert agent.attempts >= 2
        # The sessions were lost with the restart in a real engine too: log in again.
        server.sessions.clear()
        ws = server.carts[("icu-a", "3")]
        await ws.close()
        await wait_for(lambda: server.logins >= 2)
        await asyncio.wait_for(agent.registered.wait(), 10)
        assert agent.last_refusal is not None
        assert agent.last_refusal[0] == 4401
    finally:
        await caller.close()
        await stopped(stop, task)
        await server.stop()


@pytest.mark.slow
async def test_cart_ends_call_when_caller_goes_away() -> None:
    server = SignalingServer({USER: "pw"}, {USER: {("icu-a", "3")}})
    await server.start()
    agent = make_agent(server)
    stop, task = await running(agent)
    caller = Caller()
    try:
        await asyncio.wait_for(agent.registered.wait(), 10)
        await server.send(
            "icu-a",
            "3",
            {"type": "offer", "call_id": 7, "sdp": await caller.offer(), "caller": "dr"},
        )
        answer = await server.expect("answer")
        from aiortc import RTCSessionDescription

        await caller.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        await wait_for(lambda: caller.received.get("video", FrameMeter()).frames >= 5)
        await caller.close()
        hangup = await server.expect("hangup")
        assert hangup == {"type": "hangup", "call_id": 7}
        await wait_for(lambda: agent.call is None)
        # A cart that stops hangs up its call first.
        caller = Caller()
        sdp = await caller.offer()
        await server.send("icu-a", "3", {"type": "offer", "call_id": 8, "sdp": sdp, "caller": "dr"})
        await server.expect("answer")
        await stopped(stop, task)
        assert await server.expect("hangup") == {"type": "hangup", "call_id": 8}
    finally:
        await caller.close()
        await stopped(stop, task)
        await server.stop()


@pytest.mark.slow
async def test_a_call_whose_peer_connection_never_closes_still_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer connection whose close never returns (a transport that does not answer) does not
    keep the call up: the cart is free again and answers the next call."""
    monkeypatch.setattr(cart_module, "CLOSE_TIMEOUT_S", 0.5)
    stuck: list[Callable[[], Awaitable[None]]] = []

    def create(*args: Any, **kwargs: Any) -> Any:
        pc = create_peer(*args, **kwargs)
        stuck.append(pc.close)

        async def never_closes() -> None:
            await asyncio.Event().wait()

        pc.close = never_closes  # type: ignore[method-assign]
        return pc

    monkeypatch.setattr(cart_module, "create_peer", create)
    server = SignalingServer({USER: "pw"}, {USER: {("icu-a", "3")}})
    await server.start()
    agent = make_agent(server)
    stop, task = await running(agent)
    caller = Caller()
    try:
        await asyncio.wait_for(agent.registered.wait(), 10)
        sdp = await caller.offer()
        await server.send("icu-a", "3", {"type": "offer", "call_id": 7, "sdp": sdp, "caller": "dr"})
        await server.expect("answer")
        await caller.close()
        await server.send("icu-a", "3", {"type": "hangup", "call_id": 7})
        await wait_for(lambda: agent.call is None, timeout=10)
        caller = Caller()
        sdp = await caller.offer()
        await server.send("icu-a", "3", {"type": "offer", "call_id": 8, "sdp": sdp, "caller": "dr"})
        assert (await server.expect("answer"))["call_id"] == 8
    finally:
        await caller.close()
        await stopped(stop, task)
        await server.stop()
        for close in stuck:
            await asyncio.wait_for(close(), 10)


async def test_refused_cart_stays_up_and_retries() -> None:
    server = SignalingServer({USER: "pw"}, {USER: {("icu-a", "3")}})
    await server.start()
    agent = make_agent(server, bed="4")  # not a bed this user may serve
    stop, task = await running(agent)
    try:
        await wait_for(lambda: agent.attempts >= 3)
        assert not task.done()
        assert not agent.registered.is_set()
        assert agent.last_refusal == (4403, f"{USER} may not serve icu-a/4")
        # Once allowed, the next retry registers.
        server.allowed[USER].add(("icu-a", "4"))
        await asyncio.wait_for(agent.registered.wait(), 10)
    finally:
        await stopped(stop, task)
        await server.stop()


async def test_wrong_password_and_no_engine_are_retried() -> None:
    server = SignalingServer({USER: "other"}, {USER: {("icu-a", "3")}})
    agent = make_agent(server)
    stop, task = await running(agent)
    try:
        await wait_for(lambda: agent.attempts >= 2)  # nothing listening yet
        await server.start()
        await wait_for(lambda: agent.attempts >= 4)  # listening, but the password is wrong
        assert not agent.registered.is_set()
        refused = agent.metrics.registry.get_sample_value(
            "eicu_cart_connect_attempts_total",
            {"site": "icu-a", "bed": "3", "outcome": "login_refused"},
        )
        assert refused is not None
        assert refused >= 1
        server.users[USER] = "pw"
        await asyncio.wait_for(agent.registered.wait(), 10)
    finally:
        await stopped(stop, task)
        await server.stop()


@pytest.mark.slow
async def test_eicu_cart_command_records_and_serves_metrics(tmp_path: Path) -> None:
    server = SignalingServer({USER: "pw"}, {USER: {("icu-a", "3")}})
    await server.start()
    metrics_port = free_port()
    recording = tmp_path / "consult.mp4"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "EICU_CART_PASSWORD": "pw",
        "EICU_VIDEO_ALLOW_LOOPBACK": "1",
        "EICU_VIDEO_CAMERA": "none",
        "EICU_VIDEO_MICROPHONE": "none",
        "EICU_VIDEO_STATS_INTERVAL_S": "0.5",
        "EICU_METRICS_TOKEN": "cart-metrics-token-0123",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eicu.cli",
        "cart",
        "--site",
        "icu-a",
        "--bed",
        "3",
        "--server",
        server.url,
        "--metrics-port",
        str(metrics_port),
        "--record",
        str(recording),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    caller = Caller()
    try:
        await wait_for(lambda: ("icu-a", "3") in server.carts, timeout=30)
        sdp = await caller.offer()
        await server.send(
            "icu-a", "3", {"type": "offer", "call_id": "c1", "sdp": sdp, "caller": "dr"}
        )
        answer = await server.expect("answer")
        from aiortc import RTCSessionDescription

        await caller.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        await wait_for(lambda: caller.received.get("video", FrameMeter()).frames >= 5)
        stats = await server.expect("stats")
        deadline = asyncio.get_running_loop().time() + 60
        while stats["stats"]["inbound"].get("video", {}).get("frames", 0) < 5:
            assert asyncio.get_running_loop().time() < deadline, f"cart's inbound video: {stats}"
            stats = await server.expect("stats")
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as anonymous:  # EICU_METRICS_TOKEN is set
                assert anonymous.status == 401
            bearer = {"Authorization": "Bearer cart-metrics-token-0123"}
            async with http.get(url, headers=bearer) as resp:
                text = await resp.text()
        assert 'eicu_cart_in_call{bed="3",site="icu-a"} 1.0' in text
        assert "eicu_video_frame_width" in text
        await server.send("icu-a", "3", {"type": "hangup", "call_id": "c1"})
        await asyncio.sleep(0.5)
    finally:
        await caller.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        err = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()
        rc = await asyncio.wait_for(proc.wait(), 30)
        await server.stop()
    assert rc == 0, err
    assert "registered with" in err
    import av

    with av.open(str(recording)) as container:
        assert container.streams.video
        assert container.streams.video[0].codec_context.width == 640


def test_eicu_cart_without_password_names_the_key() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EICU_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "eicu.cli", "cart", "--site", "s", "--bed", "b"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "EICU_CART_PASSWORD" in proc.stderr


async def test_dead_link_is_noticed_and_engine_ice_servers_used() -> None:
    server = SignalingServer({USER: "pw"}, {USER: {("icu-a", "3")}})
    server.ice_servers = [{"urls": "stun:stun.example:3478", "credentialType": "password"}]
    server.answer_pings = False
    await server.start()
    agent = CartAgent(
        "icu-a",
        "3",
        server=server.url,
        user=USER,
        password=Secret("pw"),
        settings=SETTINGS,
        keepalive_s=0.3,
    )
    stop, task = await running(agent)
    try:
        await asyncio.wait_for(agent.registered.wait(), 10)
        assert [s.urls for s in agent.server_ice_servers] == [("stun:stun.example:3478",)]
        # No pong for the cart's pings: it drops the link and connects again.
        await wait_for(lambda: agent.attempts >= 3, timeout=15)
    finally:
        await stopped(stop, task)
        await server.stop()


def test_recordings_are_never_overwritten(tmp_path: Path) -> None:
    from eicu.video.cart import recording_path

    first = recording_path(tmp_path / "consult.mp4", "c1")
    assert first == tmp_path / "consult.mp4"
    first.write_bytes(b"x")
    assert recording_path(tmp_path / "consult.mp4", "c2") == tmp_path / "consult-2.mp4"
    named = recording_path(tmp_path / "bed3-{call_id}.mp4", "a/../b")
    assert named.parent == tmp_path
    assert named.name == "bed3-a____b.mp4"


async def test_bad_offer_and_unanswered_call_end_with_hangup() -> None:
    server = SignalingServer({USER: "pw"}, {USER: {("icu-a", "3")}})
    await server.start()
    agent = CartAgent(
        "icu-a",
        "3",
        server=server.url,
        user=USER,
        password=Secret("pw"),
        settings=SETTINGS,
        connect_timeout_s=1.0,
    )
    stop, task = await running(agent)
    caller = Caller()
    try:
        await asyncio.wait_for(agent.registered.wait(), 10)
        # An offer that is not SDP: that call fails, the cart stays up.
        await server.send("icu-a", "3", {"type": "offer", "call_id": "bad", "sdp": "nonsense"})
        assert await server.expect("hangup") == {"type": "hangup", "call_id": "bad"}
        assert agent.call is None
        # An answer the caller never applies: the cart gives up after connect_timeout_s.
        sdp = await caller.offer()
        await server.send("icu-a", "3", {"type": "offer", "call_id": "lost", "sdp": sdp})
        await server.expect("answer")
        assert await server.expect("hangup", timeout=10) == {"type": "hangup", "call_id": "lost"}
        await wait_for(lambda: agent.call is None)
        assert agent.registered.is_set()
        assert not task.done()
    finally:
        await caller.close()
        await stopped(stop, task)
        await server.stop()
