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
        let Some((_metaindex, index)) = handles else {
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
        };
        let index_block = table.read_block(index)?;
        let mut blocks = Vec::new();
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
        }
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
        if expected != found {
            return Err(ErrorKind::BlockChecksum {
                path: self.path.into(),
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
                        return Err(corrupt(
                            self.path,
                            h.offset,
                            "keys are not in increasing order",
                        ));
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

    /// Point lookup through `cache`, which keeps one [`BlockRecords`] per data block of this
    /// table (`cache.len() == num_blocks()`): a block's checksum is checked and its records
    /// indexed the first time a lookup lands in it; later lookups there find the key by binary
    /// search and, for an uncompressed block, take the value from the file without checksumming
    /// the whole block again (so n lookups into one block of n records cost n log n, not n × the
    /// block). The caller makes sure the file has not changed since (its stamp). The contents of
    /// the last compressed block decompressed are kept in `last` (block position, contents), so
    /// that reading a compressed block's records in turn decompresses it once.
    pub(crate) fn get_cached(
        &self,
        key: &[u8],
        cache: &[std::sync::OnceLock<BlockRecords>],
        last: &LastBlock,
    ) -> Result<Option<Cow<'a, [u8]>>> {
        let i = self.blocks.partition_point(|(sep, _)| sep.as_slice() < key);
        let (Some(&(_, h)), Some(cell)) = (self.blocks.get(i), cache.get(i)) else {
            return Ok(None);
        };
        let kept = || {
            let last = last.lock().unwrap_or_else(|e| e.into_inner());
            last.as_ref()
                .filter(|(b, _)| *b == i)
                .map(|(_, d)| d.clone())
        };
        if let Some(records) = cell.get() {
            let Some((start, len)) = records.find(key) else {
                return Ok(None);
            };
            if !records.compressed {
                // Checked when the records were indexed; the same bytes of the same file.
                let start = h.offset as usize + start;
                return Ok(Some(Cow::Borrowed(&self.file[start..start + len])));
            }
            if let Some(contents) = kept() {
                return Ok(Some(Cow::Owned(contents[start..start + len].to_vec())));
            }
        }
        let data = self.read_block(h)?;
        let records = match cell.get() {
            Some(r) => r,
            None => {
                let compressed = matches!(data, Cow::Owned(_));
                let block = Block::new(self.path, h.offset, &data)?;
                let mut entries = Vec::new();
                let mut last_key: Option<Vec<u8>> = None;
                block.for_each_at(&mut |k: &[u8], start, len| {
                    if last_key.as_deref().is_some_and(|l| k <= l) {
                        return Err(corrupt(
                            self.path,
                            h.offset,
                            "keys are not in increasing order",
                        ));
                    }
                    last_key = Some(k.to_vec());
                    entries.push((k.to_vec().into_boxed_slice(), start, len));
                    Ok(())
                })?;
                let _ = cell.set(BlockRecords {
                    entries,
                    compressed,
                });
                cell.get().expect("set above or by another thread")
            }
        };
        let found = records.find(key);
        Ok(match data {
            Cow::Borrowed(b) => found.map(|(start, len)| Cow::Borrowed(&b[start..start + len])),
            Cow::Owned(contents) => {
                let value =
                    found.map(|(start, len)| Cow::Owned(contents[start..start + len].to_vec()));
                *last.lock().unwrap_or_else(|e| e.into_inner()) = Some((i, contents.into()));
                value
            }
        })
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

fn corrupt(path: &Path, offset: u64, reason: &str) -> crate::Error {
    ErrorKind::CorruptTable {
        path: path.into(),
        offset,
        reason: reason.to_string(),
    }
    .into()
}

/// The last compressed block a table's lookups decompressed: (block position, contents).
pub(crate) type LastBlock = std::sync::Mutex<Option<(usize, std::sync::Arc<[u8]>)>>;

/// The records of one data block, indexed by key: where each value lies in the block's contents
/// (see [`Table::get_cached`]).
#[derive(Default)]
pub(crate) struct BlockRecords {
    /// (key, value start, value length), in key order.
    entries: Vec<(Box<[u8]>, usize, usize)>,
    compressed: bool,
}

impl BlockRecords {
    fn find(&self, key: &[u8]) -> Option<(usize, usize)> {
        self.entries
            .binary_search_by(|e| (*e.0).cmp(key))
            .ok()
            .map(|i| (self.entries[i].1, self.entries[i].2))
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
        while pos < self.limit {
            let (next, vs, vl) = self.decode(pos, &mut key)?;
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
