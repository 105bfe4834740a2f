//! Checkpoints written by the crate's own writer, for tests that need a small one of their own.

use std::path::{Path, PathBuf};

use tfckpt::{CheckpointWriter, DType, Tensor, TensorRef, WriterOptions};

/// A checkpoint being written at one prefix:
///
/// ```ignore
/// let mut b = CkptBuilder::new(dir.join("ckpt"));
/// b.f32("a", &[2], &[1.0, 2.0]).f32("b", &[1], &[3.0]);
/// let prefix = b.finish();
/// ```
///
/// Every call panics on an error: tests that check the writer's own errors use `CheckpointWriter`.
pub struct CkptBuilder {
    writer: CheckpointWriter,
    prefix: PathBuf,
}

impl CkptBuilder {
    /// A checkpoint at `prefix` with the default options (one shard).
    pub fn new(prefix: impl AsRef<Path>) -> CkptBuilder {
        CkptBuilder::with_options(prefix, WriterOptions::default())
    }

    pub fn with_options(prefix: impl AsRef<Path>, options: WriterOptions) -> CkptBuilder {
        let prefix = prefix.as_ref().to_path_buf();
        let writer = CheckpointWriter::create(&prefix, options).unwrap();
        CkptBuilder { writer, prefix }
    }

    /// Adds a whole tensor.
    pub fn tensor(&mut self, name: &str, t: &Tensor) -> &mut CkptBuilder {
        self.writer
            .add(name, t.into())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        self
    }

    /// Adds a float32 tensor.
    pub fn f32(&mut self, name: &str, shape: &[u64], values: &[f32]) -> &mut CkptBuilder {
        self.tensor(name, &Tensor::from_f32(shape, values).unwrap())
    }

    /// Adds a tensor of a fixed-size dtype from its little-endian bytes.
    pub fn bytes(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: &[u8],
    ) -> &mut CkptBuilder {
        self.writer
            .add(name, TensorRef::Bytes { dtype, shape, data })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        self
    }

    /// Writes the index and returns the prefix.
    pub fn finish(self) -> PathBuf {
        self.writer.finish().unwrap();
        self.prefix
    }
}
