//! TensorFlow element types (`DataType` of `types.proto`) with their on-disk sizes and names.

use std::fmt;

macro_rules! dtypes {
    ($( $(#[$doc:meta])* $var:ident = $num:literal, $name:literal, $size:expr, $npy:expr; )*) => {
        /// A TensorFlow element type, as stored in a checkpoint.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum DType {
            $( $(#[$doc])* $var, )*
        }

        impl DType {
            /// Every dtype this crate knows, in `DataType` enum order.
            pub const ALL: &'static [DType] = &[$(DType::$var),*];

            /// The dtype for a `DataType` enum value, if it is one this crate knows.
            pub fn from_proto(value: i32) -> Option<DType> {
                match value {
                    $( $num => Some(DType::$var), )*
                    _ => None,
                }
            }

            /// The `DataType` enum value.
            pub fn to_proto(self) -> i32 {
                match self { $( DType::$var => $num, )* }
            }

            /// The name TensorFlow prints (`tf.float32.name`), used by the CLI and JSON files.
            pub fn name(self) -> &'static str {
                match self { $( DType::$var => $name, )* }
            }

            /// Parses a name as printed by [`DType::name`].
            pub fn from_name(name: &str) -> Option<DType> {
                match name {
                    $( $name => Some(DType::$var), )*
                    "half" => Some(DType::F16),
                    "float" => Some(DType::F32),
                    "double" => Some(DType::F64),
                    _ => None,
                }
            }

            /// Bytes per element in a V2 data file; `None` for variable-length types (string, variant).
            pub fn size(self) -> Option<usize> {
                match self { $( DType::$var => $size, )* }
            }

            /// The NumPy `descr` used when writing `.npy` files (`None` for strings and variants,
            /// which get `|S<n>` or are not writable): the element types of `docs/cli.md`, which
            /// writes int8 as `<i1` (NumPy writes `|i1`, and reads both as int8).
            pub fn npy_descr(self) -> Option<&'static str> {
                match self { $( DType::$var => $npy, )* }
            }
        }
    };
}

dtypes! {
    /// IEEE binary32 (`DT_FLOAT`).
    F32 = 1, "float32", Some(4), Some("<f4");
    /// IEEE binary64 (`DT_DOUBLE`).
    F64 = 2, "float64", Some(8), Some("<f8");
    /// `DT_INT32`.
    I32 = 3, "int32", Some(4), Some("<i4");
    /// `DT_UINT8`.
    U8 = 4, "uint8", Some(1), Some("|u1");
    /// `DT_INT16`.
    I16 = 5, "int16", Some(2), Some("<i2");
    /// `DT_INT8`.
    I8 = 6, "int8", Some(1), Some("<i1");
    /// Byte strings (`DT_STRING`), variable length.
    String = 7, "string", None, None;
    /// (re, im) pairs of binary32 (`DT_COMPLEX64`).
    C64 = 8, "complex64", Some(8), Some("<c8");
    /// `DT_INT64`.
    I64 = 9, "int64", Some(8), Some("<i8");
    /// One byte, 0 or 1 (`DT_BOOL`).
    Bool = 10, "bool", Some(1), Some("|b1");
    /// Quantized int8 (`DT_QINT8`).
    QI8 = 11, "qint8", Some(1), Some("<i1");
    /// Quantized uint8 (`DT_QUINT8`).
    QU8 = 12, "quint8", Some(1), Some("|u1");
    /// Quantized int32 (`DT_QINT32`).
    QI32 = 13, "qint32", Some(4), Some("<i4");
    /// The upper 16 bits of a binary32 (`DT_BFLOAT16`); written to `.npy` as raw `<u2` patterns.
    BF16 = 14, "bfloat16", Some(2), Some("<u2");
    /// Quantized int16 (`DT_QINT16`).
    QI16 = 15, "qint16", Some(2), Some("<i2");
    /// Quantized uint16 (`DT_QUINT16`).
    QU16 = 16, "quint16", Some(2), Some("<u2");
    /// `DT_UINT16`.
    U16 = 17, "uint16", Some(2), Some("<u2");
    /// (re, im) pairs of binary64 (`DT_COMPLEX128`).
    C128 = 18, "complex128", Some(16), Some("<c16");
    /// IEEE binary16 (`DT_HALF`).
    F16 = 19, "float16", Some(2), Some("<f2");
    /// Serialized variants (`DT_VARIANT`): listed, but not readable by this crate.
    Variant = 21, "variant", None, None;
    /// `DT_UINT32`.
    U32 = 22, "uint32", Some(4), Some("<u4");
    /// `DT_UINT64`.
    U64 = 23, "uint64", Some(8), Some("<u8");
    /// 8-bit float, 5 exponent bits (`DT_FLOAT8_E5M2`); raw bits in `.npy` (`|u1`).
    F8E5M2 = 24, "float8_e5m2", Some(1), Some("|u1");
    /// 8-bit float, 4 exponent bits, finite (`DT_FLOAT8_E4M3FN`); raw bits in `.npy` (`|u1`).
    F8E4M3FN = 25, "float8_e4m3fn", Some(1), Some("|u1");
    /// `DT_FLOAT8_E4M3FNUZ`; raw bits in `.npy`.
    F8E4M3FNUZ = 26, "float8_e4m3fnuz", Some(1), Some("|u1");
    /// `DT_FLOAT8_E4M3B11FNUZ`; raw bits in `.npy`.
    F8E4M3B11FNUZ = 27, "float8_e4m3b11fnuz", Some(1), Some("|u1");
    /// `DT_FLOAT8_E5M2FNUZ`; raw bits in `.npy`.
    F8E5M2FNUZ = 28, "float8_e5m2fnuz", Some(1), Some("|u1");
    /// 4-bit signed int, one per byte in the low nibble (`DT_INT4`); `.npy` holds the sign-extended value.
    I4 = 29, "int4", Some(1), Some("<i1");
    /// 4-bit unsigned int, one per byte (`DT_UINT4`).
    U4 = 30, "uint4", Some(1), Some("|u1");
    /// 2-bit signed int, one per byte (`DT_INT2`); `.npy` holds the sign-extended value.
    I2 = 31, "int2", Some(1), Some("<i1");
    /// 2-bit unsigned int, one per byte (`DT_UINT2`).
    U2 = 32, "uint2", Some(1), Some("|u1");
}

impl DType {
    /// A 4- or 2-bit integer, stored one element a byte in its low bits (TensorFlow's ml_dtypes
    /// ignore the upper ones): its bits, and whether it is signed. `None` for every other dtype.
    #[cfg(feature = "safetensors")]
    pub(crate) fn sub_byte(self) -> Option<(u32, bool)> {
        match self {
            DType::I4 => Some((4, true)),
            DType::I2 => Some((2, true)),
            DType::U4 => Some((4, false)),
            DType::U2 => Some((2, false)),
            _ => None,
        }
    }

    /// Rewrites the stored bytes of a [`sub_byte`](Self::sub_byte) dtype as their values, in
    /// place: each sign-extended into an int8 for int4 and int2, masked into a uint8 for uint4
    /// and uint2, as `.npy` output holds them. Other dtypes are left alone.
    #[cfg(feature = "safetensors")]
    pub(crate) fn sub_byte_values(self, bytes: &mut [u8]) {
        let Some((bits, signed)) = self.sub_byte() else {
            return;
        };
        let shift = 8 - bits;
        for x in bytes {
            *x = if signed {
                (((*x << shift) as i8) >> shift) as u8
            } else {
                *x & ((1u8 << bits) - 1)
            };
        }
    }

    /// Whether elements are fixed-size and stored as their raw bytes.
    pub fn is_fixed_size(self) -> bool {
        self.size().is_some()
    }

    /// Size of the unit that is byte-swapped when the producer's byte order differs from ours
    /// (complex types swap each component); 1 for single-byte types.
    pub(crate) fn swap_unit(self) -> usize {
        match self {
            DType::C64 => 4,
            DType::C128 => 8,
            other => other.size().unwrap_or(1),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for &d in DType::ALL {
            assert_eq!(DType::from_proto(d.to_proto()), Some(d));
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_proto(0), None);
        assert_eq!(DType::from_proto(20), None); // resource: cannot be saved
        assert_eq!(DType::from_proto(101), None); // *_REF
        assert_eq!(DType::F16.size(), Some(2));
        assert_eq!(DType::C128.swap_unit(), 8);
        assert!(DType::F32.is_fixed_size() && DType::U2.is_fixed_size());
        assert!(!DType::String.is_fixed_size() && !DType::Variant.is_fixed_size());
    }
}
