#!/usr/bin/env bash
# Sets everything up on a fresh machine and boots a demo VM, showing its console:
# installs packages, builds vireo (release), and boots the purpose-built test guest on
# 2 vCPUs with 256 MiB. The guest checks the virtual hardware, prints its findings, and
# powers off; vireo exits with the guest's status.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --bins
guest="$(cargo run -q --release -p vireo-test-guest)"
echo "== vireo run: booting the test guest (2 vCPUs, 256 MiB); its console follows =="
exec target/release/vireo run --kernel "$guest" --cpus 2 --memory 256M \
    --cmdline "console=ttyS0 vtg.action=poweroff"
