//! Copies that bypass the cache on the destination side (non-temporal stores), for large copies
//! whose destination is not read again soon by this CPU: pinned staging buffers that the GPU reads
//! by DMA. A normal copy first reads every destination line into the cache (read for ownership),
//! so it moves three bytes over the memory bus per byte copied; streaming stores move two. On the
//! H200 machine (16 vCPUs) a checksum plus a streaming copy ran at 53.5 GB/s against 34.6 GB/s
//! with `copy_from_slice` (examples/gpu_probe.rs).

/// `dst.copy_from_slice(src)` with non-temporal stores where the CPU has AVX and `dst` is 32-byte
/// aligned; a plain copy otherwise. Panics, as `copy_from_slice` does, if the lengths differ.
pub(crate) fn stream_copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "stream_copy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx") && dst.as_ptr() as usize % 32 == 0 {
            let n = dst.len() / 32 * 32;
            // SAFETY: AVX is present (checked above); `dst` and `src` hold at least `n` bytes,
            // `dst` is 32-byte aligned as the stores require, and the two slices cannot overlap
            // (one is borrowed mutably).
            unsafe { stream_avx(dst.as_mut_ptr(), src.as_ptr(), n) };
            dst[n..].copy_from_slice(&src[n..]);
            return;
        }
    }
    dst.copy_from_slice(src);
}

/// # Safety
/// AVX must be present; `d` must be 32-byte aligned with `n` (a multiple of 32) writable bytes,
/// `s` must have `n` readable bytes, and the ranges must not overlap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn stream_avx(d: *mut u8, s: *const u8, n: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256, _mm_sfence};
    let mut i = 0;
    while i < n {
        // SAFETY: `i + 32 <= n`, inside both ranges; `d + i` is 32-byte aligned.
        unsafe {
            let v = _mm256_loadu_si256(s.add(i) as *const __m256i);
            _mm256_stream_si256(d.add(i) as *mut __m256i, v);
        }
        i += 32;
    }
    // Streaming stores are weakly ordered: make them visible before anything that follows (the
    // DMA is queued after this returns).
    _mm_sfence();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_a_plain_copy_at_every_alignment_and_length() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut buf = vec![0u8; 5100];
        for off in [0usize, 1, 31, 32, 33, 64] {
            for len in [0usize, 1, 31, 32, 33, 4096, 4999 - off] {
                buf.fill(0xAA);
                stream_copy(&mut buf[off..off + len], &src[..len]);
                assert_eq!(&buf[off..off + len], &src[..len], "off {off} len {len}");
                assert!(buf[..off].iter().all(|&b| b == 0xAA));
                assert!(buf[off + len..].iter().all(|&b| b == 0xAA));
            }
        }
    }
}
