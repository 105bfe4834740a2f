//! One test per error kind: every failure is a typed error naming the file, tensor, offset and the
//! expected vs found values.

mod common;

use common::builder::CkptBuilder;
use common::fixtures::{copy_files, files_in, fixture};
use common::*;
use tfckpt::{Checkpoint, CheckpointWriter, ErrorKind, Slice, Tensor, WriterOptions};

fn good_bundle(dir: &std::path::Path) -> std::path::PathBuf {
    let mut b = CkptBuilder::new(dir.join("ckpt"));
    b.f32("a", &[4], &[1., 2., 3., 4.])
        .f32("b", &[2, 2], &[5., 6., 7., 8.]);
    b.finish()
}

fn err(r: tfckpt::Result<impl std::fmt::Debug>) -> tfckpt::Error {
    r.expect_err("expected an error")
}

/// Asserts that `e`'s message starts with `start` (the file, URL, tensor or variable it names).
fn says(e: &tfckpt::Error, start: impl AsRef<str>) {
    assert!(e.to_string().starts_with(start.as_ref()), "{e}");
}

/// `e` is a corrupt table in `path` at `offset` whose reason contains `why`, and says so first
/// (`case`: which case of a loop, for the failure message).
fn corrupt_table(
    e: &tfckpt::Error,
    path: &std::path::Path,
    offset: u64,
    why: &str,
    case: impl std::fmt::Debug,
) {
    assert!(
        matches!(
            e.kind(),
            ErrorKind::CorruptTable { path: p, offset: o, reason, tensor: None }
                if p == path && *o == offset && reason.contains(why)
        ),
        "{case:?}: {e:#?}"
    );
    says(
        e,
        format!("{}: corrupt table at offset {offset}", path.display()),
    );
}

#[test]
fn not_found() {
    let dir = tempfile::tempdir().unwrap();
    let e = err(Checkpoint::open(dir.path().join("no_dir")));
    assert!(matches!(e.kind(), ErrorKind::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("no_dir"));
    // An existing directory without a state file.
    let e = err(Checkpoint::open(dir.path()));
    assert!(
        matches!(e.kind(), ErrorKind::NoCheckpointInDir { .. }),
        "{e}"
    );
    // A state file naming a checkpoint that is gone.
    std::fs::write(
        dir.path().join("checkpoint"),
        "model_checkpoint_path: \"gone-1\"\n",
    )
    .unwrap();
    let e = err(Checkpoint::open(dir.path()));
    assert!(e.to_string().contains("gone-1"), "{e}");
}

/// A folder without a state file that holds a checkpoint all the same says where, and opening it
/// stays an error, as in TensorFlow: a SavedModel's folder (one TensorFlow saved) names its
/// variables, a folder of index files names their prefixes, newest first, three at most.
#[test]
fn a_folder_without_a_state_file_says_what_it_holds() {
    let no_state = |dir: &std::path::Path| {
        let e = err(Checkpoint::open(dir));
        assert!(
            matches!(e.kind(), ErrorKind::NoCheckpointInDir { .. }),
            "{e}"
        );
        let text = e.to_string();
        let head = format!(
            "couldn't find a checkpoint in directory {}: it has no 'checkpoint' state file",
            dir.display()
        );
        assert!(text.starts_with(&head), "{text}");
        text[head.len()..].to_string()
    };
    let saved_model = fixture("saved_model");
    let variables = saved_model.join("variables").join("variables");
    assert_eq!(
        no_state(&saved_model),
        format!(
            "; it is a SavedModel, whose variables are the checkpoint {}",
            variables.display()
        )
    );
    assert_eq!(
        no_state(&saved_model.join("variables")),
        format!("; it holds the checkpoint {}", variables.display())
    );
    Checkpoint::open(&variables).unwrap();

    // A SavedModel's variables without its saved_model.pb: no SavedModel, and no index here.
    let dir = tempfile::tempdir().unwrap();
    copy_files(
        &saved_model.join("variables"),
        &dir.path().join("variables"),
    );
    assert_eq!(no_state(dir.path()), "");
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(no_state(dir.path()), "");
    let prefix = |i: u64| dir.path().join(format!("m-{i}"));
    let names = |list: &[u64]| -> String {
        let v: Vec<String> = list
            .iter()
            .map(|&i| prefix(i).display().to_string())
            .collect();
        v.join(", ")
    };
    // Made in the order 3, 1, 2, 5, 4: the newest by time, not by name.
    for (age, i) in [3u64, 1, 2, 5, 4].into_iter().enumerate() {
        for suffix in [".index", ".data-00000-of-00001"] {
            let (mut src, mut dst) = (
                variables.clone().into_os_string(),
                prefix(i).into_os_string(),
            );
            src.push(suffix);
            dst.push(suffix);
            std::fs::copy(&src, &dst).unwrap();
        }
        let index = std::fs::File::options()
            .write(true)
            .open(dir.path().join(format!("m-{i}.index")))
            .unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + age as u64);
        index.set_modified(when).unwrap();
        match age {
            1 => assert_eq!(
                no_state(dir.path()),
                format!(
                    "; it holds 2 checkpoints: {} (newest first)",
                    names(&[1, 3])
                )
            ),
            4 => assert_eq!(
                no_state(dir.path()),
                format!("; it holds 5 checkpoints, the newest {}", names(&[4, 5, 2]))
            ),
            _ => {}
        }
    }
}

#[test]
fn bad_magic_and_short_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x");
    std::fs::write(&f, vec![7u8; 100]).unwrap();
    let e = err(Checkpoint::open(&f));
    assert!(matches!(e.kind(), ErrorKind::NotSstable { .. }), "{e}");
    assert!(e.to_string().contains("bad magic"), "{e}");
    std::fs::write(&f, b"short").unwrap();
    let e = err(Checkpoint::open(&f));
    assert!(e.to_string().contains("too short"), "{e}");
    std::fs::write(&f, b"").unwrap();
    assert!(matches!(
        err(Checkpoint::open(&f)).kind(),
        ErrorKind::NotSstable { .. }
    ));
}

/// An index whose footer (magic intact) holds no readable block handles: a corrupt table at the
/// footer's own offset, 48 bytes before the end. A defect here names an offset past the end of
/// the file, or anywhere else, as where the damage is.
#[test]
fn unreadable_footer_handles_name_the_footer_offset() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = good_bundle(dir.path());
    let index = dir.path().join("ckpt.index");
    let mut bytes = std::fs::read(&index).unwrap();
    let footer = bytes.len() - 48;
    // Varints that never end within their 10 bytes.
    bytes[footer..footer + 40].fill(0xff);
    std::fs::write(&index, bytes).unwrap();
    let e = err(Checkpoint::open(&prefix));
    let why = "unreadable block handles in the footer";
    corrupt_table(&e, &index, footer as u64, why, ());
}

/// An index whose footer points the index block past the table data, into the footer itself or
/// beyond the end of the file: a corrupt table at the block's offset, before any byte of it is
/// read. A defect in that bound reads the footer as block bytes (a checksum error at best) or
/// slices past the end of the file (a panic).
#[test]
fn an_index_block_past_the_table_data_is_a_corrupt_table() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = good_bundle(dir.path());
    let index = dir.path().join("ckpt.index");
    let good = std::fs::read(&index).unwrap();
    let footer = good.len() - 48;
    let mut pos = footer;
    let mut handle = || {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = good[pos];
            pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return v;
            }
            shift += 7;
        }
    };
    let (meta_offset, meta_size, index_offset) = (handle(), handle(), handle());
    // The block and its 5-byte trailer end 10 bytes into the footer, then 10 bytes past the file.
    for end in [footer + 10, good.len() + 10] {
        let mut footer_bytes = Vec::new();
        varint(&mut footer_bytes, meta_offset);
        varint(&mut footer_bytes, meta_size);
        varint(&mut footer_bytes, index_offset);
        varint(&mut footer_bytes, end as u64 - index_offset - 5);
        footer_bytes.resize(40, 0);
        let mut bytes = good.clone();
        bytes[footer..footer + 40].copy_from_slice(&footer_bytes);
        std::fs::write(&index, bytes).unwrap();
        let e = err(Checkpoint::open(&prefix));
        let why = "runs past the end of the table data";
        corrupt_table(&e, &index, index_offset, why, end);
    }
}

/// The bytes of an SSTable whose one data block stores `block` as block type `kind` (0 plain, 1
/// snappy) under a correct checksum, at offset 0, with an empty meta block and an index block
/// pointing to it: damage inside the block reaches the parser, not the checksum.
fn one_block_table(block: &[u8], kind: u8) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, data: &[u8], kind: u8) -> (u64, u64) {
        let offset = out.len() as u64;
        out.extend_from_slice(data);
        out.push(kind);
        let crc = tfckpt::crc::crc32c(&out[offset as usize..]);
        out.extend_from_slice(&tfckpt::crc::mask(crc).to_le_bytes());
        (offset, data.len() as u64)
    }
    const EMPTY: [u8; 8] = [0, 0, 0, 0, 1, 0, 0, 0]; // no records, one restart at 0
    let mut file = Vec::new();
    let data = put(&mut file, block, kind);
    let meta = put(&mut file, &EMPTY, 0);
    // The index block: one record (restart interval 1) holding the data block's handle.
    let mut handle = Vec::new();
    varint(&mut handle, data.0);
    varint(&mut handle, data.1);
    let mut index_block = vec![0, 1, handle.len() as u8, 0xff];
    index_block.extend_from_slice(&handle);
    index_block.extend_from_slice(&EMPTY);
    let index = put(&mut file, &index_block, 0);
    let mut footer = Vec::new();
    for v in [meta.0, meta.1, index.0, index.1] {
        varint(&mut footer, v);
    }
    footer.resize(40, 0);
    footer.extend_from_slice(&0xDB47_7524_8B80_FB57u64.to_le_bytes());
    file.extend_from_slice(&footer);
    file
}

/// Opens `table` as the index of a bundle; the error, and the index's path.
fn open_index_table(table: Vec<u8>) -> (tfckpt::Error, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.index");
    std::fs::write(&path, table).unwrap();
    (err(Checkpoint::open(dir.path().join("ckpt"))), path)
}

/// A snappy block (checksum intact) whose header claims far more bytes than snappy can expand its
/// stored bytes to: refused as a corrupt table before anything is allocated. A defect in that
/// bound allocates what the header claims (here 1 GiB, or 40x the stored size) and fails only in
/// the decompression, or overflows on a block of a byte or two. A tiny snappy block (one byte: an
/// empty stream) decompresses to a block too short to hold its restart count: a corrupt table too.
#[test]
fn a_snappy_block_claiming_more_than_it_can_hold_is_refused_before_allocating() {
    for claim in [1u64 << 30, 40 * 64, 0] {
        // A snappy length header, then bytes that are never decoded (none for the empty stream).
        let mut stored = Vec::new();
        varint(&mut stored, claim);
        if claim > 0 {
            stored.resize(64, 0);
        }
        let (e, path) = open_index_table(one_block_table(&stored, 1));
        let why = match claim {
            0 => "block shorter than 4 bytes".to_string(),
            _ => format!("snappy block claims {claim} bytes from 64 stored"),
        };
        corrupt_table(&e, &path, 0, &why, claim);
    }
}

/// A data block whose checksum is right but whose entry is malformed (a writer's bug, or a forged
/// file): an entry running past the block's records, or sharing more of the previous key than
/// there is. A corrupt table naming the block and the entry, never a panic or a made-up key
/// (found by mutation testing: random damage always fails the checksum first, so no test reached
/// these bounds).
#[test]
fn a_malformed_entry_in_a_block_with_a_good_checksum_is_a_corrupt_table() {
    // (shared, non-shared, value length) then 4 bytes of key and value: far past the records,
    // just past them (into the restart array), and a shared prefix longer than the key before.
    for entry in [[0u8, 1, 100], [0, 1, 5], [3, 1, 1]] {
        let mut block = entry.to_vec();
        block.extend_from_slice(b"kvvv");
        block.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0]); // one restart, at 0
        let (e, path) = open_index_table(one_block_table(&block, 0));
        corrupt_table(&e, &path, 0, "bad entry in block at byte 0", entry);
    }
}

#[test]
fn block_checksum_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = good_bundle(dir.path());
    let index = dir.path().join("ckpt.index");
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[3] ^= 0x10; // inside the data block
    std::fs::write(&index, bytes).unwrap();
    let e = err(Checkpoint::open(&prefix));
    match e.kind() {
        ErrorKind::BlockChecksum {
            path,
            offset,
            expected,
            found,
            ..
        } => {
            assert_eq!(path, &index);
            assert_eq!(*offset, 0);
            assert_ne!(expected, found);
        }
        _ => panic!("{e}"),
    }
}

#[test]
fn tensor_checksum_mismatch_names_tensor_shard_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = good_bundle(dir.path());
    let data = dir.path().join("ckpt.data-00000-of-00001");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[17] ^= 1; // inside "b" (offset 16)
    std::fs::write(&data, bytes).unwrap();
    let ckpt = Checkpoint::open(&prefix).unwrap();
    assert!(ckpt.read("a").is_ok());
    let e = err(ckpt.read("b"));
    match e.kind() {
        ErrorKind::TensorChecksum {
            path,
            tensor,
            offset,
            size,
            ..
        } => {
            assert_eq!(
                (path, tensor.as_str(), *offset, *size),
                (&data, "b", 16, 16)
            );
        }
        _ => panic!("{e}"),
    }
    let report = ckpt.verify_all();
    assert_eq!(report.problems.len(), 1);
    assert!(ckpt.verify().is_err());
}

#[test]
fn a_damaged_slice_of_a_partitioned_tensor_is_named_by_tensor_and_slice() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("p");
    let mut w = CheckpointWriter::create(&prefix, WriterOptions::default()).unwrap();
    for (start, rows) in [(0u64, 2u64), (2, 2)] {
        let values: Vec<u8> = (0..rows * 3 * 4).map(|i| i as u8).collect();
        w.add_slice(
            "emb",
            &[4, 3],
            &Slice::from_ranges(&[(start, rows), (0, 3)]),
            tfckpt::TensorRef::Bytes {
                dtype: tfckpt::DType::F32,
                shape: &[rows, 3],
                data: &values,
            },
        )
        .unwrap();
    }
    w.finish().unwrap();
    let data = dir.path().join("p.data-00000-of-00001");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1; // in the second slice
    std::fs::write(&data, bytes).unwrap();
    let e = err(Checkpoint::open(&prefix).unwrap().read("emb"));
    match e.kind() {
        ErrorKind::TensorChecksum { tensor, .. } => assert_eq!(tensor, "emb (slice 2,2:0,3)"),
        _ => panic!("{e}"),
    }
    assert!(
        e.to_string()
            .contains("tensor \"emb\" (slice 2,2:0,3) at offset"),
        "{e}"
    );
}

#[test]
fn truncated_data_shard_is_out_of_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = good_bundle(dir.path());
    let data = dir.path().join("ckpt.data-00000-of-00001");
    std::fs::write(&data, vec![0u8; 20]).unwrap();
    let ckpt = Checkpoint::open(&prefix).unwrap();
    let e = err(ckpt.read("b"));
    match e.kind() {
        ErrorKind::OutOfBounds {
            tensor,
            offset,
            size,
            len,
            ..
        } => {
            assert_eq!((tensor.as_str(), *offset, *size, *len), ("b", 16, 16, 20));
        }
        _ => panic!("{e}"),
    }
}

#[test]
fn truncated_index() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = good_bundle(dir.path());
    let index = dir.path().join("ckpt.index");
    let bytes = std::fs::read(&index).unwrap();
    std::fs::write(&index, &bytes[..bytes.len() - 10]).unwrap();
    assert!(matches!(
        err(Checkpoint::open(&prefix)).kind(),
        ErrorKind::NotSstable { .. }
    ));
}

#[test]
fn missing_data_shard() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = good_bundle(dir.path());
    std::fs::remove_file(dir.path().join("ckpt.data-00000-of-00001")).unwrap();
    let ckpt = Checkpoint::open(&prefix).unwrap(); // listing needs no data
    assert_eq!(ckpt.tensors().len(), 2);
    let e = err(ckpt.read("a"));
    match e.kind() {
        ErrorKind::MissingShard {
            path,
            shard,
            num_shards,
            tensor,
            ..
        } => {
            assert!(path.ends_with("ckpt.data-00000-of-00001"));
            assert_eq!((*shard, *num_shards, tensor.as_str()), (0, 1, "a"));
        }
        _ => panic!("{e}"),
    }
    assert!(e.is_not_found());
    // A directory where the shard should be: the same error, but the shard is there.
    std::fs::create_dir(dir.path().join("ckpt.data-00000-of-00001")).unwrap();
    let e = err(Checkpoint::open(&prefix).unwrap().read("a"));
    assert!(matches!(e.kind(), ErrorKind::MissingShard { .. }), "{e}");
    assert!(
        e.to_string()
            .ends_with("is a directory, not a regular file"),
        "{e}"
    );
    assert!(!e.is_not_found(), "{e}");
}

/// A V2 index missing beside its data files, given as the prefix, as a data file or through a
/// directory's state file, is named as the missing index (it read "no files match it", or the data
/// file was read as a V1 file, "not an SSTable"), and so is a link to nothing; an index that is
/// a directory is named with what the system says.
#[test]
fn a_missing_or_unusable_index_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = good_bundle(dir.path());
    std::fs::write(
        dir.path().join("checkpoint"),
        "model_checkpoint_path: \"ckpt\"\n",
    )
    .unwrap();
    let index = dir.path().join("ckpt.index");
    let data = dir.path().join("ckpt.data-00000-of-00001");
    std::fs::remove_file(&index).unwrap();
    for arg in [&prefix, &data, &dir.path().to_path_buf()] {
        let e = err(Checkpoint::open(arg));
        assert!(
            matches!(e.kind(), ErrorKind::MissingIndex { index: i, data: d } if *i == index && *d == data),
            "{}: {e:?}",
            arg.display()
        );
        assert!(e.is_not_found());
        says(
            &e,
            format!(
                "{}: missing, while the checkpoint's data file {} is there: a V2 checkpoint is \
                 read through its index",
                index.display(),
                data.display()
            ),
        );
    }
    std::fs::create_dir(&index).unwrap();
    for arg in [&prefix, &data, &dir.path().to_path_buf()] {
        let e = err(Checkpoint::open(arg));
        says(
            &e,
            format!("{}: is a directory, not a regular file", index.display()),
        );
        assert!(!e.is_not_found(), "{e}");
    }
    #[cfg(unix)]
    {
        std::fs::remove_dir(&index).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone"), &index).unwrap();
        // A link to nothing is as good as missing.
        let e = err(Checkpoint::open(&prefix));
        assert!(matches!(e.kind(), ErrorKind::MissingIndex { .. }), "{e}");
        assert!(e.is_not_found());
    }
    // Nothing of a checkpoint there: not found, as before.
    let e = err(Checkpoint::open(dir.path().join("other")));
    assert!(matches!(e.kind(), ErrorKind::NotFound { .. }), "{e}");
}

/// A V1 checkpoint file in a V2 index's place, and a V2 index in a V1 file's, say what they are
/// (the first said "BundleHeaderProto not parseable: failed to decode Protobuf message: ...").
#[test]
fn a_v1_file_and_a_v2_index_in_each_others_place_say_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("m.index");
    std::fs::copy(fixture("v1").join("model-3"), &index).unwrap();
    std::fs::write(dir.path().join("m.data-00000-of-00001"), b"").unwrap();
    let e = err(Checkpoint::open(dir.path().join("m")));
    assert!(matches!(e.kind(), ErrorKind::BadHeader { .. }), "{e}");
    says(
        &e,
        format!(
            "{}: bad checkpoint header: this is a V1 checkpoint file (its first record lists \
             saved tensor slices), not a V2 index",
            index.display()
        ),
    );
    let v1 = dir.path().join("v1");
    std::fs::copy(fixture("h1_basic").join("model-0.index"), &v1).unwrap();
    let e = err(Checkpoint::open(&v1));
    says(
        &e,
        format!(
            "{}: bad checkpoint header: the record with key \"\" is not a SavedTensorSliceMeta: \
             this is a V2 checkpoint's index",
            v1.display()
        ),
    );
}

fn bundle_with(
    entry_value: Vec<u8>,
    data: Vec<u8>,
) -> (tempfile::TempDir, tfckpt::Result<Checkpoint>) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = write_bundle(
        dir.path(),
        &[(vec![], header(1)), (b"t".to_vec(), entry_value)],
        &[data],
    );
    let r = Checkpoint::open(prefix);
    (dir, r)
}

#[test]
fn unparseable_entry() {
    let (_d, r) = bundle_with(vec![0x0a, 0xff, 0x01], vec![]);
    let e = err(r);
    assert!(
        matches!(e.kind(), ErrorKind::BadEntry { tensor, .. } if tensor == "t"),
        "{e}"
    );
    assert!(e.to_string().contains("not parseable"), "{e}");
}

#[test]
fn overflowing_shape_and_negative_dims() {
    let (_d, r) = bundle_with(entry(1, &[1 << 40, 1 << 40], 0, 0, 0, 0), vec![]);
    let e = err(r);
    assert!(e.to_string().contains("overflows"), "{e}");
    let (_d, r) = bundle_with(entry(1, &[-3], 0, 0, 0, 0), vec![]);
    assert!(err(r).to_string().contains("negative dimension"));
}

#[test]
fn unknown_dtype() {
    let (_d, r) = bundle_with(entry(99, &[1], 0, 0, 4, 0), vec![0; 4]);
    let e = err(r);
    assert!(
        matches!(e.kind(), ErrorKind::UnknownDtype { value: 99, .. }),
        "{e}"
    );
}

#[test]
fn size_mismatch() {
    let (_d, r) = bundle_with(entry(1, &[3], 0, 0, 8, 0), vec![0; 8]);
    let e = err(r);
    assert!(
        matches!(
            e.kind(),
            ErrorKind::SizeMismatch {
                expected: 12,
                exact: true,
                found: 8,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("stored size is 8 bytes, expected 12 for float32 [3]"),
        "{e}"
    );
    // A string tensor's size has a lower bound only (a length byte per element and a checksum).
    let (_d, r) = bundle_with(entry(7, &[3], 0, 0, 6, 0), vec![0; 6]);
    let e = err(r);
    assert!(
        e.to_string()
            .contains("stored size is 6 bytes, expected at least 7 for string [3]"),
        "{e}"
    );
    // float64 elements whose bytes pass 2^64 (their count fits int64): said so, not u64::MAX.
    let (_d, r) = bundle_with(entry(2, &[1 << 62], 0, 0, 8, 0), vec![0; 8]);
    let e = err(r);
    assert!(
        e.to_string().ends_with(&format!(
            "{} elements of float64 take more than 2^64 bytes",
            1u64 << 62
        )),
        "{e}"
    );
}

#[test]
fn missing_tensor_suggests_close_names() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = good_bundle(dir.path());
    let ckpt = Checkpoint::open(&prefix).unwrap();
    let e = err(ckpt.read("c"));
    match e.kind() {
        ErrorKind::TensorNotFound {
            tensor,
            suggestions,
            ..
        } => {
            assert_eq!(tensor, "c");
            assert_eq!(suggestions, &["a", "b"]);
        }
        _ => panic!("{e}"),
    }
    assert!(e.to_string().contains(r#"did you mean "a", "b"?"#), "{e}");
}

/// A partitioned tensor "p" of shape [4] with the given stored slices, each holding its elements.
fn partitioned(slices: &[(i64, i64)]) -> (tempfile::TempDir, Checkpoint) {
    partitioned_with(slices, |_, e| Some(e))
}

/// [`partitioned`], with the index entry of stored slice `i` replaced by `f(i, entry)` (`None`:
/// left out of the index).
fn partitioned_with(
    slices: &[(i64, i64)],
    f: impl Fn(usize, Vec<u8>) -> Option<Vec<u8>>,
) -> (tempfile::TempDir, Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    let mut full = Vec::new();
    common::pb_varint(&mut full, 1, 1);
    common::pb_bytes(&mut full, 2, &shape(&[4]));
    let mut records = vec![(vec![], header(1))];
    let mut data = Vec::new();
    let mut slice_records = Vec::new();
    for &(start, len) in slices {
        common::pb_bytes(&mut full, 7, &slice(&[(start, len)]));
        let bytes = f32s(&(start..start + len).map(|x| x as f32).collect::<Vec<_>>());
        let key = Slice::from_ranges(&[(start as u64, len as u64)]);
        let key = tfckpt_slice_key("p", &key);
        let e = entry(
            1,
            &[len],
            0,
            data.len() as u64,
            bytes.len() as u64,
            tfckpt::crc::crc32c(&bytes),
        );
        if let Some(e) = f(slice_records.len(), e) {
            slice_records.push((key, e));
        }
        data.extend_from_slice(&bytes);
    }
    slice_records.sort();
    records.extend(slice_records);
    records.push((b"p".to_vec(), full));
    let prefix = write_bundle(dir.path(), &records, &[data]);
    let ckpt = Checkpoint::open(prefix).unwrap();
    (dir, ckpt)
}

/// Slice keys as TensorFlow encodes them (docs/format.md#63-slice-keys), for 1-D slices with small
/// numbers.
fn tfckpt_slice_key(name: &str, s: &Slice) -> Vec<u8> {
    let mut k = vec![0x00];
    k.extend_from_slice(name.as_bytes());
    k.extend_from_slice(&[0x00, 0x01, 0x01, 0x01]);
    for e in s.extents() {
        if let tfckpt::Extent::Range { start, length } = e {
            assert!(*start < 64 && *length < 64);
            k.push(0x80 | *start as u8);
            k.push(0x80 | *length as u8);
        }
    }
    k
}

#[test]
fn insufficient_slices() {
    let (_d, ckpt) = partitioned(&[(0, 2), (3, 1)]);
    assert_eq!(
        ckpt.read_slice("p", &Slice::from_ranges(&[(0, 2)]))
            .unwrap()
            .to_f32()
            .unwrap(),
        [0., 1.]
    );
    let e = err(ckpt.read("p"));
    assert!(
        matches!(e.kind(), ErrorKind::InsufficientSlices { tensor, .. } if tensor == "p"),
        "{e}"
    );
    assert!(e.to_string().contains("0,2, 3,1"), "{e}");
    // The request in TensorFlow's notation: `-` for a whole dimension, `start,length` else.
    for (request, text, held, wanted) in [
        ((0, 4), "-", 3, 4),
        ((0, 3), "0,3", 2, 3),
        ((2, 2), "2,2", 1, 2),
    ] {
        let e = err(ckpt.read_slice("p", &Slice::from_ranges(&[request])));
        let want = format!(
            "tensor \"p\" in checkpoint {}: the stored slices [0,2, 3,1] do not cover the \
             requested slice {text} (insufficient slices: they hold {held} of its {wanted} \
             elements)",
            ckpt.prefix().display()
        );
        assert_eq!(e.to_string(), want);
    }
    // A tensor of many slices: the first 8 are listed, and how many in all.
    let dir = tempfile::tempdir().unwrap();
    let mut w = CheckpointWriter::create(dir.path().join("m"), Default::default()).unwrap();
    for row in 0..10 {
        let t = Tensor::from_f32(&[1], &[row as f32]).unwrap();
        w.add_slice("m", &[11], &Slice::from_ranges(&[(row, 1)]), (&t).into())
            .unwrap();
    }
    w.finish().unwrap();
    let e = err(Checkpoint::open(dir.path().join("m")).unwrap().read("m")).to_string();
    assert!(
        e.contains(
            ": the stored slices [0,1, 1,1, 2,1, 3,1, 4,1, 5,1, 6,1, 7,1, ... 10 in all] do not \
             cover the requested slice - (insufficient slices: they hold 10 of its 11 elements)"
        ),
        "{e}"
    );
}

/// The index entry of a stored slice that is missing, of another dtype or shape than the slice
/// needs, or itself listing slices: reading the tensor fails naming the index, the tensor and the
/// slice, and the other slices still read (found uncovered by a coverage run: no test damaged a
/// slice entry).
#[test]
fn a_damaged_slice_entry_fails_naming_the_slice() {
    type Tamper = Box<dyn Fn(Vec<u8>) -> Option<Vec<u8>>>;
    let cases: [(&str, Tamper); 4] = [
        (
            "the entry of stored slice 2,2 is missing",
            Box::new(|_| None),
        ),
        (
            "stored slice 2,2 is float64 [2], expected float32 [2]",
            Box::new(|_| Some(entry(2, &[2], 0, 8, 16, 0))),
        ),
        (
            "stored slice 2,2 is float32 [3], expected float32 [2]",
            Box::new(|_| Some(entry(1, &[3], 0, 8, 12, 0))),
        ),
        (
            "the entry of stored slice 2,2 lists slices of its own (1)",
            Box::new(|mut e| {
                common::pb_bytes(&mut e, 7, &slice(&[(0, 2)]));
                Some(e)
            }),
        ),
    ];
    for (message, tamper) in cases {
        let (d, ckpt) =
            partitioned_with(
                &[(0, 2), (2, 2)],
                |i, e| if i == 1 { tamper(e) } else { Some(e) },
            );
        let e = err(ckpt.read("p"));
        let index = d.path().join("ckpt.index");
        assert!(
            matches!(e.kind(), ErrorKind::BadEntry { path, tensor, reason }
                if path == &index && tensor == "p" && reason.starts_with(message)),
            "{message}: {e:?}"
        );
        let first = ckpt
            .read_slice("p", &Slice::from_ranges(&[(0, 2)]))
            .unwrap();
        assert_eq!(first.to_f32().unwrap(), [0., 1.]);
        // verify says the same first: the entry explains its checksum's mismatch (it said
        // "checksum mismatch" first, the cause after).
        let problems = ckpt.verify_all().problems;
        assert!(
            problems[0].to_string().contains(message),
            "{message}: {problems:?}"
        );
    }
}

#[test]
fn overlapping_slices() {
    let (_d, ckpt) = partitioned(&[(0, 3), (2, 2)]);
    let e = err(ckpt.read("p"));
    assert!(
        matches!(e.kind(), ErrorKind::OverlappingSlices { ckpt: c, .. } if c == ckpt.prefix()),
        "{e}"
    );
    says(&e, format!("{}: tensor \"p\"", ckpt.prefix().display()));
    assert!(!ckpt.verify_all().problems.is_empty());
}

#[test]
fn good_partitioned_reads_and_bad_requests() {
    let (_d, ckpt) = partitioned(&[(0, 1), (1, 3)]);
    assert_eq!(ckpt.read("p").unwrap().to_f32().unwrap(), [0., 1., 2., 3.]);
    assert_eq!(ckpt.tensors().len(), 1);
    let e = err(ckpt.read_slice("p", &Slice::from_ranges(&[(2, 5)])));
    assert!(matches!(e.kind(), ErrorKind::BadSlice { .. }), "{e}");
    let e = err(ckpt.read_into("p", &mut [0u8; 3]));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::BufferSize {
                expected: 16,
                found: 3,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unsupported_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Vec::new();
    pb_varint(&mut h, 1, 1);
    let mut v = Vec::new();
    pb_varint(&mut v, 1, 1);
    pb_varint(&mut v, 2, 7); // min_consumer 7
    pb_bytes(&mut h, 3, &v);
    let prefix = write_bundle(dir.path(), &[(vec![], h)], &[vec![]]);
    let e = err(Checkpoint::open(prefix));
    assert!(e.to_string().contains("version >= 7"), "{e}");
}

/// An index table whose header record is damaged, missing or out of place, or whose version or
/// shard fields no reader can honour: each is refused at open as a bad header (or, for one entry's
/// shard, a bad entry) naming the index file and what is wrong (found uncovered by a coverage run:
/// no test reached these checks).
#[test]
fn every_header_check_names_the_index_and_the_reason() {
    let version = |fields: &[(u32, u64)]| {
        let mut v = Vec::new();
        for &(f, x) in fields {
            pb_varint(&mut v, f, x);
        }
        v
    };
    let header_with = |num_shards: u64, endianness: u64, v: &[u8]| {
        let mut h = Vec::new();
        pb_varint(&mut h, 1, num_shards);
        if endianness != 0 {
            pb_varint(&mut h, 2, endianness);
        }
        pb_bytes(&mut h, 3, v);
        h
    };
    let good_version = version(&[(1, 1)]);
    let x = f32s(&[1.0]);
    let t = || {
        (
            b"t".to_vec(),
            entry(1, &[1], 0, 0, 4, tfckpt::crc::crc32c(&x)),
        )
    };
    type Records = Vec<(Vec<u8>, Vec<u8>)>;
    let cases: Vec<(&str, Records, &str)> = vec![
        (
            "a negative producer version (int32 -1 on the wire)",
            vec![(vec![], header_with(1, 0, &version(&[(1, u64::MAX)]))), t()],
            "bad checkpoint header: unsupported checkpoint version: producer version -1 is below the minimum 0",
        ),
        (
            "a header that bars readers of version 1",
            vec![(vec![], header_with(1, 0, &version(&[(1, 1), (3, 1)]))), t()],
            "bad checkpoint header: unsupported checkpoint version: it disallows readers of version 1",
        ),
        (
            "an endianness that is neither little nor big",
            vec![(vec![], header_with(1, 2, &good_version)), t()],
            "bad checkpoint header: unknown endianness 2",
        ),
        (
            "a first record that is not the header",
            vec![t()],
            "bad checkpoint header: the first record is not the header (key \"\")",
        ),
        (
            "a header record that is not a BundleHeaderProto",
            vec![(vec![], vec![0x0a, 0xff]), t()],
            "bad checkpoint header: BundleHeaderProto not parseable",
        ),
        (
            "an index with no record at all",
            vec![],
            "bad checkpoint header: the index holds no header record",
        ),
        (
            "no shards for an entry stored in one",
            vec![(vec![], header_with(0, 0, &good_version)), t()],
            "bad checkpoint header: num_shards is 0",
        ),
    ];
    for (what, records, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let prefix = write_bundle(dir.path(), &records, std::slice::from_ref(&x));
        let index = dir.path().join("ckpt.index");
        let e = err(Checkpoint::open(&prefix));
        assert!(
            matches!(e.kind(), ErrorKind::BadHeader { path, .. } if path == &index),
            "{what}: {e:#?}"
        );
        says(&e, format!("{}: {message}", index.display()));
    }

    // One entry in a shard the header does not count: a bad entry, named.
    let dir = tempfile::tempdir().unwrap();
    let prefix = write_bundle(
        dir.path(),
        &[
            (vec![], header(1)),
            (b"t".to_vec(), entry(1, &[1], 3, 0, 4, 0)),
        ],
        std::slice::from_ref(&x),
    );
    let e = err(Checkpoint::open(&prefix));
    assert!(
        matches!(e.kind(), ErrorKind::BadEntry { tensor, .. } if tensor == "t"),
        "{e:#?}"
    );
    assert!(
        e.to_string()
            .ends_with("shard_id 3 but the header says 1 shard"),
        "{e}"
    );
}

/// Shapes an index entry cannot have (more dimensions than any tensor may have) and a byte range
/// past `int64`'s end are bad entries naming the tensor; an entry with no shape at all is a
/// scalar, as protobuf's defaults make it (found uncovered by a coverage run). `unknown_rank` is
/// ignored, as TensorFlow 2.21 ignores it (its `TensorShape` takes the dims; checked on a
/// TF-written bundle whose index was rewritten so): it was refused.
#[test]
fn entry_shapes_and_ranges_the_reader_refuses_or_defaults() {
    let mut unknown_rank = Vec::new();
    pb_varint(&mut unknown_rank, 3, 1);
    // dims [2] and unknown_rank = true (a second shape field merges into the first): [2].
    let two = f32s(&[1.5, -2.0]);
    let mut e = entry(1, &[2], 0, 0, 8, tfckpt::crc::crc32c(&two));
    pb_bytes(&mut e, 2, &unknown_rank);
    let (_d, r) = bundle_with(e, two);
    assert_eq!(r.unwrap().read("t").unwrap().to_f32().unwrap(), [1.5, -2.0]);
    // unknown_rank alone: a scalar.
    let one = f32s(&[2.5]);
    let mut e = entry(1, &[], 0, 0, 4, tfckpt::crc::crc32c(&one));
    pb_bytes(&mut e, 2, &unknown_rank);
    let (_d, r) = bundle_with(e, one);
    let t = r.unwrap().read("t").unwrap();
    assert!(t.shape.is_empty());
    assert_eq!(t.to_f32().unwrap(), [2.5]);
    // 255 dimensions of 1
    let (_d, r) = bundle_with(entry(1, &[1; 255], 0, 0, 4, 0), vec![0; 4]);
    let e = err(r);
    assert!(
        e.to_string()
            .ends_with("invalid tensor shape: 255 dimensions, at most 254 allowed"),
        "{e}"
    );
    // 254 are allowed
    let x = f32s(&[2.5]);
    let (_d, r) = bundle_with(
        entry(1, &[1; 254], 0, 0, 4, tfckpt::crc::crc32c(&x)),
        x.clone(),
    );
    assert_eq!(r.unwrap().read("t").unwrap().to_f32().unwrap(), [2.5]);
    // offset + size past int64
    let (_d, r) = bundle_with(entry(1, &[1], 0, i64::MAX as u64, 4, 0), vec![]);
    let e = err(r);
    assert!(
        e.to_string()
            .ends_with(&format!("offset {} + size 4 overflows", i64::MAX)),
        "{e}"
    );
    // No shape field: a scalar.
    let mut scalar = Vec::new();
    pb_varint(&mut scalar, 1, 1);
    pb_varint(&mut scalar, 5, 4);
    pb_fixed32(&mut scalar, 6, tfckpt::crc::mask(tfckpt::crc::crc32c(&x)));
    let (_d, r) = bundle_with(scalar, x);
    let t = r.unwrap().read("t").unwrap();
    assert!(t.shape.is_empty(), "{:?}", t.shape);
    assert_eq!(t.to_f32().unwrap(), [2.5]);
}

/// Not an error: TensorFlow stores an empty `variant` tensor as 0 bytes (a variant element takes at
/// least 5), and a checkpoint holding one must open, list and verify (found in review: the index
/// parser used to demand the 4 bytes an empty *string* tensor takes).
#[test]
fn empty_variant_tensor_opens_lists_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let x = f32s(&[1.0, 2.0]);
    let records = vec![
        (vec![], header(1)),
        (b"a_variant".to_vec(), entry(21, &[0], 0, 0, 0, 0)),
        (
            b"b".to_vec(),
            entry(1, &[2], 0, 0, 8, tfckpt::crc::crc32c(&x)),
        ),
    ];
    let prefix = write_bundle(dir.path(), &records, &[x]);
    let ckpt = Checkpoint::open(&prefix).unwrap();
    let names: Vec<&str> = ckpt.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a_variant", "b"]);
    ckpt.verify().unwrap();
    let e = err(ckpt.read("a_variant"));
    assert!(matches!(e.kind(), ErrorKind::Unsupported { .. }), "{e}");
    // A variant entry too small for its elements is still refused when the index is opened.
    let records = vec![
        (vec![], header(1)),
        (b"v".to_vec(), entry(21, &[2], 0, 0, 9, 0)),
    ];
    let prefix = write_bundle(dir.path(), &records, &[vec![0; 9]]);
    let e = err(Checkpoint::open(prefix));
    assert!(matches!(e.kind(), ErrorKind::SizeMismatch { .. }), "{e}");
}

#[test]
fn string_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::from_strings(&[2], vec![b"hello".to_vec(), b"world".to_vec()]).unwrap();
    let mut b = CkptBuilder::new(dir.path().join("s"));
    b.tensor("s", &t);
    let prefix = b.finish();
    let data = dir.path().join("s.data-00000-of-00001");
    let good = std::fs::read(&data).unwrap();
    let mut bytes = good.clone();
    bytes[8] ^= 1; // in the string bytes
    std::fs::write(&data, &bytes).unwrap();
    let e = err(Checkpoint::open(&prefix).unwrap().read("s"));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::TensorChecksum {
                what: "checksum",
                ..
            }
        ),
        "{e}"
    );
    let mut bytes = good.clone();
    bytes[2] ^= 1; // in the length checksum
    std::fs::write(&data, &bytes).unwrap();
    let e = err(Checkpoint::open(&prefix).unwrap().read("s"));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::TensorChecksum {
                what: "string length checksum",
                ..
            }
        ),
        "{e}"
    );
    let mut bytes = good;
    bytes[0] = 200; // a length past the end
    std::fs::write(&data, &bytes).unwrap();
    let e = err(Checkpoint::open(&prefix).unwrap().read("s"));
    assert!(e.to_string().contains("s.data-00000-of-00001"), "{e}");
}

#[test]
fn huge_claimed_shapes_fail_before_allocating() {
    // A CRC-valid index can claim 2^40 elements; reading must fail on the shard's length, not
    // try to allocate terabytes.
    let (_d, r) = bundle_with(entry(1, &[1 << 40], 0, 0, 4 << 40, 0), vec![0; 16]);
    let e = err(r.unwrap().read("t"));
    assert!(matches!(e.kind(), ErrorKind::OutOfBounds { .. }), "{e}");
    let (_d, r) = bundle_with(entry(7, &[1 << 40], 0, 0, (1 << 40) + 4, 0), vec![0; 16]);
    let e = err(r.unwrap().read("t"));
    assert!(matches!(e.kind(), ErrorKind::OutOfBounds { .. }), "{e}");
}

#[test]
fn hostile_headers_and_keys() {
    // A header claiming 2^31-1 shards: only the shards entries use are ever opened.
    let dir = tempfile::tempdir().unwrap();
    let data = f32s(&[1., 2.]);
    std::fs::write(
        dir.path().join("ckpt.index"),
        table(&[
            (vec![], header((1 << 31) - 1)),
            (
                b"t".to_vec(),
                entry(1, &[2], 0, 0, 8, tfckpt::crc::crc32c(&data)),
            ),
        ]),
    )
    .unwrap();
    std::fs::write(dir.path().join("ckpt.data-00000-of-2147483647"), &data).unwrap();
    let ckpt = Checkpoint::open(dir.path().join("ckpt")).unwrap();
    assert_eq!(ckpt.read("t").unwrap().to_f32().unwrap(), [1., 2.]);
    // A key that is not UTF-8 is refused at open, naming it.
    let (_d, r) = {
        let dir = tempfile::tempdir().unwrap();
        let prefix = write_bundle(
            dir.path(),
            &[
                (vec![], header(1)),
                (b"a\xff".to_vec(), entry(1, &[0], 0, 0, 0, 0)),
            ],
            &[vec![]],
        );
        (dir, Checkpoint::open(prefix))
    };
    assert!(err(r).to_string().contains("not UTF-8"));
    // A partitioned full entry whose whole would not fit in memory is refused at open.
    let mut full = Vec::new();
    common::pb_varint(&mut full, 1, 18); // complex128
    common::pb_bytes(&mut full, 2, &shape(&[1 << 59, 2]));
    common::pb_bytes(&mut full, 7, &slice(&[(0, 1), (0, -1)]));
    let (_d, r) = bundle_with(full, vec![]);
    assert!(err(r).to_string().contains("too large"));
}

#[test]
fn writer_rejects_bad_slices_without_leaving_traces() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("w");
    let mut w = CheckpointWriter::create(&prefix, WriterOptions::default()).unwrap();
    let two = Tensor::from_f32(&[2], &[1., 2.]).unwrap();
    // Wrong data length: refused, and no slice is recorded.
    let bad = tfckpt::TensorRef::Bytes {
        dtype: tfckpt::DType::F32,
        shape: &[2],
        data: &[0u8; 4],
    };
    assert!(w
        .add_slice("p", &[4], &Slice::from_ranges(&[(0, 2)]), bad)
        .is_err());
    w.add_slice("p", &[4], &Slice::from_ranges(&[(0, 2)]), (&two).into())
        .unwrap();
    // Overlapping slice: refused.
    assert!(w
        .add_slice("p", &[4], &Slice::from_ranges(&[(1, 2)]), (&two).into())
        .is_err());
    w.add_slice("p", &[4], &Slice::from_ranges(&[(2, 2)]), (&two).into())
        .unwrap();
    w.finish().unwrap();
    let ckpt = Checkpoint::open(&prefix).unwrap();
    assert_eq!(ckpt.read("p").unwrap().to_f32().unwrap(), [1., 2., 1., 2.]);
    ckpt.verify().unwrap();
}

/// Defect: a `finish` that failed part-way left its temporary index and every shard not yet
/// renamed, and a `create` that failed on its second shard left the first; now neither leaves a
/// temporary file, and the error names the file. (A shard renamed before the failure stays, as
/// TensorFlow's do: it is no checkpoint without its index.)
#[test]
fn a_writer_that_fails_part_way_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("w");
    let options = WriterOptions {
        num_shards: 3,
        ..Default::default()
    };
    let mut w = CheckpointWriter::create(&prefix, options.clone()).unwrap();
    for name in ["a", "b", "c"] {
        w.add(name, (&Tensor::from_f32(&[2], &[1., 2.]).unwrap()).into())
            .unwrap();
    }
    // The second shard's name is taken by a folder: its rename fails.
    std::fs::create_dir(dir.path().join("w.data-00001-of-00003")).unwrap();
    let e = err(w.finish()).to_string();
    assert!(e.contains("w.data-00001-of-00003"), "{e}");
    assert_eq!(
        files_in(dir.path()),
        ["w.data-00000-of-00003", "w.data-00001-of-00003"]
    );
    std::fs::remove_dir(dir.path().join("w.data-00001-of-00003")).unwrap();
    // The third shard's temporary name is taken (by a folder here: another write's file, a
    // link): the writer takes the next name beside it, and leaves what was there alone.
    let pid = std::process::id();
    let third = format!("z.data-00002-of-00003.tempstate{pid}");
    std::fs::create_dir(dir.path().join(&third)).unwrap();
    let w = CheckpointWriter::create(dir.path().join("z"), options.clone()).unwrap();
    assert!(dir.path().join(format!("{third}-1")).is_file());
    drop(w);
    assert!(dir.path().join(&third).is_dir());
    // Every name it may take is: `create` fails on the third shard, naming it, and leaves none
    // of the first two.
    for k in 1..1000 {
        std::fs::create_dir(dir.path().join(format!("{third}-{k}"))).unwrap();
    }
    let e = err(CheckpointWriter::create(dir.path().join("z"), options)).to_string();
    assert!(
        e.contains("z.data-00002-of-00003") && e.contains("temporary names beside it are taken"),
        "{e}"
    );
    for k in 0..1000 {
        let name = match k {
            0 => third.clone(),
            _ => format!("{third}-{k}"),
        };
        std::fs::remove_dir(dir.path().join(name)).unwrap();
    }
    assert_eq!(files_in(dir.path()), ["w.data-00000-of-00003"]);
}

/// Writing over an earlier checkpoint when a shard cannot be written out in `finish` (a full
/// disk; here the file size limit, with `SIGXFSZ` ignored): the earlier checkpoint is intact and
/// no temporary file is left. Shards were written out and renamed one by one, so the first was
/// already replaced, with the old index gone, and both checkpoints were lost.
#[cfg(unix)]
#[test]
fn a_shard_that_cannot_be_written_out_leaves_the_earlier_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("w");
    // "a" (40 bytes) goes to shard 0, "b" (40 KB) to shard 1: both stay in their writers'
    // buffers until `finish`.
    let write = |values: f32| {
        let options = WriterOptions {
            num_shards: 2,
            ..Default::default()
        };
        let mut w = CheckpointWriter::create(&prefix, options).unwrap();
        let a = Tensor::from_f32(&[10], &[values; 10]).unwrap();
        let b = Tensor::from_f32(&[10_000], &[values; 10_000]).unwrap();
        w.add("a", (&a).into()).unwrap();
        w.add("b", (&b).into()).unwrap();
        w
    };
    write(1.0).finish().unwrap();
    let child = || {
        let w = write(2.0);
        // SAFETY: plain calls on this process: files may not grow past 20 KB, and a write
        // past that fails with EFBIG instead of killing it.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 20_000,
                rlim_max: libc::RLIM_INFINITY,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        }
        match w.finish() {
            Ok(()) => Err("finished past the size limit".into()),
            Err(e) if e.to_string().contains("w.data-00001-of-00002") => Ok(()),
            Err(e) => Err(format!("another error: {e}")),
        }
    };
    assert_eq!(common::fork::in_child(child), "ok");
    let ckpt = Checkpoint::open(&prefix).unwrap();
    assert_eq!(ckpt.read("a").unwrap().to_f32().unwrap(), [1.0; 10]);
    assert_eq!(ckpt.read("b").unwrap().to_f32().unwrap(), [1.0; 10_000]);
    assert_eq!(
        files_in(dir.path()),
        ["w.data-00000-of-00002", "w.data-00001-of-00002", "w.index"]
    );
}

/// Writing over an earlier checkpoint and failing part way among the renames leaves no index (a
/// prefix plainly incomplete, "not found") rather than the old index over new shards, which failed
/// every read with checksum errors. Two writers of one prefix in one process each keep their own
/// temporary files: the checkpoint is the one finished last, whole.
#[test]
fn a_failed_overwrite_leaves_no_stale_index_and_two_writers_do_not_mix() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("w");
    // A writer of `shards` shards with tensors a and b added (a alone with 3 shards).
    let writer = |shards: u32, values: [f32; 2]| {
        let options = WriterOptions {
            num_shards: shards,
            ..Default::default()
        };
        let mut w = CheckpointWriter::create(&prefix, options).unwrap();
        let names: &[&str] = if shards == 2 { &["a", "b"] } else { &["a"] };
        for name in names {
            w.add(name, (&Tensor::from_f32(&[2], &values).unwrap()).into())
                .unwrap();
        }
        w
    };
    let write = |values| writer(2, values);
    // A folder (holding a file) where shard `name` goes: its rename fails.
    let block = |name: &str| {
        let path = dir.path().join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), b"x").unwrap();
        path
    };
    write([1., 2.]).finish().unwrap();
    // Shard 1 cannot be replaced.
    let w = write([3., 4.]);
    let shard1 = block("w.data-00001-of-00002");
    let e = err(w.finish()).to_string();
    assert!(e.contains("w.data-00001-of-00002"), "{e}");
    assert!(!dir.path().join("w.index").exists());
    assert!(err(Checkpoint::open(&prefix)).is_not_found());
    std::fs::remove_dir_all(&shard1).unwrap();
    // A checkpoint of another shard count is untouched by a failed write of 3 shards (none of
    // its files is replaced): it keeps its index and reads.
    write([1., 2.]).finish().unwrap();
    let w3 = writer(3, [0., 0.]);
    let blocked = block("w.data-00001-of-00003");
    err(w3.finish());
    let ckpt = Checkpoint::open(&prefix).unwrap();
    assert_eq!(ckpt.read("a").unwrap().to_f32().unwrap(), [1., 2.]);
    std::fs::remove_dir_all(&blocked).unwrap();
    // Nor is one of 3 shards by a failed write of 2 that replaces a leftover shard of an
    // earlier 2-shard save (shard files of another count stay under a prefix written again).
    writer(3, [3., 4.]).finish().unwrap();
    let w = write([5., 6.]);
    let shard1 = block("w.data-00001-of-00002");
    err(w.finish());
    let ckpt = Checkpoint::open(&prefix).unwrap();
    assert_eq!(ckpt.read("a").unwrap().to_f32().unwrap(), [3., 4.]);
    std::fs::remove_dir_all(&shard1).unwrap();
    for i in 0..3 {
        std::fs::remove_file(dir.path().join(format!("w.data-0000{i}-of-00003"))).unwrap();
    }
    // Two writers at once.
    let (mut first, mut second) = (write([5., 6.]), write([7., 8.]));
    let c = Tensor::from_f32(&[1], &[9.]).unwrap();
    first.add("c", (&c).into()).unwrap();
    second.add("d", (&c).into()).unwrap();
    first.finish().unwrap();
    second.finish().unwrap();
    let ckpt = Checkpoint::open(&prefix).unwrap();
    ckpt.verify().unwrap();
    assert_eq!(ckpt.read("a").unwrap().to_f32().unwrap(), [7., 8.]);
    assert!(ckpt.read("c").is_err() && ckpt.read("d").is_ok());
    assert_eq!(
        files_in(dir.path()),
        ["w.data-00000-of-00002", "w.data-00001-of-00002", "w.index"]
    );
}

/// A signal handler's thread removes the temporary files of a write in progress with
/// `remove_partial_outputs` (the binary does on Ctrl-C); the write then fails naming a file, and
/// leaves nothing. In a process of its own: the registry is the process's, and other tests write.
#[cfg(unix)]
#[test]
fn remove_partial_outputs_removes_an_unfinished_checkpoint() {
    common::fork::in_a_process_of_its_own(
        "remove_partial_outputs_in_this_process",
        "TFCKPT_TEST_PARTIAL",
        "1",
    );
}

/// The other half of the test above: run only by it, in a process of its own.
#[cfg(unix)]
#[test]
#[ignore = "run by remove_partial_outputs_removes_an_unfinished_checkpoint"]
fn remove_partial_outputs_in_this_process() {
    assert_eq!(std::env::var("TFCKPT_TEST_PARTIAL").as_deref(), Ok("1"));
    let dir = tempfile::tempdir().unwrap();
    let mut w = CheckpointWriter::create(
        dir.path().join("w"),
        WriterOptions {
            num_shards: 2,
            ..Default::default()
        },
    )
    .unwrap();
    w.add("a", (&Tensor::from_f32(&[2], &[1., 2.]).unwrap()).into())
        .unwrap();
    assert_eq!(files_in(dir.path()).len(), 2);
    let mut removed = tfckpt::remove_partial_outputs();
    removed.sort();
    let pid = std::process::id();
    assert_eq!(
        removed,
        [0, 1].map(|i| dir
            .path()
            .join(format!("w.data-0000{i}-of-00002.tempstate{pid}")))
    );
    assert_eq!(files_in(dir.path()), Vec::<String>::new());
    // Nothing is listed any more, and a write that starts now is listed as usual.
    assert_eq!(
        tfckpt::remove_partial_outputs(),
        Vec::<std::path::PathBuf>::new()
    );
    let e = err(w.finish()).to_string();
    assert!(e.contains(".tempstate"), "{e}");
    assert_eq!(files_in(dir.path()), Vec::<String>::new());
    // A folder goes with everything in it (renamed aside first: nothing of it is left, under
    // either name); one renamed into place before the removal is a finished output, untouched.
    let (tmp, done) = (dir.path().join(".tmp-a"), dir.path().join(".tmp-b"));
    for d in [&tmp, &done] {
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/x.npy"), b"x").unwrap();
    }
    let _a = tfckpt::PartialOutput::new(&tmp);
    let _b = tfckpt::PartialOutput::new(&done);
    std::fs::rename(&done, dir.path().join("out")).unwrap();
    assert_eq!(tfckpt::remove_partial_outputs(), [tmp]);
    assert_eq!(files_in(dir.path()), ["out"]);
    assert_eq!(
        std::fs::read(dir.path().join("out/sub/x.npy")).unwrap(),
        b"x"
    );
}

/// A checkpoint and a safetensors file named without a folder part go to the working directory
/// (found by mutation testing: no test wrote one, and taking the empty folder part for a folder
/// failed the write after its files were in place). In a process of its own: it changes the
/// working directory.
#[cfg(unix)]
#[test]
fn outputs_named_without_a_folder_are_written_in_the_working_directory() {
    common::fork::in_a_process_of_its_own(
        "bare_names_in_this_process",
        "TFCKPT_TEST_BARE_NAMES",
        "1",
    );
}

/// The other half of the test above: run only by it, in a process of its own.
#[cfg(unix)]
#[test]
#[ignore = "run by outputs_named_without_a_folder_are_written_in_the_working_directory"]
fn bare_names_in_this_process() {
    assert_eq!(std::env::var("TFCKPT_TEST_BARE_NAMES").as_deref(), Ok("1"));
    let dir = tempfile::tempdir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    let two = Tensor::from_f32(&[2], &[1., 2.]).unwrap();
    let mut w = CheckpointWriter::create("m", WriterOptions::default()).unwrap();
    w.add("a", (&two).into()).unwrap();
    w.finish().unwrap();
    let ckpt = Checkpoint::open("m").unwrap();
    assert_eq!(ckpt.read("a").unwrap(), two);
    assert_eq!(files_in(dir.path()), ["m.data-00000-of-00001", "m.index"]);
    #[cfg(feature = "safetensors")]
    {
        ckpt.write_safetensors("m.safetensors").unwrap();
        assert!(files_in(dir.path()).contains(&"m.safetensors".to_string()));
        assert_eq!(files_in(dir.path()).len(), 3);
    }
}

/// Every misuse of the writer is an `InvalidArgument` naming the tensor, refused before anything
/// of it is written, and the writer goes on; a writer dropped before `finish` leaves no file
/// (found uncovered by a coverage run).
#[test]
fn writer_misuse_is_refused_and_an_unfinished_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The header stores the count as an int32.
    for num_shards in [0, 1 << 31, u32::MAX] {
        let e = err(CheckpointWriter::create(
            dir.path().join("z"),
            WriterOptions {
                num_shards,
                ..Default::default()
            },
        ));
        assert!(
            e.to_string().contains(&format!(
                "num_shards must be between 1 and 2147483647, not {num_shards}"
            )),
            "{e}"
        );
    }
    // A block size the table cannot hold (it overflowed in debug builds at usize::MAX).
    for block_size in [0, (1 << 30) + 1, usize::MAX] {
        let e = err(CheckpointWriter::create(
            dir.path().join("z"),
            WriterOptions {
                block_size,
                ..Default::default()
            },
        ));
        assert!(
            e.to_string().contains(&format!(
                "block_size must be between 1 and 1073741824 (1 GiB), not {block_size}"
            )),
            "{e}"
        );
    }
    // 1 GiB itself is a block size the table holds (nothing is allocated for it ahead).
    let prefix = dir.path().join("gib");
    let options = WriterOptions {
        block_size: 1 << 30,
        ..Default::default()
    };
    let mut w = CheckpointWriter::create(&prefix, options).unwrap();
    let t = Tensor::from_f32(&[2], &[1.0, 2.0]).unwrap();
    w.add("t", (&t).into()).unwrap();
    w.finish().unwrap();
    assert_eq!(Checkpoint::open(&prefix).unwrap().read("t").unwrap(), t);
    // A folder that cannot be made (a file is where its parent should be): the system's error,
    // naming that folder (not a temporary file in it, nor a search for a free temporary name).
    std::fs::write(dir.path().join("a-file"), b"").unwrap();
    let e = err(CheckpointWriter::create(
        dir.path().join("a-file").join("sub").join("m"),
        WriterOptions::default(),
    ));
    let folder = dir.path().join("a-file").join("sub");
    assert!(
        matches!(e.kind(), ErrorKind::Io { path, source } if *path == folder
            && source.kind() == std::io::ErrorKind::NotADirectory),
        "{e:?}"
    );
    // The system's own words, from the `create_dir` that failed.
    assert!(
        e.to_string()
            .contains("making the checkpoint's folder: Not a directory")
            && !e.to_string().contains("tempstate"),
        "{e}"
    );
    // The file itself where the folder should be: named, as no folder.
    let e = err(CheckpointWriter::create(
        dir.path().join("a-file").join("m"),
        WriterOptions::default(),
    ));
    let file = dir.path().join("a-file");
    assert!(
        matches!(e.kind(), ErrorKind::Io { path, .. } if *path == file),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .ends_with("a-file: making the checkpoint's folder: it is no folder"),
        "{e}"
    );
    // The block size's bound itself is taken (the writer is dropped: nothing is written).
    let blocks = WriterOptions {
        block_size: 1 << 30,
        ..Default::default()
    };
    drop(CheckpointWriter::create(dir.path().join("z"), blocks).unwrap());
    let prefix = dir.path().join("w");
    let mut w = CheckpointWriter::create(&prefix, WriterOptions::default()).unwrap();
    let two = Tensor::from_f32(&[2], &[1., 2.]).unwrap();
    let rows = |start, len| Slice::from_ranges(&[(start, len)]);
    w.add("a", (&two).into()).unwrap();
    let debug = format!("{w:?}");
    for part in [
        &format!("{prefix:?}"),
        "entries: 1",
        "finished: false",
        "num_shards: 1",
    ] {
        assert!(debug.contains(part), "{debug}");
    }
    let invalid = |r: tfckpt::Result<()>, says: &str| {
        let e = err(r);
        assert!(
            matches!(e.kind(), ErrorKind::InvalidArgument(m) if m.contains(says)),
            "{says}: {e:?}"
        );
    };
    invalid(w.add("a", (&two).into()), "w: \"a\" was added before");
    invalid(w.add("", (&two).into()), "a tensor name cannot be empty");
    invalid(
        w.add_slice("b", &[4], &rows(0, 3), (&two).into()),
        "b: slice 0,3 has shape [3] but the tensor has shape [2]",
    );
    invalid(w.add_slice("b", &[4], &rows(3, 2), (&two).into()), "b: ");
    invalid(
        w.add_slice("a", &[4], &rows(0, 2), (&two).into()),
        "a: already added as a whole tensor",
    );
    w.add_slice("p", &[4], &rows(0, 2), (&two).into()).unwrap();
    // A slice added twice is named by its tensor and box (it was the key's raw bytes).
    invalid(
        w.add_slice("p", &[4], &rows(0, 2), (&two).into()),
        "w: \"p\" (slice 0,2) was added before",
    );
    let halves = tfckpt::Tensor::from_bytes(tfckpt::DType::F16, &[2], vec![0; 4]).unwrap();
    invalid(
        w.add_slice("p", &[4], &rows(2, 2), (&halves).into()),
        "p: its slices were added as float32, this one is float16",
    );
    invalid(
        w.add_slice("p", &[6], &rows(2, 2), (&two).into()),
        "p: slices disagree on the full shape",
    );
    invalid(
        w.add(
            "s",
            tfckpt::TensorRef::Strings {
                shape: &[3],
                data: &Tensor::from_strings(&[2], vec![b"x".to_vec(), b"y".to_vec()])
                    .unwrap()
                    .strings()
                    .unwrap()
                    .clone(),
            },
        ),
        "s: 2 strings given, shape [3] needs 3",
    );
    invalid(
        w.add(
            "q",
            tfckpt::TensorRef::Bytes {
                dtype: tfckpt::DType::String,
                shape: &[1],
                data: &[0],
            },
        ),
        "q: string is not a fixed-size dtype",
    );
    // The writer goes on: the rest of p, then finish.
    w.add_slice("p", &[4], &rows(2, 2), (&two).into()).unwrap();
    w.finish().unwrap();
    let ckpt = Checkpoint::open(&prefix).unwrap();
    assert_eq!(ckpt.tensors().len(), 2);
    assert_eq!(ckpt.read("p").unwrap().to_f32().unwrap(), [1., 2., 1., 2.]);
    // Dropped before finish: nothing of "u" is left in the folder.
    let before = std::fs::read_dir(dir.path()).unwrap().count();
    let mut u = CheckpointWriter::create(
        dir.path().join("u"),
        WriterOptions {
            num_shards: 3,
            ..Default::default()
        },
    )
    .unwrap();
    u.add("a", (&two).into()).unwrap();
    drop(u);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), before);
}

#[test]
fn overlapping_slices_fail_with_mapped_values_too() {
    // Part 0 of q is exactly stored slice 0,2, so with mapping on it is mapped rather than copied
    // (and checked for overlaps itself); the overlap still fails the whole load, as for a copied read.
    let (_d, ckpt) = partitioned(&[(0, 2), (1, 3)]);
    let mut store = tfckpt::VariableStore::new();
    store
        .get_partitioned_variable("q", &[4], tfckpt::DType::F32, &[2], tfckpt::Init::Zeros)
        .unwrap();
    let map = tfckpt::AssignmentMap::from([("p", tfckpt::Target::name("q"))]);
    tfckpt::init_from_checkpoint(&mut store, ckpt.prefix(), &map).unwrap();
    let options = tfckpt::LoadOptions {
        map_values: true,
        map_min_bytes: Some(0),
        ..Default::default()
    };
    let e = store
        .initialize_with(tfckpt::Device::Cpu, &options)
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::OverlappingSlices { .. }),
        "{e}"
    );
    assert!(!store.is_initialized());
}

// The kinds below were produced by other tests and checked only by message, or not at all: each
// test matches the kind on its fields and checks that the message names the file, tensor or
// variable at fault.

/// A `checkpoint` state file that is not a file (a directory left where it should be): the I/O
/// error names the state file.
#[test]
fn io_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_files(&fixture("h1_basic"), dir.path());
    let state = dir.path().join("checkpoint");
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    let e = err(Checkpoint::open(dir.path()));
    assert!(
        matches!(e.kind(), ErrorKind::Io { path, .. } if path == &state),
        "{e:#?}"
    );
    says(&e, format!("{}: ", state.display()));
    assert!(std::error::Error::source(&e).is_some());
    #[cfg(unix)]
    {
        assert!(
            matches!(e.kind(), ErrorKind::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidInput),
            "{e:#?}"
        );
        assert!(e.to_string().contains("is a directory"), "{e}");
    }
}

/// An index whose records are not in key order (a writer that did not sort them): the table is
/// refused, naming the index file and the block.
#[test]
fn keys_out_of_order_are_a_corrupt_table() {
    let dir = tempfile::tempdir().unwrap();
    let x = f32s(&[1.0]);
    let e1 = entry(1, &[1], 0, 0, 4, tfckpt::crc::crc32c(&x));
    let prefix = write_bundle(
        dir.path(),
        &[
            (vec![], header(1)),
            (b"b".to_vec(), e1.clone()),
            (b"a".to_vec(), e1),
        ],
        &[x],
    );
    let index = dir.path().join("ckpt.index");
    let e = err(Checkpoint::open(prefix));
    corrupt_table(&e, &index, 0, "not in increasing order", ());
    assert!(
        e.to_string()
            .contains("keys are not in increasing order: \"a\" comes after \"b\""),
        "{e}"
    );
}

/// A checkpoint written by a TensorFlow newer than this reader (its header asks for readers of
/// version 7 and later): refused naming the index file.
#[test]
fn a_newer_checkpoint_version_is_a_bad_header() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Vec::new();
    pb_varint(&mut h, 1, 1);
    let mut v = Vec::new();
    pb_varint(&mut v, 1, 1);
    pb_varint(&mut v, 2, 7); // min_consumer 7
    pb_bytes(&mut h, 3, &v);
    let x = f32s(&[1.0]);
    let prefix = write_bundle(
        dir.path(),
        &[
            (vec![], h),
            (
                b"t".to_vec(),
                entry(1, &[1], 0, 0, 4, tfckpt::crc::crc32c(&x)),
            ),
        ],
        &[x],
    );
    let index = dir.path().join("ckpt.index");
    let e = err(Checkpoint::open(prefix));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::BadHeader { path, reason }
                if path == &index && reason.contains("version >= 7")
        ),
        "{e:#?}"
    );
    says(&e, format!("{}: bad checkpoint header", index.display()));
}

/// A string tensor whose index entry counts a stray byte after the strings (the lengths and their
/// checksum are intact): the decode refuses it, naming the data shard, the tensor and its offset.
#[test]
fn string_lengths_that_do_not_add_up_are_corrupt_strings() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::from_strings(&[2], vec![b"hello".to_vec(), b"world".to_vec()]).unwrap();
    let mut b = CkptBuilder::new(dir.path().join("s"));
    b.tensor("s", &t);
    b.finish();
    let mut stored = std::fs::read(dir.path().join("s.data-00000-of-00001")).unwrap();
    stored.push(b'!');
    let prefix = write_bundle(
        dir.path(),
        &[
            (vec![], header(1)),
            (b"s".to_vec(), entry(7, &[2], 0, 0, stored.len() as u64, 0)),
        ],
        &[stored],
    );
    let data = dir.path().join("ckpt.data-00000-of-00001");
    let ckpt = Checkpoint::open(prefix).unwrap();
    let e = err(ckpt.read("s"));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::CorruptStrings { path, tensor, offset: 0, reason }
                if path == &data && tensor == "s" && reason.contains("10 bytes")
                    && reason.contains("11 bytes")
        ),
        "{e:#?}"
    );
    says(&e, format!("{}: tensor \"s\" at offset 0", data.display()));
}

/// A sharded V1 save (opened through the glob its state file stores) with one of its two files
/// gone: `verify` names the missing file, its number and how many were found.
#[test]
fn a_missing_file_of_a_sharded_v1_save() {
    let dir = tempfile::tempdir().unwrap();
    copy_files(&fixture("v1_sharded"), dir.path());
    let gone = dir.path().join("model.ckpt-0-00001-of-00002");
    std::fs::remove_file(&gone).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap(); // TensorFlow's glob reads the other file
    let problems = ckpt.file_problems();
    assert!(
        matches!(&problems[..], [e] if matches!(e.kind(), ErrorKind::MissingV1Shard { path, .. } if *path == gone)),
        "{problems:?}"
    );
    let e = err(ckpt.verify());
    assert!(
        matches!(
            e.kind(),
            ErrorKind::MissingV1Shard { path, shard: 1, num_shards: 2, found: 1 } if path == &gone
        ),
        "{e:#?}"
    );
    assert!(e.is_not_found());
    says(&e, format!("{}: missing: file 1 of the 2", gone.display()));
}

/// A tensor not found names the missing files of a sharded V1 save only where the save was
/// opened through its glob: one file opened by its own name is a checkpoint on its own, and the
/// other file (present here) is no missing file of it.
#[test]
fn only_a_glob_names_the_missing_files_of_a_sharded_v1_save() {
    let dir = tempfile::tempdir().unwrap();
    copy_files(&fixture("v1_sharded"), dir.path());
    let all = Checkpoint::open(dir.path()).unwrap();
    let first = Checkpoint::open(dir.path().join("model.ckpt-0-00000-of-00002")).unwrap();
    let elsewhere = &all
        .tensors()
        .iter()
        .find(|t| !first.contains(&t.name))
        .expect("a tensor stored in the second file only")
        .name;
    let e = err(first.read(elsewhere));
    assert!(
        matches!(e.kind(), ErrorKind::TensorNotFound { absent_files, .. } if absent_files.is_empty()),
        "{e:#?}"
    );
    assert!(!e.to_string().contains("missing"), "{e}");
    // That file alone holds 2 of the 4 slices of "p": no damage, a tensor saved in part.
    let report = first.verify().unwrap();
    assert_eq!(
        report.incomplete,
        [
            "tensor \"p\" [10, 3]: its stored slices [0,3:0,3, 3,3:0,3] hold 18 of its 30 \
          elements; it reads only within them, never whole"
        ]
    );
    assert!(all.verify().unwrap().incomplete.is_empty());
    let gone = dir.path().join("model.ckpt-0-00001-of-00002");
    std::fs::remove_file(&gone).unwrap();
    let e = err(Checkpoint::open(dir.path()).unwrap().read(elsewhere));
    assert!(
        matches!(e.kind(), ErrorKind::TensorNotFound { absent_files, .. } if absent_files == std::slice::from_ref(&gone)),
        "{e:#?}"
    );
}

/// A `checkpoint` state file whose `model_checkpoint_path` is empty.
#[test]
fn an_empty_model_checkpoint_path_is_a_bad_state_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_files(&fixture("h1_basic"), dir.path());
    let state = dir.path().join("checkpoint");
    std::fs::write(
        &state,
        "model_checkpoint_path: \"\"\nall_model_checkpoint_paths: \"model-0\"\n",
    )
    .unwrap();
    let e = err(Checkpoint::open(dir.path()));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::BadStateFile { path, reason }
                if path == &state && reason.contains("model_checkpoint_path is empty")
        ),
        "{e:#?}"
    );
    says(
        &e,
        format!("{}: bad checkpoint state file", state.display()),
    );
    // An empty file (a save interrupted before it wrote one): said so.
    std::fs::write(&state, "\n").unwrap();
    let e = err(Checkpoint::open(dir.path()));
    says(
        &e,
        format!(
            "{}: bad checkpoint state file: the file is empty",
            state.display()
        ),
    );
}

/// The store of `tests/fixtures/tf/init/h1_13*` (a model of two variables under `some_scope/`).
fn some_scope_store() -> tfckpt::VariableStore {
    let mut store = tfckpt::VariableStore::new();
    store
        .get_variable(
            "some_scope/my1",
            &[10, 10],
            tfckpt::DType::F32,
            tfckpt::Init::Zeros,
        )
        .unwrap();
    store
        .get_variable(
            "some_scope/my2",
            &[1, 10],
            tfckpt::DType::I64,
            tfckpt::Init::Zeros,
        )
        .unwrap();
    store
}

/// `init/h1_13c_no_graph_var`: `{"var3": "some_scope/no_var"}` names no variable, and the key has no
/// trailing `/`, so it cannot be a scope either.
#[test]
fn a_target_that_is_no_variable_and_no_scope() {
    let mut store = some_scope_store();
    let map = tfckpt::AssignmentMap::from([("var3", tfckpt::Target::name("some_scope/no_var"))]);
    let e = err(tfckpt::init_from_checkpoint(
        &mut store,
        fixture("h1_basic"),
        &map,
    ));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::NotAVariableOrScope { key, target, suggestions }
                if key == "var3" && target == "some_scope/no_var" && !suggestions.is_empty()
        ),
        "{e:#?}"
    );
    let msg = e.to_string();
    says(
        &e,
        "assignment \"var3\" -> \"some_scope/no_var\": \"some_scope/no_var\" is not a variable",
    );
    assert!(msg.contains("did you mean"), "{e}");
}

/// `init/h1_13b_no_var` (`{"no_var": "some_scope/my1"}`: no such tensor) and
/// `init/h1_13e_scope_missing` (`{"useful_scope/": "some_scope/"}`: the tensors the scope derives
/// are not there): each names the tensor, the variable, the pair and the checkpoint.
#[test]
fn a_mapped_tensor_that_is_not_in_the_checkpoint() {
    let dir = fixture("h1_basic");
    let mut store = some_scope_store();
    let map = tfckpt::AssignmentMap::from([("no_var", tfckpt::Target::name("some_scope/my1"))]);
    let e = err(tfckpt::init_from_checkpoint(&mut store, &dir, &map));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::MappedTensorNotFound { ckpt, tensor, variable, key, target, .. }
                if ckpt.starts_with(&dir) && tensor == "no_var" && variable == "some_scope/my1"
                    && key == "no_var" && target == "some_scope/my1"
        ),
        "{e:#?}"
    );
    assert!(e.is_not_found());
    let msg = e.to_string();
    says(&e, "tensor \"no_var\" (for variable \"some_scope/my1\", from assignment \"no_var\" -> \"some_scope/my1\") not found in checkpoint");
    assert!(msg.contains(&dir.display().to_string()), "{e}");
    let mut store = some_scope_store();
    let map = tfckpt::AssignmentMap::from([("useful_scope/", tfckpt::Target::name("some_scope/"))]);
    let e = err(tfckpt::init_from_checkpoint(&mut store, &dir, &map));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::MappedTensorNotFound { tensor, variable, key, target, suggestions, .. }
                if tensor.starts_with("useful_scope/my") && variable.starts_with("some_scope/my")
                    && key == "useful_scope/" && target == "some_scope/"
                    && suggestions.iter().any(|s| s == "useful_scope/var4")
        ),
        "{e:#?}"
    );
    assert!(e.to_string().contains("not found in checkpoint"), "{e}");
}

/// `init/x07_list_of_plain_variables`: a list target whose items are plain variables, not parts of
/// one partitioned variable.
#[test]
fn a_list_of_plain_variables_is_a_bad_part_list() {
    let mut store = tfckpt::VariableStore::new();
    for name in ["a", "b"] {
        store
            .get_variable(name, &[1, 10], tfckpt::DType::F32, tfckpt::Init::Zeros)
            .unwrap();
    }
    // The pair `key` -> the list [a, b].
    let mut map_to_a_and_b = |key: &str| {
        let map = tfckpt::AssignmentMap::from([(key, tfckpt::Target::parts(["a", "b"]))]);
        err(tfckpt::init_from_checkpoint(
            &mut store,
            fixture("h1_basic"),
            &map,
        ))
    };
    let e = map_to_a_and_b("var1");
    assert!(
        matches!(
            e.kind(),
            ErrorKind::BadPartList { key, reason }
                if key == "var1" && reason.starts_with("a is not a part of a partitioned variable")
        ),
        "{e:#?}"
    );
    says(&e, "assignment \"var1\": a is not a part");
    // A key the checkpoint does not hold is reported first, as TensorFlow looks it up before it
    // checks the list.
    let e = map_to_a_and_b("missing");
    assert!(
        matches!(
            e.kind(),
            ErrorKind::MappedTensorNotFound { tensor, variable, key, .. }
                if tensor == "missing" && key == "missing" && variable == "a, b"
        ),
        "{e:#?}"
    );
}

/// A variable declared larger than this machine's address space (2^62 bytes: allowed by the store,
/// which bounds sizes at `isize::MAX`) is an allocation error naming it when `initialize` makes its
/// zeros, not an abort; nothing is touched, so no memory is exhausted.
#[cfg(target_pointer_width = "64")]
#[test]
fn a_variable_too_large_to_allocate() {
    let mut store = tfckpt::VariableStore::new();
    store
        .get_variable("huge", &[1 << 60], tfckpt::DType::F32, tfckpt::Init::Zeros)
        .unwrap();
    let e = store.initialize(tfckpt::Device::Cpu).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::Allocation { bytes, tensor } if *bytes == 1 << 62 && tensor == "huge"
        ),
        "{e:#?}"
    );
    assert_eq!(
        e.to_string(),
        format!("cannot allocate {} bytes for tensor \"huge\"", 1u64 << 62)
    );
    assert!(!store.is_initialized());
}

/// Object storage, without a server: a URL of a scheme that cannot be read (TensorFlow also reads
/// `hdfs://`), and a connection refused on a local port with no retries. Each names the URL.
#[cfg(feature = "remote")]
#[test]
fn unusable_urls_and_unreachable_hosts_are_remote_errors() {
    let url = "hdfs://namenode/models/ckpt";
    let e = err(Checkpoint::open(url));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::Remote { url: u, range: None, reason }
                if u == url && reason.contains("unknown scheme")
        ),
        "{e:#?}"
    );
    says(&e, format!("{url}: "));
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/models/ckpt");
    let options = tfckpt::RemoteOptions {
        max_retries: 0,
        ..Default::default()
    };
    let e = err(Checkpoint::open_with(&url, &options));
    // Behind a proxy from the environment, the proxy answers instead of the closed port.
    let proxied = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
    assert!(
        matches!(
            e.kind(),
            ErrorKind::Remote { url: u, range: None, reason }
                if u.starts_with(&url) && (reason.contains("Connection refused") || proxied)
        ),
        "{e:#?}"
    );
    says(&e, url);
}

/// A plain HTTP server (here on 127.0.0.1, answering every request with 403 Forbidden) refusing
/// access to the checkpoint named: the error names its URL and says access was denied.
#[cfg(feature = "remote")]
#[test]
fn a_refusal_by_the_store_is_a_remote_access_error() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if client.read(&mut byte).unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let _ = client.write_all(
                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    let url = format!("http://127.0.0.1:{port}/models/ckpt");
    let options = tfckpt::RemoteOptions {
        max_retries: 0,
        ..Default::default()
    };
    let e = err(Checkpoint::open_with(&url, &options));
    assert!(
        matches!(
            e.kind(),
            ErrorKind::RemoteAccess { url: u, not_found: false, .. } if u == &url
        ),
        "{e:#?}"
    );
    assert!(!e.is_not_found());
    says(&e, format!("{url}: access denied (credentials: "));
}

/// A part of a partitioned variable may not take the name of a partitioned variable declared
/// before it (their values would be written under one name), in either order.
#[test]
fn a_part_named_as_a_partitioned_variable_is_refused() {
    use tfckpt::{DType, ErrorKind, Init, VariableStore};
    let mut store = VariableStore::new();
    store
        .get_partitioned_variable("x/part_0", &[4], DType::F32, &[2], Init::Zeros)
        .unwrap();
    let e = store
        .get_partitioned_variable("x", &[2], DType::F32, &[2], Init::Zeros)
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::BadVariable { name, reason } if name == "x" && reason.contains("x/part_0 already exists")),
        "{e:?}"
    );
    assert!(store.partitioned_variable("x").is_none() && store.variable("x/part_1").is_none());
    // A clash at a later part declares none of the parts before it.
    let mut store = VariableStore::new();
    store
        .get_variable("y/part_2", &[1], DType::F32, Init::Zeros)
        .unwrap();
    assert!(store
        .get_partitioned_variable("y", &[3], DType::F32, &[3], Init::Zeros)
        .is_err());
    assert_eq!(
        store.variables().count(),
        1,
        "y/part_0 and y/part_1 were left declared"
    );
    let mut store = VariableStore::new();
    store
        .get_partitioned_variable("x", &[2], DType::F32, &[2], Init::Zeros)
        .unwrap();
    assert!(store
        .get_partitioned_variable("x/part_0", &[4], DType::F32, &[2], Init::Zeros)
        .is_err());
}

/// More parts than rows along the axis, or more than 2^20 parts (TensorFlow sets no bound: a
/// deliberate difference, in the README), are refused, naming the variable; nothing is declared.
#[test]
fn too_many_parts_are_refused() {
    use tfckpt::{DType, ErrorKind, Init, VariableStore};
    let mut store = VariableStore::new();
    for (shape, parts) in [([3u64, 2], [4u64, 1]), ([2_000_000, 8], [1_100_000, 1])] {
        let e = store
            .get_partitioned_variable("emb", &shape, DType::F32, &parts, Init::Zeros)
            .unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::BadVariable { name, reason } if name == "emb" && reason.contains(&format!("{} parts along axis 0", parts[0]))),
            "{e:?}"
        );
        assert_eq!(store.variables().count(), 0);
    }
    // A partitioner's list that splits along two axes, or gives an axis no part, is refused
    // saying which axes.
    for (parts, what) in [
        (
            [2u64, 2],
            "partitions [2, 2]: split along axes [0, 1], but a partitioned variable is split along one axis at most (one entry above 1)",
        ),
        ([1, 0], "partitions [1, 0]: 0 parts along axis 1 (every entry >= 1)"),
    ] {
        let e = store
            .get_partitioned_variable("emb", &[4, 4], DType::F32, &parts, Init::Zeros)
            .unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::BadVariable { name, reason } if name == "emb" && reason == what),
            "{e:?}"
        );
        assert_eq!(store.variables().count(), 0);
    }
    // As many parts as rows is allowed (2^20 parts would be too, but cost a million variables).
    store
        .get_partitioned_variable("emb", &[3, 2], DType::F32, &[3, 1], Init::Zeros)
        .unwrap();
}

/// Files passed in place of a checkpoint that users pass by mistake get a hint of what to pass:
/// the state file (its directory), the MetaGraph (the prefix); the empty path shows as `""`; a
/// map key that names a scope of the checkpoint suggests the tensors under it.
#[test]
fn mistaken_paths_and_keys_say_what_to_pass() {
    let case = fixture("h1_basic");
    let e = Checkpoint::open(case.join("checkpoint"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not an SSTable")
            && e.contains(&format!(
                "state file: pass the directory, {}",
                case.display()
            )),
        "{e}"
    );
    let e = Checkpoint::open(case.join("model-0.meta"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "pass the checkpoint's prefix, {}",
            case.join("model-0").display()
        )),
        "{e}"
    );
    // Any other file that is no table gets no hint of either kind.
    let tmp = tempfile::tempdir().unwrap();
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, vec![b'x'; 4096]).unwrap();
    let e = Checkpoint::open(&notes).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: not an SSTable (", notes.display()))
            && e.ends_with("): is this a TensorFlow checkpoint, and all of it?"),
        "{e}"
    );
    // An index cut short (its footer gone) is said to be, by its name; a V1 file (no name of
    // its own) gets the question above.
    let cut = tmp.path().join("model-0.index");
    let index = std::fs::read(case.join("model-0.index")).unwrap();
    std::fs::write(&cut, &index[..index.len() - 20]).unwrap();
    std::fs::copy(
        case.join("model-0.data-00000-of-00001"),
        tmp.path().join("model-0.data-00000-of-00001"),
    )
    .unwrap();
    let e = Checkpoint::open(tmp.path().join("model-0"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "{}: not an SSTable (bad magic number ",
            cut.display()
        )) && e.ends_with("): was it cut short (an interrupted copy or save)?"),
        "{e}"
    );
    let e = Checkpoint::open("").unwrap_err();
    assert!(
        e.is_not_found() && e.to_string().ends_with("matches \"\""),
        "{e}"
    );
    let mut store = tfckpt::VariableStore::new();
    store
        .get_variable(
            "model/var4",
            &[9, 9],
            tfckpt::DType::F32,
            tfckpt::Init::Zeros,
        )
        .unwrap();
    let map = tfckpt::AssignmentMap::from([("useful_scope", tfckpt::Target::name("model/var4"))]);
    let e = tfckpt::init_from_checkpoint(&mut store, &case, &map)
        .unwrap_err()
        .to_string();
    assert!(e.contains(r#"did you mean "useful_scope/var4"?"#), "{e}");
}

/// A variable placed on a GPU that this build (without `cuda`) or this machine does not have is
/// an error naming the device and the first variable (by name) placed there; nothing is loaded.
#[test]
fn a_variable_on_a_gpu_not_to_be_had_is_named() {
    use tfckpt::{DType, Device, Init, VariableStore};
    let mut store = VariableStore::new();
    for name in ["host/b", "far/w", "far/x"] {
        store
            .get_variable(name, &[2], DType::F32, Init::Zeros)
            .unwrap();
    }
    store.set_device("far/x", Device::Cuda(97)).unwrap();
    store.set_device("far/w", Device::Cuda(97)).unwrap();
    let e = err(store.initialize(Device::Cpu));
    match e.kind() {
        ErrorKind::DeviceUnavailable { device, reason } => {
            assert_eq!(device, "cuda:97");
            assert!(reason.contains("variable \"far/w\" is placed there"), "{e}");
        }
        _ => panic!("{e}"),
    }
    says(&e, "device cuda:97: ");
    assert!(!store.is_initialized());
    assert!(store.value("host/b").is_none());
}

/// What needs no GPU does not ask for one: a part another rank owns, and a string variable
/// (strings stay on the host), placed on a GPU that cannot be had, leave a host load free to
/// run; the rank that owns the part gets the error.
#[test]
fn only_a_gpu_this_load_uses_is_asked_for() {
    use tfckpt::{DType, Device, Init, LoadOptions, VariableStore};
    // Part 0 on the host, part 1 on the GPU.
    let emb_on_two_devices = || {
        let mut store = VariableStore::new();
        store
            .get_partitioned_variable("emb", &[4, 2], DType::F32, &[2, 1], Init::Ones)
            .unwrap();
        store
            .set_part_devices("emb", &[Device::Cpu, Device::Cuda(97)])
            .unwrap();
        store
    };
    let mut store = emb_on_two_devices();
    store
        .get_variable("vocab", &[2], DType::String, Init::Zeros)
        .unwrap();
    let rank0 = LoadOptions::new().rank(0, 2);
    store.initialize_with(Device::Cuda(97), &rank0).unwrap();
    assert_eq!(
        store.value("emb/part_0").unwrap().to_f32().unwrap(),
        [1.0; 4]
    );
    assert!(store.value("vocab").is_some());
    assert!(store.is_other_rank("emb/part_1"));

    let mut store1 = emb_on_two_devices();
    let e = err(store1.initialize_with(Device::Cpu, &LoadOptions::new().rank(1, 2)));
    assert!(
        matches!(e.kind(), ErrorKind::DeviceUnavailable { device, reason }
            if device == "cuda:97" && reason.contains("variable \"emb/part_1\" is placed there")),
        "{e}"
    );
}
