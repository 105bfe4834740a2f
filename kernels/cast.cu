// Opt-in dtype conversion on load (TensorFlow never casts; see LoadOptions::cast): float32 to
// bfloat16 or float16 with round-to-nearest-even, and bfloat16 or float16 to float32 (exact). Bit
// for bit the same as the host conversion in src/load/cast.rs, NaNs included (no CUDA headers are
// needed, so NVRTC compiles this without an include path).
//
// Same 2-D addressing as slice_copy.cu: `rows` rows of `row` elements, strides in elements.

__device__ __forceinline__ unsigned short f32_to_bf16(unsigned int x) {
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);  // quiet NaN
    const unsigned int round_bit = 0x8000u;
    unsigned short h = (unsigned short)(x >> 16);
    if ((x & round_bit) != 0 && (x & (3u * round_bit - 1u)) != 0) h += 1;
    return h;
}

__device__ __forceinline__ unsigned short f32_to_f16(unsigned int x) {
    unsigned int sign = x & 0x80000000u, ebits = x & 0x7f800000u, man = x & 0x007fffffu;
    if (ebits == 0x7f800000u) {  // infinity or NaN
        unsigned int nan_bit = man == 0 ? 0u : 0x0200u;
        return (unsigned short)((sign >> 16) | 0x7c00u | nan_bit | (man >> 13));
    }
    unsigned int half_sign = sign >> 16;
    int half_exp = (int)(ebits >> 23) - 127 + 15;
    if (half_exp >= 0x1f) return (unsigned short)(half_sign | 0x7c00u);  // overflow: infinity
    if (half_exp <= 0) {                                                  // subnormal or zero
        if (14 - half_exp > 24) return (unsigned short)half_sign;
        man |= 0x00800000u;
        unsigned int half_man = man >> (14 - half_exp);
        unsigned int round_bit = 1u << (13 - half_exp);
        if ((man & round_bit) != 0 && (man & (3u * round_bit - 1u)) != 0) half_man += 1;
        return (unsigned short)(half_sign | half_man);
    }
    unsigned int h = half_sign | ((unsigned int)half_exp << 10) | (man >> 13);
    const unsigned int round_bit = 0x1000u;
    if ((man & round_bit) != 0 && (man & (3u * round_bit - 1u)) != 0) h += 1;
    return (unsigned short)h;
}

__device__ __forceinline__ unsigned int bf16_to_f32(unsigned short h) { return (unsigned int)h << 16; }

__device__ __forceinline__ unsigned int f16_to_f32(unsigned short i) {
    unsigned int h = i;
    if ((h & 0x7fffu) == 0) return h << 16;
    unsigned int sign = (h & 0x8000u) << 16, ebits = h & 0x7c00u, man = h & 0x03ffu;
    if (ebits == 0x7c00u) return man == 0 ? (sign | 0x7f800000u) : (sign | 0x7fc00000u | (man << 13));
    if (ebits == 0) {  // subnormal: normalise
        unsigned int e = __clz(man) - 22;  // leading zeros of the 10-bit mantissa, in 16 bits
        return sign | ((127u - 15u - e) << 23) | ((man << (14 + e)) & 0x7fffffu);
    }
    return sign | (((ebits >> 10) + (127u - 15u)) << 23) | (man << 13);
}

#define TFCKPT_CAST2D(NAME, S, D, F)                                                               \
    extern "C" __global__ void NAME(const S* __restrict__ src, D* __restrict__ dst,                \
                                    unsigned long long rows, unsigned long long row,              \
                                    unsigned long long src_stride,                                 \
                                    unsigned long long dst_stride) {                               \
        for (unsigned long long r = blockIdx.y; r < rows; r += gridDim.y) {                        \
            const S* s = src + r * src_stride;                                                     \
            D* d = dst + r * dst_stride;                                                           \
            for (unsigned long long c = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; \
                 c < row; c += (unsigned long long)gridDim.x * blockDim.x) {                       \
                d[c] = F(s[c]);                                                                    \
            }                                                                                      \
        }                                                                                          \
    }

TFCKPT_CAST2D(cast2d_f32_bf16, unsigned int, unsigned short, f32_to_bf16)
TFCKPT_CAST2D(cast2d_f32_f16, unsigned int, unsigned short, f32_to_f16)
TFCKPT_CAST2D(cast2d_bf16_f32, unsigned short, unsigned int, bf16_to_f32)
TFCKPT_CAST2D(cast2d_f16_f32, unsigned short, unsigned int, f16_to_f32)
