//! Fine-tuned `Var`s back into a TensorFlow checkpoint: the load's inverse, under the same names
//! and layouts.

use std::path::Path;

use candle_core::{Device, Storage};

use super::destination::bytes;
use super::CandleInit;
use crate::base::error::{Error, ErrorKind, Result};
use crate::format::writer::{CheckpointWriter, TensorRef, WriterOptions};

impl CandleInit {
    /// Writes every `Var` that has a TensorFlow name into a V2 checkpoint at `prefix`
    /// (`PREFIX.index` and `PREFIX.data-00000-of-00001`): under its TensorFlow name, in
    /// TensorFlow's layout (a `Linear` weight transposed back into its kernel) and in the `Var`'s
    /// dtype. That is what TensorFlow's `Saver` writes for the same variables, so TensorFlow's
    /// `init_from_checkpoint`, `tf.train.load_variable` and this crate read it back. A value
    /// loaded through [`DtypePolicy::CastToVariable`](super::DtypePolicy) is saved in the `Var`'s
    /// dtype, not the one it was read in.
    ///
    /// `Var`s on a GPU are copied to the host one at a time, so host memory holds one value
    /// beside the writer's buffer. The files are written under temporary names and renamed once
    /// all are complete: an error before the renames (a `Var` that cannot be read, a full disk)
    /// leaves `prefix` as it was (and removes the missing folders of `prefix` that it made, as
    /// `tf.train.Checkpoint.save` makes them); one among the renames leaves no index there (see
    /// [`CheckpointWriter::finish`]). Returns the number of tensors
    /// written. Write TensorFlow's `checkpoint` state file beside it with
    /// [`write_checkpoint_state`](crate::write_checkpoint_state) to make the directory form work.
    ///
    /// Under [`Convention::keras`](super::Convention::keras) the names are the object-based keys
    /// the `Var`s were loaded from, and no object graph is written: the same `Convention::keras`
    /// (the names of the checkpoint loaded from) reads the file back, but TensorFlow's
    /// `tf.train.Checkpoint.restore` into a Keras model does not (without a graph it matches by
    /// the variables' names, which a Keras 3 model's do not give; checked with TensorFlow 2.21).
    pub fn save_checkpoint(&self, prefix: impl AsRef<Path>) -> Result<usize> {
        let mut writer = CheckpointWriter::create(prefix.as_ref(), WriterOptions::default())?;
        for (tf, b) in &self.vars {
            let failed = |why: String| {
                self.wrap(
                    tf,
                    ErrorKind::InvalidArgument(format!("saving it: {why}")).into(),
                )
            };
            let candle = |e: candle_core::Error| failed(super::destination::first_line(&e));
            let mut value = b.var.as_tensor().clone();
            if b.transposed && value.rank() >= 2 {
                // Candle's `[out, in, spatial...]` back into TensorFlow's `[spatial..., in, out]`.
                let rank = value.rank();
                let axes: Vec<usize> = (2..rank).chain([1, 0]).collect();
                value = value.permute(axes).map_err(candle)?;
            }
            // Contiguous and at offset 0 on the host, in TensorFlow's (row-major) order.
            let value = value
                .to_device(&Device::Cpu)
                .and_then(|t| t.contiguous())
                .map_err(candle)?;
            // In the variable's TensorFlow shape: the value's own, or, for a depthwise kernel
            // (`[spatial..., 1, in * multiplier]` so), the `[spatial..., in, multiplier]` it was
            // loaded from, the same bytes.
            let shape: Vec<u64> = match self.store.vars.get(tf) {
                Some(v) => v.shape.clone(),
                None => value.dims().iter().map(|&d| d as u64).collect(),
            };
            let (storage, layout) = value.storage_and_layout();
            let Storage::Cpu(storage) = &*storage else {
                return Err(failed("its value did not reach the host".into()));
            };
            let size = b.dtype.size().unwrap_or(1);
            let start = layout.start_offset() * size;
            let data = bytes(storage)
                .get(start..start + value.elem_count() * size)
                .ok_or_else(|| failed("its storage is shorter than its shape".into()))?;
            writer
                .add(
                    tf,
                    TensorRef::Bytes {
                        dtype: b.dtype,
                        shape: &shape,
                        data,
                    },
                )
                .map_err(|e: Error| self.wrap(tf, e))?;
        }
        writer.finish()?;
        Ok(self.vars.len())
    }
}
