//! Thousands of seeded random damages (bit flips, truncations, garbage, empty or missing files) of the
//! TensorFlow fixtures, each pushed through `Checkpoint::open`, listing, reads of every tensor and of
//! slices, and `verify_all`. Errors are expected; a panic or a hang fails the test. Every bit flipped
//! inside a data shard (which holds nothing but tensor bytes) must be caught by `verify_all`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tfckpt::{Checkpoint, Slice};

mod common;
use common::fixtures::{case_dirs, ckpt_rel, copy_files};
use common::{damage, Rng};

/// Everything a user can do with a checkpoint; returns whether verification found a problem.
fn exercise(path: &Path, rng: &mut Rng) -> Option<bool> {
    let ckpt = Checkpoint::open(path).ok()?;
    for t in ckpt.tensors() {
        let _ = ckpt.read(&t.name);
        if !t.shape.is_empty() && t.shape.iter().all(|&d| d > 0) {
            let ranges: Vec<(u64, u64)> = t
                .shape
                .iter()
                .map(|&d| {
                    let s = rng.next() % d;
                    (s, 1 + rng.next() % (d - s))
                })
                .collect();
            let _ = ckpt.read_slice(&t.name, &Slice::from_ranges(&ranges));
        }
        if t.dtype.size().is_some() {
            if let Ok(n) = ckpt.byte_len(&t.name, None) {
                let mut buf = vec![0u8; n];
                let _ = ckpt.read_into(&t.name, &mut buf);
            }
        }
    }
    let _ = ckpt.tensor("no/such/tensor");
    Some(!ckpt.verify_all().problems.is_empty())
}

#[test]
fn random_damage_never_panics_and_data_flips_are_caught() {
    let cases = case_dirs();
    assert!(cases.len() >= 8);

    // Watchdog: a hang (no progress for a minute) aborts with the iteration that hung.
    let progress = Arc::new(AtomicU64::new(0));
    {
        let progress = progress.clone();
        std::thread::spawn(move || {
            let mut last = u64::MAX;
            loop {
                std::thread::sleep(Duration::from_secs(60));
                let now = progress.load(Ordering::SeqCst);
                if now == last {
                    eprintln!("no progress for 60 s at iteration {now}: hang");
                    std::process::abort();
                }
                last = now;
            }
        });
    }

    let iterations_per_case = 500;
    let mut flips_checked = 0;
    for (ci, case) in cases.iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("case");
        copy_files(case, &dir);
        let target = dir.join(ckpt_rel(case));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && !p.to_string_lossy().ends_with(".meta"))
            .collect();
        files.sort();
        let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        assert_eq!(
            exercise(&target, &mut Rng(1)),
            Some(false),
            "{} must be clean",
            case.display()
        );

        for it in 0..iterations_per_case {
            let seed = (ci as u64) << 32 | it as u64 | 1 << 63;
            let mut rng = Rng::mixed(seed);
            let fi = rng.index(files.len());
            let is_data = files[fi].to_string_lossy().contains(".data-");
            let (kind, damaged) = damage(&originals[fi], &mut rng);
            let flipped_data = is_data && kind <= 1;
            let bytes = damaged.unwrap_or_default();
            if kind == 7 {
                std::fs::remove_file(&files[fi]).unwrap();
            } else {
                std::fs::write(&files[fi], &bytes).unwrap();
            }
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                exercise(&target, &mut rng)
            }));
            let outcome = outcome.unwrap_or_else(|_| {
                panic!(
                    "panic: case {} file {} seed {seed:#x} kind {kind}",
                    case.display(),
                    files[fi].display()
                )
            });
            if flipped_data && bytes != originals[fi] {
                // The index is intact, so the checkpoint opens, and verify must see the damage.
                assert_eq!(
                    outcome,
                    Some(true),
                    "undetected flip: case {} file {} seed {seed:#x}",
                    case.display(),
                    files[fi].display()
                );
                flips_checked += 1;
            }
            std::fs::write(&files[fi], &originals[fi]).unwrap();
            progress.fetch_add(1, Ordering::SeqCst);
        }
    }
    eprintln!("{} damaged checkpoints exercised, {flips_checked} data-shard bit flips all caught by verify", cases.len() * iterations_per_case);
    assert!(
        flips_checked > 200,
        "only {flips_checked} data flips checked"
    );
}
