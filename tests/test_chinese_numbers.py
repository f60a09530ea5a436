"""Mandarin counting: 两 before a measure word, 十 without 一, 零 inside hundreds."""

from __future__ import annotations

import pytest

from prompts.chinese_numbers import callers, cardinal, count, minutes


@pytest.mark.parametrize(
    ("n", "spoken"),
    [
        (1, "一位"),
        (2, "两位"),  # not 二位
        (3, "三位"),
        (9, "九位"),
        (10, "十位"),  # not 一十位
        (11, "十一位"),
        (12, "十二位"),  # a final 2 stays 二
        (19, "十九位"),
        (20, "二十位"),  # not 两十位
        (22, "二十二位"),
        (30, "三十位"),
        (99, "九十九位"),
        (100, "一百位"),
        (101, "一百零一位"),
        (102, "一百零二位"),
        (110, "一百一十位"),  # the 一 is kept after a hundred
        (112, "一百一十二位"),
        (120, "一百二十位"),
        (200, "两百位"),
        (202, "两百零二位"),
        (222, "两百二十二位"),
        (305, "三百零五位"),
        (320, "三百二十位"),
        (999, "九百九十九位"),
    ],
)
def test_callers_are_counted_with_the_measure_word(n: int, spoken: str) -> None:
    assert callers(n) == spoken


@pytest.mark.parametrize(
    ("n", "spoken"),
    [(1, "一分钟"), (2, "两分钟"), (5, "五分钟"), (10, "十分钟"), (12, "十二分钟"), (22, "二十二分钟"), (30, "三十分钟")],
)
def test_minutes_are_counted(n: int, spoken: str) -> None:
    assert minutes(n) == spoken


@pytest.mark.parametrize(("n", "numeral"), [(2, "二"), (12, "十二"), (102, "一百零二"), (200, "二百")])
def test_cardinal_alone_keeps_er(n: int, numeral: str) -> None:
    assert cardinal(n) == numeral


def test_every_count_from_1_to_999_is_well_formed() -> None:
    seen = set()
    for n in range(1, 1000):
        words = count(n, "位")
        assert words not in seen, n
        seen.add(words)
        assert not words.startswith(("一十", "零")), n
        assert "零零" not in words and not words.removesuffix("位").endswith("零"), n
        assert "两" not in words[1:], n  # 两 only ever opens the number


@pytest.mark.parametrize("bad", [0, -1, 1000, 2.0, True, "2"])
def test_out_of_range_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="1 to 999"):
        count(bad, "位")  # type: ignore[arg-type]
