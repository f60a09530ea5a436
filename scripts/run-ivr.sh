#!/usr/bin/env bash
# Set up (if needed), then start the IVR on 127.0.0.1:5060 (UDP and TCP, SQLite CRM in var/hotline.db)
# and the agent desk beside it on http://127.0.0.1:8080, both from the example config.
#
#   scripts/run-ivr.sh                          # the IVR and the desk, sip.conf.example
#   scripts/run-ivr.sh --ring-seconds 0         # extra arguments go to run_ivr.py
#   CONFIG=sip.conf scripts/run-ivr.sh          # another config (the IVR and the desk both read it)
#   DESK=no scripts/run-ivr.sh                  # the IVR alone
#
# With a config named sip.conf.example the demo supervisor `supervisor` (password
# change-me-supervisor) is created when missing; every agent of the config gets a desk account
# whose first password is its SIP secret (801 / change-me-801 in the example).
# Ctrl-C or SIGTERM drains the IVR (a second one skips the wait); the desk stops with it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
CONFIG=${CONFIG:-sip.conf.example}
PY=.venv/bin/python

if [ "${DESK:-yes}" = no ]; then
  exec "$PY" run_ivr.py --config "$CONFIG" "$@"
fi

# Migrate once, here: the IVR and the desk would otherwise race to create the tables of a new database.
"$PY" -m crm_bridge --config "$CONFIG" migrate
if [ "$(basename "$CONFIG")" = sip.conf.example ]; then
  # the example's passwords are public: a demo account only with the example config
  printf 'change-me-supervisor\n' | "$PY" -m desk --config "$CONFIG" add-supervisor supervisor --if-missing
fi

"$PY" -m desk --config "$CONFIG" &
desk=$!
"$PY" run_ivr.py --config "$CONFIG" "$@" &
ivr=$!
trap 'kill "$desk" 2>/dev/null && { wait "$desk" 2>/dev/null || true; }' EXIT
# SIGTERM to this script drains the IVR. Ctrl-C reaches the IVR and the desk from the terminal
# itself: forwarding it as well would count as the second signal, which skips the drain.
trap 'kill -TERM "$ivr" 2>/dev/null || true' TERM
trap ':' INT
# a trapped signal interrupts `wait` (status 128+n) while the IVR drains: wait again until it is gone,
# then take its own exit status (bash keeps it for the asking)
while kill -0 "$ivr" 2>/dev/null; do
  wait "$ivr" || true
done
status=0
wait "$ivr" || status=$?
trap - EXIT
kill "$desk" 2>/dev/null && { wait "$desk" 2>/dev/null || true; }
exit "$status"
