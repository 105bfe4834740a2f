//! Conformance on files written by TensorFlow 2.21 (`tests/fixtures/generate.py`): for every fixture
//! case, our listing equals `tf.train.list_variables` (+ dtypes), every tensor equals what TF's reader
//! returned (byte for byte, through the same `.npy` conventions as `tfckpt get`), every stored slice of
//! a partitioned tensor reads back as its box of the full tensor, and `verify` passes.

use std::path::{Path, PathBuf};

use serde_json::Value;
#[allow(dead_code)] // shared with the binary: only part of it is used here
#[path = "../src/bin/tfckpt/npy.rs"]
mod npy;

use tfckpt::{Checkpoint, Slice, Tensor};

mod common;
use common::cut;
use common::fixtures::{case_dirs, ckpt_rel, fixture};

/// The directories of every fixture case.
fn cases() -> Vec<PathBuf> {
    let v = case_dirs();
    assert!(v.len() >= 8, "fixture cases missing: {v:?}");
    v
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn open_case(case: &Path) -> Checkpoint {
    Checkpoint::open(case.join(ckpt_rel(case)))
        .unwrap_or_else(|e| panic!("{}: {e}", case.display()))
}

/// The listing as `expected/list.json` holds it: name, dtype and shape of every tensor.
fn listing(ckpt: &Checkpoint) -> Value {
    let list = ckpt.tensors().iter();
    list.map(|t| serde_json::json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape}))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares a tensor with TF's value stored next to the fixture.
fn check_value(case: &Path, t: &Tensor, name: &str) {
    let base = case.join("expected/values").join(name);
    let strings = PathBuf::from(format!("{}.strings.json", base.display()));
    if strings.is_file() {
        let want = json(&strings);
        let shape: Vec<u64> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let hexes: Vec<String> = want["hex"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_string())
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        let got: Vec<String> = t
            .strings()
            .expect("a string tensor")
            .iter()
            .map(hex)
            .collect();
        assert_eq!(got, hexes, "{name}");
        return;
    }
    let path = PathBuf::from(format!("{}.npy", base.display()));
    let want =
        npy::read(std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .unwrap();
    let mut buf = Vec::new();
    npy::write_tensor(&mut buf, t).unwrap();
    let got = npy::read(&buf[..]).unwrap();
    assert_eq!(
        (got.descr.as_str(), &got.shape),
        (want.descr.as_str(), &want.shape),
        "{name} in {}",
        case.display()
    );
    assert!(
        got.data == want.data,
        "{name} in {}: values differ",
        case.display()
    );
}

#[test]
fn listing_matches_tensorflow() {
    for case in cases() {
        let ckpt = open_case(&case);
        let want = json(&case.join("expected/list.json"));
        assert_eq!(listing(&ckpt), want, "{}", case.display());
    }
}

#[test]
fn values_match_tensorflow() {
    let (mut n, mut views) = (0, 0);
    for case in cases() {
        let ckpt = open_case(&case);
        for info in ckpt.tensors() {
            let t = ckpt
                .read(&info.name)
                .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
            assert_eq!((t.dtype, &t.shape), (info.dtype, &info.shape));
            check_value(&case, &t, &info.name);
            if let Some(size) = info.dtype.size() {
                let mut buf = vec![0xAAu8; ckpt.byte_len(&info.name, None).unwrap()];
                ckpt.read_into(&info.name, &mut buf).unwrap();
                assert_eq!(Some(&buf[..]), t.bytes());
                assert_eq!(buf.len() as u64, info.num_elements() * size as u64);
                assert_eq!(info.byte_len(), Some(buf.len() as u64));
            } else {
                assert_eq!(info.byte_len(), None, "{}", info.name);
            }
            // A zero-copy view, where there is one, is the same tensor.
            match ckpt.view(&info.name) {
                Ok(v) => {
                    assert_eq!((v.dtype(), v.shape()), (t.dtype, &t.shape[..]));
                    assert_eq!(Some(v.as_bytes()), t.bytes(), "{}", info.name);
                    views += 1;
                }
                Err(e) => assert!(
                    matches!(e.kind(), tfckpt::ErrorKind::Unsupported { .. }),
                    "{}: {e}",
                    info.name
                ),
            }
            n += 1;
        }
    }
    assert!(n > 90, "only {n} tensors checked");
    assert!(views > 50, "only {views} views checked");
}

/// Every stored slice read on its own equals the same box cut out of the full tensor.
#[test]
fn stored_slices_match_their_box_of_the_full_tensor() {
    let mut n = 0;
    for case in cases() {
        let slices = case.join("expected/slices.json");
        if !slices.is_file() {
            continue;
        }
        let ckpt = open_case(&case);
        let want = json(&slices);
        for (name, spec) in want.as_object().unwrap() {
            let info = ckpt.tensor(name).unwrap();
            let full = ckpt.read(name).unwrap();
            let parts = spec["slices"].as_array().unwrap();
            if parts.len() > 1 {
                assert_eq!(info.slices.len(), parts.len(), "{name}");
            }
            for p in parts {
                let (_, slice) = Slice::parse_shape_and_slice(p["spec"].as_str().unwrap())
                    .unwrap()
                    .unwrap();
                if parts.len() > 1 {
                    assert!(
                        info.slices
                            .iter()
                            .any(|s| s.ranges(&info.shape) == slice.ranges(&info.shape)),
                        "{name} {slice}"
                    );
                }
                let got = ckpt.read_slice(name, &slice).unwrap();
                assert_eq!(
                    got.data,
                    cut(&full, &slice.ranges(&info.shape)).data,
                    "{name} {slice}"
                );
                n += 1;
            }
        }
    }
    assert!(n >= 20, "only {n} slices checked");
}

#[test]
fn verify_passes_on_every_fixture() {
    let mut small = 0;
    for case in cases() {
        let ckpt = open_case(&case);
        let report = ckpt
            .verify()
            .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        assert!(
            report.tensors > 0 && report.blocks > 0,
            "{}",
            case.display()
        );
        // TensorFlow saved every part of each partitioned variable.
        assert!(
            report.incomplete.is_empty(),
            "{}: {:?}",
            case.display(),
            report.incomplete
        );
        // An index of a few kilobytes is one data block (TensorFlow's blocks are 256 KiB), and
        // the table's index and metaindex blocks are counted with it.
        let index = &ckpt.files()[0];
        if ckpt.format() == tfckpt::Format::V2 && std::fs::metadata(index).unwrap().len() < 4096 {
            assert_eq!(report.blocks, 3, "{}", case.display());
            small += 1;
        }
    }
    assert!(small >= 8, "{small}");
}

/// A SavedModel's variables (`tf/saved_model/`, written by `tf.saved_model.save`): the checkpoint
/// `variables/variables` lists, reads and verifies as TensorFlow's reader gave it. (The folder
/// itself is no checkpoint: `tests/errors.rs`.)
#[test]
fn a_saved_models_variables_read_as_tensorflow_read_them() {
    let dir = fixture("saved_model");
    let want = json(&dir.join("expected.json"));
    let ckpt = Checkpoint::open(dir.join(want["ckpt"].as_str().unwrap())).unwrap();
    assert_eq!(listing(&ckpt), want["list"]);
    let values = want["values"].as_object().unwrap();
    assert_eq!(values.len(), 3);
    // TensorFlow's values as JSON numbers (float32 widened to float64, exactly), flattened.
    fn flat(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(a) => a.iter().for_each(|v| flat(v, out)),
            v => out.push(v.as_f64().unwrap()),
        }
    }
    for (name, value) in values {
        let t = ckpt.read(name).unwrap();
        let got: Vec<f64> = match t.dtype {
            tfckpt::DType::F32 => t.to_f32().unwrap().into_iter().map(f64::from).collect(),
            tfckpt::DType::I64 => t
                .to_vec::<i64>()
                .unwrap()
                .into_iter()
                .map(|x| x as f64)
                .collect(),
            other => panic!("{name}: {other:?}"),
        };
        let mut want = Vec::new();
        flat(value, &mut want);
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(ckpt.verify().unwrap().tensors, 4);
}

/// A variant tensor TensorFlow wrote (`tf/variant/`: a `tf.data` iterator's state, as
/// `tf.train.Checkpoint` saves it; TensorFlow's `RestoreV2` read it): listed as TensorFlow lists
/// it, checked by `verify` element by element, refused by a read that names it, while the
/// variable beside it reads as TensorFlow read it. Then every byte of the data file is changed in
/// turn, and `verify` finds each change, naming the tensor whose bytes they are.
#[test]
fn a_variant_tensor_tensorflow_wrote() {
    let dir = fixture("variant");
    let want = json(&dir.join("expected.json"));
    let variant = want["variant"].as_str().unwrap();
    let prefix = dir.join(want["ckpt"].as_str().unwrap());
    let ckpt = Checkpoint::open(&prefix).unwrap();
    assert_eq!(listing(&ckpt), want["list"]);
    assert_eq!(
        serde_json::json!(ckpt.tensor(variant).unwrap().shape),
        want["restore_v2_shape"]
    );
    let report = ckpt.verify().unwrap();
    assert_eq!(report.tensors, 3);
    let e = ckpt.read(variant).unwrap_err();
    assert!(
        matches!(e.kind(), tfckpt::ErrorKind::Unsupported { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains(variant), "{e}");
    for (name, values) in want["values"].as_object().unwrap() {
        let got = ckpt.read(name).unwrap();
        let want: Vec<f32> = values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.to_f32().unwrap(), want, "{name}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let file = |p: &Path| p.file_name().unwrap().to_owned();
    let (index, data) = (&ckpt.files()[0], &ckpt.files()[1]);
    std::fs::copy(index, tmp.path().join(file(index))).unwrap();
    let bytes = std::fs::read(data).unwrap();
    let copy = tmp.path().join(file(data));
    let mut named = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..bytes.len() {
        let mut changed = bytes.clone();
        changed[i] ^= 0x10;
        std::fs::write(&copy, &changed).unwrap();
        let damaged = Checkpoint::open(tmp.path().join(file(&prefix)))
            .unwrap_or_else(|e| panic!("byte {i}: {e}"));
        let e = match damaged.verify() {
            Ok(_) => panic!("byte {i} of {} changed, and verify passed", bytes.len()),
            Err(e) => e.to_string(),
        };
        let tensor = want["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .find(|t| e.contains(&format!("{t:?}")))
            .unwrap_or_else(|| panic!("byte {i}: no tensor named: {e}"));
        *named.entry(tensor.to_string()).or_default() += 1;
    }
    // Every tensor's bytes were changed and found: the variant's most of them.
    assert_eq!(named.len(), 3, "{named:?}");
    assert!(named[variant] > bytes.len() / 2, "{named:?}");
}

/// A table's metaindex block (TensorFlow writes it empty, `00 00 00 00 01 00 00 00`, and never
/// reads it) damaged in a V2 index and in a V1 file: the checkpoint opens and reads as in
/// TensorFlow, and `verify` reports the block, which it did not read before 2026-12-07 (its
/// "every block" was every block but this one).
#[test]
fn a_damaged_metaindex_block_is_found_by_verify_alone() {
    fn varint(b: &[u8], pos: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[*pos];
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    for (case, prefix, file) in [
        ("h1_basic", "model-0", "model-0.index"),
        ("v1", "model-3", "model-3"),
    ] {
        let open = |dir: &Path| Checkpoint::open(dir.join(prefix)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        common::fixtures::copy_files(&fixture(case), tmp.path());
        let path = tmp.path().join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let footer = bytes.len() - 48;
        let mut pos = footer;
        let offset = varint(&bytes, &mut pos);
        let size = varint(&bytes, &mut pos);
        assert_eq!(size, 8, "{case}");
        // Each of its bytes, and each of its stored checksum's.
        for at in [offset, offset + 4, offset + 8 + 1, offset + 8 + 4] {
            bytes[at as usize] ^= 0x04;
            std::fs::write(&path, &bytes).unwrap();
            bytes[at as usize] ^= 0x04;
            let ckpt = open(tmp.path());
            for t in ckpt.tensors() {
                ckpt.read(&t.name).unwrap();
            }
            let e = ckpt.verify().unwrap_err();
            assert!(
                matches!(e.kind(), tfckpt::ErrorKind::CorruptTable { path: p, offset: o, .. }
                    if *p == path && *o == offset),
                "{case} {at}: {e}"
            );
            assert!(
                e.to_string().contains(&format!(
                    "{}: corrupt table at offset {offset}: the metaindex block (which TensorFlow \
                     writes empty and never reads) is damaged: block checksum mismatch (a block \
                     of 8 bytes): stored 0x",
                    path.display()
                )),
                "{e}"
            );
        }
        std::fs::write(&path, &bytes).unwrap();
        open(tmp.path()).verify().unwrap();
    }
}

#[test]
fn sharded_save_reads_from_several_data_files() {
    let ckpt = open_case(&fixture("sharded"));
    assert!(ckpt.prefix().ends_with("model.ckpt-0"));
    let data_files = std::fs::read_dir(fixture("sharded"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".data-")
        })
        .count();
    assert_eq!(data_files, 3);
    assert_eq!(ckpt.format(), tfckpt::Format::V2);
}

#[test]
fn v1_checkpoint_is_recognised() {
    let ckpt = open_case(&fixture("v1"));
    assert_eq!(ckpt.format(), tfckpt::Format::V1);
    assert!(ckpt.tensors().iter().any(|t| t.is_partitioned()));
}

#[test]
fn state_file_paths_are_relative_and_index_path_works() {
    let case = fixture("h1_basic");
    let state = std::fs::read_to_string(case.join("checkpoint")).unwrap();
    assert!(
        state.contains("model_checkpoint_path: \"model-0\""),
        "{state}"
    );
    let a = Checkpoint::open(&case).unwrap();
    let b = Checkpoint::open(case.join("model-0.index")).unwrap();
    assert_eq!(a.tensors(), b.tensors());
    // A data file names its checkpoint too, any shard of a sharded save (coverage run: untested).
    let c = Checkpoint::open(case.join("model-0.data-00000-of-00001")).unwrap();
    assert_eq!(a.tensors(), c.tensors());
    let sharded = fixture("sharded");
    let whole = Checkpoint::open(sharded.join("model.ckpt-0")).unwrap();
    let by_shard = Checkpoint::open(sharded.join("model.ckpt-0.data-00002-of-00003")).unwrap();
    assert_eq!(whole.tensors(), by_shard.tensors());
    // Not a data file's name: taken as a prefix, which names nothing.
    assert!(Checkpoint::open(sharded.join("model.ckpt-0.data-2-of-3")).is_err());
}

/// A sharded V1 save whose files are symbolic links (a Hugging Face cache snapshot, Bazel
/// runfiles) opens through its glob as the files themselves do: TensorFlow's glob matches
/// links, and the files were missed here (the glob kept only entries that are files themselves).
#[cfg(unix)]
#[test]
fn a_sharded_v1_save_of_symbolic_links_opens_as_its_files() {
    let case = fixture("v1_sharded");
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&case).unwrap() {
        let e = e.unwrap();
        std::os::unix::fs::symlink(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let want = open_case(&case);
    for arg in [
        dir.path().to_path_buf(),
        dir.path().join("model.ckpt-0-?????-of-00002"),
    ] {
        let got = Checkpoint::open(&arg).unwrap_or_else(|e| panic!("{}: {e}", arg.display()));
        assert_eq!(got.tensors(), want.tensors());
        assert_eq!(got.files().len(), 2, "{:?}", got.files());
        got.verify().unwrap();
        for t in want.tensors() {
            assert_eq!(
                got.read(&t.name).unwrap(),
                want.read(&t.name).unwrap(),
                "{}",
                t.name
            );
        }
    }
}

/// Patterns in any path component, as TensorFlow's `GetMatchingPaths` takes them; and a directory
/// whose name has glob characters (`x=[1,2]`, as sweeps name runs) is itself, where TensorFlow
/// finds nothing (its issue 34290): V2 and V1 open there as anywhere else.
#[test]
fn patterns_in_any_component_and_directories_named_with_brackets() {
    use common::fixtures::copy_files;
    let tmp = tempfile::tempdir().unwrap();
    let (v1, v2) = (fixture("v1_sharded"), fixture("h1_basic"));
    let (runs, sweep) = (tmp.path().join("runs[1]"), tmp.path().join("x=[1,2]"));
    for d in [&runs, &sweep] {
        std::fs::create_dir(d).unwrap();
    }
    copy_files(&v1, &runs);
    copy_files(&v2, &sweep);
    let want_v1 = open_case(&v1);
    let same = |arg: PathBuf, want: &Checkpoint| {
        let got = Checkpoint::open(&arg).unwrap_or_else(|e| panic!("{}: {e}", arg.display()));
        assert_eq!(got.tensors(), want.tensors(), "{}", arg.display());
        for t in want.tensors() {
            assert_eq!(got.read(&t.name).unwrap(), want.read(&t.name).unwrap());
        }
        got
    };
    for arg in [
        runs.clone(),
        runs.join("model.ckpt-0-?????-of-00002"),
        // `[[]` is a set of one `[`: a pattern that names `runs[1]`.
        tmp.path().join("r?ns[[]1]/model.ckpt-0-?????-of-00002"),
        tmp.path().join("*/model.ckpt-0-0000[0-9]-of-00002"),
    ] {
        let got = same(arg, &want_v1);
        assert_eq!(got.files().len(), 2, "{:?}", got.files());
        assert!(got.files().iter().all(|f| f.starts_with(&runs)));
    }
    // One shard named as it is under `runs[1]/` is no pattern: it verifies alone, as under
    // `runs1/` (a pattern's match would be missing its other shard).
    let one = Checkpoint::open(runs.join("model.ckpt-0-00000-of-00002")).unwrap();
    assert_eq!(one.files().len(), 1);
    one.verify().unwrap();
    for arg in [sweep.clone(), sweep.join("model-0")] {
        same(arg, &open_case(&v2));
    }
    // A directory pattern that names a V2 checkpoint's prefix: said as for a file pattern.
    let e = Checkpoint::open(tmp.path().join("x=*/model-0"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("this one matches a V2 checkpoint's files") && e.contains("x=[1,2]"),
        "{e}"
    );
    // Nothing matches: not found, naming the pattern.
    let e = Checkpoint::open(tmp.path().join("r*/none-?")).unwrap_err();
    assert!(
        e.is_not_found() && e.to_string().contains("r*/none-?"),
        "{e}"
    );
}

/// A pattern is read as a sharded V1 save; one that matches a V2 checkpoint's files says so and
/// names the prefix to give (it blamed a data file: "not an SSTable").
#[test]
fn a_pattern_matching_a_v2_checkpoint_names_its_prefix() {
    let case = fixture("h1_basic");
    let e = Checkpoint::open(case.join("model-*"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("this one matches a V2 checkpoint's files")
            && e.contains(&format!(
                "give that checkpoint's prefix, {}",
                case.join("model-0").display()
            )),
        "{e}"
    );
}

/// `file:///PATH` is the local path, as TensorFlow's local file system takes it (it was read as
/// a URL of an unknown scheme): a directory, a prefix and a V1 glob.
#[test]
fn file_urls_open_local_checkpoints() {
    for (case, rel) in [
        ("h1_basic", ""),
        ("h1_basic", "model-0"),
        ("v1_sharded", "model.ckpt-0-?????-of-00002"),
    ] {
        let path = fixture(case).join(rel);
        let abs = std::fs::canonicalize(fixture(case)).unwrap().join(rel);
        let url = format!("file://{}", abs.display());
        let got = Checkpoint::open(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(
            got.tensors(),
            Checkpoint::open(&path).unwrap().tensors(),
            "{url}"
        );
        assert!(!got.is_remote());
    }
}
