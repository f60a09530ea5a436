"""The SIP endpoint: the UDP, TCP, TLS and WebSocket transports, and dispatch between them, the layer and the calls.

This is the edge where SIP meets the network. A datagram, or a message framed
off a TCP/TLS connection (`ivr.sip.stream`), is parsed (the
message syntax is aiosipua's), screened by the owner (per-source limits, RFC
3261 request checks), and fed to the sans-IO transaction layer
(`ivr.sip.transactions`), which absorbs retransmissions. What is new is
dispatched to a call (`ivr.sip.calls`) and the owner: an INVITE becomes an
`InboundCall` and `on_invite`; a CANCEL finds the INVITE it cancels; BYE,
INFO, REFER and re-INVITE find their call by the dialog's key; REGISTER goes to
`on_register`. `invite` places a call (an agent leg) as an `OutboundCall`, and
the responses to its INVITE go to it. Everything the layer wants sent is
flushed after each datagram and each timer; one loop timer serves every
transaction.

Responses go where RFC 3261 §18.2.2 says: to the source address, at the
port of the top Via's sent-by, or at the source port when the Via asks for
rport (RFC 3581). A request that came on a connection is answered on that
connection, and the layer is told it is reliable (no retransmissions). The
layer addresses everything by (host, port); a `StreamAddress` is such a pair
that remembers it belongs to a connection. Requests we send go on a live
connection with the destination when there is one (an agent's phone that
registered over TCP), else on a TCP connection we open when the phone's URI asks
for `;transport=tcp`, else over UDP; their Via and Contact name the transport.

SIP over WebSocket (RFC 7118, `ivr.sip.websocket`) is one more kind of
connection in the same table. A peer that registered over a connection is
reached through it alone: a request for a `StreamAddress` whose connection has
closed is never sent over UDP (`invite` raises `ConnectionGone`), and the owner
is told when an accepted connection closes (`on_connection_closed`), so the
registration bound to it goes at once. Connections a registration is bound to
are never closed as idle and get RFC 5626 CRLF pings; the kernel's keep-alives
and TCP_USER_TIMEOUT close them when the peer's machine stops answering.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

import structlog
from aiosipua.message import SipMessage, SipRequest, SipResponse, missing_required_headers
from aiosipua.sdp import SdpMessage, serialize_sdp

from ivr.sip.calls import InboundCall, OutboundCall
from ivr.sip.connections import ConnectionGone, StreamAddress, StreamConnection
from ivr.sip.dialogs import Dialog, make_response, new_branch, new_call_id, new_tag
from ivr.sip.stream import MESSAGE_SECONDS, PING, PONG, Broken, Framed, Ping, StreamFramer
from ivr.sip.transactions import (
    AckReceived,
    ClientTransaction,
    Overloaded,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    SipTransactions,
    TransactionTimeout,
    header_tag,
    parse_top_via,
)
from ivr.sip.websocket import WsConnection, WsSettings, start_listener

log = structlog.get_logger("ivr.sip")

Address = tuple[str, int]
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, REGISTER"
# Methods we know and do not take (405 with Allow); a method nobody knows is the
# request checks' 501. REFER (RFC 3515) is taken only from the agent inside a
# bridged call (a blind transfer); from a caller it is refused outright (501):
# no toll-fraud path.
NOT_ALLOWED = {"MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "PRACK", "UPDATE"}
DialogKey = tuple[str, str, str]
Headers = list[tuple[str, str]]  # in order; a name may repeat (two WWW-Authenticate challenges)
SWEEP_SECONDS = 1.0  # how often connections are checked against the idle and message deadlines


class EndpointOwner(Protocol):
    """What the endpoint asks of the engine."""

    def screen(self, request: SipRequest, source: Address, request_line: str) -> bool:
        """A request off the wire: True to process it; False when refused (answered or dropped)."""
        ...

    def on_invite(self, call: InboundCall) -> None: ...

    def on_bye(self, call: InboundCall | OutboundCall) -> None: ...

    def on_cancel(self, call: InboundCall) -> None: ...

    def on_ack_timeout(self, call: InboundCall) -> None: ...

    def on_info(self, call: InboundCall, request: SipRequest) -> None: ...

    def on_register(self, request: SipRequest, source: Address) -> tuple[int, str, Headers]: ...

    def on_refer(self, call: OutboundCall, request: SipRequest) -> tuple[int, str, Callable[[], None] | None]:
        """A REFER from an agent's leg: (status, reason, what to do once 202 and its NOTIFY are sent)."""
        ...

    def on_hold(self, call: OutboundCall, held: bool) -> None:
        """An agent's phone put its call on hold (re-INVITE sendonly or inactive), or took it off hold."""
        ...

    def on_connection_closed(self, address: StreamAddress) -> None:
        """A TCP, TLS or WebSocket connection is gone: what was bound to it (a registration) goes with it."""
        ...

    def ws_refused(self, source: Address, reason: str) -> None:
        """A WebSocket handshake refused for a reason that counts as a failed authentication (foreign Origin)."""
        ...

    def banned(self, host: str) -> bool:
        """The source is barred (too many failed authentications): no WebSocket for it either."""
        ...

    def bound_connections(self) -> Collection[Address]:
        """The connections a registration is bound to: never idle-closed, kept alive with pings."""
        ...


def response_address(request: SipRequest, source: Address) -> Address:
    """Where a response to `request` goes (RFC 3261 §18.2.2, RFC 3581)."""
    if isinstance(source, StreamAddress):
        return source  # §18.2.2: on the connection the request came on
    raw = request.headers.get_first("via") or ""
    via = parse_top_via(raw)
    if via is None or via.rport is not None:
        return source
    # over UDP the port is the sent-by's, or 5060 when it names none — whatever transport the Via claims
    explicit = ":" in raw.partition(";")[0].strip().rpartition(" ")[2].rpartition("]")[2]
    return (source[0], via.port if explicit else 5060)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.endpoint.datagram_received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.warning("sip_udp_error", error=str(exc))


class SipEndpoint:
    """One SIP endpoint on UDP, TCP and TLS: see the module docstring."""

    def __init__(self, bind: str, port: int, owner: EndpointOwner, *, user_agent: str,
                 advertised: str | None = None, transports: frozenset[str] = frozenset({"udp"}),
                 tls_port: int = 5061, tls_certificate: str | None = None, tls_key: str | None = None,
                 idle_seconds: float = 300.0, max_connections: int = 1000, websocket: WsSettings | None = None,
                 keepalive_seconds: float = 30.0) -> None:
        self.bind, self.port = bind, port
        self.owner = owner
        self.user_agent = user_agent
        self.host = advertised or bind
        self.contact = f"<sip:{self.host}:{port}>"
        self.transports = frozenset(t.lower() for t in transports)
        self.tls_port = tls_port
        self.tls_certificate, self.tls_key = tls_certificate, tls_key
        self.idle_seconds = idle_seconds
        self.max_connections = max_connections
        self.connections: dict[Address, StreamConnection | WsConnection] = {}  # by the peer's plain (host, port)
        self.websocket = websocket
        self.keepalive_seconds = keepalive_seconds
        self._stopping = False
        self._ws_server: Any = None
        self._servers: list[asyncio.Server] = []
        self._connecting: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.transactions = SipTransactions()
        self.dialogs: dict[DialogKey, InboundCall | OutboundCall] = {}
        self.calls: dict[ServerTransaction, InboundCall] = {}  # INVITEs not yet answered finally
        self.outbound: dict[ClientTransaction, OutboundCall] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.load_report: Callable[[], int] | None = None  # the owner's load, 0-100, for X-Hotline-Load
        self._timer_at: float | None = None
        self.request_line = ""

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on every configured transport; a port in use is an OSError that names the listener."""
        loop = asyncio.get_running_loop()
        try:
            if "udp" in self.transports:
                listener = f"SIP UDP {self.bind}:{self.port}"
                transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self),
                                                                   local_addr=(self.bind, self.port))
                self._udp = transport
            if "tcp" in self.transports:
                listener = f"SIP TCP {self.bind}:{self.port}"
                self._servers.append(await loop.create_server(
                    lambda: StreamConnection(self, "TCP"), self.bind, self.port, reuse_address=True))
            if "tls" in self.transports:
                listener = f"SIP TLS {self.bind}:{self.tls_port}"
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(self.tls_certificate or "", self.tls_key)
                self._servers.append(await loop.create_server(
                    lambda: StreamConnection(self, "TLS"), self.bind, self.tls_port, ssl=context,
                    ssl_handshake_timeout=MESSAGE_SECONDS, reuse_address=True))
            if self.websocket is not None:
                ws = self.websocket
                listener = f"SIP {ws.transport} {ws.bind}:{ws.port}{ws.path}"
                self._ws_server = await start_listener(self, ws)
        except OSError as exc:
            await self.stop()
            raise OSError(f"{listener}: {exc.strerror or exc} (is another process listening there?)") from None
        if self._servers or self._ws_server is not None:
            self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    async def stop(self) -> None:
        self._stopping = True  # connections closed now take no registration with them: the process ends
        if self._timer is not None:
            self._timer.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self._servers:
            server.close()
        if self._ws_server is not None:
            self._ws_server.close(close_connections=False)  # each is shut below, after what is queued to it
            self._ws_server = None
        for connection in list(self.connections.values()):
            self.close_connection(connection, "shutting down")
        self._servers.clear()
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    # --- the four doors of the transaction layer, driven by the loop --------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def flush(self) -> None:
        """Send what the layer queued and re-arm the one timer."""
        udp = self._udp
        for data, addr in self.transactions.datagrams_to_send():
            # a response to a request that came on a connection; a request to a peer we hold a connection with
            if isinstance(addr, StreamAddress) or (
                    self.connections and addr in self.connections and not data.startswith(b"SIP/2.0 ")):
                connection = self.connections.get(addr)
                if connection is not None:
                    connection.write(data)
                else:
                    log.info("sip_connection_gone", peer=f"{addr[0]}:{addr[1]}",
                             line=data[:60].decode("utf-8", "replace"))
            elif udp is not None:
                udp.sendto(data, addr)
        deadline = self.transactions.get_timer()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer) if deadline is not None else None

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        for timeout in self.transactions.handle_timer(self._now()):
            self._timed_out(timeout)
        self.flush()

    def datagram_received(self, data: bytes, source: Address) -> None:
        try:
            self._datagram(data, source)
        except Exception:  # noqa: BLE001 — one message must never take the endpoint down
            log.exception("sip_handler_error", source=f"{source[0]}:{source[1]}", line=self.request_line[:120])
        finally:
            self.flush()

    def _datagram(self, data: bytes, source: Address) -> None:
        if not data.strip():
            return  # a keep-alive CRLF (RFC 5626 §3.5.1)
        self._message(data, source)

    def _message(self, data: bytes, source: Address) -> None:
        end = data.find(b"\n", 0, 8192)
        self.request_line = data[: end if end >= 0 else 8192].rstrip(b"\r").decode("utf-8", "replace")
        try:
            message = SipMessage.parse(data)
        except Exception as exc:  # noqa: BLE001 — anything the parser chokes on is dropped and logged
            log.warning("sip_bad_request", source=f"{source[0]}:{source[1]}", error=f"unparseable: {exc}"[:200])
            return
        if isinstance(message, SipResponse):
            self._response(message, source)
        else:
            self._request(message, source)

    # --- connections (TCP, TLS) ---------------------------------------------------------

    def connection_made(self, connection: StreamConnection | WsConnection) -> None:
        if isinstance(connection, WsConnection):
            self._accepted(connection)
            return
        if connection.outbound:
            assert connection.transport is not None
            if connection.closing is not None:  # given up on while connecting
                connection.transport.abort()
                return
            log.info("sip_connection_opened", transport=connection.transport_name, peer=connection.peer,
                     outbound=True)
            for data in connection.pending:
                connection.transport.write(data)
            connection.pending.clear()
            return
        if len(self.connections) >= self.max_connections:
            connection.closing = f"max_connections ({self.max_connections}) reached"
            log.warning("sip_connection_refused", transport=connection.transport_name, peer=connection.peer,
                        reason=connection.closing)
            assert connection.transport is not None
            connection.transport.abort()
            return
        connection.framer = StreamFramer(self._now(), idle_seconds=self.idle_seconds)
        self._accepted(connection)

    def _accepted(self, connection: StreamConnection | WsConnection) -> None:
        if isinstance(connection, WsConnection) and len(self.connections) >= self.max_connections:
            connection.closing = f"max_connections ({self.max_connections}) reached"
            log.warning("sip_connection_refused", transport=connection.transport_name, peer=connection.peer,
                        reason=connection.closing)
            connection.shut()
            return
        old = self.connections.get(connection.address)
        if old is not None:
            self.close_connection(old, "replaced by a new connection from the same address")
        self.connections[connection.address] = connection
        log.info("sip_connection_opened", transport=connection.transport_name, peer=connection.peer)

    def connect(self, destination: Address) -> None:
        """Open a TCP connection to `destination`; what is sent to it meanwhile waits for the connect."""
        address = StreamAddress(destination[0], destination[1], "TCP")
        connection = StreamConnection(self, "TCP", address)
        connection.framer = StreamFramer(self._now(), idle_seconds=self.idle_seconds)
        self.connections[address] = connection
        task = asyncio.get_running_loop().create_task(self._connect(connection))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, connection: StreamConnection) -> None:
        host, port = connection.address
        try:
            await asyncio.wait_for(asyncio.get_running_loop().create_connection(lambda: connection, host, port),
                                   MESSAGE_SECONDS)
        except (OSError, TimeoutError) as exc:
            self.close_connection(connection, f"connect failed: {exc or type(exc).__name__}"[:200])

    def connection_lost(self, connection: StreamConnection | WsConnection, exc: Exception | None) -> None:
        if connection.closing is None:
            connection.closing = "closed by peer" if exc is None else f"lost: {exc}"[:200]
            log.info("sip_connection_closed", transport=connection.transport_name, peer=connection.peer,
                     reason=connection.closing, messages=connection.framer.messages if connection.framer else 0)
        self._gone(connection)

    def close_connection(self, connection: StreamConnection | WsConnection, reason: str, *,
                         abort: bool = False) -> None:
        """Close a connection (after what is queued to it, unless `abort`), and log why."""
        if connection.closing is not None:
            return
        connection.closing = reason
        log.info("sip_connection_closed", transport=connection.transport_name, peer=connection.peer, reason=reason,
                 messages=connection.framer.messages if connection.framer else 0)
        self._gone(connection)
        connection.shut(abort)

    def _gone(self, connection: StreamConnection | WsConnection) -> None:
        """The connection no longer carries messages: the owner drops what was bound to it, at once."""
        if self.connections.get(connection.address) is not connection:
            return
        del self.connections[connection.address]
        if not connection.outbound and not self._stopping:  # a registration is bound to a connection the phone opened
            try:
                self.owner.on_connection_closed(connection.address)
            except Exception:  # noqa: BLE001 — a connection's end must never take the endpoint down
                log.exception("sip_connection_closed_handler_error", peer=connection.peer)
            self.flush()  # CANCELs to what rang there are dropped, not sent over UDP

    def ws_admit(self, source: Address, origin: str | None, path: str) -> tuple[int, str] | None:
        """A WebSocket handshake: None to accept it, else the HTTP (status, reason) that refuses it."""
        ws = self.websocket
        assert ws is not None
        where = f"{source[0]}:{source[1]}"
        if self.owner.banned(source[0]):
            log.warning("sip_websocket_refused", source=where, status=403, reason="source banned")
            return 403, "Forbidden"
        if path != ws.path:
            log.warning("sip_websocket_refused", source=where, status=404, reason=f"path {path[:60]!r}")
            return 404, "Not Found"
        if origin is not None and origin.rstrip("/").lower() not in ws.origins:
            # a page on another origin must not log an agent in: refused and counted towards a ban
            log.warning("sip_websocket_refused", source=where, status=403, reason=f"origin {origin[:80]!r}")
            self.owner.ws_refused(source, f"origin {origin[:80]} not allowed")
            return 403, "Forbidden"
        return None

    def ws_message(self, connection: WsConnection, data: bytes) -> None:
        """One WebSocket message: one SIP message (RFC 7118 §5)."""
        if connection.closing is not None:
            return
        try:
            if data.strip():  # a CRLF keep-alive some clients send over WebSocket too
                self._message(data, connection.address)
        except Exception:  # noqa: BLE001 — one message must never take the endpoint down
            log.exception("sip_handler_error", source=connection.peer, line=self.request_line[:120])
        finally:
            self.flush()

    def stream_received(self, connection: StreamConnection, data: bytes) -> None:
        framer = connection.framer
        if framer is None or connection.closing is not None:
            return
        try:
            for event in framer.feed(data, self._now()):
                if isinstance(event, Framed):
                    self._message(event.data, connection.address)
                elif isinstance(event, Ping):
                    connection.write(PONG)  # RFC 5626 §3.5.1
                elif isinstance(event, Broken):
                    if event.status is not None:
                        self._answer_broken(connection, event)
                    self.close_connection(connection, event.reason)
        except Exception:  # noqa: BLE001 — one message must never take the endpoint down
            log.exception("sip_handler_error", source=connection.peer, line=self.request_line[:120])
        finally:
            self.flush()

    def _answer_broken(self, connection: StreamConnection, broken: Broken) -> None:
        """A 400 to a message that cannot be framed, when its head is a request we can answer."""
        try:
            request = SipMessage.parse(broken.head + b"\r\n")
        except Exception:  # noqa: BLE001 — nothing to answer
            return
        if not isinstance(request, SipRequest) or request.method == "ACK" or not request.headers.get_first("via"):
            return
        log.warning("sip_bad_request", source=connection.peer, method=request.method[:20], status=400,
                    error=broken.reason)
        connection.write(bytes(make_response(request, 400, "Missing Content-Length", to_tag=new_tag())))

    def _sweep(self) -> None:
        """Close connections past their idle or message deadline; re-arms itself."""
        now = self._now()
        busy = {c.source_addr if isinstance(c, InboundCall) else c.destination for c in self.dialogs.values()}
        bound = set(self.owner.bound_connections())
        try:
            for connection in list(self.connections.values()):
                if connection.framer is None:
                    continue  # a WebSocket: its pings find a dead peer
                # a call's connection stays up however quiet the call is: its BYE must find the way;
                # a registration's too, for the calls to come
                reason = connection.framer.expired(now, busy=connection.address in busy or connection.address in bound)
                if reason is not None:
                    self.close_connection(connection, reason, abort=True)
                elif (isinstance(connection, StreamConnection) and connection.address in bound
                      and self.keepalive_seconds and now - connection.pinged >= self.keepalive_seconds):
                    # RFC 5626 §4.4.1's ping, from our side: the phone may pong or ignore it (RFC 3261 §7.5),
                    # but its machine must acknowledge the bytes within TCP_USER_TIMEOUT or the kernel
                    # drops the connection, which unbinds the agent (a half-open connection is found)
                    connection.pinged = now
                    connection.write(PING)
        finally:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)

    # --- requests -----------------------------------------------------------------------

    def _request(self, request: SipRequest, source: Address) -> None:
        # a retransmission is answered from its transaction: it passed the screen once, and a
        # rate budget must not count it as a new call (its original may have been taken)
        if (not self.transactions.is_retransmission(request)
                and not self.owner.screen(request, source, self.request_line)):
            return
        missing = missing_required_headers(request)
        if missing:
            log.warning("sip_bad_request", source=f"{source[0]}:{source[1]}", method=request.method[:20],
                        status=400, error=f"missing {', '.join(missing)}")
            if "via" not in missing and request.method != "ACK":
                self.reply(request, source, 400, "Missing Required Header")
            return
        try:
            event = self.transactions.receive_request(request, response_address(request, source), self._now(),
                                                      reliable=isinstance(source, StreamAddress))
        except Overloaded:
            self.reply(request, source, 503, "Service Unavailable", {"Retry-After": "5"})
            return
        if isinstance(event, AckReceived):
            return  # the layer stopped the 2xx retransmissions; a stray ACK needs nothing
        if event is None:
            return  # a retransmission, answered from the transaction
        self._new_request(event, source)

    def _new_request(self, event: RequestReceived, source: Address) -> None:
        request, transaction = event.request, event.transaction
        method = request.method
        if method == "INVITE":
            if header_tag(request.headers.get_first("to")):
                self._reinvite(request, transaction, source)
                return
            try:
                call = InboundCall(self, transaction, source)
            except ValueError as exc:  # aiosipua's SDP parser: a body it cannot read
                log.warning("sip_bad_request", source=_where(source), method="INVITE", status=400,
                            error=f"unreadable SDP: {exc}"[:200])
                self.respond(transaction, make_response(request, 400, "Bad Request (SDP)"))
                return
            self.calls[transaction] = call
            try:
                self.owner.on_invite(call)
            finally:
                # §17.2.1: a 100 only when nothing better went out at once — the IVR usually
                # answers 180 (or refuses) while handling the INVITE, and a 100 then is a datagram
                # and a serialisation per call for nothing
                if transaction.last_response is None:
                    self.respond(transaction, make_response(request, 100, "Trying"))
        elif method == "BYE":
            found = self.dialogs.get(_dialog_key(request))
            if found is None:
                self.respond(transaction, make_response(request, 481, "Call/Transaction Does Not Exist"))
                return
            self.respond(transaction, make_response(request, 200, "OK"))
            found.terminated()
            self.owner.on_bye(found)
        elif method == "CANCEL":
            cancelled = self.calls.get(event.cancels) if event.cancels is not None else None
            if cancelled is None or cancelled.ended:
                # §9.2: no such INVITE -> 481; one already answered finally -> 200, and no effect
                known = event.cancels is not None
                self.respond(transaction, make_response(request, 200 if known else 481,
                                                        "OK" if known else "Call/Transaction Does Not Exist"))
                return
            self.respond(transaction, make_response(request, 200, "OK", to_tag=cancelled.local_tag))
            cancelled.reject(487, "Request Terminated")
            cancelled.terminated()
            self.owner.on_cancel(cancelled)
        elif method == "OPTIONS":
            headers = [("Allow", ALLOW), ("Accept", "application/sdp"), ("User-Agent", self.user_agent)]
            if self.load_report is not None:  # a balancer's probe reads how busy this worker is
                headers.append(("X-Hotline-Load", str(self.load_report())))
            self.respond(transaction, make_response(request, 200, "OK", headers=headers))
        elif method == "INFO":
            found = self._in_dialog(request, transaction, callers_only=True)
            if not isinstance(found, InboundCall):
                return
            self.respond(transaction, make_response(request, 200, "OK"))
            self.owner.on_info(found, request)
        elif method == "REGISTER":
            status, reason, headers = self.owner.on_register(request, source)
            self.respond(transaction, make_response(request, status, reason,
                                                    to_tag=new_tag() if status >= 200 else None, headers=headers))
        elif method == "REFER":
            self._refer(request, transaction)
        else:
            self.respond(transaction, make_response(request, 405, "Method Not Allowed", headers=[("Allow", ALLOW)]))

    def _refer(self, request: SipRequest, transaction: ServerTransaction) -> None:
        """RFC 3515: an agent's blind transfer — 202, then the outcome as a message/sipfrag NOTIFY."""
        found = self._in_dialog(request, transaction)
        if found is None:
            return
        if isinstance(found, InboundCall):  # a caller may not make the hotline call anyone: as before transfers, 501
            log.warning("refer_refused", call_id=found.call_id, reason="REFER from a caller")
            self.respond(transaction, make_response(request, 501, "Not Implemented"))
            return
        status, reason, proceed = self.owner.on_refer(found, request)
        self.respond(transaction, make_response(request, status, reason))
        if status != 202 or found.dialog is None:  # _in_dialog found one; the check is for the type
            return
        # RFC 3515 §2.4.4-5: the implicit subscription's one NOTIFY. The IVR carries the transfer out
        # itself (B2BUA), so it is final at once: 200, and the subscription ends with it.
        notify = found.dialog.create_request(
            "NOTIFY", via=self.via(found.destination),
            headers=[("Event", "refer"), ("Subscription-State", "terminated;reason=noresource"),
                     ("Contact", self.contact_for(found.destination))],
            body=b"SIP/2.0 200 OK\r\n", content_type="message/sipfrag;version=2.0",
        )
        self.send_request(notify, found.destination)
        if proceed is not None:
            proceed()

    def _in_dialog(self, request: SipRequest, transaction: ServerTransaction, *,
                   callers_only: bool = False) -> InboundCall | OutboundCall | None:
        """The live call a request inside a dialog belongs to (§12.2.2), or None once it is answered:
        481 for a dialog we do not have (or, with `callers_only`, one that is not a caller's),
        500 for a CSeq out of order."""
        found = self.dialogs.get(_dialog_key(request))
        if (found is None or found.ended or found.dialog is None
                or (callers_only and not isinstance(found, InboundCall))):
            self.respond(transaction, make_response(request, 481, "Call/Transaction Does Not Exist"))
            return None
        status = found.dialog.check_request(request)
        if status is not None:
            self.respond(transaction, make_response(request, status, "Server Internal Error"))
            return None
        return found

    def _reinvite(self, request: SipRequest, transaction: ServerTransaction, source: Address) -> None:
        """A re-INVITE (session refresh, hold): the session stays as it is; answered with the same SDP.

        From an agent's phone (the leg the IVR placed), hold and resume are answered with the direction
        the offer asks for, and the engine is told: a 481 would make the phone end the call (§14.2)."""
        found = self._in_dialog(request, transaction)
        if isinstance(found, OutboundCall):
            was_held = found.held
            body = found.reoffered(request.text if request.body else "").encode()
            self.respond(transaction, make_response(request, 200, "OK", headers=[("Contact", self.contact_for(source))],
                                                    body=body, content_type="application/sdp"))
            if found.held != was_held:
                self.owner.on_hold(found, found.held)
            return
        if not isinstance(found, InboundCall):
            return
        answer = found.sdp_answer
        body = serialize_sdp(answer).encode() if answer is not None else b""
        self.respond(transaction, make_response(request, 200, "OK", headers=[("Contact", self.contact_for(source))],
                                                body=body, content_type="application/sdp" if body else None))

    def respond(self, transaction: ServerTransaction, response: SipResponse) -> None:
        self.transactions.respond(transaction, response, self._now())
        if response.status_code >= 200:
            self.calls.pop(transaction, None)
        self.flush()  # a response may come from a timer or a task, not only while a datagram is handled

    def reply(self, request: SipRequest, source: Address, status: int, reason: str,
              headers: dict[str, str] | None = None) -> None:
        """A stateless answer (a refusal before any transaction exists)."""
        to_tag = new_tag() if status >= 200 and not header_tag(request.headers.get_first("to")) else None
        response = make_response(request, status, reason, to_tag=to_tag, headers=list((headers or {}).items()))
        self.transactions.send_stateless(response, response_address(request, source))
        self.flush()

    # --- responses and timeouts ---------------------------------------------------------

    def _response(self, response: SipResponse, source: Address) -> None:
        if not 100 <= response.status_code <= 699:
            log.warning("sip_bad_response", source=f"{source[0]}:{source[1]}",
                        error=f"status code {response.status_code}")
            return
        event = self.transactions.receive_response(response, source, self._now())
        if isinstance(event, ResponseReceived):
            call = self.outbound.get(event.transaction)
            if call is not None:
                if event.response.status_code >= 200:
                    self.outbound.pop(event.transaction, None)
                call.response(event.response)

    def _timed_out(self, timeout: TransactionTimeout) -> None:
        transaction = timeout.transaction
        if isinstance(transaction, ServerTransaction):
            call = self.calls.pop(transaction, None)
            if timeout.timer == "L":
                found = next((c for c in self.dialogs.values()
                              if isinstance(c, InboundCall) and c.transaction is transaction), None)
                if found is not None:
                    self.owner.on_ack_timeout(found)
            del call
            return
        outbound = self.outbound.pop(transaction, None)
        if outbound is not None:
            outbound.timed_out()
        elif transaction.request.method == "BYE":
            log.info("bye_unanswered", call_id=transaction.request.call_id)

    # --- requests we send ---------------------------------------------------------------

    def transport_to(self, destination: Address | None) -> str:
        """The transport a message to `destination` takes: that of a live connection with it, else UDP."""
        if destination is None:
            return "UDP"
        connection = self.connections.get(destination)
        if connection is None:
            return destination.transport if isinstance(destination, StreamAddress) else "UDP"
        return connection.transport_name

    def _port_of(self, transport: str) -> int:
        if transport in ("WS", "WSS") and self.websocket is not None:
            return self.websocket.port
        return self.tls_port if transport == "TLS" else self.port

    def via(self, destination: Address | None = None) -> str:
        transport = self.transport_to(destination)
        port = self._port_of(transport)
        return f"SIP/2.0/{transport} {self.host}:{port};branch={new_branch()};rport"

    def contact_for(self, peer: Address | None, *, sips: bool = False) -> str:
        """Our Contact for a dialog with `peer`: in-dialog requests come back on the same transport.

        Over TLS the Contact is a SIPS URI only when the dialog's request was (RFC 3261 §8.1.1.8);
        otherwise `sip:…;transport=tls`, which phones that cannot send to a `sips:` URI (baresip
        1.0.0's libre) also reach.
        """
        transport = self.transport_to(peer)
        if transport == "TCP":
            return f"<sip:{self.host}:{self.port};transport=tcp>"
        if transport == "TLS":
            return f"<sips:{self.host}:{self.tls_port}>" if sips else f"<sip:{self.host}:{self.tls_port};transport=tls>"
        if transport in ("WS", "WSS"):  # RFC 7118 §5.2: in-dialog requests come back on the WebSocket
            return f"<sip:{self.host}:{self._port_of(transport)};transport={transport.lower()}>"
        return self.contact

    def send_request(self, request: SipRequest, destination: Address) -> ClientTransaction:
        request.headers.set_single("User-Agent", self.user_agent)
        transaction = self.transactions.send_request(request, destination, self._now(),
                                                     reliable=self.transport_to(destination) != "UDP")
        self.flush()
        return transaction

    @staticmethod
    def target_of(dialog: Dialog, fallback: Address) -> Address:
        """Where in-dialog requests go: the next hop is the peer that sent us its messages.

        The route set or remote target could name another host; behind NAT or a
        balancer the address the dialog's messages came from is the one that works.
        """
        return fallback

    def send_in_dialog(self, dialog: Dialog, method: str, destination: Address | None = None) -> None:
        if destination is None:
            call = self.dialogs.get(dialog.key)
            destination = call.source_addr if isinstance(call, InboundCall) else None
        if destination is None:
            return
        self.send_request(dialog.create_request(method, via=self.via(destination)), destination)

    def invite(self, *, from_uri: str, from_display: str | None, request_uri: str, destination: Address,
               sdp: SdpMessage, headers: dict[str, str] | None = None, body: str | None = None,
               route: Sequence[str] = ()) -> OutboundCall:
        """Place a call (to an agent): INVITE with our SDP offer.

        `route`: a pre-loaded Route set (RFC 3261 §8.1.2; the Path the phone registered through, RFC
        3327), each a loose router; `destination` is then its first hop. CANCEL and the ACK of a failure
        carry the same Route headers; the dialog's requests follow the Record-Route as ever.

        A `StreamAddress` destination is a phone reached over the connection it registered on
        (a WebSocket's `.invalid` host has no other way in): without that connection the call
        cannot be placed (`ConnectionGone`), never sent over UDP instead."""
        if isinstance(destination, StreamAddress) and destination not in self.connections:
            raise ConnectionGone(f"{destination.transport} connection {_where(destination)} closed")
        if ("tcp" in self.transports and ";transport=tcp" in request_uri.lower()
                and destination not in self.connections):
            self.connect(destination)  # the phone asked for TCP (RFC 3263 §4.1) and holds no connection with us
        invite = SipRequest(method="INVITE", uri=request_uri)
        h = invite.headers
        h.append("Via", self.via(destination))
        h.set_single("Max-Forwards", "70")
        for entry in route:
            h.append("Route", entry)
        h.set_single("From", f"{from_display} <{from_uri}>;tag={new_tag()}" if from_display
                     else f"<{from_uri}>;tag={new_tag()}")
        h.set_single("To", f"<{request_uri}>")
        h.set_single("Call-ID", new_call_id(self.host))
        h.set_single("CSeq", "1 INVITE")
        h.set_single("Contact", self.contact_for(destination, sips=request_uri.lower().startswith("sips:")))
        h.set_single("Allow", ALLOW)
        for name, value in (headers or {}).items():
            h.set_single(name, value)
        # `body`: an offer written whole elsewhere (a browser leg's DTLS-SRTP offer, ivr.media.open_webrtc)
        invite.body = (body if body is not None else serialize_sdp(sdp)).encode()
        h.set_single("Content-Type", "application/sdp")
        call = OutboundCall(self, invite, destination)
        call.transaction = self.send_request(invite, destination)
        self.outbound[call.transaction] = call
        return call

    # --- dialogs ------------------------------------------------------------------------

    def add_dialog(self, dialog: Dialog, call: InboundCall | OutboundCall) -> None:
        self.dialogs[dialog.key] = call

    def forget_dialog(self, dialog: Dialog) -> None:
        self.dialogs.pop(dialog.key, None)


def _dialog_key(request: SipRequest) -> DialogKey:
    """The dialog a request from the peer belongs to: our tag is in To, theirs in From."""
    return (request.call_id or "", header_tag(request.headers.get_first("to")),
            header_tag(request.headers.get_first("from")))


def _where(source: Address) -> str:
    return f"{source[0]}:{source[1]}"
