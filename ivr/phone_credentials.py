"""Short-lived SIP credentials for the desk's browser phone: derived on both sides, stored nowhere.

An agent whose seat says `phone = browser` (or `both`) answers calls in the desk page
(JsSIP over WebSocket). The page must register as that seat, but it must not hold the
seat's SIP secret: the desk hands it, for the logged-in session only, a digest
username and password derived from `[browser_phone] token_secret`, which the desk and
the IVR both read from sip.conf:

    authorization_user = "801.<expiry unix seconds>"
    password           = base64url(HMAC-SHA256(token_secret, authorization_user)), unpadded

The registrar derives the same password from the username it is sent, so it needs no
table of issued credentials, and a username whose agent or expiry was altered yields
another password (its digest fails). A credential is good until its expiry; the page
fetches a fresh one before then. The expiry may not lie further ahead than the
configured lifetime (plus a minute of clock skew): a credential minted by a wrong
clock or for years ahead is refused rather than trusted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass

SKEW_S = 60  # clock difference tolerated between the desk and an IVR worker


def derive_password(secret: str, username: str) -> str:
    """The password of a derived username: base64url(HMAC-SHA256(secret, username)) without padding."""
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the desk hands the page: the digest username and password, and when they stop working."""

    authorization_user: str
    password: str
    expires: int  # unix seconds


def issue(secret: str, agent: str, now: float, lifetime_s: int) -> Credentials:
    expires = int(now) + lifetime_s
    username = f"{agent}.{expires}"
    return Credentials(username, derive_password(secret, username), expires)


def split_username(username: str) -> tuple[str, int] | None:
    """`801.1765000000` -> ("801", 1765000000); None for anything else (an ordinary agent number, junk)."""
    agent, dot, expiry = username.partition(".")
    if not dot or not agent.isdigit() or not expiry.isdigit() or len(expiry) > 12:
        return None
    return agent, int(expiry)


@dataclass(frozen=True, slots=True)
class Accepted:
    agent: str
    password: str  # the derived password the digest must be computed with


@dataclass(frozen=True, slots=True)
class NotAccepted:
    reason: str


class BrowserCredentials:
    """The registrar's side: which derived usernames it takes, and the password each must prove."""

    def __init__(self, secret: str, agents: Collection[str], lifetime_s: int) -> None:
        self.secret = secret
        self.agents = frozenset(agents)  # seats with phone = browser or both
        self.lifetime_s = lifetime_s

    def check(self, username: str, now: float) -> Accepted | NotAccepted | None:
        """None: not a derived username at all (the registrar looks it up as an agent number)."""
        parts = split_username(username)
        if parts is None:
            return None
        agent, expiry = parts
        if agent not in self.agents:
            return NotAccepted("agent has no browser phone")
        if expiry <= now:
            return NotAccepted("browser credential expired")
        if expiry > now + self.lifetime_s + SKEW_S:
            return NotAccepted("browser credential outlives its lifetime")
        return Accepted(agent, derive_password(self.secret, username))
