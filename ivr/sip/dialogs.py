"""SIP dialogs (RFC 3261 §12) and the responses that create them, without I/O.

A dialog is what two user agents remember about a call between
transactions: Call-ID and both tags (its identity), both URIs, the peer's
Contact (where in-dialog requests go), the route set learnt from
Record-Route, and both CSeq counters. `Dialog` builds in-dialog requests
(§12.2.1.1) and checks incoming ones (§12.2.2); `DialogTable` finds the
dialog of a message in O(1). `make_response` builds a response the way
§8.2.6 wants it, which is where To tags go wrong: a response gets our tag
only if the request's To had none, so it never carries two.

Nothing here sends anything: requests and responses go to
`ivr.sip.transactions`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

from aiosipua import parse_uri
from aiosipua.message import SipMessage, SipRequest, SipResponse

from ivr.sip.transactions import MAGIC_COOKIE, Overloaded, cseq_number, header_tag

DialogKey = tuple[str, str, str]  # (Call-ID, local tag, remote tag)


def new_tag() -> str:
    """A From/To tag: 64 random bits (§19.3 wants at least 32)."""
    return secrets.token_hex(8)


def new_branch() -> str:
    """A Via branch, unique in space and time (§8.1.1.7)."""
    return MAGIC_COOKIE + secrets.token_hex(10)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(16)}@{host}"


def make_response(
    request: SipRequest,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipResponse:
    """A response to `request` (§8.2.6.2): its Vias, From, To, Call-ID and CSeq, plus `headers`."""
    response = SipResponse(status_code=status, reason_phrase=reason)
    out, original = response.headers, request.headers
    for via in original.get("via"):
        out.append("Via", via)
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = original.get_first(name)
        if value is not None:
            out.set_single(name, value)
    to = original.get_first("to")
    # A To that already has a tag (an in-dialog request, or one we answered
    # before) keeps it; adding ours would give the response two. 100 Trying
    # never creates a dialog, so it gets none (§8.2.6.2).
    if to is not None and to_tag and status != 100 and not header_tag(to):
        out.set_single("To", f"{to};tag={to_tag}")
    if request.method == "INVITE" and 101 <= status <= 299:
        for record_route in original.get("record-route"):  # §12.1.1
            out.append("Record-Route", record_route)
    for name, value in headers:
        out.append(name, value)
    if body:
        response.body = body
        if content_type is not None:
            out.set_single("Content-Type", content_type)
    return response


# --- Address syntax -----------------------------------------------------------


def address_uri(value: str) -> str:
    """The URI of a name-addr or addr-spec value ("<sip:a@b>;x=y" -> "sip:a@b")."""
    lt = value.find("<")
    if lt >= 0:
        gt = value.find(">", lt)
        return value[lt + 1 : gt if gt >= 0 else len(value)].strip()
    # §20.10: an addr-spec cannot carry URI parameters, so ";" ends the URI.
    return value.partition(";")[0].strip()


def address_user(value: str) -> str:
    """The user part of a SIP URI or name-addr ("Alice <sip:1001@host>" -> "1001"); "" if there is none."""
    text = value.strip()
    if "<" in text:
        text = text[text.index("<") + 1 : text.index(">") if ">" in text else None]
    try:
        return parse_uri(text).user or ""
    except Exception:
        return ""


def without_tag(value: str) -> str:
    """A From/To value as a name-addr without its tag parameter."""
    gt = value.rfind(">")
    if gt >= 0:
        head, params = value[: gt + 1], value[gt + 1 :]
    else:
        uri, _, rest = value.partition(";")
        head, params = f"<{uri.strip()}>", (";" + rest if rest else "")
    kept = [p for p in params.split(";")[1:] if p.partition("=")[0].strip().lower() != "tag"]
    return head.strip() + "".join(f";{p.strip()}" for p in kept)


def _loose(route: str) -> bool:
    """Whether a Route/Record-Route value names a loose router (;lr in its URI, §19.1.1)."""
    params = address_uri(route).split(";")[1:]
    return any(p.partition("=")[0].strip().lower() == "lr" for p in params)


def _first(message: SipMessage, name: str) -> str:
    value = message.headers.get_first(name)
    if value is None:
        raise ValueError(f"{name} missing")
    return value


# --- Dialogs ------------------------------------------------------------------


class DialogState(Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(slots=True, eq=False)
class Dialog:
    """Dialog state of §12.1; the URIs are header text, the tags kept apart."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # name-addr of our side, no tag
    remote_uri: str
    remote_target: str  # URI from the peer's Contact
    route_set: list[str]
    local_cseq: int
    remote_cseq: int | None
    state: DialogState

    @property
    def key(self) -> DialogKey:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def as_uas(
        cls, invite: SipRequest, local_tag: str, *, state: DialogState = DialogState.CONFIRMED
    ) -> Dialog:
        """The dialog our 2xx (or, with state=EARLY, our 1xx) to `invite` creates (§12.1.1)."""
        contact = invite.headers.get_first("contact")
        return cls(
            call_id=_first(invite, "call-id"),
            local_tag=local_tag,
            remote_tag=header_tag(invite.headers.get_first("from")),
            local_uri=without_tag(_first(invite, "to")),
            remote_uri=without_tag(_first(invite, "from")),
            remote_target=address_uri(contact) if contact else invite.uri,
            route_set=list(invite.headers.get("record-route")),
            # §12.1.1 leaves our counter empty; our first request uses 1.
            local_cseq=0,
            remote_cseq=cseq_number(invite),
            state=state,
        )

    @classmethod
    def as_uac(cls, invite: SipRequest, response: SipResponse) -> Dialog:
        """The dialog a 1xx with a To tag (EARLY) or a 2xx (CONFIRMED) to our `invite` creates (§12.1.2)."""
        contact = response.headers.get_first("contact")
        return cls(
            call_id=_first(invite, "call-id"),
            local_tag=header_tag(invite.headers.get_first("from")),
            remote_tag=header_tag(response.headers.get_first("to")),
            local_uri=without_tag(_first(invite, "from")),
            remote_uri=without_tag(_first(response, "to")),
            remote_target=address_uri(contact) if contact else invite.uri,
            # The UAS sees Record-Route as it arrived; we walk it backwards.
            route_set=list(reversed(response.headers.get("record-route"))),
            local_cseq=cseq_number(invite) or 0,
            remote_cseq=None,
            state=DialogState.CONFIRMED if 200 <= response.status_code <= 299 else DialogState.EARLY,
        )

    def confirm(self, response: SipResponse | None = None) -> None:
        """An early dialog got its 2xx; its Contact is the target from now on (§12.1.2)."""
        self.state = DialogState.CONFIRMED
        contact = response.headers.get_first("contact") if response is not None else None
        if contact:
            self.remote_target = address_uri(contact)

    def create_request(
        self,
        method: str,
        *,
        via: str,
        contact: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
        max_forwards: int = 70,
        cseq: int | None = None,
    ) -> SipRequest:
        """An in-dialog request (§12.2.1.1); `via` is the full top Via value with its branch.

        CSeq: the next local number, except for ACK and CANCEL, which reuse
        the INVITE's (the current local number, or `cseq` when given).
        """
        if cseq is None:
            if method not in ("ACK", "CANCEL"):
                self.local_cseq += 1
            cseq = self.local_cseq
        elif method not in ("ACK", "CANCEL"):
            self.local_cseq = max(self.local_cseq, cseq)
        routes = list(self.route_set)
        uri = self.remote_target
        if routes and not _loose(routes[0]):
            # §12.2.1.1 strict routing: the first route becomes the
            # Request-URI and the target rides at the end of the Route set.
            uri = address_uri(routes.pop(0))
            routes.append(f"<{self.remote_target}>")
        request = SipRequest(method=method, uri=uri)
        out = request.headers
        out.append("Via", via)
        out.set_single("Max-Forwards", str(max_forwards))
        out.set_single("From", f"{self.local_uri};tag={self.local_tag}")
        out.set_single(
            "To", f"{self.remote_uri};tag={self.remote_tag}" if self.remote_tag else self.remote_uri
        )
        out.set_single("Call-ID", self.call_id)
        out.set_single("CSeq", f"{cseq} {method}")
        for route in routes:
            out.append("Route", route)
        if contact is not None:
            out.set_single("Contact", contact)
        for name, value in headers:
            out.append(name, value)
        if body:
            request.body = body
            if content_type is not None:
                out.set_single("Content-Type", content_type)
        return request

    def check_request(self, request: SipRequest) -> int | None:
        """§12.2.2: the status to reject an out-of-order request with (500), else None.

        A request in order advances the remote CSeq. ACK and CANCEL carry
        their INVITE's number and are never out of order.
        """
        if request.method in ("ACK", "CANCEL"):
            return None
        number = cseq_number(request)
        if number is None:
            return 400
        if self.remote_cseq is not None and number < self.remote_cseq:
            return 500
        self.remote_cseq = number
        return None


class DialogTable:
    """Dialogs by (Call-ID, local tag, remote tag), at most `max_dialogs` of them."""

    def __init__(self, *, max_dialogs: int = 50_000) -> None:
        self.max_dialogs = max_dialogs
        self._dialogs: dict[DialogKey, Dialog] = {}

    def __len__(self) -> int:
        return len(self._dialogs)

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self._dialogs.values()))

    def add(self, dialog: Dialog) -> None:
        """Add a dialog; raises Overloaded when the table is full (answer 503)."""
        if dialog.key not in self._dialogs and len(self._dialogs) >= self.max_dialogs:
            raise Overloaded(f"{len(self._dialogs)} dialogs open")
        self._dialogs[dialog.key] = dialog

    def get(self, call_id: str, local_tag: str, remote_tag: str) -> Dialog | None:
        return self._dialogs.get((call_id, local_tag, remote_tag))

    def remove(self, dialog: Dialog) -> None:
        if self._dialogs.get(dialog.key) is dialog:
            del self._dialogs[dialog.key]

    def find_for_request(self, request: SipRequest) -> Dialog | None:
        """The dialog of a request from the peer: its To tag is ours (§12.2.2)."""
        return self._find(request, "to", "from")

    def find_for_response(self, response: SipResponse) -> Dialog | None:
        """The dialog of a response to our request: its From tag is ours."""
        return self._find(response, "from", "to")

    def _find(self, message: SipMessage, local: str, remote: str) -> Dialog | None:
        headers = message.headers
        call_id = headers.get_first("call-id")
        if call_id is None:
            return None
        key = (call_id, header_tag(headers.get_first(local)), header_tag(headers.get_first(remote)))
        return self._dialogs.get(key)
