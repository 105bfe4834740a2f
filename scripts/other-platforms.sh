#!/usr/bin/env bash
# Checks that the library, the binary, the tests and the examples build for macOS, Windows and
# Linux on ARM (GH200 nodes) (`cargo clippy -D warnings`, every feature but candle-cuda, whose
# kernels need nvcc), from x86-64 Linux. Nothing is linked or run. Needs the targets' standard
# libraries (`rustup target add x86_64-apple-darwin x86_64-pc-windows-msvc
# aarch64-unknown-linux-gnu`, network). The C code of the `remote` feature's TLS
# crate (aws-lc-sys) needs each platform's own C toolchain, so its compiler and archiver are
# stubbed here: the check covers the Rust code only. Manual; CI cannot fetch the targets.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}/other-platforms
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
# An archiver that leaves an empty archive wherever it is asked to write one.
cat >"$stub/ar" <<'EOF'
#!/bin/sh
for a in "$@"; do case "$a" in *.a|*.lib|-out:*) : >"${a#-out:}" ;; esac; done
EOF
chmod +x "$stub/ar"
for target in x86_64-apple-darwin x86_64-pc-windows-msvc aarch64-unknown-linux-gnu; do
    var=${target//-/_}
    for features in "--no-default-features" "--features candle,nccl,cli,remote,safetensors"; do
        echo "== $target $features"
        env "CC_$var=/bin/true" "AR_$var=$stub/ar" CARGO_TARGET_DIR="$target_dir" \
            cargo clippy --locked --target "$target" --all-targets $features -- -D warnings
    done
done
echo "other platforms: ok"
