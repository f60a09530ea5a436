"""Reading sip.conf into section models: the INI file, the line of each key, and the parsers of values.

sip.conf is Asterisk-style INI (`[section]`, `key = value`, `;` comments).
`read_sip_conf` parses it with configparser, which keeps no line numbers, so
`_line_index` finds the line of each key for the error messages.

A section is described once, by a pydantic dataclass (config `SECTION`:
frozen, unknown fields refused) whose fields are its keys. A field's type
carries the parser of its text: `text(what, parse)` and the kinds built on it
(`number`, `whole`, `choice`, `YesNo`, `Port`, `TimeZone`, `IPAddress`, paths
relative to the file). `Collects` marks a field that gathers a family of keys
(digits, `text.<id>`), `GIVEN` one the reader fills in rather than a key.

`SipConf.section` sends each key to its field (an unknown key is refused with
the list of known ones, taken from the fields), validates, and turns pydantic's
`ValidationError` into `ConfigError`: file, line, `[section] key` and the
validator's own reason ("'50x0' is not a whole number from 1 to 65535 (...)"),
never pydantic's generic wording. The parsers apply to the file's text only:
SipConf validates with a context (the file's folder); objects built in code
take their values as given, with pydantic's type checks. Checks across fields
(model validators, raising `SettingError` to name their key) run on both.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, ConfigDict, TypeAdapter, ValidationError, ValidationInfo
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

T = TypeVar("T")
M = TypeVar("M")


class ConfigError(ValueError):
    """A setting is wrong; says where (file:line), which key, and why."""

    def __init__(self, file: Path, line: int | None, key: str, reason: str) -> None:
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {key}: {reason}")
        self.file, self.line, self.key, self.reason = file, line, key, reason


class SettingError(ValueError):
    """A validator's reason about another key than the field it validates (a check across keys, a collected key)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key


# --- the parsers of values -----------------------------------------------------------------------

SECTION = ConfigDict(
    extra="forbid",
    frozen=True,
    arbitrary_types_allowed=True,  # read-only mappings (MappingProxyType): pydantic checks the type only
)


def _from_file(info: ValidationInfo) -> bool:
    """Only SipConf passes a context: the value is sip.conf text, to parse (code passes typed values)."""
    return info.context is not None


def _explain(raw: str, what: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(raw)
    except (ValueError, KeyError) as exc:
        detail = f" ({exc})" if str(exc) else ""
        raise ValueError(f"{raw!r} is not {what}{detail}") from None


@dataclass(frozen=True, slots=True)
class TextParser(BeforeValidator):
    """A key's parser, and what it takes in words: `what` for error messages, `allowed` (a range, the choices)
    for the configuration reference (scripts/config_reference.py)."""

    what: str = ""
    allowed: str = ""


def text(what: str, parse: Callable[[str], object], allowed: str = "") -> TextParser:
    """A key's parser: sip.conf text -> value. On failure the reason reads "'<text>' is not <what> (<why>)"."""

    def validate(value: object, info: ValidationInfo) -> object:
        if not _from_file(info) or not isinstance(value, str):
            return value
        return _explain(value.strip(), what, parse)

    return TextParser(validate, what=what, allowed=allowed)


def in_folder(resolve: Callable[[Any, Path], object]) -> AfterValidator:
    """After parsing: `resolve(value, folder of sip.conf)`, for values relative to the file (defaults included)."""

    def validate(value: object, info: ValidationInfo) -> object:
        if not _from_file(info):
            return value
        assert info.context is not None
        return resolve(value, Path(info.context["folder"]))

    return AfterValidator(validate)


def _between(kind: Callable[[str], float], lo: float, hi: float) -> Callable[[str], float]:
    def convert(raw: str) -> float:
        value = kind(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return convert


def number(lo: float, hi: float) -> TextParser:
    return text(f"a number from {lo} to {hi}", _between(float, lo, hi), allowed=f"{lo:g} to {hi:g}")


def whole(lo: int, hi: int) -> TextParser:
    return text(f"a whole number from {lo} to {hi}", _between(int, lo, hi), allowed=f"{lo} to {hi}")


def choice(options: Collection[str], what: str, reason: str = "", *, any_case: bool = False) -> TextParser:
    """One of `options` (lower-cased first with any_case); `reason` replaces the default "choose a, b, c"."""
    why = reason or f"choose {', '.join(options)}"

    def pick(raw: str) -> str:
        value = raw.lower() if any_case else raw
        if value not in options:
            raise ValueError(why)
        return value

    return text(what, pick, allowed=", ".join(options))


def nonempty(raw: str) -> str:
    if not raw:
        raise ValueError("empty")
    return raw


def _yes_no(raw: str) -> bool:
    if raw.lower() in ("yes", "true", "on", "1"):
        return True
    if raw.lower() in ("no", "false", "off", "0"):
        return False
    raise ValueError("write yes or no")


def _zone(raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown IANA time zone") from None
    return raw


def ip_address(raw: str) -> str:
    return str(ipaddress.ip_address(raw))  # ValueError names the bad one


def _path_in(path: Path | None, folder: Path) -> Path | None:
    return None if path is None else folder / path


# The Fetch standard's "bad ports" (fetch.spec.whatwg.org/#bad-port): Chromium and Firefox refuse to open a page or
# WebSocket on them (ERR_UNSAFE_PORT), so a desk or a browser-phone listener there reaches no agent at all.
BROWSER_BLOCKED_PORTS = frozenset({
    1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101, 102, 103, 104, 109, 110,
    111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427, 465, 512, 513, 514, 515, 526, 530, 531, 532,
    540, 548, 554, 556, 563, 587, 601, 636, 989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061,
    6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080,
})


def _browser_port(raw: str) -> int:
    port = int(_between(int, 1, 65535)(raw))
    if port in BROWSER_BLOCKED_PORTS:
        raise ValueError("Chromium and Firefox refuse to open it, ERR_UNSAFE_PORT; choose another, e.g. 8080")
    return port


YesNo = Annotated[bool, text("yes or no", _yes_no, allowed="yes, no")]
Port = Annotated[int, whole(1, 65535)]
BrowserPort = Annotated[int, text("a port from 1 to 65535 that browsers open", _browser_port,
                                  allowed="1 to 65535, except ports browsers block")]
TimeZone = Annotated[str, text("a time zone such as Asia/Shanghai", _zone)]
IPAddress = Annotated[str, text("an IP address", ip_address)]
# Paths are relative to sip.conf. Validate their defaults (Field(validate_default=True)) to make those relative too.
FilePath = Annotated[Path, text("a path", lambda raw: Path(nonempty(raw))), in_folder(_path_in)]
OptionalPath = Annotated[Path | None, text("a path", lambda raw: Path(raw) if raw else None), in_folder(_path_in)]


# --- families of keys, and the keys of a model -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Collects:
    """Field metadata: the field gathers the section's keys that are in `keys` or match `pattern`, as {key: text}."""

    keys: tuple[str, ...] = ()
    pattern: str = ""
    shown_as: str = ""  # the pattern's keys in "known keys are ..."

    def takes(self, key: str) -> bool:
        return key in self.keys or bool(self.pattern and re.fullmatch(self.pattern, key))


class Given:
    """Field metadata: not a key of the section; the reader fills it in (an agent's number is its section's name)."""


GIVEN = Given()


def each(what: str, parse: Callable[[str], T], combine: Callable[[dict[str, T]], object]) -> TextParser:
    """The parser of a `Collects` field: every gathered key's text, then `combine` of the parsed {key: value}."""

    def validate(value: object, info: ValidationInfo) -> object:
        if not _from_file(info) or not isinstance(value, dict):
            return value
        parsed = {}
        for key, raw in value.items():
            try:
                parsed[key] = _explain(raw.strip(), what, parse)
            except ValueError as exc:
                raise SettingError(key, str(exc)) from None
        return combine(parsed)

    return TextParser(validate, what=what)


def _fields(model: type) -> dict[str, FieldInfo]:
    assert is_pydantic_dataclass(model), model
    return model.__pydantic_fields__


def _plain_keys(model: type) -> set[str]:
    """The keys that are fields of their own (neither gathered by a `Collects` field nor `GIVEN`)."""
    return {
        name
        for name, info in _fields(model).items()
        if not any(isinstance(meta, Collects | Given) for meta in info.metadata)
    }


def _collectors(model: type) -> dict[str, Collects]:
    return {
        name: meta for name, info in _fields(model).items() for meta in info.metadata if isinstance(meta, Collects)
    }


def known_keys(model: type) -> set[str]:
    """The keys a section model accepts that can be listed (`Collects` patterns aside)."""
    return _plain_keys(model).union(*(c.keys for c in _collectors(model).values()))


def _known_keys_text(model: type) -> str:
    shown = [c.shown_as for c in _collectors(model).values() if c.shown_as]
    return ", ".join(sorted(known_keys(model))) + "".join(f", or {s}" for s in shown)


# --- the file --------------------------------------------------------------------------------------

_SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]")
_KEY_RE = re.compile(r"^\s*([^\s;#=:\[][^=:]*?)\s*[=:]")


def _line_index(text: str) -> dict[tuple[str, str], int]:
    """(section, key) -> line number, for error messages (configparser keeps none)."""
    index: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if m := _SECTION_RE.match(line):
            section = m.group(1).strip()
            index.setdefault((section, ""), number)
        elif m := _KEY_RE.match(line):
            index.setdefault((section, m.group(1).strip().lower()), number)
    return index


def read_sip_conf(path: Path) -> tuple[configparser.ConfigParser, dict[tuple[str, str], int]]:
    """Read and parse a sip.conf (no validation): the parser and the (section, key) -> line index.

    Raises ConfigError when the file cannot be read or is not INI as sip.conf writes it.
    The IVR's `load_config` and the desk's `load_desk_config` both start here (through SipConf).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, None, "file", f"cannot read: {exc.strerror}") from None
    parser = configparser.ConfigParser(
        comment_prefixes=(";", "#"), inline_comment_prefixes=(";",), interpolation=None, strict=True
    )
    try:
        parser.read_string(text, source=str(path))
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(path, exc.lineno, f"[{exc.section}] {exc.option}", "set twice in this section") from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(path, exc.lineno, f"[{exc.section}]", "section appears twice") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(path, exc.lineno, "file", "settings must follow a [section] header") from None
    except configparser.ParsingError as exc:
        line = exc.errors[0][0] if exc.errors else None
        raise ConfigError(path, line, "syntax", "expected 'key = value', '[section]' or a ; comment") from None
    return parser, _line_index(text)


class SipConf:
    """A parsed sip.conf: validates its sections into section models; errors name file, line, key and reason."""

    def __init__(self, path: Path, parser: configparser.ConfigParser, lines: dict[tuple[str, str], int]) -> None:
        self.path, self.parser, self.lines = path, parser, lines

    @classmethod
    def read(cls, path: Path) -> SipConf:
        path = Path(path)
        return cls(path, *read_sip_conf(path))

    def error(self, section: str, key: str, reason: str) -> ConfigError:
        line = self.lines.get((section, key)) or self.lines.get((section, ""))
        return ConfigError(self.path, line, f"[{section}] {key}" if key else f"[{section}]", reason)

    def section(self, name: str, model: type[M], *, only: Collection[str] | None = None, **given: object) -> M:
        """[name] validated into `model` (defaults where the file is silent), with its `GIVEN` fields from `given`.

        `only`: read just these keys and leave the rest of the section to its own reader.
        """
        items = dict(self.parser.items(name)) if self.parser.has_section(name) else {}
        if only is None:
            values = self._route(name, model, items)
        else:
            values = {key: raw for key, raw in items.items() if key in only}
        try:
            return TypeAdapter(model).validate_python({**values, **given}, context={"folder": self.path.parent})
        except ValidationError as exc:
            raise self._first_problem(name, model, exc) from None

    def _route(self, section: str, model: type, items: Mapping[str, str]) -> dict[str, Any]:
        """Each key to its field, or into the field that `Collects` it; an unknown key is an error."""
        plain, collectors = _plain_keys(model), _collectors(model)
        values: dict[str, Any] = {}
        for key, raw in items.items():
            if key in plain:
                values[key] = raw
            elif gatherer := next((name for name, c in collectors.items() if c.takes(key)), None):
                values.setdefault(gatherer, {})[key] = raw
            else:
                raise self.error(section, key, f"unknown key; known keys are {_known_keys_text(model)}")
        return values

    def _first_problem(self, section: str, model: type, exc: ValidationError) -> ConfigError:
        """Of all that is wrong in the section, what comes first in the file."""
        problems = [self.error(section, *_key_and_reason(model, error)) for error in exc.errors()]
        return min(problems, key=lambda problem: problem.line or 0)


def _key_and_reason(model: type, error: ErrorDetails) -> tuple[str, str]:
    """Which key a pydantic error is about, and the reason in the validators' words."""
    cause = error.get("ctx", {}).get("error")
    key = cause.key if isinstance(cause, SettingError) else str(error["loc"][0]) if error["loc"] else ""
    if error["type"] == "value_error":
        return key, str(cause)
    if error["type"] == "missing":
        about = _fields(model)[key].description
        return key, f"missing; {about}" if about else "missing"
    return key, error["msg"]  # pydantic's words: only for a value no parser here produced (a bug)
