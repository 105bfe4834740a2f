//! Filling boxes of a tensor from its stored pieces, as TensorFlow restores a slice
//! (docs/format.md, restoring a slice): the pieces must not overlap and must cover every
//! requested box; each piece that intersects a request is read and verified once, and its
//! intersection with every request is copied into that request's elements.

use super::checkpoint::Inner;
use super::stored::{Piece, PieceSet, Stored};
use crate::base::copy::{copy_box, Dst};
use crate::base::error::{listed, ErrorKind, Result};
use crate::base::slice::{for_each_run, Region, RegionIndex, Slice};
use crate::base::tensor::{ElementsMut, Strings, StringsByRuns};
use crate::format::bundle::EntryBytes;
use crate::format::v1::V1Values;

/// One request: a box of the tensor and the elements it goes to.
pub(crate) type Request<'a> = (Region, ElementsMut<'a>);

/// The verified elements of one stored piece of a fixed-size tensor.
enum PieceValues {
    Bytes(EntryBytes),
    Owned(Vec<u8>),
}

impl<'c> Stored<'c> {
    /// Checks that the stored pieces do not overlap (TensorFlow's check when it restores).
    pub(crate) fn check_overlaps(&self) -> Result<()> {
        match self.overlap() {
            None => Ok(()),
            Some((first, second)) => {
                // In a save of several V1 files, the file of each (a stray copy, say).
                let shown = |p: &Piece| match &self.ckpt.inner {
                    Inner::V1(set) => match set.file_of(&self.info.name, p.index) {
                        Some(file) => format!("{} (in {})", p.slice, file.display()),
                        None => p.slice.to_string(),
                    },
                    Inner::V2(_) => p.slice.to_string(),
                };
                Err(ErrorKind::OverlappingSlices {
                    ckpt: self.ckpt.prefix().to_path_buf(),
                    tensor: self.info.name.clone(),
                    first: shown(first),
                    second: shown(second),
                }
                .into())
            }
        }
    }

    /// The stored pieces, after checking that they do not overlap and that together they cover
    /// every box of `requests`; nothing is read for a request that must fail.
    pub(crate) fn covering(&self, requests: &[&Region]) -> Result<&'c PieceSet> {
        let pieces = self.pieces();
        self.check_overlaps()?;
        for want in requests {
            let covered: u64 = pieces
                .intersecting(want)
                .filter_map(|p| p.region.intersect(want))
                .map(|inter| inter.num_elements().unwrap_or(0))
                .sum();
            let wanted = want.num_elements().unwrap_or(0);
            if covered != wanted {
                let all = pieces.all();
                return Err(ErrorKind::InsufficientSlices {
                    ckpt: self.ckpt.prefix().to_path_buf(),
                    tensor: self.info.name.clone(),
                    requested: region_text(want, &self.info.shape),
                    stored: format!("[{}]", listed(all.iter().map(|p| &p.slice), all.len())),
                    held: covered,
                    wanted,
                    absent_files: self.ckpt.missing_files(),
                }
                .into());
            }
        }
        Ok(pieces)
    }

    /// Fills every request, reading and verifying each stored piece once however many requests
    /// it feeds (re-partitioning reads every stored byte once). Returns the pieces read.
    pub(crate) fn assemble(&self, reqs: &mut [Request<'_>]) -> Result<usize> {
        let _reading = crate::base::sigbus::reading();
        // The common case first: one request for the whole of a tensor saved whole.
        if let (true, [(_, ElementsMut::Bytes(dst))], Some(b)) =
            (self.is_whole_read(reqs), &mut *reqs, self.bundle())
        {
            let e = self.entry(b, &Slice::full(self.info.shape.len()))?;
            b.read_fixed_into(e, dst)?;
            return Ok(1);
        }
        let requests: Vec<&Region> = reqs.iter().map(|r| &r.0).collect();
        let pieces = self.covering(&requests)?;
        self.assemble_from(pieces, reqs)
    }

    /// Whether `reqs` is one request for the whole of a V2 tensor saved whole, into bytes: one
    /// copy of one entry, checksummed as it is copied.
    fn is_whole_read(&self, reqs: &[Request<'_>]) -> bool {
        match reqs {
            [(want, ElementsMut::Bytes(_))] => {
                self.bundle().is_some()
                    && self.info.slices.is_empty()
                    && *want == Region::whole(&self.info.shape)
            }
            _ => false,
        }
    }

    /// [`assemble`](Self::assemble) for a caller's read, which then asks whether a file it read
    /// was written in place meanwhile: pieces copied in part (or decoded) are checksummed whole,
    /// then copied, and a change between the two would give the copy other bytes than those
    /// checked. A tensor saved whole and read whole needs no asking: its copy is checksummed as
    /// it is made. (A load asks once, at its end.)
    pub(crate) fn assemble_read(&self, reqs: &mut [Request<'_>]) -> Result<()> {
        self.assemble(reqs)?;
        if self.is_whole_read(reqs) {
            return Ok(());
        }
        // The files of the pieces this read took (one `stat` each), not every one mapped.
        match &self.ckpt.inner {
            Inner::V2(b) => {
                let mut shards: Vec<u32> = Vec::new();
                for (want, _) in reqs.iter() {
                    for p in self.pieces().intersecting(want) {
                        // Its entry was read by the read that just succeeded.
                        let Ok(e) = self.entry(b, &p.slice) else {
                            continue;
                        };
                        if !shards.contains(&e.shard) {
                            shards.push(e.shard);
                        }
                    }
                }
                b.unchanged(Some(&shards))
            }
            Inner::V1(set) => set.unchanged(Some(&self.info.name)),
        }
    }

    /// [`assemble`](Self::assemble) from pieces already checked by [`covering`](Self::covering).
    pub(crate) fn assemble_from(
        &self,
        pieces: &PieceSet,
        reqs: &mut [Request<'_>],
    ) -> Result<usize> {
        let index = RegionIndex::of(reqs.iter().map(|r| r.0.clone()));
        if self.info.dtype.size().is_none() {
            return self.assemble_strings(pieces, &index, reqs);
        }
        let mut read = 0;
        for p in pieces.all() {
            let users = users(p, &index, reqs);
            if users.is_empty() {
                continue;
            }
            self.copy_piece(p, &users, reqs)?;
            read += 1;
        }
        Ok(read)
    }

    /// Reads stored piece `p` of a fixed-size tensor once and copies its intersection with each
    /// user request (`(request index, intersection)`) into that request's bytes.
    fn copy_piece(
        &self,
        p: &Piece,
        users: &[(usize, Region)],
        reqs: &mut [Request<'_>],
    ) -> Result<()> {
        let info = self.info;
        let values = match &self.ckpt.inner {
            Inner::V2(b) => {
                let e = self.entry(b, &p.slice)?;
                if b.index.big_endian && info.dtype.swap_unit() > 1 {
                    // Swapped into an owned copy first, then copied.
                    PieceValues::Bytes(b.fixed_bytes(e)?)
                } else {
                    // Every user's part copied straight from the mapping, checksum in the same pass.
                    // `users` is in request order: step to each (a slice iterator's `nth` skips
                    // in constant time), so a piece costs its users, not every request.
                    let mut dsts = Vec::with_capacity(users.len());
                    let mut rest = reqs.iter_mut();
                    let mut next = 0;
                    for &(i, _) in users {
                        let Some((want, out)) = rest.nth(i - next) else {
                            break;
                        };
                        next = i + 1;
                        // A string buffer for a fixed-size tensor (no caller makes one) is an
                        // error, as on the other paths: never a buffer left unfilled.
                        let Some((buf, held)) = out.bytes() else {
                            return Err(self.wrong_values());
                        };
                        dsts.push(Dst { buf, want, held });
                    }
                    return b.copy_verify(e, &p.region, dsts);
                }
            }
            Inner::V1(set) => match self.read_v1(set, p)? {
                V1Values::Bytes(b) => PieceValues::Owned(b),
                V1Values::Strings(_) => return Err(self.wrong_values()),
            },
        };
        let size = info.dtype.size().unwrap_or(1);
        for (i, _) in users {
            let (want, out) = &mut reqs[*i];
            let Some((dst, held)) = out.bytes() else {
                return Err(self.wrong_values());
            };
            let src = match &values {
                PieceValues::Bytes(b) => b.as_slice(),
                PieceValues::Owned(b) => b,
            };
            copy_box(src, &p.region, &p.region, size, dst, want, held);
        }
        Ok(())
    }

    /// Fills string requests in two passes over the pieces (so that no more than one piece is
    /// decoded at a time): the lengths of every requested string first, then, with each request's
    /// offsets known, the bytes. A tensor read whole from one piece is decoded once.
    fn assemble_strings(
        &self,
        pieces: &PieceSet,
        index: &RegionIndex,
        reqs: &mut [Request<'_>],
    ) -> Result<usize> {
        let name = &self.info.name;
        let used: Vec<(&Piece, Vec<(usize, Region)>)> = pieces
            .all()
            .iter()
            .map(|p| (p, users(p, index, reqs)))
            .filter(|(_, u)| !u.is_empty())
            .collect();
        if let [(p, users)] = &used[..] {
            if let [(i, inter)] = &users[..] {
                if *inter == p.region && reqs[*i].0 == p.region {
                    let strings = self.piece_strings(p)?;
                    return fill(&mut reqs[*i].1, strings).map(|()| 1);
                }
            }
        }
        let mut out: Vec<StringsByRuns> = reqs
            .iter()
            .map(|r| StringsByRuns::new(r.0.num_elements().unwrap_or(0) as usize, name))
            .collect::<Result<_>>()?;
        for (p, users) in &used {
            let src = self.piece_strings(p)?;
            for (i, inter) in users {
                for_each_run(&p.region, &reqs[*i].0, inter, |r| {
                    out[*i].lengths(&src, r.src, r.dst, r.len)
                });
            }
        }
        for o in &mut out {
            o.offsets(name)?;
        }
        for (p, users) in &used {
            let src = self.piece_strings(p)?;
            for (i, inter) in users {
                for_each_run(&p.region, &reqs[*i].0, inter, |r| {
                    out[*i].bytes(&src, r.src, r.dst, r.len)
                });
            }
        }
        for (req, o) in reqs.iter_mut().zip(out) {
            let strings = o.finish().ok_or_else(|| ErrorKind::BadEntry {
                path: self.ckpt.prefix().to_path_buf(),
                tensor: name.clone(),
                reason: "the stored strings changed while they were read".into(),
            })?;
            fill(&mut req.1, strings)?;
        }
        Ok(used.len())
    }

    /// The decoded, verified strings of stored piece `p`.
    fn piece_strings(&self, p: &Piece) -> Result<Strings> {
        match &self.ckpt.inner {
            Inner::V2(b) => b.read_strings(self.entry(b, &p.slice)?),
            Inner::V1(set) => match self.read_v1(set, p)? {
                V1Values::Strings(v) => Ok(v),
                V1Values::Bytes(_) => Err(self.wrong_values()),
            },
        }
    }

    /// The record of stored piece `p` in a V1 checkpoint.
    fn read_v1(&self, set: &crate::format::v1::V1Set, p: &Piece) -> Result<V1Values> {
        let t = &set.tensors[&self.info.name];
        // The listing keeps the file's order of slices: the piece's position finds its file.
        let file = match t.slices.get(p.index) {
            Some((x, f)) if *x == p.slice => *f,
            _ => t
                .slices
                .iter()
                .find(|(x, _)| *x == p.slice)
                .map_or(0, |(_, f)| *f),
        };
        set.read_slice(&self.info.name, t, &p.slice, file)
    }

    fn wrong_values(&self) -> crate::Error {
        ErrorKind::BadEntry {
            path: self.ckpt.prefix().to_path_buf(),
            tensor: self.info.name.clone(),
            reason: format!(
                "stored values do not match the tensor's dtype {}",
                self.info.dtype
            ),
        }
        .into()
    }
}

/// The requests piece `p` intersects, in order: (request index, intersection). `index` holds the
/// requests' boxes.
fn users(p: &Piece, index: &RegionIndex, reqs: &[Request<'_>]) -> Vec<(usize, Region)> {
    index
        .intersecting(&p.region)
        .into_iter()
        .filter_map(|i| p.region.intersect(&reqs[i].0).map(|inter| (i, inter)))
        .collect()
}

/// Puts `strings` into a string request.
fn fill(out: &mut ElementsMut<'_>, strings: Strings) -> Result<()> {
    match out {
        ElementsMut::Strings(dst) => {
            **dst = strings;
            Ok(())
        }
        ElementsMut::Bytes(_) | ElementsMut::Held(..) => {
            Err(ErrorKind::InvalidArgument("a string tensor read into a byte buffer".into()).into())
        }
    }
}

/// A box in TensorFlow's slice notation: `-` for a whole dimension, else `start,length`, joined
/// by `:`.
fn region_text(r: &Region, shape: &[u64]) -> String {
    let extents = r
        .dims()
        .iter()
        .zip(shape)
        .map(|(&(start, length), &dim)| match (start, length) {
            (0, l) if l == dim => crate::base::slice::Extent::Full,
            _ => crate::base::slice::Extent::Range { start, length },
        })
        .collect();
    Slice::new(extents).to_string()
}
