//! Coverage-guided fuzzing of everything a damaged checkpoint goes through: the input is one byte
//! choosing a TensorFlow fixture, then the bytes that replace that fixture's index file (V2) or its
//! first file (V1). The fixture's other files (data shards, other V1 shards) stay as TF wrote them.
//! Each input is opened, listed (with a TF2 save's object graph names), every tensor read whole, in
//! a slice and into a buffer, verified, written into a safetensors file
//! (`Checkpoint::write_safetensors`, what `tfckpt convert` does),
//! and loaded by `init_from_checkpoint` into variables declared from the listing (whole, and
//! re-partitioned where a dimension allows), copied and mapped copy-on-write; a load that succeeds
//! must hold what the reader reads for each variable's box, and an export that succeeds must hold
//! what it reads for each tensor, while one that fails must leave nothing behind. Errors are
//! expected; a panic, an abort, a hang, a value other than the reader's or an allocation above
//! libFuzzer's limit is a finding.
//!
//! Built by `cargo fuzz`, which sets `cfg(fuzzing)`: tfckpt then accepts any SSTable block
//! checksum, so that mutations reach the parsers behind it (tensor checksums are still checked).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

mod exported;
mod fixtures;
mod scratch;
use tfckpt::{
    init_from_checkpoint, AssignmentMap, Checkpoint, Device, Init, LoadOptions, Slice, Target,
    VariableStore,
};

/// A fixture copied into this process's scratch folder: the checkpoint path to open and the file
/// the input replaces.
struct Case {
    ckpt: PathBuf,
    file: PathBuf,
}

/// This process's scratch folder: the fixtures' copies, and a folder the exports are written in.
fn scratch() -> &'static Path {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| scratch::folder("checkpoint"))
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let scratch = scratch();
        fixtures::dirs()
            .iter()
            .map(|dir| {
                // The folder the checkpoint's files are in: the case's, or one inside it (a
                // SavedModel's `variables/`).
                let rel = fixtures::ckpt_rel(dir);
                let inside = Path::new(&rel).parent().unwrap_or(Path::new(""));
                let to = scratch.join(dir.file_name().unwrap()).join(inside);
                std::fs::create_dir_all(&to).unwrap();
                let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(inside))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.is_file())
                    .collect();
                files.sort();
                for f in &files {
                    std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
                }
                let ckpt = scratch.join(dir.file_name().unwrap()).join(&rel);
                // The file to replace: the index of a V2 checkpoint, else the first V1 file.
                let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
                let file = files
                    .iter()
                    .find(|p| name(p).ends_with(".index"))
                    .or_else(|| {
                        files.iter().find(|p| {
                            let n = name(p);
                            n != "checkpoint" && !n.ends_with(".meta") && !n.ends_with(".txt")
                        })
                    })
                    .map(|p| to.join(p.file_name().unwrap()))
                    .unwrap();
                Case { ckpt, file }
            })
            .collect()
    })
}

/// Everything a user does with a checkpoint, errors ignored.
fn exercise(path: &Path) {
    let Ok(ckpt) = Checkpoint::open(path) else {
        return;
    };
    // A TF2 save's object graph, whose entry the index describes (any dtype or shape).
    if let Ok(names) = ckpt.object_names() {
        for (name, key) in names.iter() {
            assert_eq!(names.key(name).ok(), Some(key));
            assert!(ckpt.contains(key), "{key}");
        }
        // Attribute paths through whatever graph (cycles included), bounded.
        let paths = names.paths();
        assert!(paths.len() <= 1 << 16);
        assert!(
            paths.iter().all(|(p, _)| p.split('/').count() <= 16),
            "{paths:?}"
        );
    }
    let tensors = ckpt.tensors();
    let mut store = VariableStore::new();
    for t in tensors {
        let _ = ckpt.read(&t.name);
        if !t.shape.is_empty() && t.shape.iter().all(|&d| d > 0) {
            let ranges: Vec<(u64, u64)> = t.shape.iter().map(|&d| (d / 3, d - d / 3)).collect();
            let _ = ckpt.read_slice(&t.name, &Slice::from_ranges(&ranges));
        }
        if let Ok(n) = ckpt.byte_len(&t.name, None) {
            if n <= 1 << 24 {
                let mut buf = vec![0u8; n];
                let _ = ckpt.read_into(&t.name, &mut buf);
            }
        }
        // Declared as the listing says, and split in 2 along the first dimension where it can be.
        if t.shape.first().is_some_and(|&d| d >= 2) {
            let mut parts = vec![1; t.shape.len()];
            parts[0] = 2;
            let _ = store.get_partitioned_variable(&t.name, &t.shape, t.dtype, &parts, Init::Zeros);
        } else {
            let _ = store.get_variable(&t.name, &t.shape, t.dtype, Init::Zeros);
        }
    }
    let _ = ckpt.verify_all();
    export(&ckpt);
    let map = AssignmentMap::from([("/", Target::name("/"))]);
    if init_from_checkpoint(&mut store, path, &map).is_err() {
        return;
    }
    // Copied, then mapped copy-on-write (every value that can be): a load that succeeds holds
    // exactly what the reader reads for each variable's box, which checks every entry it reads.
    for map_values in [false, true] {
        let options = LoadOptions {
            map_values,
            map_min_bytes: Some(1),
            ..Default::default()
        };
        if store.initialize_with(Device::Cpu, &options).is_err() {
            continue;
        }
        for v in store.variables() {
            let (name, slice) = match &v.part {
                Some(p) => (p.full_name.as_str(), p.slice(&v.shape)),
                None => (v.name.as_str(), Slice::full(v.shape.len())),
            };
            let value = store.value(&v.name).expect("loaded, but no value");
            let expected = ckpt.read_slice(name, &slice).unwrap_or_else(|e| {
                panic!("{} loaded (map_values {map_values}), but: {e}", v.name)
            });
            assert!(
                value.data == expected.data,
                "{} (map_values {map_values}): values differ from the reader's",
                v.name
            );
        }
    }
}

/// `ckpt` written into a safetensors file: if that succeeds, the file holds every tensor that
/// safetensors can hold as the reader reads it, and the report lists the others as skipped; if it
/// fails, it leaves nothing in the folder.
fn export(ckpt: &Checkpoint) {
    let (dir, out) = exported::out(scratch());
    let report = match ckpt.write_safetensors(&out) {
        Ok(report) => report,
        Err(e) => return exported::left_nothing(&dir, &e),
    };
    let bytes = std::fs::read(&out).unwrap();
    let file = exported::read_back(&bytes);
    assert_eq!(
        file.len(),
        report.tensors,
        "tensors in the file and the report"
    );
    let mut total = 0;
    for t in ckpt.tensors() {
        let skipped = report.skipped.iter().any(|s| s.name == t.name);
        assert_eq!(
            file.tensor(&t.name).is_err(),
            skipped,
            "{}: skipped, or in the file",
            t.name
        );
        if !skipped {
            let value = ckpt
                .read(&t.name)
                .unwrap_or_else(|e| panic!("{}: exported, but the reader says: {e}", t.name));
            total += exported::holds(&file, &t.name, &value);
        }
    }
    assert_eq!(total, report.bytes, "bytes in the file and the report");
}

fuzz_target!(|data: &[u8]| {
    let cases = cases();
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let case = &cases[pick as usize % cases.len()];
    std::fs::write(&case.file, bytes).unwrap();
    exercise(&case.ckpt);
});
