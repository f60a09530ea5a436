"""The built-in registrar for agents' softphones: digest authentication and bindings.

Sans-IO: the engine adapter hands in the REGISTER's fields and sends what
comes back. Digest per RFC 7616 as SIP uses it (RFC 3261 22.4, RFC 8760):

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
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

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


class Registrar:
    def __init__(self, secrets: dict[str, str], *, key: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.secrets = secrets
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

    def challenge(self, stale: bool = False) -> Challenge:
        nonce = self._nonce()
        extra = ", stale=true" if stale else ""
        return Challenge(tuple(
            f'Digest realm="{REALM}", nonce="{nonce}", algorithm={algorithm}, qop="auth"{extra}'
            for algorithm in _HASHES
        ))

    def register(
        self,
        method: str,
        auth: dict[str, str] | None,
        contact: tuple[str, int] | None,
        expires: int | None,
        *,
        request_uri: str | None = None,
    ) -> Challenge | Refused | Registered:
        """Decide on a REGISTER: `auth` is the parsed Authorization parameters (or None).

        `request_uri` is the REGISTER's Request-URI, which the response's `uri` must equal;
        None skips that check (for a caller that does not pass it yet).
        """
        if not auth:
            return self.challenge()
        user = auth.get("username", "")
        nonce = auth.get("nonce", "")
        state = self._nonce_state(nonce)
        if state == "bad" or auth.get("realm") != REALM:
            return Refused(user, "bad nonce or realm")
        secret = self.secrets.get(user)
        if secret is None:
            return Refused(user, "unknown agent")
        # RFC 7616 3.4: no algorithm parameter means MD5
        algorithm = auth.get("algorithm", "MD5").upper()
        if algorithm not in _HASHES:
            return Refused(user, f"unsupported algorithm {algorithm}")
        if auth.get("qop") != "auth":
            return Refused(user, "qop=auth required")
        uri = auth.get("uri", "")
        if request_uri is not None and uri != request_uri:
            return Refused(user, "uri is not the Request-URI")
        nc_text, cnonce = auth.get("nc", ""), auth.get("cnonce", "")
        try:
            nc = int(nc_text, 16)
        except ValueError:
            return Refused(user, "bad nonce count")
        ha1 = _digest(algorithm, f"{user}:{REALM}:{secret}")
        ha2 = _digest(algorithm, f"{method}:{uri}")
        expected = _digest(algorithm, f"{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}")
        if not hmac.compare_digest(expected, auth.get("response", "").lower()):
            return Refused(user, "wrong password")
        if state == "stale":
            # RFC 7616 3.3: stale=true only for an expired nonce with a valid response
            return self.challenge(stale=True)
        now = self._clock()
        highest, _ = self._counts.get(nonce, (0, now))
        if nc <= highest:
            return Refused(user, "replayed credentials")
        # a nonce older than its TTL is answered as stale above, so its count can go
        self._counts = {n: c for n, c in self._counts.items() if now - c[1] <= NONCE_TTL_S}
        self._counts[nonce] = (nc, now)
        if expires == 0 or contact is None:
            return Registered(user, None, 0)
        granted = DEFAULT_EXPIRES if expires is None else max(MIN_EXPIRES, min(MAX_EXPIRES, expires))
        return Registered(user, contact, granted)
