//! A V2 tensor bundle on disk: the parsed index and lazily mapped data shards. Reading an entry checks
//! its range against the shard's length and its bytes against the stored CRC32C.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::base::copy::{copy_verify, Dst};
use crate::base::crc;
use crate::base::dtype::DType;
use crate::base::error::{Error, ErrorKind, Result};
use crate::base::mmap::MappedFile;
use crate::base::slice::Region;
use crate::format::index::{key_name, BundleIndex, Entry};
use crate::format::strings::{self, StringError};

/// `PREFIX.data-%05d-of-%05d`.
pub(crate) fn data_path(prefix: &Path, shard: u32, num_shards: u32) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(format!(".data-{shard:05}-of-{num_shards:05}"));
    PathBuf::from(s)
}

/// `PREFIX.index`.
pub(crate) fn index_path(prefix: &Path) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".index");
    PathBuf::from(s)
}

pub(crate) struct Bundle {
    pub prefix: PathBuf,
    pub index_path: PathBuf,
    pub index: BundleIndex,
    source: Source,
}

/// Where the data shards are.
enum Source {
    /// Local files, mapped.
    Local {
        /// The index file when it was read.
        index_stamp: crate::base::mmap::FileStamp,
        /// The data shards the entries name, mapped when the index was read (`None`: it could
        /// not be then), so that the checkpoint keeps reading the files it was opened on when a
        /// save to the same prefix renames new ones over them. Empty past [`EAGER_SHARDS`].
        opened: HashMap<u32, Option<Arc<MappedFile>>>,
        /// Data shards used so far, by shard id (only the ids entries use are ever opened): the
        /// ones [`unchanged`](Bundle::unchanged) asks.
        shards: Mutex<HashMap<u32, Arc<MappedFile>>>,
    },
    /// Objects on object storage, read in ranges.
    #[cfg(feature = "remote")]
    Remote(crate::remote::RemoteBundle),
}

/// The most data files a checkpoint maps when it is opened (see [`Bundle::open`]).
const EAGER_SHARDS: usize = 1024;

impl Bundle {
    pub(crate) fn open(prefix: &Path) -> Result<Bundle> {
        let index_path = index_path(prefix);
        let file = MappedFile::open(&index_path)?;
        let index = BundleIndex::parse(&index_path, file.bytes());
        file.intact()?;
        let index = index?;
        // Every shard an entry names, mapped now (no page is read). One that cannot be mapped
        // now is tried again at its first use, where the error names the tensor that needed it.
        // Past `EAGER_SHARDS` data files (a damaged or hostile index: TensorFlow saves one per
        // device), none is: each is mapped at its first use, as the mappings of a process are
        // counted (`vm.max_map_count`). Nor on Windows, where a mapped file cannot be replaced
        // (the reason to map them now) and blocks a save to the same prefix.
        let mut shard_ids: Vec<u32> = index.entries.iter().map(|e| e.shard).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut opened = HashMap::new();
        if cfg!(unix) && shard_ids.len() <= EAGER_SHARDS {
            for id in shard_ids {
                let path = data_path(prefix, id, index.num_shards);
                let map = crate::base::mmap::open_regular(&path)
                    .and_then(|f| MappedFile::from_file(&path, f));
                opened.insert(id, map.ok().map(Arc::new));
            }
        }
        Ok(Bundle {
            prefix: prefix.to_path_buf(),
            index_path,
            index,
            source: Source::Local {
                index_stamp: file.stamp(),
                opened,
                shards: Mutex::new(HashMap::new()),
            },
        })
    }

    /// A bundle on object storage (`prefix` and `index_path` are URLs).
    #[cfg(feature = "remote")]
    pub(crate) fn remote(
        prefix: PathBuf,
        index_path: PathBuf,
        index: BundleIndex,
        remote: crate::remote::RemoteBundle,
    ) -> Bundle {
        Bundle {
            prefix,
            index_path,
            index,
            source: Source::Remote(remote),
        }
    }

    /// The remote side, if the bundle is on object storage.
    #[cfg(feature = "remote")]
    pub(crate) fn remote_source(&self) -> Option<&crate::remote::RemoteBundle> {
        match &self.source {
            Source::Remote(r) => Some(r),
            Source::Local { .. } => None,
        }
    }

    /// Whether the index is unchanged since it was read (local: same length, times and inode;
    /// remote: same size and ETag), and (local) each data file it names is still the file mapped
    /// when it was read (or still absent).
    pub(crate) fn is_current(&self) -> bool {
        use crate::base::mmap::FileStamp;
        match &self.source {
            Source::Local {
                index_stamp,
                opened,
                ..
            } => {
                FileStamp::of(&self.index_path) == Some(*index_stamp)
                    && opened.iter().all(|(&id, map)| {
                        FileStamp::of(&self.shard_path(id)) == map.as_ref().map(|m| m.stamp())
                    })
            }
            #[cfg(feature = "remote")]
            Source::Remote(r) => r.is_current(),
        }
    }

    /// `Ok` unless a data shard mapped so far (of `only`, where given: the shards a read used) has
    /// been changed in place since it was mapped (what was read from it may mix two versions).
    /// The index is not asked: it was read whole when the checkpoint was opened, and TensorFlow
    /// itself rewrites a merged save's index in place. Local files only.
    pub(crate) fn unchanged(&self, only: Option<&[u32]>) -> Result<()> {
        match &self.source {
            Source::Local { shards, .. } => {
                let shards = shards.lock().unwrap_or_else(|p| p.into_inner());
                match only {
                    Some(ids) => ids
                        .iter()
                        .filter_map(|id| shards.get(id))
                        .try_for_each(|map| map.unchanged()),
                    None => shards.values().try_for_each(|map| map.unchanged()),
                }
            }
            // An object replaced is caught by each read (its size and ETag).
            #[cfg(feature = "remote")]
            Source::Remote(_) => Ok(()),
        }
    }

    /// Checks that `e`'s bytes lie inside its shard (opening or asking for the shard).
    pub(crate) fn check_bounds(&self, e: &Entry) -> Result<()> {
        match &self.source {
            Source::Local { .. } => self.locate(e).map(drop),
            #[cfg(feature = "remote")]
            Source::Remote(r) => r.check_bounds(self, e).map(drop),
        }
    }

    /// Calls `f` with the bytes of entry `e` (mapped, or fetched whole from object storage).
    fn with_bytes<T>(&self, e: &Entry, f: impl FnOnce(&[u8]) -> T) -> Result<T> {
        match &self.source {
            Source::Local { .. } => {
                let (map, range) = self.locate(e)?;
                let out = f(&map.bytes()[range]);
                map.intact()?;
                Ok(out)
            }
            #[cfg(feature = "remote")]
            Source::Remote(r) => Ok(f(&r.read_all(self, e)?)),
        }
    }

    pub(crate) fn shard_path(&self, shard: u32) -> PathBuf {
        data_path(&self.prefix, shard, self.index.num_shards)
    }

    /// Where the GPU path reads entry `e`: its shard's mapping and the entry's byte range in it,
    /// or (on object storage) the shard object and the range to fetch.
    #[cfg(any(test, feature = "cuda"))]
    pub(crate) fn device_bytes(
        &self,
        e: &Entry,
    ) -> Result<(crate::reader::stored::SourceBytes, std::ops::Range<usize>)> {
        use crate::reader::stored::SourceBytes;
        match &self.source {
            Source::Local { .. } => {
                let (map, range) = self.locate(e)?;
                Ok((SourceBytes::Mapped(map), range))
            }
            #[cfg(feature = "remote")]
            Source::Remote(r) => {
                let shard = r.gpu_shard(self, e)?;
                let range = e.offset as usize..(e.offset + e.size) as usize;
                Ok((SourceBytes::Remote(Arc::new(shard)), range))
            }
        }
    }

    /// The mapped data shard of `e` (mapped when the index was read, or now if it could not be
    /// then).
    fn shard(&self, e: &Entry) -> Result<Arc<MappedFile>> {
        let (opened, shards) = match &self.source {
            Source::Local { opened, shards, .. } => (opened, shards),
            #[cfg(feature = "remote")]
            Source::Remote(_) => {
                return Err(ErrorKind::Remote {
                    url: self.shard_path(e.shard).to_string_lossy().into_owned(),
                    range: None,
                    reason: "a data shard on object storage has no local mapping".into(),
                }
                .into())
            }
        };
        let mut shards = shards.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = shards.get(&e.shard) {
            return Ok(m.clone());
        }
        let map = match opened.get(&e.shard) {
            Some(Some(map)) => map.clone(),
            _ => {
                let path = self.shard_path(e.shard);
                let map = crate::base::mmap::open_regular(&path)
                    .and_then(|f| MappedFile::from_file(&path, f))
                    .map_err(|source| ErrorKind::MissingShard {
                        path: path.clone(),
                        shard: e.shard,
                        num_shards: self.index.num_shards,
                        tensor: key_name(&e.key),
                        source,
                    })?;
                Arc::new(map)
            }
        };
        map.sequential();
        shards.insert(e.shard, map.clone());
        Ok(map)
    }

    /// The shard of `e` and the byte range of `e` in it, checked against the shard's length.
    pub(crate) fn locate(&self, e: &Entry) -> Result<(Arc<MappedFile>, std::ops::Range<usize>)> {
        let map = self.shard(e)?;
        let len = map.len();
        // offset + size cannot overflow: checked when the index was parsed.
        if e.offset + e.size > len {
            return Err(ErrorKind::OutOfBounds {
                path: self.shard_path(e.shard),
                tensor: key_name(&e.key),
                offset: e.offset,
                size: e.size,
                len,
            }
            .into());
        }
        Ok((map, e.offset as usize..(e.offset + e.size) as usize))
    }

    fn checksum_error(&self, e: &Entry, what: &'static str, expected: u32, found: u32) -> Error {
        ErrorKind::TensorChecksum {
            path: self.shard_path(e.shard),
            tensor: key_name(&e.key),
            offset: e.offset,
            size: e.size,
            what,
            expected,
            found,
        }
        .into()
    }

    /// Reads a fixed-size entry into `dst` (exactly `e.size` bytes), verifying its CRC in the same
    /// pass, and converts to little-endian if the producer was big-endian.
    pub(crate) fn read_fixed_into(&self, e: &Entry, dst: &mut [u8]) -> Result<()> {
        debug_assert_eq!(dst.len() as u64, e.size);
        let whole = Region::whole(&e.shape);
        self.copy_verify(
            e,
            &whole,
            vec![Dst {
                buf: dst,
                want: &whole,
                held: crate::base::copy::Held::AsStored,
            }],
        )?;
        if self.index.big_endian {
            swap_bytes(dst, e.dtype.swap_unit());
        }
        Ok(())
    }

    /// Starts reading an entry's bytes into the page cache (a hint; errors surface on the read).
    /// Small entries are left to the kernel's sequential readahead (one system call per tiny tensor
    /// would cost more than it saves).
    pub(crate) fn prefetch(&self, e: &Entry) {
        if e.size < 256 << 10 || !matches!(self.source, Source::Local { .. }) {
            return;
        }
        if let Ok((map, range)) = self.locate(e) {
            map.will_need(range);
        }
    }

    /// After `e`'s bytes were read: its pages leave the shard's mapping, staying in the page cache
    /// ([`MappedFile::done_with`], which leaves small ones alone). Local shards only.
    pub(crate) fn done_with(&self, e: &Entry) {
        if !matches!(self.source, Source::Local { .. }) {
            return;
        }
        if let Ok((map, range)) = self.locate(e) {
            map.done_with(range);
        }
    }

    /// Copies the parts of a fixed-size entry (box `have` of its tensor) that each destination needs,
    /// verifying its checksum in the same pass (`base::copy`). Bytes are copied as stored (callers
    /// swap big-endian data afterwards or take the owned path).
    pub(crate) fn copy_verify(&self, e: &Entry, have: &Region, dsts: Vec<Dst<'_>>) -> Result<()> {
        let size = e.dtype.size().unwrap_or(1);
        let found = match &self.source {
            Source::Local { .. } => {
                let (map, range) = self.locate(e)?;
                let found = copy_verify(&map.bytes()[range], have, size, dsts);
                map.intact()?;
                found
            }
            #[cfg(feature = "remote")]
            Source::Remote(r) => r.copy_verify(self, e, have, size, dsts)?,
        };
        if found != e.crc {
            return Err(self.checksum_error(e, "checksum", e.crc, found));
        }
        Ok(())
    }

    /// A little-endian fixed-size entry as a private copy-on-write mapping, CRC-checked through that
    /// very mapping (unless `verify` is false: the caller checked this entry already); `None` when
    /// the system refuses the mapping (the caller copies instead).
    pub(crate) fn map_entry(
        &self,
        e: &Entry,
        verify: bool,
    ) -> Result<Option<crate::base::tensor::Bytes>> {
        if !matches!(self.source, Source::Local { .. }) {
            return Ok(None);
        }
        let (map, range) = self.locate(e)?;
        let Ok(private) = map.map_private(range) else {
            return Ok(None);
        };
        if verify {
            let found = crc::crc32c(private.as_slice());
            if private.faulted() {
                return Err(ErrorKind::Truncated {
                    path: self.shard_path(e.shard),
                }
                .into());
            }
            if found != e.crc {
                return Err(self.checksum_error(e, "checksum", e.crc, found));
            }
        }
        Ok(Some(crate::base::tensor::Bytes::mapped(private)))
    }

    /// The verified bytes of a fixed-size entry, little-endian: borrowed from the mapping when no
    /// conversion is needed.
    pub(crate) fn fixed_bytes(&self, e: &Entry) -> Result<EntryBytes> {
        let local = matches!(self.source, Source::Local { .. });
        if !local || (self.index.big_endian && e.dtype.swap_unit() > 1) {
            self.check_bounds(e)?; // bounds first: the allocation below is then backed by the file
            let mut v = crate::base::mmap::alloc_zeroed(e.size as usize, &key_name(&e.key))?;
            self.read_fixed_into(e, &mut v)?;
            return Ok(EntryBytes::Owned(v));
        }
        let (map, range) = self.locate(e)?;
        let found = crc::crc32c(&map.bytes()[range.clone()]);
        map.intact()?;
        if found != e.crc {
            return Err(self.checksum_error(e, "checksum", e.crc, found));
        }
        Ok(EntryBytes::Mapped { map, range })
    }

    /// Decodes and verifies a string entry.
    pub(crate) fn read_strings(&self, e: &Entry) -> Result<crate::base::tensor::Strings> {
        if e.dtype != DType::String {
            return Err(ErrorKind::Unsupported {
                tensor: key_name(&e.key),
                what: format!("reading {} tensors is not supported", e.dtype),
            }
            .into());
        }
        let n = crate::base::slice::num_elements(&e.shape).unwrap_or(u64::MAX) as usize;
        let decoded = self.with_bytes(e, |src| {
            strings::decode(src, n, e.crc, self.index.big_endian)
        })?;
        decoded.map_err(|err| self.string_error(e, err))
    }

    fn string_error(&self, e: &Entry, err: StringError) -> Error {
        match err {
            StringError::Checksum(what, expected, found) => {
                self.checksum_error(e, what, expected, found)
            }
            StringError::Allocation(bytes) => ErrorKind::Allocation {
                bytes,
                tensor: key_name(&e.key),
            }
            .into(),
            StringError::Corrupt(reason) => ErrorKind::CorruptStrings {
                path: self.shard_path(e.shard),
                tensor: key_name(&e.key),
                offset: e.offset,
                reason,
            }
            .into(),
        }
    }

    /// Checks one data-bearing entry's checksum(s).
    pub(crate) fn verify_entry(&self, e: &Entry) -> Result<()> {
        match e.dtype.size() {
            #[cfg(feature = "remote")]
            Some(_) if self.remote_source().is_some() => {
                let found = self.remote_source().map_or(Ok(0), |r| r.crc(self, e))?;
                if found != e.crc {
                    return Err(self.checksum_error(e, "checksum", e.crc, found));
                }
                Ok(())
            }
            Some(_) => {
                self.fixed_bytes(e)?;
                self.done_with(e); // checked: its pages need not stay mapped
                Ok(())
            }
            None if e.dtype == DType::String => {
                // Checked without decoding: nothing is allocated per string.
                let n = crate::base::slice::num_elements(&e.shape).unwrap_or(u64::MAX) as usize;
                let checked = self.with_bytes(e, |src| {
                    strings::verify(src, n, e.crc, self.index.big_endian)
                })?;
                checked.map_err(|err| self.string_error(e, err))
            }
            None => {
                // Variant: checked by the D.5 rule (values are not decoded by this crate).
                let n = crate::base::slice::num_elements(&e.shape).unwrap_or(u64::MAX) as usize;
                let checked = self.with_bytes(e, |src| strings::verify_variant(src, n, e.crc))?;
                checked.map_err(|err| self.string_error(e, err))
            }
        }
    }
}

/// Bytes of one verified entry.
pub(crate) enum EntryBytes {
    Mapped {
        map: Arc<MappedFile>,
        range: std::ops::Range<usize>,
    },
    Owned(Vec<u8>),
}

impl EntryBytes {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            EntryBytes::Mapped { map, range } => &map.bytes()[range.clone()],
            EntryBytes::Owned(v) => v,
        }
    }
}

/// Reverses the byte order of every `unit`-sized element.
pub(crate) fn swap_bytes(data: &mut [u8], unit: usize) {
    if unit > 1 {
        for c in data.chunks_exact_mut(unit) {
            c.reverse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Up to `EAGER_SHARDS` data files are mapped when the checkpoint is opened; past that, none
    /// is (each at its first read), and reads go on as before.
    #[test]
    fn at_most_eager_shards_data_files_are_mapped_at_open() {
        for n in [EAGER_SHARDS, EAGER_SHARDS + 1] {
            let tmp = tempfile::tempdir().unwrap();
            let prefix = tmp.path().join("m");
            let options = crate::WriterOptions {
                num_shards: n as u32,
                ..Default::default()
            };
            let mut w = crate::CheckpointWriter::create(&prefix, options).unwrap();
            for i in 0..n {
                let t = crate::Tensor::from_f32(&[1], &[i as f32]).unwrap();
                w.add(&format!("t{i:05}"), (&t).into()).unwrap();
            }
            w.finish().unwrap();
            let ckpt = crate::Checkpoint::open(&prefix).unwrap();
            let crate::reader::checkpoint::Inner::V2(b) = &ckpt.inner else {
                unreachable!()
            };
            let mapped = match &b.source {
                Source::Local { opened, .. } => opened.values().filter(|m| m.is_some()).count(),
                #[cfg(feature = "remote")]
                Source::Remote(_) => unreachable!(),
            };
            let eager = cfg!(unix) && n == EAGER_SHARDS;
            assert_eq!(mapped, if eager { n } else { 0 });
            let last = format!("t{:05}", n - 1);
            assert_eq!(
                ckpt.read(&last).unwrap().to_f32().unwrap(),
                [(n - 1) as f32]
            );
            assert_eq!(ckpt.files().len(), n + 1);
        }
    }
}
