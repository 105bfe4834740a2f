//! # tfckpt
//!
//! TensorFlow's `tf.compat.v1.train.init_from_checkpoint` for Rust: read TensorFlow checkpoints (V2
//! tensor bundles and V1 files, exactly as TensorFlow's own reader does), map their tensors onto a
//! model's variables through an assignment map ([`init_from_checkpoint`], [`VariableStore`]), load
//! the values when initialization runs, and write V2 bundles that TensorFlow reads back. The README
//! has the ten-line trainer example.
//!
//! ```no_run
//! use tfckpt::{Checkpoint, Slice};
//!
//! let ckpt = Checkpoint::open("/data/model.ckpt")?;        // a directory, prefix or .index file
//! for t in ckpt.tensors() {                                  // sorted; partitioned tensors once
//!     println!("{} {} {:?}", t.name, t.dtype, t.shape);
//! }
//! let kernel = ckpt.read("dense/kernel")?;                   // whole tensor, CRC-verified
//! let rows = ckpt.read_slice("embedding", &Slice::parse("0,100:-").unwrap())?;
//! let mut buf = vec![0u8; ckpt.byte_len("dense/kernel", None)?];
//! ckpt.read_into("dense/kernel", &mut buf)?;                 // into your own buffer
//! ckpt.verify()?;                                            // every block and tensor checksum
//! # Ok::<(), tfckpt::Error>(())
//! ```
//!
//! The format facts this crate implements are in `docs/format.md`; the README has the
//! supported-format table and the architecture.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]

// Test helpers shared with the integration tests name the crate `tfckpt`.
#[cfg(test)]
extern crate self as tfckpt;

mod base;
#[cfg(feature = "candle")]
pub mod candle;
mod devices;
#[cfg(feature = "safetensors")]
mod export;
mod format;
mod gpu;
mod init;
mod load;
mod reader;
#[cfg(feature = "remote")]
mod remote;

pub use base::crc;
pub use base::device::{Device, DeviceBuffer, DeviceTensor};
pub use base::dtype::DType;
pub use base::error::{escape_controls, Error, ErrorKind, Result};
pub use base::partial::{
    remove_partial_outputs, remove_partial_outputs_for_exit, MakingPartialOutput, PartialOutput,
};
pub use base::slice::{Extent, Slice};
pub use base::tensor::{Bytes, Element, HostBuffer, Strings, Tensor, TensorData};
#[cfg(feature = "safetensors")]
pub use export::{SafetensorsReport, SkippedTensor};
pub use format::writer::{write_checkpoint_state, CheckpointWriter, TensorRef, WriterOptions};
pub use init::assign::{
    init_from_checkpoint, init_from_opened_checkpoint, Assignment, AssignmentMap, InitReport,
    Target,
};
pub use init::partitioners;
pub use init::store::{Init, PartInfo, PartitionedVariable, Pending, Variable, VariableStore};
pub use load::{
    CancelToken, DeviceStats, DeviceTimes, LoadOptions, LoadReport, Ownership, Progress,
    RemoteOptions,
};
pub use reader::checkpoint::{Checkpoint, Format, TensorInfo, TensorView};
pub use reader::verify::VerifyReport;

/// The `cudarc` this crate is built against (feature `cuda`): name its types through this path
/// (a [`DeviceTensor::cuda_slice`]'s `CudaSlice`, a `CudaStream` for
/// [`DeviceBuffer`]) so that they are the same crate's as the library's, whatever version the
/// trainer's own manifest names.
#[cfg(feature = "cuda")]
pub use cudarc;

/// The README's examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

// What a trainer shares across threads (its loading thread, rayon workers, async tasks) stays
// shareable: a field that is not `Send + Sync` fails the build here, not in a trainer's code.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Checkpoint>();
    shared::<VariableStore>();
    shared::<LoadOptions>();
    shared::<Tensor>();
    shared::<TensorView>();
    shared::<Error>();
    shared::<DeviceTensor>();
};
