//! Writing V2 tensor bundles that TensorFlow reads: one or more data shards, partitioned tensors as
//! slices, strings, and an optionally snappy-compressed index. Used by tests, benchmarks and the demo
//! to make large checkpoints without TensorFlow.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::base::dtype::DType;
use crate::base::error::{Error, ErrorKind, Result};
use crate::base::partial::PartialOutput;
use crate::base::slice::{num_elements, Extent, RegionIndex, Slice};
use crate::base::tensor::{Strings, Tensor, TensorData};
use crate::format::bundle::{data_path, index_path, swap_bytes};
use crate::format::index::check_shape;
use crate::format::proto;
use crate::format::slice_codec::{slice_from_proto, slice_key, slice_to_proto};
use crate::format::sstable_builder::TableBuilder;

mod files;
use files::{
    create_temp, file_id, index_shards, make_dirs, open_again, open_files_spent, out_of_files,
    rename, Shard, ShardFile, MAX_OPEN_SHARDS,
};
pub(crate) use files::{folder_of, sync_dir, sync_dir_after_rename};

/// Options of a [`CheckpointWriter`].
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Number of data files (`PREFIX.data-0000i-of-0000n`); each tensor goes to the shard holding the
    /// fewest bytes so far. At least 1; the writer holds at most 64 of them open at once.
    pub num_shards: u32,
    /// Store index blocks snappy-compressed (TensorFlow writes them uncompressed but reads both).
    pub compress_index: bool,
    /// Index block size; TensorFlow uses 256 KiB.
    pub block_size: usize,
    /// Write tensor data big-endian and mark the header so (to test readers: a reader on a
    /// little-endian host, TensorFlow's too, swaps each element after checking its checksum).
    /// float8, int4 and int2 tensors are refused then: TensorFlow has no swap for them.
    pub big_endian: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            num_shards: 1,
            compress_index: false,
            block_size: 256 << 10,
            big_endian: false,
        }
    }
}

/// A borrowed tensor to write.
#[derive(Clone, Copy, Debug)]
pub enum TensorRef<'a> {
    /// Fixed-size elements as little-endian bytes.
    Bytes {
        /// Element type (not string).
        dtype: DType,
        /// Shape.
        shape: &'a [u64],
        /// `num_elements × dtype.size()` bytes.
        data: &'a [u8],
    },
    /// A string tensor.
    Strings {
        /// Shape.
        shape: &'a [u64],
        /// One string per element.
        data: &'a Strings,
    },
}

impl<'a> From<&'a Tensor> for TensorRef<'a> {
    fn from(t: &'a Tensor) -> TensorRef<'a> {
        match &t.data {
            TensorData::Bytes(b) => TensorRef::Bytes {
                dtype: t.dtype,
                shape: &t.shape,
                data: b,
            },
            TensorData::Strings(s) => TensorRef::Strings {
                shape: &t.shape,
                data: s,
            },
        }
    }
}

impl TensorRef<'_> {
    fn dtype(&self) -> DType {
        match self {
            TensorRef::Bytes { dtype, .. } => *dtype,
            TensorRef::Strings { .. } => DType::String,
        }
    }

    fn shape(&self) -> &[u64] {
        match self {
            TensorRef::Bytes { shape, .. } | TensorRef::Strings { shape, .. } => shape,
        }
    }
}

/// Writes a V2 checkpoint: add tensors (in any order), then [`finish`](Self::finish).
///
/// ```
/// use tfckpt::{CheckpointWriter, Tensor, WriterOptions};
/// let dir = tempfile::tempdir()?;
/// let prefix = dir.path().join("model.ckpt");
/// let mut w = CheckpointWriter::create(&prefix, WriterOptions::default())?;
/// w.add("dense/kernel", (&Tensor::from_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap()).into())?;
/// w.finish()?;
/// let ckpt = tfckpt::Checkpoint::open(&prefix)?;
/// assert_eq!(ckpt.read("dense/kernel")?.to_f32().unwrap(), [1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CheckpointWriter {
    prefix: PathBuf,
    options: WriterOptions,
    shards: Vec<Shard>,
    entries: BTreeMap<Vec<u8>, proto::BundleEntryProto>,
    /// The boxes of the slices added so far, per partitioned tensor (for the overlap check).
    slices: std::collections::HashMap<Vec<u8>, RegionIndex>,
    /// The folders `create` made for the prefix, outermost first: removed again (those left
    /// empty) when the checkpoint is not finished.
    made_dirs: Vec<PathBuf>,
    finished: bool,
    /// A write to a shard that failed: the shard may hold part of that tensor, so every later
    /// offset in it would be wrong. Every later call fails with it (as TensorFlow's
    /// `BundleWriter` keeps its first error).
    failed: Option<String>,
    /// How many shards are open (at most [`MAX_OPEN_SHARDS`]).
    open: usize,
    /// The buffers of closed shards, for those opened next.
    spare: Vec<Vec<u8>>,
}

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter")
            .field("prefix", &self.prefix)
            .field("options", &self.options)
            .field("entries", &self.entries.len())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl CheckpointWriter {
    /// Starts a checkpoint at `prefix`; files are written under temporary names and renamed by
    /// [`finish`](Self::finish). The prefix's missing folders are made, as TensorFlow's
    /// `tf.train.Checkpoint.save` makes them; a writer dropped unfinished (or whose `finish`
    /// fails) removes those it made, as far as they are empty.
    pub fn create(prefix: impl AsRef<Path>, options: WriterOptions) -> Result<CheckpointWriter> {
        let prefix = prefix.as_ref().to_path_buf();
        // The header stores the count as an int32 (a larger one would read back negative).
        if options.num_shards == 0 || options.num_shards > i32::MAX as u32 {
            return Err(ErrorKind::InvalidArgument(format!(
                "num_shards must be between 1 and {}, not {}",
                i32::MAX,
                options.num_shards
            ))
            .into());
        }
        // A block's bytes and offsets are 32-bit in the table (and its builder doubles the size).
        if options.block_size == 0 || options.block_size > 1 << 30 {
            return Err(ErrorKind::InvalidArgument(format!(
                "block_size must be between 1 and {} (1 GiB), not {}",
                1u64 << 30,
                options.block_size
            ))
            .into());
        }
        let mut writer = CheckpointWriter {
            // Grown as the shard files are made (the count may be more than the system lets
            // one process open: that fails naming the file, not an allocation).
            shards: Vec::new(),
            prefix,
            options,
            entries: BTreeMap::new(),
            slices: Default::default(),
            made_dirs: Vec::new(),
            finished: false,
            failed: None,
            open: 0,
            spare: Vec::new(),
        };
        // Made into the writer one by one, so that a failure drops it and removes the ones made.
        // The folder the files go in (`prefix/` names one, as its files `prefix/.index` do).
        let first = data_path(&writer.prefix, 0, writer.options.num_shards);
        make_dirs(folder_of(&first), &mut writer.made_dirs)?;
        // Pushed one by one into the writer, so that a shard that cannot be created drops it and
        // the writer removes the ones made before. Made all at once (their names are taken from
        // the start), the first ones left open.
        let n = writer.options.num_shards;
        for i in 0..n {
            let (tmp, file, _listed) = loop {
                match create_temp(&data_path(&writer.prefix, i, n)) {
                    Err(e) if out_of_files(&e) && writer.open > 0 => writer.close_one()?,
                    made => break made.map_err(|e| open_files_spent(e, writer.open, n))?,
                }
            };
            let open = writer.open < MAX_OPEN_SHARDS;
            writer.open += usize::from(open);
            writer.shards.push(Shard {
                tmp,
                id: file_id(&file),
                out: open.then(|| ShardFile::new(file, &mut writer.spare)),
                len: 0,
                _listed,
            });
        }
        Ok(writer)
    }

    /// Adds a whole tensor under `name`.
    pub fn add(&mut self, name: &str, tensor: TensorRef<'_>) -> Result<()> {
        self.check_usable()?;
        self.check_new(name.as_bytes())?;
        let entry = self.write_data(name, tensor)?;
        self.entries.insert(name.as_bytes().to_vec(), entry);
        Ok(())
    }

    /// Adds one slice of a partitioned tensor, as TensorFlow's `AddSlice` does: `tensor` holds the
    /// elements of `slice` of the tensor `full_name` of shape `full_shape`. A slice covering the whole
    /// tensor is stored as an ordinary entry.
    pub fn add_slice(
        &mut self,
        full_name: &str,
        full_shape: &[u64],
        slice: &Slice,
        tensor: TensorRef<'_>,
    ) -> Result<()> {
        self.check_usable()?;
        // The full tensor's entry goes under its name, and "" is the header's key (TensorFlow's
        // `AddSlice` refuses it too).
        if full_name.is_empty() {
            return Err(ErrorKind::InvalidArgument(
                "a tensor name cannot be empty (\"\" is the index header's key)".into(),
            )
            .into());
        }
        check_shape(full_shape)
            .map_err(|r| ErrorKind::InvalidArgument(format!("{full_name}: {r}")))?;
        slice
            .check(full_shape)
            .map_err(|r| ErrorKind::InvalidArgument(format!("{full_name}: {r}")))?;
        if slice.shape(full_shape) != tensor.shape() {
            return Err(ErrorKind::InvalidArgument(format!(
                "{full_name}: slice {slice} has shape {:?} but the tensor has shape {:?}",
                slice.shape(full_shape),
                tensor.shape()
            ))
            .into());
        }
        if slice.ranges(full_shape) == Slice::full(full_shape.len()).ranges(full_shape) {
            return self.add(full_name, tensor);
        }
        let key = slice_key(full_name.as_bytes(), slice);
        self.check_new(&key)?;
        let bad = |reason: &str| -> crate::Error {
            ErrorKind::InvalidArgument(format!("{full_name}: {reason}")).into()
        };
        // Validate against the full entry first; change nothing until the data is written.
        if let Some(full) = self.entries.get(full_name.as_bytes()) {
            if full.slices.is_empty() {
                return Err(bad("already added as a whole tensor"));
            }
            if full.dtype != tensor.dtype().to_proto() {
                let before = crate::base::dtype::DType::from_proto(full.dtype)
                    .map_or(full.dtype.to_string(), |d| d.to_string());
                return Err(bad(&format!(
                    "its slices were added as {before}, this one is {}",
                    tensor.dtype()
                )));
            }
            if full.shape != Some(shape_proto(full_shape)) {
                return Err(bad("slices disagree on the full shape"));
            }
            // As TensorFlow's reader checks (and this crate's): a full extent overlaps whatever
            // the dimension's size, so the slices of a tensor with no elements may overlap too.
            let index = self.slices.get(full_name.as_bytes());
            if let Some(i) = index.and_then(|x| x.overlapping(&slice.overlap_box())) {
                let other = slice_from_proto(&full.slices[i]).map_err(|r| bad(&r))?;
                return Err(bad(&format!(
                    "slice {slice} overlaps slice {other} added before"
                )));
            }
        }
        let entry = self.write_data(full_name, tensor)?;
        self.entries.insert(key, entry);
        self.entries
            .entry(full_name.as_bytes().to_vec())
            .or_insert_with(|| proto::BundleEntryProto {
                dtype: tensor.dtype().to_proto(),
                shape: Some(shape_proto(full_shape)),
                ..Default::default()
            })
            .slices
            .push(slice_to_proto(slice));
        // Indexed along the axis the first slice is cut on (the partition axis).
        let axis = slice
            .extents()
            .iter()
            .zip(full_shape)
            .position(|(e, &d)| {
                *e != Extent::Full
                    && *e
                        != Extent::Range {
                            start: 0,
                            length: d,
                        }
            })
            .unwrap_or(0);
        self.slices
            .entry(full_name.as_bytes().to_vec())
            .or_insert_with(|| RegionIndex::new(axis))
            .insert(slice.overlap_box());
        Ok(())
    }

    /// Fails once a write to a shard has failed (see `failed`).
    fn check_usable(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(e) => Err(ErrorKind::InvalidArgument(format!(
                "an earlier write of this checkpoint failed ({e}): its shards cannot be trusted, \
                 start it again"
            ))
            .into()),
        }
    }

    fn check_new(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() || self.entries.contains_key(key) {
            let what = if key.is_empty() {
                "a tensor name cannot be empty (\"\" is the index header's key)".to_string()
            } else {
                let name = crate::format::index::key_name(key);
                format!("{} was added before", crate::base::error::named(&name))
            };
            return Err(
                ErrorKind::InvalidArgument(format!("{}: {what}", self.prefix.display())).into(),
            );
        }
        Ok(())
    }

    fn write_data(&mut self, name: &str, tensor: TensorRef<'_>) -> Result<proto::BundleEntryProto> {
        // A shape TensorFlow would refuse to read (and so would `Checkpoint::open`).
        check_shape(tensor.shape())
            .map_err(|r| ErrorKind::InvalidArgument(format!("{name}: {r}")))?;
        let n = num_elements(tensor.shape())
            .ok_or_else(|| ErrorKind::InvalidArgument(format!("{name}: shape overflows")))?;
        let big = self.options.big_endian;
        let (owned, bytes, crc): (Vec<u8>, Option<&[u8]>, u32) = match tensor {
            TensorRef::Bytes { dtype, data, .. } => {
                let size = dtype.size().ok_or_else(|| {
                    ErrorKind::InvalidArgument(format!("{name}: {dtype} is not a fixed-size dtype"))
                })?;
                if n.checked_mul(size as u64) != Some(data.len() as u64) {
                    return Err(ErrorKind::InvalidArgument(format!(
                        "{name}: {} bytes given, {dtype} {:?} needs {}",
                        data.len(),
                        tensor.shape(),
                        n.saturating_mul(size as u64)
                    ))
                    .into());
                }
                // TensorFlow's reader byte-swaps every fixed-size dtype of a big-endian bundle
                // but these, and has no swap for the other one-byte ones (float8, int4, int2):
                // "Byte-swapping not supported", even for an empty tensor.
                let unswapped = matches!(
                    dtype,
                    DType::Bool | DType::I8 | DType::U8 | DType::QI8 | DType::QU8
                );
                if big && size == 1 && !unswapped {
                    return Err(ErrorKind::InvalidArgument(format!(
                        "{name}: TensorFlow cannot read {dtype} from a big-endian checkpoint (it \
                         byte-swaps every fixed-size dtype there but bool and the 8-bit integers)"
                    ))
                    .into());
                }
                if big && dtype.swap_unit() > 1 {
                    let mut v = data.to_vec();
                    swap_bytes(&mut v, dtype.swap_unit());
                    let crc = crate::base::crc::crc32c(&v);
                    (v, None, crc)
                } else {
                    (Vec::new(), Some(data), crate::base::crc::crc32c(data))
                }
            }
            TensorRef::Strings { data, .. } => {
                if data.len() as u64 != n {
                    return Err(ErrorKind::InvalidArgument(format!(
                        "{name}: {} strings given, shape {:?} needs {n}",
                        data.len(),
                        tensor.shape()
                    ))
                    .into());
                }
                let (v, crc) = crate::format::strings::encode(data, big);
                (v, None, crc)
            }
        };
        let bytes = bytes.unwrap_or(&owned);
        let (i, _) = self
            .shards
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.len)
            .expect("at least one shard");
        let out = self.shard_file(i)?;
        if let Err(e) = out.write(bytes) {
            let what = format!("writing tensor {name:?}: {e}");
            let e = Error::io(&self.shards[i].tmp, std::io::Error::new(e.kind(), what));
            self.failed = Some(e.to_string());
            return Err(e);
        }
        let shard = &mut self.shards[i];
        let offset = shard.len;
        shard.len += bytes.len() as u64;
        Ok(proto::BundleEntryProto {
            dtype: tensor.dtype().to_proto(),
            shape: Some(shape_proto(tensor.shape())),
            shard_id: i as i32,
            offset: offset as i64,
            size: bytes.len() as i64,
            crc32c: crate::base::crc::mask(crc),
            slices: Vec::new(),
        })
    }

    /// Writes the index and renames every file to its final name. Every file is written out and
    /// synced first: an error until then (a full disk) leaves the prefix as it was. An earlier
    /// checkpoint of as many shards under the prefix then loses its index, and the shards and
    /// the index are renamed into place: an error or a crash among the renames leaves no index
    /// (a prefix plainly incomplete), never an old index over new shards.
    pub fn finish(mut self) -> Result<()> {
        self.check_usable()?;
        let header = proto::BundleHeaderProto {
            num_shards: self.options.num_shards as i32,
            endianness: i32::from(self.options.big_endian),
            version: Some(proto::VersionDef {
                producer: 1,
                ..Default::default()
            }),
        };
        let mut table = TableBuilder::new(self.options.block_size, self.options.compress_index);
        table.add(b"", &header.encode_to_vec());
        for (key, entry) in &self.entries {
            table.add(key, &entry.encode_to_vec());
        }
        let index = table.finish();
        // Every shard's buffered bytes in its file, and every file closed (an error fails the
        // writer, whose drop removes them): from here on one file is open at a time.
        while self.open > 0 {
            self.close_one()?;
        }
        let final_index = index_path(&self.prefix);
        // Every file on disk before it is renamed into place, and the renames before `finish`
        // returns: a crash of the system afterwards cannot leave an empty index or shard. On an
        // error, no temporary file is left (the shards renamed by then stay, as TensorFlow's do).
        let (prefix, num_shards) = (&self.prefix, self.options.num_shards);
        let mut shards = std::mem::take(&mut self.shards).into_iter().enumerate();
        let (tmp_index, index_file, _listed) = match create_temp(&final_index) {
            Ok(t) => t,
            Err(e) => {
                for (_, shard) in shards {
                    let _ = std::fs::remove_file(&shard.tmp);
                }
                return Err(e);
            }
        };
        // Shards written out and synced under their temporary names, not yet renamed.
        let mut synced: Vec<(usize, PathBuf, PartialOutput)> = Vec::new();
        let renamed = Ok(index_file)
            .and_then(|mut f| {
                f.write_all(&index)?;
                f.sync_all()
            })
            .map_err(|e| Error::io(&tmp_index, e))
            .and_then(|()| {
                // 1. Every shard on disk under its temporary name before anything under the
                // prefix changes: a full disk or an I/O error leaves an earlier checkpoint there
                // as it was (written out and renamed one by one, its first shards were replaced
                // before a later one failed, and both checkpoints were lost).
                for (
                    i,
                    Shard {
                        tmp,
                        len,
                        id,
                        _listed,
                        ..
                    },
                ) in shards.by_ref()
                {
                    // Opened to sync it, and closed (dropped after the sync) before it is
                    // renamed.
                    let written = open_again(&tmp, len, id, false)
                        .and_then(|f| f.sync_all().map_err(|e| Error::io(&tmp, e)));
                    synced.push((i, tmp, _listed));
                    written?;
                }
                // 2. Once a shard of an earlier checkpoint under this prefix (of as many shards)
                // is to be replaced, that checkpoint is gone: its index goes first, so that a
                // crash or a failure among the renames leaves a plainly incomplete prefix (no
                // index), not the old index over new shards (checksum errors on read). One of
                // another shard count keeps its index until this one's replaces it.
                let replaces = synced.iter().any(|(i, ..)| {
                    std::fs::symlink_metadata(data_path(prefix, *i as u32, num_shards)).is_ok()
                });
                if replaces && index_shards(&final_index) == Some(num_shards) {
                    match std::fs::remove_file(&final_index) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io(&final_index, e)),
                    }
                }
                // 3. The renames, shards first (those not renamed stay in `synced`, for the
                // cleanup after an error).
                synced.reverse();
                while let Some((i, tmp, _listed)) = synced.pop() {
                    rename(&tmp, &data_path(prefix, i as u32, num_shards)).inspect_err(|_| {
                        let _ = std::fs::remove_file(&tmp);
                    })?;
                }
                rename(&tmp_index, &final_index)
            });
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp_index);
            for (_, tmp, _) in synced {
                let _ = std::fs::remove_file(&tmp);
            }
            for (_, shard) in shards {
                let _ = std::fs::remove_file(&shard.tmp);
            }
        }
        renamed?;
        self.finished = true;
        sync_dir_after_rename(folder_of(&final_index))?;
        // The folders made, on disk too where the system lets it: each one's entry in the folder
        // above it (one this process may write into but not read cannot be opened to sync).
        for made in &self.made_dirs {
            let _ = sync_dir(folder_of(made));
        }
        Ok(())
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.finished {
            for s in &self.shards {
                let _ = std::fs::remove_file(&s.tmp);
            }
            // Innermost first, as long as they are empty (another writer's files may be there).
            for d in self.made_dirs.iter().rev() {
                if std::fs::remove_dir(d).is_err() {
                    break;
                }
            }
        }
    }
}

pub(crate) fn shape_proto(shape: &[u64]) -> proto::TensorShapeProto {
    proto::TensorShapeProto {
        dim: shape
            .iter()
            .map(|&d| proto::Dim {
                size: d as i64,
                name: String::new(),
            })
            .collect(),
        unknown_rank: false,
    }
}

/// Writes a `checkpoint` state file in `dir` naming `prefix` (stored as given: pass a path relative to
/// `dir` for a relocatable checkpoint). An empty `prefix`, which names no checkpoint (a reader
/// refuses the file), is refused; `dir` must exist.
pub fn write_checkpoint_state(dir: impl AsRef<Path>, prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Err(ErrorKind::InvalidArgument(
            "an empty prefix names no checkpoint: a state file with an empty \
             model_checkpoint_path cannot be read"
                .into(),
        )
        .into());
    }
    let path = dir.as_ref().join("checkpoint");
    // Quoted as TensorFlow writes it (text format's `CEscape`, not UTF-8): `\t \n \r \" \' \\`,
    // other bytes below 32 or above 126 as `\ooo`, so that any prefix reads back.
    let mut quoted = String::with_capacity(prefix.len());
    for &b in prefix.as_bytes() {
        match b {
            b'\t' => quoted.push_str("\\t"),
            b'\n' => quoted.push_str("\\n"),
            b'\r' => quoted.push_str("\\r"),
            b'"' | b'\'' | b'\\' => {
                quoted.push('\\');
                quoted.push(b as char);
            }
            32..=126 => quoted.push(b as char),
            _ => quoted.push_str(&format!("\\{b:03o}")),
        }
    }
    let text =
        format!("model_checkpoint_path: \"{quoted}\"\nall_model_checkpoint_paths: \"{quoted}\"\n");
    // Replaced in one step, as TensorFlow's `atomic_write_string_to_file` does: written in place,
    // the file was empty for a moment, and a reader then (an evaluator polling
    // `tf.train.latest_checkpoint`) failed on an empty `model_checkpoint_path`.
    let (tmp, file, _listed) = create_temp(&path)?;
    let written = Ok(file)
        .and_then(|mut f: File| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The header of the index, decoded.
    fn header(index: &Path) -> super::proto::BundleHeaderProto {
        use prost::Message;
        let bytes = std::fs::read(index).unwrap();
        let table = crate::format::sstable::Table::open(index, &bytes).unwrap();
        let header = table.get(b"").unwrap().unwrap();
        super::proto::BundleHeaderProto::decode(&*header).unwrap()
    }

    /// The index's header is the one TensorFlow writes (its version's producer 1 included),
    /// field for field, against a fixture TensorFlow saved in one shard.
    #[test]
    fn the_header_is_tensorflows() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tf/h1_basic");
        let tf = header(&fixture.join("model-0.index"));
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("m");
        let mut w = super::CheckpointWriter::create(&prefix, Default::default()).unwrap();
        let one = crate::Tensor::from_f32(&[1], &[1.0]).unwrap();
        w.add("x", (&one).into()).unwrap();
        w.finish().unwrap();
        let ours = header(&super::index_path(&prefix));
        assert_eq!(ours, tf);
        assert_eq!(ours.version.map(|v| v.producer), Some(1));
    }
}
