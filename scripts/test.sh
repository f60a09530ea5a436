#!/usr/bin/env bash
# Set up (if needed) and run every test: unit, CRM on SQLite and PostgreSQL,
# and end to end over real SIP/RTP on loopback (SIPp, pjsua2).
# Extra arguments go to pytest (e.g. -k silent, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
