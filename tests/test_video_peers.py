"""Two real aiortc peers on this machine: video, audio and a data channel both ways."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from aiortc import RTCPeerConnection

from eicu.config import VideoSettings
from eicu.video.font import text_mask
from eicu.video.media import (
    NO_CAMERA_TEXT,
    FrameMeter,
    TestPatternTrack,
    ToneTrack,
    consume,
    open_local_media,
)
from eicu.video.peer import create_peer
from eicu.video.stats import CartMetrics, summarize

LOCAL = VideoSettings(allow_loopback=True, camera="none", microphone="none")


def test_test_pattern_is_labelled_and_moves() -> None:
    track = TestPatternTrack("ICU-A/BED-3", 640, 480, 15)
    a, b = track.render(0, 0.0), track.render(5, 1.0)
    assert a.shape == (480, 640, 3)
    assert a.dtype == np.uint8
    assert not np.array_equal(a, b)
    # The warning is drawn whole, white on black, centred across the picture.
    mask = text_mask(NO_CAMERA_TEXT, 4)
    x = (640 - mask.shape[1]) // 2
    y = int(480 * 0.36)
    box = a[y : y + mask.shape[0], x : x + mask.shape[1]]
    assert (box[mask] == 255).all()
    assert (box[~mask] == 0).all()
    assert mask.shape[1] <= 640
    tone = ToneTrack().render(0)
    assert tone.dtype == np.int16
    assert np.abs(tone).max() > 1000


async def _wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_two_peers_exchange_video_audio_and_data() -> None:
    caller = create_peer(LOCAL)
    callee = create_peer(LOCAL)
    assert isinstance(caller, RTCPeerConnection)
    media_a = open_local_media(LOCAL, "CALLER")
    media_b = open_local_media(LOCAL, "ICU-A/BED-3")
    assert media_b.video.description == "test pattern"
    received: dict[str, dict[str, FrameMeter]] = {"caller": {}, "callee": {}}
    tasks: list[asyncio.Task[None]] = []

    def on_track(side: str):  # type: ignore[no-untyped-def]
        def handler(track) -> None:  # type: ignore[no-untyped-def]
            meter = received[side].setdefault(track.kind, FrameMeter())
            tasks.append(asyncio.ensure_future(consume(track, meter)))

        return handler

    caller.on("track", on_track("caller"))
    callee.on("track", on_track("callee"))
    pongs: list[dict[str, object]] = []
    callee_channel: list[object] = []

    @callee.on("datachannel")
    def on_datachannel(channel) -> None:  # type: ignore[no-untyped-def]
        callee_channel.append(channel)

        @channel.on("message")
        def on_message(message: str) -> None:
            if json.loads(message).get("type") == "ping":
                channel.send(json.dumps({"type": "pong"}))

    channel = caller.createDataChannel("eicu")

    @channel.on("open")
    def on_open() -> None:
        channel.send(json.dumps({"type": "ping"}))

    @channel.on("message")
    def on_reply(message: str) -> None:
        pongs.append(json.loads(message))

    try:
        caller.addTrack(media_a.video)
        caller.addTrack(media_a.audio)
        await caller.setLocalDescription(await caller.createOffer())
        await callee.setRemoteDescription(caller.localDescription)
        callee.addTrack(media_b.video)
        callee.addTrack(media_b.audio)
        await callee.setLocalDescription(await callee.createAnswer())
        await caller.setRemoteDescription(callee.localDescription)

        def flowing() -> bool:
            return all(
                side.get(k) is not None and side[k].frames >= 10
                for side in received.values()
                for k in ("video", "audio")
            )

        await _wait_for(flowing)
        await _wait_for(lambda: bool(pongs))
        assert pongs == [{"type": "pong"}]
        for side in received.values():
            assert (side["video"].width, side["video"].height) == (640, 480)
            assert side["audio"].samples > 0
        # RTCP receiver reports (round-trip time) come every few seconds.
        summary: dict[str, object] = {}

        async def rtt_known() -> bool:
            nonlocal summary
            summary = await summarize(
                callee,
                {"video": media_b.video.meter, "audio": media_b.audio.meter},
                received["callee"],
            )
            return summary["round_trip_time_s"] is not None

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not await rtt_known():
            assert loop.time() < deadline, summary
            await asyncio.sleep(0.5)
        inbound = summary["inbound"]
        outbound = summary["outbound"]
        assert isinstance(inbound, dict)
        assert isinstance(outbound, dict)
        assert inbound["video"]["frames"] > 0
        assert inbound["video"]["width"] == 640
        assert inbound["video"]["packets_received"] > 0
        assert outbound["video"]["frames"] > 0
        assert outbound["audio"]["packets_sent"] > 0
        metrics = CartMetrics()
        metrics.export("icu-a", "3", summary)
        labels = {"site": "icu-a", "bed": "3", "direction": "inbound", "kind": "video"}
        assert metrics.registry.get_sample_value("eicu_video_frame_width", labels) == 640
        rtt = metrics.registry.get_sample_value(
            "eicu_video_round_trip_seconds", {"site": "icu-a", "bed": "3"}
        )
        assert rtt is not None
        assert rtt >= 0
    finally:
        await caller.close()
        await callee.close()
        media_a.stop()
        media_b.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_devices_through_ffmpeg_and_fallback(caplog: pytest.LogCaptureFixture) -> None:
    # FFmpeg's lavfi sources stand in for a camera and a microphone.
    devices = VideoSettings(
        camera="testsrc=size=320x240:rate=15",
        camera_format="lavfi",
        microphone="sine=frequency=1000:sample_rate=48000",
        microphone_format="lavfi",
    )
    media = open_local_media(devices, "ICU-A/3")
    try:
        assert media.video.description.startswith("camera ")
        assert media.audio.description.startswith("microphone ")
        for _ in range(3):
            frame = await asyncio.wait_for(media.video.recv(), 10)
            audio = await asyncio.wait_for(media.audio.recv(), 10)
        assert (frame.width, frame.height) == (320, 240)
        assert audio.sample_rate == 48000
        assert media.video.meter.frames == 3
    finally:
        media.stop()
    # A camera that cannot be opened: the test pattern, and the reason in the log.
    missing = VideoSettings(camera="/dev/no-such-camera", microphone="none")
    media = open_local_media(missing, "ICU-A/3")
    media.stop()
    assert media.video.description == "test pattern"
    assert media.audio.description == "test tone"
    assert "/dev/no-such-camera cannot be opened" in caplog.text
