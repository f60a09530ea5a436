"""CRM command line: customers, complaint follow-up and the morning review of low scores.

    python -m crm_bridge --db-url URL import-customers FILE.csv
    python -m crm_bridge --db-url URL list-customers [--tier senior]
    python -m crm_bridge --db-url URL set-tier PHONE senior|middle|junior|auto
    python -m crm_bridge --db-url URL overdue-tickets
    python -m crm_bridge --db-url URL low-scores [--day 2026-11-24]
    python -m crm_bridge --db-url URL webhook-dead
    python -m crm_bridge --db-url URL webhook-retry [SIP_CALL_ID]

`--config sip.conf` takes the database URL and tier thresholds from the IVR's config.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_bridge.customers import ImportError_, TierThresholds, import_customers, tier_of
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import TIERS, Call, Customer, Survey, Ticket, WebhookDeadLetter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crm_bridge", description=__doc__.split("\n")[0])
    p.add_argument("--db-url", help="CRM database URL (default: from --config)")
    p.add_argument("--config", type=Path, default=Path("sip.conf.example"), help="sip.conf for the URL and tier thresholds")
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import-customers", help="insert/update customers from CSV: phone,name,assets,volume[,tier]")
    imp.add_argument("file", type=Path)
    lst = sub.add_parser("list-customers", help="customers with their effective tier")
    lst.add_argument("--tier", choices=TIERS)
    st = sub.add_parser("set-tier", help="set a customer's tier explicitly ('auto' derives it again)")
    st.add_argument("phone")
    st.add_argument("tier", choices=[*TIERS, "auto"])
    sub.add_parser("overdue-tickets", help="open complaints whose daily feedback is due ([002])")
    low = sub.add_parser("low-scores", help="yesterday's low survey scores, for the morning review ([004])")
    low.add_argument("--day", type=date.fromisoformat, help="the day to review (default: yesterday, UTC)")
    low.add_argument("--from-score", type=int, default=2, help="keypad scores counted as low: this and worse (1 satisfied, 2 average, 3 dissatisfied; default %(default)s)")
    sub.add_parser("webhook-dead", help="pushes to the external CRM that failed every attempt")
    wr = sub.add_parser("webhook-retry", help="re-queue dead-lettered pushes (all, or one call's)")
    wr.add_argument("sip_call_id", nargs="?")
    args = p.parse_args(argv)

    thresholds = TierThresholds()
    url = args.db_url
    if args.config.exists():
        from ivr.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        thresholds = config.tiers
        url = url or config.database_url
    if not url:
        print("error: give --db-url or --config", file=sys.stderr)
        return 2
    engine = make_engine(url)
    migrate(engine)

    if args.command == "import-customers":
        try:
            count = import_customers(engine, args.file)
        except (ImportError_, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"imported {count} customer(s)")
    elif args.command == "list-customers":
        with Session(engine) as s:
            for c in s.scalars(select(Customer).order_by(Customer.phone)):
                tier = tier_of(c.assets, c.volume, c.tier, thresholds)
                if args.tier in (None, tier):
                    how = "set" if c.tier else "derived"
                    print(f"{c.phone}\t{c.name}\tassets={c.assets:.0f}\tvolume={c.volume:.0f}\t{tier} ({how})")
    elif args.command == "set-tier":
        with Session(engine) as s, s.begin():
            customer = s.scalars(select(Customer).where(Customer.phone == args.phone)).first()
            if customer is None:
                print(f"error: no customer with phone {args.phone}", file=sys.stderr)
                return 1
            customer.tier = None if args.tier == "auto" else args.tier
        print(f"{args.phone}: tier {args.tier}")
    elif args.command == "overdue-tickets":
        now = datetime.now(UTC)
        with Session(engine) as s:
            rows = s.execute(
                select(Ticket, Call.sip_call_id).join(Call, Call.id == Ticket.call_id)
                .where(Ticket.status == "open", Ticket.next_feedback_due <= now).order_by(Ticket.next_feedback_due)
            ).all()
            for ticket, sip_call_id in rows:
                print(f"ticket {ticket.id}\t{ticket.customer_phone}\tagent {ticket.agent_number}\tdue {ticket.next_feedback_due:%Y-%m-%d %H:%M}\tcall {sip_call_id}")
        print(f"{len(rows)} overdue")
    elif args.command == "low-scores":
        day = args.day or (datetime.now(UTC).date() - timedelta(days=1))
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        with Session(engine) as s:
            rows = s.execute(
                select(Survey, Call.caller, Call.sip_call_id).join(Call, Call.id == Survey.call_id)
                .where(Survey.at >= start, Survey.at < start + timedelta(days=1), Survey.score >= args.from_score)
                .order_by(Survey.at)
            ).all()
            for survey, caller, sip_call_id in rows:
                print(f"{survey.at:%H:%M}\tscore {survey.score} ({survey.label})\tagent {survey.agent_number}\t{survey.seat_group}\tcaller {caller}\tcall {sip_call_id}")
        print(f"{len(rows)} low score(s) on {day}")
    elif args.command == "webhook-dead":
        with Session(engine) as s:
            dead = s.scalars(select(WebhookDeadLetter).order_by(WebhookDeadLetter.failed_at)).all()
            for d in dead:
                print(f"{d.failed_at:%Y-%m-%d %H:%M}\tcall {d.sip_call_id}\tattempts {d.attempts}\t{d.last_error}")
        print(f"{len(dead)} dead letter(s)")
    elif args.command == "webhook-retry":
        from crm_bridge.webhook import retry_dead_letters

        print(f"re-queued {retry_dead_letters(engine, args.sip_call_id)} push(es); a running IVR sends them within 30 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
