//! A tensor as the checkpoint stores it, for the reads of [`Checkpoint`] and for the loads: its
//! stored pieces (the stored slices, or the whole tensor as one piece), the index entry of each,
//! where its bytes lie, and the checks TensorFlow makes before reading them (docs/format.md,
//! restoring a slice). The public reader type keeps none of this in its own API.

use std::borrow::Cow;

use super::checkpoint::{Checkpoint, Inner, TensorInfo};
use crate::base::error::{Error, ErrorKind, Result};
use crate::base::slice::{Region, RegionIndex, Slice};
use crate::format::bundle::Bundle;
use crate::format::index::Entry;

/// One listed tensor and the files behind it.
#[derive(Clone, Copy)]
pub(crate) struct Stored<'c> {
    pub(crate) ckpt: &'c Checkpoint,
    pub(crate) info: &'c TensorInfo,
    id: usize,
}

/// A stored piece of a tensor: a stored slice (or the whole tensor), the box it covers, and its
/// position among the tensor's stored slices.
pub(crate) struct Piece {
    pub slice: Slice,
    pub region: Region,
    pub index: usize,
}

/// A tensor's stored pieces, built once per checkpoint: indexed by their boxes, so that matching
/// k requests against n pieces costs about (n + k) log n rather than n × k (a variable of
/// thousands of parts against a tensor stored in thousands of slices), and checked for overlaps.
pub(crate) struct PieceSet {
    pieces: Vec<Piece>,
    index: RegionIndex,
    /// Two pieces that overlap (positions), if any.
    overlap: Option<(usize, usize)>,
}

impl PieceSet {
    fn new(pieces: Vec<Piece>) -> PieceSet {
        let regions: Vec<Region> = pieces.iter().map(|p| p.region.clone()).collect();
        // As TensorFlow checks: a full extent overlaps whatever the dimension's size (the
        // slices of a tensor with no elements may overlap too).
        let boxes: Vec<Region> = pieces.iter().map(|p| p.slice.overlap_box()).collect();
        let overlap = RegionIndex::first_overlap(&boxes);
        PieceSet {
            index: RegionIndex::of(regions),
            pieces,
            overlap,
        }
    }

    /// Every piece, in the order of the stored slices.
    pub(crate) fn all(&self) -> &[Piece] {
        &self.pieces
    }

    /// The pieces whose box overlaps `want`, in order.
    pub(crate) fn intersecting(&self, want: &Region) -> impl Iterator<Item = &Piece> {
        self.index
            .intersecting(want)
            .into_iter()
            .map(|i| &self.pieces[i])
    }
}

/// Where a stored entry lies: (shard, offset), the order to read tensors in.
pub(crate) type EntryAt = (u32, u64);

/// A stored entry checksummed by a load: (shard, offset, size, CRC32C), so that one value read
/// twice is checked once, and an entry that merely starts where another does is checked too.
pub(crate) type Checked = (u32, u64, u64, u32);

impl Checkpoint {
    /// The tensor `name` as stored, or [`ErrorKind::TensorNotFound`].
    pub(crate) fn stored(&self, name: &str) -> Result<Stored<'_>> {
        self.tensor_id(name).map(|id| self.stored_at(id))
    }

    /// The tensor at position `id` of the listing, as stored.
    pub(crate) fn stored_at(&self, id: usize) -> Stored<'_> {
        Stored {
            ckpt: self,
            info: &self.tensors()[id],
            id,
        }
    }
}

impl<'c> Stored<'c> {
    /// The stored slices, or the whole tensor as one slice when it was saved whole: the one place
    /// that decides it.
    pub(crate) fn slices(&self) -> Cow<'c, [Slice]> {
        if self.info.slices.is_empty() {
            Cow::Owned(vec![Slice::full(self.info.shape.len())])
        } else {
            Cow::Borrowed(&self.info.slices)
        }
    }

    /// Every stored piece with its box, indexed (built on first use, then kept by the
    /// checkpoint).
    pub(crate) fn pieces(&self) -> &'c PieceSet {
        self.ckpt.piece_sets[self.id].get_or_init(|| {
            PieceSet::new(
                self.slices()
                    .iter()
                    .enumerate()
                    .map(|(index, s)| Piece {
                        slice: s.clone(),
                        region: s.region(&self.info.shape),
                        index,
                    })
                    .collect(),
            )
        })
    }

    /// The first two stored pieces that overlap (TensorFlow refuses to read them), if any.
    pub(crate) fn overlap(&self) -> Option<(&'c Piece, &'c Piece)> {
        let set = self.pieces();
        set.overlap.map(|(i, j)| (&set.pieces[i], &set.pieces[j]))
    }

    /// The V2 bundle behind the tensor (`None` for V1 files).
    pub(crate) fn bundle(&self) -> Option<&'c Bundle> {
        match &self.ckpt.inner {
            Inner::V2(b) => Some(b),
            Inner::V1(_) => None,
        }
    }

    /// The index entry holding stored slice `s`: the tensor's own entry when it was saved whole,
    /// else its slice entry, checked against the tensor's dtype and the slice's shape.
    pub(crate) fn entry(&self, b: &'c Bundle, s: &Slice) -> Result<&'c Entry> {
        let info = self.info;
        let bad = |reason: String| -> Error {
            ErrorKind::BadEntry {
                path: b.index_path.clone(),
                tensor: info.name.clone(),
                reason,
            }
            .into()
        };
        if info.slices.is_empty() {
            return self.ckpt.entries[self.id]
                .and_then(|i| b.index.entries.get(i))
                .filter(|e| e.key == info.name.as_bytes())
                .filter(|e| e.slices.is_empty() && e.dtype == info.dtype && e.shape == info.shape)
                .ok_or_else(|| bad("the entry does not match the listing".into()));
        }
        let e = b
            .index
            .get(&crate::format::slice_codec::slice_key(
                info.name.as_bytes(),
                s,
            ))
            .ok_or_else(|| bad(format!("the entry of stored slice {s} is missing")))?;
        let want_shape = s.shape(&info.shape);
        if !e.slices.is_empty() {
            return Err(bad(format!(
                "the entry of stored slice {s} lists slices of its own ({}); a slice entry holds \
                 values, not slices",
                e.slices.len()
            )));
        }
        if e.dtype != info.dtype || e.shape != want_shape {
            return Err(bad(format!(
                "stored slice {s} is {} {:?}, expected {} {:?}",
                e.dtype, e.shape, info.dtype, want_shape
            )));
        }
        Ok(e)
    }

    /// Before `n` elements of box `want` are allocated, checks that the stored bytes behind it can
    /// hold that many (every stored element takes at least one byte), so that a damaged or hostile
    /// index cannot make us allocate more memory than the checkpoint's files hold. Only the stored
    /// slices that intersect `want` are consulted.
    pub(crate) fn check_backing(&self, want: &Region, n: u64) -> Result<()> {
        let stored: u64 = match &self.ckpt.inner {
            Inner::V2(b) => {
                let mut sum = 0u64;
                for p in self.pieces().intersecting(want) {
                    let e = self.entry(b, &p.slice)?;
                    b.check_bounds(e)?;
                    sum = sum.saturating_add(e.size);
                }
                sum
            }
            // A V1 file's blocks may be snappy-compressed, which the SSTable reader lets expand
            // up to 22 times (and refuses beyond): a tensor of zeros may hold far more elements
            // than its file has bytes, as TensorFlow reads it.
            Inner::V1(set) => set.total_len().saturating_mul(22),
        };
        if n > stored {
            return Err(ErrorKind::BadEntry {
                path: self.ckpt.prefix().to_path_buf(),
                tensor: self.info.name.clone(),
                reason: format!("claims {n} elements but only {stored} bytes back it"),
            }
            .into());
        }
        Ok(())
    }

    /// Asks the kernel to start reading into the page cache the stored bytes that boxes `wants`
    /// of the tensor need (the stored slices they overlap: not those of a rank-sharded load's
    /// other parts); a hint that never fails (the read reports any problem).
    pub(crate) fn prefetch(&self, wants: &[Region]) {
        self.each_entry_wanted(wants, Bundle::prefetch);
    }

    /// After the boxes `wants` were read: the pages of the stored bytes they needed leave the
    /// shards' mappings, staying in the page cache (`Bundle::done_with`); a hint.
    pub(crate) fn done_with(&self, wants: &[Region]) {
        self.each_entry_wanted(wants, Bundle::done_with);
    }

    /// `f` on each V2 entry that boxes `wants` of the tensor need (each once).
    fn each_entry_wanted(&self, wants: &[Region], f: impl Fn(&Bundle, &Entry)) {
        let Some(b) = self.bundle() else { return };
        if self.info.slices.is_empty() {
            if let Ok(e) = self.entry(b, &Slice::full(self.info.shape.len())) {
                f(b, e);
            }
            return;
        }
        let mut needed: Vec<usize> = wants
            .iter()
            .flat_map(|w| self.pieces().intersecting(w).map(|p| p.index))
            .collect();
        needed.sort_unstable();
        needed.dedup();
        for i in needed {
            if let Ok(e) = self.entry(b, &self.info.slices[i]) {
                f(b, e);
            }
        }
    }

    /// Where the tensor's bytes start (shard or V1 file, offset): reading tensors in this order
    /// reads the files in order. `None` when the index does not say (a damaged entry: the read
    /// reports it).
    pub(crate) fn position(&self) -> Option<EntryAt> {
        match &self.ckpt.inner {
            Inner::V2(b) => {
                let first = self.slices().first().cloned()?;
                self.entry(b, &first).ok().map(|e| (e.shard, e.offset))
            }
            Inner::V1(set) => {
                let t = set.tensors.get(&self.info.name)?;
                t.slices.first().map(|s| (s.1 as u32, 0))
            }
        }
    }

    /// For a load: box `want` as a copy-on-write mapping of the stored entry that holds exactly
    /// that box, CRC-checked, when that entry has at least `min` bytes; `None` where the value
    /// must be copied (V1 files, big-endian bundles, strings, no stored slice equal to the box, a
    /// small or misaligned entry, or a mapping the system refused).
    ///
    /// The caller has checked the tensor's pieces ([`covering`](Self::covering)) once for all its
    /// requests. `verified` lists the entries already checksummed: a second value of the same entry
    /// is mapped without checksumming it again. Returns the value and whether this call read
    /// (checksummed) the entry.
    pub(crate) fn map_value(
        &self,
        want: &Region,
        min: u64,
        verified: &mut Vec<Checked>,
    ) -> Result<Option<(crate::base::tensor::Bytes, bool)>> {
        let Some((b, e)) = self.map_candidate(want, min)? else {
            return Ok(None);
        };
        // The same bytes under the same checksum: two entries alike in all four need one check;
        // an entry that only shares another's offset needs its own.
        let at = (e.shard, e.offset, e.size, e.crc);
        let seen = verified.contains(&at);
        let mapped = b.map_entry(e, !seen)?;
        if mapped.is_some() && !seen {
            verified.push(at);
        }
        Ok(mapped.map(|m| (m, !seen)))
    }

    /// Whether [`map_value`](Self::map_value) would map box `want` (unless the system refuses
    /// the mapping): the rules it follows, without mapping or reading anything.
    pub(crate) fn mappable(&self, want: &Region, min: u64) -> Result<bool> {
        Ok(self.map_candidate(want, min)?.is_some())
    }

    /// The bundle and entry that hold exactly box `want`, where [`map_value`](Self::map_value)
    /// maps it; `None` where the value must be copied.
    fn map_candidate(&self, want: &Region, min: u64) -> Result<Option<(&Bundle, &Entry)>> {
        let info = self.info;
        let Some(b) = self.bundle() else {
            return Ok(None);
        };
        if info.dtype.size().is_none() || (b.index.big_endian && info.dtype.swap_unit() > 1) {
            return Ok(None);
        }
        let Some(piece) = self.pieces().intersecting(want).find(|p| p.region == *want) else {
            return Ok(None);
        };
        let e = self.entry(b, &piece.slice)?;
        // Small values are cheaper to copy; a value whose offset is not a multiple of its element
        // size would be misaligned in memory (TensorFlow does not pad entries), so it is copied.
        let align = info.dtype.size().unwrap_or(1) as u64;
        if e.size < min.max(1) || e.offset % align != 0 {
            return Ok(None);
        }
        Ok(Some((b, e)))
    }

    /// For the GPU path: each stored piece of a fixed-size tensor of a little-endian V2 bundle,
    /// with its shard mapping, its byte range there (checked against the shard's length) and its
    /// entry's checksum; `None` where the bytes need conversion on the host first (V1 files,
    /// big-endian bundles, strings).
    #[cfg(any(test, feature = "cuda"))]
    pub(crate) fn device_sources(&self) -> Result<Option<Vec<DeviceSource>>> {
        let info = self.info;
        let Some(b) = self.bundle() else {
            return Ok(None);
        };
        if info.dtype.size().is_none() || (b.index.big_endian && info.dtype.swap_unit() > 1) {
            return Ok(None);
        }
        let mut out = Vec::new();
        for p in self.pieces().all() {
            let e = self.entry(b, &p.slice)?;
            let (map, range) = b.device_bytes(e)?;
            out.push(DeviceSource {
                region: p.region.clone(),
                map,
                range,
                crc: e.crc,
                path: b.shard_path(e.shard),
                entry: crate::format::index::key_name(&e.key),
                offset: e.offset,
            });
        }
        Ok(Some(out))
    }
}

/// Where a stored piece's bytes come from on the GPU path.
#[cfg(any(test, feature = "cuda"))]
#[derive(Clone)]
pub(crate) enum SourceBytes {
    /// A local shard's mapping.
    Mapped(std::sync::Arc<crate::base::mmap::MappedFile>),
    /// A shard on object storage, fetched into the staging ring.
    #[cfg(feature = "remote")]
    Remote(std::sync::Arc<crate::remote::RemoteShard>),
}

/// One stored piece as the GPU path reads it (see [`Stored::device_sources`]): `range` is its
/// bytes in the mapping or the object.
#[cfg(any(test, feature = "cuda"))]
pub(crate) struct DeviceSource {
    pub region: Region,
    pub map: SourceBytes,
    pub range: std::ops::Range<usize>,
    pub crc: u32,
    pub path: std::path::PathBuf,
    pub entry: String,
    pub offset: u64,
}
