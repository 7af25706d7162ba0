"""A received track read by a slow or stalled recorder keeps at most a few frames in memory."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from eicu.video.media import BoundedTrack


class Burst(MediaStreamTrack):
    """``n`` frames as fast as they are asked for, then the end of the track."""

    kind = "video"

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.sent = 0

    async def recv(self) -> VideoFrame:
        await asyncio.sleep(0)
        if self.sent >= self.n:
            raise MediaStreamError
        frame = VideoFrame(width=16, height=16)
        frame.pts = self.sent
        self.sent += 1
        return frame


async def test_a_stalled_reader_costs_the_oldest_frames_not_memory() -> None:
    source = Burst(500)
    track = BoundedTrack(source, max_frames=30)
    for _ in range(10_000):  # nobody reads: the source is drained anyway, to its end
        if track._ended:
            break
        await asyncio.sleep(0)
    assert track._ended and source.sent == 500
    assert track.dropped == 470
    got = []
    with pytest.raises(MediaStreamError):
        while True:
            got.append((await track.recv()).pts)
    assert got == list(range(470, 500))  # the newest, in order, then the end


async def test_a_reader_that_keeps_up_loses_nothing_and_stop_ends_it() -> None:
    source = Burst(1000)
    track = BoundedTrack(source, max_frames=4)
    got = [(await track.recv()).pts for _ in range(50)]
    assert got == list(range(50)) and track.dropped == 0
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()
    with pytest.raises(ValueError, match="max_frames"):
        BoundedTrack(Burst(1), max_frames=0)
