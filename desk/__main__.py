"""The agent desk and wallboard, and its accounts.

    python -m desk --config sip.conf                       # serve on [desk] bind:port (127.0.0.1:8080)
    python -m desk --config sip.conf set-password 801      # an agent's desk password (prompted, or one line on stdin)
    python -m desk --config sip.conf add-supervisor 王经理  # a supervisor account (same)
    python -m desk --config sip.conf check-form [FILE]     # check the QA evaluation form ([quality] form)

A separate process from the IVR: it reads and writes the CRM database only.
On its first start every agent of sip.conf gets a desk account whose password
is the agent's SIP secret.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from crm_bridge.db import make_engine, migrate
from desk.auth import PasswordError, account_exists, seed_agents, set_password
from desk.config import DeskConfig, load_desk_config
from desk.quality import FormError, read_form
from ivr.config import ConfigError


def _password(prompt_for: str) -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {prompt_for}: ")
    if getpass.getpass("again: ") != first:
        raise PasswordError("the two passwords differ")
    return first


def serve(config: DeskConfig, engine) -> int:  # type: ignore[no-untyped-def]
    import uvicorn

    from desk.app import create_app

    created = seed_agents(engine, config)
    if created:
        print(f"desk: accounts for agent(s) {', '.join(created)}, first password = their SIP secret", flush=True)
    if not config.secret_key:
        print("desk: no [desk] secret_key: sessions end when the desk restarts", flush=True)
    try:
        app = create_app(config, engine)
    except FormError as exc:  # [quality] form: refused at start with file, line and reason
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"desk: ready on http://{config.bind}:{config.port}", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.bind,
            port=config.port,
            log_level="warning",
            proxy_headers=False,
            timeout_graceful_shutdown=2,  # the event streams never end by themselves
        )
    )
    server.run()
    return 0


EXAMPLES = """examples:
  python -m desk --config sip.conf.example                       # http://127.0.0.1:8080 (801 / change-me-801)
  python -m desk --config sip.conf.example add-supervisor 王经理  # asks for a password (or reads one line on stdin)
  python -m desk --config sip.conf.example set-password 801      # an agent's desk password

A separate process from the IVR: it reads and writes the CRM database only.
On its first start every agent of sip.conf gets a desk account whose password
is the agent's SIP secret.
"""


def _command(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, what: str,
             example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does and shows an example."""
    return sub.add_parser(name, help=what, description=what, formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog=f"example:\n  {example}")


def check_form(path: Path) -> int:
    try:
        form = read_form(path)
    except FormError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fatal = sum(c.fatal for c in form.criteria)
    print(f"{path}: {form.name}: {len(form.sections)} sections, {len(form.criteria)} criteria ({fatal} fatal), "
          f"pass {form.pass_score:g}, version {form.version[:12]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m desk", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    p.add_argument("--config", type=Path, default=Path("sip.conf"),
                   help="the IVR's sip.conf, with a [desk] section (default: %(default)s)")
    sub = p.add_subparsers(dest="command")
    _command(sub, "serve", "run the desk on [desk] bind:port (the default command)",
             "python -m desk --config sip.conf.example serve")
    sp = _command(sub, "set-password", "set an agent's desk password (prompted twice, or one line on stdin)",
                  "python -m desk --config sip.conf.example set-password 801")
    sp.add_argument("agent")
    su = _command(sub, "add-supervisor",
                  "create a supervisor account, or set its password (prompted twice, or one line on stdin)",
                  "printf 'a-long-password\\n' | python -m desk --config sip.conf.example add-supervisor 王经理")
    su.add_argument("name")
    su.add_argument("--if-missing", action="store_true",
                    help="only create the account: leave an existing one and its password alone")
    cf = _command(sub, "check-form", "check the QA evaluation form ([quality] form, or FILE) before a restart",
                  "python -m desk --config sip.conf.example check-form desk/evaluation_form.toml")
    cf.add_argument("file", nargs="?", type=Path)
    args = p.parse_args(argv)
    try:
        config = load_desk_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-form":
        return check_form(args.file or config.quality.form_path)
    engine = make_engine(config.database_url)
    migrate(engine)
    try:
        if args.command == "set-password":
            if config.agent(args.agent) is None:
                print(f"error: no agent [{args.agent}] with type = agent in {args.config}", file=sys.stderr)
                return 1
            set_password(engine, args.agent, _password(args.agent), role="agent", agent_number=args.agent)
            print(f"password set for agent {args.agent}")
        elif args.command == "add-supervisor":
            name = args.name.strip()
            if not name or len(name) > 64 or name.isdigit() or any(not ch.isprintable() for ch in name):
                print(
                    "error: a supervisor name is 1-64 printable characters and not all digits (those are seat numbers)",
                    file=sys.stderr,
                )
                return 1
            if args.if_missing and account_exists(engine, name):
                print(f"supervisor {name} exists: left as it is")
                return 0
            created = set_password(engine, name, _password(name), role="supervisor")
            print(f"supervisor {name} {'created' if created else 'password changed'}")
        else:
            return serve(config, engine)
    except PasswordError as exc:
        print(f"error: password: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
