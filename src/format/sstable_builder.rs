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

    fn blocks(entries: &[(&[u8], usize)]) -> usize {
        let mut b = TableBuilder::new(1024, false);
        for &(k, n) in entries {
            b.add(k, &vec![7; n]);
        }
        let bytes = b.finish();
        Table::open(Path::new("t"), &bytes).unwrap().num_blocks()
    }

    #[test]
    fn an_entry_of_twice_the_block_size_starts_a_block() {
        // TensorFlow's rule: key + value of at least 2 x 1024 bytes flushes the block before it.
        assert_eq!(blocks(&[(b"a", 1), (b"bb", 2046)]), 2);
        assert_eq!(blocks(&[(b"a", 1), (b"bb", 2045)]), 1);
        // Below that, the entry joins the block (which it then fills).
        assert_eq!(blocks(&[(b"a", 1), (b"bb", 1100)]), 1);
        // Nothing to flush first: one block.
        assert_eq!(blocks(&[(b"bb", 4000)]), 1);
    }

    #[test]
    fn a_block_ends_once_its_size_estimate_reaches_the_block_size() {
        // "a" and 1011 bytes: 5 bytes of lengths and key, 4 of the restart, 4 of the count, 1024
        // in all, so "b" starts a second block; one byte less and "b" joins the first.
        assert_eq!(blocks(&[(b"a", 1011), (b"b", 0)]), 2);
        assert_eq!(blocks(&[(b"a", 1010), (b"b", 0)]), 1);
        // Two restarts: 16 empty values under "k" and a byte (5 bytes, then 4 each sharing "k"),
        // a 17th entry of 941 bytes starting the second restart (947 bytes), 8 of restarts, 4
        // of the count.
        let keys: Vec<[u8; 2]> = (0..18).map(|i| [b'k', i]).collect();
        let entries = |n| {
            let mut e: Vec<(&[u8], usize)> = keys.iter().map(|k| (&k[..], 0)).collect();
            e[16].1 = n;
            blocks(&e)
        };
        assert_eq!((entries(941), entries(940)), (2, 1));
    }

    #[test]
    fn a_data_block_restarts_every_16_entries() {
        let mut b = BlockBuilder::new(16);
        let mut offsets = vec![];
        for i in 0..33u8 {
            offsets.push(b.buf.len() as u32);
            b.add(&[b'k', i], b"");
        }
        let block = b.finish();
        let tail = |i: usize| {
            let at = block.len() - 4 * (4 - i);
            u32::from_le_bytes(block[at..at + 4].try_into().unwrap())
        };
        // Three restarts (entries 0, 16 and 32), then their count. Between restarts an entry
        // shares "k" with the one before: 3 bytes of lengths and 1 of key.
        assert_eq!(
            [tail(0), tail(1), tail(2), tail(3)],
            [0, offsets[16], offsets[32], 3]
        );
        assert_eq!(offsets[2] - offsets[1], 4);
        assert_eq!(offsets[17] - offsets[16], 5);
    }

    /// The one data block of a table holding `value` under key `k`, as `finish` makes it.
    fn raw_block(value: &[u8]) -> Vec<u8> {
        let mut b = BlockBuilder::new(16);
        b.add(b"k", value);
        b.finish()
    }

    #[test]
    fn a_block_is_stored_compressed_only_if_that_saves_an_eighth() {
        // Blocks of n zeros then random bytes, searched for the one whose snappy form is exactly
        // 1/8 smaller (kept raw: compressed only when strictly smaller than 7/8), and one that
        // snappy makes larger.
        let mut next = crate::base::xorshift(7);
        let noise: Vec<u8> = (0..4000).map(|_| next(256) as u8).collect();
        let compressed = |raw: &[u8]| snap::raw::Encoder::new().compress_vec(raw).unwrap();
        let stored_raw = |value: &[u8]| {
            let table = |compress| {
                let mut b = TableBuilder::new(1 << 20, compress);
                b.add(b"k", value);
                b.finish()
            };
            table(true) == table(false)
        };
        let mut found = [false; 3];
        for zeros in 0..4000 {
            let mut value = vec![0u8; zeros];
            value.extend_from_slice(&noise[..4000 - zeros]);
            let raw = raw_block(&value);
            let limit = raw.len() - raw.len() / 8;
            let c = compressed(&raw).len();
            let case = match c {
                _ if c > raw.len() => 0,
                _ if c == limit => 1,
                _ if c == limit - 1 => 2,
                _ => continue,
            };
            assert_eq!(
                stored_raw(&value),
                case < 2,
                "{zeros} zeros: {c} of {}",
                raw.len()
            );
            found[case] = true;
        }
        assert_eq!(found, [true; 3]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic]
    fn keys_out_of_order_are_a_bug_of_the_caller() {
        let mut b = TableBuilder::new(1024, false);
        b.add(b"b", b"");
        b.add(b"c", b"");
        b.add(b"a", b"");
    }
}
