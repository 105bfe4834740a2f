//! The kernels: made ready before any byte moves, casts, memsets of unmapped initializers, scratch
//! one wave at a time, and every kernel source run on the CPU against the host conversion.

use super::*;

/// Kernels that cannot be made ready fail the load before any byte moves; a load that needs no
/// kernel does not ask for them.
#[test]
fn kernels_are_made_ready_before_any_byte_moves_and_only_when_needed() {
    let (mut with, mut without) = (0, 0);
    for case in CASES {
        let dir = fixture(case);
        let link = HostLink::default();
        let kernels = store_for(&dir)
            .initialize_on(&link, &LoadOptions::default(), tiny())
            .unwrap()
            .device
            .unwrap()
            .kernels;
        let link = HostLink::default();
        link.refuse_kernels.store(true, Ordering::Relaxed);
        let mut gpu = store_for(&dir);
        let r = gpu.initialize_on(&link, &LoadOptions::default(), tiny());
        if kernels > 0 {
            with += 1;
            let err = r.unwrap_err();
            assert!(
                err.to_string().contains("could not be made ready"),
                "{case}: {err}"
            );
            assert_eq!(link.copies.load(Ordering::Relaxed), 0, "{case}");
            assert_eq!(link.live_allocations(), 0, "{case}");
            assert!(!gpu.is_initialized(), "{case}");
        } else {
            without += 1;
            r.unwrap_or_else(|e| panic!("{case}: {e}"));
        }
    }
    assert!(
        with > 0 && without > 0,
        "{with} cases with kernels, {without} without"
    );
}

#[test]
fn casts_equal_the_host_cast() {
    for (case, from, to) in [
        ("repartition_v2", DType::F32, DType::BF16),
        ("repartition_v2", DType::F32, DType::F16),
        ("repartition_v2", DType::F16, DType::F32),
        ("dtypes/dtypes", DType::BF16, DType::F32),
        ("repartition_v1", DType::F32, DType::BF16),
    ] {
        let dir = fixture(case);
        let options = LoadOptions::new().cast(from, to);
        let mut cpu = store_for(&dir);
        let cpu_report = cpu.initialize_with(Device::Cpu, &options).unwrap();
        let link = HostLink::default();
        let mut gpu = store_for(&dir);
        let report = gpu.initialize_on(&link, &options, tiny()).unwrap();
        assert_same(&cpu, &gpu, &format!("{case} {from}->{to}"));
        // Bytes in the cast dtype on either device (the GPU counted the stored one).
        assert_eq!(report.bytes, cpu_report.bytes, "{case} {from}->{to}");
        let casts = cpu
            .variables()
            .filter(|v| v.dtype == from)
            .inspect(|v| assert_eq!(cpu.value(&v.name).unwrap().dtype, to))
            .count();
        assert!(casts > 0, "{case}: nothing of {from}");
        if case != "repartition_v1" {
            assert!(report.device.unwrap().kernels > 0);
        }
    }
    // The cast itself against the `half` crate, on a float32 tensor TensorFlow wrote.
    let dir = fixture("repartition_v2");
    let mut plain = store_for(&dir);
    plain.initialize(Device::Cpu).unwrap();
    let mut gpu = store_for(&dir);
    let options = LoadOptions::new().cast(DType::F32, DType::BF16);
    gpu.initialize_on(&HostLink::default(), &options, Sizes::default())
        .unwrap();
    let v = plain
        .variables()
        .find(|v| v.dtype == DType::F32 && v.name.starts_with("axis1/"))
        .unwrap();
    let f = plain.value(&v.name).unwrap().bytes().unwrap().to_vec();
    let want: Vec<u8> = f
        .chunks(4)
        .flat_map(|c| half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
        .collect();
    let got = gpu.device_value(&v.name).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    assert_eq!(got.shape(), &v.shape[..]);
    assert_eq!(got.byte_len(), want.len());
    assert_eq!(got.to_host().unwrap().bytes().unwrap(), &want[..]);
    assert_eq!(
        format!("{got:?}"),
        format!(
            "DeviceTensor {{ device: \"emulated:0\", dtype: BF16, shape: {:?}, ptr: {:#x} }}",
            v.shape,
            got.device_ptr()
        )
    );
}

#[test]
fn unmapped_initializers_by_memset_or_upload() {
    use crate::Init;
    let dir = fixture("repartition_v2");
    let make = || {
        let mut store = store_for(&dir);
        for (i, (dtype, init)) in [
            (DType::F32, Init::Zeros),
            (DType::F32, Init::Constant(0.5)),   // D32
            (DType::F16, Init::Ones),            // D16
            (DType::BF16, Init::Constant(-2.0)), // D16
            (DType::I8, Init::IntConstant(7)),   // D8
            (DType::Bool, Init::Ones),           // D8
            (DType::F64, Init::Constant(0.25)),  // 8 bytes: uploaded
            (DType::I64, Init::IntConstant(-1)), // all 0xff: D8
            (DType::C64, Init::Ones),            // 8 bytes, mixed: uploaded
        ]
        .into_iter()
        .enumerate()
        {
            store
                .get_variable(&format!("init/{i}"), &[3, 5], dtype, init)
                .unwrap();
        }
        store
            .get_variable("init/empty", &[0, 4], DType::F32, Init::Ones)
            .unwrap();
        store
    };
    for options in [
        LoadOptions::default(),
        LoadOptions::new().cast(DType::F32, DType::BF16),
    ] {
        let mut cpu = make();
        cpu.initialize_with(Device::Cpu, &options).unwrap();
        let link = HostLink::default();
        let mut gpu = make();
        let r = gpu.initialize_on(&link, &options, tiny()).unwrap();
        assert!(r.device.unwrap().filled_bytes > 0);
        assert_same(&cpu, &gpu, &format!("{options:?}"));
    }
}

#[test]
fn scratch_is_held_one_wave_at_a_time() {
    // Every 2-D variable held transposed (all through scratch): with no budget one wave holds
    // every piece's scratch at once; with 1 KiB the waves take turns, and the device memory
    // beyond the values peaks at the largest wave's scratch, never their sum.
    let mut bounded = 0;
    for case in [
        "repartition_v2",
        "h1_partitioned",
        "tf2_object",
        "dtypes/dtypes",
    ] {
        let dir = fixture(case);
        let mut cpu = store_for(&dir);
        cpu.initialize(Device::Cpu).unwrap();
        let mut held = Vec::new();
        for budget in [usize::MAX / 2, 1 << 10] {
            let mut gpu = store_for(&dir);
            let names: Vec<String> = gpu
                .vars
                .values()
                .filter(|v| v.shape.len() == 2 && v.dtype.size().is_some())
                .map(|v| v.name.clone())
                .collect();
            for name in &names {
                let form = crate::base::device::DeviceForm {
                    dtype: None,
                    held: crate::base::copy::Held::Transposed,
                };
                gpu.device_forms.insert(name.clone(), form);
            }
            let link = HostLink::default();
            let sizes = Sizes {
                scratch: budget,
                ..tiny()
            };
            let report = gpu
                .initialize_on(&link, &LoadOptions::default(), sizes)
                .unwrap();
            for name in &names {
                let got = gpu.device_value(name).unwrap().to_host().unwrap();
                let want = transposed(cpu.value(name).unwrap());
                assert!(got.bytes().unwrap() == want, "{case} {name} {budget}");
            }
            let values: usize = gpu.device_values().map(|(_, t)| t.mem.len()).sum();
            let device = report.device.unwrap();
            let scratch = device.scratch_bytes as usize;
            // Its allocations are timed (a sum of positive times, one per wave).
            assert!(
                device.times.scratch > 0.0,
                "{case} {budget}: {:?}",
                device.times
            );
            let beyond = link.peak_bytes.load(Ordering::Relaxed) - values;
            assert_eq!(beyond, scratch, "{case} {budget}");
            // A wave is within the budget, or one piece (at most a whole stored tensor, which
            // the layout also maps whole) on its own.
            let largest = gpu
                .device_values()
                .map(|(_, t)| t.mem.len().next_multiple_of(256))
                .max()
                .unwrap_or(0);
            assert!(scratch <= budget.max(largest), "{case} {budget}: {scratch}");
            held.push(scratch);
        }
        // A case whose scratch fits 1 KiB anyway runs in one wave either way.
        assert!(held[1] <= held[0].max(1 << 10), "{case}: {held:?}");
        bounded += usize::from(held[1] < held[0]);
    }
    assert!(bounded >= 2, "{bounded}");
}

/// Every kernel source of `kernels/`, run on the CPU (`emulated::cpu_kernels`), against the host
/// conversion element by element: ragged shapes (rows and row lengths that are not multiples of a
/// tile or a block), every 16-bit value through each bf16 and f16 kernel (random bits otherwise),
/// row strides with gaps, a destination with gaps that must stay untouched, and
/// grids of the GPU path's own size and of one and a few blocks, so that the grid-stride loops
/// (and the transposes' barriers inside them) run many rounds.
#[test]
fn every_kernel_source_run_on_the_cpu_equals_the_host_conversion() {
    use crate::gpu::emulated::cpu_kernels;
    if !cpu_kernels::available() {
        return; // no C++ compiler: noted by `get`, and a failure under TFCKPT_REQUIRE_CXX=1
    }
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut launches = 0;
    for &(from, to, rows_kernel, transpose_kernel) in crate::gpu::plan::KERNELS {
        let (es, ed) = (from.size().unwrap(), to.size().unwrap());
        for (name, transpose) in [(rows_kernel, false), (transpose_kernel, true)] {
            for (rows, row) in [
                (1, 1),
                (7, 300),
                (33, 31),
                (64, 64),
                (70, 3),
                (5, 1030),
                (256, 256),
            ] {
                let src_stride = row + next(3);
                // A transpose writes element (r, c) at r + c * dst_col (a [row, rows] value with
                // padded rows); the others write rows of `dst_stride`.
                let (dst_stride, dst_col) = if transpose {
                    (1, rows + next(3))
                } else {
                    (row + next(3), 0)
                };
                let k = crate::gpu::exec::Kernel {
                    name,
                    src: 0,
                    dst: 0,
                    rows,
                    row,
                    src_stride,
                    dst_stride,
                    dst_col,
                };
                let mut src: Vec<u8> = (0..((rows - 1) * src_stride + row) as usize * es)
                    .map(|_| next(256) as u8)
                    .collect();
                if (rows, row, es) == (256, 256, 2) {
                    // Every 16-bit value once (bf16 and f16: every NaN, infinity, subnormal).
                    for (i, v) in (0..=u16::MAX).enumerate() {
                        let at = ((i as u64 / row * src_stride + i as u64 % row) * 2) as usize;
                        src[at..at + 2].copy_from_slice(&v.to_le_bytes());
                    }
                }
                let dst_len = ((rows - 1) * dst_stride + (row - 1) * dst_col.max(1) + 1) as usize;
                let before = vec![0xa5u8; dst_len * ed];
                let mut want = before.clone();
                for r in 0..rows {
                    for c in 0..row {
                        let s = ((r * src_stride + c) as usize) * es;
                        let d = ((r * dst_stride + c * dst_col.max(1)) as usize) * ed;
                        crate::load::cast::convert(from, to, &src[s..s + es], &mut want[d..d + ed]);
                    }
                }
                let (grid, block) = k.launch_dims();
                for dims in [(grid, block), ((1, 1), block), ((2, 3), block)] {
                    let mut got = before.clone();
                    cpu_kernels::run_on(&k, dims, &src, &mut got)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(
                        got == want,
                        "{name}, {rows} rows of {row}, strides {src_stride}/{dst_stride}/{dst_col}, \
                         grid {dims:?}: differs from the host conversion"
                    );
                    launches += 1;
                }
            }
        }
    }
    assert_eq!(launches, crate::gpu::plan::KERNELS.len() * 2 * 7 * 3);
}
