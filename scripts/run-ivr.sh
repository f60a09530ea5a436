#!/usr/bin/env bash
# Set up (if needed) and start the IVR on 127.0.0.1:5060 with SQLite and the
# example config. Extra arguments go to run_ivr.py (e.g. --ring-seconds 0).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python run_ivr.py --config sip.conf.example "$@"
