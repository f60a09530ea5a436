"""Greetings by time of day and holiday, in the hotline's time zone."""

from __future__ import annotations

import os
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ivr.greeting import (
    DEFAULT_DAYPARTS,
    FIVE_PART_DAYPARTS,
    Greeter,
    HolidayCalendar,
    HolidayFileError,
    library_holiday,
    load_holiday_file,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


@pytest.fixture
def greeter() -> Greeter:
    return Greeter(DEFAULT_DAYPARTS, SHANGHAI, HolidayCalendar())


@pytest.mark.parametrize(
    ("moment", "kind", "prompt"),
    [
        ("2026-11-25 00:00", "morning", "greeting_morning"),
        ("2026-11-25 09:00", "morning", "greeting_morning"),
        ("2026-11-25 11:59", "morning", "greeting_morning"),
        ("2026-11-25 12:00", "normal", "greeting_normal"),
        ("2026-11-25 15:30", "normal", "greeting_normal"),
        ("2026-11-25 23:59", "normal", "greeting_normal"),
    ],
)
def test_morning_until_noon_then_normal(greeter: Greeter, moment: str, kind: str, prompt: str) -> None:
    greeting = greeter(at(moment))
    assert (greeting.kind, greeting.prompt) == (kind, prompt)


def test_time_of_day_is_taken_in_the_hotline_time_zone(greeter: Greeter) -> None:
    # 03:30 UTC is 11:30 in Shanghai: still morning there
    assert greeter(datetime(2026, 11, 25, 3, 30, tzinfo=ZoneInfo("UTC"))).kind == "morning"
    assert greeter(datetime(2026, 11, 25, 4, 30, tzinfo=ZoneInfo("UTC"))).kind == "normal"


@pytest.mark.parametrize(
    ("moment", "kind"),
    [("2026-11-25 08:00", "morning"), ("2026-11-25 10:00", "forenoon"), ("2026-11-25 12:00", "noon"),
     ("2026-11-25 15:00", "afternoon"), ("2026-11-25 20:00", "evening")],
)
def test_five_part_day_split_from_000(moment: str, kind: str) -> None:
    assert Greeter(FIVE_PART_DAYPARTS, SHANGHAI, HolidayCalendar())(at(moment)).kind == kind


@pytest.mark.parametrize(
    ("day", "holiday"),
    [
        ("2026-01-01", "new_year"),  # 元旦
        ("2026-02-17", "spring_festival"),  # 春节 (lunar), chinesecalendar's year
        ("2026-05-01", "labour_day"),
        ("2026-09-25", "mid_autumn"),  # 中秋 (lunar)
        ("2026-10-01", "national_day"),
        ("2026-10-06", "national_day"),  # 调休 rest day inside the National Day break
        ("2027-02-06", "spring_festival"),  # 春节 (lunar) beyond chinesecalendar's data
        ("2027-09-15", "mid_autumn"),  # 中秋 (lunar) beyond chinesecalendar's data
        ("2027-10-01", "national_day"),
        ("2026-04-05", None),  # 清明 has no opening of its own
        ("2026-11-25", None),
        # 调休 make-up working days: a Saturday worked for the break is a working day, greeted as one
        ("2026-02-14", None),
        ("2026-02-28", None),
        ("2026-10-10", None),
    ],
)
def test_holiday_dates_from_the_calendar_libraries(day: str, holiday: str | None) -> None:
    assert library_holiday(date.fromisoformat(day)) == holiday


@pytest.mark.parametrize(
    ("moment", "kind", "prompt"),
    [
        ("2026-01-01 09:00", "holiday:new_year", "greeting_holiday_new_year"),
        ("2026-02-17 15:00", "holiday:spring_festival", "greeting_holiday_spring_festival"),
        ("2026-05-01 09:00", "holiday:labour_day", "greeting_holiday_labour_day"),
        ("2026-09-25 20:00", "holiday:mid_autumn", "greeting_holiday_mid_autumn"),
        ("2026-10-01 09:00", "holiday:national_day", "greeting_holiday_national_day"),
        ("2027-02-06 09:00", "holiday:spring_festival", "greeting_holiday_spring_festival"),
        ("2027-09-15 09:00", "holiday:mid_autumn", "greeting_holiday_mid_autumn"),
    ],
)
def test_holiday_opening_replaces_the_normal_greeting(greeter: Greeter, moment: str, kind: str, prompt: str) -> None:
    greeting = greeter(at(moment))
    assert (greeting.kind, greeting.prompt) == (kind, prompt)


def write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, (mtime, mtime))


def test_ops_override_file_wins_and_is_reread_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "holidays.toml"
    write(path, '[[period]]\nholiday = "national_day"\nstart = 2027-10-01\nend = 2027-10-08\n', 1000)
    now = [0.0]
    calendar = HolidayCalendar(path, monotonic=lambda: now[0])
    greeter = Greeter(DEFAULT_DAYPARTS, SHANGHAI, calendar)
    assert greeter(at("2027-10-08 09:00")).kind == "holiday:national_day"  # library alone says 10-05 is the last day
    assert greeter(at("2026-11-25 09:00")).kind == "morning"

    # ops publish a one-day special period and suppress a library date
    write(
        path,
        '[[period]]\nholiday = "labour_day"\nstart = 2026-11-25\n\n'
        '[[period]]\nholiday = "none"\nstart = 2027-09-15\nend = 2027-09-15\n',
        2000,
    )
    now[0] = 5.0
    assert greeter(at("2026-11-25 09:00")).kind == "holiday:labour_day"
    assert greeter(at("2027-09-15 09:00")).kind == "morning"
    assert greeter(at("2027-10-08 09:00")).kind == "morning"

    # a broken edit is rejected and the previous contents stay in force
    write(path, "[[period]\nholiday = ", 3000)
    now[0] = 10.0
    assert greeter(at("2026-11-25 09:00")).kind == "holiday:labour_day"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[period]]\nholiday = "xmas"\nstart = 2026-12-25\n', "key 'holiday': 'xmas' is not one of"),
        ('[[period]]\nholiday = "new_year"\nstart = "soon"\n', "key 'start': expected a date"),
        ('[[period]]\nholiday = "new_year"\nstart = 2027-01-03\nend = 2027-01-01\n', "key 'end': 2027-01-01 is before start"),
        ("[[period]\n", "line 1"),
    ],
)
def test_bad_holiday_file_names_file_entry_and_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "holidays.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(HolidayFileError) as err:
        load_holiday_file(path)
    assert str(path) in str(err.value) and message in str(err.value)
