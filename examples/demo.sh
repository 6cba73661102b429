#!/bin/sh
# End-to-end demo: a dev control plane, a runner using the example executor,
# and one flow run through the whole pipeline.
#
# Run by `make demo` after `cargo build --workspace --release --bins --examples`.
# Environment:
#   TARGET_DIR     cargo target directory (default: target, relative to the repo)
#   FLO_DEMO_KEEP  set to 1 to keep the work directory after a successful run
#   RUST_LOG       log level of both programs (default: info)
#
# Exit status: 0 when the flow ran and the runner shut down cleanly; otherwise
# non-zero, with the tail of the logs printed and the work directory kept.

set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${TARGET_DIR:-target}/release
case $BIN_DIR in
    /*) ;;
    *) BIN_DIR=$ROOT/$BIN_DIR ;;
esac
DEVSERVER=$BIN_DIR/flo-devserver
RUNNER=$BIN_DIR/flo-runner
EXECUTOR=$BIN_DIR/examples/example-executor
FLOW=$ROOT/examples/flows/hello.flow

RUST_LOG=${RUST_LOG:-info}
export RUST_LOG

for bin in "$DEVSERVER" "$RUNNER" "$EXECUTOR"; do
    if [ ! -x "$bin" ]; then
        echo "demo: $bin not found; run: cargo build --workspace --release --bins --examples" >&2
        exit 1
    fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/flo-demo.XXXXXX")
DEV_PID=
RUNNER_PID=
WATCHDOG_PID=
FAILED=1

cleanup() {
    for pid in $WATCHDOG_PID $RUNNER_PID $DEV_PID; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ "$FAILED" = 0 ] && [ "${FLO_DEMO_KEEP:-0}" != 1 ]; then
        rm -rf "$WORK"
    else
        echo "demo: work directory kept: $WORK" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() {
    printf '\n==> %s\n' "$*"
}

show_tail() {
    if [ -s "$1" ]; then
        printf '\n--- last lines of %s ---\n' "$1" >&2
        tail -n 40 "$1" >&2
    fi
}

fail() {
    echo "demo: FAILED: $*" >&2
    show_tail "$WORK/runner.log"
    show_tail "$WORK/devserver.log"
    exit 1
}

# JSON string contents: escape backslashes and double quotes.
json_escape() {
    printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'
}

# Waits for a background process for at most $2 seconds, then kills it.
# Sets WAIT_RC to its exit status.
wait_bounded() {
    (
        i=0
        while [ "$i" -lt "$2" ]; do
            sleep 1
            i=$((i + 1))
        done
        kill -KILL "$1"
    ) >/dev/null 2>&1 &
    WATCHDOG_PID=$!
    if wait "$1"; then WAIT_RC=0; else WAIT_RC=$?; fi
    kill "$WATCHDOG_PID" 2>/dev/null || true
    WATCHDOG_PID=
}

# The runner splits executable_name on spaces, so the executor path must not
# hold one: link it into the work directory when it does.
case $EXECUTOR in
    *" "*)
        ln -s "$EXECUTOR" "$WORK/example-executor"
        EXECUTOR=$WORK/example-executor
        ;;
esac
case $EXECUTOR in
    *" "*) fail "the executor path must not contain spaces: $EXECUTOR (set TMPDIR)" ;;
esac

step "Work directory: $WORK"

step "Starting flo-devserver"
"$DEVSERVER" serve --listen 127.0.0.1:0 --registration-code demo-code --long-poll-secs 5 \
    >"$WORK/devserver.out" 2>"$WORK/devserver.log" &
DEV_PID=$!

URL=
i=0
while [ "$i" -lt 50 ]; do
    line=$(head -n 1 "$WORK/devserver.out" 2>/dev/null || true)
    case $line in
        "flo-devserver listening on "*)
            URL=${line#flo-devserver listening on }
            break
            ;;
    esac
    sleep 0.2
    i=$((i + 1))
done
[ -n "$URL" ] || fail "flo-devserver did not report its address within 10 s"
echo "control plane at $URL"

step "Writing $WORK/config.json"
mkdir -p "$WORK/state" "$WORK/executions"
cat >"$WORK/config.json" <<EOF
{
  "runner": {
    "name": "demo-runner",
    "url": "$(json_escape "$URL")",
    "registration_code": "demo-code",
    "checkin_timeout": 1
  },
  "execution": {
    "max_concurrent_executors": 2,
    "state_directory": "$(json_escape "$WORK/state/")",
    "execution_directory": "$(json_escape "$WORK/executions")",
    "executable_name": "$(json_escape "$EXECUTOR")"
  }
}
EOF
cat "$WORK/config.json"

step "Starting flo-runner"
(cd "$WORK" && exec "$RUNNER" --config "$WORK/config.json") >"$WORK/runner.log" 2>&1 &
RUNNER_PID=$!

step "Enqueueing examples/flows/hello.flow"
ID=$("$DEVSERVER" enqueue --server "$URL" --flow "$FLOW" --trigger-data '{"greeting":"hi"}') ||
    fail "flo-devserver enqueue failed"
[ -n "$ID" ] || fail "flo-devserver enqueue printed no execution id"
echo "execution id: $ID"

step "Waiting for the result (up to 60 s)"
if RESULT=$("$DEVSERVER" show --server "$URL" "$ID" --wait 60); then
    printf '%s\n' "$RESULT"
else
    printf '%s\n' "$RESULT"
    fail "flo-devserver show did not report a finished execution"
fi
case $RESULT in
    *"Hello from flo-runner"*) ;;
    *) fail "the executor's log line is missing from the result" ;;
esac
if printf '%s\n' "$RESULT" | grep -Eq '"has_errored": ?true'; then
    fail "the execution errored"
fi

step "Execution directory"
ls -lR "$WORK/executions"
STATE=$(find "$WORK/executions" -name state.json | head -n 1)
[ -n "$STATE" ] || fail "no state.json in $WORK/executions"
printf '\nstate.json written by the executor:\n'
cat "$STATE"
echo

step "Stopping flo-runner"
kill -TERM "$RUNNER_PID" 2>/dev/null || true
wait_bounded "$RUNNER_PID" 30
RUNNER_PID=
[ "$WAIT_RC" = 0 ] || fail "flo-runner exited with status $WAIT_RC after SIGTERM"
echo "flo-runner exited cleanly"

step "Stopping flo-devserver"
kill -TERM "$DEV_PID" 2>/dev/null || true
wait_bounded "$DEV_PID" 10
DEV_PID=

FAILED=0
step "Demo finished successfully"
