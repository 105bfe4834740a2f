// Transposed copies on the device: a 2-D block of `rows` rows of `row` elements, read with a row
// stride of `src_stride` elements, element (r, c) written to `dst[r * dst_stride + c * dst_col]`.
// A TensorFlow dense kernel [in, out] goes into a framework's [out, in] weight (candle's Linear)
// this way: uploaded into a scratch buffer, then transposed by one launch per 2-D block (see
// src/gpu/plan.rs), with the dtype conversion of cast.cu on the way where one is asked for. A
// convolution's kernel [spatial..., in, out] goes into [out, in, spatial...] by the same launches,
// one per spatial position (its [in, out] block, rows written `rows` apart, columns `in * rows`
// apart: the writes are then not coalesced) or one per input channel (its [spatial, out] block).
//
// Launch: block (32, 8), grid (x, y) of 32x32 tiles (x over the columns of a row, y over the
// rows; grid-stride loops on both, so any grid size is correct). Each tile is read along the rows
// and written along the columns through shared memory, so that both are coalesced.
//
// NVRTC compiles this file after cast.cu, in one program (src/gpu/cuda/kernels.rs joins them): the
// conversions are cast.cu's, bit for bit.

#define TFCKPT_TILE 32
#define TFCKPT_TILE_ROWS 8

__device__ __forceinline__ unsigned char same1(unsigned char x) { return x; }
__device__ __forceinline__ unsigned short same2(unsigned short x) { return x; }
__device__ __forceinline__ unsigned int same4(unsigned int x) { return x; }
__device__ __forceinline__ unsigned long long same8(unsigned long long x) { return x; }
__device__ __forceinline__ uint4 same16(uint4 x) { return x; }

#define TFCKPT_TRANSPOSE2D(NAME, S, D, F)                                                          \
    extern "C" __global__ void NAME(const S* __restrict__ src, D* __restrict__ dst,                \
                                    unsigned long long rows, unsigned long long row,              \
                                    unsigned long long src_stride,                                 \
                                    unsigned long long dst_stride, unsigned long long dst_col) {   \
        __shared__ S tile[TFCKPT_TILE][TFCKPT_TILE + 1];                                            \
        const unsigned long long tx = threadIdx.x, ty = threadIdx.y;                               \
        for (unsigned long long r0 = (unsigned long long)blockIdx.y * TFCKPT_TILE; r0 < rows;      \
             r0 += (unsigned long long)gridDim.y * TFCKPT_TILE) {                                  \
            for (unsigned long long c0 = (unsigned long long)blockIdx.x * TFCKPT_TILE; c0 < row;   \
                 c0 += (unsigned long long)gridDim.x * TFCKPT_TILE) {                              \
                for (unsigned long long k = 0; k < TFCKPT_TILE; k += TFCKPT_TILE_ROWS) {           \
                    unsigned long long r = r0 + ty + k, c = c0 + tx;                               \
                    if (r < rows && c < row) tile[ty + k][tx] = src[r * src_stride + c];           \
                }                                                                                  \
                __syncthreads();                                                                   \
                for (unsigned long long k = 0; k < TFCKPT_TILE; k += TFCKPT_TILE_ROWS) {           \
                    unsigned long long c = c0 + ty + k, r = r0 + tx;                               \
                    if (r < rows && c < row) dst[r * dst_stride + c * dst_col] = F(tile[tx][ty + k]); \
                }                                                                                  \
                __syncthreads();                                                                   \
            }                                                                                      \
        }                                                                                          \
    }

TFCKPT_TRANSPOSE2D(transpose2d_1, unsigned char, unsigned char, same1)
TFCKPT_TRANSPOSE2D(transpose2d_2, unsigned short, unsigned short, same2)
TFCKPT_TRANSPOSE2D(transpose2d_4, unsigned int, unsigned int, same4)
TFCKPT_TRANSPOSE2D(transpose2d_8, unsigned long long, unsigned long long, same8)
TFCKPT_TRANSPOSE2D(transpose2d_16, uint4, uint4, same16)
TFCKPT_TRANSPOSE2D(transpose2d_f32_bf16, unsigned int, unsigned short, f32_to_bf16)
TFCKPT_TRANSPOSE2D(transpose2d_f32_f16, unsigned int, unsigned short, f32_to_f16)
TFCKPT_TRANSPOSE2D(transpose2d_bf16_f32, unsigned short, unsigned int, bf16_to_f32)
TFCKPT_TRANSPOSE2D(transpose2d_f16_f32, unsigned short, unsigned int, f16_to_f32)
