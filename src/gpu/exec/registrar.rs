//! The registered-DMA worker (opt-in: `LoadOptions::register_mappings`). It takes batches of
//! mapped units, page-locks their pages in place (read-only registration), queues copies straight
//! from the page cache, and checksums the same bytes on the CPU while the DMA runs.
//!
//! [`Windows`] keeps the registrations: they never overlap (the driver refuses a page registered
//! twice), so each batch registers only the pages past what is registered already, and a window
//! is undone once every batch that copied from it is complete. Batches complete in order on their
//! lane; two stay in flight. On a load of one device, an undone window's pages then leave this
//! process's mapping (they stay in the page cache) once every checksum that reads them is done
//! ([`GiveBack`]), as the ring's do: the checkpoint is not kept resident beside the values.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::units::{crc_and_copy, pieces, Unit};
use super::{CrcPiece, Link, Shared, UploadSource, LANE_REG};
use crate::base::error::Result;
use crate::base::mmap::MappedFile;

/// A registered range of a mapping: offsets `start..end` of mapping `file`, registered at `ptr`,
/// last used by batch `last_use`.
struct Window {
    file: Arc<MappedFile>,
    /// The registered address.
    ptr: usize,
    start: usize,
    end: usize,
    last_use: u64,
}

/// The live registrations, in file order.
#[derive(Default)]
struct Windows(VecDeque<Window>);

impl Windows {
    /// Where registration must start for pages `[start, ..)` of mapping `file`: past the newest
    /// window when it already covers `start`, else `start`.
    fn first_unregistered(&self, file: &Arc<MappedFile>, start: usize) -> usize {
        match self.0.back() {
            Some(w) if Arc::ptr_eq(&w.file, file) && w.end > start => w.end,
            _ => start,
        }
    }

    /// Records a registration of `file` at `ptr`, offsets `pages`, for batch `batch`.
    fn add(&mut self, file: &Arc<MappedFile>, ptr: usize, pages: Range<usize>, batch: u64) {
        self.0.push_back(Window {
            file: file.clone(),
            ptr,
            start: pages.start,
            end: pages.end,
            last_use: batch,
        });
    }

    /// Marks the windows of mapping `file` past `start` as used by batch `batch`.
    fn used_by(&mut self, file: &Arc<MappedFile>, start: usize, batch: u64) {
        for w in self.0.iter_mut().rev() {
            if !Arc::ptr_eq(&w.file, file) || w.end <= start {
                break;
            }
            w.last_use = batch;
        }
    }

    /// Takes out the windows no batch from `done` on uses.
    fn release(&mut self, done: u64) -> Vec<Window> {
        let mut out = Vec::new();
        while self.0.front().is_some_and(|w| w.last_use < done) {
            out.extend(self.0.pop_front());
        }
        out
    }

    /// Every window.
    fn drain(self) -> impl Iterator<Item = Window> {
        self.0.into_iter()
    }
}

/// Undone windows waiting to give their pages back to the page cache (`MappedFile::done_with`,
/// by [`hand`]) until the checksums of every batch that read them are done too: a checksum
/// still reading a page given back would map it again, and it would stay. Each method returns
/// the windows whose pages can go now. Only on a load of one device (`Shared::releases`):
/// another device's workers may still read the same pages.
#[derive(Default)]
struct GiveBack {
    /// Every batch below `through` is checksummed, and so are those in `ahead`.
    through: u64,
    ahead: BTreeSet<u64>,
    /// Undone windows waiting for the checksums of batches up to their `last_use`.
    waiting: Vec<Window>,
}

impl GiveBack {
    /// The checksum of batch `batch` is done.
    fn checksummed(&mut self, batch: u64) -> Vec<Window> {
        self.ahead.insert(batch);
        while self.ahead.remove(&self.through) {
            self.through += 1;
        }
        self.ready()
    }

    /// Window `w` is unregistered.
    fn undone(&mut self, w: Window) -> Vec<Window> {
        self.waiting.push(w);
        self.ready()
    }

    /// Every checksum is done (or will never run: a batch that failed before its own): every
    /// undone window's pages can go.
    fn finish(&mut self) -> Vec<Window> {
        self.through = u64::MAX;
        self.ready()
    }

    /// Takes out the undone windows whose batches are all checksummed.
    fn ready(&mut self) -> Vec<Window> {
        let through = self.through;
        let (ready, waiting) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| w.last_use < through);
        self.waiting = waiting;
        ready
    }
}

/// Tells `give_back`, if there is one, what happened (`event`), then gives back the pages of the
/// windows that are ready, after unlocking it (a window's `madvise` takes a while; checksum
/// tasks wait on the lock to say they are done). A panic elsewhere leaves its state whole.
fn hand(give_back: Option<&Mutex<GiveBack>>, event: impl FnOnce(&mut GiveBack) -> Vec<Window>) {
    let Some(g) = give_back else { return };
    let ready = event(&mut g.lock().unwrap_or_else(|e| e.into_inner()));
    for w in ready {
        w.file.done_with(w.start..w.end);
    }
}

/// What registering a batch gave.
enum Registered {
    /// Pages from this offset on were registered for this batch (earlier ones by an earlier one).
    From(usize),
    /// The driver refused; the reason.
    Refused(String),
}

/// The registered-DMA worker. Returns the bytes it carried, why it stopped registering (if it
/// did) and the seconds spent registering and unregistering; the units it could not take go to
/// the ring.
pub(super) fn registrar<L: Link>(link: &L, s: &Shared<'_>) -> Result<(u64, Option<String>, f64)> {
    let mut windows = Windows::default();
    let mut spent = 0.0;
    let mut fences: VecDeque<(u64, L::Fence)> = VecDeque::new();
    let mut carried = 0u64;
    let mut reason = None;
    let give_back = s.releases.then(Mutex::<GiveBack>::default);
    let give_back = give_back.as_ref();
    // The scope ends when every checksum task has.
    let ran = rayon::scope(|scope| -> Result<()> {
        let mut batch_no = 0u64;
        while !s.failed.load(Ordering::Relaxed) && !s.no_registration.load(Ordering::Relaxed) {
            s.check_cancelled()?;
            let batch = s.take(s.sizes.reg_batch);
            if batch.is_empty() {
                return Ok(());
            }
            let units = &s.mapped[batch.clone()];
            let t = std::time::Instant::now();
            let registered = register(link, &mut windows, units, batch_no);
            spent += t.elapsed().as_secs_f64();
            let from = match registered {
                Registered::From(from) => from,
                Registered::Refused(why) => {
                    reason = Some(why);
                    s.no_registration.store(true, Ordering::Relaxed);
                    s.give_back(batch);
                    return Ok(());
                }
            };
            carried += issue(link, units, from)?;
            fences.push_back((batch_no, link.fence(LANE_REG)?));
            // Checksum the same bytes while the DMA runs, in the pool, while this thread goes on
            // registering the next batch (pinning is what bounds this path).
            let no = batch_no;
            scope.spawn(move |_| {
                s.add_parts(checksum(units));
                hand(give_back, |g| g.checksummed(no));
            });
            batch_no += 1;
            while fences.len() > 2 {
                retire(link, &mut fences, &mut windows, give_back, &mut spent)?;
            }
        }
        Ok(())
    });
    // Every checksum is done: every window's pages can go once it is undone.
    let drained = drain(link, fences, windows, give_back, ran.is_err(), &mut spent);
    s.fail(ran.and(drained)).map(|()| (carried, reason, spent))
}

/// Registers the pages of `units` (of one mapping, in file order) not registered yet.
fn register<L: Link>(link: &L, windows: &mut Windows, units: &[Unit], batch: u64) -> Registered {
    let UploadSource::Mapped(map) = &units[0].src else {
        unreachable!("the registrar takes mapped units only")
    };
    let bytes = map.bytes();
    let page = crate::base::mmap::page_size();
    let start = units[0].range.start / page * page;
    // Whole pages: the mapping covers the last page of the file entirely. Units of one mapping are
    // in increasing file order (see `units`), so the batch ends with its last.
    let end = units[units.len() - 1].range.end.div_ceil(page) * page;
    let from = windows.first_unregistered(map, start);
    if from < end {
        let ptr = bytes.as_ptr().wrapping_add(from);
        // SAFETY: `from` is page-aligned inside the mapping and `end` ends within its last page;
        // the mapping (held by the unit) outlives the registration, which `drain` undoes before
        // the load returns.
        if let Err(why) = unsafe { link.register(ptr, end - from) } {
            return Registered::Refused(why);
        }
        windows.add(map, ptr as usize, from..end, batch);
    }
    windows.used_by(map, start, batch);
    Registered::From(from)
}

/// Queues the copies of `units` from registered memory; returns the bytes queued. A copy reads
/// from one registration: it is split at `from`, the only window boundary inside the batch.
fn issue<L: Link>(link: &L, units: &[Unit], from: usize) -> Result<u64> {
    let mut queued = 0u64;
    for u in units {
        let bytes = u.src.bytes();
        for c in &u.copies {
            let cut = from.clamp(c.src, c.src + c.len);
            for (a, b) in [(c.src, cut), (cut, c.src + c.len)] {
                if a < b {
                    let dst = c.dst + (a - c.src) as u64;
                    // SAFETY: registered by this batch or an earlier one; unregistered only after
                    // this batch's fence has passed.
                    unsafe { link.copy(LANE_REG, &bytes[a..b], dst)? };
                }
            }
            queued += c.len as u64;
        }
    }
    Ok(queued)
}

/// The checksum pieces of `units`, computed in parallel.
fn checksum(units: &[Unit]) -> Vec<CrcPiece> {
    units
        .iter()
        .flat_map(|u| {
            pieces(&u.range)
                .flat_map_iter(|sub| crc_and_copy(u, sub, None))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits for the oldest batch in flight and undoes the windows no later batch uses (adding the
/// time that took to `spent`), handing each undone one to `give_back`.
fn retire<L: Link>(
    link: &L,
    fences: &mut VecDeque<(u64, L::Fence)>,
    windows: &mut Windows,
    give_back: Option<&Mutex<GiveBack>>,
    spent: &mut f64,
) -> Result<()> {
    let Some((batch, fence)) = fences.pop_front() else {
        return Ok(());
    };
    link.wait(fence)?;
    // Every released window is undone even if one fails (it left `windows`: `drain` would miss it).
    let t = std::time::Instant::now();
    let mut undone = Ok(());
    for w in windows.release(batch + 1) {
        // SAFETY: every batch that copied from it is done.
        let r = unsafe { link.unregister(w.ptr as *const u8) };
        if r.is_ok() {
            hand(give_back, |g| g.undone(w));
        }
        undone = undone.and(r);
    }
    *spent += t.elapsed().as_secs_f64();
    undone
}

/// Waits for every batch still in flight (or the whole device, after a failure), then undoes
/// every registration left (adding the time that took to `spent`), handing each undone one to
/// `give_back`.
fn drain<L: Link>(
    link: &L,
    fences: VecDeque<(u64, L::Fence)>,
    windows: Windows,
    give_back: Option<&Mutex<GiveBack>>,
    failed: bool,
    spent: &mut f64,
) -> Result<()> {
    let mut drained = Ok(());
    for (_, f) in fences {
        drained = drained.and(link.wait(f));
    }
    if drained.is_err() || failed {
        drained = drained.and(link.synchronize());
    }
    let t = std::time::Instant::now();
    for w in windows.drain() {
        // SAFETY: nothing is in flight any more.
        let r = unsafe { link.unregister(w.ptr as *const u8) };
        if r.is_ok() {
            hand(give_back, |g| g.undone(w));
        }
        drained = drained.and(r);
    }
    // Called once the checksums' scope has ended.
    hand(give_back, GiveBack::finish);
    *spent += t.elapsed().as_secs_f64();
    drained
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::emulated::HostLink;

    const MIB: usize = 1 << 20;

    /// A mapped file of `mib` MiB.
    fn mapped(dir: &tempfile::TempDir, mib: usize) -> Arc<MappedFile> {
        let path = dir.path().join("shard");
        std::fs::write(&path, vec![7u8; mib * MIB]).unwrap();
        Arc::new(MappedFile::open(&path).unwrap())
    }

    /// The ranges given back to the page cache so far, as (start, end) (and forgets them).
    fn given_back(file: &MappedFile) -> Vec<(usize, usize)> {
        let advised = std::mem::take(&mut *file.advised.lock().unwrap());
        advised
            .into_iter()
            .filter(|a| a.0 == "dont_need")
            .map(|(_, start, len)| (start, start + len))
            .collect()
    }

    /// Two windows released by one batch; the first unregistration fails: the second is still
    /// undone (found in review: both left `Windows` before the first was undone, and the second
    /// was never unregistered). Only the undone one's pages are given back, and only once the
    /// load is over, as its batch's checksum never ran.
    #[test]
    fn retire_undoes_every_released_window_even_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let file = mapped(&dir, 2);
        let link = HostLink::default();
        let mut windows = Windows::default();
        for i in 0..2 {
            let ptr = file.bytes()[i * MIB..].as_ptr();
            // SAFETY: page-aligned pages of the mapping, which outlives the registrations.
            unsafe { link.register(ptr, MIB) }.unwrap();
            windows.add(&file, ptr as usize, i * MIB..(i + 1) * MIB, 0);
        }
        link.fail_unregister_at.store(1, Ordering::Relaxed);
        let give_back = Mutex::new(GiveBack::default());
        let mut fences = VecDeque::from([(0, link.fence(LANE_REG).unwrap())]);
        let r = retire(&link, &mut fences, &mut windows, Some(&give_back), &mut 0.0);
        assert!(r.is_err());
        // The refused one stays registered (as the driver would leave it); the other is undone.
        assert_eq!(link.still_registered(), 1);
        assert!(given_back(&file).is_empty());
        assert!(drain(&link, fences, windows, Some(&give_back), true, &mut 0.0).is_ok());
        if cfg!(target_os = "linux") {
            assert_eq!(given_back(&file), [(MIB, 2 * MIB)]);
        }
    }

    /// The pages (start, end) of `windows`.
    fn pages(windows: Vec<Window>) -> Vec<(usize, usize)> {
        windows.iter().map(|w| (w.start, w.end)).collect()
    }

    /// An undone window's pages go back once the checksums of every batch up to its last user are
    /// done, in whatever order they end; not before (a checksum still reading would map them
    /// again).
    #[test]
    fn undone_windows_go_back_once_their_checksums_are_done() {
        let dir = tempfile::tempdir().unwrap();
        let file = mapped(&dir, 4);
        let window = |i: usize, last_use: u64| Window {
            file: file.clone(),
            ptr: 0,
            start: i * MIB,
            end: (i + 1) * MIB,
            last_use,
        };
        let mut g = GiveBack::default();
        assert!(g.undone(window(0, 1)).is_empty());
        assert!(g.checksummed(1).is_empty());
        assert_eq!(pages(g.checksummed(0)), [(0, MIB)]);
        assert_eq!(pages(g.undone(window(1, 1))), [(MIB, 2 * MIB)]);
        assert!(g.undone(window(2, 3)).is_empty());
        assert!(g.checksummed(3).is_empty());
        assert!(g.undone(window(3, 2)).is_empty());
        let both = [(2 * MIB, 3 * MIB), (3 * MIB, 4 * MIB)];
        assert_eq!(pages(g.checksummed(2)), both);
        // A window whose batch never checksummed (the load failed) goes at the end.
        assert!(g.undone(window(0, 9)).is_empty());
        assert_eq!(pages(g.finish()), [(0, MIB)]);
    }

    /// Two batches that meet inside a page: the second registers from the first window's end on,
    /// and its checksum reads the shared page, so the first window waits for both checksums.
    #[test]
    fn a_window_whose_last_page_the_next_batch_reads_waits_for_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let file = mapped(&dir, 4);
        let page = crate::base::mmap::page_size();
        let cut = 2 * MIB + 100;
        let unit = |range| Unit {
            src: UploadSource::Mapped(file.clone()),
            range,
            copies: Vec::new(),
            crcs: Vec::new(),
        };
        let link = HostLink::default();
        let mut windows = Windows::default();
        for (batch, range) in [(0, 0..cut), (1, cut..4 * MIB)] {
            let registered = register(&link, &mut windows, &[unit(range)], batch);
            assert!(matches!(registered, Registered::From(_)));
        }
        let spans: Vec<_> = windows
            .0
            .iter()
            .map(|w| (w.start, w.end, w.last_use))
            .collect();
        assert_eq!(
            spans,
            [(0, 2 * MIB + page, 1), (2 * MIB + page, 4 * MIB, 1)]
        );
        let mut g = GiveBack::default();
        for w in windows.release(2) {
            // SAFETY: registered above; nothing copies from it.
            unsafe { link.unregister(w.ptr as *const u8) }.unwrap();
            assert!(g.undone(w).is_empty());
        }
        assert!(g.checksummed(0).is_empty());
        assert_eq!(g.checksummed(1).len(), 2);
    }
}
