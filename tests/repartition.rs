//! Re-partitioning matrix on TensorFlow-written V2 and V1 checkpoints: tensors stored {5 parts along
//! axis 0, 3 parts along axis 1, whole} are loaded into variables {3 and 7 parts along axis 0, 4 parts
//! along axis 1, whole} for float32, float16, int64, bool and string. Every part equals its box of the
//! value TensorFlow's reader returned, and each stored slice is read once for all its users.

use std::path::{Path, PathBuf};

use serde_json::Value;
#[allow(dead_code)] // shared with the binary: only part of it is used here
#[path = "../src/bin/tfckpt/npy.rs"]
mod npy;

use tfckpt::{
    init_from_checkpoint, AssignmentMap, Checkpoint, DType, Device, Init, Target, Tensor,
    VariableStore,
};

mod common;
use common::fixtures::fixture;

const TARGETS: &[(&str, &[u64])] = &[
    ("to_p3_axis0", &[3, 1]),
    ("to_p7_axis0", &[7, 1]),
    ("to_p4_axis1", &[1, 4]),
    ("to_whole", &[]),
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// TF's value of `tensor` as (shape, one entry per element: hex of its bytes).
fn tf_value(case: &Path, tensor: &str) -> (Vec<u64>, Vec<String>) {
    let base = case.join("expected/values").join(tensor);
    let strings = PathBuf::from(format!("{}.strings.json", base.display()));
    if strings.is_file() {
        let v: Value = serde_json::from_slice(&std::fs::read(strings).unwrap()).unwrap();
        let shape = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        return (
            shape,
            v["hex"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap().to_string())
                .collect(),
        );
    }
    let a = npy::read(std::fs::File::open(format!("{}.npy", base.display())).unwrap()).unwrap();
    let size = a.data.len() / a.shape.iter().product::<u64>() as usize;
    (a.shape, a.data.chunks(size).map(hex).collect())
}

fn elements(t: &Tensor) -> Vec<String> {
    match t.strings() {
        Some(s) => s.iter().map(hex).collect(),
        None => {
            let mut buf = Vec::new();
            npy::write_tensor(&mut buf, t).unwrap(); // same .npy conventions as TF's expected files
            let a = npy::read(&buf[..]).unwrap();
            a.data.chunks(t.dtype.size().unwrap()).map(hex).collect()
        }
    }
}

fn run(case_name: &str) {
    let case = fixture(case_name);
    let ckpt = Checkpoint::open(&case).unwrap();
    let mut store = VariableStore::new();
    let mut map = AssignmentMap::new();
    let mut want_reads = 0;
    let mut checked = 0;
    let mut want_stored_bytes = 0u64;
    for info in ckpt.tensors() {
        want_reads += info.slices.len().max(1);
        // Every stored entry is read whole, and the slices TensorFlow saved of a partitioned
        // variable tile it (strings are not counted in bytes).
        want_stored_bytes += info.byte_len().unwrap_or(0);
        for (target, partitions) in TARGETS {
            let var = format!("new/{}/{target}", info.name);
            if partitions.is_empty() {
                store
                    .get_variable(&var, &info.shape, info.dtype, Init::Zeros)
                    .unwrap();
            } else {
                store
                    .get_partitioned_variable(
                        &var,
                        &info.shape,
                        info.dtype,
                        partitions,
                        Init::Zeros,
                    )
                    .unwrap();
            }
            map.push(info.name.clone(), Target::name(var));
        }
    }
    assert!(
        ckpt.tensors().len() >= 14,
        "{case_name}: {} tensors",
        ckpt.tensors().len()
    );
    init_from_checkpoint(&mut store, &case, &map).unwrap();
    let report = store.initialize(Device::Cpu).unwrap();
    assert_eq!(
        report.stored_reads, want_reads,
        "{case_name}: every stored slice read exactly once"
    );
    assert_eq!(report.stored_bytes, want_stored_bytes, "{case_name}");
    for info in ckpt.tensors() {
        let (shape, tf) = tf_value(&case, &info.name);
        assert_eq!(shape, info.shape);
        for (target, _) in TARGETS {
            let var = format!("new/{}/{target}", info.name);
            let (vars, boxes): (Vec<String>, Vec<Vec<(u64, u64)>>) =
                match store.partitioned_variable(&var) {
                    Some(pv) => pv
                        .parts
                        .iter()
                        .map(|p| {
                            let v = store.variable(p).unwrap();
                            (
                                p.clone(),
                                v.part.as_ref().unwrap().slice(&v.shape).ranges(&info.shape),
                            )
                        })
                        .unzip(),
                    None => (
                        vec![var.clone()],
                        vec![info.shape.iter().map(|&d| (0, d)).collect()],
                    ),
                };
            for (v, b) in vars.iter().zip(boxes) {
                let got = elements(store.value(v).unwrap());
                let cols = shape[1];
                let mut want = Vec::new();
                for r in 0..b[0].1 {
                    for c in 0..b[1].1 {
                        want.push(tf[((b[0].0 + r) * cols + b[1].0 + c) as usize].clone());
                    }
                }
                assert_eq!(got, want, "{case_name}: {v}");
                checked += 1;
            }
        }
        // Every partitioned target's parts joined again (`partitioned_value`) equal the whole
        // target, strings included (found uncovered by a coverage run: the join of string parts
        // had no test).
        let whole = store.value(&format!("new/{}/to_whole", info.name)).unwrap();
        for (target, partitions) in TARGETS.iter().filter(|(_, p)| !p.is_empty()) {
            let var = format!("new/{}/{target}", info.name);
            let joined = store.partitioned_value(&var).unwrap();
            assert_eq!(&joined, whole, "{case_name}: {var} as {partitions:?}");
        }
        if info.dtype != DType::String {
            // The whole target also equals a plain read.
            assert_eq!(
                store.value(&format!("new/{}/to_whole", info.name)).unwrap(),
                &ckpt.read(&info.name).unwrap()
            );
        }
    }
    assert!(checked >= 14 * 15, "{checked}");
}

#[test]
fn v2_matrix() {
    run("repartition_v2");
}

#[test]
fn v1_matrix() {
    run("repartition_v1");
}

/// A ranked load materializes only what its rank owns, says what it read and what it left to
/// other ranks, and refuses a rank not below the number of ranks before reading anything.
/// `partitioned_value` of a name that is no partitioned variable says which ones are close (or
/// that it is a plain variable, or a part), and a part whose value the trainer replaced by one of another shape is refused, naming the part
/// (found uncovered by a coverage run).
#[test]
fn joining_parts_refuses_unknown_names_and_parts_that_no_longer_fit() {
    let mut store = VariableStore::new();
    store
        .get_partitioned_variable("emb", &[4, 2], DType::F32, &[2, 1], Init::Ones)
        .unwrap();
    store.initialize(Device::Cpu).unwrap();
    assert_eq!(
        store.partitioned_value("emb").unwrap().to_f32().unwrap(),
        [1.0; 8]
    );
    let e = store.partitioned_value("embs").unwrap_err();
    assert!(
        matches!(e.kind(), tfckpt::ErrorKind::VariableNotFound { name, suggestions }
            if name == "embs" && suggestions == &["emb"]),
        "{e:?}"
    );
    // A plain variable, or a part, is there but is no partitioned variable: said so, not "not
    // found" (a user's walk-through found that message).
    store
        .get_variable("bias", &[2], DType::F32, Init::Ones)
        .unwrap();
    store
        .variable_object("obj", &[2], DType::F32, Init::Ones)
        .unwrap();
    for (name, message) in [
        (
            "bias",
            "variable \"bias\": is a variable get_variable declared, not a partitioned variable",
        ),
        (
            "emb/part_1",
            "variable \"emb/part_1\": is part 1 of partitioned variable \"emb\", not a \
             partitioned variable",
        ),
        (
            "obj",
            "variable \"obj\": is a variable object, not a partitioned variable",
        ),
    ] {
        let e = store.partitioned_value(name).unwrap_err();
        assert!(
            matches!(e.kind(), tfckpt::ErrorKind::BadVariable { .. }) && e.to_string() == message,
            "{e:?}"
        );
        let e = store.set_part_devices(name, &[Device::Cpu]).unwrap_err();
        assert_eq!(e.to_string(), message);
    }
    *store.value_mut("emb/part_1").unwrap() = Tensor::from_f32(&[1, 2], &[5.0, 6.0]).unwrap();
    let e = store.partitioned_value("emb").unwrap_err();
    assert!(
        matches!(e.kind(), tfckpt::ErrorKind::BadVariable { name, .. } if name == "emb/part_1"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("its value is float32 [1, 2], the partitioned variable needs float32 [2, 2]"),
        "{e}"
    );
    // The right number of bytes is not enough: another shape with as many elements, or the
    // right shape of another dtype of the same size, would be joined as the wrong values.
    let int32 = || Tensor::from_bytes(DType::I32, &[2, 2], vec![0; 16]).unwrap();
    for (part, t, message) in [
        (
            1,
            Tensor::from_f32(&[4, 1], &[5.0; 4]).unwrap(),
            "emb/part_1\": its value is float32 [4, 1], the partitioned variable needs float32 [2, 2]",
        ),
        (
            1,
            int32(),
            "emb/part_1\": its value is int32 [2, 2], and \"emb/part_0\"'s is float32",
        ),
        // The first part changed: the other is named, with the first part's dtype.
        (
            0,
            int32(),
            "emb/part_1\": its value is float32 [2, 2], and \"emb/part_0\"'s is int32",
        ),
    ] {
        store.initialize(Device::Cpu).unwrap();
        *store.value_mut(&format!("emb/part_{part}")).unwrap() = t;
        let e = store.partitioned_value("emb").unwrap_err();
        assert!(e.to_string().contains(message), "{e}");
    }
}

#[test]
fn a_rank_loads_only_what_it_owns() {
    use tfckpt::{ErrorKind, LoadOptions};
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<f32> = (0..40).map(|i| i as f32).collect();
    let mut b = common::builder::CkptBuilder::new(dir.path().join("m"));
    b.f32("emb", &[8, 5], &values).f32("bias", &[5], &[1.0; 5]);
    let prefix = b.finish();
    let store_for = || {
        let mut store = VariableStore::new();
        store
            .get_partitioned_variable("emb", &[8, 5], DType::F32, &[4, 1], Init::Zeros)
            .unwrap();
        store
            .get_variable("bias", &[5], DType::F32, Init::Zeros)
            .unwrap();
        init_from_checkpoint(
            &mut store,
            &prefix,
            &AssignmentMap::from([("/", Target::scope("/"))]),
        )
        .unwrap();
        store
    };
    // Default rule: rank 1 of 3 owns part 1 (and `bias`, which every rank owns).
    let mut store = store_for();
    let r = store
        .initialize_with(Device::Cpu, &LoadOptions::new().rank(1, 3))
        .unwrap();
    assert_eq!(
        (r.variables, r.skipped_variables, r.skipped_bytes),
        (2, 3, 3 * 2 * 5 * 4)
    );
    // `emb` was saved whole: its one stored entry is read whole for the part.
    assert_eq!(r.stored_bytes, 40 * 4 + 5 * 4);
    assert_eq!(
        store.value("emb/part_1").unwrap().to_f32().unwrap(),
        &values[10..20]
    );
    assert!(store.value("emb/part_0").is_none() && store.is_other_rank("emb/part_0"));
    assert!(!store.is_other_rank("bias") && store.value("bias").is_some());
    // This rank's initialization succeeded: the store says so (the other parts are elsewhere).
    assert!(store.is_initialized());
    // The whole is not here: the error says which part is another rank's.
    let e = store.partitioned_value("emb").unwrap_err();
    assert_eq!(
        e.to_string(),
        "variable \"emb/part_0\": has no value here: another rank of the last load \
         (LoadOptions::rank) owns it"
    );
    // Before any load, and after one into the trainer's buffers, the reason is said too.
    let mut store = store_for();
    let e = store.partitioned_value("emb").unwrap_err();
    assert!(
        e.to_string()
            .ends_with("has no value on the host: initialize it first (or fetch_to_host)"),
        "{e}"
    );
    let mut buf = vec![0f32; 10];
    store
        .initialize_into(vec![("emb/part_0", &mut buf[..])], &LoadOptions::new())
        .unwrap();
    assert_eq!(buf, &values[..10]);
    let e = store.partitioned_value("emb").unwrap_err();
    assert_eq!(
        e.to_string(),
        "variable \"emb/part_0\": has no value in the store: the last load put it into the \
         trainer's buffer (initialize_into), or take_value took it out"
    );
    // A buffer for a partitioned variable's own name: its parts are named.
    let e = store
        .initialize_into(vec![("emb", &mut buf[..])], &LoadOptions::new())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "variable \"emb\": is a partitioned variable: give a buffer for each of its 4 parts \
         (\"emb/part_0\", ...)"
    );
    // A rule of the trainer's own: rank 0 of 2 takes the even parts and nothing else.
    let mut store = store_for();
    let even = |v: &tfckpt::Variable, rank: usize, _world: usize| {
        v.part.as_ref().is_some_and(|p| p.index % 2 == rank)
    };
    store
        .initialize_with(Device::Cpu, &LoadOptions::new().rank(0, 2).ownership(even))
        .unwrap();
    let loaded: Vec<&str> = store
        .variables()
        .filter(|v| store.value(&v.name).is_some())
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(loaded, ["emb/part_0", "emb/part_2"]);
    // A rule that answers otherwise when asked again (a tally, against its contract): each
    // variable is still this rank's or another's, never neither (it was asked once to count the
    // variable as this rank's and again to read its tensor, and got no value while the store
    // said it was initialized).
    let mut store = store_for();
    let asked = std::sync::Mutex::new(std::collections::HashMap::<String, usize>::new());
    let fickle = move |v: &tfckpt::Variable, _rank: usize, _world: usize| {
        let mut asked = asked.lock().unwrap();
        let n = asked.entry(v.name.clone()).or_default();
        *n += 1;
        *n % 2 == 1
    };
    store
        .initialize_with(
            Device::Cpu,
            &LoadOptions::new().rank(0, 2).ownership(fickle),
        )
        .unwrap();
    assert!(store.is_initialized());
    for v in store.variables() {
        assert!(
            store.value(&v.name).is_some() != store.is_other_rank(&v.name),
            "{}",
            v.name
        );
    }
    // A rank not below the number of ranks: an error, nothing loaded.
    let mut store = store_for();
    let e = store
        .initialize_with(Device::Cpu, &LoadOptions::new().rank(3, 3))
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::InvalidArgument(m) if m.contains("rank 3 of 3")),
        "{e}"
    );
    assert!(!store.is_initialized());
    // A trainer's buffer for a part another rank owns would be left as it was: an error naming
    // it, before anything is read (the buffer and the other one untouched); this rank's own
    // parts take buffers.
    let mut store = store_for();
    let (mut mine, mut theirs) = (vec![-1f32; 10], vec![-1f32; 10]);
    let e = store
        .initialize_into(
            vec![
                ("emb/part_1", &mut mine[..]),
                ("emb/part_2", &mut theirs[..]),
            ],
            &LoadOptions::new().rank(1, 3),
        )
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::BadVariable { name, reason } if name == "emb/part_2"
            && reason == "a buffer is given for it, but rank 1 of 3 does not own it \
                (LoadOptions::rank): a rank loads only its own variables and parts, and \
                would leave the buffer as it was"),
        "{e}"
    );
    assert!(!store.is_initialized());
    assert_eq!((mine[0], theirs[0]), (-1.0, -1.0));
    store
        .initialize_into(
            vec![("emb/part_1", &mut mine[..])],
            &LoadOptions::new().rank(1, 3),
        )
        .unwrap();
    assert_eq!(mine, &values[10..20]);
}

/// `initialize_into`, the host twin of `set_device_buffer`: every fixture, re-partitioned,
/// loaded into the trainer's own buffers equals the library's own host load byte for byte,
/// initializers included; wrong buffers are errors before anything is read.
#[test]
fn trainer_buffers_take_the_same_values_as_the_host_load() {
    use common::layouts::{store_for_layout, Layout, CASES};
    use tfckpt::ErrorKind;
    for case in CASES {
        let dir = fixture(case);
        let mut host = store_for_layout(&dir, Layout::Repartitioned);
        let host_report = host.initialize(Device::Cpu).unwrap();
        let mut store = store_for_layout(&dir, Layout::Repartitioned);
        let names: Vec<(String, usize)> = store
            .variables()
            .filter_map(|v| {
                let n: u64 = v.shape.iter().product();
                Some((v.name.clone(), n as usize * v.dtype.size()?))
            })
            .collect();
        let mut bufs: Vec<Vec<u8>> = names.iter().map(|(_, n)| vec![0xA5; *n]).collect();
        let given = names
            .iter()
            .zip(bufs.iter_mut())
            .map(|((name, _), b)| (name.as_str(), b.as_mut_slice()))
            .collect();
        let report = store.initialize_into(given, &Default::default()).unwrap();
        // Initialized, though the values are in the trainer's buffers rather than the store.
        assert!(store.is_initialized(), "{case}");
        // The same load, so the same counts, whether values went to buffers or to the store.
        let counts = |r: &tfckpt::LoadReport| {
            let variables = (r.variables, r.from_checkpoint, r.from_initializer);
            (
                variables,
                r.tensors,
                r.stored_reads,
                r.bytes,
                r.stored_bytes,
            )
        };
        assert_eq!(counts(&report), counts(&host_report), "{case}");
        assert!(report.bytes > 0, "{case}");
        for ((name, _), b) in names.iter().zip(&bufs) {
            assert!(
                store.value(name).is_none(),
                "{case}: {name} has a store value too"
            );
            let want = host.value(name).unwrap().bytes().unwrap();
            assert!(want == b.as_slice(), "{case}: {name}");
        }
    }
    // With a cast on load, the buffers hold the cast dtype (converted by the reading worker).
    let dir = fixture("h1_partitioned");
    let options = tfckpt::LoadOptions::new().cast(DType::F32, DType::BF16);
    let mut host = store_for_layout(&dir, Layout::Repartitioned);
    let host_report = host.initialize_with(Device::Cpu, &options).unwrap();
    let mut store = store_for_layout(&dir, Layout::Repartitioned);
    let names: Vec<String> = store.variables().map(|v| v.name.clone()).collect();
    let mut bufs: Vec<Vec<u8>> = names
        .iter()
        .map(|n| vec![0; host.value(n).unwrap().bytes().unwrap().len()])
        .collect();
    let given = names
        .iter()
        .zip(bufs.iter_mut())
        .map(|(n, b)| (n.as_str(), b.as_mut_slice()))
        .collect();
    let report = store.initialize_into(given, &options).unwrap();
    // Bytes counted in the cast dtype either way (the buffers' were counted in the stored one).
    assert_eq!(report.bytes, host_report.bytes);
    for (n, b) in names.iter().zip(&bufs) {
        assert!(
            host.value(n).unwrap().bytes().unwrap() == b.as_slice(),
            "cast {n}"
        );
    }
    // A buffer of the wrong size, or for no variable: errors, and nothing loaded.
    let mut store = store_for_layout(&dir, Layout::Repartitioned);
    let mut small = [0u8; 3];
    let e = store
        .initialize_into(vec![("unmapped/ones", &mut small[..])], &Default::default())
        .unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::BufferSize {
                expected: 60,
                found: 3,
                variable: true,
                elements: None,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "variable \"unmapped/ones\": the buffer given for it holds 3 bytes, its value needs 60"
    );
    // Typed elements are counted as such.
    let mut short = [0f32; 14];
    let e = store
        .initialize_into(vec![("unmapped/ones", &mut short[..])], &Default::default())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "variable \"unmapped/ones\": the buffer given for it holds 14 float32 elements, its \
         value needs 15 (60 bytes)"
    );
    let e = store
        .initialize_into(vec![("nope", &mut small[..])], &Default::default())
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    // Two buffers for one variable: the second would be left as it was, so the call is refused.
    let (mut one, mut two) = ([0u8; 60], [0u8; 60]);
    let e = store
        .initialize_into(
            vec![
                ("unmapped/ones", &mut one[..]),
                ("unmapped/ones", &mut two[..]),
            ],
            &Default::default(),
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid argument: variable \"unmapped/ones\" is given two buffers (one per variable)"
    );
    assert_eq!((one, two), ([0u8; 60], [0u8; 60]));
    assert!(!store.is_initialized());
}

/// A rank-sharded load asks the kernel to read ahead only the stored slices its own parts need:
/// it read ahead every slice of each tensor, so each rank read the whole checkpoint from disk.
/// (Linux: the page cache is looked at with `mincore` after evicting the file; skipped where the
/// file system keeps its pages, tmpfs say.)
#[cfg(target_os = "linux")]
#[test]
fn a_rank_reads_ahead_only_its_own_slices() {
    use tfckpt::{CheckpointWriter, LoadOptions, Slice};
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let prefix = dir.path().join("m");
    let rows = 4u64 << 20; // 16 MiB of float32 per slice
    let mut w = CheckpointWriter::create(&prefix, Default::default()).unwrap();
    for i in 0..4u64 {
        let t = Tensor::from_f32(&[rows, 1], &vec![i as f32 + 1.0; rows as usize]).unwrap();
        let slice = Slice::from_ranges(&[(i * rows, rows), (0, 1)]);
        w.add_slice("emb", &[4 * rows, 1], &slice, (&t).into())
            .unwrap();
    }
    w.finish().unwrap();
    let shard = dir.path().join("m.data-00000-of-00001");
    let bytes = std::fs::read(&shard).unwrap();
    // Where each slice lies in the shard: its 16 MiB run of one value.
    let len = (rows * 4) as usize;
    let start_of = |i: u64| {
        let v = (i as f32 + 1.0).to_le_bytes();
        (0..bytes.len() / len)
            .map(|k| k * len)
            .find(|&at| bytes[at..at + 4] == v && bytes[at + len - 4..at + len] == v)
            .unwrap()
    };
    let starts: Vec<usize> = (0..4).map(start_of).collect();
    drop(bytes);
    let file = std::fs::File::open(&shard).unwrap();
    let resident = |from: usize, to: usize| -> usize {
        use std::os::fd::AsRawFd;
        let page = 4096;
        let n = (to - from) / page;
        let mut vec = vec![0u8; n];
        // SAFETY: a read-only private mapping of the file, unmapped before return; mincore only
        // reports on it.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                to - from,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                from as libc::off_t,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::mincore(p, to - from, vec.as_mut_ptr()), 0);
            libc::munmap(p, to - from);
        }
        vec.iter().filter(|&&b| b & 1 == 1).count()
    };
    // The middle 8 MiB of a slice: mostly clear of the kernel's own readahead around the slices
    // read (up to `read_ahead_kb`, 8 MiB on this project's VM).
    let middle = |i: usize| (starts[i] + (4 << 20), starts[i] + (12 << 20));
    let evict = || {
        use std::os::fd::AsRawFd;
        // SAFETY: a hint about a file this test opened.
        let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0);
    };
    evict();
    let (a, b) = middle(1);
    if resident(a, b) > 0 {
        eprintln!("skipped: this file system keeps the file's pages");
        return;
    }
    let mut store = VariableStore::new();
    store
        .get_partitioned_variable("emb", &[4 * rows, 1], DType::F32, &[4, 1], Init::Zeros)
        .unwrap();
    let map = AssignmentMap::from([("emb", Target::name("emb"))]);
    init_from_checkpoint(&mut store, &prefix, &map).unwrap();
    evict();
    store
        .initialize_with(Device::Cpu, &LoadOptions::new().rank(0, 2))
        .unwrap();
    assert_eq!(store.value("emb/part_2").unwrap().to_f32().unwrap()[0], 3.0);
    assert!(store.is_other_rank("emb/part_1") && store.is_other_rank("emb/part_3"));
    for (i, mine) in [(0, true), (1, false), (2, true), (3, false)] {
        let (a, b) = middle(i);
        let pages = resident(a, b);
        if mine {
            // Read, so resident: all of it, but for a few pages the kernel may have reclaimed
            // (pages read once are the first it takes back; one CI rehearsal on this project's
            // VM found 2043 of 2048, and the test alone never did: the cause is not proven).
            assert!(
                pages >= (b - a) / 4096 * 9 / 10,
                "slice {i}, read by this rank: {pages} of {} pages",
                (b - a) / 4096
            );
        } else {
            // All of it when every slice was read ahead; none, or some of the kernel's own.
            assert!(
                pages <= (b - a) / 4096 / 2,
                "slice {i}, another rank's: {pages} pages"
            );
        }
    }
}

/// Under a cast, the bytes a report and the progress count are those of the values as they are
/// held (float32 here, from float16 tensors): `bytes`, the progress total and `skipped_bytes`
/// agree. The progress and the skipped variables counted the declared float16, half as many.
#[test]
fn bytes_under_a_cast_are_counted_as_held() {
    use tfckpt::LoadOptions;
    let dir = tempfile::tempdir().unwrap();
    let mut b = common::builder::CkptBuilder::new(dir.path().join("m"));
    b.bytes("h", DType::F16, &[1000], &[0; 2000])
        .bytes("g", DType::F16, &[500], &[0; 1000]);
    let prefix = b.finish();
    let mut store = VariableStore::new();
    for (name, n) in [("h", 1000), ("g", 500)] {
        store
            .get_variable(name, &[n], DType::F16, Init::Zeros)
            .unwrap();
    }
    let map = AssignmentMap::from([("h", Target::name("h")), ("g", Target::name("g"))]);
    init_from_checkpoint(&mut store, &prefix, &map).unwrap();
    let last = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = last.clone();
    let options = LoadOptions::new()
        .cast(DType::F16, DType::F32)
        .rank(0, 2)
        .ownership(|v: &tfckpt::Variable, _, _| v.name == "h")
        .progress(move |p| *seen.lock().unwrap() = Some(p));
    let r = store.initialize_with(Device::Cpu, &options).unwrap();
    assert_eq!(r.bytes, 4000);
    assert_eq!(r.skipped_bytes, 2000);
    let p = last.lock().unwrap().unwrap();
    assert_eq!((p.bytes_done, p.bytes_total), (4000, 4000));
}
