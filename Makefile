# Belfry: `make run` starts the hub; `make test` runs everything. Both install what is
# missing first (scripts/setup.sh).

CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
DATA_DIR ?= $(CURDIR)/belfry-data
LISTEN ?= 127.0.0.1:8080
PATH := $(HOME)/.cargo/bin:$(PATH)
export PATH

.PHONY: run hub test setup setup-test build test-rust test-interop test-fuzz bench bench-quick fuzz soak fmt lint clean-data screenshot

## run: the hub on its embedded SQLite (./belfry-data) and the tray app connected to it
run: setup
	DATA_DIR=$(DATA_DIR) LISTEN=$(LISTEN) bash scripts/run.sh

## hub: the hub alone
hub: setup
	$(CARGO) build --release -p belfry-server
	$(CARGO_TARGET_DIR)/release/belfry-server serve --data-dir $(DATA_DIR) --listen $(LISTEN)

## test: every test (Rust unit and integration tests, including the crash, network-fault,
## slow-consumer and security suites; the JavaScript client interop test; each fuzz target
## for FUZZ_SECONDS; the load scenarios in their quick mode, so they keep working)
test: setup-test test-rust test-interop test-fuzz bench-quick

setup:
	@bash scripts/setup.sh

setup-test:
	@bash scripts/setup.sh --test

build:
	$(CARGO) build --workspace --all-targets

# Every cargo command of the test run names the whole workspace (`--workspace`), so the
# dependencies are built once with one set of features.
test-rust:
	$(CARGO) test --workspace
	# The hub's suites once more on PostgreSQL (each test binary starts its own server).
	BELFRY_TEST_STORE=postgres $(CARGO) test --workspace --test api --test delivery --test security
	# Upstream's own suite of the patched Engine.IO (third_party/README.md); it needs the
	# crate's test harness feature, which rebuilds that one crate and nothing else.
	$(CARGO) test --workspace --features engineioxide/__test_harness --test disconnect_reason \
		--test duplicate_pong --test invalid_sid --test peek_packet --test req_path --test volatile

test-interop:
	$(CARGO) build --workspace
	cd tests/interop && BELFRY_SERVER_BIN=$(CARGO_TARGET_DIR)/debug/belfry-server npm test
	cd bench/peer-node && npm test

test-fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-20} bash scripts/fuzz.sh

## bench-quick: every benchmark scenario at CI sizes against the debug hub and the Node
## peer, and the soak in quick mode (the figures are not benchmarks there: they only show
## the suite runs end to end); the report goes to a scratch directory
bench-quick: setup-test
	$(CARGO) build --workspace
	$(CARGO_TARGET_DIR)/debug/belfry-bench all --quick --out $(CARGO_TARGET_DIR)/bench-quick
	$(CARGO_TARGET_DIR)/debug/belfry-bench soak --quick

## bench: the full benchmark suite against the release hub (on SQLite, on PostgreSQL, and
## three nodes on PostgreSQL and Redis) and the Node peer; rewrites docs/BENCHMARKS.md and
## its charts (docs/bench/)
bench: setup-test
	$(CARGO) build --release -p belfry-server -p belfry-bench -p belfry-desktop -p belfry-empty-tray
	$(CARGO_TARGET_DIR)/release/belfry-bench all --out docs

## fuzz: each fuzz target for five minutes
fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-300} bash scripts/fuzz.sh

## soak: 10,000 connections and steady publishing for 10 minutes against the release hub;
## fails if its memory grows more than 5 % after the warm-up or anything is lost
soak: setup
	$(CARGO) build --release -p belfry-server -p belfry-bench
	$(CARGO_TARGET_DIR)/release/belfry-bench soak $(SOAK_ARGS)

fmt:
	$(CARGO) fmt --all

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## screenshot: the window's UI test once more, saving its screenshot as docs/screenshot.png
## (a plain test run leaves the tree as it found it)
screenshot: setup-test
	BELFRY_SCREENSHOT=$(CURDIR)/docs/screenshot.png $(CARGO) test --workspace --test ui

## clean-data: forget the local hub's notifications and secrets
clean-data:
	rm -rf $(DATA_DIR)
