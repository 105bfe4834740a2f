//! Checkpoints on object storage (feature `remote`): `s3://BUCKET/PATH`, `gs://BUCKET/PATH` and
//! `http(s)://HOST/PATH`, read through Apache Arrow's `object_store` on an internal tokio runtime
//! (the public API stays synchronous).
//!
//! The data path: the index (and a directory's `checkpoint` state file) is fetched once, whole; a
//! data shard is never fetched whole. Each stored entry a read needs is fetched as ranged GETs of
//! [`RemoteOptions::range_bytes`] in parallel, under a [`fetch::Budget`] of
//! `range_bytes × concurrency` bytes shared by the whole load, and each range is checksummed and
//! copied into its destination by the same fused copy as local files (`base::copy`) as it lands;
//! the pieces' CRCs are combined (`crc::combine`) and compared with the index's. Every GET is
//! checked against the size and ETag seen when the shard was first used (and sent with
//! `If-Match` where the ETag is strong), or, from a server that gives no ETag, its
//! `Last-Modified` (to the second), so an object replaced under a load is an error, never a mix
//! of two versions. The arrived bytes are copied on the reading thread alone
//! ([`par::serially`](crate::base::par::serially)): the read holds its permits meanwhile.
//!
//! A V1 checkpoint (SSTable files whose metadata has no byte offset per tensor) is fetched whole
//! when opened, in the same parallel ranges, up to `RemoteOptions::whole_max_bytes`; a sharded V1
//! save's glob is matched against a listing of its "directory". On a GPU, the ranges of a V2
//! shard land in the staging ring (`RemoteShard`).

mod answer;
mod client;
mod env;
pub(crate) mod fetch;
mod location;
mod resolve;
mod runtime;

pub(crate) use runtime::cancel_scope;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use client::{Client, Object};
use fetch::Budget;
use location::Location;
use resolve::{fetch_whole, open_v1, resolve};

use crate::base::copy::{copy_verify, copy_whole, Dst, Held};
use crate::base::crc;
use crate::base::error::{ErrorKind, Result};
use crate::base::slice::Region;
use crate::format::bundle::Bundle;
use crate::format::index::{key_name, BundleIndex, Entry};
use crate::load::RemoteOptions;

/// The remote side of a V2 bundle: its client, the index object as read, and the data shards
/// seen so far.
pub(crate) struct RemoteBundle {
    /// The client and the budget reads run under (replaced by [`configure`](Self::configure)).
    state: Mutex<(Arc<Client>, Arc<Budget>)>,
    index: Arc<Object>,
    /// The checkpoint's prefix as a key (its shards' keys are made from it, never parsed back
    /// from their URLs: a key may hold what a URL cannot, such as `?` and `=` in an S3 key).
    prefix: String,
    shards: Mutex<HashMap<u32, Arc<Object>>>,
}

/// What a URL names: a V2 bundle, or the files of a V1 checkpoint (fetched whole).
pub(crate) enum Opened {
    V2(Box<Bundle>),
    V1 {
        prefix: PathBuf,
        files: Vec<FetchedFile>,
    },
}

/// Opens the checkpoint that `url` names (a prefix, `PREFIX.index`, a data file, a "directory"
/// holding a `checkpoint` state file, or a V1 file or glob such as `model.ckpt-0-?????-of-00002`).
/// With it, the URL of the `checkpoint` state file read when `url` names a directory.
pub(crate) fn open(url: &str, options: &RemoteOptions) -> Result<(Opened, Option<PathBuf>)> {
    options.check()?;
    let loc = Location::parse(url)?;
    let client = Arc::new(Client::new(&loc, options)?);
    let (prefix, index, state) = resolve(&client, &loc)?;
    let state = state.map(|key| PathBuf::from(loc.url(&key)));
    let Some(index) = index else {
        let files = open_v1(&client, &loc, &prefix, options)?;
        let opened = Opened::V1 {
            prefix: PathBuf::from(loc.url(&prefix)),
            files,
        };
        return Ok((opened, state));
    };
    let (index, bytes) = fetch_whole(&client, index, "the checkpoint's index")?;
    let prefix_url = loc.url(&prefix);
    let index_path = PathBuf::from(&index.url);
    let parsed = BundleIndex::parse(&index_path, &bytes)?;
    let budget = Budget::new(options.concurrency, options.max_in_flight_bytes());
    let remote = RemoteBundle {
        state: Mutex::new((client, budget)),
        index,
        prefix: prefix.clone(),
        shards: Mutex::new(HashMap::new()),
    };
    let bundle = Bundle::remote(PathBuf::from(prefix_url), index_path, parsed, remote);
    Ok((Opened::V2(Box::new(bundle)), state))
}

/// A V1 checkpoint file on object storage, fetched whole (V1 metadata has no byte offsets to
/// fetch a tensor by).
pub(crate) struct FetchedFile {
    pub url: PathBuf,
    pub bytes: Vec<u8>,
    client: Arc<Client>,
    obj: Arc<Object>,
}

impl FetchedFile {
    /// Whether the object is still the one fetched (same size and ETag): one HEAD request. A
    /// server that gives no ETag cannot say, and the answer is no.
    pub(crate) fn is_current(&self) -> bool {
        self.client
            .head(self.obj.path.as_ref())
            .is_ok_and(|o| o.same_as(&self.obj))
    }
}

impl RemoteBundle {
    fn state(&self) -> (Arc<Client>, Arc<Budget>) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.0.clone(), s.1.clone())
    }

    /// Reads from now on run with `options` under `budget` (a load shares one budget among its
    /// checkpoints); the client is rebuilt when the retry policy changes.
    pub(crate) fn configure(&self, options: &RemoteOptions, budget: &Arc<Budget>) -> Result<()> {
        options.check()?;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0.options != *options {
            s.0 = Arc::new(Client::new(&s.0.loc, options)?);
        }
        s.1 = budget.clone();
        Ok(())
    }

    /// Reads no longer run under `budget` (a load's, with its cancel token, once the load has
    /// ended): a budget of their own, unless another load configured this checkpoint since.
    pub(crate) fn unconfigure(&self, budget: &Arc<Budget>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::ptr_eq(&s.1, budget) {
            let options = &s.0.options;
            s.1 = Budget::new(options.concurrency, options.max_in_flight_bytes());
        }
    }

    /// Whether the index object is still the one read (same size and ETag): one HEAD request.
    /// A server that gives no ETag cannot say, and the answer is no.
    pub(crate) fn is_current(&self) -> bool {
        let (client, _) = self.state();
        let key = self.index.path.as_ref().to_string();
        client.head(&key).is_ok_and(|o| o.same_as(&self.index))
    }

    /// The shard object of `e` (its size and ETag read on first use).
    fn shard(&self, b: &Bundle, e: &Entry) -> Result<Arc<Object>> {
        if let Some(o) = self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&e.shard)
        {
            return Ok(o.clone());
        }
        let (client, budget) = self.state();
        let url = b.shard_path(e.shard).to_string_lossy().into_owned();
        let key =
            crate::format::bundle::data_path(Path::new(&self.prefix), e.shard, b.index.num_shards)
                .to_string_lossy()
                .into_owned();
        // A cancelled load stops waiting for the answer.
        let obj = client.head_until(&key, budget.cancel()).map_err(|err| {
            if err.is_not_found() {
                ErrorKind::MissingShard {
                    path: PathBuf::from(&url),
                    shard: e.shard,
                    num_shards: b.index.num_shards,
                    tensor: key_name(&e.key),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, err.to_string()),
                }
                .into()
            } else {
                err
            }
        })?;
        // Two threads may have asked at once: the first answer kept is the one every read of
        // this shard is checked against.
        let obj = self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(e.shard)
            .or_insert_with(|| Arc::new(obj))
            .clone();
        Ok(obj)
    }

    /// The shard object of `e` as the GPU ring reads it (bounds checked), with this load's
    /// client and budget.
    #[cfg(any(test, feature = "cuda"))]
    pub(crate) fn gpu_shard(&self, b: &Bundle, e: &Entry) -> Result<RemoteShard> {
        let obj = self.check_bounds(b, e)?;
        let (client, budget) = self.state();
        Ok(RemoteShard {
            client,
            budget,
            obj,
        })
    }

    /// The shard of `e`, with `e`'s bytes checked to lie inside it.
    pub(crate) fn check_bounds(&self, b: &Bundle, e: &Entry) -> Result<Arc<Object>> {
        let obj = self.shard(b, e)?;
        if e.offset + e.size > obj.size {
            return Err(ErrorKind::OutOfBounds {
                path: b.shard_path(e.shard),
                tensor: key_name(&e.key),
                offset: e.offset,
                size: e.size,
                len: obj.size,
            }
            .into());
        }
        Ok(obj)
    }

    /// Fetches bytes `[first.offset, end)` of `first`'s shard in one go (ranged GETs of the load,
    /// within its budget), for a run of adjacent small entries that a batch of the load reads
    /// whole, one after the other: until the returned guard is dropped, their reads on this thread
    /// are served from these bytes (and checksummed as ever) instead of a request each.
    pub(crate) fn fetch_block(&self, b: &Bundle, first: &Entry, end: u64) -> Result<Block> {
        let obj = self.check_bounds(b, first)?;
        if end < first.offset || end > obj.size {
            return Err(ErrorKind::OutOfBounds {
                path: b.shard_path(first.shard),
                tensor: key_name(&first.key),
                offset: first.offset,
                size: end.saturating_sub(first.offset),
                len: obj.size,
            }
            .into());
        }
        let (client, budget) = self.state();
        let mut bytes = vec![0u8; (end - first.offset) as usize];
        let range = first.offset..end;
        fetch::into(
            &client,
            &budget,
            &obj,
            range,
            &mut bytes,
            <[u8]>::copy_from_slice,
        )?;
        let block = (
            self as *const Self as usize,
            first.shard,
            first.offset,
            bytes,
        );
        Ok(Block(BLOCK.with(|b| b.borrow_mut().replace(block))))
    }

    /// `f` with `e`'s bytes when this thread's block holds them, else with `None`. The block is
    /// taken out while `f` runs, so that work `f` hands to other threads of the pool (which may
    /// run another batch on this one meanwhile) never meets it borrowed.
    fn with_block<R>(&self, e: &Entry, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        let taken = BLOCK.with(|b| b.borrow_mut().take());
        let hit = taken.as_ref().and_then(|(bundle, shard, start, bytes)| {
            let inside = *bundle == self as *const Self as usize
                && *shard == e.shard
                && e.offset >= *start
                && e.offset + e.size <= start + bytes.len() as u64;
            inside.then(|| &bytes[(e.offset - start) as usize..][..e.size as usize])
        });
        let out = f(hit);
        if taken.is_some() {
            BLOCK.with(|b| *b.borrow_mut() = taken);
        }
        out
    }

    /// Fetches a fixed-size entry (box `have`, `size`-byte elements) and copies what each
    /// destination needs as the ranges land; returns the CRC32C of all its bytes. A destination
    /// taking the whole entry as stored gets byte ranges; others get ranges that are boxes the
    /// fused copy understands (whole rows, or runs of sub-rows where a row is larger than a
    /// range).
    pub(crate) fn copy_verify(
        &self,
        b: &Bundle,
        e: &Entry,
        have: &Region,
        size: usize,
        dsts: Vec<Dst<'_>>,
    ) -> Result<u32> {
        self.copy_verify_unnamed(b, e, have, size, dsts)
            .map_err(|err| err.reading_tensor(&key_name(&e.key)))
    }

    fn copy_verify_unnamed(
        &self,
        b: &Bundle,
        e: &Entry,
        have: &Region,
        size: usize,
        dsts: Vec<Dst<'_>>,
    ) -> Result<u32> {
        let mut dsts = Some(dsts);
        let from_block = self.with_block(e, |hit| {
            let bytes = hit?;
            Some(copy_verify(bytes, have, size, dsts.take()?))
        });
        if let Some(crc) = from_block {
            return Ok(crc);
        }
        let Some(mut dsts) = dsts else {
            return Ok(0); // unreachable: the destinations are taken only on a hit
        };
        let obj = self.check_bounds(b, e)?;
        let (client, budget) = self.state();
        let step = client.options.range_bytes;
        let whole = matches!(&dsts[..], [d] if d.want == have && d.held == Held::AsStored);
        if whole {
            // Byte ranges straight into the one destination, each piece checksummed and copied
            // as it arrives.
            let ranges = fetch::cut(e.offset, e.offset + e.size, step);
            let mut crcs = vec![(0u32, 0u64); ranges.len()];
            let buf = &mut *dsts[0].buf;
            fetch::stream(&client, &budget, &obj, &ranges, |i, at, bytes| {
                let at = (ranges[i].start - e.offset + at) as usize;
                let c = copy_whole(bytes, &mut buf[at..at + bytes.len()]);
                crcs[i] = (
                    crc::combine(crcs[i].0, c, bytes.len() as u64),
                    crcs[i].1 + bytes.len() as u64,
                );
                Ok(())
            })?;
            return Ok(combine(&crcs));
        }
        if have.rows().filter(|&(_, n)| n > 0 && e.size > 0).is_none() {
            if e.size == 0 {
                return Ok(0);
            }
            // A scalar: one range, whole.
            let ranges = fetch::cut(e.offset, e.offset + e.size, e.size);
            let mut got = 0;
            fetch::stream_whole(&client, &budget, &obj, &ranges, |_, bytes| {
                let dsts = dsts.iter_mut().map(reborrow).collect();
                got = copy_verify(bytes, have, size, dsts);
                Ok(())
            })?;
            return Ok(got);
        }
        // Ranges that are boxes the fused copy understands, each gathered whole (within the
        // budget): runs of indices of the outermost dimension `k` one index of which (with every
        // dimension inside it whole: a "unit") fits in a range. Whole rows (`k` = 0), unless a
        // row is larger than a range.
        let dims = have.dims();
        let (mut k, mut blocks) = (0, 1u64);
        let unit = loop {
            let unit = e.size / (blocks * dims[k].1).max(1);
            if unit <= step || k + 1 == dims.len() {
                break unit.max(1);
            }
            blocks *= dims[k].1;
            k += 1;
        };
        let (len, per) = (dims[k].1, (step / unit).max(1));
        let mut ranges = Vec::new();
        let mut boxes = Vec::new();
        for block in 0..blocks {
            for j in (0..len).step_by(per as usize) {
                let n = per.min(len - j);
                let start = e.offset + (block * len + j) * unit;
                ranges.push(start..start + n * unit);
                boxes.push(have.run_along(k, block, j, n));
            }
        }
        let mut crcs = vec![(0u32, 0u64); ranges.len()];
        fetch::stream_whole(&client, &budget, &obj, &ranges, |i, bytes| {
            let dsts = dsts.iter_mut().map(reborrow).collect();
            crcs[i] = (
                copy_verify(bytes, &boxes[i], size, dsts),
                bytes.len() as u64,
            );
            Ok(())
        })?;
        Ok(combine(&crcs))
    }

    /// The CRC32C of an entry's bytes, fetched in ranges and dropped as they are checksummed.
    pub(crate) fn crc(&self, b: &Bundle, e: &Entry) -> Result<u32> {
        self.crc_unnamed(b, e)
            .map_err(|err| err.reading_tensor(&key_name(&e.key)))
    }

    fn crc_unnamed(&self, b: &Bundle, e: &Entry) -> Result<u32> {
        let obj = self.check_bounds(b, e)?;
        let (client, budget) = self.state();
        let ranges = fetch::cut(e.offset, e.offset + e.size, client.options.range_bytes);
        let mut crcs = vec![(0u32, 0u64); ranges.len()];
        fetch::stream(&client, &budget, &obj, &ranges, |i, _, bytes| {
            let (c, n) = crcs[i];
            crcs[i] = (
                crc::combine(c, crc::serial(bytes), bytes.len() as u64),
                n + bytes.len() as u64,
            );
            Ok(())
        })?;
        Ok(combine(&crcs))
    }

    /// An entry's bytes in one buffer (strings and variants, which are decoded whole).
    pub(crate) fn read_all(&self, b: &Bundle, e: &Entry) -> Result<Vec<u8>> {
        let obj = self.check_bounds(b, e)?;
        let (client, budget) = self.state();
        let mut out = crate::base::mmap::alloc_zeroed(e.size as usize, &key_name(&e.key))?;
        let range = e.offset..e.offset + e.size;
        fetch::into(
            &client,
            &budget,
            &obj,
            range,
            &mut out,
            <[u8]>::copy_from_slice,
        )
        .map_err(|err| err.reading_tensor(&key_name(&e.key)))?;
        Ok(out)
    }
}

/// A run of adjacent small entries fetched in one request (see [`RemoteBundle::fetch_block`]):
/// the bundle's address, the shard, the offset of the first byte, and the bytes.
type Fetched = (usize, u32, u64, Vec<u8>);

thread_local! {
    /// The block of the batch this thread is loading.
    static BLOCK: std::cell::RefCell<Option<Fetched>> = const { std::cell::RefCell::new(None) };
}

/// While alive, reads on this thread of entries inside its block are served from memory; when
/// dropped, the thread's previous block (if a batch was interrupted by this one) is back.
pub(crate) struct Block(Option<Fetched>);

impl Drop for Block {
    fn drop(&mut self) {
        let previous = self.0.take();
        BLOCK.with(|b| *b.borrow_mut() = previous);
    }
}

/// A data shard on object storage, as the GPU's staging ring reads it: byte ranges fetched in
/// parallel ranged GETs straight into a pinned staging buffer (checked against the object's size
/// and ETag as every read is).
#[cfg(any(test, feature = "cuda"))]
pub(crate) struct RemoteShard {
    client: Arc<Client>,
    budget: Arc<Budget>,
    obj: Arc<Object>,
}

#[cfg(any(test, feature = "cuda"))]
impl RemoteShard {
    /// Whether both read the same object.
    pub(crate) fn same(&self, other: &RemoteShard) -> bool {
        Arc::ptr_eq(&self.obj, &other.obj)
    }

    /// The object's URL.
    pub(crate) fn url(&self) -> &str {
        &self.obj.url
    }

    /// Fetches bytes `range` of the object into `dst` (as long as the range), in ranges of the
    /// load's `range_bytes`, several at once within the load's budget.
    pub(crate) fn fetch_into(&self, range: std::ops::Range<u64>, dst: &mut [u8]) -> Result<()> {
        // The staging buffer is read by the GPU only: streaming stores.
        let copy = crate::base::copy::stream_copy;
        fetch::into(&self.client, &self.budget, &self.obj, range, dst, copy)
    }
}

fn reborrow<'a>(d: &'a mut Dst<'_>) -> Dst<'a> {
    Dst {
        buf: &mut *d.buf,
        want: d.want,
        held: d.held,
    }
}

/// The CRC of consecutive pieces from each piece's (CRC, length).
fn combine(crcs: &[(u32, u64)]) -> u32 {
    crcs.iter()
        .fold(0, |acc, &(c, len)| crc::combine(acc, c, len))
}
