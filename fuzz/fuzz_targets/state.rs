//! Coverage-guided fuzzing of the `checkpoint` state file and what it leads to: the input is the
//! state file's bytes, written into a folder that holds three checkpoints as TensorFlow wrote them
//! (`model-0`, V2; `model-3`, V1; `model.ckpt-0-0000{0,1}-of-00002`, a sharded V1 save that a
//! pattern names), two subfolders and two symbolic links back to itself. The folder is then
//! opened as a checkpoint: the file is decoded, parsed as protobuf's text format would parse it,
//! the path it names resolved (relative to the folder, or absolute; a pattern globbed), and what
//! it opens listed and verified. Errors are expected; a
//! panic, an abort, a hang or an allocation above libFuzzer's limit is a finding.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

mod scratch;
use tfckpt::Checkpoint;

/// This process's folder: the three checkpoints, and the state file each input replaces.
fn folder() -> &'static Path {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    FOLDER.get_or_init(|| {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tf");
        let dir = scratch::folder("state");
        for (case, files) in [
            (
                "h1_basic",
                &["model-0.index", "model-0.data-00000-of-00001"][..],
            ),
            ("v1", &["model-3"][..]),
            (
                "v1_sharded",
                &["model.ckpt-0-00000-of-00002", "model.ckpt-0-00001-of-00002"][..],
            ),
        ] {
            for f in files {
                std::fs::copy(fixtures.join(case).join(f), dir.join(f)).unwrap();
            }
        }
        // Subfolders (one holding a copy of model-3) and, where links can be made, two links back
        // to the folder: patterns with `*/..` steps or through the links reach the same folder
        // along many paths, which must not multiply the work.
        for sub in ["a", "b"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::copy(fixtures.join("v1/model-3"), dir.join("a/model-3")).unwrap();
        #[cfg(unix)]
        for link in ["l1", "l2"] {
            let _ = std::os::unix::fs::symlink(".", dir.join(link));
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = folder();
    std::fs::write(dir.join("checkpoint"), data).unwrap();
    let Ok(ckpt) = Checkpoint::open(dir) else {
        return;
    };
    let _ = ckpt.tensors().len();
    let _ = ckpt.verify_all();
});
