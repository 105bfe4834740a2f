//! The scratch folder of one fuzzing process, shared by the targets (`mod scratch;`).

use std::path::{Path, PathBuf};

/// A new folder `tfckpt-fuzz-<target>-<pid>` in the temporary folder, made after removing those
/// of any target whose process has ended, and those of the older form `tfckpt-fuzz-<pid>` (a
/// folder of a live process, this target's or another's, stays).
pub fn folder(target: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("tfckpt-fuzz-")
            .and_then(|rest| rest.rsplit('-').next());
        if let Some(pid) = pid.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("tfckpt-fuzz-{target}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
