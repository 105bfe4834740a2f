//! The three OrderedCode encodings TensorFlow uses in slice keys (docs/format.md#63-slice-keys),
//! written (to look entries up) and read back (to name an entry in an error). Each reader takes
//! its value off the front of `src`, or returns `None` for bytes that are not one.

/// `NumIncreasing`: a length byte, then the big-endian bytes of `v` without leading zeros.
pub(crate) fn write_num_increasing(out: &mut Vec<u8>, v: u64) {
    let n = (8 - v.leading_zeros() as usize / 8).min(8);
    let n = if v == 0 { 0 } else { n };
    out.push(n as u8);
    out.extend_from_slice(&v.to_be_bytes()[8 - n..]);
}

/// `String`: bytes with `00 → 00 FF` and `FF → FF 00`, terminated by `00 01`.
pub(crate) fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            0x00 => out.extend_from_slice(&[0x00, 0xff]),
            0xff => out.extend_from_slice(&[0xff, 0x00]),
            b => out.push(b),
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// `SignedIncreasing`: an order-preserving 1–10 byte encoding of an `i64`.
pub(crate) fn write_signed_increasing(out: &mut Vec<u8>, v: i64) {
    const H1: [u8; 11] = [
        0, 0x80, 0xc0, 0xe0, 0xf0, 0xf8, 0xfc, 0xfe, 0xff, 0xff, 0xff,
    ];
    const H2: [u8; 11] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0xc0];
    let x = if v >= 0 { v as u64 } else { !(v as u64) };
    // Smallest n in 1..=10 with x < 2^(7n-1) (every x is below 2^63, n = 10's bound).
    let mut n = 1;
    while n < 10 && x >= (1u64 << (7 * n - 1)) {
        n += 1;
    }
    // 10-byte big-endian two's complement, sign-extended.
    let mut buf = [if v < 0 { 0xff } else { 0x00 }; 10];
    buf[2..].copy_from_slice(&v.to_be_bytes());
    let bytes = &mut buf[10 - n..];
    bytes[0] ^= H1[n];
    if n > 1 {
        bytes[1] ^= H2[n];
    }
    out.extend_from_slice(bytes);
}

/// Reads a `NumIncreasing`.
pub(crate) fn read_num_increasing(src: &mut &[u8]) -> Option<u64> {
    let (&n, rest) = src.split_first()?;
    let n = n as usize;
    if n > 8 || rest.len() < n {
        return None;
    }
    let v = rest[..n].iter().fold(0u64, |v, &b| v << 8 | b as u64);
    *src = &rest[n..];
    Some(v)
}

/// Reads a `String`.
pub(crate) fn read_string(src: &mut &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        match (*src.get(i)?, src.get(i + 1).copied()) {
            (0x00, Some(0x01)) => {
                *src = &src[i + 2..];
                return Some(out);
            }
            (0x00, Some(0xff)) => out.push(0x00),
            (0xff, Some(0x00)) => out.push(0xff),
            (0x00 | 0xff, _) => return None,
            (b, _) => {
                out.push(b);
                i += 1;
                continue;
            }
        }
        i += 2;
    }
}

/// Reads a `SignedIncreasing` (TensorFlow's `ReadSignedNumIncreasing`).
pub(crate) fn read_signed_increasing(src: &mut &[u8]) -> Option<i64> {
    const MASK: [u64; 11] = [
        0,
        0x80,
        0xc000,
        0xe0_0000,
        0xf000_0000,
        0xf8_0000_0000,
        0xfc00_0000_0000,
        0xfe_0000_0000_0000,
        0xff00_0000_0000_0000,
        0x8000_0000_0000_0000,
        0,
    ];
    let &raw = src.first()?;
    let flip: u64 = if raw & 0x80 == 0 { !0 } else { 0 };
    let first = raw ^ flip as u8;
    let (len, x) = if first != 0xff {
        let len = (first ^ 0xff).leading_zeros() as usize; // 7 - floor(log2(first ^ 0xff))
        let bytes = src.get(..len)?;
        (len, bytes.iter().fold(flip, |x, &b| x << 8 | b as u64))
    } else {
        let second = *src.get(1)? ^ flip as u8;
        let len = match second {
            0..0x80 => 8,
            0x80..0xc0 => 9,
            0xc0 if *src.get(2)? ^ (flip as u8) < 0x80 => 10,
            _ => return None,
        };
        let bytes = src.get(len - 8..len)?;
        (len, bytes.iter().fold(0u64, |x, &b| x << 8 | b as u64))
    };
    *src = &src[len..];
    Some((x ^ MASK[len]) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(v: i64) -> Vec<u8> {
        let mut out = vec![];
        write_signed_increasing(&mut out, v);
        out
    }

    #[test]
    fn vectors_from_the_spec() {
        assert_eq!(signed(0), [0x80]);
        assert_eq!(signed(1), [0x81]);
        assert_eq!(signed(20), [0x94]);
        assert_eq!(signed(63), [0xbf]);
        assert_eq!(signed(64), [0xc0, 0x40]);
        assert_eq!(signed(80), [0xc0, 0x50]);
        assert_eq!(signed(100), [0xc0, 0x64]);
        assert_eq!(signed(8191), [0xdf, 0xff]);
        assert_eq!(signed(8192), [0xe0, 0x20, 0x00]);
        assert_eq!(signed(-1), [0x7f]);
        assert_eq!(signed(-64), [0x40]);
        assert_eq!(signed(-65), [0x3f, 0xbf]);
        assert_eq!(signed(-2048), [0x38, 0x00]);
        assert_eq!(signed(1 << 62), [0xff, 0xc0, 0x40, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(signed(i64::MIN), [0x00, 0x3f, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            signed(i64::MAX),
            [0xff, 0xc0, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        let mut out = vec![];
        for v in [0u64, 1, 2, 255, 256] {
            write_num_increasing(&mut out, v);
        }
        assert_eq!(
            out,
            [0x00, 0x01, 0x01, 0x01, 0x02, 0x01, 0xff, 0x02, 0x01, 0x00]
        );
        out.clear();
        write_string(&mut out, b"a\0b\xffc");
        assert_eq!(out, [0x61, 0x00, 0xff, 0x62, 0xff, 0x00, 0x63, 0x00, 0x01]);
    }

    #[test]
    fn signed_order_is_preserved() {
        let vals = [
            i64::MIN,
            -1 << 40,
            -65,
            -64,
            -1,
            0,
            1,
            63,
            64,
            8191,
            8192,
            1 << 62,
            i64::MAX,
        ];
        for w in vals.windows(2) {
            assert!(signed(w[0]) < signed(w[1]), "{} vs {}", w[0], w[1]);
        }
    }

    #[test]
    fn every_encoding_reads_back() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut values: Vec<i64> =
            vec![0, 1, -1, 63, 64, -64, -65, i64::MAX, i64::MIN, 8191, -8192];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push((x as i64) >> (x % 64));
        }
        for v in values {
            let mut out = vec![];
            write_signed_increasing(&mut out, v);
            write_num_increasing(&mut out, v as u64);
            write_string(&mut out, &v.to_le_bytes());
            out.push(0x42);
            let mut src = &out[..];
            assert_eq!(read_signed_increasing(&mut src), Some(v), "{v}");
            assert_eq!(read_num_increasing(&mut src), Some(v as u64), "{v}");
            assert_eq!(read_string(&mut src).as_deref(), Some(&v.to_le_bytes()[..]));
            assert_eq!(src, [0x42]);
        }
        // Not encodings: cut short, a bad escape, a length over 8.
        assert_eq!(read_string(&mut &b"ab"[..]), None);
        assert_eq!(read_string(&mut &[0x61, 0x00, 0x02][..]), None);
        assert_eq!(read_num_increasing(&mut &[9u8, 1, 2][..]), None);
        assert_eq!(read_num_increasing(&mut &[2u8, 1][..]), None);
        assert_eq!(read_signed_increasing(&mut &[0xc0u8][..]), None);
        assert_eq!(read_signed_increasing(&mut &[][..]), None);
        // Ten bytes whose third has its top bit set hold more than 64 bits (either sign).
        let over = [0xff, 0xc0, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(read_signed_increasing(&mut &over[..]), None);
        assert_eq!(read_signed_increasing(&mut &over.map(|b| !b)[..]), None);
    }
}
