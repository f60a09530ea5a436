"""Admission: whether a SIP request off the wire goes on to the stack.

Every request passes `Admission.admit` before the stack sees it. First,
overload control: a new call (an INVITE without a To tag) beyond the global
INVITE budget (`max_invites_per_second`, all sources together), or while the
event loop runs more than `max_loop_lag_ms` late (the machine cannot keep up,
whatever the configuration says), is refused at once with 503 + Retry-After
and logged as `overload_refused` (a line a second at most). Then
`SourceGuard.admit`, the per-source checks below; and while the IVR drains,
OPTIONS get 503, so a load balancer's probe takes the worker out of rotation.

The worker's load (`Admission.load`, 0-100) is the busiest of three: calls in
progress against `max_calls`, the INVITE budget used in the last second, and
the event loop's worst lag of the last one to two seconds against
`max_loop_lag_ms`. Every answer to OPTIONS carries it (`X-Hotline-Load: 73`),
and at `busy_load_percent` or more the answer is 503 + Retry-After: a balancer
probing with OPTIONS then sends new calls elsewhere, or refuses them itself
when every worker is busy, before this worker has to accept calls it cannot
carry. Nothing is computed per packet: the load is read when a probe arrives.

Each source address has a moving-window budget per method group (INVITE,
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

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import structlog
from aiosipua import SipRequest
from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from ivr.config import LimitsConfig

log = structlog.get_logger("ivr.security")
overload_log = structlog.get_logger("ivr.overload")  # not an attack: the machine or the call rate
REPLY_PER_SECOND = 5
SUMMARY_EVERY_S = 10.0
LAG_PROBE_S = 0.05  # how often the event loop's lag is measured: a timer of this length, and how late it fires

# answers a refused request: (request, source, status, reason, headers); the engine's, which counts it too
Refuse = Callable[[SipRequest, tuple[str, int], int, str, dict[str, str]], None]


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

    def invite_budget_used(self) -> float:
        """The share of the global INVITE budget taken in the current window: 0.0-1.0."""
        stats = self._limiter.get_window_stats(self._calls, "*", "calls")
        return (self._calls.amount - stats.remaining) / self._calls.amount

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


LOAD_HEADER = "X-Hotline-Load"
REFUSED_MEMORY_S = 10.0  # how long a refused INVITE's retransmissions are refused too
REFUSED_MEMORY_MAX = 50_000  # at most this many remembered (the oldest are forgotten first)


class Admission:
    """Overload control for new calls, then the per-source `SourceGuard`; answers what it refuses."""

    def __init__(self, guard: SourceGuard, refuse: Refuse, *, calls: Callable[[], int] = lambda: 0,
                 max_calls: int = 0) -> None:
        self.guard = guard
        self.loop_lag = 0.0  # how late the event loop ran a 50 ms timer, last time it looked
        self.max_loop_lag = guard.config.max_loop_lag_ms / 1000
        self._refuse = refuse
        self._overload_refusals, self._overload_logged = 0, -1.0
        self._calls, self._max_calls = calls, max_calls  # calls in progress, and [general] max_calls (0: none)
        # the worst lag of this second and of the one before: a probe every second or two sees every
        # spike, where the last 50 ms sample alone would mostly miss them
        self._lag_second, self._lag_peak, self._lag_peak_before = 0, 0.0, 0.0
        # New calls refused for overload, by (Call-ID, top Via): a 503 sent without a transaction
        # does not absorb the INVITE's retransmissions, and one admitted a moment later (the
        # budget or the lag recovered) would be answered 200 after the caller, or the balancer
        # in front, took the 503: a call answered that nobody acknowledges, i.e. lost.
        self._refused: OrderedDict[tuple[str, str], float] = OrderedDict()

    def note_loop_lag(self, lag: float, now: float) -> None:
        """One measurement of the event loop's lag (seconds) at monotonic time `now`."""
        self.loop_lag = lag
        second = int(now)
        if second != self._lag_second:
            self._lag_peak_before = self._lag_peak if second == self._lag_second + 1 else 0.0
            self._lag_second, self._lag_peak = second, 0.0
        self._lag_peak = max(self._lag_peak, lag)

    def load(self, now: float | None = None) -> int:
        """0-100: the busiest of calls vs max_calls, the INVITE budget used in the last second, the loop's lag."""
        now = time.monotonic() if now is None else now
        second = int(now)
        lags = [self.loop_lag]
        if second == self._lag_second:
            lags += [self._lag_peak, self._lag_peak_before]
        elif second == self._lag_second + 1:
            lags.append(self._lag_peak)
        shares = [max(lags) / self.max_loop_lag, self.guard.invite_budget_used()]
        if self._max_calls > 0:
            shares.append(self._calls() / self._max_calls)
        return min(100, round(100 * max(shares)))

    def busy(self, load: int) -> bool:
        """At this load OPTIONS get 503: the worker asks a balancer for no more calls for now."""
        return load >= self.guard.config.busy_load_percent

    async def watch_loop_lag(self) -> None:
        """Measure the event loop's lag for ever (a task the engine starts and cancels)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self.note_loop_lag(loop.time() - started - LAG_PROBE_S, time.monotonic())

    def _remember_refused(self, key: tuple[str, str]) -> None:
        now = time.monotonic()
        refused = self._refused
        while refused:  # oldest first: stop at the first one still fresh
            oldest = next(iter(refused))
            if now - refused[oldest] < REFUSED_MEMORY_S and len(refused) < REFUSED_MEMORY_MAX:
                break
            refused.popitem(last=False)
        refused[key] = now

    def admit(self, request: SipRequest, addr: tuple[str, int], *, accepting: bool) -> bool:
        """Overload, per-source limits, the auth ban and draining (`accepting` False); answers what it refuses."""
        if request.method == "INVITE" and ";tag=" not in (request.get_header("to") or ""):
            key = (request.get_header("call-id") or "", request.get_header("via") or "")
            if key in self._refused:  # a retransmission of an INVITE refused already: the same answer
                self._refuse(request, addr, 503, "Service Unavailable", {"Retry-After": "2"})
                return False
            lagging = self.loop_lag > self.max_loop_lag
            if lagging or not self.guard.admit_call():
                self._remember_refused(key)
                # overload control: beyond the configured call rate, or while the event loop
                # is behind (the machine cannot keep up, whatever the configuration says),
                # refuse new calls at once and cheaply instead of letting transactions pile
                # up until everything times out
                self._overload_refusals += 1
                now = time.monotonic()
                if now - self._overload_logged >= 1.0:  # a line a second at most, with the count since the last
                    overload_log.warning("overload_refused", reason="event loop lag" if lagging else "call rate",
                                         lag_ms=round(1000 * self.loop_lag), refused=self._overload_refusals)
                    self._overload_logged, self._overload_refusals = now, 0
                self._refuse(request, addr, 503, "Service Unavailable", {"Retry-After": "2"})
                return False
        verdict = self.guard.admit(request.method, addr[0])
        if verdict is Verdict.ADMIT:
            if request.method == "OPTIONS" and not accepting:
                # a load balancer probing with OPTIONS takes this worker out of rotation
                self._refuse(request, addr, 503, "Service Unavailable", {"Retry-After": "30"})
                return False
            if request.method == "OPTIONS":
                load = self.load()
                if self.busy(load):
                    # busy: a balancer's probe takes this worker out of rotation until a probe finds it
                    # below busy_load_percent again, so calls it could not carry go elsewhere or are
                    # refused at the balancer, instead of being accepted here and lost
                    self._refuse(request, addr, 503, "Service Unavailable",
                                 {"Retry-After": "1", LOAD_HEADER: str(load)})
                    return False
            return True
        if verdict is Verdict.REFUSE:
            self._refuse(request, addr, 503, "Service Unavailable", {"Retry-After": "5"})
        # DROP and BANNED: no answer at all, so a password guesser learns nothing more
        return False
