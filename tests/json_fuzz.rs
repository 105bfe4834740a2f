//! Seeded, structure-aware random MODEL.json and MAP.json (hostile-input issue): valid documents
//! mutated with huge and negative dimensions, deep nesting, odd names and wrong types, fed to the
//! library (parse, `init_from_checkpoint`, `initialize`) and to the CLI. Never a panic, an abort
//! or a hang: the library returns `Ok` or `Err`, the binary exits 0, 1 or 2 within its time limit.
//! Fixed seeds and case counts within a time budget: CI runs the same cases, in the same order,
//! up to the budget (all of them on this project's VM, in about a second).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::fixtures::fixture;
use common::Rng;

#[allow(dead_code)] // shared with the binary: only part of it is used here
#[path = "../src/bin/tfckpt/model_json.rs"]
mod model_json;

/// A dimension: small ones for loads that succeed, and values that must be refused (overflow,
/// negative, not integers). Element counts are either small or beyond what an address can span
/// (2^62 elements), so a case never allocates gigabytes that a machine might grant.
fn dim(rng: &mut Rng) -> Value {
    match rng.below(14) {
        0..=5 => json!(rng.below(12)),
        6 => json!(100),
        7 => json!(1u64 << 62),
        8 => json!(u64::MAX),
        9 => json!(-1),
        10 => json!(i64::MIN),
        11 => json!(1.5),
        12 => json!("3"),
        _ => Value::Null,
    }
}

fn name(rng: &mut Rng) -> Value {
    let pick = [
        "var1",
        "var2",
        "useful_scope/var4",
        "a/b/c",
        "v",
        "v/part_0",
        "",
        "/",
        "a//b",
        "x:0",
        "..",
        "a/../b",
        "é/ü",
        "nul\u{0}name",
        "line\nbreak",
    ];
    match rng.below(10) {
        0 => json!("n".repeat(rng.below(3000) as usize)),
        1 => json!(rng.below(100)),
        _ => json!(pick[rng.index(pick.len())]),
    }
}

fn dtype(rng: &mut Rng) -> Value {
    let pick = [
        "float32",
        "float32",
        "float16",
        "bfloat16",
        "int64",
        "string",
        "bool",
        "complex64",
        "variant",
        "resource",
        "float33",
        "",
    ];
    match rng.below(12) {
        0 => json!(1),
        _ => json!(pick[rng.index(pick.len())]),
    }
}

/// A value nested `depth` arrays deep.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!([v]))
}

/// A variable the fixture's tensors fit (h1_basic: var1 [1,10], var2 [10,10], var3 [100,100],
/// useful_scope/var4 [9,9], float32), sometimes partitioned.
fn fitting_variable(rng: &mut Rng) -> Value {
    let (name, shape): (&str, &[u64]) = match rng.below(4) {
        0 => ("new/var1", &[1, 10]),
        1 => ("new/var2", &[10, 10]),
        2 => ("new/var3", &[100, 100]),
        _ => ("new/useful_scope/var4", &[9, 9]),
    };
    let mut v = json!({"name": name, "shape": shape, "dtype": "float32"});
    if rng.below(2) == 0 && shape[0] > 1 {
        v["partitions"] = json!([1 + rng.below(shape[0].min(7)), 1]);
    }
    v
}

fn variable(rng: &mut Rng) -> Value {
    if rng.below(2) == 0 {
        let mut v = fitting_variable(rng);
        if rng.below(3) == 0 {
            mutate(rng, &mut v);
        }
        return v;
    }
    let rank = match rng.below(10) {
        0 => rng.below(300),
        _ => rng.below(4),
    };
    let mut v = json!({
        "name": name(rng),
        "shape": (0..rank).map(|_| dim(rng)).collect::<Vec<_>>(),
        "dtype": dtype(rng),
    });
    if rng.below(3) == 0 {
        let k = v["shape"].as_array().map_or(0, Vec::len);
        v["partitions"] = json!((0..k).map(|_| dim(rng)).collect::<Vec<_>>());
    }
    if rng.below(3) == 0 {
        v["initializer"] = match rng.below(6) {
            0 => json!("ones"),
            1 => json!({"constant": 1e300}),
            2 => json!({"constant": -7}),
            3 => json!({"constant": "x"}),
            4 => json!({"constant": 1, "other": 2}),
            _ => json!("zeros"),
        };
    }
    mutate(rng, &mut v);
    v
}

/// Replaces a random field by a value of another type now and then.
fn mutate(rng: &mut Rng, v: &mut Value) {
    if rng.below(4) != 0 {
        return;
    }
    let keys = ["name", "shape", "dtype", "partitions", "initializer"];
    let k = keys[rng.index(keys.len())];
    v[k] = match rng.below(6) {
        0 => Value::Null,
        1 => json!({"x": [1, 2]}),
        2 => nested(1 + rng.below(400) as usize),
        3 => json!(true),
        4 => json!([]),
        _ => json!(-3.25),
    };
}

fn model(rng: &mut Rng) -> String {
    if rng.below(2) == 0 {
        // Mostly usable: distinct fitting variables, now and then one wild one.
        let mut vars: Vec<Value> = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let v = fitting_variable(rng);
            if vars.iter().all(|w| w["name"] != v["name"]) {
                vars.push(v);
            }
        }
        if rng.below(4) == 0 {
            vars.push(variable(rng));
        }
        return json!({ "variables": vars }).to_string();
    }
    let vars: Vec<Value> = (0..rng.below(6)).map(|_| variable(rng)).collect();
    let doc = match rng.below(12) {
        0 => json!(vars),
        1 => json!({"variables": nested(rng.below(300) as usize)}),
        2 => json!({"variables": "x"}),
        _ => json!({"variables": vars}),
    };
    let text = doc.to_string();
    match rng.below(20) {
        0 => text[..text.len() / 2].to_string(), // cut short
        _ => text,
    }
}

fn target(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => json!({"variable": name(rng)}),
        1 => json!((0..rng.below(4)).map(|_| name(rng)).collect::<Vec<_>>()),
        2 => json!({"variable": 3}),
        3 => nested(rng.below(200) as usize),
        4 => json!(["v/part_0", "v/part_0"]),
        _ => name(rng),
    }
}

fn map(rng: &mut Rng) -> String {
    if rng.below(2) == 0 {
        let fitting = [
            json!({"/": "new/"}),
            json!({"var1": "new/var1", "var3": "new/var3"}),
            json!([["var2", "new/var2"], ["useful_scope/", "new/useful_scope/"]]),
            json!({"var3": ["new/var3/part_0"]}),
            json!({"var1": {"variable": "new/var1"}}),
        ];
        return fitting[rng.index(fitting.len())].to_string();
    }
    let keys = [
        "var1",
        "var2",
        "useful_scope/",
        "/",
        "",
        "var3:0",
        "nope/",
        "useful_scope/var4",
    ];
    let n = rng.below(6);
    let doc = if rng.below(2) == 0 {
        let mut m = serde_json::Map::new();
        for _ in 0..n {
            m.insert(keys[rng.index(keys.len())].to_string(), target(rng));
        }
        Value::Object(m)
    } else {
        json!((0..n)
            .map(|_| match rng.below(8) {
                0 => json!([keys[rng.index(keys.len())]]),
                1 => json!(7),
                _ => json!([keys[rng.index(keys.len())], target(rng)]),
            })
            .collect::<Vec<_>>())
    };
    doc.to_string()
}

/// Library: parse, map, load; any outcome but a panic. Returns how far the case got (0: the
/// documents were refused, 1: the call was refused, 2: loaded, 3: loaded with a value read).
fn library_case(model_text: &str, map_text: &str) -> usize {
    let ckpt = fixture("h1_basic");
    let (Ok(mut store), Ok(m)) = (
        model_json::parse_model(model_text),
        model_json::parse_map(map_text),
    ) else {
        return 0;
    };
    if tfckpt::init_from_checkpoint(&mut store, &ckpt, &m).is_err() {
        return 1;
    }
    let _ = store.initialize(tfckpt::Device::Cpu);
    let mapped = store.variables().any(|v| store.pending(&v.name).is_some());
    for pv in store
        .partitioned_variables()
        .map(|p| p.name.clone())
        .collect::<Vec<_>>()
    {
        let _ = store.partitioned_value(&pv);
    }
    2 + usize::from(mapped && store.is_initialized())
}

#[test]
fn random_model_and_map_documents_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let budget = Duration::from_secs(30);
    let start = Instant::now();
    let mut cases = 0;
    let mut reached = [0usize; 4];
    while cases < 3000 && start.elapsed() < budget {
        let (m, a) = (model(&mut rng), map(&mut rng));
        let run = std::panic::catch_unwind(|| library_case(&m, &a));
        let Ok(stage) = run else {
            panic!("panic on case {cases}:\nMODEL {m}\nMAP {a}");
        };
        reached[stage] += 1;
        cases += 1;
    }
    assert!(cases >= 200, "only {cases} cases in {budget:?}");
    // The mix reaches every stage: refused documents, refused calls, loads with mapped values.
    assert!(
        reached.iter().all(|&n| n * 50 >= cases),
        "{reached:?} of {cases}"
    );
    eprintln!(
        "{cases} library cases: refused / call refused / loaded / loaded and mapped = {reached:?}"
    );
}

#[test]
fn random_documents_through_the_cli_exit_cleanly() {
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let budget = Duration::from_secs(40);
    let start = Instant::now();
    let ckpt = fixture("h1_basic");
    let tmp = tempfile::tempdir().unwrap();
    let mut cases = 0;
    let mut exits = [0usize; 3];
    while cases < 150 && start.elapsed() < budget {
        let (m, a) = (model(&mut rng), map(&mut rng));
        let (mf, af) = (tmp.path().join("m.json"), tmp.path().join("a.json"));
        std::fs::write(&mf, &m).unwrap();
        std::fs::write(&af, &a).unwrap();
        let out = tmp.path().join(format!("out{cases}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tfckpt"))
            .args(["init", ckpt.to_str().unwrap(), "--model"])
            .arg(&mf)
            .arg("--map")
            .arg(&af)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("hang on case {cases}:\nMODEL {m}\nMAP {a}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let err = child.wait_with_output().unwrap().stderr;
        let err = String::from_utf8_lossy(&err);
        assert!(
            matches!(status.code(), Some(0..=2)),
            "case {cases} ended with {status}:\n{err}\nMODEL {m}\nMAP {a}"
        );
        if status.code() == Some(1) {
            assert_eq!(err.lines().count(), 1, "case {cases}: {err}");
            assert!(
                !out.exists(),
                "case {cases}: failed but wrote {}",
                out.display()
            );
        }
        let _ = std::fs::remove_dir_all(&out);
        exits[status.code().unwrap_or(2) as usize] += 1;
        cases += 1;
    }
    assert!(cases >= 30, "only {cases} cases in {budget:?}");
    // Both outcomes occur: loads written out, and documents or calls refused.
    assert!(
        exits[0] * 20 >= cases && exits[1] * 20 >= cases,
        "{exits:?}"
    );
    eprintln!("{cases} CLI cases: exit 0 / 1 / 2 = {exits:?}");
}
