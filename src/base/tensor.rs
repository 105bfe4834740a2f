//! Owned tensors as read from (or written to) a checkpoint.

use crate::base::dtype::DType;
use crate::base::slice::num_elements;

/// The bytes of a fixed-size tensor: owned memory, or a copy-on-write mapping of the checkpoint file.
///
/// With [`LoadOptions::map_values`](crate::LoadOptions::map_values),
/// [`VariableStore::initialize`](crate::VariableStore::initialize) hands out large values (1 MiB and
/// up) that a checkpoint stores exactly as the variable needs them, at an aligned offset, as
/// *private mappings of the checkpoint file*, checked against their CRC32C: no copy is made,
/// reading them reads the page cache, and the first write to a page gives the value its own copy
/// of that page (the file is never written). Such a value relies on the checkpoint file not being
/// modified or truncated in place while the value lives (replacing the file by a rename, or
/// deleting it, is fine; TensorFlow's writer always does that): an in-place change shows up in
/// pages the trainer has not written yet, unchecked, and a truncation raises `SIGBUS` when they are
/// read. The first write to each page pays a page fault and a 4 KiB copy: the copy the load
/// skipped, deferred to first use and dearer than a bulk copy. Either way a `Bytes` derefs to
/// `[u8]`, mutably too.
pub struct Bytes(Repr);

enum Repr {
    Owned(Vec<u8>),
    Mapped(crate::base::mmap::PrivateMap),
}

impl Bytes {
    pub(crate) fn mapped(m: crate::base::mmap::PrivateMap) -> Bytes {
        Bytes(Repr::Mapped(m))
    }

    /// Whether the bytes are a copy-on-write mapping of a checkpoint file (see the type's docs).
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Repr::Mapped(_))
    }

    /// The bytes as a vector (a copy for mapped bytes).
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Owned(v) => v,
            Repr::Mapped(m) => m.as_slice().to_vec(),
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Mapped(m) => m.as_slice(),
        }
    }
}

impl std::ops::DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Repr::Owned(v) => v,
            Repr::Mapped(m) => m.as_mut_slice(),
        }
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Vec<u8> {
        b.into_vec()
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes(Repr::Owned(v))
    }
}

impl Default for Bytes {
    fn default() -> Bytes {
        Vec::new().into()
    }
}

impl Clone for Bytes {
    /// An owned copy (a mapped value's clone is ordinary memory).
    fn clone(&self) -> Bytes {
        self.to_vec().into()
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        **self == **other
    }
}

impl Eq for Bytes {}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// The elements of a tensor: raw little-endian bytes for fixed-size dtypes, byte strings for
/// `string`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TensorData {
    /// Row-major little-endian elements (`num_elements × dtype.size()` bytes).
    Bytes(Bytes),
    /// Row-major byte strings.
    Strings(Vec<Vec<u8>>),
}

impl TensorData {
    /// The elements, to write into.
    pub(crate) fn elements_mut(&mut self) -> ElementsMut<'_> {
        match self {
            TensorData::Bytes(b) => ElementsMut::Bytes(b),
            TensorData::Strings(s) => ElementsMut::Strings(s),
        }
    }
}

/// Where the elements of a read go: a byte buffer (fixed-size dtypes) or byte strings.
pub(crate) enum ElementsMut<'a> {
    Bytes(&'a mut [u8]),
    Strings(&'a mut [Vec<u8>]),
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
            data: TensorData::Bytes(bytes.into()),
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
