# flo-runner container image.
#
#   docker build -t flo-runner .
#   docker build -t flo-runner --build-arg EXECUTOR_BINARY=path/to/flomation-executor .
#
# Works with BuildKit and with the legacy builder (no RUN --mount, no
# COPY --chmod). See "Deployment" in README.md.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------
# Build the runner. Only the files cargo needs are copied (the lock file is
# honoured with --locked), so a change to the docs or manifests does not
# invalidate these layers.
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The patched tiny_http (the runner's /metrics uses it).
COPY vendor ./vendor
# The workspace's other members: cargo loads every member's manifest, but
# builds only the runner and the protocol crate it depends on. The dev server
# and the test kit name their targets' paths, which cargo looks for only
# when it builds them, so their manifests are all this stage needs of them.
COPY crates/protocol/Cargo.toml ./crates/protocol/
COPY crates/devserver/Cargo.toml ./crates/devserver/
COPY crates/testkit/Cargo.toml ./crates/testkit/
# The dependencies, in a layer of their own that only the manifests,
# Cargo.lock and vendor/ invalidate: built against stub sources. The stubs'
# own artifacts and fingerprints are then removed, so the real sources below
# are always compiled, whatever their timestamps.
RUN mkdir -p src crates/protocol/src \
    && echo 'fn main() {}' >src/main.rs \
    && : >src/lib.rs \
    && : >crates/protocol/src/lib.rs \
    && cargo build --release --locked -p flo-runner --bin flo-runner \
    && rm -rf src crates/protocol/src target/release/flo-runner* \
        target/release/.fingerprint/flo-runner-* target/release/.fingerprint/flo-protocol-* \
        target/release/deps/flo_runner-* target/release/deps/libflo_runner-* \
        target/release/deps/flo_protocol-* target/release/deps/libflo_protocol-*
COPY crates/protocol/src ./crates/protocol/src
COPY src ./src
RUN cargo build --release --locked -p flo-runner --bin flo-runner \
    && install -D -m 0755 target/release/flo-runner /out/flo-runner

# ---------------------------------------------------------------------------
# Stage the files for /usr/local/bin: the entrypoint, and the executor when
# one is given.
#
# Making the executor optional with a plain COPY: a COPY whose source does not
# exist fails the build, and an empty ARG would leave COPY without a source.
# So EXECUTOR_BINARY defaults to deploy/docker/executor/, a directory that is
# always in the repository (it holds only a README). COPY puts a file given by
# the argument, or the contents of a directory, into /staging/; the RUN below
# installs the one file found there (README.md aside) as flomation-executor,
# or nothing when there is none. /out/ may therefore be empty, and copying an
# empty directory's contents in the final stage is a no-op.
FROM ${RUNTIME_IMAGE} AS assemble
ARG EXECUTOR_BINARY=deploy/docker/executor/
COPY ${EXECUTOR_BINARY} /staging/
COPY entrypoint.sh /staging-entrypoint/entrypoint.sh
RUN set -eu; \
    mkdir -p /out; \
    install -m 0755 /staging-entrypoint/entrypoint.sh /out/entrypoint.sh; \
    found=; \
    for f in /staging/*; do \
        [ -f "$f" ] || continue; \
        [ "${f##*/}" = README.md ] && continue; \
        if [ -n "$found" ]; then \
            echo "EXECUTOR_BINARY: more than one file in the executor directory: $found, $f" >&2; \
            exit 1; \
        fi; \
        found=$f; \
    done; \
    if [ -n "$found" ]; then \
        install -m 0755 "$found" /out/flomation-executor; \
        echo "executor: $found -> /usr/local/bin/flomation-executor"; \
    else \
        echo "executor: none given (EXECUTOR_BINARY); the image has no executor"; \
    fi

# ---------------------------------------------------------------------------
# Runtime image.
FROM ${RUNTIME_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="flo-runner" \
      org.opencontainers.image.description="Worker agent for the Flomation API: registers, polls, runs flows with the executor, reports results" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="Flomation" \
      org.opencontainers.image.url="https://flomation.app" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# ca-certificates: the system CA store for https:// API URLs.
# tini: PID 1 that forwards SIGTERM to the runner and reaps the orphans that
# flows may leave behind (an executor's grandchildren re-parent to PID 1).
# Versions are not pinned: bookworm only ships security fixes for these, and a
# rebuild should pick them up.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid (10001) so that volume ownership, Kubernetes runAsUser and
# fsGroup all agree.
RUN groupadd --system --gid 10001 flomation \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/flomation \
        --create-home --shell /usr/sbin/nologin flomation \
    && mkdir -p /home/flomation/workspace /home/flomation/state \
    && chown 10001:10001 /home/flomation/workspace /home/flomation/state \
    && chmod 0750 /home/flomation/workspace /home/flomation/state

COPY --from=builder /out/ /usr/local/bin/
COPY --from=assemble /out/ /usr/local/bin/

# Environment variables override config.json (see the README), so these
# defaults hold in both Docker and Kubernetes mode; change them with -e/env.
ENV FLOMATION_RUNNER_STATE_DIRECTORY=/home/flomation/state/ \
    FLOMATION_RUNNER_CERTIFICATE_PATH=/home/flomation/state/flomation-runner.pem \
    EXECUTOR_DIRECTORY=/home/flomation/workspace

# state: runner identifier, private key, outbox, journal, heartbeat; losing it
# makes a new runner. workspace: per-execution directories (scratch).
VOLUME ["/home/flomation/workspace", "/home/flomation/state"]

USER 10001:10001
WORKDIR /home/flomation

# SIGTERM: stop polling, let running executions finish for
# runner.shutdown_grace_secs (30 s by default), report, exit 0. Give
# `docker stop` enough time: docker stop -t 60 (or stop_grace_period: 60s).
STOPSIGNAL SIGTERM

# Asks the runner itself (heartbeat in the state directory: registered and the
# poll loop alive). Through the entrypoint so it uses the same configuration
# file as the runner, wherever it was mounted.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/entrypoint.sh", "health"]

ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/entrypoint.sh"]
CMD []
