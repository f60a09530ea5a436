"""The desk's browser phone, in process: POST /phone/credentials, the page's phone panel, the vendored JsSIP.

The credentials the desk hands out must be the ones the IVR's registrar accepts: the test
registers them with `Registrar` (MD5 digest, as JsSIP answers) and expects seat 801 bound.
"""

from __future__ import annotations

import hashlib
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from crm_bridge.db import make_engine, migrate
from desk.app import create_app
from desk.auth import seed_agents, set_password
from desk.config import load_desk_config
from ivr.config import ConfigError
from ivr.phone_credentials import BrowserCredentials
from ivr.registrar import REALM, Challenge, Refused, Registered, Registrar

from .test_desk import csrf_of, login

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "desk" / "static" / "vendor" / "jssip"
TOKEN_SECRET = "t0ken-secret-for-the-browser-phone-0123456789"
WS_URL = "wss://ivr.example.com:8089/sip"
CONF = """[general]
timezone = Asia/Shanghai
[database]
url = sqlite:///{db}
[browser_phone]
ws_url = {ws_url}
token_secret = {secret}
credential_seconds = 1800
[801]
type = agent
seat_group = senior
secret = pw801-secret
name = 张敏
phone = browser
auto_answer = yes
[802]
type = agent
seat_group = senior
secret = pw802-secret
name = 李强
[desk]
secret_key = 0123456789abcdef0123456789abcdef-test
"""


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    conf = tmp_path / "sip.conf"
    conf.write_text(CONF.format(db=tmp_path / "crm.db", ws_url=WS_URL, secret=TOKEN_SECRET), encoding="utf-8")
    config = load_desk_config(conf)
    engine = make_engine(config.database_url)
    migrate(engine)
    seed_agents(engine, config)
    set_password(engine, "王经理", "supervisor-pw", role="supervisor")
    with TestClient(create_app(config, engine), base_url="https://testserver") as c:
        yield c
    engine.dispose()


def credentials(client: TestClient, csrf: str | None = None):  # type: ignore[no-untyped-def]
    token = csrf if csrf is not None else csrf_of(client, "/desk")
    return client.post("/phone/credentials", data={"csrf": token}, follow_redirects=False)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def test_the_vendored_jssip_is_the_file_its_readme_records() -> None:
    readme = (VENDOR / "README.md").read_text(encoding="utf-8")
    recorded = re.search(r"\| sha256 \| `([0-9a-f]{64})` \|", readme)
    assert recorded, "README.md beside jssip.min.js must record its sha256"
    assert hashlib.sha256((VENDOR / "jssip.min.js").read_bytes()).hexdigest() == recorded.group(1)
    assert "License: MIT" in (VENDOR / "jssip.min.js").read_text(encoding="utf-8")[:400]
    assert "The MIT License" in (VENDOR / "LICENSE").read_text(encoding="utf-8")


def test_the_desk_issues_credentials_the_registrar_accepts_for_this_seat(client: TestClient) -> None:
    login(client, "801", "pw801-secret")
    before = time.time()
    answer = credentials(client)
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["ws_url"] == WS_URL and body["uri"] == "sip:801@ivr.example.com"
    assert body["auto_answer"] is True and body["lifetime"] == 1800
    assert before + 1800 - 1 <= body["expires"] <= time.time() + 1800
    assert body["authorization_user"] == f"801.{body['expires']}"
    assert "pw801-secret" not in answer.text

    registrar = Registrar({"801": "pw801-secret"}, policies={"801": "md5"},
                          browser=BrowserCredentials(TOKEN_SECRET, ["801"], 1800))
    challenge = registrar.register("REGISTER", None, ("127.0.0.1", 40000), 600, request_uri="sip:ivr.example.com",
                                   user="801")
    assert isinstance(challenge, Challenge)
    nonce = challenge.headers[0].split('nonce="')[1].split('"')[0]
    user, password = body["authorization_user"], body["password"]
    ha1, ha2 = md5(f"{user}:{REALM}:{password}"), md5("REGISTER:sip:ivr.example.com")
    auth = {"username": user, "realm": REALM, "nonce": nonce, "uri": "sip:ivr.example.com", "algorithm": "MD5",
            "qop": "auth", "nc": "00000001", "cnonce": "abc",
            "response": md5(f"{ha1}:{nonce}:00000001:abc:auth:{ha2}")}
    decision = registrar.register("REGISTER", auth, ("127.0.0.1", 40000), 600, request_uri="sip:ivr.example.com")
    assert decision == Registered("801", ("127.0.0.1", 40000), 600)
    auth["username"] = user.replace("801.", "801.1")  # the expiry pushed out: the password no longer matches
    assert isinstance(registrar.register("REGISTER", auth, ("127.0.0.1", 40000), 600,
                                         request_uri="sip:ivr.example.com"), Refused)


def test_credentials_need_the_csrf_token(client: TestClient) -> None:
    login(client, "801", "pw801-secret")
    for token in ("", "forged-token"):
        answer = credentials(client, token)
        assert answer.status_code == 403 and "password" not in answer.text


def test_an_agent_without_a_browser_phone_gets_no_credentials(client: TestClient) -> None:
    login(client, "802", "pw802-secret")
    answer = credentials(client)
    assert answer.status_code == 403 and "未开通网页电话" in answer.text
    assert 'id="phone-online"' not in client.get("/desk").text


def test_a_supervisor_or_a_stranger_gets_no_credentials(client: TestClient) -> None:
    token = csrf_of(client)
    assert credentials(client, token).status_code == 303  # not logged in: to the login page
    login(client, "王经理", "supervisor-pw")
    assert credentials(client).status_code == 403


def test_the_browser_agents_desk_carries_the_phone_and_lets_it_reach_the_websocket(client: TestClient) -> None:
    login(client, "801", "pw801-secret")
    page = client.get("/desk")
    assert 'id="phone-online" disabled>上线<' in page.text and 'id="phone-state"' in page.text
    assert '<script src="/static/vendor/jssip/jssip.min.js"' in page.text
    assert "connect-src 'self' wss://ivr.example.com:8089;" in page.headers["content-security-policy"]
    assert client.get("/static/phone.js").status_code == 200
    assert client.get("/static/vendor/jssip/jssip.min.js").status_code == 200


def test_a_browser_seat_without_ws_url_or_token_secret_is_refused_at_start(tmp_path: Path) -> None:
    conf = tmp_path / "sip.conf"
    conf.write_text(CONF.format(db=tmp_path / "crm.db", ws_url=WS_URL, secret=""), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"token_secret.*801 has phone = browser"):
        load_desk_config(conf)
    conf.write_text(CONF.format(db=tmp_path / "crm.db", ws_url="http://x", secret=TOKEN_SECRET), encoding="utf-8")
    with pytest.raises(ConfigError, match="ws_url"):
        load_desk_config(conf)
