//! Copy-on-write values: `initialize` maps large values that a V2 checkpoint stores exactly as a
//! variable needs them (a whole tensor, or a part equal to a stored slice) instead of copying them.
//! The values must equal the copied ones byte for byte on every TensorFlow fixture, be checked
//! against their CRC, be writable without touching the file, and fail cleanly on a damaged file.

use std::path::{Path, PathBuf};

use tfckpt::{
    init_from_checkpoint, AssignmentMap, Checkpoint, Device, ErrorKind, Init, LoadOptions, Target,
    TensorData, VariableStore,
};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tf")
        .join(case)
}

/// Every readable tensor as a variable of the same layout: whole, or partitioned exactly as stored.
fn store_for(dir: &Path) -> VariableStore {
    let ckpt = Checkpoint::open(dir).unwrap();
    let mut store = VariableStore::new();
    let mut map = AssignmentMap::new();
    for info in ckpt.tensors() {
        if ckpt.read(&info.name).is_err() {
            continue;
        }
        let name = format!("v/{}", info.name.replace(':', "_"));
        let made = if info.slices.is_empty() {
            store
                .get_variable(&name, &info.shape, info.dtype, Init::Zeros)
                .map(drop)
        } else {
            // The axis the stored slices split, and how many there are.
            let r0 = info.slices[0].ranges(&info.shape);
            let r1 = info.slices[1].ranges(&info.shape);
            let axis = (0..info.shape.len()).find(|&d| r0[d] != r1[d]).unwrap();
            let mut parts = vec![1; info.shape.len()];
            parts[axis] = info.slices.len() as u64;
            store
                .get_partitioned_variable(&name, &info.shape, info.dtype, &parts, Init::Zeros)
                .map(drop)
        };
        if made.is_ok() {
            map.push(info.name.clone(), Target::name(name));
        }
    }
    init_from_checkpoint(&mut store, dir, &map).unwrap();
    store
}

fn map_all() -> LoadOptions {
    LoadOptions {
        map_min_bytes: Some(0),
        ..Default::default()
    }
}

fn mapped_count(store: &VariableStore) -> usize {
    store
        .variables()
        .filter(|v| match &store.value(&v.name).unwrap().data {
            TensorData::Bytes(b) => b.is_mapped(),
            _ => false,
        })
        .count()
}

#[test]
fn mapped_values_equal_copied_values_on_every_fixture() {
    for case in [
        "dtypes/dtypes",
        "dtypes_extra/extra",
        "partitioned_axes",
        "sharded",
        "sharded_partitioned",
        "repartition_v2",
        "tf2_object",
        "h1_partitioned",
        "v1",
        "repartition_v1",
    ] {
        let dir = fixture(case);
        let mut copied = store_for(&dir);
        let copy = LoadOptions {
            copy_values: true,
            ..Default::default()
        };
        let r = copied.initialize_with(Device::Cpu, &copy).unwrap();
        assert_eq!(r.mapped_bytes, 0);
        assert_eq!(mapped_count(&copied), 0);
        let mut mapped = store_for(&dir);
        let r = mapped.initialize_with(Device::Cpu, &map_all()).unwrap();
        for v in copied.variables() {
            assert_eq!(
                mapped.value(&v.name),
                copied.value(&v.name),
                "{case}: {}",
                v.name
            );
        }
        let n = mapped_count(&mapped);
        if case.contains("v1") {
            assert_eq!(n, 0, "{case}: V1 values are never mapped");
        } else {
            assert!(n > 0 && r.mapped_bytes > 0, "{case}: nothing mapped");
        }
        // Partitioned parts equal to stored slices are mapped too.
        if case == "partitioned_axes" {
            assert!(mapped
                .variables()
                .any(|v| v.part.is_some() && mapped.value(&v.name).unwrap().bytes().is_some()
                    && matches!(&mapped.value(&v.name).unwrap().data, TensorData::Bytes(b) if b.is_mapped())));
        }
    }
}

#[test]
fn default_maps_only_large_values() {
    // The fixtures' values are all below 1 MiB: the default copies them.
    let mut store = store_for(&fixture("sharded"));
    let r = store.initialize(Device::Cpu).unwrap();
    assert_eq!(r.mapped_bytes, 0);
    assert_eq!(mapped_count(&store), 0);
}

#[test]
fn mapped_values_are_copy_on_write_and_never_write_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture("repartition_v2")).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
    }
    let shard = tmp.path().join("model-0.data-00000-of-00001");
    let before = std::fs::read(&shard).unwrap();
    let mut store = store_for(tmp.path());
    store.initialize_with(Device::Cpu, &map_all()).unwrap();
    let name = store
        .variables()
        .find(|v| matches!(&store.value(&v.name).unwrap().data, TensorData::Bytes(b) if b.is_mapped() && b.len() >= 2))
        .unwrap()
        .name
        .clone();
    let original = store.value(&name).unwrap().clone();
    // A clone is ordinary memory, free to change.
    let mut t = store.value(&name).unwrap().clone(); // a clone is owned memory
    assert!(matches!(&t.data, TensorData::Bytes(b) if !b.is_mapped()));
    if let TensorData::Bytes(b) = &mut t.data {
        b[0] ^= 0xff;
    }
    assert_ne!(&t, &original);
    // Writing the mapped value itself, in place: copy-on-write.
    if let Some(TensorData::Bytes(b)) = store.value_mut(&name).map(|t| &mut t.data) {
        assert!(b.is_mapped());
        b[0] ^= 0xff;
        let last = b.len() - 1;
        b[last] ^= 0x0f;
    }
    assert_ne!(store.value(&name).unwrap(), &original);
    let (now, was) = (
        store.value(&name).unwrap().bytes().unwrap(),
        original.bytes().unwrap(),
    );
    let n = was.len();
    assert_eq!(
        now[1..n - 1],
        was[1..n - 1],
        "only the written bytes changed"
    );
    assert_eq!(
        std::fs::read(&shard).unwrap(),
        before,
        "the file is never written"
    );
    // A fresh load still sees the stored value.
    let mut fresh = store_for(tmp.path());
    fresh.initialize_with(Device::Cpu, &map_all()).unwrap();
    assert_eq!(fresh.value(&name).unwrap(), &original);
}

#[test]
fn damaged_or_truncated_shard_fails_with_mapping() {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture("sharded")).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
    }
    let shard = tmp.path().join("model.ckpt-0.data-00001-of-00003");
    // The stores first: building one reads every tensor once (to skip unreadable dtypes).
    let (mut store, mut store2) = (store_for(tmp.path()), store_for(tmp.path()));
    let good = std::fs::read(&shard).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    std::fs::write(&shard, &bad).unwrap();
    let err = store.initialize_with(Device::Cpu, &map_all()).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::TensorChecksum { path, .. } if *path == shard),
        "{err}"
    );
    assert!(!store.is_initialized());
    std::fs::write(&shard, &good[..good.len() / 2]).unwrap();
    let err = store2.initialize_with(Device::Cpu, &map_all()).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::OutOfBounds { .. }), "{err}");
}
