//! Where values live: the [`Device`] a load targets, and the handles of values in device memory
//! ([`DeviceTensor`]) or of device memory the trainer hands in ([`DeviceBuffer`]). The GPU layer
//! implements [`DeviceMemory`]; nothing here talks to a driver.

use std::sync::Arc;

use crate::base::dtype::DType;
use crate::base::error::Result;
use crate::base::tensor::{Tensor, TensorData};

/// Where initialization puts the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// Host memory.
    Cpu,
    /// GPU `n`. Needs the crate's `cuda` feature and a GPU; otherwise `initialize` answers with
    /// [`ErrorKind::DeviceUnavailable`](crate::ErrorKind::DeviceUnavailable).
    Cuda(u32),
}

impl Device {
    /// Parses `cpu`, `cuda` or `cuda:N` (`N` in decimal digits, no sign).
    pub fn parse(s: &str) -> Option<Device> {
        match s {
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:")?;
                // `u32::from_str` also takes a leading `+`.
                if !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                n.parse().ok().map(Device::Cuda)
            }
        }
    }
}

/// Devices as a message names them: `cuda:0, cuda:1, cpu`.
pub(crate) fn device_list<'a>(devices: impl IntoIterator<Item = &'a Device>) -> String {
    devices
        .into_iter()
        .map(Device::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Device memory that holds one value: allocated by the library, or the trainer's own.
pub(crate) trait DeviceMemory: Send + Sync {
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
    /// The concrete memory, for the GPU layer's own accessors.
    #[cfg(feature = "cuda")]
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A variable's value in device memory, after
/// [`VariableStore::initialize`](crate::VariableStore::initialize) on a GPU.
#[derive(Clone)]
pub struct DeviceTensor {
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<u64>,
    pub(crate) mem: Arc<dyn DeviceMemory>,
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
    ///
    /// Nothing orders the trainer's work through this address with the library's: before the
    /// last clone of this value is dropped (its memory freed, on the library's stream) or read
    /// back with [`to_host`](Self::to_host), synchronise the streams that used it.
    /// `cuda_slice` (feature `cuda`) gives a cudarc slice whose uses cudarc orders itself.
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

/// How a variable is held in device memory where not as TensorFlow holds it (the candle
/// integration's `Var`s): in another dtype (converted on the device as it loads) and/or, for a
/// value of 2 or more axes, transposed (a kernel `[spatial..., in, out]` as `[out, in, spatial...]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(not(feature = "candle"), allow(dead_code))]
pub(crate) struct DeviceForm {
    pub dtype: Option<crate::base::dtype::DType>,
    pub held: crate::base::copy::Held,
}

/// Device memory the trainer owns, to load one variable into (see
/// [`VariableStore::set_device_buffer`](crate::VariableStore::set_device_buffer)); for a trainer
/// built on another framework that allocates its own parameters. Made with the GPU layer's
/// constructors (`DeviceBuffer::from_cuda_slice`, `DeviceBuffer::from_raw`).
#[derive(Clone)]
pub struct DeviceBuffer {
    pub(crate) mem: Arc<dyn DeviceMemory>,
}

impl DeviceBuffer {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_takes_cpu_cuda_and_cuda_n_exactly() {
        assert_eq!(Device::parse("cpu"), Some(Device::Cpu));
        assert_eq!(Device::parse("cuda"), Some(Device::Cuda(0)));
        assert_eq!(Device::parse("cuda:0"), Some(Device::Cuda(0)));
        assert_eq!(Device::parse("cuda:7"), Some(Device::Cuda(7)));
        assert_eq!(
            Device::parse("cuda:4294967295"),
            Some(Device::Cuda(u32::MAX))
        );
        for bad in [
            "",
            "CPU",
            "Cuda",
            "gpu",
            "cuda:",
            "cuda:-1",
            "cuda:+1",
            "cuda: 1",
            "cuda:1 ",
            "cuda:x",
            "cuda:4294967296",
            "cuda0",
            "cpu:0",
            " cpu",
        ] {
            assert_eq!(Device::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_device_prints_as_it_parses() {
        for d in [Device::Cpu, Device::Cuda(0), Device::Cuda(12)] {
            assert_eq!(Device::parse(&d.to_string()), Some(d));
        }
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        assert_eq!(
            device_list(&[Device::Cuda(0), Device::Cuda(1), Device::Cpu]),
            "cuda:0, cuda:1, cpu"
        );
        assert_eq!(device_list(&[]), "");
    }
}
