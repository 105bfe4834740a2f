//! The staging ring's pinned buffers of a GPU's link: fresh memory page-locked in place, buffer
//! by buffer while the ring already runs, or the driver's pinned allocations where page-locking
//! is refused; kept by the link for the next load.

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, PinnedHostSlice};

use super::{bind_anyway, CudaLink};
use crate::base::error::Result;
use crate::base::mmap::FreshMemory;
use crate::gpu::exec::{staggered, Staged};

/// The staging ring's pinned buffers: `count` of `bytes` each.
pub(super) struct Staging {
    count: usize,
    bytes: usize,
    mem: StagingMemory,
}

enum StagingMemory {
    /// Fresh memory faulted in on every core, then page-locked in place (`cuMemHostRegister`).
    PageLocked(PageLocked),
    /// The driver's pinned allocations (`cuMemHostAlloc`), where page-locking was refused.
    Driver(Vec<PinnedHostSlice<u8>>),
}

/// Memory whose buffers (`regions`, by start address) are page-locked for `ctx` until dropped.
struct PageLocked {
    mem: Option<FreshMemory>,
    regions: Vec<usize>,
    ctx: Arc<CudaContext>,
}

impl Drop for PageLocked {
    fn drop(&mut self) {
        let Some(mem) = self.mem.take() else { return };
        let (_bound, bound) = bind_anyway(&self.ctx);
        let mut undone = bound;
        for &r in &self.regions {
            // SAFETY: registered by `CudaLink::with_staging`; staging is dropped only when no
            // copy reads it (`with_staging` returns after the ring's waits).
            undone = undone.and_then(|()| {
                unsafe { sys::cuMemHostUnregister(r as *mut std::ffi::c_void) }.result()
            });
        }
        if undone.is_err() {
            // Never unmapped while the driver may still hold its pages: kept for the process.
            std::mem::forget(mem);
        }
    }
}

impl Staging {
    pub(super) fn holds(&self, count: usize, bytes: usize) -> bool {
        self.count >= count && self.bytes >= bytes
    }

    /// Every buffer, whole (the driver's bind `link`'s context).
    pub(super) fn buffers(&mut self, link: &CudaLink) -> Result<Vec<&mut [u8]>> {
        let (count, bytes) = (self.count, self.bytes);
        match &mut self.mem {
            StagingMemory::PageLocked(p) => Ok(p
                .mem
                .as_mut()
                .expect("page-locked memory until dropped")
                .buffers(count, bytes)),
            StagingMemory::Driver(bufs) => link.driver_slices(bufs),
        }
    }
}

impl CudaLink {
    /// Runs `f` over `count` staging buffers of `bytes` made now: fresh memory (on the GPU's
    /// NUMA node where the machine has several) page-locked in place one buffer at a time, each
    /// faulted in on every core first, which on the H200 took 12–19 ms for 256 MiB where the
    /// driver's pinned allocation took 78–111 ms. `f` starts once the first buffer is locked;
    /// the others join it as a helper thread locks them ([`staggered`]). Where page-locking is
    /// refused, the driver's pinned allocations, all made first. Returns `f`'s result (or its
    /// panic) and the buffers, to keep. Binds the context itself.
    pub(super) fn with_new_staging<R>(
        &self,
        count: usize,
        bytes: usize,
        f: impl FnOnce(&mut Staged<'_>) -> R,
    ) -> Result<(std::thread::Result<R>, Staging)> {
        let mut f = Some(f);
        if let Ok(mut mem) = FreshMemory::for_buffers(count, bytes) {
            // On the GPU's own node where the machine has several (the pages are faulted in
            // by threads of every node); a refusal leaves them wherever they fall.
            if let Some(node) = self.numa_node {
                let _ = mem.prefer_node(node);
            }
            let lock = |b: &mut [u8]| -> std::result::Result<(), String> {
                crate::base::mmap::fault_in(b);
                let (_bound, bound) = bind_anyway(&self.ctx);
                // SAFETY: `b` is a buffer of `mem`, page-aligned, mapped, readable and writable
                // until `PageLocked` unregisters it and only then unmaps it. Flags 0: written by
                // the CPU, read by the DMA.
                bound
                    .and_then(|()| {
                        unsafe {
                            sys::cuMemHostRegister_v2(
                                b.as_mut_ptr() as *mut std::ffi::c_void,
                                b.len(),
                                0,
                            )
                        }
                        .result()
                    })
                    .map_err(|e| format!("{e:?}"))
            };
            let ran = staggered(mem.buffers(count, bytes), &lock, |staged| {
                (f.take().expect("run once"))(staged)
            });
            if let Ok((r, regions)) = ran {
                let st = Staging {
                    count: regions.len(),
                    bytes,
                    mem: StagingMemory::PageLocked(PageLocked {
                        mem: Some(mem),
                        regions,
                        ctx: self.ctx.clone(),
                    }),
                };
                return Ok((r, st));
            }
        }
        let mut bufs = (0..count)
            .map(|_| {
                // Flags 0: not write-combined, so CPU writes run at full speed (gpu-notes.md).
                // SAFETY: the memory is written before it is copied anywhere.
                unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes, 0) }
                    .map_err(|e| self.err(format!("pinning {bytes} bytes of staging"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let slices = self.driver_slices(&mut bufs)?;
        let f = f.take().expect("not run: page-locking was refused");
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut Staged::new(slices))));
        let st = Staging {
            count,
            bytes,
            mem: StagingMemory::Driver(bufs),
        };
        Ok((r, st))
    }

    /// The driver's pinned allocations as byte slices (binds the context).
    fn driver_slices<'a>(&self, bufs: &'a mut [PinnedHostSlice<u8>]) -> Result<Vec<&'a mut [u8]>> {
        bufs.iter_mut()
            .map(|b| b.as_mut_slice().map_err(|e| self.err("staging buffer", e)))
            .collect()
    }
}
