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

    /// An error when a library read found the checkpoint file truncated under these (mapped)
    /// bytes: the pages past its end then read as zeros.
    pub(crate) fn intact(&self) -> crate::Result<()> {
        match &self.0 {
            Repr::Mapped(m) if m.faulted() => Err(crate::ErrorKind::Truncated {
                path: m.path().to_path_buf(),
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// An error when the checkpoint file under these (mapped) bytes was changed in place since they
    /// were checked: their pages not yet written show the new bytes.
    pub(crate) fn unchanged(&self) -> crate::Result<()> {
        self.mapping().map_or(Ok(()), |m| m.unchanged())
    }

    /// [`unchanged`](Self::unchanged), asking each file once: `asked` holds the files asked so
    /// far (many values may map one shard).
    pub(crate) fn unchanged_once<'a>(
        &'a self,
        asked: &mut Vec<&'a std::path::Path>,
    ) -> crate::Result<()> {
        match self.mapping() {
            Some(m) if !asked.contains(&m.path()) => {
                asked.push(m.path());
                m.unchanged()
            }
            _ => Ok(()),
        }
    }

    /// The mapping these bytes are, if they are one.
    fn mapping(&self) -> Option<&crate::base::mmap::PrivateMap> {
        match &self.0 {
            Repr::Mapped(m) => Some(m),
            Repr::Owned(_) => None,
        }
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

/// How many bytes (or strings) `Debug` shows of a value before it gives only the count: a model's
/// values in a log line or a failed `assert_eq!` must not print gigabytes.
const DEBUG_HEAD: usize = 64;

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.len() <= DEBUG_HEAD {
            return (**self).fmt(f);
        }
        write!(f, "{:?}… ({} bytes)", &self[..DEBUG_HEAD], self.len())
    }
}

/// The elements of a string tensor: the byte strings back to back, with where each ends.
///
/// A string costs its bytes plus 8 bytes of bookkeeping, and no allocation of its own (a
/// `Vec<Vec<u8>>` costs 24 bytes plus an allocation per string), so a string tensor's memory
/// is bounded by what its checkpoint holds: a stored string takes at least one byte.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Strings {
    bytes: Vec<u8>,
    ends: Vec<u64>,
}

impl Strings {
    /// No strings.
    pub fn new() -> Strings {
        Strings::default()
    }

    /// `n` empty strings, or an allocation error naming `what`.
    pub(crate) fn empty(n: usize, what: &str) -> crate::Result<Strings> {
        Ok(Strings {
            bytes: Vec::new(),
            ends: try_zeroed(n, what)?,
        })
    }

    /// Strings from their lengths (in order) and all their bytes back to back; `None` when the
    /// lengths do not add up to the bytes.
    pub(crate) fn from_parts(ends: Vec<u64>, bytes: Vec<u8>) -> Option<Strings> {
        let ordered = ends.windows(2).all(|w| w[0] <= w[1]);
        (ordered && ends.last().copied().unwrap_or(0) == bytes.len() as u64)
            .then_some(Strings { bytes, ends })
    }

    /// Copies of `items`, allocated fallibly (an error naming `what`).
    pub(crate) fn try_from_slices(items: &[Vec<u8>], what: &str) -> crate::Result<Strings> {
        let total: usize = items.iter().map(Vec::len).sum();
        let mut ends = Vec::new();
        let mut bytes = Vec::new();
        let failed = |n: usize| crate::ErrorKind::Allocation {
            bytes: n as u64,
            tensor: what.to_string(),
        };
        ends.try_reserve_exact(items.len())
            .map_err(|_| failed(items.len() * 8))?;
        bytes.try_reserve_exact(total).map_err(|_| failed(total))?;
        for s in items {
            bytes.extend_from_slice(s);
            ends.push(bytes.len() as u64);
        }
        Ok(Strings { bytes, ends })
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no strings.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.bytes[start..end])
    }

    /// Every string, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| &self[i])
    }

    /// Adds a string at the end.
    pub fn push(&mut self, s: &[u8]) {
        self.bytes.extend_from_slice(s);
        self.ends.push(self.bytes.len() as u64);
    }

    /// Bytes of all the strings together.
    pub fn total_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The strings as vectors (a copy).
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }

    /// Where string `i` starts (`i == len()`: the end of the bytes).
    fn start(&self, i: u64) -> u64 {
        if i == 0 {
            0
        } else {
            self.ends[i as usize - 1]
        }
    }

    /// All the bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Strings put together from runs of other strings (a box of a tensor from the boxes that hold its
/// parts), in two passes: every run's lengths first ([`lengths`](Self::lengths)), then, once the
/// offsets are known ([`offsets`](Self::offsets)), every run's bytes ([`bytes`](Self::bytes)).
/// A source may be dropped between the passes and decoded again for the second.
pub(crate) struct StringsByRuns {
    ends: Vec<u64>,
    bytes: Vec<u8>,
    /// A source's second pass did not match its first (the file changed in between).
    mismatch: bool,
}

impl StringsByRuns {
    /// `n` strings to fill; `what` names them in an allocation error.
    pub(crate) fn new(n: usize, what: &str) -> crate::Result<StringsByRuns> {
        Ok(StringsByRuns {
            ends: try_zeroed(n, what)?,
            bytes: Vec::new(),
            mismatch: false,
        })
    }

    /// First pass: strings `dst..dst + len` have the lengths of `src`'s strings `from..`.
    pub(crate) fn lengths(&mut self, src: &Strings, from: u64, dst: u64, len: u64) {
        for k in 0..len {
            let (s, e) = (src.start(from + k), src.ends[(from + k) as usize]);
            self.ends[(dst + k) as usize] = e - s;
        }
    }

    /// Between the passes: turns the lengths into offsets and allocates the bytes.
    pub(crate) fn offsets(&mut self, what: &str) -> crate::Result<()> {
        let mut total = 0u64;
        for e in &mut self.ends {
            total += *e;
            *e = total;
        }
        self.bytes = crate::base::mmap::alloc_zeroed(total as usize, what)?;
        Ok(())
    }

    /// Second pass: the bytes of `src`'s strings `from..from + len` for strings `dst..`.
    pub(crate) fn bytes(&mut self, src: &Strings, from: u64, dst: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (a, b) = (src.start(from) as usize, src.start(from + len) as usize);
        let d = if dst == 0 {
            0
        } else {
            self.ends[dst as usize - 1]
        } as usize;
        let e = self.ends[(dst + len) as usize - 1] as usize;
        if b - a != e - d {
            self.mismatch = true; // not the lengths of the first pass
            return;
        }
        self.bytes[d..e].copy_from_slice(&src.bytes[a..b]);
    }

    /// The strings; `None` when a source's two passes disagreed.
    pub(crate) fn finish(self) -> Option<Strings> {
        (!self.mismatch).then_some(Strings {
            bytes: self.bytes,
            ends: self.ends,
        })
    }
}

/// `n` zeros, or an allocation error naming `what`.
fn try_zeroed(n: usize, what: &str) -> crate::Result<Vec<u64>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| crate::ErrorKind::Allocation {
            bytes: (n as u64).saturating_mul(8),
            tensor: what.to_string(),
        })?;
    v.resize(n, 0);
    Ok(v)
}

impl std::ops::Index<usize> for Strings {
    type Output = [u8];
    fn index(&self, i: usize) -> &[u8] {
        match self.get(i) {
            Some(s) => s,
            None => panic!("string {i} of {}", self.len()),
        }
    }
}

impl<S: AsRef<[u8]>> FromIterator<S> for Strings {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Strings {
        let mut out = Strings::new();
        for s in iter {
            out.push(s.as_ref());
        }
        out
    }
}

impl From<Vec<Vec<u8>>> for Strings {
    fn from(v: Vec<Vec<u8>>) -> Strings {
        v.iter().collect()
    }
}

impl std::fmt::Debug for Strings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const HEAD: usize = DEBUG_HEAD / 4;
        f.debug_list()
            .entries(self.iter().take(HEAD).map(|s| String::from_utf8_lossy(s)))
            .finish()?;
        if self.len() > HEAD {
            write!(f, "… ({} strings)", self.len())?;
        }
        Ok(())
    }
}

/// The elements of a tensor: raw little-endian bytes for fixed-size dtypes, byte strings for
/// `string`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TensorData {
    /// Row-major little-endian elements (`num_elements × dtype.size()` bytes).
    Bytes(Bytes),
    /// Row-major byte strings.
    Strings(Strings),
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

/// Where the elements of a read go: a byte buffer (fixed-size dtypes), or the strings of a string
/// tensor (filled whole by the read).
pub(crate) enum ElementsMut<'a> {
    Bytes(&'a mut [u8]),
    /// The bytes of a value held otherwise than row-major (transposed: a 2-D value column-major,
    /// one of more axes as [`Held`](crate::base::copy::Held) says): a trainer's own tensor.
    #[cfg_attr(not(feature = "candle"), allow(dead_code))]
    Held(&'a mut [u8], crate::base::copy::Held),
    Strings(&'a mut Strings),
}

impl ElementsMut<'_> {
    /// The byte buffer and how it holds the value; `None` for strings.
    pub(crate) fn bytes(&mut self) -> Option<(&mut [u8], crate::base::copy::Held)> {
        match self {
            ElementsMut::Bytes(b) => Some((b, crate::base::copy::Held::AsStored)),
            ElementsMut::Held(b, held) => Some((b, *held)),
            ElementsMut::Strings(_) => None,
        }
    }

    /// The same buffer, borrowed for a shorter time.
    pub(crate) fn reborrow(&mut self) -> ElementsMut<'_> {
        match self {
            ElementsMut::Bytes(b) => ElementsMut::Bytes(b),
            ElementsMut::Held(b, held) => ElementsMut::Held(b, *held),
            ElementsMut::Strings(s) => ElementsMut::Strings(s),
        }
    }
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
    pub fn from_strings(shape: &[u64], strings: impl Into<Strings>) -> Option<Tensor> {
        let strings = strings.into();
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
    pub fn strings(&self) -> Option<&Strings> {
        match &self.data {
            TensorData::Strings(s) => Some(s),
            TensorData::Bytes(_) => None,
        }
    }

    /// The elements of a float32 tensor.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        self.to_vec()
    }

    /// The elements as `T`, when `T` is the tensor's dtype ([`Element`]): `t.to_vec::<i64>()`,
    /// `t.to_vec::<half::bf16>()`. `None` for another dtype (nothing is converted: see
    /// [`LoadOptions::cast`](crate::LoadOptions::cast)) and for strings.
    pub fn to_vec<T: Element>(&self) -> Option<Vec<T>> {
        if self.dtype != T::DTYPE {
            return None;
        }
        let b = self.bytes()?;
        Some(
            b.chunks_exact(std::mem::size_of::<T>())
                .map(T::from_le)
                .collect(),
        )
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust type that holds the elements of one dtype, as [`Tensor::to_vec`] reads them: `f32`,
/// `f64`, `i8`–`i64`, `u8`–`u64`, `bool`, and `half::bf16` / `half::f16` (half 2).
pub trait Element: Copy + sealed::Sealed {
    /// The dtype whose elements this type holds.
    const DTYPE: DType;
    /// One element from its little-endian bytes (`size_of::<Self>()` of them).
    #[doc(hidden)]
    fn from_le(bytes: &[u8]) -> Self;
}

macro_rules! elements {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn from_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
        }
    )*};
}

elements!(
    f32 => F32, f64 => F64, i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    u8 => U8, u16 => U16, u32 => U32, u64 => U64, half::bf16 => BF16, half::f16 => F16,
);

/// A buffer of the trainer's that [`VariableStore::initialize_into`](crate::VariableStore::initialize_into)
/// reads one variable into: raw little-endian bytes (from `&mut [u8]`), or a slice of the
/// variable's element type (from `&mut [f32]`, `&mut [i64]`, `&mut [half::bf16]`...; on
/// little-endian machines), whose type is then checked against the variable's dtype.
#[derive(Debug)]
pub struct HostBuffer<'a> {
    pub(crate) bytes: &'a mut [u8],
    /// The element type of a typed slice (`None` for raw bytes).
    pub(crate) dtype: Option<DType>,
}

impl<'a> From<&'a mut [u8]> for HostBuffer<'a> {
    fn from(bytes: &'a mut [u8]) -> HostBuffer<'a> {
        HostBuffer { bytes, dtype: None }
    }
}

macro_rules! typed_buffers {
    ($($t:ty),* $(,)?) => {$(
        #[cfg(target_endian = "little")]
        impl<'a> From<&'a mut [$t]> for HostBuffer<'a> {
            fn from(values: &'a mut [$t]) -> HostBuffer<'a> {
                let len = std::mem::size_of_val(values);
                // SAFETY: the element type is a plain number (no padding; every bit pattern is a
                // value), so its memory may be written as bytes; the byte view borrows `values`
                // mutably for as long, and covers exactly its memory.
                let bytes =
                    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), len) };
                HostBuffer { bytes, dtype: Some(<$t as Element>::DTYPE) }
            }
        }
    )*};
}

typed_buffers!(
    f32,
    f64,
    i8,
    i16,
    i32,
    i64,
    u16,
    u32,
    u64,
    half::bf16,
    half::f16
);

impl sealed::Sealed for bool {}
impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn from_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `to_vec` reads each fixed-size dtype as its Rust type, and nothing else.
    #[test]
    fn elements_read_as_their_rust_types() {
        let t = |dtype, bytes: &[u8]| Tensor::from_bytes(dtype, &[2], bytes.to_vec()).unwrap();
        let minus_two = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let i64s = t(DType::I64, &[[1, 0, 0, 0, 0, 0, 0, 0], minus_two].concat());
        assert_eq!(i64s.to_vec::<i64>().unwrap(), [1, -2]);
        assert_eq!(i64s.to_vec::<u64>(), None);
        assert_eq!(i64s.to_f32(), None);
        let bf16 = t(DType::BF16, &[0xc0, 0x3f, 0x00, 0xc0]);
        let want = [half::bf16::from_f32(1.5), half::bf16::from_f32(-2.0)];
        assert_eq!(bf16.to_vec::<half::bf16>().unwrap(), want);
        assert_eq!(
            t(DType::Bool, &[0, 1]).to_vec::<bool>().unwrap(),
            [false, true]
        );
        assert_eq!(t(DType::I8, &[0xff, 7]).to_vec::<i8>().unwrap(), [-1, 7]);
        let s = Tensor {
            dtype: DType::String,
            shape: vec![1],
            data: TensorData::Strings(vec![b"a".to_vec()].into()),
        };
        assert_eq!(s.to_vec::<u8>(), None);
    }

    /// `Strings` slices its bytes by its ends, so it is only made from ends that go up and end
    /// at the last byte (anything else would panic in `get`, or hide bytes).
    #[test]
    fn strings_are_made_only_from_ends_that_fit_their_bytes() {
        let bytes = || b"abc".to_vec();
        assert_eq!(Strings::from_parts(vec![2, 1, 3], bytes()), None);
        assert_eq!(Strings::from_parts(vec![1, 2], bytes()), None);
        assert_eq!(Strings::from_parts(vec![1, 4], bytes()), None);
        let s = Strings::from_parts(vec![1, 1, 3], bytes()).unwrap();
        assert_eq!(s.to_vecs(), [&b"a"[..], b"", b"bc"]);
        assert!(!s.is_empty() && s.len() == 3 && s.total_bytes() == 3);
        let none = Strings::from_parts(vec![], vec![]).unwrap();
        assert!(none.is_empty() && none.get(0).is_none());
    }

    /// `Debug` prints a value whole up to a bound (64 bytes, 16 strings), then its head and its
    /// size: a model's values in a failed `assert_eq!` must not print gigabytes.
    #[test]
    fn debug_prints_large_values_by_their_head() {
        let bytes = |n: usize| format!("{:?}", Bytes::from(vec![7u8; n]));
        assert_eq!(bytes(64), format!("{:?}", [7u8; 64]));
        assert_eq!(bytes(65), format!("{:?}… (65 bytes)", [7u8; 64]));
        let strings = |n: usize| format!("{:?}", (0..n).map(|_| "ab").collect::<Strings>());
        assert_eq!(strings(16), format!("{:?}", ["ab"; 16]));
        assert_eq!(strings(17), format!("{:?}… (17 strings)", ["ab"; 16]));
    }

    /// An owned `Bytes` gives its bytes through each conversion.
    #[test]
    fn bytes_convert_to_their_own_bytes() {
        let b = Bytes::from(vec![1u8, 2, 3]);
        assert!(!b.is_mapped());
        assert_eq!(b.as_ref(), [1, 2, 3]);
        assert_eq!(b.clone().into_vec(), [1, 2, 3]);
        assert_eq!(Vec::from(b), [1, 2, 3]);
    }
}
