//! GPU destinations: the values of `initialize(Device::Cuda(n))` in device memory.
//!
//! The public types here ([`DeviceTensor`], [`DeviceBuffer`]) exist in every build; without the
//! `cuda` feature (or without a GPU) `initialize(Device::Cuda(_))` answers with
//! [`ErrorKind::DeviceUnavailable`](crate::ErrorKind::DeviceUnavailable) and nothing else changes.
//!
//! The load itself (`exec`) is written against a small [`Link`](exec::Link) trait: asynchronous
//! host-to-device copies on ordered lanes, read-only registration of host memory, pinned staging
//! buffers, fences and two kernels. `cuda` implements it with cudarc; the tests run the very same
//! executor against an emulated device in host memory, so the planning, the two transfer paths,
//! the checksums and the kernels' addressing are all tested on machines without a GPU.

#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(any(test, feature = "cuda"))]
pub(crate) mod exec;
#[cfg(test)]
pub(crate) mod host;
#[cfg(any(test, feature = "cuda"))]
mod load;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::base::error::Result;
use crate::base::tensor::{Tensor, TensorData};
use crate::DType;

/// Device memory that holds one value: allocated by the library, or the trainer's own.
pub(crate) trait Memory: Send + Sync {
    /// The device address of the first byte.
    fn ptr(&self) -> u64;
    /// Bytes.
    fn len(&self) -> usize;
    /// Copies the bytes back to the host.
    fn read(&self, dst: &mut [u8]) -> Result<()>;
    /// Waits until work queued on this memory elsewhere (by the trainer) is done.
    #[cfg(any(test, feature = "cuda"))]
    fn ready(&self) -> Result<()> {
        Ok(())
    }
    /// The device, e.g. `cuda:0`.
    fn device(&self) -> String;
    /// The cudarc slice, when the library allocated this memory.
    #[cfg(feature = "cuda")]
    fn cuda_slice(&self) -> Option<&cudarc::driver::CudaSlice<u8>> {
        None
    }
}

/// A variable's value in device memory, after
/// [`VariableStore::initialize`](crate::VariableStore::initialize) on a GPU.
#[derive(Clone)]
pub struct DeviceTensor {
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<u64>,
    pub(crate) mem: Arc<dyn Memory>,
}

impl DeviceTensor {
    /// The element type on the device (the variable's, or the one asked for by
    /// [`LoadOptions::cast`](crate::LoadOptions::cast)).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Dimensions, outermost first.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Bytes on the device (row-major, little-endian elements).
    pub fn byte_len(&self) -> usize {
        self.mem.len()
    }

    /// The device address (a `CUdeviceptr`) of the first element.
    pub fn device_ptr(&self) -> u64 {
        self.mem.ptr()
    }

    /// The device holding it, e.g. `cuda:0`.
    pub fn device(&self) -> String {
        self.mem.device()
    }

    /// Copies the value back to host memory.
    pub fn to_host(&self) -> Result<Tensor> {
        let mut bytes = crate::base::mmap::alloc_zeroed(self.mem.len(), "device value")?;
        self.mem.read(&mut bytes)?;
        Ok(Tensor {
            dtype: self.dtype,
            shape: self.shape.clone(),
            data: TensorData::Bytes(bytes.into()),
        })
    }

    /// The cudarc slice holding the value, when the library allocated it (`None` for a
    /// [`DeviceBuffer`] the trainer handed in).
    #[cfg(feature = "cuda")]
    pub fn cuda_slice(&self) -> Option<&cudarc::driver::CudaSlice<u8>> {
        self.mem.cuda_slice()
    }
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTensor")
            .field("device", &self.mem.device())
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("ptr", &format_args!("{:#x}", self.mem.ptr()))
            .finish()
    }
}

/// Device memory the trainer owns, to load one variable into (see
/// [`VariableStore::set_device_buffer`](crate::VariableStore::set_device_buffer)); for a trainer
/// built on another framework that allocates its own parameters.
#[derive(Clone)]
pub struct DeviceBuffer {
    pub(crate) mem: Arc<dyn Memory>,
}

impl DeviceBuffer {
    /// A buffer of GPU `device`, given by its device address and length in bytes.
    ///
    /// # Safety
    ///
    /// `ptr .. ptr + len` must be device memory of the GPU later passed to `initialize`, stay
    /// allocated as long as this buffer or the [`DeviceTensor`] made from it lives, and not be used
    /// by anything else while `initialize` runs.
    #[cfg(feature = "cuda")]
    pub unsafe fn from_raw(device: u32, ptr: u64, len: usize) -> DeviceBuffer {
        DeviceBuffer {
            mem: Arc::new(cuda::Raw { device, ptr, len }),
        }
    }

    /// A buffer from a cudarc slice (kept alive by the buffer and by the loaded value).
    #[cfg(feature = "cuda")]
    pub fn from_cuda_slice(slice: cudarc::driver::CudaSlice<u8>) -> DeviceBuffer {
        DeviceBuffer {
            mem: Arc::new(cuda::Owned::new(slice)),
        }
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.mem.len()
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.mem.len() == 0
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("ptr", &format_args!("{:#x}", self.mem.ptr()))
            .field("len", &self.mem.len())
            .finish()
    }
}

/// What the GPU load did, per transfer path (part of [`LoadReport`](crate::LoadReport)).
#[derive(Clone, Debug, Default)]
pub struct DeviceStats {
    /// The device, e.g. `cuda:0`.
    pub device: String,
    /// Bytes copied by DMA straight from the registered (page-locked in place) file mapping.
    pub registered_bytes: u64,
    /// Bytes copied through the pinned staging ring.
    pub staged_bytes: u64,
    /// Pinned host memory held by the staging ring.
    pub staging_bytes: u64,
    /// Kernel launches (strided slice copies and casts).
    pub kernels: usize,
    /// Bytes of unmapped variables set by device memsets (no upload).
    pub filled_bytes: u64,
    /// Why registration was not used for some ranges (`None` when it always worked).
    pub registration_fallback: Option<String>,
}
