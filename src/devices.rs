//! The top of the layers: `VariableStore::initialize` runs the load skeleton (`load::skeleton`)
//! with the destination its [`Device`] names: host memory (`load::host`) or a GPU (`gpu`).

use crate::base::device::Device;
use crate::base::error::{ErrorKind, Result};
use crate::init::store::VariableStore;
use crate::load::host::HostDestination;
use crate::load::{skeleton, LoadOptions, LoadReport};

impl VariableStore {
    /// Runs every initializer: variables mapped by `init_from_checkpoint` load their tensors now;
    /// the others take their own initializer. On error nothing counts as initialized.
    pub fn initialize(&mut self, device: Device) -> Result<LoadReport> {
        self.initialize_with(device, &LoadOptions::default())
    }

    /// [`initialize`](Self::initialize) with a thread count and a progress callback.
    pub fn initialize_with(&mut self, device: Device, options: &LoadOptions) -> Result<LoadReport> {
        options.check()?;
        match options.threads {
            None => self.initialize_in_pool(device, options),
            Some(n) => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| {
                        ErrorKind::InvalidArgument(format!("cannot start {n} threads: {e}"))
                    })?;
                pool.install(|| self.initialize_in_pool(device, options))
            }
        }
    }

    fn initialize_in_pool(&mut self, device: Device, options: &LoadOptions) -> Result<LoadReport> {
        match device {
            Device::Cpu => skeleton::run(self, HostDestination::default(), options),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => {
                let link = crate::gpu::cuda::link(n)?;
                self.initialize_on(&*link, options, Default::default())
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(n) => {
                Err(ErrorKind::DeviceUnavailable {
                    device: format!("cuda:{n}"),
                    reason: "this build of tfckpt has no GPU support (build with the `cuda` feature); use the cpu device"
                        .into(),
                }
                .into())
            }
        }
    }
}
