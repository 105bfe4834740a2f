//! Checking a whole checkpoint: every block and tensor checksum, the structure of partitioned
//! tensors, and the files a sharded V1 save's glob missed, all reported at once.

use rayon::prelude::*;

use super::checkpoint::{Checkpoint, Inner};
use super::resolve;
use crate::base::error::{listed, Error, ErrorKind, Result};
use crate::base::slice::num_elements;
use crate::format::bundle::Bundle;

/// What [`Checkpoint::verify_all`] checked and found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Tensors (or stored slices) whose checksums were checked.
    pub tensors: usize,
    /// Bytes of tensor data checked.
    pub bytes: u64,
    /// Table blocks checked: every block of the index (V2) or of every file (V1), data, index
    /// and metaindex blocks.
    pub blocks: usize,
    /// Every problem found, in file order.
    pub problems: Vec<Error>,
    /// A note on each partitioned tensor whose stored slices leave part of it uncovered (a save
    /// of some of a partitioned variable's parts): no damage, but it reads only within its
    /// slices, never whole (`read` and a safetensors export fail on it).
    pub incomplete: Vec<String>,
}

impl Checkpoint {
    /// Checks every checksum (and, for V1, every record), as [`verify_all`](Self::verify_all)
    /// does, and returns the first problem found as the error.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = self.verify_all();
        if report.problems.is_empty() {
            Ok(report)
        } else {
            Err(report.problems.swap_remove(0))
        }
    }

    /// Checks every block and tensor checksum, in parallel, and reports every problem found.
    pub fn verify_all(&self) -> VerifyReport {
        let mut report = self.verify_files();
        // A file written in place while it was checked: first, as it explains the rest.
        if let Err(e) = self.unchanged() {
            report.problems.insert(0, e);
        }
        report
    }

    fn verify_files(&self) -> VerifyReport {
        let _reading = crate::base::sigbus::reading();
        match &self.inner {
            Inner::V2(b) => self.verify_bundle(b),
            Inner::V1(set) => {
                let (blocks, bytes, mut problems) = match set.verify() {
                    Ok((blocks, bytes)) => (blocks, bytes, vec![]),
                    Err(e) => (0, 0, vec![e]),
                };
                // A shard missing from a glob's match is no damage to the files that are there.
                if resolve::is_glob(self.prefix()) {
                    problems.extend(set.missing_shards());
                }
                // Stored slices that overlap (across files, too): TensorFlow refuses to read them.
                let mut incomplete = Vec::new();
                for (id, info) in self.tensors().iter().enumerate() {
                    if info.is_partitioned() {
                        match self.stored_at(id).check_overlaps() {
                            Err(e) => problems.push(e),
                            Ok(()) => incomplete.extend(self.uncovered(id)),
                        }
                    }
                }
                VerifyReport {
                    tensors: set.tensors.values().map(|t| t.slices.len()).sum(),
                    bytes,
                    blocks,
                    problems,
                    incomplete,
                }
            }
        }
    }

    fn verify_bundle(&self, b: &Bundle) -> VerifyReport {
        let data: Vec<&crate::format::index::Entry> = b
            .index
            .entries
            .iter()
            .filter(|e| e.slices.is_empty())
            .collect();
        let mut problems: Vec<(Option<(u32, u64)>, Error)> = crate::base::par::run(|| {
            data.par_iter()
                .filter_map(|e| {
                    let _reading = crate::base::sigbus::reading();
                    b.verify_entry(e)
                        .err()
                        .map(|err| (Some((e.shard, e.offset)), err))
                })
                .collect()
        });
        // Structure of partitioned tensors: slice entries present and consistent, no overlaps;
        // and whether they cover the whole tensor.
        let mut incomplete = Vec::new();
        for (id, info) in self.tensors().iter().enumerate() {
            if !info.is_partitioned() {
                continue;
            }
            let stored = self.stored_at(id);
            let check = stored.check_overlaps().and_then(|()| {
                info.slices
                    .iter()
                    .try_for_each(|s| stored.entry(b, s).map(drop))
            });
            match check {
                // Before every data problem: a slice entry the index lists wrongly (another
                // shape, say) explains its checksum's mismatch.
                Err(e) => problems.push((None, e)),
                Ok(()) => incomplete.extend(self.uncovered(id)),
            }
        }
        problems.sort_by_key(|p| p.0);
        // The index's metaindex block (checked when the index was read), before the data.
        if let Some((offset, reason)) = &b.index.metaindex {
            let e = ErrorKind::CorruptTable {
                path: b.index_path.clone(),
                tensor: None,
                offset: *offset,
                reason: reason.clone(),
            };
            problems.insert(0, (None, e.into()));
        }
        VerifyReport {
            tensors: data.len(),
            // Declared sizes (each within int64) can add up past u64 in a damaged index.
            bytes: data.iter().fold(0u64, |n, e| n.saturating_add(e.size)),
            // Its data blocks, the index block and the metaindex block.
            blocks: b.index.blocks + 2,
            problems: problems.into_iter().map(|p| p.1).collect(),
            incomplete,
        }
    }

    /// The note of [`VerifyReport::incomplete`] on partitioned tensor `id` (whose stored slices
    /// do not overlap) if they leave part of it uncovered.
    fn uncovered(&self, id: usize) -> Option<String> {
        let info = &self.tensors()[id];
        let total = num_elements(&info.shape)?;
        let pieces = self.stored_at(id).pieces().all();
        let covered = pieces.iter().fold(0u64, |n, p| {
            n.saturating_add(p.region.num_elements().unwrap_or(0))
        });
        (covered < total).then(|| {
            format!(
                "tensor {:?} {:?}: its stored slices [{}] hold {covered} of its {total} \
                 elements; it reads only within them, never whole",
                info.name,
                info.shape,
                listed(pieces.iter().map(|p| &p.slice), pieces.len())
            )
        })
    }
}
