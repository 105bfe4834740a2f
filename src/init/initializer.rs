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
        match exact {
            Some(i) if (lo..=hi).contains(&i) => Ok(i),
            _ => {
                let a = if dtype.name().starts_with("int") {
                    "an"
                } else {
                    "a"
                };
                Err(format!(
                    "initializer {given} is not {a} {dtype} value (it must be an integer from {lo} to {hi})"
                ))
            }
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
