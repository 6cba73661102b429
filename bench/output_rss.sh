#!/bin/sh
# Benchmark: runner memory and log batching under a flood of executor output.
#
# Starts flo-devserver and flo-runner (release builds) on loopback, runs one
# execution whose executor prints BENCH_BYTES of output (default 1 GiB, in
# 100-byte lines), and reports:
#   - the runner's peak RSS (VmHWM from /proc) against the 32 MiB target;
#   - lines per /logs request and how long the first line took to arrive;
#   - the size of state.logs and output.log.
# Exit status is 0 when the RSS target holds, 1 otherwise.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TARGET_DIR:-$ROOT/target}/release
BYTES=${BENCH_BYTES:-1073741824}
LINE=100
COUNT=$((BYTES / (LINE + 1)))
TARGET_KIB=$((32 * 1024))

WORK=$(mktemp -d "${TMPDIR:-/tmp}/flo-bench.XXXXXX")
DEV_PID=
RUNNER_PID=
cleanup() {
    for pid in $RUNNER_PID $DEV_PID; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/flo-devserver" serve --listen 127.0.0.1:0 --registration-code bench \
    --long-poll-secs 5 >"$WORK/dev.out" 2>"$WORK/dev.log" &
DEV_PID=$!
i=0
until grep -q listening "$WORK/dev.out" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 200 ] || { echo "devserver did not start" >&2; exit 1; }
    sleep 0.05
done
URL=$(sed -n 's/.* \(http:[^ ]*\)$/\1/p' "$WORK/dev.out" | head -n 1)

cat >"$WORK/config.json" <<JSON
{"runner":{"url":"$URL","registration_code":"bench","checkin_timeout":1},
 "execution":{"max_concurrent_executors":1,"execution_directory":"$WORK/executions",
   "executable_name":"$BIN/examples/example-executor"}}
JSON
cat >"$WORK/flood.flow" <<JSON
{"nodes":[{"id":"flood","type":"print","count":$COUNT,"bytes":$LINE}],"edges":[]}
JSON

(cd "$WORK" && RUST_LOG=warn exec "$BIN/flo-runner" --config "$WORK/config.json" 2>"$WORK/runner.log") &
RUNNER_PID=$!

START=$(date +%s.%N)
ID=$("$BIN/flo-devserver" enqueue --server "$URL" --flow "$WORK/flood.flow")
"$BIN/flo-devserver" show --server "$URL" "$ID" --wait 1800 >"$WORK/show.json"
END=$(date +%s.%N)
HWM=$(awk '/VmHWM/ {print $2}' "/proc/$RUNNER_PID/status")

python3 - "$WORK/show.json" "$BYTES" "$HWM" "$TARGET_KIB" "$START" "$END" <<'PY'
import json, sys
show, nbytes, hwm, target, start, end = sys.argv[1:]
e = json.load(open(show))
logs = e["logs"]
batches = e["log_batches"] or 1
state_logs = e["result"]["state"].get("logs", "")
print(f"output printed        : {int(nbytes)/2**20:.0f} MiB")
print(f"wall time             : {float(end)-float(start):.1f} s")
print(f"runner peak RSS       : {int(hwm)/1024:.1f} MiB (target < {int(target)/1024:.0f} MiB)")
print(f"lines at the server   : {len(logs)} in {batches} /logs requests ({len(logs)/batches:.0f} lines/request)")
print(f"state.logs            : {len(state_logs.encode())} bytes, starts {state_logs[:60]!r}")
sys.exit(0 if int(hwm) < int(target) else 1)
PY
echo "output.log            : $(stat -c %s "$WORK"/executions/*/*/output.log) bytes"

# Second scenario: first-line latency. One line, then a pause: how long from
# the claim until that line reaches the server (target: log_flush_ms, 500 by
# default, plus one request; the executor's own start-up is included).
cat >"$WORK/first.flow" <<JSON
{"nodes":[{"id":"hello","type":"log","message":"first line"},{"id":"wait","type":"sleep","ms":2000}],"edges":[]}
JSON
ID2=$("$BIN/flo-devserver" enqueue --server "$URL" --flow "$WORK/first.flow")
"$BIN/flo-devserver" show --server "$URL" "$ID2" --wait 60 >/dev/null
curl_json() { python3 -c "import json,sys,urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())" "$1"; }
curl_json "$URL/admin/requests" | python3 -c '
import json, sys
exec_id = sys.argv[1]
reqs = [r for r in json.load(sys.stdin) if exec_id in r["path"]]
claim = next(r["at_ms"] for r in reqs if r["route"] == "state")
first = next(r["at_ms"] for r in reqs if r["route"] == "logs")
print(f"first line latency    : {first - claim} ms after the claim (target <= 500 ms + one request)")
' "$ID2"
kill -TERM "$RUNNER_PID"; wait "$RUNNER_PID" || true; RUNNER_PID=
