"""Per-source admission: request rate limits and the auth-failure ban.

Every SIP request passes `SourceGuard.admit` before the stack sees it. Each
source address has a moving-window budget per method group (INVITE,
REGISTER, OPTIONS, everything else; `[limits]` in sip.conf). Over budget, the
request is dropped silently (`excess = drop`, the default: a scanner learns
nothing, and a real client's retransmission timers back off by themselves),
or refused with 503 + Retry-After (`excess = reply`) — at most
`REPLY_PER_SECOND` answers a second per source, the rest dropped, so a flood
is not amplified. ACKs are never limited (they complete transactions and get no
answer). Addresses in `[limits] trusted` (a load balancer in front) skip the
checks.

Failed digest authentications are counted per source; `auth_failures` of them
within a minute bar that source from registering for `auth_ban_seconds`. Each
failure and each ban is one log line in a fixed format that fail2ban can
match (see `contrib/fail2ban/`), so ops can also block the address at the
firewall.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from enum import Enum

import structlog
from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from ivr.config import LimitsConfig

log = structlog.get_logger("ivr.security")
REPLY_PER_SECOND = 5
SUMMARY_EVERY_S = 10.0


class Verdict(Enum):
    ADMIT = "admit"
    REFUSE = "refuse"  # answer 503 + Retry-After
    DROP = "drop"  # say nothing
    BANNED = "banned"  # this source is barred from registering: no answer


def per_second(rate: float) -> RateLimitItem:
    """A limits item for a possibly fractional rate: 0.5/s is 1 per 2 seconds."""
    if rate >= 1:
        return RateLimitItemPerSecond(round(rate))
    return RateLimitItemPerSecond(1, math.ceil(1 / rate))


@dataclass(slots=True)
class _Tally:
    refused: int = 0
    dropped: int = 0
    since: float = field(default_factory=time.monotonic)


class _QuietMemoryStorage(MemoryStorage):
    """limits' in-memory storage, without the expiry timer thread it starts on every hit.

    limits 5.8's MemoryStorage schedules a 10 ms `threading.Timer` whenever the
    previous one has finished, i.e. it starts up to a hundred threads a second
    under load (7% of the event loop at 100 calls/s in py-spy). The engine calls
    `expire()` once a second instead.
    """

    def _MemoryStorage__schedule_expiry(self) -> None:  # the name-mangled private hook
        pass

    def expire(self) -> None:
        self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


class SourceGuard:
    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self._storage = _QuietMemoryStorage()
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._items = {
            "INVITE": per_second(config.invite_per_second),
            "REGISTER": per_second(config.register_per_second),
            "OPTIONS": per_second(config.options_per_second),
            "*": per_second(config.other_per_second),
        }
        self._reply = RateLimitItemPerSecond(REPLY_PER_SECOND)
        self._calls = per_second(config.max_invites_per_second)
        self._auth = RateLimitItemPerMinute(config.auth_failures)
        self._banned: dict[str, float] = {}  # source address -> monotonic time the ban ends
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self.refused = 0
        self.dropped = 0

    def admit(self, method: str, source: str) -> Verdict:
        if method == "ACK" or source in self.config.trusted:
            return Verdict.ADMIT
        if method == "REGISTER" and self.banned(source):
            return Verdict.BANNED
        group = method if method in self._items else "*"
        if self._limiter.hit(self._items[group], source, group):
            return Verdict.ADMIT
        reply = self.config.excess == "reply" and self._limiter.hit(self._reply, source, "reply")
        self._count(source, group, reply)
        return Verdict.REFUSE if reply else Verdict.DROP

    def expire(self) -> None:
        """Forget windows that have passed (call about once a second)."""
        self._storage.expire()

    def admit_call(self) -> bool:
        """The global INVITE budget (`max_invites_per_second`), all sources together."""
        return self._limiter.hit(self._calls, "*", "calls")

    def banned(self, source: str) -> bool:
        until = self._banned.get(source)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._banned[source]
        return False

    def auth_failed(self, source: str, port: int, user: str, reason: str) -> None:
        """One failed digest authentication; bans the source after too many."""
        # fail2ban: failregex = auth_failed .* source=<HOST>:
        log.warning("auth_failed", source=f"{source}:{port}", user=user, reason=reason)
        if source in self.config.trusted or self._limiter.hit(self._auth, source, "auth"):
            return
        if self.config.auth_ban_seconds > 0 and not self.banned(source):
            self._banned[source] = time.monotonic() + self.config.auth_ban_seconds
            log.warning("auth_banned", source=f"{source}:{port}", failures=self.config.auth_failures,
                        ban_s=self.config.auth_ban_seconds)

    def _count(self, source: str, group: str, replied: bool) -> None:
        if replied:
            self.refused += 1
        else:
            self.dropped += 1
        tally = self._tallies.get((source, group))
        now = time.monotonic()
        if tally is None and len(self._tallies) >= 4096:  # spoofed sources: forget the quiet ones
            self._tallies = {k: t for k, t in self._tallies.items() if now - t.since < SUMMARY_EVERY_S}
        if tally is None:  # the first refusal for this source is logged at once ...
            self._tallies[(source, group)] = _Tally(int(replied), int(not replied), now)
            log.warning("rate_limited", source=source, method=group, refused=int(replied), dropped=int(not replied))
            return
        if replied:
            tally.refused += 1
        else:
            tally.dropped += 1
        if now - tally.since >= SUMMARY_EVERY_S:  # ... then one summary line per 10 s while it lasts
            log.warning("rate_limited", source=source, method=group, refused=tally.refused, dropped=tally.dropped,
                        over_s=round(now - tally.since, 1))
            tally.refused = tally.dropped = 0
            tally.since = now
