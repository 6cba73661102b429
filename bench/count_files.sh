#!/bin/sh
# Counts the filesystem operations flo-runner makes per execution: files and
# directories created, hard links, removals and fsyncs, from strace over five
# no-op executions (the executor's own state.json is not counted).
#
#   sh bench/count_files.sh [path/to/flo-runner]   (default: target/release/flo-runner)
#
# Needs strace and the release build (make release). Loopback only.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
B="$here/target/release"
runner=${1:-$B/flo-runner}
case $runner in /*) ;; *) runner="$PWD/$runner" ;; esac
D=$(mktemp -d "${TMPDIR:-/tmp}/flo-count.XXXXXX")
cleanup() { kill "$RUN" "$DEV" 2>/dev/null || true; rm -rf "$D"; }
RUN=; DEV=
trap cleanup EXIT
cd "$D"
"$B/flo-devserver" serve --registration-code count --listen 127.0.0.1:0 --long-poll-secs 25 > dev.out 2> dev.log &
DEV=$!
while ! grep -q "listening on" dev.out 2>/dev/null; do sleep 0.05; done
URL=$(sed -n 's/^flo-devserver listening on //p' dev.out | head -1)
cat > config.json <<EOC
{"runner": {"url": "$URL", "registration_code": "count", "name": "count",
            "checkin_timeout": 5, "registration_retry": {"strategy": "none"}},
 "execution": {"max_concurrent_executors": 1,
               "executable_name": "$B/examples/noop-executor",
               "execution_directory": "$D/executions"}}
EOC
echo '{"noop":true}' > f.flow
"$runner" --config config.json > runner.log 2>&1 &
RUN=$!
sleep 1.5
strace -f -p "$RUN" -o trace.txt \
    -e trace=openat,mkdir,mkdirat,link,linkat,rename,renameat,renameat2,unlink,unlinkat,fsync,fdatasync 2>/dev/null &
ST=$!
sleep 0.5
for _ in 1 2 3 4 5; do
    "$B/flo-devserver" enqueue --server "$URL" --flow f.flow --trigger-data '{"bench":1}' > /dev/null
    sleep 0.4
done
sleep 0.5
kill "$ST"; wait "$ST" 2>/dev/null || true
ok() { grep -E "$1" trace.txt | grep -v "= -1" | grep -c "" || true; }
files=$(grep O_CREAT trace.txt | grep -v state.json | grep -v "= -1" | grep -c "" || true)
dirs=$(ok 'mkdir')
links=$(grep -E '(^|[^n])link(at)?\(' trace.txt | grep -v "= -1" | grep -c "" || true)
removed=$(ok 'unlink')
syncs=$(ok 'fsync|fdatasync')
per() { awk "BEGIN { printf \"%.1f\", $1 / 5 }"; }
echo "$(basename "$runner"), per execution: files created $(per "$files"), directories $(per "$dirs"), hard links $(per "$links"), removals $(per "$removed"), fsync/fdatasync $(per "$syncs")"
