//! The staging-ring worker: fills a few pinned buffers (1 MiB pieces in parallel, each
//! checksummed and copied with streaming stores 16 KiB at a time), queues their copies on two
//! lanes, and reuses a buffer only after its fence. It carries host-owned sources, whatever
//! registration gave up on, and (without registration) every mapped unit; where it is the load's
//! only device, it gives the pages of each mapped unit back to the page cache once read. It pins
//! its buffers only when it has something to carry.

use std::sync::atomic::Ordering;

use rayon::prelude::*;

#[cfg(feature = "remote")]
use super::units::crc_pieces;
use super::units::{crc_and_copy, needed_pieces, pieces, Unit};
use super::{CrcPiece, Link, Shared, UploadSource, PIECE};
use crate::base::error::Result;

/// The staging-ring worker. Returns the bytes it carried, the pinned bytes it used and the
/// seconds it waited for them to be pinned. With `mapped` false (beside registration, which
/// carries the mapped units) it carries only the host-owned units, and sizes its buffers for
/// those alone: a load that registers everything pins nothing, and one with a small host-owned
/// value pins that much. A pass with `mapped` (the only one without registration, the second one
/// with it) also takes what registration gave back or left.
pub(super) fn ring<L: Link>(link: &L, s: &Shared<'_>, mapped: bool) -> Result<(u64, u64, f64)> {
    // Host-owned units first, then (in a pass that carries them) the mapped ones.
    let next = || -> Option<&Unit> {
        {
            let mut o = s.owned_cursor.lock().unwrap_or_else(|e| e.into_inner());
            if *o < s.owned.len() {
                *o += 1;
                return Some(&s.owned[*o - 1]);
            }
        }
        if !mapped {
            return None;
        }
        if let Some(i) = s.fallback.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Some(&s.mapped[i]);
        }
        let r = s.take(0);
        (!r.is_empty()).then(|| &s.mapped[r.start])
    };
    let mut first = next();
    if first.is_none() {
        return Ok((0, 0, 0.0));
    }
    let carried: &[Unit] = if mapped { s.mapped } else { &[] };
    let biggest = carried
        .iter()
        .chain(s.owned)
        .map(|u| u.range.len())
        .max()
        .unwrap_or(0);
    let size = biggest.clamp(1, s.sizes.unit);
    let count = if carried.len() + s.owned.len() > 1 {
        s.sizes.staging
    } else {
        1
    };
    let asked = std::time::Instant::now();
    let mut pinning = 0.0;
    let result = link.with_staging(count, size, |staged| -> Result<u64> {
        pinning = asked.elapsed().as_secs_f64();
        let mut fences: Vec<Option<L::Fence>> = (0..count).map(|_| None).collect();
        // When each buffer was last filled (0: never): the next is the one filled longest ago
        // of those usable now, whose copies are the likeliest to be done. In a fresh process the
        // buffers join one by one as they are page-locked ([`super::Staged`]).
        let mut last = vec![0usize; count];
        let mut carried = 0u64;
        let mut k = 0usize;
        let run = (|| -> Result<()> {
            while let Some(u) = first.take().or_else(next) {
                if s.failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                s.check_cancelled()?;
                let usable = staged.poll().min(count);
                let b = (0..usable).min_by_key(|&i| last[i]).unwrap_or(0);
                let lane = 1 + b % 2;
                k += 1;
                last[b] = k;
                if let Some(f) = fences[b].take() {
                    link.wait(f)?;
                }
                let len = u.range.len();
                let buf = &mut staged.buffer(b)[..len];
                let start = u.range.start;
                let parts: Vec<CrcPiece> = match &u.src {
                    // Object storage: the ranged GETs land in the pinned buffer, and the
                    // checksum reads them there.
                    #[cfg(feature = "remote")]
                    UploadSource::Remote(r) => {
                        r.fetch_into(u.range.start as u64..u.range.end as u64, buf)?;
                        let filled: &[u8] = buf;
                        pieces(&u.range)
                            .flat_map_iter(|sub| crc_pieces(u, sub, filled, start))
                            .collect()
                    }
                    // Bytes no copy takes (a replica's neighbours' shares, the rest of an entry
                    // checked here for another device) are checksummed, not copied.
                    _ => {
                        let needed = needed_pieces(u);
                        let parts = buf
                            .par_chunks_mut(PIECE)
                            .zip(pieces(&u.range))
                            .zip(needed)
                            .flat_map_iter(|((d, sub), n)| crc_and_copy(u, sub, n.then_some(d)))
                            .collect();
                        // Read and checked: its pages leave this process's mapping (staying in
                        // the page cache), as a host load's do, so that a load does not keep the
                        // checkpoint resident beside the pinned ring.
                        if let (UploadSource::Mapped(m), true) = (&u.src, s.releases) {
                            m.done_with(u.range.clone());
                        }
                        parts
                    }
                };
                s.add_parts(parts);
                for c in &u.copies {
                    let off = c.src - start;
                    // SAFETY: staging memory, not written again before this lane's fence.
                    unsafe { link.copy(lane, &buf[off..off + c.len], c.dst)? };
                    carried += c.len as u64;
                }
                fences[b] = Some(link.fence(lane)?);
            }
            Ok(())
        })();
        // The buffers go back to the link only when nothing reads them any more.
        let mut drained = Ok(());
        for f in fences.into_iter().flatten() {
            drained = drained.and(link.wait(f));
        }
        // A failed copy or fence leaves copies queued with no fence: wait for the whole device.
        if drained.is_err() || run.is_err() {
            drained = drained.and(link.synchronize());
        }
        run.and(drained).map(|()| carried)
    });
    let carried = s.fail(result.and_then(|r| r))?;
    Ok((carried, (count * size) as u64, pinning))
}
