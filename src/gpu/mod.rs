//! GPU destinations: the values of `initialize(Device::Cuda(n))` in device memory.
//!
//! Without the `cuda` feature (or without a GPU) `initialize(Device::Cuda(_))` answers with
//! [`ErrorKind::DeviceUnavailable`](crate::ErrorKind::DeviceUnavailable) and nothing else changes.
//!
//! The load runs the common skeleton (`load::skeleton`) with the GPU [`Destination`]
//! (`destination`), which plans every upload (`plan`) and hands it to the executor (`exec`). The
//! executor is written against a small [`Link`](exec::Link) trait: asynchronous host-to-device
//! copies on ordered lanes, read-only registration of host memory, pinned staging buffers, fences
//! and two kernels. `cuda` implements it with cudarc; the tests run the very same executor against
//! an emulated device in host memory (`emulated`), so the planning, the transfer paths, the
//! checksums and the kernels' addressing are all tested on machines without a GPU.
//!
//! [`Destination`]: crate::load::skeleton::Destination

#[cfg(any(test, feature = "nccl"))]
pub(crate) mod broadcast;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(any(test, feature = "cuda"))]
pub(crate) mod destination;
#[cfg(test)]
pub(crate) mod emulated;
#[cfg(any(test, feature = "cuda"))]
pub(crate) mod exec;
#[cfg(feature = "nccl")]
pub(crate) mod nccl;
#[cfg(any(test, feature = "cuda"))]
mod plan;
#[cfg(test)]
mod tests;

use crate::base::device::Device;
#[cfg(feature = "cuda")]
use crate::base::device::{DeviceBuffer, DeviceTensor};

impl Device {
    /// GPUs this process can use: 0 without the `cuda` feature, without an NVIDIA driver, or
    /// without a GPU.
    pub fn gpu_count() -> usize {
        #[cfg(feature = "cuda")]
        {
            if cuda::driver_present() {
                return cuda::device_count().unwrap_or(0);
            }
        }
        0
    }
}

#[cfg(feature = "cuda")]
impl DeviceTensor {
    /// The cudarc slice holding the value, when the library allocated it (`None` for a
    /// [`DeviceBuffer`] the trainer handed in by address).
    pub fn cuda_slice(&self) -> Option<&cudarc::driver::CudaSlice<u8>> {
        self.mem
            .as_any()
            .downcast_ref::<cuda::Owned>()
            .map(|o| o.slice())
    }
}

#[cfg(feature = "cuda")]
impl DeviceBuffer {
    /// A buffer of GPU `device`, given by its device address and length in bytes.
    ///
    /// # Safety
    ///
    /// `ptr .. ptr + len` must be device memory of the GPU later passed to `initialize`, stay
    /// allocated as long as this buffer or the [`DeviceTensor`] made from it lives, and not be used
    /// by anything else while `initialize` runs. Work queued on it before (a stream-ordered
    /// allocation, a memset) must be complete when `initialize` starts: the load writes it from
    /// its own streams, which do not wait for the trainer's (synchronise that stream first;
    /// [`from_cuda_slice`](Self::from_cuda_slice) does it for you).
    pub unsafe fn from_raw(device: u32, ptr: u64, len: usize) -> DeviceBuffer {
        DeviceBuffer {
            mem: std::sync::Arc::new(cuda::Raw { device, ptr, len }),
        }
    }

    /// A buffer from a cudarc slice (kept alive by the buffer and by the loaded value).
    pub fn from_cuda_slice(slice: cudarc::driver::CudaSlice<u8>) -> DeviceBuffer {
        DeviceBuffer {
            mem: std::sync::Arc::new(cuda::Owned::new(slice)),
        }
    }
}
