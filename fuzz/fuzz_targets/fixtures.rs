//! The TensorFlow fixtures the targets run on, shared by them (`mod fixtures;`).
// Each target is its own crate and uses part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tfckpt::{Checkpoint, TensorInfo};

/// The fixture cases (folders of tests/fixtures/tf with an `expected/ckpt.txt`), sorted: the
/// order `seed.py` numbers them in.
pub fn dirs() -> Vec<PathBuf> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tf");
    let mut dirs: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected/ckpt.txt").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// The checkpoint path of case `dir`, relative to it.
pub fn ckpt_rel(dir: &Path) -> String {
    let rel = std::fs::read_to_string(dir.join("expected/ckpt.txt")).unwrap();
    rel.trim().to_string()
}

/// A case read in place: its checkpoint path and listing.
pub struct Case {
    pub path: PathBuf,
    pub tensors: Vec<TensorInfo>,
}

/// Every case, opened once per process.
pub fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        dirs()
            .iter()
            .map(|dir| {
                let path = dir.join(ckpt_rel(dir));
                let tensors = Checkpoint::open(&path).unwrap().tensors().to_vec();
                Case { path, tensors }
            })
            .collect()
    })
}

/// Element `i` of `list`, wrapping; `None` if it is empty.
pub fn pick<T>(list: &[T], i: u8) -> Option<&T> {
    (!list.is_empty()).then(|| &list[i as usize % list.len()])
}
