"""An agent's browser, played in Python: SIP over a WebSocket (as JsSIP speaks it) and aiortc's WebRTC.

Shared by the end-to-end tests (tests/test_e2e_websocket.py, test_e2e_browser_agent.py,
test_webrtc.py) and the load kit (loadtest/webrtc_bridged_bench.py runs a hundred of them),
so it imports nothing of pytest:

- `WsPhone`: a WebSocket to the IVR's `[websocket]` listener, `.invalid` Via and Contact host;
- `register`: REGISTER with the digest answer (RFC 7616, SHA-256 or MD5) over any such phone;
- `reply`, `header`, `header_values`: SIP text (tests/sip_text.py, shared with the lean load client);
- `browser_answer`: aiortc takes the IVR's DTLS-SRTP offer and answers it (ICE, DTLS on its own);
- `ToneTrack`: the browser's microphone, a sine tone in real-time 20 ms frames;
- `loopback_ice`: aiortc gathers host candidates on 127.0.0.1 only (aioice skips loopback by default).
"""

from __future__ import annotations

import asyncio
import fractions
import math
import ssl
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import aioice.ice
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

from tests.sip_text import digest_authorization, header_values
from tests.sip_text import header as header  # re-exported: the e2e tests import them from here
from tests.sip_text import reply as reply

RATE = 8000
FRAME = 160
DESK = "https://desk.example.com"  # the page allowed to connect ([websocket] origins) in the tests and the bench


class Ivr(Protocol):
    """What a phone needs of the IVR under test: its SIP port, and its log for a failure's message."""

    port: int

    def log(self) -> str: ...


class Phone(Protocol):
    """What `register` drives: tests' ScriptedPhone (UDP), StreamPhone (TCP), WsPhone."""

    port: int

    def send(self, text: str) -> None: ...

    def until(self, predicate: Callable[[str], bool], seconds: float = 10) -> list[tuple[float, str]]: ...


def register(phone: Phone, ivr: Ivr, agent: str, contact_uri: str, *, algorithm: str = "SHA-256",
             password: str = "pw801", uri: str | None = None, wait: float = 10) -> tuple[list[str], str]:
    """REGISTER, answer the challenge; returns the challenges and the final status line."""
    request_uri = f"sip:127.0.0.1:{ivr.port}"
    call_id, tag = f"{uuid.uuid4().hex}@127.0.0.1", uuid.uuid4().hex[:8]

    def send(cseq: int, authorization: str | None) -> str:
        auth = f"Authorization: {authorization}\n" if authorization else ""
        phone.send(f"REGISTER {request_uri} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{phone.port};branch=z9hG4bK{uuid.uuid4().hex}\n"
                   f"Max-Forwards: 70\nFrom: <sip:{agent}@127.0.0.1>;tag={tag}\nTo: <sip:{agent}@127.0.0.1>\n"
                   f"Call-ID: {call_id}\nCSeq: {cseq} REGISTER\nContact: <{contact_uri}>\nExpires: 300\n{auth}"
                   f"Content-Length: 0\n\n")
        got = phone.until(lambda t: t.startswith("SIP/2.0") and f"{cseq} REGISTER" in t, seconds=wait)
        return next(t for _, t in got if t.startswith("SIP/2.0") and f"{cseq} REGISTER" in t)

    first = send(1, None)
    challenges = header_values(first, "WWW-Authenticate")
    chosen = next(c for c in challenges if f"algorithm={algorithm}" in c)
    final = send(2, digest_authorization(chosen, username=agent, password=password, method="REGISTER",
                                         uri=uri or request_uri, algorithm=algorithm))
    return challenges, final.split("\r\n", 1)[0]


class WsPhone:
    """An agent's browser as JsSIP is one: SIP in WebSocket messages, a `.invalid` Via and Contact host.

    It speaks like tests' ScriptedPhone (send/until/port), so `register` drives it.
    """

    def __init__(self, ivr: Ivr, ws_port: int, *, origin: str = DESK, path: str = "/sip",
                 tls: bool = False) -> None:
        self.ivr = ivr
        self.host = f"{uuid.uuid4().hex[:12]}.invalid"
        self.transport = "WSS" if tls else "WS"
        context = None
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the test's own self-signed certificate
        self.ws: ClientConnection = connect(f"{self.transport.lower()}://127.0.0.1:{ws_port}{path}",
                                            subprotocols=[Subprotocol("sip")], origin=Origin(origin), open_timeout=5,
                                            ssl=context).__enter__()
        self.port = self.ws.socket.getsockname()[1]
        self.closed = False

    def close(self) -> None:
        self.ws.close()

    def send(self, text: str) -> None:
        text = text.replace("SIP/2.0/UDP 127.0.0.1", f"SIP/2.0/{self.transport} {self.host}")
        self.ws.send(text.replace("\r\n", "\n").replace("\n", "\r\n"))

    def until(self, predicate: Callable[[str], bool], seconds: float = 10) -> list[tuple[float, str]]:
        got: list[tuple[float, str]] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                message = self.ws.recv(timeout=max(0.01, end - time.monotonic()))
            except TimeoutError:
                break
            text = message if isinstance(message, str) else message.decode()
            got.append((time.monotonic(), text))
            if predicate(text):
                return got
        seen = [t.splitlines()[0] for _, t in got]
        raise AssertionError(f"not seen in {seconds} s: {seen}\n{self.ivr.log()[-3000:]}")


def loopback_ice() -> None:
    """aiortc's ICE gathers host candidates on 127.0.0.1 only (aioice skips loopback by default)."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


def tone(freq: float, start: int, n: int = FRAME, amplitude: float = 8000.0) -> np.ndarray:
    t = (np.arange(n) + start) / RATE
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.int16)


class ToneTrack(MediaStreamTrack):
    """An audio track of a sine tone in 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self, freq: float) -> None:
        super().__init__()
        self.freq = freq
        self.pts = 0
        self.start: float | None = None

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self.start is None:
            self.start = loop.time()
        wait = self.start + self.pts / RATE - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        samples = tone(self.freq, self.pts)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, RATE)
        self.pts += FRAME
        return frame


async def browser_answer(offer: str, track: MediaStreamTrack | None) -> tuple[RTCPeerConnection, str,
                                                                               asyncio.Queue[av.AudioFrame]]:
    """aiortc takes the IVR's offer and answers it: the peer connection, its SDP answer, the frames it hears."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    frames: asyncio.Queue[av.AudioFrame] = asyncio.Queue()

    @pc.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        async def pump() -> None:
            while True:
                try:
                    frames.put_nowait(await remote.recv())
                except Exception:
                    return
        asyncio.ensure_future(pump())

    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    if track is not None:
        transceiver = pc.getTransceivers()[0]
        transceiver.sender.replaceTrack(track)
        transceiver.direction = "sendrecv"
    answer = await pc.createAnswer()
    await pc.setLocalDescription(answer)  # gathers (loopback), starts ICE and DTLS
    return pc, pc.localDescription.sdp, frames
