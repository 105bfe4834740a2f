//! Reading LevelDB-format SSTables as TensorFlow writes them (docs/format.md#3-sstables): footer
//! and magic, block handles, restart arrays with prefix-shared keys, masked CRC32C block trailers,
//! raw-snappy blocks. Bytes in, validated views out: every length is checked before it is used.

use std::borrow::Cow;
use std::path::Path;

use crate::base::crc;
use crate::base::error::{ErrorKind, Result};

pub(crate) const FOOTER_LEN: usize = 48;
pub(crate) const MAGIC: u64 = 0xDB47_7524_8B80_FB57;
pub(crate) const TRAILER_LEN: usize = 5;

/// How many bytes of keys a table may yield per byte it holds. Keys share prefixes, and
/// TensorFlow's table writer stores a whole key at every 16th entry of a block (its restart
/// interval), so a key is never longer than the bytes stored since the last whole one: a block
/// of `B` bytes yields at most `16 B` bytes of keys. A damaged or hostile block whose entries each
/// share a megabyte prefix could otherwise yield terabytes of keys from a few megabytes, each
/// compared and copied (a hang, then memory exhausted).
pub(crate) const KEY_BYTES_PER_BYTE: usize = 64;

/// The most bytes of keys (or of keys built from names, such as slice keys) a table or file of
/// `len` bytes may account for (see [`KEY_BYTES_PER_BYTE`]).
pub(crate) fn key_budget(len: usize) -> usize {
    len.saturating_mul(KEY_BYTES_PER_BYTE).saturating_add(4096)
}

/// Decodes a varint of at most `max` bytes at `*pos`, advancing it.
pub(crate) fn get_varint(buf: &[u8], pos: &mut usize, max: usize) -> Option<u64> {
    let mut result = 0u64;
    for i in 0..max {
        let b = *buf.get(*pos)?;
        *pos += 1;
        result |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(result);
        }
    }
    None
}

/// Appends a varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Offset and stored size (without trailer) of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockHandle {
    pub offset: u64,
    pub size: u64,
}

impl BlockHandle {
    fn decode(buf: &[u8], pos: &mut usize) -> Option<BlockHandle> {
        let offset = get_varint(buf, pos, 10)?;
        let size = get_varint(buf, pos, 10)?;
        Some(BlockHandle { offset, size })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.offset);
        put_varint(out, self.size);
    }
}

/// An opened table: the file's bytes and its parsed index (one handle per data block).
pub(crate) struct Table<'a> {
    path: &'a Path,
    file: &'a [u8],
    /// (separator key, handle of the data block), in key order.
    blocks: Cow<'a, [(Vec<u8>, BlockHandle)]>,
    /// The metaindex block's handle (a table rebuilt from its blocks has none).
    metaindex: Option<BlockHandle>,
}

impl<'a> Table<'a> {
    /// Reads the footer and the index block (checksum verified).
    pub(crate) fn open(path: &'a Path, file: &'a [u8]) -> Result<Table<'a>> {
        if file.len() < FOOTER_LEN {
            return Err(ErrorKind::NotSstable {
                path: path.into(),
                reason: format!(
                    "file is too short to be an sstable: {} bytes, the footer alone is {FOOTER_LEN}",
                    file.len()
                ),
            }
            .into());
        }
        let footer = &file[file.len() - FOOTER_LEN..];
        let magic = u64::from(u32::from_le_bytes(footer[40..44].try_into().unwrap()))
            | (u64::from(u32::from_le_bytes(footer[44..48].try_into().unwrap())) << 32);
        if magic != MAGIC {
            return Err(ErrorKind::NotSstable {
                path: path.into(),
                reason: format!("bad magic number {magic:#018x}, expected {MAGIC:#018x}"),
            }
            .into());
        }
        let footer_offset = (file.len() - FOOTER_LEN) as u64;
        let mut pos = 0;
        let handles = BlockHandle::decode(&footer[..40], &mut pos)
            .and_then(|meta| Some((meta, BlockHandle::decode(&footer[..40], &mut pos)?)));
        let Some((metaindex, index)) = handles else {
            return Err(corrupt(
                path,
                footer_offset,
                "unreadable block handles in the footer",
            ));
        };
        let mut table = Table {
            path,
            file,
            blocks: Cow::Borrowed(&[]),
            metaindex: Some(metaindex),
        };
        let index_block = table.read_block(index)?;
        let mut blocks: Vec<(Vec<u8>, BlockHandle)> = Vec::new();
        Block::new(path, index.offset, &index_block)?.for_each(
            &mut |key: &[u8], value: &[u8]| {
                let mut pos = 0;
                let handle = BlockHandle::decode(value, &mut pos).ok_or_else(|| {
                    corrupt(
                        path,
                        index.offset,
                        "unreadable block handle in the index block",
                    )
                })?;
                // Data blocks follow one another, as TensorFlow's table writer lays them out: an
                // index naming one block many times (a hang: each read and checked again), or
                // blocks out of order or overlapping, is damaged.
                if let Some((_, prev)) = blocks.last() {
                    let prev_end = prev
                        .offset
                        .saturating_add(prev.size)
                        .saturating_add(TRAILER_LEN as u64);
                    if handle.offset < prev_end {
                        return Err(corrupt(
                            path,
                            index.offset,
                            &format!(
                                "the index block names a data block at offset {} that does not \
                                 follow the previous one (offset {}, {} bytes + {TRAILER_LEN} \
                                 trailer)",
                                handle.offset, prev.offset, prev.size
                            ),
                        ));
                    }
                }
                blocks.push((key.to_vec(), handle));
                Ok(())
            },
        )?;
        table.blocks = Cow::Owned(blocks);
        Ok(table)
    }

    /// A table whose index was already read by [`Table::open`] (see [`Table::blocks`]).
    pub(crate) fn from_blocks(
        path: &'a Path,
        file: &'a [u8],
        blocks: &'a [(Vec<u8>, BlockHandle)],
    ) -> Table<'a> {
        Table {
            path,
            file,
            blocks: Cow::Borrowed(blocks),
            metaindex: None,
        }
    }

    /// Reads the metaindex block (bounds, checksum, decompression, entries), which TensorFlow
    /// writes empty and never reads: only `verify` reports what is wrong with it (so that it
    /// checks every block), opening and reading go on. A damage is [`ErrorKind::CorruptTable`]
    /// at the block's offset, saying which block it is.
    pub(crate) fn check_metaindex(&self) -> Result<()> {
        let Some(h) = self.metaindex else {
            return Ok(());
        };
        let checked = self.read_block(h).and_then(|block| {
            Block::new(self.path, h.offset, &block)?.for_each(&mut |_: &[u8], _: &[u8]| Ok(()))
        });
        checked.map_err(|e| {
            let what = match e.into_kind() {
                ErrorKind::BlockChecksum {
                    size,
                    expected,
                    found,
                    ..
                } => format!(
                    "block checksum mismatch (a block of {size} bytes): stored {expected:#010x}, \
                     computed {found:#010x}"
                ),
                ErrorKind::CorruptTable { reason, .. } => reason,
                other => other.to_string(),
            };
            corrupt(
                self.path,
                h.offset,
                &format!(
                    "the metaindex block (which TensorFlow writes empty and never reads) is \
                     damaged: {what}"
                ),
            )
        })
    }

    /// The parsed index, to rebuild the table later without reading it again.
    pub(crate) fn blocks(&self) -> Vec<(Vec<u8>, BlockHandle)> {
        self.blocks.to_vec()
    }

    /// Number of data blocks.
    pub(crate) fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Reads one block: bounds, checksum over stored bytes + type byte, decompression.
    pub(crate) fn read_block(&self, h: BlockHandle) -> Result<Cow<'a, [u8]>> {
        let end = h
            .offset
            .checked_add(h.size)
            .and_then(|e| e.checked_add(TRAILER_LEN as u64));
        let end = match end {
            Some(end) if end <= (self.file.len() - FOOTER_LEN) as u64 => end as usize,
            _ => {
                return Err(corrupt(
                    self.path,
                    h.offset,
                    &format!(
                        "block of {} bytes (+{TRAILER_LEN} trailer) runs past the end of the table data ({} bytes)",
                        h.size,
                        self.file.len() - FOOTER_LEN
                    ),
                ))
            }
        };
        let start = h.offset as usize;
        let stored = &self.file[start..end - TRAILER_LEN];
        let kind = self.file[end - TRAILER_LEN];
        let expected = crc::unmask(u32::from_le_bytes(
            self.file[end - 4..end].try_into().unwrap(),
        ));
        let found = crc32c::crc32c(&self.file[start..end - 4]);
        // Fuzzing builds (`cargo fuzz`, fuzz/) take any block checksum, so that mutated tables
        // reach the parsers behind it. `cargo fuzz` sets `cfg(fuzzing)` for every crate it
        // builds: a project fuzzing its own code with tfckpt as a dependency gets this too.
        if expected != found && !cfg!(fuzzing) {
            return Err(ErrorKind::BlockChecksum {
                path: self.path.into(),
                tensor: None,
                offset: h.offset,
                size: h.size,
                expected,
                found,
            }
            .into());
        }
        match kind {
            0 => Ok(Cow::Borrowed(stored)),
            1 => {
                let len = snap::raw::decompress_len(stored)
                    .map_err(|e| corrupt(self.path, h.offset, &format!("bad snappy block: {e}")))?;
                // Snappy expands at most ~22x; refuse headers that claim more before allocating.
                if len > stored.len().saturating_mul(24) + 64 {
                    return Err(corrupt(
                        self.path,
                        h.offset,
                        &format!(
                            "snappy block claims {len} bytes from {} stored",
                            stored.len()
                        ),
                    ));
                }
                let mut out = vec![0u8; len];
                snap::raw::Decoder::new()
                    .decompress(stored, &mut out)
                    .map_err(|e| corrupt(self.path, h.offset, &format!("bad snappy block: {e}")))?;
                Ok(Cow::Owned(out))
            }
            t => Err(corrupt(self.path, h.offset, &format!("bad block type {t}"))),
        }
    }

    /// Calls `f(key, value)` for every record, in key order.
    /// Keys must be strictly increasing across the whole table (a damaged index that repeats or
    /// reorders blocks fails fast instead of being walked again and again).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let mut last: Option<Vec<u8>> = None;
        for (_, h) in self.blocks.iter() {
            let data = self.read_block(*h)?;
            Block::new(self.path, h.offset, &data)?.for_each(&mut |key: &[u8], value: &[u8]| {
                if let Some(prev) = &last {
                    if key <= prev.as_slice() {
                        return Err(out_of_order(self.path, h.offset, prev, key));
                    }
                }
                match &mut last {
                    Some(prev) => {
                        prev.clear();
                        prev.extend_from_slice(key);
                    }
                    None => last = Some(key.to_vec()),
                }
                f(key, value)
            })?;
        }
        Ok(())
    }

    /// Point lookup through `cache`: a block of [`BlockCache::MIN_RECORDS`] records or more is
    /// kept there after its first read, as a copy of its checked (and decompressed) contents with
    /// its records indexed by key, so that reading the n records of one block costs n log n
    /// rather than n × the block. Values come from that copy, the bytes the checksum passed, so a
    /// file changed in place afterwards is never read unchecked (and one deleted or renamed over
    /// is still read, as for V2). Other blocks are read and checked at every lookup.
    pub(crate) fn get_cached(
        &self,
        key: &[u8],
        cache: &BlockCache,
    ) -> Result<Option<Cow<'a, [u8]>>> {
        let i = self.blocks.partition_point(|(sep, _)| sep.as_slice() < key);
        let Some(&(_, h)) = self.blocks.get(i) else {
            return Ok(None);
        };
        if let Some(records) = cache.get(i) {
            return Ok(records.find(key).map(|v| Cow::Owned(v.to_vec())));
        }
        let data = self.read_block(h)?;
        let block = Block::new(self.path, h.offset, &data)?;
        let mut entries: Vec<(Box<[u8]>, usize, usize)> = Vec::new();
        block.for_each_at(&mut |k: &[u8], start, len| {
            if let Some(e) = entries.last().filter(|e| k <= &*e.0) {
                return Err(out_of_order(self.path, h.offset, &e.0, k));
            }
            entries.push((k.into(), start, len));
            Ok(())
        })?;
        if entries.len() < BlockCache::MIN_RECORDS {
            let Ok(at) = entries.binary_search_by(|e| (*e.0).cmp(key)) else {
                return Ok(None);
            };
            let range = entries[at].1..entries[at].1 + entries[at].2;
            return Ok(Some(match data {
                Cow::Borrowed(b) => Cow::Borrowed(&b[range]),
                Cow::Owned(v) => Cow::Owned(v[range].to_vec()),
            }));
        }
        // Copied only when kept: a block of one large value is read in place.
        let records = BlockRecords {
            entries,
            contents: std::sync::Arc::from(&*data),
        };
        let value = records.find(key).map(|v| Cow::Owned(v.to_vec()));
        cache.insert(i, records);
        Ok(value)
    }

    /// Point lookup: the value of exactly `key`, if present.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Cow<'a, [u8]>>> {
        // First block whose separator is >= key.
        let i = self.blocks.partition_point(|(sep, _)| sep.as_slice() < key);
        let Some(&(_, h)) = self.blocks.get(i) else {
            return Ok(None);
        };
        let data = self.read_block(h)?;
        let block = Block::new(self.path, h.offset, &data)?;
        let found = block.seek(key)?;
        Ok(found.map(|(start, len)| match &data {
            Cow::Borrowed(b) => Cow::Borrowed(&b[start..start + len]),
            Cow::Owned(v) => Cow::Owned(v[start..start + len].to_vec()),
        }))
    }
}

/// Keys out of order in the block at `offset`: `key` after `prev`, each shown by name (at most
/// 200 characters).
fn out_of_order(path: &Path, offset: u64, prev: &[u8], key: &[u8]) -> crate::Error {
    let shown = |k: &[u8]| {
        let name = crate::format::index::key_name(k);
        match name.char_indices().nth(200) {
            Some((i, _)) => format!("{:?}…", &name[..i]),
            None => crate::base::error::named(&name),
        }
    };
    let how = if key == prev {
        "repeats"
    } else {
        "comes after"
    };
    corrupt(
        path,
        offset,
        &format!(
            "keys are not in increasing order: {} {how} {}",
            shown(key),
            shown(prev)
        ),
    )
}

fn corrupt(path: &Path, offset: u64, reason: &str) -> crate::Error {
    ErrorKind::CorruptTable {
        path: path.into(),
        tensor: None,
        offset,
        reason: reason.to_string(),
    }
    .into()
}

/// The checked contents of one data block and its records indexed by key (see
/// [`Table::get_cached`]).
pub(crate) struct BlockRecords {
    /// (key, value start, value length), in key order.
    entries: Vec<(Box<[u8]>, usize, usize)>,
    /// The block's contents as checked (decompressed where it was compressed).
    contents: std::sync::Arc<[u8]>,
}

impl BlockRecords {
    fn find(&self, key: &[u8]) -> Option<&[u8]> {
        let i = self.entries.binary_search_by(|e| (*e.0).cmp(key)).ok()?;
        let (_, start, len) = &self.entries[i];
        self.contents.get(*start..start + len)
    }
}

/// The blocks of one table kept by [`Table::get_cached`], the oldest dropped first beyond
/// [`BlockCache::MAX_BYTES`] of contents.
#[derive(Default)]
pub(crate) struct BlockCache(std::sync::Mutex<CacheInner>);

#[derive(Default)]
struct CacheInner {
    blocks: std::collections::HashMap<usize, std::sync::Arc<BlockRecords>>,
    order: std::collections::VecDeque<usize>,
    bytes: usize,
}

impl BlockCache {
    /// A block of fewer records is read again at each lookup: that costs at most this many
    /// block reads, and a block holding one large value is never copied.
    pub(crate) const MIN_RECORDS: usize = 16;
    /// The most block contents kept per table.
    pub(crate) const MAX_BYTES: usize = 256 << 20;

    fn get(&self, block: usize) -> Option<std::sync::Arc<BlockRecords>> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner.blocks.get(&block).cloned()
    }

    fn insert(&self, block: usize, records: BlockRecords) {
        let size = records.contents.len();
        if size > Self::MAX_BYTES {
            return;
        }
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if inner.blocks.contains_key(&block) {
            return;
        }
        while inner.bytes + size > Self::MAX_BYTES {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(r) = inner.blocks.remove(&old) {
                inner.bytes -= r.contents.len();
            }
        }
        inner.bytes += size;
        inner.order.push_back(block);
        inner.blocks.insert(block, std::sync::Arc::new(records));
    }
}

/// A parsed block: entries region and restart array.
struct Block<'b> {
    path: &'b Path,
    offset: u64,
    data: &'b [u8],
    /// End of the entries (start of the restart array).
    limit: usize,
    num_restarts: usize,
}

impl<'b> Block<'b> {
    fn new(path: &'b Path, offset: u64, data: &'b [u8]) -> Result<Block<'b>> {
        if data.len() < 4 {
            return Err(corrupt(path, offset, "block shorter than 4 bytes"));
        }
        let n = u32::from_le_bytes(data[data.len() - 4..].try_into().unwrap()) as usize;
        if n > (data.len() - 4) / 4 {
            return Err(corrupt(
                path,
                offset,
                &format!("block of {} bytes claims {n} restart points", data.len()),
            ));
        }
        Ok(Block {
            path,
            offset,
            data,
            limit: data.len() - 4 - 4 * n,
            num_restarts: n,
        })
    }

    fn restart(&self, i: usize) -> usize {
        let p = self.limit + 4 * i;
        u32::from_le_bytes(self.data[p..p + 4].try_into().unwrap()) as usize
    }

    fn bad(&self, at: usize) -> crate::Error {
        corrupt(
            self.path,
            self.offset,
            &format!("bad entry in block at byte {at}"),
        )
    }

    /// Decodes the entry at `pos` given the previous key; returns (new pos, value start, value len).
    fn decode(&self, pos: usize, key: &mut Vec<u8>) -> Result<(usize, usize, usize)> {
        let mut p = pos;
        let entries = &self.data[..self.limit];
        let shared = get_varint(entries, &mut p, 5).ok_or_else(|| self.bad(pos))? as usize;
        let non_shared = get_varint(entries, &mut p, 5).ok_or_else(|| self.bad(pos))? as usize;
        let value_len = get_varint(entries, &mut p, 5).ok_or_else(|| self.bad(pos))? as usize;
        if shared > key.len() || non_shared + value_len > self.limit - p {
            return Err(self.bad(pos));
        }
        key.truncate(shared);
        key.extend_from_slice(&entries[p..p + non_shared]);
        let value_start = p + non_shared;
        Ok((value_start + value_len, value_start, value_len))
    }

    fn for_each(&self, f: &mut impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        self.for_each_at(&mut |key, start, len| f(key, &self.data[start..start + len]))
    }

    /// Calls `f(key, value start, value length)` for every entry, positions in the block.
    fn for_each_at(&self, f: &mut impl FnMut(&[u8], usize, usize) -> Result<()>) -> Result<()> {
        if self.num_restarts == 0 {
            return Ok(());
        }
        let mut key = Vec::new();
        let mut pos = 0;
        let budget = key_budget(self.data.len());
        let mut keys = 0usize;
        while pos < self.limit {
            let (next, vs, vl) = self.decode(pos, &mut key)?;
            keys = keys.saturating_add(key.len());
            if keys > budget {
                return Err(corrupt(
                    self.path,
                    self.offset,
                    &format!(
                        "the keys of a {}-byte block take more than {budget} bytes (entry at \
                         byte {pos}: prefix compression cannot expand a block TensorFlow wrote \
                         that much)",
                        self.data.len()
                    ),
                ));
            }
            f(&key, vs, vl)?;
            pos = next;
        }
        Ok(())
    }

    /// Finds `target`: binary search over the restart points, then a linear scan.
    fn seek(&self, target: &[u8]) -> Result<Option<(usize, usize)>> {
        if self.num_restarts == 0 {
            return Ok(None);
        }
        let key_at_restart = |i: usize| -> Result<Vec<u8>> {
            let pos = self.restart(i);
            if pos >= self.limit {
                return Err(self.bad(pos));
            }
            let mut key = Vec::new();
            self.decode(pos, &mut key)?;
            Ok(key)
        };
        // Last restart whose key is < target.
        let (mut lo, mut hi) = (0usize, self.num_restarts - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if key_at_restart(mid)?.as_slice() < target {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let mut pos = self.restart(lo);
        if pos > self.limit {
            return Err(self.bad(pos));
        }
        let mut key = Vec::new();
        while pos < self.limit {
            let (next, vs, vl) = self.decode(pos, &mut key)?;
            match key.as_slice().cmp(target) {
                std::cmp::Ordering::Less => pos = next,
                std::cmp::Ordering::Equal => return Ok(Some((vs, vl))),
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block of `keys` (each key's value is the key twice), a restart every `interval`
    /// entries, and the restart array `restarts` when given instead of the real one.
    fn block(keys: &[&[u8]], interval: usize, restarts: Option<&[u32]>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut real = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if i % interval == 0 {
                real.push(out.len() as u32);
            }
            put_varint(&mut out, 0);
            put_varint(&mut out, key.len() as u64);
            put_varint(&mut out, 2 * key.len() as u64);
            out.extend_from_slice(key);
            out.extend_from_slice(key);
            out.extend_from_slice(key);
        }
        if real.is_empty() {
            real.push(0);
        }
        let restarts = restarts.unwrap_or(&real);
        for r in restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(restarts.len() as u32).to_le_bytes());
        out
    }

    /// A file of `blocks` (each stored plain, with its trailer) and an index block naming
    /// `handles` (block `i`'s handle for each `i`) under increasing keys.
    fn raw_table(blocks: &[Vec<u8>], handles: &[usize]) -> Vec<u8> {
        raw_table_with(blocks, |at| handles.iter().map(|&i| at[i]).collect())
    }

    /// [`raw_table`] whose index names the handles `pick` gives, from the blocks' own.
    fn raw_table_with(
        blocks: &[Vec<u8>],
        pick: impl Fn(&[BlockHandle]) -> Vec<BlockHandle>,
    ) -> Vec<u8> {
        let mut file = Vec::new();
        let put = |file: &mut Vec<u8>, b: &[u8]| {
            let h = BlockHandle {
                offset: file.len() as u64,
                size: b.len() as u64,
            };
            file.extend_from_slice(b);
            file.push(0);
            let crc = crc::mask(crc32c::crc32c(&file[h.offset as usize..]));
            file.extend_from_slice(&crc.to_le_bytes());
            h
        };
        let at: Vec<BlockHandle> = blocks.iter().map(|b| put(&mut file, b)).collect();
        let mut index = Vec::new();
        for (n, h) in pick(&at).into_iter().enumerate() {
            let key = format!("k{n:08}");
            let mut value = Vec::new();
            h.encode(&mut value);
            put_varint(&mut index, 0);
            put_varint(&mut index, key.len() as u64);
            put_varint(&mut index, value.len() as u64);
            index.extend_from_slice(key.as_bytes());
            index.extend_from_slice(&value);
        }
        index.extend_from_slice(&0u32.to_le_bytes());
        index.extend_from_slice(&1u32.to_le_bytes());
        let meta = put(&mut file, &0u32.to_le_bytes());
        let index = put(&mut file, &index);
        let mut footer = Vec::new();
        meta.encode(&mut footer);
        index.encode(&mut footer);
        footer.resize(40, 0);
        footer.extend_from_slice(&(MAGIC as u32).to_le_bytes());
        footer.extend_from_slice(&((MAGIC >> 32) as u32).to_le_bytes());
        file.extend_from_slice(&footer);
        file
    }

    /// An index naming one block many times, or blocks out of order, is damaged: refused at open
    /// (each naming was read, checked and walked again: a large empty block named 90,000 times
    /// from a 1 MB index is terabytes of work).
    #[test]
    fn an_index_must_name_its_data_blocks_in_file_order_once_each() {
        let blocks = [block(&[b"a"], 1, None), block(&[b"b"], 1, None)];
        let good = raw_table(&blocks, &[0, 1]);
        let t = Table::open(Path::new("t"), &good).unwrap();
        let mut keys = Vec::new();
        t.for_each(|k, _| {
            keys.push(k.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
        // A first handle whose end is past u64 (the sum overflowed: a panic in debug builds).
        for huge in [
            BlockHandle {
                offset: 0,
                size: u64::MAX,
            },
            BlockHandle {
                offset: u64::MAX - 3,
                size: 0,
            },
        ] {
            let bytes = raw_table_with(&blocks, |at| vec![huge, at[0]]);
            let e = Table::open(Path::new("t"), &bytes)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("does not follow the previous one"), "{e}");
        }
        for handles in [&[0, 0][..], &[1, 0], &[0, 1, 1]] {
            let e = Table::open(Path::new("t"), &raw_table(&blocks, handles))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("does not follow the previous one"), "{e}");
        }
    }

    /// Keys that share a long prefix, entry after entry, expand a small block into far more key
    /// bytes than a block TensorFlow wrote can hold (it stores a whole key every 16 entries):
    /// refused after a bounded amount of work, where each of 100,000 100-KB keys was built,
    /// compared and copied (10 GB from 1 MB; a hostile block, terabytes). Shared prefixes with
    /// TensorFlow's restart interval read as before.
    #[test]
    fn keys_that_expand_past_what_a_block_can_hold_are_refused() {
        let prefix = vec![b'p'; 100_000];
        let mut data = Vec::new();
        put_varint(&mut data, 0);
        put_varint(&mut data, prefix.len() as u64 + 3);
        put_varint(&mut data, 0);
        data.extend_from_slice(&prefix);
        data.extend_from_slice(b"000");
        for i in 1..100_000u32 {
            put_varint(&mut data, prefix.len() as u64);
            put_varint(&mut data, 3);
            put_varint(&mut data, 0);
            data.extend_from_slice(&i.to_be_bytes()[1..]);
        }
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&1u32.to_le_bytes());
        let mut n = 0;
        let e = Block::new(Path::new("t"), 0, &data)
            .unwrap()
            .for_each(&mut |_, _| {
                n += 1;
                Ok(())
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefix compression cannot expand"), "{e}");
        assert!(n < 1000, "{n} keys handed out");
        // The same keys with a whole key every 16 entries, as TensorFlow writes them.
        let keys: Vec<Vec<u8>> = (0..64u32)
            .map(|i| [&prefix[..], &i.to_be_bytes()[1..]].concat())
            .collect();
        let mut table = crate::format::sstable_builder::TableBuilder::new(1 << 30, false);
        for k in &keys {
            table.add(k, b"v");
        }
        let bytes = table.finish();
        let mut read = Vec::new();
        Table::open(Path::new("t"), &bytes)
            .unwrap()
            .for_each(|k, _| {
                read.push(k.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(read, keys);
    }

    fn seek<'d>(data: &'d [u8], key: &[u8]) -> Result<Option<&'d [u8]>> {
        let b = Block::new(Path::new("t"), 0, data)?;
        Ok(b.seek(key)?.map(|(start, len)| &data[start..start + len]))
    }

    #[test]
    fn seek_finds_each_key_and_nothing_between_or_past_them() {
        let keys: [&[u8]; 5] = [b"b", b"d", b"f", b"h", b"j"];
        for interval in [1, 2, 5] {
            let data = block(&keys, interval, None);
            for key in keys {
                assert_eq!(
                    seek(&data, key).unwrap(),
                    Some([key, key].concat().as_slice())
                );
            }
            // Before, between and after every key; "k" scans to the end of the entries.
            for absent in [&b""[..], b"a", b"c", b"e", b"g", b"i", b"k", b"jj"] {
                assert_eq!(seek(&data, absent).unwrap(), None, "{absent:?}");
            }
        }
    }

    #[test]
    fn a_block_without_entries_holds_nothing() {
        // What LevelDB's builder writes for an empty block: one restart point, at 0.
        let data = block(&[], 1, None);
        assert_eq!(data, [0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(seek(&data, b"").unwrap(), None);
        assert_eq!(seek(&data, b"x").unwrap(), None);
    }

    #[test]
    fn a_restart_point_past_the_entries_is_a_corrupt_block() {
        let keys: [&[u8]; 2] = [b"b", b"d"];
        let limit = block(&keys, 1, None).len() as u32 - 12;
        for restarts in [&[limit + 1][..], &[0, limit], &[0, limit + 3]] {
            let data = block(&keys, 1, Some(restarts));
            let err = seek(&data, b"d").unwrap_err();
            assert!(
                matches!(err.kind(), ErrorKind::CorruptTable { reason, .. }
                    if reason.starts_with("bad entry in block at byte")),
                "{restarts:?}: {err}"
            );
        }
    }
}
