#!/usr/bin/env bash
# Lint: ruff (style, imports, likely bugs) over the repository and mypy (types, strict)
# over ivr/, crm_bridge/, prompts/, desk/ and run_ivr.py, as pyproject.toml configures them.
# Installs ruff and mypy into .venv (the versions requirements.txt pins) when missing.
# Prints the mypy errors per package at the end; exits 1 when either tool found anything.
#
#   scripts/lint.sh            # both
#   scripts/lint.sh ruff       # one of them
#   scripts/lint.sh mypy
set -uo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  echo "lint: no .venv here; scripts/bootstrap.sh creates it" >&2
  exit 2
fi
missing=()
for tool in ruff mypy; do
  [ -x ".venv/bin/$tool" ] || missing+=("$(grep -E "^$tool==" requirements.txt || echo "$tool")")
done
if ((${#missing[@]})); then
  echo "lint: pip install ${missing[*]}"
  .venv/bin/python -m pip install -q --disable-pip-version-check "${missing[@]}" || exit 2
fi

which=${1:-all}
status=0
if [ "$which" = all ] || [ "$which" = ruff ]; then
  echo "== ruff check ."
  .venv/bin/ruff check . || status=1
fi
if [ "$which" = all ] || [ "$which" = mypy ]; then
  echo "== mypy"
  report=$(.venv/bin/mypy)
  mypy_status=$?
  echo "$report"
  if [ "$mypy_status" -ne 0 ]; then
    status=1
    echo "== mypy errors per package"
    echo "$report" | grep -E '^[^:]+:[0-9]+: error:' | cut -d: -f1 | sed -E 's#^([^/]+)/.*#\1/#' | sort | uniq -c | sort -rn
  fi
fi
exit "$status"
