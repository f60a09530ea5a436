"""The values of particular sip.conf keys: parsers that `Annotated` fields of the sections apply,
and the constants they choose among. Each raises ValueError with the reason a ConfigError reports."""

from __future__ import annotations

from collections.abc import Callable
from datetime import time as clock_time
from pathlib import Path
from types import MappingProxyType

from pydantic import AfterValidator

from ivr.greeting import DEFAULT_DAYPARTS, FIVE_PART_DAYPARTS, Daypart, HolidayFileError, load_holiday_file
from ivr.service import SEAT_GROUPS, SERVICES
from ivr.sipconf import ip_address

CODECS = {"pcmu": 0, "pcma": 8}  # name -> RTP static payload type (RFC 3551)
DEFAULT_DATABASE_URL = "sqlite:///var/hotline.db"
DAYPART_PRESETS = {"hotline": DEFAULT_DAYPARTS, "five_part": FIVE_PART_DAYPARTS}
DIGEST_POLICIES = ("strict", "md5", "legacy")
PHONE_KINDS = ("sip", "browser", "both")
DIGITS = tuple("0123456789")


def codecs(raw: str) -> tuple[str, ...]:
    names = tuple(c.strip().lower() for c in raw.split(",") if c.strip())
    unknown = [n for n in names if n not in CODECS]
    if unknown or not names:
        raise ValueError(f"supported codecs are {', '.join(CODECS)}")
    return names


def transports(raw: str) -> frozenset[str]:
    names = [t.strip().lower() for t in raw.split(",") if t.strip()]
    unknown = [n for n in names if n not in ("udp", "tcp", "tls")]
    if unknown or not names:
        raise ValueError("choose from udp, tcp, tls (RFC 3261 §18 wants udp and tcp)")
    return frozenset(names)


def comma_set(raw: str) -> frozenset[str]:
    return frozenset(n.strip() for n in raw.split(",") if n.strip())


def numbers(raw: str) -> frozenset[str]:
    numbers = comma_set(raw)
    if not numbers:
        raise ValueError("empty")
    return numbers


def addresses(raw: str) -> frozenset[str]:
    found = comma_set(raw)
    for address in found:
        ip_address(address)
    return found


def dayparts(raw: str) -> tuple[Daypart, ...]:
    if raw in DAYPART_PRESETS:
        return DAYPART_PRESETS[raw]
    parts = []
    for item in raw.split(","):
        fields = item.split()
        if len(fields) != 3:
            raise ValueError(f"each day-part is 'HH:MM name word', got {item.strip()!r}")
        parts.append(Daypart(clock_time.fromisoformat(fields[0]), fields[1], fields[2]))
    parts.sort(key=lambda p: p.start)
    if not parts or parts[0].start != clock_time(0, 0):
        raise ValueError("the first day-part must start at 00:00")
    return tuple(parts)


def host_port(raw: str, reason: str) -> tuple[str, int]:
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(reason)
    return host, int(port)


def agent_host(raw: str) -> tuple[str, int] | None:
    return None if raw == "dynamic" else host_port(raw, "write dynamic, or IP:port of the softphone")


def gateway(raw: str) -> tuple[str, int] | None:
    reason = "write host:port of the SIP trunk or gateway, e.g. 10.0.0.5:5060, or leave it empty"
    return host_port(raw, reason) if raw else None


def pairs(raw: str, valid: Callable[[str, str], bool], reason: str) -> MappingProxyType[str, str]:
    """`a>b, c>d` -> {a: b, c: d}, each pair checked by `valid`."""
    pairs = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        left, _, right = (part.strip() for part in item.partition(">"))
        if not valid(left, right):
            raise ValueError(reason)
        pairs[left] = right
    return MappingProxyType(pairs)


def overflow(raw: str) -> MappingProxyType[str, str]:
    return pairs(raw, lambda src, dst: src in SEAT_GROUPS and dst in SEAT_GROUPS and src != dst,
                  f"each item is group>group with groups {', '.join(SEAT_GROUPS)}")


def transfer_codes(raw: str) -> MappingProxyType[str, str]:
    return pairs(raw, lambda code, target: code.isdigit() and target in (*SEAT_GROUPS, "complaint"),
                  f"each item is digits>target with targets {', '.join(SEAT_GROUPS)} or complaint")


def complaint_group(raw: str) -> str | None:
    if raw and raw not in SEAT_GROUPS:
        raise ValueError(f"choose {', '.join(SEAT_GROUPS)} or leave it empty")
    return raw or None


def callback_key(raw: str) -> str:
    if len(raw) != 1 or raw not in "0123456789*#":
        raise ValueError("one key: 0-9, * or #")
    return raw


def service_or_none(raw: str) -> str:
    if raw not in SERVICES and raw != "none":
        raise ValueError(f"choose {', '.join(SERVICES)} or none")
    return raw


def webhook_url(raw: str) -> str | None:
    if raw and not raw.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return raw or None


def sqlite_file_in(url: str, folder: Path) -> str:
    """A relative SQLite file is relative to sip.conf, like every path in it."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        return "sqlite:///" + str((folder / url.removeprefix("sqlite:///")).resolve())
    return url


def readable_holidays(path: Path | None) -> Path | None:
    if path is not None:
        try:
            load_holiday_file(path)
        except HolidayFileError as exc:
            raise ValueError(str(exc)) from None
    return path


def readable_file(path: Path | None) -> Path | None:
    """A file named in sip.conf that is read later (its content's errors name their own file and line)."""
    if path is not None and not path.is_file():
        raise ValueError(f"{path}: no such file")
    return path


def readable_music(source: Path | None) -> Path | None:
    if source is not None:
        from prompts.music import MusicError, music_files  # numpy and soxr only when ops name their own music

        try:
            music_files(source)  # headers only; the audio is converted once at start
        except MusicError as exc:
            raise ValueError(f"{exc.path}: {exc.reason}") from None
    return source


def at_most(length: int) -> AfterValidator:
    def check_length(value: str) -> str:
        if len(value) > length:
            raise ValueError(f"at most {length} characters")
        return value

    return AfterValidator(check_length)


def time_of_day(raw: str) -> clock_time:
    try:
        return clock_time.fromisoformat(raw.strip())
    except ValueError:
        raise ValueError("write a time of day like 17:00") from None


def calling_hours(raw: str) -> tuple[clock_time, clock_time]:
    """start-end in local time, the end exclusive; an end of 24:00 is midnight (00:00-24:00: any hour)."""
    start, sep, end = raw.partition("-")
    if not sep:
        raise ValueError("write start-end like 09:00-20:00 (00:00-24:00 for any hour)")
    hours = time_of_day(start), clock_time.max if end.strip() == "24:00" else time_of_day(end)
    if hours[0] >= hours[1]:
        raise ValueError("the start must be before the end, within one day")
    return hours


def caller_id(raw: str) -> str:
    if raw and not raw.isdigit():
        raise ValueError("digits only, or empty for the first of [general] numbers")
    return raw


def supervisors(raw: str) -> frozenset[str]:
    found = comma_set(raw)
    for agent in found:
        if not agent.isdigit():
            raise ValueError(f"{agent!r} is not an agent number")
    return found


def prefix(raw: str) -> str:
    if not raw or len(raw) > 8 or not all(ch in "0123456789*#" for ch in raw):
        raise ValueError("1-8 keypad characters, e.g. *222")
    return raw


def origins(raw: str) -> frozenset[str]:
    found = frozenset(o.rstrip("/").lower() for o in comma_set(raw))
    for origin in found:
        scheme, _, host = origin.partition("://")
        if scheme not in ("http", "https") or not host or "/" in host:
            raise ValueError(f"an origin is scheme://host[:port] such as https://desk.example.com, got {origin!r}")
    return found


def ws_path(raw: str) -> str:
    if not raw.startswith("/") or any(c in raw for c in " ?#"):
        raise ValueError("a URL path such as /sip")
    return raw


def seat_groups(raw: str) -> frozenset[str]:
    found = comma_set(raw)
    if found - set(SEAT_GROUPS):
        raise ValueError(f"choose among {', '.join(SEAT_GROUPS)} (comma-separated), or leave it empty for all")
    return found


def services(raw: str) -> frozenset[str]:
    found = comma_set(raw)
    if found - set(SERVICES):
        raise ValueError(f"choose among {', '.join(SERVICES)} (comma-separated), or leave it empty for all")
    return found


def feature_code(raw: str) -> str:
    if not 2 <= len(raw) <= 6 or any(ch not in "0123456789*#" for ch in raw):
        raise ValueError("2 to 6 keys of 0-9, * and #")
    return raw


def ws_url(raw: str) -> str:
    if raw and not raw.startswith(("ws://", "wss://")):
        raise ValueError("start with wss:// (or ws:// on loopback), e.g. wss://ivr.example.com:8089/sip")
    return raw


def token_secret(raw: str) -> str:
    if raw and len(raw) < 32:
        raise ValueError("needs 32 characters or more (it signs the browser phones' credentials)")
    return raw
