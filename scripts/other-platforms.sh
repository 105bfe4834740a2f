#!/usr/bin/env bash
# Checks that the library, the binary, the tests and the examples build for macOS, Windows and
# Linux on ARM (GH200 nodes) (`cargo clippy -D warnings`, every feature but candle-cuda, whose
# kernels need nvcc), from x86-64 Linux. Nothing is linked or run. Needs the targets' standard
# libraries (`rustup target add x86_64-apple-darwin x86_64-pc-windows-msvc
# aarch64-unknown-linux-gnu`, network). The C code of the `remote` feature's TLS
# crate (aws-lc-sys) needs each platform's own C toolchain, so its compiler and archiver are
# stubbed here: the check covers the Rust code only. Manual; CI cannot fetch the targets.
#
# Then the code that differs on ARM (the transposes' NEON tiles, the checksum, the casts) runs:
# the unit tests of those modules, built for aarch64-unknown-linux-gnu and run under QEMU's
# user-mode emulation (Debian: `apt-get install qemu-user gcc-aarch64-linux-gnu
# libc6-dev-arm64-cross`). The rest of the unit tests are not run there: QEMU's user mode
# implements neither `mbind` nor the huge-page advice that the memory tests check, and is too
# slow for the threaded ones. OTHER_PLATFORMS_NO_QEMU=1 skips this part.
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
if [ "${OTHER_PLATFORMS_NO_QEMU:-}" != 1 ]; then
    for tool in qemu-aarch64 aarch64-linux-gnu-gcc; do
        command -v "$tool" >/dev/null || {
            echo "other-platforms: $tool not found (apt-get install qemu-user gcc-aarch64-linux-gnu" \
                "libc6-dev-arm64-cross), or OTHER_PLATFORMS_NO_QEMU=1" >&2
            exit 1
        }
    done
    echo "== aarch64-unknown-linux-gnu: unit tests of base::copy, base::crc, load::cast under QEMU"
    env CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
        CARGO_TARGET_DIR="$target_dir/qemu" \
        cargo test --locked --release --no-default-features --lib \
        --target aarch64-unknown-linux-gnu -- base::copy base::crc load::cast
fi
echo "other platforms: ok"
