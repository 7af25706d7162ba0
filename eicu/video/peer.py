"""RTCPeerConnection from the settings: ICE servers, and the loopback opt-in for one machine.

aioice never offers a 127.0.0.1 host candidate, so two peers on a machine with only loopback
cannot connect. :class:`PeerConnection` with ``allow_loopback=True`` adds that candidate while
it gathers (``EICU_VIDEO_ALLOW_LOOPBACK``, off by default: tests and local demos only). Every
other peer connection in the process, and every peer connection made with the default, gathers
exactly as aioice does.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from eicu.config import IceServer, VideoSettings

_gathering_with_loopback: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "eicu_gathering_with_loopback", default=False
)
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    if _gathering_with_loopback.get() and use_ipv4 and "127.0.0.1" not in addresses:
        addresses.append("127.0.0.1")
    return addresses


def _install_loopback_hook() -> None:
    # Looked up by aioice at gathering time; the context variable (set only inside
    # PeerConnection.setLocalDescription with allow_loopback) decides per call.
    if aioice.ice.get_host_addresses is not _get_host_addresses:
        aioice.ice.get_host_addresses = _get_host_addresses


class PeerConnection(RTCPeerConnection):
    """An aiortc peer connection that gathers a loopback candidate when ``allow_loopback``."""

    def __init__(
        self, configuration: RTCConfiguration | None = None, *, allow_loopback: bool = False
    ) -> None:
        super().__init__(configuration)
        self.configuration = configuration or RTCConfiguration()
        self.allow_loopback = allow_loopback

    async def setLocalDescription(
        self, sessionDescription: RTCSessionDescription | None = None
    ) -> None:
        if not self.allow_loopback:
            await super().setLocalDescription(sessionDescription)
            return
        _install_loopback_hook()
        token = _gathering_with_loopback.set(True)
        try:
            await super().setLocalDescription(sessionDescription)
        finally:
            _gathering_with_loopback.reset(token)


def rtc_ice_servers(servers: Sequence[IceServer]) -> list[RTCIceServer]:
    out = []
    for s in servers:
        out.append(
            RTCIceServer(
                urls=list(s.urls),
                username=s.username,
                credential=str(s.credential) if s.credential is not None else None,
            )
        )
    return out


def create_peer(
    settings: VideoSettings, ice_servers: Sequence[IceServer] | None = None
) -> PeerConnection:
    """A peer connection using the configured ICE servers, or ``ice_servers`` (those the engine
    sent) when none are configured.

    aioice uses at most one STUN and one TURN server: the first of each kind listed.
    """
    chosen = settings.ice_servers or tuple(ice_servers or ())
    config = RTCConfiguration(iceServers=rtc_ice_servers(chosen))
    return PeerConnection(config, allow_loopback=settings.allow_loopback)


def candidate_addresses(sdp: str) -> list[str]:
    """The connection addresses of the ``a=candidate`` lines of an SDP."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) > 4:
                out.append(parts[4])
    return out
