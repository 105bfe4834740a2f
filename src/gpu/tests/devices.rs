//! Several devices: placement, replicas by shares, a failure on one device unwinding all.

use super::*;

#[test]
fn three_devices_equal_host_on_every_fixture() {
    for case in CASES {
        let dir = fixture(case);
        let mut cpu = store_for(&dir);
        let host_report = cpu.initialize(Device::Cpu).unwrap();
        for sizes in [Sizes::default(), tiny()] {
            for register in [false, true] {
                let what = format!("{case} {sizes:?} register={register}");
                // The same load on one device reads each stored piece once.
                let one = store_for(&dir)
                    .initialize_on(&HostLink::default(), &LoadOptions::default(), sizes)
                    .unwrap();
                let links = HostLink::devices(3);
                let pairs = pairs_of(&links);
                let mut gpu = store_for(&dir);
                let placed = place_on_three(&mut gpu);
                let options = LoadOptions {
                    register_mappings: register,
                    ..Default::default()
                };
                let report = load_on(&mut gpu, &pairs, None, &options, sizes)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_same(&cpu, &gpu, &what);
                // Each value where it was placed (strings on the host).
                for (name, dev) in &placed {
                    let v = gpu.variable(name).unwrap();
                    match (dev, gpu.device_value(name)) {
                        (Device::Cuda(n), Some(d)) => {
                            assert_eq!(d.device(), format!("emulated:{n}"), "{what}: {name}")
                        }
                        (Device::Cpu, None) => assert!(gpu.value(name).is_some()),
                        (Device::Cuda(_), None) => {
                            assert!(v.dtype.size().is_none(), "{what}: {name} not on its GPU")
                        }
                        (Device::Cpu, Some(_)) => panic!("{what}: {name} should be on the host"),
                    }
                }
                // Every stored slice read (and checksummed) once, however many devices take it.
                assert_eq!(report.stored_reads, one.stored_reads, "{what}");
                assert_eq!(report.stored_bytes, host_report.stored_bytes, "{what}");
                assert_eq!(report.bytes, host_report.bytes, "{what}");
                assert_eq!(report.devices.len(), 3, "{what}");
                for (l, s) in links.iter().zip(&report.devices) {
                    assert_eq!(l.still_registered(), 0, "{what}");
                    assert_eq!(s.device, l.device(), "{what}");
                }
                let total = report.device.as_ref().unwrap();
                assert_eq!(
                    total.staged_bytes + total.registered_bytes,
                    report
                        .devices
                        .iter()
                        .map(|d| d.staged_bytes + d.registered_bytes)
                        .sum::<u64>()
                );
            }
        }
    }
}

#[test]
fn a_failure_on_device_2_unwinds_devices_0_and_1() {
    let dir = fixture("repartition_v2");
    // How many copies device 2 makes in a good load: each of them fails in turn.
    let copies = {
        let links = HostLink::devices(3);
        let pairs = pairs_of(&links);
        let mut store = store_for(&dir);
        place_on_three(&mut store);
        load_on(&mut store, &pairs, None, &LoadOptions::default(), tiny()).unwrap();
        links[2].copies.load(Ordering::Relaxed)
    };
    assert!(copies >= 2, "{copies}");
    for (at, register_mappings) in (1..=copies).flat_map(|a| [(a, false), (a, true)]) {
        let what = format!("copy {at} fails, register={register_mappings}");
        let links = HostLink::devices(3);
        links[2].fail_copy_at.store(at, Ordering::Relaxed);
        let pairs = pairs_of(&links);
        let mut store = store_for(&dir);
        place_on_three(&mut store);
        let options = LoadOptions {
            register_mappings,
            ..Default::default()
        };
        let err = load_on(&mut store, &pairs, None, &options, tiny()).unwrap_err();
        assert!(
            err.to_string().contains("failed (emulated)"),
            "{what}: {err}"
        );
        for l in &links {
            assert_eq!(l.still_registered(), 0, "{what}: {}", l.device());
            assert_eq!(l.live_allocations(), 0, "{what}: {}", l.device());
        }
        assert!(!store.is_initialized(), "{what}");
        assert_eq!(store.device_values().count(), 0, "{what}");
        assert!(store.value("unmapped/ones").is_none(), "{what}");
    }
}

#[test]
fn a_damaged_slice_shared_by_two_devices_fails_once_and_frees_all() {
    let tmp = tempfile::tempdir().unwrap();
    for (path, bytes) in fixtures::tree(&fixture("repartition_v2")) {
        let to = tmp.path().join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, bytes).unwrap();
    }
    // The store is made first (`store_for` leaves out tensors it cannot read).
    let links = HostLink::devices(3);
    let pairs = pairs_of(&links);
    let mut store = store_for(tmp.path());
    place_on_three(&mut store);
    // One byte of `float32/whole`, which feeds every device.
    let ckpt = crate::Checkpoint::open(tmp.path()).unwrap();
    let (data, offset) = {
        let s = ckpt.stored("float32/whole").unwrap();
        let src = s.device_sources().unwrap().unwrap().remove(0);
        (src.path, src.offset)
    };
    drop(ckpt);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[offset as usize + 5] ^= 0x01;
    std::fs::write(&data, &bytes).unwrap();
    let err = load_on(&mut store, &pairs, None, &LoadOptions::default(), tiny()).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TensorChecksum { path, tensor, .. }
            if *path == data && tensor == "float32/whole"),
        "{err}"
    );
    // Named with every variable (or part) the damaged bytes were to feed, on any device.
    assert_eq!(
        err.loading(),
        [
            "axis0/float32/whole/part_0",
            "axis0/float32/whole/part_1",
            "axis0/float32/whole/part_2",
            "axis1/float32/whole/part_0",
            "axis1/float32/whole/part_1",
            "whole/float32/whole"
        ]
    );
    assert!(
        err.to_string().ends_with(
            "; loading variables \"axis0/float32/whole/part_0\", \"axis0/float32/whole/part_1\", \
             \"axis0/float32/whole/part_2\", \"axis1/float32/whole/part_0\", \
             \"axis1/float32/whole/part_1\", \"whole/float32/whole\""
        ),
        "{err}"
    );
    for l in &links {
        assert_eq!(l.live_allocations(), 0);
        assert_eq!(l.still_registered(), 0);
    }
    assert!(!store.is_initialized());
}

#[test]
fn placement_errors_name_the_variable_and_load_nothing() {
    let dir = fixture("partitioned_axes");
    let links = HostLink::devices(3);
    let pairs = pairs_of(&links);
    let mut store = store_for(&dir);
    let part = store.partitioned_variables().next().unwrap().clone();
    // One device more than parts, and one fewer: refused, placement unchanged.
    let mut devices: Vec<Device> = (0..=part.parts.len() as u32).map(Device::Cuda).collect();
    let err = store.set_part_devices(&part.name, &devices).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("{} parts", part.parts.len())),
        "{err}"
    );
    devices.truncate(part.parts.len() - 1);
    assert!(store.set_part_devices(&part.name, &devices).is_err());
    assert_eq!(store.device_of(&part.parts[0], Device::Cpu), Device::Cpu);
    assert!(matches!(
        store
            .set_device("no/such", Device::Cuda(0))
            .unwrap_err()
            .kind(),
        ErrorKind::VariableNotFound { .. }
    ));
    // A device this load does not have (on a real machine: an ordinal past the GPU count).
    store.set_device(&part.parts[1], Device::Cuda(7)).unwrap();
    let err = load_on(&mut store, &pairs, None, &LoadOptions::default(), tiny()).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::DeviceUnavailable { device, reason }
            if device == "cuda:7" && reason.contains(&part.parts[1])),
        "{err}"
    );
    for l in &links {
        assert_eq!(l.live_allocations(), 0);
    }
    assert!(!store.is_initialized());
    // The partitioned variable's name places every part.
    store.set_device(&part.name, Device::Cuda(1)).unwrap();
    let report = load_on(&mut store, &pairs, None, &LoadOptions::default(), tiny()).unwrap();
    for p in &part.parts {
        assert_eq!(store.device_value(p).unwrap().device(), "emulated:1");
    }
    assert_eq!(report.devices.len(), 3);
}

/// PCIe bytes of a load: staged plus registered, every device.
fn pcie(report: &crate::LoadReport) -> u64 {
    let d = report.device.as_ref().unwrap();
    d.staged_bytes + d.registered_bytes
}

#[test]
fn replicas_by_shares_equal_the_host_load_and_cross_pcie_once() {
    let mut shared_somewhere = false;
    for case in CASES {
        let dir = fixture(case);
        let mut cpu = store_for(&dir);
        cpu.initialize(Device::Cpu).unwrap();
        for cast in [None, Some((DType::F32, DType::BF16))] {
            let what = format!("{case} cast={cast:?}");
            let links = HostLink::devices(3);
            let pairs = pairs_of(&links);
            let mut options = LoadOptions::default();
            if let Some((f, t)) = cast {
                options = options.cast(f, t);
            }
            let mut want = store_for(&dir);
            want.initialize_with(Device::Cpu, &options).unwrap();
            // Each replica whole over its own link, then by shares and all-gather.
            let mut whole = store_for(&dir);
            let names = replicate(&mut whole);
            let full = load_on(&mut whole, &pairs, None, &options, tiny())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let gather = crate::gpu::emulated::HostGather::new(&pairs);
            let mut gpu = store_for(&dir);
            replicate(&mut gpu);
            let report = load_on(&mut gpu, &pairs, Some(&gather), &options, tiny())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            for store in [&whole, &gpu] {
                assert_same(&want, store, &what);
                for name in &names {
                    let reps = store.device_replicas(name);
                    let n = if store.variable(name).unwrap().part.is_some() {
                        2
                    } else {
                        3
                    };
                    assert_eq!(reps.len(), n, "{what}: {name}");
                    let want = want.value(name).unwrap();
                    for (i, r) in reps.iter().enumerate() {
                        assert_eq!(&r.to_host().unwrap(), want, "{what}: {name} replica {i}");
                    }
                    let devices: Vec<String> = reps.iter().map(|r| r.device()).collect();
                    let first = if n == 2 { 1 } else { 0 };
                    assert_eq!(devices[0], format!("emulated:{first}"), "{what}");
                }
            }
            let gathered = report.device.as_ref().unwrap().gathered_bytes;
            assert_eq!(
                gathered as usize,
                gather.moved.load(Ordering::Relaxed),
                "{what}"
            );
            if gathered > 0 {
                shared_somewhere = true;
                // What the gather moved no longer crosses PCIe.
                assert!(
                    pcie(&report) < pcie(&full),
                    "{what}: {report:?} vs {full:?}"
                );
            }
            assert_eq!(full.device.as_ref().unwrap().gathered_bytes, 0);
            for l in &links {
                assert_eq!(l.still_registered(), 0);
            }
        }
    }
    assert!(shared_somewhere);
}

#[test]
fn a_failed_gather_unwinds_every_device() {
    let dir = fixture("partitioned_axes");
    let links = HostLink::devices(3);
    let pairs = pairs_of(&links);
    let load = |gather: &crate::gpu::emulated::HostGather<'_>| {
        let mut store = store_for(&dir);
        replicate(&mut store);
        let r = load_on(
            &mut store,
            &pairs,
            Some(gather),
            &LoadOptions::default(),
            tiny(),
        );
        (store, r)
    };
    let gather = crate::gpu::emulated::HostGather::new(&pairs);
    gather.fail.store(true, Ordering::Relaxed);
    let (store, r) = load(&gather);
    let err = r.unwrap_err();
    assert!(
        err.to_string().contains("all-gather failed (emulated)"),
        "{err}"
    );
    for l in &links {
        assert_eq!(l.live_allocations(), 0);
        assert_eq!(l.still_registered(), 0);
    }
    assert!(!store.is_initialized());
    assert!(store.device_replicas("whole/a").is_empty());
    // GPUs that cannot make a communicator load whole replicas instead, and the report says so.
    let mut cpu = store_for(&dir);
    cpu.initialize(Device::Cpu).unwrap();
    let gather = crate::gpu::emulated::HostGather::new(&pairs);
    gather.fail_prepare.store(true, Ordering::Relaxed);
    let (store, r) = load(&gather);
    let report = r.unwrap();
    assert_same(&cpu, &store, "whole replicas");
    assert_eq!(report.device.as_ref().unwrap().gathered_bytes, 0);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("cannot all-gather")),
        "{:?}",
        report.warnings
    );
}

/// GPUs that cannot make a communicator load their replicas whole, and only they: `a` on cuda:0
/// and cuda:1 (no communicator between them), `b` on cuda:1 and cuda:2 (gathered), two sets of
/// the same size.
#[test]
fn only_the_gpus_that_cannot_gather_load_their_replicas_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = write_f32s(tmp.path(), &["a", "b"], &[8, 8]);
    let make = || mapped_store(&prefix, &["a", "b"], whole_f32(&[8, 8]));
    let mut cpu = make();
    cpu.initialize(Device::Cpu).unwrap();
    let mut store = make();
    store
        .set_replicas("a", &[Device::Cuda(0), Device::Cuda(1)])
        .unwrap();
    store
        .set_replicas("b", &[Device::Cuda(1), Device::Cuda(2)])
        .unwrap();
    let links = HostLink::devices(3);
    let pairs = pairs_of(&links);
    let gather = crate::gpu::emulated::HostGather::new(&pairs);
    *gather.fail_prepare_with.lock().unwrap() = Some(Device::Cuda(0));
    let report = load_on(
        &mut store,
        &pairs,
        Some(&gather),
        &LoadOptions::default(),
        tiny(),
    )
    .unwrap();
    for name in ["a", "b"] {
        for r in store.device_replicas(name) {
            assert_eq!(&r.to_host().unwrap(), cpu.value(name).unwrap(), "{name}");
        }
    }
    // b's two shares of 128 bytes, each to the other GPU; a's nothing.
    assert_eq!(gather.moved.load(Ordering::Relaxed), 256);
    let shown = "the GPUs cuda:0, cuda:1 cannot all-gather";
    assert!(
        report.warnings.iter().any(|w| w.contains(shown)),
        "{:?}",
        report.warnings
    );
}

#[test]
fn replica_lists_are_checked() {
    let mut store = store_for(&fixture("dtypes/dtypes"));
    let f = store
        .variables()
        .find(|v| v.dtype == DType::F32 && v.part.is_none())
        .unwrap()
        .name
        .clone();
    for (devices, needle) in [
        (vec![], "none were given"),
        (vec![Device::Cuda(0), Device::Cpu], "cuda:0, cpu were given"),
        (
            vec![Device::Cuda(1), Device::Cuda(1)],
            "cuda:1 is given twice",
        ),
    ] {
        let err = store.set_replicas(&f, &devices).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
        assert!(err.to_string().contains(&f), "{err}");
    }
    assert!(store.replicas_of(&f).is_none());
    let s = store
        .variables()
        .find(|v| v.dtype == DType::String)
        .unwrap()
        .name
        .clone();
    let err = store.set_replicas(&s, &[Device::Cuda(0)]).unwrap_err();
    assert!(err.to_string().contains("host memory"), "{err}");
    // A placement replaces the replicas, and the reverse.
    store
        .set_replicas(&f, &[Device::Cuda(2), Device::Cuda(0)])
        .unwrap();
    assert_eq!(store.device_of(&f, Device::Cpu), Device::Cuda(2));
    store.set_device(&f, Device::Cuda(1)).unwrap();
    assert!(store.replicas_of(&f).is_none());
}

/// The promise of replicas by shares, measured: a [1001, 1001] float32 value (1,002,001
/// elements: three shares of 334,000 and a tail of 1) replicated on three devices, given out of
/// ordinal order, crosses "PCIe" once in total, plus the tail on every device, with and without a
/// cast on the way.
#[test]
fn replicas_by_shares_upload_each_byte_once() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("big");
    let (d0, d1) = (1001u64, 1001u64);
    let values: Vec<f32> = (0..d0 * d1).map(|i| i as f32 * 0.25).collect();
    let t = crate::Tensor::from_f32(&[d0, d1], &values).unwrap();
    let mut w = crate::CheckpointWriter::create(&prefix, Default::default()).unwrap();
    w.add("big", (&t).into()).unwrap();
    w.finish().unwrap();
    for cast in [None, Some((DType::F32, DType::BF16))] {
        let mut options = LoadOptions::default();
        if let Some((f, t)) = cast {
            options = options.cast(f, t);
        }
        let mut want = VariableStore::new();
        want.get_variable("big", &[d0, d1], DType::F32, Init::Zeros)
            .unwrap();
        let map = AssignmentMap::from([("big", Target::name("big"))]);
        init_from_checkpoint(&mut want, &prefix, &map).unwrap();
        let mut gpu = VariableStore::new();
        gpu.get_variable("big", &[d0, d1], DType::F32, Init::Zeros)
            .unwrap();
        init_from_checkpoint(&mut gpu, &prefix, &map).unwrap();
        want.initialize_with(Device::Cpu, &options).unwrap();
        gpu.set_replicas("big", &[Device::Cuda(2), Device::Cuda(0), Device::Cuda(1)])
            .unwrap();
        let links = HostLink::devices(3);
        let pairs = pairs_of(&links);
        let gather = crate::gpu::emulated::HostGather::new(&pairs);
        let report = load_on(&mut gpu, &pairs, Some(&gather), &options, tiny()).unwrap();
        for r in gpu.device_replicas("big") {
            assert_eq!(
                &r.to_host().unwrap(),
                want.value("big").unwrap(),
                "{cast:?}"
            );
        }
        let b = d0 * d1 * 4;
        let tail = (d0 * d1 % 3) * 4;
        assert!(
            pcie(&report) <= b + 3 * tail,
            "{cast:?}: {} > {b}",
            pcie(&report)
        );
        assert!(pcie(&report) >= b, "{cast:?}");
    }
}
