//! The CUDA tests: on a real GPU, every fixture loaded whole and re-partitioned along two axes,
//! through both transfer paths, with and without casts, into library and trainer memory, equals
//! the host load byte for byte; a damaged shard fails the load. Built with `--features cuda`;
//! without a GPU each test says so and passes, unless `TFCKPT_REQUIRE_GPU=1` (set by
//! `scripts/gpu-check.sh`), which turns a missing GPU into a failure. Fixture paths honour
//! `TFCKPT_ROOT` (see `common::fixtures::root`): the binary may run away from where it was built.
#![cfg(feature = "cuda")]

use tfckpt::{DType, Device, DeviceBuffer, ErrorKind, Init, LoadOptions, VariableStore};

mod common;

use common::fixtures::{copy_files, fixture};
use common::layouts::{assert_same, store_for_layout, Layout, CASES};

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

#[test]
fn device_bytes_equal_host_bytes_for_every_fixture() {
    if !gpu() {
        return;
    }
    let mut checked = 0;
    for case in CASES {
        let dir = fixture(case);
        let mut cpu = store_for_layout(&dir, Layout::Repartitioned);
        cpu.initialize(Device::Cpu).unwrap();
        for register_mappings in [false, true] {
            let mut dev = store_for_layout(&dir, Layout::Repartitioned);
            let options = LoadOptions {
                register_mappings,
                ..Default::default()
            };
            let report = dev.initialize_with(Device::Cuda(0), &options).unwrap();
            let d = report.device.as_ref().unwrap();
            if !register_mappings {
                assert_eq!(d.registered_bytes, 0);
            }
            checked += assert_same(
                &cpu,
                &dev,
                &format!("{case} register_mappings={register_mappings}"),
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
        let dir = fixture(case);
        let options = LoadOptions::new().cast(from, to);
        let mut cpu = store_for_layout(&dir, Layout::Repartitioned);
        cpu.initialize_with(Device::Cpu, &options).unwrap();
        let mut dev = store_for_layout(&dir, Layout::Repartitioned);
        let report = dev.initialize_with(Device::Cuda(0), &options).unwrap();
        assert!(report.device.unwrap().kernels > 0, "{case}");
        assert_same(&cpu, &dev, &format!("{case} {from}->{to}"));
    }
}

/// The fixture in `dir` loaded on the host, the same store to load on a GPU, and the name and
/// byte size of the part of it a test loads into memory the trainer allocated.
fn trainer_part(dir: &std::path::Path) -> (VariableStore, VariableStore, String, usize) {
    let mut cpu = store_for_layout(dir, Layout::Repartitioned);
    cpu.initialize(Device::Cpu).unwrap();
    let dev = store_for_layout(dir, Layout::Repartitioned);
    let name = dev
        .variables()
        .find(|v| v.name.starts_with("axis1/"))
        .unwrap()
        .name
        .clone();
    let bytes = cpu.value(&name).unwrap().bytes().unwrap().len();
    (cpu, dev, name, bytes)
}

#[test]
fn trainer_memory_and_damage() {
    if !gpu() {
        return;
    }
    let dir = fixture("partitioned_axes");
    // Load one part into memory the trainer allocated.
    let (cpu, mut dev, name, bytes) = trainer_part(&dir);
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let stream = ctx.default_stream();
    let slice = stream.alloc_zeros::<u8>(bytes).unwrap();
    dev.set_device_buffer(&name, DeviceBuffer::from_cuda_slice(slice))
        .unwrap();
    dev.initialize(Device::Cuda(0)).unwrap();
    assert_same(&cpu, &dev, "trainer buffer");
    // A damaged shard fails the whole load.
    let tmp = tempfile::tempdir().unwrap();
    copy_files(&dir, tmp.path());
    let mut store = store_for_layout(tmp.path(), Layout::Repartitioned);
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

/// A trainer's buffer that another stream of the trainer's still reads: a copy out of it, queued
/// behind a host function that holds that stream for 3 s. The load writes the buffer only after
/// that read (it waits for the slice's cudarc read events, c115fff), so the copy holds the
/// buffer's old bytes and the buffer the checkpoint's value; without the wait the load wrote
/// first and the copy took the checkpoint's bytes. (The slice's own stream, and writes queued on
/// any stream, were waited for before that change.)
#[test]
fn a_trainer_buffer_still_read_by_another_stream_is_written_after_the_read() {
    if !gpu() {
        return;
    }
    use cudarc::driver::sys;
    use std::sync::mpsc::{channel, Receiver};
    unsafe extern "C" fn held(gate: *mut std::ffi::c_void) {
        // Owns the receiver; makes no CUDA call.
        let gate = unsafe { Box::from_raw(gate.cast::<Receiver<()>>()) };
        let _ = gate.recv_timeout(std::time::Duration::from_secs(30));
    }
    let dir = fixture("partitioned_axes");
    // A first load, so that the one below starts warm (ring, kernels) well within the 3 s.
    store_for_layout(&dir, Layout::Repartitioned)
        .initialize(Device::Cuda(0))
        .unwrap();
    let (cpu, mut dev, name, bytes) = trainer_part(&dir);
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let (own, reader) = (ctx.new_stream().unwrap(), ctx.new_stream().unwrap());
    let old = vec![0xffu8; bytes];
    let slice = own.clone_htod(old.as_slice()).unwrap();
    own.synchronize().unwrap();
    let mut copy = reader.alloc_zeros::<u8>(bytes).unwrap();
    let (release, gate) = channel::<()>();
    let gate = Box::into_raw(Box::new(gate));
    // SAFETY: `held` takes the box (when it runs) and makes no CUDA call.
    let launched =
        unsafe { sys::cuLaunchHostFunc(reader.cu_stream(), Some(held), gate.cast()).result() };
    if let Err(e) = launched {
        // SAFETY: a launch that failed did not give the box to `held`.
        unsafe { drop(Box::from_raw(gate)) };
        panic!("cuLaunchHostFunc: {e:?}");
    }
    // Records the read on the slice's read event, on the held stream.
    reader.memcpy_dtod(&slice, &mut copy).unwrap();
    dev.set_device_buffer(&name, DeviceBuffer::from_cuda_slice(slice))
        .unwrap();
    let opener = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(3));
        let _ = release.send(());
    });
    dev.initialize(Device::Cuda(0)).unwrap();
    opener.join().unwrap();
    ctx.synchronize().unwrap();
    assert!(
        reader.clone_dtoh(&copy).unwrap() == old,
        "the trainer's copy, queued before the load, holds what the load wrote"
    );
    assert_same(&cpu, &dev, "a trainer buffer still read by another stream");
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

/// Every GPU of the machine, and the CPU: parts round-robin over the GPUs, one whole tensor on the
/// CPU, one replicated on every GPU; then a 4 MiB tensor replicated on every GPU (by shares and
/// an NCCL all-gather with the `nccl` feature, at world size 1 on a one-GPU machine).
#[test]
fn placement_and_replicas_on_every_gpu() {
    if !gpu() {
        return;
    }
    let n = Device::gpu_count() as u32;
    let all: Vec<Device> = (0..n).map(Device::Cuda).collect();
    let mut checked = 0;
    for case in ["partitioned_axes", "repartition_v2", "sharded_partitioned"] {
        let dir = fixture(case);
        let mut cpu = store_for_layout(&dir, Layout::Repartitioned);
        cpu.initialize(Device::Cpu).unwrap();
        let mut dev = store_for_layout(&dir, Layout::Repartitioned);
        let whole: Vec<String> = dev
            .variables()
            .filter(|v| v.part.is_none() && v.dtype.size().is_some())
            .map(|v| v.name.clone())
            .take(2)
            .collect();
        let (on_cpu, replicated) = (whole[0].clone(), whole[1].clone());
        dev.place_with(|v| v.part.as_ref().map(|p| Device::Cuda(p.index as u32 % n)));
        dev.set_device(&on_cpu, Device::Cpu).unwrap();
        dev.set_replicas(&replicated, &all).unwrap();
        let report = dev.initialize(Device::Cuda(0)).unwrap();
        checked += assert_same(&cpu, &dev, case);
        assert!(dev.device_value(&on_cpu).is_none());
        assert_eq!(report.devices.len(), n as usize);
        let want = cpu.value(&replicated).unwrap();
        for r in dev.device_replicas(&replicated) {
            assert_eq!(
                &r.to_host().unwrap(),
                want,
                "{case}: {replicated} on {}",
                r.device()
            );
        }
    }
    // A tensor large enough to be loaded by shares.
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("big");
    let values: Vec<f32> = (0..1 << 20).map(|i| i as f32 * 0.5).collect();
    let t = tfckpt::Tensor::from_f32(&[1024, 1024], &values).unwrap();
    let mut w = tfckpt::CheckpointWriter::create(&prefix, Default::default()).unwrap();
    w.add("big", (&t).into()).unwrap();
    w.finish().unwrap();
    let mut store = VariableStore::new();
    store
        .get_variable("big", &[1024, 1024], DType::F32, Init::Zeros)
        .unwrap();
    store.set_replicas("big", &all).unwrap();
    let map = tfckpt::AssignmentMap::from([("big", tfckpt::Target::name("big"))]);
    tfckpt::init_from_checkpoint(&mut store, &prefix, &map).unwrap();
    let report = store.initialize(Device::Cuda(0)).unwrap();
    for r in store.device_replicas("big") {
        assert_eq!(r.to_host().unwrap(), t, "big on {}", r.device());
    }
    let d = report.device.as_ref().unwrap();
    println!(
        "{checked} variables placed over {n} GPU(s) and the CPU equal the host load; 4 MiB replicated on {n}: {} bytes over PCIe, {} gathered{}",
        d.staged_bytes + d.registered_bytes,
        d.gathered_bytes,
        report.warnings.iter().map(|w| format!(" ({w})")).collect::<String>()
    );
    if cfg!(feature = "nccl") && std::env::var_os("TFCKPT_REQUIRE_NCCL").is_some() {
        // gpu-check found libnccl: the replicas must go through NCCL, not fall back.
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    }
    if cfg!(feature = "nccl") && report.warnings.is_empty() {
        // Shares: the value crossed PCIe once in total.
        assert!(d.staged_bytes + d.registered_bytes <= 4 << 20, "{d:?}");
        assert_eq!(
            d.gathered_bytes,
            (4u64 << 20) / n as u64 * (n as u64 - 1) * n as u64
        );
    }
}

/// A broadcast initialization over a real NCCL communicator, at world size 1 (the root alone):
/// the path a multi-host job takes, on the one GPU this check has.
#[cfg(feature = "nccl")]
#[test]
fn broadcast_initialization_over_nccl_at_world_size_1() {
    if !gpu() {
        return;
    }
    // cudarc's first NCCL call loads the library, and panics where it finds none under the names
    // it looks for (libnccl.so, where it loads NCCL at run time).
    if let Err(e) = std::panic::catch_unwind(cudarc::nccl::result::get_nccl_version) {
        assert!(
            std::env::var_os("TFCKPT_REQUIRE_NCCL").is_none(),
            "TFCKPT_REQUIRE_NCCL is set but cudarc cannot load NCCL: {:?}",
            e.downcast_ref::<String>()
        );
        eprintln!("cudarc cannot load NCCL: broadcast not checked");
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let comm = cudarc::nccl::Comm::from_devices(vec![ctx.default_stream()])
        .unwrap()
        .remove(0);
    let dir = fixture("repartition_v2");
    let mut cpu = store_for_layout(&dir, Layout::Repartitioned);
    cpu.initialize(Device::Cpu).unwrap();
    let mut dev = store_for_layout(&dir, Layout::Repartitioned);
    let report = dev
        .initialize_broadcast(&comm, 0, &LoadOptions::default())
        .unwrap();
    let n = assert_same(&cpu, &dev, "broadcast, world size 1");
    println!(
        "broadcast at world size 1: {n} variables equal the host load, {} bytes broadcast",
        report.device.as_ref().unwrap().broadcast_bytes
    );
}
