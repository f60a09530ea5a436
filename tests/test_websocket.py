"""SIP over WebSocket without sockets: the [websocket] section, the browser media check, and addressing
of peers reached through a connection (RFC 7118 §5.2: a `.invalid` host is only reached down its connection)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiosipua import build_sdp
from aiosipua.sdp import parse_sdp

import ivr.browser
from ivr.browser import browser_offer_refusal
from ivr.config import ConfigError, load_config
from ivr.sip.connections import ConnectionGone, StreamAddress
from ivr.sip.endpoint import SipEndpoint
from ivr.sip.websocket import WsSettings


def conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sip.conf"
    path.write_text(text, encoding="utf-8")
    return path


def test_websocket_section_is_off_by_default_and_reads_its_keys(tmp_path: Path) -> None:
    assert not load_config(conf(tmp_path, "[general]\n")).websocket.enabled
    ws = load_config(conf(tmp_path, "[websocket]\nenabled = yes\nport = 9443\npath = /ws\n"
                                    "origins = https://Desk.example.com/, http://127.0.0.1:8080\n")).websocket
    assert (ws.enabled, ws.port, ws.path) == (True, 9443, "/ws")
    assert ws.origins == frozenset({"https://desk.example.com", "http://127.0.0.1:8080"})


@pytest.mark.parametrize(("text", "key"), [
    ("[websocket]\norigins = desk.example.com\n", "origins"),
    ("[websocket]\npath = sip\n", "path"),
    ("[websocket]\nenabled = yes\ntls = yes\n", "tls_certificate"),
])
def test_bad_websocket_settings_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[websocket\] {key}"):
        load_config(conf(tmp_path, text))


def sdp_with(proto: str) -> Any:
    text = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio 40000 {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n")
    return parse_sdp(text)


def test_only_dtls_offers_are_taken_over_websocket_and_only_through_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    ws = StreamAddress("127.0.0.1", 50000, "WSS")
    for proto in ("RTP/AVP", "RTP/SAVP", "RTP/SAVPF"):
        assert browser_offer_refusal(ws, sdp_with(proto)) is not None, proto
        assert browser_offer_refusal(StreamAddress("127.0.0.1", 50000, "TCP"), sdp_with(proto)) is None
        assert browser_offer_refusal(("127.0.0.1", 5060), sdp_with(proto)) is None
    assert browser_offer_refusal(ws, sdp_with("UDP/TLS/RTP/SAVPF")) == "DTLS-SRTP media is not available"
    monkeypatch.setattr(ivr.browser, "dtls_media", lambda _offer: None)
    assert browser_offer_refusal(ws, sdp_with("UDP/TLS/RTP/SAVPF")) is None
    assert browser_offer_refusal(ws, sdp_with("RTP/SAVP")) is not None, "SDES stays refused with DTLS available"


class Owner:
    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class FakeConnection:
    framer = None
    outbound = False
    closing = None

    def __init__(self, address: StreamAddress) -> None:
        self.address, self.transport_name = address, address.transport
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)


def test_a_peer_on_a_websocket_is_addressed_through_it_and_never_over_udp_once_it_is_gone() -> None:
    async def run() -> None:
        endpoint = SipEndpoint("127.0.0.1", 5060, Owner(), user_agent="t",  # type: ignore[arg-type]
                               websocket=WsSettings("127.0.0.1", 8088))
        sent_udp: list[Any] = []
        endpoint._udp = type("Udp", (), {"sendto": lambda self, data, addr: sent_udp.append(addr)})()
        browser = StreamAddress("127.0.0.1", 50000, "WS")
        connection = FakeConnection(browser)
        endpoint.connections[browser] = connection  # type: ignore[assignment]  # a stand-in for a WsConnection
        assert endpoint.via(browser).startswith("SIP/2.0/WS 127.0.0.1:8088;")
        assert endpoint.contact_for(browser) == "<sip:127.0.0.1:8088;transport=ws>"
        call = endpoint.invite(from_uri="sip:caller@127.0.0.1", from_display=None,
                               request_uri="sip:801@abc.invalid;transport=ws", destination=browser,
                               sdp=build_sdp("127.0.0.1", 40000, 0, "PCMU"))
        assert connection.sent and connection.sent[0].startswith(b"INVITE sip:801@abc.invalid;transport=ws ")
        del endpoint.connections[browser]
        call.cancel()  # the connection closed while it rang: the CANCEL has nowhere to go
        with pytest.raises(ConnectionGone):
            endpoint.invite(from_uri="sip:caller@127.0.0.1", from_display=None,
                            request_uri="sip:801@abc.invalid;transport=ws", destination=browser,
                            sdp=build_sdp("127.0.0.1", 40000, 0, "PCMU"))
        assert endpoint.via(browser).startswith("SIP/2.0/WS "), "a gone connection's peer keeps its transport"
        await asyncio.sleep(0.6)  # past T1: a retransmission would have gone out by now
        endpoint.flush()
        assert sent_udp == [], "nothing for a connection's peer goes over UDP"
        if endpoint._timer is not None:
            endpoint._timer.cancel()

    asyncio.run(run())
