//! Convolutions from TensorFlow into candle: TF1 and Keras kernels (`[spatial..., in, out]`)
//! held as candle holds them (`[out, in, spatial...]`), so that candle's `conv2d`, `conv1d` and
//! `conv_transpose2d` through the loaded `Var`s give the outputs TensorFlow computed when it
//! wrote the fixture.

use super::{var, CPU};
use crate::common::fixtures::{ckpt_path, fixture};
use candle_core::Device;
use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use tfckpt::candle::{CandleInit, Convention};
use tfckpt::Checkpoint;

/// Array `key` of fixture `case`'s `notes.json` (nested lists of numbers) as a float32 tensor.
fn recorded(case: &str, key: &str) -> Tensor {
    let file = fixture(case).join("expected/notes.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut value = &json[key];
    let mut shape = Vec::new();
    while let Some(a) = value.as_array() {
        shape.push(a.len());
        value = &a[0];
    }
    fn flat(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v.as_array() {
            Some(a) => a.iter().for_each(|v| flat(v, out)),
            None => out.push(v.as_f64().unwrap() as f32),
        }
    }
    let mut data = Vec::new();
    flat(&json[key], &mut data);
    assert!(!shape.is_empty(), "{case}: no {key:?}");
    Tensor::from_vec(data, shape, &CPU).unwrap()
}

/// The largest magnitude among `t`'s elements.
fn max_abs(t: &Tensor) -> f32 {
    let t = t
        .to_device(&CPU)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap();
    t.max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// `got` equals TensorFlow's `want` to float32 rounding (sums of a few dozen products).
fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let got = got.to_device(&CPU).unwrap();
    let (worst, scale) = (max_abs(&(got - want).unwrap()), max_abs(want));
    assert!(
        worst <= 1e-5 * scale.max(1.0),
        "{what}: off by {worst} (values up to {scale})"
    );
}

/// The `Var`s of a 2-D convolution under `name`: the weight (`[out, in, kh, kw]`; a transposed
/// convolution's `[in, out, kh, kw]`) and a bias of `bias` elements (its out channels).
fn conv2d_vars(vb: &VarBuilder, name: &str, dims: (usize, usize, usize, usize), bias: usize) {
    let vb = vb.pp(name);
    vb.get_with_hints(dims, "weight", Init::Const(0.0)).unwrap();
    vb.get_with_hints(bias, "bias", Init::Const(0.0)).unwrap();
}

/// A model of the fixture at `path`'s 2-D convolution `conv` (4 filters of 3 x 2 over 3 channels)
/// and transposed convolution `deconv` (a weight of candle's `[in, out, kh, kw]`, TensorFlow's
/// `[kh, kw, out, in]`), and what `more` adds, on `dev`, loaded under `convention`: every `Var`
/// pairs with a tensor and takes its value.
fn loaded(
    path: &std::path::Path,
    dev: &Device,
    convention: &Convention,
    more: impl Fn(&VarBuilder),
) -> VarMap {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    conv2d_vars(&vb, "conv", (4, 3, 3, 2), 4);
    conv2d_vars(&vb, "deconv", (4, 2, 2, 3), 2);
    more(&vb);
    let mut init = CandleInit::from_varmap(&varmap, convention).unwrap();
    let found = init.map_existing(path).unwrap();
    let vars = varmap.all_vars().len();
    assert_eq!(found.pairs.len(), vars, "{found}");
    assert!(found.unnamed.is_empty(), "{found}");
    init.init_from_checkpoint(path, &found.map).unwrap();
    init.initialize(&Default::default()).unwrap();
    varmap
}

/// `x` plus a bias along axis 1 (channels).
fn plus_bias(x: Tensor, bias: &Tensor) -> Tensor {
    let n = bias.dims1().unwrap();
    x.broadcast_add(&bias.reshape((1, n, 1, 1)).unwrap())
        .unwrap()
}

#[test]
fn tf1_convolutions_give_tensorflows_outputs_in_candle() {
    tf1_convolutions_on(&CPU);
}

/// The `tf1_conv` fixture into `Var`s on `dev`, and candle's convolutions there through them
/// against TensorFlow's outputs (`tests/candle.rs`'s `on_gpu` runs it on a GPU).
pub(super) fn tf1_convolutions_on(dev: &Device) {
    let case = "tf1_conv";
    let path = ckpt_path(case);
    // And a 1-D convolution without bias.
    let varmap = loaded(&path, dev, &Convention::tf1(), |vb| {
        vb.pp("conv1d")
            .get_with_hints((5, 4, 2), "weight", Init::Const(0.0))
            .unwrap();
    });

    // TensorFlow's NHWC / NWC against candle's NCHW / NCW.
    let on = |t: Tensor| t.to_device(dev).unwrap();
    let x = on(recorded(case, "input").permute((0, 3, 1, 2)).unwrap());
    let conv = x.conv2d(&var(&varmap, "conv.weight"), 0, 1, 1, 1).unwrap();
    let conv = plus_bias(conv, &var(&varmap, "conv.bias"));
    let want = recorded(case, "conv").permute((0, 3, 1, 2)).unwrap();
    assert_close(&conv, &want, "conv2d");

    let x1 = on(recorded(case, "input1d").permute((0, 2, 1)).unwrap());
    let conv1d = x1
        .conv1d(&var(&varmap, "conv1d.weight"), 0, 1, 1, 1)
        .unwrap();
    let want = recorded(case, "conv1d").permute((0, 2, 1)).unwrap();
    assert_close(&conv1d, &want, "conv1d");

    let deconv = conv
        .conv_transpose2d(&var(&varmap, "deconv.weight"), 0, 0, 1, 1)
        .unwrap();
    let deconv = plus_bias(deconv, &var(&varmap, "deconv.bias"));
    let want = recorded(case, "deconv").permute((0, 3, 1, 2)).unwrap();
    assert_close(&deconv, &want, "conv_transpose2d");

    // Taken as stored (no transpose) the kernels would not give these outputs: the test sees
    // the layout. (Same element count, another order.)
    let stored = Checkpoint::open(&path)
        .unwrap()
        .read("conv/kernel")
        .unwrap();
    let raw =
        Tensor::from_raw_buffer(stored.bytes().unwrap(), DType::F32, &[4, 3, 3, 2], dev).unwrap();
    let wrong = plus_bias(
        x.conv2d(&raw, 0, 1, 1, 1).unwrap(),
        &var(&varmap, "conv.bias"),
    );
    assert!(max_abs(&(wrong - &conv).unwrap()) > 0.1);
}

#[test]
fn keras_convolutions_give_keras_outputs_in_candle() {
    keras_convolutions_on(&CPU);
}

/// The `tf2_keras_conv` fixture into `Var`s on `dev`, and the model's output there.
pub(super) fn keras_convolutions_on(dev: &Device) {
    let case = "tf2_keras_conv";
    let path = ckpt_path(case);
    let names = Checkpoint::open(&path).unwrap().object_names().unwrap();
    let varmap = loaded(&path, dev, &Convention::keras(names), |_| {});

    let x = recorded(case, "input").permute((0, 3, 1, 2)).unwrap();
    let y = x
        .to_device(dev)
        .unwrap()
        .conv2d(&var(&varmap, "conv.weight"), 0, 1, 1, 1)
        .unwrap();
    let y = plus_bias(y, &var(&varmap, "conv.bias"));
    let y = y
        .conv_transpose2d(&var(&varmap, "deconv.weight"), 0, 0, 1, 1)
        .unwrap();
    let y = plus_bias(y, &var(&varmap, "deconv.bias"));
    let want = recorded(case, "output").permute((0, 3, 1, 2)).unwrap();
    assert_close(&y, &want, "Keras's Conv2D then Conv2DTranspose");
}
