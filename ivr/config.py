"""sip.conf: read once at start-up into frozen, validated objects.

The file is Asterisk-style INI (`[section]`, `key = value`, `;` comments).
Each section is described once, by a pydantic dataclass below (`SECTIONS`):
its fields are the section's keys, each with its type, default and parser
(`Annotated` types from ivr.sipconf: `whole(1, 65535)`, `number(0, 11)`,
`YesNo`, `choice(...)`, `FilePath`, ...). The keys a section accepts, the
"known keys are ..." messages and the values read all come from those
fields; nothing lists the keys a second time. A few fields gather a family
of keys (`Collects`: the digits of `[menu]` and `[survey]`, `[prompts]
text.<id>`, the schedules of `[hours]`). Agent peers are the other sections
with `type = agent`, read into `AgentConfig`; `[desk]` is desk/config.py's.

Some sections are the objects the rest of the code uses (`GeneralConfig`,
`QueueConfig`, ...); the others are built into types of other modules
(`MenuSection` -> ivr.service.MenuConfig, `TiersSection` -> TierThresholds,
...) or into fields of `Config`. Anything wrong is reported as `ConfigError`,
which names the file, the line, the key and the reason (see ivr.sipconf for
how), and the IVR refuses to start. `load_config` validates the sections,
checks what spans two of them, and assembles `Config`; after loading, the
rest of the code only sees `Config`, never the parser.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time as clock_time
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Self
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, Field, model_validator
from pydantic.dataclasses import dataclass as section_model

from crm_bridge.customers import TierThresholds
from crm_bridge.settings import WebhookConfig
from ivr.callflow import GREETING, FlowSettings, SilentRoutine
from ivr.greeting import DEFAULT_DAYPARTS, FIVE_PART_DAYPARTS, Daypart, HolidayFileError, load_holiday_file
from ivr.hours import DEFAULT_SCHEDULE, HoursConfig, Schedule, parse_schedule
from ivr.service import SEAT_GROUPS, SERVICES, MenuConfig
from ivr.sipconf import (
    GIVEN,
    SECTION,
    Collects,
    FilePath,
    IPAddress,
    OptionalPath,
    Port,
    SettingError,
    SipConf,
    TimeZone,
    YesNo,
    choice,
    each,
    in_folder,
    ip_address,
    known_keys,
    nonempty,
    number,
    text,
    whole,
)
from ivr.sipconf import ConfigError as ConfigError  # raised by load_config; callers catch it from here
from ivr.sipconf import read_sip_conf as read_sip_conf

CODECS = {"pcmu": 0, "pcma": 8}  # name -> RTP static payload type (RFC 3551)
DEFAULT_DATABASE_URL = "sqlite:///var/hotline.db"
DAYPART_PRESETS = {"hotline": DEFAULT_DAYPARTS, "five_part": FIVE_PART_DAYPARTS}
DIGEST_POLICIES = ("strict", "md5", "legacy")
DIGITS = tuple("0123456789")


# --- parsers of particular keys --------------------------------------------------------------------


def _codecs(raw: str) -> tuple[str, ...]:
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


def _comma_set(raw: str) -> frozenset[str]:
    return frozenset(n.strip() for n in raw.split(",") if n.strip())


def _numbers(raw: str) -> frozenset[str]:
    numbers = _comma_set(raw)
    if not numbers:
        raise ValueError("empty")
    return numbers


def _addresses(raw: str) -> frozenset[str]:
    found = _comma_set(raw)
    for address in found:
        ip_address(address)
    return found


def _dayparts(raw: str) -> tuple[Daypart, ...]:
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


def _host_port(raw: str, reason: str) -> tuple[str, int]:
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(reason)
    return host, int(port)


def _agent_host(raw: str) -> tuple[str, int] | None:
    return None if raw == "dynamic" else _host_port(raw, "write dynamic, or IP:port of the softphone")


def _gateway(raw: str) -> tuple[str, int] | None:
    reason = "write host:port of the SIP trunk or gateway, e.g. 10.0.0.5:5060, or leave it empty"
    return _host_port(raw, reason) if raw else None


def _pairs(raw: str, valid: Callable[[str, str], bool], reason: str) -> MappingProxyType[str, str]:
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


def _overflow(raw: str) -> MappingProxyType[str, str]:
    return _pairs(raw, lambda src, dst: src in SEAT_GROUPS and dst in SEAT_GROUPS and src != dst,
                  f"each item is group>group with groups {', '.join(SEAT_GROUPS)}")


def _transfer_codes(raw: str) -> MappingProxyType[str, str]:
    return _pairs(raw, lambda code, target: code.isdigit() and target in (*SEAT_GROUPS, "complaint"),
                  f"each item is digits>target with targets {', '.join(SEAT_GROUPS)} or complaint")


def _complaint_group(raw: str) -> str | None:
    if raw and raw not in SEAT_GROUPS:
        raise ValueError(f"choose {', '.join(SEAT_GROUPS)} or leave it empty")
    return raw or None


def _callback_key(raw: str) -> str:
    if len(raw) != 1 or raw not in "0123456789*#":
        raise ValueError("one key: 0-9, * or #")
    return raw


def _service_or_none(raw: str) -> str:
    if raw not in SERVICES and raw != "none":
        raise ValueError(f"choose {', '.join(SERVICES)} or none")
    return raw


def _webhook_url(raw: str) -> str | None:
    if raw and not raw.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return raw or None


def _sqlite_file_in(url: str, folder: Path) -> str:
    """A relative SQLite file is relative to sip.conf, like every path in it."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        return "sqlite:///" + str((folder / url.removeprefix("sqlite:///")).resolve())
    return url


def _readable_holidays(path: Path | None) -> Path | None:
    if path is not None:
        try:
            load_holiday_file(path)
        except HolidayFileError as exc:
            raise ValueError(str(exc)) from None
    return path


def _readable_music(source: Path | None) -> Path | None:
    if source is not None:
        from prompts.music import MusicError, music_files  # numpy and soxr only when ops name their own music

        try:
            music_files(source)  # headers only; the audio is converted once at start
        except MusicError as exc:
            raise ValueError(f"{exc.path}: {exc.reason}") from None
    return source


def _at_most(length: int) -> AfterValidator:
    def check_length(value: str) -> str:
        if len(value) > length:
            raise ValueError(f"at most {length} characters")
        return value

    return AfterValidator(check_length)


# --- the sections --------------------------------------------------------------------------------


@section_model(config=SECTION, slots=True)
class GeneralConfig:
    bind: str = "127.0.0.1"
    port: Port = 5060
    advertised_ip: Annotated[str | None, text("an address", lambda s: s or None)] = None
    rtp_port_min: Annotated[int, whole(1024, 65534)] = 20000
    rtp_port_max: Annotated[int, whole(1025, 65535)] = 30000
    codecs: Annotated[tuple[str, ...], text("a codec list", _codecs)] = ("pcmu", "pcma")
    # [002] "在铃响三声之内": the third ring of the 1 s on / 4 s off cadence ends at 11 s.
    ring_seconds: Annotated[float, number(0, 11)] = 6.0
    company: Annotated[str, text("a company name", nonempty)] = "XX"
    timezone: TimeZone = "Asia/Shanghai"
    numbers: Annotated[frozenset[str], text("a comma-separated list of numbers", _numbers)] = frozenset({"95000"})
    user_agent: str = "hotline-ivr"
    # agents' states and the queues for `python -m ivr status` and the desk; None: not written
    status_file: OptionalPath = Field(default=Path("var/ivr-status.json"), validate_default=True)
    max_calls: Annotated[int, whole(1, 100_000)] = 500
    max_call_seconds: Annotated[float, number(60, 86_400)] = 3600.0
    drain_seconds: Annotated[float, number(0, 86_400)] = 120.0
    rtp_strict: YesNo = True
    # SIP transports (RFC 3261 §18): UDP and TCP on `port`, TLS on `tls_port` with a PEM certificate and key.
    transports: Annotated[frozenset[str], text("a list of udp, tcp, tls", _transports)] = frozenset({"udp", "tcp"})
    tls_port: Port = 5061
    tls_certificate: OptionalPath = None
    tls_key: OptionalPath = None
    # a connection without a complete message this long is closed
    tcp_idle_seconds: Annotated[float, number(10, 86_400)] = 300.0
    max_connections: Annotated[int, whole(1, 100_000)] = 1000  # TCP and TLS together; more are refused

    @property
    def rtp_ports(self) -> tuple[int, int]:
        return self.rtp_port_min, self.rtp_port_max

    @property
    def payload_types(self) -> list[int]:
        return [CODECS[c] for c in self.codecs]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @model_validator(mode="after")
    def _rtp_range_holds_a_call(self) -> Self:
        if self.rtp_port_max - self.rtp_port_min < 2:
            raise SettingError("rtp_port_max", f"{self.rtp_port_max} must be above rtp_port_min "
                                               f"({self.rtp_port_min}) by 2 or more")
        return self

    @model_validator(mode="after")
    def _wildcard_bind_names_its_address(self) -> Self:
        """Via, Contact, Call-IDs and SDP carry advertised_ip (or bind): never an address no host can reach."""
        wildcard = ("0.0.0.0", "::", "")
        if self.advertised_ip in wildcard:
            raise SettingError("advertised_ip", f"{self.advertised_ip!r} is not an address other hosts can reach")
        if self.bind in wildcard and self.advertised_ip is None:
            raise SettingError("advertised_ip", f"required when bind is {self.bind or 'empty'} (every address): the "
                                                "address callers, the balancer and phones reach this IVR at, "
                                                "written into Via, Contact and SDP")
        return self

    @model_validator(mode="after")
    def _tls_has_its_pem_files(self) -> Self:
        """Checked now rather than at the first call: a readable PEM certificate (chain) and its private key."""
        if "tls" not in self.transports:
            return self
        for key, path in (("tls_certificate", self.tls_certificate), ("tls_key", self.tls_key)):
            if path is None:
                raise SettingError(key, "required when transports includes tls (a PEM file)")
            try:
                path.read_bytes()
            except OSError as exc:
                raise SettingError(key, f"cannot read {path}: {exc.strerror}") from None
        try:
            assert self.tls_certificate is not None  # checked readable above
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.tls_certificate, self.tls_key)
        except (ssl.SSLError, ValueError) as exc:
            pair = f"{self.tls_certificate} and {self.tls_key}"
            raise SettingError("tls_certificate", f"{pair} are not a PEM certificate and its key ({exc})") from None
        return self


@section_model(config=SECTION, slots=True)
class MediaConfig:
    """Media security (`[media]`): whether calls may, or must, use SRTP with SDES keys (RFC 4568)."""

    # off: an RTP/SAVP offer gets 488; optional: RTP/SAVP is answered RTP/SAVP, RTP/AVP plain;
    # required: an RTP/AVP offer gets 488. An RTP/SAVP offer is never answered in clear.
    # The modes are ivr.srtp.SRTP_MODES, not imported: no libsrtp is needed to read a file.
    srtp: Annotated[str, choice(("off", "optional", "required"), "an SRTP mode", "choose off, optional or required",
                                any_case=True)] = "optional"


@section_model(config=SECTION, slots=True)
class GreetingSection:
    dayparts: Annotated[tuple[Daypart, ...], text("a day-part list", _dayparts)] = DEFAULT_DAYPARTS


@section_model(config=SECTION, slots=True)
class SilenceConfig:
    wait_seconds: Annotated[float, number(1, 60)] = 5.0
    # [004] "严禁未做到重复三次就挂线": never fewer than three attempts.
    attempts: Annotated[int, whole(3, 10)] = 3
    last_prompt: Annotated[str, choice(("silent_3", "silent_3_alt"), "a prompt id",
                                       "choose silent_3 or silent_3_alt")] = "silent_3"
    vad_aggressiveness: Annotated[int, whole(0, 3)] = 2
    speech_ms: Annotated[int, whole(20, 2000)] = 200

    @property
    def routine(self) -> SilentRoutine:
        middle = ("silent_2",) * (self.attempts - 2)
        return SilentRoutine((GREETING, *middle, self.last_prompt), self.wait_seconds)


@section_model(config=SECTION, slots=True)
class HolidaysSection:
    file: Annotated[OptionalPath, AfterValidator(_readable_holidays)] = None


@section_model(config=SECTION, slots=True)
class HoursSection:
    """`[hours]`, built into ivr.hours' HoursConfig; its numbers are checked against [general]'s by load_config."""

    timezone: TimeZone = ""  # "": [general]'s
    schedules: Annotated[
        MappingProxyType[str, Schedule],
        Collects((DEFAULT_SCHEDULE,), pattern=rf"{'|'.join(SEAT_GROUPS)}|\d+", shown_as="a seat group or number"),
        each("business hours like 08:00-22:00", parse_schedule, MappingProxyType),
    ] = field(default_factory=lambda: MappingProxyType({}))

    def config(self, general_timezone: str) -> HoursConfig:
        return HoursConfig(self.timezone or general_timezone, self.schedules or HoursConfig().schedules)


def _prompt_texts(parsed: dict[str, str]) -> MappingProxyType[str, str]:
    return MappingProxyType({key.removeprefix("text."): value for key, value in parsed.items()})


@section_model(config=SECTION, slots=True)
class PromptConfig:
    voice: str = "sit/cmn"
    rate: Annotated[int, whole(60, 400)] = 240
    cache_dir: FilePath = Field(default=Path("var/prompts"), validate_default=True)
    recorded_dir: FilePath = Field(default=Path("prompts/recorded"), validate_default=True)
    # text.<prompt id> = ...: prompt id -> the text spoken instead of the catalogue's
    texts: Annotated[
        MappingProxyType[str, str],
        Collects(pattern=r"text\..+", shown_as="text.<prompt id>"),
        each("a prompt text", str, _prompt_texts),
    ] = field(default_factory=lambda: MappingProxyType({}))


@section_model(config=SECTION, slots=True)
class DatabaseSection:
    url: Annotated[str, text("a database URL", nonempty), in_folder(_sqlite_file_in)] = Field(
        default=DEFAULT_DATABASE_URL, validate_default=True
    )
    outbox_dir: FilePath = Field(default=Path("var/outbox"), validate_default=True)


Rate = Annotated[float, number(0.1, 100_000)]


@section_model(config=SECTION, slots=True)
class LimitsConfig:
    """Per-source request rates (`[limits]`); excess requests get 503 + Retry-After."""

    invite_per_second: Rate = 20.0
    register_per_second: Rate = 10.0
    options_per_second: Rate = 10.0
    other_per_second: Rate = 50.0  # every other method, in-dialog requests included
    # drop, or reply: 503 + Retry-After (at most 5 a second per source)
    excess: Annotated[str, choice(("drop", "reply"), "drop or reply", "choose drop or reply")] = "drop"
    max_invites_per_second: Rate = 250.0  # all sources together: overload control (503 beyond)
    max_loop_lag_ms: Annotated[float, number(10, 10_000)] = 100.0  # new calls get 503 while the loop runs this late
    auth_failures: Annotated[int, whole(1, 10_000)] = 10  # failed digest attempts from one address within a minute ...
    auth_ban_seconds: Annotated[float, number(0, 86_400)] = 600.0  # ... bar it from registering for this long
    # addresses exempt (a SIP load balancer in front)
    trusted: Annotated[frozenset[str], text("a comma-separated list of IP addresses", _addresses)] = frozenset()


@section_model(config=SECTION, slots=True)
class MetricsSection:
    bind: IPAddress = "127.0.0.1"
    port: Annotated[int, whole(0, 65535)] = 0  # 0: no metrics endpoint


@section_model(config=SECTION, slots=True)
class ClusterConfig:
    """Several IVR workers behind a SIP load balancer (`[cluster]`), sharing agents through the CRM database."""

    shared_agents: YesNo = False
    worker: Annotated[str, _at_most(128)] = ""  # this worker's name; "" = host:port
    # the same on every worker: digest nonces from one are valid on all
    secret: str = ""
    # a worker silent this long: its calls are presumed gone
    worker_timeout_seconds: Annotated[float, number(3, 3600)] = 10.0


_WEBHOOK = WebhookConfig()


@section_model(config=SECTION, slots=True)
class WebhookSection:
    """`[webhook]`, built into crm_bridge's WebhookConfig (whose defaults these are)."""

    url: Annotated[str | None, text("an http(s) URL", _webhook_url)] = _WEBHOOK.url
    secret: str = _WEBHOOK.secret
    max_attempts: Annotated[int, whole(1, 100)] = _WEBHOOK.max_attempts
    timeout_seconds: Annotated[float, number(0.5, 120)] = _WEBHOOK.timeout_seconds
    backoff_seconds: Annotated[float, number(0.1, 3600)] = _WEBHOOK.backoff_seconds
    backoff_max_seconds: Annotated[float, number(1, 86_400)] = _WEBHOOK.backoff_max_seconds

    @model_validator(mode="after")
    def _signed(self) -> Self:
        if self.url and len(self.secret) < 16:
            raise SettingError("secret", "needs 16 characters or more: the receiver checks each push's HMAC with it")
        return self

    def config(self) -> WebhookConfig:
        return WebhookConfig(
            url=self.url,
            secret=self.secret,
            max_attempts=self.max_attempts,
            timeout_seconds=self.timeout_seconds,
            backoff_seconds=self.backoff_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
        )


@section_model(config=SECTION, slots=True)
class LogSection:
    level: Annotated[str, choice(("debug", "info", "warning", "error"), "a log level",
                                 "choose debug, info, warning or error", any_case=True)] = "info"
    format: Annotated[str, choice(("console", "json"), "a log format", "choose console or json")] = "console"


_TIERS = TierThresholds()
Amount = Annotated[float, number(0, 1e15)]


@section_model(config=SECTION, slots=True)
class TiersSection:
    """`[tiers]`: crm_bridge's TierThresholds (whose defaults these are), and the greeting by name."""

    senior_assets: Amount = _TIERS.senior_assets
    senior_volume: Amount = _TIERS.senior_volume
    middle_assets: Amount = _TIERS.middle_assets
    middle_volume: Amount = _TIERS.middle_volume
    greet_senior_by_name: YesNo = False

    def thresholds(self) -> TierThresholds:
        return TierThresholds(self.senior_assets, self.senior_volume, self.middle_assets, self.middle_volume)


_MENU = MenuConfig()


@section_model(config=SECTION, slots=True)
class MenuSection:
    """`[menu]`, built into ivr.service's MenuConfig (whose defaults these are)."""

    enabled: YesNo = _MENU.enabled
    timeout_seconds: Annotated[float, number(1, 60)] = _MENU.timeout_seconds
    default: Annotated[str, choice(SERVICES, "a service")] = _MENU.default_service
    # services only senior customers may choose; None: MenuConfig's
    senior_only: Annotated[frozenset[str] | None, text("a list of services", _comma_set)] = None
    # digit = service, or none to take the digit out of the menu
    digits: Annotated[
        MappingProxyType[str, str], Collects(DIGITS), each("a service", _service_or_none, MappingProxyType)
    ] = field(default_factory=lambda: MappingProxyType({}))

    def config(self) -> MenuConfig:
        choices = {**_MENU.choices, **self.digits}
        allowed = (_MENU.allowed if self.senior_only is None
                   else MappingProxyType({service: frozenset({"senior"}) for service in self.senior_only}))
        return MenuConfig(
            enabled=self.enabled,
            timeout_seconds=self.timeout_seconds,
            choices=MappingProxyType({digit: s for digit, s in choices.items() if s != "none"}),
            default_service=self.default,
            allowed=allowed,
        )


@section_model(config=SECTION, slots=True)
class QueueConfig:
    ring_agent_seconds: Annotated[float, number(3, 120)] = 15.0
    wrap_up_seconds: Annotated[float, number(0, 600)] = 10.0
    position_every_seconds: Annotated[float, number(5, 600)] = 30.0
    overflow_after_seconds: Annotated[float, number(0, 3600)] = 60.0  # 0: never
    overflow: Annotated[MappingProxyType[str, str], text("an overflow list like senior>middle", _overflow)] = field(
        default_factory=lambda: MappingProxyType({"senior": "middle", "middle": "junior"})
    )
    complaints_overflow: YesNo = False
    # complaints go to this group's specialists ([003]); None: the caller's group
    complaint_group: Annotated[str | None, text("a seat group", _complaint_group)] = None
    # Never dead air: music between announcements, the expected wait, a callback instead of a long wait.
    # a WAV or a folder of WAVs; None: the generated piece
    music: Annotated[OptionalPath, AfterValidator(_readable_music)] = None
    music_volume: Annotated[float, number(-40, -10)] = -24.0  # RMS dBFS; prompts.music.DEFAULT_LEVEL_DBFS
    announce_wait: YesNo = True
    mean_handle_seconds: Annotated[float, number(10, 3600)] = 180.0  # the prior until calls of the group have ended
    # a longer expected wait (or nobody logged in): offer a callback
    max_wait_seconds: Annotated[float, number(0, 7200)] = 300.0
    callback_key: Annotated[str, text("a key", _callback_key)] = "#"
    # Short codes an agent may transfer to (REFER to sip:<code>@…): code -> seat group, or "complaint"
    transfer_codes: Annotated[
        MappingProxyType[str, str], text("short codes like 9001>senior, 9009>complaint", _transfer_codes)
    ] = field(default_factory=lambda: MappingProxyType({}))


@section_model(config=SECTION, slots=True)
class CallbacksConfig:
    """`[callbacks]`: attempts per request and the first retry delay (doubling after each)."""

    max_attempts: Annotated[int, whole(1, 10)] = 3
    retry_seconds: Annotated[float, number(30, 86_400)] = 300.0
    # the SIP trunk/gateway customers are dialled through; None: no dialling
    gateway: Annotated[tuple[str, int] | None, text("host:port of the SIP gateway", _gateway)] = None


SURVEY_LABELS = MappingProxyType({"1": "satisfied", "2": "average", "3": "dissatisfied"})


def _survey_labels(parsed: dict[str, str]) -> MappingProxyType[str, str]:
    return MappingProxyType({**SURVEY_LABELS, **parsed})


@section_model(config=SECTION, slots=True)
class SurveyConfig:
    timeout_seconds: Annotated[float, number(2, 60)] = 8.0
    # digit = label stored with the score (over the default labels)
    labels: Annotated[
        MappingProxyType[str, str], Collects(DIGITS), each("a label", nonempty, _survey_labels)
    ] = field(default_factory=lambda: SURVEY_LABELS)


@section_model(config=SECTION, slots=True)
class AgentConfig:
    """An agent peer: `[801]` with `type = agent`."""

    number: Annotated[str, GIVEN]  # the section's name
    seat_group: Annotated[
        str,
        choice(SEAT_GROUPS, "a seat group"),
        Field(description=f"every agent belongs to one of {', '.join(SEAT_GROUPS)}"),
    ]
    secret: str = ""
    host: Annotated[tuple[str, int] | None, text("a host", _agent_host)] = None  # None: `host = dynamic`, it REGISTERs
    name: str = ""
    # strict | md5 | legacy: see ivr.registrar (for phones that cannot do RFC 7616)
    digest: Annotated[str, choice(DIGEST_POLICIES, "a policy")] = "strict"

    @model_validator(mode="after")
    def _registering_phone_authenticates(self) -> Self:
        if self.host is None and not self.secret:
            raise SettingError("secret", "missing; a softphone that registers (host = dynamic) must authenticate")
        return self


SECTIONS: dict[str, type] = {
    "general": GeneralConfig,
    "greeting": GreetingSection,
    "silence": SilenceConfig,
    "holidays": HolidaysSection,
    "prompts": PromptConfig,
    "database": DatabaseSection,
    "limits": LimitsConfig,
    "metrics": MetricsSection,
    "media": MediaConfig,
    "cluster": ClusterConfig,
    "webhook": WebhookSection,
    "log": LogSection,
    "tiers": TiersSection,
    "menu": MenuSection,
    "queues": QueueConfig,
    "hours": HoursSection,
    "callbacks": CallbacksConfig,
    "survey": SurveyConfig,
}
_KNOWN: dict[str, set[str]] = {name: known_keys(model) for name, model in SECTIONS.items()}
# Sections of the same file read by other programs, which validate them (`python -m desk`: desk/config.py).
_OTHER_READERS = {"desk"}
# `type = agent` is what makes a section an agent peer; the number is the section's name.
AGENT_KEYS = {"type"} | known_keys(AgentConfig)


@dataclass(frozen=True, slots=True)
class Config:
    """What load_config assembled from the sections (their models hold the defaults)."""

    path: Path
    general: GeneralConfig
    media: MediaConfig
    dayparts: tuple[Daypart, ...]
    silence: SilenceConfig
    holidays_file: Path | None
    hours: HoursConfig
    prompts: PromptConfig
    database_url: str
    outbox_dir: Path
    limits: LimitsConfig
    metrics_bind: str
    metrics_port: int  # 0: no metrics endpoint
    cluster: ClusterConfig
    webhook: WebhookConfig
    log_level: str
    log_format: str
    tiers: TierThresholds
    greet_senior_by_name: bool
    menu: MenuConfig
    queues: QueueConfig
    callbacks: CallbacksConfig
    survey: SurveyConfig
    agents: tuple[AgentConfig, ...]

    @property
    def status_file(self) -> Path | None:
        return self.general.status_file

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


def load_config(path: Path) -> Config:
    """Read and validate a sip.conf; raise ConfigError on the first problem."""
    conf = SipConf.read(path)
    agents = tuple(_agent(conf, section) for section in _agent_sections(conf))
    general = conf.section("general", GeneralConfig)
    database = conf.section("database", DatabaseSection)
    cluster = conf.section("cluster", ClusterConfig)
    _check_cluster(conf, cluster, database.url)
    hours = conf.section("hours", HoursSection)
    _check_hours(conf, hours, general)
    metrics = conf.section("metrics", MetricsSection)
    log = conf.section("log", LogSection)
    tiers = conf.section("tiers", TiersSection)
    return Config(
        path=conf.path,
        general=general,
        media=conf.section("media", MediaConfig),
        dayparts=conf.section("greeting", GreetingSection).dayparts,
        silence=conf.section("silence", SilenceConfig),
        holidays_file=conf.section("holidays", HolidaysSection).file,
        hours=hours.config(general.timezone),
        prompts=conf.section("prompts", PromptConfig),
        database_url=database.url,
        outbox_dir=database.outbox_dir,
        limits=conf.section("limits", LimitsConfig),
        metrics_bind=metrics.bind,
        metrics_port=metrics.port,
        cluster=cluster,
        webhook=conf.section("webhook", WebhookSection).config(),
        log_level=log.level,
        log_format=log.format,
        tiers=tiers.thresholds(),
        greet_senior_by_name=tiers.greet_senior_by_name,
        menu=conf.section("menu", MenuSection).config(),
        queues=conf.section("queues", QueueConfig),
        callbacks=conf.section("callbacks", CallbacksConfig),
        survey=conf.section("survey", SurveyConfig),
        agents=agents,
    )


def _agent_sections(conf: SipConf) -> list[str]:
    """The agent peers' sections; any other section must be one of SECTIONS (or another program's)."""
    agents = []
    for section in conf.parser.sections():
        if section in SECTIONS or section in _OTHER_READERS:
            continue
        if conf.parser.get(section, "type", fallback="") != "agent":
            raise conf.error(section, "", f"unknown section; known sections are {', '.join(SECTIONS)}, "
                                          "or an agent peer with type = agent")
        agents.append(section)
    return agents


def _agent(conf: SipConf, section: str) -> AgentConfig:
    for key in conf.parser.options(section):
        if key not in AGENT_KEYS:
            reason = f"unknown key for an agent; known keys are {', '.join(sorted(AGENT_KEYS))}"
            raise conf.error(section, key, reason)
    if not section.isdigit():
        raise conf.error(section, "", "an agent section is named by the agent's number, e.g. [801]")
    return conf.section(section, AgentConfig, only=AGENT_KEYS - {"type"}, number=section)


def _check_cluster(conf: SipConf, cluster: ClusterConfig, database_url: str) -> None:
    if not cluster.shared_agents:
        return
    if ":memory:" in database_url:
        raise conf.error("cluster", "shared_agents", "needs a database the workers share; [database] url is in memory")
    if len(cluster.secret) < 16:
        raise conf.error("cluster", "secret",
                         "needs 16 characters or more, the same on every worker (it signs digest nonces)")


def _check_hours(conf: SipConf, hours: HoursSection, general: GeneralConfig) -> None:
    for key in hours.schedules:
        if key.isdigit() and key not in general.numbers:
            raise conf.error("hours", key,
                             f"not a hotline number; [general] numbers are {', '.join(sorted(general.numbers))}")
