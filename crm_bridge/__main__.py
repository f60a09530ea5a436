"""CRM command line: customers, complaint follow-up and the morning review of low scores.

    python -m crm_bridge --db-url URL import-customers FILE.csv
    python -m crm_bridge --db-url URL list-customers [--tier senior]
    python -m crm_bridge --db-url URL set-tier PHONE senior|middle|junior|auto
    python -m crm_bridge --db-url URL overdue-tickets
    python -m crm_bridge --db-url URL low-scores [--day 2026-11-24]
    python -m crm_bridge --db-url URL report --date 2026-11-24 [--html FILE] [--csv DIR]
    python -m crm_bridge --db-url URL webhook-dead
    python -m crm_bridge --db-url URL webhook-retry [SIP_CALL_ID]
    python -m crm_bridge --db-url URL migrate
    python -m crm_bridge --db-url URL scorecard --from 2026-12-01 --to 2026-12-07 [--html FILE] [--csv FILE]
    python -m crm_bridge --db-url URL characteristics --directory DIR (--all-missing | RECORDING_ID ...)
    python -m crm_bridge --db-url URL dnc add|remove|list [NUMBER]
    python -m crm_bridge --db-url URL followups [--status due] [--kind resolved]
    python -m crm_bridge --config sip.conf retention [--dry-run]
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

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from crm_bridge.customers import ImportError_, TierThresholds, import_customers, tier_of
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import TIERS, Call, Customer, WebhookDeadLetter, aware
from crm_bridge.report import local_today, low_scores, overdue_tickets

EXAMPLES = """examples:
  python -m crm_bridge --config sip.conf.example import-customers loadtest/customers.csv
  python -m crm_bridge --config sip.conf.example list-customers --tier senior
  python -m crm_bridge --config sip.conf.example report --date 2026-11-26 --html var/report.html
  python -m crm_bridge --db-url sqlite:///var/hotline.db overdue-tickets

`--config sip.conf` takes the database URL, tier thresholds and time zone from the IVR's config;
days are local days of [general] timezone (Asia/Shanghai by default), not UTC days.
"""


def _command(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, what: str,
             example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does and shows an example."""
    return sub.add_parser(name, help=what, description=what, formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog=f"example:\n  python -m crm_bridge --config sip.conf.example {example}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crm_bridge", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    p.add_argument("--db-url", help="CRM database URL (default: from --config)")
    p.add_argument("--config", type=Path, default=Path("sip.conf.example"),
                   help="sip.conf for the URL and tier thresholds (default: %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)
    imp = _command(sub, "import-customers",
                   "insert/update customers from CSV: phone,name,assets,volume[,tier][,gender]; "
                   "a bad row is reported with its line and nothing is imported",
                   "import-customers loadtest/customers.csv")
    imp.add_argument("file", type=Path)
    lst = _command(sub, "list-customers", "customers with their effective tier", "list-customers --tier senior")
    lst.add_argument("--tier", choices=TIERS)
    st = _command(sub, "set-tier", "set a customer's tier explicitly ('auto' derives it again)",
                  "set-tier 13800000001 senior")
    st.add_argument("phone")
    st.add_argument("tier", choices=[*TIERS, "auto"])
    _command(sub, "overdue-tickets", "complaints not closed whose daily feedback is due ([002])", "overdue-tickets")
    low = _command(sub, "low-scores", "yesterday's low survey scores (the scored questionnaire answers), "
                   "for the morning review ([004])", "low-scores --day 2026-11-26")
    low.add_argument("--day", type=date.fromisoformat,
                     help="the local day to review (default: yesterday in [general] timezone)")
    low.add_argument("--from-score", type=int, default=2,
                     help="keypad scores counted as low: this and worse "
                          "(1 satisfied, 2 average, 3 dissatisfied; default %(default)s)")
    _command(sub, "webhook-dead", "pushes to the external CRM that failed every attempt", "webhook-dead")
    wr = _command(sub, "webhook-retry", "re-queue dead-lettered pushes (all, or one call's)",
                  "webhook-retry 1-5663@127.0.0.1")
    wr.add_argument("sip_call_id", nargs="?")
    _command(sub, "migrate", "bring the CRM's schema to the newest revision (the IVR and the desk also do it at start)",
             "migrate")
    rep = _command(sub, "report", "the daily report per seat group and agent, for one local day",
                   "report --date 2026-11-26 --html var/report.html --csv var/report/")
    rep.add_argument("--date", type=date.fromisoformat, help="YYYY-MM-DD (default: yesterday in [general] timezone)")
    rep.add_argument("--html", type=Path, help="also write a self-contained HTML file with the charts"
                     " ({date} in the name becomes the day, e.g. report-{date}.html)")
    rep.add_argument("--csv", type=Path, help="also write seat_groups-DAY.csv and agents-DAY.csv into this directory")
    rep.add_argument("--service-level-seconds", type=float, default=20,
                     help="answered within this many seconds (default %(default)s)")
    sc = _command(sub, "scorecard", "per-agent scorecards (绩效考核) for local days FROM to TO, inclusive",
                  "scorecard --from 2026-12-01 --to 2026-12-07 --csv week.csv")
    sc.add_argument("--from", dest="first", type=date.fromisoformat, required=True, help="YYYY-MM-DD, first local day")
    sc.add_argument("--to", dest="last", type=date.fromisoformat, required=True, help="YYYY-MM-DD, last local day")
    sc.add_argument("--html", type=Path, help="also write a self-contained HTML file with the charts")
    sc.add_argument("--csv", type=Path, help="also write the figures as CSV (one row per agent)")
    ch = _command(sub, "characteristics",
                  "talk times, silences and over-talk of recorded calls (stored in recordings)",
                  "characteristics --all-missing")
    ch.add_argument("recording_ids", nargs="*", type=int, metavar="RECORDING_ID")
    ch.add_argument("--all-missing", action="store_true",
                    help="every complete recording without characteristics (or with an older version)")
    ch.add_argument("--directory", type=Path,
                    help="the recording directory the rows' paths are relative to (default: [recording] directory)")
    ch.add_argument("--silence-seconds", type=float, default=3.0,
                    help="silences at least this long are listed with who spoke last (default %(default)s)")
    dnc = _command(sub, "dnc", "the do-not-call list (谢绝来电): numbers follow-up calls never dial",
                  "dnc add 13800000001")
    dnc.add_argument("action", choices=("add", "remove", "list"))
    dnc.add_argument("number", nargs="?")
    fu = _command(sub, "followups", "follow-up calls (回访): due, dialling, done, unreachable, closed",
                 "followups --status unreachable")
    fu.add_argument("--status", choices=("due", "dialling", "done", "unreachable", "closed"))
    fu.add_argument("--kind", choices=("resolved", "wrap_up", "daily", "survey"))
    ret = _command(sub, "retention", "delete recordings older than [recording] retention_days "
                   "(kept while their complaint ticket is open)", "retention --dry-run")
    ret.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    ret.add_argument("--days", type=int, help="override [recording] retention_days")
    bk = _command(sub, "backup", "back up the CRM (pg_dump or SQLite's online backup) and recordings, "
                  "while the IVR runs", "backup --to 'backups/{stamp}' --recordings var/recordings --keep 7")
    bk.add_argument("--to", required=True,
                    help="a new directory ({stamp} in it becomes the UTC time, e.g. backups/{stamp})")
    bk.add_argument("--recordings", type=Path, help="also copy this recordings directory (SHA-256 in the manifest)")
    bk.add_argument("--keep", type=int, default=0,
                    help="then delete all but the N newest backups beside it (default: keep all)")
    rs = _command(sub, "restore", "restore a backup into an empty database (and the recordings)",
                  "--db-url sqlite:///var/restored.db restore --from backups/20261206T020000Z")
    rs.add_argument("--from", dest="source", type=Path, required=True, help="the backup directory")
    rs.add_argument("--recordings", type=Path, help="where the backup's recordings go")
    vb = _command(sub, "verify-backup", "check every file of a backup against its manifest's SHA-256",
                  "verify-backup backups/20261206T020000Z")
    vb.add_argument("source", type=Path)
    args = p.parse_args(argv)
    if args.command == "verify-backup":
        return _backup_command(args, "")

    thresholds = TierThresholds()
    zone = ZoneInfo("Asia/Shanghai")
    agent_names: dict[str, str] = {}
    recordings: Path | None = None
    recordings_dir, retention_days = Path("var/recordings"), 90
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
        recordings_dir, retention_days = config.recording.directory, config.recording.retention_days
        recordings = recordings_dir  # what the rows' paths are relative to
    if not url:
        print("error: give --db-url or --config", file=sys.stderr)
        return 2
    if args.command in ("backup", "restore"):  # before migrate: a restore wants the database empty
        return _backup_command(args, url)
    engine = make_engine(url)
    migrate(engine)

    if args.command == "characteristics":
        return _characteristics(engine, args, recordings)
    if args.command == "scorecard":
        return _scorecard(engine, args, zone, agent_names)
    if args.command == "migrate":
        from alembic.runtime.migration import MigrationContext

        with engine.connect() as conn:
            print(f"CRM schema at revision {MigrationContext.configure(conn).get_current_revision()}")
    elif args.command == "import-customers":
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
        for low_score, caller, sip_call_id in rows:
            at = low_score.at.astimezone(zone)
            where = f"{low_score.questionnaire}/{low_score.question} {low_score.label}"
            print(f"{at:%H:%M}\tscore {low_score.score} ({low_score.value})\t{where}\tagent {low_score.agent_number}"
                  f"\t{low_score.seat_group}\tcaller {caller}\tcall {sip_call_id}")
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
        for q in report.questions:
            keys = "  ".join(f"{key} {label} {n}" for key, label, n in q.keys)
            print(f"{q.questionnaire}/{q.question}\tanswered {q.answered}\t{keys}"
                  + (f"\tfollowups {q.followups}" if q.followups else ""))
        for run in report.survey_runs:
            print(f"{run.questionnaire}\t" + "\t".join(f"{status} {n}" for status, n in run.statuses.items()))
        if report.followups is not None:
            from crm_bridge.followup_report import text_lines

            print("\n".join(text_lines(report.followups)))
        if args.csv:
            for path in write_csv(report, args.csv):
                print(f"wrote {path}")
        if args.html:
            html = Path(str(args.html).replace("{date}", day.isoformat()))  # the daily timer's file name
            html.parent.mkdir(parents=True, exist_ok=True)
            html.write_text(standalone_html(report, charts(report)), encoding="utf-8")
            print(f"wrote {html}")
    elif args.command == "retention":
        from crm_bridge.retention import apply_retention

        days = args.days or retention_days
        if days < 1:
            print("error: --days must be 1 or more", file=sys.stderr)
            return 2
        result = apply_retention(engine, recordings_dir, days, dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        for name in result.deleted:
            print(f"{verb}\t{name}")
        for name in result.kept_for_tickets:
            print(f"kept\t{name}\t(complaint ticket still open)")
        for name, why in result.failed:
            print(f"failed\t{name}\t{why}")
        print(f"{verb} {len(result.deleted)} recording(s), {result.freed_bytes / 1e6:.1f} MB, older than {days} days "
              f"in {recordings_dir}; kept {len(result.kept_for_tickets)} for open complaints")
        return 1 if result.failed else 0
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
    elif args.command == "dnc":
        return _dnc(engine, args.action, args.number, zone)
    elif args.command == "followups":
        _followups(engine, args.status, args.kind, zone)
    return 0


def _scorecard(engine: Engine, args: argparse.Namespace, zone: ZoneInfo, agent_names: dict[str, str]) -> int:
    from crm_bridge import scorecards as sc

    try:
        period = sc.Period(args.first, args.last, zone)
    except sc.PeriodError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cards = sc.scorecards(engine, period, agent_names=agent_names)
    print(f"scorecards {period.first} to {period.last} ({zone}): "
          f"UTC {period.start_utc:%Y-%m-%d %H:%M} to {period.end_utc:%Y-%m-%d %H:%M}")
    for row in sc.rows(cards):
        print("\t".join(row))
    questions = sc.question_rows(cards)
    if len(questions) > 1:
        for row in questions:
            print("\t".join(row))
    text = sc.csv_text(cards)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(text, encoding="utf-8-sig")  # BOM: Excel opens the Chinese names right
        print(f"wrote {args.csv}")
        per_question = args.csv.with_name(f"{args.csv.stem}-questions.csv")
        per_question.write_text(sc.question_csv_text(cards), encoding="utf-8-sig")
        print(f"wrote {per_question}")
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(sc.standalone_html(cards, sc.charts(cards)), encoding="utf-8")
        print(f"wrote {args.html}")
    return 0


def _characteristics(engine: Engine, args: argparse.Namespace, recordings: Path | None) -> int:
    from crm_bridge.characteristics import Settings, compute_and_store, missing

    directory = args.directory or (Path(recordings) if recordings else None)
    if directory is None:
        print("error: give --directory (the recording directory)", file=sys.stderr)
        return 2
    if not directory.is_dir():
        print(f"error: {directory}: not a directory", file=sys.stderr)
        return 2
    if not args.all_missing and not args.recording_ids:
        print("error: give RECORDING_ID ... or --all-missing", file=sys.stderr)
        return 2
    if args.silence_seconds <= 0:
        print("error: --silence-seconds must be positive", file=sys.stderr)
        return 2
    settings = Settings(silence_s=args.silence_seconds)
    ids = [*args.recording_ids, *(missing(engine) if args.all_missing else [])]
    failed = 0
    for rid in dict.fromkeys(ids):
        found = compute_and_store(engine, rid, directory, settings)
        if found is None:
            failed += 1
            print(f"recording {rid}: not computed (see the log line above)")
        else:
            print(f"recording {rid}: caller {found.caller_talk_s:.1f}s agent {found.agent_talk_s:.1f}s "
                  f"non-talk {found.non_talk_s:.1f}s longest silence {found.longest_silence_s:.1f}s "
                  f"over-talk {found.overtalk_count}x {found.overtalk_s:.1f}s")
    print(f"{len(ids) - failed} computed, {failed} failed")
    return 1 if failed else 0


def _dnc(engine: Engine, action: str, number: str | None, zone: ZoneInfo) -> int:
    from crm_bridge import followups

    if action == "list":
        rows = followups.do_not_call_list(engine)
        for row in rows:
            print(f"{row.number}\t{aware(row.added_at).astimezone(zone):%Y-%m-%d %H:%M}\t{row.source}\t{row.added_by}")
        print(f"{len(rows)} number(s) on the do-not-call list")
        return 0
    if not number:
        print(f"error: dnc {action} needs a NUMBER", file=sys.stderr)
        return 2
    if action == "add":
        try:
            added = followups.add_do_not_call(engine, number, by="cli", source="cli")
        except followups.FollowupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{number}: {'added to' if added else 'already on'} the do-not-call list")
    else:
        removed = followups.remove_do_not_call(engine, number)
        print(f"{number}: {'removed from' if removed else 'was not on'} the do-not-call list")
    return 0


def _followups(engine: Engine, status: str | None, kind: str | None, zone: ZoneInfo) -> None:
    from crm_bridge import followups

    rows = followups.listing(engine, status=status, kind=kind)
    for row in rows:
        due = aware(row.due_at).astimezone(zone)
        print(f"followup {row.id}\t{row.kind}\t{row.number}\tticket {row.ticket_id or '-'}\t{row.status}"
              f"\tdue {due:%Y-%m-%d %H:%M}\tattempts {row.attempts}\t{row.result or ''}\t{row.answers}")
    totals = followups.counts(engine)
    summary = ", ".join(f"{k}/{s} {n}" for (k, s), n in sorted(totals.items()))
    print(f"{len(rows)} listed; all: {summary or 'none'}")


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
