//! The file formats, byte by byte (docs/format.md): LevelDB-style SSTables (read and write), the
//! protocol buffers, OrderedCode slice keys, the V2 bundle (index, data shards, string encoding,
//! writer) and V1 tensor-slice files. Depends only on `base`.

pub(crate) mod bundle;
pub(crate) mod index;
pub(crate) mod ordered_code;
pub(crate) mod proto;
pub(crate) mod slice_codec;
pub(crate) mod sstable;
pub(crate) mod sstable_builder;
pub(crate) mod strings;
pub(crate) mod v1;
pub(crate) mod writer;
