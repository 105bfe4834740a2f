#!/usr/bin/env bash
# CUDA 13.0's compiler from PyPI, in a virtual environment: no GPU and no system CUDA needed.
# candle-core's `cuda` feature (tfckpt's `candle-cuda`) compiles candle's kernels with nvcc when it
# builds, so `cargo check`/`clippy` with that feature need this; CI uses it for its clippy pass.
#
#     eval "$(scripts/cuda-toolkit.sh DIR)"               # nvcc, headers: enough to check
#     eval "$(scripts/cuda-toolkit.sh DIR --link-stubs)"  # and link stubs: enough to link
#
# prints the environment to evaluate: PATH (nvcc), CUDA_ROOT (cudarc's and candle's include and
# link root) and CUDA_COMPUTE_CAP (9.0: H100/H200; override it before evaluating).
#
# --link-stubs: cudarc, as candle-core configures it (dynamic linking), links libcuda, libnvrtc,
# libcurand, libcublas and libcublasLt by name. The CUDA toolkit's own answer for building where
# the driver is absent is a link stub; these are made the same way, from the symbol lists of the
# cudarc source that the build uses, with the sonames of CUDA 13 (libcuda.so.1, libnvrtc.so.13,
# libcurand.so.10, libcublas.so.13, libcublasLt.so.13); libcudart is the runtime package's own.
# The binaries then run where the real libraries are on the loader path (scripts/gpu-check.sh
# finds them on the GPU machine).
set -euo pipefail
dir="${1:?usage: cuda-toolkit.sh DIR [--link-stubs]}"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cd "$(dirname "$0")/.."
if [ ! -x "$dir/venv/bin/python" ]; then
    python3 -m venv "$dir/venv" >&2
fi
# One version of each part: nvcc, its front end (nvvm), the C runtime headers, CCCL (nv/target)
# and the runtime's headers, all 13.0 (PTX from a newer compiler fails to load on a 13.0 driver).
"$dir/venv/bin/pip" install --quiet --disable-pip-version-check \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*" >&2
root=$("$dir/venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
[ -x "$root/bin/nvcc" ] || { echo "cuda-toolkit: no nvcc under $root" >&2; exit 1; }

if [ "${2:-}" = "--link-stubs" ]; then
    cudarc=$(cargo metadata --format-version 1 --locked --all-features 2>/dev/null | python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.dirname(p["manifest_path"]))
        break')
    [ -n "$cudarc" ] || { echo "cuda-toolkit: cudarc not found by cargo metadata" >&2; exit 1; }
    mkdir -p "$root/lib/stubs"
    for pair in driver:cuda:1 nvrtc:nvrtc:13 curand:curand:10 cublas:cublas:13 cublaslt:cublasLt:13; do
        IFS=: read -r module lib major <<<"$pair"
        src="$dir/stub-$lib.c"
        grep -o 'load::<_F>("[A-Za-z0-9_]*")' "$cudarc/src/$module/sys/mod.rs" |
            sed 's/.*("\(.*\)")/void \1(void) {}/' | sort -u >"$src"
        gcc -shared -fPIC -o "$root/lib/stubs/lib$lib.so" -Wl,-soname,"lib$lib.so.$major" "$src"
    done
    # candle-kernels links the CUDA runtime too (its MoE kernels): the real one, by its link name.
    ln -sf ../libcudart.so.13 "$root/lib/stubs/libcudart.so"
fi
echo "export PATH=\"$root/bin:\$PATH\" CUDA_ROOT=\"$root\" CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-90}\""
