//! The file itself: each tensor's bytes handed to the `safetensors` writer only when it asks
//! for them ([`Item`]'s `View`), from where they are ([`Source`]), and the temporary folder
//! renamed into place once every byte was checked ([`write_file`]).

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::path::{Path, PathBuf};

use ::safetensors::tensor::{Dtype, SafeTensorError, View};

use super::{cannot_write, st_dtype, too_large};
use crate::base::dtype::DType;
use crate::base::error::{Error, ErrorKind, Result};
use crate::base::partial::PartialOutput;
use crate::base::slice::Region;
use crate::base::tensor::{Tensor, TensorData};
use crate::init::store::VariableStore;
use crate::reader::checkpoint::{Checkpoint, TensorView};

/// A shard's mapping and the range of it that a tensor's bytes take.
type Mapped = (
    std::sync::Arc<crate::base::mmap::MappedFile>,
    std::ops::Range<usize>,
);

/// What the items of one file share while the writer asks for their bytes.
#[derive(Default)]
pub(super) struct Shared {
    /// The first error met: `View::data` cannot return one.
    failure: RefCell<Option<Error>>,
    /// The shard bytes handed to the writer last, mapped: given back to the page cache when it
    /// asks for the next tensor (it has written these then), so that a local conversion does not
    /// keep every shard page it read in its mapping until the end.
    written_from: RefCell<Option<Mapped>>,
}

impl Shared {
    fn is_set(&self) -> bool {
        self.failure.borrow().is_some()
    }

    fn set(&self, e: Error) {
        self.failure.borrow_mut().get_or_insert(e);
    }

    fn take(&self) -> Option<Error> {
        self.failure.borrow_mut().take()
    }

    /// The writer has written every tensor handed to it so far: their mapped pages can go.
    fn written(&self) {
        if let Some((map, range)) = self.written_from.borrow_mut().take() {
            map.done_with(range);
        }
    }
}

/// Where one tensor's bytes come from when the writer asks for them.
pub(super) enum Source<'a> {
    /// A checkpoint tensor saved whole in a little-endian V2 bundle: checksummed in the mapping of
    /// its shard, then written from there (the view is kept so that a shard truncated meanwhile
    /// is seen afterwards). Where the view is a copy (a remote shard's), the copy is written and
    /// dropped, as for [`Source::Read`].
    View {
        ckpt: &'a Checkpoint,
        view: OnceCell<TensorView>,
    },
    /// Any other checkpoint tensor (partitioned, V1, big-endian): read, assembled and checked into
    /// memory of its own, dropped once written.
    Read { ckpt: &'a Checkpoint },
    /// A host value of the store, written from where it is.
    Value(&'a Tensor),
    /// A partitioned variable's whole value: its parts joined into memory of its own, dropped
    /// once written.
    Joined { store: &'a VariableStore },
}

/// One tensor of the file: what the header says of it, and where its bytes come from.
pub(super) struct Item<'a> {
    name: &'a str,
    tf_dtype: DType,
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
    source: Source<'a>,
    shared: &'a Shared,
}

impl<'a> Item<'a> {
    pub(super) fn new(
        name: &'a str,
        tf_dtype: DType,
        shape: &[u64],
        len: usize,
        source: Source<'a>,
        shared: &'a Shared,
        path: &Path,
    ) -> Result<Item<'a>> {
        let dtype = st_dtype(tf_dtype).map(|(d, _)| d).ok_or_else(|| {
            // The callers skip or refuse such dtypes first.
            Error::from(ErrorKind::Unsupported {
                tensor: name.into(),
                what: format!("safetensors cannot hold {tf_dtype} values"),
            })
        })?;
        let shape = shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<usize>, _>>()
            .map_err(|_| too_large(path, name))?;
        Ok(Item {
            name,
            tf_dtype,
            dtype,
            shape,
            len,
            source,
            shared,
        })
    }

    /// The tensor's bytes, read and checked now.
    pub(super) fn fetch(&self) -> Result<Cow<'_, [u8]>> {
        match &self.source {
            Source::View { ckpt, view } => {
                if let Some(v) = view.get() {
                    return Ok(Cow::Borrowed(v.as_bytes()));
                }
                // Only a mapping is kept, for the checks after the write; a copy (a remote
                // tensor's) kept too would hold every tensor until the whole file is written.
                match ckpt.view(self.name)?.into_owned() {
                    Ok(bytes) => Ok(Cow::Owned(bytes)),
                    Err(mapped) => {
                        let view = view.get_or_init(|| mapped);
                        *self.shared.written_from.borrow_mut() = view.mapping();
                        Ok(Cow::Borrowed(view.as_bytes()))
                    }
                }
            }
            Source::Read { ckpt } => {
                // `read` checks that the files can back the tensor before it allocates.
                let t = ckpt.read(self.name)?;
                // Read into memory of its own: the shard pages it read can leave the mapping.
                let stored = ckpt.stored(self.name)?;
                stored.done_with(&[Region::whole(&stored.info.shape)]);
                match t.data {
                    TensorData::Bytes(b) => Ok(Cow::Owned(b.into_vec())),
                    TensorData::Strings(_) => Err(ErrorKind::Unsupported {
                        tensor: self.name.into(),
                        what: "safetensors cannot hold string values".into(),
                    }
                    .into()),
                }
            }
            Source::Value(t) => Ok(Cow::Borrowed(t.bytes().unwrap_or_default())),
            Source::Joined { store } => {
                let t = store.partitioned_value(self.name)?;
                if t.dtype != self.tf_dtype {
                    return Err(ErrorKind::BadVariable {
                        name: self.name.into(),
                        reason: format!(
                            "its parts' values are {}, the file's header says {}",
                            t.dtype, self.tf_dtype
                        ),
                    }
                    .into());
                }
                match t.data {
                    TensorData::Bytes(b) => Ok(Cow::Owned(b.into_vec())),
                    TensorData::Strings(_) => Err(cannot_write(
                        self.name,
                        "safetensors cannot hold string values",
                    )),
                }
            }
        }
    }

    /// Reads again the bytes of a tensor written from a file mapping (a shard, or a value mapped
    /// copy-on-write), so that a file truncated under it shows.
    fn recheck(&self) -> Result<()> {
        match &self.source {
            Source::View { ckpt, view } if view.get().is_some() => ckpt.view(self.name).map(drop),
            Source::Value(t) => match &t.data {
                TensorData::Bytes(b) if b.is_mapped() => {
                    // One byte a page is enough to meet a page past the end of the file: every
                    // 4 KiB from the first byte, and the last byte, whose page a value starting
                    // inside a page may hold alone.
                    for page in b.chunks(4096) {
                        std::hint::black_box(page[0]);
                    }
                    if let Some(last) = b.last() {
                        std::hint::black_box(*last);
                    }
                    b.intact()
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Whether the mapped bytes this item was written from were still backed by the file.
    fn intact(&self) -> Result<()> {
        match &self.source {
            Source::View { view, .. } => view.get().map_or(Ok(()), TensorView::intact),
            Source::Value(t) => match &t.data {
                TensorData::Bytes(b) => b.intact(),
                TensorData::Strings(_) => Ok(()),
            },
            Source::Read { .. } | Source::Joined { .. } => Ok(()),
        }
    }
}

impl View for &Item<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The bytes, read and checked when the writer gets to this tensor. After an error (kept for
    /// the caller) this and every later tensor are written as nothing: the file is dropped.
    fn data(&self) -> Cow<'_, [u8]> {
        self.shared.written();
        if self.shared.is_set() {
            return Cow::Borrowed(&[]);
        }
        match self.fetch() {
            // The 4- and 2-bit integers as their values: in place in bytes read into memory of
            // their own, in a copy of that one tensor where they are the shard's mapping.
            Ok(bytes) if bytes.len() == self.len && self.tf_dtype.sub_byte().is_some() => {
                let mut values = bytes.into_owned();
                self.tf_dtype.sub_byte_values(&mut values);
                Cow::Owned(values)
            }
            Ok(bytes) if bytes.len() == self.len => bytes,
            Ok(bytes) => {
                self.shared.set(
                    ErrorKind::BufferSize {
                        tensor: self.name.into(),
                        variable: false,
                        elements: None,
                        expected: self.len as u64,
                        found: bytes.len() as u64,
                    }
                    .into(),
                );
                Cow::Borrowed(&[])
            }
            Err(e) => {
                self.shared.set(e);
                Cow::Borrowed(&[])
            }
        }
    }

    fn data_len(&self) -> usize {
        self.len
    }
}

/// Writes `items` into a temporary folder beside `path` with the safetensors writer, then renames
/// the file to `path` if every tensor was read, checked and written; the folder is removed either
/// way.
pub(super) fn write_file(path: &Path, items: &[Item<'_>], shared: &Shared) -> Result<()> {
    // The safetensors writer panics on two tensors of one name: names are unique by
    // construction (a checkpoint's keys, a store's names), and checked here all the same.
    let mut names = std::collections::HashSet::with_capacity(items.len());
    if let Some(twice) = items.iter().find(|i| !names.insert(i.name)) {
        return Err(cannot_write(
            twice.name,
            "two values have this name, and a safetensors file holds one value a name",
        ));
    }
    if path.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
        ));
    }
    let dir: PathBuf = crate::format::writer::folder_of(path).to_path_buf();
    // A folder of its own, removed when dropped: the safetensors writer writes beside the name it
    // is given, under a name of its own, so only a folder holds all that a write leaves when a
    // signal ends the process (listed for `remove_partial_outputs`, until after the folder's own
    // removal: declared first, dropped last).
    let _listed;
    let making = PartialOutput::making();
    let tmp_dir = tempfile::Builder::new()
        .prefix(".tfckpt-")
        .suffix(".safetensors.tmp")
        .tempdir_in(&dir)
        .map_err(|e| {
            // tempfile's text ends in the temporary name: the output and its folder are named.
            let said = e.to_string();
            let reason = said.rsplit_once(" at path ").map_or(&*said, |(r, _)| r);
            let why = format!(
                "cannot create a temporary folder in {} to write it: {reason}",
                dir.display()
            );
            Error::io(path, std::io::Error::new(e.kind(), why))
        })?;
    _listed = making.list(tmp_dir.path());
    let tmp = tmp_dir.path().join("out.safetensors");
    // The mode `File::create` gives (0666 less the umask), not the writer's 0600. Closed at once:
    // the safetensors writer renames its own file over it, which some systems refuse while a
    // handle to the name is open.
    let mode = std::fs::File::create(&tmp)
        .and_then(|f| f.metadata())
        .map_err(|e| Error::io(&tmp, e))?
        .permissions();
    let written = {
        // A shard truncated under a mapping while the writer reads it is caught, not SIGBUS.
        let _reading = crate::base::sigbus::reading();
        let written =
            ::safetensors::serialize_to_file(items.iter().map(|i| (i.name, i)), None, &tmp);
        if let Err(SafeTensorError::IoError(e)) = &written {
            // `write` reading a truncated mapping fails with EFAULT, not SIGBUS: checked again,
            // the bytes written from mappings say which shard (on this thread, still caught).
            if e.raw_os_error() == Some(libc::EFAULT) {
                items.iter().try_for_each(Item::recheck)?;
            }
        }
        written
    };
    shared.written();
    if let Some(e) = shared.take() {
        return Err(e);
    }
    items.iter().try_for_each(Item::intact)?;
    // Written from mappings after they were checked: a file written in place meanwhile gave the
    // file other bytes. Each checkpoint once (its shards), each file of mapped values once.
    let mut ckpts: Vec<&Checkpoint> = Vec::new();
    let mut asked: Vec<&Path> = Vec::new();
    for item in items {
        match &item.source {
            Source::View { ckpt, .. } if !ckpts.iter().any(|c| std::ptr::eq(*c, *ckpt)) => {
                ckpts.push(ckpt)
            }
            Source::Value(t) => {
                if let TensorData::Bytes(b) = &t.data {
                    b.unchanged_once(&mut asked)?;
                }
            }
            _ => {}
        }
    }
    ckpts.iter().try_for_each(|c| c.unchanged())?;
    written.map_err(|e| match e {
        SafeTensorError::IoError(source) => Error::io(path, source),
        SafeTensorError::HeaderTooLarge => ErrorKind::Export {
            path: path.to_path_buf(),
            reason: format!(
                "its header would be larger than the {MAX_HEADER} bytes safetensors allows: {} \
                 tensors, whose names alone hold {} bytes",
                items.len(),
                items.iter().map(|i| i.name.len() as u64).sum::<u64>()
            ),
        }
        .into(),
        other => ErrorKind::Export {
            path: path.to_path_buf(),
            reason: other.to_string(),
        }
        .into(),
    })?;
    // The safetensors writer replaced the temporary file with one of its own (mode 0600), and
    // wrote it without syncing: on disk before it is renamed into place, so that a crash of the
    // system after this call returned cannot leave an empty file there instead.
    std::fs::set_permissions(&tmp, mode).map_err(|e| Error::io(&tmp, e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    crate::format::writer::sync_dir_after_rename(&dir)
}

/// The largest header the `safetensors` crate writes or reads (its `MAX_HEADER_SIZE`).
pub(super) const MAX_HEADER: u64 = 100_000_000;
