"""The documentation a newcomer follows: the README's length and links, its runnable commands,
the configuration reference generated from the section models, the command lines' help, and
the README's own path from a fresh clone to a first call and a first desk login."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from crm_bridge.__main__ import main as crm_main
from desk.__main__ import main as desk_main
from desk.config import DeskConfig, QualityConfig
from ivr.__main__ import main as ivr_main
from ivr.config import SECTIONS, AgentConfig
from run_ivr import parse_args as run_ivr_args

from .conftest import PROMPT_CACHE, ROOT, free_port, sipp_media_port

README = ROOT / "README.md"
DOCS = ROOT / "docs"
RUNNABLE = "bash runnable"  # the info string of a README code block whose commands work on a fresh clone, as written
AGENT = ("801", "change-me-801")  # the demo seat the README logs into the desk with
SUPERVISOR = ("supervisor", "change-me-supervisor")  # the demo supervisor scripts/run-ivr.sh creates


def readme() -> str:
    return README.read_text(encoding="utf-8")


def runnable_commands() -> list[str]:
    """Every command line of the README's runnable blocks (comments and blank lines aside)."""
    blocks = re.findall(rf"^```{RUNNABLE}\n(.*?)^```$", readme(), flags=re.MULTILINE | re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the README and the pages it leads to --------------------------------------------------------


def test_the_readme_is_under_250_lines() -> None:
    assert len(readme().splitlines()) < 250


def test_every_page_in_docs_is_linked_from_the_readme() -> None:
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)", readme()))
    pages = {str(page.relative_to(ROOT)) for page in DOCS.rglob("*.md")}
    assert pages - linked == set(), "pages in docs/ the README does not link"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# Pages of the README's table that are being written at the same time as these; until they land a
# link to one is not followed (remove a name once its page is in docs/).
PAGES_TO_COME = {"deployment.md"}


def test_the_links_between_the_pages_of_docs_reach_a_file_and_its_heading() -> None:
    for page in [README, *DOCS.rglob("*.md"), ROOT / "CHANGELOG.md"]:
        text = page.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#\s:]*)(?:#([^)\s]+))?\)", text):
            path = (page.parent / target).resolve() if target else page
            if not path.exists() and path.name in PAGES_TO_COME and path.parent == DOCS:
                continue
            assert path.exists(), f"{page.name}: link to {target}"
            if anchor and path.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
                assert anchor in {_anchor(h) for h in headings}, f"{page.name}: no heading #{anchor} in {target}"


def test_the_call_flow_diagram_lives_in_the_architecture_page() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    assert script("state_diagram").doc_block() in text


# --- the configuration reference -----------------------------------------------------------------

MODELS: list[type] = [*SECTIONS.values(), AgentConfig, DeskConfig, QualityConfig]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_field_of_every_section_model_has_a_line_of_help(model: type) -> None:
    docs = script("config_reference").field_docs(model)
    fields = set(model.__pydantic_fields__)  # type: ignore[attr-defined]
    assert fields - {name for name, text in docs.items() if text.strip()} == set(), (
        f"{model.__name__}: fields without an attribute docstring under them"
    )


def test_the_configuration_reference_is_the_one_generated_from_the_models() -> None:
    generated = script("config_reference").reference()
    assert (DOCS / "configuration.md").read_text(encoding="utf-8") == generated, (
        "docs/configuration.md is stale: run .venv/bin/python scripts/config_reference.py"
    )


def test_the_reference_script_check_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = script("config_reference")
    stale = tmp_path / "configuration.md"
    stale.write_text(module.reference().replace("Port for SIP over UDP and TCP.", "Port."), encoding="utf-8")
    monkeypatch.setattr(module, "DOC", stale)
    monkeypatch.setattr(sys, "argv", ["config_reference.py", "--check"])
    assert module.main() == 1
    monkeypatch.setattr(sys, "argv", ["config_reference.py"])
    assert module.main() == 0
    monkeypatch.setattr(sys, "argv", ["config_reference.py", "--check"])
    assert module.main() == 0


# --- help on the command line --------------------------------------------------------------------

EXAMPLE_LINE = re.compile(r"^examples?:\n  \S", re.MULTILINE)


def help_of(main: Callable[[list[str]], object], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0, argv
    return capsys.readouterr().out


def subcommands(usage: str) -> list[str]:
    found = re.search(r"\{([\w,-]+)\}", usage)
    assert found, usage
    return found.group(1).split(",")


@pytest.mark.parametrize(
    ("program", "main"),
    [("run_ivr.py", run_ivr_args), ("python -m ivr", ivr_main), ("python -m desk", desk_main),
     ("python -m crm_bridge", crm_main)],
)
def test_each_command_and_subcommand_help_exits_0_and_shows_an_example(
    program: str, main: Callable[[list[str]], object], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(main, ["--help"], capsys)
    assert EXAMPLE_LINE.search(text), f"{program} --help shows no example:\n{text}"
    if program in ("python -m desk", "python -m crm_bridge"):
        for command in subcommands(text):
            sub = help_of(main, [command, "--help"], capsys)
            assert EXAMPLE_LINE.search(sub), f"{program} {command} --help shows no example:\n{sub}"
            assert f"python -m {program.split()[-1]}" in sub.split("example:")[-1]


# --- the README's runnable commands --------------------------------------------------------------

LONG_RUNNING = ("scripts/run-ivr.sh", "scripts/test.sh", "sipp ", "sqlite3 ")  # the end-to-end test below runs these


def test_the_readme_marks_its_shell_blocks_runnable_and_each_command_is_one_this_file_runs() -> None:
    commands = runnable_commands()
    assert commands, f"no ```{RUNNABLE} block in the README"
    assert "```sh\n" not in readme() and "```bash\n" not in readme(), "a shell block not marked runnable"
    for command in commands:
        assert command.startswith(LONG_RUNNING) or "--help" in command or "-m crm_bridge" in command, (
            f"{command!r}: nothing in tests/test_docs.py runs it"
        )


def example_copy(folder: Path) -> Path:
    """sip.conf.example and the holidays file it names, copied: its SQLite CRM lands in folder/var/."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "holidays.toml.example", folder)
    return Path(shutil.copy(ROOT / "sip.conf.example", folder))


def test_the_readme_help_and_crm_commands_run_as_written(tmp_path: Path) -> None:
    conf = example_copy(tmp_path)
    for command in runnable_commands():
        if command.startswith(LONG_RUNNING):
            continue
        # the CRM commands against a copy of the example config, so their SQLite file is a temporary one
        run = command.replace("--config sip.conf.example", f"--config {conf}")
        done = subprocess.run(["bash", "-c", run], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        if "list-customers --tier senior" in command:
            assert done.stdout.count("\tsenior (") == 60, done.stdout[-500:]
    assert (tmp_path / "var" / "hotline.db").exists()


# --- the newcomer's path: run it, call it, log into the desk -------------------------------------


def newcomer_config(folder: Path) -> tuple[Path, int, int]:
    """The example config as the README runs it, but on free ports and the suite's prompt cache.

    The overload guard's loop-lag limit is raised as the other end-to-end tests raise it: on the
    shared test machine a late event loop says more about the machine than about the IVR.
    """
    conf = example_copy(folder)
    sip_port, desk_port, metrics_port = free_port(), free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    text = conf.read_text(encoding="utf-8")
    for pattern, value in ((r"^port = 5060$", f"port = {sip_port}"), (r"^port = 9102$", f"port = {metrics_port}"),
                           (r"^;port = 8080$", f"port = {desk_port}"), (r"^cache_dir = .*$", f"cache_dir = {PROMPT_CACHE}"),
                           (r"^max_loop_lag_ms = .*$", "max_loop_lag_ms = 3000")):
        text, count = re.subn(pattern, value, text, count=1, flags=re.MULTILINE)
        assert count == 1, pattern
    conf.write_text(text, encoding="utf-8")
    return conf, sip_port, desk_port


@pytest.fixture
def hotline(tmp_path: Path) -> Iterator[tuple[Path, int, int, subprocess.Popen[str]]]:
    """`scripts/run-ivr.sh` as the README starts it (CONFIG: the example copied to free ports)."""
    assert "scripts/run-ivr.sh" in runnable_commands()
    conf, sip_port, desk_port = newcomer_config(tmp_path / "clone")
    log = tmp_path / "run-ivr.log"
    proc = subprocess.Popen(["scripts/run-ivr.sh"], cwd=ROOT, env={**os.environ, "CONFIG": str(conf)},
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)  # noqa: SIM115
    assert proc.stdout is not None
    ready: set[str] = set()
    deadline = time.monotonic() + 90
    while ready != {"ivr", "desk"}:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, f"run-ivr.sh ended:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not ready: {ready}\n{log.read_text()[-3000:]}"
        if "hotline IVR ready on" in line:
            ready.add("ivr")
        elif "desk: ready on" in line:
            ready.add("desk")
    try:
        yield conf, sip_port, desk_port, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cookie_header(cookies: dict[str, str]) -> dict[str, str]:
    return {"cookie": "; ".join(f"{name}={value}" for name, value in cookies.items())}


def desk_login(base: str, user: str, password: str) -> tuple[httpx.Client, dict[str, str]]:
    """Log in as a browser would: the form's CSRF token, then the session cookie.

    The cookie is Secure, which browsers honour on http://127.0.0.1 and Python's cookie jar does
    not: it is carried by hand.
    """
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=10)
    for _ in range(50):  # uvicorn binds just after its "ready" line
        try:
            page = client.get("/login")
            break
        except httpx.ConnectError:
            time.sleep(0.1)
    else:
        raise AssertionError(f"desk not listening at {base}")
    cookies = dict(page.cookies.items())
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text
    answer = client.post("/login", data={"csrf": token.group(1), "username": user, "password": password},
                         headers=cookie_header(cookies))
    assert answer.status_code == 303, answer.text
    cookies.update(answer.cookies.items())
    return client, cookies


@pytest.mark.e2e
def test_the_readme_first_call_is_answered_and_recorded_and_its_demo_logins_open_the_desk(
    hotline: tuple[Path, int, int, subprocess.Popen[str]], tmp_path: Path
) -> None:
    conf, sip_port, desk_port, proc = hotline
    text = readme()
    assert f"user `{AGENT[0]}`" in text and f"password `{AGENT[1]}`" in text
    assert f"user `{SUPERVISOR[0]}`" in text and f"password `{SUPERVISOR[1]}`" in text

    # the README's first call, on the ports of this run
    (call,) = [c for c in runnable_commands() if c.startswith("sipp ")]
    call = (call.replace("127.0.0.1:5060", f"127.0.0.1:{sip_port}").replace("-p 5071", f"-p {free_port()}")
            .replace("-mp 6000", f"-mp {sipp_media_port()}"))
    assert str(sip_port) in call
    done = subprocess.run(call.split(), cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{call}\n{done.stdout[-2000:]}"

    # ... and the README's look into the CRM (the copy's SQLite file is in its folder's var/)
    time.sleep(1.0)  # the call's last records reach the database
    queries = [c for c in runnable_commands() if c.startswith("sqlite3 ")]
    assert len(queries) == 2
    calls = subprocess.run(["bash", "-c", queries[0]], cwd=conf.parent, capture_output=True, text=True, timeout=30)
    assert calls.returncode == 0, calls.stderr
    _, caller, greeting, silent_attempts, outcome, hangup_by = calls.stdout.splitlines()[0].split("|")
    assert (caller, silent_attempts, outcome, hangup_by) == ("13800000001", "3", "silent", "ivr"), calls.stdout
    assert greeting in ("morning", "normal"), calls.stdout
    steps = subprocess.run(["bash", "-c", queries[1]], cwd=conf.parent, capture_output=True, text=True, timeout=30)
    assert "|answered|" in steps.stdout and "|ended|" in steps.stdout, steps.stdout

    # the README's desk logins: the demo agent gets the desk, the demo supervisor the wallboard
    base = f"http://127.0.0.1:{desk_port}"
    client, cookies = desk_login(base, *AGENT)
    page = client.get("/desk", headers=cookie_header(cookies))
    assert page.status_code == 200 and "张敏" in page.text and AGENT[0] in page.text, page.text[:2000]
    client, cookies = desk_login(base, *SUPERVISOR)
    assert client.get("/wallboard", headers=cookie_header(cookies)).status_code == 200

    # Ctrl-C's counterpart for a script: SIGTERM drains the IVR and stops the desk with it
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", desk_port)) != 0, "the desk outlived run-ivr.sh"
