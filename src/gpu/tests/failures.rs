//! Damaged checkpoints, failing copies and cancelled loads: each fails whole and frees everything.

use super::*;

#[test]
fn damaged_shard_fails_whole_and_frees_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("sharded_partitioned");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if !e.path().is_file() {
            continue;
        }
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    let mut store = store_for(tmp.path());
    // Flip one byte in the middle of the largest data shard.
    let shard = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".data-"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();
    for (sizes, register_mappings) in [
        (Sizes::default(), false),
        (Sizes::default(), true),
        (tiny(), false),
        (tiny(), true),
    ] {
        let link = HostLink::default();
        let options = LoadOptions {
            register_mappings,
            ..Default::default()
        };
        let err = store.initialize_on(&link, &options, sizes).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::TensorChecksum { path, .. } if *path == shard),
            "{err}"
        );
        assert!(err.to_string().contains("checksum"), "{err}");
        assert_eq!(link.still_registered(), 0);
        assert_eq!(link.live_allocations(), 0);
        assert!(!store.is_initialized());
        assert_eq!(store.device_values().count(), 0);
    }
}

#[test]
fn failing_copy_unwinds() {
    let dir = fixture("partitioned_axes");
    for (at, register_mappings) in [1, 2, 5, 9]
        .into_iter()
        .flat_map(|a| [(a, false), (a, true)])
    {
        let mut store = store_for(&dir);
        let link = HostLink::default();
        link.fail_copy_at.store(at, Ordering::Relaxed);
        let options = LoadOptions {
            register_mappings,
            ..Default::default()
        };
        let err = store.initialize_on(&link, &options, tiny()).unwrap_err();
        assert!(err.to_string().contains("failed (emulated)"), "{err}");
        assert_eq!(link.still_registered(), 0);
        assert_eq!(link.live_allocations(), 0);
        assert_eq!(link.queued(), 0, "a failed load leaves nothing queued");
        // Nothing queued was left reading memory that was unregistered or given back.
        assert_eq!(
            link.dropped_copies(),
            0,
            "copy {at}, registered {register_mappings}"
        );
        assert!(!store.is_initialized());
    }
}

/// A GPU load cancelled while its transfer runs (here at its third copy, as a trainer's other
/// thread would) stops: the workers fail with `Cancelled` before their next unit, nothing
/// registered, allocated or queued is left, and nothing is initialized; one cancelled before it
/// starts reads nothing. The same store then loads in full, and reports its progress once.
#[test]
fn a_cancelled_load_unwinds_and_the_store_loads_again() {
    use std::sync::{Arc, Mutex};
    let dir = fixture("partitioned_axes");
    // The store every load below is cancelled on, then loaded in full.
    let mut store = store_for(&dir);
    for register_mappings in [false, true] {
        // The copies of a whole load (of another store).
        let options = LoadOptions {
            register_mappings,
            ..Default::default()
        };
        let link = HostLink::default();
        store_for(&dir)
            .initialize_on(&link, &options, tiny())
            .unwrap();
        let all = link.copies.load(Ordering::Relaxed);
        let token = crate::CancelToken::new();
        let options = LoadOptions {
            register_mappings,
            ..Default::default()
        }
        .cancel_on(&token);
        let link = HostLink::default();
        *link.cancel_at_copy.lock().unwrap() = Some((3, token.clone()));
        let err = store.initialize_on(&link, &options, tiny()).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Cancelled), "{err:?}");
        let copied = link.copies.load(Ordering::Relaxed);
        assert!(copied >= 3 && copied < all, "{copied} of {all} copies");
        assert_eq!(link.still_registered(), 0);
        assert_eq!(link.live_allocations(), 0);
        assert_eq!(link.queued(), 0, "a cancelled load leaves nothing queued");
        assert_eq!(link.dropped_copies(), 0);
        assert!(!store.is_initialized());
        assert_eq!(store.device_values().count(), 0);
        // Cancelled already: nothing is copied.
        let link = HostLink::default();
        let err = store.initialize_on(&link, &options, tiny()).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Cancelled), "{err:?}");
        assert_eq!(
            (link.copies.load(Ordering::Relaxed), link.live_allocations()),
            (0, 0)
        );
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let options = LoadOptions::new().progress(move |p| s.lock().unwrap().push(p));
    let link = HostLink::default();
    let report = store.initialize_on(&link, &options, tiny()).unwrap();
    assert!(store.is_initialized());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].tensors_done, report.tensors as u64);
    assert_eq!(seen[0].bytes_done, seen[0].bytes_total);
}

/// Seeded random damage of every fixture (see `tests/common/damage.rs`) through the GPU path, as in
/// `tests/no_silent_values.rs` for the host: variables made from the intact checkpoint, the damaged
/// one loaded onto the emulated device (both transfer paths, default and 1 KiB units): an error
/// that names the damaged file and leaves nothing initialized, allocated, registered or queued, or
/// exactly the intact values. Never a panic, never a silently wrong value.
#[test]
fn damaged_checkpoints_load_exactly_or_fail_whole_on_the_device() {
    let mut outcomes = damage::Outcomes::default();
    for (ci, case) in CASES.iter().enumerate() {
        let intact = fixture(case);
        let mut cpu = store_for(&intact);
        cpu.initialize(Device::Cpu).unwrap();
        for it in 0..40u64 {
            let seed = (ci as u64) << 32 | it | 1 << 62;
            let tmp = tempfile::tempdir().unwrap();
            let (damaged, done) = damage::damaged_copy(&intact, tmp.path(), seed);
            let (sizes, register_mappings) = match it % 4 {
                0 => (Sizes::default(), false),
                1 => (Sizes::default(), true),
                2 => (tiny(), false),
                _ => (tiny(), true),
            };
            let context = format!(
                "{case}: {done}, register={register_mappings}, unit {}",
                sizes.unit
            );
            let dir = tmp.path().to_string_lossy().into_owned();
            let options = LoadOptions {
                register_mappings,
                ..Default::default()
            };
            outcomes.run(&context, || {
                load_damaged(&cpu, (&intact, &damaged), &dir, &options, sizes)
            });
        }
    }
    assert!(outcomes.failed > 200 && outcomes.exact > 20, "{outcomes:?}");
}

/// The same random damage (see `tests/common/damage.rs`) of every V2 fixture, served over HTTP and
/// loaded onto the emulated device through the staging ring in the smallest ranges: an error that names
/// the damaged copy's URL and leaves nothing initialized or allocated, or exactly the intact
/// values.
#[cfg(feature = "remote")]
#[test]
fn damaged_remote_checkpoints_load_exactly_or_fail_whole_on_the_device() {
    let root = tempfile::tempdir().unwrap();
    let (addr, _) = http_server(root.path().to_path_buf());
    let mut options = LoadOptions::default();
    options.remote.range_bytes = 64 << 10; // the smallest range allowed
    options.remote.concurrency = 3;
    let mut outcomes = damage::Outcomes::default();
    for (ci, case) in CASES.iter().enumerate().filter(|(_, c)| !c.contains("v1")) {
        let intact = fixture(case);
        let mut cpu = store_for(&intact);
        cpu.initialize(Device::Cpu).unwrap();
        for it in 0..12u64 {
            let seed = (ci as u64) << 32 | it | 1 << 57;
            let key = format!("{ci}-{it}");
            let (_, done) = damage::damaged_copy(&intact, &root.path().join(&key), seed);
            let url = match intact.is_dir() {
                true => format!("http://{addr}/{key}/"),
                false => format!(
                    "http://{addr}/{key}/{}",
                    intact.file_name().unwrap().to_string_lossy()
                ),
            };
            let sizes = if it % 2 == 0 {
                tiny()
            } else {
                Sizes::default()
            };
            let context = format!("{url}: {done}, unit {}", sizes.unit);
            outcomes.run(&context, || {
                load_damaged(&cpu, (&intact, Path::new(&url)), &key, &options, sizes)
            });
        }
    }
    assert!(outcomes.failed > 40 && outcomes.exact > 0, "{outcomes:?}");
}

/// One damaged load onto an emulated device, for the damage tests: variables made from the
/// `intact` checkpoint, loaded from `damaged` (a path or URL). `Ok(false)`: an error that names
/// `damaged_name` (the copy's folder or key) and leaves nothing initialized, allocated,
/// registered or queued; `Ok(true)`: exactly `cpu`'s values (the intact host load); `Err`: neither.
fn load_damaged(
    cpu: &VariableStore,
    (intact, damaged): (&Path, &Path),
    damaged_name: &str,
    options: &LoadOptions,
    sizes: Sizes,
) -> Result<bool, &'static str> {
    let named = |e: &crate::Error| e.to_string().contains(damaged_name);
    let mut gpu = match try_store_for_layout_from(intact, damaged, Layout::Repartitioned) {
        Ok(store) => store,
        Err(e) if named(&e) => return Ok(false),
        Err(_) => return Err("an error that does not name the damaged copy"),
    };
    let link = HostLink::default();
    if let Err(e) = gpu.initialize_on(&link, options, sizes) {
        if !named(&e) {
            return Err("an error that does not name the damaged copy");
        }
        if gpu.is_initialized()
            || gpu.device_values().count() > 0
            || link.live_allocations() > 0
            || link.still_registered() > 0
            || link.queued() > 0
        {
            return Err("a failed load left values, memory, registrations or work behind");
        }
        if link.dropped_copies() > 0 {
            return Err("a failed load unregistered or gave back memory that queued copies read");
        }
        return Ok(false);
    }
    for v in cpu.variables() {
        if Some(&layouts::device_or_host(&gpu, &v.name)) != cpu.value(&v.name) {
            return Err("a silently wrong value");
        }
    }
    Ok(true)
}
