//! The load: `VariableStore::initialize` (TF's `global_variables_initializer()`). One skeleton
//! for every device (`skeleton`: plan, unmapped initializers, all or nothing, report) over a
//! destination that says how bytes land; the host destination (`host`) with its staged pipeline
//! (`pipeline`), the planner (`plan`) and the opt-in casts (`cast`) live here, the GPU
//! destination in `gpu`.

pub(crate) mod cast;
pub(crate) mod host;
mod options;
pub(crate) mod pipeline;
pub(crate) mod plan;
pub(crate) mod report;
pub(crate) mod skeleton;

#[cfg(feature = "remote")]
pub(crate) use options::MAX_BACKOFF;
pub use options::{CancelToken, LoadOptions, Ownership, RemoteOptions};
pub use report::{DeviceStats, DeviceTimes, LoadReport, Progress};
