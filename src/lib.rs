//! # tfckpt
//!
//! TensorFlow's `tf.compat.v1.train.init_from_checkpoint` for Rust: read TensorFlow checkpoints (V2
//! tensor bundles and V1 files, exactly as TensorFlow's own reader does), map their tensors onto a
//! model's variables through an assignment map ([`init_from_checkpoint`], [`VariableStore`]), load
//! the values when initialization runs, and write V2 bundles that TensorFlow reads back.
//!
//! A trainer declares its variables, maps the checkpoint onto them, and loads:
//!
//! ```
//! use tfckpt::{init_from_checkpoint, AssignmentMap, DType, Device, Init, Target, VariableStore};
//! # let dir = tempfile::tempdir()?;
//! # let ckpt_path = dir.path().join("model.ckpt");
//! # let mut w = tfckpt::CheckpointWriter::create(&ckpt_path, Default::default())?;
//! # let var1 = tfckpt::Tensor::from_f32(&[20, 2], &[0.5; 40]).unwrap();
//! # w.add("old_scope_1/var1", (&var1).into())?;
//! # let var3 = tfckpt::Tensor::from_f32(&[100, 100], &[2.0; 10_000]).unwrap();
//! # w.add("old_scope_2/var3", (&var3).into())?;
//! # w.finish()?;
//!
//! let mut store = VariableStore::new();                      // the model's variables
//! store.get_variable("new_scope_1/var1", &[20, 2], DType::F32, Init::Zeros)?;
//! store.get_partitioned_variable("new_scope_2/var3", &[100, 100], DType::F32, &[5, 1], Init::Zeros)?;
//! init_from_checkpoint(&mut store, &ckpt_path, &AssignmentMap::from([
//!     ("old_scope_1/", Target::scope("new_scope_1")),        // each variable under new_scope_1/
//!     ("old_scope_2/var3", Target::name("new_scope_2/var3")),// a partitioned variable: 5 parts
//! ]))?;                                                      // checks everything, reads no values
//! store.initialize(Device::Cpu)?;                            // loads now, all or nothing
//! let var1: Vec<f32> = store.value("new_scope_1/var1").unwrap().to_vec().unwrap();
//! let var3 = store.partitioned_value("new_scope_2/var3")?;   // the 5 parts joined
//! assert_eq!((var1[0], var3.to_vec::<f32>().unwrap()[9_999]), (0.5, 2.0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`VariableStore::initialize_into`] loads into the trainer's own buffers instead, and
//! `initialize(Device::Cuda(n))` (feature `cuda`) into GPU memory. The reader alone:
//!
//! ```
//! use tfckpt::{Checkpoint, Slice};
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("model.ckpt");
//! # let mut w = tfckpt::CheckpointWriter::create(&path, Default::default())?;
//! # let t = tfckpt::Tensor::from_f32(&[200, 4], &[1.0; 800]).unwrap();
//! # w.add("dense/kernel", (&t).into())?;
//! # w.add("embedding", (&t).into())?;
//! # w.finish()?;
//!
//! let ckpt = Checkpoint::open(&path)?;                       // a directory, prefix or .index file
//! for t in ckpt.tensors() {                                  // sorted; partitioned tensors once
//!     println!("{} {} {:?}", t.name, t.dtype, t.shape);
//! }
//! let kernel = ckpt.read("dense/kernel")?;                   // whole tensor, CRC-verified
//! let rows = ckpt.read_slice("embedding", &Slice::parse("0,100:-").unwrap())?;
//! let mut buf = vec![0u8; ckpt.byte_len("dense/kernel", None)?];
//! ckpt.read_into("dense/kernel", &mut buf)?;                 // into your own buffer
//! ckpt.verify()?;                                            // every block and tensor checksum
//! # assert_eq!((kernel.shape.as_slice(), rows.shape.as_slice()), (&[200, 4][..], &[100, 4][..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
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
pub use reader::object_names::ObjectNames;
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
