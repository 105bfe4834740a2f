//! Values held transposed (candle's `Linear` weights, and convolution kernels, which are
//! transposed on the host): the planner and the tiled transpose kernels against the host's
//! transposed value.

use super::*;

#[test]
fn transposed_device_forms_equal_the_host_value_transposed() {
    // Every variable of 2 or more axes of every fixture (whole, in parts along either axis; V1
    // files prepared on the host) held transposed, and the float32 ones also converted, as a
    // candle `Var` on a GPU takes them: each equals the host value, converted by the host,
    // transposed (a kernel of more axes, `[spatial..., in, out]`, held as `[out, in,
    // spatial...]`, prepared on the host).
    let (mut checked, mut widened, mut kernels) = (0, 0, 0);
    for case in CASES {
        let dir = fixture(case);
        let mut cpu = store_for(&dir);
        cpu.initialize(Device::Cpu).unwrap();
        for sizes in [Sizes::default(), tiny()] {
            for cast in [None, Some(DType::BF16), Some(DType::F16), Some(DType::F32)] {
                let mut gpu = store_for(&dir);
                let mut forms = Vec::new();
                for v in gpu.vars.values() {
                    if v.shape.len() < 2 || v.dtype.size().is_none() {
                        continue;
                    }
                    // Narrowed from float32, or widened to it from bfloat16 and float16.
                    let dtype = match (cast, v.dtype) {
                        (Some(DType::F32), DType::BF16 | DType::F16) => cast,
                        (Some(DType::BF16 | DType::F16), DType::F32) => cast,
                        _ => None,
                    };
                    forms.push((v.name.clone(), v.dtype, dtype));
                }
                for (name, _, dtype) in &forms {
                    let form = crate::base::device::DeviceForm {
                        dtype: *dtype,
                        transposed: true,
                    };
                    gpu.device_forms.insert(name.clone(), form);
                }
                let link = HostLink::default();
                gpu.initialize_on(&link, &LoadOptions::default(), sizes)
                    .unwrap_or_else(|e| panic!("{case} {cast:?}: {e}"));
                for (name, from, dtype) in forms {
                    let what = format!("{case} {name} {cast:?} {sizes:?}");
                    let mut want = cpu.value(&name).unwrap().clone();
                    if let Some(to) = dtype {
                        crate::load::host::cast_tensor(&mut want, from, to).unwrap();
                        widened += usize::from(to == DType::F32);
                    }
                    let got = gpu.device_value(&name).unwrap().to_host().unwrap();
                    assert_eq!(got.dtype, want.dtype, "{what}");
                    let n = want.shape.len();
                    let held: Vec<u64> = [
                        &[want.shape[n - 1], want.shape[n - 2]][..],
                        &want.shape[..n - 2],
                    ]
                    .concat();
                    assert_eq!(got.shape, held, "{what}");
                    assert!(got.bytes().unwrap() == transposed(&want), "{what}");
                    checked += 1;
                    kernels += usize::from(n > 2);
                }
                assert_eq!(
                    link.live_allocations(),
                    gpu.device_values().count(),
                    "{case}"
                );
            }
        }
    }
    assert!(
        checked > 100 && widened > 0 && kernels > 10,
        "{checked} {widened} {kernels}"
    );
}

#[test]
fn one_row_or_one_column_values_held_transposed_load_as_they_lie() {
    // A [n, 1] or [1, n] value lies in memory the same transposed: it is copied straight from
    // the file, no scratch and no kernel (a tall one was cut into n one-element rows on the
    // host first). A cast still goes through scratch; [n, 2] is a real transpose.
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("narrow");
    let n = 3001u64;
    let shapes: [(&str, [u64; 2]); 3] = [("tall", [n, 1]), ("wide", [1, n]), ("two", [n, 2])];
    let mut w = crate::CheckpointWriter::create(&prefix, Default::default()).unwrap();
    for (name, shape) in &shapes {
        let count = shape[0] * shape[1];
        let values: Vec<f32> = (0..count).map(|i| i as f32 * 0.5 - 7.0).collect();
        let t = crate::Tensor::from_f32(shape, &values).unwrap();
        w.add(name, (&t).into()).unwrap();
    }
    w.finish().unwrap();
    let store = |names: &[&str]| {
        let mut s = VariableStore::new();
        for (name, shape) in shapes.iter().filter(|(n, _)| names.contains(n)) {
            s.get_variable(name, shape, DType::F32, Init::Zeros)
                .unwrap();
            let map = AssignmentMap::from([(*name, Target::name(*name))]);
            init_from_checkpoint(&mut s, &prefix, &map).unwrap();
        }
        s
    };
    let mut cpu = store(&["tall", "wide", "two"]);
    cpu.initialize(Device::Cpu).unwrap();
    for (names, dtype) in [
        (&["tall", "wide"][..], None),
        (&["tall", "wide"][..], Some(DType::BF16)),
        (&["tall", "wide", "two"][..], None),
    ] {
        let mut gpu = store(names);
        for name in names {
            let form = crate::base::device::DeviceForm {
                dtype,
                transposed: true,
            };
            gpu.device_forms.insert(name.to_string(), form);
        }
        let link = HostLink::default();
        let report = gpu
            .initialize_on(&link, &LoadOptions::default(), tiny())
            .unwrap();
        for name in names {
            let mut want = cpu.value(name).unwrap().clone();
            if let Some(to) = dtype {
                crate::load::host::cast_tensor(&mut want, DType::F32, to).unwrap();
            }
            let got = gpu.device_value(name).unwrap().to_host().unwrap();
            assert_eq!(got.shape, [want.shape[1], want.shape[0]], "{name}");
            assert!(
                got.bytes().unwrap() == transposed(&want),
                "{name} {dtype:?}"
            );
        }
        let scratch = report.device.unwrap().scratch_bytes;
        let moved = names.contains(&"two") || dtype.is_some();
        assert_eq!(scratch > 0, moved, "{names:?} {dtype:?}: {scratch}");
    }
}

#[test]
fn transposed_launches_put_each_source_element_at_its_transposed_place() {
    // Runs of a [rows, cols] value (source offsets relative to the piece), each element written
    // where the transposed destination holds it: (i, j) at j * rows + i, from the source element
    // the run gives it. Cases: a piece of rows 2..6, columns 1..4 of [7, 5] (strided runs, one
    // 2-D block); one run over whole and partial rows; one that splits into equal pieces whose
    // stride is not whole rows (one launch per row); and whole rows two rows apart (one launch
    // whose rows are two columns of the destination apart: no plan makes such runs today, each
    // target keeping one contiguous range, but the function takes any runs).
    use crate::base::slice::Run;
    let strided: Vec<Run> = (2..6)
        .map(|i| Run {
            src: (i - 2) * 3,
            dst: i * 5 + 1,
            len: 3,
        })
        .collect();
    let cases = [
        ((7, 5), strided),
        (
            (7, 5),
            vec![Run {
                src: 4,
                dst: 3 * 5 + 2,
                len: 4 * 5 - 2,
            }],
        ),
        (
            (3, 4),
            vec![Run {
                src: 1,
                dst: 2,
                len: 4,
            }],
        ),
        (
            (6, 5),
            vec![
                Run {
                    src: 0,
                    dst: 0,
                    len: 5,
                },
                Run {
                    src: 5,
                    dst: 10,
                    len: 5,
                },
            ],
        ),
    ];
    for ((rows, cols), runs) in cases {
        let mut want = std::collections::BTreeMap::new();
        for r in &runs {
            for k in 0..r.len {
                let d = r.dst + k;
                want.insert((d / cols, d % cols), r.src + k);
            }
        }
        let ks = crate::gpu::plan::transposed_launches(
            &runs,
            (rows, cols),
            "transpose2d_1",
            (0, 1),
            (0, 1),
        );
        let mut got = std::collections::BTreeMap::new();
        for k in &ks {
            assert_eq!(k.dst_col, rows);
            for r in 0..k.rows {
                for c in 0..k.row {
                    let d = k.dst + r * k.dst_stride + c * k.dst_col;
                    let src = k.src + r * k.src_stride + c;
                    assert!(got.insert((d % rows, d / rows), src).is_none(), "{d} twice");
                }
            }
        }
        assert_eq!(got, want, "{rows}x{cols}: {ks:?}");
    }
}
