# edgeloader: the two commands are `make run` and `make test`.
# Both bootstrap what they need: a virtual environment with the locked
# dependencies, the Rust extension, and (for tests, as root) the podman and Docker engines.

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEPS_STAMP := $(VENV)/.deps-installed
EXT_STAMP := $(VENV)/.ext-built
PY_SOURCES := src publisher/src tests bench
RUST_SOURCES := $(shell find rust_core/src -name '*.rs') rust_core/Cargo.toml Cargo.toml Cargo.lock

.PHONY: bench-functions fuzz run test lint check-rust test-rust test-python bench bench-crypto bench-service \
	engine dev lock wheel clean help

help:  ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t18

$(DEPS_STAMP): requirements/dev.lock publisher/pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required" >&2; exit 1; }
	@command -v cargo >/dev/null || { echo "cargo is required (rustup)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.lock
	# The publisher distribution (publisher/): tests and `make run` need it.
	$(BIN)/python -m pip install --quiet --no-deps -e ./publisher
	touch $@

$(EXT_STAMP): $(DEPS_STAMP) $(RUST_SOURCES) pyproject.toml
	$(BIN)/maturin develop --release --quiet
	touch $@

dev: $(EXT_STAMP)  ## Set up the virtual environment and build the extension

engine:  ## Install podman, docker.io, runc and busybox-static for the engine tests (root)
	bash scripts/install-engine.sh

run: dev  ## Start the full local stack and the loader in the foreground
	@bash scripts/install-engine.sh || echo "make run: continuing without the engine (unlock disabled)"
	$(BIN)/python -m tests.support.devstack

lint: dev  ## ruff, mypy, stubtest, cargo fmt and clippy
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/mypy $(PY_SOURCES)
	$(BIN)/python -m mypy.stubtest edgeloader._core
	cargo fmt --all --check
	cargo clippy --locked --all-targets --features python -- -D warnings

test-rust:  ## cargo test on the pure core, with the native and the portable AES backend
	cargo test --locked
	# The portable run: the aes crate's soft backend and AWS-LC's C-only GCM.
	RUSTFLAGS='--cfg aes_backend="soft"' AWS_LC_SYS_NO_ASM=1 AWS_LC_SYS_CMAKE_BUILDER=0 \
		CARGO_TARGET_DIR=target/soft-aes cargo test --locked

test-python: dev engine  ## pytest: unit and integration tests (S3 via moto, engines: podman and Docker)
	$(BIN)/pytest

# The stages of `make test`, in order; each one's time is printed.
TEST_STAGES := dev engine lint test-rust fuzz test-arm64 test-python

test:  ## Everything CI runs, printing each stage's time
	@set -e; all=$$(date +%s); \
	for stage in $(TEST_STAGES); do \
	  start=$$(date +%s); \
	  $(MAKE) --no-print-directory $$stage; \
	  echo "== make test: $$stage took $$(( $$(date +%s) - start )) s"; \
	done; \
	echo "== make test: all stages took $$(( $$(date +%s) - all )) s"

FUZZ_TARGETS := v2_decrypt v2_tamper v1_decrypt v2_length segment_gate
FUZZ_SECONDS ?= 20

fuzz:  ## Fuzz the core's readers, FUZZ_SECONDS per target (stable toolchain, no sanitizer)
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && cargo fuzz build -s none
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  cargo fuzz run -s none $$t -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

bench-crypto: dev  ## Cipher throughput against openssl and cryptography
	$(BIN)/python bench/bench_crypto.py

# A second S3 server for P2: moto reads a whole object for every ranged GET,
# s3s-fs (crates.io) seeks its file. Only the service benchmarks need it.
# 0.14.1: the newest release that builds with rustc 1.95.
S3S_FS_VERSION := 0.14.1
S3S_FS := .cache/s3s-fs/bin/s3s-fs

$(S3S_FS):
	cargo install --locked --quiet s3s-fs@$(S3S_FS_VERSION) --features binary --root .cache/s3s-fs

bench-service: dev engine $(S3S_FS)  ## P2 (loads vs raw S3 GETs), P4 (signed loads), P3 (unlock vs each engine's own load); ARGS=--quick
	$(BIN)/python -m bench.service --s3s-fs $(S3S_FS) $(ARGS)

bench-functions: dev engine  ## Function runs (invoke latency, throughput) vs podman run --rm and docker run --rm
	$(BIN)/python -m bench.bench_functions $(ARGS)

bench: bench-crypto bench-service bench-functions  ## All benchmarks

wheel: $(DEPS_STAMP)  ## Build a release wheel into dist/
	$(BIN)/maturin build --release --locked -o dist

# ARM64: the aarch64 wheel cross-built here, its tests run under qemu-user
# (docs/deployment.md). Both install what they need when run as root.
.PHONY: wheel-arm64 test-arm64
ARM64_MANYLINUX ?= manylinux_2_31

wheel-arm64:  ## Cross-build the aarch64 abi3 wheel into dist/ (manylinux_2_31, checked)
	ARM64_MANYLINUX=$(ARM64_MANYLINUX) PYTHON=$(PYTHON) bash scripts/cross-arm64.sh

test-arm64: wheel-arm64  ## The core's Python tests on aarch64 under qemu-aarch64-static
	ARM64_MANYLINUX=$(ARM64_MANYLINUX) PYTHON=$(PYTHON) bash scripts/test-arm64.sh

lock:  ## Re-resolve requirements/dev.lock from requirements/dev.in
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -r requirements/dev.in
	{ echo "# Generated by 'make lock' from requirements/dev.in; do not edit by hand."; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > requirements/dev.lock
	rm -rf .lock-venv

clean:  ## Remove the environment and build outputs
	rm -rf $(VENV) target dist fuzz/target .pytest_cache .mypy_cache .ruff_cache
