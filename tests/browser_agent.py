"""An agent's browser, played in Python: SIP over a WebSocket (as JsSIP speaks it) and aiortc's WebRTC.

Shared by the end-to-end tests (tests/test_e2e_websocket.py, test_e2e_browser_agent.py,
test_webrtc.py) and the load kit (loadtest/webrtc_bridged_bench.py runs a hundred of them),
so it imports nothing of pytest:

- `WsPhone`: a WebSocket to the IVR's `[websocket]` listener, `.invalid` Via and Contact host;
- `register`: REGISTER with the digest answer (RFC 7616, SHA-256 or MD5) over any such phone;
- `reply`, `header`, `header_values`: SIP text (tests/sip_text.py, shared with the lean load client);
- `browser_answer`: aiortc takes the IVR's DTLS-SRTP offer and answers it (ICE, DTLS on its own);
- `ToneTrack`: the browser's microphone, a sine tone in real-time 20 ms frames;
- `loopback_ice`: aiortc gathers host candidates on 127.0.0.1 only (aioice skips loopback by default);
- run as a program (`python -m tests.browser_agent agent …` from the repository's root), one browser agent on its own: registers over a
  WebSocket (Kamailio's in tests/test_multihost_websocket.py, inside the agents' network namespace), takes a
  number of calls with its tone, hangs up each after a talk time, then closes its WebSocket; what it saw goes
  to a file as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import math
import os
import signal
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

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
             password: str = "pw801", uri: str | None = None, wait: float = 10, request_uri: str | None = None,
             extra: str = "", final_response: list[str] | None = None) -> tuple[list[str], str]:
    """REGISTER, answer the challenge; returns the challenges and the final status line.

    `request_uri`: the REGISTER's (default: the IVR's loopback address); `extra`: more header lines
    ("Supported: path\n"); `final_response`: the whole final response is appended to it."""
    domain = request_uri.partition(":")[2].partition(";")[0].rpartition("@")[2] if request_uri else "127.0.0.1"
    request_uri = request_uri or f"sip:127.0.0.1:{ivr.port}"
    call_id, tag = f"{uuid.uuid4().hex}@127.0.0.1", uuid.uuid4().hex[:8]

    def send(cseq: int, authorization: str | None) -> str:
        auth = f"Authorization: {authorization}\n" if authorization else ""
        phone.send(f"REGISTER {request_uri} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{phone.port};branch=z9hG4bK{uuid.uuid4().hex}\n"
                   f"Max-Forwards: 70\nFrom: <sip:{agent}@{domain}>;tag={tag}\nTo: <sip:{agent}@{domain}>\n"
                   f"Call-ID: {call_id}\nCSeq: {cseq} REGISTER\nContact: <{contact_uri}>\nExpires: 300\n{extra}{auth}"
                   f"Content-Length: 0\n\n")
        got = phone.until(lambda t: t.startswith("SIP/2.0") and f"{cseq} REGISTER" in t, seconds=wait)
        return next(t for _, t in got if t.startswith("SIP/2.0") and f"{cseq} REGISTER" in t)

    first = send(1, None)
    challenges = header_values(first, "WWW-Authenticate")
    chosen = next(c for c in challenges if f"algorithm={algorithm}" in c)
    final = send(2, digest_authorization(chosen, username=agent, password=password, method="REGISTER",
                                         uri=uri or request_uri, algorithm=algorithm))
    if final_response is not None:
        final_response.append(final)
    return challenges, final.split("\r\n", 1)[0]


class WsPhone:
    """An agent's browser as JsSIP is one: SIP in WebSocket messages, a `.invalid` Via and Contact host.

    It speaks like tests' ScriptedPhone (send/until/port), so `register` drives it.
    """

    def __init__(self, ivr: Ivr, ws_port: int, *, origin: str = DESK, path: str = "/sip",
                 tls: bool = False, host: str = "127.0.0.1") -> None:
        self.ivr = ivr
        self.host = f"{uuid.uuid4().hex[:12]}.invalid"
        self.transport = "WSS" if tls else "WS"
        context = None
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the test's own self-signed certificate
        self.ws: ClientConnection = connect(f"{self.transport.lower()}://{host}:{ws_port}{path}",
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


# --- one browser agent as a program (tests/test_multihost_websocket.py runs it in the agents' namespace) -------


class _Elsewhere:
    """The `Ivr` a phone needs, for an IVR behind a balancer: the port it is reached at, no log of its own here."""

    def __init__(self, port: int) -> None:
        self.port = port

    def log(self) -> str:
        return ""


class _Inbox:
    """What the WebSocket brought, kept until asked for: an INVITE that arrives while we wait for a 200 is not lost."""

    def __init__(self, phone: WsPhone) -> None:
        self.phone = phone
        self.kept: list[str] = []

    def wait_for(self, predicate: Callable[[str], bool], seconds: float) -> str:
        end = time.monotonic() + seconds
        while True:
            found = next((t for t in self.kept if predicate(t)), None)
            if found is not None:
                self.kept.remove(found)
                return found
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not seen in {seconds} s: {[t.splitlines()[0] for t in self.kept]}")
            try:
                self.kept += [t for _, t in self.phone.until(predicate, seconds=left)]
            except AssertionError:
                raise TimeoutError(f"not seen in {seconds} s") from None


def run_agent(args: argparse.Namespace) -> int:
    """Register, take `args.calls` calls (180, aiortc's answer with a tone, hang up after `args.talk` s), then
    close the WebSocket after `args.linger` s. Every step is a JSON line in `args.out`, with its wall-clock time."""
    out = Path(args.out).open("a", encoding="utf-8")  # noqa: SIM115 — open for the whole run

    def emit(event: str, **fields: Any) -> None:
        out.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
        out.flush()

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coro: Any, seconds: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(seconds)

    phone = WsPhone(_Elsewhere(args.ws_port), args.ws_port, host=args.host, origin=args.origin, path=args.path)
    inbox = _Inbox(phone)
    contact = f"sip:{args.agent}@{phone.host};transport=ws"
    final: list[str] = []
    _, status = register(phone, phone.ivr, args.agent, contact, password=args.password, request_uri=f"sip:{args.host}",
                         extra="Supported: path, outbound\n", final_response=final)
    emit("registered", status=status, path=header_values(final[0], "Path"), contact=contact, port=phone.port)
    if not status.startswith("SIP/2.0 200"):
        return 1
    for n in range(args.calls):
        invite = inbox.wait_for(lambda t: t.startswith("INVITE "), args.wait)
        offer = invite.split("\r\n\r\n", 1)[1]
        emit("invite", n=n, request_line=invite.split("\r\n", 1)[0], via=header_values(invite, "Via"),
             record_route=header_values(invite, "Record-Route"), contact=header(invite, "Contact"), offer=offer)
        tag = f"b{n}{uuid.uuid4().hex[:6]}"
        phone.ws.send(reply(invite, "180 Ringing", to_tag=tag, contact=contact))
        if args.vanish:  # the browser crashes while it rings: no close frame, the kernel closes the socket
            emit("vanishing", n=n)
            out.close()
            os.kill(os.getpid(), signal.SIGKILL)
        pc, answer, frames = run(browser_answer(offer, ToneTrack(args.tone)), 15)
        phone.ws.send(reply(invite, "200 OK", to_tag=tag, contact=contact, body=answer))
        inbox.wait_for(lambda t: t.startswith("ACK "), 10)
        emit("answered", n=n)
        run(asyncio.sleep(args.talk), args.talk + 10)
        # the agent hangs up: in the dialog, through the route set the INVITE's Record-Route made (§12.1.1)
        routes = [r.strip() for value in header_values(invite, "Record-Route") for r in value.split(",")]
        route = f"Route: {', '.join(routes)}\r\n" if routes else ""
        target = header(invite, "Contact").strip().removeprefix("<").partition(">")[0]
        phone.ws.send(f"BYE {target} SIP/2.0\r\nVia: SIP/2.0/WS {phone.host};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                      f"Max-Forwards: 70\r\n{route}From: {header(invite, 'To')};tag={tag}\r\n"
                      f"To: {header(invite, 'From')}\r\nCall-ID: {header(invite, 'Call-ID')}\r\nCSeq: 1 BYE\r\n"
                      f"Content-Length: 0\r\n\r\n")
        inbox.wait_for(lambda t: t.startswith("SIP/2.0 ") and "BYE" in header(t, "CSeq"), 10)
        heard = []
        while not frames.empty():
            heard.append(frames.get_nowait().to_ndarray().reshape(-1).astype(np.int16))
        loud = sum(1 for f in heard if len(f) and float(np.sqrt(np.mean(f.astype(np.float64) ** 2))) > 300)
        emit("hung_up", n=n, frames=len(heard), loud_frames=loud)
        run(pc.close(), 10)
    time.sleep(args.linger)
    emit("closing")
    phone.close()
    emit("ws_closed")
    loop.call_soon_threadsafe(loop.stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests/browser_agent.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("agent", help="one browser agent over a WebSocket: register, take calls, close")
    a.add_argument("--host", required=True, help="the WebSocket's host (Kamailio's address)")
    a.add_argument("--ws-port", type=int, required=True)
    a.add_argument("--path", default="/")
    a.add_argument("--origin", default=DESK)
    a.add_argument("--agent", required=True)
    a.add_argument("--password", required=True)
    a.add_argument("--calls", type=int, default=1)
    a.add_argument("--talk", type=float, default=6.0, help="seconds from the answer to the agent's BYE")
    a.add_argument("--tone", type=float, default=1500.0, help="the browser's microphone, Hz")
    a.add_argument("--wait", type=float, default=90.0, help="seconds to wait for each INVITE")
    a.add_argument("--linger", type=float, default=1.0, help="seconds after the last call before closing")
    a.add_argument("--vanish", action="store_true", help="killed (SIGKILL) once the first INVITE rings")
    a.add_argument("--out", required=True, help="JSON lines of what happened")
    args = p.parse_args(argv)
    return run_agent(args)


if __name__ == "__main__":
    sys.exit(main())
