//! The 142-byte golden `.index` file (docs/format.md#37-worked-example-the-142-byte-golden-index),
//! written by TensorFlow 2.21: our reader reads it and our writer reproduces it byte for byte.

use tfckpt::{Checkpoint, CheckpointWriter, DType, Slice, Tensor, TensorRef, WriterOptions};

const INDEX_HEX: &str = concat!(
    "00000608011a02080100010f750801120412020802280835e8e34659000111760801120412020802200828083",
    "5dddeb42d0000000001000000004db45c00000000000100000000c0f2a1b0000102770039000000000100000000",
    "ec1dd2ef3e084b0e00000000000000000000000000000000000000000000000000000000000000000000000057fb808b247547db"
);
const DATA_HEX: &str = "0000803f0000803f0000004000000040";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn reads_the_golden_index() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.index"), unhex(INDEX_HEX)).unwrap();
    std::fs::write(dir.path().join("m.data-00000-of-00001"), unhex(DATA_HEX)).unwrap();
    let ckpt = Checkpoint::open(dir.path().join("m")).unwrap();
    let names: Vec<_> = ckpt
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.dtype, t.shape.clone()))
        .collect();
    assert_eq!(
        names,
        vec![("u", DType::F32, vec![2]), ("v", DType::F32, vec![2])]
    );
    assert_eq!(ckpt.read("u").unwrap().to_f32().unwrap(), [1.0, 1.0]);
    assert_eq!(ckpt.read("v").unwrap().to_f32().unwrap(), [2.0, 2.0]);
    ckpt.verify().unwrap();
    // The .index path itself is accepted too (an extension over TensorFlow).
    assert_eq!(
        Checkpoint::open(dir.path().join("m.index"))
            .unwrap()
            .tensors()
            .len(),
        2
    );
}

#[test]
fn writes_the_golden_index_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("m");
    let mut w = CheckpointWriter::create(&prefix, WriterOptions::default()).unwrap();
    w.add("u", (&Tensor::from_f32(&[2], &[1.0, 1.0]).unwrap()).into())
        .unwrap();
    w.add("v", (&Tensor::from_f32(&[2], &[2.0, 2.0]).unwrap()).into())
        .unwrap();
    w.finish().unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("m.index")).unwrap(),
        unhex(INDEX_HEX)
    );
    assert_eq!(
        std::fs::read(dir.path().join("m.data-00000-of-00001")).unwrap(),
        unhex(DATA_HEX)
    );
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn zero_copy_views() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.index"), unhex(INDEX_HEX)).unwrap();
    std::fs::write(dir.path().join("m.data-00000-of-00001"), unhex(DATA_HEX)).unwrap();
    let ckpt = Checkpoint::open(dir.path().join("m")).unwrap();
    let v = ckpt.view("v").unwrap();
    assert_eq!((v.dtype(), v.shape()), (DType::F32, &[2u64][..]));
    assert_eq!(v.as_bytes(), &unhex(DATA_HEX)[8..]);
    assert!(ckpt.view("nope").is_err());
}

/// A big-endian bundle (as TensorFlow writes on a big-endian host: tensor data in native order, the
/// header marked so) stores each element most significant byte first, and reads back as the
/// values, whole or a box of them. The writer and the reader share one byte swap, so a round trip
/// alone cannot tell a swap that does nothing: a defect here writes and reads big-endian data
/// unswapped.
#[test]
fn big_endian_data_is_stored_most_significant_byte_first() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("be");
    let options = WriterOptions {
        big_endian: true,
        ..Default::default()
    };
    let mut w = CheckpointWriter::create(&prefix, options).unwrap();
    w.add("f", (&Tensor::from_f32(&[2], &[1.0, 2.0]).unwrap()).into())
        .unwrap();
    let le = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06];
    w.add(
        "h",
        TensorRef::Bytes {
            dtype: DType::I16,
            shape: &[3],
            data: &le,
        },
    )
    .unwrap();
    w.finish().unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("be.data-00000-of-00001")).unwrap(),
        unhex("3f80000040000000020104030605")
    );
    let ckpt = Checkpoint::open(&prefix).unwrap();
    assert_eq!(ckpt.read("f").unwrap().to_f32().unwrap(), [1.0, 2.0]);
    assert_eq!(ckpt.read("h").unwrap().bytes().unwrap(), le);
    let tail = ckpt.read_slice("h", &Slice::parse("1,2").unwrap()).unwrap();
    assert_eq!(tail.bytes().unwrap(), &le[2..]);
    ckpt.verify().unwrap();
}
