//! Owned tensors as read from (or written to) a checkpoint.

use crate::dtype::DType;
use crate::slice::num_elements;

/// The elements of a tensor: raw little-endian bytes for fixed-size dtypes, byte strings for
/// `string`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TensorData {
    /// Row-major little-endian elements (`num_elements × dtype.size()` bytes).
    Bytes(Vec<u8>),
    /// Row-major byte strings.
    Strings(Vec<Vec<u8>>),
}

/// A tensor: dtype, shape and elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first; empty for a scalar.
    pub shape: Vec<u64>,
    /// The elements.
    pub data: TensorData,
}

impl Tensor {
    /// A fixed-size tensor from its little-endian bytes; `None` if the dtype is not fixed-size or the
    /// length does not match the shape.
    pub fn from_bytes(dtype: DType, shape: &[u64], bytes: Vec<u8>) -> Option<Tensor> {
        let want = num_elements(shape)?.checked_mul(dtype.size()? as u64)?;
        (want == bytes.len() as u64).then(|| Tensor {
            dtype,
            shape: shape.to_vec(),
            data: TensorData::Bytes(bytes),
        })
    }

    /// A string tensor; `None` if the number of strings does not match the shape.
    pub fn from_strings(shape: &[u64], strings: Vec<Vec<u8>>) -> Option<Tensor> {
        (num_elements(shape)? == strings.len() as u64).then(|| Tensor {
            dtype: DType::String,
            shape: shape.to_vec(),
            data: TensorData::Strings(strings),
        })
    }

    /// A float32 tensor.
    pub fn from_f32(shape: &[u64], values: &[f32]) -> Option<Tensor> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_bytes(DType::F32, shape, bytes)
    }

    /// Number of elements.
    pub fn num_elements(&self) -> u64 {
        num_elements(&self.shape).unwrap_or(0)
    }

    /// The raw bytes of a fixed-size tensor.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.data {
            TensorData::Bytes(b) => Some(b),
            TensorData::Strings(_) => None,
        }
    }

    /// The strings of a string tensor.
    pub fn strings(&self) -> Option<&[Vec<u8>]> {
        match &self.data {
            TensorData::Strings(s) => Some(s),
            TensorData::Bytes(_) => None,
        }
    }

    /// The elements of a float32 tensor.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == DType::F32).then(|| {
            self.bytes()
                .unwrap_or_default()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
    }
}
