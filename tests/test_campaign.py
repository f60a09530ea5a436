"""The rules of calls the IVR places by itself (ivr.campaign), with a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ivr.campaign import CallingWindow, Pacer, retry_delay
from ivr.greeting import HolidayCalendar

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_at_most_max_concurrent_calls_are_up_and_per_second_new_ones_start() -> None:
    pacer = Pacer(max_concurrent=20, per_second=5, queue_threshold=5)
    assert pacer.may_start(0.0, active=0, inbound_waiting=0, overloaded=False) == 5
    pacer.started(5)
    assert pacer.may_start(0.1, active=5, inbound_waiting=0, overloaded=False) == 0  # the second's five are used
    assert pacer.may_start(1.1, active=5, inbound_waiting=0, overloaded=False) == 5
    pacer.started(5)
    assert pacer.may_start(10.0, active=18, inbound_waiting=0, overloaded=False) == 2  # the concurrency cap
    assert pacer.may_start(20.0, active=20, inbound_waiting=0, overloaded=False) == 0


def test_inbound_callers_over_the_threshold_or_an_overloaded_ivr_hold_every_new_call_back() -> None:
    pacer = Pacer(max_concurrent=20, per_second=5, queue_threshold=5)
    assert pacer.may_start(0.0, active=0, inbound_waiting=6, overloaded=False) == 0
    assert pacer.may_start(0.0, active=0, inbound_waiting=5, overloaded=False) == 5
    assert pacer.may_start(0.0, active=0, inbound_waiting=0, overloaded=True) == 0


def test_a_slow_rate_starts_one_call_now_and_then() -> None:
    pacer = Pacer(max_concurrent=10, per_second=0.5, queue_threshold=5)
    assert pacer.may_start(0.0, 0, 0, False) == 1
    pacer.started()
    assert pacer.may_start(1.0, 1, 0, False) == 0
    assert pacer.may_start(2.0, 1, 0, False) == 1


def test_retries_back_off_doubling() -> None:
    assert [retry_delay(n, 300) for n in (1, 2, 3)] == [timedelta(minutes=5), timedelta(minutes=10),
                                                        timedelta(minutes=20)]


def test_calling_hours_are_local_and_the_end_is_exclusive() -> None:
    window = CallingWindow(start=time(9), end=time(20), zone=SHANGHAI, day_off=HolidayCalendar().is_day_off)
    wednesday = datetime(2026, 11, 25, tzinfo=SHANGHAI)
    assert not window.allows(wednesday.replace(hour=8, minute=59))
    assert window.allows(wednesday.replace(hour=9))
    assert not window.allows(wednesday.replace(hour=20))
    assert window.next_opening(wednesday.replace(hour=20, minute=30)) == datetime(2026, 11, 26, 9, tzinfo=SHANGHAI)
    # Friday evening: the next working day is Monday (weekends off by default)
    friday = datetime(2026, 11, 27, 21, tzinfo=SHANGHAI)
    assert window.next_opening(friday).astimezone(UTC) == datetime(2026, 11, 30, 1, tzinfo=UTC)


def test_calling_hours_to_24_00_leave_no_minute_of_the_day_closed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ivr.config import load_config

    from .test_config import config_with

    config = load_config(config_with(tmp_path, "[followup]\ncalling_hours = 00:00-24:00\ncall_on_weekends = yes\n"))
    start, end = config.followup.calling_hours
    window = CallingWindow(start=start, end=end, zone=SHANGHAI, on_weekends=True)
    sunday = datetime(2026, 12, 6, tzinfo=SHANGHAI)
    for at in (sunday, sunday.replace(hour=23, minute=59, second=30), sunday.replace(hour=23, minute=59, second=59,
                                                                                       microsecond=999_999)):
        assert window.allows(at) and window.next_opening(at) == at, at
    # 23:59 as the end closes the last minute (the end is exclusive), which the follow-up tests once fell into
    closing = CallingWindow(start=time(0), end=time(23, 59), zone=SHANGHAI, on_weekends=True)
    assert not closing.allows(sunday.replace(hour=23, minute=59, second=30))


def test_followup_settings_are_checked_with_file_line_and_reason(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from ivr.config import ConfigError, load_config

    from .test_config import config_with

    for text, reason in (("calling_hours = 20:00-09:00", "the start must be before the end"),
                         ("calling_hours = 9-20", "write a time of day like 17:00"),
                         ("caller_id = +8695000", "digits only"),
                         ("max_concurrent = 0", "from 1 to 1000")):
        with pytest.raises(ConfigError) as err:
            load_config(config_with(tmp_path, f"[followup]\n\n{text}\n"))
        assert f":3: [followup] {text.split()[0]}" in str(err.value) and reason in str(err.value), str(err.value)
    config = load_config(config_with(tmp_path, "[followup]\nenabled = yes\ncalling_hours = 08:30-21:00\n"))
    assert config.followup.enabled and config.followup.calling_hours == (time(8, 30), time(21, 0))
