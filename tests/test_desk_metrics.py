"""The desk's /metrics: the CRM statements the desk process sent and the event streams open, for supervisors."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2 for its TestClient; httpx is what the project has
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from crm_bridge.db import make_engine, migrate
from desk.app import create_app
from desk.auth import seed_agents, set_password
from desk.config import load_desk_config
from desk.metrics import DeskMetrics
from ivr.config import ConfigError

CONF = """[general]
timezone = Asia/Shanghai
[database]
url = sqlite:///crm.db
[801]
type = agent
seat_group = senior
secret = pw801-secret
[desk]
secret_key = 0123456789abcdef0123456789abcdef-test
"""


def statements(page: str) -> float:
    match = re.search(r"^desk_crm_statements_total (\S+)$", page, re.M)
    assert match, page
    return float(match.group(1))


@pytest.fixture
def desk(tmp_path: Path) -> Any:
    conf = tmp_path / "sip.conf"
    conf.write_text(CONF.replace("sqlite:///crm.db", f"sqlite:///{tmp_path / 'crm.db'}"), encoding="utf-8")
    config = load_desk_config(conf)
    engine = make_engine(config.database_url)
    migrate(engine)
    seed_agents(engine, config)
    set_password(engine, "王经理", "supervisor-pw", role="supervisor")
    with TestClient(create_app(config, engine), base_url="https://testserver") as client:
        yield client
    engine.dispose()


def login(client: TestClient, username: str, password: str) -> None:
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert csrf
    answer = client.post("/login", data={"csrf": csrf.group(1), "username": username, "password": password},
                         follow_redirects=False)
    assert answer.status_code == 303


def test_every_statement_the_desk_sends_to_the_crm_is_counted(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    metrics = DeskMetrics(engine, lambda: 0)
    before = statements(metrics.render().decode())
    with engine.connect() as conn:
        for _ in range(3):
            conn.execute(text("SELECT 1"))
    assert statements(metrics.render().decode()) == before + 3
    engine.dispose()


def test_the_open_agent_streams_are_what_the_watcher_serves(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    open_pages = [object()] * 7
    page = DeskMetrics(engine, lambda: len(open_pages)).render().decode()
    assert 'desk_event_streams_open{kind="agent"} 7.0' in page
    assert 'desk_event_streams_open{kind="wallboard"} 0.0' in page
    engine.dispose()


def test_a_supervisor_reads_the_metrics_and_a_page_that_queries_the_crm_raises_the_count(desk: TestClient) -> None:
    login(desk, "王经理", "supervisor-pw")
    first = desk.get("/metrics")
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain")
    assert desk.get("/tickets").status_code == 200  # reads the tickets from the CRM
    assert statements(desk.get("/metrics").text) > statements(first.text)


def test_agents_and_strangers_get_no_metrics(desk: TestClient) -> None:
    stranger = desk.get("/metrics", follow_redirects=False)
    assert stranger.status_code == 303 and stranger.headers["location"] == "/login"
    login(desk, "801", "pw801-secret")
    assert desk.get("/metrics").status_code == 403


def test_a_scraper_with_the_metrics_token_reads_them_without_a_login_and_a_wrong_token_does_not(
    tmp_path: Path,
) -> None:
    token = "scrape-token-0123456789abcdef-0123456789"
    conf = tmp_path / "sip.conf"
    conf.write_text(CONF.replace("sqlite:///crm.db", f"sqlite:///{tmp_path / 'crm.db'}")
                    + f"metrics_token = {token}\n", encoding="utf-8")
    config = load_desk_config(conf)
    engine = make_engine(config.database_url)
    migrate(engine)
    with TestClient(create_app(config, engine), base_url="https://testserver") as client:
        scraped = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert scraped.status_code == 200 and "desk_crm_statements_total" in scraped.text
        wrong = client.get("/metrics", headers={"Authorization": "Bearer " + "x" * 40}, follow_redirects=False)
        assert wrong.status_code == 303  # as a stranger: to the login page
    engine.dispose()
    short = tmp_path / "short.conf"
    short.write_text(CONF + "metrics_token = too-short\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="metrics_token"):
        load_desk_config(short)
