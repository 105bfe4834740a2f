//! [`ErrorKind`]: every way an operation of this crate can fail, and what each one says.

use std::path::PathBuf;

use super::Error;

use super::text::{
    absent, buffer_size, named, not_a_table_hint, range_text, reading, shown, suggest,
};

/// Every way an operation of this crate can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An I/O error on a file that exists (or should).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A safetensors file cannot be written (its header would be too large, ...); nothing was
    /// written to `path`.
    #[error("{}: cannot write the safetensors file: {reason}", path.display())]
    Export {
        /// The file that was to be written.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Nothing matches the checkpoint path (no `PREFIX.index`, no V1 file, no directory).
    #[error("checkpoint not found: no directory, V2 index ({}.index) or V1 file matches {}", path.display(), shown(path))]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// A V2 checkpoint's `.index` is missing, while its data files are there.
    #[error("{}: missing, while the checkpoint's data file {} is there: a V2 checkpoint is read through its index (was the index deleted, or left out of a copy?)", index.display(), data.display())]
    MissingIndex {
        /// The index file the checkpoint needs.
        index: PathBuf,
        /// A data file of the same prefix (the first by name).
        data: PathBuf,
    },
    /// A directory without a usable `checkpoint` state file (TF: "Couldn't find 'checkpoint' file or
    /// checkpoints in given directory").
    #[error("couldn't find a checkpoint in directory {}: {reason}", dir.display())]
    NoCheckpointInDir {
        /// The directory.
        dir: PathBuf,
        /// Why the state file could not be used.
        reason: String,
    },
    /// The file is not an SSTable at all (too short, bad magic number).
    #[error("{}: not an SSTable ({reason}): {}", path.display(), not_a_table_hint(path))]
    NotSstable {
        /// The file.
        path: PathBuf,
        /// "file is too short" or "bad magic number ...".
        reason: String,
    },
    /// A table block's stored checksum does not match its bytes.
    #[error("{}: block checksum mismatch at offset {offset} (a block of {size} bytes): stored {expected:#010x}, computed {found:#010x}{}", path.display(), reading(tensor))]
    BlockChecksum {
        /// The table file.
        path: PathBuf,
        /// The tensor being read when a data block of a V1 file failed (`None` for a block read
        /// when the checkpoint was opened or verified: an index's, or one holding many tensors).
        tensor: Option<String>,
        /// Offset of the block in the file.
        offset: u64,
        /// Stored size of the block.
        size: u64,
        /// Unmasked stored CRC32C.
        expected: u32,
        /// CRC32C computed over the bytes.
        found: u32,
    },
    /// A table's structure is damaged (block handle past the end, bad block entry, bad compression ...).
    #[error("{}: corrupt table at offset {offset}: {reason}{}", path.display(), reading(tensor))]
    CorruptTable {
        /// The table file.
        path: PathBuf,
        /// The tensor being read when a data block of a V1 file was found damaged (`None` when
        /// the checkpoint was opened or verified).
        tensor: Option<String>,
        /// Offset in the file of the block (or footer) at fault.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The header record of an index (V2) or the meta record (V1) is missing, damaged or of an
    /// unsupported version.
    #[error("{}: bad checkpoint header: {reason}", path.display())]
    BadHeader {
        /// The index or V1 file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An index entry (V2) or a data record (V1) cannot be parsed or is inconsistent.
    #[error("{}: entry for tensor {tensor_named} is not usable: {reason}", path.display(), tensor_named = named(tensor))]
    BadEntry {
        /// The index or V1 file.
        path: PathBuf,
        /// The tensor (or the printable form of its key).
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor's dtype number is not a TensorFlow dtype this crate knows.
    #[error("{}: tensor {tensor_named} has unknown dtype number {value}", path.display(), tensor_named = named(tensor))]
    UnknownDtype {
        /// The index or V1 file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The `DataType` enum value found.
        value: i32,
    },
    /// The tensor's dtype cannot be read by this operation (e.g. `variant`, or strings into a byte
    /// buffer).
    #[error("tensor {tensor_named}: {what}", tensor_named = named(tensor))]
    Unsupported {
        /// The tensor.
        tensor: String,
        /// What is not supported.
        what: String,
    },
    /// An entry's stored size does not match its dtype and shape.
    #[error("{}: tensor {tensor_named}: stored size is {found} bytes, expected {}{expected} for {dtype} {shape:?}", path.display(), if *exact { "" } else { "at least " }, tensor_named = named(tensor))]
    SizeMismatch {
        /// The index file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: crate::DType,
        /// Its shape.
        shape: Vec<u64>,
        /// Bytes implied by dtype × shape (or the lower bound for strings and variants).
        expected: u64,
        /// Whether `expected` is the size (fixed-size dtypes) or its lower bound.
        exact: bool,
        /// Bytes the entry claims.
        found: u64,
    },
    /// A file was written in place while it was being read, or while values mapped from it were
    /// in use: what was read may mix its two versions, so none of it is used.
    #[error("{}: the file was changed in place while it was being read (a checkpoint's data files must not be changed in place while it is read: save to a new prefix, or rename new files over them); nothing read from it is used", path.display())]
    ChangedInPlace {
        /// The file.
        path: PathBuf,
    },
    /// A file shrank while it was being read (a page of its mapping past the new end was read).
    #[error("{}: the file was truncated while it was being read (a checkpoint must not be changed in place while it is read); nothing read from it is used", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
    },
    /// An entry's bytes lie (partly) past the end of its data shard.
    #[error("{}: tensor {tensor_named} at offset {offset} ({size} bytes) runs past the end of the shard ({len} bytes): a truncated data file, or a damaged index?", path.display(), tensor_named = named(tensor))]
    OutOfBounds {
        /// The data shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Offset of the tensor in the shard.
        offset: u64,
        /// Stored size of the tensor.
        size: u64,
        /// Length of the shard file.
        len: u64,
    },
    /// A data shard named by the index is missing or unreadable.
    #[error("{}: data shard {shard} of {num_shards} (needed for tensor {tensor_named}) cannot be opened: {source}", path.display(), tensor_named = named(tensor))]
    MissingShard {
        /// The data shard file.
        path: PathBuf,
        /// Shard number.
        shard: u32,
        /// Number of shards in the header.
        num_shards: u32,
        /// The first tensor that needs it.
        tensor: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file a V1 glob matched whose name numbers it past the count of its save's files
    /// (`NAME-00002-of-00002`): no file of that save, though its tensors are read with the others.
    #[error("{}: a stray file: its name makes it file {shard} of a sharded V1 save of {num_shards} files (numbered from 0), so it belongs to no save of this one (move or remove it)", path.display())]
    StrayV1File {
        /// The file.
        path: PathBuf,
        /// The number its name gives it.
        shard: u64,
        /// The count of files its name gives.
        num_shards: u64,
    },
    /// A file of a sharded V1 checkpoint is missing: the files found are named `NAME-i-of-N`, and
    /// this `i` is not among them (TensorFlow's glob reads the others without noticing).
    #[error("{}: missing: file {shard} of the {num_shards} files of this sharded V1 checkpoint ({found} found); the tensors it holds cannot be read", path.display())]
    MissingV1Shard {
        /// The file the checkpoint's naming expects.
        path: PathBuf,
        /// Its number, from 0.
        shard: u64,
        /// The number of files the names give.
        num_shards: u64,
        /// How many of those files were found.
        found: usize,
    },
    /// A tensor's bytes do not match its stored checksum.
    #[error("{}: tensor {tensor_named} at offset {offset} ({size} bytes): {what} mismatch: stored {expected:#010x}, computed {found:#010x}", path.display(), tensor_named = named(tensor))]
    TensorChecksum {
        /// The data shard.
        path: PathBuf,
        /// The tensor (or slice).
        tensor: String,
        /// Offset of the tensor in the shard.
        offset: u64,
        /// Stored size.
        size: u64,
        /// "checksum" or "string length checksum".
        what: &'static str,
        /// Unmasked stored CRC32C.
        expected: u32,
        /// CRC32C computed.
        found: u32,
    },
    /// A string tensor's encoding is damaged (lengths past the stored size, ...).
    #[error("{}: tensor {tensor_named} at offset {offset}: corrupt string data: {reason}", path.display(), tensor_named = named(tensor))]
    CorruptStrings {
        /// The data shard.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Offset of the tensor in the shard.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// No tensor of that name in the checkpoint.
    #[error("tensor {tensor_named} not found in checkpoint {}{}{}", ckpt.display(), absent(absent_files), suggest(suggestions), tensor_named = named(tensor))]
    TensorNotFound {
        /// The checkpoint prefix.
        ckpt: PathBuf,
        /// The name asked for.
        tensor: String,
        /// Close names that do exist.
        suggestions: Vec<String>,
        /// Files of a sharded V1 save that are missing, any of which may hold it (the first 8).
        absent_files: Vec<PathBuf>,
    },
    /// The object graph of a TF2 object-based save (`_CHECKPOINTABLE_OBJECT_GRAPH`) cannot give
    /// what was asked of it ([`Checkpoint::object_names`](crate::Checkpoint::object_names)): the
    /// checkpoint has none, it is not a string scalar or does not decode, or it gives the
    /// variable asked for no key, several, or one the checkpoint does not hold.
    #[error("checkpoint {}: object graph: {reason}", ckpt.display())]
    ObjectGraph {
        /// The checkpoint prefix.
        ckpt: PathBuf,
        /// The variable name asked for, where one was.
        name: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A requested or stored slice is malformed or out of bounds.
    #[error("tensor {tensor_named}: bad slice: {reason}", tensor_named = named(tensor))]
    BadSlice {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The stored slices of a partitioned tensor do not cover the requested slice.
    #[error("tensor {tensor_named} in checkpoint {}: the stored slices {stored} do not cover the requested slice {requested} (insufficient slices: they hold {held} of its {wanted} elements){}", ckpt.display(), absent(absent_files), tensor_named = named(tensor))]
    InsufficientSlices {
        /// The checkpoint prefix.
        ckpt: PathBuf,
        /// The tensor.
        tensor: String,
        /// Requested slice, as `start,length` / `-` per dimension.
        requested: String,
        /// The stored slices, in brackets (the first 8, then how many in all).
        stored: String,
        /// Elements of the requested slice the stored slices hold.
        held: u64,
        /// Elements of the requested slice.
        wanted: u64,
        /// Files of a sharded V1 save that are missing, any of which may hold the rest (the
        /// first 8).
        absent_files: Vec<PathBuf>,
    },
    /// Two stored slices of a partitioned tensor overlap.
    #[error("{}: tensor {tensor_named}: overlapping stored slices {first} and {second}", ckpt.display(), tensor_named = named(tensor))]
    OverlappingSlices {
        /// The checkpoint (its prefix).
        ckpt: PathBuf,
        /// The tensor.
        tensor: String,
        /// One slice.
        first: String,
        /// The other.
        second: String,
    },
    /// A caller's buffer has the wrong size.
    #[error("{}", buffer_size(tensor, *variable, *elements, *expected, *found))]
    BufferSize {
        /// The tensor, or the variable (or part) whose value the buffer was given for.
        tensor: String,
        /// Whether `tensor` is a variable's name (a trainer's buffer for its value).
        variable: bool,
        /// The buffer's element type, where it was given as typed elements (the message then
        /// counts elements).
        elements: Option<crate::DType>,
        /// Bytes needed.
        expected: u64,
        /// Bytes given.
        found: u64,
    },
    /// A `checkpoint` state file could not be parsed.
    #[error("{}: bad checkpoint state file: {reason}", path.display())]
    BadStateFile {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A variable asked of the store does not exist (one an assignment map names:
    /// [`MappedVariableNotFound`](ErrorKind::MappedVariableNotFound)).
    #[error(
        "variable {name:?} not found in the variable store{}",
        suggest(suggestions)
    )]
    VariableNotFound {
        /// The name asked for.
        name: String,
        /// Close names that do exist.
        suggestions: Vec<String>,
    },
    /// A variable an assignment names as an object (`Target::Variable`) or in a list of parts
    /// does not exist.
    #[error(
        "assignment {key:?}: variable {name:?} not found in the variable store{}",
        suggest(suggestions)
    )]
    MappedVariableNotFound {
        /// The assignment's checkpoint key.
        key: String,
        /// The variable named.
        name: String,
        /// Close names that do exist.
        suggestions: Vec<String>,
    },
    /// An assignment's string target is empty (TensorFlow takes it as the scope `""` and drops
    /// the first letter of every variable name it maps).
    #[error(
        "assignment {key:?} -> \"\": empty target: name a variable, a scope ('scope/') or the \
         root ('/')"
    )]
    EmptyTarget {
        /// The assignment's checkpoint key.
        key: String,
    },
    /// A string target is neither a variable, a partitioned variable, nor usable as a scope.
    #[error("assignment {key:?} -> {target:?}: {target:?} is not a variable or a partitioned variable in the model, and it cannot be a scope because the checkpoint key {key:?} does not end with '/' (scope mappings look like 'old_scope/': 'new_scope/'){}", suggest(suggestions))]
    NotAVariableOrScope {
        /// The checkpoint key of the pair.
        key: String,
        /// The target string.
        target: String,
        /// Close variable names.
        suggestions: Vec<String>,
    },
    /// A checkpoint tensor named by an assignment (directly or through a scope) does not exist.
    #[error("tensor {tensor_named} (for variable {variable:?}, from assignment {key:?} -> {target:?}) not found in checkpoint {}{}{}", ckpt.display(), absent(absent_files), suggest(suggestions), tensor_named = named(tensor))]
    MappedTensorNotFound {
        /// The checkpoint.
        ckpt: PathBuf,
        /// The checkpoint tensor looked for.
        tensor: String,
        /// The variable it was to initialize.
        variable: String,
        /// The assignment's checkpoint key.
        key: String,
        /// The assignment's target.
        target: String,
        /// Close tensor names.
        suggestions: Vec<String>,
        /// Files of a sharded V1 save that are missing, any of which may hold it (the first 8).
        absent_files: Vec<PathBuf>,
    },
    /// A tensor `init_from_checkpoint` found is gone at
    /// [`initialize`](crate::VariableStore::initialize): the checkpoint was written again in
    /// between without it.
    #[error("tensor {tensor_named} (for variable {variable:?}) not found in checkpoint {}: it was there when init_from_checkpoint was called, and the checkpoint has been written again since without it", ckpt.display(), tensor_named = named(tensor))]
    TensorGone {
        /// The checkpoint.
        ckpt: PathBuf,
        /// The checkpoint tensor.
        tensor: String,
        /// The variable it was to initialize (for a part of a partitioned variable: the part).
        variable: String,
    },
    /// A variable and its checkpoint tensor disagree on shape.
    #[error("shape of variable {variable:?} {variable_shape:?} does not match shape of tensor {tensor_named} {tensor_shape:?} in checkpoint {}", ckpt.display(), tensor_named = named(tensor))]
    ShapeMismatch {
        /// The checkpoint.
        ckpt: PathBuf,
        /// The variable (for a partitioned variable: its full name, with its full shape).
        variable: String,
        /// Its shape.
        variable_shape: Vec<u64>,
        /// The checkpoint tensor.
        tensor: String,
        /// Its shape.
        tensor_shape: Vec<u64>,
    },
    /// A variable and its checkpoint tensor disagree on dtype (TensorFlow never casts).
    #[error("dtype of variable {variable:?} ({variable_dtype}) does not match dtype of tensor {tensor_named} ({tensor_dtype}) in checkpoint {}{}", ckpt.display(), hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default(), tensor_named = named(tensor))]
    DtypeMismatch {
        /// The checkpoint.
        ckpt: PathBuf,
        /// The variable.
        variable: String,
        /// Its dtype.
        variable_dtype: crate::DType,
        /// The checkpoint tensor.
        tensor: String,
        /// Its dtype.
        tensor_dtype: crate::DType,
        /// Where the conversion is one the load can make, how to ask for it (the API that
        /// raised the error knows which: `LoadOptions::cast`, or candle's `DtypePolicy`).
        hint: Option<String>,
    },
    /// A list target holds something other than parts of one partitioned variable.
    #[error("assignment {key:?}: {reason}")]
    BadPartList {
        /// The checkpoint key of the pair.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A variable definition is invalid (duplicate name, bad partitions, initializer not valid for the
    /// dtype, ...).
    #[error("variable {name:?}: {reason}")]
    BadVariable {
        /// The variable.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The requested device cannot be used.
    #[error("device {device}: {reason}")]
    DeviceUnavailable {
        /// The device asked for.
        device: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A GPU operation failed during a load.
    #[error("device {device}: {op} failed: {reason}")]
    Device {
        /// The device.
        device: String,
        /// What was being done (and for which variable, where known).
        op: String,
        /// The driver's error.
        reason: String,
    },
    /// Memory for a tensor could not be allocated.
    #[error("cannot allocate {bytes} bytes for tensor {tensor_named}", tensor_named = named(tensor))]
    Allocation {
        /// Bytes asked for.
        bytes: u64,
        /// The tensor or variable.
        tensor: String,
    },
    /// The load was stopped by its [`CancelToken`](crate::CancelToken) (see
    /// [`LoadOptions::cancel_on`](crate::LoadOptions::cancel_on)); nothing it loaded is kept.
    #[error("the load was cancelled (its CancelToken was cancelled); nothing of it counts as initialized")]
    Cancelled,
    /// An error about a candle `Var` (feature `candle`): which one, its shape, its TensorFlow name.
    #[error("candle variable {candle:?} ({layout}; TensorFlow name {tensorflow:?}): {source}{}", hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    CandleVariable {
        /// The `Var`'s name in the `VarMap`.
        candle: String,
        /// The `Var`'s shape and dtype, and how it holds the TensorFlow value (transposed or not).
        layout: String,
        /// The variable name it has in the store (its naming convention's output).
        tensorflow: String,
        /// What is wrong.
        source: Box<Error>,
        /// What the model and the checkpoint suggest went wrong, where they do: a `Linear`
        /// built with in and out swapped, for one.
        hint: Option<String>,
    },
    /// An argument given to the writer or another API is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A checkpoint on object storage could not be read: a request failed after its retries, an
    /// object answered with fewer bytes than asked (`range`: the bytes asked for, end exclusive),
    /// a URL that cannot be used, or a build without the `remote` feature.
    #[error("{url}{}: {reason}", range_text(range))]
    Remote {
        /// The object's URL.
        url: String,
        /// The byte range being read, if any.
        range: Option<(u64, u64)>,
        /// What went wrong.
        reason: String,
    },
    /// Object storage refused access to an object (HTTP 401/403) or has no such object (404). Names
    /// where the credentials came from, never the credentials themselves.
    #[error("{url}: {} (credentials: {credentials}): {reason}", if *not_found { "not found" } else { "access denied" })]
    RemoteAccess {
        /// The object's URL.
        url: String,
        /// 404 (`true`) or 401/403 (`false`).
        not_found: bool,
        /// Where the credentials came from (environment variable names, never values).
        credentials: String,
        /// The store's answer.
        reason: String,
    },
    /// An object on object storage changed between the reads of one checkpoint (its ETag or size
    /// differs from when it was first read, or it no longer exists, which is also
    /// [`is_not_found`](Error::is_not_found)): nothing read from it is used.
    #[error("{url}{}: the object changed since the checkpoint was opened ({what}); nothing read from it is used", range_text(range))]
    RemoteChanged {
        /// The object's URL.
        url: String,
        /// The byte range being read when the change was seen.
        range: Option<(u64, u64)>,
        /// What differs (ETag or size, expected vs found).
        what: String,
    },
}
