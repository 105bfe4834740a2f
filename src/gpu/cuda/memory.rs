//! Device memory the loads write into: allocated by the library (or a cudarc slice handed in),
//! or the trainer's by address.

use cudarc::driver::{result, CudaSlice, DevicePtrMut};

use super::{bind_anyway, device_err, link, KeepCurrent};
use crate::base::device::DeviceMemory;
use crate::base::error::Result;
use crate::gpu::exec::Link;

/// Device memory allocated by the library (or handed in as a cudarc slice).
pub(crate) struct Owned {
    /// Dropped in `Drop`, where the caller's context is current again after: cudarc's drop may
    /// bind the slice's (to wait for its events, or to free it where the GPU has no pool).
    slice: std::mem::ManuallyDrop<CudaSlice<u8>>,
    len: usize,
    ptr: u64,
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _current = KeepCurrent::loaded();
        // SAFETY: dropped once, here, and not used after.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.slice) }
    }
}

impl Owned {
    pub(crate) fn new(slice: CudaSlice<u8>) -> Owned {
        let len = slice.len();
        Owned::with_len(slice, len)
    }

    /// The cudarc slice.
    pub(crate) fn slice(&self) -> &CudaSlice<u8> {
        &self.slice
    }

    pub(super) fn with_len(mut slice: CudaSlice<u8>, len: usize) -> Owned {
        // cudarc binds the slice's context to this thread: the caller's is current again after.
        let _current = KeepCurrent::new();
        let stream = slice.stream().clone();
        let ptr = {
            // Taken as for a write: the slice's stream waits for the work any stream has queued
            // on it, reading or writing (cudarc's events on the slice), so that `ready`, which
            // waits for that stream, waits for all of it (a zeroing on another stream, a forward
            // pass still reading it).
            let (p, _sync) = slice.device_ptr_mut(&stream);
            p
        };
        Owned {
            slice: std::mem::ManuallyDrop::new(slice),
            len,
            ptr,
        }
    }
}

impl DeviceMemory for Owned {
    fn ptr(&self) -> u64 {
        self.ptr
    }

    fn ready(&self) -> Result<()> {
        // Work the trainer queued on the slice (its zeroing, say) finishes before the load writes.
        // A slice of the legacy or the per-thread default stream (candle's devices use the latter)
        // names "the calling thread's" stream, which would miss work another thread queued: the
        // whole context is waited for then.
        // Bound without cudarc's check, which would report (and clear) an error the trainer's
        // context stored as the load's; the caller's context is current again after.
        let device = self.slice.ordinal() as u32;
        let stream = self.slice.stream();
        let (_current, bound) = bind_anyway(stream.context());
        let r = bound.and_then(|()| {
            if (stream.cu_stream() as usize) <= 2 {
                result::ctx::synchronize()
            } else {
                // SAFETY: the slice's live stream.
                unsafe { result::stream::synchronize(stream.cu_stream()) }
            }
        });
        r.map_err(|e| device_err(device, "waiting for the buffer's stream", e))
    }

    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, dst: &mut [u8]) -> Result<()> {
        let device = self.slice.ordinal() as u32;
        if dst.len() != self.len {
            return Err(device_err(device, "reading back", "wrong buffer size"));
        }
        let stream = self.slice.stream();
        // The copy binds the slice's context.
        let _current = KeepCurrent::loaded();
        stream
            .memcpy_dtoh(&self.slice.slice(..self.len), dst)
            .and_then(|()| stream.synchronize())
            .map_err(|e| device_err(device, "reading back", e))
    }

    fn device(&self) -> String {
        format!("cuda:{}", self.slice.ordinal())
    }

    #[cfg(feature = "cuda")]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Device memory the trainer handed in by address.
pub(crate) struct Raw {
    pub(crate) device: u32,
    pub(crate) ptr: u64,
    pub(crate) len: usize,
}

impl DeviceMemory for Raw {
    fn ptr(&self) -> u64 {
        self.ptr
    }

    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, dst: &mut [u8]) -> Result<()> {
        if dst.len() != self.len {
            return Err(device_err(self.device, "reading back", "wrong buffer size"));
        }
        let l = link(self.device)?;
        let _bound = l.bind()?;
        l.synchronize()?;
        // SAFETY: the trainer guaranteed (`DeviceBuffer::from_raw`) that the range is live device
        // memory of this GPU.
        unsafe { result::memcpy_dtoh_sync(dst, self.ptr) }
            .map_err(|e| device_err(self.device, "reading back", e))
    }

    fn device(&self) -> String {
        format!("cuda:{}", self.device)
    }

    #[cfg(feature = "cuda")]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
