"""Customers, tiers and the CRM command line."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crm_bridge.__main__ import main as crm_cli
from crm_bridge.customers import ImportError_, TierThresholds, import_customers, lookup_caller, senior_names, tier_of
from crm_bridge.db import make_engine, migrate

T = TierThresholds(senior_assets=1000, senior_volume=5000, middle_assets=100, middle_volume=500)


@pytest.mark.parametrize(
    ("assets", "volume", "explicit", "tier"),
    [(1000, 0, None, "senior"), (0, 5000, None, "senior"), (999, 4999, None, "middle"), (100, 0, None, "middle"),
     (0, 500, None, "middle"), (99, 499, None, "junior"), (0, 0, "senior", "senior"), (10**9, 0, "junior", "junior")],
)
def test_tier_from_assets_or_volume_unless_set(assets: float, volume: float, explicit: str | None, tier: str) -> None:
    assert tier_of(assets, volume, explicit, T) == tier


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    return engine


def csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "customers.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_import_then_lookup_by_caller_number(db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = csv(tmp_path, "phone,name,assets,volume,tier\n13800000001,王总,2000,0,\n13700000001,李,0,600,\n13600000001,赵,0,0,senior\n")
    assert import_customers(db, path) == 3
    assert lookup_caller(db, "13800000001", T).tier == "senior"
    assert lookup_caller(db, "13700000001", T).tier == "middle"
    assert lookup_caller(db, "13600000001", T).tier == "senior"
    unknown = lookup_caller(db, "13900000000", T)
    assert (unknown.tier, unknown.known) == ("junior", False)
    # importing again updates, never duplicates
    assert import_customers(db, csv(tmp_path, "phone,name,assets,volume\n13800000001,王总,0,0\n")) == 1
    assert lookup_caller(db, "13800000001", T).tier == "junior"


def test_bad_rows_are_all_reported_and_nothing_is_imported(db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = csv(tmp_path, "phone,name,assets,volume,tier\n13800000001,ok,1,1,\nabc,bad,1,1,\n13700000001,x,lots,1,\n13600000001,y,1,1,vip\n")
    with pytest.raises(ImportError_) as err:
        import_customers(db, path)
    assert [p.split(":")[0] for p in err.value.problems] == ["line 3", "line 4", "line 5"]
    assert lookup_caller(db, "13800000001", T).known is False, "nothing half-imported"


def test_cli_import_list_and_set_tier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    path = csv(tmp_path, "phone,name,assets,volume\n13800000001,王总,9000000,0\n13700000001,李,0,0\n")
    cli = ["--db-url", url, "--config", str(tmp_path / "none.conf")]
    assert crm_cli([*cli, "import-customers", str(path)]) == 0
    assert "imported 2" in capsys.readouterr().out
    assert crm_cli([*cli, "set-tier", "13700000001", "middle"]) == 0
    capsys.readouterr()
    assert crm_cli([*cli, "list-customers"]) == 0
    out = capsys.readouterr().out
    assert "13800000001\t王总" in out and "senior (derived)" in out and "middle (set)" in out
    assert crm_cli([*cli, "import-customers", str(csv(tmp_path, "phone,name\n1,x\n"))]) == 1
    assert "missing column(s) assets, volume" in capsys.readouterr().err


def test_overdue_tickets_and_yesterdays_low_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import UTC, datetime, timedelta

    from crm_bridge.writer import CrmWriter
    from ivr.events import CallRecord, OpenTicket, RecordCall, RecordSurvey, RecordSurveyAnswer

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = make_engine(url)
    migrate(engine)
    now = datetime.now(UTC)
    yesterday = now - timedelta(days=1)
    writer = CrmWriter(engine)
    writer.start()
    for n, (score, opened) in enumerate([(1, now - timedelta(hours=30)), (3, now - timedelta(hours=2))]):
        call = f"call-{n}"
        writer.submit(RecordCall(CallRecord(call, f"1380000000{n}", "95000", started_at=yesterday,
                                            agent_number="801", seat_group="senior")))
        value = {1: "satisfied", 3: "dissatisfied"}[score]
        writer.submit(RecordSurvey(call, yesterday, "801", "senior", score, value))
        writer.submit(RecordSurveyAnswer(call, yesterday, "satisfaction", "v1", "rating", str(score), value,
                                         {1: "满意", 3: "不满意"}[score], score))
        writer.submit(OpenTicket(call, opened, f"1380000000{n}", "801", "senior", opened + timedelta(hours=24)))
    assert writer.close() == 0

    cli = ["--db-url", url, "--config", str(tmp_path / "none.conf")]
    assert crm_cli([*cli, "overdue-tickets"]) == 0
    out = capsys.readouterr().out
    assert "13800000000" in out and "13800000001" not in out and "1 overdue" in out
    # the day is a Shanghai day ([general] timezone): between 16:00 and 24:00 UTC it is not the UTC date
    shanghai_day = yesterday.astimezone(ZoneInfo("Asia/Shanghai")).date()
    assert crm_cli([*cli, "low-scores", "--day", shanghai_day.isoformat()]) == 0
    out = capsys.readouterr().out
    assert "score 3 (dissatisfied)\tsatisfaction/rating 不满意\tagent 801" in out
    assert "score 1" not in out and "1 low score(s)" in out


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_ivr_directory_reads_the_same_tiers_on_its_event_loop(backend: str, tmp_path: Path,
                                                                  request: pytest.FixtureRequest) -> None:
    import asyncio

    from crm_bridge.customers import CallerDirectory

    url = f"sqlite:///{tmp_path / 'crm.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    migrate(engine)
    import_customers(engine, csv(tmp_path, "phone,name,assets,volume,tier\n13800000001,王总,2000,0,\n13700000001,李,0,600,\n"))

    async def lookups() -> list[tuple[str, str, bool]]:
        directory = CallerDirectory(engine, T)
        try:
            found = await asyncio.gather(*(directory.lookup(p) for p in ("13800000001", "13700000001", "13900000000")))
            now = directory.lookup_now("13800000001")
            assert (now is not None) == (backend == "sqlite"), "SQLite answers at once, PostgreSQL on the loop"
            return [(p.tier, p.name, p.known) for p in found]
        finally:
            await directory.close()

    assert asyncio.run(lookups()) == [("senior", "王总", True), ("middle", "李", True), ("junior", "", False)]
    engine.dispose()


@pytest.mark.postgres
def test_the_ivr_directory_reconnects_after_a_postgres_restart(postgres, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import time

    from crm_bridge.customers import CallerDirectory

    engine = make_engine(pg_url)
    migrate(engine)
    import_customers(engine, csv(tmp_path, "phone,name,assets,volume,tier\n13800000001,王总,2000,0,\n"))
    directory = CallerDirectory(engine, T, reconnect_s=0.2)

    async def lookup() -> str:
        return (await directory.lookup("13800000001")).tier

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(lookup()) == "senior"
        postgres.stop()
        with pytest.raises(Exception):  # noqa: B017 (psycopg's error or "unreachable": the engine serves the caller as unknown)
            loop.run_until_complete(lookup())
        postgres.start()
        time.sleep(0.3)
        assert loop.run_until_complete(lookup()) == "senior", "a new connection once the server is back"
        loop.run_until_complete(directory.close())
    finally:
        loop.close()
        engine.dispose()


def test_gender_is_imported_in_either_language_and_kept_when_a_file_has_no_such_column(db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = csv(tmp_path, "phone,name,assets,volume,gender\n13800000001,张敏,2000,0,女士\n13700000001,李强,0,0,male\n"
                         "13600000001,赵,0,0,\n")
    assert import_customers(db, path) == 3
    assert [lookup_caller(db, p, T).gender for p in ("13800000001", "13700000001", "13600000001")] == [
        "female", "male", None]
    import_customers(db, csv(tmp_path, "phone,name,assets,volume\n13800000001,张敏,0,0\n"))
    assert lookup_caller(db, "13800000001", T).gender == "female"


def test_a_gender_that_is_not_male_or_female_is_a_bad_row(db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImportError_) as err:
        import_customers(db, csv(tmp_path, "phone,name,assets,volume,gender\n13800000001,张敏,0,0,x\n"))
    assert err.value.problems == ["line 2: gender 'x' is not male or female (or 先生, 女士, 男, 女, m, f)"]


def test_senior_names_are_the_senior_customers_with_a_known_gender(db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import_customers(db, csv(tmp_path, "phone,name,assets,volume,tier,gender\n"
                                       "13800000001,张敏,2000,0,,female\n"  # senior by assets
                                       "13800000002,王强,0,9000,,male\n"  # senior by volume
                                       "13800000003,李明,0,0,senior,male\n"  # senior by decision
                                       "13800000004,赵丽,9000,0,junior,female\n"  # set junior: not senior
                                       "13800000005,孙伟,0,600,,male\n"  # middle
                                       "13800000006,周杰,5000,0,,\n"))  # no gender
    assert sorted(senior_names(db, T)) == [("张敏", "female"), ("李明", "male"), ("王强", "male")]
