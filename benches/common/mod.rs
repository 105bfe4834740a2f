//! Shared by the benches: checkpoints written by the crate's own writer.

use std::path::Path;

use tfckpt::{CheckpointWriter, DType, TensorRef, WriterOptions};

/// Writes `count` float32 tensors of `elems` elements each, named by `name(i)`, into one shard;
/// returns their bytes.
pub fn write_f32s(prefix: &Path, count: usize, elems: usize, name: fn(usize) -> String) -> u64 {
    let mut w = CheckpointWriter::create(prefix, WriterOptions::default()).unwrap();
    let data: Vec<u8> = (0..elems * 4).map(|i| (i * 7 % 251) as u8).collect();
    for i in 0..count {
        w.add(
            &name(i),
            TensorRef::Bytes {
                dtype: DType::F32,
                shape: &[elems as u64],
                data: &data,
            },
        )
        .unwrap();
    }
    w.finish().unwrap();
    (count * elems * 4) as u64
}
