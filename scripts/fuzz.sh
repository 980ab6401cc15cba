#!/usr/bin/env bash
# Bounded fuzz runs: crates/block/fuzz (target `open_read`, the image parsers) over its seed
# corpus, then every target of crates/devices/fuzz (the virtio transport and each device's
# descriptor-chain handling; see crates/devices/fuzz/README.md).
#
#   scripts/fuzz.sh [SECONDS [DEVICE-SECONDS]]   (defaults 60 for open_read, 15 per device target)
#
# Works on a stable toolchain: no cargo-fuzz and no nightly. The target is built the way
# cargo-fuzz builds it with `--sanitizer none` (LLVM SanitizerCoverage passes enabled through
# stable -C flags, `--cfg fuzzing`, debug assertions and overflow checks on), and linked
# against libFuzzer, which the libfuzzer-sys crate compiles with the system C++ compiler.
# Builds are cached under target/fuzz. New corpus entries go to target/fuzz/corpus (the
# checked-in seed corpus is only read). Exits non-zero if libFuzzer reports a crash, a
# timeout, an out-of-memory or a leak; the reproducer is left in target/fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
device_secs="${2:-15}"
root="$PWD"
out="$root/target/fuzz"
mkdir -p "$out/corpus" "$out/artifacts"

host="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$out/build"
# --target keeps these flags away from build scripts and proc macros (as cargo-fuzz does).
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks -Cforce-frame-pointers"
unset CARGO_ENCODED_RUSTFLAGS
cargo build --release --locked --manifest-path crates/block/fuzz/Cargo.toml \
    --target "$host" --bin open_read

bin="$out/build/$host/release/open_read"
echo "fuzz.sh: running open_read for ${secs}s"
# -rss_limit_mb: the target promises allocations bounded by the input; -timeout: no hangs.
"$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/" \
    "$out/corpus" crates/block/fuzz/corpus/open_read

# The device targets start from an empty corpus each (kept under target/fuzz between runs).
cargo build --release --locked --manifest-path crates/devices/fuzz/Cargo.toml \
    --target "$host" --bins
for t in virtio_pci virtio_blk virtio_net_chains virtio_rng virtio_console virtio_vsock virtio_balloon; do
    mkdir -p "$out/corpus-$t"
    echo "fuzz.sh: running $t for ${device_secs}s"
    "$out/build/$host/release/$t" -max_total_time="$device_secs" -timeout=10 -rss_limit_mb=1024 \
        -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-" "$out/corpus-$t"
done
