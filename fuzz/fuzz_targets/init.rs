//! Coverage-guided fuzzing of `init_from_checkpoint` and `initialize` on TensorFlow's own
//! checkpoints: the input declares a model (variables named after the checkpoint's tensors or not,
//! of their shapes or others, whole or partitioned along any axis, of any dtype), an assignment map
//! (names, scopes, variable objects, part lists, the root) and load options (casts, ranks, mapped
//! values). Errors are expected. A panic is a finding, and so is a value that differs from the
//! reader's: after a load, every variable's value must equal `Checkpoint::read_slice` of the box
//! its last assignment recorded. The loaded store is then written into a safetensors file
//! (`VariableStore::write_safetensors`, what `tfckpt init --out FILE.safetensors` does), which
//! must hold every value of this rank as the store holds it, or, if it fails, leave nothing.
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

mod exported;
mod fixtures;
mod scratch;
use fixtures::{cases, pick, Case};
use tfckpt::{
    init_from_checkpoint, AssignmentMap, Checkpoint, DType, Device, Init, LoadOptions, Target,
    VariableStore,
};

#[derive(Arbitrary, Debug)]
enum Name {
    /// A checkpoint tensor's name.
    Tensor(u8),
    /// A checkpoint tensor's name under another scope.
    Moved(u8),
    /// A prefix of a tensor's name, cut at one of its `/`s.
    Prefix(u8, u8),
    /// Anything.
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Var {
    name: Name,
    /// The tensor's own shape when `None`.
    shape: Option<Vec<u8>>,
    /// The tensor's own dtype when `None`.
    dtype: Option<u8>,
    /// (axis, parts)
    parts: Option<(u8, u8)>,
}

#[derive(Arbitrary, Debug)]
enum Tgt {
    Name(Name),
    Scope(Name),
    /// A declared variable, or one of its parts.
    Variable(u8, Option<u8>),
    /// Parts of a declared variable.
    Parts(u8, Vec<u8>),
    Root,
}

#[derive(Arbitrary, Debug)]
struct Input {
    case: u8,
    vars: Vec<Var>,
    pairs: Vec<(Name, Tgt)>,
    cast: Option<(u8, u8)>,
    rank: Option<(u8, u8)>,
    map_values: bool,
    threads: u8,
}

fn name(case: &Case, n: &Name) -> String {
    let tensor = |i| pick(&case.tensors, i).map_or("x", |t| t.name.as_str());
    match n {
        Name::Tensor(i) => tensor(*i).to_string(),
        Name::Moved(i) => format!("new/{}", tensor(*i)),
        Name::Prefix(i, k) => {
            let t = tensor(*i);
            let cuts: Vec<usize> = t.match_indices('/').map(|(p, _)| p + 1).collect();
            pick(&cuts, *k).map_or(String::new(), |&c| t[..c].to_string())
        }
        Name::Raw(s) => s.chars().take(40).collect(),
    }
}

/// `store` written into a safetensors file: if that succeeds, the file holds every variable and
/// part of this rank, and the whole of each partitioned variable whose parts it holds, as the
/// store holds them; if it fails (a variable safetensors cannot hold), it leaves nothing.
fn export(store: &VariableStore) {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    let (dir, out) = exported::out(SCRATCH.get_or_init(|| scratch::folder("init")));
    let report = match store.write_safetensors(&out) {
        Ok(report) => report,
        Err(e) => return exported::left_nothing(&dir, &e),
    };
    let bytes = std::fs::read(&out).unwrap();
    let file = exported::read_back(&bytes);
    let mut total = 0;
    for v in store.variables().filter(|v| !store.is_other_rank(&v.name)) {
        total += exported::holds(&file, &v.name, store.value(&v.name).unwrap());
    }
    for pv in store.partitioned_variables() {
        if pv.parts.iter().any(|p| store.is_other_rank(p)) {
            continue;
        }
        let whole = store.partitioned_value(&pv.name).unwrap();
        total += exported::holds(&file, &pv.name, &whole);
    }
    assert_eq!(
        file.len(),
        report.tensors,
        "tensors in the file and the report"
    );
    assert_eq!(total, report.bytes, "bytes in the file and the report");
}

fuzz_target!(|input: Input| {
    let cases = cases();
    let case = &cases[input.case as usize % cases.len()];
    let tensor_of = |n: &Name| match n {
        Name::Tensor(i) | Name::Moved(i) | Name::Prefix(i, _) => pick(&case.tensors, *i),
        Name::Raw(_) => None,
    };

    // The model.
    let mut store = VariableStore::new();
    let mut declared: Vec<(String, usize)> = Vec::new(); // name, parts
    for v in input.vars.iter().take(8) {
        let n = name(case, &v.name);
        let t = tensor_of(&v.name);
        let shape: Vec<u64> = match (&v.shape, t) {
            (Some(s), _) => s.iter().take(4).map(|&d| u64::from(d % 40)).collect(),
            (None, Some(t)) => t.shape.clone(),
            (None, None) => vec![3],
        };
        if shape.iter().product::<u64>() > 1 << 20 {
            continue;
        }
        let dtype = match (v.dtype, t) {
            (Some(d), _) => DType::ALL[d as usize % DType::ALL.len()],
            (None, Some(t)) => t.dtype,
            (None, None) => DType::F32,
        };
        let ok = match v.parts {
            Some((axis, parts)) if !shape.is_empty() => {
                let mut p = vec![1; shape.len()];
                p[axis as usize % shape.len()] = u64::from(parts % 9);
                let n_parts = p.iter().product::<u64>() as usize;
                let r = store.get_partitioned_variable(&n, &shape, dtype, &p, Init::Zeros);
                r.map(|_| n_parts).ok()
            }
            _ => store
                .get_variable(&n, &shape, dtype, Init::Zeros)
                .map(|_| 0)
                .ok(),
        };
        if let Some(parts) = ok {
            declared.push((n, parts));
        }
    }

    // The assignment map.
    let mut map = AssignmentMap::new();
    for (key, tgt) in input.pairs.iter().take(6) {
        let target = match tgt {
            Tgt::Name(n) => Target::name(name(case, n)),
            Tgt::Scope(n) => Target::scope(name(case, n)),
            Tgt::Root => Target::name("/"),
            Tgt::Variable(i, part) => {
                let Some((v, parts)) = pick(&declared, *i) else {
                    continue;
                };
                match part {
                    Some(k) if *parts > 0 => {
                        Target::variable(format!("{v}/part_{}", *k as usize % parts))
                    }
                    _ => Target::variable(v.clone()),
                }
            }
            Tgt::Parts(i, ks) => {
                let Some((v, parts)) = pick(&declared, *i) else {
                    continue;
                };
                let n = (*parts).max(1);
                Target::parts(
                    ks.iter()
                        .take(8)
                        .map(|k| format!("{v}/part_{}", *k as usize % n)),
                )
            }
        };
        map.push(name(case, key), target);
    }

    let Ok(report) = init_from_checkpoint(&mut store, &case.path, &map) else {
        return;
    };
    let mut options = LoadOptions::new().threads(1 + input.threads as usize % 4);
    options.map_values = input.map_values;
    if let Some((from, to)) = input.cast {
        let all = DType::ALL;
        options = options.cast(all[from as usize % all.len()], all[to as usize % all.len()]);
    }
    if let Some((r, n)) = input.rank {
        options = options.rank(r as usize % 5, 1 + n as usize % 4);
    }
    if store.initialize_with(Device::Cpu, &options).is_err() {
        return;
    }
    export(&store);
    if input.cast.is_some() {
        return;
    }

    // Every loaded value against the reader.
    let ckpt = Checkpoint::open(&case.path).unwrap();
    let mut last = HashMap::new();
    for a in &report.assignments {
        last.insert(a.variable.as_str(), a);
    }
    for (var, a) in last {
        if store.is_other_rank(var) {
            continue;
        }
        let value = store
            .value(var)
            .unwrap_or_else(|| panic!("{var}: loaded, but no value"));
        let expected = ckpt.read_slice(&a.tensor, &a.slice).unwrap();
        assert_eq!(
            value.dtype, expected.dtype,
            "{var} <- {} {:?}",
            a.tensor, a.slice
        );
        assert_eq!(
            value.shape, expected.shape,
            "{var} <- {} {:?}",
            a.tensor, a.slice
        );
        assert!(
            value.data == expected.data,
            "{var} <- {} {:?}: values differ",
            a.tensor,
            a.slice
        );
    }
});
