#!/usr/bin/env bash
# Set up (if needed), lint (scripts/lint.sh) and run every test: unit, CRM on SQLite and PostgreSQL,
# and end to end over real SIP/RTP on loopback (SIPp, pjsua2).
# Extra arguments go to pytest (e.g. -k silent, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# ruff and mypy first: any finding fails the run before a test starts
scripts/lint.sh
# Test files run in parallel (pytest-xdist), each file's tests in one worker, in order:
# most end-to-end time is waiting on calls (rings, prompts, silent waits), so three workers
# fit two cores. TEST_WORKERS=0 runs everything in this process, one test after another.
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-3}" --dist loadfile "$@"
