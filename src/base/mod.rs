//! The crate's vocabulary, below every layer: errors, dtypes, tensors and their bytes, slices and
//! the boxes they cover, CRC32C, file mappings and memory helpers. Nothing here knows a file
//! format or a load.

pub(crate) mod copy;
pub mod crc;
pub(crate) mod device;
pub(crate) mod dtype;
pub(crate) mod error;
pub(crate) mod mmap;
pub(crate) mod par;
pub(crate) mod partial;
pub(crate) mod sigbus;
pub(crate) mod slice;
pub(crate) mod suggest;
pub(crate) mod tensor;

/// Deterministic pseudo-random numbers below `n`, from `seed` (xorshift64), for the tests that
/// generate inputs.
#[cfg(test)]
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}
