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
from ivr.callflow import GREETING, FlowSettings, RecordingRule, SilentRoutine
from ivr.greeting import DEFAULT_DAYPARTS, FIVE_PART_DAYPARTS, Daypart, HolidayFileError, load_holiday_file
from ivr.hours import DEFAULT_SCHEDULE, HoursConfig, Schedule, parse_schedule
from ivr.questionnaire import QuestionnaireSet, default_questionnaires, load_questionnaires
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
PHONE_KINDS = ("sip", "browser", "both")
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


def _readable_file(path: Path | None) -> Path | None:
    """A file named in sip.conf that is read later (its content's errors name their own file and line)."""
    if path is not None and not path.is_file():
        raise ValueError(f"{path}: no such file")
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
    """Address the IVR listens on for SIP; RTP binds to the same address."""
    port: Port = 5060
    """Port for SIP over UDP and TCP."""
    advertised_ip: Annotated[str | None, text("an address", lambda s: s or None)] = None
    """Address written into SDP when the IVR sits behind NAT; empty: the bind address."""
    rtp_port_min: Annotated[int, whole(1024, 65534)] = 20000
    """Lowest RTP port; one even/odd pair per call, so the range bounds concurrent calls."""
    rtp_port_max: Annotated[int, whole(1025, 65535)] = 30000
    """Highest RTP port (at least rtp_port_min + 2)."""
    codecs: Annotated[tuple[str, ...], text("a codec list", _codecs)] = ("pcmu", "pcma")
    """Codecs offered, preferred first (pcmu: G.711 u-law, pcma: A-law); the caller's order wins, others get 488."""
    # [002] "在铃响三声之内": the third ring of the 1 s on / 4 s off cadence ends at 11 s.
    ring_seconds: Annotated[float, number(0, 11)] = 6.0
    """Seconds of ringing before answering: 6 ends the second ring (1 s on, 4 s off), 11 the third."""
    company: Annotated[str, text("a company name", nonempty)] = "XX"
    """Company name spoken in the greetings ("XX客服中心")."""
    timezone: TimeZone = "Asia/Shanghai"
    """Time zone (IANA name) of the time-of-day greeting, the holiday dates and the desk's and report's days."""
    numbers: Annotated[frozenset[str], text("a comma-separated list of numbers", _numbers)] = frozenset({"95000"})
    """Hotline numbers answered (user part of the request URI); others get 404."""
    user_agent: str = "hotline-ivr"
    """Value of the User-Agent and Server headers."""
    status_file: OptionalPath = Field(default=Path("var/ivr-status.json"), validate_default=True)
    """Agents' states and queues, rewritten each second for `python -m ivr status` and the desk; empty: none."""
    max_calls: Annotated[int, whole(1, 100_000)] = 500
    """Calls handled at once; beyond this new INVITEs get 503 + Retry-After (the RTP range bounds it too)."""
    max_call_seconds: Annotated[float, number(60, 86_400)] = 3600.0
    """A call still up after this many seconds is ended (BYE), outcome failed."""
    drain_seconds: Annotated[float, number(0, 86_400)] = 120.0
    """On SIGTERM or Ctrl-C, how long calls in progress may finish (new calls get 503) before the rest get a BYE."""
    rtp_strict: YesNo = True
    """Take RTP only from the address its SDP named (others dropped, counted); no for callers behind NAT without SBC."""
    transports: Annotated[frozenset[str], text("a list of udp, tcp, tls", _transports)] = frozenset({"udp", "tcp"})
    """SIP transports (RFC 3261 §18): udp and tcp listen on port, tls on tls_port."""
    tls_port: Port = 5061
    """Port for SIP over TLS (with tls in transports)."""
    tls_certificate: OptionalPath = None
    """PEM certificate (chain) for TLS, relative to sip.conf; checked at start-up; required with tls."""
    tls_key: OptionalPath = None
    """PEM private key of tls_certificate, relative to sip.conf; required with tls."""
    tcp_idle_seconds: Annotated[float, number(10, 86_400)] = 300.0
    """A TCP/TLS connection without a complete message or keep-alive this long is closed, unless a call runs on it."""
    max_connections: Annotated[int, whole(1, 100_000)] = 1000
    """TCP and TLS connections at once; more are refused."""
    tcp_keepalive_seconds: Annotated[float, number(0, 3600)] = 30.0
    """A phone registered over TCP/TLS gets a CRLF ping this often; unacknowledged as long again: unbound. 0: none."""

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

    # The modes are ivr.srtp.SRTP_MODES, not imported: no libsrtp is needed to read a file.
    srtp: Annotated[str, choice(("off", "optional", "required"), "an SRTP mode", "choose off, optional or required",
                                any_case=True)] = "optional"
    """SRTP (SDES keys, RFC 4568): off (SAVP offers get 488), optional (either), required (plain offers get 488)."""


@section_model(config=SECTION, slots=True)
class GreetingSection:
    dayparts: Annotated[tuple[Daypart, ...], text("a day-part list", _dayparts)] = DEFAULT_DAYPARTS
    """Greeting day-parts: 'HH:MM name word, …' from 00:00 on, or a preset: hotline or five_part."""


@section_model(config=SECTION, slots=True)
class SilenceConfig:
    wait_seconds: Annotated[float, number(1, 60)] = 5.0
    """Seconds of silence after each prompt of the silent-call routine before the next."""
    # [004] "严禁未做到重复三次就挂线": never fewer than three attempts.
    attempts: Annotated[int, whole(3, 10)] = 3
    """Prompts played to a silent caller before hanging up; never fewer than 3 ("严禁未做到重复三次就挂线")."""
    last_prompt: Annotated[str, choice(("silent_3", "silent_3_alt"), "a prompt id",
                                       "choose silent_3 or silent_3_alt")] = "silent_3"
    """The silent routine's last prompt: silent_3 ([004] wording) or silent_3_alt ([000]: 对不起您的电话无声…)."""
    vad_aggressiveness: Annotated[int, whole(0, 3)] = 2
    """Voice activity detection on the caller's audio: 0 (least) to 3 (most aggressive in rejecting non-speech)."""
    speech_ms: Annotated[int, whole(20, 2000)] = 200
    """Milliseconds of voiced audio that count as the caller speaking."""

    @property
    def routine(self) -> SilentRoutine:
        middle = ("silent_2",) * (self.attempts - 2)
        return SilentRoutine((GREETING, *middle, self.last_prompt), self.wait_seconds)


@section_model(config=SECTION, slots=True)
class HolidaysSection:
    file: Annotated[OptionalPath, AfterValidator(_readable_holidays)] = None
    """Ops' TOML file of holiday periods (holidays.toml.example), re-read within a second of a save; empty: none."""


@section_model(config=SECTION, slots=True)
class HoursSection:
    """`[hours]`, built into ivr.hours' HoursConfig; its numbers are checked against [general]'s by load_config."""

    timezone: TimeZone = ""
    """Time zone of the business hours; empty: [general] timezone."""
    schedules: Annotated[
        MappingProxyType[str, Schedule],
        Collects((DEFAULT_SCHEDULE,), pattern=rf"{'|'.join(SEAT_GROUPS)}|\d+", shown_as="a seat group or number"),
        each("business hours like 08:00-22:00", parse_schedule, MappingProxyType),
    ] = field(default_factory=lambda: MappingProxyType({}))
    """Hours per seat group, hotline number or default: 08:00-22:00, mon-fri 08:30-17:30, holiday closed, …."""

    def config(self, general_timezone: str) -> HoursConfig:
        return HoursConfig(self.timezone or general_timezone, self.schedules or HoursConfig().schedules)


def _prompt_texts(parsed: dict[str, str]) -> MappingProxyType[str, str]:
    return MappingProxyType({key.removeprefix("text."): value for key, value in parsed.items()})


@section_model(config=SECTION, slots=True)
class PromptConfig:
    voice: str = "sit/cmn"
    """espeak-ng voice of the TTS prompts (sit/cmn: Mandarin)."""
    rate: Annotated[int, whole(60, 400)] = 240
    """TTS speed in words per minute."""
    cache_dir: FilePath = Field(default=Path("var/prompts"), validate_default=True)
    """Where rendered TTS audio is cached (built at the first start, never committed)."""
    recorded_dir: FilePath = Field(default=Path("prompts/recorded"), validate_default=True)
    """Recorded WAVs named <prompt id>.wav here replace the TTS audio at the next start."""
    texts: Annotated[
        MappingProxyType[str, str],
        Collects(pattern=r"text\..+", shown_as="text.<prompt id>"),
        each("a prompt text", str, _prompt_texts),
    ] = field(default_factory=lambda: MappingProxyType({}))
    """text.<prompt id> = the text spoken instead of the catalogue's ({company} is filled in)."""


@section_model(config=SECTION, slots=True)
class DatabaseSection:
    url: Annotated[str, text("a database URL", nonempty), in_folder(_sqlite_file_in)] = Field(
        default=DEFAULT_DATABASE_URL, validate_default=True
    )
    """CRM database URL: sqlite:///file (relative to sip.conf) or postgresql+psycopg://user:pass@host/db."""
    outbox_dir: FilePath = Field(default=Path("var/outbox"), validate_default=True)
    """Journal of every CRM record before the database has it (replayed at start); one per IVR process."""
    writer: Annotated[str, choice(("process", "thread"), "a CRM writer", "choose process or thread")] = "thread"
    """Who applies the journal to the database: a writer process beside the IVR, or a thread inside it."""


Rate = Annotated[float, number(0.1, 100_000)]


@section_model(config=SECTION, slots=True)
class LimitsConfig:
    """Per-source request rates (`[limits]`); excess requests get 503 + Retry-After."""

    invite_per_second: Rate = 20.0
    """INVITEs a second from one source address (fractions allowed: 0.5 = one per 2 s)."""
    register_per_second: Rate = 10.0
    """REGISTERs a second from one source address."""
    options_per_second: Rate = 10.0
    """OPTIONS a second from one source address."""
    other_per_second: Rate = 50.0
    """Other requests (BYE, CANCEL, INFO, …; never ACK) a second from one source address."""
    excess: Annotated[str, choice(("drop", "reply"), "drop or reply", "choose drop or reply")] = "drop"
    """A request over its rate: drop (no answer) or reply (503 + Retry-After, at most 5 a second per source)."""
    max_invites_per_second: Rate = 250.0
    """Overload control, all sources together: INVITEs beyond this rate get 503 + Retry-After at once."""
    max_loop_lag_ms: Annotated[float, number(10, 10_000)] = 100.0
    """New calls get 503 while the event loop runs this many milliseconds behind."""
    auth_failures: Annotated[int, whole(1, 10_000)] = 10
    """Failed digest logins from one address within a minute that bar it from registering for auth_ban_seconds."""
    auth_ban_seconds: Annotated[float, number(0, 86_400)] = 600.0
    """How long an address with too many failed logins is barred from registering (0: never)."""
    trusted: Annotated[frozenset[str], text("a comma-separated list of IP addresses", _addresses)] = frozenset()
    """Addresses exempt from these limits, comma-separated: a SIP load balancer in front, a monitoring probe."""
    busy_load_percent: Annotated[float, number(1, 100)] = 90.0
    """From this load (0-100: calls/max_calls, INVITE budget, loop lag) OPTIONS get 503, so a balancer sends none."""


@section_model(config=SECTION, slots=True)
class MetricsSection:
    bind: IPAddress = "127.0.0.1"
    """Address of the Prometheus metrics endpoint (http://bind:port/metrics)."""
    port: Annotated[int, whole(0, 65535)] = 0
    """Port of the Prometheus metrics endpoint; 0: off."""


@section_model(config=SECTION, slots=True)
class ClusterConfig:
    """Several IVR workers behind a SIP load balancer (`[cluster]`), sharing agents through the CRM database."""

    shared_agents: YesNo = False
    """Workers behind a load balancer share the agents through the CRM (PostgreSQL); same agent sections on each."""
    worker: Annotated[str, _at_most(128)] = ""
    """This worker's name, unique and stable, stamped on its call rows (calls.ivr_worker); empty: host:port."""
    secret: str = ""
    """The same on every worker, 16+ characters: signs digest nonces, so any worker accepts a phone's answer."""
    worker_timeout_seconds: Annotated[float, number(3, 3600)] = 10.0
    """A worker that has not beaten in the database this long is presumed gone: the agents on its calls are freed."""


_WEBHOOK = WebhookConfig()


@section_model(config=SECTION, slots=True)
class WebhookSection:
    """`[webhook]`, built into crm_bridge's WebhookConfig (whose defaults these are)."""

    url: Annotated[str | None, text("an http(s) URL", _webhook_url)] = _WEBHOOK.url
    """Where each finished call is pushed (JSON, HMAC-SHA256 signed); empty: off."""
    secret: str = _WEBHOOK.secret
    """Shared secret of the push's signature, 16 characters or more (required with a url)."""
    max_attempts: Annotated[int, whole(1, 100)] = _WEBHOOK.max_attempts
    """Attempts before a push goes to the webhook_dead_letters table."""
    timeout_seconds: Annotated[float, number(0.5, 120)] = _WEBHOOK.timeout_seconds
    """Seconds to wait for the external CRM's answer; no 2xx in time counts as a failure."""
    backoff_seconds: Annotated[float, number(0.1, 3600)] = _WEBHOOK.backoff_seconds
    """First wait between attempts, doubling each time."""
    backoff_max_seconds: Annotated[float, number(1, 86_400)] = _WEBHOOK.backoff_max_seconds
    """The longest wait between attempts."""

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
    """Log level: debug, info, warning or error."""
    format: Annotated[str, choice(("console", "json"), "a log format", "choose console or json")] = "console"
    """Log format: console (key=value lines) or json (one JSON object per line)."""


_TIERS = TierThresholds()
Amount = Annotated[float, number(0, 1e15)]


@section_model(config=SECTION, slots=True)
class TiersSection:
    """`[tiers]`: crm_bridge's TierThresholds (whose defaults these are), and the greeting by name."""

    senior_assets: Amount = _TIERS.senior_assets
    """Assets (市值, yuan) from which a customer is senior (高端)."""
    senior_volume: Amount = _TIERS.senior_volume
    """Trading volume (交易量, yuan) from which a customer is senior."""
    middle_assets: Amount = _TIERS.middle_assets
    """Assets (yuan) from which a customer is middle (中端); below both middle thresholds: junior (低端)."""
    middle_volume: Amount = _TIERS.middle_volume
    """Trading volume (yuan) from which a customer is middle."""
    greet_senior_by_name: YesNo = False
    """Greet senior customers by surname and title ("张先生,您好!…") when the CRM knows their name and gender."""

    def thresholds(self) -> TierThresholds:
        return TierThresholds(self.senior_assets, self.senior_volume, self.middle_assets, self.middle_volume)


_MENU = MenuConfig()


@section_model(config=SECTION, slots=True)
class MenuSection:
    """`[menu]`, built into ivr.service's MenuConfig (whose defaults these are)."""

    enabled: YesNo = _MENU.enabled
    """Offer the service menu once the caller speaks or presses a key; no: straight to the queue, default service."""
    timeout_seconds: Annotated[float, number(1, 60)] = _MENU.timeout_seconds
    """Seconds to wait for a key after the menu prompt; one reprompt, then the default."""
    default: Annotated[str, choice(SERVICES, "a service")] = _MENU.default_service
    """Service used when the caller chooses nothing valid."""
    senior_only: Annotated[frozenset[str] | None, text("a list of services", _comma_set)] = None
    """Services only senior customers may choose (comma-separated); default personalised."""
    digits: Annotated[
        MappingProxyType[str, str], Collects(DIGITS), each("a service", _service_or_none, MappingProxyType)
    ] = field(default_factory=lambda: MappingProxyType({}))
    """digit = service, or none to remove the digit; default 1 consulting … 5 personalised, as in sip.conf.example."""

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
    """Seconds an agent's phone rings before the next agent is tried."""
    wrap_up_seconds: Annotated[float, number(0, 600)] = 10.0
    """Seconds after a call before the agent gets the next one."""
    position_every_seconds: Annotated[float, number(5, 600)] = 30.0
    """How often waiting callers hear their position ("您前面还有N位客户…")."""
    overflow_after_seconds: Annotated[float, number(0, 3600)] = 60.0
    """After this many seconds a waiting caller may also be offered to the overflow group; 0: never."""
    overflow: Annotated[MappingProxyType[str, str], text("an overflow list like senior>middle", _overflow)] = field(
        default_factory=lambda: MappingProxyType({"senior": "middle", "middle": "junior"})
    )
    """Overflow groups, group>group comma-separated (never upward)."""
    complaints_overflow: YesNo = False
    """Whether complaints overflow too."""
    complaint_group: Annotated[str | None, text("a seat group", _complaint_group)] = None
    """Group whose specialists take complaints and transfers to sip:complaint@; empty: caller's group, no transfer."""
    # Never dead air: music between announcements, the expected wait, a callback instead of a long wait.
    music: Annotated[OptionalPath, AfterValidator(_readable_music)] = None
    """Music on hold: a WAV file or folder of WAVs (in name order); empty: the IVR's own generated chime piece."""
    music_volume: Annotated[float, number(-40, -10)] = -24.0  # prompts.music.DEFAULT_LEVEL_DBFS
    """Level of the music on hold, RMS in dBFS."""
    announce_wait: YesNo = True
    """Tell waiting callers the expected wait after their position ("预计等待时间约两分钟")."""
    mean_handle_seconds: Annotated[float, number(10, 3600)] = 180.0
    """Expected handle time (talk + wrap-up) until the group has ended calls; then the recent calls' mean."""
    max_wait_seconds: Annotated[float, number(0, 7200)] = 300.0
    """Expected or actual wait from which a callback is offered (also when nobody is logged in); 0: to everyone."""
    callback_key: Annotated[str, text("a key", _callback_key)] = "#"
    """The key that asks for a callback in the queue: 0-9, * or #."""
    transfer_codes: Annotated[
        MappingProxyType[str, str], text("short codes like 9001>senior, 9009>complaint", _transfer_codes)
    ] = field(default_factory=lambda: MappingProxyType({}))
    """Short codes agents may transfer to, code>target with targets senior, middle, junior or complaint; empty: none."""


@section_model(config=SECTION, slots=True)
class CallbacksConfig:
    """`[callbacks]`: attempts per request and the first retry delay (doubling after each)."""

    max_attempts: Annotated[int, whole(1, 10)] = 3
    """Attempts to call a customer back before the request closes as callback_no_answer."""
    retry_seconds: Annotated[float, number(30, 86_400)] = 300.0
    """Seconds before the first retry, doubled after each unanswered attempt."""
    gateway: Annotated[tuple[str, int] | None, text("host:port of the SIP gateway", _gateway)] = None
    """host:port of the SIP trunk or gateway for calling back; empty: requests are stored, never dialled."""


SURVEY_LABELS = MappingProxyType({"1": "satisfied", "2": "average", "3": "dissatisfied"})


def _survey_labels(parsed: dict[str, str]) -> MappingProxyType[str, str]:
    return MappingProxyType({**SURVEY_LABELS, **parsed})


@section_model(config=SECTION, slots=True)
class SurveyConfig:
    timeout_seconds: Annotated[float, number(2, 60)] = 8.0
    """Seconds to wait for the caller's rating key; one reprompt."""
    # digit = label stored with the score (over the default labels)
    labels: Annotated[
        MappingProxyType[str, str], Collects(DIGITS), each("a label", nonempty, _survey_labels)
    ] = field(default_factory=lambda: SURVEY_LABELS)
    """digit = label stored with the score; default 1 satisfied, 2 average, 3 dissatisfied."""
    questionnaires: Annotated[OptionalPath, AfterValidator(_readable_file)] = None
    """The TOML file of post-call questionnaires (see questionnaires.toml.example); empty: the single question."""

    def questionnaire_set(self) -> QuestionnaireSet:
        """The questionnaires file read and checked (ConfigError naming its line), or the shipped default."""
        if self.questionnaires is not None:
            return load_questionnaires(self.questionnaires)
        default = default_questionnaires()
        # an old sip.conf's `1 = satisfied` digit labels: the values stored for the single question's keys
        return default if self.labels == SURVEY_LABELS else default.relabelled(self.labels)


@section_model(config=SECTION, slots=True)
class AgentConfig:
    """An agent peer: `[801]` with `type = agent`."""

    number: Annotated[str, GIVEN]  # the section's name
    """The agent's seat number: the section's name, e.g. [801] (callers hear "801号客服")."""
    seat_group: Annotated[
        str,
        choice(SEAT_GROUPS, "a seat group"),
        Field(description=f"every agent belongs to one of {', '.join(SEAT_GROUPS)}"),
    ]
    """The agent's seat group: senior (高级坐席组), middle (中级坐席组) or junior (初级坐席组)."""
    secret: str = ""
    """Digest password the softphone registers with; also the agent's first desk password."""
    host: Annotated[tuple[str, int] | None, text("a host", _agent_host)] = None
    """dynamic: the softphone REGISTERs; or IP:port of a phone that is always logged in."""
    name: str = ""
    """The agent's name, shown in the CRM, the logs and the screen-pop."""
    digest: Annotated[str, choice(DIGEST_POLICIES, "a policy")] = "strict"
    """Phone's digest: strict (RFC 7616), md5 (MD5 only: baresip 1.0.0), legacy (RFC 2069 too: pyVoIP 1.6.8)."""
    phone: Annotated[str, choice(PHONE_KINDS, "a phone")] = "sip"
    """sip: a SIP phone; browser: the desk page is the phone ([browser_phone]); both: either may register."""
    auto_answer: YesNo = False
    """The desk's browser phone answers an offered call by itself (no 接听 click)."""
    srtp: Annotated[str, choice(("off", "optional", "required"), "an SRTP mode", "choose off, optional or required",
                                any_case=True)] = "off"
    """The agent leg's media: off (plain RTP/AVP), optional (offer RTP/SAVP with SDES keys, take plain), required."""

    @property
    def browser_phone(self) -> bool:
        return self.phone in ("browser", "both")

    @property
    def digest_policy(self) -> str:
        """The registrar's policy: JsSIP answers MD5 challenges only, so a browser seat is never offered SHA-256."""
        return "md5" if self.browser_phone and self.digest == "strict" else self.digest

    @model_validator(mode="after")
    def _registering_phone_authenticates(self) -> Self:
        if self.host is None and not self.secret:
            raise SettingError("secret", "missing; a softphone that registers (host = dynamic) must authenticate")
        return self


def _clock_time(raw: str) -> clock_time:
    try:
        return clock_time.fromisoformat(raw.strip())
    except ValueError:
        raise ValueError("write a time of day like 17:00") from None


def _calling_hours(raw: str) -> tuple[clock_time, clock_time]:
    start, sep, end = raw.partition("-")
    if not sep:
        raise ValueError("write start-end like 09:00-20:00")
    hours = _clock_time(start), _clock_time(end)
    if hours[0] >= hours[1]:
        raise ValueError("the start must be before the end, within one day")
    return hours


def _caller_id(raw: str) -> str:
    if raw and not raw.isdigit():
        raise ValueError("digits only, or empty for the first of [general] numbers")
    return raw


def _supervisors(raw: str) -> frozenset[str]:
    found = _comma_set(raw)
    for agent in found:
        if not agent.isdigit():
            raise ValueError(f"{agent!r} is not an agent number")
    return found


def _prefix(raw: str) -> str:
    if not raw or len(raw) > 8 or not all(ch in "0123456789*#" for ch in raw):
        raise ValueError("1-8 keypad characters, e.g. *222")
    return raw


def _origins(raw: str) -> frozenset[str]:
    found = frozenset(o.rstrip("/").lower() for o in _comma_set(raw))
    for origin in found:
        scheme, _, host = origin.partition("://")
        if scheme not in ("http", "https") or not host or "/" in host:
            raise ValueError(f"an origin is scheme://host[:port] such as https://desk.example.com, got {origin!r}")
    return found


def _ws_path(raw: str) -> str:
    if not raw.startswith("/") or any(c in raw for c in " ?#"):
        raise ValueError("a URL path such as /sip")
    return raw


@section_model(config=SECTION, slots=True)
class FollowupConfig:
    """`[followup]`: calls the IVR places by itself to customers (回访), see crm_bridge.followups."""

    enabled: YesNo = False
    """Place follow-up calls at all (no: nothing is scanned, scheduled or dialled)."""
    on_resolved: YesNo = True
    """Follow up a complaint ticket once it reaches 已告知客户 (satisfied? close it : forward again)."""
    on_wrap_up: YesNo = True
    """Follow up a call the agent gave the wrap-up code `wrap_up_code` at the desk."""
    on_daily: YesNo = True
    """A short status call for an open complaint nobody has given feedback on that day ([002])."""
    on_survey: YesNo = True
    """Follow up a call whose questionnaire answer asked for it (an answer with `followup = true`)."""
    wrap_up_code: Annotated[str, text("a wrap-up code", nonempty)] = "需回访"
    """The desk's wrap-up code that asks for a follow-up call."""
    delay_seconds: Annotated[float, number(0, 7 * 86_400)] = 1800.0
    """Seconds from the trigger (ticket told its result, wrap-up saved) to the first attempt."""
    daily_at: Annotated[clock_time, text("a time of day", _clock_time)] = clock_time(17, 0)
    """Local time after which an open complaint without feedback that day gets its status call."""
    calling_hours: Annotated[tuple[clock_time, clock_time], text("hours", _calling_hours)] = (
        clock_time(9, 0), clock_time(20, 0))
    """When customers may be called, in [general] timezone: start-end like 09:00-20:00."""
    call_on_holidays: YesNo = False
    """Call on public holidays too (the greeting's holiday calendar, 调休 rest days included)."""
    call_on_weekends: YesNo = False
    """Call on ordinary Saturdays and Sundays too (a 调休 make-up working day is always a calling day)."""
    min_gap_seconds: Annotated[float, number(0, 7 * 86_400)] = 7200.0
    """Seconds at least between two calls to the same customer."""
    daily_cap: Annotated[int, whole(1, 20)] = 3
    """Calls at most a day to the same customer."""
    max_attempts: Annotated[int, whole(1, 10)] = 3
    """Attempts of one follow-up before it is unreachable and its ticket is flagged for an agent."""
    retry_seconds: Annotated[float, number(1, 86_400)] = 1800.0
    """Seconds before retrying a follow-up not answered or busy; doubled after each attempt."""
    ring_seconds: Annotated[float, number(5, 120)] = 30.0
    """Seconds the customer's phone rings before the attempt counts as not answered."""
    answer_seconds: Annotated[float, number(2, 60)] = 8.0
    """Seconds to wait for a key after the question; asked once more, then goodbye."""
    max_concurrent: Annotated[int, whole(1, 1000)] = 10
    """Follow-up calls up at once, per IVR worker."""
    calls_per_second: Annotated[float, number(0.1, 100)] = 1.0
    """New follow-up calls a second, per IVR worker."""
    queue_threshold: Annotated[int, whole(0, 10_000)] = 5
    """No new follow-up while more inbound callers than this wait for an agent (inbound first)."""
    scan_seconds: Annotated[float, number(1, 3600)] = 10.0
    """How often each worker looks for new triggers and due follow-ups in the CRM."""
    agent_transfer: YesNo = True
    """Pressing 0 puts the customer through to the ticket's agent (else their seat group); no: an agent calls back."""
    gateway: Annotated[tuple[str, int] | None, text("host:port of the SIP gateway", _gateway)] = None
    """The SIP trunk or gateway to dial through, host:port; empty: [callbacks] gateway."""
    caller_id: Annotated[str, text("a number", _caller_id)] = ""
    """The number the customer sees; empty: the hotline's first number of [general] numbers."""


@section_model(config=SECTION, slots=True)
class MonitoringConfig:
    """`[monitoring]`: supervisors listening to, coaching (whisper) or joining (barge) agents' calls."""

    supervisors: Annotated[frozenset[str], text("a comma-separated list of agent numbers", _supervisors)] = frozenset()
    """Agent numbers (registered accounts) allowed to monitor; empty: nobody may."""
    listen_prefix: Annotated[str, text("a feature-code prefix", _prefix)] = "*222"
    """Dialled before an agent's number (*222801): listen to that agent's call, heard by nobody."""
    whisper_prefix: Annotated[str, text("a feature-code prefix", _prefix)] = "*223"
    """Dialled before an agent's number: speak to the agent alone (coaching); the caller does not hear."""
    barge_prefix: Annotated[str, text("a feature-code prefix", _prefix)] = "*224"
    """Dialled before an agent's number: join the call, caller and agent both hear the supervisor."""
    beep: YesNo = False
    """Play the agent a short beep when a supervisor starts monitoring (the caller never hears it)."""

    @model_validator(mode="after")
    def _distinct_prefixes(self) -> Self:
        prefixes = (self.listen_prefix, self.whisper_prefix, self.barge_prefix)
        for name, prefix in zip(("listen_prefix", "whisper_prefix", "barge_prefix"), prefixes, strict=True):
            if any(other != prefix and other.startswith(prefix) for other in prefixes) or prefixes.count(prefix) > 1:
                raise SettingError(name, "the three prefixes must differ and none may begin another")
        return self


RECORDING_FORMATS = ("wav-pcm16", "wav-alaw", "wav-ulaw", "flac")  # ivr.recording writes each


def _seat_groups(raw: str) -> frozenset[str]:
    found = _comma_set(raw)
    if found - set(SEAT_GROUPS):
        raise ValueError(f"choose among {', '.join(SEAT_GROUPS)} (comma-separated), or leave it empty for all")
    return found


def _services(raw: str) -> frozenset[str]:
    found = _comma_set(raw)
    if found - set(SERVICES):
        raise ValueError(f"choose among {', '.join(SERVICES)} (comma-separated), or leave it empty for all")
    return found


@section_model(config=SECTION, slots=True)
class RecordingConfig:
    """`[recording]`: bridged calls recorded in stereo (caller left, agent right) by ivr.recording."""

    enabled: YesNo = True
    """Record bridged calls (the conversation with the agent only, never prompts or hold music)."""
    seat_groups: Annotated[frozenset[str], text("a list of seat groups", _seat_groups)] = frozenset()
    """Record only calls answered by these seat groups (comma-separated); empty: every group."""
    services: Annotated[frozenset[str], text("a list of services", _services)] = frozenset()
    """Record only calls for these services (comma-separated, e.g. complaint); empty: every service."""
    directory: FilePath = Field(default=Path("var/recordings"), validate_default=True)
    """Where the files go, as YYYY/MM/DD/<time>-<hash of the Call-ID>-<n>.<ext> (UTC dates)."""
    format: Annotated[str, choice(RECORDING_FORMATS, "a recording format")] = "wav-pcm16"
    """wav-pcm16 (32 kB/s), wav-alaw or wav-ulaw (G.711, 16 kB/s), or flac (lossless, smaller)."""
    retention_days: Annotated[int, whole(1, 3650)] = 90
    """Days a recording is kept before `python -m crm_bridge retention` deletes it (open complaints: kept)."""
    announce: YesNo = True
    """Tell the caller "为了提高服务质量,您的通话可能会被录音" before a recorded call's agent is put through."""
    pause_code: Annotated[str, text("a feature code like *48", _feature_code)] = "*48"
    """Keys the agent presses on the phone during the call to pause the recording, and again to resume."""

    def rule(self) -> RecordingRule:
        return RecordingRule(self.enabled, self.seat_groups, self.services, self.announce)


def _feature_code(raw: str) -> str:
    if not 2 <= len(raw) <= 6 or any(ch not in "0123456789*#" for ch in raw):
        raise ValueError("2 to 6 keys of 0-9, * and #")
    return raw


@section_model(config=SECTION, slots=True)
class WebSocketConfig:
    """SIP over WebSocket (RFC 7118, `[websocket]`): agents' browsers (JsSIP) register and are rung over it."""

    enabled: YesNo = False
    """Listen for SIP over WebSocket (WS, or WSS with tls = yes)."""
    bind: IPAddress = "127.0.0.1"
    """Address of the WebSocket listener; loopback unless a browser elsewhere must reach it (then use tls)."""
    port: Port = 8088
    """TCP port of the WebSocket listener."""
    path: Annotated[str, text("a URL path", _ws_path)] = "/sip"
    """URL path browsers connect to (wss://host:port/sip); any other path is refused 404."""
    tls: YesNo = False
    """WSS: TLS with tls_certificate/tls_key here, else [general]'s; browsers need it off loopback."""
    tls_certificate: OptionalPath = None
    """PEM certificate (chain) for WSS, relative to sip.conf; empty: [general] tls_certificate."""
    tls_key: OptionalPath = None
    """PEM private key of tls_certificate, relative to sip.conf; empty: [general] tls_key."""
    origins: Annotated[frozenset[str], text("a comma-separated list of origins", _origins)] = frozenset()
    """Pages allowed to connect (Origin header), e.g. https://desk.example.com; others get 403 and count to a ban."""
    ping_seconds: Annotated[float, number(5, 300)] = 20.0
    """A WebSocket ping this often; no pong within as long again closes the connection and unbinds its agent."""

    def pem_files(self, general: GeneralConfig) -> tuple[Path, Path] | None:
        """The certificate and key WSS uses (its own, else [general]'s); None for plain WS."""
        if not self.tls:
            return None
        certificate, key = self.tls_certificate or general.tls_certificate, self.tls_key or general.tls_key
        assert certificate is not None and key is not None  # checked by load_config
        return certificate, key


def _ws_url(raw: str) -> str:
    if raw and not raw.startswith(("ws://", "wss://")):
        raise ValueError("start with wss:// (or ws:// on loopback), e.g. wss://ivr.example.com:8089/sip")
    return raw


def _token_secret(raw: str) -> str:
    if raw and len(raw) < 32:
        raise ValueError("needs 32 characters or more (it signs the browser phones' credentials)")
    return raw


@section_model(config=SECTION, slots=True)
class BrowserPhoneConfig:
    """`[browser_phone]`: the desk page as the agent's phone (JsSIP over SIP WebSocket), read by IVR and desk."""

    ws_url: Annotated[str, text("a ws:// or wss:// URL", _ws_url)] = ""
    """The SIP WebSocket URL browsers register to (wss:// unless on loopback), as the browser reaches it."""
    token_secret: Annotated[str, AfterValidator(_token_secret)] = ""
    """32+ random characters shared by desk and IVR: sign the short-lived credentials the desk hands the page."""
    credential_seconds: Annotated[int, whole(300, 86_400)] = 3600
    """How long a credential handed to the page works; the page fetches a fresh one before then."""


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
    "followup": FollowupConfig,
    "monitoring": MonitoringConfig,
    "recording": RecordingConfig,
    "websocket": WebSocketConfig,
    "browser_phone": BrowserPhoneConfig,
}
_KNOWN: dict[str, set[str]] = {name: known_keys(model) for name, model in SECTIONS.items()}
# Sections of the same file read by other programs, which validate them (`python -m desk`: desk/config.py).
_OTHER_READERS = {"desk", "quality"}  # read by python -m desk
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
    questionnaires: QuestionnaireSet = field(default_factory=default_questionnaires)
    followup: FollowupConfig = field(default_factory=FollowupConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    crm_writer: str = "thread"  # [database] writer
    browser_phone: BrowserPhoneConfig = field(default_factory=BrowserPhoneConfig)

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
            questionnaires=self.questionnaires,
            position_every_seconds=self.queues.position_every_seconds,
            recording=self.recording.rule(),
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
    survey = conf.section("survey", SurveyConfig)
    questionnaires = survey.questionnaire_set()
    monitoring = conf.section("monitoring", MonitoringConfig)
    _check_monitoring(conf, monitoring, agents, general)
    browser_phone = conf.section("browser_phone", BrowserPhoneConfig)
    _check_browser_phone(conf, browser_phone, agents)
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
        survey=survey,
        agents=agents,
        questionnaires=questionnaires,
        followup=conf.section("followup", FollowupConfig),
        monitoring=monitoring,
        recording=conf.section("recording", RecordingConfig),
        websocket=_websocket(conf, general),
        crm_writer=database.writer,
        browser_phone=browser_phone,
    )


def _websocket(conf: SipConf, general: GeneralConfig) -> WebSocketConfig:
    ws = conf.section("websocket", WebSocketConfig)
    if not (ws.enabled and ws.tls):
        return ws
    certificate, key = ws.tls_certificate or general.tls_certificate, ws.tls_key or general.tls_key
    for name, path in (("tls_certificate", certificate), ("tls_key", key)):
        if path is None or not path.is_file():
            raise conf.error("websocket", name, "required with tls = yes (a PEM file; or set it in [general])")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(certificate), str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise conf.error("websocket", "tls_certificate",
                         f"{certificate} and {key} are not a PEM certificate and its key ({exc})") from None
    return ws


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


def _check_monitoring(conf: SipConf, monitoring: MonitoringConfig, agents: tuple[AgentConfig, ...],
                      general: GeneralConfig) -> None:
    for key in ("listen_prefix", "whisper_prefix", "barge_prefix"):
        prefix = getattr(monitoring, key)
        # a code is matched by its prefix before the hotline's numbers and *46/*47: it must not take them
        taken = sorted(n for n in (*general.numbers, "*46", "*47") if n.startswith(prefix))
        if taken:
            raise conf.error("monitoring", key, f"{prefix} would take calls to {', '.join(taken)}")
    unknown = sorted(monitoring.supervisors - {a.number for a in agents})
    if unknown:
        raise conf.error("monitoring", "supervisors",
                         f"{', '.join(unknown)}: no agent section; a supervisor's phone is an agent peer "
                         "([880] type = agent)")


def _check_browser_phone(conf: SipConf, browser: BrowserPhoneConfig, agents: tuple[AgentConfig, ...]) -> None:
    """A browser seat needs the URL its page registers to and the secret its credentials are derived with."""
    seat = next((a for a in agents if a.browser_phone), None)
    if seat is None:
        return
    for key in ("ws_url", "token_secret"):
        if not getattr(browser, key):
            raise conf.error("browser_phone", key, f"missing; agent {seat.number} has phone = {seat.phone}")
