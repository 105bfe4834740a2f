//! How a slice is stored: the `TensorSliceProto` of an entry (docs/format.md#45-tensorsliceproto)
//! and the key of a slice entry, made of OrderedCode fields (docs/format.md#63-slice-keys).

use super::{ordered_code, proto};
use crate::base::slice::{Extent, Slice};

/// A `TensorSliceProto` as a [`Slice`]: a missing length (or -1) is a whole dimension, which must
/// start at 0.
pub(crate) fn slice_from_proto(p: &proto::TensorSliceProto) -> Result<Slice, String> {
    let extents = p
        .extent
        .iter()
        .map(|e| match e.has_length {
            None | Some(proto::HasLength::Length(-1)) => {
                if e.start != 0 {
                    Err(format!(
                        "a full extent must start at 0, found start {}",
                        e.start
                    ))
                } else {
                    Ok(Extent::Full)
                }
            }
            Some(proto::HasLength::Length(length)) => {
                if e.start < 0 || length <= 0 {
                    Err(format!("bad extent start {} length {length}", e.start))
                } else {
                    Ok(Extent::Range {
                        start: e.start as u64,
                        length: length as u64,
                    })
                }
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Slice::new(extents))
}

/// The `TensorSliceProto` of `slice` (a whole dimension has no length).
pub(crate) fn slice_to_proto(slice: &Slice) -> proto::TensorSliceProto {
    proto::TensorSliceProto {
        extent: slice
            .extents()
            .iter()
            .map(|e| match *e {
                Extent::Full => proto::Extent::default(),
                Extent::Range { start, length } => proto::Extent {
                    start: start as i64,
                    has_length: Some(proto::HasLength::Length(length as i64)),
                },
            })
            .collect(),
    }
}

/// `EncodeTensorNameSlice(name, slice)`: the key of a slice entry (docs/format.md#63-slice-keys).
pub(crate) fn slice_key(name: &[u8], slice: &Slice) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 4 + 4 * slice.rank());
    ordered_code::write_num_increasing(&mut key, 0);
    ordered_code::write_string(&mut key, name);
    ordered_code::write_num_increasing(&mut key, slice.rank() as u64);
    for e in slice.extents() {
        let (start, length) = match *e {
            Extent::Full => (0, -1),
            Extent::Range { start, length } => (start as i64, length as i64),
        };
        ordered_code::write_signed_increasing(&mut key, start);
        ordered_code::write_signed_increasing(&mut key, length);
    }
    key
}

/// The tensor name and slice of a slice entry's key (the inverse of [`slice_key`]); `None` for
/// any other key, or bytes that do not decode whole.
pub(crate) fn parse_slice_key(key: &[u8]) -> Option<(Vec<u8>, Slice)> {
    let mut src = key;
    if ordered_code::read_num_increasing(&mut src)? != 0 {
        return None;
    }
    let name = ordered_code::read_string(&mut src)?;
    let rank = ordered_code::read_num_increasing(&mut src)?;
    let mut ranges = Vec::new();
    for _ in 0..rank.min(64) {
        let start = ordered_code::read_signed_increasing(&mut src)?;
        let length = ordered_code::read_signed_increasing(&mut src)?;
        ranges.push((start, length));
    }
    if ranges.len() as u64 != rank || !src.is_empty() {
        return None;
    }
    let extents = ranges
        .into_iter()
        .map(|(start, length)| match (start, length) {
            (0, -1) => Some(Extent::Full),
            (s, l) if s >= 0 && l >= 0 => Some(Extent::Range {
                start: s as u64,
                length: l as u64,
            }),
            _ => None,
        })
        .collect::<Option<Vec<Extent>>>()?;
    Some((name, Slice::new(extents)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_keys_match_tensorflow() {
        // docs/format.md's example: scope/var1 rows [80,100) of a [100,100] tensor.
        let s = Slice::from_ranges(&[(80, 20), (0, 100)]);
        let key = slice_key(b"scope/var1", &s);
        let mut want = vec![0x00];
        want.extend_from_slice(b"scope/var1");
        want.extend_from_slice(&[0x00, 0x01, 0x01, 0x02, 0xc0, 0x50, 0x94, 0x80, 0xc0, 0x64]);
        assert_eq!(key, want);
        // A scalar "s" and a full 1-D "h", as V1 files key them.
        assert_eq!(
            slice_key(b"s", &Slice::full(0)),
            vec![0x00, 0x73, 0x00, 0x01, 0x00]
        );
        assert_eq!(
            slice_key(b"h", &Slice::full(1)),
            vec![0x00, 0x68, 0x00, 0x01, 0x01, 0x01, 0x80, 0x7f]
        );
    }

    #[test]
    fn slice_keys_read_back_and_name_their_entry() {
        for (name, slice) in [
            (
                &b"scope/var1"[..],
                Slice::from_ranges(&[(80, 20), (0, 100)]),
            ),
            (b"s", Slice::full(0)),
            (
                b"emb",
                Slice::new(vec![
                    Extent::Range {
                        start: 300,
                        length: 1 << 40,
                    },
                    Extent::Full,
                ]),
            ),
            (b"odd\x00\xffname", Slice::full(3)),
        ] {
            let key = slice_key(name, &slice);
            assert_eq!(parse_slice_key(&key), Some((name.to_vec(), slice.clone())));
            assert_eq!(parse_slice_key(&key[..key.len() - 1]), None);
        }
        assert_eq!(parse_slice_key(b"plain/name"), None);
        assert_eq!(
            crate::format::index::key_name(&slice_key(
                b"emb",
                &Slice::from_ranges(&[(0, 2), (1, 3)])
            )),
            "emb (slice 0,2:1,3)"
        );
        assert_eq!(crate::format::index::key_name(b"plain/name"), "plain/name");
    }

    /// A slice key with bytes after its last extent, or a negative start or length (other than
    /// a whole dimension's 0,-1), is not a slice key.
    #[test]
    fn damaged_slice_keys_are_not_slice_keys() {
        let key_of_rank = |rank: u64, extents: &[(i64, i64)]| {
            let mut k = Vec::new();
            ordered_code::write_num_increasing(&mut k, 0);
            ordered_code::write_string(&mut k, b"v");
            ordered_code::write_num_increasing(&mut k, rank);
            for &(s, l) in extents {
                ordered_code::write_signed_increasing(&mut k, s);
                ordered_code::write_signed_increasing(&mut k, l);
            }
            k
        };
        let key = |extents: &[(i64, i64)]| key_of_rank(extents.len() as u64, extents);
        let good = key(&[(2, 3), (0, -1)]);
        assert_eq!(
            parse_slice_key(&good),
            Some((
                b"v".to_vec(),
                Slice::new(vec![
                    Extent::Range {
                        start: 2,
                        length: 3
                    },
                    Extent::Full
                ])
            ))
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(parse_slice_key(&trailing), None);
        for bad in [(-2, 3), (1, -2), (-1, -1), (3, -1)] {
            assert_eq!(parse_slice_key(&key(&[(0, 4), bad])), None, "{bad:?}");
        }
        // Fewer extents than the rank says, or more.
        assert_eq!(parse_slice_key(&key_of_rank(2, &[(0, 4)])), None);
        assert_eq!(parse_slice_key(&key_of_rank(1, &[(0, 4), (0, 4)])), None);
    }

    /// A stored `TensorSliceProto` with a negative start, a length of zero or less (other than a
    /// whole dimension's -1), or a whole dimension that does not start at 0, is refused, as
    /// TensorFlow's `TensorSlice::BuildTensorSlice` refuses it.
    #[test]
    fn damaged_slice_protos_are_refused() {
        let proto = |extents: &[(i64, Option<i64>)]| proto::TensorSliceProto {
            extent: extents
                .iter()
                .map(|&(start, length)| proto::Extent {
                    start,
                    has_length: length.map(proto::HasLength::Length),
                })
                .collect(),
        };
        assert_eq!(
            slice_from_proto(&proto(&[(2, Some(3)), (0, None), (0, Some(-1))])),
            Ok(Slice::new(vec![
                Extent::Range {
                    start: 2,
                    length: 3
                },
                Extent::Full,
                Extent::Full
            ]))
        );
        for bad in [
            (-1, Some(2)),
            (0, Some(0)),
            (2, Some(-3)),
            (5, None),
            (1, Some(-1)),
        ] {
            let e = slice_from_proto(&proto(&[(0, Some(4)), bad])).unwrap_err();
            assert!(e.contains(&format!("start {}", bad.0)), "{bad:?}: {e}");
        }
    }
}
