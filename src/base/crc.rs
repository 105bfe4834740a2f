//! CRC32C (Castagnoli) as TensorFlow uses it: masked on disk, and computed in parallel chunks for
//! large buffers (`base::copy` fuses it with copying).

use rayon::prelude::*;

const MASK_DELTA: u32 = 0xA282_EAD8;

/// Bytes per chunk when a buffer is checksummed (and copied) in parallel.
pub(crate) const CHUNK: usize = 4 << 20;

/// `Mask(c)` of TensorFlow's `crc32c.h`: how CRCs are stored on disk.
pub fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// Inverse of [`mask`].
pub fn unmask(masked: u32) -> u32 {
    masked.wrapping_sub(MASK_DELTA).rotate_left(15)
}

/// A running CRC32C over bytes given in pieces, on the fastest instructions the CPU has (AVX-512
/// carry-less multiplication where present: about twice the `crc32` instruction's speed here).
pub(crate) struct Running(crc_fast::Digest);

impl Running {
    pub(crate) fn new() -> Running {
        Running(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi))
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub(crate) fn finish(&self) -> u32 {
        self.0.finalize() as u32
    }
}

/// CRC32C of `data` in one thread.
pub(crate) fn serial(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// The CRC32C polynomial, bit-reversed (the form the byte-wise computation uses).
const POLY: u32 = 0x82F6_3B78;

/// `a * b mod P` for polynomials over GF(2) in the reflected representation (bit 31 is x^0).
/// Stops after `a`'s last set bit; `a == 0` gives 0 (the loop ends when the mask runs out).
const fn multiply(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    while m != 0 {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// `X2N[k] = x^(2^k) mod P`, for every `k` a length of up to 2^64 bytes needs (3 + 64 bits).
const X2N: [u32; 67] = {
    let mut t = [0u32; 67];
    let mut p = 1u32 << 30; // x^1
    t[0] = p;
    let mut k = 1;
    while k < 67 {
        p = multiply(p, p);
        t[k] = p;
        k += 1;
    }
    t
};

/// The CRC32C of `A ++ B` from `crc(A)`, `crc(B)` and `B`'s length: `crc(A) * x^(8 len_b) ^ crc(B)`
/// with the power found by squaring (zlib's `crc32_combine` since 1.2.12, here for CRC32C). About
/// 0.1 µs whatever the length; the matrix method of the `crc32c` and `crc-fast` crates takes ~50 µs,
/// which the GPU load's thousands of 1 MiB pieces made a fifth of its time.
pub fn combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    // x^(8 len_b) = product of x^(2^(k+3)) over the set bits k of len_b.
    let (mut n, mut k, mut power) = (len_b, 3usize, 1u32 << 31);
    while n != 0 {
        if n & 1 != 0 {
            power = multiply(X2N[k], power);
        }
        n >>= 1;
        k += 1;
    }
    multiply(power, crc_a) ^ crc_b
}

/// CRC32C of `data`, computed in parallel chunks when it is large.
pub fn crc32c(data: &[u8]) -> u32 {
    if data.len() <= 2 * CHUNK || crate::base::par::is_serial() {
        return serial(data);
    }
    // A library read's mapping (one truncated under it reads as zeros and the read fails) is
    // read by the chunks' threads as by the caller; a trainer's own call is not the library's
    // read, and a truncation under it raises SIGBUS as any of its own reads does.
    let library = crate::base::sigbus::is_reading();
    crate::base::par::run(|| {
        data.par_chunks(CHUNK)
            .map(|c| {
                let _reading = library.then(crate::base::sigbus::reading);
                (serial(c), c.len())
            })
            .collect::<Vec<_>>()
    })
    .into_iter()
    .fold(0, |acc, (crc, len)| combine(acc, crc, len as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product of polynomials: 1 (x^0, bit 31) is the identity, 0 absorbs, and it commutes
    /// (before, `multiply(0, b)` never returned).
    #[test]
    fn multiply_is_a_product() {
        for b in [0u32, 1, 0x8000_0000, 0xE306_9283, u32::MAX] {
            assert_eq!(multiply(1 << 31, b), b);
            assert_eq!(multiply(b, 1 << 31), b);
            assert_eq!(multiply(0, b), 0);
            assert_eq!(multiply(b, 0), 0);
            assert_eq!(multiply(b, 0x1234_5678), multiply(0x1234_5678, b));
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(mask(0), 0xA282_EAD8);
        for c in [0u32, 1, 0xdead_beef, u32::MAX] {
            assert_eq!(unmask(mask(c)), c);
        }
    }

    #[test]
    fn combine_matches_the_whole_and_the_crc32c_crate() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for split in [0usize, 1, 3, 100, 4096, 65_537, 299_999, 300_000] {
            let (a, b) = data.split_at(split);
            let (ca, cb) = (crc32c::crc32c(a), crc32c::crc32c(b));
            assert_eq!(
                combine(ca, cb, b.len() as u64),
                crc32c::crc32c(&data),
                "{split}"
            );
        }
        for (a, b, len) in [
            (0, 0, 0),
            (1, 2, 1 << 20),
            (u32::MAX, 7, (1 << 40) + 3),
            (0xdead_beef, 7, (1 << 61) + 3),
            (0xdead_beef, 7, (1 << 62) + 7),
            (0xdead_beef, 7, u64::MAX),
        ] {
            assert_eq!(
                combine(a, b, len),
                crc32c::crc32c_combine(a, b, len as usize),
                "{len}"
            );
        }
    }

    #[test]
    fn parallel_matches_serial() {
        let data: Vec<u8> = (0..(9 * CHUNK + 12345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let serial = crc32c::crc32c(&data);
        assert_eq!(crc32c(&data), serial);
    }
}
