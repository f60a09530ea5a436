"""IVR command line: `python -m ivr status [--config sip.conf]` shows seat groups, agent states and queues."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from ivr.config import ConfigError, load_config

EXAMPLES = """commands:
  status    the running IVR's agents (logged out, available, ringing, talking, wrap-up, paused)
            and the callers waiting per seat group, read from [general] status_file

example:
  python -m ivr status --config sip.conf.example
  # senior  801    available
  # senior  802    talking     call 1-5663@127.0.0.1
  # queue senior: 0 waiting

To start the IVR itself: scripts/run-ivr.sh, or python run_ivr.py --config sip.conf.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ivr", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    p.add_argument("command", choices=["status"], help="what to show (status: agents and queues)")
    p.add_argument("--config", type=Path, default=Path("sip.conf.example"),
                   help="the running IVR's sip.conf (default: %(default)s)")
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
