//! The resident bytes of a file's mappings in this process: what a load keeps of a checkpoint's
//! shards besides the page cache (`tests/zero_copy.rs`, and the GPU tests of `src/gpu/`).

use std::path::Path;

/// The resident bytes of this process's mappings of `file` (`/proc/self/smaps`: the `Rss` of
/// every mapping whose path is `file`).
pub fn resident_of(file: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = file.to_str().unwrap();
    let mut ours = false;
    let mut kib = 0;
    for line in smaps.lines() {
        // A mapping's first line: its address range, then the path last (after the inode).
        if line
            .split_whitespace()
            .next()
            .is_some_and(|a| a.contains('-'))
        {
            ours = line.ends_with(name);
        }
        if let Some(rss) = line.strip_prefix("Rss:").filter(|_| ours) {
            kib += rss
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap();
        }
    }
    kib << 10
}
