// The CUDA kernels of kernels/, compiled as C++ and run on the CPU, for the tests: the emulated
// device (src/gpu/emulated.rs) launches the real kernel sources through `tfckpt_cpu_launch`, so
// every test that uploads through it executes the code a GPU would, with the launch configuration
// the GPU path computes. Only what the kernels use is provided: thread and block indices, shared
// memory, `__syncthreads`, `uint4` and `__clz`.
//
// A block's threads are cooperative user contexts (ucontext): each runs until its next
// `__syncthreads` (or its end), then the next thread runs, so a barrier is a full round of the
// block's threads, as on a GPU. Blocks run one after another, so `__shared__` can be a static.
// A barrier reached by only some threads of a block (undefined on a GPU) is reported as an error.
//
// Built by the tests with `c++ -std=c++17 -O2 -shared -fPIC`; see src/gpu/emulated.rs.

#include <ucontext.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

struct dim3 {
    unsigned int x, y, z;
};
struct uint4 {
    unsigned int x, y, z, w;
};

static dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace sim {
static ucontext_t scheduler;
static std::vector<ucontext_t> threads;
static std::vector<unsigned char> done;
static std::vector<char> stacks;
static size_t current;
static void (*body)();
static bool in_contexts;    // the threads of this launch are user contexts
static bool stray_barrier;  // a barrier reached by a kernel run without contexts
constexpr size_t STACK = 64 << 10;

static void trampoline() {
    body();
    done[current] = 1;  // then uc_link resumes the scheduler
}
}  // namespace sim

static void __syncthreads() {
    if (!sim::in_contexts) {
        sim::stray_barrier = true;
        return;
    }
    swapcontext(&sim::threads[sim::current], &sim::scheduler);
}
static inline int __clz(unsigned int x) { return x == 0 ? 32 : __builtin_clz(x); }

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

#include "../../kernels/slice_copy.cu"
#include "../../kernels/cast.cu"
#include "../../kernels/transpose.cu"

namespace sim {
// Runs `f` as every thread of every block of the grid: as user contexts when the kernel has
// `barriers`, else one thread after another. Returns 0, or -1 when a block's threads did not all
// reach the same barriers.
static int run_grid(void (*f)(), bool barriers) {
    const size_t n = (size_t)blockDim.x * blockDim.y;
    body = f;
    in_contexts = barriers;
    stray_barrier = false;
    if (!barriers) {
        // No barrier: each thread runs to its end in turn, on this stack.
        for (unsigned int by = 0; by < gridDim.y; by++) {
            for (unsigned int bx = 0; bx < gridDim.x; bx++) {
                blockIdx = dim3{bx, by, 0};
                for (size_t i = 0; i < n; i++) {
                    threadIdx = dim3{(unsigned int)(i % blockDim.x), (unsigned int)(i / blockDim.x), 0};
                    f();
                }
            }
        }
        return stray_barrier ? -1 : 0;
    }
    threads.assign(n, ucontext_t{});
    done.assign(n, 0);
    stacks.assign(n * STACK, 0);
    for (unsigned int by = 0; by < gridDim.y; by++) {
        for (unsigned int bx = 0; bx < gridDim.x; bx++) {
            blockIdx = dim3{bx, by, 0};
            for (size_t i = 0; i < n; i++) {
                done[i] = 0;
                getcontext(&threads[i]);
                threads[i].uc_stack.ss_sp = &stacks[i * STACK];
                threads[i].uc_stack.ss_size = STACK;
                threads[i].uc_link = &scheduler;
                makecontext(&threads[i], trampoline, 0);
            }
            // Rounds: every live thread runs to its next barrier or its end, in increasing
            // order in one round and decreasing in the next (and from block to block), so that a
            // thread reading what another writes before a barrier they lack sees it unwritten
            // one way or the other.
            bool up = (bx + by) % 2 == 0;
            for (;;) {
                size_t finished = 0, live = 0;
                for (size_t k = 0; k < n; k++) {
                    const size_t i = up ? k : n - 1 - k;
                    if (done[i]) continue;
                    live++;
                    current = i;
                    threadIdx = dim3{(unsigned int)(i % blockDim.x), (unsigned int)(i / blockDim.x), 0};
                    swapcontext(&scheduler, &threads[i]);
                    finished += done[i];
                }
                if (live == 0) break;
                if (finished != 0 && finished != live) return -1;  // divergent barrier
                up = !up;
            }
        }
    }
    return 0;
}

struct Args {
    const void* src;
    void* dst;
    unsigned long long rows, row, src_stride, dst_stride, dst_col;
};
static Args args;

typedef unsigned long long u64;
template <typename S, typename D>
static void call(void (*f)(const S*, D*, u64, u64, u64, u64)) {
    f((const S*)args.src, (D*)args.dst, args.rows, args.row, args.src_stride, args.dst_stride);
}
template <typename S, typename D>
static void call(void (*f)(const S*, D*, u64, u64, u64, u64, u64)) {
    f((const S*)args.src, (D*)args.dst, args.rows, args.row, args.src_stride, args.dst_stride, args.dst_col);
}

struct Entry {
    const char* name;
    void (*run)();
    bool transpose;  // takes `dst_col`, and has barriers
};
#define K(NAME, T) {#NAME, [] { call(NAME); }, T}
static const Entry KERNELS[] = {
    K(copy2d_1, false), K(copy2d_2, false), K(copy2d_4, false), K(copy2d_8, false), K(copy2d_16, false),
    K(cast2d_f32_bf16, false), K(cast2d_f32_f16, false), K(cast2d_bf16_f32, false), K(cast2d_f16_f32, false),
    K(transpose2d_1, true), K(transpose2d_2, true), K(transpose2d_4, true), K(transpose2d_8, true),
    K(transpose2d_16, true), K(transpose2d_f32_bf16, true), K(transpose2d_f32_f16, true),
    K(transpose2d_bf16_f32, true), K(transpose2d_f16_f32, true),
};
}  // namespace sim

// Launches kernel `name` on grid (gx, gy) of blocks (bx, by) with host pointers for `src` and
// `dst`. Returns 0; -1 for a divergent barrier; -2 for an unknown kernel; -3 when `dst_col` is
// given to a kernel that takes none, or not given to one that takes it.
extern "C" int tfckpt_cpu_launch(const char* name, unsigned int gx, unsigned int gy, unsigned int bx,
                                 unsigned int by, const void* src, void* dst, unsigned long long rows,
                                 unsigned long long row, unsigned long long src_stride,
                                 unsigned long long dst_stride, unsigned long long dst_col) {
    for (const sim::Entry& e : sim::KERNELS) {
        if (std::strcmp(e.name, name) != 0) continue;
        gridDim = dim3{gx, gy, 1};
        blockDim = dim3{bx, by, 1};
        sim::args = sim::Args{src, dst, rows, row, src_stride, dst_stride, dst_col};
        if (e.transpose != (dst_col != 0)) return -3;
        return sim::run_grid(e.run, e.transpose);
    }
    return -2;
}
