//! Truncated files become errors, not `SIGBUS` (Linux; elsewhere nothing is caught).
//!
//! Reading a page of a file mapping past the end of the file (the file was truncated after it was
//! mapped) raises `SIGBUS`, which kills the process. On a thread that is reading for the library
//! (a [`Reading`] is alive on that very thread: the caller's, and each pool task that touches a
//! mapping), a handler catches such a fault in a mapping the library registered ([`Guard`]): it
//! maps zeros over the rest of the missing range, so that the read goes on, and marks the mapping
//! faulted. Every read of a mapping checks the mark when it is done ([`Guard::faulted`]) and turns
//! it into an error naming the file, so the zeros never reach a value returned as `Ok`: the read
//! fails, and all-or-nothing discards what it copied.
//!
//! The trainer's code never runs marked: a progress callback and an ownership rule run with the
//! mark lifted ([`paused`]), and so does a thread waiting for parallel work (`par::run`, and
//! `pool.install` in a load), which may run other jobs of its pool meanwhile; each parallel task
//! that reads a mapping marks itself. Inside [`VariableStore::read_values`](crate::VariableStore::read_values),
//! which marks the trainer's closure on purpose, a fault in any watched mapping is reported as an
//! error when the closure returns ([`Reading::repaired`]).
//!
//! Any other thread is not caught: a `TensorView` or a copy-on-write value read by the trainer
//! after the file was truncated still raises `SIGBUS`, even while another thread is in a library
//! call (the README's Memory mapping says why that case cannot be made an error without giving up
//! the mapping: there is no call to fail). A fault the library does not own, or a `SIGBUS` sent
//! by `kill`, goes to the handler that was there before (Rust's own, which reports stack
//! overflows) or to the default action; after a sent signal that the process survives, this
//! handler is put back (Rust's resets the disposition), and a sent signal that was ignored before
//! stays ignored. A handler installed later by someone else replaces this one.

/// Registrations (mappings being watched): enough for every mapping the library keeps at once,
/// shards and up to [`WATCHED_VALUES`] copy-on-write values (a mapping that finds no free slot
/// would not be watched).
#[cfg(target_os = "linux")]
const SLOTS: usize = 1 << 15;
/// The copy-on-write values mapped at once are at most this many (`mmap::max_private_maps`), so
/// that every one is watched, and half the slots are left for shards.
pub(crate) const WATCHED_VALUES: usize = 1 << 14;
/// Threads reading for the library at once: more than a load's most threads
/// (`LoadOptions::threads` takes at most 4,096) plus the callers'.
#[cfg(target_os = "linux")]
const READERS: usize = 8192;

#[cfg(target_os = "linux")]
mod imp {
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use crate::base::par::PerProcess;

    use super::{READERS, SLOTS};

    /// One watched range. `seq` is odd while the slot changes (a seqlock: the handler reads a
    /// consistent `start`/`len` pair without a lock).
    pub(super) struct Slot {
        seq: AtomicUsize,
        start: AtomicUsize,
        len: AtomicUsize,
        pub(super) faulted: AtomicBool,
        used: AtomicBool,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const FREE: Slot = Slot {
        seq: AtomicUsize::new(0),
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
        used: AtomicBool::new(false),
    };

    pub(super) static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
    /// Where the search for a free slot starts (spreads registrations over the table).
    static HINT: AtomicUsize = AtomicUsize::new(0);
    /// The threads reading for the library (their kernel thread ids; 0: free).
    #[allow(clippy::declare_interior_mutable_const)]
    const NOBODY: AtomicI32 = AtomicI32::new(0);
    static READING: [AtomicI32; READERS] = [NOBODY; READERS];
    /// Per entry of READING: faults repaired for its thread, and the last slot repaired + 1.
    #[allow(clippy::declare_interior_mutable_const)]
    const ZERO: AtomicUsize = AtomicUsize::new(0);
    static REPAIRS: [AtomicUsize; READERS] = [ZERO; READERS];
    static LAST_SLOT: [AtomicUsize; READERS] = [ZERO; READERS];
    /// The file of each registered slot (never touched by the handler). Per process: a lock
    /// held by another thread of the parent at a fork would stay held in the child.
    static PATHS: PerProcess<Mutex<HashMap<usize, Arc<Path>>>> = PerProcess::new();
    /// READING's value for an entry whose thread is paused: taken (not 0, which is free), and no
    /// thread's id.
    const PAUSED: i32 = -1;

    fn paths() -> std::sync::MutexGuard<'static, HashMap<usize, Arc<Path>>> {
        let map = PATHS.get_or_try_init(|| Ok::<_, ()>(Mutex::default()));
        let map = map.unwrap_or_else(|()| unreachable!("making an empty map cannot fail"));
        map.lock().unwrap_or_else(|e| e.into_inner())
    }

    thread_local! {
        /// This thread's entry in READING while any `Reading` of it is alive, how many are, and
        /// whether the entry holds the thread's id now (not while paused).
        static MINE: Cell<(Option<usize>, u32, bool)> = const { Cell::new((None, 0, false)) };
    }
    static PAGE: AtomicUsize = AtomicUsize::new(4096);
    /// The disposition of SIGBUS before ours.
    static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

    /// The calling thread's kernel id (async-signal-safe).
    fn tid() -> i32 {
        // SAFETY: gettid takes no argument and cannot fail.
        unsafe { libc::syscall(libc::SYS_gettid) as i32 }
    }

    /// Forks of this process so far, as seen by the child (counted by a `pthread_atfork`
    /// handler): a thread's cached id is its parent's after a fork.
    static FORKS: AtomicUsize = AtomicUsize::new(0);

    thread_local! {
        /// The calling thread's id, with the fork count when it was asked.
        static TID: Cell<(usize, i32)> = const { Cell::new((usize::MAX, 0)) };
    }

    /// [`tid`], asked once per thread (and again in a forked child): marking a thread costs no
    /// system call (each `gettid` was about a third of a 256-byte read's time; this project's
    /// VM, 2026-12-06). A child made by `fork` (whose handlers count it) asks again; one made by
    /// a raw `clone` without them would keep its parent's id, and reads for the library there
    /// would not be caught (std's process spawning clones only to `exec` at once).
    fn my_tid() -> i32 {
        let forks = FORKS.load(Ordering::Acquire);
        TID.with(|t| match t.get() {
            (seen, id) if seen == forks => id,
            _ => {
                let id = tid();
                t.set((forks, id));
                id
            }
        })
    }

    extern "C" fn after_fork_in_child() {
        FORKS.fetch_add(1, Ordering::AcqRel);
    }

    /// Installs the handler (once per process). The previous disposition is recorded before
    /// ours is live, so a fault never finds it missing.
    pub(super) fn install() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: sysconf and sigaction with valid arguments; `previous` is written by the
            // kernel before it is read.
            unsafe {
                let page = libc::sysconf(libc::_SC_PAGESIZE);
                if page > 0 {
                    PAGE.store(page as usize, Ordering::Relaxed);
                }
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                    return;
                }
                let _ = PREVIOUS.set(previous);
                let mut ours: libc::sigaction = std::mem::zeroed();
                ours.sa_sigaction = on_sigbus as *const () as usize;
                ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut ours.sa_mask);
                libc::sigaction(libc::SIGBUS, &ours, std::ptr::null_mut());
                // Registered before any thread caches its id (`reading` installs first).
                libc::pthread_atfork(None, None, Some(after_fork_in_child));
            }
        });
    }

    /// Takes a free slot for `start..start + len`, a mapping of `path`.
    pub(super) fn register(start: usize, len: usize, path: &std::path::Path) -> Option<usize> {
        let from = HINT.fetch_add(1, Ordering::Relaxed);
        let i = (0..SLOTS).map(|k| (from + k) % SLOTS).find(|&i| {
            TABLE[i]
                .used
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })?;
        write(&TABLE[i], start, len);
        paths().insert(i, Arc::from(path));
        Some(i)
    }

    pub(super) fn unregister(i: usize) {
        paths().remove(&i);
        write(&TABLE[i], 0, 0);
        TABLE[i].used.store(false, Ordering::Release);
    }

    /// The file of a registered slot.
    pub(super) fn path_of(i: usize) -> Option<PathBuf> {
        paths().get(&i).map(|p| p.to_path_buf())
    }

    /// Writes a slot's range under its seqlock.
    fn write(s: &Slot, start: usize, len: usize) {
        s.seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        s.faulted.store(false, Ordering::Relaxed);
        s.start.store(start, Ordering::Relaxed);
        s.len.store(len, Ordering::Relaxed);
        s.seq.fetch_add(1, Ordering::Release);
    }

    /// Sets whether the calling thread's entry holds its id (marked) or 0; returns what it was.
    pub(super) fn set_marked(marked: bool) -> bool {
        MINE.with(|m| {
            let (entry, depth, was) = m.get();
            if let Some(i) = entry {
                READING[i].store(if marked { my_tid() } else { PAUSED }, Ordering::Release);
            }
            m.set((entry, depth, marked));
            was
        })
    }

    /// Whether the calling thread is marked as reading for the library now.
    pub(super) fn is_marked() -> bool {
        MINE.with(|m| m.get().2)
    }

    /// Marks the calling thread as reading (nested: one entry per thread); returns whether it
    /// was marked before, for [`end_reading`].
    pub(super) fn begin_reading() -> bool {
        MINE.with(|m| {
            let (mut entry, depth, was) = m.get();
            if depth == 0 {
                let me = my_tid();
                let from = me as usize % READERS;
                entry = (0..READERS).map(|k| (from + k) % READERS).find(|&i| {
                    READING[i]
                        .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                });
            } else if let Some(i) = entry {
                READING[i].store(my_tid(), Ordering::Release);
            }
            m.set((entry, depth + 1, true));
            was
        })
    }

    pub(super) fn end_reading(was: bool) {
        MINE.with(|m| {
            let (entry, depth, _) = m.get();
            let depth = depth.saturating_sub(1);
            if let Some(i) = entry {
                let now = match (depth > 0, was) {
                    (true, true) => my_tid(),
                    (true, false) => PAUSED,
                    (false, _) => 0, // free
                };
                READING[i].store(now, Ordering::Release);
            }
            m.set((entry.filter(|_| depth > 0), depth, depth > 0 && was));
        })
    }

    /// Faults repaired for the calling thread so far, and the file of the last one.
    pub(super) fn repairs() -> (usize, Option<usize>) {
        MINE.with(|m| match m.get().0 {
            Some(i) => (
                REPAIRS[i].load(Ordering::Acquire),
                LAST_SLOT[i].load(Ordering::Acquire).checked_sub(1),
            ),
            None => (0, None),
        })
    }

    /// A slot's range, read consistently; `None` if it changed meanwhile (read again).
    fn range(s: &Slot) -> Option<(usize, usize)> {
        let before = s.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            return None;
        }
        let (start, len) = (
            s.start.load(Ordering::Relaxed),
            s.len.load(Ordering::Relaxed),
        );
        fence(Ordering::Acquire);
        (s.seq.load(Ordering::Relaxed) == before).then_some((start, len))
    }

    /// The handler. Only atomics and system calls (`gettid`, `mmap`, `sigaction`, `raise`);
    /// `errno` is restored on return.
    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; errno is this
        // thread's.
        let (code, addr, errno) = unsafe {
            (
                (*info).si_code,
                (*info).si_addr() as usize,
                *libc::__errno_location(),
            )
        };
        // Only a fault at an address (a read past the end of a mapped file is BUS_ADRERR) on a
        // thread reading for the library is ours.
        let me = tid();
        let entry = READING.iter().position(|r| r.load(Ordering::Acquire) == me);
        if code == libc::BUS_ADRERR {
            if let Some(i) = entry {
                if let Some(slot) = repair(addr) {
                    REPAIRS[i].fetch_add(1, Ordering::AcqRel);
                    LAST_SLOT[i].store(slot + 1, Ordering::Release);
                    // SAFETY: as above.
                    unsafe { *libc::__errno_location() = errno };
                    return;
                }
            }
        }
        chain(sig, info, ctx, from_instruction(code));
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
    }

    /// Maps zeros from the faulting page to the end of every watched range that holds `addr`,
    /// and marks those ranges; the slot of one of them, if any.
    fn repair(addr: usize) -> Option<usize> {
        let page = PAGE.load(Ordering::Relaxed);
        let at = addr & !(page - 1);
        let mut repaired = None;
        for (i, s) in TABLE.iter().enumerate() {
            let (start, len) = loop {
                if let Some(r) = range(s) {
                    break r;
                }
            };
            if len == 0 || addr < start || addr - start >= len {
                continue;
            }
            let end = (start + len).div_ceil(page) * page;
            // Marked before the zeros are mapped: a thread reading the range behind this one
            // reads them without a fault of its own, and must find the range marked when it
            // checks it (the zeros never reach a value returned as `Ok`). If the mapping fails,
            // the fault repeats and ends the process: the mark is then harmless.
            s.faulted.store(true, Ordering::SeqCst);
            // SAFETY: replaces the pages from the faulting one to the end of a range the library
            // maps (registered, and unregistered before it is unmapped) with zeros; the faulting
            // read then re-executes.
            let p = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    end - at,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                repaired = Some(i);
            }
        }
        repaired
    }

    /// Whether a `SIGBUS` of code `code` comes from the faulting instruction (which runs again
    /// when the handler returns): a misaligned access, an address past a mapped file's end, an
    /// object error, or a memory error met by the instruction. Any other code (a signal sent by
    /// `kill` or `sigqueue`, or the kernel's asynchronous `BUS_MCEERR_AO` memory-error notice)
    /// is delivered once.
    fn from_instruction(code: libc::c_int) -> bool {
        matches!(
            code,
            libc::BUS_ADRALN | libc::BUS_ADRERR | libc::BUS_OBJERR | libc::BUS_MCEERR_AR
        )
    }

    /// Passes a signal that is not ours to the previous disposition. `fault` says whether it came
    /// from a faulting instruction (which runs again on return) rather than from `kill`.
    fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void, fault: bool) {
        let Some(prev) = PREVIOUS.get() else { return };
        let handler = prev.sa_sigaction;
        if handler == libc::SIG_IGN && !fault {
            return; // ignored before, ignored now (and this handler stays)
        }
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            // SAFETY: restores the saved disposition; a fault then ends the process when the
            // instruction runs again, as it would have without this module, and a sent signal is
            // raised again (delivered when this handler returns).
            unsafe {
                libc::sigaction(libc::SIGBUS, prev, std::ptr::null_mut());
                if !fault {
                    libc::raise(sig);
                }
            }
            return;
        }
        // SAFETY: calls the handler that was installed before ours, with the arguments the
        // kernel gave (its flags say which signature it has). One installed with `SA_RESETHAND`
        // found the default action in place when it ran, as the kernel would have left it: a
        // handler that returns expecting the fault to end the process then does not loop.
        unsafe {
            if prev.sa_flags & libc::SA_RESETHAND as libc::c_int != 0 {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigemptyset(&mut dfl.sa_mask);
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(handler);
                f(sig, info, ctx);
            } else {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                f(sig);
            }
        }
        // A sent signal the previous handler let the process survive: if that handler reset
        // the disposition (Rust's does, for anything but a stack overflow), this one goes back.
        // (After a fault it must not: the instruction faults again and must end the process.)
        // Nor when that handler raised the signal again to end the process by the default
        // action (the usual way to finish a handler): it is pending, and must find the default.
        if !fault {
            // SAFETY: reads the pending set and the disposition, and installs ours again over
            // the default.
            unsafe {
                let mut pending: libc::sigset_t = std::mem::zeroed();
                let raised = libc::sigpending(&mut pending) == 0
                    && libc::sigismember(&pending, libc::SIGBUS) == 1;
                let mut now: libc::sigaction = std::mem::zeroed();
                if !raised
                    && libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut now) == 0
                    && now.sa_sigaction == libc::SIG_DFL
                {
                    let mut ours: libc::sigaction = std::mem::zeroed();
                    ours.sa_sigaction = on_sigbus as *const () as usize;
                    ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                    libc::sigemptyset(&mut ours.sa_mask);
                    libc::sigaction(libc::SIGBUS, &ours, std::ptr::null_mut());
                }
            }
        }
    }
}

/// A mapped range the handler watches while the library reads; unregistered on drop.
pub(crate) struct Guard {
    #[cfg(target_os = "linux")]
    slot: Option<usize>,
}

impl Guard {
    /// Watches `bytes` (a mapping of `path`).
    pub(crate) fn new(bytes: &[u8], path: &std::path::Path) -> Guard {
        #[cfg(target_os = "linux")]
        {
            if bytes.is_empty() {
                return Guard { slot: None };
            }
            imp::install();
            Guard {
                slot: imp::register(bytes.as_ptr() as usize, bytes.len(), path),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (bytes, path);
            Guard {}
        }
    }

    /// Whether a read found the file shorter than its mapping (the missing pages now read as
    /// zeros: nothing read from this mapping since it was made can be trusted).
    pub(crate) fn faulted(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            // The fence orders the reads of the mapping made before it ahead of the mark's load
            // (on weakly ordered CPUs a read of the zeros could otherwise complete after it).
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            self.slot.is_some_and(|i| {
                imp::TABLE[i]
                    .faulted
                    .load(std::sync::atomic::Ordering::SeqCst)
            })
        }
        #[cfg(not(target_os = "linux"))]
        false
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(i) = self.slot {
            imp::unregister(i);
        }
    }
}

/// The calling thread reads for the library while this is alive: faults in watched mappings on
/// this thread are caught.
pub(crate) struct Reading {
    #[cfg(target_os = "linux")]
    was: bool,
    #[cfg(target_os = "linux")]
    repairs: usize,
    /// Not `Send`: it marks the thread that made it.
    _thread: std::marker::PhantomData<*const ()>,
}

/// Whether the calling thread reads for the library now (a [`Reading`] of it is alive and not
/// [`paused`]): work it hands to other threads reads for the library too.
pub(crate) fn is_reading() -> bool {
    #[cfg(target_os = "linux")]
    return imp::is_marked();
    #[cfg(not(target_os = "linux"))]
    false
}

/// Marks the calling thread as reading for the library until the returned value is dropped.
pub(crate) fn reading() -> Reading {
    #[cfg(target_os = "linux")]
    {
        imp::install();
        let was = imp::begin_reading();
        Reading {
            was,
            repairs: imp::repairs().0,
            _thread: std::marker::PhantomData,
        }
    }
    #[cfg(not(target_os = "linux"))]
    Reading {
        _thread: std::marker::PhantomData,
    }
}

impl Reading {
    /// The file of a mapping found truncated on this thread since this `Reading` began (its
    /// missing pages read as zeros since), if any.
    pub(crate) fn repaired(&self) -> Option<std::path::PathBuf> {
        #[cfg(target_os = "linux")]
        {
            let (now, slot) = imp::repairs();
            if now == self.repairs {
                return None;
            }
            Some(slot.and_then(imp::path_of).unwrap_or_default())
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        imp::end_reading(self.was);
    }
}

/// Lifts the calling thread's mark until the returned value is dropped: for code that is not the
/// library's (a callback), or a wait during which the thread may run other jobs of its pool.
pub(crate) struct Paused {
    #[cfg(target_os = "linux")]
    was: bool,
    _thread: std::marker::PhantomData<*const ()>,
}

/// See [`Paused`].
pub(crate) fn paused() -> Paused {
    Paused {
        #[cfg(target_os = "linux")]
        was: imp::set_marked(false),
        _thread: std::marker::PhantomData,
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        imp::set_marked(self.was);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::base::mmap::MappedFile;
    use std::path::{Path, PathBuf};

    /// A file of 1 MiB of sevens in `dir`, mapped (watched by its own [`Guard`]).
    fn mapped(dir: &Path) -> (MappedFile, PathBuf) {
        let path = dir.join("shard");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        (MappedFile::open(&path).unwrap(), path)
    }

    /// Empties the file under `m` and reads its last byte (a page past the file's new end): on a
    /// thread reading for the library the fault is caught, the byte reads as zero and the mapping
    /// is marked; on any other the process dies of `SIGBUS`.
    fn read_past_the_end(m: &MappedFile, path: &Path) -> u8 {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_len(0).unwrap();
        let bytes = m.bytes();
        // SAFETY: a byte of the live mapping, read once (volatile: the fault must happen here).
        unsafe { std::ptr::read_volatile(&bytes[bytes.len() - 1]) }
    }

    /// Registrations and readers' entries are given back when their guard or reading ends: after
    /// more of each, one after another, than the tables hold, a new mapping is still watched and
    /// a fault on a reading thread still caught (a table that kept them would be full: the fault
    /// would end the process).
    #[test]
    fn slots_and_reader_entries_are_given_back() {
        let tmp = tempfile::tempdir().unwrap();
        let other = vec![1u8; 4096];
        for _ in 0..SLOTS + 100 {
            drop(Guard::new(&other, Path::new("other")));
        }
        for _ in 0..READERS + 100 {
            drop(reading());
            drop(paused()); // outside any reading: takes no entry
        }
        assert!(!is_reading());
        let (m, path) = mapped(tmp.path());
        let r = reading();
        assert_eq!(read_past_the_end(&m, &path), 0);
        assert!(m.intact().is_err());
        assert_eq!(r.repaired(), Some(path));
    }

    /// A reading inside a reading, or inside a pause, ends without unmarking the thread as the
    /// outer one has it: still marked after a nested reading ends (a fault right after it is
    /// caught), still unmarked after one that began in a pause ends while the pause lasts.
    #[test]
    fn nested_readings_and_pauses_leave_the_outer_mark() {
        let tmp = tempfile::tempdir().unwrap();
        let (m, path) = mapped(tmp.path());
        assert!(!is_reading());
        let outer = reading();
        assert!(is_reading());
        {
            let _pause = paused();
            assert!(!is_reading());
            drop(reading());
            assert!(
                !is_reading(),
                "a reading begun in a pause ended: still paused"
            );
        }
        assert!(is_reading());
        drop(reading());
        assert!(
            is_reading(),
            "a nested reading ended: the outer one goes on"
        );
        assert_eq!(outer.repaired(), None);
        assert_eq!(read_past_the_end(&m, &path), 0);
        assert_eq!(outer.repaired(), Some(path));
        assert!(m.intact().is_err());
        {
            let _pause = paused();
            let inner = reading();
            {
                let _again = paused();
                assert!(!is_reading());
            }
            assert!(is_reading());
            drop(inner);
            assert!(!is_reading());
        }
        assert!(is_reading());
        drop(outer);
        assert!(!is_reading());
    }

    /// A fault is caught in the watched range that holds it, and only there: another watched
    /// mapping is neither marked nor repaired (its pages stay those of its file).
    #[test]
    fn only_the_range_that_holds_the_fault_is_marked() {
        let tmp = tempfile::tempdir().unwrap();
        let (m, path) = mapped(tmp.path());
        let (n, n_path) = {
            let p = tmp.path().join("whole");
            std::fs::write(&p, vec![9u8; 1 << 20]).unwrap();
            (MappedFile::open(&p).unwrap(), p)
        };
        let r = reading();
        assert_eq!(read_past_the_end(&m, &path), 0);
        assert!(m.intact().is_err());
        assert!(n.intact().is_ok(), "{}", n_path.display());
        assert!(n.bytes().iter().all(|&b| b == 9));
        assert_eq!(r.repaired(), Some(path));
    }
}
