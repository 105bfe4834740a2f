//! A checkpoint with many shards keeps no file descriptor per shard (its own test binary: it counts
//! this process's open descriptors).

mod common;

#[cfg(target_os = "linux")]
#[test]
fn many_shards_hold_no_descriptors() {
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let tmp = tempfile::tempdir().unwrap();
    let options = tfckpt::WriterOptions {
        num_shards: 60,
        ..Default::default()
    };
    let mut b = common::builder::CkptBuilder::with_options(tmp.path().join("m"), options);
    for i in 0..60 {
        b.f32(&format!("t{i:02}"), &[2], &[i as f32, 1.0]);
    }
    let prefix = b.finish();
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
