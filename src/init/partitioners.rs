//! TensorFlow's partitioners (docs/format.md#66-partition-naming-and-split-rules): each returns
//! what `get_variable(..., partitioner=...)` gets, one entry per dimension with at most one above
//! 1, to pass to
//! [`VariableStore::get_partitioned_variable`](crate::VariableStore::get_partitioned_variable).

use crate::base::dtype::DType;

fn with_axis(rank: usize, axis: usize, parts: u64) -> Vec<u64> {
    let mut p = vec![1; rank];
    if axis < rank {
        p[axis] = parts.max(1);
    }
    p
}

fn elem_bytes(dtype: DType, bytes_per_string_element: u64) -> u64 {
    dtype.size().map_or(bytes_per_string_element, |s| s as u64)
}

/// `tf.compat.v1.fixed_size_partitioner(num_shards, axis)`: `min(num_shards, shape[axis])` parts.
pub fn fixed_size(num_shards: u64, axis: usize, shape: &[u64]) -> Vec<u64> {
    let d = shape.get(axis).copied().unwrap_or(1);
    with_axis(shape.len(), axis, num_shards.min(d))
}

/// `tf.compat.v1.min_max_variable_partitioner(max_partitions, axis, min_slice_size,
/// bytes_per_string_element)`: as many parts as keep each at least `min_slice_size` bytes, at most
/// `max_partitions` (TF's defaults: 1, 0, 256 KiB, 16).
pub fn min_max_variable(
    max_partitions: u64,
    axis: usize,
    min_slice_size: u64,
    bytes_per_string_element: u64,
    shape: &[u64],
    dtype: DType,
) -> Vec<u64> {
    let d = shape.get(axis).copied().unwrap_or(1);
    let total = shape.iter().map(|&x| x as f64).product::<f64>()
        * elem_bytes(dtype, bytes_per_string_element) as f64;
    let wanted = (total / min_slice_size.max(1) as f64).ceil() as u64;
    with_axis(shape.len(), axis, wanted.min(max_partitions).min(d).max(1))
}

/// `tf.compat.v1.variable_axis_size_partitioner(max_shard_bytes, axis, bytes_per_string_element,
/// max_shards)`: parts of at most `max_shard_bytes` each (at least one slice of the axis per part).
pub fn variable_axis_size(
    max_shard_bytes: u64,
    axis: usize,
    bytes_per_string_element: u64,
    max_shards: Option<u64>,
    shape: &[u64],
    dtype: DType,
) -> Vec<u64> {
    let d = shape.get(axis).copied().unwrap_or(1).max(1);
    let per_slice = shape.iter().map(|&x| x as f64).product::<f64>() / d as f64
        * elem_bytes(dtype, bytes_per_string_element) as f64;
    let slices_per_shard = ((max_shard_bytes as f64 / per_slice).floor() as u64).max(1);
    let mut parts = d.div_ceil(slices_per_shard);
    if let Some(m) = max_shards {
        parts = parts.min(m);
    }
    with_axis(shape.len(), axis, parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        // H.1: 100x100 float, 8 KiB -> 5 parts; 16 KiB -> 3 parts.
        assert_eq!(
            min_max_variable(5, 0, 8 << 10, 16, &[100, 100], DType::F32),
            [5, 1]
        );
        assert_eq!(
            min_max_variable(5, 0, 16 << 10, 16, &[100, 100], DType::F32),
            [3, 1]
        );
        assert_eq!(
            min_max_variable(1, 0, 256 << 10, 16, &[100, 100], DType::F32),
            [1, 1]
        );
        assert_eq!(fixed_size(7, 0, &[100, 100]), [7, 1]);
        assert_eq!(fixed_size(7, 1, &[4, 3]), [1, 3]);
        // 100 rows of 400 bytes; 4000-byte shards hold 10 rows -> 10 parts, capped by max_shards.
        assert_eq!(
            variable_axis_size(4000, 0, 16, None, &[100, 100], DType::F32),
            [10, 1]
        );
        assert_eq!(
            variable_axis_size(4000, 0, 16, Some(4), &[100, 100], DType::F32),
            [4, 1]
        );
        assert_eq!(
            variable_axis_size(1, 0, 16, None, &[3, 100], DType::F32),
            [3, 1]
        );
    }
}
