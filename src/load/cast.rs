//! The opt-in dtype conversion on load ([`LoadOptions::cast`](crate::LoadOptions::cast)), on the
//! host. The device kernels in `kernels/cast.cu` are the same algorithms bit for bit (round to
//! nearest even, NaNs kept quiet with their top payload bits), so a value loaded to the GPU equals
//! the value loaded to host memory.

use crate::DType;

/// The conversions offered: float32 to bfloat16 or float16, and back.
pub(crate) fn supported(from: DType, to: DType) -> bool {
    matches!(
        (from, to),
        (DType::F32, DType::BF16)
            | (DType::F32, DType::F16)
            | (DType::BF16, DType::F32)
            | (DType::F16, DType::F32)
    )
}

pub(crate) fn f32_to_bf16(x: u32) -> u16 {
    if x & 0x7fff_ffff > 0x7f80_0000 {
        return ((x >> 16) | 0x40) as u16;
    }
    let round_bit = 0x8000;
    let h = (x >> 16) as u16;
    if x & round_bit != 0 && x & (3 * round_bit - 1) != 0 {
        h.wrapping_add(1)
    } else {
        h
    }
}

pub(crate) fn f32_to_f16(x: u32) -> u16 {
    let (sign, exp, man) = (x & 0x8000_0000, x & 0x7f80_0000, x & 0x007f_ffff);
    if exp == 0x7f80_0000 {
        let nan_bit = if man == 0 { 0 } else { 0x0200 };
        return ((sign >> 16) | 0x7c00 | nan_bit | (man >> 13)) as u16;
    }
    let half_sign = sign >> 16;
    let half_exp = (exp >> 23) as i32 - 127 + 15;
    if half_exp >= 0x1f {
        return (half_sign | 0x7c00) as u16;
    }
    if half_exp <= 0 {
        if 14 - half_exp > 24 {
            return half_sign as u16;
        }
        let man = man | 0x0080_0000;
        let mut half_man = man >> (14 - half_exp);
        let round_bit = 1u32 << (13 - half_exp);
        if man & round_bit != 0 && man & (3 * round_bit - 1) != 0 {
            half_man += 1;
        }
        return (half_sign | half_man) as u16;
    }
    let h = half_sign | ((half_exp as u32) << 10) | (man >> 13);
    let round_bit = 0x1000;
    if man & round_bit != 0 && man & (3 * round_bit - 1) != 0 {
        (h + 1) as u16
    } else {
        h as u16
    }
}

pub(crate) fn bf16_to_f32(h: u16) -> u32 {
    (h as u32) << 16
}

pub(crate) fn f16_to_f32(i: u16) -> u32 {
    let h = i as u32;
    if h & 0x7fff == 0 {
        return h << 16;
    }
    let (sign, exp, man) = ((h & 0x8000) << 16, h & 0x7c00, h & 0x03ff);
    if exp == 0x7c00 {
        return if man == 0 {
            sign | 0x7f80_0000
        } else {
            sign | 0x7fc0_0000 | (man << 13)
        };
    }
    if exp == 0 {
        let e = man.leading_zeros() - 22;
        return sign | ((127 - 15 - e) << 23) | ((man << (14 + e)) & 0x7f_ffff);
    }
    sign | (((exp >> 10) + (127 - 15)) << 23) | (man << 13)
}

/// Converts little-endian elements of `from` in `src` into `to` in `dst` (`dst` sized for them).
///
/// One loop per conversion, so that the element function is inlined into it and the loop can be
/// vectorized. Through a function pointer chosen at run time (the code before 2026-12-04) and one
/// loop each, in turn, three rounds (this project's VM: 2 cores, AMD EPYC, one thread, 50 M
/// elements in memory), G elements/s: bfloat16 to float32 0.47–0.62 before, 2.79–3.62 after;
/// float32 to bfloat16 0.45–0.52 and 2.15–2.53; the float16 ones, whose branches keep them
/// scalar, 0.28–0.41 and 0.41–0.84 (to float32), 0.28–0.34 and 0.54–0.69 (from it), which is why
/// they take F16C where the CPU has it (below).
pub(crate) fn convert(from: DType, to: DType, src: &[u8], dst: &mut [u8]) {
    /// `f` on each element of `S` bytes of `src`, into `T` bytes of `dst`.
    #[inline(always)]
    fn each<const S: usize, const T: usize>(
        src: &[u8],
        dst: &mut [u8],
        f: impl Fn([u8; S]) -> [u8; T],
    ) {
        for (s, d) in src.chunks_exact(S).zip(dst.chunks_exact_mut(T)) {
            let mut e = [0u8; S];
            e.copy_from_slice(s);
            d.copy_from_slice(&f(e));
        }
    }
    let w = u32::from_le_bytes;
    let h = u16::from_le_bytes;
    // The float16 ones in the CPU's own conversion where it has one (x86-64 with F16C): the same
    // bits as `f16_to_f32` and `f32_to_f16` (tested for every float16, and for float32 edges and
    // random values), 8 elements an instruction; the rest of the elements one by one.
    let (src, dst) = match (from, to) {
        (DType::F16 | DType::F32, DType::F32 | DType::F16) if from != to => {
            f16c::convert(from == DType::F16, src, dst)
        }
        _ => (src, dst),
    };
    match (from, to) {
        (DType::F32, DType::BF16) => each(src, dst, |s| f32_to_bf16(w(s)).to_le_bytes()),
        (DType::F32, DType::F16) => each(src, dst, |s| f32_to_f16(w(s)).to_le_bytes()),
        (DType::BF16, DType::F32) => each(src, dst, |s| bf16_to_f32(h(s)).to_le_bytes()),
        (DType::F16, DType::F32) => each(src, dst, |s| f16_to_f32(h(s)).to_le_bytes()),
        _ => dst.copy_from_slice(src),
    }
}

/// float16 to float32 (`widen`) or back with F16C's `vcvtph2ps` / `vcvtps2ph` (round to nearest
/// even; a NaN made quiet, its top payload bits kept, as the functions above do), 8 elements at a
/// time. Returns the elements left (fewer than 8, or all of them without F16C). A trainer that sets
/// flush-to-zero or denormals-are-zero changes nothing: `vcvtph2ps` ignores DAZ, `vcvtps2ph`
/// ignores FTZ, and the float32 subnormals DAZ would zero round to a signed zero in float16 anyway
/// (Intel's SDM for both instructions). A trainer that unmasks a floating-point exception gets
/// the functions above instead (the instructions would trap where they round).
///
/// On little-endian AArch64 the same with Advanced SIMD's `fcvtl`/`fcvtl2` and `fcvtn`/`fcvtn2`
/// (in every AArch64 CPU; not the FP16 extension, which adds float16 arithmetic), which follow
/// the FPCR: used only where it has its default rounding (to nearest even), NaN propagation (not
/// the default NaN), IEEE half precision (not AHP) and no alternate handling (AH); elsewhere the
/// functions above convert. Conversions ignore FZ16, and FZ or FIZ flush only float32 subnormals
/// on their way to float16, which round to a signed zero anyway (Arm ARM: `FPConvert`,
/// `FPUnpackCV`, `FPRoundCV`).
mod f16c {
    pub(super) fn convert<'a, 'b>(
        widen: bool,
        src: &'a [u8],
        dst: &'b mut [u8],
    ) -> (&'a [u8], &'b mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("avx")
                && x86::mxcsr_masks_all()
            {
                let (s_el, d_el) = if widen { (2, 4) } else { (4, 2) };
                let n = (src.len() / s_el).min(dst.len() / d_el) / 8 * 8;
                // SAFETY: F16C and AVX are present (checked above); `src` holds `n` elements of
                // `s_el` bytes and `dst` room for `n` of `d_el` (`n` taken from both lengths).
                unsafe {
                    if widen {
                        widen_8s(src.as_ptr(), dst.as_mut_ptr(), n);
                    } else {
                        narrow_8s(src.as_ptr(), dst.as_mut_ptr(), n);
                    }
                }
                return (&src[n * s_el..], &mut dst[n * d_el..]);
            }
        }
        #[cfg(all(target_arch = "aarch64", target_endian = "little"))]
        {
            if neon::fpcr_as_ieee() {
                let (s_el, d_el) = if widen { (2, 4) } else { (4, 2) };
                let n = (src.len() / s_el).min(dst.len() / d_el) / 8 * 8;
                // SAFETY: `src` holds `n` elements of `s_el` bytes and `dst` room for `n` of
                // `d_el` (`n` taken from both lengths); Advanced SIMD is in every AArch64 CPU.
                unsafe {
                    if widen {
                        neon::widen_8s(src.as_ptr(), dst.as_mut_ptr(), n);
                    } else {
                        neon::narrow_8s(src.as_ptr(), dst.as_mut_ptr(), n);
                    }
                }
                return (&src[n * s_el..], &mut dst[n * d_el..]);
            }
        }
        let _ = widen;
        (src, dst)
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) mod x86 {
        /// MXCSR's exception masks (bits 7-12): `vcvtps2ph` and `vcvtph2ps` signal inexact,
        /// overflow, underflow, invalid (a signalling NaN) and denormal results, which trap
        /// (SIGFPE) where a trainer unmasked them; the element functions never do.
        pub(crate) const MASKS: u32 = 0x1f80;

        /// Whether an MXCSR of `csr` masks every exception ([`MASKS`] all set, as a thread
        /// starts); its rounding control does not matter (the narrowing rounds to nearest by
        /// its immediate), nor do DAZ and FTZ (see [`super`]).
        pub(crate) fn admits(csr: u32) -> bool {
            csr & MASKS == MASKS
        }

        /// Whether this thread's MXCSR masks every exception ([`admits`]). Read once per
        /// [`convert`](super::super::convert) call, which is one variable's value or a 64 KiB
        /// block of a transposed one: `stmxcsr` and the test took 5 ns a call on this project's
        /// VM (2026-12-05, AMD EPYC, in cache: 8.4 ns with a call around them; widening 768
        /// float16 elements took 32 ns, 4,096 took 163 ns), under 1% of converting a 64 KiB block
        /// (16 K float32 elements) and less of a whole variable.
        pub(crate) fn mxcsr_masks_all() -> bool {
            let mut csr = 0u32;
            // SAFETY: `stmxcsr` stores the 4-byte MXCSR at the address given, `csr`'s.
            unsafe {
                std::arch::asm!(
                    "stmxcsr [{}]",
                    in(reg) &mut csr,
                    options(nostack, preserves_flags)
                )
            };
            admits(csr)
        }
    }

    #[cfg(all(target_arch = "aarch64", target_endian = "little"))]
    pub(super) mod neon {
        use std::arch::aarch64::{
            float32x4_t, uint16x8_t, vld1q_f32, vld1q_u16, vst1q_f32, vst1q_u16,
        };
        use std::arch::asm;

        /// The FPCR bits that would make the conversions differ from the element functions: AH
        /// (1), the trap enables IOE, DZE, OFE, UFE, IXE (8-12) and IDE (15) (a CPU that traps
        /// would raise SIGFPE where the element functions round), RMode (22-23), DN (25) and
        /// AHP (26).
        pub(crate) const CONVERSION_BITS: u64 =
            1 << 1 | 0x1f << 8 | 1 << 15 | 0b11 << 22 | 1 << 25 | 1 << 26;

        /// Whether an FPCR of `fpcr` converts as the element functions do (all of
        /// [`CONVERSION_BITS`] clear, as every AArch64 OS starts a thread; FZ, FZ16, FIZ and NEP
        /// change no conversion's result).
        pub(crate) fn admits(fpcr: u64) -> bool {
            fpcr & CONVERSION_BITS == 0
        }

        /// Whether this thread's FPCR converts as the element functions do ([`admits`]).
        pub(crate) fn fpcr_as_ieee() -> bool {
            let fpcr: u64;
            // SAFETY: reading the FPCR has no side effect.
            unsafe {
                asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack, preserves_flags))
            };
            admits(fpcr)
        }

        /// # Safety
        /// `s` readable for `n` float16s, `d` writable for `n` float32s, `n` a multiple of 8.
        pub(super) unsafe fn widen_8s(s: *const u8, d: *mut u8, n: usize) {
            for i in (0..n).step_by(8) {
                // SAFETY: elements `i..i + 8` lie inside both; unaligned NEON loads and stores
                // are allowed on normal memory.
                unsafe {
                    let h: uint16x8_t = vld1q_u16(s.add(i * 2) as *const u16);
                    let (lo, hi): (float32x4_t, float32x4_t);
                    asm!(
                        "fcvtl {lo:v}.4s, {h:v}.4h",
                        "fcvtl2 {hi:v}.4s, {h:v}.8h",
                        h = in(vreg) h,
                        lo = out(vreg) lo,
                        hi = out(vreg) hi,
                        // Not `preserves_flags`: they set the FPSR's cumulative flags.
                        options(nomem, nostack),
                    );
                    vst1q_f32(d.add(i * 4) as *mut f32, lo);
                    vst1q_f32(d.add(i * 4 + 16) as *mut f32, hi);
                }
            }
        }

        /// # Safety
        /// `s` readable for `n` float32s, `d` writable for `n` float16s, `n` a multiple of 8.
        pub(super) unsafe fn narrow_8s(s: *const u8, d: *mut u8, n: usize) {
            for i in (0..n).step_by(8) {
                // SAFETY: as in `widen_8s`.
                unsafe {
                    let lo = vld1q_f32(s.add(i * 4) as *const f32);
                    let hi = vld1q_f32(s.add(i * 4 + 16) as *const f32);
                    let h: uint16x8_t;
                    asm!(
                        "fcvtn {h:v}.4h, {lo:v}.4s",
                        "fcvtn2 {h:v}.8h, {hi:v}.4s",
                        lo = in(vreg) lo,
                        hi = in(vreg) hi,
                        h = out(vreg) h,
                        // Not `preserves_flags`: they set the FPSR's cumulative flags.
                        options(nomem, nostack),
                    );
                    vst1q_u16(d.add(i * 2) as *mut u16, h);
                }
            }
        }
    }

    /// # Safety
    /// F16C and AVX present; `s` readable for `n` float16s and `d` writable for `n` float32s.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "f16c,avx")]
    unsafe fn widen_8s(s: *const u8, d: *mut u8, n: usize) {
        use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
        for i in (0..n).step_by(8) {
            // SAFETY: elements `i..i + 8` lie inside both (`n` is a multiple of 8).
            unsafe {
                let h = _mm_loadu_si128(s.add(i * 2) as *const __m128i);
                _mm256_storeu_ps(d.add(i * 4) as *mut f32, _mm256_cvtph_ps(h));
            }
        }
    }

    /// # Safety
    /// F16C and AVX present; `s` readable for `n` float32s and `d` writable for `n` float16s.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "f16c,avx")]
    unsafe fn narrow_8s(s: *const u8, d: *mut u8, n: usize) {
        use std::arch::x86_64::{
            __m128i, _mm256_cvtps_ph, _mm256_loadu_ps, _mm_storeu_si128, _MM_FROUND_TO_NEAREST_INT,
        };
        for i in (0..n).step_by(8) {
            // SAFETY: elements `i..i + 8` lie inside both (`n` is a multiple of 8).
            unsafe {
                let x = _mm256_loadu_ps(s.add(i * 4) as *const f32);
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
                _mm_storeu_si128(d.add(i * 2) as *mut __m128i, h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_to_f32_exact_for_every_value() {
        for i in 0..=u16::MAX {
            let f = half::f16::from_bits(i);
            let b = half::bf16::from_bits(i);
            // NaNs too, bit for bit: sign and payload kept, made quiet.
            assert_eq!(f16_to_f32(i), f32::from(f).to_bits(), "f16 {i:#06x}");
            if b.is_nan() {
                // Exact widening keeps a signalling NaN's bits; `half` quiets it.
                assert_eq!(bf16_to_f32(i), u32::from(i) << 16, "bf16 {i:#06x}");
                assert!(f32::from_bits(bf16_to_f32(i)).is_nan());
            } else {
                assert_eq!(bf16_to_f32(i), f32::from(b).to_bits(), "bf16 {i:#06x}");
            }
        }
    }

    /// `convert` against the element functions, for `from` elements `src`.
    fn converts_like_the_element_functions(from: DType, to: DType, src: &[u8]) {
        let (fs, ts) = (from.size().unwrap(), to.size().unwrap());
        let mut got = vec![0xAAu8; src.len() / fs * ts];
        convert(from, to, src, &mut got);
        for (i, (s, g)) in src.chunks_exact(fs).zip(got.chunks_exact(ts)).enumerate() {
            let want = match (from, to) {
                (DType::F16, DType::F32) => f16_to_f32(u16::from_le_bytes([s[0], s[1]]))
                    .to_le_bytes()
                    .to_vec(),
                _ => f32_to_f16(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
                    .to_le_bytes()
                    .to_vec(),
            };
            assert_eq!(g, want, "{from} to {to}, element {i}: {s:02x?}");
        }
    }

    #[test]
    fn whole_buffers_convert_like_the_element_functions() {
        // Every float16 (with the CPU's conversion where it has one, 8 at a time, and the 3 left
        // one by one), and float32 edges and random values the other way.
        let every: Vec<u8> = (0..=u16::MAX)
            .chain([0x7c01, 0x0001, 0x8001])
            .flat_map(u16::to_le_bytes)
            .collect();
        converts_like_the_element_functions(DType::F16, DType::F32, &every);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut bits: Vec<u32> = (0..1_000_003)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u32
            })
            .collect();
        // Around the float16 limits: the largest finite, the smallest normal and subnormal, ties.
        for centre in [
            0x477f_e000u32,
            0x3880_0000,
            0x3380_0000,
            0x3300_0000,
            0x3f80_1000,
        ] {
            for sign in [0, 0x8000_0000] {
                bits.extend((centre - 4096..centre + 4096).map(|b| b | sign));
            }
        }
        bits.extend([
            0x7f80_0000,
            0xff80_0000,
            0x7f80_0001,
            0xffc0_0001,
            0x7fff_ffff,
            0,
        ]);
        let f32s: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        converts_like_the_element_functions(DType::F32, DType::F16, &f32s);
    }

    /// The FPCR states whose vector conversions would differ from the element functions (or
    /// trap) are refused, and the scalar conversion takes over there; the bits that change no
    /// conversion's result are let through.
    #[cfg(all(target_arch = "aarch64", target_endian = "little"))]
    #[test]
    fn the_fpcr_decides_whether_vectors_convert() {
        use f16c::neon::admits;
        assert!(
            f16c::neon::fpcr_as_ieee(),
            "a thread starts with the default FPCR"
        );
        // FIZ (0), NEP (2), FZ16 (19), FZ (24).
        assert!(admits(0) && admits(1 << 0 | 1 << 2 | 1 << 19 | 1 << 24));
        for bit in [1, 8, 9, 10, 11, 12, 15, 22, 23, 25, 26] {
            assert!(!admits(1 << bit), "FPCR bit {bit}");
        }
    }

    /// F16C's conversions only where every MXCSR exception is masked (a trainer that unmasks
    /// one would get SIGFPE where the element functions round): the scalar conversion there.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_mxcsr_decides_whether_f16c_converts() {
        use f16c::x86::admits;
        assert!(
            f16c::x86::mxcsr_masks_all(),
            "a thread starts with every exception masked"
        );
        // The default 0x1f80, with DAZ (6), FTZ (15) and any rounding control (13-14).
        assert!(admits(0x1f80) && admits(0x1f80 | 1 << 6 | 1 << 15 | 0b11 << 13));
        for bit in 7..=12 {
            assert!(!admits(0x1f80 & !(1 << bit)), "MXCSR mask bit {bit}");
        }
    }

    /// Why: `fcvtn` rounds by the FPCR's rounding mode. Just above 1.0 in float32 rounds to 1.0
    /// to nearest (the element function), to the next float16 toward +infinity (RMode 01, set
    /// and put back inside the one asm block, around no Rust code).
    #[cfg(all(target_arch = "aarch64", target_endian = "little"))]
    #[test]
    fn fcvtn_rounds_by_the_fpcr() {
        use std::arch::asm;
        let narrowed = |rmode: u64| -> u16 {
            let out: u64;
            // SAFETY: the FPCR is changed and put back within the block, which touches no
            // memory; the saved value stays in a register of its own.
            unsafe {
                asm!(
                    "mrs {saved}, fpcr",
                    "bic {t}, {saved}, #0xc00000",
                    "orr {t}, {t}, {rmode}",
                    "msr fpcr, {t}",
                    "fmov {x:s}, {bits:w}",
                    "fcvtn {x:v}.4h, {x:v}.4s",
                    "umov {out:w}, {x:v}.h[0]",
                    "msr fpcr, {saved}",
                    saved = out(reg) _,
                    t = out(reg) _,
                    rmode = in(reg) rmode << 22,
                    bits = in(reg) 0x3f80_0001u64,
                    x = out(vreg) _,
                    out = out(reg) out,
                    options(nomem, nostack),
                );
            }
            out as u16
        };
        assert_eq!(narrowed(0), f32_to_f16(0x3f80_0001));
        assert_eq!(narrowed(0), 0x3c00);
        assert_eq!(narrowed(1), 0x3c01);
    }

    /// Every float32 through `convert` to float16 (about 30 s in a release build:
    /// `cargo test --release --lib every_float32 -- --ignored`).
    #[test]
    #[ignore]
    fn every_float32_converts_like_the_element_function() {
        let chunk = 1u64 << 24;
        for start in (0..1u64 << 32).step_by(chunk as usize) {
            let src: Vec<u8> = (start..start + chunk)
                .flat_map(|b| (b as u32).to_le_bytes())
                .collect();
            let mut got = vec![0u8; src.len() / 2];
            convert(DType::F32, DType::F16, &src, &mut got);
            for (s, g) in src.chunks_exact(4).zip(got.chunks_exact(2)) {
                let want = f32_to_f16(u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
                assert_eq!(u16::from_le_bytes([g[0], g[1]]), want, "{s:02x?}");
            }
        }
    }

    #[test]
    fn f32_to_half_rounds_like_half() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let check = |bits: u32| {
            // NaNs too, bit for bit: sign and top payload bits kept, made quiet.
            let f = f32::from_bits(bits);
            assert_eq!(f32_to_f16(bits), half::f16::from_f32(f).to_bits(), "{f:e}");
            assert_eq!(
                f32_to_bf16(bits),
                half::bf16::from_f32(f).to_bits(),
                "{f:e}"
            );
        };
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check(x as u32);
        }
        // Edges: ties, subnormal boundaries, overflow, infinities.
        for bits in [
            0u32,
            0x8000_0000,
            0x3f80_0000,
            0x3f80_1000,
            0x3f80_3000,
            0x3380_0000,
            0x3300_0000,
            0x3300_0001,
            0x387f_e000,
            0x477f_f000,
            0x477f_efff,
            0x7f7f_ffff,
            0x7f80_0000,
            0xff80_0000,
            0x0000_0001,
            0x3f80_8000,
            0x3f81_8000,
            // NaNs: signalling with only a low payload bit, quiet, negative, all payload bits.
            0x7f80_0001,
            0xff80_0001,
            0x7fc0_0000,
            0x7fbf_ffff,
            0xffff_ffff,
        ] {
            check(bits);
        }
    }
}
