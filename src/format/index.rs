//! The V2 bundle index (docs/format.md#4-protocol-buffers, #56-what-the-reader-validates): header
//! record, entries, and their validation. Every entry that leaves this module has a known dtype, a
//! valid shape and a size consistent with both.

use std::path::Path;

use prost::Message;

use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::base::slice::{num_elements, Slice, MAX_RANK};
use crate::format::proto;
use crate::format::slice_codec::slice_from_proto;
use crate::format::sstable::Table;

/// A validated index entry.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The SSTable key (a tensor name, or an encoded slice key).
    pub key: Vec<u8>,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub shard: u32,
    pub offset: u64,
    pub size: u64,
    /// Unmasked CRC32C.
    pub crc: u32,
    /// Non-empty for the full-tensor entry of a partitioned tensor.
    pub slices: Vec<Slice>,
}

/// The parsed header and entries, sorted by key.
pub(crate) struct BundleIndex {
    pub num_shards: u32,
    pub big_endian: bool,
    pub entries: Vec<Entry>,
    /// Data blocks of the index table (for reports).
    pub blocks: usize,
    /// What is wrong with the table's metaindex block, which TensorFlow never reads (an error
    /// only for `verify`): its offset and the reason, of an [`ErrorKind::CorruptTable`].
    pub metaindex: Option<(u64, String)>,
}

/// Printable form of a key for error messages (slice keys start with a 0 byte).
pub(crate) fn key_name(key: &[u8]) -> String {
    match crate::format::slice_codec::parse_slice_key(key) {
        // A slice entry of a partitioned tensor: its name and box, not the key's raw bytes.
        Some((name, slice)) => format!("{} (slice {slice})", String::from_utf8_lossy(&name)),
        None => String::from_utf8_lossy(key).into_owned(),
    }
}

pub(crate) fn check_version(path: &Path, v: Option<&proto::VersionDef>) -> Result<()> {
    let v = v.cloned().unwrap_or_default();
    let reason = if v.producer < 0 {
        Some(format!(
            "producer version {} is below the minimum 0",
            v.producer
        ))
    } else if v.min_consumer > 1 {
        Some(format!(
            "it needs a reader of version >= {}, this reader is version 1",
            v.min_consumer
        ))
    } else if v.bad_consumers.contains(&1) {
        Some("it disallows readers of version 1".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ErrorKind::BadHeader {
            path: path.into(),
            reason: format!("unsupported checkpoint version: {reason}"),
        }
        .into()),
        None => Ok(()),
    }
}

/// Validates a `TensorShapeProto` as a concrete shape.
pub(crate) fn parse_shape(shape: Option<&proto::TensorShapeProto>) -> Result<Vec<u64>, String> {
    let Some(shape) = shape else {
        return Ok(Vec::new());
    };
    // `unknown_rank` is ignored, as TensorFlow's `TensorShape` (not `PartialTensorShape`) takes
    // a proto (`TensorShapeBase::IsValidShape`: "TensorShape allows parsing protos with
    // unknown_shape() set"): TF 2.21 reads such an entry with its dims as that shape, and one with
    // no dims as a scalar (checked on a TF-written bundle whose index was rewritten so).
    if shape.dim.len() > MAX_RANK {
        return Err(format!(
            "{} dimensions, at most {MAX_RANK} allowed",
            shape.dim.len()
        ));
    }
    let dims: Vec<u64> = shape
        .dim
        .iter()
        .map(|d| u64::try_from(d.size).map_err(|_| format!("negative dimension {}", d.size)))
        .collect::<Result<_, _>>()?;
    check_shape(&dims)?;
    Ok(dims)
}

/// Every slice a partitioned tensor's entry lists has an entry of its own, keyed by the tensor's
/// name and the slice, so the listed slices' keys are bounded by the bytes of the index's keys
/// (`key_bytes`, as decoded), with [`MISSING_SLICE_KEYS`] to spare for slices whose entries are
/// missing (an error only when such a slice is read, as in TensorFlow). Each listed slice is
/// charged the shortest key it can have (section E.3: the name, 5 bytes of framing and the rank,
/// and at least one byte per start and per length). Reading builds each listed slice's key and
/// its bookkeeping: an entry listing a million slices of a megabyte name from a few megabytes of
/// index would take terabytes, and millions of slices of a one-byte name gigabytes.
fn check_slice_listing(path: &Path, key_bytes: usize, entries: &[Entry]) -> Result<()> {
    let budget = key_bytes.saturating_add(MISSING_SLICE_KEYS);
    let mut keys = 0usize;
    for e in entries {
        let shortest_key = e.key.len() + 5 + 2 * e.shape.len();
        keys = keys.saturating_add(e.slices.len().saturating_mul(shortest_key));
        if keys > budget {
            return Err(ErrorKind::BadEntry {
                path: path.into(),
                tensor: key_name(&e.key),
                reason: format!(
                    "lists {} slices of its {}-byte name: with the other entries' slices, more \
                     slice keys ({keys} bytes) than the index's entries hold ({key_bytes} bytes \
                     of keys)",
                    e.slices.len(),
                    e.key.len()
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// The slice keys an index may list beyond those its entries hold (missing slice entries): 4 MiB
/// of keys, at most about 600,000 slices.
const MISSING_SLICE_KEYS: usize = 4 << 20;

/// TensorFlow's rule for a concrete shape (`TensorShape::IsValidShape`): at most [`MAX_RANK`]
/// dimensions, and the element count, multiplied out dimension by dimension, within int64 at
/// every step (`[2^32, 2^31, 0]` is refused although it holds no element: the running product
/// overflows before the 0).
pub(crate) fn check_shape(dims: &[u64]) -> Result<(), String> {
    if dims.len() > MAX_RANK {
        return Err(format!(
            "{} dimensions, at most {MAX_RANK} allowed",
            dims.len()
        ));
    }
    // (A dimension is an int64 in the file: a larger one would read back negative.)
    if let Some(d) = dims.iter().find(|&&d| d > i64::MAX as u64) {
        return Err(format!(
            "dimension {d} of shape {dims:?} is larger than int64 allows"
        ));
    }
    let mut n = 1u64;
    for &d in dims {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| format!("element count of shape {dims:?} overflows int64"))?;
    }
    Ok(())
}

impl BundleIndex {
    /// Parses the index table at `path` (its bytes in `file`).
    pub(crate) fn parse(path: &Path, file: &[u8]) -> Result<BundleIndex> {
        let table = Table::open(path, file)?;
        let mut header: Option<proto::BundleHeaderProto> = None;
        let mut entries: Vec<Entry> = Vec::new();
        let mut first = true;
        let mut key_bytes = 0usize;
        table.for_each(|key, value| {
            key_bytes = key_bytes.saturating_add(key.len());
            if first {
                first = false;
                if !key.is_empty() {
                    return Err(ErrorKind::BadHeader {
                        path: path.into(),
                        reason: "the first record is not the header (key \"\")".into(),
                    }
                    .into());
                }
                let h = proto::BundleHeaderProto::decode(value).map_err(|e| {
                    // A V1 checkpoint file given (or renamed) as a V2 index.
                    let v1 =
                        proto::SavedTensorSlices::decode(value).is_ok_and(|s| s.meta.is_some());
                    ErrorKind::BadHeader {
                        path: path.into(),
                        reason: if v1 {
                            "this is a V1 checkpoint file (its first record lists saved tensor \
                             slices), not a V2 index: give the V1 file itself as the checkpoint"
                                .into()
                        } else {
                            format!("BundleHeaderProto not parseable: {e}")
                        },
                    }
                })?;
                header = Some(h);
                return Ok(());
            }
            // Keys are strictly increasing: `Table::for_each` checks it, and `get` relies on it.

            entries.push(parse_entry(path, key, value)?);
            Ok(())
        })?;
        let header = header.ok_or_else(|| ErrorKind::BadHeader {
            path: path.into(),
            reason: "the index holds no header record".into(),
        })?;
        check_slice_listing(path, key_bytes, &entries)?;
        check_version(path, header.version.as_ref())?;
        let big_endian = match header.endianness {
            0 => false,
            1 => true,
            e => {
                return Err(ErrorKind::BadHeader {
                    path: path.into(),
                    reason: format!("unknown endianness {e}"),
                }
                .into())
            }
        };
        if header.num_shards < 1 && entries.iter().any(|e| e.slices.is_empty()) {
            return Err(ErrorKind::BadHeader {
                path: path.into(),
                reason: format!("num_shards is {}", header.num_shards),
            }
            .into());
        }
        let num_shards = header.num_shards.max(0) as u32;
        for e in &entries {
            if e.slices.is_empty() && e.shard >= num_shards {
                return Err(ErrorKind::BadEntry {
                    path: path.into(),
                    tensor: key_name(&e.key),
                    reason: format!(
                        "shard_id {} but the header says {num_shards} shard{}",
                        e.shard,
                        if num_shards == 1 { "" } else { "s" }
                    ),
                }
                .into());
            }
        }
        Ok(BundleIndex {
            num_shards,
            big_endian,
            entries,
            blocks: table.num_blocks(),
            metaindex: table
                .check_metaindex()
                .err()
                .and_then(|e| match e.into_kind() {
                    ErrorKind::CorruptTable { offset, reason, .. } => Some((offset, reason)),
                    _ => None,
                }),
        })
    }

    /// The entry with exactly this key.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.key.as_slice().cmp(key))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// The full tensor's bytes must be representable (the stored slices are checked against their own
/// sizes; the whole of a partitioned tensor has no size field to check).
pub(crate) fn check_byte_size(dtype: DType, shape: &[u64]) -> Result<(), String> {
    let elem = dtype.size().unwrap_or(1) as u64;
    match num_elements(shape).and_then(|n| n.checked_mul(elem)) {
        Some(b) if b <= i64::MAX as u64 => Ok(()),
        _ => Err(format!("{dtype} tensor of shape {shape:?} is too large")),
    }
}

fn parse_entry(path: &Path, key: &[u8], value: &[u8]) -> Result<Entry> {
    let bad = |reason: String| -> crate::Error {
        ErrorKind::BadEntry {
            path: path.into(),
            tensor: key_name(key),
            reason,
        }
        .into()
    };
    let p = proto::BundleEntryProto::decode(value)
        .map_err(|e| bad(format!("BundleEntryProto not parseable: {e}")))?;
    let dtype = DType::from_proto(p.dtype).ok_or_else(|| ErrorKind::UnknownDtype {
        path: path.into(),
        tensor: key_name(key),
        value: p.dtype,
    })?;
    let shape =
        parse_shape(p.shape.as_ref()).map_err(|r| bad(format!("invalid tensor shape: {r}")))?;
    let slices = p
        .slices
        .iter()
        .map(slice_from_proto)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|r| bad(format!("invalid slice: {r}")))?;
    let shard =
        u32::try_from(p.shard_id).map_err(|_| bad(format!("negative shard_id {}", p.shard_id)))?;
    let offset =
        u64::try_from(p.offset).map_err(|_| bad(format!("negative offset {}", p.offset)))?;
    let size = u64::try_from(p.size).map_err(|_| bad(format!("negative size {}", p.size)))?;
    if offset
        .checked_add(size)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(bad(format!("offset {offset} + size {size} overflows")));
    }
    if slices.is_empty() {
        let n = num_elements(&shape).unwrap_or(u64::MAX);
        let (expected, exact) = match dtype.size() {
            Some(s) => (n.checked_mul(s as u64), true),
            // Strings: at least one varint byte per element plus the 4-byte length checksum.
            None if dtype == DType::String => (n.checked_add(4), false),
            // Variants: at least a one-byte length and a 4-byte checksum per element, so an empty
            // variant tensor is 0 bytes (docs/format.md#55-variant).
            None => (n.checked_mul(5), false),
        };
        let Some(expected) = expected else {
            return Err(bad(format!(
                "{n} elements of {dtype} take more than 2^64 bytes"
            )));
        };
        if (exact && size != expected) || size < expected {
            return Err(ErrorKind::SizeMismatch {
                path: path.into(),
                tensor: key_name(key),
                dtype,
                shape,
                expected,
                exact,
                found: size,
            }
            .into());
        }
    } else {
        for s in &slices {
            s.check(&shape)
                .map_err(|r| bad(format!("invalid slice: {r}")))?;
        }
        check_byte_size(dtype, &shape).map_err(bad)?;
    }
    Ok(Entry {
        key: key.to_vec(),
        dtype,
        shape,
        shard,
        offset,
        size,
        crc: crate::base::crc::unmask(p.crc32c),
        slices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry listing more slices of its name than the index holds slice entries for is
    /// damaged (reading builds a key of the name for each listed slice).
    #[test]
    fn slice_listings_are_bounded_by_the_index_keys() {
        let entry = |name_len: usize, slices: u64| Entry {
            key: vec![b'n'; name_len],
            dtype: DType::F32,
            shape: vec![slices],
            shard: 0,
            offset: 0,
            size: 0,
            crc: 0,
            slices: (0..slices).map(|i| Slice::from_ranges(&[(i, 1)])).collect(),
        };
        let path = Path::new("m.index");
        check_slice_listing(path, 1_000_000, &[entry(1000, 1000)]).unwrap();
        let e = check_slice_listing(path, 1_000_000, &[entry(1000, 1000), entry(1 << 20, 65)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lists 65 slices of its 1048576-byte name"),
            "{e}"
        );
        assert!(e.contains("m.index"), "{e}");
        // Millions of slices of a one-byte name, which the index does not hold entries for: each
        // charged its shortest key (8 bytes at rank 1), beyond the 4 MiB of spare keys.
        let many = entry(1, 600_000);
        let e = check_slice_listing(path, 0, std::slice::from_ref(&many))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lists 600000 slices of its 1-byte name"), "{e}");
        // The same with their entries' keys in the index; a real key is never shorter than
        // the charge.
        let held: usize = many
            .slices
            .iter()
            .map(|s| crate::format::slice_codec::slice_key(b"n", s).len())
            .sum();
        assert!(held >= 600_000 * 8, "{held}");
        check_slice_listing(path, held, &[many]).unwrap();
        let scalar_full = crate::format::slice_codec::slice_key(b"", &Slice::full(1));
        assert_eq!(scalar_full.len(), 5 + 2);
    }

    /// The charge at its bound: 400,000 slices of a 3-byte name at rank 3 are charged 14 bytes
    /// each (3 of name, 5 of framing, 2 per dimension), 5,600,000 bytes, which the message
    /// gives; an index holding that less the 4 MiB of spare keys is read, one byte fewer is not.
    #[test]
    fn slice_listings_are_charged_their_shortest_keys_exactly() {
        let slices = 400_000u64;
        let entry = Entry {
            key: b"abc".to_vec(),
            dtype: DType::F32,
            shape: vec![slices, 1, 1],
            shard: 0,
            offset: 0,
            size: 0,
            crc: 0,
            slices: (0..slices)
                .map(|i| Slice::from_ranges(&[(i, 1), (0, 1), (0, 1)]))
                .collect(),
        };
        let charge = 400_000 * (3 + 5 + 2 * 3);
        let path = Path::new("m.index");
        let entries = std::slice::from_ref(&entry);
        let e = check_slice_listing(path, 0, entries)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("more slice keys ({charge} bytes)")),
            "{e}"
        );
        check_slice_listing(path, charge - MISSING_SLICE_KEYS, entries).unwrap();
        let e = check_slice_listing(path, charge - MISSING_SLICE_KEYS - 1, entries)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lists 400000 slices of its 3-byte name"), "{e}");
    }

    /// TensorFlow's `CheckVersions` with this reader's version 1 and minimum producer 0, at each
    /// bound: a header asking for readers of version 1 (not only TensorFlow's 0) is read, one
    /// asking for 2 is not; producer 0 is read, -1 is not; only a 1 among the bad consumers
    /// refuses this reader.
    #[test]
    fn versions_are_checked_at_their_bounds() {
        let path = Path::new("v.index");
        let check = |producer, min_consumer, bad_consumers: &[i32]| {
            let v = proto::VersionDef {
                producer,
                min_consumer,
                bad_consumers: bad_consumers.to_vec(),
            };
            check_version(path, Some(&v)).map_err(|e| e.to_string())
        };
        assert!(check_version(path, None).is_ok());
        assert!(check(1, 0, &[]).is_ok());
        assert!(check(0, 1, &[]).is_ok());
        assert!(check(1, 1, &[0, 2]).is_ok());
        let e = check(-1, 0, &[]).unwrap_err();
        assert!(
            e.contains("producer version -1 is below the minimum 0"),
            "{e}"
        );
        assert!(e.contains("v.index"), "{e}");
        let e = check(1, 2, &[]).unwrap_err();
        assert!(e.contains("needs a reader of version >= 2"), "{e}");
        let e = check(1, 0, &[0, 1]).unwrap_err();
        assert!(e.contains("it disallows readers of version 1"), "{e}");
    }

    /// TensorFlow's `TensorShape::IsValidShape`: the running element count stays within int64
    /// at every step, so a 0 dimension after an overflow does not make the shape valid.
    #[test]
    fn shapes_are_checked_as_tensorflow_multiplies_them_out() {
        assert!(check_shape(&[1 << 32, 1 << 31, 0]).is_err());
        assert!(check_shape(&[0, 1 << 32, 1 << 31]).is_ok());
        assert!(check_shape(&[1 << 31, 1 << 31, 0]).is_ok());
        assert!(check_shape(&[i64::MAX as u64]).is_ok());
        assert!(check_shape(&[(i64::MAX as u64) + 1]).is_err());
        assert!(check_shape(&[1; 254]).is_ok());
        assert!(check_shape(&[1; 255]).is_err());
        assert!(check_shape(&[]).is_ok());
        // A product of 0 does not let a dimension past int64 through.
        assert!(check_shape(&[0, (i64::MAX as u64) + 1]).is_err());
    }
}

/// Test support: hand-edited indexes, self-consistent (every block checksum right), for the
/// damage that the checksums of a TensorFlow-written index would otherwise catch first.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use prost::Message;

    use crate::format::bundle::index_path;
    use crate::format::proto;
    use crate::format::sstable::Table;
    use crate::format::sstable_builder::TableBuilder;

    /// Rewrites the index of the V2 checkpoint at `prefix`: `edit` sees each entry (key and proto;
    /// not the header) and may change either.
    pub(crate) fn rewrite_index(
        prefix: &Path,
        mut edit: impl FnMut(&mut Vec<u8>, &mut proto::BundleEntryProto),
    ) {
        let path = index_path(prefix);
        let bytes = std::fs::read(&path).unwrap();
        let mut records = Vec::new();
        Table::open(&path, &bytes)
            .unwrap()
            .for_each(|k, v| {
                records.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        for (key, value) in &mut records {
            if !key.is_empty() {
                let mut entry = proto::BundleEntryProto::decode(&value[..]).unwrap();
                edit(key, &mut entry);
                *value = entry.encode_to_vec();
            }
        }
        records.sort();
        let mut table = TableBuilder::new(4096, false);
        for (key, value) in &records {
            table.add(key, value);
        }
        std::fs::write(&path, table.finish()).unwrap();
    }
}
