//! Writes checkpoints with tfckpt's writer, in the fixture layout of `tests/fixtures` (checkpoint +
//! `expected/`), so that TensorFlow can check it reads them back exactly:
//!
//! ```sh
//! cargo run --release --example write_for_tf -- /tmp/ours
//! /tmp/tfvenv/bin/python tests/fixtures/generate.py --check-writer /tmp/ours
//! ```

use std::path::Path;

// The test suite's seeded generator and box oracle.
#[path = "../tests/common/mod.rs"]
mod common;
use common::{cut, Rng};

#[allow(dead_code)] // shared with the binary: only part of it is used here
#[path = "../src/bin/tfckpt/npy.rs"]
mod npy;

use tfckpt::{
    write_checkpoint_state, CheckpointWriter, DType, Slice, Tensor, TensorRef, WriterOptions,
};

fn tensor(rng: &mut Rng, dtype: DType, shape: &[u64]) -> Tensor {
    let n: u64 = shape.iter().product();
    match dtype.size() {
        Some(size) => {
            let bytes = (0..n as usize * size)
                .map(|_| {
                    let b = rng.next() as u8;
                    match dtype {
                        DType::Bool => b & 1,
                        DType::I4 | DType::U4 => b & 0x0f,
                        _ => b,
                    }
                })
                .collect();
            Tensor::from_bytes(dtype, shape, bytes).unwrap()
        }
        None => {
            let strings = (0..n)
                .map(|i| {
                    let len = [0usize, 2, 7, 200][(i % 4) as usize];
                    (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
                })
                .collect::<tfckpt::Strings>();
            Tensor::from_strings(shape, strings).unwrap()
        }
    }
}

struct Case {
    dir: std::path::PathBuf,
    list: Vec<serde_json::Value>,
    slices: serde_json::Map<String, serde_json::Value>,
}

impl Case {
    fn new(root: &Path, name: &str, ckpt: &str) -> Case {
        let dir = root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("expected/values")).unwrap();
        std::fs::write(dir.join("expected/ckpt.txt"), ckpt).unwrap();
        Case {
            dir,
            list: vec![],
            slices: Default::default(),
        }
    }

    fn expect(&mut self, name: &str, t: &Tensor) {
        self.list
            .push(serde_json::json!({"name": name, "dtype": t.dtype.name(), "shape": t.shape}));
        let base = self.dir.join("expected/values").join(name);
        std::fs::create_dir_all(base.parent().unwrap()).unwrap();
        match t.strings() {
            Some(s) => {
                let hex: Vec<String> = s
                    .iter()
                    .map(|x| x.iter().map(|b| format!("{b:02x}")).collect())
                    .collect();
                let j = serde_json::json!({"shape": t.shape, "hex": hex});
                std::fs::write(format!("{}.strings.json", base.display()), j.to_string()).unwrap();
            }
            None => {
                let f = std::fs::File::create(format!("{}.npy", base.display())).unwrap();
                npy::write_tensor(f, t).unwrap();
            }
        }
    }

    /// Adds `t` split along `axis` into `k` parts (TF's uneven rule) and records the layout.
    fn add_partitioned(
        &mut self,
        w: &mut CheckpointWriter,
        name: &str,
        t: &Tensor,
        axis: usize,
        k: u64,
    ) {
        let d = t.shape[axis];
        let mut start = 0;
        let mut parts = vec![];
        for i in 0..k {
            let len = d / k + u64::from(i < d % k);
            let ranges: Vec<(u64, u64)> = t
                .shape
                .iter()
                .enumerate()
                .map(|(a, &n)| if a == axis { (start, len) } else { (0, n) })
                .collect();
            let part = cut(t, &ranges);
            w.add_slice(
                name,
                &t.shape,
                &Slice::from_ranges(&ranges),
                TensorRef::from(&part),
            )
            .unwrap();
            let dims: Vec<String> = t.shape.iter().map(|x| x.to_string()).collect();
            let spec = format!("{} {}", dims.join(" "), Slice::from_ranges(&ranges));
            parts.push(serde_json::json!({"part": null, "offset": ranges.iter().map(|r| r.0).collect::<Vec<_>>(), "shape": part.shape, "spec": spec}));
            start += len;
        }
        self.slices.insert(name.into(), serde_json::json!({"dtype": t.dtype.name(), "full_shape": t.shape, "slices": parts, "axis": axis}));
        self.expect(name, t);
    }

    fn finish(mut self) {
        self.list.sort_by(|a, b| {
            a["name"]
                .as_str()
                .unwrap()
                .as_bytes()
                .cmp(b["name"].as_str().unwrap().as_bytes())
        });
        std::fs::write(
            self.dir.join("expected/list.json"),
            serde_json::Value::Array(self.list).to_string(),
        )
        .unwrap();
        if !self.slices.is_empty() {
            std::fs::write(
                self.dir.join("expected/slices.json"),
                serde_json::Value::Object(self.slices).to_string(),
            )
            .unwrap();
        }
    }
}

const DTYPES: &[DType] = &[
    DType::F16,
    DType::BF16,
    DType::F32,
    DType::F64,
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

fn main() {
    let root = std::env::args()
        .nth(1)
        .expect("usage: write_for_tf OUT_DIR");
    let root = Path::new(&root);
    let mut rng = Rng(0x5eed);

    // Every dtype, scalars, empty tensors, strings with 1- and 2-byte length varints.
    let mut case = Case::new(root, "writer_dtypes", "ckpt");
    let mut w = CheckpointWriter::create(case.dir.join("ckpt"), WriterOptions::default()).unwrap();
    for &dt in DTYPES {
        let t = tensor(&mut rng, dt, &[3, 4]);
        let name = format!("dt/{}", dt.name());
        w.add(&name, TensorRef::from(&t)).unwrap();
        case.expect(&name, &t);
    }
    for (name, dt, shape) in [
        ("scalar/f32", DType::F32, vec![]),
        ("scalar/str", DType::String, vec![]),
        ("empty/f32", DType::F32, vec![0, 3]),
        ("empty/str", DType::String, vec![0]),
    ] {
        let t = tensor(&mut rng, dt, &shape);
        w.add(name, TensorRef::from(&t)).unwrap();
        case.expect(name, &t);
    }
    w.finish().unwrap();
    case.finish();

    // Three data shards, partitioned tensors along axis 0 and 1 (uneven), a relative state file.
    let mut case = Case::new(root, "writer_sharded", ".");
    let mut w = CheckpointWriter::create(
        case.dir.join("model.ckpt-7"),
        WriterOptions {
            num_shards: 3,
            ..Default::default()
        },
    )
    .unwrap();
    for (name, dt, shape, axis, k) in [
        ("emb/table", DType::F32, vec![100u64, 16], 0, 5),
        ("dense/kernel", DType::F32, vec![8, 10], 1, 3),
        ("ids", DType::I64, vec![11, 2], 0, 3),
        ("half", DType::F16, vec![7, 3], 0, 3),
        ("words", DType::String, vec![9], 0, 4),
    ] {
        let t = tensor(&mut rng, dt, &shape);
        case.add_partitioned(&mut w, name, &t, axis, k);
    }
    for i in 0..20 {
        let name = format!("layer_{i:02}/bias");
        let t = tensor(&mut rng, DType::F32, &[64]);
        w.add(&name, TensorRef::from(&t)).unwrap();
        case.expect(&name, &t);
    }
    w.finish().unwrap();
    write_checkpoint_state(&case.dir, "model.ckpt-7").unwrap();
    case.finish();

    // Snappy-compressed index blocks, small blocks (many of them), long names.
    let mut case = Case::new(root, "writer_snappy_index", "ckpt");
    let mut w = CheckpointWriter::create(
        case.dir.join("ckpt"),
        WriterOptions {
            compress_index: true,
            block_size: 512,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..300 {
        let name = format!("model/very/long/scope/name/for/compression/block_{i:04}/kernel");
        let t = tensor(&mut rng, DType::F32, &[2, 3]);
        w.add(&name, TensorRef::from(&t)).unwrap();
        case.expect(&name, &t);
    }
    w.finish().unwrap();
    case.finish();
    println!("wrote 3 cases under {}", root.display());
}
