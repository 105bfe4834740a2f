//! A checkpoint with many shards keeps no file descriptor per shard (its own test binary: it counts
//! this process's open descriptors).

#[cfg(target_os = "linux")]
#[test]
fn many_shards_hold_no_descriptors() {
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("m");
    let options = tfckpt::WriterOptions {
        num_shards: 60,
        ..Default::default()
    };
    let mut w = tfckpt::CheckpointWriter::create(&prefix, options).unwrap();
    for i in 0..60 {
        let t = tfckpt::Tensor::from_f32(&[2], &[i as f32, 1.0]).unwrap();
        w.add(&format!("t{i:02}"), (&t).into()).unwrap();
    }
    w.finish().unwrap();
    let before = fds();
    let ckpt = tfckpt::Checkpoint::open(&prefix).unwrap();
    for i in 0..60 {
        assert_eq!(
            ckpt.read(&format!("t{i:02}")).unwrap().to_f32().unwrap(),
            [i as f32, 1.0]
        );
    }
    assert!(
        fds() < before + 5,
        "{} descriptors open for 60 shards",
        fds() - before
    );
}
