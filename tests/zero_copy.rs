//! Copy-on-write values: with `LoadOptions::map_values`, `initialize` maps large values that a V2
//! checkpoint stores exactly as a variable needs them (a whole tensor, or a part equal to a stored
//! slice) instead of copying them.
//! The values must equal the copied ones byte for byte on every TensorFlow fixture, be checked
//! against their CRC, be writable without touching the file, and fail cleanly on a damaged file.

use std::path::{Path, PathBuf};

mod common;

use common::builder::CkptBuilder;
use common::fixtures::{copy_files, fixture};
use common::layouts::{store_for_layout, Layout, CASES};
#[cfg(target_os = "linux")]
use common::resident::resident_of;

use tfckpt::{
    init_from_checkpoint, AssignmentMap, DType, Device, ErrorKind, Init, LoadOptions, Target,
    TensorData, VariableStore,
};

fn map_all() -> LoadOptions {
    LoadOptions {
        map_values: true,
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
    for &case in CASES {
        let dir = fixture(case);
        let mut copied = store_for_layout(&dir, Layout::AsStored);
        let r = copied.initialize(Device::Cpu).unwrap();
        assert_eq!(r.mapped_bytes, 0);
        assert_eq!(mapped_count(&copied), 0);
        let mut mapped = store_for_layout(&dir, Layout::AsStored);
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

/// A cast on load reads the values it converts into new memory; the other values are still
/// mapped, and the report counts exactly those.
#[test]
fn a_cast_maps_the_values_it_does_not_convert() {
    let is_mapped = |store: &VariableStore, name: &str| matches!(&store.value(name).unwrap().data, TensorData::Bytes(b) if b.is_mapped());
    let dir = fixture("dtypes/dtypes");
    let mut plain = store_for_layout(&dir, Layout::AsStored);
    plain.initialize_with(Device::Cpu, &map_all()).unwrap();
    let mut cast = store_for_layout(&dir, Layout::AsStored);
    let r = cast
        .initialize_with(Device::Cpu, &map_all().cast(DType::F32, DType::BF16))
        .unwrap();
    let (mut converted, mut mapped_bytes) = (0, 0);
    for v in plain.variables() {
        let value = cast.value(&v.name).unwrap();
        if v.dtype == DType::F32 {
            converted += 1;
            assert_eq!(value.dtype, DType::BF16, "{}", v.name);
            assert!(!is_mapped(&cast, &v.name), "{}", v.name);
        } else {
            assert_eq!(Some(value), plain.value(&v.name), "{}", v.name);
            assert_eq!(is_mapped(&cast, &v.name), is_mapped(&plain, &v.name));
            if is_mapped(&cast, &v.name) {
                mapped_bytes += value.bytes().unwrap().len() as u64;
            }
        }
    }
    assert!(converted > 0 && mapped_bytes > 0);
    assert_eq!(r.mapped_bytes, mapped_bytes);
}

/// What `map_values` maps and what it copies, entry by entry: an entry of at least
/// `map_min_bytes` (the bound included) at an offset aligned for its dtype is mapped; a smaller
/// one, one at a misaligned offset (TensorFlow does not pad entries), and, in a big-endian
/// bundle, one of multi-byte elements are copied. Every value is exact either way, and the
/// report counts each entry read once and the mapped bytes.
#[test]
fn map_values_maps_only_entries_usable_as_stored() {
    let b_values = [1.5f32, -2.0, 3.25, 0.0];
    let n_values = [7.0f32, -8.5];
    for big_endian in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let options = tfckpt::WriterOptions {
            big_endian,
            ..Default::default()
        };
        let mut w = CkptBuilder::with_options(dir.path().join("ck"), options);
        // Data in this order: a at byte 0 (4 bytes), b at 4, m at 20 (1 byte), n at 21.
        w.bytes("a", DType::U8, &[4], &[1, 2, 3, 4])
            .f32("b", &[4], &b_values)
            .bytes("m", DType::U8, &[1], &[9])
            .f32("n", &[2], &n_values);
        let ck = w.finish();
        let mut store = VariableStore::new();
        for (name, shape, dtype) in [
            ("a", &[4u64][..], DType::U8),
            ("b", &[4], DType::F32),
            ("m", &[1], DType::U8),
            ("n", &[2], DType::F32),
        ] {
            store.get_variable(name, shape, dtype, Init::Zeros).unwrap();
        }
        let map = AssignmentMap::from([("a", "a"), ("b", "b"), ("m", "m"), ("n", "n")]);
        init_from_checkpoint(&mut store, &ck, &map).unwrap();
        let options = LoadOptions {
            map_values: true,
            map_min_bytes: Some(4),
            ..Default::default()
        };
        let r = store.initialize_with(Device::Cpu, &options).unwrap();
        let value = |n: &str| store.value(n).unwrap();
        assert_eq!(value("a").bytes().unwrap(), [1, 2, 3, 4]);
        assert_eq!(value("b").to_f32().unwrap(), b_values);
        assert_eq!(value("m").bytes().unwrap(), [9]);
        assert_eq!(value("n").to_f32().unwrap(), n_values);
        let mapped: Vec<&str> = ["a", "b", "m", "n"]
            .into_iter()
            .filter(|n| matches!(&value(n).data, TensorData::Bytes(b) if b.is_mapped()))
            .collect();
        let (want, bytes) = if big_endian {
            (vec!["a"], 4)
        } else {
            (vec!["a", "b"], 20)
        };
        assert_eq!(mapped, want, "big-endian: {big_endian}");
        assert_eq!((r.mapped_bytes, r.stored_reads), (bytes, 4));
    }
}

#[test]
fn mapping_is_opt_in_and_only_for_large_values() {
    // The default copies; map_values with the default threshold (1 MiB) leaves the fixtures' small
    // values copied too.
    for map_values in [false, true] {
        let mut store = store_for_layout(&fixture("sharded"), Layout::AsStored);
        let options = LoadOptions {
            map_values,
            ..Default::default()
        };
        let r = store.initialize_with(Device::Cpu, &options).unwrap();
        assert_eq!(r.mapped_bytes, 0);
        assert_eq!(mapped_count(&store), 0);
    }
}

#[test]
fn mapped_values_are_copy_on_write_and_never_write_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    copy_files(&fixture("repartition_v2"), tmp.path());
    let shard = tmp.path().join("model-0.data-00000-of-00001");
    let before = std::fs::read(&shard).unwrap();
    let mut store = store_for_layout(tmp.path(), Layout::AsStored);
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
    let mut fresh = store_for_layout(tmp.path(), Layout::AsStored);
    fresh.initialize_with(Device::Cpu, &map_all()).unwrap();
    assert_eq!(fresh.value(&name).unwrap(), &original);
}

/// A mapped value moved out of the store gives the stored bytes through each of `Bytes`'
/// conversions (each a copy, or the mapping itself), as a copied value does.
#[test]
fn a_mapped_value_converts_to_the_stored_bytes() {
    let dir = fixture("repartition_v2");
    let mut copied = store_for_layout(&dir, Layout::AsStored);
    copied.initialize(Device::Cpu).unwrap();
    let load = || {
        let mut store = store_for_layout(&dir, Layout::AsStored);
        store.initialize_with(Device::Cpu, &map_all()).unwrap();
        store
    };
    let (mut a, mut b) = (load(), load());
    let mut checked = 0;
    for v in copied.variables() {
        let want = copied.value(&v.name).unwrap().bytes().map(<[u8]>::to_vec);
        let take = |s: &mut VariableStore| match s.take_value(&v.name).unwrap().data {
            TensorData::Bytes(b) if b.is_mapped() => Some(b),
            _ => None,
        };
        let (Some(x), Some(y)) = (take(&mut a), take(&mut b)) else {
            continue;
        };
        let want = want.unwrap();
        assert_eq!(x.as_ref(), want, "{}", v.name);
        assert_eq!(
            format!("{x:?}"),
            format!("{:?}", tfckpt::Bytes::from(want.clone()))
        );
        assert_eq!(Vec::from(x), want, "{}", v.name);
        assert_eq!(y.into_vec(), want, "{}", v.name);
        checked += 1;
    }
    assert!(checked >= 2, "{checked} mapped values");
}

#[test]
fn damaged_or_truncated_shard_fails_with_mapping() {
    let tmp = tempfile::tempdir().unwrap();
    copy_files(&fixture("sharded"), tmp.path());
    let shard = tmp.path().join("model.ckpt-0.data-00001-of-00003");
    // The stores first: building one reads every tensor once (to skip unreadable dtypes).
    let (mut store, mut store2) = (
        store_for_layout(tmp.path(), Layout::AsStored),
        store_for_layout(tmp.path(), Layout::AsStored),
    );
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

/// Writes `tensors` (name, dtype, bytes) in order into one shard, each of rank 1.
fn write(dir: &Path, tensors: &[(&str, tfckpt::DType, Vec<u8>)]) -> PathBuf {
    let mut b = CkptBuilder::new(dir.join("m"));
    for (name, dtype, data) in tensors {
        let n = (data.len() / dtype.size().unwrap()) as u64;
        b.bytes(name, *dtype, &[n], data);
    }
    b.finish()
}

#[test]
fn one_read_per_entry_and_aligned_values() {
    use tfckpt::DType;
    let tmp = tempfile::tempdir().unwrap();
    // "c" at offset 0; "a" (3 bytes) then puts "b" at an odd offset: misaligned for float32, so
    // "b" is copied, not mapped.
    let prefix = write(
        tmp.path(),
        &[
            (
                "c",
                DType::F32,
                (0..4096u32).flat_map(|i| (i * 3).to_le_bytes()).collect(),
            ),
            ("a", DType::I8, vec![1, 2, 3]),
            (
                "b",
                DType::F32,
                (0..4096u32).flat_map(|i| i.to_le_bytes()).collect(),
            ),
        ],
    );
    let mut store = VariableStore::new();
    for (name, n) in [("b1", 4096), ("b2", 4096), ("c1", 4096), ("c2", 4096)] {
        store
            .get_variable(name, &[n], DType::F32, Init::Zeros)
            .unwrap();
    }
    let map = AssignmentMap::from([
        ("b", Target::name("b1")),
        ("b", Target::name("b2")),
        ("c", Target::name("c1")),
        ("c", Target::name("c2")),
    ]);
    init_from_checkpoint(&mut store, &prefix, &map).unwrap();
    let r = store.initialize_with(Device::Cpu, &map_all()).unwrap();
    // Each stored entry read once however many variables take it.
    assert_eq!(r.stored_reads, 2);
    let is_mapped =
        |n: &str| matches!(&store.value(n).unwrap().data, TensorData::Bytes(b) if b.is_mapped());
    assert!(
        !is_mapped("b1") && !is_mapped("b2"),
        "misaligned values are copied"
    );
    assert!(is_mapped("c1") && is_mapped("c2"));
    for n in ["c1", "c2"] {
        let p = store.value(n).unwrap().bytes().unwrap().as_ptr() as usize;
        assert_eq!(p % 4, 0, "{n} is aligned for float32");
    }
    assert_eq!(store.value("c1"), store.value("c2"));
    assert_eq!(
        store.value("b1").unwrap().bytes().unwrap()[4 * 4095..],
        4095u32.to_le_bytes()
    );
}

/// One tensor taken whole by one variable (mappable) and in parts by a partitioned one (copied):
/// the entry is read and verified once for both, so the whole value is copied with the parts
/// (it was mapped and checksummed, then read and checksummed again for the parts: two reads of
/// one entry, against `LoadReport::stored_reads`). Values equal a plain read.
#[test]
fn an_entry_both_mapped_and_copied_is_read_once() {
    use tfckpt::DType;
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..4096u32).flat_map(|i| (i * 7).to_le_bytes()).collect();
    let prefix = write(tmp.path(), &[("t", DType::F32, data.clone())]);
    let mut store = VariableStore::new();
    store
        .get_variable("whole", &[4096], DType::F32, Init::Zeros)
        .unwrap();
    store
        .get_partitioned_variable("parts", &[4096], DType::F32, &[3], Init::Zeros)
        .unwrap();
    let map = AssignmentMap::from([("t", Target::name("whole")), ("t", Target::name("parts"))]);
    init_from_checkpoint(&mut store, &prefix, &map).unwrap();
    let r = store.initialize_with(Device::Cpu, &map_all()).unwrap();
    assert_eq!(r.stored_reads, 1, "{r}");
    assert_eq!(store.value("whole").unwrap().bytes().unwrap(), &data[..]);
    let whole = store.partitioned_value("parts").unwrap();
    assert_eq!(whole.bytes().unwrap(), &data[..]);
    // Alone, the whole value is mapped.
    let mut alone = VariableStore::new();
    alone
        .get_variable("whole", &[4096], DType::F32, Init::Zeros)
        .unwrap();
    let map = AssignmentMap::from([("t", Target::name("whole"))]);
    init_from_checkpoint(&mut alone, &prefix, &map).unwrap();
    alone.initialize_with(Device::Cpu, &map_all()).unwrap();
    assert_eq!(mapped_count(&alone), 1);
}

#[test]
fn mappings_are_capped_and_the_rest_copied() {
    use tfckpt::DType;
    // More values than the cap on live mappings: the load succeeds, the excess is copied.
    let cap = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(65530)
        / 4;
    let n = cap + 200;
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("t{i:06}")).collect();
    let tensors: Vec<(&str, DType, Vec<u8>)> = names
        .iter()
        .map(|s| (s.as_str(), DType::F32, vec![0u8; 4]))
        .collect();
    let prefix = write(tmp.path(), &tensors);
    let mut store = VariableStore::new();
    for s in &names {
        store
            .get_variable(&format!("v/{s}"), &[1], DType::F32, Init::Ones)
            .unwrap();
    }
    init_from_checkpoint(
        &mut store,
        &prefix,
        &AssignmentMap::from([("/", Target::scope("v/"))]),
    )
    .unwrap();
    let r = store.initialize_with(Device::Cpu, &map_all()).unwrap();
    let mapped = mapped_count(&store);
    assert!(mapped <= cap && mapped > 0, "{mapped} mapped, cap {cap}");
    assert!(r.mapped_bytes <= 4 * cap as u64);
    assert!(store
        .variables()
        .all(|v| store.value(&v.name).unwrap().to_f32().unwrap() == [0.0]));
    drop(store);
    // The slots come back when the values go: another load maps again.
    let mut again = store_for_layout(&fixture("repartition_v2"), Layout::AsStored);
    let r = again.initialize_with(Device::Cpu, &map_all()).unwrap();
    assert!(r.mapped_bytes > 0);
}

/// A zero-copy view exists only of a whole V2 tensor of plain little-endian elements; anything
/// else is `Unsupported`, naming the tensor, saying why and pointing to `Checkpoint::read`, which
/// reads it. Byte-buffer reads of strings are refused the same way (found uncovered by a coverage
/// run: no test asked for such a view).
#[test]
fn views_refuse_what_is_not_stored_as_plain_elements() {
    let unsupported = |ckpt: &tfckpt::Checkpoint, name: &str, why: &str| {
        let e = ckpt.view(name).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Unsupported { tensor, what }
                if tensor == name && what.contains(why) && what.ends_with("use Checkpoint::read")),
            "{name}: {e:?}"
        );
        ckpt.read(name).unwrap();
    };
    let v1 = tfckpt::Checkpoint::open(common::fixtures::ckpt_path("v1")).unwrap();
    let any = v1.tensors()[0].name.clone();
    unsupported(&v1, &any, "a V1 file stores values as protobuf fields");
    let parted = tfckpt::Checkpoint::open(common::fixtures::ckpt_path("h1_partitioned")).unwrap();
    let part = parted.tensors().iter().find(|t| !t.slices.is_empty());
    unsupported(
        &parted,
        &part.expect("a partitioned tensor").name,
        "saved as several slices",
    );
    let dtypes = tfckpt::Checkpoint::open(common::fixtures::ckpt_path("dtypes")).unwrap();
    let s = dtypes
        .tensors()
        .iter()
        .find(|t| t.dtype == tfckpt::DType::String);
    let s = s.expect("a string tensor").name.clone();
    unsupported(
        &dtypes,
        &s,
        "string tensors are not stored as plain elements",
    );
    let e = dtypes.byte_len(&s, None).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Unsupported { tensor, what }
            if tensor == &s && what.contains("cannot be read into a byte buffer")),
        "{e:?}"
    );
    assert!(dtypes.read_into(&s, &mut []).is_err());
    // Big-endian: multi-byte elements need swapping, single bytes do not.
    let dir = tempfile::tempdir().unwrap();
    let options = tfckpt::WriterOptions {
        big_endian: true,
        ..Default::default()
    };
    let mut b = CkptBuilder::with_options(dir.path().join("be"), options);
    b.f32("f", &[2], &[1.0, 2.0])
        .bytes("u", tfckpt::DType::U8, &[3], &[1, 2, 3]);
    let be = tfckpt::Checkpoint::open(b.finish()).unwrap();
    unsupported(&be, "f", "the checkpoint is big-endian");
    assert_eq!(be.view("u").unwrap().as_bytes(), [1, 2, 3]);
}

/// A copying load, a verification and a safetensors export give the shard pages they have read
/// back to the page cache: the checkpoint is not kept resident twice, once in the values and once
/// in the shards' mappings (it was: a 2 GiB copying load's peak resident size was 4.2 GB, 2.8 GB
/// after; `verify` peaked at 2.1 GB, then 0.1 GB).
#[cfg(target_os = "linux")]
#[test]
fn read_shard_pages_leave_the_mapping() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors: Vec<(String, DType, Vec<u8>)> = (0..8u8)
        .map(|i| (format!("t{i}"), DType::F32, vec![i; 1 << 20]))
        .collect();
    let refs: Vec<(&str, DType, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, b)| (n.as_str(), *d, b.clone()))
        .collect();
    let prefix = write(tmp.path(), &refs);
    // As /proc/self/smaps names it: the path with its symbolic links resolved.
    let shard = std::fs::canonicalize(format!("{}.data-00000-of-00001", prefix.display())).unwrap();
    let mut store = VariableStore::new();
    for (name, _, _) in &tensors {
        store
            .get_variable(name, &[1 << 18], DType::F32, Init::Zeros)
            .unwrap();
    }
    init_from_checkpoint(
        &mut store,
        &prefix,
        &AssignmentMap::from([("/", Target::scope("/"))]),
    )
    .unwrap();
    // After each tensor (one thread: in file order), what the load's mapping of the shard holds.
    let most = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = most.clone();
    let shard_seen = shard.clone();
    let options = LoadOptions::new()
        .threads(1)
        .progress(move |_| seen.lock().unwrap().push(resident_of(&shard_seen)));
    store.initialize_with(Device::Cpu, &options).unwrap();
    for (name, _, bytes) in &tensors {
        assert_eq!(
            store.value(name).unwrap().bytes().unwrap(),
            &bytes[..],
            "{name}"
        );
    }
    let resident = most.lock().unwrap().clone();
    assert!(resident.len() >= 8, "{resident:?}");
    assert!(
        resident.iter().all(|&r| r <= 1 << 20),
        "the shard's pages stayed mapped as the load went on: {resident:?}"
    );
    // A verification and an export, from the checkpoint's own mapping, which lives on after
    // them.
    let ckpt = tfckpt::Checkpoint::open(&prefix).unwrap();
    // A view holds its pages mapped: the count sees them (so that a zero below means something).
    let view = ckpt.view("t3").unwrap();
    assert_eq!(view.as_bytes()[..], [3u8; 1 << 20][..]);
    let held = resident_of(&shard);
    assert!(held >= 1 << 20, "a view's pages not seen in smaps: {held}");
    drop(view);
    ckpt.verify().unwrap();
    let left = resident_of(&shard);
    assert!(
        left <= 64 << 10,
        "{left} bytes of the shard stayed mapped after `verify`"
    );
    #[cfg(feature = "safetensors")]
    {
        ckpt.write_safetensors(tmp.path().join("m.safetensors"))
            .unwrap();
        let left = resident_of(&shard);
        assert!(
            left <= 64 << 10,
            "{left} bytes of the shard stayed mapped after the export"
        );
    }
}
