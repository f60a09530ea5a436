#!/usr/bin/env bash
# Install the hotline IVR as a service: a system user, the code and a virtualenv
# under a prefix, a config per worker, the systemd units and the logrotate rule.
# Run as root from the repository (or an unpacked release). Safe to run again:
# the user, the virtualenv and the configs are kept when they exist; code and
# units are replaced (that is how an upgrade is installed).
#
#   scripts/install-service.sh                      # /opt/hotline, /etc/hotline, /var/lib/hotline, 1 worker
#   scripts/install-service.sh --workers 2          # ivr-1.conf and ivr-2.conf (ports 5061, 5062)
#   scripts/install-service.sh --venv /srv/venv     # use an existing virtualenv instead of building one
#   scripts/install-service.sh --no-systemctl       # put everything in place, start nothing
#
# Options (defaults in brackets):
#   --prefix DIR      code and virtualenv [/opt/hotline]
#   --etc DIR         configuration [/etc/hotline]
#   --state DIR       what the services write: CRM (SQLite), outboxes, prompts, reports [/var/lib/hotline]
#   --user NAME       the service user and group [hotline]
#   --workers N       IVR worker configs to create when none exist [1]
#   --venv DIR        link DIR as the virtualenv instead of creating one and installing requirements.txt
#   --unit-dir DIR    where the systemd units go [/etc/systemd/system]
#   --logrotate-dir DIR  [/etc/logrotate.d]
#   --log-dir DIR     for file logs, if a unit is changed to write one (logrotate rotates them) [/var/log/hotline]
#   --no-systemctl    do not reload systemd or enable anything (also when systemd is not running)
#   --no-useradd      the user exists already (or is managed elsewhere); fail if it does not
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
# the system's Python: one under /root or /home (pyenv) is out of the service's reach (ProtectHome=yes)
PYTHON=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
PREFIX=/opt/hotline
ETC=/etc/hotline
STATE=/var/lib/hotline
SVC_USER=hotline
WORKERS=1
VENV=
UNIT_DIR=/etc/systemd/system
LOGROTATE_DIR=/etc/logrotate.d
LOG_DIR=/var/log/hotline
SYSTEMCTL=yes
USERADD=yes

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
  case $1 in
    --prefix) PREFIX=$2; shift ;;
    --etc) ETC=$2; shift ;;
    --state) STATE=$2; shift ;;
    --user) SVC_USER=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --venv) VENV=$2; shift ;;
    --unit-dir) UNIT_DIR=$2; shift ;;
    --logrotate-dir) LOGROTATE_DIR=$2; shift ;;
    --log-dir) LOG_DIR=$2; shift ;;
    --no-systemctl) SYSTEMCTL=no ;;
    --no-useradd) USERADD=no ;;
    -h|--help) usage ;;
    *) echo "install-service: unknown option $1" >&2; usage ;;
  esac
  shift
done
[[ $WORKERS =~ ^[1-9][0-9]?$ ]] || { echo "install-service: --workers wants 1-99, not '$WORKERS'" >&2; exit 2; }
for d in "$PREFIX" "$ETC" "$STATE" "$UNIT_DIR" "$LOGROTATE_DIR" "$LOG_DIR"; do
  [[ $d == /* ]] || { echo "install-service: paths must be absolute: $d" >&2; exit 2; }
done
if [ "$(id -u)" -ne 0 ]; then
  echo "install-service: run as root (it creates a user and writes system directories)" >&2
  exit 1
fi
say() { echo "install-service: $*"; }

# --- the service user: no login, no home of its own but the state directory ---
if ! id -u "$SVC_USER" >/dev/null 2>&1; then
  if [ "$USERADD" = no ]; then
    echo "install-service: user $SVC_USER does not exist (and --no-useradd)" >&2
    exit 1
  fi
  say "creating system user $SVC_USER"
  useradd --system --user-group --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin \
          --comment "hotline IVR" "$SVC_USER"
fi
SVC_GROUP=$(id -gn "$SVC_USER")

# --- the code: root-owned and read-only to the service; replaced on every run ---
say "code -> $PREFIX"
install -d -m 0755 "$PREFIX"
for part in ivr crm_bridge desk prompts contrib docs scripts; do
  rm -rf "${PREFIX:?}/$part.new"
  cp -r "$SRC/$part" "$PREFIX/$part.new"
  find "$PREFIX/$part.new" -name __pycache__ -prune -exec rm -rf {} +
  rm -rf "${PREFIX:?}/$part"
  mv "$PREFIX/$part.new" "$PREFIX/$part"
done
install -m 0644 "$SRC/run_ivr.py" "$SRC/requirements.txt" "$SRC/sip.conf.example" "$SRC/holidays.toml.example" \
        "$PREFIX/"
chown -R root:root "$PREFIX"
chmod -R u=rwX,go=rX "$PREFIX"

# --- the virtualenv ---
if [ -n "$VENV" ]; then
  [ -x "$VENV/bin/python" ] || { echo "install-service: no $VENV/bin/python" >&2; exit 1; }
  ln -sfn "$(cd "$VENV" && pwd)" "$PREFIX/venv"
elif [ -L "$PREFIX/venv" ]; then
  say "keeping the linked virtualenv $(readlink "$PREFIX/venv")"
else
  if [ ! -x "$PREFIX/venv/bin/python" ]; then
    say "creating $PREFIX/venv"
    "$PYTHON" -m venv "$PREFIX/venv"
  fi
  stamp=$PREFIX/venv/.requirements.sha256
  want=$(sha256sum "$PREFIX/requirements.txt" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "pip install -r requirements.txt"
    "$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check -r "$PREFIX/requirements.txt"
    echo "$want" > "$stamp"
  fi
fi
case $(readlink -f "$PREFIX/venv/bin/python") in
  /root/*|/home/*) say "warning: $PREFIX/venv/bin/python is $(readlink -f "$PREFIX/venv/bin/python"), under" \
                       "/root or /home, which the units hide (ProtectHome=yes): the services will not start" ;;
esac
# The service cannot write __pycache__ under a read-only prefix: compile once here.
"$PREFIX/venv/bin/python" -m compileall -q "$PREFIX/ivr" "$PREFIX/crm_bridge" "$PREFIX/desk" "$PREFIX/prompts" \
  "$PREFIX/run_ivr.py" >/dev/null

# --- state: everything the services write ---
install -d -m 0750 -o "$SVC_USER" -g "$SVC_GROUP" "$STATE" "$STATE/reports" "$STATE/backups" "$STATE/prompts" "$STATE/recordings"
install -d -m 0750 -o "$SVC_USER" -g "$SVC_GROUP" "$LOG_DIR"

# --- configuration: created once, never overwritten (it holds the agents' secrets) ---
install -d -m 0750 -o root -g "$SVC_GROUP" "$ETC"
conf_set() { "$PYTHON" "$SRC/scripts/conf_set.py" "$@"; }
if [ ! -e "$ETC/holidays.toml" ]; then
  # the yearly holiday notice ops edit in place; the IVR re-reads it within a second
  install -m 0644 -o root -g "$SVC_GROUP" "$SRC/holidays.toml.example" "$ETC/holidays.toml"
fi
if [ ! -e "$ETC/sip.conf" ]; then
  say "creating $ETC/sip.conf (from sip.conf.example: paths under $STATE, JSON logs)"
  install -m 0640 -o root -g "$SVC_GROUP" "$SRC/sip.conf.example" "$ETC/sip.conf"
  conf_set "$ETC/sip.conf" \
    "general.status_file=$STATE/ivr-status.json" \
    "holidays.file=$ETC/holidays.toml" \
    "prompts.cache_dir=$STATE/prompts" \
    "prompts.recorded_dir=$PREFIX/prompts/recorded" \
    "database.url=sqlite:///$STATE/hotline.db" \
    "database.outbox_dir=$STATE/outbox" \
    "recording.directory=$STATE/recordings" \
    "log.format=json"
fi
if ! compgen -G "$ETC/ivr-*.conf" >/dev/null; then
  for i in $(seq 1 "$WORKERS"); do
    conf=$ETC/ivr-$i.conf
    say "creating $conf"
    install -m 0640 -o root -g "$SVC_GROUP" "$ETC/sip.conf" "$conf"
    # each worker journals to its own outbox and reports its own status
    conf_set "$conf" "general.status_file=$STATE/ivr-$i/status.json" "database.outbox_dir=$STATE/ivr-$i/outbox"
    if [ "$WORKERS" -gt 1 ]; then
      # README.md's two-worker example: 5061, 5062, … behind Kamailio on 5060 (dispatcher.list below),
      # every request relayed from the balancer's address
      conf_set "$conf" "general.port=$((5060 + i))" "metrics.port=$((9101 + i))" "cluster.worker=ivr-$i" \
        "limits.trusted=127.0.0.1"
      [ -e "$ETC/dispatcher.list" ] || echo "# set destination (scripts/install-service.sh)" > "$ETC/dispatcher.list"
      echo "1 sip:127.0.0.1:$((5060 + i))" >> "$ETC/dispatcher.list"
    fi
    install -d -m 0750 -o "$SVC_USER" -g "$SVC_GROUP" "$STATE/ivr-$i"
  done
  if [ "$WORKERS" -gt 1 ]; then
    say "now set in $ETC/ivr-*.conf and $ETC/sip.conf: [database] url (PostgreSQL: the workers share one CRM)"
    say "  and [cluster] shared_agents / secret; in $ETC/balancer.env the address callers reach (docs/deployment.md)"
  fi
fi

# --- the balancer, for several workers: Debian's kamailio.service with the project's kamailio.cfg ---
BALANCER=no
if [ -e "$ETC/dispatcher.list" ]; then
  BALANCER=yes
  install -d -m 0755 "$PREFIX/kamailio"
  install -m 0644 "$SRC/loadtest/kamailio/kamailio.cfg" "$PREFIX/kamailio/kamailio.cfg"
  chmod 0644 "$ETC/dispatcher.list"
  chmod 0751 "$ETC"  # kamailio reads dispatcher.list; the 0640 configs stay the service's alone
  if [ ! -e "$ETC/balancer.env" ]; then
    printf '%s\n' "# kamailio.service (contrib/kamailio/hotline.conf): the address callers reach, and new calls a second" \
      "LISTEN=udp:127.0.0.1:5060" "MAX_CPS=1200" > "$ETC/balancer.env"
    chmod 0644 "$ETC/balancer.env"
  fi
fi

# --- units and logrotate: rendered for these paths and this user ---
render() {
  sed -e "s#/opt/hotline#$PREFIX#g" -e "s#/etc/hotline#$ETC#g" -e "s#/var/lib/hotline#$STATE#g" \
      -e "s#^User=hotline#User=$SVC_USER#" -e "s#^Group=hotline#Group=$SVC_GROUP#" \
      -e "s#su hotline hotline#su $SVC_USER $SVC_GROUP#" "$1"
}
install -d -m 0755 "$UNIT_DIR" "$LOGROTATE_DIR"
for unit in "$SRC"/contrib/systemd/*; do
  render "$unit" > "$UNIT_DIR/$(basename "$unit")"
  chmod 0644 "$UNIT_DIR/$(basename "$unit")"
done
if [ "$BALANCER" = yes ]; then
  install -d -m 0755 "$UNIT_DIR/kamailio.service.d"
  render "$SRC/contrib/kamailio/hotline.conf" > "$UNIT_DIR/kamailio.service.d/hotline.conf"
  chmod 0644 "$UNIT_DIR/kamailio.service.d/hotline.conf"
fi
render "$SRC/contrib/logrotate/hotline" > "$LOGROTATE_DIR/hotline"
chmod 0644 "$LOGROTATE_DIR/hotline"
say "units -> $UNIT_DIR, logrotate -> $LOGROTATE_DIR/hotline"

workers=$(cd "$ETC" && ls ivr-*.conf | sed -E 's/^ivr-(.*)\.conf$/hotline-ivr@\1.service/' | paste -sd' ')
[ "$BALANCER" = no ] || workers="$workers kamailio.service"
if [ "$SYSTEMCTL" = yes ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl daemon-reload
  # shellcheck disable=SC2086
  systemctl enable $workers hotline-desk.service hotline-report.timer hotline-retention.timer hotline-backup.timer
  say "enabled $workers hotline-desk and the daily timers; start them with:"
  echo "  systemctl start $workers hotline-desk.service hotline-report.timer hotline-retention.timer hotline-backup.timer"
  echo "  (an upgrade: systemctl restart them one worker at a time; each drains first)"
else
  say "systemd not reloaded (--no-systemctl or not running); later: systemctl daemon-reload &&"
  echo "  systemctl enable --now $workers hotline-desk.service hotline-report.timer hotline-retention.timer hotline-backup.timer"
fi
