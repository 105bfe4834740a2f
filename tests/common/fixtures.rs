//! Where the TensorFlow fixtures are (`tests/fixtures/tf/`, see `tests/fixtures/README.md`), and
//! the few things every test does with them.

use std::path::{Path, PathBuf};

/// The repository root: `TFCKPT_ROOT` when set (a test binary run away from where it was built, as
/// `scripts/gpu-check.sh` does), else the directory the tests were built from.
pub fn root() -> PathBuf {
    std::env::var_os("TFCKPT_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The fixtures directory, `tests/fixtures/tf`.
pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures/tf")
}

/// One fixture directory: a checkpoint case (`"h1_basic"`, `"dtypes/dtypes"`), or `"init"` and the
/// init cases under it (`"init/x02_index_suffix"`).
pub fn fixture(case: &str) -> PathBuf {
    fixtures().join(case)
}

/// Every checkpoint case, sorted: the directories of `tests/fixtures/tf` with an
/// `expected/ckpt.txt` (which `generate.py` writes, with `expected/list.json`, for every case).
pub fn cases() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("expected/ckpt.txt").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The directories of every checkpoint case, in the order of [`cases`].
pub fn case_dirs() -> Vec<PathBuf> {
    cases().iter().map(|c| fixture(c)).collect()
}

/// The CKPT argument of the checkpoint case in `case_dir` (`expected/ckpt.txt`, trimmed): `.` or a
/// prefix, relative to the case directory.
pub fn ckpt_rel(case_dir: &Path) -> String {
    let path = case_dir.join("expected/ckpt.txt");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The checkpoint path of a checkpoint case: its directory joined with its CKPT argument.
pub fn ckpt_path(case: &str) -> PathBuf {
    let dir = fixture(case);
    dir.join(ckpt_rel(&dir))
}

/// The checkpoint an init case (`tests/fixtures/tf/init/<case>`) loads from: `ckpt.txt`, trimmed,
/// relative to the case directory.
pub fn init_ckpt(case_dir: &Path) -> PathBuf {
    case_dir.join(
        std::fs::read_to_string(case_dir.join("ckpt.txt"))
            .unwrap()
            .trim(),
    )
}

/// Copies the plain files of `from` (not its subdirectories) into `to`, created if missing: a
/// fixture to damage without touching the original.
pub fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Every file under `dir` with its bytes, by path relative to `dir` (`/`-separated).
pub fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The names in folder `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
