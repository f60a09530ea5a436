"""Customers and their tiers ([001] 分层管理分级服务).

A customer's tier is set explicitly in the CRM, or derived from assets (市值)
and trading volume (交易量) with configurable thresholds: meeting either
senior threshold makes a 高端 (senior) customer, either middle threshold a
中端 (middle) one, anything else 低端 (junior). A caller the CRM does not
know is treated as junior.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, bindparam, select
from sqlalchemy.orm import Session

from crm_bridge.models import TIERS, Customer

UNKNOWN_TIER = "junior"


@dataclass(frozen=True, slots=True)
class TierThresholds:
    senior_assets: float = 5_000_000
    senior_volume: float = 20_000_000
    middle_assets: float = 500_000
    middle_volume: float = 2_000_000


def tier_of(assets: float, volume: float, explicit: str | None, thresholds: TierThresholds) -> str:
    if explicit:
        return explicit
    if assets >= thresholds.senior_assets or volume >= thresholds.senior_volume:
        return "senior"
    if assets >= thresholds.middle_assets or volume >= thresholds.middle_volume:
        return "middle"
    return "junior"


@dataclass(frozen=True, slots=True)
class CallerProfile:
    phone: str
    tier: str
    name: str = ""
    known: bool = False


_customers = Customer.__table__.c
# Core, not the ORM: this runs for every call, and the ORM's per-query work was a
# visible share of the IVR's CPU at 100 calls/s (py-spy); the statement is cached.
_LOOKUP = select(_customers.name, _customers.assets, _customers.volume, _customers.tier).where(
    _customers.phone == bindparam("phone")
)


def lookup_caller(engine: Engine, phone: str, thresholds: TierThresholds) -> CallerProfile:
    """The caller's tier by phone number: one indexed query; unknown callers are junior."""
    with engine.connect() as conn:
        row = conn.execute(_LOOKUP, {"phone": phone}).first()
    if row is None:
        return CallerProfile(phone, UNKNOWN_TIER)
    return CallerProfile(phone, tier_of(row.assets, row.volume, row.tier, thresholds), row.name, True)


class ImportError_(ValueError):
    """Rows of a customer CSV that cannot be imported; nothing was imported."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"{path}: {len(problems)} bad row(s), nothing imported:\n" + "\n".join(problems))
        self.problems = problems


def import_customers(engine: Engine, path: Path) -> int:
    """Insert or update customers from `phone,name,assets,volume[,tier]`; all rows or none."""
    problems: list[str] = []
    rows: dict[str, dict[str, object]] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"phone", "name", "assets", "volume"} - set(reader.fieldnames or [])
        if missing:
            raise ImportError_(path, [f"line 1: missing column(s) {', '.join(sorted(missing))}"])
        for line, record in enumerate(reader, start=2):
            phone = (record.get("phone") or "").strip()
            try:
                if not phone.lstrip("+").isdigit():
                    raise ValueError(f"phone {phone!r} is not a number")
                assets, volume = float(record["assets"] or 0), float(record["volume"] or 0)
                if assets < 0 or volume < 0:
                    raise ValueError("assets and volume cannot be negative")
                tier = (record.get("tier") or "").strip().lower() or None
                if tier is not None and tier not in TIERS:
                    raise ValueError(f"tier {tier!r} is not one of {', '.join(TIERS)}")
                if phone in rows:
                    raise ValueError(f"phone {phone} appears twice")
            except ValueError as exc:
                problems.append(f"line {line}: {exc}")
                continue
            rows[phone] = {"phone": phone, "name": (record["name"] or "").strip(), "assets": assets, "volume": volume, "tier": tier}
    if problems:
        raise ImportError_(path, problems)
    with Session(engine) as s, s.begin():
        existing = {c.phone: c for c in s.scalars(select(Customer).where(Customer.phone.in_(rows)))}
        for phone, values in rows.items():
            customer = existing.get(phone) or Customer(phone=phone)
            for key, value in values.items():
                setattr(customer, key, value)
            s.add(customer)
    return len(rows)
