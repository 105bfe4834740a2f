//! Truncated files become errors, not `SIGBUS`.
//!
//! Reading a page of a file mapping past the end of the file (the file was truncated after it was
//! mapped) raises `SIGBUS`, which kills the process. While the library reads a checkpoint (a
//! [`Reading`] is alive on some thread), a handler catches such a fault in a mapping the library
//! registered ([`Guard`]): it maps a page of zeros over the missing page, so that the read goes
//! on, and marks the mapping faulted. Every read of a mapping checks the mark when it is done
//! ([`Guard::faulted`]) and turns it into an error naming the file, so the zeros never reach a
//! value: the read fails, and all-or-nothing discards what it copied.
//!
//! Outside a library call nothing is caught: a `TensorView` or a copy-on-write value read by the
//! trainer after the file was truncated still raises `SIGBUS` (the README's Memory mapping says
//! why that case cannot be caught without giving up the mapping: there is no call to fail). A
//! fault in memory the library did not register goes to the handler that was there before (Rust's
//! own, which reports stack overflows), or to the default action.

/// Registrations (mappings being watched); a mapping that finds no free one is not watched.
#[cfg(unix)]
const SLOTS: usize = 4096;

#[cfg(unix)]
mod imp {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use super::SLOTS;

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
    /// Library reads in progress, on any thread.
    pub(super) static READING: AtomicUsize = AtomicUsize::new(0);
    static PAGE: AtomicUsize = AtomicUsize::new(4096);
    /// The disposition of SIGBUS before ours.
    static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

    /// Installs the handler (once per process).
    pub(super) fn install() {
        PREVIOUS.get_or_init(|| {
            // SAFETY: sysconf and sigaction with valid arguments; `previous` is written by the
            // kernel before it is read.
            unsafe {
                let page = libc::sysconf(libc::_SC_PAGESIZE);
                if page > 0 {
                    PAGE.store(page as usize, Ordering::Relaxed);
                }
                let mut ours: libc::sigaction = std::mem::zeroed();
                ours.sa_sigaction = on_sigbus as *const () as usize;
                ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut ours.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGBUS, &ours, &mut previous) != 0 {
                    previous.sa_sigaction = libc::SIG_DFL;
                }
                previous
            }
        });
    }

    /// Takes a free slot for `start..start + len`.
    pub(super) fn register(start: usize, len: usize) -> Option<usize> {
        let i = TABLE.iter().position(|s| {
            s.used
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })?;
        let s = &TABLE[i];
        s.seq.fetch_add(1, Ordering::AcqRel);
        s.faulted.store(false, Ordering::Relaxed);
        s.start.store(start, Ordering::Relaxed);
        s.len.store(len, Ordering::Relaxed);
        s.seq.fetch_add(1, Ordering::AcqRel);
        Some(i)
    }

    pub(super) fn unregister(i: usize) {
        let s = &TABLE[i];
        s.seq.fetch_add(1, Ordering::AcqRel);
        s.start.store(0, Ordering::Relaxed);
        s.len.store(0, Ordering::Relaxed);
        s.seq.fetch_add(1, Ordering::AcqRel);
        s.used.store(false, Ordering::Release);
    }

    /// The slot whose range holds `addr`, read consistently.
    fn owner(addr: usize) -> Option<&'static Slot> {
        TABLE.iter().find(|s| loop {
            let before = s.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                continue; // changing right now (on another thread): read again
            }
            let (start, len) = (
                s.start.load(Ordering::Relaxed),
                s.len.load(Ordering::Relaxed),
            );
            if s.seq.load(Ordering::Acquire) == before {
                break len > 0 && addr >= start && addr - start < len;
            }
        })
    }

    /// The signal handler. Only atomics and two system calls (`mmap`, `sigaction`).
    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
        let addr = unsafe { (*info).si_addr() } as usize;
        if READING.load(Ordering::Acquire) > 0 {
            if let Some(slot) = owner(addr) {
                let page = PAGE.load(Ordering::Relaxed);
                let at = addr & !(page - 1);
                // SAFETY: replaces one page of a mapping the library owns (registered above and
                // alive until unregistered) with zeros; the faulting read then re-executes.
                let p = unsafe {
                    libc::mmap(
                        at as *mut libc::c_void,
                        page,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                        -1,
                        0,
                    )
                };
                if p != libc::MAP_FAILED {
                    slot.faulted.store(true, Ordering::Release);
                    return;
                }
            }
        }
        chain(sig, info, ctx);
    }

    /// Passes a fault that is not ours to the previous disposition.
    fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        let Some(prev) = PREVIOUS.get() else { return };
        let handler = prev.sa_sigaction;
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            // Back to the default: the faulting instruction runs again and ends the process,
            // as it would have without this module.
            // SAFETY: restores the saved disposition.
            unsafe { libc::sigaction(libc::SIGBUS, prev, std::ptr::null_mut()) };
            return;
        }
        // SAFETY: calls the handler that was installed before ours, with the arguments the
        // kernel gave (its flags say which signature it has).
        unsafe {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(handler);
                f(sig, info, ctx);
            } else {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                f(sig);
            }
        }
    }
}

/// A mapped range the handler watches while the library reads; unregistered on drop.
pub(crate) struct Guard {
    #[cfg(unix)]
    slot: Option<usize>,
}

impl Guard {
    /// Watches `bytes` (a file mapping).
    pub(crate) fn new(bytes: &[u8]) -> Guard {
        #[cfg(unix)]
        {
            if bytes.is_empty() {
                return Guard { slot: None };
            }
            imp::install();
            Guard {
                slot: imp::register(bytes.as_ptr() as usize, bytes.len()),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = bytes;
            Guard {}
        }
    }

    /// Whether a read found the file shorter than its mapping (the missing pages now read as
    /// zeros: nothing read from this mapping since it was made can be trusted).
    pub(crate) fn faulted(&self) -> bool {
        #[cfg(unix)]
        {
            self.slot.is_some_and(|i| {
                imp::TABLE[i]
                    .faulted
                    .load(std::sync::atomic::Ordering::Acquire)
            })
        }
        #[cfg(not(unix))]
        false
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(i) = self.slot {
            imp::unregister(i);
        }
    }
}

/// A library read in progress: while one is alive (on any thread), faults in watched mappings
/// are caught.
pub(crate) struct Reading(());

/// Marks a library read in progress until the returned value is dropped.
pub(crate) fn reading() -> Reading {
    #[cfg(unix)]
    {
        imp::install();
        imp::READING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
    Reading(())
}

impl Drop for Reading {
    fn drop(&mut self) {
        #[cfg(unix)]
        imp::READING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
