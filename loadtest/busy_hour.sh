#!/usr/bin/env bash
# A busy hour against a running IVR, from the SIPp scenarios in loadtest/scenarios:
#   40 % speaking callers, 30 % menu digits, 20 % the full path (agent + survey), 10 % silent,
# plus six SIPp agents on 127.0.0.1:5091-5096 (the static agents of loadtest/sip.load.conf).
#
#   loadtest/busy_hour.sh HOST:PORT [CALLS_PER_SECOND=20] [SECONDS=600]
#
# Callers come from busy_hour_callers.csv (all tiers plus unknown numbers; import
# loadtest/customers.csv into the CRM first). Each SIPp prints its own summary;
# the IVR's /metrics and CRM tell the rest. Ctrl-C stops everything. -l is explicit: SIPp's
# default concurrency limit follows the rate and would serialise slow-rate callers.
set -euo pipefail
target=${1:?usage: busy_hour.sh HOST:PORT [CALLS_PER_SECOND] [SECONDS]}
rate=${2:-20}
secs=${3:-600}
ip=${LOCAL_IP:-127.0.0.1}
cd "$(dirname "$0")/scenarios"
mkdir -p ../reports
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM

n=0
for port in 5091 5092 5093 5094 5095 5096; do
  sipp -sf agent_uas.xml -i "$ip" -p "$port" -mi "$ip" -mp $((14000 + 100 * n)) -d 4000 -l 100000 -nostdin \
       -trace_stat -stf "../reports/agent-$port.csv" >/dev/null 2>&1 &
  pids+=($!)
  n=$((n + 1))
done

caller() {  # scenario percent local_port media_port [extra sipp args]
  local per10s calls
  per10s=$(awk -v r="$rate" -v p="$2" 'BEGIN { n = int(r * p / 10 + 0.5); print (n < 1 ? 1 : n) }')
  calls=$(awk -v r="$rate" -v p="$2" -v s="$secs" 'BEGIN { print int(r * p / 100 * s + 0.5) }')
  sipp "$target" -sf "$1.xml" -inf busy_hour_callers.csv -s "${SERVICE:-95000}" -i "$ip" -p "$3" -mi "$ip" -mp "$4" \
       -r "$per10s" -rp 10000 -m "$calls" -l 100000 -nostdin -trace_stat -stf "../reports/$1.csv" "${@:5}" &
  pids+=($!)
}
caller speaking_caller 40 5171 6000
caller digit_caller 30 5172 8000
caller survey_caller 20 5173 10000 -d 11000
caller silent_caller 10 5174 12000
wait "${pids[@]:6}"   # the callers; the agents stop with the trap
