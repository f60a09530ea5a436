"""IVR command line: `python -m ivr status [--config sip.conf]` shows seat groups, agent states and queues."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from ivr.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ivr", description=__doc__)
    p.add_argument("command", choices=["status"])
    p.add_argument("--config", type=Path, default=Path("sip.conf.example"))
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = config.status_file
    if path is None or not path.exists():
        print(f"no status at {path}: is the IVR running with this config?", file=sys.stderr)
        return 1
    status = json.loads(path.read_text(encoding="utf-8"))
    age = (datetime.now(UTC) - datetime.fromisoformat(status["written_at"])).total_seconds()
    print(f"status written {age:.0f} s ago ({path})")
    for agent in status["agents"]:
        call = f"  call {agent['call_id']}" if agent["call_id"] else ""
        print(f"{agent['seat_group']:<7} {agent['agent']:<6} {agent['state']:<11}{call}")
    for group, waiting in status["queues"].items():
        print(f"queue {group}: {len(waiting)} waiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
