//! The one module that maps files into memory.
//!
//! # Safety contract
//!
//! Checkpoint files are memory-mapped read-only. Rust's aliasing rules assume the mapped bytes never
//! change while a slice of them is alive, which the operating system cannot promise: **a checkpoint file
//! must not be modified or truncated while a [`crate::Checkpoint`] that mapped it is alive.** Replacing
//! it by renaming a new file over it, or deleting it, is safe (the mapping keeps the old inode). If a
//! mapped file is truncated by another process, reading the vanished pages raises `SIGBUS`, which
//! ends the process; bytes changed in place are caught by the CRC32C checks of every block and tensor,
//! but may be observed between the check and the copy. TensorFlow's own writer never rewrites a
//! finished checkpoint in place (it writes temporary files and renames them).
//!
//! **Values mapped copy-on-write** (`MappedFile::map_private`, `crate::Bytes`) extend this contract
//! to their own lifetime, which can be a whole training run: a page not yet written by the trainer
//! still reads the file, so an in-place change of the file after `initialize` shows up in the value
//! unchecked, and a truncation raises `SIGBUS` when the value is read. They are made only when
//! asked for (`LoadOptions::map_values`).

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::base::error::{Error, ErrorKind, Result};

mod fresh;
pub(crate) use fresh::alloc_zeroed;
#[cfg(feature = "candle")]
pub(crate) use fresh::alloc_zeroed_as;
#[cfg(feature = "cuda")]
pub(crate) use fresh::pci_numa_node;
#[cfg(any(test, feature = "cuda"))]
pub(crate) use fresh::{fault_in, FreshMemory};

/// What identifies a file's current contents without reading them: length and modification time,
/// and on Unix also the device, inode and status-change time (nanoseconds), so that a file replaced
/// by a rename, or rewritten within one mtime tick at the same length, is seen as changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    id: (u64, u64, i64, i64),
}

impl FileStamp {
    fn from_meta(meta: &std::fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            id: (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The file's current stamp, `None` if it cannot be read.
    pub(crate) fn of(path: &Path) -> Option<FileStamp> {
        std::fs::metadata(path)
            .ok()
            .map(|m| FileStamp::from_meta(&m))
    }

    /// `Ok` unless the file at `path`, whose stamp was `self` when it was mapped, has been changed
    /// in place since (written or truncated: another length or modification time, the same
    /// file). A file deleted since, or replaced by a rename, leaves the mapping its own bytes:
    /// `Ok`. So is a change of the file's status alone (its mode, owner or links, as a backup
    /// that hard-links it makes), which changes no byte.
    pub(crate) fn unchanged(&self, path: &Path) -> Result<()> {
        let Some(now) = FileStamp::of(path) else {
            return Ok(());
        };
        #[cfg(unix)]
        if (now.id.0, now.id.1) != (self.id.0, self.id.1) {
            return Ok(());
        }
        if (now.len, now.modified) == (self.len, self.modified) {
            return Ok(());
        }
        let path = path.to_path_buf();
        Err(if now.len < self.len {
            ErrorKind::Truncated { path }
        } else {
            ErrorKind::ChangedInPlace { path }
        }
        .into())
    }
}

/// A read-only file mapping (an empty file has no mapping).
pub(crate) struct MappedFile {
    path: PathBuf,
    /// Catches reads past the end of a file truncated while mapped (`sigbus`). Declared before
    /// `map`, so it is unregistered before the mapping goes (fields drop in order): the address
    /// range is never watched once something else may be mapped there.
    guard: crate::base::sigbus::Guard,
    map: Option<memmap2::Mmap>,
    stamp: FileStamp,
    /// The ranges hinted by [`will_need`](Self::will_need), in order (tests only).
    #[cfg(test)]
    pub(crate) hints: std::sync::Mutex<Vec<std::ops::Range<usize>>>,
    /// The advice given to the kernel, in order: (advice, offset, length) of each `madvise` of
    /// [`will_need`](Self::will_need), [`done_with`](Self::done_with) and
    /// [`sequential`](Self::sequential) (tests only).
    #[cfg(test)]
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) advised: std::sync::Mutex<Vec<(&'static str, usize, usize)>>,
}

/// Opens `path` for reading if it is a regular file. Anything else is an error that says what it
/// is, without waiting: opening a FIFO blocks until a writer appears, so the open itself does not
/// block (`O_NONBLOCK`, which changes nothing for a regular file) and the type is checked on the
/// opened file (no window between a check and the open).
pub(crate) fn open_regular(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_dir() {
        "a directory"
    } else {
        special_kind(&kind)
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("is {what}, not a regular file"),
    ))
}

#[cfg(unix)]
fn special_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a file"
    }
}

#[cfg(not(unix))]
fn special_kind(_kind: &std::fs::FileType) -> &'static str {
    "not a file"
}

impl MappedFile {
    /// Opens and maps `path`, a regular file.
    pub(crate) fn open(path: &Path) -> Result<MappedFile> {
        let file = open_regular(path).map_err(|e| Error::io(path, e))?;
        Self::from_file(path, file).map_err(|e| Error::io(path, e))
    }

    /// Maps an already opened regular file ([`open_regular`]); the error is returned raw so
    /// callers can wrap it.
    pub(crate) fn from_file(path: &Path, file: File) -> std::io::Result<MappedFile> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other("is not a regular file"));
        }
        let map = if meta.len() == 0 {
            None
        } else {
            // SAFETY: read-only mapping; the crate-level contract (module docs, `Checkpoint` docs)
            // forbids modifying or truncating the file while it is mapped.
            Some(unsafe { memmap2::Mmap::map(&file)? })
        };
        let guard = crate::base::sigbus::Guard::new(map.as_deref().unwrap_or(&[]), path);
        Ok(MappedFile {
            path: path.to_path_buf(),
            guard,
            map,
            stamp: FileStamp::from_meta(&meta),
            #[cfg(test)]
            hints: Default::default(),
            #[cfg(test)]
            advised: Default::default(),
        })
    }

    /// Hints that the pages of `range` will be read soon (the kernel starts reading them ahead), so
    /// that a cold file is read in large sequential requests rather than page fault by page fault.
    /// Hints only: failures are ignored.
    pub(crate) fn will_need(&self, range: std::ops::Range<usize>) {
        #[cfg(test)]
        self.hints.lock().unwrap().push(range.clone());
        #[cfg(unix)]
        if let Some(m) = &self.map {
            let page = page_size(); // 64 KiB on some aarch64 kernels
            let start = range.start & !(page - 1);
            // Warm page cache (the common case): the hint would only cost a walk over the range.
            if self.resident(start) && self.resident((range.end.max(1) - 1) & !(page - 1)) {
                return;
            }
            let len = range.end.min(m.len()) - start;
            #[cfg(test)]
            self.advised.lock().unwrap().push(("will_need", start, len));
            let _ = m.advise_range(memmap2::Advice::WillNeed, start, len);
        }
        #[cfg(not(unix))]
        let _ = range; // no madvise: the system reads ahead by its own rules
    }

    /// Whether the page at `offset` (page aligned) is in the page cache (`mincore`; `false` when it
    /// cannot be told).
    #[cfg(target_os = "linux")]
    fn resident(&self, offset: usize) -> bool {
        let Some(m) = &self.map else { return false };
        if offset >= m.len() {
            return false;
        }
        let mut vec = 0u8;
        // SAFETY: the address is page aligned and inside the live mapping `m` (offset < len), the
        // length is one byte (one page is queried), and `vec` has room for that page's status.
        let rc = unsafe { libc::mincore(m.as_ptr().add(offset) as *mut libc::c_void, 1, &mut vec) };
        rc == 0 && vec & 1 == 1
    }

    #[cfg(all(unix, not(target_os = "linux")))]
    fn resident(&self, _offset: usize) -> bool {
        false
    }

    /// Hints that the pages wholly inside `range` will not be read again soon: they leave this
    /// process's mapping (`MADV_DONTNEED`) and stay in the page cache, clean, so that a later read
    /// maps the same bytes again from there. A load that copies a checkpoint then does not keep
    /// it resident twice, once as the values and once as the shards' mapped pages (the resident
    /// size of a copying load went from values + checkpoint to about the values). Linux only;
    /// ranges under [`DONE_MIN`] are left alone; failures are ignored.
    pub(crate) fn done_with(&self, range: std::ops::Range<usize>) {
        #[cfg(target_os = "linux")]
        if let Some(m) = self.map.as_ref().filter(|_| range.len() >= DONE_MIN) {
            let page = page_size();
            let start = range.start.next_multiple_of(page);
            let end = range.end.min(m.len()) & !(page - 1);
            if end > start {
                let len = end - start;
                #[cfg(test)]
                self.advised.lock().unwrap().push(("dont_need", start, len));
                // SAFETY: `m` is a read-only shared mapping of a file (`Mmap::map`), so dropping
                // its pages loses nothing: the range stays mapped, and the next read of it maps
                // the file's page-cache pages again, the same bytes (a file truncated meanwhile
                // raises SIGBUS there as anywhere in the mapping; see the module's contract).
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
                };
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = range;
    }

    /// Hints that the file is read mostly sequentially (larger readahead).
    pub(crate) fn sequential(&self) {
        #[cfg(unix)]
        if let Some(m) = &self.map {
            #[cfg(test)]
            self.advised
                .lock()
                .unwrap()
                .push(("sequential", 0, m.len()));
            let _ = m.advise(memmap2::Advice::Sequential);
        }
    }

    /// `Ok` unless a read found the file truncated under its mapping (then nothing read from it
    /// can be trusted: the missing pages read as zeros).
    pub(crate) fn intact(&self) -> Result<()> {
        if self.guard.faulted() {
            return Err(ErrorKind::Truncated {
                path: self.path.clone(),
            }
            .into());
        }
        Ok(())
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Length and modification time when the file was opened.
    pub(crate) fn stamp(&self) -> FileStamp {
        self.stamp
    }

    /// `Ok` unless the file has been changed in place since it was mapped
    /// ([`FileStamp::unchanged`]): what was read from it may then mix two versions.
    pub(crate) fn unchanged(&self) -> Result<()> {
        self.stamp.unchanged(&self.path)
    }

    pub(crate) fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// A private, copy-on-write mapping of `range` (inside the file): reading it reads the page
    /// cache with no copy; the first write to a page gives this mapping its own copy of that page.
    /// The file is opened again (no descriptor is kept per shard) and must still be the one mapped
    /// (same device, inode, length and times); at most [`max_private_maps`] such mappings live at
    /// once. Any refusal is an `Err`, and the caller copies instead. The module's safety contract
    /// then covers the mapping's whole life: the file must not be modified or truncated in place
    /// while it is alive.
    pub(crate) fn map_private(&self, range: std::ops::Range<usize>) -> std::io::Result<PrivateMap> {
        if range.end > self.bytes().len() || range.is_empty() {
            return Err(std::io::Error::other("empty or out-of-bounds range"));
        }
        let slot = MapSlot::take().ok_or_else(|| std::io::Error::other("too many mappings"))?;
        let file = open_regular(&self.path)?;
        if FileStamp::from_meta(&file.metadata()?) != self.stamp {
            return Err(std::io::Error::other(
                "the file changed since it was mapped",
            ));
        }
        // SAFETY: a private mapping of a range of the same file (checked: same identity and
        // length) that exists (checked above against the shared mapping's length); the crate-level
        // contract forbids modifying or truncating the file in place while any mapping of it is
        // alive. Writes go to private copies, never to the file. memmap2 aligns the offset down to
        // a page and points the slice at `range.start`.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(range.start as u64)
                .len(range.len())
                .map_copy(&file)?
        };
        Ok(PrivateMap {
            guard: crate::base::sigbus::Guard::new(&map, &self.path),
            map,
            path: self.path.clone(),
            stamp: self.stamp,
            _slot: slot,
        })
    }
}

/// The smallest range whose pages [`MappedFile::done_with`] gives back. Each call drops page
/// table entries, which on a machine of many cores interrupts every core running the process's
/// threads (a TLB shootdown): at 1 MiB and up, a load makes at most one call a MiB, and the many
/// small tensors of a checkpoint (whose pages then stay mapped) make none.
pub(crate) const DONE_MIN: usize = 1 << 20;

/// The system's page size (asked once).
#[cfg(any(unix, test, feature = "cuda"))]
pub(crate) fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        #[cfg(unix)]
        {
            // SAFETY: sysconf has no preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if n > 0 && (n as usize).is_power_of_two() {
                return n as usize;
            }
        }
        4096
    })
}

/// How many private value mappings may live at once: a quarter of the kernel's limit on mappings
/// per process (`vm.max_map_count`), leaving the rest to the allocator, threads and libraries,
/// and no more than the `SIGBUS` handler watches ([`sigbus::WATCHED_VALUES`], 16,384: a host
/// that allows a million mappings would otherwise map values the handler cannot watch).
///
/// [`sigbus::WATCHED_VALUES`]: crate::base::sigbus::WATCHED_VALUES
pub(crate) fn max_private_maps() -> usize {
    (max_map_count() / 4).min(crate::base::sigbus::WATCHED_VALUES)
}

static LIVE_PRIVATE_MAPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One of the [`max_private_maps`] slots, given back on drop.
struct MapSlot;

impl MapSlot {
    fn take() -> Option<MapSlot> {
        use std::sync::atomic::Ordering;
        let max = max_private_maps();
        LIVE_PRIVATE_MAPS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| MapSlot)
    }
}

impl Drop for MapSlot {
    fn drop(&mut self) {
        LIVE_PRIVATE_MAPS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A private (copy-on-write) mapping of one value's bytes in a checkpoint file.
pub(crate) struct PrivateMap {
    /// Watched for its whole life (before `map`: unregistered first); the handler acts only on
    /// a thread reading for the library, so a trainer's own read after a truncation still raises
    /// `SIGBUS` rather than seeing zeros.
    guard: crate::base::sigbus::Guard,
    map: memmap2::MmapMut,
    path: PathBuf,
    /// The file's stamp when it was mapped and checked.
    stamp: FileStamp,
    _slot: MapSlot,
}

impl PrivateMap {
    /// `Ok` unless the file has been changed in place since this was mapped: its pages the
    /// trainer has not written then show the new bytes, unchecked.
    pub(crate) fn unchanged(&self) -> Result<()> {
        self.stamp.unchanged(&self.path)
    }

    /// Whether a library read found the file truncated under this mapping.
    pub(crate) fn faulted(&self) -> bool {
        self.guard.faulted()
    }

    /// The file mapped.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.map
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

/// The kernel's limit on mappings per process (`vm.max_map_count`, 65,530 by default), read once.
fn max_map_count() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(65530)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard mapped for a read is advised sequential as a whole, once (the kernel's larger
    /// readahead for a cold read).
    #[cfg(unix)]
    #[test]
    fn a_shard_mapped_for_a_read_is_advised_sequential() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("m");
        let mut w = crate::CheckpointWriter::create(&prefix, Default::default()).unwrap();
        for name in ["a", "b"] {
            let t = crate::Tensor::from_f32(&[1024], &[1.0; 1024]).unwrap();
            w.add(name, (&t).into()).unwrap();
        }
        w.finish().unwrap();
        let ckpt = crate::Checkpoint::open(&prefix).unwrap();
        let maps: Vec<_> = ["a", "b"]
            .iter()
            .map(|name| {
                let mut sources = ckpt.stored(name).unwrap().device_sources().unwrap();
                match sources.as_mut().unwrap().remove(0).map {
                    crate::reader::stored::SourceBytes::Mapped(m) => m,
                    #[cfg(feature = "remote")]
                    _ => unreachable!("a local shard"),
                }
            })
            .collect();
        assert!(std::sync::Arc::ptr_eq(&maps[0], &maps[1]), "one shard");
        let advised = maps[0].advised.lock().unwrap().clone();
        assert_eq!(advised, [("sequential", 0, maps[0].bytes().len())]);
    }

    /// `done_with` gives back the whole pages inside its range (rounded inward, cut at the file's
    /// end), and nothing for a range under [`DONE_MIN`] or holding no whole page; `will_need`
    /// advises from the page holding the range's start to its end (cut at the file's end), unless
    /// the range's first and last pages are both cached already. Hints leave no trace in what is
    /// read, so the advice given is recorded (test builds) and compared.
    #[cfg(target_os = "linux")]
    #[test]
    fn hints_advise_the_pages_of_their_range() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        const MIB: usize = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard");
        let len = 16 * MIB + 100;
        std::fs::write(&path, vec![7u8; len]).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        let m = MappedFile::open(&path).unwrap();
        let page = page_size();
        let advised = |m: &MappedFile| std::mem::take(&mut *m.advised.lock().unwrap());

        m.done_with(1000..3 * MIB + 1000);
        assert_eq!(advised(&m), [("dont_need", page, 3 * MIB - page)]);
        m.done_with(15 * MIB..17 * MIB); // cut at the file's last whole page
        assert_eq!(advised(&m), [("dont_need", 15 * MIB, MIB)]);
        m.done_with(1000..MIB - 1); // under DONE_MIN
        m.done_with(16 * MIB..17 * MIB); // past the last whole page: none
        assert_eq!(advised(&m), []);

        // Not cached: advised from the start's page. (Where the file system keeps the pages,
        // that cannot be seen here.)
        // SAFETY: hints about a file this test opened.
        let evict =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(evict, 0);
        if m.resident(0) || m.resident(8 * MIB) {
            eprintln!("skipped: this file system keeps the file's pages");
            return;
        }
        let (start, end) = (8 * MIB + 5000, 8 * MIB + 9000);
        m.will_need(start..end);
        let first = start & !(page - 1);
        assert_eq!(advised(&m), [("will_need", first, end - first)]);
        m.will_need(16 * MIB - 100..17 * MIB); // cut at the file's end
        let last = (16 * MIB - 100) & !(page - 1);
        assert_eq!(advised(&m), [("will_need", last, len - last)]);

        // Its first two pages cached (read with the kernel's readahead off), the third not.
        // SAFETY: a hint about a file this test opened.
        let random =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        assert_eq!(random, 0);
        file.read_exact_at(&mut vec![0u8; 2 * page], 0).unwrap();
        if !m.resident(0) || !m.resident(page) || m.resident(2 * page) {
            eprintln!("skipped: the kernel read more than asked");
            return;
        }
        m.will_need(100..2 * page); // first and last pages cached: no advice
        assert_eq!(advised(&m), []);
        m.will_need(100..2 * page + 1); // the last page not cached
        assert_eq!(advised(&m), [("will_need", 0, 2 * page + 1)]);
    }

    #[test]
    fn private_mapping_is_copy_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let m = MappedFile::open(&path).unwrap();
        // An unaligned range across pages.
        let range = 4000..9000;
        let mut p = m.map_private(range.clone()).unwrap();
        assert_eq!(p.as_slice(), &data[range.clone()]);
        p.as_mut_slice()[0] = 0xAA;
        p.as_mut_slice()[4999] = 0xBB;
        assert_eq!(p.as_slice()[0], 0xAA);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            data,
            "the file is never written"
        );
        assert_eq!(m.bytes(), &data[..], "other mappings keep the file's bytes");
        assert!(m.map_private(0..0).is_err());
        assert!(m.map_private(9000..(data.len() + 1)).is_err());
        let mut b = crate::base::tensor::Bytes::mapped(m.map_private(10..20).unwrap());
        assert!(b.is_mapped());
        b[0] = 1;
        assert_eq!(b.clone().into_vec()[0], 1);
        assert!(!b.clone().is_mapped());
    }
}
