"""Business hours: windows across midnight, holidays from the greeting's calendar and its ops overrides."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from zoneinfo import ZoneInfo

import pytest

from ivr.greeting import HolidayCalendar
from ivr.hours import BusinessHours, HoursConfig, Schedule, Window, clock_words, describe, parse_schedule

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


def hours(calendar: HolidayCalendar | None = None, **schedules: str) -> BusinessHours:
    parsed = {name.removeprefix("n"): parse_schedule(raw) for name, raw in schedules.items()}
    return BusinessHours(HoursConfig("Asia/Shanghai", MappingProxyType(parsed)), (calendar or HolidayCalendar()).holiday_on)


@pytest.mark.parametrize(
    ("moment", "is_open"),
    [
        ("2026-11-25 07:59:59", False),
        ("2026-11-25 08:00", True),
        ("2026-11-25 21:59:59", True),
        ("2026-11-25 22:00", False),
        ("2026-11-25 23:59:59", False),
        ("2026-11-26 00:00", False),
    ],
)
def test_default_hours_edges(moment: str, is_open: bool) -> None:
    assert hours(default="08:00-22:00").is_open(at(moment)) is is_open


@pytest.mark.parametrize(
    ("moment", "is_open"),
    [
        ("2026-11-25 19:59", False),
        ("2026-11-25 20:00", True),
        ("2026-11-25 23:59:59", True),
        ("2026-11-26 00:00", True),  # the window that opened yesterday runs past midnight
        ("2026-11-26 01:59", True),
        ("2026-11-26 02:00", False),
    ],
)
def test_night_window_runs_across_midnight(moment: str, is_open: bool) -> None:
    assert hours(default="20:00-02:00").is_open(at(moment)) is is_open


@pytest.mark.parametrize("moment", ["2026-11-25 23:59:59", "2026-11-26 00:00", "2026-10-01 03:00", "2027-02-06 12:00"])
def test_senior_group_is_served_around_the_clock(moment: str) -> None:
    h = hours(default="08:00-22:00", senior="00:00-24:00")
    assert h.is_open(at(moment), "95000", "senior")
    assert h.schedule_for("95000", "senior") == "senior"


def test_schedule_is_chosen_by_seat_group_then_number_then_default() -> None:
    h = hours(default="08:00-22:00", senior="00:00-24:00", n4008000000="09:00-18:00")
    assert h.schedule_for("4008000000", "junior") == "4008000000"
    assert h.schedule_for("4008000000", "senior") == "senior"
    assert h.schedule_for("95000", "junior") == "default"
    assert h.schedule_for() == "default"
    assert not h.is_open(at("2026-11-25 08:30"), "4008000000")
    assert h.is_open(at("2026-11-25 08:30"), "95000")


def test_moments_in_other_zones_are_taken_in_the_hotline_zone() -> None:
    h = hours(default="08:00-22:00")
    assert h.is_open(datetime(2026, 11, 25, 0, 30, tzinfo=ZoneInfo("UTC")))  # 08:30 in Shanghai
    assert not h.is_open(datetime(2026, 11, 25, 14, 30, tzinfo=ZoneInfo("UTC")))  # 22:30


@pytest.mark.parametrize(
    ("moment", "is_open"),
    [
        ("2026-11-23 09:00", True),  # Monday
        ("2026-11-28 09:00", False),  # Saturday
        ("2026-11-28 10:00", True),
        ("2026-11-29 17:59", True),  # Sunday
        ("2026-11-29 18:00", False),
        ("2026-10-01 10:00", False),  # 国庆 (a Thursday): holiday closed
        ("2026-09-25 10:00", False),  # 中秋 (lunar)
        ("2027-02-06 10:00", False),  # 春节 2027, beyond chinesecalendar's data
        ("2026-04-05 10:00", True),  # 清明 has no holiday of its own in the calendar: a Sunday as usual
    ],
)
def test_weekday_rules_and_holidays_from_the_greeting_calendar(moment: str, is_open: bool) -> None:
    h = hours(default="mon-fri 08:00-22:00, sat-sun 10:00-18:00, holiday closed")
    assert h.is_open(at(moment)) is is_open


def test_holidays_keep_weekday_hours_unless_a_holiday_item_says_otherwise() -> None:
    assert hours(default="08:00-22:00").is_open(at("2026-10-01 10:00"))
    assert not hours(default="08:00-22:00, holiday 09:00-17:00").is_open(at("2026-10-01 08:30"))
    assert hours(default="08:00-22:00, holiday 09:00-17:00").is_open(at("2026-10-01 09:30"))


def test_night_window_of_a_holiday_eve_is_not_cut_by_the_holiday() -> None:
    # 2026-09-30 is a working day; its 20:00-02:00 window belongs to it and runs into 国庆
    h = hours(default="20:00-02:00, holiday closed")
    assert h.is_open(at("2026-10-01 01:00"))
    assert not h.is_open(at("2026-10-01 21:00"))


def test_ops_override_file_opens_and_closes_days(tmp_path: Path) -> None:
    path = tmp_path / "holidays.toml"
    path.write_text(
        '[[period]]\nholiday = "labour_day"\nstart = 2026-11-25\n\n'
        '[[period]]\nholiday = "none"\nstart = 2026-10-02\nend = 2026-10-02\n',
        encoding="utf-8",
    )
    h = hours(HolidayCalendar(path), default="08:00-22:00, holiday closed")
    assert not h.is_open(at("2026-11-25 10:00"))  # ops declared a special day off
    assert h.is_open(at("2026-10-02 10:00"))  # ops removed a library holiday
    assert not h.is_open(at("2026-10-01 10:00"))


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        ("2026-11-25 10:00", "2026-11-25 10:00"),  # open: now
        ("2026-11-25 06:00", "2026-11-25 08:00"),
        ("2026-11-25 22:00", "2026-11-26 08:00"),  # across midnight
        ("2026-11-25 23:30", "2026-11-26 08:00"),
        ("2026-11-27 23:00", "2026-11-30 08:00"),  # Friday night -> Monday
        ("2026-09-30 23:00", "2026-10-08 08:00"),  # 国庆 break 10-01..10-07 (with 调休)
    ],
)
def test_next_opening(moment: str, expected: str) -> None:
    h = hours(default="mon-fri 08:00-22:00, sat-sun closed, holiday closed")
    assert h.next_opening(at(moment)) == at(expected)


def test_next_opening_is_none_when_never_open() -> None:
    assert hours(default="daily closed").next_opening(at("2026-11-25 10:00")) is None


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("08:00-22:00", "每天八点到二十二点"),
        ("00:00-24:00", "每天二十四小时"),
        ("08:30-17:30", "每天八点半到十七点半"),
        ("02:05-12:15", "每天两点零五分到十二点十五分"),
        ("20:00-08:00", "每天二十点到次日八点"),
        ("mon-fri 08:00-22:00, sat-sun 09:00-18:00", "周一至周五八点到二十二点,周六、周日九点到十八点"),
        ("mon-fri 08:00-12:00 13:00-18:00, sat-sun closed, holiday closed", "周一至周五八点到十二点、十三点到十八点,节假日休息"),
        ("08:00-22:00, sun closed", "周一至周六八点到二十二点"),
        ("daily 00:00-24:00, holiday 09:00-17:00", "每天全天,节假日九点到十七点"),
    ],
)
def test_describe_in_chinese(raw: str, spoken: str) -> None:
    assert describe(parse_schedule(raw)) == spoken


@pytest.mark.parametrize(("minute", "words"), [(0, "零点"), (120, "两点"), (720, "十二点"), (1320, "二十二点"), (1440, "二十四点"), (542, "九点零二分")])
def test_clock_words(minute: int, words: str) -> None:
    assert clock_words(minute) == words


def test_parse_schedule_structure() -> None:
    s = parse_schedule("mon-fri 08:00-22:00, sat-mon 09:00-12:00, holiday closed")
    assert s.weekly[0] == (Window(540, 720),)  # the later item wins for Monday
    assert s.weekly[1] == (Window(480, 1320),)
    assert s.weekly[6] == s.weekly[5] == (Window(540, 720),)
    assert s.holiday == ()
    assert parse_schedule("22:00-06:00").weekly[0] == (Window(1320, 1800),)
    assert isinstance(parse_schedule("closed"), Schedule)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("8-22", "expected a window like 08:00-22:00"),
        ("08:00-25:00", "not a time of day"),
        ("24:00-08:00", "not a time of day"),
        ("08:60-09:00", "not a time of day"),
        ("08:00-08:00", "same time"),
        ("weekdays 08:00-22:00", "unknown day 'weekdays'"),
        ("mon-fri", "needs its hours"),
        ("08:00-12:00 11:00-13:00", "overlap"),
        ("08:00-22:00,,sun closed", "empty item"),
    ],
)
def test_parse_schedule_errors_say_what_is_wrong(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_schedule(raw)


def test_describe_from_business_hours_follows_the_chosen_schedule() -> None:
    h = hours(default="08:00-22:00", senior="00:00-24:00")
    assert h.describe("95000") == "每天八点到二十二点"
    assert h.describe("95000", "senior") == "每天二十四小时"
    assert (h.closed_prompt("95000"), h.closed_prompt("95000", "senior")) == ("closed_default", "closed_senior")
    assert date(2026, 11, 25).weekday() == 2  # the tests above assume this calendar
