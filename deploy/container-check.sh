#!/bin/sh
# The container image, built and run for real with podman (`make
# container-check`):
#
#   0. the base images: debian:bookworm-slim (debootstrap --variant=minbase
#      bookworm, imported) and rust:1-bookworm (the same plus gcc, libc6-dev,
#      pkg-config, the machine's CA certificates and this machine's Rust
#      toolchain), made locally when missing and kept in podman's storage
#      (there is no registry here; the names are the Dockerfile's FROM lines,
#      so the Dockerfile is built as committed);
#   1. the image built from the Dockerfile as committed (`podman build
#      --format docker`: podman's default OCI format drops HEALTHCHECK), once
#      as `docker build .` makes it (no executor) and once with the example
#      executor baked in through EXECUTOR_BINARY, against which every check
#      below runs;
#
# then, each printed as PASS or FAIL with the reason, against flo-devservers
# started on loopback (the containers use --network host):
#
#   docker-run   RUNNER_* variables, named volumes: an execution end to end
#   config       a config.json mounted at /usr/local/bin/config.json
#   hostile-name RUNNER_NAME with quotes, a newline, $(...), `...`, \ and *
#                reaches the API byte for byte and runs nothing
#   drain        `podman stop -t 60` while an execution runs: it finishes,
#                its result is reported, the container exits 0
#   health       the HEALTHCHECK is in the image and passes when run
#                (`podman healthcheck run`: podman schedules HEALTHCHECKs with
#                systemd timers, and without systemd as PID 1 nothing runs
#                them on their interval); `flo-runner health` passes, and
#                fails for a runner that cannot register
#   uid          every process in the container runs as uid/gid 10001
#   identity     a new container on the same named volumes is the same
#                runner (one runner in the dev server, registered twice)
#   read-only    --read-only root filesystem with the volumes and a /tmp tmpfs
#   kube         the StatefulSet's pod template (deploy/kubernetes/) run as a
#                Pod with `podman kube play` (podman does not run
#                StatefulSets), with its ConfigMap, Secret and probe command;
#                the container's `ports` are dropped (podman refuses port
#                mappings on the host's network), metrics are read on loopback
#
# Every container, pod, volume, secret and dev server the script makes is
# removed when it exits, whether the checks passed or not. The images stay:
# the two bases, the two tags localhost/flo-runner:container-check[-noexec],
# and podman's layer cache, so a second run builds nothing and a change under
# src/ rebuilds only the crate. When the bases are remade, the old cache
# becomes dangling images: `podman image prune` reclaims them.
#
# Usage: sh deploy/container-check.sh [--probe]
#   --probe   only tell whether podman can run a container here (exit 0), or
#             why not (exit 2); .ci/run uses it to decide whether to run this
#
# Environment:
#   CONTAINER_CHECK_MIRROR   Debian mirror for debootstrap (default: the
#                            bookworm mirror in /etc/apt/sources*, else
#                            http://deb.debian.org/debian)
#   CONTAINER_CHECK_REBUILD_BASES=1   remake the two base images
#   CONTAINER_CHECK_KEEP=1   keep the work directory (logs) after a pass
#   TARGET_DIR               cargo target directory for the host build of
#                            flo-devserver and the example executor (default target)
#
# Why these podman settings (found on this kind of machine): crun fails on
# this kernel's hybrid cgroup layout, so runc is the runtime; podman needs
# explicit nofile/nproc limits; without systemd as PID 1 the cgroup manager
# is cgroupfs and events go to a file. They are set in a containers.conf of
# the script's own (CONTAINERS_CONF), so `podman kube play` gets them too,
# and nothing in /etc/containers is changed.
#
# Exit status: 0 when every check passed, 1 when one failed or the image could
# not be built, 2 when podman cannot run here (the reason is printed).

set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

RUNTIME_BASE=debian:bookworm-slim
BUILDER_BASE=rust:1-bookworm
IMAGE=localhost/flo-runner:container-check
IMAGE_NOEXEC=localhost/flo-runner:container-check-noexec
# The executor baked into $IMAGE: a path in the build context that
# .dockerignore does not leave out, and .gitignore does.
EXEC_DIR=.container-check
CODE=container-check-code
P=flo-cc-$$

BIN_DIR=${TARGET_DIR:-target}/debug
case $BIN_DIR in
    /*) ;;
    *) BIN_DIR=$ROOT/$BIN_DIR ;;
esac
DEVSERVER=$BIN_DIR/flo-devserver
EXECUTOR=$BIN_DIR/examples/example-executor

WORK=$(mktemp -d "${TMPDIR:-/tmp}/flo-container-check.XXXXXX")
CONTAINERS=
VOLUMES=
PODS=
SECRETS=
DEV_PIDS=
passed=0
failed=0

say() { printf '%s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
now() { date +%s; }

cleanup() {
    rc=$?
    set +e
    for c in $CONTAINERS; do podman rm -f -v -t 0 "$c" >/dev/null 2>&1; done
    for p in $PODS; do
        # pod rm leaves the containers' anonymous volumes (emptyDirs) behind.
        for c in $(podman ps -aq --filter "pod=$p" 2>/dev/null); do
            podman rm -f -v -t 0 "$c" >/dev/null 2>&1
        done
        podman pod rm -f -t 0 "$p" >/dev/null 2>&1
    done
    for v in $VOLUMES; do podman volume rm -f "$v" >/dev/null 2>&1; done
    for s in $SECRETS; do podman secret rm "$s" >/dev/null 2>&1; done
    for pid in $DEV_PIDS; do kill "$pid" 2>/dev/null; done
    rm -rf "${ROOT:?}/$EXEC_DIR"
    if [ "${1:-}" = --probe ] || { [ "$rc" = 0 ] && [ "${CONTAINER_CHECK_KEEP:-0}" != 1 ]; }; then
        rm -rf "$WORK"
    else
        say "container-check: logs kept in $WORK" >&2
    fi
    exit "$rc"
}
MODE=${1:-}
trap 'cleanup "$MODE"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- podman settings -----------------------------------------------------------
# podman's default limits are refused here: the container's init cannot set
# them ("error setting rlimit type 7 (nofile) / type 6 (nproc): operation not
# permitted"). This machine's hard nofile limit is 20000, below podman's
# default of 1048576, and nproc was refused at 65536 and at this process's
# own hard limit, accepted at 32768. So both are set explicitly: this
# process's hard limits, at most 32768.
limit() {
    awk -v what="$1" '$0 ~ "^" what { n = $(NF - 1); if (n == "unlimited" || n > 32768) n = 32768; print n }' /proc/self/limits
}
NOFILE=$(limit 'Max open files')
NPROC=$(limit 'Max processes')
{
    printf '[containers]\n'
    printf 'default_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n' "$NOFILE" "$NOFILE" "$NPROC" "$NPROC"
    printf '[engine]\n'
    if have runc; then
        printf 'runtime = "runc"\n'
    fi
    if [ ! -d /run/systemd/system ]; then
        printf 'cgroup_manager = "cgroupfs"\n'
        printf 'events_logger = "file"\n'
    fi
} >"$WORK/containers.conf"
CONTAINERS_CONF=$WORK/containers.conf
export CONTAINERS_CONF

# Can podman run a container at all? A one-binary root filesystem (/bin/true
# and the libraries ldd names), so no image or registry is needed.
probe() {
    if ! have podman; then
        say "podman is not installed (apt-get install podman buildah runc debootstrap)"
        return 1
    fi
    if [ "$(id -u)" != 0 ]; then
        say "not root: the check uses rootful podman (debootstrap, --network host)"
        return 1
    fi
    r=$WORK/probe-root
    mkdir -p "$r/bin" "$r/proc" "$r/dev" "$r/sys"
    cp /bin/true "$r/bin/true"
    for lib in $(ldd /bin/true | sed -n 's/.*[[:space:]]\(\/[^[:space:]]*\)[[:space:]](0x.*/\1/p'); do
        mkdir -p "$r$(dirname "$lib")"
        cp -L "$lib" "$r$lib"
    done
    if ! out=$(timeout 120 podman run --rm --network host --rootfs "$r" /bin/true 2>&1); then
        say "podman cannot run a container here: $(printf '%s' "$out" | tail -n 3 | tr '\n' ' ')"
        return 1
    fi
    return 0
}

if [ "${1:-}" = --probe ]; then
    if out=$(probe); then
        say "podman can run containers ($(podman --version), runtime $(sed -n 's/^runtime = "\(.*\)"$/\1/p' "$CONTAINERS_CONF"))"
        exit 0
    fi
    say "$out"
    exit 2
fi

step "podman"
if ! out=$(probe); then
    say "container-check: CANNOT RUN: $out"
    exit 2
fi
say "$(podman --version); runtime: $(sed -n 's/^runtime = "\(.*\)"$/\1/p' "$CONTAINERS_CONF")"

# --- base images -----------------------------------------------------------------
debian_mirror() {
    if [ -n "${CONTAINER_CHECK_MIRROR:-}" ]; then
        say "$CONTAINER_CHECK_MIRROR"
        return
    fi
    python3 - <<'EOF'
import glob, re
mirror = None
for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(f).read()):
        fields = dict(re.findall(r"(?m)^([A-Za-z-]+):[ \t]*(.*)$", stanza))
        if "bookworm" in fields.get("Suites", "").split() and "deb" in fields.get("Types", "deb").split():
            mirror = mirror or fields.get("URIs", "").split()[0]
for f in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(f).read().splitlines()
    except OSError:
        continue
    for line in lines:
        m = re.match(r"\s*deb\s+(\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line + " ")
        if m:
            mirror = mirror or m.group(2)
print(mirror or "http://deb.debian.org/debian")
EOF
}

# The image names as the Dockerfile's FROM lines spell them, and their
# fully qualified forms, so that short-name resolution finds them locally.
tag_both() {
    podman tag "$1" "localhost/$2" "docker.io/library/$2"
}

make_runtime_base() {
    mirror=$(debian_mirror)
    say "debootstrap --variant=minbase bookworm from $mirror (once; kept as $RUNTIME_BASE)"
    rootfs=$WORK/rootfs
    if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 20 "$WORK/debootstrap.log"
        return 1
    fi
    # As the official slim image: deb822 sources with updates and security,
    # no documentation installed by later packages, no package lists kept.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # debuerreotype's apt settings, as in the official image: no package
    # caches (80 MB of pkgcache.bin and srcpkgcache.bin in every layer that
    # runs apt-get otherwise), no translations.
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    printf 'Acquire::Languages "none";\n' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    printf 'Acquire::GzipIndexes "true";\n' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
    printf 'APT::AutoRemove::SuggestsImportant "false";\n' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/cache/apt/"*.bin "$rootfs/var/cache/apt/archives/"*.deb \
        "$rootfs/usr/share/man/"* "$rootfs/usr/share/info/"* "$rootfs/usr/share/locale/"*
    find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
    tar -C "$rootfs" --numeric-owner -cf - . |
        podman import --change 'CMD ["bash"]' \
            --change "LABEL org.flomation.container-check=$RUNTIME_LABEL" \
            - "localhost/$RUNTIME_BASE" >/dev/null || return 1
    tag_both "localhost/$RUNTIME_BASE" "$RUNTIME_BASE"
    rm -rf "$rootfs"
}

make_builder_base() {
    sysroot=$(rustc --print sysroot) || return 1
    say "builder: $RUNTIME_BASE + gcc, libc6-dev, pkg-config, CA certificates, $(rustc --version) from $sysroot"
    mkdir -p "$WORK/builder"
    # The host's CA bundle: the registry may be reached through a TLS proxy
    # whose CA only the machine's bundle has.
    cp /etc/ssl/certs/ca-certificates.crt "$WORK/builder/host-ca-certificates.crt"
    cat >"$WORK/builder/Containerfile" <<EOF
FROM localhost/$RUNTIME_BASE
RUN apt-get update \\
    && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
COPY host-ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/rustup/toolchains/host /usr/local/cargo/bin \\
    && cd /mnt/toolchain \\
    && tar --exclude=./share/doc --exclude=./lib/rustlib/src -cf - . | tar -C /usr/local/rustup/toolchains/host -xf - \\
    && for b in cargo rustc rustdoc; do ln -s ../../rustup/toolchains/host/bin/\$b /usr/local/cargo/bin/\$b; done \\
    && cargo --version && rustc --version
LABEL org.flomation.container-check="$BUILDER_LABEL"
EOF
    if ! podman build --format docker --network host --pull=never -v "$sysroot:/mnt/toolchain:ro" \
        -t "localhost/$BUILDER_BASE" "$WORK/builder" >"$WORK/builder.log" 2>&1; then
        tail -n 20 "$WORK/builder.log"
        return 1
    fi
    tag_both "localhost/$BUILDER_BASE" "$BUILDER_BASE"
}

step "base images"
# What a base image made here says it is; one made by an older version of
# this script, or with another toolchain, is made again.
BASE_VERSION="container-check base 2"
RUNTIME_LABEL="debootstrap --variant=minbase bookworm; $BASE_VERSION"
BUILDER_LABEL="$RUNTIME_BASE + gcc, libc6-dev, pkg-config, $(rustc --version); $BASE_VERSION"
label_of() {
    podman image inspect --format '{{index .Labels "org.flomation.container-check"}}' "$1" 2>/dev/null || true
}
t0=$(now)
remade=0
if [ "${CONTAINER_CHECK_REBUILD_BASES:-0}" != 1 ] && [ "$(label_of "localhost/$RUNTIME_BASE")" = "$RUNTIME_LABEL" ]; then
    say "$RUNTIME_BASE: present ($RUNTIME_LABEL)"
else
    have debootstrap || { say "container-check: CANNOT RUN: debootstrap is not installed (apt-get install debootstrap)"; exit 2; }
    old=$(podman image inspect --format '{{.Id}}' "localhost/$RUNTIME_BASE" 2>/dev/null || true)
    make_runtime_base || { say "FAIL base image $RUNTIME_BASE (log: $WORK/debootstrap.log)"; exit 1; }
    remade=1
fi
if [ "$remade" = 0 ] && [ "$(label_of "localhost/$BUILDER_BASE")" = "$BUILDER_LABEL" ]; then
    say "$BUILDER_BASE: present ($BUILDER_LABEL)"
else
    oldb=$(podman image inspect --format '{{.Id}}' "localhost/$BUILDER_BASE" 2>/dev/null || true)
    make_builder_base || { say "FAIL base image $BUILDER_BASE (log: $WORK/builder.log)"; exit 1; }
    # The images they replace, unless something still uses them.
    for id in $oldb ${old:-}; do podman rmi "$id" >/dev/null 2>&1 || true; done
fi
say "base images ready in $(($(now) - t0)) s"

# --- the image --------------------------------------------------------------------
step "host build: flo-devserver and the example executor"
t0=$(now)
if ! cargo build --quiet --workspace --bin flo-devserver --example example-executor; then
    say "FAIL cargo build --workspace --bin flo-devserver --example example-executor"
    exit 1
fi
say "built in $(($(now) - t0)) s"

build_image() {
    tag=$1
    shift
    t0=$(now)
    if ! podman build --format docker --network host --pull=never "$@" -t "$tag" . >"$WORK/build-$tag_n.log" 2>&1; then
        tail -n 30 "$WORK/build-$tag_n.log"
        return 1
    fi
    say "$tag built in $(($(now) - t0)) s, $(podman image inspect --format '{{.Size}}' "$tag" |
        awk '{printf "%.1f MB", $1 / 1000000}')"
}

step "podman build --format docker . (the Dockerfile as committed)"
tag_n="noexec"
if ! build_image "$IMAGE_NOEXEC"; then
    say "FAIL podman build (log: $WORK/build-noexec.log)"
    exit 1
fi
rm -rf "${ROOT:?}/$EXEC_DIR"
mkdir -p "$ROOT/$EXEC_DIR"
cp "$EXECUTOR" "$ROOT/$EXEC_DIR/flomation-executor"
tag_n="exec"
if ! build_image "$IMAGE" --build-arg "EXECUTOR_BINARY=$EXEC_DIR/flomation-executor"; then
    say "FAIL podman build with EXECUTOR_BINARY (log: $WORK/build-exec.log)"
    exit 1
fi
rm -rf "${ROOT:?}/$EXEC_DIR"

# --- helpers for the checks ----------------------------------------------------------
REASON=
pass() {
    passed=$((passed + 1))
    say "PASS $1: $2"
}
fail() {
    failed=$((failed + 1))
    say "FAIL $1: $2"
}
# check NAME FUNCTION: the function returns 0 with $REASON saying what was
# shown, or non-zero with $REASON saying what went wrong.
check() {
    REASON=
    t0=$(now)
    if "$2"; then
        pass "$1" "$REASON ($(($(now) - t0)) s)"
    else
        fail "$1" "${REASON:-no reason given}"
    fi
}

# start_devserver NAME: sets URL.
start_devserver() {
    "$DEVSERVER" serve --listen 127.0.0.1:0 --registration-code "$CODE" --long-poll-secs 5 \
        >"$WORK/$1.out" 2>"$WORK/$1.log" &
    DEV_PIDS="$DEV_PIDS $!"
    URL=
    i=0
    while [ "$i" -lt 50 ]; do
        line=$(head -n 1 "$WORK/$1.out" 2>/dev/null || true)
        case $line in
            "flo-devserver listening on "*)
                URL=${line#flo-devserver listening on }
                return 0
                ;;
        esac
        sleep 0.2
        i=$((i + 1))
    done
    say "flo-devserver did not start: $(tail -n 5 "$WORK/$1.log")"
    return 1
}

# A JSON value from stdin: py EXPR, with the parsed document as d and the
# environment as env.
py() {
    python3 -c "import json, os, sys; d = json.load(sys.stdin); env = os.environ; print($1)"
}

admin() {
    curl -fsS --max-time 10 "$1/admin/$2"
}

# run_runner NAME ARGS...: podman run -d with the common options.
run_runner() {
    name=$1
    shift
    CONTAINERS="$CONTAINERS $name"
    podman run -d --name "$name" --network host "$@" >/dev/null 2>"$WORK/$name.run.err" || {
        REASON="podman run $name: $(tail -n 3 "$WORK/$name.run.err" | tr '\n' ' ')"
        return 1
    }
}

volume() {
    VOLUMES="$VOLUMES $1"
    podman volume create "$1" >/dev/null
}

logs_of() {
    podman logs "$1" 2>&1 | tail -n "${2:-15}" | sed 's/^/    | /'
}

# wait_runner URL NAME SECS [COUNT]: until a runner with that name has
# registered COUNT times (default 1).
wait_runner() {
    i=0
    while [ "$i" -lt "$3" ]; do
        n=$(admin "$1" runners 2>/dev/null |
            NAME=$2 py 'max([r["registration_count"] for r in d if r["name"] == env["NAME"]] or [0])' 2>/dev/null) || n=0
        [ "$n" -ge "${4:-1}" ] && return 0
        sleep 1
        i=$((i + 1))
    done
    return 1
}

# enqueue URL FLOWFILE: prints the execution id.
enqueue() {
    "$DEVSERVER" enqueue --server "$1" --flow "$2"
}

# run_flow URL FLOWFILE MARKER SECS: enqueue, wait for completion, require
# no error and MARKER in the result. Sets REASON on failure.
run_flow() {
    id=$(enqueue "$1" "$2") || {
        REASON="enqueue failed"
        return 1
    }
    if ! out=$("$DEVSERVER" show --server "$1" "$id" --wait "$4" 2>&1); then
        REASON="execution $id not completed within $4 s: $(printf '%s' "$out" | head -c 300 | tr '\n' ' ')"
        return 1
    fi
    res=$(admin "$1" "executions/$id" | MARK=$3 py '"ok" if d["status"] == "completed" and d["result"] and not d["result"].get("has_errored") and env["MARK"] in json.dumps(d) else "bad: status %s, has_errored %s" % (d["status"], (d["result"] or {}).get("has_errored"))') || res="unreadable"
    if [ "$res" != ok ]; then
        REASON="execution $id: $res"
        return 1
    fi
    LAST_ID=$id
}

exit_code() {
    podman inspect --format '{{.State.ExitCode}}' "$1"
}

# --- the checks -----------------------------------------------------------------------
HOSTILE_NAME=$(printf '%s\n%s' "-n it's \"quoted\" \$(touch /tmp/pwned-subst) \`touch /tmp/pwned-tick\` \\ ; * \$HOME" "second line")
HELLO=$ROOT/examples/flows/hello.flow
cat >"$WORK/drain.flow" <<'EOF'
{"nodes": [
  {"id": "start", "type": "log", "message": "drain-start"},
  {"id": "wait", "type": "sleep", "ms": 8000},
  {"id": "done", "type": "log", "message": "drain-done: finished during the stop"}
], "edges": []}
EOF

step "checks"
start_devserver dev-main || exit 1
URL_MAIN=$URL
A=$P-docker
volume "$P-state"
volume "$P-workspace"
# How the README runs it: docker run -d ... -e RUNNER_* -v state -v workspace.
DOCKER_RUN_ARGS="-e RUNNER_URL=$URL_MAIN -e RUNNER_REGISTRATION_CODE=$CODE -e RUNNER_CHECKIN_TIMEOUT=1
    -v $P-state:/home/flomation/state -v $P-workspace:/home/flomation/workspace"

check_docker_run() {
    # shellcheck disable=SC2086 # the options are split on purpose
    run_runner "$A" $DOCKER_RUN_ARGS -e "RUNNER_NAME=$HOSTILE_NAME" "$IMAGE" || return 1
    if ! wait_runner "$URL_MAIN" "$HOSTILE_NAME" 60; then
        REASON="the runner did not register within 60 s; its log:
$(logs_of "$A")"
        return 1
    fi
    run_flow "$URL_MAIN" "$HELLO" "Hello from flo-runner" 60 || return 1
    podman logs "$A" 2>&1 | grep -q 'Docker mode' || {
        REASON="the entrypoint did not say Docker mode"
        return 1
    }
    REASON="RUNNER_* variables, named volumes; registered, hello.flow ran end to end (execution $LAST_ID)"
}
check docker-run check_docker_run

check_hostile_name() {
    got=$(admin "$URL_MAIN" runners | NAME=$HOSTILE_NAME py 'sum(1 for r in d if r["name"] == env["NAME"])') || got=0
    if [ "$got" != 1 ]; then
        REASON="no runner registered under the exact name; names seen: $(admin "$URL_MAIN" runners | py '[r["name"] for r in d]')"
        return 1
    fi
    if podman exec "$A" sh -c 'ls /tmp/pwned-* 2>/dev/null' | grep -q .; then
        REASON="something in the name was run: $(podman exec "$A" ls /tmp)"
        return 1
    fi
    REASON="registered as $(printf '%s' "$HOSTILE_NAME" | python3 -c 'import json, sys; print(json.dumps(sys.stdin.read()))') byte for byte, nothing in it was run"
}
check hostile-name check_hostile_name

check_health() {
    hc=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")
    case $hc in
        *entrypoint.sh*health*) ;;
        *)
            REASON="the image has no HEALTHCHECK (was it built in OCI format?): $hc"
            return 1
            ;;
    esac
    if ! out=$(podman healthcheck run "$A" 2>&1); then
        REASON="podman healthcheck run: $out"
        return 1
    fi
    if ! out=$(podman exec "$A" flo-runner health 2>&1); then
        REASON="flo-runner health in a registered runner: $out"
        return 1
    fi
    # A runner that cannot register (a wrong code) must not look healthy.
    bad=$P-unhealthy
    run_runner "$bad" -e "RUNNER_URL=$URL_MAIN" -e RUNNER_REGISTRATION_CODE=wrong-code \
        -e RUNNER_NAME=unhealthy "$IMAGE" || return 1
    sleep 3
    if badout=$(podman exec "$bad" flo-runner health 2>&1); then
        REASON="flo-runner health passed for a runner with a wrong registration code: $badout"
        return 1
    fi
    podman rm -f -v -t 0 "$bad" >/dev/null 2>&1
    REASON="HEALTHCHECK kept in the image ($hc); podman healthcheck run: ${out:-healthy}; unhealthy with a wrong code: $(printf '%s' "$badout" | tail -n 1)"
}
check health check_health

check_uid() {
    user=$(podman inspect --format '{{.Config.User}}' "$A")
    ids=$(podman exec "$A" sh -c 'id -u; id -g; cat /proc/[0-9]*/status' 2>/dev/null |
        awk '/^Uid:|^Gid:/ { print $2, $3, $4, $5; next } /^[0-9]+$/ { print }' | tr ' ' '\n' | sort -u | tr '\n' ' ')
    procs=$(podman exec "$A" sh -c 'cat /proc/[0-9]*/comm' 2>/dev/null | sort -u | tr '\n' ' ')
    owners=$(podman exec "$A" find /home/flomation/state /home/flomation/workspace ! -uid 10001 2>&1 | head -n 3)
    if [ "$user" != 10001:10001 ] || [ "$ids" != "10001 " ] || [ -n "$owners" ]; then
        REASON="user '$user', uids/gids seen: '$ids' (processes: $procs), files not owned by 10001: '$owners'"
        return 1
    fi
    REASON="User 10001:10001; every uid and gid of every process ($procs) is 10001; the volumes' files belong to 10001"
}
check uid check_uid

check_drain() {
    id=$(enqueue "$URL_MAIN" "$WORK/drain.flow") || {
        REASON="enqueue failed"
        return 1
    }
    i=0
    while [ "$i" -lt 30 ]; do
        st=$(admin "$URL_MAIN" "executions/$id" | py 'd["status"]') || st=
        [ "$st" = running ] && break
        sleep 0.5
        i=$((i + 1))
    done
    if [ "$st" != running ]; then
        REASON="the execution did not start (status $st)"
        return 1
    fi
    t0=$(now)
    if ! out=$(timeout 90 podman stop -t 60 "$A" 2>&1); then
        REASON="podman stop -t 60: $out"
        return 1
    fi
    took=$(($(now) - t0))
    rc=$(exit_code "$A")
    res=$(admin "$URL_MAIN" "executions/$id" | py '"%s %s %s" % (d["status"], (d["result"] or {}).get("has_errored"), "drain-done" in json.dumps(d))') || res=unreadable
    if [ "$rc" != 0 ] || [ "$res" != "completed False True" ] || [ "$took" -ge 60 ]; then
        REASON="exit code $rc after $took s; execution: $res (want: completed False True); log:
$(logs_of "$A")"
        return 1
    fi
    REASON="stopped in $took s while an 8 s execution ran: it finished, its result was reported, exit code 0"
}
check drain check_drain

check_identity() {
    first=$(admin "$URL_MAIN" runners | NAME=$HOSTILE_NAME py '[r["identifier"] for r in d if r["name"] == env["NAME"]][0]') || first=
    podman rm -f "$A" >/dev/null 2>&1
    A2=$P-docker-again
    # shellcheck disable=SC2086
    run_runner "$A2" $DOCKER_RUN_ARGS -e "RUNNER_NAME=$HOSTILE_NAME" "$IMAGE" || return 1
    if ! wait_runner "$URL_MAIN" "$HOSTILE_NAME" 60 2; then
        REASON="the re-created container did not register again within 60 s:
$(logs_of "$A2")"
        return 1
    fi
    runners=$(admin "$URL_MAIN" runners | NAME=$HOSTILE_NAME py '"%d %s %d" % (len([r for r in d if r["name"] == env["NAME"]]), [r["identifier"] for r in d if r["name"] == env["NAME"]][0], [r["registration_count"] for r in d if r["name"] == env["NAME"]][0])')
    if [ "$runners" != "1 $first 2" ]; then
        REASON="want one runner $first registered twice, got (runners, identifier, registrations): $runners"
        return 1
    fi
    run_flow "$URL_MAIN" "$HELLO" "Hello from flo-runner" 60 || return 1
    REASON="container re-created on the same volumes: one runner ($first), registered twice, its key still accepted (execution $LAST_ID)"
}
check identity check_identity

check_config() {
    start_devserver dev-config || {
        REASON="no dev server"
        return 1
    }
    mkdir -p "$WORK/config"
    cat >"$WORK/config/config.json" <<EOF
{
  "runner": {"name": "container-check-config", "url": "$URL", "registration_code": "$CODE", "checkin_timeout": 1},
  "execution": {"max_concurrent_executors": 1}
}
EOF
    chmod 0644 "$WORK/config/config.json"
    B=$P-config
    run_runner "$B" -v "$WORK/config/config.json:/usr/local/bin/config.json:ro" "$IMAGE" || return 1
    if ! wait_runner "$URL" container-check-config 60; then
        REASON="the runner did not register within 60 s:
$(logs_of "$B")"
        return 1
    fi
    podman logs "$B" 2>&1 | grep -q 'using configuration file /usr/local/bin/config.json' || {
        REASON="the entrypoint did not pick up the mounted file:
$(logs_of "$B")"
        return 1
    }
    run_flow "$URL" "$HELLO" "Hello from flo-runner" 60 || return 1
    if ! out=$(podman exec "$B" entrypoint.sh check 2>&1); then
        REASON="entrypoint.sh check failed:
$(printf '%s\n' "$out" | sed 's/^/    | /')"
        return 1
    fi
    if ! out=$(podman exec "$B" entrypoint.sh health 2>&1); then
        REASON="entrypoint.sh health failed: $out"
        return 1
    fi
    REASON="config.json at /usr/local/bin/config.json: registered under its name, hello.flow ran (execution $LAST_ID), entrypoint.sh check and health pass"
}
check config check_config

check_read_only() {
    start_devserver dev-ro || {
        REASON="no dev server"
        return 1
    }
    D=$P-read-only
    # Docker's --read-only (podman's would add tmpfs on /run and /var/tmp too).
    volume "$P-ro-state"
    volume "$P-ro-workspace"
    run_runner "$D" --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,nosuid,nodev,mode=1777 \
        -v "$P-ro-state:/home/flomation/state" -v "$P-ro-workspace:/home/flomation/workspace" \
        -e "RUNNER_URL=$URL" -e "RUNNER_REGISTRATION_CODE=$CODE" -e RUNNER_NAME=container-check-ro \
        -e RUNNER_CHECKIN_TIMEOUT=1 "$IMAGE" || return 1
    if ! wait_runner "$URL" container-check-ro 60; then
        REASON="the runner did not register within 60 s:
$(logs_of "$D")"
        return 1
    fi
    run_flow "$URL" "$HELLO" "Hello from flo-runner" 60 || return 1
    if out=$(podman exec "$D" touch /usr/local/bin/x 2>&1); then
        REASON="the root filesystem is writable"
        return 1
    fi
    REASON="--read-only, named state and workspace volumes, a /tmp tmpfs: hello.flow ran (execution $LAST_ID); writing to / fails ($out)"
}
check read-only check_read_only

check_kube() {
    start_devserver dev-kube || {
        REASON="no dev server"
        return 1
    }
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    pod=$P-flo-runner-0
    # The pod template as a Pod, the ConfigMap, and the Secret as a podman
    # secret (what secretKeyRef reads in podman), named after this run so
    # that nothing clashes with other users of the machine.
    if ! URL=$URL POD=$pod PREFIX=$P IMAGE=$IMAGE PORT=$port CODE=$CODE python3 - "$WORK" <<'EOF' >"$WORK/kube.err" 2>&1; then
import base64, json, os, sys, yaml

work = sys.argv[1]
env = os.environ
load = lambda name: list(yaml.safe_load_all(open("deploy/kubernetes/" + name)))[0]
sts, cm, secret = load("statefulset.yaml"), load("configmap.yaml"), load("secret.yaml")
cm_name, secret_name = env["PREFIX"] + "-" + cm["metadata"]["name"], env["PREFIX"] + "-" + secret["metadata"]["name"]

config = json.loads(cm["data"]["config.json"])
config["runner"]["url"] = env["URL"]
config["runner"]["checkin_timeout"] = 1
config["runner"]["metrics_listen"] = "127.0.0.1:" + env["PORT"]
cm["metadata"]["name"] = cm_name
cm["data"]["config.json"] = json.dumps(config, indent=2)

template = sts["spec"]["template"]
spec = template["spec"]
for c in spec["containers"]:
    c["image"] = env["IMAGE"]
    # On the host's network (to reach the dev server on loopback) podman
    # refuses port mappings ("PortMappings can only be used with Bridge or
    # slirp4netns networking"); the metrics port is reached on loopback.
    c.pop("ports", None)
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            ref["name"] = secret_name
for v in spec["volumes"]:
    if "configMap" in v:
        v["configMap"]["name"] = cm_name
# Each volumeClaimTemplate becomes the claim the StatefulSet controller would
# make for replica 0 (podman makes a named volume for it).
for t in sts["spec"]["volumeClaimTemplates"]:
    spec["volumes"].append({"name": t["metadata"]["name"],
                            "persistentVolumeClaim": {"claimName": env["PREFIX"] + "-" + t["metadata"]["name"] + "-flo-runner-0"}})
pod = {"apiVersion": "v1", "kind": "Pod",
       "metadata": dict(template.get("metadata", {}), name=env["POD"]),
       "spec": spec}
with open(os.path.join(work, "pod.yaml"), "w") as f:
    yaml.safe_dump_all([cm, pod], f, sort_keys=False)
# podman 4.3 reads a secretKeyRef from the podman secret of that name, as
# JSON: {key: base64 value}, the Secret's data.
with open(os.path.join(work, "secret.json"), "w") as f:
    json.dump({k: base64.b64encode(env["CODE"].encode()).decode() for k in secret["stringData"]}, f)
print(secret_name)
EOF
        REASON="could not make the Pod manifest: $(tail -n 3 "$WORK/kube.err")"
        return 1
    fi
    sname=$(tail -n 1 "$WORK/kube.err")
    SECRETS="$SECRETS $sname"
    podman secret create "$sname" "$WORK/secret.json" >/dev/null 2>"$WORK/secret.err" || {
        REASON="podman secret create: $(cat "$WORK/secret.err")"
        return 1
    }
    PODS="$PODS $pod"
    # The claim's volume, and the one podman makes for the ConfigMap.
    VOLUMES="$VOLUMES $P-state-flo-runner-0 $P-flo-runner-config"
    if ! out=$(timeout 120 podman kube play --network host "$WORK/pod.yaml" 2>&1); then
        REASON="podman kube play: $(printf '%s' "$out" | tail -n 5)"
        return 1
    fi
    ctr=$pod-flo-runner
    if ! wait_runner "$URL" "$pod" 60; then
        REASON="the pod's runner did not register as $pod within 60 s:
$(logs_of "$ctr")"
        return 1
    fi
    run_flow "$URL" "$HELLO" "Hello from flo-runner" 60 || return 1
    podman logs "$ctr" 2>&1 | grep -q 'using configuration file /etc/flo-runner/config.json' || {
        REASON="the runner did not use the ConfigMap's file:
$(logs_of "$ctr")"
        return 1
    }
    if ! out=$(podman exec "$ctr" /usr/local/bin/flo-runner health 2>&1); then
        REASON="the probes' command (flo-runner health) fails: $out"
        return 1
    fi
    healthz=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port/healthz") || healthz=none
    uid=$(podman exec "$ctr" id -u)
    capeff=$(podman exec "$ctr" sh -c 'sed -n "s/^CapEff:[[:space:]]*//p" /proc/1/status')
    if podman exec "$ctr" touch /usr/local/bin/x >/dev/null 2>&1; then
        REASON="readOnlyRootFilesystem: the root filesystem is writable"
        return 1
    fi
    if [ "$healthz" != 200 ] || [ "$uid" != 10001 ] || [ "$capeff" != 0000000000000000 ]; then
        REASON="/healthz answered $healthz, uid $uid, effective capabilities $capeff"
        return 1
    fi
    REASON="pod template as Pod $pod: ConfigMap file, Secret code, claim volume; registered under the pod name, hello.flow ran (execution $LAST_ID), flo-runner health and /healthz pass, uid 10001, no capabilities, read-only root"
}
check kube check_kube

size=$(podman image inspect --format '{{.Size}}' "$IMAGE_NOEXEC" | awk '{printf "%.1f MB", $1 / 1000000}')
printf '\ncontainer-check: %d passed, %d failed; image %s (without executor): %s\n' "$passed" "$failed" "$IMAGE_NOEXEC" "$size"
[ "$failed" = 0 ]
