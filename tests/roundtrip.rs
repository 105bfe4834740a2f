//! Property tests: checkpoints written by our writer (random dtypes, shapes, shard counts, partitions,
//! compressed or big-endian indexes) read back exactly, whole and by arbitrary sub-slices, against a
//! naive coordinate-by-coordinate oracle.

mod common;

use common::{cut, Rng};
use proptest::prelude::*;
use tfckpt::{Checkpoint, CheckpointWriter, DType, Slice, Tensor, TensorRef, WriterOptions};

const DTYPES: &[DType] = &[
    DType::F32,
    DType::F64,
    DType::F16,
    DType::BF16,
    DType::I8,
    DType::I16,
    DType::I32,
    DType::I64,
    DType::U8,
    DType::U16,
    DType::U32,
    DType::U64,
    DType::Bool,
    DType::C64,
    DType::C128,
    DType::String,
    DType::F8E4M3FN,
    DType::F8E5M2,
    DType::I4,
    DType::U4,
    DType::QI8,
    DType::QU8,
    DType::QI16,
    DType::QU16,
    DType::QI32,
];

fn random_tensor(rng: &mut Rng, dtype: DType, shape: &[u64]) -> Tensor {
    let n: u64 = shape.iter().product();
    match dtype.size() {
        Some(size) => {
            let bytes = (0..n as usize * size).map(|_| rng.next() as u8).collect();
            Tensor::from_bytes(dtype, shape, bytes).unwrap()
        }
        None => {
            let strings = (0..n)
                .map(|_| {
                    let len = [0, 1, 5, 130, 300][rng.below(5) as usize];
                    (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
                })
                .collect::<tfckpt::Strings>();
            Tensor::from_strings(shape, strings).unwrap()
        }
    }
}

fn random_box(rng: &mut Rng, shape: &[u64]) -> Vec<(u64, u64)> {
    shape
        .iter()
        .map(|&d| {
            if d == 0 {
                return (0, 0);
            }
            let start = rng.below(d);
            (start, 1 + rng.below(d - start))
        })
        .collect()
}

/// Cuts every dimension at random points: a grid of boxes covering the tensor.
fn random_grid(rng: &mut Rng, shape: &[u64]) -> Vec<Vec<(u64, u64)>> {
    let cuts: Vec<Vec<(u64, u64)>> = shape
        .iter()
        .map(|&d| {
            let k = 1 + rng.below(d.min(4));
            let mut points: Vec<u64> = (0..k - 1).map(|_| 1 + rng.below(d - 1)).collect();
            points.push(0);
            points.push(d);
            points.sort();
            points.dedup();
            points.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
        })
        .collect();
    let mut boxes = vec![vec![]];
    for c in cuts {
        boxes = boxes
            .into_iter()
            .flat_map(|b: Vec<(u64, u64)>| c.iter().map(move |&r| [b.clone(), vec![r]].concat()))
            .collect();
    }
    boxes
}

fn run_case(seed: u64) {
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("ckpt");
    let options = WriterOptions {
        num_shards: 1 + rng.below(4) as u32,
        compress_index: rng.below(2) == 0,
        block_size: [64, 300, 4096, 256 << 10][rng.below(4) as usize],
        big_endian: rng.below(4) == 0,
    };
    let mut w = CheckpointWriter::create(&prefix, options.clone()).unwrap();
    let mut tensors = Vec::new();
    for i in 0..1 + rng.below(6) {
        let dtype = DTYPES[rng.below(DTYPES.len() as u64) as usize];
        let rank = rng.below(4) as usize;
        let shape: Vec<u64> = (0..rank).map(|_| rng.below(7)).collect();
        let t = random_tensor(&mut rng, dtype, &shape);
        let name = format!("scope_{}/t{i}", rng.below(3));
        // TensorFlow cannot byte-swap float8 and int4 values: refused in a big-endian bundle.
        if options.big_endian
            && matches!(
                dtype,
                DType::F8E4M3FN | DType::F8E5M2 | DType::I4 | DType::U4
            )
        {
            let e = w.add(&name, (&t).into()).unwrap_err().to_string();
            assert!(e.contains("big-endian"), "{e}");
            continue;
        }
        let partitioned = rank > 0 && shape.iter().all(|&d| d > 1) && rng.below(2) == 0;
        if partitioned {
            let boxes = random_grid(&mut rng, &shape);
            for b in &boxes {
                let part = cut(&t, b).data;
                let part_shape: Vec<u64> = b.iter().map(|r| r.1).collect();
                let part = Tensor {
                    dtype,
                    shape: part_shape,
                    data: part,
                };
                w.add_slice(
                    &name,
                    &shape,
                    &Slice::from_ranges(b),
                    TensorRef::from(&part),
                )
                .unwrap();
            }
        } else {
            w.add(&name, TensorRef::from(&t)).unwrap();
        }
        tensors.push((name, t));
    }
    w.finish().unwrap();

    let ckpt = Checkpoint::open(&prefix).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let listed: Vec<_> = ckpt
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    let want: Vec<_> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dtype, t.shape.clone()))
        .collect();
    assert_eq!(listed, want, "options {options:?}");
    ckpt.verify().unwrap();
    for (name, t) in &tensors {
        assert_eq!(&ckpt.read(name).unwrap(), t, "{name} options {options:?}");
        for _ in 0..3 {
            let b = random_box(&mut rng, &t.shape);
            if b.iter().any(|r| r.1 == 0) {
                continue;
            }
            let got = ckpt.read_slice(name, &Slice::from_ranges(&b)).unwrap();
            assert_eq!(got.data, cut(t, &b).data, "{name} box {b:?}");
            if let Some(size) = t.dtype.size() {
                let mut buf = vec![0u8; got.num_elements() as usize * size];
                ckpt.read_slice_into(name, &Slice::from_ranges(&b), &mut buf)
                    .unwrap();
                assert_eq!(Some(&buf[..]), got.bytes());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]
    #[test]
    fn writer_reader_round_trip(seed in any::<u64>()) {
        run_case(seed);
    }
}

/// A big-endian bundle (a test option of the writer) cannot hold float8, int4 or int2 values:
/// TensorFlow's reader byte-swaps every fixed-size dtype there but bool and the 8-bit integers,
/// and refuses the others ("Byte-swapping not supported"), even empty. They were written as they
/// are, and only this crate's reader read them back.
#[test]
fn a_big_endian_bundle_refuses_what_tensorflow_cannot_swap() {
    let dir = tempfile::tempdir().unwrap();
    let options = WriterOptions {
        big_endian: true,
        ..Default::default()
    };
    let mut w = CheckpointWriter::create(dir.path().join("b"), options).unwrap();
    for dtype in [
        DType::F8E4M3FN,
        DType::F8E5M2,
        DType::I4,
        DType::U4,
        DType::I2,
        DType::U2,
    ] {
        for n in [0, 3] {
            let t = Tensor::from_bytes(dtype, &[n], vec![1; n as usize]).unwrap();
            let e = w.add(&format!("{dtype}_{n}"), (&t).into()).unwrap_err();
            assert!(e.to_string().contains("big-endian"), "{e}");
        }
    }
    for dtype in [
        DType::Bool,
        DType::I8,
        DType::U8,
        DType::QI8,
        DType::QU8,
        DType::F16,
    ] {
        let t = Tensor::from_bytes(dtype, &[2], vec![1; 2 * dtype.size().unwrap()]).unwrap();
        w.add(&format!("{dtype}"), (&t).into()).unwrap();
    }
    w.finish().unwrap();
}

/// Slices of a tensor with no elements overlap as TensorFlow's reader (and this crate's) sees
/// them, a full extent covering the whole of its dimension: `0,2:-` and `1,2:-` of a `[4, 0]`
/// tensor overlap, and were written, a tensor that then failed every read.
#[test]
fn the_writer_refuses_slices_that_overlap_as_readers_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("e");
    let mut w = CheckpointWriter::create(&prefix, WriterOptions::default()).unwrap();
    let empty = Tensor::from_f32(&[2, 0], &[]).unwrap();
    let a = Slice::parse("0,2:-").unwrap();
    let b = Slice::parse("1,2:-").unwrap();
    w.add_slice("e", &[4, 0], &a, (&empty).into()).unwrap();
    let e = w.add_slice("e", &[4, 0], &b, (&empty).into()).unwrap_err();
    assert!(
        e.to_string().contains("overlaps slice 0,2:- added before"),
        "{e}"
    );
    let c = Slice::parse("2,2:-").unwrap();
    w.add_slice("e", &[4, 0], &c, (&empty).into()).unwrap();
    w.finish().unwrap();
    let ckpt = tfckpt::Checkpoint::open(&prefix).unwrap();
    assert_eq!(ckpt.read("e").unwrap().shape, [4, 0]);
}

/// The prefix's missing folders are made (as `tf.train.Checkpoint.save` makes them), kept once the
/// checkpoint is finished, and removed again by a writer dropped unfinished, as far as they are
/// empty: a folder holding another file stays.
#[test]
fn the_writer_makes_the_prefixs_folders_and_removes_them_unfinished() {
    let dir = tempfile::tempdir().unwrap();
    let one = Tensor::from_f32(&[1], &[1.5]).unwrap();
    let prefix = dir.path().join("a").join("b").join("model.ckpt-1");
    let options = WriterOptions {
        num_shards: 2,
        ..Default::default()
    };
    let mut w = CheckpointWriter::create(&prefix, options.clone()).unwrap();
    assert!(dir.path().join("a/b").is_dir());
    w.add("x", (&one).into()).unwrap();
    w.finish().unwrap();
    let ckpt = Checkpoint::open(&prefix).unwrap();
    assert_eq!(ckpt.read("x").unwrap().to_f32().unwrap(), [1.5]);
    // Unfinished: both folders it made are gone, and nothing else was made.
    let unfinished = dir.path().join("c").join("d").join("m");
    let mut w = CheckpointWriter::create(&unfinished, options.clone()).unwrap();
    w.add("x", (&one).into()).unwrap();
    drop(w);
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["a"]);
    // A folder that existed stays, and so does one it made that now holds another file.
    let w = CheckpointWriter::create(dir.path().join("a/e/f/m"), options).unwrap();
    std::fs::write(dir.path().join("a/e/other"), b"").unwrap();
    drop(w);
    assert!(!dir.path().join("a/e/f").exists());
    assert!(dir.path().join("a/e/other").is_file());
    assert!(dir.path().join("a/b/model.ckpt-1.index").is_file());
    // A prefix ending in a separator names the folder its files go in (`g/.index`), as
    // TensorFlow's writer makes it.
    let mut slash = dir.path().join("g").into_os_string();
    slash.push(std::path::MAIN_SEPARATOR_STR);
    let mut w = CheckpointWriter::create(&slash, WriterOptions::default()).unwrap();
    w.add("x", (&one).into()).unwrap();
    w.finish().unwrap();
    assert!(dir.path().join("g/.index").is_file());
    assert!(dir.path().join("g/.data-00000-of-00001").is_file());
}
