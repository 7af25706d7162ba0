"""Video settings: ICE servers from the environment, errors name the key, the loopback opt-in."""

from __future__ import annotations

import asyncio
import os

import pytest

from eicu.config import Settings, VideoSettings
from eicu.errors import ConfigError
from eicu.video.media import ToneTrack
from eicu.video.peer import candidate_addresses, create_peer


def test_ice_servers_from_the_environment() -> None:
    env = {
        "EICU_ICE_SERVERS": '[{"urls": "stun:stun.example:3478"},'
        ' {"urls": ["turn:turn.example:3478?transport=udp", "turns:turn.example:5349"],'
        '  "username": "cart", "credential": "s3cret"}]'
    }
    video = Settings.from_env(env).video
    assert [s.urls for s in video.ice_servers] == [
        ("stun:stun.example:3478",),
        ("turn:turn.example:3478?transport=udp", "turns:turn.example:5349"),
    ]
    assert video.ice_servers[1].username == "cart"
    assert "s3cret" not in repr(video)
    assert video.ice_servers[1].as_json()["credential"] == "s3cret"
    assert video.allow_loopback is False
    assert (video.camera, video.microphone) == ("auto", "auto")


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("[{urls: 1}", "EICU_ICE_SERVERS"),
        ('{"urls": "stun:x"}', "EICU_ICE_SERVERS"),
        ('["stun:x"]', "EICU_ICE_SERVERS[0]"),
        ('[{"urls": "http://x"}]', "EICU_ICE_SERVERS[0].urls"),
        ('[{"urls": []}]', "EICU_ICE_SERVERS[0].urls"),
        ('[{"urls": "turn:x"}]', "EICU_ICE_SERVERS[0]"),
        ('[{"urls": "stun:x", "user": "u"}]', "EICU_ICE_SERVERS[0]"),
        (
            '[{"urls": "stun:x"}, {"urls": "turn:y", "username": 5, "credential": "c"}]',
            "EICU_ICE_SERVERS[1].username",
        ),
    ],
)
def test_bad_ice_servers_name_their_key(value: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"EICU_ICE_SERVERS": value})
    assert info.value.key == key


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"EICU_VIDEO_ALLOW_LOOPBACK": "perhaps"}, "EICU_VIDEO_ALLOW_LOOPBACK"),
        ({"EICU_VIDEO_FPS": "0"}, "EICU_VIDEO_FPS"),
        ({"EICU_VIDEO_RECONNECT_MAX_S": "soon"}, "EICU_VIDEO_RECONNECT_MAX_S"),
    ],
)
def test_bad_video_settings_name_their_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        VideoSettings.from_env(env)
    assert info.value.key == key


async def _offer_addresses(settings: VideoSettings) -> list[str]:
    pc = create_peer(settings)
    try:
        pc.addTrack(ToneTrack())
        await pc.setLocalDescription(await pc.createOffer())
        return candidate_addresses(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_loopback_candidate_only_when_opted_in() -> None:
    default = await _offer_addresses(VideoSettings())
    assert "127.0.0.1" not in default
    opted_in = await _offer_addresses(VideoSettings(allow_loopback=True))
    assert "127.0.0.1" in opted_in
    # Opting in for one peer leaves every other peer as it was.
    assert "127.0.0.1" not in await _offer_addresses(VideoSettings())
    assert VideoSettings.from_env({"EICU_VIDEO_ALLOW_LOOPBACK": "1"}).allow_loopback


async def test_configured_ice_servers_win_over_the_engines() -> None:
    from eicu.config import IceServer

    ours = VideoSettings(ice_servers=(IceServer(urls=("stun:ours.example:3478",)),))
    theirs = (IceServer(urls=("stun:theirs.example:3478",)),)
    pc = create_peer(ours, theirs)
    assert pc.configuration.iceServers[0].urls == ["stun:ours.example:3478"]
    await pc.close()
    pc = create_peer(VideoSettings(), theirs)
    assert pc.configuration.iceServers[0].urls == ["stun:theirs.example:3478"]
    await pc.close()


def _loopback_only(sdp: str) -> str:
    """``sdp`` with every candidate but 127.0.0.1 removed: what a loopback-only host offers."""
    lines = sdp.splitlines()
    kept = [
        line
        for line in lines
        if not line.startswith("a=candidate:") or line.split()[4] == "127.0.0.1"
    ]
    return "\r\n".join(kept) + "\r\n"


async def test_peers_connect_over_loopback_alone() -> None:
    from aiortc import RTCSessionDescription

    settings = VideoSettings(allow_loopback=True)
    a, b = create_peer(settings), create_peer(settings)
    got: asyncio.Queue[str] = asyncio.Queue()
    channel = a.createDataChannel("eicu")
    channel.on("open", lambda: channel.send("ping"))

    @b.on("datachannel")
    def on_channel(remote) -> None:  # type: ignore[no-untyped-def]
        remote.on("message", lambda m: got.put_nowait(m))

    try:
        await a.setLocalDescription(await a.createOffer())
        offer = _loopback_only(a.localDescription.sdp)
        assert set(candidate_addresses(offer)) == {"127.0.0.1"}
        await b.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await b.setLocalDescription(await b.createAnswer())
        answer = _loopback_only(b.localDescription.sdp)
        await a.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        assert await asyncio.wait_for(got.get(), 15) == "ping"
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize(
    ("args", "env", "key"),
    [
        (["--server", "ftp://engine"], {"EICU_CART_PASSWORD": "pw"}, "--server"),
        (
            [],
            {"EICU_CART_PASSWORD": "pw", "EICU_DASHBOARD_URL": "engine:8080"},
            "EICU_DASHBOARD_URL",
        ),
        ([], {"EICU_CART_PASSWORD": "pw", "EICU_ICE_SERVERS": "[{"}, "EICU_ICE_SERVERS"),
        (["--password-file", "/nonexistent/pw"], {}, "--password-file"),
        ([], {}, "EICU_CART_PASSWORD"),
    ],
)
def test_cart_command_errors_name_the_key(
    args: list[str],
    env: dict[str, str],
    key: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from eicu.cli import main

    for name in [k for k in os.environ if k.startswith("EICU_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["cart", "--site", "icu-a", "--bed", "3", *args]) == 2
    assert f"error: {key}:" in capsys.readouterr().err
