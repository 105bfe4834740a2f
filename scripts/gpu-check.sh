#!/usr/bin/env bash
# The GPU check of the `cuda` feature, in two steps.
#
# 1. Build, on any x86-64 Linux machine (no CUDA, no GPU needed):
#        scripts/gpu-check.sh --build
#    puts the CUDA test binaries and the GPU benchmark into target/gpu-check/.
#    Before lending the binaries to a GPU machine, `scripts/gpu-check.sh --check` says (here, in
#    a second) whether they were built from this tree, listing the files changed since.
#    With GPU_CHECK_BEFORE=DIR (the target/gpu-check of an earlier tree's build), that build's
#    candle benchmark comes along, and the run times its tfckpt load beside this tree's, in the
#    same rounds (benches/candle.rs --before): a change measured before and after in one run.
# 2. Run, on a machine with an NVIDIA GPU and driver, from the repository root (no cargo needed):
#        scripts/gpu-check.sh [--budget 450] [--only PARTS] [--gb 8] [--dir /tmp/tfckpt-gpu-bench]
#    --budget: seconds for the whole run (default 450): each part and each test gets at most what
#    is left, a part that would start with under 30 s left is skipped and says so, and the
#    summary is printed whatever happened. PARTS (comma-separated, default all, in this order):
#    tests, remote, bench, candle, candle-bench, probe; e.g. `--only candle,candle-bench` to
#    rerun one part after a fix. A preflight comes first (driver and NVRTC versions, why no GPU is
#    usable if none is, one load through a kernel), printed, never stopping the run.
#    It runs the CUDA tests (device bytes equal host bytes for every fixture, re-partitions, casts,
#    trainer buffers, a damaged shard, a checkpoint on object storage; placement over every GPU
#    and the CPU; replicas on every GPU, by shares and an NCCL all-gather, and a broadcast
#    initialization over an NCCL communicator, at world size 1 on a one-GPU machine: the tests
#    are built with the `nccl` feature; libnccl.so.2 is the system's or the CUDA image's Python
#    package's, and once found the NCCL parts must pass, not skip), then the benchmark
#    (~8 GB checkpoint written by the crate's writer; pinned H2D ceiling; warm and, if the page
#    cache can be dropped, cold loads)
#    with its short table, the candle models with their Vars on the GPU (tests/candle.rs, module
#    on_gpu) and their benchmark against candle's own safetensors path (benches/candle.rs --cuda),
#    then the building blocks one by one (examples/gpu_probe.rs).
#
# NVRTC (for the kernels), NCCL and candle's CUDA libraries are the loader's (a CUDA toolkit's),
# else the run links them from the CUDA image's Python packages (nvidia/*/lib, e.g. pip's
# nvidia-cuda-nvrtc==13.0.*) into a private folder on LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/gpu-check

# What the binaries were built from: a hash of every source, test and fixture file that git
# tracks or would track, listed in target/gpu-check/BUILD.files at build time (the device machine
# gets a copy of those files without .git, so a hash of the files, not a commit).
# Usage: tree_stamp [LIST] (default: target/gpu-check/BUILD.files).
tree_stamp() {
    # A listed file that is missing hashes its error message: another stamp, never the same one.
    tr '\n' '\0' <"${1:-$out/BUILD.files}" | xargs -0 sha1sum 2>&1 | sha1sum | cut -c1-16 || true
}

if [ "${1:-}" = "--build" ]; then
    # cudarc's bindings for CUDA 13.0, as on the H200 run the numbers in the README come from
    # (without nvcc, cudarc would take the newest it knows).
    export CUDARC_CUDA_VERSION=13000
    # What is built: the tree as it is now, stamped before the build and checked again after it
    # (a file changed meanwhile may or may not be in the binaries).
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    # (Tracked files deleted here are not part of this build.)
    git ls-files --cached --others --exclude-standard -- Cargo.toml Cargo.lock src kernels tests \
        benches examples | while IFS= read -r f; do [ ! -e "$f" ] || echo "$f"; done >"$stage/BUILD.files"
    tree_stamp "$stage/BUILD.files" >"$stage/BUILD"
    tr '\n' '\0' <"$stage/BUILD.files" | xargs -0 sha1sum >"$stage/BUILD.sums"
    log=target/gpu-check-build.log
    {
        cargo build --release --locked --features cuda --example gpu_bench --example gpu_probe &&
            cargo test --release --locked --features nccl --test gpu --no-run &&
            cargo test --release --locked --features nccl --test remote --no-run
    } >"$log" 2>&1 || {
        tail -40 "$log" >&2
        echo "gpu-check: could not build the CUDA binaries (log: $log)" >&2
        exit 1
    }
    test_bin=$(sed -n 's/.*Executable tests\/gpu\.rs (\(.*\))/\1/p' "$log" | tail -1)
    remote_bin=$(sed -n 's/.*Executable tests\/remote\.rs (\(.*\))/\1/p' "$log" | tail -1)
    [ -n "$test_bin" ] && [ -n "$remote_bin" ] || {
        echo "gpu-check: could not find the test binaries in $log" >&2
        exit 1
    }
    # candle `Var`s on the GPU (feature `candle-cuda`): candle-core's `cuda` compiles candle's
    # kernels with nvcc and links the driver, NVRTC, cuRAND and cuBLAS by name: CUDA 13.0's compiler
    # from PyPI and link stubs (scripts/cuda-toolkit.sh); the GPU machine has the real libraries.
    cuda_env=$(scripts/cuda-toolkit.sh target/cuda-toolkit --link-stubs)
    log=target/gpu-check-candle.log
    (
        eval "$cuda_env"
        cargo test --release --locked --features candle-cuda --test candle --no-run &&
            cargo bench --locked --features candle-cuda --bench candle --no-run
    ) >"$log" 2>&1 || {
        tail -40 "$log" >&2
        echo "gpu-check: could not build the candle-cuda binaries (log: $log)" >&2
        exit 1
    }
    candle_test=$(sed -n 's/.*Executable tests\/candle\.rs (\(.*\))/\1/p' "$log" | tail -1)
    candle_bench=$(sed -n 's/.*Executable benches\/candle\.rs (\(.*\))/\1/p' "$log" | tail -1)
    rm -rf "$out"
    mkdir -p "$out"
    cp "$candle_test" "$out/candle-tests"
    cp "$candle_bench" "$out/candle-bench"
    cp "$test_bin" "$out/gpu-tests"
    cp "$remote_bin" "$out/remote-tests"
    cp "${CARGO_TARGET_DIR:-target}/release/examples/gpu_bench" "$out/gpu_bench"
    cp "${CARGO_TARGET_DIR:-target}/release/examples/gpu_probe" "$out/gpu_probe"
    # Without debug info and gzipped, the six binaries travel in about 50 MB (the device tool
    # carries 64 MiB); the run unpacks them elsewhere, so this folder stays that size.
    strip --strip-debug "$out"/* 2>/dev/null || true
    gzip -9 "$out"/*
    if [ -n "${GPU_CHECK_BEFORE:-}" ]; then
        # xz: 8 MB where gzip gives 15 (candle's PTX), so that it fits beside the others.
        gzip -dc "$GPU_CHECK_BEFORE/candle-bench.gz" | xz -9 -T0 >"$out/candle-bench-before.xz" || {
            echo "gpu-check: no candle-bench.gz in GPU_CHECK_BEFORE=$GPU_CHECK_BEFORE" >&2
            exit 1
        }
        # What that build was built from (its tree's stamp), for the run's log.
        cp "$GPU_CHECK_BEFORE/BUILD" "$out/BUILD.before" 2>/dev/null || true
    fi
    if [ "$(tree_stamp "$stage/BUILD.files")" != "$(cat "$stage/BUILD")" ]; then
        echo "gpu-check: the tree changed during the build; build again. Changed:" >&2
        sha1sum -c --quiet "$stage/BUILD.sums" 2>&1 | head -20 >&2 || true
        rm -rf "$out"
        exit 1
    fi
    mv "$stage/BUILD.files" "$stage/BUILD" "$stage/BUILD.sums" "$out/"
    rmdir "$stage"
    ls -la "$out"
    du -sh "$out"
    exit 0
fi

# Whether the binaries were built from this tree; if not, which files differ.
same_tree() {
    if [ ! -e "$out/BUILD.files" ]; then
        echo "gpu-check: run 'scripts/gpu-check.sh --build' first" >&2
        return 1
    fi
    if [ "$(cat "$out/BUILD" 2>/dev/null)" != "$(tree_stamp)" ]; then
        echo "gpu-check: target/gpu-check was built from other sources than this tree's: run 'scripts/gpu-check.sh --build' again; changed since:" >&2
        sha1sum -c --quiet "$out/BUILD.sums" 2>&1 | head -20 >&2 || true
        return 1
    fi
}
if [ "${1:-}" = "--check" ]; then
    same_tree && echo "target/gpu-check was built from this tree ($(cat "$out/BUILD"))"
    exit
fi

# --budget and --only, in either order, before the benchmark's own arguments.
budget=450
only=all
while [ $# -gt 0 ]; do
    case "$1" in
    --budget)
        budget=${2:?--budget needs seconds, e.g. 450}
        [[ "$budget" =~ ^[1-9][0-9]*$ ]] || { echo "gpu-check: --budget takes seconds, not '$budget'" >&2; exit 2; }
        shift 2
        ;;
    --only)
        only=",${2:?--only needs a list, e.g. candle,candle-bench},"
        shift 2
        IFS=, read -ra wanted <<<"${only:1:${#only}-2}"
        for w in "${wanted[@]}"; do
            case "$w" in
            tests | remote | bench | candle | candle-bench | probe) ;;
            *)
                echo "gpu-check: unknown part '$w' (tests, remote, bench, candle, candle-bench, probe)" >&2
                exit 2
                ;;
            esac
        done
        ;;
    *) break ;;
    esac
done
# The whole run ends by this time (seconds since the epoch).
deadline=$(($(date +%s) + budget))
# Whether part `$1` was asked for.
asked() { [ "$only" = all ] || [[ "$only" == *",$1,"* ]]; }
# The time limit of a step that would take at most `$1` seconds: that, or what is left of the
# budget (5 s kept for the summary); fails where under 30 s are left.
limit() {
    local left=$((deadline - $(date +%s) - 5))
    [ "$left" -ge 30 ] || return 1
    echo $(($1 < left ? $1 : left))
}
# Whether part `$1` runs: asked for, and time left for it (otherwise it says it is skipped).
# Sets `lim`, its time limit: `$2` seconds at most (default 90), or what is left.
skipped=()
lim=
part() {
    asked "$1" || return 1
    lim=$(limit "${2:-90}") && return 0
    echo "== $1: SKIPPED, under 30 s of the time budget ($budget s) left"
    skipped+=("$1")
    return 1
}

# On the device machine, everything printed is also kept in $OUT (the tool returns only the tail
# of the output, and the folder whole).
tee_pid=
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    exec 3>&1 4>&2 > >(tee "$OUT/gpu-check.log") 2>&1
    tee_pid=$!
fi
# Unpacked outside the carried folder (which must stay small enough to travel), removed at exit.
bin=$(mktemp -d "${TMPDIR:-/tmp}/tfckpt-gpu-check.XXXXXX")
at_exit() {
    rm -rf "$bin"
    # Give tee its end of input and wait, so that the log has the last lines too.
    if [ -n "$tee_pid" ]; then
        exec 1>&3 2>&4
        wait "$tee_pid" 2>/dev/null || true
    fi
}
trap at_exit EXIT
for f in "$out"/*.gz; do
    [ -e "$f" ] || continue
    name=$(basename "${f%.gz}")
    gzip -dc "$f" >"$bin/$name" || { echo "gpu-check: cannot unpack $f" >&2; exit 1; }
    chmod +x "$bin/$name"
done
# An earlier build's benchmark (GPU_CHECK_BEFORE), by xz or else Python's lzma; only compared.
for f in "$out"/*.xz; do
    [ -e "$f" ] || continue
    name=$(basename "${f%.xz}")
    { xz -dc "$f" 2>/dev/null ||
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$f"; } >"$bin/$name" &&
        chmod +x "$bin/$name" || { echo "gpu-check: cannot unpack $f: no comparison" >&2; rm -f "$bin/$name"; }
done
# Binaries of another tree would test other code than this one: refuse them.
same_tree || exit 1
echo "binaries built from this tree ($(cat "$out/BUILD")); time budget $budget s"
[ -x "$bin/gpu-tests" ] && [ -x "$bin/remote-tests" ] && [ -x "$bin/gpu_bench" ] &&
    [ -x "$bin/gpu_probe" ] && [ -x "$bin/candle-tests" ] && [ -x "$bin/candle-bench" ] || {
    echo "gpu-check: run 'scripts/gpu-check.sh --build' first" >&2
    exit 1
}
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current \
    --format=csv,noheader 2>/dev/null || true
# The binaries use CUDA 13.0 (cudarc's bindings, NVRTC 13, candle's libraries), which needs driver
# 580 or newer: an older one would fail every test in turn, each up to its time limit.
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
if [ -n "$driver" ] && [ "${driver%%.*}" -lt 580 ] 2>/dev/null; then
    echo "gpu-check: driver $driver is older than CUDA 13.0 needs (580): nothing run" >&2
    exit 1
fi
# Whether this machine's host takes freed memory back (a virtio balloon with free page reporting,
# feature bit 5): host values then take 4 KiB pages (README: Fresh memory). Free to print.
for d in /sys/bus/virtio/devices/*; do
    [ "$(cat "$d/device" 2>/dev/null)" = 0x0005 ] || continue
    echo "virtio balloon $(basename "$d"): free page reporting $(cut -c6 "$d/features" 2>/dev/null)"
done
# Whether the loader finds library `$1` (on LD_LIBRARY_PATH or in its cache).
resolvable() {
    local d dirs
    IFS=: read -ra dirs <<<"${LD_LIBRARY_PATH:-}"
    for d in "${dirs[@]}"; do
        [ -n "$d" ] && [ -e "$d/$1" ] && return 0
    done
    # grep reads the whole cache (no -q): an early exit would kill ldconfig with SIGPIPE, and
    # pipefail would then report a library that is there as missing.
    ldconfig -p 2>/dev/null | grep -F "	$1 (" >/dev/null
}
# A new folder with links to each library named that the loader would not find, taken from the
# CUDA image's Python packages (nvidia/*/lib), with the files beside it that share its stem (NVRTC
# loads libnvrtc-builtins from where the loader found libnvrtc, which is this folder); prints the
# folder. Only those libraries, and only where the loader lacks them: nothing of those packages
# takes the place of a library the system has.
private_libs() {
    local dir lib p f
    dir=$(mktemp -d) || return 1
    for lib in "$@"; do
        resolvable "$lib" && continue
        p=$(python3 -c 'import glob, nvidia, os, sys; print(next(iter(sorted(p for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "*", "lib", sys.argv[1])))), ""))' "$lib" 2>/dev/null || true)
        if [ -n "$p" ]; then
            for f in "$(dirname "$p")/${lib%%.so*}"*; do
                [ -e "$dir/$(basename "$f")" ] || ln -s "$f" "$dir/$(basename "$f")"
            done
            echo "$lib: $p" >&2
        else
            echo "$lib: not found" >&2
        fi
    done
    echo "$dir"
}
with_libs() { echo "$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; }
# The CUDA libraries the loader does not find already, from the CUDA image's Python packages, for
# every part: NVRTC (the kernels of every GPU load), NCCL (the replica and broadcast tests at world
# size 1), and candle's (cuBLAS, cuRAND, the runtime).
lib_dir=$(private_libs libnvrtc.so.13 libnccl.so.2 libcublas.so.13 libcublasLt.so.13 \
    libcurand.so.10 libcudart.so.13)
# NCCL installs only its soname, libnccl.so.2, and cudarc (loading it at run time) looks for
# libnccl.so: a link of that name goes into the private folder.
nccl_so2=
if [ -e "$lib_dir/libnccl.so.2" ]; then
    nccl_so2=$(readlink -f "$lib_dir/libnccl.so.2")
else
    nccl_so2=$(ldconfig -p 2>/dev/null | sed -n 's/^\s*libnccl\.so\.2 (.*) => //p' | head -1 || true)
fi
if [ -n "$nccl_so2" ] && [ ! -e "$lib_dir/libnccl.so" ] && ! resolvable libnccl.so; then
    ln -s "$nccl_so2" "$lib_dir/libnccl.so"
    echo "libnccl.so: linked to $nccl_so2"
fi
export LD_LIBRARY_PATH
LD_LIBRARY_PATH=$(with_libs "$lib_dir")
# NCCL_SOCKET_IFNAME: the machine has no network but the loopback, which NCCL's bootstrap (used
# even at world size 1) may not pick by itself. Once NCCL is found, the NCCL parts must run: the
# tests then fail rather than skip them.
nccl_env=(env NCCL_SOCKET_IFNAME=lo NCCL_DEBUG=WARN)
if resolvable libnccl.so; then
    nccl_env+=(TFCKPT_REQUIRE_NCCL=1)
else
    echo "NCCL: none found; the NCCL parts of the tests are skipped"
fi
# Each test in its own process, under a time limit: a kernel fault leaves a CUDA context unusable
# for the rest of its process (and would fail every later test), and a hang would use up the
# device time (the limit, 90 s, is many times what a test takes there; less where the budget's
# DEADLINE, seconds since the epoch, comes first: the tests after it are listed as skipped).
# Usage: each_test LIMIT BIN [FILTER] (the tests whose name contains FILTER), run with the
# environment before it; returns nonzero if any failed or was skipped, listing them.
each_test() {
    local limit=$1 exe=$2 filter=${3:-} list t rc lim left ran=0 failed=() late=()
    # A binary that cannot start (a library the loader lacks) lists nothing: that is a failure.
    list=$("$exe" --list </dev/null) || {
        echo "FAILED: $exe --list (exit $?): the binary cannot start"
        return 1
    }
    while IFS= read -r t; do
        [ -n "$t" ] || continue
        [ -z "$filter" ] || [[ "$t" == *"$filter"* ]] || continue
        ran=$((ran + 1))
        left=$((DEADLINE - $(date +%s) - 5))
        if [ "$left" -lt 20 ]; then
            late+=("$t")
            continue
        fi
        lim=$((limit < left ? limit : left))
        rc=0
        timeout -k 10 "$lim" "$exe" --exact "$t" --test-threads=1 </dev/null || rc=$?
        case $rc in
        0) ;;
        124 | 137) failed+=("$t (time limit ${lim}s)") ;;
        *) failed+=("$t (exit $rc)") ;;
        esac
    done < <(sed -n 's/: test$//p' <<<"$list")
    if [ "$ran" -eq 0 ]; then
        echo "FAILED: no test of $exe matches '$filter'"
        return 1
    fi
    if [ "${#late[@]}" -gt 0 ]; then
        printf 'SKIPPED (time budget): %s\n' "${late[@]}"
    fi
    if [ "${#failed[@]}" -gt 0 ]; then
        printf 'FAILED: %s\n' "${failed[@]}"
    fi
    [ "${#failed[@]}" -eq 0 ] && [ "${#late[@]}" -eq 0 ]
}
# GPU time is scarce: the benchmark runs even when a test fails, and the script fails at the end.
tests_rc=0
bench_rc=0
echo "== Preflight (driver, NVRTC, one load through a kernel)"
# The host's processor and caches, beside its numbers (the ring's CPU side depends on them).
lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)|L1d|L2|L3|NUMA node\(s\))' | tr -s ' ' |
    sed 's/^/preflight: host /' || true
RUST_BACKTRACE=0 timeout -k 5 60 "$bin/gpu_bench" --preflight ||
    echo "preflight: exit code $? (the run goes on)"
if part tests; then
    echo "== CUDA tests"
    DEADLINE=$deadline TFCKPT_ROOT="$PWD" TFCKPT_REQUIRE_GPU=1 RUST_BACKTRACE=1 "${nccl_env[@]}" \
        bash -c "$(declare -f each_test); each_test \"\$@\"" each_test 90 "$bin/gpu-tests" ||
        tests_rc=$?
fi
if part remote 120; then
    echo "== A checkpoint on object storage onto the GPU (in-process S3 server on 127.0.0.1)"
    TFCKPT_ROOT="$PWD" TFCKPT_REQUIRE_GPU=1 RUST_BACKTRACE=1 timeout -k 10 "$lim" "$bin/remote-tests" --exact \
        gpu_load_of_a_remote_checkpoint_equals_the_local_read_or_is_a_clear_error || tests_rc=$?
fi
if part bench 300; then
    echo "== GPU benchmark"
    timeout -k 10 "$lim" "$bin/gpu_bench" "$@" || bench_rc=$?
fi
if part candle; then
    echo "== candle Vars on the GPU (tests/candle.rs, module on_gpu)"
    DEADLINE=$deadline TFCKPT_ROOT="$PWD" TFCKPT_REQUIRE_GPU=1 RUST_BACKTRACE=1 \
        bash -c "$(declare -f each_test); each_test \"\$@\"" each_test 90 "$bin/candle-tests" on_gpu ||
        tests_rc=$?
fi
if part candle-bench 300; then
    echo "== candle on the GPU: BERT-large (24 layers of width 1024) from tfckpt's checkpoint against candle's from_mmaped_safetensors"
    before=()
    if [ -x "$bin/candle-bench-before" ]; then
        echo "   with the tfckpt load of an earlier build (its tree $(cat "$out/BUILD.before" 2>/dev/null || echo unknown)) in the same rounds"
        before=(--before "$bin/candle-bench-before")
    fi
    timeout -k 10 "$lim" "$bin/candle-bench" --cuda --large --rounds 3 "${before[@]}" || bench_rc=$?
fi
if part probe 300; then
    echo "== Building blocks (examples/gpu_probe.rs, 4 GiB file)"
    timeout -k 10 "$lim" "$bin/gpu_probe" --gb 4 || bench_rc=$?
fi
if [ "${#skipped[@]}" -gt 0 ]; then
    echo "== SKIPPED for the time budget: ${skipped[*]}"
    [ "$tests_rc" -ne 0 ] || tests_rc=3
fi
echo "== CUDA tests exit code $tests_rc, benchmark exit code $bench_rc ($(($(date +%s) - deadline + budget)) s of $budget)"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
