//! Checks of a safetensors export shared by the targets (`mod exported;`): the file read back
//! with the `safetensors` crate against the values it was written from, and nothing left behind
//! by an export that failed.

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use tfckpt::{DType, Tensor};

/// An empty folder `export` in `scratch`, and the file to write in it.
pub fn out(scratch: &Path) -> (PathBuf, PathBuf) {
    let dir = scratch.join("export");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("out.safetensors");
    (dir, file)
}

/// The file an export wrote (`bytes`), read with the `safetensors` crate.
pub fn read_back(bytes: &[u8]) -> SafeTensors<'_> {
    SafeTensors::deserialize(bytes)
        .unwrap_or_else(|e| panic!("the export's file cannot be read back: {e}"))
}

/// An export into `dir` failed with `e`: it must leave nothing there (all or nothing).
pub fn left_nothing(dir: &Path, e: &tfckpt::Error) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the export failed ({e}) but left {left:?}");
}

/// `name` in `file` holds `value`: its safetensors dtype, shape and bytes (a 4- or 2-bit integer
/// as its values, one a byte, sign-extended for the signed ones). Returns its bytes in the file.
pub fn holds(file: &SafeTensors, name: &str, value: &Tensor) -> u64 {
    let view = file
        .tensor(name)
        .unwrap_or_else(|e| panic!("{name}: not in the export's file: {e}"));
    assert_eq!(
        Some(format!("{:?}", view.dtype()).as_str()),
        value.dtype.safetensors_dtype(),
        "{name}: dtype"
    );
    let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
    assert_eq!(shape, value.shape, "{name}: shape");
    let mut expected = value.bytes().expect("a fixed-size value").to_vec();
    let bits = match value.dtype {
        DType::I4 | DType::U4 => 4,
        DType::I2 | DType::U2 => 2,
        _ => 8,
    };
    if bits < 8 {
        let signed = matches!(value.dtype, DType::I4 | DType::I2);
        for x in &mut expected {
            *x = if signed {
                (((*x << (8 - bits)) as i8) >> (8 - bits)) as u8
            } else {
                *x & ((1u8 << bits) - 1)
            };
        }
    }
    assert!(view.data() == expected, "{name}: bytes differ");
    expected.len() as u64
}
