"""The cart answers a real Chromium: the browser's offer, its media and its data channel."""

from __future__ import annotations

import asyncio

import pytest

from eicu.config import Secret, VideoSettings
from eicu.video.cart import CartAgent
from tests.chromium import CHROMIUM, playwright_or_skip
from tests.video_engine import SignalingServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

playwright_api = playwright_or_skip()

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
]  # fmt: skip

# The command center's part, as a browser does it: camera and microphone, a data channel, a
# complete offer (gathering finished), then the answer.
OFFER_JS = """async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  window.pc = pc;
  window.messages = [];
  const stream = await navigator.mediaDevices.getUserMedia({video: true, audio: true});
  stream.getTracks().forEach(t => pc.addTrack(t, stream));
  const channel = pc.createDataChannel("eicu");
  window.channel = channel;
  channel.onmessage = e => window.messages.push(JSON.parse(e.data));
  window.remote = new MediaStream();
  pc.ontrack = e => window.remote.addTrack(e.track);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(done => {
    if (pc.iceGatheringState === "complete") done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
  });
  return pc.localDescription.sdp;
}"""
ANSWER_JS = """async (sdp) => {
  await window.pc.setRemoteDescription({type: "answer", sdp});
  const video = document.createElement("video");
  video.muted = true;
  video.autoplay = true;
  video.srcObject = window.remote;
  document.body.appendChild(video);
  window.video = video;
}"""
STATE_JS = """() => ({
  state: window.pc.connectionState,
  width: window.video.videoWidth,
  height: window.video.videoHeight,
  messages: window.messages,
})"""


async def test_cart_answers_chromium() -> None:
    user = "cart-icu-a-3"
    server = SignalingServer({user: "pw"}, {user: {("icu-a", "3")}})
    await server.start()
    settings = VideoSettings(
        allow_loopback=True, camera="none", microphone="none", stats_interval_s=0.5
    )
    agent = CartAgent(
        "icu-a", "3", server=server.url, user=user, password=Secret("pw"), settings=settings
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(agent.run(stop))
    try:
        await asyncio.wait_for(agent.registered.wait(), 10)
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(server.url + "/")  # a secure context: http://127.0.0.1
                sdp = await page.evaluate(OFFER_JS)
                offer = {"type": "offer", "call_id": "b1", "sdp": sdp, "caller": "dr"}
                await server.send("icu-a", "3", offer)
                answer = await server.expect("answer")
                await page.evaluate(ANSWER_JS, answer["sdp"])
                state: dict[str, object] = {}
                for _ in range(60):
                    state = await page.evaluate(STATE_JS)
                    if state["width"] and state["messages"]:
                        break
                    await asyncio.sleep(0.25)
                assert state["state"] == "connected"
                assert (state["width"], state["height"]) == (640, 480)
                assert state["messages"] == [{"type": "hello", "site": "icu-a", "bed": "3"}]
                await page.evaluate("() => window.channel.send(JSON.stringify({type: 'ping'}))")
                for _ in range(40):
                    state = await page.evaluate(STATE_JS)
                    if {"type": "pong"} in state["messages"]:  # type: ignore[operator]
                        break
                    await asyncio.sleep(0.1)
                assert {"type": "pong"} in state["messages"]  # type: ignore[operator]
                stats = await server.expect("stats")
                while stats["stats"]["inbound"].get("video", {}).get("frames", 0) < 5:
                    stats = await server.expect("stats")
                assert stats["stats"]["inbound"]["video"]["width"] > 0
                # The browser leaves: the cart notices and hangs up.
                await page.evaluate("() => window.pc.close()")
                assert await server.expect("hangup", timeout=60) == {
                    "type": "hangup",
                    "call_id": "b1",
                }
            finally:
                await browser.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await server.stop()
