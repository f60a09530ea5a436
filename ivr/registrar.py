"""The built-in registrar for agents' softphones: digest authentication and bindings.

Sans-IO: the engine adapter hands in the REGISTER's fields and sends what
comes back. Digest per RFC 7616 / RFC 2617 (MD5, qop=auth or none). Nonces
are stateless — `timestamp.random:HMAC(key, timestamp.random)` — and expire after
`NONCE_TTL_S`; a (nonce, nc, cnonce) triple is accepted once, so a captured REGISTER
cannot be replayed.
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


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 (digest auth is defined on MD5)


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send 401 with this WWW-Authenticate value."""

    header: str


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
    def __init__(self, secrets: dict[str, str], *, key: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self.secrets = secrets
        self._key = key or os.urandom(32)
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}  # (nonce, nc:cnonce) -> when used

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
        extra = ", stale=true" if stale else ""
        return Challenge(f'Digest realm="{REALM}", nonce="{self._nonce()}", algorithm=MD5, qop="auth"{extra}')

    def register(
        self,
        method: str,
        auth: dict[str, str] | None,
        contact: tuple[str, int] | None,
        expires: int | None,
    ) -> Challenge | Refused | Registered:
        """Decide on a REGISTER: `auth` is the parsed Authorization parameters (or None)."""
        if not auth:
            return self.challenge()
        user = auth.get("username", "")
        nonce = auth.get("nonce", "")
        state = self._nonce_state(nonce)
        if state == "stale":
            return self.challenge(stale=True)
        if state == "bad" or auth.get("realm") != REALM:
            return Refused(user, "bad nonce or realm")
        secret = self.secrets.get(user)
        if secret is None:
            return Refused(user, "unknown agent")
        ha1 = _md5(f"{user}:{REALM}:{secret}")
        ha2 = _md5(f"{method}:{auth.get('uri', '')}")
        qop = auth.get("qop")
        if qop == "auth":
            nc, cnonce = auth.get("nc", ""), auth.get("cnonce", "")
            expected = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
            replay_key = (nonce, f"{nc}:{cnonce}")
        else:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
            replay_key = (nonce, "")
        if not hmac.compare_digest(expected, auth.get("response", "").lower()):
            return Refused(user, "wrong password")
        if replay_key in self._seen:
            return Refused(user, "replayed credentials")
        now = self._clock()
        self._seen = {k: t for k, t in self._seen.items() if now - t <= NONCE_TTL_S}
        self._seen[replay_key] = now
        if expires == 0 or contact is None:
            return Registered(user, None, 0)
        granted = DEFAULT_EXPIRES if expires is None else max(MIN_EXPIRES, min(MAX_EXPIRES, expires))
        return Registered(user, contact, granted)
