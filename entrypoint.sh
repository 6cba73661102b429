#!/bin/sh
# flo-runner container entrypoint.
#
# Two modes, chosen by whether a configuration file is present:
#
#   Kubernetes mode: $FLO_RUNNER_CONFIG names a file, or a file is mounted at
#     /usr/local/bin/config.json (where the Go runner's image expects it).
#     The runner is started with `--config <file>`; environment variables
#     (for example FLOMATION_REGISTRATION_CODE from a Secret) still override it.
#
#   Docker mode: no file. RUNNER_NAME, RUNNER_URL and RUNNER_REGISTRATION_CODE
#     (or their FLOMATION_* equivalents) must be set; the runner reads them, and
#     every other RUNNER_*, EXECUTOR_*, FLOMATION_* and MTLS_* variable, itself.
#     Nothing is pasted into a JSON file, so any character in a value is safe.
#
# Arguments: `health` or `check` (with their options) run that subcommand
# against the same configuration; `--help`/`--version` are passed straight
# through; any other arguments are appended to the runner's command line.
#
# The binary is `exec`ed, so it receives SIGTERM from `docker stop` or the
# kubelet directly (tini, PID 1 in the image, forwards it). No value of any
# variable is ever printed: the registration code stays out of the logs.
#
# For tests: FLO_RUNNER_BIN (default /usr/local/bin/flo-runner) and
# FLO_RUNNER_MOUNTED_CONFIG (default /usr/local/bin/config.json).

set -eu

BIN=${FLO_RUNNER_BIN:-/usr/local/bin/flo-runner}
MOUNTED_CONFIG=${FLO_RUNNER_MOUNTED_CONFIG:-/usr/local/bin/config.json}

say() {
    printf 'entrypoint: %s\n' "$*" >&2
}

usage() {
    cat >&2 <<'EOF'

flo-runner needs either a configuration file or these environment variables.

Required (Docker mode, no config file):
  RUNNER_NAME                  name shown in Flomation   (or FLOMATION_RUNNER_NAME)
  RUNNER_URL                   API base URL, e.g. https://api.flomation.app
                                                         (or FLOMATION_API)
  RUNNER_REGISTRATION_CODE     registration code issued by Flomation
                                                         (or FLOMATION_REGISTRATION_CODE)

Optional:
  RUNNER_CHECKIN_TIMEOUT                seconds between idle polls (default 5)
  EXECUTOR_MAX_CONCURRENT               executions run at once (default 1)
  EXECUTOR_DIRECTORY                    execution directories (image: /home/flomation/workspace)
  FLOMATION_RUNNER_STATE_DIRECTORY      identifier, key, outbox (image: /home/flomation/state/)
  FLOMATION_RUNNER_CERTIFICATE_PATH     private key (image: /home/flomation/state/flomation-runner.pem)
  FLOMATION_RUNNER_EXECUTABLE_NAME      executor command (default flomation-executor)
  FLOMATION_RUNNER_TIMEOUT_SECS         per-execution time limit, 0 = none (default 0)
  FLOMATION_RUNNER_SHUTDOWN_GRACE_SECS  time running executions get on stop (default 30)
  FLOMATION_RUNNER_METRICS_LISTEN       host:port for /metrics and /healthz (default off)
  MTLS_ENABLED, MTLS_CA_CERT, MTLS_CERT, MTLS_KEY, MTLS_API_URL   TLS settings
  RUST_LOG                              log level (default info)
  (every setting is listed in the README's configuration table)

Or mount a config.json at /usr/local/bin/config.json, or anywhere and set
FLO_RUNNER_CONFIG to its path.

Example:
  docker run -d --name flo-runner --stop-timeout 60 \
    -e RUNNER_NAME='My Runner' \
    -e RUNNER_URL='https://api.flomation.app' \
    -e RUNNER_REGISTRATION_CODE='your-registration-code' \
    -v flo-runner-state:/home/flomation/state \
    -v flo-runner-workspace:/home/flomation/workspace \
    flo-runner:latest
EOF
}

# The configuration file, if there is one: an explicit FLO_RUNNER_CONFIG wins
# over the mounted file. An explicit path that does not exist is an error
# rather than a silent fall back to Docker mode.
CONFIG=
if [ -n "${FLO_RUNNER_CONFIG:-}" ]; then
    if [ ! -f "$FLO_RUNNER_CONFIG" ]; then
        say "FLO_RUNNER_CONFIG names $FLO_RUNNER_CONFIG, which is not a file (is the volume mounted?)"
        exit 1
    fi
    CONFIG=$FLO_RUNNER_CONFIG
elif [ -f "$MOUNTED_CONFIG" ]; then
    CONFIG=$MOUNTED_CONFIG
fi

if [ ! -x "$BIN" ]; then
    say "$BIN is missing or not executable"
    exit 127
fi

case "${1:-}" in
    health | check)
        # Same configuration as the running runner, so it finds the same
        # state directory. No variable check: the subcommand reports problems.
        cmd=$1
        shift
        if [ -n "$CONFIG" ]; then
            exec "$BIN" "$cmd" --config "$CONFIG" "$@"
        fi
        exec "$BIN" "$cmd" "$@"
        ;;
    -h | --help | -V | --version)
        exec "$BIN" "$@"
        ;;
esac

if [ -n "$CONFIG" ]; then
    say "using configuration file $CONFIG (Kubernetes mode)"
    exec "$BIN" --config "$CONFIG" "$@"
fi

missing=
[ -n "${RUNNER_NAME:-}${FLOMATION_RUNNER_NAME:-}" ] || missing="$missing RUNNER_NAME"
[ -n "${RUNNER_URL:-}${FLOMATION_API:-}" ] || missing="$missing RUNNER_URL"
[ -n "${RUNNER_REGISTRATION_CODE:-}${FLOMATION_REGISTRATION_CODE:-}" ] ||
    missing="$missing RUNNER_REGISTRATION_CODE"

if [ -n "$missing" ]; then
    say "no configuration file at $MOUNTED_CONFIG and FLO_RUNNER_CONFIG is not set (Docker mode),"
    say "but these required variables are missing or empty:$missing"
    usage
    exit 1
fi

say "no configuration file; the runner reads its settings from the environment (Docker mode)"
exec "$BIN" "$@"
