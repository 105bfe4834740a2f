//! Checkpoints on object storage onto the device, through a local HTTP server.

use super::*;

/// [`store_for`] the local checkpoint `dir`, mapped to its copy at `url`.
fn remote_store(dir: &Path, url: &str) -> VariableStore {
    layouts::store_for_layout_from(dir, Path::new(url), Layout::Repartitioned)
}

/// Checkpoints on object storage onto devices: the ranged GETs land in the staging ring (never
/// registered), are checksummed there, and the values equal the host load of the local files,
/// on one device and placed across three with replicas; a damaged remote shard fails naming it.
#[test]
fn remote_checkpoints_load_through_the_staging_ring() {
    let (addr, _) = http_server(fixtures::fixtures());
    let mut options = LoadOptions::default();
    options.remote.range_bytes = 64 << 10;
    options.remote.concurrency = 3;
    let mut n = 0;
    for case in CASES.iter().filter(|c| !c.contains("v1")) {
        let dir = fixture(case);
        let mut cpu = store_for(&dir);
        cpu.initialize(Device::Cpu).unwrap();
        let url = format!("http://{addr}/{case}");
        for (sizes, register) in [(Sizes::default(), true), (tiny(), false)] {
            let what = format!("{url} {sizes:?} register={register}");
            let options = LoadOptions {
                register_mappings: register,
                ..options.clone()
            };
            let link = HostLink::default();
            let mut gpu = remote_store(&dir, &url);
            let report = gpu
                .initialize_on(&link, &options, sizes)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            n += assert_same(&cpu, &gpu, &what);
            let d = report.device.as_ref().unwrap();
            assert_eq!(
                d.registered_bytes, 0,
                "{what}: nothing of a remote shard is registered"
            );
            assert!(d.staged_bytes > 0, "{what}");
            assert_eq!(link.registrations.load(Ordering::Relaxed), 0, "{what}");
        }
        // Three devices, the CPU and replicas, gathered.
        let links = HostLink::devices(3);
        let pairs = pairs_of(&links);
        let gather = crate::gpu::emulated::HostGather::new(&pairs);
        let mut many = remote_store(&dir, &url);
        place_on_three(&mut many);
        let replicated = replicate(&mut many);
        load_on(&mut many, &pairs, Some(&gather), &options, Sizes::default())
            .unwrap_or_else(|e| panic!("{url} on three: {e}"));
        assert_same(&cpu, &many, &url);
        for name in &replicated {
            let want = cpu.value(name).unwrap();
            for r in many.device_replicas(name) {
                assert_eq!(&r.to_host().unwrap(), want, "{url}: {name}");
            }
        }
    }
    assert!(n > 100, "{n}");
}

#[test]
fn a_damaged_remote_shard_fails_naming_its_url_and_loads_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    for (path, bytes) in fixtures::tree(&fixture("repartition_v2")) {
        let to = tmp.path().join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, bytes).unwrap();
    }
    let url = format!("http://{}", http_server(tmp.path().to_path_buf()).0);
    let mut store = remote_store(tmp.path(), &url);
    let (data, offset) = {
        let ckpt = crate::Checkpoint::open(tmp.path()).unwrap();
        let s = ckpt.stored("float32/whole").unwrap();
        let src = s.device_sources().unwrap().unwrap().remove(0);
        (src.path, src.offset)
    };
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[offset as usize + 3] ^= 0x10;
    std::fs::write(&data, &bytes).unwrap();
    let link = HostLink::default();
    let err = store
        .initialize_on(&link, &LoadOptions::default(), tiny())
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TensorChecksum { path, tensor, .. }
            if path.to_string_lossy().starts_with(&url) && tensor == "float32/whole"),
        "{err}"
    );
    assert_eq!(link.live_allocations(), 0);
    assert!(!store.is_initialized());
}

/// Neighbouring tensors of one remote shard share a unit, and a unit within `range_bytes` is one
/// ranged GET: 16 tensors of 1 KiB take one request for their 16 KiB, not one each (on object
/// storage every request costs a round trip and is billed).
#[test]
fn neighbouring_remote_tensors_are_fetched_in_one_ranged_get() {
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..16).map(|k| format!("t{k:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let prefix = write_f32s(tmp.path(), &names, &[256]);
    let (addr, seen) = http_server(tmp.path().to_path_buf());
    let url = format!("http://{addr}/ckpt");
    let mut options = LoadOptions::default();
    options.remote.range_bytes = 64 << 10;
    let mut host = mapped_store(&prefix, &names, whole_f32(&[256]));
    host.initialize(Device::Cpu).unwrap();
    for (sizes, what) in [(Sizes::default(), "default sizes"), (tiny(), "1 KiB units")] {
        let mut gpu = mapped_store(Path::new(&url), &names, whole_f32(&[256]));
        seen.lock().unwrap().clear();
        let link = HostLink::default();
        gpu.initialize_on(&link, &options, sizes)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_same(&host, &gpu, what);
        let data: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, path, _)| m == "GET" && path.ends_with(".data-00000-of-00001"))
            .cloned()
            .collect();
        assert!(
            data.iter().all(|(_, _, ranged)| *ranged),
            "{what}: {data:?}"
        );
        // Units of 1 KiB hold one tensor each, and each unit is a GET of its own.
        let want = if sizes.unit >= 16 << 10 { 1 } else { 16 };
        assert_eq!(data.len(), want, "{what}: {data:?}");
    }
}

/// Units of two remote shards whose tensors lie at the same offsets (the writer alternates
/// shards): each shard's neighbours still share a unit (one GET a shard; the units are ordered by
/// object, then offset: ordered by offset alone, the two objects' units interleaved and none
/// joined, 16 GETs), and a unit never joins another object's bytes (a tensor of the second shard
/// just past one of the first fetched from the first: a checksum error).
#[test]
fn remote_units_join_neighbours_of_one_object_only() {
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..16).map(|k| format!("t{k:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let prefix = write_f32s_in_shards(tmp.path(), &names, &[256], 2);
    let (addr, seen) = http_server(tmp.path().to_path_buf());
    let url = format!("http://{addr}/ckpt");
    let mut options = LoadOptions::default();
    options.remote.range_bytes = 64 << 10;
    // Every tensor; then t00 (first shard, bytes 0..1 KiB) and t03 (second shard, 1..2 KiB).
    for names in [&names[..], &["t00", "t03"]] {
        let mut host = mapped_store(&prefix, names, whole_f32(&[256]));
        host.initialize(Device::Cpu).unwrap();
        let mut gpu = mapped_store(Path::new(&url), names, whole_f32(&[256]));
        seen.lock().unwrap().clear();
        let link = HostLink::default();
        gpu.initialize_on(&link, &options, Sizes::default())
            .unwrap_or_else(|e| panic!("{names:?}: {e}"));
        assert_same(&host, &gpu, "two shards");
        let mut gets: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, path, _)| m == "GET" && path.contains(".data-"))
            .map(|(_, path, _)| path.clone())
            .collect();
        gets.sort();
        let want = ["/ckpt.data-00000-of-00002", "/ckpt.data-00001-of-00002"];
        assert_eq!(gets, want, "{names:?}");
    }
}
