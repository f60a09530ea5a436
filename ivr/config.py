"""sip.conf: read once at start-up into frozen, validated objects.

The file is Asterisk-style INI (`[section]`, `key = value`, `;` comments).
Anything wrong is reported as `ConfigError`, which names the file, the line,
the key and the reason, and the IVR refuses to start. After loading, the
rest of the code only sees `Config`, never the parser.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time as clock_time
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crm_bridge.customers import TierThresholds
from crm_bridge.settings import WebhookConfig
from ivr.callflow import GREETING, FlowSettings, SilentRoutine
from ivr.greeting import DEFAULT_DAYPARTS, FIVE_PART_DAYPARTS, Daypart, HolidayFileError, load_holiday_file
from ivr.hours import DEFAULT_SCHEDULE, HoursConfig, Schedule, parse_schedule
from ivr.service import SEAT_GROUPS, SERVICES, MenuConfig

CODECS = {"pcmu": 0, "pcma": 8}  # name -> RTP static payload type (RFC 3551)
DEFAULT_DATABASE_URL = "sqlite:///var/hotline.db"
DAYPART_PRESETS = {"hotline": DEFAULT_DAYPARTS, "five_part": FIVE_PART_DAYPARTS}


class ConfigError(ValueError):
    """A setting is wrong; says where (file:line), which key, and why."""

    def __init__(self, file: Path, line: int | None, key: str, reason: str) -> None:
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {key}: {reason}")
        self.file, self.line, self.key, self.reason = file, line, key, reason


@dataclass(frozen=True, slots=True)
class GeneralConfig:
    bind: str = "127.0.0.1"
    port: int = 5060
    advertised_ip: str | None = None
    rtp_ports: tuple[int, int] = (20000, 30000)
    codecs: tuple[str, ...] = ("pcmu", "pcma")
    ring_seconds: float = 6.0
    company: str = "XX"
    timezone: str = "Asia/Shanghai"
    numbers: frozenset[str] = frozenset({"95000"})
    user_agent: str = "hotline-ivr"
    max_calls: int = 500
    max_call_seconds: float = 3600.0
    drain_seconds: float = 120.0
    rtp_strict: bool = True
    # SIP transports (RFC 3261 §18): UDP and TCP on `port`, TLS on `tls_port` with a PEM certificate and key.
    transports: frozenset[str] = frozenset({"udp", "tcp"})
    tls_port: int = 5061
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    tcp_idle_seconds: float = 300.0  # a connection without a complete message this long is closed
    max_connections: int = 1000  # TCP and TLS together; more are refused

    @property
    def payload_types(self) -> list[int]:
        return [CODECS[c] for c in self.codecs]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class SilenceConfig:
    wait_seconds: float = 5.0
    attempts: int = 3
    last_prompt: str = "silent_3"
    vad_aggressiveness: int = 2
    speech_ms: int = 200

    @property
    def routine(self) -> SilentRoutine:
        middle = ("silent_2",) * (self.attempts - 2)
        return SilentRoutine((GREETING, *middle, self.last_prompt), self.wait_seconds)


@dataclass(frozen=True, slots=True)
class PromptConfig:
    voice: str = "sit/cmn"
    rate: int = 240
    cache_dir: Path = Path("var/prompts")
    recorded_dir: Path = Path("prompts/recorded")
    texts: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """An agent peer: `[801]` with `type = agent`."""

    number: str
    seat_group: str
    secret: str
    host: tuple[str, int] | None  # None: `host = dynamic`, the softphone REGISTERs
    name: str = ""
    digest: str = "strict"  # strict | md5 | legacy: see ivr.registrar (for phones that cannot do RFC 7616)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    ring_agent_seconds: float = 15.0
    wrap_up_seconds: float = 10.0
    position_every_seconds: float = 30.0
    overflow_after_seconds: float = 60.0  # 0: never
    overflow: MappingProxyType[str, str] = field(
        default_factory=lambda: MappingProxyType({"senior": "middle", "middle": "junior"})
    )
    complaints_overflow: bool = False
    complaint_group: str | None = None  # complaints go to this group's specialists ([003]); None: the caller's group
    # Never dead air: music between announcements, the expected wait, a callback instead of a long wait.
    music: Path | None = None  # a WAV or a folder of WAVs; None: the generated piece
    music_volume: float = -24.0  # RMS dBFS; prompts.music.DEFAULT_LEVEL_DBFS
    announce_wait: bool = True
    mean_handle_seconds: float = 180.0  # the prior until calls of the group have ended
    max_wait_seconds: float = 300.0  # a longer expected wait (or nobody logged in): offer a callback
    callback_key: str = "#"
    # Short codes an agent may transfer to (REFER to sip:<code>@…): code -> seat group, or "complaint"
    transfer_codes: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class CallbacksConfig:
    """`[callbacks]`: attempts per request and the first retry delay (doubling after each)."""

    max_attempts: int = 3
    retry_seconds: float = 300.0
    gateway: tuple[str, int] | None = None  # the SIP trunk/gateway customers are dialled through; None: no dialling


@dataclass(frozen=True, slots=True)
class SurveyConfig:
    timeout_seconds: float = 8.0
    labels: MappingProxyType[str, str] = field(
        default_factory=lambda: MappingProxyType({"1": "satisfied", "2": "average", "3": "dissatisfied"})
    )


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Per-source request rates (`[limits]`); excess requests get 503 + Retry-After."""

    invite_per_second: float = 20.0
    register_per_second: float = 10.0
    options_per_second: float = 10.0
    other_per_second: float = 50.0  # every other method, in-dialog requests included
    excess: str = "drop"  # or "reply": 503 + Retry-After (at most 5 a second per source)
    max_invites_per_second: float = 250.0  # all sources together: overload control (503 beyond)
    max_loop_lag_ms: float = 100.0  # new calls get 503 while the event loop runs this late
    auth_failures: int = 10  # failed digest attempts from one address within a minute ...
    auth_ban_seconds: float = 600.0  # ... bar it from registering for this long
    trusted: frozenset[str] = frozenset()  # addresses exempt (a SIP load balancer in front)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Several IVR workers behind a SIP load balancer (`[cluster]`), sharing agents through the CRM database."""

    shared_agents: bool = False
    worker: str = ""  # this worker's name in the agents table; "" = host:port
    secret: str = ""  # same on every worker: digest nonces from one are valid on all
    worker_timeout_seconds: float = 10.0  # a worker silent this long: its calls are presumed gone


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """Media security (`[media]`): whether calls may, or must, use SRTP with SDES keys (RFC 4568)."""

    # off: an RTP/SAVP offer gets 488; optional: RTP/SAVP is answered RTP/SAVP, RTP/AVP plain;
    # required: an RTP/AVP offer gets 488. An RTP/SAVP offer is never answered in clear.
    srtp: str = "optional"


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    general: GeneralConfig = GeneralConfig()
    dayparts: tuple[Daypart, ...] = DEFAULT_DAYPARTS
    silence: SilenceConfig = SilenceConfig()
    holidays_file: Path | None = None
    prompts: PromptConfig = PromptConfig()
    database_url: str = DEFAULT_DATABASE_URL
    log_level: str = "info"
    log_format: str = "console"
    status_file: Path | None = None
    tiers: TierThresholds = TierThresholds()
    menu: MenuConfig = MenuConfig()
    queues: QueueConfig = QueueConfig()
    survey: SurveyConfig = SurveyConfig()
    agents: tuple[AgentConfig, ...] = ()
    outbox_dir: Path = Path("var/outbox")
    limits: LimitsConfig = LimitsConfig()
    webhook: WebhookConfig = WebhookConfig()
    cluster: ClusterConfig = ClusterConfig()
    media: MediaConfig = MediaConfig()
    hours: HoursConfig = HoursConfig()
    callbacks: CallbacksConfig = CallbacksConfig()
    greet_senior_by_name: bool = False
    metrics_bind: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no metrics endpoint

    @property
    def flow(self) -> FlowSettings:
        return FlowSettings(
            ring_seconds=self.general.ring_seconds,
            silent_routine=self.silence.routine,
            menu=self.menu,
            survey_timeout_seconds=self.survey.timeout_seconds,
            survey_labels=self.survey.labels,
            position_every_seconds=self.queues.position_every_seconds,
        )


# --- loading -------------------------------------------------------------------

_KNOWN: dict[str, set[str]] = {
    "general": {
        "bind", "port", "advertised_ip", "rtp_port_min", "rtp_port_max", "codecs",
        "ring_seconds", "company", "timezone", "numbers", "user_agent", "status_file",
        "max_calls", "max_call_seconds", "drain_seconds", "rtp_strict",
        "transports", "tls_port", "tls_certificate", "tls_key", "tcp_idle_seconds", "max_connections",
    },
    "greeting": {"dayparts"},
    "silence": {"wait_seconds", "attempts", "last_prompt", "vad_aggressiveness", "speech_ms"},
    "holidays": {"file"},
    "prompts": {"voice", "rate", "cache_dir", "recorded_dir"},  # plus text.<prompt id>
    "database": {"url", "outbox_dir"},
    "limits": {
        "invite_per_second", "register_per_second", "options_per_second", "other_per_second",
        "auth_failures", "auth_ban_seconds", "trusted", "excess", "max_invites_per_second", "max_loop_lag_ms",
    },
    "metrics": {"bind", "port"},
    "media": {"srtp"},
    "cluster": {"shared_agents", "worker", "secret", "worker_timeout_seconds"},
    "webhook": {"url", "secret", "max_attempts", "timeout_seconds", "backoff_seconds", "backoff_max_seconds"},
    "log": {"level", "format"},
    "tiers": {"senior_assets", "senior_volume", "middle_assets", "middle_volume", "greet_senior_by_name"},
    "menu": {"enabled", "timeout_seconds", "default", "senior_only", *"0123456789"},
    "queues": {
        "ring_agent_seconds", "wrap_up_seconds", "position_every_seconds",
        "overflow_after_seconds", "overflow", "complaints_overflow", "complaint_group",
        "music", "music_volume", "announce_wait", "mean_handle_seconds", "max_wait_seconds", "callback_key",
        "transfer_codes",
    },
    "hours": {"timezone", DEFAULT_SCHEDULE},  # plus a seat group or a [general] number per schedule
    "callbacks": {"max_attempts", "retry_seconds", "gateway"},
    "survey": {"timeout_seconds", *"0123456789"},
}
# Sections of the same file read by other programs, which validate them (`python -m desk`: desk/config.py).
_OTHER_READERS = {"desk"}
_AGENT_KEYS = {"type", "seat_group", "secret", "host", "name", "digest"}
DIGEST_POLICIES = ("strict", "md5", "legacy")
_SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]")
_KEY_RE = re.compile(r"^\s*([^\s;#=:\[][^=:]*?)\s*[=:]")
T = TypeVar("T")


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


class _Reader:
    def __init__(self, path: Path, parser: configparser.ConfigParser, lines: dict[tuple[str, str], int]) -> None:
        self.path, self.parser, self.lines = path, parser, lines

    def error(self, section: str, key: str, reason: str) -> ConfigError:
        line = self.lines.get((section, key)) or self.lines.get((section, ""))
        return ConfigError(self.path, line, f"[{section}] {key}" if key else f"[{section}]", reason)

    def get(self, section: str, key: str, default: T, convert: Callable[[str], T], what: str) -> T:
        if not self.parser.has_option(section, key):
            return default
        raw = self.parser.get(section, key).strip()
        try:
            return convert(raw)
        except (ValueError, KeyError) as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise self.error(section, key, f"{raw!r} is not {what}{detail}") from None

    def number(self, section: str, key: str, default: float, lo: float, hi: float, kind: type = float) -> float:
        def convert(raw: str) -> float:
            value: float = kind(raw)
            if not lo <= value <= hi:
                raise ValueError(f"must be between {lo} and {hi}")
            return value

        return self.get(section, key, default, convert, f"a {'whole ' if kind is int else ''}number from {lo} to {hi}")

    def file_path(self, section: str, key: str, default: Path | None) -> Path | None:
        return self.get(section, key, default, lambda raw: (self.path.parent / raw) if raw else None, "a path")


def _parse_dayparts(raw: str) -> tuple[Daypart, ...]:
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


def _parse_codecs(raw: str) -> tuple[str, ...]:
    names = tuple(c.strip().lower() for c in raw.split(",") if c.strip())
    unknown = [n for n in names if n not in CODECS]
    if unknown or not names:
        raise ValueError(f"supported codecs are {', '.join(CODECS)}")
    return names


def _transports(raw: str) -> frozenset[str]:
    names = [t.strip().lower() for t in raw.split(",") if t.strip()]
    unknown = [n for n in names if n not in ("udp", "tcp", "tls")]
    if unknown or not names:
        raise ValueError("choose from udp, tcp, tls (RFC 3261 §18 wants udp and tcp)")
    return frozenset(names)


def _check_tls(r: _Reader, general: GeneralConfig) -> None:
    """TLS needs a readable PEM certificate (chain) and its private key, checked now rather than at the first call."""
    for key, path in (("tls_certificate", general.tls_certificate), ("tls_key", general.tls_key)):
        if path is None:
            raise r.error("general", key, "required when transports includes tls (a PEM file)")
        try:
            path.read_bytes()
        except OSError as exc:
            raise r.error("general", key, f"cannot read {path}: {exc.strerror}") from None
    try:
        assert general.tls_certificate is not None  # checked readable above
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(general.tls_certificate, general.tls_key)
    except (ssl.SSLError, ValueError) as exc:
        pair = f"{general.tls_certificate} and {general.tls_key}"
        raise r.error("general", "tls_certificate", f"{pair} are not a PEM certificate and its key ({exc})") from None


def _zone(raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown IANA time zone") from None
    return raw


def read_sip_conf(path: Path) -> tuple[configparser.ConfigParser, dict[tuple[str, str], int]]:
    """Read and parse a sip.conf (no validation): the parser and the (section, key) -> line index.

    Raises ConfigError when the file cannot be read or is not INI as sip.conf writes it.
    The IVR's `load_config` and the desk's `load_desk_config` both start here.
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


def load_config(path: Path) -> Config:
    """Read and validate a sip.conf; raise ConfigError on the first problem."""
    path = Path(path)
    parser, lines = read_sip_conf(path)
    r = _Reader(path, parser, lines)
    agents: list[AgentConfig] = []
    for section in parser.sections():
        if section in _OTHER_READERS:
            continue
        if section not in _KNOWN and parser.get(section, "type", fallback="") == "agent":
            agents.append(_agent(r, section))
            continue
        if section not in _KNOWN:
            raise r.error(section, "", f"unknown section; known sections are {', '.join(_KNOWN)}, "
                                       "or an agent peer with type = agent")
        for key in parser.options(section):
            if key not in _KNOWN[section] and not (
                (section == "prompts" and key.startswith("text."))
                or (section == "hours" and (key in SEAT_GROUPS or key.isdigit()))
            ):
                raise r.error(section, key, f"unknown key; known keys are {', '.join(sorted(_KNOWN[section]))}")

    g = GeneralConfig()
    rtp_min = int(r.number("general", "rtp_port_min", g.rtp_ports[0], 1024, 65534, int))
    rtp_max = int(r.number("general", "rtp_port_max", g.rtp_ports[1], 1025, 65535, int))
    if rtp_max - rtp_min < 2:
        raise r.error("general", "rtp_port_max", f"{rtp_max} must be above rtp_port_min ({rtp_min}) by 2 or more")
    numbers = r.get(
        "general", "numbers", g.numbers,
        lambda raw: frozenset(n.strip() for n in raw.split(",") if n.strip()) or _raise("empty"),
        "a comma-separated list of numbers",
    )
    general = GeneralConfig(
        bind=r.get("general", "bind", g.bind, str, "an address"),
        port=int(r.number("general", "port", g.port, 1, 65535, int)),
        advertised_ip=r.get("general", "advertised_ip", None, lambda s: s or None, "an address"),
        rtp_ports=(rtp_min, rtp_max),
        codecs=r.get("general", "codecs", g.codecs, _parse_codecs, "a codec list"),
        # [002] "在铃响三声之内": the third ring of the 1 s on / 4 s off cadence ends at 11 s.
        ring_seconds=r.number("general", "ring_seconds", g.ring_seconds, 0, 11),
        company=r.get("general", "company", g.company, lambda s: s or _raise("empty"), "a company name"),
        timezone=r.get("general", "timezone", g.timezone, _zone, "a time zone such as Asia/Shanghai"),
        numbers=numbers,
        user_agent=r.get("general", "user_agent", g.user_agent, str, "a string"),
        max_calls=int(r.number("general", "max_calls", g.max_calls, 1, 100_000, int)),
        max_call_seconds=r.number("general", "max_call_seconds", g.max_call_seconds, 60, 86_400),
        drain_seconds=r.number("general", "drain_seconds", g.drain_seconds, 0, 86_400),
        rtp_strict=r.get("general", "rtp_strict", g.rtp_strict, _bool, "yes or no"),
        transports=r.get("general", "transports", g.transports, _transports, "a list of udp, tcp, tls"),
        tls_port=int(r.number("general", "tls_port", g.tls_port, 1, 65535, int)),
        tls_certificate=r.file_path("general", "tls_certificate", None),
        tls_key=r.file_path("general", "tls_key", None),
        tcp_idle_seconds=r.number("general", "tcp_idle_seconds", g.tcp_idle_seconds, 10, 86_400),
        max_connections=int(r.number("general", "max_connections", g.max_connections, 1, 100_000, int)),
    )
    if "tls" in general.transports:
        _check_tls(r, general)

    s = SilenceConfig()
    silence = SilenceConfig(
        wait_seconds=r.number("silence", "wait_seconds", s.wait_seconds, 1, 60),
        # [004] "严禁未做到重复三次就挂线": never fewer than three attempts.
        attempts=int(r.number("silence", "attempts", s.attempts, 3, 10, int)),
        last_prompt=r.get(
            "silence", "last_prompt", s.last_prompt,
            lambda raw: raw if raw in ("silent_3", "silent_3_alt") else _raise("choose silent_3 or silent_3_alt"),
            "a prompt id",
        ),
        vad_aggressiveness=int(r.number("silence", "vad_aggressiveness", s.vad_aggressiveness, 0, 3, int)),
        speech_ms=int(r.number("silence", "speech_ms", s.speech_ms, 20, 2000, int)),
    )

    holidays_file = r.file_path("holidays", "file", None)
    if holidays_file is not None:
        try:
            load_holiday_file(holidays_file)
        except HolidayFileError as exc:
            raise r.error("holidays", "file", str(exc)) from None

    p = PromptConfig()
    texts = ({k.removeprefix("text."): v.strip() for k, v in parser.items("prompts")}
             if parser.has_section("prompts") else {})
    texts = {k: v for k, v in texts.items() if k not in _KNOWN["prompts"]}
    prompts = PromptConfig(
        voice=r.get("prompts", "voice", p.voice, str, "a voice id"),
        rate=int(r.number("prompts", "rate", p.rate, 60, 400, int)),
        cache_dir=r.file_path("prompts", "cache_dir", path.parent / p.cache_dir) or p.cache_dir,
        recorded_dir=r.file_path("prompts", "recorded_dir", path.parent / p.recorded_dir) or p.recorded_dir,
        texts=MappingProxyType(texts),
    )

    url = r.get("database", "url", DEFAULT_DATABASE_URL, lambda raw: raw or _raise("empty"), "a database URL")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        url = "sqlite:///" + str((path.parent / url.removeprefix("sqlite:///")).resolve())

    tiers = TierThresholds(**{
        key: r.number("tiers", key, getattr(TierThresholds(), key), 0, 1e15)
        for key in ("senior_assets", "senior_volume", "middle_assets", "middle_volume")
    })
    c = CallbacksConfig()
    return Config(
        hours=_hours(r, general),
        callbacks=CallbacksConfig(
            max_attempts=int(r.number("callbacks", "max_attempts", c.max_attempts, 1, 10, int)),
            retry_seconds=r.number("callbacks", "retry_seconds", c.retry_seconds, 30, 86_400),
            gateway=r.get("callbacks", "gateway", None, _gateway, "host:port of the SIP gateway"),
        ),
        greet_senior_by_name=r.get("tiers", "greet_senior_by_name", False, _bool, "yes or no"),
        outbox_dir=r.file_path("database", "outbox_dir", path.parent / "var" / "outbox") or Path("var/outbox"),
        limits=_limits(r),
        webhook=_webhook(r),
        cluster=_cluster(r, url),
        media=_media(r),
        metrics_bind=r.get("metrics", "bind", "127.0.0.1", lambda v: str(ipaddress.ip_address(v)), "an IP address"),
        metrics_port=int(r.number("metrics", "port", 0, 0, 65535, int)),
        tiers=tiers,
        menu=_menu(r),
        queues=_queues(r),
        survey=_survey(r),
        agents=tuple(agents),
        status_file=r.file_path("general", "status_file", path.parent / "var" / "ivr-status.json"),
        path=path,
        general=general,
        dayparts=r.get("greeting", "dayparts", DEFAULT_DAYPARTS, _parse_dayparts, "a day-part list"),
        silence=silence,
        holidays_file=holidays_file,
        prompts=prompts,
        database_url=url,
        log_level=r.get(
            "log", "level", "info",
            lambda raw: raw.lower() if raw.lower() in ("debug", "info", "warning", "error")
            else _raise("choose debug, info, warning or error"),
            "a log level",
        ),
        log_format=r.get(
            "log", "format", "console",
            lambda raw: raw if raw in ("console", "json") else _raise("choose console or json"),
            "a log format",
        ),
    )


def _media(r: _Reader) -> MediaConfig:
    modes = ("off", "optional", "required")  # ivr.srtp.SRTP_MODES, not imported: no libsrtp to read a file
    srtp = r.get("media", "srtp", MediaConfig().srtp,
                 lambda raw: raw.lower() if raw.lower() in modes else _raise("choose off, optional or required"),
                 "an SRTP mode")
    return MediaConfig(srtp=str(srtp))


def _bool(raw: str) -> bool:
    if raw.lower() in ("yes", "true", "on", "1"):
        return True
    if raw.lower() in ("no", "false", "off", "0"):
        return False
    raise ValueError("write yes or no")


def _host(raw: str) -> tuple[str, int] | None:
    if raw == "dynamic":
        return None
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("write dynamic, or IP:port of the softphone")
    return host, int(port)


def _gateway(raw: str) -> tuple[str, int] | None:
    if not raw:
        return None
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("write host:port of the SIP trunk or gateway, e.g. 10.0.0.5:5060, or leave it empty")
    return host, int(port)


def _agent(r: _Reader, section: str) -> AgentConfig:
    for key in r.parser.options(section):
        if key not in _AGENT_KEYS:
            raise r.error(section, key, f"unknown key for an agent; known keys are {', '.join(sorted(_AGENT_KEYS))}")
    if not section.isdigit():
        raise r.error(section, "", "an agent section is named by the agent's number, e.g. [801]")
    group = r.get(section, "seat_group", "",
                  lambda s: s if s in SEAT_GROUPS else _raise(f"choose {', '.join(SEAT_GROUPS)}"), "a seat group")
    if not group:
        raise r.error(section, "seat_group", f"missing; every agent belongs to one of {', '.join(SEAT_GROUPS)}")
    secret = r.get(section, "secret", "", str, "a password")
    host = r.get(section, "host", None, _host, "a host")
    if host is None and not secret:
        raise r.error(section, "secret", "missing; a softphone that registers (host = dynamic) must authenticate")
    digest = r.get(section, "digest", "strict",
                   lambda s: s if s in DIGEST_POLICIES else _raise(f"choose {', '.join(DIGEST_POLICIES)}"), "a policy")
    return AgentConfig(section, group, secret, host, r.get(section, "name", "", str, "a name"), digest)


def _menu(r: _Reader) -> MenuConfig:
    m = MenuConfig()
    choices = dict(m.choices)
    for digit in "0123456789":
        value = r.get("menu", digit, None,
                      lambda s: s if s in SERVICES or s == "none" else _raise(f"choose {', '.join(SERVICES)} or none"),
                      "a service")
        if value == "none":
            choices.pop(digit, None)
        elif value is not None:
            choices[digit] = value
    senior_only = r.get("menu", "senior_only", None, lambda s: frozenset(x.strip() for x in s.split(",") if x.strip()),
                        "a list of services")
    allowed = dict(m.allowed) if senior_only is None else {svc: frozenset({"senior"}) for svc in senior_only}
    return MenuConfig(
        enabled=r.get("menu", "enabled", m.enabled, _bool, "yes or no"),
        timeout_seconds=r.number("menu", "timeout_seconds", m.timeout_seconds, 1, 60),
        choices=MappingProxyType(choices),
        default_service=r.get("menu", "default", m.default_service,
                              lambda s: s if s in SERVICES else _raise(f"choose {', '.join(SERVICES)}"), "a service"),
        allowed=MappingProxyType(allowed),
    )


def _queues(r: _Reader) -> QueueConfig:
    q = QueueConfig()

    def overflow(raw: str) -> MappingProxyType[str, str]:
        pairs = {}
        for item in raw.split(","):
            if not item.strip():
                continue
            src, _, dst = item.partition(">")
            src, dst = src.strip(), dst.strip()
            if src not in SEAT_GROUPS or dst not in SEAT_GROUPS or src == dst:
                raise ValueError(f"each item is group>group with groups {', '.join(SEAT_GROUPS)}")
            pairs[src] = dst
        return MappingProxyType(pairs)

    def transfer_codes(raw: str) -> MappingProxyType[str, str]:
        codes = {}
        for item in raw.split(","):
            if not item.strip():
                continue
            code, _, target = item.partition(">")
            code, target = code.strip(), target.strip()
            if not code.isdigit() or target not in (*SEAT_GROUPS, "complaint"):
                raise ValueError(f"each item is digits>target with targets {', '.join(SEAT_GROUPS)} or complaint")
            codes[code] = target
        return MappingProxyType(codes)

    return QueueConfig(
        ring_agent_seconds=r.number("queues", "ring_agent_seconds", q.ring_agent_seconds, 3, 120),
        wrap_up_seconds=r.number("queues", "wrap_up_seconds", q.wrap_up_seconds, 0, 600),
        position_every_seconds=r.number("queues", "position_every_seconds", q.position_every_seconds, 5, 600),
        overflow_after_seconds=r.number("queues", "overflow_after_seconds", q.overflow_after_seconds, 0, 3600),
        overflow=r.get("queues", "overflow", q.overflow, overflow, "an overflow list like senior>middle"),
        complaints_overflow=r.get("queues", "complaints_overflow", q.complaints_overflow, _bool, "yes or no"),
        complaint_group=r.get(
            "queues", "complaint_group", q.complaint_group,
            lambda s: None if not s else s if s in SEAT_GROUPS
            else _raise(f"choose {', '.join(SEAT_GROUPS)} or leave it empty"),
            "a seat group",
        ),
        music=_music(r),
        music_volume=r.number("queues", "music_volume", q.music_volume, -40, -10),
        announce_wait=r.get("queues", "announce_wait", q.announce_wait, _bool, "yes or no"),
        mean_handle_seconds=r.number("queues", "mean_handle_seconds", q.mean_handle_seconds, 10, 3600),
        max_wait_seconds=r.number("queues", "max_wait_seconds", q.max_wait_seconds, 0, 7200),
        callback_key=r.get(
            "queues", "callback_key", q.callback_key,
            lambda s: s if len(s) == 1 and s in "0123456789*#" else _raise("one key: 0-9, * or #"),
            "a key",
        ),
        transfer_codes=r.get("queues", "transfer_codes", q.transfer_codes, transfer_codes,
                             "short codes like 9001>senior, 9009>complaint"),
    )


def _music(r: _Reader) -> Path | None:
    source = r.file_path("queues", "music", None)
    if source is not None:
        from prompts.music import MusicError, music_files  # numpy and soxr only when ops name their own music

        try:
            music_files(source)  # headers only; the audio is converted once at start
        except MusicError as exc:
            raise r.error("queues", "music", f"{exc.path}: {exc.reason}") from None
    return source


def _hours(r: _Reader, general: GeneralConfig) -> HoursConfig:
    schedules: dict[str, Schedule] = {}
    if r.parser.has_section("hours"):
        for key in r.parser.options("hours"):
            if key == "timezone":
                continue
            if key.isdigit() and key not in general.numbers:
                raise r.error("hours", key,
                              f"not a hotline number; [general] numbers are {', '.join(sorted(general.numbers))}")
            schedule = r.get("hours", key, None, parse_schedule, "business hours like 08:00-22:00")
            if schedule is not None:
                schedules[key] = schedule
    return HoursConfig(
        timezone=r.get("hours", "timezone", general.timezone, _zone, "a time zone such as Asia/Shanghai"),
        schedules=MappingProxyType(schedules) if schedules else HoursConfig().schedules,
    )


def _limits(r: _Reader) -> LimitsConfig:
    d = LimitsConfig()
    rates = {
        key: r.number("limits", key, getattr(d, key), 0.1, 100_000)
        for key in ("invite_per_second", "register_per_second", "options_per_second", "other_per_second",
                    "max_invites_per_second")
    }
    return LimitsConfig(
        **rates,
        max_loop_lag_ms=r.number("limits", "max_loop_lag_ms", d.max_loop_lag_ms, 10, 10_000),
        excess=r.get("limits", "excess", d.excess,
                     lambda v: v if v in ("drop", "reply") else _raise("choose drop or reply"), "drop or reply"),
        auth_failures=int(r.number("limits", "auth_failures", d.auth_failures, 1, 10_000, int)),
        auth_ban_seconds=r.number("limits", "auth_ban_seconds", d.auth_ban_seconds, 0, 86_400),
        trusted=r.get("limits", "trusted", d.trusted, _addresses, "a comma-separated list of IP addresses"),
    )


def _addresses(raw: str) -> frozenset[str]:
    found = frozenset(a.strip() for a in raw.split(",") if a.strip())
    for address in found:
        ipaddress.ip_address(address)  # ValueError names the bad one
    return found


def _webhook(r: _Reader) -> WebhookConfig:
    d = WebhookConfig()

    def url(raw: str) -> str | None:
        if not raw:
            return None
        if not raw.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return raw

    hook = WebhookConfig(
        url=r.get("webhook", "url", None, url, "an http(s) URL"),
        secret=r.get("webhook", "secret", "", str, "a shared secret"),
        max_attempts=int(r.number("webhook", "max_attempts", d.max_attempts, 1, 100, int)),
        timeout_seconds=r.number("webhook", "timeout_seconds", d.timeout_seconds, 0.5, 120),
        backoff_seconds=r.number("webhook", "backoff_seconds", d.backoff_seconds, 0.1, 3600),
        backoff_max_seconds=r.number("webhook", "backoff_max_seconds", d.backoff_max_seconds, 1, 86_400),
    )
    if hook.url and len(hook.secret) < 16:
        raise r.error("webhook", "secret", "needs 16 characters or more: the receiver checks each push's HMAC with it")
    return hook


def _cluster(r: _Reader, database_url: str) -> ClusterConfig:
    d = ClusterConfig()
    cluster = ClusterConfig(
        shared_agents=r.get("cluster", "shared_agents", d.shared_agents, _bool, "yes or no"),
        worker=r.get("cluster", "worker", d.worker, str.strip, "a worker name"),
        secret=r.get("cluster", "secret", d.secret, str, "a shared secret"),
        worker_timeout_seconds=r.number("cluster", "worker_timeout_seconds", d.worker_timeout_seconds, 3, 3600),
    )
    if len(cluster.worker) > 128:
        raise r.error("cluster", "worker", "at most 128 characters")
    if cluster.shared_agents:
        if ":memory:" in database_url:
            raise r.error("cluster", "shared_agents", "needs a database the workers share; [database] url is in memory")
        if len(cluster.secret) < 16:
            raise r.error("cluster", "secret",
                          "needs 16 characters or more, the same on every worker (it signs digest nonces)")
    return cluster


def _survey(r: _Reader) -> SurveyConfig:
    s = SurveyConfig()
    labels = dict(s.labels)
    for digit in "0123456789":
        label = r.get("survey", digit, None, lambda v: v or _raise("empty"), "a label")
        if label is not None:
            labels[digit] = label
    return SurveyConfig(
        timeout_seconds=r.number("survey", "timeout_seconds", s.timeout_seconds, 2, 60),
        labels=MappingProxyType(labels),
    )


def _raise(reason: str) -> NoReturn:
    raise ValueError(reason)
