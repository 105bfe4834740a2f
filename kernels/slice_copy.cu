// Strided copies on the device: a 2-D block of `rows` rows of `row` elements, read with a row stride
// of `src_stride` elements and written with a row stride of `dst_stride` elements. A partition slice
// that is not contiguous in the stored tensor (a split along axis 1, say) is uploaded whole into a
// scratch buffer and scattered into each part by one launch per 2-D block (see src/gpu/plan.rs).
//
// Launch: grid (x, y), block (256); x walks the elements of a row, y walks the rows (grid-stride
// loops on both, so any grid size is correct).

#define TFCKPT_COPY2D(NAME, T)                                                                     \
    extern "C" __global__ void NAME(const T* __restrict__ src, T* __restrict__ dst,                \
                                    unsigned long long rows, unsigned long long row,              \
                                    unsigned long long src_stride,                                 \
                                    unsigned long long dst_stride) {                               \
        for (unsigned long long r = blockIdx.y; r < rows; r += gridDim.y) {                        \
            const T* s = src + r * src_stride;                                                     \
            T* d = dst + r * dst_stride;                                                           \
            for (unsigned long long c = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; \
                 c < row; c += (unsigned long long)gridDim.x * blockDim.x) {                       \
                d[c] = s[c];                                                                       \
            }                                                                                      \
        }                                                                                          \
    }

TFCKPT_COPY2D(copy2d_1, unsigned char)
TFCKPT_COPY2D(copy2d_2, unsigned short)
TFCKPT_COPY2D(copy2d_4, unsigned int)
TFCKPT_COPY2D(copy2d_8, unsigned long long)
TFCKPT_COPY2D(copy2d_16, uint4)
