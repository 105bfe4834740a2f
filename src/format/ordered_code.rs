//! The three OrderedCode encodings TensorFlow uses in slice keys (docs/format.md#63-slice-keys).

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
    // Smallest n in 1..=10 with x < 2^(7n-1).
    let mut n = 1;
    while n < 10 && (7 * n - 1) < 64 && x >= (1u64 << (7 * n - 1)) {
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
}
