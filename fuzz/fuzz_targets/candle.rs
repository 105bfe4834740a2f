//! Coverage-guided fuzzing of the candle integration (`tfckpt::candle`) on TensorFlow's own
//! checkpoints: the input builds a candle model (a `VarMap`, plain or through `DeferredInit`) of
//! `Var`s standing for checkpoint tensors, under their names or moved under `new/`, of their
//! shapes or others, of any candle dtype, holding the TensorFlow value transposed or not (a
//! `Linear`'s, a convolution's or a depthwise convolution's weight), named by a
//! `Convention::custom`; a dtype policy; and an assignment map
//! (`map_existing`'s, its `fitting()`, the root, a scope, names). Errors are expected. A panic is
//! a finding, and so is any `Var` that changed after a call or a load that failed (all or
//! nothing), and after a load that succeeded, a `Var` whose bytes are not the reader's value of
//! the box its last assignment recorded (transposed and converted as its layout and dtype say),
//! or, for one that took no value, not what candle's initializer gives. The model is then saved
//! back (`save_checkpoint`), and the checkpoint written must hold each `Var` under its TensorFlow
//! name, in TensorFlow's layout.
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use safetensors::View;

mod fixtures;
mod scratch;
use fixtures::{cases, pick};
use tfckpt::candle::candle_core::{DType as CDType, Device, Var};
use tfckpt::candle::candle_nn::{Init as CInit, VarMap};
use tfckpt::candle::{CandleInit, Convention, DeferredInit, DtypePolicy, TfName};
use tfckpt::{AssignmentMap, Checkpoint, DType, LoadOptions, Target};

#[derive(Arbitrary, Debug)]
struct CVar {
    /// The checkpoint tensor it stands for.
    tensor: u8,
    /// Named `new/<tensor>` (to be mapped by a scope) rather than the tensor's own name.
    moved: bool,
    /// Holds the TensorFlow value transposed, as a `Linear`'s weight does (2-D) or a
    /// convolution's (more axes: `[out, in, spatial...]` for `[spatial..., in, out]`).
    transposed: bool,
    /// Held transposed with 3 or more axes: as a depthwise convolution's weight, `[in * mult, 1,
    /// spatial...]` for `[spatial..., in, mult]` (declared as `[spatial..., 1, in * mult]`, which
    /// takes any tensor `[spatial..., a, b]` with `a * b = in * mult`).
    depthwise: bool,
    /// A candle dtype; the tensor's own where candle has it when `None`.
    dtype: Option<u8>,
    /// Its shape as TensorFlow's; the tensor's own when `None`.
    shape: Option<Vec<u8>>,
    /// Candle's initializer: `Init::Const` of this.
    constant: i8,
}

#[derive(Arbitrary, Debug)]
enum Map {
    /// `map_existing(..).map`: every `Var` whose name the checkpoint holds.
    Existing,
    /// `map_existing(..).fitting()`: those of the same shape.
    Fitting,
    /// `{"/": "/"}`.
    Root,
    /// A tensor's name cut after one of its `/`s, mapped to the same scope under `new/`.
    Scope(u8, u8),
    /// (tensor, `Var`): the tensor's name to the `Var`'s TensorFlow name.
    Names(Vec<(u8, u8)>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    case: u8,
    vars: Vec<CVar>,
    deferred: bool,
    cast: bool,
    map: Map,
    threads: u8,
}

/// The candle dtypes a `Var` may have.
const DTYPES: [CDType; 10] = [
    CDType::F32,
    CDType::F16,
    CDType::BF16,
    CDType::F64,
    CDType::U8,
    CDType::U32,
    CDType::I16,
    CDType::I32,
    CDType::I64,
    CDType::F8E4M3,
];

/// A `Var`'s bytes, row-major, little-endian.
fn bytes(var: &Var) -> Vec<u8> {
    View::data(&var.as_tensor()).into_owned()
}

/// `value` (elements of `from`'s size, `shape` row-major) converted to `to`, as
/// `DtypePolicy::CastToVariable` does: float32 narrowed as the `half` crate rounds (NaNs
/// quieted), bfloat16 widened exactly, float16 as `half` widens it.
fn convert(value: &[u8], from: DType, to: DType) -> Vec<u8> {
    use half::{bf16, f16};
    let u16s = || {
        value
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    let f32s = || {
        value
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    };
    match (from, to) {
        (DType::BF16, DType::F32) => u16s()
            .flat_map(|b| (u32::from(b) << 16).to_le_bytes())
            .collect(),
        (DType::F16, DType::F32) => u16s()
            .flat_map(|b| f16::from_bits(b).to_f32().to_le_bytes())
            .collect(),
        (DType::F32, DType::BF16) => f32s()
            .flat_map(|x| bf16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
        (DType::F32, DType::F16) => f32s()
            .flat_map(|x| f16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
        _ => panic!("{from} loaded into a {to} Var"),
    }
}

/// The axes of candle's shape for a value held transposed, as TensorFlow's axes: `[out, in,
/// spatial...]` for TensorFlow's `[spatial..., in, out]` (`[1, 0]` for a 2-D value).
fn held_axes(rank: usize) -> Vec<usize> {
    [rank - 1, rank - 2]
        .into_iter()
        .chain(0..rank - 2)
        .collect()
}

/// `value` (row-major, of TensorFlow shape `shape`, `size`-byte elements) held transposed
/// (`back`: false), or a held value of candle shape `shape` back in TensorFlow's layout (`back`),
/// element by element through whole index tuples. Values of fewer than 2 axes are their own.
fn transpose(value: &[u8], shape: &[u64], size: usize, back: bool) -> Vec<u8> {
    let rank = shape.len();
    if rank < 2 {
        return value.to_vec();
    }
    let axes = held_axes(rank);
    // `from` and `to`: the source's and the result's shapes; `to`'s axis k is `from`'s axis
    // `pick[k]`.
    let pick: Vec<usize> = match back {
        false => axes,
        true => (0..rank)
            .map(|a| axes.iter().position(|&x| x == a).unwrap())
            .collect(),
    };
    let from: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let to: Vec<usize> = pick.iter().map(|&a| from[a]).collect();
    let mut out = vec![0u8; value.len()];
    let mut idx = vec![0usize; rank];
    for e in 0..value.len() / size.max(1) {
        let mut rest = e;
        for d in (0..rank).rev() {
            idx[d] = rest % from[d];
            rest /= from[d];
        }
        let at = pick
            .iter()
            .zip(&to)
            .fold(0, |acc, (&a, &n)| acc * n + idx[a]);
        out[at * size..(at + 1) * size].copy_from_slice(&value[e * size..(e + 1) * size]);
    }
    out
}

/// Whether `var`, held transposed, holds a tensor of TensorFlow shape `tf` as a depthwise kernel:
/// `var` is `[a * b, 1, spatial...]`, `tf` is `[spatial..., a, b]` with `a` not 1 (with `a` 1 it
/// is a convolution's kernel, the same bytes).
fn depthwise(var: &Var, tf: &[u64]) -> bool {
    let dims: Vec<u64> = var.dims().iter().map(|&d| d as u64).collect();
    let n = dims.len();
    n >= 3
        && tf.len() == n
        && dims[1] == 1
        && tf[n - 2] != 1
        && tf[..n - 2] == dims[2..]
        && tf[n - 2] * tf[n - 1] == dims[0]
}

/// A depthwise kernel's shape `[spatial..., a, b]` as the convolution kernel of the same bytes,
/// `[spatial..., 1, a * b]`.
fn depthwise_as(tf: &[u64]) -> Vec<u64> {
    let n = tf.len();
    [&tf[..n - 2], &[1, tf[n - 2] * tf[n - 1]][..]].concat()
}

fuzz_target!(|input: Input| {
    let cases = cases();
    let case = &cases[input.case as usize % cases.len()];

    // The model: `v0`, `v1`, ... named by the convention after the tensors they stand for.
    let varmap = VarMap::new();
    let deferred = input.deferred.then(|| DeferredInit::new(&varmap));
    let mut names: HashMap<String, TfName> = HashMap::new();
    // candle name, the Var, its TF name, its initializer
    let mut vars: Vec<(String, Var, TfName, CInit)> = Vec::new();
    for (i, v) in input.vars.iter().take(8).enumerate() {
        let Some(t) = pick(&case.tensors, v.tensor) else {
            break;
        };
        let tf = TfName {
            name: if v.moved {
                format!("new/{}", t.name)
            } else {
                t.name.clone()
            },
            transposed: v.transposed,
        };
        let shape: Vec<usize> = match &v.shape {
            Some(s) => s.iter().take(4).map(|&d| usize::from(d % 6)).collect(),
            None => t.shape.iter().map(|&d| d as usize).collect(),
        };
        if shape.iter().product::<usize>() > 1 << 16 {
            continue;
        }
        // Candle's shape: TensorFlow's `[spatial..., in, out]` as `[out, in, spatial...]` where
        // the Var holds it transposed.
        let n = shape.len();
        let dims: Vec<usize> = match (v.transposed, v.depthwise) {
            (true, true) if n >= 3 => {
                [&[shape[n - 2] * shape[n - 1], 1][..], &shape[..n - 2]].concat()
            }
            (true, _) if n >= 2 => held_axes(n).iter().map(|&a| shape[a]).collect(),
            _ => shape.clone(),
        };
        let dtype = match v.dtype {
            Some(d) => DTYPES[d as usize % DTYPES.len()],
            None => CDType::try_from(t.dtype).unwrap_or(CDType::F32),
        };
        let name = format!("v{i}");
        let init = CInit::Const(f64::from(v.constant));
        let made = match &deferred {
            Some(d) => {
                d.var_builder(dtype, &Device::Cpu)
                    .get_with_hints(dims.as_slice(), &name, init)
            }
            None => varmap.get(dims.as_slice(), &name, init, dtype, &Device::Cpu),
        };
        if made.is_err() {
            continue;
        }
        let var = varmap.data().lock().unwrap()[&name].clone();
        names.insert(name.clone(), tf.clone());
        vars.push((name, var, tf, init));
    }
    let convention = Convention::custom(move |name, _| names.get(name).cloned());
    let made = match &deferred {
        Some(d) => CandleInit::from_deferred(d, &convention),
        None => CandleInit::from_varmap(&varmap, &convention),
    };
    let Ok(mut init) = made else {
        return;
    };
    if input.cast {
        init = init.dtype_policy(DtypePolicy::CastToVariable);
    }

    let map = match &input.map {
        Map::Existing | Map::Fitting => {
            let Ok(found) = init.map_existing(&case.path) else {
                return;
            };
            match input.map {
                Map::Existing => found.map,
                _ => found.fitting(),
            }
        }
        Map::Root => AssignmentMap::from([("/", Target::name("/"))]),
        Map::Scope(i, k) => {
            let Some(t) = pick(&case.tensors, *i) else {
                return;
            };
            let cuts: Vec<usize> = t.name.match_indices('/').map(|(p, _)| p + 1).collect();
            let scope = pick(&cuts, *k).map_or("", |&c| &t.name[..c]);
            AssignmentMap::from([(scope.to_string(), Target::scope(format!("new/{scope}")))])
        }
        Map::Names(pairs) => {
            let mut map = AssignmentMap::new();
            for (t, v) in pairs.iter().take(8) {
                if let (Some(t), Some(v)) = (pick(&case.tensors, *t), pick(&vars, *v)) {
                    map.push(t.name.clone(), Target::name(v.2.name.clone()));
                }
            }
            map
        }
    };

    // All or nothing: a call or a load that fails changes no Var.
    let before: Vec<Vec<u8>> = vars.iter().map(|v| bytes(&v.1)).collect();
    let unchanged = |what: &str, e: &tfckpt::Error| {
        for ((name, var, ..), old) in vars.iter().zip(&before) {
            assert!(&bytes(var) == old, "{name} changed, but {what} failed: {e}");
        }
    };
    let report = match init.init_from_checkpoint(&case.path, &map) {
        Ok(report) => report,
        Err(e) => return unchanged("init_from_checkpoint", &e),
    };
    let options = LoadOptions::new().threads(1 + input.threads as usize % 3);
    if let Err(e) = init.initialize(&options) {
        return unchanged("initialize", &e);
    }

    // Every Var against the reader, or its initializer.
    let ckpt = Checkpoint::open(&case.path).unwrap();
    let mut last = HashMap::new();
    for a in &report.assignments {
        last.insert(a.variable.as_str(), a);
    }
    for ((name, var, tf, cinit), old) in vars.iter().zip(&before) {
        let got = bytes(var);
        let Some(a) = last.get(tf.name.as_str()) else {
            let want = match &deferred {
                // Candle's initializer ran for each Var that took no value.
                Some(_) => bytes(&cinit.var(var.shape(), var.dtype(), &Device::Cpu).unwrap()),
                None => old.clone(),
            };
            assert!(
                got == want,
                "{name} ({}) took no value, but changed",
                tf.name
            );
            continue;
        };
        let value = ckpt.read_slice(&a.tensor, &a.slice).unwrap();
        let dtype = DType::try_from(var.dtype()).unwrap();
        let mut want = value.bytes().expect("a fixed-size value").to_vec();
        if value.dtype != dtype {
            want = convert(&want, value.dtype, dtype);
        }
        if tf.transposed {
            // A depthwise kernel `[spatial..., a, b]` is held as `[spatial..., 1, a * b]` is.
            let shape = match depthwise(var, &value.shape) {
                true => depthwise_as(&value.shape),
                false => value.shape.clone(),
            };
            want = transpose(&want, &shape, dtype.size().unwrap(), false);
        }
        assert!(
            got == want,
            "{name} ({}, transposed {}, {:?}) <- {} {:?} ({}): values differ",
            tf.name,
            tf.transposed,
            var.dtype(),
            a.tensor,
            a.slice,
            value.dtype
        );
    }

    // Saved back: each Var under its TensorFlow name, transposed back where it holds the value
    // transposed, in its own dtype.
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    let prefix = SCRATCH
        .get_or_init(|| scratch::folder("candle"))
        .join("saved");
    let saved = init
        .save_checkpoint(&prefix)
        .unwrap_or_else(|e| panic!("a loaded model could not be saved: {e}"));
    assert_eq!(saved, vars.len(), "Vars saved");
    let back = Checkpoint::open(&prefix).unwrap();
    for (name, var, tf, _) in &vars {
        let value = back
            .read(&tf.name)
            .unwrap_or_else(|e| panic!("{name} ({}): saved, but: {e}", tf.name));
        assert_eq!(value.dtype, DType::try_from(var.dtype()).unwrap(), "{name}");
        let mut want = bytes(var);
        let mut shape: Vec<u64> = var.dims().iter().map(|&d| d as u64).collect();
        if tf.transposed && shape.len() >= 2 {
            want = transpose(&want, &shape, value.dtype.size().unwrap(), true);
            let axes = held_axes(shape.len());
            shape = (0..shape.len())
                .map(|a| shape[axes.iter().position(|&x| x == a).unwrap()])
                .collect();
            // Saved in the shape of the depthwise kernel it took (the same bytes).
            let declared = init.store().variable(&tf.name).unwrap().shape.clone();
            if depthwise(var, &declared) {
                shape = declared;
            }
        }
        assert_eq!(value.shape, shape, "{name} ({}): saved shape", tf.name);
        assert!(
            value.bytes() == Some(want.as_slice()),
            "{name} ({}): saved values differ",
            tf.name
        );
    }
});
