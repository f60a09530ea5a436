"""Screen-pop on any softphone: the caller's name, tier and service in the agent leg's INVITE.

Pure: no I/O, no clock. The engine calls `screen_pop(...)` when it rings an
agent and puts `display_name` into the From header of the agent INVITE and
`headers` after it. A plain softphone shows the display name ("张敏 高端 业务咨询");
phones that read `Call-Info` (RFC 3261 §20.9, purpose=info) link to the desk.

The display name is a quoted-string (RFC 3261 §25.1): inside the quotes `"`
and `\\` are backslash-escaped, UTF-8 is allowed as is, and CR, LF and other
control characters cannot appear at all (a quoted-pair may not carry CR or
LF), so they are removed — a name from the CRM can never inject a header.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

from ivr.service import SERVICES

DEFAULT_TEMPLATE = "{name} {tier_label} {service_label}"
UNKNOWN_NAME = "新客户"
TIER_LABELS = {"senior": "高端", "middle": "中端", "junior": "低端"}  # [001] customer tiers
MAX_DISPLAY_CHARS = 40  # characters before quoting; phones show ~20, a long name must not bloat the INVITE
TEMPLATE_FIELDS = frozenset({"name", "tier_label", "service_label", "tier", "service", "phone"})

# RFC 3261 §25.1 word / token characters: what a Call-ID and a tier/service token may hold
_CALL_ID_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")


class TemplateError(ValueError):
    """A display-name template names a field that does not exist, or is malformed."""


@dataclass(frozen=True, slots=True)
class DeskLink:
    """How the IVR names a caller to an agent's phone: the display-name template and the desk's address."""

    template: str = DEFAULT_TEMPLATE
    base_url: str | None = None  # None: no Call-Info link


@dataclass(frozen=True, slots=True)
class ScreenPop:
    display_name: str  # the quoted-string, quotes included: "\"张敏 高端 业务咨询\""
    headers: tuple[tuple[str, str], ...]  # extra headers for the agent INVITE, in order


def check_template(template: str) -> str:
    """The template if every field in it is known; TemplateError otherwise (for config validation)."""
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise TemplateError(str(exc)) from None
    for field in fields:
        # plain names only: "{name.__class__}" or "{name[0]}" would reach into Python objects
        if field not in TEMPLATE_FIELDS:
            raise TemplateError(f"unknown field {{{field}}}; use {', '.join(sorted(TEMPLATE_FIELDS))}")
    return template


def clean_text(text: str) -> str:
    """Text without control or format characters (CR, LF, NUL, bidi overrides …), whitespace runs as one space."""
    kept = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return " ".join(kept.split())


def quoted_display_name(text: str, max_chars: int = MAX_DISPLAY_CHARS) -> str:
    """`text` as an RFC 3261 quoted-string: cleaned, bounded, `"` and `\\` escaped."""
    cleaned = clean_text(text)[:max_chars].rstrip()  # truncate before escaping: never half an escape
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def display_text(name: str | None, tier: str, service: str | None, phone: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The unquoted display text, e.g. "张敏 高端 业务咨询"; unknown callers are "新客户"."""
    values = {
        "name": clean_text(name or "") or UNKNOWN_NAME,
        "tier_label": TIER_LABELS.get(tier, tier),
        "service_label": SERVICES.get(service or "", service or ""),
        "tier": tier,
        "service": service or "",
        "phone": phone,
    }
    return " ".join(check_template(template).format_map(values).split())


def desk_call_url(desk_base_url: str, call_id: str) -> str:
    """The desk's page for the call with this SIP Call-ID (the CRM row id is not known yet when the agent rings)."""
    return f"{desk_base_url.rstrip('/')}/calls/sip?call_id={quote(call_id, safe='')}"


def screen_pop(
    *,
    name: str | None,
    tier: str,
    service: str | None,
    caller: str,
    call_id: str,
    desk_url: str | None,
    template: str = DEFAULT_TEMPLATE,
    max_chars: int = MAX_DISPLAY_CHARS,
) -> ScreenPop:
    """The From display name and the extra headers for the INVITE that rings an agent about `call_id`."""
    headers: list[tuple[str, str]] = []
    if _TOKEN_RE.match(tier):
        headers.append(("X-Hotline-Tier", tier))
    if service and _TOKEN_RE.match(service):
        headers.append(("X-Hotline-Service", service))
    if _CALL_ID_RE.match(call_id) and len(call_id) <= 255:
        headers.append(("X-Hotline-Call", call_id))
    if desk_url and desk_url.startswith(("http://", "https://")):
        # inside <...> an URL may not hold spaces, '<', '>' or quotes: percent-encode anything unusual
        safe_url = quote(clean_text(desk_url), safe=":/?#[]@!$&'()*+,;=%-._~")
        headers.append(("Call-Info", f"<{safe_url}>;purpose=info"))
    text = display_text(name, tier, service, caller, template)
    return ScreenPop(quoted_display_name(text, max_chars), tuple(headers))


def desk_base_url(public_url: str | None, bind: str, port: int) -> str | None:
    """Where agents' phones find the desk (Call-Info): [desk] public_url, else its bind address.

    None when neither names a reachable host: a desk bound to every address
    (0.0.0.0, ::) without public_url would give phones http://0.0.0.0:8080.
    """
    if public_url:
        return public_url
    if bind in ("0.0.0.0", "::", ""):
        return None
    return f"http://[{bind}]:{port}" if ":" in bind else f"http://{bind}:{port}"
