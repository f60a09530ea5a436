"""The desk's settings: `[desk]` of the IVR's sip.conf, plus what it shares with the IVR.

Read from the same file as the IVR (`python -m desk --config sip.conf`):
`[desk]` itself, and of the IVR's settings only what the desk needs —
`[database] url`, `[general] timezone` and `status_file`, `[tiers]`,
`[cluster] shared_agents` and the agent sections (seat number, group, name,
and the SIP secret that seeds an agent's first desk password). The IVR
validates the rest. Errors name file, line, key and reason, as the IVR's do
(the same `ConfigError` and line index).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from zoneinfo import ZoneInfo

from crm_bridge.customers import TierThresholds
from ivr.config import (
    DEFAULT_DATABASE_URL,
    _bool,
    _Reader,
    _zone,
    read_sip_conf,
)
from ivr.screenpop import DEFAULT_TEMPLATE, TemplateError, check_template
from ivr.service import SEAT_GROUPS

DESK_KEYS = {
    "bind",
    "port",
    "secret_key",
    "supervisors",
    "service_level_seconds",
    "departments",
    "display_name",
    "wrap_up_codes",
    "public_url",
    "cookie_secure",
    "login_attempts_per_minute",
    "poll_ms",
}
NO_NAMES: tuple[str, ...] = ()
DEFAULT_DEPARTMENTS = ("客服部", "技术部", "财务部", "售后服务部", "合规部")
DEFAULT_WRAP_UP_CODES = ("已解决", "需回访", "转投诉", "咨询", "无效来电", "其他")


@dataclass(frozen=True, slots=True)
class DeskAgent:
    number: str
    seat_group: str
    name: str
    secret: str  # the SIP digest password: seeds the first desk password, never shown


@dataclass(frozen=True, slots=True)
class DeskConfig:
    path: Path
    database_url: str = DEFAULT_DATABASE_URL
    timezone: str = "Asia/Shanghai"
    status_file: Path | None = None
    shared_agents: bool = False
    tiers: TierThresholds = TierThresholds()  # noqa: RUF009 - frozen, shared safely
    agents: tuple[DeskAgent, ...] = ()
    bind: str = "127.0.0.1"  # loopback by default: put a TLS reverse proxy in front for other machines
    port: int = 8080
    secret_key: str = ""  # empty: a random key per start (everyone logs in again after a restart)
    supervisors: frozenset[str] = frozenset()  # empty: every supervisor account may log in
    service_level_seconds: float = 20.0
    departments: tuple[str, ...] = DEFAULT_DEPARTMENTS
    display_name: str = DEFAULT_TEMPLATE
    wrap_up_codes: tuple[str, ...] = DEFAULT_WRAP_UP_CODES
    public_url: str = ""  # how phones and browsers reach the desk (Call-Info); default http://bind:port
    cookie_secure: bool = True
    login_attempts_per_minute: int = 5
    poll_ms: int = 250  # the screen-pop polls the CRM this often (≤ 300 ms keeps the pop within 1 s)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.bind}:{self.port}"

    def agent(self, number: str) -> DeskAgent | None:
        return next((a for a in self.agents if a.number == number), None)


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    if not names:
        raise ValueError("empty")
    if any(len(n) > 64 for n in names):
        raise ValueError("each entry at most 64 characters")
    return names


def _address(raw: str) -> str:
    return str(ipaddress.ip_address(raw))


def _template(raw: str) -> str:
    try:
        return check_template(raw)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None


def load_desk_config(path: Path) -> DeskConfig:
    """Read the desk's settings from sip.conf; raise ConfigError naming file:line, key and reason."""
    path = Path(path)
    parser, lines = read_sip_conf(path)
    r = _Reader(path, parser, lines)
    if parser.has_section("desk"):
        for key in parser.options("desk"):
            if key not in DESK_KEYS:
                raise r.error("desk", key, f"unknown key; known keys are {', '.join(sorted(DESK_KEYS))}")

    agents = []
    for section in parser.sections():
        if parser.get(section, "type", fallback="") == "agent" and section.isdigit():
            group = parser.get(section, "seat_group", fallback="")
            if group not in SEAT_GROUPS:
                raise r.error(section, "seat_group", f"choose {', '.join(SEAT_GROUPS)}")
            agents.append(
                DeskAgent(
                    section,
                    group,
                    parser.get(section, "name", fallback="").strip(),
                    parser.get(section, "secret", fallback="").strip(),
                )
            )

    url = r.get("database", "url", DEFAULT_DATABASE_URL, lambda raw: raw or _raise("empty"), "a database URL")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        url = "sqlite:///" + str((path.parent / url.removeprefix("sqlite:///")).resolve())
    d = DeskConfig(path)
    secret_key = r.get("desk", "secret_key", "", str, "a secret")
    if secret_key and len(secret_key) < 32:
        raise r.error("desk", "secret_key", "needs 32 characters or more (it signs the session cookies)")
    public_url = r.get(
        "desk",
        "public_url",
        "",
        lambda v: v if v.startswith(("http://", "https://")) or not v else _raise("start with http:// or https://"),
        "a URL",
    )
    return DeskConfig(
        path=path,
        database_url=url,
        timezone=r.get("general", "timezone", d.timezone, _zone, "a time zone such as Asia/Shanghai"),
        status_file=r.file_path("general", "status_file", path.parent / "var" / "ivr-status.json"),
        shared_agents=r.get("cluster", "shared_agents", False, _bool, "yes or no"),
        tiers=TierThresholds(
            **{
                key: r.number("tiers", key, getattr(TierThresholds(), key), 0, 1e15)
                for key in ("senior_assets", "senior_volume", "middle_assets", "middle_volume")
            }
        ),
        agents=tuple(agents),
        bind=r.get("desk", "bind", d.bind, _address, "an IP address"),
        port=int(r.number("desk", "port", d.port, 1, 65535, int)),
        secret_key=secret_key,
        supervisors=frozenset(r.get("desk", "supervisors", NO_NAMES, _names, "a comma-separated list of names")),
        service_level_seconds=r.number("desk", "service_level_seconds", d.service_level_seconds, 1, 600),
        departments=r.get("desk", "departments", d.departments, _names, "a comma-separated list of departments"),
        display_name=r.get("desk", "display_name", d.display_name, _template, "a display-name template"),
        wrap_up_codes=r.get("desk", "wrap_up_codes", d.wrap_up_codes, _names, "a comma-separated list of codes"),
        public_url=public_url.rstrip("/"),
        cookie_secure=r.get("desk", "cookie_secure", d.cookie_secure, _bool, "yes or no"),
        login_attempts_per_minute=int(
            r.number("desk", "login_attempts_per_minute", d.login_attempts_per_minute, 1, 1000, int)
        ),
        poll_ms=int(r.number("desk", "poll_ms", d.poll_ms, 50, 300, int)),
    )


def _raise(reason: str) -> NoReturn:
    raise ValueError(reason)
