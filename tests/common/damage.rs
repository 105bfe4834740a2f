//! Seeded randomness for the tests, and random damage of a checkpoint's files (used by the damage
//! tests: `tests/no_panic.rs`, `tests/no_silent_values.rs`, and those of `tests/remote.rs`,
//! `tests/candle.rs`, `tests/cli.rs`, `tests/safetensors.rs` and `src/gpu/tests.rs`, which
//! includes this file alone through `#[path]`, so it uses nothing but `std`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A tiny deterministic generator (xorshift64) for seeded tests.
pub struct Rng(pub u64);

impl Rng {
    /// A generator whose state is `seed` scrambled (splitmix64): seeds that differ only in a few
    /// low bits (a loop counter) then give unrelated sequences. Seeded as `Rng(seed)`, xorshift's
    /// first outputs keep the seed's low bits, so a test choosing a file by `index` and a
    /// configuration by the same counter would always pair them alike.
    pub fn mixed(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next().checked_rem(n).unwrap_or(0)
    }

    /// Uniform index in `0..n` (0 when n is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}

/// One seeded random damage of a file's `bytes`: `(kind, new bytes)`, `None` meaning that the file
/// is to be removed. Kinds: 0, bit flips anywhere; 1, bit flips in the last 256 bytes (footers and
/// indexes); 2, a truncation; 3, up to 64 bytes overwritten; 4, emptied; 5, garbage appended; 6,
/// replaced by garbage; 7 (and 0, 1, 3 of an empty file), removed.
pub fn damage(bytes: &[u8], rng: &mut Rng) -> (usize, Option<Vec<u8>>) {
    let mut bytes = bytes.to_vec();
    let kind = rng.index(8);
    match kind {
        0 | 1 if !bytes.is_empty() => {
            for _ in 0..1 + rng.index(3) {
                let i = if kind == 0 {
                    rng.index(bytes.len())
                } else {
                    bytes.len() - 1 - rng.index(bytes.len().min(256))
                };
                bytes[i] ^= 1 << rng.index(8);
            }
        }
        2 => bytes.truncate(rng.index(bytes.len())),
        3 if !bytes.is_empty() => {
            let start = rng.index(bytes.len());
            let end = (start + 1 + rng.index(64)).min(bytes.len());
            for b in &mut bytes[start..end] {
                *b = rng.next() as u8;
            }
        }
        4 => bytes.clear(),
        5 => bytes.extend((0..1 + rng.index(100)).map(|_| rng.next() as u8)),
        6 => bytes = (0..rng.index(300)).map(|_| rng.next() as u8).collect(),
        _ => return (7, None),
    }
    (kind, Some(bytes))
}

/// A copy of the checkpoint at `ckpt` (a directory, or a prefix in one) in `to`, with one of its
/// files damaged by [`damage`] (any plain file of its directory but TensorFlow's `.meta` graph,
/// which no load reads), chosen and damaged as `seed` says (scrambled: see [`Rng::mixed`]).
/// Returns the copy's checkpoint path and what was done, with the seed, for messages.
pub fn damaged_copy(ckpt: &Path, to: &Path, seed: u64) -> (PathBuf, String) {
    let rng = &mut Rng::mixed(seed);
    let (dir, rel) = if ckpt.is_dir() {
        (ckpt.to_path_buf(), PathBuf::from("."))
    } else {
        let dir = ckpt
            .parent()
            .expect("a prefix in a directory")
            .to_path_buf();
        (dir, PathBuf::from(ckpt.file_name().expect("a prefix")))
    };
    let mut files: Vec<PathBuf> = Vec::new();
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            if !e.file_name().to_string_lossy().ends_with(".meta") {
                files.push(e.file_name().into());
            }
        }
    }
    files.sort();
    let file = &files[rng.index(files.len())];
    let (kind, bytes) = damage(&std::fs::read(dir.join(file)).unwrap(), rng);
    match bytes {
        Some(b) => std::fs::write(to.join(file), b).unwrap(),
        None => std::fs::remove_file(to.join(file)).unwrap(),
    }
    (
        to.join(rel),
        format!("{} damaged (kind {kind}, seed {seed:#x})", file.display()),
    )
}

/// What the damaged loads of a test came to: refused whole, or loaded exactly.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub failed: usize,
    pub exact: usize,
}

impl Outcomes {
    /// Runs one damaged load: `load` says whether it gave exactly the intact values (`Ok(true)`)
    /// or failed whole (`Ok(false)`); a panic, or a broken promise (`Err`), fails the test naming
    /// `context`.
    pub fn run<E: std::fmt::Display>(
        &mut self,
        context: &str,
        load: impl FnOnce() -> Result<bool, E>,
    ) {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)) {
            Err(_) => panic!("panic: {context}"),
            Ok(Err(e)) => panic!("{e}: {context}"),
            Ok(Ok(true)) => self.exact += 1,
            Ok(Ok(false)) => self.failed += 1,
        }
    }
}
