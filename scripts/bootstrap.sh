#!/usr/bin/env bash
# Install what the IVR and its tests need on Debian (bookworm): apt packages,
# a virtualenv at .venv in the repo root, and the Python requirements.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# kamailio: the SIP load balancer of the two-worker layout (loadtest/kamailio/)
# chromium, chromium-driver, fonts-wqy-microhei: the desk's browser tests and report charts (CJK text);
# baresip: a third-party phone in the end-to-end tests; iproute2 and nftables: the packet-loss test's
# network namespace (the kernel may lack netem; an nftables rule drops the packets then);
# sqlite3: the README's look into the CRM; libsndfile1: call recordings (soundfile)
# systemd (systemd-analyze verify), util-linux (unshare, nsenter, runuser, setpriv) and strace (the system
# calls a service makes, against its unit's filter): the service install test
# linux-perf: where the kernel's share of a worker's CPU goes (docs/load-testing.md, signalling throughput)
APT_PACKAGES=(espeak-ng libespeak-ng1 sip-tester sox postgresql python3-venv kamailio chromium chromium-driver
              fonts-wqy-microhei baresip iproute2 nftables sqlite3 libsndfile1 systemd util-linux strace linux-perf
              kamailio-websocket-modules kamailio-tls-modules)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: need root to install: ${missing[*]} (run as root or with sudo)" >&2
    exit 1
  fi
  echo "bootstrap: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts a kamailio service on port 5060, where the IVR listens; the
  # load-balancer layout runs its own with loadtest/kamailio/kamailio.cfg.
  if [[ " ${missing[*]} " == *" kamailio "* ]] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now kamailio >/dev/null 2>&1 || true
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: pip install -r requirements.txt"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
