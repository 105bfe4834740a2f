//! Hostile and careless input, round two (each test names the defect it guards against): files that
//! are not regular files, outputs that must be all or nothing, quadratic inputs, oversized ranks and
//! allocations, and odd command lines. Every CLI run here has a time limit, so a hang fails the test
//! instead of hanging the suite.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::fixtures::{copy_files, fixture};

/// Runs the binary with `args`; fails the test if it runs past `limit` (the process is killed).
fn tfckpt_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tfckpt"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tfckpt {args:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn tfckpt(args: &[&str]) -> Output {
    tfckpt_within(args, Duration::from_secs(60))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 1 and one `error:` line that contains `needle`.
fn assert_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

/// Defect 2: a FIFO as a data shard (`get`, `verify`, `init`) or as the `checkpoint` state file
/// (`list`) blocked forever. Only regular files are opened; anything else is an error naming it.
#[cfg(unix)]
#[test]
fn fifos_are_refused_without_waiting() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    copy_files(&fixture("h1_basic"), &dir);
    let shard = dir.join("model-0.data-00000-of-00001");
    std::fs::remove_file(&shard).unwrap();
    mkfifo(&shard);
    let ckpt = dir.to_str().unwrap();
    let limit = Duration::from_secs(20);
    let shard_name = shard.display().to_string();
    let o = tfckpt_within(&["verify", ckpt], limit);
    assert!(
        stderr(&o).contains(&shard_name) && stderr(&o).contains("FIFO"),
        "{}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(1));
    let out = tmp.path().join("v.npy");
    let o = tfckpt_within(
        &["get", ckpt, "var1", "--out", out.to_str().unwrap()],
        limit,
    );
    assert_error(&o, &shard_name);
    assert!(stderr(&o).contains("FIFO"), "{}", stderr(&o));
    let model = r#"{"variables": [{"name": "v", "shape": [1, 10], "dtype": "float32"}]}"#;
    let out_dir = tmp.path().join("out");
    let o = tfckpt_within(
        &[
            "init",
            ckpt,
            "--model",
            model,
            "--map",
            r#"{"var1": "v"}"#,
            "--out",
            out_dir.to_str().unwrap(),
        ],
        limit,
    );
    assert_error(&o, &shard_name);
    assert!(!out_dir.exists());
    // The library says the same.
    let c = tfckpt::Checkpoint::open(&dir).unwrap();
    let e = c.read("var1").unwrap_err();
    assert!(e.to_string().contains("FIFO"), "{e}");

    // The state file as a FIFO: `list` of the directory.
    let dir2 = tmp.path().join("state");
    copy_files(&fixture("h1_basic"), &dir2);
    std::fs::remove_file(dir2.join("checkpoint")).unwrap();
    mkfifo(&dir2.join("checkpoint"));
    let o = tfckpt_within(&["list", dir2.to_str().unwrap()], limit);
    assert_error(&o, "checkpoint");
    assert!(stderr(&o).contains("FIFO"), "{}", stderr(&o));
}
