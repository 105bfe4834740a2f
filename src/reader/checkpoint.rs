//! The reader's public face: open a checkpoint (V2 or V1), list its tensors, read a tensor or any
//! slice of it (assembled from stored slices when it was saved partitioned), verify every checksum.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::resolve::{self, Resolved};
use crate::base::dtype::DType;
use crate::base::error::{listed, Error, ErrorKind, Result};
use crate::base::slice::{num_elements, Slice};
use crate::base::tensor::{ElementsMut, Strings, Tensor, TensorData};
use crate::format::bundle::{Bundle, EntryBytes};
use crate::format::slice_codec::{parse_slice_key, slice_key};
use crate::format::v1::V1Set;

/// The on-disk format of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A tensor bundle: `PREFIX.index` + `PREFIX.data-NNNNN-of-NNNNN` (TF ≥ 0.12 default).
    V2,
    /// The legacy single-file (or glob of files) tensor-slice format.
    V1,
}

/// What a checkpoint stores under one name.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TensorInfo {
    /// Full tensor name (for a partitioned tensor, the name of the whole).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Full shape.
    pub shape: Vec<u64>,
    /// The stored slices of a partitioned tensor; empty when it was saved whole.
    pub slices: Vec<Slice>,
}

impl TensorInfo {
    /// Number of elements of the full tensor.
    pub fn num_elements(&self) -> u64 {
        num_elements(&self.shape).unwrap_or(0)
    }

    /// Bytes of the full tensor in memory (`None` for strings and variants).
    pub fn byte_len(&self) -> Option<u64> {
        Some(self.num_elements() * self.dtype.size()? as u64)
    }

    /// Whether the tensor was saved as several slices.
    pub fn is_partitioned(&self) -> bool {
        !self.slices.is_empty()
    }
}

/// A verified, read-only tensor whose bytes are the checkpoint's mapped file itself
/// ([`Checkpoint::view`]).
pub struct TensorView {
    dtype: DType,
    shape: Vec<u64>,
    bytes: EntryBytes,
}

impl TensorView {
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The little-endian, row-major element bytes, straight from the mapping.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// The bytes, if they are a copy (a remote shard's) rather than the mapping; else the view.
    #[cfg(feature = "safetensors")]
    pub(crate) fn into_owned(self) -> std::result::Result<Vec<u8>, TensorView> {
        match self.bytes {
            EntryBytes::Owned(v) => Ok(v),
            bytes => Err(TensorView { bytes, ..self }),
        }
    }

    /// The shard mapping and range the bytes are, unless they are a copy.
    #[cfg(feature = "safetensors")]
    pub(crate) fn mapping(
        &self,
    ) -> Option<(
        std::sync::Arc<crate::base::mmap::MappedFile>,
        std::ops::Range<usize>,
    )> {
        match &self.bytes {
            EntryBytes::Mapped { map, range } => Some((map.clone(), range.clone())),
            EntryBytes::Owned(_) => None,
        }
    }

    /// An error when a read of the bytes (on a thread reading for the library) found the shard
    /// truncated under the mapping: the missing pages then read as zeros.
    #[cfg(feature = "safetensors")]
    pub(crate) fn intact(&self) -> Result<()> {
        match &self.bytes {
            EntryBytes::Mapped { map, .. } => map.intact(),
            EntryBytes::Owned(_) => Ok(()),
        }
    }
}

impl std::fmt::Debug for TensorView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorView")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.as_bytes().len())
            .finish()
    }
}

/// The files behind a checkpoint.
pub(crate) enum Inner {
    V2(Bundle),
    V1(V1Set),
}

/// An open TensorFlow checkpoint.
///
/// Opening parses and validates the index (every block checksum, every entry's dtype, shape and size)
/// and memory-maps the data files it names (reading none of their pages; up to 1,024 of them, past
/// which, and on Windows, each is mapped at its first read); each tensor's checksum is
/// verified when it is read. On Unix an open checkpoint keeps reading the files it was opened on: a
/// save to the same prefix, which renames new files over them, changes nothing it reads (open it
/// again to read the new save).
///
/// # Safety of the mapping
///
/// Files are memory-mapped: do not modify or truncate a checkpoint's files in place while a
/// `Checkpoint` is alive (deleting or renaming over them is fine). A file truncated under a live
/// mapping is an error while the library reads it (on Linux), but the bytes of a [`TensorView`]
/// of it read afterwards raise `SIGBUS`; bytes changed in place fail the checksums, or the
/// comparison of the file with what it was when mapped. TensorFlow never rewrites a finished
/// checkpoint in place.
///
/// ```no_run
/// let ckpt = tfckpt::Checkpoint::open("/data/model.ckpt")?;
/// for t in ckpt.tensors() {
///     println!("{} {} {:?}", t.name, t.dtype, t.shape);
/// }
/// let emb = ckpt.read("embedding")?;   // assembled from its slices if it was partitioned
/// # Ok::<(), tfckpt::Error>(())
/// ```
pub struct Checkpoint {
    prefix: PathBuf,
    state_file: Option<PathBuf>,
    pub(crate) inner: Inner,
    infos: Vec<TensorInfo>,
    by_name: rustc_hash::FxHashMap<String, usize>,
    /// For each listed tensor, the index of its V2 index entry (`None` for V1), so that reading
    /// needs no second search.
    pub(crate) entries: Vec<Option<usize>>,
    /// For each listed tensor, its stored pieces indexed by their boxes, built on first use.
    pub(crate) piece_sets: Vec<std::sync::OnceLock<super::stored::PieceSet>>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("prefix", &self.prefix)
            .field("format", &self.format())
            .field("tensors", &self.infos.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens a checkpoint: a directory with a `checkpoint` state file (its newest checkpoint), a
    /// prefix (`PREFIX.index` for V2, else a V1 file or glob), or — an extension over TensorFlow — the
    /// path of a V2 `.index` or data file. A `file:///PATH` URL is the local `PATH`, as in
    /// TensorFlow.
    ///
    /// With the `remote` feature (on by default), `path` may also be a URL of the same on object
    /// storage: `s3://BUCKET/PATH`, `gs://BUCKET/PATH`, `https://HOST/PATH` or `http://HOST/PATH`
    /// (V2 checkpoints; the directory form reads the `checkpoint` state file). S3 is configured
    /// only by the standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true`...), GCS by
    /// the `GOOGLE_*` ones. Opening fetches the index once; tensor bytes are fetched in parallel
    /// ranges when read ([`RemoteOptions`](crate::RemoteOptions)).
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        Self::open_with(path, &crate::RemoteOptions::default())
    }

    /// [`open`](Self::open), with the range size, concurrency and retries its reads use when the
    /// checkpoint is on object storage (ignored for local files).
    pub fn open_with(path: impl AsRef<Path>, remote: &crate::RemoteOptions) -> Result<Checkpoint> {
        // `file:///PATH` is a local path, as in TensorFlow.
        let local = resolve::file_url(path.as_ref());
        let path = local.as_deref().unwrap_or(path.as_ref());
        if let Some(url) = resolve::as_url(path) {
            #[cfg(feature = "remote")]
            {
                let (opened, state) = crate::remote::open(url, remote)?;
                let opened = match opened {
                    crate::remote::Opened::V2(b) => Self::from_bundle(*b),
                    crate::remote::Opened::V1 { prefix, files } => {
                        let files = files
                            .into_iter()
                            .map(crate::format::v1::V1File::Fetched)
                            .collect();
                        Self::from_v1(prefix, V1Set::from_files(files)?)
                    }
                };
                return opened.map(|c| c.with_state_file(state));
            }
            #[cfg(not(feature = "remote"))]
            return Err(ErrorKind::Remote {
                url: url.to_string(),
                range: None,
                reason: "this build of tfckpt cannot read object storage (build with the `remote` \
                         feature)"
                    .into(),
            }
            .into());
        }
        let _ = remote;
        let _reading = crate::base::sigbus::reading();
        let (opened, state) = match resolve::resolve(path)? {
            Resolved::V2 { prefix, state } => (Self::from_bundle(Bundle::open(&prefix)?), state),
            Resolved::V1 {
                prefix,
                files,
                state,
            } => (Self::from_v1(prefix, V1Set::open(&files)?), state),
        };
        opened.map(|c| c.with_state_file(state))
    }

    fn from_bundle(b: Bundle) -> Result<Checkpoint> {
        // A partitioned tensor is listed once: skip the keys of its slice entries (as TF's
        // `BuildV2VarMaps` does).
        let slice_keys: HashSet<Vec<u8>> = b
            .index
            .entries
            .iter()
            .flat_map(|e| e.slices.iter().map(|s| slice_key(&e.key, s)))
            .collect();
        let infos: Vec<(TensorInfo, Option<usize>)> = b
            .index
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !slice_keys.contains(&e.key))
            .map(|(i, e)| {
                // A slice entry that its tensor's entry does not list (TensorFlow would list its
                // raw key as a tensor): the index is inconsistent.
                if let Some((name, slice)) = parse_slice_key(&e.key) {
                    let whole = b.index.entries.iter().find(|t| t.key == name);
                    let reason = match whole {
                        Some(t) if t.slices.is_empty() => format!(
                            "the index holds a stored slice {slice} of it, but its entry lists no \
                             slices"
                        ),
                        Some(t) => format!(
                            "the index holds a stored slice {slice} of it that its entry does not \
                             list (it lists [{}])",
                            listed(t.slices.iter(), t.slices.len())
                        ),
                        None => format!(
                            "the index holds a stored slice {slice} of it, but no entry for the \
                             tensor"
                        ),
                    };
                    return Err(ErrorKind::BadEntry {
                        path: b.index_path.clone(),
                        tensor: String::from_utf8_lossy(&name).into_owned(),
                        reason,
                    }
                    .into());
                }
                // TensorFlow names are UTF-8; a key that is not cannot be asked for by name.
                let name = String::from_utf8(e.key.clone()).map_err(|_| ErrorKind::BadEntry {
                    path: b.index_path.clone(),
                    tensor: String::from_utf8_lossy(&e.key).into_owned(),
                    reason: "the tensor name is not UTF-8".into(),
                })?;
                let info = TensorInfo {
                    name,
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                    slices: e.slices.clone(),
                };
                Ok((info, Some(i)))
            })
            .collect::<Result<_>>()?;
        Ok(Self::with_infos(b.prefix.clone(), Inner::V2(b), infos))
    }

    fn from_v1(prefix: PathBuf, set: V1Set) -> Result<Checkpoint> {
        let infos = set
            .tensors
            .iter()
            .map(|(name, t)| {
                let info = TensorInfo {
                    name: name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    slices: if t.slices.len() == 1 && t.slices[0].0.is_full() {
                        Vec::new()
                    } else {
                        t.slices.iter().map(|(s, _)| s.clone()).collect()
                    },
                };
                (info, None)
            })
            .collect();
        Ok(Self::with_infos(prefix, Inner::V1(set), infos))
    }

    /// `infos` come with the index of their V2 entry, if any.
    fn with_infos(
        prefix: PathBuf,
        inner: Inner,
        mut infos: Vec<(TensorInfo, Option<usize>)>,
    ) -> Checkpoint {
        infos.sort_by(|a, b| a.0.name.as_bytes().cmp(b.0.name.as_bytes()));
        let (infos, entries): (Vec<TensorInfo>, Vec<Option<usize>>) = infos.into_iter().unzip();
        let by_name = infos
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Checkpoint {
            prefix,
            state_file: None,
            inner,
            piece_sets: infos.iter().map(|_| Default::default()).collect(),
            infos,
            entries,
            by_name,
        }
    }

    /// The resolved checkpoint prefix (for V1, the file path or glob).
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The `checkpoint` state file read to find the checkpoint, when it was opened by its
    /// directory (a URL for one on object storage); `None` when it was named by its prefix or
    /// one of its files. Not one of [`files`](Self::files), but read all the same: a tool that
    /// writes next to its input must not replace it either.
    pub fn state_file(&self) -> Option<&Path> {
        self.state_file.as_deref()
    }

    fn with_state_file(mut self, state: Option<PathBuf>) -> Checkpoint {
        self.state_file = state;
        self
    }

    /// The files the checkpoint is made of (object URLs, for one on object storage): for V2 its
    /// index and every data shard its header counts (the first 100,000 of a larger count, and
    /// any a tensor is stored in), whether or not they exist; for V1 each file.
    pub fn files(&self) -> Vec<PathBuf> {
        match &self.inner {
            Inner::V2(b) => {
                let counted = 0..b.index.num_shards.min(100_000);
                let shards: std::collections::BTreeSet<u32> = b
                    .index
                    .entries
                    .iter()
                    .filter(|e| e.slices.is_empty())
                    .map(|e| e.shard)
                    .chain(counted)
                    .collect();
                std::iter::once(b.index_path.clone())
                    .chain(shards.into_iter().map(|s| b.shard_path(s)))
                    .collect()
            }
            Inner::V1(set) => set.paths(),
        }
    }

    /// V2 or V1.
    pub fn format(&self) -> Format {
        match self.inner {
            Inner::V2(_) => Format::V2,
            Inner::V1(_) => Format::V1,
        }
    }

    /// Every tensor, sorted by name (bytewise); a partitioned tensor once, with its full shape.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.infos
    }

    /// The tensor stored under `name`, or [`ErrorKind::TensorNotFound`] with close names.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_id(name).map(|id| &self.infos[id])
    }

    /// The position of `name` in [`tensors`](Self::tensors).
    pub(crate) fn tensor_id(&self, name: &str) -> Result<usize> {
        match self.by_name.get(name) {
            Some(&i) => Ok(i),
            None => Err(ErrorKind::TensorNotFound {
                ckpt: self.prefix.clone(),
                tensor: name.to_string(),
                suggestions: crate::base::suggest::close_names(
                    name,
                    self.infos.iter().map(|t| t.name.as_str()),
                ),
                absent_files: self.missing_files(),
            }
            .into()),
        }
    }

    /// What is wrong with the files of a sharded V1 save opened by its glob
    /// (`model.ckpt-0-?????-of-00002`), which TensorFlow's glob reads without noticing: a file
    /// its naming expects that is missing ([`ErrorKind::MissingV1Shard`]: the tensors it holds
    /// are neither listed nor found), and one numbered past the save's count
    /// ([`ErrorKind::StrayV1File`]: read with the others, its slices overlap theirs).
    /// [`verify_all`](Self::verify_all) reports them too; `tfckpt list` warns of them. Empty
    /// for any other checkpoint (a V2 checkpoint's index names its data files:
    /// [`files`](Self::files)).
    pub fn file_problems(&self) -> Vec<Error> {
        match &self.inner {
            Inner::V1(set) if resolve::is_glob(&self.prefix) => set.missing_shards(),
            _ => Vec::new(),
        }
    }

    /// The missing files among [`file_problems`](Self::file_problems): a tensor not found may
    /// be in one of them.
    pub(crate) fn missing_files(&self) -> Vec<PathBuf> {
        self.file_problems()
            .into_iter()
            .filter_map(|e| match e.into_kind() {
                ErrorKind::MissingV1Shard { path, .. } => Some(path),
                _ => None,
            })
            .collect()
    }

    /// `Ok` unless a data file of the checkpoint mapped so far has been changed in place since it
    /// was mapped ([`ErrorKind::ChangedInPlace`], or [`ErrorKind::Truncated`] for a file
    /// shortened): what was read from it may then mix its two versions. A file deleted, or replaced by a
    /// rename, leaves the checkpoint its own bytes. Local files only (an object replaced on object
    /// storage is caught by each read: its size and ETag).
    pub(crate) fn unchanged(&self) -> Result<()> {
        match &self.inner {
            Inner::V2(b) => b.unchanged(None),
            Inner::V1(set) => set.unchanged(None),
        }
    }

    /// Whether the checkpoint's files (V2: its index and each data file mapped when it was
    /// opened; V1: its files) are unchanged on disk since it was opened (the same file, of the same length and
    /// modification time), so that opening it again would read what it reads. `false` once a
    /// save to the same prefix, or a deletion, has changed one of them.
    pub fn is_current(&self) -> bool {
        match &self.inner {
            Inner::V2(b) => b.is_current(),
            Inner::V1(set) => set.is_current(),
        }
    }

    /// Whether the checkpoint is on object storage (opened from a URL).
    pub fn is_remote(&self) -> bool {
        match &self.inner {
            #[cfg(feature = "remote")]
            Inner::V2(b) => b.remote_source().is_some(),
            Inner::V1(set) => set.is_remote(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Reads of a checkpoint on object storage run from now on with `options` (range size,
    /// concurrency, retries) under `budget`, shared by every checkpoint of one load.
    #[cfg(feature = "remote")]
    pub(crate) fn configure_remote(
        &self,
        options: &crate::RemoteOptions,
        budget: &std::sync::Arc<crate::remote::fetch::Budget>,
    ) -> Result<()> {
        match &self.inner {
            Inner::V2(b) => match b.remote_source() {
                Some(r) => r.configure(options, budget),
                None => Ok(()),
            },
            Inner::V1(_) => Ok(()),
        }
    }

    /// Undoes [`configure_remote`](Self::configure_remote) with `budget` (see
    /// `RemoteBundle::unconfigure`).
    #[cfg(feature = "remote")]
    pub(crate) fn unconfigure_remote(&self, budget: &std::sync::Arc<crate::remote::fetch::Budget>) {
        if let Inner::V2(b) = &self.inner {
            if let Some(r) = b.remote_source() {
                r.unconfigure(budget);
            }
        }
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Reads a whole tensor.
    pub fn read(&self, name: &str) -> Result<Tensor> {
        let info = self.tensor(name)?;
        self.read_slice(name, &Slice::full(info.shape.len()))
    }

    /// Reads a slice of a tensor (any box; assembled from the stored slices that cover it).
    pub fn read_slice(&self, name: &str, slice: &Slice) -> Result<Tensor> {
        let stored = self.stored(name)?;
        let info = stored.info;
        check_slice(info, slice)?;
        let region = slice.region(&info.shape);
        let n = region.num_elements().unwrap_or(0);
        stored.check_backing(&region, n)?;
        let mut data = match info.dtype.size() {
            Some(size) => {
                let len = addressable(n.saturating_mul(size as u64), &info.name)?;
                TensorData::Bytes(crate::base::mmap::alloc_zeroed(len, &info.name)?.into())
            }
            None => TensorData::Strings(Strings::new()), // filled whole by the read
        };
        stored.assemble_read(&mut [(region.clone(), data.elements_mut())])?;
        Ok(Tensor {
            dtype: info.dtype,
            shape: region.shape(),
            data,
        })
    }

    /// A zero-copy, read-only view of a whole tensor's bytes, backed directly by the memory mapping
    /// of its data shard: no allocation, no copy (the bytes are checksummed once, here). For V2
    /// tensors saved whole, in a little-endian checkpoint; others answer with
    /// [`ErrorKind::Unsupported`] (use [`read`](Self::read)). The view keeps the shard mapped.
    pub fn view(&self, name: &str) -> Result<TensorView> {
        let _reading = crate::base::sigbus::reading();
        let stored = self.stored(name)?;
        let info = stored.info;
        let unsupported = |what: &str| -> Error {
            ErrorKind::Unsupported {
                tensor: info.name.clone(),
                what: format!("no zero-copy view: {what}; use Checkpoint::read"),
            }
            .into()
        };
        let Inner::V2(b) = &self.inner else {
            return Err(unsupported("a V1 file stores values as protobuf fields"));
        };
        if info.is_partitioned() {
            return Err(unsupported("the tensor was saved as several slices"));
        }
        if info.dtype.size().is_none() {
            return Err(unsupported(
                "string tensors are not stored as plain elements",
            ));
        }
        if b.index.big_endian && info.dtype.swap_unit() > 1 {
            return Err(unsupported("the checkpoint is big-endian"));
        }
        let e = stored.entry(b, &Slice::full(info.shape.len()))?;
        let bytes = b.fixed_bytes(e)?;
        Ok(TensorView {
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes,
        })
    }

    /// Bytes needed to hold `slice` of `name` (`None` slice: the whole tensor); fails for strings.
    pub fn byte_len(&self, name: &str, slice: Option<&Slice>) -> Result<usize> {
        let info = self.tensor(name)?;
        let size = fixed_size(info)?;
        let n = match slice {
            Some(s) => {
                check_slice(info, s)?;
                num_elements(&s.shape(&info.shape)).unwrap_or(0)
            }
            None => info.num_elements(),
        };
        addressable(n.saturating_mul(size as u64), name)
    }

    /// Reads a whole fixed-size tensor into `dst` (exactly [`byte_len`](Self::byte_len) bytes,
    /// little-endian, row-major).
    pub fn read_into(&self, name: &str, dst: &mut [u8]) -> Result<()> {
        let info = self.tensor(name)?;
        self.read_slice_into(name, &Slice::full(info.shape.len()), dst)
    }

    /// Reads a slice of a fixed-size tensor into `dst`.
    pub fn read_slice_into(&self, name: &str, slice: &Slice, dst: &mut [u8]) -> Result<()> {
        let stored = self.stored(name)?;
        let info = stored.info;
        let size = fixed_size(info)?;
        check_slice(info, slice)?;
        let want = num_elements(&slice.shape(&info.shape)).unwrap_or(0) * size as u64;
        if want != dst.len() as u64 {
            return Err(ErrorKind::BufferSize {
                tensor: info.name.clone(),
                variable: false,
                elements: None,
                expected: want,
                found: dst.len() as u64,
            }
            .into());
        }
        stored.assemble_read(&mut [(slice.region(&info.shape), ElementsMut::Bytes(dst))])
    }
}

fn fixed_size(info: &TensorInfo) -> Result<usize> {
    info.dtype.size().ok_or_else(|| {
        ErrorKind::Unsupported {
            tensor: info.name.clone(),
            what: format!(
                "{} tensors cannot be read into a byte buffer; use Checkpoint::read",
                info.dtype
            ),
        }
        .into()
    })
}

fn check_slice(info: &TensorInfo, slice: &Slice) -> Result<()> {
    if info.dtype == DType::Variant {
        return Err(ErrorKind::Unsupported {
            tensor: info.name.clone(),
            what: "reading variant tensors is not supported".into(),
        }
        .into());
    }
    slice.check(&info.shape).map_err(|reason| {
        ErrorKind::BadSlice {
            tensor: info.name.clone(),
            reason,
        }
        .into()
    })
}

/// `bytes` as a length in memory: an allocation error naming `tensor` where it does not fit this
/// machine's addresses (a 32-bit target).
fn addressable(bytes: u64, tensor: &str) -> Result<usize> {
    usize::try_from(bytes).map_err(|_| {
        ErrorKind::Allocation {
            bytes,
            tensor: tensor.to_string(),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use crate::format::index::testing::rewrite_index;
    use crate::{Checkpoint, CheckpointWriter, DType, Tensor, WriterOptions};

    /// Entries whose declared sizes add up past u64 (each within int64, as an index may say):
    /// `verify` reports them, and the byte count saturates instead of overflowing (a panic in
    /// a debug build, a wrapped count in a release one).
    #[test]
    fn declared_sizes_past_u64_are_reported_not_summed_over() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("h");
        let mut w = CheckpointWriter::create(&prefix, WriterOptions::default()).unwrap();
        for name in ["a", "b", "c"] {
            let t = Tensor::from_bytes(DType::U8, &[4], vec![1, 2, 3, 4]).unwrap();
            w.add(name, (&t).into()).unwrap();
        }
        w.finish().unwrap();
        let big = i64::MAX;
        rewrite_index(&prefix, |_, e| {
            e.shape = Some(crate::format::writer::shape_proto(&[big as u64]));
            e.size = big;
            e.offset = 0;
        });
        let ckpt = Checkpoint::open(&prefix).unwrap();
        let report = ckpt.verify_all();
        assert_eq!(report.tensors, 3);
        assert_eq!(report.bytes, u64::MAX);
        assert_eq!(report.problems.len(), 3, "{:?}", report.problems);
        let e = report.problems[0].to_string();
        assert!(e.contains("h.data-00000-of-00001"), "{e}");
    }

    /// Stored slices of a tensor with no elements overlap as TensorFlow says (a full dimension
    /// overlaps whatever its size): an index listing `0,2:-` and `0,3:-` of a `[5, 0]` tensor
    /// (which the writer refuses to make) reads as TensorFlow's "Overlapping slices".
    #[test]
    fn empty_slices_listed_overlapping_are_refused() {
        use crate::base::slice::{Extent, Slice};
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("o");
        let mut w = CheckpointWriter::create(&prefix, WriterOptions::default()).unwrap();
        let rows = |start, length| Slice::new(vec![Extent::Range { start, length }, Extent::Full]);
        for (start, len) in [(0, 2), (2, 3)] {
            let t = Tensor::from_f32(&[len, 0], &[]).unwrap();
            w.add_slice("z", &[5, 0], &rows(start, len), (&t).into())
                .unwrap();
        }
        w.finish().unwrap();
        // The second slice, listed and keyed as starting at row 0.
        let (second, moved) = (rows(2, 3), rows(0, 3));
        rewrite_index(&prefix, |key, e| {
            if key.as_slice() == b"z" {
                e.slices[1] = crate::format::slice_codec::slice_to_proto(&moved);
            } else if *key == crate::format::slice_codec::slice_key(b"z", &second) {
                *key = crate::format::slice_codec::slice_key(b"z", &moved);
            }
        });
        let e = Checkpoint::open(&prefix).unwrap().read("z").unwrap_err();
        assert!(
            matches!(e.kind(), crate::ErrorKind::OverlappingSlices { .. }),
            "{e}"
        );
    }

    /// A slice entry that its tensor's entry does not list is named by its tensor and slice (it
    /// was "entry for tensor \"\\0z\\0\\u{1}...\" is not usable: the tensor name is not UTF-8").
    #[test]
    fn a_slice_entry_its_tensor_does_not_list_is_named() {
        use crate::base::slice::Slice;
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("o");
        let mut w = CheckpointWriter::create(&prefix, WriterOptions::default()).unwrap();
        let rows = |start, length| Slice::from_ranges(&[(start, length), (0, 2)]);
        for (start, len) in [(0, 2), (2, 3)] {
            let t = Tensor::from_f32(&[len, 2], &vec![1.0; 2 * len as usize]).unwrap();
            w.add_slice("z", &[5, 2], &rows(start, len), (&t).into())
                .unwrap();
        }
        w.finish().unwrap();
        let index = prefix.with_extension("index");
        // The entry lists row 2 as starting at row 3: the stored 2,3 is no slice of its.
        let moved = crate::format::slice_codec::slice_to_proto(&rows(3, 2));
        rewrite_index(&prefix, |key, e| {
            if key.as_slice() == b"z" {
                e.slices[1] = moved.clone();
            }
        });
        let e = Checkpoint::open(&prefix).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: entry for tensor \"z\" is not usable: the index holds a stored slice 2,3:0,2 \
                 of it that its entry does not list (it lists [0,2:0,2, 3,2:0,2])",
                index.display()
            )
        );
        // No entry for the tensor at all (renamed).
        rewrite_index(&prefix, |key, _| {
            if key.as_slice() == b"z" {
                *key = b"y".to_vec();
            }
        });
        // Opening fails: the entry of "z" is not usable because of `why`.
        let fails = |why: &str| {
            let e = Checkpoint::open(&prefix).unwrap_err().to_string();
            let said = format!("entry for tensor \"z\" is not usable: the index holds a {why}");
            assert!(e.ends_with(&said), "{e}");
        };
        fails("stored slice 0,2:0,2 of it, but no entry for the tensor");
        // An entry of the whole tensor (no slices, 40 bytes of its data file).
        rewrite_index(&prefix, |key, e| {
            if key.as_slice() == b"y" {
                *key = b"z".to_vec();
                e.slices.clear();
                e.size = 40;
            }
        });
        fails("stored slice 0,2:0,2 of it, but its entry lists no slices");
    }

    /// Two slice entries that an index places at the same offset (TensorFlow only does so for
    /// empty ones): the second is checksummed too when values are mapped, as every read does,
    /// and is not taken for the first one's bytes.
    #[test]
    fn a_mapped_slice_at_another_entrys_offset_is_checksummed() {
        use crate::{init_from_checkpoint, AssignmentMap, Device, Init, LoadOptions, Target};
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("a");
        let n = 1024u64;
        let mut w = CheckpointWriter::create(&prefix, WriterOptions::default()).unwrap();
        for row in 0..2u64 {
            let t = Tensor::from_f32(&[1, n], &vec![row as f32 + 1.0; n as usize]).unwrap();
            let slice = crate::base::slice::Slice::from_ranges(&[(row, 1), (0, n)]);
            w.add_slice("w", &[2, n], &slice, (&t).into()).unwrap();
        }
        w.finish().unwrap();
        // Row 1's entry keeps its own checksum but says it starts where row 0 does.
        let mut moved = 0;
        rewrite_index(&prefix, |_, e| {
            if e.offset == 4 * n as i64 {
                e.offset = 0;
                moved += 1;
            }
        });
        assert_eq!(moved, 1);
        for map_values in [false, true] {
            let mut store = crate::VariableStore::new();
            store
                .get_partitioned_variable("w", &[2, n], DType::F32, &[2, 1], Init::Zeros)
                .unwrap();
            let map = AssignmentMap::from([("w", Target::name("w"))]);
            init_from_checkpoint(&mut store, &prefix, &map).unwrap();
            let options = LoadOptions {
                map_values,
                map_min_bytes: Some(1),
                ..Default::default()
            };
            let e = store.initialize_with(Device::Cpu, &options).unwrap_err();
            assert!(
                matches!(e.kind(), crate::ErrorKind::TensorChecksum { .. }),
                "map_values {map_values}: {e}"
            );
            assert!(store.value("w/part_1").is_none());
        }
    }
}
