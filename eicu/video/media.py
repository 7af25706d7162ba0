"""Media of a bedside cart: its camera and microphone when present, otherwise a clearly
labelled test pattern and a tone; and the meters that count what is sent and received.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame
from av.frame import Frame
from av.packet import Packet

from eicu.config import VideoSettings
from eicu.video.font import draw_text, text_width

log = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
AUDIO_RATE = 48_000
AUDIO_PTIME_S = 0.020
NO_CAMERA_TEXT = "TEST PATTERN - NO CAMERA"


class _Pacer:
    """Timestamps at a fixed rate, sleeping so frames leave in real time (monotonic clock)."""

    def __init__(self, ticks_per_frame: int, clock_rate: int) -> None:
        self.ticks_per_frame = ticks_per_frame
        self.clock_rate = clock_rate
        self.time_base = fractions.Fraction(1, clock_rate)
        self._start: float | None = None
        self._pts = 0

    async def next(self) -> int:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
            return 0
        self._pts += self.ticks_per_frame
        wait = self._start + self._pts / self.clock_rate - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        return self._pts


class TestPatternTrack(MediaStreamTrack):
    """Moving colour bars with the bed's label, a UTC clock, a frame number and the words
    "TEST PATTERN - NO CAMERA", so nobody mistakes it for a picture of the patient."""

    __test__ = False  # not a pytest test class, despite the name
    kind = "video"

    def __init__(self, label: str, width: int = 640, height: int = 480, fps: int = 15) -> None:
        super().__init__()
        self.label = label
        self.width, self.height, self.fps = width, height, fps
        self._pacer = _Pacer(VIDEO_CLOCK_RATE // fps, VIDEO_CLOCK_RATE)
        self._n = 0
        colours = np.array(
            [
                (192, 192, 192),
                (192, 192, 0),
                (0, 192, 192),
                (0, 192, 0),
                (192, 0, 192),
                (192, 0, 0),
                (0, 0, 192),
                (32, 32, 32),
            ],
            dtype=np.uint8,
        )
        bar = max(width // len(colours), 1)
        row = np.repeat(colours, bar, axis=0)
        row = np.resize(row, (width, 3))
        # Two widths side by side, so a scrolled frame is one slice.
        self._bars = np.ascontiguousarray(
            np.broadcast_to(np.concatenate([row, row])[None, :, :], (height, 2 * width, 3))
        )

    def render(self, n: int, now: float | None = None) -> np.ndarray:
        """Frame ``n`` as an RGB array (height, width, 3)."""
        w, h = self.width, self.height
        offset = (n * 4) % w
        img = self._bars[:, offset : offset + w].copy()
        # A white square bouncing left and right, so a frozen picture is obvious.
        size = max(h // 20, 4)
        span = max(w - size, 1)
        x = int(abs((n * 6) % (2 * span) - span))
        y0 = int(h * 0.56)
        img[y0 : y0 + size, x : x + size] = 255
        clock = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
        lines = [
            (self.label, 0.06, 6),
            (NO_CAMERA_TEXT, 0.36, 4),
            (clock, 0.74, 3),
            (f"FRAME {n}", 0.86, 3),
        ]
        for text, at, largest in lines:
            scale = self._fit(text, largest)
            tx = max((w - text_width(text, scale)) // 2, 0)
            draw_text(img, text, tx, int(h * at), scale=scale)
        return img

    def _fit(self, text: str, largest: int) -> int:
        """The largest scale up to ``largest`` at which ``text`` fits the width with margins."""
        room = self.width - 4 * largest
        return max(1, min(largest, room // max(text_width(text, 1), 1)))

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._pacer.next()
        frame = VideoFrame.from_ndarray(self.render(self._n), format="rgb24")
        frame.pts = pts
        frame.time_base = self._pacer.time_base
        self._n += 1
        return frame


class ToneTrack(MediaStreamTrack):
    """A 440 Hz beep of 150 ms once a second, 48 kHz mono, in 20 ms frames."""

    kind = "audio"

    def __init__(self, frequency_hz: float = 440.0, amplitude: float = 0.25) -> None:
        super().__init__()
        self.frequency_hz = frequency_hz
        self.amplitude = amplitude
        self._samples = int(AUDIO_RATE * AUDIO_PTIME_S)
        self._pacer = _Pacer(self._samples, AUDIO_RATE)

    def render(self, first_sample: int) -> np.ndarray:
        t = first_sample + np.arange(self._samples)
        on = (t % AUDIO_RATE) < int(0.150 * AUDIO_RATE)
        wave = np.sin(2 * math.pi * self.frequency_hz * t / AUDIO_RATE) * on
        return (wave * self.amplitude * 32767).astype(np.int16)

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._pacer.next()
        samples = self.render(pts)
        frame = AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = pts
        frame.time_base = self._pacer.time_base
        return frame


class FrameMeter:
    """Counts frames of one track: total, size, rate over the last few seconds, samples."""

    def __init__(self, window_s: float = 3.0) -> None:
        self.frames = 0
        self.samples = 0
        self.width = 0
        self.height = 0
        self.window_s = window_s
        self._times: deque[float] = deque()

    def add(self, frame: Frame | Packet) -> None:
        now = time.monotonic()
        self.frames += 1
        if isinstance(frame, VideoFrame):
            self.width, self.height = frame.width, frame.height
        elif isinstance(frame, AudioFrame):
            self.samples += frame.samples
        self._times.append(now)
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()

    @property
    def fps(self) -> float:
        now = time.monotonic()
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def summary(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"frames": self.frames, "fps": round(self.fps, 2)}
        if self.width:
            out["width"], out["height"] = self.width, self.height
        if self.samples:
            out["samples"] = self.samples
        return out


class MeteredTrack(MediaStreamTrack):
    """Passes the frames of ``source`` through, counting them in ``meter``."""

    def __init__(self, source: MediaStreamTrack, description: str) -> None:
        super().__init__()
        self.kind = source.kind
        self.source = source
        self.description = description
        self.meter = FrameMeter()

    async def recv(self) -> Frame | Packet:
        frame = await self.source.recv()
        self.meter.add(frame)
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()


class BoundedTrack(MediaStreamTrack):
    """Reads ``source`` as fast as it delivers and keeps only its newest ``max_frames`` for the
    reader: a slow or stalled reader (a recorder whose encoder is starved of CPU, one not yet
    started) costs the oldest frames, counted in ``dropped``, never a growing pile of decoded
    frames in memory (a received track otherwise queues every frame until it is read)."""

    def __init__(self, source: MediaStreamTrack, max_frames: int = 30) -> None:
        super().__init__()
        if max_frames < 1:
            raise ValueError(f"need max_frames >= 1, got {max_frames}")
        self.kind = source.kind
        self.source = source
        self.dropped = 0
        self._frames: deque[Frame | Packet] = deque(maxlen=max_frames)
        self._arrived = asyncio.Event()
        self._ended = False
        self._pump = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.source.recv()
                if len(self._frames) == self._frames.maxlen:
                    self.dropped += 1
                self._frames.append(frame)
                self._arrived.set()
        except MediaStreamError:
            pass
        finally:
            self._ended = True
            self._arrived.set()

    async def recv(self) -> Frame | Packet:
        while not self._frames:
            if self._ended or self.readyState != "live":
                raise MediaStreamError
            self._arrived.clear()
            await self._arrived.wait()
        return self._frames.popleft()

    def stop(self) -> None:
        super().stop()
        self._pump.cancel()
        self.source.stop()
        self._arrived.set()


async def consume(track: MediaStreamTrack, meter: FrameMeter) -> None:
    """Read ``track`` until it ends, counting its frames (a sink that plays nothing)."""
    try:
        while True:
            meter.add(await track.recv())
    except MediaStreamError:
        return


@dataclass
class LocalMedia:
    """The tracks a cart sends in one call."""

    video: MeteredTrack
    audio: MeteredTrack

    def stop(self) -> None:
        self.video.stop()
        self.audio.stop()


def _camera_device(settings: VideoSettings) -> str | None:
    if settings.camera == "none":
        return None
    if settings.camera == "auto":
        if sys.platform.startswith("linux") and Path("/dev/video0").exists():
            return "/dev/video0"
        return None
    return settings.camera


def _microphone_device(settings: VideoSettings) -> str | None:
    if settings.microphone == "none":
        return None
    if settings.microphone == "auto":
        cards = Path("/proc/asound/cards")
        try:
            text = cards.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        return "default" if text.strip() and "no soundcards" not in text else None
    return settings.microphone


def _open_device(device: str, fmt: str, kind: str, options: dict[str, str]) -> MediaStreamTrack:
    from aiortc.contrib.media import MediaPlayer

    player = MediaPlayer(device, format=fmt, options=options)
    track = player.video if kind == "video" else player.audio
    if track is None:
        raise OSError(f"{device} has no {kind} stream")
    return track


def open_local_media(settings: VideoSettings, label: str) -> LocalMedia:
    """The camera and microphone when present and openable; otherwise the test pattern (with
    ``label`` drawn in) and the tone. A device that fails to open is logged, never fatal."""
    video: MeteredTrack | None = None
    audio: MeteredTrack | None = None
    camera = _camera_device(settings)
    if camera is not None:
        options = {
            "video_size": f"{settings.width}x{settings.height}",
            "framerate": str(settings.fps),
        }
        try:
            track = _open_device(camera, settings.camera_format, "video", options)
            video = MeteredTrack(track, f"camera {camera}")
        except Exception as exc:  # av raises its own error tree; any failure means no camera
            log.warning("camera %s cannot be opened (%s); sending the test pattern", camera, exc)
    microphone = _microphone_device(settings)
    if microphone is not None:
        try:
            track = _open_device(microphone, settings.microphone_format, "audio", {})
            audio = MeteredTrack(track, f"microphone {microphone}")
        except Exception as exc:
            log.warning("microphone %s cannot be opened (%s); sending a tone", microphone, exc)
    if video is None:
        pattern = TestPatternTrack(label, settings.width, settings.height, settings.fps)
        video = MeteredTrack(pattern, "test pattern")
    if audio is None:
        audio = MeteredTrack(ToneTrack(), "test tone")
    return LocalMedia(video=video, audio=audio)
