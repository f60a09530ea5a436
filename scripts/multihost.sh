#!/usr/bin/env bash
# The two-worker layout on separate hosts, in network namespaces on a private bridge
# (10.77.0.0/24): caller, Kamailio balancer, two IVR workers, PostgreSQL + desk, agent phones.
# Nothing is created in the machine's own network namespace. Needs root.
#
#   scripts/multihost.sh up      # build it, start every service, print how to call in
#   scripts/multihost.sh down    # stop everything in it, delete the namespaces
#
# tests/multihost.py documents the hosts and addresses; docs/deployment.md the layout.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python tests/multihost.py "$@"
