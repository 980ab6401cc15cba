#!/usr/bin/env bash
# Runs every test: unit tests, KVM tests with the purpose-built guest, interop tests with
# the QEMU tools. KVM/QEMU tests skip with a printed reason where those are missing, unless
# VIREO_REQUIRE_KVM=1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --release -- --test-threads 2
