"""CRM command line: customers, complaint follow-up and the morning review of low scores.

    python -m crm_bridge --db-url URL import-customers FILE.csv
    python -m crm_bridge --db-url URL list-customers [--tier senior]
    python -m crm_bridge --db-url URL set-tier PHONE senior|middle|junior|auto
    python -m crm_bridge --db-url URL overdue-tickets
    python -m crm_bridge --db-url URL low-scores [--day 2026-11-24]
    python -m crm_bridge --db-url URL report --date 2026-11-24 [--html FILE] [--csv DIR]
    python -m crm_bridge --db-url URL webhook-dead
    python -m crm_bridge --db-url URL webhook-retry [SIP_CALL_ID]
    python -m crm_bridge --db-url URL backup --to DIR [--recordings DIR] [--keep N]
    python -m crm_bridge --db-url URL restore --from DIR [--recordings DIR]
    python -m crm_bridge verify-backup DIR

`--config sip.conf` takes the database URL, tier thresholds and time zone from the IVR's config;
days are local days of `[general] timezone` (Asia/Shanghai by default), not UTC days.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_bridge.customers import ImportError_, TierThresholds, import_customers, tier_of
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import TIERS, Call, Customer, WebhookDeadLetter
from crm_bridge.report import aware, local_today, low_scores, overdue_tickets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crm_bridge", description=__doc__.split("\n")[0])
    p.add_argument("--db-url", help="CRM database URL (default: from --config)")
    p.add_argument("--config", type=Path, default=Path("sip.conf.example"),
                   help="sip.conf for the URL and tier thresholds")
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import-customers",
                         help="insert/update customers from CSV: phone,name,assets,volume[,tier][,gender]")
    imp.add_argument("file", type=Path)
    lst = sub.add_parser("list-customers", help="customers with their effective tier")
    lst.add_argument("--tier", choices=TIERS)
    st = sub.add_parser("set-tier", help="set a customer's tier explicitly ('auto' derives it again)")
    st.add_argument("phone")
    st.add_argument("tier", choices=[*TIERS, "auto"])
    sub.add_parser("overdue-tickets", help="complaints not closed whose daily feedback is due ([002])")
    low = sub.add_parser("low-scores", help="yesterday's low survey scores, for the morning review ([004])")
    low.add_argument("--day", type=date.fromisoformat,
                     help="the local day to review (default: yesterday in [general] timezone)")
    low.add_argument("--from-score", type=int, default=2,
                     help="keypad scores counted as low: this and worse "
                          "(1 satisfied, 2 average, 3 dissatisfied; default %(default)s)")
    sub.add_parser("webhook-dead", help="pushes to the external CRM that failed every attempt")
    wr = sub.add_parser("webhook-retry", help="re-queue dead-lettered pushes (all, or one call's)")
    wr.add_argument("sip_call_id", nargs="?")
    rep = sub.add_parser("report", help="the daily report per seat group and agent, for one local day")
    rep.add_argument("--date", type=date.fromisoformat, help="YYYY-MM-DD (default: yesterday in [general] timezone)")
    rep.add_argument("--html", type=Path, help="also write a self-contained HTML file with the charts"
                     " ({date} in the name becomes the day, e.g. report-{date}.html)")
    rep.add_argument("--csv", type=Path, help="also write seat_groups-DAY.csv and agents-DAY.csv into this directory")
    rep.add_argument("--service-level-seconds", type=float, default=20,
                     help="answered within this many seconds (default %(default)s)")
    bk = sub.add_parser("backup", help="back up the CRM (pg_dump or SQLite's online backup) and recordings, "
                                      "while the IVR runs")
    bk.add_argument("--to", required=True,
                    help="a new directory ({stamp} in it becomes the UTC time, e.g. backups/{stamp})")
    bk.add_argument("--recordings", type=Path, help="also copy this recordings directory (SHA-256 in the manifest)")
    bk.add_argument("--keep", type=int, default=0,
                    help="then delete all but the N newest backups beside it (default: keep all)")
    rs = sub.add_parser("restore", help="restore a backup into an empty database (and the recordings)")
    rs.add_argument("--from", dest="source", type=Path, required=True, help="the backup directory")
    rs.add_argument("--recordings", type=Path, help="where the backup's recordings go")
    vb = sub.add_parser("verify-backup", help="check every file of a backup against its manifest's SHA-256")
    vb.add_argument("source", type=Path)
    args = p.parse_args(argv)
    if args.command == "verify-backup":
        return _backup_command(args, "")

    thresholds = TierThresholds()
    zone = ZoneInfo("Asia/Shanghai")
    agent_names: dict[str, str] = {}
    url = args.db_url
    if args.config.exists():
        from ivr.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        thresholds = config.tiers
        zone = config.general.zone
        agent_names = {a.number: a.name for a in config.agents}
        url = url or config.database_url
    if not url:
        print("error: give --db-url or --config", file=sys.stderr)
        return 2
    if args.command in ("backup", "restore"):  # before migrate: a restore wants the database empty
        return _backup_command(args, url)
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
        # every status but closed: a forwarded complaint still needs its daily feedback ([002])
        tickets = overdue_tickets(engine)
        with Session(engine) as s:
            in_list = Call.id.in_([t.call_id for t in tickets])
            found = s.execute(select(Call.id, Call.sip_call_id).where(in_list))
            call_ids: dict[int, str] = {row.id: row.sip_call_id for row in found}
        for ticket in tickets:
            due = aware(ticket.next_feedback_due).astimezone(zone)
            print(f"ticket {ticket.id}\t{ticket.customer_phone}\tagent {ticket.agent_number}\t{ticket.status}"
                  f"\tdue {due:%Y-%m-%d %H:%M}\tcall {call_ids.get(ticket.call_id)}")
        print(f"{len(tickets)} overdue")
    elif args.command == "low-scores":
        day = args.day or (local_today(zone) - timedelta(days=1))
        rows = low_scores(engine, day, zone, from_score=args.from_score)
        for survey, caller, sip_call_id in rows:
            at = aware(survey.at).astimezone(zone)
            print(f"{at:%H:%M}\tscore {survey.score} ({survey.label})\tagent {survey.agent_number}"
                  f"\t{survey.seat_group}\tcaller {caller}\tcall {sip_call_id}")
        print(f"{len(rows)} low score(s) on {day}")
    elif args.command == "report":
        from crm_bridge.report import (
            charts,
            csv_row,
            daily_report,
            iter_rows,
            standalone_html,
            write_csv,
        )

        day = args.date or (local_today(zone) - timedelta(days=1))
        report = daily_report(engine, day, zone, service_level_seconds=args.service_level_seconds,
                              agent_names=agent_names)
        print(f"report for {day} ({zone}): UTC {report.start_utc:%Y-%m-%d %H:%M} to {report.end_utc:%Y-%m-%d %H:%M}")
        print("row\tcalls\tanswered\tanswer_rate\tabandon_rate\twait_avg\twait_p90\ttalk_avg"
              "\tsurveys 1/2/3\tsilent\tcomplaints +/overdue/closed")
        for f in iter_rows(report):
            cells = csv_row(f)
            print(f"{f.label}\t{f.calls}\t{f.answered}\t{cells[4]}\t{cells[6]}\t{cells[11]}\t{cells[12]}\t{cells[13]}"
                  f"\t{cells[14]}/{cells[15]}/{cells[16]}\t{cells[8]}\t{cells[18]}/{cells[19]}/{cells[20]}")
        if args.csv:
            for path in write_csv(report, args.csv):
                print(f"wrote {path}")
        if args.html:
            html = Path(str(args.html).replace("{date}", day.isoformat()))  # the daily timer's file name
            html.parent.mkdir(parents=True, exist_ok=True)
            html.write_text(standalone_html(report, charts(report)), encoding="utf-8")
            print(f"wrote {html}")
    elif args.command == "webhook-dead":
        with Session(engine) as s:
            dead = s.scalars(select(WebhookDeadLetter).order_by(WebhookDeadLetter.failed_at)).all()
            for d in dead:
                print(f"{d.failed_at:%Y-%m-%d %H:%M}\tcall {d.sip_call_id}\tattempts {d.attempts}\t{d.last_error}")
        print(f"{len(dead)} dead letter(s)")
    elif args.command == "webhook-retry":
        from crm_bridge.webhook import retry_dead_letters

        queued = retry_dead_letters(engine, args.sip_call_id)
        print(f"re-queued {queued} push(es); a running IVR sends them within 30 s")
    return 0


def _backup_command(args: argparse.Namespace, url: str) -> int:
    from datetime import UTC, datetime

    from crm_bridge.backup import BackupError, backup, prune, restore, verify

    try:
        if args.command == "verify-backup":
            problems = verify(args.source)
            for problem in problems:
                print(f"damaged: {problem}", file=sys.stderr)
            print(f"{args.source}: {'damaged' if problems else 'every file matches its SHA-256'}")
            return 1 if problems else 0
        if args.command == "backup":
            now = datetime.now(UTC)
            to = Path(args.to.replace("{stamp}", now.strftime("%Y%m%dT%H%M%SZ")))
            manifest = backup(url, to, args.recordings, now=now)
            db = manifest["database"]
            files = manifest.get("recordings", {}).get("files", [])
            print(f"backed up {manifest['backend']} CRM to {to}: {db['rows'].get('calls', 0)} calls, "
                  f"{sum(db['rows'].values())} rows, {db['size']} bytes; {len(files)} recording(s)")
            for old in prune(to.parent, args.keep) if args.keep else []:
                print(f"deleted old backup {old}")
        else:
            result = restore(url, args.source, args.recordings)
            print(f"restored {args.source}: {result['rows'].get('calls', 0)} calls, "
                  f"{sum(result['rows'].values())} rows; {result['recordings']} recording(s)")
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
