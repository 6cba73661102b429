# flo-runner: the two commands a new machine needs are `make demo` and `make test`.
CARGO ?= cargo

.PHONY: all build release demo test lint fmt bench clean

all: build

build:
	$(CARGO) build --bins --examples

release:
	$(CARGO) build --release --bins --examples

## Dev control plane + runner + example executor + hello.flow, end to end on loopback.
demo: release
	sh examples/demo.sh

## Unit and integration tests (real binaries, real subprocesses, loopback only).
test:
	$(CARGO) build --bins --examples
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

bench: release
	sh bench/output_rss.sh

clean:
	$(CARGO) clean
