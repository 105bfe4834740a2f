//! The `tfckpt` binary against its contract (README, Command line): `list --json` equals
//! TensorFlow's listing, `get` writes TensorFlow's values, `verify` passes clean fixtures and names
//! the damage in damaged ones, errors are one `error:` line with exit code 1, usage errors exit 2.

#[allow(dead_code)] // shared with the binary: only part of it is used here
#[path = "../src/bin/tfckpt/npy.rs"]
mod npy;

use std::path::PathBuf;
use std::process::{Command, Output};

mod common;
use common::builder::CkptBuilder;
use common::fixtures::{ckpt_path, copy_files, fixture, init_ckpt, tree};

fn tfckpt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tfckpt"))
        .args(args)
        .output()
        .unwrap()
}

/// `tfckpt init CKPT --model MODEL --map MAP --out OUT`, then `extra`.
fn tfckpt_init(ckpt: &str, model: &str, map: &str, out: &str, extra: &[&str]) -> Output {
    let args = ["init", ckpt, "--model", model, "--map", map, "--out", out];
    tfckpt(&[&args[..], extra].concat())
}

/// `tfckpt get CKPT NAME --out OUT`.
fn tfckpt_get(ckpt: &str, name: &str, out: &str) -> Output {
    tfckpt(&["get", ckpt, name, "--out", out])
}

fn ckpt_arg(case: &str) -> String {
    ckpt_path(case).to_string_lossy().into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_one_error_line(o: &Output, code: i32, needle: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", stderr(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{err} should mention {needle}");
}

/// Every fixture case.
fn cases() -> Vec<String> {
    let v = common::fixtures::cases();
    assert!(v.len() >= 10, "{v:?}");
    v
}

#[test]
fn list_json_equals_tensorflow() {
    for case in &cases() {
        let o = tfckpt(&["list", &ckpt_arg(case), "--json"]);
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let want: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixture(case).join("expected/list.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(got, want, "{case}");
    }
    // cli.md's form to the byte (keys in its order, its spacing), and a scalar's `[]`.
    let o = tfckpt(&["list", &ckpt_arg("h1_basic"), "--json"]);
    assert!(String::from_utf8(o.stdout).unwrap().starts_with(
        r#"[{"name": "useful_scope/var4", "dtype": "float32", "shape": [9, 9]}, {"name": "var1", "#
    ));
    let tmp = tempfile::tempdir().unwrap();
    let mut b = CkptBuilder::new(tmp.path().join("m"));
    b.f32("a \"q\"", &[], &[1.0]);
    let o = tfckpt(&["list", b.finish().to_str().unwrap(), "--json"]);
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "[{\"name\": \"a \\\"q\\\"\", \"dtype\": \"float32\", \"shape\": []}]\n"
    );
    let o = tfckpt(&["list", &ckpt_arg("h1_basic")]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        text.lines().next(),
        Some("useful_scope/var4\tfloat32\t[9, 9]")
    );
}

/// A bare prefix (no folder) whose index is missing beside its data file: the index is named
/// as missing, the data file found in the current folder.
#[test]
fn a_bare_prefix_without_its_index_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    copy_files(&fixture("h1_basic"), tmp.path());
    std::fs::remove_file(tmp.path().join("model-0.index")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_tfckpt"))
        .args(["list", "model-0"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_one_error_line(
        &o,
        1,
        "model-0.index: missing, while the checkpoint's data file ./model-0.data-00000-of-00001 is there",
    );
}

/// The summary lines count one of a thing in the singular.
#[test]
fn summary_lines_say_one_in_the_singular() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = CkptBuilder::new(tmp.path().join("m"));
    b.f32("a", &[], &[1.0]);
    let ckpt = b.finish();
    let ckpt = ckpt.to_str().unwrap();
    let lines = |o: Output| {
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let text = lines(tfckpt(&["verify", ckpt]));
    assert!(
        text.starts_with("ok: 1 stored tensor or slice, 4 bytes, 3 table blocks verified in "),
        "{text}"
    );
    let out = tmp.path().join("a.safetensors");
    let text = lines(tfckpt(&["convert", ckpt, out.to_str().unwrap()]));
    assert!(
        text.starts_with("tfckpt convert: 1 tensor, 4 bytes written to "),
        "{text}"
    );
    let model = r#"{"variables": [{"name": "x", "shape": [], "dtype": "float32"}]}"#;
    let out = tmp.path().join("out");
    let o = tfckpt_init(
        ckpt,
        model,
        r#"{"a": "x"}"#,
        out.to_str().unwrap(),
        &["--threads", "1"],
    );
    let text = lines(o);
    assert!(
        text.starts_with(
            "tfckpt init: 1 variable (1 from checkpoint, 0 from initializers), 1 tensor, 4 bytes ("
        ) && text.contains("; 1 thread); 4 checkpoint bytes read"),
        "{text}"
    );
}

#[test]
fn get_writes_tensorflow_values() {
    let out = tempfile::tempdir().unwrap();
    let mut n = 0;
    for case in &cases() {
        let list: Vec<serde_json::Value> = serde_json::from_slice(
            &std::fs::read(fixture(case).join("expected/list.json")).unwrap(),
        )
        .unwrap();
        for t in list {
            let name = t["name"].as_str().unwrap();
            let want = fixture(case)
                .join("expected/values")
                .join(format!("{name}.npy"));
            if !want.is_file() {
                continue; // strings: compared in tf_fixtures
            }
            let file = out.path().join(format!("{n}.npy"));
            let o = tfckpt_get(&ckpt_arg(case), name, file.to_str().unwrap());
            assert!(o.status.success(), "{case} {name}: {}", stderr(&o));
            let got = npy::read(std::fs::File::open(&file).unwrap()).unwrap();
            let want = npy::read(std::fs::File::open(&want).unwrap()).unwrap();
            assert_eq!(got, want, "{case} {name}");
            n += 1;
        }
    }
    assert!(n > 60);
}

/// Sub-byte integers are stored one per byte in the low bits; TensorFlow (ml_dtypes) ignores the
/// upper bits. A stored byte with them set still gives the value of its low bits: 0x7f is the
/// int4 -1 and the uint4 15, never 127.
#[test]
fn get_reads_sub_byte_integers_from_their_low_bits_only() {
    let tmp = tempfile::tempdir().unwrap();
    let stored = [0x07u8, 0x0f, 0x7f, 0xf8, 0x03, 0xff];
    let mut b = CkptBuilder::new(tmp.path().join("m"));
    for dtype in [
        tfckpt::DType::I4,
        tfckpt::DType::U4,
        tfckpt::DType::I2,
        tfckpt::DType::U2,
    ] {
        b.bytes(dtype.name(), dtype, &[6], &stored);
    }
    let prefix = b.finish();
    let want: [(&str, [i16; 6]); 4] = [
        ("int4", [7, -1, -1, -8, 3, -1]),
        ("uint4", [7, 15, 15, 8, 3, 15]),
        ("int2", [-1, -1, -1, 0, -1, -1]),
        ("uint2", [3, 3, 3, 0, 3, 3]),
    ];
    for (name, values) in want {
        let out = tmp.path().join(format!("{name}.npy"));
        let o = tfckpt_get(prefix.to_str().unwrap(), name, out.to_str().unwrap());
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let got = npy::read(std::fs::File::open(&out).unwrap()).unwrap();
        let want: Vec<u8> = values.iter().map(|&v| v as u8).collect();
        assert_eq!(got.data, want, "{name}");
    }
}

#[test]
fn get_strips_colon_zero_and_reads_slices() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("v.npy");
    let o = tfckpt(&[
        "get",
        &ckpt_arg("h1_partitioned"),
        "scope/var1:0",
        "--out",
        file.to_str().unwrap(),
        "--slice",
        "15,10:-",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = npy::read(std::fs::File::open(&file).unwrap()).unwrap();
    let full = npy::read(
        std::fs::File::open(fixture("h1_partitioned/expected/values/scope/var1.npy")).unwrap(),
    )
    .unwrap();
    assert_eq!(got.shape, vec![10, 100]);
    assert_eq!(got.data, full.data[15 * 400..25 * 400]);
}

#[test]
fn verify_clean_and_damaged() {
    for case in &cases() {
        let o = tfckpt(&["verify", &ckpt_arg(case)]);
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok: "));
    }
    let tmp = tempfile::tempdir().unwrap();
    copy_files(&fixture("h1_basic"), tmp.path());
    let data = tmp.path().join("model-0.data-00000-of-00001");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[100] ^= 4;
    std::fs::write(&data, bytes).unwrap();
    let o = tfckpt(&["verify", tmp.path().to_str().unwrap()]);
    assert_one_error_line(&o, 1, "model-0.data-00000-of-00001");
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("more problem"), "{}", stderr(&o));
    // Two damaged tensors: the first named, the other counted.
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 4;
    std::fs::write(&data, bytes).unwrap();
    let o = tfckpt(&["verify", tmp.path().to_str().unwrap()]);
    assert_one_error_line(&o, 1, "model-0.data-00000-of-00001");
    assert!(
        stderr(&o).ends_with(" (and 1 more problem)\n"),
        "{}",
        stderr(&o)
    );
}

/// A sharded V1 save (files `NAME-i-of-N`, opened through the glob its state file stores) with a
/// file missing: `verify` names that file. TensorFlow's glob reads the other file without a word,
/// and so do `list` and the reads (a tensor held only there is not found); opening the remaining
/// file by its own name is a checkpoint of its own, with nothing missing.
#[test]
fn verify_names_a_missing_file_of_a_sharded_v1_save() {
    let tmp = tempfile::tempdir().unwrap();
    copy_files(&fixture("v1_sharded"), tmp.path());
    let gone = tmp.path().join("model.ckpt-0-00001-of-00002");
    std::fs::remove_file(&gone).unwrap();
    let o = tfckpt(&["verify", tmp.path().to_str().unwrap()]);
    assert_one_error_line(
        &o,
        1,
        &format!("{}: missing: file 1 of the 2", gone.display()),
    );
    // `list` lists what the other file holds, as TensorFlow does, and warns of the missing one.
    for json in [&[][..], &["--json"]] {
        let o = tfckpt(&[&["list", tmp.path().to_str().unwrap()][..], json].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            stderr(&o),
            format!(
                "warning: {}: missing: file 1 of the 2 files of this sharded V1 checkpoint (1 \
                 found); the tensors it holds cannot be read\n",
                gone.display()
            )
        );
    }
    // Reads still fail as in TensorFlow (a tensor of that file is not found, a partitioned one
    // lacks slices), and the error names the missing file.
    let out = tmp.path().join("o.npy");
    let missing = format!(
        "file {} of this sharded V1 save is missing, and may hold it",
        gone.display()
    );
    for tensor in ["s", "p"] {
        let o = tfckpt_get(tmp.path().to_str().unwrap(), tensor, out.to_str().unwrap());
        assert_one_error_line(&o, 1, &missing);
    }
    let o = tfckpt_init(
        tmp.path().to_str().unwrap(),
        r#"{"variables": [{"name": "x", "shape": [3], "dtype": "int64"}]}"#,
        r#"{"scope/i64": "x"}"#,
        tmp.path().join("init").to_str().unwrap(),
        &[],
    );
    assert_one_error_line(&o, 1, &missing);
    let kept = tmp.path().join("model.ckpt-0-00000-of-00002");
    let o = tfckpt(&["verify", kept.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A stray file the glob matches, numbered past the count: named too.
    std::fs::copy(
        fixture("v1_sharded").join("model.ckpt-0-00001-of-00002"),
        &gone,
    )
    .unwrap();
    let stray = tmp.path().join("model.ckpt-0-00003-of-00002");
    std::fs::copy(&kept, &stray).unwrap();
    let o = tfckpt(&["verify", tmp.path().to_str().unwrap()]);
    assert_one_error_line(
        &o,
        1,
        &format!(
            "{}: a stray file: its name makes it file 3 of a sharded V1 save of 2 files",
            stray.display()
        ),
    );
    let o = tfckpt(&["list", tmp.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!("warning: {}: a stray file: ", stray.display())),
        "{}",
        stderr(&o)
    );
    // Read with the others (TensorFlow's glob takes it too), its copies of the slices overlap
    // theirs: the error names the file of each.
    let o = tfckpt_get(tmp.path().to_str().unwrap(), "p", out.to_str().unwrap());
    assert_one_error_line(
        &o,
        1,
        &format!(
            "tensor \"p\": overlapping stored slices 0,3:0,3 (in {}) and 0,3:0,3 (in {})",
            kept.display(),
            stray.display()
        ),
    );
}

/// An `--out` file is written under a temporary name and renamed into place: refused before any
/// work when that rename would replace a FIFO, a symbolic link, a directory, or a file of the
/// checkpoint being read (also through a hard link), which is left as it was, and when its name
/// ends in '/' (a folder's).
#[cfg(unix)]
#[test]
fn an_out_file_that_is_not_a_regular_new_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    copy_files(&fixture("h1_basic"), tmp.path());
    let ckpt = tmp.path().to_str().unwrap();
    let data = tmp.path().join("model-0.data-00000-of-00001");
    let index = tmp.path().join("model-0.index");
    let fifo = tmp.path().join("fifo.npy");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let link = tmp.path().join("link.npy");
    std::os::unix::fs::symlink(tmp.path().join("elsewhere.npy"), &link).unwrap();
    let hard = tmp.path().join("hard.safetensors");
    std::fs::hard_link(&data, &hard).unwrap();
    let model = r#"{"variables": [{"name": "v", "shape": [1, 10], "dtype": "float32"}]}"#;
    let before = std::fs::read(&data).unwrap();
    let state = tmp.path().join("checkpoint");
    // A name ending in '/' is a folder's: the file would be opened "Not a directory".
    let slash = format!("{}/", tmp.path().join("new.safetensors").display());
    let slash_npy = format!("{}/", tmp.path().join("new.npy").display());
    // The same directory as a `file://` URL (read as the local path) reads the same state file.
    let (url, url_host) = (format!("file://{ckpt}"), format!("file://localhost{ckpt}"));
    let cases: [(Vec<&str>, &str); 11] = [
        (
            vec!["convert", &url, state.to_str().unwrap()],
            "a file of the checkpoint",
        ),
        (
            vec![
                "get",
                &url_host,
                "useful_scope/var4",
                "--out",
                state.to_str().unwrap(),
            ],
            "a file of the checkpoint",
        ),
        (
            vec![
                "get",
                ckpt,
                "useful_scope/var4",
                "--out",
                fifo.to_str().unwrap(),
            ],
            "not a regular file",
        ),
        (
            vec![
                "get",
                ckpt,
                "useful_scope/var4",
                "--out",
                link.to_str().unwrap(),
            ],
            "a symbolic link",
        ),
        (
            vec![
                "get",
                ckpt,
                "useful_scope/var4",
                "--out",
                data.to_str().unwrap(),
            ],
            "a file of the checkpoint",
        ),
        (
            vec!["convert", ckpt, index.to_str().unwrap()],
            "a file of the checkpoint",
        ),
        (
            vec!["convert", ckpt, state.to_str().unwrap()],
            "a file of the checkpoint",
        ),
        (
            vec!["convert", ckpt, tmp.path().to_str().unwrap()],
            "a directory",
        ),
        (
            vec![
                "init",
                ckpt,
                "--model",
                model,
                "--map",
                "{}",
                "--out",
                hard.to_str().unwrap(),
            ],
            "a file of the checkpoint",
        ),
        (
            vec!["convert", ckpt, &slash],
            "ends in a path separator, as a folder does, but names one file",
        ),
        (
            vec!["get", ckpt, "useful_scope/var4", "--out", &slash_npy],
            "ends in a path separator",
        ),
    ];
    for (args, why) in cases {
        let o = tfckpt(&args);
        assert_one_error_line(&o, 1, why);
    }
    let t = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&t));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&data).unwrap(), before);
    assert!(tfckpt(&["verify", ckpt]).status.success());
    // `init --out` with a trailing separator names a directory (`--out out/`), whatever its name
    // ends in; a name ending in `.safetensors` names one file, `out/.safetensors` too.
    let init_to = |out: &str| {
        let o = tfckpt(&["init", ckpt, "--model", model, "--map", "{}", "--out", out]);
        assert!(
            o.status.success(),
            "{out}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    init_to(&slash);
    assert!(tmp.path().join("new.safetensors").join("v.npy").is_file());
    let dot = tmp.path().join("dot").join(".safetensors");
    init_to(dot.to_str().unwrap());
    let bytes = std::fs::read(&dot).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.names(), ["v"]);
}

/// stdout that cannot be written (here a full device): an `error:` line and exit code 1, never
/// Rust's panic on a failed `println!`.
#[cfg(target_os = "linux")]
#[test]
fn a_full_stdout_is_an_error_not_a_panic() {
    let ckpt = ckpt_arg("h1_basic");
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("all.safetensors");
    let model = r#"{"variables": [{"name": "v", "shape": [2], "dtype": "float32"}]}"#;
    let runs: [&[&str]; 5] = [
        &["list", &ckpt],
        &["list", "--json", &ckpt],
        &["verify", &ckpt],
        &["convert", &ckpt, st.to_str().unwrap()],
        &["init", &ckpt, "--model", model, "--map", "{}", "--no-out"],
    ];
    for args in runs {
        // Opened, never created: a machine without the device skips nothing silently.
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
        let o = Command::new(env!("CARGO_BIN_EXE_tfckpt"))
            .args(args)
            .stdout(full.expect("/dev/full"))
            .output()
            .unwrap();
        assert_one_error_line(&o, 1, "writing to stdout: ");
    }
}

/// stdout whose reader has gone (`tfckpt list CKPT | head -1`): no error line, and the end GNU
/// tools have there, by SIGPIPE (it was `error: writing to stdout: Broken pipe`, exit code 1).
#[cfg(unix)]
#[test]
fn a_closed_stdout_pipe_ends_by_sigpipe_without_an_error_line() {
    use std::os::unix::process::ExitStatusExt;
    let ckpt = ckpt_arg("h1_basic");
    for args in [
        &["list", &ckpt][..],
        &["list", "--json", &ckpt],
        &["verify", &ckpt],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_tfckpt"))
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "{args:?}: {o:?}");
        assert_eq!(stderr(&o), "", "{args:?}");
    }
}

#[test]
fn errors_exit_1_with_one_line_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.npy");
    let o = tfckpt_get(&ckpt_arg("h1_basic"), "var5", out.to_str().unwrap());
    assert_one_error_line(&o, 1, "\"var5\"");
    assert!(stderr(&o).contains("did you mean"));
    assert!(!out.exists());
    let missing = tmp.path().join("no_dir");
    let o = tfckpt(&["list", missing.to_str().unwrap()]);
    assert_one_error_line(&o, 1, "no_dir");
    // An empty CKPT is a checkpoint not found (TensorFlow raises NotFound), not a usage error.
    for cmd in ["list", "verify"] {
        let o = tfckpt(&[cmd, ""]);
        assert_one_error_line(
            &o,
            1,
            "error: checkpoint not found: no directory, V2 index (.index) or V1 file matches \"\"",
        );
    }
    let o = tfckpt(&["list", tmp.path().to_str().unwrap()]);
    assert_one_error_line(
        &o,
        1,
        &format!(
            "couldn't find a checkpoint in directory {}: it has no 'checkpoint' state file",
            tmp.path().display()
        ),
    );
    let o = tfckpt(&[
        "get",
        &ckpt_arg("h1_basic"),
        "var1",
        "--out",
        out.to_str().unwrap(),
        "--slice",
        "0,5",
    ]);
    assert_one_error_line(&o, 1, "rank");
    // A dtype mismatch names both dtypes, without the library's hint (the command line has no
    // cast: MODEL.json's dtype is the variable's).
    let o = tfckpt_init(
        &ckpt_arg("dtypes"),
        r#"{"variables": [{"name": "h", "shape": [2, 5], "dtype": "float32"}]}"#,
        r#"{"dt/float16": "h"}"#,
        tmp.path().join("o").to_str().unwrap(),
        &[],
    );
    assert_one_error_line(
        &o,
        1,
        "(float32) does not match dtype of tensor \"dt/float16\" (float16)",
    );
    assert!(!stderr(&o).contains("LoadOptions"), "{}", stderr(&o));
    assert!(!tmp.path().join("o").exists());
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(tfckpt(&["list"]).status.code(), Some(2));
    assert_eq!(tfckpt(&["list", "x", "--bogus"]).status.code(), Some(2));
    assert_eq!(tfckpt(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(tfckpt(&["get", "x", "y"]).status.code(), Some(2));
    // `init` without --model or --map; a flag given twice.
    let ckpt = ckpt_arg("h1_basic");
    let model = r#"{"variables": [{"name": "v", "shape": [2], "dtype": "float32"}]}"#;
    for args in [
        vec!["init", &ckpt, "--map", "{}", "--no-out"],
        vec!["init", &ckpt, "--model", model, "--no-out"],
        vec!["list", &ckpt, "--json", "--json"],
        vec![
            "init", &ckpt, "--model", model, "--map", "{}", "--no-out", "--device", "cpu",
            "--device", "cpu",
        ],
    ] {
        let o = tfckpt(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

/// `--flag=value` is the same as `--flag value`.
#[test]
fn flags_take_their_value_after_an_equals_sign_too() {
    let ckpt = ckpt_arg("h1_basic");
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.npy"), tmp.path().join("b.npy"));
    let spaced = tfckpt_get(&ckpt, "useful_scope/var4", a.to_str().unwrap());
    assert!(spaced.status.success(), "{}", stderr(&spaced));
    let out = format!("--out={}", b.display());
    let joined = tfckpt(&["get", &ckpt, "useful_scope/var4", &out]);
    assert!(joined.status.success(), "{}", stderr(&joined));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let model = r#"{"variables": [{"name": "v", "shape": [1, 10], "dtype": "float32"}]}"#;
    let (m, p) = (format!("--model={model}"), r#"--map={"var1": "v"}"#);
    let o = tfckpt(&["init", &ckpt, &m, p, "--device=cpu", "--no-out"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The built-in demo (the README's first command) at its smallest size, and at one where the
/// embedding's 9,216 rows leave 1 over 5 parts (only part 0 takes a row more, which the demo's
/// own check of part 1 must get right); the listing, the verify, both checks and the load ran
/// and count the same bytes, and the checkpoint kept with `--keep` is the one described, in two
/// shards.
#[test]
fn demo_runs_on_a_small_size() {
    let o = tfckpt(&["demo", "--mib", "24"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let tmp = tempfile::tempdir().unwrap();
    let keep = tmp.path().join("kept");
    let o = tfckpt(&["demo", "--mib", "27", "--keep", keep.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for line in [
        "  wrote 28.3 MB in ",
        "  embedding/table                      float32   [9216, 256]  (8 slices)",
        "  encoder/layer_0/dense/bias           float32   [4096]",
        "  vocab                                string    [1000]",
        &format!("verifying {} (as `tfckpt verify` does)", keep.display()),
        "  ok: 15 stored tensors and slices, 3 table blocks, 28.3 MB checked in ",
        "read every tensor (the embedding assembled from its 8 slices): 28.3 MB in ",
        "spot check (a kernel, and a 4x3 block of the embedding across a slice boundary): values match",
        "  initialize on cpu: 8 variables and 5 parts (12 from checkpoint, 1 from its initializer), 8 tensors, ",
        "  spot check (embedding part 1 of 5 assembled across stored slices, unmapped bias = 0.1, global_step = 1000): values match",
        &format!("(the checkpoint is kept in {})", keep.display()),
    ] {
        assert!(text.lines().any(|l| l.starts_with(line)), "{line}\n{text}");
    }
    assert_eq!(
        tree(&keep).into_keys().collect::<Vec<_>>(),
        [
            "checkpoint",
            "model.ckpt-1000.data-00000-of-00002",
            "model.ckpt-1000.data-00001-of-00002",
            "model.ckpt-1000.index"
        ]
    );
    let o = tfckpt(&["list", keep.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shapes: Vec<(String, String, Vec<u64>)> =
        serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout)
            .unwrap()
            .iter()
            .map(|t| {
                let shape = t["shape"].as_array().unwrap().iter();
                let shape = shape.map(|d| d.as_u64().unwrap()).collect();
                (t["name"].to_string(), t["dtype"].to_string(), shape)
            })
            .collect();
    let want = [
        ("embedding/table", "float32", &[9216, 256][..]),
        ("encoder/layer_0/dense/bias", "float32", &[4096]),
        ("encoder/layer_0/dense/kernel", "float32", &[1024, 4096]),
        ("encoder/layer_0/layer_norm/gamma", "float16", &[1024]),
        ("global_step", "int64", &[]),
        ("head/kernel", "bfloat16", &[1024, 1000]),
        ("head/mask", "bool", &[4096]),
        ("vocab", "string", &[1000]),
    ];
    let want: Vec<(String, String, Vec<u64>)> = want
        .iter()
        .map(|(n, d, s)| (format!("{n:?}"), format!("{d:?}"), s.to_vec()))
        .collect();
    assert_eq!(shapes, want);
    assert!(tfckpt(&["verify", keep.to_str().unwrap()]).status.success());
    // The float16 gamma: 1 + i/1024, exact in float16 (0x3c00 + i).
    let gamma = tmp.path().join("gamma.npy");
    let o = tfckpt_get(
        keep.to_str().unwrap(),
        "encoder/layer_0/layer_norm/gamma",
        gamma.to_str().unwrap(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got = npy::read(std::fs::File::open(&gamma).unwrap()).unwrap();
    let want: Vec<u8> = (0..1024u16)
        .flat_map(|i| (0x3c00 + i).to_le_bytes())
        .collect();
    assert_eq!((got.descr.as_str(), &got.shape[..]), ("<f2", &[1024][..]));
    assert_eq!(got.data, want);
}

/// `tfckpt init` on every single-call TensorFlow init case: the .npy files equal TF's values, and
/// error cases exit 1 with one `error:` line and write nothing.
#[test]
fn init_matches_tensorflow_end_to_end() {
    let init = fixture("init");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&init)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    let (mut ok, mut failed) = (0, 0);
    for case in cases {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(case.join("case.json")).unwrap()).unwrap();
        if meta["calls"] != 1
            || meta["cli_representable"] != true
            || meta.get("cli_md_differs").is_some()
            || case.ends_with("x02_index_suffix")
        {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let ckpt = init_ckpt(&case);
        let o = tfckpt_init(
            ckpt.to_str().unwrap(),
            case.join("model.json").to_str().unwrap(),
            case.join("map.json").to_str().unwrap(),
            out.to_str().unwrap(),
            &[],
        );
        if case.join("expected/error.json").is_file() {
            assert_one_error_line(&o, 1, "");
            assert!(
                !out.exists(),
                "{}: wrote output despite the error",
                case.display()
            );
            failed += 1;
            continue;
        }
        assert!(o.status.success(), "{}: {}", case.display(), stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).starts_with("tfckpt init: "));
        let expected = case.join("expected");
        let mut stack = vec![expected.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(&expected).unwrap();
                if let Some(stem) = rel.to_str().unwrap().strip_suffix(".strings.json") {
                    // `|S<n>` arrays pad with NULs: compare with trailing NULs removed.
                    let got =
                        npy::read(std::fs::File::open(out.join(format!("{stem}.npy"))).unwrap())
                            .unwrap();
                    let want: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                    let width: usize = got.descr.strip_prefix("|S").unwrap().parse().unwrap();
                    let got: Vec<String> = got
                        .data
                        .chunks(width)
                        .map(|c| {
                            c.iter()
                                .rev()
                                .skip_while(|&&b| b == 0)
                                .collect::<Vec<_>>()
                                .into_iter()
                                .rev()
                                .map(|b| format!("{b:02x}"))
                                .collect()
                        })
                        .collect();
                    let want: Vec<String> = want["hex"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|h| h.as_str().unwrap().trim_end_matches("00").to_string())
                        .collect();
                    assert_eq!(got, want, "{} {stem}", case.display());
                    continue;
                }
                let got = npy::read(
                    std::fs::File::open(out.join(rel))
                        .unwrap_or_else(|e| panic!("{}: {}: {e}", case.display(), rel.display())),
                )
                .unwrap();
                let want = npy::read(std::fs::File::open(&p).unwrap()).unwrap();
                assert_eq!(got, want, "{} {}", case.display(), rel.display());
            }
        }
        ok += 1;
    }
    assert!(ok >= 25 && failed >= 10, "{ok} {failed}");
}

#[test]
fn init_model_json_device_placement() {
    let ckpt = ckpt_arg("h1_basic");
    let model = |device: &str| {
        format!(
            r#"{{"variables": [{{"name": "p", "shape": [1, 10], "dtype": "float32", "partitions": [1, 2], "device": {device}}},
                {{"name": "b", "shape": [2], "dtype": "float32", "device": "cpu"}}]}}"#
        )
    };
    let map = r#"{"var1": "p"}"#;
    let tmp = tempfile::tempdir().unwrap();
    let run = |device: &str, default: &str, out: &str| {
        let out = tmp.path().join(out);
        let model = model(device);
        let o = tfckpt_init(
            &ckpt,
            &model,
            map,
            out.to_str().unwrap(),
            &["--device", default],
        );
        (o, out)
    };
    // One device per part gives what one device for the variable gives. (`--device cuda` is
    // the default for variables placed nowhere, and it needs a GPU even when MODEL.json places
    // every variable on the cpu: init_inline_json_and_device_errors.)
    let (o, out) = run(r#"["cpu", "cpu"]"#, "cpu", "a");
    assert!(o.status.success(), "{}", stderr(&o));
    let (o, plain) = run(r#""cpu""#, "cpu", "b");
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["p/part_0.npy", "p/part_1.npy", "b.npy"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(plain.join(f)).unwrap(),
            "{f}"
        );
    }
    // A part placed on a GPU this build (or machine) does not have: exit 1, naming the device and
    // the part; nothing written.
    let (o, out) = run(r#"["cpu", "cuda:1"]"#, "cpu", "c");
    assert_one_error_line(&o, 1, "cuda:1");
    assert!(stderr(&o).contains("p/part_1"), "{}", stderr(&o));
    assert!(!out.exists());
    // One device per part, and only known devices.
    let (o, _) = run(r#"["cpu"]"#, "cpu", "d");
    assert_one_error_line(&o, 1, "it has 2 parts, so it takes 2 devices");
    let (o, _) = run(r#""tpu:0""#, "cpu", "e");
    assert_one_error_line(&o, 1, r#"expected "cpu" or "cuda:N""#);
}

#[test]
fn init_inline_json_and_device_errors() {
    let ckpt = ckpt_arg("h1_basic");
    let model = r#"{"variables": [{"name": "new_scope_1/var1", "shape": [1, 10], "dtype": "float32"}, {"name": "head/b", "shape": [2], "dtype": "float32", "initializer": {"constant": 0.5}}]}"#;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let init_to = |map: &str, out: &std::path::Path| {
        tfckpt_init(&ckpt, model, map, out.to_str().unwrap(), &[])
    };
    let o = init_to(r#"{"/": "new_scope_1"}"#, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    let b = npy::read(std::fs::File::open(out.join("head/b.npy")).unwrap()).unwrap();
    assert_eq!(
        b.data,
        [0.5f32, 0.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>()
    );
    // `get`'s habit, --out FILE.npy: a folder of that name, with a warning saying so (none
    // once it is there, and none on a failure: its one error line only).
    let npy_out = tmp.path().join("v.npy");
    let o = init_to(r#"{"no_such_tensor": "head/b"}"#, &npy_out);
    assert_one_error_line(&o, 1, "no_such_tensor");
    assert!(!npy_out.exists());
    for warned in [true, false] {
        let o = init_to(r#"{"/": "new_scope_1"}"#, &npy_out);
        assert!(o.status.success(), "{}", stderr(&o));
        let warning = format!(
            "warning: --out {}: made as a folder, holding one .npy file per variable (init writes \
             a folder, or one .safetensors file)\n",
            npy_out.display()
        );
        assert_eq!(stderr(&o), if warned { warning } else { String::new() });
        assert!(npy_out.join("head/b.npy").is_file());
    }
    // --device cuda without a GPU this build can use: a clear error, exit 1, nothing written;
    // also when no variable would land on it (an empty model, or every variable placed on the
    // cpu by MODEL.json).
    let gpus = tfckpt::Device::gpu_count();
    let cpu_model =
        r#"{"variables": [{"name": "b", "shape": [2], "dtype": "float32", "device": "cpu"}]}"#;
    for (model, device) in [
        (model, "cuda"),
        (r#"{"variables": []}"#, "cuda"),
        (cpu_model, "cuda"),
        (cpu_model, "cuda:7"),
    ] {
        let out2 = tmp.path().join("o2");
        let o = tfckpt_init(
            &ckpt,
            model,
            "{}",
            out2.to_str().unwrap(),
            &["--device", device],
        );
        let ordinal: usize = device
            .strip_prefix("cuda:")
            .map_or(0, |n| n.parse().unwrap());
        if ordinal >= gpus {
            // Why, in this build on this machine.
            let why = if !cfg!(feature = "cuda") {
                "this build of tfckpt has no GPU support (build with the `cuda` feature)".into()
            } else if gpus == 0 {
                "no GPU can be used here (no NVIDIA driver, or no GPU)".into()
            } else {
                format!("there is no GPU {ordinal}; this machine has {gpus}")
            };
            assert_one_error_line(&o, 1, &format!("--device cuda:{ordinal}: {why}"));
            assert!(!out2.exists(), "{model} {device}");
        } else {
            assert!(o.status.success(), "{model} {device}: {}", stderr(&o));
            std::fs::remove_dir_all(&out2).unwrap();
        }
    }
    for device in ["tpu", "cuda:+1", "cuda:", "cuda:-1"] {
        let o = tfckpt(&[
            "init", &ckpt, "--model", model, "--map", "{}", "--device", device,
        ]);
        assert_eq!(o.status.code(), Some(2), "{device}");
        let want = format!("expected cpu, cuda or cuda:N, found {device:?}");
        assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    }
    // A scope that matches nothing: success with a warning on stderr.
    let o = tfckpt(&[
        "init",
        &ckpt,
        "--model",
        model,
        "--map",
        r#"{"useful_scope/": "nothing/"}"#,
        "--no-out",
    ]);
    assert!(o.status.success());
    assert!(stderr(&o).starts_with("warning: "), "{}", stderr(&o));
    // The same warning, then a failure: only the one error line (cli.md).
    let damaged = tempfile::tempdir().unwrap();
    let copy = damaged.path().join("ckpt");
    copy_files(&fixture("h1_basic"), &copy);
    let data = copy.join("model-0.data-00000-of-00001");
    let bytes: Vec<u8> = std::fs::read(&data)
        .unwrap()
        .iter()
        .map(|b| b ^ 0x40)
        .collect();
    std::fs::write(&data, bytes).unwrap();
    let out = damaged.path().join("out");
    let o = tfckpt_init(
        copy.to_str().unwrap(),
        model,
        r#"{"useful_scope/": "nothing/", "/": "new_scope_1"}"#,
        out.to_str().unwrap(),
        &[],
    );
    assert_one_error_line(&o, 1, "checksum");
    assert!(!out.exists());
    // Bad JSON names the file kind, and the file where it came from one.
    let o = tfckpt(&["init", &ckpt, "--model", "{", "--map", "{}", "--no-out"]);
    assert_one_error_line(&o, 1, "error: --model: MODEL.json: not valid JSON");
    let bad = damaged.path().join("model.json");
    std::fs::write(&bad, "[").unwrap();
    let bad = bad.to_str().unwrap();
    let o = tfckpt(&["init", &ckpt, "--model", bad, "--map", "{}", "--no-out"]);
    assert_one_error_line(
        &o,
        1,
        &format!("error: --model {bad}: MODEL.json: not valid JSON"),
    );
    std::fs::write(bad, b"{\"variables\": [{\"name\": \"\xff\"}]}").unwrap();
    let o = tfckpt(&["init", &ckpt, "--model", bad, "--map", "{}", "--no-out"]);
    assert_one_error_line(&o, 1, &format!("error: --model {bad}: is not UTF-8 text"));
    let o = tfckpt(&["init", &ckpt, "--model", &ckpt, "--map", "{}", "--no-out"]);
    assert_one_error_line(&o, 1, &format!("error: --model {ckpt}: cannot be read: "));
    let o = tfckpt(&["init", &ckpt, "--model", model, "--map", bad, "--no-out"]);
    assert_one_error_line(&o, 1, &format!("--map {bad}: "));
    // An empty argument is said to be empty (it read as a file not found, named "").
    let o = tfckpt(&["init", &ckpt, "--model", model, "--map", "", "--no-out"]);
    assert_one_error_line(
        &o,
        1,
        "error: --map is empty: give a file's path, or inline JSON starting with { or [",
    );
    // A file name near the 255-byte limit is written: the temporary name is short (it was the
    // name with a prefix and a suffix, too long for the file system).
    let long = damaged.path().join(format!("{}.npy", "n".repeat(246)));
    let o = tfckpt_get(&ckpt, "var1", long.to_str().unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(long.is_file());
    // A file that cannot be written is named as given, not by its temporary name.
    let o = tfckpt_get(&ckpt, "var1", "/proc/x.npy");
    assert_one_error_line(&o, 1, "/proc/x.npy: cannot create the file: ");
    assert!(!stderr(&o).contains(".tmp"), "{}", stderr(&o));
    // Nor by the temporary file or folder it is written in, whose folder is named too; a file
    // where a folder of the path should be is named with the argument.
    let o = tfckpt(&["convert", &ckpt, "/proc/x.safetensors"]);
    assert_one_error_line(
        &o,
        1,
        "/proc/x.safetensors: cannot create a temporary folder in /proc to write it: ",
    );
    assert!(!stderr(&o).contains(".tfckpt"), "{}", stderr(&o));
    for out in ["/proc/o.safetensors", "/proc/o"] {
        let o = tfckpt_init(&ckpt, model, "{}", out, &[]);
        let said = format!("{out}: cannot create a temporary folder in /proc to write it: ");
        assert_one_error_line(&o, 1, &said);
        assert!(!stderr(&o).contains(".tfckpt"), "{}", stderr(&o));
    }
    let afile = damaged.path().join("afile");
    std::fs::write(&afile, b"").unwrap();
    let inside = afile.join("x.npy");
    let o = tfckpt_get(&ckpt, "var1", inside.to_str().unwrap());
    let said = format!("--out {}: cannot be written: ", inside.display());
    assert_one_error_line(&o, 1, &said);
    // cli.md's `--out DIR` is required: without it (or --no-out), a usage error; with both, too.
    let o = tfckpt(&["init", &ckpt, "--model", model, "--map", "{}"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--out"), "{}", stderr(&o));
    let o = tfckpt(&[
        "init", &ckpt, "--model", model, "--map", "{}", "--no-out", "--out", "x",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A rank not below the number of ranks: a usage error with init's usage line.
    let o = tfckpt(&[
        "init", &ckpt, "--model", model, "--map", "{}", "--no-out", "--rank", "2", "--ranks", "2",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the rank must be below") && stderr(&o).contains("Usage: tfckpt init"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn init_refuses_colliding_output_names_before_writing() {
    let ckpt = ckpt_arg("h1_basic");
    let model = r#"{"variables": [{"name": "a", "shape": [1], "dtype": "float32"}, {"name": "a.npy/b", "shape": [1], "dtype": "float32"}]}"#;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = tfckpt_init(&ckpt, model, "{}", out.to_str().unwrap(), &[]);
    assert_one_error_line(&o, 1, "a.npy");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "no temporary files left"
    );
}

/// A MODEL.json of two float32 variables of shape [1], `a/x` (a file one folder down) and `b`,
/// for the output tests (`init` with `--map {}` writes their default initializer's zeros).
const TWO_FLOATS: &str = r#"{"variables": [{"name": "a/x", "shape": [1], "dtype": "float32"}, {"name": "b", "shape": [1], "dtype": "float32"}]}"#;

#[test]
fn init_into_an_existing_directory_merges_or_refuses_before_moving() {
    let ckpt = ckpt_arg("h1_basic");
    let model = TWO_FLOATS;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    std::fs::create_dir_all(out.join("keep")).unwrap();
    let o = tfckpt_init(&ckpt, model, "{}", out.to_str().unwrap(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.join("a/x.npy").is_file() && out.join("b.npy").is_file() && out.join("keep").is_dir()
    );
    // A directory where a file must go: refused, nothing moved, no temporary directory left.
    let out2 = tmp.path().join("o2");
    std::fs::create_dir_all(out2.join("b.npy")).unwrap();
    let o = tfckpt_init(&ckpt, model, "{}", out2.to_str().unwrap(), &[]);
    assert_one_error_line(&o, 1, "b.npy");
    assert!(!out2.join("a").exists());
    assert_eq!(std::fs::read_dir(&out2).unwrap().count(), 1);
    // A file where a folder must go, and a directory where a file must go one folder down: each
    // refused the same way, the user's file and folder kept (a merge that moved them aside took
    // them away with its temporary folder).
    let out3 = tmp.path().join("o3");
    std::fs::create_dir_all(&out3).unwrap();
    std::fs::write(out3.join("a"), b"the user's a").unwrap();
    let o = tfckpt_init(&ckpt, model, "{}", out3.to_str().unwrap(), &[]);
    let a = out3.join("a");
    assert_one_error_line(
        &o,
        1,
        &format!("{} exists and is not a directory", a.display()),
    );
    assert_eq!(common::fixtures::files_in(&out3), ["a"]);
    assert_eq!(std::fs::read(&a).unwrap(), b"the user's a");
    let out4 = tmp.path().join("o4");
    let x = out4.join("a/x.npy");
    std::fs::create_dir_all(x.join("inside")).unwrap();
    let o = tfckpt_init(&ckpt, model, "{}", out4.to_str().unwrap(), &[]);
    assert_one_error_line(&o, 1, &format!("{} exists and is a directory", x.display()));
    assert_eq!(common::fixtures::files_in(&out4), ["a"]);
    assert!(x.join("inside").is_dir());
}

/// `--out` may name a path under folders that do not exist yet, given relative to the working
/// directory or absolute: `init` into a folder of `.npy` files or one safetensors file, and `get`,
/// make them and write there. (A relative path's climb to its missing folders ends at the empty
/// path, which is no folder to make.)
#[test]
fn outputs_go_into_new_folders_named_relatively_or_absolutely() {
    let ckpt = ckpt_arg("h1_basic");
    let model = TWO_FLOATS;
    let tmp = tempfile::tempdir().unwrap();
    let absolute = tmp.path().join("abs/deep/o");
    for (out, file) in [
        ("rel/deep/o", "rel/deep/o/a/x.npy"),
        ("st/deep/m.safetensors", "st/deep/m.safetensors"),
        (absolute.to_str().unwrap(), "abs/deep/o/b.npy"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_tfckpt"))
            .args(["init", &ckpt, "--model", model, "--map", "{}", "--out", out])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{out}: {}", stderr(&o));
        assert!(tmp.path().join(file).is_file(), "{out}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_tfckpt"))
        .args(["get", &ckpt, "var1", "--out", "got/deep/var1.npy"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let got = npy::read(std::fs::File::open(tmp.path().join("got/deep/var1.npy")).unwrap());
    assert_eq!(got.unwrap().shape, [1, 10]);
}

/// Starts `tfckpt init CKPT --model MODEL --map {} --out OUT` with `env` added, stderr piped, for
/// a test to end it by SIGINT or SIGTERM.
#[cfg(unix)]
fn spawn_init_to_signal(
    ckpt: &str,
    model: &str,
    out: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tfckpt"));
    command
        .args(["init", ckpt, "--model", model, "--map", "{}", "--out"])
        .arg(out)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped());
    common::start_with_default_signals(&mut command, &[]);
    command.spawn().unwrap()
}

/// Where DIR itself cannot be locked (NFS, Windows), the writers merging into it take turns on a
/// lock file in it, `.tfckpt-lock`, left there (a debug build's `TFCKPT_TEST_LOCK_FILE` skips
/// DIR's own lock): an `init --out DIR` waits to merge while another holds that file's lock. They
/// did not take turns at all there: four ranks at once into one folder, with no lock, failed 4
/// processes in 600 rounds ("Directory not empty", "No such file").
#[cfg(unix)]
#[test]
fn where_a_directory_cannot_be_locked_writers_take_turns_on_a_lock_file() {
    use std::time::{Duration, Instant};
    let ckpt = ckpt_arg("h1_basic");
    let model = TWO_FLOATS;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("b.npy"), b"old").unwrap();
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(out.join(".tfckpt-lock"))
        .unwrap();
    held.lock().unwrap();
    let mut child = spawn_init_to_signal(&ckpt, model, &out, &[("TFCKPT_TEST_LOCK_FILE", "1")]);
    // Its files written into the temporary folder in DIR: only the lock keeps it from merging.
    let t0 = Instant::now();
    loop {
        let written = std::fs::read_dir(&out).unwrap().any(|e| {
            let p = e.unwrap().path();
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tfckpt-out-")
                && p.join("a/x.npy").is_file()
                && p.join("b.npy").is_file()
        });
        if written {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("the files were not written, or it merged without the lock");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "it merged while the lock file was locked"
    );
    assert_eq!(std::fs::read(out.join("b.npy")).unwrap(), b"old");
    drop(held);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        common::fixtures::files_in(&out),
        [".tfckpt-lock", "a", "b.npy"]
    );
    assert!(std::fs::read(out.join("b.npy"))
        .unwrap()
        .starts_with(b"\x93NUMPY"));
}

/// The lock file a writer makes takes DIR's read and write permissions whatever the umask
/// (`rwxrwxr-x` gives `rw-rw-r--`): every user who may merge into DIR may open it for writing,
/// which an exclusive lock on NFS needs. It was made under the umask (`rw-r--r--` under 022), and
/// on NFS the ranks of another user of the group then merged without taking turns.
#[cfg(unix)]
#[test]
fn the_lock_file_opens_for_writing_for_everyone_who_may_write_into_the_directory() {
    use std::os::unix::fs::PermissionsExt;
    let ckpt = ckpt_arg("h1_basic");
    let model = r#"{"variables": [{"name": "b", "shape": [1], "dtype": "float32"}]}"#;
    let tmp = tempfile::tempdir().unwrap();
    for (dir_mode, lock_mode) in [(0o775, 0o664), (0o700, 0o600), (0o777, 0o666)] {
        let out = tmp.path().join(format!("o{dir_mode:o}"));
        std::fs::create_dir(&out).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(dir_mode)).unwrap();
        let child = spawn_init_to_signal(&ckpt, model, &out, &[("TFCKPT_TEST_LOCK_FILE", "1")]);
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let lock = std::fs::metadata(out.join(".tfckpt-lock")).unwrap();
        let mode = lock.permissions().mode() & 0o777;
        assert_eq!(mode, lock_mode, "{mode:o} in a folder {dir_mode:o}");
    }
}

/// `init --out DIR` ended by a signal after writing its files, before merging them into an
/// existing DIR, leaves DIR as it was and no temporary folder. The test holds DIR's lock, which
/// the merge takes after the temporary folder is written, so the signal always comes there.
#[cfg(unix)]
#[test]
fn init_ended_by_a_signal_before_its_merge_leaves_the_directory_as_it_was() {
    use std::os::unix::io::AsRawFd;
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};
    let ckpt = ckpt_arg("h1_basic");
    let model = TWO_FLOATS;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("o");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("b.npy"), b"kept").unwrap();
        let lock = std::fs::File::open(&out).unwrap();
        // SAFETY: flock on a descriptor this test owns; the lock goes with it.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let mut child = spawn_init_to_signal(&ckpt, model, &out, &[]);
        // Both files written into the temporary folder inside DIR: the merge is next.
        let t0 = Instant::now();
        let temporaries = || -> Vec<PathBuf> {
            std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .collect()
        };
        loop {
            let t = temporaries();
            if t.len() == 1 && t[0].join("a/x.npy").is_file() && t[0].join("b.npy").is_file() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("the files were not written: {t:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (status, err) = common::signal_and_wait(&mut child, signal);
        assert_eq!(status.signal(), Some(signal), "{status:?}: {err}");
        drop(lock);
        assert_eq!(common::fixtures::files_in(&out), ["b.npy"], "{err}");
        assert_eq!(std::fs::read(out.join("b.npy")).unwrap(), b"kept");
    }
}

/// A signal while `init --out DIR` is making a folder (made, not yet listed for removal): the first
/// of the parent folders made for DIR, or DIR's temporary folder. The removal waits for the
/// listing, then removes the folder and the parent folders made. Made first and listed after, a
/// signal between the two left them behind. Debug builds only: the binary holds the write there
/// until the signal (`TFCKPT_TEST_PAUSE_BEFORE_LISTING`).
#[cfg(all(unix, debug_assertions))]
#[test]
fn init_ended_by_a_signal_while_making_a_folder_leaves_nothing() {
    let ckpt = ckpt_arg("h1_basic");
    // Where the folder is made: `new` in the test's folder, or `.tfckpt-out-*` in new/deeper.
    for (pause, place) in [("parent", ""), ("temporary", "new/deeper")] {
        let out = "{T}/new/deeper/o";
        let init = [
            "init", &ckpt, "--model", TWO_FLOATS, "--map", "{}", "--out", out,
        ];
        signal_while_making(pause, place, &init);
    }
}

/// The same for each temporary file and folder the binary makes outside `--out DIR`: a ranked
/// `init --out FILE.safetensors`'s and `get --out FILE.npy`'s temporary files (in new parent
/// folders), and the demo's folder. The library's own writes (an unranked `init --out
/// FILE.safetensors`) are checked in its unit tests
/// (`the_crates_writes_make_each_temporary_path_inside_its_making`).
#[cfg(all(unix, debug_assertions))]
#[test]
fn a_signal_while_making_an_output_file_or_the_demos_folder_leaves_nothing() {
    let ckpt = ckpt_arg("h1_basic");
    let out = "{T}/new/o.safetensors";
    let init = [
        "init", &ckpt, "--model", TWO_FLOATS, "--map", "{}", "--out", out,
    ];
    signal_while_making(
        "file",
        "new",
        &[&init[..], &["--rank", "0", "--ranks", "1"]].concat(),
    );
    let get = ["get", &ckpt, "var1", "--out", "{T}/new/v.npy"];
    signal_while_making("file", "new", &get);
    // The demo's folder is the system's temporary folder's (`TMPDIR`: the test's).
    signal_while_making("demo", "", &["demo", "--mib", "24"]);
}

/// Runs the binary with `args` (`{T}` in them: the test's folder) and
/// `TFCKPT_TEST_PAUSE_BEFORE_LISTING=pause`, waits until something is made in `place` (in the
/// test's folder), signals it by SIGINT, then by SIGTERM in a second run, and checks that it ends
/// by the signal and leaves the test's folder empty.
#[cfg(all(unix, debug_assertions))]
fn signal_while_making(pause: &str, place: &str, args: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().to_str().unwrap();
        let args: Vec<String> = args.iter().map(|a| a.replace("{T}", folder)).collect();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tfckpt"));
        command
            .args(&args)
            .env("TFCKPT_TEST_PAUSE_BEFORE_LISTING", pause)
            .env("TMPDIR", tmp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        common::start_with_default_signals(&mut command, &[]);
        let mut child = command.spawn().unwrap();
        let t0 = Instant::now();
        let place = tmp.path().join(place);
        while std::fs::read_dir(&place).map_or(true, |mut d| d.next().is_none()) {
            if t0.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("{args:?}: nothing was made in {}", place.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (status, err) = common::signal_and_wait(&mut child, signal);
        assert_eq!(status.signal(), Some(signal), "{args:?}: {status:?}: {err}");
        assert_eq!(err, "", "{args:?}");
        let left = common::fixtures::files_in(tmp.path());
        assert_eq!(left, Vec::<String>::new(), "{args:?}");
    }
}

/// A signal during the merge into an existing DIR (one file already replaced, the next about to
/// be): the merge stops and undoes its moves before the process ends, so DIR is as it was (it
/// was left half merged, the files moved aside in a hidden folder). Debug builds only: the binary
/// holds the merge before its third move until the signal (`TFCKPT_TEST_PAUSE_MOVE_AT`).
#[cfg(all(unix, debug_assertions))]
#[test]
fn init_ended_by_a_signal_during_its_merge_leaves_the_directory_as_it_was() {
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};
    let ckpt = ckpt_arg("h1_basic");
    let model = r#"{"variables": [{"name": "a", "shape": [1], "dtype": "float32"}, {"name": "b", "shape": [1], "dtype": "float32"}, {"name": "c", "shape": [1], "dtype": "float32"}]}"#;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("o");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("a.npy"), b"kept a").unwrap();
        std::fs::write(out.join("b.npy"), b"kept b").unwrap();
        // Moves 1 and 2 put a.npy aside and the new one in its place; 3 would do b.npy's.
        let mut child =
            spawn_init_to_signal(&ckpt, model, &out, &[("TFCKPT_TEST_PAUSE_MOVE_AT", "3")]);
        let t0 = Instant::now();
        while std::fs::read(out.join("a.npy")).is_ok_and(|b| b == b"kept a") {
            if t0.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("the merge did not start");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (status, err) = common::signal_and_wait(&mut child, signal);
        assert_eq!(status.signal(), Some(signal), "{status:?}: {err}");
        assert_eq!(
            common::fixtures::files_in(&out),
            ["a.npy", "b.npy"],
            "{err}"
        );
        assert_eq!(std::fs::read(out.join("a.npy")).unwrap(), b"kept a");
        assert_eq!(std::fs::read(out.join("b.npy")).unwrap(), b"kept b");
        assert_eq!(common::fixtures::files_in(tmp.path()), ["o"], "{err}");
    }
}

#[test]
fn init_copy_flag_gives_the_same_files() {
    // A 2 MiB tensor is mapped copy-on-write by default and copied with --copy: same output.
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut b = CkptBuilder::new(tmp.path().join("big"));
    b.bytes("w", tfckpt::DType::F32, &[512, 1024], &data);
    let prefix = b.finish();
    let model = r#"{"variables": [{"name": "v", "shape": [512, 1024], "dtype": "float32"}]}"#;
    let mut outputs = Vec::new();
    for (flag, mapped) in [(None, "2097152 mapped"), (Some("--copy"), "(0 mapped")] {
        let out = tmp.path().join(format!("out{}", outputs.len()));
        let mut args = vec![
            "init",
            prefix.to_str().unwrap(),
            "--model",
            model,
            "--map",
            r#"{"w": "v"}"#,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(flag);
        let o = tfckpt(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let line = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(line.contains(mapped), "{line}");
        outputs.push(std::fs::read(out.join("v.npy")).unwrap());
    }
    assert_eq!(outputs[0], outputs[1]);
    assert!(outputs[0].ends_with(&data));
}

/// Four `tfckpt init --rank R --ranks 4` processes at once on TensorFlow's 5-slice checkpoint,
/// into a 5-part variable whose parts are its stored slices: each reads only its share (the
/// checkpoint bytes its report gives), and together they write what one process writes.
#[test]
fn ranks_as_processes_each_read_their_share_and_together_write_the_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = ckpt_path("h1_partitioned");
    let model = r#"{"variables": [{"name": "new/var1", "shape": [100, 100], "dtype": "float32", "partitions": [5, 1]},
                                  {"name": "head/b", "shape": [3], "dtype": "float32", "initializer": "ones"}]}"#;
    let map = r#"{"scope/var1": "new/var1"}"#;
    let run = |out: &std::path::Path, rank: Option<usize>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tfckpt"));
        c.args([
            "init",
            ckpt.to_str().unwrap(),
            "--model",
            model,
            "--map",
            map,
            "--out",
        ])
        .arg(out);
        if let Some(r) = rank {
            c.args(["--rank", &r.to_string(), "--ranks", "4"]);
        }
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = (0..4)
        .map(|r| run(&tmp.path().join(format!("rank{r}")), Some(r)))
        .collect();
    // The same ranks at once into one new folder (the first makes it, the others merge).
    let shared: Vec<_> = (0..4)
        .map(|r| run(&tmp.path().join("shared"), Some(r)))
        .collect();
    let whole = run(&tmp.path().join("whole"), None)
        .wait_with_output()
        .unwrap();
    assert!(whole.status.success());
    let mut union = std::collections::BTreeMap::new();
    for (r, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "rank {r}: {}", stderr(&o));
        let line = String::from_utf8_lossy(&o.stdout).into_owned();
        // Rank 0 owns parts 0 and 4, the others one part each: 20 rows x 100 float32 a part.
        let parts = if r == 0 { 2 } else { 1 };
        let read = format!("; {} checkpoint bytes read", parts * 20 * 100 * 4);
        assert!(line.contains(&read), "rank {r}: {line}");
        assert!(
            line.contains(&format!("; {} variables", 5 - parts)),
            "rank {r}: {line}"
        );
        for (path, bytes) in tree(&tmp.path().join(format!("rank{r}"))) {
            // Every rank writes the unpartitioned variable; the parts once each.
            if let Some(other) = union.insert(path.clone(), bytes.clone()) {
                assert_eq!(other, bytes, "{path}");
            }
        }
    }
    for (r, c) in shared.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "rank {r} into one folder: {}",
            stderr(&o)
        );
    }
    assert_eq!(tree(&tmp.path().join("shared")), union);
    let mut want = tree(&tmp.path().join("whole"));
    // The whole of the partitioned variable needs every part: one process only.
    assert!(want.remove("new/var1.npy").is_some());
    assert_eq!(union, want);
    // A rank not below the number of ranks is a usage error, and nothing is written.
    let out = tmp.path().join("bad");
    let o = tfckpt_init(
        ckpt.to_str().unwrap(),
        model,
        map,
        out.to_str().unwrap(),
        &["--rank", "4", "--ranks", "4"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--rank 4 --ranks 4"));
    assert!(!out.exists());
}

/// `tfckpt init` on seeded random damages (see `tests/common/damage.rs`) of the checkpoints of
/// several init cases, with mapped and with copied values: either exit code 1, one `error:` line
/// and no output folder, or exit code 0 and exactly the files of the intact checkpoint. Never a
/// panic, a signal, or a partial or wrong output.
#[test]
fn init_on_damaged_checkpoints_writes_the_intact_files_or_nothing() {
    let mut outcomes = common::damage::Outcomes::default();
    for (ci, case) in [
        "g_dtypes_direct",
        "g_sharded_partitioned",
        "h1_12a_partition_var",
    ]
    .iter()
    .enumerate()
    {
        let case = fixture("init").join(case);
        let ckpt = init_ckpt(&case);
        let (model, map) = (case.join("model.json"), case.join("map.json"));
        let run = |ckpt: &std::path::Path, out: &std::path::Path, copy: bool| {
            let mut args = vec![
                "init",
                ckpt.to_str().unwrap(),
                "--model",
                model.to_str().unwrap(),
                "--map",
                map.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ];
            if copy {
                args.push("--copy");
            }
            tfckpt(&args)
        };
        let tmp = tempfile::tempdir().unwrap();
        let intact_out = tmp.path().join("intact");
        let o = run(&ckpt, &intact_out, false);
        assert!(o.status.success(), "{}: {}", case.display(), stderr(&o));
        let want = tree(&intact_out);
        for it in 0..30u64 {
            let seed = (ci as u64) << 32 | it | 1 << 59;
            let work = tempfile::tempdir().unwrap();
            let ckpt_dir = work.path().join("ckpt");
            let (damaged, done) = common::damage::damaged_copy(&ckpt, &ckpt_dir, seed);
            let out = work.path().join("out");
            let o = run(&damaged, &out, it % 2 == 1);
            outcomes.run(&format!("{}: {done}", case.display()), || {
                match o.status.code() {
                    Some(1) => {
                        // The error names the damaged checkpoint's file (its folder: not the
                        // output's).
                        assert_one_error_line(&o, 1, ckpt_dir.to_str().unwrap());
                        match out.exists() {
                            true => Err("output written despite the error".to_string()),
                            false => Ok(false),
                        }
                    }
                    Some(0) if tree(&out) == want => Ok(true),
                    Some(0) => Err("output differs from the intact one".into()),
                    code => Err(format!("exit {code:?}: {}", stderr(&o))),
                }
            });
        }
    }
    assert!(outcomes.failed > 20 && outcomes.exact > 3, "{outcomes:?}");
}

/// `docs/cli.md` is a copy of the project's command-line spec (kept beside the repository, in
/// `../shared/spec/cli.md`, where the project's tools read it): where that folder is present, the
/// copy must equal it, so the README's links never show a contract that has moved on.
#[test]
fn docs_cli_md_is_the_projects_spec() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = root.join("../shared/spec/cli.md");
    let Ok(spec) = std::fs::read_to_string(&spec) else {
        eprintln!("{} not present: nothing to compare", spec.display());
        return;
    };
    let copy = std::fs::read_to_string(root.join("docs/cli.md")).unwrap();
    assert!(
        copy == spec,
        "docs/cli.md differs from ../shared/spec/cli.md: copy it again"
    );
}

/// A tensor of more dimensions than NumPy reads (TensorFlow allows 254) is an error naming it and
/// the limit, exit code 1, and no file, for `get --out` and `init --out DIR`; `convert` to
/// safetensors, which has no such limit, writes it.
#[test]
fn a_tensor_numpy_cannot_hold_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = CkptBuilder::new(tmp.path().join("deep"));
    b.f32("deep", &[1; 65], &[2.5]);
    let prefix = b.finish();
    let (ckpt, out) = (prefix.to_str().unwrap(), tmp.path().join("deep.npy"));
    let o = tfckpt_get(ckpt, "deep", out.to_str().unwrap());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tensor \"deep\" has rank 65") && err.contains("(64)"),
        "{err}"
    );
    assert!(!out.exists());
    let st = tmp.path().join("deep.safetensors");
    let o = tfckpt(&["convert", ckpt, st.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // `init --out DIR`: refused before the load, naming the variable; `--out FILE.safetensors`
    // writes it.
    let model = format!(
        r#"{{"variables": [{{"name": "v/deep", "shape": {:?}, "dtype": "float32"}}]}}"#,
        [1; 65]
    );
    for (out, writes) in [("out", false), ("init.safetensors", true)] {
        let out = tmp.path().join(out);
        let map = r#"{"deep": "v/deep"}"#;
        let o = tfckpt_init(ckpt, &model, map, out.to_str().unwrap(), &[]);
        if writes {
            assert!(o.status.success(), "{}", stderr(&o));
        } else {
            assert_one_error_line(&o, 1, "variable \"v/deep\" has rank 65");
            assert!(!out.exists());
        }
    }
    // Rank 64, the most NumPy reads, is written by `get` and by `init --out DIR`.
    let mut b = CkptBuilder::new(tmp.path().join("edge"));
    b.f32("edge", &[1; 64], &[2.5]);
    let prefix = b.finish();
    let ckpt = prefix.to_str().unwrap();
    let out = tmp.path().join("edge.npy");
    let o = tfckpt_get(ckpt, "edge", out.to_str().unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    let model = format!(
        r#"{{"variables": [{{"name": "v/edge", "shape": {:?}, "dtype": "float32"}}]}}"#,
        [1; 64]
    );
    let dir = tmp.path().join("edge_out");
    let o = tfckpt_init(
        ckpt,
        &model,
        r#"{"edge": "v/edge"}"#,
        dir.to_str().unwrap(),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for file in [out, dir.join("v/edge.npy")] {
        let a = npy::read(std::fs::File::open(&file).unwrap()).unwrap();
        assert_eq!(
            (a.shape, a.data),
            (vec![1; 64], 2.5f32.to_le_bytes().to_vec())
        );
    }
}

/// Variable names become paths under `init --out DIR`: a name with a `.` or `..` component
/// (TensorFlow allows them; `../x` would land beside DIR) and a name whose file another name
/// needs as a folder are refused before any work, naming the variable, and nothing is written.
#[test]
fn variable_names_that_are_no_paths_under_out_are_refused() {
    let ckpt = ckpt_arg("h1_basic");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let components = "'.' and '..' are not valid name components";
    for (names, error) in [
        (
            &["../x"][..],
            format!(
                "variable \"../x\" cannot be written under {}: {components}",
                out.display()
            ),
        ),
        (
            &["a/./b"],
            format!(
                "variable \"a/./b\" cannot be written under {}: {components}",
                out.display()
            ),
        ),
        (
            &["a/.."],
            format!(
                "variable \"a/..\" cannot be written under {}: {components}",
                out.display()
            ),
        ),
        (
            &["a.npy/b", "a"],
            "variable \"a\" would be written to a.npy, which another variable needs as a directory"
                .into(),
        ),
    ] {
        let vars: Vec<String> = names
            .iter()
            .map(|n| format!(r#"{{"name": "{n}", "shape": [1], "dtype": "float32"}}"#))
            .collect();
        let model = format!(r#"{{"variables": [{}]}}"#, vars.join(", "));
        let o = tfckpt_init(&ckpt, &model, "{}", out.to_str().unwrap(), &[]);
        assert_one_error_line(&o, 1, &error);
        assert_eq!(common::fixtures::files_in(tmp.path()), Vec::<String>::new());
    }
}

/// A MODEL.json or MAP.json file past 256 MiB (`/dev/zero`, say) is refused as such, after
/// reading one byte past the bound, not read to the end nor parsed.
#[cfg(unix)]
#[test]
fn json_files_past_the_bound_are_refused_as_such() {
    let ckpt = ckpt_arg("h1_basic");
    for flag in ["--model", "--map"] {
        let (model, map) = match flag {
            "--model" => ("/dev/zero", "{}"),
            _ => (r#"{"variables": []}"#, "/dev/zero"),
        };
        let o = tfckpt(&["init", &ckpt, "--model", model, "--map", map, "--no-out"]);
        assert_one_error_line(&o, 1, &format!("{flag} /dev/zero: larger than 256 MiB"));
    }
}

/// A partitioned tensor saved in part (some of a partitioned variable's parts) is no damage:
/// `verify` passes, with a warning that it reads only within its slices, and `get` of it whole
/// fails, naming it; TensorFlow's fixtures give no such warning.
#[test]
fn verify_warns_of_a_tensor_saved_in_part() {
    use tfckpt::{CheckpointWriter, Slice, Tensor, WriterOptions};
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("m");
    let mut w = CheckpointWriter::create(&prefix, WriterOptions::default()).unwrap();
    let part = Tensor::from_f32(&[2, 3], &[1.0; 6]).unwrap();
    let rows = Slice::from_ranges(&[(0, 2), (0, 3)]);
    w.add_slice("p", &[6, 3], &rows, (&part).into()).unwrap();
    w.add("whole", (&part).into()).unwrap();
    // Of one stored in many slices, the first 8 are named (all of 8).
    let row = Tensor::from_f32(&[1], &[2.0]).unwrap();
    for i in 0..9 {
        let at = Slice::from_ranges(&[(i * 2, 1)]);
        w.add_slice("q", &[20], &at, (&row).into()).unwrap();
        if i < 8 {
            w.add_slice("r", &[20], &at, (&row).into()).unwrap();
        }
    }
    w.finish().unwrap();
    let o = tfckpt(&["verify", prefix.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "warning: tensor \"p\" [6, 3]: its stored slices [0,2:0,3] hold 6 of its 18 elements; it \
         reads only within them, never whole\n\
         warning: tensor \"q\" [20]: its stored slices [0,1, 2,1, 4,1, 6,1, 8,1, 10,1, 12,1, \
         14,1, ... 9 in all] hold 9 of its 20 elements; it reads only within them, never whole\n\
         warning: tensor \"r\" [20]: its stored slices [0,1, 2,1, 4,1, 6,1, 8,1, 10,1, 12,1, \
         14,1] hold 8 of its 20 elements; it reads only within them, never whole\n"
    );
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok: 19 stored tensors and slices, "));
    let out = tmp.path().join("p.npy");
    let o = tfckpt_get(prefix.to_str().unwrap(), "p", out.to_str().unwrap());
    assert_one_error_line(&o, 1, "insufficient slices");
    let o = tfckpt(&["verify", &ckpt_arg("sharded_partitioned")]);
    assert!(
        o.status.success() && stderr(&o).is_empty(),
        "{}",
        stderr(&o)
    );
}
