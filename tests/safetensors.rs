//! safetensors output against TensorFlow's values: every fixture converted
//! (`Checkpoint::write_safetensors`, `tfckpt convert`) and read back with the `safetensors` crate
//! equals what TF's reader returned (dtype, shape, bytes), with exactly the tensors safetensors
//! cannot hold skipped; `tfckpt init --out FILE.safetensors` holds the same values as the `.npy`
//! output of the same init; and every failure (a damaged shard, a string variable, a directory in
//! the way) writes nothing.

#[allow(dead_code)] // shared with the binary: only part of it is used here
#[path = "../src/bin/tfckpt/npy.rs"]
mod npy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;
use tfckpt::{
    init_from_checkpoint, AssignmentMap, Checkpoint, DType, Device, ErrorKind, Init, LoadOptions,
    Tensor, VariableStore, WriterOptions,
};

mod common;
use common::builder::CkptBuilder;
use common::fixtures::{case_dirs, ckpt_path, ckpt_rel, copy_files, files_in, fixture, init_ckpt};

/// The safetensors dtype each TensorFlow dtype must become, written out independently of the
/// crate's own table; `None`: the tensor must be skipped.
fn expected_dtype(tf: &str) -> Option<&'static str> {
    Some(match tf {
        "bool" => "BOOL",
        "uint8" => "U8",
        "int8" => "I8",
        "float8_e5m2" => "F8_E5M2",
        "float8_e4m3fn" => "F8_E4M3",
        "float8_e4m3fnuz" => "F8_E4M3FNUZ",
        "float8_e5m2fnuz" => "F8_E5M2FNUZ",
        "int16" => "I16",
        "uint16" => "U16",
        "float16" => "F16",
        "bfloat16" => "BF16",
        "int32" => "I32",
        "uint32" => "U32",
        "float32" => "F32",
        "float64" => "F64",
        "int64" => "I64",
        "uint64" => "U64",
        // No safetensors type: their values, as `.npy` holds them (TensorFlow's are compared).
        "int4" | "int2" => "I8",
        "uint4" | "uint2" => "U8",
        "string" | "complex64" | "complex128" | "qint8" | "quint8" | "qint16" | "quint16"
        | "qint32" | "float8_e4m3b11fnuz" | "variant" => return None,
        other => panic!("dtype {other} has no expectation here"),
    })
}

/// `DType::safetensors_dtype`, the table a trainer consults before converting, says what the
/// writer does: the type every dtype's tensors are written as, `None` for those skipped (found by
/// mutation testing: no test called it).
#[test]
fn safetensors_dtype_names_the_type_each_dtype_is_written_as() {
    for &d in DType::ALL {
        assert_eq!(d.safetensors_dtype(), expected_dtype(&d.to_string()), "{d}");
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// name -> (safetensors dtype, shape, bytes) of a safetensors file, read with the `safetensors`
/// crate.
fn read_back(path: &Path) -> BTreeMap<String, (String, Vec<u64>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let shape = t.shape().iter().map(|&d| d as u64).collect();
            (name, (t.dtype().to_string(), shape, t.data().to_vec()))
        })
        .collect()
}

fn npy_file(path: &Path) -> npy::NpyArray {
    npy::read(std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

#[test]
fn every_fixture_converts_to_tensorflow_values() {
    let cases = case_dirs();
    assert!(cases.len() >= 10, "{cases:?}");
    let (mut written, mut skipped) = (0, 0);
    for case in cases {
        let ckpt = Checkpoint::open(case.join(ckpt_rel(&case))).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("model.safetensors");
        let report = ckpt
            .write_safetensors(&out)
            .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let got = read_back(&out);
        let mut want_written = Vec::new();
        let mut want_skipped = Vec::new();
        let mut bytes = 0;
        for t in json(&case.join("expected/list.json")).as_array().unwrap() {
            let name = t["name"].as_str().unwrap();
            let dtype = t["dtype"].as_str().unwrap();
            let shape: Vec<u64> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            let Some(st_dtype) = expected_dtype(dtype) else {
                want_skipped.push((name.to_string(), dtype.to_string()));
                continue;
            };
            want_written.push(name.to_string());
            let (got_dtype, got_shape, got_bytes) = got
                .get(name)
                .unwrap_or_else(|| panic!("{}: {name} missing", case.display()));
            let tf = npy_file(&case.join("expected/values").join(format!("{name}.npy")));
            assert_eq!(got_dtype, st_dtype, "{} {name}", case.display());
            assert_eq!(
                (got_shape, got_shape),
                (&shape, &tf.shape),
                "{} {name}",
                case.display()
            );
            assert!(
                *got_bytes == tf.data,
                "{} {name}: bytes differ from TensorFlow's",
                case.display()
            );
            bytes += got_bytes.len() as u64;
        }
        let names: Vec<&String> = got.keys().collect();
        let mut want_sorted = want_written.clone();
        want_sorted.sort();
        assert_eq!(
            names,
            want_sorted.iter().collect::<Vec<_>>(),
            "{}",
            case.display()
        );
        let report_skipped: Vec<(String, String)> = report
            .skipped
            .iter()
            .map(|s| (s.name.clone(), s.dtype.name().to_string()))
            .collect();
        assert_eq!(report_skipped, want_skipped, "{}", case.display());
        assert_eq!((report.tensors, report.bytes), (got.len(), bytes));
        // Nothing but the file is left in its folder.
        assert_eq!(files_in(tmp.path()), ["model.safetensors"]);
        written += got.len();
        skipped += report.skipped.len();
    }
    assert!(written > 90 && skipped > 20, "{written} {skipped}");
}

#[test]
fn dtypes_are_kept_and_partitioned_tensors_assembled() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("d.safetensors");
    let ckpt = Checkpoint::open(ckpt_path("dtypes")).unwrap();
    ckpt.write_safetensors(&out).unwrap();
    let got = read_back(&out);
    for (name, dtype) in [
        ("dt/bfloat16", "BF16"),
        ("dt/float16", "F16"),
        ("dt/float8_e4m3fn", "F8_E4M3"),
        ("dt/float8_e5m2", "F8_E5M2"),
        ("sliced/bfloat16", "BF16"), // saved partitioned
    ] {
        assert_eq!(got[name].0, dtype, "{name}");
    }
    #[cfg(unix)]
    {
        // The file gets the mode a plain `File::create` would give it, not a temporary file's 0600.
        use std::os::unix::fs::PermissionsExt;
        let plain = tmp.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&out), mode(&plain));
    }
    assert!(ckpt.tensor("sliced/bfloat16").unwrap().is_partitioned());
    assert_eq!(
        got["sliced/bfloat16"].2,
        ckpt.read("sliced/bfloat16").unwrap().bytes().unwrap()
    );

    let extra = Checkpoint::open(ckpt_path("dtypes_extra")).unwrap();
    let out = tmp.path().join("e.safetensors");
    let report = extra.write_safetensors(&out).unwrap();
    let kinds: Vec<String> = read_back(&out).values().map(|v| v.0.clone()).collect();
    assert_eq!(kinds, ["F8_E4M3FNUZ", "F8_E5M2FNUZ", "I8", "U8"]);
    let skipped: Vec<DType> = report.skipped.iter().map(|s| s.dtype).collect();
    assert_eq!(skipped, [DType::F8E4M3B11FNUZ]);

    // A tensor saved in 5 slices by TensorFlow comes out whole.
    let ckpt = Checkpoint::open(ckpt_path("h1_partitioned")).unwrap();
    let info = ckpt.tensor("scope/var1").unwrap();
    assert!(info.slices.len() > 1);
    let out = tmp.path().join("p.safetensors");
    ckpt.write_safetensors(&out).unwrap();
    let got = read_back(&out);
    assert_eq!(got.len(), 1);
    assert_eq!(got["scope/var1"].1, info.shape);
    let tf = npy_file(&fixture("h1_partitioned/expected/values/scope/var1.npy"));
    assert!(got["scope/var1"].2 == tf.data);
}

/// safetensors has no 4- or 2-bit integers: such a tensor is written as its values, one a byte,
/// as `.npy` holds them. Each is stored one a byte in its low bits and TensorFlow ignores the
/// upper ones: a stored 0x7f is the int4 -1 and the uint4 15, never 127 (they were skipped, though
/// the CLI contract names only strings, complex numbers and the quantized types as skipped).
#[test]
fn sub_byte_integers_are_written_as_their_values() {
    let tmp = tempfile::tempdir().unwrap();
    let stored = [0x07u8, 0x0f, 0x7f, 0xf8, 0x03, 0xff];
    let mut b = CkptBuilder::new(tmp.path().join("m"));
    for dtype in [DType::I4, DType::U4, DType::I2, DType::U2] {
        b.bytes(dtype.name(), dtype, &[2, 3], &stored);
    }
    let prefix = b.finish();
    let want: [(&str, &str, [i16; 6]); 4] = [
        ("int4", "I8", [7, -1, -1, -8, 3, -1]),
        ("uint4", "U8", [7, 15, 15, 8, 3, 15]),
        ("int2", "I8", [-1, -1, -1, 0, -1, -1]),
        ("uint2", "U8", [3, 3, 3, 0, 3, 3]),
    ];
    let out = tmp.path().join("c.safetensors");
    let report = Checkpoint::open(&prefix)
        .unwrap()
        .write_safetensors(&out)
        .unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let got = read_back(&out);
    for (name, dtype, values) in want {
        let bytes: Vec<u8> = values.iter().map(|&v| v as u8).collect();
        assert_eq!(got[name], (dtype.to_string(), vec![2, 3], bytes), "{name}");
    }
    // `init --out FILE.safetensors` holds what its `.npy` files hold, a part of a partitioned
    // int4 variable and the whole too.
    let model = r#"{"variables": [{"name": "a", "shape": [2, 3], "dtype": "int4"},
                                  {"name": "p", "shape": [2, 3], "dtype": "uint2", "partitions": [1, 3]}]}"#;
    let map = r#"{"int4": "a", "uint2": "p"}"#;
    let (dir, file) = (tmp.path().join("npy"), tmp.path().join("i.safetensors"));
    for out in [&dir, &file] {
        let o = tfckpt(&[
            "init",
            prefix.to_str().unwrap(),
            "--model",
            model,
            "--map",
            map,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let got = read_back(&file);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(names, ["a", "p", "p/part_0", "p/part_1", "p/part_2"]);
    for (name, (dtype, shape, bytes)) in &got {
        let npy = npy_file(&dir.join(format!("{name}.npy")));
        assert_eq!((shape, bytes), (&npy.shape, &npy.data), "{name}");
        assert_eq!(dtype, if name == "a" { "I8" } else { "U8" });
    }
    assert_eq!(got["a"].2, [7, 255, 255, 248, 3, 255]);
}

#[test]
fn tf2_checkpoint_skips_only_the_object_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t.safetensors");
    let report = Checkpoint::open(ckpt_path("tf2_object"))
        .unwrap()
        .write_safetensors(&out)
        .unwrap();
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].name, "_CHECKPOINTABLE_OBJECT_GRAPH");
    assert_eq!(report.skipped[0].dtype, DType::String);
    assert!(!read_back(&out).contains_key("_CHECKPOINTABLE_OBJECT_GRAPH"));
}

#[test]
fn big_endian_bundles_and_the_reserved_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = CkptBuilder::with_options(
        tmp.path().join("be"),
        WriterOptions {
            big_endian: true,
            ..WriterOptions::default()
        },
    );
    b.f32("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5])
        .bytes("h", DType::BF16, &[2], &[0x80, 0x3f, 0x00, 0x40])
        .f32("__metadata__", &[1], &[7.0]);
    let prefix = b.finish();
    let ckpt = Checkpoint::open(&prefix).unwrap();
    let out = tmp.path().join("be.safetensors");
    let report = ckpt.write_safetensors(&out).unwrap();
    assert_eq!(report.skipped.len(), 1);
    assert!(
        report.skipped[0].to_string().contains("__metadata__"),
        "{}",
        report.skipped[0]
    );
    let got = read_back(&out);
    assert_eq!(got.len(), 2);
    assert_eq!(got["w"].2, ckpt.read("w").unwrap().bytes().unwrap());
    assert_eq!(got["w"].2[20..], 6.5f32.to_le_bytes());
    assert_eq!(
        got["h"],
        ("BF16".into(), vec![2], vec![0x80, 0x3f, 0x00, 0x40])
    );
}

/// A small checkpoint of three float32 tensors, with where `b`'s bytes are in its data shard.
fn three_tensors(dir: &Path) -> (PathBuf, usize) {
    let mut b = CkptBuilder::new(dir.join("ckpt"));
    b.f32("a", &[4], &[1.0, 2.0, 3.0, 4.0])
        .f32("b", &[2, 2], &[1234.5, -99.25, 0.125, 77.0])
        .f32("c", &[1], &[5.0]);
    let prefix = b.finish();
    let data = std::fs::read(dir.join("ckpt.data-00000-of-00001")).unwrap();
    let needle = 1234.5f32.to_le_bytes();
    let at = data.windows(4).position(|w| w == needle).unwrap();
    (prefix, at)
}

fn flip(file: &Path, at: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at] ^= 0x10;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_damaged_tensor_fails_the_whole_file_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (prefix, at) = three_tensors(tmp.path());
    flip(&tmp.path().join("ckpt.data-00000-of-00001"), at);
    let outdir = tempfile::tempdir().unwrap();
    let out = outdir.path().join("m.safetensors");
    let ckpt = Checkpoint::open(&prefix).unwrap();
    let err = ckpt.write_safetensors(&out).unwrap_err();
    match err.kind() {
        ErrorKind::TensorChecksum { tensor, .. } => assert_eq!(tensor, "b"),
        other => panic!("{other:?}"),
    }
    assert!(
        files_in(outdir.path()).is_empty(),
        "{:?}",
        files_in(outdir.path())
    );
    // An existing file at the destination is left as it was.
    std::fs::write(&out, b"before").unwrap();
    assert!(ckpt.write_safetensors(&out).is_err());
    assert_eq!(std::fs::read(&out).unwrap(), b"before");
    assert_eq!(files_in(outdir.path()), ["m.safetensors"]);

    // The same through a partitioned tensor (read and assembled, not viewed in place), and a
    // V1 file.
    for case in ["h1_partitioned", "v1"] {
        let copy = tempfile::tempdir().unwrap();
        copy_files(&fixture(case), copy.path());
        let ckpt_path = copy.path().join(ckpt_rel(&fixture(case)));
        let data = files_in(copy.path())
            .into_iter()
            .find(|f| f.contains(".data-") || (case == "v1" && f == "model-3"))
            .unwrap();
        let len = std::fs::metadata(copy.path().join(&data)).unwrap().len() as usize;
        flip(&copy.path().join(&data), len / 2);
        let out = outdir.path().join(format!("{case}.safetensors"));
        let result = Checkpoint::open(&ckpt_path).and_then(|c| c.write_safetensors(&out));
        assert!(result.is_err(), "{case}");
        assert!(!out.exists(), "{case}");
    }
    assert_eq!(files_in(outdir.path()), ["m.safetensors"]);
}

#[test]
fn a_missing_shard_or_a_directory_in_the_way_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (prefix, _) = three_tensors(tmp.path());
    let ckpt = Checkpoint::open(&prefix).unwrap();
    let dir = tmp.path().join("taken.safetensors");
    std::fs::create_dir(&dir).unwrap();
    let err = ckpt.write_safetensors(&dir).unwrap_err();
    assert!(err.to_string().contains("taken.safetensors"), "{err}");
    let err = ckpt
        .write_safetensors(tmp.path().join("no/such/dir/x.safetensors"))
        .unwrap_err();
    assert!(err.to_string().contains("no/such/dir"), "{err}");
    std::fs::remove_file(tmp.path().join("ckpt.data-00000-of-00001")).unwrap();
    let out = tmp.path().join("x.safetensors");
    let err = Checkpoint::open(&prefix)
        .unwrap()
        .write_safetensors(&out)
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!out.exists());
    // The checkpoint opened before keeps the file it mapped then (Unix: Windows maps a data
    // file at its first read).
    #[cfg(unix)]
    ckpt.write_safetensors(&out).unwrap();
}

/// A hostile index: partitioned tensors whose full shapes their files cannot back, or whose bytes
/// together cannot be addressed. An error naming one, no allocation of that size, no file, no
/// panic.
#[test]
fn tensors_larger_than_their_files_are_an_error_not_an_allocation() {
    // (full shape of each huge tensor, how many, what the error says, which it names)
    for (full, count, says, names) in [
        ([1u64 << 20, 1 << 10], 1, "back it", "huge0"),
        ([1 << 30, 1 << 30], 2, "too large", "huge1"), // 2^62 bytes each: 2^63 together
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut w =
            tfckpt::CheckpointWriter::create(tmp.path().join("h"), WriterOptions::default())
                .unwrap();
        w.add("small", (&Tensor::from_f32(&[1], &[1.0]).unwrap()).into())
            .unwrap();
        for i in 0..count {
            w.add_slice(
                &format!("huge{i}"),
                &full,
                &tfckpt::Slice::parse("0,1:0,1").unwrap(),
                (&Tensor::from_f32(&[1, 1], &[2.0]).unwrap()).into(),
            )
            .unwrap();
        }
        w.finish().unwrap();
        let ckpt = Checkpoint::open(tmp.path().join("h")).unwrap();
        let out = tmp.path().join("h.safetensors");
        let err = ckpt.write_safetensors(&out).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("\"{names}\"")) && text.contains(says),
            "{text}"
        );
        if says == "too large" {
            assert!(matches!(err.kind(), ErrorKind::Export { path, .. } if *path == out));
        }
        assert!(!out.exists());
        let left = files_in(tmp.path());
        assert!(left.iter().all(|f| f.starts_with("h.")), "{left:?}");
    }
}

fn partitioned_store(prefix: &Path) -> VariableStore {
    let mut store = VariableStore::new();
    store
        .get_partitioned_variable("p", &[4], DType::F32, &[2], Init::Zeros)
        .unwrap();
    store
        .get_variable("head/b", &[2, 2], DType::F32, Init::Constant(0.5))
        .unwrap();
    store
        .get_variable("n", &[3], DType::BF16, Init::Ones)
        .unwrap();
    let map = AssignmentMap::from([("a", "p")]);
    init_from_checkpoint(&mut store, prefix, &map).unwrap();
    store
}

#[test]
fn store_values_parts_and_wholes_are_written_under_their_names() {
    let tmp = tempfile::tempdir().unwrap();
    let (prefix, _) = three_tensors(tmp.path());
    let mut store = partitioned_store(&prefix);
    let out = tmp.path().join("s.safetensors");
    // Before initialization there is nothing to write.
    let err = store.write_safetensors(&out).unwrap_err();
    assert!(err.to_string().contains("initialize"), "{err}");
    assert!(!out.exists());
    store.check_safetensors().unwrap();
    store.initialize(Device::Cpu).unwrap();
    let report = store.write_safetensors(&out).unwrap();
    let got = read_back(&out);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(names, ["head/b", "n", "p", "p/part_0", "p/part_1"]);
    assert_eq!(report.tensors, 5);
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    assert_eq!(
        got["p"],
        ("F32".into(), vec![4], f32s(&[1.0, 2.0, 3.0, 4.0]))
    );
    assert_eq!(got["p/part_1"], ("F32".into(), vec![2], f32s(&[3.0, 4.0])));
    assert_eq!(got["head/b"].2, f32s(&[0.5; 4]));
    assert_eq!(got["n"], ("BF16".into(), vec![3], [0x80, 0x3f].repeat(3)));
}

/// After a ranked load, a rank's file holds what that rank owns: every unpartitioned variable,
/// its own parts, and the whole of a partitioned variable only when it owns every part (found
/// uncovered by a coverage run: the rule for wholes had no test).
#[test]
fn a_ranked_store_writes_its_own_parts_and_only_wholes_it_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let (prefix, _) = three_tensors(tmp.path());
    let written = |rank: usize, world: usize| {
        let mut store = partitioned_store(&prefix);
        store
            .initialize_with(Device::Cpu, &LoadOptions::new().rank(rank, world))
            .unwrap();
        let out = tmp.path().join(format!("rank{rank}of{world}.safetensors"));
        let report = store.write_safetensors(&out).unwrap();
        let got = read_back(&out);
        assert_eq!(report.tensors, got.len());
        got
    };
    let names = |got: &BTreeMap<String, _>| got.keys().cloned().collect::<Vec<String>>();
    let rank0 = written(0, 2);
    let rank1 = written(1, 2);
    assert_eq!(names(&rank0), ["head/b", "n", "p/part_0"]);
    assert_eq!(names(&rank1), ["head/b", "n", "p/part_1"]);
    // A world of one owns every part, so the whole is written too: the unranked file.
    let alone = written(0, 1);
    assert_eq!(names(&alone), ["head/b", "n", "p", "p/part_0", "p/part_1"]);
    for (name, value) in rank0.iter().chain(&rank1) {
        assert_eq!(&alone[name], value, "{name}");
    }
}

#[test]
fn a_variable_safetensors_cannot_hold_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (prefix, _) = three_tensors(tmp.path());
    for (dtype, name) in [
        (DType::String, "words"),
        (DType::C64, "z"),
        (DType::QI8, "q"),
    ] {
        let mut store = partitioned_store(&prefix);
        store.get_variable(name, &[2], dtype, Init::Zeros).unwrap();
        let err = store.check_safetensors().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("{name:?}")) && text.contains(dtype.name()),
            "{text}"
        );
        store.initialize(Device::Cpu).unwrap();
        let out = tmp.path().join("bad.safetensors");
        let err = store.write_safetensors(&out).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::BadVariable { name: n, .. } if n == name));
        assert!(err.to_string().contains(dtype.name()), "{err}");
        assert!(!out.exists());
    }
    // A value replaced by one of the wrong size is refused too.
    let mut store = partitioned_store(&prefix);
    store.initialize(Device::Cpu).unwrap();
    *store.value_mut("head/b").unwrap() = Tensor::from_f32(&[1], &[1.0]).unwrap();
    let t = store.value_mut("head/b").unwrap();
    t.shape = vec![2, 2];
    let err = store
        .write_safetensors(tmp.path().join("bad.safetensors"))
        .unwrap_err();
    assert!(err.to_string().contains("head/b"), "{err}");
    let left = files_in(tmp.path());
    assert!(
        left.iter().all(|f| f.starts_with("ckpt")),
        "{left:?}: a failed write left a file"
    );
}

/// A header larger than the 100,000,000 bytes safetensors allows (600 variables with names of
/// 170 KB): an error naming the file, the bound and what makes the header large, and no file
/// (the message was "header too large", with neither).
#[test]
fn a_header_larger_than_safetensors_allows_is_an_error_naming_the_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = VariableStore::new();
    for i in 0..600 {
        let name = format!("v{i:03}_{}", "n".repeat(170_000));
        store
            .get_variable(&name, &[], DType::F32, Init::Zeros)
            .unwrap();
    }
    // Seen before any load (`tfckpt init --out FILE.safetensors` asks first).
    let err = store.check_safetensors().unwrap_err().to_string();
    assert!(
        err.contains("these 600 variables: their names alone hold 102003000 bytes"),
        "{}",
        &err[..err.len().min(400)]
    );
    store.initialize(Device::Cpu).unwrap();
    let out = tmp.path().join("big.safetensors");
    let err = store.write_safetensors(&out).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err.kind(), ErrorKind::Export { path, .. } if *path == out)
            && text.contains("larger than the 100000000 bytes safetensors allows")
            && text.contains("600 tensors, whose names alone hold 102003000 bytes"),
        "{}",
        &text[..text.len().min(400)]
    );
    assert!(
        files_in(tmp.path()).is_empty(),
        "a failed write left a file"
    );
}

// ---- the binary ----

fn tfckpt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tfckpt"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_one_error_line(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{err} should mention {needle}");
}

#[test]
fn cli_convert_writes_the_library_file_and_warns_per_skipped_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    for case in ["tf2_object", "dtypes", "v1", "sharded_partitioned"] {
        let ckpt = ckpt_path(case);
        let out = tmp.path().join(format!("new/dir/{case}.safetensors"));
        let o = tfckpt(&["convert", ckpt.to_str().unwrap(), out.to_str().unwrap()]);
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).starts_with("tfckpt convert: "));
        let lib = tmp.path().join(format!("{case}.lib.safetensors"));
        let report = Checkpoint::open(&ckpt)
            .unwrap()
            .write_safetensors(&lib)
            .unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&lib).unwrap(),
            "{case}"
        );
        let warnings: Vec<String> = stderr(&o).lines().map(String::from).collect();
        let want: Vec<String> = report
            .skipped
            .iter()
            .map(|s| format!("warning: {s}"))
            .collect();
        assert_eq!(warnings, want, "{case}");
        if case == "tf2_object" {
            assert_eq!(want.len(), 1);
            assert!(want[0].contains("\"_CHECKPOINTABLE_OBJECT_GRAPH\" (string)"));
        }
    }
}

/// A signal that ends `init --out FILE.safetensors` while it writes leaves nothing behind: not
/// the temporary file, and not the folders it made for the output, emptied by the file's removal.
/// Debug builds only: a ranked write waits, after its temporary file is made, until another
/// process writes the output (`TFCKPT_TEST_WAIT_FOR_OTHER_WRITER`), and the signal comes there.
#[cfg(all(unix, debug_assertions))]
#[test]
fn a_signal_during_a_write_removes_the_folders_made_for_it() {
    use std::os::unix::process::ExitStatusExt;
    let ckpt = ckpt_path("h1_partitioned");
    let model = r#"{"variables": [{"name": "v", "shape": [100, 100], "dtype": "float32"}]}"#;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("made/for");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tfckpt"));
        command
            .args(["init", ckpt.to_str().unwrap(), "--model", model, "--map"])
            .arg(r#"{"scope/var1": "v"}"#)
            .arg("--out")
            .arg(folder.join("it.safetensors"))
            .args(["--rank", "0", "--ranks", "1"])
            .env("TFCKPT_TEST_WAIT_FOR_OTHER_WRITER", "1")
            .stderr(std::process::Stdio::piped());
        common::start_with_default_signals(&mut command, &[]);
        let mut child = command.spawn().unwrap();
        // The write is done, and the rank held, when its temporary file is the folder's only
        // entry and holds the file (the library renames its own finished file onto it): a signal
        // earlier, while the library still makes files there, is another test's case.
        let written = || {
            let names = files_in(&folder);
            matches!(&names[..], [f] if f.starts_with(".tfckpt-") && f.ends_with(".safetensors.tmp")
                && std::fs::metadata(folder.join(f)).is_ok_and(|m| m.len() > 0))
        };
        let t0 = std::time::Instant::now();
        while !folder.is_dir() || !written() {
            if t0.elapsed().as_secs() > 60 || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("it did not reach its write");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let (status, err) = common::signal_and_wait(&mut child, signal);
        assert_eq!(status.signal(), Some(signal), "{status:?}: {err}");
        assert_eq!(files_in(tmp.path()), Vec::<String>::new(), "{err}");
    }
}

#[test]
fn cli_convert_failures_exit_1_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (prefix, at) = three_tensors(tmp.path());
    flip(&tmp.path().join("ckpt.data-00000-of-00001"), at);
    let out = tmp.path().join("made/for/it/m.safetensors");
    let o = tfckpt(&["convert", prefix.to_str().unwrap(), out.to_str().unwrap()]);
    assert_one_error_line(&o, "\"b\"");
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
    assert!(
        !tmp.path().join("made").exists(),
        "folders made for OUT stay"
    );
    let o = tfckpt(&[
        "convert",
        tmp.path().join("nothing").to_str().unwrap(),
        "x.safetensors",
    ]);
    assert_one_error_line(&o, "nothing");
    assert_eq!(
        tfckpt(&["convert", prefix.to_str().unwrap()]).status.code(),
        Some(2)
    );
    assert_eq!(
        tfckpt(&["convert", "--bogus", "a", "b"]).status.code(),
        Some(2)
    );
}

/// `tfckpt convert` on seeded random damages (see `tests/common/damage.rs`) of four fixtures:
/// either exit code 1, one `error:` line, and nothing in the output folder (no file, no
/// temporary), or exit code 0 and exactly the file of the intact checkpoint.
#[test]
fn cli_convert_of_damaged_checkpoints_writes_the_intact_file_or_nothing() {
    let mut outcomes = common::damage::Outcomes::default();
    for (ci, case) in ["tf2_object", "dtypes", "v1", "sharded_partitioned"]
        .iter()
        .enumerate()
    {
        let ckpt = ckpt_path(case);
        let tmp = tempfile::tempdir().unwrap();
        let intact = tmp.path().join("intact.safetensors");
        let o = tfckpt(&["convert", ckpt.to_str().unwrap(), intact.to_str().unwrap()]);
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        let want = std::fs::read(&intact).unwrap();
        for it in 0..25u64 {
            let seed = (ci as u64) << 32 | it | 1 << 58;
            let work = tempfile::tempdir().unwrap();
            let ckpt_dir = work.path().join("ckpt");
            let (damaged, done) = common::damage::damaged_copy(&ckpt, &ckpt_dir, seed);
            let dir = work.path().join("out");
            std::fs::create_dir(&dir).unwrap();
            let out = dir.join("m.safetensors");
            let o = tfckpt(&["convert", damaged.to_str().unwrap(), out.to_str().unwrap()]);
            outcomes.run(&format!("{case}: {done}"), || match o.status.code() {
                Some(1) => {
                    // The error names the damaged checkpoint's file (its folder: not the output's).
                    assert_one_error_line(&o, ckpt_dir.to_str().unwrap());
                    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
                    match left.is_empty() {
                        true => Ok(false),
                        false => Err(format!("left {left:?}")),
                    }
                }
                Some(0) if std::fs::read(&out).unwrap() == want => Ok(true),
                Some(0) => Err("differs from the intact file".into()),
                code => Err(format!("exit {code:?}: {}", stderr(&o))),
            });
        }
    }
    assert!(outcomes.failed > 30 && outcomes.exact > 3, "{outcomes:?}");
}

/// `init --out FILE.safetensors` on every single-call TensorFlow init case: the file holds the
/// `.npy` files of `init --out DIR` (names without `.npy`, same shapes and bytes); a model with a
/// variable safetensors cannot hold fails naming it, and writes nothing.
#[test]
fn cli_init_safetensors_equals_the_npy_output() {
    let init = fixture("init");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&init)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    let (mut same, mut refused) = (0, 0);
    for case in cases {
        let meta = json(&case.join("case.json"));
        if meta["calls"] != 1
            || meta["cli_representable"] != true
            || meta.get("cli_md_differs").is_some()
            || case.join("expected/error.json").is_file()
        {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let ckpt = init_ckpt(&case);
        let run = |out: &Path| {
            tfckpt(&[
                "init",
                ckpt.to_str().unwrap(),
                "--model",
                case.join("model.json").to_str().unwrap(),
                "--map",
                case.join("map.json").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
        };
        let file = tmp.path().join("sub/model.safetensors");
        let o = run(&file);
        let model = json(&case.join("model.json"));
        let unwritable: Vec<&str> = model["variables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| expected_dtype(v["dtype"].as_str().unwrap()).is_none())
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        if !unwritable.is_empty() {
            // The error names a variable safetensors cannot hold, with its dtype.
            assert_one_error_line(&o, "\": not written: safetensors cannot hold ");
            let err = stderr(&o);
            assert!(err.contains("safetensors cannot hold"), "{err}");
            assert!(
                unwritable.iter().any(|v| err.contains(&format!("\"{v}"))),
                "{err} names none of {unwritable:?}"
            );
            assert!(!tmp.path().join("sub").exists(), "{}", case.display());
            refused += 1;
            continue;
        }
        assert!(o.status.success(), "{}: {}", case.display(), stderr(&o));
        let dir = tmp.path().join("npy");
        let o = run(&dir);
        assert!(o.status.success(), "{}: {}", case.display(), stderr(&o));
        let got = read_back(&file);
        let mut n = 0;
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(&dir).unwrap().to_str().unwrap();
                let name = rel.strip_suffix(".npy").unwrap();
                let want = npy_file(&p);
                let (dtype, shape, bytes) = got
                    .get(name)
                    .unwrap_or_else(|| panic!("{}: {name} missing", case.display()));
                assert_eq!(shape, &want.shape, "{} {name}", case.display());
                assert!(*bytes == want.data, "{} {name}", case.display());
                let descr_ok = match dtype.as_str() {
                    "F32" => want.descr == "<f4",
                    "F64" => want.descr == "<f8",
                    "F16" => want.descr == "<f2",
                    "BF16" | "U16" => want.descr == "<u2",
                    "I64" => want.descr == "<i8",
                    "I32" => want.descr == "<i4",
                    "I16" => want.descr == "<i2",
                    "U32" => want.descr == "<u4",
                    "U64" => want.descr == "<u8",
                    "I8" => want.descr == "<i1",
                    "U8" | "F8_E4M3" | "F8_E5M2" => want.descr == "|u1",
                    "BOOL" => want.descr == "|b1",
                    _ => false,
                };
                assert!(
                    descr_ok,
                    "{} {name}: {dtype} vs {}",
                    case.display(),
                    want.descr
                );
                n += 1;
            }
        }
        assert_eq!(n, got.len(), "{}", case.display());
        same += 1;
    }
    assert!(same >= 20 && refused >= 1, "{same} {refused}");
}

#[test]
fn cli_init_with_a_string_variable_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = ckpt_path("h1_basic");
    let model = r#"{"variables": [{"name": "new_scope_1/var1", "shape": [1, 10], "dtype": "float32"}, {"name": "vocab/words", "shape": [3], "dtype": "string"}]}"#;
    let out = tmp.path().join("a/b/model.safetensors");
    let o = tfckpt(&[
        "init",
        ckpt.to_str().unwrap(),
        "--model",
        model,
        "--map",
        r#"{"var1": "new_scope_1/var1"}"#,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_one_error_line(&o, "\"vocab/words\"");
    assert!(stderr(&o).contains("string"), "{}", stderr(&o));
    assert!(!tmp.path().join("a").exists());
    assert!(o.stdout.is_empty());

    // Without it, the same call writes the file; an existing directory named *.safetensors keeps
    // the directory meaning.
    let model =
        r#"{"variables": [{"name": "new_scope_1/var1", "shape": [1, 10], "dtype": "float32"}]}"#;
    let init_to = |out: &Path| {
        let map = r#"{"var1": "new_scope_1/var1"}"#;
        let (ckpt, out) = (ckpt.to_str().unwrap(), out.to_str().unwrap());
        let o = tfckpt(&["init", ckpt, "--model", model, "--map", map, "--out", out]);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    init_to(&out);
    assert_eq!(read_back(&out).len(), 1);
    let dir = tmp.path().join("d.safetensors");
    std::fs::create_dir(&dir).unwrap();
    init_to(&dir);
    assert!(dir.join("new_scope_1/var1.npy").is_file());
}

/// A shard truncated at staggered moments of `convert` and `init --out FILE.safetensors` (mapped
/// and `--copy`): the process exits 0 with a file holding exactly the checkpoint's values, or 1
/// with an error line and no file; never by a signal, never a file with zeros for the lost pages.
#[cfg(unix)]
#[test]
fn truncation_during_a_write_is_an_error_and_leaves_no_file() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("m");
    let data: Vec<f32> = (0..1 << 20).map(|i| i as f32).collect(); // 4 MiB a tensor
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let write = || {
        let mut b = CkptBuilder::new(&prefix);
        for t in ["a", "b", "c", "d"] {
            b.f32(t, &[1 << 20], &data);
        }
        b.finish();
    };
    let shard = tmp.path().join("m.data-00000-of-00001");
    let p = prefix.to_str().unwrap().to_string();
    let out = tmp.path().join("o.safetensors");
    let o = out.to_str().unwrap().to_string();
    let model = r#"{"variables": [{"name": "v", "shape": [1048576], "dtype": "float32"}, {"name": "w", "shape": [1048576], "dtype": "float32"}]}"#;
    let map = r#"{"c": "v", "d": "w"}"#;
    let runs: Vec<Vec<&str>> = vec![
        vec!["convert", &p, &o],
        vec!["init", &p, "--model", model, "--map", map, "--out", &o],
        vec![
            "init", &p, "--model", model, "--map", map, "--out", &o, "--copy",
        ],
    ];
    let (mut caught, mut done) = (0, 0);
    for (i, args) in runs.iter().cycle().take(60).enumerate() {
        if i >= 24 && caught > 0 {
            break;
        }
        write();
        let _ = std::fs::remove_file(&out);
        #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
        let mut child = Command::new(env!("CARGO_BIN_EXE_tfckpt"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Early and late moments: from before the checkpoint is opened to after the rename. Every
        // other run waits until the child has mapped the shard (on Linux): a delay counted from
        // the spawn alone once missed every read of 60 runs on a busy machine.
        #[cfg(target_os = "linux")]
        if i % 2 == 1 {
            common::fork::wait_until_mapped(&mut child, &shard);
        }
        std::thread::sleep(std::time::Duration::from_millis(i as u64 * 3 % 30));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&shard)
            .unwrap()
            .set_len(8192)
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.signal().is_none() && matches!(o.status.code(), Some(0 | 1)),
            "{args:?}: {:?} {}",
            o.status,
            stderr(&o)
        );
        if o.status.success() {
            let got = read_back(&out);
            assert!(got.len() == 4 || got.len() == 2, "{args:?}");
            assert!(got.values().all(|t| t.2 == bytes), "{args:?}: wrong bytes");
            done += 1;
        } else {
            assert!(!out.exists(), "{args:?}: a file despite {}", stderr(&o));
            assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
            caught += usize::from(stderr(&o).contains("truncated while it was being read"));
        }
        let left = files_in(tmp.path());
        assert!(
            left.iter()
                .all(|f| f.starts_with("m.") || f.starts_with("o.")),
            "{left:?}"
        );
    }
    assert!(
        caught > 0,
        "no truncation landed during a read ({done} runs finished first)"
    );
}

/// An output named without a folder (`convert CKPT m.safetensors`, as a person types it) goes to
/// the working directory, with nothing else left there (found by mutation testing: no test named
/// one, and a write that took the empty folder part for a folder failed after its file was in
/// place).
#[test]
fn outputs_named_without_a_folder_go_to_the_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (prefix, _) = three_tensors(tmp.path());
    let ckpt = prefix.to_str().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tfckpt"))
            .args(args)
            .current_dir(cwd.path())
            .output()
            .unwrap()
    };
    let o = run(&["convert", ckpt, "m.safetensors"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["get", ckpt, "b", "--out", "b.npy"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(files_in(cwd.path()), ["b.npy", "m.safetensors"]);
    let got = read_back(&cwd.path().join("m.safetensors"));
    let b: Vec<u8> = [1234.5f32, -99.25, 0.125, 77.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(got["b"], ("F32".into(), vec![2, 2], b));
    assert_eq!(got.len(), 3);
}

/// A partitioned variable named `x/part_0`, then a partitioned `x` (whose part 0 has that name):
/// refused when declared. It was accepted, and the safetensors writer panicked on the two entries
/// of one name after the whole load (and `--out DIR` wrote one `.npy` over the other).
#[test]
fn cli_init_refuses_a_part_named_as_a_partitioned_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model.json");
    std::fs::write(
        &model,
        r#"{"variables": [
            {"name": "x/part_0", "shape": [4], "dtype": "float32", "partitions": [2]},
            {"name": "x", "shape": [2], "dtype": "float32", "partitions": [2]}]}"#,
    )
    .unwrap();
    let map = tmp.path().join("map.json");
    std::fs::write(&map, "{}").unwrap();
    let ckpt = ckpt_path("h1_basic");
    for out in ["o.safetensors", "dir"] {
        let out = tmp.path().join(out);
        let o = tfckpt(&[
            "init",
            ckpt.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--map",
            map.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_one_error_line(&o, "x/part_0 already exists");
        assert!(!out.exists());
    }
}

/// Ranks that share one `--out FILE.safetensors` would replace each other's values, the last
/// rank's alone left and every rank exiting 0. A rank that finds the file written by another
/// process since it started is an error saying so, and writes nothing; a rank run again later
/// replaces its own earlier file. Debug builds only: rank 0 waits, after writing its temporary
/// file, until rank 1 has written the output (`TFCKPT_TEST_WAIT_FOR_OTHER_WRITER`).
#[cfg(debug_assertions)]
#[test]
fn ranks_sharing_one_safetensors_file_do_not_replace_each_other_silently() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = ckpt_path("h1_partitioned");
    let model = r#"{"variables": [{"name": "v", "shape": [100, 100], "dtype": "float32", "partitions": [5, 1]}]}"#;
    let out = tmp.path().join("shared.safetensors");
    let command = |rank: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tfckpt"));
        c.args(["init", ckpt.to_str().unwrap(), "--model", model, "--map"])
            .arg(r#"{"scope/var1": "v"}"#)
            .arg("--out")
            .arg(&out)
            .args(["--rank", rank, "--ranks", "2"]);
        c
    };
    let mut waiting = command("0")
        .env("TFCKPT_TEST_WAIT_FOR_OTHER_WRITER", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Rank 1 starts once rank 0 has loaded (its temporary file is there): rank 0 saw no file
    // when it started, whatever the machine's load.
    let t0 = std::time::Instant::now();
    while !files_in(tmp.path())
        .iter()
        .any(|f| f.starts_with(".tfckpt-") && f.ends_with(".safetensors.tmp"))
    {
        if t0.elapsed().as_secs() > 60 || waiting.try_wait().unwrap().is_some() {
            let _ = waiting.kill();
            panic!("rank 0 did not reach its write");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let other = command("1").output().unwrap();
    if !other.status.success() {
        let _ = waiting.kill();
        panic!("{}", stderr(&other));
    }
    let o = waiting.wait_with_output().unwrap();
    assert_one_error_line(&o, "written by another process while this one was loading");
    assert!(stderr(&o).contains(out.to_str().unwrap()), "{}", stderr(&o));
    // Rank 1's file, whole: parts 1 and 3.
    let names: Vec<String> = read_back(&out).into_keys().collect();
    assert_eq!(names, ["v/part_1", "v/part_3"]);
    assert_eq!(files_in(tmp.path()), ["shared.safetensors"]);
    // Run again alone, rank 0 replaces the file (what was there when it started).
    let again = command("0").output().unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    let names: Vec<String> = read_back(&out).into_keys().collect();
    assert_eq!(names, ["v/part_0", "v/part_2", "v/part_4"]);
    assert_eq!(files_in(tmp.path()), ["shared.safetensors"]);
}

/// A value mapped copy-on-write from an offset inside a page, whose file then loses the value's
/// last page: writing it out fails as `Truncated`, naming the shard. The check after the write's
/// EFAULT read one byte every 4 KiB from the value's first byte, which missed that page, and the
/// error was a plain I/O error.
#[cfg(target_os = "linux")]
#[test]
fn a_mapped_value_that_lost_its_last_page_is_truncated() {
    use tfckpt::{
        init_from_checkpoint, AssignmentMap, DType, Device, Init, LoadOptions, Target, Tensor,
        VariableStore,
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("m");
    let mut w = tfckpt::CheckpointWriter::create(&prefix, Default::default()).unwrap();
    // "a" (100 bytes) first, then "b" (1 MiB, as much as the writer buffers: written straight
    // from the mapping) from offset 100: over 257 pages.
    let n = 1 << 20;
    let a = Tensor::from_bytes(DType::U8, &[100], vec![1; 100]).unwrap();
    let b = Tensor::from_bytes(DType::U8, &[n], vec![2; n as usize]).unwrap();
    w.add("a", (&a).into()).unwrap();
    w.add("b", (&b).into()).unwrap();
    w.finish().unwrap();
    let mut store = VariableStore::new();
    store
        .get_variable("b", &[n], DType::U8, Init::Zeros)
        .unwrap();
    init_from_checkpoint(
        &mut store,
        &prefix,
        &AssignmentMap::from([("b", Target::name("b"))]),
    )
    .unwrap();
    let options = LoadOptions {
        map_values: true,
        map_min_bytes: Some(1),
        ..Default::default()
    };
    let r = store.initialize_with(Device::Cpu, &options).unwrap();
    assert_eq!(r.mapped_bytes, n);
    // The shard ends at 1 MiB: b's last 100 bytes, alone on its last page, are gone.
    let shard = dir.path().join("m.data-00000-of-00001");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(n)
        .unwrap();
    let out = dir.path().join("out.safetensors");
    let e = store.write_safetensors(&out).unwrap_err();
    assert!(
        matches!(e.kind(), tfckpt::ErrorKind::Truncated { path } if *path == shard),
        "{e}"
    );
    assert!(!out.exists());
}
