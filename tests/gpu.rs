//! The CUDA tests: on a real GPU, every fixture loaded whole and re-partitioned along two axes,
//! through both transfer paths, with and without casts, into library and trainer memory, equals
//! the host load byte for byte; a damaged shard fails the load. Built with `--features cuda`;
//! without a GPU each test says so and passes, unless `TFCKPT_REQUIRE_GPU=1` (set by
//! `scripts/gpu-check.sh`), which turns a missing GPU into a failure.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};

use tfckpt::{
    init_from_checkpoint, AssignmentMap, Checkpoint, DType, Device, DeviceBuffer, ErrorKind, Init,
    LoadOptions, Target, Tensor, VariableStore,
};

/// The repository root: `TFCKPT_ROOT` when the binary runs away from where it was built.
fn root() -> PathBuf {
    std::env::var_os("TFCKPT_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn gpu() -> bool {
    let n = Device::gpu_count();
    if n == 0 {
        assert!(
            std::env::var_os("TFCKPT_REQUIRE_GPU").is_none(),
            "TFCKPT_REQUIRE_GPU is set but no GPU is usable"
        );
        eprintln!("no GPU: nothing checked");
    }
    n > 0
}

const CASES: &[&str] = &[
    "dtypes/dtypes",
    "dtypes_extra/extra",
    "partitioned_axes",
    "sharded",
    "sharded_partitioned",
    "repartition_v2",
    "repartition_v1",
    "v1",
    "v1_sharded",
    "tf2_object",
    "h1_partitioned",
];

/// Every readable tensor mapped whole, in 3 parts along axis 0 and 2 along axis 1, plus one
/// unmapped variable (the same layout as the emulated-device unit tests).
fn store_for(dir: &Path) -> VariableStore {
    let ckpt = Checkpoint::open(dir).unwrap();
    let mut store = VariableStore::new();
    let mut map = AssignmentMap::new();
    for info in ckpt.tensors() {
        if ckpt.read(&info.name).is_err() {
            continue;
        }
        let base = info.name.replace(':', "_");
        let mut layouts = vec![("whole", vec![])];
        if info.shape.first().is_some_and(|&d| d >= 3) {
            let mut p = vec![1; info.shape.len()];
            p[0] = 3;
            layouts.push(("axis0", p));
        }
        if info.shape.get(1).is_some_and(|&d| d >= 2) {
            let mut p = vec![1; info.shape.len()];
            p[1] = 2;
            layouts.push(("axis1", p));
        }
        for (tag, parts) in layouts {
            let name = format!("{tag}/{base}");
            let made = if parts.is_empty() {
                store
                    .get_variable(&name, &info.shape, info.dtype, Init::Zeros)
                    .map(drop)
            } else {
                store
                    .get_partitioned_variable(&name, &info.shape, info.dtype, &parts, Init::Zeros)
                    .map(drop)
            };
            if made.is_ok() {
                map.push(info.name.clone(), Target::name(name));
            }
        }
    }
    store
        .get_variable("unmapped/ones", &[5, 3], DType::F32, Init::Ones)
        .unwrap();
    init_from_checkpoint(&mut store, dir, &map).unwrap();
    store
}

fn value(store: &VariableStore, name: &str) -> Tensor {
    match store.device_value(name) {
        Some(d) => {
            assert!(d.device().starts_with("cuda:"));
            d.to_host().unwrap()
        }
        None => store.value(name).unwrap().clone(),
    }
}

fn assert_same(cpu: &VariableStore, gpu: &VariableStore, what: &str) -> usize {
    assert!(gpu.is_initialized(), "{what}");
    let mut n = 0;
    for v in cpu.variables() {
        assert_eq!(
            &value(gpu, &v.name),
            cpu.value(&v.name).unwrap(),
            "{what}: {}",
            v.name
        );
        n += 1;
    }
    n
}

#[test]
fn device_bytes_equal_host_bytes_for_every_fixture() {
    if !gpu() {
        return;
    }
    let mut checked = 0;
    for case in CASES {
        let dir = root().join("tests/fixtures/tf").join(case);
        let mut cpu = store_for(&dir);
        cpu.initialize(Device::Cpu).unwrap();
        for no_registration in [false, true] {
            let mut dev = store_for(&dir);
            let options = LoadOptions {
                no_registration,
                ..Default::default()
            };
            let report = dev.initialize_with(Device::Cuda(0), &options).unwrap();
            let d = report.device.as_ref().unwrap();
            if no_registration {
                assert_eq!(d.registered_bytes, 0);
            }
            checked += assert_same(
                &cpu,
                &dev,
                &format!("{case} no_registration={no_registration}"),
            );
        }
    }
    println!("{checked} variables and parts: device bytes equal host bytes");
}

#[test]
fn device_casts_equal_host_casts() {
    if !gpu() {
        return;
    }
    for (case, from, to) in [
        ("repartition_v2", DType::F32, DType::BF16),
        ("repartition_v2", DType::F32, DType::F16),
        ("repartition_v2", DType::F16, DType::F32),
        ("dtypes/dtypes", DType::BF16, DType::F32),
        ("dtypes/dtypes", DType::F16, DType::F32),
    ] {
        let dir = root().join("tests/fixtures/tf").join(case);
        let options = LoadOptions::new().cast(from, to);
        let mut cpu = store_for(&dir);
        cpu.initialize_with(Device::Cpu, &options).unwrap();
        let mut dev = store_for(&dir);
        let report = dev.initialize_with(Device::Cuda(0), &options).unwrap();
        assert!(report.device.unwrap().kernels > 0, "{case}");
        assert_same(&cpu, &dev, &format!("{case} {from}->{to}"));
    }
}

#[test]
fn trainer_memory_and_damage() {
    if !gpu() {
        return;
    }
    let dir = root().join("tests/fixtures/tf/partitioned_axes");
    let mut cpu = store_for(&dir);
    cpu.initialize(Device::Cpu).unwrap();
    // Load one part into memory the trainer allocated.
    let mut dev = store_for(&dir);
    let name = dev
        .variables()
        .find(|v| v.name.starts_with("axis1/"))
        .unwrap()
        .name
        .clone();
    let bytes = cpu.value(&name).unwrap().bytes().unwrap().len();
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let stream = ctx.default_stream();
    let slice = stream.alloc_zeros::<u8>(bytes).unwrap();
    dev.set_device_buffer(&name, DeviceBuffer::from_cuda_slice(slice))
        .unwrap();
    dev.initialize(Device::Cuda(0)).unwrap();
    assert_same(&cpu, &dev, "trainer buffer");
    // A damaged shard fails the whole load.
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
    }
    let mut store = store_for(tmp.path());
    let shard = tmp.path().join("model-0.data-00000-of-00001");
    let mut b = std::fs::read(&shard).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&shard, &b).unwrap();
    let err = store.initialize(Device::Cuda(0)).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TensorChecksum { .. }),
        "{err}"
    );
    assert!(!store.is_initialized());
}

#[test]
fn missing_gpu_is_a_typed_error() {
    let mut store = VariableStore::new();
    store
        .get_variable("v", &[2], DType::F32, Init::Zeros)
        .unwrap();
    let err = store.initialize(Device::Cuda(99)).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::DeviceUnavailable { .. }),
        "{err}"
    );
}
