"""The built-in registrar for agents' softphones: digest authentication and bindings.

Sans-IO. `RegisterHandler` takes a REGISTER as the endpoint parsed it and
returns the response to send (status, reason, headers): it reads the
credentials, the Contact (the phone's address is where the request came
from, or the Contact's behind a trusted balancer: `phone_address`) and the
expiry, lets `Registrar` decide, reports a refusal to the guard (the ban) and
a binding to the agents, both handed in as callables. `Registrar` decides on
those fields alone. Digest per RFC 7616 as SIP uses it (RFC 3261 22.4, RFC 8760):

* the challenge offers SHA-256 first and MD5 second, one WWW-Authenticate
  header each with the same nonce; a client answers the first it supports;
* `qop=auth` is required: a response without it (RFC 2069 style) is refused,
  since only qop binds the client's cnonce and nonce count into the hash;
* the `uri` parameter must be the REGISTER's Request-URI, so a response
  captured for one request cannot authorise another;
* the nonce count (`nc`) must grow with each request on one nonce: a
  repeated or lower count is a replay and is refused;
* nonces are stateless — `timestamp.random:HMAC(key, timestamp.random)` — and
  expire after `NONCE_TTL_S`; a response to an expired nonce that is otherwise
  right gets a fresh challenge with `stale=true` (the phone retries without
  asking its user), a wrong one is refused.

That is the `strict` policy, every agent's default. Two older phones cannot
follow it, so an agent's section may name a weaker one (`digest = …`):

* `md5`: the challenge offers MD5 alone. baresip 1.0.0 gives up on a 401
  that offers SHA-256 at all, whatever the order; the rest stays strict.
* `legacy`: MD5 alone, and a response without qop (RFC 2069, as pyVoIP 1.6.8
  sends) is taken; its `uri` may differ from the Request-URI in URI
  parameters only (pyVoIP adds `;transport=UDP`). Without a nonce count a
  nonce is good for one registration: a second use gets a fresh challenge.

A seat with a browser phone (`phone = browser|both`) also registers with a
derived username `801.<expiry>` whose password the desk handed the page
(ivr.phone_credentials): the registrar derives that password itself, refuses
it once expired, and binds the seat (801), not the username. JsSIP answers MD5
challenges only, so such a seat is challenged as `md5` asks (engine).

Path (RFC 3327): a proxy in front of phones it alone can reach (Kamailio holding
browsers' WebSockets) adds a Path header to their REGISTER. From a trusted
source the Path is stored with the binding, in order: the phone is rung with
those entries as a pre-loaded Route set, sent to the first one, and the Contact
as Request-URI. The 200 OK repeats the stored Path when the phone said
`Supported: path` (§5.3; stored either way, as Kamailio's `lazy` mode does). A
Path from an untrusted source is ignored: it would let a phone have the IVR
send its INVITEs to any host. When the proxy loses such a phone's connection it
un-REGISTERs it (Expires: 0, no credentials, the same Path): from a trusted
source, for the flow the agent is bound to now, that logs the agent out — a
phone that registered again over a new connection keeps its new binding.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import time
import urllib.parse
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from aiosipua import SipRequest, parse_address, parse_auth, parse_uri

from ivr.phone_credentials import Accepted, BrowserCredentials, NotAccepted
from ivr.sip.connections import StreamAddress
from ivr.sip.dialogs import address_user

REALM = "hotline"
NONCE_TTL_S = 300
MIN_EXPIRES = 60
MAX_EXPIRES = 3600
DEFAULT_EXPIRES = 600

# RFC 7616 6.1: the algorithm names and their hashlib names; the order is the challenge's (preferred first)
_HASHES = {"SHA-256": "sha256", "MD5": "md5"}


def _digest(algorithm: str, text: str) -> str:
    return hashlib.new(_HASHES[algorithm], text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send 401 with one WWW-Authenticate header per entry, in this order (SHA-256, then MD5)."""

    headers: tuple[str, ...]

    @property
    def header(self) -> str:
        """The MD5 challenge alone, for a sender that can put only one header on the 401."""
        return next(h for h in self.headers if "algorithm=MD5" in h)


@dataclass(frozen=True, slots=True)
class Refused:
    """Send 403 (wrong credentials, unknown agent) and log for fail2ban."""

    user: str
    reason: str


@dataclass(frozen=True, slots=True)
class Registered:
    """Send 200 OK with Contact;expires and update the agent's binding."""

    agent: str
    contact: tuple[str, int] | None  # None: unregistered (Expires: 0)
    expires: int


def _same_uri_ignoring_params(a: str, b: str) -> bool:
    return a.partition(";")[0].strip().lower() == b.partition(";")[0].strip().lower()


class Registrar:
    def __init__(self, secrets: dict[str, str], *, key: bytes | None = None,
                 clock: Callable[[], float] = time.time, policies: dict[str, str] | None = None,
                 browser: BrowserCredentials | None = None) -> None:
        self.secrets = secrets
        self.browser = browser  # derived credentials of the desk's browser phones; None: none taken
        self.policies = policies or {}  # agent -> strict | md5 | legacy; strict when not named
        self._key = key or os.urandom(32)
        self._clock = clock
        self._counts: dict[str, tuple[int, float]] = {}  # nonce -> (highest nc accepted, when)

    def _nonce(self) -> str:
        issued = f"{int(self._clock())}.{os.urandom(6).hex()}"
        return f"{issued}:{hmac.new(self._key, issued.encode(), 'sha256').hexdigest()[:32]}"

    def _nonce_state(self, nonce: str) -> str:
        issued, _, mac = nonce.partition(":")
        expected = hmac.new(self._key, issued.encode(), "sha256").hexdigest()[:32]
        stamp = issued.partition(".")[0]
        if not stamp.isdigit() or not hmac.compare_digest(mac, expected):
            return "bad"
        return "stale" if self._clock() - int(stamp) > NONCE_TTL_S else "ok"

    def challenge(self, stale: bool = False, user: str = "") -> Challenge:
        nonce = self._nonce()
        extra = ", stale=true" if stale else ""
        algorithms = ("MD5",) if self.policies.get(user, "strict") != "strict" else tuple(_HASHES)
        return Challenge(tuple(
            f'Digest realm="{REALM}", nonce="{nonce}", algorithm={algorithm}, qop="auth"{extra}'
            for algorithm in algorithms
        ))

    def register(
        self,
        method: str,
        auth: dict[str, str] | None,
        contact: tuple[str, int] | None,
        expires: int | None,
        *,
        request_uri: str | None = None,
        user: str = "",
    ) -> Challenge | Refused | Registered:
        """Decide on a REGISTER: `auth` is the parsed Authorization parameters (or None).

        `request_uri` is the REGISTER's Request-URI, which the response's `uri` must equal;
        None skips that check (for a caller that does not pass it yet). `user` is the
        agent the REGISTER names (its To user), whose policy picks the challenge.
        """
        if not auth:
            return self.challenge(user=user)
        user = auth.get("username", "")
        nonce = auth.get("nonce", "")
        state = self._nonce_state(nonce)
        if state == "bad" or auth.get("realm") != REALM:
            return Refused(user, "bad nonce or realm")
        secret = self.secrets.get(user)
        agent = user  # the seat to bind: a derived username `801.<expiry>` binds 801
        if secret is None and self.browser is not None:
            match self.browser.check(user, self._clock()):
                case NotAccepted(reason=reason):
                    return Refused(user, reason)
                case Accepted(agent=seat, password=derived):
                    agent, secret = seat, derived
        if secret is None:
            return Refused(user, "unknown agent")
        policy = self.policies.get(agent, "strict")
        # RFC 7616 3.4: no algorithm parameter means MD5
        algorithm = auth.get("algorithm", "MD5").upper()
        if algorithm not in _HASHES or (policy != "strict" and algorithm != "MD5"):
            return Refused(user, f"unsupported algorithm {algorithm}")
        rfc2069 = policy == "legacy" and "qop" not in auth
        if auth.get("qop") != "auth" and not rfc2069:
            return Refused(user, "qop=auth required")
        uri = auth.get("uri", "")
        if request_uri is not None and uri != request_uri and not (
            policy == "legacy" and _same_uri_ignoring_params(uri, request_uri)
        ):
            return Refused(user, "uri is not the Request-URI")
        nc_text, cnonce = auth.get("nc", ""), auth.get("cnonce", "")
        try:
            nc = 1 if rfc2069 else int(nc_text, 16)
        except ValueError:
            return Refused(user, "bad nonce count")
        ha1 = _digest(algorithm, f"{user}:{REALM}:{secret}")
        ha2 = _digest(algorithm, f"{method}:{uri}")
        if rfc2069:
            expected = _digest(algorithm, f"{ha1}:{nonce}:{ha2}")
        else:
            expected = _digest(algorithm, f"{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}")
        if not hmac.compare_digest(expected, auth.get("response", "").lower()):
            return Refused(user, "wrong password")
        if state == "stale":
            # RFC 7616 3.3: stale=true only for an expired nonce with a valid response
            return self.challenge(stale=True, user=user)
        now = self._clock()
        highest, _ = self._counts.get(nonce, (0, now))
        if nc <= highest:
            if rfc2069:  # no nonce count to tell a replay from a re-registration: a fresh nonce
                return self.challenge(stale=True, user=user)
            return Refused(user, "replayed credentials")
        # a nonce older than its TTL is answered as stale above, so its count can go
        self._counts = {n: c for n, c in self._counts.items() if now - c[1] <= NONCE_TTL_S}
        self._counts[nonce] = (nc, now)
        if expires == 0 or contact is None:
            return Registered(agent, None, 0)
        granted = DEFAULT_EXPIRES if expires is None else max(MIN_EXPIRES, min(MAX_EXPIRES, expires))
        return Registered(agent, contact, granted)


def phone_address(source: tuple[str, int], contact: Any, trusted: Collection[str]) -> tuple[str, int]:
    """Where an agent's phone is: where its request came from (works through NAT, RFC 3581's
    spirit) — unless it came through the balancer in front (`trusted`); then its Contact URI says.

    A browser's WebSocket is the only way to it, trusted source or not: its Contact host is a made-up
    `.invalid` name (RFC 7118 §5.2), and a trusted proxy in front of WSS (or loopback) must not turn it
    into a UDP destination. Nor does a Contact naming a host name (the IVR sends only to addresses: it
    does no DNS on the call path): the balancer's own address is where the phone is reached then."""
    if isinstance(source, StreamAddress) and source.transport in ("WS", "WSS"):
        return source
    if source[0] in trusted and _is_address(contact.host):
        return (contact.host.strip("[]"), contact.port or 5060)
    return source


def _is_address(host: str | None) -> bool:
    try:
        ipaddress.ip_address((host or "").strip("[]"))
    except ValueError:
        return False
    return True


def first_hop(path: Sequence[str], source: tuple[str, int]) -> tuple[str, int]:
    """Where a phone reached through `path` is sent to: the first Path entry's address (RFC 3261 §8.1.2
    with a pre-loaded Route), or `source` when it names a host name (no DNS on the call path) or is unreadable."""
    try:
        uri = parse_uri(_uri_of(path[0]))
    except Exception:  # noqa: BLE001 — a Path we cannot read: the proxy that sent it is the next hop
        return source
    if not _is_address(uri.host):
        return source
    return (uri.host.strip("[]"), uri.port or 5060)


def path_flow(entry: str) -> str:
    """The connection a proxy's Path entry stands for: its `received` parameter (Kamailio's
    add_path_received, escaped or not), lowercased; "" when it names none."""
    for param in _uri_of(entry).split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "received":
            return urllib.parse.unquote(value.strip().strip('"')).lower()
    return ""


def _uri_of(entry: str) -> str:
    entry = entry.strip()
    return entry[entry.index("<") + 1: entry.index(">")] if "<" in entry and ">" in entry else entry


def join_path(path: Sequence[str]) -> str | None:
    """A Path as the shared-agents table stores it: one entry a line (a header value holds no line break,
    so the entries come back as they were, with no parsing of commas); None for none."""
    return "\n".join(path) or None


def split_path(text: str | None) -> tuple[str, ...]:
    """`join_path` undone."""
    return tuple(text.split("\n")) if text else ()


class RegisterHandler:
    """A REGISTER in, the response out: see the module docstring."""

    def __init__(self, registrar: Registrar, trusted: Collection[str],
                 auth_failed: Callable[[str, int, str, str], None],
                 bind: Callable[[str, tuple[str, int] | None, int, str | None, tuple[str, ...]], None],
                 bound_path: Callable[[str], tuple[str, ...]] = lambda agent: (),
                 flow_closed: Callable[[str], None] | None = None) -> None:
        """`auth_failed(host, port, user, reason)`: the guard's count towards a ban; `bind(agent, where,
        expires, contact URI, path)`: the agent logged in at `where` (None: logged out), reached through
        `path` (RFC 3327; () for none); `bound_path(agent)`: the Path the agent is bound with now;
        `flow_closed(agent)`: the proxy lost that phone's connection (None: logged out as by `bind`)."""
        self.registrar = registrar
        self.trusted = trusted
        self.auth_failed = auth_failed
        self.bind = bind
        self.bound_path = bound_path
        self.flow_closed = flow_closed

    def handle(self, request: SipRequest, addr: tuple[str, int]) -> tuple[int, str, list[tuple[str, str]]]:
        """The response to a REGISTER from `addr`. Retransmissions never get here: the transaction
        layer answers them with the response already sent, so their credentials never count as a replay."""
        raw_auth = request.get_header("authorization")
        auth = parse_auth(raw_auth) if raw_auth else None
        # credentials of a scheme we do not speak are no credentials: challenge (RFC 3261 §22.4)
        params = auth.params if auth is not None and auth.scheme.lower() == "digest" else None
        expires_raw = request.get_header("expires")
        contact: tuple[str, int] | None = None
        contact_raw = (request.get_header("contact") or "").strip()
        # RFC 3327: honoured from the balancer in front only (see the module docstring)
        path = tuple(request.headers.get("path")) if addr[0] in self.trusted else ()
        if contact_raw == "*":
            expires: int | None = 0
        else:
            try:
                address = parse_address(contact_raw)
                raw = address.params.get("expires") or expires_raw
                expires = int(raw) if raw else None
            except Exception:
                return 400, "Bad Contact", []
            contact = first_hop(path, addr) if path else phone_address(addr, address.uri, self.trusted)
        user = address_user(request.get_header("to") or "")
        if params is None and path and expires == 0 and self._flow_closed(user, path):
            if self.flow_closed is not None:
                self.flow_closed(user)  # a call ringing there goes back to the queue at once
            else:
                self.bind(user, None, 0, None, ())
            return 200, "OK", []
        decision = self.registrar.register(request.method, params, contact, expires, request_uri=request.uri,
                                           user=user)
        match decision:
            case Challenge(headers=challenges):
                # RFC 7616 §3.7: one challenge per algorithm, the preferred (SHA-256) first
                return 401, "Unauthorized", [("WWW-Authenticate", h) for h in challenges]
            case Refused(user=user, reason=reason):
                self.auth_failed(addr[0], addr[1], user, reason)
                return 403, "Forbidden", []
            case Registered(agent=agent, contact=where, expires=granted):
                uri = contact_raw[: contact_raw.index(">") + 1] if ">" in contact_raw else contact_raw.split(";")[0]
                self.bind(agent, where, granted, uri.strip().removeprefix("<").removesuffix(">") or None,
                          path if where is not None else ())
                if where is None:
                    return 200, "OK", []
                supported = {t.strip().lower() for v in request.headers.get("supported") for t in v.split(",")}
                echoed = [("Path", entry) for entry in path] if "path" in supported else []  # RFC 3327 §5.3
                return 200, "OK", [("Contact", f"{uri};expires={granted}"), *echoed]
        raise AssertionError(decision)

    def _flow_closed(self, agent: str, path: tuple[str, ...]) -> bool:
        """The trusted proxy's un-REGISTER of a connection it lost: it names the flow the agent is bound to now."""
        bound = self.bound_path(agent)
        return bool(bound) and path_flow(path[0]) != "" and path_flow(path[0]) == path_flow(bound[0])
