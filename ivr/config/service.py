"""The sections that run the service: [general] (SIP, RTP, TLS, time zone), media, the SIP WebSocket,
the database, limits, metrics, the cluster, the webhook and the log."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Self
from zoneinfo import ZoneInfo

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as section_model

from crm_bridge.settings import WebhookConfig
from ivr.config import keys
from ivr.config.keys import CODECS, DEFAULT_DATABASE_URL
from ivr.sipconf import (
    SECTION,
    BrowserPort,
    FilePath,
    IPAddress,
    OptionalPath,
    Port,
    SettingError,
    TimeZone,
    YesNo,
    choice,
    in_folder,
    nonempty,
    number,
    text,
    whole,
)


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
    codecs: Annotated[tuple[str, ...], text("a codec list", keys.codecs)] = ("pcmu", "pcma")
    """Codecs offered, preferred first (pcmu: G.711 u-law, pcma: A-law); the caller's order wins, others get 488."""
    # [002] "在铃响三声之内": the third ring of the 1 s on / 4 s off cadence ends at 11 s.
    ring_seconds: Annotated[float, number(0, 11)] = 6.0
    """Seconds of ringing before answering: 6 ends the second ring (1 s on, 4 s off), 11 the third."""
    company: Annotated[str, text("a company name", nonempty)] = "XX"
    """Company name spoken in the greetings ("XX客服中心")."""
    timezone: TimeZone = "Asia/Shanghai"
    """Time zone (IANA name) of the time-of-day greeting, the holiday dates and the desk's and report's days."""
    numbers: Annotated[frozenset[str], text("a comma-separated list of numbers", keys.numbers)] = frozenset({"95000"})
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
    transports: Annotated[frozenset[str], text("a list of udp, tcp, tls", keys.transports)] = frozenset({"udp", "tcp"})
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
    """Media (`[media]`): whether calls may, or must, use SRTP with SDES keys (RFC 4568), and how long an
    agent's phone in talk may send nothing."""

    # The modes are ivr.srtp.SRTP_MODES, not imported: no libsrtp is needed to read a file.
    srtp: Annotated[str, choice(("off", "optional", "required"), "an SRTP mode", "choose off, optional or required",
                                any_case=True)] = "optional"
    """SRTP (SDES keys, RFC 4568): off (SAVP offers get 488), optional (either), required (plain offers get 488)."""
    agent_media_timeout: Annotated[float, number(0, 3600)] = 60.0
    """Seconds an agent's phone in talk may send no RTP (not on hold) before it is taken as gone; 0: never."""


@section_model(config=SECTION, slots=True)
class DatabaseSection:
    url: Annotated[str, text("a database URL", nonempty), in_folder(keys.sqlite_file_in)] = Field(
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
    trusted: Annotated[frozenset[str], text("a comma-separated list of IP addresses", keys.addresses)] = frozenset()
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
    worker: Annotated[str, keys.at_most(128)] = ""
    """This worker's name, unique and stable, stamped on its call rows (calls.ivr_worker); empty: host:port."""
    secret: str = ""
    """The same on every worker, 16+ characters: signs digest nonces, so any worker accepts a phone's answer."""
    worker_timeout_seconds: Annotated[float, number(3, 3600)] = 10.0
    """A worker that has not beaten in the database this long is presumed gone: the agents on its calls are freed."""


_WEBHOOK = WebhookConfig()


@section_model(config=SECTION, slots=True)
class WebhookSection:
    """`[webhook]`, built into crm_bridge's WebhookConfig (whose defaults these are)."""

    url: Annotated[str | None, text("an http(s) URL", keys.webhook_url)] = _WEBHOOK.url
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


@section_model(config=SECTION, slots=True)
class WebSocketConfig:
    """SIP over WebSocket (RFC 7118, `[websocket]`): agents' browsers (JsSIP) register and are rung over it."""

    enabled: YesNo = False
    """Listen for SIP over WebSocket (WS, or WSS with tls = yes)."""
    bind: IPAddress = "127.0.0.1"
    """Address of the WebSocket listener; loopback unless a browser elsewhere must reach it (then use tls)."""
    port: BrowserPort = 8088
    """TCP port of the WebSocket listener."""
    path: Annotated[str, text("a URL path", keys.ws_path)] = "/sip"
    """URL path browsers connect to (wss://host:port/sip); any other path is refused 404."""
    tls: YesNo = False
    """WSS: TLS with tls_certificate/tls_key here, else [general]'s; browsers need it off loopback."""
    tls_certificate: OptionalPath = None
    """PEM certificate (chain) for WSS, relative to sip.conf; empty: [general] tls_certificate."""
    tls_key: OptionalPath = None
    """PEM private key of tls_certificate, relative to sip.conf; empty: [general] tls_key."""
    origins: Annotated[frozenset[str], text("a comma-separated list of origins", keys.origins)] = frozenset()
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
