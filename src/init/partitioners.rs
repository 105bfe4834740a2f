//! TensorFlow's partitioners (docs/format.md#66-partition-naming-and-split-rules): each returns
//! what `get_variable(..., partitioner=...)` gets, one entry per dimension with at most one above
//! 1, to pass to
//! [`VariableStore::get_partitioned_variable`](crate::VariableStore::get_partitioned_variable).
//!
//! Each computes what TensorFlow's (`tensorflow/python/ops/partitioned_variables.py`) computes,
//! and is an error where TensorFlow's raises one: an axis the shape does not have, a size of 0
//! that TensorFlow divides by. A count of 0 parts (`fixed_size` on an empty axis, or with
//! `num_shards` 0) is returned as TensorFlow returns it, and `get_partitioned_variable` refuses it
//! as `get_variable` does.

use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};

/// `[1, .., parts at axis, .., 1]`, or the error TensorFlow raises for an axis the shape lacks.
fn with_axis(partitioner: &str, shape: &[u64], axis: usize, parts: u64) -> Result<Vec<u64>> {
    let mut p = vec![1; shape.len()];
    *p.get_mut(axis).ok_or_else(|| {
        invalid(
            partitioner,
            format!("cannot partition along axis {axis} a variable of shape {shape:?}"),
        )
    })? = parts;
    Ok(p)
}

fn invalid(partitioner: &str, reason: String) -> crate::Error {
    ErrorKind::InvalidArgument(format!("{partitioner}: {reason}")).into()
}

fn elem_bytes(dtype: DType, bytes_per_string_element: u64) -> u64 {
    dtype.size().map_or(bytes_per_string_element, |s| s as u64)
}

/// `tf.compat.v1.fixed_size_partitioner(num_shards, axis)`: `min(num_shards, shape[axis])` parts.
pub fn fixed_size(num_shards: u64, axis: usize, shape: &[u64]) -> Result<Vec<u64>> {
    let d = shape.get(axis).copied().unwrap_or(0);
    with_axis("fixed_size_partitioner", shape, axis, num_shards.min(d))
}

/// `tf.compat.v1.min_max_variable_partitioner(max_partitions, axis, min_slice_size,
/// bytes_per_string_element)`: as many parts as keep each at least `min_slice_size` bytes, at most
/// `max_partitions`, at least 1 (TF's defaults: 1, 0, 256 KiB, 16).
pub fn min_max_variable(
    max_partitions: u64,
    axis: usize,
    min_slice_size: u64,
    bytes_per_string_element: u64,
    shape: &[u64],
    dtype: DType,
) -> Result<Vec<u64>> {
    const NAME: &str = "min_max_variable_partitioner";
    let d = shape.get(axis).copied().unwrap_or(0);
    if axis < shape.len() && min_slice_size == 0 {
        // TensorFlow divides by it.
        return Err(invalid(NAME, "min_slice_size must be positive".into()));
    }
    let total = shape.iter().map(|&x| x as f64).product::<f64>()
        * elem_bytes(dtype, bytes_per_string_element) as f64;
    let wanted = (total / min_slice_size as f64).ceil() as u64;
    with_axis(NAME, shape, axis, wanted.min(max_partitions).min(d).max(1))
}

/// `tf.compat.v1.variable_axis_size_partitioner(max_shard_bytes, axis, bytes_per_string_element,
/// max_shards)`: parts of at most `max_shard_bytes` each (at least one slice of the axis per part),
/// at most `max_shards` (`Some(0)`, false in Python, sets no limit, as in TensorFlow).
pub fn variable_axis_size(
    max_shard_bytes: u64,
    axis: usize,
    bytes_per_string_element: u64,
    max_shards: Option<u64>,
    shape: &[u64],
    dtype: DType,
) -> Result<Vec<u64>> {
    const NAME: &str = "variable_axis_size_partitioner";
    if max_shard_bytes == 0 || bytes_per_string_element == 0 {
        return Err(invalid(
            NAME,
            "both max_shard_bytes and bytes_per_string_element must be positive".into(),
        ));
    }
    let Some(&d) = shape.get(axis) else {
        return with_axis(NAME, shape, axis, 1);
    };
    let per_slice = shape.iter().map(|&x| x as f64).product::<f64>() / d as f64
        * elem_bytes(dtype, bytes_per_string_element) as f64;
    if d == 0 || per_slice == 0.0 {
        // TensorFlow divides by both.
        return Err(invalid(
            NAME,
            format!("cannot size the parts of a variable of shape {shape:?}: it has no elements"),
        ));
    }
    let slices_per_shard = ((max_shard_bytes as f64 / per_slice).floor() as u64).max(1);
    let mut parts = d.div_ceil(slices_per_shard);
    if let Some(m) = max_shards.filter(|&m| m > 0) {
        parts = parts.min(m);
    }
    with_axis(NAME, shape, axis, parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        // H.1: 100x100 float, 8 KiB -> 5 parts; 16 KiB -> 3 parts.
        let mm = |max, min_slice, shape: &[u64]| {
            min_max_variable(max, 0, min_slice, 16, shape, DType::F32).unwrap()
        };
        assert_eq!(mm(5, 8 << 10, &[100, 100]), [5, 1]);
        assert_eq!(mm(5, 16 << 10, &[100, 100]), [3, 1]);
        assert_eq!(mm(1, 256 << 10, &[100, 100]), [1, 1]);
        assert_eq!(fixed_size(7, 0, &[100, 100]).unwrap(), [7, 1]);
        assert_eq!(fixed_size(7, 1, &[4, 3]).unwrap(), [1, 3]);
        // 100 rows of 400 bytes; 4000-byte shards hold 10 rows -> 10 parts, capped by max_shards.
        let vas = |max_bytes, max_shards, shape: &[u64]| {
            variable_axis_size(max_bytes, 0, 16, max_shards, shape, DType::F32).unwrap()
        };
        assert_eq!(vas(4000, None, &[100, 100]), [10, 1]);
        assert_eq!(vas(4000, Some(4), &[100, 100]), [4, 1]);
        assert_eq!(vas(1, None, &[3, 100]), [3, 1]);
    }

    /// What TensorFlow's partitioners compute at their edges, and where they raise (read from
    /// `partitioned_variables.py`).
    #[test]
    fn edges_as_in_tensorflow() {
        // fixed_size: min(num_shards, D) as it is, 0 included (get_variable then refuses it).
        assert_eq!(fixed_size(0, 0, &[5]).unwrap(), [0]);
        assert_eq!(fixed_size(3, 1, &[5, 0]).unwrap(), [1, 0]);
        assert_eq!(fixed_size(9, 0, &[5, 2]).unwrap(), [5, 1]);
        let e = fixed_size(2, 1, &[5]).unwrap_err().to_string();
        assert!(
            e.contains(
                "fixed_size_partitioner: cannot partition along axis 1 a variable of shape [5]"
            ),
            "{e}"
        );
        // min_max: at least 1 part (an empty variable, max_partitions 0); strings count
        // bytes_per_string_element each; an axis the shape lacks or a zero min_slice_size raise.
        let mm = |max, axis, min, shape: &[u64], dtype| {
            min_max_variable(max, axis, min, 16, shape, dtype)
        };
        assert_eq!(mm(4, 0, 1, &[0, 8], DType::F32).unwrap(), [1, 1]);
        assert_eq!(mm(0, 0, 1, &[8, 8], DType::F32).unwrap(), [1, 1]);
        assert_eq!(mm(8, 1, 100, &[10, 10], DType::String).unwrap(), [1, 8]);
        assert_eq!(mm(8, 1, 1000, &[10, 10], DType::String).unwrap(), [1, 2]);
        // 1584 bytes of float64: over 197-byte slices ceil(8.04) = 9 parts, over 198 exactly 8.
        assert_eq!(mm(100, 0, 197, &[9, 22], DType::F64).unwrap(), [9, 1]);
        assert_eq!(mm(100, 0, 198, &[9, 22], DType::F64).unwrap(), [8, 1]);
        // The axis is checked first, as in TensorFlow (before it divides by min_slice_size).
        assert!(mm(4, 2, 0, &[8, 8], DType::F32)
            .unwrap_err()
            .to_string()
            .contains("axis 2"));
        assert!(mm(4, 2, 1, &[8, 8], DType::F32)
            .unwrap_err()
            .to_string()
            .contains("axis 2"));
        assert!(mm(4, 0, 0, &[8, 8], DType::F32)
            .unwrap_err()
            .to_string()
            .contains("min_slice_size must be positive"));
        // variable_axis_size: max_shards 0 is no limit (false in Python); zero sizes raise.
        let vas = |max_bytes, per_string, max_shards, shape: &[u64], dtype| {
            variable_axis_size(max_bytes, 0, per_string, max_shards, shape, dtype)
        };
        assert_eq!(
            vas(400, 16, Some(0), &[100, 100], DType::F32).unwrap(),
            [100, 1]
        );
        assert_eq!(
            vas(400, 16, Some(7), &[100, 100], DType::F32).unwrap(),
            [7, 1]
        );
        // Strings: 100 elements of 16 bytes a row; 3200-byte shards hold 2 rows.
        assert_eq!(
            vas(3200, 16, None, &[5, 100], DType::String).unwrap(),
            [3, 1]
        );
        assert_eq!(
            vas(3200, 32, None, &[5, 100], DType::String).unwrap(),
            [5, 1]
        );
        for (max_bytes, per_string) in [(0, 16), (400, 0)] {
            let e = vas(max_bytes, per_string, None, &[4], DType::F32)
                .unwrap_err()
                .to_string();
            assert!(e.contains("must be positive"), "{e}");
        }
        for shape in [&[0u64, 4][..], &[4, 0]] {
            let e = vas(400, 16, None, shape, DType::F32)
                .unwrap_err()
                .to_string();
            assert!(e.contains("it has no elements"), "{e}");
        }
        assert!(variable_axis_size(400, 1, 16, None, &[4], DType::F32)
            .unwrap_err()
            .to_string()
            .contains("axis 1"));
    }
}
