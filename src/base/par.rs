//! Where the crate's parallel work runs, and what survives a `fork`.
//!
//! Parallel work runs on the caller's rayon pool when the caller is a worker of one, else on
//! rayon's global pool, except in a child forked after that pool started. A forked child has
//! none of its parent's threads, so the global pool of a parent that used it never answers there
//! (rayon's own limitation); such a child gets a pool of its own, built in the child, and tfckpt
//! works in data-loader workers forked after a load. [`PerProcess`] holds such things: the pool,
//! the object-storage runtime and clients.

use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

/// The process that runs the crate's parallel work on rayon's global pool (0: none yet).
static GLOBAL_USER: AtomicU32 = AtomicU32::new(0);

/// Runs `f`, which uses rayon's parallel iterators, `join` or `scope`, where they can run.
///
/// While `f` runs, the calling thread is not marked as reading for the library (`sigbus`): it
/// waits, and a worker that waits runs other jobs of its pool meanwhile, the trainer's among
/// them. Each parallel task that reads a mapping marks itself.
pub(crate) fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Work made serial (see `serially`) checks `is_serial` before it goes parallel: a caller that
    // does not would bring back the hang `serially` prevents.
    debug_assert!(!is_serial(), "parallel work inside `par::serially`");
    let _paused = crate::base::sigbus::paused();
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let pid = std::process::id();
    match GLOBAL_USER.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => f(),
        Err(user) if user == pid => f(),
        Err(_) => {
            static POOL: PerProcess<rayon::ThreadPool> = PerProcess::new();
            let pool = POOL.get_or_try_init(|| {
                rayon::ThreadPoolBuilder::new()
                    .thread_name(|i| format!("tfckpt-{i}"))
                    .build()
            });
            match pool {
                Ok(pool) => pool.install(f),
                // No pool could be started in this child (no threads to be had): the work runs
                // on the caller alone, which the parent's global pool would never do.
                Err(_) => match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
                    Ok(pool) => pool.install(f),
                    Err(_) => f(),
                },
            }
        }
    }
}

thread_local! {
    /// Set while this thread runs [`serially`].
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the crate's copies and checksums on this thread alone ([`is_serial`] is true
/// inside). For work done while holding something other jobs of the pool may wait for (the
/// permits of reads on object storage): a thread that waits for its parallel pieces runs other
/// jobs of its pool meanwhile, and a thread that took a piece may, waiting in turn, start a job
/// that waits for those permits; the holder then never gets its piece back.
#[cfg_attr(not(feature = "remote"), allow(dead_code))] // used by reads on object storage
pub(crate) fn serially<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

/// Whether this thread runs [`serially`]: parallel copies and checksums then run in one piece.
pub(crate) fn is_serial() -> bool {
    SERIAL.with(|s| s.get())
}

/// The threads parallel work of the caller gets ([`run`]'s pool): `rayon::current_num_threads`,
/// which would start rayon's global pool unrecorded (a child forked after that would wait for it).
pub(crate) fn current_num_threads() -> usize {
    run(rayon::current_num_threads)
}

/// A value of this process: a child forked after it was made gets its own, made in the child
/// (threads, connections and the like do not cross a `fork`). The parent's, inherited by the
/// child, is left there, never dropped: dropping it could wait for threads that do not exist
/// in the child, or shut down connections the parent still uses. No lock: a lock held by
/// another thread of the parent at the fork would stay held in the child.
pub(crate) struct PerProcess<T> {
    value: AtomicPtr<(u32, T)>,
}

impl<T> PerProcess<T> {
    pub(crate) const fn new() -> PerProcess<T> {
        PerProcess {
            value: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// This process's value, made by `make` if it has none yet (if two threads make one at
    /// once, one is kept and the other dropped).
    pub(crate) fn get_or_try_init<E>(&self, make: impl FnOnce() -> Result<T, E>) -> Result<&T, E> {
        let pid = std::process::id();
        let current = self.value.load(Ordering::Acquire);
        // SAFETY: a pointer stored here comes from Box::into_raw and is freed only by `drop`,
        // which has `self` to itself.
        if let Some((owner, value)) = unsafe { current.as_ref() } {
            if *owner == pid {
                return Ok(value);
            }
        }
        let ours = Box::into_raw(Box::new((pid, make()?)));
        match self
            .value
            .compare_exchange(current, ours, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: as above; another process's value stays allocated (leaked on purpose).
            Ok(_) => Ok(unsafe { &(*ours).1 }),
            Err(theirs) => {
                // SAFETY: `ours` was never shared.
                drop(unsafe { Box::from_raw(ours) });
                // SAFETY: as above; only this process's threads store here now.
                Ok(unsafe { &(*theirs).1 })
            }
        }
    }
}

impl<T> Drop for PerProcess<T> {
    fn drop(&mut self) {
        let p = *self.value.get_mut();
        // SAFETY: as above. Another process's value is left allocated.
        if let Some((owner, _)) = unsafe { p.as_ref() } {
            if *owner == std::process::id() {
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

// SAFETY: a PerProcess hands out `&T` to any thread and drops its `T` on the thread that drops
// it, as a `OnceLock<T>` does.
unsafe impl<T: Send + Sync> Sync for PerProcess<T> {}
unsafe impl<T: Send> Send for PerProcess<T> {}

#[cfg(test)]
mod tests {
    /// `serially` holds for what runs inside it, nested or not, and ends with it, even by a panic.
    #[test]
    fn serially_is_scoped_to_its_closure() {
        assert!(!super::is_serial());
        super::serially(|| {
            assert!(super::is_serial());
            super::serially(|| assert!(super::is_serial()));
            assert!(super::is_serial());
        });
        assert!(!super::is_serial());
        let _ = std::panic::catch_unwind(|| super::serially(|| panic!("inside")));
        assert!(!super::is_serial());
    }

    /// In the process that first ran parallel work, `run` calls `f` on the caller's thread (its
    /// parallel pieces go to rayon's global pool), every time: the pool of a forked child is
    /// for other processes only.
    #[test]
    fn the_first_process_runs_on_the_callers_thread() {
        let caller = std::thread::current().id();
        super::run(|| ());
        assert_eq!(
            super::GLOBAL_USER.load(super::Ordering::Acquire),
            std::process::id()
        );
        for _ in 0..2 {
            assert_eq!(super::run(|| std::thread::current().id()), caller);
        }
        // A worker of a pool runs it in place too.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| {
            let worker = std::thread::current().id();
            assert_eq!(super::run(|| std::thread::current().id()), worker);
        });
    }

    /// A `PerProcess` drops the value this process made, once, and leaves one another process
    /// made (inherited across a `fork`) allocated, making its own in its place.
    #[test]
    fn a_per_process_value_is_this_processs_own() {
        use std::sync::Arc;
        let mine = Arc::new(());
        let cell = super::PerProcess::new();
        let got = cell
            .get_or_try_init(|| Ok::<_, ()>(Arc::clone(&mine)))
            .unwrap();
        assert!(Arc::ptr_eq(got, &mine));
        // Asked again, the same value; `make` is not called.
        let again = cell.get_or_try_init(|| Err("made twice")).unwrap();
        assert!(Arc::ptr_eq(again, &mine));
        assert_eq!(Arc::strong_count(&mine), 2);
        drop(cell);
        assert_eq!(
            Arc::strong_count(&mine),
            1,
            "dropped with the PerProcess, once"
        );

        // As in a child forked from a parent that had made one: the parent's stays allocated.
        let parents = Arc::new(());
        let inherited = Box::into_raw(Box::new((std::process::id() ^ 1, Arc::clone(&parents))));
        let cell = super::PerProcess {
            value: std::sync::atomic::AtomicPtr::new(inherited),
        };
        let ours = Arc::new(());
        let got = cell
            .get_or_try_init(|| Ok::<_, ()>(Arc::clone(&ours)))
            .unwrap();
        assert!(Arc::ptr_eq(got, &ours), "the child made its own");
        drop(cell);
        assert_eq!(Arc::strong_count(&ours), 1);
        assert_eq!(
            Arc::strong_count(&parents),
            2,
            "the parent's is never dropped here"
        );
        // SAFETY: `inherited` came from Box::into_raw above and nothing else frees it.
        drop(unsafe { Box::from_raw(inherited) });
        assert_eq!(Arc::strong_count(&parents), 1);
    }
}
