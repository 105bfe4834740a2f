//! V1 checkpoints (docs/format.md#7-v1-format): one or more SSTable files whose `""` record lists
//! every tensor and slice (`SavedTensorSliceMeta`) and whose other records hold one slice each
//! (`SavedSlice` with a `TensorProto`). Values are converted to the same little-endian bytes a V2
//! bundle stores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::base::mmap::MappedFile;
use crate::base::slice::{num_elements, Slice};
use crate::format::index::{check_byte_size, check_version, parse_shape};
use crate::format::proto;
use crate::format::slice_codec::{slice_from_proto, slice_key};
use crate::format::sstable::{BlockCache, BlockHandle, Table};

/// One tensor of a V1 checkpoint: full shape, dtype and where each stored slice lives.
pub(crate) struct V1Tensor {
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// (slice, index of the file holding it)
    pub slices: Vec<(Slice, usize)>,
}

/// One V1 file: mapped from a local disk, or fetched whole from object storage.
pub(crate) enum V1File {
    Mapped(MappedFile),
    #[cfg(feature = "remote")]
    Fetched(crate::remote::FetchedFile),
}

impl V1File {
    fn path(&self) -> &Path {
        match self {
            V1File::Mapped(m) => m.path(),
            #[cfg(feature = "remote")]
            V1File::Fetched(f) => &f.url,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            V1File::Mapped(m) => m.bytes(),
            #[cfg(feature = "remote")]
            V1File::Fetched(f) => &f.bytes,
        }
    }

    fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// A mapped file truncated under its mapping is an error (fetched bytes cannot change).
    fn intact(&self) -> Result<()> {
        match self {
            V1File::Mapped(m) => m.intact(),
            #[cfg(feature = "remote")]
            V1File::Fetched(_) => Ok(()),
        }
    }

    fn is_current(&self) -> bool {
        match self {
            V1File::Mapped(m) => crate::base::mmap::FileStamp::of(m.path()) == Some(m.stamp()),
            #[cfg(feature = "remote")]
            V1File::Fetched(f) => f.is_current(),
        }
    }
}

pub(crate) struct V1Set {
    files: Vec<V1File>,
    /// Each file's parsed table index, read once at open.
    blocks: Vec<Vec<(Vec<u8>, BlockHandle)>>,
    /// Each file's blocks of many records, kept checked and indexed (`Table::get_cached`):
    /// reading the n records of one block costs n log n, not n × block.
    blocks_read: Vec<BlockCache>,
    pub tensors: BTreeMap<String, V1Tensor>,
}

/// Decoded values of one slice record.
pub(crate) enum V1Values {
    Bytes(Vec<u8>),
    Strings(crate::base::tensor::Strings),
}

impl V1Set {
    /// The file holding stored slice `i` of tensor `name`, where the save has several files.
    pub(crate) fn file_of(&self, name: &str, i: usize) -> Option<&Path> {
        let (_, file) = self.tensors.get(name)?.slices.get(i)?;
        (self.files.len() > 1).then(|| self.files[*file].path())
    }

    pub(crate) fn open(paths: &[PathBuf]) -> Result<V1Set> {
        let files = paths
            .iter()
            .map(|p| MappedFile::open(p).map(V1File::Mapped))
            .collect::<Result<Vec<_>>>()?;
        V1Set::from_files(files)
    }

    /// The checkpoint made of `sources` (mapped or fetched files).
    pub(crate) fn from_files(sources: Vec<V1File>) -> Result<V1Set> {
        let mut files = Vec::with_capacity(sources.len());
        let mut blocks = Vec::with_capacity(sources.len());
        let mut tensors: BTreeMap<String, V1Tensor> = BTreeMap::new();
        for (fi, file) in sources.into_iter().enumerate() {
            let path = &file.path().to_path_buf();
            let table = Table::open(path, file.bytes())?;
            let bad_header = |reason: String| ErrorKind::BadHeader {
                path: path.clone(),
                reason,
            };
            let value = table.get(b"")?.ok_or_else(|| {
                bad_header(
                    "no saved tensor slices record (key \"\") at the beginning of the file".into(),
                )
            })?;
            // A record without `meta` (empty, say) lists no tensors, as TensorFlow reads it
            // (`sts.meta()` is then the empty default, and its versions pass).
            let meta = proto::SavedTensorSlices::decode(&*value)
                .map(|s| s.meta.unwrap_or_default())
                .map_err(|_| {
                    // A V2 checkpoint's index given (or renamed) as a V1 file.
                    let v2 = proto::BundleHeaderProto::decode(&*value)
                        .is_ok_and(|h| h.num_shards >= 1 && h.version.is_some());
                    bad_header(if v2 {
                        "the record with key \"\" is not a SavedTensorSliceMeta: this is a V2 \
                         checkpoint's index (its first record is a bundle header), not a V1 \
                         file: give the checkpoint's prefix, without .index"
                            .into()
                    } else {
                        "the record with key \"\" is not a SavedTensorSliceMeta".into()
                    })
                })?;
            check_version(path, meta.versions.as_ref())?;
            // Each listed slice has a record keyed by the name and the slice (see
            // `index::check_slice_listing`): a listing the file cannot hold is damaged.
            let budget = crate::format::sstable::key_budget(file.bytes().len());
            let mut listed = 0usize;
            // TensorFlow registers a tensor by its slices (`TensorSliceReader::LoadShard`): one
            // listed without any is not in the checkpoint, and nothing of it is checked.
            for t in meta.tensor.iter().filter(|t| !t.slice.is_empty()) {
                let name = String::from_utf8(t.name.clone()).map_err(|_| ErrorKind::BadEntry {
                    path: path.clone(),
                    tensor: String::from_utf8_lossy(&t.name).into_owned(),
                    reason: "tensor name is not UTF-8".into(),
                })?;
                let bad = |reason: String| ErrorKind::BadEntry {
                    path: path.clone(),
                    tensor: name.clone(),
                    reason,
                };
                let dtype = DType::from_proto(t.r#type).ok_or_else(|| ErrorKind::UnknownDtype {
                    path: path.clone(),
                    tensor: name.clone(),
                    value: t.r#type,
                })?;
                let shape = parse_shape(t.shape.as_ref())
                    .map_err(|r| bad(format!("invalid shape: {r}")))?;
                check_byte_size(dtype, &shape).map_err(bad)?;
                let entry = tensors.entry(name.clone()).or_insert_with(|| V1Tensor {
                    dtype,
                    shape: shape.clone(),
                    slices: Vec::new(),
                });
                if entry.dtype != dtype || entry.shape != shape {
                    return Err(bad(format!(
                        "declared as {} {:?} in this file but {} {:?} in an earlier one",
                        dtype, shape, entry.dtype, entry.shape
                    ))
                    .into());
                }
                listed = listed.saturating_add(t.slice.len().saturating_mul(t.name.len()));
                if listed > budget {
                    return Err(bad(format!(
                        "lists {} slices of its {}-byte name: with the file's other tensors, more \
                         slice keys ({listed} bytes) than a {}-byte file can hold",
                        t.slice.len(),
                        t.name.len(),
                        file.bytes().len()
                    ))
                    .into());
                }
                for s in &t.slice {
                    let slice =
                        slice_from_proto(s).map_err(|r| bad(format!("invalid slice: {r}")))?;
                    slice
                        .check(&shape)
                        .map_err(|r| bad(format!("invalid slice: {r}")))?;
                    entry.slices.push((slice, fi));
                }
            }
            blocks.push(table.blocks());
            file.intact()?;
            drop(table);
            files.push(file);
        }
        Ok(V1Set {
            blocks_read: blocks.iter().map(|_| Default::default()).collect(),
            files,
            blocks,
            tensors,
        })
    }

    /// Each file's path (or URL).
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path().to_path_buf()).collect()
    }

    /// Whether every file is as it was when opened.
    pub(crate) fn is_current(&self) -> bool {
        self.files.iter().all(V1File::is_current)
    }

    /// `Ok` unless a mapped file (of those holding tensor `only`'s slices, where given) has been
    /// changed in place since it was opened.
    pub(crate) fn unchanged(&self, only: Option<&str>) -> Result<()> {
        let mut files: Vec<usize> = match only.and_then(|name| self.tensors.get(name)) {
            Some(t) => t.slices.iter().map(|(_, f)| *f).collect(),
            None => (0..self.files.len()).collect(),
        };
        files.sort_unstable();
        files.dedup();
        files.into_iter().try_for_each(|f| match &self.files[f] {
            V1File::Mapped(m) => m.unchanged(),
            // A fetched copy is the bytes checked.
            #[cfg(feature = "remote")]
            V1File::Fetched(_) => Ok(()),
        })
    }

    /// Whether the files were fetched from object storage.
    pub(crate) fn is_remote(&self) -> bool {
        #[cfg(feature = "remote")]
        return self.files.iter().any(|f| matches!(f, V1File::Fetched(_)));
        #[cfg(not(feature = "remote"))]
        false
    }

    /// Total bytes of all files.
    pub(crate) fn total_len(&self) -> u64 {
        self.files.iter().map(|f| f.len()).sum()
    }

    /// Reads and decodes the record of stored slice `slice` of `name` from file `file`.
    pub(crate) fn read_slice(
        &self,
        name: &str,
        t: &V1Tensor,
        slice: &Slice,
        file: usize,
    ) -> Result<V1Values> {
        let path = self.files[file].path();
        let table = Table::from_blocks(path, self.files[file].bytes(), &self.blocks[file]);
        let key = slice_key(name.as_bytes(), slice);
        let decoded = table
            .get_cached(&key, &self.blocks_read[file])
            .map_err(|e| e.reading_tensor(name))
            .and_then(|value| {
                let value = value.ok_or_else(|| ErrorKind::BadEntry {
                    path: path.into(),
                    tensor: name.into(),
                    reason: format!("the record of slice {slice} is missing"),
                })?;
                decode_record(path, name, t.dtype, &slice.shape(&t.shape), &value)
            });
        self.files[file].intact()?;
        decoded
    }

    /// Checks every block of every file and decodes every data record.
    pub(crate) fn verify(&self) -> Result<(usize, u64)> {
        let mut blocks = 0;
        let mut bytes = 0u64;
        let mut keys: Vec<std::collections::HashSet<Vec<u8>>> = Vec::new();
        for file in &self.files {
            let path = file.path();
            let mut file_keys = std::collections::HashSet::new();
            let checked = Table::open(path, file.bytes()).and_then(|table| {
                // Its data blocks, the index block and the metaindex block.
                blocks += table.num_blocks() + 2;
                bytes += file.len();
                table.check_metaindex()?;
                self.check_records(path, &table, &mut file_keys)
            });
            file.intact()?;
            checked?;
            keys.push(file_keys);
        }
        // Every slice a file's metadata lists has its record in that file.
        for (name, t) in &self.tensors {
            for (slice, fi) in &t.slices {
                if !keys[*fi].contains(&slice_key(name.as_bytes(), slice)) {
                    return Err(ErrorKind::BadEntry {
                        path: self.files[*fi].path().into(),
                        tensor: name.clone(),
                        reason: format!(
                            "the file's metadata lists slice {slice}, and the file holds no record of it"
                        ),
                    }
                    .into());
                }
            }
        }
        Ok((blocks, bytes))
    }

    /// The files of a sharded save that its other files' names say exist but that are not here,
    /// and files numbered past the count its names give.
    /// A sharded V1 save writes `NAME-00000-of-0000N` to `NAME-0000(N-1)-of-0000N`, and the glob
    /// its `checkpoint` state file stores (`NAME-?????-of-0000N`) finds whichever are there.
    pub(crate) fn missing_shards(&self) -> Vec<crate::base::error::Error> {
        // (folder, NAME, N as written) -> the shard numbers found
        let mut groups: BTreeMap<(PathBuf, String, String), Vec<u64>> = BTreeMap::new();
        for file in &self.files {
            let path = file.path();
            let name = path.file_name().map(|n| n.to_string_lossy());
            if let Some((stem, i, n)) = name.as_deref().and_then(shard_name) {
                let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
                groups
                    .entry((dir, stem.into(), n.into()))
                    .or_default()
                    .push(i);
            }
        }
        let mut missing = Vec::new();
        for ((dir, stem, n), found) in groups {
            let Ok(num_shards) = n.parse::<u64>() else {
                continue;
            };
            let found_count = found.iter().filter(|&&i| i < num_shards).count();
            // A file numbered past the count is no file of this save (a glob matched it).
            for &shard in found.iter().filter(|&&i| i >= num_shards) {
                missing.push(
                    ErrorKind::StrayV1File {
                        path: dir.join(format!("{stem}-{shard:05}-of-{n}")),
                        shard,
                        num_shards,
                    }
                    .into(),
                );
            }
            // The first few missing numbers (a hostile name may count billions of files).
            let found: std::collections::BTreeSet<u64> = found.into_iter().collect();
            let absent = (0..num_shards).filter(|i| !found.contains(i)).take(8);
            for shard in absent {
                missing.push(
                    ErrorKind::MissingV1Shard {
                        path: dir.join(format!("{stem}-{shard:05}-of-{n}")),
                        shard,
                        num_shards,
                        found: found_count,
                    }
                    .into(),
                );
            }
        }
        missing
    }

    /// Decodes every data record of one file's table, collecting their keys.
    fn check_records(
        &self,
        path: &Path,
        table: &Table<'_>,
        keys: &mut std::collections::HashSet<Vec<u8>>,
    ) -> Result<()> {
        table.for_each(|key, value| {
            if key.is_empty() {
                return Ok(());
            }
            keys.insert(key.to_vec());
            let rec = proto::SavedTensorSlices::decode(value)
                .ok()
                .and_then(|r| r.data);
            let Some(rec) = rec else {
                return Err(ErrorKind::BadEntry {
                    path: path.into(),
                    tensor: crate::format::index::key_name(key),
                    reason: "record is not a SavedSlice".into(),
                }
                .into());
            };
            let name = String::from_utf8_lossy(&rec.name).into_owned();
            let Some(t) = self.tensors.get(&name) else {
                return Err(ErrorKind::BadEntry {
                    path: path.into(),
                    tensor: name,
                    reason: "data record for a tensor the file's metadata does not list".into(),
                }
                .into());
            };
            let slice = rec
                .slice
                .as_ref()
                .map(slice_from_proto)
                .transpose()
                .ok()
                .flatten()
                .filter(|s| s.check(&t.shape).is_ok())
                .ok_or_else(|| ErrorKind::BadEntry {
                    path: path.into(),
                    tensor: name.clone(),
                    reason: "record has no valid slice".into(),
                })?;
            decode_record(path, &name, t.dtype, &slice.shape(&t.shape), value).map(drop)
        })
    }
}

/// `NAME-i-of-N` (TensorFlow's `%s-%05d-of-%05d`): NAME, i, and N as written.
fn shard_name(file: &str) -> Option<(&str, u64, &str)> {
    let (head, n) = file.rsplit_once("-of-")?;
    let (stem, i) = head.rsplit_once('-')?;
    let digits = |s: &str| s.len() >= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(i) || !digits(n) || stem.is_empty() {
        return None;
    }
    Some((stem, i.parse().ok()?, n))
}

fn decode_record(
    path: &Path,
    name: &str,
    dtype: DType,
    shape: &[u64],
    value: &[u8],
) -> Result<V1Values> {
    let bad = |reason: String| -> crate::Error {
        ErrorKind::BadEntry {
            path: path.into(),
            tensor: name.into(),
            reason,
        }
        .into()
    };
    let rec = proto::SavedTensorSlices::decode(value)
        .map_err(|e| bad(format!("SavedTensorSlices not parseable: {e}")))?;
    let data = rec
        .data
        .and_then(|d| d.data)
        .ok_or_else(|| bad("record holds no tensor data".into()))?;
    let n = num_elements(shape).unwrap_or(u64::MAX);
    let count = |found: usize| -> Result<()> {
        if found as u64 != n {
            return Err(bad(format!(
                "record holds {found} values, the slice shape {shape:?} needs {n}"
            )));
        }
        Ok(())
    };
    if dtype == DType::String {
        count(data.string_val.len())?;
        let strings = crate::base::tensor::Strings::try_from_slices(&data.string_val, name)?;
        return Ok(V1Values::Strings(strings));
    }
    let Some(size) = dtype.size() else {
        return Err(bad(format!(
            "dtype {dtype} cannot be stored in a V1 checkpoint"
        )));
    };
    // Like TensorFlow's reader, only the typed `*_val` fields count (never `tensor_content`).
    let (found, out) = typed_values(dtype, &data, size).map_err(bad)?;
    count(found)?;
    Ok(V1Values::Bytes(out))
}

/// The elements of a V1 record's typed `*_val` field for `dtype` (of `size` bytes), as
/// little-endian bytes, with the number of elements found.
fn typed_values(
    dtype: DType,
    data: &proto::TensorProto,
    size: usize,
) -> std::result::Result<(usize, Vec<u8>), String> {
    fn le<T, const N: usize>(vals: &[T], f: impl Fn(&T) -> [u8; N]) -> (usize, Vec<u8>) {
        (vals.len(), vals.iter().flat_map(f).collect())
    }
    let pairs = |n: usize, what: &str| -> std::result::Result<(), String> {
        match n % 2 {
            0 => Ok(()),
            _ => Err(format!("odd number of {what} components")),
        }
    };
    Ok(match dtype {
        DType::F32 => le(&data.float_val, |v| v.to_le_bytes()),
        DType::F64 => le(&data.double_val, |v| v.to_le_bytes()),
        DType::I64 => le(&data.int64_val, |v| v.to_le_bytes()),
        DType::Bool => le(&data.bool_val, |&b| [u8::from(b)]),
        DType::C64 => {
            pairs(data.scomplex_val.len(), "complex64")?;
            let (n, b) = le(&data.scomplex_val, |v| v.to_le_bytes());
            (n / 2, b)
        }
        DType::C128 => {
            pairs(data.dcomplex_val.len(), "complex128")?;
            let (n, b) = le(&data.dcomplex_val, |v| v.to_le_bytes());
            (n / 2, b)
        }
        DType::F16 | DType::BF16 => le(&data.half_val, |&v| (v as u16).to_le_bytes()),
        DType::U32 => le(&data.uint32_val, |v| v.to_le_bytes()),
        DType::U64 => le(&data.uint64_val, |v| v.to_le_bytes()),
        DType::I32
        | DType::QI32
        | DType::I16
        | DType::QI16
        | DType::U16
        | DType::QU16
        | DType::I8
        | DType::QI8
        | DType::U8
        | DType::QU8 => {
            let bytes = data
                .int_val
                .iter()
                .flat_map(|v| v.to_le_bytes().into_iter().take(size))
                .collect();
            (data.int_val.len(), bytes)
        }
        other => return Err(format!("dtype {other} cannot be stored in a V1 checkpoint")),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::shard_name;
    use crate::base::slice::Slice;
    use crate::format::proto;
    use crate::format::slice_codec::{slice_key, slice_to_proto};
    use crate::format::sstable_builder::TableBuilder;
    use crate::format::writer::shape_proto;
    use prost::Message;

    /// One float32 tensor of a hand-made V1 file: name, full shape, and its stored slices with
    /// their values.
    pub(crate) type V1Tensor<'a> = (&'a str, Vec<u64>, Vec<(Slice, Vec<f32>)>);

    /// The bytes of a V1 file (an SSTable of `block_size`-byte blocks, snappy-compressed if
    /// `compress`) holding `tensors`, whose metadata lists every slice; the records of `(tensor,
    /// slice index)` in `omit` are left out.
    pub(crate) fn v1_file(
        tensors: &[V1Tensor],
        omit: &[(&str, usize)],
        block_size: usize,
        compress: bool,
    ) -> Vec<u8> {
        let meta = proto::SavedTensorSlices {
            meta: Some(proto::SavedTensorSliceMeta {
                tensor: tensors
                    .iter()
                    .map(|(name, dims, slices)| proto::SavedSliceMeta {
                        name: name.as_bytes().to_vec(),
                        shape: Some(shape_proto(dims)),
                        r#type: 1,
                        slice: slices.iter().map(|(s, _)| slice_to_proto(s)).collect(),
                    })
                    .collect(),
                versions: Some(proto::VersionDef {
                    producer: 1,
                    min_consumer: 0,
                    bad_consumers: vec![],
                }),
            }),
            data: None,
        };
        let mut records = vec![(Vec::new(), meta.encode_to_vec())];
        for (name, _, slices) in tensors {
            for (i, (slice, values)) in slices.iter().enumerate() {
                if omit.contains(&(name, i)) {
                    continue;
                }
                let data = proto::SavedTensorSlices {
                    meta: None,
                    data: Some(proto::SavedSlice {
                        name: name.as_bytes().to_vec(),
                        slice: Some(slice_to_proto(slice)),
                        data: Some(proto::TensorProto {
                            dtype: 1,
                            float_val: values.clone(),
                            ..Default::default()
                        }),
                    }),
                };
                records.push((slice_key(name.as_bytes(), slice), data.encode_to_vec()));
            }
        }
        records.sort();
        let mut table = TableBuilder::new(block_size, compress);
        for (k, v) in &records {
            table.add(k, v);
        }
        table.finish()
    }

    /// A tensor the metadata lists without slices is not in the checkpoint, as in TensorFlow
    /// (it was listed as a whole tensor, and read from file 0's whole-tensor record).
    #[test]
    fn a_tensor_listed_without_slices_is_not_there() {
        let tensors: [V1Tensor; 2] = [
            ("t", vec![2], vec![]),
            ("u", vec![1], vec![(Slice::full(1), vec![1.5])]),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, v1_file(&tensors, &[], 1 << 30, false)).unwrap();
        let ckpt = crate::Checkpoint::open(&path).unwrap();
        let names: Vec<&str> = ckpt.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["u"]);
        assert!(ckpt.read("t").unwrap_err().is_not_found());
        assert_eq!(ckpt.read("u").unwrap().to_f32().unwrap(), [1.5]);
    }

    /// A file whose metadata lists more slices of a long name than the file could hold records of
    /// (each slice's record is keyed by the name and the slice) is damaged, refused at open:
    /// reading or verifying would build a key of the name for every slice (here 3,000 of 100 KB:
    /// 300 MB from a file of 130 KB; a hostile file, terabytes).
    #[test]
    fn a_listing_of_more_slice_keys_than_the_file_holds_is_refused() {
        let name = "x".repeat(100_000);
        let n = 3000u64;
        let slices = (0..n)
            .map(|i| (Slice::from_ranges(&[(i, 1)]), vec![1.0]))
            .collect();
        let t: V1Tensor = (&name, vec![n], slices);
        let omit: Vec<(&str, usize)> = (0..n as usize).map(|i| (name.as_str(), i)).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, v1_file(&[t], &omit, 1 << 30, false)).unwrap();
        let e = crate::Checkpoint::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("lists 3000 slices of its 100000-byte name"),
            "{e}"
        );
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    /// A snappy-compressed V1 file holding more elements than it has bytes (zeros compress well)
    /// reads back whole, as TensorFlow reads it: `read` bounded the element count by the file's
    /// compressed length and refused it.
    #[test]
    fn a_compressed_file_of_zeros_reads_whole() {
        let n = 200_000u64;
        let t: V1Tensor = ("z", vec![n], vec![(Slice::full(1), vec![0.0; n as usize])]);
        let bytes = v1_file(std::slice::from_ref(&t), &[], 1 << 30, true);
        assert!((bytes.len() as u64) < n, "{} bytes", bytes.len());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z");
        std::fs::write(&path, &bytes).unwrap();
        let ckpt = crate::Checkpoint::open(&path).unwrap();
        assert_eq!(
            ckpt.read("z").unwrap().to_f32().unwrap(),
            vec![0.0; n as usize]
        );
    }

    /// Many records in one block (a writer's choice: TensorFlow's blocks are 256 KiB), or in many
    /// small blocks, plain or snappy-compressed: each block of many records is checked and indexed
    /// once and kept, and every slice reads its own values in any order. A value changed in place
    /// afterwards is never read (the kept copy is the bytes the checksum passed), and the read
    /// says that the file changed.
    #[test]
    fn many_records_per_block_read_exactly_in_any_order_from_checked_bytes() {
        use std::io::{Seek, Write};
        let n = 3000u64;
        let t: V1Tensor = (
            "t",
            vec![n, 2],
            (0..n)
                .map(|i| {
                    (
                        Slice::from_ranges(&[(i, 1), (0, 2)]),
                        vec![i as f32 + 0.5, -(i as f32)],
                    )
                })
                .collect(),
        );
        let dir = tempfile::tempdir().unwrap();
        let want: Vec<f32> = (0..n).flat_map(|i| [i as f32 + 0.5, -(i as f32)]).collect();
        for (block_size, compress) in [
            (1 << 30, false),
            (1 << 30, true),
            (4096, false),
            (4096, true),
        ] {
            let path = dir.path().join(format!("m{block_size}{compress}"));
            let bytes = v1_file(std::slice::from_ref(&t), &[], block_size, compress);
            std::fs::write(&path, &bytes).unwrap();
            let ckpt = crate::Checkpoint::open(&path).unwrap();
            assert_eq!(ckpt.read("t").unwrap().to_f32().unwrap(), want);
            // Backwards, two rows at a time, across blocks.
            for i in (0..n - 1).rev().step_by(7) {
                let rows = ckpt
                    .read_slice("t", &Slice::from_ranges(&[(i, 2), (0, 2)]))
                    .unwrap();
                let at = 2 * i as usize;
                assert_eq!(
                    rows.to_f32().unwrap(),
                    want[at..at + 4],
                    "{block_size} {compress} {i}"
                );
            }
            if compress || block_size != 1 << 30 {
                continue;
            }
            // Row 1234's first value, 1234.5, rewritten in place as 9999.5 (past the tick of
            // the file's modification time).
            std::thread::sleep(std::time::Duration::from_millis(20));
            let at = bytes
                .windows(4)
                .position(|w| w == 1234.5f32.to_le_bytes())
                .unwrap();
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.seek(std::io::SeekFrom::Start(at as u64)).unwrap();
            f.write_all(&9999.5f32.to_le_bytes()).unwrap();
            drop(f);
            // Never the unchecked 9999.5: the file was written in place since it was opened,
            // and the read says so (its block, checked and kept, still holds 1234.5).
            let e = ckpt
                .read_slice("t", &Slice::from_ranges(&[(1234, 1), (0, 2)]))
                .unwrap_err();
            assert!(
                matches!(e.kind(), crate::ErrorKind::ChangedInPlace { path: p } if *p == path),
                "{e}"
            );
            // Opened again, the block fails its checksum.
            let e = crate::Checkpoint::open(&path)
                .and_then(|c| c.read("t"))
                .unwrap_err();
            assert!(e.to_string().contains("checksum mismatch"), "{e}");
        }
    }

    /// A damaged data block of a V1 file (a table of many blocks, as TensorFlow writes one
    /// holding more than 256 KiB) fails the read of the tensor it holds, naming the file, the
    /// block and the tensor; the other tensors still read.
    #[test]
    fn a_damaged_v1_data_block_names_the_tensor_read() {
        let values = |x: f32| (0..2000).map(|i| x + i as f32).collect::<Vec<f32>>();
        let whole = |n: u64| Slice::from_ranges(&[(0, n)]);
        let tensors: [V1Tensor; 2] = [
            ("a", vec![2000], vec![(whole(2000), values(0.25))]),
            ("b", vec![2000], vec![(whole(2000), values(0.75))]),
        ];
        let mut bytes = v1_file(&tensors, &[], 4096, false);
        let at = bytes
            .windows(4)
            .position(|w| w == 1000.75f32.to_le_bytes())
            .unwrap();
        bytes[at] ^= 1;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.ckpt");
        std::fs::write(&path, &bytes).unwrap();
        let ckpt = crate::Checkpoint::open(&path).unwrap();
        assert_eq!(ckpt.read("a").unwrap().to_f32().unwrap(), values(0.25));
        let e = ckpt.read("b").unwrap_err();
        assert!(
            matches!(e.kind(), crate::ErrorKind::BlockChecksum { path: p, tensor: Some(t), .. }
                if *p == path && t == "b"),
            "{e:?}"
        );
        let shown = e.to_string();
        assert!(
            shown.contains("block checksum mismatch") && shown.ends_with("(read for tensor \"b\")"),
            "{shown}"
        );
    }

    /// A V1 checkpoint lists its files, says what `verify` read (every block and byte of every
    /// file), and knows when a file changed under it: `is_current` (what `initialize` asks before
    /// it reuses the checkpoint its call opened) is false once a file is written again.
    #[test]
    fn a_v1_checkpoint_lists_its_files_counts_what_it_verified_and_sees_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let t = |name: &'static str, v: f32, n: u64| -> V1Tensor {
            (
                name,
                vec![n],
                (0..n).map(|i| (rows(i, 1), vec![v + i as f32])).collect(),
            )
        };
        let paths: Vec<_> = (0..2)
            .map(|i| dir.path().join(format!("m-{i:05}-of-00002")))
            .collect();
        let mut lens = 0;
        let mut blocks = 0;
        for (i, path) in paths.iter().enumerate() {
            // Small blocks: many per file, and a different count in each.
            let name = ["a", "b"][i];
            let bytes = v1_file(&[t(name, i as f32, 40 + 40 * i as u64)], &[], 256, false);
            std::fs::write(path, &bytes).unwrap();
            lens += bytes.len() as u64;
            // Its data blocks, with its index and metaindex blocks.
            blocks += crate::format::sstable::Table::open(path, &bytes)
                .unwrap()
                .num_blocks()
                + 2;
        }
        assert!(blocks > 8, "{blocks}");
        let ckpt = crate::Checkpoint::open(dir.path().join("m-?????-of-00002")).unwrap();
        assert_eq!(ckpt.files(), paths);
        assert!(ckpt.is_current() && !ckpt.is_remote());
        let report = ckpt.verify().unwrap();
        assert_eq!((report.bytes, report.blocks), (lens, blocks));
        // Written again (other values, another length): no longer current; opened again, it is.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&paths[1], v1_file(&[t("b", 7.0, 3)], &[], 256, false)).unwrap();
        assert!(!ckpt.is_current());
        assert!(crate::Checkpoint::open(&paths[1]).unwrap().is_current());
    }

    /// A V1 file truncated under the live mapping: a read or a check past the new end fails
    /// with `Truncated` naming the file (not with the checksum of the zero pages read instead).
    #[cfg(unix)]
    #[test]
    fn a_v1_file_truncated_under_a_live_checkpoint_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model");
        let big: Vec<f32> = (0..64 * 1024).map(|i| i as f32).collect();
        let t = |name| -> V1Tensor {
            (
                name,
                vec![64 * 1024],
                vec![(rows(0, 64 * 1024), big.clone())],
            )
        };
        for case in 0..2 {
            std::fs::write(&path, v1_file(&[t("a"), t("b")], &[], 4096, false)).unwrap();
            let ckpt = crate::Checkpoint::open(&path).unwrap();
            assert_eq!(ckpt.read("a").unwrap().to_f32().unwrap(), big);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(4096)
                .unwrap();
            let e = match case {
                0 => ckpt.read("b").unwrap_err(),
                _ => ckpt.verify().unwrap_err(),
            };
            assert!(
                matches!(e.kind(), crate::ErrorKind::Truncated { path: p } if *p == path),
                "case {case}: {e}"
            );
        }
    }

    /// TensorFlow reads the file when the restore runs: a V1 file written again between
    /// `init_from_checkpoint` and `initialize` gives its new values, each time `initialize` runs.
    #[test]
    fn initialize_rereads_a_v1_file_written_again_since_the_call() {
        use crate::{AssignmentMap, DType, Device, Init, VariableStore};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model");
        let write = |v: f32| {
            // A different layout each time: the old file's blocks would be the wrong bytes.
            let mut tensors: Vec<V1Tensor> = vec![("t", vec![2], vec![(rows(0, 2), vec![v; 2])])];
            if v > 1.0 {
                tensors.insert(0, ("pad", vec![3], vec![(rows(0, 3), vec![0.0; 3])]));
            }
            std::fs::write(&path, v1_file(&tensors, &[], 4096, false)).unwrap();
        };
        write(1.0);
        let mut store = VariableStore::new();
        store
            .get_variable("x", &[2], DType::F32, Init::Zeros)
            .unwrap();
        crate::init_from_checkpoint(&mut store, &path, &AssignmentMap::from([("t", "x")])).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(2.0);
        store.initialize(Device::Cpu).unwrap();
        assert_eq!(store.value("x").unwrap().to_f32().unwrap(), [2.0, 2.0]);
        write(1.0);
        store.initialize(Device::Cpu).unwrap();
        assert_eq!(store.value("x").unwrap().to_f32().unwrap(), [1.0, 1.0]);
    }

    /// A file named as one of 99,999,999,999: `verify` names the first few missing files, in
    /// a moment, instead of counting through all of them.
    #[test]
    fn a_huge_shard_count_in_a_name_reports_a_few_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let t: V1Tensor = ("t", vec![2], vec![(rows(0, 2), vec![1.0, 2.0])]);
        let path = dir.path().join("m-00000-of-99999999999");
        std::fs::write(&path, v1_file(&[t], &[], 4096, false)).unwrap();
        let r = crate::Checkpoint::open(dir.path().join("m-*"))
            .unwrap()
            .verify_all();
        assert_eq!(r.problems.len(), 8);
        let first = r.problems[0].to_string();
        assert!(
            first.contains("m-00001-of-99999999999: missing: file 1 of the 99999999999"),
            "{first}"
        );
    }

    /// A glob of a save of 2 files that matches files 0 and 2: file 1 is missing (one of the two
    /// found), and file 2 belongs to no save of 2 files.
    #[test]
    fn a_file_numbered_past_its_count_is_named_and_not_counted_as_found() {
        let dir = tempfile::tempdir().unwrap();
        for (i, name) in [(0, "a"), (2, "b")] {
            let t: V1Tensor = (name, vec![1], vec![(rows(0, 1), vec![1.0])]);
            let path = dir.path().join(format!("m-{i:05}-of-00002"));
            std::fs::write(&path, v1_file(&[t], &[], 4096, false)).unwrap();
        }
        let r = crate::Checkpoint::open(dir.path().join("m-?????-of-00002"))
            .unwrap()
            .verify_all();
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        let past = dir.path().join("m-00002-of-00002");
        assert!(
            matches!(r.problems[0].kind(), crate::ErrorKind::StrayV1File { path, shard: 2, num_shards: 2 }
                if path == &past),
            "{:?}",
            r.problems[0]
        );
        assert_eq!(
            r.problems[0].to_string(),
            format!(
                "{}: a stray file: its name makes it file 2 of a sharded V1 save of 2 files \
                 (numbered from 0), so it belongs to no save of this one (move or remove it)",
                past.display()
            )
        );
        let gone = dir.path().join("m-00001-of-00002");
        assert!(
            matches!(r.problems[1].kind(), crate::ErrorKind::MissingV1Shard { path, shard: 1, num_shards: 2, found: 1 }
                if path == &gone),
            "{:?}",
            r.problems[1]
        );
    }

    fn rows(start: u64, len: u64) -> Slice {
        Slice::from_ranges(&[(start, len)])
    }

    /// What TensorFlow's reader would refuse, `verify` reports: a slice the metadata lists with
    /// no record, and stored slices that overlap.
    #[test]
    fn verify_finds_a_listed_slice_without_its_record_and_overlapping_slices() {
        let dir = tempfile::tempdir().unwrap();
        let verify = |name: &str, tensors: &[V1Tensor], omit: &[(&str, usize)]| {
            let path = dir.path().join(name);
            std::fs::write(&path, v1_file(tensors, omit, 4096, false)).unwrap();
            crate::Checkpoint::open(&path).unwrap().verify_all()
        };
        let t: V1Tensor = (
            "t",
            vec![4],
            vec![(rows(0, 2), vec![1.0, 2.0]), (rows(2, 2), vec![3.0, 4.0])],
        );
        assert!(verify("good", std::slice::from_ref(&t), &[])
            .problems
            .is_empty());
        let r = verify("no_record", std::slice::from_ref(&t), &[("t", 1)]);
        let text = r.problems[0].to_string();
        assert!(
            text.contains("lists slice 2,2, and the file holds no record of it"),
            "{text}"
        );
        let overlap: V1Tensor = (
            "t",
            vec![4],
            vec![(rows(0, 3), vec![1.0; 3]), (rows(2, 2), vec![9.0; 2])],
        );
        let r = verify("overlap", &[overlap], &[]);
        let text = r.problems[0].to_string();
        assert!(
            text.contains("overlapping stored slices 0,3 and 2,2"),
            "{text}"
        );
    }

    #[test]
    fn shard_names_are_tensorflows_pattern_only() {
        assert_eq!(
            shard_name("model.ckpt-0-00001-of-00002"),
            Some(("model.ckpt-0", 1, "00002"))
        );
        assert_eq!(
            shard_name("m-123456-of-200000"),
            Some(("m", 123456, "200000"))
        );
        for other in [
            "model-3",
            "m-1-of-2",
            "-00000-of-00001",
            "m-0000a-of-00002",
            "m-00000-of-",
        ] {
            assert_eq!(shard_name(other), None, "{other}");
        }
    }

    /// A V1 file of raw records (key, value), sorted here.
    fn raw_file(mut records: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<u8> {
        records.sort();
        let mut table = TableBuilder::new(4096, false);
        for (k, v) in &records {
            table.add(k, v);
        }
        table.finish()
    }

    /// The metadata record listing `tensors` (name, dtype number, dims; one slice: the whole).
    fn meta_record(tensors: &[(&[u8], i32, &[i64])]) -> (Vec<u8>, Vec<u8>) {
        let meta = proto::SavedTensorSlices {
            meta: Some(proto::SavedTensorSliceMeta {
                tensor: tensors
                    .iter()
                    .map(|&(name, dtype, dims)| proto::SavedSliceMeta {
                        name: name.to_vec(),
                        shape: Some(proto::TensorShapeProto {
                            dim: dims
                                .iter()
                                .map(|&size| proto::Dim {
                                    size,
                                    name: String::new(),
                                })
                                .collect(),
                            unknown_rank: false,
                        }),
                        r#type: dtype,
                        slice: vec![slice_to_proto(&Slice::full(dims.len()))],
                    })
                    .collect(),
                versions: Some(proto::VersionDef {
                    producer: 1,
                    min_consumer: 0,
                    bad_consumers: vec![],
                }),
            }),
            data: None,
        };
        (Vec::new(), meta.encode_to_vec())
    }

    /// The data record of the whole of tensor `name` (rank `rank`) holding `data`.
    fn data_record(
        name: &str,
        rank: usize,
        data: Option<proto::TensorProto>,
    ) -> (Vec<u8>, Vec<u8>) {
        let slice = Slice::full(rank);
        let rec = proto::SavedTensorSlices {
            meta: None,
            data: Some(proto::SavedSlice {
                name: name.as_bytes().to_vec(),
                slice: Some(slice_to_proto(&slice)),
                data,
            }),
        };
        (slice_key(name.as_bytes(), &slice), rec.encode_to_vec())
    }

    /// Every refusal of a V1 file's metadata names the file, and the tensor where there is one,
    /// and says what is wrong (found uncovered by a coverage run: no test reached them).
    #[test]
    fn damaged_v1_metadata_is_refused_naming_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str, records: Vec<(Vec<u8>, Vec<u8>)>| {
            let path = dir.path().join(name);
            std::fs::write(&path, raw_file(records)).unwrap();
            let Err(e) = crate::Checkpoint::open(&path) else {
                panic!("{name}: opened");
            };
            (path, e)
        };
        let ok_data = || {
            data_record(
                "t",
                1,
                Some(proto::TensorProto {
                    dtype: 1,
                    float_val: vec![1.0, 2.0],
                    ..Default::default()
                }),
            )
        };
        let header = |path: &std::path::Path, e: &crate::Error, reason: &str| {
            assert!(
                matches!(e.kind(), crate::ErrorKind::BadHeader { path: p, reason: r }
                    if p == path && r.contains(reason)),
                "{e:?}"
            );
        };
        let (path, e) = open("no_meta", vec![ok_data()]);
        header(&path, &e, "no saved tensor slices record (key \"\")");
        let (path, e) = open("bad_meta", vec![(Vec::new(), vec![0x0a, 0xff]), ok_data()]);
        header(&path, &e, "is not a SavedTensorSliceMeta");
        // An empty `""` record lists no tensors, as TensorFlow reads it: the file opens, and its
        // data records are no tensors of the checkpoint.
        let path = dir.path().join("empty_meta");
        std::fs::write(&path, raw_file(vec![(Vec::new(), Vec::new()), ok_data()])).unwrap();
        let c = crate::Checkpoint::open(&path).unwrap();
        assert!(c.tensors().is_empty());
        assert!(c.read("t").unwrap_err().is_not_found());
        // `verify` still names the record no metadata lists.
        let e = c.verify().unwrap_err().to_string();
        assert!(e.contains("the file's metadata does not list"), "{e}");
        let entry = |e: &crate::Error, tensor: &str, reason: &str| {
            assert!(
                matches!(e.kind(), crate::ErrorKind::BadEntry { tensor: t, reason: r, .. }
                    if t == tensor && r.contains(reason)),
                "{e:?}"
            );
        };
        let (_, e) = open("name", vec![meta_record(&[(b"t\xff", 1, &[2])])]);
        entry(&e, "t\u{fffd}", "tensor name is not UTF-8");
        let (path, e) = open("dtype", vec![meta_record(&[(b"t", 99, &[2])])]);
        assert!(
            matches!(e.kind(), crate::ErrorKind::UnknownDtype { path: p, tensor, value: 99 }
                if p == &path && tensor == "t"),
            "{e:?}"
        );
        let (_, e) = open("shape", vec![meta_record(&[(b"t", 1, &[-2])])]);
        entry(&e, "t", "invalid shape: negative dimension -2");
        let (_, e) = open("size", vec![meta_record(&[(b"t", 1, &[1 << 61])])]);
        entry(&e, "t", "too large");
        // Two files of one save that declare a tensor differently.
        for (i, dims) in [[2i64], [3]].iter().enumerate() {
            let path = dir.path().join(format!("two-{i:05}-of-00002"));
            std::fs::write(&path, raw_file(vec![meta_record(&[(b"t", 1, dims)])])).unwrap();
        }
        let Err(e) = crate::Checkpoint::open(dir.path().join("two-?????-of-00002")) else {
            panic!("two: opened");
        };
        entry(
            &e,
            "t",
            "declared as float32 [3] in this file but float32 [2] in an earlier one",
        );
    }

    /// A data record that cannot be the slice it claims (too few values, half a complex number, no
    /// values at all) fails the read of that tensor, naming it and the counts.
    #[test]
    fn v1_records_that_do_not_fit_their_slice_fail_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let read = |name: &str, dtype: i32, data: Option<proto::TensorProto>| {
            let path = dir.path().join(name);
            let records = vec![
                meta_record(&[(b"t", dtype, &[2])]),
                data_record("t", 1, data),
            ];
            std::fs::write(&path, raw_file(records)).unwrap();
            let ckpt = crate::Checkpoint::open(&path).unwrap();
            (ckpt.read("t"), ckpt.verify_all())
        };
        let proto_of = |dtype: i32| proto::TensorProto {
            dtype,
            ..Default::default()
        };
        let (r, v) = read(
            "short",
            1,
            Some(proto::TensorProto {
                float_val: vec![1.0],
                ..proto_of(1)
            }),
        );
        let e = r.unwrap_err();
        assert!(
            e.to_string()
                .ends_with("record holds 1 values, the slice shape [2] needs 2"),
            "{e}"
        );
        assert!(!v.problems.is_empty());
        let (r, _) = read(
            "half",
            8,
            Some(proto::TensorProto {
                scomplex_val: vec![1.0, 2.0, 3.0],
                ..proto_of(8)
            }),
        );
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("odd number of complex64 components"));
        let (r, _) = read("empty", 1, None);
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("record holds no tensor data"));
        // int16 values travel in int_val, two bytes each kept.
        let (r, v) = read(
            "int16",
            5,
            Some(proto::TensorProto {
                int_val: vec![-2, 300],
                ..proto_of(5)
            }),
        );
        let t = r.unwrap();
        assert_eq!(
            t.bytes().unwrap(),
            [(-2i16).to_le_bytes(), 300i16.to_le_bytes()].concat()
        );
        assert!(v.problems.is_empty(), "{:?}", v.problems);
    }
}
