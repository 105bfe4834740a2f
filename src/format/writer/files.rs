//! The files of a checkpoint being written: its data files (at most [`MAX_OPEN_SHARDS`] open at
//! once, each with its buffer), the temporary names they are written under, the folders made for
//! them, and the renames and syncs that put them in place.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use super::CheckpointWriter;
#[cfg(unix)]
use crate::base::error::ErrorKind;
use crate::base::error::{Error, Result};
use crate::base::partial::PartialOutput;
use crate::format::proto;

pub(super) struct Shard {
    pub(super) tmp: PathBuf,
    /// Open, or closed (its bytes written out) to keep within [`MAX_OPEN_SHARDS`]: opened again
    /// for the next tensor it gets.
    pub(super) out: Option<ShardFile>,
    pub(super) len: u64,
    /// The file's identity on Unix (device and inode), to tell it from another put in its place.
    pub(super) id: Option<(u64, u64)>,
    /// `tmp`, listed for `remove_partial_outputs` until the writer is dropped.
    pub(super) _listed: PartialOutput,
}

/// An open shard: its file and the bytes written to it not yet passed on to the file.
pub(super) struct ShardFile {
    file: File,
    buf: Vec<u8>,
}

/// A shard's buffer: smaller writes are gathered in it.
const SHARD_BUFFER: usize = 1 << 20;

impl ShardFile {
    pub(super) fn new(file: File, spare: &mut Vec<Vec<u8>>) -> ShardFile {
        let buf = spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(SHARD_BUFFER));
        ShardFile { file, buf }
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + bytes.len() > SHARD_BUFFER {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        if bytes.len() >= SHARD_BUFFER {
            return self.file.write_all(bytes);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Writes out what the buffer holds and closes the file; gives the buffer back, empty. The
    /// close's own error is one (network file systems report a write that failed there: a
    /// quota, a full disk), which dropping the file would ignore.
    fn close(mut self) -> std::io::Result<Vec<u8>> {
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        #[cfg(unix)]
        {
            use std::os::fd::IntoRawFd;
            let fd = self.file.into_raw_fd();
            // SAFETY: `fd` is this file's own descriptor, given up by `into_raw_fd`: closed once.
            if unsafe { libc::close(fd) } != 0 {
                let e = std::io::Error::last_os_error();
                // Linux releases the descriptor whatever close says; EINTR reports no failed
                // write (the sync at `finish` reports those).
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        Ok(self.buf)
    }
}

/// The identity of an open file on Unix: its device and inode.
pub(super) fn file_id(file: &File) -> Option<(u64, u64)> {
    file.metadata().ok().and_then(|m| id_of(&m))
}

/// The identity of a file on Unix, from its metadata.
fn id_of(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// How many data files a writer holds open at once, each with its 1 MiB buffer: a checkpoint of
/// more shards closes one to open another (and holds fewer where the process may open no more
/// files), so that neither `ulimit -n` nor the buffers' memory limit the shard count. The one
/// closed holds the most bytes: tensors go to the one holding the fewest, so it is the one they
/// come back to last. (Most tensors then cost an open and a close: see the benchmark
/// `writer_20k_x_1KiB` in `benches/reader.rs`, and the README.)
pub(super) const MAX_OPEN_SHARDS: usize = 64;

impl CheckpointWriter {
    /// The buffered file of shard `i`, opened again where it was closed: then another one is
    /// closed first where [`MAX_OPEN_SHARDS`] are open, and more while the process may open no
    /// more files. An error (the flush of a closed shard) fails the writer.
    pub(super) fn shard_file(&mut self, i: usize) -> Result<&mut ShardFile> {
        if self.shards[i].out.is_none() {
            if self.open >= MAX_OPEN_SHARDS {
                self.close_one()?;
            }
            let file = loop {
                let shard = &self.shards[i];
                match open_again(&shard.tmp, shard.len, shard.id, true) {
                    Err(e) if out_of_files(&e) && self.open > 0 => self.close_one()?,
                    file => break file,
                }
            };
            let n = self.options.num_shards;
            // Nothing is written yet: the writer stays usable (a shard another process changed
            // fails again at every write to it, and at `finish`).
            let file = file.map_err(|e| open_files_spent(e, self.open, n))?;
            self.shards[i].out = Some(ShardFile::new(file, &mut self.spare));
            self.open += 1;
        }
        Ok(self.shards[i].out.as_mut().expect("opened above"))
    }

    /// Closes the open shard holding the most bytes (see [`MAX_OPEN_SHARDS`]), its buffer written
    /// out (an error fails the writer: the shard may hold part of a tensor).
    pub(super) fn close_one(&mut self) -> Result<()> {
        let Some(shard) = self
            .shards
            .iter_mut()
            .filter(|s| s.out.is_some())
            .max_by_key(|s| s.len)
        else {
            return Ok(());
        };
        let out = shard.out.take().expect("an open shard");
        self.open -= 1;
        let buf = out.close().map_err(|e| {
            let what = format!("writing its buffered tensors out: {e}");
            let e = Error::io(&shard.tmp, std::io::Error::new(e.kind(), what));
            self.failed = Some(e.to_string());
            e
        })?;
        self.spare.push(buf);
        Ok(())
    }
}

/// The folder `path` is in: its parent, or `.` for a bare name (whose parent is the empty path).
pub(crate) fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The shard count in the header of the V2 index at `path`, if it is one (`None` for no file or
/// anything unreadable).
pub(super) fn index_shards(path: &Path) -> Option<u32> {
    let bytes = std::fs::read(path).ok()?;
    let table = crate::format::sstable::Table::open(path, &bytes).ok()?;
    let header = table.get(b"").ok()??;
    let header = proto::BundleHeaderProto::decode(&*header).ok()?;
    u32::try_from(header.num_shards).ok()
}

/// [`sync_dir`] after a rename into `dir`: the output is in place, and a folder the file system
/// cannot sync (EINVAL or ENOTSUP, on some network and FUSE file systems) does not make it an
/// error; any other failure (EIO) does, naming the folder.
pub(crate) fn sync_dir_after_rename(dir: &Path) -> Result<()> {
    match sync_dir(dir) {
        Err(e)
            if !matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            Err(Error::io(dir, e))
        }
        _ => Ok(()),
    }
}

/// Syncs folder `dir` (its entries: the renames into it) where the system can (on Unix; elsewhere
/// a rename is left to the file system).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Makes the missing folders of `dir` (as `create_dir_all` does), outermost first, pushing each
/// one made onto `made`. One that exists (made meanwhile by another process) is taken as it is,
/// and one that goes away meanwhile (another writer's, removed unfinished) is made again; an
/// error names the folder that could not be made, or the path in the way that is no folder.
pub(super) fn make_dirs(dir: &Path, made: &mut Vec<PathBuf>) -> Result<()> {
    let refuse = |m: &Path, kind: std::io::ErrorKind, e: &dyn std::fmt::Display| -> Error {
        let what = format!("making the checkpoint's folder: {e}");
        Error::io(m, std::io::Error::new(kind, what))
    };
    'walk: for _ in 0..8 {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_err() {
            missing.push(d);
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        for m in missing.into_iter().rev() {
            match std::fs::create_dir(m) {
                Ok(()) => made.push(m.to_path_buf()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && m.is_dir() => {}
                // A folder above it went away since the look: look again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue 'walk,
                Err(e) => return Err(refuse(m, e.kind(), &e)),
            }
        }
        if dir.as_os_str().is_empty() || dir.is_dir() {
            return Ok(());
        }
        return Err(refuse(
            dir,
            std::io::ErrorKind::NotADirectory,
            &"it is no folder",
        ));
    }
    Err(refuse(
        dir,
        std::io::ErrorKind::NotFound,
        &"its folders kept going away",
    ))
}

/// Renames `from` to `to`; an error names both (`from` may be what is missing).
pub(super) fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        let what = format!("renaming {} to it: {e}", from.display());
        Error::io(to, std::io::Error::new(e.kind(), what))
    })
}

/// A new file beside `path` to write its content into before it is renamed into place, listed
/// for [`remove_partial_outputs`](crate::remove_partial_outputs): `PATH.tempstate{pid}`, or
/// `PATH.tempstate{pid}-{k}` where that name is taken (another write of the same file in this
/// process, or anything else there). Never an existing file, and never through a link.
pub(super) fn create_temp(path: &Path) -> Result<(PathBuf, File, PartialOutput)> {
    let pid = std::process::id();
    for k in 0..1000u32 {
        let mut s = path.as_os_str().to_owned();
        match k {
            0 => s.push(format!(".tempstate{pid}")),
            _ => s.push(format!(".tempstate{pid}-{k}")),
        }
        let tmp = PathBuf::from(s);
        let making = PartialOutput::making();
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            // Listed once it is ours: a name taken by something else is never removed.
            Ok(file) => {
                let listed = making.list(&tmp);
                return Ok((tmp, file, listed));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // The folder, not a temporary name in it, is what is missing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                return Err(match dir.filter(|d| !d.is_dir()) {
                    Some(dir) => {
                        let name = path.file_name().unwrap_or_default().to_string_lossy();
                        let what = format!("no such folder (to write {name:?} in)");
                        Error::io(dir, std::io::Error::new(e.kind(), what))
                    }
                    None => Error::io(&tmp, e),
                });
            }
            Err(e) => return Err(Error::io(&tmp, e)),
        }
    }
    Err(Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "1000 temporary names beside it are taken",
        ),
    ))
}

/// Opens a closed shard's temporary file again, to append to it (or to sync it), never through a
/// link; it must be the file made (`id`, where known) and hold the `len` bytes written to it
/// (nothing else wrote to or replaced it).
pub(super) fn open_again(
    tmp: &Path,
    len: u64,
    id: Option<(u64, u64)>,
    append: bool,
) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).append(append);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let file = options.open(tmp).map_err(|e| Error::io(tmp, e))?;
    let meta = file.metadata().map_err(|e| Error::io(tmp, e))?;
    let found = meta.len();
    let changed = |what: String| {
        let what = format!("{what} (changed by something else)");
        Error::io(
            tmp,
            std::io::Error::new(std::io::ErrorKind::InvalidData, what),
        )
    };
    if id.is_some() && id_of(&meta) != id {
        return Err(changed(
            "another file is now in the place of the one written".into(),
        ));
    }
    if found != len {
        let what = format!("the writer wrote {len} bytes to this file, it now holds {found}");
        return Err(changed(what));
    }
    Ok(file)
}

/// Whether `e` is the process running out of file descriptors (`EMFILE`).
pub(super) fn out_of_files(e: &Error) -> bool {
    #[cfg(unix)]
    if let ErrorKind::Io { source, .. } = e.kind() {
        return source.raw_os_error() == Some(libc::EMFILE);
    }
    let _ = e;
    false
}

/// Says why a shard could not be made or opened where the process may open no more files: the
/// writer had closed its own data files down to `open` of its `n` (those it writes to next), and
/// the rest of the limit is taken by the process's other files.
pub(super) fn open_files_spent(e: Error, open: usize, n: u32) -> Error {
    #[cfg(unix)]
    if let ErrorKind::Io { path, source } = e.kind() {
        if source.raw_os_error() == Some(libc::EMFILE) {
            // SAFETY: getrlimit writes the one struct it is given.
            let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
            let may = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
                0 if limit.rlim_cur != libc::RLIM_INFINITY => format!("{} files", limit.rlim_cur),
                _ => "no more files".to_string(),
            };
            let why = format!(
                "{source}: this process may open {may} (`ulimit -n`), and the checkpoint \
                 writer held {open} of its {n} data files open (it closes the others while the \
                 limit is reached); the process's other open files take the rest: raise the \
                 limit"
            );
            return Error::io(path, std::io::Error::new(source.kind(), why));
        }
    }
    let _ = (open, n);
    e
}

#[cfg(test)]
mod tests {
    use super::folder_of;
    #[cfg(target_os = "linux")]
    use crate::format::bundle::data_path;
    use crate::Tensor;
    #[cfg(unix)]
    use std::fs::File;
    use std::path::Path;

    /// A bare name is in `.`, not in the empty path (which no folder call takes).
    #[test]
    fn the_folder_of_a_path() {
        for (path, folder) in [
            ("m", "."),
            ("./m", "."),
            ("a/m", "a"),
            ("a/b/m.index", "a/b"),
            ("/m", "/"),
            ("/a/m", "/a"),
        ] {
            assert_eq!(folder_of(Path::new(path)), Path::new(folder), "{path}");
        }
    }

    /// Lowers the soft limit of open files of this (child) process to `n`; gives the old one.
    #[cfg(unix)]
    fn limit_open_files(n: u64) -> u64 {
        // SAFETY: getrlimit and setrlimit read or write the one struct they are given.
        let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        let old = limit.rlim_cur;
        limit.rlim_cur = n;
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
        old
    }

    /// This process's open files.
    #[cfg(target_os = "linux")]
    fn open_files() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// Tensor `i` of the writes below: mostly small ones (gathered in the shard's buffer), every
    /// 40th larger than the buffer (written straight to the file).
    fn nth_tensor(i: u64) -> Tensor {
        let n = if i.is_multiple_of(40) {
            300_000
        } else {
            1 + (i % 7) * 100
        };
        let values: Vec<f32> = (0..n).map(|k| (i * 1_000_003 + k) as f32).collect();
        Tensor::from_f32(&[n], &values).unwrap()
    }

    /// More shards than the writer holds open, and more than the process may open files: they
    /// are closed and opened again as tensors go to them, and every value reads back. With the
    /// limit at 24 files, and then with the limit as it was, when at most `MAX_OPEN_SHARDS` are
    /// open at once. In a child process, whose limit of open files is lowered.
    #[cfg(target_os = "linux")]
    #[test]
    fn more_shards_than_open_files_are_written() {
        const CHILD: &str = "TFCKPT_TEST_FEW_OPEN_FILES";
        let Some(dir) = std::env::var_os(CHILD) else {
            let dir = tempfile::tempdir().unwrap();
            let me = "format::writer::files::tests::more_shards_than_open_files_are_written";
            crate::base::test_in_child(me, &[(CHILD, dir.path().as_os_str())]);
            return;
        };
        let options = crate::WriterOptions {
            num_shards: 300,
            ..Default::default()
        };
        let old = limit_open_files(24);
        let mut few =
            crate::CheckpointWriter::create(Path::new(&dir).join("few/m"), options.clone())
                .unwrap();
        limit_open_files(old);
        let before = open_files();
        let mut many =
            crate::CheckpointWriter::create(Path::new(&dir).join("many/m"), options).unwrap();
        let mut most = open_files() - before;
        for i in 0..900 {
            let t = nth_tensor(i);
            limit_open_files(24);
            few.add(&format!("t{i}"), (&t).into()).unwrap();
            limit_open_files(old);
            many.add(&format!("t{i}"), (&t).into()).unwrap();
            most = most.max(open_files() - before);
        }
        assert_eq!(most, super::MAX_OPEN_SHARDS);
        limit_open_files(24);
        few.finish().unwrap();
        limit_open_files(old);
        many.finish().unwrap();
        for name in ["few", "many"] {
            let ckpt = crate::Checkpoint::open(Path::new(&dir).join(name).join("m")).unwrap();
            ckpt.verify().unwrap();
            // Every shard was written to (and opened again for it, past the first 64).
            for shard in 0..300 {
                let path = data_path(&Path::new(&dir).join(name).join("m"), shard, 300);
                assert!(std::fs::metadata(&path).unwrap().len() > 0, "{path:?}");
            }
            for i in 0..900 {
                let read = ckpt.read(&format!("t{i}")).unwrap();
                assert_eq!(read.to_f32(), nth_tensor(i).to_f32(), "{name} t{i}");
            }
        }
    }

    /// A closed shard's file changed by something else meanwhile (written to, or another file
    /// of the same length put in its place): the tensor that goes to it next is refused, naming
    /// it, and so is `finish`, which leaves nothing behind.
    #[test]
    fn a_shard_changed_behind_the_writer_is_refused() {
        let replaced = "another file is now in the place of the one written (changed by something \
                        else)";
        let written = "the writer wrote 0 bytes to this file, it now holds 1 (changed by \
                       something else)";
        type Change = fn(&Path);
        let cases: [(&str, Change); 2] = [
            (written, |tmp| std::fs::write(tmp, b"x").unwrap()),
            (replaced, |tmp| {
                let other = tmp.with_extension("other");
                std::fs::write(&other, b"").unwrap();
                std::fs::rename(&other, tmp).unwrap();
            }),
        ];
        for (message, change) in cases {
            if message == replaced && !cfg!(unix) {
                continue; // the file's identity is known on Unix only
            }
            let dir = tempfile::tempdir().unwrap();
            let prefix = dir.path().join("new/m");
            let options = crate::WriterOptions {
                num_shards: 70,
                ..Default::default()
            };
            let mut writer = crate::CheckpointWriter::create(&prefix, options).unwrap();
            // Shards past the first 64 are closed from the start.
            let last = writer.shards[69].tmp.clone();
            change(&last);
            let t = nth_tensor(1);
            for i in 0..69 {
                writer.add(&format!("t{i}"), (&t).into()).unwrap();
            }
            let e = writer.add("t69", (&t).into()).unwrap_err().to_string();
            for part in [&*last.to_string_lossy(), message] {
                assert!(e.contains(part), "{part:?} not in {e:?}");
            }
            let e = writer.finish().unwrap_err().to_string();
            assert!(e.contains(message), "{e}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    /// A process with no file left to open: the error names the file the writer could not
    /// make, the limit, and how many of its own files the writer held; it removes the files and
    /// folder it made. In a child process, whose limit of open files is lowered to 64 and spent.
    #[cfg(unix)]
    #[test]
    fn no_file_left_to_open_says_so() {
        const CHILD: &str = "TFCKPT_TEST_NO_OPEN_FILES";
        let Some(dir) = std::env::var_os(CHILD) else {
            let dir = tempfile::tempdir().unwrap();
            let me = "format::writer::files::tests::no_file_left_to_open_says_so";
            crate::base::test_in_child(me, &[(CHILD, dir.path().as_os_str())]);
            // Nothing left: the folder the writer made is gone, as are its temporary files.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
            return;
        };
        limit_open_files(64);
        let prefix = Path::new(&dir).join("new/m");
        let options = crate::WriterOptions {
            num_shards: 3,
            ..Default::default()
        };
        let mut spent = Vec::new();
        while let Ok(f) = File::open("/dev/null") {
            spent.push(f);
        }
        let e = crate::CheckpointWriter::create(&prefix, options).unwrap_err();
        drop(spent);
        let text = e.to_string();
        for part in [
            "m.data-00000-of-00003.tempstate",
            "this process may open 64 files (`ulimit -n`)",
            "the checkpoint writer held 0 of its 3 data files open",
            "raise the limit",
        ] {
            assert!(text.contains(part), "{part:?} not in {text:?}");
        }
        assert!(matches!(e.kind(), crate::ErrorKind::Io { .. }), "{e:?}");
    }
}
