//! What an unmapped variable holds: the bytes of one element of its initializer, checked when the
//! variable is made (so that `initialize` cannot fail on it).

use crate::base::dtype::DType;
use crate::base::error::{ErrorKind, Result};
use crate::init::store::Init;

/// Checks that `init` can fill a variable `name` of `dtype`.
pub(crate) fn check_init(name: &str, dtype: DType, init: Init) -> Result<()> {
    init_element(dtype, init).map(drop).map_err(|reason| {
        ErrorKind::BadVariable {
            name: name.into(),
            reason,
        }
        .into()
    })
}

/// The bytes of one element of `dtype` holding the initializer's value.
pub(crate) fn init_element(dtype: DType, init: Init) -> std::result::Result<Vec<u8>, String> {
    let (v, exact) = match init {
        Init::Zeros => return Ok(vec![0; dtype.size().unwrap_or(0)]),
        Init::Ones => (1.0, Some(1)),
        Init::Constant(c) => (
            c,
            (c.fract() == 0.0 && c.abs() < 2f64.powi(53)).then_some(c as i128),
        ),
        Init::IntConstant(i) => (i as f64, Some(i)),
    };
    // The value as given: an integer exactly (an f64 would round one past 2^53).
    let given = match init {
        Init::IntConstant(i) => i.to_string(),
        _ => v.to_string(),
    };
    let int = |lo: i128, hi: i128| -> std::result::Result<i128, String> {
        let a = if dtype.name().starts_with("int") {
            "an"
        } else {
            "a"
        };
        match exact {
            Some(i) if (lo..=hi).contains(&i) => Ok(i),
            // In range, but a float that large may be another integer rounded (2^53 + 1 is
            // read as 2^53): not taken, and said so rather than blamed on the range.
            None if v.fract() == 0.0 && (lo..=hi).contains(&(v as i128)) => Err(format!(
                "initializer {given} is a floating-point number past 2^53, which is not taken \
                 as an exact {dtype} value (it may be another integer rounded): give it as an \
                 integer"
            )),
            _ => Err(format!(
                "initializer {given} is not {a} {dtype} value (it must be an integer from {lo} to {hi})"
            )),
        }
    };
    Ok(match dtype {
        DType::F32 => (v as f32).to_le_bytes().to_vec(),
        DType::F64 => v.to_le_bytes().to_vec(),
        DType::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
        DType::BF16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
        DType::C64 => [(v as f32).to_le_bytes(), 0f32.to_le_bytes()].concat(),
        DType::C128 => [v.to_le_bytes(), 0f64.to_le_bytes()].concat(),
        DType::Bool => vec![int(0, 1)? as u8],
        DType::I8 => (int(i8::MIN.into(), i8::MAX.into())? as i8)
            .to_le_bytes()
            .to_vec(),
        DType::U8 => (int(0, u8::MAX.into())? as u8).to_le_bytes().to_vec(),
        DType::I16 => (int(i16::MIN.into(), i16::MAX.into())? as i16)
            .to_le_bytes()
            .to_vec(),
        DType::U16 => (int(0, u16::MAX.into())? as u16).to_le_bytes().to_vec(),
        DType::I32 => (int(i32::MIN.into(), i32::MAX.into())? as i32)
            .to_le_bytes()
            .to_vec(),
        DType::U32 => (int(0, u32::MAX.into())? as u32).to_le_bytes().to_vec(),
        DType::I64 => (int(i64::MIN.into(), i64::MAX.into())? as i64)
            .to_le_bytes()
            .to_vec(),
        DType::U64 => (int(0, u64::MAX.into())? as u64).to_le_bytes().to_vec(),
        other => {
            return Err(format!(
                "{other} variables support only the zeros initializer"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(dtype: DType, init: Init) -> Vec<u8> {
        init_element(dtype, init).unwrap_or_else(|e| panic!("{dtype}: {e}"))
    }

    /// Every dtype an initializer can fill gets the value's exact little-endian element, and
    /// complex ones a zero imaginary part (found uncovered by a coverage run: no test looked at
    /// the bytes of most dtypes).
    #[test]
    fn each_dtype_gets_the_value_as_its_own_element() {
        let c = Init::Constant(-2.5);
        assert_eq!(bytes(DType::F32, c), (-2.5f32).to_le_bytes());
        assert_eq!(bytes(DType::F64, c), (-2.5f64).to_le_bytes());
        assert_eq!(
            bytes(DType::F16, c),
            half::f16::from_f32(-2.5).to_le_bytes()
        );
        assert_eq!(
            bytes(DType::BF16, c),
            half::bf16::from_f32(-2.5).to_le_bytes()
        );
        assert_eq!(
            bytes(DType::C64, c),
            [(-2.5f32).to_le_bytes(), [0; 4]].concat()
        );
        assert_eq!(
            bytes(DType::C128, c),
            [(-2.5f64).to_le_bytes(), [0; 8]].concat()
        );
        let one = Init::Ones;
        assert_eq!(bytes(DType::Bool, one), [1]);
        assert_eq!(bytes(DType::I8, one), [1]);
        assert_eq!(bytes(DType::U8, one), [1]);
        assert_eq!(bytes(DType::I16, one), 1i16.to_le_bytes());
        assert_eq!(bytes(DType::U16, one), 1u16.to_le_bytes());
        assert_eq!(bytes(DType::I32, one), 1i32.to_le_bytes());
        assert_eq!(bytes(DType::U32, one), 1u32.to_le_bytes());
        assert_eq!(bytes(DType::I64, one), 1i64.to_le_bytes());
        assert_eq!(bytes(DType::U64, one), 1u64.to_le_bytes());
        // The ends of each integer range, given exactly.
        let int = Init::IntConstant;
        assert_eq!(bytes(DType::I8, int(-128)), [0x80]);
        assert_eq!(bytes(DType::U8, int(255)), [0xff]);
        assert_eq!(bytes(DType::I16, int(-32768)), i16::MIN.to_le_bytes());
        assert_eq!(bytes(DType::U16, int(65535)), u16::MAX.to_le_bytes());
        assert_eq!(
            bytes(DType::I32, int(i32::MIN.into())),
            i32::MIN.to_le_bytes()
        );
        assert_eq!(
            bytes(DType::U32, int(u32::MAX.into())),
            u32::MAX.to_le_bytes()
        );
        assert_eq!(
            bytes(DType::I64, int(i64::MIN.into())),
            i64::MIN.to_le_bytes()
        );
        assert_eq!(
            bytes(DType::U64, int(u64::MAX.into())),
            u64::MAX.to_le_bytes()
        );
        // An integral float is an integer; zeros fill every fixed-size dtype.
        assert_eq!(
            bytes(DType::I32, Init::Constant(-7.0)),
            (-7i32).to_le_bytes()
        );
        for dtype in [DType::F8E4M3FN, DType::C128, DType::U64] {
            assert_eq!(bytes(dtype, Init::Zeros), vec![0; dtype.size().unwrap()]);
        }
        assert_eq!(bytes(DType::String, Init::Zeros), Vec::<u8>::new());
    }

    /// A value an integer dtype cannot hold, and any non-zero initializer of a dtype with no
    /// arithmetic here, are errors that say the value, the dtype and the allowed range.
    #[test]
    fn values_a_dtype_cannot_hold_are_errors_that_say_why() {
        let err = |dtype: DType, init: Init| init_element(dtype, init).unwrap_err();
        assert_eq!(
            err(DType::U8, Init::IntConstant(256)),
            "initializer 256 is not a uint8 value (it must be an integer from 0 to 255)"
        );
        assert_eq!(
            err(DType::I16, Init::Constant(0.5)),
            "initializer 0.5 is not an int16 value (it must be an integer from -32768 to 32767)"
        );
        assert_eq!(
            err(DType::U64, Init::IntConstant(-1)),
            "initializer -1 is not a uint64 value (it must be an integer from 0 to 18446744073709551615)"
        );
        assert_eq!(
            err(DType::Bool, Init::Constant(2.0)),
            "initializer 2 is not a bool value (it must be an integer from 0 to 1)"
        );
        // Past 2^53 a float is not taken as an exact integer, and the message says so (it
        // blamed the range, which holds the value).
        assert_eq!(
            err(DType::I64, Init::Constant(4e18)),
            "initializer 4000000000000000000 is a floating-point number past 2^53, which is not \
             taken as an exact int64 value (it may be another integer rounded): give it as an \
             integer"
        );
        assert!(err(DType::U64, Init::Constant(-(2f64.powi(60)))).contains("from 0 to"));
        assert!(
            err(DType::I64, Init::Constant(2f64.powi(63))).contains("from -9223372036854775808")
        );
        assert!(err(DType::I32, Init::Constant(2f64.powi(53))).contains("from -2147483648"));
        assert_eq!(
            bytes(DType::I64, Init::Constant(2f64.powi(53) - 1.0)),
            (2i64.pow(53) - 1).to_le_bytes()
        );
        // 2^53 itself is where floats stop being exact (2^53 + 1 reads as 2^53).
        assert!(err(DType::I64, Init::Constant(2f64.powi(53))).contains("past 2^53"));
        assert!(err(DType::I64, Init::Constant(-(2f64.powi(53)))).contains("past 2^53"));
        assert_eq!(
            bytes(DType::I64, Init::Constant(1.0 - 2f64.powi(53))),
            (1 - 2i64.pow(53)).to_le_bytes()
        );
        assert!(err(DType::I32, Init::Constant(f64::NAN)).contains("NaN"));
        for dtype in [DType::String, DType::F8E5M2] {
            assert_eq!(
                err(dtype, Init::Ones),
                format!("{dtype} variables support only the zeros initializer")
            );
        }
        let e = check_init("v", DType::U16, Init::IntConstant(70000)).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::BadVariable { name, reason }
                if name == "v" && reason.contains("uint16")),
            "{e:?}"
        );
    }
}
