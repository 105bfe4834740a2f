//! Where a store's variables live: a device per variable or part, replicas on several GPUs, and
//! the trainer's own device buffers (used by the next GPU initialization).

use crate::base::device::{device_list, Device, DeviceBuffer, DeviceTensor};
use crate::base::error::{ErrorKind, Result};
use crate::init::store::{Variable, VariableStore};

impl VariableStore {
    /// Loads variable (or part) `name` into the trainer's own device memory at the next GPU
    /// initialization, instead of memory the library allocates. The buffer must hold exactly the
    /// variable's bytes (in the dtype it will have on the device). In a load spread over ranks
    /// ([`LoadOptions::rank`](crate::LoadOptions::rank)), a buffer for a variable that rank does
    /// not own makes the load an error before anything is read.
    pub fn set_device_buffer(&mut self, name: &str, buffer: DeviceBuffer) -> Result<()> {
        let v = self.var_for_buffer(name)?;
        if v.dtype.size().is_none() {
            return Err(ErrorKind::BadVariable {
                name: name.into(),
                reason: "string variables stay in host memory".into(),
            }
            .into());
        }
        self.device_buffers.insert(name.into(), buffer);
        Ok(())
    }

    /// Places variable `name` on `device`: [`initialize`](Self::initialize) then loads it there,
    /// whatever device it is given (that one is the default for variables placed nowhere). The
    /// name of a partitioned variable places every part; a part's name (`NAME/part_i`) places that
    /// part. String variables stay in host memory wherever they are placed, as in TensorFlow.
    /// Whether a GPU exists is checked when `initialize` runs.
    ///
    /// ```
    /// use tfckpt::{DType, Device, Init, VariableStore};
    ///
    /// let mut store = VariableStore::new();
    /// store.get_variable("dense/kernel", &[4, 2], DType::F32, Init::Zeros)?;
    /// store.get_partitioned_variable("emb", &[9, 2], DType::F32, &[3, 1], Init::Zeros)?;
    /// store.get_variable("vocab", &[9], DType::String, Init::Zeros)?;
    /// store.set_device("dense/kernel", Device::Cpu)?;
    /// store.set_part_devices("emb", &[Device::Cuda(0), Device::Cuda(1), Device::Cuda(2)])?;
    /// store.set_device("vocab", Device::Cuda(1))?;
    /// assert_eq!(store.device_of("emb/part_1", Device::Cpu), Device::Cuda(1));
    /// assert_eq!(store.device_of("dense/kernel", Device::Cuda(0)), Device::Cpu);
    /// assert_eq!(store.device_of("vocab", Device::Cuda(0)), Device::Cpu); // strings stay
    /// # Ok::<(), tfckpt::Error>(())
    /// ```
    pub fn set_device(&mut self, name: &str, device: Device) -> Result<()> {
        if let Some(pv) = self.partitioned.get(name) {
            for p in pv.parts.clone() {
                self.place(&p, device);
            }
            return Ok(());
        }
        self.var_or_err(name)?;
        self.place(name, device);
        Ok(())
    }

    /// Places the parts of partitioned variable `name`: part `i` on `devices[i]`. The list has
    /// exactly one device per part.
    pub fn set_part_devices(&mut self, name: &str, devices: &[Device]) -> Result<()> {
        let pv = self.partitioned_or_err(name)?;
        if devices.len() != pv.parts.len() {
            return Err(ErrorKind::BadVariable {
                name: name.into(),
                reason: format!(
                    "it has {} parts, so it takes {} devices, one per part; {} were given ({})",
                    pv.parts.len(),
                    pv.parts.len(),
                    devices.len(),
                    device_list(devices)
                ),
            }
            .into());
        }
        for (p, &d) in pv.parts.clone().iter().zip(devices) {
            self.place(p, d);
        }
        Ok(())
    }

    /// Places every variable and part for which `f` names a device (`None` leaves it as it is):
    /// placement by a rule over names, e.g. the parts of every embedding round-robin over the GPUs
    /// (`v.part` says which part a variable is).
    pub fn place_with(&mut self, mut f: impl FnMut(&Variable) -> Option<Device>) {
        let placed: Vec<(String, Device)> = self
            .vars
            .values()
            .filter_map(|v| f(v).map(|d| (v.name.clone(), d)))
            .collect();
        for (name, d) in placed {
            self.place(&name, d);
        }
    }

    /// Replicates variable `name` (a variable, a part, or every part of a partitioned variable)
    /// on each of `devices`, all GPUs (data parallelism, TF's `MirroredStrategy`): after
    /// `initialize` every device holds the whole value ([`device_replicas`](Self::device_replicas);
    /// [`device_value`](Self::device_value) is the first). With the `nccl` feature the value
    /// crosses PCIe once in total: each GPU loads a 1/N share over its own link and NCCL
    /// all-gathers the shares between the GPUs (NVLink where there is one); without it, each GPU
    /// loads the whole value over its own link.
    pub fn set_replicas(&mut self, name: &str, devices: &[Device]) -> Result<()> {
        let names: Vec<String> = match self.partitioned.get(name) {
            Some(pv) => pv.parts.clone(),
            None => vec![self.var_or_err(name)?.name.clone()],
        };
        let bad = |reason: String| -> crate::Error {
            ErrorKind::BadVariable {
                name: name.into(),
                reason,
            }
            .into()
        };
        if devices.is_empty() || devices.contains(&Device::Cpu) {
            return Err(bad(format!(
                "replicas go on one or more GPUs (cuda:N); {} were given",
                if devices.is_empty() {
                    "none".to_string()
                } else {
                    device_list(devices)
                }
            )));
        }
        if let Some((i, d)) = devices
            .iter()
            .enumerate()
            .find(|(i, d)| devices[..*i].contains(d))
        {
            return Err(bad(format!("{d} is given twice (devices[{i}])")));
        }
        if self.vars[&names[0]].dtype.size().is_none() {
            return Err(bad("string variables stay in host memory".into()));
        }
        for n in names {
            self.placement.insert(n.clone(), devices[0]);
            self.replicas.insert(n, devices.to_vec());
        }
        Ok(())
    }

    /// The devices variable (or part) `name` is replicated on ([`set_replicas`](Self::set_replicas)),
    /// or `None`.
    pub fn replicas_of(&self, name: &str) -> Option<&[Device]> {
        self.replicas.get(name).map(Vec::as_slice)
    }

    /// Every replica of a replicated variable after a GPU initialization, in the order of its
    /// devices; empty for a variable that is not replicated.
    pub fn device_replicas(&self, name: &str) -> &[DeviceTensor] {
        self.replica_values.get(name).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn place(&mut self, name: &str, device: Device) {
        self.replicas.remove(name);
        self.placement.insert(name.into(), device);
    }

    /// Where variable (or part) `name` lives when `initialize(default)` runs: its placement, or
    /// `default`. String variables live in host memory.
    pub fn device_of(&self, name: &str, default: Device) -> Device {
        match self.vars.get(name) {
            Some(v) if v.dtype.size().is_none() => Device::Cpu,
            _ => self.placement.get(name).copied().unwrap_or(default),
        }
    }
}
