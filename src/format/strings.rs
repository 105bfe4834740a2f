//! The V2 encoding of string tensors (docs/format.md#54-strings): varint lengths, a masked "length
//! checksum", then the raw bytes; the entry CRC extends the length checksum with its own stored
//! bytes and the strings.

use crate::base::crc;
use crate::base::tensor::Strings;
use crate::format::sstable::{get_varint, put_varint};

/// Why a stored string tensor could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StringError {
    /// Structure broken (lengths past the end, trailing bytes, ...).
    Corrupt(String),
    /// A checksum does not match: (what, stored, computed).
    Checksum(&'static str, u32, u32),
    /// The decoded strings need this many bytes, which cannot be allocated.
    Allocation(u64),
}

fn length_crc(crc: u32, len: u64, big_endian: bool) -> u32 {
    if len <= u64::from(u32::MAX) {
        let l = len as u32;
        let b = if big_endian {
            l.to_be_bytes()
        } else {
            l.to_le_bytes()
        };
        crc32c::crc32c_append(crc, &b)
    } else {
        let b = if big_endian {
            len.to_be_bytes()
        } else {
            len.to_le_bytes()
        };
        crc32c::crc32c_append(crc, &b)
    }
}

/// Reads the `n` lengths of a stored string tensor, checks both checksums against `entry_crc`
/// (unmasked) and the lengths against the stored size, and calls `on_end` with each string's
/// end offset in the string data. Returns where the string data starts. Allocates nothing.
fn scan(
    bytes: &[u8],
    n: usize,
    entry_crc: u32,
    big_endian: bool,
    mut on_end: impl FnMut(u64),
) -> Result<usize, StringError> {
    let mut pos = 0;
    let mut c1 = 0u32;
    let mut total: u64 = 0;
    for i in 0..n {
        let len = get_varint(bytes, &mut pos, 10).ok_or_else(|| {
            StringError::Corrupt(format!(
                "length of element {i} of {n} runs past the stored size ({} bytes)",
                bytes.len()
            ))
        })?;
        c1 = length_crc(c1, len, big_endian);
        total = total.saturating_add(len);
        on_end(total);
    }
    let Some(stored) = bytes.get(pos..pos + 4) else {
        return Err(StringError::Corrupt(format!(
            "lengths end at byte {pos}, no room for the length checksum in {} bytes",
            bytes.len()
        )));
    };
    // The producer's byte order, as the lengths (TensorFlow's ReadStringTensor swaps it).
    let stored: [u8; 4] = stored.try_into().unwrap_or_default();
    let stored_lc = if big_endian {
        u32::from_be_bytes(stored)
    } else {
        u32::from_le_bytes(stored)
    };
    if crc::unmask(stored_lc) != c1 {
        return Err(StringError::Checksum(
            "string length checksum",
            crc::unmask(stored_lc),
            c1,
        ));
    }
    let c2 = crc32c::crc32c_append(c1, &stored);
    pos += 4;
    let rest = &bytes[pos..];
    if total != rest.len() as u64 {
        return Err(StringError::Corrupt(format!(
            "lengths add up to {total} bytes but {} bytes of string data are stored",
            rest.len()
        )));
    }
    let c2 = crc32c::crc32c_append(c2, rest);
    if c2 != entry_crc {
        return Err(StringError::Checksum("checksum", entry_crc, c2));
    }
    Ok(pos)
}

/// Checks a stored string tensor of `n` elements without decoding it (nothing is allocated).
pub(crate) fn verify(
    bytes: &[u8],
    n: usize,
    entry_crc: u32,
    big_endian: bool,
) -> Result<(), StringError> {
    scan(bytes, n, entry_crc, big_endian, |_| ()).map(drop)
}

/// Decodes `n` strings from the stored bytes, checking both checksums (see [`scan`]). The memory
/// taken is the string bytes plus 8 bytes per string, both allocated fallibly: a hostile element
/// count is bounded by the stored size (each length takes at least a byte).
pub(crate) fn decode(
    bytes: &[u8],
    n: usize,
    entry_crc: u32,
    big_endian: bool,
) -> Result<Strings, StringError> {
    if n > bytes.len() {
        return Err(StringError::Corrupt(format!(
            "{n} strings cannot fit in {} bytes",
            bytes.len()
        )));
    }
    let mut ends: Vec<u64> = Vec::new();
    ends.try_reserve_exact(n)
        .map_err(|_| StringError::Allocation(n as u64 * 8))?;
    let start = scan(bytes, n, entry_crc, big_endian, |end| ends.push(end))?;
    let rest = &bytes[start..];
    let mut data = Vec::new();
    data.try_reserve_exact(rest.len())
        .map_err(|_| StringError::Allocation(rest.len() as u64))?;
    data.extend_from_slice(rest);
    Strings::from_parts(ends, data)
        .ok_or_else(|| StringError::Corrupt("the lengths do not add up".into()))
}

/// Checks a `variant` tensor's stored bytes (docs/format.md#55-variant): per element a varint
/// length, the serialized bytes and a masked running CRC; the running CRC covers each length as 8
/// little-endian bytes, the element bytes and each stored checksum, and its final value is the entry
/// CRC.
pub(crate) fn verify_variant(bytes: &[u8], n: usize, entry_crc: u32) -> Result<(), StringError> {
    let mut pos = 0;
    let mut crc = 0u32;
    for i in 0..n {
        let corrupt = |what: &str| {
            StringError::Corrupt(format!(
                "variant element {i} of {n}: {what} runs past the stored size"
            ))
        };
        let len = get_varint(bytes, &mut pos, 10).ok_or_else(|| corrupt("length"))?;
        crc = crc32c::crc32c_append(crc, &len.to_le_bytes());
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| pos.checked_add(l))
            .filter(|&e| e <= bytes.len());
        let end = end.ok_or_else(|| corrupt("data"))?;
        crc = crc32c::crc32c_append(crc, &bytes[pos..end]);
        let stored = bytes.get(end..end + 4).ok_or_else(|| corrupt("checksum"))?;
        let masked = u32::from_le_bytes(stored.try_into().unwrap_or_default());
        if crc::unmask(masked) != crc {
            return Err(StringError::Checksum(
                "variant element checksum",
                crc::unmask(masked),
                crc,
            ));
        }
        crc = crc32c::crc32c_append(crc, stored);
        pos = end + 4;
    }
    if pos != bytes.len() {
        return Err(StringError::Corrupt(format!(
            "{} bytes left after {n} variant elements",
            bytes.len() - pos
        )));
    }
    if crc != entry_crc {
        return Err(StringError::Checksum("checksum", entry_crc, crc));
    }
    Ok(())
}

/// Encodes strings; returns the bytes and the unmasked entry CRC.
pub(crate) fn encode(strings: &Strings, big_endian: bool) -> (Vec<u8>, u32) {
    let mut out = Vec::new();
    let mut c1 = 0u32;
    for s in strings.iter() {
        let len = s.len() as u64;
        put_varint(&mut out, len);
        c1 = length_crc(c1, len, big_endian);
    }
    let lc = if big_endian {
        crc::mask(c1).to_be_bytes()
    } else {
        crc::mask(c1).to_le_bytes()
    };
    out.extend_from_slice(&lc);
    let c2 = crc32c::crc32c_append(c1, &lc);
    out.extend_from_slice(strings.bytes());
    (out, crc32c::crc32c_append(c2, strings.bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_rule() {
        // Two elements encoded by the D.5 rule.
        let mut bytes = Vec::new();
        let mut crc = 0u32;
        for elem in [&b"abc"[..], b""] {
            put_varint(&mut bytes, elem.len() as u64);
            crc = crc32c::crc32c_append(crc, &(elem.len() as u64).to_le_bytes());
            bytes.extend_from_slice(elem);
            crc = crc32c::crc32c_append(crc, elem);
            let m = crc::mask(crc).to_le_bytes();
            bytes.extend_from_slice(&m);
            crc = crc32c::crc32c_append(crc, &m);
        }
        assert_eq!(verify_variant(&bytes, 2, crc), Ok(()));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            assert!(verify_variant(&bad, 2, crc).is_err(), "flip at {i}");
        }
        assert!(verify_variant(&bytes[..bytes.len() - 1], 2, crc).is_err());
    }

    #[test]
    fn spec_example() {
        let strings: Strings = [&b"ab"[..], b"", b"\x00\xffz"].into_iter().collect();
        let (bytes, crc) = encode(&strings, false);
        assert_eq!(bytes.len(), 12);
        assert_eq!(&bytes[..3], &[2, 0, 3]);
        assert_eq!(&bytes[7..], b"ab\x00\xffz");
        assert_eq!(decode(&bytes, 3, crc, false).unwrap(), strings);
        let (empty, crc0) = encode(&Strings::new(), false);
        assert_eq!(empty, crc::mask(0).to_le_bytes());
        assert!(decode(&empty, 0, crc0, false).unwrap().is_empty());
        let mut bad = bytes.clone();
        bad[8] ^= 1;
        assert!(matches!(
            decode(&bad, 3, crc, false),
            Err(StringError::Checksum("checksum", ..))
        ));
        bad = bytes.clone();
        bad[0] = 1;
        assert!(decode(&bad, 3, crc, false).is_err());
        assert!(verify(&bytes, 3, crc, false).is_ok());
        assert!(verify(&bad, 3, crc, false).is_err());
        // A big-endian producer (TensorFlow's WriteStringTensor in its native order): the
        // length checksum is over big-endian uint32 lengths and is itself stored big-endian.
        let c1 = [2u32, 0, 3]
            .iter()
            .fold(0, |c, l| crc32c::crc32c_append(c, &l.to_be_bytes()));
        for (lc, ok) in [
            (crc::mask(c1).to_be_bytes(), true),
            (crc::mask(c1).to_le_bytes(), false),
        ] {
            let mut be = vec![2, 0, 3];
            be.extend_from_slice(&lc);
            be.extend_from_slice(b"ab\x00\xffz");
            let crc = crc32c::crc32c_append(crc32c::crc32c_append(c1, &lc), b"ab\x00\xffz");
            assert_eq!(
                decode(&be, 3, crc, true).ok(),
                ok.then(|| strings.clone()),
                "{ok}"
            );
            if ok {
                assert_eq!(encode(&strings, true), (be, crc));
            }
        }
        // More strings than bytes cannot be stored: refused before anything is allocated.
        assert!(matches!(
            decode(&bytes, 1 << 40, crc, false),
            Err(StringError::Corrupt(_))
        ));
    }

    /// Damaged lengths are refused with what is wrong, and a length past `u32::MAX` enters the
    /// length checksum as 8 bytes, as TensorFlow's `WriteStringTensor` puts it (found uncovered by
    /// a coverage run).
    #[test]
    fn damaged_lengths_and_the_64_bit_length_rule() {
        let corrupt = |bytes: &[u8], n: usize| match verify(bytes, n, 0, false) {
            Err(StringError::Corrupt(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            corrupt(&[0x80], 1),
            "length of element 0 of 1 runs past the stored size (1 bytes)"
        );
        assert_eq!(
            corrupt(&[2, 0, 3], 3),
            "lengths end at byte 3, no room for the length checksum in 3 bytes"
        );
        // One string of 2^32 bytes, none stored: with the 8-byte rule the length checksum
        // passes and the size check speaks; with a 4-byte rule it would be a checksum error.
        let len = 1u64 << 32;
        let mut bytes = Vec::new();
        put_varint(&mut bytes, len);
        let c1 = crc32c::crc32c_append(0, &len.to_le_bytes());
        bytes.extend_from_slice(&crc::mask(c1).to_le_bytes());
        assert_eq!(
            corrupt(&bytes, 1),
            "lengths add up to 4294967296 bytes but 0 bytes of string data are stored"
        );
        let mut c1_be = Vec::new();
        put_varint(&mut c1_be, len);
        let c = crc32c::crc32c_append(0, &len.to_be_bytes());
        c1_be.extend_from_slice(&crc::mask(c).to_be_bytes());
        assert!(matches!(
            verify(&c1_be, 1, 0, true),
            Err(StringError::Corrupt(m)) if m.starts_with("lengths add up to 4294967296")
        ));
    }
}
