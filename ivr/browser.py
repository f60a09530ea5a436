"""Agents in the browser: the WebSocket listener's settings, and which media a browser may offer.

`websocket_settings` turns `[websocket]` into the endpoint's `WsSettings`
(WSS with its own certificate or `[general]`'s). `browser_offer_refusal` is
the media check for an INVITE that came over a WebSocket: browsers speak
DTLS-SRTP (`UDP/TLS/RTP/SAVPF`, RFC 8827), never SDES keys in the SDP, which a
page's script could read — so an SDES (`RTP/SAVP`) or plain offer there is
refused 488. A DTLS offer is handed to `dtls_media` once a DTLS-SRTP media
module sets it; until then it is refused too.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from ivr.config import Config
from ivr.sip.connections import StreamAddress
from ivr.sip.endpoint import Address
from ivr.sip.websocket import WsSettings

if TYPE_CHECKING:
    from aiosipua.sdp import SdpMessage

WEBRTC_PROTO = "UDP/TLS/RTP/SAVPF"
WEBSOCKET_TRANSPORTS = frozenset({"WS", "WSS"})

# The DTLS-SRTP media's check of a browser's offer: None to take it, else why it is refused (488).
dtls_media: Callable[[SdpMessage], str | None] | None = None


def websocket_settings(config: Config) -> WsSettings | None:
    """The WebSocket listener of `[websocket]`, or None when it is off."""
    ws = config.websocket
    if not ws.enabled:
        return None
    context = None
    pem = ws.pem_files(config.general)
    if pem is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(pem[0]), str(pem[1]))
    return WsSettings(ws.bind, ws.port, ws.path, context, ws.origins, ws.ping_seconds, ws.ping_seconds)


def over_websocket(source: Address) -> bool:
    return isinstance(source, StreamAddress) and source.transport in WEBSOCKET_TRANSPORTS


def browser_offer_refusal(source: Address, offer: SdpMessage) -> str | None:
    """Why an offer that came over a WebSocket is refused 488; None when it may be answered (or not over WS)."""
    if not over_websocket(source):
        return None
    audio = offer.audio
    if audio is None:
        return "no audio section in an offer over a WebSocket"
    if audio.proto.upper() == WEBRTC_PROTO:
        return "DTLS-SRTP media is not available" if dtls_media is None else dtls_media(offer)
    return f"{audio.proto} offered over a WebSocket: a browser's media is DTLS-SRTP ({WEBRTC_PROTO})"
