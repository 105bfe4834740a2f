//! Writing SSTables the way TensorFlow's `TableBuilder` does (docs/format.md#36-writer-parameters):
//! 256 KiB blocks, restart interval 16 (1 in the index block), shortest separators, an empty
//! metaindex block, optional snappy.

use crate::base::crc;
use crate::format::sstable::{put_varint, BlockHandle, FOOTER_LEN, MAGIC};

/// Builds a table in memory; keys must be added in strictly increasing order.
pub(crate) struct TableBuilder {
    out: Vec<u8>,
    block_size: usize,
    compress: bool,
    data: BlockBuilder,
    index: BlockBuilder,
    last_key: Vec<u8>,
    pending: Option<BlockHandle>,
    count: usize,
}

impl TableBuilder {
    pub(crate) fn new(block_size: usize, compress: bool) -> TableBuilder {
        TableBuilder {
            out: Vec::new(),
            block_size: block_size.max(1),
            compress,
            data: BlockBuilder::new(16),
            index: BlockBuilder::new(1),
            last_key: Vec::new(),
            pending: None,
            count: 0,
        }
    }

    /// Adds a record. Panics in debug builds if keys are not increasing (callers sort them).
    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        debug_assert!(self.count == 0 || key > self.last_key.as_slice());
        // TF flushes before an oversized entry (key + value >= 2 * block_size).
        if !self.data.is_empty() && key.len() + value.len() >= 2 * self.block_size {
            self.flush();
        }
        if let Some(h) = self.pending.take() {
            let sep = shortest_separator(&self.last_key, key);
            self.add_index(&sep, h);
        }
        self.data.add(key, value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.count += 1;
        if self.data.size_estimate() >= self.block_size {
            self.flush();
        }
    }

    fn add_index(&mut self, key: &[u8], h: BlockHandle) {
        let mut v = Vec::with_capacity(20);
        h.encode(&mut v);
        self.index.add(key, &v);
    }

    fn flush(&mut self) {
        if self.data.is_empty() {
            return;
        }
        let raw = self.data.finish();
        let h = self.write_block(&raw, self.compress);
        self.pending = Some(h);
    }

    fn write_block(&mut self, raw: &[u8], compress: bool) -> BlockHandle {
        let compressed = if compress {
            snap::raw::Encoder::new()
                .compress_vec(raw)
                .ok()
                .filter(|c| c.len() < raw.len() - raw.len() / 8)
        } else {
            None
        };
        let (bytes, kind): (&[u8], u8) = match &compressed {
            Some(c) => (c, 1),
            None => (raw, 0),
        };
        let h = BlockHandle {
            offset: self.out.len() as u64,
            size: bytes.len() as u64,
        };
        self.out.extend_from_slice(bytes);
        self.out.push(kind);
        let c = crc32c::crc32c_append(crc32c::crc32c(bytes), &[kind]);
        self.out.extend_from_slice(&crc::mask(c).to_le_bytes());
        h
    }

    /// Finishes the table and returns its bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.flush();
        if let Some(h) = self.pending.take() {
            let succ = short_successor(&self.last_key);
            self.add_index(&succ, h);
        }
        let meta = BlockBuilder::new(16).finish();
        let meta_h = self.write_block(&meta, false);
        let index = self.index.finish();
        let index_h = self.write_block(&index, self.compress);
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        meta_h.encode(&mut footer);
        index_h.encode(&mut footer);
        footer.resize(40, 0);
        footer.extend_from_slice(&(MAGIC as u32).to_le_bytes());
        footer.extend_from_slice(&((MAGIC >> 32) as u32).to_le_bytes());
        self.out.extend_from_slice(&footer);
        self.out
    }
}

struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    interval: usize,
    counter: usize,
    last_key: Vec<u8>,
}

impl BlockBuilder {
    fn new(interval: usize) -> BlockBuilder {
        BlockBuilder {
            buf: Vec::new(),
            restarts: vec![0],
            interval,
            counter: 0,
            last_key: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn size_estimate(&self) -> usize {
        self.buf.len() + 4 * self.restarts.len() + 4
    }

    fn add(&mut self, key: &[u8], value: &[u8]) {
        let mut shared = 0;
        if self.counter < self.interval {
            shared = self
                .last_key
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count();
        } else {
            self.restarts.push(self.buf.len() as u32);
            self.counter = 0;
        }
        put_varint(&mut self.buf, shared as u64);
        put_varint(&mut self.buf, (key.len() - shared) as u64);
        put_varint(&mut self.buf, value.len() as u64);
        self.buf.extend_from_slice(&key[shared..]);
        self.buf.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.counter += 1;
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        for r in &self.restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.restarts = vec![0];
        self.counter = 0;
        self.last_key.clear();
        out
    }
}

/// LevelDB's `FindShortestSeparator`.
fn shortest_separator(last: &[u8], next: &[u8]) -> Vec<u8> {
    let i = last.iter().zip(next).take_while(|(a, b)| a == b).count();
    if i < last.len().min(next.len()) {
        let b = last[i];
        if b < 0xff && b + 1 < next[i] {
            let mut s = last[..=i].to_vec();
            s[i] += 1;
            return s;
        }
    }
    last.to_vec()
}

/// LevelDB's `FindShortSuccessor`.
fn short_successor(last: &[u8]) -> Vec<u8> {
    for (i, &b) in last.iter().enumerate() {
        if b != 0xff {
            let mut s = last[..=i].to_vec();
            s[i] += 1;
            return s;
        }
    }
    last.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::sstable::Table;
    use std::path::Path;

    #[test]
    fn separators() {
        assert_eq!(shortest_separator(b"abc", b"abz"), b"abd");
        assert_eq!(shortest_separator(b"abc", b"abd"), b"abc");
        assert_eq!(shortest_separator(b"ab", b"abc"), b"ab");
        assert_eq!(short_successor(b"v"), b"w");
        assert_eq!(short_successor(b"\xff\xffa"), b"\xff\xffb");
        assert_eq!(short_successor(b"\xff"), b"\xff");
    }

    #[test]
    fn round_trip_many_blocks_with_and_without_snappy() {
        for compress in [false, true] {
            let mut b = TableBuilder::new(1024, compress);
            let keys: Vec<Vec<u8>> = (0..2000u32)
                .map(|i| format!("key/{i:08}").into_bytes())
                .collect();
            for (i, k) in keys.iter().enumerate() {
                b.add(k, &vec![(i % 7) as u8; i % 50]);
            }
            let bytes = b.finish();
            let t = Table::open(Path::new("t"), &bytes).unwrap();
            assert!(t.num_blocks() > 10);
            let mut seen = 0;
            t.for_each(|k, v| {
                assert_eq!(k, keys[seen].as_slice());
                assert_eq!(v.len(), seen % 50);
                seen += 1;
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, keys.len());
            for (i, k) in keys.iter().enumerate().step_by(37) {
                assert_eq!(t.get(k).unwrap().unwrap().len(), i % 50);
            }
            assert!(t.get(b"key/").unwrap().is_none());
            assert!(t.get(b"zzz").unwrap().is_none());
            assert!(t.get(b"key/00000001x").unwrap().is_none());
        }
    }
}
