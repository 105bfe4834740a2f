#!/usr/bin/env bash
# Checks the Rust versions the crate promises (`rust-version` in Cargo.toml; README "Platforms"):
# - Rust 1.89 (`rust-version`): the library and the binary, bare, with the default features
#   (`cli`, `remote`), and with `safetensors`, `cuda` and `nccl`. crc-fast 1.10 is what needs 1.89.
# - Rust 1.94 with `candle`: candle-core 0.11.1 calls `__cpuid_count`, an intrinsic that is safe
#   only from Rust 1.94 on, and does not build on 1.93 (it declares no rust-version of its own).
# - Rust 1.92 for the tests, benchmarks and examples without candle: the S3 server the tests
#   start (s3s 0.14) needs it; with candle, 1.94.
# Each check is `cargo check --locked` with that toolchain. Needs rustup and the network to
# install the toolchains: manual (CI cannot fetch a toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}/msrv
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
[ "$msrv" = 1.89 ] || { echo "Cargo.toml says rust-version $msrv; this script checks 1.89" >&2; exit 1; }
check() {
    local toolchain=$1
    shift
    echo "== Rust $toolchain: cargo check $*"
    CARGO_TARGET_DIR="$target_dir/$toolchain" cargo "+$toolchain" check --locked "$@"
}
for toolchain in 1.88 1.89 1.92 1.93 1.94; do
    rustup toolchain list | grep -q "^$toolchain" ||
        rustup toolchain install "$toolchain" --profile minimal
done
check 1.89 --no-default-features
check 1.89
check 1.89 --features safetensors,cuda,nccl
check 1.92 --all-targets --features safetensors,cuda,nccl
check 1.94 --all-targets --features candle,safetensors,cuda,nccl
# The floor is real: one version below fails (crc-fast, then candle-core).
! check 1.88 --no-default-features 2>/dev/null || { echo "builds on 1.88: lower rust-version" >&2; exit 1; }
! check 1.93 --features candle 2>/dev/null || { echo "candle builds on 1.93: update the README" >&2; exit 1; }
echo "msrv: ok"
