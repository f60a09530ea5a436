"""Which opening the caller hears: time-of-day words or a holiday greeting.

Spec §2 ([004], [000]): mornings (00:00-12:00 by default) open with "早上好",
the rest of the day with "您好"; on statutory holidays a holiday opening
replaces both. The holiday dates are "以每次节日通知为准" — announced anew
each year — so they come from three layers, strongest first:

1. the ops override file (TOML, re-read when it changes, no restart needed),
2. `chinese_calendar`, which carries the State Council's published periods
   including 调休 rest days, but only for the years it knows (2004-2026),
3. `holidays` (country CN), which computes the lunar festivals for any year.
"""

from __future__ import annotations

import functools
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

import structlog

log = structlog.get_logger(__name__)

# The holidays that have an opening of their own ([004]); 清明 and 端午 do not.
HOLIDAY_KINDS = ("new_year", "spring_festival", "labour_day", "mid_autumn", "national_day")
# An override may also say "none": no holiday greeting on those days.
NO_HOLIDAY = "none"
# … or "workday": a 调休 make-up working day (a weekend day worked); no holiday greeting either.
WORKDAY = "workday"


@dataclass(frozen=True, slots=True)
class Daypart:
    """From `start` until the next day-part, greet with `word`; recorded as `name`."""

    start: clock_time
    name: str
    word: str


# [004]: "早上好" until noon, the normal "您好" after.
DEFAULT_DAYPARTS = (
    Daypart(clock_time(0, 0), "morning", "早上好"),
    Daypart(clock_time(12, 0), "normal", "您好"),
)
# [000]'s five-part split, selectable in sip.conf.
FIVE_PART_DAYPARTS = (
    Daypart(clock_time(0, 0), "morning", "早上好"),
    Daypart(clock_time(9, 0), "forenoon", "上午好"),
    Daypart(clock_time(11, 30), "noon", "中午好"),
    Daypart(clock_time(13, 30), "afternoon", "下午好"),
    Daypart(clock_time(18, 0), "evening", "晚上好"),
)


@dataclass(frozen=True, slots=True)
class Greeting:
    """The chosen opening: `kind` is what the CRM records, `prompt` what is played."""

    kind: str
    prompt: str


def greeting_prompt_id(kind: str) -> str:
    """Prompt id for a greeting kind: `morning` -> `greeting_morning`."""
    return "greeting_" + kind.replace("holiday:", "holiday_")


def greeting_for(moment: datetime, dayparts: tuple[Daypart, ...], holiday: str | None) -> Greeting:
    """The greeting for a local `moment`, given the holiday on its date (if any)."""
    if holiday is not None and holiday != NO_HOLIDAY:
        kind = f"holiday:{holiday}"
    else:
        now = moment.time()
        current = dayparts[0]
        for part in dayparts:
            if part.start <= now:
                current = part
        kind = current.name
    return Greeting(kind=kind, prompt=greeting_prompt_id(kind))


# --- holiday calendar ----------------------------------------------------------

_CHINESE_CALENDAR_NAMES = {
    "New Year's Day": "new_year",
    "Spring Festival": "spring_festival",
    "Labour Day": "labour_day",
    "Mid-autumn Festival": "mid_autumn",
    "National Day": "national_day",
}
# `holidays` names days in zh_CN; rest days read "休息日（由 … 调休）".
_HOLIDAYS_NAMES = {
    "元旦": "new_year",
    "农历除夕": "spring_festival",
    "春节": "spring_festival",
    "劳动节": "labour_day",
    "中秋节": "mid_autumn",
    "国庆节": "national_day",
}
_OTHER = "other"  # a statutory holiday without its own opening (清明, 端午)
OTHER_HOLIDAY = _OTHER  # an override may name one: a day off without a greeting of its own


@functools.lru_cache(maxsize=8)
def _chinese_calendar_year(year: int) -> dict[date, str] | None:
    import chinese_calendar

    try:
        chinese_calendar.get_holiday_detail(date(year, 1, 1))
    except NotImplementedError:
        return None
    days: dict[date, str] = {}
    day = date(year, 1, 1)
    while day.year == year:
        rest, name = chinese_calendar.get_holiday_detail(day)
        # a 调休 make-up working day carries its festival's name too, with rest False: a working day
        if rest and name in _CHINESE_CALENDAR_NAMES:
            days[day] = _CHINESE_CALENDAR_NAMES[name]
        day += timedelta(days=1)
    return days


@functools.lru_cache(maxsize=8)
def _holidays_year(year: int) -> dict[date, str]:
    import holidays

    listed: dict[date, str] = {}
    rest_days: list[date] = []
    for day, name in holidays.country_holidays("CN", language="zh_CN", years=range(year - 1, year + 2)).items():
        base = name.split("（")[0].split("(")[0].strip()
        if base == "休息日":
            rest_days.append(day)
        else:
            listed[day] = _HOLIDAYS_NAMES.get(base, _OTHER)
    # A 调休 rest day belongs to the nearest festival within four days.
    for day in rest_days:
        near = [d for d in listed if abs((d - day).days) <= 4]
        if near:
            listed[day] = listed[min(near, key=lambda d: abs((d - day).days))]
    # Weekends inside a break are not listed: fill gaps of up to two days
    # between days of the same festival.
    for day in sorted(listed):
        for gap in (2, 3):
            after = day + timedelta(days=gap)
            if listed.get(after) == listed[day]:
                for i in range(1, gap):
                    listed.setdefault(day + timedelta(days=i), listed[day])
    return {d: k for d, k in listed.items() if d.year == year and k != _OTHER}


def library_holiday(day: date) -> str | None:
    """The holiday kind on `day` per the calendar libraries, or None."""
    known = _chinese_calendar_year(day.year)
    if known is None:
        known = _holidays_year(day.year)
    return known.get(day)


class HolidayFileError(ValueError):
    """The ops holiday file is unreadable; the message names file, line or entry, and reason."""


def load_holiday_file(path: Path) -> dict[date, str]:
    """Read the ops override file: `[[period]]` tables of holiday, start, end."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise HolidayFileError(f"{path}: file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise HolidayFileError(f"{path}: {exc}") from exc
    days: dict[date, str] = {}
    for index, period in enumerate(data.get("period", []), start=1):
        where = f"{path}: [[period]] #{index}"
        kind = period.get("holiday")
        if kind not in (*HOLIDAY_KINDS, NO_HOLIDAY, WORKDAY, OTHER_HOLIDAY):
            allowed = ", ".join((*HOLIDAY_KINDS, OTHER_HOLIDAY, NO_HOLIDAY, WORKDAY))
            raise HolidayFileError(f"{where}: key 'holiday': {kind!r} is not one of {allowed}")
        start, end = period.get("start"), period.get("end", period.get("start"))
        for key, value in (("start", start), ("end", end)):
            if not isinstance(value, date) or isinstance(value, datetime):
                raise HolidayFileError(f"{where}: key '{key}': expected a date like 2027-10-01, got {value!r}")
        if end < start:
            raise HolidayFileError(f"{where}: key 'end': {end} is before start {start}")
        day = start
        while day <= end:
            days[day] = kind
            day += timedelta(days=1)
    return days


class HolidayCalendar:
    """Holiday kind per date: ops overrides first, then the calendar libraries.

    The override file is re-read when its modification time changes (checked
    at most once a second); a broken edit is logged and the previous contents
    stay in force, so a typo never takes the greeting down.
    """

    def __init__(
        self,
        override_file: Path | None = None,
        *,
        overrides: dict[date, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = override_file
        self._overrides: dict[date, str] = dict(overrides or {})
        self._monotonic = monotonic
        self._mtime: float | None = None
        self._checked_at = float("-inf")
        if self._path is not None:
            self._overrides = load_holiday_file(self._path)
            self._mtime = self._path.stat().st_mtime

    def _refresh(self) -> None:
        now = self._monotonic()
        if self._path is None or now - self._checked_at < 1.0:
            return
        self._checked_at = now
        try:
            mtime = self._path.stat().st_mtime
            if mtime == self._mtime:
                return
            self._overrides = load_holiday_file(self._path)
            self._mtime = mtime
            log.info("holiday_file_reloaded", path=str(self._path), days=len(self._overrides))
        except (OSError, HolidayFileError) as exc:
            log.error("holiday_file_rejected", path=str(self._path), reason=str(exc))

    def holiday_on(self, day: date) -> str | None:
        self._refresh()
        if day in self._overrides:
            kind = self._overrides[day]
            return None if kind in (NO_HOLIDAY, WORKDAY, OTHER_HOLIDAY) else kind
        return library_holiday(day)

    def is_day_off(self, day: date, *, weekends: bool = True) -> bool:
        """True on a public holiday (清明 and 端午 too, and 调休 rest days); with `weekends`, also on a Saturday
        or Sunday that is not a 调休 make-up working day. Ops overrides first, as for the greeting."""
        self._refresh()
        kind = self._overrides.get(day)
        if kind is not None and kind != NO_HOLIDAY:
            off: bool | None = kind != WORKDAY
        else:
            off = library_day_off(day)
        if off is not None:
            return off
        return weekends and day.weekday() >= 5


@functools.lru_cache(maxsize=8)
def _rest_days_year(year: int) -> dict[date, bool]:
    """Per date: True for a statutory rest day, False for a 调休 make-up working day; from the libraries."""
    import chinese_calendar

    days: dict[date, bool] = {}
    try:
        chinese_calendar.get_holiday_detail(date(year, 1, 1))
    except NotImplementedError:
        import holidays

        for day, name in holidays.country_holidays("CN", years=range(year - 1, year + 2)).items():
            days[day] = True
            # "Day off (substituted from 02/14/2026)": that Saturday or Sunday is worked
            if "substituted from " in name:
                month, mday, yr = name.rsplit("substituted from ", 1)[1].rstrip(")").split("/")
                days[date(int(yr), int(month), int(mday))] = False
        return {d: off for d, off in days.items() if d.year == year}
    day = date(year, 1, 1)
    while day.year == year:
        rest, name = chinese_calendar.get_holiday_detail(day)
        if name is not None:  # a named day: the holiday's rest day, or the weekend day worked for it
            days[day] = bool(rest)
        day += timedelta(days=1)
    return days


def library_day_off(day: date) -> bool | None:
    """True on a statutory rest day, False on a 调休 make-up working day, None on an ordinary day."""
    return _rest_days_year(day.year).get(day)


class Greeter:
    """Chooses the greeting for a moment in the hotline's time zone."""

    def __init__(self, dayparts: tuple[Daypart, ...], zone: ZoneInfo, calendar: HolidayCalendar) -> None:
        self.dayparts = dayparts
        self.zone = zone
        self.calendar = calendar

    def __call__(self, moment: datetime) -> Greeting:
        local = moment.astimezone(self.zone)
        return greeting_for(local, self.dayparts, self.calendar.holiday_on(local.date()))
