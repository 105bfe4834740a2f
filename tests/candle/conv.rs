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

/// The fixtures' 2-D convolution `conv` (4 filters of 3 x 2 over 3 channels) and transposed
/// convolution `deconv` (a weight of candle's `[in, out, kh, kw]`, TensorFlow's `[kh, kw, out,
/// in]`).
fn conv_and_deconv(vb: &VarBuilder) {
    conv2d_vars(vb, "conv", (4, 3, 3, 2), 4);
    conv2d_vars(vb, "deconv", (4, 2, 2, 3), 2);
}

/// The model `model` builds, on `dev`, loaded from the fixture at `path` under `convention`:
/// every `Var` pairs with a tensor of a shape it takes, and takes its value. With the store and
/// the call's report.
fn loaded(
    path: &std::path::Path,
    dev: &Device,
    convention: &Convention,
    model: impl Fn(&VarBuilder),
) -> (VarMap, CandleInit, tfckpt::InitReport) {
    let varmap = VarMap::new();
    model(&VarBuilder::from_varmap(&varmap, DType::F32, dev));
    let mut init = CandleInit::from_varmap(&varmap, convention).unwrap();
    let found = init.map_existing(path).unwrap();
    let vars = varmap.all_vars().len();
    assert_eq!(found.pairs.len(), vars, "{found}");
    assert!(found.unnamed.is_empty(), "{found}");
    assert!(found.shape_mismatches.is_empty(), "{found}");
    let report = init.init_from_checkpoint(path, &found.map).unwrap();
    init.initialize(&Default::default()).unwrap();
    (varmap, init, report)
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
    let (varmap, ..) = loaded(&path, dev, &Convention::tf1(), |vb| {
        conv_and_deconv(vb);
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
    let (varmap, ..) = loaded(&path, dev, &Convention::keras(names), conv_and_deconv);

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

/// The `Var`s of the `tf1_depthwise` fixture's model under candle's names: a depthwise
/// convolution `dw` (2 input channels, multiplier 2: candle's weight `[4, 1, 3, 2]`, a convolution
/// of 2 groups) and a separable one `sep` (its depthwise step `[4, 1, 2, 2]` of 4 groups, its
/// pointwise step `[3, 4, 1, 1]`), and `tf1`'s names for them renamed to `tf.layers`'s.
fn tf1_depthwise_model(vb: &VarBuilder) {
    conv2d_vars(vb, "dw", (4, 1, 3, 2), 4);
    let sep = vb.pp("sep");
    sep.pp("depthwise")
        .get_with_hints((4, 1, 2, 2), "weight", Init::Const(0.0))
        .unwrap();
    sep.pp("pointwise")
        .get_with_hints((3, 4, 1, 1), "weight", Init::Const(0.0))
        .unwrap();
    sep.get_with_hints(3, "bias", Init::Const(0.0)).unwrap();
}

/// `tf1` with `tf.layers`'s names for depthwise and separable convolutions' kernels.
fn tf_layers_names() -> Convention {
    Convention::tf1_with(|_, _, tf1| {
        let tf1 = tf1?;
        let name = match tf1.name.as_str() {
            "dw/kernel" => "dw/depthwise_kernel".to_string(),
            other => other
                .replace("/depthwise/kernel", "/depthwise_kernel")
                .replace("/pointwise/kernel", "/pointwise_kernel"),
        };
        Some(tfckpt::candle::TfName { name, ..tf1 })
    })
}

#[test]
fn tf1_depthwise_convolutions_give_tensorflows_outputs_in_candle() {
    tf1_depthwise_on(&CPU);
}

/// The `tf1_depthwise` fixture into `Var`s on `dev`, and candle's grouped convolutions there
/// through them against TensorFlow's `depthwise_conv2d` and `separable_conv2d`.
pub(super) fn tf1_depthwise_on(dev: &Device) {
    let case = "tf1_depthwise";
    let path = ckpt_path(case);
    // Candle's [4, 1, 3, 2] is declared as TensorFlow's [3, 2, 1, 4]; the checkpoint's [3, 2, 2,
    // 2] is the same bytes, and pairs.
    let (varmap, init, report) = loaded(&path, dev, &tf_layers_names(), tf1_depthwise_model);
    // Said for each (TensorFlow would refuse such a tensor for a convolution of one input channel).
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    for (var, groups) in [
        ("dw.weight", "2 groups"),
        ("sep.depthwise.weight", "4 groups"),
    ] {
        let said = report
            .warnings
            .iter()
            .any(|w| w.contains(var) && w.contains(groups));
        assert!(said, "{var}: {:?}", report.warnings);
    }
    // The variable now has the tensor's shape, as TensorFlow's would.
    let declared = |name: &str| init.store().variable(name).unwrap().shape.clone();
    assert_eq!(declared("dw/depthwise_kernel"), [3, 2, 2, 2]);
    assert_eq!(declared("sep/depthwise_kernel"), [2, 2, 4, 1]);

    let x = recorded(case, "input").permute((0, 3, 1, 2)).unwrap();
    let x = x.to_device(dev).unwrap();
    let dw = x.conv2d(&var(&varmap, "dw.weight"), 0, 1, 1, 2).unwrap();
    let dw = plus_bias(dw, &var(&varmap, "dw.bias"));
    let want = recorded(case, "dw").permute((0, 3, 1, 2)).unwrap();
    assert_close(&dw, &want, "depthwise conv2d");
    let sep = dw
        .conv2d(&var(&varmap, "sep.depthwise.weight"), 0, 1, 1, 4)
        .unwrap()
        .conv2d(&var(&varmap, "sep.pointwise.weight"), 0, 1, 1, 1)
        .unwrap();
    let sep = plus_bias(sep, &var(&varmap, "sep.bias"));
    let want = recorded(case, "sep").permute((0, 3, 1, 2)).unwrap();
    assert_close(&sep, &want, "separable conv2d");

    // Saved back, each kernel is TensorFlow's again, shape and bytes.
    let tmp = tempfile::tempdir().unwrap();
    init.save_checkpoint(tmp.path().join("back")).unwrap();
    let (saved, stored) = (
        Checkpoint::open(tmp.path().join("back")).unwrap(),
        Checkpoint::open(&path).unwrap(),
    );
    for name in [
        "dw/depthwise_kernel",
        "sep/depthwise_kernel",
        "sep/pointwise_kernel",
    ] {
        let (a, b) = (saved.read(name).unwrap(), stored.read(name).unwrap());
        assert_eq!(a.shape, b.shape, "{name}");
        assert!(a.bytes().unwrap() == b.bytes().unwrap(), "{name}");
    }
}

#[test]
fn a_depthwise_kernel_that_does_not_fit_fails_and_changes_nothing() {
    // dw fits its kernel; `wide` ([4, 1, 3, 3]: another kernel size) mapped to the same tensor
    // does not: the call fails naming it and both shapes, and dw's declared shape is candle's
    // again (nothing of the failed call is kept).
    let path = ckpt_path("tf1_depthwise");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    tf1_depthwise_model(&vb);
    vb.pp("wide")
        .get_with_hints((4, 1, 3, 3), "weight", Init::Const(0.0))
        .unwrap();
    let mut init = CandleInit::from_varmap(&varmap, &tf_layers_names()).unwrap();
    let mut map = init.map_existing(&path).unwrap().map;
    map.push("dw/depthwise_kernel", tfckpt::Target::name("wide/kernel"));
    let e = init.init_from_checkpoint(&path, &map).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e.kind(), tfckpt::ErrorKind::CandleVariable { .. }),
        "{text}"
    );
    for part in ["wide.weight", "[3, 3, 1, 4]", "[3, 2, 2, 2]"] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    let declared = |init: &CandleInit| {
        init.store()
            .variable("dw/depthwise_kernel")
            .unwrap()
            .shape
            .clone()
    };
    assert_eq!(declared(&init), [3, 2, 1, 4]);
    // dw taken as a depthwise kernel, then mapped again to a kernel of other extents: the error
    // gives dw's shape as it is again, not the one it had for this call.
    let mut map = init.map_existing(&path).unwrap().map;
    map.push(
        "sep/depthwise_kernel",
        tfckpt::Target::name("dw/depthwise_kernel"),
    );
    let text = init
        .init_from_checkpoint(&path, &map)
        .unwrap_err()
        .to_string();
    for part in ["dw.weight", "[3, 2, 1, 4]", "[2, 2, 4, 1]"] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    assert!(!text.contains("[3, 2, 2, 2]"), "{text}");
    assert_eq!(declared(&init), [3, 2, 1, 4]);
    // Without them the same model loads.
    let map = init.map_existing(&path).unwrap().map;
    init.init_from_checkpoint(&path, &map).unwrap();
    init.initialize(&Default::default()).unwrap();
}

#[test]
fn keras_depthwise_convolutions_give_keras_outputs_in_candle() {
    keras_depthwise_on(&CPU);
}

/// The `tf2_keras_depthwise` fixture (a MobileNet block's `DepthwiseConv2D` and 1 x 1 `Conv2D`)
/// into `Var`s on `dev`, and the model's output there.
pub(super) fn keras_depthwise_on(dev: &Device) {
    let case = "tf2_keras_depthwise";
    let path = ckpt_path(case);
    let names = Checkpoint::open(&path).unwrap().object_names().unwrap();
    let (varmap, ..) = loaded(&path, dev, &Convention::keras(names), |vb| {
        conv2d_vars(vb, "dw", (6, 1, 3, 2), 6);
        conv2d_vars(vb, "pw", (4, 6, 1, 1), 4);
    });

    let x = recorded(case, "input").permute((0, 3, 1, 2)).unwrap();
    let y = x
        .to_device(dev)
        .unwrap()
        .conv2d(&var(&varmap, "dw.weight"), 0, 1, 1, 3)
        .unwrap();
    let y = plus_bias(y, &var(&varmap, "dw.bias"));
    let y = y.conv2d(&var(&varmap, "pw.weight"), 0, 1, 1, 1).unwrap();
    let y = plus_bias(y, &var(&varmap, "pw.bias"));
    let want = recorded(case, "output").permute((0, 3, 1, 2)).unwrap();
    assert_close(&y, &want, "Keras's DepthwiseConv2D then Conv2D");
}
