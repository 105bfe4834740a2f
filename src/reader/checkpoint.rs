//! The reader's public face: open a checkpoint (V2 or V1), list its tensors, read a tensor or any
//! slice of it (assembled from stored slices when it was saved partitioned), verify every checksum.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::base::dtype::DType;
use crate::base::error::{Error, ErrorKind, Result};
use crate::base::slice::{self, num_elements, Run, Slice};
use crate::base::tensor::{Tensor, TensorData};
use crate::format::bundle::Bundle;
use crate::format::v1::{V1Set, V1Values};
use crate::reader::resolve::{self, Resolved};

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
    bytes: crate::format::bundle::EntryBytes,
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

/// What [`Checkpoint::verify_all`] checked and found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Tensors (or stored slices) whose checksums were checked.
    pub tensors: usize,
    /// Bytes of tensor data checked.
    pub bytes: u64,
    /// Table blocks checked (index blocks for V2, every block for V1).
    pub blocks: usize,
    /// Every problem found, in file order.
    pub problems: Vec<Error>,
}

enum Inner {
    V2(Bundle),
    V1(V1Set),
}

/// An open TensorFlow checkpoint.
///
/// Opening parses and validates the index (every block checksum, every entry's dtype, shape and size);
/// data shards are memory-mapped on first use and each tensor's checksum is verified when it is read.
///
/// # Safety of the mapping
///
/// Files are memory-mapped: do not modify or truncate a checkpoint's files in place while a
/// `Checkpoint` is alive (deleting or renaming over them is fine). A file truncated under a live
/// mapping can kill the process with `SIGBUS`; bytes changed in place fail the checksums. TensorFlow
/// never rewrites a finished checkpoint in place.
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
    inner: Inner,
    infos: Vec<TensorInfo>,
    by_name: HashMap<String, usize, crate::base::fxhash::FxBuildHasher>,
    /// For each listed tensor, the index of its V2 entry (`usize::MAX` for V1), so that reading
    /// needs no second search.
    entry_index: Vec<usize>,
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

/// Where assembled elements go.
pub(crate) enum Out<'o> {
    Bytes(&'o mut [u8]),
    Strings(&'o mut [Vec<u8>]),
}

impl Checkpoint {
    /// Opens a checkpoint: a directory with a `checkpoint` state file (its newest checkpoint), a
    /// prefix (`PREFIX.index` for V2, else a V1 file or glob), or — an extension over TensorFlow — the
    /// path of a V2 `.index` or data file.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        match resolve::resolve(path.as_ref())? {
            Resolved::V2 { prefix } => Self::from_bundle(Bundle::open(&prefix)?),
            Resolved::V1 { prefix, files } => Self::from_v1(prefix, V1Set::open(&files)?),
        }
    }

    fn from_bundle(b: Bundle) -> Result<Checkpoint> {
        // A partitioned tensor is listed once: skip the keys of its slice entries (as TF's
        // `BuildV2VarMaps` does).
        let slice_keys: HashSet<Vec<u8>> = b
            .index
            .entries
            .iter()
            .flat_map(|e| e.slices.iter().map(|s| s.key(&e.key)))
            .collect();
        let infos: Vec<(TensorInfo, usize)> = b
            .index
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !slice_keys.contains(&e.key))
            .map(|(i, e)| {
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
                Ok((info, i))
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
                (info, usize::MAX)
            })
            .collect();
        Ok(Self::with_infos(prefix, Inner::V1(set), infos))
    }

    /// `infos` come with the index of their V2 entry (`usize::MAX` if none).
    fn with_infos(
        prefix: PathBuf,
        inner: Inner,
        mut infos: Vec<(TensorInfo, usize)>,
    ) -> Checkpoint {
        infos.sort_by(|a, b| a.0.name.as_bytes().cmp(b.0.name.as_bytes()));
        let (infos, entry_index): (Vec<TensorInfo>, Vec<usize>) = infos.into_iter().unzip();
        let by_name = infos
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Checkpoint {
            prefix,
            inner,
            infos,
            entry_index,
            by_name,
        }
    }

    /// The resolved checkpoint prefix (for V1, the file path or glob).
    pub fn prefix(&self) -> &Path {
        &self.prefix
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
        match self.by_name.get(name) {
            Some(&i) => Ok(&self.infos[i]),
            None => Err(ErrorKind::TensorNotFound {
                ckpt: self.prefix.clone(),
                tensor: name.to_string(),
                suggestions: crate::base::suggest::close_names(
                    name,
                    self.infos.iter().map(|t| t.name.as_str()),
                ),
            }
            .into()),
        }
    }

    /// Whether the checkpoint's index (V2) or files (V1) are unchanged on disk since it was opened
    /// (same length and modification time), so that what it says still describes them.
    pub fn is_current(&self) -> bool {
        match &self.inner {
            Inner::V2(b) => crate::base::mmap::FileStamp::of(&b.index_path) == Some(b.index_stamp),
            Inner::V1(set) => set.is_current(),
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
        let info = self.tensor(name)?;
        check_slice(info, slice)?;
        let shape = slice.shape(&info.shape);
        let n = num_elements(&shape).unwrap_or(0);
        self.check_backing(info, slice, n)?;
        let n = n as usize;
        let data = match info.dtype.size() {
            Some(size) => {
                let mut buf = crate::base::mmap::alloc_zeroed(n * size, &info.name)?;
                self.assemble(info, slice, Out::Bytes(&mut buf))?;
                TensorData::Bytes(buf.into())
            }
            None => {
                let mut strings = vec![Vec::new(); n];
                self.assemble(info, slice, Out::Strings(&mut strings))?;
                TensorData::Strings(strings)
            }
        };
        Ok(Tensor {
            dtype: info.dtype,
            shape,
            data,
        })
    }

    /// Before allocating the `n` elements of `req`, checks that the stored bytes behind it can hold
    /// that many (every stored element takes at least one byte), so that a damaged or hostile index
    /// cannot make us allocate more memory than the checkpoint's files hold. Only the stored slices
    /// that intersect `req` are consulted.
    fn check_backing(&self, info: &TensorInfo, req: &Slice, n: u64) -> Result<()> {
        let stored: u64 = match &self.inner {
            Inner::V2(b) => {
                let stored = if info.slices.is_empty() {
                    vec![Slice::full(info.shape.len())]
                } else {
                    info.slices.clone()
                };
                let want = req.ranges(&info.shape);
                let mut sum = 0u64;
                for s in stored
                    .iter()
                    .filter(|s| slice::intersect(&s.ranges(&info.shape), &want).is_some())
                {
                    let e = self.v2_entry(b, info, s)?;
                    b.locate(e)?;
                    sum = sum.saturating_add(e.size);
                }
                sum
            }
            Inner::V1(set) => set.total_len(),
        };
        if n > stored {
            return Err(ErrorKind::BadEntry {
                path: self.prefix.clone(),
                tensor: info.name.clone(),
                reason: format!("claims {n} elements but only {stored} bytes back it"),
            }
            .into());
        }
        Ok(())
    }

    /// Asks the kernel to start reading the stored bytes of `name` (all its stored slices) into the
    /// page cache; a hint that never fails (the read reports any problem).
    pub(crate) fn prefetch(&self, name: &str) {
        let (Ok(info), Inner::V2(b)) = (self.tensor(name), &self.inner) else {
            return;
        };
        let stored = if info.slices.is_empty() {
            vec![Slice::full(info.shape.len())]
        } else {
            info.slices.clone()
        };
        for s in &stored {
            if let Ok(e) = self.v2_entry(b, info, s) {
                b.prefetch(e);
            }
        }
    }

    /// Where the tensor's data starts (shard or file, offset): sorting reads by it reads the files in
    /// order.
    pub(crate) fn data_position(&self, name: &str) -> (u32, u64) {
        let Ok(info) = self.tensor(name) else {
            return (u32::MAX, 0);
        };
        match &self.inner {
            Inner::V2(b) => {
                let first = info
                    .slices
                    .first()
                    .cloned()
                    .unwrap_or_else(|| Slice::full(info.shape.len()));
                self.v2_entry(b, info, &first)
                    .map_or((u32::MAX, 0), |e| (e.shard, e.offset))
            }
            Inner::V1(set) => (
                set.tensors
                    .get(name)
                    .and_then(|t| t.slices.first())
                    .map_or(0, |s| s.1 as u32),
                0,
            ),
        }
    }

    /// A zero-copy, read-only view of a whole tensor's bytes, backed directly by the memory mapping
    /// of its data shard: no allocation, no copy (the bytes are checksummed once, here). For V2
    /// tensors saved whole, in a little-endian checkpoint; others answer with
    /// [`ErrorKind::Unsupported`] (use [`read`](Self::read)). The view keeps the shard mapped.
    pub fn view(&self, name: &str) -> Result<TensorView> {
        let info = self.tensor(name)?;
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
        let e = self.v2_entry(b, info, &Slice::full(info.shape.len()))?;
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
        Ok(n as usize * size)
    }

    /// Reads a whole fixed-size tensor into `dst` (exactly [`byte_len`](Self::byte_len) bytes,
    /// little-endian, row-major).
    pub fn read_into(&self, name: &str, dst: &mut [u8]) -> Result<()> {
        let info = self.tensor(name)?;
        self.read_slice_into(name, &Slice::full(info.shape.len()), dst)
    }

    /// Reads a slice of a fixed-size tensor into `dst`.
    pub fn read_slice_into(&self, name: &str, slice: &Slice, dst: &mut [u8]) -> Result<()> {
        let info = self.tensor(name)?;
        let size = fixed_size(info)?;
        check_slice(info, slice)?;
        let want = num_elements(&slice.shape(&info.shape)).unwrap_or(0) * size as u64;
        if want != dst.len() as u64 {
            return Err(ErrorKind::BufferSize {
                tensor: info.name.clone(),
                expected: want,
                found: dst.len() as u64,
            }
            .into());
        }
        self.assemble(info, slice, Out::Bytes(dst))
    }

    /// Spec E.5 step 5: pick the stored slices that intersect `req`, require that they cover it, and
    /// copy each intersection into `out`.
    fn assemble(&self, info: &TensorInfo, req: &Slice, out: Out<'_>) -> Result<()> {
        self.assemble_many(info, &mut [(req, out)]).map(drop)
    }

    /// Fills several requested boxes of one tensor, reading and verifying each stored slice once
    /// however many requests it feeds (re-partitioning reads every stored byte once). Returns the
    /// number of stored slices read.
    pub(crate) fn assemble_many(
        &self,
        info: &TensorInfo,
        reqs: &mut [(&Slice, Out<'_>)],
    ) -> Result<usize> {
        // The common case first: one request for the whole of a tensor saved whole.
        if let ([(req, Out::Bytes(dst))], Inner::V2(b)) = (&mut *reqs, &self.inner) {
            if info.slices.is_empty()
                && req.ranges(&info.shape) == Slice::full(info.shape.len()).ranges(&info.shape)
            {
                let e = self.v2_entry(b, info, req)?;
                b.read_fixed_into(e, dst)?;
                return Ok(1);
            }
        }
        let requests: Vec<&Slice> = reqs.iter().map(|(r, _)| *r).collect();
        let (stored, ranges, wants) = coverage(info, &requests)?;
        let mut read = 0;
        for (s, have) in stored.iter().zip(&ranges) {
            let users: Vec<(usize, Vec<(u64, u64)>)> = wants
                .iter()
                .enumerate()
                .filter_map(|(i, want)| slice::intersect(have, want).map(|inter| (i, inter)))
                .collect();
            if users.is_empty() {
                continue;
            }
            self.copy_stored(info, s, have, &wants, &users, reqs)?;
            read += 1;
        }
        Ok(read)
    }

    /// For `initialize`: box `want` of `info` as a copy-on-write mapping of the stored entry that
    /// holds exactly that box, CRC-checked, when that entry has at least `min` bytes; `None` where
    /// the value must be copied (V1 files, big-endian bundles, strings, no stored slice equal to
    /// the box, a small entry, or a mapping the system refused).
    ///
    /// The caller has run [`coverage`] over the tensor's requests (once per tensor, not per value).
    /// `verified` lists the entries (shard, offset) already checksummed by earlier calls: a second
    /// value of the same entry is mapped without checksumming it again. Returns the value and
    /// whether this call read (checksummed) the entry.
    pub(crate) fn map_value(
        &self,
        info: &TensorInfo,
        want: &Slice,
        min: u64,
        verified: &mut Vec<(u32, u64)>,
    ) -> Result<Option<(crate::base::tensor::Bytes, bool)>> {
        let Inner::V2(b) = &self.inner else {
            return Ok(None);
        };
        if info.dtype.size().is_none() || (b.index.big_endian && info.dtype.swap_unit() > 1) {
            return Ok(None);
        }
        if want.check(&info.shape).is_err() {
            return Ok(None);
        }
        let want_r = want.ranges(&info.shape);
        let stored = if info.slices.is_empty() {
            Slice::full(info.shape.len())
        } else {
            match info.slices.iter().find(|s| s.ranges(&info.shape) == want_r) {
                Some(s) => s.clone(),
                None => return Ok(None),
            }
        };
        if stored.ranges(&info.shape) != want_r {
            return Ok(None);
        }
        let e = self.v2_entry(b, info, &stored)?;
        // Small values are cheaper to copy; a value whose offset is not a multiple of its element
        // size would be misaligned in memory (TensorFlow does not pad entries), so it is copied.
        let align = info.dtype.size().unwrap_or(1) as u64;
        if e.size < min.max(1) || e.offset % align != 0 {
            return Ok(None);
        }
        let key = (e.shard, e.offset);
        let seen = verified.contains(&key);
        let mapped = b.map_entry(e, !seen)?;
        if mapped.is_some() && !seen {
            verified.push(key);
        }
        Ok(mapped.map(|m| (m, !seen)))
    }

    /// For the GPU path: the stored slices of a fixed-size tensor of a little-endian V2 bundle,
    /// each with its box, its shard mapping, its byte range there (checked against the shard's
    /// length) and its entry's checksum; `None` where the bytes need conversion on the host first
    /// (V1 files, big-endian bundles, strings).
    #[cfg(any(test, feature = "cuda"))]
    pub(crate) fn device_sources(&self, info: &TensorInfo) -> Result<Option<Vec<DeviceSource>>> {
        let Inner::V2(b) = &self.inner else {
            return Ok(None);
        };
        if info.dtype.size().is_none() || (b.index.big_endian && info.dtype.swap_unit() > 1) {
            return Ok(None);
        }
        let stored: Vec<Slice> = if info.slices.is_empty() {
            vec![Slice::full(info.shape.len())]
        } else {
            info.slices.clone()
        };
        let mut out = Vec::with_capacity(stored.len());
        for s in stored {
            let e = self.v2_entry(b, info, &s)?;
            let (map, range) = b.locate(e)?;
            out.push(DeviceSource {
                have: s.ranges(&info.shape),
                map,
                range,
                crc: e.crc,
                path: b.shard_path(e.shard),
                entry: crate::format::index::key_name(&e.key),
                offset: e.offset,
            });
        }
        Ok(Some(out))
    }
}

/// One stored slice as the GPU path reads it (see [`Checkpoint::device_sources`]).
#[cfg(any(test, feature = "cuda"))]
pub(crate) struct DeviceSource {
    pub have: Vec<(u64, u64)>,
    pub map: std::sync::Arc<crate::base::mmap::MappedFile>,
    pub range: std::ops::Range<usize>,
    pub crc: u32,
    pub path: PathBuf,
    pub entry: String,
    pub offset: u64,
}

/// The stored boxes of `info` (checked not to overlap) and the requested boxes, after checking
/// that the stored slices cover every request; nothing is read for a request that must fail.
#[allow(clippy::type_complexity)]
pub(crate) fn coverage(
    info: &TensorInfo,
    requests: &[&Slice],
) -> Result<(Vec<Slice>, Vec<Vec<(u64, u64)>>, Vec<Vec<(u64, u64)>>)> {
    {
        let shape = &info.shape;
        let stored: Vec<Slice> = if info.slices.is_empty() {
            vec![Slice::full(shape.len())]
        } else {
            info.slices.clone()
        };
        let ranges: Vec<Vec<(u64, u64)>> = stored.iter().map(|s| s.ranges(shape)).collect();
        check_overlaps(info, &stored, &ranges)?;
        let wants: Vec<Vec<(u64, u64)>> = requests.iter().map(|r| r.ranges(shape)).collect();
        for (i, want) in wants.iter().enumerate() {
            let want_n = num_elements(&slice_lengths(want)).unwrap_or(0);
            let covered: u64 = ranges
                .iter()
                .filter_map(|have| slice::intersect(have, want))
                .map(|inter| num_elements(&slice_lengths(&inter)).unwrap_or(0))
                .sum();
            if covered != want_n {
                return Err(ErrorKind::InsufficientSlices {
                    tensor: info.name.clone(),
                    requested: requests[i].to_string(),
                    stored: stored
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
                .into());
            }
        }
        Ok((stored, ranges, wants))
    }
}

impl Checkpoint {
    /// Reads stored slice `s` (box `have`) once and copies its intersection with each user request
    /// (`(request index, intersection)`) into that request's output.
    fn copy_stored(
        &self,
        info: &TensorInfo,
        s: &Slice,
        have: &[(u64, u64)],
        wants: &[Vec<(u64, u64)>],
        users: &[(usize, Vec<(u64, u64)>)],
        reqs: &mut [(&Slice, Out<'_>)],
    ) -> Result<()> {
        let size = info.dtype.size().unwrap_or(1);
        let source = match &self.inner {
            Inner::V2(b) => {
                let e = self.v2_entry(b, info, s)?;
                if info.dtype.size().is_none() {
                    Source::Strings(b.read_strings(e)?)
                } else if b.index.big_endian && info.dtype.swap_unit() > 1 {
                    // Swapped into an owned copy first, then copied.
                    Source::Entry(b.fixed_bytes(e)?)
                } else {
                    // Every user's part copied straight from the mapping, checksum in the same pass.
                    let mut used = vec![false; reqs.len()];
                    users.iter().for_each(|(i, _)| used[*i] = true);
                    let dsts = reqs
                        .iter_mut()
                        .zip(wants)
                        .zip(used)
                        .filter_map(|(((_, out), want), used)| match out {
                            Out::Bytes(buf) if used => Some(crate::load::exec::Dst { buf, want }),
                            _ => None,
                        })
                        .collect();
                    return b.copy_verify(e, have, dsts);
                }
            }
            Inner::V1(set) => {
                let t = &set.tensors[&info.name];
                let file = t
                    .slices
                    .iter()
                    .find(|(x, _)| x == s)
                    .map(|(_, f)| *f)
                    .unwrap_or_default();
                match set.read_slice(&info.name, t, s, file)? {
                    V1Values::Bytes(b) => Source::Owned(b),
                    V1Values::Strings(v) => Source::Strings(v),
                }
            }
        };
        for (i, inter) in users {
            match (&source, &mut reqs[*i].1) {
                (Source::Entry(b), Out::Bytes(dst)) => {
                    copy_runs(have, &wants[*i], inter, b.as_slice(), dst, size)
                }
                (Source::Owned(b), Out::Bytes(dst)) => {
                    copy_runs(have, &wants[*i], inter, b, dst, size)
                }
                (Source::Strings(src), Out::Strings(dst)) => {
                    copy_string_runs(have, &wants[*i], inter, src, dst)
                }
                _ => {
                    return Err(ErrorKind::BadEntry {
                        path: self.prefix.clone(),
                        tensor: info.name.clone(),
                        reason: "stored values do not match the tensor's dtype".into(),
                    }
                    .into())
                }
            }
        }
        Ok(())
    }

    /// The data entry of stored slice `s`: the tensor's own entry, or its slice entry (checked
    /// against the full entry's dtype and the slice's shape).
    fn v2_entry<'b>(
        &self,
        b: &'b Bundle,
        info: &TensorInfo,
        s: &Slice,
    ) -> Result<&'b crate::format::index::Entry> {
        let bad = |reason: String| -> Error {
            ErrorKind::BadEntry {
                path: b.index_path.clone(),
                tensor: info.name.clone(),
                reason,
            }
            .into()
        };
        if info.slices.is_empty() {
            // `info` is one of `self.infos`: its position gives its entry without a search.
            let pos = (info as *const TensorInfo as usize)
                .wrapping_sub(self.infos.as_ptr() as usize)
                / std::mem::size_of::<TensorInfo>();
            let entry = self
                .entry_index
                .get(pos)
                .and_then(|&i| b.index.entries.get(i))
                .filter(|e| e.key == info.name.as_bytes())
                .or_else(|| b.index.get(info.name.as_bytes()));
            return entry
                .filter(|e| e.slices.is_empty() && e.dtype == info.dtype && e.shape == info.shape)
                .ok_or_else(|| bad("the entry does not match the listing".into()));
        }
        let e = b
            .index
            .get(&s.key(info.name.as_bytes()))
            .ok_or_else(|| bad(format!("the entry of stored slice {s} is missing")))?;
        let want_shape = s.shape(&info.shape);
        if e.dtype != info.dtype || e.shape != want_shape || !e.slices.is_empty() {
            return Err(bad(format!(
                "stored slice {s} is {} {:?}, expected {} {:?}",
                e.dtype, e.shape, info.dtype, want_shape
            )));
        }
        Ok(e)
    }

    /// Checks every checksum (and, for V1, every record) and stops at the first problem.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = self.verify_all();
        if report.problems.is_empty() {
            Ok(report)
        } else {
            Err(report.problems.swap_remove(0))
        }
    }

    /// Checks every block and tensor checksum, in parallel, and reports every problem found.
    pub fn verify_all(&self) -> VerifyReport {
        match &self.inner {
            Inner::V2(b) => {
                let data: Vec<&crate::format::index::Entry> = b
                    .index
                    .entries
                    .iter()
                    .filter(|e| e.slices.is_empty())
                    .collect();
                let mut problems: Vec<((u32, u64), Error)> = data
                    .par_iter()
                    .filter_map(|e| {
                        b.verify_entry(e)
                            .err()
                            .map(|err| ((e.shard, e.offset), err))
                    })
                    .collect();
                // Structure of partitioned tensors: slice entries present and consistent, no overlaps.
                for info in self.infos.iter().filter(|i| i.is_partitioned()) {
                    let ranges: Vec<_> =
                        info.slices.iter().map(|s| s.ranges(&info.shape)).collect();
                    let check = check_overlaps(info, &info.slices, &ranges).and_then(|()| {
                        info.slices
                            .iter()
                            .try_for_each(|s| self.v2_entry(b, info, s).map(drop))
                    });
                    if let Err(e) = check {
                        problems.push(((u32::MAX, 0), e));
                    }
                }
                problems.sort_by_key(|p| p.0);
                VerifyReport {
                    tensors: data.len(),
                    bytes: data.iter().map(|e| e.size).sum(),
                    blocks: b.index.blocks + 1,
                    problems: problems.into_iter().map(|p| p.1).collect(),
                }
            }
            Inner::V1(set) => {
                let (blocks, bytes, problems) = match set.verify() {
                    Ok((blocks, bytes)) => (blocks, bytes, vec![]),
                    Err(e) => (0, 0, vec![e]),
                };
                VerifyReport {
                    tensors: set.tensors.values().map(|t| t.slices.len()).sum(),
                    bytes,
                    blocks,
                    problems,
                }
            }
        }
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

fn slice_lengths(r: &[(u64, u64)]) -> Vec<u64> {
    r.iter().map(|x| x.1).collect()
}

fn check_overlaps(info: &TensorInfo, stored: &[Slice], ranges: &[Vec<(u64, u64)>]) -> Result<()> {
    for i in 0..ranges.len() {
        for j in i + 1..ranges.len() {
            if slice::intersect(&ranges[i], &ranges[j]).is_some() {
                return Err(ErrorKind::OverlappingSlices {
                    tensor: info.name.clone(),
                    first: stored[i].to_string(),
                    second: stored[j].to_string(),
                }
                .into());
            }
        }
    }
    Ok(())
}

fn copy_runs(
    have: &[(u64, u64)],
    want: &[(u64, u64)],
    inter: &[(u64, u64)],
    src: &[u8],
    dst: &mut [u8],
    size: usize,
) {
    slice::for_each_run(
        have,
        want,
        inter,
        |Run {
             src: s,
             dst: d,
             len,
         }| {
            let (s, d, n) = (s as usize * size, d as usize * size, len as usize * size);
            dst[d..d + n].copy_from_slice(&src[s..s + n]);
        },
    );
}

fn copy_string_runs(
    have: &[(u64, u64)],
    want: &[(u64, u64)],
    inter: &[(u64, u64)],
    src: &[Vec<u8>],
    dst: &mut [Vec<u8>],
) {
    slice::for_each_run(
        have,
        want,
        inter,
        |Run {
             src: s,
             dst: d,
             len,
         }| {
            let (s, d, n) = (s as usize, d as usize, len as usize);
            dst[d..d + n].clone_from_slice(&src[s..s + n]);
        },
    );
}

/// The verified elements of one stored slice.
enum Source {
    Entry(crate::format::bundle::EntryBytes),
    Owned(Vec<u8>),
    Strings(Vec<Vec<u8>>),
}
