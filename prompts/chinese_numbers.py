"""Mandarin counting for the spoken prompts: "两位", "二十二位", "一百零二位".

Seat numbers are read digit by digit ("八零一", see `catalogue.spoken_number`);
quantities — callers ahead, minutes to wait — are counted. Counting has rules
a digit-by-digit reading gets wrong:

- 2 before a measure word is 两, not 二: "两位", "两分钟". Only a lone 2 (and
  the hundreds digit, "两百") changes; the 2 at the end of a longer number
  stays 二: "十二位", "二十二位", "一百零二位".
- 10-19 drop the leading 一: "十位", "十二位"; after a hundred they keep it:
  "一百一十位".
- A zero tens digit inside a hundred is read 零: "一百零二位"; trailing zeros
  are silent: "一百位", "三百二十位".

Only 1..999 is needed (positions and minutes); anything else is refused, so
a wrong number never reaches a caller as garbled speech.
"""

from __future__ import annotations

DIGITS = "零一二三四五六七八九"
MAX_COUNT = 999


def _check(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_COUNT:
        raise ValueError(f"can count 1 to {MAX_COUNT}, got {n!r}")


def cardinal(n: int) -> str:
    """The numeral as read alone (no measure word): 2 -> 二, 12 -> 十二, 102 -> 一百零二, 200 -> 二百."""
    _check(n)
    hundreds, tens, ones = n // 100, n // 10 % 10, n % 10
    words = ""
    if hundreds:
        words += DIGITS[hundreds] + "百"
        if tens:
            words += DIGITS[tens] + "十"  # 一百一十: the 一 is kept after a hundred
        elif ones:
            words += "零"
    elif tens:
        words += ("" if tens == 1 else DIGITS[tens]) + "十"  # 十二, not 一十二
    if ones:
        words += DIGITS[ones]
    return words


def count(n: int, measure: str) -> str:
    """`n` things with their measure word: count(2, "位") -> "两位", count(22, "位") -> "二十二位"."""
    words = cardinal(n)
    if n == 2:
        words = "两"
    elif n >= 200 and n // 100 == 2:
        words = "两" + words[1:]  # 两百 is how a hundreds 2 is said before a measure word
    return words + measure


def callers(n: int) -> str:
    """Callers ahead: "一位", "两位", "十二位"."""
    return count(n, "位")


def minutes(n: int) -> str:
    """A duration in minutes: "一分钟", "两分钟", "二十二分钟"."""
    return count(n, "分钟")
