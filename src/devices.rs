//! The top of the layers: `VariableStore::initialize` runs the load skeleton (`load::skeleton`)
//! with the destination its [`Device`] names: host memory (`load::host`) or a GPU (`gpu`).

use std::collections::BTreeMap;

use crate::base::device::Device;
use crate::base::error::{ErrorKind, Result};
use crate::base::tensor::{ElementsMut, HostBuffer};
use crate::init::store::VariableStore;
use crate::load::host::{Given, GivenBuf, HostDestination};
use crate::load::{skeleton, LoadOptions, LoadReport};

impl VariableStore {
    /// Runs every initializer: variables mapped by `init_from_checkpoint` load their tensors now;
    /// the others take their own initializer. On error the store is left as it was: nothing
    /// of this load counts as initialized (the values of an earlier load that succeeded stay).
    pub fn initialize(&mut self, device: Device) -> Result<LoadReport> {
        self.initialize_with(device, &LoadOptions::default())
    }

    /// [`initialize`](Self::initialize) with a thread count and a progress callback.
    pub fn initialize_with(&mut self, device: Device, options: &LoadOptions) -> Result<LoadReport> {
        options.check()?;
        in_pool(options, || self.initialize_in_pool(device, options))
    }

    /// [`initialize_with`](Self::initialize_with) on the host, reading the values of some
    /// variables (or parts) straight into the trainer's own memory: the host twin of
    /// [`set_device_buffer`](Self::set_device_buffer). Each buffer holds exactly the variable's
    /// value (little-endian elements of its dtype, row-major); it takes the checkpoint's bytes,
    /// CRC-checked in the same pass as the copy, or the variable's initializer when nothing maps
    /// to it. Those variables then have no [`value`](Self::value) in the store. A buffer for a name
    /// that is no variable, of the wrong size, a second buffer for one variable, or, in a load
    /// spread over ranks ([`LoadOptions::rank`]), one for a variable this rank does not own, is
    /// an error before anything is read. On an error nothing of this load counts as initialized,
    /// and the buffers' contents are unspecified (partly written).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let prefix = dir.path().join("model.ckpt");
    /// # let mut w = tfckpt::CheckpointWriter::create(&prefix, Default::default())?;
    /// # w.add("w", (&tfckpt::Tensor::from_f32(&[2], &[1.5, 2.5]).unwrap()).into())?;
    /// # w.finish()?;
    /// use tfckpt::{init_from_checkpoint, AssignmentMap, DType, Init, Target, VariableStore};
    ///
    /// let mut store = VariableStore::new();
    /// store.get_variable("w", &[2], DType::F32, Init::Zeros)?;
    /// init_from_checkpoint(&mut store, &prefix, &AssignmentMap::from([("w", Target::name("w"))]))?;
    /// let mut mine = vec![0f32; 2]; // the trainer's tensor
    /// store.initialize_into(vec![("w", &mut mine[..])], &Default::default())?;
    /// assert_eq!(mine, [1.5, 2.5]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// A buffer is a typed slice (`&mut [f32]`, `&mut [half::bf16]`, `&mut [i64]`...: its element
    /// type must be the variable's dtype, after [`LoadOptions::cast`]) or raw bytes (`&mut [u8]`);
    /// buffers of several types go in one call as [`HostBuffer`]s (`(&mut v[..]).into()`).
    pub fn initialize_into<'b, B: Into<HostBuffer<'b>>>(
        &mut self,
        buffers: Vec<(&'b str, B)>,
        options: &LoadOptions,
    ) -> Result<LoadReport> {
        options.check()?;
        let mut given = Given::default();
        for (name, buf) in buffers {
            let HostBuffer {
                bytes: buf,
                dtype: typed,
            } = buf.into();
            let v = self.var_for_buffer(name)?;
            let dtype = options.dtype_at_destination(v.dtype);
            if let Some(t) = typed.filter(|&t| t != dtype) {
                return Err(ErrorKind::BadVariable {
                    name: name.into(),
                    reason: format!(
                        "its values are {dtype} here, and the buffer given for it holds {t} \
                         elements"
                    ),
                }
                .into());
            }
            let Some(size) = dtype.size() else {
                return Err(ErrorKind::BadVariable {
                    name: name.into(),
                    reason: "a string variable has no byte buffer".into(),
                }
                .into());
            };
            let expected = crate::base::slice::num_elements(&v.shape).unwrap_or(0) * size as u64;
            if given.contains(name) {
                return Err(ErrorKind::InvalidArgument(format!(
                    "variable {name:?} is given two buffers (one per variable)"
                ))
                .into());
            }
            if buf.len() as u64 != expected {
                return Err(ErrorKind::BufferSize {
                    tensor: name.into(),
                    variable: true,
                    elements: typed,
                    expected,
                    found: buf.len() as u64,
                }
                .into());
            }
            let convert = (dtype != v.dtype).then_some((v.dtype, dtype));
            let buf = ElementsMut::Bytes(buf);
            given.insert(name, GivenBuf { buf, convert });
        }
        in_pool(options, || {
            skeleton::run(self, HostDestination::into_buffers(given), options)
        })
    }

    fn initialize_in_pool(&mut self, device: Device, options: &LoadOptions) -> Result<LoadReport> {
        let gpus = self.gpus(device, options);
        if gpus.is_empty() {
            return skeleton::run(self, HostDestination::default(), options);
        }
        #[cfg(feature = "cuda")]
        {
            let _current = crate::gpu::cuda::KeepCurrent::new();
            let links = gpus
                .iter()
                .map(|(&n, var)| {
                    crate::gpu::cuda::link(n).map_err(|e| match e.kind() {
                        ErrorKind::DeviceUnavailable { device, reason } => {
                            ErrorKind::DeviceUnavailable {
                                device: device.clone(),
                                reason: format!("{reason} (variable {var:?} is placed there)"),
                            }
                            .into()
                        }
                        _ => e,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let links: Vec<(Device, &crate::gpu::cuda::CudaLink)> = gpus
                .keys()
                .zip(&links)
                .map(|(&n, l)| (Device::Cuda(n), &**l))
                .collect();
            // Replicas: shares all-gathered over NCCL, or (without it) whole on every GPU.
            #[cfg(feature = "nccl")]
            let nccl = crate::gpu::nccl::NcclGather { links: &links };
            #[cfg(feature = "nccl")]
            let (gather, fallback): (
                Option<&dyn crate::gpu::destination::Gather>,
                Option<String>,
            ) = if self.replicas.is_empty() {
                (None, None)
            } else {
                match crate::gpu::cuda::nccl_usable() {
                    Ok(()) => (Some(&nccl), None),
                    Err(why) => (None, Some(why)),
                }
            };
            #[cfg(not(feature = "nccl"))]
            let (gather, fallback): (_, Option<String>) = (None, None);
            let mut report =
                self.initialize_on_links(&links, device, gather, options, Default::default())?;
            if let Some(why) = fallback {
                report.warnings.push(format!(
                    "replicas: {why}; so every replica was loaded whole over its own PCIe link"
                ));
            }
            Ok(report)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let (n, var) = gpus.iter().next().map_or((0, ""), |(n, v)| (*n, *v));
            Err(ErrorKind::DeviceUnavailable {
                device: format!("cuda:{n}"),
                reason: format!(
                    "variable {var:?} is placed there, and this build of tfckpt has no GPU support (build with the `cuda` feature); use the cpu device"
                ),
            }
            .into())
        }
    }

    /// The GPUs `initialize(default)` loads onto: each ordinal with the first variable (or part)
    /// of this rank placed there. String variables stay on the host.
    fn gpus(&self, default: Device, options: &LoadOptions) -> BTreeMap<u32, &str> {
        let mut gpus = BTreeMap::new();
        for v in self.vars.values() {
            if v.dtype.size().is_none() || !options.owns(v) {
                continue;
            }
            if let Device::Cuda(n) = self.device_of(&v.name, default) {
                gpus.entry(n).or_insert(v.name.as_str());
            }
            for d in self.replicas_of(&v.name).unwrap_or_default() {
                if let Device::Cuda(n) = *d {
                    gpus.entry(n).or_insert(v.name.as_str());
                }
            }
        }
        gpus
    }
}

/// Runs `f` on the pool `options` asks for: the global one, or one of `options.threads` threads.
pub(crate) fn in_pool<R: Send>(
    options: &LoadOptions,
    f: impl FnOnce() -> Result<R> + Send,
) -> Result<R> {
    match options.threads {
        None => f(),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| ErrorKind::InvalidArgument(format!("cannot start {n} threads: {e}")))?
            .install(f),
    }
}
