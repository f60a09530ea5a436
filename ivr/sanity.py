"""Request checks of RFC 3261 that aiosipua 0.7.1 leaves to the application.

aiosipua's parser is deliberately liberal: it accepts a Request-Line with
extra words or a wrong version, duplicate single-value headers, a CSeq whose
method disagrees with the request, a Content-Length the datagram doesn't
hold, unbalanced quotes. The RFC 4475 torture messages show each of those;
a UAS should answer them 400 (or 416, 420, 505) rather than act on a guess.

This module does not parse SIP: it looks at the fields aiosipua already
parsed, plus the raw Request-Line (which aiosipua does not keep), and says
what to refuse. The engine adapter calls `check_request` before handing a
request to the stack; only the adapter imports aiosipua, so the request is
described here by the three things the checks read (`ParsedRequest`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

SCHEMES = frozenset({"sip", "sips", "tel"})
# RFC 3261 8.2.1: a method the UAS does not recognise gets 501; one it knows but
# does not allow here (MESSAGE, SUBSCRIBE, ...) gets aiosipua's 405.
METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "PRACK", "SUBSCRIBE",
    "NOTIFY", "REFER", "MESSAGE", "UPDATE", "PUBLISH",
})
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO"
SINGLE_VALUED = ("call-id", "to", "from", "cseq", "max-forwards", "content-length", "content-type")
CSEQ_MAX = 2**31 - 1  # RFC 3261 8.1.1.5
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_LWS = r"[ \t]*"
# Via: sent-protocol LWS sent-by *( SEMI via-params ); LWS is allowed around / ; = (RFC 3261 25.1)
_VIA = re.compile(
    rf"^SIP{_LWS}/{_LWS}2\.0{_LWS}/{_LWS}{_TOKEN}[ \t]+[^ \t;]+(?:{_LWS}:{_LWS}\d+)?"
    rf"(?:{_LWS};{_LWS}{_TOKEN}(?:{_LWS}={_LWS}(?:{_TOKEN}|\[[0-9A-Fa-f:.]+\]|\"[^\"]*\"))?)*{_LWS}$"
)
_DISPLAY_TOKENS = re.compile(rf"^(?:{_TOKEN}(?:[ \t]+{_TOKEN})*)?$")


class ParsedRequest(Protocol):
    """What the checks read of a parsed request (aiosipua's SipRequest has it)."""

    body: bytes

    def get_header(self, name: str) -> str | None: ...

    def get_header_values(self, name: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str
    why: str
    headers: dict[str, str] = field(default_factory=dict)


def _closing_quote(value: str, start: int) -> int:
    """Index of the quote closing the quoted-string opened at `start`, or -1."""
    escaped = False
    for i in range(start + 1, len(value)):
        ch = value[i]
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return i
    return -1


def _quotes_balanced(value: str) -> bool:
    i = value.find('"')
    while i != -1:
        end = _closing_quote(value, i)
        if end == -1:
            return False
        i = value.find('"', end + 1)
    return True


def _name_addr_problem(value: str) -> str | None:
    """Why a To/From/Contact value is malformed, or None (RFC 4475 3.1.2.6, .13, .14, .15)."""
    if not _quotes_balanced(value):
        return "unterminated quoted string"
    if value.startswith('"'):
        rest = value[_closing_quote(value, 0) + 1 :].lstrip()
        if not rest.startswith("<"):
            return "quoted display name without <addr-spec>"
        value = rest
    elif "<" in value:
        if not _DISPLAY_TOKENS.match(value[: value.index("<")].strip()):
            return "display name is neither a quoted string nor tokens"
    if "<" in value:
        inner = value[value.index("<") + 1 : value.index(">")] if ">" in value else None
        if inner is None:
            return "unclosed <"
        if inner != inner.strip() or " " in inner:
            return "whitespace inside <addr-spec>"
    elif "?" in value or "," in value:
        return "addr-spec with URI headers or a comma must be enclosed in <>"
    return None


def check_request(request: ParsedRequest, request_line: str) -> Refusal | None:
    """What to refuse this request with, or None to let it through."""
    parts = request_line.split(" ")
    if len(parts) != 3 or not all(parts):
        if len(parts) >= 3 and re.fullmatch(r"SIP/\d+\.\d+", parts[-1]) and parts[-1] != "SIP/2.0":
            return Refusal(505, "Version Not Supported", f"SIP version {parts[-1]}")
        return Refusal(400, "Bad Request Line", "Request-Line is not 'Method SP Request-URI SP SIP-Version'")
    method, uri, version = parts
    if version != "SIP/2.0":
        if re.fullmatch(r"SIP/\d+\.\d+", version):
            return Refusal(505, "Version Not Supported", f"SIP version {version}")
        return Refusal(400, "Bad Request Line", f"bad SIP-Version {version[:20]!r}")
    if uri.startswith("<"):
        return Refusal(400, "Bad Request-URI", "Request-URI enclosed in <>")
    scheme = uri.partition(":")[0].lower()
    if scheme not in SCHEMES:
        return Refusal(416, "Unsupported URI Scheme", f"scheme {scheme[:20]!r}")
    if "?" in uri.rpartition("@")[2]:  # a '?' in the user part is a legal character
        return Refusal(400, "Bad Request-URI", "URI headers in the Request-URI")
    if method not in METHODS:
        return Refusal(501, "Not Implemented", f"method {method[:30]!r}", {"Allow": ALLOW})

    for name in SINGLE_VALUED:
        if len(request.get_header_values(name)) > 1:
            return Refusal(400, f"Multiple {name.title()} Headers", f"{name} appears more than once")
    for via in request.get_header_values("via"):
        if not _VIA.match(via):
            return Refusal(400, "Bad Via", f"malformed Via {via[:60]!r}")
    cseq = (request.get_header("cseq") or "").split()
    if len(cseq) != 2 or not cseq[0].isdigit() or int(cseq[0]) > CSEQ_MAX:
        return Refusal(400, "Bad CSeq", "CSeq is not 'number method' with number below 2**31")
    if cseq[1] != method:
        return Refusal(400, "CSeq Method Mismatch", f"CSeq method {cseq[1][:20]!r} for a {method[:20]} request")
    max_forwards = request.get_header("max-forwards")
    if max_forwards is not None and (not max_forwards.isdigit() or int(max_forwards) > 255):
        return Refusal(400, "Bad Max-Forwards", "Max-Forwards is not a number from 0 to 255")
    length = request.get_header("content-length")
    if length is not None:
        if not length.isdigit():
            return Refusal(400, "Bad Content-Length", f"Content-Length {length[:20]!r}")
        if int(length) > len(request.body):
            # RFC 3261 18.3: a datagram that ends before its body is an error
            return Refusal(400, "Bad Content-Length", f"Content-Length {length} but {len(request.body)} body bytes")
    date = request.get_header("date")
    if date is not None and not date.rstrip().endswith("GMT"):
        return Refusal(400, "Bad Date", "Date is not in GMT (RFC 3261 20.17)")
    for name in ("to", "from", "contact"):
        for value in request.get_header_values(name):
            if value.strip() == "*" and name == "contact":
                continue
            problem = _name_addr_problem(value)
            if problem:
                return Refusal(400, f"Bad {name.title()}", problem)
    if method not in ("ACK", "CANCEL"):
        required = [o.strip() for v in request.get_header_values("require") for o in v.split(",") if o.strip()]
        if required:  # the IVR supports no SIP extension a client could require
            return Refusal(420, "Bad Extension", f"Require: {', '.join(required)[:60]}",
                           {"Unsupported": ", ".join(required)})
    return None
