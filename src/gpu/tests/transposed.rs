//! Values held transposed (candle's `Linear` weights and convolution kernels): the planner and
//! the tiled transpose kernels against the host's transposed value.

use super::*;

#[test]
fn transposed_device_forms_equal_the_host_value_transposed() {
    // Every variable of 2 or more axes of every fixture (whole, in parts along either axis; V1
    // files prepared on the host) held transposed, and the float32 ones also converted, as a
    // candle `Var` on a GPU takes them: each equals the host value, converted by the host,
    // transposed (a kernel of more axes, `[spatial..., in, out]`, held as `[out, in,
    // spatial...]`, by the same kernels).
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
                        held: crate::base::copy::Held::Transposed,
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
                held: crate::base::copy::Held::Transposed,
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
    // Runs of a [rows, mid, cols] value (source offsets relative to the piece), each element
    // written where the held destination [cols, mid, rows] holds it: (r, m, c) at
    // (c * mid + m) * rows + r, from the source element the run gives it, and no element twice.
    // 2-D cases (mid 1): a piece of rows 2..6, columns 1..4 of [7, 5] (strided runs, one 2-D
    // block); one run over whole and partial rows; one that splits into equal pieces whose
    // stride is not whole rows (one launch per row); and whole rows two rows apart (one launch
    // whose rows are two columns of the destination apart: no plan makes such runs today, each
    // target keeping one contiguous range, but the function takes any runs). Kernels: whole ones
    // of more positions than channels, fewer, as many; a run over parts of rows; a box cut along
    // the channel axis; and the unit extents folded away.
    use crate::base::slice::Run;
    let run = |src, dst, len| Run { src, dst, len };
    let whole = |n| vec![run(0, 0, n)];
    let strided: Vec<Run> = (2..6).map(|i| run((i - 2) * 3, i * 5 + 1, 3)).collect();
    // Channels 1..3 of a [2, 2, 4, 3] kernel (rows 4, mid 4, cols 3): rows of 3 per (r, m).
    let channels: Vec<Run> = (0..4u64)
        .flat_map(|r| (1..3u64).map(move |m| (r, m)))
        .enumerate()
        .map(|(k, (r, m))| run(k as u64 * 3, (r * 4 + m) * 3, 3))
        .collect();
    let cases = [
        ((7, 1, 5), strided, None),
        ((7, 1, 5), vec![run(4, 3 * 5 + 2, 4 * 5 - 2)], None),
        ((3, 1, 4), vec![run(1, 2, 4)], None),
        ((6, 1, 5), vec![run(0, 0, 5), run(5, 10, 5)], None),
        // 3 x 3 positions, 16 in, 5 out: one launch per position; 4 in: one per channel.
        ((9, 16, 5), whole(9 * 16 * 5), Some(9)),
        ((9, 4, 5), whole(9 * 4 * 5), Some(4)),
        ((49, 3, 4), whole(49 * 3 * 4), Some(3)),
        ((3, 3, 2), whole(3 * 3 * 2), Some(3)),
        ((5, 4, 3), vec![run(2, 7, 40)], None),
        ((4, 4, 3), channels, Some(4)),
        // [1, 4, 5] is the 2-D [4, 5]: one launch; [6, 4, 1] the 2-D [6, 4]: one launch.
        ((1, 4, 5), whole(20), Some(1)),
        ((6, 4, 1), whole(24), Some(1)),
    ];
    for ((rows, mid, cols), runs, launches) in cases {
        let mut want = std::collections::BTreeMap::new();
        for r in &runs {
            for k in 0..r.len {
                let d = r.dst + k;
                let (i, c) = (d / cols, d % cols);
                want.insert((i / mid, i % mid, c), r.src + k);
            }
        }
        let dims = crate::gpu::plan::held_moves((rows, mid, cols)).unwrap();
        let ks =
            crate::gpu::plan::transposed_launches(&runs, dims, "transpose2d_1", (0, 1), (0, 1));
        if let Some(n) = launches {
            assert_eq!(ks.len(), n, "{rows}x{mid}x{cols}: {ks:?}");
        }
        let mut got = std::collections::BTreeMap::new();
        for k in &ks {
            assert_eq!(k.dst_col, dims.0 * dims.1);
            for r in 0..k.rows {
                for c in 0..k.row {
                    let d = k.dst + r * k.dst_stride + c * k.dst_col;
                    let src = k.src + r * k.src_stride + c;
                    let at = (d % rows, d / rows % mid, d / (rows * mid));
                    assert!(got.insert(at, src).is_none(), "{d} twice");
                }
            }
        }
        assert_eq!(got, want, "{rows}x{mid}x{cols}: {ks:?}");
    }
    // The layouts that are the value's own, copied as they lie.
    for dims in [(1, 1, 5), (5, 1, 1), (1, 5, 1), (1, 1, 1)] {
        assert_eq!(crate::gpu::plan::held_moves(dims), None, "{dims:?}");
    }
}

#[test]
fn random_pieces_of_kernels_launch_to_their_held_places() {
    // A stored piece (`have`) meeting a variable's box (`want`) of a kernel of 3 or 4 axes, as
    // the planner cuts it into runs: every element of the meeting written once, at the place the
    // variable holds it transposed, from its source element.
    use crate::base::slice::{for_each_run, Region};
    let mut rnd = crate::base::xorshift(11);
    let mut planned = 0;
    for _ in 0..3000 {
        let shape: Vec<u64> = (0..3 + rnd(2)).map(|_| 1 + rnd(6)).collect();
        let boxes = [(); 2].map(|_| Region::random(&mut rnd, &shape));
        let [mut have, want] = boxes;
        if rnd(2) == 0 {
            // A tensor stored whole.
            have = Region::new(shape.iter().map(|&d| (0, d)).collect());
        }
        let Some(inter) = have.intersect(&want) else {
            continue;
        };
        let mut runs = Vec::new();
        for_each_run(&have, &want, &inter, |r| runs.push(r));
        let (rows, mid, cols) = crate::base::copy::held_dims(&want.shape()).unwrap();
        let (rows, mid, cols) = (rows as u64, mid as u64, cols as u64);
        let Some(dims) = crate::gpu::plan::held_moves((rows, mid, cols)) else {
            assert!([rows, mid, cols].iter().filter(|&&d| d > 1).count() <= 1);
            continue;
        };
        let mut want_at = std::collections::BTreeMap::new();
        for r in &runs {
            for k in 0..r.len {
                let d = r.dst + k;
                let (i, c) = (d / cols, d % cols);
                let held = (c * mid + i % mid) * rows + i / mid;
                want_at.insert(held, r.src + k);
            }
        }
        let ks =
            crate::gpu::plan::transposed_launches(&runs, dims, "transpose2d_1", (0, 1), (0, 1));
        let mut got = std::collections::BTreeMap::new();
        for k in &ks {
            for r in 0..k.rows {
                for c in 0..k.row {
                    let d = k.dst + r * k.dst_stride + c * k.dst_col;
                    let src = k.src + r * k.src_stride + c;
                    assert!(got.insert(d, src).is_none(), "{d} twice: {ks:?}");
                }
            }
        }
        assert_eq!(got, want_at, "{have:?} into {want:?}: {ks:?}");
        planned += 1;
    }
    assert!(planned > 400, "{planned}");
}

#[test]
fn kernels_stored_in_slices_load_held_into_whole_and_partitioned_variables() {
    // A [3, 2, 5, 6] kernel stored whole, in slices along its input channels (axis 2) and along
    // its first spatial axis, loaded into a whole variable and into variables partitioned along
    // axis 0 and along axis 2, each value (each part) held transposed, float32 and narrowed to
    // bfloat16: each equals the host value held, byte for byte.
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("k");
    let shape = [3u64, 2, 5, 6];
    let n: u64 = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 9.0).collect();
    let whole = crate::Tensor::from_f32(&shape, &values).unwrap();
    let mut w = crate::CheckpointWriter::create(&prefix, Default::default()).unwrap();
    w.add("whole", (&whole).into()).unwrap();
    for (name, axis, cuts) in [("by_in", 2, [0u64, 2, 5]), ("by_row", 0, [0, 1, 3])] {
        for k in 0..2 {
            let mut ranges: Vec<(u64, u64)> = shape.iter().map(|&d| (0, d)).collect();
            ranges[axis] = (cuts[k], cuts[k + 1] - cuts[k]);
            let slice = crate::Slice::from_ranges(&ranges);
            let region = slice.region(&shape);
            let mut part_shape = shape.to_vec();
            part_shape[axis] = ranges[axis].1;
            let mut part = Vec::new();
            crate::base::slice::for_each_run(
                &crate::base::slice::Region::new(shape.iter().map(|&d| (0, d)).collect()),
                &region,
                &region,
                |r| part.extend_from_slice(&values[r.src as usize..(r.src + r.len) as usize]),
            );
            let t = crate::Tensor::from_f32(&part_shape, &part).unwrap();
            w.add_slice(name, &shape, &slice, (&t).into()).unwrap();
        }
    }
    w.finish().unwrap();
    // Each stored tensor into a whole variable and into parts along axes 0 and 2.
    let make = || {
        let mut store = VariableStore::new();
        let mut map = AssignmentMap::new();
        for stored in ["whole", "by_in", "by_row"] {
            for (var, parts) in [
                ("w", [1, 1, 1, 1]),
                ("p0", [3, 1, 1, 1]),
                ("p2", [1, 1, 2, 1]),
            ] {
                let name = format!("{stored}/{var}");
                if var == "w" {
                    store
                        .get_variable(&name, &shape, DType::F32, Init::Zeros)
                        .unwrap();
                } else {
                    store
                        .get_partitioned_variable(&name, &shape, DType::F32, &parts, Init::Zeros)
                        .unwrap();
                }
                map.push(stored, Target::name(&name));
            }
        }
        init_from_checkpoint(&mut store, &prefix, &map).unwrap();
        store
    };
    let mut cpu = make();
    cpu.initialize(Device::Cpu).unwrap();
    let mut checked = 0;
    for sizes in [Sizes::default(), tiny()] {
        for dtype in [None, Some(DType::BF16)] {
            let mut gpu = make();
            let names: Vec<String> = gpu
                .variables()
                .filter(|v| cpu.value(&v.name).is_some())
                .map(|v| v.name.clone())
                .collect();
            for name in &names {
                let form = crate::base::device::DeviceForm {
                    dtype,
                    held: crate::base::copy::Held::Transposed,
                };
                gpu.device_forms.insert(name.clone(), form);
            }
            let link = HostLink::default();
            let report = gpu
                .initialize_on(&link, &LoadOptions::default(), sizes)
                .unwrap_or_else(|e| panic!("{sizes:?} {dtype:?}: {e}"));
            assert!(report.device.unwrap().scratch_bytes > 0);
            for name in &names {
                let mut want = cpu.value(name).unwrap().clone();
                if let Some(to) = dtype {
                    crate::load::host::cast_tensor(&mut want, DType::F32, to).unwrap();
                }
                let got = gpu.device_value(name).unwrap().to_host().unwrap();
                let held = crate::base::copy::held_shape(&want.shape);
                assert_eq!(got.shape, held, "{name}");
                assert!(
                    got.bytes().unwrap() == transposed(&want),
                    "{name} {sizes:?} {dtype:?}"
                );
                checked += 1;
            }
        }
    }
    // 3 stored tensors x (1 whole + 3 + 2 parts) x 2 sizes x 2 dtypes.
    assert_eq!(checked, 3 * 6 * 4);
}

#[test]
fn depthwise_kernels_on_the_device_equal_the_host_value_held() {
    // The depthwise fixtures' kernels of 3 or more axes (whole and re-partitioned along two
    // axes, each part its own value) held as a depthwise kernel, `[spatial..., in, mult]` as
    // `[in * mult, 1, spatial...]`, float32 and narrowed to bfloat16: each equals the host value
    // as the transpose of `[spatial, in * mult]`.
    use crate::base::copy::Held;
    let mut checked = 0;
    for case in ["tf1_depthwise", "tf2_keras_depthwise"] {
        let dir = fixture(case);
        let mut cpu = store_for(&dir);
        cpu.initialize(Device::Cpu).unwrap();
        for sizes in [Sizes::default(), tiny()] {
            for dtype in [None, Some(DType::BF16)] {
                let mut gpu = store_for(&dir);
                let names: Vec<String> = gpu
                    .vars
                    .values()
                    .filter(|v| v.shape.len() > 2 && v.dtype == DType::F32)
                    .map(|v| v.name.clone())
                    .collect();
                for name in &names {
                    let form = crate::base::device::DeviceForm {
                        dtype,
                        held: Held::Depthwise,
                    };
                    gpu.device_forms.insert(name.clone(), form);
                }
                let link = HostLink::default();
                gpu.initialize_on(&link, &LoadOptions::default(), sizes)
                    .unwrap_or_else(|e| panic!("{case}: {e}"));
                for name in &names {
                    let mut want = cpu.value(name).unwrap().clone();
                    if let Some(to) = dtype {
                        crate::load::host::cast_tensor(&mut want, DType::F32, to).unwrap();
                    }
                    let n = want.shape.len();
                    let got = gpu.device_value(name).unwrap().to_host().unwrap();
                    let (i, k) = (want.shape[n - 2], want.shape[n - 1]);
                    let held: Vec<u64> = [&[i * k, 1][..], &want.shape[..n - 2]].concat();
                    assert_eq!(got.shape, held, "{case} {name}");
                    let rows = want.shape[..n - 2].iter().product::<u64>() as usize;
                    let size = want.dtype.size().unwrap();
                    let mut out = vec![0u8; want.bytes().unwrap().len()];
                    crate::base::copy::transpose_whole(
                        want.bytes().unwrap(),
                        rows,
                        1,
                        size,
                        &mut out,
                    );
                    assert!(
                        got.bytes().unwrap() == out,
                        "{case} {name} {sizes:?} {dtype:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 4 * 4, "{checked}");
}

#[test]
fn any_runs_launch_once_to_their_held_places_within_their_extents() {
    // Arbitrary disjoint runs (not only a box's), in file order or shuffled, over `[rows, mid,
    // cols]` values of extents 0 to 11: every element written once, at its held place, inside
    // the value, and each launch's last element its highest address (the extent the emulated
    // device checks a launch's memory against).
    use crate::base::slice::Run;
    let mut rnd = crate::base::xorshift(0x5eed);
    let mut planned = 0;
    for _ in 0..20_000 {
        let (rows, mid, cols) = (rnd(12), rnd(12), rnd(12));
        let n = rows * mid * cols;
        let Some(dims) = crate::gpu::plan::held_moves((rows, mid, cols)) else {
            continue;
        };
        let mut runs = Vec::new();
        let mut at = 0;
        while at < n {
            let len = 1 + rnd((n - at).min(3 * cols + 2));
            if rnd(3) != 0 {
                runs.push((at, len.min(n - at)));
            }
            at += len + rnd(3);
        }
        if rnd(2) == 0 {
            for i in (1..runs.len()).rev() {
                runs.swap(i, rnd(i as u64 + 1) as usize);
            }
        }
        // Sources packed in the runs' order, with gaps.
        let mut src = 0;
        let runs: Vec<Run> = runs
            .into_iter()
            .map(|(dst, len)| {
                let r = Run { src, dst, len };
                src += len + rnd(2);
                r
            })
            .collect();
        let mut want_at = std::collections::BTreeMap::new();
        for r in &runs {
            for k in 0..r.len {
                let (i, c) = ((r.dst + k) / cols, (r.dst + k) % cols);
                want_at.insert((c * mid + i % mid) * rows + i / mid, r.src + k);
            }
        }
        let ks =
            crate::gpu::plan::transposed_launches(&runs, dims, "transpose2d_4", (0, 4), (0, 4));
        let mut got = std::collections::BTreeMap::new();
        for k in &ks {
            let (_, extent) = crate::gpu::emulated::cpu_kernels::extents(k, 4, 4);
            let mut end = 0;
            for r in 0..k.rows {
                for c in 0..k.row {
                    let d = k.dst / 4 + r * k.dst_stride + c * k.dst_col;
                    end = end.max(d - k.dst / 4 + 1);
                    assert!(d < n, "{d} outside {n}: {k:?}");
                    let s = k.src / 4 + r * k.src_stride + c;
                    assert!(got.insert(d, s).is_none(), "{d} twice: {ks:?}");
                }
            }
            assert_eq!(end * 4, extent as u64, "extent of {k:?}");
        }
        assert_eq!(got, want_at, "{rows}x{mid}x{cols} {runs:?}: {ks:?}");
        planned += 1;
    }
    assert!(planned > 1000, "{planned}");
}
