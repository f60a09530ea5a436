"""SIP calls: one the IVR answers (`InboundCall`, UAS) and one it places (`OutboundCall`, UAC).

A call holds its INVITE's transaction and, once answered, its dialog, and
turns what the IVR decides (ring, answer, refuse, hang up, cancel) into what
RFC 3261 wants sent for it: a response with our To tag and Contact, the ACK
of a 2xx (§13.2.2.4), a CANCEL built from the INVITE (§9.1), the BYE that
ends the dialog. A call opens no socket: the endpoint (`ivr.sip.endpoint`)
makes the calls, hands each the messages and timeouts that are its own, and
sends what it asks; `CallEndpoint` is what a call asks of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog
from aiosipua.message import SipRequest, SipResponse
from aiosipua.sdp import SdpMessage, parse_sdp, serialize_sdp

from ivr.sip.dialogs import Dialog, DialogState, make_response, new_tag
from ivr.sip.transactions import Address, ClientTransaction, ServerTransaction, SipTransactions

log = structlog.get_logger("ivr.sip")


class CallEndpoint(Protocol):
    """What a call asks of the endpoint it is on (`ivr.sip.endpoint.SipEndpoint`)."""

    user_agent: str
    transactions: SipTransactions

    def contact_for(self, peer: Address | None, *, sips: bool = False) -> str: ...

    def via(self, destination: Address | None = None) -> str: ...

    def target_of(self, dialog: Dialog, fallback: Address) -> Address: ...

    def respond(self, transaction: ServerTransaction, response: SipResponse) -> None: ...

    def send_request(self, request: SipRequest, destination: Address) -> ClientTransaction: ...

    def send_in_dialog(self, dialog: Dialog, method: str, destination: Address | None = None) -> None: ...

    def add_dialog(self, dialog: Dialog, call: InboundCall | OutboundCall) -> None: ...

    def forget_dialog(self, dialog: Dialog) -> None: ...


class InboundCall:
    """A call to the hotline: the INVITE's server transaction and, once answered, its dialog."""

    def __init__(self, endpoint: CallEndpoint, transaction: ServerTransaction, source: Address) -> None:
        self.endpoint = endpoint
        self.transaction = transaction
        self.invite: SipRequest = transaction.request
        self.source_addr = source
        self.call_id: str = self.invite.call_id or ""
        self.local_tag = new_tag()
        self.dialog = Dialog.as_uas(self.invite, self.local_tag, state=DialogState.EARLY)
        self.ended = False
        self.sdp_answer: SdpMessage | None = None
        self.sdp_offer: SdpMessage | None = None
        content_type = (self.invite.content_type or "").split(";")[0].strip().lower()
        if self.invite.body and content_type == "application/sdp":
            self.sdp_offer = parse_sdp(self.invite.text)

    @property
    def caller(self) -> str:
        """The From header as sent."""
        return self.invite.get_header("from") or ""

    def _respond(self, status: int, reason: str, *, headers: dict[str, str] | None = None,
                 body: bytes = b"", content_type: str | None = None) -> None:
        sips = self.invite.uri.lower().startswith("sips:")
        extra = [("Contact", self.endpoint.contact_for(self.source_addr, sips=sips))] if 100 < status < 300 else []
        extra.append(("User-Agent", self.endpoint.user_agent))
        extra.extend((headers or {}).items())
        response = make_response(self.invite, status, reason, to_tag=self.local_tag if status > 100 else None,
                                 headers=extra, body=body, content_type=content_type)
        self.endpoint.respond(self.transaction, response)

    def ringing(self) -> None:
        if not self.ended:
            self._respond(180, "Ringing")

    def accept(self, sdp_answer: SdpMessage | None) -> None:
        if self.ended:
            return
        body = serialize_sdp(sdp_answer).encode() if sdp_answer is not None else b""
        self._respond(200, "OK", body=body, content_type="application/sdp" if body else None)
        self.sdp_answer = sdp_answer
        self.dialog.state = DialogState.CONFIRMED
        self.endpoint.add_dialog(self.dialog, self)

    def reject(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        self._respond(status, reason, headers=headers)

    def hangup(self) -> None:
        """BYE (retransmitted until answered, RFC 3261 Timer E); the dialog is over for us at once."""
        if self.ended:
            return
        self.ended = True
        if self.dialog.state is DialogState.CONFIRMED:
            self.endpoint.send_in_dialog(self.dialog, "BYE")
        self.endpoint.forget_dialog(self.dialog)

    def terminated(self) -> None:
        """The far end ended the call (BYE or CANCEL)."""
        self.ended = True
        self.endpoint.forget_dialog(self.dialog)


# RFC 3264 §6.1: the direction an answer takes to each direction of an offer
ANSWER_DIRECTIONS = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive", "sendrecv": "sendrecv"}


def answer_direction(offer: str) -> str:
    """Our answer's direction to an SDP offer (its first direction attribute; none means sendrecv).

    An offer with `c=IN IP4 0.0.0.0` is the RFC 2543 way to hold, still sent by some phones: inactive."""
    for line in offer.splitlines():
        line = line.strip()
        if line.startswith("a=") and line[2:] in ANSWER_DIRECTIONS:
            return ANSWER_DIRECTIONS[line[2:]]
        if line.startswith("c=") and line.endswith(" 0.0.0.0"):
            return "inactive"
    return "sendrecv"


class OutboundCall:
    """A call the IVR places (to an agent's phone): the INVITE's client transaction, then a dialog."""

    def __init__(self, endpoint: CallEndpoint, invite: SipRequest, destination: Address) -> None:
        self.endpoint = endpoint
        self.invite = invite
        self.destination = destination
        self.call_id: str = invite.call_id or ""
        self.transaction: ClientTransaction | None = None
        self.dialog: Dialog | None = None
        self.sdp_answer: SdpMessage | None = None
        self.answer_text: str | None = None  # the answer's SDP as received (a browser leg reads it whole)
        self.provisional = False
        self.final = False
        self.ended = False
        self.cancelled = False
        self.on_answer: Callable[[OutboundCall], None] | None = None
        self.on_rejected: Callable[[OutboundCall, int, str], None] | None = None
        self.direction = "sendrecv"  # the media direction of our last SDP (a re-INVITE's hold changes it)
        self.sdp_version = 0  # added to our offer's o= version, once per changed answer (RFC 3264 §8)

    def reoffered(self, offer: str) -> str:
        """Our answer to the far end's re-INVITE (hold, resume, session refresh): our session as offered in
        the INVITE, its direction mirroring the offer's (RFC 3264 §6.1: sendonly -> recvonly, inactive ->
        inactive), its o= version raised only when the description changed (§8)."""
        direction = answer_direction(offer)
        if direction != self.direction:
            self.direction = direction
            self.sdp_version += 1
        lines = [line for line in self.invite.text.split("\r\n")
                 if line and line.removeprefix("a=") not in ANSWER_DIRECTIONS]
        if self.sdp_version:
            for i, line in enumerate(lines):
                if line.startswith("o="):
                    fields = line.split(" ")
                    if len(fields) >= 3 and fields[2].isdigit():
                        fields[2] = str(int(fields[2]) + self.sdp_version)
                        lines[i] = " ".join(fields)
        return "\r\n".join([*lines, f"a={direction}", ""])

    @property
    def held(self) -> bool:
        """The far end put the call on hold (its last re-INVITE offered sendonly or inactive)."""
        return self.direction in ("recvonly", "inactive")

    def response(self, response: SipResponse) -> None:
        status = response.status_code
        if status < 200:
            self.provisional = True
            return
        if self.final:
            return
        self.final = True
        if status >= 300:
            self.ended = True
            if self.on_rejected is not None:
                self.on_rejected(self, status, response.reason_phrase)
            return
        self.dialog = Dialog.as_uac(self.invite, response)
        assert self.transaction is not None
        endpoint = self.endpoint
        ack = self.dialog.create_request("ACK", via=endpoint.via(self.destination), cseq=self.dialog.local_cseq)
        endpoint.transactions.send_ack(self.transaction, ack, endpoint.target_of(self.dialog, self.destination))
        if self.ended:  # cancelled while the 200 was on its way: ACK it, then BYE (§9.1)
            self.endpoint.send_in_dialog(self.dialog, "BYE", self.destination)
            return
        self.endpoint.add_dialog(self.dialog, self)
        content_type = (response.content_type or "").split(";")[0].strip().lower()
        if response.body and content_type == "application/sdp":
            self.answer_text = response.text
            try:
                self.sdp_answer = parse_sdp(response.text)
            except Exception:  # noqa: BLE001 — a broken answer leaves the leg without media, not the IVR broken
                log.warning("sdp_answer_unreadable", call_id=self.call_id)
        if self.on_answer is not None:
            self.on_answer(self)

    def timed_out(self) -> None:
        if not self.final:
            self.final = self.ended = True
            if self.on_rejected is not None:
                self.on_rejected(self, 408, "Request Timeout")

    def cancel(self) -> None:
        """Stop ringing: CANCEL (§9.1) — or BYE, should the 200 cross it."""
        if self.ended:
            return
        self.ended = True
        if self.final:
            return
        cancel = SipRequest(method="CANCEL", uri=self.invite.uri)
        for name in ("Via", "From", "To", "Call-ID", "Max-Forwards"):
            value = self.invite.headers.get_first(name)
            if value is not None:
                cancel.headers.append(name, value)
        for route in self.invite.headers.get("route"):
            cancel.headers.append("Route", route)
        cseq = (self.invite.headers.get_first("cseq") or "1 INVITE").split()[0]
        cancel.headers.set_single("CSeq", f"{cseq} CANCEL")
        self.endpoint.send_request(cancel, self.destination)

    def hangup(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.dialog is not None:
            self.endpoint.send_in_dialog(self.dialog, "BYE", self.destination)
            self.endpoint.forget_dialog(self.dialog)

    def terminated(self) -> None:
        self.ended = True
        if self.dialog is not None:
            self.endpoint.forget_dialog(self.dialog)
