"""Business hours: is the hotline serving now, when does it open, how to say so.

Ops write a schedule per seat group or called number in `[hours]`:

    default = 08:00-22:00
    senior = 00:00-24:00
    4008000000 = mon-fri 08:30-17:30, sat-sun closed, holiday closed

A schedule is a comma-separated list of items `[days] window... | closed`:
days are `daily` (the default when left out), a day `mon` … `sun`, a range
`mon-fri` (wrapping ranges like `sat-mon` work), or `holiday`; a window is
`HH:MM-HH:MM` (end `24:00` allowed; an end before the start runs past
midnight into the next day — the window belongs to the day it starts on).
Later items override earlier ones for the days they name.

Holidays are the days the greeting's holiday calendar names (元旦, 春节,
劳动节, 中秋, 国庆, and whatever the ops override file adds or removes,
`ivr.greeting.HolidayCalendar.holiday_on`), so the holiday greeting and the
holiday hours can never disagree. Without a `holiday` item a holiday keeps
its weekday hours: the scripts greet holiday callers ("新年好!…"), so by
default the hotline serves on holidays.

Which schedule applies: the caller's seat group if it has one (the senior
group may serve around the clock), else the called number's, else
`default`. Nothing here reads a clock: every function takes the moment.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from itertools import pairwise
from types import MappingProxyType
from zoneinfo import ZoneInfo

from prompts.chinese_numbers import count

DAY = 24 * 60  # minutes
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_WORDS = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")
HOLIDAY = "holiday"
DEFAULT_SCHEDULE = "default"
LOOKAHEAD_DAYS = 62  # next_opening gives up after this: longer than any holiday break
_WINDOW_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


@dataclass(frozen=True, slots=True)
class Window:
    """Open from `start` to `end`, minutes after the midnight of the day it starts; `end` may pass 1440."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not (0 <= self.start < DAY and self.start < self.end <= self.start + DAY):
            raise ValueError(f"bad opening window {self.start}-{self.end}")


@dataclass(frozen=True, slots=True)
class Schedule:
    """Opening windows per weekday (Monday first) and, optionally, for holidays."""

    weekly: tuple[tuple[Window, ...], ...]
    holiday: tuple[Window, ...] | None = None  # None: holidays keep their weekday hours

    def windows_on(self, day: date, is_holiday: bool) -> tuple[Window, ...]:
        if is_holiday and self.holiday is not None:
            return self.holiday
        return self.weekly[day.weekday()]


ALWAYS_OPEN = Schedule(weekly=((Window(0, DAY),),) * 7)


def _minutes(hours: str, minutes: str, *, end: bool) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and (m or not end)):
        raise ValueError(f"{hours}:{minutes} is not a time of day")
    return h * 60 + m


def _window(token: str) -> Window:
    m = _WINDOW_RE.match(token)
    if not m:
        raise ValueError(f"expected a window like 08:00-22:00, got {token!r}")
    start = _minutes(m.group(1), m.group(2), end=False)
    end = _minutes(m.group(3), m.group(4), end=True)
    if end == start:
        raise ValueError(f"{token} opens and closes at the same time; write 00:00-24:00 for all day")
    return Window(start, end if end > start else end + DAY)  # 20:00-08:00 runs into the next day


def _days(token: str) -> tuple[int, ...] | None:
    """Weekday indexes for a day token, None for `holiday`; ValueError if it is not a day token."""
    if token == HOLIDAY:
        return None
    if token == "daily":
        return tuple(range(7))
    first, _, last = token.partition("-")
    if first not in WEEKDAYS or (last and last not in WEEKDAYS):
        raise ValueError(f"unknown day {token!r}; use daily, mon … sun, a range like mon-fri, or holiday")
    a, b = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
    return tuple((a + i) % 7 for i in range((b - a) % 7 + 1))


def parse_schedule(raw: str) -> Schedule:
    """`mon-fri 08:00-22:00, sat-sun 09:00-18:00, holiday closed` -> Schedule; ValueError says what is wrong."""
    weekly: list[tuple[Window, ...]] = [()] * 7
    holiday: tuple[Window, ...] | None = None
    items = [item.split() for item in raw.lower().split(",")]
    if not any(items):
        raise ValueError("empty; write e.g. 08:00-22:00")
    for tokens in items:
        if not tokens:
            raise ValueError("an empty item between commas")
        days: tuple[int, ...] | None = tuple(range(7))
        if tokens[0][0].isalpha() and tokens[0] != "closed":
            days = _days(tokens[0])
            tokens = tokens[1:]
        if tokens == ["closed"]:
            windows: tuple[Window, ...] = ()
        elif tokens:
            windows = tuple(sorted((_window(t) for t in tokens), key=lambda w: w.start))
            for before, after in pairwise(windows):
                if after.start < before.end:
                    raise ValueError("opening windows of one day overlap")
        else:
            raise ValueError("each item needs its hours (HH:MM-HH:MM) or closed")
        if days is None:
            holiday = windows
        else:
            for d in days:
                weekly[d] = windows
    return Schedule(weekly=tuple(weekly), holiday=holiday)


@dataclass(frozen=True, slots=True)
class HoursConfig:
    """`[hours]`: schedules by seat group or called number (and `default`), in `timezone`."""

    timezone: str = "Asia/Shanghai"
    schedules: Mapping[str, Schedule] = field(default_factory=lambda: MappingProxyType({DEFAULT_SCHEDULE: ALWAYS_OPEN}))


class BusinessHours:
    """Opening hours for the hotline, with holidays from the greeting's calendar."""

    def __init__(self, config: HoursConfig, holiday_on: Callable[[date], str | None]) -> None:
        self.zone = ZoneInfo(config.timezone)
        self.schedules = dict(config.schedules)
        self.schedules.setdefault(DEFAULT_SCHEDULE, ALWAYS_OPEN)
        self._holiday_on = holiday_on

    def schedule_for(self, number: str | None = None, seat_group: str | None = None) -> str:
        """The name of the schedule that applies: seat group, else called number, else default."""
        for name in (seat_group, number):
            if name is not None and name in self.schedules:
                return name
        return DEFAULT_SCHEDULE

    def _windows(self, schedule: Schedule, day: date) -> tuple[Window, ...]:
        return schedule.windows_on(day, self._holiday_on(day) is not None)

    def is_open(self, moment: datetime, number: str | None = None, seat_group: str | None = None) -> bool:
        schedule = self.schedules[self.schedule_for(number, seat_group)]
        local = moment.astimezone(self.zone)
        minute = local.hour * 60 + local.minute + local.second / 60
        today, yesterday = local.date(), local.date() - timedelta(days=1)
        if any(w.start <= minute < w.end for w in self._windows(schedule, today)):
            return True
        # a window from yesterday that runs past midnight (20:00-02:00)
        return any(w.start <= minute + DAY < w.end for w in self._windows(schedule, yesterday))

    def next_opening(self, moment: datetime, number: str | None = None,
                     seat_group: str | None = None) -> datetime | None:
        """`moment` itself when open, else when the schedule next opens; None if not within LOOKAHEAD_DAYS."""
        if self.is_open(moment, number, seat_group):
            return moment
        schedule = self.schedules[self.schedule_for(number, seat_group)]
        local = moment.astimezone(self.zone)
        for offset in range(LOOKAHEAD_DAYS + 1):
            day = local.date() + timedelta(days=offset)
            for window in self._windows(schedule, day):
                start = datetime.combine(day, clock_time(window.start // 60, window.start % 60), self.zone)
                if start > local:
                    return start
        return None

    def describe(self, number: str | None = None, seat_group: str | None = None) -> str:
        """The opening times in Chinese, for the closed message: "每天八点到二十二点"."""
        return describe(self.schedules[self.schedule_for(number, seat_group)])

    def closed_prompt(self, number: str | None = None, seat_group: str | None = None) -> str:
        """The closed message to play for this caller: closed_<schedule>."""
        return closed_prompt(self.schedule_for(number, seat_group))


# --- saying it in Chinese ---------------------------------------------------------


def clock_words(minute: int) -> str:
    """A time of day as spoken: 480 -> 八点, 510 -> 八点半, 485 -> 八点零五分, 0 -> 零点, 1440 -> 二十四点."""
    hours, minutes = divmod(minute, 60)
    words = "零点" if hours == 0 else count(hours, "点")  # 两点, 十二点, 二十二点
    if minutes == 30:
        return words + "半"
    if minutes:
        words += ("零" if minutes < 10 else "") + count(minutes, "分").replace("两", "二")
    return words


def _window_words(window: Window) -> str:
    if window.end > DAY:
        return f"{clock_words(window.start)}到次日{clock_words(window.end - DAY)}"
    return f"{clock_words(window.start)}到{clock_words(window.end)}"


def _windows_words(windows: tuple[Window, ...]) -> str:
    if windows == (Window(0, DAY),):
        return "全天"
    return "、".join(_window_words(w) for w in windows)


def _day_span(days: list[int]) -> str:
    if len(days) == 7:
        return "每天"
    if len(days) == 1:
        return WEEKDAY_WORDS[days[0]]
    if len(days) == 2:
        return f"{WEEKDAY_WORDS[days[0]]}、{WEEKDAY_WORDS[days[1]]}"
    return f"{WEEKDAY_WORDS[days[0]]}至{WEEKDAY_WORDS[days[-1]]}"


def describe(schedule: Schedule) -> str:
    """The schedule in Chinese: "每天八点到二十二点", "周一至周五八点半到十七点半,节假日休息"."""
    if schedule.weekly == ALWAYS_OPEN.weekly and schedule.holiday in (None, ALWAYS_OPEN.weekly[0]):
        return "每天二十四小时"
    parts: list[str] = []
    run: list[int] = []
    for day in range(7):  # runs of consecutive days with the same hours
        if run and schedule.weekly[day] != schedule.weekly[run[0]]:
            if schedule.weekly[run[0]]:
                parts.append(_day_span(run) + _windows_words(schedule.weekly[run[0]]))
            run = []
        run.append(day)
    if schedule.weekly[run[0]]:
        parts.append(_day_span(run) + _windows_words(schedule.weekly[run[0]]))
    if schedule.holiday is not None:
        parts.append("节假日" + (_windows_words(schedule.holiday) if schedule.holiday else "休息"))
    return ",".join(parts) if parts else "暂不提供人工服务"


def closed_prompt(schedule: str) -> str:
    """Prompt id of the closed message for a schedule: closed_default, closed_senior, closed_4008000000."""
    return f"closed_{schedule}"
