# flo-runner: the two commands a new machine needs are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build release demo test lint fmt bench chaos deploy-check container-check clean

all: build

build:
	$(CARGO) build --workspace --bins --examples

release:
	$(CARGO) build --workspace --release --bins --examples

## Dev control plane + runner + example executor + hello.flow, end to end on loopback.
demo: release
	sh examples/demo.sh

## Unit and integration tests (real binaries, real subprocesses, loopback only).
test: build
	$(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmark suite (benches/suite/, one module per measurement; method in BENCHMARKS.md): table on stdout, figures in bench/results.json.
bench: release
	$(CARGO) bench --bench suite

## Full chaos run: 6 runners x 4 slots, 300 executions, faults, a SIGKILLed runner.
chaos: build
	CHAOS_RUNNERS=6 CHAOS_SLOTS=4 CHAOS_EXECUTIONS=300 CHAOS_LIMIT_SECS=900 \
		$(CARGO) test --test integration chaos:: -- --nocapture

## Offline checks of the deployment files (shellcheck, hadolint, kubernetes-validate, systemd-analyze, entrypoint tests).
deploy-check:
	sh deploy/check.sh

## The image built with podman from the Dockerfile and run as users run it (docker-run mode, mounted config, drain, health, uid, volumes, --read-only, the StatefulSet's pod): needs root and podman.
container-check:
	sh deploy/container-check.sh

clean:
	$(CARGO) clean
