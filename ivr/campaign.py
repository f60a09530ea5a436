"""The rules of calls the IVR places by itself (follow-ups, `crm_bridge.followups`): when, how often, how fast.

Sans-IO: every function takes the moment it decides for; nothing reads a
clock, a socket or the database.

- `CallingWindow`: calling hours in the hotline's time zone (default
  09:00-20:00), never on public holidays (the greeting's calendar,
  `ivr.greeting.HolidayCalendar`: 清明 and 端午 too, 调休 rest days) unless
  configured, nor — by default — on a weekend that is not a 调休 make-up
  working day. `next_opening` is when a follow-up due outside it is dialled.
- `retry_delay`: the backoff after a no-answer or busy attempt.
- `Pacer`: at most `max_concurrent` calls up and `per_second` new calls a
  second per worker, and none while inbound callers wait in a queue longer
  than `queue_threshold` or the IVR refuses calls for overload: callers who
  dialled in are served first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

MAX_DAYS_AHEAD = 60  # a window closed this long (a misconfiguration) is reported, not searched forever


class NoCallingDay(ValueError):
    """No day in the next `MAX_DAYS_AHEAD` days allows calls (holidays and weekends both excluded, say)."""


@dataclass(frozen=True, slots=True)
class CallingWindow:
    start: time = time(9, 0)
    end: time = time(20, 0)
    zone: ZoneInfo = ZoneInfo("Asia/Shanghai")
    # (day, weekends_off) -> True when no calls are made that day (HolidayCalendar.is_day_off)
    day_off: Callable[..., bool] = lambda day, weekends=True: weekends and day.weekday() >= 5
    on_holidays: bool = False  # call on public holidays too
    on_weekends: bool = False  # call on ordinary Saturdays and Sundays too

    def calling_day(self, day: date) -> bool:
        if self.on_holidays:
            return self.on_weekends or day.weekday() < 5 or not self.day_off(day, weekends=True)
        return not self.day_off(day, weekends=not self.on_weekends)

    def allows(self, at: datetime) -> bool:
        local = at.astimezone(self.zone)
        # an end of time.max is 24:00, midnight itself: the day's last microsecond is in the window too
        before_end = local.time() < self.end or self.end == time.max
        return self.start <= local.time() and before_end and self.calling_day(local.date())

    def next_opening(self, at: datetime) -> datetime:
        """`at` itself when calls are allowed then, else the next moment they are (UTC)."""
        if self.allows(at):
            return at
        local = at.astimezone(self.zone)
        day = local.date()
        if local.time() >= self.start:
            day += timedelta(days=1)
        for _ in range(MAX_DAYS_AHEAD):
            if self.calling_day(day):
                return datetime.combine(day, self.start, self.zone).astimezone(at.tzinfo)
            day += timedelta(days=1)
        raise NoCallingDay(f"no calling day within {MAX_DAYS_AHEAD} days of {local.date()}")

    def day_of(self, at: datetime) -> date:
        return at.astimezone(self.zone).date()


def retry_delay(attempts: int, retry_seconds: float) -> timedelta:
    """The wait after the `attempts`-th attempt went unanswered: retry_seconds, doubling after each."""
    return timedelta(seconds=retry_seconds * 2 ** max(0, attempts - 1))


class Pacer:
    """How many follow-ups one worker may start now. `monotonic` seconds in, a count out."""

    def __init__(self, max_concurrent: int, per_second: float, queue_threshold: int) -> None:
        self.max_concurrent = max_concurrent
        self.per_second = per_second
        self.queue_threshold = queue_threshold
        self._tokens = float(max(1.0, per_second))
        self._at: float | None = None

    def _refill(self, monotonic: float) -> None:
        if self._at is not None:
            self._tokens = min(max(1.0, self.per_second), self._tokens + (monotonic - self._at) * self.per_second)
        self._at = monotonic

    def may_start(self, monotonic: float, active: int, inbound_waiting: int, overloaded: bool) -> int:
        """New calls allowed now: 0 while inbound callers wait beyond the threshold or the IVR is overloaded."""
        self._refill(monotonic)
        if overloaded or inbound_waiting > self.queue_threshold:
            return 0
        return max(0, min(self.max_concurrent - active, int(self._tokens)))

    def started(self, count: int = 1) -> None:
        self._tokens -= count
