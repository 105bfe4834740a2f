//! Registered DMA from the page cache (`LoadOptions::register_mappings`): what it carries, what
//! falls back to the ring, and every registration undone.

use super::*;

#[test]
fn registration_carries_mapped_bytes_and_failure_falls_back() {
    let dir = fixture("repartition_v2");
    let mut cpu = store_for(&dir);
    cpu.initialize(Device::Cpu).unwrap();
    // With one worker thread the registrar runs first (the ring may still take units while the
    // registrar waits on its checksums). The emulated driver refuses overlapping registrations,
    // as the real one does: no fallback means none happened.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let link = HostLink::default();
    let mut gpu = store_for(&dir);
    let register = LoadOptions {
        register_mappings: true,
        ..Default::default()
    };
    let report = pool
        .install(|| gpu.initialize_on(&link, &register, tiny()))
        .unwrap();
    let stats = report.device.unwrap();
    assert!(stats.registered_bytes > 0);
    assert!(link.registrations.load(Ordering::Relaxed) >= 1);
    assert!(stats.registration_fallback.is_none());
    // Registration carried every byte: the ring had nothing, and pinned no staging.
    assert_eq!((stats.staged_bytes, stats.staging_bytes), (0, 0));
    // So too with the ring idle on another thread while registration is slow, as page-locking
    // is on a GPU: one wave of units and batches of 1 KiB, each registration and each
    // unregistration taking 2 ms.
    let link = HostLink::default();
    link.register_delay_ms.store(2, Ordering::Relaxed);
    link.unregister_delay_ms.store(2, Ordering::Relaxed);
    let mut gpu = store_for(&dir);
    let sizes = Sizes {
        reg_batch: 1 << 10,
        scratch: 1 << 30,
        ..tiny()
    };
    let stats = gpu
        .initialize_on(&link, &register, sizes)
        .unwrap()
        .device
        .unwrap();
    assert!(stats.registration_fallback.is_none());
    assert_eq!((stats.staged_bytes, stats.staging_bytes), (0, 0));
    assert_same(&cpu, &gpu, "registered, ring beside it");
    // Where the time went: every registration's and unregistration's 2 ms in `registering`,
    // within `transfer`; no staging pinned.
    let t = stats.times;
    let regs = link.registrations.load(Ordering::Relaxed);
    assert!(regs >= 1);
    assert_eq!(link.unregistrations.load(Ordering::Relaxed), regs);
    assert!(
        t.registering >= 0.002 * 2.0 * regs as f64,
        "{t} for {regs} registrations and as many unregistrations"
    );
    assert!(t.transfer >= t.registering, "{t}");
    assert_eq!(t.pinning, 0.0, "{t}");
    // One small host-owned value (a float64 constant, which no memset writes) beside them: the
    // ring carries it in buffers of its size, not of the mapped units'.
    let mut gpu = store_for(&dir);
    gpu.get_variable("extra/f64", &[3], DType::F64, Init::Constant(1.5))
        .unwrap();
    let link = HostLink::default();
    let stats = gpu
        .initialize_on(&link, &register, sizes)
        .unwrap()
        .device
        .unwrap();
    assert_eq!((stats.staged_bytes, stats.staging_bytes), (24, 24));
    let v = gpu.device_value("extra/f64").unwrap().to_host().unwrap();
    assert_eq!(v.bytes().unwrap(), 1.5f64.to_le_bytes().repeat(3));
    assert_same(&cpu, &gpu, "registered");
    // Registration refused: the ring carries everything, with the same result.
    let link = HostLink::default();
    link.fail_register.store(true, Ordering::Relaxed);
    let mut gpu = store_for(&dir);
    let report = gpu.initialize_on(&link, &register, tiny()).unwrap();
    let stats = report.device.unwrap();
    assert_eq!(stats.registered_bytes, 0);
    assert!(stats
        .registration_fallback
        .as_deref()
        .unwrap()
        .contains("refused"));
    assert_same(&cpu, &gpu, "fallback");
    // The ring's second pass carried the mapped units, in buffers it pinned then.
    assert!(stats.staging_bytes > 0);
    check_times(&stats, "fallback");
}

/// Registrations are undone as the batches that copied from them complete: with two batches in
/// flight and a third being registered, three at most are in place at once, and three are (eight
/// batches of one 64 KiB tensor each, in pages no two batches share). Found by mutation testing:
/// windows held to the end (every one marked as used by each later batch) or one batch in flight
/// loaded the same values.
#[test]
fn registrations_are_undone_as_their_batches_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"];
    let prefix = write_f32s(tmp.path(), &names, &[16384]);
    let make = || mapped_store(&prefix, &names, whole_f32(&[16384]));
    let mut cpu = make();
    cpu.initialize(Device::Cpu).unwrap();
    let sizes = Sizes {
        unit: 64 << 10,
        reg_batch: 64 << 10,
        ..Sizes::default()
    };
    let options = LoadOptions {
        register_mappings: true,
        ..Default::default()
    };
    let link = HostLink::default();
    link.register_delay_ms.store(1, Ordering::Relaxed);
    link.unregister_delay_ms.store(1, Ordering::Relaxed);
    let mut gpu = make();
    let stats = gpu
        .initialize_on(&link, &options, sizes)
        .unwrap()
        .device
        .unwrap();
    assert_same(&cpu, &gpu, "registered");
    assert_eq!(stats.registered_bytes, 8 << 16);
    assert_eq!(link.registrations.load(Ordering::Relaxed), 8);
    assert_eq!(link.unregistrations.load(Ordering::Relaxed), 8);
    assert_eq!(link.peak_registrations.load(Ordering::Relaxed), 3);
    assert_eq!(link.still_registered(), 0);
    // Each of them, undone while batches run (six) or after the last two (two), counts in
    // `registering` (1 ms each here).
    let t = stats.times;
    assert!(t.registering >= 0.016, "{t}");
    check_times(&stats, "registered");
}

#[test]
fn interleaved_slices_register_in_file_order() {
    // One shard laid out b/part0, a, b/part1 (found in review: the plan orders a tensor by its
    // first slice, so b's second slice comes after a in the file but before it in the plan).
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("m");
    let mut w = crate::CheckpointWriter::create(&prefix, Default::default()).unwrap();
    let rows = 3000u64; // 12 KB per part: several pages each
    let part = |k: u8| -> Vec<u8> { (0..rows * 4).map(|i| (i as u8) ^ k).collect() };
    let (p0, p1, a) = (part(1), part(2), part(3));
    let shape = [rows];
    let t = |data: &'static [u8]| crate::TensorRef::Bytes {
        dtype: DType::F32,
        shape: &shape,
        data,
    };
    let (p0, p1, a): (&'static [u8], &'static [u8], &'static [u8]) =
        (p0.leak(), p1.leak(), a.leak());
    let half = crate::Slice::from_ranges(&[(0, rows)]);
    let second = crate::Slice::from_ranges(&[(rows, rows)]);
    w.add_slice("b", &[2 * rows], &half, t(p0)).unwrap();
    w.add("a", t(a)).unwrap();
    w.add_slice("b", &[2 * rows], &second, t(p1)).unwrap();
    w.finish().unwrap();
    let make = || {
        let mut store = VariableStore::new();
        store
            .get_variable("v/a", &[rows], DType::F32, Init::Zeros)
            .unwrap();
        store
            .get_variable("v/b", &[2 * rows], DType::F32, Init::Zeros)
            .unwrap();
        let map = AssignmentMap::from([("/", Target::scope("v/"))]);
        init_from_checkpoint(&mut store, &prefix, &map).unwrap();
        store
    };
    let mut cpu = make();
    cpu.initialize(Device::Cpu).unwrap();
    for sizes in [Sizes::default(), tiny()] {
        let link = HostLink::default();
        let mut gpu = make();
        let options = LoadOptions {
            register_mappings: true,
            ..Default::default()
        };
        let r = gpu.initialize_on(&link, &options, sizes).unwrap();
        let d = r.device.unwrap();
        assert_eq!(d.registration_fallback, None);
        assert!(d.registered_bytes > 0);
        assert_same(&cpu, &gpu, &format!("{sizes:?}"));
    }
}

#[test]
fn a_failed_unregistration_leaks_nothing_else() {
    // Whichever unregistration fails, only the registration the driver refused to undo is left
    // (the case of several windows released at once is `registrar::tests`).
    for (case, at, sizes) in ["h1_partitioned", "partitioned_axes", "repartition_v2"]
        .into_iter()
        .flat_map(|c| (1..=8).flat_map(move |at| [(c, at, Sizes::default()), (c, at, tiny())]))
    {
        let dir = fixture(case);
        let link = HostLink::default();
        link.fail_unregister_at.store(at, Ordering::Relaxed);
        let mut store = store_for(&dir);
        let options = LoadOptions {
            register_mappings: true,
            ..Default::default()
        };
        let r = store.initialize_on(&link, &options, sizes);
        let refused = link.unregistrations.load(Ordering::Relaxed) >= at;
        if refused {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("failed (emulated)"), "{e}");
            // Only the registration the driver refused to undo is left.
            assert_eq!(
                link.still_registered(),
                1,
                "{case}: failing unregistration {at}"
            );
            assert!(!store.is_initialized());
        } else {
            r.unwrap();
            assert_eq!(link.still_registered(), 0);
        }
    }
}
