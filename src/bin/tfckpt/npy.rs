//! A small, strict `.npy` (format 1.0) writer and reader: C order, the dtypes the CLI uses.

use std::io::{Read, Write};

use tfckpt::DType;
use tfckpt::{Tensor, TensorData};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Writes an array with the given NumPy `descr` (e.g. `<f4`), shape and raw element bytes.
pub fn write_raw(
    mut w: impl Write,
    descr: &str,
    shape: &[u64],
    data: &[u8],
) -> std::io::Result<()> {
    write_header(&mut w, descr, shape)?;
    w.write_all(data)
}

/// The most dimensions NumPy reads (`NPY_MAXDIMS` of NumPy 2; NumPy 1 reads 32; TensorFlow
/// allows 254). A file of more would be one `np.load` refuses, as `tf.train.load_variable` fails
/// on such a tensor.
pub const NUMPY_MAX_DIMS: usize = 64;

fn write_header(mut w: impl Write, descr: &str, shape: &[u64]) -> std::io::Result<()> {
    if shape.len() > NUMPY_MAX_DIMS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "a tensor of rank {} has more dimensions than NumPy 2 reads ({NUMPY_MAX_DIMS})",
                shape.len()
            ),
        ));
    }
    let shape_txt = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Pad with spaces so that data starts on a 64-byte boundary, ending in '\n'.
    let total = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    // Format 1.0 (the CLI's contract) holds a header of at most 65535 bytes; the rank limit of 64
    // keeps every header far below that, and a longer one is an error, never a wrapped length.
    let len = u16::try_from(header.len()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a .npy 1.0 header of {} bytes is too long", header.len()),
        )
    })?;
    w.write_all(MAGIC)?;
    w.write_all(&[1, 0])?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(header.as_bytes())
}

/// Writes a tensor as the CLI does: the dtype's `descr` (bfloat16 and float8 as raw bits, int4/int2
/// sign-extended), strings as `|S<longest>`.
pub fn write_tensor(w: impl Write, t: &Tensor) -> std::io::Result<()> {
    match &t.data {
        TensorData::Strings(s) => {
            // Every element is padded with NULs to the longest: stream it rather than build it.
            let mut w = w;
            let width = s.iter().map(|x| x.len()).max().unwrap_or(0).max(1);
            if width > i32::MAX as usize {
                // numpy's `|S<n>` takes n up to 2^31 - 1: a wider one is a file it cannot open.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "an element of {width} bytes is longer than a NumPy string (|S) can \
                         hold ({} bytes)",
                        i32::MAX
                    ),
                ));
            }
            write_header(&mut w, &format!("|S{width}"), &t.shape)?;
            let zeros = [0u8; 4096];
            for x in s.iter() {
                w.write_all(x)?;
                let mut pad = width - x.len();
                while pad > 0 {
                    let n = pad.min(zeros.len());
                    w.write_all(&zeros[..n])?;
                    pad -= n;
                }
            }
            Ok(())
        }
        TensorData::Bytes(b) => {
            let descr = t.dtype.npy_descr().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("no .npy type for {}", t.dtype),
                )
            })?;
            match t.dtype {
                DType::I4 => write_raw(w, descr, &t.shape, &sign_extend(b, 4)),
                DType::I2 => write_raw(w, descr, &t.shape, &sign_extend(b, 2)),
                DType::U4 => write_raw(w, descr, &t.shape, &low_bits(b, 4)),
                DType::U2 => write_raw(w, descr, &t.shape, &low_bits(b, 2)),
                _ => write_raw(w, descr, &t.shape, b),
            }
        }
    }
}

/// Sign-extends the low `bits` bits of each byte (int4/int2 are stored one per byte, low bits).
fn sign_extend(b: &[u8], bits: u32) -> Vec<u8> {
    let shift = 8 - bits;
    b.iter()
        .map(|&x| (((x << shift) as i8) >> shift) as u8)
        .collect()
}

/// The low `bits` bits of each byte (uint4/uint2 are stored one per byte, low bits; TensorFlow's
/// ml_dtypes ignore the upper bits, so a stored 0x7f is the uint4 15).
fn low_bits(b: &[u8], bits: u32) -> Vec<u8> {
    let mask = (1u8 << bits) - 1;
    b.iter().map(|&x| x & mask).collect()
}

/// An array read back from a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(dead_code)] // read back by the tests, which include this file
pub struct NpyArray {
    /// NumPy `descr`, e.g. `<f4`, as cli.md names it: NumPy writes int8 as `|i1`, read as `<i1`
    /// (the same type), so that a file of NumPy's compares equal to the CLI's.
    pub descr: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Raw element bytes, C order.
    pub data: Vec<u8>,
}

/// Reads a `.npy` file (versions 1–3, C order only).
#[allow(dead_code)] // read back by the tests, which include this file
pub fn read(mut r: impl Read) -> std::io::Result<NpyArray> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic[..6] != MAGIC {
        return Err(bad("not a .npy file"));
    }
    let header_len = if magic[6] == 1 {
        let mut l = [0u8; 2];
        r.read_exact(&mut l)?;
        u16::from_le_bytes(l) as usize
    } else {
        let mut l = [0u8; 4];
        r.read_exact(&mut l)?;
        u32::from_le_bytes(l) as usize
    };
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header)?;
    let header = String::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let field = |name: &str| -> Option<String> {
        let i = header.find(&format!("'{name}'"))? + name.len() + 2;
        let rest = header[i..].trim_start().strip_prefix(':')?.trim_start();
        if let Some(stripped) = rest.strip_prefix('\'') {
            Some(stripped[..stripped.find('\'')?].to_string())
        } else if rest.starts_with('(') {
            Some(rest[1..rest.find(')')?].to_string())
        } else {
            Some(rest[..rest.find(',')?].trim().to_string())
        }
    };
    let mut descr = field("descr").ok_or_else(|| bad("no descr"))?;
    if descr == "|i1" {
        descr = "<i1".into();
    }
    if field("fortran_order").as_deref() != Some("False") {
        return Err(bad("only C order is supported"));
    }
    let shape = field("shape").ok_or_else(|| bad("no shape"))?;
    // A Python tuple: `(5)` is the number 5, which `np.load` refuses.
    if !shape.trim().is_empty() && !shape.contains(',') {
        return Err(bad("the shape is not a tuple"));
    }
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().map_err(|_| bad("bad shape")))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut data = Vec::new();
    r.read_to_end(&mut data)?;
    Ok(NpyArray { descr, shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = Tensor::from_f32(&[2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
        let mut buf = vec![];
        write_tensor(&mut buf, &t).unwrap();
        assert_eq!(buf.len() % 64, 24); // data starts on a 64-byte boundary
        let a = read(&buf[..]).unwrap();
        assert_eq!(a.descr, "<f4");
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, t.bytes().unwrap());
        let s = Tensor::from_strings(&[2], vec![b"ab".to_vec(), b"".to_vec()]).unwrap();
        buf.clear();
        write_tensor(&mut buf, &s).unwrap();
        let a = read(&buf[..]).unwrap();
        assert_eq!(
            (a.descr.as_str(), a.data.as_slice()),
            ("|S2", &b"ab\0\0"[..])
        );
        assert_eq!(sign_extend(&[0x0f, 0x07, 0x08], 4), vec![0xff, 0x07, 0xf8]);
        let scalar = Tensor::from_f32(&[], &[1.5]).unwrap();
        buf.clear();
        write_tensor(&mut buf, &scalar).unwrap();
        assert_eq!(read(&buf[..]).unwrap().shape, Vec::<u64>::new());
        // Up to NumPy's 64 dimensions; more is an error, before anything is written.
        let ones = |rank: usize| Tensor::from_f32(&vec![1; rank], &[2.5]).unwrap();
        buf.clear();
        write_tensor(&mut buf, &ones(64)).unwrap();
        assert_eq!(read(&buf[..]).unwrap().shape, vec![1; 64]);
        buf.clear();
        let e = write_tensor(&mut buf, &ones(65)).unwrap_err().to_string();
        assert!(
            e.contains("rank 65") && e.contains("(64)") && buf.is_empty(),
            "{e}"
        );
    }

    /// Headers are NumPy's own, byte for byte: each `.npy` file NumPy wrote for the fixtures
    /// (`tests/fixtures/generate.py`) starts with exactly the header written here for its `descr`
    /// and shape. A one-dimensional shape is the tuple `(5,)` (Python reads `(5)` as the number
    /// 5, and `np.load` refuses the file), and the padding to 64 bytes is the shortest.
    #[test]
    fn headers_are_numpys_byte_for_byte() {
        fn npy_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    npy_files(&p, out);
                } else if p.extension().is_some_and(|x| x == "npy") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        npy_files(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
            &mut files,
        );
        let mut ranks = std::collections::BTreeSet::new();
        let mut compared = 0;
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            let a = read(&bytes[..]).unwrap();
            let head = &bytes[..bytes.len() - a.data.len()];
            // NumPy writes int8 as `|i1`, the CLI as cli.md's `<i1` (the same type).
            if String::from_utf8_lossy(head).contains("'descr': '|i1'") {
                continue;
            }
            let mut ours = Vec::new();
            write_header(&mut ours, &a.descr, &a.shape).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(head),
                "{}",
                f.display()
            );
            ranks.insert(a.shape.len());
            compared += 1;
        }
        assert!(compared >= 200, "{compared} files compared");
        assert!((0..=2).all(|r| ranks.contains(&r)), "ranks {ranks:?}");
    }

    /// Every fixed-size dtype is written with one of cli.md's element types, byte for byte in the
    /// header (int8 as `<i1`, where NumPy writes `|i1`; bfloat16 as `<u2`).
    #[test]
    fn headers_use_the_element_types_of_the_contract() {
        const CLI_MD: [&str; 14] = [
            "<f2", "<f4", "<f8", "<i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "|b1",
            "<c8", "<c16",
        ];
        let descr_of = |dtype: DType| -> Option<String> {
            let size = dtype.size()?;
            let t = Tensor::from_bytes(dtype, &[1], vec![0; size])?;
            let mut buf = vec![];
            write_tensor(&mut buf, &t).ok()?;
            let head = String::from_utf8_lossy(&buf[10..]).into_owned();
            let at = head.find("'descr': '")? + 10;
            Some(head[at..at + head[at..].find('\'')?].to_string())
        };
        let mut seen = 0;
        for &dtype in DType::ALL {
            if let Some(d) = descr_of(dtype) {
                assert!(CLI_MD.contains(&d.as_str()), "{dtype}: {d}");
                seen += 1;
            }
        }
        assert!(seen >= 14, "{seen} dtypes written");
        assert_eq!(descr_of(DType::I8).as_deref(), Some("<i1"));
        assert_eq!(descr_of(DType::BF16).as_deref(), Some("<u2"));
    }
}
