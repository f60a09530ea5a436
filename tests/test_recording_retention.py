"""`python -m crm_bridge retention`: old recordings deleted and marked, open complaints' kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_bridge.__main__ import main
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import Call, Recording, Ticket

NOW = datetime.now(UTC)


@pytest.fixture
def crm(tmp_path: Path) -> tuple[Path, Path]:
    """A CRM with five recordings and their files; returns (sip.conf, recordings directory)."""
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    directory = tmp_path / "recordings"
    conf = tmp_path / "sip.conf"
    conf.write_text(f"[database]\nurl = {db_url}\n[recording]\ndirectory = {directory}\nretention_days = 30\n",
                    encoding="utf-8")
    db = make_engine(db_url)
    migrate(db)
    recordings = {  # path: (age in days, state, ticket status or None)
        "old.wav": (40, "complete", None),
        "recent.wav": (10, "complete", None),
        "complaint-open.wav": (40, "complete", "forwarded"),
        "complaint-closed.wav": (40, "complete", "closed"),
        "old-failed.wav": (40, "failed", None),
        "still-writing.wav": (40, "recording", None),
    }
    with Session(db) as s, s.begin():
        for path, (age, state, ticket) in recordings.items():
            at = NOW - timedelta(days=age)
            call = Call(sip_call_id=f"call-{path}", caller="13800000001", callee="95000", started_at=at)
            s.add(call)
            s.flush()
            if ticket is not None:
                s.add(Ticket(call_id=call.id, customer_phone="13800000001", status=ticket, opened_at=at,
                             next_feedback_due=at + timedelta(days=1)))
            s.add(Recording(sip_call_id=call.sip_call_id, agent_number="801", path=path, format="wav-pcm16",
                            channels=2, started_at=at, state=state))
            (directory / path).parent.mkdir(parents=True, exist_ok=True)
            (directory / (path + ".part" if state in ("failed", "recording") else path)).write_bytes(bytes(1000))
    db.dispose()
    return conf, directory


def states(conf: Path) -> dict[str, str]:
    db = make_engine(f"sqlite:///{conf.parent / 'crm.db'}")
    with Session(db) as s:
        found = {path: state for path, state in s.execute(select(Recording.path, Recording.state)).all()}
    db.dispose()
    return found


def test_retention_deletes_old_files_marks_their_rows_and_keeps_open_complaints(
    crm: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    conf, directory = crm
    assert main(["--config", str(conf), "retention"]) == 0
    assert states(conf) == {
        "old.wav": "deleted", "recent.wav": "complete",
        "complaint-open.wav": "complete",  # the complaint is still being followed up: its evidence stays
        "complaint-closed.wav": "deleted", "old-failed.wav": "deleted",
        "still-writing.wav": "recording",  # never touched while written
    }
    assert sorted(p.name for p in directory.iterdir()) == ["complaint-open.wav", "recent.wav", "still-writing.wav.part"]
    out = capsys.readouterr().out
    assert "kept\tcomplaint-open.wav\t(complaint ticket still open)" in out
    assert "deleted 3 recording(s)" in out


def test_a_kept_recording_goes_once_its_ticket_is_closed(crm: tuple[Path, Path]) -> None:
    conf, directory = crm
    main(["--config", str(conf), "retention"])
    db = make_engine(f"sqlite:///{conf.parent / 'crm.db'}")
    with Session(db) as s, s.begin():
        for ticket in s.scalars(select(Ticket)):
            ticket.status = "closed"
    db.dispose()
    main(["--config", str(conf), "retention"])
    assert states(conf)["complaint-open.wav"] == "deleted"
    assert not (directory / "complaint-open.wav").exists()


def test_a_dry_run_deletes_nothing_and_says_what_it_would(crm: tuple[Path, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    conf, directory = crm
    before = sorted(p.name for p in directory.iterdir())
    assert main(["--config", str(conf), "retention", "--dry-run"]) == 0
    assert sorted(p.name for p in directory.iterdir()) == before
    assert "deleted" not in states(conf).values()
    out = capsys.readouterr().out
    assert "would delete\told.wav" in out and "would delete 3 recording(s)" in out


def test_days_can_be_given_on_the_command_line(crm: tuple[Path, Path]) -> None:
    conf, _ = crm
    main(["--config", str(conf), "retention", "--days", "5"])
    assert states(conf)["recent.wav"] == "deleted"
