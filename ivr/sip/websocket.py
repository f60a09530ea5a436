"""SIP over WebSocket (RFC 7118): the WS and WSS listener of the SIP endpoint.

A browser cannot open UDP or TCP sockets; JsSIP and the like carry SIP in
WebSocket messages instead, one SIP message per WebSocket message (RFC 7118
§5), so no Content-Length framing is needed. The handshake must ask for the
`sip` subprotocol (a client that does not is refused 400 by the library), on
the configured path, from an allowed Origin: a page served from another
origin must not be able to log an agent in with credentials it phished, so a
foreign Origin is refused 403 before any SIP is read and counted as an
authentication failure by the owner (repeated ones ban the source, as wrong
digest passwords do). A banned source is refused at the handshake too.

The browser cannot be reached at an address of its own: its Via and Contact
name a made-up `*.invalid` host (RFC 7118 §5.2). Responses go back down the
connection the request came on (the endpoint answers a connection's request
on it), and the agent registered over it is reached through the same
connection: its binding's address is the connection's `StreamAddress`. When
the connection closes the endpoint tells its owner, which drops the binding at
once. Dead peers (a laptop lid closed, a Wi-Fi drop) are found by the
library's WebSocket pings (`ping_interval`, `ping_timeout`).

`WsConnection` quacks like the endpoint's TCP connection (`write`, `shut`,
`address`, `closing`): the endpoint keeps both in one table.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, Protocol

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ivr.sip.connections import StreamAddress

log = structlog.get_logger("ivr.sip")

SUBPROTOCOL: Final = "sip"
MAX_MESSAGE: Final = 64 * 1024  # as on a stream (ivr.sip.stream.MAX_MESSAGE)
MAX_QUEUED: Final = 256  # messages waiting for a peer that does not read: it is dropped


@dataclass(frozen=True, slots=True)
class WsSettings:
    """Where and how the WebSocket listener runs (from [websocket] in sip.conf)."""

    bind: str
    port: int
    path: str = "/sip"
    ssl: ssl.SSLContext | None = None  # WSS when set
    origins: frozenset[str] = frozenset()  # allowed Origin values; empty: only requests without Origin (not browsers)
    ping_interval: float = 20.0
    ping_timeout: float = 20.0

    @property
    def transport(self) -> str:
        return "WSS" if self.ssl is not None else "WS"


class WsConnection:
    """One accepted WebSocket: a queue of SIP messages to send, written in order by one task."""

    framer = None  # each WebSocket message is one SIP message: nothing to frame, no idle clock
    outbound = False

    def __init__(self, socket: ServerConnection, address: StreamAddress) -> None:
        self.socket = socket
        self.address = address
        self.transport_name = address.transport
        self.closing: str | None = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    @property
    def peer(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def write(self, data: bytes) -> None:
        if self.closing is not None:
            return
        if self._queue.qsize() >= MAX_QUEUED:
            self.closing = f"peer not reading ({MAX_QUEUED} messages queued)"
            self._queue.put_nowait(None)
            return
        self._queue.put_nowait(data)

    def shut(self, abort: bool = False) -> None:
        """Close after what is queued (or at once with `abort`)."""
        if abort:
            self.socket.transport.abort()
        else:
            self._queue.put_nowait(None)

    async def writer(self) -> None:
        while (data := await self._queue.get()) is not None:
            try:
                # SIP is text; a body that is not UTF-8 goes in a binary message (RFC 7118 §5.1)
                await self.socket.send(data.decode("utf-8"))
            except UnicodeDecodeError:
                await self.socket.send(data)
        await self.socket.close(1000, self.closing or "")


class WsOwner(Protocol):
    """What the listener asks of the endpoint (ivr.sip.endpoint.SipEndpoint), and tells it."""

    def ws_admit(self, source: tuple[str, int], origin: str | None, path: str) -> tuple[int, str] | None:
        """None to accept the handshake, or the (status, reason) to refuse it with."""
        ...

    def connection_made(self, connection: WsConnection) -> None: ...

    def ws_message(self, connection: WsConnection, data: bytes) -> None: ...

    def connection_lost(self, connection: WsConnection, exc: Exception | None) -> None: ...


async def start_listener(endpoint: WsOwner, settings: WsSettings) -> Server:
    """Listen for SIP over WebSocket; each accepted connection is served until it closes."""
    def admit(socket: ServerConnection, request: Request) -> Response | None:
        peer = socket.remote_address
        refusal = endpoint.ws_admit((str(peer[0]), int(peer[1])), request.headers.get("Origin"),
                                    request.path.partition("?")[0])
        if refusal is None:
            return None
        status, reason = refusal
        return socket.respond(HTTPStatus(status), f"{reason}\n")

    async def handle(socket: ServerConnection) -> None:
        peer = socket.remote_address
        connection = WsConnection(socket, StreamAddress(str(peer[0]), int(peer[1]), settings.transport))
        endpoint.connection_made(connection)
        writer = asyncio.get_running_loop().create_task(connection.writer())
        error: Exception | None = None
        try:
            async for message in socket:
                endpoint.ws_message(connection, message.encode("utf-8") if isinstance(message, str) else message)
        except ConnectionClosed as exc:
            error = exc if exc.rcvd is None else None  # no close frame: the peer vanished (ping timeout, reset)
        finally:
            writer.cancel()
            endpoint.connection_lost(connection, error)

    return await serve(handle, settings.bind, settings.port, ssl=settings.ssl, subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                       process_request=admit, ping_interval=settings.ping_interval,
                       ping_timeout=settings.ping_timeout, max_size=MAX_MESSAGE, server_header=None)
